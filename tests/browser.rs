//! The demo call page in a real browser: headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm, tests/browser/call.mjs) opens the page the signaling companion
//! serves at `/` twice, logs in as alice and bob, and places three video calls with
//! `iceTransportPolicy: 'relay'`, each forced through one TURN URI of the real vigi-turn binary:
//! `turn:…?transport=udp`, `turn:…?transport=tcp`, `turns:localhost:…?transport=tcp` and (with IPv6
//! on loopback) `turn:[::1]:…?transport=udp`. The
//! script asserts from `getStats()` on both sides that the selected pair is relay ↔ relay with
//! the expected relay protocol and that bytesReceived grows, and from vigi-turn's admin API that
//! the call's allocations exist on that transport and relay bytes; this file then checks
//! vigi-turn's Prometheus counters. Chromium, node or npm missing is a failure, not a skip.
//!
//! How the browser is made to relay through loopback:
//! - Chromium's WebRTC ignores loopback network interfaces, so on a host whose only interface is
//!   `lo` it gathers no candidate at all, not even a relay one (seen in a network namespace with
//!   only `lo`). `--allow-loopback-in-peer-connection` (a Chromium switch for tests) lets it use
//!   `lo`; on hosts with another interface Chromium reaches 127.0.0.1 from that address without
//!   the switch. With it the test needs neither a network namespace nor root.
//! - Both relayed addresses are 127.0.0.1 (`-E 127.0.0.1`), so each allocation's peer is a
//!   loopback address: `--allow-loopback-peers`.
//! - Chromium validates the certificate of a `turns:` server (a self-signed one is refused with
//!   a CertificateUnknown alert and ICE error 701). The certificate is made here for `localhost`
//!   (the URI's host, in the SAN), and Chromium trusts exactly its key through
//!   `--ignore-certificate-errors-spki-list=<base64 SHA-256 of the SubjectPublicKeyInfo>`, which
//!   covers no other certificate (unlike `--ignore-certificate-errors`).

mod common;

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use sha2::{Digest, Sha256};

const SIGNAL_SECRET: &str = "browser-signal-s3cret";
const REST_SECRET: &str = "browser-rest-s3cret";
const ADMIN_TOKEN: &str = "browser-admin-t0ken";

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// Chromium, node and npm must be there: CI installs them (.ci/run).
fn require_browser_tools() {
    let chromium = chromium();
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is not installed: run `apt-get install chromium` (see .ci/run), or set CHROMIUM"
    );
    for tool in ["node", "npm"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{tool} is not installed: run `apt-get install nodejs npm` (see .ci/run)"
        );
    }
}

