//! Schema migrations: append-only lists, applied in one transaction, up to `PRAGMA
//! user_version` (SQLite) or the `schema_version` table (PostgreSQL). Never edit a shipped
//! entry; add a new one (to both lists when both backends need it).

use rusqlite::Connection;

use super::sql::PgConn;

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
    // 4: replicas — one hash chain per replica, keyed (replica, seq). The records already
    // written form one chain: it keeps the name of its newest record's replica (the name the
    // process that wrote it most recently goes on under, by default its host name), whatever
    // older records say, so it still verifies. Its pruning anchor follows it. Which replica
    // applied which commit, and the replicas' heartbeats.
    "CREATE TABLE calls4 (
        replica       TEXT NOT NULL DEFAULT '',
        seq           INTEGER NOT NULL,      -- gapless per replica
        ts            TEXT NOT NULL,
        record        TEXT NOT NULL,
        hash          TEXT NOT NULL,
        identity      TEXT NOT NULL,
        server        TEXT NOT NULL,
        tool          TEXT NOT NULL,
        category      TEXT,
        verdict       TEXT NOT NULL,
        outcome       TEXT NOT NULL,
        PRIMARY KEY (replica, seq)
     );
     INSERT INTO calls4 (replica, seq, ts, record, hash, identity, server, tool, category, verdict, outcome)
        SELECT coalesce((SELECT json_extract(record, '$.replica') FROM calls ORDER BY seq DESC LIMIT 1), ''),
               seq, ts, record, hash, identity, server, tool, category, verdict, outcome FROM calls;
     UPDATE kv SET key = 'chain_anchor:' || coalesce((SELECT replica FROM calls4 ORDER BY seq DESC LIMIT 1), '')
        WHERE key = 'chain_anchor';
     DROP TABLE calls;
     ALTER TABLE calls4 RENAME TO calls;
     CREATE INDEX calls_by_ts ON calls(ts);
     CREATE TABLE change_applications (
        commit_id     TEXT NOT NULL,
        replica       TEXT NOT NULL,
        applied_at    TEXT NOT NULL,
        PRIMARY KEY (commit_id, replica)
     );
     CREATE TABLE replicas (
        name          TEXT PRIMARY KEY,
        applied       TEXT,                  -- the commit it enforces
        applied_at    TEXT,
        started_at    TEXT NOT NULL,
        heartbeat     TEXT NOT NULL          -- RFC 3339, refreshed every few seconds
     );",
    // 5: a compact call log (issue 15). Records are no longer stored as canonical JSON: a row
    // holds the record's fields, its time as milliseconds, its hashes as 32-byte BLOBs and every
    // text field as a reference into `vals` (each distinct value stored once), and the canonical
    // JSON is rebuilt from the row wherever it is needed (hashing, verify, export, tail,
    // evidence: `audit::rows`). The rows written before stay in `calls_v4` with the JSON they
    // were hashed as. `calls` becomes a view of both, with the old columns (hashes in hex) and
    // the record's fields, for ad-hoc SQL; writes go to `call_rows`.
    "ALTER TABLE calls RENAME TO calls_v4;
     CREATE TABLE vals (
        id             INTEGER PRIMARY KEY,
        v              TEXT NOT NULL UNIQUE
     );
     CREATE TABLE call_rows (
        replica        TEXT NOT NULL,
        seq            INTEGER NOT NULL,
        ts             INTEGER NOT NULL,    -- milliseconds since the epoch; the record's ts is their YYYY-MM-DDTHH:MM:SS.mmmZ
        ts_text        INTEGER,             -- a ts spelled otherwise (never the gateway's): its text in vals
        hash           BLOB NOT NULL,       -- sha256(prev_hash || canonical JSON), 32 bytes
        prev_hash      BLOB NOT NULL,       -- the previous record's hash (or the anchor's, or 32 zero bytes)
        session        INTEGER NOT NULL,
        identity       INTEGER NOT NULL,
        grant_name     INTEGER NOT NULL,
        auth           INTEGER NOT NULL,
        kind           INTEGER NOT NULL,
        server         INTEGER NOT NULL,
        tool           INTEGER NOT NULL,
        category       INTEGER,
        arg_keys       INTEGER NOT NULL,
        verdict        INTEGER NOT NULL,
        rule           INTEGER NOT NULL,
        message        INTEGER NOT NULL,
        policy_commit  INTEGER,
        snapshot_digest INTEGER NOT NULL,
        outcome        INTEGER NOT NULL,
        latency_ms     INTEGER,
        PRIMARY KEY (replica, seq)
     ) WITHOUT ROWID;
     CREATE INDEX call_rows_by_ts ON call_rows(ts);
     CREATE VIEW calls (replica, seq, ts, record, hash, identity, server, tool, category, verdict, outcome,
                       session, grant_name, auth, kind, arg_keys, rule, message, policy_commit, snapshot_digest, latency_ms, prev_hash) AS
        SELECT replica, seq, ts, record, hash, identity, server, tool, category, verdict, outcome,
               NULL AS session, NULL AS grant_name, NULL AS auth, NULL AS kind, NULL AS arg_keys, NULL AS rule, NULL AS message, NULL AS policy_commit, NULL AS snapshot_digest, NULL AS latency_ms, NULL AS prev_hash
          FROM calls_v4
        UNION ALL
        SELECT c.replica, c.seq,
               coalesce((SELECT v FROM vals WHERE id = c.ts_text), strftime('%Y-%m-%dT%H:%M:%S', c.ts / 1000, 'unixepoch') || printf('.%03dZ', c.ts % 1000)),
               NULL, lower(hex(c.hash)), (SELECT v FROM vals WHERE id = c.identity), (SELECT v FROM vals WHERE id = c.server), (SELECT v FROM vals WHERE id = c.tool), (SELECT v FROM vals WHERE id = c.category), (SELECT v FROM vals WHERE id = c.verdict), (SELECT v FROM vals WHERE id = c.outcome),
               (SELECT v FROM vals WHERE id = c.session), (SELECT v FROM vals WHERE id = c.grant_name), (SELECT v FROM vals WHERE id = c.auth), (SELECT v FROM vals WHERE id = c.kind), (SELECT v FROM vals WHERE id = c.arg_keys), (SELECT v FROM vals WHERE id = c.rule), (SELECT v FROM vals WHERE id = c.message), (SELECT v FROM vals WHERE id = c.policy_commit), (SELECT v FROM vals WHERE id = c.snapshot_digest), c.latency_ms, lower(hex(c.prev_hash))
          FROM call_rows c;",
];

