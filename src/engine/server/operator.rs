//! What operators do through the worker: kill, drain; [`AllocationInfo`], one allocation as the
//! admin API lists it (built by [`Server::list`] in `publish.rs`).

use super::*;

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
            .filter(|a| &**a.username() == username)
            .map(|a| a.id())
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
}

/// One allocation as seen from outside the worker.
#[derive(Debug, Clone)]
pub struct AllocationInfo {
    pub id: AllocationId,
    pub username: Arc<str>,
    pub five_tuple: FiveTuple,
    pub relay: SocketAddr,
    pub reported_relay: SocketAddr,
    /// The IPv6 relay of a dual allocation, and what XOR-RELAYED-ADDRESS reports for it (a copy,
    /// not the allocation's box: a listing allocates one vector, nothing per allocation).
    pub second: Option<SecondRelay>,
    pub started_unix: u64,
    pub expires_in: u64,
    pub permissions: usize,
    pub channels: usize,
    pub stats: AllocationStats,
    /// Bytes/s received from the client and peers over the last few 1 Hz publishes.
    pub rate: f64,
}

impl AllocationInfo {
    /// The IPv6 relayed address of a dual allocation.
    pub fn second_relay(&self) -> Option<SocketAddr> {
        self.second.as_ref().map(|s| s.relay.addr())
    }

    /// What the second XOR-RELAYED-ADDRESS reports.
    pub fn reported_second(&self) -> Option<SocketAddr> {
        self.second.as_ref().map(|s| s.reported)
    }
}
