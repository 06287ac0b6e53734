//! Reading the call log back: verify every replica's chain, export a period (all replicas, in
//! time order) with a manifest, tail.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::log::{anchor, replicas};
use super::GENESIS;
use super::rows::{self, Range};
use crate::record::store::sql::{Conn, params};

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record checked: (count, first seq, last seq).
    Intact { count: u64, first: u64, last: u64 },
    /// The first record that does not verify, and why.
    Broken { seq: u64, why: String },
}

/// Every replica's chain, checked: one combined verdict (the first replica's break, or the sum
/// of the records and the widest seq range). [`verify_all`] names the replicas.
pub fn verify<'a>(c: impl Into<Conn<'a>>) -> Result<Verdict> {
    let mut all = verify_all(c)?.into_iter();
    let Some((_, mut acc)) = all.next() else { return Ok(Verdict::Intact { count: 0, first: 1, last: 0 }) };
    for (_, v) in all {
        acc = match (acc, v) {
            (Verdict::Intact { count, first, last }, Verdict::Intact { count: n, first: f, last: l }) => {
                Verdict::Intact { count: count + n, first: first.min(f), last: last.max(l) }
            }
            (b @ Verdict::Broken { .. }, _) | (_, b @ Verdict::Broken { .. }) => return Ok(b),
        };
    }
    Ok(acc)
}

/// Each replica's chain (sorted by name) and what [`verify_replica`] found in it.
pub fn verify_all<'a>(c: impl Into<Conn<'a>>) -> Result<Vec<(String, Verdict)>> {
    let c = c.into();
    replicas(&c)?.into_iter().map(|r| verify_replica(&c, &r).map(|v| (r, v))).collect()
}

/// Recomputes one replica's chain from its anchor (or genesis) to its last record.
///
/// A replica's rows written before schema 5 (`calls_v4`, with their canonical text) come before
/// its rows of `call_rows`. An old row's text is checked through a borrowed view ([`Check`]: the
/// same fields and types as [`CallRecord`](crate::record::audit::CallRecord), nothing copied); a
/// new row is rebuilt from its fields ([`rows::each`]) and its canonical text hashed.
pub fn verify_replica(c: &Conn, replica: &str) -> Result<Verdict> {
    let (expect, prev) = match anchor(c, replica)? {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let mut w = Walk { first: expect, expect, prev, count: 0, broken: None };
    rows::each(c, Range::Seqs { replica, from: 0, to: u64::MAX, limit: None }, |r| {
        if w.broken.is_some() {
            return Ok(());
        }
        let text = match &r.text {
            Ok(text) => *text,
            Err(why) => {
                w.broken = Some(Verdict::Broken { seq: r.seq, why: format!("not a call record: {why}") });
                return Ok(());
            }
        };
        match r.link {
            Some(link) => w.step(r.seq, text, r.hash, Ok(link)),
            None => {
                let record = serde_json::from_str::<Check>(text);
                w.step(r.seq, text, r.hash, record.as_ref().map(|r| (r.seq, &*r.prev_hash)));
            }
        }
        Ok(())
    })?;
    Ok(w.broken.unwrap_or(Verdict::Intact { count: w.count, first: w.first, last: w.expect - 1 }))
}

/// Where [`verify_replica`] is in a chain.
struct Walk {
    first: u64,
    expect: u64,
    prev: String,
    count: u64,
    broken: Option<Verdict>,
}

impl Walk {
    /// Checks record `seq` (its canonical `text`, stored `hash`, and its own seq and prev_hash).
    fn step(&mut self, seq: u64, text: &str, hash: &str, parsed: Result<(u64, &str), &serde_json::Error>) {
        if seq != self.expect {
            let expect = self.expect;
            self.broken = Some(Verdict::Broken { seq: expect, why: format!("record {expect} is missing (next is {seq})") });
            return;
        }
        if let Some(why) = record_fault(seq, text, hash, parsed, Some(&self.prev)) {
            self.broken = Some(Verdict::Broken { seq, why });
            return;
        }
        self.prev.clear();
        self.prev.push_str(hash);
        self.expect += 1;
        self.count += 1;
    }
}

/// Why stored record `seq` (its canonical `text` and stored `hash`) breaks the chain, if it does:
/// its text is not a call record (`parsed`: its seq and prev_hash, or the parse error), it names
/// another seq, its prev_hash is not `prev` (the previous record's hash; `None` when unknown,
/// and then the link is not checked), or its hash is not `sha256(prev_hash ‖ text)`. Shared by
/// [`verify`] and the evidence exports, which verify the range they stream in the same pass.
/// Computed into a stack buffer: no allocation unless the record is broken.
pub fn record_fault(
    seq: u64,
    text: &str,
    hash: &str,
    parsed: Result<(u64, &str), &serde_json::Error>,
    prev: Option<&str>,
) -> Option<String> {
    let (record_seq, prev_hash) = match parsed {
        Ok(p) => p,
        Err(e) => return Some(format!("not a call record: {e}")),
    };
    if record_seq != seq {
        return Some(format!("the record says seq {record_seq}"));
    }
    if prev.is_some_and(|p| p != prev_hash) {
        return Some("prev_hash does not match the previous record's hash".into());
    }
    let digest = Sha256::new().chain_update(prev_hash.as_bytes()).chain_update(text.as_bytes()).finalize();
    let mut computed = [0u8; 64];
    hex::encode_to_slice(digest, &mut computed).expect("32 bytes are 64 hex digits");
    (computed[..] != *hash.as_bytes()).then(|| "hash does not match the record".into())
}

/// What `verify` reads of a stored record: `seq` and `prev_hash`, with every other field of
/// [`CallRecord`](crate::record::audit::CallRecord) checked for presence and type but not copied. Fields, their
/// order, their types and their optionality mirror `CallRecord`, so a text is accepted, or refused with the same
/// message, exactly when it would deserialize as a `CallRecord`.
///
/// Named `CallRecord` in a module of its own because serde's messages name the type.
mod view {
    use std::borrow::Cow;

    use super::{Str, Strs};

    #[derive(serde::Deserialize)]
    #[allow(dead_code)] // the unit fields are there to be checked, not read
    pub(super) struct CallRecord<'a> {
        pub(super) seq: u64,
        ts: Str,
        replica: Str,
        session: Str,
        identity: Str,
        grant: Str,
        #[serde(default)]
        auth: Str,
        #[serde(default)]
        kind: Str,
        server: Str,
        tool: Str,
        category: Option<Str>,
        arg_keys: Strs,
        verdict: Str,
        rule: Str,
        message: Str,
        policy_commit: Option<Str>,
        snapshot_digest: Str,
        outcome: Str,
        latency_ms: Option<u64>,
        #[serde(borrow)]
        pub(super) prev_hash: Cow<'a, str>,
        hash: Option<Str>,
    }
}

