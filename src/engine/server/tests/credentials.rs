//! Long-term credentials: challenges, nonces, 400/441/437, REST, SHA-256 and USERHASH.

use super::*;

#[test]
fn unauthenticated_request_is_401_with_realm_nonce_and_algorithms() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    let r = c.request_once(&mut h, Method::ALLOCATE, &requested_udp);
    r.assert_err(401);
    assert_eq!(r.get(attr::REALM), Some(REALM.as_bytes()));
    assert!(r.get(attr::NONCE).unwrap().starts_with(b"obMatJos2"));
    let algs: Vec<u16> = attr::read_password_algorithms(r.get(attr::PASSWORD_ALGORITHMS).unwrap())
        .map(|(a, _)| a)
        .collect();
    assert!(algs.contains(&attr::PASSWORD_ALGORITHM_MD5));
    assert!(algs.contains(&attr::PASSWORD_ALGORITHM_SHA256));
    assert!(!r.msg().has_integrity());
    assert!(h.binds.is_empty());
    assert_eq!(h.s.counters().unauthorized, 1);
}

#[test]
fn wrong_password_and_unknown_user_are_401() {
    let mut h = H::new(config());
    let mut c = Client::new(udp(40000), "alice", "not-the-password");
    c.allocate(&mut h).assert_err(401);
    let mut m = Client::new(udp(40001), "mallory", "whatever");
    let r = m.allocate(&mut h);
    r.assert_err(401);
    assert!(r.has(attr::NONCE));
    assert!(h.binds.is_empty());
    assert_eq!(h.s.counters().auth_failures, 2);
    let r = h.s.counters().auth_failures_by_reason;
    assert_eq!((r.wrong_credentials, r.unknown_user, r.expired), (1, 1, 0));
}

#[test]
fn integrity_without_realm_nonce_or_username_is_400() {
    let mut h = H::new(config());
    let c = udp(40000);
    let nonce = h.nonce();
    let key = auth::key_md5("alice", REALM, "alice-pw");
    for omit in [attr::USERNAME, attr::REALM, attr::NONCE] {
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(
            &mut out,
            Method::ALLOCATE,
            Class::Request,
            &[omit as u8; 12],
        );
        requested_udp(&mut b);
        for (ty, v) in [
            (attr::USERNAME, b"alice".as_slice()),
            (attr::REALM, REALM.as_bytes()),
            (attr::NONCE, nonce.as_slice()),
        ] {
            if ty != omit {
                b.attr(ty, v);
            }
        }
        b.integrity(&key);
        h.one(c, &out).assert_err(400);
    }
    assert!(h.binds.is_empty());
}

#[test]
fn stale_and_forged_nonces_are_438() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.allocate(&mut h).assert_ok();
    let old = c.nonce.clone();

    // Still fresh at nonce_lifetime, stale one second later.
    h.at(600);
    let mut d = Client::alice(udp(40001));
    d.nonce = old.clone();
    d.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_ok();
    h.at(601);
    let mut e = Client::alice(udp(40002));
    e.nonce = old.clone();
    let r = e.request_once(&mut h, Method::ALLOCATE, &requested_udp);
    r.assert_err(438);
    assert_eq!(r.get(attr::REALM), Some(REALM.as_bytes()));
    let fresh = r.get(attr::NONCE).unwrap().to_vec();
    assert_ne!(Some(fresh.clone()), old);
    // The client retries with the fresh one.
    e.nonce = Some(fresh);
    e.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_ok();

    // Forged: the right shape, a wrong MAC.
    let mut f = Client::alice(udp(40003));
    f.nonce = Some(
        format!(
            "{}{:016x}{:016x}",
            auth::NONCE_PREFIX,
            UNIX0 + 601,
            0xdead_beef_u64
        )
        .into_bytes(),
    );
    f.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_err(438);
    f.nonce = Some(b"not-a-nonce-at-all".to_vec());
    f.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_err(438);
    // Issued to another client address.
    let mut g = Client::alice(five(Transport::Udp, "198.51.100.2".parse().unwrap(), 40004));
    g.nonce = e.nonce.clone();
    g.request_once(&mut h, Method::ALLOCATE, &requested_udp)
        .assert_err(438);
    assert_eq!(h.s.counters().stale_nonces, 4);
}

