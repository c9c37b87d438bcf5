//! The engine's front door: [`Server`] takes client and peer packets and timer ticks, answers
//! STUN Binding (RFC 8489 §6.3) and the TURN methods (RFC 8656 §7–§12), routes data, and leaves
//! everything that needs I/O in a queue of [`Command`]s.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::allocation::{Allocation, AllocationId, PendingAllocate, SecondRelay, State};
use super::auth::{
    AuthFailure, Credentials, FleetUsage, Key, NonceCheck, NonceKey, PasswordAlgorithm, UserDbCell,
};
use super::channel::BindConflict;
use super::limiter::Class as LimitClass;
use super::limiter::Limiter;
use super::policy::{PeerPolicy, TokenBucket};
use super::ports::PortPool;
use super::redirect::FleetPeers;
use super::stats::AllocationStats;
use super::{FiveTuple, Transport};
use crate::proto::attr;
use crate::proto::channel_data::{self, ChannelData};
mod tcp;
use tcp::TcpConnection;
pub use tcp::{ConnectionId, MAX_TCP_CONNECTIONS_PER_ALLOCATION, TCP_CONNECTION_TIMEOUT};

use crate::proto::{
    demux, Class, Message, MessageBuilder, Method, PacketKind, TransactionId, MAGIC_COOKIE,
};

/// Room a worker leaves before a peer's payload so a Data indication header (IPv6 peer: 48 bytes)
/// or ChannelData header can be written in place.
pub const PEER_HEADROOM: usize = 48;
/// Room a worker leaves after a peer's payload for padding.
pub const PEER_TAILROOM: usize = 4;
/// How long an EVEN-PORT reservation is kept (RFC 8656 §14.9 suggests about 30 s).
const RESERVATION_SECS: u64 = 30;
/// How many ports to try when binds fail because another process holds them.
const BIND_ATTEMPTS: u8 = 5;
/// The most a response to an unauthenticated request may exceed the request by, in bytes
/// (RFC 8489 §16.1.3, no amplification). A 401 with REALM (up to about 24 bytes), NONCE (45),
/// PASSWORD-ALGORITHMS and ERROR-CODE fits it even for a 20-byte request once SOFTWARE and the
/// reason phrase are left out; a Binding response (at most 44 bytes more) always fits.
pub const AMPLIFICATION_SLACK: usize = 100;

/// What the engine is configured with; built by the caller from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    /// SOFTWARE attribute in responses; None = none (`--no-software-attribute`).
    pub software: Option<String>,
    /// FINGERPRINT on every response (`--fingerprint`); otherwise only when the request had one.
    pub fingerprint: bool,
    /// No authentication at all (`--no-auth`).
    pub no_auth: bool,
    pub credentials: Credentials,
    /// Answer Binding requests (not `--no-stun`).
    pub stun: bool,
    /// Serve TURN (not `--stun-only`).
    pub turn: bool,
    /// Answer RFC 3489 Binding requests (no magic cookie) with MAPPED-ADDRESS (not
    /// `--no-stun-backward-compatibility`).
    pub classic_stun: bool,
    /// Addresses relay sockets bind to; the first of a family is preferred, others are chosen at random.
    pub relay_ips: Vec<IpAddr>,
    /// `--external-ip` mappings: (public, private); without private the mapping applies to every
    /// relay address of the public one's family.
    pub external_ips: Vec<(IpAddr, Option<IpAddr>)>,
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    pub permission_lifetime: u32,
    pub channel_lifetime: u32,
    pub nonce_lifetime: u32,
    pub peer_policy: PeerPolicy,
    /// Allocations per username, 0 = unlimited.
    pub user_quota: u32,
    /// Allocations per server, 0 = unlimited.
    pub total_quota: u32,
    /// Bytes/s per allocation and direction, 0 = unlimited.
    pub max_bps: u64,
    /// Bytes/s this engine relays in all, both directions, 0 = unlimited (`--bps-capacity`
    /// divided among the workers by the caller, so no bucket is shared between threads).
    pub bps_capacity: u64,
    pub udp_relay: bool,
    /// TCP relays (RFC 6062; not `--no-tcp-relay`).
    pub tcp_relay: bool,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// End an allocation when the expiry in its REST username passes (`--strict-expiry`).
    pub strict_expiry: bool,
    /// coturn's `--alternate-server`: every new Allocate over UDP or TCP is redirected (300 Try
    /// Alternate with ALTERNATE-SERVER, RFC 8489 §10), round robin over this list.
    pub alternate_servers: Vec<SocketAddr>,
    /// `--tls-alternate-server`: the same for Allocates over TLS and DTLS.
    pub tls_alternate_servers: Vec<SocketAddr>,
    /// `--redirect-over-allocations`: holding this many allocations or more, the node sends new
    /// UDP/TCP Allocates to a less loaded fleet peer under its own threshold (see
    /// [`super::redirect`]), 0 = never.
    pub redirect_over_allocations: u32,
    /// Challenges and Allocate attempts per client IP per second (`--unauthorized-ratelimit`),
    /// 0 = no limit; see [`super::limiter`].
    pub unauthorized_ratelimit: u32,
    /// The relay family of an Allocate that names none (`-A/--allocation-default-address-family`).
    pub default_family: DefaultFamily,
    /// RFC 5780 NAT behaviour discovery (`--rfc5780`); None: CHANGE-REQUEST is answered 420.
    pub rfc5780: Option<Rfc5780>,
    /// `--reload-keeps-removed-users`: a user removed from the config (SIGHUP) or the user
    /// database keeps its live allocations until they expire. Off by default: removing a user
    /// is how an operator revokes it, and its calls end at once.
    pub keep_removed_users: bool,
}

/// The alternate addresses of RFC 5780 (§6, §7.2): each listening IP has a partner of its family,
/// and the listening port has the alternate port (`--alt-listening-port`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rfc5780 {
    /// (listening IP, its alternate IP).
    pub other_ip: Vec<(IpAddr, IpAddr)>,
    pub port: u16,
    pub alt_port: u16,
}

impl Rfc5780 {
    /// Pair every address of `ips` with the next one of its family (cyclically), so that two
    /// addresses of one family are each other's alternate. Addresses alone in their family get
    /// no partner.
    pub fn new(ips: &[IpAddr], port: u16, alt_port: u16) -> Rfc5780 {
        let mut other_ip = Vec::new();
        for v6 in [false, true] {
            let fam: Vec<IpAddr> = ips.iter().copied().filter(|i| i.is_ipv6() == v6).collect();
            if fam.len() < 2 {
                continue;
            }
            for (i, ip) in fam.iter().enumerate() {
                other_ip.push((*ip, fam[(i + 1) % fam.len()]));
            }
        }
        Rfc5780 {
            other_ip,
            port,
            alt_port,
        }
    }

    fn partner_ip(&self, ip: IpAddr) -> Option<IpAddr> {
        self.other_ip
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, b)| *b)
    }

    fn partner_port(&self, port: u16) -> Option<u16> {
        if port == self.port {
            Some(self.alt_port)
        } else if port == self.alt_port {
            Some(self.port)
        } else {
            None
        }
    }

    /// OTHER-ADDRESS for a request that arrived at `local`: alternate IP and alternate port.
    pub fn other_address(&self, local: SocketAddr) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.partner_ip(local.ip())?,
            self.partner_port(local.port())?,
        ))
    }

    /// Where the answer to a request that arrived at `local` is sent from, given its
    /// CHANGE-REQUEST flags (RFC 5780 §7.2).
    pub fn source(
        &self,
        local: SocketAddr,
        change_ip: bool,
        change_port: bool,
    ) -> Option<SocketAddr> {
        self.other_address(local)?;
        let ip = if change_ip {
            self.partner_ip(local.ip())?
        } else {
            local.ip()
        };
        let port = if change_port {
            self.partner_port(local.port())?
        } else {
            local.port()
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// Which family an Allocate without REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY gets
/// (coturn's `-A/--allocation-default-address-family`: ipv4, ipv6 or keep).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultFamily {
    /// IPv4, whatever the client's own family (what browsers on IPv6 expect).
    #[default]
    Ipv4,
    Ipv6,
    /// The family of the address the client came from.
    Keep,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            realm: "vigi-turn".into(),
            software: Some(format!("vigi-turn {}", env!("CARGO_PKG_VERSION"))),
            fingerprint: false,
            no_auth: false,
            credentials: Credentials::new("vigi-turn", ':'),
            stun: true,
            turn: true,
            classic_stun: true,
            relay_ips: Vec::new(),
            external_ips: Vec::new(),
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            nonce_lifetime: 600,
            peer_policy: PeerPolicy::default(),
            user_quota: 0,
            total_quota: 0,
            max_bps: 0,
            bps_capacity: 0,
            udp_relay: true,
            tcp_relay: true,
            max_permissions: 256,
            max_channels: 256,
            strict_expiry: false,
            alternate_servers: Vec::new(),
            tls_alternate_servers: Vec::new(),
            redirect_over_allocations: 0,
            unauthorized_ratelimit: 100,
            default_family: DefaultFamily::Ipv4,
            rfc5780: None,
            keep_removed_users: false,
        }
    }
}

/// State shared by the engines of all workers: the port pool, the nonce key, quota counts and
/// EVEN-PORT reservations. Touched on control-plane requests only.
#[derive(Debug)]
pub struct Shared {
    pub ports: PortPool,
    pub nonce_key: NonceKey,
    pub total_allocations: AtomicU32,
    allocations_by_user: Mutex<HashMap<String, u32>>,
    reservations: Mutex<HashMap<u64, Reservation>>,
    /// The user database snapshot (`--redis-userdb`), refreshed off the data path.
    pub userdb: Arc<UserDbCell>,
    /// RFC 6062 peer connections by CONNECTION-ID, of every engine: a client's data connection
    /// may reach any worker, so its ConnectionBind is checked here.
    tcp_conns: Mutex<HashMap<ConnectionId, TcpConnection>>,
    /// Hands each engine its shard number (which engine an AllocationId belongs to).
    next_shard: AtomicU32,
    /// Allocations per user on the other nodes of the fleet, for the user quota.
    pub fleet_usage: Arc<FleetUsage>,
    /// Where a draining node redirects new Allocates (healthy peers of its region).
    pub fleet_peers: Arc<FleetPeers>,
    /// Every RFC 6062 pipe's bytes (`--bps-capacity`, a worker's share; see
    /// [`super::policy::PipeBudget`]).
    pub pipe_capacity: Arc<Mutex<TokenBucket>>,
}

#[derive(Debug, Clone)]
struct Reservation {
    addr: SocketAddr,
    expires_unix: u64,
    /// The quota name of the user who reserved it: the reservation counts against it.
    user: String,
}

