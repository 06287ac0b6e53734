//! Appending to the call log through the store's writer: the chain head is read inside the same
//! transaction that appends, so a failed group commit can never leave the chain and the table
//! disagreeing. Each replica has a chain of its own (`seq` gapless and `prev_hash` linked within
//! the replica that wrote the record): replicas sharing a database never wait on each other.

use std::time::Duration;

use super::{CallRecord, GENESIS, chain_hash};
use crate::record::store::sql::{self, Conn, params};
use crate::record::store::{Store, StoreError};

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
    let last = c.query_opt("SELECT seq, hash FROM calls WHERE replica = ?1 ORDER BY seq DESC LIMIT 1", params![replica], |r| {
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
    let mut names = c.query("SELECT DISTINCT replica FROM calls", &[], |r| r.string(0))?;
    for key in c.query("SELECT key FROM kv WHERE key LIKE 'chain_anchor:%'", &[], |r| r.string(0))? {
        names.push(key["chain_anchor:".len()..].to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Appends one record in the writer's transaction, to the chain of its replica.
pub fn append_in(c: &Conn, mut r: CallRecord) -> sql::Result<u64> {
    let generation = crate::record::store::writer_generation();
    let cached = generation.and_then(|g| {
        HEADS.with_borrow_mut(|(at, heads)| {
            if *at != g {
                heads.clear();
                *at = g;
            }
            heads.get(&r.replica).cloned()
        })
    });
    let (seq, prev) = match cached {
        Some(h) => h,
        None => head(c, &r.replica)?,
    };
    r.seq = seq + 1;
    r.prev_hash = prev;
    r.hash = None;
    CANONICAL.with_borrow_mut(|buf| {
        buf.clear();
        r.canonical_to(buf);
        let canonical = std::str::from_utf8(buf).expect("serde_json writes UTF-8");
        let hash = chain_hash(&r.prev_hash, canonical);
        c.exec(
            "INSERT INTO calls (replica, seq, ts, record, hash, identity, server, tool, category, verdict, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![&r.replica, r.seq, &r.ts, canonical, &*hash, &r.identity, &r.server, &r.tool, &r.category, &r.verdict, &r.outcome],
        )?;
        if let Some(g) = generation {
            HEADS.with_borrow_mut(|(at, heads)| {
                if *at == g {
                    heads.insert(r.replica.clone(), (r.seq, hash.to_string()));
                }
            });
        }
        Ok::<(), sql::Error>(())
    })?;
    Ok(r.seq)
}

thread_local! {
    /// The chain heads this writer thread appended last, per replica, valid for one store
    /// generation ([`crate::record::store::writer_generation`]): the writer is its replica's only
    /// writer, so after a committed append the head is the record it wrote, and a rolled-back
    /// job or group starts a new generation. Saves a read (a round trip on PostgreSQL) per record.
    static HEADS: std::cell::RefCell<(u64, std::collections::HashMap<String, (u64, String)>)> = std::cell::RefCell::new((0, Default::default()));
    /// The canonical text of the record being appended, reused across appends (they all run on
    /// the store's writer thread).
    static CANONICAL: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

/// Deletes records older than `cutoff` (RFC 3339), keeping every replica's chain verifiable:
/// the hash of a replica's last deleted record becomes the anchor its retained part starts from.
/// Returns how many were deleted.
pub fn prune_in(c: &Conn, cutoff: &str) -> sql::Result<usize> {
    let mut n = 0;
    for replica in replicas(c)? {
        let last = c.query_opt(
            "SELECT seq, hash FROM calls WHERE replica = ?1 AND ts < ?2 ORDER BY seq DESC LIMIT 1",
            params![&replica, cutoff],
            |r| Ok((r.i64(0)?, r.string(1)?)),
        )?;
        let Some((seq, hash)) = last else { continue };
        n += c.exec("DELETE FROM calls WHERE replica = ?1 AND seq <= ?2", params![&replica, seq])? as usize;
        c.exec(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![&*format!("chain_anchor:{replica}"), &*format!("{seq}:{hash}")],
        )?;
    }
    Ok(n)
}
