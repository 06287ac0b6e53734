//! The policy repository: read its files (from a working tree or from any git revision) and
//! compile them into a [`Snapshot`](crate::policy::snapshot::Snapshot).
//!
//! `read` → [`Files`] (paths and bytes, nothing parsed) → `compile::compile` →
//! [`Compiled`](compile::Compiled) or every diagnostic at once.

pub mod compile;
mod load;
mod locate;
mod policy;
mod raw;
pub mod rules;
mod scan;
pub mod signers;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

pub use compile::{Compiled, TestCase, compile, trust_list};

/// Files larger than this are not read (a policy file is never that big).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// A repository with more files than this is refused rather than read.
pub const MAX_FILES: usize = 200_000;

/// The files of a policy repository at one point in time.
#[derive(Debug, Default)]
pub struct Files {
    /// The commit they were read from; None for a working tree.
    pub commit: Option<String>,
    /// Path relative to the repository root (`/`-separated) → content.
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Debug)]
pub enum Entry {
    Blob(Vec<u8>),
    /// Symbolic links are never followed (a link could point outside the repository).
    Symlink,
    TooLarge(u64),
}

// === impl Files ===

impl Files {
    /// Files given in memory (tests, benchmarks, generated repositories), as a working tree.
    pub fn from_memory<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Files {
        let entries = files.into_iter().map(|(p, t)| (p.to_string(), Entry::Blob(t.as_bytes().to_vec()))).collect();
        Files { commit: None, entries }
    }
}

/// Reads the repository at `dir`: its working tree, or the tree of commit `rev` (never checked
/// out; `dir` may be a subdirectory of a larger repository).
pub fn read(dir: &Path, rev: Option<&str>) -> Result<Files> {
    match rev {
        Some(rev) => {
            let (commit, entries) = crate::gitops::git::read_rev(dir, rev)?;
            Ok(Files { commit: Some(commit), entries })
        }
        None => read_worktree(dir),
    }
}

/// Reads `dir` and everything below it except `.git`.
pub fn read_worktree(dir: &Path) -> Result<Files> {
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read repository {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut entries = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        for item in std::fs::read_dir(&abs).with_context(|| format!("reading {}", abs.display()))? {
            let item = item?;
            let Ok(name) = item.file_name().into_string() else { continue };
            if name == ".git" {
                continue;
            }
            let rel_path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let ft = item.file_type()?;
            if ft.is_symlink() {
                entries.insert(rel_path, Entry::Symlink);
            } else if ft.is_dir() {
                stack.push((item.path(), rel_path));
            } else if ft.is_file() {
                let len = item.metadata()?.len();
                let entry = if len > MAX_FILE_BYTES {
                    Entry::TooLarge(len)
                } else {
                    Entry::Blob(std::fs::read(item.path()).with_context(|| format!("reading {rel_path}"))?)
                };
                entries.insert(rel_path, entry);
            }
            if entries.len() > MAX_FILES {
                bail!("{} holds more than {MAX_FILES} files: point --repo at the policy repository itself", dir.display());
            }
        }
    }
    Ok(Files { commit: None, entries })
}
