use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::policy::ArgPath;
use crate::units::{Rate, Window};

fn rate(n: u64) -> Arc<Quota> {
    Arc::new(Quota::rate("r".into(), "rate".into(), Rate { count: n, window: Window::Minute }, Scope::Identity))
}

fn spend(max: f64) -> Arc<Quota> {
    Arc::new(Quota {
        id: "s".into(),
        name: "spend".into(),
        counter: "spend".into(),
        window: Window::Day,
        increment: Increment::Arg(ArgPath::parse("amount").unwrap()),
        max,
        inclusive: true,
        per: Scope::Global,
        path: None,
        on_deny: None,
    })
}

const WHO: Subject = Subject { identity: "alice", server: "pay" };

#[tokio::test]
async fn reserve_commit_and_rollback() {
    let q = Quotas::load(None, 0);
    let limit = [rate(2)];
    let a = q.reserve_local(&limit, &WHO, &json!({}), 60).unwrap();
    let b = q.reserve_local(&limit, &WHO, &json!({}), 61).unwrap();
    assert!(q.reserve_local(&limit, &WHO, &json!({}), 62).is_err(), "two reserved fill a cap of two");
    q.rollback(b).await;
    let c = q.reserve_local(&limit, &WHO, &json!({}), 63).expect("a rolled-back reservation frees its place");
    q.commit(a);
    q.commit(c);
    assert!(q.reserve_local(&limit, &WHO, &json!({}), 119).is_err());
    assert!(q.reserve_local(&limit, &WHO, &json!({}), 120).is_ok(), "a new calendar minute starts at :00");
    let bob = Subject { identity: "bob", server: "pay" };
    assert!(q.reserve_local(&limit, &bob, &json!({}), 119).is_ok(), "per identity");
}

#[test]
fn spend_caps_sum_an_argument_and_refuse_what_they_cannot_read() {
    let q = Quotas::load(None, 0);
    let cap = [spend(1000.0)];
    q.commit(q.reserve_local(&cap, &WHO, &json!({ "amount": 600 }), 10).unwrap());
    let e = q.reserve_local(&cap, &WHO, &json!({ "amount": 401 }), 11).unwrap_err();
    assert!(e.why.contains("spend"), "{}", e.why);
    q.commit(q.reserve_local(&cap, &WHO, &json!({ "amount": 400 }), 12).unwrap());
    assert!(q.reserve_local(&cap, &WHO, &json!({ "amount": "1" }), 13).is_err(), "a string amount never passes");
    assert!(q.reserve_local(&cap, &WHO, &json!({}), 13).is_err(), "a missing amount never passes");
    assert!(q.reserve_local(&cap, &WHO, &json!({ "amount": -5 }), 13).is_err(), "a negative amount cannot refill the cap");
}
