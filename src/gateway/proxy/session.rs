//! Client sessions: our own random `Mcp-Session-Id`, bound to the grant that opened it and to the
//! endpoint (`/mcp` or `/mcp/<server>`) it was opened on.
//!
//! A session never carries upstream state across grants: upstream connections are pooled per
//! grant in `pool`. Sessions are bounded per grant (the least recently used one is evicted) and
//! expire when idle.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

/// One client session.
#[derive(Debug)]
pub struct Session {
    /// The `Mcp-Session-Id`: with the grant's token it is a credential, so it is never logged
    /// or recorded (see `reference`).
    pub id: String,
    /// What logs and call records name the session by: 16 hex digits of sha256 of the id, which
    /// tell sessions apart and cannot be turned back into the id.
    pub reference: String,
    /// File stem of the grant that opened it.
    pub grant: String,
    /// `None` for `/mcp` (all servers), `Some(server)` for `/mcp/<server>`.
    pub endpoint: Option<String>,
    /// The negotiated protocol revision.
    pub protocol: &'static str,
    /// sha256 of the token that opened it: a commit that revokes the token ends the session.
    /// For a session opened with an identity provider's access token, sha256 of the issuer and
    /// identity (the access token itself changes as it is refreshed).
    pub token: [u8; 32],
    /// How a signed-in session signed in (`None` for a grant token): a commit that removes the
    /// issuer or the grant ends it.
    pub sign_in: Option<SignIn>,
    /// The open GET stream, if any: server-initiated messages go there.
    stream: Mutex<Option<mpsc::UnboundedSender<Value>>>,
    created: Instant,
    /// Milliseconds since `created` of the last request.
    last_seen_ms: AtomicU64,
    /// In-flight requests by the client's JSON-RPC id (serialized), for cancellation.
    inflight: Mutex<HashMap<String, AbortHandle>>,
    /// `resources/subscribe` of this session: (server, uri). `notifications/resources/updated`
    /// reaches the session only for these, and only while it may still read the resource.
    subscriptions: Mutex<HashSet<(String, String)>>,
    /// The `logging/setLevel` of this session as a severity (0 debug … 7 emergency); unset
    /// (`u8::MAX`): no log messages are relayed to it.
    log_level: AtomicU8,
    /// The client's `capabilities` from `initialize`: an upstream's sampling, elicitation or
    /// roots request is relayed only to a client that declared it.
    capabilities: Mutex<Value>,
    /// Requests relayed to the client and not yet answered, by the id the gateway gave them
    /// (serialized): where the answer goes.
    awaiting: Mutex<HashMap<String, oneshot::Sender<Result<Value, Value>>>>,
    next_request: AtomicU64,
    /// Set for the session behind a 2026-07-28 `subscriptions/listen` stream: what it opted in
    /// to. Only those notifications reach its stream, tagged with its subscription id.
    listen: std::sync::OnceLock<Listen>,
}

/// What a `subscriptions/listen` stream opted in to (the resource URIs are the session's
/// subscriptions).
#[derive(Debug, Clone)]
pub struct Listen {
    /// The JSON-RPC id of the `subscriptions/listen` request: the subscription id.
    pub id: Value,
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
}

/// A session opened with an identity provider's access token.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub issuer: Arc<str>,
    /// The groups its access token listed when it opened: under a new commit, the roles that
    /// name them are what `list_changed` compares.
    pub groups: Vec<String>,
}

/// All open sessions.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    max_per_grant: usize,
    idle: Duration,
    /// `--session-route`: the suffix of every id, `.<route>`.
    route: Option<String>,
}

/// The reference of a session id (see [`Session::reference`]).
pub fn reference(id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(id.as_bytes())[..8])
}

// === impl Session ===

impl Session {
    /// Makes this the session behind a `subscriptions/listen` stream (once).
    pub fn set_listen(&self, listen: Listen) {
        let _ = self.listen.set(listen);
    }

    /// A stateless (2026-07-28) request's own session: not in the table, no id.
    pub fn is_stateless(&self) -> bool {
        self.id.is_empty()
    }

