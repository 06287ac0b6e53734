use super::*;

#[test]
fn migrating_twice_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let mut conn = open_conn(&path, false).unwrap();
    schema::migrate(&mut conn).unwrap();
    let v1: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    conn.execute("INSERT INTO kv (key, value) VALUES ('k', 'v')", []).unwrap();
    schema::migrate(&mut conn).unwrap();
    let v2: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!((v1, v2), (schema::latest() as i64, schema::latest() as i64));
    let kept: String = conn.query_row("SELECT value FROM kv WHERE key = 'k'", [], |r| r.get(0)).unwrap();
    assert_eq!(kept, "v");
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_failing_job_does_not_undo_the_others_of_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let a = store.write(|c| c.sqlite().unwrap().execute("INSERT INTO kv VALUES ('a', '1')", []));
        let dup = store.write(|c| c.sqlite().unwrap().execute("INSERT INTO kv VALUES ('a', '2')", []));
        let b = store.write(|c| c.sqlite().unwrap().execute("INSERT INTO kv VALUES ('b', '1')", []));
        let (a, dup, b) = tokio::join!(a, dup, b);
        assert!(a.is_ok() && b.is_ok());
        assert!(dup.is_err(), "primary key violation");
    });
    let n: i64 = store.reader().unwrap().query_row("SELECT count(*) FROM kv", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2);
}

fn kv_has(c: &Connection, key: &str) -> bool {
    c.query_row("SELECT count(*) FROM kv WHERE key = ?1", [key], |r| r.get::<_, i64>(0)).unwrap() == 1
}

#[test]
fn a_deferred_job_rides_the_next_group_or_is_committed_after_defer_max() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        // Alone: it waits for another group, then is committed on its own.
        let t = Instant::now();
        store.write_deferred(|c| c.sqlite().unwrap().execute("INSERT INTO kv VALUES ('alone', '1')", [])).await.unwrap();
        assert!(t.elapsed() >= DEFER_MAX, "committed after {:?}", t.elapsed());
        assert!(kv_has(&store.reader().unwrap(), "alone"));

        // With a job that is not deferred: both in one transaction. Inside the second job, the
        // writer sees the deferred row while another connection does not: not yet committed.
        let rider = store.write_deferred(|c| c.sqlite().unwrap().execute("INSERT INTO kv VALUES ('rider', '1')", []));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let reader = store.reader().unwrap();
        let driver = store.write(move |c| Ok::<_, rusqlite::Error>((kv_has(c.sqlite().unwrap(), "rider"), kv_has(&reader, "rider"))));
        let (rider, driver) = tokio::join!(rider, driver);
        rider.unwrap();
        assert_eq!(driver.unwrap(), (true, false), "the deferred job ran, uncommitted, in the same transaction");
        assert!(kv_has(&store.reader().unwrap(), "rider"));
    });
}

#[test]
fn close_commits_what_is_queued_and_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let queued: Vec<_> = (0..50).map(|i| store.write_deferred(move |c| c.sqlite().unwrap().execute("INSERT INTO kv VALUES (?1, '1')", [format!("k{i}")]))).collect();
        let other = store.clone();
        other.close().await;
        for q in queued {
            q.await.unwrap();
        }
        let n: i64 = store.reader().unwrap().query_row("SELECT count(*) FROM kv", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 50);
        assert!(matches!(store.write(|_| Ok::<(), rusqlite::Error>(())).await, Err(StoreError::Stopped)));
        assert!(matches!(store.write_deferred(|_| Ok::<(), rusqlite::Error>(())).await, Err(StoreError::Stopped)));
        store.close().await; // twice: a no-op
    });
}

