//! A load client for the crash test (`scripts/crash-test.sh`): opens `--sessions` MCP sessions at
//! `--url` with a bearer token and sends `tools/call` requests in a loop from each, appending one
//! line per response received to `--log` (written with one `write(2)` each, so a line is in the
//! file the moment its response is known, whatever kills this process next).
//!
//! ```text
//! cargo run --example crash_client -- --url http://127.0.0.1:8080/mcp --token T --log calls.tsv \
//!     [--sessions 8] [--per-session 2] [--count N] [--tool files__read_file] \
//!     [--allowed-path P] [--denied-path P] [--denied-every 4] [--give-up 3s]
//! ```
//!
//! Log line (tab-separated): `session  id  verdict  probe`, where verdict is
//! - `ok`: a tool result (the call was allowed and the upstream answered);
//! - `tool_error`: a tool result with `isError` that is not a policy denial (allowed, the
//!   upstream refused);
//! - `denied`: a policy denial (`isError`, "denied by policy");
//! - `audit_unavailable`: refused because the decision record could not be written (no record);
//! - `error:<code>`: a JSON-RPC error (e.g. `Unknown tool`, an upstream failure).
//!
//! `probe` is the name of an extra argument (`probe_<id>`) sent with the call: the gateway
//! records argument key paths (never values), so the decision record of this exact call can be
//! found in the log by its `arg_keys`.
//!
//! Connection errors (the gateway was killed) never crash the client: each is reported on stderr
//! and retried after a short pause; a session the gateway no longer knows is opened again. A loop
//! that has seen nothing but failures for `--give-up` ends; the client exits once every loop has
//! ended or `--count` responses were logged. It prints a summary on stderr at the end.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const PROTOCOL: &str = "2025-11-25";

#[derive(Parser, Debug)]
#[command(about = "Load client for the gatehouse crash test")]
struct Args {
    /// The gateway's MCP endpoint.
    #[arg(long)]
    url: Uri,
    /// Bearer token of the grant.
    #[arg(long)]
    token: String,
    /// Append one line per response here.
    #[arg(long)]
    log: std::path::PathBuf,
    /// Sessions to open.
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// Concurrent call loops per session.
    #[arg(long, default_value_t = 2)]
    per_session: usize,
    /// Stop after this many responses were logged (0: until killed or every loop gave up).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// The tool to call (`<server>__<tool>`).
    #[arg(long, default_value = "files__read_file")]
    tool: String,
    #[arg(long, default_value = "/srv/projects/app/README.md")]
    allowed_path: String,
    #[arg(long, default_value = "/etc/passwd")]
    denied_path: String,
    /// Every Nth call of a loop asks for the denied path (0: never).
    #[arg(long, default_value_t = 4)]
    denied_every: u64,
    /// A loop that has had only failures for this long ends.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    give_up: Duration,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = n.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_secs_f64(n / 1000.0)),
        "s" => Ok(Duration::from_secs_f64(n)),
        _ => Err(format!("invalid duration {s:?}: use ms or s")),
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

/// What every loop shares.
struct Shared {
    args: Args,
    bearer: HeaderValue,
    log: std::sync::Mutex<std::fs::File>,
    next_id: AtomicU64,
    logged: AtomicU64,
    conn_errors: AtomicU64,
    other_errors: AtomicU64,
    reopened: AtomicU64,
    done: tokio::sync::Notify,
}

/// A session as the gateway named it; reopened when the gateway forgets it.
struct Session {
    http: Http,
    id: tokio::sync::Mutex<Option<HeaderValue>>,
}

/// Why a request produced no logged response.
enum Failure {
    /// No complete response (refused, reset, timed out): the gateway is probably gone.
    Connection(String),
    /// The gateway does not know the session any more.
    SessionGone,
    /// Anything else unexpected (a non-JSON answer, an HTTP error).
    Other(String),
}

fn main() {
    let args = Args::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let code = runtime.block_on(run(args));
    runtime.shutdown_timeout(Duration::from_millis(200));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let file = match std::fs::OpenOptions::new().create(true).append(true).open(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crash_client: cannot open {}: {e}", args.log.display());
            return 2;
        }
    };
    let bearer = HeaderValue::from_str(&format!("Bearer {}", args.token)).expect("a token is a valid header value");
    let shared = Arc::new(Shared {
        args,
        bearer,
        log: std::sync::Mutex::new(file),
        next_id: AtomicU64::new(1),
        logged: AtomicU64::new(0),
        conn_errors: AtomicU64::new(0),
        other_errors: AtomicU64::new(0),
        reopened: AtomicU64::new(0),
        done: tokio::sync::Notify::new(),
    });
    let started = Instant::now();
    let mut loops = Vec::new();
    for _ in 0..shared.args.sessions {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(shared.args.per_session).build(connector);
        let session = Arc::new(Session { http, id: tokio::sync::Mutex::new(None) });
        for _ in 0..shared.args.per_session {
            loops.push(tokio::spawn(call_loop(shared.clone(), session.clone())));
        }
    }
    let all = futures_util::future::join_all(loops);
    tokio::select! {
        _ = all => {}
        _ = shared.done.notified() => {}
    }
    eprintln!(
        "crash_client: {} responses logged in {:.2} s; {} connection errors, {} other errors, {} sessions reopened",
        shared.logged.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        shared.conn_errors.load(Ordering::Relaxed),
        shared.other_errors.load(Ordering::Relaxed),
        shared.reopened.load(Ordering::Relaxed),
    );
    0
}

