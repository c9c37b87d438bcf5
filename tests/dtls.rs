//! TURN over DTLS (`--features dtls`) against the real binary: coturn's `turnutils_uclient -S`
//! over UDP (DTLS 1.2) on the TLS port, relaying to `turnutils_peer`, with a certificate made at
//! test time. Every message must come back; with `--no-dtls` nothing does. An OpenSSL client
//! checks the cookie exchange (no amplification) and SIGUSR2; garbage and abandoned handshakes
//! leave the listener working; one address holding many handshakes past the cookie leaves others
//! served; a flood of cookie-less ClientHellos from more source ports than a worker has
//! handshake slots takes none of them; a client restarting on the same port gets a new session
//! and allocation.

mod common;

use common::*;

struct Certs {
    dir: std::path::PathBuf,
    cert: String,
    key: String,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn certs() -> Certs {
    let dir = std::env::temp_dir().join(format!(
        "vigi-dtls-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    Certs {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        dir,
    }
}

fn dtls_server(c: &Certs, tls_port: u16, extra: &[&str]) -> Server {
    let (min, max) = free_range(20);
    let (min, max, tls) = (min.to_string(), max.to_string(), tls_port.to_string());
    let mut args = vec![
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
        "--min-port",
        &min,
        "--max-port",
        &max,
        "-m",
        "2",
        "--tls-listening-port",
        &tls,
        "--cert",
        &c.cert,
        "--pkey",
        &c.key,
    ];
    if extra.contains(&"-m") {
        // The caller picks the number of workers.
        let m = args.iter().position(|a| *a == "-m").unwrap();
        args.drain(m..m + 2);
    }
    args.extend_from_slice(extra);
    start_server(&args)
}

const LT: [&str; 4] = ["-u", "bench", "-w", "benchpw"];

#[test]
fn uclient_over_dtls_all_echoed() {
    let c = certs();
    let tls_port = free_port();
    let _srv = dtls_server(&c, tls_port, &[]);
    let (_peer, pport) = start_peer();
    // -S without -t: DTLS over UDP. Channels, then Send indications.
    let r = uclient(
        tls_port,
        pport,
        &[&LT[..], &["-S", "-m", "2", "-n", "30", "-l", "100"]].concat(),
    );
    assert_eq!(r.sent, 60, "output:\n{}", r.output);
    assert_eq!(r.received, r.sent, "all echoed; output:\n{}", r.output);
    assert!(
        r.lost_line.contains("Total lost packets 0 "),
        "{}",
        r.output
    );
    let r = uclient(
        tls_port,
        pport,
        &[&LT[..], &["-S", "-s", "-m", "1", "-n", "20", "-l", "500"]].concat(),
    );
    assert_eq!(r.sent, 40, "output:\n{}", r.output);
    assert_eq!(r.received, r.sent, "all echoed; output:\n{}", r.output);
}

#[test]
fn no_dtls_leaves_the_udp_tls_port_closed() {
    let c = certs();
    let tls_port = free_port();
    let _srv = dtls_server(&c, tls_port, &["--no-dtls"]);
    let (_peer, pport) = start_peer();
    let r = uclient(
        tls_port,
        pport,
        &[&LT[..], &["-S", "-m", "1", "-n", "5", "-l", "100"]].concat(),
    );
    assert_eq!(r.received, 0, "output:\n{}", r.output);
}

/// A UDP socket as a byte stream for an OpenSSL DTLS client, recording every datagram's size.
#[derive(Debug)]
struct Udp {
    sock: std::net::UdpSocket,
    sent: Vec<usize>,
    received: Vec<Vec<u8>>,
}

impl std::io::Read for Udp {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.sock.recv(buf)?;
        self.received.push(buf[..n].to_vec());
        Ok(n)
    }
}

impl std::io::Write for Udp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sent.push(buf.len());
        self.sock.send(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A DTLS session to vigi-turn on `port` with OpenSSL (no certificate verification).
fn dtls_connect(port: u16) -> openssl::ssl::SslStream<Udp> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    dtls_on(sock).expect("DTLS handshake with vigi-turn")
}

/// A DTLS handshake over `sock` (connected to vigi-turn), or the error that ended it.
fn dtls_on(
    sock: std::net::UdpSocket,
) -> Result<openssl::ssl::SslStream<Udp>, openssl::ssl::HandshakeError<Udp>> {
    let mut ctx = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::dtls()).unwrap();
    ctx.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut ssl = openssl::ssl::Ssl::new(&ctx.build()).unwrap();
    ssl.set_mtu(1200).unwrap();
    let io = Udp {
        sock,
        sent: Vec::new(),
        received: Vec::new(),
    };
    ssl.connect(io)
}

