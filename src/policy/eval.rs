//! `evaluate(&Snapshot, &Call) -> Decision`: pure, synchronous, infallible.
//!
//! Precedence, first denial wins:
//! 1. grant scope: the caller has a grant (`gatehouse:no-grant`), an access entry of it reaches
//!    the server (`gatehouse:no-grant`) and lists the tool (`gatehouse:tool-not-granted`);
//! 2. the server's baseline policy, then the policy of every access entry that reaches the tool
//!    (a grant entry and a role entry both reaching the tool must both allow it);
//! 3. within one policy: `hide`, then the tool's entry (or `default`), then the `"*"` entry; in an
//!    entry, its checks in file order (`deny_if`, `require`, then `rules`).
//!
//! Quota rules are not counted here: an allowed decision carries them for the quota store.

use std::sync::Arc;

use serde_json::Value;

use super::{CheckKind, Decision, Policy, Quota, ToolRules, Tri, Verdict};
use crate::policy::snapshot::{Grant, Snapshot};

/// One tool call to decide.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// Identity (or grant name) of the caller.
    pub identity: &'a str,
    pub server: &'a str,
    pub tool: &'a str,
    /// The call's `arguments` object.
    pub args: &'a Value,
}

pub const NO_GRANT: &str = "gatehouse:no-grant";
pub const TOOL_NOT_GRANTED: &str = "gatehouse:tool-not-granted";
pub const RESOURCE_NOT_GRANTED: &str = "gatehouse:resource-not-granted";
pub const PROMPT_NOT_GRANTED: &str = "gatehouse:prompt-not-granted";

/// Decides a call by identity.
pub fn evaluate(snap: &Snapshot, call: &Call) -> Decision {
    match snap.grant(call.identity) {
        Some(g) => evaluate_grant(snap, g, call),
        None => Decision::deny(NO_GRANT, format!("no grant for identity {:?}", call.identity)),
    }
}

/// Decides a call of an already authenticated grant.
pub fn evaluate_grant(snap: &Snapshot, grant: &Grant, call: &Call) -> Decision {
    let Some(entries) = grant.by_server.get(call.server) else {
        return Decision::deny(NO_GRANT, format!("{} has no access to server {:?}", grant.file, call.server));
    };
    let mut reaching = entries.iter().map(|&i| &grant.access[i]).filter(|a| a.tools.contains(call.tool));
    let Some(first) = reaching.next() else {
        return Decision::deny(
            TOOL_NOT_GRANTED,
            format!("{} does not grant tool {:?} on server {:?}", grant.file, call.tool, call.server),
        );
    };
    let mut quotas = Vec::new();
    if let Some(server) = snap.servers.get(call.server)
        && let Some(p) = &server.policy
            && let Some(d) = check_policy(p, call, &mut quotas) {
                return d;
            }
    for entry in std::iter::once(first).chain(reaching) {
        if let Some(p) = &entry.policy
            && let Some(d) = check_policy(p, call, &mut quotas) {
                return d;
            }
    }
    quotas.extend(grant.quotas.iter().cloned());
    Decision::allow(&first.id, &first.allow_message, quotas)
}

/// Whether `tool` could ever be allowed for this grant on `server`, whatever the arguments:
/// what `tools/list` shows. Argument conditions are assumed satisfiable; hide, unconditional
/// denials, unlisted tools under `default: deny` and missing grant scope are not.
pub fn may_allow(snap: &Snapshot, grant: &Grant, server: &str, tool: &str) -> bool {
    let Some(entries) = grant.by_server.get(server) else { return false };
    let baseline = snap.servers.get(server).and_then(|s| s.policy.as_ref());
    let policy_ok = |p: &Policy| -> bool {
        if p.hides(tool).is_some() {
            return false;
        }
        let entry = p.tools.get(tool);
        if entry.is_none() && !p.default_allow {
            return false;
        }
        let always_denies = |r: &ToolRules| r.checks.iter().any(|c| matches!(c.kind, CheckKind::DenyAlways));
        !entry.is_some_and(always_denies) && !p.wildcard.as_ref().is_some_and(always_denies)
    };
    if baseline.is_some_and(|p| !policy_ok(p)) {
        return false;
    }
    let mut reaching = entries.iter().map(|&i| &grant.access[i]).filter(|a| a.tools.contains(tool)).peekable();
    reaching.peek().is_some() && reaching.all(|a| a.policy.as_deref().is_none_or(policy_ok))
}

