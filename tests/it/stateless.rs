//! Protocol 2026-07-28 through the gateway, over raw HTTP: a stateless client (`server/discover`,
//! the `_meta` envelope and the mirrored headers on every request, no session) gets the same
//! filtering, decisions and records as a session; a 2025-11-25 client on the same gateway still
//! works; and the gateway speaks 2026-07-28 to an upstream that offers it, `initialize` to one
//! that does not.

use gatehouse::gateway::proxy::Config;
use gatehouse::gateway::secrets::SecretSource;
use http::StatusCode;
use serde_json::{Value, json};

use crate::gateway::{Gateway, MockUpstream, Reply, call, initialize, post, send, token_hash};

const ALICE: &str = "alice-modern-token-0123456789";
const BOB: &str = "bob-modern-token-0123456789";
const MODERN: &str = "2026-07-28";

struct World {
    gw: Gateway,
    upstream: MockUpstream,
    modern: MockUpstream,
}

async fn world() -> World {
    let upstream = MockUpstream::start().await;
    let modern = MockUpstream::start_modern().await;
    let mock = format!("name: mock\ntransport: streamable-http\nurl: {}\ntimeout: 2s\npolicy: policies/mock.yaml\nsupplier: {{ operated_by: internal }}\n", upstream.url);
    let new = format!("name: new\ntransport: streamable-http\nurl: {}\ntimeout: 2s\nsupplier: {{ operated_by: internal }}\n", modern.url);
    let policy = "version: \"1\"\ndefault: deny\nhide: [delete_all]\ntools:\n  echo_headers: {}\n  slow: {}\n  add:\n    deny_if: [ { name: no big sums, message: sums over 100 are not allowed, conditions: [ { path: args.a, op: gt, value: 100 } ] } ]\n";
    let alice = format!(
        "identity: alice@example.com\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: \"*\" }}, {{ server: new, tools: \"*\" }} ]\n",
        token_hash(ALICE)
    );
    let bob = format!("identity: bob@example.com\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: [echo_headers] }} ]\n", token_hash(BOB));
    let files = [
        ("servers/mock.yaml", mock.as_str()),
        ("servers/new.yaml", new.as_str()),
        ("policies/mock.yaml", policy),
        ("grants/alice.yaml", alice.as_str()),
        ("grants/bob.yaml", bob.as_str()),
    ];
    let gw = Gateway::start(&files, SecretSource::default(), Config::default()).await;
    World { gw, upstream, modern }
}

