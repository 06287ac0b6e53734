//! The engine, driven through compiled repositories: one `check` per scenario, each call
//! written as `identity server tool args => verdict rule-substring`.

use serde_json::Value;

use crate::policy::eval::may_allow;
use crate::policy::{Call, Verdict, evaluate};
use crate::repo::{Files, compile};
use crate::policy::snapshot::Snapshot;

const SEED_FILES: &str = r#"{ "version": "1", "default": "deny",
  "tools": {
    "list_directory": {},
    "read_file": { "deny_if": [ { "conditions": [
        { "path": "args.path", "op": "regex", "value": "^(?!/srv/projects/)" } ] } ] } } }"#;

const SEED_SQL: &str = r#"{ "version": "1", "default": "deny",
  "tools": { "list_tables": {},
    "query": { "deny_if": [ { "conditions": [
        { "path": "args.sql", "op": "regex", "value": "(?i)(DROP|TRUNCATE|DELETE|ALTER)\\s" } ] } ] } } }"#;

const RULES: &str = r#"
version: "1"
default: deny
hide: [transfer_repository]
tools:
  create_charge:
    rules:
      - name: max single charge
        conditions: [ { path: args.amount, op: lte, value: 50000 } ]
        on_deny: Single charge cannot exceed $500.00
      - name: daily spend cap
        conditions: [ { path: state.create_charge.daily_spend, op: lte, value: 1000000 } ]
        state: { counter: daily_spend, window: day, increment_from: args.amount }
  delete_customer:
    rules: [ { name: block deletion, action: deny } ]
  refund:
    rules:
      - name: big refunds blocked
        action: deny
        conditions: [ { path: args.amount, op: gt, value: 1000 } ]
  transfer_repository: {}
  "*":
    rules: [ { name: global rate limit, rate_limit: 60/minute } ]
"#;

fn server(name: &str, policy: Option<&str>) -> String {
    let policy = policy.map(|p| format!("policy: {p}\n")).unwrap_or_default();
    format!("name: {name}\ntransport: stdio\ncommand: [x]\n{policy}supplier: {{ operated_by: internal }}\n")
}

fn snapshot(extra: &[(&str, &str)]) -> Snapshot {
    let files_srv = server("files", None);
    let sql_srv = server("sql", None);
    let pay_srv = server("pay", Some("policies/rules.yaml"));
    let mut files = vec![
        ("servers/files.yaml", files_srv.as_str()),
        ("servers/sql.yaml", sql_srv.as_str()),
        ("servers/pay.yaml", pay_srv.as_str()),
        ("policies/files.json", SEED_FILES),
        ("policies/sql.json", SEED_SQL),
        ("policies/rules.yaml", RULES),
    ];
    files.extend_from_slice(extra);
    match compile(&Files::from_memory(files)) {
        Ok(c) => c.snapshot,
        Err(d) => panic!("fixture does not compile:\n{d}"),
    }
}

/// Each line: `identity server tool {json args} => allow|deny [rule substring]`.
fn check(snap: &Snapshot, script: &str) {
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (call, expect) = line.split_once("=>").expect("=> in line");
        let mut it = call.trim().splitn(4, ' ');
        let (identity, server, tool) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let args: Value = serde_json::from_str(it.next().unwrap_or("{}")).expect("args json");
        let mut want = expect.trim().splitn(2, ' ');
        let verdict = match want.next().unwrap() {
            "allow" => Verdict::Allow,
            "deny" => Verdict::Deny,
            v => panic!("bad verdict {v}"),
        };
        let rule = want.next().unwrap_or("");
        let d = evaluate(snap, &Call { identity, server, tool, args: &args });
        assert!(
            d.verdict == verdict && d.rule.contains(rule),
            "\n  call:     {call}\n  expected: {expect}\n  got:      {:?} by {} ({})\n",
            d.verdict,
            d.rule,
            d.message
        );
    }
}