/// Decides a read (or subscription) of the concrete resource `uri` on `server`: allowed by the
/// first pattern, in access-entry then file order, that matches it. Resources are decided by the
/// access entries alone: policy documents (the server baseline, an entry's `policy`) speak of
/// tools. The message never holds the URI (it may hold personal data).
pub fn decide_resource(grant: &Grant, server: &str, uri: &str) -> Decision {
    let Some(entries) = grant.by_server.get(server) else {
        return Decision::deny(NO_GRANT, format!("{} has no access to server {server:?}", grant.file));
    };
    let rule = entries.iter().flat_map(|&i| &grant.access[i].resources).find(|r| r.pattern.matches(uri));
    match rule {
        Some(r) => Decision::allow(&r.id, &r.allow_message, Vec::new()),
        None => Decision::deny(RESOURCE_NOT_GRANTED, format!("{} grants no resource pattern on server {server:?} that matches this URI", grant.file)),
    }
}

/// Decides a `prompts/get` (or a completion for a prompt's argument) of `prompt` on `server`,
/// from the access entries alone, as [`decide_resource`].
pub fn decide_prompt(grant: &Grant, server: &str, prompt: &str) -> Decision {
    let Some(entries) = grant.by_server.get(server) else {
        return Decision::deny(NO_GRANT, format!("{} has no access to server {server:?}", grant.file));
    };
    let rule = entries.iter().flat_map(|&i| &grant.access[i].prompts).find(|r| r.covers(prompt));
    match rule {
        Some(r) => Decision::allow(&r.id, &r.allow_message, Vec::new()),
        None => Decision::deny(PROMPT_NOT_GRANTED, format!("{} does not grant prompt {prompt:?} on server {server:?}", grant.file)),
    }
}

/// Whether the URI template `template` could produce a resource the grant may read on `server`
/// (its literal prefix, up to the first `{`, could match a pattern): what
/// `resources/templates/list` shows and what `completion/complete` of a template needs.
pub fn may_use_template(grant: &Grant, server: &str, template: &str) -> bool {
    let prefix = crate::policy::resource::template_prefix(template);
    grant.by_server.get(server).is_some_and(|e| e.iter().flat_map(|&i| &grant.access[i].resources).any(|r| r.pattern.could_extend(prefix)))
}

/// Whether some access entry of the grant gives resources on `server` (else its upstream is
/// never asked for them).
pub fn grants_resources(grant: &Grant, server: &str) -> bool {
    grant.by_server.get(server).is_some_and(|e| e.iter().any(|&i| !grant.access[i].resources.is_empty()))
}

/// Whether some access entry of the grant gives prompts on `server`.
pub fn grants_prompts(grant: &Grant, server: &str) -> bool {
    grant.by_server.get(server).is_some_and(|e| e.iter().any(|&i| !grant.access[i].prompts.is_empty()))
}

/// A recorded call decided again from what its record keeps: identity, server and tool, never
/// the argument values (`gatehouse plan --usage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The verdict does not depend on the arguments; `rule` decides it.
    Decided { verdict: Verdict, rule: Arc<str> },
    /// Allowed only if every one of these rules' conditions (on arguments or counters) passes:
    /// it cannot be decided without the argument values.
    Conditional { rules: Vec<Arc<str>> },
}

