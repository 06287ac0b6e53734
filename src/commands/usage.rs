//! `gatehouse plan --usage`: what a change does to the access people actually use, read from the
//! call log of a daemon's data dir (read-only).
//!
//! - every lost tool with how much its identity used it in the window (allowed calls, the last
//!   one's date, denied attempts);
//! - every gained privileged tool (destructive, execute, financial), flagged with the denied
//!   attempts the identity made on it;
//! - the window's calls that the head would decide differently, by identity and tool: each
//!   recorded decision is decided again against the head ([`replay`]) and compared with what
//!   was recorded.
//!
//! Argument values are never logged (records keep argument key paths only), so a decision that
//! hinges on argument conditions cannot be replayed. Such a call is counted apart, with the
//! rules it hinges on, unless the head decides it exactly as the commit that recorded it did
//! (the same conditional rules, with the same text, and nothing else in the way), in which case
//! its recorded verdict stands. Quota refusals are not replayed (counters are not in the
//! record): a call refused by a quota counts as one the policy allowed. Calls refused before the
//! policy was asked (quarantined tool, unknown tool, invalid name) are counted as not replayed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::commands::plan::{Change, Plan};
use crate::policy::snapshot::{Category, Snapshot};
use crate::policy::{Replay, Verdict, replay};
use crate::repo::{self, Files};

