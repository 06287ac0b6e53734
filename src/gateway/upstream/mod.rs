//! The gateway's MCP client to upstream servers: one [`Upstream`] is one live MCP session with
//! one server, over any of the three transports of DESIGN.md §3 (Streamable HTTP, legacy
//! HTTP+SSE 2024-11-05, stdio children).
//!
//! It owns the upstream side of the wire: connecting, the initialize handshake, the gateway's
//! own request ids, session ids and progress tokens, timeouts, re-initialisation of dead HTTP
//! sessions, the tools-list cache and the shutdown of children. It must not touch policy,
//! grants, audit or the client side of the gateway: nothing a client sent (ids, session ids,
//! progress tokens, its Authorization header) is passed through by this layer, and the caller
//! (the proxy) decides which session serves which grant. An upstream that is down, hangs,
//! sends garbage or dies answers with an [`UpstreamError`], never a panic or a hang.
//!
//! - `rpc`: multiplexing shared by every transport (pending map, ids, progress, cancel guard).
//! - `http`: Streamable HTTP. `sse`: legacy HTTP+SSE, and the SSE parser `http` also uses.
//! - `stdio`: child processes speaking newline-delimited JSON-RPC.

mod http;
mod rpc;
mod sse;
mod stdio;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::gateway::secrets::Bound;
use crate::policy::snapshot::{Server, Transport};

use self::rpc::{Call, Rpc};

/// The pooled HTTP(S) client every HTTP upstream session uses.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

thread_local! {
    /// This thread's own client ([`use_thread_client`]).
    static THREAD_CLIENT: std::cell::OnceCell<HttpClient> = const { std::cell::OnceCell::new() };
}

/// Gives the calling thread a client of its own, which [`send`] then uses instead of the shared
/// one: for a thread running a single-threaded runtime (the proxy's shards), whose upstream
/// connections (their tasks) then live on the thread that sends on them, rather than on whichever
/// thread opened them first.
pub fn use_thread_client() {
    THREAD_CLIENT.with(|c| {
        let _ = c.set(http_client());
    });
}

/// Sends `req` with this thread's client if it has one ([`use_thread_client`]), else `shared`.
pub(crate) fn send(shared: &HttpClient, req: ::http::Request<Full<Bytes>>) -> hyper_util::client::legacy::ResponseFuture {
    THREAD_CLIENT.with(|c| c.get().unwrap_or(shared).request(req))
}

/// One live MCP session with one upstream server, opened for one grant (never shared between
/// grants; the caller pools them). Share it with an `Arc`: every method takes `&self` and may
/// run concurrently with the others.
///
/// Dropping it aborts its tasks and kills a stdio child (`kill_on_drop`), but only
/// [`Upstream::shutdown`] closes politely (stdin first, `DELETE` of the HTTP session).
pub struct Upstream {
    server: Arc<Server>,
    rpc: Arc<Rpc>,
    channel: Channel,
    /// Negotiated in the first handshake.
    protocol_version: String,
    /// The upstream's `initialize` result (capabilities, serverInfo, instructions), or its
    /// `server/discover` result on a 2026-07-28 connection (with `serverInfo` copied from its
    /// `_meta`).
    init: Value,
    /// One `tools/list` walk at a time: concurrent callers wait for it and share its result.
    listing: tokio::sync::Mutex<()>,
}

/// The transport under an [`Upstream`].
enum Channel {
    Http(http::Http),
    Sse(sse::Sse),
    /// Boxed: a child's state is several times the size of the others.
    Stdio(Box<stdio::Stdio>),
}

/// Why an upstream operation failed. The text never holds a credential value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No answer within the server's `timeout` (or the connect timeout).
    #[error("upstream timed out after {}", fmt_duration(*.0))]
    Timeout(Duration),
    /// Unreachable, refused, closed, exited, or answered with an HTTP error.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// Answered something that is not MCP: invalid JSON, wrong content type, unsupported
    /// protocol version, oversized message.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// A JSON-RPC error answer, as the upstream sent it (credential values scrubbed).
    #[error("upstream error {code}: {message}")]
    Rpc { code: i64, message: String, data: Option<Value> },
}

/// A request of the upstream to the client (`sampling/createMessage`, `elicitation/create`,
/// `roots/list`) made while a request of ours that relays them is in progress
/// ([`Upstream::request_relaying`]). Its id is the upstream's and stays here: answer through
/// `reply` (a `result`, or a JSON-RPC `error` object); dropped unanswered, the upstream gets
/// an error.
#[derive(Debug)]
pub struct ServerRequest {
    pub method: String,
    pub params: Value,
    pub reply: oneshot::Sender<Result<Value, Value>>,
}

