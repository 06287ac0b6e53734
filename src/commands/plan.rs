//! `gatehouse plan`: what a change to the policy repository does to access, for the reviewer of
//! a pull request. Pure over two compiled snapshots (and the rules as written).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::gitops::signature::{Basis, Check, Signed};
use crate::policy::access::{self, Cell};
use crate::repo::Files;
use crate::repo::rules::{RuleNode, policy_rules};
use crate::policy::snapshot::{Category, Snapshot};
use crate::units::Date;

/// The plan: everything a reviewer should see, privileged widening first.
#[derive(Debug, Serialize, PartialEq)]
pub struct Plan {
    pub base: Option<String>,
    pub head: Option<String>,
    /// Access gained to destructive, execute or financial tools.
    pub privileged_widening: Vec<Change>,
    pub gained: Vec<Change>,
    pub lost: Vec<Change>,
    pub rules: RuleChanges,
    pub servers: ServerChanges,
    pub grants: GrantChanges,
    /// Every commit from base to head, checked as the daemon would with the base applied.
    pub signatures: Vec<SignatureCheck>,
    /// `--usage`: the change measured against the call log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::commands::usage::Usage>,
}

/// One commit's signature, against the trust list in force for it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SignatureCheck {
    pub commit: String,
    pub signed: Signed,
    /// The trust list in force requires a verified signature.
    pub required: bool,
    /// The daemon would accept it (as far as signatures go).
    pub accepted: bool,
    /// The commit whose trust list was used, and how it came to be trusted.
    pub trust_from: Option<String>,
    pub basis: Basis,
    pub error: Option<String>,
}

/// One cell gained or lost, with the tool's category when the server declares it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub identity: String,
    pub server: String,
    pub tool: String,
    pub category: Option<Category>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct RuleChanges {
    pub added: Vec<RuleRef>,
    pub removed: Vec<RuleRef>,
    pub changed: Vec<RuleRef>,
}

