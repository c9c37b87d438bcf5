//! Soak (issue 9): churn thousands of allocations against the real binary (create, permission,
//! relay one message each way, refresh, then delete, or leave to expire) for about 30 s, and
//! assert that afterwards the process holds no more file descriptors than before, its RSS did
//! not grow past a small allowance, and every relay port is free again.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vigi_turn::engine::auth::key_md5;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

const USER: &str = "soak";
const PASS: &str = "soakpw";
const REALM: &str = "soak.local";
const THREADS: usize = 6;
const CHURN: Duration = Duration::from_secs(30);
/// At least this many allocations are churned, however long it takes (at most [`CHURN_MAX`]):
/// a loaded machine churns fewer in [`CHURN`], and the count is what the test is about.
const CHURN_MIN_ALLOCATIONS: u64 = 2000;
const CHURN_MAX: Duration = Duration::from_secs(300);
/// How long a request or relayed message may go unanswered (retransmitted every 500 ms) before
/// the life counts as failed: seconds, since a loaded machine can stall the server that long.
const ANSWER: Duration = Duration::from_secs(10);
/// Allocations live this long unless refreshed or deleted.
const LIFETIME: u32 = 3;
/// Clients and the echo peer live on another loopback address than the relays (127.0.0.1), so
/// their ephemeral ports never take a relay port the server wants to bind.
const CLIENT_IP: [u8; 4] = [127, 0, 0, 4];

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// Relay ports in `min..=max` that cannot be bound right now (held by someone: the server).
fn busy_ports(min: u16, max: u16) -> usize {
    (min..=max)
        .filter(|p| UdpSocket::bind(("127.0.0.1", *p)).is_err())
        .count()
}

struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    nonce: Vec<u8>,
}

impl Client {
    /// One request with credentials; the response (retransmitted every 500 ms, for at most
    /// [`ANSWER`]).
    fn request(&self, method: Method, fill: &dyn Fn(&mut MessageBuilder<'_>)) -> Option<Vec<u8>> {
        let tid: [u8; 12] = rand::random();
        let mut req = Vec::new();
        let mut b = MessageBuilder::new(&mut req, method, Class::Request, &tid);
        fill(&mut b);
        b.attr(attr::USERNAME, USER.as_bytes());
        b.attr(attr::REALM, REALM.as_bytes());
        b.attr(attr::NONCE, &self.nonce);
        b.integrity(&key_md5(USER, REALM, PASS));
        let mut buf = [0u8; 1500];
        let t0 = Instant::now();
        while t0.elapsed() < ANSWER {
            self.sock.send_to(&req, self.server).ok()?;
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                let Ok(n) = self.sock.recv(&mut buf) else {
                    continue;
                };
                if Message::decode(&buf[..n])
                    .is_ok_and(|m| m.transaction_id() == &tid && m.class() != Class::Indication)
                {
                    return Some(buf[..n].to_vec());
                }
            }
        }
        None
    }
}

fn ok(r: &Option<Vec<u8>>) -> bool {
    r.as_deref()
        .and_then(|r| Message::decode(r).ok())
        .is_some_and(|m| m.class() == Class::Success)
}

/// A nonce for this IP: one unauthenticated Allocate, answered 401.
fn fetch_nonce(server: SocketAddr) -> Vec<u8> {
    let s = UdpSocket::bind(SocketAddr::from((CLIENT_IP, 0))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = Vec::new();
    let mut b = MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &[1; 12]);
    b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
    s.send_to(&req, server).unwrap();
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).expect("401");
    Message::decode(&buf[..n])
        .unwrap()
        .get(attr::NONCE)
        .expect("NONCE")
        .to_vec()
}

