//! Allocations (RFC 8656 §2.2, §7): the relayed transport address a client holds, with its
//! lifetime, credentials, permissions, channels, bandwidth buckets and counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::auth::Key;
use super::channel::Channels;
use super::permission::Permissions;
use super::policy::TokenBucket;
use super::stats::{AllocationStats, TcpTraffic};
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

#[derive(Debug)]
pub struct Allocation {
    pub id: AllocationId,
    pub five_tuple: FiveTuple,
    pub state: State,
    /// The address the relay socket is bound to.
    pub relay: RelayAddr,
    /// What XOR-RELAYED-ADDRESS reports (the `--external-ip` mapping of `relay`).
    pub reported_relay: SocketAddr,
    /// The IPv6 relayed address of a dual allocation (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY):
    /// a second socket, same permissions, channels, lifetime and counters. Boxed: most
    /// allocations have none, and every held allocation pays for this field (8 bytes, not 64).
    pub second: Option<Box<SecondRelay>>,
    pub created: Instant,
    pub expires: Instant,
    /// Shared with every snapshot of it: the 1 Hz publish copies a pointer, not the name.
    pub username: std::sync::Arc<str>,
    /// The key its Allocate authenticated with, which signs its answers (None: `--no-auth`).
    pub key: Option<Key>,
    pub permissions: Permissions,
    pub channels: Channels,
    pub stats: AllocationStats,
    pub to_peer_bucket: TokenBucket,
    pub to_client_bucket: TokenBucket,
    /// What its RFC 6062 pipes may move (the same `--max-bps`, shared by its pipes).
    pub pipe_budget: std::sync::Arc<super::policy::PipeBudget>,
    pub dont_fragment: bool,
    /// A TCP relay (RFC 6062): `relay` is a listening socket, peers come and go as connections.
    pub tcp: bool,
    /// The counters of its TCP peer connections (RFC 6062), shared with the pipes that copy
    /// their bytes; folded into `stats` once nothing else holds them.
    pub tcp_traffic: Vec<Arc<TcpTraffic>>,
    /// The port reserved alongside this one (EVEN-PORT with R), released if never claimed.
    pub reservation: Option<u64>,
    /// The last request answered and its response, so a retransmission gets the same answer
    /// (RFC 8489 §6.3.1: the server should cache responses for idempotence).
    pub last_tid: TransactionId,
    pub last_response: Vec<u8>,
    /// The response being built while the relay socket binds.
    pub pending: Option<PendingAllocate>,
    /// When the REST credential it was made with expires (`--strict-expiry` only).
    pub credential_expiry: Option<Instant>,
    /// When its one entry in the engine's timer heap fires (None: none yet). A Refresh that
    /// moves the expiry later adds no entry: the entry fires, finds the later time and moves
    /// itself there, so 3 M Refreshes cost one entry, not 3 M.
    pub timer_at: Option<Instant>,
    /// Its relayed bytes at the last few 1 Hz publishes, for its current rate.
    pub rate: super::server::RateSamples,
}

impl Allocation {
    /// When the allocation ends unless refreshed: its expiry, or its REST credential's end
    /// (`--strict-expiry`) if sooner.
    pub fn deadline(&self) -> Instant {
        self.credential_expiry
            .map_or(self.expires, |c| c.min(self.expires))
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
    /// Boxed, as [`Allocation::second`] and `AllocationInfo::second` hold it.
    pub fn boxed(relay: RelayAddr, reported: SocketAddr) -> Box<SecondRelay> {
        Box::new(SecondRelay { relay, reported })
    }
}

impl Allocation {
    /// The IPv6 relayed address of a dual allocation.
    pub fn second_relay(&self) -> Option<RelayAddr> {
        self.second.as_ref().map(|s| s.relay)
    }

    /// What the second XOR-RELAYED-ADDRESS reports.
    pub fn reported_second(&self) -> Option<SocketAddr> {
        self.second.as_ref().map(|s| s.reported)
    }

    /// Its counters now: `stats` plus what its TCP peer connections have counted so far.
    pub fn traffic(&self) -> AllocationStats {
        let mut t = self.stats;
        for c in &self.tcp_traffic {
            c.add_to(&mut t);
        }
        t
    }

    /// Fold the counters of TCP peer connections that nothing else holds any more (closed,
    /// their pipes done) into `stats`, so the list stays as short as the live connections.
    pub fn settle_tcp_traffic(&mut self) {
        let stats = &mut self.stats;
        self.tcp_traffic.retain(|c| {
            let done = Arc::strong_count(c) == 1;
            if done {
                c.add_to(stats);
            }
            !done
        });
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
