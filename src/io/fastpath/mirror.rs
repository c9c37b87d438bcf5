//! A worker's side of the fast path: applies its engine's [`FastPathCommand`]s to the shared maps
//! and folds the kernel's per-allocation counters back into the engine's per-allocation stats
//! (once a second, from the worker's timer, and when an allocation ends), so metrics, the admin
//! API and session-end lines see fast-path traffic as user-path traffic.
//!
//! The maps are shared by all workers behind one mutex, taken only on control-plane events and
//! once a second, never per packet. A full map leaves the allocation (or the channel) on the user
//! path and is counted ([`FastPath::note_full`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{ChannelMirror, FastPath, FastPathError, PermissionMirror, SlotCounters};
use crate::engine::server::fastpath::FastPathCommand;
use crate::engine::stats::Flow;
use crate::engine::{AllocationId, Server};

/// What one allocation has in the maps.
#[derive(Debug)]
struct Mirrored {
    slot: u32,
    entries: Vec<ChannelMirror>,
    permissions: Vec<PermissionMirror>,
    /// The slot's counters as last folded into the engine.
    folded: SlotCounters,
}

#[derive(Debug)]
pub struct Mirror {
    fp: Arc<Mutex<FastPath>>,
    by_alloc: HashMap<AllocationId, Mirrored>,
    /// An `Instant` and the CLOCK_MONOTONIC reading taken with it, to turn engine deadlines into
    /// the kernel's clock.
    base: (Instant, u64),
}