impl Shared {
    pub fn new(min_port: u16, max_port: u16, nonce_key: [u8; 32]) -> Self {
        Shared {
            ports: PortPool::new(min_port, max_port),
            nonce_key: NonceKey(nonce_key),
            total_allocations: AtomicU32::new(0),
            allocations_by_user: Mutex::new(HashMap::new()),
            reservations: Mutex::new(HashMap::new()),
            userdb: Arc::default(),
            tcp_conns: Mutex::new(HashMap::new()),
            next_shard: AtomicU32::new(0),
            fleet_usage: Arc::default(),
            fleet_peers: Arc::default(),
            pipe_capacity: Arc::new(Mutex::new(TokenBucket::new(0, Instant::now()))),
        }
    }

    /// Count an allocation for `user` (its quota name, [`auth::quota_user`]) if both quotas
    /// allow it; allocations on other nodes of the fleet count too (`elsewhere.0` of the user,
    /// `elsewhere.1` in all). The empty name of `--no-auth` has no user quota: there is no user
    /// to count, and the total quota still bounds it.
    fn try_count(
        &self,
        user: &str,
        user_quota: u32,
        total_quota: u32,
        elsewhere: (u32, u32),
    ) -> bool {
        let mut by_user = self
            .allocations_by_user
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = by_user.get(user).copied().unwrap_or(0);
        if user_quota > 0 && !user.is_empty() && n.saturating_add(elsewhere.0) >= user_quota {
            return false;
        }
        let total = self.total_allocations.load(Ordering::Relaxed);
        if total_quota > 0 && total.saturating_add(elsewhere.1) >= total_quota {
            return false;
        }
        self.total_allocations.fetch_add(1, Ordering::Relaxed);
        by_user.insert(user.to_owned(), n + 1);
        true
    }

    fn uncount(&self, user: &str) {
        let mut by_user = self
            .allocations_by_user
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Entry::Occupied(mut e) = by_user.entry(user.to_owned()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        self.total_allocations.fetch_sub(1, Ordering::Relaxed);
    }

    /// EVEN-PORT reservations held now (each counts against its user's quota and the total).
    pub fn reservations_held(&self) -> usize {
        self.reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The rate of the bucket every RFC 6062 pipe draws from (kept when unchanged).
    fn set_pipe_capacity(&self, rate: u64, now: Instant) {
        let mut cap = self.pipe_capacity.lock().unwrap_or_else(|e| e.into_inner());
        if cap.rate() != rate {
            *cap = TokenBucket::new(rate, now);
        }
    }

    /// Free reservations whose time is up.
    fn sweep_reservations(&self, unix_now: u64) {
        let mut r = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|_, v| {
            let keep = v.expires_unix > unix_now;
            if !keep {
                self.ports.release(v.addr.ip(), v.addr.port());
                self.uncount(&v.user);
            }
            keep
        });
    }
}

/// Something the worker must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send these bytes to the client on this 5-tuple.
    Send { to: FiveTuple, data: Vec<u8> },
    /// Bind a UDP relay socket to `addr` and report with [`Server::handle_relay_bound`].
    /// `second`: the IPv6 socket of a dual allocation, whose first socket is already bound;
    /// the worker keeps both and sends to a peer from the one of its family.
    /// `tcp`: a listening TCP socket (RFC 6062) whose accepted peers go to
    /// [`Server::handle_tcp_peer_accepted`].
    BindRelay {
        id: AllocationId,
        addr: SocketAddr,
        dont_fragment: bool,
        second: bool,
        tcp: bool,
    },
    /// Close the relay socket(s) of this allocation.
    FreeRelay { id: AllocationId },
    /// Open a TCP connection from the relayed address `from` to `peer` (RFC 6062 Connect) and
    /// report with [`Server::handle_tcp_peer_connected`].
    ConnectPeer {
        cid: ConnectionId,
        from: SocketAddr,
        peer: SocketAddr,
    },
    /// The client's data connection on `client` now carries the raw bytes of peer connection
    /// `cid`, both ways (after the ConnectionBind response queued just before).
    BindConnection {
        cid: ConnectionId,
        client: FiveTuple,
    },
    /// Close peer connection `cid` (and the data connection bound to it), or stop connecting it.
    CloseConnection { cid: ConnectionId },
}

/// What to do with a packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientDecision {
    /// Send `packet[payload]` from the allocation's relay socket to `peer`.
    Forward {
        relay: AllocationId,
        peer: SocketAddr,
        payload: Range<usize>,
    },
    /// Nothing to relay (the packet was answered through commands, or dropped).
    Done,
}

/// What to do with a packet from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerDecision {
    /// Send `buf[frame]` (header written in place before the payload) to the client.
    Forward {
        to: FiveTuple,
        frame: Range<usize>,
    },
    Drop,
}

/// Error codes an Allocate can be refused with, counted one by one (the last slot: any other).
pub const REFUSAL_CODES: [u16; 9] = [300, 400, 403, 437, 440, 442, 486, 508, 0];

/// Refused Allocates by error code ([`REFUSAL_CODES`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefusedByCode(pub [u64; REFUSAL_CODES.len()]);

impl RefusedByCode {
    pub fn add(&mut self, code: u16) {
        let i = REFUSAL_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(REFUSAL_CODES.len() - 1);
        self.0[i] += 1;
    }

    /// (code, count); code 0 stands for "other".
    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        REFUSAL_CODES.iter().copied().zip(self.0.iter().copied())
    }

    pub fn merge(&mut self, o: &RefusedByCode) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }
}

/// Failed credentials by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailures {
    /// No such user (or a realm that is not ours, or an unreadable username).
    pub unknown_user: u64,
    /// The user exists, MESSAGE-INTEGRITY did not match: wrong password or secret.
    pub wrong_credentials: u64,
    /// A REST username whose expiry has passed.
    pub expired: u64,
    /// SHA-256 asked for a user known only by an MD5 key.
    pub algorithm: u64,
}

impl AuthFailures {
    pub fn merge(&mut self, o: &AuthFailures) {
        self.unknown_user += o.unknown_user;
        self.wrong_credentials += o.wrong_credentials;
        self.expired += o.expired;
        self.algorithm += o.algorithm;
    }
}

/// Event counts since start, for metrics (summed across workers at scrape time).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub binding_requests: u64,
    pub binding_responses: u64,
    pub binding_errors: u64,
    pub allocations_created: u64,
    pub allocations_expired: u64,
    pub allocations_deleted: u64,
    pub allocations_refused: u64,
    pub unauthorized: u64,
    pub auth_failures: u64,
    pub stale_nonces: u64,
    pub malformed: u64,
    pub dropped_no_permission: u64,
    pub dropped_bandwidth: u64,
    /// Refused Allocates by error code.
    pub refused_by_code: RefusedByCode,
    /// Failed credentials by reason (their sum is `auth_failures`).
    pub auth_failures_by_reason: AuthFailures,
    /// Challenges and Allocate attempts not answered: the source was over
    /// `--unauthorized-ratelimit`.
    pub rate_limited: u64,
    /// Responses to unauthenticated requests not sent because they would have exceeded the
    /// request by more than [`AMPLIFICATION_SLACK`].
    pub amplification_dropped: u64,
    /// Packets relayed without a channel: Send indications forwarded to a peer, and peer data
    /// sent to a client as a Data indication (RFC 8656 §11). Firefox relays everything this way.
    pub send_indications: u64,
    pub data_indications: u64,
    /// Traffic of allocations that have ended.
    pub closed_traffic: AllocationStats,
}

struct Slot {
    generation: u32,
    alloc: Option<Allocation>,
}

/// The live allocation in slot `id`, borrowing only the slab (so other fields stay usable).
#[inline]
fn slot_mut(slots: &mut [Slot], id: AllocationId) -> Option<&mut Allocation> {
    let s = slots.get_mut(id.index as usize)?;
    if s.generation != id.generation {
        return None;
    }
    s.alloc.as_mut()
}

/// The PASSWORD-ALGORITHMS every challenge advertises: MD5, then SHA-256, neither with
/// parameters (RFC 8489 §14.11).
const PASSWORD_ALGORITHMS: [u8; 8] = [
    0,
    attr::PASSWORD_ALGORITHM_MD5 as u8,
    0,
    0,
    0,
    attr::PASSWORD_ALGORITHM_SHA256 as u8,
    0,
    0,
];

