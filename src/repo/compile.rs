//! Files → [`Snapshot`]: parse every file, resolve references, validate, and report every
//! problem at once. The only way to build a snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::load::Doc;
use super::policy::{compile_limit, compile_policy};
use super::signers::{self, TrustList};
use super::{Entry, Files, raw, scan};
use crate::diag::{Diagnostic, Diagnostics, Pos};
use crate::policy::resource::UriPattern;
use crate::policy::{Policy, Verdict};
use crate::policy::snapshot::{
    Access, Category, Credentials, Grant, Kind, Part, PromptRule, ResourceRule, Review, Role, Server, Settings, Snapshot, Supplier, Template, Token,
    ToolInfo, ToolSet, Transport,
};
use crate::units::{Date, parse_duration};

/// A valid repository: the snapshot, its policy tests, and its warnings.
#[derive(Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    /// `changes:` of `gatehouse.yaml` with its keys: who may sign this commit's children.
    pub trust: Arc<TrustList>,
    pub tests: Vec<TestCase>,
    pub warnings: Vec<Diagnostic>,
}

/// One case of `tests/*.yaml`.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub file: String,
    pub pos: Pos,
    pub name: String,
    pub identity: String,
    pub server: String,
    pub tool: String,
    pub args: Value,
    pub expect: Verdict,
    /// A substring the deciding rule id must contain.
    pub rule: Option<String>,
    /// Starting counts of the call's quotas (see `raw::Case::counters`).
    pub counters: Vec<(String, f64)>,
    /// The caller's identity-provider groups (`raw::Case::groups`).
    pub groups: Vec<String>,
}

/// The directories of a policy repository and whether they may nest.
const DIRS: [(&str, bool); 5] = [("servers", false), ("policies", true), ("roles", false), ("grants", false), ("tests", false)];

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Compiles the files of a repository. Err holds every diagnostic (errors and warnings).
pub fn compile(files: &Files) -> Result<Compiled, Diagnostics> {
    let mut d = Diagnostics::default();
    let mut docs: HashMap<&str, Vec<Doc>> = HashMap::new();
    let mut settings_doc = None;
    // Every file that exists, parsed or not: a reference to a file with its own errors is not
    // reported a second time as "does not exist".
    let mut refs = Refs::default();

    for (path, entry) in &files.entries {
        if let Entry::Blob(bytes) = entry
            && let Ok(text) = std::str::from_utf8(bytes) {
                scan::scan(path, text, &mut d);
            }
        let (top, rest) = path.split_once('/').unwrap_or(("", path));
        let is_settings = matches!(path.as_str(), "gatehouse.yaml" | "gatehouse.yml");
        let Some(&(dir, nests)) = DIRS.iter().find(|(name, _)| *name == top) else {
            if !is_settings {
                continue; // README, CI files, …: only scanned for secrets
            }
            settings_doc = parse_entry(path, entry, &mut d);
            continue;
        };
        if !has_policy_ext(path) {
            d.warning(path, Pos::default(), format!("ignored: files in {dir}/ must end in .yaml, .yml or .json"));
            continue;
        }
        if !nests && rest.contains('/') {
            d.error(path, Pos::default(), format!("{dir}/ does not nest: move this file directly into {dir}/"));
            continue;
        }
        match dir {
            "policies" => {
                refs.policy_files.insert(path.clone());
            }
            "servers" => {
                refs.server_files.insert(stem(path).to_string());
            }
            "roles" => {
                refs.role_files.insert(stem(path).to_string());
            }
            _ => {}
        }
        if let Some(doc) = parse_entry(path, entry, &mut d) {
            docs.entry(dir).or_default().push(doc);
        }
    }
    let mut take = |k: &str| docs.remove(k).unwrap_or_default();
    let (server_docs, policy_docs, role_docs, grant_docs, test_docs) =
        (take("servers"), take("policies"), take("roles"), take("grants"), take("tests"));

    let (settings, trust) = settings_doc.map(|doc| compile_settings(&doc, &files.entries, &mut d)).unwrap_or_default();

    for doc in &policy_docs {
        if let Some(p) = compile_policy(doc, &mut d) {
            refs.policies.insert(doc.file.clone(), Arc::new(p));
        }
    }
    let mut servers = HashMap::new();
    for doc in &server_docs {
        if let Some(s) = compile_server(doc, &refs, &mut d) {
            servers.insert(s.name.clone(), Arc::new(s));
        }
    }
    refs.servers = servers.clone();
    let mut roles = BTreeMap::new();
    for doc in &role_docs {
        if let Some(r) = compile_role(doc, &refs, &mut d) {
            roles.insert(r.name.clone(), r);
        }
    }
    let mut grants = Vec::new();
    let mut by_identity: HashMap<String, usize> = HashMap::new();
    let mut by_token: HashMap<[u8; 32], (usize, usize)> = HashMap::new();
    for doc in &grant_docs {
        let Some(g) = compile_grant(doc, &refs, &roles, &mut d) else { continue };
        let gi = grants.len();
        if let Some(&other) = by_identity.get(&g.identity) {
            let other: &Grant = &grants[other];
            doc.value_error(&mut d, "/identity", format!("identity {:?} already has a grant in {}: one file per identity", g.identity, other.file));
            continue;
        }
        for (ti, t) in g.tokens.iter().enumerate() {
            if let Some(&(og, _)) = by_token.get(&t.sha256) {
                let other: &Grant = &grants[og];
                doc.value_error(&mut d, &format!("/tokens/{ti}/sha256"), format!("this token hash is already used by {}: every token belongs to one grant", other.file));
            } else {
                by_token.insert(t.sha256, (gi, ti));
            }
        }
        // Only a heuristic worth a warning: every issuer asserts email addresses, and this grant
        // has no token of its own and an identity that is not one.
        let emails_only = !settings.issuers.is_empty() && settings.issuers.iter().all(|i| i.identity_claim == "email");
        if emails_only && g.tokens.is_empty() && !g.identity.contains('@') {
            doc.warning(&mut d, "/identity", format!("no token and no issuer can sign in {:?}: every issuer's identity_claim is email", g.identity));
        }
        by_identity.insert(g.identity.clone(), gi);
        grants.push(g);
    }
    let by_name = grants.iter().enumerate().map(|(i, g)| (g.name.clone(), i)).collect::<HashMap<_, _>>();
    let mut by_group: HashMap<String, Vec<String>> = HashMap::new();
    for r in roles.values() {
        for g in &r.groups {
            by_group.entry(g.clone()).or_default().push(r.name.clone());
        }
    }
    if settings.issuers.is_empty() {
        for doc in &role_docs {
            if roles.get(stem(&doc.file)).is_some_and(|r| !r.groups.is_empty()) {
                doc.warning(&mut d, "/groups", "groups take effect only for people signed in through an issuer, and gatehouse.yaml configures none (auth.issuers)");
            }
        }
    }

    let mut tests = Vec::new();
    for doc in &test_docs {
        compile_tests(doc, &servers, &by_identity, &by_name, &mut tests, &mut d);
    }

    if d.has_errors() {
        return Err(d);
    }
    let snapshot = Snapshot {
        commit: files.commit.clone(),
        digest: digest(files),
        settings,
        servers,
        policies: refs.policies,
        roles,
        grants,
        by_identity,
        by_name,
        by_token,
        by_group,
        tool_names: Default::default(),
    };
    Ok(Compiled { snapshot, trust: Arc::new(trust), tests, warnings: d.sorted().into_iter().cloned().collect() })
}

