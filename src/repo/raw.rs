//! The serde mirror of the files users write: exactly what is in the file, nothing resolved.
//!
//! Every struct denies unknown fields, so a typo (`deny-if`, `rate_limt`) is an error with its
//! position instead of a silently ignored rule. Fields whose shape varies (`version: 1` or `"1"`,
//! `tools: "*"` or a list, a condition's `value`) are kept as `serde_json::Value` and checked by
//! the compiler, which can say precisely what was expected. Containers that hold many
//! independent items (`tools`, `access`, `cases`) are kept as raw values too and deserialized item
//! by item, so one bad rule does not hide the problems of the others.

#![allow(dead_code)] // descriptions and notes are accepted for people; the engine does not read them

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `gatehouse.yaml`: repository-wide settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub version: Option<Value>,
    pub description: Option<String>,
    pub audit: Option<AuditSettings>,
    pub changes: Option<ChangeSettings>,
    pub auth: Option<AuthSettings>,
}

/// `changes:`: only commits signed by a listed key are applied.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeSettings {
    #[serde(default)]
    pub require_signed: bool,
    /// A file in git's allowed signers format (SSH keys).
    pub allowed_signers: Option<String>,
    /// A file, or a directory of files, of OpenPGP public keys.
    pub openpgp_keys: Option<String>,
}

/// `auth:` in `gatehouse.yaml`: the identity providers whose access tokens sign people in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(default)]
    pub issuers: Vec<Value>,
}

/// One entry of `auth.issuers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub issuer: String,
    pub audience: String,
    pub identity_claim: String,
    pub groups_claim: Option<String>,
    /// Scopes every access token must carry (`scope` or `scp`), challenged on a 401.
    #[serde(default)]
    pub scopes: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    pub retention_days: Option<u32>,
}

/// `servers/<name>.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: String,
    pub description: Option<String>,
    pub transport: String,
    pub url: Option<String>,
    pub command: Option<Vec<String>>,
    pub credentials: Option<Credentials>,
    pub policy: Option<String>,
    pub timeout: Option<String>,
    pub supplier: Option<Supplier>,
    /// `required` | `optional` (default).
    pub pin: Option<String>,
    /// `auto` (default) | `handshake`.
    pub protocol: Option<String>,
    pub tools: Option<BTreeMap<String, ToolClass>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supplier {
    pub operated_by: Option<String>,
    pub vendor: Option<String>,
    pub risk: Option<String>,
    #[serde(default)]
    pub data: Vec<String>,
    pub agreement: Option<String>,
    pub reviewed: Option<Review>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    pub on: String,
    pub by: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolClass {
    pub category: Option<String>,
    pub sha256: Option<String>,
    pub description: Option<String>,
}

/// `policies/<name>.(yaml|yml|json)`: both rule styles share this document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub version: Option<Value>,
    pub description: Option<String>,
    pub default: Option<String>,
    #[serde(default)]
    pub hide: Vec<String>,
    /// tool name (or `"*"`) → [`ToolEntry`], deserialized one by one.
    #[serde(default)]
    pub tools: BTreeMap<String, Value>,
    pub all_tools: Option<AllTools>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllTools {
    #[serde(default)]
    pub limits: Vec<Limit>,
}

/// One tool's entry. `{}` allows the tool.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolEntry {
    pub description: Option<String>,
    /// Seed style: any clause whose conditions all match denies.
    #[serde(default)]
    pub deny_if: Vec<Clause>,
    /// Seed style: conditions that must all hold, else deny.
    #[serde(default)]
    pub require: Vec<Condition>,
    /// Seed style: quotas on this tool.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Rules style (Intercept-compatible).
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clause {
    pub name: Option<String>,
    pub message: Option<String>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub path: String,
    pub op: String,
    pub value: Option<Value>,
}

/// A seed-style quota: `{name, rate_limit}` or `{name, sum, max, window}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub name: Option<String>,
    pub rate_limit: Option<String>,
    pub sum: Option<String>,
    pub max: Option<Value>,
    pub window: Option<String>,
    pub per: Option<String>,
}

/// A rules-style rule: conditions, an unconditional `action: deny`, a `rate_limit`, or a
/// `state` counter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: Option<String>,
    pub description: Option<String>,
    pub action: Option<String>,
    pub conditions: Option<Vec<Condition>>,
    pub on_deny: Option<String>,
    pub rate_limit: Option<String>,
    pub state: Option<State>,
    pub per: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub counter: String,
    pub window: String,
    pub increment_from: Option<String>,
    pub increment: Option<Value>,
}

/// `roles/<name>.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub description: Option<String>,
    /// Identity-provider groups whose members hold this role when they sign in.
    #[serde(default)]
    pub groups: Vec<Value>,
    #[serde(default)]
    pub access: Vec<Value>,
}

/// `grants/<name>.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub identity: String,
    pub kind: String,
    pub owner: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub tokens: Vec<Token>,
    #[serde(default)]
    pub access: Vec<Value>,
    #[serde(default)]
    pub quotas: Vec<Limit>,
    pub review: Option<Review>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub sha256: String,
    pub issued: Option<String>,
    pub expires: Option<String>,
    pub note: Option<String>,
}

/// One access entry of a grant or role: `{server, tools, resources, prompts, policy}` or (grants
/// only) `{role}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    pub server: Option<String>,
    pub tools: Option<Value>,
    /// `"*"` or a list of URI patterns.
    pub resources: Option<Value>,
    /// `"*"` or a list of prompt names.
    pub prompts: Option<Value>,
    pub policy: Option<String>,
    pub role: Option<String>,
}

/// `tests/<name>.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tests {
    #[serde(default)]
    pub cases: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub identity: String,
    pub server: String,
    pub tool: String,
    #[serde(default)]
    pub args: Value,
    pub expect: String,
    pub rule: Option<String>,
    /// Counts already spent in the current window, by counter (`state.<tool>.<counter>`) or
    /// quota rule name; quotas the call reaches start from 0 otherwise.
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, f64>,
    /// The caller's identity-provider groups, as a signed-in person (roles naming them apply).
    #[serde(default)]
    pub groups: Vec<String>,
}
