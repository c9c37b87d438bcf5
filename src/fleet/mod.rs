//! The fleet: what relay nodes share through Redis, with coturn's key schema so that coturn's
//! tools (`turnadmin -N`) and coturn nodes share the same database.
//!
//! This sits beside the relay like [`crate::http`] and [`crate::signal`]: a thread with its own
//! tokio runtime ([`crate::io::spawn_runtime_thread`]) talks to Redis; the workers never do. What
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

use std::time::Duration;

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
            password: conn.password.clone(),
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
    fn glob_escape_quotes_pattern_characters() {
        assert_eq!(glob_escape("north.gov"), "north.gov");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
