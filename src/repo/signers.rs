//! The trust list of signed changes (`gatehouse.yaml: changes:`): whose signature makes a commit
//! of the policy repository an authorised change.
//!
//! Two kinds of keys, either or both:
//! - `allowed_signers`: a file in git's (ssh-keygen's) allowed signers format, one key per line:
//!   `principals [options] keytype base64-key [comment]`, with the options `namespaces="…"`
//!   (must admit `git`), `valid-after="…"` and `valid-before="…"` (YYYYMMDD[HHMM[SS]], UTC);
//! - `openpgp_keys`: one file, or a directory whose every file holds OpenPGP public keys
//!   (ASCII-armored or binary, several per file allowed).
//!
//! This module only turns files into keys, every problem as `file:line:col` (a line of
//! `allowed_signers` that does not parse is an error of the repository, so `gatehouse check`
//! catches it before a daemon ever reads it). The signatures are verified in
//! `gitops::signature`, against the trust list of the commit's parent, never its own.

use std::collections::BTreeMap;

use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;

use super::Entry;
use crate::diag::{Diagnostics, Pos};

/// Who may sign a change, as one commit of the repository says.
#[derive(Debug, Default)]
pub struct TrustList {
    /// `changes.require_signed`: a child of this commit must carry a signature by one of these
    /// keys, or it is rejected.
    pub require_signed: bool,
    /// `changes.allowed_signers` (a file path), as written.
    pub allowed_signers: Option<String>,
    /// `changes.openpgp_keys` (a file or a directory), as written.
    pub openpgp_keys: Option<String>,
    pub ssh: Vec<SshSigner>,
    pub openpgp: Vec<PgpSigner>,
}

/// One line of `allowed_signers`.
#[derive(Debug)]
pub struct SshSigner {
    pub file: String,
    pub line: usize,
    /// The principals field as written (a comma-separated pattern list).
    pub principals: String,
    /// `namespaces="…"`: patterns the signature's namespace must match (any when None).
    pub namespaces: Option<Vec<String>>,
    /// `valid-after` / `valid-before`, unix seconds (UTC), compared with the commit time.
    pub valid_after: Option<i64>,
    pub valid_before: Option<i64>,
    pub key: ssh_key::PublicKey,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// One OpenPGP certificate (primary key with its subkeys and user ids).
#[derive(Debug)]
pub struct PgpSigner {
    pub file: String,
    pub key: SignedPublicKey,
    /// The primary key's fingerprint, upper-case hex (as `gpg --list-keys` prints it).
    pub fingerprint: String,
    /// The e-mail address of the primary user id (or the whole user id when it has none).
    pub principal: Option<String>,
}

// === impl TrustList ===

impl TrustList {
    /// Whether any key is listed.
    pub fn is_empty(&self) -> bool {
        self.ssh.is_empty() && self.openpgp.is_empty()
    }

    /// Whether a change of `path` (relative to the repository) changes this trust list: the
    /// settings file, the allowed signers file, or a file under the OpenPGP keys path.
    pub fn touched_by(&self, path: &str) -> bool {
        let under = |p: &Option<String>| {
            p.as_deref().is_some_and(|p| {
                let p = p.trim_end_matches('/');
                path == p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
            })
        };
        matches!(path, "gatehouse.yaml" | "gatehouse.yml") || under(&self.allowed_signers) || under(&self.openpgp_keys)
    }

    /// One line per key, for events and `check`: `ssh SHA256:… alice@example.com`.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self.ssh.iter().map(|s| format!("ssh {} {}", s.fingerprint, s.principals)).collect();
        out.extend(self.openpgp.iter().map(|k| format!("openpgp {} {}", k.fingerprint, k.principal.as_deref().unwrap_or("(no user id)"))));
        out
    }
}

