//! Everything of MCP but tools, relayed under policy: resources (list, templates, read,
//! subscribe), prompts (list, get), completion and logging, and the upstream notifications that
//! go with them (resource updates, list changes, log messages).
//!
//! Deny by default, from the access entries of the caller's grant (`policy::eval::decide_resource`,
//! `decide_prompt`, `may_use_template`): lists show only what the caller may use; a resource or
//! prompt it may not use is answered exactly as one that does not exist (-32002 `Resource not
//! found`, -32602 `Unknown prompt`). Every `resources/read` and `prompts/get` leaves call records
//! like a tool call (kind `resource` | `prompt`), the decision written before the upstream hears
//! of it. On `/mcp` prompts are `<server>__<prompt>`; resource URIs are left as the upstream wrote
//! them and a read goes to the server whose patterns allow it (docs/gateway.md says why).

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tracing::{debug, error, warn};

use super::handler::{AUDIT_UNAVAILABLE, Ctx, INVALID_NAME, Recorder, check_server_name, connect, upstream_error};
use super::jsonrpc::{self, INVALID_PARAMS, RESOURCE_NOT_FOUND};
use super::session::Session;
use super::State;
use crate::gateway::upstream::{Upstream, UpstreamError, UpstreamEvent};
use crate::policy::Decision;
use crate::policy::eval::{RESOURCE_NOT_GRANTED, decide_prompt, decide_resource, grants_prompts, grants_resources, may_use_template};
use crate::policy::resource::template_prefix;
use crate::policy::snapshot::Grant;
use crate::record::audit::{arg_keys, bound};

/// JSON-RPC code of a request the client cancelled (as for tools).
const REQUEST_CANCELLED: i64 = -32800;

/// MCP log levels, least severe first (RFC 5424 severities).
pub const LOG_LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

/// The severity of a log level name (0 debug … 7 emergency).
pub fn severity(level: &str) -> Option<u8> {
    LOG_LEVELS.iter().position(|l| *l == level).map(|i| i as u8)
}

/// The servers a request may reach: the endpoint's, or every server of the grant, sorted.
pub(super) fn scope(cx: &Ctx) -> Vec<&str> {
    match cx.endpoint() {
        Some(s) => vec![s],
        None => {
            let snap = &cx.active.snapshot;
            let mut v: Vec<&str> = cx.grant().by_server.keys().map(String::as_str).filter(|s| snap.servers.contains_key(*s)).collect();
            v.sort_unstable();
            v
        }
    }
}

/// `Resource not found`, as the MCP specification answers a resource that does not exist.
fn not_found(id: Value, uri: &str) -> Value {
    jsonrpc::error_with_data(id, RESOURCE_NOT_FOUND, "Resource not found", Some(json!({ "uri": uri })))
}

fn unknown_prompt(id: Value, name: &str) -> Value {
    jsonrpc::error(id, INVALID_PARAMS, format!("Unknown prompt: {name}"))
}

/// Every item of `method`'s list from each server in scope that `wanted` says the grant may have
/// something of and whose upstream declares `capability`; per server, in scope order. An
/// upstream that is down or fails leaves its items out.
async fn gather<'a>(cx: &'a Ctx, servers: &[&'a str], capability: &str, method: &str, key: &str) -> Vec<(&'a str, Vec<Value>)> {
    join_all(servers.iter().map(|&server| async move {
        let upstream = match connect(cx, server).await {
            Ok(u) => u,
            Err(e) => {
                warn!(server, error = %e, "{method}: upstream unavailable; its items are left out");
                return (server, Vec::new());
            }
        };
        if !upstream.has_capability(capability) {
            return (server, Vec::new());
        }
        match upstream.list_all(method, key).await {
            Ok(items) => (server, items),
            Err(e) => {
                warn!(server, error = %e, "{method} failed upstream; its items are left out");
                (server, Vec::new())
            }
        }
    }))
    .await
}

// --- resources ---

/// `resources/list`: the resources the caller may read. On `/mcp` a URI two servers list is
/// kept once, from the first server by name (where a read of it goes).
pub(super) async fn list_resources(cx: &Ctx) -> Value {
    let out = listed_resources(cx, "resources/list", "resources", "uri", |grant, server, uri| decide_resource(grant, server, uri).is_allow()).await;
    json!({ "resources": out })
}