/// What references may point at, and what exists but failed to compile (so a reference to it
/// is not reported a second time).
#[derive(Default)]
struct Refs {
    policies: BTreeMap<String, Arc<Policy>>,
    policy_files: BTreeSet<String>,
    servers: HashMap<String, Arc<Server>>,
    server_files: BTreeSet<String>,
    role_files: BTreeSet<String>,
}

fn parse_entry<'a>(path: &str, entry: &'a Entry, d: &mut Diagnostics) -> Option<Doc<'a>> {
    match entry {
        Entry::Blob(bytes) => Doc::parse(path, bytes, d),
        Entry::Symlink => {
            d.error(path, Pos::default(), "symbolic links are not read: commit the file itself");
            None
        }
        Entry::TooLarge(n) => {
            d.error(path, Pos::default(), format!("file is {n} bytes; the limit is {} bytes", super::MAX_FILE_BYTES));
            None
        }
    }
}

fn has_policy_ext(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml") || path.ends_with(".json")
}

/// `servers/github.yaml` → `github`.
fn stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

/// sha256 over every path and content, in path order.
fn digest(files: &Files) -> String {
    let mut h = Sha256::new();
    for (path, entry) in &files.entries {
        h.update(path.as_bytes());
        h.update([0]);
        match entry {
            Entry::Blob(b) => {
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
            Entry::Symlink => h.update(b"\x01symlink"),
            Entry::TooLarge(n) => h.update(n.to_be_bytes()),
        }
    }
    hex::encode(h.finalize())
}

/// A list of known names for "did you mean" style messages (short lists only).
fn known(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = names.into_iter().map(|s| s.as_ref().to_string()).collect();
    if v.is_empty() {
        "there are none".to_string()
    } else if v.len() <= 12 {
        format!("known: {}", v.join(", "))
    } else {
        format!("{} are defined", v.len())
    }
}

fn is_server_name(s: &str) -> bool {
    (1..=48).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn date(doc: &Doc, d: &mut Diagnostics, ptr: &str, s: &str) -> Option<Date> {
    Date::parse(s).map_err(|e| doc.value_error(d, ptr, e)).ok()
}

fn review(doc: &Doc, d: &mut Diagnostics, ptr: &str, r: &raw::Review) -> Option<Review> {
    Some(Review { on: date(doc, d, &format!("{ptr}/on"), &r.on)?, by: r.by.clone() })
}

/// The trust list alone (`gatehouse.yaml` and the key files it names), without compiling the
/// rest of the repository: what the reconciler reads of a commit whose children it verifies.
pub fn trust_list(files: &Files) -> Result<TrustList, Diagnostics> {
    let mut d = Diagnostics::default();
    let doc = ["gatehouse.yaml", "gatehouse.yml"].iter().find_map(|p| files.entries.get_key_value(*p)).and_then(|(p, e)| parse_entry(p, e, &mut d));
    let trust = doc.map(|doc| compile_settings(&doc, &files.entries, &mut d).1).unwrap_or_default();
    if d.has_errors() { Err(d) } else { Ok(trust) }
}

fn compile_settings(doc: &Doc, entries: &BTreeMap<String, Entry>, d: &mut Diagnostics) -> (Settings, TrustList) {
    let Some(raw) = doc.typed::<raw::Settings>("", &doc.value, d) else { return Default::default() };
    match &raw.version {
        None => {}
        Some(Value::String(s)) if s == "1" => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(v) => doc.value_error(d, "/version", format!("unsupported version {v}: expected \"1\"")),
    }
    let mut issuers: Vec<crate::policy::snapshot::Issuer> = Vec::new();
    for (i, v) in raw.auth.iter().flat_map(|a| a.issuers.iter()).enumerate() {
        let ptr = format!("/auth/issuers/{i}");
        let Some(r) = doc.typed::<raw::Issuer>(&ptr, v, d) else { continue };
        let mut ok = true;
        if let Err(why) = check_auth_url(&r.issuer) {
            doc.value_error(d, &format!("{ptr}/issuer"), format!("issuer {why}"));
            ok = false;
        }
        if let Err(why) = check_auth_url(&r.audience) {
            doc.value_error(d, &format!("{ptr}/audience"), format!("audience {why} (the gateway's public /mcp URL, the resource clients ask tokens for)"));
            ok = false;
        }
        for (field, claim) in [("identity_claim", Some(&r.identity_claim)), ("groups_claim", r.groups_claim.as_ref())] {
            if let Some(c) = claim
                && c.trim().is_empty() {
                    doc.value_error(d, &format!("{ptr}/{field}"), format!("{field} must name a claim (e.g. email, groups)"));
                    ok = false;
                }
        }
        for (j, scope) in r.scopes.iter().enumerate() {
            // RFC 6749 §3.3 scope-token: it goes into a quoted WWW-Authenticate parameter.
            if scope.is_empty() || !scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)) {
                doc.value_error(d, &format!("{ptr}/scopes/{j}"), format!("scope {scope:?} must be a non-empty scope token: printable ASCII without spaces, quotes or backslashes (RFC 6749 §3.3)"));
                ok = false;
            } else if r.scopes[..j].contains(scope) {
                doc.value_error(d, &format!("{ptr}/scopes/{j}"), format!("scope {scope:?} is listed twice"));
                ok = false;
            }
        }
        if issuers.iter().any(|x| x.issuer == r.issuer) {
            doc.value_error(d, &format!("{ptr}/issuer"), format!("issuer {:?} is listed twice", r.issuer));
            ok = false;
        }
        if ok {
            issuers.push(crate::policy::snapshot::Issuer { issuer: r.issuer, audience: r.audience, identity_claim: r.identity_claim, groups_claim: r.groups_claim, scopes: r.scopes });
        }
    }
    let trust = raw.changes.map(|c| compile_changes(doc, c, entries, d)).unwrap_or_default();
    (Settings { audit_retention_days: raw.audit.and_then(|a| a.retention_days), issuers }, trust)
}