/// One 2026-07-28 request: the envelope in `_meta`, the headers mirroring the body.
fn request(id: i64, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": { "name": "it-modern", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

async fn stateless(url: &str, token: &str, body: &Value, extra: &[(&str, &str)]) -> Reply {
    let method = body["method"].as_str().unwrap().to_string();
    let name = body["params"].get("name").or_else(|| body["params"].get("uri")).and_then(Value::as_str).map(str::to_string);
    let mut headers = vec![("mcp-protocol-version", MODERN), ("mcp-method", method.as_str())];
    if let Some(n) = &name {
        headers.push(("mcp-name", n.as_str()));
    }
    // the test's own headers replace the mirrored ones
    headers.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    headers.extend_from_slice(extra);
    let r = send("POST", url, Some(token), None, &body.to_string(), &headers).await;
    assert!(r.headers.get("mcp-session-id").is_none(), "a stateless request is never given a session: {r:?}");
    r
}

fn names(reply: &Value) -> Vec<String> {
    let mut v: Vec<String> = reply["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn text(reply: &Value) -> String {
    reply["result"]["content"][0]["text"].as_str().unwrap_or_default().to_string()
}

async fn records(gw: &Gateway) -> Vec<Value> {
    gw.store.flush().await.unwrap();
    let c = gw.store.reader().unwrap();
    let rows = gatehouse::record::audit::verify::canonical_records(&c).unwrap();
    rows.into_iter().map(|(text, _)| serde_json::from_str(&text).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_client_is_served_without_a_session_under_the_same_policy() {
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);

    let d = stateless(&url, ALICE, &request(1, "server/discover", json!({})), &[]).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    let r = d.json()["result"].clone();
    assert_eq!(r["resultType"], "complete");
    assert!(r["supportedVersions"].as_array().unwrap().iter().any(|v| v == MODERN), "{r}");
    assert!(r["supportedVersions"].as_array().unwrap().iter().any(|v| v == "2025-11-25"), "handshake-era clients too: {r}");
    assert!(r["capabilities"]["tools"].is_object());
    assert_eq!(r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "gatehouse");

    // tools/list: filtered exactly as for a session of the same grant
    let list = stateless(&url, ALICE, &request(2, "tools/list", json!({})), &[]).await.json();
    assert_eq!(names(&list), ["mock__add", "mock__echo_headers", "mock__slow", "new__add", "new__ask"]);
    assert_eq!((list["result"]["resultType"].as_str(), list["result"]["ttlMs"].as_i64(), list["result"]["cacheScope"].as_str()), (Some("complete"), Some(0), Some("private")));
    let sid = initialize(&url, ALICE, "2025-11-25").await;
    let legacy = post(&url, ALICE, Some(&sid), json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/list" })).await.json();
    assert_eq!(names(&legacy), names(&list), "the same list as a 2025-11-25 session");
    assert!(legacy["result"].get("resultType").is_none(), "2025-era replies stay as they were");
    let bob = stateless(&url, BOB, &request(4, "tools/list", json!({})), &[]).await.json();
    assert_eq!(names(&bob), ["mock__echo_headers"]);

    // tools/call: allowed, denied by a rule, hidden, ungranted
    let ok = stateless(&url, ALICE, &request(5, "tools/call", json!({ "name": "mock__add", "arguments": { "a": 2, "b": 3 } })), &[]).await.json();
    assert_eq!((text(&ok).as_str(), ok["result"]["resultType"].as_str()), ("5", Some("complete")), "{ok}");
    let denied = stateless(&url, ALICE, &request(6, "tools/call", json!({ "name": "mock__add", "arguments": { "a": 500, "b": 1 } })), &[]).await.json();
    assert_eq!(denied["result"]["isError"], true);
    assert!(text(&denied).starts_with("denied by policy: sums over 100 are not allowed"), "{denied}");
    let hidden = stateless(&url, ALICE, &request(7, "tools/call", json!({ "name": "mock__delete_all", "arguments": {} })), &[]).await.json();
    assert_eq!((hidden["error"]["code"].as_i64(), hidden["error"]["message"].as_str()), (Some(-32602), Some("Unknown tool: mock__delete_all")));
    let ungranted = stateless(&url, BOB, &request(8, "tools/call", json!({ "name": "mock__add", "arguments": { "a": 1, "b": 1 } })), &[]).await.json();
    assert_eq!(ungranted["error"]["code"], -32602);
    // one server's endpoint: its own names
    let one = stateless(&format!("{url}/mock"), ALICE, &request(9, "tools/call", json!({ "name": "add", "arguments": { "a": 20, "b": 22 } })), &[]).await.json();
    assert_eq!(text(&one), "42");
    let forwarded: Vec<Value> = w.upstream.calls.lock().unwrap().clone();
    assert_eq!(forwarded.iter().filter(|c| c["name"] == "add").count(), 2, "only the two allowed calls reach the upstream: {forwarded:?}");
    assert!(forwarded.iter().all(|c| c.get("_meta").is_none()), "the client's envelope is not forwarded to a 2025 upstream");

    // no session was ever opened for these requests: only the 2025 client's
    assert_eq!(w.gw.state.sessions.len(), 1);

    // records: the same decisions as for a session, tied per request by a `req-` reference
    let recs = records(&w.gw).await;
    let tools: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "tool").collect();
    let allowed: Vec<&&Value> = tools.iter().filter(|r| r["verdict"] == "allow" && r["server"] == "mock").collect();
    assert_eq!(allowed.len(), 4, "decision and outcome of two calls: {allowed:?}");
    assert_eq!(allowed[0]["session"], allowed[1]["session"], "a call's decision and outcome share its reference");
    assert_ne!(allowed[0]["session"], allowed[2]["session"], "two requests, two references");
    assert!(allowed.iter().all(|r| r["session"].as_str().unwrap().starts_with("req-") && r["session"].as_str().unwrap().len() == 20), "{allowed:?}");
    assert_eq!((allowed[1]["outcome"].as_str(), allowed[0]["outcome"].as_str()), (Some("ok"), Some("unknown")));
    let denials: Vec<(&str, &str)> = tools.iter().filter(|r| r["verdict"] == "deny").map(|r| (r["identity"].as_str().unwrap(), r["rule"].as_str().unwrap())).collect();
    assert_eq!(denials.len(), 3, "{denials:?}");
    assert!(denials[0].1.contains("no big sums"), "{denials:?}");
    assert_eq!(denials[2].0, "bob@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_request_whose_headers_or_version_do_not_fit_is_refused() {
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    let add = request(1, "tools/call", json!({ "name": "mock__add", "arguments": { "a": 1, "b": 1 } }));
    let code = |r: &Reply| (r.status, r.json()["error"]["code"].as_i64());

    let r = stateless(&url, ALICE, &add, &[("mcp-name", "mock__echo_headers")]).await;
    assert_eq!(code(&r), (StatusCode::BAD_REQUEST, Some(-32020)), "Mcp-Name must be the body's name");
    let r = stateless(&url, ALICE, &add, &[("mcp-method", "tools/list")]).await;
    assert_eq!(code(&r), (StatusCode::BAD_REQUEST, Some(-32020)));
    let r = stateless(&url, ALICE, &add, &[("mcp-protocol-version", "2025-11-25")]).await;
    assert_eq!(code(&r), (StatusCode::BAD_REQUEST, Some(-32020)));
    let encoded = stateless(&url, ALICE, &add, &[("mcp-name", "=?base64?bW9ja19fYWRk?=")]).await;
    assert_eq!(text(&encoded.json()), "2", "a base64 Mcp-Name is decoded before it is compared");
    assert_eq!(w.upstream.calls.lock().unwrap().len(), 1, "a refused request never reaches the upstream");

    let mut future = request(2, "tools/list", json!({}));
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2027-01-01");
    let r = stateless(&url, ALICE, &future, &[("mcp-protocol-version", "2027-01-01")]).await;
    assert_eq!(code(&r), (StatusCode::BAD_REQUEST, Some(-32022)));
    assert_eq!(r.json()["error"]["data"]["requested"], "2027-01-01");
    assert!(r.json()["error"]["data"]["supported"].as_array().unwrap().iter().any(|v| v == MODERN));

    // methods 2026-07-28 removed
    for m in ["ping", "logging/setLevel", "resources/subscribe"] {
        let r = stateless(&url, ALICE, &request(3, m, json!({})), &[]).await;
        assert_eq!(code(&r), (StatusCode::NOT_FOUND, Some(-32601)), "{m}");
    }
    // a resource nobody may read is "not found" as the revision spells it
    let r = stateless(&url, ALICE, &request(4, "resources/read", json!({ "uri": "demo://nothing" })), &[]).await;
    assert_eq!(r.json()["error"]["code"], -32602, "{}", r.body);
    // a bad token is refused before anything
    let r = stateless(&url, "forged", &request(5, "tools/list", json!({})), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_speaks_2026_to_an_upstream_that_offers_it_and_initialize_to_one_that_does_not() {
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    // a 2025-11-25 client and a 2026-07-28 client, both through the modern upstream
    let sid = initialize(&url, ALICE, "2025-11-25").await;
    let r = post(&url, ALICE, Some(&sid), call(1, "new__add", json!({ "a": 40, "b": 2 }))).await.json();
    assert_eq!(text(&r), "42", "{r}");
    assert!(r["result"].get("resultType").is_none(), "a 2025-11-25 client gets a 2025-11-25 result: {r}");
    let r = stateless(&url, ALICE, &request(2, "tools/call", json!({ "name": "new__add", "arguments": { "a": 1, "b": 2 } })), &[]).await.json();
    assert_eq!((text(&r).as_str(), r["result"]["resultType"].as_str()), ("3", Some("complete")));
    assert_eq!(r["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "gatehouse", "the gateway answers, not the upstream");

    let calls = w.modern.calls.lock().unwrap().clone();
    let methods: Vec<&str> = calls.iter().map(|c| c["method"].as_str().unwrap()).collect();
    assert_eq!(methods[0], "server/discover", "{methods:?}");
    assert!(!methods.contains(&"initialize"), "{methods:?}");
    assert_eq!(methods.iter().filter(|m| **m == "tools/call").count(), 2, "{methods:?}");
    for c in &calls {
        let meta = &c["params"]["_meta"];
        assert_eq!(meta["io.modelcontextprotocol/clientInfo"]["name"], "gatehouse", "our envelope, never the client's: {c}");
        // a call declares what the gateway relays to its client (input_required, answered by
        // the client of the call); nothing else declares anything
        let declared = if c["method"] == "tools/call" { json!({ "sampling": {}, "elicitation": {}, "roots": {} }) } else { json!({}) };
        assert_eq!(meta["io.modelcontextprotocol/clientCapabilities"], declared, "{c}");
    }
    let seen = w.modern.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|h| h.get("mcp-session-id").is_none()));
    let call_headers: Vec<_> = seen.iter().filter(|h| h.get("mcp-method").is_some_and(|m| m == "tools/call")).collect();
    assert_eq!(call_headers.len(), 2);
    assert!(call_headers.iter().all(|h| h["mcp-name"] == "add" && h["mcp-protocol-version"] == MODERN && h.get("authorization").is_none()));

    // logging/setLevel is not a 2026-07-28 method: the level rides every later request's _meta
    let r = post(&url, ALICE, Some(&sid), json!({ "jsonrpc": "2.0", "id": 4, "method": "logging/setLevel", "params": { "level": "warning" } })).await.json();
    assert_eq!(r["result"], json!({}), "{r}");
    post(&url, ALICE, Some(&sid), call(5, "new__add", json!({ "a": 1, "b": 1 }))).await;
    let calls = w.modern.calls.lock().unwrap().clone();
    assert!(!calls.iter().any(|c| c["method"] == "logging/setLevel"), "{calls:?}");
    assert_eq!(calls.last().unwrap()["params"]["_meta"]["io.modelcontextprotocol/logLevel"], "warning");

    // the handshake-era upstream was probed, then initialised
    let _ = post(&url, ALICE, Some(&sid), call(3, "mock__add", json!({ "a": 1, "b": 1 }))).await;
    let seen = w.upstream.seen.lock().unwrap().clone();
    assert_eq!(seen[0]["mcp-method"], "server/discover");
    assert!(seen[1].get("mcp-method").is_none() && seen[1].get("mcp-session-id").is_none(), "then initialize, without a session");
    assert!(seen[2..].iter().all(|h| h.get("mcp-session-id").is_some_and(|s| s == "upstream-session-1")));
}

/// POSTs a 2026-07-28 request and returns its response's body chunks as they come.
async fn open_listen(url: &str, token: &str, body: &Value) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", MODERN)
        .header("mcp-method", "subscriptions/listen")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("mcp-session-id").is_none());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut body = resp.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let _ = tx.send(String::from_utf8_lossy(&data).into_owned());
            }
        }
    });
    rx
}