#[test]
fn other_user_on_the_same_five_tuple_is_441() {
    let (mut h, c) = allocated(config());
    let mut bob = Client::new(c.five, "bob", "bob-pw");
    let r = bob.refresh(&mut h, None);
    r.assert_err(441);
    // The 441 is signed with bob's key (he authenticated).
    assert!(r.msg().check_integrity(&bob.key()));
    bob.permit(&mut h, peer()).assert_err(441);
    bob.channel_bind(&mut h, 0x4000, peer()).assert_err(441);
    assert!(h.s.allocation_on(&c.five).is_some());
    assert!(h.freed.is_empty());
}

#[test]
fn allocation_mismatch_is_437() {
    let (mut h, mut c) = allocated(config());
    // A second Allocate (new transaction) on the same 5-tuple.
    c.allocate(&mut h).assert_err(437);
    assert_eq!(h.binds.len(), 1);

    // Issue 15: without an allocation an unsigned request gets no challenge, a signed one 437.
    let mut d = Client::alice(udp(40001));
    let tid = d.next_tid();
    let bare = d.build(Method::REFRESH, Class::Request, &tid, &|_| {}, false);
    h.silent(d.five, &bare);
    d.nonce = Some(h.nonce());
    d.refresh(&mut h, None).assert_err(437);
    d.permit(&mut h, peer()).assert_err(437);
    let r = d.channel_bind(&mut h, 0x4000, peer());
    r.assert_err(437);
    assert!(r.msg().check_integrity(&d.key()));
}

#[test]
fn rest_credentials_authenticate_until_they_expire() {
    let mut h = H::new(rest_config(&[b"north"]));
    let cred = auth::mint_rest_credentials(b"north", "carol", 100, UNIX0, ':');
    let mut c = Client::new(udp(40000), &cred.username, &cred.password);
    c.allocate(&mut h).assert_ok();
    assert_eq!(
        h.s.allocation_on(&c.five).unwrap().username().as_ref(),
        cred.username.as_str()
    );
    // A bare-expiry username works too.
    let bare = auth::mint_rest_credentials(b"north", "", 100, UNIX0, ':');
    Client::new(udp(40001), &bare.username, &bare.password)
        .allocate(&mut h)
        .assert_ok();
    // Minted with another secret: 401.
    let wrong = auth::mint_rest_credentials(b"south", "carol", 100, UNIX0, ':');
    Client::new(udp(40002), &wrong.username, &wrong.password)
        .allocate(&mut h)
        .assert_err(401);
    // Expired (minted long ago), and expired by simulated time.
    let old = auth::mint_rest_credentials(b"north", "carol", 100, UNIX0 - 1000, ':');
    Client::new(udp(40003), &old.username, &old.password)
        .allocate(&mut h)
        .assert_err(401);
    h.at(101);
    let mut late = Client::new(udp(40004), &cred.username, &cred.password);
    late.allocate(&mut h).assert_err(401);
    let r = h.s.counters().auth_failures_by_reason;
    assert_eq!((r.wrong_credentials, r.expired), (1, 2));
    // Static users still work alongside.
    Client::alice(udp(40005)).allocate(&mut h).assert_ok();
}

