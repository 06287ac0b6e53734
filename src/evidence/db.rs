//! The state database side of the evidence: call records (streamed, every replica's chain
//! verified), monitoring events, change records and history rewrites. Everything is read in one
//! read transaction, so counts, seq ranges and rows agree even while daemons keep writing.
//!
//! Replicas sharing a database each keep a chain: a period's records are exported in time order
//! across replicas, and each replica's population, seq range and chain are stated.

use std::borrow::Cow;
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::record::store::sql::{Conn, Location, Reader, params};

use super::Period;
use super::write::{CellRef, Sink, Text};
use crate::record::audit::GENESIS;
use crate::record::audit::rows::{self, Range, Stored};
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
    /// Every replica that applied the commit, and when (`change_applications`).
    pub applications: Vec<(String, String)>,
}

/// Whether `at` holds a state database (a PostgreSQL URL always does: connecting says otherwise).
pub(crate) fn present(at: &Location) -> bool {
    match at {
        Location::Dir(d) => d.join(crate::record::store::FILE).exists(),
        Location::Postgres(_) => true,
    }
}

/// Why no daemon records were read from `at`.
pub(crate) fn missing(at: &Location) -> String {
    format!("no state database at {}", at.describe())
}

/// Tool categories whose calls are privileged (A.8.2).
const PRIVILEGED: [&str; 3] = ["destructive", "execute", "financial"];

/// A read transaction on the state database.
pub(crate) struct Db {
    reader: Reader,
}

/// The period's call records (by `ts`): how many, and each replica's seq range.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqRange {
    pub count: u64,
    pub replicas: BTreeMap<String, Span>,
}

/// One replica's records of the period.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub first: u64,
    pub last: u64,
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

/// The hash chains over the exported seq ranges: all replicas together, and each.
#[derive(Debug, Default, Clone)]
pub(crate) struct Chain {
    /// Records whose hash was recomputed.
    pub checked: u64,
    /// The first record that does not verify, and why (with several replicas, the why names
    /// the replica).
    pub broken: Option<(u64, String)>,
    /// Whether the first record links to the one before it (None: nothing to link to).
    pub linked: Option<bool>,
    /// Each replica's chain, by name (empty for one replica).
    pub replicas: Vec<(String, Chain)>,
}

// === impl Db ===

impl Db {
    pub fn open(at: &Location) -> Result<Db> {
        match Db::open_if_present(at)? {
            Some(db) => Ok(db),
            None => anyhow::bail!("{} (pass --data-dir or --database)", missing(at)),
        }
    }

    /// The database, or None when `at` is a data directory that holds none (evidence from git
    /// alone).
    pub fn open_if_present(at: &Location) -> Result<Option<Db>> {
        if !present(at) {
            return Ok(None);
        }
        let reader = Reader::open(at)?;
        reader.begin_snapshot().context("starting a read transaction")?;
        Ok(Some(Db { reader }))
    }

