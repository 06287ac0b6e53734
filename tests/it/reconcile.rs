//! The reconciler against a real git repository: each commit validated, applied atomically or
//! rejected (the previous commit keeps serving), recorded as a change, history rewrites refused,
//! restarts, revocations, and list_changed notifications to connected clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse::gateway::proxy::{self, Active, Config};
use gatehouse::repo::{Files, compile};
use gatehouse::gateway::secrets::SecretSource;
use gatehouse::commands::serve::{self, Daemon, Settings};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::gateway::{MockUpstream, call, initialize, post, send, spawn_admin, token_hash};
use crate::support::TestRepo;

const TOKEN: &str = "reconcile-token-0123456789";
const OTHER: &str = "other-token-0123456789";

/// A daemon on a repository, serving on a loopback port.
pub struct Live {
    pub url: String,
    /// The admin listener (`/status`, `/metrics`, `POST /-/reconcile`).
    pub admin: String,
    pub daemon: Daemon,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn live(repo: &std::path::Path, data: &std::path::Path, branch: Option<&str>) -> Live {
    live_with(repo, data, branch, false).await
}

/// `live`, optionally with `serve --trust-initial-signers`.
pub async fn live_with(repo: &std::path::Path, data: &std::path::Path, branch: Option<&str>, trust_initial_signers: bool) -> Live {
    let settings = Settings {
        repo: repo.display().to_string(),
        branch: branch.map(str::to_string),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.to_path_buf(),
        database: None,
        replica: None,
        secrets: SecretSource::default(),
        // Long: changes must be noticed by the watcher, not by polling.
        poll: Duration::from_secs(600),
        accept_rewrite: false,
        trust_initial_signers,
        webhook_secret: None,
        proxy: Config::default(),
        quota_store: None,
    };
    let daemon = serve::start(settings).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let state = daemon.state.clone();
    tokio::spawn(async move { proxy::serve(listener, state, async { let _ = stopped.await; }).await });
    let admin = spawn_admin(&daemon.state).await;
    Live { url, admin, daemon, stop: Some(stop) }
}

impl Live {
    pub async fn status(&self) -> Value {
        send("GET", &format!("{}/status", self.admin), None, None, "", &[]).await.json()
    }