impl Mirror {
    pub fn new(fp: Arc<Mutex<FastPath>>) -> Mirror {
        Mirror {
            fp,
            by_alloc: HashMap::new(),
            base: (Instant::now(), super::monotonic_ns()),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        let (bi, bn) = self.base;
        if t >= bi {
            bn.saturating_add(u64::try_from((t - bi).as_nanos()).unwrap_or(u64::MAX))
        } else {
            bn.saturating_sub(u64::try_from((bi - t).as_nanos()).unwrap_or(u64::MAX))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastPath> {
        self.fp.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carry out every queued change; call after [`Server::poll_command`] is drained.
    pub fn apply(&mut self, engine: &mut Server, now: Instant) {
        while let Some(cmd) = engine.poll_fastpath() {
            match cmd {
                FastPathCommand::Sync(id) => self.sync(engine, id, now),
                FastPathCommand::Remove(id) => self.remove(engine, id),
            }
        }
    }

    fn sync(&mut self, engine: &mut Server, id: AllocationId, now: Instant) {
        let Some(view) = engine.fastpath_view(id, now) else {
            self.remove(engine, id);
            return;
        };
        // Within one family or across (a dual allocation's peer of the other family, relayed
        // from the relay address of the peer's family).
        let client = canonical(view.client.addr());
        let local = canonical(view.local);
        let wanted: Vec<(u16, std::net::SocketAddr, std::net::SocketAddr, u64)> = view
            .channels
            .iter()
            .filter(|c| c.peer.is_ipv4() == c.relay.is_ipv4())
            .map(|c| {
                (
                    c.number.get(),
                    c.peer.addr(),
                    c.relay.addr(),
                    self.ns(c.expires),
                )
            })
            .collect();
        let wanted_perms: Vec<(std::net::IpAddr, std::net::SocketAddr, u64)> = view
            .permissions
            .iter()
            .filter(|p| p.peer.is_ipv4() == p.relay.is_ipv4())
            .map(|p| (p.peer, p.relay.addr(), self.ns(p.expires)))
            .collect();
        if wanted.is_empty() && wanted_perms.is_empty() && !self.by_alloc.contains_key(&id) {
            return;
        }
        let fp = self.fp.clone();
        let mut fp = fp.lock().unwrap_or_else(|e| e.into_inner());
        let m = match self.by_alloc.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let Some(slot) = fp.take_slot() else {
                    fp.note_full();
                    return;
                };
                e.insert(Mirrored {
                    slot,
                    entries: Vec::new(),
                    permissions: Vec::new(),
                    folded: SlotCounters::default(),
                })
            }
        };
        for old in &m.entries {
            if !wanted.iter().any(|w| w.0 == old.channel && w.1 == old.peer) {
                fp.remove_channel(old);
            }
        }
        let mut entries = Vec::with_capacity(wanted.len());
        for (channel, peer, relay, expires_ns) in wanted {
            let e = ChannelMirror {
                client,
                local,
                relay,
                peer,
                channel,
                slot: m.slot,
                expires_ns,
            };
            match fp.add_channel(&e) {
                Ok(()) => {
                    tracing::debug!(
                        "fast path: channel {channel:#06x} {client} -> {peer} mirrored"
                    );
                    entries.push(e)
                }
                Err(FastPathError::Full(_)) => fp.note_full(),
                Err(err) => tracing::warn!("fast path: {err}"),
            }
        }
        m.entries = entries;
        // A peer IP with a channel the kernel does not have (its map was full) keeps its
        // indications on the user path too: the kernel would answer that channel's peer with a
        // Data indication where the engine sends ChannelData.
        let unmirrored: Vec<std::net::IpAddr> = view
            .channels
            .iter()
            .filter(|c| {
                !m.entries
                    .iter()
                    .any(|e| e.channel == c.number.get() && e.peer == c.peer.addr())
            })
            .map(|c| c.peer.ip())
            .collect();
        for old in &m.permissions {
            if !wanted_perms
                .iter()
                .any(|w| w.0 == old.peer && !unmirrored.contains(&w.0))
            {
                fp.remove_permission(old);
            }
        }
        let mut permissions = Vec::with_capacity(wanted_perms.len());
        for (peer, relay, expires_ns) in wanted_perms {
            if unmirrored.contains(&peer) {
                continue;
            }
            let p = PermissionMirror {
                client,
                local,
                relay,
                peer,
                slot: m.slot,
                expires_ns,
            };
            match fp.add_permission(&p) {
                Ok(()) => {
                    tracing::debug!("fast path: permission {client} -> {peer} mirrored");
                    permissions.push(p)
                }
                Err(FastPathError::Full(_)) => fp.note_full(),
                Err(err) => tracing::warn!("fast path: {err}"),
            }
        }
        m.permissions = permissions;
    }

    fn remove(&mut self, engine: &mut Server, id: AllocationId) {
        let Some(m) = self.by_alloc.remove(&id) else {
            return;
        };
        let mut fp = self.lock();
        for e in &m.entries {
            fp.remove_channel(e);
        }
        for p in &m.permissions {
            fp.remove_permission(p);
        }
        let now = fp.counters(m.slot);
        fp.release_slot(m.slot);
        drop(fp);
        add_delta(engine, id, &m.folded, &now);
    }

    /// Add what the kernel counted since the last fold to each allocation's stats.
    pub fn fold(&mut self, engine: &mut Server) {
        let fp = self.fp.clone();
        let fp = fp.lock().unwrap_or_else(|e| e.into_inner());
        for (id, m) in self.by_alloc.iter_mut() {
            let now = fp.counters(m.slot);
            if now != m.folded {
                add_delta(engine, *id, &m.folded, &now);
                m.folded = now;
            }
        }
    }

    /// Allocations of this worker with a slot in the maps.
    pub fn mirrored(&self) -> usize {
        self.by_alloc.len()
    }
}

fn add_delta(engine: &mut Server, id: AllocationId, then: &SlotCounters, now: &SlotCounters) {
    let flow = |p: u64, b: u64, p0: u64, b0: u64| Flow {
        packets: p.saturating_sub(p0),
        bytes: b.saturating_sub(b0),
    };
    engine.add_fastpath_traffic(
        id,
        now.c2p_indications.saturating_sub(then.c2p_indications),
        now.p2c_indications.saturating_sub(then.p2c_indications),
        flow(
            now.c2p_packets,
            now.c2p_bytes,
            then.c2p_packets,
            then.c2p_bytes,
        ),
        flow(
            now.p2c_packets,
            now.p2c_bytes,
            then.p2c_packets,
            then.p2c_bytes,
        ),
    );
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 client) as the IPv4
/// address the kernel sees in the packet.
fn canonical(a: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(a.ip().to_canonical(), a.port())
}
