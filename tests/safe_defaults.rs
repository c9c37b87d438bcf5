//! Issue 15, safe by default: with nothing but default flags, a credential holder cannot make
//! the relay reach the operator's private network or the relay itself, over UDP permissions or
//! RFC 6062 Connect, while a public peer is still relayed to (so nothing passes by refusing
//! everything), and `--allowed-peer-ip` opens a private range on purpose.
//!
//! Everything runs inside a network namespace this test creates (root and `ip` needed, as for
//! tests/fleet.rs): its loopback carries a "private service" on 10.0.0.5 (a TCP listener standing
//! for an internal Redis), a "public peer" on 100.128.0.1 and the relay on 100.128.0.2. The
//! namespace has no link to anything else, so no packet can leave it. The test's own sockets are
//! made on a thread that entered the namespace (setns).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Netns, Proc, BIN};
use vigi_turn::engine::auth::key_md5;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

const PRIVATE: [u8; 4] = [10, 0, 0, 5];
const PUBLIC_PEER: [u8; 4] = [100, 128, 0, 1];
const RELAY: [u8; 4] = [100, 128, 0, 2];
const PORT: u16 = 3478;
const REALM: &str = "safe.test";

/// A network namespace with the three addresses on its loopback; deleted when dropped.
struct Ns(Netns);

impl Ns {
    fn new() -> Ns {
        let ns = Netns::new("vsafe");
        for a in [PRIVATE, PUBLIC_PEER, RELAY] {
            let a = format!("{}/32", IpAddr::from(a));
            ns.ip(&["addr", "add", &a, "dev", "lo"]);
        }
        Ns(ns)
    }

    /// Run `f` on a thread inside the namespace: every socket it makes lives there.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0.run(f)
    }

    /// vigi-turn in the namespace on RELAY:3478 with default peer rules plus `extra`.
    fn server(&self, extra: &[&str]) -> Proc {
        let relay = IpAddr::from(RELAY).to_string();
        let child = self
            .0
            .command(BIN)
            .args(["-n", "-L", &relay])
            .args(["--relay-ip", &relay, "-p", "3478", "-r", REALM])
            .args(["--user", "alice:alicepw", "-m", "1"])
            .args(["--min-port", "50000", "--max-port", "50100"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vigi-turn in the namespace");
        let mut proc = Proc {
            child,
            name: "vigi-turn".into(),
        };
        let up = self.run(|| {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20) {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut req = Vec::new();
                MessageBuilder::new(&mut req, Method::BINDING, Class::Request, &rand::random());
                s.send_to(&req, SocketAddr::from((RELAY, PORT))).unwrap();
                if s.recv(&mut [0u8; 512]).is_ok() {
                    return true;
                }
            }
            false
        });
        if let Some(st) = proc.child.try_wait().unwrap() {
            panic!("vigi-turn exited: {st}");
        }
        assert!(up, "vigi-turn did not answer STUN in the namespace");
        proc
    }
}

/// A TURN client speaking raw STUN over UDP or TCP (one request at a time), signed with the
/// long-term key once the first 401 gave it REALM and NONCE.
struct Client {
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    nonce: Vec<u8>,
}

impl Client {
    fn udp() -> Client {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(SocketAddr::from((RELAY, PORT))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            udp: Some(s),
            tcp: None,
            nonce: Vec::new(),
        }
    }

    fn tcp() -> Client {
        let s = TcpStream::connect(SocketAddr::from((RELAY, PORT))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            udp: None,
            tcp: Some(s),
            nonce: Vec::new(),
        }
    }

    fn exchange(&mut self, req: &[u8]) -> Vec<u8> {
        if let Some(s) = &self.udp {
            s.send(req).unwrap();
            let mut buf = vec![0u8; 1500];
            let n = s.recv(&mut buf).expect("answer over UDP");
            buf.truncate(n);
            return buf;
        }
        let s = self.tcp.as_mut().unwrap();
        s.write_all(req).unwrap();
        let mut head = [0u8; 20];
        s.read_exact(&mut head).expect("answer over TCP");
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let mut buf = head.to_vec();
        buf.resize(20 + len, 0);
        s.read_exact(&mut buf[20..]).unwrap();
        buf
    }

