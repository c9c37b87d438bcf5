//! Every metric name in one place, and the Prometheus text rendering.
//!
//! The workers count in plain integers they own ([`crate::engine::Counters`],
//! [`crate::engine::stats::AllocationStats`]) and publish a [`WorkerSnapshot`] about once a
//! second. This module never touches the data path: at scrape time it sums the snapshots and
//! writes the Prometheus text exposition format (version 0.0.4) directly.
//!
//! Why not the `metrics` + `metrics-exporter-prometheus` crates: they are built for code that
//! *records* events (`counter!(..).increment(1)`), which would put a registry lookup or an atomic
//! per packet on the workers, or a second copy of every number pushed into a registry once a
//! second from the snapshots. Our numbers already exist as totals; writing them out is a few
//! dozen lines, keeps one source of truth, and lets series vanish (top-K allocations) without
//! a registry that remembers them.
//!
//! Names follow coturn (`src/apps/relay/prom_server.c`): `stun_binding_{request,response,error}`,
//! `turn_total_allocations{type}`, `turn_traffic_*{realm}` and `turn_traffic_peer_*{realm}` (plus
//! `user` with `--prometheus-username-labels`), `turn_total_traffic_*` and
//! `turn_total_traffic_peer_*`. Unlike coturn, traffic counts are live (live allocations
//! included), not added at session end. Our own series are `vigi_turn_*`.
//!
//! Cardinality is bounded by configuration, never by the number of sessions: per-worker and
//! per-relay-IP series, and at most K per-allocation series (`--prometheus-top-allocations`).
//! Only the opt-in `--prometheus-username-labels` grows with users, as in coturn.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::engine::server::COUNTERS;
use crate::engine::stats::{AllocationStats, Flow};
use crate::engine::{AllocationId, AllocationInfo, Counters, Shared, Transport};
use crate::io::{WorkerHandle, WorkerSnapshot};
use crate::signal::calls::{CallKind, CallStats, EndReason, CALL_DURATION_BUCKETS};

/// An allocation's id outside its worker: `w<worker>-<slot>-<generation>`, e.g. `w0-12-3`.
pub fn format_id(worker: usize, id: AllocationId) -> String {
    format!("w{worker}-{}-{}", id.index, id.generation)
}

/// The inverse of [`format_id`].
pub fn parse_id(s: &str) -> Option<(usize, AllocationId)> {
    let mut parts = s.strip_prefix('w')?.split('-');
    let worker = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((worker, AllocationId { index, generation }))
}

/// coturn's `type` label of `turn_total_allocations` (its `socket_type_name`).
pub fn coturn_type(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS/TCP",
        Transport::Dtls => "DTLS",
    }
}

/// Bytes the server received on behalf of an allocation, from the client and from peers: each
/// relayed byte counted once. Its rate is the allocation's "current rate".
pub fn relayed_bytes(s: &AllocationStats) -> u64 {
    s.client_rcv.bytes + s.peer_rcv.bytes
}

/// What the rendering needs besides the snapshots.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Add a `user` label to `turn_traffic_*` (coturn's `--prometheus-username-labels`).
    pub username_labels: bool,
    /// Per-allocation series for this many of the busiest allocations (0 = none).
    pub top_k: usize,
    /// The realm label (one realm per server).
    pub realm: String,
    /// Relay addresses, for `vigi_turn_relay_ports_free`.
    pub relay_ips: Vec<IpAddr>,
    /// The kernel fast path (`--xdp-interface`), for `vigi_turn_fastpath_*`.
    pub fastpath: Option<Arc<Mutex<crate::io::fastpath::FastPath>>>,
}

/// Samples kept per allocation for its rate: about three seconds at one sample a second.
const RATE_SAMPLES: usize = 4;

/// The recent history of one live allocation, kept between samples for its rate.
#[derive(Debug)]
struct Track {
    samples: VecDeque<(Instant, u64)>,
    rate: f64,
    username: String,
    transport: Transport,
    started_unix: u64,
    last: AllocationStats,
    seen: u64,
}

/// `turn_allocations_duration` buckets (seconds). The name follows coturn's `turn_*` family, but
/// no coturn release exports it: it is vigi-turn's own.
const DURATION_BUCKETS: [u64; 4] = [10, 60, 600, 3600];