/// `resources/templates/list`: the templates that could produce a resource the caller may read
/// (their literal start could match one of its patterns).
pub(super) async fn list_resource_templates(cx: &Ctx) -> Value {
    let out = listed_resources(cx, "resources/templates/list", "resourceTemplates", "uriTemplate", may_use_template).await;
    json!({ "resourceTemplates": out })
}

/// The items of `method` (under `key`) from every server in scope that grants resources, kept
/// when `allowed(grant, server, item[field])`, each `field` value once (the first server by name).
async fn listed_resources(cx: &Ctx, method: &str, key: &str, field: &str, allowed: impl Fn(&Grant, &str, &str) -> bool) -> Vec<Value> {
    let grant = cx.grant();
    let servers: Vec<&str> = scope(cx).into_iter().filter(|s| grants_resources(grant, s)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (server, items) in gather(cx, &servers, "resources", method, key).await {
        for item in items {
            let Some(name) = item.get(field).and_then(Value::as_str) else { continue };
            if allowed(grant, server, name) && seen.insert(name.to_string()) {
                out.push(item);
            }
        }
    }
    out
}

/// The server a resource URI goes to, and the decision for it there. On `/mcp/<server>` that
/// server; on `/mcp` the one server whose patterns allow the URI or, when several do, the first
/// (by name) that lists it, else the first with a template whose literal start it begins with,
/// else the first. `""` when no server's patterns allow it.
async fn route_resource<'a>(cx: &'a Ctx, uri: &str) -> (&'a str, Decision) {
    let grant = cx.grant();
    if let Some(server) = cx.endpoint() {
        return (server, decide_resource(grant, server, uri));
    }
    let mut allowed: Vec<(&str, Decision)> =
        scope(cx).into_iter().map(|s| (s, decide_resource(grant, s, uri))).filter(|(_, d)| d.is_allow()).collect();
    match allowed.len() {
        0 => ("", Decision::deny(RESOURCE_NOT_GRANTED, format!("{} grants no resource pattern on any server that matches this URI", grant.file))),
        1 => allowed.pop().expect("one"),
        _ => {
            let servers: Vec<&str> = allowed.iter().map(|(s, _)| *s).collect();
            let listed = gather(cx, &servers, "resources", "resources/list", "resources").await;
            let pick = listed.iter().position(|(_, items)| items.iter().any(|r| r.get("uri").and_then(Value::as_str) == Some(uri)));
            let pick = match pick {
                Some(i) => i,
                None => {
                    let templates = gather(cx, &servers, "resources", "resources/templates/list", "resourceTemplates").await;
                    templates
                        .iter()
                        .position(|(_, items)| {
                            items.iter().filter_map(|t| t.get("uriTemplate").and_then(Value::as_str)).any(|t| {
                                let prefix = template_prefix(t);
                                !prefix.is_empty() && uri.starts_with(prefix)
                            })
                        })
                        .unwrap_or(0)
                }
            };
            allowed.swap_remove(pick)
        }
    }
}

/// `resources/read`: decided against the concrete URI, recorded, forwarded.
pub(super) async fn read_resource(cx: &Ctx, session: &Arc<Session>, id: Value, params: &Value) -> Value {
    let Some(uri) = params.get("uri").and_then(Value::as_str) else {
        return jsonrpc::error(id, INVALID_PARAMS, "invalid params: uri must be a string");
    };
    let (server, decision) = route_resource(cx, uri).await;
    let record = Recorder::with_kind(cx, session, "resource", server, bound::resource(uri), Vec::new());
    if !cx.active.snapshot.servers.contains_key(server) || !decision.is_allow() {
        record.denied(&decision.rule, &decision.message).await;
        return not_found(id, uri);
    }
    debug!(grant = %cx.grant().name, server, rule = %decision.rule, "resources/read");
    let upstream = match connect(cx, server).await {
        Ok(u) => u,
        Err(e) => return upstream_error(id, server, e),
    };
    forward(session, &record, &decision, id, upstream, server, "resources/read", json!({ "uri": uri })).await
}

