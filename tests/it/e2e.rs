//! End to end with real MCP peers nobody here wrote the protocol code of: the official Rust SDK
//! (rmcp) as the client, connecting to the gateway over Streamable HTTP with a grant token, and
//! as the upstream, over Streamable HTTP and over stdio; plus this crate's example upstream.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gatehouse::gateway::proxy::Config;
use gatehouse::gateway::secrets::SecretSource;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

use crate::gateway::{Gateway, call as call_msg, initialize, post, send, token_hash};
use crate::rmcp_peer::rmcp;

const TOKEN: &str = "rmcp-client-token-0123456789";
const NARROW: &str = "narrow-client-token-0123456789";

/// The rmcp stdio server built from examples/rmcp_stdio_upstream.rs by `cargo test`.
fn rmcp_stdio_upstream() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_gatehouse"));
    let path = bin.parent().unwrap().join("examples/rmcp_stdio_upstream");
    assert!(path.exists(), "{} is missing: run `cargo test` (which builds examples) or `cargo build --examples`", path.display());
    path
}

async fn world() -> Gateway {
    world_watching().await.0
}

/// The gateway, and the flag the rmcp upstream sets when a call was cancelled.
async fn world_watching() -> (Gateway, Arc<AtomicBool>) {
    let peer = rmcp(true, http::StatusCode::NOT_FOUND).await;
    let http = peer.url.clone();
    let rmcp_http = format!("name: api\ntransport: streamable-http\nurl: {http}\ntimeout: 5s\nsupplier: {{ operated_by: internal }}\n");
    let rmcp_stdio = format!(
        "name: words\ntransport: stdio\ncommand: [{}]\ntimeout: 5s\nsupplier: {{ operated_by: internal }}\n",
        rmcp_stdio_upstream().display()
    );
    let files = format!(
        "name: files\ntransport: stdio\ncommand: [{}, example-upstream, files]\ntimeout: 5s\nsupplier: {{ operated_by: internal }}\n",
        env!("CARGO_BIN_EXE_gatehouse")
    );
    let api_policy = "version: \"1\"\ndefault: deny\nhide: [drop_everything]\ntools:\n  add: {}\n  count: {}\n  sleep: {}\n  echo:\n    deny_if: [ { name: no secrets, message: do not echo secrets, conditions: [ { path: args.text, op: contains, value: secret } ] } ]\n";
    let files_policy = "version: \"1\"\ntools:\n  list_directory: {}\n  read_file:\n    require: [ { path: args.path, op: path_within, value: [/srv/projects] } ]\n";
    let grant = format!(
        "identity: agent\nkind: agent\nowner: o@x\ntokens: [ {{ sha256: {} }} ]\naccess:\n  - {{ server: api, tools: \"*\", policy: policies/api.yaml }}\n  - {{ server: words, tools: [shout] }}\n  - {{ server: files, tools: \"*\", policy: policies/files.yaml }}\n",
        token_hash(TOKEN)
    );
    let narrow = format!("identity: narrow\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: words, tools: [env_names] }} ]\n", token_hash(NARROW));
    let gw = Gateway::start(
        &[
            ("servers/api.yaml", &rmcp_http),
            ("servers/words.yaml", &rmcp_stdio),
            ("servers/files.yaml", &files),
            ("policies/api.yaml", api_policy),
            ("policies/files.yaml", files_policy),
            ("grants/agent.yaml", &grant),
            ("grants/narrow.yaml", &narrow),
        ],
        SecretSource::default(),
        Config::default(),
    )
    .await;
    (gw, peer.cancelled)
}

async fn client(url: &str, token: &str) -> Result<RunningService<RoleClient, ()>, String> {
    let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url).auth_header(token));
    ().serve(transport).await.map_err(|e| e.to_string())
}

async fn call(c: &RunningService<RoleClient, ()>, name: &str, args: Value) -> Result<CallToolResult, String> {
    let params = CallToolRequestParams::new(name.to_string()).with_arguments(args.as_object().unwrap().clone());
    c.call_tool(params).await.map_err(|e| e.to_string())
}

