//! TURN over DTLS (`--features dtls`) against the real binary: coturn's `turnutils_uclient -S`
//! over UDP (DTLS 1.2) on the TLS port, relaying to `turnutils_peer`, with a certificate made at
//! test time. Every message must come back; with `--no-dtls` nothing does.

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

#[test]
fn first_answer_to_a_client_hello_is_a_small_hello_verify_request() {
    // No amplification: before the client has echoed a cookie, the server answers its
    // ClientHello with a HelloVerifyRequest no larger than it, not with its certificate chain.
    let c = certs();
    let tls_port = free_port();
    let _srv = dtls_server(&c, tls_port, &[]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(("127.0.0.1", tls_port)).unwrap();
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
    let mut s = ssl.connect(io).expect("DTLS handshake with vigi-turn");
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
    // The session works: a STUN Binding over it is answered.
    let mut req = Vec::new();
    vigi_turn::proto::MessageBuilder::new(
        &mut req,
        vigi_turn::proto::Method::BINDING,
        vigi_turn::proto::Class::Request,
        &[9; 12],
    );
    s.ssl_write(&req).unwrap();
    let mut buf = [0u8; 1500];
    let n = s.ssl_read(&mut buf).unwrap();
    let m = vigi_turn::proto::Message::decode(&buf[..n]).unwrap();
    assert_eq!(m.class(), vigi_turn::proto::Class::Success);
    assert!(m
        .get_xor_address(vigi_turn::proto::attr::XOR_MAPPED_ADDRESS)
        .is_some());
}
