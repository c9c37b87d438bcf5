//! Where this node sends new Allocates it will not take itself (300 Try Alternate with
//! ALTERNATE-SERVER, RFC 8489 §10): the healthy peers of its region as last read from the
//! fleet's heartbeats (filled off the data path by [`crate::fleet::stats`]), and the clients it
//! sent away on load recently.
//!
//! - A draining node sends a new UDP/TCP Allocate to its least loaded peer that does not drain,
//!   preferring one under its own load threshold.
//! - A node holding `--redirect-over-allocations` allocations or more sends it to its least
//!   loaded peer that is under *its* threshold (so it serves the client rather than sending it
//!   on) and holds fewer allocations than this node; with no such peer it serves the client.
//!
//! Loops are impossible. Draining nodes are never chosen, so a draining node's client is
//! redirected to a node that does not send it back. A load redirect is chosen from heartbeats
//! that may be a few seconds old, so two nodes filling up together could each see the other as
//! under its threshold; for that, a node remembers for [`REDIRECT_MEMORY`] seconds the client IPs
//! it redirected on load and serves them itself if they come back: no node redirects a client
//! twice, so a client is never redirected twice to a node that redirected it, and it makes at
//! most one hop per node.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use super::auth::FLEET_USAGE_MAX_AGE;

/// Seconds a client IP redirected on load is served here if it comes back.
pub const REDIRECT_MEMORY: u64 = 10;
/// Client IPs remembered at most; when full of live entries, nobody more is redirected on load
/// (serving a client here is always safe).
pub const REDIRECT_MEMORY_MAX: usize = 65_536;

/// A peer node as its heartbeat last described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPeer {
    /// Where its clients reach it (UDP and TCP).
    pub addr: SocketAddr,
    pub allocations: u64,
    /// Under its own `--redirect-over-allocations`, or without one: it serves a client sent to it.
    pub takes_load: bool,
}

/// The fresh, not draining peers of this node's region, least loaded first, and the client IPs
/// redirected on load lately. Read on Allocates only, never on the data path.
#[derive(Debug, Default)]
pub struct FleetPeers {
    current: ArcSwapOption<(u64, Vec<FleetPeer>)>,
    /// Client IP -> Unix second until which it is served here rather than redirected.
    recent: Mutex<HashMap<IpAddr, u64>>,
}

impl FleetPeers {
    /// Publish the peers read at `fetched_unix`, least loaded first.
    pub fn store(&self, fetched_unix: u64, least_loaded_first: Vec<FleetPeer>) {
        self.current
            .store(Some(Arc::new((fetched_unix, least_loaded_first))));
    }

    /// The peers, if the last read is at most [`FLEET_USAGE_MAX_AGE`] seconds old.
    fn fresh(&self, unix_now: u64) -> Option<Arc<(u64, Vec<FleetPeer>)>> {
        self.current
            .load_full()
            .filter(|c| unix_now <= c.0.saturating_add(FLEET_USAGE_MAX_AGE))
    }

    /// Where a draining node sends a new Allocate that arrived on `here`: the least loaded peer
    /// that takes load, else the least loaded one.
    pub fn for_draining(&self, here: SocketAddr, unix_now: u64) -> Option<SocketAddr> {
        let cur = self.fresh(unix_now)?;
        let others = || cur.1.iter().filter(|p| p.addr != here);
        others()
            .find(|p| p.takes_load)
            .or_else(|| others().next())
            .map(|p| p.addr)
    }

