//! The reconciler: the only writer of the active snapshot.
//!
//! On every trigger (a ref changed under `.git`, the poll interval, `POST /-/reconcile`) it
//! resolves the tip of the branch, and when the tip is new: reads the tree AT THE COMMIT, loads,
//! validates, compiles and binds secrets, records every commit since the last applied one as a
//! change (A.8.32), and swaps the new snapshot in with one atomic store. A commit that fails is
//! rejected with all its errors while the last good snapshot keeps serving, and is not retried
//! until the tip moves. A tip that does not descend from the applied commit (a history rewrite)
//! is refused and recorded until an operator accepts it.
//!
//! Only the tip is ever applied; the commits before it in one reconcile are recorded as
//! `superseded` (validated, with their access diff, but never enforced).
//!
//! Only authorised changes are applied: every commit since the last applied one has its
//! signature checked (`signature::Chain`) against a trust list that is already trusted. When
//! that list requires signatures, one commit that is unsigned or signed by an unknown key is
//! recorded as `rejected` and the tip with it. The very first commit's own trust list is trusted
//! only when the daemon was started with `--trust-initial-signers` (recorded as an event).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use git2::Oid;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::policy::access::{self, Cell};
use crate::gitops::git::{CommitInfo, PolicyRepo, fetch};
use crate::gitops::signature::{Chain, Check};
use crate::gateway::proxy::{Active, Attempt, RewriteStatus, State};
use crate::repo::{self, Files};
use crate::gateway::secrets::{SecretSource, bind};
use crate::policy::snapshot::Snapshot;
use crate::record::store::Store;
use crate::record::store::sql::{self, Conn, params};
use crate::units::now_rfc3339_ms;

/// Where the policy repository comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A local repository (or a directory inside one), watched for ref changes.
    Local { path: PathBuf },
    /// A remote URL, cloned (bare) into `clone` and fetched on every trigger.
    Remote { url: String, clone: PathBuf },
}

/// How the reconciler is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: Source,
    /// The branch to follow; HEAD (local) or the remote's default branch when None.
    pub branch: Option<String>,
    pub secrets: SecretSource,
    /// Accept history rewrites without an operator (recorded as accepted by the daemon).
    pub accept_rewrite: bool,
    /// How often to look for a new tip without a trigger.
    pub poll: Duration,
    /// Trust the first commit's own trust list (`changes:`) when no commit has been applied yet.
    pub trust_initial_signers: bool,
}

/// One change record (DESIGN.md §4).
#[derive(Debug, Clone)]
pub struct ChangeRecord {
    pub info: CommitInfo,
    /// The signature check (the `signed` and `trust` columns).
    pub signature: Check,
    pub access_diff: Option<access::Diff>,
    pub status: &'static str,
    pub errors: Vec<String>,
}

