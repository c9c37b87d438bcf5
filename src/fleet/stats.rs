//! `--redis-statsdb`: allocation status and traffic with coturn's keys and channels, and this
//! node's heartbeat, written once a second from the workers' snapshots (never from the data
//! path; a slow Redis delays only this task, and a lost write is not retried).
//!
//! coturn's schema (`schema.stats.redis`), `<id>` an 18-digit number:
//! - `turn/realm/<realm>/user/<user>/allocation/<id>/status`: SET and PUBLISH `new lifetime=N`,
//!   then `refreshed lifetime=N` when the lifetime is extended; at the end DEL and PUBLISH
//!   `deleted`. The key expires with the allocation, so a dead node leaves nothing behind.
//! - `.../traffic` and `.../traffic/peer`: PUBLISH `rcvp=.., rcvb=.., sentp=.., sentb=..`, the
//!   packets and bytes since the last report (client side, resp. peer side);
//! - `.../total_traffic` and `.../total_traffic/peer`: PUBLISH the totals when it ends.
//!
//! The heartbeat is vigi-turn's own: `vigi-turn/node/<name>` holds a JSON object (name, address,
//! region, allocations, bytes per second relayed, free relay ports, draining, the load threshold
//! `redirect_over` (0: none), Unix time) and expires after [`HEARTBEAT_TTL`] seconds, so a node
//! that stops is gone from the fleet. The other nodes' heartbeats are read back each round into
//! [`crate::engine::redirect::FleetPeers`], where draining and loaded nodes send new Allocates.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::config::RedisConn;
use crate::engine::redirect::FleetPeer;
use crate::engine::server::Select;
use crate::engine::stats::AllocationStats;
use crate::engine::{AllocationId, AllocationInfo, Shared};
use crate::io::{WorkerHandle, WorkerSnapshot};

/// Seconds a heartbeat lives without renewal.
pub const HEARTBEAT_TTL: u64 = 5;
/// Heartbeat keys read at most per round: a bound on a database gone wrong.
const MAX_NODES: usize = 10_000;
/// The heartbeat key of node `name`.
pub fn heartbeat_key(name: &str) -> String {
    format!("vigi-turn/node/{name}")
}

/// What this node says about itself.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub region: String,
    /// `--redirect-over-allocations` (0: none), so that peers send clients here only below it.
    pub redirect_over_allocations: u32,
}

/// What the writer needs.
pub struct StatsDbSource {
    pub conn: RedisConn,
    pub realm: String,
    pub node: NodeInfo,
    pub workers: Vec<WorkerHandle>,
    pub shared: Arc<Shared>,
    pub relay_ips: Vec<IpAddr>,
    /// Filled with every live node's heartbeat.
    pub directory: Arc<super::Directory>,
}

/// Start the writer on the control plane's runtime; it runs until the process ends.
pub fn spawn(control: &crate::control::ControlPlane, source: StatsDbSource) {
    control.spawn(run(source));
}

/// coturn's 18-digit allocation id, unique on this node: worker, generation and slot.
pub fn numeric_id(worker: usize, id: AllocationId) -> String {
    let n = (worker as u64 % 1000) * 1_000_000_000_000_000
        + u64::from(id.generation % 1_000_000_000) * 1_000_000
        + id.index() as u64 % 1_000_000;
    format!("{n:018}")
}

#[derive(Debug, Clone)]
struct Seen {
    key: String,
    expires_unix: u64,
    stats: AllocationStats,
}

/// The status and traffic events between two rounds of snapshots, as Redis commands.
#[derive(Default)]
pub struct Tracker {
    seen: HashMap<(usize, AllocationId), Seen>,
    last_relayed: Option<u64>,
}

fn traffic(rcv: &crate::engine::stats::Flow, sent: &crate::engine::stats::Flow) -> String {
    format!(
        "rcvp={}, rcvb={}, sentp={}, sentb={}",
        rcv.packets, rcv.bytes, sent.packets, sent.bytes
    )
}