/// A call log written before replicas (schema 3: one chain, keyed by seq alone, a pruning anchor)
/// still verifies after migration 4, as the chain of its newest record's replica, and that
/// replica's next record continues it.
#[test]
fn an_old_single_chain_log_still_verifies_and_continues_after_migration_4() {
    use crate::record::audit::{CallRecord, GENESIS, chain_hash};
    use crate::record::audit::verify::{Verdict, verify_all};
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_conn(&dir.path().join(FILE), false).unwrap();
    schema::migrate_to(&mut conn, 3).unwrap();
    let record = |seq: u64, replica: &str, prev: &str| CallRecord {
        seq,
        ts: format!("2026-11-01T00:00:0{seq}.000Z"),
        replica: replica.into(),
        session: "s".into(),
        identity: "i".into(),
        grant: "g".into(),
        auth: "token".into(),
        kind: "tool".into(),
        server: "sv".into(),
        tool: "t".into(),
        category: None,
        arg_keys: vec![],
        verdict: "allow".into(),
        rule: "r".into(),
        message: "m".into(),
        policy_commit: None,
        snapshot_digest: "d".into(),
        outcome: "ok".into(),
        latency_ms: Some(1),
        prev_hash: prev.into(),
        hash: None,
    };
    // Records 1 and 2 were pruned (anchor 2); 3..5 remain, written under two host names over
    // the log's life (a renamed host), all in one chain.
    let mut prev = GENESIS.to_string();
    for seq in 1..=5u64 {
        let r = record(seq, if seq < 4 { "old-host" } else { "gw-1" }, &prev);
        let text = r.canonical();
        let hash = chain_hash(&prev, &text);
        if seq > 2 {
            conn.execute(
                "INSERT INTO calls (seq, ts, record, hash, identity, server, tool, category, verdict, outcome) VALUES (?1, ?2, ?3, ?4, 'i', 'sv', 't', NULL, 'allow', 'ok')",
                rusqlite::params![seq as i64, r.ts, text, hash],
            )
            .unwrap();
        } else if seq == 2 {
            conn.execute("INSERT INTO kv (key, value) VALUES ('chain_anchor', ?1)", [format!("2:{hash}")]).unwrap();
        }
        prev = hash;
    }
    schema::migrate(&mut conn).unwrap();
    assert_eq!(verify_all(&conn).unwrap(), vec![("gw-1".to_string(), Verdict::Intact { count: 3, first: 3, last: 5 })]);
    let c = Conn::Lite(&conn);
    let seq = crate::record::audit::log::append_in(&c, record(0, "gw-1", "")).unwrap();
    assert_eq!(seq, 6, "the same replica continues the chain");
    let other = crate::record::audit::log::append_in(&c, record(0, "gw-2", "")).unwrap();
    assert_eq!(other, 1, "a new replica starts a chain of its own");
    let all = verify_all(&conn).unwrap();
    assert_eq!(
        all,
        vec![
            ("gw-1".to_string(), Verdict::Intact { count: 4, first: 3, last: 6 }),
            ("gw-2".to_string(), Verdict::Intact { count: 1, first: 1, last: 1 }),
        ]
    );
}

fn sample_record(replica: &str) -> crate::record::audit::CallRecord {
    crate::record::audit::CallRecord {
        seq: 0,
        ts: "2026-12-07T00:00:00.000Z".into(),
        replica: replica.into(),
        session: "s".into(),
        identity: "i".into(),
        grant: "g".into(),
        auth: "token".into(),
        kind: "tool".into(),
        server: "sv".into(),
        tool: "t".into(),
        category: None,
        arg_keys: vec![],
        verdict: "allow".into(),
        rule: "r".into(),
        message: "m".into(),
        policy_commit: None,
        snapshot_digest: "d".into(),
        outcome: "ok".into(),
        latency_ms: Some(1),
        prev_hash: String::new(),
        hash: None,
    }
}

