//! Evidence for auditors (`gatehouse evidence`, DESIGN.md §5): exports built from the policy
//! repository's git history and the state database, one per control of ISO 27001:2022.
//!
//! | control | file(s) | source |
//! |---|---|---|
//! | `access-review` (A.5.18) | `access-review` | the snapshot of the last valid commit before `--until` |
//! | `provisioning` (A.5.16, A.5.18) | `provisioning` | every commit of the period, grant by grant |
//! | `privileged` (A.8.2) | `privileged` | call records of destructive, execute and financial tools |
//! | `calls` (A.8.15, A.8.16) | `calls`, `events` | call records and monitoring events |
//! | `changes` (A.8.32) | `changes`, `rewrites` | every commit of the period from git, with the daemon's change records; history rewrites |
//! | `suppliers` (A.5.19–5.23) | `suppliers` | the server registry at `--until` and the period's traffic |
//!
//! Without a state database (`--data-dir` holds none: an auditor or a CI job with only the
//! repository), `changes`, `suppliers` and `bundle` are built from git alone and say so in their
//! sources (the daemon's columns and the traffic are empty); `privileged`, `calls`, `events` and
//! `rewrites` exist only in the daemon's records and are left out of the bundle, which names them.
//! | `bundle` | all of them, `index.html`, `MANIFEST.json` | |
//!
//! The period is half-open, `[since, until)`, for git and the database alike: a commit is in it
//! when its committer time is, the state "at `--until`" is the one after the last commit before
//! it, and the state "at `--since`" the one provisioning starts from. Git history is the
//! first-parent chain of `--rev` (the branch as it was merged); a commit that does not compile is
//! skipped as the gateway would have skipped it (the previous valid state stays in force).
//!
//! Every table states its population (row count): in the JSON file itself, in the sidecar
//! manifest of a single export, and in the bundle's `MANIFEST.json` and `index.html`.
//! The call log is streamed (never held in memory) and its hash chain is verified over the
//! exported seq range in the same pass; a broken chain is stated, never a reason to leave a
//! record out.
//!
//! What is counted where:
//! - call records and events are in the period by their `ts`; commits by their committer time,
//!   each with the daemon's change record whenever it was recorded, plus the change records
//!   recorded in the period for commits that are not first-parent commits of it (see `changes`);
//!   rewrites by `detected_at`;
//! - a supplier's `calls` are decision records (a denial, or an allowed call's write-ahead
//!   record), `denials` those denied, `errors` the outcome records `upstream_error` and `timeout`;
//!   servers that had traffic but are not registered at `--until` get a row of their own, so the
//!   rows add up to every call of the period;
//! - a provisioning row is a commit that `created` a grant, `revoked` it (file deleted, or its
//!   last token or last tool gone), `widened` it (a tool gained, a token added or its expiry
//!   extended), `narrowed` it (the reverse) or only `re-reviewed` it, in that precedence; other
//!   edits (owner, quotas, comments) are not provisioning events. A merge commit stands for its
//!   pull request, with the authors of the commits it merged.
//!
//! Provisioning compiles, per commit, only the grants it affects and the files they reference
//! (see `history`); a test checks it against compiling every commit whole.
//!
//! Blocking (git2, rusqlite): run it on a blocking thread.

mod changes;
mod db;
mod history;
mod html;
mod manifest;
mod write;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub use manifest::verify_manifest;
pub use write::{write_csv, write_json};

use crate::units::Date;

/// What every export reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The policy repository (a directory, possibly inside a larger git repository).
    pub repo: PathBuf,
    /// The revision whose first-parent history is read (default `HEAD`).
    pub rev: String,
    /// The state database's directory (`--data-dir`).
    pub data_dir: PathBuf,
    /// A PostgreSQL state database (`--database`), read instead of `data_dir`'s.
    pub database: Option<String>,
    /// Start of the period (inclusive): `YYYY-MM-DD` or RFC 3339 UTC.
    pub since: String,
    /// End of the period (exclusive).
    pub until: String,
}

/// The controls `gatehouse evidence` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Control {
    AccessReview,
    Provisioning,
    Privileged,
    Calls,
    Changes,
    Suppliers,
    Bundle,
}

/// File formats of the exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