/// What an upstream tells its subscribers.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamEvent {
    /// `notifications/tools/list_changed`: the cached list was dropped.
    ToolsListChanged,
    /// `notifications/resources/list_changed`.
    ResourcesListChanged,
    /// `notifications/prompts/list_changed`.
    PromptsListChanged,
    /// `notifications/resources/updated`: its params as received (`uri`, maybe `title`).
    ResourceUpdated(Value),
    /// `notifications/message` (a log message): its params as received (`level`, `logger`,
    /// `data`).
    Log(Value),
    /// The session ended (child exited, event stream ended, shut down); every later request
    /// fails.
    Closed,
}

/// The protocol version we ask for in `initialize`.
pub(crate) const REQUESTED_VERSION: &str = "2025-11-25";

/// The stateless revision, spoken to an upstream whose `server/discover` offers it (Streamable
/// HTTP and stdio); every other upstream gets the `initialize` handshake.
pub(crate) const MODERN_VERSION: &str = "2026-07-28";

/// How long a stdio child may take to answer the `server/discover` probe before it is taken for
/// one that ignores requests before `initialize` (it is then restarted and initialised): at most
/// this, and at most half the server's `timeout`.
const STDIO_PROBE: Duration = Duration::from_secs(5);

/// Versions we accept back over Streamable HTTP (which 2024-11-05 did not have).
pub(crate) const HTTP_VERSIONS: &[&str] = &["2025-03-26", "2025-06-18", "2025-11-25"];

/// Versions we accept back over stdio and legacy SSE.
const STREAM_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The largest message (a JSON body, one SSE event, one stdio line) we read.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Rounds of `input_required` answers one request to a 2026-07-28 upstream may take.
const MAX_INPUT_ROUNDS: usize = 8;

/// A list walk (`tools/list`, `resources/list`…) longer than this is an upstream bug (or a cursor
/// loop).
const MAX_TOOL_PAGES: usize = 100;

// === impl Upstream ===

impl Upstream {
    /// Connects and performs the initialize handshake (clientInfo `gatehouse`, no client
    /// capabilities), then sends `notifications/initialized`. Bounded by `server.timeout`.
    pub async fn connect(server: Arc<Server>, creds: Arc<Bound>, http: HttpClient) -> Result<Upstream, UpstreamError> {
        let timeout = server.timeout;
        tokio::time::timeout(timeout, Self::open(server, creds, http))
            .await
            .unwrap_or(Err(UpstreamError::Timeout(timeout)))
    }

