//! The XDP program run by the kernel on crafted frames (`BPF_PROG_TEST_RUN`): every rewritten
//! frame is parsed back and its IPv4 header and UDP checksums are recomputed from scratch here.
//! Needs root (CAP_BPF, CAP_NET_ADMIN), as CI has; the program is loaded, never attached.

use super::frames::{frame, Udp};
use super::*;

fn parse_verified(f: &[u8]) -> (Udp, u16) {
    super::frames::parse(f).unwrap()
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn mirror_v4(slot: u32) -> ChannelMirror {
    ChannelMirror {
        client: sa("127.0.0.2:40000"),
        local: sa("127.0.0.1:3478"),
        relay: sa("127.0.0.1:50000"),
        peer: sa("127.0.0.3:40001"),
        channel: 0x4001,
        slot,
        expires_ns: u64::MAX,
    }
}

fn mirror_v6(slot: u32) -> ChannelMirror {
    ChannelMirror {
        client: sa("[fd00::2]:40000"),
        local: sa("[fd00::1]:3478"),
        relay: sa("[fd00::1]:50000"),
        peer: sa("[fd00::3]:40001"),
        // RFC 5766's upper range (0x5000-0x7FFF), which coturn's uclient picks from.
        channel: 0x7ffe,
        slot,
        expires_ns: u64::MAX,
    }
}

fn loaded() -> FastPath {
    FastPath::load(MapLimits {
        channels: 64,
        allocations: 8,
        permissions: 64,
    })
    .expect("load (needs root)")
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Client → peer and peer → client for one mirror, with payloads of every length class
/// (odd lengths move the checksum's byte pairing; the 333-byte payload starts with 0x4d, like a
/// ChannelData header, and must still be relayed as a peer's datagram).
fn relay_both_ways(fp: &FastPath, m: &ChannelMirror, zero_csum: bool) -> SlotCounters {
    let mut expect = SlotCounters::default();
    for len in [0usize, 1, 2, 3, 100, 333, 1200] {
        let data = payload(len, len as u8);
        let input = Udp {
            src: m.client,
            dst: m.local,
            payload: channel_data(m.channel, &data),
        };
        let run = fp.test_run(&frame(&input, zero_csum), 1).unwrap();
        assert_eq!(run.action, XDP_TX, "client → peer, {len} B");
        let (out, check) = parse_verified(&run.frame);
        assert_eq!(
            out,
            Udp {
                src: m.relay,
                dst: m.peer,
                payload: data.clone()
            },
            "{len} B"
        );
        assert_eq!(
            check == 0,
            zero_csum && m.client.is_ipv4(),
            "checksum presence kept"
        );
        assert_eq!(
            run.frame[..12],
            frame(&input, zero_csum)[..12],
            "lo: MACs kept"
        );
        expect.c2p_packets += 1;
        expect.c2p_bytes += len as u64;

        let input = Udp {
            src: m.peer,
            dst: m.relay,
            payload: data.clone(),
        };
        let run = fp.test_run(&frame(&input, zero_csum), 1).unwrap();
        assert_eq!(run.action, XDP_TX, "peer → client, {len} B");
        let (out, _) = parse_verified(&run.frame);
        assert_eq!(
            out,
            Udp {
                src: m.local,
                dst: m.client,
                payload: channel_data(m.channel, &data)
            },
            "{len} B"
        );
        expect.p2c_packets += 1;
        expect.p2c_bytes += len as u64;
    }
    expect
}

#[test]
fn channel_data_is_relayed_both_ways_over_ipv4_and_ipv6_with_valid_checksums() {
    let mut fp = loaded();
    let s4 = fp.take_slot().unwrap();
    let s6 = fp.take_slot().unwrap();
    fp.add_channel(&mirror_v4(s4)).unwrap();
    fp.add_channel(&mirror_v6(s6)).unwrap();
    assert_eq!(fp.channel_count(), 2);
    let e4 = relay_both_ways(&fp, &mirror_v4(s4), false);
    let mut e4z = relay_both_ways(&fp, &mirror_v4(s4), true);
    let e6 = relay_both_ways(&fp, &mirror_v6(s6), false);
    e4z.c2p_packets += e4.c2p_packets;
    e4z.c2p_bytes += e4.c2p_bytes;
    e4z.p2c_packets += e4.p2c_packets;
    e4z.p2c_bytes += e4.p2c_bytes;
    assert_eq!(fp.counters(s4), e4z, "per-allocation counters exact");
    assert_eq!(fp.counters(s6), e6);
    let t = fp.totals();
    assert_eq!(t.client_to_peer, e4z.c2p_packets + e6.c2p_packets);
    assert_eq!(t.peer_to_client, e4z.p2c_packets + e6.p2c_packets);
    assert_eq!(t.passed_matched, 0);
}

#[test]
fn a_removed_channel_is_passed_up_at_once_and_a_reused_slot_starts_at_zero() {
    let mut fp = loaded();
    let slot = fp.take_slot().unwrap();
    let m = mirror_v4(slot);
    fp.add_channel(&m).unwrap();
    let input = frame(
        &Udp {
            src: m.client,
            dst: m.local,
            payload: channel_data(m.channel, b"x"),
        },
        false,
    );
    assert_eq!(fp.test_run(&input, 1).unwrap().action, XDP_TX);
    fp.remove_channel(&m);
    let run = fp.test_run(&input, 1).unwrap();
    assert_eq!((run.action, run.frame), (XDP_PASS, input.clone()));
    let back = frame(
        &Udp {
            src: m.peer,
            dst: m.relay,
            payload: b"y".to_vec(),
        },
        false,
    );
    assert_eq!(fp.test_run(&back, 1).unwrap().action, XDP_PASS);
    assert_eq!(fp.counters(slot).c2p_packets, 1);
    fp.release_slot(slot);
    let again = fp.take_slot().unwrap();
    assert_eq!(again, slot);
    assert_eq!(fp.counters(again), SlotCounters::default());
}

#[test]
fn what_the_program_cannot_prove_right_goes_to_user_space_unchanged() {
    let mut fp = loaded();
    let slot = fp.take_slot().unwrap();
    let m = mirror_v4(slot);
    fp.add_channel(&m).unwrap();
    let good = frame(
        &Udp {
            src: m.client,
            dst: m.local,
            payload: channel_data(m.channel, b"hello"),
        },
        false,
    );
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Padded ChannelData (length 5 in 8 bytes of message).
    let mut padded = channel_data(m.channel, b"hello");
    padded[3] = 4;
    cases.push((
        "length short of the datagram",
        frame(
            &Udp {
                src: m.client,
                dst: m.local,
                payload: padded,
            },
            false,
        ),
    ));
    let mut long = channel_data(m.channel, b"hello");
    long[3] = 9;
    cases.push((
        "length past the datagram",
        frame(
            &Udp {
                src: m.client,
                dst: m.local,
                payload: long,
            },
            false,
        ),
    ));
    cases.push((
        "other channel",
        frame(
            &Udp {
                src: m.client,
                dst: m.local,
                payload: channel_data(0x4002, b"hello"),
            },
            false,
        ),
    ));
    cases.push((
        "other client port",
        frame(
            &Udp {
                src: sa("127.0.0.2:40009"),
                dst: m.local,
                payload: channel_data(m.channel, b"hello"),
            },
            false,
        ),
    ));
    cases.push((
        "peer port not bound",
        frame(
            &Udp {
                src: sa("127.0.0.3:40009"),
                dst: m.relay,
                payload: b"x".to_vec(),
            },
            false,
        ),
    ));
    let mut frag = good.clone();
    frag[20] = 0x20; // More Fragments
    cases.push(("fragment", frag));
    let mut opts = good.clone();
    opts[14] = 0x46;
    cases.push(("IPv4 options", opts));
    let mut trailer = good.clone();
    trailer.extend_from_slice(&[0, 0]);
    cases.push(("bytes past tot_len", trailer));
    let mut tcp = good.clone();
    tcp[23] = 6;
    cases.push(("not UDP", tcp));
    for cut in [0, 13, 14, 33, 34, 41, 42, 45, good.len() - 1] {
        cases.push(("truncated", good[..cut].to_vec()));
    }
    for (what, f) in cases {
        if f.len() < 14 {
            continue; // the kernel refuses a test frame shorter than an Ethernet header
        }
        let run = fp.test_run(&f, 1).unwrap();
        assert_eq!(run.action, XDP_PASS, "{what}");
        assert_eq!(run.frame, f, "{what}: unchanged");
    }
    assert_eq!(fp.counters(slot), SlotCounters::default());
    // Across families with a zero UDP checksum (IPv4 allows it, IPv6 does not): passed up.
    let cross = ChannelMirror {
        peer: sa("[fd00::3]:40001"),
        relay: sa("[fd00::1]:50000"),
        ..m
    };
    fp.remove_channel(&m);
    fp.add_channel(&cross).unwrap();
    let zero = frame(
        &Udp {
            src: m.client,
            dst: m.local,
            payload: channel_data(m.channel, b"hello"),
        },
        true,
    );
    assert_eq!(fp.test_run(&zero, 1).unwrap().action, XDP_PASS);
    assert_eq!(
        fp.totals().passed_matched,
        3,
        "two bad lengths and one cross-family without a checksum"
    );
}

#[test]
fn a_full_map_is_reported_and_leaves_nothing_behind() {
    let mut fp = FastPath::load(MapLimits {
        channels: 1,
        allocations: 1,
        permissions: 1,
    })
    .unwrap();
    let slot = fp.take_slot().unwrap();
    assert_eq!(fp.take_slot(), None, "one slot");
    fp.add_channel(&mirror_v4(slot)).unwrap();
    let err = fp.add_channel(&mirror_v6(slot)).unwrap_err();
    assert!(matches!(err, FastPathError::Full("CHANNELS")), "{err}");
    assert_eq!(fp.channel_count(), 1);
}

/// IPv4 entries live in their own maps (compact keys), yet the limits hold over both families:
/// refreshing an entry at the limit is no new entry, removing one makes room for either family.
#[test]
fn the_map_limits_hold_over_both_families_and_a_refresh_is_not_a_new_entry() {
    let mut fp = FastPath::load(MapLimits {
        channels: 1,
        allocations: 1,
        permissions: 1,
    })
    .unwrap();
    let slot = fp.take_slot().unwrap();
    for (first, second) in [
        (mirror_v4(slot), mirror_v6(slot)),
        (mirror_v6(slot), mirror_v4(slot)),
    ] {
        fp.add_channel(&first).unwrap();
        fp.add_channel(&ChannelMirror {
            expires_ns: 1,
            ..first
        })
        .unwrap();
        assert!(matches!(
            fp.add_channel(&second),
            Err(FastPathError::Full("CHANNELS"))
        ));
        assert_eq!(fp.channel_count(), 1);
        fp.remove_channel(&first);
        fp.add_channel(&second).unwrap();
        assert_eq!(fp.channel_count(), 1);
        fp.remove_channel(&second);
        assert_eq!(fp.channel_count(), 0);
    }
    for (first, second) in [
        (perm_v4(slot), perm_v6(slot)),
        (perm_v6(slot), perm_v4(slot)),
    ] {
        fp.add_permission(&first).unwrap();
        fp.add_permission(&PermissionMirror {
            expires_ns: 1,
            ..first
        })
        .unwrap();
        assert!(matches!(
            fp.add_permission(&second),
            Err(FastPathError::Full("SEND_PERMS"))
        ));
        assert_eq!(fp.permission_count(), 1);
        fp.remove_permission(&first);
        fp.add_permission(&second).unwrap();
        assert_eq!(fp.permission_count(), 1);
        fp.remove_permission(&second);
        assert_eq!(fp.permission_count(), 0);
    }
}

#[test]
fn an_entry_past_its_expiry_is_passed_up_without_user_space_touching_the_map() {
    let mut fp = loaded();
    let slot = fp.take_slot().unwrap();
    let live = mirror_v6(slot);
    let expired = ChannelMirror {
        expires_ns: monotonic_ns(),
        ..mirror_v4(slot)
    };
    fp.add_channel(&live).unwrap();
    fp.add_channel(&expired).unwrap();
    let c2p = |m: &ChannelMirror| {
        frame(
            &Udp {
                src: m.client,
                dst: m.local,
                payload: channel_data(m.channel, b"x"),
            },
            false,
        )
    };
    let p2c = |m: &ChannelMirror| {
        frame(
            &Udp {
                src: m.peer,
                dst: m.relay,
                payload: b"y".to_vec(),
            },
            false,
        )
    };
    assert_eq!(fp.test_run(&c2p(&live), 1).unwrap().action, XDP_TX);
    assert_eq!(fp.test_run(&p2c(&live), 1).unwrap().action, XDP_TX);
    assert_eq!(fp.test_run(&c2p(&expired), 1).unwrap().action, XDP_PASS);
    assert_eq!(fp.test_run(&p2c(&expired), 1).unwrap().action, XDP_PASS);
    assert_eq!(fp.totals().passed_matched, 2);
}

#[test]
fn on_loopback_ipv4_is_relayed_without_a_udp_checksum_and_ipv6_is_passed_up() {
    let mut fp = loaded();
    fp.set_loopback_partial_csum(true).unwrap();
    let slot = fp.take_slot().unwrap();
    let (m4, m6) = (mirror_v4(slot), mirror_v6(slot));
    fp.add_channel(&m4).unwrap();
    fp.add_channel(&m6).unwrap();
    for data in [&b"x"[..], &[0x41; 333][..]] {
        let input = Udp {
            src: m4.client,
            dst: m4.local,
            payload: channel_data(m4.channel, data),
        };
        let run = fp.test_run(&frame(&input, false), 1).unwrap();
        assert_eq!(run.action, XDP_TX);
        let (out, check) = parse_verified(&run.frame);
        assert_eq!((out.payload.as_slice(), check), (data, 0));
        let input = Udp {
            src: m4.peer,
            dst: m4.relay,
            payload: data.to_vec(),
        };
        let run = fp.test_run(&frame(&input, false), 1).unwrap();
        assert_eq!(parse_verified(&run.frame).1, 0);
    }
    let input = frame(
        &Udp {
            src: m6.client,
            dst: m6.local,
            payload: channel_data(m6.channel, b"x"),
        },
        false,
    );
    let run = fp.test_run(&input, 1).unwrap();
    assert_eq!((run.action, run.frame), (XDP_PASS, input));
}

// ---------------------------------------------------------------------------------------------
// Send and Data indications

use crate::proto::{attr, message, Class, Message, MessageBuilder, Method};

fn perm_v4(slot: u32) -> PermissionMirror {
    PermissionMirror {
        client: sa("127.0.0.2:40000"),
        local: sa("127.0.0.1:3478"),
        relay: sa("127.0.0.1:50000"),
        peer: "127.0.0.3".parse().unwrap(),
        slot,
        expires_ns: u64::MAX,
    }
}

fn perm_v6(slot: u32) -> PermissionMirror {
    PermissionMirror {
        client: sa("[fd00::2]:40000"),
        local: sa("[fd00::1]:3478"),
        relay: sa("[fd00::1]:50000"),
        peer: "fd00::3".parse().unwrap(),
        slot,
        expires_ns: u64::MAX,
    }
}

/// A Send indication: `before` adds attributes after XOR-PEER-ADDRESS, `after` after DATA.
fn send_with(
    peer: SocketAddr,
    data: &[u8],
    before: impl Fn(&mut MessageBuilder),
    after: impl Fn(&mut MessageBuilder),
) -> Vec<u8> {
    let mut out = Vec::new();
    let tid: [u8; 12] = rand::random();
    let mut b = MessageBuilder::new(&mut out, Method::SEND, Class::Indication, &tid);
    b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
    before(&mut b);
    b.attr(attr::DATA, data);
    after(&mut b);
    out
}

fn send(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    send_with(peer, data, |_| {}, |_| {})
}

/// The Data indication the engine writes for `data` from `peer` (handle_peer_input: its header
/// writer, the payload, zero padding), with transaction id `tid`.
fn engine_data_indication(peer: SocketAddr, data: &[u8], tid: &[u8; 12]) -> Vec<u8> {
    let mut v = vec![0u8; message::data_indication_header_len(&peer)];
    message::write_data_indication_header(&mut v, &peer, tid, data.len());
    v.extend_from_slice(data);
    v.resize(v.len() + (4 - data.len() % 4) % 4, 0);
    v
}

/// Send indications client → peer and datagrams peer → client (as Data indications) for one
/// permission; returns what the slot must have counted.
fn indications_both_ways(fp: &FastPath, m: &PermissionMirror, zero_csum: bool) -> SlotCounters {
    let peer = SocketAddr::new(m.peer, 40001);
    let mut expect = SlotCounters::default();
    let mut tids = std::collections::HashSet::new();
    for (i, len) in [0usize, 1, 2, 3, 100, 333, 1200].into_iter().enumerate() {
        let data = payload(len, (len as u8).wrapping_mul(7));
        // Every other one with a comprehension-optional attribute (SOFTWARE) before DATA.
        let msg = if i % 2 == 1 {
            send_with(
                peer,
                &data,
                |b| {
                    b.attr(attr::SOFTWARE, b"vt");
                },
                |_| {},
            )
        } else {
            send(peer, &data)
        };
        let input = Udp {
            src: m.client,
            dst: m.local,
            payload: msg,
        };
        let run = fp.test_run(&frame(&input, zero_csum), 1).unwrap();
        assert_eq!(run.action, XDP_TX, "Send, {len} B");
        let (out, check) = parse_verified(&run.frame);
        assert_eq!(
            out,
            Udp {
                src: m.relay,
                dst: peer,
                payload: data.clone()
            },
            "Send, {len} B"
        );
        assert_eq!(check == 0, zero_csum && m.client.is_ipv4());
        expect.c2p_packets += 1;
        expect.c2p_bytes += len as u64;
        expect.c2p_indications += 1;

        let input = Udp {
            src: peer,
            dst: m.relay,
            payload: data.clone(),
        };
        let run = fp.test_run(&frame(&input, zero_csum), 1).unwrap();
        assert_eq!(run.action, XDP_TX, "Data, {len} B");
        let (out, check) = parse_verified(&run.frame);
        assert_eq!((out.src, out.dst), (m.local, m.client));
        assert_eq!(check == 0, zero_csum && m.client.is_ipv4());
        let tid: [u8; 12] = out.payload[8..20].try_into().unwrap();
        assert!(tids.insert(tid), "a fresh transaction id per packet");
        assert_eq!(
            out.payload,
            engine_data_indication(peer, &data, &tid),
            "Data, {len} B: the engine's bytes"
        );
        let decoded = Message::decode(&out.payload).expect("a valid STUN message");
        assert_eq!(decoded.get_xor_address(attr::XOR_PEER_ADDRESS), Some(peer));
        assert_eq!(decoded.get(attr::DATA), Some(&data[..]));
        expect.p2c_packets += 1;
        expect.p2c_bytes += len as u64;
        expect.p2c_indications += 1;
    }
    expect
}

fn add(a: &mut SlotCounters, b: SlotCounters) {
    a.c2p_packets += b.c2p_packets;
    a.c2p_bytes += b.c2p_bytes;
    a.p2c_packets += b.p2c_packets;
    a.p2c_bytes += b.p2c_bytes;
    a.c2p_indications += b.c2p_indications;
    a.p2c_indications += b.p2c_indications;
}

#[test]
fn send_and_data_indications_are_relayed_over_ipv4_and_ipv6_as_the_engine_would() {
    let mut fp = loaded();
    let s4 = fp.take_slot().unwrap();
    let s6 = fp.take_slot().unwrap();
    fp.add_permission(&perm_v4(s4)).unwrap();
    fp.add_permission(&perm_v6(s6)).unwrap();
    assert_eq!(fp.permission_count(), 2);
    let mut e4 = indications_both_ways(&fp, &perm_v4(s4), false);
    add(&mut e4, indications_both_ways(&fp, &perm_v4(s4), true));
    let e6 = indications_both_ways(&fp, &perm_v6(s6), false);
    assert_eq!(fp.counters(s4), e4, "per-allocation counters exact");
    assert_eq!(fp.counters(s6), e6);
    let t = fp.totals();
    assert_eq!(t.client_to_peer, e4.c2p_packets + e6.c2p_packets);
    assert_eq!(t.peer_to_client, e4.p2c_packets + e6.p2c_packets);
    assert_eq!(t.passed_matched, 0);
}

#[test]
fn a_peer_port_with_a_channel_gets_channel_data_and_its_other_ports_data_indications() {
    let mut fp = loaded();
    let slot = fp.take_slot().unwrap();
    let ch = mirror_v4(slot);
    let perm = perm_v4(slot);
    assert_eq!(ch.peer.ip(), perm.peer);
    fp.add_channel(&ch).unwrap();
    fp.add_permission(&perm).unwrap();
    let from = |port: u16| {
        frame(
            &Udp {
                src: SocketAddr::new(perm.peer, port),
                dst: perm.relay,
                payload: b"hello".to_vec(),
            },
            false,
        )
    };
    let run = fp.test_run(&from(ch.peer.port()), 1).unwrap();
    assert_eq!(
        parse_verified(&run.frame).0.payload,
        channel_data(ch.channel, b"hello")
    );
    let run = fp.test_run(&from(ch.peer.port() + 1), 1).unwrap();
    let out = parse_verified(&run.frame).0;
    let tid: [u8; 12] = out.payload[8..20].try_into().unwrap();
    let peer = SocketAddr::new(perm.peer, ch.peer.port() + 1);
    assert_eq!(out.payload, engine_data_indication(peer, b"hello", &tid));
}

/// Channels and the permission of one peer IP share the kernel's peer → client entry (one lookup
/// for either kind): each can go without the other, a channel alone sends the IP's other ports
/// up, and a fifth channel to one IP does not fit and leaves nothing behind.
#[test]
fn a_peer_ips_channels_and_permission_come_and_go_independently() {
    let mut fp = loaded();
    let slot = fp.take_slot().unwrap();
    let ch = mirror_v4(slot);
    let perm = perm_v4(slot);
    let from = |port: u16| {
        frame(
            &Udp {
                src: SocketAddr::new(perm.peer, port),
                dst: perm.relay,
                payload: b"hello".to_vec(),
            },
            false,
        )
    };
    let kind = |fp: &FastPath, port: u16| {
        let run = fp.test_run(&from(port), 1).unwrap();
        if run.action == XDP_PASS {
            assert_eq!(run.frame, from(port), "passed up unchanged");
            return "up";
        }
        let out = parse_verified(&run.frame).0;
        if out.payload == channel_data(ch.channel, b"hello") {
            "channel"
        } else {
            assert_eq!(out.payload[..2], [0x00, 0x17]);
            "data"
        }
    };
    let (port, other) = (ch.peer.port(), ch.peer.port() + 1);
    fp.add_channel(&ch).unwrap();
    assert_eq!((kind(&fp, port), kind(&fp, other)), ("channel", "up"));
    fp.add_permission(&perm).unwrap();
    assert_eq!((kind(&fp, port), kind(&fp, other)), ("channel", "data"));
    fp.remove_channel(&ch);
    assert_eq!((kind(&fp, port), kind(&fp, other)), ("data", "data"));
    fp.add_channel(&ch).unwrap();
    fp.remove_permission(&perm);
    assert_eq!((kind(&fp, port), kind(&fp, other)), ("channel", "up"));
    // Four more channels to other ports of the same IP: three fit beside the first.
    let more = |i: u16| ChannelMirror {
        peer: SocketAddr::new(ch.peer.ip(), 41000 + i),
        channel: 0x4100 + i,
        ..ch
    };
    for i in 0..3 {
        fp.add_channel(&more(i)).unwrap();
    }
    assert!(matches!(
        fp.add_channel(&more(3)),
        Err(FastPathError::Full("PEER_IPS"))
    ));
    assert_eq!(fp.channel_count(), 4, "the refused one left nothing behind");
    assert_eq!(kind(&fp, 41003), "up");
    fp.remove_channel(&ch);
    assert_eq!(kind(&fp, port), "up");
    fp.add_channel(&more(3)).unwrap();
    for i in 0..4 {
        fp.remove_channel(&more(i));
    }
    assert_eq!(fp.channel_count(), 0);
    assert_eq!(kind(&fp, 41000), "up");
}

#[test]
fn send_indications_the_program_cannot_prove_right_go_to_user_space_unchanged() {
    let mut fp = loaded();
    let slot = fp.take_slot().unwrap();
    let m = perm_v4(slot);
    fp.add_permission(&m).unwrap();
    let peer = SocketAddr::new(m.peer, 40001);
    let wrap = |payload: Vec<u8>| {
        frame(
            &Udp {
                src: m.client,
                dst: m.local,
                payload,
            },
            false,
        )
    };
    let none = |_: &mut MessageBuilder| {};
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "DONT-FRAGMENT",
            send_with(
                peer,
                b"hello",
                |b| {
                    b.attr(attr::DONT_FRAGMENT, &[]);
                },
                none,
            ),
        ),
        (
            "MESSAGE-INTEGRITY",
            send_with(peer, b"hello", none, |b| {
                b.integrity(b"key");
            }),
        ),
        (
            "unknown comprehension-required attribute",
            send_with(
                peer,
                b"hello",
                |b| {
                    b.attr(0x7f01, b"x");
                },
                none,
            ),
        ),
        (
            "too much before DATA",
            send_with(
                peer,
                b"hello",
                |b| {
                    b.attr(attr::SOFTWARE, &[b'x'; 40]);
                },
                none,
            ),
        ),
        (
            "no permission for the peer",
            send(sa("127.0.0.4:40001"), b"hello"),
        ),
        ("peer port 0", send(sa("127.0.0.3:0"), b"hello")),
        (
            "a peer of the other family",
            send(sa("[fd00::3]:40001"), b"hello"),
        ),
    ];
    let good = send(peer, b"hello");
    let mut padded = good.clone();
    *padded.last_mut().unwrap() = 1;
    cases.push(("non-zero padding", padded));
    let mut classic = good.clone();
    classic[4] ^= 1;
    cases.push(("no magic cookie", classic));
    let mut long = good.clone();
    long[3] += 4;
    cases.push(("length past the datagram", long));
    let mut short = good.clone();
    short.extend_from_slice(&[0; 4]);
    cases.push(("bytes past the message", short));
    let mut data_len = good.clone();
    let at = data_len.len() - 12 + 3; // DATA's length (5, in 8 bytes), low byte
    data_len[at] = 9;
    cases.push(("DATA longer than the message", data_len));
    let mut family = good.clone();
    family[25] = 2; // XOR-PEER-ADDRESS family 2 with 8 bytes
    cases.push(("address family and length disagree", family));
    let after_fingerprint = send_with(peer, b"hello", none, |b| {
        b.fingerprint();
        b.attr(attr::SOFTWARE, b"x");
    });
    cases.push(("an attribute after FINGERPRINT", after_fingerprint));
    let two_data = send_with(peer, b"hello", none, |b| {
        b.attr(attr::DATA, b"again");
    });
    cases.push(("two DATA", two_data));
    let mut twice = Vec::new();
    {
        let tid: [u8; 12] = rand::random();
        let mut b = MessageBuilder::new(&mut twice, Method::SEND, Class::Indication, &tid);
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        b.attr(attr::DATA, b"hello");
    }
    cases.push(("two XOR-PEER-ADDRESS", twice));
    let mut data_ind = good.clone();
    data_ind[1] = 0x17;
    cases.push(("a Data indication from the client", data_ind));
    // DATA first, as turnutils_uclient -s sends it (the program checks this layout at fixed
    // offsets before its general scan): the same faults there.
    let data_first = |fingerprint: bool| {
        let mut out = Vec::new();
        let tid: [u8; 12] = rand::random();
        let mut b = MessageBuilder::new(&mut out, Method::SEND, Class::Indication, &tid);
        b.attr(attr::DATA, b"hello");
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        if fingerprint {
            b.fingerprint();
        }
        out
    };
    for fingerprint in [false, true] {
        let good = data_first(fingerprint);
        let mut padded = good.clone();
        padded[29] = 1; // the first padding byte after "hello"
        cases.push(("DATA first, non-zero padding", padded));
        let mut family = good.clone();
        family[37] = 2; // XOR-PEER-ADDRESS family 2 with 8 bytes
        cases.push(("DATA first, address family and length disagree", family));
        let mut port0 = good.clone();
        port0[38] = 0x21; // X-Port 0x2112: port 0
        port0[39] = 0x12;
        cases.push(("DATA first, peer port 0", port0));
        let mut short = good.clone();
        short.extend_from_slice(&[0; 4]);
        short[3] += 4;
        cases.push(("DATA first, then a comprehension-required type 0", short));
    }
    let mut peer_twice = data_first(false);
    let xpa = peer_twice[32..].to_vec();
    peer_twice.extend_from_slice(&xpa);
    peer_twice[3] += xpa.len() as u8;
    cases.push(("DATA first, two XOR-PEER-ADDRESS", peer_twice));
    for (what, payload) in cases {
        let f = wrap(payload);
        let run = fp.test_run(&f, 1).unwrap();
        assert_eq!(run.action, XDP_PASS, "{what}");
        assert_eq!(run.frame, f, "{what}: unchanged");
    }
    assert_eq!(fp.counters(slot), SlotCounters::default());
    let run = fp.test_run(&wrap(good), 1).unwrap();
    assert_eq!(run.action, XDP_TX, "the well-formed one is relayed");
    for fingerprint in [false, true] {
        let run = fp.test_run(&wrap(data_first(fingerprint)), 1).unwrap();
        assert_eq!(run.action, XDP_TX, "DATA first, well-formed");
    }
}

