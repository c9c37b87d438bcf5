//! The options vigi-turn implements, in the groups `--help` shows them in. Each option is
//! declared once, here: its flag, its `turnserver.conf` key (the same name), its type, its
//! default and its help. [`super::cli::Cli`] flattens the groups into the one parser, and
//! [`super::Config`] holds them as they come out of it, after [`super::Config::load`] has
//! resolved the few values that depend on other options (the fields marked *resolved*, and the
//! `#[arg(skip)]` fields that only resolution sets). The options that only feed a resolved
//! value (`-K`, `-v`/`-V`, `--cpus`, ...) are `pub(super)`: outside the configuration, only the
//! resolved value can be read.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::Args;

use super::cli::{parse_ratelimit, parse_software, LogLevel, Software, UserParser};
use super::types::{
    check_server_address, DefaultFamily, ExternalIp, IpRange, RedisConn, Secret, UserEntry, XdpMode,
};
use super::AuthMode;

/// Where clients reach the server: ports, addresses and transports.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Listeners")]
pub struct Listeners {
    /// TURN listener port for UDP and TCP.
    #[arg(short = 'p', long = "listening-port", value_name = "PORT", default_value_t = 3478,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub listening_port: u16,
    /// TURN listener port for TLS and DTLS.
    #[arg(long = "tls-listening-port", value_name = "PORT", default_value_t = 5349,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub tls_listening_port: u16,
    /// Alternative port for RFC 5780 (default: listening port + 1).
    // Resolved: the port itself, 0 only if listening port + 1 would overflow (meaning none).
    #[arg(
        long = "alt-listening-port",
        value_name = "PORT",
        default_value_t = 0,
        hide_default_value = true
    )]
    pub alt_listening_port: u16,
    /// Alternative TLS/DTLS port (default: TLS port + 1).
    // Resolved as the RFC 5780 port.
    #[arg(
        long = "alt-tls-listening-port",
        value_name = "PORT",
        default_value_t = 0
    )]
    pub alt_tls_listening_port: u16,
    /// Listener IP address; repeatable (default: all interfaces).
    #[arg(short = 'L', long = "listening-ip", value_name = "IP")]
    pub listening_ips: Vec<IpAddr>,
    /// Relay IP address (local address of relay sockets); repeatable.
    // Empty: relay from the address the client reached us on.
    #[arg(short = 'E', long = "relay-ip", value_name = "IP")]
    pub relay_ips: Vec<IpAddr>,
    /// Public address of the server behind NAT, PUBLIC or PUBLIC/PRIVATE; repeatable.
    #[arg(short = 'X', long = "external-ip", value_name = "PUBLIC[/PRIVATE]")]
    pub external_ips: Vec<ExternalIp>,
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
    pub(super) dtls: bool,
    /// Do not allow UDP relay endpoints.
    #[arg(long = "no-udp-relay")]
    pub no_udp_relay: bool,
    /// Do not allow TCP relay endpoints.
    #[arg(long = "no-tcp-relay")]
    pub no_tcp_relay: bool,
    /// Relay family of an Allocate that asks for none: ipv4, ipv6, or keep (the client's own).
    // Resolved: `-K` makes it `Keep`.
    #[arg(short = 'A', long = "allocation-default-address-family", value_name = "FAMILY",
          value_enum, ignore_case = true, default_value_t = DefaultFamily::Ipv4)]
    pub allocation_default_address_family: DefaultFamily,
    /// The same as `-A keep` (coturn's older flag).
    #[arg(short = 'K', long = "keep-address-family")]
    pub(super) keep_address_family: bool,
}