    async fn open(server: Arc<Server>, creds: Arc<Bound>, client: HttpClient) -> Result<Upstream, UpstreamError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut rpc = Arc::new(Rpc::new(&server.name, tx, rpc::secret_strings(&creds)));
        let (channel, (protocol_version, init)) = match &server.transport {
            Transport::StreamableHttp { url } => {
                let (h, version, init) = http::Http::connect(url, &server, creds, client, rpc.clone(), rx).await?;
                (Channel::Http(h), (version, init))
            }
            Transport::Sse { url } => {
                let channel = Channel::Sse(sse::Sse::connect(url, &server, creds, client, rpc.clone(), rx).await?);
                let negotiated = handshake(&rpc, &channel).await?;
                (channel, negotiated)
            }
            Transport::Stdio { command } => {
                let channel = Channel::Stdio(Box::new(stdio::Stdio::spawn(command, &server, &creds, rpc.clone(), rx)?));
                // A 2026-07-28 server on stdio is told the era by the first message: discover.
                let probed = async {
                    if server.handshake_only {
                        return Ok(Ok(None));
                    }
                    tokio::time::timeout(STDIO_PROBE.min(server.timeout / 2), probe(&rpc, &channel)).await
                };
                match probed.await {
                    Ok(Ok(Some(result))) => {
                        rpc.set_modern();
                        listen_stdio(&rpc);
                        (channel, (MODERN_VERSION.to_string(), result))
                    }
                    // An answer that is not a 2026-07-28 offer (an error, an older revision):
                    // the same child gets the handshake.
                    Ok(Ok(None)) | Ok(Err(UpstreamError::Rpc { .. })) => {
                        let negotiated = handshake(&rpc, &channel).await?;
                        (channel, negotiated)
                    }
                    // No answer, or the child died of the probe: a fresh child, the handshake alone.
                    Ok(Err(_)) | Err(_) => {
                        tracing::debug!(server = %server.name, "no answer to server/discover; restarting the child for initialize");
                        if let Channel::Stdio(old) = channel {
                            old.shutdown().await;
                        }
                        let (tx, rx) = mpsc::unbounded_channel();
                        rpc = Arc::new(Rpc::new(&server.name, tx, rpc::secret_strings(&creds)));
                        let channel = Channel::Stdio(Box::new(stdio::Stdio::spawn(command, &server, &creds, rpc.clone(), rx)?));
                        let negotiated = handshake(&rpc, &channel).await?;
                        (channel, negotiated)
                    }
                }
            }
        };
        // A discover result names the server in `_meta`; callers read `serverInfo` either way.
        let mut init = init;
        if init.get("serverInfo").is_none()
            && let Some(info) = init.pointer("/_meta/io.modelcontextprotocol~1serverInfo").cloned()
        {
            init["serverInfo"] = info;
        }
        tracing::debug!(server = %server.name, protocol_version, "upstream session open");
        Ok(Upstream { server, rpc, channel, protocol_version, init, listing: tokio::sync::Mutex::new(()) })
    }

    /// Sends a request with the gateway's own id and returns its `result`; a JSON-RPC error
    /// answer is [`UpstreamError::Rpc`]. Bounded by `server.timeout`.
    ///
    /// With `progress = Some((tx, token))`, a progress token of ours goes in `params._meta`
    /// (replacing any the caller left there) and every `notifications/progress` for it is sent
    /// on `tx` (its params as received, `progressToken` replaced by `token`). Without it, a
    /// `progressToken` in `params._meta` is removed.
    ///
    /// If the returned future is dropped (or times out) before the answer arrives,
    /// `notifications/cancelled` with our id is sent upstream, best effort, from a task.
    pub async fn request(
        &self,
        method: &str,
        params: Value,
        progress: Option<(mpsc::UnboundedSender<Value>, Value)>,
    ) -> Result<Value, UpstreamError> {
        self.request_relaying(method, params, progress, None).await
    }

    /// [`Upstream::request`], and the upstream's requests to the client made while this one is
    /// in progress (sampling, elicitation, roots) go to `requests`: those on this request's
    /// response stream (Streamable HTTP), and those on the shared channel (stdio, legacy SSE,
    /// the GET stream) while this is the only relaying request in progress on the connection.
    /// Any other is refused with a JSON-RPC error to the upstream.
    pub async fn request_relaying(
        &self,
        method: &str,
        params: Value,
        progress: Option<(mpsc::UnboundedSender<Value>, Value)>,
        requests: Option<mpsc::UnboundedSender<ServerRequest>>,
    ) -> Result<Value, UpstreamError> {
        let timeout = self.server.timeout;
        let call = async {
            if self.rpc.is_modern() {
                // Boxed: its state stays out of every handshake-era request's future.
                return Box::pin(self.request_rounds(method, params, progress, requests)).await;
            }
            let mut call = self.rpc.start_relaying(method, params, progress, requests)?;
            let result = self.channel.request(&mut call).await;
            call.disarm();
            result
        };
        tokio::time::timeout(timeout, call).await.unwrap_or(Err(UpstreamError::Timeout(timeout)))
    }

    /// A request to a 2026-07-28 upstream. A relaying request (a `tools/call` whose client may be
    /// asked things) declares sampling, elicitation and roots; when the upstream answers
    /// `input_required`, each of its `inputRequests` goes to `requests` like a handshake-era
    /// upstream's request would (to the client of the call, recorded there), and the request is
    /// sent again with the answers as `inputResponses` and the upstream's `requestState`, for at
    /// most [`MAX_INPUT_ROUNDS`] rounds. Any other request must not be answered `input_required`.
    async fn request_rounds(
        &self,
        method: &str,
        params: Value,
        progress: Option<(mpsc::UnboundedSender<Value>, Value)>,
        requests: Option<mpsc::UnboundedSender<ServerRequest>>,
    ) -> Result<Value, UpstreamError> {
        let mut params = params;
        // What 2026-07-28 does differently from the requests the proxy makes of any upstream.
        match method {
            "logging/setLevel" => {
                let level = params.get("level").and_then(Value::as_str).map(str::to_string);
                *self.rpc.log_level.lock().unwrap_or_else(|e| e.into_inner()) = level;
                return Ok(json!({}));
            }
            "resources/subscribe" | "resources/unsubscribe" => {
                let Some(uri) = params.get("uri").and_then(Value::as_str) else {
                    return Err(UpstreamError::Protocol(format!("{method} without a uri")));
                };
                let changed = {
                    let mut set = self.rpc.resource_subscriptions.lock().unwrap_or_else(|e| e.into_inner());
                    if method == "resources/subscribe" { set.insert(uri.to_string()) } else { set.remove(uri) }
                };
                if changed {
                    self.relisten();
                }
                return Ok(json!({}));
            }
            _ => {}
        }
        if requests.is_some() && params.is_object() {
            params["_meta"]["io.modelcontextprotocol/clientCapabilities"] = json!({ "sampling": {}, "elicitation": {}, "roots": {} });
        }
        for _ in 0..MAX_INPUT_ROUNDS {
            let mut call = self.rpc.start_relaying(method, params.clone(), progress.clone(), None)?;
            let result = self.channel.request(&mut call).await;
            call.disarm();
            let result = match result {
                // 2026-07-28 spells "resource not found" -32602; the proxy takes the handshake
                // era's -32002 (and gives a 2026-07-28 client -32602 again).
                Err(UpstreamError::Rpc { code: -32602, message, data }) if method == "resources/read" && data.as_ref().is_some_and(|d| d.get("uri").is_some()) => {
                    return Err(UpstreamError::Rpc { code: -32002, message, data });
                }
                other => other?,
            };
            if result.get("resultType").and_then(Value::as_str) != Some(rpc::INPUT_REQUIRED) {
                return Ok(result);
            }
            let Some(requests) = &requests else {
                return Err(UpstreamError::Protocol(format!("{method} answered input_required, which it may not ask here")));
            };
            let asks = result.get("inputRequests").and_then(Value::as_object).cloned().unwrap_or_default();
            let mut answers = serde_json::Map::new();
            for (key, ask) in asks {
                let ask_method = ask.get("method").and_then(Value::as_str).unwrap_or("");
                if !rpc::RELAYED_REQUESTS.contains(&ask_method) {
                    let shown: String = ask_method.chars().take(40).collect();
                    return Err(UpstreamError::Protocol(format!("an input request {shown:?}, which gatehouse does not relay")));
                }
                let (reply, answer) = oneshot::channel();
                let request = ServerRequest { method: ask_method.to_string(), params: ask.get("params").cloned().unwrap_or(json!({})), reply };
                if requests.send(request).is_err() {
                    return Err(UpstreamError::Unavailable("the call ended".into()));
                }
                match answer.await {
                    Ok(Ok(v)) => {
                        answers.insert(key, v);
                    }
                    // The client refused or failed: the call fails with its error.
                    Ok(Err(e)) => {
                        let code = e.get("code").and_then(Value::as_i64).unwrap_or(-32603);
                        let message = e.get("message").and_then(Value::as_str).unwrap_or("the client refused an input request").to_string();
                        return Err(UpstreamError::Rpc { code, message, data: None });
                    }
                    Err(_) => return Err(UpstreamError::Unavailable("the input request went unanswered".into())),
                }
            }
            params["inputResponses"] = Value::Object(answers);
            match result.get("requestState") {
                Some(state) => params["requestState"] = state.clone(),
                None => {
                    params.as_object_mut().map(|p| p.remove("requestState"));
                }
            }
        }
        Err(UpstreamError::Protocol(format!("{method} still asked for input after {MAX_INPUT_ROUNDS} rounds")))
    }

    /// Sends a notification (no answer). Bounded by `server.timeout`.
    pub async fn notify(&self, method: &str, params: Value) -> Result<(), UpstreamError> {
        if let Some(e) = self.rpc.closed_error() {
            return Err(e);
        }
        let mut message = json!({ "jsonrpc": "2.0", "method": method });
        if !params.is_null() {
            message["params"] = params;
        }
        let timeout = self.server.timeout;
        tokio::time::timeout(timeout, self.channel.notify(message))
            .await
            .unwrap_or(Err(UpstreamError::Timeout(timeout)))
    }

    /// The full tool list (following `nextCursor` until absent), cached until the upstream
    /// sends `notifications/tools/list_changed` (or an HTTP session is re-initialised).
    pub async fn list_tools(&self) -> Result<Arc<Vec<Value>>, UpstreamError> {
        if let (Some(tools), _) = self.rpc.cached_tools() {
            return Ok(tools);
        }
        let _walk = self.listing.lock().await;
        let (cached, generation) = self.rpc.cached_tools();
        if let Some(tools) = cached {
            return Ok(tools);
        }
        let tools = Arc::new(self.list_all("tools/list", "tools").await?);
        self.rpc.store_tools(generation, tools.clone());
        Ok(tools)
    }

    /// Every item of a paginated list (`resources/list` → `resources`, `prompts/list` →
    /// `prompts`, `resources/templates/list` → `resourceTemplates`), following `nextCursor`
    /// until absent. Not cached.
    pub async fn list_all(&self, method: &str, key: &str) -> Result<Vec<Value>, UpstreamError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_TOOL_PAGES {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let mut result = self.request(method, params, None).await?;
            match result.get_mut(key).map(Value::take) {
                Some(Value::Array(page)) => items.extend(page),
                _ => return Err(UpstreamError::Protocol(format!("{method} result has no {key} array"))),
            }
            match result.get("nextCursor") {
                Some(Value::String(next)) if cursor.as_deref() == Some(next) => {
                    return Err(UpstreamError::Protocol(format!("{method} returned the same cursor twice")));
                }
                Some(Value::String(next)) => cursor = Some(next.clone()),
                _ => return Ok(items),
            }
        }
        Err(UpstreamError::Protocol(format!("{method} did not end after {MAX_TOOL_PAGES} pages")))
    }

    /// Whether the upstream's `initialize` result declares the capability `name` (`resources`,
    /// `prompts`, `logging`, `completions`).
    pub fn has_capability(&self, name: &str) -> bool {
        self.init.get("capabilities").and_then(|c| c.get(name)).is_some_and(|c| !c.is_null())
    }

    /// The cached tool list, without asking the upstream.
    pub fn cached_tools(&self) -> Option<Arc<Vec<Value>>> {
        self.rpc.cached_tools().0
    }

    /// Events from the upstream: list changes, resource updates, log messages, closed.
    pub fn subscribe(&self) -> broadcast::Receiver<UpstreamEvent> {
        self.rpc.subscribe()
    }

    /// A 2026-07-28 session's subscribed URIs changed: its `subscriptions/listen` is replaced.
    fn relisten(&self) {
        match &self.channel {
            Channel::Stdio(_) => {
                let n = self.rpc.listen_seq.load(std::sync::atomic::Ordering::Relaxed);
                let previous = format!("{LISTEN_ID}-{n}");
                self.rpc.send(json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": previous } }));
                listen_stdio(&self.rpc);
            }
            // the listen task re-opens its stream with the new set
            _ => self.rpc.listen_changed.notify_one(),
        }
    }

    /// The session has ended: every request fails. An HTTP session is never closed by a
    /// failed request (the next one re-initialises), only by [`Upstream::shutdown`].
    pub fn is_closed(&self) -> bool {
        self.rpc.is_closed()
    }

    /// Ends the session. stdio: close stdin, wait up to 2 s, SIGTERM, wait up to 2 s, SIGKILL
    /// (the child is reaped). Streamable HTTP: `DELETE` the session (best effort). SSE: drop
    /// the event stream. Pending and later requests fail with `Unavailable`.
    pub async fn shutdown(&self) {
        self.rpc.close(UpstreamError::Unavailable("session shut down".into()));
        match &self.channel {
            Channel::Http(h) => h.shutdown().await,
            Channel::Sse(s) => s.shutdown(),
            Channel::Stdio(s) => s.shutdown().await,
        }
    }

    /// The protocol version negotiated in the handshake.
    pub fn protocol_version(&self) -> &str {
        &self.protocol_version
    }

    /// The upstream's `initialize` result: `capabilities`, `serverInfo`, `instructions`.
    pub fn initialize_result(&self) -> &Value {
        &self.init
    }

    /// The server this session talks to.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The stdio child's process id while it runs (None for HTTP transports, or once reaped).
    pub fn pid(&self) -> Option<u32> {
        match &self.channel {
            Channel::Stdio(s) => s.pid(),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("server", &self.server.name)
            .field("protocol_version", &self.protocol_version)
            .field("closed", &self.is_closed())
            .finish()
    }
}

// === impl Channel ===

impl Channel {
    async fn request(&self, call: &mut Call) -> Result<Value, UpstreamError> {
        match self {
            Channel::Http(h) => h.request(call).await,
            Channel::Sse(s) => s.request(call).await,
            Channel::Stdio(s) => s.request(call).await,
        }
    }

    async fn notify(&self, message: Value) -> Result<(), UpstreamError> {
        match self {
            Channel::Http(h) => h.notify(&message).await,
            Channel::Sse(s) => s.post(&message).await,
            Channel::Stdio(s) => s.send(message),
        }
    }
}

/// The handshake over a channel whose `initialize` needs nothing special (stdio, legacy SSE;
/// Streamable HTTP does its own, to pick up the session id).
async fn handshake(rpc: &Arc<Rpc>, channel: &Channel) -> Result<(String, Value), UpstreamError> {
    let mut call = rpc.start("initialize", initialize_params(), None)?;
    let result = channel.request(&mut call).await;
    call.disarm();
    let result = result?;
    let version = negotiated(&result, STREAM_VERSIONS)?;
    channel.notify(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })).await?;
    Ok((version, result))
}

