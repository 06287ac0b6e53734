//! Sign-in with the company's identity provider: gatehouse as an OAuth 2.1 resource server (the
//! MCP authorization spec, RFC 9068 JWT access tokens, RFC 9728 protected resource metadata).
//!
//! A bearer that looks like a JWT and whose `iss` is one of `gatehouse.yaml`'s `auth.issuers` is
//! validated here: signature with a key of the issuer's JWKS (found by OpenID discovery,
//! `<issuer>/.well-known/openid-configuration` → `jwks_uri`), `iss`, `aud` (contains the
//! configured audience), `exp` and `nbf` with [`SKEW`] of clock skew. Only asymmetric algorithms
//! are accepted ([`Alg`]): `none` and every `HS*` are refused before any key is looked at, so an
//! HMAC signed with a public key (algorithm confusion) has no code path that could accept it.
//! The key's type must fit the algorithm, and a JWK's own `alg`/`use`, when present, must agree.
//!
//! Keys are cached per issuer. A token whose `kid` is unknown triggers one refresh (discovery and
//! JWKS again), at most once per [`Sso::refresh_min`] per issuer; the refreshed set replaces the
//! old one (a key the IdP dropped is dropped) and holds at most [`MAX_KEYS`] keys.
//!
//! A token that passed validation is remembered (keyed by the whole token, compared in full) with
//! its claims until its `exp`, so the same access token on the next call costs a hash lookup, not
//! a signature verification. Everything that depends on the request or the commit (the audience
//! for the endpoint, the issuer's configuration, the grant of the identity) is checked again on
//! every request, so a commit that deletes the grant revokes at once and `exp` is always honoured.
//!
//! This module knows HTTP only to fetch discovery documents and key sets; it never sees a
//! request and never forwards a token.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

use crate::gateway::upstream::HttpClient;
use crate::policy::snapshot::Issuer;

/// Clock skew allowed on `exp` and `nbf`.
pub const SKEW: i64 = 60;
/// Keys kept per issuer (a JWKS with more is truncated).
pub const MAX_KEYS: usize = 32;
/// Validated tokens remembered; past it, expired ones are dropped, then all.
pub const MAX_CACHED_TOKENS: usize = 10_000;
/// Largest discovery document or key set read.
const MAX_DOCUMENT: usize = 256 << 10;
/// Largest token looked at (header and payload are decoded only below it).
pub const MAX_TOKEN: usize = 8192;
/// Time allowed for one discovery or JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an access token was refused. The text goes to the client (never the token or a claim
/// value) and into logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed access token")]
    Malformed,
    #[error("access token algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("access token issuer is not trusted")]
    Issuer,
    #[error("access token is not for this resource (aud)")]
    Audience,
    #[error("access token expired")]
    Expired,
    #[error("access token is not valid yet (nbf)")]
    NotYetValid,
    #[error("access token signing key is unknown")]
    UnknownKey,
    #[error("access token signature is invalid")]
    Signature,
    #[error("access token has no {0} claim")]
    NoIdentity(String),
    #[error("the identity provider's keys could not be fetched: {0}")]
    Keys(String),
    /// A valid token that lacks a scope the issuer's `scopes` require: HTTP 403
    /// `insufficient_scope` (RFC 6750 §3.1), not 401.
    #[error("access token lacks a required scope")]
    InsufficientScope,
}

/// The JWS algorithms accepted: asymmetric only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// A validated access token: who it names, for what, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The configured issuer URL (the record's `auth`).
    pub issuer: Arc<str>,
    /// The identity claim's value, matched against grants' `identity`.
    pub identity: String,
    /// The groups claim's values (empty without a groups claim).
    pub groups: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub exp: i64,
}

/// A public key of an issuer, parsed once from its JWK.
#[derive(Debug)]
struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, which the token's must then equal.
    alg: Option<Alg>,
    material: Material,
}

#[derive(Debug)]
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed point `04 ‖ x ‖ y`.
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// One issuer's cached keys.
#[derive(Debug, Default)]
struct Keys {
    set: RwLock<Arc<Vec<Key>>>,
    /// Serializes fetches; holds when the last one finished, and its error if it failed.
    fetch: tokio::sync::Mutex<Option<(Instant, Option<String>)>>,
}

/// What a validated token is remembered with: its claims, and the configuration they were read
/// under (a commit that changes the issuer's claims makes the entry miss).
#[derive(Debug)]
struct Remembered {
    issuer: Issuer,
    aud: Vec<String>,
    nbf: Option<i64>,
    signed: Signed,
}

/// The JWKS caches and the validated-token cache; one per gateway ([`crate::gateway::proxy::State`]).
pub struct Sso {
    http: HttpClient,
    issuers: RwLock<HashMap<String, Arc<Keys>>>,
    tokens: RwLock<HashMap<Box<str>, Arc<Remembered>>>,
    /// Least time between two key fetches of one issuer (an unknown `kid` cannot make the gateway
    /// hammer the IdP). 10 s by default.
    pub refresh_min: Duration,
}