/// A Send indication whose FINGERPRINT is wrong, as the kernel sees it under each setting of
/// `--xdp-verify-fingerprint`.
fn bad_fingerprint_send(fp: &FastPath, m: &PermissionMirror, data: &[u8]) -> (Vec<u8>, TestRun) {
    let peer = SocketAddr::new(m.peer, 40001);
    let mut msg = send_with(
        peer,
        data,
        |_| {},
        |b| {
            b.fingerprint();
        },
    );
    *msg.last_mut().unwrap() ^= 1;
    assert!(Message::decode(&msg).is_err(), "the engine refuses it");
    let f = frame(
        &Udp {
            src: m.client,
            dst: m.local,
            payload: msg,
        },
        false,
    );
    let run = fp.test_run(&f, 1).unwrap();
    (f, run)
}

/// By default the kernel trims FINGERPRINT without checking its CRC (docs/fast-path.md,
/// "FINGERPRINT"): a wrong one is relayed like a right one, payload intact and counted.
#[test]
fn a_wrong_fingerprint_is_trimmed_unchecked_by_default() {
    let mut fp = loaded();
    let slot = fp.take_slot().unwrap();
    for m in [perm_v4(slot), perm_v6(slot)] {
        fp.add_permission(&m).unwrap();
        let data = payload(100, 7);
        let (_, run) = bad_fingerprint_send(&fp, &m, &data);
        assert_eq!(run.action, XDP_TX);
        assert_eq!(
            parse_verified(&run.frame).0,
            Udp {
                src: m.relay,
                dst: SocketAddr::new(m.peer, 40001),
                payload: data,
            }
        );
    }
    let c = fp.counters(slot);
    assert_eq!((c.c2p_packets, c.c2p_bytes, c.c2p_indications), (2, 200, 2));
}