/// `server/discover` with our envelope: the result when it offers 2026-07-28, `None` when it
/// offers only handshake-era versions.
async fn probe(rpc: &Arc<Rpc>, channel: &Channel) -> Result<Option<Value>, UpstreamError> {
    let mut call = rpc.start("server/discover", json!({ "_meta": envelope() }), None)?;
    let result = channel.request(&mut call).await;
    call.disarm();
    Ok(Some(result?).filter(offers_modern))
}

/// Whether a `server/discover` result lists 2026-07-28 among its `supportedVersions`.
pub(crate) fn offers_modern(result: &Value) -> bool {
    result.get("supportedVersions").and_then(Value::as_array).is_some_and(|v| v.iter().any(|v| v == MODERN_VERSION))
}

/// The `_meta` of every 2026-07-28 request of ours: the version, who we are, and no client
/// capabilities (an upstream's request to a client is relayed only over handshake-era sessions,
/// whose connection is tied to the call in progress).
pub(crate) fn envelope() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientInfo": { "name": "gatehouse", "version": env!("CARGO_PKG_VERSION") },
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

/// On a 2026-07-28 stdio session, opt in to list changes and the subscribed resources' updates:
/// a `subscriptions/listen` whose answer (only when the server ends it) goes to no one; its
/// notifications are dispatched like any. Sent again (the previous one cancelled) when the
/// subscribed URIs change.
fn listen_stdio(rpc: &Rpc) {
    let n = rpc.listen_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    rpc.send(json!({ "jsonrpc": "2.0", "id": format!("{LISTEN_ID}-{n}"), "method": "subscriptions/listen", "params": listen_params(rpc) }));
}

