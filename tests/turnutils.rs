//! TURN over UDP (and TCP) against the real binary, driven by coturn's own `turnutils_uclient`
//! relaying to `turnutils_peer`: channels, Send indications, client-to-client, many clients,
//! long-term and REST credentials. Every message must come back.

mod common;

use common::*;

/// A server of its own relay range: several of these run at once in this binary, and a fixed
/// range (it was 61000-61999 for all) is shared between them, with other test processes on the
/// machine, and with the kernel's ephemeral ports where `ip_local_port_range` reaches that far.
fn lt_args() -> ServerArgs {
    ServerArgs::loopback()
        .realm("bench.local")
        .user("bench:benchpw")
        .relay_ports(100)
        .threads(2)
        // One user stands for all of uclient's clients (-m 10 with RFC 6062 pairs).
        .no_user_quota()
}

fn lt_server() -> Server {
    lt_args().start()
}

fn assert_all_echoed(r: &UclientResult, expect: u64) {
    assert_eq!(r.sent, expect, "sent count; output:\n{}", r.output);
    assert_eq!(
        r.received, r.sent,
        "every message echoed; output:\n{}",
        r.output
    );
    assert!(
        r.lost_line.contains("Total lost packets 0 "),
        "no loss; output:\n{}",
        r.output
    );
}

const LT: [&str; 4] = ["-u", "bench", "-w", "benchpw"];

/// One row of the table: `turnutils_uclient` with the long-term user and `args` against its own
/// long-term server; every one of `expect` messages must come back. With the fast path on
/// ([`fast_path_on`], `.ci/run`'s second pass), a row marked `kernel` must also have been
/// relayed (in part at least) by the XDP program, or the pass would prove nothing.
fn echo_case(args: &[&str], expect: u64, kernel: bool) {
    let metrics = fast_path_on().then(free_port);
    let mut server = lt_args();
    if let Some(port) = metrics {
        server = server
            .args(&["--prometheus", "--prometheus-address", "127.0.0.1"])
            .args(&["--prometheus-port", &port.to_string()]);
    }
    let srv = server.start();
    let (_peer, pport) = start_peer();
    let r = uclient(srv.port, pport, &[&LT[..], args].concat());
    assert_all_echoed(&r, expect);
    if let (Some(port), true) = (metrics, kernel) {
        let relayed = fast_path_packets(port);
        assert!(relayed > 0.0, "the kernel fast path relayed nothing");
    }
}