/// With `--xdp-verify-fingerprint` the kernel checks the CRC: a wrong FINGERPRINT goes to user
/// space unchanged and uncounted (the engine drops it); a right one is still relayed.
#[test]
fn with_verify_fingerprint_a_wrong_fingerprint_goes_to_user_space_unchanged() {
    let mut fp = FastPath::load_with(
        MapLimits {
            channels: 64,
            allocations: 8,
            permissions: 64,
        },
        ProgramOptions {
            verify_fingerprint: true,
        },
    )
    .expect("load (needs root)");
    let slot = fp.take_slot().unwrap();
    for m in [perm_v4(slot), perm_v6(slot)] {
        fp.add_permission(&m).unwrap();
        let (f, run) = bad_fingerprint_send(&fp, &m, b"hello");
        assert_eq!(run.action, XDP_PASS);
        assert_eq!(run.frame, f, "unchanged");
    }
    assert_eq!(fp.counters(slot), SlotCounters::default());
    assert_eq!(fp.totals().passed_matched, 0);
    for m in [perm_v4(slot), perm_v6(slot)] {
        let peer = SocketAddr::new(m.peer, 40001);
        let msg = send_with(
            peer,
            b"hello",
            |_| {},
            |b| {
                b.fingerprint();
            },
        );
        let f = frame(
            &Udp {
                src: m.client,
                dst: m.local,
                payload: msg,
            },
            false,
        );
        let run = fp.test_run(&f, 1).unwrap();
        assert_eq!(run.action, XDP_TX, "a right FINGERPRINT is relayed");
        assert_eq!(parse_verified(&run.frame).0.payload, b"hello");
    }
}

