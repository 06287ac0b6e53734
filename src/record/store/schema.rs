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
        signed        TEXT NOT NULL,   -- JSON {present, verified, format, fingerprint, principal, error}
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
    // 2: the call log (hash-chained, A.8.15), monitoring events (A.8.16), quota counters.
    "CREATE TABLE calls (
        seq           INTEGER PRIMARY KEY,   -- gapless, assigned by the writer
        ts            TEXT NOT NULL,
        record        TEXT NOT NULL,         -- canonical JSON of the record without hash: what is hashed
        hash          TEXT NOT NULL,         -- sha256(prev_hash || record), hex
        identity      TEXT NOT NULL,
        server        TEXT NOT NULL,
        tool          TEXT NOT NULL,
        category      TEXT,
        verdict       TEXT NOT NULL,
        outcome       TEXT NOT NULL
     );
     CREATE INDEX calls_by_ts ON calls(ts);
     CREATE TABLE events (
        id            INTEGER PRIMARY KEY,
        ts            TEXT NOT NULL,
        kind          TEXT NOT NULL,
        detail        TEXT NOT NULL          -- JSON
     );
     CREATE INDEX events_by_ts ON events(ts);
     CREATE TABLE quota_counters (
        counter       TEXT NOT NULL,
        subject       TEXT NOT NULL,
        window_start  INTEGER NOT NULL,      -- unix seconds, calendar-aligned UTC
        value         REAL NOT NULL,
        PRIMARY KEY (counter, subject, window_start)
     );",
    // 3: signed changes — which trust list a commit's signature was checked against.
    "ALTER TABLE changes ADD COLUMN trust TEXT;   -- JSON {basis: last_applied|parent|initial|none, from: commit|null, required: bool}",
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
