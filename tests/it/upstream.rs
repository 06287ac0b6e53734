//! The upstream client against real peers: rmcp (the official Rust SDK) over Streamable HTTP,
//! the example upstream and small shell servers over stdio, a minimal 2024-11-05 SSE server,
//! and upstreams that hang, refuse, lie or die.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse::gateway::secrets::Bound;
use gatehouse::policy::snapshot::{Credentials, Server, Transport};
use gatehouse::gateway::upstream::{Upstream, UpstreamError, UpstreamEvent, http_client};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::rmcp_peer::rmcp;

const TOKEN: &str = "Bearer upstream-secret-0123456789";

// --- helpers ---

/// A server with `protocol: handshake`: these tests are about the handshake-era client (sessions,
/// GET streams, re-initialisation); `protocol: auto` (2026-07-28 when offered) has its own.
fn server(transport: Transport, timeout: Duration) -> Arc<Server> {
    let mut s = auto_server(transport, timeout);
    Arc::get_mut(&mut s).unwrap().handshake_only = true;
    s
}

fn auto_server(transport: Transport, timeout: Duration) -> Arc<Server> {
    Arc::new(Server {
        name: "up".into(),
        file: "servers/up.yaml".into(),
        description: None,
        transport,
        credentials: Credentials::default(),
        policy: None,
        timeout,
        supplier: None,
        tools: BTreeMap::new(),
        pin_required: false,
        handshake_only: false,
    })
}

fn http_server(url: String, timeout: Duration) -> Arc<Server> {
    server(Transport::StreamableHttp { url }, timeout)
}

fn creds() -> Arc<Bound> {
    let mut v = HeaderValue::from_static(TOKEN);
    v.set_sensitive(true);
    Arc::new(Bound { headers: vec![(HeaderName::from_static("authorization"), v)], env: vec![] })
}

async fn connect(server: Arc<Server>) -> Result<Upstream, UpstreamError> {
    Upstream::connect(server, creds(), http_client()).await
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {result}"))
}

fn names(tools: &[Value]) -> Vec<&str> {
    tools.iter().map(|t| t["name"].as_str().unwrap()).collect()
}

type Body = BoxBody<Bytes, Infallible>;

/// Serves `handle` with hyper on 127.0.0.1:0 until the test's runtime ends.
async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

#[tokio::test]
async fn rmcp_streamable_http_lists_and_calls_tools() {
    let peer = rmcp(true, StatusCode::NOT_FOUND).await;
    let up = connect(http_server(peer.url.clone(), Duration::from_secs(5))).await.unwrap();
    assert_eq!(up.protocol_version(), "2025-11-25");
    assert!(up.initialize_result()["capabilities"]["tools"].is_object());

    let tools = up.list_tools().await.unwrap();
    for t in ["echo", "add", "sleep", "whoami", "count", "change"] {
        assert!(names(&tools).contains(&t), "{t} missing from {:?}", names(&tools));
    }
    assert!(Arc::ptr_eq(&tools, &up.list_tools().await.unwrap()), "the list is cached");

    let r = up.request("tools/call", json!({"name": "add", "arguments": {"a": 2, "b": 40}}), None).await.unwrap();
    assert_eq!(text(&r), "42");
    let r = up.request("tools/call", json!({"name": "whoami", "arguments": {}}), None).await.unwrap();
    let seen: Value = serde_json::from_str(text(&r)).unwrap();
    assert_eq!(seen, json!({"authorization": TOKEN, "protocol": "2025-11-25"}));

    match up.request("tools/call", json!({"name": "nope", "arguments": {}}), None).await {
        Err(UpstreamError::Rpc { code, message, .. }) => assert_eq!(code, -32602, "{message}"),
        other => panic!("expected an rpc error, got {other:?}"),
    }
    match up.request("no/such/method", json!({}), None).await {
        Err(UpstreamError::Rpc { code: -32601, .. }) => {}
        other => panic!("expected -32601, got {other:?}"),
    }

    // Concurrent requests on one session.
    let calls =
        (0..8).map(|i| up.request("tools/call", json!({"name": "echo", "arguments": {"text": format!("m{i}")}}), None));
    let results = futures_util::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(text(&r.unwrap()), format!("m{i}"));
    }
    up.shutdown().await;
    assert!(up.is_closed());
    assert!(matches!(up.request("tools/list", json!({}), None).await, Err(UpstreamError::Unavailable(_))));
}

