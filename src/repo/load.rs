//! Bytes → documents: parse one file of the repository into a JSON value, and deserialize parts
//! of it into the raw types, reporting every problem with its position.
//!
//! Positions come from a [`Locator`], built only when a diagnostic of the file needs one: a
//! valid file is parsed once, by serde. Duplicate mapping keys are noticed during that parse; a
//! file that has one is then walked by the locator, which reports each at its line and column.
//!
//! This is the only module that uses serde_yaml (archived upstream): replacing it is a one-file
//! change.

use std::cell::{Cell, OnceCell};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::locate::Locator;
use crate::diag::{Diagnostics, Pos};

/// One parsed file.
pub struct Doc<'t> {
    /// Path relative to the repository root.
    pub file: String,
    pub value: Value,
    /// The file's text, kept for the locator.
    text: &'t str,
    loc: OnceCell<Locator>,
}

// === impl Doc ===

impl<'t> Doc<'t> {
    /// Parses a `.yaml`, `.yml` or `.json` file. Returns None (with the error recorded) when the
    /// file is not UTF-8 or not well-formed.
    pub fn parse(file: &str, bytes: &'t [u8], diags: &mut Diagnostics) -> Option<Doc<'t>> {
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                diags.error(file, Pos::default(), format!("not UTF-8 text (invalid byte at offset {})", e.valid_up_to()));
                return None;
            }
        };
        let duplicate = Cell::new(false);
        let value = if file.ends_with(".json") {
            let mut de = serde_json::Deserializer::from_str(text);
            match ValueSeed(&duplicate).deserialize(&mut de).and_then(|v| de.end().map(|()| v)) {
                Ok(v) => v,
                Err(e) => {
                    let pos = Pos { line: e.line(), col: e.column() };
                    diags.error(file, pos, format!("invalid JSON: {}", strip_location(&e.to_string())));
                    return None;
                }
            }
        } else {
            match ValueSeed(&duplicate).deserialize(serde_yaml::Deserializer::from_str(text)) {
                Ok(v) => v,
                Err(e) => {
                    let pos = e.location().map(|l| Pos { line: l.line(), col: l.column() }).unwrap_or_default();
                    diags.error(file, pos, format!("invalid YAML: {}", strip_location(&e.to_string())));
                    return None;
                }
            }
        };
        let value = if value.is_null() { Value::Object(Default::default()) } else { value };
        let doc = Doc { file: file.to_string(), value, text, loc: OnceCell::new() };
        if duplicate.get() {
            for (ptr, pos) in &doc.loc().duplicates {
                let key = ptr.rsplit('/').next().unwrap_or_default();
                diags.error(file, *pos, format!("duplicate key {key:?}: each key may appear once in a mapping"));
            }
        }
        Some(doc)
    }

    /// The positions of this file's nodes (walked on first use).
    pub fn loc(&self) -> &Locator {
        self.loc.get_or_init(|| Locator::new(self.text))
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
                diags.error(&self.file, self.loc().at(&at), msg);
                None
            }
        }
    }

    pub fn error(&self, diags: &mut Diagnostics, ptr: &str, msg: impl Into<String>) {
        diags.error(&self.file, self.loc().at(ptr), msg);
    }

    /// An error about a value (points at the value rather than its key).
    pub fn value_error(&self, diags: &mut Diagnostics, ptr: &str, msg: impl Into<String>) {
        diags.error(&self.file, self.loc().value(ptr), msg);
    }

    pub fn warning(&self, diags: &mut Diagnostics, ptr: &str, msg: impl Into<String>) {
        diags.warning(&self.file, self.loc().at(ptr), msg);
    }

    /// A warning about the file as a whole, at 1:1: no position lookup, so a warning every file
    /// of a large valid repository may carry never builds a Locator.
    pub fn file_warning(&self, diags: &mut Diagnostics, msg: impl Into<String>) {
        diags.warning(&self.file, crate::diag::Pos { line: 1, col: 1 }, msg);
    }
}

