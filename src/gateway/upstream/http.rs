//! The Streamable HTTP transport (protocol 2025-03-26 and later).
//!
//! It owns one upstream session: every message is a POST to the server's url with our
//! credential headers, our `Mcp-Session-Id` (from the initialize response) and
//! `MCP-Protocol-Version`; an answer is a JSON body or an SSE stream that ends with it. A
//! session the upstream forgot (404, or the 400 real servers send) is re-initialised once
//! and the request retried. A GET stream, when the server offers one, carries its
//! notifications (tools/list_changed). It must not interpret JSON-RPC itself (that is `rpc`)
//! and never sends anything of the client side of the gateway: the session id, request ids
//! and headers are our own.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::rpc::{Call, Rpc, Task};
use super::sse::SseParser;
use super::{HTTP_VERSIONS, HttpClient, MAX_MESSAGE_BYTES, MODERN_VERSION, UpstreamError, error_chain};
use crate::gateway::secrets::Bound;
use crate::policy::snapshot::Server;

const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// 2026-07-28: the method and the name (tool, prompt) or URI of a request, mirrored from its body.
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// How much of an error body we read to find a JSON-RPC error in it.
const ERROR_BODY_MAX: usize = 64 << 10;

/// One Streamable HTTP session.
pub(crate) struct Http {
    inner: Arc<Inner>,
    /// The outbound sender and the GET stream listener; dropped (aborted) on shutdown.
    tasks: Mutex<Vec<Task>>,
}

struct Inner {
    /// `protocol: handshake`: no `server/discover` probe.
    handshake_only: bool,
    client: HttpClient,
    uri: Uri,
    creds: Arc<Bound>,
    rpc: Arc<Rpc>,
    timeout: Duration,
    session: RwLock<Session>,
    /// One re-initialisation at a time; the others see the new epoch and just retry.
    reinit: tokio::sync::Mutex<()>,
}

/// What the current session adds to each request.
#[derive(Clone, Default)]
struct Session {
    /// `Mcp-Session-Id` the upstream gave us; None for a stateless server.
    id: Option<HeaderValue>,
    /// `MCP-Protocol-Version`, once negotiated.
    version: Option<HeaderValue>,
    /// Bumped by every handshake, so concurrent requests that all met the dead session
    /// re-initialise it once.
    epoch: u64,
}

/// How a GET stream attempt ended.
enum Listen {
    /// 405: the server offers no GET stream.
    Unsupported,
    /// The stream ended (after this long).
    Ended(Duration),
    /// 404 or 400: the upstream forgot the session (restarted).
    SessionGone,
    /// 2026-07-28: what the stream subscribes to changed; open the next one at once.
    Restart,
}

// === impl Http ===

impl Http {
    /// Performs the handshake and starts the background tasks. The caller bounds the time.
    pub(crate) async fn connect(
        url: &str,
        server: &Server,
        creds: Arc<Bound>,
        client: HttpClient,
        rpc: Arc<Rpc>,
        outbound: mpsc::UnboundedReceiver<Value>,
    ) -> Result<(Http, String, Value), UpstreamError> {
        let inner = Arc::new(Inner {
            handshake_only: server.handshake_only,
            client,
            uri: parse_url(url)?,
            creds,
            rpc,
            timeout: server.timeout,
            session: RwLock::new(Session::default()),
            reinit: tokio::sync::Mutex::new(()),
        });
        let (version, init) = inner.handshake().await?;
        let tasks = vec![Task::spawn(send_queued(inner.clone(), outbound)), Task::spawn(listen(inner.clone()))];
        Ok((Http { inner, tasks: Mutex::new(tasks) }, version, init))
    }

    pub(crate) async fn request(&self, call: &mut Call) -> Result<Value, UpstreamError> {
        self.inner.request(call).await
    }

    pub(crate) async fn notify(&self, message: &Value) -> Result<(), UpstreamError> {
        let session = self.inner.session();
        self.inner.notify(message, &session).await
    }

    /// Stops the background tasks and DELETEs the session (best effort, at most 5 s).
    pub(crate) async fn shutdown(&self) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let session = self.inner.session();
        if session.id.is_none() {
            return;
        }
        let Ok(mut req) = Request::builder().method(Method::DELETE).uri(self.inner.uri.clone()).body(Full::default())
        else {
            return;
        };
        self.inner.headers(req.headers_mut(), Some(&session));
        let wait = self.inner.timeout.min(Duration::from_secs(5));
        match tokio::time::timeout(wait, super::send(&self.inner.client, req)).await {
            Ok(Ok(resp)) => {
                tracing::debug!(server = %self.inner.rpc.server(), status = %resp.status(), "upstream session deleted");
                drain(resp.into_body());
            }
            Ok(Err(e)) => {
                tracing::debug!(server = %self.inner.rpc.server(), error = %error_chain(&e), "could not delete the upstream session")
            }
            Err(_) => tracing::debug!(server = %self.inner.rpc.server(), "deleting the upstream session timed out"),
        }
    }
}

