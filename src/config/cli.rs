//! The one clap [`Command`] that parses both the command line and `turnserver.conf`.
//!
//! Option names and short letters are coturn's (`turnserver -h`), so an existing command line or
//! config file works unchanged. [`Cli`] holds the options vigi-turn implements, typed; every other
//! coturn option is listed once in [`UNSUPPORTED`] with its policy (ignore with a warning, or
//! refuse to start). Moving an option to "implemented" means deleting its row there and adding a
//! field to [`Cli`].
//!
//! coturn accepts a value on boolean flags (`--no-udp=0`, `fingerprint=off` in the file), so every
//! flag here takes an optional `=VALUE` understood by clap's boolish parser (1/0, on/off, yes/no,
//! true/false, t/f, y/n).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, Parser};

use super::types::{
    check_server_address, DefaultFamily, ExternalIp, IpRange, RedisConn, UserEntry, XdpMode,
};

/// The implemented options, as parsed (defaults applied, nothing resolved or cross-checked yet).
#[derive(Parser)]
#[command(
    name = "vigi-turn",
    version,
    disable_version_flag = true,
    args_override_self = true,
    about = "TURN/STUN server (RFC 8656, RFC 8489); accepts coturn's options and turnserver.conf",
    after_help = "Every coturn 4.17 option is accepted: the last section lists those vigi-turn does \
                  not implement; each warns when set, or refuses to start where ignoring it would \
                  weaken security."
)]
pub struct Cli {
    // ---- configuration file ----
    #[arg(help_heading = "Configuration file")]
    /// Configuration file (default: turnserver.conf searched in ., ./etc, ../etc, /etc,
    /// /etc/coturn, /usr/local/etc, /usr/local/etc/coturn).
    #[arg(short = 'c', long = "conf-file", value_name = "FILE")]
    pub conf_file: Option<PathBuf>,
    /// Do not read any configuration file.
    #[arg(short = 'n')]
    pub no_config: bool,