/// The period `[since, until)`, normalised to `YYYY-MM-DDTHH:MM:SS.mmmZ` (what call records
/// carry, so that strings compare like times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub since: String,
    pub until: String,
    since_ms: i64,
    until_ms: i64,
}

/// One export: its columns, its rows, and its population (the number of rows).
#[derive(Debug, Clone)]
pub struct Table {
    /// The file stem: `access-review`, `calls`, `events`, …
    pub name: &'static str,
    pub control: Control,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Value>>,
    pub population: u64,
    /// Where the rows come from (commits, seq range), as written into the JSON file.
    pub source: Value,
}

/// A file an export wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub table: &'static str,
    pub control: Control,
    pub population: u64,
    pub bytes: u64,
    pub sha256: String,
    pub columns: Vec<&'static str>,
    /// The first rows (for index.html).
    pub preview: Vec<Vec<Value>>,
    pub source: Value,
}

/// What `bundle` wrote.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub files: Vec<Written>,
    /// The content of `MANIFEST.json`.
    pub manifest: Value,
}

/// Columns of the call-record tables (`calls`, `privileged`): every field of the record.
pub const CALL_COLUMNS: [&str; 21] = [
    "seq",
    "ts",
    "replica",
    "session",
    "identity",
    "grant",
    "auth",
    "kind",
    "server",
    "tool",
    "category",
    "arg_keys",
    "verdict",
    "rule",
    "message",
    "policy_commit",
    "snapshot_digest",
    "outcome",
    "latency_ms",
    "prev_hash",
    "hash",
];

/// Rows kept per table for the previews of index.html.
const PREVIEW_ROWS: usize = 10;

// === impl Inputs ===

impl Inputs {
    /// Inputs with `rev` = `HEAD`.
    pub fn new(repo: impl Into<PathBuf>, data_dir: impl Into<PathBuf>, since: &str, until: &str) -> Inputs {
        Inputs {
            repo: repo.into(),
            rev: "HEAD".into(),
            data_dir: data_dir.into(),
            database: None,
            since: since.into(),
            until: until.into(),
        }
    }

    pub fn period(&self) -> Result<Period> {
        Period::parse(&self.since, &self.until)
    }

    /// Where the state database is: `--database`, else the data directory's SQLite file.
    pub fn location(&self) -> crate::record::store::Location {
        crate::record::store::Location::of(&self.data_dir, self.database.as_deref())
    }
}

// === impl Control ===

impl Control {
    /// Every control but `bundle`, in the order of the bundle.
    pub const ALL: [Control; 6] = [
        Control::AccessReview,
        Control::Provisioning,
        Control::Privileged,
        Control::Calls,
        Control::Changes,
        Control::Suppliers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Control::AccessReview => "access-review",
            Control::Provisioning => "provisioning",
            Control::Privileged => "privileged",
            Control::Calls => "calls",
            Control::Changes => "changes",
            Control::Suppliers => "suppliers",
            Control::Bundle => "bundle",
        }
    }

    /// The ISO 27001:2022 Annex A controls it is evidence for.
    pub fn iso(self) -> &'static str {
        match self {
            Control::AccessReview => "A.5.18",
            Control::Provisioning => "A.5.16, A.5.18",
            Control::Privileged => "A.8.2",
            Control::Calls => "A.8.15, A.8.16",
            Control::Changes => "A.8.32",
            Control::Suppliers => "A.5.19–A.5.23",
            Control::Bundle => "A.5.16–A.5.23, A.8.2, A.8.15, A.8.16, A.8.32",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Control::AccessReview => "Access review",
            Control::Provisioning => "Access provisioning and revocation",
            Control::Privileged => "Use of privileged tools",
            Control::Calls => "Logging and monitoring",
            Control::Changes => "Change management",
            Control::Suppliers => "Supplier register and traffic",
            Control::Bundle => "Evidence bundle",
        }
    }

    /// One sentence on what the export shows.
    pub fn description(self) -> &'static str {
        match self {
            Control::AccessReview => {
                "Every identity at the end of the period: kind, owner, effective tools with their categories, tokens with issue and expiry dates, and the last access review."
            }
            Control::Provisioning => {
                "Per identity, every commit of the period that created, widened, narrowed, re-reviewed or revoked its grant, with author, pull request and the change."
            }
            Control::Privileged => {
                "Every call record of the period for a destructive, execute or financial tool, with all record fields."
            }
            Control::Calls => {
                "Every call record (decisions and outcomes, hash-chained) and every monitoring event of the period."
            }
            Control::Changes => {
                "Every change record of the period (applied, superseded or rejected) with author, pull request and access diff, and every history rewrite."
            }
            Control::Suppliers => {
                "The upstream servers registered at the end of the period with their supplier facts, and each server's traffic in the period."
            }
            Control::Bundle => "All exports, with this index and a manifest of their sha256.",
        }
    }

    /// The tables (file stems) it exports.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Control::AccessReview => &["access-review"],
            Control::Provisioning => &["provisioning"],
            Control::Privileged => &["privileged"],
            Control::Calls => &["calls", "events"],
            Control::Changes => &["changes", "rewrites"],
            Control::Suppliers => &["suppliers"],
            Control::Bundle => &[],
        }
    }
}

