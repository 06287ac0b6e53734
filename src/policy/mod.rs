//! The decision model: compiled policy documents, conditions, quotas and the [`Decision`].
//!
//! Everything here is already validated: regexes compiled, paths parsed, ids assigned. The
//! engine ([`eval`]) is pure: it knows nothing of files, git, HTTP, tokio or SQLite, performs no
//! IO and cannot fail. Rule ids are computed once at compile time (`Arc<str>`), so deciding an
//! allowed call allocates nothing.

pub mod access;
pub mod cond;
pub mod eval;
pub mod resource;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::units::{Rate, Window};

pub use cond::{ArgPath, Condition, Matcher, Op, Tri};
pub use eval::{evaluate, evaluate_grant, replay, Call, Replay};

/// allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// What the engine decided, and which rule decided it.
#[derive(Clone, Debug)]
pub struct Decision {
    pub verdict: Verdict,
    /// Stable id of the deciding rule: `policies/x.json#/tools/query/deny_if/0`,
    /// `grants/alice.yaml#/access/0`, or a built-in `gatehouse:…` id.
    pub rule: Arc<str>,
    /// Human-readable reason, safe to show to the client (never contains argument values).
    pub message: Arc<str>,
    /// Quotas the call must also fit in (allowed calls only). The engine does not count: the
    /// quota store reserves these before the upstream call.
    pub quotas: Vec<Arc<Quota>>,
}

/// One compiled policy document.
#[derive(Debug)]
pub struct Policy {
    /// Repository path, e.g. `policies/sql-read.json`.
    pub file: String,
    /// `default: allow` lets unlisted tools through (still subject to `"*"` rules).
    pub default_allow: bool,
    /// Rule id of the default (`<file>#/default`).
    pub default_rule: Arc<str>,
    /// Hidden tool → rule id of its `hide` entry (`"*"` hides every tool, as in Intercept).
    /// Hidden tools are denied and never listed.
    pub hidden: HashMap<String, Arc<str>>,
    /// Tool name → its rules.
    pub tools: HashMap<String, ToolRules>,
    /// The `"*"` entry: rules applied to every tool of this policy.
    pub wildcard: Option<ToolRules>,
    /// `all_tools.limits`.
    pub all_tools_quotas: Vec<Arc<Quota>>,
}

/// The rules of one tool entry (or of `"*"`), in file order.
#[derive(Debug)]
pub struct ToolRules {
    /// `<file>#/tools/<tool>`: the id reported when this entry lets a call through.
    pub id: Arc<str>,
    pub checks: Vec<Check>,
    pub quotas: Vec<Arc<Quota>>,
}

/// A rule that can deny a call.
#[derive(Debug)]
pub struct Check {
    pub id: Arc<str>,
    pub message: Arc<str>,
    pub kind: CheckKind,
}

#[derive(Debug)]
pub enum CheckKind {
    /// Seed `deny_if` clause, or rules-style `action: deny` with conditions: deny when the
    /// conditions all match. A condition that cannot be evaluated counts as matching.
    DenyIf(Vec<Condition>),
    /// Seed `require`, rules-style `conditions`: deny unless every condition definitely holds.
    Require(Vec<Condition>),
    /// Rules-style `action: deny` without conditions.
    DenyAlways,
}

/// A rate limit or a counter cap. Parsed and validated at compile time; counted by the quota
/// store, never by the engine.
#[derive(Debug)]
pub struct Quota {
    /// Rule id, e.g. `policies/payments.yaml#/tools/create_charge/rules/daily spend cap`.
    pub id: Arc<str>,
    pub name: String,
    /// Counter key: quotas that share a key share a count (an Intercept `state` counter read by
    /// several rules). Unique per quota otherwise.
    pub counter: String,
    pub window: Window,
    pub increment: Increment,
    /// The count after this call must be `<= max` (or `< max` when `inclusive` is false).
    pub max: f64,
    pub inclusive: bool,
    pub per: Scope,
    /// The counter's name in Intercept's terms, `state.<tool>.<counter>` (`_global` for the
    /// `"*"` tool; `_rate_<window>` for a `rate_limit` shorthand): rules-style quotas only.
    /// `gatehouse test` and `eval` take starting counts by this name.
    pub path: Option<String>,
    /// The rule's `on_deny`: what a refused caller is told instead of the quota's description.
    pub on_deny: Option<Arc<str>>,
}

/// How much one call adds to a counter.
#[derive(Debug, Clone)]
pub enum Increment {
    /// Rate limits: one per call.
    One,
    /// Spend caps: the numeric value of an argument (a call without it is denied).
    Arg(ArgPath),
    /// A fixed amount.
    Const(f64),
    /// The rule only reads a counter another rule increments.
    Nothing,
}

/// Whose calls a quota counts together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Identity,
    Server,
    Global,
}

// === impl Policy ===

impl Policy {
    /// The `hide` entry that hides `tool`, if any: its own, else a `"*"` entry.
    pub fn hides(&self, tool: &str) -> Option<&Arc<str>> {
        self.hidden.get(tool).or_else(|| self.hidden.get("*"))
    }
}

// === impl Decision ===

impl Decision {
    pub fn allow(rule: &Arc<str>, message: &Arc<str>, quotas: Vec<Arc<Quota>>) -> Decision {
        Decision { verdict: Verdict::Allow, rule: rule.clone(), message: message.clone(), quotas }
    }

    pub fn deny(rule: impl Into<Arc<str>>, message: impl Into<Arc<str>>) -> Decision {
        Decision { verdict: Verdict::Deny, rule: rule.into(), message: message.into(), quotas: Vec::new() }
    }

    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

// === impl Quota ===

impl Quota {
    /// A rate limit: `count` calls per window.
    pub fn rate(id: Arc<str>, name: String, rate: Rate, per: Scope) -> Quota {
        Quota {
            counter: id.to_string(),
            id,
            name,
            window: rate.window,
            increment: Increment::One,
            max: rate.count as f64,
            inclusive: true,
            per,
            path: None,
            on_deny: None,
        }
    }

    /// A short description for people: `30/minute per identity`, `sum(args.amount) <= 1000000/day`.
    pub fn describe(&self) -> String {
        let per = match self.per {
            Scope::Identity => "identity",
            Scope::Server => "server",
            Scope::Global => "global",
        };
        let cmp = if self.inclusive { "<=" } else { "<" };
        match &self.increment {
            Increment::One => format!("{}/{} per {per}", self.max, self.window.as_str()),
            Increment::Arg(p) => format!("sum({p}) {cmp} {} per {} per {per}", self.max, self.window.as_str()),
            Increment::Const(n) => format!("{n} per call, {cmp} {} per {} per {per}", self.max, self.window.as_str()),
            Increment::Nothing => format!("counter {cmp} {} per {} per {per}", self.max, self.window.as_str()),
        }
    }
}

/// Convenience for tests and the CLI: the JSON value of an empty argument object.
pub fn no_args() -> Value {
    Value::Object(Default::default())
}
