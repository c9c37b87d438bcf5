//! The signaling companion through the real binary: the seed's Socket.io call flow driven by the
//! real `socket.io-client` (npm, tests/signaling/call_flow.mjs: also the call limits, presence
//! and the order of WebRTC messages), `GET /api/turn-credentials` whose credentials allocate on
//! the same server, and the hostile side: no anonymous credentials, rate-limited minting, other
//! origins refused, an Engine.IO handshake flood, a slowloris on every HTTP listener under a
//! low open-files limit, and call records in a real `redis-server` listed by two nodes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::Value;
use turn::client::{Client, ClientConfig};
use vigi_turn::signal::mint_token;

const SIGNAL_SECRET: &str = "signal-s3cret";
const REST_SECRET: &str = "rest-s3cret";

/// vigi-turn with signaling on a free port of 127.0.0.1; the signaling port.
fn start_with_signaling(extra: &[&str]) -> (Server, u16) {
    let sig_port = free_port();
    let listen = format!("127.0.0.1:{sig_port}");
    let mut args = vec![
        "-n",
        "-L",
        "127.0.0.1",
        "--realm",
        "turn.test",
        "--use-auth-secret",
        "--static-auth-secret",
        REST_SECRET,
        "--signaling-secret",
        SIGNAL_SECRET,
        "--signaling-listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    let srv = start_server(&args);
    // The signaling thread binds before the workers report ready; wait for it all the same.
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", sig_port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "signaling not listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (srv, sig_port)
}

fn require_node() {
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

/// tests/signaling's npm packages, installed once.
fn signaling_dir() -> std::path::PathBuf {
    require_node();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signaling");
    if !dir
        .join("node_modules/socket.io-client/package.json")
        .is_file()
    {
        let out = run_with_timeout(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            Duration::from_secs(300),
        );
        assert!(
            out.status.success(),
            "npm ci failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// call_flow.mjs against 127.0.0.1:`sig_port`, with `env` set; its output.
fn call_flow(sig_port: u16, env: &[(&str, &str)]) -> String {
    let out = run_with_timeout(
        Command::new("node")
            .arg("call_flow.mjs")
            .current_dir(signaling_dir())
            .env("SIGNAL_URL", format!("http://127.0.0.1:{sig_port}"))
            .env("SIGNAL_SECRET", SIGNAL_SECRET)
            .envs(env.iter().copied()),
        Duration::from_secs(90),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "call_flow.mjs failed:\n{text}");
    text
}

#[test]
fn presence_is_opt_in() {
    let (_srv, sig_port) = start_with_signaling(&["--signaling-presence"]);
    let text = call_flow(sig_port, &[("PRESENCE", "1")]);
    assert!(text.contains("ok - offline answers user_offline"), "{text}");
}

#[test]
fn socket_io_client_runs_the_call_flow() {
    let prom = free_port();
    let prom_s = prom.to_string();
    let (_srv, sig_port) = start_with_signaling(&[
        "--prometheus",
        "--prometheus-address",
        "127.0.0.1",
        "--prometheus-port",
        &prom_s,
    ]);
    let text = call_flow(sig_port, &[]);
    assert!(text.contains("ok - disconnect ends the call"), "{text}");
    assert!(text.contains("ok - offline answers busy"), "{text}");
    // Every call of the flow is counted.
    let m = scrape(prom);
    let get = |k: &str| m.get(k).copied().unwrap_or_else(|| panic!("no {k}"));
    let started = get(r#"vigi_turn_calls_started_total{type="video"}"#)
        + get(r#"vigi_turn_calls_started_total{type="voice"}"#);
    let mut ended = 0.0;
    for kind in ["voice", "video"] {
        for reason in ["answered", "rejected", "busy", "missed", "failed"] {
            ended += get(&format!(
                r#"vigi_turn_calls_ended_total{{type="{kind}",reason="{reason}"}}"#
            ));
        }
    }
    println!("calls: {started} started, {ended} ended");
    assert!(started >= 10.0 && ended >= 10.0, "{started} {ended}");
    assert!(get(r#"vigi_turn_calls_answered_total{type="video"}"#) >= 2.0);
    assert!(get(r#"vigi_turn_calls_ended_total{type="voice",reason="rejected"}"#) >= 5.0);
    assert!(get(r#"vigi_turn_calls_ended_total{type="voice",reason="busy"}"#) >= 2.0);
    assert!(get("vigi_turn_call_duration_seconds_count") >= 2.0);
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_endpoint_mints_working_credentials() {
    let (srv, sig_port) = start_with_signaling(&["--turn-credentials-ttl", "600"]);

    // The socket's auth guards the endpoint too.
    let (status, _) = http_get(sig_port, "/api/turn-credentials");
    assert_eq!(status, 401);
    let expiry = unix_now() + 60;
    let bad = mint_token(b"wrong", "alice", expiry);
    let (status, _) = http_get(
        sig_port,
        &format!("/api/turn-credentials?userId=alice&expiry={expiry}&token={bad}"),
    );
    assert_eq!(status, 401);

    let token = mint_token(SIGNAL_SECRET.as_bytes(), "alice", expiry);
    let (status, body) = http_get(
        sig_port,
        &format!("/api/turn-credentials?userId=alice&expiry={expiry}&token={token}"),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON body");
    let username = v["username"].as_str().unwrap().to_owned();
    let password = v["password"].as_str().unwrap().to_owned();
    assert_eq!(v["ttl"], 600);
    let (exp, user) = username.split_once(':').expect("expiry:user");
    assert_eq!(user, "alice");
    let exp: u64 = exp.parse().unwrap();
    assert!(
        (unix_now() + 590..=unix_now() + 610).contains(&exp),
        "{exp}"
    );
    // draft-uberti TURN REST: password = base64(HMAC-SHA1(secret, username)).
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(REST_SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(password, want);
    let port = srv.port;
    let uris = serde_json::json!([
        format!("turn:127.0.0.1:{port}?transport=udp"),
        format!("turn:127.0.0.1:{port}?transport=tcp"),
    ]);
    assert_eq!(v["uris"], uris);
    assert_eq!(v["iceServers"][0]["urls"], uris);
    assert_eq!(v["iceServers"][0]["username"], username.as_str());
    assert_eq!(v["iceServers"][0]["credential"], password.as_str());

    // The credentials allocate on the running server.
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = format!("127.0.0.1:{port}");
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.clone(),
        turn_serv_addr: server,
        username,
        password,
        realm: "turn.test".to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    let relay = tokio::time::timeout(Duration::from_secs(10), client.allocate())
        .await
        .expect("allocate in time")
        .expect("allocate with minted credentials");
    use webrtc_util::Conn;
    assert_eq!(relay.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    relay.close().await.expect("close relay");
    client.close().await.expect("close");
}

#[test]
fn turn_uris_and_cors_origin_are_configurable() {
    let (_srv, sig_port) = start_with_signaling(&[
        "--turn-uri",
        "turn:turn.example.org:3478?transport=udp",
        "--turn-uri",
        "turns:turn.example.org:5349?transport=tcp",
        "--signaling-cors-origin",
        "https://app.example.org",
    ]);
    let expiry = unix_now() + 60;
    let token = mint_token(SIGNAL_SECRET.as_bytes(), "7", expiry);
    let mut s = TcpStream::connect(("127.0.0.1", sig_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /api/turn-credentials?userId=7&expiry={expiry}&token={token} HTTP/1.1\r\n\
         Host: x\r\nOrigin: https://app.example.org\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example.org"),
        "{resp}"
    );
    let body: Value = serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap();
    // Preflights and Socket.io's long-polling carry the same origin.
    for req in [
        "OPTIONS /api/turn-credentials HTTP/1.1",
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1",
    ] {
        let resp = raw(
            sig_port,
            &format!(
                "{req}\r\nHost: x\r\nOrigin: https://app.example.org\r\n\
                 Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(
            resp.to_ascii_lowercase()
                .contains("access-control-allow-origin: https://app.example.org"),
            "{req}: {resp}"
        );
        assert!(resp.starts_with("HTTP/1.1 2"), "{req}: {resp}");
    }
    assert_eq!(
        body["uris"],
        serde_json::json!([
            "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:5349?transport=tcp"
        ])
    );
}

fn raw(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp
}

/// vigi-turn's exit status and stderr when it refuses to start with `args`.
fn refused_to_start(args: &[&str]) -> String {
    let out = run_with_timeout(Command::new(BIN).args(args), Duration::from_secs(10));
    assert!(!out.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn credentials_path(user: &str) -> String {
    let expiry = unix_now() + 60;
    let token = mint_token(SIGNAL_SECRET.as_bytes(), user, expiry);
    format!("/api/turn-credentials?userId={user}&expiry={expiry}&token={token}")
}

#[test]
fn no_anonymous_credentials_and_minting_is_rate_limited() {
    // Without a secret it does not start at all, unless told to serve anyone on purpose.
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let base = ["-p", &port, "-n", "-L", "127.0.0.1", "--realm", "t"];
    let mut args = base.to_vec();
    args.extend(["--use-auth-secret", "--static-auth-secret", REST_SECRET]);
    args.extend(["--signaling-listen", &listen]);
    let err = refused_to_start(&args);
    assert!(
        err.contains("--signaling-secret") && err.contains("open relay"),
        "{err}"
    );

    let (_srv, sig_port) = start_with_signaling(&[]);
    let (status, _) = http_get(sig_port, "/api/turn-credentials?userId=alice");
    assert_eq!(status, 401);

    // Per user: a burst of 10, then 429 with Retry-After (was: 500 of 500 in 4 s answered 200).
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..30 {
        match http_get(sig_port, &credentials_path("mallory")).0 {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("status {s}"),
        }
    }
    println!("one user, 30 requests: {ok} minted, {limited} refused");
    assert_eq!((ok, limited), (10, 20));
    // Per address: many users from one address get the address's burst (60) and its refill.
    let t0 = Instant::now();
    let mut ok = 0;
    for i in 0..500 {
        if http_get(sig_port, &credentials_path(&format!("u{i}"))).0 == 200 {
            ok += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("one address, 500 users: {ok} minted in {secs:.1} s");
    assert!(ok >= 40 && f64::from(ok) <= 50.0 + secs * 5.0 + 2.0, "{ok}");
    let (status, body) = http_get(sig_port, &credentials_path("mallory"));
    assert_eq!(status, 429, "{body}");
}

#[test]
fn other_origins_are_refused_unless_named() {
    let (_srv, sig_port) = start_with_signaling(&[]);
    let path = credentials_path("alice");
    let host = format!("127.0.0.1:{sig_port}");
    let polling = "/socket.io/?EIO=4&transport=polling";
    // Same origin (the demo page's own fetches and Socket.io): served, no CORS headers.
    for p in [path.as_str(), polling] {
        let (status, body) = http(sig_port, "GET", p, &format!("Origin: http://{host}\r\n"));
        assert_eq!(status, 200, "{p}: {body}");
    }
    // Another site: refused, Socket.io's handshake included (no session is created).
    for p in [path.as_str(), polling] {
        let (status, body) = http(sig_port, "GET", p, "Origin: https://evil.example\r\n");
        assert_eq!(status, 403, "{p}: {body}");
    }
    let resp = raw(
        sig_port,
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n\
         Origin: https://evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    let resp = raw(
        sig_port,
        "OPTIONS /api/turn-credentials HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\
         Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(!resp
        .to_ascii_lowercase()
        .contains("access-control-allow-origin"));
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `src` (any of 127/8 works
/// on Linux), so that tests can play several client addresses.
fn connect_from(src: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from((src, 0)).into())?;
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    Ok(s.into())
}

/// One `GET path` from `src` with `Connection: close`: the status (0 on any failure).
fn get_from(src: [u8; 4], port: u16, path: &str) -> u16 {
    get_body_from(src, port, path).0
}

/// One `GET path` from `src` with `Connection: close`: the status (0 on any failure) and the
/// body.
fn get_body_from(src: [u8; 4], port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = connect_from(src, port) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned();
    (status, body)
}

#[test]
fn an_engine_io_handshake_flood_does_not_grow_memory() {
    const FLOOD: Duration = Duration::from_secs(20);
    const MAX_REQUESTS: usize = 400_000;
    let (srv, sig_port) = start_with_signaling(&[]);
    let pid = srv.proc.child.id();
    let rss0 = rss_kib(pid);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (sent, accepted) = (sent.clone(), accepted.clone());
            std::thread::spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                while t0.elapsed() < FLOOD && sent.fetch_add(1, Relaxed) < MAX_REQUESTS {
                    if get_from([127, 0, 0, 3], sig_port, POLLING) == 200 {
                        accepted.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut peak = rss0;
    while threads.iter().any(|t| !t.is_finished()) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    for t in threads {
        t.join().unwrap();
    }
    peak = peak.max(rss_kib(pid));
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    let accepted = accepted.load(std::sync::atomic::Ordering::Relaxed);
    let growth_mib = (peak.saturating_sub(rss0)) / 1024;
    println!(
        "handshake flood from one address for {:.0} s: {sent} requests, {accepted} sessions \
         opened; RSS {} MiB -> peak {} MiB (+{growth_mib} MiB)",
        t0.elapsed().as_secs_f64(),
        rss0 / 1024,
        peak / 1024
    );
    assert!(growth_mib < 100, "RSS grew by {growth_mib} MiB");
    // Another address still gets a session, closed when it does not authenticate in time.
    let (status, body) = get_body_from([127, 0, 0, 4], sig_port, POLLING);
    assert_eq!(status, 200, "{body}");
    let sid = body
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("sid");
    std::thread::sleep(Duration::from_secs(6));
    let (status, body) = get_body_from([127, 0, 0, 4], sig_port, &format!("{POLLING}&sid={sid}"));
    assert_eq!(
        status, 400,
        "unauthenticated session still open after 6 s: {body}"
    );
    // A bad token in the handshake's query is refused before any session exists.
    let expiry = unix_now() + 60;
    let bad = mint_token(b"wrong", "eve", expiry);
    let path = format!("{POLLING}&userId=eve&expiry={expiry}&token={bad}");
    assert_eq!(get_body_from([127, 0, 0, 4], sig_port, &path).0, 401);
}

const POLLING: &str = "/socket.io/?EIO=4&transport=polling";

/// vigi-turn under `prlimit --nofile=N` (so that descriptors run out as they would on a host
/// with a low limit), waited for until it answers STUN on `port`.
fn start_with_nofile(nofile: u32, port: u16, args: &[&str]) -> Proc {
    let port_s = port.to_string();
    let limit = format!("--nofile={nofile}:{nofile}");
    let child = Command::new("prlimit")
        .args([limit.as_str(), "--", BIN, "-p", &port_s])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("prlimit (util-linux)");
    let mut proc = Proc {
        child,
        name: "vigi-turn".into(),
    };
    let t0 = Instant::now();
    while binding_udp(([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_none() {
        assert!(proc.child.try_wait().unwrap().is_none(), "vigi-turn exited");
        assert!(t0.elapsed() < Duration::from_secs(10), "no STUN answer");
    }
    proc
}

/// A STUN Binding over TCP to 127.0.0.1:`port`: answered or not.
fn binding_tcp(port: u16) -> bool {
    use vigi_turn::proto::{Class, MessageBuilder, Method};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::BINDING, Class::Request, &rand::random());
    let mut head = [0u8; 20];
    s.write_all(&req).is_ok() && s.read_exact(&mut head).is_ok() && head[0..2] == [0x01, 0x01]
}

#[test]
fn slowloris_leaves_metrics_and_allocate_working() {
    const HALF_SENT: usize = 1010;
    let port = free_port();
    let (prom, admin, sig) = (free_port(), free_port(), free_port());
    let (prom_s, admin_s, sig_s) = (
        prom.to_string(),
        format!("127.0.0.1:{admin}"),
        format!("127.0.0.1:{sig}"),
    );
    let (min, max) = free_range(20);
    let (min_s, max_s) = (min.to_string(), max.to_string());
    #[rustfmt::skip]
    let args = [
        "-n", "-L", "127.0.0.1", "--realm", "turn.test", "--min-port", &min_s, "--max-port", &max_s,
        "--use-auth-secret", "--static-auth-secret", REST_SECRET,
        "--prometheus", "--prometheus-address", "127.0.0.1", "--prometheus-port", &prom_s,
        "--admin-listen", &admin_s, "--admin-token", "adm1n",
        "--signaling-listen", &sig_s, "--signaling-secret", SIGNAL_SECRET,
    ];
    let _srv = start_with_nofile(1024, port, &args);
    // 1,010 half-sent requests from 127.0.0.2, spread over the three HTTP listeners.
    let t0 = Instant::now();
    let mut held = Vec::new();
    for i in 0..HALF_SENT {
        let target = [prom, admin, sig][i % 3];
        if let Ok(mut s) = connect_from([127, 0, 0, 2], target) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            held.push(s);
        }
    }
    let t_scrape = Instant::now();
    let (status, body) = http_get(prom, "/metrics");
    let scrape = t_scrape.elapsed();
    let cred = vigi_turn::engine::auth::mint_rest_credentials(
        REST_SECRET.as_bytes(),
        "alice",
        600,
        unix_now(),
        ':',
    );
    let (code, _) = common::turn_client::raw_allocate_at(
        ([127, 0, 0, 1], port).into(),
        &cred.username,
        &cred.password,
    );
    let tcp = binding_tcp(port);
    // Which of them the server still holds open (the rest it closed at once).
    let still_open = |s: &TcpStream| {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let alive =
            matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).unwrap();
        alive
    };
    let open = held.iter().filter(|s| still_open(s)).count();
    println!(
        "{HALF_SENT} half-sent requests ({:.1} s to open) under nofile 1024: {open} held open \
         by the server; /metrics {status} in {} ms; Allocate error code {code}; STUN over \
         TCP answered: {tcp}",
        t0.elapsed().as_secs_f64(),
        scrape.as_millis()
    );
    assert_eq!(status, 200, "{body}");
    assert!(scrape < Duration::from_secs(1), "/metrics took {scrape:?}");
    assert_eq!(code, 0, "Allocate failed with {code}");
    assert!(tcp, "STUN over TCP not answered");
    assert!(open <= 16 + 16 + 32, "{open} held");
    // The held ones are closed once their headers are late (5 s).
    let s = held.iter().find(|s| still_open(s));
    if let Some(s) = s {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        let mut rest = Vec::new();
        let _ = (&*s).read_to_end(&mut rest);
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "held for {:?}",
            t.elapsed()
        );
    }
}

/// A `redis-server` on a free port of 127.0.0.1, without persistence (killed on drop).
fn start_redis() -> (Proc, u16) {
    let port = free_port();
    (start_redis_on(port), port)
}

/// A `redis-server` on `port` of 127.0.0.1 (a directory of its own), without persistence.
fn start_redis_on(port: u16) -> Proc {
    require_tool("redis-server");
    let dir = std::env::temp_dir().join(format!("vigi-sig-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    let proc = Proc {
        child,
        name: "redis-server".into(),
    };
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "redis did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
}

#[test]
fn call_records_in_redis_are_listed_on_every_node() {
    let (redis, redis_port) = start_redis();
    let conn = format!("ip=127.0.0.1 port={redis_port} dbname=0 connect_timeout=2");
    let t_start = unix_now();
    let node = |admin: u16| {
        let admin_s = format!("127.0.0.1:{admin}");
        start_with_signaling(&[
            "--signaling-redis",
            &conn,
            "--admin-listen",
            &admin_s,
            "--admin-token",
            "adm1n",
        ])
    };
    let (admin_a, admin_b) = (free_port(), free_port());
    let (srv_a, sig_a) = node(admin_a);
    let (_srv_b, _sig_b) = node(admin_b);
    call_flow(sig_a, &[]);
    let calls = |admin: u16, query: &str| -> (u16, Value) {
        let (status, body) = http(
            admin,
            "GET",
            &format!("/api/calls{query}"),
            &bearer(Some("adm1n")),
        );
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    };
    // Records are written from a task of their own: give it a moment.
    let t0 = Instant::now();
    let mut listed = Value::Null;
    while t0.elapsed() < Duration::from_secs(5) {
        listed = calls(admin_b, "?user=alice").1;
        if listed["calls"].as_array().is_some_and(|c| c.len() >= 3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let on_b = listed["calls"].as_array().expect("calls").clone();
    let (status, on_a) = calls(admin_a, "?user=alice");
    assert_eq!(status, 200);
    assert_eq!(
        on_a["calls"].as_array().unwrap(),
        &on_b,
        "both nodes list the same"
    );
    println!("alice's calls: {}", serde_json::to_string(&on_b).unwrap());
    let first = &on_b[0];
    assert_eq!(first["callerId"], "alice");
    assert_eq!(first["calleeId"], "bob");
    assert_eq!(first["type"], "video");
    assert_eq!(first["reason"], "answered");
    assert!(first["answeredAt"].as_f64().is_some() && first["durationSecs"].as_f64().is_some());
    assert!(first["initiatedAt"].as_f64().unwrap() >= t_start as f64 - 1.0);
    let reasons: Vec<&str> = on_b.iter().filter_map(|c| c["reason"].as_str()).collect();
    assert!(
        reasons
            .iter()
            .all(|r| ["answered", "missed", "failed"].contains(r)),
        "{reasons:?}"
    );
    // `since` filters, bad values are refused, and without Redis the listing says so.
    let later = unix_now() + 10;
    assert_eq!(
        calls(admin_a, &format!("?since={later}")).1["calls"],
        serde_json::json!([])
    );
    assert_eq!(calls(admin_a, "?since=soon").0, 400);
    assert_eq!(http(admin_a, "GET", "/api/calls", "").0, 401);
    drop(redis);
    let (status, body) = calls(admin_a, "");
    assert_eq!(status, 503, "{body}");
    // Nothing on the relay or signaling side minds.
    let (status, _) = http_get(sig_a, &credentials_path("zed"));
    assert_eq!(status, 200);
    let cred = vigi_turn::engine::auth::mint_rest_credentials(
        REST_SECRET.as_bytes(),
        "zed",
        600,
        unix_now(),
        ':',
    );
    let (code, _) = common::turn_client::raw_allocate_at(
        ([127, 0, 0, 1], srv_a.port).into(),
        &cred.username,
        &cred.password,
    );
    assert_eq!(code, 0);
}

/// A node of a signaling cluster: vigi-turn with `--signaling-redis` on `redis_port`, an admin
/// API, Prometheus and a log file; (server, signaling port, admin port, Prometheus port, log).
fn cluster_node(redis_port: u16, log_dir: &Path) -> (Server, u16, u16, u16, std::path::PathBuf) {
    let conn = format!("ip=127.0.0.1 port={redis_port} dbname=0 connect_timeout=2");
    let (admin, prom) = (free_port(), free_port());
    let admin_s = format!("127.0.0.1:{admin}");
    let prom_s = prom.to_string();
    let log = log_dir.join(format!("node-{admin}.log"));
    let log_s = log.to_str().unwrap().to_owned();
    let (srv, sig) = start_with_signaling(&[
        "--signaling-redis",
        &conn,
        "--admin-listen",
        &admin_s,
        "--admin-token",
        "adm1n",
        "--prometheus",
        "--prometheus-address",
        "127.0.0.1",
        "--prometheus-port",
        &prom_s,
        "--log-file",
        &log_s,
    ]);
    (srv, sig, admin, prom, log)
}

/// A fresh directory for one test's files.
fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vigi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Wait (at most 30 s) until `what` holds.
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One metric of the Prometheus endpoint on `prom`, if it answers and has it.
fn metric(prom: u16, name: &str) -> Option<f64> {
    scrape(prom).get(name).copied()
}

/// cross_node.mjs in `mode` against nodes A and B; `on_pause` runs at each `PAUSE <name>` line
/// before the script goes on. Its output.
fn cross_node(sig_a: u16, sig_b: u16, mode: &str, mut on_pause: impl FnMut(&str)) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new("node")
        .arg("cross_node.mjs")
        .current_dir(signaling_dir())
        .env("SIGNAL_URL_A", format!("http://127.0.0.1:{sig_a}"))
        .env("SIGNAL_URL_B", format!("http://127.0.0.1:{sig_b}"))
        .env("SIGNAL_SECRET", SIGNAL_SECRET)
        .env("MODE", mode)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start node");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // The script bounds each of its waits; this bounds the whole run should it hang anyway.
    let pid = child.id();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        while !d.load(std::sync::atomic::Ordering::Relaxed) {
            if t0.elapsed() > Duration::from_secs(240) {
                // SAFETY: kill(2) on the node process this test started and has not reaped.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut text = String::new();
    for line in stdout.lines().map_while(Result::ok) {
        println!("{line}");
        text.push_str(&line);
        text.push('\n');
        if let Some(name) = line.strip_prefix("PAUSE ") {
            on_pause(name);
            writeln!(stdin, "go").expect("write go");
        }
    }
    let status = child.wait().expect("wait node");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(status.success(), "cross_node.mjs failed:\n{text}");
    text
}

#[test]
fn two_nodes_share_one_call_flow_through_redis() {
    let (_redis, redis_port) = start_redis();
    let dir = test_dir("cross-node");
    let (_a, sig_a, admin_a, prom_a, _) = cluster_node(redis_port, &dir);
    let (_b, sig_b, admin_b, prom_b, _) = cluster_node(redis_port, &dir);
    for prom in [prom_a, prom_b] {
        wait_until("redis up on both nodes", || {
            metric(prom, "vigi_turn_signaling_redis_up") == Some(1.0)
        });
    }
    let text = cross_node(sig_a, sig_b, "flow", |_| {});
    assert!(
        text.contains("ok - a user on both nodes rings on both"),
        "{text}"
    );
    // The calls are counted where they were placed and answered, and recorded in Redis: both
    // nodes list the same records, the cross-node call among them.
    let listed = |admin: u16| -> Vec<Value> {
        let (status, body) = http(admin, "GET", "/api/calls?user=bob", &bearer(Some("adm1n")));
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["calls"].as_array().cloned().unwrap_or_default()
    };
    wait_until("bob's records", || listed(admin_a).len() >= 7);
    let on_a = listed(admin_a);
    assert_eq!(on_a, listed(admin_b), "both nodes list the same");
    let first = &on_a[0];
    assert_eq!(first["callerId"], "alice");
    assert_eq!(first["calleeId"], "bob");
    assert_eq!(first["type"], "video");
    assert_eq!(first["reason"], "answered");
    assert!(first["answeredAt"].as_f64().is_some(), "{first}");
    let reasons: Vec<&str> = on_a.iter().filter_map(|c| c["reason"].as_str()).collect();
    println!("bob's calls: {reasons:?}");
    for want in ["answered", "busy", "rejected"] {
        assert!(reasons.contains(&want), "{want} in {reasons:?}");
    }
    let answered = |prom| {
        metric(prom, r#"vigi_turn_calls_answered_total{type="video"}"#).unwrap_or(0.0)
            + metric(prom, r#"vigi_turn_calls_answered_total{type="voice"}"#).unwrap_or(0.0)
    };
    let (on_a, on_b) = (answered(prom_a), answered(prom_b));
    println!("answered: {on_a} on A, {on_b} on B");
    // alice–bob twice and dave–bob, each counted once, by the node of the one who answered.
    assert_eq!(on_a + on_b, 3.0, "{on_a} + {on_b}");
}

#[test]
fn killing_redis_mid_call_leaves_each_node_serving_its_own_users() {
    let redis_port = free_port();
    let mut redis = Some(start_redis_on(redis_port));
    let dir = test_dir("redis-outage");
    let (srv_a, sig_a, _, prom_a, log_a) = cluster_node(redis_port, &dir);
    let (_b, sig_b, _, prom_b, log_b) = cluster_node(redis_port, &dir);
    for prom in [prom_a, prom_b] {
        wait_until("redis up on both nodes", || {
            metric(prom, "vigi_turn_signaling_redis_up") == Some(1.0)
        });
    }
    let logged = |log: &Path, what: &str| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    let allocate_on_a = || {
        let cred = vigi_turn::engine::auth::mint_rest_credentials(
            REST_SECRET.as_bytes(),
            "zed",
            600,
            unix_now(),
            ':',
        );
        common::turn_client::raw_allocate_at(
            ([127, 0, 0, 1], srv_a.port).into(),
            &cred.username,
            &cred.password,
        )
        .0
    };
    let text = cross_node(sig_a, sig_b, "outage", |pause| match pause {
        "redis-down" => {
            let t = Instant::now();
            drop(redis.take());
            for (prom, log) in [(prom_a, &log_a), (prom_b, &log_b)] {
                wait_until("redis down on both nodes", || {
                    metric(prom, "vigi_turn_signaling_redis_up") == Some(0.0)
                });
                assert_eq!(
                    metric(prom, "vigi_turn_signaling_redis_outages_total"),
                    Some(1.0)
                );
                assert_eq!(
                    logged(log, "serves its own users alone"),
                    1,
                    "one line per outage"
                );
            }
            println!("# Redis killed: both nodes alone after {:?}", t.elapsed());
            // The relay does not mind.
            assert_eq!(allocate_on_a(), 0);
        }
        "redis-up" => {
            let t = Instant::now();
            redis = Some(start_redis_on(redis_port));
            for (prom, log) in [(prom_a, &log_a), (prom_b, &log_b)] {
                wait_until("redis back on both nodes", || {
                    metric(prom, "vigi_turn_signaling_redis_up") == Some(1.0)
                });
                assert_eq!(logged(log, "calls are shared across nodes again"), 1);
            }
            println!(
                "# Redis restarted: both nodes shared again after {:?}",
                t.elapsed()
            );
        }
        other => panic!("unexpected pause {other}"),
    });
    assert!(text.contains("ok - cross-node calls again"), "{text}");
    // Still one line per change, however long the outage lasted.
    assert_eq!(logged(&log_a, "serves its own users alone"), 1);
    assert_eq!(allocate_on_a(), 0);
}

#[test]
fn a_call_outlives_the_node_one_party_was_on() {
    let (_redis, redis_port) = start_redis();
    let dir = test_dir("node-restart");
    let (_a, sig_a, _, prom_a, _) = cluster_node(redis_port, &dir);
    let (b, sig_b, _, prom_b, _) = cluster_node(redis_port, &dir);
    for prom in [prom_a, prom_b] {
        wait_until("redis up on both nodes", || {
            metric(prom, "vigi_turn_signaling_redis_up") == Some(1.0)
        });
    }
    let mut b = Some(b);
    let text = cross_node(sig_a, sig_b, "restart", |pause| {
        assert_eq!(pause, "kill-b");
        // SIGKILL: node B has no chance to say anything to Redis.
        drop(b.take());
    });
    assert!(
        text.contains("ok - bob reconnects to A and the call goes on"),
        "{text}"
    );
}

/// The shared call state's Lua scripts against a real `redis-server`, as two nodes would use
/// them at the same moment: one of two callers wins a callee, one of two answers wins, and the
/// state ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_call_state_holds_under_races() {
    use vigi_turn::signal::calls::CallKind::{Video, Voice};
    use vigi_turn::signal::cluster::{Initiated, Link, Shared};
    let (_redis, port) = start_redis();
    let conn: vigi_turn::config::RedisConn = format!("ip=127.0.0.1 port={port}").parse().unwrap();
    let node = |id: &str| Shared::new(Link::new(conn.clone()), id.to_owned());
    let (a, b) = (node("A"), node("B"));
    assert!(a.link.probe().await && b.link.probe().await);
    let users = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    a.publish_presence(&users(&["alice"])).await.unwrap();
    b.publish_presence(&users(&["bob", "carol"])).await.unwrap();

    assert_eq!(
        a.initiate("c0", "alice", "zed", Voice).await.unwrap(),
        Initiated::Offline
    );
    let (r1, r2) = tokio::join!(
        a.initiate("c1", "alice", "bob", Video),
        b.initiate("c2", "carol", "bob", Voice)
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert!(
        matches!(
            (r1, r2),
            (Initiated::Ringing, Initiated::Busy) | (Initiated::Busy, Initiated::Ringing)
        ),
        "{r1:?} {r2:?}"
    );
    let (id, caller) = if r1 == Initiated::Ringing {
        ("c1", "alice")
    } else {
        ("c2", "carol")
    };
    assert_eq!(
        a.initiate("c3", caller, "carol", Voice).await.unwrap(),
        Initiated::AlreadyInCall
    );
    assert_eq!(
        a.peers(caller, "bob").await.unwrap().as_deref(),
        Some("ringing")
    );
    // bob answers on two devices at once: one answer wins.
    let (x, y) = tokio::join!(a.answer(id, "bob"), b.answer(id, "bob"));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x.is_ok() != y.is_ok(), "{x:?} {y:?}");
    assert_eq!(x.or(y).unwrap().0, caller);
    assert_eq!(a.answer(id, caller).await.unwrap(), Err("wrong_state"));
    assert_eq!(
        a.peers("bob", caller).await.unwrap().as_deref(),
        Some("active")
    );
    assert_eq!(a.peers("zed", "bob").await.unwrap(), None);
    assert_eq!(a.end(id, "zed", "end").await.unwrap(), Err("unknown_call"));
    // Renewing: the call goes on; a call that ended elsewhere is reported as such.
    let (gone, ended) = a.renew(&users(&[id, "c-old"])).await.unwrap();
    assert!(gone.is_empty());
    assert_eq!(ended, ["c-old"]);
    // bob's node stops vouching for him: nobody else does, so his call is to end.
    assert_eq!(b.went_offline("bob").await.unwrap().as_deref(), Some(id));
    let (gone, _) = a.renew(&users(&[id])).await.unwrap();
    assert_eq!(gone, [id]);
    let e = a.end(id, "", "disconnect").await.unwrap().unwrap();
    assert!(e.answered && e.answered_at.is_some());
    assert_eq!((e.caller.as_str(), e.callee.as_str()), (caller, "bob"));
    assert_eq!(a.state(id).await.unwrap(), None);
    // Both are free again.
    b.publish_presence(&users(&["bob"])).await.unwrap();
    assert_eq!(
        a.initiate("c4", caller, "bob", Voice).await.unwrap(),
        Initiated::Ringing
    );
    assert_eq!(
        a.end("c4", "bob", "reject")
            .await
            .unwrap()
            .map(|e| e.answered),
        Ok(false)
    );
}
