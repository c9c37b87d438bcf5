//! Hostile input against the real binary (issue 9): while coturn's `turnutils_uclient` relays
//! through `turnutils_peer`, another source (127.0.0.2, so the per-IP limiter of the attacker is
//! not the client's) sends mutated and truncated packets of every message type over UDP and TCP,
//! half-written TCP frames, and TCP connections opened and left idle. The well-behaved client
//! must lose nothing, and the server must still answer afterwards.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vigi_turn::engine::auth::key_md5;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

const USER: &str = "bench";
const PASS: &str = "benchpw";
const REALM: &str = "bench.local";
/// Where the attacker comes from: another loopback address than the client's 127.0.0.1.
const ATTACKER_IP: [u8; 4] = [127, 0, 0, 2];
/// Bounds on the attack, whichever comes first, should the test never stop it: far beyond what
/// the clients take, so the attack lasts as long as they run, however slow the machine.
const MAX_PACKETS: u64 = 1_000_000;
const MAX_TIME: Duration = Duration::from_secs(600);

fn server() -> Server {
    // A relay range of its own: not in the kernel's ephemeral range, not shared with any other
    // server a test (of this binary or another running alongside) starts.
    ServerArgs::loopback()
        .realm(REALM)
        .user("bench:benchpw")
        .relay_ports(1000)
        .threads(2)
        .start()
}

/// The message kinds the attacker builds before mutating them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Binding,
    Allocate,
    Refresh,
    CreatePermission,
    ChannelBind,
    Send,
    ChannelData,
    Garbage,
}

const KINDS: [Kind; 8] = [
    Kind::Binding,
    Kind::Allocate,
    Kind::Refresh,
    Kind::CreatePermission,
    Kind::ChannelBind,
    Kind::Send,
    Kind::ChannelData,
    Kind::Garbage,
];