    // ---- listeners ----
    #[arg(help_heading = "Listeners")]
    /// TURN listener port for UDP and TCP.
    #[arg(short = 'p', long = "listening-port", value_name = "PORT", default_value_t = 3478,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub listening_port: u16,
    /// TURN listener port for TLS and DTLS.
    #[arg(long = "tls-listening-port", value_name = "PORT", default_value_t = 5349,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub tls_listening_port: u16,
    /// Alternative port for RFC 5780 (default: listening port + 1).
    #[arg(
        long = "alt-listening-port",
        value_name = "PORT",
        default_value_t = 0,
        hide_default_value = true
    )]
    pub alt_listening_port: u16,
    /// Alternative TLS/DTLS port (default: TLS port + 1).
    #[arg(
        long = "alt-tls-listening-port",
        value_name = "PORT",
        default_value_t = 0
    )]
    pub alt_tls_listening_port: u16,
    /// Listener IP address; repeatable (default: all interfaces).
    #[arg(short = 'L', long = "listening-ip", value_name = "IP")]
    pub listening_ip: Vec<IpAddr>,
    /// Relay IP address (local address of relay sockets); repeatable.
    #[arg(short = 'E', long = "relay-ip", value_name = "IP")]
    pub relay_ip: Vec<IpAddr>,
    /// Public address of the server behind NAT, PUBLIC or PUBLIC/PRIVATE; repeatable.
    #[arg(short = 'X', long = "external-ip", value_name = "PUBLIC[/PRIVATE]")]
    pub external_ip: Vec<ExternalIp>,
    /// Do not start UDP client listeners.
    #[arg(long = "no-udp")]
    pub no_udp: bool,
    /// Do not start TCP client listeners.
    #[arg(long = "no-tcp")]
    pub no_tcp: bool,
    /// Do not start TLS client listeners.
    #[arg(long = "no-tls")]
    pub no_tls: bool,
    /// Do not start DTLS client listeners.
    #[arg(long = "no-dtls", alias = "no_dtls")]
    pub no_dtls: bool,
    /// Start DTLS listeners (coturn 4.17's switch). Here DTLS starts with --cert unless
    /// --no-dtls, as in coturn 4.6, so this only confirms it.
    #[arg(long = "dtls")]
    pub dtls: bool,
    /// Do not allow UDP relay endpoints.
    #[arg(long = "no-udp-relay")]
    pub no_udp_relay: bool,
    /// Do not allow TCP relay endpoints.
    #[arg(long = "no-tcp-relay")]
    pub no_tcp_relay: bool,
    /// Relay family of an Allocate that asks for none: ipv4, ipv6, or keep (the client's own).
    #[arg(short = 'A', long = "allocation-default-address-family", value_name = "FAMILY",
          value_enum, ignore_case = true, default_value_t = DefaultFamily::Ipv4)]
    pub allocation_default_address_family: DefaultFamily,
    /// The same as `-A keep` (coturn's older flag).
    #[arg(short = 'K', long = "keep-address-family")]
    pub keep_address_family: bool,

    // ---- relay ----
    #[arg(help_heading = "Relay and peers")]
    /// Worker threads (0 or absent: one per CPU).
    #[arg(short = 'm', long = "relay-threads", value_name = "N")]
    pub relay_threads: Option<usize>,
    /// Attach the kernel fast path (XDP) to this interface: relay ChannelData of bound channels
    /// and Send/Data indications under permissions without waking a worker (repeatable; vigi-turn extension, issue 18). Needs CAP_BPF and
    /// CAP_NET_ADMIN; a server that cannot attach exits.
    #[arg(long = "xdp-interface", value_name = "IFACE")]
    pub xdp_interface: Vec<String>,
    /// How the fast path attaches: auto, native (driver hook) or generic (any interface).
    #[arg(long = "xdp-mode", value_name = "MODE", value_enum, ignore_case = true,
          default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,
    /// Channels the fast path can mirror (map entries per direction); beyond, user space relays.
    #[arg(long = "xdp-max-channels", value_name = "N", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub xdp_max_channels: u32,
    /// Allocations the fast path can count (per-CPU counter slots); beyond, user space relays.
    #[arg(long = "xdp-max-allocations", value_name = "N", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub xdp_max_allocations: u32,
    /// Permissions the fast path can mirror for Send and Data indications (map entries per
    /// direction); beyond, user space relays that peer's indications.
    #[arg(long = "xdp-max-permissions", value_name = "N", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub xdp_max_permissions: u32,
    /// Lowest relay port.
    #[arg(long = "min-port", value_name = "PORT", default_value_t = 49152,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub min_port: u16,
    /// Highest relay port.
    #[arg(long = "max-port", value_name = "PORT", default_value_t = 65535,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_port: u16,
    /// Allow peers on loopback addresses.
    #[arg(long = "allow-loopback-peers")]
    pub allow_loopback_peers: bool,
    /// Refuse peers on multicast/broadcast addresses.
    #[arg(long = "no-multicast-peers")]
    pub no_multicast_peers: bool,
    /// Peer addresses explicitly allowed: IP, IP-IP or IP/LEN; repeatable.
    #[arg(long = "allowed-peer-ip", value_name = "IP[-IP]")]
    pub allowed_peer_ip: Vec<IpRange>,
    /// Peer addresses refused: IP, IP-IP or IP/LEN; repeatable.
    #[arg(long = "denied-peer-ip", value_name = "IP[-IP]")]
    pub denied_peer_ip: Vec<IpRange>,
    /// Override the CPU count that sets the default number of workers (coturn 4.17's `--cpus`,
    /// for containers that see the host's CPUs); `-m` wins.
    #[arg(long = "cpus", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,

    // ---- STUN behaviour ----
    #[arg(help_heading = "STUN behaviour")]
    /// Add FINGERPRINT to messages.
    #[arg(short = 'f', long = "fingerprint")]
    pub fingerprint: bool,
    /// Serve STUN only; TURN requests are ignored.
    #[arg(short = 'S', long = "stun-only")]
    pub stun_only: bool,
    /// Serve TURN only; STUN Binding requests are ignored.
    #[arg(long = "no-stun")]
    pub no_stun: bool,
    /// Do not send the SOFTWARE attribute (formerly --prod).
    #[arg(long = "no-software-attribute", alias = "prod")]
    pub no_software_attribute: bool,
    /// Send the SOFTWARE attribute (the default here). A bare flag or a boolean as in coturn
    /// 4.7+ (`=false` is `--no-software-attribute`); any other value replaces the text.
    #[arg(long = "software-attribute", value_name = "BOOL|TEXT", num_args = 0..=1,
          default_missing_value = "true", value_parser = parse_software)]
    pub software_attribute: Option<Software>,
    /// Disable RFC 5780 NAT behaviour discovery (it is off unless `--rfc5780` is given).
    #[arg(long = "no-rfc5780")]
    pub no_rfc5780: bool,
    /// Serve RFC 5780 NAT behaviour discovery (CHANGE-REQUEST, OTHER-ADDRESS, RESPONSE-ORIGIN)
    /// from two listening IPs of one family and the alternate port; off by default because
    /// answers from another address help reflection attacks (vigi-turn extension).
    #[arg(long = "rfc5780")]
    pub rfc5780: bool,
    /// Do not answer RFC 3489 Binding requests (no magic cookie); coturn 4.6's name.
    #[arg(long = "no-stun-backward-compatibility")]
    pub no_stun_backward_compatibility: bool,
    /// Answer RFC 3489 Binding requests (no magic cookie) with MAPPED-ADDRESS; on unless
    /// `--no-stun-backward-compatibility` or `=false` (coturn 4.17's name; its default is off).
    #[arg(long = "rfc3489-compatibility", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", hide_possible_values = true,
          value_parser = BoolishValueParser::new())]
    pub rfc3489_compatibility: Option<bool>,
    /// Send RESPONSE-ORIGIN only when RFC 5780 is enabled.
    #[arg(long = "response-origin-only-with-rfc5780")]
    pub response_origin_only_with_rfc5780: bool,

    // ---- authentication ----
    #[arg(help_heading = "Authentication and user databases")]
    /// Use the long-term credential mechanism.
    #[arg(short = 'a', long = "lt-cred-mech")]
    pub lt_cred_mech: bool,
    /// Allow anonymous access.
    #[arg(short = 'z', long = "no-auth")]
    pub no_auth: bool,
    /// Static user NAME:PASSWORD or NAME:0x<32 hex digits key>; repeatable.
    #[arg(short = 'u', long = "user", value_name = "NAME:PASSWORD", value_parser = UserParser)]
    pub user: Vec<UserEntry>,
    /// Default realm.
    #[arg(short = 'r', long = "realm", value_name = "REALM")]
    pub realm: Option<String>,
    /// Server name (default: the realm).
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_name: Option<String>,
    /// TURN REST API: time-limited credentials from a shared secret.
    #[arg(long = "use-auth-secret")]
    pub use_auth_secret: bool,
    /// Shared secret for the TURN REST API; repeatable.
    #[arg(long = "static-auth-secret", value_name = "SECRET")]
    pub static_auth_secret: Vec<String>,
    /// Separator between timestamp and user name in TURN REST API user names.
    #[arg(
        short = 'C',
        long = "rest-api-separator",
        value_name = "CHAR",
        default_value_t = ':'
    )]
    pub rest_api_separator: char,
    /// SQLite user database (accepted; not read: only static --user entries are used).
    #[arg(
        short = 'b',
        long = "userdb",
        visible_alias = "db",
        value_name = "FILE"
    )]
    pub userdb: Option<PathBuf>,
    /// Redis user database: coturn's connection string `ip=... port=... dbname=... password=...`.
    #[arg(short = 'N', long = "redis-userdb", value_name = "CONNECTION")]
    pub redis_userdb: Option<RedisConn>,
    /// Seconds between reads of the Redis user database (vigi-turn extension).
    #[arg(long = "redis-refresh", value_name = "SECONDS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub redis_refresh: u32,
    /// How long the last good read of the Redis user database is used while Redis is away;
    /// after that its users are refused (vigi-turn extension).
    #[arg(
        long = "redis-max-stale",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    pub redis_max_stale: u32,
    /// Redis status database: allocation status and traffic (coturn's keys and channels) and
    /// this node's heartbeat.
    #[arg(short = 'O', long = "redis-statsdb", value_name = "CONNECTION")]
    pub redis_statsdb: Option<RedisConn>,
    /// This node's name in the fleet (vigi-turn extension; default: the advertised address).
    #[arg(long = "node-name", value_name = "NAME")]
    pub node_name: Option<String>,
    /// This node's region in the fleet (vigi-turn extension).
    #[arg(long = "node-region", value_name = "REGION", default_value = "default")]
    pub node_region: String,
    /// The HOST:PORT clients reach this node on, as published in its heartbeat (vigi-turn
    /// extension; default: the external or listening IP and the listening port).
    #[arg(long = "node-address", value_name = "HOST:PORT")]
    pub node_address: Option<String>,

    // ---- quotas and lifetimes ----
    #[arg(help_heading = "Quotas, rate limits and lifetimes")]
    /// Concurrent allocations per user (0: unlimited). A REST credential counts for its user
    /// part (`expiry:user`). Default 10: a browser call needs one or two (safe by default).
    #[arg(
        short = 'q',
        long = "user-quota",
        value_name = "N",
        default_value_t = 10
    )]
    pub user_quota: u32,
    /// Concurrent allocations in total (0: unlimited).
    #[arg(
        short = 'Q',
        long = "total-quota",
        value_name = "N",
        default_value_t = 0
    )]
    pub total_quota: u32,
    /// Peers (IP addresses) one allocation may hold permissions for at once (0: unlimited). A
    /// CreatePermission naming more is refused (508) before any address is read.
    #[arg(
        long = "max-allocation-permissions",
        value_name = "N",
        default_value_t = 256
    )]
    pub max_allocation_permissions: usize,
    /// Bytes per second per session and direction (0: unlimited).
    #[arg(short = 's', long = "max-bps", value_name = "N", default_value_t = 0)]
    pub max_bps: u64,
    /// Bytes per second for all sessions together (0: unlimited).
    #[arg(
        short = 'B',
        long = "bps-capacity",
        value_name = "N",
        default_value_t = 0
    )]
    pub bps_capacity: u64,
    /// 401/438 challenges plus Allocate attempts answered per client IP per second, with bursts
    /// of five seconds' worth; an Allocate that authenticates gives its own and its challenge's
    /// back. Beyond it requests get no answer (0: no limit; vigi-turn extension).
    /// A bare flag or `=true` keeps 1000, `=false` is 0 (coturn 4.17 takes a boolean here).
    #[arg(long = "unauthorized-ratelimit", value_name = "N|BOOL", num_args = 0..=1,
          default_missing_value = "true", default_value = "1000", value_parser = parse_ratelimit)]
    pub unauthorized_ratelimit: u32,
    /// coturn 4.17's rate for `--unauthorized-ratelimit`: sets N.
    #[arg(long = "unauthorized-ratelimit-rps", value_name = "N")]
    pub unauthorized_ratelimit_rps: Option<u32>,
    /// Nonces are always stateless here (HMAC-signed timestamps); `=false` is refused as a no-op
    /// with a warning.
    #[arg(long = "stateless-nonce", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", hide_possible_values = true,
          value_parser = BoolishValueParser::new())]
    pub stateless_nonce: Option<bool>,
    /// Derive the nonce key from this secret instead of a random per-process key, so nodes
    /// sharing it accept each other's nonces across restarts and behind a load balancer.
    #[arg(long = "stateless-nonce-secret", value_name = "SECRET")]
    pub stateless_nonce_secret: Option<String>,
    /// Nonce lifetime in seconds (0: unlimited); the bare flag means 600.
    #[arg(long = "stale-nonce", value_name = "SECONDS", num_args = 0..=1, require_equals = true,
          default_missing_value = "600", default_value_t = 600)]
    pub stale_nonce: u32,
    /// Largest allocation lifetime a client may request, in seconds.
    #[arg(long = "max-allocate-lifetime", value_name = "SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_allocate_lifetime: u32,
    /// Allocation lifetime when the client asks for none, in seconds (vigi-turn extension).
    #[arg(long = "default-allocate-lifetime", value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub default_allocate_lifetime: u32,
    /// Channel binding lifetime in seconds.
    #[arg(long = "channel-lifetime", value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub channel_lifetime: u32,
    /// Permission lifetime in seconds.
    #[arg(long = "permission-lifetime", value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub permission_lifetime: u32,
    /// Expire allocations, permissions and channels exactly at their lifetime (vigi-turn extension).
    #[arg(long = "strict-expiry")]
    pub strict_expiry: bool,
    /// On reload (SIGHUP) or a user-database refresh, a removed user keeps its live allocations
    /// until they expire (default: they end at once, so removing a user revokes it).
    #[arg(long = "reload-keeps-removed-users")]
    pub reload_keeps_removed_users: bool,

    // ---- TLS ----
    #[arg(help_heading = "TLS and DTLS")]
    /// Certificate file, PEM.
    #[arg(long = "cert", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key file, PEM.
    #[arg(long = "pkey", value_name = "FILE")]
    pub pkey: Option<PathBuf>,
    /// Allowed TLS cipher list.
    #[arg(long = "cipher-list", value_name = "CIPHERS")]
    pub cipher_list: Option<String>,
    /// DH parameters file, PEM.
    #[arg(long = "dh-file", value_name = "FILE")]
    pub dh_file: Option<PathBuf>,
    /// Do not allow TLSv1.2 / DTLSv1.2.
    #[arg(long = "no-tlsv1_2")]
    pub no_tlsv1_2: bool,

    // ---- redirection ----
    #[arg(help_heading = "Redirection")]
    /// Server to redirect UDP/TCP Allocate requests to (300 ALTERNATE-SERVER); repeatable.
    #[arg(long = "alternate-server", value_name = "IP[:PORT]", value_parser = check_server_address)]
    pub alternate_server: Vec<String>,
    /// Server to redirect TLS/DTLS Allocate requests to; repeatable.
    #[arg(long = "tls-alternate-server", value_name = "IP[:PORT]",
          value_parser = check_server_address)]
    pub tls_alternate_server: Vec<String>,
    /// Holding N allocations or more, send new UDP/TCP Allocates to the least loaded peer of
    /// this node's region that holds fewer and is under its own N (vigi-turn extension; needs
    /// --redis-statsdb; 0: never).
    #[arg(
        long = "redirect-over-allocations",
        value_name = "N",
        default_value_t = 0
    )]
    pub redirect_over_allocations: u32,

    // ---- logging and process ----
    #[arg(help_heading = "Logging and process")]
    /// Log file, written together with stdout unless --no-stdout-log ("stdout" and "-" mean
    /// stdout only, "syslog" the journal).
    #[arg(short = 'l', long = "log-file", value_name = "FILE")]
    pub log_file: Option<String>,
    /// Accepted: the log file name is always used as given (no PID/date suffix, no rollover;
    /// rotate with logrotate, SIGHUP reopens the file).
    #[arg(long = "simple-log")]
    pub simple_log: bool,
    /// Do not log to stdout (warnings still reach stderr when nothing else would show them).
    #[arg(long = "no-stdout-log")]
    pub no_stdout_log: bool,
    /// Log to the system journal (journald, which feeds syslog) instead of --log-file; stdout
    /// too unless --no-stdout-log.
    #[arg(long = "syslog")]
    pub syslog: bool,
    /// Moderate verbose mode.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Extra verbose mode.
    #[arg(short = 'V', long = "Verbose")]
    pub extra_verbose: bool,
    /// PID file.
    #[arg(long = "pidfile", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Refused: vigi-turn never forks; run it under systemd (Type=notify) or Docker.
    #[arg(short = 'o', long = "daemon")]
    pub daemon: bool,
    /// User to switch to after binding.
    #[arg(long = "proc-user", value_name = "USER")]
    pub proc_user: Option<String>,
    /// Group to switch to after binding.
    #[arg(long = "proc-group", value_name = "GROUP")]
    pub proc_group: Option<String>,
    /// Turn off the telnet CLI (vigi-turn has none; accepted for compatibility).
    #[arg(long = "no-cli")]
    pub no_cli: bool,
    /// Seconds to wait for allocations to end on SIGUSR1 drain (vigi-turn extension).
    #[arg(long = "drain-timeout", value_name = "SECONDS", default_value_t = 30)]
    pub drain_timeout: u32,
    /// On SIGUSR1 drain, exit once this many allocations or fewer are left.
    #[arg(long = "drain-min-allocations", value_name = "N", default_value_t = 0)]
    pub drain_min_allocations: usize,
    /// Lowest level logged: debug, info, control (= info), warning or error; beats -v/-V.
    #[arg(
        long = "log-min-level",
        value_name = "LEVEL",
        value_enum,
        ignore_case = true
    )]
    pub log_min_level: Option<LogLevel>,

    // ---- sockets (vigi-turn extensions) ----
    #[arg(help_heading = "Sockets")]
    /// SO_RCVBUF/SO_SNDBUF size in bytes for client and relay sockets (default: the kernel's).
    #[arg(long = "sock-buf-size", value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub sock_buf_size: Option<u64>,
    /// Concurrent TCP/TLS client connections in total (0: unlimited).
    #[arg(
        long = "max-tcp-connections",
        value_name = "N",
        default_value_t = 10000
    )]
    pub max_tcp_connections: usize,
    /// Of those, from one source address (IPv6: one /64), so that one address cannot take every
    /// slot (0: no cap). A NAT with many TCP/TLS users behind one address may need more.
    #[arg(
        long = "max-tcp-connections-per-ip",
        value_name = "N",
        default_value_t = 256
    )]
    pub max_tcp_connections_per_ip: u32,

    // ---- metrics ----
    #[arg(help_heading = "Prometheus metrics")]
    /// Serve Prometheus metrics.
    #[arg(long = "prometheus")]
    pub prometheus: bool,
    /// Prometheus listener port.
    #[arg(long = "prometheus-port", value_name = "PORT", default_value_t = 9641,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub prometheus_port: u16,
    /// Prometheus listener address (default: all interfaces).
    #[arg(long = "prometheus-address", value_name = "IP")]
    pub prometheus_address: Option<IpAddr>,
    /// Metrics path: only /metrics is served; another value is ignored with a warning.
    #[arg(long = "prometheus-path", value_name = "PATH")]
    pub prometheus_path: Option<String>,
    /// Label traffic metrics with user names (unbounded label set: use with care).
    #[arg(long = "prometheus-username-labels")]
    pub prometheus_username_labels: bool,
    /// Export per-allocation series for the K busiest allocations (0 = off); bounded cardinality.
    #[arg(
        long = "prometheus-top-allocations",
        value_name = "K",
        default_value_t = 0
    )]
    pub prometheus_top_allocations: usize,

    // ---- admin API and logs (vigi-turn extensions) ----
    #[arg(help_heading = "Admin API and log format")]
    /// Serve the admin HTTP API on this address (needs --admin-token).
    #[arg(long = "admin-listen", value_name = "ADDR:PORT")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Bearer token the admin API requires.
    #[arg(long = "admin-token", value_name = "TOKEN", env = "VIGI_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Log as JSON lines (one object per event).
    #[arg(long = "log-json")]
    pub log_json: bool,

    // ---- signaling companion (vigi-turn extensions) ----
    #[arg(help_heading = "Signaling companion")]
    /// Serve Socket.io call signaling and `GET /api/turn-credentials` on this address (off unless given).
    #[arg(long = "signaling-listen", value_name = "ADDR:PORT")]
    pub signaling_listen: Option<std::net::SocketAddr>,
    /// Require a signed token in the Socket.io handshake (HMAC-SHA256 of `userId:expiry`).
    #[arg(
        long = "signaling-secret",
        value_name = "SECRET",
        env = "VIGI_SIGNALING_SECRET"
    )]
    pub signaling_secret: Option<String>,
    /// An origin (`https://app.example.org`, or `*`) allowed to use the signaling HTTP API and
    /// Socket.io from a browser besides the page's own; repeatable (default: same origin only).
    #[arg(long = "signaling-cors-origin", value_name = "ORIGIN")]
    pub signaling_cors_origin: Vec<String>,
    /// Serve signaling and TURN credentials to anyone without `--signaling-secret` (anyone can
    /// then mint relay credentials: an open relay). Logged loudly; for tests and closed networks.
    #[arg(long = "signaling-insecure")]
    pub signaling_insecure: bool,
    /// Tell callers whether a callee is offline or busy (`user_offline` vs `call_busy`); by
    /// default both answer `call_busy`, so presence cannot be probed.
    #[arg(long = "signaling-presence")]
    pub signaling_presence: bool,
    /// Share signaling through this Redis (coturn's connection string, as `--redis-userdb`;
    /// Redis 7+): rooms, presence, busy and call state, so that several nodes act as one, and
    /// call records listed by the admin API's `GET /api/calls`.
    #[arg(long = "signaling-redis", value_name = "CONNECTION")]
    pub signaling_redis: Option<RedisConn>,
    /// Lifetime in seconds of the credentials `GET /api/turn-credentials` mints.
    #[arg(
        long = "turn-credentials-ttl",
        value_name = "SECONDS",
        default_value_t = 86_400
    )]
    pub turn_credentials_ttl: u64,
    /// A TURN URI handed out with credentials (e.g. `turns:turn.example.org:5349?transport=tcp`); repeatable.
    #[arg(long = "turn-uri", value_name = "URI")]
    pub turn_uri: Vec<String>,
}

