//! Allocate: refusals by code, the success answer, lifetimes, EVEN-PORT and reservations.

use super::*;

#[test]
fn retransmitted_allocate_gets_the_identical_response() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    let first = c.allocate(&mut h);
    first.assert_ok();
    let req = c.last_request.clone();
    let again = h.one(c.five, &req);
    assert_eq!(again.raw, first.raw);
    assert_eq!(h.binds.len(), 1, "no second relay");
}

#[test]
fn requested_transport_errors() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    // TCP is a relay kind of its own (RFC 6062), but not over UDP: 400.
    for (proto, code) in [(attr::PROTO_TCP, 400), (99, 442)] {
        c.request(&mut h, Method::ALLOCATE, &|b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[proto, 0, 0, 0]);
        })
        .assert_err(code);
    }
    c.request(&mut h, Method::ALLOCATE, &nothing)
        .assert_err(400);
    c.request(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0]);
    })
    .assert_err(400);
    c.allocate_with(&mut h, &|b| {
        b.attr(attr::RESERVATION_TOKEN, &[1; 8]);
        b.attr(attr::EVEN_PORT, &[0x80]);
    })
    .assert_err(400);
    assert!(h.binds.is_empty());
    assert_eq!(h.s.counters().allocations_refused, 5);
}

#[test]
fn address_family_not_supported_is_440() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    for fam in [attr::FAMILY_IPV6, 0x03] {
        c.allocate_with(&mut h, &|b| {
            b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[fam, 0, 0, 0]);
        })
        .assert_err(440);
    }
    assert!(h.binds.is_empty());
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 0);
    // IPv4 explicitly is fine.
    c.allocate_with(&mut h, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV4, 0, 0, 0],
        );
    })
    .assert_ok();
}

#[test]
fn peer_of_the_other_family_is_443() {
    let (mut h, mut c) = allocated(config());
    let v6 = sa("[2001:db8::1]:9000");
    c.permit(&mut h, v6).assert_err(443);
    c.channel_bind(&mut h, 0x4000, v6).assert_err(443);
    // Refresh asking for the other family.
    c.request(&mut h, Method::REFRESH, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    })
    .assert_err(443);
}

#[test]
fn peer_policy_refusals_are_403() {
    let mut cfg = config();
    cfg.relay_ips.push(RELAY_IP6);
    cfg.peer_policy.denied.push(IpRange {
        start: "10.0.0.0".parse().unwrap(),
        end: "10.255.255.255".parse().unwrap(),
    });
    let (mut h, mut c) = allocated(cfg);
    for bad in [
        "127.0.0.1:9000",
        "0.0.0.0:9000",
        "127.1.2.3:9000",
        "10.1.2.3:9000",
        "224.0.0.1:9000",
    ] {
        c.permit(&mut h, sa(bad)).assert_err(403);
        c.channel_bind(&mut h, 0x4000, sa(bad)).assert_err(403);
    }
    // The IPv6 forms of CVE-2020-26262, on an IPv6 allocation (on an IPv4 one they are 443).
    let mut c6 = Client::alice(udp(40001));
    let r = c6.allocate_with(&mut h, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    });
    r.assert_ok();
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS).unwrap().ip(), RELAY_IP6);
    for bad in [
        "[::]:9000",
        "[::1]:9000",
        "[::ffff:127.0.0.1]:9000",
        "[::ffff:0.0.0.0]:9000",
        "[::127.0.0.1]:9000",
        // Issue 15: tunnels, NAT64/SIIT forms of private and loopback addresses, and a denied
        // range reached through NAT64.
        "[2002:7f00:1::]:9000",
        "[2001::1]:9000",
        "[64:ff9b::7f00:1]:9000",
        "[::ffff:0:7f00:1]:9000",
        "[64:ff9b::a00:1]:9000",
        "[fd00::1]:9000",
    ] {
        c6.permit(&mut h, sa(bad)).assert_err(403);
        c6.channel_bind(&mut h, 0x4000, sa(bad)).assert_err(403);
        c.permit(&mut h, sa(bad)).assert_err(443);
    }
    // All or nothing: one bad address refuses the whole request.
    c.request(&mut h, Method::CREATE_PERMISSION, &|b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer());
        b.xor_address(attr::XOR_PEER_ADDRESS, &sa("127.0.0.1:1"));
    })
    .assert_err(403);
    let id = h.alloc_id(c.five);
    assert!(h.s.get(id).unwrap().permissions().is_empty(h.now));
    c6.permit(&mut h, sa("[2001:db8::77]:1")).assert_ok();
    c.permit(&mut h, peer()).assert_ok();

    // With allow_loopback, 127.0.0.1 is fine; 0.0.0.0 never is.
    let mut cfg = config();
    cfg.peer_policy.allow_loopback = true;
    let (mut h, mut c) = allocated(cfg);
    c.permit(&mut h, sa("127.0.0.1:9000")).assert_ok();
    c.permit(&mut h, sa("0.0.0.0:9000")).assert_err(403);
}