use view::CallRecord as Check;

/// A JSON string, checked and dropped.
#[derive(Default)]
struct Str;

/// A JSON array of strings, checked and dropped.
struct Strs;

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Str, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Str;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Str, E> {
                Ok(Str)
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Strs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strs, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strs, A::Error> {
                while seq.next_element::<Str>()?.is_some() {}
                Ok(Strs)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Output formats of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

/// Columns of the CSV export, in order.
const COLUMNS: [&str; 22] = [
    "seq", "ts", "replica", "session", "identity", "grant", "auth", "kind", "server", "tool", "category", "arg_keys", "verdict", "rule",
    "message", "policy_commit", "snapshot_digest", "outcome", "latency_ms", "prev_hash", "hash", "",
];

/// Writes the records with `since <= ts < until` of every replica, in time order, to `out` and a
/// manifest beside it (`<out>.manifest.json`: count, each replica's population and seq range,
/// first/last seq when one replica wrote them all, period, sha256 of the file). Returns the
/// manifest.
pub fn export<'a>(c: impl Into<Conn<'a>>, since: &str, until: &str, format: Format, out: &Path) -> Result<Value> {
    let c = c.into();
    let to_stdout = out == Path::new("-");
    let inner: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?)
    };
    let mut file = std::io::BufWriter::new(Hashing::new(inner));
    let columns = &COLUMNS[..COLUMNS.len() - 1];
    if format == Format::Csv {
        writeln!(file, "{}", columns.join(","))?;
    }
    let mut count = 0u64;
    let mut ranges: std::collections::BTreeMap<String, (u64, u64, u64)> = std::collections::BTreeMap::new();
    rows::each(&c, Range::Period { since, until }, |r| {
        let mut v: Value = serde_json::from_str(text(r)?)?;
        v["hash"] = Value::String(r.hash.to_string());
        match format {
            Format::Jsonl => writeln!(file, "{v}")?,
            Format::Csv => {
                let cells: Vec<String> = columns.iter().map(|k| csv_cell(&v[*k])).collect();
                writeln!(file, "{}", cells.join(","))?;
            }
        }
        count += 1;
        let range = ranges.entry(r.replica.to_string()).or_insert((0, r.seq, r.seq));
        range.0 += 1;
        range.1 = range.1.min(r.seq);
        range.2 = range.2.max(r.seq);
        Ok(())
    })?;
    let single = (ranges.len() == 1).then(|| ranges.values().next().copied()).flatten();
    let (first, last) = match single {
        Some((_, f, l)) => (Some(f), Some(l)),
        None => (None, None),
    };
    let replicas: Vec<Value> =
        ranges.iter().map(|(name, (n, f, l))| json!({ "replica": name, "count": n, "first_seq": f, "last_seq": l })).collect();
    let mut hashing = file.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", out.display()))?;
    hashing.flush()?;
    let manifest = json!({
        "file": if to_stdout { Some("-") } else { out.file_name().and_then(|n| n.to_str()) },
        "format": match format { Format::Jsonl => "jsonl", Format::Csv => "csv" },
        "since": since,
        "until": until,
        "count": count,
        "first_seq": first,
        "last_seq": last,
        "replicas": replicas,
        "bytes": hashing.bytes(),
        "sha256": hashing.sha256_hex(),
    });
    if !to_stdout {
        std::fs::write(manifest_path(out), serde_json::to_string_pretty(&manifest)? + "\n")?;
    }
    Ok(manifest)
}