// === impl Inner ===

impl Inner {
    fn session(&self) -> Session {
        self.session.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Credentials first, then our own headers, which no credential may override.
    fn headers(&self, h: &mut HeaderMap, session: Option<&Session>) {
        apply_credentials(h, &self.creds);
        h.insert(ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
        if let Some(s) = session {
            if let Some(id) = &s.id {
                h.insert(SESSION_ID, id.clone());
            }
            if let Some(v) = &s.version {
                h.insert(PROTOCOL_VERSION, v.clone());
            }
        }
    }

    async fn post(&self, message: &Value, session: Option<&Session>) -> Result<Response<Incoming>, UpstreamError> {
        let body = serde_json::to_vec(message).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| UpstreamError::Protocol(format!("cannot build the request: {e}")))?;
        self.headers(req.headers_mut(), session);
        modern_headers(req.headers_mut(), message);
        req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        super::send(&self.client, req).await.map_err(|e| {
            UpstreamError::Unavailable(format!("connection failed: {}", self.rpc.redact(&error_chain(&e))))
        })
    }

    /// `server/discover` first: an upstream that offers 2026-07-28 gets stateless requests (no
    /// session id, our envelope in every request's `_meta`). Anything else gets `initialize`
    /// without a session, then `notifications/initialized` in the new one.
    async fn handshake(&self) -> Result<(String, Value), UpstreamError> {
        if !self.handshake_only
            && let Some(result) = self.discover().await
        {
            {
                let mut s = self.session.write().unwrap_or_else(|e| e.into_inner());
                s.id = None;
                s.version = Some(HeaderValue::from_static(MODERN_VERSION));
                s.epoch += 1;
            }
            self.rpc.set_modern();
            self.rpc.invalidate_tools();
            return Ok((MODERN_VERSION.to_string(), result));
        }
        let mut call = self.rpc.start("initialize", super::initialize_params(), None)?;
        let result = async {
            let resp = self.post(&call.message, None).await?;
            let status = resp.status();
            if !status.is_success() || status == StatusCode::ACCEPTED {
                return Err(self.error_answer(resp, &mut call).await);
            }
            let id = match resp.headers().get(SESSION_ID) {
                // Visible ASCII only (the spec's rule), so it is safe to log and to send back.
                Some(v) if v.to_str().is_ok_and(|s| !s.is_empty() && s.len() <= 1024) => Some(v.clone()),
                Some(_) => return Err(UpstreamError::Protocol("invalid Mcp-Session-Id".into())),
                None => None,
            };
            let result = self.answer(resp, &mut call).await?;
            Ok((id, result))
        }
        .await;
        call.disarm();
        let (id, result) = result?;
        let version = super::negotiated(&result, HTTP_VERSIONS)?;
        let session = {
            let mut s = self.session.write().unwrap_or_else(|e| e.into_inner());
            s.id = id;
            s.version = HeaderValue::from_str(&version).ok();
            s.epoch += 1;
            s.clone()
        };
        self.notify(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }), &session).await?;
        // A new session may be a restarted server with other tools.
        self.rpc.invalidate_tools();
        Ok((version, result))
    }

    /// The `server/discover` probe: its result when it offers 2026-07-28. An error of any kind
    /// (a handshake-era server answers 400, 404 or a JSON-RPC error) means `initialize`.
    async fn discover(&self) -> Option<Value> {
        let mut call = self.rpc.start("server/discover", json!({ "_meta": super::envelope() }), None).ok()?;
        let result = async {
            let resp = self.post(&call.message, None).await?;
            let status = resp.status();
            if !status.is_success() || status == StatusCode::ACCEPTED {
                return Err(self.error_answer(resp, &mut call).await);
            }
            self.answer(resp, &mut call).await
        }
        .await;
        call.disarm();
        match result {
            Ok(r) if super::offers_modern(&r) => Some(r),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(server = %self.rpc.server(), error = %e, "server/discover refused; initialize");
                None
            }
        }
    }

    async fn request(&self, call: &mut Call) -> Result<Value, UpstreamError> {
        let mut retried = false;
        loop {
            let session = self.session();
            let resp = self.post(&call.message, Some(&session)).await?;
            let status = resp.status();
            if status == StatusCode::ACCEPTED {
                drain(resp.into_body());
                return Err(UpstreamError::Protocol("request accepted (HTTP 202) but never answered".into()));
            }
            if status.is_success() {
                return self.answer(resp, call).await;
            }
            let dead_session =
                matches!(status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST) && session.id.is_some();
            let error = self.error_answer(resp, call).await;
            // A JSON-RPC error answering our id is the answer (rmcp sends -32601 as 404):
            // only a bare 404/400 means the session is gone.
            if dead_session && !retried && !matches!(error, UpstreamError::Rpc { .. }) {
                retried = true;
                tracing::info!(server = %self.rpc.server(), %status, "upstream forgot the session; re-initialising");
                self.reinit(session.epoch).await?;
                continue;
            }
            return Err(error);
        }
    }

    async fn reinit(&self, seen_epoch: u64) -> Result<(), UpstreamError> {
        let _one = self.reinit.lock().await;
        if self.session().epoch != seen_epoch {
            return Ok(()); // another request already did it
        }
        self.handshake().await.map(|_| ())
    }

    async fn notify(&self, message: &Value, session: &Session) -> Result<(), UpstreamError> {
        let resp = self.post(message, Some(session)).await?;
        let status = resp.status();
        if status.is_success() {
            drain(resp.into_body());
            Ok(())
        } else {
            let body = read_capped(resp.into_body(), ERROR_BODY_MAX).await.unwrap_or_default();
            Err(status_error(&self.rpc, status, &body))
        }
    }

    /// Reads a 2xx answer, JSON or SSE, dispatching every message in it, until the response
    /// to `call` arrives.
    async fn answer(&self, resp: Response<Incoming>, call: &mut Call) -> Result<Value, UpstreamError> {
        let ct = content_type(resp.headers());
        if ct.starts_with("text/event-stream") {
            let mut body = resp.into_body();
            let mut parser = SseParser::new(MAX_MESSAGE_BYTES);
            let mut events = Vec::new();
            loop {
                let chunk = match body.frame().await {
                    None => break,
                    Some(Err(e)) => {
                        return Err(UpstreamError::Unavailable(format!(
                            "response stream failed: {}",
                            self.rpc.redact(&error_chain(&e))
                        )));
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                };
                parser.feed(&chunk, &mut events).map_err(UpstreamError::Protocol)?;
                for ev in events.drain(..) {
                    if ev.event != "message" || ev.data.trim().is_empty() {
                        continue; // priming events carry no data
                    }
                    let msg: Value = serde_json::from_str(&ev.data)
                        .map_err(|_| UpstreamError::Protocol("an event that is not JSON".into()))?;
                    self.rpc.dispatch_from(msg, Some(call.id));
                    if let Some(result) = call.try_result() {
                        // Finish reading in the background so the connection returns to the pool.
                        drain(body);
                        return result;
                    }
                }
            }
            Err(UpstreamError::Unavailable("response stream ended without an answer".into()))
        } else if ct.starts_with("application/json") {
            let bytes = read_capped(resp.into_body(), MAX_MESSAGE_BYTES).await?;
            let msg: Value = serde_json::from_slice(&bytes)
                .map_err(|_| UpstreamError::Protocol("a body that is not JSON".into()))?;
            self.rpc.dispatch_from(msg, Some(call.id));
            call.try_result().unwrap_or_else(|| {
                Err(UpstreamError::Protocol("an answer that is not the response to the request".into()))
            })
        } else {
            drain(resp.into_body());
            Err(UpstreamError::Protocol(format!("unexpected content type {ct:?}")))
        }
    }

    /// The error for a non-2xx answer: the JSON-RPC error in its body when it answers `call`,
    /// else the status.
    async fn error_answer(&self, resp: Response<Incoming>, call: &mut Call) -> UpstreamError {
        let status = resp.status();
        let body = read_capped(resp.into_body(), ERROR_BODY_MAX).await.unwrap_or_default();
        if let Ok(msg) = serde_json::from_slice::<Value>(&body) {
            self.rpc.dispatch(msg);
            if let Some(Err(e)) = call.try_result() {
                return e;
            }
        }
        status_error(&self.rpc, status, &body)
    }

    /// One GET stream (2026-07-28: one `subscriptions/listen` POST, opting in to the list
    /// changes): its messages go to `rpc` until it ends.
    async fn listen_once(&self, session: &Session) -> Result<Listen, UpstreamError> {
        let modern = self.rpc.is_modern();
        let (method, body) = if modern {
            let params = super::listen_params(&self.rpc);
            let message = json!({ "jsonrpc": "2.0", "id": super::LISTEN_ID, "method": "subscriptions/listen", "params": params });
            (Method::POST, Full::new(Bytes::from(message.to_string())))
        } else {
            (Method::GET, Full::default())
        };
        let mut req = Request::builder()
            .method(method)
            .uri(self.uri.clone())
            .body(body)
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        self.headers(req.headers_mut(), Some(session));
        if modern {
            req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            req.headers_mut().insert(MCP_METHOD, HeaderValue::from_static("subscriptions/listen"));
        } else {
            req.headers_mut().insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        let resp = tokio::time::timeout(self.timeout, super::send(&self.client, req))
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
            .map_err(|e| UpstreamError::Unavailable(self.rpc.redact(&error_chain(&e))))?;
        let status = resp.status();
        if status == StatusCode::METHOD_NOT_ALLOWED || (modern && !status.is_success()) {
            drain(resp.into_body());
            return Ok(Listen::Unsupported);
        }
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST) {
            drain(resp.into_body());
            return Ok(Listen::SessionGone);
        }
        if status != StatusCode::OK || !content_type(resp.headers()).starts_with("text/event-stream") {
            drain(resp.into_body());
            return Err(UpstreamError::Unavailable(format!("GET stream answered HTTP {status}")));
        }
        let started = Instant::now();
        let mut body = resp.into_body();
        let mut parser = SseParser::new(MAX_MESSAGE_BYTES);
        let mut events = Vec::new();
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                // 2026-07-28: the subscribed URIs changed; a new stream carries the new set
                _ = self.rpc.listen_changed.notified(), if modern => return Ok(Listen::Restart),
            };
            let Some(frame) = frame else { break };
            let Ok(frame) = frame else { break };
            let Ok(chunk) = frame.into_data() else { continue };
            parser.feed(&chunk, &mut events).map_err(UpstreamError::Protocol)?;
            for ev in events.drain(..) {
                if ev.event == "message" && !ev.data.trim().is_empty() {
                    match serde_json::from_str::<Value>(&ev.data) {
                        Ok(msg) => self.rpc.dispatch(msg),
                        Err(_) => tracing::debug!(server = %self.rpc.server(), "GET stream event is not JSON; ignored"),
                    }
                }
            }
        }
        Ok(Listen::Ended(started.elapsed()))
    }
}

