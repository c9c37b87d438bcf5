//! The admin HTTP API against the real binary: the live allocation is listed with its counters,
//! killing it ends it (the client's next Refresh gets 437), and a wrong or missing bearer token
//! gets 401.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

const TOKEN: &str = "admin-test-token-0123456789";

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn admin_server() -> (Server, u16) {
    admin_server_with(&["--no-auth"])
}

fn admin_server_with(auth: &[&str]) -> (Server, u16) {
    let admin_port = free_port();
    let listen = format!("127.0.0.1:{admin_port}");
    let srv = ServerArgs::bare()
        .args(&["-L", "127.0.0.1"])
        .args(auth)
        .arg("--allow-loopback-peers")
        .realm("admin.local")
        .threads(2)
        .args(&["--admin-listen", &listen, "--admin-token", TOKEN])
        .start();
    (srv, admin_port)
}

/// A request on `s` to `server`; the answer.
fn request(
    s: &UdpSocket,
    server: SocketAddr,
    method: Method,
    build: impl Fn(&mut MessageBuilder),
) -> Vec<u8> {
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    let mut b = MessageBuilder::new(&mut req, method, Class::Request, &tid);
    build(&mut b);
    s.send_to(&req, server).unwrap();
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, _) = s.recv_from(&mut buf).expect("answer");
        let m = Message::decode(&buf[..n]).expect("STUN answer");
        if m.transaction_id() == &tid {
            buf.truncate(n);
            return buf;
        }
    }
}

/// How long the server may take to show or apply something (snapshots are published once a
/// second and kills travel to the worker through a channel; a loaded machine adds seconds).
const WITHIN: Duration = Duration::from_secs(30);

/// Call `f` every 100 ms until it returns `Some`, at most [`WITHIN`]; `what` names it if never.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < WITHIN, "{what} within {WITHIN:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn error_code(answer: &[u8]) -> Option<u16> {
    let m = Message::decode(answer).unwrap();
    m.get(attr::ERROR_CODE)
        .and_then(attr::read_error_code)
        .map(|(c, _)| c)
}

