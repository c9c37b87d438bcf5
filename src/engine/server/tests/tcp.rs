//! RFC 6062 TCP relays on simulated time: Allocate rules, Connect (446, 447, the 30 s connect
//! timer), ConnectionAttempt for permitted inbound peers, ConnectionBind (400, 441, the 30 s
//! bind timer), connections closed with their allocation, and a ConnectionBind reaching another
//! worker's engine.

use super::*;
use crate::engine::stats::Flow;

fn requested_tcp(b: &mut MessageBuilder<'_>) {
    b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_TCP, 0, 0, 0]);
}

fn allocate_tcp(h: &mut H, c: &mut Client) -> Resp {
    c.request(h, Method::ALLOCATE, &requested_tcp)
}

fn connect(h: &mut H, c: &mut Client, peer: SocketAddr) -> Option<Resp> {
    c.nonce.as_ref().expect("authenticated already");
    let tid = c.next_tid();
    let req = c.build(
        Method::CONNECT,
        Class::Request,
        &tid,
        &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        },
        true,
    );
    assert_eq!(h.input(c.five, &req), ClientDecision::Done);
    h.responses(c.five).pop()
}

fn connection_bind(h: &mut H, c: &mut Client, cid: u32) -> Resp {
    c.request(h, Method::CONNECTION_BIND, &|b| {
        b.attr_u32(attr::CONNECTION_ID, cid);
    })
}

fn connection_id(r: &Resp) -> u32 {
    r.get(attr::CONNECTION_ID)
        .and_then(attr::read_u32)
        .expect("CONNECTION-ID")
}

/// alice with a TCP allocation on `tcp(40000)`.
fn tcp_allocated(cfg: ServerConfig) -> (H, Client) {
    let mut h = H::new(cfg);
    let mut c = Client::alice(tcp(40000));
    allocate_tcp(&mut h, &mut c).assert_ok();
    (h, c)
}

#[test]
fn tcp_allocations_need_a_stream_and_no_udp_only_attributes() {
    let mut h = H::new(config());
    // Over UDP: 400 (RFC 6062 §5.1).
    let mut u = Client::alice(udp(40000));
    allocate_tcp(&mut h, &mut u).assert_err(400);
    let mut c = Client::alice(tcp(40000));
    for extra in [attr::DONT_FRAGMENT, attr::EVEN_PORT] {
        c.request(&mut h, Method::ALLOCATE, &|b| {
            requested_tcp(b);
            if extra == attr::EVEN_PORT {
                b.attr(extra, &[0]);
            } else {
                b.attr(extra, &[]);
            }
        })
        .assert_err(400);
    }
    assert!(h.binds.is_empty());
    let r = allocate_tcp(&mut h, &mut c);
    r.assert_ok();
    let a = h.s.allocation_on(&c.five).unwrap();
    assert!(a.is_tcp());
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS), Some(a.relay().addr()));
    // Over TLS too.
    let mut t = Client::alice(five(Transport::Tls, CLIENT_IP, 40001));
    allocate_tcp(&mut h, &mut t).assert_ok();
}

#[test]
fn relay_kinds_switched_off_are_442() {
    let mut cfg = config();
    cfg.tcp_relay = false;
    let mut h = H::new(cfg);
    let mut c = Client::alice(tcp(40000));
    allocate_tcp(&mut h, &mut c).assert_err(442);
    c.allocate(&mut h).assert_ok();

    let mut cfg = config();
    cfg.udp_relay = false;
    let mut h = H::new(cfg);
    let mut c = Client::alice(tcp(40000));
    c.allocate(&mut h).assert_err(442);
    allocate_tcp(&mut h, &mut c).assert_ok();
}

