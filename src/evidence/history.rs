//! The git side of the evidence: the state of the policy repository at the end of the period
//! (access review, supplier register) and, commit by commit, how each grant's effective access
//! changed during it (provisioning).
//!
//! History is the first-parent chain of the revision (the branch as merged: a merged pull request
//! is one step, its merge commit). A commit that does not compile is skipped — the gateway would
//! have kept the previous valid snapshot — and its changes show up with the next valid commit.
//!
//! Provisioning is incremental, so that thousands of commits stay cheap: a commit that touches
//! only `grants/` is compiled with the repository's other policy files (servers, policies, roles,
//! settings: unchanged since the last valid commit) and just the grant files changed since then,
//! plus the checks that span grants (one identity per file, one grant per token hash). Any other
//! change compiles the whole repository. Both give the same snapshot of those grants that a full
//! compile would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use git2::{Commit, ObjectType, Oid, Tree};
use serde_json::{Value, json};

use super::db::Traffic;
use super::{Control, Period, Table};
use crate::policy::access;
use crate::gitops::git::{CommitInfo, PolicyRepo};
use crate::repo::{self, Entry, Files, MAX_FILE_BYTES};
use crate::policy::snapshot::{Category, Snapshot, Transport};
use crate::units::{Date, rfc3339};

pub(crate) const ACCESS_REVIEW_COLUMNS: [&str; 15] = [
    "identity",
    "grant",
    "kind",
    "owner",
    "tools",
    "categories",
    "privileged_tools",
    "tokens",
    "token_issued",
    "token_expires",
    "token_status",
    "review_on",
    "review_by",
    "review_age_days",
    "as_of_commit",
];

pub(crate) const PROVISIONING_COLUMNS: [&str; 16] = [
    "identity",
    "grant",
    "change",
    "commit",
    "date",
    "author",
    "committer",
    "pull_request",
    "merged_authors",
    "subject",
    "gained",
    "lost",
    "tokens_added",
    "tokens_removed",
    "tokens_changed",
    "review",
];

pub(crate) const SUPPLIER_COLUMNS: [&str; 22] = [
    "server",
    "registered",
    "description",
    "transport",
    "endpoint",
    "operated_by",
    "vendor",
    "risk",
    "data",
    "agreement",
    "reviewed_on",
    "reviewed_by",
    "tools",
    "privileged_tools",
    "pin",
    "pinned_tools",
    "calls",
    "allowed",
    "denials",
    "errors",
    "definition_changes",
    "as_of_commit",
];

/// The policy repository's history around a period.
pub(crate) struct History {
    pr: PolicyRepo,
    rev: String,
    period: Period,
    tip: Oid,
    /// The last commit before the period (the state provisioning starts from).
    base: Option<Oid>,
    /// The last commit before the end of the period.
    end: Option<Oid>,
    /// The commits of the period, oldest first.
    commits: Vec<Oid>,
}

/// The valid state in force at the end of the period.
pub(crate) struct EndState {
    pub commit: Oid,
    pub commit_time: String,
    pub snapshot: Snapshot,
    /// Commits after it (up to the end of the period) that did not compile.
    pub skipped: Vec<String>,
    /// The day token statuses and review ages are computed for: the earlier of the period's
    /// last day and today.
    pub as_of: Date,
}

/// What an access review row and a provisioning comparison need of one grant.
#[derive(Debug, Clone, PartialEq)]
struct GrantState {
    identity: String,
    /// (server, tool) the grant could be allowed to call.
    cells: BTreeSet<(String, String)>,
    /// sha256 hex → (issued, expires).
    tokens: BTreeMap<String, (Option<Date>, Option<Date>)>,
    review: Option<(Date, String)>,
}

/// One first-parent commit of the period as git alone shows it (the changes export).
pub(crate) struct GitChange {
    pub info: CommitInfo,
    /// Whether the policy repository compiles at this commit (else the gateway keeps the
    /// previous valid state).
    pub valid: bool,
    /// Why it does not compile, as `file:line:col: …`.
    pub errors: Vec<String>,
    /// Access gained and lost against the valid state before it (None when it is not valid).
    pub diff: Option<access::Diff>,
}

/// The facts of a commit that a provisioning row shows.
struct Meta {
    commit: String,
    date: String,
    author: String,
    committer: String,
    pull_request: Option<u64>,
    merged_authors: Vec<String>,
    subject: String,
}

// === impl History ===

impl History {
    pub fn open(repo: &Path, rev: &str, period: &Period) -> Result<History> {
        let pr = PolicyRepo::discover(repo)?;
        let tip = pr.resolve(rev)?;
        let (mut base, mut end, mut commits) = (None, None, Vec::new());
        {
            let mut cur = Some(pr.repo.find_commit(tip)?);
            while let Some(c) = cur {
                let ms = c.time().seconds() * 1000;
                if ms < period.until_ms() {
                    end.get_or_insert(c.id());
                    if ms < period.since_ms() {
                        base = Some(c.id());
                        break;
                    }
                    commits.push(c.id());
                }
                cur = c.parents().next();
            }
        }
        commits.reverse();
        Ok(History { pr, rev: rev.to_string(), period: period.clone(), tip, base, end, commits })
    }

    /// The commits of the period and the states at both ends (for the manifest).
    pub fn commit_range(&self, end: Option<&EndState>) -> Value {
        let hex = |o: Option<Oid>| o.map(|o| o.to_string());
        let path = if self.pr.prefix.is_empty() { String::new() } else { format!(" -- {}", self.pr.prefix) };
        json!({
            "rev": self.rev,
            "tip": self.tip.to_string(),
            "base": hex(self.base),
            "end": hex(self.end),
            "count": self.commits.len(),
            "first": hex(self.commits.first().copied()),
            "last": hex(self.commits.last().copied()),
            "git_log": match (self.base, self.end) {
                (Some(b), Some(e)) => format!("git log --first-parent {b}..{e}{path}"),
                (None, Some(e)) => format!("git log --first-parent {e}{path}"),
                _ => String::new(),
            },
            "state_at_until": end.map(|e| e.commit.to_string()),
            "skipped_invalid": end.map(|e| e.skipped.clone()).unwrap_or_default(),
        })
    }

