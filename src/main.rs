//! `vigi-turn`: configuration, then workers, then signals.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use vigi_turn::config::{AuthMode, Config};
use vigi_turn::engine::Shared;
use vigi_turn::io::{self, RunConfig};

mod logging;
mod notify;
mod ops;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let config = match Config::load(args.iter().cloned()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if config.log.daemon {
        // Forking is the service manager's job: a daemonizing child would escape systemd's
        // and Docker's supervision, readiness and log capture.
        eprintln!(
            "vigi-turn: -o/--daemon is not supported: vigi-turn runs in the foreground; \
             run it under systemd (systemd/vigi-turn.service, Type=notify) or Docker instead"
        );
        std::process::exit(2);
    }
    let logging = logging::Logging::init(&config);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    match run(config, args, &logging) {
        Ok(()) => {}
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("vigi-turn: {e:#}");
            std::process::exit(1);
        }
    }
}

/// `--xdp-interface`: loads the fast path and attaches it to each interface, or says in one line
/// why it cannot (no CAP_BPF/CAP_NET_ADMIN, an old kernel, no such interface, a driver without
/// native XDP). Detached when the returned value drops, at exit.
fn start_fastpath(config: &Config) -> Result<Option<io::fastpath::FastPath>> {
    if config.relay.xdp_interfaces.is_empty() {
        return Ok(None);
    }
    let limits = io::fastpath::MapLimits {
        channels: config.relay.xdp_max_channels,
        allocations: config.relay.xdp_max_allocations,
        permissions: config.relay.xdp_max_permissions,
    };
    let options = io::fastpath::ProgramOptions {
        verify_fingerprint: config.relay.xdp_verify_fingerprint,
    };
    let mut fp = io::fastpath::FastPath::load_with(limits, options)
        .map_err(|e| anyhow::anyhow!("--xdp-interface: {e}"))?;
    let mut attached = Vec::new();
    for iface in &config.relay.xdp_interfaces {
        let mode = fp
            .attach(iface, config.relay.xdp_mode)
            .map_err(|e| anyhow::anyhow!("--xdp-interface: {e}"))?;
        attached.push(format!("{iface} ({} mode)", io::fastpath::mode_name(mode)));
        // The program asks the FIB for the next hop, which answers only for interfaces that
        // forward; without it every packet is passed up (correct, but no fast path).
        if iface != "lo" {
            for family in ["ipv4", "ipv6"] {
                let path = format!("/proc/sys/net/{family}/conf/{iface}/forwarding");
                if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
                    tracing::warn!(
                        "--xdp-interface {iface}: {family} forwarding is off ({path}), so the \
                         fast path passes every {family} packet up; see docs/fast-path.md"
                    );
                }
            }
        }
    }
    tracing::info!("XDP fast path attached to {}", attached.join(", "));
    Ok(Some(fp))
}

