//! Engine invariants on random request sequences on simulated time (issue 9, proptest): no
//! allocation outlives its lifetime once `handle_timeout` has run, relay ports are never
//! double-booked and the shared pool agrees with the live allocations, quotas are never exceeded,
//! and the counters add up.

use super::*;

use std::collections::HashSet;

use proptest::prelude::*;

const CLIENTS: usize = 6;
const USER_QUOTA: u32 = 2;
const TOTAL_QUOTA: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Allocate(usize, Option<u32>),
    Refresh(usize, Option<u32>),
    Permit(usize, u8),
    ChannelBind(usize, u16, u8),
    Data(usize, u8, bool),
    Advance(u64),
    Close(usize),
    Garbage(usize, Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS;
    prop_oneof![
        3 => (c.clone(), prop::option::of(0u32..1500)).prop_map(|(c, l)| Op::Allocate(c, l)),
        2 => (c.clone(), prop::option::of(0u32..1500)).prop_map(|(c, l)| Op::Refresh(c, l)),
        2 => (c.clone(), 0u8..3).prop_map(|(c, p)| Op::Permit(c, p)),
        1 => (c.clone(), 0x4000u16..0x4003, 0u8..3).prop_map(|(c, n, p)| Op::ChannelBind(c, n, p)),
        2 => (c.clone(), 0u8..3, any::<bool>()).prop_map(|(c, p, ch)| Op::Data(c, p, ch)),
        3 => (0u64..900).prop_map(Op::Advance),
        1 => c.clone().prop_map(Op::Close),
        1 => (c, prop::collection::vec(any::<u8>(), 0..48)).prop_map(|(c, b)| Op::Garbage(c, b)),
    ]
}

fn peer_n(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5 + n)), 9000)
}

fn check(h: &H, now_ms: u64) -> Result<(), TestCaseError> {
    let now = h.t0 + Duration::from_millis(now_ms);
    let live: Vec<&Allocation> = h.s.allocations().collect();
    for a in &live {
        prop_assert!(a.state() == State::Active, "harness binds at once");
        prop_assert!(
            a.expires() > now,
            "allocation past its lifetime after handle_timeout"
        );
    }
    let relays: HashSet<SocketAddr> = live.iter().map(|a| a.relay().addr()).collect();
    prop_assert_eq!(relays.len(), live.len(), "a relay port is double-booked");
    let size = u32::from(MAX_PORT - MIN_PORT) + 1;
    prop_assert_eq!(
        size - h.shared.ports.free(RELAY_IP),
        live.len() as u32,
        "pool and allocations disagree"
    );
    prop_assert!(live.len() as u32 <= TOTAL_QUOTA);
    for user in ["alice", "bob"] {
        let n = live.iter().filter(|a| &**a.username() == user).count() as u32;
        prop_assert!(n <= USER_QUOTA, "{} has {} allocations", user, n);
    }
    prop_assert_eq!(
        h.shared.total_allocations.load(Ordering::Relaxed),
        (live.len() + h.shared.reservations_held()) as u32
    );
    let c = h.s.counters();
    prop_assert_eq!(
        c.allocations_created - c.allocations_expired - c.allocations_deleted,
        live.len() as u64,
        "counters do not add up: {:?}",
        c
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn engine_invariants_hold_on_random_sequences(ops in prop::collection::vec(op(), 1..60)) {
        let cfg = ServerConfig {
            user_quota: USER_QUOTA,
            total_quota: TOTAL_QUOTA,
            max_lifetime: 1200,
            ..config()
        };
        let mut h = H::new(cfg);
        // Every client holds a nonce from the start: a request from a 5-tuple without an
        // allocation is answered (437) only when it is signed.
        let nonce = h.nonce();
        let mut clients: Vec<Client> = (0..CLIENTS)
            .map(|i| {
                let five = if i % 2 == 0 { udp(40000 + i as u16) } else { tcp(40000 + i as u16) };
                if i < CLIENTS / 2 {
                    Client::alice(five)
                } else {
                    Client::new(five, "bob", "bob-pw")
                }
            })
            .map(|mut c: Client| {
                c.nonce = Some(nonce.clone());
                c
            })
            .collect();
        let mut now_ms = 0u64;
        for op in ops {
            // A client without an allocation gets no 438 to renew its nonce: it holds a fresh one.
            for c in clients.iter_mut() {
                if h.s.allocation_on(&c.five).is_none() {
                    c.nonce = Some(h.nonce());
                }
            }
            match op {
                Op::Allocate(i, l) => {
                    let r = clients[i].allocate_with(&mut h, &|b| {
                        if let Some(l) = l {
                            b.attr_u32(attr::LIFETIME, l);
                        }
                    });
                    if r.class == Class::Success {
                        prop_assert!(h.s.allocation_on(&clients[i].five).is_some());
                    } else {
                        prop_assert!(matches!(r.code, Some(437 | 486)), "{:?}", r.code);
                    }
                }
                Op::Refresh(i, l) => {
                    let r = clients[i].refresh(&mut h, l);
                    let alive = h.s.allocation_on(&clients[i].five).is_some();
                    match r.class {
                        Class::Success => prop_assert_eq!(alive, l != Some(0)),
                        _ => prop_assert_eq!(r.code, Some(437)),
                    }
                }
                Op::Permit(i, p) => {
                    let r = clients[i].permit(&mut h, peer_n(p));
                    prop_assert!(r.class == Class::Success || r.code == Some(437));
                }
                Op::ChannelBind(i, n, p) => {
                    let r = clients[i].channel_bind(&mut h, n, peer_n(p));
                    prop_assert!(r.class == Class::Success || matches!(r.code, Some(400 | 437)));
                }
                Op::Data(i, p, channel) => {
                    let five = clients[i].five;
                    let packet = if channel {
                        channel_data(0x4000 + u16::from(p), b"hello")
                    } else {
                        clients[i].send_indication(peer_n(p), b"hello")
                    };
                    let d = h.input(five, &packet);
                    prop_assert!(h.sent.is_empty(), "data is never answered");
                    if let ClientDecision::Forward { relay, .. } = d {
                        let a = h.s.allocation_on(&five);
                        prop_assert!(a.is_some_and(|a| a.id() == relay), "forward for a live allocation only");
                    }
                }
                Op::Advance(s) => {
                    now_ms += s * 1000 + 1;
                    h.at_ms(now_ms);
                }
                Op::Close(i) => {
                    h.s.handle_transport_closed(clients[i].five);
                    h.drain();
                }
                Op::Garbage(i, bytes) => {
                    h.input(clients[i].five, &bytes);
                    h.sent.clear();
                }
            }
            check(&h, now_ms)?;
        }
        // Everything ends: far in the future no allocation, no port, no quota is left.
        now_ms += 1_300_000;
        h.at_ms(now_ms);
        check(&h, now_ms)?;
        prop_assert_eq!(h.s.allocations().count(), 0);
        prop_assert_eq!(h.shared.ports.free(RELAY_IP), u32::from(MAX_PORT - MIN_PORT) + 1);
    }
}