/// `--software-attribute`: coturn 4.7+ made it a boolean; vigi-turn also takes a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Software {
    /// A bare flag or a true boolean: send the default text.
    On,
    /// A false boolean: send none (as `--no-software-attribute`).
    Off,
    /// Send this text.
    Text(String),
}

fn parse_software(s: &str) -> Result<Software, String> {
    Ok(match bool_word(s) {
        Some(true) => Software::On,
        Some(false) => Software::Off,
        None => Software::Text(s.to_owned()),
    })
}

/// coturn's boolean words (`get_bool_value`), as clap's boolish parser reads them.
fn bool_word(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "y" | "true" | "t" => Some(true),
        "0" | "off" | "no" | "n" | "false" | "f" => Some(false),
        _ => None,
    }
}

fn parse_ratelimit(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    match bool_word(s) {
        Some(true) => Ok(1000),
        Some(false) => Ok(0),
        None => Err("expected a number of requests per second or a boolean".into()),
    }
}

/// `--log-min-level`: coturn's level names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    /// coturn's level between info and warning; logged as info.
    Control,
    #[value(alias = "warn")]
    Warning,
    Error,
}

/// How an option vigi-turn does not implement is treated when it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Ignoring it is harmless: warn once, saying what happens instead, and go on.
    Ignore(&'static str),
    /// A telnet-CLI option: vigi-turn has no CLI, so warn once and go on.
    IgnoreCli,
    /// Ignoring it would weaken security or authentication: refuse to start. The text says what
    /// is missing.
    Refuse(&'static str),
}

/// Whether an unsupported option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A boolean flag (optional `=BOOL`).
    Flag,
    /// Requires a value; an empty value counts as unset (coturn's `psql-userdb=""`).
    Value,
    /// Takes an optional value (`--name`, `--name=VALUE` or `--name VALUE`).
    OptValue,
}

