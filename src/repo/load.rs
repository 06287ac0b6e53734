//! Bytes → documents: parse one file of the repository into a JSON value plus a [`Locator`],
//! and deserialize parts of it into the raw types, reporting every problem with its position.
//!
//! This is the only module that uses serde_yaml (archived upstream): replacing it is a one-file
//! change.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::locate::Locator;
use crate::diag::{Diagnostics, Pos};

/// One parsed file.
pub struct Doc {
    /// Path relative to the repository root.
    pub file: String,
    pub value: Value,
    pub loc: Locator,
}

// === impl Doc ===

impl Doc {
    /// Parses a `.yaml`, `.yml` or `.json` file. Returns None (with the error recorded) when the
    /// file is not UTF-8 or not well-formed.
    pub fn parse(file: &str, bytes: &[u8], diags: &mut Diagnostics) -> Option<Doc> {
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                diags.error(file, Pos::default(), format!("not UTF-8 text (invalid byte at offset {})", e.valid_up_to()));
                return None;
            }
        };
        let value = if file.ends_with(".json") {
            match serde_json::from_str::<Value>(text) {
                Ok(v) => v,
                Err(e) => {
                    let pos = Pos { line: e.line(), col: e.column() };
                    diags.error(file, pos, format!("invalid JSON: {}", strip_location(&e.to_string())));
                    return None;
                }
            }
        } else {
            match serde_yaml::from_str::<Value>(text) {
                Ok(v) => v,
                Err(e) => {
                    let pos = e.location().map(|l| Pos { line: l.line(), col: l.column() }).unwrap_or_default();
                    diags.error(file, pos, format!("invalid YAML: {}", strip_location(&e.to_string())));
                    return None;
                }
            }
        };
        let value = if value.is_null() { Value::Object(Default::default()) } else { value };
        let loc = Locator::new(text);
        for (ptr, pos) in &loc.duplicates {
            let key = ptr.rsplit('/').next().unwrap_or_default();
            diags.error(file, *pos, format!("duplicate key {key:?}: each key may appear once in a mapping"));
        }
        Some(Doc { file: file.to_string(), value, loc })
    }

    /// Deserializes `value` (found at pointer `ptr` of this document) into `T`, reporting a
    /// mismatch at the exact node that caused it.
    pub fn typed<T: DeserializeOwned>(&self, ptr: &str, value: &Value, diags: &mut Diagnostics) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut at = ptr.to_string();
                for seg in e.path().iter() {
                    use serde_path_to_error::Segment;
                    match seg {
                        Segment::Seq { index } => at.push_str(&format!("/{index}")),
                        Segment::Map { key } => at.push_str(&format!("/{}", super::locate::escape(key))),
                        Segment::Enum { .. } | Segment::Unknown => {}
                    }
                }
                let msg = e.into_inner().to_string();
                // serde names the unknown field in the message; point at the field itself.
                if let Some(field) = unknown_field(&msg) {
                    at.push_str(&format!("/{}", super::locate::escape(field)));
                }
                diags.error(&self.file, self.loc.at(&at), msg);
                None
            }
        }
    }

    pub fn error(&self, diags: &mut Diagnostics, ptr: &str, msg: impl Into<String>) {
        diags.error(&self.file, self.loc.at(ptr), msg);
    }

    /// An error about a value (points at the value rather than its key).
    pub fn value_error(&self, diags: &mut Diagnostics, ptr: &str, msg: impl Into<String>) {
        diags.error(&self.file, self.loc.value(ptr), msg);
    }

    pub fn warning(&self, diags: &mut Diagnostics, ptr: &str, msg: impl Into<String>) {
        diags.warning(&self.file, self.loc.at(ptr), msg);
    }
}

/// The field name in serde's "unknown field `x`, expected …" message.
fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// serde_yaml and serde_json append " at line L column C"; we print the position up front.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