/// A STUN Binding over the session is answered with XOR-MAPPED-ADDRESS.
#[track_caller]
fn assert_binding_answered(s: &mut openssl::ssl::SslStream<Udp>) {
    use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::BINDING, Class::Request, &tid);
    s.ssl_write(&req).unwrap();
    let mut buf = [0u8; 1500];
    let n = s.ssl_read(&mut buf).unwrap();
    let m = Message::decode(&buf[..n]).unwrap();
    assert_eq!((m.class(), m.transaction_id()), (Class::Success, &tid));
    assert!(m.get_xor_address(attr::XOR_MAPPED_ADDRESS).is_some());
}

fn peer_cert(s: &openssl::ssl::SslStream<Udp>) -> Vec<u8> {
    s.ssl()
        .peer_certificate()
        .expect("a certificate")
        .to_der()
        .unwrap()
}

#[test]
fn first_answer_to_a_client_hello_is_a_small_hello_verify_request() {
    // No amplification: before the client has echoed a cookie, the server answers its
    // ClientHello with a HelloVerifyRequest no larger than it, not with its certificate chain.
    let c = certs();
    let tls_port = free_port();
    let _srv = dtls_server(&c, tls_port, &[]);
    let mut s = dtls_connect(tls_port);
    let io = s.get_ref();
    let first = &io.received[0];
    // Record: content type 22 (handshake); handshake message at byte 13: type 3.
    assert_eq!((first[0], first[13]), (22, 3), "HelloVerifyRequest first");
    assert!(
        first.len() <= io.sent[0],
        "{} bytes answered to a {}-byte ClientHello",
        first.len(),
        io.sent[0]
    );
    assert_binding_answered(&mut s);
}

