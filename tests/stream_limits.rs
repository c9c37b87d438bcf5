//! Issue 15, resource bounds on TCP client connections, on loopback with the real binary: one
//! source address cannot take every connection slot (`--max-tcp-connections-per-ip`), and a
//! connection that once sent a large frame gives its read buffer back.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{raise_nofile, rss_kib, start_server};
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

/// A STUN Binding request over TCP, with `pad` bytes of an optional attribute; whether it got
/// its success answer.
fn binding(s: &mut TcpStream, pad: usize) -> bool {
    binding_answer(s, pad).is_some()
}

fn binding_answer(s: &mut TcpStream, pad: usize) -> Option<()> {
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    let mut b = MessageBuilder::new(&mut req, Method::BINDING, Class::Request, &tid);
    if pad > 0 {
        b.attr(0x8050, &vec![0x5A; pad]);
    }
    s.write_all(&req).ok()?;
    let mut head = [0u8; 20];
    s.read_exact(&mut head).ok()?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut raw = head.to_vec();
    raw.resize(20 + len, 0);
    s.read_exact(&mut raw[20..]).ok()?;
    let m = Message::decode(&raw).ok()?;
    (m.class() == Class::Success && m.get(attr::XOR_MAPPED_ADDRESS).is_some()).then_some(())
}

fn connect_from(source: [u8; 4], port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Whether the server closed `s` (or never served it): a Binding gets no answer.
fn refused(s: &mut TcpStream) -> bool {
    !binding(s, 0)
}

#[test]
fn one_address_cannot_take_every_tcp_slot() {
    let srv = start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "--no-auth",
        "--max-tcp-connections",
        "20",
        "--max-tcp-connections-per-ip",
        "5",
    ]);
    // 127.0.0.2 holds its five...
    let mut held: Vec<TcpStream> = (0..5)
        .map(|_| connect_from([127, 0, 0, 2], srv.port))
        .collect();
    for s in &mut held {
        assert!(binding(s, 0), "within the per-address cap");
    }
    // ...and no more,
    let mut sixth = connect_from([127, 0, 0, 2], srv.port);
    assert!(
        refused(&mut sixth),
        "a sixth connection from one address is closed"
    );
    // while another address is served at once.
    let mut other = connect_from([127, 0, 0, 3], srv.port);
    assert!(binding(&mut other, 0), "another address is not locked out");
    // A slot given back is free again.
    drop(held.pop());
    let t0 = Instant::now();
    loop {
        let mut again = connect_from([127, 0, 0, 2], srv.port);
        if binding(&mut again, 0) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the slot came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 1,000 connections that each sent one 60 KiB frame: before, each kept a 64 KiB read buffer
/// (2,000 held 133 MiB); now each gives it back once the frame is handled.
#[test]
fn read_buffers_shrink_back_after_a_large_frame() {
    const CONNS: usize = 1000;
    raise_nofile(4096);
    let srv = start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "--no-auth",
        "--max-tcp-connections-per-ip",
        "0",
    ]);
    let pid = srv.proc.child.id();
    let mut conns: Vec<TcpStream> = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let mut s = connect_from([127, 0, 1, (i % 200) as u8 + 1], srv.port);
        assert!(binding(&mut s, 0));
        conns.push(s);
    }
    let before = rss_kib(pid);
    for s in &mut conns {
        assert!(binding(s, 60 * 1024), "a 60 KiB Binding is answered");
    }
    let grown = rss_kib(pid).saturating_sub(before);
    eprintln!("RSS growth after {CONNS} large frames: {grown} KiB");
    // 1,000 x 64 KiB kept would be 64 MiB; what is allowed is a fraction of that.
    assert!(
        grown < 16 * 1024,
        "read buffers were kept: RSS grew {grown} KiB for {CONNS} connections"
    );
}
