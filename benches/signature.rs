//! What verifying a commit's signature costs the reconciler, per commit, against what it does
//! with every commit anyway.
//!
//! A temporary git repository holds the example policy repository with a trust list
//! (`changes: { require_signed, allowed_signers, openpgp_keys }`) and two commits made and signed
//! by `git` itself: one with an ed25519 SSH key (`ssh-keygen`), one with a GnuPG key (GnuPG's
//! default algorithm, in a temporary GNUPGHOME).
//!
//! Baseline, measured in the same run: reading that commit's files with git2
//! (`PolicyRepo::files_at`) and compiling them (`repo::compile`), which the reconciler does for
//! every commit it applies. Then, per commit: `signature::verify` (extract the signed payload and
//! the signature from the commit object, find the key, verify) for the SSH and the OpenPGP
//! commit, a whole `Chain::check` (verify plus carrying the parent's trust list over, as the
//! reconciler runs it), and loading a trust list from a commit (`signature::trust_list_at`:
//! done only for a commit that changes gatehouse.yaml or the key files). `scripts/bench-report
//! signature` prints each median as a ratio to the baseline.
//!
//! Needs git, ssh-keygen and gpg; without one it prints one line and measures nothing.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::gitops::git::PolicyRepo;
use gatehouse::gitops::signature::{self, Chain};
use gatehouse::repo::{self, Files};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git(dir: &Path, extra: &[&str], gnupg: Option<&Path>, args: &[&str]) -> String {
    let mut c = Command::new("git");
    c.current_dir(dir).env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_CONFIG_GLOBAL", "/dev/null");
    c.args(["-c", "user.name=Bench", "-c", "user.email=bench@example.com"]);
    for e in extra {
        c.args(["-c", e]);
    }
    if let Some(h) = gnupg {
        c.env("GNUPGHOME", h);
    }
    run(c.args(args))
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    for tool in ["git", "ssh-keygen", "gpg"] {
        if Command::new(tool).arg("--version").output().is_err() && Command::new(tool).arg("-?").output().is_err() {
            println!("skipped: {tool} is not installed");
            return;
        }
    }
    let keys = tempfile::tempdir().unwrap();
    let ssh_key = keys.path().join("id");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"]).arg(&ssh_key));
    let ssh_pub: String = std::fs::read_to_string(keys.path().join("id.pub")).unwrap().split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let gnupg = tempfile::Builder::new().prefix("gh-bench").tempdir().unwrap();
    let gpg = |args: &[&str]| run(Command::new("gpg").env("GNUPGHOME", gnupg.path()).args(["--batch", "--quiet"]).args(args));
    gpg(&["--passphrase", "", "--quick-gen-key", "Bench <bench@example.com>", "default", "default", "never"]);
    let fpr = gpg(&["--with-colons", "--list-keys"]).lines().find(|l| l.starts_with("fpr:")).unwrap().split(':').nth(9).unwrap().to_string();
    let armored = gpg(&["--armor", "--export", &fpr]);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &[], None, &["init", "-q", "-b", "main"]);
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy-repo"), d);
    std::fs::write(d.join("gatehouse.yaml"), "version: \"1\"\nchanges:\n  require_signed: true\n  allowed_signers: signers/allowed_signers\n  openpgp_keys: signers/openpgp/\n").unwrap();
    std::fs::create_dir_all(d.join("signers/openpgp")).unwrap();
    std::fs::write(d.join("signers/allowed_signers"), format!("bench@example.com namespaces=\"git\" {ssh_pub}\n")).unwrap();
    std::fs::write(d.join("signers/openpgp/bench.asc"), &armored).unwrap();
    let ssh = [ "gpg.format=ssh".to_string(), format!("user.signingkey={}", ssh_key.display())];
    let ssh: Vec<&str> = ssh.iter().map(String::as_str).collect();
    git(d, &[], None, &["add", "-A"]);
    git(d, &ssh, None, &["commit", "-q", "-S", "-m", "trust list"]);
    std::fs::write(d.join("README.md"), "ssh\n").unwrap();
    git(d, &[], None, &["add", "-A"]);
    git(d, &ssh, None, &["commit", "-q", "-S", "-m", "signed with ssh"]);
    let ssh_commit = git(d, &[], None, &["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(d.join("README.md"), "openpgp\n").unwrap();
    git(d, &[], None, &["add", "-A"]);
    let pgp = ["gpg.format=openpgp".to_string(), "gpg.program=gpg".to_string(), format!("user.signingkey={fpr}")];
    let pgp: Vec<&str> = pgp.iter().map(String::as_str).collect();
    git(d, &pgp, Some(gnupg.path()), &["commit", "-q", "-S", "-m", "signed with openpgp"]);
    let pgp_commit = git(d, &[], None, &["rev-parse", "HEAD"]).trim().to_string();

    let pr = PolicyRepo::discover(d).unwrap();
    let (ssh_id, pgp_id) = (pr.resolve(&ssh_commit).unwrap(), pr.resolve(&pgp_commit).unwrap());
    let base = pr.resolve(&format!("{ssh_commit}^")).unwrap();
    let trust = signature::trust_list_at(&pr, base).unwrap();
    for id in [ssh_id, pgp_id] {
        let s = signature::verify(&pr.repo, id, Some(&trust));
        assert!(s.verified, "{s:?}");
    }

    let mut g = c.benchmark_group("signature");
    g.sample_size(30);
    g.bench_function("baseline/read_compile", |b| {
        b.iter(|| {
            let files = Files { commit: Some(ssh_commit.clone()), entries: pr.files_at(black_box(ssh_id)).unwrap() };
            black_box(repo::compile(&files).unwrap().snapshot.digest)
        })
    });
    g.bench_function("verify/ssh_ed25519", |b| b.iter(|| black_box(signature::verify(&pr.repo, black_box(ssh_id), Some(&trust)).verified)));
    g.bench_function("verify/openpgp", |b| b.iter(|| black_box(signature::verify(&pr.repo, black_box(pgp_id), Some(&trust)).verified)));
    let files = pr.info(ssh_id).unwrap().files;
    g.bench_function("chain/ssh_ed25519", |b| {
        // The base's trust list is loaded once per walk, not per commit: load it outside.
        let mut chain = Chain::new(&pr, Some(base));
        b.iter(|| black_box(chain.check(black_box(ssh_id), &files).accepted()))
    });
    g.bench_function("trust_list/load", |b| b.iter(|| black_box(signature::trust_list_at(&pr, black_box(base)).unwrap().ssh.len())));
    g.finish();
    let _ = Command::new("gpgconf").args(["--kill", "gpg-agent"]).env("GNUPGHOME", gnupg.path()).output();
}

criterion_group!(benches, bench);
criterion_main!(benches);
