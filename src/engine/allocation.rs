//! Allocations (RFC 8656 §2.2, §7): the relayed transport address a client holds, with its
//! lifetime, credentials, permissions, channels, bandwidth buckets and counters.
//!
//! [`Allocation`]'s fields are private; the engine's handlers change it through methods named
//! for what happens (a relay rebinds, the allocation activates or is refreshed, a packet is
//! admitted, an answer is remembered), so the rules that tie fields together live here. What
//! relays its data is an [`AllocationKind`]: one UDP socket, a dual pair (the second boxed,
//! since few allocations have one) or an RFC 6062 TCP listener with its connections' counters.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::Key;
use super::channel::Channels;
use super::permission::Permissions;
use super::policy::{PipeBudget, TokenBucket};
use super::server::RateSamples;
use super::stats::{AllocationStats, Flow, TcpTraffic};
use super::{FiveTuple, RelayAddr};
use crate::proto::TransactionId;

/// Identifies an allocation inside one engine: a slab index and a generation, so an id kept by a
/// worker after its allocation ended never finds a newer one in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl AllocationId {
    /// The slab index, for workers that keep a parallel vector of relay sockets.
    pub fn index(&self) -> usize {
        self.index as usize
    }
}

/// Where an allocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The relay socket is being bound; the Allocate request waits for [`super::Server::handle_relay_bound`].
    Binding {
        attempts: u8,
    },
    /// The first relay socket is bound; the second of a dual allocation (RFC 8656 §7.2,
    /// ADDITIONAL-ADDRESS-FAMILY) is being bound.
    BindingSecond {
        attempts: u8,
    },
    Active,
}

/// What relays an allocation's data: which sockets it has and what only that kind holds, so a TCP
/// allocation cannot have a second relay and a UDP one cannot count TCP connections.
#[derive(Debug)]
pub enum AllocationKind {
    /// One UDP relay socket.
    Udp,
    /// Two UDP relay sockets (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY): the IPv6 one is the
    /// second, with the same permissions, channels, lifetime and counters. Boxed: most
    /// allocations have none, and every held allocation pays for this enum's size.
    UdpDual(Box<SecondRelay>),
    /// A TCP relay (RFC 6062): the relay socket listens, peers come and go as connections,
    /// whose counters are shared with the pipes that copy their bytes and folded into the
    /// allocation's once nothing else holds them.
    Tcp { traffic: Vec<Arc<TcpTraffic>> },
}

/// What [`Allocation::admit`] decided about one relayed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Pass it (counted as sent).
    Admitted,
    /// Not live, not UDP, or no permission for the peer (counted as dropped).
    NoPermission,
    /// Over the allocation's or the server's bandwidth (counted as dropped).
    NoBandwidth,
}

/// Which way a relayed packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    ToPeer,
    ToClient,
}

/// What an allocation is made with ([`Allocation::new`]); the rest starts empty.
#[derive(Debug)]
pub(crate) struct Grant {
    pub id: AllocationId,
    pub five_tuple: FiveTuple,
    pub relay: RelayAddr,
    pub reported_relay: SocketAddr,
    pub kind: AllocationKind,
    pub now: Instant,
    pub lifetime: Duration,
    pub username: Arc<str>,
    pub key: Option<Key>,
    /// `--max-bps` (0: no cap), each way.
    pub max_bps: u64,
    pub pipe_budget: Arc<PipeBudget>,
    pub dont_fragment: bool,
    pub reservation: Option<u64>,
    pub tid: TransactionId,
    pub pending: PendingAllocate,
    pub credential_expiry: Option<Instant>,
}

