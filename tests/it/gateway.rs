//! Scenario helpers for the proxy: a gateway running in-process on 127.0.0.1:0 with a policy
//! repository given as files, a raw MCP-over-HTTP client, and a mock upstream that records the
//! headers it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::gateway::proxy::{self, Active, Config, State};
use gatehouse::repo::{Files, compile};
use gatehouse::gateway::secrets::{SecretSource, bind};
use gatehouse::record::store::Store;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A gateway serving on a loopback port until dropped.
pub struct Gateway {
    pub url: String,
    /// The admin listener (`/status`, `/metrics`, `POST /-/reconcile`).
    pub admin_url: String,
    pub state: Arc<State>,
    /// The state database (call log, quotas) of this gateway.
    pub store: Store,
    pub data: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

/// What the gateway answered.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// The hex sha256 of a token, as written in grants.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Gateway {
    /// Compiles `files`, binds secrets from `secrets`, and serves with `config`.
    pub async fn start(files: &[(&str, &str)], secrets: SecretSource, config: Config) -> Gateway {
        let compiled = compile(&Files::from_memory(files.iter().copied())).unwrap_or_else(|d| panic!("{d}"));
        let snapshot = Arc::new(compiled.snapshot);
        let secrets = Arc::new(bind(&snapshot, &secrets).unwrap_or_else(|e| panic!("{e:?}")));
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let state = Arc::new(State::with_store(config, store.clone()));
        state.activate(Active { snapshot, secrets });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            proxy::serve(listener, st, async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
        });
        let admin_url = spawn_admin(&state).await;
        Gateway { url: format!("http://{addr}"), admin_url, state, store, data, stop: Some(stop) }
    }

    /// A gateway with no snapshot active yet.
    pub async fn start_unready() -> Gateway {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let state = Arc::new(State::with_store(Config::default(), store.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move { proxy::serve(listener, st, async { let _ = stopped.await; }).await.unwrap() });
        let admin_url = spawn_admin(&state).await;
        Gateway { url: format!("http://{addr}"), admin_url, state, store, data, stop: Some(stop) }
    }
}

/// Serves the admin endpoints of `state` on a loopback port for the rest of the test; its URL.
pub async fn spawn_admin(state: &Arc<State>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(proxy::serve_admin(listener, state.clone(), std::future::pending()));
    url
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn session(&self) -> String {
        self.headers.get("mcp-session-id").expect("a session id").to_str().unwrap().to_string()
    }
}

/// Sends one HTTP request with optional bearer token and session.
pub async fn send(method: &str, url: &str, token: Option<&str>, session: Option<&str>, body: &str, extra: &[(&str, &str)]) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let mut req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    for (k, v) in extra {
        // extra headers replace the defaults above
        req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Reply { status, headers, body }
}

pub async fn post(url: &str, token: &str, session: Option<&str>, body: Value) -> Reply {
    send("POST", url, Some(token), session, &body.to_string(), &[]).await
}

/// initialize with `version`; returns the session id.
pub async fn initialize(url: &str, token: &str, version: &str) -> String {
    let r = post(
        url,
        token,
        None,
        json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {}, "clientInfo": { "name": "it", "version": "1" } } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.session()
}

pub fn call(id: i64, name: &str, args: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": name, "arguments": args } })
}

/// A minimal Streamable HTTP MCP upstream (JSON answers) that records the headers of every
/// request. Tools: `echo_headers`, `add`, `slow` (sleeps 10 s), `delete_all`.
pub struct MockUpstream {
    pub url: String,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    pub calls: Arc<Mutex<Vec<Value>>>,
}

impl MockUpstream {
    pub async fn start() -> MockUpstream {
        MockUpstream::serve(false).await
    }

    /// An upstream that speaks only 2026-07-28: `server/discover`, every request with the
    /// `_meta` envelope (else -32020), no session, `initialize` refused.
    pub async fn start_modern() -> MockUpstream {
        MockUpstream::serve(true).await
    }

    async fn serve(modern: bool) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (seen.clone(), calls.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (s, c) = (s.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| mock_handle(req, s.clone(), c.clone(), modern));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        MockUpstream { url: format!("http://{addr}/mcp"), seen, calls }
    }
}

