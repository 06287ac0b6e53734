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
        let boom = store.write(|_| -> Result<(), rusqlite::Error> { panic!("a job panics") });
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
        let staller = store.clone();
        let stall = async move { staller.write(move |_| {
            started.send(()).unwrap();
            stalled.recv().unwrap();
            Ok::<(), rusqlite::Error>(())
        }).await };
        let stall = tokio::spawn(stall);
        tokio::task::yield_now().await;
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