/// One allocation. Its fields are private: what may change, and together with what, is said by
/// the methods below, so a second relay on a TCP allocation, a channel on one, or a timer entry
/// the heap does not know of cannot be written.
#[derive(Debug)]
pub struct Allocation {
    id: AllocationId,
    five_tuple: FiveTuple,
    state: State,
    /// The address the relay socket is bound to.
    relay: RelayAddr,
    /// What XOR-RELAYED-ADDRESS reports (the `--external-ip` mapping of `relay`).
    reported_relay: SocketAddr,
    kind: AllocationKind,
    created: Instant,
    expires: Instant,
    /// Shared with every snapshot of it: the 1 Hz publish copies a pointer, not the name.
    username: Arc<str>,
    /// The key its Allocate authenticated with, which signs its answers (None: `--no-auth`).
    key: Option<Key>,
    permissions: Permissions,
    channels: Channels,
    stats: AllocationStats,
    to_peer_bucket: TokenBucket,
    to_client_bucket: TokenBucket,
    /// What its RFC 6062 pipes may move (the same `--max-bps`, shared by its pipes).
    pipe_budget: Arc<PipeBudget>,
    dont_fragment: bool,
    /// Its first relay's port went back to the pool when no port could be bound.
    relay_port_lost: bool,
    /// The port reserved alongside this one (EVEN-PORT with R), released if never claimed.
    reservation: Option<u64>,
    /// The last request answered and its response, so a retransmission gets the same answer
    /// (RFC 8489 §6.3.1: the server should cache responses for idempotence).
    last_tid: TransactionId,
    last_response: Vec<u8>,
    /// The response being built while the relay socket binds.
    pending: Option<PendingAllocate>,
    /// When the REST credential it was made with expires (`--strict-expiry` only).
    credential_expiry: Option<Instant>,
    /// When its one entry in the engine's timer heap fires (None: none yet). A Refresh that
    /// moves the expiry later adds no entry: the entry fires, finds the later time and moves
    /// itself there, so 3 M Refreshes cost one entry, not 3 M.
    timer_at: Option<Instant>,
    /// Its relayed bytes at the last few 1 Hz publishes, for its current rate.
    rate: RateSamples,
}

impl Allocation {
    /// A new allocation, binding its first relay socket.
    pub(crate) fn new(g: Grant) -> Self {
        Allocation {
            id: g.id,
            five_tuple: g.five_tuple,
            state: State::Binding { attempts: 1 },
            relay: g.relay,
            reported_relay: g.reported_relay,
            kind: g.kind,
            created: g.now,
            expires: g.now + g.lifetime,
            username: g.username,
            key: g.key,
            permissions: Permissions::default(),
            channels: Channels::default(),
            stats: AllocationStats::default(),
            to_peer_bucket: TokenBucket::new(g.max_bps, g.now),
            to_client_bucket: TokenBucket::new(g.max_bps, g.now),
            pipe_budget: g.pipe_budget,
            dont_fragment: g.dont_fragment,
            relay_port_lost: false,
            reservation: g.reservation,
            last_tid: g.tid,
            last_response: Vec::new(),
            pending: Some(g.pending),
            credential_expiry: g.credential_expiry,
            timer_at: None,
            rate: RateSamples::default(),
        }
    }

    // ------------------------------------------------------------------ what it is

    pub fn id(&self) -> AllocationId {
        self.id
    }

