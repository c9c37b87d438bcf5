//! TURN over TLS (`turns:`) against the real binary: coturn's `turnutils_uclient -t -S` relaying
//! to `turnutils_peer`, a rustls client (TLS 1.3 and 1.2, ALPN `stun.turn`, Binding answered), a
//! certificate swapped on disk + SIGUSR2 served to the next handshake while a live connection
//! keeps working, start-up errors naming the flag, and silent handshakes cut off.
//! Certificates are made at test time with rcgen.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "vigi-tls-{}-{:x}",
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

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM, certificate DER).
fn make_cert() -> (String, String, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    (
        ck.cert.pem(),
        ck.key_pair.serialize_pem(),
        ck.cert.der().clone(),
    )
}

/// Write a certificate and key into `dir` (cert.pem, key.pem); their paths.
fn write_cert(dir: &Path, cert: &str, key: &str) -> (String, String) {
    let c = dir.join("cert.pem");
    let k = dir.join("key.pem");
    // Write then rename, as a certificate manager does, so the server never reads half a file.
    std::fs::write(dir.join("cert.tmp"), cert).unwrap();
    std::fs::write(dir.join("key.tmp"), key).unwrap();
    std::fs::rename(dir.join("cert.tmp"), &c).unwrap();
    std::fs::rename(dir.join("key.tmp"), &k).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// Start vigi-turn with TLS on a free port; (server, TLS port).
fn tls_server(cert: &str, key: &str, extra: &[&str]) -> (Server, u16) {
    let tls_port = free_port();
    let tls_s = tls_port.to_string();
    // -n: no turnserver.conf of the host (/etc/turnserver.conf, ./etc/...) changes the test.
    let mut args = vec![
        "-n",
        "-L",
        "127.0.0.1",
        "-E",
        "127.0.0.1",
        "--tls-listening-port",
        &tls_s,
        "--cert",
        cert,
        "--pkey",
        key,
    ];
    args.extend_from_slice(extra);
    (start_server(&args), tls_port)
}

fn client_config(roots: &[&CertificateDer<'static>], tls12_only: bool) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).expect("root");
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
    Arc::new(cfg)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connect and finish the handshake.
fn connect(port: u16, cfg: Arc<ClientConfig>) -> Tls {
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cfg, name).expect("client");
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("tls handshake");
    }
    s
}

/// One Binding request on a TLS connection; the XOR-MAPPED-ADDRESS of the answer.
fn binding(s: &mut Tls) -> std::net::SocketAddr {
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::BINDING, Class::Request, &tid);
    s.write_all(&req).expect("write");
    s.flush().unwrap();
    let mut head = [0u8; 20];
    s.read_exact(&mut head).expect("read header");
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut msg = head.to_vec();
    msg.resize(20 + len, 0);
    s.read_exact(&mut msg[20..]).expect("read body");
    let m = Message::decode(&msg).expect("decode");
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id(), &tid);
    m.get_xor_address(attr::XOR_MAPPED_ADDRESS)
        .expect("XOR-MAPPED-ADDRESS")
}

fn peer_cert(s: &Tls) -> CertificateDer<'static> {
    s.conn.peer_certificates().expect("peer certificates")[0].clone()
}

/// Connections waiting in the accept queues of the TCP listeners on `port` (/proc/net/tcp and
/// tcp6: for a listening socket, `rx_queue` is its accept backlog).
fn accept_queue(port: u16) -> u64 {
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, rem_address, st (0A: LISTEN), tx_queue:rx_queue
            (f.len() > 4 && f[1].ends_with(&port) && f[3] == "0A")
                .then(|| u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok())?
        })
        .sum()
}

fn signal(srv: &Server, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe {
        libc::kill(srv.proc.child.id() as i32, sig);
    }
}

#[test]
fn uclient_over_tls_all_echoed() {
    let dir = TempDir::new();
    let (c, k, _) = make_cert();
    let (cert, key) = write_cert(&dir.0, &c, &k);
    let (min, max) = free_range(100);
    let (min, max) = (min.to_string(), max.to_string());
    let (srv, tls_port) = tls_server(
        &cert,
        &key,
        &[
            "--allow-loopback-peers",
            "--realm",
            "bench.local",
            "--lt-cred-mech",
            "--user",
            "bench:benchpw",
            "--min-port",
            &min,
            "--max-port",
            &max,
            "-m",
            "2",
        ],
    );
    let (_peer, pport) = start_peer();
    let r = uclient(
        tls_port,
        pport,
        &[
            "-t", "-S", "-u", "bench", "-w", "benchpw", "-m", "2", "-n", "50", "-l", "100",
        ],
    );
    assert_eq!(r.sent, 100, "sent count; output:\n{}", r.output);
    assert_eq!(r.received, r.sent, "all echoed; output:\n{}", r.output);
    assert!(
        r.lost_line.contains("Total lost packets 0 "),
        "no loss; output:\n{}",
        r.output
    );
    drop(srv);
}

