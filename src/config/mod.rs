//! Everything a user configures: coturn's command-line options and `turnserver.conf`, resolved
//! into one validated [`Config`] before anything binds.
//!
//! One parser serves both sources. The config file's lines become `--key=value` tokens
//! ([`conf_file`]) that the command-line parser ([`cli`]) reads, so a file key and a flag can
//! never disagree. Each file line is first parsed alone, so a bad value is reported as
//! `FILE:LINE: ...`; then the file's tokens and the real arguments are parsed together, file
//! first, so the command line beats the file for single-valued options and repeatable options
//! (`--user`, `--listening-ip`, ...) accumulate from both.
//!
//! Options coturn has and vigi-turn does not implement are listed in [`cli::UNSUPPORTED`]: the
//! harmless ones are accepted with a warning, the ones whose absence would weaken security or
//! authentication make [`Config::load`] fail.

pub mod cli;
pub mod conf_file;
mod engine;
pub mod types;

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::{ArgMatches, Command, FromArgMatches};
use tracing::warn;

use cli::{Cli, Policy, Unsupported};
pub use types::{
    DefaultFamily, ExternalIp, IpRange, RedisConn, Secret, UserEntry, UserEntryError, UserSecret,
    XdpMode,
};

/// Which credential mechanism TURN requests go through, resolved from `--lt-cred-mech`,
/// `--use-auth-secret`, `--no-auth` and `--user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `-z`/`--no-auth`: anonymous TURN.
    NoAuth,
    /// Long-term credentials (RFC 8489 §9.2) against the static `--user` list. This is also the
    /// mode when no auth option is given at all, where coturn would fall back to no-auth:
    /// vigi-turn never runs an open relay unless told to with `--no-auth` (with no users, every
    /// Allocate is rejected, and a warning says so).
    LongTerm,
    /// TURN REST API: time-limited user names, passwords derived from `--static-auth-secret`.
    /// Selected by `--use-auth-secret`, or by a `--static-auth-secret` alone (as coturn does).
    RestApi,
}

/// The resolved, validated configuration. Built only by [`Config::load`] and
/// [`Config::load_with_file_text`]. `Debug` never prints passwords or secrets: they are
/// [`Secret`]s, [`UserSecret`]s and [`RedisConn`]s, whose `Debug` redacts them.
#[derive(Debug, Clone)]
pub struct Config {
    // ---- listeners ----
    pub listening_port: u16,
    pub tls_listening_port: u16,
    /// RFC 5780 alternative port: `--alt-listening-port`, else listening port + 1 (0 if that
    /// would overflow, meaning none).
    pub alt_listening_port: u16,
    /// Same for TLS/DTLS: `--alt-tls-listening-port`, else TLS port + 1.
    pub alt_tls_listening_port: u16,
    /// Empty: all interfaces.
    pub listening_ips: Vec<IpAddr>,
    /// Empty: relay from the address the client reached us on.
    pub relay_ips: Vec<IpAddr>,
    pub external_ips: Vec<ExternalIp>,
    pub no_udp: bool,
    pub no_tcp: bool,
    pub no_tls: bool,
    pub no_dtls: bool,
    pub no_udp_relay: bool,
    pub no_tcp_relay: bool,
    /// `-A`; `-K` makes it `Keep`.
    pub allocation_default_address_family: DefaultFamily,

    // ---- relay ----
    /// Resolved: never 0 (absent or 0 means one per CPU).
    pub relay_threads: usize,
    /// `--xdp-interface`: interfaces the kernel fast path attaches to (empty: no fast path).
    pub xdp_interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub xdp_max_channels: u32,
    pub xdp_max_allocations: u32,
    pub xdp_max_permissions: u32,
    pub min_port: u16,
    pub max_port: u16,
    pub allow_loopback_peers: bool,
    pub no_multicast_peers: bool,
    pub denied_peer_ips: Vec<IpRange>,
    pub allowed_peer_ips: Vec<IpRange>,

