//! Issue 9 hardening on simulated time: the amplification bound on every answer to an
//! unauthenticated request, silence towards spoofable garbage, and `--unauthorized-ratelimit`.

use super::*;

use rand::{Rng, SeedableRng};

/// Every response sent since the last call, with its size, all to `five`.
fn sizes(h: &mut H, five: FiveTuple) -> Vec<(usize, Resp)> {
    h.responses(five)
        .into_iter()
        .map(|r| (r.raw.len(), r))
        .collect()
}

fn request(method: Method, tid: u8, fill: Fill) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, method, Class::Request, &[tid; 12]);
    fill(&mut b);
    out
}

fn with_fp<'a>(fill: Fill<'a>) -> impl Fn(&mut MessageBuilder<'_>) + 'a {
    move |b| {
        fill(b);
        b.fingerprint();
    }
}

/// The answer to `req` from `five` is at most AMPLIFICATION_SLACK bytes larger (or absent).
#[track_caller]
fn assert_bounded(h: &mut H, five: FiveTuple, req: &[u8]) -> Option<Resp> {
    h.input(five, req);
    let mut out = sizes(h, five);
    assert!(out.len() <= 1);
    let (n, r) = out.pop()?;
    assert!(
        n <= req.len() + AMPLIFICATION_SLACK,
        "{} bytes answered with {n} ({:?} {:?})",
        req.len(),
        r.class,
        r.code
    );
    Some(r)
}

#[test]
fn unauthenticated_answers_stay_within_the_amplification_bound() {
    let six = five(
        Transport::Udp,
        IpAddr::V6("2001:db8::1".parse().unwrap()),
        7,
    );
    let peer_fill = |b: &mut MessageBuilder<'_>| {
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer());
    };
    let chan_fill = |b: &mut MessageBuilder<'_>| {
        b.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]);
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer());
    };
    let unknown = |b: &mut MessageBuilder<'_>| {
        b.attr(0x7F00, &[]);
    };
    let bad_integrity = |b: &mut MessageBuilder<'_>| {
        b.attr(attr::USERNAME, b"alice");
        b.attr(attr::REALM, REALM.as_bytes());
        b.attr(attr::NONCE, b"obMatJos2wAAAnot-a-real-nonce-at-all-000000");
        b.integrity(b"wrong");
    };
    let no_realm = |b: &mut MessageBuilder<'_>| {
        b.integrity(b"wrong");
    };
    let fills: [(&str, Fill); 7] = [
        ("bare", &nothing),
        ("transport", &requested_udp),
        ("peer", &peer_fill),
        ("channel", &chan_fill),
        ("unknown", &unknown),
        ("bad integrity", &bad_integrity),
        ("no realm", &no_realm),
    ];
    let methods = [
        Method::BINDING,
        Method::ALLOCATE,
        Method::REFRESH,
        Method::CREATE_PERMISSION,
        Method::CHANNEL_BIND,
        Method(0x0FF),
    ];
    let mut worst = 0isize;
    // A realm of 24 bytes and a long SOFTWARE: the shedding has to work.
    for (realm, software) in [
        (REALM.to_owned(), None),
        ("turn.example-company.com".to_owned(), Some("x".repeat(200))),
    ] {
        let mut cfg = config();
        cfg.realm = realm.clone();
        cfg.credentials = Credentials::new(&realm, ':');
        if let Some(s) = software {
            cfg.software = Some(s);
        }
        let mut h = H::new(cfg);
        let mut tid = 0u8;
        for five in [udp(1), tcp(2), six] {
            for method in methods {
                for (name, fill) in fills {
                    for fp in [false, true] {
                        tid = tid.wrapping_add(1);
                        let req = if fp {
                            request(method, tid, &with_fp(fill))
                        } else {
                            request(method, tid, fill)
                        };
                        let r = assert_bounded(&mut h, five, &req);
                        let no_allocation = [
                            Method::REFRESH,
                            Method::CREATE_PERMISSION,
                            Method::CHANNEL_BIND,
                        ];
                        if no_allocation.contains(&method) {
                            // No allocation on this 5-tuple: nothing to challenge for (a 400 or
                            // 420 about the request itself may still come).
                            let challenged = r.as_ref().is_some_and(|r| r.has(attr::NONCE));
                            assert!(
                                !challenged,
                                "{name} {method:?} challenged without allocation"
                            );
                            continue;
                        }
                        let r = r.unwrap_or_else(|| panic!("{name} {method:?}: no answer"));
                        worst = worst.max(r.raw.len() as isize - req.len() as isize);
                    }
                }
            }
        }
        assert_eq!(h.s.counters().amplification_dropped, 0);
    }
    assert!(worst > 0, "something is answered larger than asked");
    eprintln!("largest excess over the request: {worst} bytes");
}