/// One coturn option vigi-turn accepts but does not implement.
#[derive(Debug, Clone, Copy)]
pub struct Unsupported {
    pub long: &'static str,
    pub short: Option<char>,
    pub aliases: &'static [&'static str],
    pub kind: Kind,
    pub policy: Policy,
}

const fn u(long: &'static str, kind: Kind, policy: Policy) -> Unsupported {
    Unsupported {
        long,
        short: None,
        aliases: &[],
        kind,
        policy,
    }
}

const fn us(long: &'static str, short: char, kind: Kind, policy: Policy) -> Unsupported {
    Unsupported {
        long,
        short: Some(short),
        aliases: &[],
        kind,
        policy,
    }
}

const fn ignore(long: &'static str, kind: Kind, instead: &'static str) -> Unsupported {
    u(long, kind, Policy::Ignore(instead))
}

const USER_DB: &str = "a user database (only static --user and --static-auth-secret are supported)";
const OLD_TLS: &str = "SSLv2, SSLv3, TLS 1.0 and 1.1 are never offered (rustls: TLS 1.2 and 1.3)";
const NO_MUX: &str = "each allocation keeps its own relay port (no peer-side multiplexing)";
const PER_TRANSPORT: &str =
    "no per-transport redirection; --alternate-server applies to UDP and TCP alike";

