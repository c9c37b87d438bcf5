//! `vigi-bench`: a TURN load client that takes `turnutils_uclient`'s flags, and a fast UDP echo
//! peer that stands in for `turnutils_peer`.
//!
//! ```text
//! vigi-bench [client] [-m N -n N -l LEN -z MS -e PEER -r PORT -p PORT -u USER -w PASS | -W SECRET
//!                      -s -c -t -y -g -X -x] [--rate MSG/S] [--duration S] [--sweep] [--json] HOST
//! vigi-bench peer [-L ADDR] [-p PORT] [--threads N] [--duration S]
//! ```
//!
//! The client prints the summary lines `turnutils_uclient` prints (so scripts that parse them keep
//! working) and a table, or one JSON object with `--json`. Everything is bounded: by the message
//! count, `--duration`, and a linger time for the last echoes.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Parser};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use vigi_turn::bench::load::{self, Flow, Live, Plan, MIN_PAYLOAD};
use vigi_turn::bench::peer::{self, PeerConfig, PeerCounters};
use vigi_turn::bench::session::{Auth, SessionConfig};
use vigi_turn::bench::stats::{uclient_progress_line, Report, Stats};
use vigi_turn::bench::{setup, PeerPlan};
use vigi_turn::proto::attr;

/// Client mode: turnutils_uclient's flags for the same things, plus rate control.
#[derive(Debug, Parser)]
#[command(
    name = "vigi-bench client",
    about = "TURN load client (turnutils_uclient's flags)",
    after_help = "The UDP echo peer: vigi-bench peer --help",
    disable_help_flag = true
)]
struct ClientArgs {
    #[arg(short = 'h', long, action = ArgAction::Help, help = "Print help")]
    help: Option<bool>,
    /// Number of clients (each one allocation).
    #[arg(short = 'm', default_value_t = 1)]
    clients: usize,
    /// Messages per client (default 5, or unlimited with --duration).
    #[arg(short = 'n')]
    messages: Option<u64>,
    /// Message length in bytes (at least 25: sequence number and timestamp).
    #[arg(short = 'l', default_value_t = 100)]
    length: usize,
    /// Per-client interval in milliseconds (0: as fast as possible).
    #[arg(short = 'z', default_value_t = 20)]
    interval_ms: u64,
    /// Peer address.
    #[arg(short = 'e')]
    peer_addr: Option<IpAddr>,
    /// Peer port.
    #[arg(short = 'r', default_value_t = 3480)]
    peer_port: u16,
    /// TURN server port.
    #[arg(short = 'p', default_value_t = 3478)]
    port: u16,
    /// User name.
    #[arg(short = 'u')]
    user: Option<String>,
    /// Password (long-term credentials).
    #[arg(short = 'w')]
    password: Option<String>,
    /// TURN REST API secret: credentials `expiry:user` are minted from it.
    #[arg(short = 'W')]
    secret: Option<String>,
    /// REST username separator.
    #[arg(short = 'C', default_value_t = ':')]
    separator: char,
    /// Send indications instead of ChannelData.
    #[arg(short = 's')]
    send: bool,
    /// No RTCP allocation (vigi-bench always makes one allocation per client).
    #[arg(short = 'c')]
    no_rtcp: bool,
    /// TCP to the server.
    #[arg(short = 't')]
    tcp: bool,
    /// Client to client: clients in pairs relay to each other's relay address.
    #[arg(short = 'y')]
    client_to_client: bool,
    /// Request an IPv4 relay address.
    #[arg(short = 'X')]
    ipv4: bool,
    /// Request an IPv6 relay address.
    #[arg(short = 'x')]
    ipv6: bool,
    /// DONT-FRAGMENT in Allocate.
    #[arg(short = 'g')]
    dont_fragment: bool,
    /// uclient's mobility/packet mode (accepted, not implemented).
    #[arg(short = 'Y')]
    mode_y: Option<String>,
    /// TLS/DTLS (not implemented).
    #[arg(short = 'S')]
    secure: bool,
    /// Constant offered rate in messages/s over all clients (replaces -z).
    #[arg(long)]
    rate: Option<f64>,
    /// Send for this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Find the highest --rate with loss under --max-loss by bisection.
    #[arg(long)]
    sweep: bool,
    /// Loss threshold for --sweep, percent.
    #[arg(long, default_value_t = 1.0)]
    max_loss: f64,
    /// Seconds per sweep step.
    #[arg(long, default_value_t = 3.0)]
    sweep_step: f64,
    /// Most sweep steps.
    #[arg(long, default_value_t = 12)]
    sweep_steps: u32,
    /// Run a failing sweep step again this many times before believing it (a shared machine's
    /// noise can fail one step).
    #[arg(long, default_value_t = 1)]
    sweep_retries: u32,
    /// Print one JSON object on stdout (other output goes to stderr).
    #[arg(long)]
    json: bool,
    /// Load threads (default: 2, or 1 on a single CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Threads used to set sessions up.
    #[arg(long, default_value_t = 8)]
    setup_threads: usize,
    /// Allocates each setup thread keeps in flight over UDP (1 = one at a time, as turnutils).
    #[arg(long, default_value_t = 32)]
    setup_window: usize,
    /// After setup (and load), hold the allocations this many seconds (RSS measurements).
    #[arg(long)]
    hold: Option<f64>,
    /// Seconds to wait for the last echoes.
    #[arg(long, default_value_t = 2.0)]
    linger: f64,
    /// Socket buffer size of client sockets, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    sock_buf: usize,
    /// TURN server address.
    host: String,
}