/// What Send indications look like in the field: turnutils_uclient -s puts DATA first, then
/// XOR-PEER-ADDRESS, then FINGERPRINT; others add SOFTWARE behind DATA. The kernel cuts
/// everything but DATA's value, with FINGERPRINT checked (`--xdp-verify-fingerprint`) or not.
#[test]
fn send_indications_with_data_first_trailing_attributes_and_fingerprint_are_relayed_trimmed() {
    for verify_fingerprint in [false, true] {
        send_indications_relayed_trimmed(ProgramOptions { verify_fingerprint });
    }
}

fn send_indications_relayed_trimmed(options: ProgramOptions) {
    let mut fp = FastPath::load_with(
        MapLimits {
            channels: 64,
            allocations: 8,
            permissions: 64,
        },
        options,
    )
    .expect("load (needs root)");
    let slot = fp.take_slot().unwrap();
    for m in [perm_v4(slot), perm_v6(slot)] {
        fp.add_permission(&m).unwrap();
        let peer = SocketAddr::new(m.peer, 40001);
        for len in [0usize, 1, 2, 3, 100, 333, 1200] {
            let data = payload(len, len as u8);
            let tid: [u8; 12] = rand::random();
            let mut uclient = Vec::new();
            MessageBuilder::new(&mut uclient, Method::SEND, Class::Indication, &tid)
                .attr(attr::DATA, &data)
                .xor_address(attr::XOR_PEER_ADDRESS, &peer)
                .fingerprint();
            let trailing = send_with(
                peer,
                &data,
                |_| {},
                |b| {
                    b.attr(attr::SOFTWARE, b"vigi");
                    b.fingerprint();
                },
            );
            for msg in [uclient, trailing] {
                assert!(Message::decode(&msg).is_ok());
                let f = frame(
                    &Udp {
                        src: m.client,
                        dst: m.local,
                        payload: msg,
                    },
                    false,
                );
                let run = fp.test_run(&f, 1).unwrap();
                assert_eq!(run.action, XDP_TX, "{len} B");
                assert_eq!(
                    parse_verified(&run.frame).0,
                    Udp {
                        src: m.relay,
                        dst: peer,
                        payload: data.clone()
                    }
                );
            }
        }
    }
    let c = fp.counters(slot);
    assert_eq!((c.c2p_packets, c.c2p_indications), (28, 28));
}

