//! The `turn` crate's client (webrtc-rs, what Rust WebRTC stacks use) allocates, relays both ways
//! and refreshes through the real binary, with static and with REST credentials.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use tokio::net::UdpSocket;
use vigi_turn::engine::auth::mint_rest_credentials;

/// Allocate with `user`/`password`, then echo `rounds` messages between a peer socket and the
/// relay; `pause` between rounds lets the client's refresh timers run.
async fn relay_round_trips(
    port: u16,
    (min, max): (u16, u16),
    user: &str,
    password: &str,
    realm: &str,
    rounds: usize,
    pause: Duration,
) {
    let server = format!("127.0.0.1:{port}");
    let common::turn_client::Live { client, relay } =
        common::turn_client::allocate(&server, user, password, realm)
            .await
            .expect("allocate");
    let relay_addr = relay.local_addr().unwrap();
    assert_eq!(relay_addr.ip().to_string(), "127.0.0.1");
    assert!(
        (min..=max).contains(&relay_addr.port()),
        "relay port {relay_addr} in {min}-{max}"
    );

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = vec![0u8; 2048];
    for i in 0..rounds {
        let msg = format!("ping {i}");
        // Client -> relay -> peer (the first send installs the permission).
        relay
            .send_to(msg.as_bytes(), peer_addr)
            .await
            .expect("send via relay");
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .expect("peer received in time")
            .unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(from, relay_addr, "peer sees the relayed address");
        // Peer -> relay -> client.
        let pong = format!("pong {i}");
        peer.send_to(pong.as_bytes(), relay_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
            .await
            .expect("client received in time")
            .unwrap();
        assert_eq!(&buf[..n], pong.as_bytes());
        assert_eq!(from, peer_addr);
        tokio::time::sleep(pause).await;
    }
    relay
        .close()
        .await
        .expect("close relay (Refresh lifetime 0)");
    client.close().await.expect("close");
}

/// A relay range of its own (both tests run at once; a fixed range was shared between them and
/// with other test processes on the machine), and the server's arguments with it.
fn server_args(extra: &[&str]) -> ServerArgs {
    ServerArgs::bare()
        .args(&["-L", "127.0.0.1", "--allow-loopback-peers"])
        .realm("turn.test")
        .relay_ports(100)
        .threads(1)
        .args(extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_crate_client_with_static_user_relays_and_refreshes() {
    // A 6-second allocation: the client must refresh it (at half-life, 3 s: as much slack
    // for a late timer on a loaded machine; with 4 s it was 2) for the last rounds, 12 seconds
    // in, to get through.
    let args = server_args(&[
        "--user",
        "alice:wonderland",
        "--max-allocate-lifetime",
        "6",
        "--default-allocate-lifetime",
        "6",
    ]);
    let (min, max) = args.range();
    let srv = args.start();
    relay_round_trips(
        srv.port,
        (min, max),
        "alice",
        "wonderland",
        "turn.test",
        5,
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_crate_client_with_rest_credentials() {
    let args = server_args(&["--use-auth-secret", "--static-auth-secret", "s3cret"]);
    let (min, max) = args.range();
    let srv = args.start();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let creds = mint_rest_credentials(b"s3cret", "bob", 3600, now, ':');
    relay_round_trips(
        srv.port,
        (min, max),
        &creds.username,
        &creds.password,
        "turn.test",
        3,
        Duration::ZERO,
    )
    .await;
}
