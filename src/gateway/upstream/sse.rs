//! The legacy HTTP+SSE transport (protocol 2024-11-05), and the `text/event-stream` parser
//! that Streamable HTTP also uses.
//!
//! It owns one long-lived GET event stream per session: the first `endpoint` event names
//! where to POST messages (resolved against the url, refused on another origin), and every
//! answer arrives as a `message` event, handed to `rpc` by a reader task. The end of the stream
//! closes the session. It must not interpret JSON-RPC itself (that is `rpc`) nor keep any
//! state of the client side of the gateway.

use std::sync::{Arc, Mutex};

use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::http::{apply_credentials, content_type, drain, parse_url, read_capped, status_error};
use super::rpc::{Call, Rpc, Task};
use super::{HttpClient, MAX_MESSAGE_BYTES, UpstreamError, error_chain};
use crate::gateway::secrets::Bound;
use crate::policy::snapshot::Server;

/// One legacy SSE session.
pub(crate) struct Sse {
    inner: Arc<Inner>,
    /// The stream reader and the outbound sender; dropped (aborted) on shutdown.
    tasks: Mutex<Vec<Task>>,
}

struct Inner {
    client: HttpClient,
    /// Where messages are POSTed, from the `endpoint` event.
    endpoint: Uri,
    creds: Arc<Bound>,
    rpc: Arc<Rpc>,
    timeout: std::time::Duration,
}

/// An incremental `text/event-stream` parser (WHATWG HTML §9.2): fields `event` and `data`,
/// comments and `id`/`retry` ignored, any of CRLF, LF, CR ending a line.
pub(crate) struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
    /// The last chunk ended with CR: a LF starting the next one belongs to it.
    skip_lf: bool,
    max: usize,
}

/// One dispatched event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `message` when the stream gave none.
    pub(crate) event: String,
    pub(crate) data: String,
}

// === impl Sse ===

impl Sse {
    /// Opens the event stream and waits for its `endpoint` event. The caller bounds the time.
    pub(crate) async fn connect(
        url: &str,
        server: &Server,
        creds: Arc<Bound>,
        client: HttpClient,
        rpc: Arc<Rpc>,
        outbound: mpsc::UnboundedReceiver<Value>,
    ) -> Result<Sse, UpstreamError> {
        let uri = parse_url(url)?;
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .body(Full::default())
            .map_err(|e| UpstreamError::Protocol(format!("cannot build the event stream request: {e}")))?;
        apply_credentials(req.headers_mut(), &creds);
        req.headers_mut().insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        req.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let resp = client
            .request(req)
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("connection failed: {}", rpc.redact(&error_chain(&e)))))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = read_capped(resp.into_body(), 64 << 10).await.unwrap_or_default();
            return Err(status_error(&rpc, status, &body));
        }
        if !content_type(resp.headers()).starts_with("text/event-stream") {
            return Err(UpstreamError::Protocol(format!(
                "event stream request answered with content type {:?}",
                content_type(resp.headers())
            )));
        }
        let (endpoint_tx, endpoint_rx) = oneshot::channel();
        let reader = Task::spawn(read_stream(resp.into_body(), rpc.clone(), endpoint_tx));
        let endpoint = match endpoint_rx.await {
            Ok(e) => e,
            Err(_) => {
                return Err(UpstreamError::Unavailable("event stream ended before its endpoint event".into()));
            }
        };
        let endpoint = resolve_endpoint(&uri, endpoint.trim())?;
        let inner = Arc::new(Inner { client, endpoint, creds, rpc, timeout: server.timeout });
        let sender = Task::spawn(send_queued(inner.clone(), outbound));
        Ok(Sse { inner, tasks: Mutex::new(vec![reader, sender]) })
    }

    /// POSTs the request; the answer comes on the event stream.
    pub(crate) async fn request(&self, call: &mut Call) -> Result<Value, UpstreamError> {
        self.post(&call.message).await?;
        call.wait().await
    }

    /// POSTs one message to the endpoint; 2xx is success (the body is ignored).
    pub(crate) async fn post(&self, message: &Value) -> Result<(), UpstreamError> {
        self.inner.post(message).await
    }

    /// Drops the event stream (which ends the session on the upstream's side).
    pub(crate) fn shutdown(&self) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

// === impl Inner ===

impl Inner {
    async fn post(&self, message: &Value) -> Result<(), UpstreamError> {
        let body = serde_json::to_vec(message).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .body(Full::new(body.into()))
            .map_err(|e| UpstreamError::Protocol(format!("cannot build the message request: {e}")))?;
        apply_credentials(req.headers_mut(), &self.creds);
        req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let resp = self.client.request(req).await.map_err(|e| {
            UpstreamError::Unavailable(format!("connection failed: {}", self.rpc.redact(&error_chain(&e))))
        })?;
        let status = resp.status();
        if status.is_success() {
            drain(resp.into_body());
            Ok(())
        } else {
            let body = read_capped(resp.into_body(), 64 << 10).await.unwrap_or_default();
            Err(status_error(&self.rpc, status, &body))
        }
    }
}

