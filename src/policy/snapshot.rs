//! The immutable, validated model of one state of the policy repository.
//!
//! A [`Snapshot`] only comes out of `repo::compile`, so holding one proves that the repository
//! state it describes passed validation. It is never mutated: a new commit builds a new snapshot.
//! Lookups that run per call (identity, token hash, server, access entries by server) are hash
//! maps, so their cost does not grow with the number of grants and servers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::policy::resource::UriPattern;
use crate::policy::{Policy, Quota};
use crate::units::Date;

/// One compiled state of the policy repository.
#[derive(Debug)]
pub struct Snapshot {
    /// The commit it was built from (hex), or None when read from a working tree.
    pub commit: Option<String>,
    /// sha256 (hex) over every file read, in path order: identifies the content independently of
    /// git (a working tree has no commit).
    pub digest: String,
    pub settings: Settings,
    pub servers: HashMap<String, Arc<Server>>,
    /// Path (`policies/x.yaml`) → policy.
    pub policies: BTreeMap<String, Arc<Policy>>,
    pub roles: BTreeMap<String, Role>,
    pub grants: Vec<Grant>,
    pub(crate) by_identity: HashMap<String, usize>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) by_token: HashMap<[u8; 32], (usize, usize)>,
    /// Identity-provider group → the roles that name it (`roles/<name>.yaml` `groups:`).
    pub(crate) by_group: HashMap<String, Vec<String>>,
    /// Every server's declared tool names, for screening definitions (built on first use).
    pub(crate) tool_names: std::sync::OnceLock<crate::supply::ToolNames>,
}

/// `gatehouse.yaml`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Settings {
    pub audit_retention_days: Option<u32>,
    /// `auth.issuers`: identity providers whose access tokens (JWTs) sign people in.
    pub issuers: Vec<Issuer>,
}

/// One trusted identity provider (`gatehouse.yaml` `auth.issuers[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issuer {
    /// The `iss` its tokens carry, and where OpenID discovery starts.
    pub issuer: String,
    /// What the tokens' `aud` must contain: the gateway's public `/mcp` URL.
    pub audience: String,
    /// The claim matched against grants' `identity`.
    pub identity_claim: String,
    /// The claim listing the person's groups, which roles may name.
    pub groups_claim: Option<String>,
    /// Scopes an access token must carry (in `scope`, or `scp`), all of them; named in the 401
    /// challenge and the resource metadata. Empty: no scope is required or challenged.
    pub scopes: Vec<String>,
}

#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub file: String,
    pub description: Option<String>,
    pub transport: Transport,
    pub credentials: Credentials,
    /// The baseline policy every grant is also held to.
    pub policy: Option<Arc<Policy>>,
    pub timeout: Duration,
    pub supplier: Option<Supplier>,
    /// Declared tools: classification and definition pins.
    pub tools: BTreeMap<String, ToolInfo>,
    /// `pin: required`: a tool the upstream offers without a `sha256` pin here is quarantined.
    pub pin_required: bool,
    /// `protocol: handshake`: never probe `server/discover`; always `initialize` (2025-11-25 and
    /// earlier), for an upstream whose tools ask the client things or whose resources are
    /// subscribed to (what 2026-07-28 does differently).
    pub handshake_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    StreamableHttp { url: String },
    Sse { url: String },
    Stdio { command: Vec<String> },
}

/// Credentials the gateway adds to upstream requests; values are templates with
/// `${secret:NAME}` references, resolved only by the daemon.
#[derive(Debug, Default)]
pub struct Credentials {
    pub headers: Vec<(String, Template)>,
    pub env: Vec<(String, Template)>,
}

/// A string with `${secret:NAME}` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Secret(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Supplier {
    pub operated_by: Option<String>,
    pub vendor: Option<String>,
    pub risk: Option<String>,
    pub data: Vec<String>,
    pub agreement: Option<String>,
    pub reviewed: Option<Review>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub on: Date,
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Read,
    Write,
    Destructive,
    Execute,
    Financial,
}

