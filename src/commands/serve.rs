//! `gatehouse serve`: the daemon. Opens the state database, serves the last applied commit at
//! once (after a restart), starts the reconciler (watch, poll, webhook) and runs the proxy until
//! SIGTERM or Ctrl-C.
//!
//! Blocking work (git2, SQLite) runs on blocking threads or the store's writer thread, never on
//! the runtime's workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::info;

use crate::gateway::proxy::{self, Config, State};
use crate::gitops::reconcile::{self, Source};
use crate::gateway::secrets::SecretSource;
use crate::record::store::{Location, Store};

/// The file in the data dir where a running daemon writes its admin listener's address.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// Settings of the daemon, read once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A local path, or a URL (`https://…`, `ssh://…`, `file://…`) cloned into the data dir.
    pub repo: String,
    /// Branch to follow; HEAD (local) or the remote's default branch when None.
    pub branch: Option<String>,
    pub listen: SocketAddr,
    /// The admin listener (`/status`, `/metrics`, `POST /-/reconcile`); port 0 picks a free one.
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A PostgreSQL state database (`--database`) instead of `data_dir`'s SQLite file.
    pub database: Option<String>,
    /// This process's name among the replicas (`--replica`); default the host name.
    pub replica: Option<String>,
    pub secrets: SecretSource,
    pub poll: Duration,
    pub accept_rewrite: bool,
    /// Trust the first commit's own signers (`changes:`) while no commit has been applied.
    pub trust_initial_signers: bool,
    pub webhook_secret: Option<String>,
    pub proxy: Config,
    /// Quota counters shared in Redis (`--quota-store`); None: in the local store.
    pub quota_store: Option<crate::record::quota::shared::Config>,
}

/// A running daemon (without its listener): what tests and `run` hold.
pub struct Daemon {
    pub state: Arc<State>,
    pub store: Store,
    _watcher: Option<notify::RecommendedWatcher>,
    reconciler: tokio::task::JoinHandle<()>,
    retention: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.reconciler.abort();
        self.retention.abort();
        self.heartbeat.abort();
    }
}

impl Daemon {
    /// A clean stop, once the proxy has stopped serving (its in-flight calls have finished and
    /// queued their outcome records): stops the reconciler and the retention task, then commits
    /// everything queued in the store and joins its writer thread. Without it the records still
    /// waiting in the writer's queue (the last calls' outcomes) would be lost at exit.
    pub async fn shutdown(mut self) {
        self.reconciler.abort();
        self.retention.abort();
        self.heartbeat.abort();
        let _ = (&mut self.reconciler).await;
        let _ = (&mut self.retention).await;
        let _ = (&mut self.heartbeat).await;
        self.store.close().await;
    }
}

/// The reconciler's view of the settings.
pub fn source(settings: &Settings) -> Source {
    let r = &settings.repo;
    if r.contains("://") || r.starts_with("git@") {
        Source::Remote { url: r.clone(), clone: settings.data_dir.join("repo.git") }
    } else {
        Source::Local { path: PathBuf::from(r) }
    }
}

/// Starts everything but the HTTP listener. Must run inside a tokio runtime.
pub async fn start(settings: Settings) -> Result<Daemon> {
    let at = Location::of(&settings.data_dir, settings.database.as_deref());
    if at.is_pg() {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| format!("creating {}", settings.data_dir.display()))?;
    }
    let store = {
        let at = at.clone();
        tokio::task::spawn_blocking(move || Store::open_at(&at)).await??
    };
    info!(database = %at.describe(), "state database open");
    // Loading the quota counters reads the database: off the async workers.
    let mut state = {
        let (config, store) = (settings.proxy.clone(), store.clone());
        tokio::task::spawn_blocking(move || State::with_store(config, store)).await?
    };
    if let Some(name) = settings.replica.as_ref().filter(|n| !n.trim().is_empty()) {
        state.replica = name.trim().to_string();
    }
    if let Some(shared) = &settings.quota_store {
        let shared = crate::record::quota::shared::Shared::connect(shared).await.map_err(anyhow::Error::msg)?;
        state.quotas = crate::record::quota::Quotas::shared(shared);
    }
    let state = Arc::new(state);
    if let Some(secret) = &settings.webhook_secret {
        let _ = state.webhook_secret.set(secret.as_bytes().to_vec());
    }
    let rs = reconcile::Settings {
        source: source(&settings),
        branch: settings.branch.clone(),
        secrets: settings.secrets.clone(),
        accept_rewrite: settings.accept_rewrite,
        poll: settings.poll,
        trust_initial_signers: settings.trust_initial_signers,
    };
    let applied = {
        let (rs, store, state) = (rs.clone(), store.clone(), state.clone());
        tokio::task::spawn_blocking(move || reconcile::restore(&rs, &store, &state)).await?
    };
    let (tx, rx) = mpsc::channel::<()>(1);
    let _ = state.trigger.set(tx.clone());
    let watcher = match &rs.source {
        Source::Local { path } => Some(reconcile::watch(path, tx).context("watching the repository")?),
        Source::Remote { .. } => None,
    };
    let reconciler = tokio::spawn(reconcile::run(rs, store.clone(), state.clone(), rx, applied));
    let retention = tokio::spawn(retention(state.clone(), store.clone()));
    heartbeat_once(&state, &store, &crate::units::now_rfc3339_ms()).await;
    let heartbeat = tokio::spawn(heartbeat(state.clone(), store.clone()));
    Ok(Daemon { state, store, _watcher: watcher, reconciler, retention, heartbeat })
}

