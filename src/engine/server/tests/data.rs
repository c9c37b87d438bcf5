//! The data plane: Send and Data indications, ChannelData both ways.

use super::*;

#[test]
fn send_indication_needs_a_permission() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    let ind = c.send_indication(peer(), b"hello peer");
    assert_eq!(h.input(c.five, &ind), ClientDecision::Done);
    assert_eq!(h.s.counters().dropped_no_permission, 1);
    assert!(h.sent.is_empty());

    let r = c.permit(&mut h, peer());
    r.assert_ok();
    assert!(r.msg().check_integrity(&c.key()));
    let d = h.input(c.five, &ind);
    let ClientDecision::Forward {
        relay,
        peer: to,
        payload,
    } = d
    else {
        panic!("expected Forward, got {d:?}");
    };
    assert_eq!((relay, to), (id, PeerAddr::new(peer())));
    assert_eq!(&ind[payload], b"hello peer");
    // The permission is per IP: another port of the same peer passes.
    let other_port = c.send_indication(sa("203.0.113.5:1"), b"x");
    assert!(matches!(
        h.input(c.five, &other_port),
        ClientDecision::Forward { .. }
    ));
    // Another IP does not.
    let other_ip = c.send_indication(sa("203.0.113.6:9000"), b"x");
    assert_eq!(h.input(c.five, &other_ip), ClientDecision::Done);
    assert_eq!(h.s.counters().dropped_no_permission, 2);
    // A Send without DATA or XOR-PEER-ADDRESS, or from a 5-tuple without allocation.
    let mut no_data = Vec::new();
    MessageBuilder::new(&mut no_data, Method::SEND, Class::Indication, &[1; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, &peer());
    h.silent(c.five, &no_data);
    h.silent(udp(40999), &ind);
    // Empty DATA is forwarded as an empty datagram.
    let empty = c.send_indication(peer(), b"");
    let ClientDecision::Forward { payload, .. } = h.input(c.five, &empty) else {
        panic!("empty DATA");
    };
    assert!(payload.is_empty());
    // Counted as relayed: the three forwarded, not the refused or malformed ones.
    assert_eq!(h.s.counters().send_indications, 3);
}

#[test]
fn channel_bind_then_channel_data_forwards() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    // Unbound channel: dropped.
    assert_eq!(
        h.input(c.five, &channel_data(0x4000, b"early")),
        ClientDecision::Done
    );
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    for len in [0usize, 1, 5, 100, 0xFFFF] {
        let data = vec![0x5A; len];
        let cd = channel_data(0x4000, &data);
        assert_eq!(
            h.input(c.five, &cd),
            ClientDecision::Forward {
                relay: id,
                peer: PeerAddr::new(peer()),
                payload: 4..4 + len
            }
        );
        // Padding after the data (stream transports, or a sloppy UDP sender) is ignored.
        let mut padded = cd.clone();
        padded.extend_from_slice(&[0; 3]);
        assert!(
            matches!(h.input(c.five, &padded), ClientDecision::Forward { payload, .. } if payload == (4..4 + len))
        );
    }
    // The channel installed the permission: Send works too.
    let ind = c.send_indication(peer(), b"x");
    assert!(matches!(
        h.input(c.five, &ind),
        ClientDecision::Forward { .. }
    ));
    // A length beyond the packet, or another channel number.
    h.silent(c.five, &[0x40, 0x00, 0x00, 0x09, 1, 2, 3]);
    h.silent(c.five, &channel_data(0x4001, b"x"));
    assert!(h.sent.is_empty());
}

#[test]
fn peer_data_becomes_a_data_indication() {
    let (mut h, mut c) = allocated(config());
    let (d, _) = h.peer_sends(c.five, peer(), b"too early");
    assert_eq!(d, PeerDecision::Drop);
    assert_eq!(h.s.counters().dropped_no_permission, 1);
    c.permit(&mut h, peer()).assert_ok();
    for payload in [&b""[..], b"a", b"four", b"hello", &[7u8; 1000]] {
        let (d, buf) = h.peer_sends(c.five, peer(), payload);
        let PeerDecision::Forward { to, frame } = d else {
            panic!("expected Forward, got {d:?}");
        };
        assert_eq!(to, c.five);
        let m = Message::decode(&buf[frame.clone()]).expect("a well-formed Data indication");
        assert_eq!((m.method(), m.class()), (Method::DATA, Class::Indication));
        assert!(!m.is_classic());
        assert_eq!(m.get_xor_address(attr::XOR_PEER_ADDRESS), Some(peer()));
        assert_eq!(m.get(attr::DATA), Some(payload));
        assert_eq!(frame.end, PEER_HEADROOM + payload.len().div_ceil(4) * 4);
    }
    // Not permitted: dropped.
    let (d, _) = h.peer_sends(c.five, sa("203.0.113.6:9000"), b"x");
    assert_eq!(d, PeerDecision::Drop);
    assert_eq!(h.s.counters().dropped_no_permission, 2);
    let a = h.s.allocation_on(&c.five).unwrap();
    assert_eq!(a.stats().client_sent.packets, 5);
    assert_eq!(a.stats().peer_rcv.packets, 7);
    assert_eq!(h.s.counters().data_indications, 5);
}

