//! JSON-RPC multiplexing shared by every upstream transport: the gateway's own request ids,
//! the pending map (id → waiter), progress routing, replies to upstream requests (and the
//! routing of the ones relayed to a client: sampling, elicitation, roots), the tools-list
//! cache, the closed state, and the notifications subscribers hear of (list changes, resource
//! updates, log messages).
//!
//! It owns what is the same whatever carries the bytes. It must not touch sockets, processes or
//! HTTP: a transport hands it every message it reads ([`Rpc::dispatch`]) and drains the outbound
//! queue it was built with (fire-and-forget messages: replies to upstream requests and
//! `notifications/cancelled`). Nothing from the client side of the gateway passes through here:
//! ids and progress tokens are minted by [`Rpc::start`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{ServerRequest, UpstreamError, UpstreamEvent};

/// Prefix of the progress tokens we put in `params._meta.progressToken`; the rest is the
/// request id, so one map serves both responses and progress.
const PROGRESS_PREFIX: &str = "gatehouse-";

/// JSON-RPC "method not found".
const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "internal error": a relayable request with no call to relay it to.
const INTERNAL_ERROR: i64 = -32603;

/// The upstream requests that are relayed to the client whose call is in progress.
pub(crate) const RELAYED_REQUESTS: [&str; 3] = ["sampling/createMessage", "elicitation/create", "roots/list"];

/// The multiplexing state of one upstream session. Shared (Arc) between the [`super::Upstream`]
/// and its transport's tasks.
pub(crate) struct Rpc {
    /// The server's name, for logs.
    server: String,
    next_id: AtomicU64,
    state: Mutex<State>,
    /// Fire-and-forget messages for the transport to send (replies, cancellations).
    outbound: mpsc::UnboundedSender<Value>,
    events: broadcast::Sender<UpstreamEvent>,
    tools: Mutex<ToolsCache>,
    /// Credential values (header values, their tokens, child env values): scrubbed from every
    /// error text built from upstream content, since upstreams like to echo a bad key back.
    secrets: Vec<String>,
    /// The session speaks 2026-07-28 (set once, by the connect that found it offered): every
    /// request carries our `_meta` envelope, and results lose the revision's `resultType`.
    modern: AtomicBool,
    /// 2026-07-28: what `logging/setLevel` and `resources/(un)subscribe` became. The log level
    /// goes in every request's `_meta`; the URIs in the `subscriptions/listen` of the session,
    /// re-opened (`listen_changed`) when they change.
    pub(crate) log_level: Mutex<Option<String>>,
    pub(crate) resource_subscriptions: Mutex<std::collections::BTreeSet<String>>,
    pub(crate) listen_changed: tokio::sync::Notify,
    /// stdio: the number of our current `subscriptions/listen` (each one gets an id of its own).
    pub(crate) listen_seq: AtomicU64,
}

struct State {
    pending: HashMap<u64, Waiter>,
    /// Set once; every later request fails with it.
    closed: Option<UpstreamError>,
}

struct Waiter {
    tx: oneshot::Sender<Result<Value, UpstreamError>>,
    /// Where this request's progress goes, and the caller's token to put in it.
    progress: Option<(mpsc::UnboundedSender<Value>, Value)>,
    /// Where the upstream's requests to the client go while this request is in progress.
    requests: Option<mpsc::UnboundedSender<ServerRequest>>,
}

#[derive(Default)]
struct ToolsCache {
    /// Bumped by every `notifications/tools/list_changed`, so a listing that was in flight
    /// when the list changed is not stored.
    generation: u64,
    tools: Option<Arc<Vec<Value>>>,
}

