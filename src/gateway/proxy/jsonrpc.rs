//! JSON-RPC 2.0 messages as they arrive from MCP clients: strict parsing and response builders.
//!
//! Parsing refuses duplicate object keys anywhere in a message. serde_json keeps the last of
//! two equal keys while other parsers keep the first, so a checked `{"path":"/srv/ok",
//! "path":"/etc/passwd"}` could differ from what the upstream reads: a parser differential we
//! close by refusing the message.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

/// JSON-RPC error codes used by the gateway.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Implementation-defined server error (used for `server/discover` and upstream failures).
pub const SERVER_ERROR: i64 = -32000;
/// MCP: a `resources/read` of a resource the server does not have (and, from the gateway, one
/// the caller may not read: the two are answered alike).
pub const RESOURCE_NOT_FOUND: i64 = -32002;

/// One incoming message.
#[derive(Debug, Clone)]
pub enum Message {
    Request { id: Value, method: String, params: Value },
    Notification { method: String, params: Value },
    /// A response from the client to a request the gateway relayed to it (sampling,
    /// elicitation, roots): its id, and its `result` or its `error` object.
    Response { id: Value, outcome: Result<Value, Value> },
}

/// A JSON value parsed with duplicate keys refused.
struct Strict(Value);

// === impl Strict ===

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Strict(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if m.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            let Strict(v) = map.next_value()?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

/// Parses a request body: one message, or a batch (a non-empty array).
pub fn parse_body(body: &[u8]) -> Result<Value, String> {
    parse_body_limited(body, usize::MAX).map_err(|e| match e {
        BodyError::Invalid(m) => m,
        BodyError::BatchTooLong { .. } => unreachable!("no batch limit"),
    })
}

/// Why a body was refused by [`parse_body_limited`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    Invalid(String),
    /// A batch with more than `max` messages; refused before its messages are built.
    BatchTooLong { max: usize },
}

/// [`parse_body`], refusing a batch of more than `max_batch` messages as soon as its
/// `max_batch + 1`-th message starts (so a huge batch costs no memory).
pub fn parse_body_limited(body: &[u8], max_batch: usize) -> Result<Value, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    // serde_json's recursion limit (128) bounds nesting; trailing bytes are refused below.
    let parsed = serde::Deserializer::deserialize_any(&mut de, TopVisitor { max_batch });
    let v = match parsed {
        Ok(v) => v,
        Err(e) if e.to_string().starts_with(BATCH_TOO_LONG) => return Err(BodyError::BatchTooLong { max: max_batch }),
        Err(e) => return Err(BodyError::Invalid(format!("invalid JSON: {e}"))),
    };
    de.end().map_err(|e| BodyError::Invalid(format!("invalid JSON: {e}")))?;
    Ok(v)
}

/// The marker of the error [`TopVisitor`] stops a long batch with.
const BATCH_TOO_LONG: &str = "gatehouse: batch too long";

/// The top-level value: like [`StrictVisitor`], but an array (a batch) stops past `max_batch`.
struct TopVisitor {
    max_batch: usize,
}

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC message or batch")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        StrictVisitor.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        StrictVisitor.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        StrictVisitor.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        StrictVisitor.visit_f64(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        StrictVisitor.visit_str(v)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        StrictVisitor.visit_string(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        StrictVisitor.visit_unit()
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        StrictVisitor.visit_none()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(Strict(x)) = seq.next_element()? {
            if v.len() == self.max_batch {
                return Err(de::Error::custom(BATCH_TOO_LONG));
            }
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        StrictVisitor.visit_map(map)
    }
}