/// A writer that hashes (sha256) and counts what goes through it.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Hashing<W> {
        Hashing { inner, hasher: Sha256::new(), bytes: 0 }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn sha256_hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub fn manifest_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".manifest.json");
    PathBuf::from(p)
}

fn csv_cell(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string())).collect::<Vec<_>>().join(";"),
        other => other.to_string(),
    };
    // Quote always; a leading = + - @ is neutralised so a spreadsheet never runs it.
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Where `audit tail` is in the call log: each replica's last seq printed.
pub type Cursor = std::collections::BTreeMap<String, u64>;

/// The last `n` records (one replica: in seq order; several: together, in time order), as JSON
/// lines with their hash, and the cursor after every replica's newest record.
pub fn last_records<'a>(c: impl Into<Conn<'a>>, n: u64) -> Result<(Vec<String>, Cursor)> {
    let c = c.into();
    let names = replicas(&c)?;
    let order = if names.len() <= 1 { "seq DESC" } else { "ts DESC, replica DESC, seq DESC" };
    // The keys of the last `n` from the tables under the `calls` view (through the view SQLite
    // would compute every row before sorting), then those rows through the view.
    // Times as milliseconds (`call_rows` stores them so; `calls_v4` as text).
    let mut keys = c.query(&format!("SELECT ts, replica, seq FROM call_rows ORDER BY {order} LIMIT ?1"), params![n as i64], |r| {
        Ok((r.i64(0)?, r.string(1)?, r.i64(2)?))
    })?;
    keys.extend(c.query(&format!("SELECT ts, replica, seq FROM calls_v4 ORDER BY {order} LIMIT ?1"), params![n as i64], |r| {
        Ok((crate::units::parse_rfc3339_ms(r.str(0)?).unwrap_or(0), r.string(1)?, r.i64(2)?))
    })?);
    if names.len() <= 1 {
        keys.sort_by_key(|k| std::cmp::Reverse(k.2));
    } else {
        keys.sort_by(|a, b| (&b.0, &b.1, b.2).cmp(&(&a.0, &a.1, a.2)));
    }
    keys.truncate(n as usize);
    let mut lines = Vec::with_capacity(keys.len());
    for (_, replica, seq) in keys.iter().rev() {
        let seq = *seq as u64;
        rows::each(&c, Range::Seqs { replica, from: seq, to: seq, limit: None }, |r| {
            lines.push(line(text(r)?, r.hash)?);
            Ok(())
        })?;
    }
    let mut cursor: Cursor = Cursor::new();
    for table in ["call_rows", "calls_v4"] {
        for (replica, seq) in c.query(&format!("SELECT replica, max(seq) FROM {table} GROUP BY replica"), &[], |r| Ok((r.string(0)?, r.i64(1)? as u64)))? {
            let e = cursor.entry(replica).or_insert(seq);
            *e = (*e).max(seq);
        }
    }
    Ok((lines, cursor))
}

/// Each replica's records after `after` (at most `limit` of each), merged in time order, as
/// (replica, seq, JSON line with its hash). Advance the cursor with what is returned; a
/// replica that returned `limit` records may have more.
pub fn since<'a>(c: impl Into<Conn<'a>>, after: &Cursor, limit: usize) -> Result<Vec<(String, u64, String)>> {
    let c = c.into();
    let mut out = Vec::new();
    for replica in replicas(&c)? {
        let from = after.get(&replica).copied().unwrap_or(0);
        rows::each(&c, Range::Seqs { replica: &replica, from: from + 1, to: u64::MAX, limit: Some(limit as u64) }, |r| {
            out.push((r.ts.to_string(), replica.clone(), r.seq, line(text(r)?, r.hash)?));
            Ok(())
        })?;
    }
    out.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    Ok(out.into_iter().map(|(_, r, seq, l)| (r, seq, l)).collect())
}

