//! What the metrics cost with 100,000 live allocations on 2 workers (50,000 each, top-K 10):
//!
//! - `scrape_100k_top10`: a Prometheus scrape, [`Monitor::render`] over the two workers'
//!   published snapshots (totals and each worker's top 10);
//! - `publish_50k`: one worker's 1 Hz publish ([`Server::publish`]: rate samples, sums, top K);
//! - `list_50k`: one worker's full listing ([`Server::list`], built only when the admin API,
//!   `--redis-statsdb` or the fleet quota ask), the copy of every allocation the 1 Hz publish
//!   made before issue 17 item 8.
//!
//! Measured on the project's machine (2 cores shared with three other builds, so criterion's wall
//! times move by ±30 % from run to run; the instruction counts are callgrind's, over 512 and 256
//! scrapes, and do not):
//!
//! | bench | time (criterion, several runs) | instructions |
//! |---|---|---|
//! | `scrape_100k_top10` (hand-written, kept) | 51–68 µs | 288.7 k per scrape |
//! | `scrape_100k_top10_prometheus_client` | 57–88 µs (57.7 µs in the run where ours took 58.2 µs) | 310.0 k per scrape |
//! | `publish_50k` | 5.5–8.7 ms, 0 heap allocations | |
//! | `list_50k` (what the old publish copied) | 23.8–25.3 ms | |
//!
//! Both scrapes read the same snapshots and write the same 180 series (17.5 kB) but for type
//! lines: `prometheus-client` appends `_total` to every counter's name, so coturn's counters
//! (`turn_traffic_rcvb`, `stun_binding_request`, ...) can only keep their names typed
//! `unknown`. The collector lived in this file until the commit after the one that added it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use vigi_turn::engine::server::{Aggregates, Select};
use vigi_turn::engine::testing::{self, Client};
use vigi_turn::engine::Server;
use vigi_turn::io::{WorkerHandle, WorkerSnapshot};
use vigi_turn::metrics::{Monitor, Options};

const PER_WORKER: u16 = 50_000;
const TOP_K: usize = 10;

/// An engine with `n` live allocations, one in ten of them with some traffic.
fn worker(n: u16, now: Instant, seed: u64) -> Server {
    let mut cfg = testing::config(false);
    cfg.top_allocations = TOP_K;
    let (mut s, _) = testing::engine_on_ports(cfg, 10_000, 10_000 + n + 100, now, seed);
    let peer = testing::peer(5, 9000);
    let payload = [0xAB_u8; 100];
    for i in 0..n {
        let mut c = Client::new(testing::udp(1000 + i));
        c.allocate(&mut s, now);
        if i % 10 == 0 {
            c.permit(&mut s, now, peer);
            for _ in 0..(i % 7) {
                let send = testing::send_indication(peer, &payload);
                let _ = s.handle_client_input(now, c.five, &send);
            }
        }
    }
    s
}

fn benches(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut engines: Vec<Server> = (0..2).map(|w| worker(PER_WORKER, t0, w)).collect();
    let mut handles = Vec::new();
    for (index, s) in engines.iter_mut().enumerate() {
        let mut snap = WorkerSnapshot::default();
        s.publish(t0, &mut snap.live);
        s.publish(t0 + Duration::from_secs(1), &mut snap.live);
        snap.counters = *s.counters();
        assert_eq!(snap.live.allocations, usize::from(PER_WORKER));
        handles.push(WorkerHandle {
            index,
            control: tokio::sync::mpsc::unbounded_channel().0,
            snapshot: Arc::new(Mutex::new(snap)),
        });
    }
    let shared = Arc::new(vigi_turn::engine::Shared::new(10_000, 60_100, [7; 32], t0));
    let m = Arc::new(Monitor::new(
        handles,
        shared,
        Options {
            top_k: TOP_K,
            realm: testing::REALM.into(),
            relay_ips: vec![testing::RELAY_IP],
            ..Options::default()
        },
    ));
    let text = m.render();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("vigi_turn_top_allocation_rate_bytes_per_second{"))
            .count(),
        TOP_K
    );

    let mut g = c.benchmark_group("metrics");
    g.bench_function("scrape_100k_top10", |b| b.iter(|| black_box(m.render())));
    let registry = pc::registry(m.clone());
    let other = pc::render(&registry);
    assert_eq!(
        other
            .lines()
            .filter(|l| l.starts_with("vigi_turn_top_allocation_rate_bytes_per_second{"))
            .count(),
        TOP_K
    );
    println!(
        "hand-written: {} series, {} bytes; prometheus-client: {} series, {} bytes",
        text.lines().filter(|l| !l.starts_with('#')).count(),
        text.len(),
        other.lines().filter(|l| !l.starts_with('#')).count(),
        other.len()
    );
    g.bench_function("scrape_100k_top10_prometheus_client", |b| {
        b.iter(|| black_box(pc::render(&registry)))
    });
    let s = &mut engines[0];
    let mut out = Aggregates::default();
    let mut now = t0 + Duration::from_secs(2);
    g.bench_function("publish_50k", |b| {
        b.iter(|| {
            now += Duration::from_secs(1);
            s.publish(now, &mut out);
            black_box(out.allocations)
        })
    });
    g.sample_size(20);
    g.bench_function("list_50k", |b| {
        b.iter(|| black_box(s.list(now, &Select::All)))
    });
    g.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);