    fn conn(&self) -> Conn<'_> {
        self.reader.conn()
    }

    pub fn seq_range(&self, p: &Period) -> Result<SeqRange> {
        let rows = self.conn().query(
            // The tables under the `calls` view: SQLite would compute every column of the view.
            "SELECT replica, min(seq), max(seq), count(*) FROM (
                SELECT replica, seq FROM call_rows WHERE ts >= ?3 AND ts < ?4
                UNION ALL SELECT replica, seq FROM calls_v4 WHERE ts >= ?1 AND ts < ?2) AS r
             GROUP BY replica",
            params![&p.since, &p.until, p.since_ms(), p.until_ms()],
            |r| Ok((r.string(0)?, Span { first: r.i64(1)? as u64, last: r.i64(2)? as u64, count: r.i64(3)? as u64 })),
        )?;
        let count = rows.iter().map(|(_, s)| s.count).sum();
        Ok(SeqRange { count, replicas: rows.into_iter().collect() })
    }

    /// Records of privileged tools in the period.
    pub fn count_privileged(&self, p: &Period, range: &SeqRange) -> Result<u64> {
        if range.count == 0 {
            return Ok(0);
        }
        let n = self.conn().query_one(
            "SELECT (SELECT count(*) FROM call_rows WHERE ts >= ?3 AND ts < ?4
                       AND category IN (SELECT id FROM vals WHERE v IN ('destructive', 'execute', 'financial')))
                  + (SELECT count(*) FROM calls_v4 WHERE ts >= ?1 AND ts < ?2 AND category IN ('destructive', 'execute', 'financial'))",
            params![&p.since, &p.until, p.since_ms(), p.until_ms()],
            |r| r.i64(0),
        )?;
        Ok(n as u64)
    }

    /// Streams the period's call records to the pass's sinks, recomputing each replica's hash
    /// chain over its whole seq range (records of the range outside the period, possible at its
    /// edges when clocks and appends interleave, are verified but not exported), and counts each
    /// server's traffic. One replica: one pass in seq order. Several: each chain is verified in
    /// seq order, then the records are exported in time order across replicas. Records are
    /// parsed in place (borrowed strings): nothing is allocated per record on the way to a file.
    pub fn scan_calls(&self, p: &Period, range: &SeqRange, pass: &mut Pass) -> Result<Scan> {
        let mut scan = Scan::default();
        let single = range.replicas.len() == 1;
        for (replica, span) in &range.replicas {
            let chain = self.check_chain(p, replica, span, if single { Some(&mut *pass) } else { None }, &mut scan)?;
            if single {
                scan.chain = chain;
            } else {
                scan.chain.checked += chain.checked;
                if scan.chain.broken.is_none()
                    && let Some((seq, why)) = &chain.broken
                {
                    scan.chain.broken = Some((*seq, format!("replica {replica}: {why}")));
                }
                scan.chain.linked = match (scan.chain.linked, chain.linked) {
                    (None, l) | (l, None) => l,
                    (Some(a), Some(b)) => Some(a && b),
                };
                scan.chain.replicas.push((replica.clone(), chain));
            }
        }
        if !single && range.count > 0 {
            rows::each(&self.conn(), Range::Period { since: &p.since, until: &p.until }, |r| {
                let record: Result<Rec, _> = serde_json::from_str(r.text.as_ref().map_or("", |t| t));
                self.emit(r, record, &mut scan, pass).map_err(|e| crate::record::store::sql::Error::Other(format!("{e:#}")))
            })?;
        }
        Ok(scan)
    }

    /// Verifies `replica`'s chain over its span (and, with `pass`, exports the period's records
    /// on the way, in seq order).
    fn check_chain(&self, p: &Period, replica: &str, span: &Span, mut pass: Option<&mut Pass>, scan: &mut Scan) -> Result<Chain> {
        let mut chain = Chain::default();
        let first = span.first;
        let before = self.hash_before(replica, first)?;
        chain.linked = before.as_ref().map(|_| true);
        let mut prev = before.unwrap_or_default();
        let mut check_link = chain.linked.is_some();
        let mut expect = first;
        rows::each(&self.conn(), Range::Seqs { replica, from: span.first, to: span.last, limit: None }, |r| {
            let seq = r.seq;
            let text = match &r.text {
                Ok(text) => Cow::Borrowed(*text),
                Err(why) => Cow::Owned(why.clone()),
            };
            let text = &*text;
            let record: Result<Rec, _> = serde_json::from_str(text);
            if chain.broken.is_none() {
                let why = if seq != expect {
                    Some(format!("record {expect} is missing (next is {seq})"))
                } else {
                    let parsed = record.as_ref().map(|r| (r.seq, &*r.prev_hash));
                    if seq == first && check_link && parsed.is_ok_and(|(s, p)| s == seq && p != prev) {
                        chain.linked = Some(false);
                    }
                    record_fault(seq, text, r.hash, parsed, check_link.then_some(prev.as_str()))
                };
                match why {
                    Some(why) => chain.broken = Some((if seq != expect { expect } else { seq }, why)),
                    None => chain.checked += 1,
                }
            }
            check_link = true;
            prev.clear();
            prev.push_str(r.hash);
            expect = seq + 1;
            if let Some(pass) = pass.as_deref_mut()
                && p.contains_ts(r.ts)
            {
                self.emit(r, record, scan, pass).map_err(|e| crate::record::store::sql::Error::Other(format!("{e:#}")))?;
            }
            Ok(())
        })?;
        Ok(chain)
    }

    /// One record of the period: counted, and written to the pass's sinks.
    fn emit(&self, stored: &Stored, record: Result<Rec, serde_json::Error>, scan: &mut Scan, pass: &mut Pass) -> Result<()> {
        let hash = stored.hash;
        // Privileged by the category column (what the counts use; a record whose text says
        // otherwise fails the chain check anyway).
        let privileged = stored.category.is_some_and(|c| PRIVILEGED.contains(&c));
        scan.calls += 1;
        let r = match record {
            Ok(r) => r,
            Err(e) => return self.unreadable(stored, &e, privileged, scan, pass),
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
            return Ok(());
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
        Ok(())
    }

/// A record that does not parse (tampered): exported with what the table's columns say, so
    /// the population stays complete; the chain already names it.
    fn unreadable(&self, stored: &Stored, e: &serde_json::Error, privileged: bool, scan: &mut Scan, pass: &mut Pass) -> Result<()> {
        let (replica, seq, ts, hash) = (stored.replica, stored.seq, stored.ts, stored.hash);
        let [identity, server, tool, verdict, outcome] = stored.call.map(str::to_string);
        let category = stored.category;
        let t = scan.traffic.entry(server.clone()).or_default();
        t.records += 1;
        let mut cells = vec![Value::Null; 19];
        cells[0] = json!(seq);
        cells[1] = json!(ts);
        cells[2] = json!(replica);
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
    fn hash_before(&self, replica: &str, seq: u64) -> Result<Option<String>> {
        if seq <= 1 {
            return Ok(Some(GENESIS.to_string()));
        }
        let h = rows::hash_of(&self.conn(), replica, seq - 1)?;
        if h.is_some() {
            return Ok(h);
        }
        Ok(crate::record::audit::log::anchor(&self.conn(), replica)?.filter(|(s, _)| *s == seq - 1).map(|(_, h)| h))
    }

    pub fn count_events(&self, p: &Period) -> Result<u64> {
        let n = self.conn().query_one("SELECT count(*) FROM events WHERE ts >= ?1 AND ts < ?2", params![&p.since, &p.until], |r| r.i64(0))?;
        Ok(n as u64)
    }

    /// Streams the period's monitoring events; returns how many.
    pub fn events(&self, p: &Period, sink: &mut dyn Sink) -> Result<u64> {
        let mut n = 0;
        self.conn().each("SELECT id, ts, kind, detail FROM events WHERE ts >= ?1 AND ts < ?2 ORDER BY id", params![&p.since, &p.until], |row| {
            let detail_text = row.string(3)?;
            let detail: Value = serde_json::from_str(&detail_text).unwrap_or(Value::String(detail_text));
            let field = |k: &str| detail.get(k).cloned().unwrap_or(Value::Null);
            sink.row(vec![
                json!(row.i64(0)?),
                json!(row.str(1)?),
                json!(row.str(2)?),
                field("identity"),
                field("server"),
                field("tool"),
                field("rule"),
                detail.clone(),
            ])
            .map_err(|e| crate::record::store::sql::Error::Other(format!("{e:#}")))?;
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// Change records recorded in the period (by `recorded_at`), in the order recorded.
    /// Every change record the daemon wrote (one per commit), in the order it wrote them.
    pub fn change_records(&self) -> Result<Vec<DaemonChange>> {
        let mut applications: std::collections::HashMap<String, Vec<(String, String)>> = std::collections::HashMap::new();
        self.conn().each("SELECT commit_id, replica, applied_at FROM change_applications ORDER BY applied_at, replica", &[], |r| {
            applications.entry(r.string(0)?).or_default().push((r.string(1)?, r.string(2)?));
            Ok(())
        })?;
        let mut out = self.conn().query(
            "SELECT commit_id, status, author, author_time, committer, commit_time, pull_request, message, parents, files,
                    signed, access_diff, errors, applied_at, recorded_at
             FROM changes ORDER BY id",
            &[],
            |r| {
                let parse = |i: usize| -> crate::record::store::sql::Result<Value> {
                    let t = r.string(i)?;
                    Ok(serde_json::from_str(&t).unwrap_or(Value::String(t)))
                };
                Ok(DaemonChange {
                    commit: r.string(0)?,
                    status: r.string(1)?,
                    author: r.string(2)?,
                    author_time: r.string(3)?,
                    committer: r.string(4)?,
                    commit_time: r.string(5)?,
                    pull_request: r.opt_i64(6)?,
                    message: r.string(7)?,
                    parents: parse(8)?,
                    files: parse(9)?,
                    signed: parse(10)?,
                    access_diff: parse(11)?,
                    errors: parse(12)?,
                    applied_at: r.opt_string(13)?,
                    recorded_at: r.string(14)?,
                    applications: Vec::new(),
                })
            },
        )?;
        for c in &mut out {
            c.applications = applications.remove(&c.commit).unwrap_or_default();
        }
        Ok(out)
    }

    /// History rewrites detected in the period.
    /// Server → the number of `tool_quarantined` events (definition changes, failed screening)
    /// in the period.
    pub fn definition_changes(&self, p: &Period) -> Result<BTreeMap<String, u64>> {
        let c = self.conn();
        let server = if c.is_pg() { "(detail::jsonb ->> 'server')" } else { "json_extract(detail, '$.server')" };
        let rows = c.query(
            &format!("SELECT {server}, count(*) FROM events WHERE kind = 'tool_quarantined' AND ts >= ?1 AND ts < ?2 GROUP BY 1"),
            params![&p.since, &p.until],
            |r| Ok((r.opt_string(0)?, r.i64(1)? as u64)),
        )?;
        Ok(rows.into_iter().filter_map(|(s, n)| Some((s?, n))).collect())
    }

    pub fn rewrites(&self, p: &Period) -> Result<Vec<Vec<Value>>> {
        let out = self.conn().query(
            "SELECT id, detected_at, old_tip, new_tip, vanished, accepted_at, accepted_by, reason
             FROM rewrites WHERE detected_at >= ?1 AND detected_at < ?2 ORDER BY id",
            params![&p.since, &p.until],
            |r| {
                let vanished = r.string(4)?;
                Ok(vec![
                    json!(r.i64(0)?),
                    json!(r.str(1)?),
                    json!(r.str(2)?),
                    json!(r.str(3)?),
                    serde_json::from_str(&vanished).unwrap_or(Value::String(vanished)),
                    json!(r.opt_str(5)?),
                    json!(r.opt_str(6)?),
                    json!(r.opt_str(7)?),
                ])
            },
        )?;
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
    /// `first_seq` and `last_seq` when one replica wrote the period's records (null otherwise),
    /// the count, and each replica's population and seq range.
    pub fn to_json(&self) -> Value {
        let single = (self.replicas.len() == 1).then(|| self.replicas.values().next()).flatten();
        let replicas: Vec<Value> = self
            .replicas
            .iter()
            .map(|(name, s)| json!({ "replica": name, "count": s.count, "first_seq": s.first, "last_seq": s.last }))
            .collect();
        json!({ "first_seq": single.map(|s| s.first), "last_seq": single.map(|s| s.last), "count": self.count, "replicas": replicas })
    }

    /// With the chain verification over the range.
    pub fn to_json_with(&self, chain: &Chain) -> Value {
        let mut v = self.to_json();
        v["chain"] = chain.to_json();
        if !chain.replicas.is_empty() {
            v["chain"]["replicas"] = chain.replicas.iter().map(|(name, c)| {
                let mut j = c.to_json();
                j["replica"] = json!(name);
                j
            }).collect();
        }
        v
    }
}

// === impl Chain ===

impl Chain {
    fn to_json(&self) -> Value {
        match &self.broken {
            None => json!({ "intact": true, "checked": self.checked, "linked_to_previous": self.linked }),
            Some((seq, why)) => {
                json!({ "intact": false, "checked": self.checked, "broken_at": seq, "why": why, "linked_to_previous": self.linked })
            }
        }
    }
}
