//! The state database side of the evidence: call records (streamed, chain-verified), monitoring
//! events, change records and history rewrites. Everything is read in one read transaction, so
//! counts, seq ranges and rows agree even while a daemon keeps writing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::Period;
use super::write::{CellRef, Sink, Text};
use crate::record::audit::GENESIS;
use crate::record::audit::verify::record_fault;

pub(crate) const EVENT_COLUMNS: [&str; 8] = ["id", "ts", "kind", "identity", "server", "tool", "rule", "detail"];

pub(crate) const REWRITE_COLUMNS: [&str; 8] =
    ["id", "detected_at", "old_tip", "new_tip", "vanished", "accepted_at", "accepted_by", "reason"];

/// One change record, as the daemon wrote it.
#[derive(Debug, Clone)]
pub(crate) struct DaemonChange {
    pub commit: String,
    /// applied | superseded | rejected.
    pub status: String,
    pub author: String,
    pub author_time: String,
    pub committer: String,
    pub commit_time: String,
    pub pull_request: Option<i64>,
    pub message: String,
    pub parents: Value,
    pub files: Value,
    /// `{present, verified, …}`.
    pub signed: Value,
    /// `{gained: [cells], lost: [cells]}` or null.
    pub access_diff: Value,
    pub errors: Value,
    pub applied_at: Option<String>,
    pub recorded_at: String,
}

/// Whether `data_dir` holds a state database.
pub(crate) fn present(data_dir: &Path) -> bool {
    data_dir.join(crate::record::store::FILE).exists()
}

/// Why no daemon records were read from `data_dir`.
pub(crate) fn missing(data_dir: &Path) -> String {
    format!("no state database at {}", data_dir.join(crate::record::store::FILE).display())
}

/// Tool categories whose calls are privileged (A.8.2).
const PRIVILEGED: [&str; 3] = ["destructive", "execute", "financial"];

/// A read transaction on the state database.
pub(crate) struct Db {
    conn: Connection,
}

/// The seq range of the period's call records (by `ts`).
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqRange {
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub count: u64,
}

/// Where one pass over the call log sends its rows.
#[derive(Default)]
pub(crate) struct Pass<'a> {
    pub calls: Option<&'a mut dyn Sink>,
    pub privileged: Option<&'a mut dyn Sink>,
}

/// What one pass over the call log found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Records in the period, and those of privileged tools.
    pub calls: u64,
    pub privileged: u64,
    /// Server → traffic.
    pub traffic: BTreeMap<String, Traffic>,
    pub chain: Chain,
}

/// One server's traffic in the period.
#[derive(Debug, Default, Clone)]
pub(crate) struct Traffic {
    /// Calls (decision records), allowed and denied.
    pub calls: u64,
    pub allowed: u64,
    pub denials: u64,
    /// Outcome records `upstream_error` or `timeout`.
    pub errors: u64,
    /// Every record (decisions and outcomes).
    pub records: u64,
}

/// The hash chain over the exported seq range.
#[derive(Debug, Default, Clone)]
pub(crate) struct Chain {
    /// Records whose hash was recomputed.
    pub checked: u64,
    /// The first record that does not verify, and why.
    pub broken: Option<(u64, String)>,
    /// Whether the first record links to the one before it (None: nothing to link to).
    pub linked: Option<bool>,
}

// === impl Db ===

impl Db {
    pub fn open(data_dir: &Path) -> Result<Db> {
        match Db::open_if_present(data_dir)? {
            Some(db) => Ok(db),
            None => anyhow::bail!("{} (pass --data-dir)", missing(data_dir)),
        }
    }

    /// The database, or None when `data_dir` holds none (evidence from git alone).
    pub fn open_if_present(data_dir: &Path) -> Result<Option<Db>> {
        if !present(data_dir) {
            return Ok(None);
        }
        let conn = crate::record::store::open_read_only(data_dir)?;
        conn.execute_batch("BEGIN DEFERRED").context("starting a read transaction")?;
        Ok(Some(Db { conn }))
    }

