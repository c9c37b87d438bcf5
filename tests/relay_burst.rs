//! A relay socket holding more datagrams than a worker reads from one socket per round (its read
//! budget, 8 batches of 32) must still be emptied without any further datagram arriving: the
//! worker's relay epoll set is edge-triggered, so a socket left with data when its budget ran out
//! has to be read again by the worker itself. The server is stopped (SIGSTOP) while a peer queues
//! the burst on the relay socket, so the whole burst is waiting when it resumes.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};
use vigi_turn::engine::auth::key_md5;
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
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// A signed request of `method` on `sock` (after a 401 that named the realm and nonce): the
/// answer, which must be a success.
fn request(
    sock: &UdpSocket,
    server: SocketAddr,
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
    sock.send_to(&req, server).unwrap();
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).expect("answer");
    let m = Message::decode(&buf[..n]).unwrap();
    assert_eq!(m.class(), Class::Success, "{method:?} refused");
    buf[..n].to_vec()
}

#[test]
fn a_burst_beyond_the_read_budget_reaches_the_client_without_more_traffic() {
    let user = format!("{USER}:{PASS}");
    let srv = start_server(&[
        "-n",
        "--lt-cred-mech",
        "--user",
        &user,
        "--realm",
        REALM,
        "-L",
        "127.0.0.1",
        "--allow-loopback-peers",
        "--relay-threads",
        "1",
        "--sock-buf-size",
        "1048576",
        "--no-tls",
        "--no-dtls",
    ]);
    let server = SocketAddr::from(([127, 0, 0, 1], srv.port));
    let client = udp_with_buffer(1 << 20);
    let peer = udp_with_buffer(1 << 20);

    // Allocate: a 401 gives the nonce, then the signed request.
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &rand::random())
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    client.send_to(&req, server).unwrap();
    let mut buf = [0u8; 1500];
    let n = client.recv(&mut buf).expect("challenge");
    let nonce = Message::decode(&buf[..n])
        .unwrap()
        .get(attr::NONCE)
        .expect("NONCE")
        .to_vec();
    let answer = request(&client, server, Method::ALLOCATE, &nonce, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let relay = Message::decode(&answer)
        .unwrap()
        .get_xor_address(attr::XOR_RELAYED_ADDRESS)
        .expect("XOR-RELAYED-ADDRESS");
    let peer_addr = peer.local_addr().unwrap();
    request(&client, server, Method::CREATE_PERMISSION, &nonce, |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer_addr);
    });

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
    let deadline = Instant::now() + Duration::from_secs(5);
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
