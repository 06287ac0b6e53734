//! Unit tests of the transport-independent parts: SSE parsing, endpoint resolution,
//! multiplexing, redaction. The transports themselves are tested against real peers in
//! tests/it/upstream.rs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::rpc::{Rpc, redact, secret_strings};
use super::sse::{SseEvent, SseParser, resolve_endpoint};
use super::{UpstreamError, UpstreamEvent, negotiated};
use crate::gateway::secrets::Bound;

fn events(chunks: &[&[u8]]) -> Vec<(String, String)> {
    let mut p = SseParser::new(1 << 20);
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, &mut out).unwrap();
    }
    out.into_iter().map(|SseEvent { event, data }| (event, data)).collect()
}

fn ev(event: &str, data: &str) -> (String, String) {
    (event.to_string(), data.to_string())
}

#[test]
fn sse_events_default_to_message_and_join_data_lines() {
    assert_eq!(
        events(&[b"data: {\"a\":1}\n\nevent: endpoint\ndata: /m?s=1\n\n: comment\ndata: x\ndata: y\nid: 7\n\n"]),
        vec![ev("message", "{\"a\":1}"), ev("endpoint", "/m?s=1"), ev("message", "x\ny")]
    );
}

#[test]
fn sse_line_endings_may_be_split_across_chunks() {
    assert_eq!(events(&[b"data: a\r", b"\n\r", b"\ndata: b\r\r"]), vec![ev("message", "a"), ev("message", "b")]);
    assert_eq!(events(&[b"da", b"ta:no-space\n", b"\n"]), vec![ev("message", "no-space")]);
}

#[test]
fn sse_events_without_data_are_not_dispatched() {
    // Priming events (id and retry only) and a lone event name carry nothing.
    assert_eq!(events(&[b"id: 1\nretry: 3000\n\nevent: ping\n\n"]), vec![]);
    assert_eq!(events(&[b"data\n\n"]), vec![ev("message", "")]);
}

#[test]
fn sse_refuses_oversized_events() {
    let mut p = SseParser::new(16);
    let mut out = Vec::new();
    assert!(p.feed(b"data: 0123456789abcdefXYZ", &mut out).is_err());
    let mut p = SseParser::new(16);
    assert!(p.feed(b"data: 0123456789\ndata: abcdefgh\n", &mut out).is_err());
}

#[test]
fn endpoints_resolve_against_the_url_and_stay_on_its_origin() {
    let base: http::Uri = "http://127.0.0.1:3102/sse".parse().unwrap();
    let ok = |e: &str| resolve_endpoint(&base, e).unwrap().to_string();
    assert_eq!(ok("/message?sessionId=abc"), "http://127.0.0.1:3102/message?sessionId=abc");
    assert_eq!(ok("message?sessionId=abc"), "http://127.0.0.1:3102/message?sessionId=abc");
    assert_eq!(ok("http://127.0.0.1:3102/x"), "http://127.0.0.1:3102/x");
    let nested: http::Uri = "https://example.com/mcp/sse".parse().unwrap();
    assert_eq!(resolve_endpoint(&nested, "messages").unwrap().to_string(), "https://example.com/mcp/messages");
    assert_eq!(
        resolve_endpoint(&nested, "https://EXAMPLE.com:443/m").unwrap().to_string(),
        "https://EXAMPLE.com:443/m"
    );
    for bad in ["http://evil.example/m", "//evil.example/m", "https://127.0.0.1:3102/m", "http://127.0.0.1:1/m"] {
        let e = resolve_endpoint(&base, bad).unwrap_err();
        assert!(matches!(e, UpstreamError::Protocol(_)), "{bad}: {e}");
    }
}

#[test]
fn versions_outside_the_accepted_list_are_refused() {
    assert_eq!(negotiated(&json!({"protocolVersion": "2025-06-18"}), super::HTTP_VERSIONS).unwrap(), "2025-06-18");
    assert!(negotiated(&json!({"protocolVersion": "2024-11-05"}), super::HTTP_VERSIONS).is_err());
    assert!(negotiated(&json!({}), super::HTTP_VERSIONS).is_err());
}

