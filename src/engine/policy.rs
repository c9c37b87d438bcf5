//! Peer policy, bandwidth buckets and quotas.
//!
//! Which peers a client may reach (RFC 8656 §9.1, §21.3; RFC 6156 §9.1; coturn's
//! `denied-peer-ip` / `allowed-peer-ip`). A relay is a door into the network it stands in, so the
//! default is closed for every IANA special-purpose range that no public media peer lives in
//! ([`RESERVED`]), for the node's own addresses (no relay-to-self loops, no TURN inside TURN), and,
//! with no way to open them, for the ranges in [`NEVER`]: unspecified, broadcast, multicast, and
//! the 6to4 and Teredo tunnels (RFC 6156 §9.1: MUST refuse). An IPv6 address that carries an IPv4
//! address (mapped, SIIT, compatible, NAT64; CVE-2020-26262) is judged as both, against the
//! built-in tables and the operator's lists alike. Checked when a permission or channel is made,
//! for Send indications and RFC 6062 Connect, never per relayed packet.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Instant;

/// An inclusive range of addresses of one family, from `A`, `A-B` (coturn) or `A/LEN` (CIDR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpRange {
    /// `a.b.c.d/len` as a range.
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, len: u32) -> IpRange {
        let net = u32::from_be_bytes([a, b, c, d]);
        let host = if len >= 32 { 0 } else { u32::MAX >> len };
        IpRange {
            start: IpAddr::V4(Ipv4Addr::from_bits(net & !host)),
            end: IpAddr::V4(Ipv4Addr::from_bits(net | host)),
        }
    }

    /// An IPv6 network (its top 64 bits as four segments) of prefix `len` as a range.
    pub const fn v6(top: [u16; 4], len: u32) -> IpRange {
        let net = ((top[0] as u128) << 112)
            | ((top[1] as u128) << 96)
            | ((top[2] as u128) << 80)
            | ((top[3] as u128) << 64);
        let host = if len >= 128 { 0 } else { u128::MAX >> len };
        IpRange {
            start: IpAddr::V6(Ipv6Addr::from_bits(net & !host)),
            end: IpAddr::V6(Ipv6Addr::from_bits(net | host)),
        }
    }

    /// One address as a range.
    pub const fn single(ip: IpAddr) -> IpRange {
        IpRange { start: ip, end: ip }
    }

    /// Whether `ip` lies in the range. An IPv4-mapped address (`::ffff:a.b.c.d`) is compared as
    /// the IPv4 address it carries; [`PeerPolicy`] judges the other embedding forms.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.start, self.end, &ip.to_canonical()) {
            (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(x)) => a <= *x && *x <= b,
            (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(x)) => a <= *x && *x <= b,
            _ => false,
        }
    }

    /// `A/LEN` when the range is one, else `A-B` (or `A` alone).
    fn prefix_len(&self) -> Option<u32> {
        let (s, e) = match (self.start, self.end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => (u128::from(s.to_bits()), u128::from(e.to_bits())),
            (IpAddr::V6(s), IpAddr::V6(e)) => (s.to_bits(), e.to_bits()),
            _ => return None,
        };
        let bits = if self.start.is_ipv4() { 32 } else { 128 };
        let host = s ^ e;
        if s & host != 0 || host.wrapping_add(1) & host != 0 {
            return None;
        }
        Some(bits - (128 - host.leading_zeros()))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix_len() {
            _ if self.start == self.end => write!(f, "{}", self.start),
            Some(len) => write!(f, "{}/{len}", self.start),
            None => write!(f, "{}-{}", self.start, self.end),
        }
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ip = |t: &str| {
            t.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("'{}' is not an IP address", t.trim()))
        };
        if let Some((addr, len)) = s.split_once('/') {
            let addr = ip(addr)?;
            let len: u32 = len
                .trim()
                .parse()
                .map_err(|_| format!("'{}' is not a prefix length", len.trim()))?;
            return match addr {
                IpAddr::V4(a) if len <= 32 => {
                    let [a, b, c, d] = a.octets();
                    Ok(IpRange::v4(a, b, c, d, len))
                }
                IpAddr::V6(a) if len <= 128 => {
                    let host = u128::MAX.checked_shr(len).unwrap_or(0);
                    let a = a.to_bits();
                    Ok(IpRange {
                        start: IpAddr::V6(Ipv6Addr::from_bits(a & !host)),
                        end: IpAddr::V6(Ipv6Addr::from_bits(a | host)),
                    })
                }
                _ => Err(format!(
                    "prefix length {len} is longer than {}",
                    if addr.is_ipv4() { 32 } else { 128 }
                )),
            };
        }
        let (start, end) = match s.split_once('-') {
            Some((a, b)) => (ip(a)?, ip(b)?),
            None => {
                let a = ip(s)?;
                (a, a)
            }
        };
        match (start, end) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => Ok(IpRange { start, end }),
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => Ok(IpRange { start, end }),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Err(format!("range start {start} is after its end {end}"))
            }
            _ => Err(format!(
                "range {start}-{end} mixes IPv4 and IPv6 (both ends must be one family)"
            )),
        }
    }
}

