//! The 1 Hz publish: aggregates, rates from the allocations' own samples, the worker's top K,
//! traffic per user, durations of ended allocations; and the on-demand listing.

use super::*;
use crate::engine::server::{Aggregates, Select};

/// Send `n` bytes from the client to the peer over a Send indication (permission given).
fn relay(h: &mut H, c: &mut Client, n: usize) {
    let ind = c.send_indication(peer(), &vec![7; n]);
    assert!(matches!(
        h.input(c.five, &ind),
        ClientDecision::Forward { .. }
    ));
}

#[test]
fn publish_sums_ranks_by_current_rate_and_forgets_ended_allocations() {
    let cfg = ServerConfig {
        top_allocations: 1,
        traffic_by_user: true,
        ..config()
    };
    let mut h = H::new(cfg);
    let mut a = Client::alice(udp(40000));
    a.allocate(&mut h).assert_ok();
    a.permit(&mut h, peer()).assert_ok();
    let mut b = Client::new(udp(40001), "bob", "bob-pw");
    b.allocate(&mut h).assert_ok();
    b.permit(&mut h, peer()).assert_ok();
    let (ida, idb) = (h.alloc_id(a.five), h.alloc_id(b.five));

    relay(&mut h, &mut a, 5000);
    let mut out = Aggregates::default();
    h.s.publish(h.now, &mut out);
    assert_eq!(out.allocations, 2);
    assert_eq!(out.by_transport, [2, 0, 0, 0]);
    assert_eq!(out.permissions, 2);
    assert_eq!(out.live.client_rcv.bytes, 5000);
    // One sample each: no rate yet, so the most bytes lead.
    assert_eq!(out.top.len(), 1);
    assert_eq!((out.top[0].id, out.top[0].rate), (ida, 0.0));

    // A second later "b" relayed 3000 bytes, "a" nothing: "b" is the busiest now.
    h.at(1);
    relay(&mut h, &mut b, 3000);
    h.s.publish(h.now, &mut out);
    assert_eq!(out.top.len(), 1);
    assert_eq!((out.top[0].id, out.top[0].rate), (idb, 3000.0));
    assert_eq!(&*out.top[0].username, "bob");
    let listed = h.s.list(h.now, &Select::All);
    assert_eq!(listed.len(), 2);
    let rate = |id| listed.iter().find(|x| x.id == id).unwrap().rate;
    assert_eq!((rate(ida), rate(idb)), (0.0, 3000.0));
    assert_eq!(h.s.list(h.now, &Select::User("bob".into())).len(), 1);
    let mut counts: Vec<(String, u32)> =
        h.s.count_by_user()
            .into_iter()
            .map(|(u, n)| (u.to_string(), n))
            .collect();
    counts.sort();
    assert_eq!(counts, [("alice".into(), 1), ("bob".into(), 1)]);
    assert_eq!(
        h.s.list(h.now, &Select::Id(ida))[0].username.as_ref(),
        "alice"
    );

    // "b" ends: it leaves the aggregates, its lifetime is observed, its user keeps its bytes.
    h.s.handle_wall_clock(h.now, UNIX0 + 1);
    b.refresh(&mut h, Some(0)).assert_ok();
    h.s.publish(h.now, &mut out);
    assert_eq!(out.allocations, 1);
    assert_eq!((out.top[0].id, out.top[0].rate), (ida, 0.0));
    assert_eq!(
        h.s.counters().durations.buckets[0][0],
        1,
        "1 s: the first bucket"
    );
    assert_eq!(h.s.counters().closed_traffic.client_rcv.bytes, 3000);
    let mut users: Vec<(String, u64)> = out
        .by_user
        .iter()
        .map(|(u, s)| (u.to_string(), s.client_rcv.bytes))
        .collect();
    users.sort();
    assert_eq!(users, [("alice".into(), 5000), ("bob".into(), 3000)]);
    assert!(h.s.list(h.now, &Select::Id(idb)).is_empty());
}

#[test]
fn rates_cover_the_last_few_publishes() {
    let (mut h, mut c) = allocated(ServerConfig {
        top_allocations: 3,
        ..config()
    });
    c.permit(&mut h, peer()).assert_ok();
    let mut out = Aggregates::default();
    for s in 0..6 {
        h.at(s);
        relay(&mut h, &mut c, if s < 4 { 1000 } else { 0 });
        h.s.publish(h.now, &mut out);
    }
    // The samples of 2..=5 s (3000, 4000, 4000, 4000 bytes) count, not those before: 1000
    // bytes in 3 s.
    assert!(
        (out.top[0].rate - 1000.0 / 3.0).abs() < 1e-9,
        "{}",
        out.top[0].rate
    );
}
