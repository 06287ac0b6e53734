//! `gatehouse scan`: connect to one upstream with the gateway's own client, read its whole tool
//! list, and show for each tool what the supply chain checks of [`crate::supply`] make of it: a
//! proposed category (with its reasons), the definition hash that `servers/NAME.yaml` pins, the
//! hidden content and cross-server mentions found in its definition, and problems with its name.
//! Its resources, resource templates and prompts (when it declares them) are listed too, screened
//! for the same hidden content (they are not classified or pinned).
//!
//! With `--write` (for a registered server) it merges the result into the server's file as a text
//! edit of the `tools:` mapping, in the manner of `commands::grant`: every byte outside the edited
//! entries stays as it was (comments, key order, quoting), a human's category is never
//! overwritten, a tool with findings is never pinned, and the whole repository is compiled after
//! the edit, which is undone if the repository would no longer check. `--policy FILE` also writes
//! a deny-by-default policy scaffold that lists the tools classified `read`.
//!
//! It owns no policy semantics and does not touch the proxy: the proxy enforces the pins that
//! this command writes, with the same [`crate::supply::definition_hash`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;

use crate::commands::grant::{self, Line};
use crate::repo;
use crate::gateway::secrets::{Bound, SecretSource};
use crate::policy::snapshot::{Category, Credentials, Server, Snapshot, ToolInfo, Transport};
use crate::supply::{self, Finding, ToolNames};
use crate::gateway::upstream::{Upstream, http_client};

/// The name given to an ad-hoc upstream (`--url`, `-- COMMAND`): outside the server-name charset,
/// so it never collides with a registered server when screening for cross-server mentions.
pub const AD_HOC: &str = "(ad hoc)";

/// What to scan.
#[derive(Debug, Clone)]
pub enum Target {
    /// A server of the repository, with its credentials.
    Server(String),
    /// An HTTP upstream given on the command line.
    Url { url: String, sse: bool, headers: Vec<String> },
    /// A stdio upstream given on the command line.
    Command(Vec<String>),
}

/// How to scan.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    /// The policy repository.
    pub repo: PathBuf,
    /// Whether `repo` was given. An ad-hoc scan reads the default `.` only when it has a
    /// `servers/` directory, and says so when a given repository cannot be read.
    pub repo_given: bool,
    pub rev: Option<String>,
    pub secrets: SecretSource,
    /// The ad-hoc upstream's timeout (a registered server has its own).
    pub timeout: Duration,
}

/// What `scan` found. Serialized as the `--format json` output.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The registered server's name; None for an ad-hoc upstream.
    pub server: Option<String>,
    /// `servers/NAME.yaml`, the URL or the command.
    pub source: String,
    pub transport: &'static str,
    /// The upstream's `serverInfo`, as it sent it.
    pub upstream: Value,
    pub protocol_version: String,
    /// Whether other servers' tool names were known for the cross-server rule (a readable
    /// repository).
    pub screened_against_repository: bool,
    /// Sorted by name.
    pub tools: Vec<ToolReport>,
    /// Tools the server file declares that the upstream does not offer (reported, never removed).
    pub not_offered: Vec<String>,
    /// `resources/list`, `resources/templates/list` and `prompts/list`, in the upstream's order
    /// (empty when it does not declare the capability).
    pub resources: Vec<ItemReport>,
    pub resource_templates: Vec<ItemReport>,
    pub prompts: Vec<ItemReport>,
    /// A list the upstream declares but failed to give (`prompts/list: upstream error …`).
    pub list_errors: Vec<String>,
}

/// One listed resource, resource template or prompt.
#[derive(Debug, Serialize)]
pub struct ItemReport {
    pub name: String,
    /// The resource's `uri` or the template's `uriTemplate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Hidden content and cross-server mentions in what a model reads of it ([`supply::screen_fields`]).
    pub findings: Vec<Finding>,
}

/// What an upstream lists besides tools (None: not declared).
#[derive(Default)]
struct Lists {
    resources: Vec<Value>,
    templates: Vec<Value>,
    prompts: Vec<Value>,
    errors: Vec<String>,
}

/// One offered tool.
#[derive(Debug, Serialize)]
pub struct ToolReport {
    pub name: String,
    /// The proposed category ([`supply::classify`]).
    pub category: Category,
    pub reasons: Vec<String>,
    /// The category the server file gives it, if any (it always wins over the proposal).
    pub declared_category: Option<Category>,
    /// [`supply::definition_hash`] of the offered definition.
    pub sha256: String,
    /// The pin in the server file, if any.
    pub pinned_sha256: Option<String>,
    pub pin: PinState,
    /// Hidden content and cross-server mentions ([`supply::screen`]).
    pub findings: Vec<Finding>,
    /// Name problems: [`supply::check_name`], or a name the upstream lists twice.
    pub name_problems: Vec<String>,
}

