//! What the metrics cost with 100,000 live allocations on 2 workers (50,000 each, top-K 10):
//!
//! - `scrape_100k_top10`: a Prometheus scrape, [`Monitor::render`] over the two workers'
//!   published snapshots (totals and each worker's top 10);
//! - `publish_50k`: one worker's 1 Hz publish ([`Server::publish`]: rate samples, sums, top K);
//! - `list_50k`: one worker's full listing ([`Server::list`], built only when the admin API or
//!   `--redis-statsdb` ask), the copy of every allocation the 1 Hz publish made before issue 17
//!   item 8.
//!
//! Measured on the project's machine (2 cores shared with three other builds, so criterion's wall
//! times move by ±30 % from run to run; the instruction counts are callgrind's, over 512 and 256
//! scrapes, and do not):
//!
//! | bench | time (criterion, several runs) | instructions |
//! |---|---|---|
//! | `scrape_100k_top10` (hand-written, kept) | 51–68 µs | 288.7 k per scrape |
//! | `scrape_100k_top10_prometheus_client` | 57–88 µs (57.7 µs in the run where ours took 58.2 µs) | 310.0 k per scrape |
//! | `publish_50k` | 3.6 ms, 0 heap allocations | |
//! | `list_50k` (what the old publish copied) | 16.6 ms (same run), 15 allocator calls (a vector grown from 4 to 65,536) | |
//!
//! (`publish_50k` took 5.5–8.7 ms against 23.8–25.3 ms for `list_50k` in busier runs, before
//! the rate's time spans were worked out once a publish rather than once an allocation.)
//!
//! Both scrapes read the same snapshots and write the same 180 series (17.5 kB) but for type
//! lines: `prometheus-client` appends `_total` to every counter's name, so coturn's counters
//! (`turn_traffic_rcvb`, `stun_binding_request`, ...) can only keep their names typed
//! `unknown`. The collector was measured in this file by commit 09c9d70 ("metrics: table-driven
//! rendering, benches/metrics.rs times a scrape ...", with `prometheus-client` as a
//! dev-dependency), and removed with the dependency by the next one.

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
    let m = Monitor::new(
        handles,
        shared,
        Options {
            top_k: TOP_K,
            realm: testing::REALM.into(),
            relay_ips: vec![testing::RELAY_IP],
            ..Options::default()
        },
    );
    let text = m.render();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("vigi_turn_top_allocation_rate_bytes_per_second{"))
            .count(),
        TOP_K
    );

    let mut g = c.benchmark_group("metrics");
    g.bench_function("scrape_100k_top10", |b| b.iter(|| black_box(m.render())));
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