    /// The valid state in force at the end of the period: the last commit before `until` that
    /// compiles (None when there is none).
    pub fn end_state(&self) -> Result<Option<EndState>> {
        let Some(end) = self.end else { return Ok(None) };
        let mut skipped = Vec::new();
        let mut cur = Some(self.pr.repo.find_commit(end)?);
        while let Some(c) = cur {
            if let Some((_, snapshot)) = self.build(c.id())? {
                let t = c.time();
                return Ok(Some(EndState {
                    commit: c.id(),
                    commit_time: rfc3339(t.seconds(), 0),
                    snapshot,
                    skipped,
                    // Token statuses and review ages as of the period's last day, or today when
                    // the period ends in the future (a token is not expired before its date).
                    as_of: self.period.last_day().min(Date::today()),
                }));
            }
            skipped.push(c.id().to_string());
            cur = c.parents().next();
        }
        Ok(None)
    }

    /// A.8.32 from git alone: every first-parent commit of the period, oldest first, whether it
    /// is valid, and the access it changed against the valid state before it (the last valid
    /// commit before the period to begin with; nothing when there is none). A commit that does
    /// not change the policy repository's tree reuses the previous commit's result.
    ///
    /// Incremental like provisioning: a commit the provisioning shortcut can decide changes the
    /// access matrix only in its affected grants' cells and, when a server, policy, role or
    /// settings file changed, in the groups' cells (compiled from those files alone). Anything
    /// else (an invalid commit, the one after it, a grant whose identity is a group's) compiles
    /// the whole repository.
    pub fn changes(&self) -> Result<Vec<GitChange>> {
        self.changes_with(true)
    }

    /// `incremental: false` compiles every changed commit whole: the reference the shortcut is
    /// tested against.
    pub fn changes_with(&self, incremental: bool) -> Result<Vec<GitChange>> {
        let repo = &self.pr.repo;
        // The last valid state: what provisioning keeps of it, its access matrix, and the
        // matrix's group cells.
        let mut valid = Valid::default();
        let mut matrix: BTreeSet<access::Cell> = BTreeSet::new();
        let mut groups: BTreeSet<access::Cell> = BTreeSet::new();
        let mut dirty = true;
        if let Some(base) = self.base {
            let mut cur = Some(repo.find_commit(base)?);
            while let Some(c) = cur {
                if let Ok((files, snapshot)) = self.compiled_files(c.id()) {
                    (valid, matrix, groups) = whole(files, &snapshot);
                    dirty = c.id() != base || group_identity(&snapshot);
                    break;
                }
                cur = c.parents().next();
            }
        }
        // The previous commit's policy tree and whether it was valid (its errors when not).
        type Checked = (Option<Oid>, Result<(), Vec<String>>);
        let mut last: Option<Checked> = None;
        // Every path changed since the last valid commit.
        let mut pending: BTreeSet<String> = BTreeSet::new();
        let trees = Trees::new(repo);
        let mut out = Vec::with_capacity(self.commits.len());
        for &id in &self.commits {
            let info = self.pr.info(id).with_context(|| format!("reading commit {id}"))?;
            let c = repo.find_commit(id)?;
            let new_tree = self.policy_tree_id(&c)?;
            if let Some((t, r)) = &last
                && *t == new_tree
            {
                out.push(match r {
                    Ok(()) => GitChange { info, valid: true, errors: Vec::new(), diff: Some(access::Diff::default()) },
                    Err(e) => GitChange { info, valid: false, errors: e.clone(), diff: None },
                });
                continue;
            }
            let old_tree = match c.parents().next() {
                Some(p) => self.policy_tree_id(&p)?,
                None => None,
            };
            let (old_t, new_t) =
                (old_tree.map(|t| trees.get(t)).transpose()?, new_tree.map(|t| trees.get(t)).transpose()?);
            trees.diff(old_t.as_ref(), new_t.as_ref(), "", &mut pending)?;
            let reader = Reader { trees: &trees, root: new_t };
            let step = if dirty || !incremental { None } else { self.incremental(&valid, &pending, &reader).ok().flatten() };
            let step = step.filter(|s| !s.states.values().any(|s| s.identity.starts_with("group:")));
            // The group cells anew when the context changed (None: unchanged).
            let step = match step {
                Some(s) if pending.iter().any(|p| is_context(p)) => {
                    let mut ctx: BTreeMap<String, Entry> =
                        valid.context.iter().map(|(p, e)| (p.clone(), dup(e))).collect();
                    for p in pending.iter().filter(|p| is_context(p)) {
                        match reader.entry(p)? {
                            Some(e) => ctx.insert(p.clone(), e),
                            None => ctx.remove(p),
                        };
                    }
                    match repo::compile(&Files { commit: None, entries: ctx }) {
                        Ok(c) if c.snapshot.grants.is_empty() => Some((s, Some(access::matrix(&c.snapshot)))),
                        _ => None,
                    }
                }
                other => other.map(|s| (s, None)),
            };
            let result = match step {
                Some((Step { states: new, deps, affected }, new_groups)) => {
                    let old: Vec<GrantState> = affected.iter().filter_map(|f| valid.set(f.clone(), None)).collect();
                    for f in &affected {
                        valid.gdeps.remove(f);
                    }
                    valid.gdeps.extend(deps);
                    valid.take_context(&pending, &reader)?;
                    // Identities are unique and none is a group's: the affected grants' cells
                    // (and the groups') are theirs alone in the matrix.
                    let mut removed: BTreeSet<access::Cell> = old.iter().flat_map(cells_of).collect();
                    let mut added: BTreeSet<access::Cell> = new.values().flat_map(cells_of).collect();
                    if let Some(g) = new_groups {
                        removed.extend(std::mem::replace(&mut groups, g.clone()));
                        added.extend(g);
                    }
                    let gained: Vec<access::Cell> = added.iter().filter(|c| !matrix.contains(*c)).cloned().collect();
                    let lost: Vec<access::Cell> = removed.iter().filter(|c| !added.contains(*c)).cloned().collect();
                    for c in &removed {
                        matrix.remove(c);
                    }
                    matrix.extend(added);
                    for (f, s) in new {
                        valid.set(f, Some(s));
                    }
                    Ok(access::Diff { gained, lost })
                }
                None => match self.compiled_files(id) {
                    Ok((files, snapshot)) => {
                        let (v, m, g) = whole(files, &snapshot);
                        let d = access::diff(&matrix, &m);
                        (valid, matrix, groups) = (v, m, g);
                        dirty = group_identity(&snapshot);
                        Ok(d)
                    }
                    Err(e) => {
                        dirty = true; // invalid: the next commit is compiled whole
                        Err(e)
                    }
                },
            };
            let change = match result {
                Ok(diff) => {
                    pending.clear();
                    last = Some((new_tree, Ok(())));
                    GitChange { info, valid: true, errors: Vec::new(), diff: Some(diff) }
                }
                Err(e) => {
                    last = Some((new_tree, Err(e.clone())));
                    GitChange { info, valid: false, errors: e, diff: None }
                }
            };
            out.push(change);
        }
        Ok(out)
    }

