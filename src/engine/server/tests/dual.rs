//! Dual allocations (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY) and the default relay family
//! (`-A/--allocation-default-address-family`), on simulated time.

use super::*;

/// alice and bob with one IPv4 and one IPv6 relay address.
fn dual_config() -> ServerConfig {
    let mut cfg = config();
    cfg.relay_ips.push(RELAY_IP6);
    cfg
}

fn additional_v6(b: &mut MessageBuilder<'_>) {
    b.attr(
        attr::ADDITIONAL_ADDRESS_FAMILY,
        &[attr::FAMILY_IPV6, 0, 0, 0],
    );
}

/// Every XOR-RELAYED-ADDRESS of a response, in order.
fn relayed(r: &Resp) -> Vec<SocketAddr> {
    let m = r.msg();
    let tid = *m.transaction_id();
    r.attrs
        .iter()
        .filter(|(t, _)| *t == attr::XOR_RELAYED_ADDRESS)
        .map(|(_, v)| attr::read_xor_address(v, &tid).expect("an address"))
        .collect()
}

fn v6_peer() -> SocketAddr {
    sa("[2001:db8:1::5]:9000")
}

#[test]
fn dual_allocation_has_two_relayed_addresses_one_lifetime_and_frees_both_ports() {
    let mut h = H::new(dual_config());
    let mut c = Client::alice(udp(40000));
    let r = c.allocate_with(&mut h, &additional_v6);
    r.assert_ok();
    assert!(!r.has(attr::ADDRESS_ERROR_CODE));
    let addrs = relayed(&r);
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0].ip(), RELAY_IP);
    assert_eq!(addrs[1].ip(), RELAY_IP6);
    // Two sockets bound for one allocation, the IPv6 one after the IPv4 one.
    let id = h.alloc_id(c.five);
    assert_eq!(h.binds, vec![(id, addrs[0]), (id, addrs[1])]);
    let size = u32::from(MAX_PORT - MIN_PORT) + 1;
    assert_eq!(h.shared.ports.free(RELAY_IP), size - 1);
    assert_eq!(h.shared.ports.free(RELAY_IP6), size - 1);
    assert_eq!(h.s.counters().allocations_created, 1);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 1);
    // A retransmission gets the same two addresses.
    let again = h.one(c.five, &c.last_request.clone());
    assert_eq!(relayed(&again), addrs);
    // Refresh naming either family is fine; deleting frees both ports.
    for fam in [attr::FAMILY_IPV4, attr::FAMILY_IPV6] {
        c.request(&mut h, Method::REFRESH, &|b| {
            b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[fam, 0, 0, 0]);
        })
        .assert_ok();
    }
    c.refresh(&mut h, Some(0)).assert_ok();
    assert_eq!(h.freed, vec![id]);
    assert_eq!(h.shared.ports.free(RELAY_IP), size);
    assert_eq!(h.shared.ports.free(RELAY_IP6), size);
}

#[test]
fn dual_allocation_relays_both_families_with_permissions_per_peer() {
    let mut h = H::new(dual_config());
    let mut c = Client::alice(udp(40000));
    c.allocate_with(&mut h, &additional_v6).assert_ok();
    let id = h.alloc_id(c.five);
    let (p4, p6) = (peer(), v6_peer());
    // No permission yet: nothing passes either way, either family.
    for p in [p4, p6] {
        let send = c.send_indication(p, b"x");
        assert_eq!(h.input(c.five, &send), ClientDecision::Done);
        assert_eq!(h.peer_sends(c.five, p, b"x").0, PeerDecision::Drop);
    }
    // A permission for the IPv6 peer only.
    c.permit(&mut h, p6).assert_ok();
    let send = c.send_indication(p6, b"hello6");
    match h.input(c.five, &send) {
        ClientDecision::Forward { relay, peer, .. } => assert_eq!((relay, peer.addr()), (id, p6)),
        d => panic!("expected a forward, got {d:?}"),
    }
    let (d, buf) = h.peer_sends(c.five, p6, b"from-v6");
    let PeerDecision::Forward { to, frame } = d else {
        panic!("IPv6 peer data must reach the client");
    };
    assert_eq!(to, c.five);
    let m = Message::decode(&buf[frame]).unwrap();
    assert_eq!(m.method(), Method::DATA);
    assert_eq!(m.get_xor_address(attr::XOR_PEER_ADDRESS), Some(p6));
    assert_eq!(m.get(attr::DATA), Some(&b"from-v6"[..]));
    // The IPv4 peer still has none.
    assert_eq!(h.peer_sends(c.five, p4, b"x").0, PeerDecision::Drop);
    // Channels to both families, in one allocation.
    c.channel_bind(&mut h, 0x4000, p4).assert_ok();
    c.channel_bind(&mut h, 0x4001, p6).assert_ok();
    for (n, p) in [(0x4000, p4), (0x4001, p6)] {
        match h.input(c.five, &channel_data(n, b"cd")) {
            ClientDecision::Forward { relay, peer, .. } => {
                assert_eq!((relay, peer.addr()), (id, p))
            }
            d => panic!("expected a forward to {p}, got {d:?}"),
        }
        let (d, buf) = h.peer_sends(c.five, p, b"back");
        let PeerDecision::Forward { frame, .. } = d else {
            panic!("channel data from {p} must reach the client");
        };
        assert_eq!(&buf[frame.start..frame.start + 2], &n.to_be_bytes());
    }
    // Permissions end per peer.
    h.at(301);
    c.permit(&mut h, p4).assert_ok();
    assert_eq!(h.peer_sends(c.five, p6, b"x").0, PeerDecision::Drop);
    assert!(matches!(
        h.peer_sends(c.five, p4, b"x").0,
        PeerDecision::Forward { .. }
    ));
}