fn delta(now: &AllocationStats, before: &AllocationStats) -> AllocationStats {
    let d = |a: &crate::engine::stats::Flow, b: &crate::engine::stats::Flow| {
        crate::engine::stats::Flow {
            packets: a.packets.saturating_sub(b.packets),
            bytes: a.bytes.saturating_sub(b.bytes),
        }
    };
    AllocationStats {
        client_rcv: d(&now.client_rcv, &before.client_rcv),
        client_sent: d(&now.client_sent, &before.client_sent),
        peer_rcv: d(&now.peer_rcv, &before.peer_rcv),
        peer_sent: d(&now.peer_sent, &before.peer_sent),
        dropped: d(&now.dropped, &before.dropped),
    }
}

impl Tracker {
    /// Add to `pipe` what changed since the last call; `unix_now` dates the lifetimes.
    pub fn update(
        &mut self,
        pipe: &mut redis::Pipeline,
        realm: &str,
        listed: &[(usize, AllocationInfo)],
        unix_now: u64,
    ) {
        let mut live = std::collections::HashSet::new();
        for (w, a) in listed {
            live.insert((*w, a.id));
            self.one(pipe, realm, *w, a, unix_now);
        }
        let ended: Vec<_> = self
            .seen
            .keys()
            .filter(|k| !live.contains(k))
            .copied()
            .collect();
        for k in ended {
            let Some(s) = self.seen.remove(&k) else {
                continue;
            };
            let base = s.key.strip_suffix("/status").unwrap_or(&s.key);
            pipe.cmd("DEL").arg(&s.key).ignore();
            pipe.cmd("PUBLISH").arg(&s.key).arg("deleted").ignore();
            pipe.cmd("PUBLISH")
                .arg(format!("{base}/total_traffic"))
                .arg(traffic(&s.stats.client_rcv, &s.stats.client_sent))
                .ignore();
            pipe.cmd("PUBLISH")
                .arg(format!("{base}/total_traffic/peer"))
                .arg(traffic(&s.stats.peer_rcv, &s.stats.peer_sent))
                .ignore();
        }
    }

    fn one(
        &mut self,
        pipe: &mut redis::Pipeline,
        realm: &str,
        w: usize,
        a: &AllocationInfo,
        unix_now: u64,
    ) {
        let expires_unix = unix_now + a.expires_in;
        let lifetime = a.expires_in.max(1);
        match self.seen.get_mut(&(w, a.id)) {
            None => {
                let key = format!(
                    "turn/realm/{realm}/user/{}/allocation/{}/status",
                    a.username,
                    numeric_id(w, a.id)
                );
                let v = format!("new lifetime={lifetime}");
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(&v)
                    .arg("EX")
                    .arg(lifetime)
                    .ignore();
                pipe.cmd("PUBLISH").arg(&key).arg(&v).ignore();
                let before = AllocationStats::default();
                publish_traffic(pipe, &key, &delta(&a.stats, &before));
                self.seen.insert(
                    (w, a.id),
                    Seen {
                        key,
                        expires_unix,
                        stats: a.stats,
                    },
                );
            }
            Some(s) => {
                // A Refresh moved the expiry later (by more than the snapshot's rounding).
                if expires_unix > s.expires_unix + 1 {
                    let v = format!("refreshed lifetime={lifetime}");
                    pipe.cmd("SET")
                        .arg(&s.key)
                        .arg(&v)
                        .arg("EX")
                        .arg(lifetime)
                        .ignore();
                    pipe.cmd("PUBLISH").arg(&s.key).arg(&v).ignore();
                }
                s.expires_unix = expires_unix;
                publish_traffic(pipe, &s.key, &delta(&a.stats, &s.stats));
                s.stats = a.stats;
            }
        }
    }
}