/// Every coturn option (4.6 to 4.17) that is known but not implemented, with its policy.
pub const UNSUPPORTED: &[Unsupported] = &[
    // Listeners and relays.
    us(
        "listening-device",
        'd',
        Kind::Value,
        Policy::Refuse("binding listeners to a device; use --listening-ip so vigi-turn does not listen on more interfaces than intended"),
    ),
    us("relay-device", 'i', Kind::Value, Policy::Ignore("relay sockets are bound by address (--relay-ip), not by device")),
    ignore("tcp-proxy-port", Kind::Value, "no PROXY-protocol listener is started"),
    ignore("aux-server", Kind::Value, "no auxiliary listener is started; add --listening-ip/--listening-port instead"),
    ignore("udp-self-balance", Kind::Flag, "UDP is balanced across workers by SO_REUSEPORT"),
    ignore("max-allocate-timeout", Kind::Value, "an unfinished allocation costs one nonce, which expires with --stale-nonce"),
    // Ignoring it keeps the permission check, which is the stricter behaviour.
    ignore("server-relay", Kind::Flag, "the permission check on relayed packets stays on"),
    ignore("ne", Kind::Value, "coturn's network-engine choice; vigi-turn has one engine"),
    ignore("no-loopback-peers", Kind::Flag, "loopback peers are refused anyway unless --allow-loopback-peers (an old coturn name)"),
    ignore("mobility", Kind::Flag, "MICE (MOBILITY-TICKET) is not implemented; a client that moves allocates again"),
    ignore("stun-backward-compatibility", Kind::Flag, "MAPPED-ADDRESS goes to RFC 3489 clients and RFC 5780 answers only (see --rfc3489-compatibility)"),
    ignore("respond-http-unsupported", Kind::Flag, "a connection that speaks HTTP to a TURN port is closed without an HTTP 400"),
    ignore("rfc5766-channel-numbers", Kind::Flag, "channel numbers 0x4000-0x7FFF are always accepted (the RFC 5766 range)"),
    ignore("multiplex-peer", Kind::Flag, NO_MUX),
    ignore("multiplex-peer-port", Kind::Value, NO_MUX),
    ignore("multiplex-peer-max-peers", Kind::Value, NO_MUX),
    ignore("udp-recvmmsg", Kind::Flag, "recvmmsg batching is always on"),
    ignore("udp-recvmmsg-log", Kind::Flag, "batch sizes are not logged"),
    ignore("udp-sendmmsg-log", Kind::Flag, "batch sizes are not logged"),
    ignore("udp-gso", Kind::Flag, "UDP GSO is not used"),
    ignore("drop-invalid-packets", Kind::Flag, "invalid packets are always dropped"),
    ignore("drop-invalid-packets-log", Kind::Flag, "invalid packets are counted in metrics, not logged"),
    ignore("include-reason-string", Kind::Flag, "error responses carry the standard reason phrase only"),
    ignore("udp-alternate-server", Kind::Value, PER_TRANSPORT),
    ignore("tcp-alternate-server", Kind::Value, PER_TRANSPORT),
    // Authentication and user databases.
    Unsupported {
        long: "psql-userdb",
        short: Some('e'),
        aliases: &["sql-userdb"],
        kind: Kind::Value,
        policy: Policy::Refuse(USER_DB),
    },
    us("mysql-userdb", 'M', Kind::Value, Policy::Refuse(USER_DB)),
    us("mongo-userdb", 'J', Kind::Value, Policy::Refuse(USER_DB)),
    // Only used to decrypt a MySQL password, and MySQL is refused above.
    ignore("secret-key-file", Kind::Value, "only used with --mysql-userdb, which is refused"),
    u("oauth", Kind::Flag, Policy::Refuse("OAuth authentication")),
    u(
        "secure-stun",
        Kind::Flag,
        Policy::Refuse("authenticated STUN Binding requests"),
    ),
    u(
        "check-origin-consistency",
        Kind::Flag,
        Policy::Refuse("the ORIGIN consistency check"),
    ),
    ignore("no-auth-pings", Kind::Flag, "there is no SQL database to ping"),
    ignore("no-dynamic-ip-list", Kind::Flag, "peer rules come from the configuration only"),
    ignore("no-dynamic-realms", Kind::Flag, "the realm comes from the configuration only"),
    ignore("secret-ts-exp-time", Kind::Value, "deprecated in coturn; a TURN REST user name's timestamp is its expiry"),
    // TLS.
    u(
        "CA-file",
        Kind::Value,
        Policy::Refuse("verification of client certificates"),
    ),
    ignore("pkey-pwd", Kind::Value, "encrypted private keys are not read; give an unencrypted --pkey"),
    ignore("ec-curve-name", Kind::Value, "rustls picks the curve (X25519, P-256, P-384)"),
    ignore("dh566", Kind::Flag, "no finite-field DH suites are offered"),
    ignore("dh1066", Kind::Flag, "no finite-field DH suites are offered"),
    ignore("no-sslv2", Kind::Flag, OLD_TLS),
    ignore("no-sslv3", Kind::Flag, OLD_TLS),
    ignore("no-tlsv1", Kind::Flag, OLD_TLS),
    ignore("no-tlsv1_1", Kind::Flag, OLD_TLS),
    ignore("tlsv1", Kind::Flag, OLD_TLS),
    ignore("tlsv1_1", Kind::Flag, OLD_TLS),
    ignore("raw-public-keys", Kind::Flag, "RFC 7250 raw public keys are not offered; the certificate is"),
    // Metrics.
    u(
        "prometheus-tls",
        Kind::Flag,
        Policy::Refuse("HTTPS for the metrics endpoint; bind --prometheus-address to a private address or put a TLS proxy in front"),
    ),
    ignore("prometheus-cert", Kind::Value, "only used with --prometheus-tls, which is refused"),
    ignore("prometheus-key", Kind::Value, "only used with --prometheus-tls, which is refused"),
    // Logging.
    ignore("syslog-facility", Kind::Value, "--syslog writes to journald, which records no facility"),
    ignore("new-log-timestamp", Kind::Flag, "log lines always carry an RFC 3339 UTC timestamp"),
    ignore("new-log-timestamp-format", Kind::Value, "log lines always carry an RFC 3339 UTC timestamp"),
    ignore("log-binding", Kind::Flag, "Binding requests are counted in metrics, not logged"),
    // Telnet CLI and web admin: not having them exposes less, never more.
    u("cli", Kind::Flag, Policy::IgnoreCli),
    u("cli-ip", Kind::Value, Policy::IgnoreCli),
    u("cli-port", Kind::Value, Policy::IgnoreCli),
    u("cli-password", Kind::Value, Policy::IgnoreCli),
    u("cli-max-output-sessions", Kind::OptValue, Policy::IgnoreCli),
    ignore("web-admin", Kind::Flag, "no web admin; see --admin-listen"),
    ignore("web-admin-ip", Kind::Value, "no web admin; see --admin-listen"),
    ignore("web-admin-port", Kind::Value, "no web admin; see --admin-listen"),
    ignore("web-admin-listen-on-workers", Kind::Flag, "no web admin; see --admin-listen"),
    ignore("acme-redirect", Kind::Value, "no HTTP is served on the TURN ports"),
];