#[tokio::test]
async fn rmcp_stateless_json_answers() {
    let peer = rmcp(false, StatusCode::NOT_FOUND).await;
    let up = connect(http_server(peer.url.clone(), Duration::from_secs(5))).await.unwrap();
    let r = up.request("tools/call", json!({"name": "echo", "arguments": {"text": "plain json"}}), None).await.unwrap();
    assert_eq!(text(&r), "plain json");
    assert!(names(&up.list_tools().await.unwrap()).contains(&"echo"));
}

#[tokio::test]
async fn rmcp_progress_reaches_the_caller_with_its_token() {
    let peer = rmcp(true, StatusCode::NOT_FOUND).await;
    let up = connect(http_server(peer.url.clone(), Duration::from_secs(5))).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = up.request("tools/call", json!({"name": "count", "arguments": {}}), Some((tx, json!("client-7")))).await;
    assert_eq!(text(&r.unwrap()), "counted");
    let mut steps = Vec::new();
    while let Ok(p) = rx.try_recv() {
        assert_eq!(p["progressToken"], json!("client-7"));
        steps.push(p["progress"].as_f64().unwrap());
    }
    assert_eq!(steps, vec![1.0, 2.0, 3.0]);
}

#[tokio::test]
async fn rmcp_timeout_cancels_and_the_session_goes_on() {
    let peer = rmcp(true, StatusCode::NOT_FOUND).await;
    let up = connect(http_server(peer.url.clone(), Duration::from_millis(400))).await.unwrap();
    let start = Instant::now();
    let r = up.request("tools/call", json!({"name": "sleep", "arguments": {"ms": 3000}}), None).await;
    assert!(matches!(r, Err(UpstreamError::Timeout(d)) if d == Duration::from_millis(400)), "{r:?}");
    assert!(start.elapsed() < Duration::from_millis(1400), "{:?}", start.elapsed());
    let deadline = Instant::now() + Duration::from_secs(2);
    while !peer.cancelled.load(Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peer.cancelled.load(Ordering::SeqCst), "the upstream saw the cancellation");
    let r = up.request("tools/call", json!({"name": "echo", "arguments": {"text": "still here"}}), None).await;
    assert_eq!(text(&r.unwrap()), "still here");
}

#[tokio::test]
async fn rmcp_forgotten_session_is_reinitialised_on_404_and_400() {
    for status in [StatusCode::NOT_FOUND, StatusCode::BAD_REQUEST] {
        let peer = rmcp(true, status).await;
        let up = connect(http_server(peer.url.clone(), Duration::from_secs(5))).await.unwrap();
        let r = up.request("tools/call", json!({"name": "echo", "arguments": {"text": "one"}}), None).await;
        assert_eq!(text(&r.unwrap()), "one");
        assert_eq!(peer.sessions_opened.load(Ordering::SeqCst), 1);

        peer.sessions.sessions.write().await.clear();
        let r = up.request("tools/call", json!({"name": "echo", "arguments": {"text": "two"}}), None).await;
        assert_eq!(text(&r.unwrap()), "two", "after a {status} for the old session");
        assert_eq!(peer.sessions_opened.load(Ordering::SeqCst), 2);
        assert!(!up.is_closed());
    }
}