/// Peer mode: a UDP echo peer (turnutils_peer's flags).
#[derive(Debug, Parser)]
#[command(
    name = "vigi-bench peer",
    about = "UDP echo peer",
    disable_help_flag = true
)]
struct PeerArgs {
    #[arg(short = 'h', long, action = ArgAction::Help, help = "Print help")]
    help: Option<bool>,
    /// Listening address.
    #[arg(short = 'L', default_value = "0.0.0.0")]
    listen: IpAddr,
    /// Listening UDP port.
    #[arg(short = 'p', default_value_t = 3480)]
    port: u16,
    /// Echo threads (SO_REUSEPORT sockets).
    #[arg(long)]
    threads: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Datagrams per recvmmsg/sendmmsg batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Socket buffer size, bytes.
    #[arg(long, default_value_t = 4 << 20)]
    sock_buf: usize,
    /// Verbose (accepted for turnutils_peer compatibility).
    #[arg(short = 'v')]
    verbose: bool,
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        // The mode word joins the program name, so usage lines read `vigi-bench peer ...`.
        Some("peer") => {
            args.remove(1);
            args[0] = "vigi-bench peer".to_owned();
            run_peer(PeerArgs::parse_from(args))
        }
        Some("client") => {
            args.remove(1);
            args[0] = "vigi-bench client".to_owned();
            run_client(ClientArgs::parse_from(args))
        }
        _ => run_client(ClientArgs::parse_from(args)),
    };
    if let Err(e) = r {
        eprintln!("vigi-bench: {e:#}");
        std::process::exit(1);
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run_peer(a: PeerArgs) -> Result<()> {
    let cfg = PeerConfig {
        addr: SocketAddr::new(a.listen, a.port),
        threads: a.threads.unwrap_or_else(cpus),
        duration: a.duration.map(Duration::from_secs_f64),
        sock_buf: a.sock_buf,
        batch: a.batch,
    };
    let stop = AtomicBool::new(false);
    let counters = PeerCounters::default();
    let t0 = Instant::now();
    peer::run(&cfg, &stop, &counters).with_context(|| format!("echo peer on {}", cfg.addr))?;
    let n = counters.echoed.load(Ordering::Relaxed);
    println!(
        "vigi-bench peer: echoed {n} datagrams ({} bytes) in {:.1} s",
        counters.bytes.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints to stdout, or to stderr when stdout carries JSON.
struct Out {
    json: bool,
}

impl Out {
    fn line(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

fn run_client(a: ClientArgs) -> Result<()> {
    let t_start = Instant::now();
    let out = Out { json: a.json };
    if a.secure {
        bail!("-S (TLS/DTLS) is not implemented in vigi-bench");
    }
    if let Some(y) = &a.mode_y {
        eprintln!("vigi-bench: warning: -Y {y} is not implemented, ignored");
    }
    if !a.no_rtcp {
        eprintln!("vigi-bench: note: one allocation per client (as with -c); no RTCP allocation");
    }
    if a.clients == 0 {
        bail!("-m must be at least 1");
    }
    if a.client_to_client && a.clients % 2 != 0 {
        bail!("-y pairs clients: give an even -m");
    }
    let length = if a.length < MIN_PAYLOAD {
        eprintln!(
            "vigi-bench: warning: -l {} raised to {MIN_PAYLOAD}",
            a.length
        );
        MIN_PAYLOAD
    } else {
        a.length
    };
    vigi_turn::sys::raise_nofile_limit();
    let server = (a.host.as_str(), a.port)
        .to_socket_addrs()
        .with_context(|| format!("server address {}", a.host))?
        .next()
        .context("server address resolves to nothing")?;
    let peers = if a.client_to_client {
        PeerPlan::Pairs
    } else {
        let ip = a
            .peer_addr
            .context("give the peer address with -e (or -y for client to client)")?;
        PeerPlan::Fixed(SocketAddr::new(ip, a.peer_port))
    };
    let auth = match (&a.user, &a.password, &a.secret) {
        (Some(u), _, Some(s)) => Auth::Rest {
            user: u.clone(),
            secret: s.clone(),
            separator: a.separator,
        },
        (Some(u), Some(p), None) => Auth::LongTerm {
            user: u.clone(),
            password: p.clone(),
        },
        (None, None, None) => Auth::None,
        _ => bail!("give -u with -w (long-term) or -W (REST secret)"),
    };
    let family = match (a.ipv4, a.ipv6) {
        (true, _) => Some(attr::FAMILY_IPV4),
        (false, true) => Some(attr::FAMILY_IPV6),
        _ => None,
    };
    let scfg = SessionConfig {
        server,
        tcp: a.tcp,
        auth,
        dont_fragment: a.dont_fragment,
        family,
        sock_buf: a.sock_buf,
    };
    let duration = a.duration.map(Duration::from_secs_f64);
    let messages = match (a.messages, duration) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => 5,
    };
    let send_phase = messages > 0 || a.sweep;

    // ---- setup
    let st = setup(
        &scfg,
        a.clients,
        a.setup_threads,
        a.setup_window,
        peers,
        a.send,
        send_phase,
    );
    let secs = |t: Instant| t.duration_since(t_start).as_secs();
    out.line(&format!(
        "{}: : Total connect time is {}",
        secs(Instant::now()),
        st.total_time.as_secs()
    ));
    out.line(&format!(
        "vigi-bench: {} allocations in {:.3} s ({:.0} allocations/s), {} sessions ready in {:.3} s, {} failed",
        st.allocations,
        st.allocate_time.as_secs_f64(),
        st.allocations_per_s(),
        st.sessions.len(),
        st.total_time.as_secs_f64(),
        st.failures.len()
    ));
    if let Some(e) = st.failures.first() {
        eprintln!("vigi-bench: first setup failure: {e}");
    }
    if st.sessions.is_empty() {
        bail!("no session could be set up");
    }
    let mode = format!(
        "{} {}{}",
        if a.tcp { "tcp" } else { "udp" },
        if a.send { "send" } else { "channel" },
        if a.client_to_client {
            " client-to-client"
        } else {
            ""
        }
    );
    let allocations_per_s = st.allocations_per_s();
    let setup_failures = st.failures.len();
    let connect_time = st.total_time;
    let nsessions = st.sessions.len();
    let threads = a
        .threads
        .unwrap_or_else(|| cpus().min(2))
        .max(1)
        .min(nsessions);

    let mut report = Report {
        clients: nsessions,
        length,
        mode,
        offered_rate: a.rate,
        connect_time,
        allocations_per_s,
        setup_failures,
        transmit_time: Duration::ZERO,
        stats: Stats::default(),
    };

    if !send_phase {
        hold(&out, a.hold);
        if a.json {
            println!("{}", report.json());
        } else {
            print!("{}", report.uclient_lines(secs(Instant::now())));
        }
        drop(st);
        return Ok(());
    }

    let mut flows: Vec<Flow> = st
        .sessions
        .into_iter()
        .enumerate()
        .map(|(i, s)| Flow::new(i as u32, s))
        .collect::<std::io::Result<_>>()?;
    let base = Instant::now();
    let linger = Duration::from_secs_f64(a.linger);
    let interval_for = |rate: Option<f64>| match rate {
        Some(r) if r > 0.0 => Duration::from_secs_f64(nsessions as f64 / r),
        _ => Duration::from_millis(a.interval_ms),
    };

    if a.sweep {
        return sweep(&a, &out, &mut flows, base, threads, length, report);
    }

    let plan = Plan {
        messages,
        interval: interval_for(a.rate),
        duration,
        linger,
        length,
        epoch: 1,
        threads,
        pairs: a.client_to_client,
    };
    let t0 = Instant::now();
    let stats = run_with_progress(&out, &mut flows, &plan, base, nsessions, t_start, a.json)?;
    report.transmit_time = t0.elapsed();
    report.stats = stats;
    if report.offered_rate.is_none() && !plan.interval.is_zero() {
        report.offered_rate = Some(nsessions as f64 / plan.interval.as_secs_f64());
    }
    let now = secs(Instant::now());
    if a.json {
        eprint!("{}", report.uclient_lines(now));
        eprint!("{}", report.table());
        println!("{}", report.json());
    } else {
        print!("{}", report.uclient_lines(now));
        print!("{}", report.table());
    }
    hold(&out, a.hold);
    Ok(())
}

fn hold(out: &Out, secs: Option<f64>) {
    if let Some(h) = secs {
        out.line(&format!("vigi-bench: holding allocations for {h} s"));
        std::thread::sleep(Duration::from_secs_f64(h));
    }
}

/// One data phase with a progress bar on a terminal, or uclient's once-a-second lines otherwise.
fn run_with_progress(
    out: &Out,
    flows: &mut [Flow],
    plan: &Plan,
    base: Instant,
    clients: usize,
    t_start: Instant,
    json: bool,
) -> Result<Stats> {
    let live = Arc::new(Live::default());
    let tty = std::io::stdout().is_terminal() && !json;
    let total = plan
        .messages
        .checked_mul(flows.len() as u64)
        .filter(|&t| t != u64::MAX && plan.messages != u64::MAX);
    let pb = if tty {
        let pb = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} sent {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    };
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let r = load::run(flows, plan, base, &live);
            done.store(true, Ordering::Relaxed);
            r
        });
        let mut next_line = Instant::now() + Duration::from_secs(1);
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let s = live.sent.load(Ordering::Relaxed);
            let r = live.received.load(Ordering::Relaxed);
            pb.set_position(s);
            pb.set_message(format!("{r} echoed"));
            if !tty && Instant::now() >= next_line {
                next_line += Duration::from_secs(1);
                out.line(&uclient_progress_line(
                    t_start.elapsed().as_secs(),
                    clients,
                    (s, r),
                    (
                        live.sent_bytes.load(Ordering::Relaxed),
                        live.received_bytes.load(Ordering::Relaxed),
                    ),
                ));
            }
        }
        h.join()
            .unwrap_or_else(|_| Err(std::io::Error::other("load panicked")))
    });
    pb.finish_and_clear();
    Ok(result?)
}

