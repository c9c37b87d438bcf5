//! The view of the running workers that metrics, the admin API and the fleet share: their
//! handles, their last snapshots added up ([`Totals`]), and the per-allocation listing they
//! build when asked ([`list_allocations`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::engine::server::{Select, TopAllocation};
use crate::engine::stats::AllocationStats;
use crate::engine::{AllocationInfo, Counters, Shared};
use crate::io::{Control, WorkerHandle, WorkerSnapshot};
use crate::signal::calls::CallStats;

use super::Options;

/// How long [`list_allocations`] waits for the workers' answers (a worker answers between two
/// batches of packets; one that does not answer by then is left out of the listing).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// Ask every worker of `workers` over its control channel with the message `ask` makes from an
/// answer channel, and wait for the answers: (worker index, answer), in worker order. A worker
/// that has stopped is left out, and one that has not answered within [`LIST_TIMEOUT`] of the
/// call (a worker answers between two batches of packets) too.
pub async fn ask_workers<'a, T>(
    workers: impl IntoIterator<Item = &'a WorkerHandle>,
    ask: impl Fn(mpsc::UnboundedSender<T>) -> Control,
) -> Vec<(usize, T)> {
    let mut asked = Vec::new();
    for w in workers {
        let (reply, rx) = mpsc::unbounded_channel();
        if w.control.send(ask(reply)).is_ok() {
            asked.push((w.index, rx));
        }
    }
    let deadline = tokio::time::Instant::now() + LIST_TIMEOUT;
    let mut out = Vec::with_capacity(asked.len());
    for (w, mut rx) in asked {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(answer)) => out.push((w, answer)),
            Ok(None) => {} // the worker has stopped
            Err(_) => tracing::warn!("worker {w} did not answer in time"),
        }
    }
    out
}

/// The live allocations `select` picks on `workers`, with the index of the worker that holds
/// each: every worker builds its part on its own thread ([`ask_workers`]).
pub async fn list_allocations<'a>(
    workers: impl IntoIterator<Item = &'a WorkerHandle>,
    select: &Select,
) -> Vec<(usize, AllocationInfo)> {
    let answers = ask_workers(workers, |reply| Control::List {
        select: select.clone(),
        reply,
    })
    .await;
    answers
        .into_iter()
        .flat_map(|(w, list)| list.into_iter().map(move |a| (w, a)))
        .collect()
}

/// Every worker's snapshot added up, as the rendering and `/api/stats` read it.
#[derive(Debug, Default)]
pub struct Totals {
    /// Every worker's counters added up (ended allocations' traffic and durations included).
    pub counters: Counters,
    /// Live allocations, and of those by transport ([`crate::engine::server::TRANSPORTS`]).
    pub allocations: usize,
    pub by_transport: [u64; 4],
    pub permissions: usize,
    pub channels: usize,
    /// The traffic of the live allocations.
    pub live: AllocationStats,
    /// Ended and live allocations' traffic.
    pub traffic: AllocationStats,
    /// The K busiest allocations of all workers (worker index, allocation), busiest first.
    pub top: Vec<(usize, TopAllocation)>,
    /// Traffic per user, ended and live allocations, by name (with username labels).
    pub by_user: Vec<(Arc<str>, AllocationStats)>,
}

