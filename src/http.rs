//! HTTP listeners, served by axum on the control plane's runtime ([`crate::control`]), never on
//! a worker's thread, so that a slow scrape or admin call never delays a relay: the Prometheus
//! endpoint (`--prometheus`: `GET /metrics`,
//! and `GET /` answering 200 for health checks, as coturn) and the admin API
//! (`--admin-listen ADDR:PORT`, bearer `--admin-token`):
//!
//! - `GET /api/allocations[?user=NAME]`: every live allocation with its relayed addresses (both
//!   of a dual allocation) and counters, TCP relays' piped bytes included (JSON);
//! - `DELETE /api/allocations/{id}`: end one (`id` as listed, e.g. `w0-12-3`);
//! - `DELETE /api/users/{name}/allocations`: end every allocation of a user;
//! - `GET /api/stats`: the counters of every worker added up.
//!
//! Totals are read from the workers' snapshots (at most about a second old); the listing is
//! asked of the workers when requested (each builds its part on its own thread and answers over
//! a channel), and kills go to the owning worker's control channel: the HTTP tasks never
//! touch an engine.

pub mod serve;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, Secret};
use crate::engine::server::Select;
use crate::engine::stats::{AllocationStats, Flow};
use crate::engine::{AllocationInfo, Shared};
use crate::io::{Control, RunConfig, Running};
use crate::metrics::{self, Monitor, Options};

/// What the HTTP side needs from the run configuration; take it before [`crate::io::start`]
/// consumes the [`RunConfig`].
#[derive(Clone)]
pub struct Observe {
    shared: Arc<Shared>,
    realm: String,
    relay_ips: Vec<IpAddr>,
    fastpath: Option<Arc<std::sync::Mutex<crate::io::fastpath::FastPath>>>,
}

impl From<&RunConfig> for Observe {
    fn from(rc: &RunConfig) -> Self {
        Observe {
            shared: rc.shared.clone(),
            realm: rc.engine.realm.clone(),
            relay_ips: rc.engine.relay_ips.clone(),
            fastpath: rc.fastpath.clone(),
        }
    }
}

/// The running HTTP task and the addresses it serves. Dropping it leaves the task running (it
/// ends with the process).
pub struct HttpHandle {
    pub metrics_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub monitor: Arc<Monitor>,
}

/// Bind the Prometheus and admin listeners the configuration asks for and serve them on the
/// control plane. `Ok(None)` when neither is configured. Binding happens here, so a busy port is
/// an error at start-up.
pub fn spawn(
    control: &crate::control::ControlPlane,
    config: &Config,
    running: &Running,
    obs: Observe,
) -> io::Result<Option<HttpHandle>> {
    if !config.metrics.prometheus && config.admin.admin_listen.is_none() {
        return Ok(None);
    }
    let monitor = Arc::new(Monitor::new(
        running.workers.clone(),
        obs.shared,
        Options {
            username_labels: config.metrics.prometheus_username_labels,
            top_k: config.metrics.prometheus_top_allocations,
            realm: obs.realm,
            relay_ips: obs.relay_ips,
            fastpath: obs.fastpath,
        },
    ));
    let prom = if config.metrics.prometheus {
        let addr = match config.metrics.prometheus_address {
            Some(ip) => SocketAddr::new(ip, config.metrics.prometheus_port),
            None => default_any(config.metrics.prometheus_port),
        };
        Some(bind(addr, "prometheus")?)
    } else {
        None
    };
    let admin = match (
        config.admin.admin_listen,
        config.admin.admin_token.as_ref().map(Secret::expose),
    ) {
        (Some(addr), Some(token)) => Some((bind(addr, "admin API")?, token_digest(token))),
        (Some(_), None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--admin-listen needs --admin-token",
            ))
        }
        _ => None,
    };
    let metrics_addr = prom.as_ref().map(|l| l.local_addr()).transpose()?;
    let admin_addr = admin.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let m = monitor.clone();
    let calls = config.signaling.signaling_redis.clone();
    control.spawn(serve(m, prom, admin, calls));
    if let Some(a) = metrics_addr {
        tracing::info!("prometheus metrics on http://{a}/metrics");
    }
    if let Some(a) = admin_addr {
        tracing::info!("admin API on http://{a}/api/");
    }
    Ok(Some(HttpHandle {
        metrics_addr,
        admin_addr,
        monitor,
    }))
}

