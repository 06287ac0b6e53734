//! Properties of the engine over generated repositories and calls:
//! - an empty repository denies every call;
//! - adding a deny rule (a `deny_if` clause, a `require`, an `action: deny`, a `hide`) to a policy
//!   never turns a denied call into an allowed one.

use gatehouse::policy::{Call, Verdict, evaluate};
use gatehouse::repo::{Files, compile};
use gatehouse::policy::snapshot::Snapshot;
use proptest::prelude::*;
use serde_json::{Value, json};

const TOOLS: [&str; 4] = ["a", "b", "c", "d"];

fn arg_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-5i64..5).prop_map(Value::from),
        prop::sample::select(vec!["x", "y", "/srv/p/f", "/srv/p/../etc", "DROP x"]).prop_map(Value::from),
        Just(Value::Null),
        Just(json!(["x", 1])),
    ]
}

fn args() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(vec!["x", "y", "z"]), arg_value(), 0..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn condition() -> impl Strategy<Value = Value> {
    let path = prop::sample::select(vec!["args.x", "args.y", "args.z"]);
    let op_value = prop_oneof![
        arg_value().prop_filter("eq needs a value", |v| !v.is_null()).prop_map(|v| ("eq", Some(v))),
        arg_value().prop_filter("neq needs a value", |v| !v.is_null()).prop_map(|v| ("neq", Some(v))),
        Just(("in", Some(json!(["x", 1, "y"])))),
        Just(("not_in", Some(json!(["x", 2])))),
        (-5i64..5).prop_map(|n| ("lt", Some(json!(n)))),
        (-5i64..5).prop_map(|n| ("gte", Some(json!(n)))),
        Just(("regex", Some(json!("^x")))),
        Just(("not_regex", Some(json!("(?i)drop\\s")))),
        Just(("regex", Some(json!("^(?!/srv/p/)")))),
        Just(("contains", Some(json!("x")))),
        Just(("exists", None)),
        Just(("exists", Some(json!(false)))),
        Just(("path_within", Some(json!(["/srv/p"])))),
    ];
    (path, op_value).prop_map(|(path, (op, value))| {
        let mut c = json!({ "path": path, "op": op });
        if let Some(v) = value {
            c["value"] = v;
        }
        c
    })
}

/// A rule that can only deny, in one of the two styles.
fn deny_rule() -> impl Strategy<Value = (&'static str, Value)> {
    let conds = || prop::collection::vec(condition(), 1..3);
    prop_oneof![
        conds().prop_map(|c| ("deny_if", json!({ "conditions": c }))),
        condition().prop_map(|c| ("require", c)),
        conds().prop_map(|c| ("rules", json!({ "conditions": c }))),
        conds().prop_map(|c| ("rules", json!({ "action": "deny", "conditions": c }))),
        Just(("rules", json!({ "action": "deny" }))),
    ]
}

/// A policy document: default, and for some tools (or "*") a list of deny rules.
fn policy() -> impl Strategy<Value = Value> {
    let entry = prop::collection::vec(deny_rule(), 0..3);
    let tools = prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c", "*"]), entry, 0..4);
    (any::<bool>(), tools).prop_map(|(allow, tools)| {
        let mut doc = json!({ "version": "1", "default": if allow { "allow" } else { "deny" }, "tools": {} });
        for (tool, rules) in tools {
            let mut e = json!({});
            for (list, rule) in rules {
                e.as_object_mut().unwrap().entry(list).or_insert_with(|| json!([])).as_array_mut().unwrap().push(rule);
            }
            doc["tools"][tool] = e;
        }
        doc
    })
}

fn snapshot(policy: &Value, tools_granted: &Value) -> Snapshot {
    let grant = format!(
        "identity: g\nkind: human\naccess: [ {{ server: s, tools: {tools_granted}, policy: policies/p.json }} ]\n"
    );
    let text = policy.to_string();
    let files = Files::from_memory([
        ("servers/s.yaml", "name: s\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\n"),
        ("grants/g.yaml", grant.as_str()),
        ("policies/p.json", text.as_str()),
    ]);
    match compile(&files) {
        Ok(c) => c.snapshot,
        Err(d) => panic!("generated repository does not compile:\n{d}\n{text}"),
    }
}

fn verdict(s: &Snapshot, tool: &str, args: &Value) -> Verdict {
    evaluate(s, &Call { identity: "g", server: "s", tool, args }).verdict
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn an_empty_repository_denies_every_call(
        identity in "[a-z@.]{0,12}", server in "[a-z-]{0,8}", tool in "[a-z_]{0,8}", args in args()
    ) {
        let snap = compile(&Files::default()).expect("an empty repository is valid").snapshot;
        let d = evaluate(&snap, &Call { identity: &identity, server: &server, tool: &tool, args: &args });
        prop_assert_eq!(d.verdict, Verdict::Deny);
    }

    #[test]
    fn adding_a_deny_rule_never_allows_more(
        base in policy(),
        granted in prop_oneof![Just(json!("*")), Just(json!(["a", "b"]))],
        pick in any::<prop::sample::Index>(),
        extra in deny_rule(),
        calls in prop::collection::vec((prop::sample::select(TOOLS.to_vec()), args()), 1..8),
    ) {
        // The rule goes into an entry the policy already has (adding an entry is not adding a
        // deny rule: under default deny it lists a tool), or becomes a hide.
        let mut targets: Vec<String> = base["tools"].as_object().unwrap().keys().cloned().collect();
        targets.push("hide".into());
        let target = pick.get(&targets).clone();
        let mut tighter = base.clone();
        if target == "hide" {
            tighter["hide"] = json!(["a"]);
        } else {
            let (list, rule) = extra;
            let entry = tighter["tools"].get_mut(&target).unwrap();
            entry.as_object_mut().unwrap().entry(list).or_insert_with(|| json!([])).as_array_mut().unwrap().push(rule);
        }
        let before = snapshot(&base, &granted);
        let after = snapshot(&tighter, &granted);
        for (tool, args) in &calls {
            if verdict(&before, tool, args) == Verdict::Deny {
                prop_assert_eq!(verdict(&after, tool, args), Verdict::Deny, "{} {} turned allow\nbefore: {}\nafter: {}", tool, args, base, tighter);
            }
        }
    }
}
