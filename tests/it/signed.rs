//! Signed changes with real signatures made by git itself: SSH keys from `ssh-keygen`, OpenPGP
//! keys from GnuPG in a temporary GNUPGHOME. The daemon applies a commit only when it (and every
//! commit before it since the last applied one) is signed by a key the trusted history lists.
//!
//! Needs `git`, `ssh-keygen` and `gpg`; without one the test prints one line and passes, unless
//! GATEHOUSE_REQUIRE_SERVICES is set.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::reconcile::{Live, live_with};
use crate::support::gatehouse;

/// Whether `tools` are installed; prints why not (or fails under GATEHOUSE_REQUIRE_SERVICES).
pub fn tools(tools: &[&str]) -> bool {
    for t in tools {
        let found = Command::new(t).arg("--version").output().is_ok() || Command::new(t).arg("-?").output().is_ok();
        if !found {
            if std::env::var_os("GATEHOUSE_REQUIRE_SERVICES").is_some() {
                panic!("{t} is not installed and GATEHOUSE_REQUIRE_SERVICES is set");
            }
            println!("skipped: {t} is not installed");
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ed25519 key made by `ssh-keygen -t ed25519 -N ''`.
pub struct SshKey {
    _dir: tempfile::TempDir,
    pub private: PathBuf,
    /// `ssh-ed25519 AAAA…` (type and key, no comment).
    pub public: String,
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

pub fn ssh_key(name: &str) -> SshKey {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("key");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&private));
    let public = std::fs::read_to_string(dir.path().join("key.pub")).unwrap();
    let public = public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let listed = run(Command::new("ssh-keygen").arg("-lf").arg(dir.path().join("key.pub")));
    let fingerprint = listed.split_whitespace().nth(1).unwrap().to_string();
    SshKey { _dir: dir, private, public, fingerprint }
}

/// A GnuPG key (no passphrase) in a GNUPGHOME of its own.
pub struct GpgKey {
    pub home: tempfile::TempDir,
    pub fingerprint: String,
    pub armored: String,
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").args(["--kill", "gpg-agent"]).env("GNUPGHOME", self.home.path()).output();
    }
}

pub fn gpg_key(uid: &str) -> GpgKey {
    let home = tempfile::Builder::new().prefix("gh-gpg").tempdir().unwrap();
    let gpg = || {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", home.path()).args(["--batch", "--quiet"]);
        c
    };
    run(gpg().args(["--passphrase", "", "--quick-gen-key", uid, "default", "default", "never"]));
    let listing = run(gpg().args(["--with-colons", "--list-keys", uid]));
    let fingerprint = listing.lines().find(|l| l.starts_with("fpr:")).unwrap().split(':').nth(9).unwrap().to_string();
    let armored = run(gpg().args(["--armor", "--export", &fingerprint]));
    GpgKey { home, fingerprint, armored }
}

/// How a commit is signed.
pub enum Sign<'a> {
    No,
    Ssh(&'a SshKey),
    Gpg(&'a GpgKey),
}

/// A repository committed to by the `git` command line (so that git itself signs).
pub struct Git {
    pub dir: tempfile::TempDir,
}

impl Git {
    pub fn new() -> Git {
        let g = Git { dir: tempfile::tempdir().unwrap() };
        g.git(&["init", "-q", "-b", "main"], &Sign::No);
        g
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str], sign: &Sign) -> String {
        let mut c = Command::new("git");
        c.current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["-c", "user.name=Test Author", "-c", "user.email=author@example.com", "-c", "commit.gpgsign=false"]);
        match sign {
            Sign::No => {}
            Sign::Ssh(k) => {
                c.args(["-c", "gpg.format=ssh", "-c"]).arg(format!("user.signingkey={}", k.private.display()));
            }
            Sign::Gpg(k) => {
                c.env("GNUPGHOME", k.home.path()).args(["-c", "gpg.format=openpgp", "-c", "gpg.program=gpg", "-c"]).arg(format!("user.signingkey={}", k.fingerprint));
            }
        }
        run(c.args(args))
    }

    /// Commits `files` on top of `parent` (None: the first commit), signed or not; moves no
    /// branch but HEAD (detached). Returns the commit id.
    pub fn commit(&self, parent: Option<&str>, message: &str, files: &[(&str, &str)], sign: &Sign) -> String {
        if let Some(p) = parent {
            self.git(&["checkout", "-q", "--detach", p], &Sign::No);
        }
        for (p, text) in files {
            let abs = self.path().join(p);
            std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
            std::fs::write(abs, text).unwrap();
        }
        self.git(&["add", "-A"], &Sign::No);
        let mut args = vec!["commit", "-q", "--allow-empty", "-m", message];
        if !matches!(sign, Sign::No) {
            args.push("-S");
        }
        self.git(&args, sign);
        self.git(&["rev-parse", "HEAD"], &Sign::No).trim().to_string()
    }

    /// `git merge --no-ff` of `other` into `parent`, signed (a forge's merge button).
    pub fn merge(&self, parent: &str, other: &str, message: &str, sign: &Sign) -> String {
        self.git(&["checkout", "-q", "--detach", parent], &Sign::No);
        let mut args = vec!["merge", "-q", "--no-ff", "-m", message];
        if !matches!(sign, Sign::No) {
            args.push("-S");
        }
        args.push(other);
        self.git(&args, sign);
        self.git(&["rev-parse", "HEAD"], &Sign::No).trim().to_string()
    }

    /// Points `branch` at `commit`, as a push does.
    pub fn point(&self, branch: &str, commit: &str) {
        self.git(&["update-ref", &format!("refs/heads/{branch}"), commit], &Sign::No);
    }
}

