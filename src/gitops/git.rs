//! git2: discover a repository, resolve revisions, walk history, describe commits, and read a
//! subtree's files at a commit without checking out.
//!
//! Knows nothing of policy semantics: it hands back paths, bytes and commit facts. Blocking:
//! callers on an async runtime must run it on a blocking thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use git2::{ObjectType, Oid, Repository, Sort, TreeWalkMode, TreeWalkResult};

use crate::repo::{Entry, MAX_FILE_BYTES, MAX_FILES};
use crate::units::rfc3339;

/// A policy repository inside a git repository: the repository and the subtree's path in it.
pub struct PolicyRepo {
    pub repo: Repository,
    /// `/`-separated path of the policy repository inside the git tree ("" for the top).
    pub prefix: String,
}

/// The facts of one commit that a change record keeps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitInfo {
    pub commit: String,
    pub parents: Vec<String>,
    pub author: String,
    pub author_time: String,
    pub committer: String,
    pub commit_time: String,
    pub message: String,
    /// Parsed from the message: `Merge pull request #12 …` or `… (#12)`.
    pub pull_request: Option<u64>,
    /// A signature header (gpgsig) is present. Whether it verifies is `signature::verify`'s
    /// business (against a trust list this module knows nothing of).
    pub signed: bool,
    /// Files of the policy repository the commit changed relative to its first parent.
    pub files: Vec<String>,
}

// === impl PolicyRepo ===

impl PolicyRepo {
    /// Discovers the git repository enclosing `path` (a directory, or a bare repository).
    pub fn discover(path: &Path) -> Result<PolicyRepo> {
        let repo = Repository::discover(path).with_context(|| format!("{} is not inside a git repository", path.display()))?;
        let prefix = subtree_prefix(&repo, path)?;
        Ok(PolicyRepo { repo, prefix })
    }

    /// Opens a repository whose policy files are at its top (a clone made by the daemon).
    pub fn open_top(path: &Path) -> Result<PolicyRepo> {
        let repo = Repository::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(PolicyRepo { repo, prefix: String::new() })
    }

    /// The commit a revision names.
    pub fn resolve(&self, rev: &str) -> Result<Oid> {
        let object = self.repo.revparse_single(rev).with_context(|| format!("unknown revision {rev:?}"))?;
        Ok(object.peel_to_commit().with_context(|| format!("revision {rev:?} is not a commit"))?.id())
    }

    /// Whether `tip` is `base` or descends from it.
    pub fn descends(&self, tip: Oid, base: Oid) -> Result<bool> {
        Ok(tip == base || self.repo.graph_descendant_of(tip, base)?)
    }