/// The writer keeps its replica's chain head between appends; a job that appended and then
/// failed (its savepoint rolled back) or a group that did not commit must not leave it stale.
#[test]
fn the_chain_head_kept_by_the_writer_follows_rolled_back_jobs() {
    use crate::record::audit::log::append_in;
    use crate::record::audit::verify::{Verdict, verify_all};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        assert_eq!(store.write(|c| append_in(c, sample_record("gw"))).await.unwrap(), 1);
        // Appends record 2, then fails: rolled back to its savepoint.
        let failed = store.write(|c| {
            append_in(c, sample_record("gw"))?;
            c.exec("INSERT INTO no_such_table VALUES (1)", &[])
        });
        assert!(failed.await.is_err());
        assert_eq!(store.write(|c| append_in(c, sample_record("gw"))).await.unwrap(), 2, "seq 2 again: the failed job's record is gone");
        // The same inside one group: the failing job sits between two good ones.
        let a = store.write(|c| append_in(c, sample_record("gw")));
        let bad = store.write(|c| {
            append_in(c, sample_record("gw"))?;
            c.exec("INSERT INTO no_such_table VALUES (1)", &[])
        });
        let b = store.write(|c| append_in(c, sample_record("gw")));
        let (a, bad, b) = tokio::join!(a, bad, b);
        assert!(bad.is_err());
        assert_eq!((a.unwrap(), b.unwrap()), (3, 4));
    });
    let all = verify_all(&store.reader().unwrap()).unwrap();
    assert_eq!(all, vec![("gw".to_string(), Verdict::Intact { count: 4, first: 1, last: 4 })]);
}

/// A write nobody awaits reports its result on the writer thread once it is durable, and a
/// writer that died (a job panicked) refuses later writes at once instead of queueing them.
#[test]
fn deferred_writes_report_on_the_writer_and_a_dead_writer_refuses_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    store.write_deferred_then(
        |c| c.sqlite().unwrap().execute("INSERT INTO kv VALUES ('then', '1')", []),
        move |r| tx.send((r.map_err(|e| e.to_string()), std::thread::current().name().map(String::from))).unwrap(),
    );
    let (r, thread) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(r, Ok(1));
    assert_eq!(thread.as_deref(), Some("gatehouse-store"));
    assert!(kv_has(&store.reader().unwrap(), "then"), "durable when reported");

    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        // Committed inline (when the last commit was fast) the panic is contained and the store
        // goes on; on the writer, the writer dies. Either way nothing of it is committed.
        let boom = store.write(|c| -> Result<(), rusqlite::Error> {
            c.sqlite().unwrap().execute("INSERT INTO kv VALUES ('half', '1')", [])?;
            panic!("a job panics")
        });
        assert!(matches!(boom.await, Err(StoreError::Stopped)));
        assert!(!kv_has(&store.reader().unwrap(), "half"));
        // On the writer thread (a deferred job nothing else carries): the writer dies of it.
        let boom = store.write_deferred(|_| -> Result<(), rusqlite::Error> { panic!("a deferred job panics") });
        assert!(matches!(boom.await, Err(StoreError::Stopped)));
        let t = Instant::now();
        assert!(matches!(store.write(|_| Ok::<(), rusqlite::Error>(())).await, Err(StoreError::Stopped)));
        assert!(t.elapsed() < Duration::from_secs(1));
    });
    let (tx, rx) = std::sync::mpsc::channel();
    store.write_deferred_then(|_| Ok::<(), rusqlite::Error>(()), move |r| tx.send(r.is_err()).unwrap());
    assert!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), "refused, and told so");
    store.close_blocking();
}

/// The queue is bounded: behind a stalled writer, writes beyond [`MAX_QUEUED`] are refused at
/// once (the caller fails closed) rather than queued without bound or blocking the caller.
#[test]
fn writes_beyond_the_queue_bound_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (release, stalled) = std::sync::mpsc::channel::<()>();
    let (started, started_rx) = std::sync::mpsc::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        // Deferred: it runs on the writer thread (a write committed inline would stall this one).
        let stall = store.write_deferred(move |_| {
            started.send(()).unwrap();
            stalled.recv().unwrap();
            Ok::<(), rusqlite::Error>(())
        });
        let stall = tokio::spawn(stall);
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let queued: Vec<_> = (0..MAX_QUEUED).map(|_| store.write_deferred(|_| Ok::<(), rusqlite::Error>(()))).collect();
        let refused = store.write(|_| Ok::<(), rusqlite::Error>(())).await;
        assert!(matches!(&refused, Err(StoreError::Sqlite(m)) if m.contains("writes behind")), "{refused:?}");
        release.send(()).unwrap();
        stall.await.unwrap().unwrap();
        for q in queued {
            q.await.unwrap();
        }
        store.write(|_| Ok::<(), rusqlite::Error>(())).await.unwrap();
    });
}