// === impl Format ===

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

// === impl Period ===

impl Period {
    /// Parses `YYYY-MM-DD` or RFC 3339 UTC bounds; `since` must be before `until`.
    pub fn parse(since: &str, until: &str) -> Result<Period> {
        let since = crate::record::audit::verify::bound(since).context("--since")?;
        let until = crate::record::audit::verify::bound(until).context("--until")?;
        let (since_ms, until_ms) = (millis(&since)?, millis(&until)?);
        if since_ms >= until_ms {
            bail!("--since ({since}) must be before --until ({until})");
        }
        Ok(Period { since, until, since_ms, until_ms })
    }

    /// Whether a time in milliseconds since the epoch is in the period.
    pub fn contains_ms(&self, ms: i64) -> bool {
        ms >= self.since_ms && ms < self.until_ms
    }

    /// Whether a record's `ts` (normalised RFC 3339) is in the period.
    pub fn contains_ts(&self, ts: &str) -> bool {
        ts >= self.since.as_str() && ts < self.until.as_str()
    }

    pub fn since_ms(&self) -> i64 {
        self.since_ms
    }

    pub fn until_ms(&self) -> i64 {
        self.until_ms
    }

    /// The last UTC day of the period (what the gateway calls "today" at its last instant).
    pub fn last_day(&self) -> Date {
        Date::from_days_since_epoch((self.until_ms - 1).div_euclid(86_400_000))
    }

