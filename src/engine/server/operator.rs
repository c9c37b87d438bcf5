//! What operators do through the worker: kill, drain, snapshots for metrics and the admin API.

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
            .filter(|a| &*a.username == username)
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
                second: a.second.as_deref().copied(),
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
    pub username: Arc<str>,
    pub five_tuple: FiveTuple,
    pub relay: SocketAddr,
    pub reported_relay: SocketAddr,
    /// The IPv6 relay of a dual allocation, and what XOR-RELAYED-ADDRESS reports for it (a copy:
    /// the 1 Hz publish allocates nothing per allocation).
    pub second: Option<SecondRelay>,
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
