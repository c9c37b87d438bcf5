//! The kernel fast path (issue 18): loads the XDP program `turn_xdp.bpf.c` (compiled by clang at
//! build time, see `build.rs` beside it), attaches it to the interfaces of `--xdp-interface`, and
//! owns its maps.
//!
//! User space stays the authority (DESIGN.md, "The kernel fast path"): it mirrors a bound channel
//! (RFC 8656 §12) and a permission (RFC 8656 §9) into hash maps, client → peer one entry each,
//! peer → client one entry per peer IP for both (IPv4 in maps of their own with compact keys),
//! and removes them again; the program relays ChannelData, Send indications and Data
//! indications (RFC 8656 §10, §11) for what it finds there and passes everything else up
//! (`XDP_PASS`). Each mirrored
//! allocation gets a counter slot whose per-CPU packets and payload bytes [`FastPath::counters`]
//! sums for the owner to fold into its per-allocation stats.
//!
//! Loading needs CAP_BPF and CAP_NET_ADMIN (or root) and a kernel with BPF links for XDP (5.9+).
//! [`FastPath::test_run`] runs the program on one frame in the kernel (`BPF_PROG_TEST_RUN`) without
//! attaching it anywhere: the unit tests and the micro-benchmark use it.

pub mod frames;
pub mod mirror;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};

/// The BPF object, built from `turn_xdp.bpf.c` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/turn_xdp.bpf.o"));

pub use crate::config::XdpMode;

/// CRC-32 tables for slicing by eight (`CRC_TABLES` in the C program, which checks a Send
/// indication's FINGERPRINT with them): `T[0]` the reflected table of polynomial 0xEDB88320
/// (RFC 8489 §14.7 by way of ISO-HDLC), `T[k][n] = T[k-1][n] >> 8 ^ T[0][T[k-1][n] & 0xff]`.
static CRC_TABLES: [u32; 2048] = crc_tables();

const fn crc_tables() -> [u32; 2048] {
    let mut t = [0u32; 2048];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[n] = c;
        n += 1;
    }
    let mut i = 256;
    while i < 2048 {
        let prev = t[i - 256];
        t[i] = (prev >> 8) ^ t[(prev & 0xff) as usize];
        i += 1;
    }
    t
}

/// What `--xdp-mode auto` means for `iface` whose driver is `driver`: generic mode on a veth,
/// native (or, where the driver has no hook, generic: the kernel's choice) elsewhere.
///
/// Why not native on a veth: a veth sends what the program transmits (XDP_TX, a redirect) only
/// to a far end whose own XDP program turned its NAPI on, so native mode on a container's
/// interface would lose every relayed packet unless the host's end had a program too; and even
/// then, native mode copies each frame a local sender (the host's bridge) hands it into a page of
/// its own, which cost the whole path more than generic mode in benches/fastpath-compare.sh
/// (docs/fast-path.md). Generic mode runs on the skb the veth already has and transmits through
/// the device like any other packet.
pub fn effective_mode(mode: XdpMode, iface: &str, driver: Option<&str>) -> XdpMode {
    match mode {
        XdpMode::Auto if iface == "lo" || driver == Some("veth") => XdpMode::Generic,
        other => other,
    }
}

fn xdp_flags(mode: XdpMode) -> XdpFlags {
    match mode {
        XdpMode::Auto => XdpFlags::default(),
        XdpMode::Native => XdpFlags::DRV_MODE,
        XdpMode::Generic => XdpFlags::SKB_MODE,
    }
}

/// The name `--xdp-mode` takes for `mode`.
pub fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Auto => "auto",
        XdpMode::Native => "native",
        XdpMode::Generic => "generic",
    }
}

/// Map sizes (entries). A full map leaves the allocation on the user path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapLimits {
    /// Bound channels mirrored (each takes one entry per direction).
    pub channels: u32,
    /// Allocations with a counter slot.
    pub allocations: u32,
    /// Permissions mirrored (each takes one entry per direction).
    pub permissions: u32,
}

impl Default for MapLimits {
    fn default() -> Self {
        MapLimits {
            channels: 65_536,
            allocations: 16_384,
            permissions: 65_536,
        }
    }
}

