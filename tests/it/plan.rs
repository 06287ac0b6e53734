//! `gatehouse plan` on a scripted history: what a pull request's reviewer reads.

use serde_json::Value;

use crate::support::{TestRepo, gatehouse};

const FILES: &str = "name: files\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal, risk: medium }\ntools: { read_file: { category: read }, write_file: { category: write }, delete_file: { category: destructive } }\n";
const PAY: &str = "name: pay\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: external, risk: high, vendor: Pay Ltd }\ntools: { charge: { category: financial } }\n";
const ROLE: &str = "access: [ { server: files, tools: [read_file] } ]\n";

fn grant(identity: &str, extra: &str) -> String {
    format!("identity: {identity}\nkind: human\naccess:\n  - {{ role: reader }}\n{extra}")
}

fn plan(repo: &TestRepo, base: &str, head: &str) -> (i32, Value, String) {
    let dir = repo.path().to_str().unwrap();
    let json = gatehouse(&["plan", "--repo", dir, "--base", base, "--head", head, "--format", "json"]);
    let md = gatehouse(&["plan", "--repo", dir, "--base", base, "--head", head]);
    assert_eq!(json.code, md.code);
    let v = if json.code == 2 { Value::Null } else { serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", json.stdout)) };
    (json.code, v, md.stdout)
}

fn cells(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|c| format!("{} {} {}", c["identity"].as_str().unwrap(), c["server"].as_str().unwrap(), c["tool"].as_str().unwrap())).collect()
}

#[test]
fn plans_along_a_scripted_history() {
    let r = TestRepo::new();
    let c0 = r.commit("base", &[("servers/files.yaml", FILES), ("servers/pay.yaml", PAY), ("roles/reader.yaml", ROLE), ("grants/alice.yaml", &grant("alice", ""))]);

    // A README edit changes no access: exit 0.
    let c1 = r.commit("docs", &[("README.md", "hello\n")]);
    let (code, v, md) = plan(&r, &c0, &c1);
    assert_eq!(code, 0);
    assert!(v["gained"].as_array().unwrap().is_empty());
    assert!(md.contains("No access change."), "{md}");

    // A grant added.
    let c2 = r.commit("Add bob (#2)", &[("grants/bob.yaml", &grant("bob", ""))]);
    let (code, v, _) = plan(&r, &c1, &c2);
    assert_eq!(code, 1);
    assert_eq!(v["grants"]["added"], serde_json::json!(["bob"]));
    assert_eq!(cells(&v, "gained"), ["bob files read_file"]);

    // A tool added to a role used by two grants: both identities gain it.
    let c3 = r.commit("Readers may write (#3)", &[("roles/reader.yaml", "access: [ { server: files, tools: [read_file, write_file] } ]\n")]);
    let (code, v, _) = plan(&r, &c2, &c3);
    assert_eq!(code, 1);
    assert_eq!(cells(&v, "gained"), ["alice files write_file", "bob files write_file"]);
    assert!(v["privileged_widening"].as_array().unwrap().is_empty(), "write is not privileged");

    // Destructive widening is called out first.
    let c4 = r.commit("Alice may delete (#4)", &[("grants/alice.yaml", &grant("alice", "  - { server: files, tools: [delete_file] }\n"))]);
    let (code, v, md) = plan(&r, &c3, &c4);
    assert_eq!(code, 1);
    assert_eq!(v["privileged_widening"][0]["tool"], "delete_file");
    assert_eq!(v["privileged_widening"][0]["category"], "destructive");
    let warning = md.find("widens access to privileged tools").expect(&md);
    assert!(warning < md.find("### Access gained").unwrap(), "privileged first:\n{md}");

    // A policy narrows a tool: the rule is added with file:line, the cell stays (conditions).
    let policy = "tools:\n  read_file: {}\n  write_file:\n    deny_if: [ { name: no etc, conditions: [ { path: args.path, op: regex, value: \"^/etc\" } ] } ]\n  delete_file: {}\n";
    let c5 = r.commit("Narrow writes (#5)", &[("policies/files.yaml", policy), ("servers/files.yaml", &FILES.replace("supplier:", "policy: policies/files.yaml\nsupplier:"))]);
    let (code, v, md) = plan(&r, &c4, &c5);
    assert_eq!(code, 1);
    let added: Vec<&str> = v["rules"]["added"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(added.contains(&"policies/files.yaml#/tools/write_file/deny_if/no etc"), "{added:?}");
    assert!(md.contains("(policies/files.yaml:4)"), "{md}");

    // A server removed (with the grant entries that named it): its grants lose everything there.
    let with_pay = grant("alice", "  - { server: files, tools: [delete_file] }\n  - { server: pay, tools: \"*\" }\n");
    let c6 = r.commit("Alice pays (#6)", &[("grants/alice.yaml", &with_pay)]);
    r.write(&[("grants/alice.yaml", &grant("alice", "  - { server: files, tools: [delete_file] }\n"))]);
    std::fs::remove_file(r.path().join("servers/pay.yaml")).unwrap();
    let c7 = r.commit("Drop the payment provider (#7)", &[]);
    let (code, v, md) = plan(&r, &c6, &c7);
    assert_eq!(code, 1);
    let lost = cells(&v, "lost");
    assert!(lost.contains(&"alice pay charge".to_string()), "{lost:?}");
    assert!(lost.iter().all(|c| c.starts_with("alice pay ")), "only the removed server's access is lost: {lost:?}");
    assert_eq!(v["servers"]["removed"][0]["name"], "pay");
    assert_eq!(v["servers"]["removed"][0]["risk"], "high");
    assert!(md.contains("removed `pay` (risk high, external, Pay Ltd)"), "{md}");

    // Resources and prompts: cells of their own, shown as code, never privileged.
    let with_docs = grant("alice", "  - { server: files, tools: [delete_file], resources: [\"file:///srv/docs/**\"], prompts: [summarize] }\n");
    let c8 = r.commit("Alice reads the docs (#8)", &[("grants/alice.yaml", &with_docs)]);
    let (code, v, md) = plan(&r, &c7, &c8);
    assert_eq!(code, 1);
    assert_eq!(cells(&v, "gained"), ["alice files prompt:summarize", "alice files resource:file:///srv/docs/**"]);
    assert!(v["privileged_widening"].as_array().unwrap().is_empty());
    assert!(md.contains("| alice | files | `resource:file:///srv/docs/**` | resource |"), "{md}");
    assert!(md.contains("| alice | files | `prompt:summarize` | prompt |"), "{md}");
    r.commit("Alice reads the docs no more (#9)", &[("grants/alice.yaml", &grant("alice", "  - { server: files, tools: [delete_file] }\n"))]);

    // JSON is stable: the same plan twice is byte-identical.
    let dir = r.path().to_str().unwrap();
    let a = gatehouse(&["plan", "--repo", dir, "--base", &c0, "--head", &c7, "--format", "json"]);
    let b = gatehouse(&["plan", "--repo", dir, "--base", &c0, "--head", &c7, "--format", "json"]);
    assert_eq!(a.stdout, b.stdout);

    // A head that fails check: exit 2 with its errors.
    let bad = r.commit("broken", &[("grants/carol.yaml", "identity: carol\nkind: agent\n")]);
    let run = gatehouse(&["plan", "--repo", dir, "--base", &c7, "--head", &bad]);
    assert_eq!(run.code, 2);
    assert!(run.stdout.contains("grants/carol.yaml:2:7: error: an agent needs an owner"), "{}", run.stdout);
}