fn run(config: Config, args: Vec<OsString>, logging: &logging::Logging) -> Result<()> {
    let nofile = vigi_turn::sys::raise_nofile_limit();
    if nofile < 16_384 {
        tracing::warn!(
            "open files limited to {nofile} (hard limit): fewer than 16k relay sockets fit; \
             raise it (LimitNOFILE=, ulimit -n, docker --ulimit nofile=)"
        );
    }
    let notifier = notify::Notifier::from_env();
    // One runtime for everything beside the workers (HTTP, signaling, Redis, signals), built
    // before anything is bound so that signals are caught from here on.
    let services = config.metrics.prometheus
        || config.admin.admin_listen.is_some()
        || config.signaling.signaling_listen.is_some()
        || config.fleet.redis_userdb.is_some()
        || config.fleet.redis_statsdb.is_some();
    let control =
        vigi_turn::control::ControlPlane::new(services).context("starting the control plane")?;
    let signals = ops::Signals::install(&control)?;
    let listen_ips: Vec<IpAddr> = if config.listeners.listening_ips.is_empty() {
        vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]
    } else {
        config.listeners.listening_ips.clone()
    };
    let wildcard_default = config.listeners.listening_ips.is_empty();
    let relay_ips = resolve_relay_ips(&config);
    if relay_ips.is_empty() && !config.stun.stun_only {
        anyhow::bail!("no relay address: give --relay-ip or --listening-ip");
    }
    // Held until `run` returns: dropping the last reference detaches the program.
    let fastpath = start_fastpath(&config)?.map(|fp| Arc::new(std::sync::Mutex::new(fp)));
    let engine = Arc::new(config.engine_config(relay_ips.clone(), &interface_addrs()));
    let nonce_key = nonce_key(&config);
    let shared = Arc::new(Shared::new(
        config.relay.min_port,
        config.relay.max_port,
        nonce_key,
        std::time::Instant::now(),
    ));
    if let Some(conn) = &config.fleet.redis_userdb {
        start_userdb(&control, &config, conn, &engine.realm, &shared);
    }
    let tls_source = tls_source(&config)?;
    let dtls_context = dtls_context(&config)?;
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    let mut tls = Vec::new();
    let mut dtls = Vec::new();
    for ip in &listen_ips {
        if ip.is_ipv6() && wildcard_default && !ipv6_available() {
            continue;
        }
        let addr = SocketAddr::new(*ip, config.listeners.listening_port);
        if !config.listeners.no_udp {
            udp.push(addr);
            // RFC 5780: answers to CHANGE-REQUEST leave from the alternate port.
            if config.stun.rfc5780 {
                udp.push(SocketAddr::new(*ip, config.listeners.alt_listening_port));
            }
        }
        if !config.listeners.no_tcp {
            tcp.push(addr);
        }
        if tls_source.is_some() {
            tls.push(SocketAddr::new(*ip, config.listeners.tls_listening_port));
        }
        if dtls_context.is_some() {
            dtls.push(SocketAddr::new(*ip, config.listeners.tls_listening_port));
        }
    }
    let rc = RunConfig {
        max_tcp_connections_per_ip: config.sockets.max_tcp_connections_per_ip,
        workers: config.relay.relay_threads,
        udp,
        tcp,
        tls,
        tls_source,
        dtls,
        dtls_context,
        sock_buf_size: config.sockets.sock_buf_size,
        max_tcp_connections: if config.sockets.max_tcp_connections == 0 {
            usize::MAX
        } else {
            config.sockets.max_tcp_connections
        },
        engine,
        shared,
        fastpath: fastpath.clone(),
    };
    let observe = vigi_turn::http::Observe::from(&rc);
    let stats_shared = rc.shared.clone();
    let running = io::start(rc).context("starting listeners")?;
    let node = node_info(&config, &running, &relay_ips);
    let realm = config.engine_realm();
    let directory = Arc::new(vigi_turn::fleet::Directory::default());
    if let Some(conn) = &config.fleet.redis_statsdb {
        start_statsdb(
            &control,
            conn,
            &realm,
            node.clone(),
            &running,
            stats_shared.clone(),
            &relay_ips,
            directory.clone(),
        );
    }
    if let Some(conn) = &config.fleet.redis_userdb {
        vigi_turn::fleet::quota::spawn(
            &control,
            vigi_turn::fleet::quota::QuotaSource {
                conn: conn.clone(),
                realm: realm.clone(),
                node: node.name.clone(),
                workers: running.workers.clone(),
                usage: stats_shared.fleet_usage.clone(),
            },
        );
    }
    let _http =
        vigi_turn::http::spawn(&control, &config, &running, observe).context("starting HTTP")?;
    let _signal = vigi_turn::signal::SignalConfig::from_config(&config)
        .map(|mut s| {
            // With heartbeats in Redis, credentials name the nearest healthy nodes.
            s.fleet = config
                .fleet
                .redis_statsdb
                .as_ref()
                .map(|_| directory.clone());
            // With the REST secrets in Redis, credentials may be minted from its snapshot.
            let rest_api = config.auth.mode == AuthMode::RestApi || config.auth.use_auth_secret;
            let rest_in_db = rest_api && config.fleet.redis_userdb.is_some();
            s.userdb = rest_in_db.then(|| stats_shared.userdb.clone());
            vigi_turn::signal::spawn(&control, s)
        })
        .transpose()
        .context("starting signaling")?;
    if let (Some(h), Some(sig)) = (&_http, &_signal) {
        h.monitor.attach_calls(sig.calls.clone());
    }
    if let Some(p) = &config.log.pidfile {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::warn!("cannot write pid file {}: {e}", p.display());
        }
    }
    // Every listener is bound: privileged ports are no longer needed.
    if let Err(e) = ops::drop_privileges(
        config.log.proc_user.as_deref(),
        config.log.proc_group.as_deref(),
    ) {
        running.shutdown();
        return Err(e.context("dropping privileges"));
    }
    for line in startup_summary(&config, &running, &relay_ips) {
        tracing::info!("{line}");
    }
    write_health_target(&running);
    let pidfile = config.log.pidfile.clone();
    let config_drain_min = config.log.drain_min_allocations;
    let mut ops = ops::Ops {
        args,
        config,
        relay_ips,
        running: &running,
        notifier: &notifier,
        logging,
    };
    let exit = ops.serve(&control, signals);
    notifier.stopping();
    match &exit {
        Ok(ops::Exit::Signal(name)) => tracing::info!("{name}: shutting down"),
        Ok(ops::Exit::Drained) => tracing::info!(
            "drained: {} allocation(s) or fewer left (--drain-min-allocations); exiting",
            config_drain_min
        ),
        Ok(ops::Exit::DrainTimeout(n)) => {
            tracing::warn!("drain timeout: ending {n} allocation(s) still live; exiting")
        }
        Err(_) => {}
    }
    running.shutdown();
    if let Some(p) = &pidfile {
        let _ = std::fs::remove_file(p);
    }
    exit.map(|_| ())
}

