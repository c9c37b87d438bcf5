//! Real-world coturn configurations start vigi-turn unchanged: the files Jitsi Meet, Synapse,
//! Nextcloud Talk and Debian's package use (tests/fixtures/coturn/, written from what those
//! projects configure), each read with `-c` by the real binary, which must answer STUN on
//! 127.0.0.1 and log neither an error nor an unknown option. Where a file names a certificate,
//! the test makes one; ports are moved to free ones on the command line (which beats the file).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binding_udp, free_port, Proc, BIN};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/coturn");

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vigi-coturn-conf-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fixture with its `@NAME@` markers filled in, written into `dir`.
fn materialize(name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let text = text
        .replace("@CERT@", &cert.display().to_string())
        .replace("@PKEY@", &key.display().to_string())
        .replace("@SECRET@", "fixture-secret")
        .replace("@DIR@", &dir.display().to_string());
    let path = dir.join("turnserver.conf");
    std::fs::write(&path, text).unwrap();
    path
}

/// Start with `-c FILE` on free ports; wait for a STUN answer; return (stdout+stderr, log file).
fn start_with(name: &str) -> (String, Option<String>) {
    let dir = tmpdir(name.trim_end_matches(".conf"));
    let conf = materialize(name, &dir);
    let port = free_port();
    let tls_port = free_port();
    let out_path = dir.join("out.txt");
    let out = std::fs::File::create(&out_path).unwrap();
    let child = Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .args([
            format!("--listening-port={port}"),
            format!("--tls-listening-port={tls_port}"),
            "--listening-ip=127.0.0.1".to_owned(),
        ])
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start vigi-turn");
    let mut proc = Proc {
        child,
        name: format!("vigi-turn -c {name}"),
    };
    let t0 = Instant::now();
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while binding_udp(server, Duration::from_millis(200)).is_none() {
        if let Some(st) = proc.child.try_wait().unwrap() {
            panic!(
                "{name}: exited early with {st}: {}",
                std::fs::read_to_string(&out_path).unwrap()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{name}: no STUN answer"
        );
    }
    assert!(proc.terminate().success(), "{name}: unclean exit");
    let text = std::fs::read_to_string(&out_path).unwrap();
    let log = std::fs::read_to_string(dir.join("turn.log")).ok();
    let _ = std::fs::remove_dir_all(&dir);
    (text, log)
}

fn assert_clean(name: &str, text: &str) {
    for bad in ["ERROR", "unknown option", "not supported"] {
        assert!(!text.contains(bad), "{name}: `{bad}` in output:\n{text}");
    }
}

#[test]
fn jitsi_meet_turnserver_conf_starts() {
    let (out, _) = start_with("jitsi.conf");
    assert_clean("jitsi", &out);
    assert!(
        out.contains("auth: TURN REST API, 1 static secret(s)"),
        "{out}"
    );
    assert!(out.contains("realm meet.example.org"), "{out}");
    // coturn 4.6's TLS switches are said to be no-ops, not silently dropped.
    assert!(out.contains("no-tlsv1: accepted but ignored"), "{out}");
}

#[test]
fn synapse_turn_howto_conf_starts() {
    let (out, _) = start_with("synapse.conf");
    assert_clean("synapse", &out);
    // `user-quota=12 # 4 streams ...` is read as coturn's atoi reads it.
    assert!(
        out.contains("user-quota: text after '12' read as a comment"),
        "{out}"
    );
    assert!(out.contains("realm turn.example.org"), "{out}");
}

#[test]
fn nextcloud_talk_conf_starts_and_logs_only_to_its_file() {
    let (out, log) = start_with("nextcloud-talk.conf");
    // --no-stdout-log with a log file: nothing on stdout, everything in the file.
    assert!(out.trim().is_empty(), "stdout should be silent: {out}");
    let log = log.expect("turn.log written");
    assert_clean("nextcloud", &log);
    assert!(log.contains("realm cloud.example.org"), "{log}");
}

#[test]
fn debian_stock_conf_starts() {
    let (out, _) = start_with("debian.conf");
    assert_clean("debian", &out);
    // Debian's file has no users: the summary and a warning say so.
    assert!(out.contains("0 static user(s)"), "{out}");
}

/// Start with `args` (plus a free port) writing stdout and stderr to files in a fresh directory;
/// wait for a STUN answer. Returns the process, its port and the directory.
fn start_logging(args: &[&str]) -> (Proc, u16, PathBuf) {
    let dir = tmpdir("log");
    let port = free_port();
    let child = Command::new(BIN)
        .args(["-n", "-L", "127.0.0.1", "-p", &port.to_string()])
        .args(
            args.iter()
                .map(|a| a.replace("@DIR@", &dir.display().to_string())),
        )
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("stdout")).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("stderr")).unwrap(),
        ))
        .spawn()
        .expect("start vigi-turn");
    let mut proc = Proc {
        child,
        name: "vigi-turn".into(),
    };
    let t0 = Instant::now();
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while binding_udp(server, Duration::from_millis(200)).is_none() {
        assert!(proc.child.try_wait().unwrap().is_none(), "exited early");
        assert!(t0.elapsed() < Duration::from_secs(10), "no STUN answer");
    }
    (proc, port, dir)
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