/// `changes:`: the paths must name files of the repository, and a requirement needs keys.
fn compile_changes(doc: &Doc, c: raw::ChangeSettings, entries: &BTreeMap<String, Entry>, d: &mut Diagnostics) -> TrustList {
    let mut trust = TrustList { require_signed: c.require_signed, ..TrustList::default() };
    let clean = |p: &str| p.trim_start_matches("./").to_string();
    if let Some(p) = c.allowed_signers.as_deref().map(clean) {
        match entries.get(&p) {
            Some(Entry::Blob(_)) => trust.allowed_signers = Some(p),
            Some(Entry::Symlink | Entry::TooLarge(_)) => doc.value_error(d, "/changes/allowed_signers", format!("{p} must be a regular file of at most {} bytes", super::MAX_FILE_BYTES)),
            None => doc.value_error(d, "/changes/allowed_signers", format!("{p} does not exist (a file in git's allowed signers format: principals keytype base64-key)")),
        }
    }
    if let Some(p) = c.openpgp_keys.as_deref().map(clean) {
        if signers::openpgp_files(&p, entries).is_empty() {
            doc.value_error(d, "/changes/openpgp_keys", format!("{p} does not exist (a file, or a directory of files, of OpenPGP public keys: gpg --armor --export KEYID)"));
        } else {
            trust.openpgp_keys = Some(p);
        }
    }
    if trust.require_signed && c.allowed_signers.is_none() && c.openpgp_keys.is_none() {
        doc.value_error(d, "/changes/require_signed", "require_signed needs keys to check signatures against: name allowed_signers or openpgp_keys");
    }
    signers::load(&mut trust, entries, d);
    trust
}

