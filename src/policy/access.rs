//! The effective access matrix of a snapshot — who could be allowed to call which tool, read
//! which resources and get which prompts — and the difference between two of them. Pure.
//!
//! The tools of a server are those its file declares, those access entries name, and those its
//! policies list; a grant whose policies would let through tools nobody declared (`tools: "*"`
//! with no policy listing them) is shown with the tool `*` ("every tool the upstream offers").
//! Resources and prompts share the `tool` column with a prefix no tool name can have (tool names
//! hold no `:`): `resource:<pattern>` for each pattern of an access entry (`resource:*` for every
//! resource) and `prompt:<name>` (`prompt:*`).
//!
//! An identity-provider group that roles name (`roles/x.yaml` `groups:`) has rows of its own,
//! identity `group:<name>`: what those roles give any signed-in member with a grant, on their own
//! (a member's own grant entries can only narrow a tool both reach).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::policy::eval::may_allow;
use crate::policy::snapshot::{Grant, Kind, Snapshot, ToolSet};

/// Prefix of a resource pattern's cell in the `tool` column.
pub const RESOURCE_PREFIX: &str = "resource:";
/// Prefix of a prompt's cell in the `tool` column.
pub const PROMPT_PREFIX: &str = "prompt:";

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Cell {
    pub identity: String,
    pub server: String,
    pub tool: String,
}

/// Who gains and who loses which tool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub gained: Vec<Cell>,
    pub lost: Vec<Cell>,
}

/// Every (identity, server, tool) some call could be allowed for.
pub fn matrix(snap: &Snapshot) -> BTreeSet<Cell> {
    let mut out = BTreeSet::new();
    for grant in &snap.grants {
        cells(snap, grant, &mut out);
    }
    let groups: BTreeSet<&str> = snap.roles.values().flat_map(|r| r.groups.iter().map(String::as_str)).collect();
    for group in groups {
        let identity = format!("group:{group}");
        let nobody = Grant {
            name: identity.clone(),
            file: String::new(),
            identity,
            kind: Kind::Human,
            owner: None,
            tokens: Vec::new(),
            access: Vec::new(),
            by_server: Default::default(),
            quotas: Vec::new(),
            review: None,
        };
        let roles: Vec<_> = snap.roles.values().filter(|r| r.groups.iter().any(|g| g == group)).map(|r| (r, format!("group {group}"))).collect();
        cells(snap, &nobody.with_roles(&roles), &mut out);
    }
    out
}

/// The cells of one grant.
fn cells(snap: &Snapshot, grant: &Grant, out: &mut BTreeSet<Cell>) {
    {
        for server in grant.by_server.keys() {
            let Some(s) = snap.servers.get(server) else { continue };
            let mut tools: BTreeSet<&str> = s.tools.keys().map(String::as_str).collect();
            let mut open_ended = false;
            let policies = s.policy.iter().chain(grant.by_server[server].iter().filter_map(|&i| grant.access[i].policy.as_ref()));
            for p in policies {
                tools.extend(p.tools.keys().map(String::as_str));
                open_ended |= p.default_allow;
            }
            for &i in &grant.by_server[server] {
                match &grant.access[i].tools {
                    ToolSet::Only(names) => tools.extend(names.iter().map(String::as_str)),
                    ToolSet::All => open_ended |= grant.access[i].policy.is_none() && s.policy.is_none(),
                }
            }
            for tool in tools {
                if may_allow(snap, grant, server, tool) {
                    out.insert(Cell { identity: grant.identity.clone(), server: server.clone(), tool: tool.to_string() });
                }
            }
            if open_ended && grant.by_server[server].iter().any(|&i| matches!(grant.access[i].tools, ToolSet::All)) {
                out.insert(Cell { identity: grant.identity.clone(), server: server.clone(), tool: "*".into() });
            }
            for &i in &grant.by_server[server] {
                let a = &grant.access[i];
                let resources = a.resources.iter().map(|r| format!("{RESOURCE_PREFIX}{}", r.pattern));
                let prompts = a.prompts.iter().map(|r| format!("{PROMPT_PREFIX}{}", r.label()));
                for tool in resources.chain(prompts) {
                    out.insert(Cell { identity: grant.identity.clone(), server: server.clone(), tool });
                }
            }
        }
    }
}

/// What changes from `old` to `new`.
pub fn diff(old: &BTreeSet<Cell>, new: &BTreeSet<Cell>) -> Diff {
    Diff { gained: new.difference(old).cloned().collect(), lost: old.difference(new).cloned().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{Files, compile};

    fn snap(grant: &str) -> Snapshot {
        let files = Files::from_memory([
            ("servers/s.yaml", "name: s\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\ntools: { a: { category: read }, b: { category: destructive } }\n"),
            ("policies/p.yaml", "tools: { a: {} }\n"),
            ("grants/g.yaml", grant),
        ]);
        compile(&files).unwrap().snapshot
    }

    #[test]
    fn matrix_and_diff() {
        let narrow = snap("identity: g\nkind: human\naccess: [ { server: s, tools: \"*\", policy: policies/p.yaml } ]\n");
        let wide = snap("identity: g\nkind: human\naccess: [ { server: s, tools: \"*\" } ]\n");
        let cells = |s: &Snapshot| matrix(s).into_iter().map(|c| format!("{} {} {}", c.identity, c.server, c.tool)).collect::<Vec<_>>();
        assert_eq!(cells(&narrow), ["g s a"]);
        assert_eq!(cells(&wide), ["g s *", "g s a", "g s b"]);
        let d = diff(&matrix(&narrow), &matrix(&wide));
        let gained: Vec<&str> = d.gained.iter().map(|c| c.tool.as_str()).collect();
        assert_eq!(gained, ["*", "b"]);
        assert!(d.lost.is_empty());
    }

    #[test]
    fn resources_and_prompts_are_cells_with_a_prefix() {
        let none = snap("identity: g\nkind: human\naccess: [ { server: s, tools: [a] } ]\n");
        let some = snap("identity: g\nkind: human\naccess: [ { server: s, tools: [a], resources: [\"repo://x/**\", \"*\"], prompts: [triage] }, { server: s, prompts: \"*\" } ]\n");
        let cells = |s: &Snapshot| matrix(s).into_iter().map(|c| format!("{} {} {}", c.identity, c.server, c.tool)).collect::<Vec<_>>();
        assert_eq!(cells(&none), ["g s a"]);
        assert_eq!(cells(&some), ["g s a", "g s prompt:*", "g s prompt:triage", "g s resource:*", "g s resource:repo://x/**"]);
        let d = diff(&matrix(&some), &matrix(&none));
        assert_eq!(d.lost.len(), 4);
    }

    #[test]
    fn groups_have_rows_of_their_own() {
        let files = Files::from_memory([
            ("servers/s.yaml", "name: s\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\ntools: { a: { category: read }, b: { category: destructive } }\n"),
            ("roles/ops.yaml", "groups: [eng-oncall, sre]\naccess: [ { server: s, tools: [b] } ]\n"),
            ("grants/g.yaml", "identity: g\nkind: human\naccess: [ { server: s, tools: [a] } ]\n"),
        ]);
        let snap = compile(&files).unwrap().snapshot;
        let cells: Vec<String> = matrix(&snap).into_iter().map(|c| format!("{} {} {}", c.identity, c.server, c.tool)).collect();
        assert_eq!(cells, ["g s a", "group:eng-oncall s b", "group:sre s b"]);
    }
}
