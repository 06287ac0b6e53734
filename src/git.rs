//! git2: resolve a revision and read the files of a subtree of its commit, without checkout.
//!
//! Knows nothing of policy semantics: it hands back paths and bytes. Blocking: callers on an
//! async runtime must run it on a blocking thread.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use git2::{ObjectType, Repository, TreeWalkMode, TreeWalkResult};

use crate::repo::{Entry, MAX_FILE_BYTES};

/// The files under `path` (a directory inside a git work tree, or a bare repository) at `rev`.
/// Returns the full commit id and the entries keyed by path relative to `path`.
pub fn read_rev(path: &Path, rev: &str) -> Result<(String, BTreeMap<String, Entry>)> {
    let repo = Repository::discover(path).with_context(|| format!("{} is not inside a git repository", path.display()))?;
    let prefix = subtree_prefix(&repo, path)?;
    let object = repo.revparse_single(rev).with_context(|| format!("unknown revision {rev:?}"))?;
    let commit = object.peel_to_commit().with_context(|| format!("revision {rev:?} is not a commit"))?;
    let root = commit.tree()?;
    let tree = if prefix.is_empty() {
        root
    } else {
        let entry = root
            .get_path(Path::new(&prefix))
            .with_context(|| format!("{prefix} does not exist at revision {rev:?}"))?;
        entry
            .to_object(&repo)?
            .into_tree()
            .map_err(|_| anyhow!("{prefix} is not a directory at revision {rev:?}"))?
    };
    let mut out = BTreeMap::new();
    let mut failure = None;
    tree.walk(TreeWalkMode::PreOrder, |dir, e| {
        let name = match e.name() {
            Ok(n) => n,
            Err(_) => return TreeWalkResult::Skip, // not UTF-8: never one of ours
        };
        let rel = format!("{dir}{name}");
        match e.kind() {
            Some(ObjectType::Blob) => {
                let entry = if e.filemode() == 0o120000 {
                    Entry::Symlink
                } else {
                    match repo.find_blob(e.id()) {
                        Ok(b) if b.size() as u64 > MAX_FILE_BYTES => Entry::TooLarge(b.size() as u64),
                        Ok(b) => Entry::Blob(b.content().to_vec()),
                        Err(err) => {
                            failure = Some(anyhow!("reading {rel}: {err}"));
                            return TreeWalkResult::Abort;
                        }
                    }
                };
                out.insert(rel, entry);
                TreeWalkResult::Ok
            }
            _ => TreeWalkResult::Ok, // trees are walked; submodules are ignored
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok((commit.id().to_string(), out))
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