/// Relay endpoints, the kernel fast path, and which peers may be reached.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Relay and peers")]
pub struct Relay {
    /// Worker threads (0 or absent: one per CPU).
    // Resolved: never 0.
    #[arg(
        short = 'm',
        long = "relay-threads",
        value_name = "N",
        default_value_t = 0,
        hide_default_value = true
    )]
    pub relay_threads: usize,
    /// Attach the kernel fast path (XDP) to this interface: relay ChannelData of bound channels
    /// and Send/Data indications under permissions without waking a worker (repeatable; vigi-turn extension, issue 18). Needs CAP_BPF and
    /// CAP_NET_ADMIN; a server that cannot attach exits.
    #[arg(long = "xdp-interface", value_name = "IFACE")]
    pub xdp_interfaces: Vec<String>,
    /// How the fast path attaches: auto (generic on a veth or lo, else the kernel's choice),
    /// native (driver hook) or generic (any interface).
    #[arg(long = "xdp-mode", value_name = "MODE", value_enum, ignore_case = true,
          default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,
    /// Check a Send indication's FINGERPRINT (CRC-32) in the kernel and leave a wrong one to user
    /// space, which drops it; by default the fast path trims FINGERPRINT unchecked (a cheaper
    /// Send; see docs/fast-path.md).
    #[arg(long = "xdp-verify-fingerprint")]
    pub xdp_verify_fingerprint: bool,
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
    pub allowed_peer_ips: Vec<IpRange>,
    /// Peer addresses refused: IP, IP-IP or IP/LEN; repeatable.
    #[arg(long = "denied-peer-ip", value_name = "IP[-IP]")]
    pub denied_peer_ips: Vec<IpRange>,
    /// Override the CPU count that sets the default number of workers (coturn 4.17's `--cpus`,
    /// for containers that see the host's CPUs); `-m` wins.
    #[arg(long = "cpus", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) cpus: Option<u32>,
}

/// What Binding requests and every answer look like.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "STUN behaviour")]
pub struct Stun {
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
    // Resolved: also set by `--software-attribute=false`.
    #[arg(long = "no-software-attribute", alias = "prod")]
    pub no_software_attribute: bool,
    /// Send the SOFTWARE attribute (the default here). A bare flag or a boolean as in coturn
    /// 4.7+ (`=false` is `--no-software-attribute`); any other value replaces the text.
    #[arg(long = "software-attribute", value_name = "BOOL|TEXT", num_args = 0..=1,
          default_missing_value = "true", value_parser = parse_software)]
    pub(super) software: Option<Software>,
    /// *Resolved*: `--software-attribute=TEXT` (vigi-turn extension), the text that replaces the
    /// default SOFTWARE.
    #[arg(skip)]
    pub software_attribute: Option<String>,
    /// Disable RFC 5780 NAT behaviour discovery (it is off unless `--rfc5780` is given).
    #[arg(long = "no-rfc5780")]
    pub no_rfc5780: bool,
    /// Serve RFC 5780 NAT behaviour discovery (CHANGE-REQUEST, OTHER-ADDRESS, RESPONSE-ORIGIN)
    /// from two listening IPs of one family and the alternate port; off by default because
    /// answers from another address help reflection attacks (vigi-turn extension).
    // Resolved: and not `--no-rfc5780`.
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
    pub(super) rfc3489: Option<bool>,
    /// *Resolved*: RFC 3489 Binding requests (no magic cookie) are answered:
    /// `--rfc3489-compatibility`, else not `--no-stun-backward-compatibility`.
    #[arg(skip)]
    pub rfc3489_compatibility: bool,
    /// Send RESPONSE-ORIGIN only when RFC 5780 is enabled.
    #[arg(long = "response-origin-only-with-rfc5780")]
    pub response_origin_only_with_rfc5780: bool,
}

/// Who may allocate: the credential mechanism, static users, REST secrets, realm.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Authentication and user databases")]
pub struct Auth {
    /// *Resolved* from `--lt-cred-mech`, `--use-auth-secret`, `--no-auth` and `--user`: the
    /// mechanism to act on (the flags below are kept as given).
    #[arg(skip = AuthMode::LongTerm)]
    pub mode: AuthMode,
    /// Use the long-term credential mechanism.
    #[arg(short = 'a', long = "lt-cred-mech")]
    pub lt_cred_mech: bool,
    /// Allow anonymous access.
    #[arg(short = 'z', long = "no-auth")]
    pub no_auth: bool,
    /// Static user NAME:PASSWORD or NAME:0x<32 hex digits key>; repeatable.
    #[arg(short = 'u', long = "user", value_name = "NAME:PASSWORD", value_parser = UserParser)]
    pub users: Vec<UserEntry>,
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
    pub static_auth_secrets: Vec<Secret>,
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
}

/// Redis user and status databases and this node's place in the fleet (shown with
/// authentication).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Authentication and user databases")]
pub struct Fleet {
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
}

