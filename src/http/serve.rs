//! One accept loop for every HTTP listener of ours (Prometheus, admin API, signaling), with the
//! limits none of them may go without: a header-read timeout, an idle timeout, a cap on
//! connections per listener and per client address, and a share of the process's file
//! descriptors that HTTP as a whole never exceeds ([`descriptor_budget`]), so that a slowloris
//! cannot starve the relay sockets (each allocation holds one).
//!
//! A connection over a cap is accepted and closed at once rather than left in the kernel's
//! backlog, so that one client address filling its share does not hold up the others. HTTP/1.1
//! only (hyper's server), upgrades (Socket.io's WebSocket) included; every request carries the
//! peer address as axum's `ConnectInfo<SocketAddr>`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request's headers must have arrived this long after the connection waits for them.
    pub header_read: Duration,
    /// A connection that moves no byte either way for this long is closed (between requests,
    /// or a request or response that stalls).
    pub idle: Duration,
    /// Open connections of this listener at most ...
    pub max_connections: usize,
    /// ... and of one client address (IPv6: its /64).
    pub max_per_ip: u32,
}

impl Limits {
    /// Prometheus, health and the admin API: few clients, short requests.
    pub const OBSERVE: Limits = Limits {
        header_read: Duration::from_secs(5),
        idle: Duration::from_secs(30),
        max_connections: 64,
        max_per_ip: 16,
    };
    /// Signaling: Socket.io long-polls for up to its ping interval (25 s) without a byte, and
    /// its WebSockets are handed to Socket.io, whose heartbeat closes dead ones.
    pub const SIGNALING: Limits = Limits {
        header_read: Duration::from_secs(5),
        idle: Duration::from_secs(60),
        max_connections: 50_000,
        max_per_ip: 512,
    };
}

/// The largest request head read, and what a connection buffers.
const MAX_BUF: usize = 64 * 1024;

/// The part of the open-files limit every HTTP listener together may hold: a quarter, leaving
/// the rest to relay sockets, listeners and Redis. Read once, after the binary has raised the
/// soft limit.
pub fn descriptor_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let nofile = crate::sys::open_files_limit().unwrap_or(1024);
        usize::try_from(nofile / 4).unwrap_or(usize::MAX).max(64)
    })
}

impl Limits {
    /// These limits within the descriptor budget: the Prometheus and admin listeners keep
    /// their small caps, which are set aside; signaling gets the rest of the budget at most,
    /// and one client address a quarter of whatever its listener gets. Each listener has its
    /// own cap, so a flood of one never closes another.
    pub fn within_budget(self, budget: usize) -> Limits {
        let reserved = 2 * Limits::OBSERVE.max_connections;
        let max_connections = if self.max_connections <= Limits::OBSERVE.max_connections {
            self.max_connections
        } else {
            self.max_connections
                .min(budget.saturating_sub(reserved))
                .max(16)
        };
        let quarter = u32::try_from(max_connections / 4)
            .unwrap_or(u32::MAX)
            .max(1);
        Limits {
            max_connections,
            max_per_ip: self.max_per_ip.min(quarter),
            ..self
        }
    }
}

/// A listener's open connections, by client address.
struct Open {
    limits: Limits,
    slots: Arc<Semaphore>,
    by_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// One admitted connection's share of the caps, given back when the connection's socket is
/// dropped (after a WebSocket upgrade that is when Socket.io lets it go).
struct Permit {
    _slot: OwnedSemaphorePermit,
    ip: IpAddr,
    open: Arc<Open>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut by_ip = self
            .open
            .by_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

impl Open {
    fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let ip = crate::signal::limit::ip_key(ip);
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if by_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_ip {
            return None;
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        *by_ip.entry(ip).or_default() += 1;
        Some(Permit {
            _slot: slot,
            ip,
            open: self.clone(),
        })
    }
}

/// Serve `app` on `listener` within `limits`, until the runtime ends.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, what: &'static str) {
    let limits = limits.within_budget(descriptor_budget());
    tracing::debug!(
        "{what}: at most {} connections, {} per address",
        limits.max_connections,
        limits.max_per_ip
    );
    let open = Arc::new(Open {
        limits,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        by_ip: Mutex::new(HashMap::new()),
    });
    let mut last_warning: Option<Instant> = None;
    let mut warn = |msg: String| {
        if last_warning.map_or(true, |t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!("{what}: {msg}");
            last_warning = Some(Instant::now());
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                warn(format!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = open.try_admit(peer.ip()) else {
            warn(format!(
                "connection cap reached ({} per address, {} in all); closing new \
                 connections from {}",
                limits.max_per_ip,
                limits.max_connections,
                peer.ip()
            ));
            drop(stream);
            continue;
        };
        tokio::spawn(connection(stream, peer, permit, app.clone(), limits));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
    app: Router,
    limits: Limits,
) {
    let _ = stream.set_nodelay(true);
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Tracked {
        inner: stream,
        epoch,
        last: last.clone(),
        _permit: permit,
    };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    loop {
        let quiet = epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        let left = limits.idle.saturating_sub(quiet);
        if left.is_zero() {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
            return;
        }
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(left) => {}
        }
    }
}

/// A connection's socket that notes when a byte last moved, and holds its [`Permit`].
struct Tracked {
    inner: TcpStream,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read or written.
    last: Arc<AtomicU64>,
    _permit: Permit,
}

impl Tracked {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_the_descriptor_budget() {
        // nofile 1024: a budget of 256, 128 of it set aside for Prometheus and admin.
        let sig = Limits::SIGNALING.within_budget(256);
        assert_eq!((sig.max_connections, sig.max_per_ip), (128, 32));
        assert_eq!(Limits::OBSERVE.within_budget(256), Limits::OBSERVE);
        let big = Limits::SIGNALING.within_budget(1 << 20);
        assert_eq!((big.max_connections, big.max_per_ip), (50_000, 512));
        let total = sig.max_connections + 2 * Limits::OBSERVE.max_connections;
        assert!(total <= 256);
    }
}
