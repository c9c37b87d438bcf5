//! The data path allocates nothing: after warm-up, relaying ChannelData and Send indications from
//! the client and Data indications / ChannelData to the client does not touch the heap, and
//! neither do the system calls that move the packets (`vigi_turn::sys`: sendmmsg, an epoll wait,
//! recvmmsg, the source addresses). A counting global allocator (this test binary only) proves
//! it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vigi_turn::engine::server::{PEER_HEADROOM, PEER_TAILROOM};
use vigi_turn::engine::testing;
use vigi_turn::engine::{ClientDecision, PeerAddr, PeerDecision, Server};

struct Counting;

thread_local! {
    /// Only the test's own thread counts, into a count of its own: the test harness's threads,
    /// and the other test of this file, may allocate meanwhile.
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ALLOCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count() {
    if COUNTING.with(|c| c.get()) {
        ALLOCS.with(|n| n.set(n.get() + 1));
    }
}

/// Allocations this thread has counted so far.
fn counted() -> usize {
    ALLOCS.with(|n| n.get())
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

#[test]
fn relaying_allocates_nothing_after_warm_up() {
    let t0 = Instant::now();
    let peer: SocketAddr = testing::peer(5, 9000);
    let peer2: SocketAddr = testing::peer(6, 9000);
    // --no-auth: the allocation, its permission for peer2 and channel 0x4001 to peer.
    let (mut s, five, relay) = testing::relaying(false, t0, 0x4001, peer, peer2);

    // Client -> peer packets, built before counting.
    let payload = [0xAB_u8; 100];
    let cd = testing::channel_data(0x4001, &payload);
    let send = testing::send_indication(peer2, &payload);
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
            let d = s.handle_peer_input(
                now,
                relay,
                PeerAddr::new(p),
                buf,
                PEER_HEADROOM..PEER_HEADROOM + 100,
            );
            assert!(matches!(d, PeerDecision::Forward { .. }));
        }
    };
    for _ in 0..100 {
        round(now, &mut buf, &mut s);
    }
    COUNTING.with(|c| c.set(true));
    let before = counted();
    for _ in 0..10_000 {
        now += Duration::from_micros(10);
        round(now, &mut buf, &mut s);
    }
    let after = counted();
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        after - before,
        0,
        "heap allocations during 40,000 relayed packets"
    );
}

#[test]
fn batched_socket_calls_allocate_nothing_after_warm_up() {
    use std::net::UdpSocket;
    use vigi_turn::sys::{send_batch, Epoll, Events, RecvBatch, Trigger, BATCH};

    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_nonblocking(true).unwrap();
    let to = b.local_addr().unwrap();
    let ep = Epoll::new().unwrap();
    ep.add(&b, 1, Trigger::Level).unwrap();
    let mut events = Events::with_capacity(8);
    let mut batch = RecvBatch::new(PEER_HEADROOM, 2048, PEER_TAILROOM);
    let payload = [0xCD_u8; 100];
    let msgs = [(&payload[..], to); BATCH];
    // One round: a batch out, then read until all of it is in (bounded: the loopback delivers
    // synchronously, and a wait never exceeds 5 s).
    let round = |batch: &mut RecvBatch, events: &mut Events| {
        assert_eq!(send_batch(&a, &msgs), BATCH);
        let mut got = 0;
        while got < BATCH {
            assert!(
                ep.wait(events, 5000).unwrap() > 0,
                "nothing arrived within 5 s"
            );
            while let Ok(n @ 1..) = batch.recv_at(&b, got) {
                for i in got..got + n {
                    assert!(batch.addr(i).is_some());
                    let (slot, range) = batch.slot_mut(i);
                    slot[range.start - 4] = 0x40;
                }
                got += n;
            }
        }
    };
    for _ in 0..10 {
        round(&mut batch, &mut events);
    }
    let n = allocations_in(|| {
        for _ in 0..200 {
            round(&mut batch, &mut events);
        }
    });
    assert_eq!(n, 0, "heap allocations during 6,400 datagrams");
}

/// Heap allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    COUNTING.with(|c| c.set(true));
    let before = counted();
    f();
    let after = counted();
    COUNTING.with(|c| c.set(false));
    after - before
}

/// An engine holding `n` relaying allocations of one user, publishing its top `k` and traffic
/// per user.
fn engine_with(n: u16, k: usize, t0: Instant) -> Server {
    let mut cfg = testing::config(false);
    cfg.top_allocations = k;
    cfg.traffic_by_user = true;
    let (mut s, _) = testing::engine_on_ports(cfg, 40000, 40000 + 2 * n, t0, 1);
    let peer = testing::peer(5, 9000);
    let payload = [0xAB_u8; 100];
    for i in 0..n {
        let mut c = testing::Client::new(testing::udp(10000 + i));
        c.allocate(&mut s, t0);
        c.permit(&mut s, t0, peer);
        // Different byte counts, so that the top K changes from one publish to the next.
        for _ in 0..(i % 7) {
            let send = testing::send_indication(peer, &payload);
            let _ = s.handle_client_input(t0, c.five, &send);
        }
    }
    s
}

/// The 1 Hz publish allocates O(K), not O(N): the first one sizes the top-K heap and list and
/// the per-user table, the same for 50 allocations as for 2,000; after that, nothing.
#[test]
fn publishing_allocates_nothing_per_allocation() {
    use vigi_turn::engine::server::Aggregates;
    let t0 = Instant::now();
    let mut first = Vec::new();
    for n in [50, 2000] {
        let mut s = engine_with(n, 10, t0);
        let mut out = Aggregates::default();
        first.push(allocations_in(|| s.publish(t0, &mut out)));
        assert_eq!(out.allocations, usize::from(n));
        assert_eq!(out.top.len(), 10);
        let mut now = t0;
        let steady = allocations_in(|| {
            for _ in 0..20 {
                now += Duration::from_secs(1);
                s.publish(now, &mut out);
            }
        });
        assert_eq!(
            steady, 0,
            "heap allocations in 20 publishes of {n} allocations"
        );
    }
    assert_eq!(first[0], first[1], "first publish: O(K), not O(N)");
    assert!(
        first[0] <= 8,
        "{} allocations in the first publish",
        first[0]
    );
}
