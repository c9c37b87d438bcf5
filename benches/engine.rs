//! Micro-benchmarks of the engine's data plane on simulated time: routing a client's ChannelData
//! and Send indication to the peer (`handle_client_input`), and a peer's datagram back to the
//! client with the ChannelData or Data-indication header written in place (`handle_peer_input`).
//! The allocation is set up as the engine unit tests do: a client answers the 401 challenge, the
//! harness plays the worker and confirms the relay bind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use vigi_turn::engine::auth::{key_md5, Credentials, UserSecret};
use vigi_turn::engine::server::{PEER_HEADROOM, PEER_TAILROOM};
use vigi_turn::engine::{
    AllocationId, ClientDecision, Command, FiveTuple, PeerDecision, Server, ServerConfig, Shared,
    Transport,
};
use vigi_turn::proto::{attr, channel_data, Class, Message, MessageBuilder, Method};

const REALM: &str = "bench.local";
const UNIX0: u64 = 1_700_000_000;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// An engine with one allocation whose client bound channel 0x4000 to `peer_chan` and has a
/// permission for `peer_send`.
struct Setup {
    s: Server,
    now: Instant,
    five: FiveTuple,
    id: AllocationId,
}

fn drain(s: &mut Server, now: Instant) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    while let Some(c) = s.poll_command() {
        match c {
            Command::Send { data, .. } => sent.push(data),
            Command::BindRelay { id, .. } => {
                s.handle_relay_bound(now, id, vigi_turn::engine::Bind::Bound)
            }
            _ => {}
        }
    }
    sent
}

fn request(
    s: &mut Server,
    now: Instant,
    five: FiveTuple,
    method: Method,
    nonce: Option<&[u8]>,
    fill: &dyn Fn(&mut MessageBuilder<'_>),
) -> Vec<u8> {
    let key = key_md5("bench", REALM, "benchpw");
    let mut req = Vec::new();
    {
        let mut b = MessageBuilder::new(&mut req, method, Class::Request, &rand_tid());
        fill(&mut b);
        if let Some(n) = nonce {
            b.attr(attr::USERNAME, b"bench")
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, n)
                .integrity(&key);
        }
    }
    assert_eq!(s.handle_client_input(now, five, &req), ClientDecision::Done);
    drain(s, now).pop().expect("one response")
}

fn rand_tid() -> [u8; 12] {
    rand::random()
}

fn setup(peer_chan: SocketAddr, peer_send: SocketAddr) -> Setup {
    let mut credentials = Credentials::new(REALM, ':');
    credentials.add_user("bench", &UserSecret::Password("benchpw".into()));
    let cfg = ServerConfig {
        realm: REALM.into(),
        credentials,
        relay_ips: vec![sa("192.0.2.10:0").ip()],
        // The documentation addresses below stand for public peers.
        peer_policy: vigi_turn::engine::policy::PeerPolicy {
            allowed: vigi_turn::engine::policy::DOCUMENTATION.to_vec(),
            ..Default::default()
        },
        ..Default::default()
    };
    let shared = Arc::new(Shared::new(
        50000,
        50099,
        [7; 32],
        std::time::Instant::now(),
    ));
    let now = Instant::now();
    let mut s = Server::new(Arc::new(cfg), shared, now, UNIX0, 1);
    let five = FiveTuple {
        transport: Transport::Udp,
        client: sa("198.51.100.1:40000"),
        server: sa("192.0.2.1:3478"),
    };
    let udp = |b: &mut MessageBuilder<'_>| {
        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
    };
    let r = request(&mut s, now, five, Method::ALLOCATE, None, &udp);
    let nonce = Message::decode(&r)
        .expect("401")
        .get(attr::NONCE)
        .expect("NONCE")
        .to_vec();
    let r = request(&mut s, now, five, Method::ALLOCATE, Some(&nonce), &udp);
    assert_eq!(Message::decode(&r).expect("ok").class(), Class::Success);
    let r = request(
        &mut s,
        now,
        five,
        Method::CHANNEL_BIND,
        Some(&nonce),
        &|b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, &peer_chan);
        },
    );
    assert_eq!(Message::decode(&r).expect("ok").class(), Class::Success);
    let r = request(
        &mut s,
        now,
        five,
        Method::CREATE_PERMISSION,
        Some(&nonce),
        &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer_send);
        },
    );
    assert_eq!(Message::decode(&r).expect("ok").class(), Class::Success);
    let id = s.allocation_on(&five).expect("allocation").id;
    Setup { s, now, five, id }
}

fn benches(c: &mut Criterion) {
    let peer_chan = sa("203.0.113.5:9000");
    let peer_send = sa("203.0.113.6:9000");
    let mut st = setup(peer_chan, peer_send);
    let payload = [0xABu8; 100];

    let mut cd = vec![0u8; 4 + payload.len()];
    channel_data::write_header(&mut cd, 0x4000, payload.len());
    cd[4..].copy_from_slice(&payload);
    let mut send = Vec::new();
    MessageBuilder::new(&mut send, Method::SEND, Class::Indication, &[1; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, &peer_send)
        .attr(attr::DATA, &payload);

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    assert!(matches!(
        st.s.handle_client_input(st.now, st.five, &cd),
        ClientDecision::Forward { .. }
    ));
    g.bench_function("client_channel_data_100", |b| {
        b.iter(|| st.s.handle_client_input(st.now, st.five, black_box(&cd)))
    });
    assert!(matches!(
        st.s.handle_client_input(st.now, st.five, &send),
        ClientDecision::Forward { .. }
    ));
    g.bench_function("client_send_indication_100", |b| {
        b.iter(|| st.s.handle_client_input(st.now, st.five, black_box(&send)))
    });

    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(&payload);
    let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
    assert!(matches!(
        st.s.handle_peer_input(st.now, st.id, peer_chan, &mut buf, range.clone()),
        PeerDecision::Forward { .. }
    ));
    g.bench_function("peer_to_channel_data_100", |b| {
        b.iter(|| {
            st.s.handle_peer_input(st.now, st.id, peer_chan, black_box(&mut buf), range.clone())
        })
    });
    assert!(matches!(
        st.s.handle_peer_input(st.now, st.id, peer_send, &mut buf, range.clone()),
        PeerDecision::Forward { .. }
    ));
    g.bench_function("peer_to_data_indication_100", |b| {
        b.iter(|| {
            st.s.handle_peer_input(st.now, st.id, peer_send, black_box(&mut buf), range.clone())
        })
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
