//! RFC 6062 TCP relays against the real binary, driven by coturn's `turnutils_uclient -T`: two
//! clients each allocate a TCP relay over a TCP (or TLS) control connection, one Connects to the
//! other's relayed address, the other is told with a ConnectionAttempt, both bind data
//! connections with ConnectionBind and then exchange raw bytes. Every message must come back.
//! `-T` implies client-to-client (`-y`), so no outside peer is needed. Several workers (`-m 2`),
//! so data connections reach workers other than the one holding the allocation.

mod common;

use common::*;

fn tcp_server(extra: &[&str]) -> Server {
    let (min, max) = free_range(20);
    let (min, max) = (min.to_string(), max.to_string());
    let mut args = vec![
        "-n",
        "-L",
        "127.0.0.1",
        "-E",
        "127.0.0.1",
        "--allow-loopback-peers",
        "--realm",
        "bench.local",
        "--user",
        "bench:benchpw",
        "--min-port",
        &min,
        "--max-port",
        &max,
        "-m",
        "2",
    ];
    args.extend_from_slice(extra);
    start_server(&args)
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