/// The parts of a token read before its signature is checked.
struct Parsed<'a> {
    alg: Alg,
    kid: Option<String>,
    claims: Value,
    signing_input: &'a str,
    signature: Vec<u8>,
}

// === impl Alg ===

impl Alg {
    /// The accepted algorithm named `s`; `none`, `HS*` and anything unknown are refused.
    pub fn parse(s: &str) -> Result<Alg, AuthError> {
        Ok(match s {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" | "Ed25519" => Alg::EdDSA,
            other => return Err(AuthError::Algorithm(other.chars().take(16).collect())),
        })
    }

    /// Verifies `sig` over `msg` with `key`, if the key's type fits the algorithm.
    fn verify(self, key: &Material, msg: &[u8], sig: &[u8]) -> bool {
        use Alg::*;
        match (self, key) {
            (RS256 | RS384 | RS512 | PS256 | PS384 | PS512, Material::Rsa { n, e }) => {
                let params = match self {
                    RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }.verify(params, msg, sig).is_ok()
            }
            (ES256, Material::P256(point)) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(msg, sig).is_ok(),
            (ES384, Material::P384(point)) => UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(msg, sig).is_ok(),
            (EdDSA, Material::Ed25519(x)) => UnparsedPublicKey::new(&signature::ED25519, x).verify(msg, sig).is_ok(),
            _ => false,
        }
    }

    fn fits(self, key: &Material) -> bool {
        use Alg::*;
        matches!(
            (self, key),
            (RS256 | RS384 | RS512 | PS256 | PS384 | PS512, Material::Rsa { .. }) | (ES256, Material::P256(_)) | (ES384, Material::P384(_)) | (EdDSA, Material::Ed25519(_))
        )
    }
}

/// What a signed-in session is bound to instead of a token hash: sha256 of issuer and identity.
pub fn session_key(issuer: &str, identity: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(format!("sso\n{issuer}\n{identity}").as_bytes()).into()
}

/// `true` when `bearer` has the shape of a JWS compact serialization: three base64url parts.
pub fn looks_like_jwt(bearer: &str) -> bool {
    let mut parts = 0;
    for part in bearer.split('.') {
        parts += 1;
        if parts > 3 || (parts < 3 && part.is_empty()) || !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return false;
        }
    }
    parts == 3 && bearer.len() <= MAX_TOKEN
}

/// The `iss` of a JWT-shaped bearer, read without any validation (to pick the issuer whose keys
/// then decide). `None` when the payload is not a JSON object with a string `iss`.
pub fn peek_issuer(bearer: &str) -> Option<String> {
    let payload = bearer.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

fn parse(token: &str) -> Result<Parsed<'_>, AuthError> {
    if !looks_like_jwt(token) {
        return Err(AuthError::Malformed);
    }
    let (signing_input, sig) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(AuthError::Malformed)?;
    let header: Value = URL_SAFE_NO_PAD.decode(header).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(AuthError::Malformed)?;
    let alg = Alg::parse(header.get("alg").and_then(Value::as_str).ok_or(AuthError::Malformed)?)?;
    // A token that needs an extension we do not implement is refused (RFC 7515 §4.1.11).
    if header.get("crit").is_some() {
        return Err(AuthError::Malformed);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    let claims: Value = URL_SAFE_NO_PAD.decode(payload).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(AuthError::Malformed)?;
    if !claims.is_object() {
        return Err(AuthError::Malformed);
    }
    let signature = URL_SAFE_NO_PAD.decode(sig).map_err(|_| AuthError::Malformed)?;
    Ok(Parsed { alg, kid, claims, signing_input, signature })
}

/// A claim that must be a number of seconds (`exp`, `nbf`).
fn seconds(claims: &Value, name: &str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)).map(Some).ok_or(AuthError::Malformed),
    }
}

