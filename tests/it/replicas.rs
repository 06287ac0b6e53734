//! The state database on PostgreSQL, shared by replicas: the store's write-ahead round trip and
//! per-replica chains, two `gatehouse serve` processes on one database (one change record per
//! commit, an application per replica, the replicas view), the CLI reading it (`audit verify`,
//! `evidence --database`), and PostgreSQL going away and coming back under a running daemon.
//! Skipped (one line) when no PostgreSQL answers on 127.0.0.1:5432, unless
//! GATEHOUSE_REQUIRE_SERVICES is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gatehouse::record::audit::CallRecord;
use gatehouse::record::audit::log::AuditLog;
use gatehouse::record::audit::verify::{Verdict, verify_all};
use gatehouse::record::store::{Location, Reader, Store};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::gateway::{initialize, post, send};
use crate::hardening::{Daemon, charge, example_repo, is_allowed};
use crate::services::postgres;
use crate::support::gatehouse;

const ALICE: &str = "demo-token-alice";

fn record(replica: &str, n: u64) -> CallRecord {
    CallRecord {
        seq: 0,
        ts: format!("2026-12-01T10:{:02}:{:02}.000Z", n / 60 % 60, n % 60),
        replica: replica.into(),
        session: "s".into(),
        identity: "alice@example.com".into(),
        grant: "grants/alice.yaml".into(),
        auth: "token".into(),
        kind: "tool".into(),
        server: "payments".into(),
        tool: "create_charge".into(),
        category: Some("financial".into()),
        arg_keys: vec!["amount".into()],
        verdict: "allow".into(),
        rule: "r".into(),
        message: "m".into(),
        policy_commit: Some("c".into()),
        snapshot_digest: "d".into(),
        outcome: "unknown".into(),
        latency_ms: None,
        prev_hash: String::new(),
        hash: None,
    }
}

async fn open(at: &Location) -> Store {
    let at = at.clone();
    tokio::task::spawn_blocking(move || Store::open_at(&at)).await.unwrap().expect("the store opens on PostgreSQL")
}