    // ---- STUN behaviour ----
    pub fingerprint: bool,
    pub stun_only: bool,
    pub no_stun: bool,
    /// `--no-software-attribute` or `--software-attribute=false`.
    pub no_software_attribute: bool,
    /// `--software-attribute=TEXT` (vigi-turn extension): replaces the default SOFTWARE text.
    pub software_attribute: Option<String>,
    pub no_rfc5780: bool,
    /// `--rfc5780` and not `--no-rfc5780`: NAT behaviour discovery is served.
    pub rfc5780: bool,
    pub no_stun_backward_compatibility: bool,
    /// RFC 3489 Binding requests (no magic cookie) are answered: `--rfc3489-compatibility`,
    /// else not `--no-stun-backward-compatibility`.
    pub rfc3489_compatibility: bool,
    pub response_origin_only_with_rfc5780: bool,

    // ---- authentication ----
    pub auth: AuthMode,
    /// As given on the command line or in the file; [`Config::auth`] is what to act on.
    pub lt_cred_mech: bool,
    pub no_auth: bool,
    pub use_auth_secret: bool,
    pub users: Vec<UserEntry>,
    pub static_auth_secrets: Vec<Secret>,
    /// `None` when not given or empty; the caller picks the fallback.
    pub realm: Option<String>,
    pub server_name: Option<String>,
    pub rest_api_separator: char,
    /// `-b`/`--userdb`: recorded only, never read or written.
    pub userdb: Option<PathBuf>,
    /// `-N`/`--redis-userdb`: users, REST secrets and realm options read from Redis.
    pub redis_userdb: Option<RedisConn>,
    /// Seconds between reads of the Redis user database.
    pub redis_refresh: u32,
    /// Seconds the last good read stays in use while Redis is unreachable.
    pub redis_max_stale: u32,
    /// `-O`/`--redis-statsdb`: allocation status, traffic and the node heartbeat go to Redis.
    pub redis_statsdb: Option<RedisConn>,
    /// The node's name, region and advertised address in the fleet (heartbeat).
    pub node_name: Option<String>,
    pub node_region: String,
    pub node_address: Option<String>,

    // ---- quotas and lifetimes (0 quota = unlimited) ----
    pub user_quota: u32,
    pub total_quota: u32,
    pub max_allocation_permissions: usize,
    pub max_bps: u64,
    pub bps_capacity: u64,
    /// Challenges and Allocate attempts per client IP per second; 0 = no limit.
    pub unauthorized_ratelimit: u32,
    /// `--stateless-nonce-secret`: the nonce key is derived from it; `None` = random per process.
    pub stateless_nonce_secret: Option<Secret>,
    /// Nonce lifetime in seconds; 0 = unlimited.
    pub stale_nonce: u32,
    pub max_allocate_lifetime: u32,
    pub default_allocate_lifetime: u32,
    pub permission_lifetime: u32,
    pub channel_lifetime: u32,
    pub strict_expiry: bool,
    pub reload_keeps_removed_users: bool,

    // ---- TLS ----
    pub cert: Option<PathBuf>,
    pub pkey: Option<PathBuf>,
    pub cipher_list: Option<String>,
    pub dh_file: Option<PathBuf>,
    pub no_tlsv1_2: bool,

    // ---- redirection: `IP`, `IPv4:PORT` or `[IPv6]:PORT`, checked ----
    pub alternate_servers: Vec<String>,
    pub tls_alternate_servers: Vec<String>,
    /// `--redirect-over-allocations`: the load at which new Allocates go to a fleet peer, 0 = never.
    pub redirect_over_allocations: u32,

    // ---- logging and process ----
    /// `None` when not given or empty; "stdout", "-" and "syslog" are special, as in coturn.
    pub log_file: Option<String>,
    pub simple_log: bool,
    pub no_stdout_log: bool,
    pub syslog: bool,
    /// 0 normal, 1 `-v`/`--verbose`, 2 `-V`/`--Verbose`.
    pub verbose: u8,
    pub pidfile: Option<PathBuf>,
    pub daemon: bool,
    pub proc_user: Option<String>,
    pub proc_group: Option<String>,
    pub no_cli: bool,
    /// Seconds to wait for allocations to end after SIGUSR1 before exiting.
    pub drain_timeout: u32,
    /// A drain ends once this many allocations or fewer are left.
    pub drain_min_allocations: usize,
    /// `--log-min-level`: overrides the level `-v`/`-V` set.
    pub log_min_level: Option<cli::LogLevel>,

    // ---- sockets (vigi-turn extensions) ----
    /// SO_RCVBUF/SO_SNDBUF in bytes; `None` = kernel default.
    pub sock_buf_size: Option<usize>,
    /// Concurrent TCP/TLS client connections; 0 = unlimited. Default 10000.
    pub max_tcp_connections: usize,
    pub max_tcp_connections_per_ip: u32,