/// A rule and where it is (`file:line` in the revision it exists in: head, or base if removed).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleRef {
    pub id: String,
    pub file: String,
    pub line: usize,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ServerChanges {
    pub added: Vec<ServerRef>,
    pub removed: Vec<ServerRef>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerRef {
    pub name: String,
    pub risk: Option<String>,
    pub operated_by: Option<String>,
    pub vendor: Option<String>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct GrantChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub reviewed: Vec<String>,
    /// identity → token hashes (first 12 hex digits) added.
    pub tokens_added: BTreeMap<String, Vec<String>>,
    /// identity → token hashes removed (revocations).
    pub tokens_revoked: BTreeMap<String, Vec<String>>,
    /// identity → tokens that are expired at head on `today`.
    pub expired: BTreeMap<String, Vec<String>>,
}

// === impl Plan ===

impl Plan {
    /// Whether the change touches access at all (exit code 1 of `gatehouse plan`).
    pub fn changes_access(&self) -> bool {
        !(self.gained.is_empty()
            && self.lost.is_empty()
            && self.rules == RuleChanges::default()
            && self.servers == ServerChanges::default()
            && self.grants.added.is_empty()
            && self.grants.removed.is_empty()
            && self.grants.reviewed.is_empty()
            && self.grants.tokens_added.is_empty()
            && self.grants.tokens_revoked.is_empty())
    }
}

/// Compares two revisions of a repository (their files and compiled snapshots).
pub fn plan(base_files: &Files, base: &Snapshot, head_files: &Files, head: &Snapshot, today: Date) -> Plan {
    let (mb, mh) = (access::matrix(base), access::matrix(head));
    let d = access::diff(&mb, &mh);
    let with_category = |cells: &[Cell], snap: &Snapshot| -> Vec<Change> {
        cells
            .iter()
            .map(|c| Change {
                identity: c.identity.clone(),
                server: c.server.clone(),
                tool: c.tool.clone(),
                category: snap.servers.get(&c.server).and_then(|s| s.tools.get(&c.tool)).and_then(|t| t.category),
            })
            .collect()
    };
    let gained = with_category(&d.gained, head);
    let lost = with_category(&d.lost, base);
    let privileged_widening = gained.iter().filter(|c| c.category.is_some_and(Category::is_privileged)).cloned().collect();
    Plan {
        base: base.commit.clone(),
        head: head.commit.clone(),
        privileged_widening,
        gained,
        lost,
        rules: rule_changes(&policy_rules(base_files), &policy_rules(head_files)),
        servers: server_changes(base, head),
        grants: grant_changes(base, head, today),
        signatures: Vec::new(),
        usage: None,
    }
}

impl From<&Check> for SignatureCheck {
    fn from(c: &Check) -> SignatureCheck {
        SignatureCheck {
            commit: c.commit.to_string(),
            signed: c.signed.clone(),
            required: c.required,
            accepted: c.accepted(),
            trust_from: c.trust_from.map(|t| t.to_string()),
            basis: c.basis,
            error: c.rejection(),
        }
    }
}

fn rule_changes(base: &[RuleNode], head: &[RuleNode]) -> RuleChanges {
    let b: BTreeMap<&str, &RuleNode> = base.iter().map(|r| (r.id.as_str(), r)).collect();
    let h: BTreeMap<&str, &RuleNode> = head.iter().map(|r| (r.id.as_str(), r)).collect();
    let at = |r: &RuleNode| RuleRef { id: r.id.clone(), file: r.file.clone(), line: r.line };
    RuleChanges {
        added: h.iter().filter(|(id, _)| !b.contains_key(*id)).map(|(_, r)| at(r)).collect(),
        removed: b.iter().filter(|(id, _)| !h.contains_key(*id)).map(|(_, r)| at(r)).collect(),
        changed: h.iter().filter(|(id, r)| b.get(*id).is_some_and(|old| old.value != r.value)).map(|(_, r)| at(r)).collect(),
    }
}

fn server_changes(base: &Snapshot, head: &Snapshot) -> ServerChanges {
    let r = |snap: &Snapshot, name: &str| {
        let s = &snap.servers[name];
        let sup = s.supplier.as_ref();
        ServerRef {
            name: name.to_string(),
            risk: sup.and_then(|x| x.risk.clone()),
            operated_by: sup.and_then(|x| x.operated_by.clone()),
            vendor: sup.and_then(|x| x.vendor.clone()),
        }
    };
    ServerChanges {
        added: head.server_names().into_iter().filter(|n| !base.servers.contains_key(*n)).map(|n| r(head, n)).collect(),
        removed: base.server_names().into_iter().filter(|n| !head.servers.contains_key(*n)).map(|n| r(base, n)).collect(),
    }
}

fn grant_changes(base: &Snapshot, head: &Snapshot, today: Date) -> GrantChanges {
    fn by_identity(s: &Snapshot) -> BTreeMap<String, &crate::policy::snapshot::Grant> {
        s.grants.iter().map(|g| (g.identity.clone(), g)).collect()
    }
    let (b, h) = (by_identity(base), by_identity(head));
    let short = |t: &crate::policy::snapshot::Token| hex::encode(t.sha256)[..12].to_string();
    let mut out = GrantChanges {
        added: h.keys().filter(|k| !b.contains_key(*k)).cloned().collect(),
        removed: b.keys().filter(|k| !h.contains_key(*k)).cloned().collect(),
        ..GrantChanges::default()
    };
    for (id, g) in &h {
        let expired: Vec<String> = g.tokens.iter().filter(|t| t.expires.is_some_and(|e| e <= today)).map(short).collect();
        if !expired.is_empty() {
            out.expired.insert(id.clone(), expired);
        }
        let Some(old) = b.get(id) else { continue };
        if old.review.as_ref().map(|r| (r.on, &r.by)) != g.review.as_ref().map(|r| (r.on, &r.by)) && g.review.is_some() {
            out.reviewed.push(id.clone());
        }
        let before: BTreeSet<[u8; 32]> = old.tokens.iter().map(|t| t.sha256).collect();
        let after: BTreeSet<[u8; 32]> = g.tokens.iter().map(|t| t.sha256).collect();
        let added: Vec<String> = g.tokens.iter().filter(|t| !before.contains(&t.sha256)).map(short).collect();
        let revoked: Vec<String> = old.tokens.iter().filter(|t| !after.contains(&t.sha256)).map(short).collect();
        if !added.is_empty() {
            out.tokens_added.insert(id.clone(), added);
        }
        if !revoked.is_empty() {
            out.tokens_revoked.insert(id.clone(), revoked);
        }
    }
    out
}

/// The plan as Markdown for a pull-request comment.
pub fn markdown(p: &Plan) -> String {
    let short = |c: &Option<String>| c.as_deref().map(|c| c[..c.len().min(12)].to_string()).unwrap_or_else(|| "working tree".into());
    let mut s = format!("## gatehouse plan: `{}` → `{}`\n\n", short(&p.base), short(&p.head));
    let unauthorised = p.signatures.iter().filter(|c| !c.accepted).count();
    if unauthorised > 0 {
        s.push_str(&format!("> **Error: {unauthorised} commit(s) are not signed by a trusted key**: the gateway would refuse this change (see Signatures).\n\n"));
    }
    if !p.changes_access() {
        s.push_str("No access change.\n");
    } else {
        access_sections(&mut s, p);
    }
    signature_section(&mut s, &p.signatures);
    if let Some(u) = &p.usage {
        crate::commands::usage::markdown(u, &mut s);
    }
    s
}

/// Commits and their signatures, when any is signed or a signature is required.
fn signature_section(s: &mut String, checks: &[SignatureCheck]) {
    if !checks.iter().any(|c| c.required || c.signed.present) {
        return;
    }
    s.push_str("\n### Signatures\n\n| commit | signature | key | principal | |\n|---|---|---|---|---|\n");
    for c in checks {
        let state = match (c.signed.present, c.signed.verified) {
            (_, true) => "verified".to_string(),
            (true, false) => format!("not verified: {}", c.signed.error.as_deref().unwrap_or("?")),
            (false, _) => "unsigned".to_string(),
        };
        let verdict = if !c.accepted { "**refused**" } else if c.required { "required, ok" } else { "not required" };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {verdict} |\n",
            &c.commit[..12],
            state,
            c.signed.fingerprint.as_deref().map(|f| format!("{} `{f}`", c.signed.format.unwrap_or(""))).unwrap_or_default(),
            c.signed.principal.as_deref().unwrap_or("")
        ));
    }
}

