//! STUN Binding against the real binary: coturn's `turnutils_stunclient` over UDP, a hand-written
//! client over TCP, and the command lines of existing coturn deployments.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;
use vigi_turn::proto::framing::frame_len;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

#[test]
fn turnutils_stunclient_gets_the_reflexive_address() {
    require_tool("turnutils_stunclient");
    let srv = start_server(&["-n", "-L", "127.0.0.1", "--no-tls", "--no-dtls"]);
    let out = run_with_timeout(
        Command::new("turnutils_stunclient").args(["-p", &srv.port.to_string(), "127.0.0.1"]),
        Duration::from_secs(20),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("UDP reflexive addr: 127.0.0.1:"),
        "unexpected turnutils_stunclient output:\n{text}"
    );
    assert!(srv.proc.terminate().success(), "SIGTERM must exit 0");
}

#[test]
fn binding_over_tcp_with_several_messages_and_partial_writes() {
    let srv = start_server(&["-n", "-L", "127.0.0.1"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = s.local_addr().unwrap();
    // Two requests back to back, the second one written in two pieces.
    let mut reqs = Vec::new();
    let tids: [[u8; 12]; 2] = [[1; 12], [2; 12]];
    for tid in &tids {
        MessageBuilder::new(&mut reqs, Method::BINDING, Class::Request, tid).fingerprint();
    }
    let cut = reqs.len() - 5;
    s.write_all(&reqs[..cut]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&reqs[cut..]).unwrap();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while got.len() < 2 {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(len)) = frame_len(&buf) {
            let frame: Vec<u8> = buf.drain(..len).collect();
            let m = Message::decode(&frame).expect("valid STUN");
            assert_eq!(m.class(), Class::Success);
            assert!(m.has_fingerprint(), "FINGERPRINT requested, so answered");
            assert!(m.get(attr::SOFTWARE).is_some());
            assert_eq!(m.get_xor_address(attr::XOR_MAPPED_ADDRESS), Some(local));
            got.push(*m.transaction_id());
        }
    }
    assert_eq!(got, tids);
}

#[test]
fn coturn_docker_compose_flags_start_and_serve() {
    // The seed application's coturn service, unchanged but for the port (and -n so that a host's
    // own /etc/turnserver.conf does not change the test).
    let port = free_port();
    let lp = format!("--listening-port={port}");
    let srv = start_server_on(
        port,
        &[
            &lp,
            "--min-port=49152",
            "--max-port=65535",
            "--user=vigiturn:vigisecret123",
            "--realm=vigi.local",
            "-n",
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], srv.port));
    assert!(binding_udp(addr, Duration::from_secs(10)).is_some());
    assert!(srv.proc.terminate().success());
}

#[test]
fn bad_flags_fail_with_one_line_before_binding() {
    for (args, needle) in [
        (vec!["--min-port=70000"], "--min-port"),
        (vec!["--listening-ip=not-an-ip"], "--listening-ip"),
        (vec!["--min-port", "5000", "--max-port", "4000"], "port"),
        (vec!["--user=nocolon"], "--user"),
        (vec!["--no-such-flag"], "--no-such-flag"),
    ] {
        let port = free_port();
        let out = Command::new(BIN)
            .arg("-n")
            .args(["-p", &port.to_string()])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} must exit 2");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line, got {err:?}"
        );
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should name {needle}"
        );
        // Nothing was bound: the port is still free.
        assert!(std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok());
    }
}

#[test]
fn config_file_is_read_and_bad_lines_are_named() {
    let dir = std::env::temp_dir().join(format!("vigi-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.conf");
    let port = free_port();
    std::fs::write(
        &good,
        format!("# a comment\nlistening-port={port}\nlistening-ip 127.0.0.1\nfingerprint\nrealm=\"example.org\"\nuser=a:b\n"),
    )
    .unwrap();
    let srv = start_server_on(port, &["-c", good.to_str().unwrap()]);
    assert_eq!(srv.port, port);
    let bad = dir.join("bad.conf");
    std::fs::write(&bad, "realm=x\nmin-port=99999\n").unwrap();
    let out = Command::new(BIN)
        .args(["-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.conf:2"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