#[tokio::test]
async fn a_lost_get_stream_of_a_forgotten_session_reinitialises_without_a_request() {
    // A restarted upstream: the GET stream ends and its reconnection is answered 400. The
    // listener opens a new session at once, so the upstream's notifications keep arriving
    // (a rug pull's list_changed included) even if no request comes.
    let peer = rmcp(true, StatusCode::BAD_REQUEST).await;
    let up = connect(http_server(peer.url.clone(), Duration::from_secs(5))).await.unwrap();
    assert_eq!(peer.sessions_opened.load(Ordering::SeqCst), 1);
    peer.sessions.sessions.write().await.clear();
    let deadline = Instant::now() + Duration::from_secs(8);
    while peer.sessions_opened.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(peer.sessions_opened.load(Ordering::SeqCst), 2, "re-initialised by the stream listener");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(peer.sessions_opened.load(Ordering::SeqCst), 2, "once, not in a loop");
    let r = up.request("tools/call", json!({"name": "echo", "arguments": {"text": "after"}}), None).await;
    assert_eq!(text(&r.unwrap()), "after");
    assert_eq!(peer.sessions_opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn rmcp_tools_list_changed_drops_the_cache() {
    let peer = rmcp(true, StatusCode::NOT_FOUND).await;
    let up = connect(http_server(peer.url.clone(), Duration::from_secs(5))).await.unwrap();
    let mut events = up.subscribe();
    let before = up.list_tools().await.unwrap();
    up.request("tools/call", json!({"name": "change", "arguments": {}}), None).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(3), events.recv()).await.expect("an event").unwrap();
    assert_eq!(event, UpstreamEvent::ToolsListChanged);
    let after = up.list_tools().await.unwrap();
    assert!(!Arc::ptr_eq(&before, &after), "listed again");
    assert_eq!(names(&before), names(&after));
}

#[tokio::test]
async fn rmcp_offering_2026_is_spoken_to_statelessly() {
    let peer = rmcp(true, StatusCode::NOT_FOUND).await;
    let up = connect(auto_server(Transport::StreamableHttp { url: peer.url.clone() }, Duration::from_secs(5))).await.unwrap();
    assert_eq!(up.protocol_version(), "2026-07-28", "rmcp 3.11 answers server/discover");
    assert!(up.initialize_result()["capabilities"]["tools"].is_object());
    let mut events = up.subscribe();
    let before = up.list_tools().await.unwrap();
    assert!(names(&before).contains(&"add"));
    let r = up.request("tools/call", json!({"name": "add", "arguments": {"a": 2, "b": 40}}), None).await.unwrap();
    assert_eq!(text(&r), "42");
    assert!(r.get("resultType").is_none(), "results come in without the revision's resultType: {r}");
    let r = up.request("tools/call", json!({"name": "whoami", "arguments": {}}), None).await.unwrap();
    let seen: Value = serde_json::from_str(text(&r)).unwrap();
    assert_eq!(seen, json!({"authorization": TOKEN, "protocol": "2026-07-28"}));
    // list changes arrive over subscriptions/listen, in place of the GET stream
    up.request("tools/call", json!({"name": "change", "arguments": {}}), None).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(3), events.recv()).await.expect("an event").unwrap();
    assert_eq!(event, UpstreamEvent::ToolsListChanged);
    assert!(!Arc::ptr_eq(&before, &up.list_tools().await.unwrap()), "listed again");
    up.shutdown().await;
}

// --- stdio ---

fn stdio(command: &[&str], timeout: Duration) -> Arc<Server> {
    server(Transport::Stdio { command: command.iter().map(|s| s.to_string()).collect() }, timeout)
}

fn pid_exists(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

#[tokio::test]
async fn stdio_example_upstream_reads_a_file_and_is_reaped() {
    let cmd = [env!("CARGO_BIN_EXE_gatehouse"), "example-upstream", "files"];
    let up = connect(stdio(&cmd, Duration::from_secs(5))).await.unwrap();
    let tools = up.list_tools().await.unwrap();
    assert!(names(&tools).contains(&"read_file"), "{:?}", names(&tools));
    let r = up
        .request("tools/call", json!({"name": "read_file", "arguments": {"path": "/srv/projects/app/README.md"}}), None)
        .await
        .unwrap();
    assert!(text(&r).contains("# app"), "{r}");
    match up.request("tools/call", json!({"name": "nope", "arguments": {}}), None).await {
        Err(UpstreamError::Rpc { code: -32602, .. }) => {}
        other => panic!("expected -32602, got {other:?}"),
    }

    let pid = up.pid().expect("a child");
    assert!(pid_exists(pid));
    let mut events = up.subscribe();
    let start = Instant::now();
    up.shutdown().await;
    assert!(start.elapsed() < Duration::from_secs(2), "it exits when stdin closes: {:?}", start.elapsed());
    assert!(!pid_exists(pid), "the child is reaped");
    assert_eq!(up.pid(), None);
    assert!(up.is_closed());
    assert_eq!(events.recv().await.unwrap(), UpstreamEvent::Closed);
}

/// A stdio MCP server in sh: answers initialize, and `tools/call` with `$CALL` (sh code that
/// prints the result object, or exits).
fn sh_server(call: &str) -> String {
    format!(
        r#"while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p')
  case "$line" in
    *'"method":"initialize"'*) printf '{{"jsonrpc":"2.0","id":%s,"result":{{"protocolVersion":"2025-06-18","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"sh","version":"0"}}}}}}\n' "$id" ;;
    *'"method":"tools/call"'*) {call} ;;
  esac
done"#
    )
}