    /// Reads and compiles the repository at `id`, keeping the files; Err holds every error as
    /// `file:line:col: …`.
    fn compiled_files(&self, id: Oid) -> Result<(Files, Snapshot), Vec<String>> {
        let entries = self.pr.files_at(id).map_err(|e| vec![format!("{e:#}")])?;
        let files = Files { commit: Some(id.to_string()), entries };
        match repo::compile(&files) {
            Ok(c) => Ok((files, c.snapshot)),
            Err(d) => Err(d.errors().map(|e| e.to_string()).collect()),
        }
    }

    /// Reads and compiles the repository at `id`; None when it is not valid there.
    fn build(&self, id: Oid) -> Result<Option<(Files, Snapshot)>> {
        let Ok(entries) = self.pr.files_at(id) else { return Ok(None) };
        let files = Files { commit: Some(id.to_string()), entries };
        match repo::compile(&files) {
            Ok(c) => Ok(Some((files, c.snapshot))),
            Err(_) => Ok(None),
        }
    }

    /// The id of the policy repository's tree at a commit (None when the subtree does not exist
    /// there).
    fn policy_tree_id(&self, c: &Commit) -> Result<Option<Oid>> {
        if self.pr.prefix.is_empty() {
            return Ok(Some(c.tree_id()));
        }
        Ok(c.tree()?
            .get_path(Path::new(&self.pr.prefix))
            .ok()
            .filter(|e| e.kind() == Some(ObjectType::Tree))
            .map(|e| e.id()))
    }

    fn meta(&self, c: &Commit) -> Result<Meta> {
        let sig = |s: git2::Signature| format!("{} <{}>", s.name().unwrap_or("?"), s.email().unwrap_or("?"));
        let message = c.message().unwrap_or("");
        let mut merged_authors = Vec::new();
        if c.parent_count() > 1 {
            let mut walk = self.pr.repo.revwalk()?;
            walk.push(c.parent_id(1)?)?;
            walk.hide(c.parent_id(0)?)?;
            for id in walk {
                let a = sig(self.pr.repo.find_commit(id?)?.author());
                if !merged_authors.contains(&a) {
                    merged_authors.push(a);
                }
            }
        }
        Ok(Meta {
            commit: c.id().to_string(),
            date: rfc3339(c.time().seconds(), 0),
            author: sig(c.author()),
            committer: sig(c.committer()),
            pull_request: crate::gitops::git::pull_request(message),
            merged_authors,
            subject: message.lines().next().unwrap_or("").to_string(),
        })
    }

    /// A.5.16/A.5.18: every commit of the period that created, widened, narrowed, re-reviewed or
    /// revoked a grant, grant by grant.
    pub fn provisioning(&self) -> Result<Table> {
        self.provisioning_with(true)
    }

    /// `incremental: false` compiles every commit whole: the reference the shortcut is tested
    /// against.
    pub fn provisioning_with(&self, incremental: bool) -> Result<Table> {
        let repo = &self.pr.repo;
        let mut valid = Valid::default();
        // Whether the next commit must be compiled whole (no valid state yet, or the state
        // before the period is older than its last commit).
        let mut dirty = true;
        if let Some(base) = self.base {
            let mut cur = Some(repo.find_commit(base)?);
            while let Some(c) = cur {
                if let Some((files, snapshot)) = self.build(c.id())? {
                    valid = Valid::full(files, &snapshot);
                    dirty = c.id() != base;
                    break;
                }
                cur = c.parents().next();
            }
        }
        // Every path changed since the last valid commit.
        let mut pending: BTreeSet<String> = BTreeSet::new();
        let mut rows: Vec<(String, Vec<Value>)> = Vec::new();
        let trees = Trees::new(repo);
        for &id in &self.commits {
            let c = repo.find_commit(id)?;
            let new_tree = self.policy_tree_id(&c)?;
            let old_tree = match c.parents().next() {
                Some(p) => self.policy_tree_id(&p)?,
                None => None,
            };
            if new_tree == old_tree {
                continue;
            }
            let (old_tree, new_tree) =
                (old_tree.map(|t| trees.get(t)).transpose()?, new_tree.map(|t| trees.get(t)).transpose()?);
            trees.diff(old_tree.as_ref(), new_tree.as_ref(), "", &mut pending)?;
            let reader = Reader { trees: &trees, root: new_tree };
            let step = if dirty || !incremental { None } else { self.incremental(&valid, &pending, &reader)? };
            let (old, new, considered) = match step {
                Some(Step { states: new, deps, affected }) => {
                    let old: BTreeMap<String, GrantState> =
                        affected.iter().filter_map(|f| valid.set(f.clone(), None).map(|s| (f.clone(), s))).collect();
                    for f in &affected {
                        valid.gdeps.remove(f);
                    }
                    valid.gdeps.extend(deps);
                    valid.take_context(&pending, &reader)?;
                    (old, new, affected)
                }
                None => {
                    let Some((files, snapshot)) = self.build(id)? else {
                        dirty = true; // invalid: the next commit is checked whole
                        continue;
                    };
                    let next = Valid::full(files, &snapshot);
                    let old = std::mem::take(&mut valid.state);
                    let considered: Vec<String> =
                        old.keys().chain(next.state.keys()).cloned().collect::<BTreeSet<_>>().into_iter().collect();
                    let new = next.state.clone();
                    valid = next;
                    for f in new.keys() {
                        valid.set(f.clone(), None);
                    }
                    (old, new, considered)
                }
            };
            dirty = false;
            pending.clear();
            let mut meta = None;
            for f in &considered {
                let changes = match (old.get(f), new.get(f)) {
                    (Some(o), Some(n)) if o.identity != n.identity => {
                        vec![classify(Some(o), None), classify(None, Some(n))]
                    }
                    (o, n) => vec![classify(o, n)],
                };
                for (identity, ch) in changes.into_iter().flatten() {
                    if meta.is_none() {
                        meta = Some(self.meta(&c)?);
                    }
                    let m = meta.as_ref().expect("set above");
                    rows.push((identity.clone(), ch.row(&identity, f, m)));
                }
            }
            // The new state: the grants compiled replace theirs (a deleted grant is gone).
            for (f, s) in new {
                valid.set(f, Some(s));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0)); // stable: each identity's commits stay in order
        let rows: Vec<Vec<Value>> = rows.into_iter().map(|(_, r)| r).collect();
        Ok(Table {
            name: "provisioning",
            control: Control::Provisioning,
            columns: PROVISIONING_COLUMNS.to_vec(),
            population: rows.len() as u64,
            rows,
            source: json!({
                "base": self.base.map(|o| o.to_string()),
                "end": self.end.map(|o| o.to_string()),
                "commits": self.commits.len(),
            }),
        })
    }

