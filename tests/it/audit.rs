//! The call log and quotas as an auditor and an operator see them: every call recorded before it
//! is forwarded, a chain that exposes tampering, fail-closed when the log cannot be written,
//! quotas that hold under concurrency, and no argument value anywhere on disk.

use gatehouse::record::audit::verify::{Format, Verdict, export, verify};
use gatehouse::gateway::proxy::Config;
use gatehouse::gateway::secrets::SecretSource;
use http::StatusCode;
use serde_json::{Value, json};

use crate::gateway::{Gateway, MockUpstream, call, initialize, post, send, token_hash};
use crate::support::{TestRepo, gatehouse};

const TOKEN: &str = "audit-token-0123456789";
const CANARY: &str = "CANARY-4815162342";

async fn world(up: &MockUpstream) -> Gateway {
    world_with(up, Config::default()).await
}

async fn world_with(up: &MockUpstream, config: Config) -> Gateway {
    let server = format!("name: mock\ntransport: streamable-http\nurl: {}\ntimeout: 2s\nsupplier: {{ operated_by: internal }}\ntools: {{ add: {{ category: financial }} }}\n", up.url);
    let policy = "tools:\n  echo_headers: {}\n  fail:\n    limits: [ { name: fail cap, rate_limit: 1/minute } ]\n  add:\n    deny_if: [ { name: big, conditions: [ { path: args.a, op: gt, value: 1000 } ] } ]\n    limits: [ { name: adds per minute, rate_limit: 100/minute, per: global } ]\n";
    let grant = format!("identity: agent\nkind: agent\nowner: o@x\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: \"*\", policy: policies/p.yaml }} ]\n", token_hash(TOKEN));
    Gateway::start(
        &[("servers/mock.yaml", &server), ("policies/p.yaml", policy), ("grants/agent.yaml", &grant)],
        SecretSource::default(),
        config,
    )
    .await
}

fn records(gw: &Gateway) -> Vec<Value> {
    let c = gw.store.reader().unwrap();
    let rows = gatehouse::record::audit::verify::canonical_records(&c).unwrap();
    rows.into_iter()
        .map(|(text, hash)| {
            let mut v: Value = serde_json::from_str(&text).unwrap();
            v["hash"] = Value::String(hash);
            v
        })
        .collect()
}