    // ---- metrics ----
    pub prometheus: bool,
    pub prometheus_port: u16,
    /// `None`: all interfaces.
    pub prometheus_address: Option<IpAddr>,
    pub prometheus_username_labels: bool,
    /// Per-allocation series for the K busiest allocations; 0 = none.
    pub prometheus_top_allocations: usize,

    // ---- admin API and logs ----
    /// Where the admin API listens; `None` = no admin API.
    pub admin_listen: Option<SocketAddr>,
    /// The admin API's bearer token (always set when `admin_listen` is).
    pub admin_token: Option<Secret>,
    pub log_json: bool,

    // ---- signaling companion ----
    /// Where the Socket.io signaling server listens; `None` = off.
    pub signaling_listen: Option<SocketAddr>,
    /// The secret signaling tokens are checked against; `None` = the `userId` alone is trusted.
    pub signaling_secret: Option<Secret>,
    /// Origins besides the page's own allowed to use signaling from a browser (`*` = any).
    pub signaling_cors_origins: Vec<String>,
    /// `--signaling-insecure`: no secret, on purpose.
    pub signaling_insecure: bool,
    /// `--signaling-presence`: offline and busy are told apart.
    pub signaling_presence: bool,
    /// `--signaling-redis`: where call records are kept.
    pub signaling_redis: Option<RedisConn>,
    /// Lifetime of minted TURN REST credentials, in seconds.
    pub turn_credentials_ttl: u64,
    /// TURN URIs handed out with credentials; empty = derived from the listeners.
    pub turn_uris: Vec<String>,

    // ---- provenance ----
    /// The config file actually read, if any.
    pub conf_file: Option<PathBuf>,
    /// Every warning emitted while loading (already sent to `tracing::warn!`). Logging is set
    /// up from this very config, so a caller that installs its subscriber only after
    /// [`Config::load`] should log these itself.
    pub warnings: Vec<String>,
}

/// Why the configuration was refused. `Display` is one line naming the flag (`--min-port: ...`)
/// or the file line (`FILE:LINE: ...`); the caller prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line did not parse, or asked for `--help`/`--version`. For the latter,
    /// [`ConfigError::is_help_or_version`] is true and `clap::Error::exit` prints the text and
    /// exits 0; [`ConfigError::exit`] does all of this.
    #[error("{}", first_line(.0))]
    Clap(clap::Error),
    /// A config file line is invalid.
    #[error("{file}:{line}: {message}")]
    File {
        file: String,
        line: usize,
        message: String,
    },
    /// The config file named by `-c` (or found in the search path) cannot be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An option vigi-turn knows but does not implement, and that it will not ignore because
    /// that would weaken security. `at` is `--flag` or `FILE:LINE: key`.
    #[error("{at}: not supported yet ({what}); vigi-turn refuses to start rather than run with weaker security")]
    Unsupported { at: String, what: &'static str },
    /// Values that parse but do not make sense (together). `flag` is `--name`.
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}

impl ConfigError {
    /// True for `--help` and `--version`: not an error, the caller should print and exit 0.
    pub fn is_help_or_version(&self) -> bool {
        matches!(self, ConfigError::Clap(e) if !e.use_stderr())
    }

    /// Ends the process as coturn would: help/version text on stdout with status 0, anything
    /// else as one line `vigi-turn: <message>` on stderr with status 2.
    pub fn exit(&self) -> ! {
        match self {
            ConfigError::Clap(e) if !e.use_stderr() => e.exit(),
            other => {
                eprintln!("vigi-turn: {other}");
                std::process::exit(2)
            }
        }
    }

    fn invalid(flag: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            flag,
            message: message.into(),
        }
    }
}

/// A clap error on one line: its first line without the `error: ` prefix, then clap's tips
/// (`tip: a similar argument exists: '--listening-port'`) and possible values, `; `-separated;
/// the usage and `--help` hints are left out.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    let mut out = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    for line in lines {
        if line.starts_with("tip:") || line.starts_with("[possible values") {
            out.push_str("; ");
            out.push_str(line);
        }
    }
    out
}

