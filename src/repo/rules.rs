//! Every rule of every policy document, as written, with its id and line: what `plan` compares
//! between two revisions ("which rules were added, removed or changed, with file:line").

use serde_json::Value;

use super::load::Doc;
use super::locate::escape;
use super::{Entry, Files};
use crate::diag::Diagnostics;

/// One rule as written.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleNode {
    /// The id the engine gives it (`policies/p.yaml#/tools/add/deny_if/0`, with its name in
    /// place of the index when it has one).
    pub id: String,
    pub file: String,
    pub line: usize,
    /// The rule's own text as a JSON value: equal values mean an unchanged rule.
    pub value: Value,
}

/// The rules of every policy file (files that do not parse are skipped: `check` reports them).
pub fn policy_rules(files: &Files) -> Vec<RuleNode> {
    let mut out = Vec::new();
    for (path, entry) in &files.entries {
        let is_policy = path.starts_with("policies/") && (path.ends_with(".yaml") || path.ends_with(".yml") || path.ends_with(".json"));
        let Entry::Blob(bytes) = entry else { continue };
        if !is_policy {
            continue;
        }
        let Some(doc) = Doc::parse(path, bytes, &mut Diagnostics::default()) else { continue };
        let mut push = |ptr: String, value: &Value| {
            out.push(RuleNode { id: format!("{path}#{ptr}"), file: path.clone(), line: doc.loc().at(&ptr).line, value: value.clone() });
        };
        for key in ["default", "hide"] {
            if let Some(v) = doc.value.get(key) {
                push(format!("/{key}"), v);
            }
        }
        let list = |v: &Value, ptr: &str, push: &mut dyn FnMut(String, &Value)| {
            for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                let id = item.get("name").and_then(Value::as_str).map(escape).unwrap_or_else(|| i.to_string());
                push(format!("{ptr}/{id}"), item);
            }
        };
        if let Some(limits) = doc.value.pointer("/all_tools/limits") {
            list(limits, "/all_tools/limits", &mut push);
        }
        for (tool, entry) in doc.value.get("tools").and_then(Value::as_object).into_iter().flatten() {
            let base = format!("/tools/{}", escape(tool));
            if entry.as_object().is_some_and(|m| m.is_empty()) {
                push(base.clone(), entry); // listed with no rules: allowed
            }
            for key in ["deny_if", "require", "limits", "rules"] {
                if let Some(v) = entry.get(key) {
                    list(v, &format!("{base}/{key}"), &mut push);
                }
            }
        }
    }
    out
}
