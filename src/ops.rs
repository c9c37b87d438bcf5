//! Running the process once the workers are up: signals (SIGHUP reload, SIGUSR1 drain,
//! SIGUSR2 TLS certificate reload, SIGTERM/SIGINT stop), the systemd watchdog, and the
//! process-level settings applied after binding (`--proc-user`/`--proc-group`). The signal loop
//! runs on the main thread, driving the control plane's runtime ([`vigi_turn::control`]) with
//! `block_on`, so that no task on that runtime can delay a signal.

use std::ffi::OsString;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::unistd::{getgid, getuid, setgid, setgroups, setuid, Gid, Group, Uid, User};
use vigi_turn::config::Config;
use vigi_turn::control::ControlPlane;
use vigi_turn::io::{Control, Running};

use crate::logging::Logging;
use crate::notify::Notifier;

/// Why the signal loop returned.
#[derive(Debug)]
pub enum Exit {
    /// SIGTERM or SIGINT.
    Signal(&'static str),
    /// SIGUSR1, and the last allocation ended.
    Drained,
    /// SIGUSR1, and `--drain-timeout` passed with this many allocations left.
    DrainTimeout(usize),
}

/// What the signal loop needs: how to reload, and what to reload.
pub struct Ops<'a> {
    /// The original command line, re-parsed on SIGHUP (so `-c FILE` is read again).
    pub args: Vec<OsString>,
    /// The configuration in force.
    pub config: Config,
    /// The relay addresses chosen at start (fixed: sockets and the port pool depend on them).
    pub relay_ips: Vec<IpAddr>,
    pub running: &'a Running,
    pub notifier: &'a Notifier,
    pub logging: &'a Logging,
}

/// The signals vigi-turn handles, caught from before the first socket is bound: a SIGTERM or
/// SIGHUP during start-up is then handled (or queued) instead of killing the process.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install(control: &ControlPlane) -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        // Registering a signal needs the runtime's context; the streams outlive the guard.
        let (term, int, hup, usr1, usr2) = {
            let _in_rt = control.handle().enter();
            (
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
                signal(SignalKind::user_defined1())?,
                signal(SignalKind::user_defined2())?,
            )
        };
        Ok(Signals {
            term,
            int,
            hup,
            usr1,
            usr2,
        })
    }
}

/// How often the drain checks the workers' snapshots (they refresh every second).
const DRAIN_POLL: Duration = Duration::from_millis(250);

impl Ops<'_> {
    /// Tell the service manager we are ready, then serve signals until the process should stop.
    pub fn serve(&mut self, control: &ControlPlane, signals: Signals) -> Result<Exit> {
        let Signals {
            mut term,
            mut int,
            mut hup,
            mut usr1,
            mut usr2,
        } = signals;
        control.block_on(self.signal_loop(&mut term, &mut int, &mut hup, &mut usr1, &mut usr2))
    }

    async fn signal_loop(
        &mut self,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
        hup: &mut tokio::signal::unix::Signal,
        usr1: &mut tokio::signal::unix::Signal,
        usr2: &mut tokio::signal::unix::Signal,
    ) -> Result<Exit> {
        self.notifier.ready();
        let watchdog_every = self.notifier.watchdog_interval();
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
        let mut poll = tokio::time::interval(DRAIN_POLL);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(Exit::Signal("SIGTERM")),
                _ = int.recv() => return Ok(Exit::Signal("SIGINT")),
                _ = hup.recv() => {
                    self.notifier.reloading();
                    self.reload();
                    self.notifier.ready();
                }
                _ = usr1.recv() => {
                    if drain_deadline.is_none() {
                        let timeout = Duration::from_secs(u64::from(self.config.log.drain_timeout));
                        tracing::info!(
                            "SIGUSR1: draining; new allocations are refused, live ones go on for up to {}s",
                            timeout.as_secs()
                        );
                        self.notifier.status("draining");
                        self.running.broadcast(Control::Drain(true));
                        drain_deadline = Some(Instant::now() + timeout);
                    } else {
                        tracing::info!("SIGUSR1: already draining");
                    }
                }
                _ = usr2.recv() => {
                    match &self.running.tls {
                        // The next handshake on any worker gets the new certificate; live
                        // connections keep the session they have.
                        Some(tls) => match tls.reload() {
                            Ok(()) => tracing::info!("SIGUSR2: TLS certificate and key reloaded"),
                            Err(e) => {
                                tracing::error!("SIGUSR2: keeping the old TLS certificate: {e}")
                            }
                        },
                        None => tracing::info!("SIGUSR2: TLS is off; nothing to reload"),
                    }
                    // The same for DTLS (feature `dtls`).
                    if let Some(d) = &self.running.dtls {
                        match d.reload() {
                            Ok(()) => tracing::info!("SIGUSR2: DTLS certificate and key reloaded"),
                            Err(e) => {
                                tracing::error!("SIGUSR2: keeping the old DTLS certificate: {e}")
                            }
                        }
                    }
                }
                _ = poll.tick(), if drain_deadline.is_some() => {
                    let snaps = self.running.snapshots();
                    // A snapshot taken before the workers saw Drain(true) proves nothing.
                    let all_draining = snaps.iter().all(|s| s.draining);
                    let left: usize = snaps.iter().map(|s| s.live.allocations).sum();
                    if all_draining && left <= self.config.log.drain_min_allocations {
                        return Ok(Exit::Drained);
                    }
                    if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(Exit::DrainTimeout(left));
                    }
                }
                _ = watchdog.tick(), if watchdog_every.is_some() => self.notifier.watchdog(),
            }
        }
    }

    /// SIGHUP: read the configuration again and hand what can change live to every worker. An
    /// invalid configuration changes nothing.
    fn reload(&mut self) {
        let new = match Config::load(self.args.iter().cloned()) {
            Ok(c) => c,
            Err(e) => {
                // Still reopen the log file: logrotate's HUP must work with a broken edit too.
                self.logging.reload(&self.config);
                tracing::error!("SIGHUP: reload refused, keeping the running configuration: {e}");
                return;
            }
        };
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        for what in needs_restart(&self.config, &new) {
            tracing::warn!("SIGHUP: {what} changed; that needs a restart and is not applied");
        }
        let engine = new.engine_config(self.relay_ips.clone(), &crate::interface_addrs());
        self.running.broadcast(Control::Reload(Arc::new(engine)));
        self.logging.reload(&new);
        self.config = new;
        tracing::info!("SIGHUP: configuration reloaded; live allocations keep their credentials");
    }
}