#[test]
fn peer_data_to_an_ipv6_allocation() {
    let mut cfg = config();
    cfg.relay_ips.push(RELAY_IP6);
    let mut h = H::new(cfg);
    let mut c = Client::alice(udp(40000));
    c.allocate_with(&mut h, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    })
    .assert_ok();
    let p6 = sa("[2001:db8::5]:7000");
    c.permit(&mut h, p6).assert_ok();
    let max = 0xFFFF - 64;
    for len in [0, 3, max] {
        let payload = vec![0xA5; len];
        let (d, buf) = h.peer_sends(c.five, p6, &payload);
        let PeerDecision::Forward { frame, .. } = d else {
            panic!("len {len}: {d:?}");
        };
        assert_eq!(frame.start, 0, "the IPv6 header uses all the headroom");
        let m = Message::decode(&buf[frame]).unwrap();
        assert_eq!(m.get_xor_address(attr::XOR_PEER_ADDRESS), Some(p6));
        assert_eq!(m.get(attr::DATA), Some(&payload[..]));
    }
}

#[test]
fn peer_data_on_a_channel_gets_a_channel_data_header() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut h = H::new(config());
        let mut c = Client::alice(five(transport, CLIENT_IP, 40000));
        c.allocate(&mut h).assert_ok();
        c.channel_bind(&mut h, 0x4ABC, peer()).assert_ok();
        for payload in [&b""[..], b"a", b"four", b"hello"] {
            let (d, buf) = h.peer_sends(c.five, peer(), payload);
            let PeerDecision::Forward { to, frame } = d else {
                panic!("{d:?}");
            };
            assert_eq!(to, c.five);
            assert_eq!(frame.start, PEER_HEADROOM - 4);
            let pad = if transport.is_stream() {
                (4 - payload.len() % 4) % 4
            } else {
                0
            };
            assert_eq!(
                frame.len(),
                4 + payload.len() + pad,
                "{transport:?} {payload:?}"
            );
            let f = &buf[frame];
            let cd = ChannelData::decode(f).unwrap();
            assert_eq!((cd.channel.get(), cd.data), (0x4ABC, payload));
            assert!(
                f[4 + payload.len()..].iter().all(|&b| b == 0),
                "padding is zeros"
            );
        }
        // Another peer with only a permission gets Data indications.
        let p2 = sa("203.0.113.5:9999");
        let (d, buf) = h.peer_sends(c.five, p2, b"xyz");
        let PeerDecision::Forward { frame, .. } = d else {
            panic!("{d:?}");
        };
        assert_eq!(
            Message::decode(&buf[frame]).unwrap().get(attr::DATA),
            Some(&b"xyz"[..])
        );
    }
}

#[test]
fn peer_input_with_bad_buffers_is_dropped() {
    let (mut h, mut c) = allocated(config());
    c.permit(&mut h, peer()).assert_ok();
    let id = h.alloc_id(c.five);
    let now = h.now;
    let mut buf = vec![0u8; 200];
    let cases: Vec<Range<usize>> = vec![
        0..10,                                 // no headroom
        PEER_HEADROOM - 1..PEER_HEADROOM + 10, // one byte short
        PEER_HEADROOM..200,                    // no tailroom
        PEER_HEADROOM..197,                    // three bytes of tailroom
        PEER_HEADROOM..500,                    // past the buffer
        Range {
            start: 100,
            end: 60,
        }, // reversed
        PEER_HEADROOM..usize::MAX,             // absurd
        usize::MAX - 1..usize::MAX,            // absurd
    ];
    for r in cases {
        assert_eq!(
            h.s.handle_peer_input(now, id, PeerAddr::new(peer()), &mut buf, r.clone()),
            PeerDecision::Drop,
            "{r:?}"
        );
    }
    // Too big for a Data indication.
    let mut big = vec![0u8; PEER_HEADROOM + 0xFFFF + PEER_TAILROOM];
    let r = PEER_HEADROOM..PEER_HEADROOM + 0xFFFF - 63;
    assert_eq!(
        h.s.handle_peer_input(now, id, PeerAddr::new(peer()), &mut big, r),
        PeerDecision::Drop
    );
    // An id from nowhere.
    let bogus = AllocationId {
        index: 77,
        generation: 3,
    };
    assert_eq!(
        h.s.handle_peer_input(
            now,
            bogus,
            PeerAddr::new(peer()),
            &mut buf,
            PEER_HEADROOM..60
        ),
        PeerDecision::Drop
    );
    // The exact minimum works.
    let mut ok = vec![0u8; PEER_HEADROOM + 4 + PEER_TAILROOM];
    assert!(matches!(
        h.s.handle_peer_input(
            now,
            id,
            PeerAddr::new(peer()),
            &mut ok,
            PEER_HEADROOM..PEER_HEADROOM + 4
        ),
        PeerDecision::Forward { .. }
    ));
}
