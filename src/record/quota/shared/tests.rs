use super::*;

fn key(counter: &str, subject: &str) -> Key {
    Key { counter: counter.into(), subject: subject.into(), window_start: 1_796_601_600 }
}

#[test]
fn parts_of_a_key_cannot_run_into_each_other() {
    let mut a = String::new();
    escape_into(&mut a, &key("a:b", "c").counter);
    assert_eq!(a, "a%3Ab");
    let mut p = String::new();
    escape_into(&mut p, "100%:x");
    assert_eq!(p, "100%25%3Ax");
    let join = |k: &Key| {
        let mut s = String::new();
        escape_into(&mut s, &k.counter);
        s.push(':');
        escape_into(&mut s, &k.subject);
        s
    };
    assert_ne!(join(&key("a:b", "c")), join(&key("a", "b:c")));
}

#[test]
fn prefixes_with_braces_are_refused_and_passwords_stay_out_of_logs() {
    let config = |prefix: &str| Config { url: "redis://127.0.0.1".into(), prefix: prefix.into() };
    assert!(config("prod-eu").check().is_ok());
    assert!(config("").check().is_err());
    assert!(config("a}b").check().unwrap_err().contains("braces"));
    assert_eq!(redacted("redis://gatehouse:s3cret@redis.internal:6379/2"), "redis://…@redis.internal:6379/2");
    assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
}

#[test]
fn amounts_reach_lua_as_the_same_number() {
    for n in [0.0, 1.0, 600.5, 0.1, 1e15, 123_456_789.012_345] {
        assert_eq!(number(n).parse::<f64>().unwrap(), n);
    }
    assert_eq!(number(100.0), "100");
}