/// Keeps a GET stream open while the session lives, reconnecting with backoff; gives up
/// when the server says 405 or has no session.
async fn listen(inner: Arc<Inner>) {
    let mut delay = Duration::from_secs(1);
    // Set by a re-initialisation this loop did, cleared by a stream that opened.
    let mut reinitialised = false;
    loop {
        if inner.rpc.is_closed() {
            return;
        }
        let session = inner.session();
        if session.id.is_none() && !inner.rpc.is_modern() {
            return; // a stateless server has nothing to push to us
        }
        match inner.listen_once(&session).await {
            Ok(Listen::Unsupported) => {
                tracing::debug!(server = %inner.rpc.server(), "upstream offers no GET stream");
                return;
            }
            Ok(Listen::Ended(lasted)) if lasted > Duration::from_secs(30) => {
                delay = Duration::from_secs(1);
                reinitialised = false;
            }
            Ok(Listen::Ended(_)) => reinitialised = false,
            Ok(Listen::Restart) => continue,
            // A restarted upstream: open a new session at once (its tools may differ; the
            // handshake drops the cached list), rather than asking for the dead one's stream.
            // A server that refuses the GET of a brand-new session too just has no usable
            // stream: back off, never loop on handshakes.
            Ok(Listen::SessionGone) if !reinitialised => match inner.reinit(session.epoch).await {
                Ok(()) => {
                    tracing::info!(server = %inner.rpc.server(), "upstream forgot the session (GET stream); re-initialised");
                    reinitialised = true;
                    continue;
                }
                Err(e) => tracing::debug!(server = %inner.rpc.server(), error = %e, "re-initialising after a lost GET stream failed"),
            },
            Ok(Listen::SessionGone) => {
                tracing::debug!(server = %inner.rpc.server(), "upstream refuses the GET stream of a new session")
            }
            Err(e) => {
                reinitialised = false;
                tracing::debug!(server = %inner.rpc.server(), error = %e, "upstream GET stream unavailable")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// Sends queued messages (replies, cancellations) in the current session, one at a time.
async fn send_queued(inner: Arc<Inner>, mut outbound: mpsc::UnboundedReceiver<Value>) {
    while let Some(message) = outbound.recv().await {
        // 2026-07-28 over HTTP has no client notifications: a dropped request's closed
        // connection is its cancellation.
        if inner.rpc.is_modern() && message.get("id").is_none() {
            continue;
        }
        let session = inner.session();
        match tokio::time::timeout(inner.timeout, inner.notify(&message, &session)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(server = %inner.rpc.server(), error = %e, "could not send a message upstream")
            }
            Err(_) => tracing::debug!(server = %inner.rpc.server(), "sending a message upstream timed out"),
        }
    }
}

// --- helpers shared with `sse` ---

/// An `http`/`https` url with a host.
pub(crate) fn parse_url(url: &str) -> Result<Uri, UpstreamError> {
    let uri: Uri = url.parse().map_err(|_| UpstreamError::Protocol(format!("invalid upstream url {url:?}")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(UpstreamError::Protocol(format!("upstream url {url:?} is not an http or https url"))),
    }
}

/// Adds the server's credential headers, skipping the ones the transport owns.
pub(crate) fn apply_credentials(h: &mut HeaderMap, creds: &Bound) {
    for (name, value) in &creds.headers {
        let owned = [
            ACCEPT,
            CONTENT_TYPE,
            SESSION_ID,
            PROTOCOL_VERSION,
            MCP_METHOD,
            MCP_NAME,
            http::header::HOST,
            http::header::CONTENT_LENGTH,
        ];
        if !owned.contains(name) {
            h.append(name.clone(), value.clone());
        }
    }
}

/// A 2026-07-28 request mirrors its body in headers: `MCP-Protocol-Version`, `Mcp-Method`, and
/// `Mcp-Name` for `tools/call`, `prompts/get` (the name) and `resources/read` (the URI).
fn modern_headers(h: &mut HeaderMap, message: &Value) {
    let Some(params) = message.get("params") else { return };
    let version = params.get("_meta").and_then(|m| m.get("io.modelcontextprotocol/protocolVersion")).and_then(Value::as_str);
    if version != Some(MODERN_VERSION) {
        return;
    }
    h.insert(PROTOCOL_VERSION, HeaderValue::from_static(MODERN_VERSION));
    let method = message.get("method").and_then(Value::as_str).unwrap_or("");
    if let Ok(v) = HeaderValue::from_str(method) {
        h.insert(MCP_METHOD, v);
    }
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return,
    };
    if let Some(v) = params.get(key).and_then(Value::as_str).and_then(header_value) {
        h.insert(MCP_NAME, v);
    }
}

/// A value as 2026-07-28 puts it in a header: as is when it is plain visible ASCII (inner
/// spaces allowed), else `=?base64?<UTF-8 in base64>?=` (also for a plain value that looks
/// like that sentinel).
fn header_value(v: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let visible = v.bytes().all(|b| b == b' ' || (0x21..=0x7e).contains(&b));
    let padded = v.starts_with(' ') || v.ends_with(' ');
    let sentinel = v.starts_with("=?base64?") && v.ends_with("?=");
    let plain = !v.is_empty() && visible && !padded && !sentinel;
    if plain {
        HeaderValue::from_str(v).ok()
    } else {
        HeaderValue::from_str(&format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode(v))).ok()
    }
}

/// The media type, lower-cased (empty when absent).
pub(crate) fn content_type(h: &HeaderMap) -> String {
    h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_ascii_lowercase()
}

/// The whole body, refused past `max` bytes.
pub(crate) async fn read_capped(mut body: Incoming, max: usize) -> Result<Bytes, UpstreamError> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| UpstreamError::Unavailable(format!("response body failed: {}", error_chain(&e))))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(UpstreamError::Protocol(format!("response larger than {max} bytes")));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Reads what is left of a body in the background (at most 1 MiB, 2 s), so the connection
/// can go back to the pool instead of being closed.
pub(crate) fn drain(body: Incoming) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), read_capped(body, 1 << 20)).await;
    });
}

/// `HTTP 503 Service Unavailable: <JSON-RPC error message or the start of the body>`, scrubbed.
pub(crate) fn status_error(rpc: &Rpc, status: StatusCode, body: &[u8]) -> UpstreamError {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    // Scrub before cutting, so that no prefix of a credential survives the cut.
    let detail = rpc.redact(&detail);
    let detail: String = detail.chars().filter(|c| !c.is_control()).take(200).collect::<String>().trim().to_string();
    if detail.is_empty() {
        UpstreamError::Unavailable(format!("HTTP {status}"))
    } else {
        UpstreamError::Unavailable(format!("HTTP {status}: {detail}"))
    }
}
