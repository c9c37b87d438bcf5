//! [`Shared`]: the state all workers' engines share (ports, nonce key, quotas, reservations).

use super::*;

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
    pub(super) tcp_conns: Mutex<HashMap<ConnectionId, TcpConnection>>,
    /// Hands each engine its shard number (which engine an AllocationId belongs to).
    pub(super) next_shard: AtomicU32,
    /// Allocations per user on the other nodes of the fleet, for the user quota.
    pub fleet_usage: Arc<FleetUsage>,
    /// Where a draining node redirects new Allocates (healthy peers of its region).
    pub fleet_peers: Arc<FleetPeers>,
    /// Every RFC 6062 pipe's bytes (`--bps-capacity`, a worker's share; see
    /// [`crate::engine::policy::PipeBudget`]).
    pub pipe_capacity: Arc<Mutex<TokenBucket>>,
}

/// The port an EVEN-PORT request with the R bit set keeps for a later Allocate (RFC 8656
/// §14.9), under its RESERVATION-TOKEN.
#[derive(Debug, Clone)]
pub(super) struct Reservation {
    pub(super) addr: SocketAddr,
    pub(super) expires_unix: u64,
    /// The quota name of the user who reserved it: the reservation counts against it.
    pub(super) user: String,
}

/// One allocation counted against a user's quota and the total ([`Shared::try_count`]): given
/// back when dropped, unless [`QuotaGuard::keep`] passes it on to an allocation (which gives it
/// back when it ends). Every refusal after the count is then one `return`, with nothing to undo
/// by hand.
#[derive(Debug)]
pub(super) struct QuotaGuard {
    shared: Arc<Shared>,
    user: Option<String>,
}

impl QuotaGuard {
    /// The allocation now holds the count.
    pub(super) fn keep(mut self) {
        self.user = None;
    }
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        if let Some(user) = self.user.take() {
            self.shared.uncount(&user);
        }
    }
}

impl Shared {
    /// `now` starts the shared pipe bucket (its rate is set by the engines).
    pub fn new(min_port: u16, max_port: u16, nonce_key: [u8; 32], now: Instant) -> Self {
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
            pipe_capacity: Arc::new(Mutex::new(TokenBucket::new(0, now))),
        }
    }

    /// Count an allocation for `user` (its quota name, [`auth::quota_user`]) if both quotas
    /// allow it; allocations on other nodes of the fleet count too (`elsewhere.0` of the user,
    /// `elsewhere.1` in all). The empty name of `--no-auth` has no user quota: there is no user
    /// to count, and the total quota still bounds it.
    pub(super) fn try_count(
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

    /// [`Shared::try_count`] as a guard that gives the count back unless kept.
    pub(super) fn count_guard(
        self: &Arc<Self>,
        user: &str,
        user_quota: u32,
        total_quota: u32,
        elsewhere: (u32, u32),
    ) -> Option<QuotaGuard> {
        self.try_count(user, user_quota, total_quota, elsewhere)
            .then(|| QuotaGuard {
                shared: self.clone(),
                user: Some(user.to_owned()),
            })
    }

    /// A guard for a count taken earlier (a reservation's, passed to the allocation that
    /// claims it).
    pub(super) fn adopt_count(self: &Arc<Self>, user: &str) -> QuotaGuard {
        QuotaGuard {
            shared: self.clone(),
            user: Some(user.to_owned()),
        }
    }

    pub(super) fn uncount(&self, user: &str) {
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

    fn reservation_table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Reservation>> {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `r` under `token` until it is claimed or its time is up.
    pub(super) fn put_reservation(&self, token: u64, r: Reservation) {
        self.reservation_table().insert(token, r);
    }

    /// Claim the reservation of `token`, if any: it is no longer held.
    pub(super) fn take_reservation(&self, token: u64) -> Option<Reservation> {
        self.reservation_table().remove(&token)
    }

    /// The reserved port of `token` moves to `addr` (its first port could not be bound); the
    /// old one is given back. Without the reservation, `addr`'s port is given back instead.
    pub(super) fn move_reservation(&self, token: u64, addr: SocketAddr) {
        match self.reservation_table().get_mut(&token) {
            Some(r) => {
                self.ports.release(r.addr.ip(), r.addr.port());
                r.addr = addr;
            }
            None => self.ports.release(addr.ip(), addr.port()),
        }
    }

    /// Drop the reservation of `token` now: its port and quota count are given back.
    pub(super) fn cancel_reservation(&self, token: u64) {
        if let Some(r) = self.take_reservation(token) {
            self.ports.release(r.addr.ip(), r.addr.port());
            self.uncount(&r.user);
        }
    }

    /// EVEN-PORT reservations held now (each counts against its user's quota and the total).
    pub fn reservations_held(&self) -> usize {
        self.reservation_table().len()
    }

    /// The rate of the bucket every RFC 6062 pipe draws from (kept when unchanged).
    pub(super) fn set_pipe_capacity(&self, rate: u64, now: Instant) {
        let mut cap = self.pipe_capacity.lock().unwrap_or_else(|e| e.into_inner());
        if cap.rate() != rate {
            *cap = TokenBucket::new(rate, now);
        }
    }

    /// Free reservations whose time is up.
    pub(super) fn sweep_reservations(&self, unix_now: u64) {
        self.reservation_table().retain(|_, v| {
            let keep = v.expires_unix > unix_now;
            if !keep {
                self.ports.release(v.addr.ip(), v.addr.port());
                self.uncount(&v.user);
            }
            keep
        });
    }
}