/// The password algorithm of a signed request (RFC 8489 §9.2.4): MD5 when it names neither
/// PASSWORD-ALGORITHM nor PASSWORD-ALGORITHMS; otherwise both must be there, the list must be
/// exactly the one our challenge sent (so a man in the middle who struck SHA-256 from it is
/// caught: no downgrade to MD5) and the algorithm one of its entries. None: 400.
fn password_algorithm(m: &Message) -> Option<PasswordAlgorithm> {
    match (
        m.get(attr::PASSWORD_ALGORITHM),
        m.get(attr::PASSWORD_ALGORITHMS),
    ) {
        (None, None) => Some(PasswordAlgorithm::Md5),
        (Some(alg), Some(list)) if list == PASSWORD_ALGORITHMS && alg.len() == 4 => {
            if !list.chunks_exact(4).any(|entry| entry == alg) {
                return None;
            }
            match u16::from_be_bytes([alg[0], alg[1]]) {
                attr::PASSWORD_ALGORITHM_MD5 => Some(PasswordAlgorithm::Md5),
                attr::PASSWORD_ALGORITHM_SHA256 => Some(PasswordAlgorithm::Sha256),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Who a request authenticated as, and how to sign the answer.
struct Auth {
    username: String,
    key: Option<Key>,
    sha256: bool,
}

/// How a response is to be finished.
#[derive(Clone, Copy)]
pub(super) struct Sign<'k> {
    key: Option<&'k Key>,
    sha256: bool,
    fingerprint: bool,
}

/// One worker's TURN/STUN engine. See the module docs for the calling contract.
pub struct Server {
    config: Arc<ServerConfig>,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    by_five_tuple: HashMap<FiveTuple, AllocationId>,
    timers: BinaryHeap<Reverse<(Instant, AllocationId)>>,
    commands: VecDeque<Command>,
    rng: SmallRng,
    /// A monotonic instant and the Unix time it corresponds to.
    unix_base: (Instant, u64),
    counters: Counters,
    /// The server-wide bandwidth cap (this worker's share of `--bps-capacity`).
    capacity: TokenBucket,
    draining: bool,
    limiter: Limiter,
    /// The user database snapshot last looked at for removed users ([`Server::check_userdb`]).
    userdb_seen: Option<Arc<super::auth::UserDb>>,
    /// This engine's number among the workers' (see [`Shared`]'s connection table).
    shard: u32,
    /// The 30 s deadlines of the RFC 6062 connections this engine made.
    conn_timers: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
    /// Round-robin position in the alternate-server lists.
    alternate_turn: usize,
}

impl Server {
    /// A new engine. `now`/`unix_now` anchor Unix time (REST expiry, nonces) to the monotonic
    /// clock; `seed` drives port choice and transaction ids.
    pub fn new(
        config: Arc<ServerConfig>,
        shared: Arc<Shared>,
        now: Instant,
        unix_now: u64,
        seed: u64,
    ) -> Self {
        // A stream of its own, so the limiter key does not shift port choice and transaction ids.
        let mut key_rng = SmallRng::seed_from_u64(seed ^ 0x6c69_6d69_7465_7221);
        let limiter = Limiter::new(now, (key_rng.gen(), key_rng.gen()));
        let shard = shared.next_shard.fetch_add(1, Ordering::Relaxed);
        shared.set_pipe_capacity(config.bps_capacity, now);
        Server {
            capacity: TokenBucket::new(config.bps_capacity, now),
            config,
            shared,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_five_tuple: HashMap::new(),
            timers: BinaryHeap::new(),
            commands: VecDeque::new(),
            rng: SmallRng::seed_from_u64(seed),
            unix_base: (now, unix_now),
            counters: Counters::default(),
            draining: false,
            limiter,
            userdb_seen: None,
            shard,
            conn_timers: BinaryHeap::new(),
            alternate_turn: 0,
        }
    }

    /// Swap in a new configuration (reload). Live allocations keep their credentials and state.
    pub fn set_config(&mut self, config: Arc<ServerConfig>) {
        if config.bps_capacity != self.config.bps_capacity {
            self.capacity = TokenBucket::new(config.bps_capacity, self.unix_base.0);
            self.shared
                .set_pipe_capacity(config.bps_capacity, self.unix_base.0);
        }
        let old = std::mem::replace(&mut self.config, config);
        let db = self.userdb_seen.clone();
        self.end_removed_users(&old.credentials, db.as_deref());
    }

    /// End the allocations of users that were known (a static user, or one of the user
    /// database) and no longer are, unless `keep_removed_users`. REST credentials are not
    /// users: an allocation keeps the key it was made with, so rotating a secret cuts no call.
    fn end_removed_users(
        &mut self,
        old_users: &super::auth::Credentials,
        old_db: Option<&super::auth::UserDb>,
    ) {
        if self.config.keep_removed_users {
            return;
        }
        let db = self.userdb_seen.clone();
        let known_now = |name: &str| {
            self.config.credentials.is_static_user(name)
                || db.as_deref().is_some_and(|d| d.has_user(name))
        };
        let known_before =
            |name: &str| old_users.is_static_user(name) || old_db.is_some_and(|d| d.has_user(name));
        let removed: Vec<AllocationId> = self
            .allocations()
            .filter(|a| known_before(&a.username) && !known_now(&a.username))
            .map(|a| a.id)
            .collect();
        for id in removed {
            self.counters.allocations_deleted += 1;
            self.free(id, "user removed");
        }
    }

    /// A new user database snapshot was published: end the allocations of users it dropped.
    fn check_userdb(&mut self) {
        let latest = self.shared.userdb.latest();
        let same = match (&latest, &self.userdb_seen) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let old = std::mem::replace(&mut self.userdb_seen, latest);
        let config = self.config.clone();
        self.end_removed_users(&config.credentials, old.as_deref());
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Live allocations.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.slots.iter().filter_map(|s| s.alloc.as_ref())
    }

    /// The wall clock read now (`unix`: seconds since the Unix epoch). Call it at least once a
    /// second (the worker does, on its tick): REST expiries and nonce timestamps follow the
    /// real wall clock, so an NTP step is seen at once instead of the clock read at start plus
    /// monotonic time (which, after a step, accepted credentials a day past their expiry or
    /// refused the ones just minted).
    pub fn handle_wall_clock(&mut self, now: Instant, unix: u64) {
        self.unix_base = (now, unix);
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix_base.1 + now.saturating_duration_since(self.unix_base.0).as_secs()
    }

    /// The next command for the worker. Call until None after every `handle_*`.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Server::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let alloc = self.timers.peek().map(|Reverse((t, _))| *t);
        let conn = self.conn_timers.peek().map(|Reverse((t, _))| *t);
        match (alloc, conn) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }

    /// Expire allocations whose time is up (RFC 8656 §7: an allocation lives until its lifetime
    /// ends without a Refresh).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(a) = self.get_mut(id) else {
                continue;
            };
            if a.timer_at != Some(t) {
                continue; // superseded by an earlier entry for the same allocation
            }
            a.timer_at = None;
            let (deadline, active) = (a.deadline(), a.state == State::Active);
            if deadline <= now && active {
                self.counters.allocations_expired += 1;
                self.free(id, "allocation timeout");
            } else {
                self.schedule(id);
            }
        }
        self.expire_connections(now);
        self.shared.sweep_reservations(self.unix(now));
        self.check_userdb();
    }

    /// Give allocation `id` a timer entry at its deadline unless it has one at or before it:
    /// one entry per allocation, however often it is refreshed.
    fn schedule(&mut self, id: AllocationId) {
        let Some(a) = self.get_mut(id) else {
            return;
        };
        let deadline = a.deadline();
        if a.timer_at.is_some_and(|t| t <= deadline) {
            return;
        }
        a.timer_at = Some(deadline);
        self.timers.push(Reverse((deadline, id)));
    }

    /// Entries in the allocation timer heap (for tests: one per allocation at most, plus those
    /// superseded by a shorter Refresh).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    fn get(&self, id: AllocationId) -> Option<&Allocation> {
        let s = self.slots.get(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.alloc.as_ref()
    }

    fn get_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        let s = self.slots.get_mut(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.alloc.as_mut()
    }

    /// The allocation on this 5-tuple, if any (for workers and tests).
    pub fn allocation_on(&self, five: &FiveTuple) -> Option<&Allocation> {
        self.get(*self.by_five_tuple.get(five)?)
    }

    /// The client's connection closed (TCP/TLS) or its DTLS session ended: its allocation ends
    /// (RFC 8656 §3.1).
    pub fn handle_transport_closed(&mut self, five: FiveTuple) {
        if let Some(&id) = self.by_five_tuple.get(&five) {
            self.counters.allocations_deleted += 1;
            let reason = match five.transport {
                Transport::Tcp => "TCP connection closed by client",
                Transport::Tls => "TLS connection closed by client",
                Transport::Dtls => "DTLS session closed by client",
                Transport::Udp => "UDP transport closed",
            };
            self.free(id, reason);
        }
    }

    /// Remove an allocation and give back everything it held; `reason` goes to the session-end
    /// log line.
    fn free(&mut self, id: AllocationId, reason: &str) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.generation != id.generation {
            return;
        }
        let Some(mut a) = slot.alloc.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(id.index);
        self.by_five_tuple.remove(&a.five_tuple);
        for r in std::iter::once(a.relay).chain(a.second_relay()) {
            if r.port() != 0 {
                self.shared.ports.release(r.ip(), r.port());
            }
        }
        let sep = self.config.credentials.rest_separator();
        self.shared
            .uncount(super::auth::quota_user(&a.username, sep));
        // Bytes a pipe still copies after this are not counted: it is being closed.
        a.stats = a.traffic();
        a.tcp_traffic.clear();
        self.counters.closed_traffic.merge(&a.stats);
        if a.state == State::Active {
            crate::metrics::log_allocation_ended(&self.config.realm, &a, reason);
        }
        if a.tcp {
            self.close_connections_of(id);
        }
        self.commands.push_back(Command::FreeRelay { id });
    }

    // ---------------------------------------------------------------- client input

    /// A packet from a client on `five`. Returns a data-plane decision; control-plane answers
    /// are queued as commands.
    pub fn handle_client_input(
        &mut self,
        now: Instant,
        five: FiveTuple,
        packet: &[u8],
    ) -> ClientDecision {
        match demux(packet) {
            PacketKind::ChannelData => self.handle_channel_data(now, five, packet),
            PacketKind::Stun => match Message::decode(packet) {
                Ok(m) => self.handle_stun(now, five, &m),
                Err(_) => {
                    self.counters.malformed += 1;
                    ClientDecision::Done
                }
            },
            _ => {
                self.counters.malformed += 1;
                ClientDecision::Done
            }
        }
    }

    /// ChannelData from a client (RFC 8656 §12.6).
    fn handle_channel_data(
        &mut self,
        now: Instant,
        five: FiveTuple,
        packet: &[u8],
    ) -> ClientDecision {
        let Ok(cd) = ChannelData::decode(packet) else {
            self.counters.malformed += 1;
            return ClientDecision::Done;
        };
        let Some(&id) = self.by_five_tuple.get(&five) else {
            return ClientDecision::Done;
        };
        let len = cd.data.len();
        let Some(a) = self.get_mut(id) else {
            return ClientDecision::Done;
        };
        a.stats.client_rcv.add(len);
        let Some(peer) = a.channels.peer(cd.channel, now) else {
            a.stats.dropped.add(len);
            self.counters.dropped_no_permission += 1;
            return ClientDecision::Done;
        };
        self.forward_to_peer(
            now,
            id,
            peer,
            channel_data::HEADER_LEN..channel_data::HEADER_LEN + len,
        )
    }

    /// Shared tail of ChannelData and Send: permission, bandwidth, counters.
    #[inline]
    fn forward_to_peer(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: SocketAddr,
        payload: Range<usize>,
    ) -> ClientDecision {
        let Some(a) = slot_mut(&mut self.slots, id) else {
            return ClientDecision::Done;
        };
        let len = payload.len();
        // A TCP allocation relays over its connections only (RFC 6062 §5).
        if a.tcp
            || a.state != State::Active
            || a.expires <= now
            || !a.permissions.allows(peer.ip(), now)
        {
            a.stats.dropped.add(len);
            self.counters.dropped_no_permission += 1;
            return ClientDecision::Done;
        }
        if !a.to_peer_bucket.try_take(now, len) || !self.capacity.try_take(now, len) {
            a.stats.dropped.add(len);
            self.counters.dropped_bandwidth += 1;
            return ClientDecision::Done;
        }
        a.stats.peer_sent.add(len);
        ClientDecision::Forward {
            relay: id,
            peer,
            payload,
        }
    }

    fn handle_stun(&mut self, now: Instant, five: FiveTuple, m: &Message) -> ClientDecision {
        if m.is_classic() {
            // RFC 5389 §12: only Binding is answered for an RFC 3489 client.
            if m.class() == Class::Request
                && m.method() == Method::BINDING
                && self.config.stun
                && self.config.classic_stun
            {
                self.handle_binding(five, m);
            }
            return ClientDecision::Done;
        }
        match m.class() {
            Class::Indication if m.method() == Method::SEND => self.handle_send(now, five, m),
            Class::Request => {
                self.handle_request(now, five, m);
                ClientDecision::Done
            }
            // Responses and other indications to a server are ignored.
            _ => ClientDecision::Done,
        }
    }

    /// Send indication (RFC 8656 §10.2).
    fn handle_send(&mut self, now: Instant, five: FiveTuple, m: &Message) -> ClientDecision {
        let Some(&id) = self.by_five_tuple.get(&five) else {
            return ClientDecision::Done;
        };
        let (Some(peer), Some(data)) = (
            m.get_xor_address(attr::XOR_PEER_ADDRESS),
            m.get_range(attr::DATA),
        ) else {
            self.counters.malformed += 1;
            return ClientDecision::Done;
        };
        if let Some(a) = self.get_mut(id) {
            a.stats.client_rcv.add(data.len());
        }
        let d = self.forward_to_peer(now, id, peer, data);
        if matches!(d, ClientDecision::Forward { .. }) {
            self.counters.send_indications += 1;
        }
        d
    }

    fn handle_request(&mut self, now: Instant, five: FiveTuple, m: &Message) {
        // RFC 8489 §6.3.1: unknown comprehension-required attributes get 420.
        let unknown = m.unknown_required(16);
        if !unknown.is_empty() {
            let value: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
            let sign = self.plain_sign(m);
            self.respond_error(five, m, 420, sign, |b| {
                b.attr(attr::UNKNOWN_ATTRIBUTES, &value);
            });
            return;
        }
        let method = m.method();
        if method == Method::BINDING {
            if self.config.stun {
                self.handle_binding(five, m);
            }
            return;
        }
        if !self.config.turn {
            let sign = self.plain_sign(m);
            self.respond_error(five, m, 403, sign, |_| {});
            return;
        }
        // An allocation past its lifetime is gone even if the timer has not fired yet (RFC 8656
        // §7): a late timer must not let a request revive it.
        if let Some(&id) = self.by_five_tuple.get(&five) {
            if self
                .get(id)
                .is_some_and(|a| a.state == State::Active && a.expires <= now)
            {
                self.counters.allocations_expired += 1;
                self.free(id, "allocation timeout");
            }
        }
        // A retransmitted request on an allocation gets the cached answer (RFC 8489 §6.3.1,
        // RFC 8656 §7.2 on retransmitted Allocates).
        if let Some(a) = self.by_five_tuple.get(&five).and_then(|&id| self.get(id)) {
            if &a.last_tid == m.transaction_id() && !a.last_response.is_empty() {
                let data = a.last_response.clone();
                self.commands.push_back(Command::Send { to: five, data });
                return;
            }
            if a.state != State::Active {
                return; // still binding: the answer will come
            }
        }
        match method {
            Method::ALLOCATE => self.handle_allocate(now, five, m),
            Method::REFRESH => self.handle_refresh(now, five, m),
            Method::CREATE_PERMISSION => self.handle_create_permission(now, five, m),
            Method::CHANNEL_BIND => self.handle_channel_bind(now, five, m),
            Method::CONNECT => self.handle_connect(now, five, m),
            Method::CONNECTION_BIND => self.handle_connection_bind(now, five, m),
            _ => {
                let sign = self.plain_sign(m);
                self.respond_error(five, m, 400, sign, |_| {});
            }
        }
    }

    /// Binding request (RFC 8489 §6.3.1.1; RFC 5389 §15.1 MAPPED-ADDRESS for RFC 3489 clients).
    fn handle_binding(&mut self, five: FiveTuple, m: &Message) {
        self.counters.binding_requests += 1;
        // RFC 5780 §7.2: CHANGE-REQUEST picks the address the answer comes from; OTHER-ADDRESS
        // and RESPONSE-ORIGIN tell the client what it can test against.
        let mut from = five.server;
        let mut discovery = None;
        if let Some(rfc) = &self.config.rfc5780 {
            if let Some(other) = rfc.other_address(five.server) {
                discovery = Some(other);
            }
        }
        if let Some(value) = m.get(attr::CHANGE_REQUEST) {
            let Some(other) = discovery else {
                // No alternate address here (RFC 5780 off, or a listener without a partner):
                // 420 as for any unknown attribute; a classic RFC 3489 client is answered as
                // before RFC 5780 (from the address it used).
                if m.is_classic() {
                    return self.answer_binding(five, m, from, None);
                }
                let sign = self.plain_sign(m);
                self.respond_error(five, m, 420, sign, |b| {
                    b.attr(
                        attr::UNKNOWN_ATTRIBUTES,
                        &attr::CHANGE_REQUEST.to_be_bytes(),
                    );
                });
                self.counters.binding_responses += 1;
                return;
            };
            if value.len() != 4 || five.transport != Transport::Udp {
                // Malformed, or over a stream where another source address cannot answer.
                let sign = self.plain_sign(m);
                self.respond_error(five, m, 400, sign, |_| {});
                self.counters.binding_responses += 1;
                return;
            }
            let (change_ip, change_port) = (value[3] & 0x04 != 0, value[3] & 0x02 != 0);
            let rfc = self.config.rfc5780.as_ref();
            from = rfc
                .and_then(|r| r.source(five.server, change_ip, change_port))
                .unwrap_or(other);
        }
        self.answer_binding(five, m, from, discovery)
    }

    /// The Binding success response, sent from `from`; with `other` (RFC 5780 in use) it
    /// carries RESPONSE-ORIGIN and OTHER-ADDRESS (SOURCE-ADDRESS and CHANGED-ADDRESS for an
    /// RFC 3489 client).
    fn answer_binding(
        &mut self,
        five: FiveTuple,
        m: &Message,
        from: SocketAddr,
        other: Option<SocketAddr>,
    ) {
        self.counters.binding_responses += 1;
        let mut out = Vec::with_capacity(96);
        let mut b = if m.is_classic() {
            let mut b = MessageBuilder::new_raw(
                &mut out,
                Method::BINDING,
                Class::Success,
                m.raw_transaction(),
            );
            b.address(attr::MAPPED_ADDRESS, &five.client);
            if let Some(other) = other {
                b.address(attr::SOURCE_ADDRESS, &from);
                b.address(attr::CHANGED_ADDRESS, &other);
            }
            b
        } else {
            let mut b = MessageBuilder::new(
                &mut out,
                Method::BINDING,
                Class::Success,
                m.transaction_id(),
            );
            b.xor_address(attr::XOR_MAPPED_ADDRESS, &five.client);
            if let Some(other) = other {
                // MAPPED-ADDRESS too, as coturn sends it to RFC 5780 clients (their tools print it).
                b.address(attr::MAPPED_ADDRESS, &five.client);
                b.address(attr::RESPONSE_ORIGIN, &from);
                b.address(attr::OTHER_ADDRESS, &other);
            }
            b
        };
        let fingerprint = !m.is_classic() && (m.has_fingerprint() || self.config.fingerprint);
        // SOFTWARE only while the answer stays within AMPLIFICATION_SLACK of the request (a long
        // `--software-attribute` must not turn Binding into a reflector).
        if let Some(s) = &self.config.software {
            let after =
                b.len() + 4 + ((s.len().min(0xFFFF) + 3) & !3) + 8 * usize::from(fingerprint);
            if after <= m.as_bytes().len() + AMPLIFICATION_SLACK {
                b.attr(attr::SOFTWARE, s.as_bytes());
            }
        }
        if fingerprint {
            b.fingerprint();
        }
        self.commands.push_back(Command::Send {
            to: FiveTuple {
                server: from,
                ..five
            },
            data: out,
        });
    }

    fn plain_sign(&self, m: &Message) -> Sign<'static> {
        Sign {
            key: None,
            sha256: false,
            fingerprint: m.has_fingerprint() || self.config.fingerprint,
        }
    }

    /// Build a response to `m` with the attributes `fill` adds, then SOFTWARE, integrity and
    /// FINGERPRINT as `sign` says.
    fn build_response(
        &self,
        m: &Message,
        class: Class,
        sign: Sign,
        fill: impl FnOnce(&mut MessageBuilder),
    ) -> Vec<u8> {
        self.build_with(m, class, sign, true, fill)
    }

    /// [`Server::build_response`], with SOFTWARE only if `software`.
    fn build_with(
        &self,
        m: &Message,
        class: Class,
        sign: Sign,
        software: bool,
        fill: impl FnOnce(&mut MessageBuilder),
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        let mut b = MessageBuilder::new(&mut out, m.method(), class, m.transaction_id());
        fill(&mut b);
        self.seal(&mut b, sign, software);
        out
    }

    /// The one place an answer is finished: SOFTWARE (if `software`), MESSAGE-INTEGRITY and,
    /// when the request used it, MESSAGE-INTEGRITY-SHA256, then FINGERPRINT. Answers built
    /// later than their request (an Allocate's success or 508 after the relay bind, RFC 6062's
    /// Connect) are finished here too, so none can lose the SHA-256 integrity its client asked for.
    pub(super) fn seal(&self, b: &mut MessageBuilder, sign: Sign, software: bool) {
        if let Some(s) = self.config.software.as_ref().filter(|_| software) {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        if let Some(k) = sign.key {
            b.integrity(k.as_bytes());
            if sign.sha256 {
                b.integrity_sha256(k.as_bytes());
            }
        }
        if sign.fingerprint {
            b.fingerprint();
        }
    }

    fn respond_error(
        &mut self,
        five: FiveTuple,
        m: &Message,
        code: u16,
        sign: Sign,
        fill: impl Fn(&mut MessageBuilder),
    ) {
        tracing::debug!(client = %five.client, method = m.method().0, code, "error response");
        if sign.key.is_some() {
            let data = self.build_response(m, Class::Error, sign, |b| {
                b.error_code(code, "");
                fill(b);
            });
            self.send_and_cache(five, m.transaction_id(), data);
            return;
        }
        // Unauthenticated: no more than AMPLIFICATION_SLACK bytes over the request. Shed
        // SOFTWARE, then the reason phrase, then answer nothing.
        let budget = m.as_bytes().len() + AMPLIFICATION_SLACK;
        for (software, reason) in [(true, true), (false, true), (false, false)] {
            let data = self.build_with(m, Class::Error, sign, software, |b| {
                if reason {
                    b.error_code(code, "");
                } else {
                    b.attr_with(attr::ERROR_CODE, 4, |out| {
                        out[2] = (code / 100) as u8;
                        out[3] = (code % 100) as u8;
                    });
                }
                fill(b);
            });
            if data.len() <= budget {
                self.send_and_cache(five, m.transaction_id(), data);
                return;
            }
        }
        self.counters.amplification_dropped += 1;
    }

    fn send_and_cache(&mut self, five: FiveTuple, tid: &TransactionId, data: Vec<u8>) {
        if let Some(&id) = self.by_five_tuple.get(&five) {
            if let Some(a) = self.get_mut(id) {
                a.last_tid = *tid;
                a.last_response.clear();
                a.last_response.extend_from_slice(&data);
            }
        }
        self.commands.push_back(Command::Send { to: five, data });
    }

    /// Which limiter bucket a request draws from: [`LimitClass::Proven`] when it carries a
    /// NONCE we issued to this very address and that is still fresh (one HMAC, no password
    /// hashing), else [`LimitClass::Unproven`].
    fn nonce_class(&self, now: Instant, five: FiveTuple, m: &Message) -> LimitClass {
        let Some(nonce) = m.get(attr::NONCE) else {
            return LimitClass::Unproven;
        };
        let lifetime = u64::from(self.config.nonce_lifetime);
        match self
            .shared
            .nonce_key
            .check(nonce, self.unix(now), lifetime, five.client.ip())
        {
            NonceCheck::Valid => LimitClass::Proven,
            NonceCheck::Stale => LimitClass::Unproven,
        }
    }

    /// Whether this source may have one more challenge or Allocate attempt now
    /// (`--unauthorized-ratelimit`); counts the refusals.
    fn limiter_allows(&mut self, now: Instant, five: FiveTuple) -> bool {
        self.limiter_allows_in(now, five, LimitClass::Unproven)
    }

    /// [`Server::limiter_allows`] from the bucket of `class`.
    fn limiter_allows_in(&mut self, now: Instant, five: FiveTuple, class: LimitClass) -> bool {
        let rate = self.config.unauthorized_ratelimit;
        let ok = self.limiter.try_take_in(now, five.client.ip(), class, rate);
        if !ok {
            self.counters.rate_limited += 1;
        }
        ok
    }

    /// 401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS (RFC 8489 §9.2.4).
    fn challenge(&mut self, now: Instant, five: FiveTuple, m: &Message, code: u16) {
        // An Allocate paid for itself in handle_allocate.
        if m.method() != Method::ALLOCATE && !self.limiter_allows(now, five) {
            return;
        }
        let nonce = self.shared.nonce_key.make(self.unix(now), five.client.ip());
        let realm = self.config.realm.clone();
        let sign = self.plain_sign(m);
        self.respond_error(five, m, code, sign, |b| {
            b.attr(attr::REALM, realm.as_bytes());
            b.attr(attr::NONCE, nonce.as_bytes());
            b.attr(attr::PASSWORD_ALGORITHMS, &PASSWORD_ALGORITHMS);
        });
    }

    /// Long-term credential check (RFC 8489 §9.2.4). None when a challenge or error was sent.
    /// `owner` is the username of the allocation the request acts on (441 on mismatch,
    /// RFC 8656 §5).
    fn authenticate(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
        owner: Option<&str>,
    ) -> Option<Auth> {
        self.authenticate_or(now, five, m, owner, true)
    }

    /// [`Server::authenticate`], answering nothing where it would challenge (401/438) unless
    /// `challenge`: a Refresh, CreatePermission or ChannelBind from a 5-tuple that holds no
    /// allocation has nothing to gain from a NONCE, so it never gets one (no reflection of a
    /// challenge towards a spoofed source, nothing learned by a probe).
    fn authenticate_or(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
        owner: Option<&str>,
        challenge: bool,
    ) -> Option<Auth> {
        if self.config.no_auth {
            return Some(Auth {
                username: String::new(),
                key: None,
                sha256: false,
            });
        }
        if !m.has_integrity() && !m.has_integrity_sha256() {
            self.counters.unauthorized += 1;
            if challenge {
                self.challenge(now, five, m, 401);
            }
            return None;
        }
        let user_attr = m.get(attr::USERNAME);
        let hash_attr = m.get(attr::USERHASH);
        let (Some(realm), Some(nonce)) = (m.get(attr::REALM), m.get(attr::NONCE)) else {
            let sign = self.plain_sign(m);
            self.respond_error(five, m, 400, sign, |_| {});
            return None;
        };
        if user_attr.is_none() && hash_attr.is_none() {
            let sign = self.plain_sign(m);
            self.respond_error(five, m, 400, sign, |_| {});
            return None;
        }
        let unix = self.unix(now);
        if self.shared.nonce_key.check(
            nonce,
            unix,
            u64::from(self.config.nonce_lifetime),
            five.client.ip(),
        ) == NonceCheck::Stale
        {
            self.counters.stale_nonces += 1;
            if challenge {
                self.challenge(now, five, m, 438);
            }
            return None;
        }
        let Some(alg) = password_algorithm(m) else {
            let sign = self.plain_sign(m);
            self.respond_error(five, m, 400, sign, |_| {});
            return None;
        };
        let username = match (user_attr, hash_attr) {
            (Some(u), _) => std::str::from_utf8(u).ok().map(str::to_owned),
            (None, Some(h)) => self.config.credentials.user_for_hash(h).map(str::to_owned),
            _ => None,
        };
        let creds = &self.config.credentials;
        let db = self.shared.userdb.fresh(unix);
        let keys = match username.as_deref() {
            Some(u) if realm == creds.realm().as_bytes() => {
                creds.keys_with_db(u, alg, unix, db.as_deref())
            }
            _ => Err(AuthFailure::UnknownUser),
        };
        // An allocation keeps the key it was made with, so a reload (SIGHUP) that changes a
        // secret, password or realm never cuts a live call; an expired REST name still fails.
        let lookup_failure = keys.as_ref().err().copied();
        let mut keys = match keys {
            Ok(k) => Some(k),
            Err(AuthFailure::Expired) => None,
            Err(_) => Some(Vec::new()),
        };
        if let (Some(list), Some(owner), Some(u)) = (keys.as_mut(), owner, username.as_deref()) {
            if owner == u {
                let held = self.by_five_tuple.get(&five).and_then(|id| self.get(*id));
                list.extend(held.map(|a| a.key.clone()));
            }
        }
        let failure = match (&keys, &username) {
            (None, _) => AuthFailure::Expired,
            (Some(_), None) => AuthFailure::UnknownUser,
            (Some(_), Some(_)) => lookup_failure.unwrap_or(AuthFailure::WrongCredentials),
        };
        let keys = keys.ok_or(AuthFailure::Expired);
        let use_sha256 = m.has_integrity_sha256();
        let matched = keys.ok().and_then(|keys| {
            keys.into_iter().find(|k| {
                if use_sha256 {
                    m.check_integrity_sha256(k.as_bytes())
                } else {
                    m.check_integrity(k.as_bytes())
                }
            })
        });
        let (Some(key), Some(username)) = (matched, username) else {
            self.counters.auth_failures += 1;
            let r = &mut self.counters.auth_failures_by_reason;
            match failure {
                AuthFailure::UnknownUser => r.unknown_user += 1,
                AuthFailure::Expired => r.expired += 1,
                AuthFailure::NoKeyForAlgorithm => r.algorithm += 1,
                AuthFailure::WrongCredentials => r.wrong_credentials += 1,
            }
            if challenge {
                self.challenge(now, five, m, 401);
            }
            return None;
        };
        let auth = Auth {
            username,
            key: Some(key),
            sha256: use_sha256,
        };
        if let Some(owner) = owner {
            if owner != auth.username {
                let sign = self.signed(m, &auth);
                let data = self.build_response(m, Class::Error, sign, |b| {
                    b.error_code(441, "");
                });
                self.commands.push_back(Command::Send { to: five, data });
                return None;
            }
        }
        Some(auth)
    }

    fn signed<'k>(&self, m: &Message, auth: &'k Auth) -> Sign<'k> {
        Sign {
            key: auth.key.as_ref(),
            sha256: auth.sha256,
            fingerprint: m.has_fingerprint() || self.config.fingerprint,
        }
    }

    /// RFC 8656 §7.2 lifetime rule: min(requested, max), but never below the default.
    fn lifetime(&self, m: &Message) -> u32 {
        let c = &self.config;
        match m.get(attr::LIFETIME).and_then(attr::read_u32) {
            Some(req) => req
                .min(c.max_lifetime)
                .max(c.default_lifetime.min(c.max_lifetime)),
            None => c.default_lifetime.min(c.max_lifetime),
        }
    }

    /// The address XOR-RELAYED-ADDRESS reports for a relay bound to `relay`.
    fn reported(&self, relay: SocketAddr) -> SocketAddr {
        for (public, private) in &self.config.external_ips {
            match private {
                Some(p) if *p == relay.ip() => return SocketAddr::new(*public, relay.port()),
                None if public.is_ipv4() == relay.is_ipv4() => {
                    return SocketAddr::new(*public, relay.port())
                }
                _ => {}
            }
        }
        relay
    }

    /// Allocate (RFC 8656 §7.2).
    fn handle_allocate(&mut self, now: Instant, five: FiveTuple, m: &Message) {
        // Every attempt costs the source a token before any hashing (`--unauthorized-ratelimit`):
        // from its own bucket when its NONCE is a fresh one we issued to this address (the
        // source read our challenge), so a flood of unanswerable attempts from the same address
        // cannot lock out clients there that already hold a nonce.
        let class = self.nonce_class(now, five, m);
        if !self.limiter_allows_in(now, five, class) {
            return;
        }
        // Step 1: long-term credentials.
        let Some(auth) = self.authenticate(now, five, m, None) else {
            return;
        };
        // It authenticated with a nonce bound to its IP: this attempt and its challenge are
        // given back, so the limit counts only work that led nowhere.
        let rate = self.config.unauthorized_ratelimit;
        let ip = five.client.ip();
        self.limiter.refund(now, ip, class, rate, 1);
        self.limiter.refund(now, ip, LimitClass::Unproven, rate, 1);
        let sign_fp = m.has_fingerprint() || self.config.fingerprint;
        macro_rules! refuse {
            ($code:expr) => {{
                self.counters.allocations_refused += 1;
                self.counters.refused_by_code.add($code);
                let sign = self.signed(m, &auth);
                let data = self.build_response(m, Class::Error, sign, |b| {
                    b.error_code($code, "");
                });
                self.commands.push_back(Command::Send { to: five, data });
                return;
            }};
        }
        // Step 2: one allocation per 5-tuple (retransmissions were answered from the cache).
        if self.by_five_tuple.contains_key(&five) {
            refuse!(437);
        }
        // coturn's alternate servers: new Allocates go elsewhere (300 Try Alternate, signed so
        // that the client can trust it, RFC 8489 §10). Without them, a draining node (SIGUSR1),
        // or one holding `--redirect-over-allocations` or more, sends UDP/TCP clients to a
        // healthy peer of its region if it knows one; `super::redirect` says which and why no
        // client can loop.
        let udp_or_tcp = matches!(
            five.transport,
            super::Transport::Udp | super::Transport::Tcp
        );
        let held = self.shared.total_allocations.load(Ordering::Relaxed);
        let over = self.config.redirect_over_allocations;
        let redirect = match self.next_alternate(five) {
            Some(alt) => Some(alt),
            None if !udp_or_tcp => None,
            None if self.draining => {
                let unix = self.unix(now);
                self.shared.fleet_peers.for_draining(five.server, unix)
            }
            None if over > 0 && held >= over => {
                let (ip, unix) = (five.client.ip(), self.unix(now));
                let peers = &self.shared.fleet_peers;
                peers.for_load(ip, u64::from(held), five.server, unix)
            }
            None => None,
        };
        if let Some(alt) = redirect {
            self.counters.allocations_refused += 1;
            self.counters.refused_by_code.add(300);
            let sign = self.signed(m, &auth);
            let data = self.build_response(m, Class::Error, sign, |b| {
                b.error_code(300, "Try Alternate");
                b.address(attr::ALTERNATE_SERVER, &alt);
            });
            self.commands.push_back(Command::Send { to: five, data });
            return;
        }
        // A draining node takes no new allocations (SIGUSR1); live ones keep relaying.
        if self.draining {
            refuse!(403);
        }
        // Step 3: REQUESTED-TRANSPORT: UDP, or TCP (RFC 6062 §5.1) over a TCP or TLS control
        // connection; 442 for a kind switched off (`--no-udp-relay`, `--no-tcp-relay`).
        let tcp = match m
            .get(attr::REQUESTED_TRANSPORT)
            .map(attr::read_requested_transport)
        {
            None | Some(None) => refuse!(400),
            Some(Some(attr::PROTO_UDP)) if self.config.udp_relay => false,
            Some(Some(attr::PROTO_TCP)) if self.config.tcp_relay => true,
            Some(Some(_)) => refuse!(442),
        };
        // RFC 6062 §5.1: a TCP allocation needs a stream control connection and takes no
        // DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN.
        if tcp
            && (!five.transport.is_stream()
                || m.get(attr::DONT_FRAGMENT).is_some()
                || m.get(attr::EVEN_PORT).is_some()
                || m.get(attr::RESERVATION_TOKEN).is_some())
        {
            refuse!(400);
        }
        // Step 4: DONT-FRAGMENT is supported (IP_PMTUDISC_DO on the relay socket).
        let dont_fragment = m.get(attr::DONT_FRAGMENT).is_some();
        // Steps 5–7: RESERVATION-TOKEN, EVEN-PORT, address families.
        let token = m.get(attr::RESERVATION_TOKEN);
        let even = m.get(attr::EVEN_PORT).map(attr::read_even_port);
        let req_family = m
            .get(attr::REQUESTED_ADDRESS_FAMILY)
            .map(attr::read_address_family);
        // coturn's clients send the draft's code point; RFC 8656's wins when both are there.
        let draft_codepoints = m.get(attr::ADDITIONAL_ADDRESS_FAMILY).is_none()
            && m.get(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT).is_some();
        let add_family = m
            .get(attr::ADDITIONAL_ADDRESS_FAMILY)
            .or_else(|| m.get(attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT))
            .map(attr::read_address_family);
        if token.is_some() && (even.is_some() || req_family.is_some() || add_family.is_some()) {
            refuse!(400);
        }
        if matches!(even, Some(None))
            || matches!(req_family, Some(None))
            || matches!(add_family, Some(None))
        {
            refuse!(400);
        }
        if req_family.is_some() && add_family.is_some() {
            refuse!(400);
        }
        let want_v6 = match req_family.flatten() {
            Some(attr::FAMILY_IPV4) => false,
            Some(attr::FAMILY_IPV6) => true,
            Some(_) => refuse!(440),
            // Nothing asked (or a dual allocation, whose first address is IPv4).
            None if add_family.is_some() => false,
            None => match self.config.default_family {
                DefaultFamily::Ipv4 => false,
                DefaultFamily::Ipv6 => true,
                DefaultFamily::Keep => five.client.is_ipv6(),
            },
        };
        // Step 7: ADDITIONAL-ADDRESS-FAMILY asks for an IPv6 address beside the IPv4 one; any
        // other value is 400.
        let dual = match add_family.flatten() {
            None => false,
            Some(attr::FAMILY_IPV6) => true,
            Some(_) => refuse!(400),
        };
        // Step 8: quotas; a user database's realm options win over the flags, as in coturn. With
        // a fleet, both count the other nodes' allocations too (while that count is fresh).
        let unix = self.unix(now);
        let db = self.shared.userdb.fresh(unix);
        let db = db.as_deref();
        let user_quota = db.and_then(|d| d.user_quota);
        let total_quota = db.and_then(|d| d.total_quota);
        let max_bps = db.and_then(|d| d.max_bps).unwrap_or(self.config.max_bps);
        let sep = self.config.credentials.rest_separator();
        let quota_user = super::auth::quota_user(&auth.username, sep).to_owned();
        let quotas = (
            user_quota.unwrap_or(self.config.user_quota),
            total_quota.unwrap_or(self.config.total_quota),
        );
        let elsewhere = (
            self.shared.fleet_usage.elsewhere(&auth.username, unix),
            self.shared.fleet_usage.elsewhere_total(unix),
        );
        // A RESERVATION-TOKEN's reservation is taken out here: it counted against its user
        // until now, and if that user is this one its count passes to this allocation.
        let reserved = token
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .and_then(|t| {
                self.shared
                    .reservations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&u64::from_be_bytes(t))
            });
        match &reserved {
            Some(r) if r.user == quota_user => {}
            _ if !self
                .shared
                .try_count(&quota_user, quotas.0, quotas.1, elsewhere) =>
            {
                if let (Some(r), Some(t)) = (reserved, token) {
                    // Still the reserver's: put it back for them.
                    let t = u64::from_be_bytes(t.try_into().unwrap_or_default());
                    let mut res = self
                        .shared
                        .reservations
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    res.insert(t, r);
                }
                refuse!(486);
            }
            Some(r) => self.shared.uncount(&r.user),
            None => {}
        }
        // Pick the relayed transport address.
        let mut reservation_token = None;
        let relay = if let Some(t) = token {
            if t.len() != 8 {
                self.shared.uncount(&quota_user);
                refuse!(400);
            }
            match reserved {
                Some(r) if r.expires_unix >= unix => Some(r.addr),
                Some(r) => {
                    self.shared.ports.release(r.addr.ip(), r.addr.port());
                    None
                }
                None => None,
            }
        } else {
            let ip = self.pick_relay_ip(want_v6);
            let Some(ip) = ip else {
                self.shared.uncount(&quota_user);
                refuse!(440);
            };
            let (is_even, reserve) = match even.flatten() {
                Some(r) => (true, r),
                None => (false, false),
            };
            let port = self.shared.ports.take(ip, self.rng.gen(), is_even, reserve);
            if let (Some(p), true) = (port, reserve) {
                // The reserved port counts against the reserving user's quota (and the total)
                // until it is used or its 30 s are up: reservations are no way around a quota.
                if !self
                    .shared
                    .try_count(&quota_user, quotas.0, quotas.1, elsewhere)
                {
                    self.shared.ports.release(ip, p);
                    self.shared.ports.release(ip, p + 1);
                    self.shared.uncount(&quota_user);
                    refuse!(486);
                }
                let t: u64 = self.rng.gen();
                reservation_token = Some(t);
                let mut res = self
                    .shared
                    .reservations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                res.insert(
                    t,
                    Reservation {
                        addr: SocketAddr::new(ip, p + 1),
                        expires_unix: unix + RESERVATION_SECS,
                        user: quota_user.clone(),
                    },
                );
            }
            port.map(|p| SocketAddr::new(ip, p))
        };
        let Some(relay) = relay else {
            self.shared.uncount(&quota_user);
            refuse!(508);
        };
        // The IPv6 half of a dual allocation. Without it the IPv4 one is still granted, and
        // ADDRESS-ERROR-CODE says why not (RFC 8656 §7.2 step 7): 440 when this server relays
        // no IPv6 at all, 508 when it has no IPv6 port left.
        let mut address_error = None;
        let mut second_relay = None;
        if dual && tcp {
            // One listening address per TCP allocation.
            address_error = Some(440);
        } else if dual {
            match self.pick_relay_ip(true) {
                None => address_error = Some(440),
                Some(ip) => match self.shared.ports.take(ip, self.rng.gen(), false, false) {
                    Some(p) => second_relay = Some(SocketAddr::new(ip, p)),
                    None => address_error = Some(508),
                },
            }
        }
        let lifetime = self.lifetime(m);
        let pending = PendingAllocate {
            tid: *m.transaction_id(),
            lifetime,
            fixed_port: token.is_some(),
            even: even.is_some(),
            reservation_token,
            address_error,
            draft_codepoints,
            fingerprint: sign_fp,
            sha256: auth.sha256,
        };
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    alloc: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let id = AllocationId {
            index,
            generation: self.slots[index as usize].generation,
        };
        // `--strict-expiry`: a REST credential's allocation ends with the credential.
        let credential_expiry = if self.config.strict_expiry && self.config.credentials.has_rest() {
            let sep = self.config.credentials.rest_separator();
            super::auth::rest_expiry(&auth.username, sep)
                .filter(|_| !self.config.credentials.is_static_user(&auth.username))
                .map(|t| now + Duration::from_secs(t.saturating_sub(self.unix(now))))
        } else {
            None
        };
        let alloc = Allocation {
            id,
            five_tuple: five,
            state: State::Binding { attempts: 1 },
            relay,
            reported_relay: self.reported(relay),
            second: second_relay.map(|r| SecondRelay::boxed(r, self.reported(r))),
            created: now,
            expires: now + Duration::from_secs(u64::from(lifetime)),
            username: auth.username,
            key: auth.key.unwrap_or(Key::Md5([0; 16])),
            permissions: Default::default(),
            channels: Default::default(),
            stats: Default::default(),
            to_peer_bucket: TokenBucket::new(max_bps, now),
            to_client_bucket: TokenBucket::new(max_bps, now),
            pipe_budget: Arc::new(super::policy::PipeBudget::new(
                max_bps,
                self.shared.pipe_capacity.clone(),
                now,
            )),
            dont_fragment,
            tcp,
            tcp_traffic: Vec::new(),
            reservation: reservation_token,
            last_tid: *m.transaction_id(),
            last_response: Vec::new(),
            pending: Some(pending),
            credential_expiry,
            timer_at: None,
        };
        self.slots[index as usize].alloc = Some(alloc);
        self.by_five_tuple.insert(five, id);
        self.commands.push_back(Command::BindRelay {
            id,
            addr: relay,
            dont_fragment,
            second: false,
            tcp,
        });
    }

    /// The next alternate server for an Allocate on `five`, round robin, never the address the
    /// request came in on (a node listed among its own alternates does not redirect to itself).
    fn next_alternate(&mut self, five: FiveTuple) -> Option<SocketAddr> {
        let list = match five.transport {
            super::Transport::Tls | super::Transport::Dtls => &self.config.tls_alternate_servers,
            super::Transport::Udp | super::Transport::Tcp => &self.config.alternate_servers,
        };
        for _ in 0..list.len() {
            let alt = list[self.alternate_turn % list.len()];
            self.alternate_turn = self.alternate_turn.wrapping_add(1);
            if alt != five.server {
                return Some(alt);
            }
        }
        None
    }

    fn pick_relay_ip(&mut self, v6: bool) -> Option<IpAddr> {
        let n = self
            .config
            .relay_ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .count();
        if n == 0 {
            return None;
        }
        let k = self.rng.gen_range(0..n);
        self.config
            .relay_ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .nth(k)
            .copied()
    }

    /// The worker's answer to [`Command::BindRelay`]: the socket is bound (`Ok`) or the bind
    /// failed (`Err`, e.g. the port is held by another process). On failure another port is tried
    /// a few times before the client gets 508.
    pub fn handle_relay_bound(&mut self, now: Instant, id: AllocationId, result: Result<(), ()>) {
        let Some(a) = self.get_mut(id) else {
            return;
        };
        let attempts = match a.state {
            State::Binding { attempts } => attempts,
            State::BindingSecond { attempts } => {
                self.handle_second_relay_bound(now, id, attempts, result);
                return;
            }
            State::Active => return,
        };
        let five = a.five_tuple;
        if result.is_err() {
            let old = a.relay;
            let fixed = a.pending.as_ref().is_some_and(|p| p.fixed_port);
            let even = a.pending.as_ref().is_some_and(|p| p.even);
            let token = a.reservation;
            // Pick the next port while the failed one is still held, so it is not picked again.
            // EVEN-PORT asks for a parity, not a port: another even port (and its successor,
            // with the R bit) will do.
            let retry = if attempts < BIND_ATTEMPTS && !fixed {
                self.shared
                    .ports
                    .take(old.ip(), self.rng.gen(), even, token.is_some())
            } else {
                None
            };
            self.shared.ports.release(old.ip(), old.port());
            if let (Some(port), Some(t)) = (retry, token) {
                // The reservation moves along to the new port's successor.
                let mut res = self
                    .shared
                    .reservations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(r) = res.get_mut(&t) {
                    self.shared.ports.release(r.addr.ip(), r.addr.port());
                    r.addr = SocketAddr::new(old.ip(), port + 1);
                } else {
                    self.shared.ports.release(old.ip(), port + 1);
                }
            }
            if let Some(port) = retry {
                let relay = SocketAddr::new(old.ip(), port);
                let reported = self.reported(relay);
                let Some(a) = self.get_mut(id) else {
                    return;
                };
                a.relay = relay;
                a.reported_relay = reported;
                a.state = State::Binding {
                    attempts: attempts + 1,
                };
                let (dont_fragment, tcp) = (a.dont_fragment, a.tcp);
                self.commands.push_back(Command::BindRelay {
                    id,
                    addr: relay,
                    dont_fragment,
                    second: false,
                    tcp,
                });
                return;
            }
            // Out of ports (or the one asked for is held elsewhere): 508, and the allocation goes.
            let Some(a) = self.get_mut(id) else {
                return;
            };
            a.relay = SocketAddr::new(old.ip(), 0);
            let pending = a.pending.take();
            let key = a.key.clone();
            if let Some(t) = a.reservation.take() {
                let r = self
                    .shared
                    .reservations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&t);
                if let Some(r) = r {
                    self.shared.ports.release(r.addr.ip(), r.addr.port());
                    self.shared.uncount(&r.user);
                }
            }
            self.counters.allocations_refused += 1;
            self.counters.refused_by_code.add(508);
            self.free(id, "no relay port");
            if let Some(p) = pending {
                let mut out = Vec::with_capacity(96);
                let mut b = MessageBuilder::new(&mut out, Method::ALLOCATE, Class::Error, &p.tid);
                b.error_code(508, "");
                let sign = Sign {
                    key: (!self.config.no_auth).then_some(&key),
                    sha256: p.sha256,
                    fingerprint: p.fingerprint,
                };
                self.seal(&mut b, sign, true);
                self.commands.push_back(Command::Send {
                    to: five,
                    data: out,
                });
            }
            return;
        }
        // A dual allocation binds its IPv6 socket next.
        if let Some(addr) = a.second_relay() {
            self.bind_second_relay(id, addr, 1);
            return;
        }
        self.finish_allocate(now, id);
    }

    /// Ask the worker to bind the IPv6 socket of dual allocation `id` on `addr` (try `attempts`).
    fn bind_second_relay(&mut self, id: AllocationId, addr: SocketAddr, attempts: u8) {
        let Some(a) = self.get_mut(id) else {
            return;
        };
        a.state = State::BindingSecond { attempts };
        let dont_fragment = a.dont_fragment;
        self.commands.push_back(Command::BindRelay {
            id,
            addr,
            dont_fragment,
            second: true,
            tcp: false,
        });
    }

    /// The second (IPv6) socket of a dual allocation is bound or not. A few other ports are
    /// tried; if none binds, the allocation goes on with IPv4 only and ADDRESS-ERROR-CODE 508
    /// for IPv6 (RFC 8656 §7.2 step 7).
    fn handle_second_relay_bound(
        &mut self,
        now: Instant,
        id: AllocationId,
        attempts: u8,
        result: Result<(), ()>,
    ) {
        if result.is_err() {
            let Some(old) = self.get(id).and_then(|a| a.second_relay()) else {
                return;
            };
            let retry = if attempts < BIND_ATTEMPTS {
                self.shared
                    .ports
                    .take(old.ip(), self.rng.gen(), false, false)
            } else {
                None
            };
            self.shared.ports.release(old.ip(), old.port());
            let next = retry.map(|p| SocketAddr::new(old.ip(), p));
            let second = next.map(|r| SecondRelay::boxed(r, self.reported(r)));
            let Some(a) = self.get_mut(id) else {
                return;
            };
            a.second = second;
            if let Some(addr) = next {
                self.bind_second_relay(id, addr, attempts + 1);
                return;
            }
            if let Some(p) = a.pending.as_mut() {
                p.address_error = Some(508);
            }
        }
        self.finish_allocate(now, id);
    }

    /// Every socket of the allocation is bound: it becomes active and the client gets the
    /// success response (RFC 8656 §7.2).
    fn finish_allocate(&mut self, now: Instant, id: AllocationId) {
        let Some(a) = self.get_mut(id) else {
            return;
        };
        let five = a.five_tuple;
        a.state = State::Active;
        let expires =
            now + Duration::from_secs(u64::from(a.pending.as_ref().map_or(0, |p| p.lifetime)));
        a.expires = expires;
        let Some(p) = a.pending.take() else {
            return;
        };
        let relay = a.reported_relay;
        let second = a.reported_second();
        let key = a.key.clone();
        let mut out = Vec::with_capacity(128);
        let mut b = MessageBuilder::new(&mut out, Method::ALLOCATE, Class::Success, &p.tid);
        b.xor_address(attr::XOR_RELAYED_ADDRESS, &relay);
        if let Some(second) = second {
            b.xor_address(attr::XOR_RELAYED_ADDRESS, &second);
        }
        b.attr_u32(attr::LIFETIME, p.lifetime);
        if let Some(t) = p.reservation_token {
            b.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
        }
        b.xor_address(attr::XOR_MAPPED_ADDRESS, &five.client);
        if let Some(code) = p.address_error {
            // ADDRESS-ERROR-CODE: family (IPv6), reserved, then an ERROR-CODE-style value.
            let reason = attr::reason_phrase(code).as_bytes();
            let ty = if p.draft_codepoints {
                attr::ADDRESS_ERROR_CODE_DRAFT
            } else {
                attr::ADDRESS_ERROR_CODE
            };
            b.attr_with(ty, 4 + reason.len(), |o| {
                o[0] = attr::FAMILY_IPV6;
                o[2] = (code / 100) as u8;
                o[3] = (code % 100) as u8;
                o[4..].copy_from_slice(reason);
            });
        }
        let sign = Sign {
            key: (!self.config.no_auth).then_some(&key),
            sha256: p.sha256,
            fingerprint: p.fingerprint,
        };
        self.seal(&mut b, sign, true);
        self.counters.allocations_created += 1;
        if let Some(a) = self.get(id) {
            crate::metrics::log_allocation_started(&self.config.realm, a, p.lifetime);
        }
        self.schedule(id);
        self.send_and_cache(five, &p.tid, out);
    }

    /// Refresh (RFC 8656 §7.3).
    fn handle_refresh(&mut self, now: Instant, five: FiveTuple, m: &Message) {
        let Some(&id) = self.by_five_tuple.get(&five) else {
            // No allocation: 437 after authentication (so unauthenticated probes learn nothing),
            // and no challenge to a request that does not authenticate.
            let Some(auth) = self.authenticate_or(now, five, m, None, false) else {
                return;
            };
            let sign = self.signed(m, &auth);
            let data = self.build_response(m, Class::Error, sign, |b| {
                b.error_code(437, "");
            });
            self.commands.push_back(Command::Send { to: five, data });
            return;
        };
        let owner = self.get(id).map(|a| a.username.clone());
        let Some(auth) = self.authenticate(now, five, m, owner.as_deref()) else {
            return;
        };
        let Some(a) = self.get(id) else {
            return;
        };
        // RFC 8656 §7.3: a REQUESTED-ADDRESS-FAMILY other than the allocation's is 443.
        if let Some(fam) = m
            .get(attr::REQUESTED_ADDRESS_FAMILY)
            .and_then(attr::read_address_family)
        {
            let family = |r: SocketAddr| {
                if r.is_ipv6() {
                    attr::FAMILY_IPV6
                } else {
                    attr::FAMILY_IPV4
                }
            };
            if fam != family(a.relay) && a.second_relay().map(family) != Some(fam) {
                let sign = self.signed(m, &auth);
                self.respond_error(five, m, 443, sign, |_| {});
                return;
            }
        }
        let requested = m.get(attr::LIFETIME).and_then(attr::read_u32);
        let sign = self.signed(m, &auth);
        if requested == Some(0) {
            self.counters.allocations_deleted += 1;
            self.free(id, "deleted by client (Refresh lifetime 0)");
            let data = self.build_response(m, Class::Success, sign, |b| {
                b.attr_u32(attr::LIFETIME, 0);
            });
            self.commands.push_back(Command::Send { to: five, data });
            return;
        }
        let lifetime = self.lifetime(m);
        let expires = now + Duration::from_secs(u64::from(lifetime));
        if let Some(a) = self.get_mut(id) {
            a.expires = expires;
        }
        self.schedule(id);
        let data = self.build_response(m, Class::Success, sign, |b| {
            b.attr_u32(attr::LIFETIME, lifetime);
        });
        self.send_and_cache(five, m.transaction_id(), data);
    }

    /// Common opening of CreatePermission and ChannelBind: the allocation (437) and the
    /// authentication of its owner (401/438/441).
    fn allocation_for_request(
        &mut self,
        now: Instant,
        five: FiveTuple,
        m: &Message,
    ) -> Option<(AllocationId, Auth)> {
        let Some(&id) = self.by_five_tuple.get(&five) else {
            // As for Refresh: 437 to a request that authenticates, nothing to any other.
            let auth = self.authenticate_or(now, five, m, None, false)?;
            let sign = self.signed(m, &auth);
            let data = self.build_response(m, Class::Error, sign, |b| {
                b.error_code(437, "");
            });
            self.commands.push_back(Command::Send { to: five, data });
            return None;
        };
        let owner = self.get(id).map(|a| a.username.clone());
        let auth = self.authenticate(now, five, m, owner.as_deref())?;
        Some((id, auth))
    }

    /// Whether a peer may be used by allocation `id`: 443 when it has no relayed address of the
    /// peer's family, 403 by policy.
    fn peer_error(&self, id: AllocationId, peer: &SocketAddr) -> Option<u16> {
        let a = self.get(id)?;
        // A dual allocation takes peers of either family (RFC 8656 §7.2).
        let family_ok = |r: SocketAddr| r.is_ipv6() == peer.is_ipv6();
        if !family_ok(a.relay) && !a.second_relay().is_some_and(family_ok) {
            return Some(443);
        }
        if !self.config.peer_policy.permits(peer.ip()) {
            return Some(403);
        }
        None
    }

    /// CreatePermission (RFC 8656 §9.2).
    fn handle_create_permission(&mut self, now: Instant, five: FiveTuple, m: &Message) {
        let Some((id, auth)) = self.allocation_for_request(now, five, m) else {
            return;
        };
        let sign = self.signed(m, &auth);
        let tid = m.transaction_id();
        // More addresses than the allocation may ever hold can never fit: 508 before any work,
        // so a request naming thousands of peers costs one attribute count, not a scan per
        // address (issue 15: 5,400 peers took 12.5 ms of the worker).
        let max = self.config.max_permissions;
        let named = m
            .attributes()
            .filter(|a| a.ty == attr::XOR_PEER_ADDRESS)
            .count();
        if max > 0 && named > max {
            self.respond_error(five, m, 508, sign, |_| {});
            return;
        }
        let peers: Vec<SocketAddr> = m
            .attributes()
            .filter(|a| a.ty == attr::XOR_PEER_ADDRESS)
            .map(|a| attr::read_xor_address(&m.as_bytes()[a.offset..a.offset + a.len], tid))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        if peers.is_empty() {
            self.respond_error(five, m, 400, sign, |_| {});
            return;
        }
        // All or nothing: every address is checked before any permission is installed.
        for p in &peers {
            if let Some(code) = self.peer_error(id, p) {
                self.respond_error(five, m, code, sign, |_| {});
                return;
            }
        }
        let mut ips: Vec<IpAddr> = peers.iter().map(SocketAddr::ip).collect();
        ips.sort_unstable();
        ips.dedup();
        let expires = now + Duration::from_secs(u64::from(self.config.permission_lifetime));
        let Some(a) = self.get_mut(id) else {
            return;
        };
        if !a.permissions.room_for(&ips, now, max) {
            self.respond_error(five, m, 508, sign, |_| {});
            return;
        }
        for ip in ips {
            a.permissions.install(ip, expires);
        }
        let data = self.build_response(m, Class::Success, sign, |_| {});
        self.send_and_cache(five, tid, data);
    }

    /// ChannelBind (RFC 8656 §11.2).
    fn handle_channel_bind(&mut self, now: Instant, five: FiveTuple, m: &Message) {
        let Some((id, auth)) = self.allocation_for_request(now, five, m) else {
            return;
        };
        let sign = self.signed(m, &auth);
        let number = m
            .get(attr::CHANNEL_NUMBER)
            .and_then(attr::read_channel_number);
        let peer = m.get_xor_address(attr::XOR_PEER_ADDRESS);
        let (Some(number), Some(peer)) = (number, peer) else {
            self.respond_error(five, m, 400, sign, |_| {});
            return;
        };
        if !(channel_data::CHANNEL_MIN..=channel_data::CHANNEL_MAX).contains(&number) {
            self.respond_error(five, m, 400, sign, |_| {});
            return;
        }
        if let Some(code) = self.peer_error(id, &peer) {
            self.respond_error(five, m, code, sign, |_| {});
            return;
        }
        let (max_ch, max_perm) = (self.config.max_channels, self.config.max_permissions);
        let ch_expires = now + Duration::from_secs(u64::from(self.config.channel_lifetime));
        let perm_expires = now + Duration::from_secs(u64::from(self.config.permission_lifetime));
        let Some(a) = self.get_mut(id) else {
            return;
        };
        // A TCP allocation has no channels (RFC 6062 §5).
        if a.tcp {
            self.respond_error(five, m, 400, sign, |_| {});
            return;
        }
        match a.channels.check(number, peer, now, max_ch) {
            Ok(()) => {}
            Err(BindConflict::TooMany) => {
                self.respond_error(five, m, 508, sign, |_| {});
                return;
            }
            Err(_) => {
                self.respond_error(five, m, 400, sign, |_| {});
                return;
            }
        }
        if !a.permissions.room_for(&[peer.ip()], now, max_perm) {
            self.respond_error(five, m, 508, sign, |_| {});
            return;
        }
        a.channels.bind(number, peer, ch_expires);
        // RFC 8656 §11.2: a channel binding also installs or refreshes the permission.
        a.permissions.install(peer.ip(), perm_expires);
        let data = self.build_response(m, Class::Success, sign, |_| {});
        self.send_and_cache(five, m.transaction_id(), data);
    }

    // ---------------------------------------------------------------- peer input

    /// A datagram from `peer` arrived on the relay socket of allocation `relay`; it lies in
    /// `buf[payload]`, with at least [`PEER_HEADROOM`] bytes before and [`PEER_TAILROOM`] after.
    /// On `Forward`, the ChannelData or Data-indication header has been written in place in front
    /// of the payload (RFC 8656 §11.3 and §12.7), and `buf[frame]` is what to send.
    pub fn handle_peer_input(
        &mut self,
        now: Instant,
        relay: AllocationId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> PeerDecision {
        let len = payload.len();
        if payload.start < PEER_HEADROOM
            || payload.start > payload.end
            || payload.end.saturating_add(PEER_TAILROOM) > buf.len()
            || len > 0xFFFF - 64
        {
            return PeerDecision::Drop;
        }
        let tid: [u8; 12] = self.rng.gen();
        let Some(a) = slot_mut(&mut self.slots, relay) else {
            return PeerDecision::Drop;
        };
        a.stats.peer_rcv.add(len);
        if a.state != State::Active || a.expires <= now || !a.permissions.allows(peer.ip(), now) {
            a.stats.dropped.add(len);
            self.counters.dropped_no_permission += 1;
            return PeerDecision::Drop;
        }
        if !a.to_client_bucket.try_take(now, len) || !self.capacity.try_take(now, len) {
            a.stats.dropped.add(len);
            self.counters.dropped_bandwidth += 1;
            return PeerDecision::Drop;
        }
        a.stats.client_sent.add(len);
        let to = a.five_tuple;
        if let Some(number) = a.channels.number(peer, now) {
            let start = payload.start - channel_data::HEADER_LEN;
            channel_data::write_header(&mut buf[start..payload.start], number, len);
            let mut end = payload.end;
            if to.transport.is_stream() {
                let pad = channel_data::stream_padding(len);
                buf[end..end + pad].fill(0);
                end += pad;
            }
            return PeerDecision::Forward {
                to,
                frame: start..end,
            };
        }
        // Data indication: header, XOR-PEER-ADDRESS, DATA (RFC 8656 §11.3).
        self.counters.data_indications += 1;
        let alen = attr::address_len(&peer);
        let head = 20 + 4 + alen + 4;
        let start = payload.start - head;
        let pad = (4 - len % 4) % 4;
        let body = head - 20 + len + pad;
        let h = &mut buf[start..payload.start];
        h[0..2].copy_from_slice(
            &crate::proto::message::message_type(Method::DATA, Class::Indication).to_be_bytes(),
        );
        h[2..4].copy_from_slice(&(body as u16).to_be_bytes());
        h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        h[8..20].copy_from_slice(&tid);
        h[20..22].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
        h[22..24].copy_from_slice(&(alen as u16).to_be_bytes());
        attr::write_xor_address(&mut h[24..24 + alen], &peer, &tid);
        h[24 + alen..26 + alen].copy_from_slice(&attr::DATA.to_be_bytes());
        h[26 + alen..28 + alen].copy_from_slice(&(len as u16).to_be_bytes());
        buf[payload.end..payload.end + pad].fill(0);
        PeerDecision::Forward {
            to,
            frame: start..payload.end + pad,
        }
    }
}

