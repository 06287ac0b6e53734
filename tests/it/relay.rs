//! Resources, prompts, completion and logging through the gateway, under policy: an rmcp upstream
//! (the official Rust SDK) offering static resources, templates, prompts, completions and log
//! messages; the rmcp client and a raw client with a GET stream on the gateway's side. And the
//! upstream's requests to the client during a call (sampling, elicitation, roots): relayed to the
//! client of that call only, answered back.

// rmcp marks logging deprecated (SEP-2577, a future protocol); the protocols relayed have it.
#![allow(deprecated)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse::gateway::proxy::Config;
use gatehouse::gateway::secrets::SecretSource;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult, ContentBlock, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, ServerCapabilities, ServerConfig, SetLevelRequestParams, SubscribeRequestParams, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{Peer, RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::gateway::{Gateway, call, initialize, post, token_hash};
use crate::reconcile::open_stream;

const NARROW: &str = "narrow-relay-token-0123456789";
const WIDE: &str = "wide-relay-token-0123456789";
const TOOLS_ONLY: &str = "tools-only-relay-token-0123456789";

const DOC1: &str = "demo://resource/static/document/1";
const DOC2: &str = "demo://resource/static/document/2";
const SECRET: &str = "demo://resource/secret/keys";

/// What the upstream saw.
#[derive(Default)]
struct Seen {
    subscribed: Vec<String>,
    unsubscribed: Vec<String>,
    levels: Vec<String>,
    reads: Vec<String>,
    /// Every subscription: the peer (a gateway connection), its session id, the URI.
    subscribers: Vec<(Peer<RoleServer>, String, String)>,
}

/// An upstream like the reference "everything" server: static documents, a secret, two
/// templates, three prompts, completions, log messages; tools that make it notify.
#[derive(Clone, Default)]
struct Everything {
    seen: Arc<Mutex<Seen>>,
    /// Serve only `demo://resource/static/other/1`, no templates (a second server whose URIs
    /// share the scheme of the first).
    archive: bool,
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

impl ServerHandler for Everything {
    fn get_info(&self) -> ServerConfig {
        let caps: ServerCapabilities = from(json!({
            "tools": {}, "resources": { "subscribe": true, "listChanged": true }, "prompts": { "listChanged": true },
            "logging": {}, "completions": {},
        }));
        ServerConfig::new(caps)
    }

    async fn list_tools(&self, _: Option<PaginatedRequestParams>, _: RequestContext<RoleServer>) -> Result<ListToolsResult, ErrorData> {
        let schema = Arc::new(serde_json::Map::new());
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("touch", "Say a resource was updated (all: to every subscriber, whatever it subscribed to)", schema.clone()),
            Tool::new("lists_changed", "Say the resource and prompt lists changed", schema.clone()),
            Tool::new("log", "Send a log message", schema.clone()),
            Tool::new("ask", "Ask the client (kind: sampling, elicitation or roots) and return its answer", schema),
        ]))
    }

    async fn call_tool(&self, request: CallToolRequestParams, ctx: RequestContext<RoleServer>) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        match &*request.name {
            "touch" => {
                let uri = args["uri"].as_str().unwrap_or_default().to_string();
                let all = args["all"].as_bool().unwrap_or(false);
                let mut sessions = std::collections::HashSet::new();
                let subscribers: Vec<Peer<RoleServer>> = self
                    .seen
                    .lock()
                    .unwrap()
                    .subscribers
                    .iter()
                    .filter(|(_, s, u)| if all { sessions.insert(s.clone()) } else { *u == uri })
                    .map(|(p, _, _)| p.clone())
                    .collect();
                for p in subscribers {
                    let _ = p.notify_resource_updated(from(json!({ "uri": uri }))).await;
                }
            }
            "lists_changed" => {
                let _ = ctx.peer.notify_resource_list_changed().await;
                let _ = ctx.peer.notify_prompt_list_changed().await;
            }
            "log" => {
                let p = from(json!({ "level": args["level"], "logger": "db", "data": args["text"] }));
                let _ = ctx.peer.notify_logging_message(p).await;
            }
            "ask" => {
                let answer = match args["kind"].as_str() {
                    Some("sampling") => {
                        let p = from(json!({ "messages": [ { "role": "user", "content": { "type": "text", "text": "say hi" } } ], "maxTokens": 20 }));
                        ctx.peer.create_message(p).await.map(|r| serde_json::to_value(r).unwrap())
                    }
                    Some("elicitation") => {
                        let p = from(json!({ "mode": "form", "message": "your name?", "requestedSchema": { "type": "object", "properties": { "name": { "type": "string" } } } }));
                        // (rmcp's create_elicitation needs its "elicitation" feature: the request by hand)
                        let request = rmcp::model::ServerRequest::ElicitRequest(rmcp::model::ElicitRequest::new(p));
                        ctx.peer.send_request(request).await.map(|r| serde_json::to_value(r).unwrap())
                    }
                    _ => ctx.peer.list_roots().await.map(|r| serde_json::to_value(r).unwrap()),
                };
                return Ok(match answer {
                    Ok(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
                    Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("refused: {e}"))]),
                }
                .into());
            }
            _ => return Err(ErrorData::invalid_params("no such tool", None)),
        }
        Ok(CallToolResult::success(vec![ContentBlock::text("done")]).into())
    }

    async fn list_resources(&self, _: Option<PaginatedRequestParams>, _: RequestContext<RoleServer>) -> Result<ListResourcesResult, ErrorData> {
        if self.archive {
            return Ok(from(json!({ "resources": [ { "uri": "demo://resource/static/other/1", "name": "archived" } ] })));
        }
        Ok(from(json!({ "resources": [
            { "uri": DOC1, "name": "document-1", "mimeType": "text/plain" },
            { "uri": DOC2, "name": "document-2", "mimeType": "text/plain" },
            { "uri": SECRET, "name": "keys", "mimeType": "text/plain" },
        ] })))
    }

    async fn list_resource_templates(&self, _: Option<PaginatedRequestParams>, _: RequestContext<RoleServer>) -> Result<ListResourceTemplatesResult, ErrorData> {
        if self.archive {
            return Ok(from(json!({ "resourceTemplates": [] })));
        }
        Ok(from(json!({ "resourceTemplates": [
            { "uriTemplate": "demo://resource/static/document/{id}", "name": "document" },
            { "uriTemplate": "demo://resource/dynamic/{id}", "name": "dynamic" },
        ] })))
    }

    async fn read_resource(&self, request: ReadResourceRequestParams, _: RequestContext<RoleServer>) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        self.seen.lock().unwrap().reads.push(uri.clone());
        let text = match uri.as_str() {
            _ if self.archive => format!("archive {uri}"),
            SECRET => "the keys".to_string(),
            u if u.starts_with("demo://resource/static/document/") && u != "demo://resource/static/document/404" => format!("document {}", &u[32..]),
            u if u.starts_with("demo://resource/dynamic/") => "dynamic".to_string(),
            _ => return Err(ErrorData::resource_not_found("Resource not found", Some(json!({ "uri": uri })))),
        };
        let r: ReadResourceResult = from(json!({ "contents": [ { "uri": uri, "mimeType": "text/plain", "text": text } ] }));
        Ok(r.into())
    }

    async fn subscribe(&self, request: SubscribeRequestParams, ctx: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let mut seen = self.seen.lock().unwrap();
        seen.subscribed.push(request.uri.clone());
        let session = ctx.extensions.get::<http::request::Parts>().and_then(|p| p.headers.get("mcp-session-id")).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        seen.subscribers.push((ctx.peer, session, request.uri));
        Ok(())
    }

    async fn unsubscribe(&self, request: UnsubscribeRequestParams, _: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.seen.lock().unwrap().unsubscribed.push(request.uri);
        Ok(())
    }

    async fn list_prompts(&self, _: Option<PaginatedRequestParams>, _: RequestContext<RoleServer>) -> Result<ListPromptsResult, ErrorData> {
        Ok(from(json!({ "prompts": [
            { "name": "simple-prompt", "description": "A prompt without arguments" },
            { "name": "complex-prompt", "arguments": [ { "name": "temperature", "required": true }, { "name": "style" } ] },
            { "name": "secret-prompt" },
        ] })))
    }

    async fn get_prompt(&self, request: GetPromptRequestParams, _: RequestContext<RoleServer>) -> Result<GetPromptResponse, ErrorData> {
        let text = match request.name.as_str() {
            "simple-prompt" => "This is a simple prompt.".to_string(),
            "complex-prompt" => format!("temperature {}", request.arguments.unwrap_or_default().get("temperature").and_then(Value::as_str).unwrap_or("?")),
            "secret-prompt" => "the secret prompt".to_string(),
            _ => return Err(ErrorData::invalid_params("prompt not found", None)),
        };
        let r: GetPromptResult = from(json!({ "messages": [ { "role": "user", "content": { "type": "text", "text": text } } ] }));
        Ok(r.into())
    }

    async fn complete(&self, request: CompleteRequestParams, _: RequestContext<RoleServer>) -> Result<CompleteResult, ErrorData> {
        let r = serde_json::to_value(&request).unwrap();
        let values = match (r["ref"]["type"].as_str(), r["argument"]["name"].as_str()) {
            (Some("ref/prompt"), Some("style")) => json!(["casual", "formal"]),
            (Some("ref/resource"), Some("id")) => json!(["1", "2"]),
            _ => json!([]),
        };
        Ok(from(json!({ "completion": { "values": values, "hasMore": false } })))
    }

    async fn set_level(&self, request: SetLevelRequestParams, _: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.seen.lock().unwrap().levels.push(serde_json::to_value(request.level).unwrap().as_str().unwrap().to_string());
        Ok(())
    }
}