/// Reads the event stream until it ends: the first `endpoint` event goes to `endpoint`, every
/// `message` event to `rpc`. The end (or a broken or oversized stream) closes the session.
async fn read_stream(mut body: Incoming, rpc: Arc<Rpc>, endpoint: oneshot::Sender<String>) {
    let mut endpoint = Some(endpoint);
    let mut parser = SseParser::new(MAX_MESSAGE_BYTES);
    let mut events = Vec::new();
    let why = loop {
        let chunk = match body.frame().await {
            None => break "event stream ended".to_string(),
            Some(Err(e)) => break format!("event stream failed: {}", rpc.redact(&error_chain(&e))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        if let Err(e) = parser.feed(&chunk, &mut events) {
            break e;
        }
        for ev in events.drain(..) {
            match ev.event.as_str() {
                "endpoint" => match endpoint.take() {
                    Some(tx) => {
                        let _ = tx.send(ev.data);
                    }
                    None => tracing::debug!(server = %rpc.server(), "upstream sent a second endpoint event; ignored"),
                },
                "message" if !ev.data.trim().is_empty() => match serde_json::from_str::<Value>(&ev.data) {
                    Ok(msg) => rpc.dispatch(msg),
                    Err(_) => {
                        tracing::debug!(server = %rpc.server(), "upstream sent an event that is not JSON; ignored")
                    }
                },
                _ => {}
            }
        }
    };
    tracing::debug!(server = %rpc.server(), reason = %why, "upstream event stream closed");
    rpc.close(UpstreamError::Unavailable(why));
}

/// Sends queued messages (replies, cancellations), one at a time, each bounded.
async fn send_queued(inner: Arc<Inner>, mut outbound: mpsc::UnboundedReceiver<Value>) {
    while let Some(message) = outbound.recv().await {
        match tokio::time::timeout(inner.timeout, inner.post(&message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(server = %inner.rpc.server(), error = %e, "could not send a message upstream")
            }
            Err(_) => tracing::debug!(server = %inner.rpc.server(), "sending a message upstream timed out"),
        }
    }
}

/// The `endpoint` event's url resolved against the stream's url (RFC 3986 §5.2, enough of
/// it: absolute, network-path, absolute-path and relative-path references). An endpoint on
/// another origin is refused: we would be sending our credentials there.
pub(crate) fn resolve_endpoint(base: &Uri, endpoint: &str) -> Result<Uri, UpstreamError> {
    let shown: String = endpoint.chars().take(200).collect();
    let refuse = |why: &str| UpstreamError::Protocol(format!("endpoint {shown:?} {why}"));
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let resolved = if endpoint.contains("://") {
        endpoint.to_string()
    } else if let Some(rest) = endpoint.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if endpoint.starts_with('/') {
        format!("{scheme}://{authority}{endpoint}")
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{endpoint}")
    };
    let uri: Uri = resolved.parse().map_err(|_| refuse("is not a valid url"))?;
    if origin(&uri) != origin(base) {
        return Err(refuse("is on another origin than the server's url"));
    }
    Ok(uri)
}

/// (scheme, host, port) with the scheme's default port filled in.
fn origin(uri: &Uri) -> (String, String, u16) {
    let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
    let default = if scheme == "https" { 443 } else { 80 };
    let host = uri.host().unwrap_or("").to_ascii_lowercase();
    (scheme, host, uri.port_u16().unwrap_or(default))
}

// === impl SseParser ===

impl SseParser {
    /// A parser that refuses an event (or a line) longer than `max` bytes.
    pub(crate) fn new(max: usize) -> SseParser {
        SseParser { buf: Vec::new(), event: String::new(), data: String::new(), skip_lf: false, max }
    }

    /// Feeds a chunk; complete events are pushed to `out`. Err (with text for
    /// [`UpstreamError::Protocol`]) when an event grows past the limit.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            if self.skip_lf && start < self.buf.len() {
                if self.buf[start] == b'\n' {
                    start += 1;
                }
                self.skip_lf = false;
            }
            let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n' || b == b'\r') else { break };
            let end = start + pos;
            self.skip_lf = self.buf[end] == b'\r';
            let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
            start = end + 1;
            self.line(&line, out);
            if self.data.len() > self.max {
                return Err(format!("an event larger than {} bytes", self.max));
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > self.max {
            return Err(format!("an event larger than {} bytes", self.max));
        }
        Ok(())
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                self.data.pop(); // the newline after the last data line
                let event = if self.event.is_empty() { "message".to_string() } else { std::mem::take(&mut self.event) };
                out.push(SseEvent { event, data: std::mem::take(&mut self.data) });
            }
            self.event.clear();
            self.data.clear();
            return;
        }
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            _ => {}
        }
    }
}
