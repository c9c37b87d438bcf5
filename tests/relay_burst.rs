//! Bursts toward a client, through the real binary.
//!
//! - A relay socket holding more datagrams than a worker reads from one socket per round (its
//!   read budget, 8 batches of 32) must still be emptied without any further datagram arriving:
//!   the worker's relay epoll set is edge-triggered, so a socket left with data when its budget
//!   ran out has to be read again by the worker itself. The server is stopped (SIGSTOP) while a
//!   peer queues the burst on the relay socket, so the whole burst is waiting when it resumes.
//! - A TCP client that stops reading while its peer keeps sending fills its socket; frames are
//!   then written partly, kept in a bounded backlog, or dropped whole. When it reads again the
//!   byte stream must still be whole frames, in order, and nothing the server holds may grow
//!   past the backlog's bound.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};
use vigi_turn::engine::auth::key_md5;
use vigi_turn::proto::framing::frame_len;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

const USER: &str = "burst";
const PASS: &str = "burstpw";
const REALM: &str = "burst.local";
/// More than the 256 datagrams a worker reads from one socket before turning to the others.
const BURST: u32 = 320;

fn udp_with_buffer(buf: usize) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(buf);
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The receive queue (bytes) of the UDP socket bound to `addr`, from /proc/net/udp; `None`
/// when there is no such socket.
fn udp_rx_queue(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(a) = addr else {
        return None;
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl, local_address, rem_address, st, tx_queue:rx_queue
        (f.len() > 4 && f[1] == local)
            .then(|| u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok())?
    })
}

/// A client's control channel: a UDP socket, or a TCP connection carrying frames back to back.
enum Ctl<'a> {
    Udp(&'a UdpSocket, SocketAddr),
    Tcp(&'a TcpStream),
}

impl Ctl<'_> {
    fn send(&self, msg: &[u8]) {
        match self {
            Ctl::Udp(s, to) => {
                s.send_to(msg, *to).unwrap();
            }
            Ctl::Tcp(s) => {
                let mut s: &TcpStream = s;
                s.write_all(msg).unwrap();
            }
        }
    }

    /// One whole message.
    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        match self {
            Ctl::Udp(s, _) => {
                let n = s.recv(&mut buf).expect("answer");
                buf.truncate(n);
                buf
            }
            Ctl::Tcp(s) => {
                let mut s: &TcpStream = s;
                s.read_exact(&mut buf[..20]).expect("answer");
                let len = 20 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                s.read_exact(&mut buf[20..len]).expect("answer body");
                buf.truncate(len);
                buf
            }
        }
    }
}

/// Allocate (401 first, then signed), then permit `peer`: the relayed address.
fn allocate_and_permit(ctl: &Ctl, peer: SocketAddr) -> SocketAddr {
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &rand::random())
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    ctl.send(&req);
    let challenge = ctl.recv();
    let nonce = Message::decode(&challenge)
        .unwrap()
        .get(attr::NONCE)
        .expect("NONCE")
        .to_vec();
    let answer = request(ctl, Method::ALLOCATE, &nonce, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let relay = Message::decode(&answer)
        .unwrap()
        .get_xor_address(attr::XOR_RELAYED_ADDRESS)
        .expect("XOR-RELAYED-ADDRESS");
    request(ctl, Method::CREATE_PERMISSION, &nonce, |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
    });
    relay
}

/// A signed request of `method` (after a 401 that named the realm and nonce): the answer, which
/// must be a success.
fn request(
    ctl: &Ctl,
    method: Method,
    nonce: &[u8],
    build: impl Fn(&mut MessageBuilder),
) -> Vec<u8> {
    let key = key_md5(USER, REALM, PASS);
    let mut req = Vec::new();
    let mut b = MessageBuilder::new(&mut req, method, Class::Request, &rand::random());
    build(&mut b);
    b.attr(attr::USERNAME, USER.as_bytes())
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, nonce)
        .integrity(&key);
    ctl.send(&req);
    let answer = ctl.recv();
    let m = Message::decode(&answer).unwrap();
    assert_eq!(m.class(), Class::Success, "{method:?} refused");
    answer
}

fn server(user: &str) -> Server {
    ServerArgs::bare()
        .user(user)
        .realm(REALM)
        .args(&["-L", "127.0.0.1", "--allow-loopback-peers"])
        .args(&["--relay-threads", "1", "--sock-buf-size", "1048576"])
        .args(&["--no-tls", "--no-dtls"])
        .start()
}

