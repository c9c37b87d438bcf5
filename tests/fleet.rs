//! The fleet through Redis (issue 10): a real `redis-server` (started here on a free loopback
//! port) holds users, REST secrets and realm options in coturn's key schema; real vigi-turn nodes
//! read them, and `turnutils_uclient` and the `turn` crate's client authenticate against them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::turn_client::{raw_allocate_at, raw_allocate_from, Live};
use common::*;
use tokio::net::UdpSocket;
use vigi_turn::engine::auth::{key_md5, mint_rest_credentials, rest_password};

const REALM: &str = "fleet.test";

/// A `redis-server` on 127.0.0.1, without persistence, killed on drop.
struct Redis {
    proc: Option<Proc>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on("127.0.0.1")
    }

    /// Listening on 127.0.0.1 and `extra` (an address of a bridge the test made).
    fn start_on(extra: &str) -> Redis {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "redis-server is not installed: run `apt-get install redis-server` (see .ci/run)"
        );
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "vigi-fleet-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args((extra != "127.0.0.1").then_some(extra))
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = Redis {
            proc: Some(Proc {
                child,
                name: "redis-server".into(),
            }),
            port,
            dir,
        };
        let t0 = Instant::now();
        while r.try_client(0).is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// coturn's connection string for database `db`.
    fn conn_string(&self, db: u32) -> String {
        format!(
            "ip=127.0.0.1 dbname={db} port={} connect_timeout=2",
            self.port
        )
    }

    fn try_client(&self, db: u32) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/{db}", self.port))
            .ok()?
            .get_connection()
            .ok()
    }

    fn run(&self, db: u32, args: &[&str]) {
        let mut c = self.try_client(db).expect("redis connection");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::Value = cmd.query(&mut c).expect("redis command");
    }

    /// Stop Redis now (SIGKILL): an outage, not a shutdown.
    fn kill(&mut self) {
        drop(self.proc.take());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn allocate(port: u16, user: &str, password: &str) -> Result<Live, String> {
    allocate_at(&format!("127.0.0.1:{port}"), user, password).await
}

/// [`allocate`] on any server address (`HOST:PORT`).
async fn allocate_at(server: &str, user: &str, password: &str) -> Result<Live, String> {
    turn_client::allocate(server, user, password, REALM).await
}

/// Retry `allocate` until it succeeds, at most `limit` (the node reads Redis every second).
async fn allocate_within(port: u16, user: &str, password: &str, limit: Duration) -> Live {
    let t0 = Instant::now();
    loop {
        match allocate(port, user, password).await {
            Ok(l) => return l,
            Err(e) if t0.elapsed() > limit => panic!("{user} never allocated: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn node_args<'a>(range: &'a str, min: &'a str, max: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "-n",
        "-L",
        "127.0.0.1",
        "-r",
        REALM,
        "--allow-loopback-peers",
        "--redis-userdb",
        range,
        "--redis-refresh",
        "1",
        "--min-port",
        min,
        "--max-port",
        max,
    ];
    v.extend_from_slice(extra);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_users_are_honoured_and_an_outage_keeps_live_calls_then_fails_closed() {
    let mut redis = Redis::start();
    let alice_key = hex(&key_md5("alice", REALM, "alicepw"));
    redis.run(
        3,
        &[
            "SET",
            &format!("turn/realm/{REALM}/user/alice/key"),
            &alice_key,
        ],
    );
    redis.run(
        3,
        &[
            "SET",
            &format!("turn/realm/{REALM}/user/bob/password"),
            "bobpw",
        ],
    );
    // Another realm's user and another database's user are not ours.
    redis.run(
        3,
        &["SET", "turn/realm/other.test/user/eve/password", "evepw"],
    );
    redis.run(
        0,
        &[
            "SET",
            &format!("turn/realm/{REALM}/user/mallory/password"),
            "mpw",
        ],
    );
    let conn = redis.conn_string(3);
    let (min, max) = free_range(40);
    let (min, max) = (min.to_string(), max.to_string());
    let srv = start_server(&node_args(&conn, &min, &max, &["--redis-max-stale", "8"]));

    // coturn's own client with a user whose hex key is stored.
    let (_peer_proc, peer_port) = start_peer();
    let r = uclient(
        srv.port,
        peer_port,
        &["-u", "alice", "-w", "alicepw", "-n", "20", "-m", "2"],
    );
    assert_eq!(r.sent, 40, "uclient output:\n{}", r.output);
    assert_eq!(r.received, 40, "uclient output:\n{}", r.output);

    // The `turn` crate with a stored password; wrong passwords and foreign users fail.
    let live = allocate(srv.port, "bob", "bobpw")
        .await
        .expect("bob allocates");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    live.round_trip(&peer, "bob").await.unwrap();
    assert!(allocate(srv.port, "bob", "wrong").await.is_err());
    assert!(
        allocate(srv.port, "eve", "evepw").await.is_err(),
        "other realm"
    );
    assert!(
        allocate(srv.port, "mallory", "mpw").await.is_err(),
        "other db"
    );

    // A user written while the node runs is honoured without a restart.
    redis.run(
        3,
        &[
            "SET",
            &format!("turn/realm/{REALM}/user/carol/password"),
            "carolpw",
        ],
    );
    let carol = allocate_within(srv.port, "carol", "carolpw", Duration::from_secs(30)).await;
    carol.close().await;

    // Redis goes away mid-session: the live allocation keeps relaying, new auth works from the
    // cache while it is younger than --redis-max-stale...
    redis.kill();
    let killed = Instant::now();
    live.round_trip(&peer, "redis down").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = allocate(srv.port, "alice", "alicepw")
        .await
        .expect("alice from the cache");
    a.close().await;
    live.round_trip(&peer, "redis still down").await.unwrap();
    // ...then fails closed, while the live allocation still relays.
    let wait = Duration::from_secs(12).saturating_sub(killed.elapsed());
    tokio::time::sleep(wait).await;
    assert!(
        allocate(srv.port, "alice", "alicepw").await.is_err(),
        "a cache older than --redis-max-stale is not used"
    );
    live.round_trip(&peer, "after max-stale").await.unwrap();
    live.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_secret_rotated_in_redis_is_honoured_without_restart_and_realm_quota_applies() {
    let redis = Redis::start();
    let secrets = format!("turn/realm/{REALM}/secret");
    redis.run(0, &["SADD", &secrets, "first-secret"]);
    redis.run(0, &["SET", &format!("turn/realm/{REALM}/user-quota"), "1"]);
    let conn = redis.conn_string(0);
    let (min, max) = free_range(40);
    let (min, max) = (min.to_string(), max.to_string());
    let srv = start_server(&node_args(&conn, &min, &max, &["--use-auth-secret"]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = mint_rest_credentials(b"first-secret", "dana", 3600, now, ':');
    let live = allocate(srv.port, &old.username, &old.password)
        .await
        .expect("first secret");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    live.round_trip(&peer, "first").await.unwrap();
    // The realm's user-quota (1) from Redis holds.
    assert!(
        allocate(srv.port, &old.username, &old.password)
            .await
            .is_err(),
        "user-quota 1 from turn/realm/{REALM}/user-quota"
    );

    // Rotate: the new secret is accepted, the old one no longer.
    redis.run(0, &["SADD", &secrets, "second-secret"]);
    redis.run(0, &["SREM", &secrets, "first-secret"]);
    let new = mint_rest_credentials(b"second-secret", "erin", 3600, now, ':');
    let fresh = allocate_within(
        srv.port,
        &new.username,
        &new.password,
        Duration::from_secs(30),
    )
    .await;
    fresh.round_trip(&peer, "second").await.unwrap();
    let other = mint_rest_credentials(b"first-secret", "frank", 3600, now, ':');
    assert!(
        allocate(srv.port, &other.username, &other.password)
            .await
            .is_err(),
        "the removed secret is refused"
    );
    // The allocation made with the old secret keeps relaying.
    live.round_trip(&peer, "after rotation").await.unwrap();
    fresh.close().await;
    live.close().await;
}

#[test]
fn bad_redis_connection_string_is_refused_before_binding() {
    let out = Command::new(BIN)
        .args(["-n", "--redis-userdb", "ip=127.0.0.1 colour=blue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--redis-userdb") && err.contains("colour"),
        "one line naming the flag: {err}"
    );
}

/// Start Debian's coturn on 127.0.0.1 with `args`; wait until it answers STUN.
fn start_coturn(port: u16, dir: &std::path::Path, args: &[&str]) -> Proc {
    require_tool("turnserver");
    let (rmin, rmax) = free_range(20);
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
        ])
        .args(["--listening-port", &port.to_string()])
        .args([
            "--min-port",
            &rmin.to_string(),
            "--max-port",
            &rmax.to_string(),
        ])
        .args([
            "--allow-loopback-peers",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
        ])
        .args(["--realm", REALM, "--no-stdout-log"])
        .arg("--pidfile")
        .arg(dir.join("pid"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start coturn");
    let proc = Proc {
        child,
        name: "turnserver".into(),
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let t0 = Instant::now();
    while binding_udp(addr, Duration::from_millis(200)).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "coturn did not start"
        );
    }
    proc
}

fn assert_relayed(r: &UclientResult, n: u64, who: &str) {
    assert_eq!(r.sent, n, "{who}: uclient output:\n{}", r.output);
    assert_eq!(r.received, n, "{who}: uclient output:\n{}", r.output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_and_vigi_turn_share_one_redis_user_database() {
    require_tool("turnadmin");
    let redis = Redis::start();
    let conn = redis.conn_string(2);
    // vigi-turn's writer puts a user and a REST secret in the database...
    let rc: vigi_turn::config::RedisConn = conn.parse().unwrap();
    let mut c = vigi_turn::fleet::connect(&rc).await.unwrap();
    vigi_turn::fleet::userdb::write_user(&mut c, REALM, "walt", "waltpw")
        .await
        .unwrap();
    vigi_turn::fleet::userdb::add_secret(&mut c, REALM, "our-secret")
        .await
        .unwrap();
    // ...and coturn's turnadmin another user and secret.
    let admin = |args: &[&str]| {
        let out = run_with_timeout(
            Command::new("turnadmin").args(args).args(["-N", &conn]),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "turnadmin {args:?}: {out:?}");
    };
    admin(&["-a", "-u", "tess", "-r", REALM, "-p", "tesspw"]);
    admin(&["-s", "their-secret", "-r", REALM]);

    let (_peer, peer_port) = start_peer();
    let uc = |port: u16, user: &str, pw: &str| {
        uclient(
            port,
            peer_port,
            &["-u", user, "-w", pw, "-n", "10", "-m", "1"],
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ours = mint_rest_credentials(b"our-secret", "uma", 600, now, ':');
    let theirs = mint_rest_credentials(b"their-secret", "vic", 600, now, ':');

    // coturn reads what vigi-turn wrote (and its own).
    let cport = free_port();
    let coturn = start_coturn(
        cport,
        &redis.dir,
        &["--lt-cred-mech", "--redis-userdb", &conn],
    );
    assert_relayed(&uc(cport, "walt", "waltpw"), 20, "coturn, walt (ours)");
    assert_relayed(&uc(cport, "tess", "tesspw"), 20, "coturn, tess (turnadmin)");
    drop(coturn);
    let cport = free_port();
    let coturn = start_coturn(
        cport,
        &redis.dir,
        &["--use-auth-secret", "--redis-userdb", &conn],
    );
    assert_relayed(
        &uc(cport, &ours.username, &ours.password),
        20,
        "coturn, our secret",
    );
    drop(coturn);

    // vigi-turn reads what turnadmin wrote (and its own).
    let (min, max) = free_range(20);
    let (min, max) = (min.to_string(), max.to_string());
    let lt = start_server(&node_args(&conn, &min, &max, &[]));
    assert_relayed(
        &uc(lt.port, "tess", "tesspw"),
        20,
        "vigi-turn, tess (turnadmin)",
    );
    assert_relayed(&uc(lt.port, "walt", "waltpw"), 20, "vigi-turn, walt (ours)");
    drop(lt);
    let rest = start_server(&node_args(&conn, &min, &max, &["--use-auth-secret"]));
    assert_relayed(
        &uc(rest.port, &theirs.username, &theirs.password),
        20,
        "vigi-turn, turnadmin's secret",
    );
    assert_relayed(
        &uc(rest.port, &ours.username, &ours.password),
        20,
        "vigi-turn, our secret",
    );
}

/// Allocate over raw STUN on 127.0.0.1:`port` (see [`raw_allocate_at`]).
fn raw_allocate(port: u16, user: &str, password: &str) -> (u16, Option<std::net::SocketAddr>) {
    raw_allocate_at(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        user,
        password,
    )
}

/// Allocations a node logged as started.
fn sessions_started(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(": new, realm="))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_server_redirects_allocates_and_clients_follow() {
    let dir = std::env::temp_dir().join(format!("vigi-fleet-alt-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let common = [
        "-n",
        "-L",
        "127.0.0.1",
        "-r",
        REALM,
        "--allow-loopback-peers",
        "--user",
        "alice:alicepw",
    ];
    let with = |log: &std::path::Path, extra: &[&str]| {
        let mut v: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        v.extend(["--log-file".into(), log.display().to_string()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let b_args = with(&log_b, &[]);
    let b = start_server(&b_args.iter().map(String::as_str).collect::<Vec<_>>());
    let b_addr = format!("127.0.0.1:{}", b.port);
    // Node A's list also names itself (a fleet-wide config): it never redirects to itself.
    let a_port = free_port();
    let a_self = format!("127.0.0.1:{a_port}");
    let a_args = with(
        &log_a,
        &["--alternate-server", &a_self, "--alternate-server", &b_addr],
    );
    let mut all = vec!["-p".to_owned(), a_port.to_string()];
    all.extend(a_args);
    let a = start_server_on(a_port, &all.iter().map(String::as_str).collect::<Vec<_>>());

    // A raw client gets a signed 300 naming B (twice: A skips itself in the round robin), and
    // the follow-up on B allocates.
    for _ in 0..2 {
        let b_sock: std::net::SocketAddr = b_addr.parse().unwrap();
        assert_eq!(
            raw_allocate(a.port, "alice", "alicepw"),
            (300, Some(b_sock))
        );
    }
    assert_eq!(raw_allocate(b.port, "alice", "alicepw").0, 0);

    // coturn's client follows the redirect: every allocation lands on B, none on A.
    let before_b = sessions_started(&log_b);
    let (_peer, peer_port) = start_peer();
    let r = uclient(
        a.port,
        peer_port,
        &["-u", "alice", "-w", "alicepw", "-n", "10", "-m", "1"],
    );
    assert_eq!(r.sent, 20, "uclient output:\n{}", r.output);
    assert_eq!(r.received, 20, "uclient output:\n{}", r.output);
    let t0 = Instant::now();
    while sessions_started(&log_b) < before_b + 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "B logged the sessions"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sessions_started(&log_a), 0, "A relayed nothing itself");

    // The `turn` crate does not follow a 300: its Allocate on A fails, on B it works.
    assert!(allocate(a.port, "alice", "alicepw").await.is_err());
    allocate(b.port, "alice", "alicepw")
        .await
        .unwrap()
        .close()
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The heartbeat node `name` last wrote, once `ready` holds for it (at most 30 s).
fn heartbeat_where(
    redis: &Redis,
    name: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut c = redis.try_client(0).expect("redis connection");
    let t0 = Instant::now();
    loop {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("vigi-turn/node/{name}"))
            .query(&mut c)
            .unwrap();
        let h = v.and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok());
        match h {
            Some(h) if ready(&h) => return h,
            h => assert!(
                t0.elapsed() < Duration::from_secs(30),
                "heartbeat of {name}: {h:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until node `name` has read the others' heartbeats at least once after this call (it was
/// a 3 s sleep). Each second a node writes its heartbeat and then reads the others'; the second
/// heartbeat it writes after this call comes after a whole read begun after it.
fn read_heartbeats_since_now(redis: &Redis, name: &str) {
    let now = vigi_turn::fleet::unix_now();
    let first = heartbeat_where(redis, name, |h| h["unix"].as_u64() > Some(now))["unix"]
        .as_u64()
        .unwrap();
    heartbeat_where(redis, name, |h| h["unix"].as_u64() > Some(first));
}

#[test]
fn loaded_node_redirects_to_a_peer_under_its_threshold_and_loaded_nodes_never_swap_clients() {
    let redis = Redis::start();
    let conn = redis.conn_string(0);
    let dir = std::env::temp_dir().join(format!("vigi-fleet-load-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let node = |name: &str, over: &str, log: &std::path::Path| -> Vec<String> {
        [
            "-n",
            "-L",
            "127.0.0.1",
            "-r",
            REALM,
            "--allow-loopback-peers",
            "--user",
            "alice:alicepw",
            "--redis-statsdb",
            &conn,
            "--node-name",
            name,
            "--redirect-over-allocations",
            over,
            "--log-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([log.display().to_string()])
        .collect()
    };
    // A redirects from 1 allocation on, B from 3.
    let (a_args, b_args) = (node("a", "1", &log_a), node("b", "3", &log_b));
    let a = start_server(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let b = start_server(&b_args.iter().map(String::as_str).collect::<Vec<_>>());
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let from = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    let alloc = |src: u8, port: u16| raw_allocate_from(from(src), at(port), "alice", "alicepw");
    // Under its threshold A serves.
    assert_eq!(alloc(2, a.port), (0, None));
    // Once A has read B's heartbeat (B holds 0 of 3), a new client is sent to B; until then
    // A serves it (a node that knows no peer never redirects).
    let t0 = Instant::now();
    loop {
        match alloc(3, a.port) {
            (300, alt) => {
                assert_eq!(alt, Some(at(b.port)));
                break;
            }
            (0, _) => assert!(t0.elapsed() < Duration::from_secs(10), "A never redirected"),
            other => panic!("A answered {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let h = heartbeat_where(&redis, "b", |_| true);
    assert_eq!(h["redirect_over"], 3, "{h}");
    // The same client back on A is served there: never redirected twice by one node.
    assert_eq!(alloc(3, a.port), (0, None));

    // coturn's client (one allocation: no RTCP) follows the redirect: B relays its session.
    let (a_before, b_before) = (sessions_started(&log_a), sessions_started(&log_b));
    let (_peer, peer_port) = start_peer();
    let r = uclient(
        a.port,
        peer_port,
        &[
            "-u",
            "alice",
            "-w",
            "alicepw",
            "-n",
            "10",
            "-m",
            "1",
            "-c",
            "-L",
            "127.0.0.4",
        ],
    );
    let logs = || {
        format!(
            "uclient output:\n{}\nA:\n{}\nB:\n{}",
            r.output,
            std::fs::read_to_string(&log_a).unwrap_or_default(),
            std::fs::read_to_string(&log_b).unwrap_or_default()
        )
    };
    assert_eq!((r.sent, r.received), (10, 10), "{}", logs());
    let t0 = Instant::now();
    while sessions_started(&log_b) == b_before {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sessions_started(&log_a), a_before, "{}", logs());

    // Fill B to its threshold; it never sends clients to A, which is over its own.
    for src in 5..8 {
        assert_eq!(alloc(src, b.port), (0, None), "B serves client {src}");
    }
    // Both over their thresholds: once each has read the other's heartbeat saying so, neither
    // sends a client to the other.
    heartbeat_where(&redis, "b", |h| h["allocations"].as_u64() >= Some(3));
    heartbeat_where(&redis, "a", |h| h["allocations"].as_u64() >= Some(3));
    read_heartbeats_since_now(&redis, "a");
    read_heartbeats_since_now(&redis, "b");
    for src in 8..11 {
        assert_eq!(alloc(src, a.port), (0, None), "A keeps client {src}");
        assert_eq!(alloc(src + 10, b.port), (0, None), "B keeps client {src}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_statsdb_publishes_coturns_status_and_traffic_and_a_heartbeat() {
    let redis = Redis::start();
    let conn = redis.conn_string(0);
    // A subscriber as coturn's stats tools do it.
    let messages = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sub = {
        let mut c = redis.try_client(0).unwrap();
        let (messages, stop) = (messages.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ps = c.as_pubsub();
            ps.psubscribe("turn/realm/*/user/*/allocation/*").unwrap();
            ps.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(m) = ps.get_message() {
                    let payload: String = m.get_payload().unwrap_or_default();
                    messages
                        .lock()
                        .unwrap()
                        .push((m.get_channel_name().to_owned(), payload));
                }
            }
        })
    };
    let srv = start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "-r",
        REALM,
        "--allow-loopback-peers",
        "--user",
        "alice:alicepw",
        "--redis-statsdb",
        &conn,
        "--node-name",
        "n1",
        "--node-region",
        "eu-west",
    ]);
    let live = allocate(srv.port, "alice", "alicepw").await.unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..3 {
        live.round_trip(&peer, &i.to_string()).await.unwrap();
    }
    // The node writes once a second, from snapshots published once a second: wait for the
    // status key and for a heartbeat counting the allocation (it was a 2.5 s sleep).
    let mut c = redis.try_client(0).unwrap();
    let t0 = Instant::now();
    let keys = loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("turn/realm/{REALM}/user/alice/allocation/*/status"))
            .query(&mut c)
            .unwrap();
        if !keys.is_empty() {
            break keys;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no status key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(keys.len(), 1, "{keys:?}");
    heartbeat_where(&redis, "n1", |h| h["allocations"] == 1);
    let status: String = redis::cmd("GET").arg(&keys[0]).query(&mut c).unwrap();
    assert!(status.starts_with("new lifetime="), "{status}");
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut c).unwrap();
    assert!(ttl > 0, "the status key expires with the allocation: {ttl}");
    let id = keys[0].split('/').nth(6).unwrap().to_owned();
    assert_eq!(id.len(), 18, "coturn's 18-digit id: {id}");
    let hb: String = redis::cmd("GET")
        .arg("vigi-turn/node/n1")
        .query(&mut c)
        .unwrap();
    let hb: serde_json::Value = serde_json::from_str(&hb).unwrap();
    assert_eq!(hb["region"], "eu-west");
    assert_eq!(hb["address"], format!("127.0.0.1:{}", srv.port));
    assert_eq!(hb["allocations"], 1);
    assert_eq!(hb["draining"], false);
    assert!(hb["free_ports"].as_u64().unwrap() > 0);
    let ttl: i64 = redis::cmd("TTL")
        .arg("vigi-turn/node/n1")
        .query(&mut c)
        .unwrap();
    assert!((1..=5).contains(&ttl), "heartbeat TTL {ttl}");

    live.close().await;
    // Deleted within a few seconds (it was a 2.5 s sleep, then one look).
    let t0 = Instant::now();
    loop {
        let exists: bool = redis::cmd("EXISTS").arg(&keys[0]).query(&mut c).unwrap();
        if !exists {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the status key is deleted with the allocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The subscriber has the messages published with the deletion once it has seen "deleted"
    // on the status channel (they go out in one pipeline, the status last or not).
    let base = keys[0].strip_suffix("/status").unwrap();
    let t0 = Instant::now();
    loop {
        let got = messages.lock().unwrap().clone();
        let has = |ch: &str, f: &dyn Fn(&str) -> bool| got.iter().any(|(c, p)| c == ch && f(p));
        if has(&keys[0], &|p| p == "deleted")
            && has(&format!("{base}/total_traffic"), &|_| true)
            && has(&format!("{base}/total_traffic/peer"), &|_| true)
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the deletion's messages never came: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sub.join().unwrap();
    let got = messages.lock().unwrap().clone();
    let on = |ch: &str| -> Vec<String> {
        got.iter()
            .filter(|(c, _)| c == ch)
            .map(|(_, p)| p.clone())
            .collect()
    };
    let st = on(&keys[0]);
    assert!(
        st.first().is_some_and(|s| s.starts_with("new lifetime=")),
        "{got:?}"
    );
    assert_eq!(st.last().map(String::as_str), Some("deleted"), "{got:?}");
    // Three messages each way: the client sent 3 (plus the permission) and received 3.
    let sum = |ch: &str, field: &str| -> u64 {
        on(ch)
            .iter()
            .flat_map(|p| p.split(", "))
            .filter_map(|kv| kv.strip_prefix(field))
            .map(|v| v.parse::<u64>().unwrap())
            .sum()
    };
    let traffic = format!("{base}/traffic");
    assert!(sum(&traffic, "sentp=") >= 3, "{got:?}");
    let total = on(&format!("{base}/total_traffic"));
    assert_eq!(total.len(), 1, "{got:?}");
    assert!(total[0].contains("sentp=3,"), "{total:?}");
    assert_eq!(
        sum(&traffic, "sentp="),
        sum(&format!("{base}/total_traffic"), "sentp="),
        "the traffic reports add up to the total"
    );
    assert!(!on(&format!("{base}/total_traffic/peer")).is_empty());

    // A node that stops is gone from the fleet when its heartbeat expires.
    drop(srv);
    let t0 = Instant::now();
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg("vigi-turn/node/n1")
            .query(&mut c)
            .unwrap();
        if !exists {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "heartbeat never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The allocations per user that node `name` last wrote to the fleet's usage hash, once `ready`
/// holds for them (at most 30 s).
fn usage_where(
    redis: &Redis,
    name: &str,
    ready: impl Fn(&std::collections::HashMap<String, u64>) -> bool,
) {
    let mut c = redis.try_client(0).expect("redis connection");
    let t0 = Instant::now();
    loop {
        let u: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(format!("vigi-turn/usage/{REALM}/{name}"))
            .query(&mut c)
            .unwrap();
        if ready(&u) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "usage of {name}: {u:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until node `name` (which holds an allocation, so it writes a usage hash) has read the
/// other nodes' usage at least once after this call. Each second a node rewrites its hash,
/// renewing its TTL, and then reads the others'; the second rewrite seen after this call comes
/// after a whole read begun after it.
fn read_usage_since_now(redis: &Redis, name: &str) {
    let mut c = redis.try_client(0).expect("redis connection");
    let key = format!("vigi-turn/usage/{REALM}/{name}");
    let mut pttl = || -> i64 { redis::cmd("PTTL").arg(&key).query(&mut c).unwrap() };
    let mut last = pttl();
    let mut rewrites = 0;
    let t0 = Instant::now();
    while rewrites < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{name} never rewrote its usage"
        );
        std::thread::sleep(Duration::from_millis(20));
        let now = pttl();
        if now > last {
            rewrites += 1;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_realm_quotas_hold_across_nodes_and_fall_back_to_the_local_count() {
    let mut redis = Redis::start();
    for (u, p) in [("alice", "alicepw"), ("bob", "bobpw"), ("carol", "carolpw")] {
        redis.run(
            0,
            &["SET", &format!("turn/realm/{REALM}/user/{u}/password"), p],
        );
    }
    let conn = redis.conn_string(0);
    let (min, max) = free_range(40);
    let (min, max) = (min.to_string(), max.to_string());
    let a = start_server(&node_args(&conn, &min, &max, &["--user-quota", "2"]));
    let (min2, max2) = free_range(40);
    let (min2, max2) = (min2.to_string(), max2.to_string());
    let b = start_server(&node_args(&conn, &min2, &max2, &["--user-quota", "2"]));
    assert_eq!(raw_allocate(a.port, "alice", "alicepw").0, 0);
    assert_eq!(raw_allocate(b.port, "alice", "alicepw").0, 0);
    // Within about two seconds every node knows the others' counts: alice has 2 in the fleet.
    // (Waited for, not slept: both nodes have written alice's allocation and each has read
    // the other's since.)
    let (na, nb) = (
        format!("127.0.0.1:{}", a.port),
        format!("127.0.0.1:{}", b.port),
    );
    usage_where(&redis, &na, |u| u.get("alice") == Some(&1));
    usage_where(&redis, &nb, |u| u.get("alice") == Some(&1));
    read_usage_since_now(&redis, &na);
    read_usage_since_now(&redis, &nb);
    assert_eq!(raw_allocate(a.port, "alice", "alicepw").0, 486, "node A");
    assert_eq!(raw_allocate(b.port, "alice", "alicepw").0, 486, "node B");
    assert_eq!(
        raw_allocate(a.port, "bob", "bobpw").0,
        0,
        "other users are not affected"
    );
    // The realm's total quota (coturn's key) counts the fleet too: 3 held, room for one more.
    redis.run(0, &["SET", &format!("turn/realm/{REALM}/total-quota"), "4"]);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(raw_allocate(b.port, "carol", "carolpw").0, 0, "the 4th");
    usage_where(&redis, &na, |u| u.get("bob") == Some(&1));
    usage_where(&redis, &nb, |u| u.get("carol") == Some(&1));
    read_usage_since_now(&redis, &na);
    read_usage_since_now(&redis, &nb);
    // Neither user is over the user quota, but the realm holds 4: two on each node.
    assert_eq!(raw_allocate(a.port, "carol", "carolpw").0, 486, "realm, A");
    assert_eq!(raw_allocate(b.port, "bob", "bobpw").0, 486, "realm, B");
    // Redis goes away: after the fleet count is too old, each node counts its own (1 < 2).
    redis.kill();
    tokio::time::sleep(Duration::from_millis(7000)).await;
    assert_eq!(raw_allocate(a.port, "alice", "alicepw").0, 0, "local count");
    assert_eq!(
        raw_allocate(a.port, "alice", "alicepw").0,
        486,
        "local quota holds"
    );
    // A holds 3 of the realm's 4 (the last good read of Redis still says 4).
    assert_eq!(raw_allocate(a.port, "carol", "carolpw").0, 0, "local total");
    assert_eq!(
        raw_allocate(a.port, "carol", "carolpw").0,
        486,
        "local total holds"
    );
}

// ------------------------------------------------------------------ three nodes in namespaces

/// Network namespaces with one veth each, joined by a bridge in the root namespace that holds
/// `<prefix>.1`; namespace `i` (1-based) has `<prefix>.(10+i)`. Removed on drop.
struct Net {
    tag: String,
    prefix: String,
    count: usize,
}

impl Net {
    fn new(count: usize) -> Net {
        require_tool("ip");
        // Another run of this test on the machine (another worktree, another CI job) makes its
        // own bridge: a /24 already on an interface, or a bridge name already taken, is skipped
        // (two bridges holding one subnet break routing for both; a taken name failed `ip`).
        let (tag, prefix) = (0..50)
            .find_map(|_| {
                let tag = format!("{:04x}", rand::random::<u16>());
                let prefix = format!("10.213.{}", 10 + rand::random::<u8>() % 200);
                let addrs = Command::new("ip")
                    .args(["-4", "-o", "addr"])
                    .output()
                    .ok()?;
                if String::from_utf8_lossy(&addrs.stdout).contains(&format!(" {prefix}.")) {
                    return None;
                }
                let br = format!("vtb{tag}");
                let made = Command::new("ip")
                    .args(["link", "add", &br, "type", "bridge"])
                    .output()
                    .ok()?;
                made.status.success().then_some((tag, prefix))
            })
            .expect("a free bridge name and subnet");
        let br = format!("vtb{tag}");
        let mut net = Net {
            tag: tag.clone(),
            prefix: prefix.clone(),
            count: 0,
        };
        sh(&["ip", "addr", "add", &format!("{prefix}.1/24"), "dev", &br]);
        sh(&["ip", "link", "set", &br, "up"]);
        for i in 1..=count {
            let ns = format!("vtn{tag}{i}");
            let (host, inner) = (format!("vth{tag}{i}"), format!("vtp{tag}{i}"));
            sh(&["ip", "netns", "add", &ns]);
            net.count = i;
            sh(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &inner,
            ]);
            sh(&["ip", "link", "set", &inner, "netns", &ns]);
            sh(&["ip", "link", "set", &host, "master", &br, "up"]);
            let ip = format!("{}/24", net.ip(i));
            sh(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &ip, "dev", &inner,
            ]);
            sh(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up",
            ]);
            sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        net
    }

    fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 10 + i)
    }

    fn ns(&self, i: usize) -> String {
        format!("vtn{}{i}", self.tag)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("vtb{}", self.tag)])
            .output();
    }
}

/// A vigi-turn in namespace `i` on `<ip>:3478`, answering STUN.
fn start_in_ns(net: &Net, i: usize, args: &[&str]) -> Proc {
    let ip = net.ip(i);
    let child = Command::new("ip")
        .args(["netns", "exec", &net.ns(i), BIN])
        .args(["-n", "-L", &ip, "--relay-ip", &ip, "-p", "3478"])
        .args(["--min-port", "50000", "--max-port", "50100"])
        // The peers live on the test's private bridge, a range refused by default.
        .args(["--allowed-peer-ip", &format!("{}.0/24", net.prefix)])
        // One user (alice) stands for every client here, on all three nodes.
        .args(["--user-quota", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vigi-turn in a namespace");
    let mut proc = Proc {
        child,
        name: format!("vigi-turn n{i}"),
    };
    let addr: std::net::SocketAddr = format!("{ip}:3478").parse().unwrap();
    let t0 = Instant::now();
    while binding_udp_from(addr).is_none() {
        if let Some(st) = proc.child.try_wait().unwrap() {
            panic!("node {i} exited: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "node {i} did not start"
        );
    }
    proc
}

fn binding_udp_from(server: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
    use vigi_turn::proto::{attr, Class, Message, MessageBuilder, Method};
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Method::BINDING, Class::Request, &tid);
    s.send_to(&req, server).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    let m = Message::decode(&buf[..n]).ok()?;
    (m.class() == Class::Success).then(|| m.get_xor_address(attr::XOR_MAPPED_ADDRESS))?
}

/// turnutils_uclient from the root namespace to `server`:3478, relaying to the peer on the
/// bridge; (sent, received).
fn uclient_to(
    server: &str,
    peer: &str,
    peer_port: u16,
    user: &str,
    pw: &str,
) -> (u64, u64, String) {
    let out = run_with_timeout(
        Command::new("turnutils_uclient").args([
            "-p",
            "3478",
            "-e",
            peer,
            "-r",
            &peer_port.to_string(),
            "-u",
            user,
            "-w",
            pw,
            "-n",
            "5",
            "-m",
            "1",
            server,
        ]),
        Duration::from_secs(60),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| {
            l.split("start_mclient: tot_send_msgs=")
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut parts = line.split(", tot_recv_msgs=");
    let sent = parts
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let recv = parts
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    (sent, recv, text)
}

#[test]
fn three_nodes_in_namespaces_share_users_secrets_and_drain_to_a_peer_of_their_region() {
    require_tool("turnutils_uclient");
    let net = Net::new(3);
    let redis = Redis::start_on(&net.gateway());
    let key = hex(&key_md5("alice", REALM, "alicepw"));
    redis.run(
        0,
        &["SET", &format!("turn/realm/{REALM}/user/alice/key"), &key],
    );
    let secrets = format!("turn/realm/{REALM}/secret");
    redis.run(0, &["SADD", &secrets, "s1"]);
    let conn = format!("ip={} port={}", net.gateway(), redis.port);
    let node = |i: usize, region: &str| {
        let name = format!("n{i}");
        start_in_ns(
            &net,
            i,
            &[
                "-r",
                REALM,
                "--use-auth-secret",
                "--redis-userdb",
                &conn,
                "--redis-statsdb",
                &conn,
                "--redis-refresh",
                "1",
                "--node-name",
                &name,
                "--node-region",
                region,
                "--drain-timeout",
                "60",
            ],
        )
    };
    let n1 = node(1, "eu");
    let n2 = node(2, "eu");
    let _n3 = node(3, "us");
    let addr =
        |i: usize| -> std::net::SocketAddr { format!("{}:3478", net.ip(i)).parse().unwrap() };

    // A user in Redis allocates and relays on every node (coturn's client, from outside).
    let (_peer, peer_port) = start_peer_on(&[&net.gateway()]);
    for i in 1..=3 {
        let (sent, recv, out) =
            uclient_to(&net.ip(i), &net.gateway(), peer_port, "alice", "alicepw");
        assert_eq!((sent, recv), (10, 10), "node {i}:\n{out}");
    }

    // A secret rotated in Redis is honoured by every node without a restart.
    redis.run(0, &["SADD", &secrets, "s2"]);
    redis.run(0, &["SREM", &secrets, "s1"]);
    let now = vigi_turn::fleet::unix_now();
    let new = mint_rest_credentials(b"s2", "gus", 600, now, ':');
    let old = mint_rest_credentials(b"s1", "hal", 600, now, ':');
    for i in 1..=3 {
        let t0 = Instant::now();
        while raw_allocate_at(addr(i), &new.username, &new.password).0 != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "node {i} never took s2"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(
            raw_allocate_at(addr(i), &old.username, &old.password).0,
            401,
            "node {i}"
        );
    }

    // A user quota of 2 (the realm's, set in Redis now) holds across the nodes (a fresh user:
    // alice's earlier sessions may still be live).
    redis.run(
        0,
        &[
            "SET",
            &format!("turn/realm/{REALM}/user/quinn/password"),
            "quinnpw",
        ],
    );
    redis.run(0, &["SET", &format!("turn/realm/{REALM}/user-quota"), "2"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(raw_allocate_at(addr(1), "quinn", "quinnpw").0, 0);
    assert_eq!(raw_allocate_at(addr(3), "quinn", "quinnpw").0, 0);
    // Every node knows quinn holds 2 once n1 and n3 have written their counts and each node
    // has read them since (it was a 4 s sleep).
    usage_where(&redis, "n1", |u| u.get("quinn") == Some(&1));
    usage_where(&redis, "n3", |u| u.get("quinn") == Some(&1));
    for i in 1..=3 {
        read_usage_since_now(&redis, &format!("n{i}"));
    }
    for i in 1..=3 {
        assert_eq!(
            raw_allocate_at(addr(i), "quinn", "quinnpw").0,
            486,
            "quota on node {i}"
        );
    }
    redis.run(0, &["DEL", &format!("turn/realm/{REALM}/user-quota")]);
    std::thread::sleep(Duration::from_millis(1500));

    // n1 drains: new Allocates go to n2 (its region; n3 in "us" has fewer allocations but is
    // not chosen), and coturn's client follows. n2 does not redirect back.
    unsafe {
        libc::kill(n1.child.id() as i32, libc::SIGUSR1);
    }
    let t0 = Instant::now();
    loop {
        let got = raw_allocate_at(addr(1), "alice", "alicepw");
        if got.0 == 300 {
            assert_eq!(got.1, Some(addr(2)));
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "n1 never redirected: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (sent, recv, out) = uclient_to(&net.ip(1), &net.gateway(), peer_port, "alice", "alicepw");
    assert_eq!((sent, recv), (10, 10), "followed to n2:\n{out}");
    assert_eq!(
        raw_allocate_at(addr(2), "alice", "alicepw").0,
        0,
        "n2 serves, no loop"
    );

    // n2 drains too: nobody healthy is left in "eu", so both refuse (403) rather than send a
    // client to a draining node.
    unsafe {
        libc::kill(n2.child.id() as i32, libc::SIGUSR1);
    }
    // Once n2 drains (its heartbeat says so) and each has read the other's heartbeat saying it
    // drains (it was a 3.5 s sleep; until then a node may still redirect to the other, which
    // creates no allocation).
    heartbeat_where(&redis, "n2", |h| h["draining"] == true);
    for i in [2, 1] {
        let t0 = Instant::now();
        loop {
            let got = raw_allocate_at(addr(i), "alice", "alicepw");
            if got == (403, None) {
                break;
            }
            assert_eq!(
                got.0, 300,
                "node {i} neither refuses nor redirects: {got:?}"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "node {i} still redirects: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Redis dies mid-session: a live allocation on n3 keeps relaying, and n3 still
    // authenticates from its cache.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n3 = format!("{}:3478", net.ip(3));
        let live = allocate_at(&n3, "alice", "alicepw")
            .await
            .expect("allocate on n3");
        let p = UdpSocket::bind(format!("{}:0", net.gateway()))
            .await
            .unwrap();
        live.round_trip(&p, "before").await.unwrap();
        let mut redis = redis;
        redis.kill();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        live.round_trip(&p, "redis down").await.unwrap();
        let (sent, recv, out) =
            uclient_to(&net.ip(3), &net.gateway(), peer_port, "alice", "alicepw");
        assert_eq!((sent, recv), (10, 10), "n3 from its cache:\n{out}");
        live.round_trip(&p, "after").await.unwrap();
        live.close().await;
    });
}

/// GET `path` from 127.0.0.1:`port` with extra header lines; the JSON body of a 200.
fn http_json(port: u16, path: &str, headers: &str) -> serde_json::Value {
    let (status, body) = http(port, "GET", path, headers);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn turn_credentials_name_the_nearest_healthy_nodes_from_the_heartbeats() {
    let redis = Redis::start();
    let conn = redis.conn_string(0);
    let node = |region: &str, extra: &[&str]| {
        let mut args = vec![
            "-n",
            "-L",
            "127.0.0.1",
            "-r",
            REALM,
            "--static-auth-secret",
            "s",
            "--redis-statsdb",
            &conn,
            "--node-region",
            region,
        ];
        args.extend_from_slice(extra);
        start_server(&args)
    };
    let sig = free_port();
    let sig_addr = format!("127.0.0.1:{sig}");
    let a = node(
        "eu",
        &["--signaling-listen", &sig_addr, "--signaling-insecure"],
    );
    let b = node("eu", &[]);
    let c = node("us", &[]);
    // Give b one allocation, so a is the least loaded of "eu".
    let now = vigi_turn::fleet::unix_now();
    let cred = mint_rest_credentials(b"s", "ivy", 600, now, ':');
    assert_eq!(raw_allocate(b.port, &cred.username, &cred.password).0, 0);
    std::thread::sleep(Duration::from_millis(2500));
    let udp = |port: u16| format!("turn:127.0.0.1:{port}?transport=udp");
    let uris = |v: &serde_json::Value| -> Vec<String> {
        v["uris"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .filter(|u| u.ends_with("udp"))
            .collect()
    };
    let eu = http_json(sig, "/api/turn-credentials?region=eu", "");
    assert_eq!(uris(&eu), [udp(a.port), udp(b.port), udp(c.port)], "{eu}");
    assert_eq!(eu["iceServers"][0]["urls"].as_array().unwrap().len(), 6);
    let us = http_json(sig, "/api/turn-credentials", "X-Region: us\r\n");
    assert_eq!(uris(&us)[0], udp(c.port), "{us}");
    // A node that stops drops out once its heartbeat expires.
    drop(c);
    std::thread::sleep(Duration::from_millis(7000));
    let us = http_json(sig, "/api/turn-credentials?region=us", "");
    assert_eq!(uris(&us), [udp(a.port), udp(b.port)], "{us}");
}

/// Poll `GET path` on the signaling companion at 127.0.0.1:`port` until `done(status, body)`
/// holds, for at most `limit` (the node reads Redis every second); the last answer.
async fn credentials_until(
    port: u16,
    path: &str,
    limit: Duration,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let t0 = Instant::now();
    loop {
        let answer = std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()
            .then(|| http(port, "GET", path, ""))
            .map(|(status, body)| {
                let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                (status, json)
            });
        if let Some((status, json)) = &answer {
            if done(*status, json) {
                return (*status, json.clone());
            }
        }
        assert!(
            t0.elapsed() < limit,
            "{path}: not the expected answer within {limit:?}; last {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `username` and `password` of a credential answer, checked to be minted with `secret`.
fn minted_with(v: &serde_json::Value, secret: &[u8]) -> bool {
    let (Some(user), Some(pw)) = (v["username"].as_str(), v["password"].as_str()) else {
        return false;
    };
    pw == rest_password(secret, user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_are_minted_with_the_newest_redis_secret_and_allocate() {
    require_tool("turnadmin");
    let mut redis = Redis::start();
    let conn = redis.conn_string(0);
    // The secrets are written as an operator would: coturn's turnadmin on the shared database.
    let admin = |args: &[&str]| {
        let out = run_with_timeout(
            Command::new("turnadmin")
                .args(args)
                .args(["-r", REALM, "-N", &conn]),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "turnadmin {args:?}: {out:?}");
    };
    admin(&["-s", "first-secret"]);
    let sig = free_port();
    let sig_addr = format!("127.0.0.1:{sig}");
    let (min, max) = free_range(20);
    let (min, max) = (min.to_string(), max.to_string());
    // --use-auth-secret and no --static-auth-secret: the secrets are only in Redis.
    let extra = [
        "--use-auth-secret",
        "--redis-max-stale",
        "3",
        "--signaling-listen",
        &sig_addr,
        "--signaling-insecure",
    ];
    let srv = start_server(&node_args(&conn, &min, &max, &extra));
    let path = "/api/turn-credentials?userId=alice";
    let ok_with = |secret: &'static [u8]| {
        move |status: u16, v: &serde_json::Value| status == 200 && minted_with(v, secret)
    };
    let (_, first) =
        credentials_until(sig, path, Duration::from_secs(10), ok_with(b"first-secret")).await;
    let username = first["username"].as_str().unwrap().to_owned();
    assert!(username.ends_with(":alice"), "{first}");
    // The URI the endpoint names is this node; the turn crate's client allocates through it.
    let uri = format!("turn:127.0.0.1:{}?transport=udp", srv.port);
    assert_eq!(first["iceServers"][0]["urls"][0], uri.as_str(), "{first}");
    let server = uri
        .trim_start_matches("turn:")
        .trim_end_matches("?transport=udp");
    let pw = |v: &serde_json::Value| v["password"].as_str().unwrap().to_owned();
    let live = allocate_at(server, &username, &pw(&first))
        .await
        .expect("credentials minted with the Redis secret allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    live.round_trip(&peer, "first secret").await.unwrap();

    // Rotation, step 1: a new secret is added; new credentials use it (its bytes sort before
    // the old one's, so only the order in which the node saw them decides).
    admin(&["-s", "another-secret"]);
    let (_, second) = credentials_until(
        sig,
        path,
        Duration::from_secs(10),
        ok_with(b"another-secret"),
    )
    .await;
    let fresh = allocate_at(server, second["username"].as_str().unwrap(), &pw(&second))
        .await
        .expect("credentials minted with the new secret allocate");
    fresh.round_trip(&peer, "new secret").await.unwrap();

    // Step 2: the old secret is removed. Once the node has read that (credentials minted with
    // it are refused), the endpoint still mints with the new one, and those still allocate.
    admin(&["-X", "first-secret"]);
    let t0 = Instant::now();
    loop {
        let old = mint_rest_credentials(
            b"first-secret",
            "bob",
            600,
            vigi_turn::fleet::unix_now(),
            ':',
        );
        if raw_allocate(srv.port, &old.username, &old.password).0 == 401 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the removed secret is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, third) = credentials_until(sig, path, Duration::from_secs(2), |status, v| {
        status == 200 && v["username"].is_string()
    })
    .await;
    assert!(minted_with(&third, b"another-secret"), "{third}");
    let after = allocate_at(server, third["username"].as_str().unwrap(), &pw(&third))
        .await
        .expect("credentials minted after the old secret's removal allocate");
    after.round_trip(&peer, "after removal").await.unwrap();
    live.round_trip(&peer, "first secret, after rotation")
        .await
        .unwrap();

    // Redis goes away: once the snapshot is older than --redis-max-stale (3 s) the engine
    // refuses the database's secrets, and the endpoint answers 503 instead of minting them.
    redis.kill();
    let (status, gone) = credentials_until(sig, path, Duration::from_secs(15), |status, _| {
        status != 200
    })
    .await;
    assert_eq!(status, 503, "{gone}");
    let msg = gone["error"].as_str().unwrap_or_default();
    assert!(msg.contains("--redis-max-stale"), "{gone}");
    after.close().await;
    fresh.close().await;
    live.close().await;
}