/// Deserializes a [`Value`] exactly as `Value`'s own `Deserialize` does (same values, same
/// errors), and sets the flag when a mapping repeats a key (the last one wins, as there).
#[derive(Clone, Copy)]
struct ValueSeed<'f>(&'f Cell<bool>);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Number::deserialize(de::value::I128Deserializer::new(v)).map(Value::Number)
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Number::deserialize(de::value::U128Deserializer::new(v)).map(Value::Number)
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut vec = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            vec.push(v);
        }
        Ok(Value::Array(vec))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // As `Value` does: the first key through a classifier, the others as plain strings (the
        // two expect differently worded types, which shows in error messages).
        let Some(first) = map.next_key_seed(KeySeed)? else { return Ok(Value::Object(Map::new())) };
        let mut values = Map::new();
        values.insert(first, map.next_value_seed(self)?);
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            if values.insert(key, value).is_some() {
                self.0.set(true);
            }
        }
        Ok(Value::Object(values))
    }
}

/// The first key of a mapping, as `Value` reads it (a string, else "expected a string key").
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, s: &str) -> Result<String, E> {
        Ok(s.to_string())
    }

    fn visit_string<E>(self, s: String) -> Result<String, E> {
        Ok(s)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(file: &str, text: &str) -> (Option<Value>, bool, String) {
        let mut d = Diagnostics::default();
        let doc = Doc::parse(file, text.as_bytes(), &mut d);
        let walked = doc.as_ref().is_some_and(|doc| doc.loc.get().is_some());
        let out = d.to_string();
        (doc.map(|doc| doc.value), walked, out)
    }

    #[test]
    fn values_and_errors_are_those_of_value_deserialize() {
        let yaml = [
            "a: 1\nb: -2\nc: 1.5\nd: 18446744073709551615\ne: 340282366920938463463374607431768211455\nf: ~\ng: [x, {h: true}]\n'1': 2\n",
            "x: .nan\ny: !!str 3\nz: 0x1f\n",
            "? [a]\n: 1\n",
            "a: 1\n? [b]\n: 2\n",
            "a: [1\n",
            "--- 1\n--- 2\n",
        ];
        for text in yaml {
            let ours = ValueSeed(&Cell::new(false)).deserialize(serde_yaml::Deserializer::from_str(text));
            let theirs = serde_yaml::from_str::<Value>(text);
            match (ours, theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
                (a, b) => panic!("{text}: {a:?} vs {b:?}"),
            }
        }
        let json = ["{\"a\": [1, -2, 1.5e3, null, true, {}], \"b\": \"s\"}", "{\"a\": 1,}", "[1, 2] x"];
        for text in json {
            let mut de = serde_json::Deserializer::from_str(text);
            let ours = ValueSeed(&Cell::new(false)).deserialize(&mut de).and_then(|v| de.end().map(|()| v));
            let theirs = serde_json::from_str::<Value>(text);
            match (ours, theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
                (a, b) => panic!("{text}: {a:?} vs {b:?}"),
            }
        }
    }

    #[test]
    fn a_valid_file_is_not_walked() {
        let (value, walked, out) = parse("servers/a.yaml", "name: a\ntools: { q: {}, r: {} }\n");
        assert_eq!(value.unwrap()["tools"]["r"], serde_json::json!({}));
        assert!(!walked);
        assert_eq!(out, "");
    }

    #[test]
    fn duplicate_keys_are_reported_at_their_position() {
        let (value, walked, out) = parse("servers/a.yaml", "name: a\ntools:\n  q: {}\n  r: 1\n  q: { x: 1 }\n");
        assert!(walked);
        assert_eq!(value.unwrap()["tools"]["q"], serde_json::json!({ "x": 1 }));
        assert_eq!(out, "servers/a.yaml:5:3: error: duplicate key \"q\": each key may appear once in a mapping\n");
        let (_, walked, out) = parse("policies/p.json", "{ \"version\": \"1\",\n  \"tools\": { \"a\": {},\n    \"a\": {} } }");
        assert!(walked);
        assert_eq!(out, "policies/p.json:3:5: error: duplicate key \"a\": each key may appear once in a mapping\n");
    }
}
