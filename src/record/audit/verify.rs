//! Reading the call log back: verify the chain, export a period with a manifest, tail.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rusqlite::Connection;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::log::anchor;
use super::GENESIS;

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record checked: (count, first seq, last seq).
    Intact { count: u64, first: u64, last: u64 },
    /// The first record that does not verify, and why.
    Broken { seq: u64, why: String },
}

/// Recomputes the chain from the anchor (or genesis) to the last record.
///
/// Rows are streamed and read in place: the record text and the stored hash are borrowed from
/// SQLite, the record is checked through a borrowed view ([`Check`]: the same fields and types as
/// [`CallRecord`](crate::record::audit::CallRecord), nothing copied), and the hash is computed into a stack buffer, so a row costs
/// no allocation beyond the odd string with escapes.
pub fn verify(c: &Connection) -> Result<Verdict> {
    let (mut expect_seq, mut prev) = match anchor(c)? {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let first = expect_seq;
    let mut stmt = c.prepare("SELECT seq, record, hash FROM calls ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut count = 0u64;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let seq = seq as u64;
        let text = row.get_ref(1)?.as_str()?;
        let hash = row.get_ref(2)?.as_str()?;
        if seq != expect_seq {
            return Ok(Verdict::Broken { seq: expect_seq, why: format!("record {expect_seq} is missing (next is {seq})") });
        }
        let record = serde_json::from_str::<Check>(text);
        let parsed = record.as_ref().map(|r| (r.seq, &*r.prev_hash));
        if let Some(why) = record_fault(seq, text, hash, parsed, Some(&prev)) {
            return Ok(Verdict::Broken { seq, why });
        }
        prev.clear();
        prev.push_str(hash);
        expect_seq += 1;
        count += 1;
    }
    Ok(Verdict::Intact { count, first, last: expect_seq - 1 })
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

/// Writes the records with `since <= ts < until` to `out` and a manifest beside it
/// (`<out>.manifest.json`: count, first/last seq, period, sha256 of the file). Returns the
/// manifest.
pub fn export(c: &Connection, since: &str, until: &str, format: Format, out: &Path) -> Result<Value> {
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
    let mut stmt = c.prepare("SELECT seq, record, hash FROM calls WHERE ts >= ?1 AND ts < ?2 ORDER BY seq")?;
    let mut rows = stmt.query([since, until])?;
    let (mut count, mut first, mut last) = (0u64, None, None);
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let text: String = row.get(1)?;
        let hash: String = row.get(2)?;
        let mut v: Value = serde_json::from_str(&text)?;
        v["hash"] = Value::String(hash);
        match format {
            Format::Jsonl => writeln!(file, "{v}")?,
            Format::Csv => {
                let cells: Vec<String> = columns.iter().map(|k| csv_cell(&v[*k])).collect();
                writeln!(file, "{}", cells.join(","))?;
            }
        }
        count += 1;
        first.get_or_insert(seq);
        last = Some(seq);
    }
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

/// The records after `after_seq` (at most `limit`), as JSON lines with their hash.
pub fn since_seq(c: &Connection, after_seq: u64, limit: usize) -> Result<Vec<(u64, String)>> {
    let mut stmt = c.prepare("SELECT seq, record, hash FROM calls WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map([after_seq as i64, limit as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, text, hash) = row?;
        let mut v: Value = serde_json::from_str(&text)?;
        v["hash"] = Value::String(hash);
        out.push((seq as u64, v.to_string()));
    }
    Ok(out)
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
