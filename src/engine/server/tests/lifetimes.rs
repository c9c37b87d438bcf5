//! Expiry and refresh of allocations, permissions and channels; caps; closing transports.

use super::*;

#[test]
fn allocation_expires_at_its_lifetime() {
    let mut cfg = config();
    cfg.user_quota = 1;
    let (mut h, c) = allocated(cfg);
    let id = h.alloc_id(c.five);
    let relay = h.relay_of(c.five);
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + Duration::from_secs(600)));
    h.at(599);
    assert!(h.freed.is_empty());
    assert!(h.s.allocation_on(&c.five).is_some());
    h.at(600);
    assert_eq!(h.freed, vec![id]);
    assert!(h.s.allocation_on(&c.five).is_none());
    assert_eq!(h.s.counters().allocations_expired, 1);
    assert_eq!(h.s.poll_timeout(), None);
    // Its port is free again, and so is alice's quota.
    assert_eq!(
        h.shared.ports.free(RELAY_IP),
        u32::from(MAX_PORT - MIN_PORT) + 1
    );
    assert!(h.shared.ports.take_exact(RELAY_IP, relay.port()));
    h.shared.ports.release(RELAY_IP, relay.port());
    Client::alice(udp(40001)).allocate(&mut h).assert_ok();
    // The old id finds nothing, even though the slot is reused.
    let mut buf = vec![0u8; 64];
    assert_eq!(
        h.s.handle_peer_input(
            h.now,
            id,
            PeerAddr::new(peer()),
            &mut buf,
            PEER_HEADROOM..52
        ),
        PeerDecision::Drop
    );
    assert_ne!(h.alloc_id(udp(40001)), id);
}

#[test]
fn refresh_extends_and_poll_timeout_follows() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    h.at(100);
    assert_eq!(
        c.refresh(&mut h, Some(1200)).assert_ok().lifetime(),
        Some(1200)
    );
    // The old deadline may still wake the worker, but frees nothing.
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + Duration::from_secs(600)));
    h.at(600);
    assert!(h.freed.is_empty());
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + Duration::from_secs(1300)));
    // Refresh without LIFETIME: the default.
    h.at(1000);
    assert_eq!(c.refresh(&mut h, None).assert_ok().lifetime(), Some(600));
    h.at(1300);
    assert!(h.freed.is_empty());
    h.at(1599);
    assert!(h.freed.is_empty());
    h.at(1600);
    assert_eq!(h.freed, vec![id]);
}

/// Issue 15: a million Refreshes of one allocation leave one timer entry, not a million
/// (3 M Refreshes grew RSS by 70 MB for an hour), and it still ends on time.
#[test]
fn refreshes_keep_one_timer_entry_per_allocation() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    assert_eq!(h.s.timer_entries(), 1);
    for i in 0..1_000u64 {
        h.now = h.t0 + Duration::from_millis(i);
        c.refresh(&mut h, Some(1200)).assert_ok();
    }
    assert_eq!(h.s.timer_entries(), 1);
    // The entry fires at the first deadline (600 s), finds the later one and moves there.
    h.at(600);
    assert!(h.freed.is_empty());
    assert_eq!(h.s.timer_entries(), 1);
    assert_eq!(
        h.s.poll_timeout(),
        Some(h.t0 + Duration::from_millis(1_200_999))
    );
    h.at(1200);
    assert!(h.freed.is_empty());
    h.at(1201);
    assert_eq!(h.freed, vec![id]);
    assert_eq!(h.s.timer_entries(), 0);
}

#[test]
fn refresh_with_lifetime_zero_deletes() {
    let (mut h, mut c) = allocated(config());
    let id = h.alloc_id(c.five);
    let r = c.refresh(&mut h, Some(0));
    assert_eq!(r.assert_ok().lifetime(), Some(0));
    assert!(r.msg().check_integrity(&c.key()));
    assert_eq!(h.freed, vec![id]);
    assert!(h.s.allocation_on(&c.five).is_none());
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 0);
    assert_eq!(h.s.counters().allocations_deleted, 1);
    c.refresh(&mut h, None).assert_err(437);
    // And a new allocation on the same 5-tuple is possible.
    c.allocate(&mut h).assert_ok();
}

#[test]
fn permission_expires_after_300s_unless_refreshed() {
    let (mut h, mut c) = allocated(config());
    let p2 = sa("203.0.113.6:9000");
    c.permit(&mut h, peer()).assert_ok();
    c.permit(&mut h, p2).assert_ok();
    h.at(200);
    c.permit(&mut h, p2).assert_ok();
    h.at(299);
    for p in [peer(), p2] {
        let ind = c.send_indication(p, b"x");
        assert!(matches!(
            h.input(c.five, &ind),
            ClientDecision::Forward { .. }
        ));
        assert!(matches!(
            h.peer_sends(c.five, p, b"y").0,
            PeerDecision::Forward { .. }
        ));
    }
    h.at(300);
    let ind = c.send_indication(peer(), b"x");
    assert_eq!(h.input(c.five, &ind), ClientDecision::Done);
    assert_eq!(h.peer_sends(c.five, peer(), b"y").0, PeerDecision::Drop);
    let ind = c.send_indication(p2, b"x");
    assert!(matches!(
        h.input(c.five, &ind),
        ClientDecision::Forward { .. }
    ));
    h.at(500);
    assert_eq!(h.input(c.five, &ind), ClientDecision::Done);
    assert_eq!(h.peer_sends(c.five, p2, b"y").0, PeerDecision::Drop);
    assert_eq!(h.s.counters().dropped_no_permission, 4);
}

