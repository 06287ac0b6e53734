//! Protocol 2026-07-28 on the client side: stateless requests. No `initialize`, no
//! `Mcp-Session-Id`: every request carries its protocol version, client info and client
//! capabilities in `params._meta`, its method (and name or URI) in `Mcp-Method` / `Mcp-Name`
//! headers, and the grant token in `Authorization` like any other request.
//!
//! A stateless request runs through the very handlers a session's request does
//! ([`super::handler::dispatch`]): the same `tools/list` filtering, `tools/call` decision,
//! quotas and records, the same resource and prompt relay. What differs is the session they are
//! given: one made for the request ([`Session::stateless`]), never stored, whose reference
//! (`req-<16 hex>`) ties the request's records together and to nothing else. The replies get
//! what the revision adds (`resultType`, `_meta` serverInfo, `ttlMs` / `cacheScope` on lists and
//! reads, resource "not found" as -32602).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tracing::debug;

use super::State;
use super::handler::{Body, Ctx, SUPPORTED, call_streaming, capped_response, dispatch, empty, json_response, sse_event};
use super::jsonrpc::{self, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, Message, RESOURCE_NOT_FOUND};
use super::relay;
use super::session::{Listen, Session};

/// The stateless revision.
pub const MODERN: &str = "2026-07-28";
/// `_meta` keys of a 2026-07-28 request (`…/clientInfo` is for display only and not read) and
/// result.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// 2026-07-28: HTTP headers that disagree with the body, or a required one missing (HTTP 400).
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: a protocol version the server does not speak (HTTP 400, with the supported ones).
pub const UNSUPPORTED_VERSION: i64 = -32022;
const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";
const NAME_HEADER: &str = "mcp-name";

/// The methods a stateless request may call. `ping`, `logging/setLevel` and
/// `resources/(un)subscribe` are not part of 2026-07-28 (HTTP 404, -32601).
const METHODS: [&str; 10] = [
    "server/discover",
    "subscriptions/listen",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "prompts/list",
    "prompts/get",
    "completion/complete",
];

/// Results that 2026-07-28 makes cacheable (`ttlMs`, `cacheScope`).
const CACHEABLE: [&str; 5] = ["tools/list", "resources/list", "resources/templates/list", "prompts/list", "resources/read"];

/// Whether a message that came without `Mcp-Session-Id` is a 2026-07-28 request: its `_meta`
/// names a protocol version, or its `MCP-Protocol-Version` header is not a handshake-era one,
/// or it is `server/discover` (which no earlier revision has).
pub(super) fn is_stateless(headers: &HeaderMap, m: &Message) -> bool {
    match m {
        Message::Request { method, params, .. } => {
            method == "server/discover"
                || params.pointer("/_meta").and_then(|meta| meta.get(META_VERSION)).is_some()
                || header(headers, VERSION_HEADER).is_some_and(|v| !SUPPORTED.contains(&v))
        }
        _ => header(headers, VERSION_HEADER) == Some(MODERN),
    }
}

/// The versions `server/discover` advertises and an unsupported version is told, oldest first.
fn supported() -> Vec<&'static str> {
    let mut v = SUPPORTED.to_vec();
    v.push(MODERN);
    v
}

