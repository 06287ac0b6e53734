//! Bounds on what a client can make the call log hold.
//!
//! Names and argument key paths come from the client. A name that can never be valid (longer
//! than any valid name, or with characters no valid name has) is kept as a short prefix plus
//! the sha256 of the whole, so that a record stays small and an auditor can still match it
//! against the request; argument key paths are capped in number and length the same way.
//! A resource URI is kept as its scheme and host and its sha256 ([`resource`]): it may hold
//! personal data.
//! Together with the fixed-size fields this bounds a record at [`MAX_RECORD_BYTES`] plus the
//! lengths of the repository's own text in it (identity, grant file, rule id, message).

use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Characters kept of a name or key path that is not kept whole.
const PREFIX_CHARS: usize = 32;
/// Longest argument key path kept whole, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Most argument key paths kept in a record (the rest are counted in a last entry).
pub const MAX_KEYS: usize = 64;
/// The largest record any request can produce, not counting the repository's own text
/// (identity, grant file, rule id, message) and the replica's name. Tested in
/// `tests/it/hardening.rs`.
pub const MAX_RECORD_BYTES: usize = 12 * 1024;

/// `raw` itself when `whole` (it passed the name rules), else a bounded form: the first
/// characters (anything outside `A-Z a-z 0-9 _ . - /` shown as `?`), `…`, and `sha256:` with
/// the hex digest of all of `raw`, plus its length.
pub fn name(raw: &str, whole: bool) -> String {
    if whole {
        return raw.to_string();
    }
    shortened(raw)
}

fn shortened(raw: &str) -> String {
    let prefix: String = raw
        .chars()
        .take(PREFIX_CHARS)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | '[' | ']') { c } else { '?' })
        .collect();
    format!("{prefix}…({} bytes, sha256:{})", raw.len(), hex::encode(Sha256::digest(raw.as_bytes())))
}

/// The sorted key paths of an argument object: `{"a": {"b": 1}, "c": [ {"d": 2} ]}` →
/// `["a", "a.b", "c", "c[].d"]`. Values never leave this function. A path longer than
/// [`MAX_KEY_BYTES`] is kept in its bounded form; past [`MAX_KEYS`] distinct paths, the first
/// [`MAX_KEYS`] in sorted order are kept and the rest counted in one last entry `…(N more)`
/// (memory stays bounded by the kept paths plus one small hash per distinct path).
pub fn arg_keys(args: &Value) -> Vec<String> {
    /// The smallest [`MAX_KEYS`] paths seen, and a hash of every distinct path (to count them
    /// without keeping them).
    struct Keys {
        kept: BTreeSet<String>,
        seen: HashSet<u64>,
    }
    impl Keys {
        fn add(&mut self, p: String) {
            let mut h = std::hash::DefaultHasher::new();
            p.hash(&mut h);
            self.seen.insert(h.finish());
            if self.kept.len() < MAX_KEYS || self.kept.last().is_some_and(|last| &p < last) {
                self.kept.insert(p);
                if self.kept.len() > MAX_KEYS {
                    self.kept.pop_last();
                }
            }
        }
    }
    fn walk(v: &Value, prefix: &str, out: &mut Keys) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    // Past the length bound a path (and every path below it) is only ever kept
                    // in its bounded form: stop growing it.
                    if p.len() > MAX_KEY_BYTES {
                        out.add(shortened(&p));
                        continue;
                    }
                    walk(child, &p, out);
                    out.add(p);
                }
            }
            Value::Array(items) => {
                let p = format!("{prefix}[]");
                for item in items {
                    walk(item, &p, out);
                }
            }
            _ => {}
        }
    }
    let mut keys = Keys { kept: BTreeSet::new(), seen: HashSet::new() };
    walk(args, "", &mut keys);
    let more = keys.seen.len().saturating_sub(keys.kept.len());
    let mut out: Vec<String> = keys.kept.into_iter().collect();
    if more > 0 {
        out.push(format!("…({more} more)"));
    }
    out
}