/// One request in flight: its id, the message to send, and the waiter for its answer.
///
/// Dropped before [`Call::disarm`] (the caller's future was dropped, or the timeout fired), it
/// queues `notifications/cancelled` for its id: the upstream may stop working on it.
pub(crate) struct Call {
    pub(crate) id: u64,
    pub(crate) message: Value,
    rx: oneshot::Receiver<Result<Value, UpstreamError>>,
    rpc: Arc<Rpc>,
    /// Send `notifications/cancelled` on drop. Never for `initialize` (the spec forbids it).
    armed: bool,
}

/// A spawned task that is aborted when this handle is dropped, so that dropping an upstream
/// never leaves its readers and writers running.
pub(crate) struct Task(JoinHandle<()>);

// === impl Rpc ===

impl Rpc {
    pub(crate) fn new(server: &str, outbound: mpsc::UnboundedSender<Value>, secrets: Vec<String>) -> Rpc {
        // Room for bursts of log messages; a subscriber that lags still sees later events.
        let (events, _) = broadcast::channel(256);
        Rpc {
            server: server.to_string(),
            next_id: AtomicU64::new(1),
            state: Mutex::new(State { pending: HashMap::new(), closed: None }),
            outbound,
            events,
            tools: Mutex::new(ToolsCache::default()),
            secrets,
            modern: AtomicBool::new(false),
            log_level: Mutex::new(None),
            resource_subscriptions: Mutex::new(Default::default()),
            listen_changed: tokio::sync::Notify::new(),
            listen_seq: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a request and builds its message. With `progress`, our own progress token is
    /// put in `params._meta.progressToken` and notifications for it go to the sender, with the
    /// caller's token in their place.
    pub(crate) fn start(
        self: &Arc<Self>,
        method: &str,
        params: Value,
        progress: Option<(mpsc::UnboundedSender<Value>, Value)>,
    ) -> Result<Call, UpstreamError> {
        self.start_relaying(method, params, progress, None)
    }

    /// [`Rpc::start`], and the upstream's requests to the client (sampling, elicitation, roots)
    /// made while this one is in progress go to `requests` (see [`Rpc::dispatch_from`]).
    pub(crate) fn start_relaying(
        self: &Arc<Self>,
        method: &str,
        params: Value,
        progress: Option<(mpsc::UnboundedSender<Value>, Value)>,
        requests: Option<mpsc::UnboundedSender<ServerRequest>>,
    ) -> Result<Call, UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut params = match params {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            _ => return Err(UpstreamError::Protocol(format!("{method}: params must be an object"))),
        };
        if progress.is_some() {
            let meta = params.entry("_meta").or_insert_with(|| Value::Object(Map::new()));
            if !meta.is_object() {
                *meta = Value::Object(Map::new());
            }
            if let Value::Object(meta) = meta {
                meta.insert("progressToken".into(), Value::String(format!("{PROGRESS_PREFIX}{id}")));
            }
        } else if let Some(Value::Object(meta)) = params.get_mut("_meta") {
            // A token the caller left in the params is not ours to route: drop it.
            meta.remove("progressToken");
        }
        if self.is_modern() {
            let meta = params.entry("_meta").or_insert_with(|| Value::Object(Map::new()));
            if !meta.is_object() {
                *meta = Value::Object(Map::new());
            }
            // Nothing of a client's reaches these params (the proxy builds them), so a key set
            // already is the caller's own choice (the client capabilities of a relaying call).
            if let (Value::Object(meta), Value::Object(envelope)) = (meta, super::envelope()) {
                for (k, v) in envelope {
                    meta.entry(k).or_insert(v);
                }
                if let Some(level) = self.log_level.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                    meta.insert("io.modelcontextprotocol/logLevel".into(), Value::String(level));
                }
            }
        }
        let message = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state();
            if let Some(e) = &state.closed {
                return Err(e.clone());
            }
            state.pending.insert(id, Waiter { tx, progress, requests });
        }
        // The spec forbids cancelling the handshake and the discovery probe.
        let armed = method != "initialize" && method != "server/discover";
        Ok(Call { id, message, rx, rpc: self.clone(), armed })
    }

    /// Queues a message for the transport to send, best effort.
    pub(crate) fn send(&self, message: Value) {
        let _ = self.outbound.send(message);
    }

    /// Handles one message read from the upstream: a response goes to its waiter, a request
    /// is answered, a notification is routed. Anything else is logged and dropped.
    pub(crate) fn dispatch(&self, message: Value) {
        self.dispatch_from(message, None)
    }

    /// [`Rpc::dispatch`] of a message read on the response stream of our request `origin`
    /// (Streamable HTTP): a request to the client there was caused by that request, so it is
    /// relayed to that request's caller or refused, never to another one.
    pub(crate) fn dispatch_from(&self, message: Value, origin: Option<u64>) {
        match message {
            Value::Array(batch) => batch.into_iter().for_each(|m| self.dispatch_one(m, origin)),
            m => self.dispatch_one(m, origin),
        }
    }

    fn dispatch_one(&self, message: Value, origin: Option<u64>) {
        let Value::Object(mut m) = message else {
            tracing::debug!(server = %self.server, "upstream sent a JSON-RPC message that is not an object");
            return;
        };
        let method = m.get("method").and_then(Value::as_str).map(str::to_string);
        match (method, m.remove("id")) {
            (Some(method), Some(id)) => self.answer_request(&method, id, m.remove("params").unwrap_or(Value::Null), origin),
            (Some(method), None) => self.notification(&method, m.remove("params").unwrap_or(Value::Null)),
            (None, Some(id)) => self.response(id, m),
            (None, None) => {
                tracing::debug!(server = %self.server, "upstream sent a message with neither id nor method")
            }
        }
    }

    fn response(&self, id: Value, mut m: Map<String, Value>) {
        let Some(id) = id.as_u64() else {
            // An error with a null id answers nothing we sent (a parse error on their side).
            tracing::debug!(server = %self.server, %id, "upstream response to an id we never used");
            return;
        };
        let Some(waiter) = self.state().pending.remove(&id) else {
            tracing::debug!(server = %self.server, id, "upstream response to a request no longer waiting");
            return;
        };
        let result = if let Some(error) = m.remove("error") {
            Err(self.rpc_error(error))
        } else if let Some(result) = m.remove("result") {
            if self.is_modern() { modern_result(result) } else { Ok(result) }
        } else {
            Err(UpstreamError::Protocol("a response with neither result nor error".into()))
        };
        let _ = waiter.tx.send(result);
    }

    fn rpc_error(&self, error: Value) -> UpstreamError {
        let code = error.get("code").and_then(Value::as_i64);
        let message = error.get("message").and_then(Value::as_str);
        match (code, message) {
            (Some(code), Some(message)) => UpstreamError::Rpc {
                code,
                message: self.redact(message),
                data: error.get("data").map(|d| self.redact_value(d.clone())),
            },
            _ => UpstreamError::Protocol("a malformed JSON-RPC error".into()),
        }
    }

    /// `ping` is answered here. Sampling, elicitation and roots requests are relayed to the
    /// caller of the request that caused them: the request `origin` whose response stream
    /// carried it, else the only request in progress that relays (there must be exactly one),
    /// else refused. The caller answers through the [`ServerRequest`]; the upstream gets that
    /// answer with its own id. Every other request is answered "method not found".
    fn answer_request(&self, method: &str, id: Value, params: Value, origin: Option<u64>) {
        if method == "ping" {
            return self.send(json!({ "jsonrpc": "2.0", "id": id, "result": {} }));
        }
        if !RELAYED_REQUESTS.contains(&method) {
            tracing::debug!(server = %self.server, method, "refusing an upstream request");
            return self.send(json!({ "jsonrpc": "2.0", "id": id, "error": { "code": METHOD_NOT_FOUND, "message": "Method not found" } }));
        }
        let sink = {
            let state = self.state();
            match origin {
                Some(origin) => state.pending.get(&origin).and_then(|w| w.requests.clone()),
                None => {
                    let mut relaying = state.pending.values().filter_map(|w| w.requests.as_ref());
                    match (relaying.next(), relaying.next()) {
                        (Some(only), None) => Some(only.clone()),
                        _ => None,
                    }
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let request = ServerRequest { method: method.to_string(), params, reply };
        if sink.is_none_or(|s| s.send(request).is_err()) {
            tracing::debug!(server = %self.server, method, "refusing an upstream request: no single call in progress to relay it to");
            let message = format!("{method} refused by the gateway: it is relayed only to the client of the one call in progress");
            return self.send(json!({ "jsonrpc": "2.0", "id": id, "error": { "code": INTERNAL_ERROR, "message": message } }));
        }
        let outbound = self.outbound.clone();
        tokio::spawn(async move {
            let reply = match answer.await {
                Ok(Ok(result)) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
                Ok(Err(error)) => json!({ "jsonrpc": "2.0", "id": id, "error": error }),
                Err(_) => json!({ "jsonrpc": "2.0", "id": id, "error": { "code": INTERNAL_ERROR, "message": "the client did not answer" } }),
            };
            let _ = outbound.send(reply);
        });
    }

    fn notification(&self, method: &str, params: Value) {
        match method {
            "notifications/progress" => self.progress(params),
            "notifications/tools/list_changed" => {
                self.invalidate_tools();
                let _ = self.events.send(UpstreamEvent::ToolsListChanged);
            }
            "notifications/resources/list_changed" => {
                let _ = self.events.send(UpstreamEvent::ResourcesListChanged);
            }
            "notifications/prompts/list_changed" => {
                let _ = self.events.send(UpstreamEvent::PromptsListChanged);
            }
            "notifications/resources/updated" if params.get("uri").is_some_and(Value::is_string) => {
                let _ = self.events.send(UpstreamEvent::ResourceUpdated(params));
            }
            "notifications/message" if params.is_object() => {
                let _ = self.events.send(UpstreamEvent::Log(params));
            }
            _ => tracing::trace!(server = %self.server, method, "upstream notification ignored"),
        }
    }

    fn progress(&self, mut params: Value) {
        let id = params
            .get("progressToken")
            .and_then(Value::as_str)
            .and_then(|t| t.strip_prefix(PROGRESS_PREFIX))
            .and_then(|n| n.parse::<u64>().ok());
        let Some(id) = id else {
            tracing::debug!(server = %self.server, "upstream progress for a token we never issued");
            return;
        };
        let target = self.state().pending.get(&id).and_then(|w| w.progress.clone());
        if let Some((tx, token)) = target {
            params["progressToken"] = token;
            let _ = tx.send(params);
        }
    }

    /// Fails every pending request and every later one with `error`, and tells subscribers.
    /// Only the first call has an effect.
    pub(crate) fn close(&self, error: UpstreamError) {
        let waiters = {
            let mut state = self.state();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(error.clone());
            std::mem::take(&mut state.pending)
        };
        for (_, w) in waiters {
            let _ = w.tx.send(Err(error.clone()));
        }
        let _ = self.events.send(UpstreamEvent::Closed);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed.is_some()
    }

    /// Why the session closed, if it did.
    pub(crate) fn closed_error(&self) -> Option<UpstreamError> {
        self.state().closed.clone()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<UpstreamEvent> {
        self.events.subscribe()
    }

    /// From now on the session speaks 2026-07-28.
    pub(crate) fn set_modern(&self) {
        self.modern.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_modern(&self) -> bool {
        self.modern.load(Ordering::Relaxed)
    }

    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    // --- tools cache ---

    /// The cached list and the generation it (or a listing started now) belongs to.
    pub(crate) fn cached_tools(&self) -> (Option<Arc<Vec<Value>>>, u64) {
        let cache = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        (cache.tools.clone(), cache.generation)
    }

    /// Stores a listing unless the list changed since it started.
    pub(crate) fn store_tools(&self, generation: u64, tools: Arc<Vec<Value>>) {
        let mut cache = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            cache.tools = Some(tools);
        }
    }

    pub(crate) fn invalidate_tools(&self) {
        let mut cache = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        cache.tools = None;
    }

    // --- redaction ---

    /// `text` with every credential value replaced by `[redacted]`.
    pub(crate) fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    fn redact_value(&self, v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.redact(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|v| self.redact_value(v)).collect()),
            Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, self.redact_value(v))).collect()),
            v => v,
        }
    }
}

