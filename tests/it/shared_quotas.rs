//! Quotas shared by several replicas in Redis (`serve --quota-store`): two stores on one Redis
//! reserve exactly the cap between them, a failed call gives back, windows roll over, spend caps
//! sum an argument; two `gatehouse serve` processes forward exactly the cap; and a Redis that
//! goes away mid-load refuses the calls with quotas (`gatehouse:quota-unavailable`), lets the
//! others through, shows on /readyz, /status and /metrics, and is used again once it returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::policy::{ArgPath, Increment, Quota, Scope};
use gatehouse::record::quota::shared::{Config, Shared};
use gatehouse::record::quota::{Quotas, Refused, Subject};
use gatehouse::units::{Rate, Window};
use serde_json::{Value, json};

use crate::gateway::{MockUpstream, call, initialize, post, send, token_hash};
use crate::hardening::Daemon;
use crate::services_redis::{REDIS, Relay, fresh_prefix, redis};
use crate::support::TestRepo;

const WHO: Subject<'static> = Subject { identity: "alice", server: "pay" };

fn rate(n: u64, window: Window) -> Arc<Quota> {
    Arc::new(Quota::rate("r".into(), "cap".into(), Rate { count: n, window }, Scope::Global))
}

fn spend(max: f64) -> Arc<Quota> {
    Arc::new(Quota {
        id: "s".into(),
        name: "spend".into(),
        counter: "spend:daily".into(),
        window: Window::Day,
        increment: Increment::Arg(ArgPath::parse("amount").unwrap()),
        max,
        inclusive: true,
        per: Scope::Identity,
        path: None,
        on_deny: None,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn replica(url: &str, prefix: &str) -> Arc<Quotas> {
    let config = Config { url: url.to_string(), prefix: prefix.to_string() };
    Arc::new(Quotas::shared(Shared::connect(&config).await.unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_one_redis_reserve_exactly_the_cap() {
    let Some(url) = redis().await else { return };
    let prefix = fresh_prefix();
    let (a, b) = (replica(&url, &prefix).await, replica(&url, &prefix).await);
    let cap = vec![rate(100, Window::Day)];
    let now = unix_now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (q, cap) = (if i % 2 == 0 { a.clone() } else { b.clone() }, cap.clone());
            tokio::spawn(async move { q.reserve(&cap, &WHO, &json!({}), now).await })
        })
        .collect();
    let mut reserved = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => reserved.push(r),
            Err(Refused::Exceeded(e)) => assert!(e.why.contains("cap"), "{}", e.why),
            Err(Refused::Unavailable(e)) => panic!("{e}"),
        }
    }
    assert_eq!(reserved.len(), 100, "200 concurrent reservations on two replicas against a cap of 100");

    // A failed call gives its place back, to either replica; a committed one keeps it.
    let last = reserved.pop().unwrap();
    a.rollback(last).await;
    let again = b.reserve(&cap, &WHO, &json!({}), now).await.expect("the place given back is free");
    b.commit(again);
    assert!(matches!(a.reserve(&cap, &WHO, &json!({}), now).await, Err(Refused::Exceeded(_))), "full again");
    for r in reserved {
        a.commit(r);
    }
    // The next calendar day is a new window.
    let tomorrow = now - now.rem_euclid(86_400) + 86_400;
    assert!(a.reserve(&cap, &WHO, &json!({}), tomorrow).await.is_ok(), "a new window starts at 00:00 UTC");
    assert!(b.reserve(&cap, &WHO, &json!({}), tomorrow - 1).await.is_err(), "the old window is still full");

    // The counters are keys with an expiry: the window's length and a margin.
    let mut c = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let key = format!("gatehouse:{{{prefix}}}:quota:r:*:{}", now - now.rem_euclid(86_400));
    let value: f64 = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert_eq!(value, 100.0, "{key}");
    assert!(ttl > 86_000 && ttl <= 86_400 + 300, "{key}: ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_spend_caps_sum_an_argument_across_replicas() {
    let Some(url) = redis().await else { return };
    let prefix = fresh_prefix();
    let (a, b) = (replica(&url, &prefix).await, replica(&url, &prefix).await);
    let cap = [spend(1000.0)];
    let now = unix_now();
    a.commit(a.reserve(&cap, &WHO, &json!({ "amount": 600.5 }), now).await.unwrap());
    match b.reserve(&cap, &WHO, &json!({ "amount": 400 }), now).await {
        Err(Refused::Exceeded(e)) => assert!(e.why.contains("spend"), "{}", e.why),
        other => panic!("600.5 + 400 is over 1000 on the other replica too: {other:?}"),
    }
    b.commit(b.reserve(&cap, &WHO, &json!({ "amount": 399.5 }), now).await.expect("exactly the cap (inclusive)"));
    assert!(a.reserve(&cap, &WHO, &json!({ "amount": 0.01 }), now).await.is_err(), "the cap holds to the cent");
    let bob = Subject { identity: "bob", server: "pay" };
    assert!(a.reserve(&cap, &bob, &json!({ "amount": 1000 }), now).await.is_ok(), "per identity");
    for bad in [json!({ "amount": "1" }), json!({}), json!({ "amount": -5 })] {
        assert!(matches!(a.reserve(&cap, &WHO, &bad, now).await, Err(Refused::Exceeded(_))), "{bad} never passes");
    }
    // Two quotas of one call: one that refuses keeps the other from counting (all or nothing).
    let roomy = Arc::new(Quota::rate("roomy".into(), "roomy".into(), Rate { count: 10, window: Window::Hour }, Scope::Global));
    let both = [roomy.clone(), spend(1000.0)];
    assert!(a.reserve(&both, &WHO, &json!({ "amount": 1 }), now).await.is_err());
    for _ in 0..10 {
        a.commit(a.reserve(std::slice::from_ref(&roomy), &WHO, &json!({}), now).await.expect("the refused call reserved nothing"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_dies_after_reserving_gives_nothing_back() {
    let Some(url) = redis().await else { return };
    let prefix = fresh_prefix();
    let cap = [rate(3, Window::Hour)];
    let now = unix_now();
    {
        // Reserved, then gone before it could commit or roll back (kill -9 mid-call).
        let dying = replica(&url, &prefix).await;
        for _ in 0..3 {
            let held = dying.reserve(&cap, &WHO, &json!({}), now).await;
            assert!(held.is_ok(), "{held:?}");
        }
    }
    let survivor = replica(&url, &prefix).await;
    assert!(matches!(survivor.reserve(&cap, &WHO, &json!({}), now).await, Err(Refused::Exceeded(_))), "the dead replica's calls count as spent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_cannot_answer_refuses_only_calls_with_quotas() {
    let Some(_) = redis().await else { return };
    let relay = Relay::start(REDIS).await;
    let q = replica(&relay.url(), &fresh_prefix()).await;
    let cap = [rate(1000, Window::Day)];
    let now = unix_now();
    q.commit(q.reserve(&cap, &WHO, &json!({}), now).await.unwrap());
    assert_eq!(q.store_available(), Some(true));
    relay.cut();
    let t = Instant::now();
    assert!(matches!(q.reserve(&cap, &WHO, &json!({}), now).await, Err(Refused::Unavailable(_))), "fail closed");
    assert!(t.elapsed() < Duration::from_secs(2), "refused within the timeout (500 ms, and slack for a loaded machine): {:?}", t.elapsed());
    assert_eq!(q.store_available(), Some(false));
    assert!(q.reserve(&[], &WHO, &json!({}), now).await.is_ok(), "a call without quotas never asks the store");
    relay.restore();
    let t = Instant::now();
    loop {
        match q.reserve(&cap, &WHO, &json!({}), now).await {
            Ok(r) => break q.commit(r),
            Err(e) => assert!(t.elapsed() < Duration::from_secs(5), "no recovery after 5 s: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(q.store_available(), Some(true));
}

// === through `gatehouse serve` ===

const TOKEN: &str = "shared-quota-token-0123456789";

/// A policy repository with one server (the mock upstream): `add` counts against a global cap
/// of `cap` calls a day, `echo_headers` counts nothing.
fn repo(up: &MockUpstream, cap: u64) -> TestRepo {
    let repo = TestRepo::new();
    let server = format!("name: mock\ntransport: streamable-http\nurl: {}\ntimeout: 5s\nsupplier: {{ operated_by: internal }}\ntools: {{ add: {{ category: financial }} }}\n", up.url);
    let policy = format!("tools:\n  echo_headers: {{}}\n  add:\n    limits: [ {{ name: adds per day, rate_limit: {cap}/day, per: global }} ]\n");
    let grant = format!("identity: agent\nkind: agent\nowner: o@x\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: \"*\", policy: policies/p.yaml }} ]\n", token_hash(TOKEN));
    repo.commit("shared quotas", &[("servers/mock.yaml", &server), ("policies/p.yaml", &policy), ("grants/agent.yaml", &grant)]);
    repo
}

async fn serve(repo: &TestRepo, data: &tempfile::TempDir, name: &str, store: &str, prefix: &str) -> Daemon {
    let flags = ["--quota-store", store, "--quota-key-prefix", prefix, "--max-connections-per-address", "0"];
    Daemon::start(repo.path(), &data.path().join(name), &flags).await
}

fn allowed(reply: &Value) -> bool {
    reply["result"].is_object() && reply["result"]["isError"] != true
}

fn adds(up: &MockUpstream) -> usize {
    up.calls.lock().unwrap().iter().filter(|c| c["name"] == "add").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_serve_processes_on_one_redis_forward_exactly_the_cap() {
    let Some(url) = redis().await else { return };
    let up = MockUpstream::start().await;
    let repo = repo(&up, 100);
    let (data, prefix) = (tempfile::tempdir().unwrap(), fresh_prefix());
    let replicas = [serve(&repo, &data, "one", &url, &prefix).await, serve(&repo, &data, "two", &url, &prefix).await];
    let mut endpoints = Vec::new();
    for d in &replicas {
        let mcp = format!("{}/mcp/mock", d.url);
        let session = initialize(&mcp, TOKEN, "2025-11-25").await;
        endpoints.push((mcp, session));
    }
    let endpoints = Arc::new(endpoints);
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let endpoints = endpoints.clone();
            tokio::spawn(async move {
                let (mcp, session) = &endpoints[i % 2];
                post(mcp, TOKEN, Some(session), call(i as i64, "add", json!({ "a": 1, "b": 2 }))).await.json()
            })
        })
        .collect();
    let mut answered = [0, 0];
    for (i, c) in calls.into_iter().enumerate() {
        let reply = c.await.unwrap();
        if allowed(&reply) {
            answered[i % 2] += 1;
        } else {
            assert!(reply.to_string().contains("adds per day"), "{reply}");
        }
    }
    assert_eq!(answered[0] + answered[1], 100, "allowed per replica: {answered:?}");
    assert_eq!(adds(&up), 100, "the upstream heard exactly the cap");
    // Whichever replica allowed them, both count them: each refuses the next call.
    for (i, (mcp, session)) in endpoints.iter().enumerate() {
        let reply = post(mcp, TOKEN, Some(session), call(1000 + i as i64, "add", json!({ "a": 1, "b": 2 }))).await.json();
        assert!(!allowed(&reply) && reply.to_string().contains("adds per day"), "replica {i}: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_going_away_mid_load_refuses_only_calls_with_quotas_until_it_returns() {
    let Some(_) = redis().await else { return };
    let up = MockUpstream::start().await;
    let repo = repo(&up, 1_000_000);
    let relay = Relay::start(REDIS).await;
    let data = tempfile::tempdir().unwrap();
    let d = serve(&repo, &data, "one", &relay.url(), &fresh_prefix()).await;
    let mcp = format!("{}/mcp/mock", d.url);
    let session = initialize(&mcp, TOKEN, "2025-11-25").await;

    // Load: four workers, each alternating a call with a quota and one without, until stopped.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (mcp, session, stop) = (mcp.clone(), session.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = w * 1_000_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let tool = if i % 2 == 0 { "add" } else { "echo_headers" };
                    let reply = post(&mcp, TOKEN, Some(&session), call(i, tool, json!({ "a": 1, "b": 1 }))).await.json();
                    seen.push((tool, reply));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = adds(&up);
    assert!(before > 0, "calls with quotas went through before the outage");

    relay.cut();
    let readyz = || async { send("GET", &format!("{}/readyz", d.url), None, None, "", &[]).await };
    let t = Instant::now();
    loop {
        let r = readyz().await;
        assert_eq!(r.status, http::StatusCode::OK, "calls without quotas still flow: the replica stays ready");
        if r.body.contains("quota store unavailable") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "/readyz never said so: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status: Value = send("GET", &format!("{}/status", d.admin), None, None, "", &[]).await.json();
    let condition = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "QuotaStoreAvailable").cloned();
    assert_eq!(condition.as_ref().map(|c| c["status"].clone()), Some(json!("False")), "{status}");
    assert_eq!(status["quota_store"], json!({ "kind": "redis", "available": false }));
    let metrics = send("GET", &format!("{}/metrics", d.admin), None, None, "", &[]).await.body;
    assert!(metrics.contains("gatehouse_quota_store_up 0"), "{metrics}");
    for i in 0..10 {
        let with = post(&mcp, TOKEN, Some(&session), call(900 + i, "add", json!({ "a": 1, "b": 1 }))).await.json();
        assert!(!allowed(&with) && with.to_string().contains("gatehouse:quota-unavailable"), "{with}");
        let without = post(&mcp, TOKEN, Some(&session), call(950 + i, "echo_headers", json!({}))).await.json();
        assert!(allowed(&without), "a call without quotas flows during the outage: {without}");
    }
    let during = adds(&up);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(adds(&up), during, "no call with a quota reaches the upstream while Redis is away");

    relay.restore();
    let t = Instant::now();
    let mut id = 2000;
    loop {
        id += 1;
        let r = post(&mcp, TOKEN, Some(&session), call(id, "add", json!({ "a": 1, "b": 1 }))).await.json();
        if allowed(&r) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no recovery 5 s after Redis returned: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    while readyz().await.body.contains("unavailable") {
        assert!(t.elapsed() < Duration::from_secs(3), "/readyz still says the quota store is unavailable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for w in workers {
        for (tool, reply) in w.await.unwrap() {
            match (tool, allowed(&reply)) {
                (_, true) => {}
                ("add", false) => {
                    assert!(reply.to_string().contains("gatehouse:quota-unavailable"), "{reply}");
                    refused += 1;
                }
                (_, false) => panic!("a call without quotas failed during the outage: {reply}"),
            }
        }
    }
    assert!(refused > 0, "the load met the outage");
    assert!(adds(&up) > during, "calls with quotas go through again without a restart");

    // Every refusal is in the call log, as a denial with its rule.
    let c = rusqlite::Connection::open(data.path().join("one").join("gatehouse.db")).unwrap();
    let recorded: i64 =
        c.query_row("SELECT count(*) FROM calls WHERE rule = 'gatehouse:quota-unavailable' AND verdict = 'deny'", [], |r| r.get(0)).unwrap();
    assert!(recorded >= 10 + refused, "{recorded} denials recorded, {refused} seen by the load and 10 by hand");
}
