//! Alternate servers and fleet redirects, and fleet-wide quotas.

use super::*;

#[test]
fn alternate_servers_redirect_every_allocate_round_robin_never_to_self() {
    let alt = |s: &str| -> SocketAddr { sa(s) };
    let cfg = ServerConfig {
        // The node's own address is in the list (a shared config): it is skipped.
        alternate_servers: vec![
            alt("192.0.2.10:3478"),
            alt(SERVER_ADDR),
            alt("192.0.2.11:3478"),
        ],
        tls_alternate_servers: vec![alt("192.0.2.20:5349")],
        ..config()
    };
    let mut h = H::new(cfg);
    let mut seen = Vec::new();
    for port in 0..4 {
        let mut c = Client::alice(udp(42000 + port));
        let r = c.allocate(&mut h);
        r.assert_err(300);
        assert!(r.msg().has_integrity(), "the 300 is signed (RFC 8489 §10)");
        seen.push(
            r.get(attr::ALTERNATE_SERVER)
                .and_then(attr::read_address)
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        vec![
            alt("192.0.2.10:3478"),
            alt("192.0.2.11:3478"),
            alt("192.0.2.10:3478"),
            alt("192.0.2.11:3478")
        ]
    );
    let mut t = Client::alice(five(Transport::Tls, CLIENT_IP, 42100));
    let r = t.allocate(&mut h);
    r.assert_err(300);
    assert_eq!(
        r.get(attr::ALTERNATE_SERVER).and_then(attr::read_address),
        Some(alt("192.0.2.20:5349"))
    );
    // A list naming only this node redirects nothing; a bad password is still a 401.
    let mut h = H::new(ServerConfig {
        alternate_servers: vec![alt(SERVER_ADDR)],
        ..config()
    });
    Client::alice(udp(42200)).allocate(&mut h).assert_ok();
    Client::new(udp(42201), "alice", "wrong")
        .allocate(&mut h)
        .assert_err(401);
}

#[test]
fn draining_node_redirects_to_its_least_loaded_fresh_fleet_peer_once() {
    let mut h = H::new(config());
    let peer = sa("192.0.2.30:3478");
    h.shared.fleet_peers.store(
        UNIX0,
        vec![
            fleet_peer("192.0.2.30:3478", 0, true),
            fleet_peer("192.0.2.31:3478", 1, true),
        ],
    );
    // Not draining: no redirect, whatever the fleet says.
    Client::alice(udp(43000)).allocate(&mut h).assert_ok();
    h.s.set_draining(true);
    let r = Client::alice(udp(43001)).allocate(&mut h);
    r.assert_err(300);
    assert_eq!(
        r.get(attr::ALTERNATE_SERVER).and_then(attr::read_address),
        Some(peer)
    );
    // TLS clients cannot be sent to a UDP/TCP address: 403.
    Client::alice(five(Transport::Tls, CLIENT_IP, 43002))
        .allocate(&mut h)
        .assert_err(403);
    // A fleet view older than its maximum age is not used: 403.
    h.at(auth::FLEET_USAGE_MAX_AGE + 1);
    Client::alice(udp(43003)).allocate(&mut h).assert_err(403);
}

#[test]
fn fleet_counts_join_the_user_and_total_quotas_while_fresh() {
    let mut h = H::new(ServerConfig {
        user_quota: 2,
        total_quota: 3,
        ..config()
    });
    // The other nodes hold one allocation of alice and one of carol.
    h.shared.fleet_usage.store(
        UNIX0,
        HashMap::from([("alice".to_owned(), 1), ("carol".to_owned(), 1)]),
    );
    Client::alice(udp(45000)).allocate(&mut h).assert_ok();
    // alice: 1 here + 1 elsewhere = her quota of 2.
    Client::alice(udp(45001)).allocate(&mut h).assert_err(486);
    // The realm: 1 here + 2 elsewhere = the total quota of 3, whoever asks.
    Client::new(udp(45002), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_err(486);
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 1);
    // The fleet count goes stale (Redis away): each node counts its own.
    h.at(auth::FLEET_USAGE_MAX_AGE + 1);
    Client::new(udp(45003), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_ok();
    Client::alice(udp(45004)).allocate(&mut h).assert_ok();
    Client::new(udp(45005), "bob", "bob-pw")
        .allocate(&mut h)
        .assert_err(486);
}

fn fleet_peer(addr: &str, allocations: u64, takes_load: bool) -> FleetPeer {
    FleetPeer {
        addr: sa(addr),
        allocations,
        takes_load,
    }
}

#[test]
fn loaded_node_redirects_to_a_less_loaded_peer_under_its_threshold_once_per_client() {
    let mut h = H::new(ServerConfig {
        redirect_over_allocations: 2,
        ..config()
    });
    let (busy, calm) = ("192.0.2.30:3478", "192.0.2.31:3478");
    h.shared.fleet_peers.store(
        UNIX0,
        vec![fleet_peer(calm, 0, true), fleet_peer(busy, 1, false)],
    );
    let client = |last: u8, port: u16| {
        Client::alice(five(
            Transport::Udp,
            IpAddr::from([198, 51, 100, last]),
            port,
        ))
    };
    // Under the threshold: served here, whatever the fleet says.
    client(1, 44000).allocate(&mut h).assert_ok();
    client(1, 44001).allocate(&mut h).assert_ok();
    // Holding 2: a new client goes to the calm peer (the busy one is over its own threshold),
    // signed; nothing is allocated here.
    let r = client(2, 44002).allocate(&mut h);
    r.assert_err(300);
    assert!(r.msg().has_integrity());
    assert_eq!(
        r.get(attr::ALTERNATE_SERVER).and_then(attr::read_address),
        Some(sa(calm))
    );
    assert_eq!(h.shared.total_allocations.load(Ordering::Relaxed), 2);
    // The same client back (from another port, as after a bounce): served here, not sent
    // away twice.
    client(2, 44003).allocate(&mut h).assert_ok();
    // TLS clients cannot be sent to a UDP/TCP address: served here.
    Client::alice(five(Transport::Tls, IpAddr::from([198, 51, 100, 3]), 44004))
        .allocate(&mut h)
        .assert_ok();
    // Holding 4, a peer over its own threshold is never chosen, even when it holds fewer.
    h.shared
        .fleet_peers
        .store(UNIX0, vec![fleet_peer(busy, 1, false)]);
    client(4, 44005).allocate(&mut h).assert_ok();
    // A peer that takes load but holds as many as this node is not less loaded.
    h.shared
        .fleet_peers
        .store(UNIX0, vec![fleet_peer(calm, 5, true)]);
    client(5, 44006).allocate(&mut h).assert_ok();
    // A fleet view older than its maximum age is not used.
    h.shared
        .fleet_peers
        .store(UNIX0, vec![fleet_peer(calm, 0, true)]);
    h.at(auth::FLEET_USAGE_MAX_AGE + 1);
    client(6, 44007).allocate(&mut h).assert_ok();
    // A fresh one is; and after the memory expires, client 2 may be sent away again.
    let later = UNIX0 + auth::FLEET_USAGE_MAX_AGE + 1;
    h.shared
        .fleet_peers
        .store(later, vec![fleet_peer(calm, 0, true)]);
    client(7, 44008).allocate(&mut h).assert_err(300);
    h.shared
        .fleet_peers
        .store(UNIX0 + REDIRECT_MEMORY, vec![fleet_peer(calm, 0, true)]);
    h.at(REDIRECT_MEMORY);
    client(2, 44009).allocate(&mut h).assert_err(300);
}