/// What `--usage` adds to a plan.
#[derive(Debug, Serialize, PartialEq)]
pub struct Usage {
    /// The window: [since, until), RFC 3339 UTC.
    pub since: String,
    pub until: String,
    pub days: u64,
    /// Tool-call decisions recorded in the window.
    pub calls: u64,
    pub lost: Vec<LostUse>,
    pub privileged_gained: Vec<GainedUse>,
    /// Calls the head would decide differently from how they were decided.
    pub redecided: Vec<Redecided>,
    /// Calls whose decision under the head depends on argument values, which are never logged.
    pub depends_on_arguments: Vec<Conditional>,
    /// Calls refused before any policy was asked (rule → calls).
    pub not_replayed: BTreeMap<String, u64>,
    pub note: &'static str,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct LostUse {
    pub identity: String,
    pub server: String,
    pub tool: String,
    pub category: Option<Category>,
    /// Allowed calls in the window.
    pub calls: u64,
    /// Date (UTC) of the last allowed call in the window.
    pub last_call: Option<String>,
    pub denied: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct GainedUse {
    pub identity: String,
    pub server: String,
    pub tool: String,
    pub category: Option<Category>,
    /// Calls the identity made to it in the window that were denied.
    pub denied_attempts: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Redecided {
    pub identity: String,
    pub server: String,
    pub tool: String,
    pub from: Verdict,
    pub to: Verdict,
    /// The head's deciding rule.
    pub rule: String,
    pub calls: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Conditional {
    pub identity: String,
    pub server: String,
    pub tool: String,
    pub calls: u64,
    /// The head's rules whose conditions decide these calls.
    pub rules: Vec<String>,
}

pub const NOTE: &str = "argument values are never logged (records keep argument keys only): calls the head would decide by argument conditions cannot be replayed and are counted apart";

/// Built-in refusals made before any policy is asked.
const NOT_POLICY: [&str; 4] = ["gatehouse:tool-quarantined", "gatehouse:unknown-tool", "gatehouse:invalid-name", "gatehouse:audit-unavailable"];

/// One tool-call decision record, as much of it as is needed.
struct Call {
    ts: String,
    identity: String,
    server: String,
    tool: String,
    allowed: bool,
    rule: String,
    commit: Option<String>,
}

/// A compiled revision with its rules' text by id and its quota rule ids.
struct Rev {
    snap: Snapshot,
    rules: HashMap<String, Value>,
    quotas: HashSet<String>,
}

impl Rev {
    fn new(files: &Files, snap: Snapshot) -> Rev {
        let rules = repo::rules::policy_rules(files).into_iter().map(|r| (r.id, r.value)).collect();
        let mut quotas: HashSet<String> = HashSet::new();
        for p in snap.policies.values() {
            let all = p.tools.values().chain(p.wildcard.as_ref()).flat_map(|r| r.quotas.iter()).chain(p.all_tools_quotas.iter());
            quotas.extend(all.map(|q| q.id.to_string()));
        }
        for g in &snap.grants {
            quotas.extend(g.quotas.iter().map(|q| q.id.to_string()));
        }
        Rev { snap, rules, quotas }
    }
}

/// What `usage` measures a plan with.
pub struct Inputs<'a> {
    pub base_files: &'a Files,
    pub base: Snapshot,
    pub head_files: &'a Files,
    pub head: Snapshot,
    /// The repository, for the commits that decided the recorded calls.
    pub repo_dir: &'a Path,
    /// The daemon's data dir (its `gatehouse.db` is opened read-only).
    /// The state database (`--data-dir` or `--database`).
    pub store: &'a crate::record::store::Location,
    /// The window [since, until), RFC 3339 UTC with milliseconds, and its length in days.
    pub since: &'a str,
    pub until: &'a str,
    pub days: u64,
}

/// One (identity, server, tool)'s calls in the window.
#[derive(Default, Clone, Copy)]
struct Tally<'a> {
    allowed: u64,
    denied: u64,
    last_allowed: Option<&'a str>,
}

/// Reads the call log over the window and measures the plan against it.
pub fn usage(plan: &Plan, input: Inputs) -> Result<Usage> {
    let Inputs { base_files, base, head_files, head, repo_dir, store, since, until, days } = input;
    let reader = crate::record::store::Reader::open(store).with_context(|| format!("reading the call log in {}", store.describe()))?;
    let calls = read_calls(&reader.conn(), since, until)?;
    let (base_commit, head_rev) = (base.commit.clone(), Rev::new(head_files, head));
    let mut revs: HashMap<String, Option<Rev>> = HashMap::new();
    if let Some(c) = base_commit {
        revs.insert(c, Some(Rev::new(base_files, base)));
    }

    let mut used: HashMap<(&str, &str, &str), Tally> = HashMap::new();
    for c in &calls {
        let u = used.entry((c.identity.as_str(), c.server.as_str(), c.tool.as_str())).or_default();
        if c.allowed {
            u.allowed += 1;
            u.last_allowed = Some(c.ts.as_str()).max(u.last_allowed);
        } else {
            u.denied += 1;
        }
    }
    let use_of = |ch: &Change| -> (u64, u64, Option<String>) {
        let mut out = Tally::default();
        for ((i, s, t), u) in &used {
            if *i == ch.identity && *s == ch.server && (ch.tool == "*" || *t == ch.tool) {
                out.allowed += u.allowed;
                out.denied += u.denied;
                out.last_allowed = out.last_allowed.max(u.last_allowed);
            }
        }
        (out.allowed, out.denied, out.last_allowed.map(|t| t[..10].to_string()))
    };
    let lost = plan
        .lost
        .iter()
        .map(|ch| {
            let (calls, denied, last_call) = use_of(ch);
            LostUse { identity: ch.identity.clone(), server: ch.server.clone(), tool: ch.tool.clone(), category: ch.category, calls, last_call, denied }
        })
        .collect();
    let privileged_gained = plan
        .privileged_widening
        .iter()
        .map(|ch| GainedUse { identity: ch.identity.clone(), server: ch.server.clone(), tool: ch.tool.clone(), category: ch.category, denied_attempts: use_of(ch).1 })
        .collect();

    // Every decision, decided again against the head.
    let mut redecided: BTreeMap<(String, String, String, Verdict, Verdict, String), u64> = BTreeMap::new();
    let mut conditional: BTreeMap<(String, String, String), (u64, Vec<String>)> = BTreeMap::new();
    let mut not_replayed: BTreeMap<String, u64> = BTreeMap::new();
    for c in &calls {
        if NOT_POLICY.contains(&c.rule.as_str()) {
            *not_replayed.entry(c.rule.clone()).or_default() += 1;
            continue;
        }
        let decided_by = c.commit.as_ref().and_then(|commit| {
            revs.entry(commit.clone()).or_insert_with(|| compile_rev(repo_dir, commit)).as_ref()
        });
        // A refusal by a quota: the policy itself allowed the call.
        let quota = !c.allowed && decided_by.map_or(&head_rev.quotas, |r| &r.quotas).contains(&c.rule);
        let recorded = if c.allowed || quota { Verdict::Allow } else { Verdict::Deny };
        let key = || (c.identity.clone(), c.server.clone(), c.tool.clone());
        match replay(&head_rev.snap, &c.identity, &c.server, &c.tool) {
            Replay::Decided { verdict, rule } => {
                if verdict != recorded {
                    let (i, s, t) = key();
                    *redecided.entry((i, s, t, recorded, verdict, rule.to_string())).or_default() += 1;
                }
            }
            Replay::Conditional { rules } => {
                let same = decided_by.is_some_and(|r| {
                    replay(&r.snap, &c.identity, &c.server, &c.tool) == Replay::Conditional { rules: rules.clone() }
                        && rules.iter().all(|id| r.rules.get(&**id).is_some_and(|v| head_rev.rules.get(&**id) == Some(v)))
                });
                if !same {
                    let e = conditional.entry(key()).or_insert_with(|| (0, rules.iter().map(|r| r.to_string()).collect()));
                    e.0 += 1;
                }
            }
        }
    }
    Ok(Usage {
        since: since.to_string(),
        until: until.to_string(),
        days,
        calls: calls.len() as u64,
        lost,
        privileged_gained,
        redecided: redecided.into_iter().map(|((identity, server, tool, from, to, rule), calls)| Redecided { identity, server, tool, from, to, rule, calls }).collect(),
        depends_on_arguments: conditional.into_iter().map(|((identity, server, tool), (calls, rules))| Conditional { identity, server, tool, calls, rules }).collect(),
        not_replayed,
        note: NOTE,
    })
}

/// The revision that decided recorded calls; None when it is not in the repository or is
/// invalid (its calls' argument-dependent decisions then cannot be confirmed).
fn compile_rev(repo_dir: &Path, commit: &str) -> Option<Rev> {
    let files = repo::read(repo_dir, Some(commit)).ok()?;
    let compiled = repo::compile(&files).ok()?;
    Some(Rev::new(&files, compiled.snapshot))
}

/// The tool-call decision records of [since, until) (outcome records are the second record of
/// an allowed call and are skipped).
fn read_calls(conn: &crate::record::store::Conn, since: &str, until: &str) -> Result<Vec<Call>> {
    let mut out = Vec::new();
    crate::record::audit::rows::each(conn, crate::record::audit::rows::Range::Period { since, until }, |r| {
        let [identity, server, tool, verdict, outcome] = r.call;
        if !matches!(outcome, "unknown" | "denied") {
            return Ok(());
        }
        let v: Value = r.text.as_ref().ok().and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null);
        if v.get("kind").and_then(Value::as_str).unwrap_or("tool") != "tool" {
            return Ok(());
        }
        out.push(Call {
            ts: r.ts.to_string(),
            identity: identity.to_string(),
            server: server.to_string(),
            tool: tool.to_string(),
            allowed: verdict == "allow",
            rule: v.get("rule").and_then(Value::as_str).unwrap_or("").to_string(),
            commit: v.get("policy_commit").and_then(Value::as_str).map(str::to_string),
        });
        Ok(())
    })?;
    Ok(out)
}

