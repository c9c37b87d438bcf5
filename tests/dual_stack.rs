//! Dual allocations (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY) against the real binary, driven by
//! coturn's `turnutils_uclient -Z`: one allocation with an IPv4 and an IPv6 relayed address, and
//! messages relayed to an IPv4 peer through the first and to an IPv6 peer through the second;
//! `-x`/`-X` (REQUESTED-ADDRESS-FAMILY) from an IPv4 client; and `-A` for Allocates naming no
//! family. The admin API lists both relayed addresses of a dual allocation and counts the
//! traffic of both in it.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

fn dual_server() -> Server {
    dual_server_with(&[])
}

/// A server listening and relaying on 127.0.0.1 and ::1, with `extra` flags.
fn dual_server_with(extra: &[&str]) -> Server {
    ServerArgs::dual_loopback()
        .realm("bench.local")
        .args(&["--user", "bench:benchpw"])
        .relay_ports(40)
        .threads(2)
        .args(extra)
        .start()
}

/// turnutils_peer echoing on both loopback addresses.
fn dual_peer() -> (Proc, u16) {
    start_peer_on(&["127.0.0.1", "::1"])
}

fn run_dual(srv: &Server, peer_ip: &str, peer_port: u16, extra: &[&str]) -> UclientResult {
    run_uclient(srv, peer_ip, peer_port, &[&["-Z"], extra].concat())
}

/// turnutils_uclient from a loopback address of its own ([`client_ip`]: two runs on one server
/// never meet a leftover allocation's 5-tuple) to `srv`, relaying to `peer_ip`:`peer_port`.
fn run_uclient(srv: &Server, peer_ip: &str, peer_port: u16, extra: &[&str]) -> UclientResult {
    require_tool("turnutils_uclient");
    let mut cmd = std::process::Command::new("turnutils_uclient");
    cmd.args(["-L", &client_ip()])
        .args(["-p", &srv.port.to_string(), "-e", peer_ip])
        .args(["-r", &peer_port.to_string(), "-u", "bench", "-w", "benchpw"])
        .args(extra)
        .arg("127.0.0.1");
    let out = run_with_timeout(&mut cmd, std::time::Duration::from_secs(60));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.split(name).nth(1))
            .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .next_back()
            .unwrap_or(0)
    };
    UclientResult {
        sent: field("tot_send_msgs="),
        received: field("tot_recv_msgs="),
        lost_line: text
            .lines()
            .find(|l| l.contains("Total lost packets"))
            .unwrap_or("")
            .to_owned(),
        output: text,
    }
}

#[track_caller]
fn assert_all_echoed(r: &UclientResult, expect: u64) {
    assert_eq!(r.sent, expect, "sent; output:\n{}", r.output);
    assert_eq!(r.received, expect, "all echoed; output:\n{}", r.output);
    assert!(
        r.lost_line.contains("Total lost packets 0 "),
        "no loss; output:\n{}",
        r.output
    );
    assert!(
        !r.output.contains("cannot be received") && !r.output.contains("error 44"),
        "{}",
        r.output
    );
}

#[test]
fn uclient_dual_allocation_relays_to_an_ipv4_peer() {
    let srv = dual_server();
    let (_peer, pport) = dual_peer();
    let r = run_dual(
        &srv,
        "127.0.0.1",
        pport,
        &["-m", "2", "-n", "30", "-l", "100"],
    );
    assert_all_echoed(&r, 60);
}

#[test]
fn uclient_dual_allocation_relays_to_an_ipv6_peer() {
    // The client is on IPv4; only the IPv6 relayed address of its dual allocation can reach ::1.
    let srv = dual_server();
    let (_peer, pport) = dual_peer();
    let r = run_dual(&srv, "::1", pport, &["-m", "2", "-n", "30", "-l", "100"]);
    assert_all_echoed(&r, 60);
    // Send indications too (-s).
    let r = run_dual(
        &srv,
        "::1",
        pport,
        &["-s", "-m", "1", "-n", "20", "-l", "100"],
    );
    assert_all_echoed(&r, 20);
}