/// How the offered definition compares with the pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinState {
    /// No pin (or an ad-hoc upstream).
    Unpinned,
    /// The pin is the offered definition's hash.
    Matches,
    /// The pin differs: the gateway quarantines this tool until the pin is refreshed.
    Changed,
}

/// What `--write` did to the server file.
#[derive(Debug, Default, Serialize)]
pub struct Written {
    /// `servers/NAME.yaml`.
    pub file: String,
    /// Whether the file changed (false: every pin and category was already there).
    pub changed: bool,
    /// Tools the file did not declare, now declared with a category and a pin.
    pub added: Vec<String>,
    /// Declared tools pinned for the first time.
    pub pinned: Vec<String>,
    /// Declared tools whose pin was replaced by the offered definition's hash.
    pub refreshed: Vec<String>,
    /// Declared tools given the proposed category because they had none.
    pub categorized: Vec<String>,
    /// Tools with findings or name problems: left as they were.
    pub not_pinned: Vec<String>,
}

/// The result of a scan: the report, and the repository state it was compared with.
pub struct Scan {
    pub report: Report,
    /// The registered server, for `--write`.
    server: Option<Arc<Server>>,
}

// === impl Report ===

impl Report {
    /// 1 when a tool has findings or name problems, or a resource, template or prompt has
    /// findings, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.tools.iter().any(ToolReport::is_flagged) || self.items().any(|(_, i)| !i.findings.is_empty()) { 1 } else { 0 }
    }

    /// Resources, templates and prompts, each with what it is.
    fn items(&self) -> impl Iterator<Item = (&'static str, &ItemReport)> {
        self.resources
            .iter()
            .map(|i| ("resource", i))
            .chain(self.resource_templates.iter().map(|i| ("resource template", i)))
            .chain(self.prompts.iter().map(|i| ("prompt", i)))
    }
}

// === impl ToolReport ===

impl ToolReport {
    /// Hidden content, a cross-server mention or a bad name: never pinned.
    pub fn is_flagged(&self) -> bool {
        !self.findings.is_empty() || !self.name_problems.is_empty()
    }

    /// The category that counts: the server file's, else the proposal.
    pub fn effective_category(&self) -> Category {
        self.declared_category.unwrap_or(self.category)
    }
}

impl PinState {
    fn as_str(self) -> &'static str {
        match self {
            PinState::Unpinned => "unpinned",
            PinState::Matches => "matches",
            PinState::Changed => "changed",
        }
    }
}

// === scanning ===

/// Connects to the target, lists its tools and builds the report. Errors (unreadable or
/// invalid repository for `--server`, unknown server, unresolved secret, upstream unreachable)
/// say what to fix.
pub fn run(settings: &Settings) -> Result<Scan> {
    let (server, bound, names) = match &settings.target {
        Target::Server(name) => {
            let snapshot = compile(&settings.repo, settings.rev.as_deref())?;
            let Some(server) = snapshot.servers.get(name).cloned() else {
                let known = snapshot.server_names();
                bail!(
                    "there is no server {name:?} in {} (no servers/{name}.yaml); {}",
                    settings.repo.display(),
                    if known.is_empty() { "it has no servers".to_string() } else { format!("its servers: {}", known.join(", ")) }
                );
            };
            let bound = crate::gateway::secrets::bind_server(&server, &settings.secrets).map_err(|e| {
                anyhow!("cannot resolve the credentials of {}:\n  {}", server.file, e.join("\n  "))
            })?;
            (server, bound, (snapshot.tool_names().clone(), true))
        }
        Target::Url { url, sse, headers } => {
            let transport = if *sse { Transport::Sse { url: url.clone() } } else { Transport::StreamableHttp { url: url.clone() } };
            let bound = Bound { headers: parse_headers(headers, &settings.secrets)?, env: Vec::new() };
            (ad_hoc(transport, settings.timeout), bound, other_names(settings))
        }
        Target::Command(command) => {
            (ad_hoc(Transport::Stdio { command: command.clone() }, settings.timeout), Bound::default(), other_names(settings))
        }
    };
    let (names, screened) = names;
    let (tools, lists, init, protocol) = list(server.clone(), Arc::new(bound))?;
    let registered = matches!(settings.target, Target::Server(_));
    let report = report(&server, registered, &tools, &lists, names, init, protocol, screened);
    Ok(Scan { report, server: registered.then_some(server) })
}

/// Reads and compiles the repository; an invalid one is an error listing its problems.
fn compile(dir: &Path, rev: Option<&str>) -> Result<Snapshot> {
    let files = repo::read(dir, rev).with_context(|| format!("cannot read the policy repository {}", dir.display()))?;
    match repo::compile(&files) {
        Ok(c) => Ok(c.snapshot),
        Err(d) => bail!(
            "the policy repository {} is invalid ({}); `gatehouse check` lists its problems:\n{}",
            dir.display(),
            d.summary(),
            grant::errors(&d)
        ),
    }
}