/// Quotas, rate limits, nonces and lifetimes (0 quota = unlimited).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Quotas, rate limits and lifetimes")]
pub struct Limits {
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
    pub(super) unauthorized_ratelimit_rps: Option<u32>,
    /// Nonces are always stateless here (HMAC-signed timestamps); `=false` is refused as a no-op
    /// with a warning.
    #[arg(long = "stateless-nonce", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", hide_possible_values = true,
          value_parser = BoolishValueParser::new())]
    pub(super) stateless_nonce: Option<bool>,
    /// Derive the nonce key from this secret instead of a random per-process key, so nodes
    /// sharing it accept each other's nonces across restarts and behind a load balancer.
    #[arg(long = "stateless-nonce-secret", value_name = "SECRET")]
    pub stateless_nonce_secret: Option<Secret>,
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
}

/// Certificates and TLS versions for the TLS and DTLS listeners.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "TLS and DTLS")]
pub struct Tls {
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
}

/// Redirection (300 ALTERNATE-SERVER): `IP`, `IPv4:PORT` or `[IPv6]:PORT`, checked.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Redirection")]
pub struct Redirect {
    /// Server to redirect UDP/TCP Allocate requests to (300 ALTERNATE-SERVER); repeatable.
    #[arg(long = "alternate-server", value_name = "IP[:PORT]", value_parser = check_server_address)]
    pub alternate_servers: Vec<String>,
    /// Server to redirect TLS/DTLS Allocate requests to; repeatable.
    #[arg(long = "tls-alternate-server", value_name = "IP[:PORT]",
          value_parser = check_server_address)]
    pub tls_alternate_servers: Vec<String>,
    /// Holding N allocations or more, send new UDP/TCP Allocates to the least loaded peer of
    /// this node's region that holds fewer and is under its own N (vigi-turn extension; needs
    /// --redis-statsdb; 0: never).
    #[arg(
        long = "redirect-over-allocations",
        value_name = "N",
        default_value_t = 0
    )]
    pub redirect_over_allocations: u32,
}

/// Logging, the process identity and draining.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Logging and process")]
pub struct Logging {
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
    pub(super) moderate_verbose: bool,
    /// Extra verbose mode.
    #[arg(short = 'V', long = "Verbose")]
    pub(super) extra_verbose: bool,
    /// *Resolved*: 0 normal, 1 `-v`/`--verbose`, 2 `-V`/`--Verbose`.
    #[arg(skip)]
    pub verbose: u8,
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
}

/// Socket sizes and TCP/TLS connection caps (vigi-turn extensions).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Sockets")]
pub struct Sockets {
    /// SO_RCVBUF/SO_SNDBUF size in bytes for client and relay sockets (default: the kernel's).
    #[arg(long = "sock-buf-size", value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..)
              .map(|n| usize::try_from(n).unwrap_or(usize::MAX)))]
    pub sock_buf_size: Option<usize>,
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
}

/// The Prometheus endpoint.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Prometheus metrics")]
pub struct Metrics {
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
    pub(super) prometheus_path: Option<String>,
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
}

/// The admin HTTP API and the log format (vigi-turn extensions).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Admin API and log format")]
pub struct Admin {
    /// Serve the admin HTTP API on this address (needs --admin-token).
    #[arg(long = "admin-listen", value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires.
    #[arg(long = "admin-token", value_name = "TOKEN", env = "VIGI_ADMIN_TOKEN")]
    pub admin_token: Option<Secret>,
    /// Log as JSON lines (one object per event).
    #[arg(long = "log-json")]
    pub log_json: bool,
}

/// The Socket.io signaling companion (vigi-turn extensions).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Signaling companion")]
pub struct Signaling {
    /// Serve Socket.io call signaling and `GET /api/turn-credentials` on this address (off unless given).
    #[arg(long = "signaling-listen", value_name = "ADDR:PORT")]
    pub signaling_listen: Option<SocketAddr>,
    /// Require a signed token in the Socket.io handshake (HMAC-SHA256 of `userId:expiry`).
    #[arg(
        long = "signaling-secret",
        value_name = "SECRET",
        env = "VIGI_SIGNALING_SECRET"
    )]
    pub signaling_secret: Option<Secret>,
    /// An origin (`https://app.example.org`, or `*`) allowed to use the signaling HTTP API and
    /// Socket.io from a browser besides the page's own; repeatable (default: same origin only).
    #[arg(long = "signaling-cors-origin", value_name = "ORIGIN")]
    pub signaling_cors_origins: Vec<String>,
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
    pub turn_uris: Vec<String>,
}
