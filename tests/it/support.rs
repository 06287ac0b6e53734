//! Helpers that make tests read like scenarios: a git repository in a temp dir, the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A git repository in a temporary directory, committed to with git2.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    repo: git2::Repository,
}

/// What a run of the `gatehouse` binary printed and returned.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl TestRepo {
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        TestRepo { dir, repo }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes files into the working tree (relative paths) without committing.
    pub fn write(&self, files: &[(&str, &str)]) {
        for (p, text) in files {
            let abs = self.path().join(p);
            std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
            std::fs::write(abs, text).unwrap();
        }
    }

    /// Writes the files, stages everything and commits; returns the commit id.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        self.write(files);
        let mut index = self.repo.index().unwrap();
        index.add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None).unwrap();
        index.update_all(["*"].iter(), None).unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("Test Author", "author@example.com").unwrap();
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        self.repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).unwrap().to_string()
    }
}

impl TestRepo {
    /// Commits `files` on top of `parent` without moving HEAD or any branch (a commit that a
    /// force-push would bring). Returns its id.
    pub fn commit_detached(&self, parent: &str, message: &str, files: &[(&str, &str)]) -> String {
        let parent = self.repo.find_commit(git2::Oid::from_str(parent).unwrap()).unwrap();
        let mut builder = git2::build::TreeUpdateBuilder::new();
        let blobs: Vec<(String, git2::Oid)> = files.iter().map(|(p, t)| (p.to_string(), self.repo.blob(t.as_bytes()).unwrap())).collect();
        for (p, id) in &blobs {
            builder.upsert(p.as_str(), *id, git2::FileMode::Blob);
        }
        let tree_id = builder.create_updated(&self.repo, &parent.tree().unwrap()).unwrap();
        let tree = self.repo.find_tree(tree_id).unwrap();
        let sig = git2::Signature::now("Force Pusher", "force@example.com").unwrap();
        self.repo.commit(None, &sig, &sig, message, &tree, &[&parent]).unwrap().to_string()
    }

    /// Points `branch` at `commit` (creating it), like a push.
    pub fn set_branch(&self, branch: &str, commit: &str) {
        let c = self.repo.find_commit(git2::Oid::from_str(commit).unwrap()).unwrap();
        self.repo.branch(branch, &c, true).unwrap();
    }
}

/// Runs the gatehouse binary with `args`.
pub fn gatehouse(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse")).args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The crate root (for examples/ and tests/data/).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Asserts two multi-line texts are equal, printing both blocks when they are not.
pub fn assert_text(name: &str, expected: &str, actual: &str) {
    if expected.trim_end() != actual.trim_end() {
        panic!("{name}: output differs\n--- expected\n{}\n--- actual\n{}\n---", expected.trim_end(), actual.trim_end());
    }
}

/// Copies the directory tree `from` into `to` (which exists).
pub fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