#[test]
fn quotas_are_486() {
    let mut cfg = config();
    cfg.user_quota = 1;
    let mut h = H::new(cfg);
    Client::alice(udp(40000)).allocate(&mut h).assert_ok();
    let mut second = Client::alice(udp(40001));
    second.allocate(&mut h).assert_err(486);
    Client::new(udp(40002), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_ok();
    assert_eq!(h.binds.len(), 2);
    // Releasing alice's first allocation gives her quota back.
    h.s.handle_transport_closed(udp(40000));
    h.drain();
    second.allocate(&mut h).assert_ok();

    let mut cfg = config();
    cfg.total_quota = 2;
    let mut h = H::new(cfg);
    Client::alice(udp(40000)).allocate(&mut h).assert_ok();
    Client::new(udp(40001), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_ok();
    Client::alice(udp(40002)).allocate(&mut h).assert_err(486);
    Client::new(udp(40003), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_err(486);
    let by_code: Vec<(u16, u64)> =
        h.s.counters()
            .refused_by_code
            .iter()
            .filter(|c| c.1 > 0)
            .collect();
    assert_eq!(by_code, vec![(486, 2)]);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 2);
}

#[test]
fn exhausted_port_range_is_508() {
    let mut h = H::with_ports(config(), 50000, 50001);
    let a = Client::alice(udp(40000)).allocate(&mut h);
    let b = Client::alice(udp(40001)).allocate(&mut h);
    let mut ports = vec![
        a.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        b.xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
    ];
    ports.sort();
    assert_eq!(ports, vec![50000, 50001]);
    let mut c = Client::alice(udp(40002));
    c.allocate(&mut h).assert_err(508);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 2);
    assert!(h.s.allocation_on(&c.five).is_none());
    h.s.handle_transport_closed(udp(40000));
    h.drain();
    c.allocate(&mut h).assert_ok();
}

#[test]
fn relay_bind_failing_every_attempt_is_508() {
    // Few ports, so that picking the failed one again would be likely.
    let (min, max) = (MIN_PORT, MIN_PORT + 2);
    let mut h = H::with_ports(config(), min, max);
    h.fail_binds = u32::from(BIND_ATTEMPTS);
    let mut c = Client::alice(udp(40000));
    let r = c.allocate(&mut h);
    r.assert_err(508);
    assert!(r.msg().check_integrity(&c.key()));
    assert_eq!(h.binds.len(), usize::from(BIND_ATTEMPTS));
    // A retry never picks the port that just failed: someone else holds it.
    assert!(
        h.binds.windows(2).all(|w| w[0].1 != w[1].1),
        "{:?}",
        h.binds
    );
    assert!(h.s.allocation_on(&c.five).is_none());
    assert_eq!(h.shared.ports.free(RELAY_IP), u32::from(max - min) + 1);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 0);

    // A SHA-256 client's 508 carries MESSAGE-INTEGRITY-SHA256 as every other answer it gets
    // (issue 15/17: this answer was built by hand and lost it).
    let mut h = H::with_ports(config(), min, max);
    h.fail_binds = u32::from(BIND_ATTEMPTS);
    let mut c = Client::alice(udp(40000));
    c.sha256 = true;
    let r = c.allocate(&mut h);
    r.assert_err(508);
    assert!(
        r.msg().has_integrity_sha256(),
        "508 without MESSAGE-INTEGRITY-SHA256"
    );
    assert!(r.msg().check_integrity_sha256(&c.key()));

    // One failure less: the last attempt binds.
    let mut h = H::new(config());
    h.fail_binds = u32::from(BIND_ATTEMPTS) - 1;
    let r = Client::alice(udp(40000)).allocate(&mut h);
    r.assert_ok();
    let (_, last) = *h.binds.last().unwrap();
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS), Some(last));
    assert_eq!(
        h.shared.ports.free(RELAY_IP),
        u32::from(MAX_PORT - MIN_PORT)
    );
}