#[tokio::test]
async fn stdio_child_gets_only_path_home_lang_and_its_credentials() {
    // The names of the child's environment, as a tool result.
    let script = sh_server(
        r#"names=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' | tr '\n' ' '); printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"%s"}]}}\n' "$id" "$names""#,
    );
    let srv = stdio(&["sh", "-c", &script], Duration::from_secs(5));
    let creds = Arc::new(Bound { headers: vec![], env: vec![("UPSTREAM_TOKEN".into(), "tok-123456789".into())] });
    let up = Upstream::connect(srv, creds, http_client()).await.unwrap();
    assert_eq!(up.protocol_version(), "2025-06-18");
    let r = up.request("tools/call", json!({"name": "env", "arguments": {}}), None).await.unwrap();
    let child: Vec<&str> = text(&r).split_whitespace().collect();
    // What sh itself adds.
    let allowed = ["PATH", "HOME", "LANG", "UPSTREAM_TOKEN", "PWD", "OLDPWD", "SHLVL", "_"];
    assert!(child.contains(&"UPSTREAM_TOKEN") && child.contains(&"PATH"), "{child:?}");
    for name in &child {
        assert!(allowed.contains(name), "{name} leaked into the child: {child:?}");
    }
    // Make sure the check means something: this process has variables of its own (cargo sets
    // CARGO_*; a daemon would have GATEHOUSE_SECRET_*), and none of them reached the child.
    let ours: Vec<String> = std::env::vars().map(|(k, _)| k).filter(|k| !allowed.contains(&k.as_str())).collect();
    assert!(!ours.is_empty());
    assert!(ours.iter().all(|k| !child.contains(&k.as_str())));
    up.shutdown().await;
}