    pub fn touch(&self) {
        self.last_seen_ms.store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.created.elapsed().saturating_sub(Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed)))
    }

    /// Opens the session's server-to-client stream (replacing an earlier one).
    pub fn open_stream(&self) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.stream.lock().expect("stream lock") = Some(tx);
        rx
    }

    /// Sends a message on the open stream; false if none is open (or, on a listen stream, the
    /// message is not one it opted in to).
    pub fn notify(&self, mut msg: Value) -> bool {
        if let Some(listen) = self.listen.get() {
            let wanted = match msg.get("method").and_then(Value::as_str) {
                Some("notifications/tools/list_changed") => listen.tools,
                Some("notifications/prompts/list_changed") => listen.prompts,
                Some("notifications/resources/list_changed") => listen.resources,
                // sent only to sessions subscribed to the URI (and still allowed to read it)
                Some("notifications/resources/updated") => true,
                // log messages and progress belong to a request's own stream; requests to the
                // client have no way back from here
                _ => false,
            };
            if !wanted || msg.get("id").is_some() {
                return false;
            }
            let params = msg.as_object_mut().expect("a notification is an object").entry("params").or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(params) = params {
                let meta = params.entry("_meta").or_insert_with(|| Value::Object(Default::default()));
                if let Value::Object(meta) = meta {
                    meta.insert("io.modelcontextprotocol/subscriptionId".into(), listen.id.clone());
                }
            }
        }
        let stream = self.stream.lock().expect("stream lock");
        stream.as_ref().is_some_and(|tx| tx.send(msg).is_ok())
    }

    /// Registers a cancellable request; the returned guard unregisters it.
    pub fn track(self: &Arc<Self>, client_id: String, handle: AbortHandle) -> InflightGuard {
        self.inflight.lock().expect("inflight lock").insert(client_id.clone(), handle);
        InflightGuard { session: self.clone(), client_id }
    }

    /// Aborts the in-flight request with this client id, if any (`notifications/cancelled`).
    pub fn cancel(&self, client_id: &str) -> bool {
        match self.inflight.lock().expect("inflight lock").remove(client_id) {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Records a subscription; false if it was already there.
    pub fn subscribe(&self, server: &str, uri: &str) -> bool {
        self.subscriptions.lock().expect("subscriptions lock").insert((server.to_string(), uri.to_string()))
    }

    /// Drops a subscription; false if there was none.
    pub fn unsubscribe(&self, server: &str, uri: &str) -> bool {
        self.subscriptions.lock().expect("subscriptions lock").remove(&(server.to_string(), uri.to_string()))
    }

    pub fn is_subscribed(&self, server: &str, uri: &str) -> bool {
        self.subscriptions.lock().expect("subscriptions lock").contains(&(server.to_string(), uri.to_string()))
    }

    /// Sets the least severity of the log messages relayed to this session.
    pub fn set_log_level(&self, severity: u8) {
        self.log_level.store(severity, Ordering::Relaxed);
    }

    /// Whether a log message of `severity` is relayed to this session.
    pub fn wants_log(&self, severity: u8) -> bool {
        let level = self.log_level.load(Ordering::Relaxed);
        level != u8::MAX && severity >= level
    }

    /// Whether a GET stream is open.
    pub fn has_stream(&self) -> bool {
        self.stream.lock().expect("stream lock").as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Keeps the client's `capabilities` from `initialize`.
    pub fn set_capabilities(&self, capabilities: Value) {
        *self.capabilities.lock().expect("capabilities lock") = capabilities;
    }

    /// Whether the client declared the capability `name` (`sampling`, `elicitation`, `roots`).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.lock().expect("capabilities lock").get(name).is_some_and(Value::is_object)
    }

    /// A fresh id (`gatehouse-<n>`) for a request relayed to the client; its answer goes to `tx`.
    pub fn expect_answer(&self, tx: oneshot::Sender<Result<Value, Value>>) -> Value {
        let id = Value::String(format!("gatehouse-{}", self.next_request.fetch_add(1, Ordering::Relaxed)));
        self.awaiting.lock().expect("awaiting lock").insert(id.to_string(), tx);
        id
    }

    /// The client's answer to a relayed request; false if no request of this session has `id`.
    pub fn answer(&self, id: &Value, outcome: Result<Value, Value>) -> bool {
        match self.awaiting.lock().expect("awaiting lock").remove(&id.to_string()) {
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }

    /// Stops waiting for the answer to `id` (it came too late, or was never delivered).
    pub fn forget_answer(&self, id: &Value) {
        self.awaiting.lock().expect("awaiting lock").remove(&id.to_string());
    }

    /// Aborts every in-flight request and ends the stream.
    fn cancel_all(&self) {
        self.awaiting.lock().expect("awaiting lock").clear();
        for (_, h) in self.inflight.lock().expect("inflight lock").drain() {
            h.abort();
        }
        self.stream.lock().expect("stream lock").take();
    }
}

/// Removes a request from the in-flight table when it completes.
pub struct InflightGuard {
    session: Arc<Session>,
    client_id: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.session.inflight.lock().expect("inflight lock").remove(&self.client_id);
    }
}

// === impl Session (construction) ===

impl Session {
    /// The session of one stateless (2026-07-28) request: never in the table, never named by an
    /// id a client could present again, gone with the request. Its `reference` (what records
    /// name) is `req-` and 16 random hex digits, so the records of one request (decision,
    /// outcome) are tied together and to nothing else. `capabilities` are the request's own.
    pub fn stateless(grant: &str, token: [u8; 32], sign_in: Option<SignIn>, endpoint: Option<String>, protocol: &'static str, capabilities: Value) -> Arc<Session> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS random source");
        let reference = format!("req-{}", hex::encode(bytes));
        let s = Session::new(String::new(), reference, grant, token, sign_in, endpoint, protocol);
        s.set_capabilities(capabilities);
        s
    }

    fn new(id: String, reference: String, grant: &str, token: [u8; 32], sign_in: Option<SignIn>, endpoint: Option<String>, protocol: &'static str) -> Arc<Session> {
        Arc::new(Session {
            id,
            reference,
            grant: grant.to_string(),
            endpoint,
            protocol,
            token,
            sign_in,
            stream: Mutex::new(None),
            created: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashSet::new()),
            log_level: AtomicU8::new(u8::MAX),
            capabilities: Mutex::new(Value::Null),
            awaiting: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            listen: std::sync::OnceLock::new(),
        })
    }
}

