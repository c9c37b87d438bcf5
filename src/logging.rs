//! Logging: the `tracing` subscriber (coturn's `--log-file` semantics with [`reopen`] for
//! SIGHUP, `-v`/`-V` levels, `RUST_LOG` override, `--log-json`), and the allocation lifecycle lines operators grep for.
//!
//! The session-end lines keep coturn's wording (`session ...: usage: realm=<..>, username=<..>,
//! rp=.., rb=.., sp=.., sb=..`, `peer usage: ...`, `closed (2nd stage), user <..> realm <..> ...,
//! reason: ..`) so existing log parsers keep working. The session id is the relay address (unique
//! across workers while the allocation lives). Usernames and client addresses are personal data:
//! they are written only when the debug level is on (`-v`), and shown as `-` otherwise. No
//! password, key, secret or token is ever logged.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::Config;
use crate::engine::allocation::Allocation;

/// The `--log-file` being written, if any, so [`reopen`] can swap it.
static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

/// A log file that can be reopened in place (after logrotate moved it away).
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reopen `--log-file` at its path (call on SIGHUP, as coturn does, so logrotate works). A no-op
/// when logging to stdout.
pub fn reopen() -> io::Result<()> {
    if let Some(lf) = LOG_FILE.get() {
        let f = open_append(&lf.path)?;
        *lf.file.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }
    Ok(())
}

/// Writes to the current [`LogFile`]; one per event.
struct LogWriter(Arc<LogFile>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
    }
}

/// Install the global subscriber: stdout, or `--log-file` (appended), at the level `-v`/`-V` ask
/// for; `RUST_LOG` wins. With `--log-json`, one JSON object per line.
pub fn init(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let level = match config.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // Where the lines go; `None` = stdout.
    let file = match config.log_file.as_deref() {
        None | Some("stdout") | Some("-") | Some("syslog") => None,
        Some(path) => {
            let path = PathBuf::from(path);
            match open_append(&path) {
                Ok(f) => {
                    let lf = Arc::new(LogFile {
                        path,
                        file: Mutex::new(f),
                    });
                    let _ = LOG_FILE.set(lf.clone());
                    Some(lf)
                }
                Err(e) => {
                    eprintln!(
                        "vigi-turn: cannot open log file {}: {e}; logging to stdout",
                        path.display()
                    );
                    None
                }
            }
        }
    };
    let silent = config.no_stdout_log && config.log_file.is_none();
    match (config.log_json, file) {
        (true, Some(f)) => builder
            .json()
            .with_ansi(false)
            .with_writer(move || LogWriter(f.clone()))
            .init(),
        (true, None) if silent => builder.json().with_writer(std::io::sink).init(),
        (true, None) => builder.json().init(),
        (false, Some(f)) => builder
            .with_ansi(false)
            .with_writer(move || LogWriter(f.clone()))
            .init(),
        (false, None) if silent => builder.with_writer(std::io::sink).init(),
        (false, None) => builder.init(),
    }
}

/// `name` when the debug level is on, else `-`.
fn personal(name: &str) -> &str {
    if tracing::enabled!(tracing::Level::DEBUG) {
        name
    } else {
        "-"
    }
}

/// The line logged when an allocation becomes active (coturn: `session ...: new, realm=<..>,
/// username=<..>, lifetime=..`).
pub fn allocation_started(realm: &str, a: &Allocation, lifetime: u32) {
    let client = a.five_tuple.client.to_string();
    tracing::info!(
        "session {}: new, realm=<{realm}>, username=<{}>, lifetime={lifetime}, transport={}, remote {}",
        a.relay,
        personal(&a.username),
        a.five_tuple.transport.as_str(),
        personal(&client),
    );
}

/// The lines logged when an active allocation ends, with its totals (payload bytes).
pub fn allocation_ended(realm: &str, a: &Allocation, reason: &str) {
    let user = personal(&a.username);
    let s = &a.stats;
    tracing::info!(
        "session {}: usage: realm=<{realm}>, username=<{user}>, rp={}, rb={}, sp={}, sb={}",
        a.relay,
        s.client_rcv.packets,
        s.client_rcv.bytes,
        s.client_sent.packets,
        s.client_sent.bytes,
    );
    tracing::info!(
        "session {}: peer usage: realm=<{realm}>, username=<{user}>, rp={}, rb={}, sp={}, sb={}",
        a.relay,
        s.peer_rcv.packets,
        s.peer_rcv.bytes,
        s.peer_sent.packets,
        s.peer_sent.bytes,
    );
    tracing::info!(
        "session {}: closed (2nd stage), user <{user}> realm <{realm}> origin <>, local {}, remote {}, reason: {reason}, dropped {} packets",
        a.relay,
        a.five_tuple.server,
        personal(&a.five_tuple.client.to_string()),
        s.dropped.packets,
    );
}
