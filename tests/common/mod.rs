//! Shared helpers for the integration tests: start the real `vigi-turn` binary on loopback, find
//! free ports, require coturn's client tools, and stop every process started here.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};

pub mod turn_client;

pub const BIN: &str = env!("CARGO_BIN_EXE_vigi-turn");

/// The kernel's ephemeral port range (`ip_local_port_range`): ports it hands to `bind(:0)`.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Ports handed out by this process: every test in a binary gets its own, never one the
/// kernel can give a client socket (`bind(:0)`) or a server's default relay range
/// (49152-65535) can take. Two regions below the ephemeral range, one for listening ports and
/// one for relay ranges, so a relay range never covers a listener of a test running alongside.
/// The cursor starts at an offset of the process id, so two test processes on one machine
/// (two worktrees, say) rarely probe the same ports; a port still busy is skipped.
struct PortRegion {
    lo: u16,
    len: u16,
    next: std::sync::atomic::AtomicU32,
}

fn regions() -> &'static (PortRegion, PortRegion) {
    static R: std::sync::OnceLock<(PortRegion, PortRegion)> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let (eph_lo, _) = ephemeral_range();
        assert!(
            eph_lo >= 20_000 + 1024,
            "ip_local_port_range starts at {eph_lo}: the tests need 20,000 ports below it"
        );
        let seed = std::process::id();
        let region = |lo: u16, len: u16| PortRegion {
            lo,
            len,
            next: std::sync::atomic::AtomicU32::new(seed.wrapping_mul(7919) % u32::from(len)),
        };
        // Listening ports just below the ephemeral range, relay ranges below those.
        (
            region(eph_lo - 8_000, 8_000),
            region(eph_lo - 20_000, 12_000),
        )
    })
}

impl PortRegion {
    /// The first of `count` consecutive ports from the cursor on that `free` accepts.
    fn take(&self, count: u16, free: impl Fn(u16) -> bool) -> (u16, u16) {
        use std::sync::atomic::Ordering;
        for _ in 0..(self.len / count.max(1)) {
            let at = self.next.fetch_add(u32::from(count), Ordering::Relaxed) % u32::from(self.len);
            if at + u32::from(count) > u32::from(self.len) {
                continue;
            }
            let start = self.lo + at as u16;
            let end = start + (count - 1);
            if (start..=end).all(&free) && claim(start, count) {
                return (start, end);
            }
        }
        panic!(
            "no {count} free consecutive ports in {}..{}",
            self.lo,
            self.lo + self.len
        );
    }
}

/// Claim `count` ports from `start` against other test processes on this machine (two worktrees'
/// suites, a CI loop beside a helper's run): an open-file-description lock on bytes
/// `start..start + count` of one shared file, held until this process exits. Without it two
/// processes could each find a port free and both bind it, and since the server and
/// `vigi-bench peer` both set SO_REUSEPORT, the kernel would let them share the port and spread
/// one test's clients across the other's sockets (seen as an Allocate echoed back by a peer).
fn claim(start: u16, count: u16) -> bool {
    use nix::fcntl::{fcntl, FcntlArg};
    static FILE: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("vigi-turn-test-ports.lock"))
            .expect("open the test port lock file")
    });
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: libc::off_t::from(start),
        l_len: libc::off_t::from(count),
        l_pid: 0, // must be 0 for open-file-description locks
    };
    match fcntl(file, FcntlArg::F_OFD_SETLK(&lock)) {
        Ok(_) => true,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => false,
        Err(e) => panic!("locking test ports {start}+{count}: {e}"),
    }
}

/// Whether `port` is free for UDP and TCP on every address (a wildcard bind fails if anyone
/// holds the port on any address: 127.0.0.1, another loopback address a test listens on, a
/// bridge a test made), IPv4 and IPv6 (where IPv6 is up).
fn port_is_free(port: u16) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let in_use =
        |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
    [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ]
    .into_iter()
    .all(|ip| {
        !in_use(UdpSocket::bind((ip, port)).map(drop))
            && !in_use(TcpListener::bind((ip, port)).map(drop))
    })
}

/// A port free for both UDP and TCP on loopback, outside the kernel's ephemeral range, and
/// never handed out twice by this process: no client socket of another test can take it
/// between this call and the server's bind.
pub fn free_port() -> u16 {
    regions().0.take(1, port_is_free).0
}