    /// The grants a commit affects, compiled with just what they and the changed files depend
    /// on; None when that cannot tell (something did not compile, or grants clash): then a full
    /// compile decides.
    fn incremental(&self, valid: &Valid, pending: &BTreeSet<String>, tree: &Reader<'_, '_>) -> Result<Option<Step>> {
        // The changed files' current content.
        let mut current: BTreeMap<&str, Option<Entry>> = BTreeMap::new();
        for p in pending {
            current.insert(p.as_str(), tree.entry(p)?);
        }
        // The policy files other than grants as they are now.
        let ctx_deps = |p: &str| -> Option<BTreeSet<Key>> {
            match current.get(p) {
                Some(Some(e)) => refs_of(p, e),
                Some(None) => Some(BTreeSet::new()),
                None => valid.cdeps.get(p).cloned().unwrap_or_else(|| Some(BTreeSet::new())),
            }
        };
        let ctx_paths: BTreeSet<&str> = valid
            .context
            .keys()
            .map(String::as_str)
            .chain(current.iter().filter(|(p, e)| is_context(p) && e.is_some()).map(|(p, _)| *p))
            .filter(|p| !matches!(current.get(p), Some(None)))
            .collect();
        // (path, key, references) of each; unreadable references (None) stand for "anything".
        let ctx: Vec<CtxFile> = ctx_paths.iter().map(|p| (*p, key_of(p), ctx_deps(p))).collect();
        let mut everything = ctx.iter().any(|(_, _, d)| d.is_none());
        // Keys changed, then everything in the context that depends on them.
        let mut changed: BTreeSet<Key> = pending.iter().filter(|p| is_context(p)).filter_map(|p| key_of(p)).collect();
        while !changed.is_empty() {
            let before = changed.len();
            for (_, key, deps) in &ctx {
                if let Some(k) = key
                    && deps.as_ref().is_none_or(|d| d.iter().any(|x| changed.contains(x)))
                {
                    changed.insert(k.clone());
                }
            }
            if changed.len() == before {
                break;
            }
        }
        // The grants affected: changed ones, and those depending on a changed key.
        let mut affected: BTreeSet<String> = pending.iter().filter(|p| p.starts_with("grants/")).cloned().collect();
        if !changed.is_empty() {
            for (g, d) in &valid.gdeps {
                if d.as_ref().is_none_or(|d| d.iter().any(|k| changed.contains(k))) {
                    affected.insert(g.clone());
                }
            }
        }
        let mut files = BTreeMap::new();
        let mut deps: HashMap<String, Option<BTreeSet<Key>>> = HashMap::new();
        let mut wanted: BTreeSet<Key> = changed.clone();
        for g in &affected {
            let entry = match current.get(g.as_str()) {
                Some(e) => e.as_ref().map(dup),
                None => tree.entry(g)?,
            };
            let Some(entry) = entry else { continue };
            let d = if current.contains_key(g.as_str()) {
                refs_of(g, &entry)
            } else {
                valid.gdeps.get(g).cloned().flatten()
            };
            match &d {
                Some(d) => wanted.extend(d.iter().cloned()),
                None => everything = true,
            }
            deps.insert(g.clone(), d);
            files.insert(g.clone(), entry);
        }
        // The context they need, closed over references (roles → servers, policies; servers → policies).
        let mut included = vec![false; ctx.len()];
        loop {
            let mut grew = false;
            for (i, (p, key, deps)) in ctx.iter().enumerate() {
                let needed = everything
                    || matches!(*p, "gatehouse.yaml" | "gatehouse.yml")
                    || key.as_ref().is_some_and(|k| wanted.contains(k));
                if needed && !included[i] {
                    included[i] = true;
                    grew = true;
                    match deps {
                        Some(d) => wanted.extend(d.iter().cloned()),
                        None => everything = true,
                    }
                }
            }
            if !grew {
                break;
            }
        }
        for ((p, _, _), _) in ctx.iter().zip(&included).filter(|(_, inc)| **inc) {
            let e = match current.get(p) {
                Some(Some(e)) => dup(e),
                _ => dup(&valid.context[*p]),
            };
            files.insert(p.to_string(), e);
        }
        let Ok(compiled) = repo::compile(&Files { commit: None, entries: files }) else { return Ok(None) };
        // Other files (tests, docs) only have errors of their own: compiled alone.
        let others: BTreeMap<String, Entry> = current
            .iter()
            .filter(|(p, e)| !p.starts_with("grants/") && !is_context(p) && e.is_some())
            .map(|(p, e)| (p.to_string(), dup(e.as_ref().expect("filtered"))))
            .collect();
        if !others.is_empty() && repo::compile(&Files { commit: None, entries: others }).is_err() {
            return Ok(None);
        }
        let states = states(&compiled.snapshot);
        if valid.conflicts(&affected, &states) {
            return Ok(None);
        }
        Ok(Some(Step { states, deps, affected: affected.into_iter().collect() }))
    }
}

/// What `incremental` found: the affected grants' new states and references.
struct Step {
    states: BTreeMap<String, GrantState>,
    deps: HashMap<String, Option<BTreeSet<Key>>>,
    affected: Vec<String>,
}

/// A context file in `incremental`: its path, its key, and its references (None: unreadable).
type CtxFile<'a> = (&'a str, Option<Key>, Option<BTreeSet<Key>>);

