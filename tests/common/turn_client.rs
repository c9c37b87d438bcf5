//! TURN clients shared by the integration tests that check what survives reloads, drains and
//! Redis outages: the `turn` crate's client holding one allocation, and a raw two-step Allocate
//! (401 challenge, then signed) that reports the error code and ALTERNATE-SERVER.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use vigi_turn::engine::auth::key_md5;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};
use webrtc_util::Conn;

/// How long a relayed message may take (a loaded CI machine can stall a process for seconds).
const ANSWER: Duration = Duration::from_secs(10);

/// A `turn` crate client with one allocation.
pub struct Live {
    pub client: Client,
    pub relay: Box<dyn Conn + Send + Sync>,
}

/// Allocate on `server` (`HOST:PORT`) with long-term credentials of `realm`.
pub async fn allocate(
    server: &str,
    user: &str,
    password: &str,
    realm: &str,
) -> Result<Live, String> {
    // A port from the test allocator, not bind(:0): a test may drop a client without ending its
    // allocation, and a later client given that port by the kernel would send its Allocate on
    // the live allocation's 5-tuple and get a 437.
    let conn = super::udp_on_free_port(Ipv4Addr::UNSPECIFIED.into());
    conn.set_nonblocking(true).unwrap();
    let conn = UdpSocket::from_std(conn).unwrap();
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_owned(),
        turn_serv_addr: server.to_owned(),
        username: user.to_owned(),
        password: password.to_owned(),
        realm: realm.to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    client.listen().await.map_err(|e| e.to_string())?;
    let relay = tokio::time::timeout(Duration::from_secs(10), client.allocate())
        .await
        .map_err(|_| "allocate timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(Live {
        client,
        relay: Box::new(relay),
    })
}

impl Live {
    /// One message each way between the client (through its relay) and `peer`; the peer must
    /// see it come from the relayed address.
    pub async fn round_trip(&self, peer: &UdpSocket, tag: &str) -> Result<(), String> {
        let relay_addr = self.relay.local_addr().unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let mut buf = vec![0u8; 1500];
        let ping = format!("ping {tag}");
        self.relay
            .send_to(ping.as_bytes(), peer_addr)
            .await
            .map_err(|e| e.to_string())?;
        let (n, from) = tokio::time::timeout(ANSWER, peer.recv_from(&mut buf))
            .await
            .map_err(|_| format!("{tag}: peer got nothing"))?
            .unwrap();
        assert_eq!(&buf[..n], ping.as_bytes());
        assert_eq!(from, relay_addr);
        let pong = format!("pong {tag}");
        peer.send_to(pong.as_bytes(), relay_addr).await.unwrap();
        let (n, _) = tokio::time::timeout(ANSWER, self.relay.recv_from(&mut buf))
            .await
            .map_err(|_| format!("{tag}: client got nothing"))?
            .map_err(|e| e.to_string())?;
        assert_eq!(&buf[..n], pong.as_bytes());
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.relay.close().await;
        let _ = self.client.close().await;
    }
}

/// Allocate over raw STUN (401 challenge, then signed with the realm it names) on `server`: the
/// error code (0 on success) and the ALTERNATE-SERVER of the answer.
pub fn raw_allocate_at(
    server: SocketAddr,
    user: &str,
    password: &str,
) -> (u16, Option<SocketAddr>) {
    let any: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    raw_allocate_from(any, server, user, password)
}

/// [`raw_allocate_at`] from a socket bound to `source` (another loopback address is another
/// client IP).
pub fn raw_allocate_from(
    source: IpAddr,
    server: SocketAddr,
    user: &str,
    password: &str,
) -> (u16, Option<SocketAddr>) {
    // Never bind(:0): callers drop this socket while the allocation it made lives on, so a
    // later client socket given the same port by the kernel would hit that allocation's
    // 5-tuple (437). The test allocator never hands a port out twice, nor one the kernel gives.
    let s = super::udp_on_free_port(source);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1500];
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &rand::random())
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    s.send_to(&req, server).unwrap();
    let n = s.recv(&mut buf).expect("challenge");
    let m = Message::decode(&buf[..n]).unwrap();
    let realm = String::from_utf8(m.get(attr::REALM).expect("REALM").to_vec()).unwrap();
    let nonce = m.get(attr::NONCE).expect("NONCE").to_vec();
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &rand::random())
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::USERNAME, user.as_bytes())
        .attr(attr::REALM, realm.as_bytes())
        .attr(attr::NONCE, &nonce)
        .integrity(&key_md5(user, &realm, password));
    s.send_to(&req, server).unwrap();
    let n = s.recv(&mut buf).expect("answer");
    let m = Message::decode(&buf[..n]).unwrap();
    if m.class() == Class::Success {
        return (0, None);
    }
    let code = m
        .get(attr::ERROR_CODE)
        .and_then(attr::read_error_code)
        .map(|(c, _)| c)
        .expect("ERROR-CODE");
    (
        code,
        m.get(attr::ALTERNATE_SERVER).and_then(attr::read_address),
    )
}
