//! `gatehouse serve`: load the repository at start-up, bind its secrets, and run the proxy until
//! SIGTERM or Ctrl-C.
//!
//! Blocking work (git2, file reads) happens before the async runtime starts, never on its
//! worker threads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

use crate::proxy::{self, Active, Config, State};
use crate::repo;
use crate::secrets::{SecretSource, bind};

/// Settings of the daemon, read once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub repo: PathBuf,
    /// Branch (or any revision) to serve; HEAD when None.
    pub branch: Option<String>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub secrets: SecretSource,
    pub proxy: Config,
}

/// Builds the active snapshot from the repository: the commit at `branch` (or HEAD) when the
/// repository is in git, its working tree otherwise. Err carries every diagnostic.
pub fn load(settings: &Settings) -> Result<Active> {
    let rev = settings.branch.clone().unwrap_or_else(|| "HEAD".to_string());
    let files = match git2::Repository::discover(&settings.repo) {
        Ok(_) => repo::read(&settings.repo, Some(&rev))?,
        Err(_) => {
            warn!(repo = %settings.repo.display(), "not a git repository: serving its working tree");
            repo::read(&settings.repo, None)?
        }
    };
    let compiled = match repo::compile(&files) {
        Ok(c) => c,
        Err(d) => bail!("the policy repository is invalid:\n{d}{}", d.summary()),
    };
    for w in &compiled.warnings {
        warn!("{w}");
    }
    let snapshot = Arc::new(compiled.snapshot);
    let secrets = bind(&snapshot, &settings.secrets).map_err(|errors| anyhow::anyhow!("cannot resolve secrets:\n{}", errors.join("\n")))?;
    Ok(Active { snapshot, secrets: Arc::new(secrets) })
}

/// Runs the daemon until a shutdown signal.
pub fn run(settings: Settings) -> Result<()> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| format!("creating --data-dir {}", settings.data_dir.display()))?;
    let active = load(&settings)?;
    info!(
        commit = active.snapshot.short_commit(),
        servers = active.snapshot.servers.len(),
        grants = active.snapshot.grants.len(),
        "policy snapshot active"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
        info!(addr = %listener.local_addr()?, "listening: POST /mcp (all servers) or /mcp/<server>");
        let state = Arc::new(State::new(settings.proxy.clone()));
        state.activate(active);
        proxy::serve(listener, state, shutdown_signal()).await
    })
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