    pub fn seq_range(&self, p: &Period) -> Result<SeqRange> {
        let (first, last, count): (Option<i64>, Option<i64>, i64) = self.conn.query_row(
            "SELECT min(seq), max(seq), count(*) FROM calls WHERE ts >= ?1 AND ts < ?2",
            params![p.since, p.until],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(SeqRange { first: first.map(|s| s as u64), last: last.map(|s| s as u64), count: count as u64 })
    }

    /// Records of privileged tools in the period.
    pub fn count_privileged(&self, p: &Period, range: &SeqRange) -> Result<u64> {
        let (Some(first), Some(last)) = (range.first, range.last) else { return Ok(0) };
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM calls
             WHERE seq BETWEEN ?1 AND ?2 AND +ts >= ?3 AND +ts < ?4 AND category IN ('destructive', 'execute', 'financial')",
            params![first as i64, last as i64, p.since, p.until],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Streams the period's call records (in seq order) to the pass's sinks, recomputing the
    /// hash chain over the whole seq range (records of the range outside the period, possible
    /// at its edges when clocks and appends interleave, are verified but not exported), and
    /// counts each server's traffic. Records are parsed in place (borrowed strings): nothing is
    /// allocated per record on the way to a file.
    pub fn scan_calls(&self, p: &Period, range: &SeqRange, pass: &mut Pass) -> Result<Scan> {
        let mut scan = Scan::default();
        let (Some(first), Some(last)) = (range.first, range.last) else { return Ok(scan) };
        let before = self.hash_before(first)?;
        scan.chain.linked = before.as_ref().map(|_| true);
        let mut prev = before.unwrap_or_default();
        let mut check_link = scan.chain.linked.is_some();
        let mut expect = first;
        let mut stmt = self
            .conn
            .prepare("SELECT seq, ts, record, hash, category FROM calls WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq")?;
        let mut rows = stmt.query(params![first as i64, last as i64])?;
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            let ts = row.get_ref(1)?.as_str()?;
            let text = row.get_ref(2)?.as_str()?;
            let hash = row.get_ref(3)?.as_str()?;
            // Privileged by the indexed column (what the counts use; a record whose text says
            // otherwise fails the chain check anyway).
            let privileged = row.get_ref(4)?.as_str_or_null()?.is_some_and(|c| PRIVILEGED.contains(&c));
            let record: Result<Rec, _> = serde_json::from_str(text);
            if scan.chain.broken.is_none() {
                let why = if seq != expect {
                    Some(format!("record {expect} is missing (next is {seq})"))
                } else {
                    let parsed = record.as_ref().map(|r| (r.seq, &*r.prev_hash));
                    if seq == first && check_link && parsed.is_ok_and(|(s, p)| s == seq && p != prev) {
                        scan.chain.linked = Some(false);
                    }
                    record_fault(seq, text, hash, parsed, check_link.then_some(prev.as_str()))
                };
                match why {
                    Some(why) => scan.chain.broken = Some((if seq != expect { expect } else { seq }, why)),
                    None => scan.chain.checked += 1,
                }
            }
            check_link = true;
            prev.clear();
            prev.push_str(hash);
            expect = seq + 1;
            if !p.contains_ts(ts) {
                continue;
            }
            scan.calls += 1;
            let r = match record {
                Ok(r) => r,
                Err(e) => {
                    self.unreadable(seq, ts, hash, &e, privileged, &mut scan, pass)?;
                    continue;
                }
            };
            let t = match scan.traffic.get_mut(&*r.server) {
                Some(t) => t,
                None => scan.traffic.entry(r.server.to_string()).or_default(),
            };
            t.records += 1;
            if r.verdict == "deny" || r.latency_ms.is_none() {
                t.calls += 1;
                if r.verdict == "deny" {
                    t.denials += 1;
                } else {
                    t.allowed += 1;
                }
            }
            if matches!(&*r.outcome, "upstream_error" | "timeout") {
                t.errors += 1;
            }
            let category = r.category.as_ref().map(|c| &*c.0);
            if privileged {
                scan.privileged += 1;
            }
            if pass.calls.is_none() && !(privileged && pass.privileged.is_some()) {
                continue;
            }
            let cells = [
                CellRef::Num(r.seq),
                CellRef::Str(&r.ts),
                CellRef::Str(&r.replica),
                CellRef::Str(&r.session),
                CellRef::Str(&r.identity),
                CellRef::Str(&r.grant),
                CellRef::Str(&r.auth),
                CellRef::Str(&r.kind),
                CellRef::Str(&r.server),
                CellRef::Str(&r.tool),
                opt(category),
                CellRef::List(&r.arg_keys),
                CellRef::Str(&r.verdict),
                CellRef::Str(&r.rule),
                CellRef::Str(&r.message),
                opt(r.policy_commit.as_ref().map(|c| &*c.0)),
                CellRef::Str(&r.snapshot_digest),
                CellRef::Str(&r.outcome),
                r.latency_ms.map_or(CellRef::Null, CellRef::Num),
                CellRef::Str(&r.prev_hash),
                CellRef::Str(hash),
            ];
            let privileged = if privileged { pass.privileged.as_deref_mut() } else { None };
            match (pass.calls.as_deref_mut(), privileged) {
                (Some(c), Some(p)) => {
                    c.row_ref(&cells)?;
                    // Same format and columns: the row is encoded once for both files.
                    match c.last_row() {
                        Some(bytes) => p.row_bytes(bytes, &cells)?,
                        None => p.row_ref(&cells)?,
                    }
                }
                (Some(c), None) => c.row_ref(&cells)?,
                (None, Some(p)) => p.row_ref(&cells)?,
                (None, None) => {}
            }
        }
        Ok(scan)
    }

    /// A record that does not parse (tampered): exported with what the table's columns say, so
    /// the population stays complete; the chain already names it.
    #[allow(clippy::too_many_arguments)]
    fn unreadable(
        &self,
        seq: u64,
        ts: &str,
        hash: &str,
        e: &serde_json::Error,
        privileged: bool,
        scan: &mut Scan,
        pass: &mut Pass,
    ) -> Result<()> {
        let (identity, server, tool, category, verdict, outcome): (
            String,
            String,
            String,
            Option<String>,
            String,
            String,
        ) = self.conn.query_row(
            "SELECT identity, server, tool, category, verdict, outcome FROM calls WHERE seq = ?1",
            [seq as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )?;
        let t = scan.traffic.entry(server.clone()).or_default();
        t.records += 1;
        let mut cells = vec![Value::Null; 19];
        cells[0] = json!(seq);
        cells[1] = json!(ts);
        cells[4] = json!(identity);
        cells[6] = json!(server);
        cells[7] = json!(tool);
        cells[8] = json!(category);
        cells[10] = json!(verdict);
        cells[12] = json!(format!("unreadable record: {e}"));
        cells[15] = json!(outcome);
        cells[18] = json!(hash);
        if privileged {
            scan.privileged += 1;
            if let Some(s) = pass.privileged.as_deref_mut() {
                s.row(cells.clone())?;
            }
        }
        if let Some(s) = pass.calls.as_deref_mut() {
            s.row(cells)?;
        }
        Ok(())
    }

    /// The hash the record `seq` must link to: the previous record's, the pruning anchor's, or
    /// genesis; None when it cannot be known.
    fn hash_before(&self, seq: u64) -> Result<Option<String>> {
        if seq <= 1 {
            return Ok(Some(GENESIS.to_string()));
        }
        let h: Option<String> = self
            .conn
            .query_row("SELECT hash FROM calls WHERE seq = ?1", [(seq - 1) as i64], |r| r.get(0))
            .optional()?;
        if h.is_some() {
            return Ok(h);
        }
        Ok(crate::record::audit::log::anchor(&self.conn)?.filter(|(s, _)| *s == seq - 1).map(|(_, h)| h))
    }

    pub fn count_events(&self, p: &Period) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM events WHERE ts >= ?1 AND ts < ?2",
            params![p.since, p.until],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Streams the period's monitoring events; returns how many.
    pub fn events(&self, p: &Period, sink: &mut dyn Sink) -> Result<u64> {
        let mut stmt =
            self.conn.prepare("SELECT id, ts, kind, detail FROM events WHERE ts >= ?1 AND ts < ?2 ORDER BY id")?;
        let mut rows = stmt.query(params![p.since, p.until])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            let detail_text: String = row.get(3)?;
            let detail: Value = serde_json::from_str(&detail_text).unwrap_or(Value::String(detail_text));
            let field = |k: &str| detail.get(k).cloned().unwrap_or(Value::Null);
            sink.row(vec![
                json!(row.get::<_, i64>(0)?),
                json!(row.get::<_, String>(1)?),
                json!(row.get::<_, String>(2)?),
                field("identity"),
                field("server"),
                field("tool"),
                field("rule"),
                detail.clone(),
            ])?;
            n += 1;
        }
        Ok(n)
    }

    /// Change records recorded in the period (by `recorded_at`), in the order recorded.
    /// Every change record the daemon wrote (one per commit), in the order it wrote them.
    pub fn change_records(&self) -> Result<Vec<DaemonChange>> {
        let mut stmt = self.conn.prepare(
            "SELECT commit_id, status, author, author_time, committer, commit_time, pull_request, message, parents, files,
                    signed, access_diff, errors, applied_at, recorded_at
             FROM changes ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let parse = |i: usize| -> Result<Value> {
                let t: String = r.get(i)?;
                Ok(serde_json::from_str(&t).unwrap_or(Value::String(t)))
            };
            out.push(DaemonChange {
                commit: r.get(0)?,
                status: r.get(1)?,
                author: r.get(2)?,
                author_time: r.get(3)?,
                committer: r.get(4)?,
                commit_time: r.get(5)?,
                pull_request: r.get(6)?,
                message: r.get(7)?,
                parents: parse(8)?,
                files: parse(9)?,
                signed: parse(10)?,
                access_diff: parse(11)?,
                errors: parse(12)?,
                applied_at: r.get(13)?,
                recorded_at: r.get(14)?,
            });
        }
        Ok(out)
    }

    /// History rewrites detected in the period.
    /// Server → the number of `tool_quarantined` events (definition changes, failed screening)
    /// in the period.
    pub fn definition_changes(&self, p: &Period) -> Result<BTreeMap<String, u64>> {
        let mut stmt = self.conn.prepare(
            "SELECT json_extract(detail, '$.server'), count(*) FROM events
             WHERE kind = 'tool_quarantined' AND ts >= ?1 AND ts < ?2 GROUP BY 1",
        )?;
        let mut rows = stmt.query(params![p.since, p.until])?;
        let mut out = BTreeMap::new();
        while let Some(r) = rows.next()? {
            if let Some(server) = r.get::<_, Option<String>>(0)? {
                out.insert(server, r.get::<_, i64>(1)? as u64);
            }
        }
        Ok(out)
    }

    pub fn rewrites(&self, p: &Period) -> Result<Vec<Vec<Value>>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, detected_at, old_tip, new_tip, vanished, accepted_at, accepted_by, reason
             FROM rewrites WHERE detected_at >= ?1 AND detected_at < ?2 ORDER BY id",
        )?;
        let mut rows = stmt.query(params![p.since, p.until])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let vanished: String = r.get(4)?;
            out.push(vec![
                json!(r.get::<_, i64>(0)?),
                json!(r.get::<_, String>(1)?),
                json!(r.get::<_, String>(2)?),
                json!(r.get::<_, String>(3)?),
                serde_json::from_str(&vanished).unwrap_or(Value::String(vanished)),
                json!(r.get::<_, Option<String>>(5)?),
                json!(r.get::<_, Option<String>>(6)?),
                json!(r.get::<_, Option<String>>(7)?),
            ]);
        }
        Ok(out)
    }
}

