//! The call log: one hash-chained record per decision and per outcome (A.8.15, A.8.16).
//!
//! A record holds key paths of the arguments, never their values. Its `hash` is
//! `sha256(prev_hash ‖ canonical JSON of the record without hash)`, where canonical JSON has
//! sorted keys and no insignificant whitespace; `seq` is gapless. The exact canonical text is
//! stored, so `verify` recomputes every hash from what was written and names the first broken
//! `seq`. A call leaves two records: the decision (written before anything reaches the upstream;
//! `outcome: "unknown"` when allowed, `"denied"` when not) and, for allowed calls, the outcome
//! (`ok`, `upstream_error`, `timeout`) with its latency.

pub mod log;
pub mod verify;

use serde::Serialize;
use serde_json::Value;
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

// === impl CallRecord ===

impl CallRecord {
    /// The canonical JSON of the record without `hash` (what is hashed).
    pub fn canonical(&self) -> String {
        let mut v = serde_json::to_value(self).expect("a record serializes");
        if let Value::Object(m) = &mut v {
            m.remove("hash");
        }
        // serde_json's map is ordered by key (no preserve_order feature): sorted, compact.
        v.to_string()
    }
}

/// `sha256(prev_hash ‖ canonical)`, hex.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// The sorted key paths of an argument object: `{"a": {"b": 1}, "c": [ {"d": 2} ]}` →
/// `["a", "a.b", "c", "c[].d"]`. Values never leave this function.
pub fn arg_keys(args: &Value) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    out.push(p.clone());
                    walk(child, &p, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(args, "", &mut out);
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arg_keys_are_paths_never_values() {
        let keys = arg_keys(&json!({ "path": "/etc/canary-secret", "opts": { "mode": 7 }, "items": [ { "id": "x" }, { "id": "y", "n": 1 } ] }));
        assert_eq!(keys, ["items", "items[].id", "items[].n", "opts", "opts.mode", "path"]);
        assert!(!format!("{keys:?}").contains("canary"));
    }

    #[test]
    fn canonical_json_is_sorted_and_excludes_the_hash() {
        let r = CallRecord {
            seq: 1,
            ts: "t".into(),
            replica: "r".into(),
            session: "s".into(),
            identity: "i".into(),
            grant: "g".into(),
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
        assert!(c.starts_with("{\"arg_keys\":[],\"category\":null,"), "{c}");
        assert!(!c.contains("\"hash\""));
        assert_eq!(chain_hash(GENESIS, &c).len(), 64);
    }
}
