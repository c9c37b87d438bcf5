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

use crate::engine::allocation::{
    Admission, Allocation, AllocationId, AllocationKind, Grant, PendingAllocate, SecondRelay,
    State, Way,
};
use crate::engine::auth::{
    AuthFailure, Credentials, FleetUsage, Key, NonceCheck, NonceKey, PasswordAlgorithm, UserDbCell,
};
use crate::engine::channel::BindConflict;
use crate::engine::limiter::Class as LimitClass;
use crate::engine::limiter::Limiter;
use crate::engine::policy::{PeerPolicy, TokenBucket};
use crate::engine::ports::PortPool;
use crate::engine::redirect::FleetPeers;
use crate::engine::stats::AllocationStats;
use crate::engine::{ChannelNumber, FiveTuple, PeerAddr, RelayAddr, Transport};
use crate::proto::attr;
use crate::proto::channel_data::{self, ChannelData};
mod allocate;
mod authenticate;
mod binding;
mod channel_bind;
mod config;
mod counters;
mod data;
pub mod fastpath;
mod operator;
mod permission;
mod publish;
mod refresh;
mod reply;
mod shared;
mod tcp;

use authenticate::Auth;
pub use config::{DefaultFamily, Rfc5780, ServerConfig};
pub use counters::{
    AuthFailures, CounterSpec, Counters, Durations, RefusedByCode, COUNTERS, DURATION_BUCKETS,
    REFUSAL_CODES,
};
pub use operator::AllocationInfo;
pub use publish::{
    relayed_bytes, transport_index, Aggregates, RateSamples, Select, TopAllocation, RATE_SAMPLES,
    TRANSPORTS,
};
pub use reply::Later;

use reply::{Handled, Reply, Sign, Stop};
use shared::Reservation;
pub use shared::Shared;
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

/// Something the worker must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send these bytes to the client on this 5-tuple.
    Send { to: FiveTuple, data: Vec<u8> },
    /// Bind a relay socket of `kind` to `addr` and report with [`Server::handle_relay_bound`].
    BindRelay {
        id: AllocationId,
        addr: RelayAddr,
        dont_fragment: bool,
        kind: RelayKind,
    },
    /// Close the relay socket(s) of this allocation.
    FreeRelay { id: AllocationId },
    /// Open a TCP connection from the relayed address `from` to `peer` (RFC 6062 Connect) and
    /// report with [`Server::handle_tcp_peer_connected`].
    ConnectPeer {
        cid: ConnectionId,
        from: RelayAddr,
        peer: PeerAddr,
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

/// Which relay socket a [`Command::BindRelay`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// The UDP socket of an allocation (its only one, or the IPv4 one of a dual allocation).
    Udp,
    /// The IPv6 UDP socket of a dual allocation, whose first socket is already bound: the
    /// worker keeps both and sends to a peer from the one of its family.
    UdpSecond,
    /// A listening TCP socket (RFC 6062) whose accepted peers go to
    /// [`Server::handle_tcp_peer_accepted`].
    Tcp,
}

/// The worker's report on a [`Command::BindRelay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    Bound,
    /// The bind failed (the port is held by another process, or no such address).
    Failed,
}