/// Reads the keys the settings name. `changes_file` is where a missing file is reported when
/// no position is known (the settings file).
pub fn load(trust: &mut TrustList, entries: &BTreeMap<String, Entry>, d: &mut Diagnostics) {
    if let Some(path) = trust.allowed_signers.clone()
        && let Some(Entry::Blob(bytes)) = entries.get(&path) {
            match std::str::from_utf8(bytes) {
                Ok(text) => trust.ssh = parse_allowed_signers(&path, text, d),
                Err(e) => d.error(&path, Pos::default(), format!("not UTF-8 text (invalid byte at offset {})", e.valid_up_to())),
            }
        }
    if let Some(path) = trust.openpgp_keys.clone() {
        for file in openpgp_files(&path, entries) {
            if let Some(Entry::Blob(bytes)) = entries.get(file) {
                trust.openpgp.extend(parse_openpgp(file, bytes, d));
            }
        }
    }
}

/// The files an `openpgp_keys` path names: itself if it is a file, else every file under it.
pub fn openpgp_files<'a>(path: &str, entries: &'a BTreeMap<String, Entry>) -> Vec<&'a String> {
    let dir = format!("{}/", path.trim_end_matches('/'));
    match entries.get_key_value(path) {
        Some((k, _)) => vec![k],
        None => entries.keys().filter(|k| k.starts_with(&dir)).collect(),
    }
}

/// Parses git's allowed signers format. Comments (`#`) and blank lines are skipped; every bad
/// line is an error at its line and the offending field's column.
pub fn parse_allowed_signers(file: &str, text: &str, d: &mut Diagnostics) -> Vec<SshSigner> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(raw) {
            Ok(mut s) => {
                s.file = file.to_string();
                s.line = line;
                out.push(s);
            }
            Err((col, msg)) => d.error(file, Pos { line, col }, msg),
        }
    }
    out
}

/// Key types git can sign with (`ssh-keygen -Y sign`), as they start a public key line.
const KEY_TYPES: [&str; 7] =
    ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"];

/// One line → a signer, or (column, message).
fn parse_line(raw: &str) -> Result<SshSigner, (usize, String)> {
    let fields = split_fields(raw).map_err(|col| (col, "unterminated quote".to_string()))?;
    let field = |i: usize| fields.get(i).map(|(c, s)| (*c, s.as_str()));
    let (_, principals) = field(0).ok_or((1, "empty line".to_string()))?;
    let principals = principals.trim_matches('"').to_string();
    if principals.is_empty() {
        return Err((1, "the principals field is empty: write who the key belongs to (alice@example.com)".into()));
    }
    let mut next = 1;
    let mut options = None;
    match field(1) {
        None => return Err((raw.len() + 1, "missing key type and key after the principals".into())),
        Some((col, f)) if !f.contains("ssh-") && !f.starts_with("ecdsa-") && !f.starts_with("sk-") => {
            options = Some((col, f.to_string()));
            next = 2;
        }
        _ => {}
    }
    let (type_col, key_type) = field(next).ok_or((raw.len() + 1, "missing key type and key".to_string()))?;
    if !KEY_TYPES.contains(&key_type) {
        return Err((type_col, format!("unknown key type {key_type:?}: expected one of {}", KEY_TYPES.join(", "))));
    }
    let (key_col, b64) = field(next + 1).ok_or((raw.len() + 1, format!("missing the base64 {key_type} key")))?;
    let key = ssh_key::PublicKey::from_openssh(&format!("{key_type} {b64}")).map_err(|e| (key_col, format!("not a valid {key_type} key: {e}")))?;
    if key.algorithm().as_str() != key_type {
        return Err((key_col, format!("the key is a {} key, not {key_type}", key.algorithm().as_str())));
    }
    let mut s = SshSigner {
        file: String::new(),
        line: 0,
        principals,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        fingerprint: key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        key,
    };
    if let Some((col, opts)) = options {
        for opt in split_options(&opts) {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n.to_ascii_lowercase(), Some(v.trim_matches('"').to_string())),
                None => (opt.to_ascii_lowercase(), None),
            };
            match (name.as_str(), value) {
                ("namespaces", Some(v)) => s.namespaces = Some(v.split(',').map(|p| p.trim().to_string()).collect()),
                ("valid-after", Some(v)) => s.valid_after = Some(timestamp(&v).map_err(|e| (col, format!("valid-after: {e}")))?),
                ("valid-before", Some(v)) => s.valid_before = Some(timestamp(&v).map_err(|e| (col, format!("valid-before: {e}")))?),
                ("cert-authority", _) => return Err((col, "cert-authority is not supported: list the signers' own keys".into())),
                ("namespaces" | "valid-after" | "valid-before", None) => return Err((col, format!("option {name} needs a value: {name}=\"…\""))),
                _ => return Err((col, format!("unknown option {name:?}: expected namespaces=\"…\", valid-after=\"…\" or valid-before=\"…\""))),
            }
        }
    }
    Ok(s)
}

