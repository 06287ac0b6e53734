//! The change-management export (A.8.32): what git shows of every commit of the period, and,
//! when a state database is there, what the daemon did with each.
//!
//! Rows are the first-parent commits of `--rev` committed in the period, oldest first (from git:
//! author, committer, times, pull request, whether a signature is present, files, whether the
//! repository was valid there, the access it changed), each with the daemon's change record for
//! that commit if it has one (status, signer, applied_at, recorded_at), whenever it was recorded.
//! Then every change record the daemon wrote in the period for a commit that is not among them (a
//! commit of a merged branch, superseded; a commit later rewritten away), so that no record of
//! the period is left out. Without a database the daemon's columns are empty and the population
//! statement says that no daemon records were read.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::db::DaemonChange;
use super::history::GitChange;
use super::{Control, Period, Table};
use crate::policy::access::Cell;

pub(crate) const CHANGE_COLUMNS: [&str; 19] = [
    "commit",
    "source",
    "author",
    "author_time",
    "committer",
    "commit_time",
    "pull_request",
    "message",
    "parents",
    "files",
    "signed",
    "signer",
    "valid",
    "gained",
    "lost",
    "errors",
    "status",
    "applied_at",
    "recorded_at",
];

/// Where the daemon's side comes from.
pub(crate) enum Daemon<'a> {
    /// Every change record of the database.
    Read { records: &'a [DaemonChange], database: String },
    /// Why none were read.
    NotRead(String),
}

/// The `changes` table: git's commits of the period merged with the daemon's change records.
pub(crate) fn table(period: &Period, rev: &str, git: &[GitChange], daemon: &Daemon) -> Table {
    let records: &[DaemonChange] = match daemon {
        Daemon::Read { records, .. } => records,
        Daemon::NotRead(_) => &[],
    };
    let by_commit: HashMap<&str, &DaemonChange> = records.iter().map(|r| (r.commit.as_str(), r)).collect();
    let mut rows = Vec::with_capacity(git.len());
    for g in git {
        rows.push(git_row(g, by_commit.get(g.info.commit.as_str()).copied()));
    }
    let in_git: HashSet<&str> = git.iter().map(|g| g.info.commit.as_str()).collect();
    let in_period: Vec<&DaemonChange> = records.iter().filter(|r| period.contains_ts(&r.recorded_at)).collect();
    let others: Vec<&DaemonChange> = in_period.iter().copied().filter(|r| !in_git.contains(r.commit.as_str())).collect();
    for r in &others {
        rows.push(daemon_row(r));
    }
    let statement = match daemon {
        Daemon::Read { .. } => format!(
            "{} first-parent commits of {rev} committed in the period, from git; {} change records the daemon wrote in the period, {} of them for commits not among those (added as rows of their own)",
            git.len(),
            in_period.len(),
            others.len()
        ),
        Daemon::NotRead(why) => format!(
            "{} first-parent commits of {rev} committed in the period, from git; no daemon records were read ({why}): status, signer, applied_at and recorded_at are empty",
            git.len()
        ),
    };
    let daemon_source = match daemon {
        Daemon::Read { database, .. } => {
            // Which replicas applied each commit of the period, and when (several replicas on
            // one database record a commit once, and each its application).
            let applications: serde_json::Map<String, Value> = in_period
                .iter()
                .filter(|r| !r.applications.is_empty())
                .map(|r| (r.commit.clone(), r.applications.iter().map(|(replica, at)| json!({ "replica": replica, "applied_at": at })).collect()))
                .collect();
            json!({ "read": true, "database": database, "records_in_period": in_period.len(), "not_first_parent": others.len(), "applications": applications })
        }
        Daemon::NotRead(why) => json!({ "read": false, "why": why }),
    };
    let source = json!({
        "git": { "rev": rev, "first_parent_commits": git.len(), "first": git.first().map(|g| &g.info.commit), "last": git.last().map(|g| &g.info.commit) },
        "daemon": daemon_source,
        "statement": statement,
    });
    Table {
        name: "changes",
        control: Control::Changes,
        columns: CHANGE_COLUMNS.to_vec(),
        population: rows.len() as u64,
        rows,
        source,
    }
}