    /// Commits reachable from `tip` but not from `base`, oldest first (all of `tip`'s history
    /// when `base` is None).
    pub fn range(&self, base: Option<Oid>, tip: Oid) -> Result<Vec<Oid>> {
        let mut walk = self.repo.revwalk()?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
        walk.push(tip)?;
        if let Some(b) = base {
            walk.hide(b)?;
        }
        walk.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    /// The facts of commit `id`.
    pub fn info(&self, id: Oid) -> Result<CommitInfo> {
        let c = self.repo.find_commit(id)?;
        let sig = |s: git2::Signature| format!("{} <{}>", s.name().unwrap_or("?"), s.email().unwrap_or("?"));
        let message = c.message().unwrap_or("").to_string();
        let files = self.changed_files(&c)?;
        Ok(CommitInfo {
            commit: id.to_string(),
            parents: c.parent_ids().map(|p| p.to_string()).collect(),
            author: sig(c.author()),
            author_time: rfc3339(c.author().when().seconds(), c.author().when().offset_minutes()),
            committer: sig(c.committer()),
            commit_time: rfc3339(c.time().seconds(), c.time().offset_minutes()),
            pull_request: pull_request(&message),
            message,
            signed: c.header_field_bytes("gpgsig").is_ok(),
            files,
        })
    }

    fn changed_files(&self, c: &git2::Commit) -> Result<Vec<String>> {
        let new = c.tree()?;
        let old = match c.parents().next() {
            Some(p) => Some(p.tree()?),
            None => None,
        };
        let diff = self.repo.diff_tree_to_tree(old.as_ref(), Some(&new), None)?;
        let mut out = Vec::new();
        for d in diff.deltas() {
            for f in [d.old_file(), d.new_file()] {
                let Some(p) = f.path().and_then(Path::to_str) else { continue };
                let rel = if self.prefix.is_empty() {
                    Some(p)
                } else {
                    p.strip_prefix(self.prefix.as_str()).and_then(|r| r.strip_prefix('/'))
                };
                if let Some(rel) = rel
                    && !out.iter().any(|x: &String| x == rel) {
                        out.push(rel.to_string());
                    }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The files of the policy repository at commit `id`.
    pub fn files_at(&self, id: Oid) -> Result<BTreeMap<String, Entry>> {
        let commit = self.repo.find_commit(id)?;
        let root = commit.tree()?;
        let tree = if self.prefix.is_empty() {
            root
        } else {
            let entry = root.get_path(Path::new(&self.prefix)).with_context(|| format!("{} does not exist at commit {id}", self.prefix))?;
            entry.to_object(&self.repo)?.into_tree().map_err(|_| anyhow!("{} is not a directory at commit {id}", self.prefix))?
        };
        let mut out = BTreeMap::new();
        let mut failure = None;
        tree.walk(TreeWalkMode::PreOrder, |dir, e| {
            let Ok(name) = e.name() else { return TreeWalkResult::Skip }; // not UTF-8: never one of ours
            let rel = format!("{dir}{name}");
            if e.kind() != Some(ObjectType::Blob) {
                return TreeWalkResult::Ok; // trees are walked; submodules are ignored
            }
            let entry = if e.filemode() == 0o120000 {
                Entry::Symlink
            } else {
                match self.repo.find_blob(e.id()) {
                    Ok(b) if b.size() as u64 > MAX_FILE_BYTES => Entry::TooLarge(b.size() as u64),
                    Ok(b) => Entry::Blob(b.content().to_vec()),
                    Err(err) => {
                        failure = Some(anyhow!("reading {rel}: {err}"));
                        return TreeWalkResult::Abort;
                    }
                }
            };
            out.insert(rel, entry);
            if out.len() > MAX_FILES {
                failure = Some(anyhow!("more than {MAX_FILES} files: point --repo at the policy repository itself"));
                return TreeWalkResult::Abort;
            }
            TreeWalkResult::Ok
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(out)
    }
}

/// The files under `path` at revision `rev`: (full commit id, entries).
pub fn read_rev(path: &Path, rev: &str) -> Result<(String, BTreeMap<String, Entry>)> {
    let pr = PolicyRepo::discover(path)?;
    let id = pr.resolve(rev)?;
    Ok((id.to_string(), pr.files_at(id)?))
}

/// `Merge pull request #12 from …` or a first line ending in `(#12)`.
pub fn pull_request(message: &str) -> Option<u64> {
    let first = message.lines().next().unwrap_or("");
    let digits = |s: &str| -> Option<u64> {
        let d: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
        d.parse().ok()
    };
    if let Some(rest) = first.strip_prefix("Merge pull request #") {
        return digits(rest);
    }
    let trimmed = first.trim_end();
    if trimmed.ends_with(')')
        && let Some(i) = trimmed.rfind("(#") {
            return digits(&trimmed[i + 2..]);
        }
    None
}

/// Clones `url` (bare) into `dir` if needed, then fetches `branch` (or the remote's default
/// branch); returns the fetched tip and the branch name.
pub fn fetch(url: &str, dir: &Path, branch: Option<&str>) -> Result<(Oid, String)> {
    let repo = match Repository::open_bare(dir) {
        Ok(r) => r,
        Err(_) => {
            std::fs::create_dir_all(dir)?;
            let r = Repository::init_bare(dir)?;
            r.remote("origin", url)?;
            r
        }
    };
    let mut remote = repo.find_remote("origin")?;
    if remote.url().ok() != Some(url) {
        bail!("{} is a clone of {:?}, not {url:?}: use another --data-dir", dir.display(), remote.url().unwrap_or(""));
    }
    remote.connect(git2::Direction::Fetch).with_context(|| format!("connecting to {url}"))?;
    let branch = match branch {
        Some(b) => b.to_string(),
        None => {
            let head = remote.default_branch().map_err(|e| anyhow!("{url} has no default branch ({e}): pass --branch"))?;
            let head = head.as_str().unwrap_or("refs/heads/main");
            head.strip_prefix("refs/heads/").unwrap_or(head).to_string()
        }
    };
    remote.disconnect()?;
    let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
    remote.fetch(&[refspec.as_str()], None, None).with_context(|| format!("fetching {branch} from {url}"))?;
    let tip = repo.refname_to_id(&format!("refs/remotes/origin/{branch}")).with_context(|| format!("{url} has no branch {branch:?}"))?;
    Ok((tip, branch))
}

/// The path of `path` relative to the repository's work tree, with `/` separators ("" for the
/// top). A bare repository has no work tree: only its top is accepted.
fn subtree_prefix(repo: &Repository, path: &Path) -> Result<String> {
    let Some(workdir) = repo.workdir() else { return Ok(String::new()) };
    let abs = path.canonicalize().with_context(|| format!("{}", path.display()))?;
    let top = workdir.canonicalize()?;
    let rel = abs.strip_prefix(&top).map_err(|_| anyhow!("{} is outside {}", abs.display(), top.display()))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c.as_os_str().to_str() {
            Some(s) => parts.push(s.to_string()),
            None => bail!("{} is not a UTF-8 path", rel.display()),
        }
    }
    Ok(parts.join("/"))
}

/// The git directory of the repository enclosing `path` (what the watcher watches).
pub fn git_dir(path: &Path) -> Result<PathBuf> {
    Ok(Repository::discover(path)?.path().to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::pull_request;

    #[test]
    fn pull_request_numbers() {
        assert_eq!(pull_request("Merge pull request #12 from org/branch\n\nbody"), Some(12));
        assert_eq!(pull_request("Grant alice the triage tools (#345)"), Some(345));
        assert_eq!(pull_request("Fix #12 in the middle"), None);
        assert_eq!(pull_request(""), None);
    }
}