/// Every stored record: its canonical JSON (stored, or rebuilt from its row) and its hash, in
/// (replica, seq) order. What tests and tools read now that most rows hold no JSON text.
pub fn canonical_records<'a>(c: impl Into<Conn<'a>>) -> crate::record::store::sql::Result<Vec<(String, String)>> {
    let c = c.into();
    let mut out = Vec::new();
    rows::each(&c, Range::All, |r| {
        out.push((text(r)?.to_string(), r.hash.to_string()));
        Ok(())
    })?;
    Ok(out)
}

/// The canonical text of `r`; an error when its row cannot be rebuilt.
fn text<'r>(r: &rows::Stored<'r>) -> crate::record::store::sql::Result<&'r str> {
    match &r.text {
        Ok(text) => Ok(text),
        Err(why) => Err(crate::record::store::sql::Error::Other(format!("record {} of {}: {why}", r.seq, r.replica))),
    }
}

fn line(text: &str, hash: &str) -> crate::record::store::sql::Result<String> {
    let mut v: Value = serde_json::from_str(text)?;
    v["hash"] = Value::String(hash.to_string());
    Ok(v.to_string())
}

/// Checks an RFC 3339-ish bound given on the command line (`2026-11-01` or a full timestamp).
pub fn bound(s: &str) -> Result<String> {
    if crate::units::Date::parse(s).is_ok() {
        return Ok(format!("{s}T00:00:00.000Z"));
    }
    if s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z') && crate::units::Date::parse(&s[..10]).is_ok() {
        // Records carry milliseconds; compare like with like.
        return Ok(if s.contains('.') { s.to_string() } else { format!("{}.000Z", &s[..s.len() - 1]) });
    }
    bail!("invalid time {s:?}: expected YYYY-MM-DD or an RFC 3339 UTC time (2026-11-01T00:00:00Z)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::audit::CallRecord;

    /// `Check` accepts exactly what `CallRecord` accepts, and refuses with the same message.
    #[test]
    fn the_borrowed_check_reads_records_like_call_record() {
        let ok = r#"{"arg_keys":["a","b\"c"],"category":null,"grant":"g","identity":"i\u00e9","latency_ms":null,"message":"m","outcome":"ok","policy_commit":"c","prev_hash":"p","replica":"r","rule":"x","seq":7,"server":"s","session":"se","snapshot_digest":"d","tool":"t","ts":"ts","verdict":"allow"}"#;
        let texts = [
            ok.to_string(),
            ok.replace(r#""category":null,"#, ""),
            ok.replace(r#""latency_ms":null"#, r#""latency_ms":12"#),
            ok.replace(r#""prev_hash":"p""#, r#""prev_hash":"p\n""#),
            ok.replace(r#""verdict":"allow""#, r#""verdict":"allow","hash":"h","extra":[1,{"x":2}]"#),
            ok.replace(r#""tool":"t","#, ""),
            ok.replace(r#""seq":7"#, r#""seq":-7"#),
            ok.replace(r#""seq":7"#, r#""seq":"7""#),
            ok.replace(r#""ts":"ts""#, r#""ts":1"#),
            ok.replace(r#""arg_keys":["a","b\"c"]"#, r#""arg_keys":["a",2]"#),
            ok.replace(r#""arg_keys":["a","b\"c"]"#, r#""arg_keys":"a""#),
            ok.replace(r#""category":null"#, r#""category":true"#),
            ok.replace(r#""latency_ms":null"#, r#""latency_ms":1.5"#),
            ok.replace(r#""hash""#, r#""x""#).replace(r#""verdict":"allow""#, r#""verdict":"allow","hash":3"#),
            ok.replace(r#""rule":"x","#, r#""rule":"x","rule":"y","#),
            ok[..ok.len() - 1].to_string(),
            "[]".to_string(),
            "not json".to_string(),
        ];
        for text in &texts {
            let full = serde_json::from_str::<CallRecord>(text);
            let check = serde_json::from_str::<Check>(text);
            match (&full, &check) {
                (Ok(r), Ok(c)) => assert_eq!((r.seq, r.prev_hash.as_str()), (c.seq, &*c.prev_hash), "{text}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
                _ => panic!("{text}: CallRecord {:?}, Check {:?}", full.as_ref().err(), check.as_ref().err()),
            }
        }
    }
}