/// Issue 15: REST expiry follows the wall clock given to the engine, not the one read at start
/// plus monotonic time: after an NTP step forward a day, yesterday's credential is refused; after
/// a step back, one minted now (by the real clock) is accepted.
#[test]
fn rest_expiry_follows_wall_clock_steps() {
    let mut h = H::new(rest_config(&[b"north"]));
    let cred = auth::mint_rest_credentials(b"north", "carol", 3600, UNIX0, ':');
    Client::new(udp(40000), &cred.username, &cred.password)
        .allocate(&mut h)
        .assert_ok();
    // The wall clock jumps a day ahead while monotonic time moves one second.
    h.at(1);
    h.s.handle_wall_clock(h.now, UNIX0 + 86_400);
    Client::new(udp(40001), &cred.username, &cred.password)
        .allocate(&mut h)
        .assert_err(401);
    // A credential minted by the real (stepped) clock works at once.
    let fresh = auth::mint_rest_credentials(b"north", "carol", 3600, UNIX0 + 86_400, ':');
    Client::new(udp(40002), &fresh.username, &fresh.password)
        .allocate(&mut h)
        .assert_ok();
    // Stepped back two days: one minted then is accepted, as the endpoint that minted it would.
    h.s.handle_wall_clock(h.now, UNIX0 - 86_400);
    let back = auth::mint_rest_credentials(b"north", "dave", 60, UNIX0 - 86_400, ':');
    Client::new(udp(40003), &back.username, &back.password)
        .allocate(&mut h)
        .assert_ok();
}

/// Issue 15: a user removed on reload loses its live allocations (revocation), unless
/// `keep_removed_users`; a rotated REST secret cuts nobody (the allocation keeps its key).
#[test]
fn removed_users_lose_their_allocations_on_reload() {
    let mut h = H::new(rest_config(&[b"north"]));
    let (mut alice, mut bob) = (
        Client::alice(udp(40000)),
        Client::new(udp(40001), "bob", "bob-pw"),
    );
    alice.allocate(&mut h).assert_ok();
    bob.allocate(&mut h).assert_ok();
    let cred = auth::mint_rest_credentials(b"north", "carol", 3600, UNIX0, ':');
    let mut carol = Client::new(udp(40002), &cred.username, &cred.password);
    carol.allocate(&mut h).assert_ok();
    // Reload: bob is gone from the config, the REST secret rotated.
    let mut credentials = Credentials::new(REALM, ':');
    credentials.add_user("alice", &UserSecret::Password("alice-pw".into()));
    credentials.add_rest_secret(b"south");
    let next = ServerConfig {
        credentials: credentials.clone(),
        ..config()
    };
    h.s.set_config(Arc::new(next));
    assert!(
        h.s.allocation_on(&bob.five).is_none(),
        "bob's allocation ended"
    );
    assert!(h.s.allocation_on(&alice.five).is_some());
    assert!(
        h.s.allocation_on(&carol.five).is_some(),
        "a rotated secret cuts no call"
    );
    alice.refresh(&mut h, None).assert_ok();
    carol.refresh(&mut h, None).assert_ok();

    // With keep_removed_users, a removed user keeps its allocation until it expires.
    let mut h = H::new(config());
    let mut bob = Client::new(udp(40001), "bob", "bob-pw");
    bob.allocate(&mut h).assert_ok();
    h.s.set_config(Arc::new(ServerConfig {
        credentials,
        keep_removed_users: true,
        ..config()
    }));
    assert!(h.s.allocation_on(&bob.five).is_some());
}

/// The same for a user of the user database: the next snapshot without it ends its allocation
/// at the next tick; the snapshot merely going stale (Redis away) ends nothing.
#[test]
fn users_dropped_from_the_user_database_lose_their_allocations() {
    let mut h = H::new(config());
    let db = |users: &[&str]| {
        let mut d = auth::UserDb::new(UNIX0);
        for u in users {
            d.add_user(u, REALM, &UserSecret::Password(format!("{u}-pw")));
        }
        d
    };
    h.shared.userdb.store(db(&["dan", "erin"]), 300);
    h.at(1);
    let mut dan = Client::new(udp(40000), "dan", "dan-pw");
    let mut erin = Client::new(udp(40001), "erin", "erin-pw");
    dan.allocate(&mut h).assert_ok();
    erin.allocate(&mut h).assert_ok();
    h.shared.userdb.store(db(&["erin"]), 300);
    h.at(2);
    assert!(h.s.allocation_on(&dan.five).is_none(), "dan was removed");
    assert!(h.s.allocation_on(&erin.five).is_some());
    // Stale (no new snapshot for longer than its max age): nothing ends.
    h.at(400);
    assert!(h.s.allocation_on(&erin.five).is_some());
}