#[test]
fn without_an_ipv6_relay_uclient_dual_allocation_is_refused_its_ipv6_half() {
    // ADDRESS-ERROR-CODE 440 for IPv6: coturn's client gives up on a dual allocation it did not
    // get in full, and nothing reaches the IPv6 peer.
    let srv = start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "-E",
        "127.0.0.1",
        "--allow-loopback-peers",
        "--realm",
        "bench.local",
        "--user",
        "bench:benchpw",
    ]);
    let (_peer, pport) = dual_peer();
    let r = run_dual(&srv, "::1", pport, &["-m", "1", "-n", "5", "-l", "100"]);
    assert_eq!(r.received, 0, "{}", r.output);
}

#[test]
fn uclient_requesting_an_ipv6_relay_from_ipv4() {
    // -x: REQUESTED-ADDRESS-FAMILY IPv6 from a client on 127.0.0.1, to a peer on ::1; -X asks
    // for IPv4 explicitly.
    let srv = dual_server();
    let (_peer, pport) = dual_peer();
    let r = run_uclient(
        &srv,
        "::1",
        pport,
        &["-x", "-m", "2", "-n", "20", "-l", "100"],
    );
    assert_all_echoed(&r, 40);
    let r = run_uclient(
        &srv,
        "127.0.0.1",
        pport,
        &["-X", "-m", "1", "-n", "20", "-l", "100"],
    );
    assert_all_echoed(&r, 40);
}

/// The relayed address(es) an Allocate from 127.0.0.1 naming no address family gets, with
/// long-term credentials bench:benchpw (401, then the signed request).
fn unasked_relays(srv: &Server) -> Vec<std::net::SocketAddr> {
    use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], srv.port));
    let mut buf = [0u8; 1500];
    let mut request = |tid: &[u8; 12], nonce: Option<&[u8]>| -> Vec<u8> {
        let mut req = Vec::new();
        let mut b = MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, tid);
        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
        if let Some(n) = nonce {
            b.attr(attr::USERNAME, b"bench");
            b.attr(attr::REALM, b"bench.local");
            b.attr(attr::NONCE, n);
            b.integrity(&vigi_turn::engine::auth::key_md5(
                "bench",
                "bench.local",
                "benchpw",
            ));
        }
        s.send_to(&req, to).unwrap();
        let n = s.recv(&mut buf).expect("an answer");
        buf[..n].to_vec()
    };
    let first = request(&[1; 12], None);
    let m = Message::decode(&first).unwrap();
    let nonce = m.get(attr::NONCE).expect("401 with NONCE").to_vec();
    let ok = request(&[2; 12], Some(&nonce));
    let m = Message::decode(&ok).unwrap();
    assert_eq!(m.class(), Class::Success);
    m.attributes()
        .filter(|a| a.ty == attr::XOR_RELAYED_ADDRESS)
        .map(|a| {
            attr::read_xor_address(&ok[a.offset..a.offset + a.len], m.transaction_id()).unwrap()
        })
        .collect()
}

#[test]
fn allocation_default_address_family_picks_the_unasked_relay_family() {
    // coturn's uclient always names the family of its peer, so a hand-made Allocate names none.
    // One server at a time (each is stopped before the next starts), so that the suite can run
    // with the fast path on, where one XDP program holds the namespace's `lo`.
    let r = unasked_relays(&dual_server());
    assert!(r.len() == 1 && r[0].is_ipv4(), "{r:?}");
    let r = unasked_relays(&dual_server_with(&["-A", "ipv6"]));
    assert!(r.len() == 1 && r[0].is_ipv6(), "{r:?}");
    // keep: the client's family (IPv4 here).
    let r = unasked_relays(&dual_server_with(&[
        "--allocation-default-address-family",
        "keep",
    ]));
    assert!(r.len() == 1 && r[0].is_ipv4(), "{r:?}");
}

