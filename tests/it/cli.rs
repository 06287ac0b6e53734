//! `check`, `test` and `eval` as a user runs them: on the shipped example, on a git repository
//! at a revision versus its working tree, and on a policy repository inside a larger repository.

use serde_json::Value;

use crate::support::{TestRepo, crate_dir, gatehouse};

const SERVER: &str = "name: files\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\n";
const GRANT: &str = "identity: reader\nkind: agent\nowner: alice@example.com\naccess: [ { server: files, tools: [read_file] } ]\n";

fn eval_json(repo: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["eval", "--repo", repo, "--identity", "reader", "--server", "files", "--tool", "read_file"];
    args.extend_from_slice(extra);
    let run = gatehouse(&args);
    assert!(run.code == 0 || run.code == 1, "eval failed: {}", run.stderr);
    (run.code, serde_json::from_str(&run.stdout).expect("eval prints JSON"))
}

#[test]
fn the_example_repository_checks_and_its_tests_pass() {
    let repo = crate_dir().join("examples/policy-repo");
    let repo = repo.to_str().unwrap();
    let check = gatehouse(&["check", "--repo", repo]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("ok: 3 servers"), "{}", check.stdout);
    let test = gatehouse(&["test", "--repo", repo]);
    assert_eq!(test.code, 0, "{}", test.stdout);
    let last = test.stdout.lines().last().unwrap();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 20, "the example covers each policy: {last}");
}

#[test]
fn eval_prints_the_decision_and_exits_by_verdict() {
    let repo = crate_dir().join("examples/policy-repo");
    let repo = repo.to_str().unwrap();
    let run = gatehouse(&[
        "eval", "--repo", repo, "--identity", "bob@example.com", "--server", "sql", "--tool", "query",
        "--args", r#"{"sql": "SELECT 1; DELETE FROM t"}"#,
    ]);
    assert_eq!(run.code, 1, "deny exits 1");
    let d: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(d["verdict"], "deny");
    assert_eq!(d["rule"], "policies/sql-read.json#/tools/query/deny_if/0");
    assert!(d["commit"].is_null(), "read from the working tree");
    for key in ["verdict", "rule", "message", "commit"] {
        assert!(d.get(key).is_some(), "missing {key}");
    }
    let run = gatehouse(&[
        "eval", "--repo", repo, "--identity", "alice@example.com", "--server", "payments", "--tool", "create_charge",
        "--args", r#"{"amount": 100, "currency": "usd"}"#,
    ]);
    assert_eq!(run.code, 0, "allow exits 0");
    let d: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(d["verdict"], "allow");
    let quotas = d["quotas"].as_array().unwrap();
    assert!(quotas.iter().all(|q| q["status"] == "within" && q["count"] == 0.0), "{quotas:?}");
    let cap = quotas.iter().find(|q| q["name"] == "daily spend cap").expect("daily spend cap listed");
    assert_eq!(cap["counter"], "state.create_charge.daily_spend");

    // With a starting count the cap decides, as the daemon would with that much already spent.
    let charge = |counter: &str| {
        gatehouse(&[
            "eval", "--repo", repo, "--identity", "alice@example.com", "--server", "payments", "--tool", "create_charge",
            "--args", r#"{"amount": 100, "currency": "usd"}"#, "--counter", counter,
        ])
    };
    let run = charge("state.create_charge.daily_spend=999900");
    assert_eq!(run.code, 0, "999,900 + 100 is at the cap: {}", run.stdout);
    let run = charge("state.create_charge.daily_spend=999901");
    assert_eq!(run.code, 1, "999,901 + 100 is over the cap: {}", run.stdout);
    let d: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(d["rule"], cap["rule"], "the cap's rule decides");
    let q = d["quotas"].as_array().unwrap().iter().find(|q| q["name"] == "daily spend cap").unwrap().clone();
    assert_eq!((q["status"].as_str(), q["count"].as_f64()), (Some("exceeded"), Some(999_901.0)));
    let run = charge("state.create_charge.nonsense=1");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("\"state.create_charge.nonsense\" is not counted by this call") && run.stderr.contains("state.create_charge.daily_spend"), "{}", run.stderr);

    let bad = gatehouse(&["eval", "--repo", repo, "--identity", "a", "--server", "s", "--tool", "t", "--args", "[1]"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("--args must be a JSON object"), "{}", bad.stderr);
}

