//! What a worker says about its engine once a second, and what it lists when asked (issue 17,
//! item 8).
//!
//! The 1 Hz publish ([`Server::publish`]) carries aggregates only: live allocations by
//! transport, permissions, channels, live traffic, the worker's own K busiest allocations and,
//! with `--prometheus-username-labels`, traffic per user. Rates are tracked here: every
//! allocation keeps its relayed byte count at the last [`RATE_SAMPLES`] publishes
//! ([`RateSamples`], a fixed array in the allocation), the engine the instants of those
//! publishes. In steady state the publish allocates nothing: the output's vectors, the top-K
//! heap and the per-user table keep their capacity from one second to the next, and the names
//! they hold are shared `Arc<str>`s. The full per-allocation listing ([`Server::list`]) is built
//! only on demand (the admin API, `--redis-statsdb`); the fleet quota asks for counts per user
//! ([`Server::count_by_user`]).

use super::*;

/// Publishes an allocation's rate is measured over: about three seconds at one a second.
pub const RATE_SAMPLES: usize = 4;

/// The transports in the order [`Aggregates::by_transport`] and the duration histogram use.
pub const TRANSPORTS: [Transport; 4] = [
    Transport::Udp,
    Transport::Tcp,
    Transport::Tls,
    Transport::Dtls,
];

/// Where `t` is in [`TRANSPORTS`].
#[inline]
pub fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
        Transport::Dtls => 3,
    }
}

/// Bytes the server received on behalf of an allocation, from the client and from peers: each
/// relayed byte counted once. Its rate is the allocation's "current rate".
#[inline]
pub fn relayed_bytes(s: &AllocationStats) -> u64 {
    s.client_rcv.bytes + s.peer_rcv.bytes
}

/// An allocation's relayed bytes at the last [`RATE_SAMPLES`] publishes, by publish round.
#[derive(Debug, Default, Clone, Copy)]
pub struct RateSamples {
    bytes: [u64; RATE_SAMPLES],
    /// The round of its first sample (rounds count from 1; 0: never sampled).
    since: u64,
}

/// The engine's side of the rates: the publish rounds and when they happened.
#[derive(Debug, Default)]
pub(super) struct PublishState {
    round: u64,
    at: [Option<Instant>; RATE_SAMPLES],
    /// Seconds from `d` rounds ago to the last round, by `d` (0: unknown): worked out once a
    /// publish, not once an allocation.
    span: [f64; RATE_SAMPLES],
    /// The K busiest so far in a publish, least busy on top: (rate bits, relayed bytes, slot).
    /// A non-negative `f64`'s bits order as the number does.
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Per-user traffic being added up (with `traffic_by_user`).
    users: HashMap<Arc<str>, AllocationStats>,
    /// Traffic of ended allocations per user (with `traffic_by_user`).
    pub(super) closed_by_user: HashMap<Arc<str>, AllocationStats>,
}

impl PublishState {
    /// Bytes/s over the samples `r` holds, as of the last round.
    fn rate(&self, r: &RateSamples) -> f64 {
        if r.since == 0 || self.round == 0 {
            return 0.0;
        }
        let last = self.round;
        let first = r.since.max(last.saturating_sub(RATE_SAMPLES as u64 - 1));
        let span = self.span[(last.saturating_sub(first) as usize).min(RATE_SAMPLES - 1)];
        if first >= last || span <= 0.0 {
            return 0.0;
        }
        let b = r.bytes[slot(last)].saturating_sub(r.bytes[slot(first)]);
        b as f64 / span
    }

    /// Start round `round + 1` at `now`: its slot, and the spans back from it.
    fn next_round(&mut self, now: Instant) -> usize {
        self.round += 1;
        let last = slot(self.round);
        self.at[last] = Some(now);
        for d in 1..RATE_SAMPLES {
            let back = self.round.checked_sub(d as u64).filter(|&r| r > 0);
            self.span[d] = match back.and_then(|r| self.at[slot(r)]) {
                Some(t0) if now > t0 => (now - t0).as_secs_f64(),
                _ => 0.0,
            };
        }
        last
    }
}

/// Where round `round`'s sample goes.
#[inline]
fn slot(round: u64) -> usize {
    (round % RATE_SAMPLES as u64) as usize
}

/// One of a worker's busiest allocations.
#[derive(Debug, Clone)]
pub struct TopAllocation {
    pub id: AllocationId,
    pub username: Arc<str>,
    pub relay: SocketAddr,
    /// Bytes/s received from the client and peers over the last few seconds.
    pub rate: f64,
    pub stats: AllocationStats,
}

impl TopAllocation {
    /// The order of the top K: the current rate, then the bytes relayed so far.
    pub fn key(&self) -> (f64, u64) {
        (self.rate, relayed_bytes(&self.stats))
    }
}

/// What a worker publishes once a second besides its counters: sums over its live
/// allocations, its top K and (optionally) traffic per user. Fill it with [`Server::publish`],
/// reusing the same value so that its vectors keep their capacity.
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    /// Live (active) allocations.
    pub allocations: usize,
    /// Of those, by transport ([`TRANSPORTS`] order).
    pub by_transport: [u64; 4],
    pub permissions: usize,
    pub channels: usize,
    /// The traffic of the live allocations added up.
    pub live: AllocationStats,
    /// The `top_allocations` busiest, busiest first.
    pub top: Vec<TopAllocation>,
    /// With `traffic_by_user`: every user's traffic, live and ended allocations, in no order.
    pub by_user: Vec<(Arc<str>, AllocationStats)>,
}