/// One well-formed message of `kind`, signed with the real credentials when `nonce` is known (so
/// mutated attribute values reach the handlers behind authentication), then mutated.
fn packet(rng: &mut StdRng, kind: Kind, nonce: Option<&[u8]>, peer: SocketAddr) -> Vec<u8> {
    let tid: [u8; 12] = rng.gen();
    let mut out = Vec::new();
    let method = match kind {
        Kind::Binding => Method::BINDING,
        Kind::Allocate => Method::ALLOCATE,
        Kind::Refresh => Method::REFRESH,
        Kind::CreatePermission => Method::CREATE_PERMISSION,
        Kind::ChannelBind => Method::CHANNEL_BIND,
        Kind::Send => Method::SEND,
        Kind::ChannelData => {
            let len = rng.gen_range(0..300usize);
            out.extend_from_slice(&rng.gen_range(0x4000u16..0x4010).to_be_bytes());
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend((0..len).map(|_| rng.gen::<u8>()));
            return mutate(rng, out);
        }
        Kind::Garbage => return (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect(),
    };
    let class = if kind == Kind::Send {
        Class::Indication
    } else {
        Class::Request
    };
    let mut b = MessageBuilder::new(&mut out, method, class, &tid);
    // Attribute values chosen a bit wrong on purpose.
    let odd = rng.gen_bool(0.3);
    match kind {
        Kind::Allocate => {
            let proto = if odd { rng.gen() } else { attr::PROTO_UDP };
            b.attr(attr::REQUESTED_TRANSPORT, &[proto, 0, 0, 0]);
            if rng.gen() {
                b.attr(attr::EVEN_PORT, &[if odd { 0x80 } else { 0 }]);
            }
            if rng.gen() {
                b.attr_u32(attr::LIFETIME, rng.gen_range(0..5));
            }
        }
        Kind::Refresh => {
            // Never LIFETIME 0 with good values: the attacker's own allocation should live.
            b.attr_u32(attr::LIFETIME, rng.gen_range(1..5000));
        }
        Kind::CreatePermission | Kind::Send => {
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
            if kind == Kind::Send {
                let len = rng.gen_range(0..200);
                b.attr(attr::DATA, &vec![0x55; len]);
            }
        }
        Kind::ChannelBind => {
            let n: u16 = if odd {
                rng.gen()
            } else {
                rng.gen_range(0x4000..0x4010)
            };
            b.attr(attr::CHANNEL_NUMBER, &[(n >> 8) as u8, n as u8, 0, 0]);
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        }
        _ => {}
    }
    if odd {
        let ty: u16 = rng.gen();
        let len = rng.gen_range(0..40);
        b.attr(ty, &vec![0xAB; len]);
    }
    if let Some(nonce) = nonce.filter(|_| kind != Kind::Send && kind != Kind::Binding) {
        b.attr(attr::USERNAME, USER.as_bytes());
        b.attr(attr::REALM, REALM.as_bytes());
        b.attr(attr::NONCE, nonce);
        b.integrity(&key_md5(USER, REALM, PASS));
    }
    if rng.gen() {
        b.fingerprint();
    }
    if rng.gen_bool(0.3) {
        out // well-formed (signed): goes all the way into the handlers
    } else {
        mutate(rng, out)
    }
}

/// Truncate, flip bytes, corrupt a length or append junk.
fn mutate(rng: &mut StdRng, mut p: Vec<u8>) -> Vec<u8> {
    match rng.gen_range(0..5) {
        0 if !p.is_empty() => {
            let n = rng.gen_range(0..p.len());
            p.truncate(n);
        }
        1 => {
            for _ in 0..rng.gen_range(1..6) {
                if !p.is_empty() {
                    let i = rng.gen_range(0..p.len());
                    p[i] ^= rng.gen_range(1..=255u8);
                }
            }
        }
        2 if p.len() >= 4 => {
            let v: u16 = rng.gen();
            p[2..4].copy_from_slice(&v.to_be_bytes());
        }
        3 if p.len() >= 26 => {
            // An attribute length field.
            let i = 20 + 2 + 4 * rng.gen_range(0..(p.len() - 22) / 4);
            if i + 2 <= p.len() {
                let v: u16 = rng.gen();
                p[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        _ => p.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>())),
    }
    p
}

/// A real allocation for the attacker (so authenticated, mutated requests have something to act
/// on); returns the nonce. Answers the 401 like any client.
fn attacker_allocate(sock: &UdpSocket, server: SocketAddr) -> Option<Vec<u8>> {
    // One request in flight at a time, so a slow answer is waited for, not taken for a loss.
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut nonce: Option<Vec<u8>> = None;
    let mut buf = [0u8; 1500];
    for _ in 0..4 {
        let tid: [u8; 12] = rand::random();
        let mut req = Vec::new();
        let mut b = MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &tid);
        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
        if let Some(n) = &nonce {
            b.attr(attr::USERNAME, USER.as_bytes());
            b.attr(attr::REALM, REALM.as_bytes());
            b.attr(attr::NONCE, n);
            b.integrity(&key_md5(USER, REALM, PASS));
        }
        sock.send_to(&req, server).ok()?;
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let m = Message::decode(&buf[..n]).ok()?;
        if m.class() == Class::Success {
            return nonce;
        }
        nonce = m.get(attr::NONCE).map(<[u8]>::to_vec);
    }
    None
}

#[derive(Default)]
struct Tally {
    /// Set once the attacker has its allocation and its idle connections: the attack is on.
    started: AtomicBool,
    udp: AtomicU64,
    tcp: AtomicU64,
    tcp_conns: AtomicU64,
    idle_conns: AtomicU64,
    answers: AtomicU64,
    /// Answers without MESSAGE-INTEGRITY (unauthenticated) matched to their request by
    /// transaction id, and the largest excess of such an answer over its request.
    unauthenticated_answers: AtomicU64,
    worst_excess: AtomicI64,
}

/// The attack; returns when `stop` is set or a bound is reached.
fn attack(server: SocketAddr, peer: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut rng = StdRng::seed_from_u64(0x9);
    let bind = SocketAddr::from((ATTACKER_IP, 0));
    let udp = UdpSocket::bind(bind).expect("bind 127.0.0.2");
    let nonce = attacker_allocate(&udp, server);
    assert!(nonce.is_some(), "attacker's own allocation failed");
    udp.set_nonblocking(true).unwrap();
    // Idle connections, opened first and held to the end.
    let mut idle = Vec::new();
    for _ in 0..50 {
        if let Ok(s) = tcp_from_attacker(server) {
            idle.push(s);
        }
    }
    tally.idle_conns.store(idle.len() as u64, Ordering::Relaxed);
    tally.started.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut buf = [0u8; 1500];
    let mut sizes: std::collections::HashMap<[u8; 12], usize> = std::collections::HashMap::new();
    while !stop.load(Ordering::Relaxed) && sent < MAX_PACKETS && t0.elapsed() < MAX_TIME {
        let kind = KINDS[rng.gen_range(0..KINDS.len())];
        let p = packet(&mut rng, kind, nonce.as_deref(), peer);
        if rng.gen_bool(0.9) {
            if p.len() >= 20 {
                sizes.insert(p[8..20].try_into().unwrap(), p.len());
            }
            let _ = udp.send_to(&p, server);
            tally.udp.fetch_add(1, Ordering::Relaxed);
        } else {
            // A TCP connection: a few frames, maybe a half-written one, then close or keep.
            if let Ok(mut s) = tcp_from_attacker(server) {
                tally.tcp_conns.fetch_add(1, Ordering::Relaxed);
                for _ in 0..rng.gen_range(1..5) {
                    let k = KINDS[rng.gen_range(0..KINDS.len())];
                    let mut f = packet(&mut rng, k, nonce.as_deref(), peer);
                    if rng.gen_bool(0.3) {
                        f.truncate(rng.gen_range(0..=f.len())); // half-written
                    }
                    let _ = s.write_all(&f);
                    tally.tcp.fetch_add(1, Ordering::Relaxed);
                }
                if rng.gen_bool(0.2) && idle.len() < 100 {
                    idle.push(s);
                }
            }
        }
        sent += 1;
        while let Ok((n, _)) = udp.recv_from(&mut buf) {
            tally.answers.fetch_add(1, Ordering::Relaxed);
            // ChannelData and Data indications relayed back from the peer are not answers.
            let Ok(m) = Message::decode(&buf[..n]) else {
                continue;
            };
            if m.has_integrity() || m.class() == Class::Indication {
                continue;
            }
            if let Some(&len) = sizes.get(m.transaction_id()) {
                let excess = n as i64 - len as i64;
                assert!(
                    excess <= vigi_turn::engine::server::AMPLIFICATION_SLACK as i64,
                    "{n}-byte unauthenticated answer to a {len}-byte request"
                );
                tally
                    .unauthenticated_answers
                    .fetch_add(1, Ordering::Relaxed);
                tally.worst_excess.fetch_max(excess, Ordering::Relaxed);
            }
        }
        // About 1000 packets a second: hostile but not a benchmark of loopback.
        if sent % 10 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    tally.idle_conns.store(idle.len() as u64, Ordering::Relaxed);
    drop(idle);
}

fn tcp_from_attacker(server: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((ATTACKER_IP, 0)).into())?;
    s.connect_timeout(&server.into(), Duration::from_secs(1))?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    Ok(s)
}

#[test]
fn client_loses_nothing_while_hostile_traffic_flows() {
    let srv = server();
    let (_peer, pport) = start_peer();
    let server_addr = SocketAddr::from(([127, 0, 0, 1], srv.port));
    let peer_addr = SocketAddr::from(([127, 0, 0, 1], pport));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let attacker = {
        let (stop, tally) = (stop.clone(), tally.clone());
        std::thread::spawn(move || attack(server_addr, peer_addr, stop, tally))
    };
    // The clients run once the attack is on (not after a guessed delay).
    let t0 = Instant::now();
    while !tally.started.load(Ordering::Relaxed) {
        assert!(!attacker.is_finished(), "the attacker failed to start");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the attack never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let lt = ["-u", USER, "-w", PASS];
    for extra in [
        &["-m", "2", "-n", "50", "-l", "100"][..],
        &["-t", "-m", "2", "-n", "50", "-l", "100"],
        &["-c", "-m", "2", "-n", "50", "-l", "100"],
    ] {
        assert!(
            !attacker.is_finished(),
            "attack ended before the client ran"
        );
        let r = uclient(srv.port, pport, &[&lt[..], extra].concat());
        assert_eq!(r.sent, 100, "sent count ({extra:?}); output:\n{}", r.output);
        assert_eq!(
            r.received, r.sent,
            "all echoed ({extra:?}); output:\n{}",
            r.output
        );
        assert!(
            r.lost_line.contains("Total lost packets 0 "),
            "no loss ({extra:?}); output:\n{}",
            r.output
        );
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("attacker thread");
    eprintln!(
        "attack: {} UDP packets, {} TCP frames on {} connections, {} idle connections, {} UDP \
         answers, {} unauthenticated ones matched to their request, largest excess {} bytes",
        tally.udp.load(Ordering::Relaxed),
        tally.tcp.load(Ordering::Relaxed),
        tally.tcp_conns.load(Ordering::Relaxed),
        tally.idle_conns.load(Ordering::Relaxed),
        tally.answers.load(Ordering::Relaxed),
        tally.unauthenticated_answers.load(Ordering::Relaxed),
        tally.worst_excess.load(Ordering::Relaxed),
    );
    assert!(tally.unauthenticated_answers.load(Ordering::Relaxed) > 100);
    assert!(
        tally.udp.load(Ordering::Relaxed) > 500,
        "the attack did run"
    );
    // Still serving: STUN answers, and a fresh TURN client relays everything.
    assert!(
        binding_udp(server_addr, Duration::from_secs(10)).is_some(),
        "server answers Binding after the attack"
    );
    let r = uclient(
        srv.port,
        pport,
        &[&lt[..], &["-m", "1", "-n", "20", "-l", "100"]].concat(),
    );
    // -m 1 is a pair of clients talking through the relay: 2 × 20.
    assert_eq!(r.sent, 40, "after the attack; output:\n{}", r.output);
    assert_eq!(r.received, 40, "after the attack; output:\n{}", r.output);
    let mut proc = srv.proc;
    assert!(
        proc.child.try_wait().unwrap().is_none(),
        "vigi-turn is still running"
    );
}

/// `--unauthorized-ratelimit` on the real binary: a source sending many unauthenticated
/// Allocates gets its burst answered and then silence; every answer stays within the
/// amplification bound; another source is still served.
#[test]
fn unauthenticated_flood_is_rate_limited_and_never_amplified() {
    let srv = start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "--realm",
        REALM,
        "--lt-cred-mech",
        "--user",
        "bench:benchpw",
        "--unauthorized-ratelimit",
        "5",
        "-m",
        "1",
    ]);
    let server_addr = SocketAddr::from(([127, 0, 0, 1], srv.port));
    let sock = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 3], 0))).expect("bind 127.0.0.3");
    let t0 = Instant::now();
    let mut req = Vec::new();
    let mut b = MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &[1; 12]);
    b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
    for _ in 0..300 {
        sock.send_to(&req, server_addr).unwrap();
    }
    // The burst's answers may be slow to come on a loaded machine: wait for them (at most 30 s);
    // after that, one quiet second means the server has nothing more to say.
    let mut answers = 0;
    let mut last_answer = Duration::ZERO;
    let mut buf = [0u8; 1500];
    loop {
        let wait = if answers < 25 {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(1)
        };
        sock.set_read_timeout(Some(wait)).unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            break;
        };
        answers += 1;
        last_answer = t0.elapsed();
        assert!(
            n <= req.len() + vigi_turn::engine::server::AMPLIFICATION_SLACK,
            "{n}-byte answer to a {}-byte request",
            req.len()
        );
        let m = Message::decode(&buf[..n]).expect("answer decodes");
        assert_eq!(m.class(), Class::Error);
    }
    // Burst of 5 s × 5/s, plus what refilled until the last answer (the quiet second after it
    // refills the bucket, but no request is left to spend it on).
    let secs = last_answer.as_secs_f64();
    let most = 25 + (secs * 5.0).ceil() as usize + 1;
    eprintln!("300 Allocates in {secs:.2} s: {answers} answered (at most {most})");
    assert!(answers >= 25 && answers <= most, "{answers} answers");
    assert!(binding_udp(server_addr, Duration::from_secs(10)).is_some());
}

