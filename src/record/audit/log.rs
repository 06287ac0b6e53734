//! Appending to the call log through the store's writer: the chain head is read inside the same
//! transaction that appends, so a failed group commit can never leave the chain and the table
//! disagreeing. Each replica has a chain of its own (`seq` gapless and `prev_hash` linked within
//! the replica that wrote the record): replicas sharing a database never wait on each other.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{CallRecord, GENESIS};
use crate::record::store::sql::{self, Conn, params};
use crate::record::store::{self, Store, StoreError};

/// How long a call waits for its decision record to become durable before it is refused.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The call log of one state database.
#[derive(Clone)]
pub struct AuditLog {
    store: Store,
}

// === impl AuditLog ===

impl AuditLog {
    pub fn new(store: Store) -> AuditLog {
        AuditLog { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends `record` (its seq, prev_hash and hash are assigned here); resolves once it is
    /// durable, with its seq. Err (or no answer within [`APPEND_TIMEOUT`]) means the record is
    /// not written: the caller must fail closed.
    pub async fn append(&self, record: CallRecord) -> Result<u64, StoreError> {
        let write = self.store.write(move |c| append_in(c, record));
        match tokio::time::timeout(APPEND_TIMEOUT, write).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Sqlite(format!("no durable write within {} s", APPEND_TIMEOUT.as_secs()))),
        }
    }

    /// Appends the write-ahead decision record of an allowed call together with the quota
    /// reservations it carries ([`crate::record::quota::persist_in`]), in one transaction:
    /// once this resolves both are durable, and neither is without the other.
    pub async fn append_decision(&self, record: CallRecord, quota: Vec<crate::record::quota::Row>) -> Result<u64, StoreError> {
        let write = self.store.write(move |c| {
            let seq = append_in(c, record)?;
            crate::record::quota::persist_in(c, &quota)?;
            Ok::<u64, sql::Error>(seq)
        });
        match tokio::time::timeout(APPEND_TIMEOUT, write).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Sqlite(format!("no durable write within {} s", APPEND_TIMEOUT.as_secs()))),
        }
    }

    /// Appends `record` without forcing a commit of its own: it rides the store's next group
    /// commit ([`Store::write_deferred`], at most [`crate::record::store::DEFER_MAX`] later). For the
    /// outcome record of an allowed call, which nothing waits on: its decision record is already
    /// durable. The record is queued when this returns (a clean shutdown commits it); the
    /// future resolves with its seq once it is durable.
    pub fn append_deferred(&self, record: CallRecord) -> impl Future<Output = Result<u64, StoreError>> + Send + use<> {
        self.store.write_deferred(move |c| append_in(c, record))
    }

    /// [`AuditLog::append_deferred`] for a record nobody awaits: a failure to make it durable is
    /// logged (as `what` was not recorded) by the store's writer thread, which spares the caller's
    /// runtime a task and a wake-up per record.
    pub fn append_deferred_logged(&self, record: CallRecord, what: &'static str) {
        self.store.write_deferred_then(
            move |c| append_in(c, record),
            move |r| {
                if let Err(e) = r {
                    tracing::error!(error = %e, "audit log unavailable: {what} was not recorded");
                }
            },
        );
    }

    /// Records a monitoring event (A.8.16), e.g. a quota threshold hit.
    pub async fn event(&self, kind: &'static str, ts: String, detail: serde_json::Value) -> Result<(), StoreError> {
        self.store
            .write(move |c| c.exec("INSERT INTO events (ts, kind, detail) VALUES (?1, ?2, ?3)", params![&ts, kind, &*detail.to_string()]).map(|_| ()))
            .await
    }
}

/// The chain head of `replica`: (last seq, its hash); after pruning, the anchor the retained
/// part starts from.
pub fn head(c: &Conn, replica: &str) -> sql::Result<(u64, String)> {
    let last = c.query_opt("SELECT seq, hash FROM call_rows WHERE replica = ?1 ORDER BY seq DESC LIMIT 1", params![replica], |r| {
        Ok((r.i64(0)?, hex::encode(r.bytes(1)?)))
    })?;
    if let Some((seq, hash)) = last {
        return Ok((seq as u64, hash));
    }
    // The records written before schema 5.
    let last = c.query_opt("SELECT seq, hash FROM calls_v4 WHERE replica = ?1 ORDER BY seq DESC LIMIT 1", params![replica], |r| {
        Ok((r.i64(0)?, r.string(1)?))
    })?;
    if let Some((seq, hash)) = last {
        return Ok((seq as u64, hash));
    }
    anchor(c, replica).map(|a| a.unwrap_or((0, GENESIS.to_string())))
}

