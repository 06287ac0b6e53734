//! `gatehouse test` and `eval`: decide calls offline against a repository's own snapshot, quotas
//! included (counted from given starting counts, never from a daemon's store).

use std::sync::Arc;

use crate::policy::snapshot::Snapshot;
use crate::policy::{Call, Decision, Quota, Verdict, evaluate};
use crate::record::quota::{Quotas, Subject};
use crate::repo::{Compiled, TestCase};

/// The outcome of one case.
pub struct Outcome<'a> {
    pub case: &'a TestCase,
    pub decision: Decision,
}

/// A call decided offline: the engine's decision, then its quotas against the given counts.
pub struct Decided {
    pub decision: Decision,
    /// Each quota the call reaches, with the count it started from and what it did.
    pub quotas: Vec<QuotaStatus>,
}

pub struct QuotaStatus {
    pub quota: Arc<Quota>,
    /// The count already spent in the current window (given, else 0).
    pub before: f64,
    /// `within`, `exceeded` (it refused the call) or `not reached` (an earlier quota refused).
    pub status: &'static str,
}

/// Decides `call` as the daemon would on its first call of a window, except that each quota
/// starts from the count `counters` gives it: keyed by Intercept's counter name
/// (`state.<tool>.<counter>`, `state._global.<counter>` for `"*"`, `state.<tool>._rate_<window>`
/// for a `rate_limit` shorthand), by rule name or by rule id. A call the rules refuse reaches no
/// quota; for one they allow, a key that names none of its quotas is an error naming the ones
/// it does reach.
pub fn decide(snapshot: &Snapshot, call: &Call, counters: &[(String, f64)]) -> Result<Decided, String> {
    decide_signed_in(snapshot, call, counters, &[])
}

/// [`decide`] for a caller signed in through an identity provider with `groups`: the roles that
/// name them add their entries to the caller's grant, as the gateway does.
pub fn decide_signed_in(snapshot: &Snapshot, call: &Call, counters: &[(String, f64)], groups: &[String]) -> Result<Decided, String> {
    let roles = snapshot.roles_of_groups(groups.iter().map(String::as_str));
    let d = match snapshot.grant(call.identity) {
        Some(g) if !roles.is_empty() => {
            let with: Vec<_> = roles
                .iter()
                .filter_map(|r| snapshot.roles.get(*r))
                .map(|r| (r, format!("group {}", groups.iter().find(|g| r.groups.contains(g)).map(String::as_str).unwrap_or("?"))))
                .collect();
            crate::policy::evaluate_grant(snapshot, &g.with_roles(&with), call)
        }
        _ => evaluate(snapshot, call),
    };
    if !d.is_allow() {
        return Ok(Decided { decision: d, quotas: Vec::new() });
    }
    let names = |q: &Quota, key: &str| q.path.as_deref() == Some(key) || q.name == key || &*q.id == key;
    for (key, _) in counters {
        if !d.quotas.iter().any(|q| names(q, key)) {
            let reached: Vec<String> = d.quotas.iter().map(|q| q.path.clone().unwrap_or_else(|| q.name.clone())).collect();
            let reached = if reached.is_empty() { "none".to_string() } else { reached.join(", ") };
            return Err(format!("counter {key:?} is not counted by this call (its quotas: {reached})"));
        }
    }
    let now = crate::units::unix_now();
    let who = Subject { identity: call.identity, server: call.server };
    let quotas = Quotas::load(None, now);
    let before = |q: &Quota| counters.iter().filter(|(k, _)| names(q, k)).map(|(_, n)| *n).next_back().unwrap_or(0.0);
    for q in &d.quotas {
        quotas.preset(q, &who, now, before(q));
    }
    let refused = quotas.reserve_local(&d.quotas, &who, call.args, now).err();
    let at = refused.as_ref().and_then(|e| d.quotas.iter().position(|q| Arc::ptr_eq(q, &e.quota)));
    let statuses = d
        .quotas
        .iter()
        .enumerate()
        .map(|(i, q)| QuotaStatus {
            quota: q.clone(),
            before: before(q),
            status: match at {
                Some(j) if i == j => "exceeded",
                Some(j) if i > j => "not reached",
                _ => "within",
            },
        })
        .collect();
    let decision = match refused {
        Some(e) => Decision::deny(e.quota.id.clone(), e.why),
        None => d,
    };
    Ok(Decided { decision, quotas: statuses })
}

/// The rule a case reports when its `counters` name no quota of its call.
const COUNTERS_ERROR: &str = "gatehouse:test-counters";

// === impl Outcome ===

impl Outcome<'_> {
    pub fn passed(&self) -> bool {
        &*self.decision.rule != COUNTERS_ERROR
            && self.decision.verdict == self.case.expect
            && self.case.rule.as_deref().is_none_or(|r| self.decision.rule.contains(r))
    }

    /// `tests/x.yaml:12:5: FAIL "name": expected deny, got allow (rule …: message)`.
    pub fn failure_line(&self) -> String {
        let c = self.case;
        let verdict = |v: Verdict| if v == Verdict::Allow { "allow" } else { "deny" };
        let want_rule = match &c.rule {
            Some(r) if self.decision.verdict == c.expect => format!(" by a rule containing {r:?}"),
            _ => String::new(),
        };
        format!(
            "{}:{}:{}: FAIL {:?}: expected {}{want_rule}, got {} (rule {}: {})",
            c.file,
            c.pos.line,
            c.pos.col,
            c.name,
            verdict(c.expect),
            verdict(self.decision.verdict),
            self.decision.rule,
            self.decision.message
        )
    }
}

/// Decides every case, in file order.
pub fn run(compiled: &Compiled) -> Vec<Outcome<'_>> {
    compiled
        .tests
        .iter()
        .map(|case| {
            let call = Call { identity: &case.identity, server: &case.server, tool: &case.tool, args: &case.args };
            let decision = match decide_signed_in(&compiled.snapshot, &call, &case.counters, &case.groups) {
                Ok(d) => d.decision,
                Err(e) => Decision::deny(Arc::<str>::from(COUNTERS_ERROR), e),
            };
            Outcome { case, decision }
        })
        .collect()
}