#[test]
fn a_revision_is_read_from_git_objects_not_the_working_tree() {
    let r = TestRepo::new();
    let allow_all = r#"{ "tools": { "read_file": {} } }"#;
    let deny_etc = r#"{ "tools": { "read_file": { "deny_if": [ { "conditions": [ { "path": "args.path", "op": "regex", "value": "^/etc" } ] } ] } } }"#;
    let grant = GRANT.replace("[read_file] }", "[read_file], policy: policies/p.json }");
    let first = r.commit("first", &[("servers/files.yaml", SERVER), ("grants/reader.yaml", &grant), ("policies/p.json", allow_all)]);
    r.commit("tighten", &[("policies/p.json", deny_etc)]);
    // the working tree drifts: an uncommitted, broken edit
    r.write(&[("policies/p.json", "{ not json")]);

    let dir = r.path().to_str().unwrap();
    let args = ["--args", r#"{"path": "/etc/passwd"}"#];
    let (code, head) = eval_json(dir, &[&["--rev", "HEAD"][..], &args[..]].concat());
    assert_eq!((code, head["verdict"].as_str()), (1, Some("deny")));
    assert_eq!(head["commit"].as_str().unwrap().len(), 40);
    let (code, old) = eval_json(dir, &[&["--rev", &first[..7]][..], &args[..]].concat());
    assert_eq!((code, old["commit"].as_str()), (0, Some(first.as_str())));

    let wt = gatehouse(&["check", "--repo", dir]);
    assert_eq!(wt.code, 2, "the working tree is invalid");
    assert!(wt.stdout.contains("policies/p.json:1:3: error: invalid JSON"), "{}", wt.stdout);
    assert!(wt.stdout.ends_with("1 error: the repository is invalid\n"), "{}", wt.stdout);
    let at_head = gatehouse(&["check", "--repo", dir, "--rev", "HEAD"]);
    assert_eq!(at_head.code, 0, "{}", at_head.stdout);
    assert!(at_head.stdout.contains("commit "), "{}", at_head.stdout);

    let missing = gatehouse(&["check", "--repo", dir, "--rev", "no-such-branch"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("unknown revision \"no-such-branch\""), "{}", missing.stderr);
}

#[test]
fn a_policy_repository_may_be_a_subdirectory() {
    let r = TestRepo::new();
    r.commit(
        "monorepo",
        &[
            ("README.md", "the rest of the company\n"),
            ("infra/gatehouse/servers/files.yaml", SERVER),
            ("infra/gatehouse/grants/reader.yaml", GRANT),
            ("grants/decoy.yaml", "this is outside the policy repository and is not read: [\n"),
        ],
    );
    let sub = r.path().join("infra/gatehouse");
    let sub = sub.to_str().unwrap();
    for rev in [None, Some("HEAD")] {
        let mut args = vec!["check", "--repo", sub];
        args.extend(rev.iter().flat_map(|r| ["--rev", *r]));
        let run = gatehouse(&args);
        assert_eq!(run.code, 0, "{rev:?}: {}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("ok: 1 servers, 0 policies, 0 roles, 1 grants"), "{}", run.stdout);
    }
    let (code, d) = eval_json(sub, &["--rev", "HEAD"]);
    assert_eq!((code, d["verdict"].as_str()), (0, Some("allow")));
}

#[test]
fn test_reports_each_failing_case_with_its_rule_and_a_total() {
    let r = TestRepo::new();
    r.write(&[
        ("servers/files.yaml", SERVER),
        ("grants/reader.yaml", GRANT),
        (
            "tests/t.yaml",
            "cases:\n  - { name: reads, identity: reader, server: files, tool: read_file, expect: allow }\n  - { name: writes, identity: reader, server: files, tool: write_file, expect: allow }\n  - { name: wrong rule, identity: reader, server: files, tool: read_file, expect: allow, rule: nope }\n",
        ),
    ]);
    let run = gatehouse(&["test", "--repo", r.path().to_str().unwrap()]);
    assert_eq!(run.code, 1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[0].starts_with("tests/t.yaml:3:5: FAIL \"writes\": expected allow, got deny (rule gatehouse:tool-not-granted"), "{}", lines[0]);
    assert!(lines[1].contains("FAIL \"wrong rule\": expected allow by a rule containing \"nope\", got allow (rule grants/reader.yaml#/access/0"), "{}", lines[1]);
    assert_eq!(lines[2], "1 passed, 2 failed");

    r.write(&[("grants/reader.yaml", "identity: reader\nkind: agent\n")]);
    let invalid = gatehouse(&["test", "--repo", r.path().to_str().unwrap()]);
    assert_eq!(invalid.code, 2, "an invalid repository is exit 2: {}", invalid.stdout);
    assert!(invalid.stdout.contains("grants/reader.yaml:2:7: error: an agent needs an owner"), "{}", invalid.stdout);
}

/// Policies in Intercept's format, one construct of its reference at least once each, decided
/// as Intercept decides them (tests/data/intercept/tests/intercept.yaml says why, case by case).
#[test]
fn intercept_policies_load_and_decide_as_intercept_does() {
    let fixture = crate_dir().join("tests/data/intercept");
    let repo = fixture.to_str().unwrap();
    let check = gatehouse(&["check", "--repo", repo]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(!check.stdout.contains("error"), "{}", check.stdout);
    let test = gatehouse(&["test", "--repo", repo]);
    assert_eq!(test.code, 0, "{}", test.stdout);
    assert!(test.stdout.ends_with("29 passed, 0 failed\n"), "{}", test.stdout);

    let eval = |tool: &str, args: &str, counters: &[&str]| {
        let mut a = vec!["eval", "--repo", repo, "--identity", "billing-agent", "--server", "stripe", "--tool", tool, "--args", args];
        for c in counters {
            a.extend_from_slice(&["--counter", c]);
        }
        let run = gatehouse(&a);
        assert!(run.code == 0 || run.code == 1, "{}", run.stderr);
        serde_json::from_str::<Value>(&run.stdout).unwrap()
    };
    // The explicit `action: "evaluate"` rule decides with its on_deny.
    let d = eval("create_charge", r#"{"amount": 5, "currency": "gbp"}"#, &[]);
    assert_eq!((d["verdict"].as_str(), d["message"].as_str()), (Some("deny"), Some("USD and EUR only")));
    // A "*" rule's state._global counter is checked after this call's increment, on every tool.
    let d = eval("get_balance", "{}", &["state._global.calls=59"]);
    assert_eq!(d["verdict"], "allow", "{d}");
    let d = eval("get_balance", "{}", &["state._global.calls=60"]);
    assert_eq!(d["verdict"], "deny", "{d}");
    assert_eq!(d["rule"], "policies/stripe.yaml#/tools/*/rules/calls per minute");
    assert_eq!(d["message"], "At most 60 calls a minute", "on_deny is what the caller is told");
    let global = d["quotas"].as_array().unwrap().iter().find(|q| q["counter"] == "state._global.calls").unwrap().clone();
    assert_eq!(global["status"], "exceeded");

    // A case whose expectation is wrong fails, naming its file and line.
    let copy = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&fixture, copy.path());
    let cases = copy.path().join("tests/intercept.yaml");
    let text = std::fs::read_to_string(&cases).unwrap();
    let text = text.replace("counters: { state._global.calls: 59 }, expect: allow", "counters: { state._global.calls: 60 }, expect: allow");
    std::fs::write(&cases, text).unwrap();
    let test = gatehouse(&["test", "--repo", copy.path().to_str().unwrap()]);
    assert_eq!(test.code, 1, "{}", test.stdout);
    assert!(test.stdout.contains("tests/intercept.yaml:") && test.stdout.contains("FAIL \"the sixtieth call of the minute\""), "{}", test.stdout);
    assert!(test.stdout.ends_with("28 passed, 1 failed\n"), "{}", test.stdout);
}