/// Other servers' tool names for an ad-hoc scan: the repository's when it is readable and
/// valid (true), else none (false).
fn other_names(settings: &Settings) -> (ToolNames, bool) {
    // The default `.` is read only when it looks like a policy repository: a scan run from any
    // directory must not walk it.
    if !settings.repo_given && !settings.repo.join("servers").is_dir() {
        return (ToolNames::default(), false);
    }
    match compile(&settings.repo, settings.rev.as_deref()) {
        Ok(s) => (s.tool_names().clone(), true),
        Err(e) => {
            if settings.repo_given {
                eprintln!("note: mentions of other servers' tools are not screened: {e:#}");
            }
            (ToolNames::default(), false)
        }
    }
}

/// A `snapshot::Server` for an upstream given on the command line.
fn ad_hoc(transport: Transport, timeout: Duration) -> Arc<Server> {
    Arc::new(Server {
        name: AD_HOC.to_string(),
        file: String::new(),
        description: None,
        transport,
        credentials: Credentials::default(),
        policy: None,
        timeout,
        supplier: None,
        tools: BTreeMap::new(),
        pin_required: false,
        handshake_only: false,
    })
}

/// `--header 'K: V'`: the value may hold `${secret:NAME}` references, resolved like the
/// gateway's (so that a token need not be on the command line).
fn parse_headers(headers: &[String], secrets: &SecretSource) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let mut out = Vec::new();
    for h in headers {
        let (k, v) = h.split_once(':').with_context(|| format!("--header {h:?}: expected 'Name: value'"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes()).with_context(|| format!("--header: invalid header name {:?}", k.trim()))?;
        let value = resolve_secrets(v.trim(), secrets).map_err(|e| anyhow!("--header {}: {e}", name.as_str()))?;
        let mut value = HeaderValue::from_str(&value).map_err(|_| anyhow!("--header {}: not a valid header value", name.as_str()))?;
        value.set_sensitive(true);
        out.push((name, value));
    }
    Ok(out)
}

/// Replaces each `${secret:NAME}` in `s` by the secret's value.
fn resolve_secrets(s: &str, secrets: &SecretSource) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${secret:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 9..];
        let end = after.find('}').ok_or_else(|| format!("unterminated ${{secret:… in {s:?}"))?;
        out.push_str(&secrets.resolve(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Connects, lists every tool (and the resources, templates and prompts it declares), shuts the
/// session down. Returns the tools, the other lists, the `serverInfo` and the negotiated protocol
/// version.
fn list(server: Arc<Server>, bound: Arc<Bound>) -> Result<(Vec<Value>, Lists, Value, String)> {
    let label = describe(&server);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let upstream = Upstream::connect(server, bound, http_client()).await.map_err(|e| anyhow!("cannot connect to {label}: {e}"))?;
        let tools = upstream.list_tools().await;
        let mut lists = Lists::default();
        for (capability, method, key) in
            [("resources", "resources/list", "resources"), ("resources", "resources/templates/list", "resourceTemplates"), ("prompts", "prompts/list", "prompts")]
        {
            if !upstream.has_capability(capability) {
                continue;
            }
            match upstream.list_all(method, key).await {
                Ok(items) if key == "resources" => lists.resources = items,
                Ok(items) if key == "prompts" => lists.prompts = items,
                Ok(items) => lists.templates = items,
                Err(e) => lists.errors.push(format!("{method}: {e}")),
            }
        }
        let info = upstream.initialize_result().get("serverInfo").cloned().unwrap_or(Value::Null);
        let protocol = upstream.protocol_version().to_string();
        upstream.shutdown().await;
        let tools = tools.map_err(|e| anyhow!("{label}: tools/list failed: {e}"))?;
        Ok(((*tools).clone(), lists, info, protocol))
    })
}

/// `servers/files.yaml (stdio: node index.js /srv)`, or just the transport for an ad-hoc one.
fn describe(server: &Server) -> String {
    let how = match &server.transport {
        Transport::StreamableHttp { url } => format!("streamable-http {url}"),
        Transport::Sse { url } => format!("sse {url}"),
        Transport::Stdio { command } => format!("stdio: {}", command.join(" ")),
    };
    if server.file.is_empty() { how } else { format!("{} ({how})", server.file) }
}

