//! Micro-benchmarks of the engine's data plane on simulated time: routing a client's ChannelData
//! and Send indication to the peer (`handle_client_input`), and a peer's datagram back to the
//! client with the ChannelData or Data-indication header written in place (`handle_peer_input`).
//! The allocation is set up by `vigi_turn::engine::testing`: a client answers the 401 challenge,
//! the harness plays the worker and confirms the relay bind.

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use vigi_turn::engine::server::{PEER_HEADROOM, PEER_TAILROOM};
use vigi_turn::engine::testing::{self, channel_data, peer, send_indication};
use vigi_turn::engine::{ClientDecision, PeerAddr, PeerDecision};

fn benches(c: &mut Criterion) {
    let (peer_chan, peer_send) = (peer(5, 9000), peer(6, 9000));
    let now = Instant::now();
    let (mut s, five, id) = testing::relaying(true, now, 0x4000, peer_chan, peer_send);
    let payload = [0xABu8; 100];
    let cd = channel_data(0x4000, &payload);
    let send = send_indication(peer_send, &payload);

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    assert!(matches!(
        s.handle_client_input(now, five, &cd),
        ClientDecision::Forward { .. }
    ));
    g.bench_function("client_channel_data_100", |b| {
        b.iter(|| s.handle_client_input(now, five, black_box(&cd)))
    });
    assert!(matches!(
        s.handle_client_input(now, five, &send),
        ClientDecision::Forward { .. }
    ));
    g.bench_function("client_send_indication_100", |b| {
        b.iter(|| s.handle_client_input(now, five, black_box(&send)))
    });

    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(&payload);
    let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
    assert!(matches!(
        s.handle_peer_input(now, id, PeerAddr::new(peer_chan), &mut buf, range.clone()),
        PeerDecision::Forward { .. }
    ));
    g.bench_function("peer_to_channel_data_100", |b| {
        b.iter(|| {
            s.handle_peer_input(
                now,
                id,
                PeerAddr::new(peer_chan),
                black_box(&mut buf),
                range.clone(),
            )
        })
    });
    assert!(matches!(
        s.handle_peer_input(now, id, PeerAddr::new(peer_send), &mut buf, range.clone()),
        PeerDecision::Forward { .. }
    ));
    g.bench_function("peer_to_data_indication_100", |b| {
        b.iter(|| {
            s.handle_peer_input(
                now,
                id,
                PeerAddr::new(peer_send),
                black_box(&mut buf),
                range.clone(),
            )
        })
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