#[test]
fn credential_values_and_their_tokens_are_scrubbed() {
    let creds = Bound {
        headers: vec![(
            http::HeaderName::from_static("authorization"),
            http::HeaderValue::from_static("Bearer sk-live-123456789"),
        )],
        env: vec![("API_KEY".into(), "envsecret42".into())],
    };
    let secrets = secret_strings(&creds);
    assert_eq!(
        redact("bad key sk-live-123456789; header Bearer sk-live-123456789; env envsecret42", &secrets),
        "bad key [redacted]; header [redacted]; env [redacted]"
    );
    // Short words (the scheme) are left alone.
    assert_eq!(redact("Bearer realm", &secrets), "Bearer realm");
}

fn rpc() -> (Arc<Rpc>, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Rpc::new("test", tx, vec!["hunter2-secret".into()])), rx)
}

#[tokio::test]
async fn responses_reach_their_waiters_by_id() {
    let (rpc, _out) = rpc();
    let mut a = rpc.start("tools/list", Value::Null, None).unwrap();
    let mut b = rpc.start("tools/call", json!({"name": "x"}), None).unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.message["params"], json!({}));
    rpc.dispatch(json!([
        {"jsonrpc": "2.0", "id": b.id, "error": {"code": -32602, "message": "no hunter2-secret here", "data": ["hunter2-secret"]}},
        {"jsonrpc": "2.0", "id": a.id, "result": {"tools": []}},
    ]));
    assert_eq!(a.wait().await.unwrap(), json!({"tools": []}));
    match b.wait().await.unwrap_err() {
        UpstreamError::Rpc { code, message, data } => {
            assert_eq!(code, -32602);
            assert_eq!(message, "no [redacted] here");
            assert_eq!(data, Some(json!(["[redacted]"])));
        }
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn progress_is_routed_with_the_callers_token() {
    let (rpc, _out) = rpc();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let call =
        rpc.start("tools/call", json!({"_meta": {"progressToken": "client-token"}}), Some((tx, json!(7)))).unwrap();
    let ours = call.message["params"]["_meta"]["progressToken"].clone();
    assert_ne!(ours, json!("client-token"));
    rpc.dispatch(json!({"jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": ours, "progress": 1, "total": 2}}));
    rpc.dispatch(json!({"jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": "gatehouse-99999", "progress": 1}}));
    assert_eq!(rx.recv().await.unwrap(), json!({"progressToken": 7, "progress": 1, "total": 2}));
    assert!(rx.try_recv().is_err());
    // Without a progress channel, a client's token is not forwarded.
    let plain = rpc.start("tools/call", json!({"_meta": {"progressToken": "client-token", "k": 1}}), None).unwrap();
    assert_eq!(plain.message["params"]["_meta"], json!({"k": 1}));
    drop(call);
}

#[tokio::test]
async fn a_dropped_call_sends_cancelled_and_a_finished_one_does_not() {
    let (rpc, mut out) = rpc();
    let call = rpc.start("tools/call", json!({}), None).unwrap();
    let id = call.id;
    drop(call);
    assert_eq!(
        out.try_recv().unwrap(),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": id, "reason": "the gateway abandoned the request"}})
    );
    let mut done = rpc.start("tools/call", json!({}), None).unwrap();
    rpc.dispatch(json!({"jsonrpc": "2.0", "id": done.id, "result": {}}));
    done.wait().await.unwrap();
    drop(done);
    let mut disarmed = rpc.start("tools/call", json!({}), None).unwrap();
    disarmed.disarm();
    drop(disarmed);
    let init = rpc.start("initialize", json!({}), None).unwrap();
    drop(init);
    assert!(out.try_recv().is_err());
}

#[tokio::test]
async fn upstream_requests_are_answered() {
    let (rpc, mut out) = rpc();
    rpc.dispatch(json!({"jsonrpc": "2.0", "id": "s1", "method": "ping"}));
    rpc.dispatch(json!({"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage", "params": {}}));
    rpc.dispatch(json!({"jsonrpc": "2.0", "id": 6, "method": "tasks/list", "params": {}}));
    assert_eq!(out.try_recv().unwrap(), json!({"jsonrpc": "2.0", "id": "s1", "result": {}}));
    let refused = out.try_recv().unwrap();
    assert_eq!((refused["id"].clone(), refused["error"]["code"].clone()), (json!(5), json!(-32603)), "no call in progress to relay it to");
    assert_eq!(out.try_recv().unwrap()["error"]["code"], json!(-32601));
}