fn text(r: &CallToolResult) -> String {
    let v = serde_json::to_value(r).unwrap();
    v["content"][0]["text"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_rust_sdk_through_the_gateway() {
    let gw = world().await;
    let c = client(&format!("{}/mcp", gw.url), TOKEN).await.expect("rmcp client initializes through the gateway");
    let mut names: Vec<String> = c.list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["api__add", "api__count", "api__echo", "api__sleep", "files__list_directory", "files__read_file", "words__shout"]);

    // rmcp upstream over Streamable HTTP
    assert_eq!(text(&call(&c, "api__add", json!({ "a": 20, "b": 22 })).await.unwrap()), "42");
    let denied = call(&c, "api__echo", json!({ "text": "the secret plan" })).await.unwrap();
    assert_eq!(denied.is_error, Some(true));
    assert!(text(&denied).starts_with("denied by policy: do not echo secrets (rule policies/api.yaml#/tools/echo/deny_if/no secrets, commit worktree)"), "{}", text(&denied));
    let hidden = call(&c, "api__drop_everything", json!({})).await.unwrap_err();
    assert!(hidden.contains("Unknown tool: api__drop_everything"), "{hidden}");

    // rmcp upstream over stdio
    assert_eq!(text(&call(&c, "words__shout", json!({ "text": "hi" })).await.unwrap()), "HI");

    // the example upstream over stdio, with a path rule
    let ok = call(&c, "files__read_file", json!({ "path": "/srv/projects/app/README.md" })).await.unwrap();
    assert!(text(&ok).contains("A sample project"), "{}", text(&ok));
    let climb = call(&c, "files__read_file", json!({ "path": "/srv/projects/../../etc/passwd" })).await.unwrap();
    assert_eq!(climb.is_error, Some(true));
    assert!(text(&climb).contains("rule policies/files.yaml#/tools/read_file/require/0"), "{}", text(&climb));
    c.cancel().await.unwrap();

    // one server on its own endpoint, tools under their own names
    let one = client(&format!("{}/mcp/api", gw.url), TOKEN).await.unwrap();
    let mut names: Vec<String> = one.list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["add", "count", "echo", "sleep"]);
    assert_eq!(text(&call(&one, "add", json!({ "a": 1, "b": 1 })).await.unwrap()), "2");
    one.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_child_gets_only_the_registered_environment_and_a_bad_token_gets_nothing() {
    let gw = world().await;
    let c = client(&format!("{}/mcp", gw.url), NARROW).await.unwrap();
    let names = text(&call(&c, "words__env_names", json!({})).await.unwrap());
    // The gateway's own environment (where GATEHOUSE_SECRET_* live) never reaches a child.
    for name in names.split(',') {
        assert!(matches!(name, "PATH" | "HOME" | "LANG"), "unexpected variable {name} in {names}");
    }
    c.cancel().await.unwrap();
    assert!(client(&format!("{}/mcp", gw.url), "forged-token").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_is_relayed_with_the_clients_token_over_sse() {
    let gw = world().await;
    let url = format!("{}/mcp", gw.url);
    let s = initialize(&url, TOKEN, "2025-11-25").await;
    let mut msg = call_msg(7, "api__count", json!({}));
    msg["params"]["_meta"] = json!({ "progressToken": "client-token-7" });
    let r = send("POST", &url, Some(TOKEN), Some(&s), &msg.to_string(), &[]).await;
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events: Vec<Value> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.len(), 4, "{}", r.body);
    for (i, e) in events[..3].iter().enumerate() {
        assert_eq!(e["method"], "notifications/progress");
        assert_eq!(e["params"]["progressToken"], "client-token-7", "the client's own token, not the gateway's");
        assert_eq!(e["params"]["progress"], (i + 1) as f64);
    }
    assert_eq!(events[3]["id"], 7);
    assert_eq!(events[3]["result"]["content"][0]["text"], "counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_call_is_cancelled_upstream() {
    let (gw, cancelled) = world_watching().await;
    let url = format!("{}/mcp", gw.url);
    let s = initialize(&url, TOKEN, "2025-11-25").await;
    let (u, s2) = (url.clone(), s.clone());
    let started = Instant::now();
    let slow = tokio::spawn(async move { post(&u, TOKEN, Some(&s2), call_msg(41, "api__sleep", json!({ "ms": 4000 }))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let note = json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": 41, "reason": "user" } });
    assert_eq!(post(&url, TOKEN, Some(&s), note).await.status, http::StatusCode::ACCEPTED);
    let reply = slow.await.unwrap().json();
    assert_eq!(reply["error"]["code"], -32800, "{reply}");
    assert!(started.elapsed() < Duration::from_secs(3));
    for _ in 0..50 {
        if cancelled.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the upstream never saw the cancellation");
}