/// Whitespace-separated fields (a double-quoted part may hold spaces), with 1-based columns.
/// Err: the column of an unterminated quote.
fn split_fields(raw: &str) -> Result<Vec<(usize, String)>, usize> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    let mut quote: Option<usize> = None;
    for (col, ch) in raw.chars().enumerate().map(|(i, c)| (i + 1, c)) {
        if ch == '"' {
            quote = if quote.is_some() { None } else { Some(col) };
            if cur.is_empty() {
                start = col;
            }
            cur.push(ch);
        } else if ch.is_whitespace() && quote.is_none() {
            if !cur.is_empty() {
                out.push((start, std::mem::take(&mut cur)));
            }
        } else {
            if cur.is_empty() {
                start = col;
            }
            cur.push(ch);
        }
    }
    if let Some(col) = quote {
        return Err(col);
    }
    if !cur.is_empty() {
        out.push((start, cur));
    }
    Ok(out)
}

/// `a,b="x,y",c` → `["a", "b=\"x,y\"", "c"]`.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `YYYYMMDD[HHMM[SS]][Z]` → unix seconds, read as UTC.
fn timestamp(s: &str) -> Result<i64, String> {
    let digits = s.strip_suffix('Z').unwrap_or(s);
    let bad = || format!("{s:?} is not YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let n = |a: usize, b: usize| digits.get(a..b).map_or(Ok(0), |x| x.parse::<i64>()).map_err(|_| bad());
    let date = crate::units::Date::parse(&format!("{}-{}-{}", &digits[0..4], &digits[4..6], &digits[6..8])).map_err(|_| bad())?;
    let (h, m, sec) = (n(8, 10)?, n(10, 12)?, n(12, 14)?);
    if h > 23 || m > 59 || sec > 60 {
        return Err(bad());
    }
    Ok(date.days_since_epoch() * 86400 + h * 3600 + m * 60 + sec)
}

/// Parses one file of OpenPGP public keys (armored or binary). Each certificate's
/// self-signatures must verify.
pub fn parse_openpgp(file: &str, bytes: &[u8], d: &mut Diagnostics) -> Vec<PgpSigner> {
    let armored = bytes.windows(10).any(|w| w == b"-----BEGIN");
    let parsed: Result<Vec<pgp::errors::Result<SignedPublicKey>>, pgp::errors::Error> = if armored {
        SignedPublicKey::from_armor_many(bytes).map(|(it, _)| it.collect())
    } else {
        SignedPublicKey::from_bytes_many(bytes).map(|it| it.collect())
    };
    let at = |needle: &[u8]| {
        bytes.windows(needle.len()).position(|w| w == needle).map_or(Pos { line: 1, col: 1 }, |i| Pos { line: bytes[..i].iter().filter(|&&b| b == b'\n').count() + 1, col: 1 })
    };
    let keys = match parsed {
        Ok(k) => k,
        Err(e) => {
            d.error(file, at(b"-----BEGIN"), format!("not an OpenPGP public key: {} (export one with gpg --armor --export KEYID)", short(&e)));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for k in keys {
        let key = match k {
            Ok(k) => k,
            Err(e) => {
                d.error(file, at(b"-----BEGIN"), format!("not an OpenPGP public key: {} (export one with gpg --armor --export KEYID)", short(&e)));
                continue;
            }
        };
        let fingerprint = format!("{:X}", key.primary_key.fingerprint());
        if let Err(e) = key.verify_bindings() {
            d.error(file, at(b"-----BEGIN"), format!("key {fingerprint}: its self-signatures do not verify: {}", short(&e)));
            continue;
        }
        let principal = key.details.users.iter().find(|u| u.is_primary()).or(key.details.users.first()).and_then(|u| u.id.as_str()).map(email_of);
        out.push(PgpSigner { file: file.to_string(), key, fingerprint, principal });
    }
    if out.is_empty() && !d.has_errors() {
        d.error(file, Pos { line: 1, col: 1 }, "no OpenPGP public key in this file (export one with gpg --armor --export KEYID)");
    }
    out
}

/// An rpgp error in one short line (its parser errors carry the input bytes).
fn short(e: &pgp::errors::Error) -> String {
    let s = e.to_string();
    let s = s.split(" Error(").next().unwrap_or(&s).trim();
    s.chars().take(160).collect()
}

/// `Alice <alice@example.com>` → `alice@example.com`; a user id without one is kept whole.
fn email_of(uid: &str) -> String {
    match (uid.rfind('<'), uid.rfind('>')) {
        (Some(a), Some(b)) if a < b => uid[a + 1..b].to_string(),
        _ => uid.to_string(),
    }
}

/// An OpenSSH pattern (`*` any run, `?` one character), as in a `namespaces` list.
pub fn pattern_matches(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

/// Whether an OpenSSH pattern list (`git,!file*`) admits `s`: some pattern matches and no
/// negated one does.
pub fn pattern_list_matches(list: &[String], s: &str) -> bool {
    let mut ok = false;
    for p in list {
        match p.strip_prefix('!') {
            Some(neg) if pattern_matches(neg, s) => return false,
            Some(_) => {}
            None => ok |= pattern_matches(p, s),
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    #[test]
    fn parses_lines_with_options_and_reports_bad_ones_at_their_line() {
        let text = format!(
            "# signers\n\nalice@example.com {ED} alice's laptop\n\"bob@example.com,ci@example.com\" namespaces=\"git,file\",valid-after=\"20260101\" {ED}\ncarol@example.com ssh-foo AAAA\ndave@example.com {}\nerin@example.com cert-authority {ED}\n",
            "ssh-ed25519 AAAAnotbase64!"
        );
        let mut d = Diagnostics::default();
        let s = parse_allowed_signers("signers/allowed_signers", &text, &mut d);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].line, s[0].principals.as_str()), (3, "alice@example.com"));
        assert!(s[0].fingerprint.starts_with("SHA256:"), "{}", s[0].fingerprint);
        assert_eq!(s[1].principals, "bob@example.com,ci@example.com");
        assert_eq!(s[1].namespaces.as_deref(), Some(&["git".to_string(), "file".to_string()][..]));
        assert_eq!(s[1].valid_after, Some(1767225600));
        let errors: Vec<String> = d.errors().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("signers/allowed_signers:5:19: error: unknown key type \"ssh-foo\""), "{errors:?}");
        assert!(errors[1].starts_with("signers/allowed_signers:6:30: error: not a valid ssh-ed25519 key"), "{errors:?}");
        assert!(errors[2].starts_with("signers/allowed_signers:7:18: error: cert-authority is not supported"), "{errors:?}");
    }

    #[test]
    fn pattern_lists() {
        let l = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
        assert!(pattern_list_matches(&l("git"), "git"));
        assert!(pattern_list_matches(&l("file,g*"), "git"));
        assert!(!pattern_list_matches(&l("file"), "git"));
        assert!(!pattern_list_matches(&l("*,!git"), "git"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp("20260101"), Ok(1767225600));
        assert_eq!(timestamp("202601010130Z"), Ok(1767225600 + 5400));
        assert!(timestamp("2026").is_err());
    }
}
