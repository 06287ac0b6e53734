//! Commit signatures: whether a commit is an authorised change.
//!
//! git signs a commit by putting a detached signature of the commit object (without its own
//! `gpgsig` header) into the `gpgsig` header. Two formats are verified here, in process and
//! without any keyring of the host: SSH signatures (`sshsig`, namespace `git`; ed25519, ECDSA
//! and RSA keys) and OpenPGP signatures. The keys come from the repository's trust list
//! (`repo::signers`), read from a commit that is already trusted, never from the commit being
//! verified: a commit cannot approve itself.
//!
//! [`Chain`] walks the commits since the last applied one: each commit is verified against the
//! trust list of its first parent when that parent was itself accepted in this walk, and
//! against the base's (the last applied commit's) otherwise. So a trusted signer can add a key
//! and the new key signs from the next commit on, while a side branch forked from an old commit
//! can never bring back a key that was removed since.

use std::collections::HashMap;
use std::sync::Arc;

use git2::{ErrorCode, Oid, Repository};
use pgp::composed::{Deserializable, DetachedSignature};
use pgp::types::KeyDetails;
use serde::Serialize;

use crate::gitops::git::PolicyRepo;
use crate::repo::signers::{PgpSigner, TrustList, pattern_list_matches};
use crate::repo::{self, Files};

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
pub const NAMESPACE: &str = "git";

/// The signature facts of one commit, as a change record's `signed` column holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Signed {
    /// The commit carries a signature (a `gpgsig` header).
    pub present: bool,
    /// It verifies against a key of the trust list in force for this commit.
    pub verified: bool,
    /// `ssh` | `openpgp`; None when unsigned or of another format (X.509).
    pub format: Option<&'static str>,
    /// The key that made the signature: `SHA256:…` (SSH) or the OpenPGP fingerprint in
    /// upper-case hex (of the certificate's primary key once verified; of the issuer before).
    pub fingerprint: Option<String>,
    /// Who the trust list says the key belongs to (only when verified).
    pub principal: Option<String>,
    /// Why it is not verified.
    pub error: Option<String>,
}

/// Where the trust list a commit was verified against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The last applied commit (or, for `check` and `plan`, the base revision).
    LastApplied,
    /// Its first parent, itself verified (or not required to be) in the same walk.
    Parent,
    /// Its own, trusted once by `gatehouse serve --trust-initial-signers` (the very first commit).
    Initial,
    /// No trust list was in force.
    None,
}

/// One commit's check.
#[derive(Debug, Clone)]
pub struct Check {
    pub commit: Oid,
    pub signed: Signed,
    /// The trust list in force required a verified signature.
    pub required: bool,
    /// The commit whose trust list was used.
    pub trust_from: Option<Oid>,
    pub basis: Basis,
}

// === impl Check ===

impl Check {
    /// Whether the commit may be applied as far as signatures go.
    pub fn accepted(&self) -> bool {
        !self.required || self.signed.verified
    }

    /// Why it is rejected, for the change record's errors and `/status`.
    pub fn rejection(&self) -> Option<String> {
        if self.accepted() {
            return None;
        }
        let from = self.trust_from.map(|c| c.to_string()[..12].to_string()).unwrap_or_default();
        let why = self.signed.error.as_deref().unwrap_or("not verified");
        Some(format!("commit {}: {why}; signed commits are required (changes.require_signed in gatehouse.yaml of {from})", &self.commit.to_string()[..12]))
    }

    /// The `trust` column of a change record.
    pub fn trust_json(&self) -> serde_json::Value {
        serde_json::json!({ "basis": self.basis, "from": self.trust_from.map(|c| c.to_string()), "required": self.required })
    }
}