    pub fn five_tuple(&self) -> FiveTuple {
        self.five_tuple
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Every socket is bound and the client has its answer.
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// The address its (first) relay socket is bound to.
    pub fn relay(&self) -> RelayAddr {
        self.relay
    }

    /// What its (first) XOR-RELAYED-ADDRESS reports.
    pub fn reported_relay(&self) -> SocketAddr {
        self.reported_relay
    }

    pub fn kind(&self) -> &AllocationKind {
        &self.kind
    }

    /// A TCP relay (RFC 6062).
    pub fn is_tcp(&self) -> bool {
        matches!(self.kind, AllocationKind::Tcp { .. })
    }

    /// The second relay of a dual allocation.
    pub fn second(&self) -> Option<&SecondRelay> {
        match &self.kind {
            AllocationKind::UdpDual(s) => Some(s),
            _ => None,
        }
    }

    /// The IPv6 relayed address of a dual allocation.
    pub fn second_relay(&self) -> Option<RelayAddr> {
        self.second().map(|s| s.relay)
    }

    /// What the second XOR-RELAYED-ADDRESS reports.
    pub fn reported_second(&self) -> Option<SocketAddr> {
        self.second().map(|s| s.reported)
    }

    /// The relayed address that talks to a peer at `peer`: the second one of a dual allocation
    /// for an IPv6 peer, else the first.
    pub fn relay_for(&self, peer: IpAddr) -> RelayAddr {
        match self.second_relay() {
            Some(r) if peer.is_ipv6() => r,
            _ => self.relay,
        }
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    /// When its lifetime ends unless refreshed.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// When the allocation ends unless refreshed: its expiry, or its REST credential's end
    /// (`--strict-expiry`) if sooner.
    pub fn deadline(&self) -> Instant {
        self.credential_expiry
            .map_or(self.expires, |c| c.min(self.expires))
    }

    /// Active and within its lifetime at `now`.
    pub fn is_live(&self, now: Instant) -> bool {
        self.state == State::Active && self.expires > now
    }

    pub fn username(&self) -> &Arc<str> {
        &self.username
    }

    /// The key that signs its answers (None: `--no-auth`).
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// Its counters, without what its TCP peer connections count now (see [`Self::traffic`]).
    pub fn stats(&self) -> &AllocationStats {
        &self.stats
    }

    /// Whether a `--max-bps` cap applies to it.
    pub fn is_capped(&self) -> bool {
        self.to_peer_bucket.rate() != 0 || self.to_client_bucket.rate() != 0
    }

    pub fn pipe_budget(&self) -> &Arc<PipeBudget> {
        &self.pipe_budget
    }

    pub fn dont_fragment(&self) -> bool {
        self.dont_fragment
    }

    /// The token of the port reserved alongside this one, while unclaimed.
    pub fn reservation(&self) -> Option<u64> {
        self.reservation
    }

    /// What the Allocate answer needs while the relay sockets bind.
    pub fn pending(&self) -> Option<&PendingAllocate> {
        self.pending.as_ref()
    }

    /// Its relayed bytes at the last few publishes.
    pub fn rate(&self) -> &RateSamples {
        &self.rate
    }

    // ------------------------------------------------------------------ binding its sockets

    /// The first relay socket did not bind: try `relay` (reported as `reported`), try number
    /// `attempts`.
    pub(crate) fn rebind(&mut self, relay: RelayAddr, reported: SocketAddr, attempts: u8) {
        self.relay = relay;
        self.reported_relay = reported;
        self.state = State::Binding { attempts };
    }

    /// No relay port could be had: the port it held is given back already, so
    /// [`Self::held_relays`] no longer names it.
    pub(crate) fn lose_relay_port(&mut self) {
        self.relay_port_lost = true;
    }

    /// The relayed addresses whose ports it holds in the port pool, to give back when it ends.
    pub fn held_relays(&self) -> impl Iterator<Item = RelayAddr> {
        let first = (!self.relay_port_lost).then_some(self.relay);
        first.into_iter().chain(self.second_relay())
    }

    /// The second socket of a dual allocation binds next (try number `attempts`).
    pub(crate) fn bind_second(&mut self, attempts: u8) {
        self.state = State::BindingSecond { attempts };
    }

    /// The second relay socket to try, or none (the allocation goes on with one family).
    pub(crate) fn set_second(&mut self, second: Option<Box<SecondRelay>>) {
        if self.is_tcp() {
            return; // one listening address per TCP allocation
        }
        self.kind = match second {
            Some(s) => AllocationKind::UdpDual(s),
            None => AllocationKind::Udp,
        };
    }

    pub(crate) fn pending_mut(&mut self) -> Option<&mut PendingAllocate> {
        self.pending.as_mut()
    }

    /// The Allocate is answered (or given up): what its answer needed.
    pub(crate) fn take_pending(&mut self) -> Option<PendingAllocate> {
        self.pending.take()
    }

    /// The reserved port is claimed or given back.
    pub(crate) fn take_reservation(&mut self) -> Option<u64> {
        self.reservation.take()
    }

    /// Every socket is bound: the allocation becomes active at `now` with the lifetime its
    /// Allocate is granted, and hands back what the answer needs.
    pub(crate) fn activate(&mut self, now: Instant) -> Option<PendingAllocate> {
        self.state = State::Active;
        let lifetime = self.pending.as_ref().map_or(0, |p| p.lifetime);
        self.expires = now + Duration::from_secs(u64::from(lifetime));
        self.pending.take()
    }

    /// A Refresh moved its lifetime's end (RFC 8656 §7.3).
    pub(crate) fn refresh(&mut self, expires: Instant) {
        self.expires = expires;
    }

    // ------------------------------------------------------------------ timer

    /// Its timer entry for `t` fired: true if that entry is its current one (else an entry
    /// superseded by an earlier one fired, and is ignored). It has no entry after this.
    pub(crate) fn timer_fired(&mut self, t: Instant) -> bool {
        if self.timer_at != Some(t) {
            return false;
        }
        self.timer_at = None;
        true
    }

    /// The instant to put in the timer heap for it, if its current entry (if any) falls after
    /// its deadline; recorded as its entry.
    pub(crate) fn arm_timer(&mut self) -> Option<Instant> {
        let deadline = self.deadline();
        if self.timer_at.is_some_and(|t| t <= deadline) {
            return None;
        }
        self.timer_at = Some(deadline);
        Some(deadline)
    }

    // ------------------------------------------------------------------ answers

    /// The cached answer to request `tid`, if it was the last one answered.
    pub fn cached_response(&self, tid: &TransactionId) -> Option<&[u8]> {
        (&self.last_tid == tid && !self.last_response.is_empty())
            .then_some(self.last_response.as_slice())
    }

    /// Remember the answer `data` to request `tid` for its retransmissions.
    pub(crate) fn remember_response(&mut self, tid: &[u8], data: &[u8]) {
        self.last_tid.copy_from_slice(tid);
        self.last_response.clear();
        self.last_response.extend_from_slice(data);
    }

    // ------------------------------------------------------------------ peers

    /// Its permission table, for CreatePermission.
    pub(crate) fn permissions_mut(&mut self) -> &mut Permissions {
        &mut self.permissions
    }

    /// Both tables, for ChannelBind; None for a TCP allocation, which has no channels
    /// (RFC 6062 §5).
    pub(crate) fn channels_and_permissions_mut(
        &mut self,
    ) -> Option<(&mut Channels, &mut Permissions)> {
        if self.is_tcp() {
            return None;
        }
        Some((&mut self.channels, &mut self.permissions))
    }

    // ------------------------------------------------------------------ data and counters

    /// Bytes received from the client (ChannelData or Send), before any check.
    #[inline]
    pub(crate) fn count_from_client(&mut self, len: usize) {
        self.stats.client_rcv.add(len);
    }

    /// Bytes received from a peer, before any check.
    #[inline]
    pub(crate) fn count_from_peer(&mut self, len: usize) {
        self.stats.peer_rcv.add(len);
    }

    /// A packet dropped before [`Self::admit`] (ChannelData on an unbound channel).
    #[inline]
    pub(crate) fn count_dropped(&mut self, len: usize) {
        self.stats.dropped.add(len);
    }

    /// The checks a relayed packet of `len` bytes to or from `peer` passes, and their
    /// accounting: the allocation is live and UDP (a TCP allocation relays over its connections
    /// only, RFC 6062 §5) and has a permission for the peer; its bucket for this way and the
    /// server's (`capacity`) have room. Admitted: counted as sent; else as dropped. Always
    /// inlined: its callers are the per-packet paths.
    #[inline(always)]
    pub(crate) fn admit(
        &mut self,
        capacity: &mut TokenBucket,
        now: Instant,
        peer: IpAddr,
        len: usize,
        way: Way,
    ) -> Admission {
        if self.is_tcp() || !self.is_live(now) || !self.permissions.allows(peer, now) {
            self.stats.dropped.add(len);
            return Admission::NoPermission;
        }
        let bucket = match way {
            Way::ToPeer => &mut self.to_peer_bucket,
            Way::ToClient => &mut self.to_client_bucket,
        };
        if !bucket.try_take(now, len) || !capacity.try_take(now, len) {
            self.stats.dropped.add(len);
            return Admission::NoBandwidth;
        }
        match way {
            Way::ToPeer => self.stats.peer_sent.add(len),
            Way::ToClient => self.stats.client_sent.add(len),
        }
        Admission::Admitted
    }

    /// What the kernel fast path relayed for it.
    pub(crate) fn add_fastpath_traffic(&mut self, to_peer: Flow, to_client: Flow) {
        self.stats.add_relayed(to_peer, to_client);
    }

    /// Count a new RFC 6062 peer connection's traffic with it (a TCP allocation only).
    pub(crate) fn add_tcp_traffic(&mut self, traffic: Arc<TcpTraffic>) {
        if let AllocationKind::Tcp { traffic: list } = &mut self.kind {
            list.push(traffic);
        }
    }

    /// Its counters now: `stats` plus what its TCP peer connections have counted so far.
    pub fn traffic(&self) -> AllocationStats {
        let mut t = self.stats;
        if let AllocationKind::Tcp { traffic } = &self.kind {
            for c in traffic {
                c.add_to(&mut t);
            }
        }
        t
    }

    /// Fold the counters of TCP peer connections that nothing else holds any more (closed,
    /// their pipes done) into `stats`, so the list stays as short as the live connections.
    pub(crate) fn settle_tcp_traffic(&mut self) {
        let AllocationKind::Tcp { traffic } = &mut self.kind else {
            return;
        };
        let stats = &mut self.stats;
        traffic.retain(|c| {
            let done = Arc::strong_count(c) == 1;
            if done {
                c.add_to(stats);
            }
            !done
        });
    }

    /// Its final counters, as it ends: bytes a pipe still copies after this are not counted
    /// (the pipe is being closed).
    pub(crate) fn close_traffic(&mut self) -> AllocationStats {
        self.stats = self.traffic();
        if let AllocationKind::Tcp { traffic } = &mut self.kind {
            traffic.clear();
        }
        self.stats
    }

    /// Its rate samples, for the publish.
    pub(crate) fn rate_mut(&mut self) -> &mut RateSamples {
        &mut self.rate
    }
}

/// The second (IPv6) relayed address of a dual allocation and what its XOR-RELAYED-ADDRESS
/// reports (the `--external-ip` mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondRelay {
    pub relay: RelayAddr,
    pub reported: SocketAddr,
}

impl SecondRelay {
    /// Boxed, as [`AllocationKind::UdpDual`] holds it.
    pub fn boxed(relay: RelayAddr, reported: SocketAddr) -> Box<SecondRelay> {
        Box::new(SecondRelay { relay, reported })
    }
}

/// What the Allocate response will need once the relay socket is bound.
#[derive(Debug, Clone)]
pub struct PendingAllocate {
    pub tid: TransactionId,
    pub lifetime: u32,
    /// The port was reserved earlier (RESERVATION-TOKEN): no other port may replace it.
    pub fixed_port: bool,
    /// EVEN-PORT was asked for: a replacement port must be even too.
    pub even: bool,
    pub reservation_token: Option<u64>,
    /// ADDRESS-ERROR-CODE for the additional (IPv6) family of a dual allocation: 440 when the
    /// server has no IPv6 relay address, 508 when none of its ports could be had.
    pub address_error: Option<u16>,
    /// The request used the draft code point of ADDITIONAL-ADDRESS-FAMILY (coturn's clients):
    /// ADDRESS-ERROR-CODE is answered with the draft's code point too.
    pub draft_codepoints: bool,
    pub fingerprint: bool,
    pub sha256: bool,
}

impl PendingAllocate {
    /// What its answer needs from the request.
    pub fn later(&self) -> crate::engine::server::Later {
        crate::engine::server::Later {
            tid: self.tid,
            sha256: self.sha256,
            fingerprint: self.fingerprint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_costs_no_more_than_the_tcp_counters_it_holds() {
        // The second relay is boxed, so the enum is as big as its largest variant's vector.
        assert_eq!(
            size_of::<AllocationKind>(),
            size_of::<Vec<Arc<TcpTraffic>>>()
        );
    }
}
