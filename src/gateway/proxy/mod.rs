//! The gateway's HTTP side: accept loop, limits, graceful shutdown, and the shared [`State`].
//!
//! Each request loads the active snapshot once (`State::active`) and passes it down, so a call
//! is decided, and later recorded, against exactly one commit. Before a valid snapshot is
//! active the proxy denies everything (`/readyz` is 503, `/mcp` answers 503).

pub mod admission;
mod handler;
pub mod jsonrpc;
mod pool;
mod relay;
mod session;
mod shards;
mod stateless;
mod vetting;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use arc_swap::ArcSwapOption;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::record::audit::log::AuditLog;
use crate::record::quota::Quotas;
use crate::gateway::secrets::BoundSecrets;
use crate::record::store::Store;
use crate::policy::snapshot::Snapshot;
use crate::gateway::upstream::http_client;

pub use pool::{Pool, ServerState};
pub use session::Sessions;

/// The snapshot that decides calls, with its credentials resolved.
pub struct Active {
    pub snapshot: Arc<Snapshot>,
    pub secrets: Arc<BoundSecrets>,
}

/// Limits and timeouts of the HTTP side.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest request body accepted (413 above).
    pub max_body: usize,
    /// Time allowed to receive a request's head, from the moment the connection is ready for
    /// one: also how long an idle keep-alive connection is kept.
    pub header_timeout: Duration,
    /// Time allowed to receive a request's body.
    pub body_timeout: Duration,
    /// Concurrent connections in all; more are closed at once.
    pub max_connections: usize,
    /// Concurrent connections from one client address (IPv6: one /64); 0 for no limit.
    pub max_connections_per_address: usize,
    /// Messages in one JSON-RPC batch (protocol 2025-03-26).
    pub max_batch: usize,
    /// Largest response body the gateway builds (a batch's replies together, or one reply).
    pub max_response: usize,
    /// Open sessions per grant; the least recently used is evicted past it.
    pub max_sessions_per_grant: usize,
    /// A session unused for this long is closed.
    pub session_idle: Duration,
    /// Appended to every session id (`<random>.<route>`) for a load balancer's routing.
    pub session_route: Option<String>,
    /// Threads serving MCP connections, each its own event loop (`shards`); by default one per
    /// core.
    pub workers: usize,
}

/// Everything the request handler shares.
pub struct State {
    /// Stored only by the reconciler (or `serve` at start-up); loaded once per request.
    pub active: ArcSwapOption<Active>,
    pub sessions: Sessions,
    pub pool: Pool,
    pub config: Config,
    pub started: Instant,
    /// What the reconciler last did, for `/status`.
    pub status: Mutex<ReconcileStatus>,
    pub metrics: Metrics,
    /// Asks the reconciler for an immediate look (`POST /-/reconcile`); unset without one.
    pub trigger: OnceLock<mpsc::Sender<()>>,
    /// When set, `POST /-/reconcile` requires a valid `X-Hub-Signature-256`.
    pub webhook_secret: OnceLock<Vec<u8>>,
    /// The call log. `serve` always sets it; a state without one (benchmarks measuring the
    /// audit path's cost) forwards calls unrecorded.
    pub audit: OnceLock<AuditLog>,
    pub quotas: Quotas,
    /// Upstream tool lists checked against the pins of the active snapshot.
    pub vetting: vetting::Vetting,
    /// This gateway's name in call records (`--replica`, default the host name).
    pub replica: String,
    /// The replicas sharing the state database, as the heartbeat task last read them (for
    /// `/status` and `/metrics`, which never touch the database).
    pub fleet: Mutex<Vec<crate::record::replicas::Replica>>,
    /// Who may hold a connection to the MCP listener.
    pub admission: Arc<admission::Admission>,
    /// Identity providers' keys and the access tokens validated with them.
    pub sso: crate::gateway::auth::Sso,
    /// Grants widened by the roles of a signed-in person's groups, per (snapshot digest, grant,
    /// roles): built once, not per call. Bounded (cleared past 1024 entries).
    pub group_grants: Mutex<std::collections::HashMap<String, Arc<crate::policy::snapshot::Grant>>>,
}