/// Verifies the signature of commit `id` against `trust` (None: no trust list in force).
pub fn verify(repo: &Repository, id: Oid, trust: Option<&TrustList>) -> Signed {
    let (signature, data) = match repo.extract_signature(&id, None) {
        Ok((s, d)) => (s, d),
        Err(e) if e.code() == ErrorCode::NotFound => return Signed { error: Some("not signed".into()), ..Signed::default() },
        Err(e) => return Signed { error: Some(format!("cannot read the commit: {}", e.message())), ..Signed::default() },
    };
    let text = String::from_utf8_lossy(&signature);
    let mut out = Signed { present: true, ..Signed::default() };
    if text.contains("-----BEGIN SSH SIGNATURE-----") {
        out.format = Some("ssh");
        let time = repo.find_commit(id).map(|c| c.time().seconds()).unwrap_or(0);
        ssh(&text, &data, time, trust, &mut out);
    } else if text.contains("-----BEGIN PGP SIGNATURE-----") {
        out.format = Some("openpgp");
        openpgp(&signature, &data, trust, &mut out);
    } else {
        out.error = Some("unsupported signature format (only SSH and OpenPGP signatures are verified)".into());
    }
    out
}

fn no_keys(trust: Option<&TrustList>, kind: &str) -> Option<String> {
    match trust {
        None => Some("no trust list is in force (gatehouse.yaml names no signers)".into()),
        Some(t) if kind == "ssh" && t.ssh.is_empty() => Some("the trust list has no SSH keys (changes.allowed_signers)".into()),
        Some(t) if kind == "openpgp" && t.openpgp.is_empty() => Some("the trust list has no OpenPGP keys (changes.openpgp_keys)".into()),
        Some(_) => None,
    }
}

fn ssh(text: &str, data: &[u8], time: i64, trust: Option<&TrustList>, out: &mut Signed) {
    let sig = match ssh_key::SshSig::from_pem(text.trim()) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("unreadable SSH signature: {e}"));
            return;
        }
    };
    let fingerprint = sig.public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string();
    out.fingerprint = Some(fingerprint.clone());
    if let Some(e) = no_keys(trust, "ssh") {
        out.error = Some(e);
        return;
    }
    let trust = trust.expect("checked");
    if sig.namespace() != NAMESPACE {
        out.error = Some(format!("signed for namespace {:?}, not {NAMESPACE:?}", sig.namespace()));
        return;
    }
    let mut why = None;
    for s in trust.ssh.iter().filter(|s| s.key.key_data() == sig.public_key()) {
        let line = format!("{}:{}", s.file, s.line);
        if s.namespaces.as_ref().is_some_and(|n| !pattern_list_matches(n, NAMESPACE)) {
            why = Some(format!("the key {fingerprint} is not allowed to sign namespace \"git\" ({line})"));
        } else if s.valid_after.is_some_and(|t| time < t) || s.valid_before.is_some_and(|t| time > t) {
            why = Some(format!("the key {fingerprint} was not valid at the commit time ({line}: valid-after/valid-before)"));
        } else {
            match s.key.verify(NAMESPACE, data, &sig) {
                Ok(()) => {
                    out.verified = true;
                    out.principal = Some(s.principals.clone());
                    return;
                }
                Err(e) => why = Some(format!("the signature by {fingerprint} does not verify: {e}")),
            }
        }
    }
    out.error = Some(why.unwrap_or_else(|| format!("signed by {fingerprint}, which is not in the trust list ({})", trust.allowed_signers.as_deref().unwrap_or("allowed_signers"))));
}