/// `auth` and `kind` of records written before those fields existed (see `audit::CallRecord`).
fn token() -> Cow<'static, str> {
    Cow::Borrowed("token")
}

fn tool() -> Cow<'static, str> {
    Cow::Borrowed("tool")
}

fn opt(s: Option<&str>) -> CellRef<'_> {
    s.map_or(CellRef::Null, CellRef::Str)
}

/// A call record as stored, parsed in place.
#[derive(serde::Deserialize)]
struct Rec<'a> {
    seq: u64,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    replica: Cow<'a, str>,
    #[serde(borrow)]
    session: Cow<'a, str>,
    #[serde(borrow)]
    identity: Cow<'a, str>,
    #[serde(borrow)]
    grant: Cow<'a, str>,
    #[serde(borrow, default = "token")]
    auth: Cow<'a, str>,
    #[serde(borrow, default = "tool")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    server: Cow<'a, str>,
    #[serde(borrow)]
    tool: Cow<'a, str>,
    #[serde(borrow)]
    category: Option<Text<'a>>,
    #[serde(borrow)]
    arg_keys: Vec<Text<'a>>,
    #[serde(borrow)]
    verdict: Cow<'a, str>,
    #[serde(borrow)]
    rule: Cow<'a, str>,
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(borrow)]
    policy_commit: Option<Text<'a>>,
    #[serde(borrow)]
    snapshot_digest: Cow<'a, str>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    latency_ms: Option<u64>,
    #[serde(borrow)]
    prev_hash: Cow<'a, str>,
}

// === impl SeqRange ===

impl SeqRange {
    pub fn to_json(&self) -> Value {
        json!({ "first_seq": self.first, "last_seq": self.last, "count": self.count })
    }

    /// With the chain verification over the range.
    pub fn to_json_with(&self, chain: &Chain) -> Value {
        let mut v = self.to_json();
        v["chain"] = match &chain.broken {
            None => json!({ "intact": true, "checked": chain.checked, "linked_to_previous": chain.linked }),
            Some((seq, why)) => {
                json!({ "intact": false, "checked": chain.checked, "broken_at": seq, "why": why, "linked_to_previous": chain.linked })
            }
        };
        v
    }
}