#[test]
fn connect_then_connection_bind_on_a_new_connection() {
    let (mut h, mut c) = tcp_allocated(config());
    let relay = h.relay_of(c.five);
    assert!(
        connect(&mut h, &mut c, peer()).is_none(),
        "answered once connected"
    );
    let Some(Command::ConnectPeer { cid, from, peer: p }) = h.tcp.pop() else {
        panic!("expected ConnectPeer, got {:?}", h.tcp);
    };
    assert_eq!((from.addr(), p.addr()), (relay, peer()));
    // The same peer again while connecting: 446.
    connect(&mut h, &mut c, peer()).unwrap().assert_err(446);
    h.s.handle_tcp_peer_connected(h.now, cid, true);
    h.drain();
    let r = h.responses(c.five).pop().expect("Connect response");
    r.assert_ok();
    assert_eq!(r.method, Method::CONNECT);
    assert_eq!(connection_id(&r), cid.0);
    assert!(
        r.msg().check_integrity(&c.key()),
        "signed with the allocation's key"
    );
    // And once connected: 446 still.
    connect(&mut h, &mut c, peer()).unwrap().assert_err(446);
    // The data connection: a new TCP connection with the same credentials.
    let mut d = Client::alice(tcp(40001));
    connection_bind(&mut h, &mut d, cid.0).assert_ok();
    assert_eq!(
        h.tcp.pop(),
        Some(Command::BindConnection {
            cid,
            client: d.five
        })
    );
    // Bound: no 30 s timer closes it, and it cannot be bound twice.
    h.at(31);
    assert!(h.tcp.is_empty(), "{:?}", h.tcp);
    let mut d2 = Client::alice(tcp(40002));
    connection_bind(&mut h, &mut d2, cid.0).assert_err(400);
    assert_eq!(h.s.tcp_connections(), 1);
    // The data connection closes: the connection is forgotten.
    h.s.handle_tcp_connection_closed(cid);
    assert_eq!(h.s.tcp_connections(), 0);
}

#[test]
fn failed_and_hanging_connects_are_447() {
    let (mut h, mut c) = tcp_allocated(config());
    assert!(connect(&mut h, &mut c, peer()).is_none());
    let Some(Command::ConnectPeer { cid, .. }) = h.tcp.pop() else {
        panic!("expected ConnectPeer");
    };
    h.s.handle_tcp_peer_connected(h.now, cid, false);
    h.drain();
    h.responses(c.five).pop().unwrap().assert_err(447);
    assert_eq!(h.tcp.pop(), Some(Command::CloseConnection { cid }));
    // A connect that never finishes: 447 after 30 s, and the attempt is stopped.
    let other = sa("203.0.113.6:9000");
    assert!(connect(&mut h, &mut c, other).is_none());
    let Some(Command::ConnectPeer { cid, .. }) = h.tcp.pop() else {
        panic!("expected ConnectPeer");
    };
    h.at(29);
    assert!(h.sent.is_empty());
    h.at(30);
    h.responses(c.five).pop().unwrap().assert_err(447);
    assert_eq!(h.tcp.pop(), Some(Command::CloseConnection { cid }));
    // The worker reporting success after that: the socket is closed, nothing is answered.
    h.s.handle_tcp_peer_connected(h.now, cid, true);
    h.drain();
    assert!(h.sent.is_empty());
    assert_eq!(h.tcp.pop(), Some(Command::CloseConnection { cid }));
    assert_eq!(h.s.tcp_connections(), 0);
}

#[test]
fn connect_checks_allocation_kind_and_peer() {
    // On a UDP allocation: 400.
    let (mut h, mut c) = allocated(config());
    connect(&mut h, &mut c, peer()).unwrap().assert_err(400);
    // Peer policy and family.
    let (mut h, mut c) = tcp_allocated(config());
    connect(&mut h, &mut c, sa("127.0.0.1:9000"))
        .unwrap()
        .assert_err(403);
    connect(&mut h, &mut c, sa("[2001:db8::1]:9000"))
        .unwrap()
        .assert_err(443);
    // No XOR-PEER-ADDRESS: 400.
    let tid = c.next_tid();
    let req = c.build(Method::CONNECT, Class::Request, &tid, &nothing, true);
    h.one(c.five, &req).assert_err(400);
    assert!(h.tcp.is_empty());
    // No allocation on this connection: 437.
    let mut other = Client::alice(tcp(40009));
    other.nonce = c.nonce.clone();
    connect(&mut h, &mut other, peer()).unwrap().assert_err(437);
    // ChannelBind on a TCP allocation: 400; Send is dropped.
    c.channel_bind(&mut h, 0x4000, peer()).assert_err(400);
    c.permit(&mut h, peer()).assert_ok();
    let send = c.send_indication(peer(), b"x");
    assert_eq!(h.input(c.five, &send), ClientDecision::Done);
}