/// coturn's default: every interface, IPv6 and IPv4 (dual stack) when the host has IPv6.
fn default_any(port: u16) -> SocketAddr {
    if std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok() {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }
}

/// A non-blocking TCP listener; `[::]` also takes IPv4 whatever `net.ipv6.bindv6only` says.
fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let err =
        |e: io::Error| io::Error::new(e.kind(), format!("cannot listen for {what} on {addr}: {e}"));
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(128).map_err(err)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

async fn serve(
    m: Arc<Monitor>,
    prom: Option<TcpListener>,
    admin: Option<(TcpListener, [u8; 32])>,
    calls: Option<crate::config::RedisConn>,
) {
    let mut tasks = Vec::new();
    if let Some(l) = prom {
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/", get(|| async { "ok" }))
            .with_state(m.clone());
        tasks.push(tokio::spawn(run(l, app, "prometheus")));
    }
    if let Some((l, token)) = admin {
        let app = Router::new()
            .route("/api/allocations", get(list_allocations))
            .route("/api/allocations/{id}", delete(kill_allocation))
            .route("/api/users/{name}/allocations", delete(kill_user))
            .route("/api/stats", get(stats))
            .route("/api/calls", get(list_calls))
            .with_state(Arc::new(Admin {
                monitor: m,
                token,
                calls: calls.map(crate::signal::records::RecordStore::new),
            }));
        tasks.push(tokio::spawn(run(l, app, "admin API")));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn run(l: TcpListener, app: Router, what: &'static str) {
    let l = match tokio::net::TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{what} listener: {e}");
            return;
        }
    };
    serve::serve(l, app, serve::Limits::OBSERVE, what).await;
}

async fn metrics_handler(State(m): State<Arc<Monitor>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response()
}

// ------------------------------------------------------------------ admin API

struct Admin {
    monitor: Arc<Monitor>,
    /// `--signaling-redis`: the call records `GET /api/calls` lists.
    calls: Option<crate::signal::records::RecordStore>,
    /// SHA-256 of the token: comparing digests in constant time hides the token's length too.
    token: [u8; 32],
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Admin {
    /// `Authorization: Bearer <token>`, compared in constant time.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        given.is_some_and(|t| bool::from(token_digest(t).ct_eq(&self.token)))
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": "unauthorized"})),
    )
        .into_response()
}

#[derive(Serialize)]
struct FlowJson {
    packets: u64,
    bytes: u64,
}

impl From<Flow> for FlowJson {
    fn from(f: Flow) -> Self {
        FlowJson {
            packets: f.packets,
            bytes: f.bytes,
        }
    }
}

/// coturn's four flows: the server's view of the client side (`rcv` from, `sent` to the client)
/// and of the peer side.
#[derive(Serialize)]
struct TrafficJson {
    rcv: FlowJson,
    sent: FlowJson,
    peer_rcv: FlowJson,
    peer_sent: FlowJson,
    dropped: FlowJson,
}

impl From<&AllocationStats> for TrafficJson {
    fn from(s: &AllocationStats) -> Self {
        TrafficJson {
            rcv: s.client_rcv.into(),
            sent: s.client_sent.into(),
            peer_rcv: s.peer_rcv.into(),
            peer_sent: s.peer_sent.into(),
            dropped: s.dropped.into(),
        }
    }
}

#[derive(Serialize)]
struct AllocationJson {
    id: String,
    worker: usize,
    username: String,
    realm: String,
    transport: &'static str,
    client: SocketAddr,
    server: SocketAddr,
    /// The first relayed address (the only one before dual allocations; kept for old clients).
    relay: SocketAddr,
    reported_relay: SocketAddr,
    /// Every relayed address: two for a dual allocation (RFC 8656 §7.2), IPv4 first.
    relays: Vec<SocketAddr>,
    reported_relays: Vec<SocketAddr>,
    started_unix: u64,
    expires_in: u64,
    permissions: usize,
    channels: usize,
    /// Bytes/s received from the client and from peers, over the last few seconds.
    rate_bytes_per_sec: f64,
    traffic: TrafficJson,
}