/// The usage as a Markdown section of the plan.
pub fn markdown(u: &Usage, s: &mut String) {
    s.push_str(&format!("\n### Usage in the last {} days ({} tool calls recorded since {})\n\n", u.days, u.calls, &u.since[..10]));
    let tool = |server: &str, tool: &str| if tool == "*" { format!("{server}/* (every tool)") } else { format!("{server}/{tool}") };
    if !u.lost.is_empty() {
        s.push_str("**Access lost**\n\n");
        for l in &u.lost {
            let used = match (&l.last_call, l.calls) {
                (Some(last), n) => format!("{n} call{} in the last {} days, last on {last}", if n == 1 { "" } else { "s" }, u.days),
                (None, _) => format!("not used in the last {} days", u.days),
            };
            let denied = if l.denied > 0 { format!(" ({} denied)", l.denied) } else { String::new() };
            s.push_str(&format!("- {} loses {}: {used}{denied}\n", l.identity, tool(&l.server, &l.tool)));
        }
        s.push('\n');
    }
    if !u.privileged_gained.is_empty() {
        s.push_str("**Privileged access gained**\n\n");
        for g in &u.privileged_gained {
            let cat = g.category.map(|c| c.as_str()).unwrap_or("unclassified");
            s.push_str(&format!("- ⚠️ {} gains {} ({cat}); {} denied attempt(s) in the window\n", g.identity, tool(&g.server, &g.tool), g.denied_attempts));
        }
        s.push('\n');
    }
    if u.redecided.is_empty() {
        s.push_str("No recorded call would be decided differently.\n\n");
    } else {
        s.push_str("**Recorded calls the head decides differently**\n\n| identity | tool | was | would be | calls | rule |\n|---|---|---|---|---|---|\n");
        for r in &u.redecided {
            let v = |v: Verdict| if v == Verdict::Allow { "allow" } else { "deny" };
            s.push_str(&format!("| {} | {} | {} | {} | {} | `{}` |\n", r.identity, tool(&r.server, &r.tool), v(r.from), v(r.to), r.calls, r.rule));
        }
        s.push('\n');
    }
    if !u.depends_on_arguments.is_empty() {
        let n: u64 = u.depends_on_arguments.iter().map(|c| c.calls).sum();
        s.push_str(&format!("**{n} recorded call(s) depend on argument conditions and cannot be replayed** (argument values are never logged)\n\n| identity | tool | calls | rules |\n|---|---|---|---|\n"));
        for c in &u.depends_on_arguments {
            s.push_str(&format!("| {} | {} | {} | {} |\n", c.identity, tool(&c.server, &c.tool), c.calls, c.rules.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")));
        }
        s.push('\n');
    }
    if !u.not_replayed.is_empty() {
        let parts: Vec<String> = u.not_replayed.iter().map(|(r, n)| format!("{n} by `{r}`")).collect();
        s.push_str(&format!("Not replayed (refused before any policy was asked): {}\n", parts.join(", ")));
    }
}
