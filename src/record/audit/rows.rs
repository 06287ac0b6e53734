//! Reading stored call records back, from the tables themselves (never through the `calls`
//! view, whose per-field lookups SQLite computes for every row before it sorts or filters):
//! `calls_v4` (rows written before schema 5, with the canonical JSON they were hashed as) and
//! `call_rows` (the record's fields, each text the id of its value in `vals`, the time in
//! milliseconds). Each value is looked up once per read ([`Vals`]) and a row's canonical JSON is
//! rebuilt into a buffer the read reuses: every reader of many records (verify, export, tail,
//! evidence, `plan --usage`) goes through [`each`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};

use super::Canonical;
use super::log::unescape;
use crate::record::store::sql::{self, Conn, P, params};

/// Which records [`each`] reads, and in what order.
#[derive(Debug, Clone, Copy)]
pub enum Range<'a> {
    /// `since <= ts < until` (RFC 3339 UTC), every replica, in time order (time, replica, seq).
    Period { since: &'a str, until: &'a str },
    /// One replica's records `from..=to`, in seq order, at most `limit`.
    Seqs { replica: &'a str, from: u64, to: u64, limit: Option<u64> },
    /// Every record, in (replica, seq) order.
    All,
}

/// One stored record, borrowed for the duration of [`each`]'s callback.
pub struct Stored<'r> {
    pub replica: &'r str,
    pub seq: u64,
    /// The record's ts, as written.
    pub ts: &'r str,
    /// The `category` column (what counts of privileged records use).
    pub category: Option<&'r str>,
    /// The canonical JSON the record was hashed as (stored, or rebuilt from the row); Err when a
    /// row cannot be rebuilt (a value missing from `vals`, a malformed one), with why.
    pub text: Result<&'r str, String>,
    /// The stored hash, hex.
    pub hash: &'r str,
    /// The record's own seq and prev_hash when it was rebuilt from its fields (None: parse
    /// `text`).
    pub link: Option<(u64, &'r str)>,
    /// What the row says of the call whatever its text: identity, server, tool, verdict and
    /// outcome (empty when a value cannot be read).
    pub call: [&'r str; 5],
}

/// The columns [`each`] reads, the same from both tables (typed NULLs where a table has no such
/// column; PostgreSQL wants the types):
///
/// | at | `calls_v4` | `call_rows` |
/// |---|---|---|
/// | 0, 1 | replica, seq | replica, seq |
/// | 2, 3, 4 | ts, record, hash (hex) | |
/// | 5, 6 | | hash, prev_hash (bytes) |
/// | 7 | category | |
/// | 8..23 | | the ids of [`IDS`] |
/// | 23 | | latency_ms |
/// | 24..29 | identity, server, tool, verdict, outcome | |
/// | 29, 30 | | ts (ms), ts_text (id) |
/// | 31 | the order key `k`: the time in ms | |
const V4_COLUMNS: &str = "replica, seq, ts, record, hash, CAST(NULL AS BYTEA), CAST(NULL AS BYTEA), category, \
     CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
     CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
     CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
     CAST(NULL AS BIGINT), identity, server, tool, verdict, outcome, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT)";
const ROW_COLUMNS: &str = "replica, seq, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), hash, prev_hash, \
     CAST(NULL AS TEXT), session, identity, grant_name, auth, kind, server, tool, category, arg_keys, verdict, rule, message, \
     policy_commit, snapshot_digest, outcome, latency_ms, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), \
     CAST(NULL AS TEXT), CAST(NULL AS TEXT), ts, ts_text, ts";

/// The text fields of a `call_rows` row, in the order selected (from column 8): session,
/// identity, grant, auth, kind, server, tool, category, arg_keys, verdict, rule, message,
/// policy_commit, snapshot_digest, outcome.
const IDS: usize = 15;

/// The SQL of `range` over both tables, and its parameters.
fn select<'a>(c: &Conn, range: Range<'a>) -> sql::Result<(String, Vec<P<'a>>)> {
    let ms = |t: &str| crate::units::parse_rfc3339_ms(t).ok_or_else(|| sql::Error::Other(format!("invalid time {t:?}")));
    let (old, new, order, params, limit) = match range {
        Range::Period { since, until } => (
            "ts >= ?1 AND ts < ?2",
            "ts >= ?3 AND ts < ?4",
            "k, replica, seq",
            vec![P::from(since), P::from(until), P::from(ms(since)?), P::from(ms(until)?)],
            None,
        ),
        Range::Seqs { replica, from, to, limit } => {
            let filter = "replica = ?1 AND seq >= ?2 AND seq <= ?3";
            let (from, to) = (from.min(i64::MAX as u64), to.min(i64::MAX as u64));
            (filter, filter, "seq", vec![P::from(replica), P::from(from), P::from(to)], limit)
        }
        Range::All => ("1 = 1", "1 = 1", "replica, seq", vec![], None),
    };
    let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    let key = c.text_ms("ts");
    let sql = format!(
        "SELECT {V4_COLUMNS}, {key} AS k FROM calls_v4 WHERE {old} UNION ALL SELECT {ROW_COLUMNS} FROM call_rows WHERE {new} ORDER BY {order}{limit}"
    );
    Ok((sql, params))
}

