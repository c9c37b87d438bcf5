//! The Prometheus text exposition of everything, from the workers' snapshots added up
//! ([`Totals`]): the engine's counters from the one [`COUNTERS`] table, gauges from
//! [`GAUGES`], then the families with labels of their own.

use std::fmt::Write as _;

use crate::engine::server::{COUNTERS, DURATION_BUCKETS, TRANSPORTS};
use crate::engine::Counters;
use crate::io::WorkerSnapshot;
use crate::signal::calls::{CallKind, CallStats, EndReason, CALL_DURATION_BUCKETS};

use super::text::{counter, escape, family, gauge, header, histogram, sample, traffic_family};
use super::{coturn_type, format_id, Monitor, Totals};

/// Families whose series differ by one label: name, help, type.
type Family = (&'static str, &'static str, &'static str);

const TOTAL_ALLOCATIONS: Family = (
    "turn_total_allocations",
    "Represents current allocations number",
    "gauge",
);
const ALLOCATIONS_REFUSED_BY_CODE_TOTAL: Family = (
    "vigi_turn_allocations_refused_by_code_total",
    "Allocate requests refused, by the error code answered (0: any other)",
    "counter",
);
const AUTH_FAILURES_BY_REASON_TOTAL: Family = (
    "vigi_turn_auth_failures_by_reason_total",
    "Requests whose credentials were refused, by reason",
    "counter",
);
const RELAY_PORTS_FREE: Family = (
    "vigi_turn_relay_ports_free",
    "Relay ports free, per relay address",
    "gauge",
);
const FASTPATH_PACKETS_TOTAL: Family = (
    "vigi_turn_fastpath_packets_total",
    "Packets the kernel fast path (XDP) relayed, per direction",
    "counter",
);
const CALLS_STARTED_TOTAL: Family = (
    "vigi_turn_calls_started_total",
    "Signaling calls placed (call_initiate that rang or found the callee busy)",
    "counter",
);
const CALLS_ANSWERED_TOTAL: Family = (
    "vigi_turn_calls_answered_total",
    "Signaling calls answered",
    "counter",
);

/// An unlabelled gauge read from the totals: name, help, value.
type Gauge = (&'static str, &'static str, fn(&Totals) -> f64);

/// The unlabelled gauges, in rendering order.
const GAUGES: &[Gauge] = &[
    ("vigi_turn_permissions", "Live permissions", |t| {
        t.permissions as f64
    }),
    ("vigi_turn_channels", "Live channel bindings", |t| {
        t.channels as f64
    }),
];

/// A per-worker series read from a worker's snapshot: name, help, type, value.
type PerWorker = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerSnapshot) -> u64,
);

/// The per-worker series (label `worker`), in rendering order.
const PER_WORKER: &[PerWorker] = &[
    (
        "vigi_turn_worker_allocations",
        "Live allocations per worker",
        "gauge",
        |s| s.live.allocations as u64,
    ),
    (
        "vigi_turn_worker_relayed_packets_total",
        "Packets received for relaying (client and peer side) per worker",
        "counter",
        |s| {
            let mut t = s.counters.closed_traffic;
            t.merge(&s.live.live);
            t.client_rcv.packets + t.peer_rcv.packets
        },
    ),
    (
        "vigi_turn_worker_draining",
        "1 when the worker refuses new allocations",
        "gauge",
        |s| u64::from(s.draining),
    ),
];

/// The whole exposition.
pub(super) fn render(m: &Monitor) -> String {
    let (snaps, t) = m.totals();
    let c = &t.counters;
    let mut out = String::with_capacity(8192);
    let o = &mut out;

    // ---- the engine's counters (coturn's stun_binding_* names first), from one table ----
    render_counters(o, c);

    family(
        o,
        TOTAL_ALLOCATIONS,
        "type",
        TRANSPORTS.map(coturn_type).into_iter().zip(t.by_transport),
    );

    render_durations(o, c);

    let realm = escape(&m.opts.realm);
    if m.opts.username_labels {
        let labelled: Vec<(String, _)> = t
            .by_user
            .iter()
            .map(|(u, s)| (format!("realm=\"{realm}\",user=\"{}\"", escape(u)), *s))
            .collect();
        traffic_family(o, "turn_traffic", "", &labelled);
    } else {
        traffic_family(
            o,
            "turn_traffic",
            "",
            &[(format!("realm=\"{realm}\""), t.traffic)],
        );
    }
    traffic_family(
        o,
        "turn_total_traffic",
        "total ",
        &[(String::new(), t.traffic)],
    );

    // ---- vigi-turn's own ----
    family(
        o,
        ALLOCATIONS_REFUSED_BY_CODE_TOTAL,
        "code",
        c.refused_by_code.iter(),
    );
    let r = &c.auth_failures_by_reason;
    family(
        o,
        AUTH_FAILURES_BY_REASON_TOTAL,
        "reason",
        [
            ("unknown_user", r.unknown_user),
            ("wrong_credentials", r.wrong_credentials),
            ("expired", r.expired),
            ("algorithm", r.algorithm),
        ],
    );
    counter(
        o,
        "vigi_turn_dropped_bytes_total",
        "Payload bytes of relayed packets dropped by policy, quota or bandwidth cap",
        t.traffic.dropped.bytes,
    );
    for (name, help, v) in GAUGES {
        gauge(o, name, help, v(&t));
    }
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

    family(o, RELAY_PORTS_FREE, "ip", m.ports_free());
    if let Some(fp) = &m.opts.fastpath {
        render_fastpath(o, &fp.lock().unwrap_or_else(|e| e.into_inner()));
    }

    // `--redis-userdb`: what the last read held and how old it is (alert before it passes
    // `--redis-max-stale` and its users are refused).
    if let Some(db) = m.shared.userdb.latest() {
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
            sample(o, name, "", v);
        }
    }

    for (name, help, kind, v) in PER_WORKER {
        header(o, name, help, kind);
        for (w, s) in snaps.iter().enumerate() {
            sample(o, name, &format!("worker=\"{w}\""), v(s));
        }
    }

    render_io(o, &snaps);
    render_process_fds(o);

    if m.opts.top_k > 0 {
        render_top(o, &t);
    }
    if let Some(calls) = m.calls() {
        render_calls(o, calls);
    }
    out
}