/// The reconciler's state, in the shape of a Flux status.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReconcileStatus {
    pub last_applied: Option<AppliedStatus>,
    pub last_attempted: Option<Attempt>,
    /// A refused history rewrite waiting for an operator.
    pub history_rewritten: Option<RewriteStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppliedStatus {
    pub commit: String,
    /// None when restored from the state database at start-up.
    pub time: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub commit: String,
    /// applied | rejected | rewrite_refused | error
    pub outcome: &'static str,
    pub errors: Vec<String>,
    pub time: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RewriteStatus {
    pub old_tip: String,
    pub new_tip: String,
    pub vanished: Vec<String>,
    pub detected_at: String,
}

/// Prometheus counters and the reconcile duration histogram.
#[derive(Debug, Default)]
pub struct Metrics {
    /// applied, rejected, rewrite_refused, error
    reconciles: [AtomicU64; 4],
    /// Bucket counts for [`BUCKETS`], then +Inf.
    duration_buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_us: AtomicU64,
}

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
const OUTCOMES: [&str; 4] = ["applied", "rejected", "rewrite_refused", "error"];

// === impl Config ===

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body: 4 << 20,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_address: 64,
            max_batch: 64,
            max_response: 16 << 20,
            max_sessions_per_grant: 64,
            session_idle: Duration::from_secs(3600),
            session_route: None,
            workers: shards::Shards::default_count(),
        }
    }
}

// === impl State ===