/// Every hour: prune call records older than `audit.retention_days` of the active snapshot (the
/// chain stays verifiable from the stored anchor), and forget closed quota windows.
async fn retention(state: Arc<State>, store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        state.quotas.sweep(now);
        let days = state.active.load().as_ref().and_then(|a| a.snapshot.settings.audit_retention_days);
        let Some(days) = days else { continue };
        let cutoff = crate::units::rfc3339(now - i64::from(days) * 86_400, 0).replace('Z', ".000Z");
        match store.write(move |c| crate::record::audit::log::prune_in(c, &cutoff)).await {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, days, "call records past retention pruned"),
            Err(e) => tracing::error!(error = %e, "pruning the call log failed"),
        }
    }
}

/// Every [`HEARTBEAT`](crate::record::replicas::HEARTBEAT): this replica's row in the replicas
/// view (its applied commit and heartbeat), then the whole view read back for `/status` and
/// `/metrics`. The write also notices a database that went away or came back.
async fn heartbeat(state: Arc<State>, store: Store) {
    let started = crate::units::now_rfc3339_ms();
    let mut tick = tokio::time::interval(crate::record::replicas::HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        let others = heartbeat_once(&state, &store, &started).await;
        // Without --quota-store quotas are counted in this process: several replicas on one
        // database each count their own calls against every limit.
        if others > 0 && !warned && state.quotas.store_available().is_none() {
            tracing::warn!(
                replicas = others + 1,
                "other replicas share this state database but quotas are counted in each process (no --quota-store): every rate limit and spend cap is enforced per replica"
            );
            warned = true;
        }
    }
}

/// One heartbeat (see [`heartbeat`]); returns how many other live replicas there are. The view
/// is read in the heartbeat's own write (the writer's connection): no connection of its own.
async fn heartbeat_once(state: &Arc<State>, store: &Store, started: &str) -> usize {
    let (name, started, now) = (state.replica.clone(), started.to_string(), crate::units::now_rfc3339_ms());
    let applied = state.active.load().as_ref().and_then(|a| a.snapshot.commit.clone());
    let write = store.write(move |c| {
        crate::record::replicas::heartbeat_in(c, &name, applied.as_deref(), &started, &now)?;
        crate::record::replicas::list(c)
    });
    let fleet = match write.await {
        Ok(fleet) => fleet,
        Err(e) => {
            tracing::debug!(error = %e, "heartbeat not written");
            return 0;
        }
    };
    let now = crate::units::unix_now_ms();
    let others = fleet
        .iter()
        .filter(|r| r.name != state.replica)
        .filter(|r| crate::record::replicas::age_secs(&r.heartbeat, now).is_some_and(|a| a < crate::record::replicas::STALE_AFTER.as_secs_f64()))
        .count();
    *state.fleet.lock().expect("fleet lock") = fleet;
    others
}

/// Runs the daemon until a shutdown signal.
pub fn run(settings: Settings) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    raise_open_files_limit();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
        let admin = tokio::net::TcpListener::bind(settings.admin_listen)
            .await
            .with_context(|| format!("binding the admin listener {} (--admin-listen)", settings.admin_listen))?;
        serve_until(settings, listener, admin, shutdown_signal()).await
    })
}

/// Starts the daemon, serves MCP on `listener` and the operations endpoints on `admin` until
/// `shutdown` resolves, then stops cleanly: the proxy lets in-flight requests finish, and
/// [`Daemon::shutdown`] commits every queued record before this returns.
pub async fn serve_until(
    settings: Settings,
    listener: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let admin_file = settings.data_dir.join(ADMIN_ADDR_FILE);
    let daemon = start(settings).await?;
    let admin_addr = admin.local_addr()?;
    // Written after the store is open (the data dir exists): `gatehouse status` reads it.
    if let Err(e) = std::fs::write(&admin_file, format!("{admin_addr}\n")) {
        tracing::warn!(error = %e, file = %admin_file.display(), "could not write the admin address");
    }
    info!(addr = %listener.local_addr()?, admin = %admin_addr, "listening: POST /mcp (all servers) or /mcp/<server>; /status, /metrics and POST /-/reconcile on the admin address");
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(proxy::serve_admin(admin, daemon.state.clone(), async {
        let _ = admin_stopped.await;
    }));
    let served = proxy::serve(listener, daemon.state.clone(), shutdown).await;
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    daemon.shutdown().await;
    info!("state database closed");
    served
}

/// Raises the soft limit on open files to the hard limit: every held connection is a file, and
/// the connection limits (`--max-connections`) should be what refuses connections, not EMFILE.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(error = %e, soft, hard, "could not raise the open files limit");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => info!("Ctrl-C: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
    }
}
