//! `--redis-userdb`: read one realm's users, REST secrets and options from Redis every
//! `--redis-refresh` seconds and publish them as a [`UserDb`] snapshot.
//!
//! Keys (coturn's schema, `schema.userdb.redis`; what `turnadmin -N` writes):
//! - `turn/realm/<realm>/user/<name>/key`: the hex MD5 key of `name:realm:password` (wins);
//! - `turn/realm/<realm>/user/<name>/password`: the password itself;
//! - `turn/realm/<realm>/secret`: a set of TURN REST secrets (and the older form, string keys
//!   `turn/realm/<realm>/secret/<anything>`);
//! - `turn/realm/<realm>/user-quota`, `total-quota`, `max-bps`: numbers overriding the flags.
//!
//! A read that fails keeps the last good snapshot; the engine uses it for up to
//! `--redis-max-stale` seconds after it was read, then refuses the database's users (fail
//! closed). Static `--user`s and `--static-auth-secret`s keep working throughout.
//!
//! Each snapshot also names the REST secret to mint new credentials with (for the signaling
//! companion's `/api/turn-credentials` when no `--static-auth-secret` is given): the one most
//! recently added, which the reader tracks across its reads ([`SecretAges`]).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::config::types::parse_hex_key;
use crate::config::RedisConn;
use crate::engine::auth::{SecretAges, UserDb, UserDbCell, UserSecret};

/// At most this many keys are read per SCAN pattern: a bound on a database gone wrong.
const MAX_KEYS: usize = 1_000_000;

/// What the reader needs.
#[derive(Debug, Clone)]
pub struct UserDbSource {
    pub conn: RedisConn,
    pub realm: String,
    pub refresh: Duration,
    /// Seconds a snapshot stays usable after its read.
    pub max_stale: u64,
    pub cell: Arc<UserDbCell>,
}

/// Start the reader on the control plane's runtime; it runs until the process ends.
pub fn spawn(control: &crate::control::ControlPlane, source: UserDbSource) {
    control.spawn(run(source));
}

async fn run(source: UserDbSource) {
    let mut link = super::Link::new("redis-userdb", &source.conn);
    let mut ages = SecretAges::default();
    let mut tick = tokio::time::interval(source.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match link.get(&source.conn).await {
            Ok(c) => read(c, &source.realm, super::unix_now()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(mut db) => {
                if ages.observe(&mut db) && db.mint_secret().is_some() {
                    tracing::info!(
                        "redis-userdb: new credentials are minted with the newest of {} REST secrets",
                        db.secrets()
                    );
                }
                link.up(|| {
                    format!(
                        "read {} users and {} secrets of realm {}",
                        db.users(),
                        db.secrets(),
                        source.realm
                    )
                });
                source.cell.store(db, source.max_stale);
            }
            Err(e) => {
                let then = format!("keeping the last good read for up to {}s", source.max_stale);
                link.down(&e, &then);
            }
        }
    }
}

/// One full read of `realm`'s data.
pub async fn read(
    c: &mut MultiplexedConnection,
    realm: &str,
    unix_now: u64,
) -> redis::RedisResult<UserDb> {
    let mut db = UserDb::new(unix_now);
    let base = format!("turn/realm/{realm}/");
    let pattern = format!("turn/realm/{}/user/*", super::glob_escape(realm));
    let keys = super::scan(c, &pattern, MAX_KEYS).await?;
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|k| k.ends_with("/key") || k.ends_with("/password"))
        .collect();
    let values = super::mget(c, &keys).await?;
    let mut passwords = Vec::new();
    let mut with_key = std::collections::HashSet::new();
    for (k, v) in keys.iter().zip(values) {
        let Some(v) = v else { continue };
        let Some(rest) = k.strip_prefix(&base).and_then(|r| r.strip_prefix("user/")) else {
            continue;
        };
        if let Some(name) = rest.strip_suffix("/key") {
            // coturn reads the first 32 hex digits of the stored key.
            match v.get(..32).and_then(parse_hex_key) {
                Some(key) => {
                    db.add_user(name, realm, &UserSecret::Key(key));
                    with_key.insert(name.to_owned());
                }
                None => tracing::warn!("redis-userdb: {k}: not a hex MD5 key; user skipped"),
            }
        } else if let Some(name) = rest.strip_suffix("/password") {
            passwords.push((name.to_owned(), v));
        }
    }
    // A key wins over a password, as in coturn.
    for (name, pw) in passwords {
        if !with_key.contains(&name) {
            db.add_user(&name, realm, &UserSecret::Password(pw));
        }
    }
    let secret_key = format!("{base}secret");
    let set: redis::RedisResult<Vec<String>> =
        redis::cmd("SMEMBERS").arg(&secret_key).query_async(c).await;
    match set {
        Ok(v) => v.iter().for_each(|s| db.add_secret(s.as_bytes())),
        // Not a set: someone stored a string there; the older per-key form is read below.
        Err(e) if e.kind() == redis::ErrorKind::TypeError => {}
        Err(e) if e.code() == Some("WRONGTYPE") => {}
        Err(e) => return Err(e),
    }
    let older = super::scan(
        c,
        &format!("turn/realm/{}/secret/*", super::glob_escape(realm)),
        MAX_KEYS,
    )
    .await?;
    for s in super::mget(c, &older).await?.into_iter().flatten() {
        db.add_secret(s.as_bytes());
    }
    let opts = [
        format!("{base}user-quota"),
        format!("{base}total-quota"),
        format!("{base}max-bps"),
    ];
    let v = super::mget(c, &opts).await?;
    let num = |i: usize| v[i].as_deref().and_then(|s| s.trim().parse::<u64>().ok());
    db.user_quota = num(0).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    db.total_quota = num(1).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    db.max_bps = num(2);
    Ok(db)
}

/// Write a long-term user as `turnadmin -a -N` does: the hex MD5 key of `name:realm:password`
/// under `turn/realm/<realm>/user/<name>/key` (and no stored password), so coturn nodes and
/// vigi-turn nodes on the same database both accept it.
pub async fn write_user(
    c: &mut MultiplexedConnection,
    realm: &str,
    name: &str,
    password: &str,
) -> redis::RedisResult<()> {
    let key = crate::engine::auth::key_md5(name, realm, password);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let base = format!("turn/realm/{realm}/user/{name}");
    redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(format!("{base}/key"))
        .arg(hex)
        .ignore()
        .cmd("DEL")
        .arg(format!("{base}/password"))
        .ignore()
        .query_async(c)
        .await
}

/// Add a TURN REST secret to the realm's set, as `turnadmin -s SECRET -N` does.
pub async fn add_secret(
    c: &mut MultiplexedConnection,
    realm: &str,
    secret: &str,
) -> redis::RedisResult<()> {
    redis::cmd("SADD")
        .arg(format!("turn/realm/{realm}/secret"))
        .arg(secret)
        .query_async(c)
        .await
}
