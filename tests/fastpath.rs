//! The kernel fast path (issue 18) end to end, as root, in network namespaces this test creates
//! (never on the host's interfaces):
//!
//! - `--xdp-interface` that cannot attach is one line on stderr and a non-zero exit.
//! - In a namespace, vigi-turn runs with `--xdp-interface lo --xdp-mode generic`; clients and a
//!   peer there bind a channel over IPv4 and over IPv6. Then the server is **stopped** (SIGSTOP):
//!   whatever still arrives was relayed by the kernel. ChannelData goes client → peer and peer →
//!   client with payloads intact; after a Refresh with lifetime 0 a packet on the deleted
//!   allocation's channel is not relayed while one on a live allocation, sent after it, is.
//!   tcpdump captures `lo` meanwhile and every UDP frame in the capture has valid IPv4-header and
//!   UDP checksums (recomputed by `vigi_turn::io::fastpath::frames::parse`). Once the server runs
//!   again, `/metrics` counts exactly the payload bytes relayed (folded from the kernel's
//!   per-allocation counters).
//! - The same for Send and Data indications under a permission (with and without FINGERPRINT),
//!   with the indication counters exact; `turnutils_uclient -s` moves the kernel's counters; on a
//!   veth pair in native mode, Send and Data indications over IPv4 and IPv6.
//!
//! On `lo` a local sender leaves only a partial UDP checksum (offload `lo` cannot turn off), so
//! the program relays IPv4 there without a UDP checksum (RFC 768 allows 0) and passes IPv6 up:
//! the IPv6 half of this test runs through the server with the fast path attached. Checksum
//! updates proper are checked frame by frame under `BPF_PROG_TEST_RUN` (src/io/fastpath/tests.rs).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, require_tool, Proc, BIN};
use vigi_turn::engine::auth::key_md5;
use vigi_turn::io::fastpath::frames;
use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

const USER: &str = "alice";
const PASS: &str = "fastpath-secret";
const PORT: u16 = 3478;
const METRICS: u16 = 9641;
const WAIT: Duration = Duration::from_secs(30);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with `lo` up, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        require_tool("ip");
        let name = format!("vt18-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Ns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// Runs `f` on a thread that entered the namespace: its sockets live there.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("namespace file");
                // SAFETY: setns(2) on an open namespace fd; it moves only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn signal(p: &Proc, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe {
        libc::kill(p.child.id() as i32, sig);
    }
}

#[test]
fn an_interface_that_cannot_be_attached_is_one_line_and_a_nonzero_exit() {
    let ns = Ns::new("noattach");
    // No such interface; then `lo`, which has no native (driver) XDP hook.
    for args in [
        &["--xdp-interface", "vt18-nosuch0"][..],
        &["--xdp-interface", "lo", "--xdp-mode", "native"][..],
    ] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                BIN,
                "-z",
                "-L",
                "127.0.0.1",
                "-p",
                "3478",
            ])
            .args(args)
            .stdout(Stdio::null())
            .output()
            .expect("run vigi-turn");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.contains("--xdp-interface"), "{stderr}");
    }
}

/// A raw TURN client over UDP (long-term credentials).
struct Client {
    s: UdpSocket,
    server: SocketAddr,
    key: [u8; 16],
    realm: String,
    nonce: Vec<u8>,
    relay: SocketAddr,
}

fn recv_message(s: &UdpSocket, buf: &mut [u8]) -> usize {
    loop {
        let n = s.recv(buf).expect("answer within the deadline");
        // Skip ChannelData (first byte 0x40-0x4f) that may still be in flight.
        if n >= 20 && buf[0] < 0x40 {
            return n;
        }
    }
}

impl Client {
    fn allocate(local: SocketAddr, server: SocketAddr) -> Client {
        let mut c = Client::allocate_plain(local, server);
        let answer = c.request(Method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        let m = Message::decode(&answer).unwrap();
        assert_eq!(m.class(), Class::Success, "Allocate");
        c.relay = m
            .get_xor_address(attr::XOR_RELAYED_ADDRESS)
            .expect("relayed address");
        c
    }

    /// The unauthenticated Allocate's challenge: realm, nonce, key; no allocation yet.
    fn allocate_plain(local: SocketAddr, server: SocketAddr) -> Client {
        let s = UdpSocket::bind(local).expect("client socket");
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 2048];
        let mut req = Vec::new();
        MessageBuilder::new(&mut req, Method::ALLOCATE, Class::Request, &rand::random())
            .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        s.send_to(&req, server).unwrap();
        let n = recv_message(&s, &mut buf);
        let m = Message::decode(&buf[..n]).unwrap();
        let realm = String::from_utf8(m.get(attr::REALM).expect("REALM").to_vec()).unwrap();
        let nonce = m.get(attr::NONCE).expect("NONCE").to_vec();
        let key = key_md5(USER, &realm, PASS);
        Client {
            s,
            server,
            key,
            realm,
            nonce,
            relay: server,
        }
    }