/// Calls `f` on each record of `range`, in its order.
pub fn each<F>(c: &Conn, range: Range<'_>, mut f: F) -> sql::Result<()>
where
    F: FnMut(&Stored) -> sql::Result<()>,
{
    let (sql, params) = select(c, range)?;
    let mut vals = Vals::default();
    let mut text = Vec::with_capacity(1024);
    c.each(&sql, &params, |row| {
        let replica = row.str(0)?;
        let seq = row.i64(1)? as u64;
        if let Some(record) = row.opt_str(3)? {
            let call = [row.str(24)?, row.str(25)?, row.str(26)?, row.str(27)?, row.str(28)?];
            let ts = row.str(2)?;
            let stored = Stored { replica, seq, ts, category: row.opt_str(7)?, text: Ok(record), hash: row.str(4)?, link: None, call };
            return f(&stored);
        }
        let mut hash = [0u8; 64];
        hex::encode_to_slice(row.bytes(5)?, &mut hash).map_err(|e| sql::Error::Other(format!("record {seq}: its hash: {e}")))?;
        let hash = std::str::from_utf8(&hash).expect("hex is ASCII");
        let mut prev = [0u8; 64];
        hex::encode_to_slice(row.bytes(6)?, &mut prev).map_err(|e| sql::Error::Other(format!("record {seq}: its prev_hash: {e}")))?;
        let prev = std::str::from_utf8(&prev).expect("hex is ASCII");
        // The ids of the fields (in [`IDS`] order), then ts_text's.
        let mut ids = [None; IDS + 1];
        for (i, id) in ids.iter_mut().enumerate() {
            *id = row.opt_i64(if i < IDS { 8 + i } else { 30 })?;
        }
        let loaded = vals.load(c, &ids);
        let v = |i: usize| ids[i].and_then(|id| vals.text.get(&id)).map(String::as_str);
        let s = |i: usize| v(i).unwrap_or_default();
        let call = [s(1), s(5), s(6), s(9), s(14)];
        let category = v(7);
        let formatted;
        let ts = match v(IDS) {
            Some(text) => text,
            None => {
                formatted = crate::units::rfc3339_ms(row.i64(29)?);
                &formatted
            }
        };
        let stored = match loaded {
            Ok(()) => {
                let keys = ids[8].and_then(|id| vals.keys.get(&id)).map(Vec::as_slice).unwrap_or_default();
                let record = Canonical {
                    arg_keys: keys,
                    auth: s(3),
                    category,
                    grant: s(2),
                    identity: s(1),
                    kind: s(4),
                    latency_ms: row.opt_i64(8 + IDS)?.map(|l| l as u64),
                    message: s(11),
                    outcome: s(14),
                    policy_commit: v(12),
                    prev_hash: prev,
                    replica,
                    rule: s(10),
                    seq,
                    server: s(5),
                    session: s(0),
                    snapshot_digest: s(13),
                    tool: s(6),
                    ts,
                    verdict: s(9),
                };
                text.clear();
                serde_json::to_writer(&mut text, &record)?;
                let text = std::str::from_utf8(&text).expect("serde_json writes UTF-8");
                Stored { replica, seq, ts, category, text: Ok(text), hash, link: Some((seq, prev)), call }
            }
            Err(e) => Stored { replica, seq, ts, category, text: Err(format!("unreadable row: {e}")), hash, link: None, call },
        };
        f(&stored)
    })
}

/// The hash (hex) of `replica`'s record `seq`, if it is stored.
pub fn hash_of(c: &Conn, replica: &str, seq: u64) -> sql::Result<Option<String>> {
    let new = c.query_opt("SELECT hash FROM call_rows WHERE replica = ?1 AND seq = ?2", params![replica, seq], |r| Ok(hex::encode(r.bytes(0)?)))?;
    match new {
        Some(h) => Ok(Some(h)),
        None => c.query_opt("SELECT hash FROM calls_v4 WHERE replica = ?1 AND seq = ?2", params![replica, seq], |r| r.string(0)),
    }
}

/// The texts of `vals` one read has looked up, by id (`arg_keys` values parsed once too).
#[derive(Default)]
struct Vals {
    text: Ids<String>,
    keys: Ids<Vec<String>>,
}

/// A map keyed by `vals` ids, hashed with [`IdHash`].
type Ids<V> = HashMap<i64, V, BuildHasherDefault<IdHash>>;

/// Hashes a `vals` id (an integer of a sequence, not chosen by anyone) with one multiplication:
/// a row looks up 15 of them, and SipHash was a sixth of an export's time.
#[derive(Default)]
struct IdHash(u64);

impl Hasher for IdHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i64(&mut self, n: i64) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Vals {
    /// Looks up the values of a row's ids not seen yet: its fields (in [`IDS`] order; category
    /// and policy_commit may be null), then ts_text (null for the gateway's times).
    fn load(&mut self, c: &Conn, ids: &[Option<i64>; IDS + 1]) -> sql::Result<()> {
        if self.text.len() >= VALS_MAX {
            self.text.clear();
            self.keys.clear();
        }
        for (at, id) in ids.iter().enumerate() {
            let Some(id) = *id else {
                if matches!(at, 7 | 12 | IDS) {
                    continue;
                }
                return Err(sql::Error::Other(format!("field {at} is null")));
            };
            let text = match self.text.entry(id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let stored = c.query_opt("SELECT v FROM vals WHERE id = ?1", params![id], |r| r.string(0))?;
                    e.insert(unescape(&stored.ok_or_else(|| sql::Error::Other(format!("value {id} is missing")))?)?)
                }
            };
            if at == 8
                && let Entry::Vacant(e) = self.keys.entry(id)
            {
                e.insert(serde_json::from_str(text)?);
            }
        }
        Ok(())
    }
}

/// How many values one read keeps before it starts over (a session id is often seen once).
const VALS_MAX: usize = 1 << 20;