fn openpgp(armored: &[u8], data: &[u8], trust: Option<&TrustList>, out: &mut Signed) {
    let sig = match DetachedSignature::from_armor_single(armored) {
        Ok((s, _)) => s.signature,
        Err(e) => {
            out.error = Some(format!("unreadable OpenPGP signature: {e}"));
            return;
        }
    };
    let issuer_fprs: Vec<String> = sig.issuer_fingerprint().iter().map(|f| format!("{f:X}")).collect();
    let issuer_ids: Vec<String> = sig.issuer_key_id().iter().map(|k| hex::encode_upper(k.as_ref())).collect();
    out.fingerprint = issuer_fprs.first().cloned().or_else(|| issuer_ids.first().cloned());
    if let Some(e) = no_keys(trust, "openpgp") {
        out.error = Some(e);
        return;
    }
    let trust = trust.expect("checked");
    let issued_by = |fpr: String, id: String| issuer_fprs.contains(&fpr) || issuer_ids.contains(&id);
    let mut why = None;
    for cert in &trust.openpgp {
        let primary = &cert.key.primary_key;
        let mut tried = false;
        if issued_by(format!("{:X}", primary.fingerprint()), hex::encode_upper(primary.legacy_key_id().as_ref())) {
            tried = true;
            if let Some(result) = check_pgp(cert, &sig, primary, data) {
                result_into(result, cert, out, &mut why);
                if out.verified {
                    return;
                }
            }
        }
        for sub in &cert.key.public_subkeys {
            if !issued_by(format!("{:X}", sub.key.fingerprint()), hex::encode_upper(sub.key.legacy_key_id().as_ref())) {
                continue;
            }
            tried = true;
            if !sub.signatures.iter().any(|b| b.key_flags().sign()) {
                why = Some(format!("subkey {:X} of {} is not a signing key", sub.key.fingerprint(), cert.fingerprint));
                continue;
            }
            if let Some(result) = check_pgp(cert, &sig, &sub.key, data) {
                result_into(result, cert, out, &mut why);
                if out.verified {
                    return;
                }
            }
        }
        if tried && why.is_none() {
            why = Some(format!("the key {} is revoked", cert.fingerprint));
        }
    }
    let who = out.fingerprint.clone().unwrap_or_else(|| "an unnamed key".into());
    out.error = Some(why.unwrap_or_else(|| format!("signed by {who}, which is not in the trust list ({})", trust.openpgp_keys.as_deref().unwrap_or("openpgp_keys"))));
}

/// None when the certificate is revoked; the verification's result otherwise.
fn check_pgp(cert: &PgpSigner, sig: &pgp::packet::Signature, key: &impl pgp::types::VerifyingKey, data: &[u8]) -> Option<Result<(), String>> {
    if !cert.key.details.revocation_signatures.is_empty() {
        return None;
    }
    Some(sig.verify(key, data).map_err(|e| e.to_string()))
}

fn result_into(result: Result<(), String>, cert: &PgpSigner, out: &mut Signed, why: &mut Option<String>) {
    match result {
        Ok(()) => {
            out.verified = true;
            out.fingerprint = Some(cert.fingerprint.clone());
            out.principal = cert.principal.clone();
        }
        Err(e) => *why = Some(format!("the signature by {} does not verify: {e}", cert.fingerprint)),
    }
}

/// A walk over consecutive commits, each verified against a trust list that is already trusted.
pub struct Chain<'a> {
    pr: &'a PolicyRepo,
    base: Option<(Oid, Arc<TrustList>)>,
    base_basis: Basis,
    /// Commits accepted in this walk → the trust list they carry.
    accepted: HashMap<Oid, Arc<TrustList>>,
    /// Trust lists loaded by commit (the base's included).
    lists: HashMap<Oid, Option<Arc<TrustList>>>,
}

// === impl Chain ===