fn transport_name(t: &Transport) -> &'static str {
    match t {
        Transport::StreamableHttp { .. } => "streamable-http",
        Transport::Sse { .. } => "sse",
        Transport::Stdio { .. } => "stdio",
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    server: &Server,
    registered: bool,
    tools: &[Value],
    lists: &Lists,
    mut names: ToolNames,
    upstream: Value,
    protocol_version: String,
    screened: bool,
) -> Report {
    let offered: Vec<&str> = tools.iter().filter_map(|t| t.get("name").and_then(Value::as_str)).collect();
    // The upstream's own tools are this server's, declared or not: naming a sibling is fine.
    names.add(&server.name, offered.iter().copied());
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &offered {
        *count.entry(n).or_default() += 1;
    }
    let mut out: Vec<ToolReport> = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let name = match t.get("name").and_then(Value::as_str) {
            Some(n) => n.to_string(),
            None => format!("(tool #{i} has no name)"),
        };
        let mut name_problems = Vec::new();
        if t.get("name").and_then(Value::as_str).is_none() {
            name_problems.push("the definition has no string name".to_string());
        } else if let Err(e) = supply::check_name(&name) {
            name_problems.push(e);
        }
        if count.get(name.as_str()).copied().unwrap_or(0) > 1 {
            name_problems.push(format!("the upstream lists {} tools with this name", count[name.as_str()]));
        }
        let c = supply::classify(t);
        let declared = server.tools.get(&name);
        let pinned = declared.and_then(|d| d.sha256.clone());
        let sha256 = supply::definition_hash(t);
        let pin = match &pinned {
            None => PinState::Unpinned,
            Some(p) if *p == sha256 => PinState::Matches,
            Some(_) => PinState::Changed,
        };
        out.push(ToolReport {
            name,
            category: c.category,
            reasons: c.reasons,
            declared_category: declared.and_then(|d| d.category),
            sha256,
            pinned_sha256: pinned,
            pin,
            findings: supply::screen(t, &server.name, &names),
            name_problems,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.sha256.cmp(&b.sha256)));
    let offered: BTreeSet<&str> = offered.into_iter().collect();
    let items = |list: &[Value], fields: &[&str], uri: &str| -> Vec<ItemReport> {
        list.iter()
            .enumerate()
            .map(|(i, item)| ItemReport {
                name: item.get("name").and_then(Value::as_str).map_or_else(|| format!("(#{i} has no name)"), str::to_string),
                uri: item.get(uri).and_then(Value::as_str).map(str::to_string),
                findings: supply::screen_fields(item, fields, &server.name, &names, &offered),
            })
            .collect()
    };
    let resources = items(&lists.resources, &supply::RESOURCE_FIELDS, "uri");
    let resource_templates = items(&lists.templates, &supply::TEMPLATE_FIELDS, "uriTemplate");
    let prompts = items(&lists.prompts, &supply::PROMPT_FIELDS, "");
    let not_offered = server.tools.keys().filter(|k| !offered.contains(k.as_str())).cloned().collect();
    let source = match &server.transport {
        _ if registered => server.file.clone(),
        Transport::StreamableHttp { url } | Transport::Sse { url } => url.clone(),
        Transport::Stdio { command } => command.join(" "),
    };
    Report {
        server: registered.then(|| server.name.clone()),
        source,
        transport: transport_name(&server.transport),
        upstream,
        protocol_version,
        screened_against_repository: screened,
        tools: out,
        not_offered,
        resources,
        resource_templates,
        prompts,
        list_errors: lists.errors.clone(),
    }
}

// === output ===