fn git_row(g: &GitChange, d: Option<&DaemonChange>) -> Vec<Value> {
    let i = &g.info;
    let cells = |side: fn(&crate::policy::access::Diff) -> &Vec<Cell>| g.diff.as_ref().map(|diff| cells_text(side(diff)));
    let mut errors: Vec<Value> = g.errors.iter().map(|e| json!(e)).collect();
    // The daemon may have rejected a valid commit for its own reasons (a secret it could not
    // resolve, a signature it could not trust): those reasons join git's.
    if let Some(Value::Array(more)) = d.map(|d| &d.errors) {
        for e in more {
            if !errors.contains(e) {
                errors.push(e.clone());
            }
        }
    }
    let signed = match d {
        Some(d) => signed_text(&d.signed),
        None => json!(if i.signed { "signed (not verified)" } else { "unsigned" }),
    };
    vec![
        json!(i.commit),
        json!(if d.is_some() { "git+daemon" } else { "git" }),
        json!(i.author),
        json!(i.author_time),
        json!(i.committer),
        json!(i.commit_time),
        json!(i.pull_request),
        json!(i.message),
        json!(i.parents),
        json!(i.files),
        signed,
        d.map_or(Value::Null, |d| signer(&d.signed)),
        json!(g.valid),
        json!(cells(|d| &d.gained)),
        json!(cells(|d| &d.lost)),
        Value::Array(errors),
        json!(d.map(|d| &d.status)),
        json!(d.and_then(|d| d.applied_at.as_ref())),
        json!(d.map(|d| &d.recorded_at)),
    ]
}

fn daemon_row(d: &DaemonChange) -> Vec<Value> {
    let side = |k: &str| -> Value {
        match d.access_diff.get(k).and_then(Value::as_array) {
            Some(cells) => Value::Array(
                cells
                    .iter()
                    .map(|c| json!(format!("{}: {}/{}", text(&c["identity"]), text(&c["server"]), text(&c["tool"]))))
                    .collect(),
            ),
            None => Value::Null,
        }
    };
    vec![
        json!(d.commit),
        json!("daemon"),
        json!(d.author),
        json!(d.author_time),
        json!(d.committer),
        json!(d.commit_time),
        json!(d.pull_request),
        json!(d.message),
        d.parents.clone(),
        d.files.clone(),
        signed_text(&d.signed),
        signer(&d.signed),
        Value::Null,
        side("gained"),
        side("lost"),
        d.errors.clone(),
        json!(d.status),
        json!(d.applied_at),
        json!(d.recorded_at),
    ]
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn cells_text(cells: &[Cell]) -> Vec<String> {
    cells.iter().map(|c| format!("{}: {}/{}", c.identity, c.server, c.tool)).collect()
}

/// `signed (verified)`, `signed (not verified)` or `unsigned`, from a record's `signed` JSON.
fn signed_text(signed: &Value) -> Value {
    match (signed["present"].as_bool(), signed["verified"].as_bool()) {
        (Some(true), Some(true)) => json!("signed (verified)"),
        (Some(true), _) => json!("signed (not verified)"),
        (Some(false), _) => json!("unsigned"),
        _ => signed.clone(),
    }
}

/// `principal (fingerprint)` of a verified signature, else null.
fn signer(signed: &Value) -> Value {
    match (signed["principal"].as_str(), signed["fingerprint"].as_str()) {
        (Some(p), Some(f)) => json!(format!("{p} ({f})")),
        (None, Some(f)) => json!(f),
        (Some(p), None) => json!(p),
        (None, None) => Value::Null,
    }
}