/// A referenced file, by what references name: `s:<server>`, `r:<role>`, `p:<policy path>`,
/// `settings`.
type Key = String;

/// The state of the last valid commit that provisioning needs.
#[derive(Default)]
struct Valid {
    /// Policy files other than grants and tests.
    context: BTreeMap<String, Entry>,
    /// Their references (None: unreadable, depends on anything).
    cdeps: HashMap<String, Option<BTreeSet<Key>>>,
    /// Each grant's state, by file.
    state: BTreeMap<String, GrantState>,
    /// Each grant file's references.
    gdeps: HashMap<String, Option<BTreeSet<Key>>>,
    /// Identity → grant file, token hash → grant file (what must stay unique across grants).
    identities: HashMap<String, String>,
    tokens: HashMap<String, String>,
}

impl Valid {
    fn full(files: Files, snapshot: &Snapshot) -> Valid {
        let mut v = Valid::default();
        for (f, st) in states(snapshot) {
            v.set(f, Some(st));
        }
        for (p, e) in files.entries {
            if p.starts_with("grants/") {
                v.gdeps.insert(p.clone(), refs_of(&p, &e));
            } else if is_context(&p) {
                v.cdeps.insert(p.clone(), refs_of(&p, &e));
                v.context.insert(p, e);
            }
        }
        v
    }

    /// Takes the context files (servers, policies, roles, settings) among `pending` as the
    /// commit `reader` reads them: added or changed ones replace, removed ones go.
    fn take_context(&mut self, pending: &BTreeSet<String>, reader: &Reader) -> Result<()> {
        for p in pending.iter().filter(|p| is_context(p)) {
            match reader.entry(p)? {
                Some(e) => {
                    self.cdeps.insert(p.clone(), refs_of(p, &e));
                    self.context.insert(p.clone(), e);
                }
                None => {
                    self.cdeps.remove(p);
                    self.context.remove(p);
                }
            }
        }
        Ok(())
    }
}

impl Valid {
    /// Replaces (None: removes) a grant's state, keeping the uniqueness indexes.
    fn set(&mut self, file: String, new: Option<GrantState>) -> Option<GrantState> {
        let old = self.state.remove(&file);
        if let Some(o) = &old {
            if self.identities.get(&o.identity) == Some(&file) {
                self.identities.remove(&o.identity);
            }
            for t in o.tokens.keys() {
                if self.tokens.get(t) == Some(&file) {
                    self.tokens.remove(t);
                }
            }
        }
        if let Some(n) = new {
            self.identities.insert(n.identity.clone(), file.clone());
            for t in n.tokens.keys() {
                self.tokens.insert(t.clone(), file.clone());
            }
            self.state.insert(file, n);
        }
        old
    }

    /// Whether grants compiled on their own clash with the others (the same identity in two
    /// files, one token hash in two grants): a full compile would reject the commit.
    fn conflicts(&self, affected: &BTreeSet<String>, new: &BTreeMap<String, GrantState>) -> bool {
        let taken = |owner: Option<&String>| owner.is_some_and(|f| !affected.contains(f));
        new.values()
            .any(|s| taken(self.identities.get(&s.identity)) || s.tokens.keys().any(|t| taken(self.tokens.get(t))))
    }
}

/// The key a context file is referenced by.
fn key_of(path: &str) -> Option<Key> {
    let stem = |name: &str| name.rsplit_once('.').map_or(name, |(s, _)| s).to_string();
    if let Some(name) = path.strip_prefix("servers/") {
        return Some(format!("s:{}", stem(name)));
    }
    if let Some(name) = path.strip_prefix("roles/") {
        return Some(format!("r:{}", stem(name)));
    }
    if path.starts_with("policies/") {
        return Some(format!("p:{path}"));
    }
    matches!(path, "gatehouse.yaml" | "gatehouse.yml").then(|| "settings".to_string())
}

/// What a grant, role or server file references (by key); None when it cannot be read.
fn refs_of(path: &str, entry: &Entry) -> Option<BTreeSet<Key>> {
    let mut out = BTreeSet::new();
    let Entry::Blob(bytes) = entry else { return Some(out) };
    let text = std::str::from_utf8(bytes).ok()?;
    let docs = yaml_rust2::YamlLoader::load_from_str(text).ok()?;
    let Some(doc) = docs.first() else { return Some(out) };
    let s = |y: &yaml_rust2::Yaml| y.as_str().map(str::to_string);
    if path.starts_with("grants/") || path.starts_with("roles/") {
        for item in doc["access"].as_vec().map(Vec::as_slice).unwrap_or(&[]) {
            out.extend(s(&item["server"]).map(|v| format!("s:{v}")));
            out.extend(s(&item["role"]).map(|v| format!("r:{v}")));
            out.extend(s(&item["policy"]).map(|v| format!("p:{v}")));
        }
    } else if path.starts_with("servers/") {
        out.extend(s(&doc["policy"]).map(|v| format!("p:{v}")));
    }
    Some(out)
}

fn dup(e: &Entry) -> Entry {
    match e {
        Entry::Blob(b) => Entry::Blob(b.clone()),
        Entry::Symlink => Entry::Symlink,
        Entry::TooLarge(n) => Entry::TooLarge(*n),
    }
}

/// The tree objects read during a walk, by id: consecutive commits share most of them, so a
/// `grants/` of thousands of files is read (inflated, hash-checked) once per change, not once per
/// lookup.
struct Trees<'r> {
    repo: &'r git2::Repository,
    cache: std::cell::RefCell<HashMap<Oid, Tree<'r>>>,
}

impl<'r> Trees<'r> {
    fn new(repo: &'r git2::Repository) -> Trees<'r> {
        Trees { repo, cache: Default::default() }
    }

    fn get(&self, id: Oid) -> Result<Tree<'r>> {
        if let Some(t) = self.cache.borrow().get(&id) {
            return Ok(t.clone());
        }
        let t = self.repo.find_tree(id)?;
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= 512 {
            cache.clear();
        }
        cache.insert(id, t.clone());
        Ok(t)
    }