/// A UDP socket on `ip` and a port from [`free_port`] (the next one, should another process
/// have taken it since it was found free): never a port the kernel gives a `bind(:0)`, nor one
/// this process handed out before. For clients whose allocation may outlive the socket.
pub fn udp_on_free_port(ip: std::net::IpAddr) -> UdpSocket {
    for _ in 0..10 {
        match UdpSocket::bind((ip, free_port())) {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("bind {ip}: {e}"),
        }
    }
    panic!("no free port for a client on {ip}");
}

/// `count` consecutive free ports (a relay range) outside the ephemeral range and apart from
/// every listening port `free_port` gives.
pub fn free_range(count: u16) -> (u16, u16) {
    regions().1.take(count, port_is_free)
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
    /// Send SIGTERM and wait for the exit status (at most 30 s).
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
                t0.elapsed() < Duration::from_secs(30),
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

/// Flags every server these helpers start gets as well, from `VIGI_TEST_SERVER_EXTRA`
/// (whitespace-separated): `.ci/run` runs the relay suites a second time inside a network
/// namespace with `--xdp-interface lo --xdp-mode generic`, so that they pass with the kernel fast
/// path relaying (issue 18).
pub fn server_extra_args() -> Vec<String> {
    std::env::var("VIGI_TEST_SERVER_EXTRA")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether this run has the kernel fast path on (see [`server_extra_args`]).
pub fn fast_path_on() -> bool {
    server_extra_args().iter().any(|a| a == "--xdp-interface")
}

/// Packets the kernel fast path relayed, both ways, from a server's `/metrics` on `port`.
pub fn fast_path_packets(port: u16) -> f64 {
    scrape(port)
        .iter()
        .filter(|(k, _)| k.starts_with("vigi_turn_fastpath_packets_total"))
        .map(|(_, v)| v)
        .sum()
}

/// Start vigi-turn with exactly `all` as arguments (and [`server_extra_args`]), expecting it on UDP port `port` of
/// 127.0.0.1, and wait until it answers a STUN Binding request there.
pub fn start_server_on(port: u16, all: &[&str]) -> Server {
    let child = Command::new(BIN)
        .args(all)
        .args(server_extra_args())
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
        // Generous: on a loaded CI machine a debug build can take seconds to start.
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "vigi-turn did not answer STUN on port {port}"
        );
    }
    Server { proc, port }
}

/// vigi-turn's command line for a test, built from the parts the tests share, so that a flag
/// every test needs is written once:
///
/// ```ignore
/// let srv = ServerArgs::loopback().realm("bench.local").user("bench:benchpw").relay_ports(100).start();
/// ```
#[derive(Debug, Clone, Default)]
pub struct ServerArgs {
    args: Vec<String>,
    range: Option<(u16, u16)>,
}

impl ServerArgs {
    /// No flag at all but `-n` (no configuration file).
    pub fn bare() -> ServerArgs {
        ServerArgs::default().arg("-n")
    }

    /// Listening and relaying on 127.0.0.1 (`-n -L 127.0.0.1 -E 127.0.0.1`), loopback peers
    /// allowed (`--allow-loopback-peers`), as every loopback relay test needs.
    pub fn loopback() -> ServerArgs {
        ServerArgs::bare()
            .args(&["-L", "127.0.0.1", "-E", "127.0.0.1"])
            .arg("--allow-loopback-peers")
    }

    /// As [`ServerArgs::loopback`], on 127.0.0.1 and ::1 (dual allocations).
    pub fn dual_loopback() -> ServerArgs {
        ServerArgs::bare()
            .args(&[
                "-L",
                "127.0.0.1",
                "-L",
                "::1",
                "-E",
                "127.0.0.1",
                "-E",
                "::1",
            ])
            .arg("--allow-loopback-peers")
    }

    /// `--realm REALM`.
    pub fn realm(self, realm: &str) -> ServerArgs {
        self.args(&["--realm", realm])
    }

    /// Long-term credentials for one user: `--lt-cred-mech --user NAME:PASSWORD`.
    pub fn user(self, name_password: &str) -> ServerArgs {
        self.args(&["--lt-cred-mech", "--user", name_password])
    }

    /// TURN REST credentials: `--use-auth-secret --static-auth-secret SECRET`.
    pub fn rest_secret(self, secret: &str) -> ServerArgs {
        self.args(&["--use-auth-secret", "--static-auth-secret", secret])
    }