/// Calls until `--count` is reached or only failures were seen for `--give-up`.
async fn call_loop(shared: Arc<Shared>, session: Arc<Session>) {
    let a = &shared.args;
    let mut last_success = Instant::now();
    let mut n = 0u64;
    loop {
        if a.count > 0 && shared.logged.load(Ordering::Relaxed) >= a.count {
            shared.done.notify_one();
            return;
        }
        if last_success.elapsed() > a.give_up {
            eprintln!("crash_client: no response for {:?}; this loop ends", a.give_up);
            return;
        }
        let sid = match current_session(&shared, &session).await {
            Ok(s) => s,
            Err(f) => {
                failed(&shared, f).await;
                continue;
            }
        };
        n += 1;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let path =
            if a.denied_every > 0 && n.is_multiple_of(a.denied_every) { &a.denied_path } else { &a.allowed_path };
        let probe = format!("probe_{id}");
        let mut arguments = json!({ "path": path });
        arguments[&probe] = json!(0);
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
                           "params": { "name": a.tool, "arguments": arguments } });
        match exchange(&shared, &session.http, Some(&sid), &body).await {
            Ok((_, v)) => {
                let verdict = classify(&v);
                let sid = sid.to_str().unwrap_or("?");
                let line = format!("{sid}\t{id}\t{verdict}\t{probe}\n");
                // One write(2) per line on an O_APPEND file: complete lines only, in the file at once.
                let written = shared.log.lock().unwrap_or_else(|e| e.into_inner()).write_all(line.as_bytes());
                if let Err(e) = written {
                    eprintln!("crash_client: cannot write the log: {e}");
                    std::process::exit(2);
                }
                let total = shared.logged.fetch_add(1, Ordering::Relaxed) + 1;
                last_success = Instant::now();
                if a.count > 0 && total >= a.count {
                    shared.done.notify_one();
                    return;
                }
            }
            Err(Failure::SessionGone) => {
                let mut current = session.id.lock().await;
                if current.as_ref() == Some(&sid) {
                    *current = None;
                }
            }
            Err(f) => failed(&shared, f).await,
        }
    }
}

async fn failed(shared: &Shared, f: Failure) {
    match f {
        Failure::Connection(e) => {
            let n = shared.conn_errors.fetch_add(1, Ordering::Relaxed);
            if n < 5 || n.is_power_of_two() {
                eprintln!("crash_client: connection error #{}: {e}; retrying", n + 1);
            }
        }
        Failure::Other(e) => {
            let n = shared.other_errors.fetch_add(1, Ordering::Relaxed);
            if n < 5 || n.is_power_of_two() {
                eprintln!("crash_client: error #{}: {e}; retrying", n + 1);
            }
        }
        Failure::SessionGone => {}
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// The session's id, opening the session (initialize + notifications/initialized) if needed.
async fn current_session(shared: &Shared, session: &Session) -> Result<HeaderValue, Failure> {
    let mut current = session.id.lock().await;
    if let Some(id) = current.as_ref() {
        return Ok(id.clone());
    }
    let init = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": { "name": "crash_client", "version": "1" } } });
    let (headers, v) = exchange(shared, &session.http, None, &init).await?;
    if v.get("result").is_none() {
        return Err(Failure::Other(format!("initialize failed: {v}")));
    }
    let id =
        headers.get("mcp-session-id").cloned().ok_or_else(|| Failure::Other("initialize: no Mcp-Session-Id".into()))?;
    let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    exchange(shared, &session.http, Some(&id), &note).await?;
    if shared.reopened.fetch_add(1, Ordering::Relaxed) >= shared.args.sessions as u64 {
        eprintln!("crash_client: session reopened as {}", id.to_str().unwrap_or("?"));
    }
    *current = Some(id.clone());
    Ok(id)
}

/// One POST; the response headers and JSON body (Null for 202) once the whole body arrived.
async fn exchange(
    shared: &Shared,
    http: &Http,
    session: Option<&HeaderValue>,
    body: &Value,
) -> Result<(http::HeaderMap, Value), Failure> {
    let mut req = Request::new(Full::new(Bytes::from(body.to_string())));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = shared.args.url.clone();
    let h = req.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
    h.insert(header::AUTHORIZATION, shared.bearer.clone());
    if let Some(s) = session {
        h.insert("mcp-session-id", s.clone());
        h.insert("mcp-protocol-version", HeaderValue::from_static(PROTOCOL));
    }
    let whole = async {
        let resp = http.request(req).await.map_err(|e| Failure::Connection(format!("request: {e}")))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.map_err(|e| Failure::Connection(format!("body: {e}")))?.to_bytes();
        Ok::<_, Failure>((status, headers, bytes))
    };
    let (status, headers, bytes) = match tokio::time::timeout(shared.args.timeout, whole).await {
        Ok(r) => r?,
        Err(_) => return Err(Failure::Connection(format!("no complete response within {:?}", shared.args.timeout))),
    };
    if status == StatusCode::NOT_FOUND && session.is_some() {
        return Err(Failure::SessionGone);
    }
    if status == StatusCode::ACCEPTED {
        return Ok((headers, Value::Null));
    }
    if status != StatusCode::OK {
        return Err(Failure::Other(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes))));
    }
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Other(format!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes))))?;
    Ok((headers, v))
}

/// The verdict column of a `tools/call` response.
fn classify(v: &Value) -> String {
    if let Some(code) = v.pointer("/error/code") {
        return format!("error:{code}");
    }
    if v.pointer("/result/isError") != Some(&Value::Bool(true)) {
        return "ok".into();
    }
    let text = v.pointer("/result/content/0/text").and_then(Value::as_str).unwrap_or("");
    if text.contains("gatehouse:audit-unavailable") {
        "audit_unavailable".into()
    } else if text.starts_with("denied by policy") {
        "denied".into()
    } else {
        "tool_error".into()
    }
}