impl Totals {
    /// Add `snaps` (by worker index) up, keeping the `top_k` busiest of the workers' top lists.
    pub fn of(snaps: &[WorkerSnapshot], top_k: usize) -> Totals {
        let mut t = Totals::default();
        let mut users: HashMap<&Arc<str>, AllocationStats> = HashMap::new();
        for (w, s) in snaps.iter().enumerate() {
            t.counters.merge(&s.counters);
            let l = &s.live;
            t.allocations += l.allocations;
            for (a, b) in t.by_transport.iter_mut().zip(l.by_transport) {
                *a += b;
            }
            t.permissions += l.permissions;
            t.channels += l.channels;
            t.live.merge(&l.live);
            t.top.extend(l.top.iter().map(|a| (w, a.clone())));
            for (u, st) in &l.by_user {
                users.entry(u).or_default().merge(st);
            }
        }
        t.traffic = t.counters.closed_traffic;
        t.traffic.merge(&t.live);
        // Each worker's list is its own top K, so the K busiest of all are among them.
        t.top.sort_by(|a, b| {
            b.1.key()
                .partial_cmp(&a.1.key())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        t.top.truncate(top_k);
        t.by_user = users.into_iter().map(|(u, s)| (u.clone(), s)).collect();
        t.by_user.sort_by(|a, b| a.0.cmp(&b.0));
        t
    }
}

/// The running workers as metrics and the admin API see them.
pub struct Monitor {
    workers: Vec<WorkerHandle>,
    pub(super) shared: Arc<Shared>,
    pub opts: Options,
    calls: OnceLock<Arc<CallStats>>,
}

impl Monitor {
    pub fn new(workers: Vec<WorkerHandle>, shared: Arc<Shared>, opts: Options) -> Self {
        Monitor {
            workers,
            shared,
            opts,
            calls: OnceLock::new(),
        }
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// The last snapshot of every worker, by worker index.
    pub fn snapshots(&self) -> Vec<WorkerSnapshot> {
        self.workers
            .iter()
            .map(|w| w.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Every worker's snapshot as it is now (sums only: no top K, no traffic per user), asked
    /// over its control channel; a worker that does not answer within [`LIST_TIMEOUT`] is
    /// represented by its last published snapshot.
    pub async fn current(&self) -> Vec<WorkerSnapshot> {
        let mut fresh = ask_workers(&self.workers, |reply| Control::Snapshot { reply })
            .await
            .into_iter()
            .peekable();
        let mut out = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            match fresh.next_if(|(i, _)| *i == w.index) {
                Some((_, snap)) => out.push(snap),
                None => out.push(w.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            }
        }
        out
    }

    /// The last snapshots added up.
    pub fn totals(&self) -> (Vec<WorkerSnapshot>, Totals) {
        let snaps = self.snapshots();
        let totals = Totals::of(&snaps, self.opts.top_k);
        (snaps, totals)
    }

    /// The live allocations `select` picks, from every worker (see [`list_allocations`]).
    pub async fn list(&self, select: &Select) -> Vec<(usize, AllocationInfo)> {
        list_allocations(&self.workers, select).await
    }

    /// Free relay ports per relay address.
    pub fn ports_free(&self) -> Vec<(IpAddr, u32)> {
        self.opts
            .relay_ips
            .iter()
            .map(|ip| (*ip, self.shared.ports.free(*ip)))
            .collect()
    }

    /// Export the signaling companion's call counts from now on (once; later calls are
    /// ignored).
    pub fn attach_calls(&self, calls: Arc<CallStats>) {
        let _ = self.calls.set(calls);
    }

    pub(super) fn calls(&self) -> Option<&CallStats> {
        self.calls.get().map(|c| &**c)
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        super::render::render(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::engine::AllocationId;

    /// A worker handle whose control channel is answered by `answer` (None: never read).
    fn worker(index: usize, answer: Option<Vec<u32>>) -> WorkerHandle {
        let (control, mut rx) = mpsc::unbounded_channel();
        if let Some(slots) = answer {
            tokio::spawn(async move {
                while let Some(c) = rx.recv().await {
                    if let Control::List { reply, .. } = c {
                        let list = slots.iter().map(|&i| info(i)).collect();
                        let _ = reply.send(list);
                    }
                }
            });
        } else {
            drop(rx);
        }
        WorkerHandle {
            index,
            control,
            snapshot: Arc::new(Mutex::new(WorkerSnapshot::default())),
        }
    }

    fn info(index: u32) -> AllocationInfo {
        let a: std::net::SocketAddr = ([127, 0, 0, 1], 1).into();
        AllocationInfo {
            id: AllocationId {
                index,
                generation: 0,
            },
            username: "u".into(),
            five_tuple: crate::engine::FiveTuple {
                transport: crate::engine::Transport::Udp,
                client: crate::engine::ClientAddr::new(a),
                server: a,
            },
            relay: a,
            reported_relay: a,
            second: None,
            started_unix: 0,
            expires_in: 0,
            permissions: 0,
            channels: 0,
            stats: AllocationStats::default(),
            rate: 0.0,
        }
    }

    #[tokio::test]
    async fn listing_merges_the_workers_answers_and_skips_a_stopped_one() {
        let workers = [
            worker(0, Some(vec![3, 4])),
            worker(1, None),
            worker(2, Some(vec![7])),
        ];
        let listed: Vec<(usize, u32)> = list_allocations(&workers, &Select::All)
            .await
            .iter()
            .map(|(w, a)| (*w, a.id.index))
            .collect();
        assert_eq!(listed, [(0, 3), (0, 4), (2, 7)]);
    }
}