/// `Ok` for an absolute `https://` URL, or `http://` to a loopback host (tests, a local IdP).
fn check_auth_url(url: &str) -> Result<(), String> {
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => return Err(format!("{url:?} must be an https:// URL")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') { v6.split(']').next().unwrap_or("") } else { authority.split(':').next().unwrap_or("") };
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.contains('#') {
        return Err(format!("{url:?} is not a valid URL"));
    }
    if !https && !is_loopback(host) {
        return Err(format!("{url:?} must use https:// (http:// only for a loopback address)"));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parses a credential value: literal text with `${secret:NAME}` references. A value with no
/// reference at all is a literal credential, which is refused.
fn template(doc: &Doc, d: &mut Diagnostics, ptr: &str, what: &str, s: &str) -> Option<Template> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if i > 0 {
            parts.push(Part::Literal(rest[..i].to_string()));
        }
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            doc.value_error(d, ptr, format!("unterminated ${{…}} in {what}: write ${{secret:NAME}}"));
            return None;
        };
        let inner = &after[..end];
        match inner.strip_prefix("secret:") {
            Some(name) if name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') => {
                parts.push(Part::Secret(name.to_string()))
            }
            _ => {
                doc.value_error(d, ptr, format!("invalid reference ${{{inner}}} in {what}: write ${{secret:NAME}} (NAME: a letter or digit, then letters, digits, - _ .)"));
                return None;
            }
        }
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    let t = Template { parts };
    if t.secrets().next().is_none() {
        doc.value_error(
            d,
            ptr,
            format!("literal credential in {what}: credentials must come from secrets; write ${{secret:NAME}} and put the value in --secrets-dir/NAME or GATEHOUSE_SECRET_NAME"),
        );
        return None;
    }
    Some(t)
}

