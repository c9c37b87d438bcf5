//! Shared helpers for the integration tests: start the real `vigi-turn` binary on loopback, find
//! free ports, require coturn's client tools, and stop every process started here.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

pub mod turn_client;

pub const BIN: &str = env!("CARGO_BIN_EXE_vigi-turn");

/// A port free for both UDP and TCP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `count` consecutive free UDP ports (a relay range), starting at a random high port.
pub fn free_range(count: u16) -> (u16, u16) {
    for _ in 0..200 {
        let start = 40000 + (rand::random::<u16>() % 20000);
        let end = start + count - 1;
        if (start..=end).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (start, end);
        }
    }
    panic!("no free port range of {count}");
}

/// Panics with a clear message when an outside tool is missing: tests never skip silently.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run `apt-get install coturn` (see docs/testing.md)"
    );
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Send SIGTERM and wait for the exit status (at most 10 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on a pid we started and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} did not exit on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running vigi-turn with its listening port.
pub struct Server {
    pub proc: Proc,
    pub port: u16,
}

/// Start vigi-turn on a free port (`-p PORT` then `args`) and wait until it answers STUN.
pub fn start_server(args: &[&str]) -> Server {
    let port = free_port();
    let port_s = port.to_string();
    let mut all: Vec<&str> = vec!["-p", &port_s];
    all.extend(args);
    start_server_on(port, &all)
}

/// Start vigi-turn with exactly `all` as arguments, expecting it on UDP port `port` of
/// 127.0.0.1, and wait until it answers a STUN Binding request there.
pub fn start_server_on(port: u16, all: &[&str]) -> Server {
    let child = Command::new(BIN)
        .args(all)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vigi-turn");
    let mut proc = Proc {
        child,
        name: "vigi-turn".into(),
    };
    let t0 = Instant::now();
    loop {
        if binding_udp(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_some()
        {
            break;
        }
        if let Some(st) = proc.child.try_wait().unwrap() {
            panic!("vigi-turn exited early with {st} (args {all:?})");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "vigi-turn did not answer STUN on port {port}"
        );
    }
    Server { proc, port }
}

/// One STUN Binding request over UDP; the XOR-MAPPED-ADDRESS of the answer.
pub fn binding_udp(server: SocketAddr, timeout: Duration) -> Option<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::BINDING, Class::Request, &tid);
    s.send_to(&req, server).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    let m = Message::decode(&buf[..n]).ok()?;
    if m.class() != Class::Success || m.transaction_id() != &tid {
        return None;
    }
    m.get_xor_address(attr::XOR_MAPPED_ADDRESS)
}

/// Start coturn's `turnutils_peer` (a UDP echo peer) on 127.0.0.1.
pub fn start_peer() -> (Proc, u16) {
    require_tool("turnutils_peer");
    let port = free_port();
    let child = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnutils_peer");
    std::thread::sleep(Duration::from_millis(300));
    (
        Proc {
            child,
            name: "turnutils_peer".into(),
        },
        port,
    )
}

/// Run a command with a time limit; its output.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "command timed out after {limit:?}: {cmd:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What turnutils_uclient reported at the end of a run.
#[derive(Debug)]
pub struct UclientResult {
    pub sent: u64,
    pub received: u64,
    pub lost_line: String,
    pub output: String,
}

/// Run turnutils_uclient against 127.0.0.1:`port` with `args`, relaying to the peer on
/// `peer_port`; parse its summary lines.
pub fn uclient(port: u16, peer_port: u16, args: &[&str]) -> UclientResult {
    require_tool("turnutils_uclient");
    let port_s = port.to_string();
    let peer_s = peer_port.to_string();
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-p", &port_s, "-e", "127.0.0.1", "-r", &peer_s]);
    cmd.args(args);
    cmd.arg("127.0.0.1");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sent = 0;
    let mut received = 0;
    let mut lost_line = String::new();
    for line in text.lines() {
        if let Some(rest) = line.split("start_mclient: tot_send_msgs=").nth(1) {
            let mut parts = rest.split(", tot_recv_msgs=");
            sent = parts
                .next()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            received = parts
                .next()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
        }
        if line.contains("Total lost packets") {
            lost_line = line.to_owned();
        }
    }
    UclientResult {
        sent,
        received,
        lost_line,
        output: text,
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` with extra header lines (each ending in `\r\n`);
/// the status code (0 when there is no status line) and the body.
pub fn http(port: u16, method: &str, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned();
    (status, body)
}

/// `GET path`; (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path, "")
}

/// The header line of a bearer token, or nothing.
pub fn bearer(token: Option<&str>) -> String {
    token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"))
}

/// Every sample of a `/metrics` scrape: `name{labels}` -> value.
pub fn scrape(port: u16) -> std::collections::HashMap<String, f64> {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "scrape: {body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Start `cmd` with its stdout piped and its stderr dropped, and read that stdout on a thread:
/// the child, and the thread that returns all it printed once it ends.
pub fn spawn_reading_stdout(cmd: &mut Command) -> (Child, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            out.push_str(&line);
            out.push('\n');
        }
        out
    });
    (child, reader)
}