/// The (seq, hash) of `replica`'s last pruned record, if its records were pruned.
pub fn anchor(c: &Conn, replica: &str) -> sql::Result<Option<(u64, String)>> {
    let key = format!("chain_anchor:{replica}");
    let v = c.query_opt("SELECT value FROM kv WHERE key = ?1", params![&key], |r| r.string(0))?;
    Ok(v.and_then(|v| {
        let (seq, hash) = v.split_once(':')?;
        Some((seq.parse().ok()?, hash.to_string()))
    }))
}

/// The replicas that have written to the call log (or left a pruning anchor), sorted.
pub fn replicas(c: &Conn) -> sql::Result<Vec<String>> {
    // The tables under the `calls` view: SQLite would compute every column of the view.
    let mut names =
        c.query("SELECT DISTINCT replica FROM call_rows UNION SELECT DISTINCT replica FROM calls_v4", &[], |r| r.string(0))?;
    for key in c.query("SELECT key FROM kv WHERE key LIKE 'chain_anchor:%'", &[], |r| r.string(0))? {
        names.push(key["chain_anchor:".len()..].to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Appends one record in the writer's transaction, to the chain of its replica: its fields,
/// each text as a reference into `vals`, and its hashes as bytes. The canonical JSON hashed is
/// the one [`super::rows`] rebuilds from the row.
pub fn append_in(c: &Conn, mut r: CallRecord) -> sql::Result<u64> {
    let cached = store::kept(|heads: &mut Heads| heads.0.get(&r.replica).cloned()).flatten();
    let (seq, prev) = match cached {
        Some(h) => h,
        None => head(c, &r.replica)?,
    };
    r.seq = seq + 1;
    r.prev_hash = prev;
    r.hash = None;
    let mut prev_bytes = [0u8; 32];
    hex::decode_to_slice(&r.prev_hash, &mut prev_bytes).map_err(|e| sql::Error::Other(format!("the chain head's hash: {e}")))?;
    let hash = CANONICAL.with_borrow_mut(|buf| {
        buf.clear();
        r.canonical_to(buf);
        Sha256::new().chain_update(r.prev_hash.as_bytes()).chain_update(&buf[..]).finalize()
    });
    let arg_keys = serde_json::to_string(&r.arg_keys)?;
    let id = |v: &str| intern(c, v);
    let opt = |v: &Option<String>| v.as_deref().map(|v| intern(c, v)).transpose();
    let refs = [
        id(&r.session)?,
        id(&r.identity)?,
        id(&r.grant)?,
        id(&r.auth)?,
        id(&r.kind)?,
        id(&r.server)?,
        id(&r.tool)?,
        id(&arg_keys)?,
        id(&r.verdict)?,
        id(&r.rule)?,
        id(&r.message)?,
        id(&r.snapshot_digest)?,
        id(&r.outcome)?,
    ];
    let (category, policy_commit) = (opt(&r.category)?, opt(&r.policy_commit)?);
    // The time as its milliseconds; a ts they would not rebuild keeps its text too.
    let (ts, ts_text) = match crate::units::exact_rfc3339_ms(&r.ts) {
        Some(ms) => (ms, None),
        None => (crate::units::parse_rfc3339_ms(&r.ts).unwrap_or(0), Some(id(&r.ts)?)),
    };
    c.exec(
        "INSERT INTO call_rows (replica, seq, ts, ts_text, hash, prev_hash, session, identity, grant_name, auth, kind, server, tool, category,
                                arg_keys, verdict, rule, message, policy_commit, snapshot_digest, outcome, latency_ms)
         VALUES (?1, ?2, ?3, ?22, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        params![
            &r.replica,
            r.seq,
            ts,
            &hash[..],
            &prev_bytes[..],
            refs[0],
            refs[1],
            refs[2],
            refs[3],
            refs[4],
            refs[5],
            refs[6],
            category,
            refs[7],
            refs[8],
            refs[9],
            refs[10],
            policy_commit,
            refs[11],
            refs[12],
            r.latency_ms.map(|l| l as i64),
            ts_text,
        ],
    )?;
    store::kept(|heads: &mut Heads| heads.0.insert(r.replica.clone(), (r.seq, hex::encode(hash))));
    Ok(r.seq)
}

/// The id of `v` in `vals`, added when it is new (on PostgreSQL a value two replicas add at
/// once may get two ids: see the schema). The ids seen are kept with the store's connection
/// ([`store::kept`]), which forgets them when a job fails, since the ids it added are gone.
pub fn intern(c: &Conn, v: &str) -> sql::Result<i64> {
    let escaped = escape(v);
    let v = &*escaped;
    if let Some(id) = store::kept(|ids: &mut Interned| ids.0.get(v).copied()).flatten() {
        return Ok(id);
    }
    let id = if c.is_pg() {
        // A plain insert under a non-unique index never waits on another transaction (see the
        // schema): replicas sharing the database cannot deadlock on values new to both.
        let found = c.query_opt("SELECT id FROM vals WHERE md5(v) = md5(?1) AND v = ?1 ORDER BY id LIMIT 1", params![v], |r| r.i64(0))?;
        match found {
            Some(id) => id,
            None => c.query_one("INSERT INTO vals (v) VALUES (?1) RETURNING id", params![v], |r| r.i64(0))?,
        }
    } else {
        // SQLite has one writer at a time: the unique index cannot make two wait on each other.
        let inserted = c.query_opt("INSERT INTO vals (v) VALUES (?1) ON CONFLICT DO NOTHING RETURNING id", params![v], |r| r.i64(0))?;
        match inserted {
            Some(id) => id,
            None => c.query_one("SELECT id FROM vals WHERE v = ?1", params![v], |r| r.i64(0))?,
        }
    };
    store::kept(|ids: &mut Interned| {
        if ids.0.len() >= INTERNED_MAX {
            ids.0.clear();
        }
        ids.0.insert(v.to_string(), id)
    });
    Ok(id)
}

/// Marks a value of `vals` stored JSON-encoded: one with a NUL (which PostgreSQL text cannot
/// hold) or one that starts with the mark itself. Every other value is stored as it is.
pub const ESCAPED: char = '\u{1}';

/// `v` as `vals` stores it.
pub fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains('\0') || v.starts_with(ESCAPED) {
        let json = serde_json::to_string(v).expect("a string serializes");
        return std::borrow::Cow::Owned(format!("{ESCAPED}{json}"));
    }
    std::borrow::Cow::Borrowed(v)
}

/// The value `stored` in `vals` stands for.
pub fn unescape(stored: &str) -> sql::Result<String> {
    match stored.strip_prefix(ESCAPED) {
        Some(json) => Ok(serde_json::from_str(json)?),
        None => Ok(stored.to_string()),
    }
}

/// The chain head last appended per replica, kept with the store's connection: its holder is
/// its replica's only writer, so after a committed append the head is the record it wrote.
/// Saves a read (a round trip on PostgreSQL) per record.
#[derive(Default)]
struct Heads(std::collections::HashMap<String, (u64, String)>);

/// [`intern`]'s ids, kept with the store's connection.
#[derive(Default)]
struct Interned(std::collections::HashMap<String, i64>);

/// How many interned values a cache holds before it starts over.
const INTERNED_MAX: usize = 65_536;

thread_local! {
    /// The canonical text of the record being appended, reused across appends on this thread.
    static CANONICAL: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

/// Deletes records older than `cutoff` (RFC 3339), keeping every replica's chain verifiable:
/// the hash of a replica's last deleted record becomes the anchor its retained part starts from.
/// Returns how many were deleted.
pub fn prune_in(c: &Conn, cutoff: &str) -> sql::Result<usize> {
    let cutoff_ms = crate::units::parse_rfc3339_ms(cutoff).ok_or_else(|| sql::Error::Other(format!("invalid cutoff {cutoff:?}")))?;
    let mut n = 0;
    for replica in replicas(c)? {
        // A replica's rows of `calls_v4` come before its rows of `call_rows`.
        let last = match c.query_opt(
            "SELECT seq, hash FROM call_rows WHERE replica = ?1 AND ts < ?2 ORDER BY seq DESC LIMIT 1",
            params![&replica, cutoff_ms],
            |r| Ok((r.i64(0)?, hex::encode(r.bytes(1)?))),
        )? {
            Some(last) => Some(last),
            None => c.query_opt(
                "SELECT seq, hash FROM calls_v4 WHERE replica = ?1 AND ts < ?2 ORDER BY seq DESC LIMIT 1",
                params![&replica, cutoff],
                |r| Ok((r.i64(0)?, r.string(1)?)),
            )?,
        };
        let Some((seq, hash)) = last else { continue };
        n += c.exec("DELETE FROM call_rows WHERE replica = ?1 AND seq <= ?2", params![&replica, seq])? as usize;
        n += c.exec("DELETE FROM calls_v4 WHERE replica = ?1 AND seq <= ?2", params![&replica, seq])? as usize;
        c.exec(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![&*format!("chain_anchor:{replica}"), &*format!("{seq}:{hash}")],
        )?;
    }
    Ok(n)
}