struct World {
    gw: Gateway,
    seen: Arc<Mutex<Seen>>,
}

/// A client that answers the upstream's requests: a model, a user, a root.
#[derive(Clone, Default)]
struct Answerer {
    asked: Arc<Mutex<Vec<String>>>,
}

impl rmcp::ClientHandler for Answerer {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        from(json!({ "protocolVersion": "2025-11-25", "capabilities": { "sampling": {}, "elicitation": {}, "roots": {} }, "clientInfo": { "name": "answerer", "version": "1" } }))
    }

    async fn create_message(&self, _: rmcp::model::CreateMessageRequestParams, _: RequestContext<RoleClient>) -> Result<rmcp::model::CreateMessageResult, ErrorData> {
        self.asked.lock().unwrap().push("sampling".into());
        Ok(from(json!({ "role": "assistant", "content": { "type": "text", "text": "hi from the model" }, "model": "test-model", "stopReason": "endTurn" })))
    }

    async fn create_elicitation(&self, _: rmcp::model::ElicitRequestParams, _: RequestContext<RoleClient>) -> Result<rmcp::model::ElicitResult, ErrorData> {
        self.asked.lock().unwrap().push("elicitation".into());
        Ok(from(json!({ "action": "accept", "content": { "name": "Ada" } })))
    }

    async fn list_roots(&self, _: RequestContext<RoleClient>) -> Result<rmcp::model::ListRootsResult, ErrorData> {
        self.asked.lock().unwrap().push("roots".into());
        Ok(from(json!({ "roots": [ { "uri": "file:///work/project", "name": "project" } ] })))
    }
}