/// The table: a test per row (so they run in parallel and fail by name), uclient's flags, the
/// messages sent (and echoed) in all, and whether the kernel fast path carries it when on.
macro_rules! echo_cases {
    ($($(#[$doc:meta])* $name:ident: [$($arg:literal),*] => $expect:literal, kernel $kernel:literal;)*) => {
        $( $(#[$doc])* #[test] fn $name() { echo_case(&[$($arg),*], $expect, $kernel) } )*
    };
}

echo_cases! {
    /// ChannelData on bound channels, two clients.
    uclient_channels_long_term: ["-m", "2", "-n", "50", "-l", "100"] => 100, kernel true;
    /// Send and Data indications (no channels), as Firefox relays.
    uclient_send_indications: ["-s", "-m", "2", "-n", "50", "-l", "100"] => 100, kernel true;
    /// Client to client through two allocations: each message is counted at both ends.
    uclient_client_to_client: ["-y", "-m", "2", "-n", "50", "-l", "100"] => 200, kernel true;
    /// Ten clients at once.
    uclient_ten_clients: ["-c", "-m", "10", "-n", "50", "-l", "120"] => 500, kernel true;
    /// TURN over TCP to the server, UDP to the peer: the fast path relays UDP only.
    uclient_over_tcp: ["-t", "-m", "2", "-n", "50", "-l", "100"] => 100, kernel false;
}

#[test]
fn uclient_rest_secret() {
    let srv = ServerArgs::bare()
        .args(&["-L", "127.0.0.1", "--allow-loopback-peers"])
        .realm("bench.local")
        .rest_secret("old-secret")
        .args(&["--static-auth-secret", "benchsecret"])
        .start();
    let (_peer, pport) = start_peer();
    // turnutils_uclient mints `expiry:user` with the secret it is given (-W).
    let r = uclient(
        srv.port,
        pport,
        &[
            "-u",
            "bench",
            "-W",
            "benchsecret",
            "-m",
            "2",
            "-n",
            "50",
            "-l",
            "100",
        ],
    );
    assert_all_echoed(&r, 100);
    let r = uclient(
        srv.port,
        pport,
        &[
            "-u",
            "bench",
            "-W",
            "old-secret",
            "-m",
            "2",
            "-n",
            "20",
            "-l",
            "100",
        ],
    );
    assert_all_echoed(&r, 40);
}

#[test]
fn wrong_password_relays_nothing() {
    let srv = lt_server();
    let (_peer, pport) = start_peer();
    let r = uclient(
        srv.port,
        pport,
        &[
            "-u", "bench", "-w", "wrong", "-m", "1", "-n", "10", "-l", "100",
        ],
    );
    assert_eq!(r.received, 0, "output:\n{}", r.output);
}

#[test]
fn loopback_peer_refused_by_default() {
    let srv = ServerArgs::bare()
        .args(&["-L", "127.0.0.1"])
        .realm("bench.local")
        .args(&["--user", "bench:benchpw"])
        .start();
    let (_peer, pport) = start_peer();
    let r = uclient(
        srv.port,
        pport,
        &[&LT[..], &["-m", "1", "-n", "10", "-l", "100"]].concat(),
    );
    assert_eq!(
        r.received, 0,
        "loopback peers must be refused without --allow-loopback-peers:\n{}",
        r.output
    );
    assert!(
        r.output.contains("403"),
        "expected 403 Forbidden:\n{}",
        r.output
    );
}

#[test]
fn our_rest_credentials_are_accepted_by_coturn() {
    // The other direction of compatibility: credentials minted by vigi-turn's library work on a
    // real coturn configured with the same secret.
    require_tool("turnserver");
    let port = free_port();
    let (rmin, rmax) = free_range(20);
    let dir = std::env::temp_dir().join(format!("vigi-coturn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = std::process::Command::new("turnserver")
        .args([
            "-n",
            "-L",
            "127.0.0.1",
            "-E",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args([
            "--min-port",
            &rmin.to_string(),
            "--max-port",
            &rmax.to_string(),
        ])
        .args([
            "--allow-loopback-peers",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--realm",
            "bench.local",
        ])
        .args([
            "--use-auth-secret",
            "--static-auth-secret",
            "shared-secret",
            "--no-stdout-log",
        ])
        .arg("--userdb")
        .arg(dir.join("turndb"))
        .arg("--pidfile")
        .arg(dir.join("pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start coturn");
    let _coturn = Proc {
        child,
        name: "turnserver".into(),
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let t0 = std::time::Instant::now();
    while binding_udp(addr, std::time::Duration::from_millis(200)).is_none() {
        assert!(t0.elapsed().as_secs() < 30, "coturn did not start");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let creds =
        vigi_turn::engine::auth::mint_rest_credentials(b"shared-secret", "carol", 600, now, ':');
    let (_peer, pport) = start_peer();
    let r = uclient(
        port,
        pport,
        &[
            "-u",
            &creds.username,
            "-w",
            &creds.password,
            "-m",
            "1",
            "-n",
            "20",
            "-l",
            "100",
        ],
    );
    assert!(r.sent > 0, "output:\n{}", r.output);
    assert_eq!(
        r.received, r.sent,
        "coturn accepted our credentials; output:\n{}",
        r.output
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn uclient_over_ipv6_loopback() {
    require_tool("turnutils_peer");
    // Listener, relay and peer on ::1 (RFC 6156: IPv6 relayed addresses).
    let port = free_port();
    let (_srv, srv) = start_server_on_v6(port);
    let (_peer, peer_port) = start_peer_on(&["::1"]);
    let out = run_with_timeout(
        std::process::Command::new("turnutils_uclient").args([
            "-p",
            &srv.to_string(),
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
        std::time::Duration::from_secs(60),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("tot_send_msgs=40, tot_recv_msgs=40")
            && text.contains("Total lost packets 0 "),
        "all 40 messages echoed over IPv6:\n{text}"
    );
}

/// Start vigi-turn listening and relaying on ::1 only; returns it and its port once it answers.
fn start_server_on_v6(port: u16) -> (Proc, u16) {
    let args = ServerArgs::bare()
        .args(&["-L", "::1", "-E", "::1", "--allow-loopback-peers"])
        .realm("bench.local")
        .args(&["--user", "bench:benchpw"])
        .threads(1)
        .args(&["-p", &port.to_string()]);
    let child = std::process::Command::new(BIN)
        .args(args.to_vec())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start vigi-turn");
    let proc = Proc {
        child,
        name: "vigi-turn".into(),
    };
    let addr: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let s = std::net::UdpSocket::bind("[::1]:0").expect("IPv6 loopback is needed");
        s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let mut req = Vec::new();
        vigi_turn::proto::MessageBuilder::new(
            &mut req,
            vigi_turn::proto::Method::BINDING,
            vigi_turn::proto::Class::Request,
            &[5; 12],
        );
        s.send_to(&req, addr).unwrap();
        let mut buf = [0u8; 512];
        if s.recv_from(&mut buf).is_ok() {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 30,
            "vigi-turn did not answer on [::1]:{port}"
        );
    }
    (proc, port)
}
