//! A proposed category for a tool, from its name, description and annotations.
//!
//! The rule is "the riskiest signal wins": `financial` > `execute` > `destructive` > `write` >
//! `read`. Signals are the words of the name (split at `_`, `-`, `.` and camelCase), a few
//! unambiguous words of the description ("overwrite", "permanently", "payment"…), and the MCP
//! annotations. Two refinements keep nouns from posing as actions: money words of the
//! description (nouns: "charges", "invoice") rank below the name's own destructive or execute
//! verb, and a name that starts with a read verb (`get`, `list`…) treats the write words after
//! it as its object (`get_commit`, `get-annotated-message`) and ignores money nouns in its
//! description (`list_charges`: "List charges…"), unless it joins verbs with `and`/`or`/`then`. Annotations are hints from the server, so they may raise the category
//! (`destructiveHint: true` makes a tool destructive) but never lower it on their own: a tool
//! is `read` only when its name says so (`get`, `list`, `read`, `search`…), and
//! `readOnlyHint: true` on a tool whose name says `delete` is ignored. A tool with no signal at
//! all is proposed as `write`, the cautious default. The result is a proposal for a human to
//! review in the pull request that pins it.

use serde_json::Value;

use crate::policy::snapshot::Category;

/// A proposed category and the signals that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub category: Category,
    pub reasons: Vec<String>,
}

const FINANCIAL: &[&str] = &[
    "pay", "payment", "payments", "payout", "charge", "refund", "transfer", "invoice", "purchase", "buy", "checkout",
    "billing", "subscription", "wire", "withdraw", "deposit", "price", "capture",
];
const EXECUTE: &[&str] = &["exec", "execute", "run", "shell", "command", "cmd", "eval", "script", "spawn", "bash", "terminal", "sh", "invoke", "evaluate"];
const DESTRUCTIVE: &[&str] = &[
    "delete", "remove", "rm", "drop", "destroy", "purge", "truncate", "erase", "wipe", "overwrite", "move", "mv", "rename",
    "edit", "replace", "kill", "terminate", "reset", "revoke", "archive", "uninstall", "force", "clear", "unlink",
];
const WRITE: &[&str] = &[
    "create", "write", "add", "update", "set", "put", "post", "insert", "upload", "send", "comment", "push", "commit",
    "merge", "patch", "modify", "save", "append", "new", "make", "mkdir", "fork", "star", "assign", "label", "publish",
    "approve", "close", "open", "start", "stop", "restart", "enable", "disable", "trigger", "schedule", "upsert", "store",
    "elicit", "sample", "notify", "message",
];
const READ: &[&str] = &[
    "get", "list", "read", "search", "find", "query", "fetch", "describe", "show", "view", "lookup", "count", "stat", "info",
    "tree", "head", "tail", "diff", "status", "check", "inspect", "browse", "explain", "convert", "calculate", "compute",
    "echo", "ping", "time", "now", "resolve", "download", "export", "select", "validate", "preview", "summarize", "print",
];
/// Description words strong enough to raise the category on their own.
const DESCRIPTION_FINANCIAL: &[&str] = &["payment", "payments", "refund", "payout", "invoice", "charge", "charges"];
const DESCRIPTION_EXECUTE: &[&str] = &["execute", "executes", "shell"];
const DESCRIPTION_DESTRUCTIVE: &[&str] = &["overwrite", "overwrites", "overwriting", "permanently", "irreversible", "irreversibly", "destroys"];

/// The words of a tool name: `read_file` → [read, file]; `getTinyImage` → [get, tiny, image].
fn name_words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn text_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// Proposes a category for the tool definition `tool`.
pub fn classify(tool: &Value) -> Classification {
    let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
    let words = name_words(name);
    let description = [tool.get("title"), tool.get("description")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    let desc = text_words(&description);
    let hint = |k: &str| tool.get("annotations").and_then(|a| a.get(k)).and_then(Value::as_bool);

    let in_name = |set: &[&str]| words.iter().find(|w| set.contains(&w.as_str())).cloned();
    let in_desc = |set: &[&str]| desc.iter().find(|w| set.contains(&w.as_str())).cloned();
    // A name that starts with a read verb names what it reads after it: in `get_commit`,
    // `get-annotated-message` or `list_labels` the write words are objects, and so are the
    // money words of the description of `list_charges` ("List charges…"). Unless the name joins
    // two verbs (`get_or_create_label`).
    let read_led = words.first().is_some_and(|w| READ.contains(&w.as_str()))
        && !words.iter().any(|w| w == "and" || w == "or" || w == "then");

    let mut reasons = Vec::new();
    let mut pick = |category: Category, reason: String| -> Option<Category> {
        reasons.push(reason);
        Some(category)
    };
    let category = None
        .or_else(|| in_name(FINANCIAL).and_then(|w| pick(Category::Financial, format!("name word {w:?}"))))
        .or_else(|| in_name(EXECUTE).and_then(|w| pick(Category::Execute, format!("name word {w:?}"))))
        .or_else(|| in_desc(DESCRIPTION_EXECUTE).and_then(|w| pick(Category::Execute, format!("description word {w:?}"))))
        .or_else(|| in_name(DESTRUCTIVE).and_then(|w| pick(Category::Destructive, format!("name word {w:?}"))))
        .or_else(|| in_desc(DESCRIPTION_DESTRUCTIVE).and_then(|w| pick(Category::Destructive, format!("description word {w:?}"))))
        // Money nouns in a description raise a tool the name does not already place higher:
        // `create_order` "…and charges the card" is financial, `delete_customer` "Their charges
        // are kept" stays destructive.
        .or_else(|| (!read_led).then(|| in_desc(DESCRIPTION_FINANCIAL)).flatten().and_then(|w| pick(Category::Financial, format!("description word {w:?}"))))
        .or_else(|| (hint("destructiveHint") == Some(true) && hint("readOnlyHint") != Some(true))
            .then(|| pick(Category::Destructive, "annotation destructiveHint".into()))
            .flatten())
        .or_else(|| (!read_led).then(|| in_name(WRITE)).flatten().and_then(|w| pick(Category::Write, format!("name word {w:?}"))))
        .or_else(|| in_name(READ).and_then(|w| pick(Category::Read, format!("name word {w:?}"))))
        .or_else(|| {
            let why = if hint("readOnlyHint") == Some(true) {
                "no name signal (readOnlyHint alone is not trusted): cautious default"
            } else {
                "no name signal: cautious default"
            };
            pick(Category::Write, why.into())
        })
        .expect("the last alternative always picks");
    // A read-named tool that the server itself calls destructive or not read-only is raised.
    let category = if category == Category::Read && hint("readOnlyHint") == Some(false) {
        reasons.push("annotation readOnlyHint: false".into());
        Category::Write
    } else {
        category
    };
    Classification { category, reasons }
}
