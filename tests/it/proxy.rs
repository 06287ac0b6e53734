//! The gateway over raw HTTP: authentication, sessions, the Streamable HTTP rules, filtering,
//! decisions, forwarding with held credentials, and bad input. The upstream is a mock that
//! records what reaches it, so each test can check what the upstream saw.

use std::time::{Duration, Instant};

use gatehouse::gateway::proxy::Config;
use gatehouse::gateway::secrets::SecretSource;
use http::StatusCode;
use serde_json::{Value, json};

use crate::gateway::{Gateway, MockUpstream, call, initialize, post, send, token_hash};

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";
const OLD: &str = "old-token-0123456789";

struct World {
    gw: Gateway,
    upstream: MockUpstream,
    _secrets: tempfile::TempDir,
}

async fn world_with(config: Config) -> World {
    let upstream = MockUpstream::start().await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("mock-key"), "upstream-secret-value\n").unwrap();
    let mock = format!(
        "name: mock\ntransport: streamable-http\nurl: {}\ntimeout: 2s\npolicy: policies/mock.yaml\ncredentials:\n  headers: {{ X-Upstream-Key: \"${{secret:mock-key}}\" }}\nsupplier: {{ operated_by: internal }}\n",
        upstream.url
    );
    let dead = "name: dead\ntransport: streamable-http\nurl: http://127.0.0.1:1/mcp\ntimeout: 1s\nsupplier: { operated_by: internal }\n";
    let policy = "version: \"1\"\ndefault: deny\nhide: [delete_all]\ntools:\n  echo_headers: {}\n  slow: {}\n  add:\n    deny_if: [ { name: no big sums, message: sums over 100 are not allowed, conditions: [ { path: args.a, op: gt, value: 100 } ] } ]\n";
    let alice = format!(
        "identity: alice@example.com\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: \"*\" }}, {{ server: dead, tools: \"*\" }} ]\n",
        token_hash(ALICE)
    );
    let bob = format!("identity: bob@example.com\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: [echo_headers] }} ]\n", token_hash(BOB));
    let old = format!(
        "identity: old@example.com\nkind: human\ntokens: [ {{ sha256: {}, issued: 2020-01-01, expires: 2020-02-01 }} ]\naccess: [ {{ server: mock, tools: \"*\" }} ]\n",
        token_hash(OLD)
    );
    let files = [
        ("servers/mock.yaml", mock.as_str()),
        ("servers/dead.yaml", dead),
        ("policies/mock.yaml", policy),
        ("grants/alice.yaml", alice.as_str()),
        ("grants/bob.yaml", bob.as_str()),
        ("grants/old.yaml", old.as_str()),
    ];
    let gw = Gateway::start(&files, SecretSource { dir: Some(secrets.path().to_path_buf()) }, config).await;
    World { gw, upstream, _secrets: secrets }
}

async fn world() -> World {
    world_with(Config::default()).await
}

fn mcp(w: &World) -> String {
    format!("{}/mcp", w.gw.url)
}