impl Config {
    /// Parses the command line (`args[0]` is the program name) plus the config file it points
    /// to: `-c FILE`, else `turnserver.conf` from [`conf_file::SEARCH_DIRS`] if present; `-n`
    /// reads no file. A file that is found or named but cannot be read is an error.
    ///
    /// `--help` and `--version` come back as a [`ConfigError::Clap`] for which
    /// [`ConfigError::is_help_or_version`] is true; [`ConfigError::exit`] handles both cases.
    pub fn load<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut cmd = cli::command();
        let mut warnings = Warnings::default();
        let matches = parse_cli(&mut cmd, &args, &mut warnings)?;
        let named = matches.get_one::<PathBuf>("conf_file");
        let path = if flag(&matches, "no_config") {
            if let Some(p) = named {
                warnings.push(format!(
                    "-c {}: ignored because -n was given; no config file is read",
                    p.display()
                ));
            }
            None
        } else if let Some(p) = named {
            Some(conf_file::resolve_explicit(p))
        } else {
            conf_file::search(Path::new(conf_file::DEFAULT_NAME))
        };
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Some((path, text))
            }
            None => None,
        };
        let file = file
            .as_ref()
            .map(|(path, text)| (path.display().to_string(), path.clone(), text.as_str()));
        finish(cmd, &args, file, warnings)
    }

    /// As [`Config::load`], but the config file's text is given and `-c`/`-n` are not looked
    /// at; `name` stands for the file in messages and in [`Config::conf_file`]. For tests.
    pub fn load_with_file_text(
        args: &[&str],
        name: &str,
        text: &str,
    ) -> Result<Config, ConfigError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let mut cmd = cli::command();
        let mut warnings = Warnings::default();
        parse_cli(&mut cmd, &args, &mut warnings)?;
        finish(
            cmd,
            &args,
            Some((name.to_owned(), PathBuf::from(name), text)),
            warnings,
        )
    }
}

/// Warnings, each emitted once.
#[derive(Default)]
struct Warnings {
    once: HashSet<&'static str>,
    list: Vec<String>,
}

impl Warnings {
    fn push(&mut self, message: String) {
        warn!("{message}");
        self.list.push(message);
    }

    fn push_once(&mut self, key: &'static str, message: String) {
        if self.once.insert(key) {
            self.push(message);
        }
    }
}

fn flag(m: &ArgMatches, id: &str) -> bool {
    m.get_one::<bool>(id).copied().unwrap_or(false)
}

/// Parses the real command line alone: reports its errors without any file in the way, and
/// applies the [`cli::UNSUPPORTED`] policies to it.
fn parse_cli(
    cmd: &mut Command,
    args: &[OsString],
    warnings: &mut Warnings,
) -> Result<ArgMatches, ConfigError> {
    let matches = cmd
        .try_get_matches_from_mut(args.iter().cloned())
        .map_err(ConfigError::Clap)?;
    for opt in cli::unsupported_set(&matches) {
        apply_policy(opt, format!("--{}", opt.long), warnings)?;
    }
    Ok(matches)
}

fn apply_policy(opt: &Unsupported, at: String, warnings: &mut Warnings) -> Result<(), ConfigError> {
    match opt.policy {
        Policy::Refuse(what) => Err(ConfigError::Unsupported { at, what }),
        Policy::Ignore(instead) => {
            warnings.push_once(opt.long, format!("{at}: accepted but ignored: {instead}"));
            Ok(())
        }
        Policy::IgnoreCli => {
            warnings.push_once(
                opt.long,
                format!("{at}: vigi-turn has no telnet CLI; option ignored"),
            );
            Ok(())
        }
    }
}

/// Validates each file line on its own, then parses file tokens and arguments together.
fn finish(
    mut cmd: Command,
    args: &[OsString],
    file: Option<(String, PathBuf, &str)>,
    mut warnings: Warnings,
) -> Result<Config, ConfigError> {
    let program = args
        .first()
        .cloned()
        .unwrap_or_else(|| OsString::from("vigi-turn"));
    let mut tokens = vec![program.clone()];
    let mut conf_path = None;
    if let Some((name, path, text)) = file {
        tokens.extend(
            file_tokens(&mut cmd, &program, &name, text, &mut warnings)?
                .into_iter()
                .map(OsString::from),
        );
        conf_path = Some(path);
    }
    tokens.extend(args.iter().skip(1).cloned());
    let matches = cmd
        .try_get_matches_from_mut(tokens)
        .map_err(ConfigError::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ConfigError::Clap)?;
    resolve(cli, conf_path, warnings)
}

