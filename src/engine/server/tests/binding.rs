//! STUN Binding, RFC 5780 and RFC 3489 clients, and what is not a request at all.

use super::*;

#[test]
fn binding_returns_xor_mapped_address_and_software() {
    let mut h = H::new(config());
    let c = udp(40000);
    let r = h.one(c, &binding_request(&[1; 12], &nothing));
    r.assert_ok();
    assert_eq!(r.method, Method::BINDING);
    assert_eq!(r.msg().transaction_id(), &[1; 12]);
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(c.client.addr()));
    assert!(r.has(attr::SOFTWARE));
    assert!(!r.msg().has_fingerprint());
    assert!(!r.msg().has_integrity());

    // IPv6 client.
    let c6 = five(Transport::Udp, "2001:db8::99".parse().unwrap(), 5000);
    let r = h.one(c6, &binding_request(&[2; 12], &nothing));
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(c6.client.addr()));
    assert_eq!(h.s.counters().binding_requests, 2);
}

#[test]
fn binding_fingerprint_iff_request_had_one_or_configured() {
    let mut h = H::new(config());
    let c = udp(40000);
    let with_fp = binding_request(&[3; 12], &|b| {
        b.fingerprint();
    });
    assert!(h.one(c, &with_fp).msg().has_fingerprint());
    assert!(!h
        .one(c, &binding_request(&[4; 12], &nothing))
        .msg()
        .has_fingerprint());

    let mut cfg = config();
    cfg.fingerprint = true;
    cfg.software = None;
    let mut h = H::new(cfg);
    let r = h.one(c, &binding_request(&[5; 12], &nothing));
    assert!(r.msg().has_fingerprint());
    assert!(!r.has(attr::SOFTWARE));
}

fn rfc5780_config() -> ServerConfig {
    let ips: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
    ServerConfig {
        rfc5780: Some(Rfc5780::new(&ips, 3478, 3479)),
        ..config()
    }
}

fn change_request(ip: bool, port: bool) -> impl Fn(&mut MessageBuilder<'_>) {
    move |b: &mut MessageBuilder<'_>| {
        let flags = (u8::from(ip) << 2) | (u8::from(port) << 1);
        b.attr(attr::CHANGE_REQUEST, &[0, 0, 0, flags]);
    }
}

