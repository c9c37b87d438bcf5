//! RFC 5780 NAT behaviour discovery (`--rfc5780`) on two loopback addresses, classified by
//! coturn's `turnutils_natdiscovery`, and CHANGE-REQUEST checked with a raw client.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::*;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

/// A Binding request with CHANGE-REQUEST `flags` to 127.0.0.1:`port`: where the answer came
/// from, its RESPONSE-ORIGIN and OTHER-ADDRESS.
fn binding(port: u16, flags: u8) -> (SocketAddr, Option<SocketAddr>, Option<SocketAddr>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = Vec::new();
    let tid: [u8; 12] = rand::random();
    let mut b = MessageBuilder::new(&mut req, Method::BINDING, Class::Request, &tid);
    if flags != 0 {
        b.attr(attr::CHANGE_REQUEST, &[0, 0, 0, flags]);
    }
    s.send_to(&req, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = s.recv_from(&mut buf).expect("an answer");
    let m = Message::decode(&buf[..n]).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert!(n <= req.len() + 100, "amplification bound: {n} bytes");
    (
        from,
        m.get(attr::RESPONSE_ORIGIN).and_then(attr::read_address),
        m.get(attr::OTHER_ADDRESS).and_then(attr::read_address),
    )
}

#[test]
fn natdiscovery_classifies_mapping_and_filtering_through_two_addresses() {
    require_tool("turnutils_natdiscovery");
    let alt = free_port();
    let alt_s = alt.to_string();
    let srv = start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "-L",
        "127.0.0.2",
        "--rfc5780",
        "--alt-listening-port",
        &alt_s,
        "-r",
        "t.test",
        "-u",
        "a:b",
    ]);
    let p = srv.port;
    let a = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));

    // Plain: answered from where it was sent, OTHER-ADDRESS is the other IP and port.
    assert_eq!(
        binding(p, 0),
        (
            a([127, 0, 0, 1], p),
            Some(a([127, 0, 0, 1], p)),
            Some(a([127, 0, 0, 2], alt))
        )
    );
    // CHANGE-REQUEST: change port, change IP, both.
    assert_eq!(binding(p, 0x02).0, a([127, 0, 0, 1], alt));
    assert_eq!(binding(p, 0x04).0, a([127, 0, 0, 2], p));
    let (from, origin, _) = binding(p, 0x06);
    assert_eq!(
        (from, origin),
        (a([127, 0, 0, 2], alt), Some(a([127, 0, 0, 2], alt)))
    );

    let out = run_with_timeout(
        Command::new("turnutils_natdiscovery").args([
            "-m",
            "-f",
            "-p",
            &p.to_string(),
            "127.0.0.1",
        ]),
        Duration::from_secs(60),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("NAT with Endpoint Independent Mapping"),
        "{text}"
    );
    assert!(
        text.contains("NAT with Endpoint Independent Filtering"),
        "{text}"
    );
}

/// Without `--rfc5780` a plain Binding carries nothing of RFC 5780, and CHANGE-REQUEST is 420
/// (RFC 5780 §7.2: no alternate address), so a client never takes an answer from the same
/// address for a filtering test passed.
#[test]
fn without_rfc5780_no_other_address_and_change_request_is_420() {
    let srv = start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "-L",
        "127.0.0.2",
        "-r",
        "t.test",
        "-u",
        "a:b",
    ]);
    let (from, origin, other) = binding(srv.port, 0);
    assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], srv.port)));
    assert_eq!((origin, other), (None, None));

    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = Vec::new();
    let mut b = MessageBuilder::new(&mut req, Method::BINDING, Class::Request, &[5; 12]);
    b.attr(attr::CHANGE_REQUEST, &[0, 0, 0, 0x06]);
    s.send_to(&req, ("127.0.0.1", srv.port)).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = s.recv_from(&mut buf).expect("an answer");
    assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], srv.port)));
    let m = Message::decode(&buf[..n]).unwrap();
    assert_eq!(m.class(), Class::Error);
    assert_eq!(
        m.get(attr::ERROR_CODE)
            .and_then(attr::read_error_code)
            .map(|(c, _)| c),
        Some(420)
    );
    assert_eq!(m.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0u8, 3][..]));

    // turnutils_natdiscovery cannot classify filtering without RFC 5780.
    let out = run_with_timeout(
        Command::new("turnutils_natdiscovery").args([
            "-f",
            "-p",
            &srv.port.to_string(),
            "127.0.0.1",
        ]),
        Duration::from_secs(60),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("Endpoint Independent Filtering"), "{text}");
}

#[test]
fn rfc5780_needs_two_addresses_of_one_family() {
    let out = Command::new(BIN)
        .args(["-n", "-L", "127.0.0.1", "--rfc5780"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--rfc5780"), "{err}");
}
