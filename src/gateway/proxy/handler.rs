//! One HTTP request: routing, authentication, the Streamable HTTP rules of MCP, and the gateway's
//! handling of `initialize`, `tools/list` and `tools/call` (with the upstream's requests to the
//! client made during a call: sampling, elicitation, roots).
//!
//! The active snapshot is loaded once per request and passed down; the decision of a call and
//! everything reported about it come from that one snapshot.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::{relay, stateless};
use super::jsonrpc::{self, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, Message, PARSE_ERROR, SERVER_ERROR};
use super::session::{Session, SignIn};
use super::{Active, State};
use crate::policy::eval::may_allow;
use crate::policy::{Call, evaluate_grant};
use crate::policy::snapshot::{Grant, Snapshot};
use crate::record::audit::log::AuditLog;
use crate::record::audit::{CallRecord, arg_keys, bound};
use crate::record::quota::{Refused, Reservation, Subject};
use crate::units::{Date, now_rfc3339_ms, unix_now};
use crate::gateway::upstream::{ServerRequest, UpstreamError};

pub type Body = BoxBody<Bytes, Infallible>;

/// Protocol revisions a client may negotiate, oldest first.
pub const SUPPORTED: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];
pub const LATEST: &str = "2025-11-25";
/// JSON-RPC code for a request the client cancelled.
const REQUEST_CANCELLED: i64 = -32800;
/// JSON-RPC code for an upstream that did not answer in time.
const UPSTREAM_TIMEOUT: i64 = -32001;
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// What every MCP request carries once authenticated. Owned, so that a streamed response can
/// keep working on a task of its own.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) state: Arc<State>,
    /// Loaded once for the whole request.
    pub(super) active: Arc<Active>,
    /// Index of the caller's grant in `active.snapshot.grants`.
    grant: usize,
    /// sha256 of the caller's token (signed in: [`crate::gateway::auth::session_key`]).
    pub(super) token: [u8; 32],
    /// The issuer of the caller's access token and the roles its groups name; `None` for a grant
    /// token.
    pub(super) sign_in: Option<SignIn>,
    /// The grant widened by the roles of the caller's groups, when they name any.
    effective: Option<Arc<Grant>>,
    /// `Some(server)` on `/mcp/<server>`.
    endpoint: Option<Arc<str>>,
}

// === impl Ctx ===

impl Ctx {
    pub(super) fn grant(&self) -> &Grant {
        self.effective.as_deref().unwrap_or(&self.active.snapshot.grants[self.grant])
    }

    pub(super) fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
}

/// A request on the MCP listener: MCP and the probes. Operations endpoints live on the admin
/// listener ([`admin`]) and are 404 here.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(&state),
        (_, p) if p == "/mcp" || p.starts_with("/mcp/") => {
            let _serving = crate::record::store::serving();
            mcp(state, req, &path).await
        }
        (&Method::GET, p) if p == RESOURCE_METADATA || p.starts_with(&format!("{RESOURCE_METADATA}/")) => resource_metadata(&state, p),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// RFC 9728's well-known path of protected resource metadata.
const RESOURCE_METADATA: &str = "/.well-known/oauth-protected-resource";

/// The public URLs of what a client reaches at `path` (`/mcp` or `/mcp/<server>`) when issuers
/// are configured: `(resource, metadata URL)`. The first issuer's `audience` is the public URL of
/// `/mcp`; whatever precedes `/mcp` in it (a reverse proxy's prefix) prefixes every resource.
fn resource_urls(snap: &Snapshot, path: &str) -> Option<(String, String)> {
    let audience = snap.settings.issuers.first()?.audience.trim_end_matches('/');
    let base = audience.strip_suffix("/mcp").unwrap_or(audience);
    let scheme_end = base.find("://").map(|i| i + 3)?;
    let (origin, prefix) = match base[scheme_end..].find('/') {
        Some(i) => base.split_at(scheme_end + i),
        None => (base, ""),
    };
    let path = path.trim_end_matches('/');
    Some((format!("{base}{path}"), format!("{origin}{RESOURCE_METADATA}{prefix}{path}")))
}

/// `GET /.well-known/oauth-protected-resource[/…/mcp[/<server>]]`: RFC 9728 metadata naming the
/// configured issuers as authorization servers. 404 when none are configured.
fn resource_metadata(state: &State, path: &str) -> Response<Body> {
    let Some(active) = state.active.load_full() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no valid policy commit is active\n");
    };
    let snap = &active.snapshot;
    let rest = &path[RESOURCE_METADATA.len()..];
    // The resource path: from the `/mcp` segment on (a prefix before it is the proxy's).
    let mcp_path = match rest.match_indices("/mcp").find(|(i, _)| rest[i + 4..].is_empty() || rest[i + 4..].starts_with('/')) {
        Some((i, _)) => &rest[i..],
        None if rest.is_empty() => "/mcp",
        None => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let Some((resource, _)) = resource_urls(snap, mcp_path) else { return text(StatusCode::NOT_FOUND, "not found\n") };
    let issuers: Vec<&str> = snap.settings.issuers.iter().map(|i| i.issuer.as_str()).collect();
    let mut body = json!({
        "resource": resource,
        "authorization_servers": issuers,
        "bearer_methods_supported": ["header"],
        "resource_name": "gatehouse",
    });
    // The scopes the first issuer requires: what a client asks for when a 401 names none.
    if let Some(first) = snap.settings.issuers.first().filter(|i| !i.scopes.is_empty()) {
        body["scopes_supported"] = json!(first.scopes);
    }
    let mut r = json_response(StatusCode::OK, &body);
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    r
}