/// Keys that make sense only on the command line; a config file line naming one is skipped.
pub const CLI_ONLY: &[&str] = &["conf-file", "help", "version"];

/// The `--help` sections, in order (each is named on the first field of its section in [`Cli`]).
const HEADINGS: &[&str] = &[
    "Configuration file",
    "Listeners",
    "Relay and peers",
    "STUN behaviour",
    "Authentication and user databases",
    "Quotas, rate limits and lifetimes",
    "TLS and DTLS",
    "Redirection",
    "Logging and process",
    "Sockets",
    "Prometheus metrics",
    "Admin API and log format",
    "Signaling companion",
];

/// Builds the command: the derived [`Cli`] arguments, coturn's boolean-flag convention, our
/// `--version` (coturn's `-V` is `--Verbose`), and the [`UNSUPPORTED`] options.
pub fn command() -> Command {
    // Each section's first field names its heading; the fields after it, in declaration order,
    // share it until the next one does.
    let mut cmd = Cli::command();
    let mut heading: Option<&'static str> = None;
    let sections: Vec<(String, Option<&'static str>)> = cmd
        .get_arguments()
        .map(|a| {
            if let Some(h) = a.get_help_heading() {
                heading = HEADINGS.iter().copied().find(|known| *known == h);
            }
            (a.get_id().to_string(), heading)
        })
        .collect();
    for (id, heading) in sections {
        cmd = cmd.mut_arg(id, |a| a.help_heading(heading));
    }
    let cmd = cmd
        .arg(
            Arg::new("version")
                .long("version")
                .action(ArgAction::Version)
                .help("Print version"),
        )
        .args(UNSUPPORTED.iter().map(unsupported_arg));
    cmd.mut_args(|arg| {
        // `-n` is ours to keep simple; coturn's boolean flags all take an optional value.
        if matches!(arg.get_action(), ArgAction::SetTrue) && arg.get_id() != "no_config" {
            flag_with_optional_bool(arg)
        } else {
            arg
        }
    })
}

fn flag_with_optional_bool(arg: Arg) -> Arg {
    arg.action(ArgAction::Set)
        .num_args(0..=1)
        .require_equals(true)
        .value_name("BOOL")
        .default_value("false")
        .default_missing_value("true")
        .hide_default_value(true)
        .hide_possible_values(true)
        .value_parser(BoolishValueParser::new())
}

fn unsupported_arg(opt: &Unsupported) -> Arg {
    let mut arg = Arg::new(opt.long)
        .long(opt.long)
        .aliases(opt.aliases.iter().copied())
        .help(match opt.policy {
            Policy::Refuse(what) => format!("Refused (not implemented: {what})"),
            Policy::Ignore(instead) => format!("Ignored with a warning: {instead}"),
            Policy::IgnoreCli => "Ignored with a warning: vigi-turn has no telnet CLI".to_owned(),
        })
        .help_heading("coturn options not implemented (each warns or refuses when set)");
    if let Some(short) = opt.short {
        arg = arg.short(short);
    }
    match opt.kind {
        Kind::Flag => arg.action(ArgAction::SetTrue),
        Kind::Value => arg.action(ArgAction::Set).value_name("VALUE"),
        Kind::OptValue => arg
            .action(ArgAction::Set)
            .value_name("VALUE")
            .num_args(0..=1)
            .default_missing_value(""),
    }
}

/// The [`UNSUPPORTED`] options that `matches` sets (a flag set to true, a value that is not
/// empty), in table order.
pub fn unsupported_set(matches: &ArgMatches) -> impl Iterator<Item = &'static Unsupported> + '_ {
    UNSUPPORTED.iter().filter(move |opt| {
        if matches.value_source(opt.long) != Some(clap::parser::ValueSource::CommandLine) {
            return false;
        }
        match opt.kind {
            Kind::Flag => matches.get_one::<bool>(opt.long) == Some(&true),
            Kind::Value => matches
                .get_one::<String>(opt.long)
                .is_some_and(|v| !v.is_empty()),
            Kind::OptValue => true,
        }
    })
}

/// Parses `--user` without ever echoing the value: it holds a password.
#[derive(Clone, Copy)]
struct UserParser;

impl TypedValueParser for UserParser {
    type Value = UserEntry;

    fn parse_ref(
        &self,
        cmd: &Command,
        arg: Option<&Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<UserEntry, clap::Error> {
        let text = value.to_str().unwrap_or("");
        text.parse::<UserEntry>().map_err(|e| {
            let name = arg.map_or_else(|| "--user".to_owned(), |a| a.to_string());
            // The user name alone identifies the entry; the value after ':' is secret.
            let shown = match text.split_once(':') {
                Some((user, _)) => format!("{user}:<redacted>"),
                None => "<redacted>".to_owned(),
            };
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value '{shown}' for '{name}': {e}\n"),
            )
            .with_cmd(cmd)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn every_unsupported_name_is_unique_and_not_implemented() {
        let cmd = Cli::command();
        for opt in UNSUPPORTED {
            assert!(
                cmd.get_arguments().all(|a| a.get_long() != Some(opt.long)
                    && (opt.short.is_none() || a.get_short() != opt.short)),
                "{} is both implemented and unsupported",
                opt.long
            );
        }
    }
}