#[test]
fn seed_file_policy() {
    let s = snapshot(&[(
        "grants/reader.yaml",
        "identity: reader\nkind: agent\nowner: a@x\naccess: [ { server: files, tools: \"*\", policy: policies/files.json } ]\n",
    )]);
    check(
        &s,
        r#"
        reader files list_directory {"path": "/"} => allow grants/reader.yaml#/access/0
        reader files read_file {"path": "/srv/projects/app/a.rs"} => allow
        reader files read_file {"path": "/etc/passwd"} => deny policies/files.json#/tools/read_file/deny_if/0
        reader files read_file {"path": "/srv/projects"} => deny read_file/deny_if/0
        reader files read_file {} => deny read_file/deny_if/0
        reader files read_file {"path": 7} => deny read_file/deny_if/0
        reader files write_file {"path": "/srv/projects/a"} => deny policies/files.json#/default
        "#,
    );
}

#[test]
fn seed_sql_policy() {
    let s = snapshot(&[(
        "grants/analyst.yaml",
        "identity: analyst@x\nkind: human\naccess: [ { server: sql, tools: \"*\", policy: policies/sql.json } ]\n",
    )]);
    check(
        &s,
        r#"
        analyst@x sql list_tables {} => allow
        analyst@x sql query {"sql": "SELECT * FROM orders"} => allow
        analyst@x sql query {"sql": "SELECT 1; DELETE FROM t"} => deny policies/sql.json#/tools/query/deny_if/0
        analyst@x sql query {"sql": "drop table t"} => deny query/deny_if/0
        analyst@x sql query {"sql": "ALTER\tTABLE t"} => deny query/deny_if/0
        analyst@x sql query {"sql": "select 'dropped' from t"} => allow
        analyst@x sql query {"sql": ["DROP TABLE t"]} => deny query/deny_if/0
        analyst@x sql query {} => deny query/deny_if/0
        "#,
    );
}

#[test]
fn rules_style_and_quotas_are_carried_not_counted() {
    let s = snapshot(&[("grants/payer.yaml", "identity: payer\nkind: human\naccess: [ { server: pay, tools: \"*\" } ]\n")]);
    check(
        &s,
        r#"
        payer pay create_charge {"amount": 500} => allow grants/payer.yaml#/access/0
        payer pay create_charge {"amount": 50001} => deny policies/rules.yaml#/tools/create_charge/rules/max single charge
        payer pay create_charge {"amount": "5"} => deny max single charge
        payer pay create_charge {} => deny max single charge
        payer pay delete_customer {"id": "c"} => deny rules/block deletion
        payer pay refund {"amount": 10} => allow
        payer pay refund {"amount": 5000} => deny rules/big refunds blocked
        payer pay refund {} => deny big refunds blocked
        payer pay transfer_repository {} => deny policies/rules.yaml#/hide/0
        payer pay unlisted {} => deny policies/rules.yaml#/default
        "#,
    );
    let args = serde_json::json!({ "amount": 500 });
    let d = evaluate(&s, &Call { identity: "payer", server: "pay", tool: "create_charge", args: &args });
    let names: Vec<&str> = d.quotas.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["daily spend cap", "global rate limit"]);
    let d = evaluate(&s, &Call { identity: "payer", server: "pay", tool: "create_charge", args: &serde_json::json!({"amount": 50001}) });
    assert!(d.quotas.is_empty(), "a denied call carries no quota");
    let message = &*d.message;
    assert_eq!(message, "Single charge cannot exceed $500.00");
}

#[test]
fn grant_scope_comes_first() {
    let s = snapshot(&[
        ("grants/a.yaml", "identity: a@x\nkind: human\naccess: [ { server: files, tools: [list_directory], policy: policies/files.json } ]\n"),
    ]);
    check(
        &s,
        r#"
        nobody files list_directory {} => deny gatehouse:no-grant
        a@x sql list_tables {} => deny gatehouse:no-grant
        a@x files read_file {"path": "/srv/projects/x"} => deny gatehouse:tool-not-granted
        a@x nosuchserver x {} => deny gatehouse:no-grant
        a files list_directory {} => allow grants/a.yaml#/access/0
        "#,
    );
}