async fn upstream(up: Everything) -> String {
    let service = StreamableHttpService::new(move || Ok(up.clone()), Arc::new(LocalSessionManager::default()), StreamableHttpServerConfig::default().with_sse_keep_alive(None));
    crate::rmcp_peer::serve(service, http::StatusCode::NOT_FOUND).await
}

/// `protocol: handshake`: these tests are about what the gateway relays over handshake-era
/// upstream sessions (subscriptions, log levels, the upstream's requests to the client), which
/// rmcp, offering 2026-07-28 too, would otherwise not be asked for.
fn server_file(name: &str, url: &str) -> String {
    format!("name: {name}\ntransport: streamable-http\nurl: {url}\ntimeout: 5s\nprotocol: handshake\nsupplier: {{ operated_by: internal }}\n")
}

async fn world() -> World {
    let up = Everything::default();
    let seen = up.seen.clone();
    let server = server_file("everything", &upstream(up).await);
    let narrow = format!(
        "identity: narrow\nkind: agent\nowner: o@x\ntokens: [ {{ sha256: {} }} ]\naccess:\n  - server: everything\n    tools: \"*\"\n    resources: [\"demo://resource/static/document/*\"]\n    prompts: [simple-prompt]\n",
        token_hash(NARROW)
    );
    let wide = format!("identity: wide\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: everything, tools: \"*\", resources: \"*\", prompts: \"*\" }} ]\n", token_hash(WIDE));
    let tools_only = format!("identity: tools-only\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: everything, tools: \"*\" }} ]\n", token_hash(TOOLS_ONLY));
    let gw = Gateway::start(
        &[("servers/everything.yaml", &server), ("grants/narrow.yaml", &narrow), ("grants/wide.yaml", &wide), ("grants/tools-only.yaml", &tools_only)],
        SecretSource::default(),
        Config::default(),
    )
    .await;
    World { gw, seen }
}

async fn client(url: &str, token: &str) -> RunningService<RoleClient, ()> {
    let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url).auth_header(token));
    ().serve(transport).await.expect("rmcp client initializes through the gateway")
}

/// The call records, once the outcome records queued so far are durable.
async fn records(gw: &Gateway) -> Vec<Value> {
    gw.store.flush().await.unwrap();
    let c = gw.store.reader().unwrap();
    let rows = gatehouse::record::audit::verify::canonical_records(&c).unwrap();
    rows.into_iter().map(|(text, _)| serde_json::from_str(&text).unwrap()).collect()
}

fn sha256(s: &str) -> String {
    token_hash(s)
}

/// The JSON-RPC messages that arrive on a GET stream within `ms` milliseconds.
async fn messages_within(rx: &mut mpsc::UnboundedReceiver<String>, ms: u64) -> Vec<Value> {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        text.push_str(&chunk);
    }
    text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect()
}

fn methods(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(|m| m["method"].as_str().unwrap_or("").to_string()).collect()
}