    pub fn to_json(&self) -> Value {
        json!({ "since": self.since, "until": self.until })
    }
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
fn millis(s: &str) -> Result<i64> {
    let bad = || anyhow::anyhow!("invalid time {s:?}");
    let b = s.as_bytes();
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' || !s.ends_with('Z') {
        return Err(bad());
    }
    let date = Date::parse(&s[..10]).map_err(|_| bad())?;
    let num = |r: std::ops::Range<usize>| -> Result<i64> { s.get(r).and_then(|p| p.parse().ok()).ok_or_else(bad) };
    let (h, m, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || m > 59 || sec > 60 {
        return Err(bad());
    }
    let frac = &s[19..s.len() - 1];
    let ms = match frac.strip_prefix('.') {
        None if frac.is_empty() => 0,
        Some(d) if !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()) => {
            let mut d = d.to_string();
            d.truncate(3);
            while d.len() < 3 {
                d.push('0');
            }
            d.parse::<i64>().map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    Ok(((date.days_since_epoch() * 24 + h) * 60 + m) * 60_000 + sec * 1000 + ms)
}

// === The controls, in memory ===

/// A.5.18: every identity at the end of the period.
pub fn access_review(i: &Inputs) -> Result<Table> {
    let period = i.period()?;
    let h = history::History::open(&i.repo, &i.rev, &period)?;
    let end = h.end_state()?;
    Ok(history::access_review(&period, end.as_ref()))
}

/// A.5.16/A.5.18: per identity, every commit of the period that changed its grant.
pub fn provisioning(i: &Inputs) -> Result<Table> {
    let period = i.period()?;
    history::History::open(&i.repo, &i.rev, &period)?.provisioning()
}

/// Provisioning computed the slow way, every commit of the period compiled whole: the reference
/// the incremental computation is tested against.
#[doc(hidden)]
pub fn provisioning_reference(i: &Inputs) -> Result<Table> {
    let period = i.period()?;
    history::History::open(&i.repo, &i.rev, &period)?.provisioning_with(false)
}

/// A.8.2: call records of privileged tools (in memory: for tests and small periods; `export`
/// streams).
pub fn privileged(i: &Inputs) -> Result<Table> {
    Ok(call_tables(i, false, true)?.1.expect("privileged requested"))
}

/// A.8.15: the period's call records (in memory; `export` streams).
pub fn calls(i: &Inputs) -> Result<Table> {
    Ok(call_tables(i, true, false)?.0.expect("calls requested"))
}

/// A.8.16: the period's monitoring events.
pub fn events(i: &Inputs) -> Result<Table> {
    let period = i.period()?;
    let db = db::Db::open(&i.location())?;
    let mut rows = Vec::new();
    db.events(&period, &mut rows)?;
    Ok(table("events", Control::Calls, db::EVENT_COLUMNS.to_vec(), rows, json!({})))
}

/// A.8.32: every first-parent commit of the period from git, with what the daemon did with each
/// when there is a state database (see `changes`); from git alone otherwise.
pub fn changes(i: &Inputs) -> Result<Table> {
    let period = i.period()?;
    let h = history::History::open(&i.repo, &i.rev, &period)?;
    let records = db::Db::open_if_present(&i.location())?.map(|db| db.change_records()).transpose()?;
    Ok(changes_table(i, &period, &h.changes()?, records.as_deref()))
}

/// The changes export computed the slow way, every changed commit of the period compiled whole:
/// the reference the incremental computation is tested against.
#[doc(hidden)]
pub fn changes_reference(i: &Inputs) -> Result<Table> {
    let period = i.period()?;
    let h = history::History::open(&i.repo, &i.rev, &period)?;
    let records = db::Db::open_if_present(&i.location())?.map(|db| db.change_records()).transpose()?;
    Ok(changes_table(i, &period, &h.changes_with(false)?, records.as_deref()))
}

/// The changes table from git's commits and the daemon's records (None: no database).
fn changes_table(i: &Inputs, period: &Period, git: &[history::GitChange], records: Option<&[db::DaemonChange]>) -> Table {
    let daemon = match records {
        Some(records) => {
            changes::Daemon::Read { records, database: i.location().describe() }
        }
        None => changes::Daemon::NotRead(db::missing(&i.location())),
    };
    changes::table(period, &i.rev, git, &daemon)
}

/// A.8.32: history rewrites the daemon detected in the period (refused, and accepted or not).
/// They exist only in the state database: an error without one.
pub fn rewrites(i: &Inputs) -> Result<Table> {
    let period = i.period()?;
    let db = db::Db::open(&i.location())?;
    let rows = db.rewrites(&period)?;
    Ok(table("rewrites", Control::Changes, db::REWRITE_COLUMNS.to_vec(), rows, json!({})))
}

/// A.5.19–5.23: the server registry at the end of the period and each server's traffic (not
/// available, and marked so, without a state database).
pub fn suppliers(i: &Inputs) -> Result<Table> {
    let period = i.period()?;
    let h = history::History::open(&i.repo, &i.rev, &period)?;
    let registry = history::registry(h.end_state()?.as_ref());
    let Some(db) = db::Db::open_if_present(&i.location())? else {
        return Ok(history::suppliers(registry, Err(&db::missing(&i.location()))));
    };
    let range = db.seq_range(&period)?;
    let mut none = db::Pass::default();
    let scan = db.scan_calls(&period, &range, &mut none)?;
    Ok(history::suppliers(registry, Ok((&scan.traffic, &db.definition_changes(&period)?))))
}

/// Every table of a control, in memory.
pub fn tables(i: &Inputs, control: Control) -> Result<Vec<Table>> {
    Ok(match control {
        Control::AccessReview => vec![access_review(i)?],
        Control::Provisioning => vec![provisioning(i)?],
        Control::Privileged => vec![privileged(i)?],
        Control::Calls => vec![calls(i)?, events(i)?],
        Control::Changes => {
            let mut out = vec![changes(i)?];
            if db::present(&i.location()) {
                out.push(rewrites(i)?);
            }
            out
        }
        Control::Suppliers => vec![suppliers(i)?],
        Control::Bundle => {
            let mut out = Vec::new();
            for c in Control::ALL {
                out.extend(tables(i, c)?);
            }
            out
        }
    })
}

fn table(
    name: &'static str,
    control: Control,
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
    source: Value,
) -> Table {
    Table { name, control, columns, population: rows.len() as u64, rows, source }
}

/// The call tables in memory: (calls, privileged).
fn call_tables(i: &Inputs, calls: bool, privileged: bool) -> Result<(Option<Table>, Option<Table>)> {
    let period = i.period()?;
    let db = db::Db::open(&i.location())?;
    let range = db.seq_range(&period)?;
    let (mut all, mut privy) = (Vec::new(), Vec::new());
    let mut pass = db::Pass::default();
    if calls {
        pass.calls = Some(&mut all);
    }
    if privileged {
        pass.privileged = Some(&mut privy);
    }
    db.scan_calls(&period, &range, &mut pass)?;
    let source = range.to_json();
    let c = calls.then(|| table("calls", Control::Calls, CALL_COLUMNS.to_vec(), all, source.clone()));
    let p = privileged.then(|| table("privileged", Control::Privileged, CALL_COLUMNS.to_vec(), privy, source));
    Ok((c, p))
}

// === Files ===

/// Writes the tables of one control (not `bundle`) into `out_dir` as `<table>.<ext>`, each with a
/// sidecar `<table>.<ext>.manifest.json` (control, period, population, sha256, source). The call
/// log is streamed.
pub fn export(i: &Inputs, control: Control, format: Format, out_dir: &Path) -> Result<Vec<Written>> {
    let to_stdout = out_dir == Path::new(write::STDOUT);
    if to_stdout && control.tables().len() != 1 {
        bail!(
            "--out - writes one export to standard output; {} writes {}: give --out DIR",
            control.name(),
            if control == Control::Bundle { "a folder".to_string() } else { control.tables().join(" and ") }
        );
    }
    if control == Control::Bundle {
        return Ok(bundle(i, format, out_dir)?.files);
    }
    let period = i.period()?;
    if !to_stdout {
        std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    }
    let written = match control {
        Control::AccessReview | Control::Provisioning => {
            let h = history::History::open(&i.repo, &i.rev, &period)?;
            let t = if control == Control::AccessReview {
                history::access_review(&period, h.end_state()?.as_ref())
            } else {
                h.provisioning()?
            };
            vec![write_table(&t, &period, format, out_dir)?]
        }
        Control::Privileged | Control::Calls => {
            let db = db::Db::open(&i.location())?;
            let mut out =
                stream_calls(&db, &period, format, out_dir, control == Control::Calls, control == Control::Privileged)?;
            if control == Control::Calls {
                out.written.push(stream_events(&db, &period, format, out_dir)?);
            }
            out.written
        }
        Control::Changes => {
            let mut out = Vec::new();
            for t in tables(i, Control::Changes)? {
                out.push(write_table(&t, &period, format, out_dir)?);
            }
            out
        }
        Control::Suppliers => vec![write_table(&suppliers(i)?, &period, format, out_dir)?],
        Control::Bundle => unreachable!(),
    };
    for w in &written {
        let sidecar = json!({
            "file": w.path.file_name().and_then(|n| n.to_str()),
            "control": control.name(),
            "table": w.table,
            "iso": control.iso(),
            "format": format.ext(),
            "period": period.to_json(),
            "population": w.population,
            "bytes": w.bytes,
            "sha256": w.sha256,
            "source": w.source,
        });
        if to_stdout {
            eprintln!("{}", serde_json::to_string_pretty(&sidecar)?);
            continue;
        }
        let mut p = w.path.as_os_str().to_owned();
        p.push(".manifest.json");
        std::fs::write(PathBuf::from(p), serde_json::to_string_pretty(&sidecar)? + "\n")?;
    }
    Ok(written)
}

/// Writes every export into `out_dir` (created; refused if it holds anything but an earlier
/// bundle, whose files are replaced), then `index.html` and `MANIFEST.json` with the sha256 of
/// every file, the period, the commit range, the audit seq range and the sources read. Git and
/// the state database are read on two threads. Without a state database the bundle holds what
/// git alone gives (access review, provisioning, changes, suppliers without traffic) and says
/// which tables it could not write.
pub fn bundle(i: &Inputs, format: Format, out_dir: &Path) -> Result<Bundle> {
    let period = i.period()?;
    prepare_bundle_dir(out_dir)?;
    let db = db::Db::open_if_present(&i.location())?;
    let (git, dbside) = std::thread::scope(|s| {
        let git = s.spawn(|| -> Result<_> {
            let h = history::History::open(&i.repo, &i.rev, &period)?;
            let end = h.end_state()?;
            let review = history::access_review(&period, end.as_ref());
            let registry = history::registry(end.as_ref());
            let range = h.commit_range(end.as_ref());
            drop(end);
            let prov = h.provisioning()?;
            let w1 = write_table(&review, &period, format, out_dir)?;
            let w2 = write_table(&prov, &period, format, out_dir)?;
            Ok((vec![w1, w2], registry, range, h.changes()?))
        });
        let dbside = db
            .as_ref()
            .map(|db| -> Result<_> {
                let calls = stream_calls(db, &period, format, out_dir, true, true)?;
                let events = stream_events(db, &period, format, out_dir)?;
                let rewrites =
                    table("rewrites", Control::Changes, db::REWRITE_COLUMNS.to_vec(), db.rewrites(&period)?, json!({}));
                let w_rewrites = write_table(&rewrites, &period, format, out_dir)?;
                Ok(DbSide { calls, events, w_rewrites, records: db.change_records()?, definition_changes: db.definition_changes(&period)? })
            })
            .transpose();
        (git.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the git reader panicked"))), dbside)
    });
    let (git_files, registry, commits, git_changes) = git?;
    let dbside = dbside?;
    let missing = db::missing(&i.location());
    let changes = changes_table(i, &period, &git_changes, dbside.as_ref().map(|d| d.records.as_slice()));
    let w_changes = write_table(&changes, &period, format, out_dir)?;
    let suppliers = match &dbside {
        Some(d) => history::suppliers(registry, Ok((&d.calls.scan.traffic, &d.definition_changes))),
        None => history::suppliers(registry, Err(&missing)),
    };
    let w_suppliers = write_table(&suppliers, &period, format, out_dir)?;

    // In the order of Control::ALL.
    let mut files = git_files;
    let (audit, database, unavailable) = match dbside {
        Some(d) => {
            let audit = d.calls.range.to_json_with(&d.calls.scan.chain);
            let mut call_files = d.calls.written.into_iter();
            let (w_calls, w_privileged) = (call_files.next().expect("calls"), call_files.next().expect("privileged"));
            files.extend([w_privileged, w_calls, d.events, w_changes, d.w_rewrites, w_suppliers]);
            (audit, json!(i.location().describe()), Vec::new())
        }
        None => {
            files.extend([w_changes, w_suppliers]);
            let unavailable: Vec<Value> = ["privileged", "calls", "events", "rewrites"]
                .iter()
                .map(|t| json!({ "table": t, "why": format!("{missing}: only the daemon records it") }))
                .collect();
            (json!({ "read": false, "why": missing }), Value::Null, unavailable)
        }
    };
    let sources = json!({
        "git": { "repo": i.repo.display().to_string(), "rev": i.rev },
        "database": database,
        "not_written": unavailable,
    });
    let generated_at = crate::units::now_rfc3339_ms();
    let summary = html::Summary {
        period: &period,
        commits: &commits,
        audit: &audit,
        sources: &sources,
        generated_at: &generated_at,
        format,
    };
    let index = html::index(&summary, &files);
    let index_path = out_dir.join("index.html");
    std::fs::write(&index_path, &index).with_context(|| format!("writing {}", index_path.display()))?;

    let mut entries: Vec<Value> = files
        .iter()
        .map(|w| {
            json!({
                "path": w.path.file_name().and_then(|n| n.to_str()),
                "control": w.control.name(),
                "table": w.table,
                "iso": w.control.iso(),
                "population": w.population,
                "bytes": w.bytes,
                "sha256": w.sha256,
            })
        })
        .collect();
    entries
        .push(json!({ "path": "index.html", "bytes": index.len(), "sha256": manifest::sha256_hex(index.as_bytes()) }));
    let manifest = json!({
        "gatehouse": env!("CARGO_PKG_VERSION"),
        "generated_at": generated_at,
        "format": format.ext(),
        "period": period.to_json(),
        "sources": sources,
        "commits": commits,
        "audit": audit,
        "files": entries,
    });
    let mut f = std::fs::File::create(out_dir.join(manifest::FILE))?;
    f.write_all((serde_json::to_string_pretty(&manifest)? + "\n").as_bytes())?;
    f.sync_all()?;
    Ok(Bundle { dir: out_dir.to_path_buf(), files, manifest })
}

/// What the state database side of a bundle wrote and read.
struct DbSide {
    calls: Streamed,
    events: Written,
    w_rewrites: Written,
    records: Vec<db::DaemonChange>,
    definition_changes: std::collections::BTreeMap<String, u64>,
}

/// `gatehouse evidence CONTROL`: writes the export(s) into `out`, prints each file with its
/// population. Exit code 0; 1 when a bundle was written but the call log's hash chain does not
/// verify over the exported range (the evidence is complete, and flagged).
pub fn command(
    inputs: &Inputs,
    control: Control,
    format: Format,
    out: &Path,
    stdout: &mut dyn std::io::Write,
) -> Result<i32> {
    // With --out - the export itself is standard output: the summary goes to standard error.
    let mut stderr = std::io::stderr();
    let stdout: &mut dyn std::io::Write = if out == Path::new(write::STDOUT) { &mut stderr } else { stdout };
    let period = inputs.period()?;
    let (files, code) = if control == Control::Bundle {
        let b = bundle(inputs, format, out)?;
        let audit = &b.manifest["audit"];
        let chain = &audit["chain"];
        let code = if chain["intact"] == false {
            writeln!(
                stdout,
                "warning: the call log's hash chain is broken at seq {}: {}",
                chain["broken_at"],
                chain["why"].as_str().unwrap_or("")
            )?;
            1
        } else {
            0
        };
        (b.files, code)
    } else {
        (export(inputs, control, format, out)?, 0)
    };
    writeln!(stdout, "period {} to {} (exclusive)", period.since, period.until)?;
    if matches!(control, Control::Changes | Control::Suppliers | Control::Bundle) && !db::present(&inputs.location()) {
        writeln!(
            stdout,
            "note: {}: from git alone, no daemon records read (no change statuses, rewrites, traffic, calls or events)",
            db::missing(&inputs.location())
        )?;
    }
    for w in &files {
        writeln!(stdout, "{}\t{} rows\t{} ({})", w.path.display(), w.population, w.control.name(), w.control.iso())?;
    }
    if control == Control::Bundle {
        writeln!(stdout, "{}\topen in a browser", out.join("index.html").display())?;
        writeln!(
            stdout,
            "{}\tsha256 of every file, period, commit range, audit seq range",
            out.join(manifest::FILE).display()
        )?;
    }
    Ok(code)
}

/// Creates `dir`, or empties an earlier bundle in it; refuses a directory holding anything else.
fn prepare_bundle_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names: Vec<String> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    if names.is_empty() {
        return Ok(());
    }
    let listed = manifest::listed(dir).with_context(|| {
        format!(
            "{} is not empty and holds no earlier bundle (no readable {}): choose another --out",
            dir.display(),
            manifest::FILE
        )
    })?;
    for n in &names {
        if n != manifest::FILE && !listed.contains(n) {
            bail!("{} holds {n}, which is not part of the earlier bundle there: choose another --out", dir.display());
        }
    }
    for n in names {
        std::fs::remove_file(dir.join(&n)).with_context(|| format!("removing {n} of the earlier bundle"))?;
    }
    Ok(())
}

/// `<dir>/<table>.<ext>`, or `-` (standard output) when `dir` is `-`.
fn out_path(dir: &Path, table: &str, format: Format) -> PathBuf {
    if dir == Path::new(write::STDOUT) {
        return PathBuf::from(write::STDOUT);
    }
    dir.join(format!("{table}.{}", format.ext()))
}

/// Writes an in-memory table as `<name>.<ext>` in `dir`.
fn write_table(t: &Table, period: &Period, format: Format, dir: &Path) -> Result<Written> {
    let path = out_path(dir, t.name, format);
    let header = write::Header {
        table: t.name,
        control: t.control,
        period,
        population: t.population,
        source: &t.source,
        columns: &t.columns,
    };
    let mut w = write::FileOut::create(&path, format, &header)?;
    for row in &t.rows {
        w.row_values(row)?;
    }
    w.finish(t)
}

/// What streaming the call log wrote and found.
struct Streamed {
    written: Vec<Written>,
    scan: db::Scan,
    range: db::SeqRange,
}

/// Streams the period's call records into `calls.<ext>` and/or `privileged.<ext>` (in that order
/// in `written`), verifying the chain and counting traffic on the way.
fn stream_calls(
    db: &db::Db,
    period: &Period,
    format: Format,
    dir: &Path,
    calls: bool,
    privileged: bool,
) -> Result<Streamed> {
    let range = db.seq_range(period)?;
    let source = range.to_json();
    // JSON states the population before the rows: counted first, in the same read transaction
    // (the period's records are the seq range's count; privileged ones take a pass of their own).
    let (n_calls, n_privileged) = match format {
        Format::Json => (range.count, if privileged { db.count_privileged(period, &range)? } else { 0 }),
        Format::Csv => (0, 0),
    };
    let open = |name: &'static str, control: Control, population: u64| -> Result<write::FileOut> {
        let path = out_path(dir, name, format);
        let header =
            write::Header { table: name, control, period, population, source: &source, columns: &CALL_COLUMNS };
        write::FileOut::create(&path, format, &header)
    };
    let mut w_calls = if calls { Some(open("calls", Control::Calls, n_calls)?) } else { None };
    let mut w_priv = if privileged { Some(open("privileged", Control::Privileged, n_privileged)?) } else { None };
    let mut pass = db::Pass {
        calls: w_calls.as_mut().map(|w| w as &mut dyn write::Sink),
        privileged: w_priv.as_mut().map(|w| w as &mut dyn write::Sink),
    };
    let scan = db.scan_calls(period, &range, &mut pass)?;
    if format == Format::Json && (scan.calls != n_calls || (privileged && scan.privileged != n_privileged)) {
        bail!("the call log changed while it was read ({n_calls} then {} records)", scan.calls);
    }
    let mut written = Vec::new();
    let meta = |name: &'static str, control: Control, population: u64| Table {
        name,
        control,
        columns: CALL_COLUMNS.to_vec(),
        rows: Vec::new(),
        population,
        source: source.clone(),
    };
    if let Some(w) = w_calls {
        written.push(w.finish(&meta("calls", Control::Calls, scan.calls))?);
    }
    if let Some(w) = w_priv {
        written.push(w.finish(&meta("privileged", Control::Privileged, scan.privileged))?);
    }
    Ok(Streamed { written, scan, range })
}