/// Never relayed, whatever the lists say: a packet to these reaches the relay host itself,
/// every host of a link, or a tunnel whose far end the relay cannot judge (RFC 6156 §9.1).
pub const NEVER: &[(IpRange, &str)] = &[
    (IpRange::v4(0, 0, 0, 0, 8), "\"this network\" (RFC 791)"),
    (IpRange::v4(224, 0, 0, 0, 4), "multicast"),
    (IpRange::v4(255, 255, 255, 255, 32), "limited broadcast"),
    (IpRange::v6([0, 0, 0, 0], 128), "unspecified"),
    (IpRange::v6([0xff00, 0, 0, 0], 8), "multicast"),
    (IpRange::v6([0x2002, 0, 0, 0], 16), "6to4 (RFC 6156 §9.1)"),
    (IpRange::v6([0x2001, 0, 0, 0], 32), "Teredo (RFC 6156 §9.1)"),
];

/// Refused by default, opened by `--allowed-peer-ip` (loopback also by `--allow-loopback-peers`):
/// the IANA special-purpose ranges no public media peer lives in.
pub const RESERVED: &[(IpRange, &str)] = &[
    (IpRange::v4(10, 0, 0, 0, 8), "private-use (RFC 1918)"),
    (
        IpRange::v4(100, 64, 0, 0, 10),
        "shared address space (RFC 6598)",
    ),
    (IpRange::v4(127, 0, 0, 0, 8), "loopback"),
    (IpRange::v4(169, 254, 0, 0, 16), "link-local"),
    (IpRange::v4(172, 16, 0, 0, 12), "private-use (RFC 1918)"),
    (IpRange::v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (IpRange::v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)"),
    (IpRange::v4(192, 88, 99, 0, 24), "6to4 relay anycast"),
    (IpRange::v4(192, 168, 0, 0, 16), "private-use (RFC 1918)"),
    (IpRange::v4(198, 18, 0, 0, 15), "benchmarking (RFC 2544)"),
    (
        IpRange::v4(198, 51, 100, 0, 24),
        "documentation (TEST-NET-2)",
    ),
    (
        IpRange::v4(203, 0, 113, 0, 24),
        "documentation (TEST-NET-3)",
    ),
    (IpRange::v4(240, 0, 0, 0, 4), "reserved (class E)"),
    (IpRange::v6([0, 0, 0, 0], 128).with_last(1), "loopback"),
    (
        IpRange::v6([0x64, 0xff9b, 1, 0], 48),
        "local-use NAT64 (RFC 8215)",
    ),
    (IpRange::v6([0x100, 0, 0, 0], 64), "discard-only (RFC 6666)"),
    (IpRange::v6([0x2001, 0xdb8, 0, 0], 32), "documentation"),
    (IpRange::v6([0xfc00, 0, 0, 0], 7), "unique local (RFC 4193)"),
    (IpRange::v6([0xfe80, 0, 0, 0], 10), "link-local"),
    (
        IpRange::v6([0xfec0, 0, 0, 0], 10),
        "site-local (deprecated)",
    ),
];

impl IpRange {
    /// The single address whose last 16 bits are `last` in this range's network (for `::1`).
    const fn with_last(self, last: u16) -> IpRange {
        let IpAddr::V6(s) = self.start else {
            return self;
        };
        let ip = IpAddr::V6(Ipv6Addr::from_bits(s.to_bits() | last as u128));
        IpRange { start: ip, end: ip }
    }
}

/// The documentation ranges (RFC 5737, RFC 3849). Refused by default like every [`RESERVED`]
/// range; engine tests, benches and fuzz targets open them to stand for public peers.
pub const DOCUMENTATION: [IpRange; 4] = [
    IpRange::v4(192, 0, 2, 0, 24),
    IpRange::v4(198, 51, 100, 0, 24),
    IpRange::v4(203, 0, 113, 0, 24),
    IpRange::v6([0x2001, 0xdb8, 0, 0], 32),
];

/// The IPv4 address an IPv6 address carries, if it is IPv4-mapped (`::ffff:a.b.c.d`), SIIT
/// (`::ffff:0:a.b.c.d`, RFC 2765), IPv4-compatible (`::a.b.c.d`, deprecated but still routed by
/// some stacks) or well-known-prefix NAT64 (`64:ff9b::a.b.c.d`, RFC 6052).
pub fn embedded_v4(ip: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::from_bits(ip.to_bits() as u32);
    let carries = match s[..6] {
        [0, 0, 0, 0, 0, 0xffff] => true,
        [0, 0, 0, 0, 0xffff, 0] => true,
        [0x64, 0xff9b, 0, 0, 0, 0] => true,
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0] => ip.to_bits() > 1,
        _ => false,
    };
    carries.then_some(low)
}