impl State {
    pub fn new(config: Config) -> State {
        State {
            active: ArcSwapOption::empty(),
            sessions: Sessions::new(config.max_sessions_per_grant, config.session_idle, config.session_route.clone()),
            pool: Pool::new(http_client()),
            admission: Arc::new(admission::Admission::new(config.max_connections_per_address, config.max_connections)),
            config,
            started: Instant::now(),
            status: Mutex::new(ReconcileStatus::default()),
            metrics: Metrics::default(),
            trigger: OnceLock::new(),
            webhook_secret: OnceLock::new(),
            audit: OnceLock::new(),
            quotas: Quotas::load(None, 0),
            vetting: Default::default(),
            replica: hostname(),
            fleet: Mutex::new(Vec::new()),
            sso: crate::gateway::auth::Sso::new(http_client()),
            group_grants: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// A state whose calls are recorded in `store` and whose quotas persist there.
    pub fn with_store(config: Config, store: Store) -> State {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let state = State { quotas: Quotas::load(Some(store.clone()), now), ..State::new(config) };
        let _ = state.audit.set(AuditLog::new(store));
        state
    }

    /// Makes `active` the snapshot that decides calls (one atomic pointer store).
    pub fn activate(&self, active: Active) {
        self.active.store(Some(Arc::new(active)));
    }
}

// === impl Metrics ===

impl Metrics {
    pub fn reconcile(&self, outcome: &str, took: Duration) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.reconciles[i].fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The replicas sharing the state database: the commit each applied, and its heartbeat's
    /// age.
    pub fn render_replicas(fleet: &[crate::record::replicas::Replica], out: &mut String) {
        if fleet.is_empty() {
            return;
        }
        let now = crate::units::unix_now_ms();
        out.push_str("# HELP gatehouse_replica_applied The commit each replica sharing the state database enforces.\n# TYPE gatehouse_replica_applied gauge\n");
        for r in fleet {
            out.push_str(&format!(
                "gatehouse_replica_applied{{replica=\"{}\",commit=\"{}\"}} 1\n",
                label(&r.name),
                label(r.applied.as_deref().unwrap_or(""))
            ));
        }
        out.push_str("# HELP gatehouse_replica_heartbeat_age_seconds Seconds since each replica's last heartbeat.\n# TYPE gatehouse_replica_heartbeat_age_seconds gauge\n");
        for r in fleet {
            if let Some(age) = crate::record::replicas::age_secs(&r.heartbeat, now) {
                out.push_str(&format!("gatehouse_replica_heartbeat_age_seconds{{replica=\"{}\"}} {age}\n", label(&r.name)));
            }
        }
        let live: std::collections::BTreeSet<&str> = fleet
            .iter()
            .filter(|r| crate::record::replicas::age_secs(&r.heartbeat, now).is_some_and(|a| a < crate::record::replicas::STALE_AFTER.as_secs_f64()))
            .map(|r| r.applied.as_deref().unwrap_or(""))
            .collect();
        out.push_str("# HELP gatehouse_replicas_converged 1 when every live replica enforces the same commit.\n# TYPE gatehouse_replicas_converged gauge\n");
        out.push_str(&format!("gatehouse_replicas_converged {}\n", u8::from(live.len() <= 1)));
    }

    /// The Prometheus text exposition.
    pub fn render(&self, active_commit: Option<&str>, sessions: usize, admission: &admission::Admission) -> String {
        let mut out = String::new();
        out.push_str("# HELP gatehouse_reconcile_total Reconciles by outcome.\n# TYPE gatehouse_reconcile_total counter\n");
        for (i, o) in OUTCOMES.iter().enumerate() {
            out.push_str(&format!("gatehouse_reconcile_total{{outcome=\"{o}\"}} {}\n", self.reconciles[i].load(Ordering::Relaxed)));
        }
        out.push_str("# HELP gatehouse_active_commit_info The commit that decides calls.\n# TYPE gatehouse_active_commit_info gauge\n");
        if let Some(c) = active_commit {
            out.push_str(&format!("gatehouse_active_commit_info{{commit=\"{c}\"}} 1\n"));
        }
        out.push_str("# HELP gatehouse_reconcile_duration_seconds Time to reconcile a new tip.\n# TYPE gatehouse_reconcile_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.duration_buckets[i].load(Ordering::Relaxed);
            out.push_str(&format!("gatehouse_reconcile_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}\n"));
        }
        cumulative += self.duration_buckets[BUCKETS.len()].load(Ordering::Relaxed);
        out.push_str(&format!("gatehouse_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n"));
        out.push_str(&format!(
            "gatehouse_reconcile_duration_seconds_sum {}\ngatehouse_reconcile_duration_seconds_count {cumulative}\n",
            self.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out.push_str(&format!("# HELP gatehouse_sessions Open client sessions.\n# TYPE gatehouse_sessions gauge\ngatehouse_sessions {sessions}\n"));
        out.push_str("# HELP gatehouse_connections Connections held on the MCP listener.\n# TYPE gatehouse_connections gauge\n");
        out.push_str(&format!("gatehouse_connections {}\n", admission.held()));
        out.push_str("# HELP gatehouse_connections_refused_total Connections closed at once by a connection limit.\n# TYPE gatehouse_connections_refused_total counter\n");
        out.push_str(&format!(
            "gatehouse_connections_refused_total{{limit=\"per_address\"}} {}\ngatehouse_connections_refused_total{{limit=\"global\"}} {}\n",
            admission.refused_per_address.load(Ordering::Relaxed),
            admission.refused_global.load(Ordering::Relaxed)
        ));
        out
    }
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The host name (the default replica name).
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "local".into())
}

/// After a swap: closes the sessions whose token was revoked or expired (their streams end),
/// and sends `notifications/tools/list_changed` to every session whose visible tools changed
/// (`resources/list_changed`, `prompts/list_changed` when its resource patterns or prompt names
/// changed).
pub fn snapshot_changed(state: &State, old: Option<&Active>) {
    let Some(new) = state.active.load_full() else { return };
    let today = crate::units::Date::today();
    for session in state.sessions.all() {
        let valid = new.snapshot.grant_by_name(&session.grant).is_some_and(|g| match session.sign_in.as_ref().map(|s| &*s.issuer) {
            None => g.tokens.iter().any(|t| t.sha256 == session.token && t.expires.is_none_or(|e| e > today)),
            // Signed in: the issuer is still trusted and the grant is still this identity's
            // (each request's access token is validated again, `exp` included).
            Some(iss) => new.snapshot.issuer(iss).is_some() && crate::gateway::auth::session_key(iss, &g.identity) == session.token,
        });
        if !valid {
            state.sessions.close(&session.id);
            continue;
        }
        let before = old.map(|o| visible(state, o, &session)).unwrap_or_default();
        if before != visible(state, &new, &session) {
            session.notify(json!({ "jsonrpc": "2.0", "method": "notifications/tools/list_changed" }));
        }
        let (resources, prompts) = granted(&new, &session);
        let (resources_before, prompts_before) = old.map(|o| granted(o, &session)).unwrap_or_default();
        if resources != resources_before {
            session.notify(json!({ "jsonrpc": "2.0", "method": "notifications/resources/list_changed" }));
        }
        if prompts != prompts_before {
            session.notify(json!({ "jsonrpc": "2.0", "method": "notifications/prompts/list_changed" }));
        }
    }
}

/// (server, pattern or prompt name) pairs.
type Granted = BTreeSet<(String, String)>;

/// The resource patterns and prompt names of the access entries a session sees, by server: a
/// change of either is a change of what its resource or prompt lists could hold.
fn granted(active: &Active, session: &session::Session) -> (Granted, Granted) {
    let snap = &active.snapshot;
    let (mut resources, mut prompts) = (BTreeSet::new(), BTreeSet::new());
    let Some(grant) = snap.grant_by_name(&session.grant) else { return (resources, prompts) };
    for (server, entries) in &grant.by_server {
        if session.endpoint.as_deref().is_some_and(|e| e != server) || !snap.servers.contains_key(server) {
            continue;
        }
        for &i in entries {
            resources.extend(grant.access[i].resources.iter().map(|r| (server.clone(), r.pattern.to_string())));
            prompts.extend(grant.access[i].prompts.iter().map(|r| (server.clone(), r.label().to_string())));
        }
    }
    (resources, prompts)
}

/// The (server, tool) pairs a session could be allowed to call under `active`, over the tools
/// its upstreams listed (cached) and the servers declare.
fn visible(state: &State, active: &Active, session: &session::Session) -> BTreeSet<(String, String)> {
    let snap = &active.snapshot;
    let Some(grant) = snap.grant_by_name(&session.grant) else { return BTreeSet::new() };
    // A signed-in session also sees what its groups' roles give, under this snapshot's roles.
    let widened;
    let grant = match &session.sign_in {
        Some(s) if !s.groups.is_empty() => {
            let names = snap.roles_of_groups(s.groups.iter().map(String::as_str));
            let roles: Vec<_> = names.iter().filter_map(|r| snap.roles.get(*r)).map(|r| (r, String::new())).collect();
            widened = grant.with_roles(&roles);
            &widened
        }
        _ => grant,
    };
    let mut out = BTreeSet::new();
    for server in grant.by_server.keys() {
        if session.endpoint.as_deref().is_some_and(|e| e != server) {
            continue;
        }
        let Some(s) = snap.servers.get(server) else { continue };
        let mut tools: BTreeSet<String> = s.tools.keys().cloned().collect();
        tools.extend(state.pool.cached_tool_names(&grant.name, server));
        for t in tools {
            if crate::policy::eval::may_allow(snap, grant, server, &t) {
                out.insert((server.clone(), t));
            }
        }
    }
    out
}

/// Serves MCP on `listener` (`/mcp`, `/mcp/<server>`, `/healthz`, `/readyz`) until `shutdown`
/// resolves, then stops accepting, lets in-flight requests finish (up to 10 s), closes every
/// upstream connection and waits until the call records of the finished calls (outcomes ride
/// group commits in the background) are durable. The store itself stays open: its owner closes
/// it (`commands::serve::Daemon::shutdown`).
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let shards = shards::Shards::start(state.config.workers).map_err(|e| anyhow::anyhow!("starting the proxy's threads: {e}"))?;
    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let n = state.sessions.sweep();
                if n > 0 {
                    debug!(closed = n, "idle sessions closed");
                }
            }
        })
    };
    let admission = state.admission.clone();
    accept_loop(listener, state.clone(), admission, Listener::Mcp, Some(&shards), shutdown).await;
    sweeper.abort();
    // The upstream connections' tasks may run on the shards: closed before the shards stop.
    state.pool.shutdown().await;
    if let Some(log) = state.audit.get()
        && let Err(e) = log.store().flush().await
    {
        warn!(error = %e, "the last call records may not be durable");
    }
    shards.stop().await;
    Ok(())
}