#[tokio::test]
async fn client_requests_go_to_the_one_relaying_call_or_are_refused() {
    let (rpc, mut out) = rpc();
    let (tx_a, mut rx_a) = tokio::sync::mpsc::unbounded_channel();
    let a = rpc.start_relaying("tools/call", json!({}), None, Some(tx_a)).unwrap();
    let _listing = rpc.start("tools/list", json!({}), None).unwrap();
    // The only relaying call: it gets the request, and its answer goes back under the upstream's id.
    rpc.dispatch(json!({"jsonrpc": "2.0", "id": "up-1", "method": "roots/list"}));
    let request = rx_a.try_recv().unwrap();
    assert_eq!(request.method, "roots/list");
    request.reply.send(Ok(json!({"roots": []}))).unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), out.recv()).await.unwrap().unwrap();
    assert_eq!(answer, json!({"jsonrpc": "2.0", "id": "up-1", "result": {"roots": []}}));
    // Two relaying calls: on the shared channel it is refused; on a call's own stream it is that call's.
    let (tx_b, mut rx_b) = tokio::sync::mpsc::unbounded_channel();
    let b = rpc.start_relaying("tools/call", json!({}), None, Some(tx_b)).unwrap();
    rpc.dispatch(json!({"jsonrpc": "2.0", "id": 2, "method": "elicitation/create", "params": {}}));
    assert_eq!(out.try_recv().unwrap()["error"]["code"], json!(-32603));
    rpc.dispatch_from(json!({"jsonrpc": "2.0", "id": 3, "method": "sampling/createMessage", "params": {}}), Some(b.id));
    assert_eq!(rx_b.try_recv().unwrap().method, "sampling/createMessage");
    assert!(rx_a.try_recv().is_err());
    // A request on the stream of a call that does not relay is refused, never given to another.
    rpc.dispatch_from(json!({"jsonrpc": "2.0", "id": 4, "method": "roots/list"}), Some(_listing.id));
    assert_eq!(out.try_recv().unwrap()["error"]["code"], json!(-32603));
    assert!(rx_a.try_recv().is_err() && rx_b.try_recv().is_err());
    drop((a, b));
}

#[tokio::test]
async fn closing_fails_pending_and_later_requests_and_tells_subscribers() {
    let (rpc, _out) = rpc();
    let mut events = rpc.subscribe();
    let mut call = rpc.start("tools/call", json!({}), None).unwrap();
    rpc.dispatch(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
    rpc.close(UpstreamError::Unavailable("gone".into()));
    rpc.close(UpstreamError::Unavailable("twice".into()));
    assert!(matches!(call.wait().await, Err(UpstreamError::Unavailable(m)) if m == "gone"));
    assert!(rpc.start("tools/list", json!({}), None).is_err());
    assert_eq!(events.recv().await.unwrap(), UpstreamEvent::ToolsListChanged);
    assert_eq!(events.recv().await.unwrap(), UpstreamEvent::Closed);
    assert!(events.try_recv().is_err());
}

#[test]
fn a_listing_started_before_list_changed_is_not_cached() {
    let (rpc, _out) = rpc();
    let (_, generation) = rpc.cached_tools();
    rpc.dispatch(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
    rpc.store_tools(generation, Arc::new(vec![]));
    assert!(rpc.cached_tools().0.is_none());
    let (_, generation) = rpc.cached_tools();
    rpc.store_tools(generation, Arc::new(vec![json!({"name": "a"})]));
    assert_eq!(rpc.cached_tools().0.unwrap().len(), 1);
}

#[tokio::test]
async fn stdio_lines_are_capped() {
    let input: &[u8] = b"short\n0123456789abcdef\nlast";
    let mut r = tokio::io::BufReader::with_capacity(4, input);
    let mut line = Vec::new();
    let read = super::stdio::read_line_capped;
    assert_eq!(read(&mut r, &mut line, 10).await.unwrap(), (6, false));
    assert_eq!(line, b"short\n");
    line.clear();
    let (_, cut) = read(&mut r, &mut line, 10).await.unwrap();
    assert!(cut);
    assert_eq!(line.len(), 10);
}

#[test]
fn error_text_is_lowercase_and_durations_read_like_the_repository() {
    assert_eq!(UpstreamError::Timeout(Duration::from_millis(500)).to_string(), "upstream timed out after 500ms");
    assert_eq!(UpstreamError::Timeout(Duration::from_secs(30)).to_string(), "upstream timed out after 30s");
    assert_eq!(UpstreamError::Timeout(Duration::from_millis(1500)).to_string(), "upstream timed out after 1.5s");
}