/// Slowloris over TCP: a frame dribbled a byte at a time is cut after 10 s (the frame timeout),
/// while a connection that completes a Binding every 2 s stays open.
#[test]
fn tcp_frame_dribbled_too_slowly_is_cut() {
    let srv = start_server(&["-n", "-L", "127.0.0.1", "--no-auth", "-m", "1"]);
    let server = SocketAddr::from(([127, 0, 0, 1], srv.port));
    let mut req = Vec::new();
    let mut b = MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &[1; 12]);
    b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
    let mut slow = TcpStream::connect(server).unwrap();
    let mut good = TcpStream::connect(server).unwrap();
    slow.write_all(&req[..10]).unwrap();
    let t0 = Instant::now();
    let mut binding = Vec::new();
    MessageBuilder::new(&mut binding, Method::BINDING, Class::Request, &[2; 12]);
    // A slow answer is waited for: only a closed connection fails the good one.
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.set_nonblocking(true).unwrap();
    let mut cut_after = None;
    let mut sent = 10;
    let mut buf = [0u8; 1500];
    // Every 2 s a byte on the slow connection and a Binding on the good one, for 16 s; in
    // between, the slow one is watched every 50 ms, so its cut is timed to within 50 ms and not
    // to the 2 s step (beyond 16 s only while the cut is still awaited, at most 20 s).
    let mut step = 1;
    while t0.elapsed() < Duration::from_secs(16)
        || (cut_after.is_none() && t0.elapsed() < Duration::from_secs(20))
    {
        std::thread::sleep(Duration::from_millis(50));
        if cut_after.is_none() {
            match std::io::Read::read(&mut slow, &mut buf) {
                Ok(0) => cut_after = Some(t0.elapsed()),
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    cut_after = Some(t0.elapsed())
                }
                _ => {}
            }
        }
        if t0.elapsed() < Duration::from_secs(2 * step) {
            continue;
        }
        step += 1;
        if cut_after.is_none() && sent < req.len() - 1 {
            // One more byte; never the last one.
            if slow.write_all(&req[sent..sent + 1]).is_err() {
                cut_after = Some(t0.elapsed());
            }
            sent += 1;
        }
        if t0.elapsed() < Duration::from_secs(16) {
            good.write_all(&binding).unwrap();
            let n = std::io::Read::read(&mut good, &mut buf).expect("Binding answered");
            assert!(n >= 20, "the well-behaved connection stays open");
        }
    }
    let cut = cut_after.expect("the dribbling connection was closed");
    eprintln!("dribbling connection closed after {cut:?}");
    // 10 s after its first byte (just before t0), and not much later: seconds of slack for a
    // loaded machine, not the 6 s beyond which the server would plainly not be cutting it.
    assert!(
        cut >= Duration::from_secs(9) && cut <= Duration::from_secs(15),
        "{cut:?}"
    );
}