/// Why a peer address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A range in [`NEVER`] (the range and its name).
    Never(IpRange, &'static str),
    /// A range in [`RESERVED`], not opened by the operator.
    Reserved(IpRange, &'static str),
    /// One of this node's own addresses (listening, relay or external).
    Own,
    /// The operator's `--denied-peer-ip`.
    Denied,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Never(r, name) => write!(f, "{name} range {r}, never relayed"),
            Refusal::Reserved(r, name) => write!(
                f,
                "{name} range {r}, refused by default (open it with --allowed-peer-ip)"
            ),
            Refusal::Own => write!(
                f,
                "an address of this server, refused by default (open it with --allowed-peer-ip)"
            ),
            Refusal::Denied => write!(f, "listed by --denied-peer-ip"),
        }
    }
}

/// The rules for peer addresses.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// `--allow-loopback-peers`: loopback peers are relayed, even when the relay itself is on
    /// loopback (tests).
    pub allow_loopback: bool,
    /// coturn's `--no-multicast-peers`. Multicast is refused either way here (safe by default);
    /// the flag is kept for compatibility.
    pub no_multicast: bool,
    pub denied: Vec<IpRange>,
    pub allowed: Vec<IpRange>,
    /// This node's own addresses: listening, relay and external (public and private).
    pub own: Vec<IpAddr>,
}

