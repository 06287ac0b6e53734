//! The tool supply chain: what a tool definition is, how it is pinned and screened.
//!
//! - [`definition_hash`]: sha256 of the canonical JSON of the parts of a tool definition a model
//!   reads or a caller relies on (`name`, `title`, `description`, `inputSchema`,
//!   `outputSchema`, `annotations`), the value `servers/NAME.yaml` pins as `tools.T.sha256`.
//! - [`screen`]: hidden content in a definition's text (Unicode tag characters, bidi controls,
//!   zero-width characters) and instructions that mention another server's tools.
//! - [`check_name`]: tool names the gateway relays (`[A-Za-z0-9_.-]`, 1 to 128 characters).
//! - [`classify`]: a proposed category from the name, description and annotations.
//! - [`vet`]: all of the above against a server's pins, for one upstream tool list.
//!
//! Pure: no I/O. `gatehouse scan` (src/commands/scan.rs) and the proxy both use it, so that the hash
//! `scan` prints is the hash the gateway enforces.

mod canonical;
mod classify;
mod screen;
mod vet;

#[cfg(test)]
mod tests;

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use canonical::canonical_json;
pub use classify::{Classification, classify};
pub use screen::{Finding, FindingKind, ToolNames, screen, screen_fields, screen_offered};
pub use vet::{Quarantine, Vetted, Why, vet};

/// The fields of a tool definition that are hashed, in the order they are listed in docs.
pub const DEFINITION_FIELDS: [&str; 6] = ["name", "title", "description", "inputSchema", "outputSchema", "annotations"];

/// The fields of a resource, a resource template and a prompt that a model may read, screened
/// like a tool definition ([`screen::screen_fields`]).
pub const RESOURCE_FIELDS: [&str; 6] = ["name", "title", "description", "uri", "mimeType", "annotations"];
pub const TEMPLATE_FIELDS: [&str; 6] = ["name", "title", "description", "uriTemplate", "mimeType", "annotations"];
pub const PROMPT_FIELDS: [&str; 4] = ["name", "title", "description", "arguments"];

/// The longest tool name the gateway relays (MCP 2025-11-25: "SHOULD be between 1 and 128
/// characters").
pub const MAX_TOOL_NAME: usize = 128;

/// The definition of `tool` that is pinned: its [`DEFINITION_FIELDS`] (absent ones left out;
/// `_meta`, `icons`, `execution` and anything else are not part of it).
pub fn definition(tool: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for f in DEFINITION_FIELDS {
        if let Some(v) = tool.get(f) {
            out.insert(f.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// sha256 (lowercase hex) of the canonical JSON of [`definition`].
pub fn definition_hash(tool: &Value) -> String {
    let text = canonical_json(&definition(tool));
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `Ok` when `name` is a tool name the gateway relays; the reason otherwise.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the tool name is empty".into());
    }
    if name.chars().count() > MAX_TOOL_NAME {
        return Err(format!("the tool name is {} characters long (at most {MAX_TOOL_NAME})", name.chars().count()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("the tool name holds {} (only A-Z a-z 0-9 _ . - are allowed)", describe_char(c)));
    }
    Ok(())
}

/// `'x'` for a printable character, `U+XXXX` for anything else.
pub(crate) fn describe_char(c: char) -> String {
    if c.is_ascii_graphic() || c == ' ' {
        format!("{c:?}")
    } else {
        format!("U+{:04X}", c as u32)
    }
}

/// The top-level fields of the definitions that differ, each with its old and new value:
/// `{"description": {"old": …, "new": …}}`. `old = None` (definition unknown) lists every field
/// of `new` with `old: null`.
pub fn definition_diff(old: Option<&Value>, new: &Value) -> Value {
    let old = old.map(definition);
    let new = definition(new);
    let mut out = serde_json::Map::new();
    for f in DEFINITION_FIELDS {
        let o = old.as_ref().and_then(|o| o.get(f));
        let n = new.get(f);
        if o != n {
            out.insert(f.to_string(), serde_json::json!({ "old": o, "new": n }));
        }
    }
    Value::Object(out)
}