#[derive(Default)]
struct Tally {
    allocations: AtomicU64,
    deleted: AtomicU64,
    left_to_expire: AtomicU64,
    relayed: AtomicU64,
    /// Allocates answered 508: the relay range was full of allocations left to expire.
    exhausted: AtomicU64,
    failures: AtomicU64,
    reasons: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Tally {
    fn fail(&self, step: &str, r: &Option<Vec<u8>>) -> bool {
        let key = format!("{step}: {:?}", r.as_ref().map(|_| code(r)));
        *self.reasons.lock().unwrap().entry(key).or_default() += 1;
        false
    }
}

fn code(r: &Option<Vec<u8>>) -> Option<u16> {
    let r = r.as_deref()?;
    let m = Message::decode(r).ok()?;
    attr::read_error_code(m.get(attr::ERROR_CODE)?).map(|(c, _)| c)
}

/// One allocation's life; false on any failure. An allocation left to expire keeps its socket in
/// `held` until it has, so the kernel does not hand its port (its 5-tuple) to the next one.
fn one_life(
    server: SocketAddr,
    nonce: &[u8],
    peer: SocketAddr,
    n: u64,
    tally: &Tally,
    held: &mut std::collections::VecDeque<(Instant, UdpSocket)>,
) -> bool {
    // Held 5 s past the lifetime, not 1: a server late with its expiry timers on a loaded
    // machine must not meet a new client on a 5-tuple it still serves (437).
    while held
        .front()
        .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(u64::from(LIFETIME) + 5))
    {
        held.pop_front();
    }
    let sock = UdpSocket::bind(SocketAddr::from((CLIENT_IP, 0))).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let c = Client {
        sock,
        server,
        nonce: nonce.to_vec(),
    };
    let r = c.request(Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
    });
    if code(&r) == Some(508) {
        tally.exhausted.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        return true;
    }
    if !ok(&r) {
        return tally.fail("allocate", &r);
    }
    tally.allocations.fetch_add(1, Ordering::Relaxed);
    let r = c.request(Method::CREATE_PERMISSION, &|b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
    });
    if !ok(&r) {
        return tally.fail("permission", &r);
    }
    // One message out through a Send indication, back as a Data indication.
    let payload = n.to_be_bytes();
    let mut ind = Vec::new();
    let mut b = MessageBuilder::new(&mut ind, Method::SEND, Class::Indication, &rand::random());
    b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
    b.attr(attr::DATA, &payload);
    let mut buf = [0u8; 1500];
    let mut echoed = false;
    let t0 = Instant::now();
    'send: while t0.elapsed() < ANSWER {
        c.sock.send_to(&ind, server).unwrap();
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let Ok(len) = c.sock.recv(&mut buf) else {
                continue;
            };
            if Message::decode(&buf[..len])
                .is_ok_and(|m| m.method() == Method::DATA && m.get(attr::DATA) == Some(&payload))
            {
                echoed = true;
                break 'send;
            }
        }
    }
    if !echoed {
        return tally.fail("echo", &None);
    }
    tally.relayed.fetch_add(1, Ordering::Relaxed);
    let r = c.request(Method::REFRESH, &|b| {
        b.attr_u32(attr::LIFETIME, LIFETIME);
    });
    if !ok(&r) {
        return tally.fail("refresh", &r);
    }
    if n % 4 == 0 {
        tally.left_to_expire.fetch_add(1, Ordering::Relaxed);
        held.push_back((Instant::now(), c.sock));
        return true;
    }
    let r = c.request(Method::REFRESH, &|b| {
        b.attr_u32(attr::LIFETIME, 0);
    });
    if !ok(&r) {
        return tally.fail("delete", &r);
    }
    tally.deleted.fetch_add(1, Ordering::Relaxed);
    true
}

