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
//! Each implemented option is declared once, in a group of [`options`] (listeners, relay,
//! STUN, authentication, fleet, limits, TLS, redirection, logging, sockets, metrics, admin API,
//! signaling): the parser fills the groups and [`Config`] keeps them, with the few values that
//! depend on other options worked out in place by `resolve` (documented as *resolved* on the
//! fields). [`Config::engine_config`] maps the result onto the engine's configuration.
//!
//! Options coturn has and vigi-turn does not implement are listed in [`cli::UNSUPPORTED`]: the
//! harmless ones are accepted with a warning, the ones whose absence would weaken security or
//! authentication make [`Config::load`] fail.

pub mod cli;
pub mod conf_file;
mod engine;
pub mod options;
mod resolve;
pub mod types;

use std::collections::HashSet;
use std::ffi::OsString;
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
/// [`Config::load_with_file_text`]. Each group is what the command-line parser read for its
/// options, command line and config file merged, after resolution: values that depend on other
/// options are worked out in place (the fields documented as *resolved*), empty texts given as
/// `key=""` read as absent. `Debug` never prints passwords or secrets: they are [`Secret`]s,
/// [`UserSecret`]s and [`RedisConn`]s, whose `Debug` redacts them.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: options::Listeners,
    pub relay: options::Relay,
    pub stun: options::Stun,
    pub auth: options::Auth,
    pub fleet: options::Fleet,
    pub limits: options::Limits,
    pub tls: options::Tls,
    pub redirect: options::Redirect,
    /// Logging and the process (identity, PID file, draining).
    pub log: options::Logging,
    pub sockets: options::Sockets,
    pub metrics: options::Metrics,
    pub admin: options::Admin,
    pub signaling: options::Signaling,

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
    resolve::resolve(cli, conf_path, warnings)
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

#[cfg(test)]
mod tests;