/// The JSON-RPC messages that arrive within `ms` milliseconds, and whether the stream ended.
async fn events_within(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, ms: u64) -> (Vec<Value>, bool) {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut ended = false;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(chunk)) => text.push_str(&chunk),
            Ok(None) => {
                ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    (text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect(), ended)
}

#[tokio::test(flavor = "multi_thread")]
async fn list_changes_reach_a_2026_client_on_its_subscription_only_as_it_opted_in() {
    use gatehouse::gateway::proxy::{Active, snapshot_changed};
    use gatehouse::repo::{Files, compile};
    use std::sync::Arc;
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    // the client lists its tools, then listens for changes of them
    let list = stateless(&url, ALICE, &request(76, "tools/list", json!({})), &[]).await.json();
    assert_eq!(names(&list).len(), 5);
    let listen = request(77, "subscriptions/listen", json!({ "notifications": { "toolsListChanged": true, "resourcesListChanged": false } }));
    let mut stream = open_listen(&url, ALICE, &listen).await;
    let (first, _) = events_within(&mut stream, 500).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(first[0]["params"]["notifications"], json!({ "toolsListChanged": true }), "only what was asked for and is honoured");
    assert_eq!(first[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 77);

    // a commit that takes server `new` away from alice: her tools changed
    let old = w.gw.state.active.load_full().unwrap();
    let mock = format!("name: mock\ntransport: streamable-http\nurl: {}\ntimeout: 2s\nsupplier: {{ operated_by: internal }}\n", w.upstream.url);
    let alice = |tokens: &str| format!("identity: alice@example.com\nkind: human\ntokens: [ {tokens} ]\naccess: [ {{ server: mock, tools: \"*\" }} ]\n");
    let swap = |grant: String| {
        let files = [("servers/mock.yaml", mock.clone()), ("grants/alice.yaml", grant)];
        let snapshot = Arc::new(compile(&Files::from_memory(files.iter().map(|(p, t)| (*p, t.as_str())))).unwrap().snapshot);
        Active { snapshot, secrets: old.secrets.clone() }
    };
    w.gw.state.activate(swap(alice(&format!("{{ sha256: {} }}", token_hash(ALICE)))));
    snapshot_changed(&w.gw.state, Some(&old));
    let (m, ended) = events_within(&mut stream, 500).await;
    assert!(!ended);
    assert_eq!(m.len(), 1, "tools only, no resources/prompts list change: {m:?}");
    assert_eq!(m[0]["method"], "notifications/tools/list_changed");
    assert_eq!(m[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 77);

    // a commit that revokes her token ends the subscription
    let before = w.gw.state.active.load_full().unwrap();
    w.gw.state.activate(swap(alice(&format!("{{ sha256: {} }}", token_hash("another-token-0123456789")))));
    snapshot_changed(&w.gw.state, Some(&before));
    let (_, ended) = events_within(&mut stream, 1000).await;
    assert!(ended, "the stream ends with the token");
    assert_eq!(w.gw.state.sessions.len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2026_upstream_asks_a_2025_client_through_input_required_and_gets_its_answer() {
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    let r = post(&url, ALICE, None, json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": { "elicitation": {} }, "clientInfo": { "name": "it", "version": "1" } } })).await;
    let sid = r.session();
    // the call's answer is an event stream: first the elicitation, later the result
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(&url)
        .header("authorization", format!("Bearer {ALICE}"))
        .header("mcp-session-id", &sid)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(bytes::Bytes::from(call(1, "new__ask", json!({})).to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut body = resp.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let _ = tx.send(String::from_utf8_lossy(&data).into_owned());
            }
        }
    });
    let (asked, _) = events_within(&mut rx, 1000).await;
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!((asked[0]["method"].as_str(), asked[0]["params"]["message"].as_str()), (Some("elicitation/create"), Some("your name?")));
    let answer = json!({ "jsonrpc": "2.0", "id": asked[0]["id"], "result": { "action": "accept", "content": { "name": "alice" } } });
    assert_eq!(post(&url, ALICE, Some(&sid), answer).await.status, StatusCode::ACCEPTED);
    let (rest, ended) = events_within(&mut rx, 2000).await;
    assert!(ended);
    assert_eq!(text(&rest[0]), "hello alice", "{rest:?}");

    // the upstream saw the call twice: first declaring what the client side relays, then the retry
    let calls: Vec<Value> = w.modern.calls.lock().unwrap().iter().filter(|c| c["method"] == "tools/call").cloned().collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"], json!({ "sampling": {}, "elicitation": {}, "roots": {} }));
    assert_eq!((calls[1]["params"]["requestState"].as_str(), calls[1]["params"]["inputResponses"]["q1"]["action"].as_str()), (Some("state-1"), Some("accept")));
    // recorded like a handshake-era upstream's request
    let recs = records(&w.gw).await;
    let asks: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "server_request").collect();
    assert_eq!(asks.len(), 2, "decision and outcome: {asks:?}");
    assert_eq!((asks[0]["tool"].as_str(), asks[1]["outcome"].as_str()), (Some("elicitation/create"), Some("ok")));

    // a stateless client cannot be asked: the call fails, the refusal is recorded
    let r = stateless(&url, ALICE, &request(2, "tools/call", json!({ "name": "new__ask", "arguments": {} })), &[]).await.json();
    assert_eq!(r["error"]["code"], -32601, "{r}");
    let recs = records(&w.gw).await;
    assert!(recs.iter().any(|r| r["kind"] == "server_request" && r["rule"] == "gatehouse:stateless-client"));
}