fn compile_server(doc: &Doc, refs: &Refs, d: &mut Diagnostics) -> Option<Server> {
    let before = d.errors().count();
    let raw: raw::Server = doc.typed("", &doc.value, d)?;
    let file_stem = stem(&doc.file);
    if raw.name != file_stem {
        doc.value_error(d, "/name", format!("server name {:?} must equal the file name {file_stem:?}: rename the file or the server", raw.name));
    } else if !is_server_name(&raw.name) {
        doc.value_error(d, "/name", format!("invalid server name {:?}: use 1 to 48 characters of a-z, 0-9 and -", raw.name));
    }
    let url = |d: &mut Diagnostics| -> Option<String> {
        match &raw.url {
            None => {
                doc.error(d, "/transport", format!("transport {} needs url", raw.transport));
                None
            }
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                doc.value_error(d, "/url", format!("invalid url {u:?}: expected http:// or https://"));
                None
            }
            Some(u) => {
                let authority = u.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
                if authority.contains('@') {
                    doc.value_error(d, "/url", "literal credential in url (user:password@): use credentials.headers with ${secret:NAME}");
                    return None;
                }
                Some(u.clone())
            }
        }
    };
    let transport = match raw.transport.as_str() {
        "streamable-http" | "sse" => {
            if raw.command.is_some() {
                doc.error(d, "/command", format!("command is for stdio servers; transport {} uses url", raw.transport));
            }
            url(d).map(|url| if raw.transport == "sse" { Transport::Sse { url } } else { Transport::StreamableHttp { url } })
        }
        "stdio" => {
            if raw.url.is_some() {
                doc.error(d, "/url", "url is for streamable-http and sse servers; transport stdio uses command");
            }
            match &raw.command {
                Some(c) if !c.is_empty() && !c[0].is_empty() => Some(Transport::Stdio { command: c.clone() }),
                _ => {
                    doc.error(d, "/transport", "transport stdio needs command: [program, arg, …]");
                    None
                }
            }
        }
        other => {
            doc.value_error(d, "/transport", format!("unknown transport {other:?}: expected streamable-http, sse or stdio"));
            None
        }
    };
    let mut credentials = Credentials::default();
    if let Some(c) = &raw.credentials {
        let is_stdio = raw.transport == "stdio";
        if is_stdio && !c.headers.is_empty() {
            doc.error(d, "/credentials/headers", "credentials.headers apply to HTTP servers; a stdio server gets credentials.env");
        }
        if !is_stdio && !c.env.is_empty() {
            doc.error(d, "/credentials/env", "credentials.env applies to stdio servers; an HTTP server gets credentials.headers");
        }
        for (k, v) in &c.headers {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                doc.error(d, &format!("/credentials/headers/{k}"), format!("invalid header name {k:?}"));
            }
            if let Some(t) = template(doc, d, &format!("/credentials/headers/{k}"), &format!("credentials.headers.{k}"), v) {
                credentials.headers.push((k.clone(), t));
            }
        }
        for (k, v) in &c.env {
            if let Some(t) = template(doc, d, &format!("/credentials/env/{k}"), &format!("credentials.env.{k}"), v) {
                credentials.env.push((k.clone(), t));
            }
        }
    }
    let policy = raw.policy.as_ref().and_then(|p| resolve_policy(doc, d, "/policy", p, refs));
    let timeout = match &raw.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => parse_duration(t).map_err(|e| doc.value_error(d, "/timeout", e)).unwrap_or(DEFAULT_TIMEOUT),
    };
    let supplier = match &raw.supplier {
        None => {
            doc.warning(d, "", "no supplier facts: add supplier: { operated_by, vendor, risk, data, agreement, reviewed } for the supplier register (A.5.19)");
            None
        }
        Some(s) => {
            if let Some(o) = &s.operated_by
                && o != "external" && o != "internal" {
                    doc.value_error(d, "/supplier/operated_by", format!("invalid operated_by {o:?}: expected external or internal"));
                }
            if let Some(r) = &s.risk
                && !matches!(r.as_str(), "low" | "medium" | "high") {
                    doc.value_error(d, "/supplier/risk", format!("invalid risk {r:?}: expected low, medium or high"));
                }
            Some(Supplier {
                operated_by: s.operated_by.clone(),
                vendor: s.vendor.clone(),
                risk: s.risk.clone(),
                data: s.data.clone(),
                agreement: s.agreement.clone(),
                reviewed: s.reviewed.as_ref().and_then(|r| review(doc, d, "/supplier/reviewed", r)),
            })
        }
    };
    let mut tools = BTreeMap::new();
    for (name, t) in raw.tools.iter().flatten() {
        let ptr = format!("/tools/{}", super::locate::escape(name));
        if let Err(why) = crate::supply::check_name(name) {
            doc.value_error(d, &ptr, format!("invalid tool name {name:?}: {why}"));
        }
        let category = match t.category.as_deref() {
            None => None,
            Some(c) => Category::parse(c).or_else(|| {
                doc.value_error(d, &format!("{ptr}/category"), format!("invalid category {c:?}: expected read, write, destructive, execute or financial"));
                None
            }),
        };
        if let Some(h) = &t.sha256
            && !is_sha256_hex(h) {
                doc.value_error(d, &format!("{ptr}/sha256"), "a definition pin must be 64 hex digits (from gatehouse scan)");
            }
        tools.insert(name.clone(), ToolInfo { category, sha256: t.sha256.as_ref().map(|s| s.to_ascii_lowercase()) });
    }
    let pin_required = match raw.pin.as_deref() {
        None | Some("optional") => false,
        Some("required") => true,
        Some(other) => {
            doc.value_error(d, "/pin", format!("invalid pin {other:?}: expected required or optional"));
            false
        }
    };
    let handshake_only = match raw.protocol.as_deref() {
        None | Some("auto") => false,
        Some("handshake") => true,
        Some(other) => {
            doc.value_error(d, "/protocol", format!("invalid protocol {other:?}: expected auto or handshake"));
            false
        }
    };
    if d.errors().count() > before {
        return None;
    }
    let unpinned = tools.values().filter(|t| t.sha256.is_none()).count();
    if tools.is_empty() {
        let what = if pin_required { "every tool the upstream offers will be quarantined" } else { "a changed definition goes unnoticed" };
        doc.file_warning(d, format!("no tool definition is pinned ({what}): gatehouse scan --server {} --write pins them", raw.name));
    } else if unpinned > 0 {
        let what = if pin_required { "they will be quarantined" } else { "a changed definition goes unnoticed" };
        doc.file_warning(
            d,
            format!("{unpinned} of {} declared tools have no sha256 pin ({what}): gatehouse scan --server {} --write pins them", tools.len(), raw.name),
        );
    }
    Some(Server {
        name: raw.name,
        file: doc.file.clone(),
        description: raw.description,
        transport: transport?,
        credentials,
        policy,
        timeout,
        supplier,
        tools,
        pin_required,
        handshake_only,
    })
}

/// Resolves a `policy:` reference. Reports a missing file; a file that exists but failed to
/// compile yields None silently (its own errors are already reported).
fn resolve_policy(doc: &Doc, d: &mut Diagnostics, ptr: &str, path: &str, refs: &Refs) -> Option<Arc<Policy>> {
    if let Some(p) = refs.policies.get(path) {
        return Some(p.clone());
    }
    if !refs.policy_files.contains(path) {
        doc.value_error(d, ptr, format!("policy {path:?} does not exist ({})", known(&refs.policy_files)));
    }
    None
}