impl Aggregates {
    /// Count one live allocation whose traffic is `stats` into the sums.
    #[inline]
    fn add(&mut self, a: &Allocation, stats: &AllocationStats, now: Instant) {
        self.allocations += 1;
        self.by_transport[transport_index(a.five_tuple().transport)] += 1;
        self.permissions += a.permissions().len(now);
        self.channels += a.channels().len(now);
        self.live.merge(stats);
    }
}

/// Which allocations [`Server::list`] lists.
#[derive(Debug, Clone)]
pub enum Select {
    All,
    User(String),
    Id(AllocationId),
}

impl Select {
    fn matches(&self, a: &Allocation) -> bool {
        match self {
            Select::All => true,
            Select::User(u) => **a.username() == **u,
            Select::Id(id) => a.id() == *id,
        }
    }
}

impl Server {
    /// Take a rate sample of every allocation and fill `out` with this worker's aggregates and
    /// top K. Call about once a second (the worker's tick). Allocates nothing once `out` and
    /// the engine have seen as many top entries and users before.
    pub fn publish(&mut self, now: Instant, out: &mut Aggregates) {
        let p = &mut self.publish;
        let slot = p.next_round(now);
        let round = p.round;
        let k = self.config.top_allocations;
        let by_user = self.config.traffic_by_user;
        p.heap.clear();
        p.users.clear();
        if by_user {
            for (u, s) in &p.closed_by_user {
                p.users.insert(u.clone(), *s);
            }
        }
        let mut agg = Aggregates {
            top: std::mem::take(&mut out.top),
            by_user: std::mem::take(&mut out.by_user),
            ..Aggregates::default()
        };
        for s in &mut self.slots {
            let Some(a) = s.alloc.as_mut() else {
                continue;
            };
            if !a.is_active() {
                continue;
            }
            let stats = a.traffic();
            let bytes = relayed_bytes(&stats);
            let rate = a.rate_mut();
            if rate.since == 0 {
                rate.since = round;
            }
            rate.bytes[slot] = bytes;
            agg.add(a, &stats, now);
            if by_user {
                match p.users.get_mut(a.username()) {
                    Some(t) => t.merge(&stats),
                    None => {
                        p.users.insert(a.username().clone(), stats);
                    }
                }
            }
            if k > 0 {
                let entry = Reverse((p.rate(a.rate()).to_bits(), bytes, a.id().index));
                if p.heap.len() < k {
                    p.heap.push(entry);
                } else if p.heap.peek().is_some_and(|least| entry < *least) {
                    // `Reverse`: smaller means busier.
                    p.heap.pop();
                    p.heap.push(entry);
                }
            }
        }
        agg.top.clear();
        for Reverse((rate, _, index)) in p.heap.drain() {
            if let Some(a) = self.slots[index as usize].alloc.as_ref() {
                agg.top.push(TopAllocation {
                    id: a.id(),
                    username: a.username().clone(),
                    relay: a.relay().addr(),
                    rate: f64::from_bits(rate),
                    stats: a.traffic(),
                });
            }
        }
        agg.top.sort_unstable_by(|a, b| {
            b.key()
                .partial_cmp(&a.key())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        agg.by_user.clear();
        agg.by_user
            .extend(p.users.iter().map(|(u, s)| (u.clone(), *s)));
        *out = agg;
    }

    /// The sums of [`Server::publish`] as they are now, without its top K and per-user
    /// traffic and without taking a rate sample: for `/api/stats`, which the admin API answers
    /// from the workers' present state, as it lists allocations.
    pub fn totals(&self, now: Instant) -> Aggregates {
        let mut agg = Aggregates::default();
        for a in self.allocations().filter(|a| a.is_active()) {
            agg.add(a, &a.traffic(), now);
        }
        agg
    }

    /// Every live allocation `select` picks, with its state, counters and rate: built only
    /// when asked (the admin API, `--redis-statsdb`), never by the 1 Hz publish.
    pub fn list(&self, now: Instant, select: &Select) -> Vec<AllocationInfo> {
        let unix = self.unix(now);
        self.allocations()
            .filter(|a| a.is_active() && select.matches(a))
            .map(|a| AllocationInfo {
                id: a.id(),
                username: a.username().clone(),
                five_tuple: a.five_tuple(),
                relay: a.relay().addr(),
                reported_relay: a.reported_relay(),
                second: a.second().copied(),
                started_unix: unix
                    .saturating_sub(now.saturating_duration_since(a.created()).as_secs()),
                expires_in: a.expires().saturating_duration_since(now).as_secs(),
                permissions: a.permissions().len(now),
                channels: a.channels().len(now),
                stats: a.traffic(),
                rate: self.publish.rate(a.rate()),
            })
            .collect()
    }

    /// How many live allocations each user holds (the fleet quota's count): one entry per
    /// user, the names shared with the allocations.
    pub fn count_by_user(&self) -> Vec<(Arc<str>, u32)> {
        let mut by_user: HashMap<&Arc<str>, u32> = HashMap::new();
        for a in self.allocations().filter(|a| a.is_active()) {
            *by_user.entry(a.username()).or_default() += 1;
        }
        by_user.into_iter().map(|(u, n)| (u.clone(), n)).collect()
    }

    /// Count an ended allocation into the duration histogram and, with `traffic_by_user`,
    /// into its user's traffic. Its duration runs to the worker's last one-second tick.
    pub(super) fn observe_ended(&mut self, a: &Allocation) {
        let secs = self
            .unix_base
            .0
            .saturating_duration_since(a.created())
            .as_secs();
        self.counters
            .durations
            .observe(transport_index(a.five_tuple().transport), secs);
        if self.config.traffic_by_user {
            match self.publish.closed_by_user.get_mut(a.username()) {
                Some(t) => t.merge(a.stats()),
                None => {
                    self.publish
                        .closed_by_user
                        .insert(a.username().clone(), *a.stats());
                }
            }
        }
    }
}