#[test]
fn sigusr2_serves_a_new_certificate_to_new_sessions_and_keeps_live_ones() {
    let c = certs();
    let tls_port = free_port();
    let srv = dtls_server(&c, tls_port, &[]);
    let old_der = std::fs::read_to_string(&c.cert).unwrap();
    let mut live = dtls_connect(tls_port);
    let first_der = peer_cert(&live);
    // A new certificate, written then renamed into place, then SIGUSR2.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let new_der = ck.cert.der().to_vec();
    assert_ne!(first_der, new_der);
    let tmp_c = c.dir.join("c.tmp");
    let tmp_k = c.dir.join("k.tmp");
    std::fs::write(&tmp_c, ck.cert.pem()).unwrap();
    std::fs::write(&tmp_k, ck.key_pair.serialize_pem()).unwrap();
    std::fs::rename(&tmp_k, &c.key).unwrap();
    std::fs::rename(&tmp_c, &c.cert).unwrap();
    assert_ne!(old_der, std::fs::read_to_string(&c.cert).unwrap());
    // SAFETY: kill(2) on the server we started.
    unsafe {
        libc::kill(srv.proc.child.id() as i32, libc::SIGUSR2);
    }
    let t0 = std::time::Instant::now();
    loop {
        let s = dtls_connect(tls_port);
        if peer_cert(&s) == new_der {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 30,
            "new sessions still get the old certificate"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The session made before the reload keeps working.
    assert_binding_answered(&mut live);
}

/// Records what an OpenSSL DTLS client writes; never has anything to read.
#[derive(Debug, Default)]
struct Capture(Vec<Vec<u8>>);

impl std::io::Read for Capture {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn garbage_and_abandoned_handshakes_leave_the_listener_working() {
    let c = certs();
    let tls_port = free_port();
    let _srv = dtls_server(&c, tls_port, &[]);
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], tls_port));
    let hello = client_hello();
    // From 200 addresses: garbage, a truncated handshake record, a ClientHello with its tail
    // cut, and a whole ClientHello whose HelloVerifyRequest is never answered.
    let mut socks = Vec::new();
    let mut hvr = 0;
    for i in 0..200u32 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let junk: Vec<u8> = (0..(i % 90)).map(|_| rand::random()).collect();
        s.send_to(&junk, to).unwrap();
        s.send_to(&[22, 0xfe, 0xfd, 0, 0], to).unwrap();
        s.send_to(&hello[..hello.len() / 2], to).unwrap();
        s.send_to(&hello, to).unwrap();
        socks.push(s);
    }
    for s in &socks {
        let mut buf = [0u8; 1500];
        if let Ok(n) = s.recv(&mut buf) {
            assert!(
                n <= hello.len(),
                "{n}-byte answer to a {}-byte hello",
                hello.len()
            );
            hvr += 1;
        }
    }
    assert!(hvr > 0, "no HelloVerifyRequest at all");
    // Real clients still get through, over OpenSSL and coturn's uclient.
    let mut s = dtls_connect(tls_port);
    assert_binding_answered(&mut s);
    let (_peer, pport) = start_peer();
    let r = uclient(
        tls_port,
        pport,
        &[&LT[..], &["-S", "-m", "1", "-n", "20", "-l", "100"]].concat(),
    );
    assert_eq!(r.sent, 40, "output:\n{}", r.output);
    assert_eq!(r.received, r.sent, "all echoed; output:\n{}", r.output);
}

/// A ClientHello as an OpenSSL client first sends it, captured without a server.
fn client_hello() -> Vec<u8> {
    let ctx = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::dtls())
        .unwrap()
        .build();
    match openssl::ssl::Ssl::new(&ctx)
        .unwrap()
        .connect(Capture::default())
    {
        Err(openssl::ssl::HandshakeError::WouldBlock(mid)) => mid.get_ref().0[0].clone(),
        other => panic!("expected a ClientHello, got {other:?}"),
    }
}

#[test]
fn cookieless_client_hellos_from_many_ports_take_no_handshake_slot() {
    let c = certs();
    let tls_port = free_port();
    let prom = free_port().to_string();
    // One worker: every ClientHello lands on the same 1,024 handshake slots.
    let _srv = dtls_server(
        &c,
        tls_port,
        &[
            "-m",
            "1",
            "--prometheus",
            "--prometheus-address",
            "127.0.0.1",
            "--prometheus-port",
            &prom,
        ],
    );
    let prom: u16 = prom.parse().unwrap();
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], tls_port));
    let hello = client_hello();
    // 1,200 source ports (all open at once, so all different), in rounds of 100 so that no
    // ClientHello is lost in a socket buffer: each must be answered with a HelloVerifyRequest.
    // Holding a slot per source until its cookie came back, the worker would stop answering
    // after 1,024 and keep new clients out for the 10 s handshake timeout.
    const FLOOD: usize = 1200;
    let mut socks = Vec::with_capacity(FLOOD);
    let mut answered = 0;
    let t0 = std::time::Instant::now();
    while socks.len() < FLOOD {
        let round: Vec<_> = (0..100)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                s.send_to(&hello, to).unwrap();
                s
            })
            .collect();
        for s in &round {
            let mut buf = [0u8; 1500];
            if let Ok(n) = s.recv(&mut buf) {
                if n <= hello.len() && (buf[0], buf[13]) == (22, 3) {
                    answered += 1;
                }
            }
        }
        socks.extend(round);
    }
    assert_eq!(
        answered, FLOOD,
        "ClientHellos answered with a HelloVerifyRequest"
    );
    // The proof needs the whole flood within the 10 s a slot would be held (were one taken,
    // the first would be free again after that); 9.5 s, not 8, leaves a loaded machine time.
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(9500),
        "the flood took {:?}, longer than a handshake may hold a slot",
        t0.elapsed()
    );
    // At once, from the same IP as the flood: a real client is served.
    let mut s = connect_from("127.0.0.1", tls_port, SERVED).expect("a DTLS client after the flood");
    assert_binding_answered(&mut s);
    // The worker holds that one session and no handshake (published once a second).
    let t0 = std::time::Instant::now();
    let m = loop {
        let m = scrape(prom);
        if m.get("vigi_turn_dtls_sessions") == Some(&1.0) {
            break m;
        }
        assert!(t0.elapsed().as_secs() < 30, "no session in {m:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(m.get("vigi_turn_dtls_handshakes"), Some(&0.0));
    drop(socks);
}

/// Reads one datagram from the socket, then has nothing more: an OpenSSL client over it sends
/// its ClientHello, reads the HelloVerifyRequest, sends the ClientHello with the cookie and stops.
#[derive(Debug)]
struct OneRead(std::net::UdpSocket, bool);

impl std::io::Read for OneRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.1 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        self.1 = true;
        self.0.recv(buf)
    }
}