/// Serves the operations endpoints on `listener` (`/status`, `/metrics`, `POST /-/reconcile`,
/// and `/healthz`, `/readyz` again for probes) until `shutdown` resolves. Kept off the MCP
/// listener so that what a deployment exposes to clients never shows its state or takes its
/// triggers; the default (`serve --admin-listen`) is a loopback address.
pub async fn serve_admin(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) -> Result<()> {
    // The admin side has its own small limits: an MCP flood never takes its places.
    let admission = Arc::new(admission::Admission::new(16, 64));
    accept_loop(listener, state, admission, Listener::Admin, None, shutdown).await;
    Ok(())
}

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    Mcp,
    Admin,
}

/// Accepts connections that `admission` lets in and serves them (on `shards` when given, else
/// on this runtime) until `shutdown`, then waits for in-flight requests (up to 10 s).
async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    admission: Arc<admission::Admission>,
    which: Listener,
    shards: Option<&shards::Shards>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut accept_errors = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and say so rarely.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        warn!(error = %e, count = accept_errors, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Refused connections are closed at once (dropped), counted and logged in summary.
        let Ok(permit) = admission.admit(peer.ip()) else { continue };
        let _ = stream.set_nodelay(true);
        let (state, watcher) = (state.clone(), graceful.watcher());
        let Some(shards) = shards else {
            tokio::spawn(async move {
                serve_connection(stream, peer, state, which, watcher).await;
                drop(permit);
            });
            continue;
        };
        // Deregistered from this runtime's I/O driver, registered with the shard's.
        match stream.into_std() {
            Ok(stream) => shards.spawn(async move {
                match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => serve_connection(stream, peer, state, which, watcher).await,
                    Err(e) => debug!(%peer, error = %e, "connection lost while handed over"),
                }
                drop(permit);
            }),
            Err(e) => debug!(%peer, error = %e, "connection lost while handed over"),
        }
    }
    drop(listener);
    if which == Listener::Mcp {
        info!("shutting down: waiting for in-flight requests");
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => warn!(listener = ?which, "in-flight requests did not finish within 10 s"),
    }
}

/// Serves HTTP/1.1 on one connection until it closes, or until the graceful shutdown `watcher`
/// belongs to asks it to once its in-flight request is answered.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<State>,
    which: Listener,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let header_timeout = state.config.header_timeout;
    let service = service_fn(move |req| {
        let state = state.clone();
        async move {
            match which {
                Listener::Mcp => handler::handle(state, req).await,
                Listener::Admin => handler::admin(state, req).await,
            }
        }
    });
    let conn = http1::Builder::new().timer(TokioTimer::new()).header_read_timeout(header_timeout).serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn).await {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