#[test]
fn baseline_and_every_reaching_entry_must_allow() {
    let s = snapshot(&[
        ("roles/small.yaml", "access: [ { server: pay, tools: [create_charge], policy: policies/small.yaml } ]\n"),
        (
            "policies/small.yaml",
            "version: \"1\"\ntools:\n  create_charge:\n    deny_if: [ { name: over 100, conditions: [ { path: args.amount, op: gt, value: 100 } ] } ]\n",
        ),
        ("grants/both.yaml", "identity: both\nkind: human\naccess:\n  - { server: pay, tools: \"*\" }\n  - { role: small }\n"),
    ]);
    check(
        &s,
        r#"
        both pay create_charge {"amount": 50} => allow grants/both.yaml#/access/0
        both pay create_charge {"amount": 500} => deny policies/small.yaml#/tools/create_charge/deny_if/over 100
        both pay create_charge {"amount": 60000} => deny max single charge
        both pay delete_customer {} => deny block deletion
        "#,
    );
}

#[test]
fn role_entries_name_the_role_and_the_grant() {
    let s = snapshot(&[
        ("roles/reader.yaml", "access: [ { server: files, tools: [list_directory] } ]\n"),
        ("grants/r.yaml", "identity: r\nkind: human\naccess: [ { role: reader } ]\n"),
    ]);
    check(&s, "r files list_directory {} => allow roles/reader.yaml#/access/0 via grants/r.yaml#/access/0");
}

#[test]
fn default_allow_still_applies_wildcard_rules_and_hide() {
    let s = snapshot(&[
        (
            "policies/open.yaml",
            "version: \"1\"\ndefault: allow\nhide: [secret]\ntools:\n  \"*\":\n    rules: [ { name: need ticket, conditions: [ { path: args.ticket, op: exists } ] } ]\n",
        ),
        ("grants/o.yaml", "identity: o\nkind: human\naccess: [ { server: files, tools: \"*\", policy: policies/open.yaml } ]\n"),
    ]);
    check(
        &s,
        r#"
        o files anything {"ticket": "T-1"} => allow
        o files anything {} => deny policies/open.yaml#/tools/*/rules/need ticket
        o files secret {"ticket": "T-1"} => deny policies/open.yaml#/hide/0
        "#,
    );
}

#[test]
fn listing_hides_what_can_never_be_allowed() {
    let s = snapshot(&[("grants/p.yaml", "identity: p\nkind: human\naccess: [ { server: pay, tools: \"*\" }, { server: files, tools: [list_directory] } ]\n")]);
    let g = s.grant("p").unwrap();
    assert!(may_allow(&s, g, "pay", "create_charge"), "conditional rules do not hide a tool");
    assert!(!may_allow(&s, g, "pay", "transfer_repository"), "hidden");
    assert!(!may_allow(&s, g, "pay", "delete_customer"), "always denied");
    assert!(!may_allow(&s, g, "pay", "unlisted"), "default deny");
    assert!(may_allow(&s, g, "files", "list_directory"));
    assert!(!may_allow(&s, g, "files", "read_file"), "not granted");
    assert!(!may_allow(&s, g, "sql", "list_tables"), "no access to the server");
}

#[test]
fn a_refused_argument_is_explained_by_what_was_refused_never_by_its_value() {
    let policy = r#"{ "version": "1", "tools": { "read_file": { "require": [ { "path": "args.path", "op": "path_within", "value": ["/srv/projects"] } ] },
      "count": { "require": [ { "path": "args.n", "op": "lte", "value": 5 } ] } } }"#;
    let s = snapshot(&[
        ("policies/within.json", policy),
        ("grants/reader.yaml", "identity: reader\nkind: agent\nowner: a@x\naccess: [ { server: files, tools: \"*\", policy: policies/within.json } ]\n"),
    ]);
    let decide = |tool: &str, args: Value| {
        let d = evaluate(&s, &Call { identity: "reader", server: "files", tool, args: &args });
        assert_eq!(d.verdict, Verdict::Deny, "{tool} {args}");
        d.message.to_string()
    };
    let cases = [
        (serde_json::json!({ "path": "/srv/projects/../../etc/passwd" }), "args.path was refused: it contains a '..' component"),
        (serde_json::json!({ "path": "/srv/projects/a\u{0}b" }), "args.path was refused: it contains a NUL character"),
        (serde_json::json!({ "path": "/srv/projects/%2e%2e/x" }), "args.path was refused: it contains '%'"),
        (serde_json::json!({ "path": "/srv/projects/./x" }), "args.path was refused: it contains a '.' component"),
        (serde_json::json!({ "path": "srv/projects/x" }), "args.path was refused: it is not an absolute path"),
        (serde_json::json!({ "path": "~/x" }), "args.path was refused: it is not an absolute path"),
        (serde_json::json!({ "path": 7 }), "args.path must be a string path, not a number"),
        (serde_json::json!({}), "args.path is missing"),
    ];
    for (args, want) in cases {
        let m = decide("read_file", args.clone());
        assert!(m.contains(want), "{args}: {m}");
        assert!(!m.contains("etc/passwd") && !m.contains("%2e"), "no argument value in the message: {m}");
    }
    assert!(decide("count", serde_json::json!({ "n": "five" })).contains("args.n must be a number, not a string"));
    // Outside the directories: a plain False, the rule's own message.
    let m = decide("read_file", serde_json::json!({ "path": "/etc/passwd" }));
    assert!(!m.contains("refused"), "{m}");
}

