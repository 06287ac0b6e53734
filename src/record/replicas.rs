//! The replicas view: which commit each `gatehouse serve` process sharing the state database
//! enforces, since when, and its last heartbeat (every [`HEARTBEAT`]). A commit has one change
//! record, written by the first replica to apply it; every replica that applies it adds a row to
//! `change_applications` (commit, replica, when).

use std::time::Duration;

use serde_json::{Value, json};

use crate::record::store::sql::{self, Conn, params};

/// How often a replica refreshes its row.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A replica whose heartbeat is older than this is reported as stale (and left out of
/// convergence: a replica that was stopped or scaled away does not hold the fleet back).
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// One replica's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub name: String,
    pub applied: Option<String>,
    pub applied_at: Option<String>,
    pub started_at: String,
    pub heartbeat: String,
}

/// Records that `replica` applied `commit` at `now` (its first application is kept), in the
/// reconciler's transaction (the change record itself is written once, by `gitops::reconcile`),
/// or when a replica starts serving the commit the database records as last applied.
pub fn applied_in(c: &Conn, replica: &str, commit: &str, now: &str) -> sql::Result<()> {
    c.exec(
        "INSERT INTO change_applications (commit_id, replica, applied_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![commit, replica, now],
    )?;
    c.exec(
        "INSERT INTO replicas (name, applied, applied_at, started_at, heartbeat) VALUES (?1, ?2, ?3, ?3, ?3)
         ON CONFLICT (name) DO UPDATE SET applied = ?2, applied_at = ?3, heartbeat = ?3",
        params![replica, commit, now],
    )?;
    Ok(())
}

/// Refreshes `replica`'s heartbeat (and the commit it serves, if any).
pub fn heartbeat_in(c: &Conn, replica: &str, applied: Option<&str>, started_at: &str, now: &str) -> sql::Result<()> {
    c.exec(
        "INSERT INTO replicas (name, applied, applied_at, started_at, heartbeat) VALUES (?1, ?2, NULL, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET heartbeat = ?4, started_at = ?3,
             applied = coalesce(?2, replicas.applied)",
        params![replica, applied, started_at, now],
    )?;
    Ok(())
}

/// Every replica, by name.
pub fn list(c: &Conn) -> sql::Result<Vec<Replica>> {
    c.query("SELECT name, applied, applied_at, started_at, heartbeat FROM replicas ORDER BY name", &[], |r| {
        Ok(Replica {
            name: r.string(0)?,
            applied: r.opt_string(1)?,
            applied_at: r.opt_string(2)?,
            started_at: r.string(3)?,
            heartbeat: r.string(4)?,
        })
    })
}

/// Which replicas applied `commit`, and when.
pub fn applications(c: &Conn, commit: &str) -> sql::Result<Vec<(String, String)>> {
    c.query(
        "SELECT replica, applied_at FROM change_applications WHERE commit_id = ?1 ORDER BY applied_at, replica",
        params![commit],
        |r| Ok((r.string(0)?, r.string(1)?)),
    )
}

/// Seconds since an RFC 3339 UTC timestamp (ms), or None when it does not parse.
pub fn age_secs(ts: &str, now_unix_ms: i64) -> Option<f64> {
    let t = crate::units::parse_rfc3339_ms(ts)?;
    Some((now_unix_ms - t) as f64 / 1000.0)
}

/// The `/status` view: each replica with its heartbeat age and whether it is live, and whether
/// the live ones enforce one commit.
pub fn view(replicas: &[Replica], now_unix_ms: i64) -> Value {
    let mut live_commits: Vec<&str> = Vec::new();
    let rows: Vec<Value> = replicas
        .iter()
        .map(|r| {
            let age = age_secs(&r.heartbeat, now_unix_ms);
            let live = age.is_some_and(|a| a < STALE_AFTER.as_secs_f64());
            if live {
                live_commits.push(r.applied.as_deref().unwrap_or(""));
            }
            json!({
                "name": r.name,
                "applied": r.applied,
                "applied_at": r.applied_at,
                "started_at": r.started_at,
                "heartbeat": r.heartbeat,
                "heartbeat_age_s": age.map(|a| (a * 10.0).round() / 10.0),
                "live": live,
            })
        })
        .collect();
    live_commits.sort();
    live_commits.dedup();
    json!({ "replicas": rows, "converged": live_commits.len() <= 1 && !live_commits.first().is_some_and(|c| c.is_empty()) })
}