/// `resources/subscribe` (`on`) and `resources/unsubscribe`. A subscription is the session's:
/// `notifications/resources/updated` reaches only sessions that subscribed and may still read
/// the resource. The upstream hears of the first subscription (of the grant's connection) and of
/// the last unsubscription.
pub(super) async fn subscribe(cx: &Ctx, session: &Arc<Session>, id: Value, params: &Value, on: bool) -> Value {
    let Some(uri) = params.get("uri").and_then(Value::as_str) else {
        return jsonrpc::error(id, INVALID_PARAMS, "invalid params: uri must be a string");
    };
    if !on {
        // Never refused and never forwarded for a subscription the session does not hold: it
        // says nothing about whether the resource exists.
        let held = scope(cx).into_iter().find(|s| session.is_subscribed(s, uri));
        if let Some(server) = held {
            session.unsubscribe(server, uri);
            let others = cx.state.sessions.all().iter().any(|s| s.grant == session.grant && s.is_subscribed(server, uri));
            if !others
                && let Ok(upstream) = connect(cx, server).await
                && let Err(e) = upstream.request("resources/unsubscribe", json!({ "uri": uri }), None).await
            {
                debug!(server, error = %e, "resources/unsubscribe failed upstream");
            }
        }
        return jsonrpc::result(id, json!({}));
    }
    let (server, decision) = route_resource(cx, uri).await;
    if !cx.active.snapshot.servers.contains_key(server) || !decision.is_allow() {
        debug!(grant = %cx.grant().name, rule = %decision.rule, "resources/subscribe refused");
        return not_found(id, uri);
    }
    let upstream = match connect(cx, server).await {
        Ok(u) => u,
        Err(e) => return upstream_error(id, server, e),
    };
    match upstream.request("resources/subscribe", json!({ "uri": uri }), None).await {
        Ok(_) => {
            session.subscribe(server, uri);
            jsonrpc::result(id, json!({}))
        }
        Err(e) => upstream_error(id, server, e),
    }
}

// --- prompts ---

/// `prompts/list`: the prompts the caller may get, `<server>__<prompt>` on `/mcp`.
pub(super) async fn list_prompts(cx: &Ctx) -> Value {
    let grant = cx.grant();
    let servers: Vec<&str> = scope(cx).into_iter().filter(|s| grants_prompts(grant, s)).collect();
    let mut out = Vec::new();
    for (server, items) in gather(cx, &servers, "prompts", "prompts/list", "prompts").await {
        for mut p in items {
            let Some(name) = p.get("name").and_then(Value::as_str) else { continue };
            if crate::supply::check_name(name).is_err() || !decide_prompt(grant, server, name).is_allow() {
                continue;
            }
            if cx.endpoint().is_none() {
                p["name"] = Value::String(format!("{server}__{name}"));
            }
            out.push(p);
        }
    }
    json!({ "prompts": out })
}

/// A name shown whole (to the client, in a record) since it passes the name rules itself, like
/// `simple-prompt` sent to `/mcp` without its server.
fn valid_name(name: &str) -> bool {
    crate::supply::check_name(name).is_ok()
}

/// The (server, prompt) a client's prompt name routes to, or the bounded forms of both when it
/// breaks the name rules (no prompt can have it).
fn route_prompt<'a>(cx: &'a Ctx, name: &'a str) -> Result<(&'a str, &'a str), (String, String, String)> {
    let (server, prompt) = match cx.endpoint() {
        Some(s) => (s, name),
        None => name.split_once("__").unwrap_or(("", name)),
    };
    match crate::supply::check_name(prompt).map_err(|e| e.replace("tool name", "prompt name")).and_then(|()| check_server_name(server)) {
        Ok(()) => Ok((server, prompt)),
        Err(why) => Err((bound::name(server, check_server_name(server).is_ok()), bound::name(prompt, valid_name(prompt)), why)),
    }
}

/// `prompts/get`: decided, recorded (argument keys only), forwarded.
pub(super) async fn get_prompt(cx: &Ctx, session: &Arc<Session>, id: Value, params: &Value) -> Value {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return jsonrpc::error(id, INVALID_PARAMS, "invalid params: name must be a string");
    };
    let args = match params.get("arguments") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => return jsonrpc::error(id, INVALID_PARAMS, "invalid params: arguments must be an object"),
    };
    let (server, prompt) = match route_prompt(cx, name) {
        Ok(sp) => sp,
        Err((server, prompt, why)) => {
            Recorder::with_kind(cx, session, "prompt", &server, prompt, arg_keys(&args)).denied(INVALID_NAME, &why).await;
            return unknown_prompt(id, &bound::name(name, valid_name(name)));
        }
    };
    let record = Recorder::with_kind(cx, session, "prompt", server, prompt.to_string(), arg_keys(&args));
    let decision = decide_prompt(cx.grant(), server, prompt);
    if !cx.active.snapshot.servers.contains_key(server) || !decision.is_allow() {
        record.denied(&decision.rule, &decision.message).await;
        return unknown_prompt(id, name);
    }
    debug!(grant = %cx.grant().name, server, prompt, rule = %decision.rule, "prompts/get");
    let upstream = match connect(cx, server).await {
        Ok(u) => u,
        Err(e) => return upstream_error(id, server, e),
    };
    forward(session, &record, &decision, id, upstream, server, "prompts/get", json!({ "name": prompt, "arguments": args })).await
}