    /// Adds to `out` every file path (below `dir`) that differs between two trees.
    fn diff(
        &self,
        old: Option<&Tree<'r>>,
        new: Option<&Tree<'r>>,
        dir: &str,
        out: &mut BTreeSet<String>,
    ) -> Result<()> {
        type Item = (Vec<u8>, Oid, bool);
        let items = |t: Option<&Tree<'r>>| -> Vec<Item> {
            let mut v: Vec<Item> = t
                .map(|t| {
                    t.iter().map(|e| (e.name_bytes().to_vec(), e.id(), e.kind() == Some(ObjectType::Tree))).collect()
                })
                .unwrap_or_default();
            v.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
            v
        };
        let (a, b) = (items(old), items(new));
        let (mut i, mut j) = (0, 0);
        let path = |name: &[u8]| -> String {
            let name = String::from_utf8_lossy(name);
            if dir.is_empty() { name.into_owned() } else { format!("{dir}/{name}") }
        };
        // One side of a changed entry: a file is a changed path, a directory all of its files.
        let side = |item: &Item, other_tree: Option<&Item>, out: &mut BTreeSet<String>| -> Result<()> {
            let (name, id, is_tree) = item;
            if *is_tree {
                let t = self.get(*id)?;
                match other_tree {
                    Some((_, other, true)) => self.diff(Some(&self.get(*other)?), Some(&t), &path(name), out),
                    _ => self.diff(None, Some(&t), &path(name), out),
                }
            } else {
                out.insert(path(name));
                Ok(())
            }
        };
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(&y.0).then(x.2.cmp(&y.2)),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    side(&a[i], None, out)?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    side(&b[j], None, out)?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if a[i].1 != b[j].1 {
                        side(&b[j], Some(&a[i]), out)?;
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }
}

/// Reads files of one commit's policy tree as `PolicyRepo::files_at` does.
struct Reader<'t, 'r> {
    trees: &'t Trees<'r>,
    root: Option<Tree<'r>>,
}

impl Reader<'_, '_> {
    fn entry(&self, path: &str) -> Result<Option<Entry>> {
        let Some(root) = &self.root else { return Ok(None) };
        let mut tree = root.clone();
        let mut parts = path.split('/').peekable();
        let e = loop {
            let Some(name) = parts.next() else { return Ok(None) };
            let Some(e) = tree.get_name(name).map(|e| e.to_owned()) else { return Ok(None) };
            if parts.peek().is_none() {
                break e;
            }
            if e.kind() != Some(ObjectType::Tree) {
                return Ok(None);
            }
            tree = self.trees.get(e.id())?;
        };
        if e.kind() != Some(ObjectType::Blob) {
            return Ok(None);
        }
        if e.filemode() == 0o120000 {
            return Ok(Some(Entry::Symlink));
        }
        let blob = self.trees.repo.find_blob(e.id()).with_context(|| format!("reading {path}"))?;
        Ok(Some(if blob.size() as u64 > MAX_FILE_BYTES {
            Entry::TooLarge(blob.size() as u64)
        } else {
            Entry::Blob(blob.content().to_vec())
        }))
    }
}

/// Whether a path is one of the policy files other than grants and tests (what a grant's
/// compilation depends on).
fn is_context(path: &str) -> bool {
    matches!(path, "gatehouse.yaml" | "gatehouse.yml")
        || ["servers/", "policies/", "roles/"].iter().any(|d| path.starts_with(d))
}

/// What `changes` keeps of a valid commit compiled whole: provisioning's state, the access
/// matrix, and its group cells.
fn whole(files: Files, snapshot: &Snapshot) -> (Valid, BTreeSet<access::Cell>, BTreeSet<access::Cell>) {
    let matrix = access::matrix(snapshot);
    let groups = matrix.iter().filter(|c| c.identity.starts_with("group:")).cloned().collect();
    (Valid::full(files, snapshot), matrix, groups)
}

/// Whether a grant's identity looks like a group's (its cells could mix with the group's).
fn group_identity(snapshot: &Snapshot) -> bool {
    snapshot.grants.iter().any(|g| g.identity.starts_with("group:"))
}

/// A grant's cells in the access matrix.
fn cells_of(s: &GrantState) -> impl Iterator<Item = access::Cell> + '_ {
    s.cells.iter().map(|(server, tool)| access::Cell { identity: s.identity.clone(), server: server.clone(), tool: tool.clone() })
}

/// Each grant's state, by file.
fn states(snap: &Snapshot) -> BTreeMap<String, GrantState> {
    let mut cells: HashMap<String, BTreeSet<(String, String)>> = HashMap::new();
    for c in access::matrix(snap) {
        cells.entry(c.identity).or_default().insert((c.server, c.tool));
    }
    snap.grants
        .iter()
        .map(|g| {
            let state = GrantState {
                identity: g.identity.clone(),
                cells: cells.remove(&g.identity).unwrap_or_default(),
                tokens: g.tokens.iter().map(|t| (hex::encode(t.sha256), (t.issued, t.expires))).collect(),
                review: g.review.as_ref().map(|r| (r.on, r.by.clone())),
            };
            (g.file.clone(), state)
        })
        .collect()
}

/// How a grant changed.
struct Change {
    kind: &'static str,
    gained: Vec<String>,
    lost: Vec<String>,
    tokens_added: Vec<String>,
    tokens_removed: Vec<String>,
    tokens_changed: Vec<String>,
    review: Option<String>,
}

