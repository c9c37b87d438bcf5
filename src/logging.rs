//! Logging that a SIGHUP can change: the level (`-v`/`-V`, unless `RUST_LOG` is set) through a
//! `tracing_subscriber::reload` layer, and the destination (`--log-file`), which is reopened on
//! every reload so that logrotate's move-then-HUP works. `--log-json` writes one JSON object per
//! line. The allocation lifecycle lines are [`vigi_turn::metrics::log_allocation_started`] and
//! [`vigi_turn::metrics::log_allocation_ended`].

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};
use vigi_turn::config::Config;

/// Where log lines go now. As coturn: the log file and stdout both, unless `--no-stdout-log`.
/// When neither is left (`--no-stdout-log` without a file, or only `--syslog` and journald is
/// unreachable), warnings and errors still reach stderr: they are never lost.
#[derive(Default)]
struct Targets {
    stdout: bool,
    file: Option<File>,
    /// Warnings and errors go to stderr (nothing else would show them).
    stderr_warnings: bool,
}

/// A writer whose targets can be swapped while the subscriber runs.
#[derive(Clone)]
struct Sink(Arc<Mutex<Targets>>);

struct SinkWriter<'a> {
    targets: MutexGuard<'a, Targets>,
    warning: bool,
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Every target gets the whole line; a failing one does not stop the others.
        if self.targets.stdout {
            let _ = io::stdout().write_all(buf);
        }
        if let Some(f) = &mut self.targets.file {
            let _ = f.write_all(buf);
        }
        if self.warning && self.targets.stderr_warnings {
            let _ = io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.targets.stdout {
            io::stdout().flush()?;
        }
        if let Some(f) = &mut self.targets.file {
            f.flush()?;
        }
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter {
            targets: self.0.lock().unwrap_or_else(|e| e.into_inner()),
            warning: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SinkWriter {
            targets: self.0.lock().unwrap_or_else(|e| e.into_inner()),
            warning: *meta.level() <= Level::WARN,
        }
    }
}

/// What a reload may change about logging.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    sink: Sink,
    from_env: bool,
    /// journald was asked for at start (it cannot be added or removed by a reload).
    journald: bool,
}

impl Logging {
    /// Install the global subscriber for `config`. `RUST_LOG`, when set, wins over `-v`.
    /// `--syslog` (or `--log-file=syslog`) adds journald, chosen at start only.
    pub fn init(config: &Config) -> Logging {
        let from_env = std::env::var_os("RUST_LOG").is_some();
        let filter = if from_env {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level(config)))
        } else {
            EnvFilter::new(level(config))
        };
        let (filter, handle) = reload::Layer::new(filter);
        let mut problems = Vec::new();
        let journald = if wants_syslog(config) {
            match tracing_journald::layer() {
                Ok(layer) => Some(layer.with_syslog_identifier("vigi-turn".to_owned())),
                Err(e) => {
                    problems.push(format!(
                        "--syslog: journald is not reachable ({e}); log lines go to the other targets only"
                    ));
                    None
                }
            }
        } else {
            None
        };
        let (targets, problem) = open_targets(config, journald.is_some());
        problems.extend(problem);
        let ansi =
            targets.stdout && targets.file.is_none() && io::IsTerminal::is_terminal(&io::stdout());
        let sink = Sink(Arc::new(Mutex::new(targets)));
        // `--log-json`: one JSON object per line instead of text (exactly one of the two layers).
        let json = config.admin.log_json.then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_target(false)
                .with_writer(sink.clone())
        });
        let text = (!config.admin.log_json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(ansi)
                .with_writer(sink.clone())
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(json)
            .with(text)
            .with(journald)
            .init();
        for p in problems {
            tracing::warn!("{p}");
        }
        Logging {
            filter: handle,
            sink,
            from_env,
            journald: wants_syslog(config),
        }
    }

    /// Apply the level and log file of a reloaded configuration (the file is reopened even
    /// when its name is unchanged).
    pub fn reload(&self, config: &Config) {
        if !self.from_env {
            if let Err(e) = self.filter.reload(EnvFilter::new(level(config))) {
                tracing::warn!("reload: cannot change the log level: {e}");
            }
        }
        if wants_syslog(config) != self.journald {
            tracing::warn!("reload: --syslog changes only on restart");
        }
        let (targets, problem) = open_targets(config, self.journald);
        *self.sink.0.lock().unwrap_or_else(|e| e.into_inner()) = targets;
        if let Some(p) = problem {
            tracing::warn!("{p}");
        }
    }
}

fn level(config: &Config) -> &'static str {
    use vigi_turn::config::cli::LogLevel;
    if let Some(min) = config.log.log_min_level {
        return match min {
            LogLevel::Debug => "debug",
            LogLevel::Info | LogLevel::Control => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error => "error",
        };
    }
    match config.log.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

fn wants_syslog(config: &Config) -> bool {
    config.log.syslog || config.log.log_file.as_deref() == Some("syslog")
}

/// coturn's rules: `--log-file` is written together with stdout unless `--no-stdout-log`;
/// "stdout" and "-" force stdout; "syslog" means journald. `journald` says whether journald
/// takes the lines (then no file is written, as coturn's `--syslog`).
fn open_targets(config: &Config, journald: bool) -> (Targets, Option<String>) {
    let mut t = Targets {
        stdout: !config.log.no_stdout_log,
        ..Targets::default()
    };
    let mut problem = None;
    match config.log.log_file.as_deref() {
        Some("stdout") | Some("-") => t.stdout = true,
        None | Some("syslog") => {}
        Some(_) if journald => {}
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => t.file = Some(f),
            Err(e) => {
                t.stdout = true;
                problem = Some(format!(
                    "cannot open log file {path}: {e}; logging to stdout"
                ));
            }
        },
    }
    t.stderr_warnings = !t.stdout && t.file.is_none() && !journald;
    (t, problem)
}
