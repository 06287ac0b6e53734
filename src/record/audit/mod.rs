//! The call log: one hash-chained record per decision and per outcome (A.8.15, A.8.16).
//!
//! A record holds key paths of the arguments, never their values. Its `hash` is
//! `sha256(prev_hash ‖ canonical JSON of the record without hash)`, where canonical JSON has
//! sorted keys and no insignificant whitespace; `seq` is gapless. The canonical text is not
//! stored (schema 5): a row holds the fields, and the text is rebuilt from them
//! ([`rows`]), so `verify` recomputes every hash from what was written and names the
//! first broken `seq` (a changed field rebuilds to other bytes). Rows written before keep the
//! exact text they were hashed as. A call leaves two records: the decision (written before anything reaches the upstream;
//! `outcome: "unknown"` when allowed, `"denied"` when not) and, for allowed calls, the outcome
//! (`ok`, `upstream_error`, `timeout`) with its latency.

pub mod bound;
pub mod log;
pub mod rows;
pub mod verify;

pub use bound::arg_keys;

use serde::Serialize;
use sha2::{Digest, Sha256};


/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One call record, as written and exported (DESIGN.md §4). `seq`, `prev_hash` and `hash` are
/// set by the writer.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct CallRecord {
    pub seq: u64,
    pub ts: String,
    pub replica: String,
    pub session: String,
    pub identity: String,
    pub grant: String,
    /// How the caller authenticated: `token` (a grant token) or the issuer URL of an SSO token.
    #[serde(default = "default_auth")]
    pub auth: String,
    /// What was asked: `tool` | `resource` | `prompt` | `server_request`.
    #[serde(default = "default_kind")]
    pub kind: String,
    pub server: String,
    pub tool: String,
    pub category: Option<String>,
    pub arg_keys: Vec<String>,
    pub verdict: String,
    pub rule: String,
    pub message: String,
    pub policy_commit: Option<String>,
    pub snapshot_digest: String,
    /// unknown (decision of an allowed call, or a call whose outcome was never written) | denied
    /// | ok | upstream_error | timeout
    pub outcome: String,
    pub latency_ms: Option<u64>,
    pub prev_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// `auth` of records written before the field existed: every caller had a grant token.
fn default_auth() -> String {
    "token".into()
}

/// `kind` of records written before the field existed: only tools were relayed.
fn default_kind() -> String {
    "tool".into()
}

// === impl CallRecord ===

impl CallRecord {
    /// The canonical JSON of the record without `hash` (what is hashed).
    pub fn canonical(&self) -> String {
        let mut out = Vec::with_capacity(640);
        self.canonical_to(&mut out);
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// Appends the canonical JSON of the record without `hash` to `out` (a buffer the caller
    /// may reuse): the same bytes as a `serde_json::Value` of the record, `hash` removed,
    /// printed compactly, which is what every stored record was hashed as. Serialized directly
    /// from a borrowed view whose fields are declared in sorted key order.
    pub fn canonical_to(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, &Canonical::from(self)).expect("a record serializes");
    }
}

/// A record without `hash`, borrowed, its fields in byte-wise sorted key order (the order of a
/// `serde_json::Map` without the `preserve_order` feature). Adding a field to [`CallRecord`]
/// means adding it here, in its sorted place: the unit test compares both serializations.
/// [`rows`] builds one from a row's values without copying them.
#[derive(Serialize)]
pub(crate) struct Canonical<'a> {
    pub arg_keys: &'a [String],
    pub auth: &'a str,
    pub category: Option<&'a str>,
    pub grant: &'a str,
    pub identity: &'a str,
    pub kind: &'a str,
    pub latency_ms: Option<u64>,
    pub message: &'a str,
    pub outcome: &'a str,
    pub policy_commit: Option<&'a str>,
    pub prev_hash: &'a str,
    pub replica: &'a str,
    pub rule: &'a str,
    pub seq: u64,
    pub server: &'a str,
    pub session: &'a str,
    pub snapshot_digest: &'a str,
    pub tool: &'a str,
    pub ts: &'a str,
    pub verdict: &'a str,
}

impl<'a> From<&'a CallRecord> for Canonical<'a> {
    fn from(r: &'a CallRecord) -> Canonical<'a> {
        // Destructured so that a field added to CallRecord fails to compile here.
        let CallRecord {
            seq,
            ts,
            replica,
            session,
            identity,
            grant,
            auth,
            kind,
            server,
            tool,
            category,
            arg_keys,
            verdict,
            rule,
            message,
            policy_commit,
            snapshot_digest,
            outcome,
            latency_ms,
            prev_hash,
            hash: _,
        } = r;
        Canonical {
            arg_keys,
            auth,
            category: category.as_deref(),
            grant,
            identity,
            kind,
            latency_ms: *latency_ms,
            message,
            outcome,
            policy_commit: policy_commit.as_deref(),
            prev_hash,
            replica,
            rule,
            seq: *seq,
            server,
            session,
            snapshot_digest,
            tool,
            ts,
            verdict,
        }
    }
}

