//! Sign-in with an identity provider (issue 17): a gateway whose `gatehouse.yaml` names an
//! issuer served on loopback (discovery + JWKS, a P-256 key generated here), access tokens signed
//! with it, and the same gateway's grant tokens side by side.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use gatehouse::gateway::proxy::Config;
use gatehouse::gateway::secrets::SecretSource;
use http::StatusCode;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use crate::gateway::{Gateway, MockUpstream, call, initialize, post, send, token_hash};

const AUD: &str = "https://gatehouse.example.com/mcp";
const DAVE: &str = "dave-token-0123456789";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A loopback identity provider with one P-256 signing key.
struct Idp {
    issuer: String,
    key: EcdsaKeyPair,
}

impl Idp {
    async fn start() -> Idp {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let p = key.public_key().as_ref();
        let jwks = json!({ "keys": [ { "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "k1", "x": b64(&p[1..33]), "y": b64(&p[33..65]) } ] });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/realms/test", listener.local_addr().unwrap());
        let discovery = json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/certs") });
        let (d, j) = (Arc::new(discovery.to_string()), Arc::new(jwks.to_string()));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (d, j) = (d.clone(), j.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = if req.uri().path().ends_with("openid-configuration") { d.to_string() } else { j.to_string() };
                        async move { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Idp { issuer, key }
    }

    /// An access token for `email` with `groups`, valid for five minutes.
    fn token(&self, email: &str, groups: &[&str]) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        self.sign(&json!({ "iss": self.issuer, "aud": AUD, "sub": email, "email": email, "groups": groups, "iat": now, "exp": now + 300 }))
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({ "alg": "ES256", "typ": "at+jwt", "kid": "k1" });
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

struct World {
    gw: Gateway,
    idp: Idp,
    upstream: MockUpstream,
    files: Vec<(String, String)>,
}

async fn world() -> World {
    let idp = Idp::start().await;
    let upstream = MockUpstream::start().await;
    let settings = format!("version: \"1\"\nauth:\n  issuers:\n    - issuer: {}\n      audience: {AUD}\n      identity_claim: email\n      groups_claim: groups\n", idp.issuer);
    let mock = format!("name: mock\ntransport: streamable-http\nurl: {}\ntimeout: 2s\npolicy: policies/mock.yaml\nsupplier: {{ operated_by: internal }}\n", upstream.url);
    let policy = "version: \"1\"\ndefault: deny\ntools:\n  echo_headers: {}\n  add:\n    deny_if: [ { name: no big sums, conditions: [ { path: args.a, op: gt, value: 100 } ] } ]\n";
    let small = "version: \"1\"\ndefault: deny\ntools:\n  add:\n    deny_if: [ { name: small sums only, conditions: [ { path: args.a, op: gt, value: 10 } ] } ]\n";
    let role = "groups: [eng-oncall]\naccess: [ { server: mock, tools: [add] } ]\n";
    let alice = "identity: alice@example.com\nkind: human\naccess: [ { server: mock, tools: [echo_headers] } ]\n";
    let bob = "identity: bob@example.com\nkind: human\naccess: [ { server: mock, tools: [add], policy: policies/small.yaml } ]\n";
    let dave = format!("identity: dave@example.com\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: [echo_headers] }} ]\n", token_hash(DAVE));
    let files = [
        ("gatehouse.yaml", settings.as_str()),
        ("servers/mock.yaml", mock.as_str()),
        ("policies/mock.yaml", policy),
        ("policies/small.yaml", small),
        ("roles/oncall.yaml", role),
        ("grants/alice.yaml", alice),
        ("grants/bob.yaml", bob),
        ("grants/dave.yaml", dave.as_str()),
    ];
    let gw = Gateway::start(&files, SecretSource::default(), Config::default()).await;
    let files = files.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect();
    World { gw, idp, upstream, files }
}

fn mcp(w: &World) -> String {
    format!("{}/mcp", w.gw.url)
}

fn tool_names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

/// `token` with one character of its signature changed.
fn tampered(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let i = b.len() - 10;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

fn records(gw: &Gateway) -> Vec<Value> {
    let c = gw.store.reader().unwrap();
    let rows = gatehouse::record::audit::verify::canonical_records(&c).unwrap();
    rows.into_iter().map(|(text, _)| serde_json::from_str::<Value>(&text).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_person_calls_as_their_grant_and_is_recorded_with_the_issuer() {
    let w = world().await;
    let token = w.idp.token("alice@example.com", &[]);
    let sid = initialize(&mcp(&w), &token, "2025-11-25").await;
    let list = post(&mcp(&w), &token, Some(&sid), json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" })).await.json();
    assert_eq!(tool_names(&list), ["mock__echo_headers"]);
    let r = post(&mcp(&w), &token, Some(&sid), call(2, "mock__echo_headers", json!({}))).await.json();
    assert!(r["result"]["content"].is_array() && r["result"]["isError"] != json!(true), "{r}");
    // The access token never reaches the upstream.
    for headers in w.upstream.seen.lock().unwrap().iter() {
        assert!(headers.values().all(|v| !v.to_str().unwrap_or("").contains(&token[..40])), "the access token was forwarded");
    }
    let recs = records(&w.gw);
    let decision = recs.iter().find(|r| r["tool"] == "echo_headers").expect("a record");
    assert_eq!(decision["auth"], json!(w.idp.issuer));
    assert_eq!(decision["identity"], "alice@example.com");
    assert_eq!(decision["grant"], "grants/alice.yaml");
    assert_eq!(decision["verdict"], "allow");

    // Grant tokens keep working side by side, recorded as such.
    let sid = initialize(&mcp(&w), DAVE, "2025-11-25").await;
    let r = post(&mcp(&w), DAVE, Some(&sid), call(3, "mock__echo_headers", json!({}))).await.json();
    assert!(r["result"]["content"].is_array() && r["result"]["isError"] != json!(true), "{r}");
    assert!(records(&w.gw).iter().any(|r| r["identity"] == "dave@example.com" && r["auth"] == "token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_grant_is_refused_and_bad_tokens_are_401_with_the_metadata_url() {
    let w = world().await;
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "protocolVersion": "2025-11-25" } }).to_string();
    // A valid token whose identity has no grant: authenticated, not authorized.
    let r = send("POST", &mcp(&w), Some(&w.idp.token("nobody@example.com", &["eng-oncall"])), None, &init, &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    let metadata = "https://gatehouse.example.com/.well-known/oauth-protected-resource/mcp";
    let r = send("POST", &mcp(&w), None, None, &init, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], format!("Bearer realm=\"gatehouse\", resource_metadata=\"{metadata}\""));
    let expired = w.idp.sign(&json!({ "iss": w.idp.issuer, "aud": AUD, "email": "alice@example.com", "exp": 1_000_000 }));
    let other_resource = w.idp.sign(&json!({ "iss": w.idp.issuer, "aud": "https://elsewhere.example.com/mcp", "email": "alice@example.com", "exp": 4_000_000_000u64 }));
    for (token, why) in [(expired, "expired"), (other_resource, "not for this resource"), (tampered(&w.idp.token("alice@example.com", &[])), "signature")] {
        let r = send("POST", &mcp(&w), Some(&token), None, &init, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{why}");
        assert!(r.body.contains(why), "{why}: {}", r.body);
        assert_eq!(r.headers["www-authenticate"], format!("Bearer realm=\"gatehouse\", resource_metadata=\"{metadata}\", error=\"invalid_token\""));
    }
    // Per server: its own metadata URL, and a token for that resource is accepted there.
    let r = send("POST", &format!("{}/mock", mcp(&w)), None, None, &init, &[]).await;
    assert!(r.headers["www-authenticate"].to_str().unwrap().contains("oauth-protected-resource/mcp/mock\""));

    // The metadata documents (RFC 9728).
    for (path, resource) in [("", AUD.to_string()), ("/mcp", AUD.to_string()), ("/mcp/mock", format!("{AUD}/mock"))] {
        let r = send("GET", &format!("{}/.well-known/oauth-protected-resource{path}", w.gw.url), None, None, "", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(
            r.json(),
            json!({ "resource": resource, "authorization_servers": [w.idp.issuer], "bearer_methods_supported": ["header"], "resource_name": "gatehouse" }),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_add_the_roles_that_name_them_but_never_loosen_a_grants_own_policies() {
    let w = world().await;
    // alice in eng-oncall: the role's add is listed and callable, under the baseline only.
    let token = w.idp.token("alice@example.com", &["eng", "eng-oncall"]);
    let sid = initialize(&mcp(&w), &token, "2025-11-25").await;
    let list = post(&mcp(&w), &token, Some(&sid), json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" })).await.json();
    assert_eq!(tool_names(&list), ["mock__add", "mock__echo_headers"]);
    let r = post(&mcp(&w), &token, Some(&sid), call(2, "mock__add", json!({ "a": 50, "b": 1 }))).await.json();
    assert!(r["result"]["content"].is_array() && r["result"]["isError"] != json!(true), "{r}");
    let r = post(&mcp(&w), &token, Some(&sid), call(3, "mock__add", json!({ "a": 500, "b": 1 }))).await.json();
    assert_eq!(r["result"]["isError"], json!(true), "the baseline still holds: {r}");
    let rec = records(&w.gw).into_iter().find(|r| r["tool"] == "add" && r["verdict"] == "allow").unwrap();
    assert!(rec["rule"].as_str().unwrap().contains("via group eng-oncall"), "{rec}");

    // Without the group, no add.
    let token = w.idp.token("alice@example.com", &["eng"]);
    let sid = initialize(&mcp(&w), &token, "2025-11-25").await;
    let r = post(&mcp(&w), &token, Some(&sid), call(4, "mock__add", json!({ "a": 1, "b": 1 }))).await.json();
    assert_eq!(r["error"]["code"], json!(-32602), "{r}");

    // bob's own entry for add holds policies/small.yaml: the group's role entry does not loosen it.
    let token = w.idp.token("bob@example.com", &["eng-oncall"]);
    let sid = initialize(&mcp(&w), &token, "2025-11-25").await;
    let r = post(&mcp(&w), &token, Some(&sid), call(5, "mock__add", json!({ "a": 50, "b": 1 }))).await.json();
    assert_eq!(r["result"]["isError"], json!(true), "small.yaml still denies: {r}");
    assert!(r["result"]["content"][0]["text"].as_str().unwrap().contains("small sums only"), "{r}");
    let r = post(&mcp(&w), &token, Some(&sid), call(6, "mock__add", json!({ "a": 5, "b": 1 }))).await.json();
    assert!(r["result"]["content"].is_array() && r["result"]["isError"] != json!(true), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_grant_refuses_the_next_request_and_ends_the_session() {
    use gatehouse::gateway::proxy::{self, Active};
    let w = world().await;
    let token = w.idp.token("alice@example.com", &[]);
    let sid = initialize(&mcp(&w), &token, "2025-11-25").await;
    let r = post(&mcp(&w), &token, Some(&sid), call(1, "mock__echo_headers", json!({}))).await;
    assert_eq!(r.status, StatusCode::OK);

    // A commit that deletes grants/alice.yaml, applied as the reconciler applies it.
    let files: Vec<(&str, &str)> = w.files.iter().filter(|(p, _)| p != "grants/alice.yaml").map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let snapshot = Arc::new(gatehouse::repo::compile(&gatehouse::repo::Files::from_memory(files)).unwrap().snapshot);
    let secrets = Arc::new(gatehouse::gateway::secrets::bind(&snapshot, &SecretSource::default()).unwrap());
    let old = w.gw.state.active.load_full();
    w.gw.state.activate(Active { snapshot, secrets });
    proxy::snapshot_changed(&w.gw.state, old.as_deref());

    // The same, still unexpired, access token: no grant any more.
    let r = post(&mcp(&w), &token, Some(&sid), call(2, "mock__echo_headers", json!({}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(w.gw.state.sessions.all().iter().all(|s| s.grant != "alice"), "the session was closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_changes_what_a_group_gives_notifies_the_signed_in_session() {
    use gatehouse::gateway::proxy::{self, Active};
    let w = world().await;
    let token = w.idp.token("alice@example.com", &["eng-oncall"]);
    let sid = initialize(&mcp(&w), &token, "2025-11-25").await;
    let list = post(&mcp(&w), &token, Some(&sid), json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" })).await.json();
    assert_eq!(tool_names(&list), ["mock__add", "mock__echo_headers"]);
    let mut stream = crate::reconcile::open_stream(&mcp(&w), &token, &sid).await;

    // The role no longer names the group.
    let files: Vec<(&str, &str)> = w
        .files
        .iter()
        .map(|(p, t)| (p.as_str(), if p == "roles/oncall.yaml" { "groups: [eng-leads]\naccess: [ { server: mock, tools: [add] } ]\n" } else { t.as_str() }))
        .collect();
    let snapshot = Arc::new(gatehouse::repo::compile(&gatehouse::repo::Files::from_memory(files)).unwrap().snapshot);
    let secrets = Arc::new(gatehouse::gateway::secrets::bind(&snapshot, &SecretSource::default()).unwrap());
    let old = w.gw.state.active.load_full();
    w.gw.state.activate(Active { snapshot, secrets });
    proxy::snapshot_changed(&w.gw.state, old.as_deref());

    let event = crate::reconcile::next_event(&mut stream).await.expect("the stream is open");
    assert!(event.contains("notifications/tools/list_changed"), "{event}");
    let list = post(&mcp(&w), &token, Some(&sid), json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" })).await.json();
    assert_eq!(tool_names(&list), ["mock__echo_headers"]);
}

#[test]
fn policy_tests_and_eval_decide_as_a_signed_in_member_of_groups() {
    let repo = crate::support::TestRepo::new();
    repo.write(&[
        ("gatehouse.yaml", "auth:\n  issuers:\n    - { issuer: https://idp.example.com/realms/eng, audience: https://gatehouse.example.com/mcp, identity_claim: email, groups_claim: groups }\n"),
        ("servers/files.yaml", "name: files\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\n"),
        ("policies/small.yaml", "version: \"1\"\ndefault: deny\ntools:\n  write_file:\n    deny_if: [ { name: no etc, conditions: [ { path: args.path, op: regex, value: \"^/etc\" } ] } ]\n"),
        ("roles/writers.yaml", "groups: [eng-writers]\naccess: [ { server: files, tools: [write_file] } ]\n"),
        ("grants/alice.yaml", "identity: alice@example.com\nkind: human\naccess: [ { server: files, tools: [read_file] } ]\n"),
        ("grants/bob.yaml", "identity: bob@example.com\nkind: human\naccess: [ { server: files, tools: [write_file], policy: policies/small.yaml } ]\n"),
        (
            "tests/groups.yaml",
            "cases:\n  - { name: a member of eng-writers may write, identity: alice@example.com, groups: [eng-writers], server: files, tool: write_file, args: { path: /srv/a }, expect: allow, rule: via group eng-writers }\n  - { name: without the group, identity: alice@example.com, server: files, tool: write_file, args: { path: /srv/a }, expect: deny }\n  - { name: the group does not loosen bob's own policy, identity: bob@example.com, groups: [eng-writers], server: files, tool: write_file, args: { path: /etc/passwd }, expect: deny, rule: no etc }\n",
        ),
    ]);
    let dir = repo.path().to_str().unwrap();
    let run = crate::support::gatehouse(&["test", "--repo", dir]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--repo", dir, "--identity", "alice@example.com", "--server", "files", "--tool", "write_file"];
        args.extend_from_slice(extra);
        crate::support::gatehouse(&args)
    };
    assert_eq!(eval(&[]).code, 1);
    let run = eval(&["--group", "eng", "--group", "eng-writers"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("roles/writers.yaml#/access/0 via group eng-writers"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn required_scopes_are_challenged_and_a_token_without_them_is_403_insufficient_scope() {
    use gatehouse::gateway::proxy::{self, Active};
    let w = world().await;
    // A commit that makes the issuer require the scope mcp.
    let files: Vec<(String, String)> = w
        .files
        .iter()
        .map(|(p, t)| if p == "gatehouse.yaml" { (p.clone(), format!("{t}      scopes: [mcp]\n")) } else { (p.clone(), t.clone()) })
        .collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let snapshot = Arc::new(gatehouse::repo::compile(&gatehouse::repo::Files::from_memory(files)).unwrap().snapshot);
    let secrets = Arc::new(gatehouse::gateway::secrets::bind(&snapshot, &SecretSource::default()).unwrap());
    let old = w.gw.state.active.load_full();
    w.gw.state.activate(Active { snapshot, secrets });
    proxy::snapshot_changed(&w.gw.state, old.as_deref());

    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "protocolVersion": "2025-11-25" } }).to_string();
    let metadata = "https://gatehouse.example.com/.well-known/oauth-protected-resource/mcp";
    let r = send("POST", &mcp(&w), None, None, &init, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], format!("Bearer realm=\"gatehouse\", resource_metadata=\"{metadata}\", scope=\"mcp\""));
    // The body was not read: the connection is closed, and the response says so (an OAuth client
    // fetches the metadata next and must not do it on this connection).
    assert_eq!(r.headers["connection"], "close");
    let r = send("GET", &format!("{}/.well-known/oauth-protected-resource/mcp", w.gw.url), None, None, "", &[]).await;
    assert_eq!(r.json()["scopes_supported"], json!(["mcp"]));

    // alice's token without the scope: valid, but 403 insufficient_scope (RFC 6750 §3.1).
    let r = send("POST", &mcp(&w), Some(&w.idp.token("alice@example.com", &[])), None, &init, &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.headers["www-authenticate"], format!("Bearer realm=\"gatehouse\", error=\"insufficient_scope\", scope=\"mcp\", resource_metadata=\"{metadata}\""));
    // An expired token without the scope is a 401 invalid_token: the scope is judged last.
    let expired = w.idp.sign(&json!({ "iss": w.idp.issuer, "aud": AUD, "email": "alice@example.com", "exp": 1_000_000 }));
    let r = send("POST", &mcp(&w), Some(&expired), None, &init, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // With the scope (among others): in.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let scoped = w.idp.sign(&json!({ "iss": w.idp.issuer, "aud": AUD, "email": "alice@example.com", "scope": "openid mcp", "exp": now + 300 }));
    let sid = initialize(&mcp(&w), &scoped, "2025-11-25").await;
    let r = post(&mcp(&w), &scoped, Some(&sid), call(2, "mock__echo_headers", json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Grant tokens are not OAuth tokens: no scope applies to them.
    let sid = initialize(&mcp(&w), DAVE, "2025-11-25").await;
    assert!(!sid.is_empty());
}