/// The tokens of a config file's lines, each line checked alone: a bad value is a `FILE:LINE`
/// error, an unknown key a `FILE:LINE` warning (the line is skipped).
fn file_tokens(
    cmd: &mut Command,
    program: &OsString,
    name: &str,
    text: &str,
    warnings: &mut Warnings,
) -> Result<Vec<String>, ConfigError> {
    let mut tokens = Vec::new();
    for line in conf_file::lines(text) {
        let at = |message: String| ConfigError::File {
            file: name.to_owned(),
            line: line.number,
            message,
        };
        if cli::CLI_ONLY.contains(&line.key) {
            warnings.push(format!(
                "{name}:{}: {}: only valid on the command line; line skipped",
                line.number, line.key
            ));
            continue;
        }
        let known = cmd.get_arguments().any(|a| {
            a.get_long() == Some(line.key)
                || a.get_all_aliases()
                    .is_some_and(|aliases| aliases.contains(&line.key))
        });
        if !known {
            let hint = similar_key(cmd, line.key)
                .map(|k| format!(" (did you mean '{k}'?)"))
                .unwrap_or_default();
            warnings.push(format!(
                "{name}:{}: unknown option '{}'{hint}; line skipped",
                line.number, line.key
            ));
            continue;
        }
        let mut token = line.token();
        let matches = match cmd.try_get_matches_from_mut([program.clone(), OsString::from(&token)])
        {
            Ok(m) => m,
            Err(e) => {
                // `user-quota=12 # per user` (Synapse's sample): coturn reads numbers with
                // atoi, which stops at the blank; a value that fails whole but parses without
                // its ` #` tail is read that way, with a warning. Text values keep their `#`.
                let cut = line.value.and_then(|v| {
                    v.find(" #")
                        .or_else(|| v.find("\t#"))
                        .map(|i| v[..i].trim())
                });
                let retry = cut.filter(|c| !c.is_empty()).and_then(|c| {
                    let t = format!("--{}={c}", line.key);
                    cmd.try_get_matches_from_mut([program.clone(), OsString::from(&t)])
                        .ok()
                        .map(|m| (t, m, c))
                });
                let Some((t, m, c)) = retry else {
                    return Err(at(first_line(&e)));
                };
                warnings.push(format!(
                    "{name}:{}: {}: text after '{c}' read as a comment",
                    line.number, line.key
                ));
                token = t;
                m
            }
        };
        for opt in cli::unsupported_set(&matches) {
            apply_policy(
                opt,
                format!("{name}:{}: {}", line.number, line.key),
                warnings,
            )?;
        }
        tokens.push(token);
    }
    Ok(tokens)
}