#[test]
fn single_family_allocation_still_refuses_the_other_family_443() {
    let mut h = H::new(dual_config());
    let mut c = Client::alice(udp(40000));
    c.allocate(&mut h).assert_ok();
    c.permit(&mut h, v6_peer()).assert_err(443);
    c.request(&mut h, Method::REFRESH, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    })
    .assert_err(443);
}

#[test]
fn additional_family_without_an_ipv6_relay_is_ipv4_with_address_error_440() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    let r = c.allocate_with(&mut h, &additional_v6);
    r.assert_ok();
    assert_eq!(relayed(&r).len(), 1);
    assert!(relayed(&r)[0].is_ipv4());
    let e = r.get(attr::ADDRESS_ERROR_CODE).unwrap();
    assert_eq!((e[0], e[2], e[3]), (attr::FAMILY_IPV6, 4, 40));
    c.permit(&mut h, v6_peer()).assert_err(443);
}

#[test]
fn additional_family_without_ipv6_ports_is_address_error_508() {
    // One port per address: bob takes the only IPv6 port, alice's dual allocation gets IPv4.
    let mut h = H::with_ports(dual_config(), MIN_PORT, MIN_PORT + 1);
    let mut bob = Client::new(udp(40001), "bob", "bob-pw");
    bob.allocate_with(&mut h, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    })
    .assert_ok();
    let mut bob2 = Client::new(udp(40002), "bob", "bob-pw");
    bob2.allocate_with(&mut h, &|b| {
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    })
    .assert_ok();
    let mut c = Client::alice(udp(40000));
    let r = c.allocate_with(&mut h, &additional_v6);
    r.assert_ok();
    assert_eq!(relayed(&r).len(), 1);
    let e = r.get(attr::ADDRESS_ERROR_CODE).unwrap();
    assert_eq!((e[0], e[2], e[3]), (attr::FAMILY_IPV6, 5, 8));
}

#[test]
fn failed_ipv6_binds_are_retried_then_answered_with_address_error_508() {
    let mut h = H::new(dual_config());
    let mut c = Client::alice(udp(40000));
    // The IPv4 bind succeeds; make the IPv6 one fail once: another port is tried.
    let tid = c.next_tid();
    c.nonce = Some(h.nonce());
    let req = c.build(
        Method::ALLOCATE,
        Class::Request,
        &tid,
        &|b| {
            requested_udp(b);
            additional_v6(b);
        },
        true,
    );
    // Feed it by hand so the harness fails exactly the second and third BindRelay.
    let _ = h.s.handle_client_input(h.now, c.five, &req);
    let Some(Command::BindRelay { id, kind, .. }) = h.s.poll_command() else {
        panic!("expected the IPv4 BindRelay");
    };
    assert_eq!(kind, RelayKind::Udp);
    h.s.handle_relay_bound(h.now, id, Bind::Bound);
    let mut v6_tried = Vec::new();
    for _ in 0..BIND_ATTEMPTS {
        let Some(Command::BindRelay { addr, kind, .. }) = h.s.poll_command() else {
            panic!("expected an IPv6 BindRelay");
        };
        assert!(kind == RelayKind::UdpSecond && addr.is_ipv6());
        v6_tried.push(addr);
        h.s.handle_relay_bound(h.now, id, Bind::Failed);
    }
    assert_eq!(v6_tried.len(), usize::from(BIND_ATTEMPTS));
    // Out of attempts: success with IPv4 only, and 508 for IPv6; no IPv6 port kept.
    h.drain();
    let r = h.responses(c.five).pop().expect("a response");
    r.assert_ok();
    assert_eq!(relayed(&r).len(), 1);
    let e = r.get(attr::ADDRESS_ERROR_CODE).unwrap();
    assert_eq!((e[0], e[2], e[3]), (attr::FAMILY_IPV6, 5, 8));
    let size = u32::from(MAX_PORT - MIN_PORT) + 1;
    assert_eq!(h.shared.ports.free(RELAY_IP6), size);
    assert!(h.s.allocation_on(&c.five).unwrap().second_relay().is_none());
}