/// The credential strings worth scrubbing: each value, and each whitespace-separated word of
/// it (the token of `Bearer <token>`), when long enough not to mangle ordinary words.
pub(crate) fn secret_strings(creds: &crate::gateway::secrets::Bound) -> Vec<String> {
    let values = creds
        .headers
        .iter()
        .filter_map(|(_, v)| v.to_str().ok().map(str::to_string))
        .chain(creds.env.iter().map(|(_, v)| v.clone()));
    let mut out = Vec::new();
    for v in values {
        for word in v.split_whitespace() {
            if word.len() >= 8 && word != v {
                out.push(word.to_string());
            }
        }
        if v.len() >= 4 {
            out.push(v);
        }
    }
    // Longest first, so a whole value is replaced before its words.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

/// A 2026-07-28 result as the rest of the gateway takes results: `resultType: complete` and the
/// upstream's serverInfo stamp removed (each client side adds what its revision has). An
/// `input_required` result is kept whole, for [`super::Upstream::request_relaying`] to answer;
/// any other type is an error.
fn modern_result(mut result: Value) -> Result<Value, UpstreamError> {
    if let Value::Object(m) = &mut result {
        match m.remove("resultType") {
            None => {}
            Some(Value::String(t)) if t == "complete" => {}
            Some(Value::String(t)) if t == INPUT_REQUIRED => {
                m.insert("resultType".into(), Value::String(t));
                return Ok(result);
            }
            Some(other) => {
                let kind: String = other.as_str().unwrap_or("?").chars().take(40).collect();
                return Err(UpstreamError::Protocol(format!("a result of type {kind:?}, which gatehouse does not relay")));
            }
        }
        if let Some(Value::Object(meta)) = m.get_mut("_meta") {
            meta.remove("io.modelcontextprotocol/serverInfo");
            if meta.is_empty() {
                m.remove("_meta");
            }
        }
    }
    Ok(result)
}

/// The `resultType` of a 2026-07-28 result that asks the client something first.
pub(crate) const INPUT_REQUIRED: &str = "input_required";

// === impl Call ===

impl Call {
    /// Waits for the answer. Never hangs past the upstream's closing: closing fails every
    /// waiter.
    pub(crate) async fn wait(&mut self) -> Result<Value, UpstreamError> {
        match (&mut self.rx).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Unavailable("connection closed".into())),
        }
    }

    /// The answer, if it has already arrived.
    pub(crate) fn try_result(&mut self) -> Option<Result<Value, UpstreamError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => {
                Some(Err(UpstreamError::Unavailable("connection closed".into())))
            }
        }
    }

    /// The request ran to completion (answered or failed): dropping it sends no cancellation.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let (was_pending, closed) = {
            let mut state = self.rpc.state();
            (state.pending.remove(&self.id).is_some(), state.closed.is_some())
        };
        if self.armed && was_pending && !closed {
            // Queued, not sent here: Drop cannot await, and the transport's sender task
            // delivers it on the same session.
            self.rpc.send(json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": { "requestId": self.id, "reason": "the gateway abandoned the request" },
            }));
        }
    }
}

// === impl Task ===

impl Task {
    pub(crate) fn spawn(f: impl Future<Output = ()> + Send + 'static) -> Task {
        Task(tokio::spawn(f))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}