#[derive(Debug, Clone, Default)]
pub struct ToolInfo {
    pub category: Option<Category>,
    /// Pinned definition hash (hex), if any.
    pub sha256: Option<String>,
}

#[derive(Debug)]
pub struct Role {
    pub name: String,
    pub file: String,
    /// Identity-provider groups whose members hold this role when signed in through an issuer.
    pub groups: Vec<String>,
    pub access: Vec<Access>,
}

/// One identity's grant: `grants/<name>.yaml`.
#[derive(Debug)]
pub struct Grant {
    /// File stem.
    pub name: String,
    pub file: String,
    pub identity: String,
    pub kind: Kind,
    pub owner: Option<String>,
    pub tokens: Vec<Token>,
    /// Direct entries and role entries, expanded.
    pub access: Vec<Access>,
    /// Server → indexes into `access`.
    pub by_server: HashMap<String, Vec<usize>>,
    pub quotas: Vec<Arc<Quota>>,
    pub review: Option<Review>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Human,
    Agent,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub sha256: [u8; 32],
    pub issued: Option<Date>,
    pub expires: Option<Date>,
}

/// One access entry: a server, which of its tools, resources and prompts, and an optional extra
/// policy (for tools).
#[derive(Debug, Clone)]
pub struct Access {
    /// `grants/alice.yaml#/access/0`, or for a role entry
    /// `roles/repo-reader.yaml#/access/0 via grants/bob.yaml#/access/1`.
    pub id: Arc<str>,
    /// `allowed by <id>`, prebuilt so that allowing a call allocates nothing.
    pub allow_message: Arc<str>,
    pub server: String,
    pub tools: ToolSet,
    pub policy: Option<Arc<Policy>>,
    /// `resources:` patterns, in file order; none if absent.
    pub resources: Vec<ResourceRule>,
    /// `prompts:` names, in file order; none if absent.
    pub prompts: Vec<PromptRule>,
}

/// One `resources:` pattern of an access entry, with what an allowed read names.
#[derive(Debug, Clone)]
pub struct ResourceRule {
    pub pattern: UriPattern,
    /// `grants/alice.yaml#/access/0/resources/1`, or for a role entry
    /// `roles/r.yaml#/access/0/resources/1 via grants/bob.yaml#/access/2`.
    pub id: Arc<str>,
    /// `allowed by <id> (<pattern>)`.
    pub allow_message: Arc<str>,
}

/// One `prompts:` entry of an access entry.
#[derive(Debug, Clone)]
pub struct PromptRule {
    /// None for `"*"`: every prompt of the server.
    pub name: Option<String>,
    /// `grants/alice.yaml#/access/0/prompts/0` (as [`ResourceRule::id`]).
    pub id: Arc<str>,
    pub allow_message: Arc<str>,
}

#[derive(Debug, Clone)]
pub enum ToolSet {
    All,
    Only(HashSet<String>),
}

// === impl Snapshot ===

impl Snapshot {
    /// Every server's declared tool names (`servers/*.yaml` `tools:`), for the cross-server
    /// rule of [`crate::supply::screen`].
    pub fn tool_names(&self) -> &crate::supply::ToolNames {
        self.tool_names.get_or_init(|| {
            let mut names = crate::supply::ToolNames::default();
            for (name, s) in &self.servers {
                names.add(name, s.tools.keys().map(String::as_str));
            }
            names
        })
    }

    /// The grant of an identity, looked up by its `identity` field or by its file stem.
    pub fn grant(&self, identity: &str) -> Option<&Grant> {
        self.by_identity.get(identity).or_else(|| self.by_name.get(identity)).map(|&i| &self.grants[i])
    }

    /// The grant and token a bearer token's sha256 belongs to.
    pub fn grant_by_token_hash(&self, sha256: &[u8; 32]) -> Option<(&Grant, &Token)> {
        self.by_token.get(sha256).map(|&(g, t)| (&self.grants[g], &self.grants[g].tokens[t]))
    }