pub const SERVER: &str = "name: files\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\ntools: { read_file: { category: read }, delete_file: { category: destructive } }\n";
pub const GRANT: &str = "identity: agent@example.com\nkind: agent\nowner: o@example.com\naccess: [ { server: files, tools: [read_file] } ]\n";
const SSH_SETTINGS: &str = "version: \"1\"\nchanges:\n  require_signed: true\n  allowed_signers: signers/allowed_signers\n";
const PGP_SETTINGS: &str = "version: \"1\"\nchanges:\n  require_signed: true\n  openpgp_keys: signers/openpgp/\n";

/// The change record of `commit`: (status, signed, errors, trust).
fn record(g: &Live, commit: &str) -> (String, Value, String, Value) {
    let c = g.daemon.store.reader().unwrap();
    c.query_row("SELECT status, signed, errors, trust FROM changes WHERE commit_id = ?1", [commit], |r| {
        let signed: String = r.get(1)?;
        let trust: Option<String> = r.get(3)?;
        Ok((r.get(0)?, serde_json::from_str(&signed).unwrap(), r.get(2)?, trust.map_or(Value::Null, |t| serde_json::from_str(&t).unwrap())))
    })
    .unwrap_or_else(|e| panic!("no change record for {commit}: {e}"))
}

/// Waits for `commit` to be tried and asserts it was rejected with `why` while `serving` serves.
async fn rejected(g: &Live, commit: &str, serving: &str, why: &str) -> Value {
    let st = g.attempted(commit).await;
    assert_eq!(st["last_attempted"]["outcome"], "rejected", "{st:#}");
    let errors = st["last_attempted"]["errors"].to_string();
    assert!(errors.contains(why), "{why:?} not in {errors}");
    assert_eq!(st["active"]["commit"], serving, "the last good commit keeps serving");
    assert_eq!(st["conditions"][1]["type"], "Stalled");
    assert_eq!(st["conditions"][1]["status"], "True");
    let (status, signed, errors, _) = record(g, commit);
    assert_eq!(status, "rejected");
    assert!(errors.contains(why), "{errors}");
    signed
}