#[test]
fn a_burst_beyond_the_read_budget_reaches_the_client_without_more_traffic() {
    let user = format!("{USER}:{PASS}");
    let srv = server(&user);
    let server = SocketAddr::from(([127, 0, 0, 1], srv.port));
    let client = udp_with_buffer(1 << 20);
    let peer = udp_with_buffer(1 << 20);
    let relay = allocate_and_permit(&Ctl::Udp(&client, server), peer.local_addr().unwrap());
    let mut buf = [0u8; 1500];

    // Queue the whole burst on the relay socket while the server cannot read it.
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe { libc::kill(srv.proc.child.id() as i32, libc::SIGSTOP) };
    for seq in 0..BURST {
        peer.send_to(&seq.to_be_bytes(), relay).unwrap();
    }
    // SAFETY: as above.
    unsafe { libc::kill(srv.proc.child.id() as i32, libc::SIGCONT) };

    // Every datagram arrives as a Data indication, with nothing more sent to the relay.
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while seen.len() < BURST as usize && Instant::now() < deadline {
        let Ok(n) = client.recv(&mut buf) else {
            continue;
        };
        let Ok(m) = Message::decode(&buf[..n]) else {
            continue;
        };
        if m.method() != Method::DATA || m.class() != Class::Indication {
            continue;
        }
        let data = m.get(attr::DATA).expect("DATA");
        seen.insert(u32::from_be_bytes(data.try_into().expect("4 bytes")));
    }
    assert_eq!(
        seen.len(),
        BURST as usize,
        "the client got {} of the {BURST} datagrams queued on its relay",
        seen.len()
    );
    srv.proc.terminate();
}

#[test]
fn a_tcp_client_that_stops_reading_gets_whole_frames_in_order_when_it_reads_again() {
    let user = format!("{USER}:{PASS}");
    let srv = server(&user);
    let server = SocketAddr::from(([127, 0, 0, 1], srv.port));
    // A small receive buffer, so the server's writes stop short early.
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let _ = s.set_recv_buffer_size(4096);
    s.connect(&server.into()).unwrap();
    let client: TcpStream = s.into();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let peer = udp_with_buffer(1 << 20);
    let relay = allocate_and_permit(&Ctl::Tcp(&client), peer.local_addr().unwrap());

    // 4,000 datagrams of 1,000 bytes (4 MB, far beyond the client's buffers and the server's
    // 256 KiB backlog) while the client reads nothing; paced so the relay socket keeps up.
    const SENT: u32 = 4000;
    let mut payload = [0u8; 1000];
    for seq in 0..SENT {
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        payload[4..8].copy_from_slice(&(!seq).to_be_bytes());
        peer.send_to(&payload, relay).unwrap();
        if seq % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Wait until the server has read every datagram queued on the relay socket (it was a
    // 300 ms sleep): by then whatever it could not write to the client is in its backlog or was
    // dropped.
    let t0 = Instant::now();
    while udp_rx_queue(relay).is_some_and(|q| q > 0) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the server never read its relay socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Now read everything: whole Data indications, sequence numbers rising, each intact. What
    // the server holds has all come once a marker (a datagram numbered SENT or more, sent every
    // 200 ms from now on) arrives behind it: the server drops whole frames while its backlog is
    // full, so one gets through once the client has drained it. (The end was 700 ms without a
    // byte, which a server descheduled for 700 ms cut short, mid-frame.)
    let mut stream = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut c: &TcpStream = &client;
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let frame = |stream: &[u8], at: usize| -> Option<(usize, u32)> {
        let len = frame_len(&stream[at..]).expect("the stream stays framed")?;
        let m = Message::decode(&stream[at..at + len]).expect("a whole STUN message");
        assert_eq!(m.method(), Method::DATA);
        let data = m.get(attr::DATA).expect("DATA");
        assert_eq!(data.len(), 1000, "payload intact");
        let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
        assert_eq!(u32::from_be_bytes(data[4..8].try_into().unwrap()), !seq);
        Some((len, seq))
    };
    let send = |seq: u32, payload: &mut [u8; 1000]| {
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        payload[4..8].copy_from_slice(&(!seq).to_be_bytes());
        peer.send_to(payload, relay).unwrap();
    };
    let mut at = 0;
    let mut last: Option<u32> = None;
    let mut frames = 0u32;
    let mut marker = SENT;
    let mut next_marker = Instant::now();
    let t0 = Instant::now();
    'read: loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no marker arrived after {frames} frames"
        );
        if Instant::now() >= next_marker {
            send(marker, &mut payload);
            marker += 1;
            next_marker = Instant::now() + Duration::from_millis(200);
        }
        match c.read(&mut chunk) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => stream.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        while let Some((len, seq)) = frame(&stream, at) {
            at += len;
            if seq >= SENT {
                break 'read;
            }
            assert!(
                last.is_none_or(|l| seq > l),
                "in order: {seq} after {last:?}"
            );
            last = Some(seq);
            frames += 1;
        }
    }
    // The backlog (256 KiB) and the socket buffers held at least a few hundred frames; the rest
    // were dropped whole, so the server kept its memory.
    assert!(frames >= 200, "only {frames} frames arrived");
    assert!(
        frames < SENT,
        "all {frames} arrived: the client never stopped the server"
    );

    // The connection still works both ways: the peer's next datagram arrives (behind any
    // marker still on its way).
    const LAST: u32 = u32::MAX / 2;
    send(LAST, &mut payload);
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the peer's next datagram never arrived"
        );
        match c.read(&mut chunk) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => stream.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        while let Some((len, seq)) = frame(&stream, at) {
            at += len;
            assert!(seq >= SENT, "a burst datagram after a marker: {seq}");
            if seq == LAST {
                srv.proc.terminate();
                return;
            }
        }
    }
}