#[test]
fn inbound_peers_need_a_permission_and_a_bind_within_30_s() {
    let (mut h, mut c) = tcp_allocated(config());
    let id = h.alloc_id(c.five);
    let p = sa("203.0.113.5:40123");
    // No permission: refused, the client hears nothing.
    assert_eq!(h.s.handle_tcp_peer_accepted(h.now, id, p), None);
    h.drain();
    assert!(h.sent.is_empty());
    c.permit(&mut h, p).assert_ok();
    let cid =
        h.s.handle_tcp_peer_accepted(h.now, id, p)
            .expect("accepted");
    h.drain();
    // ConnectionAttempt indication on the control connection.
    let ind = h.responses(c.five).pop().expect("ConnectionAttempt");
    assert_eq!(
        (ind.method, ind.class),
        (Method::CONNECTION_ATTEMPT, Class::Indication)
    );
    assert_eq!(ind.xor(attr::XOR_PEER_ADDRESS), Some(p));
    assert_eq!(connection_id(&ind), cid.0);
    // Not bound within 30 s: closed, and a late ConnectionBind gets 400.
    h.at(30);
    assert_eq!(h.tcp.pop(), Some(Command::CloseConnection { cid }));
    let mut d = Client::alice(tcp(40001));
    connection_bind(&mut h, &mut d, cid.0).assert_err(400);
    // A second peer, bound in time.
    let cid2 =
        h.s.handle_tcp_peer_accepted(h.now, id, p)
            .expect("accepted");
    h.drain();
    h.sent.clear();
    connection_bind(&mut h, &mut d, cid2.0).assert_ok();
}

#[test]
fn connection_bind_refusals() {
    let (mut h, mut c) = tcp_allocated(config());
    let id = h.alloc_id(c.five);
    c.permit(&mut h, peer()).assert_ok();
    let cid = h.s.handle_tcp_peer_accepted(h.now, id, peer()).unwrap();
    h.drain();
    h.sent.clear();
    // Another user: 441.
    let mut bob = Client::new(tcp(40001), "bob", "bob-pw");
    connection_bind(&mut h, &mut bob, cid.0).assert_err(441);
    // On the control connection itself, or over UDP: 400.
    connection_bind(&mut h, &mut c, cid.0).assert_err(400);
    let mut u = Client::alice(udp(40002));
    connection_bind(&mut h, &mut u, cid.0).assert_err(400);
    // Unknown id, or none: 400.
    let mut d = Client::alice(tcp(40003));
    connection_bind(&mut h, &mut d, cid.0 ^ 1).assert_err(400);
    d.request(&mut h, Method::CONNECTION_BIND, &nothing)
        .assert_err(400);
    // Unauthenticated: 401.
    let mut anon = Client::alice(tcp(40004));
    let tid = anon.next_tid();
    let req = anon.build(
        Method::CONNECTION_BIND,
        Class::Request,
        &tid,
        &nothing,
        false,
    );
    h.one(anon.five, &req).assert_err(401);
    // Still bindable by its owner.
    connection_bind(&mut h, &mut d, cid.0).assert_ok();
}

#[test]
fn ending_the_allocation_closes_its_connections() {
    let (mut h, mut c) = tcp_allocated(config());
    let id = h.alloc_id(c.five);
    c.permit(&mut h, peer()).assert_ok();
    let a = h.s.handle_tcp_peer_accepted(h.now, id, peer()).unwrap();
    h.drain();
    h.sent.clear();
    assert!(connect(&mut h, &mut c, sa("203.0.113.7:80")).is_none());
    let Some(Command::ConnectPeer { cid: b, .. }) = h.tcp.pop() else {
        panic!("expected ConnectPeer");
    };
    h.sent.clear();
    c.refresh(&mut h, Some(0)).assert_ok();
    let mut closed: Vec<_> = h
        .tcp
        .drain(..)
        .filter_map(|c| match c {
            Command::CloseConnection { cid } => Some(cid),
            _ => None,
        })
        .collect();
    closed.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(closed, want);
    assert_eq!(h.freed, vec![id]);
    assert_eq!(h.s.tcp_connections(), 0);
}