    /// Send `method` with `fill`'s attributes, signed; the error code (0 on success) and the
    /// answer. A 401 (or 438) is answered once with the server's NONCE.
    fn request(&mut self, method: Method, fill: &dyn Fn(&mut MessageBuilder)) -> (u16, Vec<u8>) {
        let key = key_md5("alice", REALM, "alicepw");
        for _ in 0..2 {
            let mut req = Vec::new();
            let mut b = MessageBuilder::new(&mut req, method, Class::Request, &rand::random());
            fill(&mut b);
            if !self.nonce.is_empty() {
                b.attr(attr::USERNAME, b"alice")
                    .attr(attr::REALM, REALM.as_bytes())
                    .attr(attr::NONCE, &self.nonce)
                    .integrity(&key);
            }
            let raw = self.exchange(&req);
            let m = Message::decode(&raw).expect("a STUN answer");
            let code = m
                .get(attr::ERROR_CODE)
                .and_then(attr::read_error_code)
                .map_or(0, |c| c.0);
            if code == 401 || code == 438 {
                self.nonce = m.get(attr::NONCE).expect("NONCE").to_vec();
                continue;
            }
            return (code, raw);
        }
        panic!("{method:?}: still 401 with the server's nonce");
    }

    fn allocate(&mut self, proto: u8) -> u16 {
        self.request(Method::ALLOCATE, &|b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[proto, 0, 0, 0]);
        })
        .0
    }

    fn permit(&mut self, peer: SocketAddr) -> u16 {
        self.request(Method::CREATE_PERMISSION, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        })
        .0
    }

    fn connect(&mut self, peer: SocketAddr) -> u16 {
        self.request(Method::CONNECT, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        })
        .0
    }
}

