//! The fleet: what relay nodes share through Redis, with coturn's key schema so that coturn's
//! tools (`turnadmin -N`) and coturn nodes share the same database.
//!
//! This sits beside the relay like [`crate::http`] and [`crate::signal`]: tasks on the control
//! plane's runtime ([`crate::control`], which says why none of them blocks it) talk to Redis; the
//! workers never do. What
//! the engines need is published as a snapshot ([`crate::engine::auth::UserDb`]) in
//! [`crate::engine::Shared`], swapped whole after each read, so the data path never waits on
//! Redis and a Redis outage changes nothing for live allocations.
//!
//! - [`userdb`]: `--redis-userdb` — users (`turn/realm/<realm>/user/<name>/key` or `.../password`),
//!   REST secrets (the set `turn/realm/<realm>/secret`, and the older string keys
//!   `turn/realm/<realm>/secret/<n>`) and realm options (`user-quota`, `total-quota`, `max-bps`).

pub mod quota;
pub mod stats;
pub mod userdb;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::config::RedisConn;

/// How long a connection attempt may take when the connection string sets no `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one command may take before the connection is considered gone.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Open a connection as coturn's connection string says (AUTH and SELECT done by the client).
pub async fn connect(conn: &RedisConn) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(conn.host.clone(), conn.port),
        redis: redis::RedisConnectionInfo {
            db: conn.db,
            username: conn.username.clone(),
            password: conn.password.as_ref().map(|p| p.expose().to_owned()),
            ..Default::default()
        },
    };
    let timeout = match conn.connect_timeout {
        0 => DEFAULT_CONNECT_TIMEOUT,
        s => Duration::from_secs(s),
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(RESPONSE_TIMEOUT);
    redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// A Redis connection a reader keeps across its rounds, reopened after a failure, and the health
/// it last logged: a change of health is logged once, not every round.
pub(crate) struct Link {
    conn: Option<redis::aio::MultiplexedConnection>,
    healthy: Option<bool>,
    /// `redis-userdb HOST:PORT db N`: how its log lines begin.
    label: String,
}

impl Link {
    pub(crate) fn new(what: &str, conn: &RedisConn) -> Self {
        Link {
            conn: None,
            healthy: None,
            label: format!("{what} {}:{} db {}", conn.host, conn.port, conn.db),
        }
    }

    /// The connection, opened now if there is none.
    pub(crate) async fn get(
        &mut self,
        conn: &RedisConn,
    ) -> redis::RedisResult<&mut redis::aio::MultiplexedConnection> {
        if self.conn.is_none() {
            self.conn = Some(connect(conn).await?);
        }
        Ok(self.conn.as_mut().expect("opened above"))
    }

    /// A round went well; `what` says what it did, logged when Redis was not healthy before.
    pub(crate) fn up(&mut self, what: impl FnOnce() -> String) {
        if self.healthy != Some(true) {
            tracing::info!("{}: {}", self.label, what());
        }
        self.healthy = Some(true);
    }

    /// A round failed: the connection is dropped (the next round reopens it), and `error` with
    /// `consequence` is logged when Redis was not already failing.
    pub(crate) fn down(&mut self, error: &redis::RedisError, consequence: &str) {
        self.conn = None;
        if self.healthy != Some(false) {
            tracing::warn!("{}: {error}; {consequence}", self.label);
        }
        self.healthy = Some(false);
    }
}

/// Keys per MGET.
const MGET_CHUNK: usize = 500;

/// Every key matching `pattern`, sorted and without repeats (SCAN, so Redis is never blocked as
/// by KEYS), stopping once `max` are read: a bound on a database gone wrong.
pub(crate) async fn scan(
    c: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    max: usize,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        keys.extend(batch);
        if next == 0 || keys.len() >= max {
            keys.sort_unstable();
            keys.dedup();
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The values of `keys`, in order (MGET, [`MGET_CHUNK`] keys at a time).
pub(crate) async fn mget(
    c: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> redis::RedisResult<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(MGET_CHUNK) {
        let v: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query_async(c).await?;
        out.extend(v);
    }
    Ok(out)
}

/// `s` with Redis glob characters escaped, for a SCAN pattern.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One node as its heartbeat last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    /// `HOST:PORT` clients reach it on (UDP and TCP).
    pub address: String,
    pub region: String,
    pub allocations: u64,
    pub draining: bool,
}

/// The fleet's live nodes from their heartbeats (read with `--redis-statsdb`), for handing out
/// the nearest healthy nodes with credentials. Used only while fresh.
#[derive(Debug, Default)]
pub struct Directory {
    current: ArcSwapOption<(u64, Vec<NodeStatus>)>,
}

impl Directory {
    pub fn store(&self, fetched_unix: u64, nodes: Vec<NodeStatus>) {
        self.current.store(Some(Arc::new((fetched_unix, nodes))));
    }

    /// Up to `max` nodes that do not drain: those of `region` first (when given), each group
    /// least loaded first. Empty when the last read is older than the heartbeat's lifetime.
    pub fn nearest(&self, region: Option<&str>, unix_now: u64, max: usize) -> Vec<NodeStatus> {
        let Some(cur) = self.current.load_full() else {
            return Vec::new();
        };
        if unix_now > cur.0 + stats::HEARTBEAT_TTL {
            return Vec::new();
        }
        let mut nodes: Vec<&NodeStatus> = cur.1.iter().filter(|n| !n.draining).collect();
        nodes.sort_by_key(|n| (region.is_some_and(|r| r != n.region), n.allocations));
        nodes.into_iter().take(max).cloned().collect()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_gives_the_callers_region_first_then_least_loaded() {
        let n = |name: &str, region: &str, allocations: u64, draining: bool| NodeStatus {
            name: name.into(),
            address: format!("{name}:3478"),
            region: region.into(),
            allocations,
            draining,
        };
        let d = Directory::default();
        assert!(d.nearest(Some("eu"), 100, 3).is_empty());
        d.store(
            100,
            vec![
                n("a", "us", 0, false),
                n("b", "eu", 9, false),
                n("c", "eu", 1, false),
                n("d", "eu", 0, true),
            ],
        );
        let names = |v: Vec<NodeStatus>| v.into_iter().map(|n| n.name).collect::<Vec<_>>();
        assert_eq!(names(d.nearest(Some("eu"), 100, 3)), ["c", "b", "a"]);
        assert_eq!(names(d.nearest(Some("us"), 100, 2)), ["a", "c"]);
        assert_eq!(names(d.nearest(None, 100, 3)), ["a", "c", "b"]);
        assert!(d
            .nearest(Some("eu"), 100 + stats::HEARTBEAT_TTL + 1, 3)
            .is_empty());
    }

    #[test]
    fn glob_escape_quotes_pattern_characters() {
        assert_eq!(glob_escape("north.gov"), "north.gov");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