impl<'a> Chain<'a> {
    /// A walk from `base` (the last applied commit; None before any): its trust list is the
    /// first in force. A base whose trust list cannot be read (it was valid when applied) counts
    /// as having none.
    pub fn new(pr: &'a PolicyRepo, base: Option<Oid>) -> Chain<'a> {
        let mut c = Chain { pr, base: None, base_basis: Basis::LastApplied, accepted: HashMap::new(), lists: HashMap::new() };
        if let Some(b) = base
            && let Some(list) = c.list_at(b) {
                c.base = Some((b, list));
            }
        c
    }

    /// The very first commit, trusted through its own trust list (`serve --trust-initial-signers`).
    pub fn initial(pr: &'a PolicyRepo, tip: Oid) -> Chain<'a> {
        let mut c = Chain::new(pr, Some(tip));
        c.base_basis = Basis::Initial;
        c
    }

    /// The trust list of commit `id` (None when it has no `changes:` or cannot be read).
    pub fn list_at(&mut self, id: Oid) -> Option<Arc<TrustList>> {
        if let Some(l) = self.lists.get(&id) {
            return l.clone();
        }
        let list = trust_list_at(self.pr, id).ok().map(Arc::new);
        self.lists.insert(id, list.clone());
        list
    }

    /// Verifies commit `id` (whose files changed relative to its first parent are `files`), and
    /// remembers its trust list for its children when it is accepted.
    pub fn check(&mut self, id: Oid, files: &[String]) -> Check {
        let parent = self.pr.repo.find_commit(id).ok().and_then(|c| c.parent_id(0).ok());
        let (trust, from, basis) = match parent.and_then(|p| self.accepted.get(&p).map(|l| (l.clone(), p))) {
            Some((l, p)) => (Some(l), Some(p), Basis::Parent),
            None => match &self.base {
                Some((b, l)) => (Some(l.clone()), Some(*b), self.base_basis),
                None => (None, None, Basis::None),
            },
        };
        let signed = verify(&self.pr.repo, id, trust.as_deref());
        let required = trust.as_ref().is_some_and(|t| t.require_signed);
        let check = Check { commit: id, signed, required, trust_from: from, basis };
        if check.accepted() {
            // Its own trust list: the parent's unless the commit touches one of its files.
            let inherited = parent.and_then(|p| self.accepted.get(&p).cloned().or_else(|| self.base.as_ref().filter(|(b, _)| *b == p).map(|(_, l)| l.clone())));
            let own = match inherited {
                Some(l) if !files.iter().any(|f| l.touched_by(f)) => Some(l),
                _ => self.list_at(id),
            };
            if let Some(l) = own {
                self.accepted.insert(id, l);
            }
        }
        check
    }
}

/// Reads only what the trust list of commit `id` needs (errors as `file:line:col` lines).
pub fn trust_list_at(pr: &PolicyRepo, id: Oid) -> Result<TrustList, Vec<String>> {
    let entries = pr.files_at(id).map_err(|e| vec![format!("{e:#}")])?;
    let files = Files { commit: Some(id.to_string()), entries };
    repo::trust_list(&files).map_err(|d| d.errors().map(|e| e.to_string()).collect())
}

/// The signature checks of the commits from `base` (exclusive) to `head`, oldest first, as the
/// daemon would make them with `base` applied (`gatehouse plan`; `check --rev` passes the
/// commit's first parent as base).
pub fn check_range(pr: &PolicyRepo, base: Option<Oid>, head: Oid) -> anyhow::Result<Vec<Check>> {
    let commits = if Some(head) == base { Vec::new() } else { pr.range(base, head)? };
    let mut chain = Chain::new(pr, base);
    let mut out = Vec::with_capacity(commits.len());
    for id in commits {
        let info = pr.info(id)?;
        out.push(chain.check(id, &info.files));
    }
    Ok(out)
}

/// One line about a check, for people: `abc123def456 verified ssh SHA256:… (alice@example.com)`.
pub fn describe(c: &Check) -> String {
    let s = &c.signed;
    let short = &c.commit.to_string()[..12];
    let key = match (s.format, &s.fingerprint) {
        (Some(f), Some(fp)) => format!(" {f} {fp}"),
        (Some(f), None) => format!(" {f}"),
        _ => String::new(),
    };
    let from = c.trust_from.map(|f| format!("; trust list of {}", &f.to_string()[..12])).unwrap_or_default();
    if s.verified {
        format!("{short} verified{key} ({}){from}", s.principal.as_deref().unwrap_or("?"))
    } else {
        let need = if c.required { "required" } else { "not required" };
        format!("{short} not verified{key}: {} (signature {need}{from})", s.error.as_deref().unwrap_or("?"))
    }
}