#[test]
fn connection_bind_may_reach_another_workers_engine() {
    let shared = Arc::new(Shared::new(
        MIN_PORT,
        MAX_PORT,
        [7; 32],
        std::time::Instant::now(),
    ));
    let mut h1 = H::with_shared(config(), shared.clone());
    let mut h2 = H::with_shared(config(), shared);
    let mut c = Client::alice(tcp(40000));
    allocate_tcp(&mut h1, &mut c).assert_ok();
    let id = h1.alloc_id(c.five);
    c.permit(&mut h1, peer()).assert_ok();
    let cid = h1.s.handle_tcp_peer_accepted(h1.now, id, peer()).unwrap();
    // The data connection lands on the other worker.
    let mut d = Client::alice(tcp(40001));
    connection_bind(&mut h2, &mut d, cid.0).assert_ok();
    assert_eq!(
        h2.tcp.pop(),
        Some(Command::BindConnection {
            cid,
            client: d.five
        })
    );
    // The owner's 30 s timer leaves it alone; deleting the allocation closes it.
    h1.at(31);
    assert!(h1.tcp.is_empty());
    h1.sent.clear();
    c.refresh(&mut h1, Some(0)).assert_ok();
    assert_eq!(h1.tcp.pop(), Some(Command::CloseConnection { cid }));
}

#[test]
fn pipe_bytes_count_into_the_owning_allocation_live_and_at_its_end() {
    let shared = Arc::new(Shared::new(
        MIN_PORT,
        MAX_PORT,
        [7; 32],
        std::time::Instant::now(),
    ));
    let mut h1 = H::with_shared(config(), shared.clone());
    let mut h2 = H::with_shared(config(), shared);
    let mut c = Client::alice(tcp(40000));
    allocate_tcp(&mut h1, &mut c).assert_ok();
    let id = h1.alloc_id(c.five);
    c.permit(&mut h1, peer()).assert_ok();
    let stats = |h: &H| {
        let s = h.s.list(h.now, &crate::engine::server::Select::All);
        assert_eq!(s.len(), 1);
        s[0].stats
    };
    let before = stats(&h1);
    let flow = |packets, bytes| Flow { packets, bytes };
    let mut total = (0, 0);
    for round in 0..3u64 {
        let cid = h1.s.handle_tcp_peer_accepted(h1.now, id, peer()).unwrap();
        // The data connection, and so the pipe, is on the other worker.
        let mut d = Client::alice(tcp(40001 + round as u16));
        connection_bind(&mut h2, &mut d, cid.0).assert_ok();
        let t =
            h2.s.tcp_traffic(cid)
                .expect("a bound connection has counters");
        t.add_up(1000);
        t.add_up(24);
        t.add_down(300);
        total = (total.0 + 2, total.1 + 1);
        // Live, while the pipe copies.
        let s = stats(&h1);
        assert_eq!(
            s.client_rcv,
            flow(
                before.client_rcv.packets + total.0,
                before.client_rcv.bytes + 1024 * (round + 1)
            )
        );
        assert_eq!(s.peer_sent, flow(total.0, 1024 * (round + 1)));
        assert_eq!(s.peer_rcv, flow(total.1, 300 * (round + 1)));
        assert_eq!(
            s.client_sent.bytes,
            before.client_sent.bytes + 300 * (round + 1)
        );
        // The pipe ends; the counts stay.
        h2.s.handle_tcp_connection_closed(cid);
        drop(t);
        assert_eq!(stats(&h1).peer_sent, flow(total.0, 1024 * (round + 1)));
    }
    // Closed connections were folded as new ones came: the allocation holds one set.
    let a = h1.s.allocations().find(|a| a.id() == id).unwrap();
    let AllocationKind::Tcp { traffic } = a.kind() else {
        panic!("a TCP allocation");
    };
    assert_eq!(traffic.len(), 1);
    // At its end they go to the totals.
    let live = stats(&h1);
    h1.drain();
    h1.sent.clear();
    c.refresh(&mut h1, Some(0)).assert_ok();
    let closed = h1.s.counters().closed_traffic;
    assert_eq!(closed.peer_sent, live.peer_sent);
    assert_eq!(closed.peer_rcv, flow(3, 900));
    assert_eq!(closed.client_rcv.bytes, live.client_rcv.bytes);
}