    /// An allocation with one more attribute in its Allocate (ADDITIONAL-ADDRESS-FAMILY for a
    /// dual allocation, REQUESTED-ADDRESS-FAMILY); `relay` is the last relayed address given
    /// (a dual allocation's IPv6 one).
    fn allocate_with(local: SocketAddr, server: SocketAddr, ty: u16, value: [u8; 4]) -> Client {
        let mut c = Client::allocate_plain(local, server);
        let answer = c.request(Method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(ty, &value);
        });
        let m = Message::decode(&answer).unwrap();
        assert_eq!(m.class(), Class::Success, "Allocate with {ty:#06x}");
        let tid = *m.transaction_id();
        c.relay = m
            .attributes()
            .filter(|a| a.ty == attr::XOR_RELAYED_ADDRESS)
            .filter_map(|a| attr::read_xor_address(&answer[a.offset..a.offset + a.len], &tid))
            .last()
            .expect("relayed address");
        c
    }

    fn request(&self, method: Method, f: impl Fn(&mut MessageBuilder)) -> Vec<u8> {
        let mut req = Vec::new();
        {
            let mut b = MessageBuilder::new(&mut req, method, Class::Request, &rand::random());
            f(&mut b);
            b.attr(attr::USERNAME, USER.as_bytes())
                .attr(attr::REALM, self.realm.as_bytes())
                .attr(attr::NONCE, &self.nonce)
                .integrity(&self.key);
        }
        self.s.send_to(&req, self.server).unwrap();
        let mut buf = [0u8; 2048];
        let n = recv_message(&self.s, &mut buf);
        buf[..n].to_vec()
    }

    fn bind_channel(&self, peer: SocketAddr, channel: u16) {
        let answer = self.request(Method::CHANNEL_BIND, |b| {
            let mut number = channel.to_be_bytes().to_vec();
            number.extend_from_slice(&[0, 0]);
            b.attr(attr::CHANNEL_NUMBER, &number);
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        });
        let m = Message::decode(&answer).unwrap();
        assert_eq!(m.class(), Class::Success, "ChannelBind");
    }

    fn permit(&self, peer: SocketAddr) {
        let answer = self.request(Method::CREATE_PERMISSION, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        });
        let m = Message::decode(&answer).unwrap();
        assert_eq!(m.class(), Class::Success, "CreatePermission");
    }

    /// A Send indication to `peer` (RFC 8656 §10.1), with FINGERPRINT when asked.
    fn send_indication(&self, peer: SocketAddr, data: &[u8], fingerprint: bool) {
        let mut msg = Vec::new();
        let mut b = MessageBuilder::new(&mut msg, Method::SEND, Class::Indication, &rand::random());
        b.xor_address(attr::XOR_PEER_ADDRESS, &peer);
        b.attr(attr::DATA, data);
        if fingerprint {
            b.fingerprint();
        }
        self.s.send_to(&msg, self.server).unwrap();
    }

    /// The next Data indication: its peer and data.
    fn recv_data_indication(&self) -> (SocketAddr, Vec<u8>) {
        let mut buf = [0u8; 2048];
        let (n, from) = self.s.recv_from(&mut buf).expect("a Data indication");
        assert_eq!(from, self.server);
        let m = Message::decode(&buf[..n]).expect("a STUN message");
        assert_eq!((m.method(), m.class()), (Method::DATA, Class::Indication));
        (
            m.get_xor_address(attr::XOR_PEER_ADDRESS)
                .expect("XOR-PEER-ADDRESS"),
            m.get(attr::DATA).expect("DATA").to_vec(),
        )
    }

    fn delete(&self) {
        let answer = self.request(Method::REFRESH, |b| {
            b.attr_u32(attr::LIFETIME, 0);
        });
        assert_eq!(
            Message::decode(&answer).unwrap().class(),
            Class::Success,
            "Refresh 0"
        );
    }
}

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// The UDP frames of a pcap file (Ethernet link type, as `lo` is captured).
fn pcap_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert!(bytes.len() >= 24, "pcap header");
    assert_eq!(
        u32::from_le_bytes(bytes[20..24].try_into().unwrap()),
        1,
        "Ethernet link type"
    );
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let orig = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as usize;
        let Some(f) = bytes.get(at + 16..at + 16 + incl) else {
            break;
        };
        assert_eq!(incl, orig, "whole frames captured");
        out.push(f.to_vec());
        at += 16 + incl;
    }
    out
}

/// A tcpdump capture of one interface in a namespace, made so that it cannot miss frames by
/// chance: [`Capture::start`] returns only once a marker datagram sent after tcpdump said
/// "listening" is in the file (the socket really captures, its filter is in place), and
/// [`Capture::frames_when`] waits (bounded) until the frames a test expects are all in the file
/// (`-U`: tcpdump flushes after every frame), then stops tcpdump with SIGINT and waits for it to
/// exit, so the file is complete and tcpdump's own drop count can be reported. Its ring has room
/// for thousands of frames, not the handful a default snapshot length leaves.
struct Capture {
    proc: Proc,
    stderr: std::thread::JoinHandle<String>,
    pcap: std::path::PathBuf,
}

const MARKER: &[u8] = b"vt18-capture-marker";