/// The readable table: one block per tool, then what was not offered and the findings summary.
pub fn table(report: &Report, written: Option<&Written>, policy: Option<&PolicyWritten>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let who = report.server.as_deref().unwrap_or("ad-hoc upstream");
    let _ = writeln!(s, "scan of {who}: {} via {}", report.source, report.transport);
    let info = match (report.upstream.get("name").and_then(Value::as_str), report.upstream.get("version").and_then(Value::as_str)) {
        (Some(n), Some(v)) => format!("{n} {v}"),
        (Some(n), None) => n.to_string(),
        _ => "an unnamed server".to_string(),
    };
    let _ = writeln!(s, "upstream {info}, protocol {}, {} tools", report.protocol_version, report.tools.len());
    if !report.screened_against_repository {
        let _ = writeln!(s, "(no policy repository: mentions of other servers' tools were not screened)");
    }
    s.push('\n');
    let width = report.tools.iter().map(|t| t.name.chars().count()).max().unwrap_or(4).max(4);
    let _ = writeln!(s, "{:width$}  {:11}  {:8}  SHA256", "TOOL", "CATEGORY", "PIN");
    for t in &report.tools {
        let pin = if t.is_flagged() { "-" } else { t.pin.as_str() };
        let _ = writeln!(s, "{:width$}  {:11}  {:8}  {}", t.name, t.category.as_str(), pin, t.sha256);
        let pad = " ".repeat(width + 2);
        let _ = writeln!(s, "{pad}why: {}", t.reasons.join("; "));
        if let Some(d) = t.declared_category
            && d != t.category
        {
            let _ = writeln!(s, "{pad}declared category: {} (the file's category is kept)", d.as_str());
        }
        if t.pin == PinState::Changed {
            let _ = writeln!(s, "{pad}pinned sha256: {} (the definition changed)", t.pinned_sha256.as_deref().unwrap_or(""));
        }
        for f in &t.findings {
            let _ = writeln!(s, "{pad}FINDING {f}");
        }
        for p in &t.name_problems {
            let _ = writeln!(s, "{pad}NAME {p}");
        }
    }
    for (title, list) in [("RESOURCE", &report.resources), ("RESOURCE TEMPLATE", &report.resource_templates), ("PROMPT", &report.prompts)] {
        if list.is_empty() {
            continue;
        }
        s.push('\n');
        let width = list.iter().map(|i| i.name.chars().count()).max().unwrap_or(4).max(title.len());
        let line = |name: &str, uri: Option<&str>| match uri {
            Some(uri) => format!("{name:width$}  {uri}"),
            None => name.to_string(),
        };
        let _ = writeln!(s, "{}", line(title, (title != "PROMPT").then_some("URI")));
        for i in list {
            let _ = writeln!(s, "{}", line(&i.name, i.uri.as_deref()));
            for f in &i.findings {
                let _ = writeln!(s, "{}FINDING {f}", " ".repeat(width + 2));
            }
        }
    }
    for e in &report.list_errors {
        let _ = writeln!(s, "could not list {e}");
    }
    s.push('\n');
    if !report.not_offered.is_empty() {
        let _ = writeln!(s, "declared in {} but not offered by the upstream: {}", report.source, report.not_offered.join(", "));
    }
    let flagged: Vec<&str> = report.tools.iter().filter(|t| t.is_flagged()).map(|t| t.name.as_str()).collect();
    if flagged.is_empty() {
        let _ = writeln!(s, "{} tools, no findings", report.tools.len());
    } else {
        let _ = writeln!(s, "{} tools, {} with findings: {}", report.tools.len(), flagged.len(), flagged.join(", "));
    }
    if report.items().next().is_some() {
        let flagged: Vec<String> = report.items().filter(|(_, i)| !i.findings.is_empty()).map(|(what, i)| format!("{what} {}", i.name)).collect();
        let counts = format!("{} resources, {} resource templates, {} prompts", report.resources.len(), report.resource_templates.len(), report.prompts.len());
        if flagged.is_empty() {
            let _ = writeln!(s, "{counts}, no findings");
        } else {
            let _ = writeln!(s, "{counts}, {} with findings: {}", flagged.len(), flagged.join(", "));
        }
    }
    if let Some(w) = written {
        s.push_str(&w.summary());
    }
    if let Some(p) = policy {
        let _ = writeln!(
            s,
            "wrote {}: default deny, allowing the {} tools classified read{}",
            p.file,
            p.tools.len(),
            if p.tools.is_empty() { String::new() } else { format!(" ({})", p.tools.join(", ")) }
        );
    }
    s
}

/// The `--format json` document: the report, and what was written.
pub fn json(report: &Report, written: Option<&Written>, policy: Option<&PolicyWritten>) -> Result<String> {
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(flatten)]
        report: &'a Report,
        #[serde(skip_serializing_if = "Option::is_none")]
        written: Option<&'a Written>,
        #[serde(skip_serializing_if = "Option::is_none")]
        policy: Option<&'a PolicyWritten>,
    }
    Ok(serde_json::to_string_pretty(&Out { report, written, policy })?)
}

// === impl Written ===

impl Written {
    fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        if !self.changed {
            let _ = writeln!(s, "{}: already up to date", self.file);
        } else {
            let mut parts = Vec::new();
            for (what, list) in [("added", &self.added), ("pinned", &self.pinned), ("pin refreshed", &self.refreshed), ("category proposed", &self.categorized)] {
                if !list.is_empty() {
                    parts.push(format!("{what}: {}", list.join(", ")));
                }
            }
            let _ = writeln!(s, "wrote {}: {}; review the categories and commit it", self.file, parts.join("; "));
        }
        if !self.not_pinned.is_empty() {
            let _ = writeln!(s, "not pinned (findings): {}", self.not_pinned.join(", "));
        }
        s
    }
}

// === --write ===

/// One change to one tool entry of the server file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pin {
    pub(crate) tool: String,
    pub(crate) sha256: String,
    /// Set only when the file gives the tool no category.
    pub(crate) category: Option<Category>,
}

