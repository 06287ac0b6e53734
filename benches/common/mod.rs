//! What the load benchmarks share: a minimal Streamable HTTP MCP upstream on a loopback port.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Upstream sessions it handed out.
#[derive(Default)]
struct UpState {
    sessions: Mutex<HashSet<String>>,
    next: AtomicU64,
}

/// Starts the upstream: one tool, `tool`, that returns its arguments as text; sessions,
/// `ping`, DELETE; no GET stream (405).
pub async fn start_upstream(tool: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(UpState::default());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| upstream_handle(state.clone(), tool, req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

async fn upstream_handle(state: Arc<UpState>, tool: &str, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let session = req.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    match *req.method() {
        Method::POST => {}
        Method::DELETE => {
            let known = session.is_some_and(|s| state.sessions.lock().unwrap().remove(&s));
            return Ok(status(if known { StatusCode::OK } else { StatusCode::NOT_FOUND }));
        }
        // No GET stream: the gateway's listener stops at 405.
        _ => return Ok(status(StatusCode::METHOD_NOT_ALLOWED)),
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let Ok(mut msg) = serde_json::from_slice::<Value>(&body) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let method = msg["method"].as_str().unwrap_or("").to_string();
    if method == "initialize" {
        let id = format!("up-{}", state.next.fetch_add(1, Ordering::Relaxed));
        state.sessions.lock().unwrap().insert(id.clone());
        let result = json!({ "protocolVersion": msg["params"]["protocolVersion"], "capabilities": { "tools": {} },
                             "serverInfo": { "name": "bench-upstream", "version": "1" } });
        let mut r = json_resp(&json!({ "jsonrpc": "2.0", "id": msg["id"], "result": result }));
        r.headers_mut().insert("mcp-session-id", HeaderValue::from_str(&id).unwrap());
        return Ok(r);
    }
    if !session.is_some_and(|s| state.sessions.lock().unwrap().contains(&s)) {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    let Some(id) = msg.get_mut("id").map(Value::take) else {
        return Ok(status(StatusCode::ACCEPTED)); // a notification
    };
    let reply = match method.as_str() {
        "tools/list" => json!({ "jsonrpc": "2.0", "id": id, "result": { "tools": [
            { "name": tool, "description": "Returns its arguments as text",
              "inputSchema": { "type": "object", "properties": { "text": { "type": "string" }, "path": { "type": "string" } } } } ] } }),
        "tools/call" if msg["params"]["name"] == tool => {
            let text = msg["params"]["arguments"].to_string();
            json!({ "jsonrpc": "2.0", "id": id, "result": { "content": [ { "type": "text", "text": text } ] } })
        }
        "tools/call" => json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32602, "message": "Unknown tool" } }),
        "ping" => json!({ "jsonrpc": "2.0", "id": id, "result": {} }),
        _ => json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": "Method not found" } }),
    };
    Ok(json_resp(&reply))
}

fn json_resp(v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(v).unwrap())));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = s;
    r
}
