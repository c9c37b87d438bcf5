//! Operating the real binary: SIGHUP reload without losing a call, SIGUSR1 drain, SIGTERM
//! freeing every port, systemd's readiness protocol, `--strict-expiry`, privileges, and the
//! Docker entrypoint script.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket as StdUdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::turn_client::{raw_allocate_at, Live};
use common::*;
use tokio::net::UdpSocket;
use vigi_turn::engine::auth::mint_rest_credentials;

const REALM: &str = "turn.test";

/// A fresh directory under the system temp dir.
fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vigi-ops-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn kill(srv: &Server, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe {
        libc::kill(srv.proc.child.id() as i32, sig);
    }
}

/// Wait until `file` contains `needle` (the server logs to it), at most 30 s.
fn wait_for_log(file: &Path, needle: &str) {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "log never said {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for the server to exit on its own, at most `limit`.
fn wait_exit(srv: &mut Server, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = srv.proc.child.try_wait().unwrap() {
            return st;
        }
        assert!(
            t0.elapsed() < limit,
            "vigi-turn did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn allocate(port: u16, user: &str, password: &str) -> Result<Live, String> {
    allocate_in(port, user, password, REALM).await
}

async fn allocate_in(port: u16, user: &str, password: &str, realm: &str) -> Result<Live, String> {
    turn_client::allocate(&format!("127.0.0.1:{port}"), user, password, realm).await
}

async fn peer() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

fn raw_allocate(port: u16, user: &str, password: &str) -> (u16, Option<SocketAddr>) {
    raw_allocate_at(SocketAddr::from(([127, 0, 0, 1], port)), user, password)
}

fn write_conf(path: &Path, secret: &str, extra: &str) {
    std::fs::write(
        path,
        format!(
            "listening-ip=127.0.0.1\nrealm={REALM}\nallow-loopback-peers\n\
             use-auth-secret\nstatic-auth-secret={secret}\n{extra}"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_new_secret_works_and_live_allocation_keeps_relaying() {
    let dir = tmpdir("hup");
    let conf = dir.join("turnserver.conf");
    let log = dir.join("vigi.log");
    // 6 s: refreshed at half-life (3 s), which leaves a late timer on a loaded machine 3 s (it
    // was 4 s, 2 s of slack).
    let lifetime = "max-allocate-lifetime=6\ndefault-allocate-lifetime=6\n";
    write_conf(&conf, "first-secret", lifetime);
    let mut srv = start_server(&[
        "-c",
        conf.to_str().unwrap(),
        "-m",
        "2",
        "--log-file",
        log.to_str().unwrap(),
    ]);
    let old = mint_rest_credentials(b"first-secret", "alice", 3600, unix_now(), ':');
    let live = allocate(srv.port, &old.username, &old.password)
        .await
        .expect("allocate before reload");
    let p1 = peer().await;
    live.round_trip(&p1, "before").await.unwrap();

    // Also: more logging (-v), and a relay range that only a restart can apply.
    write_conf(
        &conf,
        "second-secret",
        &format!("{lifetime}verbose\nmin-port=50000\n"),
    );
    kill(&srv, libc::SIGHUP);
    wait_for_log(&log, "configuration reloaded");
    wait_for_log(&log, "min-port changed; that needs a restart");

    // Credentials from the new secret work; from the old one, no new allocation.
    let new = mint_rest_credentials(b"second-secret", "bob", 3600, unix_now(), ':');
    let fresh = allocate(srv.port, &new.username, &new.password)
        .await
        .expect("new secret allocates after reload");
    fresh.round_trip(&p1, "new secret").await.unwrap();
    wait_for_log(&log, "DEBUG"); // the 401 challenge, logged at the new level
    let old2 = mint_rest_credentials(b"first-secret", "carol", 3600, unix_now(), ':');
    assert!(
        allocate(srv.port, &old2.username, &old2.password)
            .await
            .is_err(),
        "the old secret must no longer allocate"
    );

    // The allocation made before the reload relays on, and can still sign requests: a peer on
    // a new IP needs a CreatePermission made with the old key, and the 6-second allocation
    // must have been refreshed (at half-life) with it too.
    live.round_trip(&p1, "after").await.unwrap();
    let p2 = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    live.round_trip(&p2, "after, new peer IP").await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    live.round_trip(&p1, "after a refresh").await.unwrap();

    // An invalid edit is refused and the running configuration stays; the log file is
    // reopened all the same (logrotate moved it away).
    std::fs::rename(&log, dir.join("vigi.log.1")).unwrap();
    write_conf(&conf, "third-secret", "max-port=not-a-port\n");
    kill(&srv, libc::SIGHUP);
    wait_for_log(&log, "reload refused");
    assert!(
        srv.proc.child.try_wait().unwrap().is_none(),
        "still running"
    );
    let again = mint_rest_credentials(b"second-secret", "dave", 3600, unix_now(), ':');
    let third = allocate(srv.port, &again.username, &again.password)
        .await
        .expect("the second secret is still in force");
    third.round_trip(&p2, "kept config").await.unwrap();
    live.round_trip(&p1, "after refused reload").await.unwrap();

    live.close().await;
    fresh.close().await;
    third.close().await;
    kill(&srv, libc::SIGTERM);
    assert!(wait_exit(&mut srv, Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

fn static_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "-n",
        "-L",
        "127.0.0.1",
        "--allow-loopback-peers",
        "--realm",
        REALM,
        "--user",
        "alice:wonderland",
        "-m",
        "2",
    ];
    v.extend_from_slice(extra);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_drain_refuses_new_keeps_live_and_exits_when_it_ends() {
    let dir = tmpdir("drain");
    let log = dir.join("vigi.log");
    let mut srv = start_server(&static_args(&[
        "--drain-timeout",
        "60",
        "--log-file",
        log.to_str().unwrap(),
    ]));
    let live = allocate(srv.port, "alice", "wonderland").await.unwrap();
    let p = peer().await;
    live.round_trip(&p, "before drain").await.unwrap();

    kill(&srv, libc::SIGUSR1);
    wait_for_log(&log, "draining");
    assert_eq!(raw_allocate(srv.port, "alice", "wonderland"), (403, None));
    live.round_trip(&p, "while draining").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        srv.proc.child.try_wait().unwrap().is_none(),
        "a draining server waits for its live allocation"
    );
    live.round_trip(&p, "still draining").await.unwrap();

    live.close().await; // Refresh with LIFETIME 0 ends the last allocation.
    let st = wait_exit(&mut srv, Duration::from_secs(30));
    assert!(st.success(), "drained exit: {st}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_drain_ends_at_drain_timeout_and_sends_alternate_server() {
    // `--alternate-server` redirects every new Allocate (coturn): it is added by a reload, after
    // the live allocation was made here.
    let dir = tmpdir("drain-alt");
    let conf = dir.join("turnserver.conf");
    let log = dir.join("vigi.log");
    let body = format!(
        "listening-ip=127.0.0.1\nrealm={REALM}\nallow-loopback-peers\nuser=alice:wonderland\n\
         drain-timeout=4\n"
    );
    std::fs::write(&conf, &body).unwrap();
    let mut srv = start_server(&[
        "-c",
        conf.to_str().unwrap(),
        "-m",
        "2",
        "--log-file",
        log.to_str().unwrap(),
    ]);
    let live = allocate(srv.port, "alice", "wonderland").await.unwrap();
    std::fs::write(&conf, format!("{body}alternate-server=192.0.2.7:3479\n")).unwrap();
    kill(&srv, libc::SIGHUP);
    wait_for_log(&log, "SIGHUP: configuration reloaded");
    // Until the workers apply the reload, an Allocate may still succeed; wait for the 300
    // (before the drain starts, so its timeout does not run meanwhile).
    let alt = SocketAddr::from(([192, 0, 2, 7], 3479));
    let t_reload = Instant::now();
    loop {
        let answer = raw_allocate(srv.port, "alice", "wonderland");
        if answer.0 != 0 {
            assert_eq!(
                answer,
                (300, Some(alt)),
                "300 Try Alternate with ALTERNATE-SERVER"
            );
            break;
        }
        assert!(
            t_reload.elapsed() < Duration::from_secs(30),
            "the reload never reached the workers"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    kill(&srv, libc::SIGUSR1);
    // Draining, the answer stays the redirect.
    assert_eq!(
        raw_allocate(srv.port, "alice", "wonderland"),
        (300, Some(alt)),
        "300 Try Alternate with ALTERNATE-SERVER while draining"
    );
    let st = wait_exit(&mut srv, Duration::from_secs(30));
    assert!(st.success(), "exit at drain timeout: {st}");
    assert!(
        t0.elapsed() >= Duration::from_millis(3900),
        "waited for the timeout"
    );
    drop(live);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_frees_every_port() {
    let (min, max) = free_range(4);
    let (min_s, max_s) = (min.to_string(), max.to_string());
    let srv = start_server(&static_args(&["--min-port", &min_s, "--max-port", &max_s]));
    let port = srv.port;
    let live = allocate(port, "alice", "wonderland").await.unwrap();
    let relay_port = live.relay.local_addr().unwrap().port();
    assert!((min..=max).contains(&relay_port));
    let st = srv.proc.terminate();
    assert!(st.success(), "SIGTERM exit: {st}");
    StdUdpSocket::bind(("127.0.0.1", port)).expect("listening UDP port is free");
    TcpListener::bind(("127.0.0.1", port)).expect("listening TCP port is free");
    for p in min..=max {
        StdUdpSocket::bind(("127.0.0.1", p)).expect("relay port is free");
    }
    drop(live);
}

/// Receive one sd_notify datagram, skipping WATCHDOG=1 pings unless asked for.
fn recv_notify(sock: &UnixDatagram, want_watchdog: bool) -> String {
    let mut buf = [0u8; 512];
    loop {
        let n = sock.recv(&mut buf).expect("a notify message in time");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg == "WATCHDOG=1" && !want_watchdog {
            continue;
        }
        return msg;
    }
}

fn spawn_notified(notify_socket: &str, port: u16) -> Server {
    let port_s = port.to_string();
    let child = Command::new(BIN)
        .args(static_args(&["-p", &port_s]))
        .env("NOTIFY_SOCKET", notify_socket)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Server {
        proc: Proc {
            child,
            name: "vigi-turn".into(),
        },
        port,
    }
}

#[test]
fn sd_notify_ready_after_listeners_reloading_watchdog_stopping() {
    let dir = tmpdir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = free_port();
    let mut srv = spawn_notified(path.to_str().unwrap(), port);
    assert_eq!(recv_notify(&sock, false), "READY=1", "first message");
    // READY=1 means the listeners answer now, without any retry.
    assert!(
        binding_udp(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10)
        )
        .is_some(),
        "STUN answers as soon as READY=1 is sent"
    );
    assert_eq!(recv_notify(&sock, true), "WATCHDOG=1");
    kill(&srv, libc::SIGHUP);
    let reloading = recv_notify(&sock, false);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(recv_notify(&sock, false), "READY=1");
    kill(&srv, libc::SIGTERM);
    assert_eq!(recv_notify(&sock, false), "STOPPING=1");
    assert!(wait_exit(&mut srv, Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sd_notify_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("vigi-ops-{}-{}", std::process::id(), rand::random::<u32>());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let srv = spawn_notified(&format!("@{name}"), free_port());
    assert_eq!(recv_notify(&sock, false), "READY=1");
    assert!(srv.proc.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_expiry_ends_the_allocation_with_its_credential() {
    let srv = start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "--allow-loopback-peers",
        "--realm",
        REALM,
        "--use-auth-secret",
        "--static-auth-secret",
        "s3cret",
        "--strict-expiry",
        "-m",
        "1",
    ]);
    // Valid for 6 s (5 to 6: the expiry is in whole seconds): time enough to allocate and relay
    // on a loaded machine. The check comes 3 s after the expiry, whenever that is.
    let now = unix_now();
    let creds = mint_rest_credentials(b"s3cret", "eve", 6, now, ':');
    let live = allocate(srv.port, &creds.username, &creds.password)
        .await
        .unwrap();
    let p = peer().await;
    live.round_trip(&p, "before expiry").await.unwrap();
    let expired = UNIX_EPOCH + Duration::from_secs(now + 6 + 3);
    if let Ok(wait) = expired.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    assert!(
        live.round_trip(&p, "after expiry").await.is_err(),
        "the allocation ended when its credential expired"
    );
    drop(live);
}

#[test]
fn daemon_flag_is_refused_with_a_pointer_to_systemd() {
    let out = Command::new(BIN)
        .args(["-n", "-o", "-L", "127.0.0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("foreground") && err.contains("systemd"),
        "{err}"
    );
}

#[test]
fn proc_user_drops_privileges_or_fails_clearly() {
    let port = free_port();
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        let srv = start_server_on(
            port,
            &[
                "-n",
                "-L",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--proc-user",
                "nobody",
            ],
        );
        // Privileges go right after binding, a moment after STUN first answers.
        let t0 = Instant::now();
        loop {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", srv.proc.child.id())).unwrap();
            let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            if uid_line.split_whitespace().skip(1).all(|u| u != "0") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "still root: {uid_line}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(srv.proc.terminate().success());
    }
    let out = Command::new(BIN)
        .args([
            "-n",
            "-L",
            "127.0.0.1",
            "-p",
            &free_port().to_string(),
            "--proc-user",
            "no-such-user-vigi",
        ])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--proc-user no-such-user-vigi"));
}

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Run config/docker-entrypoint.sh with `args`, the server replaced by a stub printing one
/// `[arg]` line per argument; no config file mounted unless `conf` is given.
fn entrypoint(args: &[&str], conf: Option<&Path>, env: &[(&str, &str)]) -> Vec<String> {
    let dir = tmpdir("entry");
    let stub = dir.join("server-stub");
    std::fs::write(&stub, "#!/bin/sh\nfor a; do echo \"[$a]\"; done\n").unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{REPO}/config:{}", std::env::var("PATH").unwrap());
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{REPO}/config/docker-entrypoint.sh"))
        .args(args)
        .env("VIGI_TURN_BIN", &stub)
        .env("PATH", path)
        .env_remove("EXTERNAL_IP")
        .env_remove("REAL_EXTERNAL_IP")
        // Offline: a DNS lookup goes to a closed loopback port and fails at once.
        .env("DETECT_EXTERNAL_IP_DNS", "127.0.0.1")
        .env("DETECT_EXTERNAL_IP_PORT", free_port().to_string())
        .env(
            "VIGI_TURN_CONF",
            conf.map_or(dir.join("absent.conf"), Path::to_path_buf),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn entrypoint_passes_options_to_the_server_like_coturns_image() {
    let seed = [
        "--listening-port=3478",
        "--min-port=49152",
        "--max-port=65535",
        "--user=vigiturn:vigisecret123",
        "--realm=vigi.local",
    ];
    let want: Vec<String> = seed.iter().map(|a| format!("[{a}]")).collect();
    // Options alone, or after coturn's binary name, or after ours.
    assert_eq!(entrypoint(&seed, None, &[]), want);
    let mut with_name = vec!["turnserver"];
    with_name.extend(seed);
    assert_eq!(entrypoint(&with_name, None, &[]), want);
    with_name[0] = "vigi-turn";
    assert_eq!(entrypoint(&with_name, None, &[]), want);
    // An argument with spaces stays one argument.
    assert_eq!(entrypoint(&["--realm=a b"], None, &[]), ["[--realm=a b]"]);
    // Anything else runs as given.
    assert_eq!(
        entrypoint(&["echo", "not", "the-server"], None, &[]),
        ["not the-server"]
    );
}

#[test]
fn entrypoint_expands_command_substitutions() {
    assert_eq!(
        entrypoint(&["-p", "3478", "--relay-ip=$(echo 10.0.0.1)"], None, &[]),
        ["[-p]", "[3478]", "[--relay-ip=10.0.0.1]"]
    );
    // detect-external-ip prints nothing offline: the empty option is dropped...
    assert_eq!(
        entrypoint(&["--external-ip=$(detect-external-ip)", "-v"], None, &[]),
        ["[-v]"]
    );
    // ...and the address it is given otherwise.
    assert_eq!(
        entrypoint(
            &["--external-ip=$(detect-external-ip)"],
            None,
            &[("EXTERNAL_IP", "203.0.113.9")]
        ),
        ["[--external-ip=203.0.113.9]"]
    );
}

#[test]
fn entrypoint_reads_the_mounted_coturn_config() {
    let dir = tmpdir("entryconf");
    let conf = dir.join("turnserver.conf");
    std::fs::write(&conf, "realm=x\n").unwrap();
    let c = conf.to_str().unwrap();
    assert_eq!(
        entrypoint(&["-v"], Some(&conf), &[]),
        ["[-c]".to_owned(), format!("[{c}]"), "[-v]".to_owned()]
    );
    // A config file named on the command line, or -n, wins.
    assert_eq!(
        entrypoint(&["-c", "/other.conf"], Some(&conf), &[]),
        ["[-c]", "[/other.conf]"]
    );
    assert_eq!(entrypoint(&["-n"], Some(&conf), &[]), ["[-n]"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn entrypoint_runs_the_real_binary_as_turnserver_and_healthcheck_sees_it() {
    // The image links turnserver -> vigi-turn; so does this test.
    let dockerfile = std::fs::read_to_string(format!("{REPO}/Dockerfile")).unwrap();
    assert!(dockerfile.contains("ln -s vigi-turn /usr/local/bin/turnserver"));
    let dir = tmpdir("alias");
    std::os::unix::fs::symlink(BIN, dir.join("turnserver")).unwrap();
    let port = free_port();
    let port_s = port.to_string();
    let child = Command::new("bash")
        .arg(format!("{REPO}/config/docker-entrypoint.sh"))
        .args([
            "turnserver",
            "-n",
            "-L",
            "127.0.0.1",
            "--listening-port",
            &port_s,
        ])
        .env("VIGI_TURN_BIN", dir.join("turnserver"))
        .env("VIGI_TURN_CONF", dir.join("absent.conf"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc {
        child,
        name: "turnserver".into(),
    };
    let t0 = Instant::now();
    let health = |port: &str| {
        Command::new("bash")
            .arg(format!("{REPO}/config/healthcheck.sh"))
            .env("VIGI_TURN_HEALTH_PORT", port)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    while !health(&port_s) {
        assert!(t0.elapsed() < Duration::from_secs(30), "never healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(proc.terminate().success());
    assert!(!health(&port_s), "unhealthy once stopped");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    let unit = std::fs::read_to_string(format!("{REPO}/systemd/vigi-turn.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // verify insists that ExecStart's binary exists: point it at the one just built.
    let dir = tmpdir("unit");
    let path = dir.join("vigi-turn.service");
    std::fs::write(&path, unit.replace("/usr/bin/vigi-turn", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_compose_flags_start_and_serve() {
    const PASSWORD: &str = "a-long-random-secret";
    // The seed application's coturn flags, read from config/docker-compose.yml, given unchanged
    // but for the port (3478 may be taken on a test machine); -n keeps stray config files out.
    let compose = std::fs::read_to_string(format!("{REPO}/config/docker-compose.yml")).unwrap();
    let port = free_port();
    let mut args: Vec<String> = vec!["-n".into()];
    let coturn_service = compose.split("\n  prometheus:").next().unwrap();
    for line in coturn_service.lines() {
        let Some(flag) = line.trim().strip_prefix("- --") else {
            continue;
        };
        if flag.starts_with("listening-port=") {
            args.push(format!("--listening-port={port}"));
        } else if let Some((name, _)) = flag.split_once("${VIGI_TURN_PASSWORD") {
            // Compose fills the password in from the environment (none is published).
            args.push(format!("--{name}{PASSWORD}"));
        } else if !flag.starts_with("prometheus") {
            args.push(format!("--{flag}"));
        }
    }
    assert_eq!(args.len(), 6, "{args:?}");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let srv = start_server_on(port, &argv);
    let live = allocate_in(port, "vigiturn", PASSWORD, "vigi.local")
        .await
        .expect("allocate with the seed's user");
    let relay = live.relay.local_addr().unwrap();
    assert!(relay.port() >= 49152, "{relay}");
    live.close().await;
    assert!(srv.proc.terminate().success());
}

#[test]
fn reload_storm_under_traffic_loses_nothing() {
    // turnutils_uclient relays through 4 allocations while the config (a rotating REST secret,
    // a quota) is reloaded every 50 ms: every message must come back.
    let dir = tmpdir("storm");
    let conf = dir.join("turnserver.conf");
    // Each version is written beside the file and renamed over it, as configuration management
    // does: a SIGHUP that read a half-written file (truncated, `user=` not there yet) would
    // rightly end the allocations of a user it no longer lists (issue 15), which is not what
    // this test is about. It lost every message after such a read, now and then, on a loaded
    // machine.
    let write = {
        let conf = conf.clone();
        let tmp = dir.join("turnserver.conf.new");
        move |i: u32| {
            std::fs::write(
                &tmp,
                format!(
                    "listening-ip=127.0.0.1\nrealm=bench.local\nallow-loopback-peers\n\
                 user=bench:benchpw\nstatic-auth-secret=rotating-{i}\nuser-quota={}\n",
                    10 + i % 3
                ),
            )
            .unwrap();
            std::fs::rename(&tmp, &conf).unwrap();
        }
    };
    write(0);
    let srv = start_server(&["-c", conf.to_str().unwrap(), "-m", "2"]);
    let (_peer, pport) = start_peer();
    let pid = srv.proc.child.id() as i32;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stormer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                write(n);
                // SAFETY: kill(2) on the server we started.
                unsafe {
                    libc::kill(pid, libc::SIGHUP);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        })
    };
    let r = uclient(
        srv.port,
        pport,
        &[
            "-u", "bench", "-w", "benchpw", "-m", "4", "-n", "100", "-l", "100",
        ],
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads = stormer.join().unwrap();
    assert_eq!(r.sent, 400, "sent; output:\n{}", r.output);
    assert_eq!(r.received, 400, "all echoed; output:\n{}", r.output);
    assert!(
        r.lost_line.contains("Total lost packets 0 "),
        "{}",
        r.lost_line
    );
    assert!(reloads >= 5, "only {reloads} reloads during the run");
    eprintln!("{reloads} reloads during the run, 400/400 messages echoed");
    assert!(srv.proc.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn healthcheck_follows_the_configured_listener() {
    // The image's HEALTHCHECK reads where the server listens from VIGI_TURN_HEALTH_FILE: TCP
    // only under --no-udp, a non-default port, an -L without 127.0.0.1 (::1 when there is IPv6).
    let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
    let mut cases = vec![(vec!["--no-udp", "-L", "127.0.0.1"], "tcp 127.0.0.1")];
    if v6 {
        cases.push((vec!["-L", "::1"], "udp ::1"));
    }
    for (extra, want) in cases {
        let dir = tmpdir("health");
        let file = dir.join("health");
        let port = free_port();
        let port_s = port.to_string();
        let mut args = vec!["-n", "-p", &port_s, "--user=a:b"];
        args.extend(&extra);
        let child = Command::new(BIN)
            .args(&args)
            .env("VIGI_TURN_HEALTH_FILE", &file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let proc = Proc {
            child,
            name: "vigi-turn".into(),
        };
        let health = || {
            Command::new("bash")
                .arg(format!("{REPO}/config/healthcheck.sh"))
                .env("VIGI_TURN_HEALTH_FILE", &file)
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        let t0 = Instant::now();
        while !health() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{extra:?}: never healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let target = std::fs::read_to_string(&file).unwrap();
        assert_eq!(target.trim(), format!("{want} {port}"), "{extra:?}");
        assert!(proc.terminate().success());
        assert!(!health(), "{extra:?}: unhealthy once stopped");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A one-shot-per-query DNS stub on 127.0.0.1 answering every A query with 203.0.113.7 and
/// every AAAA query with 2001:db8::7, as OpenDNS answers myip.opendns.com. Stops after `limit`
/// queries or 10 s.
fn stub_resolver(limit: usize) -> (u16, std::thread::JoinHandle<usize>) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut answered = 0;
        let mut buf = [0u8; 512];
        while answered < limit {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            // Header (12 bytes), then the question: labels up to a zero byte, type, class.
            let mut i = 12;
            while i < n && buf[i] != 0 {
                i += 1 + buf[i] as usize;
            }
            let qend = i + 5;
            if qend > n {
                continue;
            }
            let qtype = u16::from_be_bytes([buf[i + 1], buf[i + 2]]);
            let rdata: Vec<u8> = match qtype {
                1 => vec![203, 0, 113, 7],
                28 => "2001:db8::7"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets()
                    .to_vec(),
                _ => continue,
            };
            let mut out = buf[..2].to_vec();
            out.extend([0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
            out.extend(&buf[12..qend]);
            out.extend([0xC0, 0x0C]);
            out.extend(qtype.to_be_bytes());
            out.extend([0, 1, 0, 0, 0, 0]);
            out.extend((rdata.len() as u16).to_be_bytes());
            out.extend(rdata);
            sock.send_to(&out, from).unwrap();
            answered += 1;
        }
        answered
    });
    (port, handle)
}

#[test]
fn detect_external_ip_matches_coturns_helper() {
    require_tool("dig");
    let script = format!("{REPO}/config/detect-external-ip");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .args(args)
            .env_remove("EXTERNAL_IP")
            .env_remove("REAL_EXTERNAL_IP")
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        )
    };
    // REAL_EXTERNAL_IP wins, as in coturn's image, without any lookup.
    assert_eq!(
        run(&[], &[("REAL_EXTERNAL_IP", "198.51.100.4")]),
        (true, "198.51.100.4".into())
    );
    // EXTERNAL_IP of the family asked for.
    let v6 = [("EXTERNAL_IP", "2001:db8::1")];
    assert_eq!(run(&["--ipv6"], &v6), (true, "2001:db8::1".into()));
    // Otherwise DNS is asked (here a stub on loopback): A for IPv4, AAAA for --ipv6.
    let (port, stub) = stub_resolver(2);
    let port = port.to_string();
    let dns = [
        ("DETECT_EXTERNAL_IP_DNS", "127.0.0.1"),
        ("DETECT_EXTERNAL_IP_PORT", &port),
    ];
    assert_eq!(run(&[], &dns), (true, "203.0.113.7".into()));
    assert_eq!(run(&["--ipv6"], &dns), (true, "2001:db8::7".into()));
    assert_eq!(stub.join().unwrap(), 2);
    // No source: nothing printed, non-zero exit.
    let closed = free_port().to_string();
    let none = [
        ("DETECT_EXTERNAL_IP_DNS", "127.0.0.1"),
        ("DETECT_EXTERNAL_IP_PORT", &closed),
    ];
    assert_eq!(run(&[], &none), (false, String::new()));
}
