//! Every validation rule of SSO access tokens, against a JWKS and discovery document served by a
//! small local hyper server. Keys: the test-only RSA key of `tests/data/sso/`, and P-256 and
//! Ed25519 keys generated here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::json;

use super::*;

pub(crate) const RSA_PKCS8: &[u8] = include_bytes!("../../../tests/data/sso/rsa-test-key.pk8");
const RSA_JWK: &str = include_str!("../../../tests/data/sso/rsa-test-key.jwk.json");
const RSA_PUB_PEM: &str = include_str!("../../../tests/data/sso/rsa-test-key.pub.pem");
const AUD: &str = "https://gatehouse.example.com/mcp";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A signing key of one of the accepted kinds.
enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Signer {
    fn rsa() -> Signer {
        Signer::Rsa(RsaKeyPair::from_pkcs8(RSA_PKCS8).unwrap())
    }

    fn ec() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Signer::Ec(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap())
    }

    fn ed() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
            Signer::Ed(_) => "EdDSA",
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        match self {
            Signer::Rsa(_) => {
                let mut v: Value = serde_json::from_str(RSA_JWK).unwrap();
                v["kid"] = json!(kid);
                v
            }
            Signer::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({ "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid, "x": b64(&p[1..33]), "y": b64(&p[33..65]) })
            }
            Signer::Ed(k) => json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(k.public_key().as_ref()) }),
        }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).unwrap();
                sig
            }
            Signer::Ec(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Signer::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    /// A compact JWS of `claims` with this key's algorithm and `kid`.
    pub(crate) fn token(&self, kid: &str, claims: &Value) -> String {
        let header = json!({ "alg": self.alg(), "typ": "at+jwt", "kid": kid });
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

/// An identity provider on loopback: discovery and a JWKS that the test may replace.
struct Idp {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

async fn idp(keys: Value) -> Idp {
    idp_with(keys, true).await
}

/// `oidc: false`: no OpenID discovery (404), only RFC 8414 metadata.
async fn idp_with(keys: Value, oidc: bool) -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let issuer = format!("{base}/realms/test");
    let jwks = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (j, f, iss) = (jwks.clone(), fetches.clone(), issuer.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (j, f, iss) = (j.clone(), f.clone(), iss.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let path = req.uri().path();
                    let discovery = json!({ "issuer": iss, "jwks_uri": format!("{iss}/protocol/openid-connect/certs") }).to_string();
                    let (status, body) = if path.ends_with("/.well-known/openid-configuration") {
                        if oidc { (200, discovery) } else { (404, String::new()) }
                    } else if path.starts_with("/.well-known/oauth-authorization-server/") {
                        (200, discovery)
                    } else {
                        f.fetch_add(1, Ordering::SeqCst);
                        (200, j.lock().unwrap().to_string())
                    };
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Idp { issuer, jwks, fetches }
}

fn issuer(idp: &Idp) -> Issuer {
    Issuer { issuer: idp.issuer.clone(), audience: AUD.into(), identity_claim: "email".into(), groups_claim: Some("groups".into()), scopes: Vec::new() }
}

fn claims(idp: &Idp) -> Value {
    let now = crate::units::unix_now();
    json!({ "iss": idp.issuer, "aud": [AUD, "account"], "sub": "u-1", "email": "alice@example.com", "groups": ["eng", "eng-oncall"], "iat": now, "exp": now + 300 })
}

fn sso() -> Sso {
    Sso { refresh_min: Duration::ZERO, ..Sso::new(crate::gateway::upstream::http_client()) }
}

#[tokio::test]
async fn valid_tokens_of_every_accepted_kind() {
    let (rsa, ec, ed) = (Signer::rsa(), Signer::ec(), Signer::ed());
    let idp = idp(json!({ "keys": [rsa.jwk("r1"), ec.jwk("e1"), ed.jwk("d1")] })).await;
    let sso = sso();
    for (signer, kid) in [(&rsa, "r1"), (&ec, "e1"), (&ed, "d1")] {
        let t = signer.token(kid, &claims(&idp));
        let s = sso.validate(&issuer(&idp), &t, &[AUD]).await.unwrap_or_else(|e| panic!("{}: {e}", signer.alg()));
        assert_eq!(s.identity, "alice@example.com");
        assert_eq!(s.groups, ["eng", "eng-oncall"]);
        assert_eq!(&*s.issuer, idp.issuer);
    }
    // Discovery and keys once; the other two tokens found their keys in the cache.
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn audience_issuer_and_times() {
    let rsa = Signer::rsa();
    let idp = idp(json!({ "keys": [rsa.jwk("r1")] })).await;
    let sso = sso();
    let iss = issuer(&idp);
    let now = crate::units::unix_now();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(&idp);
        f(&mut c);
        rsa.token("r1", &c)
    };
    let cases: Vec<(&str, String, AuthError)> = vec![
        ("wrong audience", with(&|c| c["aud"] = json!("https://other.example.com/mcp")), AuthError::Audience),
        ("no audience", with(&|c| { c.as_object_mut().unwrap().remove("aud"); }), AuthError::Audience),
        ("wrong issuer", with(&|c| c["iss"] = json!("https://evil.example.com")), AuthError::Issuer),
        ("expired", with(&|c| c["exp"] = json!(now - SKEW - 5)), AuthError::Expired),
        ("no exp", with(&|c| { c.as_object_mut().unwrap().remove("exp"); }), AuthError::Malformed),
        ("not yet valid", with(&|c| c["nbf"] = json!(now + SKEW + 30)), AuthError::NotYetValid),
        ("exp as text", with(&|c| c["exp"] = json!("tomorrow")), AuthError::Malformed),
        ("nbf at the end of time", with(&|c| c["nbf"] = json!(i64::MAX)), AuthError::NotYetValid),
        ("no identity", with(&|c| { c.as_object_mut().unwrap().remove("email"); }), AuthError::NoIdentity("email".into())),
    ];
    for (name, token, want) in cases {
        assert_eq!(sso.validate(&iss, &token, &[AUD]).await, Err(want), "{name}");
    }
    // Within the skew: accepted.
    let t = with(&|c| { c["exp"] = json!(now - 10); c["nbf"] = json!(now + 10); });
    assert!(sso.validate(&iss, &t, &[AUD]).await.is_ok());
    // A token for another resource (a per-server audience) is refused on /mcp, accepted where
    // that resource is the endpoint.
    let t = with(&|c| c["aud"] = json!(format!("{AUD}/github")));
    assert_eq!(sso.validate(&iss, &t, &[AUD]).await, Err(AuthError::Audience));
    let github = format!("{AUD}/github");
    assert!(sso.validate(&iss, &t, &[AUD, &github]).await.is_ok());
    // The cached token is still refused for the other resource, and once expired.
    assert_eq!(sso.check(&iss, &t, &[AUD], now).unwrap_err(), Some(AuthError::Audience));
    assert_eq!(sso.check(&iss, &t, &[&github], now + 400).unwrap_err(), Some(AuthError::Expired));
}

#[tokio::test]
async fn signatures_keys_and_algorithms() {
    let (rsa, ec) = (Signer::rsa(), Signer::ec());
    let idp = idp(json!({ "keys": [rsa.jwk("r1")] })).await;
    let sso = sso();
    let iss = issuer(&idp);
    let c = claims(&idp);

    // Unknown key: signed by a key the issuer never published.
    let t = ec.token("e-unknown", &c);
    assert_eq!(sso.validate(&iss, &t, &[AUD]).await, Err(AuthError::UnknownKey));
    // A known kid with another key's signature.
    let t = ec.token("r1", &c);
    assert_eq!(sso.validate(&iss, &t, &[AUD]).await, Err(AuthError::UnknownKey), "an ES256 token cannot use an RSA key");
    let good = rsa.token("r1", &c);
    let (input, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{input}.{}", b64(&Signer::rsa().sign(b"something else")));
    assert_eq!(sso.validate(&iss, &forged, &[AUD]).await, Err(AuthError::Signature));
    // Claims changed after signing.
    let mut c2 = c.clone();
    c2["email"] = json!("mallory@example.com");
    let sig = good.rsplit_once('.').unwrap().1;
    let tampered = format!("{}.{}.{sig}", input.split('.').next().unwrap(), b64(c2.to_string().as_bytes()));
    assert_eq!(sso.validate(&iss, &tampered, &[AUD]).await, Err(AuthError::Signature));

    // alg: none, with and without a signature part.
    let payload = b64(c.to_string().as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(sso.validate(&iss, &none, &[AUD]).await, Err(AuthError::Algorithm("none".into())));
    let none_sig = format!("{}.{payload}.{}", b64(br#"{"alg":"none"}"#), b64(b"x"));
    assert_eq!(sso.validate(&iss, &none_sig, &[AUD]).await, Err(AuthError::Algorithm("none".into())));

    // HS256 signed with the public key's bytes (PEM, and the JWK's n): algorithm confusion.
    for secret in [RSA_PUB_PEM.as_bytes().to_vec(), URL_SAFE_NO_PAD.decode(serde_json::from_str::<Value>(RSA_JWK).unwrap()["n"].as_str().unwrap()).unwrap()] {
        let input = format!("{}.{payload}", b64(br#"{"alg":"HS256","typ":"JWT","kid":"r1"}"#));
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret), input.as_bytes());
        let t = format!("{input}.{}", b64(tag.as_ref()));
        assert_eq!(sso.validate(&iss, &t, &[AUD]).await, Err(AuthError::Algorithm("HS256".into())));
    }
    // A JWK that pins its algorithm refuses another one with the same key.
    assert_eq!(Alg::parse("HS512"), Err(AuthError::Algorithm("HS512".into())));
    // Not a JWT at all.
    assert_eq!(sso.validate(&iss, "a.b", &[AUD]).await, Err(AuthError::Malformed));
    assert_eq!(sso.validate(&iss, "e30.e30.", &[AUD]).await, Err(AuthError::Malformed));
    // The good one still passes.
    assert!(sso.validate(&iss, &good, &[AUD]).await.is_ok());
}

#[tokio::test]
async fn rotated_keys_are_fetched_on_an_unknown_kid_at_a_bounded_rate() {
    let (old, new) = (Signer::ec(), Signer::ec());
    let idp = idp(json!({ "keys": [old.jwk("k1")] })).await;
    let mut sso = sso();
    let iss = issuer(&idp);
    assert!(sso.validate(&iss, &old.token("k1", &claims(&idp)), &[AUD]).await.is_ok());
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    // The IdP rotates: the new kid is unknown, one refresh finds it; the old key is gone.
    *idp.jwks.lock().unwrap() = json!({ "keys": [new.jwk("k2")] });
    assert!(sso.validate(&iss, &new.token("k2", &claims(&idp)), &[AUD]).await.is_ok());
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    let mut c = claims(&idp);
    c["jti"] = json!("fresh"); // not the cached token
    assert_eq!(sso.validate(&iss, &old.token("k1", &c), &[AUD]).await, Err(AuthError::UnknownKey));
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 3);

    // Rate limit: unknown kids within refresh_min of the last fetch do not reach the IdP.
    sso.refresh_min = Duration::from_secs(3600);
    for i in 0..5 {
        let t = Signer::ec().token(&format!("junk{i}"), &claims(&idp));
        assert_eq!(sso.validate(&iss, &t, &[AUD]).await, Err(AuthError::UnknownKey));
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 3, "no refresh within refresh_min of the last one");
}

#[tokio::test]
async fn rfc8414_metadata_when_there_is_no_openid_discovery() {
    let ed = Signer::ed();
    let idp = idp_with(json!({ "keys": [ed.jwk("d1")] }), false).await;
    let s = sso().validate(&issuer(&idp), &ed.token("d1", &claims(&idp)), &[AUD]).await.unwrap();
    assert_eq!(s.identity, "alice@example.com");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_idp_refuses() {
    let iss = Issuer { issuer: "http://127.0.0.1:9/realms/none".into(), audience: AUD.into(), identity_claim: "email".into(), groups_claim: None, scopes: Vec::new() };
    let rsa = Signer::rsa();
    let t = rsa.token("r1", &json!({ "iss": iss.issuer, "aud": AUD, "email": "a@b", "exp": crate::units::unix_now() + 60 }));
    assert!(matches!(sso().validate(&iss, &t, &[AUD]).await, Err(AuthError::Keys(_))));
    // Within refresh_min of a failed fetch, the same failure is reported without another fetch.
    let sso = Sso::new(crate::gateway::upstream::http_client());
    assert!(matches!(sso.validate(&iss, &t, &[AUD]).await, Err(AuthError::Keys(_))));
    assert!(matches!(sso.validate(&iss, &t, &[AUD]).await, Err(AuthError::Keys(_))));
}

#[test]
fn shapes() {
    assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
    assert!(looks_like_jwt("eyJh.eyJi."));
    assert!(!looks_like_jwt("gh_abc"));
    assert!(!looks_like_jwt("a.b.c.d"));
    assert!(!looks_like_jwt(".b.c"));
    assert!(!looks_like_jwt("a+b.c.d"));
    assert_eq!(peek_issuer(&format!("x.{}.y", b64(br#"{"iss":"https://i"}"#))).as_deref(), Some("https://i"));
    assert_eq!(rfc8414("https://idp.example.com/realms/eng"), "https://idp.example.com/.well-known/oauth-authorization-server/realms/eng");
    assert_eq!(rfc8414("https://tenant.auth0.com/"), "https://tenant.auth0.com/.well-known/oauth-authorization-server");
    assert!(fetchable("https://x/jwks") && fetchable("http://127.0.0.1:1/j") && fetchable("http://[::1]/j") && !fetchable("http://idp.example.com/j"));
}

#[test]
fn preloaded_keys_validate_without_io() {
    let rsa = Signer::rsa();
    let sso = Sso::new(crate::gateway::upstream::http_client());
    let iss = Issuer { issuer: "https://idp.example.com/realms/eng".into(), audience: AUD.into(), identity_claim: "sub".into(), groups_claim: None, scopes: Vec::new() };
    sso.preload(&iss.issuer, &json!({ "keys": [rsa.jwk("r1")] }));
    let now = crate::units::unix_now();
    let t = rsa.token("r1", &json!({ "iss": iss.issuer, "aud": AUD, "sub": "u-1", "exp": now + 60 }));
    assert_eq!(sso.check(&iss, &t, &[AUD], now).unwrap().identity, "u-1");
    // Another issuer's configuration does not reuse the cached result.
    let other = Issuer { identity_claim: "email".into(), ..iss.clone() };
    assert_eq!(sso.check(&other, &t, &[AUD], now).unwrap_err(), Some(AuthError::NoIdentity("email".into())));
}

#[test]
fn required_scopes_from_scope_or_scp() {
    let rsa = Signer::rsa();
    let sso = Sso::new(crate::gateway::upstream::http_client());
    let iss = Issuer { issuer: "https://idp.example.com/realms/eng".into(), audience: AUD.into(), identity_claim: "sub".into(), groups_claim: None, scopes: vec!["mcp".into()] };
    sso.preload(&iss.issuer, &json!({ "keys": [rsa.jwk("r1")] }));
    let now = crate::units::unix_now();
    let with = |extra: Value| {
        let mut c = json!({ "iss": iss.issuer, "aud": AUD, "sub": "u-1", "exp": now + 60 });
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        rsa.token("r1", &c)
    };
    // RFC 9068 `scope` (space-separated), Entra/Okta `scp` (a list or a string).
    for ok in [json!({ "scope": "openid mcp" }), json!({ "scp": ["mcp", "other"] }), json!({ "scp": "mcp" })] {
        assert_eq!(sso.check(&iss, &with(ok.clone()), &[AUD], now).map(|s| s.identity), Ok("u-1".into()), "{ok}");
    }
    for lacking in [json!({}), json!({ "scope": "openid email" }), json!({ "scope": "mcp:read" }), json!({ "scp": ["openid"] }), json!({ "scope": 7 })] {
        assert_eq!(sso.check(&iss, &with(lacking.clone()), &[AUD], now).unwrap_err(), Some(AuthError::InsufficientScope), "{lacking}");
    }
    // A token that is invalid for another reason says that, not insufficient_scope.
    let t = rsa.token("r1", &json!({ "iss": iss.issuer, "aud": "https://other.example.com/mcp", "sub": "u-1", "exp": now + 60 }));
    assert_eq!(sso.check(&iss, &t, &[AUD], now).unwrap_err(), Some(AuthError::Audience));
    // Without required scopes, a token without any is accepted (access is the grant's).
    let open = Issuer { scopes: Vec::new(), ..iss.clone() };
    assert!(sso.check(&open, &with(json!({})), &[AUD], now).is_ok());
}

/// The access token node-oidc-provider mints for a resource (what scripts/sso-e2e.sh gets):
/// header `typ: at+jwt`, a string `aud` that is the resource itself, `scope`, `client_id`,
/// `jti`, no `nbf`, an http loopback issuer without a path.
#[test]
fn a_token_shaped_as_node_oidc_provider_mints_it() {
    let rsa = Signer::rsa();
    let sso = Sso::new(crate::gateway::upstream::http_client());
    let iss = Issuer { issuer: "http://127.0.0.1:39001".into(), audience: AUD.into(), identity_claim: "email".into(), groups_claim: Some("groups".into()), scopes: vec!["mcp".into()] };
    sso.preload(&iss.issuer, &json!({ "keys": [rsa.jwk("kmx1")] }));
    let now = crate::units::unix_now();
    let t = rsa.token("kmx1", &json!({
        "jti": "8hX2", "sub": "alice", "iat": now, "exp": now + 300, "scope": "mcp", "client_id": "c-1",
        "iss": iss.issuer, "aud": AUD, "email": "alice@example.com", "groups": ["eng-oncall"],
    }));
    let s = sso.check(&iss, &t, &[AUD], now).unwrap();
    assert_eq!((s.identity.as_str(), s.groups.as_slice()), ("alice@example.com", &["eng-oncall".to_string()][..]));
}

/// An issuer with a trailing slash (Auth0, some Entra ID and Okta set-ups): `iss` is compared
/// byte for byte (RFC 8414 §3.3, OIDC Discovery §4.3), so the configured issuer is written as the
/// provider writes it; the discovery URL has no doubled slash ([`rfc8414`] and the OIDC path trim it).
#[test]
fn an_issuer_with_a_trailing_slash_is_compared_as_written() {
    let rsa = Signer::rsa();
    let sso = Sso::new(crate::gateway::upstream::http_client());
    let iss = Issuer { issuer: "https://tenant.auth0.com/".into(), audience: AUD.into(), identity_claim: "email".into(), groups_claim: None, scopes: Vec::new() };
    sso.preload(&iss.issuer, &json!({ "keys": [rsa.jwk("a1")] }));
    let now = crate::units::unix_now();
    let token = |i: &str| rsa.token("a1", &json!({ "iss": i, "aud": [AUD, "https://tenant.auth0.com/userinfo"], "email": "alice@example.com", "exp": now + 60 }));
    assert!(sso.check(&iss, &token("https://tenant.auth0.com/"), &[AUD], now).is_ok());
    assert_eq!(sso.check(&iss, &token("https://tenant.auth0.com"), &[AUD], now).unwrap_err(), Some(AuthError::Issuer));
}