/// What an error message quotes of client input: at most 40 characters.
fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// One stateless request, answered.
pub(super) async fn handle(cx: &Ctx, headers: &HeaderMap, m: Message) -> Response {
    let (id, method, params) = match m {
        Message::Request { id, method, params } => (id, method, params),
        // 2026-07-28 defines no client notification over HTTP (closing the response stream is
        // the cancellation); one is accepted and goes nowhere.
        Message::Notification { .. } => return empty(StatusCode::ACCEPTED),
        Message::Response { id, .. } => {
            let e = jsonrpc::error(id, INVALID_REQUEST, "a 2026-07-28 client sends no responses: the gateway sends it no requests");
            return json_response(StatusCode::BAD_REQUEST, &e);
        }
    };
    let bad = |code: i64, message: String, data: Option<Value>| json_response(StatusCode::BAD_REQUEST, &jsonrpc::error_with_data(id.clone(), code, message, data));
    let meta = params.get("_meta");
    let version = meta.and_then(|m| m.get(META_VERSION)).and_then(Value::as_str);
    // The headers mirror the body so that intermediaries can route on them; a request whose
    // headers say something else than its body is refused, before anything looks at either.
    let Some(version) = version else {
        return bad(HEADER_MISMATCH, format!("Header mismatch: params._meta has no {META_VERSION}"), None);
    };
    match header(headers, VERSION_HEADER) {
        Some(h) if h == version => {}
        Some(h) => return bad(HEADER_MISMATCH, format!("Header mismatch: MCP-Protocol-Version {:?} is not the body's {:?}", short(h), short(version)), None),
        None => return bad(HEADER_MISMATCH, "Header mismatch: MCP-Protocol-Version header missing".into(), None),
    }
    if version != MODERN {
        // A handshake-era version without a session, or one we do not speak: the client picks
        // another from `supported` (a handshake-era one means initialize).
        let data = json!({ "supported": supported(), "requested": short(version) });
        return bad(UNSUPPORTED_VERSION, format!("Unsupported protocol version: {}", short(version)), Some(data));
    }
    match header(headers, METHOD_HEADER) {
        Some(h) if h == method => {}
        Some(h) => return bad(HEADER_MISMATCH, format!("Header mismatch: Mcp-Method {:?} is not the body's method", short(h)), None),
        None => return bad(HEADER_MISMATCH, "Header mismatch: Mcp-Method header missing".into(), None),
    }
    let name_key = match method.as_str() {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    if let Some(key) = name_key
        && let Some(body) = params.get(key).and_then(Value::as_str)
    {
        match header(headers, NAME_HEADER).map(decode) {
            Some(Some(h)) if h == body => {}
            Some(_) => return bad(HEADER_MISMATCH, format!("Header mismatch: Mcp-Name is not the body's params.{key}"), None),
            None => return bad(HEADER_MISMATCH, "Header mismatch: Mcp-Name header missing".into(), None),
        }
    }
    if !METHODS.contains(&method.as_str()) {
        let e = jsonrpc::error(id, METHOD_NOT_FOUND, format!("method not found: {}", short(&method)));
        return json_response(StatusCode::NOT_FOUND, &e);
    }
    if method == "server/discover" {
        return json_response(StatusCode::OK, &jsonrpc::result(id, discover(cx)));
    }
    let capabilities = meta.and_then(|m| m.get(META_CAPABILITIES)).cloned().unwrap_or_else(|| json!({}));
    if !capabilities.is_object() {
        return bad(INVALID_PARAMS, format!("invalid params: {META_CAPABILITIES} must be an object"), None);
    }
    if method == "subscriptions/listen" {
        return listen(cx, id, &params).await;
    }
    let grant = cx.grant();
    let session = Session::stateless(&grant.name, cx.token, cx.sign_in.clone(), cx.endpoint().map(str::to_string), MODERN, capabilities);
    debug!(grant = %grant.name, request = %session.reference, method, "stateless request");
    let accepts_sse = headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    if method == "tools/call" && accepts_sse {
        let token = params.pointer("/_meta/progressToken").cloned();
        return call_streaming(cx.clone(), session, id, params, token, true).await;
    }
    let m = Message::Request { id, method: method.clone(), params };
    match dispatch(cx, &session, m).await {
        Some(mut reply) => {
            shape(&mut reply, &method);
            capped_response(&cx.state, &reply)
        }
        None => empty(StatusCode::ACCEPTED),
    }
}

type Response = http::Response<Body>;

/// Resource subscriptions one `subscriptions/listen` may ask for.
const MAX_LISTEN_URIS: usize = 64;
/// How often a quiet listen stream gets a comment (and its session is kept from the idle sweep).
const KEEP_ALIVE: Duration = Duration::from_secs(25);

/// `subscriptions/listen`: a long-lived event stream of the notifications the client opted in
/// to, each tagged with the request's id as `io.modelcontextprotocol/subscriptionId`, after
/// `notifications/subscriptions/acknowledged` saying what is honoured. Behind it is a session
/// of the grant held in the table (so commits and upstreams reach it the way they reach a GET
/// stream), whose id is never shown: it ends with the stream, and a commit that revokes the
/// token ends the stream. Resource subscriptions are decided like `resources/subscribe` (a URI
/// the caller may not read is just not honoured).
async fn listen(cx: &Ctx, id: Value, params: &Value) -> Response {
    let wanted = params.get("notifications").cloned().unwrap_or_else(|| json!({}));
    let flag = |k: &str| wanted.get(k).and_then(Value::as_bool) == Some(true);
    let grant = cx.grant();
    let session = cx.state.sessions.open(&grant.name, cx.token, cx.sign_in.clone(), cx.endpoint().map(str::to_string), MODERN);
    let closer = Closer { state: cx.state.clone(), id: session.id.clone() };
    let filter = Listen { id: id.clone(), tools: flag("toolsListChanged"), prompts: flag("promptsListChanged"), resources: flag("resourcesListChanged") };
    session.set_listen(filter.clone());
    let rx = session.open_stream();
    let mut honoured = Vec::new();
    let uris = wanted.get("resourceSubscriptions").and_then(Value::as_array).cloned().unwrap_or_default();
    for uri in uris.iter().filter_map(Value::as_str).take(MAX_LISTEN_URIS) {
        let reply = relay::subscribe(cx, &session, json!(0), &json!({ "uri": uri }), true).await;
        if reply.get("result").is_some() {
            honoured.push(uri.to_string());
        }
    }
    debug!(grant = %grant.name, session = %session.reference, "subscriptions/listen opened");
    let mut notifications = json!({});
    for (key, on) in [("toolsListChanged", filter.tools), ("promptsListChanged", filter.prompts), ("resourcesListChanged", filter.resources)] {
        if on {
            notifications[key] = json!(true);
        }
    }
    if !honoured.is_empty() {
        notifications["resourceSubscriptions"] = json!(honoured);
    }
    let ack = json!({ "jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                      "params": { "notifications": notifications, "_meta": { "io.modelcontextprotocol/subscriptionId": id } } });
    let first = futures_util::stream::once(async move { Ok::<_, Infallible>(Frame::data(sse_event(&ack))) });
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    let events = futures_util::stream::unfold((rx, tick, session, closer), |(mut rx, mut tick, session, closer)| async move {
        let frame = tokio::select! {
            m = rx.recv() => Frame::data(sse_event(&m?)),
            _ = tick.tick() => {
                session.touch();
                Frame::data(Bytes::from_static(b": keep-alive\n\n"))
            }
        };
        Some((Ok::<_, Infallible>(frame), (rx, tick, session, closer)))
    });
    use futures_util::StreamExt;
    let mut resp = http::Response::new(BodyExt::boxed(StreamBody::new(first.chain(events))));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Ends the session behind a listen stream when the stream is dropped (the client went away).
struct Closer {
    state: Arc<State>,
    id: String,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.state.sessions.close(&self.id);
    }
}

/// `Mcp-Name` as the client meant it: plain, or `=?base64?…?=` (UTF-8); `None` if the sentinel
/// holds no valid base64 of UTF-8.
fn decode(h: &str) -> Option<String> {
    use base64::Engine;
    match h.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        None => Some(h.to_string()),
        Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).ok().and_then(|b| String::from_utf8(b).ok()),
    }
}

/// The `server/discover` result: the versions spoken, what this endpoint offers, and who
/// answers.
fn discover(cx: &Ctx) -> Value {
    let instructions = match cx.endpoint() {
        None => "Tools and prompts from several servers, named <server>__<name>; resources under their own URIs. Every call is checked against policy and recorded.",
        Some(_) => "Every call is checked against policy and recorded.",
    };
    json!({
        "resultType": "complete",
        "supportedVersions": supported(),
        "capabilities": {
            "tools": { "listChanged": true },
            "resources": { "subscribe": true, "listChanged": true },
            "prompts": { "listChanged": true },
            "completions": {},
        },
        "instructions": instructions,
        // What one caller sees depends on its grant and the active commit: never share it.
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": { META_SERVER_INFO: server_info() },
    })
}

fn server_info() -> Value {
    json!({ "name": "gatehouse", "version": env!("CARGO_PKG_VERSION") })
}

/// A reply of a stateless request as 2026-07-28 has it: a result carries `resultType` (kept
/// when the upstream set it), the gateway's serverInfo, and for lists and reads `ttlMs` (0: the
/// next commit may change it) and `cacheScope: private` (it is one grant's view); a resource
/// the caller may not read, or that does not exist, is -32602.
pub(super) fn shape(reply: &mut Value, method: &str) {
    if let Some(Value::Object(result)) = reply.get_mut("result") {
        result.entry("resultType").or_insert_with(|| json!("complete"));
        if CACHEABLE.contains(&method) {
            result.insert("ttlMs".into(), json!(0));
            result.insert("cacheScope".into(), json!("private"));
        }
        let meta = result.entry("_meta").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            meta.insert(META_SERVER_INFO.into(), server_info());
        }
    } else if let Some(error) = reply.get_mut("error")
        && error.get("code").and_then(Value::as_i64) == Some(RESOURCE_NOT_FOUND)
    {
        error["code"] = json!(INVALID_PARAMS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn what_is_stateless() {
        let req = |method: &str, params: Value| Message::Request { id: json!(1), method: method.into(), params };
        let meta = json!({ "_meta": { META_VERSION: "2026-07-28" } });
        assert!(is_stateless(&HeaderMap::new(), &req("tools/list", meta.clone())));
        assert!(is_stateless(&HeaderMap::new(), &req("server/discover", json!({}))));
        assert!(is_stateless(&headers(&[("mcp-protocol-version", "2027-01-01")]), &req("tools/list", json!({}))));
        assert!(!is_stateless(&headers(&[("mcp-protocol-version", "2025-11-25")]), &req("tools/list", json!({}))));
        assert!(!is_stateless(&HeaderMap::new(), &req("tools/list", json!({ "_meta": { "progressToken": 1 } }))));
    }

    #[test]
    fn names_decode_from_the_base64_sentinel() {
        assert_eq!(decode("echo").as_deref(), Some("echo"));
        assert_eq!(decode("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(), Some("Hello, 世界"));
        assert_eq!(decode("=?base64?not base64!?="), None);
    }

    #[test]
    fn replies_get_what_the_revision_adds() {
        let mut r = json!({ "jsonrpc": "2.0", "id": 1, "result": { "tools": [] } });
        shape(&mut r, "tools/list");
        assert_eq!(r["result"]["resultType"], "complete");
        assert_eq!((r["result"]["ttlMs"].as_i64(), r["result"]["cacheScope"].as_str()), (Some(0), Some("private")));
        assert_eq!(r["result"]["_meta"][META_SERVER_INFO]["name"], "gatehouse");
        let mut r = json!({ "jsonrpc": "2.0", "id": 1, "result": { "content": [], "resultType": "input_required" } });
        shape(&mut r, "tools/call");
        assert_eq!(r["result"]["resultType"], "input_required");
        assert!(r["result"].get("ttlMs").is_none());
        let mut r = jsonrpc::error(json!(2), RESOURCE_NOT_FOUND, "Resource not found");
        shape(&mut r, "resources/read");
        assert_eq!(r["error"]["code"], INVALID_PARAMS);
    }
}
