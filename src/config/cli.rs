//! The one clap [`Command`] that parses both the command line and `turnserver.conf`.
//!
//! Option names and short letters are coturn's (`turnserver -h`), so an existing command line or
//! config file works unchanged. [`Cli`] holds the options vigi-turn implements, typed, in the
//! groups of [`super::options`]; every other coturn option is listed once in [`UNSUPPORTED`] with
//! its policy (ignore with a warning, or refuse to start). Moving an option to "implemented"
//! means deleting its row there and adding a field to one of the groups.
//!
//! coturn accepts a value on boolean flags (`--no-udp=0`, `fingerprint=off` in the file), so every
//! flag here takes an optional `=VALUE` understood by clap's boolish parser (1/0, on/off, yes/no,
//! true/false, t/f, y/n).

use std::path::PathBuf;

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, Parser};

use super::options::{
    Admin, Auth, Fleet, Limits, Listeners, Logging, Metrics, Redirect, Relay, Signaling, Sockets,
    Stun, Tls,
};
use super::types::UserEntry;

/// The implemented options, as parsed (defaults applied, nothing resolved or cross-checked yet):
/// the configuration file switches, then the groups [`super::Config`] keeps.
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
    /// Configuration file (default: turnserver.conf searched in ., ./etc, ../etc, /etc,
    /// /etc/coturn, /usr/local/etc, /usr/local/etc/coturn).
    #[arg(
        short = 'c',
        long = "conf-file",
        value_name = "FILE",
        help_heading = "Configuration file"
    )]
    pub conf_file: Option<PathBuf>,
    /// Do not read any configuration file.
    #[arg(short = 'n', help_heading = "Configuration file")]
    pub no_config: bool,

    #[command(flatten)]
    pub listeners: Listeners,
    #[command(flatten)]
    pub relay: Relay,
    #[command(flatten)]
    pub stun: Stun,
    #[command(flatten)]
    pub auth: Auth,
    #[command(flatten)]
    pub fleet: Fleet,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub tls: Tls,
    #[command(flatten)]
    pub redirect: Redirect,
    #[command(flatten)]
    pub log: Logging,
    #[command(flatten)]
    pub sockets: Sockets,
    #[command(flatten)]
    pub metrics: Metrics,
    #[command(flatten)]
    pub admin: Admin,
    #[command(flatten)]
    pub signaling: Signaling,
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

pub(super) fn parse_software(s: &str) -> Result<Software, String> {
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

pub(super) fn parse_ratelimit(s: &str) -> Result<u32, String> {
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

/// Builds the command: the derived [`Cli`] arguments, coturn's boolean-flag convention, our
/// `--version` (coturn's `-V` is `--Verbose`), and the [`UNSUPPORTED`] options.
pub fn command() -> Command {
    // The last group's heading would carry over to `--version`, which belongs under "Options".
    let cmd = Cli::command()
        .next_help_heading(None::<&str>)
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
pub(super) struct UserParser;

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