/// How the program treats what it relays, fixed at load (constants in the program, so the
/// verifier drops the branches not taken: no per-packet cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgramOptions {
    /// `--xdp-verify-fingerprint`: check a Send indication's FINGERPRINT (CRC-32) in the kernel
    /// and pass a wrong one up, as the user path drops it. Off, FINGERPRINT is trimmed
    /// unchecked (docs/fast-path.md, "FINGERPRINT").
    pub verify_fingerprint: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("cannot load the XDP program: {0}")]
    Load(String),
    #[error("cannot attach the XDP program to {iface} ({mode} mode): {reason}")]
    Attach {
        iface: String,
        mode: &'static str,
        reason: String,
    },
    #[error("fast-path map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("fast-path map {0} is full")]
    Full(&'static str),
}

/// One transport address as the maps hold it (`struct endpoint` in the C program).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Endpoint {
    addr: [u8; 16],
    /// Network order, as on the wire.
    port: u16,
    family: u8,
    pad: u8,
}

impl Endpoint {
    fn new(a: SocketAddr) -> Self {
        let mut addr = [0u8; 16];
        let family = match a.ip() {
            IpAddr::V4(ip) => {
                addr[..4].copy_from_slice(&ip.octets());
                4
            }
            IpAddr::V6(ip) => {
                addr = ip.octets();
                6
            }
        };
        Endpoint {
            addr,
            port: u16::from_ne_bytes(a.port().to_be_bytes()),
            family,
            pad: 0,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChanKey {
    client: Endpoint,
    local: Endpoint,
    channel: u16,
    pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChanVal {
    relay: Endpoint,
    peer: Endpoint,
    slot: u32,
    pad: u32,
    expires_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerKey {
    peer: Endpoint,
    relay: Endpoint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SendKey {
    client: Endpoint,
    local: Endpoint,
    /// Port 0: a permission is per IP address.
    peer: Endpoint,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SendVal {
    relay: Endpoint,
    slot: u32,
    expires_ns: u64,
}

/// The IPv4 maps' keys (`struct chan_key4`, `peer_key4`, `send_key4`): addresses and ports as
/// they lie on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChanKey4 {
    client_addr: [u8; 4],
    local_addr: [u8; 4],
    client_port: u16,
    local_port: u16,
    channel: u16,
    pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerKey4 {
    peer_addr: [u8; 4],
    relay_addr: [u8; 4],
    peer_port: u16,
    relay_port: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SendKey4 {
    client_addr: [u8; 4],
    local_addr: [u8; 4],
    peer_addr: [u8; 4],
    client_port: u16,
    local_port: u16,
}

/// A key for the IPv4 map (`V4`) or the other one (`Any`: IPv6, or a key mixing the families).
#[derive(Debug, Clone, Copy)]
enum Fam<K4, K> {
    V4(K4),
    Any(K),
}

/// A kind of entry in two maps, the IPv4 one (compact keys) and the other, as the program has
/// them; `entries` counts what is in both, kept within `limit` (each map is sized to it).
struct MapPair<K4, K, V> {
    v4: HashMap<MapData, K4, V>,
    any: HashMap<MapData, K, V>,
    entries: u32,
    limit: u32,
    /// The name a full pair is reported by.
    name: &'static str,
}

impl<K4: aya::Pod, K: aya::Pod, V: aya::Pod> MapPair<K4, K, V> {
    fn take(
        ebpf: &mut Ebpf,
        v4: &'static str,
        any: &'static str,
        limit: u32,
    ) -> Result<Self, FastPathError> {
        Ok(MapPair {
            v4: take_hash(ebpf, v4)?,
            any: take_hash(ebpf, any)?,
            entries: 0,
            limit,
            name: any,
        })
    }

    fn get(&self, key: &Fam<K4, K>) -> Option<V> {
        match key {
            Fam::V4(k) => self.v4.get(k, 0).ok(),
            Fam::Any(k) => self.any.get(k, 0).ok(),
        }
    }

    /// Adds or refreshes an entry; a new one beyond `limit`, or one the kernel has no room
    /// for, is [`FastPathError::Full`].
    fn insert(&mut self, key: Fam<K4, K>, val: V) -> Result<(), FastPathError> {
        let new = self.get(&key).is_none();
        self.put(key, val, new)
    }

    /// [`MapPair::insert`] for a caller that has just looked the key up: `new` if it was absent.
    fn put(&mut self, key: Fam<K4, K>, val: V, new: bool) -> Result<(), FastPathError> {
        if new && self.entries >= self.limit {
            return Err(FastPathError::Full(self.name));
        }
        match key {
            Fam::V4(k) => self.v4.insert(k, val, 0),
            Fam::Any(k) => self.any.insert(k, val, 0),
        }
        .map_err(|e| full_or(e, self.name))?;
        if new {
            self.entries += 1;
        }
        Ok(())
    }

    /// Removes an entry; whether there was one.
    fn remove(&mut self, key: Fam<K4, K>) -> bool {
        let removed = match key {
            Fam::V4(k) => self.v4.remove(&k),
            Fam::Any(k) => self.any.remove(&k),
        }
        .is_ok();
        if removed {
            self.entries = self.entries.saturating_sub(1);
        }
        removed
    }

    /// Entries in the kernel's maps (not the count kept here).
    fn count(&self) -> usize {
        self.v4.keys().filter(Result::is_ok).count() + self.any.keys().filter(Result::is_ok).count()
    }
}

/// The program's map `name`, taken out of the loaded object.
fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, FastPathError> {
    ebpf.take_map(name).ok_or(FastPathError::Map {
        map: name,
        reason: "missing".into(),
    })
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, FastPathError> {
    HashMap::try_from(take_map(ebpf, name)?).map_err(map_err(name))
}

/// An IPv4 socket address as the IPv4 keys hold it: address and port in network order.
fn v4_parts(a: SocketAddr) -> Option<([u8; 4], u16)> {
    match a {
        SocketAddr::V4(a) => Some((a.ip().octets(), u16::from_ne_bytes(a.port().to_be_bytes()))),
        SocketAddr::V6(_) => None,
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DataVal {
    client: Endpoint,
    local: Endpoint,
    slot: u32,
    pad: u32,
    expires_ns: u64,
}

/// Channels the kernel relays per peer IP and allocation (`PEER_CHANNELS`); more are
/// [`FastPathError::Full`] (the mirror then keeps that peer's permission out as well).
const PEER_CHANNELS: usize = 4;

/// A channel bound to one port of a peer IP (`struct peer_chan`); port 0: a free place.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct PeerChan {
    /// Network order.
    port: u16,
    channel: u16,
    pad: u32,
    expires_ns: u64,
}

/// Peer → client for one peer IP and relayed address (`struct peer_ip_val`): the permission
/// (`perm.expires_ns` 0 when none is mirrored) and the channels bound to that IP's ports.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerIpVal {
    perm: DataVal,
    chans: [PeerChan; PEER_CHANNELS],
}

impl PeerIpVal {
    fn is_empty(&self) -> bool {
        self.perm.expires_ns == 0 && self.chans.iter().all(|c| c.port == 0)
    }
}

/// Relayed packets and payload bytes of one allocation slot (`struct alloc_counters`), and how
/// many of those packets were Send (client → peer) or Data (peer → client) indications.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotCounters {
    pub c2p_packets: u64,
    pub c2p_bytes: u64,
    pub p2c_packets: u64,
    pub p2c_bytes: u64,
    pub c2p_indications: u64,
    pub p2c_indications: u64,
}

// SAFETY: plain `repr(C)` structs of integers and byte arrays with the C program's layout and
// no implicit padding (every gap is an explicit `pad` field); any bit pattern is valid.
unsafe impl aya::Pod for Endpoint {}
unsafe impl aya::Pod for ChanKey {}
unsafe impl aya::Pod for ChanVal {}
unsafe impl aya::Pod for PeerKey {}
unsafe impl aya::Pod for PeerChan {}
unsafe impl aya::Pod for PeerIpVal {}
unsafe impl aya::Pod for SlotCounters {}
unsafe impl aya::Pod for SendKey {}
unsafe impl aya::Pod for SendVal {}
unsafe impl aya::Pod for DataVal {}
unsafe impl aya::Pod for ChanKey4 {}
unsafe impl aya::Pod for PeerKey4 {}
unsafe impl aya::Pod for SendKey4 {}

/// The global counters (`STATS` in the C program).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// ChannelData packets relayed client → peer.
    pub client_to_peer: u64,
    /// Packets relayed peer → client.
    pub peer_to_client: u64,
    /// Packets that matched a mirrored entry but went up (route, MTU, padding, family).
    pub passed_matched: u64,
}

/// A bound channel as the fast path relays it: `client` sends ChannelData on `channel` to the
/// listening address `local`; the allocation's relayed address is `relay`, the peer `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelMirror {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    pub channel: u16,
    /// The allocation's counter slot ([`FastPath::take_slot`]).
    pub slot: u32,
    /// CLOCK_MONOTONIC nanoseconds ([`monotonic_ns`]) by which the kernel has stopped using it
    /// (the program stops up to 50 ms before: `EXPIRY_MARGIN_NS`, early and never late).
    pub expires_ns: u64,
}

/// A permission as the fast path relays under it: `client` sends Send indications to `local` for
/// the peer IP `peer`, which leave from `relay`; datagrams from `peer` (any port) to `relay` with no
/// channel mirrored for them go to the client as Data indications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermissionMirror {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub relay: SocketAddr,
    pub peer: IpAddr,
    /// The allocation's counter slot ([`FastPath::take_slot`]).
    pub slot: u32,
    /// CLOCK_MONOTONIC nanoseconds ([`monotonic_ns`]) by which the kernel has stopped using it
    /// (the program stops up to 50 ms before: `EXPIRY_MARGIN_NS`, early and never late).
    pub expires_ns: u64,
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of `bpf_ktime_get_ns` and
/// `bpf_ktime_get_coarse_ns` (and of [`std::time::Instant`] on Linux).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The XDP action (`XDP_PASS` = 2, `XDP_TX` = 3, `XDP_REDIRECT` = 4).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Mean nanoseconds per run as the kernel measured it.
    pub ns_per_run: u32,
}

pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The loaded program and its maps. Dropping it detaches the program from every interface.
pub struct FastPath {
    ebpf: Ebpf,
    /// Client → peer ChannelData, within `--xdp-max-channels`.
    channels: MapPair<ChanKey4, ChanKey, ChanVal>,
    /// Peer → client, ChannelData and Data indications: one entry per peer IP and relayed
    /// address, at most one per channel or permission mirrored.
    peer_ips: MapPair<PeerKey4, PeerKey, PeerIpVal>,
    /// Client → peer Send indications, within `--xdp-max-permissions`.
    send_perms: MapPair<SendKey4, SendKey, SendVal>,
    counters: PerCpuArray<MapData, SlotCounters>,
    stats: PerCpuArray<MapData, u64>,
    free_slots: Vec<u32>,
    slots: u32,
    /// Allocations or channels left on the user path because a map was full.
    full: u64,
    cpus: usize,
    attached: Vec<String>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> FastPathError {
    move |e| FastPathError::Map {
        map,
        reason: e.to_string(),
    }
}

impl FastPath {
    /// Loads the program into the kernel (verifier included) with the default
    /// [`ProgramOptions`] and creates its maps; attaches nothing.
    pub fn load(limits: MapLimits) -> Result<FastPath, FastPathError> {
        FastPath::load_with(limits, ProgramOptions::default())
    }

    /// [`FastPath::load`] with `options` set in the program.
    pub fn load_with(
        limits: MapLimits,
        options: ProgramOptions,
    ) -> Result<FastPath, FastPathError> {
        let verify_fingerprint = u32::from(options.verify_fingerprint);
        let channels = limits.channels.max(1);
        let allocations = limits.allocations.max(1);
        let permissions = limits.permissions.max(1);
        // A peer IP's entry holds its permission and its channels: at most one per channel or
        // permission mirrored.
        let peer_ips = channels.saturating_add(permissions);
        let mut ebpf = EbpfLoader::new()
            .set_max_entries("CHANNELS", channels)
            .set_max_entries("PEER_IPS", peer_ips)
            .set_max_entries("SEND_PERMS", permissions)
            .set_max_entries("CHANNELS4", channels)
            .set_max_entries("PEER_IPS4", peer_ips)
            .set_max_entries("SEND_PERMS4", permissions)
            .set_global("CRC_TABLES", &CRC_TABLES[..], true)
            .set_global("VERIFY_FINGERPRINT", &verify_fingerprint, true)
            .set_max_entries("ALLOC_COUNTERS", allocations)
            .load(OBJECT)
            .map_err(|e| FastPathError::Load(e.to_string()))?;
        for name in ["turn_xdp", "xdp_pass"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| FastPathError::Load(format!("no program {name} in the object")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| FastPathError::Load(e.to_string()))?;
            prog.load()
                .map_err(|e| FastPathError::Load(verifier_error(e)))?;
        }
        let channels = MapPair::take(&mut ebpf, "CHANNELS4", "CHANNELS", channels)?;
        let peer_ips = MapPair::take(&mut ebpf, "PEER_IPS4", "PEER_IPS", peer_ips)?;
        let send_perms = MapPair::take(&mut ebpf, "SEND_PERMS4", "SEND_PERMS", permissions)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, "ALLOC_COUNTERS")?)
            .map_err(map_err("ALLOC_COUNTERS"))?;
        let stats =
            PerCpuArray::try_from(take_map(&mut ebpf, "STATS")?).map_err(map_err("STATS"))?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| FastPathError::Load(format!("{what}: {e}")))?;
        Ok(FastPath {
            ebpf,
            channels,
            peer_ips,
            send_perms,
            counters,
            stats,
            free_slots: (0..allocations).rev().collect(),
            slots: allocations,
            full: 0,
            cpus,
            attached: Vec::new(),
        })
    }

    /// Attaches the relay program to `iface`; returns the mode asked of the kernel (`auto`
    /// resolved by [`effective_mode`]). The link lives as long as `self`. On `lo` the program is
    /// told that UDP checksums there are partial (see `CONFIG` in the C program).
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpMode, FastPathError> {
        if iface == "lo" {
            self.set_loopback_partial_csum(true)?;
        }
        let mode = effective_mode(mode, iface, crate::sys::interface_driver(iface).as_deref());
        self.attach_program("turn_xdp", iface, mode)?;
        Ok(mode)
    }

    /// Tells the program that frames arriving on `lo` carry partial UDP checksums (IPv4 is then
    /// relayed with none, IPv6 passed up). [`FastPath::attach`] sets it for `lo`; the tests set it
    /// to check that behaviour under `BPF_PROG_TEST_RUN`, whose frames arrive on `lo`.
    pub fn set_loopback_partial_csum(&mut self, on: bool) -> Result<(), FastPathError> {
        let map = self.ebpf.map_mut("CONFIG").ok_or(FastPathError::Map {
            map: "CONFIG",
            reason: "missing".into(),
        })?;
        let mut config: aya::maps::Array<&mut MapData, u32> =
            aya::maps::Array::try_from(map).map_err(map_err("CONFIG"))?;
        config.set(0, u32::from(on), 0).map_err(map_err("CONFIG"))
    }

    /// Attaches the pass-everything program to `iface` (the far end of a veth, so that frames the
    /// relay program sends there with XDP_TX or a redirect are delivered).
    pub fn attach_pass(&mut self, iface: &str, mode: XdpMode) -> Result<(), FastPathError> {
        self.attach_program("xdp_pass", iface, mode)
    }

    fn attach_program(
        &mut self,
        name: &str,
        iface: &str,
        mode: XdpMode,
    ) -> Result<(), FastPathError> {
        let attach_err = |reason: String| FastPathError::Attach {
            iface: iface.to_owned(),
            mode: mode_name(mode),
            reason,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| attach_err(format!("no program {name}")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| attach_err(e.to_string()))?;
        prog.attach(iface, xdp_flags(mode))
            .map_err(|e| attach_err(error_chain(&e)))?;
        self.attached.push(iface.to_owned());
        Ok(())
    }

    /// The interfaces the relay program is attached to.
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// A counter slot for a newly mirrored allocation, zeroed; `None` when all are taken (the
    /// allocation stays on the user path).
    pub fn take_slot(&mut self) -> Option<u32> {
        let slot = self.free_slots.pop()?;
        let zero = PerCpuValues::try_from(vec![SlotCounters::default(); self.cpus]).ok()?;
        if self.counters.set(slot, zero, 0).is_err() {
            self.free_slots.push(slot);
            return None;
        }
        Some(slot)
    }

    /// Allocations holding a counter slot (mirrored into the maps).
    pub fn mirrored_allocations(&self) -> usize {
        (self.slots as usize).saturating_sub(self.free_slots.len())
    }

    /// An allocation or channel stayed on the user path because a map was full.
    pub fn note_full(&mut self) {
        self.full += 1;
    }

    /// How often [`FastPath::note_full`] was called.
    pub fn full_count(&self) -> u64 {
        self.full
    }

    /// Gives a slot back once its allocation's channels are removed and its counters read.
    pub fn release_slot(&mut self, slot: u32) {
        if !self.free_slots.contains(&slot) {
            self.free_slots.push(slot);
        }
    }

    /// Mirrors a bound channel, both directions. `relay` and `peer` are of one family, `client`
    /// and `local` of one (the same or the other: a dual allocation); a full map is
    /// [`FastPathError::Full`] and leaves nothing behind.
    pub fn add_channel(&mut self, m: &ChannelMirror) -> Result<(), FastPathError> {
        let (key, val, pkey, pval) = entries(m);
        self.channels.insert(key, val)?;
        let port = u16::from_ne_bytes(m.peer.port().to_be_bytes());
        let chan = PeerChan {
            port,
            channel: m.channel,
            pad: 0,
            expires_ns: m.expires_ns,
        };
        let peer = self.update_peer_ip(pkey, pval, |v| {
            let at = v
                .chans
                .iter()
                .position(|c| c.port == port)
                .or_else(|| v.chans.iter().position(|c| c.port == 0))?;
            v.chans[at] = chan;
            Some(())
        });
        if let Err(e) = peer {
            self.channels.remove(key);
            return Err(e);
        }
        Ok(())
    }

    /// Changes the peer → client entry of `key` with `change` (from an empty one if there is
    /// none; `None` from it: no room, [`FastPathError::Full`]), `base` giving the allocation's
    /// client, server address and slot; removes the entry when nothing is left in it.
    fn update_peer_ip(
        &mut self,
        key: Fam<PeerKey4, PeerKey>,
        base: DataVal,
        change: impl FnOnce(&mut PeerIpVal) -> Option<()>,
    ) -> Result<(), FastPathError> {
        let old = self.peer_ips.get(&key);
        let new = old.is_none();
        let mut v = old.unwrap_or(PeerIpVal {
            perm: DataVal {
                expires_ns: 0,
                ..base
            },
            chans: [PeerChan::default(); PEER_CHANNELS],
        });
        v.perm = DataVal {
            expires_ns: v.perm.expires_ns,
            ..base
        };
        change(&mut v).ok_or(FastPathError::Full("PEER_IPS"))?;
        if v.is_empty() {
            self.peer_ips.remove(key);
            Ok(())
        } else {
            self.peer_ips.put(key, v, new)
        }
    }

    /// Stops relaying a channel in the kernel, at once (both directions).
    pub fn remove_channel(&mut self, m: &ChannelMirror) {
        let (key, _, pkey, pval) = entries(m);
        self.channels.remove(key);
        let port = u16::from_ne_bytes(m.peer.port().to_be_bytes());
        let _ = self.update_peer_ip(pkey, pval, |v| {
            for c in v.chans.iter_mut().filter(|c| c.port == port) {
                *c = PeerChan::default();
            }
            Some(())
        });
    }

    /// Number of channels mirrored (both families).
    pub fn channel_count(&self) -> usize {
        self.channels.count()
    }

    /// Mirrors a permission, both directions (Send and Data indications). Families as for
    /// [`FastPath::add_channel`]; a full map is [`FastPathError::Full`] and leaves nothing behind.
    pub fn add_permission(&mut self, m: &PermissionMirror) -> Result<(), FastPathError> {
        let (key, val, pkey, pval) = permission_entries(m);
        self.send_perms.insert(key, val)?;
        // 0 means no permission in the kernel's entry.
        let expires_ns = pval.expires_ns.max(1);
        let data = self.update_peer_ip(pkey, pval, |v| {
            v.perm.expires_ns = expires_ns;
            Some(())
        });
        if let Err(e) = data {
            self.send_perms.remove(key);
            return Err(e);
        }
        Ok(())
    }

    /// Stops relaying indications under a permission in the kernel, at once (both directions).
    pub fn remove_permission(&mut self, m: &PermissionMirror) {
        let (key, _, pkey, pval) = permission_entries(m);
        self.send_perms.remove(key);
        let _ = self.update_peer_ip(pkey, pval, |v| {
            v.perm.expires_ns = 0;
            Some(())
        });
    }

    /// Number of permissions mirrored (both families).
    pub fn permission_count(&self) -> usize {
        self.send_perms.count()
    }

    /// The slot's counters summed over CPUs.
    pub fn counters(&self, slot: u32) -> SlotCounters {
        let mut sum = SlotCounters::default();
        if let Ok(values) = self.counters.get(&slot, 0) {
            for v in values.iter() {
                sum.c2p_packets += v.c2p_packets;
                sum.c2p_bytes += v.c2p_bytes;
                sum.p2c_packets += v.p2c_packets;
                sum.p2c_bytes += v.p2c_bytes;
                sum.c2p_indications += v.c2p_indications;
                sum.p2c_indications += v.p2c_indications;
            }
        }
        sum
    }

    /// The program's global counters summed over CPUs.
    pub fn totals(&self) -> Totals {
        let get = |i: u32| self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        Totals {
            client_to_peer: get(0),
            peer_to_client: get(1),
            passed_matched: get(2),
        }
    }

    /// Runs the relay program on `frame` in the kernel `repeat` times (`BPF_PROG_TEST_RUN`, in
    /// the caller's network namespace; the frame arrives on its `lo`). Maps are live: counters
    /// count.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> std::io::Result<TestRun> {
        self.test_run_program("turn_xdp", frame, repeat)
    }

    /// Runs the pass-everything program like [`FastPath::test_run`]: the micro-benchmark's
    /// baseline, what a run costs the kernel's timing loop without any work of the program.
    pub fn test_run_pass(&self, frame: &[u8], repeat: u32) -> std::io::Result<TestRun> {
        self.test_run_program("xdp_pass", frame, repeat)
    }

    fn test_run_program(&self, name: &str, frame: &[u8], repeat: u32) -> std::io::Result<TestRun> {
        let prog: &Xdp = self
            .ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| std::io::Error::other(format!("no program {name}")))?;
        let fd = prog.fd().map_err(std::io::Error::other)?;
        let mut out = vec![0u8; frame.len() + 256];
        let (action, len, ns) = crate::io::fastpath::sys::prog_test_run(
            fd.as_fd().as_raw_fd(),
            frame,
            &mut out,
            repeat,
        )?;
        out.truncate(len);
        Ok(TestRun {
            action,
            frame: out,
            ns_per_run: ns,
        })
    }
}

/// A channel's entries: the client → peer key in CHANNELS4 for an IPv4 client, CHANNELS
/// otherwise; the peer → client key of its peer IP (PEER_IPS4 or PEER_IPS) and what that entry
/// says of the allocation.
fn entries(
    m: &ChannelMirror,
) -> (
    Fam<ChanKey4, ChanKey>,
    ChanVal,
    Fam<PeerKey4, PeerKey>,
    DataVal,
) {
    let key = match (v4_parts(m.client), v4_parts(m.local)) {
        (Some((client_addr, client_port)), Some((local_addr, local_port))) => Fam::V4(ChanKey4 {
            client_addr,
            local_addr,
            client_port,
            local_port,
            channel: m.channel,
            pad: 0,
        }),
        _ => Fam::Any(ChanKey {
            client: Endpoint::new(m.client),
            local: Endpoint::new(m.local),
            channel: m.channel,
            pad: 0,
        }),
    };
    let val = ChanVal {
        relay: Endpoint::new(m.relay),
        peer: Endpoint::new(m.peer),
        slot: m.slot,
        pad: 0,
        expires_ns: m.expires_ns,
    };
    let pkey = peer_key(SocketAddr::new(m.peer.ip(), 0), m.relay);
    let pval = DataVal {
        client: Endpoint::new(m.client),
        local: Endpoint::new(m.local),
        slot: m.slot,
        pad: 0,
        expires_ns: 0,
    };
    (key, val, pkey, pval)
}

/// The peer → client key (PEER_IPS4 for an IPv4 peer, PEER_IPS otherwise); `peer`'s port is 0:
/// an entry covers the IP.
fn peer_key(peer: SocketAddr, relay: SocketAddr) -> Fam<PeerKey4, PeerKey> {
    match (v4_parts(peer), v4_parts(relay)) {
        (Some((peer_addr, peer_port)), Some((relay_addr, relay_port))) => Fam::V4(PeerKey4 {
            peer_addr,
            relay_addr,
            peer_port,
            relay_port,
        }),
        _ => Fam::Any(PeerKey {
            peer: Endpoint::new(peer),
            relay: Endpoint::new(relay),
        }),
    }
}

/// A permission's entries: SEND_PERMS4 for an IPv4 client and an IPv4 peer, SEND_PERMS
/// otherwise; the peer → client entry of its peer IP (PEER_IPS4 or PEER_IPS) with the permission.
fn permission_entries(
    m: &PermissionMirror,
) -> (
    Fam<SendKey4, SendKey>,
    SendVal,
    Fam<PeerKey4, PeerKey>,
    DataVal,
) {
    let peer_sa = SocketAddr::new(m.peer, 0);
    let key = match (v4_parts(m.client), v4_parts(m.local), v4_parts(peer_sa)) {
        (
            Some((client_addr, client_port)),
            Some((local_addr, local_port)),
            Some((peer_addr, _)),
        ) => Fam::V4(SendKey4 {
            client_addr,
            local_addr,
            peer_addr,
            client_port,
            local_port,
        }),
        _ => Fam::Any(SendKey {
            client: Endpoint::new(m.client),
            local: Endpoint::new(m.local),
            peer: Endpoint::new(peer_sa),
        }),
    };
    let val = SendVal {
        relay: Endpoint::new(m.relay),
        slot: m.slot,
        expires_ns: m.expires_ns,
    };
    let pkey = peer_key(peer_sa, m.relay);
    let pval = DataVal {
        client: Endpoint::new(m.client),
        local: Endpoint::new(m.local),
        slot: m.slot,
        pad: 0,
        expires_ns: m.expires_ns,
    };
    (key, val, pkey, pval)
}

fn full_or(e: aya::maps::MapError, map: &'static str) -> FastPathError {
    match &e {
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            FastPathError::Full(map)
        }
        _ => FastPathError::Map {
            map,
            reason: e.to_string(),
        },
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A verifier rejection carries the whole verifier log; one line is its last meaningful one.
fn verifier_error(e: aya::programs::ProgramError) -> String {
    let full = error_chain(&e);
    match full.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) if full.lines().count() > 1 => {
            format!(
                "{} ({})",
                full.lines().next().unwrap_or_default(),
                last.trim()
            )
        }
        _ => full,
    }
}

/// The one raw system call of the fast path: `bpf(BPF_PROG_TEST_RUN)`, which aya does not wrap.
mod sys {
    /// `union bpf_attr`'s `test` member (include/uapi/linux/bpf.h), up to `batch_size`.
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }

    const BPF_PROG_TEST_RUN: libc::c_long = 10;

    /// Returns (action, output length, mean ns per run).
    pub fn prog_test_run(
        prog_fd: i32,
        data_in: &[u8],
        data_out: &mut [u8],
        repeat: u32,
    ) -> std::io::Result<(u32, usize, u32)> {
        let mut attr = TestAttr {
            prog_fd: prog_fd as u32,
            data_size_in: data_in.len() as u32,
            data_size_out: data_out.len() as u32,
            data_in: data_in.as_ptr() as u64,
            data_out: data_out.as_mut_ptr() as u64,
            repeat,
            ..TestAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the kernel reads
        // `data_in.len()` bytes from `data_in` and writes at most `data_size_out` bytes to
        // `data_out`, both live for the call; it writes the results back into `attr`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestAttr,
                std::mem::size_of::<TestAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((
            attr.retval,
            (attr.data_size_out as usize).min(data_out.len()),
            attr.duration,
        ))
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;

    #[test]
    fn auto_is_generic_on_a_veth_and_on_lo_and_the_kernels_choice_elsewhere() {
        assert_eq!(
            effective_mode(XdpMode::Auto, "eth0", Some("veth")),
            XdpMode::Generic
        );
        assert_eq!(effective_mode(XdpMode::Auto, "lo", None), XdpMode::Generic);
        for driver in [Some("mlx5_core"), Some("virtio_net"), None] {
            assert_eq!(effective_mode(XdpMode::Auto, "eth0", driver), XdpMode::Auto);
        }
        // What the operator asked for explicitly stands.
        for mode in [XdpMode::Native, XdpMode::Generic] {
            assert_eq!(effective_mode(mode, "eth0", Some("veth")), mode);
        }
    }
}