/// `aud` as a list (a string is a list of one).
fn audiences(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// The checks that depend on the time and the request, run on every request (cached or not).
fn timely(r: &Remembered, audiences_accepted: &[&str], now: i64) -> Result<(), AuthError> {
    if now > r.signed.exp.saturating_add(SKEW) {
        return Err(AuthError::Expired);
    }
    if r.nbf.is_some_and(|nbf| now.saturating_add(SKEW) < nbf) {
        return Err(AuthError::NotYetValid);
    }
    if !r.aud.iter().any(|a| audiences_accepted.contains(&a.as_str())) {
        return Err(AuthError::Audience);
    }
    Ok(())
}

/// The scopes a token grants: `scope` (RFC 9068, space-separated), else `scp` (a string or a
/// list, as Entra ID and Okta write it).
fn granted_scopes(claims: &Value) -> Vec<&str> {
    match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => s.split(' ').filter(|x| !x.is_empty()).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Parses one JWK; `None` for a key that is not for signatures or of a type we do not accept.
fn parse_jwk(v: &Value) -> Option<Key> {
    let s = |name: &str| v.get(name).and_then(Value::as_str);
    let b = |name: &str| s(name).and_then(|x| URL_SAFE_NO_PAD.decode(x.trim_end_matches('=')).ok());
    if s("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = match s("alg") {
        Some(a) => Some(Alg::parse(a).ok()?),
        None => None,
    };
    let material = match (s("kty")?, s("crv")) {
        ("RSA", _) => {
            let n = b("n")?;
            let e = b("e")?;
            (n.len() >= 256).then_some(Material::Rsa { n, e })?
        }
        ("EC", Some("P-256")) => Material::P256([&[4u8][..], &b("x")?, &b("y")?].concat()),
        ("EC", Some("P-384")) => Material::P384([&[4u8][..], &b("x")?, &b("y")?].concat()),
        ("OKP", Some("Ed25519")) => Material::Ed25519(b("x")?),
        _ => return None,
    };
    Some(Key { kid: s("kid").map(str::to_string), alg, material })
}

/// The keys of a JWKS document (`{"keys": [...]}`), at most [`MAX_KEYS`].
fn parse_jwks(doc: &Value) -> Vec<Key> {
    doc.get("keys").and_then(Value::as_array).map(|keys| keys.iter().filter_map(parse_jwk).take(MAX_KEYS).collect()).unwrap_or_default()
}

/// RFC 8414's metadata URL of `issuer`: the well-known segment between the origin and the path.
fn rfc8414(issuer: &str) -> String {
    let issuer = issuer.trim_end_matches('/');
    let after = issuer.find("://").map_or(0, |i| i + 3);
    match issuer[after..].find('/') {
        Some(i) => format!("{}/.well-known/oauth-authorization-server{}", &issuer[..after + i], &issuer[after + i..]),
        None => format!("{issuer}/.well-known/oauth-authorization-server"),
    }
}

/// `Ok` for an `https://` URL or `http://` to a loopback host (a `jwks_uri` from discovery).
fn fetchable(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') { v6.split(']').next().unwrap_or("") } else { authority.split(':').next().unwrap_or("") };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

// === impl Sso ===

impl Sso {
    pub fn new(http: HttpClient) -> Sso {
        Sso { http, issuers: RwLock::new(HashMap::new()), tokens: RwLock::new(HashMap::new()), refresh_min: Duration::from_secs(10) }
    }

    fn keys(&self, issuer: &str) -> Arc<Keys> {
        if let Some(k) = self.issuers.read().expect("sso lock").get(issuer) {
            return k.clone();
        }
        let mut map = self.issuers.write().expect("sso lock");
        if map.len() >= 64 && !map.contains_key(issuer) {
            map.clear(); // issuers come from commits; a bounded map, refilled on demand
        }
        map.entry(issuer.to_string()).or_default().clone()
    }

    /// Installs a key set for `issuer` as if fetched (benchmarks, and a test that needs no server).
    pub fn preload(&self, issuer: &str, jwks: &Value) {
        let keys = self.keys(issuer);
        *keys.set.write().expect("sso lock") = Arc::new(parse_jwks(jwks));
    }

    /// Forgets every validated token (the next use of each verifies its signature again).
    pub fn forget_tokens(&self) {
        self.tokens.write().expect("sso lock").clear();
    }

    /// The issuer of `token` if it was validated before (no decoding: the common case of a
    /// client reusing its access token); else [`peek_issuer`].
    pub fn issuer_of(&self, token: &str) -> Option<String> {
        let hit = self.tokens.read().expect("sso lock").get(token).map(|r| r.issuer.issuer.clone());
        hit.or_else(|| peek_issuer(token))
    }

    /// Validates `token` for `issuer` at `now` with the keys cached, without any IO.
    /// `Err(None)` means the signing key is not cached (fetch, then ask again).
    pub fn check(&self, issuer: &Issuer, token: &str, audiences_accepted: &[&str], now: i64) -> Result<Signed, Option<AuthError>> {
        let hit = self.tokens.read().expect("sso lock").get(token).cloned();
        if let Some(r) = hit
            && r.issuer == *issuer {
                timely(&r, audiences_accepted, now).map_err(Some)?;
                return Ok(r.signed.clone());
            }
        let p = parse(token).map_err(Some)?;
        if p.claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
            return Err(Some(AuthError::Issuer));
        }
        let set = self.keys(&issuer.issuer).set.read().expect("sso lock").clone();
        let candidates: Vec<&Key> = set
            .iter()
            .filter(|k| p.kid.is_none() || k.kid == p.kid)
            .filter(|k| k.alg.is_none_or(|a| a == p.alg) && p.alg.fits(&k.material))
            .collect();
        if candidates.is_empty() {
            return Err(None);
        }
        if !candidates.iter().any(|k| p.alg.verify(&k.material, p.signing_input.as_bytes(), &p.signature)) {
            return Err(Some(AuthError::Signature));
        }
        // Signed by the issuer: now the claims mean something.
        let exp = seconds(&p.claims, "exp").map_err(Some)?.ok_or(Some(AuthError::Malformed))?;
        let nbf = seconds(&p.claims, "nbf").map_err(Some)?;
        let identity = match p.claims.get(&issuer.identity_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(Some(AuthError::NoIdentity(issuer.identity_claim.clone()))),
        };
        let groups = match issuer.groups_claim.as_deref().and_then(|c| p.claims.get(c)) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).take(1024).map(str::to_string).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let r = Remembered { issuer: issuer.clone(), aud: audiences(&p.claims), nbf, signed: Signed { issuer: Arc::from(issuer.issuer.as_str()), identity, groups, exp } };
        timely(&r, audiences_accepted, now).map_err(Some)?;
        // Checked after everything else, so that insufficient_scope (a 403 the client may step
        // up from) is only said of a token that is otherwise valid. A token refused here is not
        // remembered; one remembered was checked under the same `issuer` (scopes included).
        if !issuer.scopes.is_empty() {
            let granted = granted_scopes(&p.claims);
            if !issuer.scopes.iter().all(|s| granted.contains(&s.as_str())) {
                return Err(Some(AuthError::InsufficientScope));
            }
        }
        let signed = r.signed.clone();
        let mut cache = self.tokens.write().expect("sso lock");
        if cache.len() >= MAX_CACHED_TOKENS {
            cache.retain(|_, r| r.signed.exp.saturating_add(SKEW) >= now);
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.clear();
            }
        }
        cache.insert(Box::from(token), Arc::new(r));
        Ok(signed)
    }

    /// Validates `token` for `issuer`: from the caches when it can, else fetching the issuer's
    /// keys (first use, or an unknown `kid`: at most once per `refresh_min`).
    pub async fn validate(&self, issuer: &Issuer, token: &str, audiences_accepted: &[&str]) -> Result<Signed, AuthError> {
        let now = crate::units::unix_now();
        match self.check(issuer, token, audiences_accepted, now) {
            Ok(s) => return Ok(s),
            Err(Some(e)) => return Err(e),
            Err(None) => {}
        }
        let keys = self.keys(&issuer.issuer);
        {
            let mut last = keys.fetch.lock().await;
            // Another request may have fetched while this one waited: look again first.
            match self.check(issuer, token, audiences_accepted, now) {
                Ok(s) => return Ok(s),
                Err(Some(e)) => return Err(e),
                Err(None) => {}
            }
            if let Some((at, error)) = last.as_ref()
                && at.elapsed() < self.refresh_min {
                    return Err(error.clone().map_or(AuthError::UnknownKey, AuthError::Keys));
                }
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch_jwks(&issuer.issuer)).await.unwrap_or_else(|_| Err("timed out".into()));
            *last = Some((Instant::now(), fetched.as_ref().err().cloned()));
            match fetched {
                Ok(set) => *keys.set.write().expect("sso lock") = Arc::new(set),
                Err(e) => {
                    tracing::warn!(issuer = %issuer.issuer, error = %e, "cannot fetch the identity provider's keys");
                    return Err(AuthError::Keys(e));
                }
            }
        }
        self.check(issuer, token, audiences_accepted, now).map_err(|e| e.unwrap_or(AuthError::UnknownKey))
    }

    /// Discovery (OpenID Connect, else RFC 8414 authorization server metadata), then the key set.
    async fn fetch_jwks(&self, issuer: &str) -> Result<Vec<Key>, String> {
        let mut discovery = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let doc = match self.get_json(&discovery).await {
            Ok(doc) => doc,
            Err(oidc) => {
                discovery = rfc8414(issuer);
                self.get_json(&discovery).await.map_err(|e| format!("{oidc}; {e}"))?
            }
        };
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(format!("{discovery} names another issuer"));
        }
        let jwks_uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or_else(|| format!("{discovery} has no jwks_uri"))?;
        if !fetchable(jwks_uri) {
            return Err(format!("jwks_uri {jwks_uri:?} is not https"));
        }
        let jwks = self.get_json(jwks_uri).await?;
        let keys = parse_jwks(&jwks);
        tracing::info!(issuer, keys = keys.len(), "fetched the identity provider's signing keys");
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let req = Request::get(url).header(header::ACCEPT, "application/json").body(Full::new(Bytes::new())).map_err(|e| format!("{url}: {e}"))?;
        let resp = self.http.request(req).await.map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT).collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests;