/// What to do with a packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientDecision {
    /// Send `packet[payload]` from the allocation's relay socket to `peer`.
    Forward {
        relay: AllocationId,
        peer: PeerAddr,
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

/// One worker's TURN/STUN engine. See the module docs for the calling contract.
pub struct Server {
    config: Arc<ServerConfig>,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    by_five_tuple: HashMap<FiveTuple, AllocationId>,
    timers: BinaryHeap<Reverse<(Instant, AllocationId)>>,
    commands: VecDeque<Command>,
    /// Changes for the kernel fast path (issue 18).
    fastpath: fastpath::Outbox,
    rng: SmallRng,
    /// A monotonic instant and the Unix time it corresponds to.
    unix_base: (Instant, u64),
    counters: Counters,
    /// The server-wide bandwidth cap (this worker's share of `--bps-capacity`).
    capacity: TokenBucket,
    draining: bool,
    limiter: Limiter,
    /// The user database snapshot last looked at for removed users ([`Server::check_userdb`]).
    userdb_seen: Option<Arc<crate::engine::auth::UserDb>>,
    /// This engine's number among the workers' (see [`Shared`]'s connection table).
    shard: u32,
    /// The 30 s deadlines of the RFC 6062 connections this engine made.
    conn_timers: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
    /// Round-robin position in the alternate-server lists.
    alternate_turn: usize,
    /// Rate samples, the top-K heap and per-user traffic for the 1 Hz publish.
    publish: publish::PublishState,
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
            fastpath: fastpath::Outbox::default(),
            rng: SmallRng::seed_from_u64(seed),
            unix_base: (now, unix_now),
            counters: Counters::default(),
            draining: false,
            limiter,
            userdb_seen: None,
            shard,
            conn_timers: BinaryHeap::new(),
            alternate_turn: 0,
            publish: Default::default(),
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
        self.fastpath_sync_all();
    }

    /// End the allocations of users that were known (a static user, or one of the user
    /// database) and no longer are, unless `keep_removed_users`. REST credentials are not
    /// users: an allocation keeps the key it was made with, so rotating a secret cuts no call.
    fn end_removed_users(
        &mut self,
        old_users: &crate::engine::auth::Credentials,
        old_db: Option<&crate::engine::auth::UserDb>,
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
            .filter(|a| known_before(a.username()) && !known_now(a.username()))
            .map(|a| a.id())
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
            if !a.timer_fired(t) {
                continue; // superseded by an earlier entry for the same allocation
            }
            let (deadline, active) = (a.deadline(), a.is_active());
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
        if let Some(deadline) = a.arm_timer() {
            self.timers.push(Reverse((deadline, id)));
        }
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
        self.by_five_tuple.remove(&a.five_tuple());
        for r in a.held_relays() {
            self.shared.ports.release(r.ip(), r.port());
        }
        let sep = self.config.credentials.rest_separator();
        self.shared
            .uncount(crate::engine::auth::quota_user(a.username(), sep));
        // Bytes a pipe still copies after this are not counted: it is being closed.
        let stats = a.close_traffic();
        self.counters.closed_traffic.merge(&stats);
        if a.is_active() {
            self.observe_ended(&a);
            crate::engine::session_log::log_allocation_ended(&self.config.realm, &a, reason);
        }
        if a.is_tcp() {
            self.close_connections_of(id);
        }
        self.commands.push_back(Command::FreeRelay { id });
        self.fastpath_remove(id);
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

    fn handle_stun(&mut self, now: Instant, five: FiveTuple, m: &Message) -> ClientDecision {
        if m.is_classic() {
            // RFC 5389 §12: only Binding is answered for an RFC 3489 client.
            if m.class() == Class::Request
                && m.method() == Method::BINDING
                && self.config.stun
                && self.config.classic_stun
            {
                let handled = self.handle_binding(five, m);
                self.send_handled(handled);
            }
            return ClientDecision::Done;
        }
        match m.class() {
            Class::Indication if m.method() == Method::SEND => self.handle_send(now, five, m),
            Class::Request => {
                let handled = self.handle_request(now, five, m);
                self.send_handled(handled);
                ClientDecision::Done
            }
            // Responses and other indications to a server are ignored.
            _ => ClientDecision::Done,
        }
    }

    /// A STUN request: the checks every method shares, then the method's handler.
    fn handle_request(&mut self, now: Instant, five: FiveTuple, m: &Message) -> Handled {
        // RFC 8489 §6.3.1: unknown comprehension-required attributes get 420.
        let unknown = m.unknown_required(16);
        if !unknown.is_empty() {
            let value: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
            let reply = Reply::error(five, m, 420, &self.plain_sign(m));
            return Err(reply
                .with(|b| {
                    b.attr(attr::UNKNOWN_ATTRIBUTES, &value);
                })
                .into());
        }
        let method = m.method();
        if method == Method::BINDING {
            if !self.config.stun {
                return Err(Stop::Nothing);
            }
            return self.handle_binding(five, m);
        }
        if !self.config.turn {
            return Err(Reply::error(five, m, 403, &self.plain_sign(m)).into());
        }
        // An allocation past its lifetime is gone even if the timer has not fired yet (RFC 8656
        // §7): a late timer must not let a request revive it.
        if let Some(&id) = self.by_five_tuple.get(&five) {
            if self
                .get(id)
                .is_some_and(|a| a.is_active() && a.expires() <= now)
            {
                self.counters.allocations_expired += 1;
                self.free(id, "allocation timeout");
            }
        }
        // A retransmitted request on an allocation gets the cached answer (RFC 8489 §6.3.1,
        // RFC 8656 §7.2 on retransmitted Allocates).
        if let Some(a) = self.by_five_tuple.get(&five).and_then(|&id| self.get(id)) {
            if let Some(data) = a.cached_response(m.transaction_id()) {
                let data = data.to_vec();
                self.commands.push_back(Command::Send { to: five, data });
                return Err(Stop::Nothing);
            }
            if !a.is_active() {
                return Err(Stop::Nothing); // still binding: the answer will come
            }
        }
        match method {
            Method::ALLOCATE => self.handle_allocate(now, five, m),
            Method::REFRESH => self.handle_refresh(now, five, m),
            Method::CREATE_PERMISSION => self.handle_create_permission(now, five, m),
            Method::CHANNEL_BIND => self.handle_channel_bind(now, five, m),
            Method::CONNECT => self.handle_connect(now, five, m),
            Method::CONNECTION_BIND => self.handle_connection_bind(now, five, m),
            _ => Err(Reply::error(five, m, 400, &self.plain_sign(m)).into()),
        }
    }
}

#[cfg(test)]
mod tests;
