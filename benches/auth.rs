//! The CPU that SSO adds to a call's authentication, as a ratio to a grant-token call measured
//! in the same run (issue 17's target: under 10 µs per call with a warm key cache).
//!
//! - `baseline/grant-token`: what `proxy::handler::authenticate` does for a grant token: the
//!   checksum rule, sha256 of the token, the token-hash lookup, the expiry check.
//! - `sso/warm`: the same access token again (the common case: a client reuses its token until it
//!   expires): the JWT shape, `iss` from the validated-token cache, the issuer looked up, the validated-token cache hit
//!   with `exp`/`nbf`/`aud` checked again, the grant by identity, the roles of the groups and
//!   the widened grant's cache key.
//! - `sso/verify/<alg>`: a token not seen before, with the issuer's keys cached: everything
//!   above plus parsing and the signature verification (the cost of the first call of each token).
//!
//! `scripts/bench-report auth` prints each median as a ratio to the baseline.

use std::collections::HashMap;
use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::gateway::auth::{self, Sso};
use gatehouse::gateway::upstream::http_client;
use gatehouse::repo::{Files, compile};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ISSUER: &str = "https://idp.example.com/realms/eng";
const AUD: &str = "https://gatehouse.example.com/mcp";
const GRANT_TOKEN: &str = "alice-grant-token-0123456789abcdef";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn token(alg: &str, kid: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let now = gatehouse::units::unix_now();
    let header = json!({ "alg": alg, "typ": "at+jwt", "kid": kid });
    // The shape of a Keycloak access token, roughly.
    let claims = json!({ "iss": ISSUER, "aud": [AUD, "account"], "sub": "8f1c2e0a-5d55-4c1e-9d0f-3b1f0c2a9e77", "email": "alice@example.com",
        "email_verified": true, "groups": ["eng", "eng-oncall"], "azp": "mcp-client", "scope": "openid email profile", "iat": now, "exp": now + 3600, "jti": "b7c1f1e4-2a9e-4d5b-a0f1-7e3c9d2b6a10" });
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn bench(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let rsa = RsaKeyPair::from_pkcs8(include_bytes!("../tests/data/sso/rsa-test-key.pk8")).unwrap();
    let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref(), &rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let p = ec.public_key().as_ref().to_vec();
    let mut rsa_jwk: Value = serde_json::from_str(include_str!("../tests/data/sso/rsa-test-key.jwk.json")).unwrap();
    rsa_jwk["kid"] = json!("r1");
    let jwks = json!({ "keys": [rsa_jwk,
        { "kty": "EC", "crv": "P-256", "kid": "e1", "x": b64(&p[1..33]), "y": b64(&p[33..65]) },
        { "kty": "OKP", "crv": "Ed25519", "kid": "d1", "x": b64(ed.public_key().as_ref()) }] });
    let tokens = [
        ("RS256", token("RS256", "r1", |m| {
            let mut sig = vec![0; rsa.public().modulus_len()];
            rsa.sign(&RSA_PKCS1_SHA256, &rng, m, &mut sig).unwrap();
            sig
        })),
        ("ES256", token("ES256", "e1", |m| ec.sign(&rng, m).unwrap().as_ref().to_vec())),
        ("EdDSA", token("EdDSA", "d1", |m| ed.sign(m).as_ref().to_vec())),
    ];

    let settings = format!("auth:\n  issuers:\n    - {{ issuer: {ISSUER}, audience: {AUD}, identity_claim: email, groups_claim: groups }}\n");
    let grant = format!("identity: alice@example.com\nkind: human\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: files, tools: \"*\" }} ]\n", hex::encode(Sha256::digest(GRANT_TOKEN)));
    let files = [
        ("gatehouse.yaml", settings.as_str()),
        ("servers/files.yaml", "name: files\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\n"),
        ("roles/oncall.yaml", "groups: [eng-oncall]\naccess: [ { server: files, tools: [read_file] } ]\n"),
        ("grants/alice.yaml", grant.as_str()),
    ];
    let snap = compile(&Files::from_memory(files.iter().copied())).unwrap_or_else(|d| panic!("{d}")).snapshot;
    let sso = Sso::new(http_client());
    sso.preload(ISSUER, &jwks);
    let widened: HashMap<String, usize> = HashMap::from([(format!("{}\n0\n{ISSUER}\noncall", snap.digest), 0)]);

    // The grant-token path of `authenticate`.
    let grant_token = |t: &str| {
        assert!(gatehouse::gateway::token::admissible(t));
        let hash: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        let (g, k) = snap.grant_index_by_token_hash(&hash).unwrap();
        let expired = snap.grants[g].tokens[k].expires.is_some_and(|e| e <= gatehouse::units::Date::today());
        (g, expired)
    };
    // The SSO path of `authenticate` and `signed_in`.
    let signed_in = |t: &str| {
        assert!(auth::looks_like_jwt(t));
        let iss = sso.issuer_of(t).unwrap();
        let issuer = snap.issuer(&iss).unwrap();
        let s = sso.check(issuer, t, &[issuer.audience.as_str()], gatehouse::units::unix_now()).unwrap();
        let g = snap.grant_index_by_identity(&s.identity).unwrap();
        let roles = snap.roles_of_groups(s.groups.iter().map(String::as_str));
        let key = format!("{}\n{g}\n{}\n{}", snap.digest, s.issuer, roles.join("\n"));
        (g, widened.get(&key).copied(), auth::session_key(&s.issuer, &s.identity))
    };
    for (_, t) in &tokens {
        assert_eq!(signed_in(t).1, Some(0), "the bench's cache key is the handler's");
    }

    let mut g = c.benchmark_group("auth");
    g.bench_function("baseline/grant-token", |b| b.iter(|| black_box(grant_token(black_box(GRANT_TOKEN)))));
    for (alg, t) in &tokens {
        signed_in(t);
        g.bench_function(format!("sso/warm/{alg}"), |b| b.iter(|| black_box(signed_in(black_box(t)))));
    }
    for (alg, t) in &tokens {
        g.bench_function(format!("sso/verify/{alg}"), |b| {
            b.iter(|| {
                sso.forget_tokens();
                black_box(signed_in(black_box(t)))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
