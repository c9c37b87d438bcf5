//! RFC 6062 TCP relays against the real binary, driven by coturn's `turnutils_uclient -T`: two
//! clients each allocate a TCP relay over a TCP (or TLS) control connection, one Connects to the
//! other's relayed address, the other is told with a ConnectionAttempt, both bind data
//! connections with ConnectionBind and then exchange raw bytes. Every message must come back.
//! `-T` implies client-to-client (`-y`), so no outside peer is needed. Several workers (`-m 2`),
//! so data connections reach workers other than the one holding the allocation. The bytes piped
//! are counted: live per allocation in the admin API, and in coturn's Prometheus totals.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn tcp_server(extra: &[&str]) -> Server {
    ServerArgs::loopback()
        .realm("bench.local")
        .args(&["--user", "bench:benchpw"])
        .relay_ports(20)
        .threads(2)
        .args(extra)
        .start()
}

const LT: [&str; 4] = ["-u", "bench", "-w", "benchpw"];

#[track_caller]
fn assert_all_echoed(r: &UclientResult, expect: u64) {
    assert_eq!(r.sent, expect, "sent; output:\n{}", r.output);
    assert_eq!(r.received, expect, "all echoed; output:\n{}", r.output);
    assert!(
        r.lost_line.contains("Total lost packets 0 "),
        "no loss; output:\n{}",
        r.output
    );
}

#[test]
fn uclient_tcp_relay_over_tcp() {
    let srv = tcp_server(&[]);
    // -T ignores the peer options (-e/-r) the helper passes.
    let r = uclient(
        srv.port,
        free_port(),
        &[&LT[..], &["-T", "-m", "2", "-n", "30", "-l", "100"]].concat(),
    );
    assert_all_echoed(&r, 60);
    // Bigger messages, more clients.
    let r = uclient(
        srv.port,
        free_port(),
        &[&LT[..], &["-T", "-m", "4", "-n", "20", "-l", "1000"]].concat(),
    );
    assert_all_echoed(&r, 80);
}