#[test]
fn an_expired_or_removed_permission_is_passed_up_at_once_both_ways() {
    let mut fp = loaded();
    let slot = fp.take_slot().unwrap();
    let live = perm_v6(slot);
    let expired = PermissionMirror {
        expires_ns: monotonic_ns(),
        ..perm_v4(slot)
    };
    fp.add_permission(&live).unwrap();
    fp.add_permission(&expired).unwrap();
    let c2p = |m: &PermissionMirror| {
        frame(
            &Udp {
                src: m.client,
                dst: m.local,
                payload: send(SocketAddr::new(m.peer, 40001), b"x"),
            },
            false,
        )
    };
    let p2c = |m: &PermissionMirror| {
        frame(
            &Udp {
                src: SocketAddr::new(m.peer, 40001),
                dst: m.relay,
                payload: b"y".to_vec(),
            },
            false,
        )
    };
    assert_eq!(fp.test_run(&c2p(&live), 1).unwrap().action, XDP_TX);
    assert_eq!(fp.test_run(&p2c(&live), 1).unwrap().action, XDP_TX);
    for f in [c2p(&expired), p2c(&expired)] {
        let run = fp.test_run(&f, 1).unwrap();
        assert_eq!((run.action, run.frame), (XDP_PASS, f));
    }
    assert_eq!(fp.totals().passed_matched, 2);
    fp.remove_permission(&live);
    assert_eq!(fp.permission_count(), 1);
    for f in [c2p(&live), p2c(&live)] {
        let run = fp.test_run(&f, 1).unwrap();
        assert_eq!((run.action, run.frame), (XDP_PASS, f));
    }
    let c = fp.counters(slot);
    assert_eq!((c.c2p_indications, c.p2c_indications), (1, 1));
}