/// Operations the worker performs on behalf of operators (admin API, signals).
impl Server {
    /// End an allocation now, as if it had expired. False when there is no such allocation.
    pub fn kill(&mut self, id: AllocationId) -> bool {
        if self.get(id).is_none() {
            return false;
        }
        self.counters.allocations_deleted += 1;
        self.free(id, "killed by operator");
        true
    }

    /// End every allocation of `username`; how many ended.
    pub fn kill_user(&mut self, username: &str) -> usize {
        let ids: Vec<AllocationId> = self
            .allocations()
            .filter(|a| a.username == username)
            .map(|a| a.id)
            .collect();
        ids.into_iter().filter(|&id| self.kill(id)).count()
    }

    /// Refuse (`true`) or accept again (`false`) new allocations; existing ones keep relaying.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// A copy of every live allocation's state and counters, for metrics and the admin API.
    pub fn snapshot(&self, now: Instant) -> Vec<AllocationInfo> {
        let unix = self.unix(now);
        self.allocations()
            .filter(|a| a.state == State::Active)
            .map(|a| AllocationInfo {
                id: a.id,
                username: a.username.clone(),
                five_tuple: a.five_tuple,
                relay: a.relay,
                reported_relay: a.reported_relay,
                second: a.second.clone(),
                started_unix: unix
                    .saturating_sub(now.saturating_duration_since(a.created).as_secs()),
                expires_in: a.expires.saturating_duration_since(now).as_secs(),
                permissions: a.permissions.len(now),
                channels: a.channels.len(now),
                stats: a.traffic(),
            })
            .collect()
    }
}

/// One allocation as seen from outside the worker.
#[derive(Debug, Clone)]
pub struct AllocationInfo {
    pub id: AllocationId,
    pub username: String,
    pub five_tuple: FiveTuple,
    pub relay: SocketAddr,
    pub reported_relay: SocketAddr,
    /// The IPv6 relay of a dual allocation, and what XOR-RELAYED-ADDRESS reports for it (boxed:
    /// every snapshot holds one of these per allocation).
    pub second: Option<Box<SecondRelay>>,
    pub started_unix: u64,
    pub expires_in: u64,
    pub permissions: usize,
    pub channels: usize,
    pub stats: AllocationStats,
}

impl AllocationInfo {
    /// The IPv6 relayed address of a dual allocation.
    pub fn second_relay(&self) -> Option<SocketAddr> {
        self.second.as_ref().map(|s| s.relay)
    }

    /// What the second XOR-RELAYED-ADDRESS reports.
    pub fn reported_second(&self) -> Option<SocketAddr> {
        self.second.as_ref().map(|s| s.reported)
    }
}

#[cfg(test)]
mod tests;