fn keys(signed: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = signed.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_signed_changes_are_applied_and_everything_else_is_rejected_and_recorded() {
    if !tools(&["git", "ssh-keygen"]) {
        return;
    }
    let (alice, mallory, bob) = (ssh_key("alice"), ssh_key("mallory"), ssh_key("bob"));
    let line = |who: &str, k: &SshKey| format!("{who} namespaces=\"git\" {} {who}'s key\n", k.public);
    let trusted = format!("# who may change the gateway\n{}", line("alice@example.com", &alice));
    let git = Git::new();
    let c0 = git.commit(
        None,
        "trust alice",
        &[("gatehouse.yaml", SSH_SETTINGS), ("signers/allowed_signers", &trusted), ("servers/files.yaml", SERVER), ("grants/agent.yaml", GRANT)],
        &Sign::Ssh(&alice),
    );
    git.point("live", &c0);
    let data = tempfile::tempdir().unwrap();
    let g = live_with(git.path(), data.path(), Some("live"), true).await;
    g.applied(&c0).await;
    // The first commit's own signers were trusted once, on the operator's word: recorded.
    let (status, signed, _, trust) = record(&g, &c0);
    assert_eq!(status, "applied");
    assert_eq!(keys(&signed), ["error", "fingerprint", "format", "present", "principal", "verified"], "the signed column's contract");
    assert_eq!(signed, serde_json::json!({ "present": true, "verified": true, "format": "ssh", "fingerprint": alice.fingerprint, "principal": "alice@example.com", "error": null }));
    assert_eq!(trust["basis"], "initial");
    let event: String = g.daemon.store.reader().unwrap().query_row("SELECT detail FROM events WHERE kind = 'initial_signers_trusted'", [], |r| r.get(0)).unwrap();
    assert!(event.contains(&c0) && event.contains(&alice.fingerprint) && event.contains("--trust-initial-signers"), "{event}");

    // Unsigned: rejected, and `gatehouse status` says so with exit 1.
    let unsigned = git.commit(Some(&c0), "unsigned", &[("README.md", "1\n")], &Sign::No);
    git.point("live", &unsigned);
    let signed = rejected(&g, &unsigned, &c0, "not signed").await;
    assert_eq!(signed, serde_json::json!({ "present": false, "verified": false, "format": null, "fingerprint": null, "principal": null, "error": "not signed" }));
    let admin = g.admin.clone();
    let st = tokio::task::spawn_blocking(move || gatehouse(&["status", "--url", &admin])).await.unwrap();
    assert_eq!(st.code, 1, "stalled: {}", st.stdout);
    assert!(st.stdout.contains("signed commits are required"), "{}", st.stdout);

    // Signed by a key nobody listed.
    let unknown = git.commit(Some(&c0), "by mallory", &[("README.md", "2\n")], &Sign::Ssh(&mallory));
    git.point("live", &unknown);
    let signed = rejected(&g, &unknown, &c0, "which is not in the trust list").await;
    assert_eq!((signed["present"].clone(), signed["verified"].clone()), (Value::Bool(true), Value::Bool(false)));
    assert_eq!(signed["fingerprint"], mallory.fingerprint.as_str(), "the key that signed is named");
    assert_eq!(signed["principal"], Value::Null);

    // A commit that lists its own key: the trust list comes from its parent, so it is not trusted.
    let self_approved = git.commit(
        Some(&c0),
        "trust me",
        &[("signers/allowed_signers", &format!("{trusted}{}", line("mallory@example.com", &mallory)))],
        &Sign::Ssh(&mallory),
    );
    git.point("live", &self_approved);
    rejected(&g, &self_approved, &c0, "which is not in the trust list").await;

    // A signed tip over an unsigned commit: both rejected.
    let step = git.commit(Some(&c0), "unsigned step", &[("README.md", "3\n")], &Sign::No);
    let tip = git.commit(Some(&step), "signed on top", &[("README.md", "4\n")], &Sign::Ssh(&alice));
    git.point("live", &tip);
    let signed = rejected(&g, &tip, &c0, "an earlier commit is not an authorised change").await;
    assert_eq!(signed["verified"], true, "the tip itself verifies");
    let (status, signed, errors, _) = record(&g, &step);
    assert_eq!((status.as_str(), signed["error"].as_str()), ("rejected", Some("not signed")), "{errors}");

    // A trusted signer adds bob; from the next commit on bob's signature is trusted.
    let rotate = git.commit(Some(&c0), "trust bob", &[("signers/allowed_signers", &format!("{trusted}{}", line("bob@example.com", &bob)))], &Sign::Ssh(&alice));
    git.point("live", &rotate);
    g.applied(&rotate).await;
    let by_bob = git.commit(Some(&rotate), "bob's change", &[("README.md", "5\n")], &Sign::Ssh(&bob));
    git.point("live", &by_bob);
    let st = g.applied(&by_bob).await;
    assert_eq!(st["conditions"][1]["status"], "False", "no longer stalled");
    let (status, signed, _, trust) = record(&g, &by_bob);
    assert_eq!(status, "applied");
    assert_eq!((signed["principal"].as_str(), signed["fingerprint"].as_str()), (Some("bob@example.com"), Some(bob.fingerprint.as_str())));
    assert_eq!((trust["basis"].as_str(), trust["from"].as_str()), (Some("last_applied"), Some(rotate.as_str())));

    // Two commits pushed at once: the second is verified against the first's trust list, which
    // removed bob: rejected.
    let drop_bob = git.commit(Some(&by_bob), "drop bob", &[("signers/allowed_signers", &trusted)], &Sign::Ssh(&alice));
    let late = git.commit(Some(&drop_bob), "bob again", &[("README.md", "6\n")], &Sign::Ssh(&bob));
    git.point("live", &late);
    rejected(&g, &late, &by_bob, "which is not in the trust list").await;
    let (_, _, _, trust) = record(&g, &late);
    assert_eq!((trust["basis"].as_str(), trust["from"].as_str()), (Some("parent"), Some(drop_bob.as_str())));
    assert_eq!(record(&g, &drop_bob).0, "superseded", "the signed removal itself was fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn openpgp_signed_changes_and_a_forge_merge() {
    if !tools(&["git", "gpg"]) {
        return;
    }
    let (alice, eve, forge) = (gpg_key("Alice <alice@example.com>"), gpg_key("Eve <eve@example.com>"), gpg_key("Forge <noreply@forge.example>"));
    let git = Git::new();
    let c0 = git.commit(
        None,
        "trust alice and the forge",
        &[
            ("gatehouse.yaml", PGP_SETTINGS),
            ("signers/openpgp/alice.asc", &alice.armored),
            ("signers/openpgp/forge.asc", &forge.armored),
            ("servers/files.yaml", SERVER),
            ("grants/agent.yaml", GRANT),
        ],
        &Sign::Gpg(&alice),
    );
    git.point("live", &c0);
    let data = tempfile::tempdir().unwrap();
    let g = live_with(git.path(), data.path(), Some("live"), true).await;
    g.applied(&c0).await;
    let (_, signed, _, _) = record(&g, &c0);
    assert_eq!(signed, serde_json::json!({ "present": true, "verified": true, "format": "openpgp", "fingerprint": alice.fingerprint, "principal": "alice@example.com", "error": null }));

    let by_eve = git.commit(Some(&c0), "by eve", &[("README.md", "1\n")], &Sign::Gpg(&eve));
    git.point("live", &by_eve);
    let signed = rejected(&g, &by_eve, &c0, "which is not in the trust list").await;
    assert_eq!(signed["format"], "openpgp");
    assert_eq!(signed["fingerprint"], eve.fingerprint.as_str());
    let unsigned = git.commit(Some(&c0), "unsigned", &[("README.md", "2\n")], &Sign::No);
    git.point("live", &unsigned);
    rejected(&g, &unsigned, &c0, "not signed").await;

    // A pull request: alice's signed commit on a branch, merged by the forge with its own key.
    let feature = git.commit(Some(&c0), "widen the agent (#7)", &[("grants/agent.yaml", &GRANT.replace("[read_file]", "[read_file, delete_file]"))], &Sign::Gpg(&alice));
    let base = git.commit(Some(&c0), "docs", &[("README.md", "3\n")], &Sign::Gpg(&alice));
    let merge = git.merge(&base, &feature, "Merge pull request #7 from team/widen", &Sign::Gpg(&forge));
    git.point("live", &merge);
    g.applied(&merge).await;
    let (status, signed, _, _) = record(&g, &merge);
    assert_eq!((status.as_str(), signed["principal"].as_str()), ("applied", Some("noreply@forge.example")));
    assert_eq!(signed["fingerprint"], forge.fingerprint.as_str());
    for c in [&feature, &base] {
        let (status, signed, _, _) = record(&g, c);
        assert_eq!((status.as_str(), signed["principal"].as_str()), ("superseded", Some("alice@example.com")));
    }

    // Alice adds eve's key: eve's next commit is applied.
    let add_eve = git.commit(Some(&merge), "trust eve", &[("signers/openpgp/eve.asc", &eve.armored)], &Sign::Gpg(&alice));
    let by_eve = git.commit(Some(&add_eve), "eve's change", &[("README.md", "4\n")], &Sign::Gpg(&eve));
    git.point("live", &by_eve);
    g.applied(&by_eve).await;
    assert_eq!(record(&g, &by_eve).1["principal"], "eve@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_commit_is_not_trusted_without_the_flag() {
    if !tools(&["git", "ssh-keygen"]) {
        return;
    }
    let alice = ssh_key("alice");
    let git = Git::new();
    let c0 = git.commit(
        None,
        "trust alice",
        &[("gatehouse.yaml", SSH_SETTINGS), ("signers/allowed_signers", &format!("alice@example.com {}\n", alice.public)), ("servers/files.yaml", SERVER), ("grants/agent.yaml", GRANT)],
        &Sign::Ssh(&alice),
    );
    git.point("live", &c0);
    let data = tempfile::tempdir().unwrap();
    let g = live_with(git.path(), data.path(), Some("live"), false).await;
    let st = g.attempted(&c0).await;
    assert_eq!(st["last_attempted"]["outcome"], "rejected");
    assert!(st["last_attempted"]["errors"].to_string().contains("--trust-initial-signers"), "{st:#}");
    assert_eq!(st["ready"], false, "nothing is served");
    assert_eq!(record(&g, &c0).0, "rejected");
}

#[test]
fn check_and_plan_report_signatures_so_ci_fails_early() {
    if !tools(&["git", "ssh-keygen"]) {
        return;
    }
    let (alice, mallory) = (ssh_key("alice"), ssh_key("mallory"));
    let git = Git::new();
    let signers = format!("alice@example.com {}\n", alice.public);
    let c0 = git.commit(None, "trust alice", &[("gatehouse.yaml", SSH_SETTINGS), ("signers/allowed_signers", &signers), ("servers/files.yaml", SERVER), ("grants/agent.yaml", GRANT)], &Sign::Ssh(&alice));
    let unsigned = git.commit(Some(&c0), "unsigned", &[("README.md", "1\n")], &Sign::No);
    let by_mallory = git.commit(Some(&c0), "by mallory", &[("README.md", "2\n")], &Sign::Ssh(&mallory));
    let good = git.commit(Some(&c0), "widen (#3)", &[("grants/agent.yaml", &GRANT.replace("[read_file]", "[read_file, delete_file]"))], &Sign::Ssh(&alice));
    let dir = git.path().to_str().unwrap();

    // check --rev: against the parent's trust list.
    let r = gatehouse(&["check", "--repo", dir, "--rev", &unsigned]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stdout.contains("not signed; signed commits are required"), "{}", r.stdout);
    let r = gatehouse(&["check", "--repo", dir, "--rev", &by_mallory]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stdout.contains(&format!("signed by {}, which is not in the trust list", mallory.fingerprint)), "{}", r.stdout);
    let r = gatehouse(&["check", "--repo", dir, "--rev", &good]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains(&format!("signature: {} verified ssh {} (alice@example.com); trust list of {}", &good[..12], alice.fingerprint, &c0[..12])), "{}", r.stdout);

    // plan: every commit of the range, as the daemon would check it with the base applied.
    let r = gatehouse(&["plan", "--repo", dir, "--base", &c0, "--head", &good, "--format", "json"]);
    assert_eq!(r.code, 1, "access changes, signatures fine: {}", r.stdout);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["signatures"][0]["signed"]["principal"], "alice@example.com");
    assert_eq!(v["signatures"][0]["accepted"], true);
    let r = gatehouse(&["plan", "--repo", dir, "--base", &c0, "--head", &unsigned, "--format", "json"]);
    assert_eq!(r.code, 2, "an unsigned commit fails the pull request: {}", r.stdout);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!((v["signatures"][0]["accepted"].as_bool(), v["signatures"][0]["signed"]["error"].as_str()), (Some(false), Some("not signed")));
    let md = gatehouse(&["plan", "--repo", dir, "--base", &c0, "--head", &unsigned]);
    assert_eq!(md.code, 2);
    assert!(md.stdout.contains("not signed by a trusted key") && md.stdout.contains("**refused**"), "{}", md.stdout);

    // A malformed allowed_signers line is an error of the repository, at its line.
    git.commit(Some(&c0), "back", &[], &Sign::No);
    std::fs::write(git.path().join("signers/allowed_signers"), format!("# signers\n{signers}bob@example.com ssh-ed25519 AAAA-not-a-key\n")).unwrap();
    let r = gatehouse(&["check", "--repo", dir]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stdout.contains("signers/allowed_signers:3:29: error: not a valid ssh-ed25519 key"), "{}", r.stdout);
}