impl AllocationJson {
    fn new(m: &Monitor, worker: usize, a: &AllocationInfo) -> Self {
        AllocationJson {
            id: metrics::format_id(worker, a.id),
            worker,
            username: a.username.to_string(),
            realm: m.opts.realm.clone(),
            transport: a.five_tuple.transport.as_str(),
            client: a.five_tuple.client.addr(),
            server: a.five_tuple.server,
            relay: a.relay,
            reported_relay: a.reported_relay,
            relays: std::iter::once(a.relay).chain(a.second_relay()).collect(),
            reported_relays: std::iter::once(a.reported_relay)
                .chain(a.reported_second())
                .collect(),
            started_unix: a.started_unix,
            expires_in: a.expires_in,
            permissions: a.permissions,
            channels: a.channels,
            rate_bytes_per_sec: a.rate,
            traffic: (&a.stats).into(),
        }
    }
}

async fn list_allocations(
    State(s): State<Arc<Admin>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !s.authorized(&headers) {
        return unauthorized();
    }
    let select = match q.get("user") {
        Some(u) => Select::User(u.clone()),
        None => Select::All,
    };
    let list: Vec<AllocationJson> = s
        .monitor
        .list(&select)
        .await
        .iter()
        .map(|(w, a)| AllocationJson::new(&s.monitor, *w, a))
        .collect();
    Json(json!({ "allocations": list })).into_response()
}

/// `GET /api/calls[?user=ID][&since=UNIX]`: the call records in `--signaling-redis`.
async fn list_calls(
    State(s): State<Arc<Admin>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !s.authorized(&headers) {
        return unauthorized();
    }
    let fail =
        |status: StatusCode, msg: &str| (status, Json(json!({ "error": msg }))).into_response();
    let Some(store) = &s.calls else {
        return fail(StatusCode::NOT_FOUND, "call records need --signaling-redis");
    };
    let since = match q.get("since").map(|v| v.parse::<f64>()) {
        None => 0.0,
        Some(Ok(v)) if v.is_finite() => v,
        Some(_) => return fail(StatusCode::BAD_REQUEST, "since: Unix seconds"),
    };
    match store.list(q.get("user").map(String::as_str), since).await {
        Some(calls) => Json(json!({ "calls": calls })).into_response(),
        None => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "call records: Redis unreachable",
        ),
    }
}

async fn kill_allocation(
    State(s): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !s.authorized(&headers) {
        return unauthorized();
    }
    let Some((w, aid)) = metrics::parse_id(&id) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad allocation id"})),
        )
            .into_response();
    };
    let workers = s.monitor.workers();
    let known = !metrics::list_allocations(workers.get(w), &Select::Id(aid))
        .await
        .is_empty();
    if !known {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such allocation"})),
        )
            .into_response();
    }
    let _ = workers[w].control.send(Control::Kill(aid));
    tracing::info!("admin API: ending allocation {id}");
    Json(json!({ "killed": [id] })).into_response()
}

async fn kill_user(
    State(s): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !s.authorized(&headers) {
        return unauthorized();
    }
    let killed: Vec<String> = s
        .monitor
        .list(&Select::User(name.clone()))
        .await
        .iter()
        .map(|(w, a)| metrics::format_id(*w, a.id))
        .collect();
    // Every worker, not only those that listed the user: one may have made an allocation since.
    for h in s.monitor.workers() {
        let _ = h.control.send(Control::KillUser(name.clone()));
    }
    tracing::info!("admin API: ending {} allocation(s) of a user", killed.len());
    tracing::debug!("admin API: ending the allocations of user {name}");
    Json(json!({ "killed": killed })).into_response()
}

async fn stats(State(s): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !s.authorized(&headers) {
        return unauthorized();
    }
    // As the workers are now, so that it agrees with the listing.
    let snaps = s.monitor.current().await;
    let t = metrics::Totals::of(&snaps, 0);
    let c = &t.counters;
    let workers: Vec<_> = snaps
        .iter()
        .enumerate()
        .map(|(w, snap)| {
            json!({
                "worker": w,
                "allocations": snap.live.allocations,
                "draining": snap.draining,
            })
        })
        .collect();
    let ports: Vec<_> = s
        .monitor
        .ports_free()
        .into_iter()
        .map(|(ip, free)| json!({"ip": ip, "free": free}))
        .collect();
    let mut stats = json!({
        "allocations": t.allocations,
        "traffic": TrafficJson::from(&t.traffic),
        "relay_ports_free": ports,
        "workers": workers,
    });
    // Every engine counter, under its field name (engine::server::COUNTERS).
    for spec in crate::engine::server::COUNTERS {
        stats[spec.field] = json!((spec.get)(c));
    }
    Json(stats).into_response()
}