fn publish_traffic(pipe: &mut redis::Pipeline, status_key: &str, d: &AllocationStats) {
    let base = status_key.strip_suffix("/status").unwrap_or(status_key);
    if d.client_rcv.packets + d.client_sent.packets > 0 {
        pipe.cmd("PUBLISH")
            .arg(format!("{base}/traffic"))
            .arg(traffic(&d.client_rcv, &d.client_sent))
            .ignore();
    }
    if d.peer_rcv.packets + d.peer_sent.packets > 0 {
        pipe.cmd("PUBLISH")
            .arg(format!("{base}/traffic/peer"))
            .arg(traffic(&d.peer_rcv, &d.peer_sent))
            .ignore();
    }
}

/// The heartbeat's JSON value.
pub fn heartbeat(
    node: &NodeInfo,
    snaps: &[WorkerSnapshot],
    free_ports: u64,
    bps: u64,
    unix_now: u64,
) -> String {
    let allocations: usize = snaps.iter().map(|s| s.live.allocations).sum();
    serde_json::json!({
        "name": node.name,
        "address": node.address,
        "region": node.region,
        "allocations": allocations,
        "bps": bps,
        "free_ports": free_ports,
        "draining": snaps.iter().any(|s| s.draining),
        "redirect_over": node.redirect_over_allocations,
        "unix": unix_now,
    })
    .to_string()
}

/// The heartbeats of the other healthy nodes of `me`'s region that do not drain, least loaded
/// (fewest allocations) first; every node's into `directory`.
async fn read_peers(
    c: &mut MultiplexedConnection,
    me: &NodeInfo,
    directory: &super::Directory,
    unix_now: u64,
) -> redis::RedisResult<Vec<FleetPeer>> {
    let keys = super::scan(c, "vigi-turn/node/*", MAX_NODES).await?;
    if keys.is_empty() {
        directory.store(unix_now, Vec::new());
        return Ok(Vec::new());
    }
    let values = super::mget(c, &keys).await?;
    directory.store(
        unix_now,
        values
            .iter()
            .flatten()
            .filter_map(|v| node_status(v, unix_now))
            .collect(),
    );
    Ok(pick_peers(me, values.iter().flatten(), unix_now))
}

/// A heartbeat as a [`super::NodeStatus`], if it parses and is fresh.
fn node_status(v: &str, unix_now: u64) -> Option<super::NodeStatus> {
    let h: serde_json::Value = serde_json::from_str(v).ok()?;
    if h["unix"].as_u64()? + HEARTBEAT_TTL < unix_now {
        return None;
    }
    Some(super::NodeStatus {
        name: h["name"].as_str()?.to_owned(),
        address: h["address"].as_str()?.to_owned(),
        region: h["region"].as_str()?.to_owned(),
        allocations: h["allocations"].as_u64()?,
        draining: h["draining"].as_bool()?,
    })
}