#[test]
fn resources_and_prompts_are_decided_by_the_access_entries_alone() {
    use crate::policy::eval::{decide_prompt, decide_resource, grants_prompts, grants_resources, may_use_template};
    let files = Files::from_memory([
        ("servers/docs.yaml", "name: docs\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\npolicy: policies/base.yaml\n"),
        ("servers/other.yaml", "name: other\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\n"),
        ("policies/base.yaml", "default: deny\ntools: {}\n"),
        ("roles/reader.yaml", "access:\n  - { server: docs, resources: [\"docs://handbook/**\"], prompts: [summarize] }\n"),
        ("grants/a.yaml", "identity: a\nkind: human\naccess:\n  - { server: docs, tools: [search], resources: [\"docs://public/*\"], prompts: [triage] }\n  - { role: reader }\n  - { server: other, tools: \"*\" }\n"),
    ]);
    let snap = compile(&files).unwrap_or_else(|d| panic!("{d}")).snapshot;
    let g = snap.grant("a").unwrap();
    let d = decide_resource(g, "docs", "docs://public/readme");
    assert!(d.is_allow());
    assert_eq!(&*d.rule, "grants/a.yaml#/access/0/resources/0");
    assert_eq!(&*d.message, "allowed by grants/a.yaml#/access/0/resources/0 (docs://public/*)");
    let d = decide_resource(g, "docs", "docs://handbook/a/b");
    assert_eq!(&*d.rule, "roles/reader.yaml#/access/0/resources/0 via grants/a.yaml#/access/1", "the server baseline (default: deny, no tools) does not apply");
    let d = decide_resource(g, "docs", "docs://private/x?token=SECRET");
    assert_eq!((d.verdict, &*d.rule), (Verdict::Deny, "gatehouse:resource-not-granted"));
    assert!(!d.message.contains("SECRET") && !d.message.contains("private"), "{}", d.message);
    assert_eq!(&*decide_resource(g, "other", "docs://public/readme").rule, "gatehouse:resource-not-granted", "none without resources:");
    assert_eq!(&*decide_resource(g, "nope", "docs://public/readme").rule, "gatehouse:no-grant");
    assert!(decide_prompt(g, "docs", "triage").is_allow());
    assert_eq!(&*decide_prompt(g, "docs", "summarize").rule, "roles/reader.yaml#/access/0/prompts/0 via grants/a.yaml#/access/1");
    assert_eq!(&*decide_prompt(g, "docs", "delete").rule, "gatehouse:prompt-not-granted");
    assert_eq!(&*decide_prompt(g, "other", "triage").rule, "gatehouse:prompt-not-granted");
    assert!(grants_resources(g, "docs") && grants_prompts(g, "docs") && !grants_resources(g, "other") && !grants_prompts(g, "other"));
    assert!(may_use_template(g, "docs", "docs://public/{name}"));
    assert!(may_use_template(g, "docs", "docs://handbook/{+path}"));
    assert!(!may_use_template(g, "docs", "docs://private/{name}"));
    assert!(!may_use_template(g, "other", "docs://public/{name}"));
}