/// `VIGI_TURN_HEALTH_FILE` (set in the Docker image): write where a health check should send
/// its STUN Binding request, as `udp|tcp|tls IP PORT` — the first UDP listener, else TCP, else
/// TLS, a wildcard address replaced by the loopback address of its family — so the image's
/// HEALTHCHECK follows `--listening-port`, `--no-udp` and `-L` instead of assuming 3478.
fn write_health_target(running: &io::Running) {
    let Some(path) = std::env::var_os("VIGI_TURN_HEALTH_FILE") else {
        return;
    };
    let pick = |kind: &str, addrs: &[SocketAddr]| {
        addrs.first().map(|a| {
            let ip = match a.ip() {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            format!("{kind} {ip} {}\n", a.port())
        })
    };
    let target = pick("udp", &running.udp_addrs)
        .or_else(|| pick("tcp", &running.tcp_addrs))
        .or_else(|| pick("tls", &running.tls_addrs));
    if let Some(t) = target {
        if let Err(e) = std::fs::write(&path, t) {
            tracing::warn!(
                "VIGI_TURN_HEALTH_FILE {}: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// What an operator checks first after a start: which file was read, who may authenticate and
/// how, where it listens and relays from, and what else is served. Secrets appear as counts.
fn startup_summary(config: &Config, running: &io::Running, relay_ips: &[IpAddr]) -> Vec<String> {
    let file = match &config.conf_file {
        Some(p) => format!("config file {}", p.display()),
        None => "no config file read".to_owned(),
    };
    let redis = if config.fleet.redis_userdb.is_some() {
        " + Redis user database"
    } else {
        ""
    };
    let auth = match config.auth.mode {
        AuthMode::NoAuth => "auth: none (--no-auth: anyone may allocate)".to_owned(),
        AuthMode::LongTerm => format!(
            "auth: long-term credentials, {} static user(s){redis}",
            config.auth.users.len()
        ),
        AuthMode::RestApi => format!(
            "auth: TURN REST API, {} static secret(s){redis}",
            config.auth.static_auth_secrets.len()
        ),
    };
    let off = |a: Option<String>| a.unwrap_or_else(|| "off".to_owned());
    let prometheus = config
        .metrics
        .prometheus
        .then(|| match config.metrics.prometheus_address {
            Some(ip) => format!(
                "http://{}/metrics",
                SocketAddr::new(ip, config.metrics.prometheus_port)
            ),
            None => format!("http://*:{}/metrics", config.metrics.prometheus_port),
        });
    // --external-ip: what XOR-RELAYED-ADDRESS reports instead (in Docker often the output of
    // detect-external-ip, which the operator cannot see otherwise).
    let reported = if config.listeners.external_ips.is_empty() {
        String::new()
    } else {
        let each = config
            .listeners
            .external_ips
            .iter()
            .map(|x| match x.private {
                Some(private) => format!("{} for {private}", x.public),
                None => x.public.to_string(),
            });
        format!(" (reported as {})", each.collect::<Vec<_>>().join(", "))
    };
    vec![
        format!(
            "vigi-turn {}: {file}; {auth}; realm {}",
            env!("CARGO_PKG_VERSION"),
            config.engine_realm()
        ),
        format!(
            "listening on udp {:?} tcp {:?} tls {:?} dtls {:?}; relaying from {:?}{reported} ports {}-{}; {} workers",
            running.udp_addrs,
            running.tcp_addrs,
            running.tls_addrs,
            running.dtls_addrs,
            relay_ips,
            config.relay.min_port,
            config.relay.max_port,
            config.relay.relay_threads
        ),
        format!(
            "prometheus {}; admin API {}; signaling {}",
            off(prometheus),
            off(config.admin.admin_listen.map(|a| a.to_string())),
            off(config.signaling.signaling_listen.map(|a| a.to_string())),
        ),
        config.engine_config(relay_ips.to_vec(), &interface_addrs()).peer_policy.describe(),
    ]
}

/// The key that signs nonces: random per process, or SHA-256 of `--stateless-nonce-secret` so
/// that nodes sharing the secret accept each other's nonces (coturn 4.17's option).
fn nonce_key(config: &Config) -> [u8; 32] {
    use sha2::Digest;
    match &config.limits.stateless_nonce_secret {
        Some(secret) => {
            let mut h = sha2::Sha256::new();
            h.update(b"vigi-turn nonce key\0");
            h.update(secret.as_bytes());
            h.finalize().into()
        }
        None => rand::random(),
    }
}

/// `--redis-userdb`: start the reader, and give its first read a moment (up to 3 s) so that the
/// node does not refuse every database user in its first seconds. Redis being away is not fatal:
/// the reader keeps trying, and until it succeeds only static users and secrets work.
fn start_userdb(
    control: &vigi_turn::control::ControlPlane,
    config: &Config,
    conn: &vigi_turn::config::RedisConn,
    realm: &str,
    shared: &Shared,
) {
    use vigi_turn::fleet;
    fleet::userdb::spawn(
        control,
        fleet::userdb::UserDbSource {
            conn: conn.clone(),
            realm: realm.to_owned(),
            refresh: std::time::Duration::from_secs(u64::from(config.fleet.redis_refresh)),
            max_stale: u64::from(config.fleet.redis_max_stale),
            cell: shared.userdb.clone(),
        },
    );
    let t0 = std::time::Instant::now();
    while shared.userdb.fresh(fleet::unix_now()).is_none() {
        if t0.elapsed() > std::time::Duration::from_secs(3) {
            tracing::warn!("redis-userdb: no read yet; starting without the database's users");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How this node names itself in the fleet: `--node-address` (else the external or listening IP
/// and the listening port), `--node-name` (else the address), `--node-region`.
fn node_info(
    config: &Config,
    running: &io::Running,
    relay_ips: &[IpAddr],
) -> vigi_turn::fleet::stats::NodeInfo {
    let address = config.fleet.node_address.clone().unwrap_or_else(|| {
        let ip = config
            .listeners
            .external_ips
            .first()
            .map(|e| e.public)
            .or_else(|| running.udp_addrs.first().map(|a| a.ip()))
            .filter(|ip| !ip.is_unspecified())
            .or_else(|| relay_ips.first().copied())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        SocketAddr::new(ip, config.listeners.listening_port).to_string()
    });
    vigi_turn::fleet::stats::NodeInfo {
        name: config
            .fleet
            .node_name
            .clone()
            .unwrap_or_else(|| address.clone()),
        address,
        region: config.fleet.node_region.clone(),
        redirect_over_allocations: config.redirect.redirect_over_allocations,
    }
}

/// `--redis-statsdb`: allocation status, traffic and the heartbeat, from the workers' snapshots.
#[allow(clippy::too_many_arguments)]
fn start_statsdb(
    control: &vigi_turn::control::ControlPlane,
    conn: &vigi_turn::config::RedisConn,
    realm: &str,
    node: vigi_turn::fleet::stats::NodeInfo,
    running: &io::Running,
    shared: Arc<Shared>,
    relay_ips: &[IpAddr],
    directory: Arc<vigi_turn::fleet::Directory>,
) {
    use vigi_turn::fleet::stats;
    stats::spawn(
        control,
        stats::StatsDbSource {
            conn: conn.clone(),
            realm: realm.to_owned(),
            node,
            workers: running.workers.clone(),
            shared,
            relay_ips: relay_ips.to_vec(),
            directory,
        },
    );
}

/// The TLS certificate source, following coturn: no `--cert`, no TLS. A `--cert` without `--pkey`
/// reads the key from the certificate file. An unusable certificate or key is a start-up error,
/// before any socket is bound.
fn tls_source(config: &Config) -> Result<Option<Arc<io::tls::TlsSource>>> {
    if config.listeners.no_tls {
        return Ok(None);
    }
    let Some(cert) = config.tls.cert.clone() else {
        tracing::info!("no --cert given: TLS listeners are off");
        return Ok(None);
    };
    if config.tls.cipher_list.is_some() {
        tracing::warn!(
            "--cipher-list is accepted and ignored: rustls serves its own safe suites \
             (TLS 1.3 and TLS 1.2 ECDHE-AEAD)"
        );
    }
    let settings = io::tls::TlsSettings {
        pkey: config.tls.pkey.clone().unwrap_or_else(|| cert.clone()),
        cert,
        no_tls12: config.tls.no_tlsv1_2,
    };
    let source = io::tls::TlsSource::new(settings)?;
    Ok(Some(Arc::new(source)))
}

/// The DTLS context (coturn's rule: with `--cert`, on the TLS port over UDP, unless `--no-dtls`).
#[cfg(feature = "dtls")]
fn dtls_context(config: &Config) -> Result<Option<Arc<io::dtls::DtlsContext>>> {
    let Some(cert) = config
        .tls
        .cert
        .clone()
        .filter(|_| !config.listeners.no_dtls)
    else {
        return Ok(None);
    };
    let pkey = config.tls.pkey.clone().unwrap_or_else(|| cert.clone());
    let ctx =
        io::dtls::DtlsContext::new(cert.as_ref(), pkey.as_ref()).map_err(anyhow::Error::msg)?;
    Ok(Some(Arc::new(ctx)))
}

#[cfg(not(feature = "dtls"))]
fn dtls_context(config: &Config) -> Result<Option<Arc<io::dtls::DtlsContext>>> {
    if config.tls.cert.is_some() && !config.listeners.no_dtls {
        tracing::info!("built without the `dtls` feature: no DTLS listener");
    }
    Ok(None)
}

fn ipv6_available() -> bool {
    std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// `--relay-ip`, else the specific `--listening-ip`s, else this host's interface addresses
/// (non-loopback first; loopback only when nothing else exists).
fn resolve_relay_ips(config: &Config) -> Vec<IpAddr> {
    if !config.listeners.relay_ips.is_empty() {
        return config.listeners.relay_ips.clone();
    }
    let specific: Vec<IpAddr> = config
        .listeners
        .listening_ips
        .iter()
        .copied()
        .filter(|ip| !ip.is_unspecified())
        .collect();
    if !specific.is_empty() {
        return specific;
    }
    let all = interface_addrs();
    let public: Vec<IpAddr> = all
        .iter()
        .copied()
        .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
        .collect();
    if public.is_empty() {
        all.into_iter().filter(|ip| ip.is_loopback()).collect()
    } else {
        public
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xFFC0) == 0xFE80,
    }
}

/// The addresses of this host's interfaces (getifaddrs).
fn interface_addrs() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = match nix::ifaddrs::getifaddrs() {
        Ok(list) => list
            .filter_map(|ifa| ifa.address)
            .filter_map(|a| {
                if let Some(v4) = a.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}