    /// Where a node holding `held` allocations, at or over its threshold, sends a new Allocate
    /// from `client` that arrived on `here`: the least loaded peer that takes load and holds
    /// fewer than `held`, unless this node redirected `client` in the last [`REDIRECT_MEMORY`]
    /// seconds. None: serve it here.
    pub fn for_load(
        &self,
        client: IpAddr,
        held: u64,
        here: SocketAddr,
        unix_now: u64,
    ) -> Option<SocketAddr> {
        let cur = self.fresh(unix_now)?;
        let peer = cur
            .1
            .iter()
            .find(|p| p.takes_load && p.allocations < held && p.addr != here)?;
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.get(&client).is_some_and(|until| *until > unix_now) {
            return None;
        }
        if recent.len() >= REDIRECT_MEMORY_MAX {
            recent.retain(|_, until| *until > unix_now);
            if recent.len() >= REDIRECT_MEMORY_MAX {
                return None;
            }
        }
        recent.insert(client, unix_now + REDIRECT_MEMORY);
        Some(peer.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8, allocations: u64, takes_load: bool) -> FleetPeer {
        FleetPeer {
            addr: SocketAddr::from(([192, 0, 2, last], 3478)),
            allocations,
            takes_load,
        }
    }

    #[test]
    fn draining_prefers_a_peer_that_takes_load_and_never_names_itself() {
        let p = FleetPeers::default();
        let here = peer(1, 0, true).addr;
        assert_eq!(p.for_draining(here, 100), None);
        p.store(
            100,
            vec![peer(1, 0, true), peer(2, 1, false), peer(3, 5, true)],
        );
        assert_eq!(p.for_draining(here, 100), Some(peer(3, 0, true).addr));
        p.store(100, vec![peer(2, 1, false)]);
        assert_eq!(p.for_draining(here, 100), Some(peer(2, 0, true).addr));
        assert_eq!(p.for_draining(here, 100 + FLEET_USAGE_MAX_AGE + 1), None);
    }

    #[test]
    fn load_goes_to_a_less_loaded_peer_under_its_threshold_once_per_client() {
        let p = FleetPeers::default();
        let here = peer(1, 0, true).addr;
        let (c1, c2): (IpAddr, IpAddr) = ([198, 51, 100, 1].into(), [198, 51, 100, 2].into());
        p.store(
            100,
            vec![peer(2, 1, false), peer(3, 4, true), peer(4, 9, true)],
        );
        // Peer 2 is over its own threshold; peer 4 holds more than this node.
        assert_eq!(p.for_load(c1, 5, here, 100), Some(peer(3, 0, true).addr));
        assert_eq!(p.for_load(c1, 5, here, 101), None, "c1 was sent away once");
        assert_eq!(p.for_load(c2, 5, here, 101), Some(peer(3, 0, true).addr));
        // Holding 4, no peer that takes load holds fewer: served here, and not remembered.
        let c3: IpAddr = [198, 51, 100, 3].into();
        assert_eq!(p.for_load(c3, 4, here, 101), None);
        assert_eq!(p.for_load(c3, 5, here, 101), Some(peer(3, 0, true).addr));
        // A stale fleet view sends nobody away.
        let c4: IpAddr = [198, 51, 100, 4].into();
        assert_eq!(p.for_load(c4, 5, here, 100 + FLEET_USAGE_MAX_AGE + 1), None);
        // A fresh one does; c1 is forgotten after REDIRECT_MEMORY.
        let later = 100 + REDIRECT_MEMORY;
        p.store(later, vec![peer(3, 4, true)]);
        assert_eq!(p.for_load(c1, 5, here, later), Some(peer(3, 0, true).addr));
    }

    #[test]
    fn a_full_memory_redirects_nobody_more() {
        let p = FleetPeers::default();
        let here = peer(1, 0, true).addr;
        p.store(100, vec![peer(2, 0, true)]);
        {
            let mut r = p.recent.lock().unwrap();
            for i in 0..REDIRECT_MEMORY_MAX as u32 {
                r.insert(IpAddr::from((i + 1).to_be_bytes()), 105);
            }
        }
        let c: IpAddr = [203, 0, 113, 1].into();
        assert_eq!(p.for_load(c, 5, here, 100), None);
        // Once the entries expire they are swept and redirects resume.
        assert_eq!(p.for_load(c, 5, here, 105), Some(peer(2, 0, true).addr));
        assert_eq!(p.recent.lock().unwrap().len(), 1);
    }
}