/// The write-ahead decision record, then the upstream request on a task of its own (so that
/// `notifications/cancelled` aborts it), then the outcome record.
#[allow(clippy::too_many_arguments)]
async fn forward(session: &Arc<Session>, record: &Recorder, decision: &Decision, id: Value, upstream: Arc<Upstream>, server: &str, method: &'static str, params: Value) -> Value {
    if let Err(e) = record.allowed_plain(&decision.rule, &decision.message).await {
        error!(error = %e, server, method, "audit log unavailable: request refused");
        return jsonrpc::error(id, jsonrpc::INTERNAL_ERROR, format!("refused: the audit log is unavailable, so nothing is forwarded (rule {AUDIT_UNAVAILABLE})"));
    }
    let started = Instant::now();
    let task = tokio::spawn(async move { upstream.request(method, params, None).await });
    let _guard = session.track(id.to_string(), task.abort_handle());
    let (reply, outcome) = match task.await {
        Ok(Ok(result)) => (jsonrpc::result(id, result), "ok"),
        Ok(Err(e)) => {
            let outcome = if matches!(e, UpstreamError::Timeout(_)) { "timeout" } else { "upstream_error" };
            (upstream_error(id, server, e), outcome)
        }
        Err(_) => (jsonrpc::error(id, REQUEST_CANCELLED, "request cancelled"), "unknown"),
    };
    record.outcome(&decision.rule, &decision.message, outcome, started.elapsed());
    reply
}

// --- completion and logging ---

/// `completion/complete` for a prompt's argument (`ref/prompt`, allowed as `prompts/get` of it)
/// or a resource template's (`ref/resource`, allowed when the template could produce a resource
/// the caller may read). Refused like a missing prompt or resource otherwise. Not recorded: the
/// argument's value is what the user is typing.
pub(super) async fn complete(cx: &Ctx, id: Value, params: &Value) -> Value {
    let grant = cx.grant();
    // A progress token in `_meta` is dropped by the upstream layer.
    let mut forwarded = params.clone();
    let server = match params.pointer("/ref/type").and_then(Value::as_str) {
        Some("ref/prompt") => {
            let Some(name) = params.pointer("/ref/name").and_then(Value::as_str) else {
                return jsonrpc::error(id, INVALID_PARAMS, "invalid params: ref.name must be a string");
            };
            let Ok((server, prompt)) = route_prompt(cx, name) else { return unknown_prompt(id, &bound::name(name, valid_name(name))) };
            if !cx.active.snapshot.servers.contains_key(server) || !decide_prompt(grant, server, prompt).is_allow() {
                return unknown_prompt(id, name);
            }
            forwarded["ref"]["name"] = Value::String(prompt.to_string());
            server
        }
        Some("ref/resource") => {
            let Some(uri) = params.pointer("/ref/uri").and_then(Value::as_str) else {
                return jsonrpc::error(id, INVALID_PARAMS, "invalid params: ref.uri must be a string");
            };
            let candidates: Vec<&str> = scope(cx).into_iter().filter(|s| may_use_template(grant, s, uri)).collect();
            match candidates.len() {
                0 => return not_found(id, uri),
                1 => candidates[0],
                _ => {
                    let lists = gather(cx, &candidates, "resources", "resources/templates/list", "resourceTemplates").await;
                    let offers = |items: &Vec<Value>| items.iter().any(|t| t.get("uriTemplate").and_then(Value::as_str) == Some(uri));
                    lists.iter().find(|(_, items)| offers(items)).map_or(candidates[0], |(s, _)| *s)
                }
            }
        }
        _ => return jsonrpc::error(id, INVALID_PARAMS, "invalid params: ref.type must be ref/prompt or ref/resource"),
    };
    let upstream = match connect(cx, server).await {
        Ok(u) => u,
        Err(e) => return upstream_error(id, server, e),
    };
    match upstream.request("completion/complete", forwarded, None).await {
        Ok(result) => jsonrpc::result(id, result),
        Err(e) => upstream_error(id, server, e),
    }
}