/// The same exposition through `prometheus-client` (0.26): a collector that reads the workers'
/// snapshots at scrape time, as issue 17 item 4 proposed, for the comparison. Its text differs
/// where the crate does not let it match: the crate appends `_total` to every counter's name
/// (coturn's `turn_traffic_rcvb` and `stun_binding_request` would become `..._total`), so
/// counters without the suffix are written as `unknown` (untyped) here.
mod pc {
    use std::fmt;
    use std::sync::Arc;

    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::metrics::MetricType;
    use prometheus_client::registry::Registry;

    use vigi_turn::engine::server::{COUNTERS, DURATION_BUCKETS, TRANSPORTS};
    use vigi_turn::engine::stats::{AllocationStats, Flow};
    use vigi_turn::io::{BATCH_BUCKETS, LATENCY_BUCKETS_US};
    use vigi_turn::metrics::{coturn_type, format_id, Monitor};

    pub struct Collector(pub Arc<Monitor>);

    impl fmt::Debug for Collector {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Collector")
        }
    }

    /// A counter family: names ending in `_total` lose it (the crate adds it back), the others
    /// are written untyped.
    fn counter_type(name: &str) -> (&str, MetricType) {
        match name.strip_suffix("_total") {
            Some(base) => (base, MetricType::Counter),
            None => (name, MetricType::Unknown),
        }
    }

    fn cumulative(bounds: impl IntoIterator<Item = f64>, counts: &[u64]) -> (Vec<(f64, u64)>, u64) {
        let mut acc = 0;
        let mut out: Vec<(f64, u64)> = bounds
            .into_iter()
            .zip(counts)
            .map(|(b, n)| {
                acc += n;
                (b, *n)
            })
            .collect();
        let rest: u64 = counts[out.len()..].iter().sum();
        out.push((f64::INFINITY, rest));
        (out, acc + rest)
    }

    fn value(
        mt: MetricType,
        v: u64,
        enc: prometheus_client::encoding::MetricEncoder,
    ) -> fmt::Result {
        match mt {
            MetricType::Counter => ConstCounter::new(v).encode(enc),
            _ => ConstGauge::new(v as i64).encode(enc),
        }
    }

    impl prometheus_client::collector::Collector for Collector {
        fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
            let m = &self.0;
            let (snaps, t) = m.totals();
            let c = &t.counters;
            let mut family = "";
            let mut i = 0;
            while i < COUNTERS.len() {
                family = COUNTERS[i].prometheus;
                let (name, mt) = counter_type(family);
                let mut f = e.encode_descriptor(name, COUNTERS[i].help, None, mt)?;
                if COUNTERS[i].labels.is_empty() {
                    value(mt, (COUNTERS[i].get)(c), f)?;
                    i += 1;
                    continue;
                }
                while i < COUNTERS.len() && COUNTERS[i].prometheus == family {
                    let spec = &COUNTERS[i];
                    let (k, val) = spec.labels.split_once('=').unwrap();
                    let labels = [(k, val.trim_matches('"'))];
                    value(mt, (spec.get)(c), f.encode_family(&labels)?)?;
                    i += 1;
                }
            }
            let _ = family;
            let mut f = e.encode_descriptor(
                "turn_total_allocations",
                "Represents current allocations number",
                None,
                MetricType::Gauge,
            )?;
            for (tr, n) in TRANSPORTS.iter().zip(t.by_transport) {
                ConstGauge::new(n as i64)
                    .encode(f.encode_family(&[("type", coturn_type(*tr))])?)?;
            }
            let mut f = e.encode_descriptor(
                "turn_allocations_duration",
                "Represents duration of allocations",
                None,
                MetricType::Histogram,
            )?;
            for (i, tr) in TRANSPORTS.iter().enumerate() {
                let (b, n) =
                    cumulative(DURATION_BUCKETS.map(|b| b as f64), &c.durations.buckets[i]);
                f.encode_family(&[("type", coturn_type(*tr))])?
                    .encode_histogram::<NoLabelSet>(c.durations.sum[i] as f64, n, &b, None)?;
            }
            type Pick = fn(&AllocationStats) -> Flow;
            let realm = m.opts.realm.as_str();
            for (prefix, labelled) in [("turn_traffic", true), ("turn_total_traffic", false)] {
                let sides: [(&str, Pick, Pick); 2] = [
                    ("", |s| s.client_rcv, |s| s.client_sent),
                    ("_peer", |s| s.peer_rcv, |s| s.peer_sent),
                ];
                for (side, rcv, sent) in sides {
                    for (suffix, pick) in [
                        ("rcvp", rcv),
                        ("rcvb", rcv),
                        ("sentp", sent),
                        ("sentb", sent),
                    ] {
                        let name = format!("{prefix}{side}_{suffix}");
                        let mut f = e.encode_descriptor(
                            &name,
                            "Represents sessions (live)",
                            None,
                            MetricType::Unknown,
                        )?;
                        let fl = pick(&t.traffic);
                        let v = if suffix.ends_with('p') {
                            fl.packets
                        } else {
                            fl.bytes
                        };
                        if labelled {
                            ConstGauge::new(v as i64)
                                .encode(f.encode_family(&[("realm", realm)])?)?;
                        } else {
                            ConstGauge::new(v as i64).encode(f)?;
                        }
                    }
                }
            }
            let mut f = e.encode_descriptor(
                "vigi_turn_allocations_refused_by_code",
                "Allocate requests refused, by the error code answered (0: any other)",
                None,
                MetricType::Counter,
            )?;
            for (code, n) in c.refused_by_code.iter() {
                ConstCounter::new(n).encode(f.encode_family(&[("code", code.to_string())])?)?;
            }
            let mut f = e.encode_descriptor(
                "vigi_turn_auth_failures_by_reason",
                "Requests whose credentials were refused, by reason",
                None,
                MetricType::Counter,
            )?;
            let r = &c.auth_failures_by_reason;
            for (reason, n) in [
                ("unknown_user", r.unknown_user),
                ("wrong_credentials", r.wrong_credentials),
                ("expired", r.expired),
                ("algorithm", r.algorithm),
            ] {
                ConstCounter::new(n).encode(f.encode_family(&[("reason", reason)])?)?;
            }
            ConstCounter::new(t.traffic.dropped.bytes).encode(e.encode_descriptor(
                "vigi_turn_dropped_bytes",
                "Payload bytes of relayed packets dropped by policy, quota or bandwidth cap",
                None,
                MetricType::Counter,
            )?)?;
            for (name, help, v) in [
                ("vigi_turn_permissions", "Live permissions", t.permissions),
                ("vigi_turn_channels", "Live channel bindings", t.channels),
            ] {
                ConstGauge::new(v as i64).encode(e.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Gauge,
                )?)?;
            }
            let mut f = e.encode_descriptor(
                "vigi_turn_relay_ports_free",
                "Relay ports free, per relay address",
                None,
                MetricType::Gauge,
            )?;
            for (ip, n) in m.ports_free() {
                ConstGauge::new(i64::from(n))
                    .encode(f.encode_family(&[("ip", ip.to_string())])?)?;
            }
            for (name, help, mt, get) in [
                (
                    "vigi_turn_worker_allocations",
                    "Live allocations per worker",
                    MetricType::Gauge,
                    (|s| s.live.allocations as u64) as fn(&vigi_turn::io::WorkerSnapshot) -> u64,
                ),
                (
                    "vigi_turn_worker_relayed_packets",
                    "Packets received for relaying per worker",
                    MetricType::Counter,
                    |s| {
                        let mut t = s.counters.closed_traffic;
                        t.merge(&s.live.live);
                        t.client_rcv.packets + t.peer_rcv.packets
                    },
                ),
                (
                    "vigi_turn_worker_draining",
                    "1 when the worker refuses new allocations",
                    MetricType::Gauge,
                    |s| u64::from(s.draining),
                ),
            ] {
                let mut f = e.encode_descriptor(name, help, None, mt)?;
                for (w, s) in snaps.iter().enumerate() {
                    value(mt, get(s), f.encode_family(&[("worker", w.to_string())])?)?;
                }
            }
            let mut f = e.encode_descriptor(
                "vigi_turn_worker_batch_size",
                "Datagrams read per recvmmsg call, per worker",
                None,
                MetricType::Histogram,
            )?;
            for (w, s) in snaps.iter().enumerate() {
                let (b, n) = cumulative(BATCH_BUCKETS.map(|b| b as f64), &s.io.batch_sizes);
                f.encode_family(&[("worker", w.to_string())])?
                    .encode_histogram::<NoLabelSet>(s.io.datagrams as f64, n, &b, None)?;
            }
            let mut f = e.encode_descriptor(
                "vigi_turn_relay_latency_seconds",
                "Time from reading a batch of datagrams to handing the last one back to the kernel",
                None,
                MetricType::Histogram,
            )?;
            for (w, s) in snaps.iter().enumerate() {
                let (b, n) = cumulative(LATENCY_BUCKETS_US.map(|b| b as f64 / 1e6), &s.io.latency);
                f.encode_family(&[("worker", w.to_string())])?
                    .encode_histogram::<NoLabelSet>(
                        s.io.latency_sum_us as f64 / 1e6,
                        n,
                        &b,
                        None,
                    )?;
            }
            if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
                ConstGauge::new(dir.count() as i64).encode(e.encode_descriptor(
                    "process_open_fds",
                    "Number of open file descriptors",
                    None,
                    MetricType::Gauge,
                )?)?;
            }
            let max = std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|text| {
                    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
                    line.split_whitespace().nth(3)?.parse::<i64>().ok()
                });
            if let Some(max) = max {
                ConstGauge::new(max).encode(e.encode_descriptor(
                    "process_max_fds",
                    "Maximum number of open file descriptors",
                    None,
                    MetricType::Gauge,
                )?)?;
            }
            if m.opts.top_k > 0 {
                let labels: Vec<[(&str, String); 3]> = t
                    .top
                    .iter()
                    .map(|(w, a)| {
                        [
                            ("id", format_id(*w, a.id)),
                            ("user", a.username.to_string()),
                            ("relay", a.relay.to_string()),
                        ]
                    })
                    .collect();
                let mut f = e.encode_descriptor(
                    "vigi_turn_top_allocation_rate_bytes_per_second",
                    "Current rate (bytes/s received from client and peers) of the busiest allocations",
                    None,
                    MetricType::Gauge,
                )?;
                for ((_, a), l) in t.top.iter().zip(&labels) {
                    ConstGauge::new(a.rate).encode(f.encode_family(l)?)?;
                }
                let mut f = e.encode_descriptor(
                    "vigi_turn_top_allocation_bytes",
                    "Bytes of the busiest allocations by flow, since each allocation started",
                    None,
                    MetricType::Counter,
                )?;
                for ((_, a), l) in t.top.iter().zip(&labels) {
                    for (flow, fl) in [
                        ("rcv", a.stats.client_rcv),
                        ("sent", a.stats.client_sent),
                        ("peer_rcv", a.stats.peer_rcv),
                        ("peer_sent", a.stats.peer_sent),
                    ] {
                        let set = (l.clone(), [("flow", flow)]);
                        ConstCounter::new(fl.bytes).encode(f.encode_family(&set)?)?;
                    }
                }
            }
            Ok(())
        }
    }

    /// A registry holding only the collector.
    pub fn registry(m: Arc<Monitor>) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(Collector(m)));
        r
    }

    /// One scrape.
    pub fn render(r: &Registry) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::prometheus_text::encode(&mut out, r).unwrap();
        out
    }
}