/// PostgreSQL: the same tables at once (the SQLite list's end state), with BIGINT, DOUBLE
/// PRECISION and TEXT columns (what [`super::sql::P`] binds). Never edit a shipped entry.
const PG_MIGRATIONS: &[&str] = &[
    "CREATE TABLE changes (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        commit_id     TEXT NOT NULL,
        parents       TEXT NOT NULL,
        author        TEXT NOT NULL,
        author_time   TEXT NOT NULL,
        committer     TEXT NOT NULL,
        commit_time   TEXT NOT NULL,
        message       TEXT NOT NULL,
        pull_request  BIGINT,
        signed        TEXT NOT NULL,
        files         TEXT NOT NULL,
        access_diff   TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN ('applied', 'superseded', 'rejected')),
        errors        TEXT NOT NULL,
        applied_at    TEXT,
        recorded_at   TEXT NOT NULL,
        trust         TEXT
     );
     -- One change record per commit, whichever replica records it first.
     CREATE UNIQUE INDEX changes_by_commit ON changes(commit_id);
     CREATE TABLE rewrites (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        old_tip       TEXT NOT NULL,
        new_tip       TEXT NOT NULL,
        vanished      TEXT NOT NULL,
        detected_at   TEXT NOT NULL,
        accepted_at   TEXT,
        accepted_by   TEXT,
        reason        TEXT
     );
     CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE calls (
        replica       TEXT NOT NULL DEFAULT '',
        seq           BIGINT NOT NULL,
        ts            TEXT NOT NULL,
        record        TEXT NOT NULL,
        hash          TEXT NOT NULL,
        identity      TEXT NOT NULL,
        server        TEXT NOT NULL,
        tool          TEXT NOT NULL,
        category      TEXT,
        verdict       TEXT NOT NULL,
        outcome       TEXT NOT NULL,
        PRIMARY KEY (replica, seq)
     );
     CREATE INDEX calls_by_ts ON calls(ts);
     CREATE TABLE events (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        ts            TEXT NOT NULL,
        kind          TEXT NOT NULL,
        detail        TEXT NOT NULL
     );
     CREATE INDEX events_by_ts ON events(ts);
     CREATE TABLE quota_counters (
        counter       TEXT NOT NULL,
        subject       TEXT NOT NULL,
        window_start  BIGINT NOT NULL,
        value         DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (counter, subject, window_start)
     );
     CREATE TABLE change_applications (
        commit_id     TEXT NOT NULL,
        replica       TEXT NOT NULL,
        applied_at    TEXT NOT NULL,
        PRIMARY KEY (commit_id, replica)
     );
     CREATE TABLE replicas (
        name          TEXT PRIMARY KEY,
        applied       TEXT,
        applied_at    TEXT,
        started_at    TEXT NOT NULL,
        heartbeat     TEXT NOT NULL
     );",
    // 2: the compact call log (SQLite 5).
    "ALTER TABLE calls RENAME TO calls_v4;
     CREATE TABLE vals (
        id             BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        v              TEXT NOT NULL
     );
     -- md5: a B-tree entry has a size limit a long value would exceed (a lookup compares v too).
     -- Not unique: replicas interning the same new values in one another's open transactions
     -- would wait on each other's uncommitted entries, and in opposite orders deadlock. Two
     -- replicas adding one value at once store it twice (two ids, one text), which is harmless.
     CREATE INDEX vals_by_v ON vals (md5(v));
     CREATE TABLE call_rows (
        replica        TEXT NOT NULL,
        seq            BIGINT NOT NULL,
        ts             BIGINT NOT NULL,      -- milliseconds since the epoch (SQLite 5)
        ts_text        BIGINT,               -- a ts spelled otherwise: its text in vals
        hash           BYTEA NOT NULL,       -- sha256(prev_hash || canonical JSON), 32 bytes
        prev_hash      BYTEA NOT NULL,       -- the previous record's hash (or the anchor's, or 32 zero bytes)
        session        BIGINT NOT NULL,
        identity       BIGINT NOT NULL,
        grant_name     BIGINT NOT NULL,
        auth           BIGINT NOT NULL,
        kind           BIGINT NOT NULL,
        server         BIGINT NOT NULL,
        tool           BIGINT NOT NULL,
        category       BIGINT,
        arg_keys       BIGINT NOT NULL,
        verdict        BIGINT NOT NULL,
        rule           BIGINT NOT NULL,
        message        BIGINT NOT NULL,
        policy_commit  BIGINT,
        snapshot_digest BIGINT NOT NULL,
        outcome        BIGINT NOT NULL,
        latency_ms     BIGINT,
        PRIMARY KEY (replica, seq)
     );
     CREATE INDEX call_rows_by_ts ON call_rows(ts);
     CREATE VIEW calls (replica, seq, ts, record, hash, identity, server, tool, category, verdict, outcome,
                       session, grant_name, auth, kind, arg_keys, rule, message, policy_commit, snapshot_digest, latency_ms, prev_hash) AS
        SELECT replica, seq, ts, record, hash, identity, server, tool, category, verdict, outcome,
               CAST(NULL AS TEXT) AS session, CAST(NULL AS TEXT) AS grant_name, CAST(NULL AS TEXT) AS auth, CAST(NULL AS TEXT) AS kind, CAST(NULL AS TEXT) AS arg_keys, CAST(NULL AS TEXT) AS rule, CAST(NULL AS TEXT) AS message, CAST(NULL AS TEXT) AS policy_commit, CAST(NULL AS TEXT) AS snapshot_digest, CAST(NULL AS BIGINT) AS latency_ms, CAST(NULL AS TEXT) AS prev_hash
          FROM calls_v4
        UNION ALL
        SELECT c.replica, c.seq,
               coalesce((SELECT v FROM vals WHERE id = c.ts_text), to_char(to_timestamp(c.ts / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || '.' || lpad((c.ts % 1000)::text, 3, '0') || 'Z'),
               CAST(NULL AS TEXT), encode(c.hash, 'hex'), (SELECT v FROM vals WHERE id = c.identity), (SELECT v FROM vals WHERE id = c.server), (SELECT v FROM vals WHERE id = c.tool), (SELECT v FROM vals WHERE id = c.category), (SELECT v FROM vals WHERE id = c.verdict), (SELECT v FROM vals WHERE id = c.outcome),
               (SELECT v FROM vals WHERE id = c.session), (SELECT v FROM vals WHERE id = c.grant_name), (SELECT v FROM vals WHERE id = c.auth), (SELECT v FROM vals WHERE id = c.kind), (SELECT v FROM vals WHERE id = c.arg_keys), (SELECT v FROM vals WHERE id = c.rule), (SELECT v FROM vals WHERE id = c.message), (SELECT v FROM vals WHERE id = c.policy_commit), (SELECT v FROM vals WHERE id = c.snapshot_digest), c.latency_ms, encode(c.prev_hash, 'hex')
          FROM call_rows c;",
];

/// Brings the schema up to date; a no-op when it already is.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Brings the schema up to version `to` (tests build old databases with it).
pub fn migrate_to(conn: &mut Connection, to: usize) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().take(to).skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()
}

/// Brings a PostgreSQL schema up to date; a no-op when it already is. Replicas starting together
/// take turns (a transaction-scoped advisory lock).
pub fn migrate_pg(pg: &mut PgConn) -> Result<(), postgres::Error> {
    migrate_pg_to(pg, PG_MIGRATIONS.len())
}

/// Brings a PostgreSQL schema up to version `to` (tests build old databases with it).
pub fn migrate_pg_to(pg: &mut PgConn, to: usize) -> Result<(), postgres::Error> {
    let mut tx = pg.client.transaction()?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(7158236011); CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let version = match tx.query_opt("SELECT version FROM schema_version", &[])? {
        Some(r) => r.get::<_, i64>(0) as usize,
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
            0
        }
    };
    for (i, sql) in PG_MIGRATIONS.iter().enumerate().take(to).skip(version) {
        tx.batch_execute(sql)?;
        tx.execute("UPDATE schema_version SET version = $1", &[&((i + 1) as i64)])?;
    }
    tx.commit()
}

/// The version a fully migrated database has.
#[cfg(test)]
pub fn latest() -> usize {
    MIGRATIONS.len()
}
