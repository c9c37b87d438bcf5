//! The control plane's one tokio runtime: the HTTP listeners ([`crate::http`]: Prometheus, the
//! admin API), signaling ([`crate::signal`]), the fleet's Redis tasks ([`crate::fleet`]: the user
//! database reader, the status writer, the quota counter) and the process's signal loop
//! (`src/ops.rs`) all run on it. The relay workers keep their own threads and runtimes
//! ([`crate::io`], DESIGN.md "Workers, shared nothing"), and so does the TLS handshaker
//! ([`crate::io::tls`], which says why).
//!
//! [`CONTROL_THREADS`] runtime threads (`vigi-control`), whatever the number of cores: the
//! control plane is light, and the cores belong to the workers. Two rather than one so that one
//! long piece of CPU work — a scrape or an admin listing over 100k allocations, the status
//! writer's pass over every snapshot — leaves the other thread to signaling and the heartbeats.
//! The signal loop does not take either: the main thread drives it with [`ControlPlane::block_on`],
//! so SIGTERM, SIGHUP and the systemd watchdog are answered whatever the tasks do. With none of
//! those services configured the runtime has no thread of its own: the signal loop is all it
//! runs, on the main thread.
//!
//! Nothing here may block a runtime thread. What was checked (issue 17, item 10):
//!
//! - **Redis**: every call is asynchronous (`redis::aio`'s `MultiplexedConnection` in the fleet
//!   tasks and the call records, `ConnectionManager` in the signaling cluster), each bounded by a
//!   connect and a response timeout ([`crate::fleet::connect`]: 10 s (or the connection
//!   string's `connect_timeout`) and 5 s; [`crate::signal::cluster`]: 2 s and 2 s). No
//!   synchronous client (`redis::Connection`, `get_connection`, `query`) is used anywhere. A
//!   Redis host name is resolved by tokio's `lookup_host`, which runs `getaddrinfo` on the
//!   runtime's blocking pool, not on a runtime thread. An outage so costs a task its round,
//!   never a thread.
//! - **Locks**: the `std` mutexes the tasks take (a worker's snapshot, the signaling hub's call
//!   table and counters, the connection caps, the fast path's maps) are held for copying out or
//!   a few map operations, never across an `.await`, and no holder waits on I/O meanwhile.
//! - **Files**: the SIGHUP reload (the configuration file) and the SIGUSR2 reload (certificate and
//!   key) read files on the main thread, in the signal loop, as before; a scrape reads
//!   `/proc/self/fd` and `/proc/self/limits` (procfs: no disk).
//! - **systemd**: `sd_notify` is one datagram on a Unix socket, sent from the signal loop.
//! - **Start-up**: the wait for the user database's first read (`src/main.rs`, at most 3 s)
//!   polls from the main thread while the reader runs here.
//!
//! Blocking work that may come later goes to [`tokio::task::spawn_blocking`]; the blocking pool
//! is capped at [`MAX_BLOCKING_THREADS`].

use std::future::Future;
use std::io;

/// Runtime threads of the control plane.
pub const CONTROL_THREADS: usize = 2;
/// Threads the blocking pool may grow to (name resolution for Redis; idle ones end after 10 s).
pub const MAX_BLOCKING_THREADS: usize = 8;

/// The control plane's runtime. Built before anything is bound (so that signals are caught from
/// the start) and shut down after the workers; dropping it does not wait for its tasks.
pub struct ControlPlane {
    rt: Option<tokio::runtime::Runtime>,
}

impl ControlPlane {
    /// `services`: whether any of HTTP, signaling or the fleet's Redis tasks will run here;
    /// without them the runtime is a current-thread one that only the signal loop drives.
    pub fn new(services: bool) -> io::Result<ControlPlane> {
        let mut builder = if services {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(CONTROL_THREADS);
            b
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        let rt = builder
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name("vigi-control")
            .enable_all()
            .build()?;
        Ok(ControlPlane { rt: Some(rt) })
    }

    /// The runtime, for spawning on it or entering its context.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime().handle()
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    /// Run `fut` as a task of the control plane; it runs until it returns or the process ends.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle().spawn(fut)
    }

    /// Drive `fut` on the calling thread (the main thread's signal loop), the runtime's
    /// reactor and timers with it.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.runtime().block_on(fut)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The process is about to exit: tasks (open HTTP connections, a Redis round) are dropped
        // where they stand, and a blocking name lookup is not waited for, as when each service
        // had its own thread and the process simply ended.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tasks_run_beside_a_blocked_one_and_drop_does_not_wait() {
        let cp = ControlPlane::new(true).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // One runtime thread busy (as with a long scrape): the other still runs tasks.
        let (release, released) = std::sync::mpsc::channel::<()>();
        cp.spawn(async move {
            let _ = released.recv_timeout(Duration::from_secs(10));
        });
        cp.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(name.as_deref(), Some("vigi-control"));
        // The main thread drives its own future meanwhile.
        assert_eq!(cp.block_on(async { 7 }), 7);
        let t0 = std::time::Instant::now();
        drop(cp);
        assert!(t0.elapsed() < Duration::from_secs(5));
        let _ = release.send(());
    }
}