/// Whether `listener` gets a connection within a few seconds.
fn accepted(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if listener.accept().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn defaults_refuse_private_and_own_addresses_and_relay_to_public_peers() {
    let ns = Ns::new();
    let _srv = ns.server(&[]);
    ns.run(|| {
        let redis = TcpListener::bind(SocketAddr::from((PRIVATE, 6379))).unwrap();
        let public_tcp = TcpListener::bind(SocketAddr::from((PUBLIC_PEER, 7000))).unwrap();
        let public_udp = UdpSocket::bind(SocketAddr::from((PUBLIC_PEER, 7001))).unwrap();
        public_udp
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();

        // UDP: permissions for the private service, loopback and the relay itself are 403.
        let mut c = Client::udp();
        assert_eq!(c.allocate(attr::PROTO_UDP), 0, "allocate");
        for bad in [
            SocketAddr::from((PRIVATE, 6379)),
            SocketAddr::from(([127, 0, 0, 1], 9641)),
            SocketAddr::from((RELAY, PORT)),
            SocketAddr::from(([192, 168, 1, 1], 80)),
            SocketAddr::from(([169, 254, 169, 254], 80)),
        ] {
            assert_eq!(c.permit(bad), 403, "permission for {bad}");
        }
        // A public peer is relayed to: a Send indication reaches it from the relay.
        let peer = public_udp.local_addr().unwrap();
        assert_eq!(c.permit(peer), 0, "permission for the public peer");
        let mut send = Vec::new();
        MessageBuilder::new(&mut send, Method::SEND, Class::Indication, &rand::random())
            .xor_address(attr::XOR_PEER_ADDRESS, &peer)
            .attr(attr::DATA, b"hello public peer");
        c.udp.as_ref().unwrap().send(&send).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = public_udp.recv_from(&mut buf).expect("relayed datagram");
        assert_eq!(&buf[..n], b"hello public peer");
        assert_eq!(from.ip(), IpAddr::from(RELAY));

        // RFC 6062: Connect to the internal "Redis" and to the server's own listener is 403,
        // and nothing reaches the private listener; a public TCP peer is connected.
        let mut t = Client::tcp();
        assert_eq!(t.allocate(attr::PROTO_TCP), 0, "TCP allocate");
        assert_eq!(t.connect(SocketAddr::from((PRIVATE, 6379))), 403);
        assert_eq!(t.connect(SocketAddr::from((RELAY, PORT))), 403);
        assert_eq!(t.connect(public_tcp.local_addr().unwrap()), 0);
        assert!(accepted(&public_tcp), "the public peer was connected");
        assert!(!accepted(&redis), "nothing may reach the private service");
    });
}

#[test]
fn allowed_peer_ip_opens_a_private_range_on_purpose() {
    let ns = Ns::new();
    let _srv = ns.server(&["--allowed-peer-ip", "10.0.0.0/8"]);
    ns.run(|| {
        let redis = TcpListener::bind(SocketAddr::from((PRIVATE, 6379))).unwrap();
        let mut c = Client::udp();
        assert_eq!(c.allocate(attr::PROTO_UDP), 0);
        assert_eq!(c.permit(SocketAddr::from((PRIVATE, 1))), 0);
        // Only the range opened: other private ranges and the relay itself stay shut.
        assert_eq!(c.permit(SocketAddr::from(([192, 168, 1, 1], 80))), 403);
        assert_eq!(c.permit(SocketAddr::from((RELAY, PORT))), 403);
        let mut t = Client::tcp();
        assert_eq!(t.allocate(attr::PROTO_TCP), 0);
        assert_eq!(t.connect(SocketAddr::from((PRIVATE, 6379))), 0);
        assert!(accepted(&redis), "the opened private service was connected");
    });
}

/// RFC 6062 pipes honour `--max-bps` as UDP relays do: 60,000 bytes from a peer through a pipe
/// capped at 20,000 B/s take about 2 s (the first second's worth passes at once), arrive whole
/// and in order. (A lower bound only: a loaded machine can make it slower, never faster.)
#[test]
fn rfc6062_pipes_honour_max_bps() {
    let ns = Ns::new();
    let _srv = ns.server(&["--max-bps", "20000"]);
    ns.run(|| {
        let public_tcp = TcpListener::bind(SocketAddr::from((PUBLIC_PEER, 7000))).unwrap();
        let mut control = Client::tcp();
        assert_eq!(control.allocate(attr::PROTO_TCP), 0);
        let (code, raw) = control.request(Method::CONNECT, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, &public_tcp.local_addr().unwrap());
        });
        assert_eq!(code, 0, "Connect");
        let cid = Message::decode(&raw)
            .unwrap()
            .get(attr::CONNECTION_ID)
            .expect("CONNECTION-ID")
            .to_vec();
        let (mut peer, _) = public_tcp.accept().expect("the relay connects to the peer");
        // ConnectionBind on a new connection turns it into the pipe.
        let mut data = Client::tcp();
        data.nonce = control.nonce.clone();
        let (code, _) = data.request(Method::CONNECTION_BIND, &|b| {
            b.attr(attr::CONNECTION_ID, &cid);
        });
        assert_eq!(code, 0, "ConnectionBind");
        let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let t0 = Instant::now();
        let writer = {
            let payload = payload.clone();
            std::thread::spawn(move || peer.write_all(&payload).map(|_| peer))
        };
        let mut got = vec![0u8; payload.len()];
        let s = data.tcp.as_mut().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.read_exact(&mut got)
            .expect("the whole payload through the pipe");
        let took = t0.elapsed();
        assert!(got == payload, "bytes intact and in order");
        assert!(
            took >= Duration::from_millis(1500),
            "60,000 bytes at 20,000 B/s took only {took:?}"
        );
        drop(writer.join());
    });
}