/// Compiles one access entry `{server, tools, resources, prompts, policy}` at `ptr`.
fn compile_access(doc: &Doc, d: &mut Diagnostics, ptr: &str, a: &raw::Access, refs: &Refs, id: String) -> Option<Access> {
    let Some(server) = &a.server else {
        doc.error(d, ptr, "an access entry needs server (or, in a grant, role)");
        return None;
    };
    let known_server = refs.servers.get(server);
    if known_server.is_none() && !refs.server_files.contains(server) {
        doc.value_error(d, &format!("{ptr}/server"), format!("server {server:?} does not exist: add servers/{server}.yaml ({})", known(&refs.server_files)));
    }
    let tools = match &a.tools {
        Some(Value::String(s)) if s == "*" => Some(ToolSet::All),
        Some(Value::Array(items)) => {
            let mut set = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(t) if !t.is_empty() => {
                        if let Some(s) = known_server
                            && !s.tools.is_empty() && !s.tools.contains_key(t) {
                                doc.warning(d, &format!("{ptr}/tools/{i}"), format!("tool {t:?} is not declared in {}: it cannot be classified", s.file));
                            }
                        set.insert(t.to_string());
                    }
                    _ => doc.value_error(d, &format!("{ptr}/tools/{i}"), "a tool name must be a non-empty string"),
                }
            }
            if set.is_empty() {
                doc.warning(d, &format!("{ptr}/tools"), "an empty tools list grants nothing");
            }
            Some(ToolSet::Only(set))
        }
        // An entry may give only resources or prompts; one that gives nothing at all is a mistake.
        None if a.resources.is_some() || a.prompts.is_some() => {
            if a.policy.is_some() {
                doc.warning(d, &format!("{ptr}/policy"), "a policy decides tool calls only, and this entry grants no tools");
            }
            Some(ToolSet::Only(Default::default()))
        }
        None => {
            doc.error(d, ptr, "an access entry needs tools: a list of tool names, or \"*\" for every tool the policies allow; or resources, or prompts");
            None
        }
        Some(_) => {
            doc.value_error(d, &format!("{ptr}/tools"), "tools must be \"*\" or a list of tool names");
            None
        }
    };
    let resources = compile_resources(doc, d, ptr, a.resources.as_ref(), &id);
    let prompts = compile_prompts(doc, d, ptr, a.prompts.as_ref(), &id);
    let policy = match &a.policy {
        Some(p) => Some(resolve_policy(doc, d, &format!("{ptr}/policy"), p, refs)?),
        None => None,
    };
    Some(Access {
        allow_message: Arc::from(format!("allowed by {id}")),
        id: Arc::from(id),
        server: server.clone(),
        tools: tools?,
        policy,
        resources: resources?,
        prompts: prompts?,
    })
}

/// The items of a `resources:` or `prompts:` value: `"*"` is one item `"*"`; None (with an
/// error at its position) for anything but a string or a list.
fn star_or_list<'v>(doc: &Doc, d: &mut Diagnostics, ptr: &str, v: &'v Value, what: &str) -> Option<Vec<(String, &'v Value)>> {
    match v {
        Value::String(s) if s == "*" => Some(vec![(ptr.to_string(), v)]),
        Value::Array(items) => {
            if items.is_empty() {
                doc.warning(d, ptr, format!("an empty {what} list grants nothing"));
            }
            Some(items.iter().enumerate().map(|(i, item)| (format!("{ptr}/{i}"), item)).collect())
        }
        _ => {
            doc.value_error(d, ptr, format!("{what} must be \"*\" or a list"));
            None
        }
    }
}