#[test]
fn rustls_binding_then_sigusr2_swaps_certificate() {
    let dir = TempDir::new();
    let (c1, k1, der1) = make_cert();
    let (c2, k2, der2) = make_cert();
    let (cert, key) = write_cert(&dir.0, &c1, &k1);
    let (srv, tls_port) = tls_server(&cert, &key, &[]);
    let both = client_config(&[&der1, &der2], false);

    // TLS 1.3 with ALPN stun.turn; Binding answered with our own address.
    let mut live = connect(tls_port, both.clone());
    assert_eq!(live.conn.alpn_protocol(), Some(&b"stun.turn"[..]));
    assert_eq!(
        live.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(peer_cert(&live), der1);
    let mapped = binding(&mut live);
    assert_eq!(mapped, live.sock.local_addr().unwrap());

    // TLS 1.2 is served too.
    let mut old = connect(tls_port, client_config(&[&der1], true));
    assert_eq!(
        old.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    binding(&mut old);

    // A broken certificate on disk + SIGUSR2: the old one stays in force.
    std::fs::write(&cert, "not a certificate").unwrap();
    signal(&srv, libc::SIGUSR2);
    std::thread::sleep(Duration::from_millis(300));
    let mut s = connect(tls_port, both.clone());
    assert_eq!(peer_cert(&s), der1, "an invalid new certificate is refused");
    binding(&mut s);

    // A new certificate + SIGUSR2: served to the next handshake.
    write_cert(&dir.0, &c2, &k2);
    signal(&srv, libc::SIGUSR2);
    let t0 = Instant::now();
    loop {
        let mut s = connect(tls_port, both.clone());
        if peer_cert(&s) == der2 {
            binding(&mut s);
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the new certificate was not served after SIGUSR2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Connections made before the swap keep working.
    assert_eq!(binding(&mut live), mapped);
    binding(&mut old);
    assert!(srv.proc.terminate().success());
}

#[test]
fn bad_certificate_is_a_startup_error_naming_the_flag() {
    let dir = TempDir::new();
    let (c, k, _) = make_cert();
    let (cert, key) = write_cert(&dir.0, &c, &k);
    let missing = dir.0.join("missing.pem").display().to_string();
    let garbage = dir.0.join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let garbage = garbage.display().to_string();
    let (_, other_key_pem, _) = make_cert();
    let other_key = dir.0.join("other-key.pem");
    std::fs::write(&other_key, other_key_pem).unwrap();
    let other_key = other_key.display().to_string();
    let port = free_port().to_string();
    for (args, flag) in [
        (
            vec!["--cert", missing.as_str(), "--pkey", key.as_str()],
            "--cert",
        ),
        (
            vec!["--cert", cert.as_str(), "--pkey", garbage.as_str()],
            "--pkey",
        ),
        (
            vec!["--cert", garbage.as_str(), "--pkey", key.as_str()],
            "--cert",
        ),
        (
            vec!["--cert", cert.as_str(), "--pkey", other_key.as_str()],
            "--pkey",
        ),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "-n",
            "-L",
            "127.0.0.1",
            "-p",
            &port,
            "--tls-listening-port",
            &port,
        ]);
        cmd.args(&args);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            err.lines()
                .any(|l| l.starts_with("vigi-turn: ") && l.contains(flag)),
            "{args:?}: error names {flag}:\n{err}"
        );
    }
}

#[test]
fn silent_handshake_is_cut_off_and_counts_toward_the_cap() {
    let dir = TempDir::new();
    let (c, k, der) = make_cert();
    let (cert, key) = write_cert(&dir.0, &c, &k);
    let (_srv, tls_port) = tls_server(&cert, &key, &["--max-tcp-connections", "1"]);
    let mut s = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server must have taken the silent connection before the second one comes, or the
    // second could be the one holding the slot: wait until its accept queue is empty (it was a
    // 200 ms sleep). The handshake timeout runs from then on.
    let accepting = Instant::now();
    while accept_queue(tls_port) > 0 {
        assert!(
            accepting.elapsed() < Duration::from_secs(30),
            "the silent connection was never accepted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    // The silent connection holds the only slot: a second one is closed at once (a loaded
    // machine may take a moment; only a close counts, a timeout fails).
    let mut second = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(second.read(&mut buf).expect("closed, not timed out"), 0);
    // The server says nothing until the ClientHello, then closes at its handshake timeout.
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without data");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    // The slot is free again.
    std::thread::sleep(Duration::from_millis(100));
    let mut ok = connect(tls_port, client_config(&[&der], false));
    binding(&mut ok);
}

#[test]
fn sigusr2_storm_while_uclient_relays_over_tls() {
    let dir = TempDir::new();
    let (c1, k1, der1) = make_cert();
    let (c2, k2, der2) = make_cert();
    let (cert, key) = write_cert(&dir.0, &c1, &k1);
    let (min, max) = free_range(100);
    let (min, max) = (min.to_string(), max.to_string());
    let (srv, tls_port) = tls_server(
        &cert,
        &key,
        &[
            "--allow-loopback-peers",
            "--realm",
            "bench.local",
            "--lt-cred-mech",
            "--user",
            "bench:benchpw",
            "--min-port",
            &min,
            "--max-port",
            &max,
            "-m",
            "2",
        ],
    );
    let (_peer, pport) = start_peer();
    let pid = srv.proc.child.id() as i32;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        let dir = dir.0.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (c, k) = if n % 2 == 0 { (&c2, &k2) } else { (&c1, &k1) };
                write_cert(&dir, c, k);
                // SAFETY: kill(2) on a child of this test process, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGUSR2);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        })
    };
    let r = uclient(
        tls_port,
        pport,
        &[
            "-t", "-S", "-u", "bench", "-w", "benchpw", "-m", "4", "-n", "100", "-l", "100",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads = storm.join().unwrap();
    assert!(reloads >= 10, "only {reloads} SIGUSR2 sent");
    assert_eq!(r.sent, 400, "sent count; output:\n{}", r.output);
    assert_eq!(r.received, r.sent, "all echoed; output:\n{}", r.output);
    assert!(
        r.lost_line.contains("Total lost packets 0 "),
        "no loss; output:\n{}",
        r.output
    );
    // The last certificate written is the one served, once the server has handled the last
    // SIGUSR2 (a loaded machine may take a while): the other one is served only until then.
    let last = if reloads % 2 == 1 { &der2 } else { &der1 };
    let t0 = Instant::now();
    let mut s = loop {
        let s = connect(tls_port, client_config(&[&der1, &der2], false));
        if &peer_cert(&s) == last {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the last certificate written is never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    binding(&mut s);
    eprintln!("{reloads} SIGUSR2 reloads while relaying 400 messages over TLS: all echoed");
}

#[test]
fn uclient_over_tls_on_ipv6_loopback() {
    require_tool("turnutils_peer");
    let dir = TempDir::new();
    let (c, k, _) = make_cert();
    let (cert, key) = write_cert(&dir.0, &c, &k);
    // UDP answers on 127.0.0.1 (how start_server knows it is up); TLS, relay and peer on ::1.
    let tls_port = free_port();
    let tls_s = tls_port.to_string();
    let srv = start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "-L",
        "::1",
        "-E",
        "::1",
        "--tls-listening-port",
        &tls_s,
        "--cert",
        &cert,
        "--pkey",
        &key,
        "--allow-loopback-peers",
        "--realm",
        "bench.local",
        "--user",
        "bench:benchpw",
        "-m",
        "1",
    ]);
    let (_peer, peer_port) = start_peer_on(&["::1"]);
    let out = run_with_timeout(
        Command::new("turnutils_uclient").args([
            "-t",
            "-S",
            "-p",
            &tls_s,
            "-e",
            "::1",
            "-r",
            &peer_port.to_string(),
            "-u",
            "bench",
            "-w",
            "benchpw",
            "-m",
            "2",
            "-n",
            "20",
            "-l",
            "100",
            "::1",
        ]),
        Duration::from_secs(60),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("tot_send_msgs=40, tot_recv_msgs=40")
            && text.contains("Total lost packets 0 "),
        "all 40 messages echoed over TLS on IPv6:\n{text}"
    );
    drop(srv);
}