impl PeerPolicy {
    /// Whether relaying to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.judge(ip).is_ok()
    }

    /// Whether relaying to `ip` is allowed, and if not, why.
    ///
    /// Order: [`NEVER`] cannot be lifted; then the operator's `--allowed-peer-ip` opens anything
    /// else (and wins over `--denied-peer-ip`, as in coturn); then [`RESERVED`] and the node's own
    /// addresses are refused (loopback ones not with `allow_loopback`); then `--denied-peer-ip`.
    /// Each rule is tried on the address and on the IPv4 address it carries, if any.
    pub fn judge(&self, ip: IpAddr) -> Result<(), Refusal> {
        let inner = match ip {
            IpAddr::V6(v6) => embedded_v4(&v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let forms = [Some(ip), inner];
        let forms = forms.iter().flatten();
        let find = |table: &[(IpRange, &'static str)]| {
            forms
                .clone()
                .find_map(|f| table.iter().find(|(r, _)| r.contains(f)).copied())
        };
        if let Some((r, name)) = find(NEVER) {
            return Err(Refusal::Never(r, name));
        }
        let listed = |list: &[IpRange]| forms.clone().any(|f| list.iter().any(|r| r.contains(f)));
        if listed(&self.allowed) {
            return Ok(());
        }
        let loopback_ok = |f: &IpAddr| self.allow_loopback && f.to_canonical().is_loopback();
        for f in forms.clone() {
            if loopback_ok(f) {
                continue;
            }
            if let Some((r, name)) = RESERVED.iter().find(|(r, _)| r.contains(f)) {
                return Err(Refusal::Reserved(*r, name));
            }
            if self.own.contains(f) {
                return Err(Refusal::Own);
            }
        }
        if listed(&self.denied) {
            return Err(Refusal::Denied);
        }
        Ok(())
    }

    /// One line for the startup log: what is closed by default and how to open it.
    pub fn describe(&self) -> String {
        let closed: Vec<String> = RESERVED
            .iter()
            .filter(|(r, _)| {
                let loopback_open = self.allow_loopback && r.start.is_loopback();
                let listed = self
                    .allowed
                    .iter()
                    .any(|a| a.contains(&r.start) && a.contains(&r.end));
                !(loopback_open || listed)
            })
            .map(|(r, _)| r.to_string())
            .collect();
        let never: Vec<String> = NEVER.iter().map(|(r, _)| r.to_string()).collect();
        format!(
            "peer policy: refusing special-purpose ranges {} and this server's own {} address(es) \
             (open any with --allowed-peer-ip{}); never relayed: {}; {} --allowed-peer-ip, {} \
             --denied-peer-ip range(s)",
            closed.join(" "),
            self.own.len(),
            if self.allow_loopback {
                "; loopback open by --allow-loopback-peers"
            } else {
                ", loopback with --allow-loopback-peers"
            },
            never.join(" "),
            self.allowed.len(),
            self.denied.len(),
        )
    }
}

/// The byte budget of an allocation's RFC 6062 pipes (issue 15: they honour `--max-bps` and
/// `--bps-capacity` like UDP relays). A pipe cannot drop bytes as a datagram relay does, so it
/// waits: [`PipeBudget::take`] says how long. Shared by every pipe of the allocation (they may
/// run on other workers than the allocation's, hence the locks; a pipe chunk is up to 16 KiB, so
/// a lock per chunk), and with one bucket for the whole server's pipes.
#[derive(Debug)]
pub struct PipeBudget {
    /// Client to peer, peer to client (`--max-bps` each way, as for UDP).
    own: std::sync::Mutex<(TokenBucket, TokenBucket)>,
    /// Every pipe of the server (`--bps-capacity`).
    capacity: std::sync::Arc<std::sync::Mutex<TokenBucket>>,
    rate: u64,
}

/// Which way a pipe moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeDir {
    ToPeer,
    ToClient,
}

impl PipeBudget {
    pub fn new(
        rate: u64,
        capacity: std::sync::Arc<std::sync::Mutex<TokenBucket>>,
        now: Instant,
    ) -> PipeBudget {
        PipeBudget {
            own: std::sync::Mutex::new((TokenBucket::new(rate, now), TokenBucket::new(rate, now))),
            capacity,
            rate,
        }
    }

    /// The most a pipe should read at once: never more than a bucket holds, so any chunk can
    /// pass once the bucket is full.
    pub fn chunk(&self, max: usize) -> usize {
        let cap = self.capacity.lock().unwrap_or_else(|e| e.into_inner()).rate;
        let mut n = max;
        for r in [self.rate, cap] {
            if r > 0 {
                n = n.min(r.max(1) as usize);
            }
        }
        n
    }

    /// Take `n` bytes for `dir` at `now`: None when they may pass, else how long to wait
    /// before asking again.
    pub fn take(&self, now: Instant, dir: PipeDir, n: usize) -> Option<std::time::Duration> {
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = match dir {
            PipeDir::ToPeer => &mut own.0,
            PipeDir::ToClient => &mut own.1,
        };
        let mut cap = self.capacity.lock().unwrap_or_else(|e| e.into_inner());
        if !bucket.can_take(now, n) || !cap.can_take(now, n) {
            let wait = bucket.wait_for(n).max(cap.wait_for(n));
            return Some(wait.max(std::time::Duration::from_millis(1)));
        }
        bucket.try_take(now, n);
        cap.try_take(now, n);
        None
    }
}

/// A token bucket in bytes, refilled at `rate` bytes/s, holding at most one second's worth.
/// A rate of 0 means unlimited.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Bytes per second (0: unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Whether `n` bytes could be taken at `now` (refilling, taking nothing).
    pub fn can_take(&mut self, now: Instant, n: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        self.tokens >= n as u64
    }

    /// How long until `n` bytes are in the bucket, from what it holds now.
    pub fn wait_for(&self, n: usize) -> std::time::Duration {
        if self.rate == 0 {
            return std::time::Duration::ZERO;
        }
        let missing = (n as u64).saturating_sub(self.tokens);
        std::time::Duration::from_nanos(missing.saturating_mul(1_000_000_000) / self.rate)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        if !elapsed.is_zero() {
            let add = (elapsed.as_nanos() as u64).saturating_mul(self.rate) / 1_000_000_000;
            if add > 0 {
                self.tokens = self.tokens.saturating_add(add).min(self.rate);
                self.last = now;
            }
        }
    }

    /// Take `n` bytes if the bucket holds them; false means drop the packet.
    #[inline]
    pub fn try_take(&mut self, now: Instant, n: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        let n = n as u64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(s: &str) -> IpRange {
        s.parse().unwrap()
    }

    #[test]
    fn cve_2020_26262_forms_are_refused() {
        let p = PeerPolicy::default();
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "127.0.0.1",
            "127.9.8.7",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "224.0.0.1",
            "ff02::1",
            "169.254.1.1",
            "fe80::1",
            "::ffff:169.254.0.1",
            "255.255.255.255",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be refused");
        }
        for good in [
            "8.8.8.8",
            "2a00:1450::1",
            "::ffff:8.8.4.4",
            "64:ff9b::808:808",
        ] {
            assert!(p.permits(ip(good)), "{good} must be allowed");
        }
    }

    /// Every special-purpose range of issue 15, by its first, a middle and its last address,
    /// refused by default and opened by `--allowed-peer-ip`; the addresses just outside it stay
    /// public.
    #[test]
    fn special_purpose_ranges_are_closed_by_default_and_openable() {
        let closed = [
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
            "::1/128",
            "64:ff9b:1::/48",
            "100::/64",
            "2001:db8::/32",
            "fc00::/7",
            "fe80::/10",
            "fec0::/10",
        ];
        for c in closed {
            let r = range(c);
            for a in [r.start, r.end] {
                if NEVER.iter().any(|(n, _)| n.contains(&a)) {
                    continue; // 255.255.255.255 closes 240/4 and is never relayed
                }
                let p = PeerPolicy::default();
                assert!(
                    matches!(p.judge(a), Err(Refusal::Reserved(..))),
                    "{a} ({c}) must be refused by default: {:?}",
                    p.judge(a)
                );
                let open = PeerPolicy {
                    allowed: vec![r],
                    ..Default::default()
                };
                assert!(
                    open.permits(a),
                    "{a} must be opened by --allowed-peer-ip {c}"
                );
            }
        }
        for public in [
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "100.128.0.0",
        ] {
            assert!(PeerPolicy::default().permits(ip(public)), "{public}");
        }
        for never in [
            "0.0.0.0/8",
            "224.0.0.0/4",
            "::/128",
            "ff00::/8",
            "255.255.255.255/32",
        ] {
            let r = range(never);
            let p = PeerPolicy {
                allowed: vec![r],
                allow_loopback: true,
                ..Default::default()
            };
            assert!(!p.permits(r.start) && !p.permits(r.end), "{never}");
        }
    }

    /// RFC 6156 §9.1: 6to4 and Teredo are refused outright; every IPv6 form that carries an
    /// IPv4 address is judged as that address too, by the built-in tables and by the lists.
    #[test]
    fn tunnels_and_embedded_forms() {
        let p = PeerPolicy::default();
        for bad in [
            "2002:7f00:1::",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:5",
            "::ffff:10.0.0.5",
            "::10.0.0.5",
            "::ffff:192.168.1.1",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be refused");
        }
        let open = PeerPolicy {
            allowed: vec![range("2002::/16"), range("2001::/32")],
            ..Default::default()
        };
        assert!(
            !open.permits(ip("2002:808:808::1")),
            "6to4 cannot be opened"
        );
        assert!(!open.permits(ip("2001::1")), "Teredo cannot be opened");
        // The operator's deny list catches the embedded forms of what it lists...
        let deny = PeerPolicy {
            denied: vec![range("8.8.8.0/24")],
            ..Default::default()
        };
        for form in [
            "8.8.8.8",
            "::ffff:8.8.8.8",
            "::ffff:0:808:808",
            "64:ff9b::808:808",
            "::8.8.8.8",
        ] {
            assert_eq!(deny.judge(ip(form)), Err(Refusal::Denied), "{form}");
        }
        assert!(deny.permits(ip("8.8.4.4")));
        // ...and its allow list opens them.
        let allow = PeerPolicy {
            allowed: vec![range("10.0.0.0/8")],
            ..Default::default()
        };
        for form in [
            "10.0.0.5",
            "::ffff:10.0.0.5",
            "64:ff9b::a00:5",
            "::ffff:0:a00:5",
        ] {
            assert!(allow.permits(ip(form)), "{form}");
        }
        assert!(!allow.permits(ip("192.168.0.1")));
    }

    #[test]
    fn own_addresses_are_refused_unless_opened() {
        let own = vec![ip("8.8.8.8"), ip("2a00:1450::1"), ip("127.0.0.1")];
        let p = PeerPolicy {
            own: own.clone(),
            ..Default::default()
        };
        assert_eq!(p.judge(ip("8.8.8.8")), Err(Refusal::Own));
        assert_eq!(p.judge(ip("::ffff:8.8.8.8")), Err(Refusal::Own));
        assert_eq!(p.judge(ip("64:ff9b::808:808")), Err(Refusal::Own));
        assert_eq!(p.judge(ip("2a00:1450::1")), Err(Refusal::Own));
        assert!(p.permits(ip("8.8.4.4")));
        let opened = PeerPolicy {
            own: own.clone(),
            allowed: vec![range("8.8.8.8")],
            ..Default::default()
        };
        assert!(opened.permits(ip("8.8.8.8")));
        // Loopback tests: a relay on 127.0.0.1 relays to 127.0.0.1 with --allow-loopback-peers.
        let lo = PeerPolicy {
            own,
            allow_loopback: true,
            ..Default::default()
        };
        assert!(lo.permits(ip("127.0.0.1")));
        assert!(lo.permits(ip("::ffff:127.0.0.1")));
        assert_eq!(lo.judge(ip("8.8.8.8")), Err(Refusal::Own));
    }

    #[test]
    fn loopback_when_allowed_and_lists() {
        let mut p = PeerPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")));
        assert!(p.permits(ip("::1")));
        assert!(!p.permits(ip("0.0.0.0")));
        assert!(!p.permits(ip("10.1.2.3")), "private ranges stay closed");
        p.denied.push(range("8.0.0.0/8"));
        assert!(!p.permits(ip("8.1.2.3")));
        assert!(!p.permits(ip("::ffff:8.1.2.3")));
        p.allowed.push(range("8.1.0.0/16"));
        assert!(p.permits(ip("8.1.2.3")));
        assert!(!p.permits(ip("8.2.0.1")));
    }

    #[test]
    fn ranges_parse_and_print() {
        assert_eq!(range("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(range("10.0.0.1-10.0.0.9").to_string(), "10.0.0.1-10.0.0.9");
        assert_eq!(range("::1").to_string(), "::1");
        assert_eq!(range("fc00::/7").to_string(), "fc00::/7");
        assert_eq!(range("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(range("::/0").to_string(), "::/0");
        assert!("10.0.0.1/33".parse::<IpRange>().is_err());
        assert!("10.0.0.9-10.0.0.1".parse::<IpRange>().is_err());
        assert!("10.0.0.1-::1".parse::<IpRange>().is_err());
        for (r, _) in NEVER.iter().chain(RESERVED) {
            assert_eq!(range(&r.to_string()), *r);
        }
        let line = PeerPolicy::default().describe();
        assert!(
            line.contains("10.0.0.0/8") && line.contains("--allowed-peer-ip"),
            "{line}"
        );
    }

    #[test]
    fn token_bucket_limits_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert!(b.try_take(t0, 600));
        assert!(!b.try_take(t0, 600));
        // 400 left, 300 more after 0.3 s: 700, then 100 after taking 600.
        assert!(b.try_take(t0 + Duration::from_millis(300), 600));
        assert!(!b.try_take(t0 + Duration::from_millis(300), 101));
        assert!(b.try_take(t0 + Duration::from_millis(300), 100));
        assert!(!b.try_take(t0 + Duration::from_millis(300), 1));
        // Never more than one second's worth.
        assert!(b.try_take(t0 + Duration::from_secs(100), 1000));
        assert!(!b.try_take(t0 + Duration::from_secs(100), 1));
        let mut unlimited = TokenBucket::new(0, t0);
        assert!(unlimited.try_take(t0, usize::MAX));
    }

    #[test]
    fn pipe_budget_paces_each_way_and_the_server() {
        let t0 = Instant::now();
        let cap = std::sync::Arc::new(std::sync::Mutex::new(TokenBucket::new(0, t0)));
        let b = PipeBudget::new(1000, cap.clone(), t0);
        assert_eq!(b.chunk(16 * 1024), 1000);
        assert_eq!(b.take(t0, PipeDir::ToPeer, 600), None);
        // 400 left: 600 more is 200 bytes short, 0.2 s at 1,000 B/s.
        assert_eq!(
            b.take(t0, PipeDir::ToPeer, 600),
            Some(Duration::from_millis(200))
        );
        // The other way has its own bucket.
        assert_eq!(b.take(t0, PipeDir::ToClient, 1000), None);
        assert_eq!(
            b.take(t0 + Duration::from_millis(200), PipeDir::ToPeer, 600),
            None
        );
        // The server's capacity binds every pipe.
        *cap.lock().unwrap() = TokenBucket::new(500, t0);
        let c = PipeBudget::new(0, cap.clone(), t0);
        assert_eq!(c.chunk(16 * 1024), 500);
        assert_eq!(c.take(t0, PipeDir::ToPeer, 500), None);
        assert!(c.take(t0, PipeDir::ToClient, 500).is_some());
        let free = PipeBudget::new(
            0,
            std::sync::Arc::new(std::sync::Mutex::new(TokenBucket::new(0, t0))),
            t0,
        );
        assert_eq!(free.chunk(16 * 1024), 16 * 1024);
        assert_eq!(free.take(t0, PipeDir::ToPeer, usize::MAX), None);
    }
}
