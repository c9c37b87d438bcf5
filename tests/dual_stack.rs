//! Dual allocations (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY) against the real binary, driven by
//! coturn's `turnutils_uclient -Z`: one allocation with an IPv4 and an IPv6 relayed address, and
//! messages relayed to an IPv4 peer through the first and to an IPv6 peer through the second.

mod common;

use common::*;

fn dual_server() -> Server {
    let (min, max) = free_range(40);
    start_server(&[
        "-n",
        "-L",
        "127.0.0.1",
        "-L",
        "::1",
        "-E",
        "127.0.0.1",
        "-E",
        "::1",
        "--allow-loopback-peers",
        "--realm",
        "bench.local",
        "--user",
        "bench:benchpw",
        "--min-port",
        &min.to_string(),
        "--max-port",
        &max.to_string(),
        "-m",
        "2",
    ])
}

/// turnutils_peer echoing on both loopback addresses.
fn dual_peer() -> (Proc, u16) {
    require_tool("turnutils_peer");
    let port = free_port();
    let child = std::process::Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-L", "::1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start turnutils_peer");
    std::thread::sleep(std::time::Duration::from_millis(300));
    (
        Proc {
            child,
            name: "turnutils_peer".into(),
        },
        port,
    )
}

fn run_dual(srv: &Server, peer_ip: &str, peer_port: u16, extra: &[&str]) -> UclientResult {
    require_tool("turnutils_uclient");
    let mut cmd = std::process::Command::new("turnutils_uclient");
    cmd.args(["-Z", "-p", &srv.port.to_string(), "-e", peer_ip])
        .args(["-r", &peer_port.to_string(), "-u", "bench", "-w", "benchpw"])
        .args(extra)
        .arg("127.0.0.1");
    let out = run_with_timeout(&mut cmd, std::time::Duration::from_secs(60));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.split(name).nth(1))
            .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .next_back()
            .unwrap_or(0)
    };
    UclientResult {
        sent: field("tot_send_msgs="),
        received: field("tot_recv_msgs="),
        lost_line: text
            .lines()
            .find(|l| l.contains("Total lost packets"))
            .unwrap_or("")
            .to_owned(),
        output: text,
    }
}

#[track_caller]
fn assert_all_echoed(r: &UclientResult, expect: u64) {
    assert_eq!(r.sent, expect, "sent; output:\n{}", r.output);
    assert_eq!(r.received, expect, "all echoed; output:\n{}", r.output);
    assert!(
        r.lost_line.contains("Total lost packets 0 "),
        "no loss; output:\n{}",
        r.output
    );
    assert!(
        !r.output.contains("cannot be received") && !r.output.contains("error 44"),
        "{}",
        r.output
    );
}

#[test]
fn uclient_dual_allocation_relays_to_an_ipv4_peer() {
    let srv = dual_server();
    let (_peer, pport) = dual_peer();
    let r = run_dual(
        &srv,
        "127.0.0.1",
        pport,
        &["-m", "2", "-n", "30", "-l", "100"],
    );
    assert_all_echoed(&r, 60);
}

#[test]
fn uclient_dual_allocation_relays_to_an_ipv6_peer() {
    // The client is on IPv4; only the IPv6 relayed address of its dual allocation can reach ::1.
    let srv = dual_server();
    let (_peer, pport) = dual_peer();
    let r = run_dual(&srv, "::1", pport, &["-m", "2", "-n", "30", "-l", "100"]);
    assert_all_echoed(&r, 60);
    // Send indications too (-s).
    let r = run_dual(
        &srv,
        "::1",
        pport,
        &["-s", "-m", "1", "-n", "20", "-l", "100"],
    );
    assert_all_echoed(&r, 20);
}

#[test]
fn without_an_ipv6_relay_uclient_dual_allocation_is_refused_its_ipv6_half() {
    // ADDRESS-ERROR-CODE 440 for IPv6: coturn's client gives up on a dual allocation it did not
    // get in full, and nothing reaches the IPv6 peer.
    let srv = start_server(&[
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
    ]);
    let (_peer, pport) = dual_peer();
    let r = run_dual(&srv, "::1", pport, &["-m", "1", "-n", "5", "-l", "100"]);
    assert_eq!(r.received, 0, "{}", r.output);
}