fn stream_events(db: &db::Db, period: &Period, format: Format, dir: &Path) -> Result<Written> {
    let population = match format {
        Format::Json => db.count_events(period)?,
        Format::Csv => 0,
    };
    let path = out_path(dir, "events", format);
    let source = json!({});
    let header = write::Header {
        table: "events",
        control: Control::Calls,
        period,
        population,
        source: &source,
        columns: &db::EVENT_COLUMNS,
    };
    let mut w = write::FileOut::create(&path, format, &header)?;
    let n = db.events(period, &mut w)?;
    if format == Format::Json && n != population {
        bail!("the events changed while they were read");
    }
    w.finish(&Table {
        name: "events",
        control: Control::Calls,
        columns: db::EVENT_COLUMNS.to_vec(),
        rows: Vec::new(),
        population: n,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        let p = Period::parse("2026-11-01", "2026-12-01T12:30:00Z").unwrap();
        assert_eq!(p.since, "2026-11-01T00:00:00.000Z");
        assert_eq!(p.until, "2026-12-01T12:30:00.000Z");
        assert_eq!(p.since_ms(), Date::parse("2026-11-01").unwrap().days_since_epoch() * 86_400_000);
        assert_eq!(p.until_ms() - p.since_ms(), (30 * 86_400 + 12 * 3600 + 30 * 60) * 1000);
        assert!(p.contains_ts("2026-11-15T00:00:00.000Z"));
        assert!(!p.contains_ts("2026-12-01T12:30:00.000Z"));
        assert_eq!(p.last_day().to_string(), "2026-12-01");
        assert_eq!(Period::parse("2026-11-01", "2026-12-01").unwrap().last_day().to_string(), "2026-11-30");
        assert!(Period::parse("2026-12-01", "2026-11-01").is_err());
        assert!(Period::parse("2026-11-01", "yesterday").is_err());
        assert_eq!(millis("1970-01-01T00:00:01.5Z").unwrap(), 1500);
    }
}