/// Schema 5 stores fields, not the JSON: every record rebuilds to the canonical text it was
/// hashed as, whatever its strings hold (escapes, NUL, the escape mark, non-ASCII).
#[test]
fn records_rebuild_to_the_text_they_were_hashed_as() {
    use crate::record::audit::verify::{Verdict, canonical_records, verify_all};
    use crate::record::audit::{CallRecord, GENESIS, chain_hash};
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_conn(&dir.path().join(FILE), false).unwrap();
    schema::migrate(&mut conn).unwrap();
    let texts = ["plain", "", "quote \" and \\ /", "é 漢字 🦀 \u{2028} \u{7f}", "nul \0 and \u{1f}", "\u{1}starts with the mark", "{\"json\":1}"];
    let t = |n: usize, i: usize| texts[(n + i) % texts.len()].to_string();
    let mut expected = Vec::new();
    let mut prev = GENESIS.to_string();
    for n in 0..30usize {
        let r = CallRecord {
            seq: 0,
            ts: format!("2026-12-07T12:00:{:02}.000Z", n),
            replica: "gw".into(),
            session: t(n, 1),
            identity: t(n, 2),
            grant: t(n, 3),
            auth: t(n, 4),
            kind: t(n, 5),
            server: t(n, 6),
            tool: t(n, 0),
            category: (n % 2 == 0).then(|| t(n, 1)),
            arg_keys: if n % 3 == 0 { vec![] } else { vec![t(n, 2), "a.b[]".into()] },
            verdict: t(n, 3),
            rule: t(n, 4),
            message: t(n, 5),
            policy_commit: (n % 3 != 1).then(|| t(n, 6)),
            snapshot_digest: t(n, 0),
            outcome: t(n, 1),
            latency_ms: [None, Some(0), Some(17), Some(u64::MAX)][n % 4],
            prev_hash: String::new(),
            hash: None,
        };
        let mut hashed = r.clone();
        hashed.seq = n as u64 + 1;
        hashed.prev_hash = prev.clone();
        let text = hashed.canonical();
        prev = chain_hash(&prev, &text);
        expected.push((text, prev.clone()));
        let tx = conn.transaction().unwrap();
        assert_eq!(crate::record::audit::log::append_in(&Conn::Lite(&tx), r).unwrap(), n as u64 + 1);
        tx.commit().unwrap();
    }
    assert_eq!(canonical_records(&conn).unwrap(), expected);
    assert_eq!(verify_all(&conn).unwrap(), vec![("gw".to_string(), Verdict::Intact { count: 30, first: 1, last: 30 })]);
    // A field changed in place rebuilds to other bytes: the hash no longer matches.
    conn.execute("UPDATE call_rows SET message = (SELECT id FROM vals WHERE v = 'plain') WHERE seq = 12", []).unwrap();
    assert_eq!(verify_all(&conn).unwrap(), vec![("gw".to_string(), Verdict::Broken { seq: 12, why: "hash does not match the record".into() })]);
}

/// A job that interned a new value and then failed is rolled back with its value: the writer
/// forgets the ids it cached, and the next job adds the value again.
#[test]
fn a_rolled_back_value_is_interned_again() {
    use crate::record::audit::CallRecord;
    use crate::record::audit::log::append_in;
    use crate::record::audit::verify::{Verdict, verify_all};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let rec = |message: &str| CallRecord { message: message.into(), outcome: "unknown".into(), latency_ms: None, ..sample_record("gw") };
    rt.block_on(async {
        let r = rec("only in a rolled-back job");
        let failed = store.write(move |c| {
            append_in(c, r)?;
            Err::<(), _>(sql::Error::Other("the job fails after its append".into()))
        });
        assert!(failed.await.is_err());
        let r = rec("only in a rolled-back job");
        assert_eq!(store.write(move |c| append_in(c, r)).await.unwrap(), 1);
    });
    let conn = open_read_only(dir.path()).unwrap();
    assert_eq!(verify_all(&conn).unwrap(), vec![("gw".to_string(), Verdict::Intact { count: 1, first: 1, last: 1 })]);
    let message: String = conn.query_row("SELECT message FROM calls", [], |r| r.get(0)).unwrap();
    assert_eq!(message, "only in a rolled-back job");
}

