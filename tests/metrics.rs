//! The Prometheus endpoint against the real binary: coturn-named traffic counters move while a
//! `turnutils_uclient` session is live and end equal to the payload bytes the client reports;
//! top-K per-allocation series come and go with their allocations, and stay bounded with many
//! allocations.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

/// Scrape until `ready` holds (the workers publish once a second); at most 30 s.
fn scrape_when(port: u16, ready: impl Fn(&HashMap<String, f64>) -> bool) -> HashMap<String, f64> {
    let t0 = Instant::now();
    loop {
        let m = scrape(port);
        if ready(&m) {
            return m;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never ready: {m:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn value(m: &HashMap<String, f64>, key: &str) -> u64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in scrape: {m:?}")) as u64
}

fn count_prefix(m: &HashMap<String, f64>, prefix: &str) -> usize {
    m.keys().filter(|k| k.starts_with(prefix)).count()
}

/// A server with `--prometheus` on `prom_port`, top-K `top`, and [`RELAY_PORTS`] relay ports.
fn server(prom_port: u16, top: usize, extra: &[&str]) -> Server {
    server_in(prom_port, top, extra, free_range(RELAY_PORTS))
}

/// The same with an explicit relay range.
fn server_in(prom_port: u16, top: usize, extra: &[&str], (min, max): (u16, u16)) -> Server {
    let pp = prom_port.to_string();
    let top = top.to_string();
    let (min, max) = (min.to_string(), max.to_string());
    let mut args = vec![
        "-n",
        "-L",
        "127.0.0.1",
        "--allow-loopback-peers",
        "--realm",
        "metrics.local",
        "--min-port",
        &min,
        "--max-port",
        &max,
        "-m",
        "2",
        "--prometheus",
        "--prometheus-address",
        "127.0.0.1",
        "--prometheus-port",
        &pp,
        "--prometheus-top-allocations",
        &top,
    ];
    args.extend(extra);
    start_server(&args)
}

const RELAY_PORTS: u16 = 250;

const LT: [&str; 3] = ["--lt-cred-mech", "--user", "mu:mupw"];

/// The totals uclient prints last: `tot_send_bytes ~ N, tot_recv_bytes ~ N`.
fn uclient_bytes(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("start_mclient: tot_send_bytes ~ "))
        .unwrap_or_else(|| panic!("no byte totals in uclient output:\n{out}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    let n = nums.len();
    (nums[n - 2], nums[n - 1])
}

#[test]
fn health_and_metrics_paths() {
    let pp = free_port();
    let _srv = server(pp, 0, &LT);
    let (status, body) = http_get(pp, "/");
    assert_eq!(status, 200);
    assert_eq!(body, "ok");
    let m = scrape(pp);
    for k in [
        "stun_binding_request",
        "turn_total_allocations{type=\"UDP\"}",
        "turn_total_traffic_rcvb",
        "turn_traffic_peer_sentb{realm=\"metrics.local\"}",
        "vigi_turn_allocations_created_total",
        "vigi_turn_relay_ports_free{ip=\"127.0.0.1\"}",
        "vigi_turn_worker_allocations{worker=\"1\"}",
    ] {
        assert!(m.contains_key(k), "{k} missing: {m:?}");
    }
    assert_eq!(
        value(&m, "vigi_turn_relay_ports_free{ip=\"127.0.0.1\"}"),
        u64::from(RELAY_PORTS)
    );
    let (status, _) = http_get(pp, "/nope");
    assert_eq!(status, 404);
}

/// Every metric the Grafana dashboard queries is one the server exports.
#[test]
fn dashboard_queries_exported_metrics() {
    let pp = free_port();
    let _srv = server(pp, 1, &LT);
    let (_, body) = http_get(pp, "/metrics");
    let exported: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                // Only with --redis-userdb (not started here).
                if word == "vigi_turn_userdb_age_seconds" {
                    continue;
                }
                // A histogram's series carry `_bucket`; its TYPE line names the base.
                let word = word.strip_suffix("_bucket").unwrap_or(word);
                if word.starts_with("turn_")
                    || word.starts_with("vigi_turn_")
                    || word.starts_with("stun_")
                {
                    assert!(
                        exported.contains(&word),
                        "dashboard uses {word}, not exported"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 15);
}

/// config/prometheus/alerts.yml passes its `promtool test rules` cases, and every series it
/// alerts on is one the server exports (the user-database age only with --redis-userdb).
#[test]
fn alert_rules_pass_promtool_and_name_exported_metrics() {
    common::require_tool("promtool");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus");
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool: {out:?}");
    let pp = free_port();
    let _srv = server(pp, 0, &LT);
    let (_, body) = http_get(pp, "/metrics");
    let rules = std::fs::read_to_string(format!("{dir}/alerts.yml")).unwrap();
    let mut checked = 0;
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let ours = word.starts_with("vigi_turn_") || word.starts_with("process_");
            if ours && word != "vigi_turn_userdb_age_seconds" && !line.contains("description") {
                assert!(
                    body.contains(&format!("# TYPE {word} ")),
                    "alerts.yml uses {word}, not exported"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "{checked}");
}

#[test]
fn coturn_counters_are_live_and_exact() {
    require_tool("turnutils_uclient");
    let pp = free_port();
    let srv = server(pp, 2, &LT);
    let (_peer, peer_port) = start_peer();
    let (mut child, reader) = spawn_reading_stdout(
        Command::new("turnutils_uclient")
            .args(["-p", &srv.port.to_string(), "-e", "127.0.0.1"])
            .args(["-r", &peer_port.to_string(), "-u", "mu", "-w", "mupw"])
            // 400 messages, 20 ms apart: an 8 s session, so that the counters (published once
            // a second, scraped every 400 ms) are seen growing even when a loaded machine
            // delays a publication or a scrape by a second or two (it was 4 s).
            .args(["-m", "1", "-n", "400", "-l", "120", "127.0.0.1"]),
    );

    // While the session runs: the counters move, and the top-K series show the allocations.
    let t0 = Instant::now();
    let mut seen: Vec<u64> = Vec::new();
    let mut top_series = 0;
    let mut max_allocations = 0;
    let mut busy_ids: Vec<String> = Vec::new();
    while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(40) {
        let m = scrape(pp);
        if value(&m, "turn_total_allocations{type=\"UDP\"}") > 0 {
            seen.push(value(&m, "turn_total_traffic_rcvb"));
            top_series = top_series.max(count_prefix(
                &m,
                "vigi_turn_top_allocation_rate_bytes_per_second{",
            ));
            max_allocations =
                max_allocations.max(value(&m, "turn_total_allocations{type=\"UDP\"}"));
            for (k, v) in &m {
                if k.starts_with("vigi_turn_top_allocation_rate_bytes_per_second{") && *v > 0.0 {
                    let id = k.split('"').nth(1).unwrap().to_owned();
                    if !busy_ids.contains(&id) {
                        busy_ids.push(id);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    assert!(status.success(), "uclient failed:\n{out}");
    let (sent, received) = uclient_bytes(&out);
    assert!(sent > 0, "uclient sent nothing:\n{out}");
    let live: Vec<u64> = seen
        .iter()
        .copied()
        .filter(|&b| b > 0 && b < sent)
        .collect();
    assert!(
        live.len() >= 2 && live.windows(2).any(|w| w[1] > w[0]),
        "turn_total_traffic_rcvb grew while the session was live (samples {seen:?}, final {sent})"
    );
    assert!(
        (1..=2).contains(&top_series),
        "top-K series during the session: {top_series}"
    );

    // After it ends (and the workers publish again): exact totals, payload bytes.
    let m = scrape_when(pp, |m| {
        value(m, "turn_total_traffic_rcvb") == sent
            && value(m, "turn_total_allocations{type=\"UDP\"}") < max_allocations
            && value(m, "turn_allocations_duration_count{type=\"UDP\"}") >= 1
    });
    assert_eq!(
        value(&m, "turn_total_traffic_rcvb"),
        sent,
        "client -> server"
    );
    assert_eq!(
        value(&m, "turn_total_traffic_sentb"),
        received,
        "server -> client"
    );
    assert_eq!(
        value(&m, "turn_total_traffic_peer_sentb"),
        sent,
        "server -> peer"
    );
    assert_eq!(
        value(&m, "turn_total_traffic_peer_rcvb"),
        received,
        "peer -> server"
    );
    assert_eq!(
        value(&m, "turn_traffic_rcvb{realm=\"metrics.local\"}"),
        sent,
        "per realm"
    );
    assert_eq!(value(&m, "turn_total_traffic_rcvp"), sent / 120, "packets");
    // Every relayed datagram went through a recvmmsg batch: the batch histograms, summed over the
    // workers, hold at least the relayed packets (Bindings and requests add to them).
    let mut batches = 0;
    let mut datagrams = 0;
    let mut latency_count = 0;
    for w in 0..2 {
        let count = value(
            &m,
            &format!("vigi_turn_worker_batch_size_count{{worker=\"{w}\"}}"),
        );
        let inf = value(
            &m,
            &format!("vigi_turn_worker_batch_size_bucket{{worker=\"{w}\",le=\"+Inf\"}}"),
        );
        let le32 = value(
            &m,
            &format!("vigi_turn_worker_batch_size_bucket{{worker=\"{w}\",le=\"32\"}}"),
        );
        assert_eq!(
            (inf, le32),
            (count, count),
            "cumulative buckets end at the count"
        );
        batches += count;
        datagrams += value(
            &m,
            &format!("vigi_turn_worker_batch_size_sum{{worker=\"{w}\"}}"),
        );
        latency_count += value(
            &m,
            &format!("vigi_turn_relay_latency_seconds_count{{worker=\"{w}\"}}"),
        );
    }
    let relayed = value(&m, "turn_total_traffic_rcvp") + value(&m, "turn_total_traffic_peer_rcvp");
    assert!(
        datagrams >= relayed,
        "{datagrams} datagrams read, {relayed} relayed"
    );
    assert!(batches > 0 && batches <= datagrams);
    assert_eq!(latency_count, batches);
    // uclient deletes the allocations it relayed on (it leaves an idle extra one to expire).
    assert!(value(&m, "turn_total_allocations{type=\"UDP\"}") < max_allocations);
    assert!(value(&m, "vigi_turn_allocations_deleted_total") >= 1);
    assert!(!busy_ids.is_empty(), "a busy allocation had a rate");
    assert!(
        value(&m, "turn_allocations_duration_count{type=\"UDP\"}") >= 1,
        "ended allocations observed"
    );
    assert_eq!(
        value(
            &m,
            "turn_allocations_duration_bucket{type=\"UDP\",le=\"+Inf\"}"
        ),
        value(&m, "turn_allocations_duration_count{type=\"UDP\"}")
    );
    for id in &busy_ids {
        let quoted = format!("id=\"{id}\"");
        assert!(
            !m.keys().any(|k| k.contains(&quoted)),
            "top-K series of {id} vanish with it: {m:?}"
        );
    }
}

/// A no-auth Allocate from a fresh socket; the socket (kept open so the allocation lives).
fn allocate(server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &tid)
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    s.send_to(&req, server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).expect("allocate answer");
    let m = Message::decode(&buf[..n]).unwrap();
    assert_eq!(
        m.class(),
        Class::Success,
        "allocate: {:?}",
        m.get(attr::ERROR_CODE).and_then(attr::read_error_code)
    );
    s
}

#[test]
fn top_k_stays_bounded_with_many_allocations() {
    let pp = free_port();
    // 1,001 Allocates from one address at once: past the default --unauthorized-ratelimit.
    // The relay range (free_range) lies outside the kernel's ephemeral ports, which the 1,000
    // client sockets take: no relay bind can collide with them.
    let srv = server_in(
        pp,
        5,
        &[
            "--no-auth",
            "--prometheus-username-labels",
            "--unauthorized-ratelimit",
            "0",
        ],
        free_range(2000),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], srv.port));
    // The first client's socket stays open until the end: were it closed while its allocation
    // lives on, one of the 1,000 sockets below could be given its port again by the kernel, and
    // that client's Allocate would arrive on a live allocation's 5-tuple and rightly get a 437.
    let one = allocate(addr);
    let small = scrape_when(pp, |m| {
        count_prefix(m, "vigi_turn_top_allocation_rate_bytes_per_second{") == 1
    })
    .len();
    // 1,000 client sockets: make sure this process may hold them.
    raise_nofile(4096);
    let socks: Vec<UdpSocket> = (0..1000).map(|_| allocate(addr)).collect();
    let m = scrape_when(pp, |m| {
        value(m, "turn_total_allocations{type=\"UDP\"}") == 1001
    });
    assert_eq!(
        value(&m, "turn_total_allocations{type=\"UDP\"}"),
        1000 + 1,
        "every allocation counted, the first one's among them"
    );
    assert_eq!(
        count_prefix(&m, "vigi_turn_top_allocation_rate_bytes_per_second{"),
        5
    );
    // With username labels, one series per user (here the empty no-auth user), not per session.
    assert_eq!(count_prefix(&m, "turn_traffic_rcvb{"), 1);
    assert!(m.contains_key("turn_traffic_rcvb{realm=\"metrics.local\",user=\"\"}"));
    assert_eq!(count_prefix(&m, "vigi_turn_top_allocation_bytes{"), 5 * 4);
    // One allocation or 1,001: the same series but for top-K (1 vs 5 allocations, 5 series each).
    assert_eq!(m.len(), small + 4 * 5, "series count bounded");
    drop(socks);
    drop(one);
}

/// A real Prometheus (Debian's `prometheus`) scrapes vigi-turn every second with the shipped
/// alert rules loaded, while `turnutils_uclient` relays through it; its query API then shows the
/// target up and coturn's live traffic counters moving.
#[test]
fn a_real_prometheus_scrapes_live_traffic() {
    require_tool("prometheus");
    require_tool("turnutils_uclient");
    let pp = free_port();
    let srv = server(pp, 0, &LT);
    let dir = std::env::temp_dir().join(format!(
        "vigi-prometheus-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus/alerts.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n  - job_name: vigi-turn\n    static_configs:\n      \
             - targets: ['127.0.0.1:{pp}']\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .expect("start prometheus");
    let prom = Proc {
        child,
        name: "prometheus".into(),
    };
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", web)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "prometheus never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // One instant-query result's value, if any.
    let query = |q: &str| -> Option<f64> {
        let (status, body) = http_get(web, &format!("/api/v1/query?query={q}"));
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let wait = |q: &str, ok: &dyn Fn(f64) -> bool, what: &str| {
        let t0 = Instant::now();
        loop {
            if query(q).is_some_and(ok) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{what}: {:?}; log: {}",
                query(q),
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    // `up{job="vigi-turn"}`, URL-encoded.
    wait("up%7Bjob%3D%22vigi-turn%22%7D", &|v| v == 1.0, "target up");
    // Bounded load: 4 clients x 200 messages through a loopback peer.
    let (_peer, peer_port) = start_peer();
    let r = uclient(
        srv.port,
        peer_port,
        &[
            "-u", "mu", "-w", "mupw", "-m", "4", "-n", "200", "-l", "200",
        ],
    );
    assert!(r.received > 0, "{}", r.output);
    wait(
        "sum(turn_total_traffic_rcvb%7Bjob%3D%22vigi-turn%22%7D)",
        &|v| v >= 4.0 * 200.0 * 200.0 * 0.9,
        "client bytes in",
    );
    wait(
        "sum(rate(vigi_turn_worker_relayed_packets_total%5B10s%5D))",
        &|v| v > 0.0,
        "relay packet rate",
    );
    // The shipped rules are loaded and evaluated.
    let (_, rules) = http_get(web, "/api/v1/rules");
    assert!(
        rules.contains("VigiTurnDown") && rules.contains("\"health\":\"ok\""),
        "{rules}"
    );
    drop(prom);
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}
