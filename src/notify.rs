//! systemd's readiness protocol (`sd_notify(3)`), by hand: one datagram per state change to the
//! Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! Without `$NOTIFY_SOCKET` every call is a no-op, so the same binary runs under systemd
//! (`Type=notify`), Docker or a shell.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where readiness messages go, and how often the watchdog wants a ping.
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the watchdog is ours only
    /// when `WATCHDOG_PID` is unset or is this process).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let addr = socket_addr(name.as_encoded_bytes())
                .map_err(|e| tracing::warn!("NOTIFY_SOCKET={name:?}: {e}"))
                .ok()?;
            let sock = UnixDatagram::unbound()
                .map_err(|e| tracing::warn!("NOTIFY_SOCKET: {e}"))
                .ok()?;
            Some((sock, addr))
        });
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .map_or(true, |p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// Send one state string (`READY=1`, ...); failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!("sd_notify {state:?}: {e}");
            }
        }
    }

    /// All sockets are bound and the workers run.
    pub fn ready(&self) {
        self.notify("READY=1");
    }

    /// A SIGHUP reload begins (systemd wants the monotonic time with it, `Type=notify-reload`).
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    pub fn status(&self, text: &str) {
        self.notify(&format!("STATUS={text}"));
    }

    /// How often to send `WATCHDOG=1`: half of `WatchdogSec`, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// `/path` or `@abstract` (systemd also accepts a leading NUL for the latter).
fn socket_addr(name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match name.first() {
        Some(b'@') | Some(0) => std::os::unix::net::SocketAddr::from_abstract_name(&name[1..]),
        Some(b'/') => {
            use std::os::unix::ffi::OsStrExt;
            std::os::unix::net::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name))
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an absolute path or @abstract name",
        )),
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with.
fn monotonic_usec() -> u64 {
    let Ok(ts) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return 0;
    };
    (ts.tv_sec() as u64) * 1_000_000 + (ts.tv_nsec() as u64) / 1_000
}