#[tokio::test]
async fn stdio_child_dying_mid_request_fails_it() {
    let script = sh_server("echo 'this is not json'; exit 3");
    let up = connect(stdio(&["sh", "-c", &script], Duration::from_secs(5))).await.unwrap();
    let mut events = up.subscribe();
    let start = Instant::now();
    let r = up.request("tools/call", json!({"name": "x", "arguments": {}}), None).await;
    assert!(matches!(r, Err(UpstreamError::Unavailable(_))), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(up.is_closed());
    assert_eq!(events.recv().await.unwrap(), UpstreamEvent::Closed);
    assert!(matches!(up.request("tools/list", json!({}), None).await, Err(UpstreamError::Unavailable(_))));
    up.shutdown().await;
}

#[tokio::test]
async fn stdio_hanging_child_times_out_and_is_terminated() {
    // Answers initialize, then stops reading stdin and sleeps: closing stdin is not enough.
    let script = sh_server("exec sleep 30");
    let up = connect(stdio(&["sh", "-c", &script], Duration::from_millis(300))).await.unwrap();
    let start = Instant::now();
    let r = up.request("tools/call", json!({"name": "x", "arguments": {}}), None).await;
    assert!(matches!(r, Err(UpstreamError::Timeout(_))), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(1));
    let pid = up.pid().unwrap();
    up.shutdown().await; // stdin closed, 2 s, SIGTERM
    assert!(!pid_exists(pid));
}

#[tokio::test]
async fn stdio_missing_program_is_unavailable() {
    let r = connect(stdio(&["/nonexistent/mcp-server"], Duration::from_secs(2))).await;
    assert!(matches!(r, Err(UpstreamError::Unavailable(_))), "{r:?}");
}

// --- legacy HTTP+SSE (2024-11-05) ---

#[derive(Default)]
struct SseState {
    /// sessionId → the session's event stream.
    streams: HashMap<String, mpsc::UnboundedSender<String>>,
    /// Every message POSTed, and the Authorization header of every request.
    posted: Vec<Value>,
    authorizations: Vec<String>,
    next: usize,
}

/// A minimal legacy SSE server: GET /sse, POST /message?sessionId=…, endpoint `endpoint`.
async fn legacy_sse(endpoint: &'static str) -> (String, Arc<Mutex<SseState>>) {
    let state = Arc::new(Mutex::new(SseState::default()));
    let st = state.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let st = st.clone();
        async move {
            let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            st.lock().unwrap().authorizations.push(auth);
            let query = req.uri().query().unwrap_or("").to_string();
            match (req.method().as_str(), req.uri().path()) {
                ("GET", "/sse") => {
                    let (tx, rx) = mpsc::unbounded_channel::<String>();
                    let id = {
                        let mut s = st.lock().unwrap();
                        s.next += 1;
                        let id = format!("s{}", s.next);
                        s.streams.insert(id.clone(), tx.clone());
                        id
                    };
                    let _ = tx.send(format!(": hello\n\nevent: endpoint\ndata: {}\n\n", endpoint.replace("{id}", &id)));
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|s| (Ok::<_, Infallible>(Frame::data(Bytes::from(s))), rx))
                    });
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(BodyExt::boxed(StreamBody::new(stream)))
                        .unwrap()
                }
                ("POST", "/message") => {
                    let id = query.strip_prefix("sessionId=").unwrap_or("").to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
                        return full(StatusCode::BAD_REQUEST, "text/plain", "bad json");
                    };
                    let mut s = st.lock().unwrap();
                    s.posted.push(msg.clone());
                    let Some(stream) = s.streams.get(&id).cloned() else {
                        return full(StatusCode::NOT_FOUND, "text/plain", "no session");
                    };
                    let push = |m: Value| {
                        let _ = stream.send(format!("event: message\ndata: {m}\n\n"));
                    };
                    let reply = |result: Value| json!({"jsonrpc": "2.0", "id": msg["id"], "result": result});
                    match msg["method"].as_str().unwrap_or("") {
                        "initialize" => push(reply(json!({
                            "protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                            "serverInfo": {"name": "legacy", "version": "0"}}))),
                        // Two pages: the client must follow the cursor.
                        "tools/list" if msg["params"]["cursor"] == json!("p2") => {
                            push(reply(json!({"tools": [{"name": "second", "inputSchema": {"type": "object"}}]})))
                        }
                        "tools/list" => push(reply(json!({
                            "tools": [{"name": "first", "inputSchema": {"type": "object"}}], "nextCursor": "p2"}))),
                        "tools/call" if msg["params"]["name"] == "slow" => {} // never answers
                        "tools/call" if msg["params"]["name"] == "die" => {
                            s.streams.remove(&id);
                        }
                        "tools/call" => {
                            // Ask the client something first: it must answer, then get its result.
                            push(json!({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"}));
                            push(reply(json!({"content": [{"type": "text", "text": "hello from sse"}]})));
                        }
                        _ => {}
                    }
                    full(StatusCode::ACCEPTED, "text/plain", "Accepted")
                }
                _ => full(StatusCode::NOT_FOUND, "text/plain", "not found"),
            }
        }
    })
    .await;
    (format!("http://{addr}/sse"), state)
}

#[tokio::test]
async fn legacy_sse_session() {
    let (url, state) = legacy_sse("/message?sessionId={id}").await;
    let up = connect(server(Transport::Sse { url }, Duration::from_secs(5))).await.unwrap();
    assert_eq!(up.protocol_version(), "2024-11-05");
    assert_eq!(names(&up.list_tools().await.unwrap()), vec!["first", "second"]);
    let r = up.request("tools/call", json!({"name": "hi", "arguments": {}}), None).await.unwrap();
    assert_eq!(text(&r), "hello from sse");

    // Our answer to its ping went back by POST, with its id.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let answered =
            state.lock().unwrap().posted.iter().any(|m| m["id"] == json!("srv-1") && m["result"] == json!({}));
        if answered {
            break;
        }
        assert!(Instant::now() < deadline, "no answer to the upstream's ping");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = state.lock().unwrap();
    assert!(s.posted.iter().any(|m| m["method"] == json!("notifications/initialized")));
    assert!(s.authorizations.iter().all(|a| a == TOKEN), "credentials on every request");
}

#[tokio::test]
async fn legacy_sse_abandoned_request_is_cancelled_upstream() {
    let (url, state) = legacy_sse("/message?sessionId={id}").await;
    let up = connect(server(Transport::Sse { url }, Duration::from_millis(300))).await.unwrap();
    let r = up.request("tools/call", json!({"name": "slow", "arguments": {}}), None).await;
    assert!(matches!(r, Err(UpstreamError::Timeout(_))), "{r:?}");
    // A caller that gives up (drops the future) cancels too.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        up.request("tools/call", json!({"name": "slow", "arguments": {}}), None),
    )
    .await;
    assert!(gave_up.is_err());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (calls, cancelled) = {
            let s = state.lock().unwrap();
            let calls: Vec<Value> =
                s.posted.iter().filter(|m| m["method"] == json!("tools/call")).map(|m| m["id"].clone()).collect();
            let cancelled: Vec<Value> = s
                .posted
                .iter()
                .filter(|m| m["method"] == json!("notifications/cancelled"))
                .map(|m| m["params"]["requestId"].clone())
                .collect();
            (calls, cancelled)
        };
        if calls.len() == 2 && cancelled == calls {
            break;
        }
        assert!(Instant::now() < deadline, "calls {calls:?}, cancelled {cancelled:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!up.is_closed());
}

#[tokio::test]
async fn legacy_sse_stream_end_fails_pending_requests() {
    let (url, _state) = legacy_sse("message?sessionId={id}").await;
    let up = connect(server(Transport::Sse { url }, Duration::from_secs(5))).await.unwrap();
    let mut events = up.subscribe();
    let r = up.request("tools/call", json!({"name": "die", "arguments": {}}), None).await;
    assert!(matches!(r, Err(UpstreamError::Unavailable(_))), "{r:?}");
    assert_eq!(events.recv().await.unwrap(), UpstreamEvent::Closed);
    assert!(up.is_closed());
}

#[tokio::test]
async fn legacy_sse_endpoint_on_another_origin_is_refused() {
    let (url, state) = legacy_sse("http://elsewhere.example/message?sessionId={id}").await;
    let r = connect(server(Transport::Sse { url }, Duration::from_secs(5))).await;
    assert!(matches!(&r, Err(UpstreamError::Protocol(m)) if m.contains("another origin")), "{r:?}");
    assert!(state.lock().unwrap().posted.is_empty());
}

// --- upstreams that hang, refuse or lie ---

/// Accepts connections and never answers.
async fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn hanging_upstreams_time_out() {
    let addr = black_hole().await;
    let timeout = Duration::from_millis(300);
    for transport in [
        Transport::StreamableHttp { url: format!("http://{addr}/mcp") },
        Transport::Sse { url: format!("http://{addr}/sse") },
    ] {
        let start = Instant::now();
        let r = connect(server(transport.clone(), timeout)).await;
        assert!(matches!(r, Err(UpstreamError::Timeout(d)) if d == timeout), "{transport:?}: {r:?}");
        assert!(start.elapsed() < timeout + Duration::from_millis(700), "{:?}", start.elapsed());
    }
}

#[tokio::test]
async fn refused_port_is_unavailable_and_names_no_credential() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for transport in [
        Transport::StreamableHttp { url: format!("http://127.0.0.1:{port}/mcp") },
        Transport::Sse { url: format!("http://127.0.0.1:{port}/sse") },
    ] {
        match connect(server(transport, Duration::from_secs(2))).await {
            Err(e @ UpstreamError::Unavailable(_)) => assert!(!e.to_string().contains("upstream-secret"), "{e}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn http_errors_never_echo_credentials() {
    // Like many APIs, it quotes the key it refuses.
    let addr = serve(|req: Request<Incoming>| async move {
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": format!("invalid token {auth}")}});
        full(StatusCode::UNAUTHORIZED, "application/json", body.to_string())
    })
    .await;
    match connect(http_server(format!("http://{addr}/mcp"), Duration::from_secs(2))).await {
        Err(e @ UpstreamError::Unavailable(_)) => {
            let text = e.to_string();
            assert!(text.contains("401") && text.contains("[redacted]"), "{text}");
            assert!(!text.contains("upstream-secret-0123456789"), "{text}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn http_garbage_is_a_protocol_error() {
    let cases: [(&'static str, &'static str); 3] = [
        ("application/json", "this is not json"),
        ("text/html", "<html>hello</html>"),
        ("application/json", r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"1999-01-01"}}"#),
    ];
    for (ct, body) in cases {
        let addr = serve(move |_req: Request<Incoming>| async move { full(StatusCode::OK, ct, body) }).await;
        let r = connect(http_server(format!("http://{addr}/mcp"), Duration::from_secs(2))).await;
        assert!(matches!(r, Err(UpstreamError::Protocol(_))), "{body}: {r:?}");
    }
}

#[tokio::test]
async fn http_stream_ending_without_an_answer_is_unavailable() {
    let addr = serve(|_req: Request<Incoming>| async move {
        full(
            StatusCode::OK,
            "text/event-stream",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\n",
        )
    })
    .await;
    let r = connect(http_server(format!("http://{addr}/mcp"), Duration::from_secs(2))).await;
    assert!(matches!(r, Err(UpstreamError::Unavailable(_))), "{r:?}");
}