impl Capture {
    /// Captures UDP on `iface` in `ns`; `marker_to` is an address in the namespace nobody
    /// listens on (the marker goes there, so that it is captured once and answered by nothing).
    fn start(ns: &Ns, iface: &str, marker_to: SocketAddr) -> Capture {
        let pcap = std::env::temp_dir().join(format!("{}-{iface}.pcap", ns.0));
        let _ = std::fs::remove_file(&pcap);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "tcpdump", "-i", iface])
            // A snapshot length of 4 KiB (every frame here is smaller) and an 8 MiB buffer:
            // with the default 256 KiB snapshot, libpcap's ring in immediate mode holds about
            // eight frames, and a burst beyond that was "dropped by kernel" (the cause of a
            // capture once missing 4 of 13 frames).
            .args(["--immediate-mode", "-U", "-s", "4096", "-B", "8192", "-w"])
            .arg(&pcap)
            .arg("udp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let proc = Proc {
            child,
            name: "tcpdump".into(),
        };
        rx.recv_timeout(WAIT).expect("tcpdump did not start");
        let c = Capture { proc, stderr, pcap };
        // Listening, as tcpdump says; capturing, once a marker sent now is in the file.
        let sock = ns.run(|| {
            UdpSocket::bind(SocketAddr::new(
                if marker_to.is_ipv4() {
                    IpAddr::from([0, 0, 0, 0])
                } else {
                    IpAddr::from([0u16; 8])
                },
                0,
            ))
            .unwrap()
        });
        let t0 = Instant::now();
        loop {
            let _ = sock.send_to(MARKER, marker_to);
            let seen = c.wait_for(Duration::from_millis(200), |frames| {
                frames.iter().any(|f| is_marker(f))
            });
            if seen.is_some() {
                break;
            }
            assert!(t0.elapsed() < WAIT, "tcpdump never captured its marker");
        }
        c
    }

    fn read(&self) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(&self.pcap).unwrap_or_default();
        if bytes.len() >= 24 {
            pcap_frames(&bytes)
        } else {
            Vec::new()
        }
    }

    /// Polls the file until `done` holds for its frames (Some) or `limit` passes (None).
    fn wait_for(&self, limit: Duration, done: impl Fn(&[Vec<u8>]) -> bool) -> Option<Vec<Vec<u8>>> {
        let t0 = Instant::now();
        loop {
            let frames = self.read();
            if done(&frames) {
                return Some(frames);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most [`WAIT`]) until `done` holds for the captured frames, stops tcpdump (SIGINT,
    /// then waits for its exit: it flushes and prints its counts), and returns every captured
    /// frame but the markers, with tcpdump's closing lines for a failure message.
    fn frames_when(self, done: impl Fn(&[Vec<u8>]) -> bool) -> (Vec<Vec<u8>>, String) {
        let _ = self.wait_for(WAIT, &done);
        let Capture {
            mut proc,
            stderr,
            pcap,
            ..
        } = self;
        // SAFETY: kill(2) on a child we started and have not reaped.
        unsafe {
            libc::kill(proc.child.id() as i32, libc::SIGINT);
        }
        let t0 = Instant::now();
        while proc.child.try_wait().ok().flatten().is_none() {
            assert!(t0.elapsed() < WAIT, "tcpdump did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        }
        let summary = stderr.join().unwrap_or_default();
        let bytes = std::fs::read(&pcap).unwrap_or_default();
        let _ = std::fs::remove_file(&pcap);
        let frames = if bytes.len() >= 24 {
            pcap_frames(&bytes)
        } else {
            Vec::new()
        };
        let frames = frames.into_iter().filter(|f| !is_marker(f)).collect();
        (frames, summary)
    }

    /// Asserts that exactly `want` captured frames are ones `kernel_made` picks (with tcpdump's
    /// counts in the message), once they are all in, and verifies each one's checksums.
    fn assert_kernel_frames(self, want: usize, kernel_made: impl Fn(&Vec<u8>) -> bool) {
        let (captured, summary) =
            self.frames_when(|all| all.iter().filter(|f| kernel_made(f)).count() >= want);
        let captured: Vec<Vec<u8>> = captured.into_iter().filter(&kernel_made).collect();
        assert_eq!(
            captured.len(),
            want,
            "kernel-relayed frames captured; tcpdump: {summary}"
        );
        for f in &captured {
            frames::parse(f).unwrap_or_else(|e| panic!("captured frame: {e}: {f:02x?}"));
        }
    }
}

fn is_marker(f: &[u8]) -> bool {
    f.ends_with(MARKER)
}

#[test]
fn channel_data_is_relayed_by_the_kernel_with_valid_checksums_and_exact_counters() {
    require_tool("tcpdump");
    let ns = Ns::new("lo");
    let port = PORT.to_string();
    let metrics = METRICS.to_string();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0, BIN])
        .args([
            "-L",
            "127.0.0.1",
            "-L",
            "::1",
            "--relay-ip",
            "127.0.0.1",
            "--relay-ip",
            "::1",
        ])
        .args([
            "-p",
            &port,
            "--min-port",
            "50000",
            "--max-port",
            "50099",
            "-m",
            "1",
        ])
        .args([
            "--allow-loopback-peers",
            "-a",
            "-u",
            &format!("{USER}:{PASS}"),
            "-r",
            "fp.local",
        ])
        .args(["-A", "keep", "--prometheus", "--prometheus-port", &metrics])
        .args(["--xdp-interface", "lo", "--xdp-mode", "generic"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vigi-turn");
    let server = Proc {
        child,
        name: "vigi-turn".into(),
    };
    // The server is up once it answers /metrics (it binds its listeners before serving HTTP).
    ns.run(|| {
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", METRICS)).is_err() {
            assert!(t0.elapsed() < WAIT, "vigi-turn did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let capture = Capture::start(&ns, "lo", "127.0.0.1:9".parse().unwrap());

    let lens = [1usize, 2, 3, 100, 333, 1200];
    let mut expect_to_peer = 0u64;
    let mut expect_to_client = 0u64;
    // IPv4 is relayed by the kernel; IPv6 on `lo` is passed up (see the module doc) and relayed
    // by the server as the reference path, with the fast path attached all the same.
    for (i, loopback) in ["127.0.0.1", "::1"].into_iter().enumerate() {
        let ip: IpAddr = loopback.parse().unwrap();
        let kernel = ip.is_ipv4();
        let stop = |sig| {
            if kernel {
                signal(&server, sig)
            }
        };
        let (to_peer, to_client) = ns.run(|| {
            let server_addr = SocketAddr::new(ip, PORT);
            let peer = UdpSocket::bind(SocketAddr::new(ip, 40100)).unwrap();
            peer.set_read_timeout(Some(WAIT)).unwrap();
            let a = Client::allocate(SocketAddr::new(ip, 40001), server_addr);
            let b = Client::allocate(SocketAddr::new(ip, 40002), server_addr);
            a.bind_channel(peer.local_addr().unwrap(), 0x4000);
            b.bind_channel(peer.local_addr().unwrap(), 0x4001);
            // The worker mirrors on the ChannelBind it just answered; from here on the server
            // process is stopped, so whatever is relayed, the kernel relayed.
            stop(libc::SIGSTOP);
            let mut buf = [0u8; 2048];
            let (mut to_peer, mut to_client) = (0u64, 0u64);
            for len in lens {
                let data = payload(len, i as u8);
                a.s.send_to(&channel_data(0x4000, &data), a.server).unwrap();
                let (n, from) = peer.recv_from(&mut buf).expect("relayed to the peer");
                assert_eq!(
                    (&buf[..n], from),
                    (&data[..], a.relay),
                    "client → peer, {len} B"
                );
                to_peer += len as u64;
                peer.send_to(&data, a.relay).unwrap();
                let (n, from) = a.s.recv_from(&mut buf).expect("relayed to the client");
                assert_eq!(from, a.server);
                assert_eq!(
                    &buf[..n],
                    &channel_data(0x4000, &data)[..],
                    "peer → client, {len} B"
                );
                to_client += len as u64;
            }
            // Deleted: the kernel stops at once. The live allocation's packet, sent after the
            // deleted one's, is the first the peer gets.
            stop(libc::SIGCONT);
            a.delete();
            stop(libc::SIGSTOP);
            a.s.send_to(&channel_data(0x4000, b"deleted"), a.server)
                .unwrap();
            b.s.send_to(&channel_data(0x4001, b"live"), b.server)
                .unwrap();
            let (n, from) = peer.recv_from(&mut buf).expect("relayed to the peer");
            assert_eq!((&buf[..n], from), (&b"live"[..], b.relay));
            to_peer += 4;
            stop(libc::SIGCONT);
            b.delete();
            (to_peer, to_client)
        });
        expect_to_peer += to_peer;
        expect_to_client += to_client;
    }

    // Counters: the workers fold the kernel's per-allocation counts once a second.
    let scraped = ns.run(|| {
        let t0 = Instant::now();
        loop {
            let (status, body) = http_get(METRICS, "/metrics");
            assert_eq!(status, 200);
            let value = |k: &str| {
                body.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.parse::<f64>().ok())
                    .unwrap_or(-1.0) as i64
            };
            let got = (
                value("turn_total_traffic_peer_sentb"),
                value("turn_total_traffic_rcvb"),
                value("turn_total_traffic_peer_rcvb"),
                value("turn_total_traffic_sentb"),
            );
            let want = (
                expect_to_peer,
                expect_to_peer,
                expect_to_client,
                expect_to_client,
            );
            let want = (want.0 as i64, want.1 as i64, want.2 as i64, want.3 as i64);
            if got == want || t0.elapsed() > WAIT {
                let fast = (
                    value("vigi_turn_fastpath_packets_total{direction=\"client_to_peer\"}"),
                    value("vigi_turn_fastpath_packets_total{direction=\"peer_to_client\"}"),
                    value("vigi_turn_fastpath_allocations"),
                );
                return (got, want, fast);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(
        scraped.0, scraped.1,
        "traffic counters (peer sent, rcv, peer rcv, sent)"
    );
    // The IPv4 half went through the kernel: every ChannelData and the live allocation's one
    // more; every allocation has ended, so none is mirrored.
    let n = lens.len() as i64;
    assert_eq!(
        scraped.2,
        (n + 1, n, 0),
        "fast-path packets each way, mirrored allocations"
    );

    // The frames the kernel made: IPv4 to the peer, and IPv4 ChannelData to the clients (on
    // `lo`, frames a local socket sent carry partial checksums, so only these are checked).
    // Completeness is proved at the receiving sockets above (each relayed payload was read) and
    // by the kernel's counters; the capture must hold every one of those frames too, so that
    // each one's checksums are checked.
    let kernel_made = |f: &Vec<u8>| {
        let v4 = f.get(12..14) == Some(&[0x08, 0x00][..]);
        let to_peer = f.get(36..38) == Some(&40100u16.to_be_bytes()[..]);
        let to_client = f.get(34..36) == Some(&PORT.to_be_bytes()[..]) && f.get(42) == Some(&0x40);
        v4 && (to_peer || to_client)
    };
    let want = 2 * lens.len() + 1;
    capture.assert_kernel_frames(want, kernel_made);
    drop(server);
}

/// Send and Data indications (RFC 8656 §10, §11) relayed by the kernel over IPv4 on a namespace's
/// `lo` with the server stopped: payloads intact, with and without FINGERPRINT, Data indications
/// to any port of the permitted peer IP; a deleted allocation's permission stops at once; the
/// captured frames' checksums verify; the counters (traffic and indications) are exact.
#[test]
fn send_and_data_indications_are_relayed_by_the_kernel_with_valid_checksums_and_exact_counters() {
    require_tool("tcpdump");
    let ns = Ns::new("ind");
    let server = start_in(&ns, &[]);
    let capture = Capture::start(&ns, "lo", "127.0.0.1:9".parse().unwrap());
    let lens = [0usize, 1, 2, 3, 100, 333, 1200];
    let (to_peer, to_client) = ns.run(|| {
        let server_addr: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:40300").unwrap();
        let peer2 = UdpSocket::bind("127.0.0.1:40302").unwrap();
        for p in [&peer, &peer2] {
            p.set_read_timeout(Some(WAIT)).unwrap();
        }
        let a = Client::allocate("127.0.0.1:40301".parse().unwrap(), server_addr);
        let b = Client::allocate("127.0.0.1:40303".parse().unwrap(), server_addr);
        a.permit(peer.local_addr().unwrap());
        b.permit(peer.local_addr().unwrap());
        // Mirrored on the CreatePermission just answered; from here the server is stopped.
        signal(&server, libc::SIGSTOP);
        let mut buf = [0u8; 2048];
        let (mut to_peer, mut to_client) = (0u64, 0u64);
        for (i, len) in lens.into_iter().enumerate() {
            let data = payload(len, 100 + i as u8);
            a.send_indication(peer.local_addr().unwrap(), &data, i % 2 == 0);
            let (n, from) = peer.recv_from(&mut buf).expect("relayed to the peer");
            assert_eq!((&buf[..n], from), (&data[..], a.relay), "Send, {len} B");
            to_peer += len as u64;
            // From the permitted IP, on the port the client sent to and on another one.
            for p in [&peer, &peer2] {
                p.send_to(&data, a.relay).unwrap();
                let (from, got) = a.recv_data_indication();
                assert_eq!(
                    (from, got),
                    (p.local_addr().unwrap(), data.clone()),
                    "Data, {len} B"
                );
                to_client += len as u64;
            }
        }
        // Deleted: the kernel stops at once; the live allocation's indication, sent after the
        // deleted one's, is the first the peer gets.
        signal(&server, libc::SIGCONT);
        a.delete();
        signal(&server, libc::SIGSTOP);
        a.send_indication(peer.local_addr().unwrap(), b"deleted", false);
        b.send_indication(peer.local_addr().unwrap(), b"live", true);
        let (n, from) = peer.recv_from(&mut buf).expect("relayed to the peer");
        assert_eq!((&buf[..n], from), (&b"live"[..], b.relay));
        to_peer += 4;
        signal(&server, libc::SIGCONT);
        b.delete();
        (to_peer, to_client)
    });
    let n = lens.len() as i64;
    let (got, fast) = ns.run(|| {
        let t0 = Instant::now();
        loop {
            let (status, body) = http_get(METRICS, "/metrics");
            assert_eq!(status, 200);
            let value = |k: &str| {
                body.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.parse::<f64>().ok())
                    .unwrap_or(-1.0) as i64
            };
            let got = (
                value("turn_total_traffic_peer_sentb"),
                value("turn_total_traffic_rcvb"),
                value("turn_total_traffic_peer_rcvb"),
                value("turn_total_traffic_sentb"),
                value("vigi_turn_relayed_indications_total{kind=\"send\"}"),
                value("vigi_turn_relayed_indications_total{kind=\"data\"}"),
            );
            let fast = (
                value("vigi_turn_fastpath_packets_total{direction=\"client_to_peer\"}"),
                value("vigi_turn_fastpath_packets_total{direction=\"peer_to_client\"}"),
                value("vigi_turn_fastpath_allocations"),
            );
            let want = (
                to_peer as i64,
                to_peer as i64,
                to_client as i64,
                to_client as i64,
                n + 1,
                2 * n,
            );
            if got == want || t0.elapsed() > WAIT {
                return ((got, want), fast);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(
        got.0, got.1,
        "traffic (peer sent, rcv, peer rcv, sent) and indications (send, data)"
    );
    assert_eq!(
        fast,
        (n + 1, 2 * n, 0),
        "all relayed by the kernel; nothing mirrored once deleted"
    );
    // The kernel's frames: IPv4 to the peer from a relay port, and Data indications to the
    // clients (0x0017 after the UDP header).
    let kernel_made = |f: &Vec<u8>| {
        let v4 = f.get(12..14) == Some(&[0x08, 0x00][..]);
        let to_peer = f.get(36..38) == Some(&40300u16.to_be_bytes()[..]);
        let data_ind = f.get(34..36) == Some(&PORT.to_be_bytes()[..])
            && f.get(42..44) == Some(&[0x00, 0x17][..]);
        v4 && (to_peer || data_ind)
    };
    let want = 3 * lens.len() + 1;
    capture.assert_kernel_frames(want, kernel_made);
    drop(server);
}

/// A permission that expires stops being relayed by the kernel at its deadline, with no call into
/// user space: with `--permission-lifetime 2` and the server stopped, Send and Data indications
/// pass while it lives; after its deadline the kernel passes them up (`vigi_turn_fastpath_passed_total`)
/// and the engine, running again, drops them (no permission): the peer and the client get nothing.
#[test]
fn an_expired_permission_stops_being_relayed_by_the_kernel_at_its_deadline() {
    let ns = Ns::new("expiry");
    let server = start_in(&ns, &["--permission-lifetime", "2"]);
    const LATE: usize = 3;
    ns.run(|| {
        let server_addr: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:40500").unwrap();
        peer.set_read_timeout(Some(WAIT)).unwrap();
        let a = Client::allocate("127.0.0.1:40501".parse().unwrap(), server_addr);
        let asked = Instant::now();
        a.permit(peer.local_addr().unwrap());
        let granted = Instant::now();
        signal(&server, libc::SIGSTOP);
        // Live: granted no earlier than asked, for 2 s.
        let mut buf = [0u8; 2048];
        a.send_indication(peer.local_addr().unwrap(), b"live", true);
        let (n, _) = peer.recv_from(&mut buf).expect("relayed while live");
        assert_eq!(&buf[..n], b"live");
        peer.send_to(b"back", a.relay).unwrap();
        assert_eq!(a.recv_data_indication().1, b"back");
        assert!(
            asked.elapsed() < Duration::from_millis(1500),
            "the live phase ran late; the machine is too slow for this test"
        );
        // Past the deadline (granted no later than `granted`): the time itself is the condition.
        let past = granted + Duration::from_millis(2300);
        std::thread::sleep(past.saturating_duration_since(Instant::now()));
        for i in 0..LATE {
            a.send_indication(
                peer.local_addr().unwrap(),
                format!("late{i}").as_bytes(),
                false,
            );
            peer.send_to(b"late", a.relay).unwrap();
        }
        signal(&server, libc::SIGCONT);
    });
    // The kernel passed all of them up, and the engine dropped all of them.
    let t0 = Instant::now();
    let (passed, dropped) = ns.run(|| loop {
        let (_, body) = http_get(METRICS, "/metrics");
        let value = |k: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(-1.0) as i64
        };
        let got = (
            value("vigi_turn_fastpath_passed_total"),
            value("vigi_turn_dropped_packets_total{reason=\"no_permission\"}"),
        );
        if got == (2 * LATE as i64, 2 * LATE as i64) || t0.elapsed() > WAIT {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    assert_eq!(
        (passed, dropped),
        (2 * LATE as i64, 2 * LATE as i64),
        "passed up by the kernel, dropped by the engine"
    );
    let (c2p, p2c, _) = fastpath_packets(&ns);
    assert_eq!(
        (c2p, p2c),
        (1, 1),
        "the kernel relayed only while the permission lived"
    );
}

/// vigi-turn in `ns` on 127.0.0.1:3478 with the fast path on `lo` and `extra` flags; returns once
/// it serves /metrics (it binds its listeners before).
fn start_in(ns: &Ns, extra: &[&str]) -> Proc {
    let port = PORT.to_string();
    let metrics = METRICS.to_string();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            BIN,
            "-L",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
        ])
        .args(["-p", &port, "--min-port", "50000", "--max-port", "50099"])
        .args([
            "--allow-loopback-peers",
            "-a",
            "-u",
            &format!("{USER}:{PASS}"),
            "-r",
            "fp.local",
        ])
        .args(["--prometheus", "--prometheus-port", &metrics])
        .args(["--xdp-interface", "lo", "--xdp-mode", "generic"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vigi-turn");
    let proc = Proc {
        child,
        name: "vigi-turn".into(),
    };
    ns.run(|| {
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", METRICS)).is_err() {
            assert!(t0.elapsed() < WAIT, "vigi-turn did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    proc
}

/// turnutils_peer in `ns` on 127.0.0.1:3480, once it echoes.
fn peer_in(ns: &Ns) -> Proc {
    require_tool("turnutils_peer");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "turnutils_peer",
            "-L",
            "127.0.0.1",
            "-p",
            "3480",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnutils_peer");
    let mut peer = Proc {
        child,
        name: "turnutils_peer".into(),
    };
    ns.run(|| common::wait_for_echo(&mut peer, "127.0.0.1:3480".parse().unwrap()));
    peer
}

/// turnutils_uclient in `ns` against the server there: its "Total lost packets" line.
fn uclient_in(ns: &Ns, args: &[&str]) -> String {
    require_tool("turnutils_uclient");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.0,
        "turnutils_uclient",
        "-u",
        USER,
        "-w",
        PASS,
    ])
    .args(["-e", "127.0.0.1", "-r", "3480", "-n", "50", "-l", "100"])
    .args(args)
    .arg("127.0.0.1");
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.contains("Total lost packets"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("uclient {args:?} printed no summary: {text}"))
}

fn fastpath_packets(ns: &Ns) -> (i64, i64, i64) {
    ns.run(|| {
        let (status, body) = http_get(METRICS, "/metrics");
        assert_eq!(status, 200);
        let value = |k: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(-1.0) as i64
        };
        (
            value("vigi_turn_fastpath_packets_total{direction=\"client_to_peer\"}"),
            value("vigi_turn_fastpath_packets_total{direction=\"peer_to_client\"}"),
            value("vigi_turn_fastpath_map_full_total"),
        )
    })
}

#[test]
fn turnutils_uclient_relays_channels_and_send_indications_through_the_kernel() {
    let ns = Ns::new("uclient");
    let _server = start_in(&ns, &[]);
    let _peer = peer_in(&ns);
    // Channels (uclient's default, numbers from 0x4000-0x7FFF): nothing lost, and the kernel
    // relays both ways.
    let lost = uclient_in(&ns, &[]);
    assert!(lost.contains("Total lost packets 0"), "channels: {lost}");
    let (c2p, p2c, full) = fastpath_packets(&ns);
    assert!(
        c2p > 0 && p2c > 0,
        "the kernel relayed ChannelData: {c2p} / {p2c}"
    );
    assert_eq!(full, 0);
    // Send indications (-s: DATA, XOR-PEER-ADDRESS, FINGERPRINT) and the Data indications back:
    // nothing lost, and the kernel relays both ways (the first messages, sent before the
    // permission is mirrored, go through the server).
    let lost = uclient_in(&ns, &["-s"]);
    assert!(
        lost.contains("Total lost packets 0"),
        "send indications: {lost}"
    );
    let (c2p_s, p2c_s, full) = fastpath_packets(&ns);
    assert!(
        c2p_s > c2p && p2c_s > p2c,
        "the kernel relayed Send and Data indications: {c2p} -> {c2p_s} / {p2c} -> {p2c_s}"
    );
    assert_eq!(full, 0);
    let indications = ns.run(|| {
        let (_, body) = http_get(METRICS, "/metrics");
        let value = |k: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(-1.0) as i64
        };
        (
            value("vigi_turn_relayed_indications_total{kind=\"send\"}"),
            value("vigi_turn_relayed_indications_total{kind=\"data\"}"),
        )
    });
    println!(
        "uclient -s: the kernel relayed {} Send and {} Data indications; {indications:?} counted",
        c2p_s - c2p,
        p2c_s - p2c
    );
}

/// Maps sized for one channel and two permissions: of a client's two peers, one channel and its
/// peer's permission are mirrored; the other peer's channel does not fit, is counted in
/// `vigi_turn_fastpath_map_full_total`, and its permission (which would fit) stays out of the
/// kernel too, so that
/// peer's datagrams reach the client as ChannelData from the server, never as a Data indication
/// from the kernel.
#[test]
fn full_maps_leave_a_channel_and_its_peers_indications_on_the_user_path() {
    let ns = Ns::new("full");
    let _server = start_in(
        &ns,
        &["--xdp-max-channels", "1", "--xdp-max-permissions", "2"],
    );
    ns.run(|| {
        let server_addr: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let p1 = UdpSocket::bind("127.0.0.1:40410").unwrap();
        let p2 = UdpSocket::bind("127.0.0.2:40411").unwrap();
        let a = Client::allocate("127.0.0.1:40401".parse().unwrap(), server_addr);
        a.bind_channel(p1.local_addr().unwrap(), 0x4000);
        a.bind_channel(p2.local_addr().unwrap(), 0x4001);
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            for (p, channel) in [(&p1, 0x4000u16), (&p2, 0x4001)] {
                p.set_read_timeout(Some(WAIT)).unwrap();
                a.s.send_to(&channel_data(channel, b"ping"), a.server)
                    .unwrap();
                let (n, from) = p.recv_from(&mut buf).expect("relayed to the peer");
                assert_eq!((&buf[..n], from), (&b"ping"[..], a.relay));
                p.send_to(b"pong", a.relay).unwrap();
                let (n, _) = a.s.recv_from(&mut buf).expect("relayed to the client");
                assert_eq!(
                    &buf[..n],
                    &channel_data(channel, b"pong")[..],
                    "{channel:#x}"
                );
            }
        }
    });
    let (c2p, p2c, full) = fastpath_packets(&ns);
    assert!(full >= 1, "the second channel did not fit: {full}");
    assert_eq!(
        (c2p, p2c),
        (3, 3),
        "the kernel relayed the mirrored channel only"
    );
}

#[test]
fn a_bandwidth_capped_allocation_stays_on_the_user_path() {
    let ns = Ns::new("maxbps");
    let _server = start_in(&ns, &["--max-bps", "1000000"]);
    let _peer = peer_in(&ns);
    let lost = uclient_in(&ns, &[]);
    assert!(lost.contains("Total lost packets 0"), "{lost}");
    assert_eq!(
        fastpath_packets(&ns),
        (0, 0, 0),
        "capped allocations are never mirrored"
    );
}

#[test]
fn the_turn_crate_client_relays_with_the_fast_path_on() {
    let ns = Ns::new("turncrate");
    let _server = start_in(&ns, &[]);
    let sent = ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let live = common::turn_client::allocate("127.0.0.1:3478", USER, PASS, "fp.local")
                .await
                .expect("allocate");
            let peer = tokio::net::UdpSocket::bind("127.0.0.1:40200")
                .await
                .unwrap();
            // The crate binds a channel behind the first messages (Send indications until then).
            for i in 0..20 {
                live.round_trip(&peer, &format!("#{i}"))
                    .await
                    .expect("round trip");
            }
            live.close().await;
            20
        })
    });
    let (c2p, p2c, full) = fastpath_packets(&ns);
    println!("turn crate: {sent} round trips; the kernel relayed {c2p} to the peer, {p2c} back");
    assert_eq!(full, 0);
}

/// Native mode on a veth pair between two namespaces the test makes (nothing on the host's
/// interfaces): the server's end runs the relay program, the client's end `xdp_pass` (a veth
/// delivers XDP_TX frames only to a peer whose NAPI an XDP program turns on) and has transmit
/// checksum offload off, so its frames carry full checksums as a NIC's do. Client and peer both
/// live in the client namespace, so the relayed frames leave by the interface they came in on.
#[test]
fn native_mode_on_a_veth_relays_ipv4_and_ipv6_in_the_kernel_with_valid_checksums() {
    veth_relays_in_the_kernel("native", true);
}

/// `--xdp-mode auto` on a veth (a container's interface) attaches in generic mode, which needs no
/// program on the far end: the frames the program transmits leave through the veth like any
/// other (native mode there would lose them, see `native_mode_on_a_veth...`).
#[test]
fn auto_mode_on_a_veth_is_generic_and_relays_with_no_program_on_the_far_end() {
    veth_relays_in_the_kernel("auto", false);
}

/// A veth pair between the server's namespace and one for client and peers; the server with
/// `--xdp-mode mode` on its end, and the pass-everything program on the far end if
/// `pass_far_end`. ChannelData, Send and Data indications, IPv4, IPv6 and across, relayed with the
/// server stopped, every frame on the client's wire captured and checked.
fn veth_relays_in_the_kernel(mode: &str, pass_far_end: bool) {
    require_tool("tcpdump");
    require_tool("ethtool");
    // Names of their own per mode: the tests of one process run at once.
    let t = &mode[..1];
    let srv = Ns::new(&format!("vsrv{t}"));
    let cli = Ns::new(&format!("vcli{t}"));
    let (vs, vc) = (
        format!("vs{t}{}", std::process::id()),
        format!("vc{t}{}", std::process::id()),
    );
    srv.exec(&[
        "ip", "link", "add", &vs, "type", "veth", "peer", "name", &vc, "netns", &cli.0,
    ]);
    for (ns, dev, addrs) in [
        (&srv, &vs, ["10.118.0.1/24", "fd18::1/64"]),
        (&cli, &vc, ["10.118.0.2/24", "fd18::2/64"]),
    ] {
        for a in addrs {
            ns.exec(&["ip", "addr", "add", a, "dev", dev, "nodad"]);
        }
        ns.exec(&["ip", "link", "set", dev, "up"]);
    }
    cli.exec(&["ip", "addr", "add", "10.118.0.3/24", "dev", &vc]);
    cli.exec(&["ip", "addr", "add", "fd18::3/64", "dev", &vc, "nodad"]);
    cli.exec(&["ethtool", "-K", &vc, "tx", "off"]);
    // The server's own answers too, so that every frame on the wire can be checked.
    srv.exec(&["ethtool", "-K", &vs, "tx", "off"]);
    // bpf_fib_lookup answers only for interfaces that forward.
    srv.exec(&[
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.forwarding=1",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    let mut pass = vigi_turn::io::fastpath::FastPath::load(vigi_turn::io::fastpath::MapLimits {
        channels: 1,
        allocations: 1,
        permissions: 1,
    })
    .expect("load (root)");
    if pass_far_end {
        cli.run(|| pass.attach_pass(&vc, vigi_turn::io::fastpath::XdpMode::Native))
            .expect("xdp_pass on the client end");
    }

    let port = PORT.to_string();
    let metrics = METRICS.to_string();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &srv.0,
            BIN,
            "-L",
            "10.118.0.1",
            "-L",
            "fd18::1",
        ])
        .args([
            "--relay-ip",
            "10.118.0.1",
            "--relay-ip",
            "fd18::1",
            "-p",
            &port,
        ])
        .args([
            "--min-port",
            "50000",
            "--max-port",
            "50099",
            "-m",
            "1",
            "-A",
            "keep",
        ])
        .args([
            "--allowed-peer-ip",
            "10.118.0.0/24",
            "--allowed-peer-ip",
            "fd18::/64",
        ])
        .args(["-a", "-u", &format!("{USER}:{PASS}"), "-r", "fp.local"])
        .args([
            "--prometheus",
            "--prometheus-address",
            "10.118.0.1",
            "--prometheus-port",
            &metrics,
        ])
        .args(["--xdp-interface", &vs, "--xdp-mode", mode])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vigi-turn");
    let server = Proc {
        child,
        name: "vigi-turn".into(),
    };
    // Up once it serves /metrics (it binds its listeners before).
    cli.run(|| {
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("10.118.0.1", METRICS)).is_err() {
            assert!(t0.elapsed() < WAIT, "vigi-turn did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // What the kernel attached: `ip link` names generic mode `xdpgeneric`, native `xdp`.
    let link = Command::new("ip")
        .args([
            "netns", "exec", &srv.0, "ip", "-d", "link", "show", "dev", &vs,
        ])
        .output()
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    let generic = link.contains("xdpgeneric");
    assert_eq!(
        generic,
        mode != "native",
        "--xdp-mode {mode} on a veth attached in the wrong mode: {link}"
    );
    assert!(link.contains("prog/xdp"), "no XDP program on {vs}: {link}");
    let capture = Capture::start(&cli, &vc, "10.118.0.1:9".parse().unwrap());

    let lens = [1usize, 2, 3, 100, 333, 1200];
    for (i, (client_ip, peer_ip, server_ip)) in [
        ("10.118.0.2", "10.118.0.3", "10.118.0.1"),
        ("fd18::2", "fd18::3", "fd18::1"),
    ]
    .into_iter()
    .enumerate()
    {
        cli.run(|| {
            let server_addr = SocketAddr::new(server_ip.parse().unwrap(), PORT);
            let a = Client::allocate(
                SocketAddr::new(client_ip.parse().unwrap(), 40001),
                server_addr,
            );
            let peer = UdpSocket::bind(SocketAddr::new(peer_ip.parse().unwrap(), 40100)).unwrap();
            peer.set_read_timeout(Some(WAIT)).unwrap();
            a.bind_channel(peer.local_addr().unwrap(), 0x4000);
            let mut buf = [0u8; 2048];
            // One round with the server running resolves the neighbours the FIB needs.
            a.s.send_to(&channel_data(0x4000, b"warm"), a.server)
                .unwrap();
            assert_eq!(peer.recv(&mut buf).unwrap(), 4);
            peer.send_to(b"warm", a.relay).unwrap();
            a.s.recv(&mut buf).expect("warm-up back");
            signal(&server, libc::SIGSTOP);
            for len in lens {
                let data = payload(len, 50 + i as u8);
                a.s.send_to(&channel_data(0x4000, &data), a.server).unwrap();
                let (n, from) = peer.recv_from(&mut buf).expect("relayed to the peer");
                assert_eq!(
                    (&buf[..n], from),
                    (&data[..], a.relay),
                    "client → peer, {len} B"
                );
                peer.send_to(&data, a.relay).unwrap();
                let (n, from) = a.s.recv_from(&mut buf).expect("relayed to the client");
                assert_eq!(from, a.server);
                assert_eq!(
                    &buf[..n],
                    &channel_data(0x4000, &data)[..],
                    "peer → client, {len} B"
                );
            }
            // Send and Data indications with a second peer port of the same IP: no channel there,
            // and the ChannelBind's permission covers the IP.
            let peer2 = UdpSocket::bind(SocketAddr::new(peer_ip.parse().unwrap(), 40101)).unwrap();
            peer2.set_read_timeout(Some(WAIT)).unwrap();
            for len in lens {
                let data = payload(len, 70 + i as u8);
                a.send_indication(peer2.local_addr().unwrap(), &data, len % 2 == 1);
                let (n, from) = peer2.recv_from(&mut buf).expect("Send relayed to the peer");
                assert_eq!((&buf[..n], from), (&data[..], a.relay), "Send, {len} B");
                // A Data indication of a length that is not a multiple of 4 needs padding after the
                // payload, so the frame must grow at its tail. In native mode a veth frame built
                // from a local socket's packet may have no tailroom, and the kernel then passes it
                // up (a NIC driver's page-sized frames have room): only whole words there, with the
                // server stopped. In generic mode the kernel gives the skb the headroom XDP needs
                // by reallocating its head, whose slab leaves room at the tail: every length here.
                if len % 4 != 0 && mode == "native" {
                    continue;
                }
                peer2.send_to(&data, a.relay).unwrap();
                assert_eq!(
                    a.recv_data_indication(),
                    (peer2.local_addr().unwrap(), data.clone()),
                    "Data, {len} B"
                );
            }
            signal(&server, libc::SIGCONT);
            a.delete();
        });
    }
    // Across families: an IPv4 client's dual allocation to an IPv6 peer, and an IPv6 client's
    // IPv4 relay to an IPv4 peer; ChannelData, Send and Data indications both ways, in the
    // kernel with the server stopped.
    for (i, (client_ip, server_ip, peer_ip, ty, value)) in [
        (
            "10.118.0.2",
            "10.118.0.1",
            "fd18::3",
            attr::ADDITIONAL_ADDRESS_FAMILY,
            [2, 0, 0, 0],
        ),
        (
            "fd18::2",
            "fd18::1",
            "10.118.0.3",
            attr::REQUESTED_ADDRESS_FAMILY,
            [1, 0, 0, 0],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        cli.run(|| {
            let server_addr = SocketAddr::new(server_ip.parse().unwrap(), PORT);
            let a = Client::allocate_with(
                SocketAddr::new(client_ip.parse().unwrap(), 40002),
                server_addr,
                ty,
                value,
            );
            let peer = UdpSocket::bind(SocketAddr::new(peer_ip.parse().unwrap(), 40100)).unwrap();
            let peer2 = UdpSocket::bind(SocketAddr::new(peer_ip.parse().unwrap(), 40101)).unwrap();
            for p in [&peer, &peer2] {
                p.set_read_timeout(Some(WAIT)).unwrap();
            }
            assert_eq!(
                a.relay.is_ipv4(),
                peer_ip.contains('.'),
                "relay of the peer's family"
            );
            a.bind_channel(peer.local_addr().unwrap(), 0x4000);
            let mut buf = [0u8; 2048];
            // Warm-up through the server (neighbours for the FIB).
            a.s.send_to(&channel_data(0x4000, b"warm"), a.server)
                .unwrap();
            assert_eq!(peer.recv(&mut buf).unwrap(), 4);
            peer.send_to(b"warm", a.relay).unwrap();
            a.s.recv(&mut buf).expect("warm-up back");
            signal(&server, libc::SIGSTOP);
            for len in lens {
                let data = payload(len, 90 + i as u8);
                a.s.send_to(&channel_data(0x4000, &data), a.server).unwrap();
                let (n, from) = peer.recv_from(&mut buf).expect("ChannelData to the peer");
                assert_eq!((&buf[..n], from), (&data[..], a.relay), "{len} B");
                peer.send_to(&data, a.relay).unwrap();
                let (n, _) = a.s.recv_from(&mut buf).expect("ChannelData to the client");
                assert_eq!(&buf[..n], &channel_data(0x4000, &data)[..]);
                a.send_indication(peer2.local_addr().unwrap(), &data, len % 2 == 1);
                let (n, from) = peer2.recv_from(&mut buf).expect("Send to the peer");
                assert_eq!((&buf[..n], from), (&data[..], a.relay), "Send, {len} B");
                if len % 4 != 0 && mode == "native" {
                    continue; // the tailroom a padded Data indication needs (see above)
                }
                peer2.send_to(&data, a.relay).unwrap();
                assert_eq!(
                    a.recv_data_indication(),
                    (peer2.local_addr().unwrap(), data.clone()),
                    "Data, {len} B"
                );
            }
            signal(&server, libc::SIGCONT);
            a.delete();
        });
    }
    // Every UDP frame on the client's wire: the client's and peer's own (full checksums, offload
    // off) and the kernel's rewrites, IPv4 and IPv6; the peer read every relayed one above.
    let relayed_to_peer = |f: &Vec<u8>| {
        frames::parse(f).is_ok_and(|(u, _)| {
            (u.dst.port() == 40100 || u.dst.port() == 40101) && u.src.port() != 40001
        })
    };
    // ChannelData and the warm-up one, and Send indications, each family, then across.
    let want = 2 * (2 * (lens.len() + 1) + 2 * lens.len());
    let (captured, summary) =
        capture.frames_when(|all| all.iter().filter(|f| relayed_to_peer(f)).count() >= want);
    for f in &captured {
        frames::parse(f).unwrap_or_else(|e| panic!("captured frame: {e}: {f:02x?}"));
    }
    let relayed = captured.iter().filter(|f| relayed_to_peer(f)).count();
    assert_eq!(relayed, want, "relayed frames captured; tcpdump: {summary}");
    drop(server);
    drop(pass);
}