// === impl Sessions ===

impl Sessions {
    pub fn new(max_per_grant: usize, idle: Duration, route: Option<String>) -> Sessions {
        Sessions { map: Mutex::new(HashMap::new()), max_per_grant, idle, route }
    }

    /// Opens a session with a fresh random id (256 bits from the OS), followed by `.<route>`
    /// with `--session-route`.
    pub fn open(&self, grant: &str, token: [u8; 32], sign_in: Option<SignIn>, endpoint: Option<String>, protocol: &'static str) -> Arc<Session> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random source");
        let mut id = hex::encode(bytes);
        if let Some(route) = &self.route {
            id.push('.');
            id.push_str(route);
        }
        let reference = reference(&id);
        let s = Session::new(id, reference, grant, token, sign_in, endpoint, protocol);
        let mut map = self.map.lock().expect("sessions lock");
        let mine: Vec<(Duration, String)> =
            map.values().filter(|x| x.grant == grant).map(|x| (x.idle_for(), x.id.clone())).collect();
        if mine.len() >= self.max_per_grant
            && let Some((_, oldest)) = mine.into_iter().max()
                && let Some(old) = map.remove(&oldest) {
                    old.cancel_all();
                }
        map.insert(s.id.clone(), s.clone());
        s
    }

    /// The session `id` if it exists, belongs to `grant` and to `endpoint`. Anything else is
    /// "not found": a session id is no use with another grant's token.
    pub fn get(&self, id: &str, grant: &str, endpoint: Option<&str>) -> Option<Arc<Session>> {
        let s = self.map.lock().expect("sessions lock").get(id).cloned()?;
        if s.grant != grant || s.endpoint.as_deref() != endpoint {
            return None;
        }
        if s.idle_for() > self.idle {
            self.close(id);
            return None;
        }
        s.touch();
        Some(s)
    }

    pub fn close(&self, id: &str) -> bool {
        match self.map.lock().expect("sessions lock").remove(id) {
            Some(s) => {
                s.cancel_all();
                true
            }
            None => false,
        }
    }

    /// Drops idle sessions; returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let mut map = self.map.lock().expect("sessions lock");
        let idle: Vec<String> = map.values().filter(|s| s.idle_for() > self.idle).map(|s| s.id.clone()).collect();
        for id in &idle {
            if let Some(s) = map.remove(id) {
                s.cancel_all();
            }
        }
        idle.len()
    }

    /// Every open session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.map.lock().expect("sessions lock").values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_route_ends_every_id_and_the_id_still_finds_its_session() {
        let plain = Sessions::new(4, Duration::from_secs(60), None);
        let s = plain.open("g", [0; 32], None, None, "2025-11-25");
        assert_eq!(s.id.len(), 64, "256 random bits, hex");
        assert!(!s.id.contains('.'));

        let routed = Sessions::new(4, Duration::from_secs(60), Some("gw-2".into()));
        let s = routed.open("g", [0; 32], None, None, "2025-11-25");
        let (random, route) = s.id.split_once('.').expect("<random>.<route>");
        assert_eq!((random.len(), route), (64, "gw-2"));
        assert!(routed.get(&s.id, "g", None).is_some());
        assert!(routed.get(random, "g", None).is_none(), "the random part alone is no session");
        assert_ne!(routed.open("g", [0; 32], None, None, "2025-11-25").id, s.id);
    }
}
