//! Logging that a SIGHUP can change: the level (`-v`/`-V`, unless `RUST_LOG` is set) through a
//! `tracing_subscriber::reload` layer, and the destination (`--log-file`), which is reopened on
//! every reload so that logrotate's move-then-HUP works. `--log-json` writes one JSON object per
//! line. The allocation lifecycle lines are [`vigi_turn::metrics::log_allocation_started`] and
//! [`vigi_turn::metrics::log_allocation_ended`].

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};
use vigi_turn::config::Config;

/// Where log lines go now.
enum Target {
    Stdout,
    Discard,
    File(File),
}

/// A writer whose target can be swapped while the subscriber runs.
#[derive(Clone)]
struct Sink(Arc<Mutex<Target>>);

struct SinkWriter<'a>(MutexGuard<'a, Target>);

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0 {
            Target::Stdout => io::stdout().write(buf),
            Target::Discard => Ok(buf.len()),
            Target::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0 {
            Target::Stdout => io::stdout().flush(),
            Target::Discard => Ok(()),
            Target::File(f) => f.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What a reload may change about logging.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    sink: Sink,
    from_env: bool,
}

impl Logging {
    /// Install the global subscriber for `config`. `RUST_LOG`, when set, wins over `-v`.
    pub fn init(config: &Config) -> Logging {
        let from_env = std::env::var_os("RUST_LOG").is_some();
        let filter = if from_env {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level(config)))
        } else {
            EnvFilter::new(level(config))
        };
        let (filter, handle) = reload::Layer::new(filter);
        let (target, problem) = open_target(config);
        let ansi = matches!(target, Target::Stdout) && io::IsTerminal::is_terminal(&io::stdout());
        let sink = Sink(Arc::new(Mutex::new(target)));
        // `--log-json`: one JSON object per line instead of text (exactly one of the two layers).
        let json = config.log_json.then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_target(false)
                .with_writer(sink.clone())
        });
        let text = (!config.log_json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(ansi)
                .with_writer(sink.clone())
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(json)
            .with(text)
            .init();
        if let Some(p) = problem {
            tracing::warn!("{p}");
        }
        Logging {
            filter: handle,
            sink,
            from_env,
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
        let (target, problem) = open_target(config);
        *self.sink.0.lock().unwrap_or_else(|e| e.into_inner()) = target;
        if let Some(p) = problem {
            tracing::warn!("{p}");
        }
    }
}

fn level(config: &Config) -> &'static str {
    match config.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Stdout, nothing (`--no-stdout-log` without a file), or `--log-file` opened for append.
fn open_target(config: &Config) -> (Target, Option<String>) {
    match config.log_file.as_deref() {
        None | Some("stdout") | Some("-") | Some("syslog") => {
            if config.no_stdout_log && config.log_file.is_none() {
                (Target::Discard, None)
            } else {
                (Target::Stdout, None)
            }
        }
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => (Target::File(f), None),
            Err(e) => (
                Target::Stdout,
                Some(format!(
                    "cannot open log file {path}: {e}; logging to stdout"
                )),
            ),
        },
    }
}
