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