/// Merges the scan into `servers/NAME.yaml` of the working tree at `repo`: pins every offered
/// tool without findings, adds the proposed category where the file has none, declares tools it
/// did not know, and leaves everything else alone. The repository is compiled after the edit;
/// if it would no longer check (or does not hold the intended pins), the file is restored.
pub fn write(repo: &Path, scan: &Scan) -> Result<Written> {
    let server = scan.server.as_ref().context("--write needs --server NAME")?;
    let before = grant::compile_before(repo)?;
    let current = before
        .snapshot
        .servers
        .get(&server.name)
        .with_context(|| format!("there is no server {:?} in the working tree of {}", server.name, repo.display()))?;
    let rel = current.file.clone();
    if !(rel.ends_with(".yaml") || rel.ends_with(".yml")) {
        bail!("{rel} is not YAML: gatehouse edits YAML server files only; pin the tools by hand");
    }
    let abs = repo.join(&rel);
    let original = std::fs::read(&abs).with_context(|| format!("reading {rel}"))?;
    let original = String::from_utf8(original).with_context(|| format!("{rel} is not UTF-8"))?;

    let mut w = Written { file: rel.clone(), ..Default::default() };
    let mut pins = Vec::new();
    for t in &scan.report.tools {
        if t.is_flagged() {
            w.not_pinned.push(t.name.clone());
            continue;
        }
        let declared = current.tools.get(&t.name);
        let category = match declared {
            Some(d) if d.category.is_some() => None,
            _ => Some(t.category),
        };
        match declared.map(|d| d.sha256.as_deref()) {
            None => w.added.push(t.name.clone()),
            Some(None) => w.pinned.push(t.name.clone()),
            Some(Some(p)) if p != t.sha256 => w.refreshed.push(t.name.clone()),
            Some(Some(_)) => {}
        }
        if declared.is_some() && category.is_some() {
            w.categorized.push(t.name.clone());
        }
        let up_to_date = declared.is_some_and(|d| d.sha256.as_deref() == Some(t.sha256.as_str())) && category.is_none();
        if !up_to_date {
            pins.push(Pin { tool: t.name.clone(), sha256: t.sha256.clone(), category });
        }
    }
    w.not_pinned.dedup();
    if pins.is_empty() {
        return Ok(w);
    }
    let new_text = edit_tools(&original, &rel, &current.tools, &pins)?;
    let expected: BTreeMap<String, ToolInfo> = {
        let mut m = current.tools.clone();
        for p in &pins {
            let e = m.entry(p.tool.clone()).or_default();
            e.sha256 = Some(p.sha256.clone());
            if p.category.is_some() {
                e.category = p.category;
            }
        }
        m
    };
    let name = server.name.clone();
    grant::apply(repo, &rel, &abs, Some(&original), &new_text, |c| {
        let s = c.snapshot.servers.get(&name).context("the server is missing after the edit")?;
        let same = s.tools.len() == expected.len()
            && expected.iter().all(|(k, v)| s.tools.get(k).is_some_and(|t| t.sha256 == v.sha256 && t.category == v.category));
        if !same {
            bail!("the edited file does not hold exactly the intended pins and categories");
        }
        Ok(())
    })?;
    w.changed = true;
    Ok(w)
}

/// A written policy scaffold.
#[derive(Debug, Serialize)]
pub struct PolicyWritten {
    /// `policies/NAME.json`.
    pub file: String,
    /// The tools it allows (classified read), sorted.
    pub tools: Vec<String>,
}

/// Writes `policies/<file>`: `default: deny`, allowing the tools whose category (the file's,
/// else the proposal) is `read` and that have no findings. Refuses to overwrite a file.
pub fn write_policy(repo: &Path, file: &str, report: &Report) -> Result<PolicyWritten> {
    let file = file.strip_prefix("policies/").unwrap_or(file);
    if file.is_empty()
        || file.starts_with('/')
        || file.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with('.'))
        || file.contains('\\')
    {
        bail!("--policy {file:?}: give a file name under policies/, like files-read.json");
    }
    let file = if [".json", ".yaml", ".yml"].iter().any(|e| file.ends_with(e)) { file.to_string() } else { format!("{file}.json") };
    let rel = format!("policies/{file}");
    let abs = repo.join(&rel);
    if std::fs::symlink_metadata(&abs).is_ok() {
        bail!("{rel} exists: gatehouse does not overwrite a policy; choose another --policy name or remove it");
    }
    let tools: Vec<String> = report
        .tools
        .iter()
        .filter(|t| !t.is_flagged() && t.effective_category() == Category::Read)
        .map(|t| t.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let server = report.server.as_deref().unwrap_or("the scanned server");
    let text = if file.ends_with(".json") {
        let mut s = String::from("{ \"version\": \"1\", \"default\": \"deny\",\n  \"tools\": {");
        for (i, t) in tools.iter().enumerate() {
            s.push_str(if i == 0 { "\n" } else { ",\n" });
            s.push_str(&format!("    {}: {{}}", serde_json::to_string(t)?));
        }
        s.push_str(if tools.is_empty() { "} }\n" } else { "\n  } }\n" });
        s
    } else {
        let mut s = format!(
            "# Deny by default: the tools of {server} that gatehouse scan classified read.\n# Add deny_if / require conditions on their arguments before granting it.\nversion: \"1\"\ndefault: deny\n"
        );
        if tools.is_empty() {
            s.push_str("tools: {}\n");
        } else {
            s.push_str("tools:\n");
            for t in &tools {
                s.push_str(&format!("  {}: {{}}\n", grant::scalar(t)));
            }
        }
        s
    };
    let tools_check = tools.clone();
    let rel_check = rel.clone();
    grant::apply(repo, &rel, &abs, None, &text, move |c| {
        let p = c.snapshot.policies.get(&rel_check).context("the policy is missing after the edit")?;
        let listed: BTreeSet<&str> = p.tools.keys().map(String::as_str).collect();
        if listed != tools_check.iter().map(String::as_str).collect() {
            bail!("the written policy does not list exactly the read tools");
        }
        Ok(())
    })?;
    Ok(PolicyWritten { file: rel, tools })
}