/// The record's reference to a resource URI, which may hold personal data (a user name in a
/// path, a token in a query): the scheme and host only, then the sha256 of the whole URI, e.g.
/// `demo://resource sha256:9f86…`. Userinfo, port, path, query and fragment never appear; a
/// scheme or host outside the plain characters (or longer than 64) is `?`. An auditor matches a
/// record to a URI by hashing the URI.
pub fn resource(uri: &str) -> String {
    let hash = hex::encode(Sha256::digest(uri.as_bytes()));
    let plain = |s: &str, extra: &[u8]| s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    let Some((scheme, rest)) = uri.split_once(':').filter(|(s, _)| !s.is_empty() && plain(s, b"+.-")) else {
        return format!("? sha256:{hash}");
    };
    let origin = match rest.strip_prefix("//") {
        Some(after) => {
            let authority = after.split(['/', '?', '#']).next().unwrap_or("");
            // No userinfo (`user:password@`), no port.
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = if host_port.starts_with('[') { host_port.split_inclusive(']').next().unwrap_or("") } else { host_port.split(':').next().unwrap_or("") };
            let host = if plain(host, b".-[]:") { host } else { "?" };
            format!("{scheme}://{host}")
        }
        None => format!("{scheme}:"),
    };
    format!("{origin} sha256:{hash}")
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
    fn a_name_that_cannot_be_valid_keeps_a_prefix_and_the_hash_of_the_whole() {
        assert_eq!(name("read_file", true), "read_file");
        let huge = "x".repeat(4 << 20);
        let b = name(&huge, false);
        assert!(b.len() < 160, "{}", b.len());
        assert!(b.starts_with(&"x".repeat(PREFIX_CHARS)));
        assert!(b.contains(&hex::encode(Sha256::digest(huge.as_bytes()))));
        assert!(b.contains("(4194304 bytes"));
        let odd = name("tool\u{0}\n\"name\u{202e}", false);
        assert!(odd.starts_with("tool???name?…"), "{odd}");
    }

    #[test]
    fn a_resource_is_its_scheme_and_host_and_the_hash_of_the_whole() {
        let h = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
        let uri = "https://alice:hunter2@files.example.com:8443/users/alice/medical.pdf?token=abc#p2";
        let r = resource(uri);
        assert_eq!(r, format!("https://files.example.com sha256:{}", h(uri)));
        assert!(!r.contains("alice") && !r.contains("hunter2") && !r.contains("8443") && !r.contains("token"));
        assert_eq!(resource("demo://resource/static/document/1"), format!("demo://resource sha256:{}", h("demo://resource/static/document/1")));
        assert_eq!(resource("file:///home/bob/notes.txt"), format!("file:// sha256:{}", h("file:///home/bob/notes.txt")));
        assert_eq!(resource("mailto:bob@example.com"), format!("mailto: sha256:{}", h("mailto:bob@example.com")));
        assert_eq!(resource("x://[::1]:80/a"), format!("x://[::1] sha256:{}", h("x://[::1]:80/a")));
        assert!(resource("no scheme at all").starts_with("? sha256:"));
        assert!(resource("x://h\u{202e}ost/").starts_with("x://? sha256:"));
        let huge = format!("x://{}/", "h".repeat(1 << 20));
        assert!(resource(&huge).len() < 120);
    }

    #[test]
    fn argument_keys_are_capped_in_length_and_number() {
        let long = "k".repeat(1 << 20);
        let keys = arg_keys(&json!({ long.clone(): { "inner": 1 }, "ok": 1 }));
        assert_eq!(keys.len(), 2, "nothing below a shortened path: {keys:?}");
        assert!(keys.iter().all(|k| k.len() < 200), "{keys:?}");
        assert!(keys.iter().any(|k| k == "ok"));

        let many: serde_json::Map<String, Value> = (0..100_000).map(|i| (format!("k{i:06}"), json!(1))).collect();
        let keys = arg_keys(&Value::Object(many));
        assert_eq!(keys.len(), MAX_KEYS + 1);
        assert_eq!(keys[0], "k000000");
        assert_eq!(keys[MAX_KEYS], format!("…({} more)", 100_000 - MAX_KEYS));

        let deep = (0..200).fold(json!(1), |v, i| json!({ format!("level{i:03}"): v }));
        let keys = arg_keys(&deep);
        assert!(keys.iter().all(|k| k.len() < 200), "{keys:?}");
    }
}
