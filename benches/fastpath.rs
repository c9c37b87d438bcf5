//! Micro-benchmark of the XDP fast path (issue 18): the kernel runs the program on one crafted
//! frame per path `BPF_PROG_TEST_RUN`-style and reports its own mean time per run, so the figure
//! is the program alone (no syscall, no copy to user space). Paths: ChannelData client → peer and
//! peer → client, IPv4 and IPv6, a 100-byte payload; and a miss (a datagram for nobody, passed up).
//! The frame arrives on the caller's `lo`, so the route step is the loopback shortcut (XDP_TX);
//! on another interface `bpf_fib_lookup` adds its own cost.
//!
//! `cargo bench --bench fastpath` (root): one million runs per path, three rounds, best round
//! printed. Under `cargo test` (no `--bench`) it runs each path a thousand times as a smoke test.
//! Every output frame is parsed back and its checksums verified before timing.

use std::net::SocketAddr;

use vigi_turn::io::fastpath::frames::{frame, parse, Udp};
use vigi_turn::io::fastpath::{ChannelMirror, FastPath, MapLimits, XDP_PASS, XDP_TX};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (repeat, rounds) = if bench { (1_000_000, 3) } else { (1_000, 1) };
    let mut fp = FastPath::load(MapLimits {
        channels: 1024,
        allocations: 1024,
        permissions: 1024,
    })
    .expect("loading the XDP program (needs root: CAP_BPF, CAP_NET_ADMIN)");
    let data = vec![0xa5u8; 100];
    let mut paths = Vec::new();
    for (family, client, local, relay, peer) in [
        (
            "IPv4",
            "127.0.0.2:40000",
            "127.0.0.1:3478",
            "127.0.0.1:50000",
            "127.0.0.3:40001",
        ),
        (
            "IPv6",
            "[fd00::2]:40000",
            "[fd00::1]:3478",
            "[fd00::1]:50000",
            "[fd00::3]:40001",
        ),
    ] {
        let slot = fp.take_slot().expect("slot");
        let m = ChannelMirror {
            client: sa(client),
            local: sa(local),
            relay: sa(relay),
            peer: sa(peer),
            channel: 0x4000,
            slot,
            expires_ns: u64::MAX,
        };
        fp.add_channel(&m).expect("mirror");
        let c2p = Udp {
            src: m.client,
            dst: m.local,
            payload: channel_data(0x4000, &data),
        };
        let p2c = Udp {
            src: m.peer,
            dst: m.relay,
            payload: data.clone(),
        };
        let miss = Udp {
            src: sa(client),
            dst: sa(relay),
            payload: data.clone(),
        };
        paths.push((
            format!("ChannelData client → peer, {family}"),
            frame(&c2p, false),
            XDP_TX,
        ));
        paths.push((
            format!("peer → client ChannelData, {family}"),
            frame(&p2c, false),
            XDP_TX,
        ));
        paths.push((
            format!("miss (passed up), {family}"),
            frame(&miss, false),
            XDP_PASS,
        ));
    }
    println!("XDP fast path, BPF_PROG_TEST_RUN, 100-byte payload, {repeat} runs per round:");
    for (name, input, action) in &paths {
        let check = fp.test_run(input, 1).expect("test run");
        assert_eq!(check.action, *action, "{name}");
        parse(&check.frame).expect("output frame parses with valid checksums");
        let best = (0..rounds)
            .map(|_| fp.test_run(input, repeat).expect("test run").ns_per_run)
            .min()
            .unwrap_or(0);
        println!("  {name:<38} {best:>4} ns/packet");
    }
}