/// What one reconcile step found.
enum Outcome {
    Unchanged,
    Applied { active: Active, tip: Oid, records: Vec<ChangeRecord>, accepted_rewrite: Option<String>, events: Vec<(&'static str, serde_json::Value)> },
    Rejected { tip: Oid, records: Vec<ChangeRecord> },
    Rewritten { old: Oid, new: Oid, vanished: Vec<String> },
    Failed(String),
}

/// The reconciler's memory between steps.
struct Memory {
    applied: Option<Oid>,
    /// A tip that failed validation: not retried until the tip moves.
    rejected: Option<Oid>,
    /// A rewrite already recorded: not recorded again until the tip moves.
    refused: Option<Oid>,
}

/// Most commits of one reconcile that are compiled for their access diff.
const MAX_DIFFED: usize = 50;

/// Serves the commit recorded as last applied (if any), before the source is even looked at:
/// after a restart the gateway is ready at once.
pub fn restore(settings: &Settings, store: &Store, state: &State) -> Option<Oid> {
    let commit = last_applied(store)?;
    let id = Oid::from_str(&commit).ok()?;
    let restored = (|| -> Result<Active> {
        let pr = open(&settings.source)?;
        let files = Files { commit: Some(commit.clone()), entries: pr.files_at(id)? };
        let compiled = repo::compile(&files).map_err(|d| anyhow::anyhow!("{d}"))?;
        let snapshot = Arc::new(compiled.snapshot);
        let secrets = bind(&snapshot, &settings.secrets).map_err(|e| anyhow::anyhow!(e.join("; ")))?;
        Ok(Active { snapshot, secrets: Arc::new(secrets) })
    })();
    match restored {
        Ok(active) => {
            info!(commit = %&commit[..12], "serving the last applied commit");
            state.activate(active);
            // On a shared database the commit may have been applied by another replica: this
            // one enforces it from now on, and says so.
            let (replica, c, now) = (state.replica.clone(), commit.clone(), now_rfc3339_ms());
            if let Err(e) = store.write_blocking(move |conn| crate::record::replicas::applied_in(conn, &replica, &c, &now)) {
                warn!(error = %e, "cannot record this replica's application of the restored commit");
            }
            state.status.lock().expect("status lock").last_applied = Some(crate::gateway::proxy::AppliedStatus { commit: commit.clone(), time: None });
            Some(id)
        }
        Err(e) => {
            warn!(commit = %&commit[..12], error = %e, "the last applied commit cannot be served again; waiting for a valid commit");
            None
        }
    }
}

fn last_applied(store: &Store) -> Option<String> {
    let reader = store.read().ok()?;
    reader.conn().query_opt("SELECT value FROM kv WHERE key = 'last_applied'", &[], |r| r.string(0)).ok().flatten()
}

/// Runs until the process ends: one reconcile per trigger or poll interval.
pub async fn run(settings: Settings, store: Store, state: Arc<State>, mut triggers: mpsc::Receiver<()>, applied: Option<Oid>) {
    let mut mem = Memory { applied, rejected: None, refused: None };
    loop {
        reconcile_once(&settings, &store, &state, &mut mem).await;
        let jitter = Duration::from_millis(u64::from(rand_u16()) % (settings.poll.as_millis() as u64 / 10 + 1));
        tokio::select! {
            t = triggers.recv() => if t.is_none() { return },
            _ = tokio::time::sleep(settings.poll + jitter) => {}
        }
        // Coalesce a burst of triggers (git writes several files per commit).
        tokio::time::sleep(Duration::from_millis(10)).await;
        while triggers.try_recv().is_ok() {}
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    u16::from_le_bytes(b)
}

async fn reconcile_once(settings: &Settings, store: &Store, state: &Arc<State>, mem: &mut Memory) {
    let started = Instant::now();
    let input = (settings.clone(), mem.applied, mem.rejected, mem.refused, store.clone(), state.active.load_full());
    let outcome = tokio::task::spawn_blocking(move || {
        let (settings, applied, rejected, refused, store, current) = input;
        step(&settings, applied, rejected, refused, &store, current.as_deref().map(|a| &*a.snapshot))
    })
    .await
    .unwrap_or_else(|e| Outcome::Failed(format!("reconcile task failed: {e}")));
    let label = match &outcome {
        Outcome::Unchanged => return,
        Outcome::Applied { .. } => "applied",
        Outcome::Rejected { .. } => "rejected",
        Outcome::Rewritten { .. } => "rewrite_refused",
        Outcome::Failed(_) => "error",
    };
    let now = now_rfc3339_ms();
    match outcome {
        Outcome::Unchanged => {}
        Outcome::Applied { active, tip, records, accepted_rewrite, events } => {
            let tip_hex = tip.to_string();
            let write = {
                let (records, tip_hex, now, replica) = (records.clone(), tip_hex.clone(), now.clone(), state.replica.clone());
                store.write(move |c| {
                    insert_records(c, &records, &now)?;
                    for (kind, detail) in &events {
                        c.exec("INSERT INTO events (ts, kind, detail) VALUES (?1, ?2, ?3)", params![&now, *kind, &*detail.to_string()])?;
                    }
                    c.exec("INSERT INTO kv (key, value) VALUES ('last_applied', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1", params![&tip_hex])?;
                    crate::record::replicas::applied_in(c, &replica, &tip_hex, &now)
                })
            };
            // The change is recorded (durably) before it is enforced.
            if let Err(e) = write.await {
                error!(commit = %&tip_hex[..12], error = %e, "cannot record the change; not applying it");
                set_attempt(state, &tip_hex, "error", vec![e.to_string()], &now);
                state.metrics.reconcile("error", started.elapsed());
                return;
            }
            let old = state.active.load_full();
            state.activate(active);
            crate::gateway::proxy::snapshot_changed(state, old.as_deref());
            mem.applied = Some(tip);
            mem.rejected = None;
            mem.refused = None;
            info!(commit = %&tip_hex[..12], changes = records.len(), ms = started.elapsed().as_millis() as u64, "applied");
            let mut st = state.status.lock().expect("status lock");
            st.last_applied = Some(crate::gateway::proxy::AppliedStatus { commit: tip_hex.clone(), time: Some(now.clone()) });
            st.last_attempted = Some(Attempt { commit: tip_hex, outcome: "applied", errors: Vec::new(), time: now });
            if accepted_rewrite.is_some() {
                st.history_rewritten = None;
            }
        }
        Outcome::Rejected { tip, records } => {
            let errors = records.last().map(|r| r.errors.clone()).unwrap_or_default();
            let tip_hex = tip.to_string();
            warn!(commit = %&tip_hex[..12], errors = errors.len(), "rejected; the last good snapshot keeps serving");
            for e in &errors {
                warn!("  {e}");
            }
            let now2 = now.clone();
            if let Err(e) = store.write(move |c| insert_records(c, &records, &now2)).await {
                error!(error = %e, "cannot record the rejected change");
            }
            mem.rejected = Some(tip);
            set_attempt(state, &tip_hex, "rejected", errors, &now);
        }
        Outcome::Rewritten { old, new, vanished } => {
            let (o, n) = (old.to_string(), new.to_string());
            warn!(old = %&o[..12], new = %&n[..12], vanished = vanished.len(), "history rewritten: refused until accepted (gatehouse accept-rewrite)");
            let (o2, n2, v2, now2) = (o.clone(), n.clone(), vanished.clone(), now.clone());
            if let Err(e) = store
                .write(move |c| {
                    c.exec(
                        "INSERT INTO rewrites (old_tip, new_tip, vanished, detected_at) VALUES (?1, ?2, ?3, ?4)",
                        params![&o2, &n2, &*serde_json::to_string(&v2).unwrap_or_default(), &now2],
                    )
                })
                .await
            {
                error!(error = %e, "cannot record the history rewrite");
            }
            mem.refused = Some(new);
            let mut st = state.status.lock().expect("status lock");
            st.history_rewritten = Some(RewriteStatus { old_tip: o, new_tip: n.clone(), vanished, detected_at: now.clone() });
            st.last_attempted = Some(Attempt { commit: n, outcome: "rewrite_refused", errors: vec!["the new tip does not descend from the applied commit".into()], time: now });
        }
        Outcome::Failed(e) => {
            warn!(error = %e, "reconcile failed; will retry");
            set_attempt(state, "", "error", vec![e], &now);
        }
    }
    state.metrics.reconcile(label, started.elapsed());
}

fn set_attempt(state: &State, commit: &str, outcome: &'static str, errors: Vec<String>, now: &str) {
    state.status.lock().expect("status lock").last_attempted =
        Some(Attempt { commit: commit.to_string(), outcome, errors, time: now.to_string() });
}

/// Inserts change records, once per commit: a commit that already has one keeps it (on a shared
/// database, the first replica to record a commit writes its record; the unique index on
/// PostgreSQL settles two that race).
fn insert_records(c: &Conn, records: &[ChangeRecord], now: &str) -> sql::Result<()> {
    for r in records {
        let i = &r.info;
        if c.query_opt("SELECT 1 FROM changes WHERE commit_id = ?1", params![&i.commit], |_| Ok(()))?.is_some() {
            continue;
        }
        c.exec(
            "INSERT INTO changes (commit_id, parents, author, author_time, committer, commit_time, message, pull_request,
                                  signed, files, access_diff, status, errors, applied_at, recorded_at, trust)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
             ON CONFLICT DO NOTHING",
            params![
                &i.commit,
                &*text(&i.parents),
                &i.author,
                &i.author_time,
                &i.committer,
                &i.commit_time,
                &i.message,
                i.pull_request.map(|n| n as i64),
                &*text(&r.signature.signed),
                &*text(&i.files),
                &*text(&r.access_diff),
                r.status,
                &*text(&r.errors),
                (r.status == "applied").then_some(now),
                now,
                &*r.signature.trust_json().to_string(),
            ],
        )?;
    }
    Ok(())
}

/// A JSON column of a change record.
fn text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn open(source: &Source) -> Result<PolicyRepo> {
    match source {
        Source::Local { path } => PolicyRepo::discover(path),
        Source::Remote { clone, .. } => PolicyRepo::open_top(clone),
    }
}

/// The blocking part: fetch, resolve, decide, build. Never touches the active snapshot.
fn step(
    settings: &Settings,
    applied: Option<Oid>,
    rejected: Option<Oid>,
    refused: Option<Oid>,
    store: &Store,
    current: Option<&Snapshot>,
) -> Outcome {
    let tip = match &settings.source {
        Source::Remote { url, clone } => match fetch(url, clone, settings.branch.as_deref()) {
            Ok((tip, _)) => tip,
            Err(e) => return Outcome::Failed(format!("{e:#}")),
        },
        Source::Local { .. } => {
            let rev = settings.branch.as_deref().unwrap_or("HEAD");
            match open(&settings.source).and_then(|pr| pr.resolve(rev)) {
                Ok(t) => t,
                Err(e) => return Outcome::Failed(format!("{e:#}")),
            }
        }
    };
    if Some(tip) == applied || Some(tip) == rejected {
        return Outcome::Unchanged;
    }
    let pr = match open(&settings.source) {
        Ok(pr) => pr,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    let mut accepted_rewrite = None;
    if let Some(old) = applied {
        match pr.descends(tip, old) {
            Ok(true) => {}
            Ok(false) => {
                let acceptance = if settings.accept_rewrite {
                    Some("accepted by serve --accept-rewrite".to_string())
                } else {
                    accepted(store, old, tip)
                };
                match acceptance {
                    Some(reason) => {
                        info!(old = %old, new = %tip, reason, "history rewrite accepted");
                        record_acceptance(store, old, tip, &reason);
                        accepted_rewrite = Some(reason);
                    }
                    None if Some(tip) == refused => return Outcome::Unchanged,
                    None => {
                        let vanished = pr.range(Some(tip), old).map(|v| v.iter().map(Oid::to_string).collect()).unwrap_or_default();
                        return Outcome::Rewritten { old, new: tip, vanished };
                    }
                }
            }
            Err(e) => return Outcome::Failed(format!("{e:#}")),
        }
    }
    // The trust list in force: the last applied commit's (also when it could not be served
    // again after a restart), else nothing: the very first commit.
    let trust_base = applied.or_else(|| last_applied(store).and_then(|c| Oid::from_str(&c).ok()));
    let mut events = Vec::new();
    let mut first_refused = None;
    let mut chain = match trust_base {
        Some(b) => {
            if settings.trust_initial_signers {
                info!("--trust-initial-signers is ignored: a commit has been applied, and its trust list is in force");
            }
            Chain::new(&pr, Some(b))
        }
        None if settings.trust_initial_signers => {
            let mut chain = Chain::initial(&pr, tip);
            if let Some(list) = chain.list_at(tip).filter(|l| !l.is_empty()) {
                warn!(commit = %tip, keys = list.describe().len(), "trusting the first commit's own signers (--trust-initial-signers)");
                events.push((
                    "initial_signers_trusted",
                    json!({ "commit": tip.to_string(), "by": "gatehouse serve --trust-initial-signers", "require_signed": list.require_signed, "keys": list.describe() }),
                ));
            }
            chain
        }
        None => {
            let mut chain = Chain::new(&pr, None);
            if chain.list_at(tip).is_some_and(|l| l.require_signed) {
                first_refused = Some(format!(
                    "commit {}: no commit has been applied yet and gatehouse.yaml requires signed commits: a trust list never comes from the commit it would approve, so the first one is trusted only when the daemon is started once with --trust-initial-signers",
                    &tip.to_string()[..12]
                ));
            }
            chain
        }
    };
    // Every commit since the trusted one is verified; with none yet, only the tip is recorded
    // (not the whole history).
    let commits = match applied.or(trust_base) {
        Some(a) => pr.range(Some(a), tip).unwrap_or_else(|_| vec![tip]),
        None => vec![tip],
    };
    // The last applied commit again (it could not be served after a restart, say for a missing
    // secret): it was authorised when it was applied.
    let reapply = Some(tip) == trust_base;
    let commits = if commits.is_empty() { vec![tip] } else { commits };
    let mut prev: Option<BTreeSet<Cell>> = current.map(access::matrix);
    let mut records = Vec::with_capacity(commits.len());
    let mut tip_active = None;
    let mut unauthorised: Vec<String> = Vec::new();
    let diff_from = commits.len().saturating_sub(MAX_DIFFED);
    for (n, &id) in commits.iter().enumerate() {
        let info = match pr.info(id) {
            Ok(i) => i,
            Err(e) => return Outcome::Failed(format!("reading commit {id}: {e:#}")),
        };
        let is_tip = id == tip;
        let signature = chain.check(id, &info.files);
        let mut errors = Vec::new();
        let mut own_refusal = if reapply { None } else { signature.rejection() };
        if is_tip && own_refusal.is_none() {
            own_refusal = first_refused.take();
        }
        if is_tip {
            errors.extend(unauthorised.iter().map(|e| format!("not applied: an earlier commit is not an authorised change: {e}")));
        }
        if let Some(e) = &own_refusal {
            errors.push(e.clone());
            unauthorised.push(e.clone());
        }
        let mut access_diff = None;
        if is_tip || n >= diff_from {
            match build(&pr, id) {
                Ok(snapshot) => {
                    let m = access::matrix(&snapshot);
                    access_diff = prev.as_ref().map(|p| access::diff(p, &m));
                    prev = Some(m);
                    if is_tip && unauthorised.is_empty() {
                        match bind(&snapshot, &settings.secrets) {
                            Ok(secrets) => tip_active = Some(Active { snapshot: Arc::new(snapshot), secrets: Arc::new(secrets) }),
                            Err(e) => errors.extend(e),
                        }
                    }
                }
                Err(e) => errors.extend(e),
            }
        }
        let status = if own_refusal.is_some() {
            "rejected"
        } else if !is_tip {
            "superseded"
        } else if errors.is_empty() && tip_active.is_some() {
            "applied"
        } else {
            "rejected"
        };
        records.push(ChangeRecord { info, signature, access_diff, status, errors });
    }
    match tip_active {
        Some(active) if unauthorised.is_empty() => Outcome::Applied { active, tip, records, accepted_rewrite, events },
        _ => Outcome::Rejected { tip, records },
    }
}

/// Compiles the policy repository at commit `id`; Err holds every error as `file:line:col: …`.
fn build(pr: &PolicyRepo, id: Oid) -> Result<Snapshot, Vec<String>> {
    let entries = pr.files_at(id).map_err(|e| vec![format!("{e:#}")])?;
    let files = Files { commit: Some(id.to_string()), entries };
    repo::compile(&files).map(|c| c.snapshot).map_err(|d| d.errors().map(|e| e.to_string()).collect())
}

/// An operator's acceptance of the rewrite from `old` to `new` (`gatehouse accept-rewrite`).
fn accepted(store: &Store, old: Oid, new: Oid) -> Option<String> {
    let reader = store.read().ok()?;
    reader
        .conn()
        .query_opt(
            "SELECT reason FROM rewrites WHERE old_tip = ?1 AND new_tip = ?2 AND accepted_at IS NOT NULL ORDER BY id DESC LIMIT 1",
            params![&*old.to_string(), &*new.to_string()],
            |r| r.opt_string(0),
        )
        .ok()
        .flatten()
        .map(|r| r.unwrap_or_default())
}

fn record_acceptance(store: &Store, old: Oid, new: Oid, reason: &str) {
    let (o, n, reason, now) = (old.to_string(), new.to_string(), reason.to_string(), now_rfc3339_ms());
    let _ = store.write_blocking(move |c| {
        let updated = c.exec(
            "UPDATE rewrites SET accepted_at = coalesce(accepted_at, ?3), accepted_by = coalesce(accepted_by, 'gatehouse serve'), reason = coalesce(reason, ?4)
             WHERE old_tip = ?1 AND new_tip = ?2",
            params![&o, &n, &now, &reason],
        )?;
        if updated == 0 {
            c.exec(
                "INSERT INTO rewrites (old_tip, new_tip, vanished, detected_at, accepted_at, accepted_by, reason) VALUES (?1, ?2, '[]', ?3, ?3, 'gatehouse serve', ?4)",
                params![&o, &n, &now, &reason],
            )?;
        }
        Ok::<(), sql::Error>(())
    });
}

/// `gatehouse accept-rewrite`: accepts the newest refused rewrite, recording who and why.
pub fn accept_rewrite(at: &crate::record::store::Location, by: &str, reason: &str) -> Result<(String, String)> {
    let store = Store::open_at(at)?;
    let (by, reason) = (by.to_string(), reason.to_string());
    let accepted = store.write_blocking(move |c| {
        let row = c.query_opt("SELECT id, old_tip, new_tip FROM rewrites WHERE accepted_at IS NULL ORDER BY id DESC LIMIT 1", &[], |r| {
            Ok((r.i64(0)?, r.string(1)?, r.string(2)?))
        })?;
        let Some((id, old, new)) = row else { return Ok(None) };
        c.exec(
            "UPDATE rewrites SET accepted_at = ?2, accepted_by = ?3, reason = ?4 WHERE id = ?1",
            params![id, &*now_rfc3339_ms(), &by, &reason],
        )?;
        Ok::<_, sql::Error>(Some((old, new)))
    });
    store.close_blocking();
    accepted?.context("no refused history rewrite is waiting for acceptance")
}

/// Watches the git directory of a local repository; every change of a ref sends a trigger.
pub fn watch(path: &Path, triggers: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let git_dir = crate::gitops::git::git_dir(path)?;
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let relevant = ev.paths.iter().any(|p| {
                let s = p.to_string_lossy();
                s.contains("/refs/") || s.ends_with("packed-refs") || s.ends_with("HEAD")
            });
            if relevant {
                let _ = triggers.try_send(());
            }
        }
    })?;
    watcher.watch(&git_dir, RecursiveMode::NonRecursive)?;
    let refs = git_dir.join("refs");
    if refs.exists() {
        watcher.watch(&refs, RecursiveMode::Recursive)?;
    }
    Ok(watcher)
}