/// Classifies one message; Err is a JSON-RPC error response to send back.
pub fn classify(v: Value) -> Result<Message, Value> {
    let Value::Object(mut m) = v else {
        return Err(error(Value::Null, INVALID_REQUEST, "invalid request: a message must be a JSON object"));
    };
    let id = m.remove("id");
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(error(id.unwrap_or(Value::Null), INVALID_REQUEST, "invalid request: jsonrpc must be \"2.0\""));
    }
    if let Some(id) = &id
        && !(id.is_string() || id.is_i64() || id.is_u64()) {
            return Err(error(Value::Null, INVALID_REQUEST, "invalid request: id must be a string or an integer"));
        }
    // A message is a request/notification (method) or a response (result or error), never both:
    // a body carrying both would be read differently by different peers.
    let (has_result, has_error) = (m.contains_key("result"), m.contains_key("error"));
    if m.contains_key("method") && (has_result || has_error) {
        let what = if has_result { "result" } else { "error" };
        return Err(error(id.unwrap_or(Value::Null), INVALID_REQUEST, format!("invalid request: a message has either method or {what}, not both")));
    }
    if has_result && has_error {
        return Err(error(id.unwrap_or(Value::Null), INVALID_REQUEST, "invalid request: a response has either result or error, not both"));
    }
    match (m.remove("method"), id) {
        (Some(Value::String(method)), Some(id)) => {
            Ok(Message::Request { id, method, params: m.remove("params").unwrap_or(Value::Null) })
        }
        (Some(Value::String(method)), None) => Ok(Message::Notification { method, params: m.remove("params").unwrap_or(Value::Null) }),
        (Some(_), id) => Err(error(id.unwrap_or(Value::Null), INVALID_REQUEST, "invalid request: method must be a string")),
        (None, Some(id)) if has_result || has_error => {
            let outcome = match m.remove("result") {
                Some(result) => Ok(result),
                None => Err(m.remove("error").unwrap_or(Value::Null)),
            };
            Ok(Message::Response { id, outcome })
        }
        (None, id) => Err(error(id.unwrap_or(Value::Null), INVALID_REQUEST, "invalid request: no method")),
    }
}

pub fn result(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

pub fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message.into() } })
}

pub fn error_with_data(id: Value, code: i64, message: impl Into<String>, data: Option<Value>) -> Value {
    let mut e = error(id, code, message);
    if let Some(d) = data {
        e["error"]["data"] = d;
    }
    e
}

/// A tool result the model can read (`isError: true`).
pub fn tool_error(id: Value, text: String) -> Value {
    result(id, json!({ "content": [ { "type": "text", "text": text } ], "isError": true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_body(br#"{"a":1,"a":2}"#).unwrap_err().contains("duplicate key \"a\""));
        let nested = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"path":"/ok","path":"/etc/passwd"}}}"#;
        assert!(parse_body(nested).is_err());
        assert!(parse_body(br#"{"a":{"b":1},"c":{"b":2}}"#).is_ok());
        assert!(parse_body(b"{} {}").is_err(), "trailing data");
    }

    #[test]
    fn classification() {
        let req = parse_body(br#"{"jsonrpc":"2.0","id":"x","method":"ping"}"#).unwrap();
        assert!(matches!(classify(req), Ok(Message::Request { method, .. }) if method == "ping"));
        let note = parse_body(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(matches!(classify(note), Ok(Message::Notification { .. })));
        let bad_id = parse_body(br#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#).unwrap();
        assert!(classify(bad_id).is_err());
        let no_version = parse_body(br#"{"id":1,"method":"ping"}"#).unwrap();
        assert_eq!(classify(no_version).unwrap_err()["error"]["code"], INVALID_REQUEST);
    }

    #[test]
    fn a_long_batch_is_refused_before_its_messages_are_built() {
        let batch = |n: usize| format!("[{}]", vec![r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#; n].join(","));
        assert!(matches!(parse_body_limited(batch(3).as_bytes(), 3), Ok(Value::Array(v)) if v.len() == 3));
        assert_eq!(parse_body_limited(batch(4).as_bytes(), 3), Err(BodyError::BatchTooLong { max: 3 }));
        // Nested arrays are not batches; duplicate keys are still refused at the top.
        assert!(parse_body_limited(br#"{"a":[1,2,3,4,5]}"#, 3).is_ok());
        assert!(matches!(parse_body_limited(br#"{"a":1,"a":2}"#, 3), Err(BodyError::Invalid(_))));
        assert!(matches!(parse_body_limited(b"[1] x", 3), Err(BodyError::Invalid(_))));
    }

    #[test]
    fn a_message_is_a_request_or_a_response_never_both() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","error":{"code":1,"message":"x"}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","result":{}}"#,
        ] {
            let e = classify(parse_body(body.as_bytes()).unwrap()).unwrap_err();
            assert_eq!(e["error"]["code"], INVALID_REQUEST, "{body}");
            assert!(e["error"]["message"].as_str().unwrap().contains("not both"), "{e}");
        }
        let both = parse_body(br#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}"#).unwrap();
        assert!(classify(both).is_err());
        let response = parse_body(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
        assert!(matches!(classify(response), Ok(Message::Response { .. })));
    }
}