/// The settings a reload cannot apply (sockets, threads, the port pool, the process identity).
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! check {
        ($($group:ident . $field:ident => $name:literal),* $(,)?) => {
            $(if old.$group.$field != new.$group.$field { out.push($name); })*
        };
    }
    check!(
        listeners.listening_port => "listening-port",
        listeners.tls_listening_port => "tls-listening-port",
        listeners.alt_listening_port => "alt-listening-port",
        listeners.alt_tls_listening_port => "alt-tls-listening-port",
        listeners.listening_ips => "listening-ip",
        fleet.redis_userdb => "redis-userdb",
        stun.rfc5780 => "rfc5780",
        fleet.redis_refresh => "redis-refresh",
        fleet.redis_max_stale => "redis-max-stale",
        fleet.redis_statsdb => "redis-statsdb",
        fleet.node_name => "node-name",
        fleet.node_region => "node-region",
        fleet.node_address => "node-address",
        listeners.relay_ips => "relay-ip",
        relay.min_port => "min-port",
        relay.max_port => "max-port",
        relay.relay_threads => "relay-threads",
        listeners.no_udp => "no-udp",
        listeners.no_tcp => "no-tcp",
        listeners.no_tls => "no-tls",
        tls.no_tlsv1_2 => "no-tlsv1_2",
        tls.cert => "cert (path; SIGUSR2 re-reads the files)",
        tls.pkey => "pkey (path; SIGUSR2 re-reads the files)",
        sockets.sock_buf_size => "sock-buf-size",
        sockets.max_tcp_connections => "max-tcp-connections",
        log.proc_user => "proc-user",
        log.proc_group => "proc-group",
        log.pidfile => "pidfile",
    );
    out
}

/// `--proc-group` then `--proc-user` (names or numbers): setgroups, setgid, setuid, in that order
/// so that root's groups are gone before root is. A user without a group takes the user's own
/// primary group. All threads change together (glibc applies set*id to every thread).
pub fn drop_privileges(user: Option<&str>, group: Option<&str>) -> Result<()> {
    if user.is_none() && group.is_none() {
        return Ok(());
    }
    let (uid, user_gid) = match user {
        Some(u) => {
            let (uid, gid) = lookup_user(u).with_context(|| format!("--proc-user {u}"))?;
            (Some(uid), Some(gid))
        }
        None => (None, None),
    };
    let gid = match group {
        Some(g) => Some(lookup_group(g).with_context(|| format!("--proc-group {g}"))?),
        None => user_gid,
    };
    if let Some(gid) = gid {
        let gid = Gid::from_raw(gid);
        setgroups(&[gid]).with_context(|| format!("setgroups({gid})"))?;
        setgid(gid).with_context(|| format!("setgid({gid})"))?;
    }
    if let Some(uid) = uid {
        setuid(Uid::from_raw(uid)).with_context(|| format!("setuid({uid})"))?;
    }
    tracing::info!("running as uid {} gid {}", getuid(), getgid());
    Ok(())
}

/// A user name or number: its uid and primary gid (a number with no passwd entry: its own gid).
fn lookup_user(name: &str) -> Result<(u32, u32)> {
    if let Some(u) = User::from_name(name).context("getpwnam")? {
        return Ok((u.uid.as_raw(), u.gid.as_raw()));
    }
    let uid: u32 = name.parse().ok().context("no such user")?;
    let gid = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or(uid, |u| u.gid.as_raw());
    Ok((uid, gid))
}

/// A group name or number.
fn lookup_group(name: &str) -> Result<u32> {
    if let Some(g) = Group::from_name(name).context("getgrnam")? {
        return Ok(g.gid.as_raw());
    }
    name.parse::<u32>().ok().context("no such group")
}
