//! Resource exhaustion on the real binary (issue 9): with its file-descriptor limit nearly used up,
//! Allocates that cannot get a relay socket are answered 508 (never a crash), Binding is still
//! answered, and once allocations are deleted new ones succeed again.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

/// The server's RLIMIT_NOFILE: a few dozen relay sockets after its listeners and runtime.
const NOFILE: u64 = 64;

fn request(
    sock: &UdpSocket,
    server: SocketAddr,
    method: Method,
    lifetime: Option<u32>,
) -> Option<u16> {
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    let mut b = MessageBuilder::new(&mut req, method, Class::Request, &tid);
    if method == Method::ALLOCATE {
        b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
    }
    if let Some(l) = lifetime {
        b.attr_u32(attr::LIFETIME, l);
    }
    // Retransmitted every 500 ms for up to 10 s (it was three tries, 1.5 s): a loaded machine
    // can stall the server for longer. An answer to an earlier request is skipped.
    let mut buf = [0u8; 1500];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        sock.send_to(&req, server).ok()?;
        let next = Instant::now() + Duration::from_millis(500);
        while Instant::now() < next {
            let Ok(n) = sock.recv(&mut buf) else {
                continue;
            };
            let m = Message::decode(&buf[..n]).ok()?;
            if m.transaction_id() == &tid {
                return Some(match m.get(attr::ERROR_CODE) {
                    Some(v) => attr::read_error_code(v)?.0,
                    None => 200,
                });
            }
        }
    }
    None
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.4:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

#[test]
fn out_of_file_descriptors_answers_508_and_recovers() {
    let port = free_port();
    let (min, max) = free_range(200);
    let args: Vec<String> = [
        "-n",
        "-L",
        "127.0.0.1",
        "--no-auth",
        "--allow-loopback-peers",
        "-m",
        "1",
        "--no-tcp",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-p".into(),
        port.to_string(),
        "--min-port".into(),
        min.to_string(),
        "--max-port".into(),
        max.to_string(),
    ])
    .collect();
    let mut cmd = Command::new(BIN);
    cmd.args(&args).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setrlimit(2) between fork and exec touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut proc = Proc {
        child: cmd.spawn().expect("start vigi-turn"),
        name: "vigi-turn".into(),
    };
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let t0 = Instant::now();
    while binding_udp(server, Duration::from_millis(200)).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
    }
    let mut held = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..100 {
        let s = client();
        let code = request(&s, server, Method::ALLOCATE, None).expect("every Allocate answered");
        codes.push(code);
        if code == 200 {
            held.push(s);
        }
        if code == 508 {
            break;
        }
    }
    eprintln!(
        "RLIMIT_NOFILE {NOFILE}: {} allocations, then {:?}",
        held.len(),
        codes.last()
    );
    assert_eq!(codes.last(), Some(&508), "codes: {codes:?}");
    assert!(held.len() > 10 && (held.len() as u64) < NOFILE);
    assert!(proc.child.try_wait().unwrap().is_none(), "still running");
    assert!(binding_udp(server, Duration::from_secs(10)).is_some());
    // Give back half; new allocations succeed again.
    let back = held.len() / 2;
    for s in held.drain(..back) {
        assert_eq!(request(&s, server, Method::REFRESH, Some(0)), Some(200));
    }
    for _ in 0..back / 2 {
        let s = client();
        assert_eq!(request(&s, server, Method::ALLOCATE, None), Some(200));
        held.push(s);
    }
    assert!(proc.child.try_wait().unwrap().is_none(), "still running");
}