    /// A relay range of `count` ports of its own ([`free_range`]): not in the kernel's
    /// ephemeral range, not shared with any other server a test starts.
    pub fn relay_ports(mut self, count: u16) -> ServerArgs {
        let (min, max) = free_range(count);
        self.range = Some((min, max));
        self.args(&[
            "--min-port",
            &min.to_string(),
            "--max-port",
            &max.to_string(),
        ])
    }

    /// `-m N` relay threads.
    pub fn threads(self, n: usize) -> ServerArgs {
        self.args(&["-m", &n.to_string()])
    }

    /// `--user-quota 0`: one user stands for many load clients.
    pub fn no_user_quota(self) -> ServerArgs {
        self.args(&["--user-quota", "0"])
    }

    pub fn arg(mut self, arg: impl Into<String>) -> ServerArgs {
        self.args.push(arg.into());
        self
    }

    pub fn args(mut self, args: &[&str]) -> ServerArgs {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The relay range [`ServerArgs::relay_ports`] took.
    pub fn range(&self) -> (u16, u16) {
        self.range.expect("relay_ports() was not called")
    }

    /// The arguments, for a test that starts the binary its own way.
    pub fn to_vec(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// [`start_server`] with these arguments.
    pub fn start(&self) -> Server {
        start_server(&self.to_vec())
    }
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
    start_peer_on(&["127.0.0.1"])
}

/// Start `turnutils_peer` on a free port of every address in `ips`, and wait until it echoes on
/// each of them: a client started next never sends to a peer that is not listening yet.
pub fn start_peer_on(ips: &[&str]) -> (Proc, u16) {
    require_tool("turnutils_peer");
    let port = free_port();
    let mut cmd = Command::new("turnutils_peer");
    for ip in ips {
        cmd.args(["-L", ip]);
    }
    let child = cmd
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnutils_peer");
    let mut proc = Proc {
        child,
        name: "turnutils_peer".into(),
    };
    for ip in ips {
        let ip: std::net::IpAddr = ip.parse().expect("an IP address");
        wait_for_echo(&mut proc, SocketAddr::new(ip, port));
    }
    (proc, port)
}

/// Wait (at most 30 s) until the UDP echo peer `proc` at `peer` sends a probe back.
pub fn wait_for_echo(proc: &mut Proc, peer: SocketAddr) {
    let any: std::net::IpAddr = if peer.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind((any, 0)).expect("bind a probe socket");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let probe = b"vigi-turn test: are you there?";
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    loop {
        let _ = s.send_to(probe, peer);
        if matches!(s.recv_from(&mut buf), Ok((n, from)) if from == peer && &buf[..n] == probe) {
            return;
        }
        if let Some(st) = proc.child.try_wait().unwrap() {
            panic!("{} at {peer} exited early with {st}", proc.name);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} never echoed on {peer}",
            proc.name
        );
    }
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

/// A loopback address for one turnutils_uclient run, never the same twice in this process
/// (127.0.1.1, 127.0.1.2, ...). uclient leaves an allocation or two behind for the server to
/// expire; were the next run on the same server to come from 127.0.0.1 too, the kernel could
/// give one of its fresh ephemeral ports the port of such a leftover, and its Allocate would
/// arrive on a live allocation's 5-tuple and rightly get a 437.
pub fn client_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("127.0.{}.{}", 1 + n / 254, 1 + n % 254)
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
    if !args.contains(&"-L") {
        cmd.args(["-L", &client_ip()]);
    }
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
    // An upper bound only: a loaded machine may take seconds to render a scrape.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Raise this process's open-files limit to `n` (at most its hard limit).
pub fn raise_nofile(n: u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < n {
            rl.rlim_cur = n.min(rl.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Runs `args[0]` with the rest as arguments; panics with its stderr when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace made by a test (root and `ip` needed), its loopback up, deleted when
/// dropped. Its name is random, so tests running alongside never share one.
pub struct Netns(pub String);

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        require_tool("ip");
        let ns = Netns(format!("{prefix}{:08x}", rand::random::<u32>()));
        sh(&["ip", "netns", "add", &ns.0]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", &self.0];
        all.extend(args);
        sh(&all);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    /// Runs `f` on a thread inside the namespace: every socket it makes lives there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open the namespace");
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on a namespace file we hold open; it moves only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
