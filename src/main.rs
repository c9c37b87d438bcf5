//! `vigi-turn`: configuration, then workers, then signals.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use vigi_turn::config::{AuthMode, Config, UserSecret};
use vigi_turn::engine::auth::{self, Credentials};
use vigi_turn::engine::policy::{IpRange, PeerPolicy};
use vigi_turn::engine::{ServerConfig, Shared};
use vigi_turn::io::{self, RunConfig};

fn main() {
    let config = match Config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    vigi_turn::logging::init(&config);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = run(config) {
        tracing::error!("{e:#}");
        eprintln!("vigi-turn: {e:#}");
        std::process::exit(1);
    }
}

fn run(config: Config) -> Result<()> {
    let listen_ips: Vec<IpAddr> = if config.listening_ips.is_empty() {
        vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]
    } else {
        config.listening_ips.clone()
    };
    let wildcard_default = config.listening_ips.is_empty();
    let relay_ips = resolve_relay_ips(&config);
    if relay_ips.is_empty() && !config.stun_only {
        anyhow::bail!("no relay address: give --relay-ip or --listening-ip");
    }
    let engine = Arc::new(engine_config(&config, relay_ips.clone()));
    let nonce_key: [u8; 32] = rand::random();
    let shared = Arc::new(Shared::new(config.min_port, config.max_port, nonce_key));
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for ip in &listen_ips {
        if ip.is_ipv6() && wildcard_default && !ipv6_available() {
            continue;
        }
        let addr = SocketAddr::new(*ip, config.listening_port);
        if !config.no_udp {
            udp.push(addr);
        }
        if !config.no_tcp {
            tcp.push(addr);
        }
    }
    if config.cert.is_some() && !config.no_tls {
        tracing::warn!("TLS and DTLS listeners are not implemented yet; serving UDP and TCP only");
    }
    let rc = RunConfig {
        workers: config.relay_threads,
        udp,
        tcp,
        sock_buf_size: config.sock_buf_size,
        max_tcp_connections: if config.max_tcp_connections == 0 {
            usize::MAX
        } else {
            config.max_tcp_connections
        },
        engine,
        shared,
    };
    let observe = vigi_turn::http::Observe::from(&rc);
    let running = io::start(rc).context("starting listeners")?;
    let _http = vigi_turn::http::spawn(&config, &running, observe).context("starting HTTP")?;
    if let Some(p) = &config.pidfile {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::warn!("cannot write pid file {}: {e}", p.display());
        }
    }
    tracing::info!(
        "vigi-turn {} listening on udp {:?} tcp {:?}, relaying from {:?} ports {}-{}, {} workers",
        env!("CARGO_PKG_VERSION"),
        running.udp_addrs,
        running.tcp_addrs,
        relay_ips,
        config.min_port,
        config.max_port,
        config.relay_threads
    );
    wait_for_shutdown()?;
    tracing::info!("shutting down");
    running.shutdown();
    if let Some(p) = &config.pidfile {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Block until SIGINT or SIGTERM. SIGHUP (reload) is caught so it does not kill the process.
fn wait_for_shutdown() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => tracing::warn!("SIGHUP: configuration reload is not implemented yet; ignored"),
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}

fn ipv6_available() -> bool {
    std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// `--relay-ip`, else the specific `--listening-ip`s, else this host's interface addresses
/// (non-loopback first; loopback only when nothing else exists).
fn resolve_relay_ips(config: &Config) -> Vec<IpAddr> {
    if !config.relay_ips.is_empty() {
        return config.relay_ips.clone();
    }
    let specific: Vec<IpAddr> = config
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
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we walk read-only and free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    out
}

/// The engine's view of the configuration.
fn engine_config(config: &Config, relay_ips: Vec<IpAddr>) -> ServerConfig {
    let realm = config
        .realm
        .clone()
        .or_else(|| config.server_name.clone())
        .unwrap_or_else(|| "vigi-turn".to_owned());
    let mut credentials = Credentials::new(&realm, config.rest_api_separator);
    for u in &config.users {
        let secret = match &u.secret {
            UserSecret::Password(p) => auth::UserSecret::Password(p.clone()),
            UserSecret::Key(k) => auth::UserSecret::Key(*k),
        };
        credentials.add_user(&u.name, &secret);
    }
    if config.auth == AuthMode::RestApi || config.use_auth_secret {
        for s in &config.static_auth_secrets {
            credentials.add_rest_secret(s.as_bytes());
        }
    }
    let range = |r: &vigi_turn::config::IpRange| IpRange {
        start: r.start,
        end: r.end,
    };
    let software = if config.no_software_attribute {
        None
    } else {
        Some(
            config
                .software_attribute
                .clone()
                .unwrap_or_else(|| format!("vigi-turn {}", env!("CARGO_PKG_VERSION"))),
        )
    };
    ServerConfig {
        realm,
        software,
        fingerprint: config.fingerprint,
        no_auth: config.auth == AuthMode::NoAuth,
        credentials,
        stun: !config.no_stun,
        turn: !config.stun_only,
        classic_stun: !config.no_stun_backward_compatibility,
        relay_ips,
        external_ips: config
            .external_ips
            .iter()
            .map(|e| (e.public, e.private))
            .collect(),
        default_lifetime: config.default_allocate_lifetime,
        max_lifetime: config.max_allocate_lifetime,
        permission_lifetime: config.permission_lifetime,
        channel_lifetime: config.channel_lifetime,
        nonce_lifetime: if config.stale_nonce == 0 {
            u32::MAX
        } else {
            config.stale_nonce
        },
        peer_policy: PeerPolicy {
            allow_loopback: config.allow_loopback_peers,
            no_multicast: config.no_multicast_peers,
            denied: config.denied_peer_ips.iter().map(range).collect(),
            allowed: config.allowed_peer_ips.iter().map(range).collect(),
        },
        user_quota: config.user_quota,
        total_quota: config.total_quota,
        max_bps: config.max_bps,
        udp_relay: !config.no_udp_relay,
        ..ServerConfig::default()
    }
}
