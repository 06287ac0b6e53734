//! One upstream tool list checked against a server's pins: which tools are quarantined, and why.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

use super::{Finding, ToolNames, check_name, definition_hash, screen_offered};
use crate::policy::snapshot::Server;

/// Why a tool is quarantined (the first that applies, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// The name is not one the gateway relays (characters, length).
    InvalidName,
    /// The upstream lists two tools with this name.
    DuplicateName,
    /// Hidden characters or a mention of another server's tool in the definition.
    HiddenContent,
    /// The definition's hash differs from the pinned `sha256`.
    Drift,
    /// The server has `pin: required` and this tool has no `sha256` pin.
    Unpinned,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::InvalidName => "invalid-name",
            Why::DuplicateName => "duplicate-name",
            Why::HiddenContent => "hidden-content",
            Why::Drift => "definition-changed",
            Why::Unpinned => "unpinned",
        }
    }
}

/// A quarantined tool: absent from every list, every call denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    pub tool: String,
    pub why: Why,
    /// The hash of the definition the upstream offers now.
    pub hash: String,
    /// The pinned hash, if any.
    pub pinned: Option<String>,
    pub findings: Vec<Finding>,
    /// For [`Why::InvalidName`]: what is wrong with it.
    pub name_error: Option<String>,
}

impl Quarantine {
    /// The denial message a caller reads.
    pub fn message(&self) -> String {
        match self.why {
            Why::InvalidName => format!("tool quarantined: {}", self.name_error.as_deref().unwrap_or("invalid name")),
            Why::DuplicateName => "tool quarantined: the upstream lists two tools with this name".into(),
            Why::HiddenContent => {
                let f: Vec<String> = self.findings.iter().map(|f| f.to_string()).collect();
                format!("tool quarantined: hidden content in its definition ({})", f.join("; "))
            }
            Why::Drift => format!(
                "tool quarantined: its definition changed (pinned sha256 {}, offered {}); a commit with the new pin lifts it",
                short(self.pinned.as_deref().unwrap_or("")),
                short(&self.hash)
            ),
            Why::Unpinned => "tool quarantined: the server requires pinned tools and this one has no sha256 pin".into(),
        }
    }

    /// The monitoring event's detail (the caller adds the definition diff).
    pub fn detail(&self) -> Value {
        json!({
            "tool": self.tool,
            "reason": self.why.as_str(),
            "pinned_sha256": self.pinned,
            "offered_sha256": self.hash,
            "findings": self.findings,
            "name_error": self.name_error,
        })
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// The verdict over one tool list.
#[derive(Debug, Default)]
pub struct Vetted {
    /// tool name → its quarantine; a tool absent here may be listed and called.
    quarantined: HashMap<String, Quarantine>,
    /// tool name → hash of the offered definition.
    hashes: HashMap<String, String>,
}

impl Vetted {
    pub fn quarantine(&self, tool: &str) -> Option<&Quarantine> {
        self.quarantined.get(tool)
    }

    pub fn quarantined(&self) -> impl Iterator<Item = &Quarantine> {
        self.quarantined.values()
    }

    pub fn is_clean(&self) -> bool {
        self.quarantined.is_empty()
    }

    /// The hash of the offered definition of `tool`.
    pub fn hash(&self, tool: &str) -> Option<&str> {
        self.hashes.get(tool).map(String::as_str)
    }
}

/// Checks `tools` (the upstream's full list) against `server`'s pins; `names` is every server's
/// declared tool names, for the cross-server rule.
pub fn vet(server: &Server, tools: &[Value], names: &ToolNames) -> Vetted {
    let mut out = Vetted::default();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tools {
        if let Some(n) = t.get("name").and_then(Value::as_str) {
            *count.entry(n).or_default() += 1;
        }
    }
    let offered: BTreeSet<&str> = count.keys().copied().collect();
    for t in tools {
        let Some(name) = t.get("name").and_then(Value::as_str) else { continue };
        let hash = definition_hash(t);
        out.hashes.insert(name.to_string(), hash.clone());
        let pinned = server.tools.get(name).and_then(|i| i.sha256.clone());
        let findings = screen_offered(t, &server.name, names, &offered);
        let name_error = check_name(name).err();
        let why = if name_error.is_some() {
            Some(Why::InvalidName)
        } else if count[name] > 1 {
            Some(Why::DuplicateName)
        } else if !findings.is_empty() {
            Some(Why::HiddenContent)
        } else if pinned.as_ref().is_some_and(|p| *p != hash) {
            Some(Why::Drift)
        } else if server.pin_required && pinned.is_none() {
            Some(Why::Unpinned)
        } else {
            None
        };
        if let Some(why) = why {
            out.quarantined.insert(name.to_string(), Quarantine { tool: name.to_string(), why, hash, pinned, findings, name_error });
        }
    }
    out
}