#[test]
fn an_answer_that_cannot_fit_the_bound_is_not_sent() {
    // A 60-byte realm makes a 401 to a 20-byte request too big even without extras.
    let realm = "r".repeat(60);
    let mut cfg = config();
    cfg.realm = realm.clone();
    cfg.credentials = Credentials::new(&realm, ':');
    let mut h = H::new(cfg);
    h.silent(udp(1), &request(Method::ALLOCATE, 1, &nothing));
    assert_eq!(h.s.counters().amplification_dropped, 1);
    // A client that sends a realistic Allocate (REQUESTED-TRANSPORT, LIFETIME, SOFTWARE) still
    // gets its 401.
    let req = request(Method::ALLOCATE, 2, &|b| {
        requested_udp(b);
        b.attr_u32(attr::LIFETIME, 600);
        b.attr(attr::SOFTWARE, b"Citrix-3.2.4.5 'Marshal West'");
    });
    assert_bounded(&mut h, udp(1), &req)
        .expect("answered")
        .assert_err(401);
}

#[test]
fn the_401_keeps_everything_for_a_normal_request() {
    let mut h = H::new(config());
    let req = request(Method::ALLOCATE, 1, &requested_udp);
    let r = assert_bounded(&mut h, udp(1), &req).unwrap();
    r.assert_err(401);
    assert!(r.has(attr::REALM) && r.has(attr::NONCE) && r.has(attr::PASSWORD_ALGORITHMS));
    eprintln!(
        "401 to a {}-byte Allocate: {} bytes",
        req.len(),
        r.raw.len()
    );
}

