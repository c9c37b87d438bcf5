//! What the engine tells the kernel fast path (issue 18, DESIGN.md "The kernel fast path"): an
//! outbox of allocations whose relayable state changed (a channel bound or refreshed, a permission
//! installed or refreshed by CreatePermission or ChannelBind, the lifetime refreshed, the config
//! reloaded) or that ended (expiry, Refresh 0, admin
//! kill, a removed user, a closed transport, shutdown), which the worker drains after every input
//! and applies to the BPF maps ([`crate::io::fastpath::mirror`]). The engine stays the authority:
//! [`Server::fastpath_view`] says what may be relayed without it, and the kernel checks each
//! entry's expiry itself, so an entry lapses at the same instant the engine would refuse.
//!
//! Only UDP allocations without a bandwidth cap (`--max-bps`, `--bps-capacity`) are offered: a
//! capped allocation stays on the user path, where its token buckets are.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::Server;
use crate::engine::stats::Flow;
use crate::engine::{AllocationId, ChannelNumber, ClientAddr, PeerAddr, RelayAddr, Transport};

/// One change for the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPathCommand {
    /// Re-read the allocation with [`Server::fastpath_view`] and mirror what it says.
    Sync(AllocationId),
    /// The allocation ended: take it out of the maps.
    Remove(AllocationId),
}

/// The commands queued for the worker; nothing is queued until [`Server::enable_fastpath`].
#[derive(Debug, Default)]
pub(super) struct Outbox {
    on: bool,
    queue: VecDeque<FastPathCommand>,
}

/// A channel the fast path may relay until `expires` (the earliest of the channel's, its peer's
/// permission's and the allocation's deadlines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelView {
    pub number: ChannelNumber,
    pub peer: PeerAddr,
    /// The relayed address that talks to this peer (the second one of a dual allocation for an
    /// IPv6 peer).
    pub relay: RelayAddr,
    pub expires: Instant,
}

/// A permission the fast path may relay Send indications (client → peer) and Data indications
/// (peer → client, when no channel is bound for the peer's transport address) under, until
/// `expires` (the earlier of the permission's and the allocation's deadlines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermissionView {
    pub peer: IpAddr,
    /// The relayed address that talks to this peer (the second one of a dual allocation for an
    /// IPv6 peer).
    pub relay: RelayAddr,
    pub expires: Instant,
}

/// What of one allocation the fast path may relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathView {
    pub client: ClientAddr,
    /// The server address the client sends to.
    pub local: SocketAddr,
    pub channels: Vec<ChannelView>,
    pub permissions: Vec<PermissionView>,
}

impl Server {
    /// Start queueing [`FastPathCommand`]s (a worker with the fast path attached calls it once).
    pub fn enable_fastpath(&mut self) {
        self.fastpath.on = true;
    }

    /// The next change for the fast path; drain after every input, like [`Server::poll_command`].
    #[must_use]
    pub fn poll_fastpath(&mut self) -> Option<FastPathCommand> {
        self.fastpath.queue.pop_front()
    }

    pub(super) fn fastpath_sync(&mut self, id: AllocationId) {
        if self.fastpath.on {
            self.fastpath.queue.push_back(FastPathCommand::Sync(id));
        }
    }

    pub(super) fn fastpath_remove(&mut self, id: AllocationId) {
        if self.fastpath.on {
            self.fastpath.queue.push_back(FastPathCommand::Remove(id));
        }
    }

    /// Every allocation again (after a reload: caps and policy may have changed).
    pub(super) fn fastpath_sync_all(&mut self) {
        if self.fastpath.on {
            let ids: Vec<AllocationId> = self.allocations().map(|a| a.id()).collect();
            self.fastpath
                .queue
                .extend(ids.into_iter().map(FastPathCommand::Sync));
        }
    }

    /// What the fast path may relay for allocation `id` at `now`; `None` when nothing (ended, not
    /// active, not UDP, bandwidth-capped).
    pub fn fastpath_view(&self, id: AllocationId, now: Instant) -> Option<FastPathView> {
        let a = self.get(id)?;
        if !a.is_active()
            || a.is_tcp()
            || a.five_tuple().transport != Transport::Udp
            || a.is_capped()
            || self.config.bps_capacity != 0
        {
            return None;
        }
        let deadline = a.deadline();
        let channels = a
            .channels()
            .iter()
            .filter_map(|c| {
                let perm = a.permissions().expires(c.peer.ip())?;
                let expires = c.expires.min(perm).min(deadline);
                let relay = a.relay_for(c.peer.ip());
                (expires > now).then_some(ChannelView {
                    number: c.number,
                    peer: c.peer,
                    relay,
                    expires,
                })
            })
            .collect();
        let permissions = a
            .permissions()
            .live(now)
            .filter_map(|p| {
                let expires = p.expires.min(deadline);
                (expires > now).then_some(PermissionView {
                    peer: p.ip,
                    relay: a.relay_for(p.ip),
                    expires,
                })
            })
            .collect();
        Some(FastPathView {
            client: a.five_tuple().client,
            local: a.five_tuple().server,
            channels,
            permissions,
        })
    }

    /// Packets and payload bytes the fast path relayed for `id` since the last call, counted as
    /// the user path counts them (client → peer: `client_rcv` and `peer_sent`; peer → client:
    /// `peer_rcv` and `client_sent`). An allocation that already ended adds to the totals of
    /// ended allocations. `send` and `data`: how many of those packets were Send and Data
    /// indications, counted as the user path counts them (`vigi_turn_relayed_indications_total`).
    pub fn add_fastpath_traffic(
        &mut self,
        id: AllocationId,
        send: u64,
        data: u64,
        to_peer: Flow,
        to_client: Flow,
    ) {
        self.counters.send_indications += send;
        self.counters.data_indications += data;
        match self.get_mut(id) {
            Some(a) => a.add_fastpath_traffic(to_peer, to_client),
            None => self.counters.closed_traffic.add_relayed(to_peer, to_client),
        }
    }
}