// --- text editing of the tools: mapping ---

fn cannot(rel: &str, what: &str) -> anyhow::Error {
    anyhow!("cannot edit {rel} safely ({what}); pin the tools by hand (the hashes are in the scan output)")
}

/// A mapping key at the start of `s` (which starts with a non-blank), and the offset after its
/// colon.
fn key_of(s: &str) -> Option<(&str, usize)> {
    grant::top_key(s)
}

/// A hash as a YAML scalar: plain, unless it could read as a number (digits and at most `e`).
fn hash_scalar(h: &str) -> String {
    if h.bytes().all(|b| b.is_ascii_digit() || b == b'e') { format!("\"{h}\"") } else { h.to_string() }
}

/// One entry of the `tools:` block mapping.
struct Entry {
    key: String,
    /// Its key line.
    line: Line,
    /// Offset of the value on the key line (after the colon and blanks), and the value's length
    /// (without a comment).
    value: (usize, usize),
    /// Its content lines below the key line.
    children: Vec<Line>,
    /// Where the entry ends (after its last content line).
    end: usize,
}

/// The file with `pins` applied to its `tools:` mapping (see [`write`]). `declared` is what the
/// file was parsed to, checked against the text before anything is changed.
pub(crate) fn edit_tools(text: &str, rel: &str, declared: &BTreeMap<String, ToolInfo>, pins: &[Pin]) -> Result<String> {
    let nl = grant::newline(text);
    let ls = grant::lines(text);
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let ki = ls.iter().position(|l| key_of(&text[l.start..l.end]).is_some_and(|(k, _)| k == "tools"));
    let new_entry = |p: &Pin, indent: usize, align: usize| {
        let key = grant::scalar(&p.tool);
        let pad = align.saturating_sub(indent + key.len() + 1).max(1);
        let category = p.category.map(|c| format!("category: {}, ", c.as_str())).unwrap_or_default();
        format!("{}{key}:{}{{ {category}sha256: {} }}{nl}", " ".repeat(indent), " ".repeat(pad), hash_scalar(&p.sha256))
    };
    let Some(ki) = ki else {
        if !declared.is_empty() {
            return Err(cannot(rel, "no top-level tools: key found"));
        }
        let mut block = String::new();
        if !text.is_empty() && !text.ends_with('\n') {
            block.push_str(nl);
        }
        block.push_str(&format!("tools:                            # classification and definition pins (gatehouse scan){nl}"));
        for p in pins {
            block.push_str(&new_entry(p, 2, 0));
        }
        return Ok(format!("{text}{block}"));
    };
    let key = ls[ki];
    let line = &text[key.start..key.end];
    let after = key_of(line).expect("found").1;
    let tail = &line[after..];
    let value = tail[..grant::comment_at(tail)].trim();
    if !value.is_empty() {
        // `tools: {}` or `tools: ~`: no entries; the value goes, a comment stays.
        if !matches!(value, "{}" | "~" | "null") {
            return Err(cannot(rel, "tools: is not a block mapping (one tool per line)"));
        }
        if !declared.is_empty() {
            return Err(cannot(rel, "tools: is empty in the text but not in the parsed file"));
        }
        let v = key.start + after + tail.find(value).expect("inside");
        let mut out = String::new();
        out.push_str(text[..v].trim_end_matches([' ', '\t']));
        out.push_str(&text[v + value.len()..key.end]);
        out.push_str(nl);
        for p in pins {
            out.push_str(&new_entry(p, 2, 0));
        }
        out.push_str(&text[key.next..]);
        return Ok(out);
    }

    // The entries of the block mapping.
    let mut entries: Vec<Entry> = Vec::new();
    let mut entry_indent: Option<usize> = None;
    for l in &ls[ki + 1..] {
        let s = &text[l.start..l.end];
        if !grant::is_content(s) {
            continue;
        }
        let ind = grant::indent(s);
        if ind == 0 {
            break;
        }
        if s.as_bytes()[ind] == b'\t' {
            return Err(cannot(rel, "tabs in tools:"));
        }
        match entry_indent {
            None => entry_indent = Some(ind),
            Some(ei) if ind > ei => {
                let e = entries.last_mut().ok_or_else(|| cannot(rel, "unexpected indentation under tools:"))?;
                e.children.push(*l);
                e.end = l.next;
                continue;
            }
            Some(ei) if ind == ei => {}
            Some(_) => return Err(cannot(rel, "unexpected indentation under tools:")),
        }
        let (k, colon) = key_of(&s[ind..]).ok_or_else(|| cannot(rel, "an entry of tools: is not `name: …`"))?;
        let rest = &s[ind + colon..];
        let v = &rest[..grant::comment_at(rest)];
        let ws = v.len() - v.trim_start().len();
        entries.push(Entry {
            key: k.to_string(),
            line: *l,
            value: (l.start + ind + colon + ws, v.trim().len()),
            children: Vec::new(),
            end: l.next,
        });
    }
    let in_text: BTreeSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    if in_text.len() != entries.len() || in_text != declared.keys().map(String::as_str).collect() {
        return Err(cannot(rel, "the tools in the text do not match the parsed file"));
    }
    let ei = entry_indent.unwrap_or(2);
    // New entries line their `{` up with the existing one-line entries when those agree.
    let columns: BTreeSet<usize> = entries
        .iter()
        .filter(|e| text[e.value.0..].starts_with('{'))
        .map(|e| e.value.0 - e.line.start)
        .collect();
    let align = if columns.len() == 1 { *columns.iter().next().expect("one") } else { 0 };

    let mut appended = String::new();
    for p in pins {
        let Some(e) = entries.iter().find(|e| e.key == p.tool) else {
            appended.push_str(&new_entry(p, ei, align));
            continue;
        };
        let mut sets: Vec<(&str, String)> = Vec::new();
        if let Some(c) = p.category {
            sets.push(("category", c.as_str().to_string()));
        }
        sets.push(("sha256", hash_scalar(&p.sha256)));
        let (vstart, vlen) = e.value;
        let v = &text[vstart..vstart + vlen];
        if v.starts_with('{') {
            let (close, elems) = grant::flow(text, vstart).ok_or_else(|| cannot(rel, "unterminated { … }"))?;
            let mut added: Vec<String> = Vec::new();
            for (k, val) in &sets {
                match elems.iter().find(|&&(s, en)| key_of(&text[s..en]).is_some_and(|(kk, _)| kk == *k)) {
                    Some(&(s, en)) => edits.push((s, en, format!("{k}: {val}"))),
                    None => added.push(format!("{k}: {val}")),
                }
            }
            if !added.is_empty() {
                match elems.last() {
                    Some(&(_, en)) => edits.push((en, en, format!(", {}", added.join(", ")))),
                    None => edits.push((vstart, close + 1, format!("{{ {} }}", added.join(", ")))),
                }
            }
        } else if v.is_empty() {
            if e.children.is_empty() {
                // `name:` alone (null): becomes a flow mapping.
                let items: Vec<String> = sets.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let flow = if text[vstart..].starts_with('#') { format!("{{ {} }} ", items.join(", ")) } else { format!(" {{ {} }}", items.join(", ")) };
                edits.push((vstart, vstart, flow));
                continue;
            }
            let ci = grant::indent(&text[e.children[0].start..e.children[0].end]);
            for (k, val) in &sets {
                let found = e.children.iter().find(|c| {
                    let s = &text[c.start..c.end];
                    grant::indent(s) == ci && key_of(&s[ci..]).is_some_and(|(kk, _)| kk == *k)
                });
                match found {
                    Some(c) => {
                        let s = &text[c.start..c.end];
                        let colon = ci + key_of(&s[ci..]).expect("found").1;
                        let rest = &s[colon..];
                        let old = rest[..grant::comment_at(rest)].trim();
                        if old.is_empty() {
                            return Err(cannot(rel, &format!("{k} of {} has its value on another line", e.key)));
                        }
                        let at = c.start + colon + rest.find(old).expect("inside");
                        edits.push((at, at + old.len(), val.clone()));
                    }
                    None => edits.push((e.end, e.end, format!("{}{k}: {val}{nl}", " ".repeat(ci)))),
                }
            }
        } else {
            return Err(cannot(rel, &format!("the entry of {} is neither {{ … }} nor a block mapping", e.key)));
        }
    }
    if !appended.is_empty() {
        let at = entries.last().map_or(key.next, |e| e.end);
        edits.push((at, at, appended));
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(text.len() + 128 * pins.len());
    let mut at = 0;
    for (s, e, with) in edits {
        if s < at {
            return Err(cannot(rel, "overlapping edits"));
        }
        out.push_str(&text[at..s]);
        if s == text.len() && !out.is_empty() && !out.ends_with('\n') && with.ends_with('\n') {
            out.push_str(nl);
        }
        out.push_str(&with);
        at = e;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

#[cfg(test)]
mod tests;