#[test]
fn log_file_and_stdout_both_unless_no_stdout_log() {
    // As coturn: --log-file adds the file, stdout keeps every line.
    let (proc, _, dir) =
        start_logging(&["--simple-log", "--log-file=@DIR@/turn.log", "--user=a:b"]);
    assert!(proc.terminate().success());
    let (file, stdout) = (read(&dir, "turn.log"), read(&dir, "stdout"));
    assert!(
        file.contains("auth: long-term credentials, 1 static user(s)"),
        "{file}"
    );
    assert!(
        stdout.contains("auth: long-term credentials, 1 static user(s)"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // --no-stdout-log alone: info is gone, but warnings still reach stderr.
    let (proc, _, dir) = start_logging(&["--no-stdout-log", "--mobility"]);
    assert!(proc.terminate().success());
    let (stdout, stderr) = (read(&dir, "stdout"), read(&dir, "stderr"));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("--mobility: accepted but ignored"),
        "{stderr}"
    );
    assert!(stderr.contains("no --user configured"), "{stderr}");
    assert!(!stderr.contains("INFO"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_peer_is_logged_once_with_its_reason() {
    // The README's first check without --allow-loopback-peers: the peer on 127.0.0.1 is refused,
    // and the log says why, at the default level.
    let (proc, port, dir) = start_logging(&["--user=vigi:pw", "--realm=vigi.local"]);
    let peer = free_port();
    let r = common::uclient(
        port,
        peer,
        &["-u", "vigi", "-w", "pw", "-n", "2", "-m", "1", "-l", "100"],
    );
    assert!(proc.terminate().success());
    let stdout = read(&dir, "stdout");
    // uclient binds a channel (the same peer check as CreatePermission) and stops at the 403.
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("refused ChannelBind") && l.contains(" 403 "))
        .collect();
    assert_eq!(lines.len(), 1, "uclient: {}\nserver: {stdout}", r.output);
    assert!(lines[0].contains("INFO"), "{}", lines[0]);
    assert!(lines[0].contains("--allow-loopback-peers"), "{}", lines[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readme_quick_start_relays_through_uclient() {
    // The README's quick start, after the install lines: the server command from its block, on
    // a free port instead of 3478 (the command line beats the file), then coturn's tools.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("## Quick start")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a quick start block");
    assert!(
        block.contains("build-essential"),
        "the apt line installs a C compiler"
    );
    let server_line = block
        .lines()
        .find(|l| l.starts_with("./target/release/vigi-turn"))
        .expect("the server command");
    let args: Vec<&str> = server_line
        .trim_end_matches('&')
        .split_whitespace()
        .skip(1)
        .collect();
    assert_eq!(
        args,
        ["-c", "config/turnserver.conf", "--allow-loopback-peers"]
    );
    for tool in [
        "turnutils_stunclient 127.0.0.1",
        "turnutils_peer -L 127.0.0.1 -p 3480 &",
    ] {
        assert!(block.contains(tool), "{tool}");
    }
    assert!(block
        .contains("turnutils_uclient -u vigiturn -w vigisecret123 -e 127.0.0.1 -r 3480 127.0.0.1"));
    let port = free_port();
    let port_s = port.to_string();
    let mut all = args.clone();
    all.extend(["-p", &port_s]);
    let srv = common::start_server_on(port, &all);
    let (_peer, peer_port) = common::start_peer();
    let r = common::uclient(port, peer_port, &["-u", "vigiturn", "-w", "vigisecret123"]);
    assert!(r.sent > 0 && r.received == r.sent, "{}", r.output);
    assert!(r.lost_line.contains("Total lost packets 0"), "{}", r.output);
    assert!(srv.proc.terminate().success());
}
