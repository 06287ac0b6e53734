//! The gateway's HTTP side: accept loop, limits, graceful shutdown, and the shared [`State`].
//!
//! Each request loads the active snapshot once (`State::active`) and passes it down, so a call
//! is decided, and later recorded, against exactly one commit. Before a valid snapshot is
//! active the proxy denies everything (`/readyz` is 503, `/mcp` answers 503).

mod handler;
pub mod jsonrpc;
mod pool;
mod session;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use arc_swap::ArcSwapOption;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::secrets::BoundSecrets;
use crate::snapshot::Snapshot;
use crate::upstream::http_client;

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
    /// Time allowed to receive a request's headers (also closes idle keep-alive connections).
    pub header_timeout: Duration,
    /// Time allowed to receive a request's body.
    pub body_timeout: Duration,
    /// Concurrent connections; more are closed at once.
    pub max_connections: usize,
    /// Open sessions per grant; the least recently used is evicted past it.
    pub max_sessions_per_grant: usize,
    /// A session unused for this long is closed.
    pub session_idle: Duration,
}

/// Everything the request handler shares.
pub struct State {
    /// Stored only by whoever owns reconciliation; loaded once per request.
    pub active: ArcSwapOption<Active>,
    pub sessions: Sessions,
    pub pool: Pool,
    pub config: Config,
    pub started: Instant,
}

// === impl Config ===

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body: 4 << 20,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_sessions_per_grant: 64,
            session_idle: Duration::from_secs(3600),
        }
    }
}

// === impl State ===

impl State {
    pub fn new(config: Config) -> State {
        State {
            active: ArcSwapOption::empty(),
            sessions: Sessions::new(config.max_sessions_per_grant, config.session_idle),
            pool: Pool::new(http_client()),
            config,
            started: Instant::now(),
        }
    }

    /// Makes `active` the snapshot that decides calls (one atomic pointer store).
    pub fn activate(&self, active: Active) {
        self.active.store(Some(Arc::new(active)));
    }
}

/// Serves HTTP on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to 10 s) and closes every upstream connection.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
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
    let header_timeout = state.config.header_timeout;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "connection limit reached; closing the new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req| handler::handle(state.clone(), req));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    sweeper.abort();
    info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => warn!("in-flight requests did not finish within 10 s"),
    }
    state.pool.shutdown().await;
    Ok(())
}
