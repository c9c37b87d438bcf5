//! Call records in Redis (`--signaling-redis`): every finished call ([`CallRecord`]) is kept as
//! JSON under `vigi/call/<callId>` for [`RETENTION`], indexed by the sorted sets `vigi/calls`
//! and `vigi/calls/user/<userId>` (scored by the call's start, Unix seconds), so that any node
//! sharing the Redis lists it (`GET /api/calls?user=&since=` on the admin API).
//!
//! Redis is never waited on by a call: records are written from a task of their own, and an
//! unreachable Redis costs the records written meanwhile (logged once when it goes, once when
//! it comes back), nothing else.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::calls::CallRecord;
use crate::config::RedisConn;

/// How long a record is kept.
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// The most records one listing returns.
pub const MAX_LISTED: usize = 1000;

const INDEX: &str = "vigi/calls";

fn record_key(call_id: &str) -> String {
    format!("vigi/call/{call_id}")
}

fn user_index(user: &str) -> String {
    format!("vigi/calls/user/{user}")
}

/// A record as stored and listed: times in Unix seconds (fractions kept).
pub fn to_json(r: &CallRecord, ended_unix: f64) -> Value {
    let talk = r.talked_for.map(|d| d.as_secs_f64());
    let initiated = ended_unix - r.rang_for.as_secs_f64() - talk.unwrap_or(0.0);
    json!({
        "callId": r.call_id,
        "callerId": r.caller,
        "calleeId": r.callee,
        "type": r.kind.as_str(),
        "initiatedAt": initiated,
        "answeredAt": talk.map(|_| initiated + r.rang_for.as_secs_f64()),
        "endedAt": ended_unix,
        "durationSecs": talk.unwrap_or(0.0),
        "reason": r.reason.as_str(),
    })
}

/// One runtime's connection to the records' Redis, opened when first needed and again after a
/// failure.
pub struct RecordStore {
    conn: RedisConn,
    link: Mutex<Option<redis::aio::MultiplexedConnection>>,
    healthy: AtomicBool,
}

impl RecordStore {
    pub fn new(conn: RedisConn) -> Self {
        RecordStore {
            conn,
            link: Mutex::new(None),
            healthy: AtomicBool::new(true),
        }
    }

    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let mut link = self.link.lock().await;
        if let Some(c) = &*link {
            return Ok(c.clone());
        }
        let c = crate::fleet::connect(&self.conn).await?;
        *link = Some(c.clone());
        Ok(c)
    }

    fn outcome<T>(&self, r: redis::RedisResult<T>, what: &str) -> Option<T> {
        match r {
            Ok(v) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "call records: Redis {}:{} reachable again",
                        self.conn.host,
                        self.conn.port
                    );
                }
                Some(v)
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "call records: Redis {}:{} unreachable ({what}: {e}); signaling goes on \
                         on this node alone, without records",
                        self.conn.host,
                        self.conn.port
                    );
                }
                None
            }
        }
    }

    /// Keep `records`, which ended at `ended_unix`.
    pub async fn store(&self, records: &[CallRecord], ended_unix: f64) {
        let conn = self.connection().await;
        let Some(mut c) = self.outcome(conn, "connect") else {
            return;
        };
        let ttl = RETENTION.as_secs();
        let oldest = ended_unix - ttl as f64;
        let mut p = redis::pipe();
        for r in records {
            let v = to_json(r, ended_unix);
            let at = v["initiatedAt"].as_f64().unwrap_or(ended_unix);
            p.cmd("SET")
                .arg(record_key(&r.call_id))
                .arg(v.to_string())
                .arg("EX")
                .arg(ttl)
                .ignore();
            for index in [
                INDEX.to_owned(),
                user_index(&r.caller),
                user_index(&r.callee),
            ] {
                p.cmd("ZADD").arg(&index).arg(at).arg(&r.call_id).ignore();
                p.cmd("ZREMRANGEBYSCORE")
                    .arg(&index)
                    .arg("-inf")
                    .arg(oldest)
                    .ignore();
                p.cmd("EXPIRE").arg(&index).arg(ttl).ignore();
            }
        }
        let r: redis::RedisResult<()> = p.query_async(&mut c).await;
        if self.outcome(r, "write").is_none() {
            *self.link.lock().await = None;
        }
    }

    /// The records of `user` (or everyone's) that started at or after `since` (Unix seconds),
    /// oldest first, at most [`MAX_LISTED`]. `None` when Redis cannot be reached.
    pub async fn list(&self, user: Option<&str>, since: f64) -> Option<Vec<Value>> {
        let conn = self.connection().await;
        let mut c = self.outcome(conn, "connect")?;
        let index = user.map_or_else(|| INDEX.to_owned(), user_index);
        let ids: redis::RedisResult<Vec<String>> = redis::cmd("ZRANGEBYSCORE")
            .arg(&index)
            .arg(since)
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_LISTED)
            .query_async(&mut c)
            .await;
        let Some(ids) = self.outcome(ids, "read") else {
            *self.link.lock().await = None;
            return None;
        };
        if ids.is_empty() {
            return Some(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| record_key(id)).collect();
        let values: redis::RedisResult<Vec<Option<String>>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut c).await;
        let values = self.outcome(values, "read")?;
        Some(
            values
                .into_iter()
                .flatten()
                .filter_map(|v| serde_json::from_str(&v).ok())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::calls::{CallKind, EndReason};
    use std::time::Duration;

    #[test]
    fn a_record_as_json() {
        let r = CallRecord {
            call_id: "c1".into(),
            caller: "alice".into(),
            callee: "bob".into(),
            kind: CallKind::Video,
            rang_for: Duration::from_secs(3),
            talked_for: Some(Duration::from_secs(60)),
            reason: EndReason::Answered,
        };
        let v = to_json(&r, 1_000.0);
        assert_eq!(v["initiatedAt"], 937.0);
        assert_eq!(v["answeredAt"], 940.0);
        assert_eq!(v["durationSecs"], 60.0);
        assert_eq!(v["reason"], "answered");
        assert_eq!(v["type"], "video");
        let missed = CallRecord {
            talked_for: None,
            reason: EndReason::Missed,
            ..r
        };
        assert_eq!(to_json(&missed, 1_000.0)["answeredAt"], Value::Null);
    }
}
