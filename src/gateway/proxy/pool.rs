//! Upstream connections, pooled per (grant, server): a grant's sessions share its connection to
//! a server, and no connection or child process is ever shared between two grants.
//!
//! Connections open lazily on first use; a closed one is replaced on the next use. Connecting is
//! serialized per key so that a burst of first calls opens one connection, not many.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::gateway::secrets::Bound;
use crate::policy::snapshot::Server;
use crate::gateway::upstream::{HttpClient, Upstream, UpstreamError};

type Key = (String, String);

/// The pool.
pub struct Pool {
    http: HttpClient,
    live: Mutex<HashMap<Key, Arc<Upstream>>>,
    connecting: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// Server → the last connection error (for /status).
    last_error: Mutex<HashMap<String, String>>,
}

/// Per-server figures for /status.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ServerState {
    pub connections: usize,
    /// The protocol versions its live connections speak (2026-07-28 when it offered that).
    pub protocols: std::collections::BTreeSet<String>,
    pub last_error: Option<String>,
}

// === impl Pool ===

impl Pool {
    pub fn new(http: HttpClient) -> Pool {
        Pool {
            http,
            live: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashMap::new()),
            last_error: Mutex::new(HashMap::new()),
        }
    }

    /// The grant's live connection to `server`, opened if needed; `true` when opened by this
    /// call.
    pub async fn get(&self, grant: &str, server: &Arc<Server>, creds: &Arc<Bound>) -> Result<(Arc<Upstream>, bool), UpstreamError> {
        let key = (grant.to_string(), server.name.clone());
        if let Some(u) = self.live_conn(&key, server) {
            return Ok((u, false));
        }
        let gate = self.connecting.lock().expect("pool lock").entry(key.clone()).or_default().clone();
        let _one_at_a_time = gate.lock().await;
        if let Some(u) = self.live_conn(&key, server) {
            return Ok((u, false));
        }
        match Upstream::connect(server.clone(), creds.clone(), self.http.clone()).await {
            Ok(u) => {
                let u = Arc::new(u);
                let old = self.live.lock().expect("pool lock").insert(key, u.clone());
                if let Some(old) = old {
                    tokio::spawn(async move { old.shutdown().await });
                }
                self.last_error.lock().expect("pool lock").remove(&server.name);
                Ok((u, true))
            }
            Err(e) => {
                self.last_error.lock().expect("pool lock").insert(server.name.clone(), e.to_string());
                Err(e)
            }
        }
    }

    /// A live connection for `key` made for this very server definition.
    fn live_conn(&self, key: &Key, server: &Arc<Server>) -> Option<Arc<Upstream>> {
        let live = self.live.lock().expect("pool lock");
        live.get(key).filter(|u| !u.is_closed() && u.server().transport == server.transport).cloned()
    }

    /// Tool names the grant's live connection to `server` has listed (nothing if none).
    pub fn cached_tool_names(&self, grant: &str, server: &str) -> Vec<String> {
        let live = self.live.lock().expect("pool lock");
        let Some(u) = live.get(&(grant.to_string(), server.to_string())) else { return Vec::new() };
        u.cached_tools()
            .map(|tools| tools.iter().filter_map(|t| t.get("name")?.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    pub fn states(&self) -> HashMap<String, ServerState> {
        let mut out: HashMap<String, ServerState> = HashMap::new();
        for ((_, server), u) in self.live.lock().expect("pool lock").iter() {
            if !u.is_closed() {
                let state = out.entry(server.clone()).or_default();
                state.connections += 1;
                state.protocols.insert(u.protocol_version().to_string());
            }
        }
        for (server, e) in self.last_error.lock().expect("pool lock").iter() {
            out.entry(server.clone()).or_default().last_error = Some(e.clone());
        }
        out
    }

    /// Closes every connection (stdio children: stdin closed, then SIGTERM, then SIGKILL).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Upstream>> = self.live.lock().expect("pool lock").drain().map(|(_, u)| u).collect();
        futures_util::future::join_all(all.iter().map(|u| u.shutdown())).await;
    }
}