#[test]
fn channel_bind_bad_requests_are_400() {
    let (mut h, mut c) = allocated(config());
    let p2 = sa("203.0.113.6:9000");
    // Outside the range a client may bind (RFC 8656 §12: 0x4000..=0x4FFF; CHANNEL_MAX may be
    // raised to RFC 5766's 0x7FFF for coturn's clients, so the top is taken from the constant).
    let (min, max) = (channel_data::CHANNEL_MIN, channel_data::CHANNEL_MAX);
    for bad in [0x0000, 0x3FFF, min - 1, max + 1, 0x8000, 0xFFFF] {
        c.channel_bind(&mut h, bad, peer()).assert_err(400);
    }
    c.channel_bind(&mut h, max, sa("203.0.113.7:1")).assert_ok();
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok(); // a refresh
    c.channel_bind(&mut h, 0x4000, p2).assert_err(400); // number taken
    c.channel_bind(&mut h, 0x4001, peer()).assert_err(400); // peer taken
                                                            // Same IP, other port: a different transport address, so a separate channel is fine.
    c.channel_bind(&mut h, 0x4ABC, sa("203.0.113.5:9001"))
        .assert_ok();
    c.request(&mut h, Method::CHANNEL_BIND, &|b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &p2);
    })
    .assert_err(400);
    c.request(&mut h, Method::CHANNEL_BIND, &|b| {
        b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x02, 0, 0]);
    })
    .assert_err(400);
    c.request(&mut h, Method::CHANNEL_BIND, &|b| {
        b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x02]);
        b.xor_address(attr::XOR_PEER_ADDRESS, &p2);
    })
    .assert_err(400);
    c.request(&mut h, Method::CREATE_PERMISSION, &nothing)
        .assert_err(400);
}

#[test]
fn allocate_success_response() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    let r = c.allocate(&mut h);
    r.assert_ok();
    let relay = r.xor(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relay.ip(), RELAY_IP);
    assert!((MIN_PORT..=MAX_PORT).contains(&relay.port()));
    assert_eq!(h.binds, vec![(h.alloc_id(c.five), relay)]);
    assert_eq!(r.lifetime(), Some(600));
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(c.five.client.addr()));
    assert!(r.has(attr::SOFTWARE));
    let m = r.msg();
    assert!(m.check_integrity(&c.key()));
    assert!(!m.check_integrity(&auth::key_md5("alice", REALM, "other")));
    assert!(!m.has_fingerprint());
    assert!(!m.has_integrity_sha256());
    assert_eq!(h.s.counters().allocations_created, 1);

    // With FINGERPRINT in the request, the response has one.
    let mut f = Client::alice(udp(40001));
    f.fingerprint = true;
    assert!(f.allocate(&mut h).assert_ok().msg().has_fingerprint());
}

#[test]
fn allocate_lifetimes() {
    let mut h = H::new(config());
    for (i, (asked, got)) in [
        (1200, 1200),
        (99999, 3600),
        (10, 600),
        (600, 600),
        (3600, 3600),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Client::alice(udp(41000 + i as u16));
        let r = c.allocate_with(&mut h, &|b| {
            b.attr_u32(attr::LIFETIME, asked);
        });
        assert_eq!(r.assert_ok().lifetime(), Some(got), "asked {asked}");
        assert_eq!(
            h.s.allocation_on(&c.five).unwrap().expires(),
            h.t0 + Duration::from_secs(u64::from(got))
        );
    }
}

