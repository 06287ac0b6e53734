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

/// `plan --usage` on a scripted history and a scripted call log: the counts are exact.
#[test]
fn usage_counts_lost_tools_privileged_gains_and_redecided_calls() {
    use gatehouse::units::{rfc3339, unix_now};
    const FILES_SRV: &str = "name: files\ntransport: stdio\ncommand: [x]\npolicy: policies/files.yaml\nsupplier: { operated_by: internal }\ntools: { read_file: { category: read }, write_file: { category: write }, delete_file: { category: destructive } }\n";
    const SQL: &str = "name: sql\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\ntools: { query: { category: read }, list_tables: { category: read } }\n";
    let files_policy = |write_re: &str| format!("tools:\n  read_file:\n    deny_if: [ {{ conditions: [ {{ path: args.path, op: regex, value: \"^/etc\" }} ] }} ]\n  write_file:\n    deny_if: [ {{ conditions: [ {{ path: args.path, op: regex, value: \"{write_re}\" }} ] }} ]\n  delete_file: {{}}\n");
    let g = |id: &str, access: &str, extra: &str| format!("identity: {id}\nkind: human\naccess: {access}\n{extra}");
    let r = TestRepo::new();
    let base = r.commit(
        "base",
        &[
            ("servers/files.yaml", FILES_SRV),
            ("servers/sql.yaml", SQL),
            ("policies/files.yaml", &files_policy("^/etc")),
            ("grants/alice.yaml", &g("alice@example.com", "[ { server: files, tools: [read_file, write_file] } ]", "")),
            ("grants/bob.yaml", &g("bob@example.com", "[ { server: sql, tools: [query, list_tables] } ]", "quotas: [ { name: ceiling, rate_limit: 100/minute } ]\n")),
            ("grants/carol.yaml", &g("carol@example.com", "[ { server: files, tools: [write_file] } ]", "")),
            ("grants/dave.yaml", &g("dave@example.com", "[ { server: files, tools: [read_file] } ]", "")),
        ],
    );
    // bob loses query, write_file's rule changes, dave gains delete_file (destructive).
    let head = r.commit(
        "Narrow and widen (#9)",
        &[
            ("grants/bob.yaml", &g("bob@example.com", "[ { server: sql, tools: [list_tables] } ]", "quotas: [ { name: ceiling, rate_limit: 100/minute } ]\n")),
            ("policies/files.yaml", &files_policy("^/(etc|root)")),
            ("grants/dave.yaml", &g("dave@example.com", "[ { server: files, tools: [read_file, delete_file] } ]", "")),
        ],
    );
    let quota_rule = {
        let files = gatehouse::repo::read(r.path(), Some(&base)).unwrap();
        let c = gatehouse::repo::compile(&files).unwrap();
        c.snapshot.grant("bob@example.com").unwrap().quotas[0].id.to_string()
    };

    // The call log: decision records (and outcome records, which are not counted), all decided
    // by the base commit.
    let data = tempfile::tempdir().unwrap();
    let now = unix_now();
    let ts = |days: i64, n: i64| format!("{}.000Z", rfc3339(now - days * 86_400 - n, 0).trim_end_matches('Z'));
    // (days ago, identity, server, tool, verdict, rule, kind)
    let mut calls: Vec<(i64, &str, &str, &str, &str, String, &str)> = Vec::new();
    let allow = |tool: &str| format!("grants/x.yaml#/access/0/{tool}");
    for d in [1, 2, 5] {
        calls.push((d, "bob@example.com", "sql", "query", "allow", allow("query"), "tool"));
    }
    calls.push((40, "bob@example.com", "sql", "query", "allow", allow("query"), "tool")); // outside the window
    calls.push((3, "bob@example.com", "sql", "list_tables", "allow", allow("list_tables"), "tool"));
    calls.push((4, "bob@example.com", "sql", "list_tables", "allow", allow("list_tables"), "tool"));
    calls.push((4, "bob@example.com", "sql", "list_tables", "deny", quota_rule.clone(), "tool")); // refused by a quota
    calls.push((2, "alice@example.com", "files", "read_file", "allow", allow("read_file"), "tool"));
    calls.push((3, "alice@example.com", "files", "read_file", "allow", allow("read_file"), "tool"));
    calls.push((3, "alice@example.com", "files", "read_file", "deny", "policies/files.yaml#/tools/read_file/deny_if/0".into(), "tool"));
    calls.push((6, "alice@example.com", "files", "read_file", "deny", "gatehouse:tool-quarantined".into(), "tool"));
    calls.push((7, "alice@example.com", "files", "write_file", "allow", allow("write_file"), "tool"));
    calls.push((8, "carol@example.com", "files", "write_file", "allow", allow("write_file"), "tool"));
    calls.push((9, "carol@example.com", "files", "write_file", "allow", allow("write_file"), "tool"));
    calls.push((2, "dave@example.com", "files", "delete_file", "deny", "gatehouse:tool-not-granted".into(), "tool"));
    calls.push((3, "dave@example.com", "files", "delete_file", "deny", "gatehouse:tool-not-granted".into(), "tool"));
    calls.push((1, "erin@example.com", "files", "read_file", "deny", "gatehouse:no-grant".into(), "tool"));
    calls.push((1, "bob@example.com", "sql", "triage", "allow", allow("triage"), "prompt")); // not a tool call
    let store = gatehouse::record::store::Store::open(data.path()).unwrap();
    let rows: Vec<_> = calls.iter().enumerate().map(|(i, c)| (i as i64, c.0, c.1.to_string(), c.2.to_string(), c.3.to_string(), c.4.to_string(), c.5.clone(), c.6.to_string())).collect();
    let (base2, ts_of): (String, Vec<String>) = (base.clone(), rows.iter().map(|r| ts(r.1, r.0)).collect());
    store
        .write_blocking(move |c| {
            let mut seq = 0;
            for (r, t) in rows.iter().zip(&ts_of) {
                let (_, _, identity, server, tool, verdict, rule, kind) = r;
                let outcome = if verdict == "allow" { "unknown" } else { "denied" };
                let record = serde_json::json!({ "kind": kind, "identity": identity, "server": server, "tool": tool, "verdict": verdict, "rule": rule, "policy_commit": base2, "arg_keys": ["path"] });
                seq += 1;
                c.sqlite().unwrap().execute("INSERT INTO calls_v4 (seq, ts, record, hash, identity, server, tool, category, verdict, outcome) VALUES (?1, ?2, ?3, '', ?4, ?5, ?6, NULL, ?7, ?8)", rusqlite::params![seq, t, record.to_string(), identity, server, tool, verdict, outcome])?;
                if verdict == "allow" {
                    seq += 1;
                    c.sqlite().unwrap().execute("INSERT INTO calls_v4 (seq, ts, record, hash, identity, server, tool, category, verdict, outcome) VALUES (?1, ?2, ?3, '', ?4, ?5, ?6, NULL, ?7, 'ok')", rusqlite::params![seq, t, record.to_string(), identity, server, tool, verdict])?;
                }
            }
            Ok::<(), gatehouse::record::store::sql::Error>(())
        })
        .unwrap();
    drop(store);

    let dir = r.path().to_str().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let run = gatehouse(&["plan", "--repo", dir, "--base", &base, "--head", &head, "--format", "json", "--usage", "--data-dir", data_dir]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    let u = &v["usage"];
    assert_eq!(u["days"], 30);
    assert_eq!(u["calls"], 16, "tool decisions in the window: {u:#}");
    let last = ts(1, 0)[..10].to_string();
    assert_eq!(u["lost"], serde_json::json!([{ "identity": "bob@example.com", "server": "sql", "tool": "query", "category": "read", "calls": 3, "last_call": last, "denied": 0 }]));
    assert_eq!(u["privileged_gained"], serde_json::json!([{ "identity": "dave@example.com", "server": "files", "tool": "delete_file", "category": "destructive", "denied_attempts": 2 }]));
    let redecided: Vec<String> = u["redecided"].as_array().unwrap().iter().map(|r| format!("{} {}/{} {}->{} {}", r["identity"].as_str().unwrap(), r["server"].as_str().unwrap(), r["tool"].as_str().unwrap(), r["from"].as_str().unwrap(), r["to"].as_str().unwrap(), r["calls"])).collect();
    assert_eq!(redecided, ["bob@example.com sql/query allow->deny 3", "dave@example.com files/delete_file deny->allow 2"]);
    assert_eq!(u["redecided"][0]["rule"], "gatehouse:tool-not-granted");
    assert_eq!(
        u["depends_on_arguments"],
        serde_json::json!([
            { "identity": "alice@example.com", "server": "files", "tool": "write_file", "calls": 1, "rules": ["policies/files.yaml#/tools/write_file/deny_if/0"] },
            { "identity": "carol@example.com", "server": "files", "tool": "write_file", "calls": 2, "rules": ["policies/files.yaml#/tools/write_file/deny_if/0"] },
        ]),
        "read_file's unchanged rule decides alice's reads exactly as recorded; the changed write rule cannot be replayed"
    );
    assert_eq!(u["not_replayed"], serde_json::json!({ "gatehouse:tool-quarantined": 1 }));
    assert!(u["note"].as_str().unwrap().contains("argument values are never logged"));

    let md = gatehouse(&["plan", "--repo", dir, "--base", &base, "--head", &head, "--usage", "--data-dir", data_dir]);
    assert_eq!(md.code, 1);
    assert!(md.stdout.contains(&format!("- bob@example.com loses sql/query: 3 calls in the last 30 days, last on {last}")), "{}", md.stdout);
    assert!(md.stdout.contains("dave@example.com gains files/delete_file (destructive); 2 denied attempt(s)"), "{}", md.stdout);
    assert!(md.stdout.contains("| bob@example.com | sql/query | allow | deny | 3 | `gatehouse:tool-not-granted` |"), "{}", md.stdout);
    assert!(md.stdout.contains("**3 recorded call(s) depend on argument conditions and cannot be replayed**"), "{}", md.stdout);
}