/// `resources:` of an access entry: URI patterns (docs/formats.md), each with its own rule id.
fn compile_resources(doc: &Doc, d: &mut Diagnostics, ptr: &str, v: Option<&Value>, entry: &str) -> Option<Vec<ResourceRule>> {
    let Some(v) = v else { return Some(Vec::new()) };
    let here = format!("{ptr}/resources");
    let items = star_or_list(doc, d, &here, v, "resources")?;
    let mut out = Vec::new();
    let mut ok = true;
    for (at, item) in items {
        let Some(text) = item.as_str() else {
            doc.value_error(d, &at, "a resource pattern must be a string");
            ok = false;
            continue;
        };
        match UriPattern::parse(text) {
            Ok(pattern) => {
                let id = sub_rule_id(entry, &at[ptr.len()..]);
                out.push(ResourceRule { allow_message: Arc::from(format!("allowed by {id} ({pattern})")), id: Arc::from(id), pattern });
            }
            Err(why) => {
                doc.value_error(d, &at, why);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// `prompts:` of an access entry: prompt names, or `"*"`.
fn compile_prompts(doc: &Doc, d: &mut Diagnostics, ptr: &str, v: Option<&Value>, entry: &str) -> Option<Vec<PromptRule>> {
    let Some(v) = v else { return Some(Vec::new()) };
    let here = format!("{ptr}/prompts");
    let items = star_or_list(doc, d, &here, v, "prompts")?;
    let mut out = Vec::new();
    let mut ok = true;
    for (at, item) in items {
        let name = match item.as_str() {
            Some("*") => None,
            Some(n) if crate::supply::check_name(n).is_ok() => Some(n.to_string()),
            Some(n) => {
                let why = crate::supply::check_name(n).unwrap_err().replace("tool name", "prompt name");
                doc.value_error(d, &at, format!("{why}: no prompt the gateway relays can have it"));
                ok = false;
                continue;
            }
            None => {
                doc.value_error(d, &at, "a prompt name must be a string");
                ok = false;
                continue;
            }
        };
        let id = sub_rule_id(entry, &at[ptr.len()..]);
        out.push(PromptRule { name, allow_message: Arc::from(format!("allowed by {id}")), id: Arc::from(id) });
    }
    ok.then_some(out)
}

/// The id of a pattern or name inside an access entry: the entry's pointer extended by `tail`
/// (`/resources/1`), before a role entry's ` via grants/…` part.
fn sub_rule_id(entry: &str, tail: &str) -> String {
    match entry.split_once(" via ") {
        Some((role, via)) => format!("{role}{tail} via {via}"),
        None => format!("{entry}{tail}"),
    }
}

fn compile_role(doc: &Doc, refs: &Refs, d: &mut Diagnostics) -> Option<Role> {
    let before = d.errors().count();
    let raw: raw::Role = doc.typed("", &doc.value, d)?;
    let mut access = Vec::new();
    for (i, v) in raw.access.iter().enumerate() {
        let ptr = format!("/access/{i}");
        let Some(a) = doc.typed::<raw::Access>(&ptr, v, d) else { continue };
        if a.role.is_some() {
            doc.error(d, &format!("{ptr}/role"), "a role cannot include another role: list its access entries here");
            continue;
        }
        if let Some(a) = compile_access(doc, d, &ptr, &a, refs, format!("{}#{ptr}", doc.file)) {
            access.push(a);
        }
    }
    let mut groups: Vec<String> = Vec::new();
    for (i, g) in raw.groups.iter().enumerate() {
        match g.as_str() {
            Some(g) if !g.trim().is_empty() => {
                if groups.iter().any(|x| x == g) {
                    doc.value_error(d, &format!("/groups/{i}"), format!("group {g:?} is listed twice"));
                }
                groups.push(g.to_string());
            }
            _ => doc.value_error(d, &format!("/groups/{i}"), "a group must be a non-empty string (as the identity provider's groups claim spells it)"),
        }
    }
    if d.errors().count() > before {
        return None;
    }
    Some(Role { name: stem(&doc.file).to_string(), file: doc.file.clone(), groups, access })
}

fn compile_grant(doc: &Doc, refs: &Refs, roles: &BTreeMap<String, Role>, d: &mut Diagnostics) -> Option<Grant> {
    let before = d.errors().count();
    let raw: raw::Grant = doc.typed("", &doc.value, d)?;
    if raw.identity.trim().is_empty() {
        doc.value_error(d, "/identity", "identity must not be empty");
    }
    let kind = match raw.kind.as_str() {
        "human" => Some(Kind::Human),
        "agent" => Some(Kind::Agent),
        other => {
            doc.value_error(d, "/kind", format!("invalid kind {other:?}: expected human or agent"));
            None
        }
    };
    if kind == Some(Kind::Agent) && raw.owner.as_deref().is_none_or(|o| o.trim().is_empty()) {
        doc.value_error(d, "/kind", "an agent needs an owner: the accountable human (owner: alice@example.com)");
    }
    let mut tokens = Vec::new();
    for (i, t) in raw.tokens.iter().enumerate() {
        let ptr = format!("/tokens/{i}");
        // Never echo the value: a raw token pasted here by mistake must not reach CI logs.
        let hash = if is_sha256_hex(&t.sha256) {
            let mut h = [0u8; 32];
            hex::decode_to_slice(t.sha256.to_ascii_lowercase(), &mut h).ok();
            Some(h)
        } else {
            doc.value_error(
                d,
                &format!("{ptr}/sha256"),
                format!("a token hash must be 64 hex digits (the SHA-256 of the token; `gatehouse grant issue` writes it), not {} characters", t.sha256.chars().count()),
            );
            None
        };
        let issued = t.issued.as_deref().and_then(|s| date(doc, d, &format!("{ptr}/issued"), s));
        let expires = t.expires.as_deref().and_then(|s| date(doc, d, &format!("{ptr}/expires"), s));
        if let (Some(i), Some(e)) = (issued, expires)
            && e <= i {
                doc.value_error(d, &format!("{ptr}/expires"), format!("token expires ({e}) before it is issued ({i})"));
            }
        if let Some(sha256) = hash {
            if tokens.iter().any(|x: &Token| x.sha256 == sha256) {
                doc.value_error(d, &format!("{ptr}/sha256"), "duplicate token hash in this grant");
            }
            tokens.push(Token { sha256, issued, expires });
        }
    }
    let mut access = Vec::new();
    for (i, v) in raw.access.iter().enumerate() {
        let ptr = format!("/access/{i}");
        let Some(a) = doc.typed::<raw::Access>(&ptr, v, d) else { continue };
        let here = format!("{}#{ptr}", doc.file);
        if let Some(role) = &a.role {
            if a.server.is_some() || a.tools.is_some() || a.resources.is_some() || a.prompts.is_some() || a.policy.is_some() {
                doc.error(d, &ptr, "an entry names either a role or a server with tools, not both");
            }
            match roles.get(role) {
                Some(r) => access.extend(r.access.iter().map(|ra| Access {
                    id: Arc::from(format!("{} via {here}", ra.id)),
                    allow_message: Arc::from(format!("allowed by {} via {here}", ra.id)),
                    server: ra.server.clone(),
                    tools: ra.tools.clone(),
                    policy: ra.policy.clone(),
                    resources: ra.resources.iter().map(|r| ResourceRule { id: Arc::from(format!("{} via {here}", r.id)), allow_message: Arc::from(format!("allowed by {} via {here} ({})", r.id, r.pattern)), pattern: r.pattern.clone() }).collect(),
                    prompts: ra.prompts.iter().map(|r| PromptRule { id: Arc::from(format!("{} via {here}", r.id)), allow_message: Arc::from(format!("allowed by {} via {here}", r.id)), name: r.name.clone() }).collect(),
                })),
                None if refs.role_files.contains(role) => {} // the role has its own errors
                None => doc.value_error(d, &format!("{ptr}/role"), format!("role {role:?} does not exist: add roles/{role}.yaml ({})", known(&refs.role_files))),
            }
        } else if let Some(a) = compile_access(doc, d, &ptr, &a, refs, here) {
            access.push(a);
        }
    }
    let mut quotas = Vec::new();
    let mut names = HashSet::new();
    for (i, l) in raw.quotas.iter().enumerate() {
        let ptr = format!("/quotas/{i}");
        if let Some(n) = &l.name
            && !names.insert(n.clone()) {
                doc.value_error(d, &format!("{ptr}/name"), format!("duplicate quota name {n:?}"));
            }
        if let Some(q) = compile_limit(doc, d, &ptr, "/quotas", i, l) {
            quotas.push(Arc::new(q));
        }
    }
    let review = raw.review.as_ref().and_then(|r| review(doc, d, "/review", r));
    if d.errors().count() > before {
        return None;
    }
    let mut by_server: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, a) in access.iter().enumerate() {
        by_server.entry(a.server.clone()).or_default().push(i);
    }
    Some(Grant {
        name: stem(&doc.file).to_string(),
        file: doc.file.clone(),
        identity: raw.identity,
        kind: kind?,
        owner: raw.owner,
        tokens,
        access,
        by_server,
        quotas,
        review,
    })
}

fn compile_tests(
    doc: &Doc,
    servers: &HashMap<String, Arc<Server>>,
    by_identity: &HashMap<String, usize>,
    by_name: &HashMap<String, usize>,
    out: &mut Vec<TestCase>,
    d: &mut Diagnostics,
) {
    let Some(raw) = doc.typed::<raw::Tests>("", &doc.value, d) else { return };
    let mut names = HashSet::new();
    for (i, v) in raw.cases.iter().enumerate() {
        let ptr = format!("/cases/{i}");
        let Some(c) = doc.typed::<raw::Case>(&ptr, v, d) else { continue };
        let expect = match c.expect.as_str() {
            "allow" => Verdict::Allow,
            "deny" => Verdict::Deny,
            other => {
                doc.value_error(d, &format!("{ptr}/expect"), format!("invalid expect {other:?}: expected allow or deny"));
                continue;
            }
        };
        if !names.insert(c.name.clone()) {
            doc.value_error(d, &format!("{ptr}/name"), format!("duplicate case name {:?}", c.name));
        }
        let explicit_no_grant = c.rule.as_deref() == Some(crate::policy::eval::NO_GRANT);
        if !by_identity.contains_key(&c.identity) && !by_name.contains_key(&c.identity) && !explicit_no_grant {
            doc.warning(d, &format!("{ptr}/identity"), format!("no grant has identity {:?}: the case tests a caller without a grant", c.identity));
        }
        if !servers.contains_key(&c.server) {
            doc.warning(d, &format!("{ptr}/server"), format!("server {:?} does not exist", c.server));
        }
        if let Some((k, n)) = c.counters.iter().find(|(_, n)| !(n.is_finite() && **n >= 0.0)) {
            doc.value_error(d, &format!("{ptr}/counters/{}", k.replace('~', "~0").replace('/', "~1")), format!("invalid count {n}: a count is a non-negative number"));
            continue;
        }
        let args = if c.args.is_null() { Value::Object(Default::default()) } else { c.args };
        if !args.is_object() {
            doc.value_error(d, &format!("{ptr}/args"), "args must be a mapping of argument names to values");
            continue;
        }
        out.push(TestCase {
            file: doc.file.clone(),
            pos: doc.loc().at(&ptr),
            name: c.name,
            identity: c.identity,
            server: c.server,
            tool: c.tool,
            args,
            expect,
            rule: c.rule,
            counters: c.counters.into_iter().collect(),
            groups: c.groups,
        });
    }
}