    /// Index of the grant whose `identity` is `identity` (never a file stem: what an identity
    /// provider asserts is matched against `identity` only).
    pub fn grant_index_by_identity(&self, identity: &str) -> Option<usize> {
        self.by_identity.get(identity).copied()
    }

    /// The grant in `grants/<name>.yaml`.
    pub fn grant_by_name(&self, name: &str) -> Option<&Grant> {
        self.by_name.get(name).map(|&i| &self.grants[i])
    }

    /// Indexes (grant, token) of a bearer token's sha256.
    pub fn grant_index_by_token_hash(&self, sha256: &[u8; 32]) -> Option<(usize, usize)> {
        self.by_token.get(sha256).copied()
    }

    /// The configured issuer whose `iss` is `iss`.
    pub fn issuer(&self, iss: &str) -> Option<&Issuer> {
        self.settings.issuers.iter().find(|i| i.issuer == iss)
    }

    /// The roles that name any of `groups`, sorted and without repeats.
    pub fn roles_of_groups<'a>(&'a self, groups: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut out: Vec<&str> = groups.into_iter().filter_map(|g| self.by_group.get(g)).flatten().map(String::as_str).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The first 12 hex digits of the commit, or `worktree`.
    pub fn short_commit(&self) -> &str {
        match &self.commit {
            Some(c) => &c[..c.len().min(12)],
            None => "worktree",
        }
    }

    /// Server names in sorted order.
    pub fn server_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.servers.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

// === impl Grant ===

impl Grant {
    /// This grant plus the access entries of `roles`, as if it listed `- role: <name>` for each
    /// (what a signed-in person's groups add, `via` naming why). A role already among the grant's
    /// entries is not added twice. Like any role entry, an added entry holds its own policies and
    /// cannot loosen the grant's: every entry reaching a tool must allow the call.
    pub fn with_roles(&self, roles: &[(&Role, String)]) -> Grant {
        let mut access = self.access.clone();
        for (role, via) in roles {
            let prefix = format!("{}#", role.file);
            if self.access.iter().any(|a| a.id.starts_with(&prefix)) {
                continue;
            }
            access.extend(role.access.iter().map(|ra| Access {
                id: Arc::from(format!("{} via {via}", ra.id)),
                allow_message: Arc::from(format!("allowed by {} via {via}", ra.id)),
                ..ra.clone()
            }));
        }
        let mut by_server: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, a) in access.iter().enumerate() {
            by_server.entry(a.server.clone()).or_default().push(i);
        }
        Grant {
            name: self.name.clone(),
            file: self.file.clone(),
            identity: self.identity.clone(),
            kind: self.kind,
            owner: self.owner.clone(),
            tokens: self.tokens.clone(),
            access,
            by_server,
            quotas: self.quotas.clone(),
            review: self.review.clone(),
        }
    }
}

// === impl ToolSet ===

impl ToolSet {
    pub fn contains(&self, tool: &str) -> bool {
        match self {
            ToolSet::All => true,
            ToolSet::Only(s) => s.contains(tool),
        }
    }
}

// === impl PromptRule ===

impl PromptRule {
    pub fn covers(&self, prompt: &str) -> bool {
        self.name.as_deref().is_none_or(|n| n == prompt)
    }

    /// `*` or the name, as the access matrix shows it.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("*")
    }
}

// === impl Template ===

impl Template {
    /// Names of the secrets referenced.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(s) => Some(s.as_str()),
            Part::Literal(_) => None,
        })
    }
}

// === impl Category ===

impl Category {
    pub fn parse(s: &str) -> Option<Category> {
        Some(match s {
            "read" => Category::Read,
            "write" => Category::Write,
            "destructive" => Category::Destructive,
            "execute" => Category::Execute,
            "financial" => Category::Financial,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Read => "read",
            Category::Write => "write",
            Category::Destructive => "destructive",
            Category::Execute => "execute",
            Category::Financial => "financial",
        }
    }

    /// Destructive, execute and financial tools are privileged (A.8.2).
    pub fn is_privileged(self) -> bool {
        matches!(self, Category::Destructive | Category::Execute | Category::Financial)
    }
}