#[test]
fn spoofable_garbage_gets_no_answer() {
    let mut h = H::new(config());
    let mut rng = SmallRng::seed_from_u64(9);
    let valid = request(Method::ALLOCATE, 1, &requested_udp);
    for i in 0..5000 {
        let mut p = match i % 4 {
            // Random bytes of random length.
            0 => (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
            // A valid request cut short.
            1 => valid[..rng.gen_range(0..valid.len())].to_vec(),
            // A valid request with bytes flipped in the header's length or cookie.
            2 => {
                let mut v = valid.clone();
                let at = rng.gen_range(2..8);
                v[at] ^= rng.gen_range(1..=255u8);
                v
            }
            // Responses and indications of every method: never answered.
            _ => {
                let class = if rng.gen() {
                    Class::Success
                } else {
                    Class::Indication
                };
                let mut out = Vec::new();
                let mut b =
                    MessageBuilder::new(&mut out, Method(rng.gen_range(0..0x10)), class, &[3; 12]);
                b.attr(attr::DATA, b"x");
                out
            }
        };
        if i % 4 == 2 && p[2..4] == valid[2..4] && p[4..8] == valid[4..8] {
            continue;
        }
        if i % 4 == 0 && Message::decode(&p).is_ok_and(|m| m.class() == Class::Request) {
            continue; // a random valid request is not garbage
        }
        if i % 4 == 0 && p.len() >= 4 && (0x40..0x80).contains(&p[0]) {
            p[0] = 0xFF; // ChannelData without an allocation is dropped too, but keep to garbage
        }
        h.silent(udp(1), &p);
    }
}

fn limited_config(rate: u32) -> ServerConfig {
    ServerConfig {
        unauthorized_ratelimit: rate,
        ..config()
    }
}

#[test]
fn unauthenticated_requests_are_limited_per_source_ip() {
    let mut h = H::new(limited_config(2));
    let burst = 2 * crate::engine::limiter::BURST_SECS as usize;
    // An Allocate without credentials: it costs a token and is challenged (a Refresh from a
    // 5-tuple without allocation gets no answer at all).
    let refresh = request(Method::ALLOCATE, 1, &requested_udp);
    // Different ports of one IP share the limit.
    for i in 0..burst {
        h.one(udp(1000 + i as u16), &refresh).assert_err(401);
    }
    h.silent(udp(2000), &refresh);
    h.silent(udp(2001), &request(Method::ALLOCATE, 2, &requested_udp));
    assert_eq!(h.s.counters().rate_limited, 2);
    // Another source is not affected.
    let other = five(
        Transport::Udp,
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
        1,
    );
    h.one(other, &refresh).assert_err(401);
    // Binding is never limited.
    let r = h.one(udp(1), &binding_request(&[5; 12], &nothing));
    r.assert_ok();
    // Two per second come back.
    h.at_ms(499);
    h.silent(udp(1), &refresh);
    h.at_ms(500);
    h.one(udp(1), &refresh).assert_err(401);
    h.silent(udp(1), &refresh);
    h.at(1);
    h.one(udp(1), &refresh).assert_err(401);
    assert_eq!(h.s.counters().rate_limited, 4);
}

#[test]
fn allocate_attempts_cost_a_token_unless_they_authenticate() {
    let mut h = H::new(limited_config(1));
    // 5 tokens, but an Allocate that authenticates gives back its own and its 401's: twenty
    // clients behind one address all get in, and their Refreshes and permissions take none.
    for port in 1..=20 {
        let mut c = Client::alice(udp(port));
        c.allocate(&mut h).assert_ok();
        c.refresh(&mut h, None).assert_ok();
        c.permit(&mut h, peer()).assert_ok();
    }
    assert_eq!(h.s.counters().rate_limited, 0);
    assert_eq!(h.s.allocations().count(), 20);
    // Attempts that fail to authenticate are not given back: a wrong password, with a nonce
    // already known, costs a token per try, and the sixth gets nothing.
    let nonce = Some(h.nonce());
    for port in 100..105 {
        let mut g = Client::new(udp(port), "alice", "wrong");
        g.nonce = nonce.clone();
        let tid = g.next_tid();
        let req = g.build(Method::ALLOCATE, Class::Request, &tid, &requested_udp, true);
        h.one(g.five, &req).assert_err(401);
    }
    let mut g = Client::new(udp(105), "alice", "wrong");
    g.nonce = nonce.clone();
    let tid = g.next_tid();
    let req = g.build(Method::ALLOCATE, Class::Request, &tid, &requested_udp, true);
    h.silent(g.five, &req);
    assert_eq!(h.s.counters().rate_limited, 1);
    // Until tokens come back nobody from that address is heard (the limit is taken before any
    // hashing); a second later the right password gets in and its token is given back.
    let mut ok = Client::alice(udp(200));
    ok.nonce = nonce.clone();
    h.at(1);
    ok.allocate(&mut h).assert_ok();
    let mut ok2 = Client::alice(udp(201));
    ok2.nonce = nonce;
    ok2.allocate(&mut h).assert_ok();
    assert_eq!(h.s.counters().rate_limited, 1);
}

/// Issue 15: one host behind a NAT flooding unanswerable Allocates empties its address's bucket,
/// but the real clients at that address that already hold a nonce (proof they read our
/// challenge) draw from another one and still log in; wrong passwords sent with a valid nonce
/// stay limited.
#[test]
fn a_flood_from_one_address_does_not_lock_out_clients_there_holding_a_nonce() {
    let mut h = H::new(limited_config(1));
    let nonce = h.nonce();
    let probe = request(Method::ALLOCATE, 1, &requested_udp);
    for port in 3000..3100 {
        h.input(udp(port), &probe);
    }
    h.sent.clear();
    assert_eq!(
        h.s.counters().rate_limited,
        95,
        "5 challenges, then nothing"
    );
    for port in 1..=20 {
        let mut c = Client::alice(udp(port));
        c.nonce = Some(nonce.clone());
        c.allocate(&mut h).assert_ok();
    }
    assert_eq!(h.s.counters().rate_limited, 95);
    // Guessing with a valid nonce costs tokens of that bucket: 5, then silence.
    for port in 100..105 {
        let mut g = Client::new(udp(port), "alice", "wrong");
        g.nonce = Some(nonce.clone());
        let tid = g.next_tid();
        let req = g.build(Method::ALLOCATE, Class::Request, &tid, &requested_udp, true);
        h.one(g.five, &req).assert_err(401);
    }
    let mut g = Client::new(udp(105), "alice", "wrong");
    g.nonce = Some(nonce);
    let tid = g.next_tid();
    let req = g.build(Method::ALLOCATE, Class::Request, &tid, &requested_udp, true);
    h.silent(g.five, &req);
}

#[test]
fn zero_turns_the_limit_off() {
    let mut h = H::new(limited_config(0));
    // An Allocate without credentials: it costs a token and is challenged (a Refresh from a
    // 5-tuple without allocation gets no answer at all).
    let refresh = request(Method::ALLOCATE, 1, &requested_udp);
    for i in 0..2000u16 {
        h.one(udp(i), &refresh).assert_err(401);
    }
    assert_eq!(h.s.counters().rate_limited, 0);
}

#[test]
fn a_flood_from_many_sources_does_not_stop_a_legitimate_client() {
    let mut h = H::new(limited_config(20));
    // An Allocate without credentials: it costs a token and is challenged (a Refresh from a
    // 5-tuple without allocation gets no answer at all).
    let refresh = request(Method::ALLOCATE, 1, &requested_udp);
    for n in 0..50_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n));
        for _ in 0..3 {
            h.input(five(Transport::Udp, ip, 5), &refresh);
        }
    }
    h.sent.clear();
    // The table is fixed however many sources came.
    assert_eq!(
        h.s.limiter.memory(),
        crate::engine::limiter::SLOTS * 16,
        "limiter table grew"
    );
    let mut c = Client::alice(udp(1));
    c.allocate(&mut h).assert_ok();
}