/// Churn for `time` and until `min` allocations were made (at most [`CHURN_MAX`]) from THREADS
/// threads; the tally.
fn churn(
    server: SocketAddr,
    peer: SocketAddr,
    nonce: &[u8],
    time: Duration,
    min: u64,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (tally, nonce) = (tally.clone(), nonce.to_vec());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut n = t as u64;
                let mut held = std::collections::VecDeque::new();
                while t0.elapsed() < time
                    || (tally.allocations.load(Ordering::Relaxed) < min && t0.elapsed() < CHURN_MAX)
                {
                    if !one_life(server, &nonce, peer, n, &tally, &mut held) {
                        tally.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    n += THREADS as u64;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    tally
}

#[test]
fn churning_thousands_of_allocations_leaks_nothing() {
    let lifetime = LIFETIME.to_string();
    let args = ServerArgs::loopback()
        .realm(REALM)
        .user("soak:soakpw")
        .relay_ports(400)
        .args(&["--default-allocate-lifetime", &lifetime])
        .args(&["--max-allocate-lifetime", &lifetime])
        .args(&["--unauthorized-ratelimit", "0"])
        // One user stands for every churning client.
        .no_user_quota()
        .threads(2);
    let (min, max) = args.range();
    let srv = args.start();
    let pid = srv.proc.child.id();
    let server = SocketAddr::from(([127, 0, 0, 1], srv.port));
    // An echo peer.
    let peer_sock = UdpSocket::bind(SocketAddr::from((CLIENT_IP, 0))).unwrap();
    let peer = peer_sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        peer_sock
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = peer_sock.recv_from(&mut buf) {
                    let _ = peer_sock.send_to(&buf[..n], from);
                }
            }
        })
    };
    let nonce = fetch_nonce(server);
    let settle = Duration::from_secs(u64::from(LIFETIME) + 2);
    // Warm up (allocator pools, hash tables at their working size), let everything expire, and
    // take the baseline.
    let warm = churn(server, peer, &nonce, Duration::from_secs(5), 0);
    settle_down(settle, min, max);
    let (rss0, fds0, busy0) = (rss_kib(pid), fds(pid), busy_ports(min, max));
    let t = churn(server, peer, &nonce, CHURN, CHURN_MIN_ALLOCATIONS);
    settle_down(settle, min, max);
    let (rss1, fds1, busy1) = (rss_kib(pid), fds(pid), busy_ports(min, max));
    // Every port of the range can be allocated again (the pool lost none), bar those another
    // process holds right now.
    let holders: Vec<Client> = (0..(usize::from(max - min) + 1 - busy1))
        .map(|_| {
            let sock = UdpSocket::bind(SocketAddr::from((CLIENT_IP, 0))).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            Client {
                sock,
                server,
                nonce: nonce.clone(),
            }
        })
        .collect();
    let refill = Tally::default();
    let refilled = holders
        .iter()
        .filter(|c| {
            let r = c.request(Method::ALLOCATE, &|b| {
                b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
            });
            ok(&r) || refill.fail("refill", &r)
        })
        .count();
    eprintln!("refill failures: {:?}", refill.reasons.lock().unwrap());
    drop(holders);
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    let n = t.allocations.load(Ordering::Relaxed);
    eprintln!(
        "soak: warm-up {} allocations; churn {n} allocations in {CHURN:?} ({} deleted, {} left to \
         expire, {} relayed, {} answered 508, {} failures); RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}, busy \
         relay ports {busy0} -> {busy1} of {}, {refilled} allocated again at the end",
        warm.allocations.load(Ordering::Relaxed),
        t.deleted.load(Ordering::Relaxed),
        t.left_to_expire.load(Ordering::Relaxed),
        t.relayed.load(Ordering::Relaxed),
        t.exhausted.load(Ordering::Relaxed),
        t.failures.load(Ordering::Relaxed),
        max - min + 1,
    );
    assert!(n >= CHURN_MIN_ALLOCATIONS, "only {n} allocations churned");
    assert_eq!(
        t.failures.load(Ordering::Relaxed),
        0,
        "every life completed: {:?}",
        t.reasons.lock().unwrap()
    );
    assert_eq!(
        t.relayed.load(Ordering::Relaxed),
        n,
        "every message relayed"
    );
    assert_eq!(fds1, fds0, "file descriptors leaked");
    assert!(
        busy1 <= busy0,
        "relay ports still bound after every allocation ended"
    );
    assert_eq!(
        refilled,
        usize::from(max - min) + 1 - busy1,
        "the whole relay range can be allocated again"
    );
    assert!(
        rss1 <= rss0 + 4096,
        "RSS grew from {rss0} to {rss1} KiB over {n} allocations"
    );
    assert!(binding_udp(server, Duration::from_secs(10)).is_some());
}

/// Wait `settle` (every allocation left to expire has expired by then), and then, should the
/// server be late with its expiry timers on a loaded machine, until no relay port of
/// `min..=max` is bound (at most 60 s more; the assertions judge what is left after that).
fn settle_down(settle: Duration, min: u16, max: u16) {
    std::thread::sleep(settle);
    let t0 = Instant::now();
    while busy_ports(min, max) > 0 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
}