#[test]
fn additional_family_other_than_ipv6_or_with_requested_family_is_400() {
    let mut h = H::new(dual_config());
    let mut c = Client::alice(udp(40000));
    c.allocate_with(&mut h, &|b| {
        b.attr(
            attr::ADDITIONAL_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV4, 0, 0, 0],
        );
    })
    .assert_err(400);
    c.allocate_with(&mut h, &|b| {
        additional_v6(b);
        b.attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV4, 0, 0, 0],
        );
    })
    .assert_err(400);
    assert!(h.binds.is_empty());
}

#[test]
fn default_family_follows_the_allocation_default_address_family_flag() {
    let v6_client = five(Transport::Udp, "2001:db8:2::1".parse().unwrap(), 40000);
    for (family, client, want_v6) in [
        (DefaultFamily::Ipv4, v6_client, false),
        (DefaultFamily::Ipv6, udp(40000), true),
        (DefaultFamily::Keep, v6_client, true),
        (DefaultFamily::Keep, udp(40000), false),
    ] {
        let mut cfg = dual_config();
        cfg.default_family = family;
        let mut h = H::new(cfg);
        let mut c = Client::alice(client);
        // The harness's nonce is bound to CLIENT_IP; take the server's from the 401.
        let r = c.allocate(&mut h);
        r.assert_ok();
        let a = relayed(&r);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].is_ipv6(), want_v6, "{family:?} for {client:?}");
        // An explicit family still wins.
        let mut c2 = Client::alice(FiveTuple {
            client: ClientAddr::new(SocketAddr::new(client.client.ip(), 40001)),
            ..client
        });
        let r = c2.allocate_with(&mut h, &|b| {
            b.attr(
                attr::REQUESTED_ADDRESS_FAMILY,
                &[attr::FAMILY_IPV4, 0, 0, 0],
            );
        });
        assert!(relayed(&r)[0].is_ipv4());
    }
}

#[test]
fn coturns_draft_code_points_are_understood_and_answered_in_kind() {
    let mut h = H::new(dual_config());
    let mut c = Client::alice(udp(40000));
    let r = c.allocate_with(&mut h, &|b| {
        b.attr(
            attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    });
    r.assert_ok();
    assert_eq!(relayed(&r).len(), 2);
    // Without an IPv6 relay: ADDRESS-ERROR-CODE under the draft's code point.
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    let r = c.allocate_with(&mut h, &|b| {
        b.attr(
            attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    });
    r.assert_ok();
    assert!(!r.has(attr::ADDRESS_ERROR_CODE));
    let e = r.get(attr::ADDRESS_ERROR_CODE_DRAFT).unwrap();
    assert_eq!((e[0], e[2], e[3]), (attr::FAMILY_IPV6, 4, 40));
}

#[test]
fn dual_allocation_snapshot_shows_both_relays_and_counts_both_families() {
    let mut h = H::new(dual_config());
    let mut c = Client::alice(udp(40000));
    let r = c.allocate_with(&mut h, &additional_v6);
    r.assert_ok();
    let addrs = relayed(&r);
    let (p4, p6) = (peer(), v6_peer());
    c.permit(&mut h, p4).assert_ok();
    c.permit(&mut h, p6).assert_ok();
    for (p, n) in [(p4, 4), (p6, 6)] {
        let send = c.send_indication(p, &vec![0; n]);
        assert!(matches!(
            h.input(c.five, &send),
            ClientDecision::Forward { .. }
        ));
        assert!(matches!(
            h.peer_sends(c.five, p, &vec![0; 10 * n]).0,
            PeerDecision::Forward { .. }
        ));
    }
    let snap = h.s.list(h.now, &crate::engine::server::Select::All);
    assert_eq!(snap.len(), 1);
    let a = &snap[0];
    assert!(a.relay.is_ipv4());
    let second = a.second_relay().expect("the IPv6 relay");
    assert!(second.is_ipv6());
    assert_eq!(vec![a.reported_relay, a.reported_second().unwrap()], addrs);
    // Both families' traffic in the one allocation's counters.
    let flow = |packets, bytes| crate::engine::stats::Flow { packets, bytes };
    assert_eq!(a.stats.peer_sent, flow(2, 10));
    assert_eq!(a.stats.peer_rcv, flow(2, 100));
    assert_eq!(a.stats.client_sent, flow(2, 100));
}