/// Classifies the change from `old` to `new` (None: no grant). Precedence: created, revoked
/// (the file is gone, or the grant had a token and a tool and now lacks either), widened (a tool
/// gained, a token added or its expiry extended), narrowed (a tool lost, a token removed or its
/// expiry brought forward), re-reviewed (only the review changed). Other edits (owner, kind,
/// quotas, comments) are not provisioning events.
fn classify(old: Option<&GrantState>, new: Option<&GrantState>) -> Option<(String, Change)> {
    let empty = GrantState { identity: String::new(), cells: BTreeSet::new(), tokens: BTreeMap::new(), review: None };
    let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let identity = new.or(old)?.identity.clone();
    let cell = |(s, t): &(String, String)| format!("{s}/{t}");
    let gained: Vec<String> = n.cells.difference(&o.cells).map(cell).collect();
    let lost: Vec<String> = o.cells.difference(&n.cells).map(cell).collect();
    let token = |h: &str, (issued, expires): &(Option<Date>, Option<Date>)| {
        let d = |x: &Option<Date>| x.map_or("-".to_string(), |d| d.to_string());
        format!("sha256:{} (issued {}, expires {})", &h[..12.min(h.len())], d(issued), d(expires))
    };
    let tokens_added: Vec<String> =
        n.tokens.iter().filter(|(h, _)| !o.tokens.contains_key(*h)).map(|(h, v)| token(h, v)).collect();
    let tokens_removed: Vec<String> =
        o.tokens.iter().filter(|(h, _)| !n.tokens.contains_key(*h)).map(|(h, v)| token(h, v)).collect();
    let (mut extended, mut shortened, mut tokens_changed) = (false, false, Vec::new());
    for (h, (_, new_exp)) in &n.tokens {
        let Some((_, old_exp)) = o.tokens.get(h) else { continue };
        if old_exp != new_exp {
            // None is "never expires": later than any date.
            let later = match (old_exp, new_exp) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(a), Some(b)) => b > a,
            };
            extended |= later;
            shortened |= !later;
            let d = |x: &Option<Date>| x.map_or("never".to_string(), |d| d.to_string());
            tokens_changed.push(format!("sha256:{} expires {} → {}", &h[..12.min(h.len())], d(old_exp), d(new_exp)));
        }
    }
    let review_changed = o.review != n.review;
    let review = match (&n.review, review_changed || old.is_none()) {
        (Some((on, by)), true) => Some(format!("{on} by {by}")),
        (None, true) if o.review.is_some() => Some("removed".into()),
        _ => None,
    };
    let usable = |s: &GrantState| !s.tokens.is_empty() && !s.cells.is_empty();
    let kind = if old.is_none() {
        "created"
    } else if new.is_none() || (usable(o) && !usable(n)) {
        "revoked"
    } else if !gained.is_empty() || !tokens_added.is_empty() || extended {
        "widened"
    } else if !lost.is_empty() || !tokens_removed.is_empty() || shortened {
        "narrowed"
    } else if review_changed {
        "re-reviewed"
    } else {
        return None;
    };
    Some((identity, Change { kind, gained, lost, tokens_added, tokens_removed, tokens_changed, review }))
}

impl Change {
    fn row(self, identity: &str, file: &str, m: &Meta) -> Vec<Value> {
        vec![
            json!(identity),
            json!(file),
            json!(self.kind),
            json!(m.commit),
            json!(m.date),
            json!(m.author),
            json!(m.committer),
            json!(m.pull_request),
            json!(m.merged_authors),
            json!(m.subject),
            json!(self.gained),
            json!(self.lost),
            json!(self.tokens_added),
            json!(self.tokens_removed),
            json!(self.tokens_changed),
            json!(self.review),
        ]
    }
}

/// `server/tool (category)` and the category, for one cell of the matrix.
fn tool_label(snap: &Snapshot, server: &str, tool: &str) -> (String, Option<Category>) {
    if tool == "*" {
        return (format!("{server}/* (any tool the upstream offers)"), None);
    }
    // Resource patterns and prompts (`resource:<pattern>`, `prompt:<name>`) have no category.
    if tool.starts_with(access::RESOURCE_PREFIX) || tool.starts_with(access::PROMPT_PREFIX) {
        return (format!("{server}/{tool}"), None);
    }
    let category = snap.servers.get(server).and_then(|s| s.tools.get(tool)).and_then(|t| t.category);
    let label = format!("{server}/{tool} ({})", category.map_or("unclassified", Category::as_str));
    (label, category)
}

/// The (server, tool) cells of `identity` as access review columns: tool labels with their
/// categories, the categories, and the privileged tools.
fn what_it_reaches(snap: &Snapshot, cells: &HashMap<&str, Vec<(String, String)>>, identity: &str) -> (Vec<String>, BTreeSet<&'static str>, Vec<String>) {
    let (mut tools, mut categories, mut privileged) = (Vec::new(), BTreeSet::new(), Vec::new());
    for (server, tool) in cells.get(identity).map(Vec::as_slice).unwrap_or(&[]) {
        let (label, cat) = tool_label(snap, server, tool);
        categories.insert(match cat {
            Some(c) => c.as_str(),
            None if tool == "*" => "any",
            None if tool.starts_with(access::RESOURCE_PREFIX) => "resource",
            None if tool.starts_with(access::PROMPT_PREFIX) => "prompt",
            None => "unclassified",
        });
        if cat.is_some_and(Category::is_privileged) {
            privileged.push(format!("{server}/{tool}"));
        }
        tools.push(label);
    }
    (tools, categories, privileged)
}

/// A.5.18: one row per identity of the state in force at the end of the period, then one per
/// identity-provider group that roles name.
pub(crate) fn access_review(period: &Period, end: Option<&EndState>) -> Table {
    let mut rows = Vec::new();
    let source = match end {
        Some(e) => json!({
            "as_of": period.until,
            "commit": e.commit.to_string(),
            "commit_time": e.commit_time,
            "skipped_invalid": e.skipped,
            "status_as_of": e.as_of.to_string(),
            "status_as_of_is": if e.as_of < period.last_day() { "today (the period ends in the future)" } else { "the last day of the period" },
        }),
        None => json!({ "as_of": period.until, "commit": null }),
    };
    if let Some(e) = end {
        let snap = &e.snapshot;
        let mut cells: HashMap<&str, Vec<(String, String)>> = HashMap::new();
        let matrix = access::matrix(snap);
        for c in &matrix {
            cells.entry(c.identity.as_str()).or_default().push((c.server.clone(), c.tool.clone()));
        }
        let mut grants: Vec<_> = snap.grants.iter().collect();
        grants.sort_by(|a, b| a.identity.cmp(&b.identity));
        for g in grants {
            let (tools, categories, privileged) = what_it_reaches(snap, &cells, &g.identity);
            let d = |x: Option<Date>| x.map_or(String::new(), |d| d.to_string());
            let tokens: Vec<String> =
                g.tokens.iter().map(|t| format!("sha256:{}", &hex::encode(t.sha256)[..12])).collect();
            let issued: Vec<String> = g.tokens.iter().map(|t| d(t.issued)).collect();
            let expires: Vec<String> = g.tokens.iter().map(|t| d(t.expires)).collect();
            // A grant without tokens is reached by signing in, when an issuer is configured.
            let status = if g.tokens.is_empty() {
                if snap.settings.issuers.is_empty() { "none" } else { "sso" }
            } else if g.tokens.iter().all(|t| t.expires.is_some_and(|x| x <= e.as_of)) {
                "expired"
            } else {
                "active"
            };
            rows.push(vec![
                json!(g.identity),
                json!(g.file),
                json!(g.kind),
                json!(g.owner),
                json!(tools),
                json!(categories),
                json!(privileged),
                json!(tokens),
                json!(issued),
                json!(expires),
                json!(status),
                json!(g.review.as_ref().map(|r| r.on.to_string())),
                json!(g.review.as_ref().map(|r| r.by.clone())),
                json!(g.review.as_ref().map(|r| e.as_of.days_since_epoch() - r.on.days_since_epoch())),
                json!(e.commit.to_string()),
            ]);
        }
        // Identity-provider groups that roles name: what any signed-in member gets through them
        // (on top of the member's own grant), with the roles that give it.
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for role in snap.roles.values() {
            for g in &role.groups {
                groups.entry(g.as_str()).or_default().push(role.file.as_str());
            }
        }
        for (group, roles) in groups {
            let identity = format!("group:{group}");
            let (tools, categories, privileged) = what_it_reaches(snap, &cells, &identity);
            let none: Vec<String> = Vec::new();
            rows.push(vec![
                json!(identity),
                json!(roles.join(", ")),
                json!("idp-group"),
                Value::Null,
                json!(tools),
                json!(categories),
                json!(privileged),
                json!(none),
                json!(none),
                json!(none),
                json!("sso"),
                Value::Null,
                Value::Null,
                Value::Null,
                json!(e.commit.to_string()),
            ]);
        }
    }
    Table {
        name: "access-review",
        control: Control::AccessReview,
        columns: ACCESS_REVIEW_COLUMNS.to_vec(),
        population: rows.len() as u64,
        rows,
        source,
    }
}