/// `logging/setLevel`: the session's level, and to each upstream in scope that declares
/// `logging` the least severe level any of the grant's sessions that see it asked for (the
/// connection is the grant's; the gateway filters per session).
pub(super) async fn set_level(cx: &Ctx, session: &Arc<Session>, id: Value, params: &Value) -> Value {
    let Some(level) = params.get("level").and_then(Value::as_str).and_then(severity) else {
        return jsonrpc::error(id, INVALID_PARAMS, format!("invalid params: level must be one of {}", LOG_LEVELS.join(", ")));
    };
    session.set_log_level(level);
    let sessions = cx.state.sessions.all();
    join_all(scope(cx).into_iter().map(|server| {
        let sessions = &sessions;
        async move {
            let least = sessions
                .iter()
                .filter(|s| s.grant == session.grant && s.endpoint.as_deref().is_none_or(|e| e == server))
                .filter_map(|s| (0..LOG_LEVELS.len() as u8).find(|&l| s.wants_log(l)))
                .min()
                .unwrap_or(level);
            let upstream = match connect(cx, server).await {
                Ok(u) if u.has_capability("logging") => u,
                Ok(_) => return,
                Err(e) => return debug!(server, error = %e, "logging/setLevel: upstream unavailable"),
            };
            if let Err(e) = upstream.request("logging/setLevel", json!({ "level": LOG_LEVELS[least as usize] }), None).await {
                debug!(server, error = %e, "logging/setLevel failed upstream");
            }
        }
    }))
    .await;
    jsonrpc::result(id, json!({}))
}

// --- upstream notifications ---

/// Relays one upstream event of the grant's connection to `server` to the grant's sessions that
/// see that server and may have it, under the active snapshot: a resource update to the
/// sessions that subscribed to it and may still read it; a resource or prompt list change to
/// the sessions granted resources or prompts there; a log message to the sessions whose level
/// it reaches, its `logger` prefixed with the server on `/mcp`.
pub(super) fn relay_event(state: &State, grant_name: &str, server: &str, event: &UpstreamEvent) {
    let Some(active) = state.active.load_full() else { return };
    let Some(grant) = active.snapshot.grant_by_name(grant_name) else { return };
    if !active.snapshot.servers.contains_key(server) {
        return;
    }
    let sessions = state.sessions.all();
    let sessions = sessions.iter().filter(|s| s.grant == grant_name && s.endpoint.as_deref().is_none_or(|e| e == server));
    match event {
        UpstreamEvent::ResourceUpdated(params) => {
            let uri = params.get("uri").and_then(Value::as_str).unwrap_or("");
            if !decide_resource(grant, server, uri).is_allow() {
                return;
            }
            for s in sessions.filter(|s| s.is_subscribed(server, uri)) {
                s.notify(json!({ "jsonrpc": "2.0", "method": "notifications/resources/updated", "params": params }));
            }
        }
        UpstreamEvent::ResourcesListChanged if grants_resources(grant, server) => {
            for s in sessions {
                s.notify(json!({ "jsonrpc": "2.0", "method": "notifications/resources/list_changed" }));
            }
        }
        UpstreamEvent::PromptsListChanged if grants_prompts(grant, server) => {
            for s in sessions {
                s.notify(json!({ "jsonrpc": "2.0", "method": "notifications/prompts/list_changed" }));
            }
        }
        UpstreamEvent::Log(params) if may_see_server(grant, server) => {
            let Some(level) = params.get("level").and_then(Value::as_str).and_then(severity) else { return };
            for s in sessions.filter(|s| s.wants_log(level)) {
                let mut params = params.clone();
                if s.endpoint.is_none() {
                    let logger = match params.get("logger").and_then(Value::as_str) {
                        Some(l) => format!("{server}/{l}"),
                        None => server.to_string(),
                    };
                    params["logger"] = Value::String(logger);
                }
                s.notify(json!({ "jsonrpc": "2.0", "method": "notifications/message", "params": params }));
            }
        }
        _ => {}
    }
}

/// A grant that reaches a server hears its log messages (they are the upstream's to send).
fn may_see_server(grant: &Grant, server: &str) -> bool {
    grant.by_server.contains_key(server)
}