#[test]
fn external_ip_mapping_changes_xor_relayed_address() {
    let public: IpAddr = "203.0.113.77".parse().unwrap();
    for private in [None, Some(RELAY_IP)] {
        let mut cfg = config();
        cfg.external_ips = vec![(public, private)];
        let (h, c) = allocated(cfg);
        let a = h.s.allocation_on(&c.five).unwrap();
        assert_eq!(a.relay().ip(), RELAY_IP);
        assert_eq!(
            a.reported_relay(),
            SocketAddr::new(public, a.relay().port())
        );
    }
    // A mapping for another private address leaves ours alone.
    let mut cfg = config();
    cfg.external_ips = vec![(public, Some("192.0.2.99".parse().unwrap()))];
    let mut h = H::new(cfg);
    let mut c = Client::alice(udp(40000));
    let r = c.allocate(&mut h);
    assert_eq!(r.xor(attr::XOR_RELAYED_ADDRESS), Some(h.relay_of(c.five)));

    let mut cfg = config();
    cfg.external_ips = vec![(public, None)];
    let mut h = H::new(cfg);
    let r = Client::alice(udp(40000)).allocate(&mut h);
    let got = r.xor(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(got.ip(), public);
    assert_eq!(got.port(), h.binds[0].1.port());
}

#[test]
fn even_port_and_reservation_token() {
    let mut h = H::new(config());
    let r = Client::alice(udp(40000)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x00]);
    });
    let port = r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!(port % 2, 0);
    assert!(!r.has(attr::RESERVATION_TOKEN));

    let r = Client::alice(udp(40001)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    });
    let port = r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!(port % 2, 0);
    let token = r
        .get(attr::RESERVATION_TOKEN)
        .expect("R bit gives a token")
        .to_vec();
    assert_eq!(token.len(), 8);
    // The reserved port is not handed out to anyone else.
    assert!(!h.shared.ports.take_exact(RELAY_IP, port + 1));

    let mut other = Client::alice(udp(40002));
    let r = other.allocate_with(&mut h, &|b| {
        b.attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(
        r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        port + 1
    );
    // A token is good once.
    Client::alice(udp(40003))
        .allocate_with(&mut h, &|b| {
            b.attr(attr::RESERVATION_TOKEN, &token);
        })
        .assert_err(508);
    // An unknown token, or one of the wrong size.
    Client::alice(udp(40004))
        .allocate_with(&mut h, &|b| {
            b.attr(attr::RESERVATION_TOKEN, &[0xAB; 8]);
        })
        .assert_err(508);
    Client::alice(udp(40005))
        .allocate_with(&mut h, &|b| {
            b.attr(attr::RESERVATION_TOKEN, &[0xAB; 4]);
        })
        .assert_err(400);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 3);
}

/// Issue 15: a reservation counts against the reserving user's quota until it is used or
/// released, so EVEN-PORT is no way around `--user-quota`; a REST user counts by its user part,
/// so a fresh credential is no way around it either.
#[test]
fn reservations_and_fresh_rest_credentials_count_against_the_user() {
    let mut cfg = rest_config(&[b"north"]);
    cfg.user_quota = 2;
    let mut h = H::new(cfg);
    let r = Client::alice(udp(40000)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    });
    let token = r.assert_ok().get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    // One allocation and one reservation: alice is at her quota.
    Client::alice(udp(40001)).allocate(&mut h).assert_err(486);
    // Her reservation is hers to use: the allocation made from it takes its place.
    Client::alice(udp(40002))
        .allocate_with(&mut h, &|b| {
            b.attr(attr::RESERVATION_TOKEN, &token);
        })
        .assert_ok();
    Client::alice(udp(40003)).allocate(&mut h).assert_err(486);
    // An unused reservation gives the quota back when its 30 s are up.
    h.s.handle_transport_closed(udp(40002));
    h.drain();
    let mut c = Client::new(udp(40004), "bob", "bob-pw");
    c.allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    })
    .assert_ok();
    Client::new(udp(40005), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_err(486);
    h.at(RESERVATION_SECS + 1);
    Client::new(udp(40006), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_ok();
    // Two credentials of one REST user share its quota.
    let first = auth::mint_rest_credentials(b"north", "carol", 3600, UNIX0 + 40, ':');
    let second = auth::mint_rest_credentials(b"north", "carol", 7200, UNIX0 + 40, ':');
    Client::new(udp(40007), &first.username, &first.password)
        .allocate(&mut h)
        .assert_ok();
    Client::new(udp(40008), &second.username, &second.password)
        .allocate(&mut h)
        .assert_ok();
    Client::new(udp(40009), &first.username, &first.password)
        .allocate(&mut h)
        .assert_err(486);
}

#[test]
fn unclaimed_reservation_is_released() {
    let mut h = H::with_ports(config(), 50000, 50001);
    let r = Client::alice(udp(40000)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    });
    assert_eq!(
        r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        50000
    );
    let mut c = Client::alice(udp(40001));
    c.allocate(&mut h).assert_err(508);
    h.at(RESERVATION_SECS + 1);
    c.allocate(&mut h).assert_ok();
}
