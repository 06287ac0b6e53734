//! Canonical JSON in the manner of RFC 8785 (JCS): object keys sorted, no insignificant
//! whitespace, strings escaped minimally, numbers in their shortest round-trip form with
//! integral values written without a fraction.
//!
//! Two deliberate simplifications, documented in docs/supply.md: keys are sorted by their UTF-8
//! bytes (JCS sorts by UTF-16 code units; the two orders differ only between characters above
//! U+FFFF and U+E000–U+FFFF in keys), and a non-integral number is written as serde_json writes
//! it (shortest round-trip digits, which JCS also uses, but in exponent form only where
//! serde_json chooses it). Tool definitions are names, prose and JSON Schemas: neither case
//! occurs in any definition we have seen, and the hash only needs to be stable, not portable.
//!
//! The key order does not depend on serde_json's `preserve_order` feature: keys are sorted here.

use serde_json::Value;

/// The canonical text of `v`.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => number(n, out),
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                write(&m[k], out);
            }
            out.push('}');
        }
    }
}

fn number(n: &serde_json::Number, out: &mut String) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        // 1.0 and 1 are the same number: write integral values as integers (as JCS does).
        if f == 0.0 {
            out.push('0'); // -0 too
        } else if f.fract() == 0.0 && f.abs() < 1e21 {
            out.push_str(&format!("{f:.0}"));
        } else {
            out.push_str(&n.to_string());
        }
    }
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