/// Bisection on the offered rate: double until loss reaches the threshold (or the harness cannot
/// offer the rate), then halve the interval between the best passing and the first failing rate.
/// A failing step is run again before it counts, and the failing bound is tested once more after
/// convergence (climbing again if it passes), so one burst of machine noise does not cap the
/// result. At most `--sweep-steps` steps (plus retries) are run.
fn sweep(
    a: &ClientArgs,
    out: &Out,
    flows: &mut [Flow],
    base: Instant,
    threads: usize,
    length: usize,
    mut report: Report,
) -> Result<()> {
    let n = flows.len() as f64;
    let step = Duration::from_secs_f64(a.sweep_step);
    let mut rate = a.rate.unwrap_or(10_000.0).max(n);
    let mut lo: Option<(f64, Stats)> = None;
    let mut hi: Option<f64> = None;
    let mut rechecked: Vec<u64> = Vec::new();
    for k in 0..a.sweep_steps {
        let plan = Plan {
            messages: u64::MAX,
            interval: Duration::from_secs_f64(n / rate),
            duration: Some(step),
            linger: Duration::from_secs_f64(a.linger.min(1.0)),
            length,
            epoch: 100 + k,
            threads,
            pairs: a.client_to_client,
        };
        let mut tries = 0;
        let (s, offered_ok, pass) = loop {
            let s = load::run(flows, &plan, base, &Live::default())?;
            let offered_ok = s.send_rate() >= 0.95 * rate;
            let pass = offered_ok && s.loss_pct() < a.max_loss;
            if pass || tries >= a.sweep_retries {
                break (s, offered_ok, pass);
            }
            tries += 1;
            out.line(&format!(
                "sweep: step {k} offered {rate:.0} msg/s: loss {:.3} %, trying again",
                s.loss_pct()
            ));
            std::thread::sleep(Duration::from_millis(300));
        };
        out.line(&format!(
            "sweep: step {k} offered {rate:.0} msg/s sent {:.0} msg/s echoed {:.0} msg/s loss {:.3} % rtt p50 {} us p99 {} us -> {}",
            s.send_rate(),
            s.recv_rate(),
            s.loss_pct(),
            if s.rtt_us.is_empty() { 0 } else { s.rtt_us.value_at_quantile(0.5) },
            if s.rtt_us.is_empty() { 0 } else { s.rtt_us.value_at_quantile(0.99) },
            if pass {
                "pass"
            } else if offered_ok {
                "loss"
            } else {
                "harness could not offer this rate"
            }
        ));
        if pass {
            lo = Some((rate, s));
        } else {
            hi = Some(rate);
        }
        let lo_rate = lo.as_ref().map_or(0.0, |l| l.0);
        rate = match hi {
            None => rate * 2.0,
            Some(h) if h - lo_rate > 0.05 * h => (lo_rate + h) / 2.0,
            Some(h) => {
                // Converged. The failing bound may have failed on noise: test it once more,
                // and climb again from there if it passes.
                if rechecked.contains(&h.to_bits()) {
                    break;
                }
                rechecked.push(h.to_bits());
                hi = None;
                h
            }
        };
        // Let queues drain between steps.
        std::thread::sleep(Duration::from_millis(300));
    }
    let (best, stats) = lo.unwrap_or((0.0, Stats::default()));
    out.line(&format!(
        "sweep: highest rate with loss < {} %: {best:.0} msg/s ({:.0} relayed packets/s)",
        a.max_loss,
        2.0 * best
    ));
    report.offered_rate = Some(best);
    report.transmit_time = step;
    report.stats = stats;
    if a.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