#[test]
fn every_counter_moves_under_some_input() {
    let mut total = Counters::default();
    // Binding: a success and an error (CHANGE-REQUEST without RFC 5780).
    let mut cfg = config();
    cfg.max_bps = 1000;
    let mut h = H::new(cfg);
    h.one(udp(1), &binding_request(&[1; 12], &nothing));
    h.one(
        udp(1),
        &binding_request(&[2; 12], &|b| {
            b.attr(attr::CHANGE_REQUEST, &[0, 0, 0, 6]);
        }),
    )
    .assert_err(420);
    // An allocation (after its 401), relaying over a channel until its bandwidth cap drops a
    // packet; ChannelData on an unbound channel; a packet that does not parse; a second
    // Allocate on the 5-tuple (refused, 437); then Refresh 0.
    let mut c = Client::alice(udp(40000));
    c.allocate(&mut h).assert_ok();
    c.channel_bind(&mut h, 0x4000, peer()).assert_ok();
    let cd = channel_data(0x4000, &[0; 600]);
    h.input(c.five, &cd);
    h.input(c.five, &cd);
    h.input(c.five, &channel_data(0x4001, &[0; 10]));
    h.input(c.five, &[0xC0, 0, 0, 0]);
    c.request(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_err(437);
    c.refresh(&mut h, Some(0)).assert_ok();
    // A wrong password; a forged nonce.
    Client::new(udp(40001), "alice", "wrong")
        .allocate(&mut h)
        .assert_err(401);
    let mut d = Client::alice(udp(40002));
    d.nonce = Some(b"obviously-not-a-nonce".to_vec());
    d.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_err(438);
    // An allocation that lives out its lifetime.
    let mut e = Client::alice(udp(40003));
    e.allocate(&mut h).assert_ok();
    h.at(4000);
    total.merge(h.s.counters());
    // Over --unauthorized-ratelimit.
    let mut h = H::new(limited_config(1));
    let burst = crate::engine::limiter::BURST_SECS as usize;
    for i in 0..=burst {
        h.input(
            udp(3000 + i as u16),
            &request(Method::ALLOCATE, i as u8, &requested_udp),
        );
    }
    total.merge(h.s.counters());
    // An answer that cannot fit the amplification bound.
    let mut cfg = config();
    cfg.realm = "r".repeat(60);
    cfg.credentials = Credentials::new(&cfg.realm, ':');
    let mut h = H::new(cfg);
    h.silent(udp(1), &request(Method::ALLOCATE, 1, &nothing));
    total.merge(h.s.counters());

    let still: Vec<&str> = COUNTERS
        .iter()
        .filter(|spec| (spec.get)(&total) == 0)
        .map(|spec| spec.field)
        .collect();
    assert!(still.is_empty(), "counters no input moved: {still:?}");
    assert!(total
        .refused_by_code
        .iter()
        .any(|(code, n)| code == 437 && n > 0));
    assert!(total.auth_failures_by_reason.wrong_credentials > 0);
    assert!(total.closed_traffic.client_rcv.bytes > 0);
}