/// A request on the admin listener: `/status`, `/metrics`, `POST /-/reconcile` and the probes.
pub async fn admin(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(&state),
        (&Method::GET, "/status") => json_response(StatusCode::OK, &status(&state)),
        (&Method::GET, "/metrics") => {
            let active = state.active.load_full();
            let mut body = state.metrics.render(active.as_ref().and_then(|a| a.snapshot.commit.as_deref()), state.sessions.len(), &state.admission);
            if let Some(up) = state.quotas.store_available() {
                body.push_str("# HELP gatehouse_quota_store_up Whether the shared quota store (Redis) answered last time.\n# TYPE gatehouse_quota_store_up gauge\n");
                body.push_str(&format!("gatehouse_quota_store_up {}\n", u8::from(up)));
            }
            super::Metrics::render_replicas(&state.fleet.lock().expect("fleet lock"), &mut body);
            let healthy = state.audit.get().is_none_or(|a| a.store().healthy());
            body.push_str(&format!("# HELP gatehouse_store_up 1 when the last write to the state database committed.\n# TYPE gatehouse_store_up gauge\ngatehouse_store_up {}\n", u8::from(healthy)));
            let mut r = text(StatusCode::OK, &body);
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        (&Method::POST, "/-/reconcile") => reconcile_hook(&state, req).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// 200 once a commit decides calls. An unavailable shared quota store keeps it 200 and says so:
/// calls without quotas still flow, and the store is shared, so every replica would go unready
/// at once and a load balancer would stop those calls too.
fn readyz(state: &State) -> Response<Body> {
    match state.active.load().as_ref() {
        // Every call would be refused (fail closed) until the state database takes writes again.
        Some(_) if state.audit.get().is_some_and(|a| !a.store().healthy()) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: the state database does not take writes (calls are refused)\n")
        }
        Some(a) if state.quotas.store_available() == Some(false) => text(
            StatusCode::OK,
            &format!("ready: commit {}; quota store unavailable: calls with quotas are refused ({QUOTA_UNAVAILABLE})\n", a.snapshot.short_commit()),
        ),
        Some(a) => text(StatusCode::OK, &format!("ready: commit {}\n", a.snapshot.short_commit())),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no valid policy commit is active\n"),
    }
}

fn status(state: &State) -> Value {
    let active = state.active.load_full();
    let upstreams = state.pool.states();
    let servers: Vec<Value> = match &active {
        None => Vec::new(),
        Some(a) => a
            .snapshot
            .server_names()
            .into_iter()
            .map(|name| {
                let s = &a.snapshot.servers[name];
                let transport = match &s.transport {
                    crate::policy::snapshot::Transport::StreamableHttp { .. } => "streamable-http",
                    crate::policy::snapshot::Transport::Sse { .. } => "sse",
                    crate::policy::snapshot::Transport::Stdio { .. } => "stdio",
                };
                let u = upstreams.get(name).cloned().unwrap_or_default();
                json!({ "name": name, "transport": transport, "connections": u.connections, "protocols": u.protocols, "last_error": u.last_error })
            })
            .collect(),
    };
    let rs = state.status.lock().expect("status lock").clone();
    let fleet = crate::record::replicas::view(&state.fleet.lock().expect("fleet lock"), crate::units::unix_now_ms());
    let stalled = rs.last_attempted.as_ref().is_some_and(|a| a.outcome != "applied");
    let condition = |kind: &str, ok: bool, reason: &str, message: String| {
        json!({ "type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message })
    };
    let conditions = vec![
        condition(
            "Ready",
            active.is_some(),
            if active.is_some() { "Applied" } else { "NoValidCommit" },
            match &active {
                Some(a) => format!("commit {} decides calls", a.snapshot.short_commit()),
                None => "no valid policy commit is active: every call is refused".into(),
            },
        ),
        condition(
            "Stalled",
            stalled,
            rs.last_attempted.as_ref().map_or("None", |a| a.outcome),
            rs.last_attempted.as_ref().filter(|_| stalled).map(|a| a.errors.join("; ")).unwrap_or_default(),
        ),
        condition(
            "HistoryRewritten",
            rs.history_rewritten.is_some(),
            if rs.history_rewritten.is_some() { "RewriteRefused" } else { "FastForward" },
            rs.history_rewritten
                .as_ref()
                .map(|r| format!("{} does not descend from {}: run gatehouse accept-rewrite", r.new_tip, r.old_tip))
                .unwrap_or_default(),
        ),
    ];
    let mut conditions = conditions;
    if let Some(up) = state.quotas.store_available() {
        conditions.push(condition(
            "QuotaStoreAvailable",
            up,
            if up { "Answering" } else { "Unavailable" },
            if up { String::new() } else { format!("the shared quota store does not answer: calls with quotas are refused ({QUOTA_UNAVAILABLE})") },
        ));
    }
    json!({
        "ready": active.is_some(),
        "last_applied": rs.last_applied,
        "last_attempted": rs.last_attempted,
        "history_rewritten": rs.history_rewritten,
        "conditions": conditions,
        "active": active.as_ref().map(|a| json!({
            "commit": a.snapshot.commit,
            "digest": a.snapshot.digest,
            "servers": a.snapshot.servers.len(),
            "grants": a.snapshot.grants.len(),
        })),
        "servers": servers,
        "sessions": state.sessions.len(),
        "quota_store": match state.quotas.store_available() {
            None => json!({ "kind": "local" }),
            Some(available) => json!({ "kind": "redis", "available": available }),
        },
        "uptime_seconds": state.started.elapsed().as_secs(),
        "replica": state.replica,
        "store": state.audit.get().map(|a| json!({ "location": a.store().location().describe(), "healthy": a.store().healthy() })),
        "replicas": fleet["replicas"],
        "converged": fleet["converged"],
    })
}

/// `POST /-/reconcile`: look for a new commit now. The body is never trusted (it only has to
/// be signed when a webhook secret is set); the reconciler reads the repository itself.
async fn reconcile_hook(state: &State, req: Request<Incoming>) -> Response<Body> {
    let Some(trigger) = state.trigger.get() else {
        return text(StatusCode::NOT_FOUND, "no reconciler\n");
    };
    if let Some(secret) = state.webhook_secret.get() {
        let signature = req.headers().get("x-hub-signature-256").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = match read_body(state, req.into_body()).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let expected = format!("sha256={}", hex::encode(hmac_sha256(secret, &body)));
        let ok = signature.is_some_and(|s| constant_time_eq(s.as_bytes(), expected.as_bytes()));
        if !ok {
            return text(StatusCode::UNAUTHORIZED, "invalid X-Hub-Signature-256\n");
        }
    }
    let _ = trigger.try_send(());
    text(StatusCode::ACCEPTED, "reconcile requested\n")
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /mcp`: the session's server-to-client stream (SSE). `notifications/tools/list_changed`
/// arrives here; the stream ends when the session does (DELETE, eviction, revoked token).
fn stream(session: &Arc<Session>) -> Response<Body> {
    let mut rx = session.open_stream();
    let events = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|msg| Ok::<_, Infallible>(Frame::data(sse_event(&msg))));
    // A comment first, so that clients see the stream open at once.
    let first = futures_util::stream::once(async { Ok::<_, Infallible>(Frame::data(Bytes::from_static(b": gatehouse stream\n\n"))) });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(first.chain(events))));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn mcp(state: Arc<State>, req: Request<Incoming>, path: &str) -> Response<Body> {
    let endpoint = path.strip_prefix("/mcp/").map(|s| s.trim_end_matches('/')).filter(|s| !s.is_empty());
    let Some(active) = state.active.load_full() else {
        let body = jsonrpc::error(Value::Null, SERVER_ERROR, "gatehouse is not ready: no valid policy commit is active");
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
    };
    // A refusal is answered without reading the request's body, and hyper then closes the
    // connection: say so (`Connection: close`), or a client that reuses it for its next request
    // (an OAuth client fetches the resource metadata right after the 401) may find it closed
    // under that request.
    let has_body = req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0") || req.headers().contains_key(header::TRANSFER_ENCODING);
    let closing = |mut r: Response<Body>| {
        if has_body {
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    };
    let caller = match authenticate(&state, &active.snapshot, req.headers(), endpoint).await {
        Ok(c) => c,
        Err(Refusal::Unauthorized(why)) => {
            let mut r = unauthorized(&why);
            // MCP authorization: every 401 points at the protected resource metadata, and names
            // the scopes to ask for when the (first) issuer requires some.
            if let Some((_, url)) = resource_urls(&active.snapshot, path) {
                let error = if why == "missing bearer token" { "" } else { ", error=\"invalid_token\"" };
                let scope = active.snapshot.settings.issuers.first().map(|i| scope_param(&i.scopes)).unwrap_or_default();
                if let Ok(v) = HeaderValue::from_str(&format!("Bearer realm=\"gatehouse\", resource_metadata=\"{url}\"{scope}{error}")) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            return closing(r);
        }
        Err(Refusal::InsufficientScope(scopes)) => {
            // RFC 6750 §3.1 and the MCP spec's scope challenge: 403, the scopes needed, and
            // where the metadata is, so that a client can step up.
            let mut r = rpc_error(StatusCode::FORBIDDEN, SERVER_ERROR, "forbidden: the access token lacks a required scope");
            let url = resource_urls(&active.snapshot, path).map(|(_, u)| format!(", resource_metadata=\"{u}\"")).unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer realm=\"gatehouse\", error=\"insufficient_scope\"{}{url}", scope_param(&scopes))) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return closing(r);
        }
        Err(Refusal::Forbidden(why)) => return closing(rpc_error(StatusCode::FORBIDDEN, SERVER_ERROR, format!("forbidden: {why}"))),
    };
    let grant_index = caller.grant;
    let grant: &Grant = caller.effective.as_deref().unwrap_or(&active.snapshot.grants[grant_index]);
    if let Some(server) = endpoint {
        // Never reveal whether a server the caller cannot reach exists.
        if !active.snapshot.servers.contains_key(server) || !grant.by_server.contains_key(server) {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
    }
    let cx = Ctx { state: state.clone(), active: active.clone(), grant: grant_index, token: caller.token, sign_in: caller.sign_in.clone(), effective: caller.effective.clone(), endpoint: endpoint.map(Arc::from) };
    match *req.method() {
        Method::POST => post(&cx, req).await,
        Method::DELETE => {
            let id = req.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            match state.sessions.get(id, &grant.name, endpoint) {
                Some(s) => {
                    state.sessions.close(&s.id);
                    empty(StatusCode::NO_CONTENT)
                }
                None => text(StatusCode::NOT_FOUND, "session not found\n"),
            }
        }
        Method::GET => {
            let id = req.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            match state.sessions.get(id, &grant.name, endpoint) {
                Some(s) => stream(&s),
                None => text(StatusCode::NOT_FOUND, "session not found\n"),
            }
        }
        _ => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST, GET (a stream) or DELETE\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST, GET, DELETE"));
            r
        }
    }
}

/// Who is calling, once authenticated.
struct Caller {
    /// Index of the grant in the snapshot.
    grant: usize,
    /// sha256 of the grant token, or the signed-in session key.
    token: [u8; 32],
    sign_in: Option<SignIn>,
    effective: Option<Arc<Grant>>,
}

/// Why a request is refused before anything else: 401 (no valid credentials) or 403 (a valid
/// access token whose identity has no grant).
enum Refusal {
    Unauthorized(String),
    Forbidden(String),
    /// A valid access token without the scopes its issuer requires (these).
    InsufficientScope(Vec<String>),
}

/// `, scope="a b"` for a challenge, or nothing when no scope is required. Scopes are checked
/// to be RFC 6749 scope tokens (no quote, backslash or space) when the commit is compiled.
fn scope_param(scopes: &[String]) -> String {
    if scopes.is_empty() { String::new() } else { format!(", scope=\"{}\"", scopes.join(" ")) }
}

/// `Authorization: Bearer <token>`: an identity provider's access token (a JWT whose `iss` is a
/// configured issuer) or a grant token.
async fn authenticate(state: &State, snap: &Snapshot, headers: &HeaderMap, endpoint: Option<&str>) -> Result<Caller, Refusal> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| Refusal::Unauthorized("missing bearer token".into()))?;
    let malformed = || Refusal::Unauthorized("malformed authorization header".into());
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > crate::gateway::auth::MAX_TOKEN {
        return Err(malformed());
    }
    if !snap.settings.issuers.is_empty()
        && crate::gateway::auth::looks_like_jwt(token)
        && let Some(issuer) = state.sso.issuer_of(token).and_then(|iss| snap.issuer(&iss))
    {
        return signed_in(state, snap, issuer, token, endpoint).await;
    }
    if token.len() > 4096 {
        return Err(malformed());
    }
    let (grant, hash) = grant_token(snap, token).map_err(|why| Refusal::Unauthorized(why.into()))?;
    Ok(Caller { grant, token: hash, sign_in: None, effective: None })
}

/// An access token of `issuer`: validated, then its identity claim selects the grant whose
/// `identity` equals it, and its groups add the roles that name them.
async fn signed_in(state: &State, snap: &Snapshot, issuer: &crate::policy::snapshot::Issuer, token: &str, endpoint: Option<&str>) -> Result<Caller, Refusal> {
    // /mcp is the audience; /mcp/<server> also accepts a token for that resource itself.
    let per_server = endpoint.map(|s| format!("{}/{s}", issuer.audience.trim_end_matches('/')));
    let mut accepted = vec![issuer.audience.as_str()];
    accepted.extend(per_server.as_deref());
    let signed = state.sso.validate(issuer, token, &accepted).await.map_err(|e| {
        debug!(issuer = %issuer.issuer, error = %e, "access token refused");
        match e {
            crate::gateway::auth::AuthError::InsufficientScope => Refusal::InsufficientScope(issuer.scopes.clone()),
            e => Refusal::Unauthorized(e.to_string()),
        }
    })?;
    let Some(gi) = snap.grant_index_by_identity(&signed.identity) else {
        info!(issuer = %signed.issuer, "signed in, but no grant has this identity");
        return Err(Refusal::Forbidden("no grant for this identity".into()));
    };
    let roles = snap.roles_of_groups(signed.groups.iter().map(String::as_str));
    let effective = group_grant(state, snap, gi, &signed, &roles);
    let sign_in = SignIn { groups: signed.groups.clone(), issuer: signed.issuer.clone() };
    Ok(Caller { grant: gi, token: crate::gateway::auth::session_key(&signed.issuer, &signed.identity), sign_in: Some(sign_in), effective })
}

/// The grant `gi` widened by the roles its holder's groups name (`None` when they name none),
/// built once per (snapshot, grant, roles).
fn group_grant(state: &State, snap: &Snapshot, gi: usize, signed: &crate::gateway::auth::Signed, roles: &[&str]) -> Option<Arc<Grant>> {
    if roles.is_empty() {
        return None;
    }
    let key = format!("{}\n{gi}\n{}\n{}", snap.digest, signed.issuer, roles.join("\n"));
    let mut cache = state.group_grants.lock().expect("group grants lock");
    if let Some(g) = cache.get(&key) {
        return Some(g.clone());
    }
    let with: Vec<(&crate::policy::snapshot::Role, String)> = roles
        .iter()
        .filter_map(|r| snap.roles.get(*r))
        .map(|r| {
            let group = signed.groups.iter().find(|g| r.groups.contains(g)).map(String::as_str).unwrap_or("?");
            (r, format!("group {group} of {}", signed.issuer))
        })
        .collect();
    let g = Arc::new(snap.grants[gi].with_roles(&with));
    if cache.len() >= 1024 {
        cache.clear();
    }
    cache.insert(key, g.clone());
    Some(g)
}

/// A grant token → the index of the grant whose token hash matches, if the token has not
/// expired.
fn grant_token(snap: &Snapshot, token: &str) -> Result<(usize, [u8; 32]), &'static str> {
    // A gatehouse token carries a checksum: a mistyped or forged one is refused before any lookup.
    if !crate::gateway::token::admissible(token) {
        return Err("malformed token");
    }
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let (grant, token) = snap.grant_index_by_token_hash(&hash).ok_or("unknown token")?;
    if snap.grants[grant].tokens[token].expires.is_some_and(|e| e <= Date::today()) {
        return Err("token expired");
    }
    Ok((grant, hash))
}

async fn post(cx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers().clone();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/json") {
        return rpc_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID_REQUEST, "content-type must be application/json");
    }
    let body = match read_body(&cx.state, req.into_body()).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let max_batch = cx.state.config.max_batch;
    let value = match jsonrpc::parse_body_limited(&body, max_batch) {
        Ok(v) => v,
        Err(jsonrpc::BodyError::Invalid(e)) => return rpc_error(StatusCode::BAD_REQUEST, PARSE_ERROR, e),
        Err(jsonrpc::BodyError::BatchTooLong { max }) => {
            return rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, format!("a batch is over the limit of {max} messages per batch (--max-batch)"));
        }
    };
    // The parsed value holds everything from here on: a large body is not kept twice.
    drop(body);
    let messages = match value {
        Value::Array(items) => {
            if items.is_empty() {
                return rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid request: empty batch");
            }
            Batch::Many(items)
        }
        single => match jsonrpc::classify(single) {
            Ok(m) => Batch::One(m),
            Err(e) => return json_response(StatusCode::BAD_REQUEST, &e),
        },
    };
    if let Batch::One(Message::Request { id, method, params }) = &messages
        && method == "initialize"
    {
        return initialize(cx, id.clone(), params);
    }
    // 2026-07-28: no session; the request carries its version and the client's facts itself.
    if let Batch::One(m) = &messages
        && (headers.get(SESSION_HEADER).is_none() || matches!(m, Message::Request { method, .. } if method == "server/discover"))
        && stateless::is_stateless(&headers, m)
    {
        let Batch::One(m) = messages else { unreachable!("matched above") };
        // Boxed: its state stays out of every session request's future.
        return Box::pin(stateless::handle(cx, &headers, m)).await;
    }
    let Some(session_id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, "missing Mcp-Session-Id header: send initialize first");
    };
    let Some(session) = cx.state.sessions.get(session_id, &cx.grant().name, cx.endpoint()) else {
        return rpc_error(StatusCode::NOT_FOUND, SERVER_ERROR, "session not found: send initialize again");
    };
    if let Some(v) = headers.get(VERSION_HEADER) {
        let v = v.to_str().unwrap_or("");
        if !SUPPORTED.contains(&v) {
            return rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, format!("unsupported MCP-Protocol-Version {v:?}: supported are {}", SUPPORTED.join(", ")));
        }
    }
    let accepts_sse = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    match messages {
        Batch::One(m) => {
            // Moved, not cloned: arguments can be megabytes.
            let m = match m {
                Message::Request { id, method, params } if accepts_sse && method == "tools/call" => {
                    let token = params.pointer("/_meta/progressToken").cloned();
                    return call_streaming(cx.clone(), session, id, params, token, false).await;
                }
                m => m,
            };
            match dispatch(cx, &session, m).await {
                Some(resp) => capped_response(&cx.state, &resp),
                None => empty(StatusCode::ACCEPTED),
            }
        }
        Batch::Many(items) => {
            // Batches were removed from the protocol after 2025-03-26.
            if session.protocol != "2025-03-26" {
                return rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, format!("JSON-RPC batches are not supported in protocol {}", session.protocol));
            }
            let replies = join_all(items.into_iter().map(|item| async {
                match jsonrpc::classify(item) {
                    Ok(Message::Request { id, method, .. }) if method == "initialize" => {
                        Some(jsonrpc::error(id, INVALID_REQUEST, "initialize cannot be batched"))
                    }
                    Ok(m) => dispatch(cx, &session, m).await,
                    Err(e) => Some(e),
                }
            }))
            .await;
            let replies: Vec<Value> = replies.into_iter().flatten().collect();
            if replies.is_empty() { empty(StatusCode::ACCEPTED) } else { capped_response(&cx.state, &Value::Array(replies)) }
        }
    }
}

enum Batch {
    One(Message),
    Many(Vec<Value>),
}

/// Reads the body within the size and time limits into one buffer, sized from
/// `Content-Length` when the client sent it (a large body is held once, not once per chunk and
/// again when joined).
async fn read_body(state: &State, body: Incoming) -> Result<Bytes, Response<Body>> {
    let max = state.config.max_body;
    let too_large = || rpc_error(StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST, format!("request body over the {max} byte limit"));
    let hint = hyper::body::Body::size_hint(&body).exact().map(|n| n as usize);
    if hint.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let read = async move {
        let mut body = body;
        let mut buf = Vec::with_capacity(hint.unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            if buf.len() + data.len() > max {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
        Ok::<_, hyper::Error>(Some(buf))
    };
    match tokio::time::timeout(state.config.body_timeout, read).await {
        Err(_) => Err(rpc_error(StatusCode::REQUEST_TIMEOUT, INVALID_REQUEST, "request body not received in time")),
        Ok(Ok(None)) => Err(too_large()),
        Ok(Err(_)) => Err(rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, "could not read the request body")),
        Ok(Ok(Some(buf))) => Ok(Bytes::from(buf)),
    }
}

fn initialize(cx: &Ctx, id: Value, params: &Value) -> Response<Body> {
    let asked = params.get("protocolVersion").and_then(Value::as_str).unwrap_or("");
    let version = SUPPORTED.iter().find(|v| **v == asked).copied().unwrap_or(LATEST);
    let session = cx.state.sessions.open(&cx.grant().name, cx.token, cx.sign_in.clone(), cx.endpoint().map(str::to_string), version);
    session.set_capabilities(params.get("capabilities").cloned().unwrap_or(Value::Null));
    let instructions = match cx.endpoint {
        None => "Tools and prompts from several servers, named <server>__<name>; resources under their own URIs. Every call is checked against policy and recorded.",
        Some(_) => "Every call is checked against policy and recorded.",
    };
    let result = json!({
        "protocolVersion": version,
        "capabilities": {
            "tools": { "listChanged": true },
            "resources": { "subscribe": true, "listChanged": true },
            "prompts": { "listChanged": true },
            "logging": {},
            "completions": {},
        },
        "serverInfo": { "name": "gatehouse", "version": env!("CARGO_PKG_VERSION") },
        "instructions": instructions,
    });
    info!(grant = %cx.grant().name, session = %session.reference, protocol = version, "session opened");
    let mut resp = json_response(StatusCode::OK, &jsonrpc::result(id, result));
    resp.headers_mut().insert(SESSION_HEADER, HeaderValue::from_str(&session.id).expect("hex is a valid header"));
    resp
}

/// Handles one message of a session (or of a stateless request's own session); the reply for a
/// request, None for anything else.
pub(super) async fn dispatch(cx: &Ctx, session: &Arc<Session>, m: Message) -> Option<Value> {
    match m {
        Message::Request { id, method, params } => Some(match method.as_str() {
            "ping" => jsonrpc::result(id, json!({})),
            "initialize" => jsonrpc::error(id, INVALID_REQUEST, "the session is already initialized"),
            "tools/list" => jsonrpc::result(id, list_tools(cx).await),
            "tools/call" => call_tool(cx, session, id, params, None, None).await,
            "resources/list" => jsonrpc::result(id, relay::list_resources(cx).await),
            "resources/templates/list" => jsonrpc::result(id, relay::list_resource_templates(cx).await),
            "resources/read" => relay::read_resource(cx, session, id, &params).await,
            "resources/subscribe" => relay::subscribe(cx, session, id, &params, true).await,
            "resources/unsubscribe" => relay::subscribe(cx, session, id, &params, false).await,
            "prompts/list" => jsonrpc::result(id, relay::list_prompts(cx).await),
            "prompts/get" => relay::get_prompt(cx, session, id, &params).await,
            "completion/complete" => relay::complete(cx, id, &params).await,
            "logging/setLevel" => relay::set_level(cx, session, id, &params).await,
            other => jsonrpc::error(id, METHOD_NOT_FOUND, format!("method not found: {other}")),
        }),
        Message::Notification { method, params } => {
            if method == "notifications/cancelled"
                && let Some(rid) = params.get("requestId") {
                    let key = rid.to_string();
                    if session.cancel(&key) {
                        debug!(request = %key, "request cancelled by the client");
                    }
                }
            None
        }
        Message::Response { id, outcome } => {
            // Only an answer to a request relayed to this very session goes anywhere.
            if !session.answer(&id, outcome) {
                debug!("a response to no request of this session; ignored");
            }
            None
        }
    }
}

/// The tools the caller could be allowed to call, from every server its grant reaches.
async fn list_tools(cx: &Ctx) -> Value {
    let snap = &cx.active.snapshot;
    let grant = cx.grant();
    let servers: Vec<&str> = match cx.endpoint() {
        Some(s) => vec![s],
        None => {
            let mut v: Vec<&str> = grant.by_server.keys().map(String::as_str).filter(|s| snap.servers.contains_key(*s)).collect();
            v.sort_unstable();
            v
        }
    };
    let lists = join_all(servers.iter().map(|&server| async move {
        let upstream = match connect(cx, server).await {
            Ok(u) => u,
            Err(e) => {
                warn!(server, error = %e, "tools/list: upstream unavailable; its tools are left out");
                return Vec::new();
            }
        };
        let tools = match upstream.list_tools().await {
            Ok(t) => t,
            Err(e) => {
                warn!(server, error = %e, "tools/list failed upstream; its tools are left out");
                return Vec::new();
            }
        };
        let vetted = vet_list(&cx.state, &cx.active.snapshot, server, &tools).await;
        tools
            .iter()
            .filter_map(|t| {
                let name = t.get("name")?.as_str()?;
                if vetted.quarantine(name).is_some() || !may_allow(snap, grant, server, name) {
                    return None;
                }
                let mut t = t.clone();
                if cx.endpoint.is_none() {
                    t["name"] = Value::String(format!("{server}__{name}"));
                }
                Some(t)
            })
            .collect::<Vec<Value>>()
    }))
    .await;
    json!({ "tools": lists.into_iter().flatten().collect::<Vec<Value>>() })
}

pub(super) async fn connect(cx: &Ctx, server: &str) -> Result<Arc<crate::gateway::upstream::Upstream>, UpstreamError> {
    let s = &cx.active.snapshot.servers[server];
    let creds = cx.active.secrets.get(server).cloned().unwrap_or_default();
    let (upstream, opened) = cx.state.pool.get(&cx.grant().name, s, &creds).await?;
    if opened {
        tokio::spawn(relay_events(Arc::downgrade(&cx.state), cx.grant().name.clone(), server.to_string(), upstream.subscribe(), Arc::downgrade(&upstream)));
    }
    Ok(upstream)
}

/// Follows one upstream connection's events. On `notifications/tools/list_changed` the new list
/// is read and vetted at once (so a rug pull is recorded even before anyone calls the tool), and
/// the grant's sessions that see this server are told their list changed. Resource updates, the
/// other list changes and log messages go to the sessions that may have them
/// ([`relay::relay_event`]). Ends with the connection.
async fn relay_events(
    state: std::sync::Weak<State>,
    grant: String,
    server: String,
    mut events: tokio::sync::broadcast::Receiver<crate::gateway::upstream::UpstreamEvent>,
    upstream: std::sync::Weak<crate::gateway::upstream::Upstream>,
) {
    use crate::gateway::upstream::UpstreamEvent;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(UpstreamEvent::ToolsListChanged) | Err(RecvError::Lagged(_)) => {}
            Ok(UpstreamEvent::Closed) | Err(RecvError::Closed) => return,
            Ok(other) => {
                let Some(state) = state.upgrade() else { return };
                relay::relay_event(&state, &grant, &server, &other);
                continue;
            }
        }
        let (Some(state), Some(upstream)) = (state.upgrade(), upstream.upgrade()) else { return };
        let Some(active) = state.active.load_full() else { continue };
        if active.snapshot.servers.contains_key(&server)
            && let Ok(tools) = upstream.list_tools().await
        {
            vet_list(&state, &active.snapshot, &server, &tools).await;
        }
        for session in state.sessions.all() {
            if session.grant == grant && session.endpoint.as_deref().is_none_or(|e| e == server) {
                session.notify(json!({ "jsonrpc": "2.0", "method": "notifications/tools/list_changed" }));
            }
        }
    }
}

/// `tools/call`: route, decide, forward. `progress` relays upstream progress to the client.
/// The upstream's requests to the client during the call go to `to_client` (the call's own
/// event stream) or, without one, to the session's GET stream ([`relay_server_request`]).
async fn call_tool(
    cx: &Ctx,
    session: &Arc<Session>,
    id: Value,
    mut params: Value,
    progress: Option<(mpsc::UnboundedSender<Value>, Value)>,
    to_client: Option<mpsc::UnboundedSender<Value>>,
) -> Value {
    // Taken out of the request, not copied: arguments can be megabytes.
    let args = match params.get_mut("arguments").map(Value::take) {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(a @ Value::Object(_)) => a,
        Some(_) => return jsonrpc::error(id, INVALID_PARAMS, "invalid params: arguments must be an object"),
    };
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return jsonrpc::error(id, INVALID_PARAMS, "invalid params: name must be a string");
    };
    let grant = cx.grant();
    let snap = &cx.active.snapshot;
    let (server, tool) = match cx.endpoint() {
        Some(s) => (s, name),
        None => name.split_once("__").unwrap_or(("", name)),
    };
    // A name no tool can have is refused before anything else looks at it, and the record
    // keeps it bounded: a client cannot make the call log hold what it sent.
    if let Err(why) = crate::supply::check_name(tool).and_then(|()| check_server_name(server)) {
        let valid = |n: &str| crate::supply::check_name(n).is_ok();
        let (server, tool) = (bound::name(server, check_server_name(server).is_ok()), bound::name(tool, valid(tool)));
        let record = Recorder::new(cx, session, &server, &tool, &args);
        record.denied(INVALID_NAME, &why).await;
        return jsonrpc::error(id, INVALID_PARAMS, format!("Unknown tool: {}", bound::name(name, valid(name))));
    }
    let call = Call { identity: &grant.identity, server, tool, args: &args };
    let record = Recorder::new(cx, session, server, tool, &args);
    // Hidden, ungranted and unknown tools do not exist for this caller; the attempt is recorded.
    if !snap.servers.contains_key(server) || !may_allow(snap, grant, server, tool) {
        let d = evaluate_grant(snap, grant, &call);
        let (rule, message) = if d.is_allow() { (Arc::from(UNKNOWN_TOOL), Arc::from("no such tool")) } else { (d.rule, d.message) };
        record.denied(&rule, &message).await;
        return jsonrpc::error(id, INVALID_PARAMS, format!("Unknown tool: {name}"));
    }
    let upstream = match connect(cx, server).await {
        Ok(u) => u,
        Err(e) => return upstream_error(id, server, e),
    };
    let tools = match upstream.list_tools().await {
        Ok(tools) if tools.iter().any(|t| t.get("name").and_then(Value::as_str) == Some(tool)) => tools,
        Ok(_) => {
            record.denied(UNKNOWN_TOOL, "the upstream does not offer this tool").await;
            return jsonrpc::error(id, INVALID_PARAMS, format!("Unknown tool: {name}"));
        }
        Err(e) => return upstream_error(id, server, e),
    };
    let deny = |rule: &str, message: &str| {
        jsonrpc::tool_error(id.clone(), format!("denied by policy: {message} (rule {rule}, commit {})", snap.short_commit()))
    };
    // A tool whose definition is not the approved one never reaches the policy.
    if let Some(q) = vet_list(&cx.state, &cx.active.snapshot, server, &tools).await.quarantine(tool) {
        let message = q.message();
        record.denied(QUARANTINED, &message).await;
        return deny(QUARANTINED, &message);
    }
    let decision = evaluate_grant(snap, grant, &call);
    // debug, not info: every call is in the audit log; a log line per call costs a write(2).
    debug!(commit = snap.short_commit(), grant = %grant.name, server, tool, verdict = ?decision.verdict, rule = %decision.rule, "tools/call");
    if !decision.is_allow() {
        record.denied(&decision.rule, &decision.message).await;
        return deny(&decision.rule, &decision.message);
    }
    // Quotas: reserve before anything reaches the upstream; a refused call consumes nothing.
    let who = Subject { identity: &grant.identity, server };
    let mut reservation = match cx.state.quotas.reserve(&decision.quotas, &who, &args, unix_now()).await {
        Ok(r) => r,
        Err(Refused::Unavailable(e)) => {
            // Fail closed: a quota that cannot be counted cannot be held. (The store logs its
            // outages once; a line per refused call would flood the log.)
            debug!(error = %e, server, tool, "quota store unavailable: call refused");
            let message = "the quota store is unavailable, so no call that counts a quota is forwarded";
            record.denied(QUOTA_UNAVAILABLE, message).await;
            return deny(QUOTA_UNAVAILABLE, message);
        }
        Err(Refused::Exceeded(exceeded)) => {
            let rule = exceeded.quota.id.clone();
            record.denied(&rule, &exceeded.why).await;
            record.event("quota_exceeded", json!({ "rule": &*rule, "quota": exceeded.quota.name, "limit": exceeded.quota.describe() })).await;
            return deny(&rule, &exceeded.why);
        }
    };
    // Write-ahead: the decision is durable before the upstream hears of the call, or the call
    // is refused.
    if let Err(e) = record.allowed(&decision.rule, &decision.message, &mut reservation, cx.state.quotas.persistent()).await {
        cx.state.quotas.rollback(reservation).await;
        error!(error = %e, server, tool, "audit log unavailable: call refused");
        return deny(AUDIT_UNAVAILABLE, "the audit log is unavailable, so no call is forwarded");
    }
    // Forward on a task of its own so that notifications/cancelled can abort it; dropping the
    // upstream request future tells the upstream to cancel too.
    let started = Instant::now();
    let forwarded = json!({ "name": tool, "arguments": args });
    let (requests_tx, mut requests_rx) = mpsc::unbounded_channel();
    let mut task = tokio::spawn(async move { upstream.request_relaying("tools/call", forwarded, progress, Some(requests_tx)).await });
    let _guard = session.track(id.to_string(), task.abort_handle());
    let joined = loop {
        tokio::select! {
            joined = &mut task => break joined,
            Some(request) = requests_rx.recv() => relay_server_request(cx, session, server, request, to_client.as_ref()).await,
        }
    };
    let (reply, outcome) = match joined {
        Ok(Ok(result)) => {
            let failed = result.get("isError").and_then(Value::as_bool) == Some(true);
            (jsonrpc::result(id, result), if failed { "upstream_error" } else { "ok" })
        }
        Ok(Err(e)) => {
            let outcome = if matches!(e, UpstreamError::Timeout(_)) { "timeout" } else { "upstream_error" };
            (upstream_error(id, server, e), outcome)
        }
        Err(_) => (jsonrpc::error(id, REQUEST_CANCELLED, "request cancelled"), "unknown"),
    };
    // Only calls that reached the upstream and succeeded count against quotas.
    if outcome == "ok" {
        cx.state.quotas.commit(reservation);
    } else {
        cx.state.quotas.rollback(reservation).await;
    }
    record.outcome(&decision.rule, &decision.message, outcome, started.elapsed());
    reply
}

/// Rule id of an upstream request relayed to the client whose call caused it.
const CALL_IN_PROGRESS: &str = "gatehouse:call-in-progress";
/// Rule id of an upstream request the client did not declare the capability for.
const NO_CLIENT_CAPABILITY: &str = "gatehouse:client-capability";
/// Rule id of an upstream request with no stream to the client to carry it.
const NO_CLIENT_STREAM: &str = "gatehouse:no-client-stream";
/// Rule id of an upstream request during a stateless (2026-07-28) request of the client.
const STATELESS_CLIENT: &str = "gatehouse:stateless-client";

/// One request of the upstream to the client (sampling, elicitation, roots) made during a call
/// of this session: recorded (kind `server_request`, the method as the name, its parameter
/// keys), refused if the client did not declare the capability or there is no stream to carry
/// it, else sent to the client with an id of the gateway's (`to_client`, or the GET stream).
/// The client's answer (a POSTed response, [`Session::answer`]) goes back to the upstream under
/// its own id; no answer within the server's timeout is an error to the upstream.
async fn relay_server_request(cx: &Ctx, session: &Arc<Session>, server: &str, request: ServerRequest, to_client: Option<&mpsc::UnboundedSender<Value>>) {
    let ServerRequest { method, mut params, reply } = request;
    // The upstream's progress token is its own (client progress is not relayed back): dropped.
    if let Some(Value::Object(meta)) = params.get_mut("_meta") {
        meta.remove("progressToken");
        if meta.is_empty() {
            params.as_object_mut().map(|p| p.remove("_meta"));
        }
    }
    let record = Recorder::with_kind(cx, session, "server_request", server, method.clone(), arg_keys(&params));
    let capability = match method.as_str() {
        "sampling/createMessage" => "sampling",
        "elicitation/create" => "elicitation",
        _ => "roots",
    };
    let refuse = |code: i64, message: String| json!({ "code": code, "message": message });
    // A stateless request has nowhere to take a request to the client and bring the answer
    // back (2026-07-28 clients answer with a new request, which may reach another replica).
    if session.is_stateless() {
        record.denied(STATELESS_CLIENT, "the call came as a stateless 2026-07-28 request, which cannot carry a request to the client").await;
        let _ = reply.send(Err(refuse(METHOD_NOT_FOUND, format!("the client does not support {method}"))));
        return;
    }
    if !session.has_capability(capability) {
        record.denied(NO_CLIENT_CAPABILITY, &format!("the client did not declare the {capability} capability")).await;
        let _ = reply.send(Err(refuse(METHOD_NOT_FOUND, format!("the client does not support {method}"))));
        return;
    }
    if to_client.is_none() && !session.has_stream() {
        record.denied(NO_CLIENT_STREAM, "no stream to the client is open to carry the request").await;
        let _ = reply.send(Err(refuse(INTERNAL_ERROR, format!("{method}: the client has no open stream to receive it"))));
        return;
    }
    let why = "relayed to the client of the call in progress";
    if let Err(e) = record.allowed_plain(CALL_IN_PROGRESS, why).await {
        error!(error = %e, server, method, "audit log unavailable: an upstream request was not relayed");
        let _ = reply.send(Err(refuse(INTERNAL_ERROR, "the gateway's audit log is unavailable".into())));
        return;
    }
    let (tx, answer) = tokio::sync::oneshot::channel();
    let client_id = session.expect_answer(tx);
    let message = json!({ "jsonrpc": "2.0", "id": client_id, "method": method, "params": params });
    let started = Instant::now();
    let delivered = match to_client {
        Some(out) => out.send(message).is_ok(),
        None => session.notify(message),
    };
    if !delivered {
        session.forget_answer(&client_id);
        let _ = reply.send(Err(refuse(INTERNAL_ERROR, format!("{method}: the client's stream closed"))));
        record.outcome(CALL_IN_PROGRESS, why, "upstream_error", started.elapsed());
        return;
    }
    let timeout = cx.active.snapshot.servers.get(server).map_or(Duration::from_secs(60), |s| s.timeout);
    let session = session.clone();
    tokio::spawn(async move {
        let (outcome, answer) = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(result))) => ("ok", Ok(result)),
            Ok(Ok(Err(error))) => ("upstream_error", Err(error)),
            Ok(Err(_)) => ("unknown", Err(refuse(INTERNAL_ERROR, "the client session ended".into()))),
            Err(_) => {
                session.forget_answer(&client_id);
                ("timeout", Err(refuse(UPSTREAM_TIMEOUT, format!("the client did not answer within {} ms", timeout.as_millis()))))
            }
        };
        let _ = reply.send(answer);
        record.outcome(CALL_IN_PROGRESS, why, outcome, started.elapsed());
    });
}

/// The upstream's tool list vetted against the snapshot's pins; a quarantine seen for the first
/// time is recorded as a `tool_quarantined` monitoring event.
async fn vet_list(state: &State, snap: &Arc<crate::policy::snapshot::Snapshot>, server: &str, tools: &Arc<Vec<Value>>) -> Arc<crate::supply::Vetted> {
    let (vetted, fresh) = state.vetting.vet(snap, &snap.servers[server], tools);
    for q in fresh {
        warn!(server = %q.server, tool = %q.detail["tool"], reason = %q.detail["reason"], "tool quarantined");
        if let Some(log) = state.audit.get() {
            let mut detail = q.detail;
            detail["commit"] = json!(q.commit);
            if let Err(e) = log.event("tool_quarantined", now_rfc3339_ms(), detail).await {
                error!(error = %e, "audit log unavailable: a quarantine event was not recorded");
            }
        }
    }
    vetted
}

/// Rule id of a call to a tool whose definition is not the approved one.
pub(super) const QUARANTINED: &str = "gatehouse:tool-quarantined";
/// Rule id of a call to a tool the upstream does not offer.
const UNKNOWN_TOOL: &str = "gatehouse:unknown-tool";
/// Rule id of a call whose tool or server name breaks the name rules (no tool can have it).
pub(super) const INVALID_NAME: &str = "gatehouse:invalid-name";

/// `Ok` when `server` could name a server (`[a-z0-9-]{1,48}`, as `servers/<name>.yaml`).
pub(super) fn check_server_name(server: &str) -> Result<(), String> {
    let ok = (1..=48).contains(&server.len()) && server.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(format!("the server name of {} bytes breaks the name rules ([a-z0-9-], at most 48)", server.len())) }
}
/// Rule id of a call refused because its decision record could not be written.
pub(super) const AUDIT_UNAVAILABLE: &str = "gatehouse:audit-unavailable";
/// Rule id of a call refused because its quotas could not be counted (the shared quota store
/// did not answer).
pub(super) const QUOTA_UNAVAILABLE: &str = "gatehouse:quota-unavailable";

/// Builds and writes the call records of one `tools/call` (or `resources/read`, `prompts/get`),
/// all from the request's snapshot.
pub(super) struct Recorder {
    base: Option<CallRecord>,
    log: Option<AuditLog>,
}

impl Recorder {
    fn new(cx: &Ctx, session: &Session, server: &str, tool: &str, args: &Value) -> Recorder {
        if cx.state.audit.get().is_none() {
            return Recorder { base: None, log: None };
        }
        let category = cx.active.snapshot.servers.get(server).and_then(|s| s.tools.get(tool)).and_then(|t| t.category).map(|c| c.as_str().to_string());
        Recorder::build(cx, session, "tool", server, tool.to_string(), category, arg_keys(args))
    }

    /// The records of a `resources/read` (`kind: resource`, `tool`: [`bound::resource`] of the
    /// URI) or a `prompts/get` (`kind: prompt`, `tool`: the prompt, its argument keys).
    pub(super) fn with_kind(cx: &Ctx, session: &Session, kind: &str, server: &str, name: String, arg_keys: Vec<String>) -> Recorder {
        Recorder::build(cx, session, kind, server, name, None, arg_keys)
    }

    fn build(cx: &Ctx, session: &Session, kind: &str, server: &str, tool: String, category: Option<String>, arg_keys: Vec<String>) -> Recorder {
        let Some(log) = cx.state.audit.get().cloned() else { return Recorder { base: None, log: None } };
        let snap = &cx.active.snapshot;
        let grant = cx.grant();
        let base = CallRecord {
            seq: 0,
            ts: String::new(),
            replica: cx.state.replica.clone(),
            session: session.reference.clone(),
            identity: grant.identity.clone(),
            grant: grant.file.clone(),
            auth: cx.sign_in.as_ref().map_or("token", |s| &*s.issuer).to_string(),
            kind: kind.into(),
            server: server.to_string(),
            tool,
            category,
            arg_keys,
            verdict: String::new(),
            rule: String::new(),
            message: String::new(),
            policy_commit: snap.commit.clone(),
            snapshot_digest: snap.digest.clone(),
            outcome: String::new(),
            latency_ms: None,
            prev_hash: String::new(),
            hash: None,
        };
        Recorder { base: Some(base), log: Some(log) }
    }

    fn record(&self, verdict: &str, rule: &str, message: &str, outcome: &str, latency: Option<Duration>) -> Option<CallRecord> {
        let mut r = self.base.clone()?;
        r.ts = now_rfc3339_ms();
        r.verdict = verdict.to_string();
        r.rule = rule.to_string();
        r.message = message.to_string();
        r.outcome = outcome.to_string();
        r.latency_ms = latency.map(|d| d.as_millis() as u64);
        Some(r)
    }

    /// A denial: recorded (a failure to record it is logged; the call is refused anyway).
    pub(super) async fn denied(&self, rule: &str, message: &str) {
        if let (Some(log), Some(r)) = (&self.log, self.record("deny", rule, message, "denied", None))
            && let Err(e) = log.append(r).await
        {
            error!(error = %e, "audit log unavailable: a denial was not recorded");
        }
    }

    /// The write-ahead decision record of an allowed call, with its quota reservation in the
    /// same transaction (marked durable once written).
    async fn allowed(&self, rule: &str, message: &str, reservation: &mut Reservation, persist: bool) -> Result<(), crate::record::store::StoreError> {
        match (&self.log, self.record("allow", rule, message, "unknown", None)) {
            (Some(log), Some(r)) => {
                let rows = if persist { reservation.rows() } else { Vec::new() };
                log.append_decision(r, rows).await?;
                if persist {
                    reservation.made_durable();
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The write-ahead decision record of an allowed request that counts no quota.
    pub(super) async fn allowed_plain(&self, rule: &str, message: &str) -> Result<(), crate::record::store::StoreError> {
        match (&self.log, self.record("allow", rule, message, "unknown", None)) {
            (Some(log), Some(r)) => log.append_decision(r, Vec::new()).await.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The outcome record; written in the background (the decision record is already durable),
    /// riding the store's next group commit. It is queued before this returns, so it is queued
    /// before the reply goes out and a clean shutdown (which waits for in-flight requests, then
    /// closes the store) commits it.
    pub(super) fn outcome(&self, rule: &str, message: &str, outcome: &str, latency: Duration) {
        if let (Some(log), Some(r)) = (&self.log, self.record("allow", rule, message, outcome, Some(latency))) {
            log.append_deferred_logged(r, "an outcome");
        }
    }

    async fn event(&self, kind: &'static str, mut detail: Value) {
        if let (Some(log), Some(b)) = (&self.log, &self.base) {
            detail["identity"] = json!(b.identity);
            detail["server"] = json!(b.server);
            detail["tool"] = json!(b.tool);
            if let Err(e) = log.event(kind, now_rfc3339_ms(), detail).await {
                error!(error = %e, "audit log unavailable: a monitoring event was not recorded");
            }
        }
    }
}

pub(super) fn upstream_error(id: Value, server: &str, e: UpstreamError) -> Value {
    match e {
        UpstreamError::Rpc { code, message, data } => jsonrpc::error_with_data(id, code, message, data),
        UpstreamError::Timeout(d) => {
            jsonrpc::error(id, UPSTREAM_TIMEOUT, format!("upstream {server} did not answer within {} ms", d.as_millis()))
        }
        other => {
            // Transport details (addresses, TLS, OS errors) go to the log, not to the client.
            warn!(server, error = %other, "upstream call failed");
            let what = if matches!(other, UpstreamError::Unavailable(_)) { "is unavailable" } else { "answered something that is not MCP" };
            jsonrpc::error(id, INTERNAL_ERROR, format!("upstream {server} {what}"))
        }
    }
}

/// A `tools/call` from a client that accepts SSE. With a progress token the response is an event
/// stream from the start, carrying the upstream's progress (with the client's token) as it
/// happens, then the result. Without one it is plain JSON, unless the upstream asks the client
/// something (sampling, elicitation, roots) before the result: then an event stream carrying
/// those requests, then the result.
///
/// `modern`: a stateless (2026-07-28) request, whose reply is shaped as that revision has it.
pub(super) async fn call_streaming(cx: Ctx, session: Arc<Session>, id: Value, params: Value, token: Option<Value>, modern: bool) -> Response<Body> {
    let state = cx.state.clone();
    let streamed = token.is_some();
    // Everything for the client in order: progress, relayed requests, and last the reply (the
    // one message without a method).
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
    // Streamed, the request's handler returns before the call ends: the call counts itself.
    let serving = streamed.then(crate::record::store::serving);
    tokio::spawn(async move {
        let _serving = serving;
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let forward = {
            let out_tx = out_tx.clone();
            async move {
                while let Some(p) = rx.recv().await {
                    let _ = out_tx.send(json!({ "jsonrpc": "2.0", "method": "notifications/progress", "params": p }));
                }
            }
        };
        let call = call_tool(&cx, &session, id, params, token.map(|token| (tx, token)), Some(out_tx.clone()));
        // The call ends by dropping its progress sender, which ends `forward`.
        let (mut reply, ()) = tokio::join!(call, forward);
        if modern {
            stateless::shape(&mut reply, "tools/call");
        }
        let _ = out_tx.send(reply);
    });
    let first = if streamed {
        None
    } else {
        match out_rx.recv().await {
            Some(reply) if reply.get("method").is_none() => return capped_response(&state, &reply),
            Some(request) => Some(request),
            None => return rpc_error(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_ERROR, "the call ended without an answer"),
        }
    };
    let frames = futures_util::stream::iter(first).chain(tokio_stream_from(out_rx)).map(|m| Ok::<_, Infallible>(Frame::data(sse_event(&m))));
    let body = BodyExt::boxed(StreamBody::new(frames));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::UnboundedReceiver<T>) -> impl futures_util::Stream<Item = T> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub(super) fn sse_event(msg: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {msg}\n\n"))
}

/// A 200 response carrying `v`, unless it would be larger than `--max-response`: then a
/// JSON-RPC error that names the limit (with the request's id when `v` is one reply).
pub(super) fn capped_response(state: &State, v: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(v).expect("a JSON value serializes");
    let max = state.config.max_response;
    if bytes.len() <= max {
        return json_bytes(StatusCode::OK, bytes);
    }
    warn!(bytes = bytes.len(), max, "response over the size limit refused");
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let e = jsonrpc::error(id, INTERNAL_ERROR, format!("response of {} bytes is over the limit of {max} bytes (--max-response)", bytes.len()));
    json_response(StatusCode::OK, &e)
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(v).expect("a JSON value serializes"))).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn rpc_error(status: StatusCode, code: i64, message: impl Into<String>) -> Response<Body> {
    json_response(status, &jsonrpc::error(Value::Null, code, message))
}

fn text(status: StatusCode, s: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(s.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub(super) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = status;
    r
}

fn unauthorized(why: &str) -> Response<Body> {
    let mut r = rpc_error(StatusCode::UNAUTHORIZED, SERVER_ERROR, format!("unauthorized: {why}"));
    let challenge = if why == "missing bearer token" {
        HeaderValue::from_static("Bearer realm=\"gatehouse\"")
    } else {
        HeaderValue::from_static("Bearer realm=\"gatehouse\", error=\"invalid_token\"")
    };
    r.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    r
}