#[test]
fn uclient_tcp_relay_over_tls() {
    let dir = std::env::temp_dir().join(format!(
        "vigi-tcprelay-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let tls_port = free_port();
    let tls_s = tls_port.to_string();
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let srv = tcp_server(&[
        "--tls-listening-port",
        &tls_s,
        "--cert",
        &cert_s,
        "--pkey",
        &key_s,
    ]);
    // -S: TLS control and data connections.
    let r = uclient(
        tls_port,
        free_port(),
        &[&LT[..], &["-T", "-S", "-m", "2", "-n", "30", "-l", "100"]].concat(),
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
    assert_all_echoed(&r, 60);
}

#[test]
fn no_tcp_relay_answers_442() {
    let srv = tcp_server(&["--no-tcp-relay"]);
    let r = uclient(
        srv.port,
        free_port(),
        &[&LT[..], &["-T", "-m", "1", "-n", "5", "-l", "100"]].concat(),
    );
    assert_eq!(r.received, 0, "{}", r.output);
    assert!(r.output.contains("442"), "expected 442:\n{}", r.output);
    // UDP relays still work beside it.
    let (_peer, pport) = start_peer();
    let r = uclient(
        srv.port,
        pport,
        &[&LT[..], &["-m", "1", "-n", "10", "-l", "100"]].concat(),
    );
    // Two sessions (RTP and RTCP) of 10 messages.
    assert_all_echoed(&r, 20);
}

#[test]
fn no_udp_relay_answers_442_and_leaves_tcp_relays() {
    let srv = tcp_server(&["--no-udp-relay"]);
    let (_peer, pport) = start_peer();
    let r = uclient(
        srv.port,
        pport,
        &[&LT[..], &["-m", "1", "-n", "5", "-l", "100"]].concat(),
    );
    assert_eq!(r.received, 0, "{}", r.output);
    assert!(r.output.contains("442"), "expected 442:\n{}", r.output);
    let r = uclient(
        srv.port,
        free_port(),
        &[&LT[..], &["-T", "-m", "1", "-n", "10", "-l", "100"]].concat(),
    );
    assert_all_echoed(&r, 20);
}

/// The totals uclient prints last: `tot_send_bytes ~ N, tot_recv_bytes ~ N`.
fn uclient_bytes(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_bytes ~ "))
        .unwrap_or_else(|| panic!("no byte totals in uclient output:\n{out}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    let n = nums.len();
    assert!(n >= 2, "{line}");
    (nums[n - 2], nums[n - 1])
}

const TOKEN: &str = "tcp-relay-admin-token-0123456789";

#[test]
fn tcp_relay_bytes_are_counted_live_per_allocation_and_in_the_totals() {
    require_tool("turnutils_uclient");
    let (prom, admin) = (free_port(), free_port());
    let (prom_s, admin_s) = (prom.to_string(), format!("127.0.0.1:{admin}"));
    // Named by pid and a random number: a free_port() number is unique only in this process,
    // and another test process sharing the file would add its sessions to the sums.
    let log = std::env::temp_dir().join(format!(
        "vigi-tcprelay-{}-{:x}.log",
        std::process::id(),
        rand::random::<u64>()
    ));
    let log_s = log.to_str().unwrap().to_owned();
    let srv = tcp_server(&[
        "--log-file",
        &log_s,
        "--prometheus",
        "--prometheus-address",
        "127.0.0.1",
        "--prometheus-port",
        &prom_s,
        "--admin-listen",
        &admin_s,
        "--admin-token",
        TOKEN,
    ]);
    let (mut child, reader) = spawn_reading_stdout(
        Command::new("turnutils_uclient")
            .args(["-p", &srv.port.to_string()])
            .args(LT)
            .args(["-T", "-m", "2", "-n", "300", "-l", "1000", "127.0.0.1"]),
    );
    // While it runs: a TCP allocation shows bytes both ways, client and peer side.
    let t0 = Instant::now();
    let mut live = false;
    while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(50) {
        let (status, body) = http(admin, "GET", "/api/allocations", &bearer(Some(TOKEN)));
        assert_eq!(status, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        live |= list["allocations"].as_array().unwrap().iter().any(|a| {
            let t = &a["traffic"];
            ["rcv", "sent", "peer_rcv", "peer_sent"].iter().all(|f| {
                t[f]["bytes"].as_u64().unwrap_or(0) > 0 && t[f]["packets"].as_u64().unwrap_or(0) > 0
            })
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    assert!(status.success(), "uclient failed:\n{out}");
    let (sent, received) = uclient_bytes(&out);
    assert!(sent >= 300 * 2 * 1000, "uclient sent {sent}:\n{out}");
    assert!(
        live,
        "no allocation showed TCP-relay bytes while uclient ran:\n{out}"
    );
    // Once the allocations have ended and the workers published: every byte uclient sent came
    // in from a client and went out to a peer (the other client's relay), and every byte it got
    // went the other way.
    let total = |m: &HashMap<String, f64>, f: &str| {
        m.get(&format!("turn_total_traffic_{f}"))
            .map_or(0, |v| *v as u64)
    };
    let t0 = Instant::now();
    let m = loop {
        let m = scrape(prom);
        if total(&m, "rcvb") >= sent && total(&m, "peer_rcvb") >= received {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "totals never reached uclient's {sent}/{received}: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Exactly: payload bytes, each counted once per side.
    for (f, want) in [
        ("rcvb", sent),
        ("peer_sentb", sent),
        ("peer_rcvb", received),
        ("sentb", received),
    ] {
        assert_eq!(total(&m, f), want, "turn_total_traffic_{f}: {m:?}");
    }
    assert!(
        total(&m, "rcvp") > 0 && total(&m, "peer_sentp") > 0,
        "{m:?}"
    );
    // The admin API's totals agree.
    let (_, body) = http(admin, "GET", "/api/stats", &bearer(Some(TOKEN)));
    let st: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        st["traffic"]["rcv"]["bytes"].as_u64(),
        Some(total(&m, "rcvb")),
        "{body}"
    );
    assert_eq!(
        st["traffic"]["peer_rcv"]["bytes"].as_u64(),
        Some(total(&m, "peer_rcvb")),
        "{body}"
    );
    // And the session-end lines: coturn's `usage` (client side) and `peer usage` lines.
    let sum = |text: &str, kind: &str, field: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.split(kind).nth(1))
            .filter_map(|r| r.split(field).nth(1))
            .filter_map(|r| {
                r.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let t0 = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // Every session-end line written (at most 30 s; it was 5 s, and only the peer side's
        // sent bytes were waited for): the assertions below then compare exactly.
        let done = sum(&text, ": usage: ", ", rb=") >= sent
            && sum(&text, ": usage: ", ", sb=") >= received
            && sum(&text, ": peer usage: ", ", sb=") >= sent
            && sum(&text, ": peer usage: ", ", rb=") >= received;
        if done || t0.elapsed() > Duration::from_secs(30) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = std::fs::remove_file(&log);
    assert_eq!(sum(&text, ": usage: ", ", rb="), sent, "{text}");
    assert_eq!(sum(&text, ": usage: ", ", sb="), received, "{text}");
    assert_eq!(sum(&text, ": peer usage: ", ", sb="), sent, "{text}");
    assert_eq!(sum(&text, ": peer usage: ", ", rb="), received, "{text}");
}