/// PostgreSQL (skipped when none answers on 127.0.0.1:5432): a call log of schema 1 keeps
/// verifying after migration 2 (its rows keep their JSON in `calls_v4`), and its chains
/// continue in `call_rows`, rebuilt from their fields.
#[test]
fn an_old_postgres_log_still_verifies_and_continues_after_migration_2() {
    use crate::record::audit::verify::{Verdict, canonical_records, verify_all};
    use crate::record::audit::{CallRecord, GENESIS, chain_hash};
    let Ok(mut admin) = PgConn::connect("postgres://postgres@127.0.0.1:5432/postgres") else {
        eprintln!("no PostgreSQL on 127.0.0.1:5432: skipped");
        return;
    };
    let name = format!("gatehouse_mig_{}", std::process::id());
    admin.client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    admin.client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let run = || {
        let mut pg = PgConn::connect(&url).unwrap();
        schema::migrate_pg_to(&mut pg, 1).unwrap();
        let mut prev = GENESIS.to_string();
        let mut expected = Vec::new();
        for seq in 1..=3u64 {
            let r = CallRecord {
                seq,
                ts: format!("2026-11-01T00:00:0{seq}.000Z"),
                replica: "gw".into(),
                session: "s".into(),
                identity: "i".into(),
                grant: "g".into(),
                auth: "token".into(),
                kind: "tool".into(),
                server: "sv".into(),
                tool: "t".into(),
                category: None,
                arg_keys: vec!["path".into()],
                verdict: "allow".into(),
                rule: "r".into(),
                message: "m".into(),
                policy_commit: None,
                snapshot_digest: "d".into(),
                outcome: "ok".into(),
                latency_ms: Some(seq),
                prev_hash: prev.clone(),
                hash: None,
            };
            let text = r.canonical();
            let hash = chain_hash(&prev, &text);
            pg.client
                .execute(
                    "INSERT INTO calls (replica, seq, ts, record, hash, identity, server, tool, category, verdict, outcome)
                     VALUES ('gw', $1, $2, $3, $4, 'i', 'sv', 't', NULL, 'allow', 'ok')",
                    &[&(seq as i64), &r.ts, &text, &hash],
                )
                .unwrap();
            expected.push((text, hash.clone()));
            prev = hash;
        }
        schema::migrate_pg(&mut pg).unwrap();
        let cell = std::cell::RefCell::new(pg);
        let c = Conn::Pg(&cell);
        assert_eq!(verify_all(c).unwrap(), vec![("gw".to_string(), Verdict::Intact { count: 3, first: 1, last: 3 })]);
        let mut next = CallRecord { seq: 0, prev_hash: String::new(), ..serde_json::from_str(&expected[2].0).unwrap() };
        next.message = "nul \0 kept".into();
        assert_eq!(crate::record::audit::log::append_in(&c, next).unwrap(), 4);
        assert_eq!(verify_all(c).unwrap(), vec![("gw".to_string(), Verdict::Intact { count: 4, first: 1, last: 4 })]);
        let all = canonical_records(c).unwrap();
        assert_eq!(&all[..3], &expected[..]);
        // The view gives the text time back (call_rows stores milliseconds).
        let ts = c.query_one("SELECT ts FROM calls WHERE seq = 4", &[], |r| r.string(0)).unwrap();
        assert_eq!(ts, "2026-11-01T00:00:03.000Z");
        assert!(all[3].0.contains("\"message\":\"nul \\u0000 kept\""), "{}", all[3].0);
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
    admin.client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

/// `audit tail`'s last records: across replicas in time order, the newest `n`, and the cursor
/// after each replica's newest.
#[test]
fn the_last_records_of_several_replicas_are_the_newest_in_time_order() {
    use crate::record::audit::CallRecord;
    use crate::record::audit::verify::last_records;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_conn(&dir.path().join(FILE), false).unwrap();
    schema::migrate(&mut conn).unwrap();
    for i in 0..10u64 {
        let r = CallRecord {
            seq: 0,
            ts: format!("2026-12-07T12:00:{i:02}.000Z"),
            replica: if i % 3 == 0 { "a".into() } else { "b".into() },
            session: "s".into(),
            identity: "i".into(),
            grant: "g".into(),
            auth: "token".into(),
            kind: "tool".into(),
            server: "sv".into(),
            tool: format!("t{i}"),
            category: None,
            arg_keys: vec![],
            verdict: "allow".into(),
            rule: "r".into(),
            message: "m".into(),
            policy_commit: None,
            snapshot_digest: "d".into(),
            outcome: "unknown".into(),
            latency_ms: None,
            prev_hash: String::new(),
            hash: None,
        };
        crate::record::audit::log::append_in(&Conn::Lite(&conn), r).unwrap();
    }
    let (lines, cursor) = last_records(&conn, 4).unwrap();
    let tools: Vec<String> = lines.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tool"].as_str().unwrap().to_string()).collect();
    assert_eq!(tools, ["t6", "t7", "t8", "t9"]);
    assert!(lines.iter().all(|l| l.contains("\"hash\":\"")));
    assert_eq!(cursor.into_iter().collect::<Vec<_>>(), vec![("a".to_string(), 4), ("b".to_string(), 6)]);
}

/// A log migrated from schema 4 (rows of two replicas kept in `calls_v4` with their JSON) that
/// goes on in `call_rows`: export, evidence, tail and verify read every record, old and new,
/// as the canonical JSON it was hashed as, in time order across replicas (one replica: in seq
/// order, its chain checked on the way).
#[test]
fn a_migrated_log_exports_and_evidences_the_records_it_holds() {
    use crate::record::audit::verify::{Format, Verdict, export, last_records, since, verify_all};
    use crate::record::audit::{CallRecord, GENESIS, chain_hash};
    for replicas in [&["a"][..], &["a", "b"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_conn(&dir.path().join(FILE), false).unwrap();
        schema::migrate_to(&mut conn, 4).unwrap();
        let record = |n: usize, replica: &str| CallRecord {
            seq: 0,
            ts: format!("2026-11-01T00:00:{:02}.{:03}Z", n, n * 7),
            replica: replica.into(),
            session: format!("s{n}"),
            identity: "i@example.com".into(),
            grant: "grants/i.yaml".into(),
            auth: "token".into(),
            kind: "tool".into(),
            server: "sv".into(),
            tool: format!("t{}", n % 3),
            category: [None, Some("read".to_string()), Some("destructive".to_string())][n % 3].clone(),
            arg_keys: vec!["path".into(), "q \"x\"".into()],
            verdict: if n.is_multiple_of(4) { "deny" } else { "allow" }.into(),
            rule: "r".into(),
            message: "m é".into(),
            policy_commit: n.is_multiple_of(2).then(|| "c0ffee".to_string()),
            snapshot_digest: "d".into(),
            outcome: if n.is_multiple_of(4) { "denied" } else { "ok" }.into(),
            latency_ms: (!n.is_multiple_of(4)).then_some(n as u64),
            prev_hash: String::new(),
            hash: None,
        };
        // (ts, replica, seq, canonical text, hash) of every record.
        let mut expected = Vec::new();
        let mut heads: std::collections::HashMap<String, (u64, String)> = std::collections::HashMap::new();
        for n in 0..8 {
            let replica = replicas[n % replicas.len()];
            let (seq, prev) = heads.get(replica).cloned().unwrap_or((0, GENESIS.to_string()));
            let r = CallRecord { seq: seq + 1, prev_hash: prev.clone(), ..record(n, replica) };
            let text = r.canonical();
            let hash = chain_hash(&prev, &text);
            conn.execute(
                "INSERT INTO calls (replica, seq, ts, record, hash, identity, server, tool, category, verdict, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                rusqlite::params![replica, r.seq as i64, r.ts, text, hash, r.identity, r.server, r.tool, r.category, r.verdict, r.outcome],
            )
            .unwrap();
            heads.insert(replica.to_string(), (r.seq, hash.clone()));
            expected.push((r.ts.clone(), replica.to_string(), r.seq, text, hash));
        }
        schema::migrate(&mut conn).unwrap();
        for n in 8..20 {
            let replica = replicas[n % replicas.len()];
            let (seq, prev) = heads[replica].clone();
            let r = CallRecord { seq: seq + 1, prev_hash: prev.clone(), ..record(n, replica) };
            let text = r.canonical();
            let hash = chain_hash(&prev, &text);
            assert_eq!(crate::record::audit::log::append_in(&Conn::Lite(&conn), record(n, replica)).unwrap(), seq + 1);
            heads.insert(replica.to_string(), (r.seq, hash.clone()));
            expected.push((r.ts.clone(), replica.to_string(), r.seq, text, hash));
        }
        expected.sort();
        let lines: Vec<serde_json::Value> = expected
            .iter()
            .map(|(_, _, _, text, hash)| {
                let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
                v["hash"] = hash.clone().into();
                v
            })
            .collect();
        assert!(verify_all(&conn).unwrap().iter().all(|(_, v)| matches!(v, Verdict::Intact { .. })));
        // The view gives the text times back (call_rows stores milliseconds).
        let mut ts: Vec<String> = conn.prepare("SELECT ts FROM calls").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        ts.sort();
        assert_eq!(ts, expected.iter().map(|e| e.0.clone()).collect::<Vec<_>>());

        // export: every record, in time order, as hashed.
        let out = dir.path().join("calls.jsonl");
        let manifest = export(&conn, "2026-11-01T00:00:00.000Z", "2026-11-02T00:00:00.000Z", Format::Jsonl, &out).unwrap();
        assert_eq!(manifest["count"], 20);
        let exported: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(exported, lines, "replicas {replicas:?}");
        // A period that cuts both tables.
        let cut = export(&conn, "2026-11-01T00:00:05.000Z", "2026-11-01T00:00:12.000Z", Format::Jsonl, &out).unwrap();
        assert_eq!(cut["count"], 7);

        // evidence: the calls table holds the same records, their chains checked.
        let inputs = crate::evidence::Inputs::new(dir.path(), dir.path(), "2026-11-01", "2026-11-02");
        let table = crate::evidence::calls(&inputs).unwrap();
        let columns = crate::evidence::CALL_COLUMNS;
        let rows: Vec<serde_json::Value> = table
            .rows
            .iter()
            .map(|row| {
                let mut v = serde_json::Map::new();
                for (k, cell) in columns.iter().zip(row) {
                    v.insert(k.to_string(), cell.clone());
                }
                serde_json::Value::Object(v)
            })
            .collect();
        assert_eq!(rows, lines, "replicas {replicas:?}");
        let privileged = crate::evidence::privileged(&inputs).unwrap();
        assert_eq!(privileged.rows.len(), lines.iter().filter(|l| l["category"] == "destructive").count());

        // tail: the newest records, and each replica's records after a cursor.
        let (last, _) = last_records(&conn, 14).unwrap();
        let last: Vec<serde_json::Value> = last.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        if replicas.len() == 1 {
            assert_eq!(last, lines[6..]);
        } else {
            assert_eq!(last, lines[6..], "across replicas, in time order");
        }
        let after: std::collections::BTreeMap<String, u64> = replicas.iter().map(|r| (r.to_string(), 2)).collect();
        let next = since(&conn, &after, 100).unwrap();
        let want: Vec<&serde_json::Value> = lines.iter().filter(|l| l["seq"].as_u64().unwrap() > 2).collect();
        let got: Vec<serde_json::Value> = next.iter().map(|(_, _, l)| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), want);
    }
}

/// PostgreSQL (skipped when none answers on 127.0.0.1:5432): two replicas whose open
/// transactions intern the same two new values in opposite orders both commit. (With a unique
/// index on `vals`, each would wait on the other's uncommitted value: a deadlock.)
#[test]
fn replicas_interning_the_same_new_values_in_opposite_orders_both_commit() {
    let Ok(mut admin) = PgConn::connect("postgres://postgres@127.0.0.1:5432/postgres") else {
        eprintln!("no PostgreSQL on 127.0.0.1:5432: skipped");
        return;
    };
    let name = format!("gatehouse_intern_{}", std::process::id());
    admin.client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    admin.client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    schema::migrate_pg(&mut PgConn::connect(&url).unwrap()).unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let replica = |first: &'static str, second: &'static str| {
        let (url, barrier) = (url.clone(), barrier.clone());
        std::thread::spawn(move || -> Result<(i64, i64), String> {
            let cell = std::cell::RefCell::new(PgConn::connect(&url).map_err(|e| e.to_string())?);
            let c = Conn::Pg(&cell);
            c.batch("BEGIN; SET LOCAL lock_timeout = '10s'").map_err(|e| e.to_string())?;
            let a = crate::record::audit::log::intern(&c, first).map_err(|e| e.to_string());
            barrier.wait();
            let b = crate::record::audit::log::intern(&c, second).map_err(|e| e.to_string())?;
            c.batch("COMMIT").map_err(|e| e.to_string())?;
            Ok((a?, b))
        })
    };
    let (one, two) = (replica("new value x", "new value y"), replica("new value y", "new value x"));
    let (one, two) = (one.join().unwrap(), two.join().unwrap());
    admin.client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    assert!(one.is_ok() && two.is_ok(), "{one:?} {two:?}");
}

/// A ts the gateway would not write (another spelling, no time at all) keeps its exact text:
/// the record rebuilds to what was hashed, and a period still finds the ones that are times.
#[test]
fn a_ts_spelled_otherwise_rebuilds_exactly() {
    use crate::record::audit::verify::{Format, Verdict, canonical_records, export, verify_all};
    use crate::record::audit::{CallRecord, GENESIS, chain_hash};
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_conn(&dir.path().join(FILE), false).unwrap();
    schema::migrate(&mut conn).unwrap();
    let times = ["2026-12-07T12:00:00.000Z", "2026-12-07T12:00:01Z", "not a time", "2026-12-07T12:00:02.5Z", "nul \0", "2026-12-07T12:00:03.123Z"];
    let mut expected = Vec::new();
    let mut prev = GENESIS.to_string();
    for (n, ts) in times.iter().enumerate() {
        let r = CallRecord { ts: ts.to_string(), outcome: "unknown".into(), latency_ms: None, ..sample_record("gw") };
        let hashed = CallRecord { seq: n as u64 + 1, prev_hash: prev.clone(), ..r.clone() };
        let text = hashed.canonical();
        prev = chain_hash(&prev, &text);
        expected.push((text, prev.clone()));
        crate::record::audit::log::append_in(&Conn::Lite(&conn), r).unwrap();
    }
    let stored: Vec<Option<i64>> = conn.prepare("SELECT ts_text FROM call_rows ORDER BY seq").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(stored.iter().map(Option::is_some).collect::<Vec<_>>(), [false, true, true, true, true, false], "only the gateway's spelling is stored as milliseconds alone");
    assert_eq!(canonical_records(&conn).unwrap(), expected);
    assert_eq!(verify_all(&conn).unwrap(), vec![("gw".to_string(), Verdict::Intact { count: 6, first: 1, last: 6 })]);
    let out = dir.path().join("x.jsonl");
    let m = export(&conn, "2026-12-07T12:00:00.000Z", "2026-12-07T13:00:00.000Z", Format::Jsonl, &out).unwrap();
    assert_eq!(m["count"], 4, "the four times, not the two texts that are none");
}

#[test]
fn a_thread_serving_several_requests_leaves_its_writes_to_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let committed_on = |store: &Store| {
        rt.block_on(store.write(|_| Ok::<_, rusqlite::Error>(std::thread::current().name().map(str::to_string)))).unwrap()
    };
    let (first, second) = (serving(), serving());
    // Blocking this thread for a commit would delay the other request it serves.
    assert_eq!(committed_on(&store).as_deref(), Some("gatehouse-store"));
    drop((first, second));
    // A guard counts down on the thread it counted up on, wherever it is dropped.
    let guards: Vec<Serving> = (0..2).map(|_| serving()).collect();
    std::thread::spawn(move || drop(guards)).join().unwrap();
    assert_eq!(SERVING.with(|s| s.load(Ordering::Relaxed)), 0);
}