fn tool_names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn text_of(reply: &Value) -> String {
    reply["result"]["content"][0]["text"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_needs_a_valid_unexpired_token() {
    let w = world().await;
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "protocolVersion": "2025-11-25" } }).to_string();
    for (token, why) in [(None, "missing bearer token"), (Some("forged"), "unknown token"), (Some(OLD), "token expired")] {
        let r = send("POST", &mcp(&w), token, None, &init, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{why}");
        assert!(r.headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"), "{why}");
        assert!(r.body.contains(why), "{why}: {}", r.body);
    }
    let r = send("POST", &mcp(&w), None, None, &init, &[("authorization", "Basic YWxpY2U6eA==")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(w.upstream.seen.lock().unwrap().is_empty(), "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_list_shows_only_what_the_caller_could_call() {
    let w = world().await;
    let s = initialize(&mcp(&w), ALICE, "2025-11-25").await;
    let list = post(&mcp(&w), ALICE, Some(&s), json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" })).await.json();
    // delete_all is hidden by the policy; the dead server's tools are left out, not an error.
    assert_eq!(tool_names(&list), ["mock__add", "mock__echo_headers", "mock__slow"]);

    let s = initialize(&mcp(&w), BOB, "2025-06-18").await;
    let list = post(&mcp(&w), BOB, Some(&s), json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" })).await.json();
    assert_eq!(tool_names(&list), ["mock__echo_headers"]);

    // one server under its own endpoint, with the tools' own names
    let one = format!("{}/mcp/mock", w.gw.url);
    let s = initialize(&one, ALICE, "2025-11-25").await;
    let list = post(&one, ALICE, Some(&s), json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" })).await.json();
    assert_eq!(tool_names(&list), ["add", "echo_headers", "slow"]);
    let r = post(&one, ALICE, Some(&s), call(2, "add", json!({ "a": 1, "b": 2 }))).await.json();
    assert_eq!(text_of(&r), "3");
    // bob cannot see a server endpoint he has no grant for, nor may a session cross endpoints
    let r = send("POST", &format!("{}/mcp/dead", w.gw.url), Some(BOB), None, "{}", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(&mcp(&w), ALICE, Some(&s), json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/list" })).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a /mcp/mock session is not a /mcp session");
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_decided_and_denials_name_rule_and_commit() {
    let w = world().await;
    let url = mcp(&w);
    let s = initialize(&url, ALICE, "2025-11-25").await;
    let ok = post(&url, ALICE, Some(&s), call(1, "mock__add", json!({ "a": 2, "b": 3 }))).await.json();
    assert_eq!(ok["id"], 1);
    assert_eq!(text_of(&ok), "5");

    let denied = post(&url, ALICE, Some(&s), call(2, "mock__add", json!({ "a": 500, "b": 3 }))).await;
    assert_eq!(denied.status, StatusCode::OK);
    let d = denied.json();
    assert_eq!(d["result"]["isError"], true);
    assert_eq!(
        text_of(&d),
        "denied by policy: sums over 100 are not allowed (rule policies/mock.yaml#/tools/add/deny_if/no big sums, commit worktree)"
    );

    for (name, who) in [("mock__delete_all", ALICE), ("mock__nope", ALICE), ("add", ALICE), ("mock__add", BOB)] {
        let s = initialize(&url, who, "2025-11-25").await;
        let r = post(&url, who, Some(&s), call(3, name, json!({}))).await.json();
        assert_eq!(r["error"]["code"], -32602, "{name}");
        assert_eq!(r["error"]["message"], format!("Unknown tool: {name}"));
    }
    let forwarded: Vec<String> = w.upstream.calls.lock().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(forwarded, ["add"], "denied, hidden, ungranted and unknown calls never reach the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_token_never_reaches_the_upstream_and_credentials_are_added() {
    let w = world().await;
    let url = mcp(&w);
    let s = initialize(&url, ALICE, "2025-11-25").await;
    let body = call(1, "mock__echo_headers", json!({})).to_string();
    let r = send("POST", &url, Some(ALICE), Some(&s), &body, &[("cookie", "sid=client-cookie")]).await.json();
    let echoed = text_of(&r).to_lowercase();
    assert!(echoed.contains("x-upstream-key: upstream-secret-value"), "{echoed}");
    assert!(echoed.contains("mcp-session-id: upstream-session-1"), "the upstream session is the gateway's own: {echoed}");
    for h in w.upstream.seen.lock().unwrap().iter() {
        let all = format!("{h:?}");
        assert!(!all.contains(ALICE), "client token leaked upstream: {all}");
        assert!(!all.contains("client-cookie"), "client cookie leaked upstream: {all}");
        assert!(!all.contains(&s), "client session id leaked upstream: {all}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_bound_to_their_grant() {
    let w = world().await;
    let url = mcp(&w);
    let s = initialize(&url, ALICE, "2025-11-25").await;
    let list = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" });
    assert_eq!(post(&url, ALICE, Some("not-a-session"), list.clone()).await.status, StatusCode::NOT_FOUND);
    assert_eq!(post(&url, BOB, Some(&s), list.clone()).await.status, StatusCode::NOT_FOUND, "another grant's session");
    assert_eq!(post(&url, ALICE, None, list.clone()).await.status, StatusCode::BAD_REQUEST, "no session header");
    assert_eq!(send("DELETE", &url, Some(BOB), Some(&s), "", &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(send("DELETE", &url, Some(ALICE), Some(&s), "", &[]).await.status, StatusCode::NO_CONTENT);
    assert_eq!(post(&url, ALICE, Some(&s), list).await.status, StatusCode::NOT_FOUND, "ended");
    assert_eq!(send("GET", &url, Some(ALICE), Some("not-a-session"), "", &[]).await.status, StatusCode::NOT_FOUND, "a stream needs a session");
    assert_eq!(send("PUT", &url, Some(ALICE), None, "", &[]).await.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_clear_error() {
    let w = world_with(Config { max_body: 2048, ..Config::default() }).await;
    let url = mcp(&w);
    let old = initialize(&url, ALICE, "2025-03-26").await;
    let new = initialize(&url, ALICE, "2025-11-25").await;

    let r = send("POST", &url, Some(ALICE), Some(&new), "{\"jsonrpc\": \"2.0\", ", &[]).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_i64()), (StatusCode::BAD_REQUEST, Some(-32700)));

    let huge = call(1, "mock__add", json!({ "a": "x".repeat(4096) })).to_string();
    let r = send("POST", &url, Some(ALICE), Some(&new), &huge, &[]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);

    let dup = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"mock__add","arguments":{"a":1,"a":500,"b":1}}}"#;
    let r = send("POST", &url, Some(ALICE), Some(&new), dup, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("duplicate key"), "{}", r.body);

    let batch = json!([ { "jsonrpc": "2.0", "id": 1, "method": "ping" }, call(2, "mock__add", json!({ "a": 1, "b": 1 })),
                        { "jsonrpc": "2.0", "method": "notifications/initialized" } ]);
    let r = post(&url, ALICE, Some(&new), batch.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "no batches after 2025-03-26");
    let r = post(&url, ALICE, Some(&old), batch).await;
    assert_eq!(r.status, StatusCode::OK);
    let replies = r.json();
    assert_eq!(replies.as_array().unwrap().len(), 2, "{replies}");
    assert_eq!(text_of(&replies[1]), "2");

    let r = send("POST", &url, Some(ALICE), Some(&new), &json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }).to_string(), &[("mcp-protocol-version", "1999-01-01")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // server/discover without its protocol version in _meta: the headers cannot match the body
    let r = post(&url, ALICE, None, json!({ "jsonrpc": "2.0", "id": 9, "method": "server/discover", "params": {} })).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!((r.json()["id"].as_i64(), r.json()["error"]["code"].as_i64()), (Some(9), Some(-32020)));

    let r = post(&url, ALICE, Some(&new), json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "mock__add", "arguments": [1] } })).await;
    assert_eq!(r.json()["error"]["code"], -32602);
    let r = post(&url, ALICE, Some(&new), json!({ "jsonrpc": "2.0", "id": 1, "method": "resources/list" })).await;
    assert_eq!(r.json()["result"]["resources"], json!([]), "no resources: alice's entries grant none");
    let r = post(&url, ALICE, Some(&new), json!({ "jsonrpc": "2.0", "id": 1, "method": "sampling/createMessage" })).await;
    assert_eq!(r.json()["error"]["code"], -32601);
    let r = send("POST", &url, Some(ALICE), Some(&new), "{}", &[("content-type", "text/plain")]).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    assert!(w.upstream.calls.lock().unwrap().iter().all(|c| c["arguments"]["a"] != 500), "the duplicate-key call never reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_or_hanging_upstream_gives_an_error_within_its_timeout() {
    let w = world().await;
    let url = mcp(&w);
    let s = initialize(&url, ALICE, "2025-11-25").await;
    let t = Instant::now();
    let r = post(&url, ALICE, Some(&s), call(1, "dead__anything", json!({}))).await.json();
    assert!(r["error"]["message"].as_str().unwrap().contains("upstream dead"), "{r}");
    assert!(t.elapsed() < Duration::from_secs(3));

    let t = Instant::now();
    let r = post(&url, ALICE, Some(&s), call(2, "mock__slow", json!({}))).await.json();
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert!(t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // the gateway is still fine
    let ok = post(&url, ALICE, Some(&s), call(3, "mock__add", json!({ "a": 1, "b": 1 }))).await.json();
    assert_eq!(text_of(&ok), "2");
    let status = send("GET", &format!("{}/status", w.gw.admin_url), None, None, "", &[]).await.json();
    assert_eq!(status["ready"], true);
    let dead = status["servers"].as_array().unwrap().iter().find(|s| s["name"] == "dead").unwrap().clone();
    assert!(dead["last_error"].is_string(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn before_a_valid_snapshot_everything_is_refused() {
    let gw = Gateway::start_unready().await;
    assert_eq!(send("GET", &format!("{}/readyz", gw.url), None, None, "", &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(send("GET", &format!("{}/healthz", gw.url), None, None, "", &[]).await.status, StatusCode::OK);
    let r = send("POST", &format!("{}/mcp", gw.url), Some(ALICE), None, "{}", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}
