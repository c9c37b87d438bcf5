//! The user and total quotas across the fleet: every second each node writes how many
//! allocations each user holds on it (`vigi-turn/usage/<realm>/<node>`, a hash user → count that
//! expires after [`USAGE_TTL`] seconds, so a dead node's counts disappear) and reads the other
//! nodes' hashes into [`FleetUsage`], which the engine adds to its own exact counts when it
//! checks `--user-quota` (or the realm's `user-quota`) with the user's count elsewhere, and
//! `--total-quota` (or the realm's `total-quota`) with the sum of all counts elsewhere.
//!
//! The engine never waits for Redis, so the fleet count is at most about two seconds old: nodes
//! admitting allocations within that window can together exceed a quota by the number of nodes
//! minus one. When Redis is away the last read stops counting after
//! [`crate::engine::auth::FLEET_USAGE_MAX_AGE`] seconds and each node enforces the quotas on its
//! own allocations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::config::RedisConn;
use crate::engine::auth::FleetUsage;
use crate::io::{Control, WorkerHandle};

/// Seconds a node's usage hash lives without renewal.
pub const USAGE_TTL: u64 = 5;

/// What the counter needs.
pub struct QuotaSource {
    pub conn: RedisConn,
    pub realm: String,
    pub node: String,
    pub workers: Vec<WorkerHandle>,
    pub usage: Arc<FleetUsage>,
}

/// Start the counter on the control plane's runtime; it runs until the process ends.
pub fn spawn(control: &crate::control::ControlPlane, source: QuotaSource) {
    control.spawn(run(source));
}

fn usage_key(realm: &str, node: &str) -> String {
    format!("vigi-turn/usage/{realm}/{node}")
}

async fn run(source: QuotaSource) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy: Option<bool> = None;
    loop {
        tick.tick().await;
        // Each worker counts its own (by the allocations' shared names: no string copied).
        let mut mine: HashMap<Arc<str>, u32> = HashMap::new();
        let counted =
            crate::metrics::ask_workers(&source.workers, |reply| Control::CountByUser { reply })
                .await;
        for (user, n) in counted.into_iter().flat_map(|(_, c)| c) {
            *mine.entry(user).or_default() += n;
        }
        if conn.is_none() {
            conn = super::connect(&source.conn).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            if healthy != Some(false) {
                tracing::warn!("fleet quota: Redis unreachable; user quotas count this node only");
            }
            healthy = Some(false);
            continue;
        };
        match exchange(c, &source.realm, &source.node, &mine).await {
            Ok(elsewhere) => {
                source.usage.store(super::unix_now(), elsewhere);
                healthy = Some(true);
            }
            Err(e) => {
                conn = None;
                if healthy != Some(false) {
                    tracing::warn!("fleet quota: {e}; user quotas count this node only");
                }
                healthy = Some(false);
            }
        }
    }
}

/// Write this node's counts, read everybody else's.
async fn exchange(
    c: &mut MultiplexedConnection,
    realm: &str,
    node: &str,
    mine: &HashMap<Arc<str>, u32>,
) -> redis::RedisResult<HashMap<String, u32>> {
    let key = usage_key(realm, node);
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("DEL").arg(&key).ignore();
    if !mine.is_empty() {
        pipe.cmd("HSET").arg(&key);
        for (user, n) in mine {
            pipe.arg(&**user).arg(*n);
        }
        pipe.ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(USAGE_TTL).ignore();
    }
    pipe.query_async::<()>(c).await?;
    let pattern = format!("vigi-turn/usage/{}/*", super::glob_escape(realm));
    let mut cursor: u64 = 0;
    let mut others = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        others.extend(batch.into_iter().filter(|k| *k != key));
        if next == 0 || others.len() > 100_000 {
            break;
        }
        cursor = next;
    }
    let mut total: HashMap<String, u32> = HashMap::new();
    for k in others {
        let m: HashMap<String, u32> = redis::cmd("HGETALL").arg(&k).query_async(c).await?;
        for (user, n) in m {
            let t = total.entry(user).or_default();
            *t = t.saturating_add(n);
        }
    }
    Ok(total)
}