/// The id of our `subscriptions/listen` requests: theirs to end, never a waiter's.
pub(crate) const LISTEN_ID: &str = "gatehouse-listen";

/// The params of our `subscriptions/listen`: every list change, and the subscribed URIs.
pub(crate) fn listen_params(rpc: &Rpc) -> Value {
    let mut notifications = json!({ "toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true });
    let uris: Vec<String> = rpc.resource_subscriptions.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
    if !uris.is_empty() {
        notifications["resourceSubscriptions"] = json!(uris);
    }
    json!({ "notifications": notifications, "_meta": envelope() })
}

/// Our `initialize` params: sampling, elicitation and roots, which are relayed to the client of
/// the call in progress (and refused when there is none, or it did not declare them).
pub(crate) fn initialize_params() -> Value {
    json!({
        "protocolVersion": REQUESTED_VERSION,
        "capabilities": { "sampling": {}, "elicitation": {}, "roots": {} },
        "clientInfo": { "name": "gatehouse", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// The protocol version an `initialize` result chose, if we speak it.
pub(crate) fn negotiated(result: &Value, accepted: &[&str]) -> Result<String, UpstreamError> {
    match result.get("protocolVersion").and_then(Value::as_str) {
        Some(v) if accepted.contains(&v) => Ok(v.to_string()),
        Some(v) => Err(UpstreamError::Protocol(format!(
            "protocol version {:?} chosen, which gatehouse does not speak (it speaks {})",
            v.chars().take(40).collect::<String>(),
            accepted.join(", ")
        ))),
        None => Err(UpstreamError::Protocol("initialize result has no protocolVersion".into())),
    }
}

/// Builds the HTTP(S) client for upstream sessions: HTTP/1.1, TLS with the webpki roots,
/// connections pooled per origin. Build one per process and clone it (clones share the
/// pool); it is a function rather than a global so that each tokio runtime (each test) gets
/// connections driven by its own tasks.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https)
}

/// `500ms`, `2s`, `1.5s`: durations as the repository writes them.
fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// An error and its sources, `: `-joined, without repeats (hyper nests the same text).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