#[test]
fn rest_with_two_secrets_accepts_either() {
    let mut h = H::new(rest_config(&[b"old-secret", b"new-secret"]));
    for (i, secret) in [&b"old-secret"[..], b"new-secret"].into_iter().enumerate() {
        let cred = auth::mint_rest_credentials(secret, "dave", 3600, UNIX0, ':');
        let mut c = Client::new(udp(40000 + i as u16), &cred.username, &cred.password);
        let r = c.allocate(&mut h);
        r.assert_ok();
        assert!(r.msg().check_integrity(&c.key()));
        c.refresh(&mut h, None).assert_ok();
    }
}

#[test]
fn sha256_password_algorithm_and_integrity() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.sha256 = true;
    let r = c.allocate(&mut h);
    r.assert_ok();
    let m = r.msg();
    assert!(m.has_integrity_sha256());
    assert!(m.check_integrity_sha256(&auth::key_sha256("alice", REALM, "alice-pw")));
    c.permit(&mut h, peer()).assert_ok();
    assert!(c
        .refresh(&mut h, None)
        .assert_ok()
        .msg()
        .check_integrity_sha256(&c.key()));
    // The wrong password with SHA-256 is 401 too.
    let mut w = Client::new(udp(40001), "alice", "nope");
    w.sha256 = true;
    w.allocate(&mut h).assert_err(401);
    // An unknown PASSWORD-ALGORITHM is 400.
    let mut u = Client::alice(udp(40002));
    u.nonce = Some(h.nonce());
    let r = u.request_once(&mut h, Method::ALLOCATE, &|b| {
        requested_udp(b);
        b.attr(attr::PASSWORD_ALGORITHM, &[0, 9, 0, 0]);
    });
    r.assert_err(400);
}

/// RFC 8489 §9.2.4: PASSWORD-ALGORITHM needs PASSWORD-ALGORITHMS exactly as the challenge sent
/// it, so a man in the middle who struck SHA-256 from the list (to force MD5) is caught.
#[test]
fn password_algorithms_must_match_the_challenge() {
    let mut h = H::new(config());
    let key = auth::key_md5("alice", REALM, "alice-pw");
    let nonce = h.nonce();
    let signed = |h: &mut H, port: u16, extra: &dyn Fn(&mut MessageBuilder)| {
        let mut req = Vec::new();
        let mut b = MessageBuilder::new(
            &mut req,
            Method::ALLOCATE,
            Class::Request,
            &[port as u8; 12],
        );
        requested_udp(&mut b);
        extra(&mut b);
        b.attr(attr::USERNAME, b"alice")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, &nonce)
            .integrity(&key);
        h.one(udp(port), &req)
    };
    // The list as a downgrading middlebox left it (MD5 only), with MD5 chosen: 400.
    signed(&mut h, 40010, &|b| {
        b.attr(attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0]);
        b.attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
    })
    .assert_err(400);
    // PASSWORD-ALGORITHM alone, or the list alone: 400.
    signed(&mut h, 40011, &|b| {
        b.attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
    })
    .assert_err(400);
    signed(&mut h, 40012, &|b| {
        b.attr(attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0, 0, 2, 0, 0]);
    })
    .assert_err(400);
    // The list as sent, MD5 chosen: fine; neither attribute (MD5, RFC 5389 clients): fine.
    signed(&mut h, 40013, &|b| {
        b.attr(attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 0, 0, 2, 0, 0]);
        b.attr(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
    })
    .assert_ok();
    signed(&mut h, 40014, &|_| {}).assert_ok();
}

#[test]
fn userhash_in_place_of_username() {
    let mut h = H::new(config());
    let mut c = Client::alice(udp(40000));
    c.userhash = true;
    let r = c.allocate(&mut h);
    r.assert_ok();
    assert!(r.msg().check_integrity(&c.key()));
    assert_eq!(
        h.s.allocation_on(&c.five).unwrap().username().as_ref(),
        "alice"
    );
    c.permit(&mut h, peer()).assert_ok();
    let mut x = Client::new(udp(40001), "nobody", "pw");
    x.userhash = true;
    x.allocate(&mut h).assert_err(401);
}