/// The `turn_allocations_duration{type}` histogram (vigi-turn's own, in coturn's naming style).
fn render_durations(o: &mut String, c: &Counters) {
    let name = "turn_allocations_duration";
    header(o, name, "Represents duration of allocations", "histogram");
    let d = &c.durations;
    for (i, t) in TRANSPORTS.iter().enumerate() {
        let labels = format!("type=\"{}\"", coturn_type(*t));
        histogram(o, name, &labels, DURATION_BUCKETS, &d.buckets[i], d.sum[i]);
    }
}

/// `vigi_turn_top_allocation_*`: the K allocations with the highest current rate (then the
/// most bytes), labelled by id, user and relay address. An allocation's series vanish when it
/// ends or drops out of the top K.
fn render_top(o: &mut String, t: &Totals) {
    let labels: Vec<String> = t
        .top
        .iter()
        .map(|(w, a)| {
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
    for ((_, a), l) in t.top.iter().zip(&labels) {
        let _ = writeln!(
            o,
            "vigi_turn_top_allocation_rate_bytes_per_second{{{l}}} {:.1}",
            a.rate
        );
    }
    header(
        o,
        "vigi_turn_top_allocation_bytes",
        "Bytes of the busiest allocations by flow (rcv/sent: client side, peer_rcv/peer_sent: peer side), since each allocation started",
        "counter",
    );
    for ((_, a), l) in t.top.iter().zip(&labels) {
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

/// The kernel fast path's own counts (its traffic is in the per-allocation stats already).
fn render_fastpath(o: &mut String, fp: &crate::io::fastpath::FastPath) {
    let t = fp.totals();
    family(
        o,
        FASTPATH_PACKETS_TOTAL,
        "direction",
        [
            ("client_to_peer", t.client_to_peer),
            ("peer_to_client", t.peer_to_client),
        ],
    );
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

/// The signaling companion's calls: started, answered and ended by type (and end reason), and
/// the talk time of answered calls.
fn render_calls(o: &mut String, c: &CallStats) {
    const KINDS: [CallKind; 2] = [CallKind::Voice, CallKind::Video];
    family(
        o,
        CALLS_STARTED_TOTAL,
        "type",
        KINDS.map(|k| (k.as_str(), c.started(k))),
    );
    family(
        o,
        CALLS_ANSWERED_TOTAL,
        "type",
        KINDS.map(|k| (k.as_str(), c.answered(k))),
    );
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
    let name = "vigi_turn_worker_batch_size";
    header(
        o,
        name,
        "Datagrams read per recvmmsg call, per worker",
        "histogram",
    );
    for (w, s) in snaps.iter().enumerate() {
        let l = format!("worker=\"{w}\"");
        histogram(
            o,
            name,
            &l,
            BATCH_BUCKETS,
            &s.io.batch_sizes,
            s.io.datagrams,
        );
    }
    let name = "vigi_turn_relay_latency_seconds";
    header(
        o,
        name,
        "Time from reading a batch of datagrams to handing the last one back to the kernel",
        "histogram",
    );
    let bounds = LATENCY_BUCKETS_US.map(|us| us as f64 / 1e6);
    for (w, s) in snaps.iter().enumerate() {
        let l = format!("worker=\"{w}\"");
        let sum = s.io.latency_sum_us as f64 / 1e6;
        histogram(o, name, &l, bounds, &s.io.latency, sum);
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
        sample(o, family, spec.labels, (spec.get)(c));
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::engine::server::TopAllocation;
    use crate::engine::stats::{AllocationStats, Flow};
    use crate::engine::{AllocationId, Shared};
    use crate::io::WorkerHandle;
    use crate::metrics::Options;

    fn top(index: u32, user: &str, rate: f64, rcv_bytes: u64) -> TopAllocation {
        TopAllocation {
            id: AllocationId {
                index,
                generation: 0,
            },
            username: user.into(),
            relay: ([127, 0, 0, 1], 50000 + index as u16).into(),
            rate,
            stats: AllocationStats {
                client_rcv: Flow {
                    packets: rcv_bytes / 100,
                    bytes: rcv_bytes,
                },
                ..AllocationStats::default()
            },
        }
    }

    fn monitor(top_k: usize, workers: usize) -> (Monitor, Vec<Arc<Mutex<WorkerSnapshot>>>) {
        let snaps: Vec<_> = (0..workers)
            .map(|_| Arc::new(Mutex::new(WorkerSnapshot::default())))
            .collect();
        let handles = snaps
            .iter()
            .enumerate()
            .map(|(index, s)| WorkerHandle {
                index,
                control: tokio::sync::mpsc::unbounded_channel().0,
                snapshot: s.clone(),
            })
            .collect();
        let opts = Options {
            top_k,
            realm: "r".into(),
            relay_ips: vec![[127, 0, 0, 1].into()],
            ..Options::default()
        };
        let shared = Arc::new(Shared::new(
            50000,
            50099,
            [0; 32],
            std::time::Instant::now(),
        ));
        (Monitor::new(handles, shared, opts), snaps)
    }

    #[test]
    fn renders_totals_and_the_busiest_of_all_workers() {
        let (m, snaps) = monitor(1, 2);
        {
            let mut s0 = snaps[0].lock().unwrap();
            s0.live.allocations = 1;
            s0.live.by_transport = [1, 0, 0, 0];
            s0.live.live.client_rcv.bytes = 50_000;
            s0.live.top = vec![top(0, "a", 0.0, 50_000)];
            s0.counters.closed_traffic.client_rcv.bytes = 3;
            s0.counters.durations.observe(0, 5);
            let mut s1 = snaps[1].lock().unwrap();
            s1.live.allocations = 1;
            s1.live.by_transport = [1, 0, 0, 0];
            s1.live.live.client_rcv.bytes = 3000;
            s1.live.top = vec![top(1, "b\"", 3000.0, 3000)];
        }
        let text = m.render();
        let top: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("vigi_turn_top_allocation_rate_bytes_per_second{"))
            .collect();
        assert_eq!(top, ["vigi_turn_top_allocation_rate_bytes_per_second{id=\"w1-1-0\",user=\"b\\\"\",relay=\"127.0.0.1:50001\"} 3000.0"]);
        assert!(text.contains("turn_total_traffic_rcvb 53003\n"), "{text}");
        assert!(text.contains("turn_traffic_rcvb{realm=\"r\"} 53003\n"));
        assert!(text.contains("turn_total_allocations{type=\"UDP\"} 2\n"));
        assert!(text.contains("vigi_turn_worker_allocations{worker=\"1\"} 1\n"));
        assert!(text.contains("vigi_turn_relay_ports_free{ip=\"127.0.0.1\"} 100\n"));
        assert!(text.contains("turn_allocations_duration_bucket{type=\"UDP\",le=\"10\"} 1\n"));
        assert!(text.contains("turn_allocations_duration_count{type=\"UDP\"} 1\n"));
        assert!(text.contains("turn_allocations_duration_sum{type=\"TCP\"} 0\n"));
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
        // "b" ends: its series go.
        {
            let mut s1 = snaps[1].lock().unwrap();
            s1.live = Default::default();
        }
        let text = m.render();
        assert!(!text.contains("w1-1-0"), "{text}");
        assert!(text.contains("vigi_turn_top_allocation_rate_bytes_per_second{id=\"w0-0-0\""));
    }

    #[test]
    fn username_labels_add_users_up_across_workers() {
        let (mut m, snaps) = monitor(0, 2);
        m.opts.username_labels = true;
        let stats = |b| AllocationStats {
            client_rcv: Flow {
                packets: 1,
                bytes: b,
            },
            ..AllocationStats::default()
        };
        snaps[0].lock().unwrap().live.by_user =
            vec![("u".into(), stats(1)), ("v".into(), stats(2))];
        snaps[1].lock().unwrap().live.by_user = vec![("u".into(), stats(4))];
        let text = m.render();
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("turn_traffic_rcvb{"))
            .collect();
        assert_eq!(
            rows,
            [
                "turn_traffic_rcvb{realm=\"r\",user=\"u\"} 5",
                "turn_traffic_rcvb{realm=\"r\",user=\"v\"} 2"
            ]
        );
        assert!(!text.contains("vigi_turn_top_allocation"));
    }
}
