//! Micro-benchmarks of the wire code on the hot paths: decoding an authenticated Allocate request,
//! checking its MESSAGE-INTEGRITY, and decoding a ChannelData message.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use vigi_turn::engine::auth::key_md5;
use vigi_turn::proto::{attr, channel_data, ChannelData, Class, Message, MessageBuilder, Method};

/// An Allocate request as a client sends it after the 401: REQUESTED-TRANSPORT, LIFETIME,
/// USERNAME, REALM, NONCE, MESSAGE-INTEGRITY, FINGERPRINT.
fn allocate_request(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Method::ALLOCATE, Class::Request, &[7; 12])
        .attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0])
        .attr_u32(attr::LIFETIME, 600)
        .attr(attr::USERNAME, b"bench")
        .attr(attr::REALM, b"bench.local")
        .attr(
            attr::NONCE,
            b"obMatJos2wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .integrity(key)
        .fingerprint();
    out
}

fn benches(c: &mut Criterion) {
    let key = key_md5("bench", "bench.local", "benchpw");
    let req = allocate_request(&key);

    let mut g = c.benchmark_group("proto");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_allocate_with_mi", |b| {
        b.iter(|| Message::decode(black_box(&req)).expect("valid"))
    });
    let m = Message::decode(&req).expect("valid");
    assert!(m.check_integrity(&key));
    g.bench_function("check_message_integrity", |b| {
        b.iter(|| black_box(&m).check_integrity(black_box(&key)))
    });
    g.bench_function("key_md5", |b| {
        b.iter(|| key_md5(black_box("bench"), "bench.local", "benchpw"))
    });
    let mut cd = vec![0u8; 4 + 100];
    channel_data::write_header(
        &mut cd,
        channel_data::ChannelNumber::new(0x4000).unwrap(),
        100,
    );
    g.bench_function("decode_channel_data_100", |b| {
        b.iter(|| ChannelData::decode(black_box(&cd)).expect("valid"))
    });
    g.finish();
}

criterion_group!(proto, benches);
criterion_main!(proto);
