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
        let a = store.write(|c| c.execute("INSERT INTO kv VALUES ('a', '1')", []));
        let dup = store.write(|c| c.execute("INSERT INTO kv VALUES ('a', '2')", []));
        let b = store.write(|c| c.execute("INSERT INTO kv VALUES ('b', '1')", []));
        let (a, dup, b) = tokio::join!(a, dup, b);
        assert!(a.is_ok() && b.is_ok());
        assert!(dup.is_err(), "primary key violation");
    });
    let n: i64 = store.reader().unwrap().query_row("SELECT count(*) FROM kv", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2);
}