/// One registered server's supplier facts (the registry part of a suppliers row).
pub(crate) struct RegistryRow {
    pub server: String,
    pub cells: Vec<Value>,
    pub commit: String,
}

/// The server registry at the end of the period.
pub(crate) fn registry(end: Option<&EndState>) -> Vec<RegistryRow> {
    let Some(e) = end else { return Vec::new() };
    let snap = &e.snapshot;
    snap.server_names()
        .into_iter()
        .map(|name| {
            let s = &snap.servers[name];
            let (transport, endpoint) = match &s.transport {
                Transport::StreamableHttp { url } => ("streamable-http", url.clone()),
                Transport::Sse { url } => ("sse", url.clone()),
                Transport::Stdio { command } => ("stdio", command.join(" ")),
            };
            let sup = s.supplier.as_ref();
            let tools: Vec<String> = s
                .tools
                .iter()
                .map(|(t, info)| format!("{t} ({})", info.category.map_or("unclassified", Category::as_str)))
                .collect();
            let privileged: Vec<&String> = s
                .tools
                .iter()
                .filter(|(_, i)| i.category.is_some_and(Category::is_privileged))
                .map(|(t, _)| t)
                .collect();
            let cells = vec![
                json!(s.description),
                json!(transport),
                json!(endpoint),
                json!(sup.and_then(|x| x.operated_by.clone())),
                json!(sup.and_then(|x| x.vendor.clone())),
                json!(sup.and_then(|x| x.risk.clone())),
                json!(sup.map(|x| x.data.clone()).unwrap_or_default()),
                json!(sup.and_then(|x| x.agreement.clone())),
                json!(sup.and_then(|x| x.reviewed.as_ref()).map(|r| r.on.to_string())),
                json!(sup.and_then(|x| x.reviewed.as_ref()).map(|r| r.by.clone())),
                json!(tools),
                json!(privileged),
                json!(if s.pin_required { "required" } else { "optional" }),
                json!(s.tools.values().filter(|i| i.sha256.is_some()).count()),
            ];
            RegistryRow { server: name.to_string(), cells, commit: e.commit.to_string() }
        })
        .collect()
}

/// Per server: the period's traffic, and its count of definition changes.
pub(crate) type DaemonCounts<'a> = (&'a BTreeMap<String, Traffic>, &'a BTreeMap<String, u64>);

/// A.5.19–5.23: every registered server with its traffic, then every server that had traffic in
/// the period but is not registered at its end (removed, or a name no server had).
///
/// `definition_changes` counts the period's `tool_quarantined` events per server (a tool whose
/// definition no longer matched its pin, or that failed screening).
///
/// `daemon` is the traffic and those counts, or why they are not available (no state database):
/// then the traffic columns are empty and the source says why.
pub(crate) fn suppliers(registry: Vec<RegistryRow>, daemon: Result<DaemonCounts<'_>, &str>) -> Table {
    let none = Traffic::default();
    let (no_traffic, no_changes) = (BTreeMap::new(), BTreeMap::new());
    let (traffic, changes) = daemon.unwrap_or((&no_traffic, &no_changes));
    let commit = registry.first().map(|r| r.commit.clone());
    let count = |server: &str, t: &Traffic| match daemon {
        Ok(_) => vec![json!(t.calls), json!(t.allowed), json!(t.denials), json!(t.errors), json!(changes.get(server).copied().unwrap_or(0))],
        Err(_) => vec![Value::Null; 5],
    };
    let mut rows = Vec::new();
    let registered: BTreeSet<String> = registry.iter().map(|r| r.server.clone()).collect();
    for r in registry {
        let mut row = vec![json!(r.server), json!("yes")];
        row.extend(r.cells);
        row.extend(count(&r.server, traffic.get(&r.server).unwrap_or(&none)));
        row.push(json!(r.commit));
        rows.push(row);
    }
    let unregistered: BTreeSet<&String> = traffic.keys().chain(changes.keys()).filter(|s| !registered.contains(*s)).collect();
    for server in unregistered {
        let mut row = vec![json!(server), json!("no")];
        row.extend(std::iter::repeat_n(Value::Null, 14));
        row.extend(count(server, traffic.get(server).unwrap_or(&none)));
        row.push(json!(commit));
        rows.push(row);
    }
    Table {
        name: "suppliers",
        control: Control::Suppliers,
        columns: SUPPLIER_COLUMNS.to_vec(),
        population: rows.len() as u64,
        rows,
        source: match daemon {
            Ok(_) => json!({ "registry_commit": commit }),
            Err(why) => json!({
                "registry_commit": commit,
                "traffic": format!("not available: {why}; calls, allowed, denials, errors and definition_changes are empty"),
            }),
        },
    }
}