    /// Waits until /status satisfies `ok` (5 s at most).
    pub async fn wait(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let s = self.status().await;
            if ok(&s) {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "timed out waiting for {what}: {s:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn applied(&self, commit: &str) -> Value {
        self.wait(&format!("{commit} applied"), |s| s["active"]["commit"] == commit).await
    }

    pub async fn attempted(&self, commit: &str) -> Value {
        self.wait(&format!("{commit} attempted"), |s| s["last_attempted"]["commit"] == commit).await
    }

    fn changes(&self) -> Vec<(String, String, String)> {
        let c = self.daemon.store.reader().unwrap();
        let mut stmt = c.prepare("SELECT commit_id, status, errors FROM changes ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    }
}

fn server(upstream: &MockUpstream) -> String {
    format!("name: mock\ntransport: streamable-http\nurl: {}\ntimeout: 2s\nsupplier: {{ operated_by: internal }}\ntools: {{ add: {{ category: read }}, echo_headers: {{ category: read }} }}\n", upstream.url)
}

fn grant(tools: &str) -> String {
    format!(
        "identity: agent\nkind: agent\nowner: o@x\ntokens: [ {{ sha256: {} }}, {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: {tools}, policy: policies/p.yaml }} ]\n",
        token_hash(TOKEN),
        token_hash(OTHER)
    )
}

/// A policy that denies `add` with a message naming `tag`.
fn policy(tag: &str) -> String {
    format!("tools:\n  echo_headers: {{}}\n  add:\n    deny_if: [ {{ name: {tag}, message: \"{tag}\", conditions: [ {{ path: args.a, op: gt, value: 100 }} ] }} ]\n")
}

/// The deny text of a big `add`: names the rule and the commit that decided.
async fn denial(url: &str, session: &str) -> String {
    let r = post(&format!("{url}/mcp"), TOKEN, Some(session), call(1, "mock__add", json!({ "a": 500, "b": 1 }))).await.json();
    r["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{r}")).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_commit_is_rejected_while_the_previous_one_keeps_serving() {
    let up = MockUpstream::start().await;
    let repo = TestRepo::new();
    let data = tempfile::tempdir().unwrap();
    let good = repo.commit("first policy", &[("servers/mock.yaml", &server(&up)), ("grants/agent.yaml", &grant("\"*\"")), ("policies/p.yaml", &policy("v1"))]);
    let g = live(repo.path(), data.path(), None).await;
    g.applied(&good).await;
    let s = initialize(&format!("{}/mcp", g.url), TOKEN, "2025-11-25").await;
    assert!(denial(&g.url, &s).await.contains(&format!("commit {}", &good[..12])));

    let with_secret = format!("{}credentials:\n  headers: {{ X-Key: \"${{secret:absent-key}}\" }}\n", server(&up));
    let bad = [
        ("yaml", vec![("policies/p.yaml", "tools:\n  add: {\n")], "policies/p.yaml:3:1: error: invalid YAML"),
        ("regex", vec![("policies/p.yaml", "tools:\n  add:\n    deny_if: [ { conditions: [ { path: args.a, op: regex, value: \"(\" } ] } ]\n")], "invalid regex"),
        ("server", vec![("grants/agent.yaml", "identity: agent\nkind: human\naccess: [ { server: nope, tools: \"*\" } ]\n")], "server \"nope\" does not exist"),
        ("secret", vec![("servers/mock.yaml", with_secret.as_str())], "secret \"absent-key\" is not set"),
    ];
    let mut rejected = Vec::new();
    let mut serving = good.clone();
    for (what, files, error) in bad {
        let c = repo.commit(&format!("break it: {what}"), &files);
        let st = g.attempted(&c).await;
        assert_eq!(st["last_attempted"]["outcome"], "rejected", "{what}: {st:#}");
        let errors: Vec<&str> = st["last_attempted"]["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        let errors = errors.join("\n");
        assert!(errors.contains(error), "{what}: {errors}");
        assert!(!errors.contains("hunter") && !errors.contains("upstream-secret"), "no secret values in errors");
        assert_eq!(st["active"]["commit"], serving, "{what}: the last good commit keeps serving");
        assert_eq!(st["conditions"][1]["type"], "Stalled");
        assert_eq!(st["conditions"][1]["status"], "True");
        assert!(denial(&g.url, &s).await.contains(&format!("commit {}", &serving[..12])), "{what}");
        // a fix for the next case: valid again, so it is applied
        serving = repo.commit(&format!("revert {what}"), &[("servers/mock.yaml", &server(&up)), ("grants/agent.yaml", &grant("\"*\"")), ("policies/p.yaml", &policy("v1"))]);
        g.applied(&serving).await;
        rejected.push(c);
    }
    let fixed = repo.commit("v2", &[("policies/p.yaml", &policy("v2"))]);
    let st = g.applied(&fixed).await;
    assert_eq!(st["conditions"][0]["status"], "True");
    assert_eq!(st["conditions"][1]["status"], "False", "no longer stalled");
    assert!(denial(&g.url, &s).await.contains("(rule policies/p.yaml#/tools/add/deny_if/v2, commit"));
    let changes = g.changes();
    for c in &rejected {
        let rec = changes.iter().find(|(id, _, _)| id == c).unwrap_or_else(|| panic!("no record for {c}: {changes:?}"));
        assert_eq!(rec.1, "rejected");
        assert!(rec.2.len() > 2, "its errors are recorded");
    }
    assert_eq!(changes.last().unwrap().0, fixed);
    assert_eq!(changes.last().unwrap().1, "applied");
    let ids: Vec<&String> = changes.iter().map(|c| &c.0).collect();
    let unique: std::collections::BTreeSet<&&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "one record per commit");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_commits_pushed_at_once_give_three_change_records_in_order() {
    let up = MockUpstream::start().await;
    let repo = TestRepo::new();
    let data = tempfile::tempdir().unwrap();
    let base = repo.commit("base", &[("servers/mock.yaml", &server(&up)), ("grants/agent.yaml", &grant("[echo_headers]")), ("policies/p.yaml", &policy("v1"))]);
    repo.set_branch("live", &base);
    let g = live(repo.path(), data.path(), Some("live")).await;
    g.applied(&base).await;
    let a = repo.commit("Grant the agent add (#12)", &[("grants/agent.yaml", &grant("[echo_headers, add]"))]);
    let b = repo.commit("Merge pull request #13 from team/tighten\n\nTighten add", &[("policies/p.yaml", &policy("v2"))]);
    let c = repo.commit("Revoke echo", &[("grants/agent.yaml", &grant("[add]"))]);
    repo.set_branch("live", &c);
    g.applied(&c).await;
    let conn = g.daemon.store.reader().unwrap();
    let mut stmt = conn.prepare("SELECT commit_id, status, pull_request, author, files, access_diff, applied_at FROM changes ORDER BY id").unwrap();
    type Row = (String, String, Option<i64>, String, String, String, Option<String>);
    let rows: Vec<Row> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let order: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(order, [(base.as_str(), "applied"), (a.as_str(), "superseded"), (b.as_str(), "superseded"), (c.as_str(), "applied")]);
    assert_eq!((rows[1].2, rows[2].2, rows[3].2), (Some(12), Some(13), None));
    assert_eq!(rows[1].3, "Test Author <author@example.com>");
    assert_eq!(rows[1].4, "[\"grants/agent.yaml\"]");
    let diff: Value = serde_json::from_str(&rows[1].5).unwrap();
    assert_eq!(diff["gained"], json!([ { "identity": "agent", "server": "mock", "tool": "add" } ]));
    let diff: Value = serde_json::from_str(&rows[3].5).unwrap();
    assert_eq!(diff["lost"], json!([ { "identity": "agent", "server": "mock", "tool": "echo_headers" } ]));
    assert!(rows[1].6.is_none() && rows[3].6.is_some(), "only applied commits have applied_at");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_force_push_is_refused_and_recorded_until_accepted() {
    let up = MockUpstream::start().await;
    let repo = TestRepo::new();
    let data = tempfile::tempdir().unwrap();
    let files = [("servers/mock.yaml", server(&up)), ("grants/agent.yaml", grant("\"*\"")), ("policies/p.yaml", policy("v1"))];
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let c1 = repo.commit("one", &files);
    let c2 = repo.commit("two", &[("policies/p.yaml", &policy("v2"))]);
    repo.set_branch("live", &c2);
    let g = live(repo.path(), data.path(), Some("live")).await;
    g.applied(&c2).await;
    let rewritten = repo.commit_detached(&c1, "rewritten history", &[("policies/p.yaml", &policy("v3"))]);
    repo.set_branch("live", &rewritten);
    let st = g.wait("the rewrite", |s| s["history_rewritten"].is_object()).await;
    assert_eq!(st["history_rewritten"]["old_tip"], c2);
    assert_eq!(st["history_rewritten"]["new_tip"], rewritten);
    assert_eq!(st["history_rewritten"]["vanished"], json!([c2]));
    assert_eq!(st["conditions"][2]["status"], "True");
    assert_eq!(st["active"]["commit"], c2, "still serving the applied commit");

    let dir = data.path().to_path_buf();
    let (old, new) = tokio::task::spawn_blocking(move || gatehouse::gitops::reconcile::accept_rewrite(&gatehouse::record::store::Location::Dir(dir), "ops@example.com", "reverting a leaked grant"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((old.as_str(), new.as_str()), (c2.as_str(), rewritten.as_str()));
    assert_eq!(send("POST", &format!("{}/-/reconcile", g.admin), None, None, "{\"forged\": true}", &[]).await.status, StatusCode::ACCEPTED);
    let st = g.applied(&rewritten).await;
    assert!(st["history_rewritten"].is_null(), "{st:#}");
    let c = g.daemon.store.reader().unwrap();
    let (by, reason): (String, String) = c.query_row("SELECT accepted_by, reason FROM rewrites", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((by.as_str(), reason.as_str()), ("ops@example.com", "reverting a leaked grant"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_serves_the_last_applied_commit_at_once() {
    let up = MockUpstream::start().await;
    let repo = TestRepo::new();
    let data = tempfile::tempdir().unwrap();
    let good = repo.commit("good", &[("servers/mock.yaml", &server(&up)), ("grants/agent.yaml", &grant("\"*\"")), ("policies/p.yaml", &policy("v1"))]);
    {
        let g = live(repo.path(), data.path(), None).await;
        g.applied(&good).await;
    }
    // While it is down, the branch moves to a broken commit.
    let broken = repo.commit("broken", &[("policies/p.yaml", "tools: [")]);
    let g = live(repo.path(), data.path(), None).await;
    let st = g.status().await;
    assert_eq!(st["active"]["commit"], good, "ready with the last applied commit before any reconcile: {st:#}");
    let st = g.attempted(&broken).await;
    assert_eq!(st["last_attempted"]["outcome"], "rejected");
    assert_eq!(st["active"]["commit"], good);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_commit_refuses_the_next_call_and_ends_the_stream() {
    let up = MockUpstream::start().await;
    let repo = TestRepo::new();
    let data = tempfile::tempdir().unwrap();
    let c1 = repo.commit("grant", &[("servers/mock.yaml", &server(&up)), ("grants/agent.yaml", &grant("\"*\"")), ("policies/p.yaml", &policy("v1"))]);
    let g = live(repo.path(), data.path(), None).await;
    g.applied(&c1).await;
    let url = format!("{}/mcp", g.url);
    let s = initialize(&url, OTHER, "2025-11-25").await;
    let mut events = open_stream(&url, OTHER, &s).await;
    let ok = post(&url, OTHER, Some(&s), call(1, "mock__add", json!({ "a": 1, "b": 1 }))).await;
    assert_eq!(ok.status, StatusCode::OK);

    // Narrowing what the agent sees reaches the open stream as list_changed.
    let c2 = repo.commit("narrow (#7)", &[("grants/agent.yaml", &grant("[echo_headers]"))]);
    g.applied(&c2).await;
    let got = next_event(&mut events).await.expect("a notification");
    assert!(got.contains("notifications/tools/list_changed"), "{got}");

    // Revoking OTHER's token: the next request is refused and the stream ends.
    let revoked = format!("identity: agent\nkind: agent\nowner: o@x\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: [echo_headers] }} ]\n", token_hash(TOKEN));
    let c3 = repo.commit("revoke the second token", &[("grants/agent.yaml", &revoked)]);
    g.applied(&c3).await;
    assert_eq!(next_event(&mut events).await, None, "the stream of a revoked token ends");
    let r = post(&url, OTHER, Some(&s), call(2, "mock__echo_headers", json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(initialize(&url, TOKEN, "2025-11-25").await.len() == 64, "the other token still works");
}

/// Opens the session's GET stream; its body chunks arrive on the channel (closed at its end).
pub async fn open_stream(url: &str, token: &str, session: &str) -> mpsc::UnboundedReceiver<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .header("mcp-session-id", session)
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (tx, rx) = mpsc::unbounded_channel();
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

/// The next event that is not a comment, or None when the stream ended (5 s at most).
pub async fn next_event(rx: &mut mpsc::UnboundedReceiver<String>) -> Option<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("no event within 5 s") {
            Some(chunk) if chunk.starts_with(':') => continue,
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_call_is_decided_by_a_mix_of_two_snapshots() {
    // Two snapshots deny the same call with different rules; swapped continuously under
    // concurrent calls, every answer must name the rule and the commit of one snapshot.
    let up = MockUpstream::start().await;
    let build = |tag: &str, commit: &str| {
        let files = [("servers/mock.yaml", server(&up)), ("grants/agent.yaml", grant("\"*\"")), ("policies/p.yaml", policy(tag))];
        let mut f = Files::from_memory(files.iter().map(|(p, t)| (*p, t.as_str())));
        f.commit = Some(commit.to_string());
        Arc::new(compile(&f).unwrap().snapshot)
    };
    let (a, b) = (build("rule-a", &"a".repeat(40)), build("rule-b", &"b".repeat(40)));
    let gw = crate::gateway::Gateway::start(
        &[("servers/mock.yaml", &server(&up)), ("grants/agent.yaml", &grant("\"*\"")), ("policies/p.yaml", &policy("rule-a"))],
        SecretSource::default(),
        Config::default(),
    )
    .await;
    let url = format!("{}/mcp", gw.url);
    let state = gw.state.clone();
    let swapping = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = swapping.clone();
    let swapper = tokio::spawn(async move {
        let secrets = Arc::new(Default::default());
        let mut n = 0u64;
        while flag.load(std::sync::atomic::Ordering::Relaxed) {
            let snap = if n.is_multiple_of(2) { a.clone() } else { b.clone() };
            state.activate(Active { snapshot: snap, secrets: Arc::clone(&secrets) });
            n += 1;
            tokio::task::yield_now().await;
        }
        n
    });
    let mut clients = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let s = initialize(&url, TOKEN, "2025-11-25").await;
            let mut seen = [0usize; 2];
            for i in 0..60 {
                let r = post(&url, TOKEN, Some(&s), call(i, "mock__add", json!({ "a": 500, "b": 1 }))).await;
                if r.status == StatusCode::NOT_FOUND {
                    continue; // swapped to a snapshot built separately: sessions survive, nothing to check
                }
                let text = r.json()["result"]["content"][0]["text"].as_str().unwrap().to_string();
                let is_a = text.contains("deny_if/rule-a") && text.contains("commit aaaaaaaaaaaa");
                let is_b = text.contains("deny_if/rule-b") && text.contains("commit bbbbbbbbbbbb");
                assert!(is_a || is_b, "a decision mixing two snapshots: {text}");
                seen[usize::from(is_b)] += 1;
            }
            seen
        }));
    }
    let mut total = [0usize; 2];
    for c in clients {
        let seen = c.await.unwrap();
        total[0] += seen[0];
        total[1] += seen[1];
    }
    swapping.store(false, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.await.unwrap();
    assert!(swaps > 100, "the snapshots were swapped {swaps} times");
    assert!(total[0] > 0 && total[1] > 0, "both snapshots decided calls: {total:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_repository_is_cloned_and_fetched_on_a_signed_webhook() {
    let up = MockUpstream::start().await;
    let work = TestRepo::new();
    let c1 = work.commit("one", &[("servers/mock.yaml", &server(&up)), ("grants/agent.yaml", &grant("\"*\"")), ("policies/p.yaml", &policy("v1"))]);
    // The "remote": a bare repository that the work repository pushes to.
    let remote = tempfile::tempdir().unwrap();
    let bare = git2::Repository::init_bare(remote.path()).unwrap();
    let push = |commit: &str| {
        let src = git2::Repository::open(work.path()).unwrap();
        let mut r = src.remote_anonymous(remote.path().to_str().unwrap()).unwrap();
        r.push(&[format!("+{commit}:refs/heads/main")], None).unwrap();
    };
    push(&c1);
    bare.set_head("refs/heads/main").unwrap();
    let data = tempfile::tempdir().unwrap();
    let settings = Settings {
        repo: format!("file://{}", remote.path().display()),
        branch: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        database: None,
        replica: None,
        secrets: SecretSource::default(),
        poll: Duration::from_secs(600),
        accept_rewrite: false,
        trust_initial_signers: false,
        webhook_secret: Some("hook-secret".into()),
        proxy: Config::default(),
        quota_store: None,
    };
    let daemon = serve::start(settings).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy::serve(listener, daemon.state.clone(), async { let _ = stopped.await; }));
    let admin = spawn_admin(&daemon.state).await;
    let g = Live { url: url.clone(), admin: admin.clone(), daemon, stop: Some(stop) };
    g.applied(&c1).await;
    assert!(data.path().join("repo.git").exists(), "cloned into the data dir");

    let c2 = work.commit("two", &[("policies/p.yaml", &policy("v2"))]);
    push(&c2);
    assert_eq!(send("POST", &format!("{url}/-/reconcile"), None, None, "{}", &[]).await.status, StatusCode::NOT_FOUND, "not on the MCP listener");
    let hook = format!("{admin}/-/reconcile");
    let body = r#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}"#;
    assert_eq!(send("POST", &hook, None, None, body, &[]).await.status, StatusCode::UNAUTHORIZED, "unsigned");
    let forged = [("x-hub-signature-256", "sha256=00")];
    assert_eq!(send("POST", &hook, None, None, body, &forged).await.status, StatusCode::UNAUTHORIZED, "forged");
    let signature = format!("sha256={}", hex::encode(hmac(b"hook-secret", body.as_bytes())));
    let signed = [("x-hub-signature-256", signature.as_str())];
    assert_eq!(send("POST", &hook, None, None, body, &signed).await.status, StatusCode::ACCEPTED);
    // the payload's "after" is never trusted: the fetched tip is applied
    g.applied(&c2).await;
    let metrics = send("GET", &format!("{admin}/metrics"), None, None, "", &[]).await.body;
    assert!(metrics.contains("gatehouse_reconcile_total{outcome=\"applied\"} 2"), "{metrics}");
    assert!(metrics.contains(&format!("gatehouse_active_commit_info{{commit=\"{c2}\"}} 1")), "{metrics}");
    assert!(metrics.contains("gatehouse_reconcile_duration_seconds_count 2"), "{metrics}");

    let status = tokio::task::spawn_blocking(move || crate::support::gatehouse(&["status", "--url", &admin])).await.unwrap();
    assert_eq!(status.code, 0, "{}", status.stderr);
    let v: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["last_applied"]["commit"], c2);
}

/// HMAC-SHA256, written out independently of the gateway's.
fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut k = key.to_vec();
    k.resize(64, 0);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(msg.iter().copied()).collect();
    let inner = Sha256::digest(&ipad);
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(inner.iter().copied()).collect();
    Sha256::digest(&opad).to_vec()
}