fn access_sections(s: &mut String, p: &Plan) {
    let cat = |c: &Change| match c.category {
        Some(c) => c.as_str().to_string(),
        None if c.tool.starts_with(access::RESOURCE_PREFIX) => "resource".into(),
        None if c.tool.starts_with(access::PROMPT_PREFIX) => "prompt".into(),
        None => "unclassified".into(),
    };
    // A resource pattern may hold `*`, `|` or `_`: shown as code, so Markdown leaves it alone.
    let tool = |c: &Change| match c.tool.as_str() {
        "*" => "* (every tool the upstream offers)".to_string(),
        t if t.starts_with(access::RESOURCE_PREFIX) || t.starts_with(access::PROMPT_PREFIX) => format!("`{}`", t.replace('`', "'").replace('|', "\\|")),
        t => t.to_string(),
    };
    let table = |s: &mut String, title: &str, rows: &[Change]| {
        if rows.is_empty() {
            return;
        }
        s.push_str(&format!("### {title} ({})\n\n| identity | server | tool | category |\n|---|---|---|---|\n", rows.len()));
        for c in rows {
            s.push_str(&format!("| {} | {} | {} | {} |\n", c.identity, c.server, tool(c), cat(c)));
        }
        s.push('\n');
    };
    if !p.privileged_widening.is_empty() {
        s.push_str(&format!(
            "> **Warning: widens access to privileged tools** ({}): destructive, execute or financial.\n\n",
            p.privileged_widening.len()
        ));
        table(s, "Privileged access gained", &p.privileged_widening);
    }
    table(s, "Access gained", &p.gained);
    table(s, "Access lost", &p.lost);
    let rules = [("added", &p.rules.added), ("removed", &p.rules.removed), ("changed", &p.rules.changed)];
    if rules.iter().any(|(_, r)| !r.is_empty()) {
        s.push_str("### Rules\n\n");
        for (what, list) in rules {
            for r in list {
                s.push_str(&format!("- {what} `{}` ({}:{})\n", r.id, r.file, r.line));
            }
        }
        s.push('\n');
    }
    if !p.servers.added.is_empty() || !p.servers.removed.is_empty() {
        s.push_str("### Servers\n\n");
        for (what, list) in [("added", &p.servers.added), ("removed", &p.servers.removed)] {
            for r in list {
                s.push_str(&format!(
                    "- {what} `{}` (risk {}, {}{})\n",
                    r.name,
                    r.risk.as_deref().unwrap_or("unknown"),
                    r.operated_by.as_deref().unwrap_or("operator unknown"),
                    r.vendor.as_deref().map(|v| format!(", {v}")).unwrap_or_default()
                ));
            }
        }
        s.push('\n');
    }
    let g = &p.grants;
    let mut lines = Vec::new();
    lines.extend(g.added.iter().map(|i| format!("- grant added: {i}")));
    lines.extend(g.removed.iter().map(|i| format!("- grant removed: {i}")));
    lines.extend(g.reviewed.iter().map(|i| format!("- re-reviewed: {i}")));
    lines.extend(g.tokens_added.iter().map(|(i, t)| format!("- token issued for {i}: {}", t.join(", "))));
    lines.extend(g.tokens_revoked.iter().map(|(i, t)| format!("- token revoked for {i}: {}", t.join(", "))));
    lines.extend(g.expired.iter().map(|(i, t)| format!("- expired token still listed for {i}: {}", t.join(", "))));
    if !lines.is_empty() {
        s.push_str("### Grants\n\n");
        s.push_str(&lines.join("\n"));
        s.push('\n');
    }
}
