//! What the data path's system-call wrappers ([`vigi_turn::sys`]) cost in user space: one round
//! is what a worker does for a full batch — 32 datagrams out with `sendmmsg`, an epoll wait, 32 in
//! with `recvmmsg` into headroomed slots, each source address read — over loopback. The kernel's
//! share is the same whatever the wrapper; the instructions around the calls are what a change
//! here moves, so measure them with callgrind rather than a clock on shared cores:
//!
//! ```sh
//! cargo bench --bench syscalls --no-run
//! valgrind --tool=callgrind --toggle-collect='*measured_round*' target/release/deps/syscalls-<hash>
//! ```
//!
//! 20,000 rounds (640,000 datagrams each way), instructions counted inside `measured_round`
//! only (valgrind 3.19, release profile): 93,780,000 (4,689 a round) with the copies `sys`
//! replaced (io/udp.rs's `RecvBatch` and `send_batch`, io/relay.rs's raw `epoll_wait`), and
//! 50,300,000 (2,515 a round) with `sys`: headers built once instead of at every receive, source
//! addresses read in place instead of copied out of a `sockaddr_storage`, 28-byte destination
//! addresses instead of 128-byte ones, and epoll through `nix` at no cost. Run without valgrind it
//! prints the rounds' wall time, which on shared cores says little.
//!
//! The whole server agrees: a release `vigi-turn` with one worker under callgrind, relaying
//! `vigi-bench -c -m 10 -n 2000 -l 100 -z 5` (20,000 ChannelData messages each way) to
//! `vigi-bench peer`, five runs before and four after. The worker thread's instructions depend on
//! how many times it woke (batching follows valgrind's timing), so they are fitted against its
//! `epoll_wait` calls: 51.7 M + 2,375 a wake-up before, 42.9 M + 2,133 after; at 45,000
//! wake-ups, 158.6 M before and 138.9 M after (12 % fewer).

use std::net::{SocketAddr, UdpSocket};

use vigi_turn::sys::{send_batch, Epoll, Events, RecvBatch, Trigger, BATCH};

const ROUNDS: usize = 20_000;

#[inline(never)]
fn measured_round(
    a: &UdpSocket,
    ep: &Epoll,
    events: &mut Events,
    b: &UdpSocket,
    batch: &mut RecvBatch,
    msgs: &[(&[u8], SocketAddr)],
) -> usize {
    let sent = send_batch(a, msgs);
    let n = ep.wait(events, 0).unwrap_or(0);
    let mut got = 0;
    for _ in 0..n {
        while let Ok(k) = batch.recv_at(b, 0) {
            for i in 0..k {
                let from = batch.addr(i);
                let (slot, range) = batch.slot_mut(i);
                got += slot[range.start] as usize + usize::from(from.is_some());
            }
            if k < BATCH {
                break;
            }
        }
    }
    got + sent
}

fn main() {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    a.set_nonblocking(true).expect("nonblocking");
    b.set_nonblocking(true).expect("nonblocking");
    let to = b.local_addr().expect("local address");
    let ep = Epoll::new().expect("epoll");
    ep.add(&b, 7, Trigger::Edge).expect("epoll add");
    let mut events = Events::with_capacity(256);
    // Datagrams land behind a headroom, as in a worker (engine::server::PEER_HEADROOM).
    let mut batch = RecvBatch::new(36, 1500, 4);
    let payload = [1u8; 100];
    let msgs: Vec<(&[u8], SocketAddr)> = (0..BATCH).map(|_| (&payload[..], to)).collect();
    let mut total = 0;
    let t0 = std::time::Instant::now();
    for _ in 0..ROUNDS {
        total += measured_round(&a, &ep, &mut events, &b, &mut batch, &msgs);
    }
    println!("{ROUNDS} rounds, checksum {total}, {:?}", t0.elapsed());
}