/// `npm ci` in tests/browser unless playwright-core is already there.
fn npm_ci(dir: &Path) {
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return;
    }
    let out = run_with_timeout(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "npm ci failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "vigi-browser-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` written into `dir`: (cert path, key path, the
/// base64 SHA-256 of its SubjectPublicKeyInfo, as `--ignore-certificate-errors-spki-list` wants).
fn make_cert(dir: &Path) -> (String, String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let spki = base64::engine::general_purpose::STANDARD
        .encode(Sha256::digest(ck.key_pair.public_key_der()));
    (cert.display().to_string(), key.display().to_string(), spki)
}

fn wait_tcp(port: u16, what: &str) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} not listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path`: the body of a 200.
fn get_ok(port: u16, path: &str) -> String {
    let (status, body) = http_get(port, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// The value of one sample line (`name{labels} value`) of a Prometheus text page.
fn metric(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

#[test]
fn chromium_calls_through_vigi_turn_over_udp_tcp_and_tls() {
    require_browser_tools();
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    npm_ci(&node_dir);

    let tmp = TempDir::new();
    let (cert, key, spki) = make_cert(&tmp.0);
    let port = free_port();
    let tls_port = free_port();
    let sig_port = free_port();
    let admin_port = free_port();
    let prom_port = free_port();
    let udp_uri = format!("turn:127.0.0.1:{port}?transport=udp");
    let tcp_uri = format!("turn:127.0.0.1:{port}?transport=tcp");
    let tls_uri = format!("turns:localhost:{tls_port}?transport=tcp");
    // An IPv6 TURN URI (the client reaches the server over ::1; relays stay IPv4), when the
    // machine has IPv6 on loopback.
    let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
    let v6_uri = format!("turn:[::1]:{port}?transport=udp");
    let s = |v: u16| v.to_string();
    let (port_s, tls_s, prom_s) = (s(port), s(tls_port), s(prom_port));
    let sig_listen = format!("127.0.0.1:{sig_port}");
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let args = [
        "-n",
        "-p",
        &port_s,
        "-L",
        "127.0.0.1",
        "-L",
        if v6 { "::1" } else { "127.0.0.1" },
        "-E",
        "127.0.0.1",
        "--allow-loopback-peers",
        // The default relay range (49152-65535): a port another process holds is skipped (the
        // bind fails and another is picked), so no range is reserved here.
        "--realm",
        "browser.test",
        "--use-auth-secret",
        "--static-auth-secret",
        REST_SECRET,
        "--tls-listening-port",
        &tls_s,
        "--cert",
        &cert,
        "--pkey",
        &key,
        "--signaling-listen",
        &sig_listen,
        "--signaling-secret",
        SIGNAL_SECRET,
        "--turn-uri",
        &udp_uri,
        "--turn-uri",
        &tcp_uri,
        "--turn-uri",
        &tls_uri,
        "--admin-listen",
        &admin_listen,
        "--admin-token",
        ADMIN_TOKEN,
        "--prometheus",
        "--prometheus-address",
        "127.0.0.1",
        "--prometheus-port",
        &prom_s,
    ];
    let _srv = start_server_on(port, &args);
    wait_tcp(sig_port, "signaling");
    wait_tcp(tls_port, "TLS listener");

    // The page the browser gets is ours, with its own Socket.io client.
    let page = get_ok(sig_port, "/");
    assert!(page.contains("vigi-turn call demo") && page.contains("sio.js"));

    let mut calls = serde_json::json!([
        { "name": "udp", "uri": udp_uri, "relayProtocol": "udp" },
        { "name": "tcp", "uri": tcp_uri, "relayProtocol": "tcp" },
        { "name": "tls", "uri": tls_uri, "relayProtocol": "tls" },
    ]);
    if v6 {
        calls
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "name": "ipv6", "uri": v6_uri, "relayProtocol": "udp" }));
    } else {
        println!("no IPv6 on loopback: the turn:[::1] call is left out");
    }
    let browser_args = serde_json::json!([
        "--allow-loopback-in-peer-connection",
        format!("--ignore-certificate-errors-spki-list={spki}"),
    ]);
    // Output to a file: a failing run prints the page logs, more than a pipe holds.
    let log_path = tmp.0.join("call.log");
    let log = File::create(&log_path).unwrap();
    let child = Command::new("node")
        .arg("call.mjs")
        .current_dir(&node_dir)
        .env("DEMO_URL", format!("http://127.0.0.1:{sig_port}/"))
        .env("SIGNAL_SECRET", SIGNAL_SECRET)
        .env("CALLS", calls.to_string())
        .env("ADMIN_URL", format!("http://127.0.0.1:{admin_port}"))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("CHROMIUM", chromium())
        .env("BROWSER_ARGS", browser_args.to_string())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start node");
    // Killed on drop, should anything below panic.
    let mut node = Proc {
        child,
        name: "node call.mjs".into(),
    };
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = node.child.try_wait().expect("wait") {
            break Some(st);
        }
        if t0.elapsed() > Duration::from_secs(180) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(node);
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("{text}");
    let status = status.unwrap_or_else(|| panic!("call.mjs timed out after 180 s:\n{text}"));
    assert!(status.success(), "call.mjs failed ({status}):\n{text}");
    for name in ["udp", "tcp", "tls"] {
        assert!(
            text.contains(&format!("ok - {name}: relay<->relay over {name}")),
            "no {name} call in:\n{text}"
        );
    }
    // Over an IPv6 TURN URI (turn:[::1]): relayed here, over UDP. (A 300 ALTERNATE-SERVER call
    // is not here: libwebrtc refuses a redirect to a loopback address.)
    if v6 {
        assert!(
            text.contains("ok - ipv6: relay<->relay over udp"),
            "no IPv6 call in:\n{text}"
        );
    }

    // vigi-turn's own account of the three calls: every allocation ended, at least two per
    // transport, and the video relayed (tens of kilobytes each way per call at least).
    let t0 = Instant::now();
    let metrics = loop {
        let m = get_ok(prom_port, "/metrics");
        let ended = ["UDP", "TCP", "TLS/TCP"].iter().all(|t| {
            metric(
                &m,
                &format!("turn_allocations_duration_count{{type=\"{t}\"}}"),
            ) >= 2
        });
        if ended || t0.elapsed() > Duration::from_secs(30) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    for t in ["UDP", "TCP", "TLS/TCP"] {
        let n = metric(
            &metrics,
            &format!("turn_allocations_duration_count{{type=\"{t}\"}}"),
        );
        assert!(n >= 2, "{n} {t} allocations ended, expected at least 2");
    }
    let peer_sent = metric(&metrics, "turn_total_traffic_peer_sentb");
    let client_sent = metric(&metrics, "turn_total_traffic_sentb");
    println!("vigi-turn relayed {peer_sent} bytes to peers and {client_sent} bytes to clients");
    assert!(
        peer_sent > 3 * 2 * 100_000 && client_sent > 3 * 2 * 100_000,
        "too little relayed: {peer_sent} to peers, {client_sent} to clients"
    );
}
