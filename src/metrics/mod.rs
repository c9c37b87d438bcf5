//! Every metric name in one place, and the Prometheus text rendering.
//!
//! The workers count in plain integers they own ([`crate::engine::Counters`],
//! [`crate::engine::stats::AllocationStats`]) and publish a [`WorkerSnapshot`] about once a
//! second: their counters, sums over their live allocations and their own K busiest
//! allocations ([`crate::engine::server::Aggregates`]), never a list of every allocation. This
//! module never touches the data path: at scrape time it adds the snapshots up and writes the
//! Prometheus text exposition format (version 0.0.4) directly. The per-allocation listing of the
//! admin API is asked of the workers when it is requested ([`Monitor::list`]).
//!
//! - `monitor.rs`: [`Monitor`], the workers' handles and the merge of their snapshots
//!   ([`Totals`]), and the on-demand listing;
//! - `render.rs`: the exposition, family by family, the engine's counters from the one
//!   [`crate::engine::server::COUNTERS`] table and the rest from tables of their own;
//! - `text.rs`: the text format's pieces (HELP/TYPE headers, label escaping, samples).
//!
//! Why hand-written, and not `prometheus-client` with a collector reading the snapshots at
//! scrape time (issue 17, item 4, decided by measurement, `cargo bench --bench metrics`): with
//! 100,000 live allocations on 2 workers and the top 10 on, a scrape takes 51–68 µs here and
//! 57–88 µs through `prometheus-client` 0.26 (criterion on 2 shared cores: the ranges overlap),
//! 288.7 k against 310.0 k instructions (callgrind: 7 % fewer here). Either way it no longer
//! grows with the allocations, since the snapshots hold totals. What decides is the names:
//! `prometheus-client` appends `_total` to every counter, so coturn's counters
//! (`turn_traffic_rcvb`, `stun_binding_request`) could keep their names only typed `unknown`,
//! which dashboards and `rate()` users would see. The registry-based crates (`metrics` +
//! `metrics-exporter-prometheus`, `prometheus`) are built for code that *records* events, which
//! would put a registry lookup or an atomic per packet on the workers, or a second copy of every
//! number pushed into a registry once a second; our numbers already exist as totals, and series
//! must vanish (top-K allocations) without a registry that remembers them.
//!
//! Names follow coturn (`src/apps/relay/prom_server.c`): `stun_binding_{request,response,error}`,
//! `turn_total_allocations{type}`, `turn_traffic_*{realm}` and `turn_traffic_peer_*{realm}` (plus
//! `user` with `--prometheus-username-labels`), `turn_total_traffic_*` and
//! `turn_total_traffic_peer_*`. Unlike coturn, traffic counts are live (live allocations
//! included), not added at session end. Our own series are `vigi_turn_*`;
//! `turn_allocations_duration` follows coturn's naming style but no coturn release exports it.
//!
//! Cardinality is bounded by configuration, never by the number of sessions: per-worker and
//! per-relay-IP series, and at most K per-allocation series (`--prometheus-top-allocations`).
//! Only the opt-in `--prometheus-username-labels` grows with users, as in coturn.

mod monitor;
mod render;
mod text;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub use crate::engine::server::relayed_bytes;
use crate::engine::{AllocationId, Transport};
pub use crate::io::WorkerSnapshot;
pub use monitor::{ask_workers, list_allocations, Monitor, Totals, LIST_TIMEOUT};

/// An allocation's id outside its worker: `w<worker>-<slot>-<generation>`, e.g. `w0-12-3`.
pub fn format_id(worker: usize, id: AllocationId) -> String {
    format!("w{worker}-{}-{}", id.index, id.generation)
}

/// The inverse of [`format_id`].
pub fn parse_id(s: &str) -> Option<(usize, AllocationId)> {
    let mut parts = s.strip_prefix('w')?.split('-');
    let worker = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((worker, AllocationId { index, generation }))
}

/// coturn's `type` label of `turn_total_allocations` (its `socket_type_name`).
pub fn coturn_type(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS/TCP",
        Transport::Dtls => "DTLS",
    }
}

/// What the rendering needs besides the snapshots.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Add a `user` label to `turn_traffic_*` (coturn's `--prometheus-username-labels`; the
    /// workers publish traffic per user for it: `ServerConfig::traffic_by_user`).
    pub username_labels: bool,
    /// Per-allocation series for this many of the busiest allocations (0 = none; the workers
    /// publish their own top K: `ServerConfig::top_allocations`).
    pub top_k: usize,
    /// The realm label (one realm per server).
    pub realm: String,
    /// Relay addresses, for `vigi_turn_relay_ports_free`.
    pub relay_ips: Vec<IpAddr>,
    /// The kernel fast path (`--xdp-interface`), for `vigi_turn_fastpath_*`.
    pub fastpath: Option<Arc<Mutex<crate::io::fastpath::FastPath>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = AllocationId {
            index: 12,
            generation: 3,
        };
        assert_eq!(format_id(0, id), "w0-12-3");
        assert_eq!(parse_id("w0-12-3"), Some((0, id)));
        assert_eq!(parse_id("w0-12"), None);
        assert_eq!(parse_id("w0-12-3-4"), None);
        assert_eq!(parse_id("0-12-3"), None);
    }
}