/// A fixed-bucket histogram of allocation durations (non-cumulative counts per bucket, the last
/// one being +Inf).
#[derive(Debug, Default, Clone, Copy)]
struct Durations {
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    sum: u64,
}

impl Durations {
    fn observe(&mut self, secs: u64) {
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
    }
}

const TRANSPORTS: [Transport; 4] = [
    Transport::Udp,
    Transport::Tcp,
    Transport::Tls,
    Transport::Dtls,
];

#[derive(Debug, Default)]
struct Tracker {
    by_alloc: HashMap<(usize, AllocationId), Track>,
    /// Traffic of ended allocations per user (only with username labels), as last sampled.
    closed_by_user: HashMap<String, AllocationStats>,
    /// Durations of ended allocations, by transport (in [`TRANSPORTS`] order).
    durations: [Durations; 4],
    round: u64,
}

/// The view of the running workers that metrics and the admin API share: the workers' handles,
/// the shared relay state, and the per-allocation rates sampled once a second.
pub struct Monitor {
    workers: Vec<WorkerHandle>,
    shared: Arc<Shared>,
    pub opts: Options,
    tracker: Mutex<Tracker>,
    calls: OnceLock<Arc<CallStats>>,
}

impl Monitor {
    pub fn new(workers: Vec<WorkerHandle>, shared: Arc<Shared>, opts: Options) -> Self {
        Monitor {
            workers,
            shared,
            opts,
            tracker: Mutex::new(Tracker::default()),
            calls: OnceLock::new(),
        }
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// The last snapshot of every worker, by worker index.
    pub fn snapshots(&self) -> Vec<WorkerSnapshot> {
        self.workers
            .iter()
            .map(|w| w.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Take a sample of every allocation's totals; call about once a second. Rates are bytes/s
    /// over the last few samples; allocations that ended are forgotten.
    ///
    /// Ended allocations are also observed into `turn_allocations_duration`; one that lived and
    /// ended between two samples (under a second) is not.
    pub fn sample(&self, now: Instant) {
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let snaps = self.snapshots();
        let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        t.round += 1;
        let round = t.round;
        for (w, snap) in snaps.iter().enumerate() {
            for a in &snap.allocations {
                let total = relayed_bytes(&a.stats);
                let track = t.by_alloc.entry((w, a.id)).or_insert_with(|| Track {
                    samples: VecDeque::with_capacity(RATE_SAMPLES + 1),
                    rate: 0.0,
                    username: a.username.to_string(),
                    transport: a.five_tuple.transport,
                    started_unix: a.started_unix,
                    last: AllocationStats::default(),
                    seen: round,
                });
                track.samples.push_back((now, total));
                while track.samples.len() > RATE_SAMPLES {
                    track.samples.pop_front();
                }
                track.rate = match (track.samples.front(), track.samples.back()) {
                    (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                        b1.saturating_sub(b0) as f64 / (t1 - t0).as_secs_f64()
                    }
                    _ => 0.0,
                };
                track.last = a.stats;
                track.seen = round;
            }
        }
        let ended: Vec<(usize, AllocationId)> = t
            .by_alloc
            .iter()
            .filter(|(_, tr)| tr.seen != round)
            .map(|(k, _)| *k)
            .collect();
        for k in ended {
            if let Some(tr) = t.by_alloc.remove(&k) {
                let i = TRANSPORTS
                    .iter()
                    .position(|&x| x == tr.transport)
                    .unwrap_or(0);
                t.durations[i].observe(unix_now.saturating_sub(tr.started_unix));
                if self.opts.username_labels {
                    t.closed_by_user
                        .entry(tr.username)
                        .or_default()
                        .merge(&tr.last);
                }
            }
        }
    }

    /// The current rate (bytes/s) of an allocation, 0 until it has been sampled twice.
    pub fn rate(&self, worker: usize, id: AllocationId) -> f64 {
        let t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        t.by_alloc.get(&(worker, id)).map_or(0.0, |tr| tr.rate)
    }

    /// Every worker's counters added up.
    pub fn total_counters(snaps: &[WorkerSnapshot]) -> Counters {
        let mut c = Counters::default();
        for s in snaps {
            c.merge(&s.counters);
        }
        c
    }

    /// Free relay ports per relay address.
    pub fn ports_free(&self) -> Vec<(IpAddr, u32)> {
        self.opts
            .relay_ips
            .iter()
            .map(|ip| (*ip, self.shared.ports.free(*ip)))
            .collect()
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let snaps = self.snapshots();
        let c = Self::total_counters(&snaps);
        let mut live = AllocationStats::default();
        let mut by_type: [(Transport, u64); 4] = [
            (Transport::Udp, 0),
            (Transport::Tcp, 0),
            (Transport::Tls, 0),
            (Transport::Dtls, 0),
        ];
        let (mut permissions, mut channels) = (0usize, 0usize);
        for s in &snaps {
            for a in &s.allocations {
                live.merge(&a.stats);
                permissions += a.permissions;
                channels += a.channels;
                if let Some(e) = by_type
                    .iter_mut()
                    .find(|(t, _)| *t == a.five_tuple.transport)
                {
                    e.1 += 1;
                }
            }
        }
        let mut total = c.closed_traffic;
        total.merge(&live);

        let mut out = String::with_capacity(8192);
        let o = &mut out;

        // ---- the engine's counters (coturn's stun_binding_* names first), from one table ----
        render_counters(o, &c);

        header(
            o,
            "turn_total_allocations",
            "Represents current allocations number",
            "gauge",
        );
        for (t, n) in by_type {
            let _ = writeln!(
                o,
                "turn_total_allocations{{type=\"{}\"}} {n}",
                coturn_type(t)
            );
        }

        self.render_durations(o);

        let realm = escape(&self.opts.realm);
        if self.opts.username_labels {
            let mut per_user: HashMap<&str, AllocationStats> = HashMap::new();
            for s in &snaps {
                for a in &s.allocations {
                    per_user.entry(&a.username).or_default().merge(&a.stats);
                }
            }
            let t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<(String, AllocationStats)> = t
                .closed_by_user
                .iter()
                .map(|(u, s)| (u.clone(), *s))
                .collect();
            drop(t);
            for (u, s) in per_user {
                match rows.iter_mut().find(|(name, _)| name == u) {
                    Some(r) => r.1.merge(&s),
                    None => rows.push((u.to_owned(), s)),
                }
            }
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            let labelled: Vec<(String, AllocationStats)> = rows
                .into_iter()
                .map(|(u, s)| (format!("realm=\"{realm}\",user=\"{}\"", escape(&u)), s))
                .collect();
            traffic_family(o, "turn_traffic", "", &labelled);
        } else {
            traffic_family(
                o,
                "turn_traffic",
                "",
                &[(format!("realm=\"{realm}\""), total)],
            );
        }
        traffic_family(o, "turn_total_traffic", "total ", &[(String::new(), total)]);

        // ---- vigi-turn's own ----
        header(
            o,
            "vigi_turn_allocations_refused_by_code_total",
            "Allocate requests refused, by the error code answered (0: any other)",
            "counter",
        );
        for (code, n) in c.refused_by_code.iter() {
            let _ = writeln!(
                o,
                "vigi_turn_allocations_refused_by_code_total{{code=\"{code}\"}} {n}"
            );
        }
        header(
            o,
            "vigi_turn_auth_failures_by_reason_total",
            "Requests whose credentials were refused, by reason",
            "counter",
        );
        let r = &c.auth_failures_by_reason;
        for (reason, n) in [
            ("unknown_user", r.unknown_user),
            ("wrong_credentials", r.wrong_credentials),
            ("expired", r.expired),
            ("algorithm", r.algorithm),
        ] {
            let _ = writeln!(
                o,
                "vigi_turn_auth_failures_by_reason_total{{reason=\"{reason}\"}} {n}"
            );
        }
        counter(
            o,
            "vigi_turn_dropped_bytes_total",
            "Payload bytes of relayed packets dropped by policy, quota or bandwidth cap",
            total.dropped.bytes,
        );
        gauge(
            o,
            "vigi_turn_permissions",
            "Live permissions",
            permissions as f64,
        );
        gauge(
            o,
            "vigi_turn_channels",
            "Live channel bindings",
            channels as f64,
        );
        #[cfg(feature = "dtls")]
        {
            gauge(
                o,
                "vigi_turn_dtls_sessions",
                "Established DTLS sessions",
                snaps.iter().map(|s| s.dtls_sessions).sum::<usize>() as f64,
            );
            gauge(
                o,
                "vigi_turn_dtls_handshakes",
                "DTLS handshakes in progress (past the cookie exchange: each holds a slot)",
                snaps.iter().map(|s| s.dtls_handshakes).sum::<usize>() as f64,
            );
        }

        header(
            o,
            "vigi_turn_relay_ports_free",
            "Relay ports free, per relay address",
            "gauge",
        );
        for (ip, n) in self.ports_free() {
            let _ = writeln!(o, "vigi_turn_relay_ports_free{{ip=\"{ip}\"}} {n}");
        }
        if let Some(fp) = &self.opts.fastpath {
            render_fastpath(o, &fp.lock().unwrap_or_else(|e| e.into_inner()));
        }

        // `--redis-userdb`: what the last read held and how old it is (alert before it passes
        // `--redis-max-stale` and its users are refused).
        if let Some(db) = self.shared.userdb.latest() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for (name, help, v) in [
                (
                    "vigi_turn_userdb_users",
                    "Users in the last user database read",
                    db.users() as u64,
                ),
                (
                    "vigi_turn_userdb_secrets",
                    "REST secrets in the last user database read",
                    db.secrets() as u64,
                ),
                (
                    "vigi_turn_userdb_age_seconds",
                    "Seconds since the last successful user database read",
                    now.saturating_sub(db.fetched_unix),
                ),
            ] {
                header(o, name, help, "gauge");
                let _ = writeln!(o, "{name} {v}");
            }
        }

        header(
            o,
            "vigi_turn_worker_allocations",
            "Live allocations per worker",
            "gauge",
        );
        for (w, s) in snaps.iter().enumerate() {
            let _ = writeln!(
                o,
                "vigi_turn_worker_allocations{{worker=\"{w}\"}} {}",
                s.allocations.len()
            );
        }
        header(
            o,
            "vigi_turn_worker_relayed_packets_total",
            "Packets received for relaying (client and peer side) per worker",
            "counter",
        );
        for (w, s) in snaps.iter().enumerate() {
            let mut t = s.counters.closed_traffic;
            for a in &s.allocations {
                t.merge(&a.stats);
            }
            let _ = writeln!(
                o,
                "vigi_turn_worker_relayed_packets_total{{worker=\"{w}\"}} {}",
                t.client_rcv.packets + t.peer_rcv.packets
            );
        }
        header(
            o,
            "vigi_turn_worker_draining",
            "1 when the worker refuses new allocations",
            "gauge",
        );
        for (w, s) in snaps.iter().enumerate() {
            let _ = writeln!(
                o,
                "vigi_turn_worker_draining{{worker=\"{w}\"}} {}",
                u8::from(s.draining)
            );
        }

        render_io(o, &snaps);
        render_process_fds(o);

        if self.opts.top_k > 0 {
            self.render_top(o, &snaps);
        }
        if let Some(calls) = self.calls.get() {
            render_calls(o, calls);
        }
        out
    }

    /// Export the signaling companion's call counts from now on (once; later calls are
    /// ignored).
    pub fn attach_calls(&self, calls: Arc<CallStats>) {
        let _ = self.calls.set(calls);
    }

    /// The `turn_allocations_duration{type}` histogram (vigi-turn's own, in coturn's naming style).
    fn render_durations(&self, o: &mut String) {
        let durations = self
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .durations;
        let name = "turn_allocations_duration";
        header(o, name, "Represents duration of allocations", "histogram");
        for (t, d) in TRANSPORTS.iter().zip(durations) {
            let ty = coturn_type(*t);
            let mut cumulative = 0;
            for (i, n) in d.buckets.iter().enumerate() {
                cumulative += n;
                let le = DURATION_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(o, "{name}_bucket{{type=\"{ty}\",le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(o, "{name}_sum{{type=\"{ty}\"}} {}", d.sum);
            let _ = writeln!(o, "{name}_count{{type=\"{ty}\"}} {cumulative}");
        }
    }

    /// `vigi_turn_top_allocation_*`: the K allocations with the highest current rate (then the
    /// most bytes), labelled by id, user and relay address. An allocation's series vanish when it
    /// ends or drops out of the top K.
    fn render_top(&self, o: &mut String, snaps: &[WorkerSnapshot]) {
        let mut all: Vec<(f64, usize, &AllocationInfo)> = {
            let t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            snaps
                .iter()
                .enumerate()
                .flat_map(|(w, s)| s.allocations.iter().map(move |a| (w, a)))
                .map(|(w, a)| {
                    let rate = t.by_alloc.get(&(w, a.id)).map_or(0.0, |tr| tr.rate);
                    (rate, w, a)
                })
                .collect()
        };
        let k = self.opts.top_k.min(all.len());
        let key = |x: &(f64, usize, &AllocationInfo)| (x.0, relayed_bytes(&x.2.stats));
        if k < all.len() {
            all.select_nth_unstable_by(k, |a, b| key(b).partial_cmp(&key(a)).unwrap());
            all.truncate(k);
        }
        all.sort_by(|a, b| key(b).partial_cmp(&key(a)).unwrap());
        let labels: Vec<String> = all
            .iter()
            .map(|(_, w, a)| {
                format!(
                    "id=\"{}\",user=\"{}\",relay=\"{}\"",
                    format_id(*w, a.id),
                    escape(&a.username),
                    a.relay
                )
            })
            .collect();
        header(
            o,
            "vigi_turn_top_allocation_rate_bytes_per_second",
            "Current rate (bytes/s received from client and peers) of the busiest allocations",
            "gauge",
        );
        for ((rate, _, _), l) in all.iter().zip(&labels) {
            let _ = writeln!(
                o,
                "vigi_turn_top_allocation_rate_bytes_per_second{{{l}}} {rate:.1}"
            );
        }
        header(
            o,
            "vigi_turn_top_allocation_bytes",
            "Bytes of the busiest allocations by flow (rcv/sent: client side, peer_rcv/peer_sent: peer side), since each allocation started",
            "counter",
        );
        for ((_, _, a), l) in all.iter().zip(&labels) {
            for (flow, f) in [
                ("rcv", a.stats.client_rcv),
                ("sent", a.stats.client_sent),
                ("peer_rcv", a.stats.peer_rcv),
                ("peer_sent", a.stats.peer_sent),
            ] {
                let _ = writeln!(
                    o,
                    "vigi_turn_top_allocation_bytes{{{l},flow=\"{flow}\"}} {}",
                    f.bytes
                );
            }
        }
    }
}

/// The signaling companion's calls: started, answered and ended by type (and end reason), and
/// the talk time of answered calls.
/// The kernel fast path's own counts (its traffic is in the per-allocation stats already).
fn render_fastpath(o: &mut String, fp: &crate::io::fastpath::FastPath) {
    let t = fp.totals();
    header(
        o,
        "vigi_turn_fastpath_packets_total",
        "Packets the kernel fast path (XDP) relayed, per direction",
        "counter",
    );
    for (direction, n) in [
        ("client_to_peer", t.client_to_peer),
        ("peer_to_client", t.peer_to_client),
    ] {
        let _ = writeln!(
            o,
            "vigi_turn_fastpath_packets_total{{direction=\"{direction}\"}} {n}"
        );
    }
    header(
        o,
        "vigi_turn_fastpath_passed_total",
        "Packets of mirrored channels the fast path passed to user space (route, MTU, padding, expiry, family)",
        "counter",
    );
    let _ = writeln!(o, "vigi_turn_fastpath_passed_total {}", t.passed_matched);
    gauge(
        o,
        "vigi_turn_fastpath_allocations",
        "Allocations mirrored into the fast path's maps",
        fp.mirrored_allocations() as f64,
    );
    header(
        o,
        "vigi_turn_fastpath_map_full_total",
        "Allocations or channels left on the user path because a fast-path map was full",
        "counter",
    );
    let _ = writeln!(o, "vigi_turn_fastpath_map_full_total {}", fp.full_count());
}

fn render_calls(o: &mut String, c: &CallStats) {
    const KINDS: [CallKind; 2] = [CallKind::Voice, CallKind::Video];
    header(
        o,
        "vigi_turn_calls_started_total",
        "Signaling calls placed (call_initiate that rang or found the callee busy)",
        "counter",
    );
    for k in KINDS {
        let _ = writeln!(
            o,
            "vigi_turn_calls_started_total{{type=\"{}\"}} {}",
            k.as_str(),
            c.started(k)
        );
    }
    header(
        o,
        "vigi_turn_calls_answered_total",
        "Signaling calls answered",
        "counter",
    );
    for k in KINDS {
        let _ = writeln!(
            o,
            "vigi_turn_calls_answered_total{{type=\"{}\"}} {}",
            k.as_str(),
            c.answered(k)
        );
    }
    header(
        o,
        "vigi_turn_calls_ended_total",
        "Signaling calls ended, by reason (answered, rejected, busy, missed, failed)",
        "counter",
    );
    for k in KINDS {
        for r in EndReason::ALL {
            let _ = writeln!(
                o,
                "vigi_turn_calls_ended_total{{type=\"{}\",reason=\"{}\"}} {}",
                k.as_str(),
                r.as_str(),
                c.ended(k, r)
            );
        }
    }
    let name = "vigi_turn_call_duration_seconds";
    header(
        o,
        name,
        "Talk time of answered signaling calls",
        "histogram",
    );
    let (counts, sum) = c.durations();
    for (le, n) in CALL_DURATION_BUCKETS.iter().zip(&counts) {
        let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let total = counts.last().copied().unwrap_or(0);
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(o, "{name}_sum {sum}");
    let _ = writeln!(o, "{name}_count {total}");
    if let Some((up, outages)) = c.redis() {
        header(
            o,
            "vigi_turn_signaling_redis_up",
            "Whether the signaling Redis (--signaling-redis) answers: 0 = this node signals alone",
            "gauge",
        );
        let _ = writeln!(o, "vigi_turn_signaling_redis_up {}", u8::from(up));
        header(
            o,
            "vigi_turn_signaling_redis_outages_total",
            "Times the signaling Redis became unreachable",
            "counter",
        );
        let _ = writeln!(o, "vigi_turn_signaling_redis_outages_total {outages}");
    }
}

/// Per-worker batch sizes and relay latency, as Prometheus histograms (cumulative buckets).
fn render_io(o: &mut String, snaps: &[WorkerSnapshot]) {
    use crate::io::{BATCH_BUCKETS, LATENCY_BUCKETS_US};
    header(
        o,
        "vigi_turn_worker_batch_size",
        "Datagrams read per recvmmsg call, per worker",
        "histogram",
    );
    for (w, s) in snaps.iter().enumerate() {
        let mut acc = 0;
        for (i, le) in BATCH_BUCKETS.iter().enumerate() {
            acc += s.io.batch_sizes[i];
            let _ = writeln!(
                o,
                "vigi_turn_worker_batch_size_bucket{{worker=\"{w}\",le=\"{le}\"}} {acc}"
            );
        }
        let _ = writeln!(
            o,
            "vigi_turn_worker_batch_size_bucket{{worker=\"{w}\",le=\"+Inf\"}} {}",
            s.io.batches
        );
        let _ = writeln!(
            o,
            "vigi_turn_worker_batch_size_sum{{worker=\"{w}\"}} {}",
            s.io.datagrams
        );
        let _ = writeln!(
            o,
            "vigi_turn_worker_batch_size_count{{worker=\"{w}\"}} {}",
            s.io.batches
        );
    }
    header(
        o,
        "vigi_turn_relay_latency_seconds",
        "Time from reading a batch of datagrams to handing the last one back to the kernel",
        "histogram",
    );
    for (w, s) in snaps.iter().enumerate() {
        let mut acc = 0;
        for (i, le) in LATENCY_BUCKETS_US.iter().enumerate() {
            acc += s.io.latency[i];
            let _ = writeln!(
                o,
                "vigi_turn_relay_latency_seconds_bucket{{worker=\"{w}\",le=\"{}\"}} {acc}",
                *le as f64 / 1e6
            );
        }
        let _ = writeln!(
            o,
            "vigi_turn_relay_latency_seconds_bucket{{worker=\"{w}\",le=\"+Inf\"}} {}",
            s.io.batches
        );
        let _ = writeln!(
            o,
            "vigi_turn_relay_latency_seconds_sum{{worker=\"{w}\"}} {}",
            s.io.latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "vigi_turn_relay_latency_seconds_count{{worker=\"{w}\"}} {}",
            s.io.batches
        );
    }
}

/// Every counter of [`COUNTERS`]: one HELP/TYPE header per family, then its series.
fn render_counters(o: &mut String, c: &Counters) {
    let mut family = "";
    for spec in COUNTERS {
        if spec.prometheus != family {
            family = spec.prometheus;
            header(o, family, spec.help, "counter");
        }
        let v = (spec.get)(c);
        if spec.labels.is_empty() {
            let _ = writeln!(o, "{family} {v}");
        } else {
            let _ = writeln!(o, "{family}{{{}}} {v}", spec.labels);
        }
    }
}

/// The Prometheus process collector's `process_open_fds` and `process_max_fds`: each
/// allocation holds a relay socket, so running out of descriptors refuses allocations (the
/// "descriptors near the limit" alert). Read from /proc at scrape time; absent where /proc is.
fn render_process_fds(o: &mut String) {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            o,
            "process_open_fds",
            "Number of open file descriptors",
            dir.count() as f64,
        );
    }
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<f64>().ok()
        });
    if let Some(max) = max {
        gauge(
            o,
            "process_max_fds",
            "Maximum number of open file descriptors",
            max,
        );
    }
}

fn header(o: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    header(o, name, help, "counter");
    let _ = writeln!(o, "{name} {v}");
}

fn gauge(o: &mut String, name: &str, help: &str, v: f64) {
    header(o, name, help, "gauge");
    let _ = writeln!(o, "{name} {v}");
}

/// `{prefix}_{rcvp,rcvb,sentp,sentb}` and `{prefix}_peer_*`, one sample per label set.
fn traffic_family(o: &mut String, prefix: &str, what: &str, rows: &[(String, AllocationStats)]) {
    type Pick = fn(&AllocationStats) -> Flow;
    let sides: [(&str, &str, Pick, Pick); 2] = [
        ("", "", |s| s.client_rcv, |s| s.client_sent),
        ("_peer", "peer ", |s| s.peer_rcv, |s| s.peer_sent),
    ];
    for (side, side_help, rcv, sent) in sides {
        for (suffix, help, pick) in [
            ("rcvp", "received packets", rcv as Pick),
            ("rcvb", "received bytes", rcv),
            ("sentp", "sent packets", sent),
            ("sentb", "sent bytes", sent),
        ] {
            let name = format!("{prefix}{side}_{suffix}");
            header(
                o,
                &name,
                &format!("Represents {what}sessions {side_help}{help} (live)"),
                "counter",
            );
            for (labels, s) in rows {
                let f = pick(s);
                let v = if suffix.ends_with('p') {
                    f.packets
                } else {
                    f.bytes
                };
                if labels.is_empty() {
                    let _ = writeln!(o, "{name} {v}");
                } else {
                    let _ = writeln!(o, "{name}{{{labels}}} {v}");
                }
            }
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// How often [`Monitor::sample`] should run.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FiveTuple;
    use crate::io::WorkerSnapshot;

    fn info(index: u32, user: &str, rcv_bytes: u64) -> AllocationInfo {
        let stats = AllocationStats {
            client_rcv: Flow {
                packets: rcv_bytes / 100,
                bytes: rcv_bytes,
            },
            ..AllocationStats::default()
        };
        AllocationInfo {
            id: AllocationId {
                index,
                generation: 0,
            },
            username: user.into(),
            five_tuple: FiveTuple {
                transport: Transport::Udp,
                client: ([127, 0, 0, 1], 5000 + index as u16).into(),
                server: ([127, 0, 0, 1], 3478).into(),
            },
            relay: ([127, 0, 0, 1], 50000 + index as u16).into(),
            reported_relay: ([127, 0, 0, 1], 50000 + index as u16).into(),
            second: None,
            started_unix: 0,
            expires_in: 600,
            permissions: 1,
            channels: 1,
            stats,
        }
    }

    fn monitor(top_k: usize) -> (Monitor, Arc<Mutex<WorkerSnapshot>>) {
        let snapshot = Arc::new(Mutex::new(WorkerSnapshot::default()));
        let handle = WorkerHandle {
            index: 0,
            control: tokio::sync::mpsc::unbounded_channel().0,
            snapshot: snapshot.clone(),
        };
        let opts = Options {
            top_k,
            realm: "r".into(),
            relay_ips: vec![[127, 0, 0, 1].into()],
            ..Options::default()
        };
        let m = Monitor::new(
            vec![handle],
            Arc::new(Shared::new(
                50000,
                50099,
                [0; 32],
                std::time::Instant::now(),
            )),
            opts,
        );
        (m, snapshot)
    }

    #[test]
    fn top_k_follows_the_current_rate_and_forgets_ended_allocations() {
        let (m, snap) = monitor(1);
        let t0 = Instant::now();
        snap.lock().unwrap().allocations = vec![info(0, "a", 50_000), info(1, "b", 0)];
        m.sample(t0);
        // One second later "b" relayed 3000 bytes, "a" nothing: "b" is the busiest now.
        snap.lock().unwrap().allocations = vec![info(0, "a", 50_000), info(1, "b", 3000)];
        m.sample(t0 + Duration::from_secs(1));
        let b = AllocationId {
            index: 1,
            generation: 0,
        };
        assert_eq!(m.rate(0, b), 3000.0);
        let text = m.render();
        let top: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("vigi_turn_top_allocation_rate_bytes_per_second{"))
            .collect();
        assert_eq!(top, ["vigi_turn_top_allocation_rate_bytes_per_second{id=\"w0-1-0\",user=\"b\",relay=\"127.0.0.1:50001\"} 3000.0"]);
        assert!(text.contains("turn_total_traffic_rcvb 53000\n"));
        assert!(text.contains("vigi_turn_relay_ports_free{ip=\"127.0.0.1\"} 100\n"));
        assert!(
            !text.contains("vigi_turn_userdb_users"),
            "no user database, no series"
        );
        let mut db = crate::engine::auth::UserDb::new(0);
        db.add_user("u", "r", &crate::engine::auth::UserSecret::Key([1; 16]));
        m.shared.userdb.store(db, 60);
        let text = m.render();
        assert!(text.contains("vigi_turn_userdb_users 1\n"), "{text}");
        assert!(text.contains("vigi_turn_userdb_secrets 0\n"));
        assert!(text.contains("vigi_turn_userdb_age_seconds "));
        // "b" ends: its series go, and its lifetime is observed.
        snap.lock().unwrap().allocations = vec![info(0, "a", 50_000)];
        m.sample(t0 + Duration::from_secs(2));
        let text = m.render();
        assert!(!text.contains("w0-1-0"), "{text}");
        assert!(text.contains("vigi_turn_top_allocation_rate_bytes_per_second{id=\"w0-0-0\""));
        assert!(text.contains("turn_allocations_duration_count{type=\"UDP\"} 1\n"));
    }

    #[test]
    fn ids_round_trip() {
        let id = AllocationId {
            index: 12,
            generation: 3,
        };
        assert_eq!(format_id(0, id), "w0-12-3");
        assert_eq!(parse_id("w0-12-3"), Some((0, id)));
        assert_eq!(parse_id("w0-12"), None);
        assert_eq!(parse_id("w0-12-3-4"), None);
        assert_eq!(parse_id("0-12-3"), None);
    }

    #[test]
    fn durations_fall_in_coturn_buckets() {
        let mut d = Durations::default();
        for s in [0, 10, 11, 600, 3601, 99999] {
            d.observe(s);
        }
        assert_eq!(d.buckets, [2, 1, 1, 0, 2]);
        assert_eq!(d.sum, 10 + 11 + 600 + 3601 + 99999);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
