//! Per-allocation and server-wide limits: late requests, permission and channel caps, bandwidth.

use super::*;

#[test]
fn requests_after_the_lifetime_find_no_allocation_even_before_the_timer_runs() {
    // The worker's timer may fire late (a busy loop, a batch of packets first): a request that
    // arrives after the lifetime must not revive the allocation.
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    h.now = h.t0 + Duration::from_secs(600); // no handle_timeout
    c.refresh(&mut h, None).assert_err(437);
    assert_eq!(h.freed, vec![id]);
    assert_eq!(h.s.counters().allocations_expired, 1);
    // The timer firing afterwards frees nothing twice.
    h.at(601);
    assert_eq!(h.freed, vec![id]);
    // And a new Allocate on the same 5-tuple succeeds instead of 437.
    c.allocate(&mut h).assert_ok();
}

#[test]
fn permission_and_channel_caps_are_508() {
    let mut cfg = config();
    cfg.max_permissions = 2;
    cfg.max_channels = 1;
    let (mut h, mut c) = allocated(cfg);
    c.permit(&mut h, sa("203.0.113.1:1")).assert_ok();
    c.permit(&mut h, sa("203.0.113.2:1")).assert_ok();
    c.permit(&mut h, sa("203.0.113.2:2")).assert_ok(); // same IP: a refresh
    c.permit(&mut h, sa("203.0.113.3:1")).assert_err(508);
    c.channel_bind(&mut h, 0x4000, sa("203.0.113.1:1"))
        .assert_ok();
    c.channel_bind(&mut h, 0x4001, sa("203.0.113.2:1"))
        .assert_err(508);
    // Expired permissions make room.
    h.at(300);
    c.permit(&mut h, sa("203.0.113.3:1")).assert_ok();
}

/// Issue 15: a CreatePermission naming more peers than the cap is refused before any work, and
/// one naming the same peer many times counts it once.
#[test]
fn create_permission_with_many_peers_is_capped_and_deduplicated() {
    let mut cfg = config();
    cfg.max_permissions = 4;
    let (mut h, mut c) = allocated(cfg);
    let many: Vec<SocketAddr> = (0..5u8)
        .map(|i| SocketAddr::from(([203, 0, 113, 10 + i], 1)))
        .collect();
    c.request(&mut h, Method::CREATE_PERMISSION, &|b| {
        for p in &many {
            b.xor_address(attr::XOR_PEER_ADDRESS, p);
        }
    })
    .assert_err(508);
    let id = h.alloc_id(c.five);
    assert!(h.s.get(id).unwrap().permissions().is_empty(h.now));
    // The same four addresses, each named (with other ports) -- 4 distinct IPs, 4 attributes.
    c.request(&mut h, Method::CREATE_PERMISSION, &|b| {
        for p in &many[..4] {
            b.xor_address(attr::XOR_PEER_ADDRESS, p);
        }
    })
    .assert_ok();
    assert_eq!(h.s.get(id).unwrap().permissions().len(h.now), 4);
    // One IP named four times is one permission: it fits beside... nothing more, but refreshes.
    c.request(&mut h, Method::CREATE_PERMISSION, &|b| {
        for port in 1..=4 {
            b.xor_address(
                attr::XOR_PEER_ADDRESS,
                &SocketAddr::from(([203, 0, 113, 10], port)),
            );
        }
    })
    .assert_ok();
    assert_eq!(h.s.get(id).unwrap().permissions().len(h.now), 4);
}

#[test]
fn dont_fragment_reaches_the_bind_command() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.nonce = Some(h.nonce());
    let tid = c.next_tid();
    let req = c.build(
        Method::ALLOCATE,
        Class::Request,
        &tid,
        &|b| {
            requested_udp(b);
            b.attr(attr::DONT_FRAGMENT, &[]);
        },
        true,
    );
    h.s.handle_client_input(h.now, c.five, &req);
    let Some(Command::BindRelay { dont_fragment, .. }) = h.s.poll_command() else {
        panic!("expected BindRelay");
    };
    assert!(dont_fragment);
    // While the relay binds, a retransmission is not answered twice and makes no second relay.
    h.s.handle_client_input(h.now, c.five, &req);
    assert_eq!(h.s.poll_command(), None);
}

#[test]
fn even_port_with_reservation_survives_a_busy_port() {
    // turnutils_uclient asks for EVEN-PORT with the R bit; a port held by another process must
    // not turn that into 508: another even port is tried, and the reservation follows it.
    let mut h = H::new(config());
    h.fail_binds = 2;
    let r = Client::alice(udp(40010)).allocate_with(&mut h, &|b| {
        b.attr(attr::EVEN_PORT, &[0x80]);
    });
    let port = r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port();
    assert_eq!(port % 2, 0);
    assert_eq!(h.binds.len(), 3, "two failed binds, then one that worked");
    assert!(h.binds.iter().all(|(_, a)| a.port() % 2 == 0));
    let token = r.get(attr::RESERVATION_TOKEN).expect("token").to_vec();
    // The failed ports and their reserved successors went back to the pool.
    for (_, a) in &h.binds[..2] {
        assert!(h.shared.ports.take_exact(RELAY_IP, a.port()));
        assert!(h.shared.ports.take_exact(RELAY_IP, a.port() + 1));
    }
    let r = Client::alice(udp(40011)).allocate_with(&mut h, &|b| {
        b.attr(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(
        r.assert_ok().xor(attr::XOR_RELAYED_ADDRESS).unwrap().port(),
        port + 1
    );
}

#[test]
fn bps_capacity_caps_the_whole_server() {
    // Two allocations, no per-allocation cap, 1000 bytes/s for the engine in all.
    let mut h = H::new(ServerConfig {
        bps_capacity: 1000,
        ..config()
    });
    let mut a = Client::alice(udp(41000));
    let mut b = Client::alice(udp(41001));
    for c in [&mut a, &mut b] {
        c.allocate(&mut h).assert_ok();
        c.permit(&mut h, peer()).assert_ok();
    }
    let data = [7u8; 400];
    let si_a = a.send_indication(peer(), &data);
    let si_b = b.send_indication(peer(), &data);
    assert!(matches!(
        h.input(udp(41000), &si_a),
        ClientDecision::Forward { .. }
    ));
    assert!(matches!(
        h.input(udp(41001), &si_b),
        ClientDecision::Forward { .. }
    ));
    // 800 of 1000 bytes used: the third 400-byte packet, from either client, is dropped.
    assert_eq!(h.input(udp(41000), &si_a), ClientDecision::Done);
    assert_eq!(h.s.counters().dropped_bandwidth, 1);
    // A second later the bucket has refilled.
    h.at(1);
    assert!(matches!(
        h.input(udp(41001), &si_b),
        ClientDecision::Forward { .. }
    ));
}