#[test]
fn list_shows_counters_and_kill_ends_the_allocation() {
    let (srv, admin) = admin_server();
    let server = SocketAddr::from(([127, 0, 0, 1], srv.port));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let peer_addr = peer.local_addr().unwrap();

    let a = request(&client, server, Method::ALLOCATE, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(Message::decode(&a).unwrap().class(), Class::Success);
    let p = request(&client, server, Method::CREATE_PERMISSION, |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr);
    });
    assert_eq!(Message::decode(&p).unwrap().class(), Class::Success);
    // Three Send indications of 100 bytes each reach the peer.
    for _ in 0..3 {
        let tid: [u8; 12] = rand::random();
        let mut ind = Vec::new();
        MessageBuilder::new(&mut ind, Method::SEND, Class::Indication, &tid)
            .xor_address(attr::XOR_PEER_ADDRESS, &peer_addr)
            .attr(attr::DATA, &[7u8; 100]);
        client.send_to(&ind, server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = peer.recv_from(&mut buf).expect("relayed to peer");
        assert_eq!(n, 100);
    }

    // The list (snapshots are published once a second).
    let t0 = Instant::now();
    let alloc = loop {
        let (status, body) = http(admin, "GET", "/api/allocations", &bearer(Some(TOKEN)));
        assert_eq!(status, 200, "{body}");
        let v = json(&body);
        let list = v["allocations"].as_array().unwrap().clone();
        if let Some(a) = list
            .into_iter()
            .find(|a| a["traffic"]["rcv"]["packets"] == 3)
        {
            break a;
        }
        assert!(t0.elapsed() < WITHIN, "not listed: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alloc["traffic"]["rcv"]["bytes"], 300);
    assert_eq!(alloc["traffic"]["peer_sent"]["bytes"], 300);
    assert_eq!(alloc["traffic"]["peer_sent"]["packets"], 3);
    assert_eq!(alloc["transport"], "udp");
    assert_eq!(alloc["realm"], "admin.local");
    assert_eq!(alloc["permissions"], 1);
    assert_eq!(
        alloc["client"].as_str().unwrap(),
        client.local_addr().unwrap().to_string()
    );
    assert!(alloc["started_unix"].as_u64().unwrap() > 1_600_000_000);
    let id = alloc["id"].as_str().unwrap().to_owned();

    // Filter by user: nobody is called "nobody".
    let (_, body) = http(
        admin,
        "GET",
        "/api/allocations?user=nobody",
        &bearer(Some(TOKEN)),
    );
    assert_eq!(json(&body)["allocations"].as_array().unwrap().len(), 0);

    // Stats add up.
    let (status, body) = http(admin, "GET", "/api/stats", &bearer(Some(TOKEN)));
    assert_eq!(status, 200);
    let st = json(&body);
    assert_eq!(st["allocations"], 1);
    assert_eq!(st["traffic"]["peer_sent"]["bytes"], 300);

    // Kill: the allocation ends, and the client's next Refresh gets 437.
    let (status, body) = http(
        admin,
        "DELETE",
        &format!("/api/allocations/{id}"),
        &bearer(Some(TOKEN)),
    );
    assert_eq!(status, 200, "{body}");
    // The kill reaches the worker through a channel: the Refresh gets 437 once it has.
    eventually("refresh after kill answered 437", || {
        let r = request(&client, server, Method::REFRESH, |_| {});
        (error_code(&r) == Some(437)).then_some(())
    });
    // Gone from the list once the worker publishes again.
    eventually("gone from the list (404)", || {
        let (status, _) = http(
            admin,
            "DELETE",
            &format!("/api/allocations/{id}"),
            &bearer(Some(TOKEN)),
        );
        assert!(status == 200 || status == 404, "{status}");
        (status == 404).then_some(())
    });
    let (status, _) = http(
        admin,
        "DELETE",
        "/api/allocations/bogus",
        &bearer(Some(TOKEN)),
    );
    assert_eq!(status, 400);
}

/// A long-term-credential client: its socket, and what it signs requests with.
struct LtClient {
    sock: UdpSocket,
    server: SocketAddr,
    user: &'static str,
    key: [u8; 16],
    nonce: Vec<u8>,
}

const REALM: &str = "admin.local";

impl LtClient {
    /// Allocate (after the 401 challenge) as `user`.
    fn allocate(server: SocketAddr, user: &'static str, password: &str) -> LtClient {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let challenge = request(&sock, server, Method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        assert_eq!(error_code(&challenge), Some(401));
        let nonce = Message::decode(&challenge)
            .unwrap()
            .get(attr::NONCE)
            .expect("nonce")
            .to_vec();
        let c = LtClient {
            sock,
            server,
            user,
            key: vigi_turn::engine::auth::key_md5(user, REALM, password),
            nonce,
        };
        let a = c.signed(Method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        assert_eq!(error_code(&a), None, "allocate as {user}");
        c
    }

    fn signed(&self, method: Method, build: impl Fn(&mut MessageBuilder)) -> Vec<u8> {
        request(&self.sock, self.server, method, |b| {
            build(b);
            b.attr(attr::USERNAME, self.user.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, &self.nonce)
                .integrity(&self.key);
        })
    }

    fn refresh_error(&self) -> Option<u16> {
        error_code(&self.signed(Method::REFRESH, |_| {}))
    }
}

#[test]
fn kill_by_user() {
    // A name no other test process on the machine uses (a port number is unique only within
    // this process).
    let log = std::env::temp_dir().join(format!(
        "vigi-admin-test-{}-{:x}.log",
        std::process::id(),
        rand::random::<u64>()
    ));
    let log_s = log.to_str().unwrap().to_owned();
    let (srv, admin) = admin_server_with(&[
        "--lt-cred-mech",
        "--user",
        "alice:alicepw",
        "--user",
        "bob:bobpw",
        "--log-file",
        &log_s,
        "--log-json",
    ]);
    let server = SocketAddr::from(([127, 0, 0, 1], srv.port));
    let alice1 = LtClient::allocate(server, "alice", "alicepw");
    let alice2 = LtClient::allocate(server, "alice", "alicepw");
    let bob = LtClient::allocate(server, "bob", "bobpw");
    // Listed once both workers have published (once a second each).
    let (listed, body) = eventually("alice's two allocations listed", || {
        let (_, body) = http(
            admin,
            "GET",
            "/api/allocations?user=alice",
            &bearer(Some(TOKEN)),
        );
        let listed = json(&body)["allocations"].as_array().unwrap().clone();
        (listed.len() >= 2).then_some((listed, body))
    });
    assert_eq!(listed.len(), 2, "{body}");
    assert!(listed.iter().all(|a| a["username"] == "alice"));

    let (status, body) = http(
        admin,
        "DELETE",
        "/api/users/alice/allocations",
        &bearer(Some(TOKEN)),
    );
    assert_eq!(status, 200);
    assert_eq!(json(&body)["killed"].as_array().unwrap().len(), 2, "{body}");
    // The kills reach the workers through channels: each Refresh gets 437 once they have.
    for alice in [&alice1, &alice2] {
        eventually("alice's refresh answered 437", || {
            (alice.refresh_error() == Some(437)).then_some(())
        });
    }
    assert_eq!(bob.refresh_error(), None, "bob's allocation lives on");

    // The log: JSON lines, coturn's session-end lines with the reason, and at the default level
    // neither usernames nor passwords.
    let text = std::fs::read_to_string(&log).expect("log file");
    let _ = std::fs::remove_file(&log);
    let messages: Vec<String> = text
        .lines()
        .map(|l| {
            json(l)["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.contains(": new, realm=<admin.local>, username=<->"))
            .count(),
        3,
        "{text}"
    );
    let closed: Vec<&String> = messages
        .iter()
        .filter(|m| m.contains("closed (2nd stage), user <-> realm <admin.local>"))
        .collect();
    assert_eq!(closed.len(), 2, "{text}");
    assert!(closed
        .iter()
        .all(|m| m.contains("reason: killed by operator")));
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.contains(": usage: realm="))
            .count(),
        2
    );
    assert!(!text.contains("alice") && !text.contains("bobpw"), "{text}");
}

#[test]
fn wrong_or_missing_token_is_401() {
    let (_srv, admin) = admin_server();
    for token in [None, Some("wrong"), Some("admin-test-token-012345678")] {
        for (method, path) in [
            ("GET", "/api/allocations"),
            ("GET", "/api/stats"),
            ("DELETE", "/api/allocations/w0-0-0"),
            ("DELETE", "/api/users/x/allocations"),
        ] {
            let (status, body) = http(admin, method, path, &bearer(token));
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
        }
    }
    let (status, _) = http(admin, "GET", "/api/stats", &bearer(Some(TOKEN)));
    assert_eq!(status, 200);
}

#[test]
fn admin_listen_without_token_refuses_to_start() {
    let port = free_port();
    let out = Command::new(BIN)
        .args(["-n", "-L", "127.0.0.1", "-p", &port.to_string()])
        .args(["--admin-listen", "127.0.0.1:1"])
        .env_remove("VIGI_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .output()
        .expect("run vigi-turn");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-listen"), "{err}");
}