fn rpc(id: i64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_sees_reads_and_gets_only_what_its_patterns_and_names_allow() {
    let w = world().await;
    let c = client(&format!("{}/mcp", w.gw.url), NARROW).await;

    let uris: Vec<String> = c.list_all_resources().await.unwrap().into_iter().map(|r| r.uri.clone()).collect();
    assert_eq!(uris, [DOC1, DOC2], "the secret is not listed");
    let templates: Vec<String> = c.list_all_resource_templates().await.unwrap().into_iter().map(|t| t.uri_template.clone()).collect();
    assert_eq!(templates, ["demo://resource/static/document/{id}"], "a template that cannot produce an allowed URI is not listed");
    let prompts: Vec<String> = c.list_all_prompts().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(prompts, ["everything__simple-prompt"]);

    let read = |uri: &str| c.read_resource(ReadResourceRequestParams::new(uri));
    let text = |r: &ReadResourceResult| serde_json::to_value(r).unwrap()["contents"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(text(&read(DOC1).await.unwrap()), "document 1");
    assert_eq!(text(&read("demo://resource/static/document/77").await.unwrap()), "document 77", "a URI from the template is checked as itself");
    let denied = read(SECRET).await.unwrap_err().to_string();
    let unknown = read("demo://resource/nowhere").await.unwrap_err().to_string();
    assert!(denied.contains("-32002") && denied.contains("Resource not found"), "{denied}");
    assert_eq!(denied.replace(SECRET, "URI"), unknown.replace("demo://resource/nowhere", "URI"), "a denied resource reads as a missing one");
    let climb = read("demo://resource/static/document/../../secret/keys").await.unwrap_err().to_string();
    assert!(climb.contains("-32002"), "{climb}");
    let missing = read("demo://resource/static/document/404").await.unwrap_err().to_string();
    assert!(missing.contains("-32002"), "the upstream's own answer for an allowed URI: {missing}");
    assert!(!w.seen.lock().unwrap().reads.iter().any(|u| u.contains("secret") || u.contains("nowhere")), "refused reads never reach the upstream");

    let prompt = c.get_prompt(GetPromptRequestParams::new("everything__simple-prompt")).await.unwrap();
    assert_eq!(serde_json::to_value(&prompt).unwrap()["messages"][0]["content"]["text"], "This is a simple prompt.");
    let args = json!({ "temperature": "0.7 (a value that must not be recorded)" });
    let denied = c.get_prompt(GetPromptRequestParams::new("everything__complex-prompt").with_arguments(args.as_object().unwrap().clone())).await.unwrap_err().to_string();
    let unknown = c.get_prompt(GetPromptRequestParams::new("everything__no-such-prompt")).await.unwrap_err().to_string();
    assert!(denied.contains("-32602") && denied.contains("Unknown prompt: everything__complex-prompt"), "{denied}");
    assert_eq!(denied.replace("complex-prompt", "P"), unknown.replace("no-such-prompt", "P"));

    // completion: for a prompt and a template the caller may use, refused like a missing one otherwise
    assert_eq!(c.complete_resource_simple("demo://resource/static/document/{id}", "id", "").await.unwrap(), ["1", "2"]);
    let e = c.complete_resource_simple("demo://resource/dynamic/{id}", "id", "").await.unwrap_err().to_string();
    assert!(e.contains("-32002"), "{e}");
    assert_eq!(c.complete_prompt_simple("everything__simple-prompt", "style", "").await.unwrap(), ["casual", "formal"]);
    let e = c.complete_prompt_simple("everything__complex-prompt", "style", "").await.unwrap_err().to_string();
    assert!(e.contains("Unknown prompt"), "{e}");
    c.cancel().await.unwrap();

    // one server on its own endpoint: prompts keep their own names
    let one = client(&format!("{}/mcp/everything", w.gw.url), NARROW).await;
    let prompts: Vec<String> = one.list_all_prompts().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(prompts, ["simple-prompt"]);
    assert_eq!(text(&one.read_resource(ReadResourceRequestParams::new(DOC2)).await.unwrap()), "document 2");
    one.cancel().await.unwrap();

    // The call log: decision and outcome records, kind resource | prompt; never a URI's path or
    // an argument value.
    let recs = records(&w.gw).await;
    let all = serde_json::to_string(&recs).unwrap();
    assert!(!all.contains("secret/keys") && !all.contains("document/1") && !all.contains("must not be recorded"), "{all}");
    let of = |kind: &str, verdict: &str| recs.iter().filter(|r| r["kind"] == kind && r["verdict"] == verdict).cloned().collect::<Vec<Value>>();
    let reads = of("resource", "allow");
    assert_eq!(reads[0]["tool"], format!("demo://resource sha256:{}", sha256(DOC1)));
    assert_eq!((reads[0]["rule"].as_str(), reads[0]["outcome"].as_str()), (Some("grants/narrow.yaml#/access/0/resources/0"), Some("unknown")));
    assert_eq!(reads[1]["outcome"], "ok", "the outcome record follows");
    assert!(reads[0]["message"].as_str().unwrap().contains("(demo://resource/static/document/*)"), "the pattern that matched: {}", reads[0]);
    assert!(reads.iter().any(|r| r["outcome"] == "upstream_error"), "the missing document");
    let refused = of("resource", "deny");
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(refused[0]["tool"], format!("demo://resource sha256:{}", sha256(SECRET)));
    assert_eq!(refused[0]["rule"], "gatehouse:resource-not-granted");
    assert_eq!(refused[0]["server"], "", "no server's patterns allow it on /mcp");
    let gets = of("prompt", "allow");
    assert_eq!((gets[0]["tool"].as_str(), gets[0]["server"].as_str(), gets[0]["rule"].as_str()), (Some("simple-prompt"), Some("everything"), Some("grants/narrow.yaml#/access/0/prompts/0")));
    let refused = of("prompt", "deny");
    assert_eq!(refused.len(), 2);
    assert_eq!((refused[0]["tool"].as_str(), refused[0]["rule"].as_str()), (Some("complex-prompt"), Some("gatehouse:prompt-not-granted")));
    assert_eq!(refused[0]["arg_keys"], json!(["temperature"]));
    assert!(recs.iter().all(|r| r["category"].is_null() || r["kind"] == "tool"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_star_grant_sees_everything() {
    let w = world().await;
    let c = client(&format!("{}/mcp", w.gw.url), WIDE).await;
    let uris: Vec<String> = c.list_all_resources().await.unwrap().into_iter().map(|r| r.uri.clone()).collect();
    assert_eq!(uris, [DOC1, DOC2, SECRET]);
    assert_eq!(c.list_all_resource_templates().await.unwrap().len(), 2);
    let prompts: Vec<String> = c.list_all_prompts().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(prompts, ["everything__simple-prompt", "everything__complex-prompt", "everything__secret-prompt"]);
    let r = c.read_resource(ReadResourceRequestParams::new(SECRET)).await.unwrap();
    assert_eq!(serde_json::to_value(&r).unwrap()["contents"][0]["text"], "the keys");
    let args = json!({ "temperature": "0.2" });
    let p = c.get_prompt(GetPromptRequestParams::new("everything__complex-prompt").with_arguments(args.as_object().unwrap().clone())).await.unwrap();
    assert_eq!(serde_json::to_value(&p).unwrap()["messages"][0]["content"]["text"], "temperature 0.2");
    let recs = records(&w.gw).await;
    let read = recs.iter().find(|r| r["kind"] == "resource").unwrap();
    assert_eq!(read["rule"], "grants/wide.yaml#/access/0/resources");
    c.cancel().await.unwrap();

    // A grant of tools only: empty lists, and the upstream is not even asked.
    let t = client(&format!("{}/mcp", w.gw.url), TOOLS_ONLY).await;
    assert!(t.list_all_resources().await.unwrap().is_empty());
    assert!(t.list_all_resource_templates().await.unwrap().is_empty());
    assert!(t.list_all_prompts().await.unwrap().is_empty());
    assert!(t.read_resource(ReadResourceRequestParams::new(DOC1)).await.unwrap_err().to_string().contains("-32002"));
    t.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_reach_only_the_sessions_that_may_have_them() {
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    let a = initialize(&url, NARROW, "2025-11-25").await; // subscribes
    let b = initialize(&url, WIDE, "2025-11-25").await; // subscribes, another grant
    let idle = initialize(&url, NARROW, "2025-11-25").await; // same grant, never subscribes
    let (mut sa, mut sb, mut sidle) = (open_stream(&url, NARROW, &a).await, open_stream(&url, WIDE, &b).await, open_stream(&url, NARROW, &idle).await);

    let ok = |r: crate::gateway::Reply| assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    ok(post(&url, NARROW, Some(&a), rpc(1, "resources/subscribe", json!({ "uri": DOC1 }))).await);
    let refused = post(&url, NARROW, Some(&a), rpc(2, "resources/subscribe", json!({ "uri": SECRET }))).await.json();
    assert_eq!((refused["error"]["code"].as_i64(), refused["error"]["message"].as_str()), (Some(-32002), Some("Resource not found")));
    ok(post(&url, WIDE, Some(&b), rpc(3, "resources/subscribe", json!({ "uri": DOC1 }))).await);
    ok(post(&url, WIDE, Some(&b), rpc(4, "resources/subscribe", json!({ "uri": SECRET }))).await);
    assert_eq!(w.seen.lock().unwrap().subscribed, [DOC1, DOC1, SECRET], "the refused subscription never reached the upstream");

    // The upstream says DOC1 changed to every connection that subscribed to it.
    let r = post(&url, WIDE, Some(&b), call(5, "everything__touch", json!({ "uri": DOC1 }))).await;
    assert_eq!(r.json()["result"]["isError"], json!(false), "{}", r.body);
    let (ma, mb, midle) = (messages_within(&mut sa, 1000).await, messages_within(&mut sb, 300).await, messages_within(&mut sidle, 300).await);
    assert_eq!(methods(&ma), ["notifications/resources/updated"]);
    assert_eq!(ma[0]["params"]["uri"], DOC1);
    assert_eq!(methods(&mb), ["notifications/resources/updated"]);
    assert!(midle.is_empty(), "a session of the same grant that did not subscribe: {midle:?}");

    // An upstream that tells every subscriber of anything that SECRET changed: the gateway passes
    // it only to the session that subscribed to it and may read it.
    post(&url, WIDE, Some(&b), call(6, "everything__touch", json!({ "uri": SECRET, "all": true }))).await;
    let (ma, mb) = (messages_within(&mut sa, 1000).await, messages_within(&mut sb, 300).await);
    assert!(ma.is_empty(), "narrow may not read the secret: {ma:?}");
    assert_eq!(methods(&mb), ["notifications/resources/updated"]);
    assert_eq!(mb[0]["params"]["uri"], SECRET);

    // Unsubscribing: the upstream hears of it once the grant's last session drops it.
    ok(post(&url, NARROW, Some(&a), rpc(7, "resources/unsubscribe", json!({ "uri": DOC1 }))).await);
    ok(post(&url, NARROW, Some(&a), rpc(8, "resources/unsubscribe", json!({ "uri": SECRET }))).await);
    assert_eq!(w.seen.lock().unwrap().unsubscribed, [DOC1], "an unsubscription the session never held is not forwarded");
    post(&url, WIDE, Some(&b), call(9, "everything__touch", json!({ "uri": DOC1 }))).await;
    assert!(messages_within(&mut sa, 500).await.is_empty());
    assert_eq!(methods(&messages_within(&mut sb, 500).await), ["notifications/resources/updated"]);

    // list_changed of resources and prompts reaches the grant's sessions that may have them.
    post(&url, NARROW, Some(&a), call(10, "everything__lists_changed", json!({}))).await;
    let (ma, midle) = (messages_within(&mut sa, 1000).await, messages_within(&mut sidle, 300).await);
    assert_eq!(methods(&ma), ["notifications/resources/list_changed", "notifications/prompts/list_changed"]);
    assert_eq!(methods(&midle), methods(&ma));
    assert!(messages_within(&mut sb, 300).await.is_empty(), "another grant's connection said nothing");
    let t = initialize(&url, TOOLS_ONLY, "2025-11-25").await;
    let mut st = open_stream(&url, TOOLS_ONLY, &t).await;
    post(&url, TOOLS_ONLY, Some(&t), call(11, "everything__lists_changed", json!({}))).await;
    assert!(messages_within(&mut st, 800).await.is_empty(), "a grant of tools only hears of no resource or prompt list");
}

#[tokio::test(flavor = "multi_thread")]
async fn log_levels_reach_the_upstream_and_messages_come_back_tagged() {
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    let a = initialize(&url, NARROW, "2025-11-25").await;
    let quiet = initialize(&url, NARROW, "2025-11-25").await;
    let (mut sa, mut squiet) = (open_stream(&url, NARROW, &a).await, open_stream(&url, NARROW, &quiet).await);
    let bad = post(&url, NARROW, Some(&a), rpc(1, "logging/setLevel", json!({ "level": "loud" }))).await.json();
    assert_eq!(bad["error"]["code"], -32602);
    let r = post(&url, NARROW, Some(&a), rpc(2, "logging/setLevel", json!({ "level": "warning" }))).await.json();
    assert_eq!(r["result"], json!({}), "{r}");
    assert_eq!(w.seen.lock().unwrap().levels, ["warning"], "the level reached the upstream");

    post(&url, NARROW, Some(&a), call(3, "everything__log", json!({ "level": "error", "text": "disk full" }))).await;
    let ma = messages_within(&mut sa, 1000).await;
    assert_eq!(methods(&ma), ["notifications/message"]);
    assert_eq!(ma[0]["params"], json!({ "level": "error", "logger": "everything/db", "data": "disk full" }));
    assert!(messages_within(&mut squiet, 300).await.is_empty(), "a session that set no level gets no log messages");
    post(&url, NARROW, Some(&a), call(4, "everything__log", json!({ "level": "info", "text": "chatter" }))).await;
    assert!(messages_within(&mut sa, 500).await.is_empty(), "below the session's level");

    // A second session asking for more lowers the upstream's level; each session keeps its own.
    post(&url, NARROW, Some(&quiet), rpc(5, "logging/setLevel", json!({ "level": "debug" }))).await;
    assert_eq!(w.seen.lock().unwrap().levels, ["warning", "debug"]);
    post(&url, NARROW, Some(&a), call(6, "everything__log", json!({ "level": "info", "text": "chatter" }))).await;
    assert_eq!(methods(&messages_within(&mut squiet, 1000).await), ["notifications/message"]);
    assert!(messages_within(&mut sa, 300).await.is_empty());

    // On a server's own endpoint the logger is the upstream's own.
    let one = format!("{}/mcp/everything", w.gw.url);
    let s = initialize(&one, NARROW, "2025-11-25").await;
    let mut ss = open_stream(&one, NARROW, &s).await;
    post(&one, NARROW, Some(&s), rpc(7, "logging/setLevel", json!({ "level": "error" }))).await;
    post(&one, NARROW, Some(&s), call(8, "log", json!({ "level": "critical", "text": "down" }))).await;
    let ms = messages_within(&mut ss, 1000).await;
    assert_eq!(ms[0]["params"]["logger"], "db");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_mcp_a_uri_goes_to_the_server_that_offers_it() {
    // Two servers whose URIs share a scheme, both fully granted: a read goes to the first (by
    // name) that lists the URI, else to one with a template it fits, and is recorded there.
    let archive = Everything { archive: true, ..Everything::default() };
    let archive_seen = archive.seen.clone();
    let everything = Everything::default();
    let everything_seen = everything.seen.clone();
    let (a, e) = (upstream(archive).await, upstream(everything).await);
    let grant = format!("identity: wide\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess:\n  - {{ server: archive, resources: \"*\" }}\n  - {{ server: everything, resources: [\"demo://**\"] }}\n", token_hash(WIDE));
    let gw = Gateway::start(
        &[("servers/archive.yaml", &server_file("archive", &a)), ("servers/everything.yaml", &server_file("everything", &e)), ("grants/wide.yaml", &grant)],
        SecretSource::default(),
        Config::default(),
    )
    .await;
    let c = client(&format!("{}/mcp", gw.url), WIDE).await;
    let uris: Vec<String> = c.list_all_resources().await.unwrap().into_iter().map(|r| r.uri.clone()).collect();
    assert_eq!(uris, ["demo://resource/static/other/1", DOC1, DOC2, SECRET]);
    let text = |r: ReadResourceResult| serde_json::to_value(r).unwrap()["contents"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(text(c.read_resource(ReadResourceRequestParams::new(DOC1)).await.unwrap()), "document 1", "listed by everything only");
    assert_eq!(text(c.read_resource(ReadResourceRequestParams::new("demo://resource/static/other/1")).await.unwrap()), "archive demo://resource/static/other/1");
    assert_eq!(text(c.read_resource(ReadResourceRequestParams::new("demo://resource/static/document/77")).await.unwrap()), "document 77", "fits everything's template");
    assert_eq!(archive_seen.lock().unwrap().reads, ["demo://resource/static/other/1"]);
    assert_eq!(everything_seen.lock().unwrap().reads, [DOC1, "demo://resource/static/document/77"]);
    let servers: Vec<String> = records(&gw).await.iter().filter(|r| r["outcome"] == "ok").map(|r| r["server"].as_str().unwrap().to_string()).collect();
    assert_eq!(servers, ["everything", "archive", "everything"]);
    c.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_changes_patterns_or_prompt_names_says_the_lists_changed() {
    use gatehouse::gateway::proxy::{Active, snapshot_changed};
    use gatehouse::repo::{Files, compile};
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    let s = initialize(&url, NARROW, "2025-11-25").await;
    let mut stream = open_stream(&url, NARROW, &s).await;
    let old = w.gw.state.active.load_full().unwrap();
    let swap = |narrow: String| {
        let server = "name: everything\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\n".to_string();
        let files = [("servers/everything.yaml", server), ("grants/narrow.yaml", narrow)];
        let snapshot = Arc::new(compile(&Files::from_memory(files.iter().map(|(p, t)| (*p, t.as_str())))).unwrap().snapshot);
        Active { snapshot, secrets: old.secrets.clone() }
    };
    let grant = |resources: &str, prompts: &str| {
        format!("identity: narrow\nkind: agent\nowner: o@x\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: everything, tools: \"*\", resources: {resources}, prompts: {prompts} }} ]\n", token_hash(NARROW))
    };
    w.gw.state.activate(swap(grant("[\"demo://resource/static/document/*\"]", "[simple-prompt]")));
    snapshot_changed(&w.gw.state, Some(&old));
    assert!(messages_within(&mut stream, 300).await.is_empty(), "the same patterns and names");
    let before = w.gw.state.active.load_full().unwrap();
    w.gw.state.activate(swap(grant("[\"demo://resource/**\"]", "[simple-prompt, complex-prompt]")));
    snapshot_changed(&w.gw.state, Some(&before));
    let m = messages_within(&mut stream, 500).await;
    assert_eq!(methods(&m), ["notifications/resources/list_changed", "notifications/prompts/list_changed"]);
}

fn call_text(r: &CallToolResult) -> (bool, String) {
    let v = serde_json::to_value(r).unwrap();
    (v["isError"] == json!(true), v["content"][0]["text"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_elicitation_and_roots_reach_the_client_of_the_call_and_the_answer_goes_back() {
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    // Another grant's session, able to answer everything, listening on its GET stream.
    let init = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": { "protocolVersion": "2025-11-25",
        "capabilities": { "sampling": {}, "elicitation": {}, "roots": {} }, "clientInfo": { "name": "bystander", "version": "1" } } });
    let other = post(&url, NARROW, None, init).await.session();
    let mut other_stream = open_stream(&url, NARROW, &other).await;

    let answerer = Answerer::default();
    let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(WIDE));
    let c = answerer.clone().serve(transport).await.expect("rmcp client initializes through the gateway");
    for (kind, expect) in [("sampling", "hi from the model"), ("elicitation", "Ada"), ("roots", "file:///work/project")] {
        let args = json!({ "kind": kind }).as_object().unwrap().clone();
        let r = c.call_tool(CallToolRequestParams::new("everything__ask").with_arguments(args)).await.unwrap();
        let (is_error, text) = call_text(&r);
        assert!(!is_error && text.contains(expect), "{kind}: {text}");
    }
    assert_eq!(*answerer.asked.lock().unwrap(), ["sampling", "elicitation", "roots"]);
    assert!(messages_within(&mut other_stream, 300).await.is_empty(), "another grant's session never sees the requests");
    c.cancel().await.unwrap();

    let recs = records(&w.gw).await;
    let relayed: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "server_request").collect();
    let summary: Vec<(String, String, String)> = relayed.iter().map(|r| (r["tool"].as_str().unwrap().into(), r["verdict"].as_str().unwrap().into(), r["outcome"].as_str().unwrap().into())).collect();
    let pair = |m: &str| [(m.to_string(), "allow".to_string(), "unknown".to_string()), (m.to_string(), "allow".to_string(), "ok".to_string())];
    assert_eq!(summary, [pair("sampling/createMessage"), pair("elicitation/create"), pair("roots/list")].concat(), "{relayed:?}");
    assert!(relayed.iter().all(|r| r["rule"] == "gatehouse:call-in-progress" && r["server"] == "everything" && r["identity"] == "wide"));
    let keys = &relayed[0]["arg_keys"];
    assert!(keys.as_array().unwrap().contains(&json!("maxTokens")) && !keys.to_string().contains("progressToken"), "parameter keys, never values, no upstream progress token: {keys}");
    assert!(!serde_json::to_string(&recs).unwrap().contains("say hi"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_goes_to_the_get_stream_without_a_call_stream_and_is_refused_to_a_client_without_the_capability() {
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    let init = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": { "protocolVersion": "2025-11-25",
        "capabilities": { "roots": {} }, "clientInfo": { "name": "raw", "version": "1" } } });
    let s = post(&url, WIDE, None, init).await.session();
    let mut stream = open_stream(&url, WIDE, &s).await;
    // A client that takes JSON only: the request comes on its GET stream, with the gateway's id.
    let call_url = url.clone();
    let sid = s.clone();
    let pending = tokio::spawn(async move {
        let body = call(7, "everything__ask", json!({ "kind": "roots" })).to_string();
        crate::gateway::send("POST", &call_url, Some(WIDE), Some(&sid), &body, &[("accept", "application/json")]).await
    });
    let mut asked = Vec::new();
    for _ in 0..20 {
        asked = messages_within(&mut stream, 250).await;
        if !asked.is_empty() {
            break;
        }
    }
    assert_eq!(methods(&asked), ["roots/list"], "{asked:?}");
    let id = asked[0]["id"].clone();
    assert!(id.as_str().is_some_and(|i| i.starts_with("gatehouse-")), "the gateway's own id: {id}");
    // An answer from another grant's session, or to an id never sent, goes nowhere.
    let other = initialize(&url, NARROW, "2025-11-25").await;
    let stray = post(&url, NARROW, Some(&other), json!({ "jsonrpc": "2.0", "id": id, "result": { "roots": [ { "uri": "file:///elsewhere" } ] } })).await;
    assert_eq!(stray.status, http::StatusCode::ACCEPTED);
    let answer = post(&url, WIDE, Some(&s), json!({ "jsonrpc": "2.0", "id": id, "result": { "roots": [ { "uri": "file:///raw/root" } ] } })).await;
    assert_eq!(answer.status, http::StatusCode::ACCEPTED, "{}", answer.body);
    let r = pending.await.unwrap().json();
    let text = r["result"]["content"][0]["text"].as_str().unwrap().to_string();
    assert!(text.contains("file:///raw/root") && !text.contains("elsewhere"), "{r}");

    // This client never declared sampling: the upstream hears a refusal, and it is recorded.
    let r = post(&url, WIDE, Some(&s), call(8, "everything__ask", json!({ "kind": "sampling" }))).await.json();
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    assert!(r["result"]["content"][0]["text"].as_str().unwrap().contains("does not support sampling/createMessage"), "{r}");
    // A session with the capability but neither an event stream for the call nor a GET stream.
    let init = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": { "protocolVersion": "2025-11-25",
        "capabilities": { "roots": {} }, "clientInfo": { "name": "raw", "version": "1" } } });
    let quiet = post(&url, WIDE, None, init).await.session();
    let body = call(9, "everything__ask", json!({ "kind": "roots" })).to_string();
    let r = crate::gateway::send("POST", &url, Some(WIDE), Some(&quiet), &body, &[("accept", "application/json")]).await.json();
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    let recs = records(&w.gw).await;
    let refused: Vec<(&str, &str)> = recs.iter().filter(|r| r["kind"] == "server_request" && r["verdict"] == "deny").map(|r| (r["tool"].as_str().unwrap(), r["rule"].as_str().unwrap())).collect();
    assert_eq!(refused, [("sampling/createMessage", "gatehouse:client-capability"), ("roots/list", "gatehouse:no-client-stream")]);
}

/// A 2026-07-28 request (no session): the envelope in `_meta`, the headers mirroring the body.
async fn stateless(url: &str, token: &str, id: i64, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({ "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {} });
    let name = params.get("name").or_else(|| params.get("uri")).and_then(Value::as_str).map(str::to_string);
    let mut headers = vec![("mcp-protocol-version", "2026-07-28"), ("mcp-method", method)];
    if let Some(n) = &name {
        headers.push(("mcp-name", n.as_str()));
    }
    let r = crate::gateway::send("POST", url, Some(token), None, &rpc(id, method, params).to_string(), &headers).await;
    assert!(r.headers.get("mcp-session-id").is_none());
    r.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stateless_client_sees_reads_and_gets_what_a_session_of_its_grant_would() {
    let w = world().await;
    let url = format!("{}/mcp", w.gw.url);
    let list = stateless(&url, NARROW, 1, "resources/list", json!({})).await;
    let uris: Vec<&str> = list["result"]["resources"].as_array().unwrap().iter().map(|r| r["uri"].as_str().unwrap()).collect();
    assert_eq!(uris, [DOC1, DOC2], "the secret is not listed");
    assert_eq!((list["result"]["resultType"].as_str(), list["result"]["cacheScope"].as_str()), (Some("complete"), Some("private")));
    let read = stateless(&url, NARROW, 2, "resources/read", json!({ "uri": DOC1 })).await;
    assert_eq!(read["result"]["contents"][0]["text"], "document 1", "{read}");
    assert_eq!(read["result"]["ttlMs"], 0);
    let denied = stateless(&url, NARROW, 3, "resources/read", json!({ "uri": SECRET })).await;
    let missing = stateless(&url, NARROW, 4, "resources/read", json!({ "uri": "demo://resource/nowhere" })).await;
    assert_eq!(denied["error"]["code"], -32602, "2026-07-28 spells not found -32602: {denied}");
    assert_eq!(denied["error"]["message"], missing["error"]["message"], "a denied resource reads as a missing one");
    let prompts = stateless(&url, NARROW, 5, "prompts/list", json!({})).await;
    assert_eq!(prompts["result"]["prompts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect::<Vec<_>>(), ["everything__simple-prompt"]);
    let got = stateless(&url, NARROW, 6, "prompts/get", json!({ "name": "everything__simple-prompt" })).await;
    assert_eq!(got["result"]["messages"][0]["content"]["text"], "This is a simple prompt.");
    let refused = stateless(&url, NARROW, 7, "prompts/get", json!({ "name": "everything__complex-prompt" })).await;
    assert_eq!((refused["error"]["code"].as_i64(), refused["error"]["message"].as_str()), (Some(-32602), Some("Unknown prompt: everything__complex-prompt")));
    assert!(!w.seen.lock().unwrap().reads.iter().any(|u| u.contains("secret")), "a refused read never reaches the upstream");

    // recorded like a session's, each request under its own reference
    let recs = records(&w.gw).await;
    let kinds: Vec<(&str, &str, &str)> = recs.iter().map(|r| (r["kind"].as_str().unwrap(), r["verdict"].as_str().unwrap(), r["outcome"].as_str().unwrap())).collect();
    assert_eq!(kinds, [
        ("resource", "allow", "unknown"), ("resource", "allow", "ok"), ("resource", "deny", "denied"), ("resource", "deny", "denied"),
        ("prompt", "allow", "unknown"), ("prompt", "allow", "ok"), ("prompt", "deny", "denied"),
    ]);
    assert_eq!(recs[0]["session"], recs[1]["session"]);
    assert_ne!(recs[1]["session"], recs[2]["session"]);
    assert!(recs.iter().all(|r| r["session"].as_str().unwrap().starts_with("req-")));
}