/// The known option name closest to an unknown `key`, when close enough to be a typo (the
/// same measure and threshold clap uses for its command-line tips).
fn similar_key(cmd: &Command, key: &str) -> Option<String> {
    cmd.get_arguments()
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default())
        })
        .map(|name| (strsim::jaro(key, name), name))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name.to_owned())
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn resolve(
    cli: Cli,
    conf_file: Option<PathBuf>,
    mut warnings: Warnings,
) -> Result<Config, ConfigError> {
    validate(&cli)?;

    let auth = if cli.no_auth {
        AuthMode::NoAuth
    } else if cli.use_auth_secret || !cli.static_auth_secret.is_empty() {
        AuthMode::RestApi
    } else {
        AuthMode::LongTerm
    };
    if !cli.static_auth_secret.is_empty() && !cli.use_auth_secret {
        warnings.push(match auth {
            AuthMode::NoAuth => "--static-auth-secret: not used with --no-auth".into(),
            _ => "--static-auth-secret: implies --use-auth-secret (TURN REST API), as in coturn"
                .into(),
        });
    }
    match auth {
        AuthMode::RestApi if !cli.user.is_empty() => warnings.push(
            "--user: static users are not used with --use-auth-secret (TURN REST API)".into(),
        ),
        AuthMode::NoAuth if !cli.user.is_empty() => {
            warnings.push("--user: static users are not used with --no-auth".into())
        }
        AuthMode::LongTerm
            if cli.user.is_empty() && cli.redis_userdb.is_none() && !cli.stun_only =>
        {
            warnings.push(
                "no --user configured: every TURN Allocate will be rejected \
             (use --user, --use-auth-secret or --no-auth)"
                    .into(),
            )
        }
        _ => {}
    }
    // The redirect is signed, so it answers an Allocate that already carried this node's nonce,
    // and libwebrtc (Chromium, Safari, most native apps) sends the same nonce to the alternate
    // and gives up on its 438 Stale Nonce (seen with Chromium 156, tests/browser.rs).
    let redirects = !cli.alternate_server.is_empty() || !cli.tls_alternate_server.is_empty();
    let shared_nonces = cli
        .stateless_nonce_secret
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    if redirects && auth != AuthMode::NoAuth && !shared_nonces {
        warnings.push(
            "--alternate-server without --stateless-nonce-secret: browsers follow the redirect \
             with this node's nonce, which the alternate refuses (438) unless both have the same \
             --stateless-nonce-secret"
                .into(),
        );
    }
    if let Some(db) = &cli.userdb {
        warnings.push(format!(
            "--userdb {}: the user database is not read; only static --user entries ({}) \
             and --static-auth-secret values are used",
            db.display(),
            cli.user.len()
        ));
    }

    let relay_threads = match (cli.relay_threads, cli.cpus) {
        (None | Some(0), Some(cpus)) => cpus as usize,
        (None | Some(0), None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        (Some(n), _) => n,
    };
    if cli.syslog && cli.log_file.as_deref().is_some_and(|f| f != "syslog") {
        warnings.push("--syslog: log lines go to journald, not to --log-file".into());
    }
    if cli.alt_tls_listening_port != 0 {
        warnings.push(
            "--alt-tls-listening-port: accepted but ignored: RFC 5780 is served over UDP only, \
             so no alternate TLS/DTLS listener is started"
                .into(),
        );
    }
    if let Some(path) = cli.prometheus_path.as_deref().filter(|p| *p != "/metrics") {
        warnings.push(format!(
            "--prometheus-path {path}: accepted but ignored: metrics are served at /metrics"
        ));
    }
    if cli.stateless_nonce == Some(false) {
        warnings.push(
            "--stateless-nonce=false: accepted but ignored: nonces are always stateless \
             (HMAC-signed timestamps), which keeps unauthenticated floods from growing memory"
                .into(),
        );
    }
    if cli.dtls && (cli.no_dtls || cli.cert.is_none()) {
        warnings.push("--dtls: no DTLS listener starts without --cert or with --no-dtls".into());
    }
    let (no_software_attribute, software_attribute) = match cli.software_attribute {
        Some(cli::Software::Off) => (true, None),
        Some(cli::Software::Text(t)) => (cli.no_software_attribute, Some(t)),
        Some(cli::Software::On) | None => (cli.no_software_attribute, None),
    };
    let derived = |explicit: u16, base: u16| {
        if explicit != 0 {
            explicit
        } else {
            base.checked_add(1).unwrap_or(0)
        }
    };

    Ok(Config {
        alt_listening_port: derived(cli.alt_listening_port, cli.listening_port),
        alt_tls_listening_port: derived(cli.alt_tls_listening_port, cli.tls_listening_port),
        listening_port: cli.listening_port,
        tls_listening_port: cli.tls_listening_port,
        listening_ips: cli.listening_ip,
        relay_ips: cli.relay_ip,
        external_ips: cli.external_ip,
        no_udp: cli.no_udp,
        no_tcp: cli.no_tcp,
        no_tls: cli.no_tls,
        no_dtls: cli.no_dtls,
        no_udp_relay: cli.no_udp_relay,
        no_tcp_relay: cli.no_tcp_relay,
        allocation_default_address_family: if cli.keep_address_family {
            DefaultFamily::Keep
        } else {
            cli.allocation_default_address_family
        },
        relay_threads,
        xdp_interfaces: cli.xdp_interface.clone(),
        xdp_mode: cli.xdp_mode,
        xdp_max_channels: cli.xdp_max_channels,
        xdp_max_allocations: cli.xdp_max_allocations,
        xdp_max_permissions: cli.xdp_max_permissions,
        min_port: cli.min_port,
        max_port: cli.max_port,
        allow_loopback_peers: cli.allow_loopback_peers,
        no_multicast_peers: cli.no_multicast_peers,
        denied_peer_ips: cli.denied_peer_ip,
        allowed_peer_ips: cli.allowed_peer_ip,
        fingerprint: cli.fingerprint,
        stun_only: cli.stun_only,
        no_stun: cli.no_stun,
        no_software_attribute,
        software_attribute,
        no_rfc5780: cli.no_rfc5780,
        rfc5780: cli.rfc5780 && !cli.no_rfc5780,
        no_stun_backward_compatibility: cli.no_stun_backward_compatibility,
        rfc3489_compatibility: cli
            .rfc3489_compatibility
            .unwrap_or(!cli.no_stun_backward_compatibility),
        response_origin_only_with_rfc5780: cli.response_origin_only_with_rfc5780,
        auth,
        lt_cred_mech: cli.lt_cred_mech,
        no_auth: cli.no_auth,
        use_auth_secret: cli.use_auth_secret,
        users: cli.user,
        static_auth_secrets: cli
            .static_auth_secret
            .into_iter()
            .map(Secret::new)
            .collect(),
        realm: non_empty(cli.realm),
        server_name: non_empty(cli.server_name),
        rest_api_separator: cli.rest_api_separator,
        userdb: cli.userdb,
        redis_userdb: cli.redis_userdb,
        redis_refresh: cli.redis_refresh,
        redis_max_stale: cli.redis_max_stale,
        redis_statsdb: cli.redis_statsdb,
        node_name: non_empty(cli.node_name),
        node_region: cli.node_region,
        node_address: non_empty(cli.node_address),
        user_quota: cli.user_quota,
        total_quota: cli.total_quota,
        max_allocation_permissions: cli.max_allocation_permissions,
        max_bps: cli.max_bps,
        bps_capacity: cli.bps_capacity,
        unauthorized_ratelimit: match cli.unauthorized_ratelimit_rps {
            Some(rps) if cli.unauthorized_ratelimit != 0 => rps,
            _ => cli.unauthorized_ratelimit,
        },
        stateless_nonce_secret: non_empty(cli.stateless_nonce_secret).map(Secret::new),
        stale_nonce: cli.stale_nonce,
        max_allocate_lifetime: cli.max_allocate_lifetime,
        default_allocate_lifetime: cli.default_allocate_lifetime,
        permission_lifetime: cli.permission_lifetime,
        channel_lifetime: cli.channel_lifetime,
        strict_expiry: cli.strict_expiry,
        reload_keeps_removed_users: cli.reload_keeps_removed_users,
        cert: cli.cert,
        pkey: cli.pkey,
        cipher_list: non_empty(cli.cipher_list),
        dh_file: cli.dh_file,
        no_tlsv1_2: cli.no_tlsv1_2,
        alternate_servers: cli.alternate_server,
        tls_alternate_servers: cli.tls_alternate_server,
        redirect_over_allocations: cli.redirect_over_allocations,
        log_file: non_empty(cli.log_file),
        simple_log: cli.simple_log,
        no_stdout_log: cli.no_stdout_log,
        syslog: cli.syslog,
        verbose: if cli.extra_verbose {
            2
        } else {
            u8::from(cli.verbose)
        },
        pidfile: cli.pidfile,
        daemon: cli.daemon,
        proc_user: non_empty(cli.proc_user),
        proc_group: non_empty(cli.proc_group),
        no_cli: cli.no_cli,
        drain_timeout: cli.drain_timeout,
        drain_min_allocations: cli.drain_min_allocations,
        log_min_level: cli.log_min_level,
        sock_buf_size: cli
            .sock_buf_size
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        max_tcp_connections: cli.max_tcp_connections,
        max_tcp_connections_per_ip: cli.max_tcp_connections_per_ip,
        prometheus: cli.prometheus,
        prometheus_port: cli.prometheus_port,
        prometheus_address: cli.prometheus_address,
        prometheus_username_labels: cli.prometheus_username_labels,
        prometheus_top_allocations: cli.prometheus_top_allocations,
        admin_listen: cli.admin_listen,
        admin_token: non_empty(cli.admin_token).map(Secret::new),
        log_json: cli.log_json,
        signaling_listen: cli.signaling_listen,
        signaling_secret: non_empty(cli.signaling_secret).map(Secret::new),
        signaling_cors_origins: cli
            .signaling_cors_origin
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect(),
        signaling_insecure: cli.signaling_insecure,
        signaling_presence: cli.signaling_presence,
        signaling_redis: cli.signaling_redis,
        turn_credentials_ttl: cli.turn_credentials_ttl,
        turn_uris: cli.turn_uri,
        conf_file,
        warnings: warnings.list,
    })
}

/// Cross-option checks; each error names the flag to change.
fn validate(cli: &Cli) -> Result<(), ConfigError> {
    if cli.rfc5780 && !cli.no_rfc5780 {
        let pair = |v6: bool| {
            cli.listening_ip
                .iter()
                .filter(|i| i.is_ipv6() == v6)
                .count()
                >= 2
        };
        if !(pair(false) || pair(true)) {
            return Err(ConfigError::invalid(
                "--rfc5780",
                "needs two --listening-ip addresses of one family (the alternate address)",
            ));
        }
        let alt = if cli.alt_listening_port != 0 {
            Some(cli.alt_listening_port)
        } else {
            cli.listening_port.checked_add(1)
        };
        if alt.is_none() || alt == Some(cli.listening_port) {
            return Err(ConfigError::invalid(
                "--alt-listening-port",
                "must differ from --listening-port for --rfc5780",
            ));
        }
    }
    if cli.redirect_over_allocations > 0 && cli.redis_statsdb.is_none() {
        return Err(ConfigError::invalid(
            "--redirect-over-allocations",
            "needs --redis-statsdb (the fleet's heartbeats say where to redirect)",
        ));
    }
    if cli.admin_listen.is_some() && cli.admin_token.as_deref().unwrap_or("").is_empty() {
        return Err(ConfigError::invalid(
            "--admin-listen",
            "needs --admin-token (the admin API never runs without authentication)",
        ));
    }
    if cli.signaling_listen.is_some()
        && cli.signaling_secret.as_deref().unwrap_or("").is_empty()
        && !cli.signaling_insecure
    {
        return Err(ConfigError::invalid(
            "--signaling-listen",
            "needs --signaling-secret (without it anyone could mint TURN credentials: an open \
             relay); --signaling-insecure serves anyone on purpose",
        ));
    }
    if cli.min_port > cli.max_port {
        return Err(ConfigError::invalid(
            "--min-port",
            format!(
                "must not exceed --max-port ({} > {})",
                cli.min_port, cli.max_port
            ),
        ));
    }
    if cli.no_auth && cli.lt_cred_mech {
        return Err(ConfigError::invalid(
            "--no-auth",
            "cannot be combined with --lt-cred-mech",
        ));
    }
    if cli.no_auth && cli.use_auth_secret {
        return Err(ConfigError::invalid(
            "--no-auth",
            "cannot be combined with --use-auth-secret",
        ));
    }
    if cli.use_auth_secret && cli.static_auth_secret.is_empty() && cli.redis_userdb.is_none() {
        return Err(ConfigError::invalid(
            "--use-auth-secret",
            "needs at least one --static-auth-secret or a --redis-userdb holding the secrets",
        ));
    }
    if cli.static_auth_secret.iter().any(String::is_empty) {
        return Err(ConfigError::invalid(
            "--static-auth-secret",
            "must not be empty",
        ));
    }
    if cli.default_allocate_lifetime > cli.max_allocate_lifetime {
        return Err(ConfigError::invalid(
            "--default-allocate-lifetime",
            format!(
                "must not exceed --max-allocate-lifetime ({} > {})",
                cli.default_allocate_lifetime, cli.max_allocate_lifetime
            ),
        ));
    }
    if cli.stun_only && cli.no_stun {
        return Err(ConfigError::invalid(
            "--stun-only",
            "cannot be combined with --no-stun (nothing would be served)",
        ));
    }
    if cli.no_udp && cli.no_tcp && cli.no_tls && cli.no_dtls {
        return Err(ConfigError::invalid(
            "--no-udp",
            "with --no-tcp, --no-tls and --no-dtls no listener is left",
        ));
    }
    if cli.no_udp_relay && cli.no_tcp_relay && !cli.stun_only {
        return Err(ConfigError::invalid(
            "--no-udp-relay",
            "with --no-tcp-relay no relay endpoint is possible (use --stun-only for a STUN server)",
        ));
    }
    if cli.external_ip.len() > 1 && cli.external_ip.iter().any(|x| x.private.is_none()) {
        return Err(ConfigError::invalid(
            "--external-ip",
            "when given several times, every value must be PUBLIC/PRIVATE",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