#[test]
fn channel_expires_after_600s_then_quarantine() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.allocate_with(&mut h, &|b| {
        b.attr_u32(attr::LIFETIME, 3600);
    })
    .assert_ok();
    let p2 = sa("203.0.113.6:9000");
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    // Keep the permission alive; the channel is not refreshed.
    h.at(250);
    c.permit(&mut h, peer()).assert_ok();
    h.at(500);
    c.permit(&mut h, peer()).assert_ok();
    h.at(599);
    assert!(matches!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Forward { .. }
    ));
    let (d, buf) = h.peer_sends(c.five, peer(), b"x");
    let PeerDecision::Forward { frame, .. } = d else {
        panic!()
    };
    assert!(ChannelData::decode(&buf[frame]).is_ok());
    h.at(600);
    assert_eq!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Done
    );
    // Peer data falls back to Data indications.
    let (d, buf) = h.peer_sends(c.five, peer(), b"x");
    let PeerDecision::Forward { frame, .. } = d else {
        panic!()
    };
    assert!(Message::decode(&buf[frame]).is_ok());
    // Quarantined: neither the number nor the peer may be bound to something else.
    h.at(601);
    c.channel_bind(&mut h, 0x4000, p2).assert_err(400);
    c.channel_bind(&mut h, 0x4001, peer()).assert_err(400);
    h.at(899);
    c.channel_bind(&mut h, 0x4000, p2).assert_err(400);
    h.at(900);
    c.channel_bind(&mut h, 0x4000, p2).assert_ok();
    c.channel_bind(&mut h, 0x4001, peer()).assert_ok();
    let id = h.alloc_id(c.five);
    assert_eq!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Forward {
            relay: id,
            peer: PeerAddr::new(p2),
            payload: 4..5
        }
    );
}

#[test]
fn rebinding_the_same_pair_refreshes_the_channel() {
    let (mut h, mut c) = allocated(config());
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    h.at(400);
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    c.refresh(&mut h, None).assert_ok();
    h.at(650);
    assert!(matches!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Forward { .. }
    ));
    h.at(1000);
    assert_eq!(
        h.input(c.five, &channel_data(0x4000, b"x")),
        ClientDecision::Done
    );
}

#[test]
fn bandwidth_cap_drops_excess_and_recovers() {
    let mut cfg = config();
    cfg.max_bps = 1000;
    let (mut h, mut c) = allocated(cfg);
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    let cd = channel_data(0x4000, &[0; 600]);
    assert!(matches!(
        h.input(c.five, &cd),
        ClientDecision::Forward { .. }
    ));
    assert_eq!(h.input(c.five, &cd), ClientDecision::Done);
    assert_eq!(h.s.counters().dropped_bandwidth, 1);
    // The other direction has its own bucket.
    assert!(matches!(
        h.peer_sends(c.five, peer(), &[0; 600]).0,
        PeerDecision::Forward { .. }
    ));
    assert_eq!(
        h.peer_sends(c.five, peer(), &[0; 600]).0,
        PeerDecision::Drop
    );
    assert_eq!(h.s.counters().dropped_bandwidth, 2);
    h.at_ms(700);
    assert!(matches!(
        h.input(c.five, &cd),
        ClientDecision::Forward { .. }
    ));
    assert!(matches!(
        h.peer_sends(c.five, peer(), &[0; 600]).0,
        PeerDecision::Forward { .. }
    ));
    let a = h.s.allocation_on(&c.five).unwrap();
    assert_eq!(a.stats().dropped.packets, 2);
    assert_eq!(a.stats().peer_sent.bytes, 1200);
}

#[test]
fn transport_closed_frees_the_allocation() {
    let mut h = H::new(config());
    let mut c = Client::alice(tcp(40000));
    c.allocate(&mut h).assert_ok();
    let id = h.alloc_id(c.five);
    h.s.handle_transport_closed(tcp(40001)); // someone else's connection
    h.drain();
    assert!(h.freed.is_empty());
    h.s.handle_transport_closed(c.five);
    h.drain();
    assert_eq!(h.freed, vec![id]);
    assert!(h.s.allocation_on(&c.five).is_none());
    assert_eq!(
        h.shared.ports.free(RELAY_IP),
        u32::from(MAX_PORT - MIN_PORT) + 1
    );
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 0);
    assert_eq!(h.s.counters().allocations_deleted, 1);
    // Twice is harmless.
    h.s.handle_transport_closed(c.five);
    h.drain();
    assert_eq!(h.freed.len(), 1);
    // The timer that was set for it frees nothing later.
    h.at(600);
    assert_eq!(h.freed.len(), 1);
}

#[test]
fn no_auth_mode_allocates_without_credentials() {
    let mut cfg = config();
    cfg.no_auth = true;
    let mut h = H::new(cfg);
    let c = udp(40000);
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, Method::ALLOCATE, Class::Request, &[1; 12]);
    requested_udp(&mut b);
    let r = h.one(c, &out);
    r.assert_ok();
    assert!(!r.msg().has_integrity());
}
