//! Schema migrations: an append-only list, applied in one transaction up to `PRAGMA
//! user_version`. Never edit a shipped entry; add a new one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: reconciler — change records (A.8.32), history rewrites, key/value state.
    "CREATE TABLE changes (
        id            INTEGER PRIMARY KEY,
        commit_id     TEXT NOT NULL,
        parents       TEXT NOT NULL,   -- JSON array of hex ids
        author        TEXT NOT NULL,
        author_time   TEXT NOT NULL,   -- RFC 3339
        committer     TEXT NOT NULL,
        commit_time   TEXT NOT NULL,
        message       TEXT NOT NULL,
        pull_request  INTEGER,
        signed        TEXT NOT NULL,   -- JSON {present, verified}
        files         TEXT NOT NULL,   -- JSON array of paths
        access_diff   TEXT NOT NULL,   -- JSON {gained: [...], lost: [...]} or null
        status        TEXT NOT NULL CHECK (status IN ('applied', 'superseded', 'rejected')),
        errors        TEXT NOT NULL,   -- JSON array of strings
        applied_at    TEXT,
        recorded_at   TEXT NOT NULL
     );
     CREATE INDEX changes_by_commit ON changes(commit_id);
     CREATE TABLE rewrites (
        id            INTEGER PRIMARY KEY,
        old_tip       TEXT NOT NULL,
        new_tip       TEXT NOT NULL,
        vanished      TEXT NOT NULL,   -- JSON array of commit ids no longer reachable
        detected_at   TEXT NOT NULL,
        accepted_at   TEXT,
        accepted_by   TEXT,
        reason        TEXT
     );
     CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
];

/// Brings the schema up to date; a no-op when it already is.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()
}

/// The version a fully migrated database has.
#[cfg(test)]
pub fn latest() -> usize {
    MIGRATIONS.len()
}
