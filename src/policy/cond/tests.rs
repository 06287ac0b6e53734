//! Truth tables of every operator, including missing arguments and type mismatches.

use serde_json::{Value, json};

use super::*;

fn cond(path: &str, op: Op) -> Condition {
    Condition { path: ArgPath::parse(path).unwrap(), op }
}

fn re(p: &str) -> Matcher {
    Matcher::new(p).unwrap()
}

/// Evaluates `op` on `args.x` for each (argument, expected) row; `None` = argument missing.
fn table(op: impl Fn() -> Op, rows: &[(Option<Value>, Tri)]) {
    for (arg, want) in rows {
        let args = match arg {
            Some(v) => json!({ "x": v }),
            None => json!({}),
        };
        let got = cond("x", op()).eval(&args);
        assert_eq!(got, *want, "{:?} on x = {arg:?}", op());
    }
}

use Tri::{False as F, True as T, Unknown as U};

#[test]
fn eq_and_neq() {
    let rows = [
        (Some(json!("a")), T),
        (Some(json!("b")), F),
        (Some(json!(1)), U),
        (Some(json!(null)), U),
        (Some(json!(["a"])), U),
        (None, U),
    ];
    table(|| Op::Eq(json!("a")), &rows);
    let neg: Vec<_> = rows.iter().map(|(a, t)| (a.clone(), !*t)).collect();
    table(|| Op::Neq(json!("a")), &neg);
    // numbers compare numerically across integer and float forms
    table(|| Op::Eq(json!(1)), &[(Some(json!(1.0)), T), (Some(json!(2)), F), (Some(json!("1")), U)]);
}

#[test]
fn in_and_not_in() {
    let rows = [
        (Some(json!("usd")), T),
        (Some(json!("btc")), F),
        (Some(json!(5)), U),
        (Some(json!(true)), U),
        (None, U),
    ];
    table(|| Op::In(vec![json!("usd"), json!("eur")]), &rows);
    let neg: Vec<_> = rows.iter().map(|(a, t)| (a.clone(), !*t)).collect();
    table(|| Op::NotIn(vec![json!("usd"), json!("eur")]), &neg);
}

#[test]
fn numeric_comparisons() {
    let arg = |v: Value| Some(v);
    table(|| Op::Lt(10.0), &[(arg(json!(9)), T), (arg(json!(10)), F), (arg(json!("9")), U), (None, U)]);
    table(|| Op::Lte(10.0), &[(arg(json!(10)), T), (arg(json!(10.5)), F), (arg(json!(null)), U), (None, U)]);
    table(|| Op::Gt(10.0), &[(arg(json!(11)), T), (arg(json!(10)), F), (arg(json!([11])), U), (None, U)]);
    table(|| Op::Gte(10.0), &[(arg(json!(10)), T), (arg(json!(-1)), F), (arg(json!(true)), U), (None, U)]);
}

#[test]
fn regex_and_not_regex() {
    let rows = [
        (Some(json!("DROP table")), T),
        (Some(json!("select")), F),
        (Some(json!(42)), U),
        (None, U),
    ];
    table(|| Op::Regex(re("(?i)drop\\s")), &rows);
    let neg: Vec<_> = rows.iter().map(|(a, t)| (a.clone(), !*t)).collect();
    table(|| Op::NotRegex(re("(?i)drop\\s")), &neg);
}

#[test]
fn look_around_uses_the_bounded_engine() {
    let m = re("^(?!/srv/projects/)");
    assert!(matches!(m, Matcher::Backtracking(_)));
    assert_eq!(m.is_match("/etc/passwd"), T);
    assert_eq!(m.is_match("/srv/projects/a"), F);
    // plain patterns stay on the linear engine
    assert!(matches!(re("^/srv/"), Matcher::Linear(_)));
}

#[test]
fn hitting_the_backtrack_limit_is_unknown() {
    // Catastrophic backtracking: the back-reference forces the backtracking engine, and the
    // alternation of two equal branches doubles the paths at every character.
    let m = re(r"^(a|a)*\1b");
    let evil = format!("{}c", "a".repeat(40));
    assert_eq!(m.is_match(&evil), U);
}

#[test]
fn contains_strings_and_arrays() {
    table(
        || Op::Contains(json!("secret")),
        &[
            (Some(json!("a secret plan")), T),
            (Some(json!("plain")), F),
            (Some(json!(["secret", "x"])), T),
            (Some(json!(["x"])), F),
            (Some(json!([1, 2])), U),
            (Some(json!(7)), U),
            (None, U),
        ],
    );
}

#[test]
fn exists_is_never_unknown() {
    table(|| Op::Exists(true), &[(Some(json!("x")), T), (Some(json!(0)), T), (Some(json!(null)), F), (None, F)]);
    table(|| Op::Exists(false), &[(Some(json!("x")), F), (Some(json!(null)), T), (None, T)]);
}

#[test]
fn path_within_normalises_and_refuses_traversal() {
    let op = || Op::PathWithin(vec!["/srv/projects".into()]);
    let s = |p: &str| Some(json!(p));
    table(
        op,
        &[
            (s("/srv/projects"), T),
            (s("/srv/projects/app/README.md"), T),
            (s("/srv//projects///app/"), T),
            (s("/srv/projects-evil/x"), F),
            (s("/srv/projects-evil/"), F),
            (s("/etc/passwd"), F),
            (s("/srv/projects/../../etc/passwd"), U),
            (s("/srv/projects/./app"), U),
            (s("/srv/projects/%2e%2e/%2e%2e/etc/passwd"), U),
            (s("/srv/projects/..%2f..%2fetc"), U),
            (s("/srv/projects\\..\\..\\etc\\passwd"), U),
            (s("/srv/projects/a\0b"), U),
            (s("/srv/projects/a\nb"), U),
            (s("~/srv/projects"), U),
            (s("/srv/projects/~root"), U),
            (s("srv/projects/a"), U),
            (s("./srv/projects/a"), U),
            (s(""), U),
            (Some(json!(["/srv/projects/a"])), U),
            (None, U),
        ],
    );
    // the root prefix contains every clean absolute path
    let root = || Op::PathWithin(vec!["/".into()]);
    table(root, &[(s("/etc/passwd"), T), (s("/a/../b"), U)]);
}

#[test]
fn nested_paths_and_array_indexes() {
    let c = cond("items.1.amount", Op::Lte(10.0));
    assert_eq!(c.eval(&json!({ "items": [ { "amount": 50 }, { "amount": 5 } ] })), T);
    assert_eq!(c.eval(&json!({ "items": [ { "amount": 50 } ] })), U);
    assert_eq!(c.eval(&json!({ "items": { "1": { "amount": 50 } } })), F);
}

#[test]
fn kleene_conjunction() {
    let a = cond("a", Op::Eq(json!(1)));
    let b = cond("b", Op::Eq(json!(1)));
    let conds = [a, b];
    assert_eq!(Tri::all(&conds, &json!({"a": 1, "b": 1})), T);
    assert_eq!(Tri::all(&conds, &json!({"a": 2})), F, "false wins over unknown");
    assert_eq!(Tri::all(&conds, &json!({"a": 1})), U);
    assert_eq!(Tri::all(&[], &json!({})), T);
}