async fn mock_handle(req: Request<Incoming>, seen: Arc<Mutex<Vec<HeaderMap>>>, calls: Arc<Mutex<Vec<Value>>>, modern: bool) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers = req.headers().clone();
    seen.lock().unwrap().push(headers.clone());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = msg.get("id").cloned() else {
        return Ok(Response::builder().status(202).body(Full::new(Bytes::new())).unwrap());
    };
    if modern {
        calls.lock().unwrap().push(json!({ "method": msg["method"], "params": msg["params"] }));
        let meta = &msg["params"]["_meta"];
        let version = meta["io.modelcontextprotocol/protocolVersion"].as_str();
        let header = headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok());
        if version != Some("2026-07-28") || header != version || !meta["io.modelcontextprotocol/clientCapabilities"].is_object() {
            let e = json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32020, "message": "Header mismatch" } });
            return Ok(Response::builder().status(400).header("content-type", "application/json").body(Full::new(Bytes::from(e.to_string()))).unwrap());
        }
        let result = match msg["method"].as_str().unwrap_or("") {
            "server/discover" => json!({ "resultType": "complete", "supportedVersions": ["2026-07-28"], "capabilities": { "tools": {}, "logging": {} },
                                         "ttlMs": 0, "cacheScope": "public", "_meta": { "io.modelcontextprotocol/serverInfo": { "name": "modern-mock", "version": "1" } } }),
            "tools/list" => json!({ "resultType": "complete", "ttlMs": 0, "cacheScope": "public", "tools": [
                { "name": "add", "description": "a+b", "inputSchema": { "type": "object" } },
                { "name": "ask", "description": "asks the client", "inputSchema": { "type": "object" } } ] }),
            // `ask` asks the client its name first (2026-07-28: input_required, then the retry)
            "tools/call" if msg["params"]["name"] == "ask" => match msg["params"].get("inputResponses") {
                None => json!({ "resultType": "input_required", "requestState": "state-1", "inputRequests": { "q1": {
                    "method": "elicitation/create", "params": { "message": "your name?", "requestedSchema": { "type": "object", "properties": { "name": { "type": "string" } } } } } } }),
                Some(answers) if msg["params"]["requestState"] == "state-1" => {
                    json!({ "resultType": "complete", "content": [ { "type": "text", "text": format!("hello {}", answers["q1"]["content"]["name"].as_str().unwrap_or("?")) } ] })
                }
                Some(_) => json!({ "resultType": "complete", "content": [ { "type": "text", "text": "lost state" } ], "isError": true }),
            },
            "tools/call" => {
                let a = &msg["params"]["arguments"];
                json!({ "resultType": "complete", "content": [ { "type": "text", "text": (a["a"].as_i64().unwrap_or(0) + a["b"].as_i64().unwrap_or(0)).to_string() } ] })
            }
            m => {
                let e = json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": format!("no {m}") } });
                return Ok(Response::builder().status(404).header("content-type", "application/json").body(Full::new(Bytes::from(e.to_string()))).unwrap());
            }
        };
        return Ok(json_resp(json!({ "jsonrpc": "2.0", "id": id, "result": result })));
    }
    let result = match msg["method"].as_str().unwrap_or("") {
        "initialize" => json!({ "protocolVersion": msg["params"]["protocolVersion"], "capabilities": { "tools": {} },
                                "serverInfo": { "name": "mock", "version": "1" } }),
        "tools/list" => json!({ "tools": [
            { "name": "echo_headers", "description": "echo", "inputSchema": { "type": "object" } },
            { "name": "add", "description": "a+b", "inputSchema": { "type": "object" } },
            { "name": "slow", "description": "sleeps", "inputSchema": { "type": "object" } },
            { "name": "delete_all", "description": "danger", "inputSchema": { "type": "object" } },
            { "name": "fail", "description": "always fails", "inputSchema": { "type": "object" } } ] }),
        "tools/call" => {
            calls.lock().unwrap().push(msg["params"].clone());
            match msg["params"]["name"].as_str().unwrap_or("") {
                "echo_headers" => {
                    let text: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect();
                    json!({ "content": [ { "type": "text", "text": text.join("\n") } ] })
                }
                "add" => {
                    let a = &msg["params"]["arguments"];
                    json!({ "content": [ { "type": "text", "text": (a["a"].as_i64().unwrap_or(0) + a["b"].as_i64().unwrap_or(0)).to_string() } ] })
                }
                "fail" => {
                    let e = json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32000, "message": "upstream broke" } });
                    return Ok(json_resp(e));
                }
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    json!({ "content": [] })
                }
                _ => json!({ "content": [ { "type": "text", "text": "done" } ] }),
            }
        }
        "ping" => json!({}),
        m => {
            let e = json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": format!("no {m}") } });
            return Ok(json_resp(e));
        }
    };
    let mut r = json_resp(json!({ "jsonrpc": "2.0", "id": id, "result": result }));
    r.headers_mut().insert("mcp-session-id", "upstream-session-1".parse().unwrap());
    Ok(r)
}

fn json_resp(v: Value) -> Response<Full<Bytes>> {
    Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(v.to_string()))).unwrap()
}