/// `sha256(prev_hash ‖ canonical)`, hex.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn canonical_json_is_sorted_and_excludes_the_hash() {
        let r = CallRecord {
            seq: 1,
            ts: "t".into(),
            replica: "r".into(),
            session: "s".into(),
            identity: "i".into(),
            grant: "g".into(),
            auth: "token".into(),
            kind: "tool".into(),
            server: "sv".into(),
            tool: "t".into(),
            category: None,
            arg_keys: vec![],
            verdict: "allow".into(),
            rule: "x".into(),
            message: "m".into(),
            policy_commit: None,
            snapshot_digest: "d".into(),
            outcome: "unknown".into(),
            latency_ms: None,
            prev_hash: GENESIS.into(),
            hash: Some("h".into()),
        };
        let c = r.canonical();
        assert!(c.starts_with("{\"arg_keys\":[],\"auth\":\"token\",\"category\":null,"), "{c}");
        assert!(!c.contains("\"hash\""));
        assert_eq!(chain_hash(GENESIS, &c).len(), 64);
    }

    /// The canonical text as it was computed before `Canonical` (kept as the reference: every
    /// stored record was hashed over these bytes).
    fn canonical_via_value(r: &CallRecord) -> String {
        let mut v = serde_json::to_value(r).expect("a record serializes");
        if let Value::Object(m) = &mut v {
            m.remove("hash");
        }
        v.to_string()
    }

    fn sample(n: usize) -> CallRecord {
        let texts = [
            "plain",
            "",
            "quote \" and backslash \\ and slash /",
            "unicode: é ü 漢字 🦀 \u{2028}\u{2029} \u{7f} \u{80}",
            "controls: \0 \t \n \r \u{1} \u{1f}",
            "{\"looks\":\"like json\"}",
        ];
        let t = |i: usize| texts[(n + i) % texts.len()].to_string();
        let set = n.is_multiple_of(2);
        CallRecord {
            seq: [0, 1, 42, u64::MAX][n % 4],
            ts: format!("2026-11-0{}T12:00:00.123Z", n % 9 + 1),
            replica: t(1),
            session: t(2),
            identity: t(3),
            grant: t(4),
            auth: t(16),
            kind: t(17),
            server: t(5),
            tool: t(6),
            category: set.then(|| t(7)),
            arg_keys: match n % 3 {
                0 => vec![],
                1 => vec!["path".into()],
                _ => vec!["a".into(), "a.b".into(), "items[].id".into(), t(8), "ключ \"q\"".into()],
            },
            verdict: if set { "allow".into() } else { "deny".into() },
            rule: t(9),
            message: t(10),
            policy_commit: (n % 3 != 1).then(|| t(11)),
            snapshot_digest: t(12),
            outcome: t(13),
            latency_ms: [None, Some(0), Some(17), Some(u64::MAX)][n % 4],
            prev_hash: if n.is_multiple_of(5) { GENESIS.into() } else { t(14) },
            hash: (n % 4 < 2).then(|| t(15)),
        }
    }

    #[test]
    fn canonical_bytes_equal_the_value_based_serialization() {
        for n in 0..72 {
            let r = sample(n);
            let reference = canonical_via_value(&r);
            assert_eq!(r.canonical(), reference, "record {n}: {r:?}");
            // The reusable-buffer form appends the same bytes.
            let mut buf = b"prefix".to_vec();
            r.canonical_to(&mut buf);
            assert_eq!(&buf[6..], reference.as_bytes(), "record {n}");
            // And it is canonical: keys sorted, compact, every field but hash.
            let m: std::collections::BTreeMap<String, Value> = serde_json::from_str(&reference).unwrap();
            assert_eq!(m.len(), 20);
            assert!(!m.contains_key("hash"));
            assert_eq!(serde_json::to_string(&m).unwrap(), reference);
        }
        // Every optional field set, and every one unset.
        let mut all = sample(0);
        all.category = Some("read".into());
        all.policy_commit = Some("c".into());
        all.latency_ms = Some(5);
        all.hash = Some("h".into());
        assert_eq!(all.canonical(), canonical_via_value(&all));
        let mut none = all.clone();
        none.category = None;
        none.policy_commit = None;
        none.latency_ms = None;
        none.hash = None;
        none.arg_keys = vec![];
        assert_eq!(none.canonical(), canonical_via_value(&none));
        assert!(none.canonical().contains("\"arg_keys\":[],\"auth\":"));
    }
}