/// From heartbeat JSON values: the fresh, not draining nodes of `me`'s region except `me`,
/// least loaded first; a node takes load while under its `redirect_over` (a heartbeat without
/// one, from an older node, has none).
pub fn pick_peers<'a>(
    me: &NodeInfo,
    heartbeats: impl Iterator<Item = &'a String>,
    unix_now: u64,
) -> Vec<FleetPeer> {
    let mut peers: Vec<FleetPeer> = heartbeats
        .filter_map(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        .filter(|h| h["name"].as_str() != Some(me.name.as_str()))
        .filter(|h| h["region"].as_str() == Some(me.region.as_str()))
        .filter(|h| h["draining"].as_bool() == Some(false))
        .filter(|h| {
            h["unix"]
                .as_u64()
                .is_some_and(|t| t + HEARTBEAT_TTL >= unix_now)
        })
        .filter_map(|h| {
            let allocations = h["allocations"].as_u64()?;
            let over = h["redirect_over"].as_u64().unwrap_or(0);
            Some(FleetPeer {
                addr: h["address"].as_str()?.parse().ok()?,
                allocations,
                takes_load: over == 0 || allocations < over,
            })
        })
        .collect();
    peers.sort_by_key(|p| (p.allocations, p.addr));
    peers
}

async fn run(source: StatsDbSource) {
    const DROPPED: &str = "status reports are dropped";
    let mut link = super::Link::new("redis-statsdb", &source.conn);
    let mut tracker = Tracker::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let unix = super::unix_now();
        let snaps: Vec<WorkerSnapshot> = source
            .workers
            .iter()
            .map(|w| w.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        let listed = crate::metrics::list_allocations(&source.workers, &Select::All).await;
        let mut pipe = redis::pipe();
        tracker.update(&mut pipe, &source.realm, &listed, unix);
        let relayed: u64 = listed
            .iter()
            .map(|(_, a)| crate::metrics::relayed_bytes(&a.stats))
            .sum();
        let bps = tracker
            .last_relayed
            .map_or(0, |before| relayed.saturating_sub(before));
        tracker.last_relayed = Some(relayed);
        let free: u64 = source
            .relay_ips
            .iter()
            .map(|ip| u64::from(source.shared.ports.free(*ip)))
            .sum();
        pipe.cmd("SET")
            .arg(heartbeat_key(&source.node.name))
            .arg(heartbeat(&source.node, &snaps, free, bps, unix))
            .arg("EX")
            .arg(HEARTBEAT_TTL)
            .ignore();
        let c = match link.get(&source.conn).await {
            Ok(c) => c,
            Err(e) => {
                link.down(&e, DROPPED);
                continue;
            }
        };
        let done = match pipe.query_async::<()>(c).await {
            Ok(()) => read_peers(c, &source.node, &source.directory, unix).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(peers) => {
                source.shared.fleet_peers.store(unix, peers);
                link.up(|| {
                    format!(
                        "publishing allocation status and the heartbeat of node {}",
                        source.node.name
                    )
                });
            }
            Err(e) => link.down(&e, DROPPED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_fresh_same_region_not_draining_least_loaded_first() {
        let me = NodeInfo {
            name: "n1".into(),
            address: "10.0.0.1:3478".into(),
            region: "eu".into(),
            redirect_over_allocations: 0,
        };
        let hb = |name: &str, region: &str, allocs: u64, draining: bool, unix: u64| {
            serde_json::json!({"name": name, "address": format!("10.0.0.{}:3478", &name[1..]),
                "region": region, "allocations": allocs, "draining": draining, "unix": unix})
        };
        let over = |mut h: serde_json::Value, n: u64| {
            h["redirect_over"] = n.into();
            h
        };
        let all: Vec<String> = [
            hb("n1", "eu", 0, false, 100),
            over(hb("n2", "eu", 5, false, 100), 5),
            over(hb("n3", "eu", 1, false, 99), 2),
            hb("n4", "us", 0, false, 100),
            hb("n5", "eu", 0, true, 100),
            hb("n6", "eu", 0, false, 90),
            hb("n7", "eu", 7, false, 100),
        ]
        .iter()
        .map(|h| h.to_string())
        .chain(["not json".to_owned()])
        .collect();
        let peer = |n: u8, allocations: u64, takes_load: bool| FleetPeer {
            addr: std::net::SocketAddr::from(([10, 0, 0, n], 3478)),
            allocations,
            takes_load,
        };
        // n2 is at its threshold: still a peer (a draining node may send clients there), but
        // it takes no load; n7 has no threshold (or is an older node).
        assert_eq!(
            pick_peers(&me, all.iter(), 100),
            [peer(3, 1, true), peer(2, 5, false), peer(7, 7, true)]
        );
        let mine = NodeInfo {
            redirect_over_allocations: 9,
            ..me
        };
        let h: serde_json::Value =
            serde_json::from_str(&heartbeat(&mine, &[], 10, 0, 100)).unwrap();
        assert_eq!(h["redirect_over"], 9);
        assert_eq!(
            numeric_id(
                2,
                AllocationId {
                    index: 7,
                    generation: 3
                }
            ),
            "002000000003000007"
        );
    }
}