/// Decides a call of `identity` to `server`/`tool` as far as it can be without its arguments,
/// in the precedence of [`evaluate_grant`]. Quotas are not counted.
pub fn replay(snap: &Snapshot, identity: &str, server: &str, tool: &str) -> Replay {
    let deny = |rule: &str| Replay::Decided { verdict: Verdict::Deny, rule: Arc::from(rule) };
    let Some(grant) = snap.grant(identity) else { return deny(NO_GRANT) };
    let Some(entries) = grant.by_server.get(server) else { return deny(NO_GRANT) };
    let reaching: Vec<_> = entries.iter().map(|&i| &grant.access[i]).filter(|a| a.tools.contains(tool)).collect();
    let Some(first) = reaching.first() else { return deny(TOOL_NOT_GRANTED) };
    let baseline = snap.servers.get(server).and_then(|s| s.policy.as_deref());
    let mut conditional = Vec::new();
    for p in baseline.into_iter().chain(reaching.iter().filter_map(|a| a.policy.as_deref())) {
        if let Some(rule) = p.hides(tool) {
            return Replay::Decided { verdict: Verdict::Deny, rule: rule.clone() };
        }
        let entry = p.tools.get(tool);
        if entry.is_none() && !p.default_allow {
            return Replay::Decided { verdict: Verdict::Deny, rule: p.default_rule.clone() };
        }
        for rules in entry.into_iter().chain(p.wildcard.as_ref()) {
            for check in &rules.checks {
                match &check.kind {
                    CheckKind::DenyAlways => return Replay::Decided { verdict: Verdict::Deny, rule: check.id.clone() },
                    CheckKind::DenyIf(c) if c.is_empty() => return Replay::Decided { verdict: Verdict::Deny, rule: check.id.clone() },
                    CheckKind::Require(c) if c.is_empty() => {}
                    CheckKind::DenyIf(_) | CheckKind::Require(_) => conditional.push(check.id.clone()),
                }
            }
        }
    }
    if conditional.is_empty() {
        Replay::Decided { verdict: Verdict::Allow, rule: first.id.clone() }
    } else {
        Replay::Conditional { rules: conditional }
    }
}

/// One policy document's verdict on a call: a denial, or None (and its quotas appended).
fn check_policy(p: &Policy, call: &Call, quotas: &mut Vec<Arc<Quota>>) -> Option<Decision> {
    if let Some(rule) = p.hides(call.tool) {
        return Some(Decision::deny(rule.clone(), format!("tool {:?} is hidden by {}", call.tool, p.file)));
    }
    let entry = p.tools.get(call.tool);
    if entry.is_none() && !p.default_allow {
        return Some(Decision::deny(
            p.default_rule.clone(),
            format!("tool {:?} is not listed in {} (default: deny)", call.tool, p.file),
        ));
    }
    for rules in entry.into_iter().chain(p.wildcard.as_ref()) {
        if let Some(d) = check_rules(rules, call.args) {
            return Some(d);
        }
        quotas.extend(rules.quotas.iter().cloned());
    }
    quotas.extend(p.all_tools_quotas.iter().cloned());
    None
}

fn check_rules(rules: &ToolRules, args: &Value) -> Option<Decision> {
    for check in &rules.checks {
        let denied = match &check.kind {
            CheckKind::DenyAlways => Tri::True,
            CheckKind::DenyIf(conds) => Tri::all(conds, args),
            CheckKind::Require(conds) => !Tri::all(conds, args),
        };
        match denied {
            Tri::False => {}
            Tri::True => return Some(Decision::deny(check.id.clone(), check.message.clone())),
            Tri::Unknown => {
                let conds = match &check.kind {
                    CheckKind::DenyIf(c) | CheckKind::Require(c) => c.as_slice(),
                    CheckKind::DenyAlways => &[],
                };
                let why = conds.iter().find_map(|c| c.why_unknown(args));
                let why = why.as_deref().unwrap_or("an argument it checks is missing or of the wrong type");
                return Some(Decision::deny(check.id.clone(), format!("{} ({why})", check.message)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
