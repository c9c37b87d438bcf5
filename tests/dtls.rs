//! TURN over DTLS (`--features dtls`) against the real binary: coturn's `turnutils_uclient -S`
//! over UDP (DTLS 1.2) on the TLS port, relaying to `turnutils_peer`, with a certificate made at
//! test time. Every message must come back; with `--no-dtls` nothing does. An OpenSSL client
//! checks the cookie exchange (no amplification) and SIGUSR2; garbage and abandoned handshakes
//! leave the listener working.

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
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut ctx = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::dtls()).unwrap();
    ctx.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut ssl = openssl::ssl::Ssl::new(&ctx.build()).unwrap();
    ssl.set_mtu(1200).unwrap();
    let io = Udp {
        sock,
        sent: Vec::new(),
        received: Vec::new(),
    };
    ssl.connect(io).expect("DTLS handshake with vigi-turn")
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
            t0.elapsed().as_secs() < 10,
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
    // A real ClientHello, captured without a server.
    let ctx = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::dtls())
        .unwrap()
        .build();
    let hello = match openssl::ssl::Ssl::new(&ctx)
        .unwrap()
        .connect(Capture::default())
    {
        Err(openssl::ssl::HandshakeError::WouldBlock(mid)) => mid.get_ref().0[0].clone(),
        other => panic!("expected a ClientHello, got {other:?}"),
    };
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
