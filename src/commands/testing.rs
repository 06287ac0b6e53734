//! `gatehouse test`: run the repository's policy test cases against its own snapshot.

use crate::policy::{Call, Decision, Verdict, evaluate};
use crate::repo::{Compiled, TestCase};

/// The outcome of one case.
pub struct Outcome<'a> {
    pub case: &'a TestCase,
    pub decision: Decision,
}

// === impl Outcome ===

impl Outcome<'_> {
    pub fn passed(&self) -> bool {
        self.decision.verdict == self.case.expect
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
            Outcome { case, decision: evaluate(&compiled.snapshot, &call) }
        })
        .collect()
}