/// Waits for the background outcome records.
async fn settle(gw: &Gateway, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let r = records(gw);
        if r.len() >= n {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    records(gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_leaves_chained_records_and_tampering_is_found() {
    let up = MockUpstream::start().await;
    let gw = world(&up).await;
    let url = format!("{}/mcp", gw.url);
    let s = initialize(&url, TOKEN, "2025-11-25").await;
    post(&url, TOKEN, Some(&s), call(1, "mock__add", json!({ "a": 1, "b": 2, "note": CANARY }))).await;
    post(&url, TOKEN, Some(&s), call(2, "mock__add", json!({ "a": 5000, "b": 2 }))).await;
    post(&url, TOKEN, Some(&s), call(3, "mock__delete_all", json!({}))).await;
    let recs = settle(&gw, 4).await;
    let view: Vec<(String, String, String)> = recs.iter().map(|r| (r["verdict"].as_str().unwrap().into(), r["outcome"].as_str().unwrap().into(), r["rule"].as_str().unwrap().into())).collect();
    assert_eq!(view[0], ("allow".into(), "unknown".into(), "grants/agent.yaml#/access/0".into()), "the write-ahead decision");
    assert!(view.contains(&("allow".into(), "ok".into(), "grants/agent.yaml#/access/0".into())), "the outcome: {view:?}");
    assert!(view.contains(&("deny".into(), "denied".into(), "policies/p.yaml#/tools/add/deny_if/big".into())), "{view:?}");
    assert!(view.contains(&("deny".into(), "denied".into(), "policies/p.yaml#/default".into())), "an unlisted tool is recorded: {view:?}");
    let first = &recs[0];
    for field in ["seq", "ts", "replica", "session", "identity", "grant", "server", "tool", "category", "arg_keys", "verdict", "rule", "message", "policy_commit", "snapshot_digest", "outcome", "latency_ms", "prev_hash", "hash"] {
        assert!(first.get(field).is_some(), "field {field} missing: {first}");
    }
    assert_eq!(first["arg_keys"], json!(["a", "b", "note"]));
    assert_eq!(first["category"], "financial");
    // A short reference, never the session id (which with the token is a credential).
    let reference = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(s.as_bytes())[..8]);
    assert_eq!(first["session"], reference.as_str());
    assert_ne!(first["session"], s.as_str());
    assert_eq!(first["snapshot_digest"].as_str().unwrap().len(), 64);

    let c = gw.store.reader().unwrap();
    assert!(matches!(verify(&c).unwrap(), Verdict::Intact { count: 4, first: 1, last: 4 }));

    // Tampering, each on a fresh copy of the database.
    let tamper = |sql: &str| -> Verdict {
        let copy = tempfile::tempdir().unwrap();
        let path = copy.path().join("gatehouse.db");
        c.execute(&format!("VACUUM INTO '{}'", path.display()), []).unwrap();
        let t = rusqlite::Connection::open(&path).unwrap();
        t.execute_batch(sql).unwrap();
        verify(&t).unwrap()
    };
    let flipped = tamper("UPDATE call_rows SET verdict = (SELECT id FROM vals WHERE v = 'allow') WHERE seq = 3");
    assert_eq!(flipped, Verdict::Broken { seq: 3, why: "hash does not match the record".into() });
    let deleted = tamper("DELETE FROM call_rows WHERE seq = 2");
    assert!(matches!(deleted, Verdict::Broken { seq: 2, .. }), "{deleted:?}");
    let swapped = tamper(
        "UPDATE call_rows SET seq = -2 WHERE seq = 2; UPDATE call_rows SET seq = 2 WHERE seq = 3; UPDATE call_rows SET seq = 3 WHERE seq = -2;",
    );
    assert!(matches!(swapped, Verdict::Broken { seq: 2, .. }), "{swapped:?}");

    // The command line says the same.
    let dir = gw.data.path().to_str().unwrap().to_string();
    let ok = tokio::task::spawn_blocking(move || gatehouse(&["audit", "verify", "--data-dir", &dir])).await.unwrap();
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.starts_with("ok: 4 records"), "{}", ok.stdout);

    // Export: a file and a manifest; no argument value anywhere on disk.
    let out = gw.data.path().join("export.jsonl");
    let manifest = export(&c, "2000-01-01T00:00:00.000Z", "2100-01-01T00:00:00.000Z", Format::Jsonl, &out).unwrap();
    assert_eq!(manifest["count"], 4);
    assert_eq!((manifest["first_seq"].as_i64(), manifest["last_seq"].as_i64()), (Some(1), Some(4)));
    let body = std::fs::read(&out).unwrap();
    use sha2::Digest;
    assert_eq!(manifest["sha256"], hex::encode(sha2::Sha256::digest(&body)));
    let csv = gw.data.path().join("export.csv");
    export(&c, "2000-01-01T00:00:00.000Z", "2100-01-01T00:00:00.000Z", Format::Csv, &csv).unwrap();
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 5, "header + 4 records");
    drop(c);
    // `--out -`: the records on standard output (to pipe into jq), the manifest on standard error.
    let dir = gw.data.path().to_str().unwrap().to_string();
    let piped = tokio::task::spawn_blocking(move || {
        gatehouse(&["audit", "export", "--data-dir", &dir, "--since", "2000-01-01", "--until", "2100-01-01", "--out", "-"])
    })
    .await
    .unwrap();
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert_eq!(piped.stdout.as_bytes(), &body[..], "the same bytes as the file export");
    let m: serde_json::Value = serde_json::from_str(&piped.stderr).unwrap();
    assert_eq!((m["count"].as_u64(), m["file"].as_str()), (Some(4), Some("-")));
    assert_eq!(m["sha256"], manifest["sha256"]);
    for entry in std::fs::read_dir(gw.data.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()), "argument value found in {}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_cannot_be_written_refuses_calls_before_the_upstream() {
    // "full": the database may not grow past its current pages, which are then filled up, as
    // on a full disk. "read-only": the writer's connection refuses writes.
    let fill = "CREATE TABLE IF NOT EXISTS filler (b BLOB);";
    for (what, sql) in [("full", fill), ("read-only", "PRAGMA query_only = ON")] {
        let up = MockUpstream::start().await;
        let gw = world(&up).await;
        let url = format!("{}/mcp", gw.url);
        let s = initialize(&url, TOKEN, "2025-11-25").await;
        let ok = post(&url, TOKEN, Some(&s), call(1, "mock__echo_headers", json!({}))).await.json();
        assert!(ok["result"]["isError"] != true, "{ok}");
        let sql = sql.to_string();
        gw.store.write(move |c| c.sqlite().unwrap().execute_batch(&sql)).await.unwrap();
        if what == "full" {
            // The database may not grow past its current pages; fill them (each insert its own
            // transaction: a full database rolls back the transaction that hits the limit).
            gw.store.write(|c| c.sqlite().unwrap().query_row("PRAGMA max_page_count = 1", [], |_| Ok(()))).await.unwrap();
            for size in [4096i64, 512, 64, 8, 1] {
                while gw.store.write(move |c| c.sqlite().unwrap().execute("INSERT INTO filler VALUES (zeroblob(?1))", [size])).await.is_ok() {}
            }
        }
        // Calls go on while the last pages still have room; once a decision record cannot be
        // written, the call is refused and the upstream hears nothing of it. ("full": a later,
        // smaller write may still fit in a page's free space, e.g. when the failed group also
        // carried the previous call's outcome record; that call is forwarded only once its
        // decision record is durable, which the end checks.)
        let mut refused = 0;
        for i in 2..200 {
            let before = up.calls.lock().unwrap().len();
            let r = post(&url, TOKEN, Some(&s), call(i, "mock__echo_headers", json!({}))).await.json();
            if r["result"]["isError"] == true {
                assert!(r["result"]["content"][0]["text"].as_str().unwrap().contains("gatehouse:audit-unavailable"), "{what}: {r}");
                assert_eq!(up.calls.lock().unwrap().len(), before, "{what}: nothing reached the upstream");
                refused += 1;
                if refused == 3 {
                    break;
                }
            } else {
                assert!(refused == 0 || what == "full", "{what}: a call went through after the log failed: {r}");
            }
        }
        assert_eq!(refused, 3, "{what}: the log never failed");
        // Every call the upstream heard of has its decision record in the log.
        let c = gatehouse::record::store::open_read_only(gw.data.path()).unwrap();
        let decisions = gatehouse::record::audit::verify::canonical_records(&c)
            .unwrap()
            .iter()
            .filter(|(text, _)| {
                let v: serde_json::Value = serde_json::from_str(text).unwrap();
                v["verdict"] == "allow" && v["outcome"] == "unknown" && v["tool"] == "echo_headers"
            })
            .count();
        assert_eq!(decisions, up.calls.lock().unwrap().len(), "{what}: a forwarded call without its decision record");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_calls_against_a_cap_of_one_hundred_forward_exactly_one_hundred() {
    let up = MockUpstream::start().await;
    // 200 connections from one address: the per-address connection limit is not under test.
    let gw = world_with(&up, Config { max_connections_per_address: 0, ..Config::default() }).await;
    let url = format!("{}/mcp", gw.url);
    let sessions: Vec<String> = futures_util::future::join_all((0..8).map(|_| initialize(&url, TOKEN, "2025-11-25"))).await;
    let replies = futures_util::future::join_all((0..200).map(|i| {
        let (url, s) = (url.clone(), sessions[i % 8].clone());
        async move { post(&url, TOKEN, Some(&s), call(i as i64, "mock__add", json!({ "a": 1, "b": 1 }))).await }
    }))
    .await;
    let allowed = replies.iter().filter(|r| r.status == StatusCode::OK && r.json()["result"]["isError"] != true).count();
    let denied: Vec<Value> = replies.iter().map(|r| r.json()).filter(|r| r["result"]["isError"] == true).collect();
    assert_eq!(allowed, 100);
    assert_eq!(denied.len(), 100);
    assert!(denied[0]["result"]["content"][0]["text"].as_str().unwrap().contains("rule policies/p.yaml#/tools/add/limits/adds per minute"), "{}", denied[0]);
    assert_eq!(up.calls.lock().unwrap().len(), 100, "exactly 100 reached the upstream");
    let c = gw.store.reader().unwrap();
    let events: i64 = c.query_row("SELECT count(*) FROM events WHERE kind = 'quota_exceeded'", [], |r| r.get(0)).unwrap();
    assert_eq!(events, 100, "each threshold hit is a monitoring event");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_upstream_call_consumes_no_quota() {
    let up = MockUpstream::start().await;
    let gw = world(&up).await;
    let url = format!("{}/mcp", gw.url);
    let s = initialize(&url, TOKEN, "2025-11-25").await;
    // `fail` has a cap of 1/minute and always fails upstream: it never uses up its quota.
    for i in 0..3 {
        let r = post(&url, TOKEN, Some(&s), call(i, "mock__fail", json!({}))).await.json();
        assert_eq!(r["error"]["message"], "upstream broke", "call {i}: {r}");
    }
    assert_eq!(up.calls.lock().unwrap().len(), 3, "every failed call was let through");
    let recs = settle(&gw, 6).await;
    assert!(recs.iter().any(|r| r["outcome"] == "upstream_error"), "outcomes are recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_keeps_the_rest_of_the_chain_verifiable() {
    let up = MockUpstream::start().await;
    let gw = world(&up).await;
    let url = format!("{}/mcp", gw.url);
    let s = initialize(&url, TOKEN, "2025-11-25").await;
    for i in 0..3 {
        post(&url, TOKEN, Some(&s), call(i, "mock__add", json!({ "a": 5000 }))).await; // denied: one record each
    }
    let recs = settle(&gw, 3).await;
    let cutoff = recs[2]["ts"].as_str().unwrap().to_string();
    let pruned = gw.store.write(move |c| gatehouse::record::audit::log::prune_in(c, &cutoff)).await.unwrap();
    assert_eq!(pruned, 2);
    post(&url, TOKEN, Some(&s), call(9, "mock__add", json!({ "a": 5000 }))).await;
    let c = gw.store.reader().unwrap();
    assert_eq!(verify(&c).unwrap(), Verdict::Intact { count: 2, first: 3, last: 4 });
    drop(c);
    gw.store.write(|c| c.sqlite().unwrap().execute("UPDATE kv SET value = '2:0000' WHERE key LIKE 'chain_anchor:%'", [])).await.unwrap();
    let c = gw.store.reader().unwrap();
    assert!(matches!(verify(&c).unwrap(), Verdict::Broken { seq: 3, .. }), "a forged anchor is found");
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_counts_survive_a_restart() {
    let up = MockUpstream::start().await;
    let gw = world(&up).await;
    let url = format!("{}/mcp", gw.url);
    let s = initialize(&url, TOKEN, "2025-11-25").await;
    for i in 0..5 {
        post(&url, TOKEN, Some(&s), call(i, "mock__add", json!({ "a": 1, "b": 1 }))).await;
    }
    gw.store.flush().await.unwrap(); // counters are persisted in the background: wait for them
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let reloaded = gatehouse::record::quota::Quotas::load(Some(gw.store.clone()), now);
    let snap = gw.state.active.load_full().unwrap();
    let grant = snap.snapshot.grant("agent").unwrap();
    let args = json!({ "a": 1, "b": 1 });
    let d = gatehouse::policy::evaluate_grant(&snap.snapshot, grant, &gatehouse::policy::Call { identity: "agent", server: "mock", tool: "add", args: &args });
    let who = gatehouse::record::quota::Subject { identity: "agent", server: "mock" };
    // 100/minute: 5 used before the "restart", so 95 more fit and the 96th does not.
    let window_left = 60 - now.rem_euclid(60);
    if window_left > 2 {
        for _ in 0..95 {
            reloaded.reserve_local(&d.quotas, &who, &args, now).unwrap();
        }
        assert!(reloaded.reserve_local(&d.quotas, &who, &args, now).is_err(), "the count was reloaded");
    }
}

/// A clean shutdown (what SIGTERM or Ctrl-C does in `gatehouse serve`) commits the records still
/// queued behind the last calls: reopened, the database holds an outcome record for every
/// allowed call that was answered, and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_shutdown_keeps_the_outcome_record_of_every_answered_call() {
    let up = MockUpstream::start().await;
    let repo = TestRepo::new();
    let server = format!("name: mock\ntransport: streamable-http\nurl: {}\ntimeout: 2s\nsupplier: {{ operated_by: internal }}\n", up.url);
    let grant = format!("identity: agent\nkind: agent\nowner: o@x\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: \"*\", policy: policies/p.yaml }} ]\n", token_hash(TOKEN));
    repo.commit("policy", &[("servers/mock.yaml", &server), ("grants/agent.yaml", &grant), ("policies/p.yaml", "tools:\n  add: {}\n")]);
    let data = tempfile::tempdir().unwrap();
    let settings = gatehouse::commands::serve::Settings {
        repo: repo.path().display().to_string(),
        branch: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        database: None,
        replica: None,
        secrets: SecretSource::default(),
        poll: std::time::Duration::from_secs(600),
        accept_rewrite: false,
        trust_initial_signers: false,
        webhook_secret: None,
        proxy: Config::default(),
        quota_store: None,
    };
    // What `serve::serve_until` (and so `gatehouse serve`) does, holding one more handle on the
    // store as a task still alive at exit would: dropping handles is not what commits.
    let daemon = gatehouse::commands::serve::start(settings).await.unwrap();
    let held = daemon.store.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = daemon.state.clone();
    let served = tokio::spawn(async move {
        let r = gatehouse::gateway::proxy::serve(listener, state, async {
            let _ = stopped.await;
        })
        .await;
        daemon.shutdown().await;
        r
    });
    let t = std::time::Instant::now();
    while send("GET", &format!("{base}/readyz"), None, None, "", &[]).await.status != StatusCode::OK {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "the daemon never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let url = format!("{base}/mcp");
    let s = initialize(&url, TOKEN, "2025-11-25").await;
    // A denied call, then concurrent allowed calls, then shut down at once: the last outcomes
    // are still queued (they ride the writer's next group commit) when the shutdown starts.
    post(&url, TOKEN, Some(&s), call(1000, "mock__delete_all", json!({}))).await;
    const N: i64 = 48;
    let replies = futures_util::future::join_all((0..N).map(|i| post(&url, TOKEN, Some(&s), call(i, "mock__add", json!({ "a": i, "b": 1 }))))).await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.json()["result"].is_object(), "{}", r.body);
    }
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();

    // Reopened: every answered call has its decision and its outcome; the chain verifies.
    let c = gatehouse::record::store::open_read_only(data.path()).unwrap();
    assert_eq!(verify(&c).unwrap(), Verdict::Intact { count: 2 * N as u64 + 1, first: 1, last: 2 * N as u64 + 1 });
    let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM calls WHERE verdict = 'allow' AND outcome = 'unknown'"), N, "decision records");
    assert_eq!(count("SELECT count(*) FROM calls WHERE verdict = 'allow' AND outcome = 'ok'"), N, "outcome records");
    assert_eq!(count("SELECT count(*) FROM calls WHERE verdict = 'deny'"), 1, "the denial");
    drop(c);
    assert!(matches!(held.write(|_| Ok::<(), rusqlite::Error>(())).await, Err(gatehouse::record::store::StoreError::Stopped)), "the writer was stopped");
    // The writer is gone (the database is no longer held): a new store opens and appends.
    let store = gatehouse::record::store::Store::open(data.path()).unwrap();
    store.write(|c| c.sqlite().unwrap().execute("INSERT INTO kv (key, value) VALUES ('after', 'restart')", [])).await.unwrap();
    store.close().await;
    assert!(store.write(|_| Ok::<(), rusqlite::Error>(())).await.is_err(), "a closed store refuses writes");
}