#[test]
fn rfc5780_pairs_addresses_of_one_family() {
    let ips: Vec<IpAddr> = ["192.0.2.1", "2001:db8::1", "192.0.2.2", "192.0.2.3"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let r = Rfc5780::new(&ips, 3478, 3479);
    assert_eq!(
        r.other_address(sa("192.0.2.1:3478")),
        Some(sa("192.0.2.2:3479"))
    );
    assert_eq!(
        r.other_address(sa("192.0.2.3:3479")),
        Some(sa("192.0.2.1:3478"))
    );
    // Alone in its family, or on a port that is neither: no alternate.
    assert_eq!(r.other_address(sa("[2001:db8::1]:3478")), None);
    assert_eq!(r.other_address(sa("192.0.2.1:5349")), None);
    assert_eq!(
        r.source(sa("192.0.2.2:3478"), false, true),
        Some(sa("192.0.2.2:3479"))
    );
    assert_eq!(
        r.source(sa("192.0.2.2:3478"), true, false),
        Some(sa("192.0.2.3:3478"))
    );
}

#[test]
fn rfc5780_answers_from_the_changed_address_with_origin_and_other() {
    let mut h = H::new(rfc5780_config());
    let c = udp(40000);
    for (ip, port, from) in [
        (false, false, "192.0.2.1:3478"),
        (false, true, "192.0.2.1:3479"),
        (true, false, "192.0.2.2:3478"),
        (true, true, "192.0.2.2:3479"),
    ] {
        assert_eq!(
            h.input(c, &binding_request(&[7; 12], &change_request(ip, port))),
            ClientDecision::Done
        );
        let (to, data) = h.sent.pop().expect("one answer");
        assert!(h.sent.is_empty());
        assert_eq!(to.client, c.client);
        assert_eq!(to.server, sa(from), "CHANGE-REQUEST ip={ip} port={port}");
        let m = Message::decode(&data).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(
            m.get_xor_address(attr::XOR_MAPPED_ADDRESS),
            Some(c.client.addr())
        );
        let origin = m.get(attr::RESPONSE_ORIGIN).and_then(attr::read_address);
        assert_eq!(origin, Some(sa(from)));
        let other = m.get(attr::OTHER_ADDRESS).and_then(attr::read_address);
        assert_eq!(other, Some(sa("192.0.2.2:3479")));
    }
    // A plain Binding advertises the alternate address too, and comes from where it went.
    let r = h.one(c, &binding_request(&[8; 12], &nothing));
    r.assert_ok();
    assert!(r.has(attr::OTHER_ADDRESS) && r.has(attr::RESPONSE_ORIGIN));
}

#[test]
fn change_request_without_rfc5780_is_420_and_over_tcp_is_400() {
    let mut h = H::new(config());
    let r = h.one(
        udp(40000),
        &binding_request(&[9; 12], &change_request(true, true)),
    );
    r.assert_err(420);
    assert_eq!(
        r.get(attr::UNKNOWN_ATTRIBUTES),
        Some(&attr::CHANGE_REQUEST.to_be_bytes()[..])
    );
    let r = h.one(udp(40000), &binding_request(&[10; 12], &nothing));
    assert!(!r.has(attr::OTHER_ADDRESS));

    let mut h = H::new(rfc5780_config());
    h.one(
        tcp(40001),
        &binding_request(&[11; 12], &change_request(false, true)),
    )
    .assert_err(400);
    // A malformed CHANGE-REQUEST (not 4 bytes) is 400 as well.
    h.one(
        udp(40002),
        &binding_request(&[12; 12], &|b| {
            b.attr(attr::CHANGE_REQUEST, &[0, 6]);
        }),
    )
    .assert_err(400);
}

#[test]
fn classic_rfc3489_binding_gets_mapped_address() {
    let mut h = H::new(config());
    let c = udp(40000);
    let mut req = vec![0x00, 0x01, 0x00, 0x00];
    let id: Vec<u8> = (0xA0..0xB0).collect();
    req.extend_from_slice(&id);
    let r = h.one(c, &req);
    r.assert_ok();
    assert!(r.msg().is_classic());
    assert_eq!(
        &r.raw[4..20],
        &id[..],
        "the 128-bit transaction id is echoed"
    );
    assert_eq!(
        r.get(attr::MAPPED_ADDRESS).and_then(attr::read_address),
        Some(c.client.addr())
    );
    assert!(!r.has(attr::XOR_MAPPED_ADDRESS));
    // Classic non-Binding requests are ignored.
    let mut alloc = req.clone();
    alloc[1] = 0x03;
    h.silent(c, &alloc);
}

#[test]
fn garbage_short_responses_and_stray_channel_data_are_ignored() {
    let mut h = H::new(config());
    let c = udp(40000);
    let tid = [9u8; 12];
    let mut success = Vec::new();
    MessageBuilder::new(&mut success, Method::BINDING, Class::Success, &tid)
        .xor_address(attr::XOR_MAPPED_ADDRESS, &c.client.addr());
    let mut error = Vec::new();
    MessageBuilder::new(&mut error, Method::ALLOCATE, Class::Error, &tid).error_code(401, "");
    let mut indication = Vec::new();
    MessageBuilder::new(&mut indication, Method::BINDING, Class::Indication, &tid);
    let mut bad_fp = binding_request(&tid, &|b| {
        b.fingerprint();
    });
    *bad_fp.last_mut().unwrap() ^= 1;
    let mut bad_len = binding_request(&tid, &nothing);
    bad_len[3] = 4;
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 1],
        vec![0, 1, 0, 0, 0x21, 0x12, 0xA4],
        binding_request(&tid, &nothing)[..19].to_vec(),
        bad_len,
        bad_fp,
        vec![0xFF; 64],
        vec![22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        channel_data(0x4000, b"hello"),
        channel_data(0x4FFF, b""),
        vec![0x40, 0x00, 0x00, 0x10, 1],
        vec![0x40],
        success,
        error,
        indication,
    ];
    for i in &inputs {
        h.silent(c, i);
    }
    assert!(h.s.counters().malformed > 0);
}

#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let mut h = H::new(config());
    let c = udp(40000);
    let req = binding_request(&[1; 12], &|b| {
        b.attr(0x0031, b"xyz");
        b.attr(0x8031, b"optional is fine");
    });
    let r = h.one(c, &req);
    r.assert_err(420);
    assert_eq!(r.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x31][..]));
    // Comprehension-optional alone is ignored.
    h.one(
        c,
        &binding_request(&[2; 12], &|b| {
            b.attr(0x8031, b"x");
        }),
    )
    .assert_ok();
    // The same on a TURN request, before authentication.
    let mut a = Client::alice(c);
    let r = a.request(&mut h, Method::ALLOCATE, &|b| {
        requested_udp(b);
        b.attr(0x0031, &[0; 4]);
    });
    r.assert_err(420);
    assert_eq!(r.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x31][..]));
    assert!(h.binds.is_empty());
}