impl std::io::Write for OneRead {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A handshake from a new port on `ip` left half-open just past the cookie exchange; the socket,
/// to see whether the server went on.
fn half_open(ctx: &openssl::ssl::SslContext, ip: &str, port: u16) -> std::net::UdpSocket {
    let sock = std::net::UdpSocket::bind((ip, 0)).unwrap();
    sock.connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let ssl = openssl::ssl::Ssl::new(ctx).unwrap();
    match ssl.connect(OneRead(sock.try_clone().unwrap(), false)) {
        Err(openssl::ssl::HandshakeError::WouldBlock(mid)) => {
            assert!(mid.get_ref().1, "no HelloVerifyRequest");
        }
        other => panic!("expected a handshake in progress, got {other:?}"),
    }
    sock
}

/// How long a handshake that must succeed may wait for each flight (a loaded machine).
const SERVED: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a handshake that is expected to be ignored waits for each flight.
const IGNORED: std::time::Duration = std::time::Duration::from_millis(1500);

/// A handshake from `ip` (any port) to vigi-turn, waiting `wait` for each flight.
fn connect_from(
    ip: &str,
    port: u16,
    wait: std::time::Duration,
) -> Option<openssl::ssl::SslStream<Udp>> {
    let sock = std::net::UdpSocket::bind((ip, 0)).unwrap();
    sock.connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    dtls_on(sock).ok()
}

#[test]
fn one_address_holding_handshakes_past_the_cookie_leaves_others_served() {
    let c = certs();
    let tls_port = free_port();
    // One worker: every handshake lands on the same per-worker caps.
    let _srv = dtls_server(&c, tls_port, &["-m", "1"]);
    let mut live = dtls_connect(tls_port);
    // Many half-open handshakes, all past the cookie exchange, from one address (not 127.0.0.1,
    // whose ports the other tests pick). Without the per-source cap each would be answered
    // with the server's flight and hold a handshake slot for 10 s.
    let ctx = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::dtls())
        .unwrap()
        .build();
    let flood: Vec<_> = (0..100)
        .map(|_| half_open(&ctx, "127.0.0.3", tls_port))
        .collect();
    // Count the handshakes the server went on with (its flight arrived): until 8 have, however
    // long a loaded machine takes (at most 30 s), and then for 500 ms more, for a ninth (it
    // was one look after a 500 ms sleep).
    for s in &flood {
        s.set_nonblocking(true).unwrap();
    }
    let mut answered_by = vec![false; flood.len()];
    let t0 = std::time::Instant::now();
    let mut eight_at = None;
    while eight_at.is_none_or(|t: std::time::Instant| t.elapsed().as_millis() < 500) {
        for (s, answered) in flood.iter().zip(answered_by.iter_mut()) {
            let mut buf = [0u8; 1500];
            if s.recv(&mut buf).is_ok() {
                *answered = true;
            }
        }
        if eight_at.is_none() && answered_by.iter().filter(|a| **a).count() >= 8 {
            eight_at = Some(std::time::Instant::now());
        }
        if t0.elapsed().as_secs() >= 30 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let answered = answered_by.iter().filter(|a| **a).count();
    assert_eq!(answered, 8, "handshakes one address got past the cookie");
    // The live session and a new client from another address are served.
    assert_binding_answered(&mut live);
    let mut other = connect_from("127.0.0.2", tls_port, SERVED).expect("a client from 127.0.0.2");
    assert_binding_answered(&mut other);
    // A new handshake from the flooding address is not, until its half-open ones time out.
    let t0 = std::time::Instant::now();
    assert!(
        connect_from("127.0.0.3", tls_port, IGNORED).is_none(),
        "a ninth handshake from the flooding address"
    );
    let mut s = loop {
        if let Some(s) = connect_from("127.0.0.3", tls_port, IGNORED) {
            break s;
        }
        assert!(t0.elapsed().as_secs() < 40, "flooding address never served");
    };
    assert!(
        t0.elapsed().as_secs() >= 5,
        "served before its handshakes timed out"
    );
    assert_binding_answered(&mut s);
}

/// Over a DTLS session: Allocate (401, then signed), CreatePermission for the echo peer on
/// `pport`, a Send indication, and its echo back as a Data indication.
fn allocate_and_relay(s: &mut openssl::ssl::SslStream<Udp>, pport: u16) {
    use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};
    let key = vigi_turn::engine::auth::key_md5("bench", "bench.local", "benchpw");
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], pport));
    let mut buf = [0u8; 1500];
    let mut nonce = Vec::new();
    for step in 0..4 {
        let tid: [u8; 12] = rand::random();
        let mut req = Vec::new();
        let method = if step < 2 {
            Method::ALLOCATE
        } else if step == 2 {
            Method::CREATE_PERMISSION
        } else {
            Method::SEND
        };
        let class = if step == 3 {
            Class::Indication
        } else {
            Class::Request
        };
        let mut b = MessageBuilder::new(&mut req, method, class, &tid);
        if step < 2 {
            b.attr(attr::REQUESTED_TRANSPORT, &[attr::PROTO_UDP, 0, 0, 0]);
        } else {
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        }
        if step == 3 {
            b.attr(attr::DATA, b"restarted");
        } else if step > 0 {
            b.attr(attr::USERNAME, b"bench");
            b.attr(attr::REALM, b"bench.local");
            b.attr(attr::NONCE, &nonce);
            b.integrity(&key);
        }
        s.ssl_write(&req).unwrap();
        let n = s.ssl_read(&mut buf).expect("an answer");
        let m = Message::decode(&buf[..n]).unwrap();
        match step {
            0 => nonce = m.get(attr::NONCE).expect("401 with NONCE").to_vec(),
            1 | 2 => assert_eq!(m.class(), Class::Success, "step {step}: {m:?}"),
            _ => {
                assert_eq!(
                    (m.method(), m.get(attr::DATA)),
                    (Method::DATA, Some(&b"restarted"[..]))
                );
            }
        }
    }
}

#[test]
fn a_client_restarting_on_the_same_port_gets_a_new_session_and_allocation() {
    let c = certs();
    let tls_port = free_port();
    let _srv = dtls_server(&c, tls_port, &[]);
    let (_peer, pport) = start_peer();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(("127.0.0.1", tls_port)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut first = dtls_on(sock.try_clone().unwrap()).expect("first session");
    allocate_and_relay(&mut first, pport);
    // The client crashes (no close_notify) and starts again on the same port: a new handshake
    // replaces the session, and the old allocation is gone (else this Allocate would get 437).
    std::mem::forget(first);
    let mut second = dtls_on(sock.try_clone().unwrap()).expect("handshake after the restart");
    allocate_and_relay(&mut second, pport);
    assert_binding_answered(&mut second);
}