/// A request from `s` to `server`; the answer.
fn stun_request(
    s: &UdpSocket,
    server: SocketAddr,
    method: Method,
    build: impl Fn(&mut MessageBuilder),
) -> Vec<u8> {
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    build(&mut MessageBuilder::new(
        &mut req,
        method,
        Class::Request,
        &tid,
    ));
    s.send_to(&req, server).unwrap();
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, _) = s.recv_from(&mut buf).expect("answer");
        let m = Message::decode(&buf[..n]).expect("STUN answer");
        if m.transaction_id() == &tid {
            assert_eq!(m.class(), Class::Success, "{method:?} refused");
            buf.truncate(n);
            return buf;
        }
    }
}

#[test]
fn admin_api_lists_both_relays_of_a_dual_allocation_and_counts_both_families() {
    const TOKEN: &str = "dual-admin-token-0123456789";
    let admin = free_port();
    let admin_s = format!("127.0.0.1:{admin}");
    let srv = dual_server_with(&[
        "--no-auth",
        "--admin-listen",
        &admin_s,
        "--admin-token",
        TOKEN,
    ]);
    let server = SocketAddr::from(([127, 0, 0, 1], srv.port));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let peer4 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer6 = UdpSocket::bind("[::1]:0").unwrap();
    for p in [&peer4, &peer6] {
        p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let a = stun_request(&client, server, Method::ALLOCATE, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        b.attr(
            attr::ADDITIONAL_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    });
    let m = Message::decode(&a).unwrap();
    let relayed: Vec<SocketAddr> = m
        .attributes()
        .filter(|r| r.ty == attr::XOR_RELAYED_ADDRESS)
        .filter_map(|r| attr::read_xor_address(&a[r.offset..r.offset + r.len], m.transaction_id()))
        .collect();
    assert_eq!(relayed.len(), 2, "a dual allocation: {relayed:?}");
    // 100 bytes to and 300 from the IPv4 peer, 200 to and 400 from the IPv6 peer.
    for (peer, up, down) in [(&peer4, 100, 300), (&peer6, 200, 400)] {
        let addr = peer.local_addr().unwrap();
        stun_request(&client, server, Method::CREATE_PERMISSION, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, &addr);
        });
        let tid: [u8; 12] = rand::random();
        let mut ind = Vec::new();
        MessageBuilder::new(&mut ind, Method::SEND, Class::Indication, &tid)
            .xor_address(attr::XOR_PEER_ADDRESS, &addr)
            .attr(attr::DATA, &vec![7u8; up]);
        client.send_to(&ind, server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = peer.recv_from(&mut buf).expect("relayed to the peer");
        assert_eq!(n, up);
        assert!(relayed.contains(&from), "{from} is not one of {relayed:?}");
        assert_eq!(from.is_ipv6(), addr.is_ipv6());
        peer.send_to(&vec![9u8; down], from).unwrap();
        let (n, _) = client.recv_from(&mut buf).expect("a Data indication");
        let d = Message::decode(&buf[..n]).expect("STUN");
        assert_eq!(d.get(attr::DATA).map(<[u8]>::len), Some(down));
    }
    // The snapshots are published once a second.
    let t0 = Instant::now();
    let alloc = loop {
        let (status, body) = http(admin, "GET", "/api/allocations", &bearer(Some(TOKEN)));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let found = v["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["traffic"]["peer_rcv"]["packets"] == 2)
            .cloned();
        if let Some(a) = found {
            break a;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "not listed: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let listed = |k: &str| -> Vec<String> {
        alloc[k]
            .as_array()
            .unwrap_or_else(|| panic!("no {k}: {alloc}"))
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect()
    };
    let want: Vec<String> = relayed.iter().map(|r| r.to_string()).collect();
    assert_eq!(listed("reported_relays"), want, "{alloc}");
    assert_eq!(listed("relays"), want, "{alloc}");
    // The old field is still the first relay.
    assert_eq!(alloc["relay"].as_str(), Some(want[0].as_str()));
    let t = &alloc["traffic"];
    assert_eq!(t["peer_sent"]["bytes"], 300, "{alloc}");
    assert_eq!(t["peer_sent"]["packets"], 2, "{alloc}");
    assert_eq!(t["peer_rcv"]["bytes"], 700, "{alloc}");
    assert_eq!(t["sent"]["bytes"], 700, "{alloc}");
}