/// Rows of `sql` (one text column) on the test database.
fn texts(pg: &crate::services::Postgres, sql: &'static str) -> Vec<String> {
    pg.with(move |c| c.query(sql, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_on_postgres_is_write_ahead_and_keeps_a_chain_per_replica() {
    let Some(pg) = postgres() else { return };
    let at = Location::Postgres(pg.url.clone());
    // Two processes' stores (two writer threads, two connections) on one database; migrating
    // the second time is a no-op.
    let (a, b) = (open(&at).await, open(&at).await);
    let (log_a, log_b) = (AuditLog::new(a.clone()), AuditLog::new(b.clone()));

    // A decision record is committed when append answers: another connection sees it at once,
    // with the quota reservation it carried.
    let seq = log_a.append_decision(record("a", 0), vec![("cap".into(), "alice".into(), 60, 500.0)]).await.unwrap();
    assert_eq!(seq, 1);
    let seen = pg.with(|c| {
        let n: i64 = c.query_one("SELECT count(*) FROM calls WHERE replica = 'a' AND seq = 1", &[]).unwrap().get(0);
        let v: f64 = c.query_one("SELECT value FROM quota_counters WHERE counter = 'cap'", &[]).unwrap().get(0);
        (n, v)
    });
    assert_eq!(seen, (1, 500.0), "durable before the answer");

    // A failing job (alone in its group, or among others) fails alone; the writer goes on.
    let kv = |k: &'static str| move |c: &gatehouse::record::store::Conn| c.exec("INSERT INTO kv (key, value) VALUES (?1, 'v')", gatehouse::record::store::sql::params![k]);
    a.write(kv("k1")).await.unwrap();
    assert!(a.write(kv("k1")).await.is_err(), "a duplicate key fails");
    let (x, y, z) = tokio::join!(a.write(kv("k2")), a.write(kv("k2")), a.write(kv("k3")));
    assert_eq!([x.is_ok(), y.is_ok(), z.is_ok()].iter().filter(|ok| **ok).count(), 2, "{x:?} {y:?} {z:?}");
    a.write(kv("k4")).await.unwrap();
    assert_eq!(texts(&pg, "SELECT key FROM kv WHERE key LIKE 'k%' ORDER BY key"), ["k1", "k2", "k3", "k4"]);

    // Both replicas append concurrently, many calls each (group commit on both writers).
    const N: u64 = 150;
    let mut calls = Vec::new();
    for n in 1..N {
        let (la, lb) = (log_a.clone(), log_b.clone());
        calls.push(tokio::spawn(async move { la.append(record("a", n)).await }));
        calls.push(tokio::spawn(async move { lb.append(record("b", n)).await }));
    }
    for c in calls {
        c.await.unwrap().expect("appended");
    }
    // Deferred writes (an outcome record, a quota give-back) ride a later commit.
    log_b.append_deferred(record("b", N)).await.unwrap();

    let verdicts = tokio::task::spawn_blocking(move || verify_all(&Reader::open(&at).unwrap()).unwrap()).await.unwrap();
    assert_eq!(
        verdicts,
        vec![("a".to_string(), Verdict::Intact { count: N, first: 1, last: N }), ("b".to_string(), Verdict::Intact { count: N, first: 1, last: N })]
    );
    // Quota counters load back from PostgreSQL.
    let loaded = {
        let a = a.clone();
        tokio::task::spawn_blocking(move || {
            let r = a.read().unwrap();
            r.conn().query("SELECT counter FROM quota_counters", &[], |r| r.string(0)).unwrap()
        })
        .await
        .unwrap()
    };
    assert_eq!(loaded, ["cap"]);

    // A tampered record is named with its replica and seq.
    pg.with(|c| c.batch_execute(
        "INSERT INTO vals (v) VALUES ('x') ON CONFLICT DO NOTHING;
         UPDATE call_rows SET message = (SELECT id FROM vals WHERE v = 'x') WHERE replica = 'b' AND seq = 7",
    ).unwrap());
    let out = gatehouse(&["audit", "verify", "--database", &pg.url]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("ok: 150 records, seq 1..150, the chain verifies (replica a)"), "{}", out.stdout);
    assert!(out.stdout.contains("broken at seq 7 (replica b): hash does not match the record"), "{}", out.stdout);
    a.close().await;
    b.close().await;
}

/// Polls `/status` of `admin` until `ok` holds (at most 20 s).
async fn status_until(admin: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let r = send("GET", &format!("{admin}/status"), None, None, "", &[]).await;
        let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        if ok(&v) {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_serve_processes_share_one_postgres_database() {
    let Some(pg) = postgres() else { return };
    let (repo, dirs) = example_repo();
    let head = String::from_utf8(std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(repo.path()).output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let one = Daemon::start(repo.path(), &dirs.path().join("one"), &["--database", &pg.url, "--replica", "one"]).await;
    let two = Daemon::start(repo.path(), &dirs.path().join("two"), &["--database", &pg.url, "--replica", "two"]).await;

    // Calls through each replica, allowed and denied.
    for (d, id) in [(&one, 1), (&two, 2)] {
        let url = format!("{}/mcp/payments", d.url);
        let s = initialize(&url, ALICE, "2025-11-25").await;
        assert!(is_allowed(&post(&url, ALICE, Some(&s), charge(id, 1_000)).await.json()));
        assert!(!is_allowed(&post(&url, ALICE, Some(&s), charge(id + 10, 90_000)).await.json()), "over the single-charge limit");
    }

    // The commit has one change record and an application by each replica; the replicas view
    // shows both on it.
    assert_eq!(texts(&pg, "SELECT commit_id FROM changes"), [head.as_str()]);
    assert_eq!(texts(&pg, "SELECT replica FROM change_applications ORDER BY replica"), ["one", "two"]);
    let status = status_until(&one.admin, "both replicas on the commit", |v| {
        v["converged"] == true && v["replicas"].as_array().is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["applied"] == json!(head)))
    })
    .await;
    assert_eq!(status["replica"], "one");
    assert_eq!(status["store"]["healthy"], true);
    let metrics = send("GET", &format!("{}/metrics", two.admin), None, None, "", &[]).await.body;
    assert!(metrics.contains(&format!("gatehouse_replica_applied{{replica=\"one\",commit=\"{head}\"}} 1")), "{metrics}");
    assert!(metrics.contains("gatehouse_replicas_converged 1"), "{metrics}");
    let out = gatehouse(&["status", "--url", &one.admin]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("\"converged\": true") && out.stdout.contains("\"name\": \"two\""), "{}", out.stdout);
    // Quotas are still counted per process: the replica that sees the other one says so.
    let t = Instant::now();
    while !std::fs::read_to_string(&two.log).unwrap_or_default().contains("quotas are counted in each process") {
        assert!(t.elapsed() < Duration::from_secs(15), "no warning about local quotas:\n{}", std::fs::read_to_string(&two.log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Both chains verify; the evidence reads both replicas' records.
    let out = gatehouse(&["audit", "verify", "--database", &pg.url]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("(replica one)") && out.stdout.contains("(replica two)"), "{}", out.stdout);
    let today = gatehouse::units::Date::today();
    let (since, until) = (today.add_days(-1).to_string(), today.add_days(1).to_string());
    let ev = dirs.path().join("evidence");
    let repo_dir = repo.path().to_str().unwrap();
    let out = gatehouse(&[
        "evidence", "calls", "--since", &since, "--until", &until, "--format", "json", "--out", ev.to_str().unwrap(), "--repo", repo_dir,
        "--database", &pg.url,
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let calls: Value = serde_json::from_str(&std::fs::read_to_string(ev.join("calls.json")).unwrap()).unwrap();
    let replicas = &calls["source"]["replicas"];
    assert_eq!(replicas.as_array().map(Vec::len), Some(2), "{calls:#}");
    // Each replica: allowed (decision + outcome) and denied: three records, seq 1..3.
    for (r, name) in replicas.as_array().unwrap().iter().zip(["one", "two"]) {
        assert_eq!((r["replica"].as_str(), r["count"].as_u64(), r["first_seq"].as_u64(), r["last_seq"].as_u64()), (Some(name), Some(3), Some(1), Some(3)));
    }
    let rows = calls["rows"].as_array().unwrap();
    let ts: Vec<&str> = rows.iter().map(|r| r["ts"].as_str().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "in time order: {ts:?}");
    let out = gatehouse(&[
        "evidence", "bundle", "--since", &since, "--until", &until, "--out", dirs.path().join("bundle").to_str().unwrap(), "--repo", repo_dir,
        "--database", &pg.url,
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dirs.path().join("bundle/MANIFEST.json")).unwrap()).unwrap();
    // The change export names the replicas that applied each commit.
    let ev = dirs.path().join("changes");
    let out = gatehouse(&[
        "evidence", "changes", "--since", &since, "--until", &until, "--format", "json", "--out", ev.to_str().unwrap(), "--repo", repo_dir,
        "--database", &pg.url,
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let changes: Value = serde_json::from_str(&std::fs::read_to_string(ev.join("changes.json")).unwrap()).unwrap();
    let applied: Vec<&str> =
        changes["source"]["daemon"]["applications"][&head].as_array().unwrap().iter().map(|a| a["replica"].as_str().unwrap()).collect();
    assert_eq!(applied.len(), 2, "{:#}", changes["source"]);
    assert_eq!(manifest["audit"]["count"], 6, "{:#}", manifest["audit"]);
    assert_eq!(manifest["audit"]["chain"]["intact"], true, "{:#}", manifest["audit"]);
    assert!(manifest["sources"]["database"].as_str().is_some_and(|d| d.starts_with("postgres://")), "{:#}", manifest["sources"]);
    drop((one, two));
}

/// A TCP relay between gatehouse and PostgreSQL that a test can cut and restore.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay { addr: listener.local_addr().unwrap(), up: Arc::new(AtomicBool::new(true)), conns: Default::default() };
        let (up, conns) = (relay.up.clone(), relay.conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        relay
    }

    /// Every open connection is cut, and new ones are closed at once.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_refused_while_postgres_is_away_and_flow_again_when_it_returns() {
    let Some(pg) = postgres() else { return };
    let relay = Relay::start("127.0.0.1:5432".parse().unwrap()).await;
    let via = pg.url.replace("127.0.0.1:5432", &relay.addr.to_string());
    assert_ne!(via, pg.url, "the test database is on 127.0.0.1:5432");
    let (repo, dirs) = example_repo();
    let d = Daemon::start(repo.path(), &dirs.path().join("data"), &["--database", &via, "--replica", "solo"]).await;
    let url = format!("{}/mcp/payments", d.url);
    let s = initialize(&url, ALICE, "2025-11-25").await;
    assert!(is_allowed(&post(&url, ALICE, Some(&s), charge(1, 100)).await.json()));

    relay.cut();
    let refused = post(&url, ALICE, Some(&s), charge(2, 100)).await.json();
    assert!(!is_allowed(&refused), "fail closed: {refused}");
    assert!(refused.to_string().contains("gatehouse:audit-unavailable"), "{refused}");
    let ready = send("GET", &format!("{}/readyz", d.url), None, None, "", &[]).await;
    assert_eq!(ready.status, http::StatusCode::SERVICE_UNAVAILABLE, "{}", ready.body);

    // Back: the writer reconnects by itself; no restart.
    relay.restore();
    let t = Instant::now();
    let mut id = 3;
    loop {
        let r = post(&url, ALICE, Some(&s), charge(id, 100)).await.json();
        if is_allowed(&r) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "calls never flowed again: {r}");
        id += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(send("GET", &format!("{}/readyz", d.url), None, None, "", &[]).await.status, http::StatusCode::OK);
    // Nothing refused was recorded as forwarded, and the chain verifies.
    let out = gatehouse(&["audit", "verify", "--database", &pg.url]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    drop(d);
}
