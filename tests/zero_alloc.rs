//! The data path allocates nothing: after warm-up, relaying ChannelData and Send indications from
//! the client and Data indications / ChannelData to the client does not touch the heap. A counting
//! global allocator (this test binary only) proves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigi_turn::engine::policy::PeerPolicy;
use vigi_turn::engine::server::{PEER_HEADROOM, PEER_TAILROOM};
use vigi_turn::engine::{
    ClientDecision, Command, FiveTuple, PeerDecision, Server, ServerConfig, Shared, Transport,
};
use vigi_turn::proto::{attr, channel_data, Class, MessageBuilder, Method};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only the test's own thread counts: the test harness's threads may allocate meanwhile.
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTING.with(|c| c.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn request(method: Method, tid: u8, fill: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, method, Class::Request, &[tid; 12]);
    fill(&mut b);
    out
}

/// Run the control plane until the engine has nothing left to say; answer relay binds.
fn settle(s: &mut Server, now: Instant) {
    while let Some(c) = s.poll_command() {
        if let Command::BindRelay { id, .. } = c {
            s.handle_relay_bound(now, id, vigi_turn::engine::Bind::Bound);
        }
    }
}

#[test]
fn relaying_allocates_nothing_after_warm_up() {
    let t0 = Instant::now();
    let config = ServerConfig {
        no_auth: true,
        relay_ips: vec!["192.0.2.10".parse().unwrap()],
        peer_policy: PeerPolicy {
            allowed: vigi_turn::engine::policy::DOCUMENTATION.to_vec(),
            ..Default::default()
        },
        ..Default::default()
    };
    let shared = Arc::new(Shared::new(
        50000,
        50100,
        [1; 32],
        std::time::Instant::now(),
    ));
    let mut s = Server::new(Arc::new(config), shared, t0, 1_700_000_000, 7);
    let five = FiveTuple {
        transport: Transport::Udp,
        client: "198.51.100.1:4000".parse().unwrap(),
        server: "192.0.2.1:3478".parse().unwrap(),
    };
    let peer: SocketAddr = "203.0.113.5:9000".parse().unwrap();
    let peer2: SocketAddr = "203.0.113.6:9000".parse().unwrap();
    let alloc = request(Method::ALLOCATE, 1, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
    });
    s.handle_client_input(t0, five, &alloc);
    settle(&mut s, t0);
    let perm = request(Method::CREATE_PERMISSION, 2, |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer2);
    });
    s.handle_client_input(t0, five, &perm);
    settle(&mut s, t0);
    let bind = request(Method::CHANNEL_BIND, 3, |b| {
        b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
    });
    s.handle_client_input(t0, five, &bind);
    settle(&mut s, t0);
    let relay = s.allocation_on(&five).expect("allocated").id;

    // Client -> peer packets, built before counting.
    let payload = [0xAB_u8; 100];
    let mut cd = vec![0u8; 4];
    channel_data::write_header(&mut cd, 0x4001, payload.len());
    cd.extend_from_slice(&payload);
    let mut send = Vec::new();
    {
        let mut b = MessageBuilder::new(&mut send, Method::SEND, Class::Indication, &[9; 12]);
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer2)
            .attr(attr::DATA, &payload);
    }
    let mut buf = vec![0u8; PEER_HEADROOM + 2048 + PEER_TAILROOM];

    let mut now = t0;
    let round = |now: Instant, buf: &mut Vec<u8>, s: &mut Server| {
        assert!(matches!(
            s.handle_client_input(now, five, &cd),
            ClientDecision::Forward { .. }
        ));
        assert!(matches!(
            s.handle_client_input(now, five, &send),
            ClientDecision::Forward { .. }
        ));
        for p in [peer, peer2] {
            buf[PEER_HEADROOM..PEER_HEADROOM + 100].copy_from_slice(&payload);
            let d = s.handle_peer_input(now, relay, p, buf, PEER_HEADROOM..PEER_HEADROOM + 100);
            assert!(matches!(d, PeerDecision::Forward { .. }));
        }
    };
    for _ in 0..100 {
        round(now, &mut buf, &mut s);
    }
    COUNTING.with(|c| c.set(true));
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        now += Duration::from_micros(10);
        round(now, &mut buf, &mut s);
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        after - before,
        0,
        "heap allocations during 40,000 relayed packets"
    );
}