#[test]
fn a_full_permission_map_is_reported_and_leaves_nothing_behind() {
    let mut fp = FastPath::load(MapLimits {
        channels: 1,
        allocations: 1,
        permissions: 1,
    })
    .unwrap();
    let slot = fp.take_slot().unwrap();
    fp.add_permission(&perm_v4(slot)).unwrap();
    let err = fp.add_permission(&perm_v6(slot)).unwrap_err();
    assert!(matches!(err, FastPathError::Full("SEND_PERMS")), "{err}");
    assert_eq!(fp.permission_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Across address families (dual allocations)

/// A dual allocation's channel and permission to a peer of the other family: ChannelData, Send
/// and Data indications both ways, IPv4 client with an IPv6 peer and the reverse; the IP header
/// changes size, every checksum verifies, Data indications are the engine's bytes.
#[test]
fn channels_and_indications_are_relayed_across_address_families() {
    let mut fp = loaded();
    let slot = fp.take_slot().unwrap();
    let cases = [
        // (client, local, relay of the peer's family, peer)
        (
            "IPv4 client, IPv6 peer",
            sa("127.0.0.2:40000"),
            sa("127.0.0.1:3478"),
            sa("[fd00::1]:50002"),
            sa("[fd00::3]:40001"),
        ),
        (
            "IPv6 client, IPv4 peer",
            sa("[fd00::2]:40000"),
            sa("[fd00::1]:3478"),
            sa("127.0.0.1:50003"),
            sa("127.0.0.3:40001"),
        ),
    ];
    let mut expect = SlotCounters::default();
    for (what, client, local, relay, peer) in cases {
        let ch = ChannelMirror {
            client,
            local,
            relay,
            peer,
            channel: 0x4abc,
            slot,
            expires_ns: u64::MAX,
        };
        fp.add_channel(&ch).unwrap();
        fp.add_permission(&PermissionMirror {
            client,
            local,
            relay,
            peer: peer.ip(),
            slot,
            expires_ns: u64::MAX,
        })
        .unwrap();
        let other_port = SocketAddr::new(peer.ip(), peer.port() + 1);
        for len in [0usize, 1, 2, 3, 100, 333, 1200] {
            let data = payload(len, len as u8 ^ 0x5a);
            let run_ok = |input: Udp| {
                let run = fp.test_run(&frame(&input, false), 1).unwrap();
                assert_eq!(run.action, XDP_TX, "{what}, {len} B");
                parse_verified(&run.frame).0
            };
            // ChannelData client → peer.
            let out = run_ok(Udp {
                src: client,
                dst: local,
                payload: channel_data(ch.channel, &data),
            });
            assert_eq!((out.src, out.dst, &out.payload), (relay, peer, &data));
            // Send indications, plain and uclient-shaped (DATA first, FINGERPRINT).
            let tid: [u8; 12] = rand::random();
            let mut uclient = Vec::new();
            MessageBuilder::new(&mut uclient, Method::SEND, Class::Indication, &tid)
                .attr(attr::DATA, &data)
                .xor_address(attr::XOR_PEER_ADDRESS, &other_port)
                .fingerprint();
            for msg in [send(peer, &data), uclient] {
                let to = if msg[20..22] == attr::DATA.to_be_bytes() {
                    other_port
                } else {
                    peer
                };
                let out = run_ok(Udp {
                    src: client,
                    dst: local,
                    payload: msg,
                });
                assert_eq!((out.src, out.dst, &out.payload), (relay, to, &data));
            }
            // ChannelData peer → client.
            let out = run_ok(Udp {
                src: peer,
                dst: relay,
                payload: data.clone(),
            });
            assert_eq!(
                (out.src, out.dst, out.payload),
                (local, client, channel_data(ch.channel, &data))
            );
            // Data indication from the peer's other port.
            let out = run_ok(Udp {
                src: other_port,
                dst: relay,
                payload: data.clone(),
            });
            assert_eq!((out.src, out.dst), (local, client));
            let tid: [u8; 12] = out.payload[8..20].try_into().unwrap();
            assert_eq!(
                out.payload,
                engine_data_indication(other_port, &data, &tid),
                "{what}, {len} B"
            );
            expect.c2p_packets += 3;
            expect.c2p_bytes += 3 * len as u64;
            expect.c2p_indications += 2;
            expect.p2c_packets += 2;
            expect.p2c_bytes += 2 * len as u64;
            expect.p2c_indications += 1;
        }
    }
    assert_eq!(fp.counters(slot), expect, "counters exact");
    assert_eq!(fp.totals().passed_matched, 0);
}
