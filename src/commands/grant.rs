//! `gatehouse grant issue | revoke | review`: edit `grants/<name>.yaml` in a policy repository's
//! working tree, for the user to review and commit.
//!
//! - The files are edited as text, not re-serialized: every byte outside the edited entry
//!   (comments, key order, quoting, blank lines) stays as it was, so the diff of the commit shows
//!   exactly the change.
//! - The repository must be valid before the edit, and is compiled again after it: if the edited
//!   tree is invalid, or does not say what the edit meant (the new hash is there, the revoked ones
//!   are gone, the review is today's), the file's original bytes are put back and the error says why.
//! - A token exists in exactly one place: the [`Issued`] value returned to the caller, which prints
//!   it once. Files only ever get its SHA-256 ([`crate::gateway::token::sha256_hex`]).
//!
//! Identities of new grant files: a human's identity is `--owner` when given (owner and identity
//! are then the same person), else NAME; an agent's identity is NAME and `--owner` (its accountable
//! human) is required. An existing file keeps its identity; `--kind` and `--owner` must agree with it.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::repo::{self, Compiled};
use crate::policy::snapshot::{self, Grant};
use crate::gateway::token;
use crate::units::Date;

/// The kind of a grant's identity, as written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Human,
    Agent,
}

/// When a new token expires: `90d`, `12w`, a date (`2026-12-31`), or `never` (no `expires`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Days(u32),
    On(Date),
    Never,
}

/// A token just issued. The only place the token exists; `Debug` does not show it.
pub struct Issued {
    pub token: String,
    /// Lowercase hex SHA-256 of the token: what the file holds.
    pub sha256: String,
    /// The grant file (the repository path joined with `grants/NAME.yaml`).
    pub file: PathBuf,
    /// Whether the file was created (else a token entry was appended to it).
    pub created: bool,
    pub identity: String,
    pub issued: Date,
    pub expires: Option<Date>,
}

/// Token entries removed by [`revoke`].
#[derive(Debug)]
pub struct Revoked {
    pub file: PathBuf,
    /// The first 12 hex digits of each removed token's SHA-256, in file order.
    pub removed: Vec<String>,
    /// How many tokens the grant still has.
    pub remaining: usize,
}

/// Hex digits of a hash shown to people.
pub const SHOWN_HEX: usize = 12;
/// The shortest SHA-256 prefix `revoke` accepts (shorter ones too easily pick the wrong token).
pub const MIN_PREFIX: usize = 8;
/// `--expires` when not given.
pub const DEFAULT_EXPIRY: Expiry = Expiry::Days(90);
/// The longest lifetime accepted as a number of days or weeks (ten years).
const MAX_DAYS: u32 = 3650;

// === impl Kind ===

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Human => "human",
            Kind::Agent => "agent",
        }
    }

    fn matches(self, k: snapshot::Kind) -> bool {
        matches!((self, k), (Kind::Human, snapshot::Kind::Human) | (Kind::Agent, snapshot::Kind::Agent))
    }
}

// === impl Expiry ===

impl Expiry {
    /// Parses `90d`, `12w`, `YYYY-MM-DD` or `never`.
    pub fn parse(s: &str) -> Result<Expiry, String> {
        let bad = || format!("invalid expiry {s:?}: expected days (90d), weeks (12w), a date (2026-12-31) or never");
        if s == "never" {
            return Ok(Expiry::Never);
        }
        if s.len() == 10 && s.as_bytes()[4] == b'-' {
            return Date::parse(s).map(Expiry::On);
        }
        let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: u32 = n.parse().map_err(|_| bad())?;
        let days = match unit {
            "d" => n,
            "w" => n.checked_mul(7).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if days == 0 || days > MAX_DAYS {
            return Err(format!("invalid expiry {s:?}: between 1 day and {MAX_DAYS} days (or a date, or never)"));
        }
        Ok(Expiry::Days(days))
    }

    /// The expiry date of a token issued `today`; None for never.
    pub fn date(self, today: Date) -> Option<Date> {
        match self {
            Expiry::Days(n) => Some(today.add_days(n as i64)),
            Expiry::On(d) => Some(d),
            Expiry::Never => None,
        }
    }
}

impl std::str::FromStr for Expiry {
    type Err = String;
    fn from_str(s: &str) -> Result<Expiry, String> {
        Expiry::parse(s)
    }
}

// === impl Issued ===

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"<redacted>")
            .field("sha256", &self.sha256)
            .field("file", &self.file)
            .field("created", &self.created)
            .field("identity", &self.identity)
            .field("issued", &self.issued)
            .field("expires", &self.expires)
            .finish()
    }
}

/// Whether `name` may name a grant file: `[a-z0-9][a-z0-9._-]{0,63}` (so no `/`, no `..` path, no
/// hidden file).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && matches!(b[0], b'a'..=b'z' | b'0'..=b'9')
        && b.iter().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

fn check_name(name: &str) -> Result<()> {
    if !valid_name(name) {
        bail!(
            "invalid grant name {name:?}: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters (the file is grants/NAME.yaml)"
        );
    }
    if [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e)) {
        bail!("invalid grant name {name:?}: give the name without the extension (grants/NAME.yaml)");
    }
    Ok(())
}

/// Issues a token for grant NAME: appends `- { sha256, issued, expires }` to the `tokens:` of
/// `grants/NAME.yaml`, or creates the file (with no access: the user adds it before committing).
pub fn issue(
    repo: &Path,
    name: &str,
    kind: Kind,
    owner: Option<&str>,
    expires: Option<Expiry>,
    today: Date,
) -> Result<Issued> {
    check_name(name)?;
    let owner = owner.map(str::trim).filter(|o| !o.is_empty());
    let expires = expires.unwrap_or(DEFAULT_EXPIRY).date(today);
    if let Some(e) = expires
        && e <= today
    {
        bail!("the token would expire on {e}, not after today ({today})");
    }
    let before = compile_before(repo)?;
    let existing = grant_file(repo, name)?;
    let token = token::generate();
    let sha256 = token::sha256_hex(&token);
    let entry = token_entry(&sha256, today, expires);

    let (rel, abs, original, new_text, identity) = match existing {
        Some((rel, abs)) => {
            let g = before
                .snapshot
                .grant_by_name(name)
                .with_context(|| format!("{rel} is not a grant of the repository"))?;
            if !kind.matches(g.kind) {
                bail!("{rel} is a grant of kind {}, not {}", kind_str(g.kind), kind.as_str());
            }
            if let Some(o) = owner
                && g.owner.as_deref() != Some(o)
            {
                bail!(
                    "{rel} has owner {:?}, not {o:?}: change the owner by editing the file",
                    g.owner.as_deref().unwrap_or("")
                );
            }
            let original = read_text(&abs, &rel)?;
            let new_text = append_token(&original, &rel, g, &entry)?;
            (rel, abs, Some(original), new_text, g.identity.clone())
        }
        None => {
            let identity = match (kind, owner) {
                (Kind::Agent, None) => {
                    bail!("an agent needs --owner: the accountable human (e.g. --owner alice@example.com)")
                }
                (Kind::Agent, Some(_)) => name.to_string(),
                (Kind::Human, o) => o.unwrap_or(name).to_string(),
            };
            let rel = format!("grants/{name}.yaml");
            let text = new_grant(&identity, kind, owner, &entry);
            (rel.clone(), repo.join(&rel), None, text, identity)
        }
    };
    if new_text.contains(&token) {
        bail!("internal error: the token would be written to {rel}"); // unreachable: defence in depth
    }
    let created = original.is_none();
    let count = before.snapshot.grant_by_name(name).map_or(0, |g| g.tokens.len());
    apply(repo, &rel, &abs, original.as_deref(), &new_text, |c| {
        let g = c.snapshot.grant_by_name(name).context("the grant is missing after the edit")?;
        let hashes = hexes(g);
        if !hashes.contains(&sha256) || g.tokens.len() != count + 1 {
            bail!("the edited file does not hold exactly one new token hash");
        }
        let t = g.tokens.iter().find(|t| hex::encode(t.sha256) == sha256).expect("checked");
        if t.issued != Some(today) || t.expires != expires {
            bail!("the edited token entry does not have the intended dates");
        }
        Ok(())
    })?;
    Ok(Issued { token, sha256, file: abs, created, identity, issued: today, expires })
}

/// Revokes tokens of grant NAME. `selector`: a SHA-256 hex prefix (at least [`MIN_PREFIX`]
/// digits, as shown by `revoke` and in the file), or a whole token (hashed, never printed);
/// it must pick exactly one entry. None revokes every token (the access entries stay: the
/// identity can no longer authenticate until a new token is issued).
pub fn revoke(repo: &Path, name: &str, selector: Option<&str>) -> Result<Revoked> {
    check_name(name)?;
    let before = compile_before(repo)?;
    let (rel, abs) =
        grant_file(repo, name)?.with_context(|| format!("there is no grant {name:?} (grants/{name}.yaml)"))?;
    let g = before.snapshot.grant_by_name(name).with_context(|| format!("{rel} is not a grant of the repository"))?;
    let hashes = hexes(g);
    let chosen: Vec<usize> = match selector {
        None => (0..hashes.len()).collect(),
        Some(s) => select(&hashes, s.trim(), &rel)?,
    };
    let removed: Vec<String> = chosen.iter().map(|&i| hashes[i][..SHOWN_HEX].to_string()).collect();
    if chosen.is_empty() {
        return Ok(Revoked { file: abs, removed, remaining: hashes.len() });
    }
    let original = read_text(&abs, &rel)?;
    let new_text = remove_tokens(&original, &rel, g, &chosen)?;
    let gone: Vec<String> = chosen.iter().map(|&i| hashes[i].clone()).collect();
    let remaining = hashes.len() - chosen.len();
    apply(repo, &rel, &abs, Some(&original), &new_text, |c| {
        let g = c.snapshot.grant_by_name(name).context("the grant is missing after the edit")?;
        let now = hexes(g);
        if now.len() != remaining || now.iter().any(|h| gone.contains(h)) {
            bail!("the edited file does not remove exactly the chosen tokens");
        }
        Ok(())
    })?;
    Ok(Revoked { file: abs, removed, remaining })
}

/// Records an access review of grant NAME: sets (or replaces) `review: { on: TODAY, by: BY }`.
/// Returns the file.
pub fn review(repo: &Path, name: &str, by: &str, today: Date) -> Result<PathBuf> {
    check_name(name)?;
    let by = by.trim();
    if by.is_empty() {
        bail!("--by must name the reviewer");
    }
    let before = compile_before(repo)?;
    let (rel, abs) =
        grant_file(repo, name)?.with_context(|| format!("there is no grant {name:?} (grants/{name}.yaml)"))?;
    before.snapshot.grant_by_name(name).with_context(|| format!("{rel} is not a grant of the repository"))?;
    let original = read_text(&abs, &rel)?;
    let value = format!("{{ on: {today}, by: {} }}", scalar(by));
    let new_text = set_review(&original, &rel, &value)?;
    apply(repo, &rel, &abs, Some(&original), &new_text, |c| {
        let g = c.snapshot.grant_by_name(name).context("the grant is missing after the edit")?;
        match &g.review {
            Some(r) if r.on == today && r.by == by => Ok(()),
            _ => bail!("the edited file does not hold the intended review"),
        }
    })?;
    Ok(abs)
}

// --- the repository around the edit ---

/// Compiles the working tree; an invalid repository is not edited.
pub(crate) fn compile_before(repo: &Path) -> Result<Compiled> {
    let files = repo::read(repo, None)?;
    repo::compile(&files).map_err(|d| {
        anyhow::anyhow!("the repository is invalid before the edit ({}); fix it first:\n{}", d.summary(), errors(&d))
    })
}

/// The existing file of grant NAME: `grants/NAME.yaml` (or `.yml`); a JSON grant is refused.
fn grant_file(repo: &Path, name: &str) -> Result<Option<(String, PathBuf)>> {
    for ext in ["yaml", "yml", "json"] {
        let rel = format!("grants/{name}.{ext}");
        let abs = repo.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&abs) else { continue };
        if !meta.file_type().is_file() {
            bail!("{rel} is not a regular file");
        }
        if ext == "json" {
            bail!("{rel} is JSON: gatehouse edits YAML grant files only; edit it by hand");
        }
        return Ok(Some((rel, abs)));
    }
    Ok(None)
}

fn read_text(abs: &Path, rel: &str) -> Result<String> {
    let bytes = std::fs::read(abs).with_context(|| format!("reading {rel}"))?;
    String::from_utf8(bytes).with_context(|| format!("{rel} is not UTF-8"))
}

/// Writes `new_text`, compiles the whole working tree and runs `verify` on it; on any failure
/// the original bytes are restored (or the new file removed) and the error returned.
pub(crate) fn apply(
    repo: &Path,
    rel: &str,
    abs: &Path,
    original: Option<&str>,
    new_text: &str,
    verify: impl FnOnce(&Compiled) -> Result<()>,
) -> Result<()> {
    if original.is_none()
        && let Some(dir) = abs.parent()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_atomic(abs, new_text.as_bytes()).with_context(|| format!("writing {rel}"))?;
    let outcome = repo::read(repo, None).and_then(|files| match repo::compile(&files) {
        Ok(c) => verify(&c),
        Err(d) => bail!("the edit would leave the repository invalid ({}):\n{}", d.summary(), errors(&d)),
    });
    if let Err(e) = outcome {
        let restored = match original {
            Some(o) => write_atomic(abs, o.as_bytes()),
            None => std::fs::remove_file(abs),
        };
        return Err(match restored {
            Ok(()) if original.is_none() => e.context(format!("{rel} was not created")),
            Ok(()) => e.context(format!("{rel} was left unchanged")),
            Err(r) => e.context(format!("and restoring {rel} failed: {r}")),
        });
    }
    Ok(())
}

/// The errors of a failed compile, one a line, in file order (warnings left out).
pub(crate) fn errors(d: &crate::diag::Diagnostics) -> String {
    let mut e: Vec<String> =
        d.sorted().into_iter().filter(|x| x.severity == crate::diag::Severity::Error).map(|x| x.to_string()).collect();
    e.dedup();
    e.join("\n")
}

/// Replaces `path` by a file written next to it (same permissions), so a crash never leaves half
/// a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("grant");
    let tmp = path.with_file_name(format!(".{name}.gatehouse-tmp"));
    std::fs::write(&tmp, bytes)?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())?;
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn hexes(g: &Grant) -> Vec<String> {
    g.tokens.iter().map(|t| hex::encode(t.sha256)).collect()
}

fn kind_str(k: snapshot::Kind) -> &'static str {
    match k {
        snapshot::Kind::Human => "human",
        snapshot::Kind::Agent => "agent",
    }
}

/// The token entries a revoke selector picks (indexes into `hashes`).
fn select(hashes: &[String], s: &str, rel: &str) -> Result<Vec<usize>> {
    let is_hex = !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit());
    if s.starts_with(token::PREFIX) && !token::well_formed(s) {
        bail!(
            "--token-prefix looks like a gatehouse token but is not a whole one (its checksum fails): give the whole token, or the first digits of its sha256 from {rel}"
        );
    }
    let mut hits: Vec<usize> = Vec::new();
    if is_hex {
        if s.len() < MIN_PREFIX {
            bail!("--token-prefix {s:?} is too short: give at least {MIN_PREFIX} hex digits of the sha256");
        }
        let p = s.to_ascii_lowercase();
        hits.extend(hashes.iter().enumerate().filter(|(_, h)| h.starts_with(&p)).map(|(i, _)| i));
    }
    // A whole token (a gh_ token or an opaque one): match its hash exactly.
    let full = token::sha256_hex(s);
    hits.extend(hashes.iter().enumerate().filter(|(_, h)| **h == full).map(|(i, _)| i));
    hits.sort_unstable();
    hits.dedup();
    match hits.len() {
        1 => Ok(hits),
        0 if is_hex => bail!("no token of {rel} has a sha256 starting with {s}"),
        0 => bail!("no token of {rel} matches the given token"),
        _ => bail!(
            "--token-prefix {s} is ambiguous in {rel}: it matches {}; give more digits",
            hits.iter().map(|&i| &hashes[i][..SHOWN_HEX]).collect::<Vec<_>>().join(", ")
        ),
    }
}

// --- what is written ---

fn token_entry(sha256: &str, issued: Date, expires: Option<Date>) -> String {
    match expires {
        Some(e) => format!("{{ sha256: {sha256}, issued: {issued}, expires: {e} }}"),
        None => format!("{{ sha256: {sha256}, issued: {issued} }}"),
    }
}

fn new_grant(identity: &str, kind: Kind, owner: Option<&str>, entry: &str) -> String {
    let mut s = format!("identity: {}\nkind: {}\n", scalar(identity), kind.as_str());
    if let Some(o) = owner {
        s.push_str(&format!("owner: {}\n", scalar(o)));
    }
    s.push_str(&format!(
        "tokens:                           # SHA-256 of each bearer token; never the token itself\n  - {entry}\n"
    ));
    s.push_str(
        "access: []                        # add entries: - role: NAME, or - { server: NAME, tools: [TOOL, …] }\n",
    );
    s
}

/// A YAML scalar for a free string: plain when unambiguous (`alice@example.com`,
/// `billing-bot`), else double-quoted (a JSON string is a valid YAML double-quoted scalar).
pub fn scalar(s: &str) -> String {
    let b = s.as_bytes();
    let plain = !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'@' | b'.' | b'_' | b'+' | b'-' | b'/'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "nan" | "inf"
        );
    if plain { s.to_string() } else { serde_json::to_string(s).expect("a string serializes") }
}

// --- text editing ---

/// One line of a file: `[start, end)` without its line break, `next` where the following starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) next: usize,
}

pub(crate) fn lines(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut start = 0;
    for piece in text.split_inclusive('\n') {
        let next = start + piece.len();
        let body = piece.strip_suffix('\n').unwrap_or(piece);
        let body = body.strip_suffix('\r').unwrap_or(body);
        out.push(Line { start, end: start + body.len(), next });
        start = next;
    }
    out
}

/// The line break the file uses.
pub(crate) fn newline(text: &str) -> &'static str {
    if text.contains("\r\n") { "\r\n" } else { "\n" }
}

pub(crate) fn indent(s: &str) -> usize {
    s.len() - s.trim_start_matches(' ').len()
}

/// Not blank and not only a comment.
pub(crate) fn is_content(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// A block sequence item: `-` followed by a space or the end of the line.
fn is_dash(s: &str) -> bool {
    let t = s.trim_start_matches(' ');
    t == "-" || t.starts_with("- ")
}

/// A top-level `key:` (plain or quoted) and the offset just after its colon.
pub(crate) fn top_key(s: &str) -> Option<(&str, usize)> {
    let first = *s.as_bytes().first()?;
    if matches!(first, b' ' | b'\t' | b'#' | b'[' | b'{' | b'?' | b'%') || is_dash(s) {
        return None;
    }
    if s.starts_with("---") || s.starts_with("...") {
        return None;
    }
    let (key, after) = if first == b'"' || first == b'\'' {
        let close = s[1..].find(first as char)? + 1;
        (&s[1..close], close + 1)
    } else {
        let colon = s
            .char_indices()
            .find(|&(i, c)| c == ':' && matches!(s.as_bytes().get(i + 1), None | Some(b' ' | b'\t')))?
            .0;
        (s[..colon].trim_end(), colon)
    };
    let rest = &s[after..];
    let ws = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    let rest = &rest[ws..];
    if !rest.starts_with(':') {
        return None;
    }
    Some((key, after + ws + 1))
}

/// Where a comment starts in a block-context line fragment (`s.len()` if none): a `#` at the
/// start or after whitespace, outside quoted scalars.
pub(crate) fn comment_at(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut prev_sig: Option<u8> = None; // last non-blank byte
    while i < b.len() {
        let c = b[i];
        if c == b'#' && (i == 0 || matches!(b[i - 1], b' ' | b'\t')) {
            return i;
        }
        if (c == b'"' || c == b'\'') && prev_sig.is_none_or(|p| matches!(p, b':' | b'-' | b'[' | b'{' | b',' | b'?')) {
            i = skip_quoted(b, i);
            prev_sig = Some(c);
            continue;
        }
        if !matches!(c, b' ' | b'\t') {
            prev_sig = Some(c);
        }
        i += 1;
    }
    b.len()
}

/// The offset just after the quoted scalar opening at `i` (or the end of the input).
fn skip_quoted(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if q == b'"' && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            if q == b'\'' && b.get(j + 1) == Some(&b'\'') {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// A flow collection (`[…]` or `{…}`) opening at `open`: the offset of its closing bracket and the
/// `[start, end)` of each top-level element (trimmed of blanks and comments).
pub(crate) fn flow(text: &str, open: usize) -> Option<(usize, Vec<(usize, usize)>)> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut elems = Vec::new();
    let mut cur: Option<(usize, usize)> = None;
    let mut prev_sig = b[open];
    let mut i = open;
    while i < b.len() {
        let c = b[i];
        match c {
            b'[' | b'{' => {
                depth += 1;
                if depth > 1 {
                    cur = Some((cur.map_or(i, |c| c.0), i + 1));
                }
            }
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    elems.extend(cur);
                    return Some((i, elems));
                }
                cur = Some((cur.map_or(i, |c| c.0), i + 1));
            }
            b',' if depth == 1 => {
                elems.extend(cur.take());
            }
            b'#' if matches!(b[i - 1], b' ' | b'\t' | b'\n' | b'\r') => {
                i = text[i..].find('\n').map_or(b.len(), |n| i + n);
                continue;
            }
            b'"' | b'\'' if matches!(prev_sig, b'[' | b'{' | b',' | b':' | b'?') => {
                let end = skip_quoted(b, i);
                cur = Some((cur.map_or(i, |c| c.0), end));
                prev_sig = c;
                i = end;
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => cur = Some((cur.map_or(i, |c| c.0), i + 1)),
        }
        if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            prev_sig = c;
        }
        i += 1;
    }
    None
}

/// The hash of a token entry's text: the value of its `sha256` key, lowercased.
fn sha256_in(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(k) = s[from..].find("sha256") {
        let at = from + k;
        from = at + 6;
        if at > 0 && !matches!(b[at - 1], b'{' | b',' | b' ' | b'\t' | b'\n' | b'-' | b'"' | b'\'') {
            continue;
        }
        let rest = s[at + 6..].trim_start_matches(['"', '\'']).trim_start_matches([' ', '\t']);
        let Some(rest) = rest.strip_prefix(':') else { continue };
        let rest = rest.trim_start_matches([' ', '\t']).trim_start_matches(['"', '\'']);
        let n = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
        if n == 64 && !rest.as_bytes().get(64).is_some_and(|c| c.is_ascii_alphanumeric()) {
            return Some(rest[..64].to_ascii_lowercase());
        }
    }
    None
}

/// The `tokens:` of a grant file as text.
enum TokensText {
    /// No `tokens` key.
    Absent,
    /// `tokens:` then a block sequence (maybe no items: a null value).
    Block { key: Line, value: usize, items: Vec<Item> },
    /// `tokens: [ … ]`: the offsets of the brackets and of each element.
    Flow { open: usize, close: usize, elems: Vec<(usize, usize)> },
}

/// One block item: from its `-` line to the line after its last content line.
struct Item {
    start: usize,
    end: usize,
    indent: usize,
}

fn cannot(rel: &str, what: &str) -> anyhow::Error {
    anyhow::anyhow!("cannot edit {rel} safely ({what}); edit it by hand")
}

/// Finds `tokens:` and checks that the entries found in the text are exactly the grant's tokens.
fn tokens_text(text: &str, rel: &str, g: &Grant) -> Result<TokensText> {
    let ls = lines(text);
    let Some(ki) = ls.iter().position(|l| top_key(&text[l.start..l.end]).is_some_and(|(k, _)| k == "tokens")) else {
        if !g.tokens.is_empty() || !ls.iter().any(|l| top_key(&text[l.start..l.end]).is_some()) {
            return Err(cannot(rel, "no top-level tokens: key found"));
        }
        return Ok(TokensText::Absent);
    };
    let key = ls[ki];
    let line = &text[key.start..key.end];
    let after = top_key(line).expect("found").1;
    let value_part = &line[after..after + comment_at(&line[after..])];
    let value = value_part.trim();
    let found: Vec<String>;
    let shape = if value.is_empty() {
        let mut items: Vec<Item> = Vec::new();
        let mut item_indent = None;
        for l in &ls[ki + 1..] {
            let s = &text[l.start..l.end];
            if !is_content(s) {
                continue;
            }
            let ind = indent(s);
            match item_indent {
                None if is_dash(s) => item_indent = Some(ind),
                None => break, // the next key: no items
                Some(ii) if ind == ii && is_dash(s) => {}
                Some(ii) if ind > ii => {
                    items.last_mut().expect("an item is open").end = l.next;
                    continue;
                }
                Some(_) if ind == 0 => break,
                Some(_) => return Err(cannot(rel, "unexpected indentation under tokens:")),
            }
            items.push(Item { start: l.start, end: l.next, indent: ind });
        }
        found = items.iter().map(|it| sha256_in(&text[it.start..it.end]).unwrap_or_default()).collect();
        TokensText::Block { key, value: key.start + after, items }
    } else if value.starts_with('[') {
        let open = key.start + after + value_part.find('[').expect("starts with [");
        let (close, elems) = flow(text, open).ok_or_else(|| cannot(rel, "unterminated tokens: [ … ]"))?;
        found = elems.iter().map(|&(s, e)| sha256_in(&text[s..e]).unwrap_or_default()).collect();
        TokensText::Flow { open, close, elems }
    } else {
        return Err(cannot(rel, "tokens: is neither a list of entries nor [ … ]"));
    };
    if found != hexes(g) {
        return Err(cannot(rel, "the token entries in the text do not match the parsed file"));
    }
    Ok(shape)
}

/// The file with `- ENTRY` appended to `tokens:` (created before `access:`/`quotas:`/`review:`,
/// or at the end, when missing).
fn append_token(text: &str, rel: &str, g: &Grant, entry: &str) -> Result<String> {
    let nl = newline(text);
    let mut out = String::with_capacity(text.len() + entry.len() + 16);
    match tokens_text(text, rel, g)? {
        TokensText::Block { key, items, .. } => {
            let (at, ind) = match items.last() {
                Some(it) => (it.end, it.indent),
                None => (key.next, 2),
            };
            out.push_str(&text[..at]);
            if !out.ends_with('\n') {
                out.push_str(nl);
            }
            out.push_str(&format!("{}- {entry}{nl}", " ".repeat(ind)));
            out.push_str(&text[at..]);
        }
        TokensText::Flow { open, close, elems } => match elems.last() {
            Some(&(_, end)) => {
                out.push_str(&text[..end]);
                out.push_str(", ");
                out.push_str(entry);
                out.push_str(&text[end..]);
            }
            None if !text[open..close].contains('\n') => {
                // `tokens: []  # c` becomes `tokens:  # c` and a block list.
                let mut line_end = text[close..].find('\n').map_or(text.len(), |i| close + i);
                if text[..line_end].ends_with('\r') {
                    line_end -= 1;
                }
                out.push_str(text[..open].trim_end_matches([' ', '\t']));
                out.push_str(&text[close + 1..line_end]);
                out.push_str(&format!("{nl}  - {entry}"));
                if line_end == text.len() {
                    out.push_str(nl);
                }
                out.push_str(&text[line_end..]);
            }
            None => {
                out.push_str(&text[..close]);
                out.push_str(&format!("{entry} "));
                out.push_str(&text[close..]);
            }
        },
        TokensText::Absent => {
            let ls = lines(text);
            let later = ls.iter().position(|l| {
                top_key(&text[l.start..l.end]).is_some_and(|(k, _)| matches!(k, "access" | "quotas" | "review"))
            });
            let block = format!("tokens:{nl}  - {entry}{nl}");
            match later {
                Some(mut i) => {
                    // Comments right above the key belong to it: insert above them.
                    while i > 0 && text[ls[i - 1].start..ls[i - 1].end].starts_with('#') {
                        i -= 1;
                    }
                    let at = ls[i].start;
                    out.push_str(&text[..at]);
                    out.push_str(&block);
                    out.push_str(&text[at..]);
                }
                None => {
                    out.push_str(text);
                    if !text.is_empty() && !text.ends_with('\n') {
                        out.push_str(nl);
                    }
                    out.push_str(&block);
                }
            }
        }
    }
    Ok(out)
}

/// The file without the token entries `chosen` (indexes into the grant's tokens); an emptied list
/// becomes `tokens: []`.
fn remove_tokens(text: &str, rel: &str, g: &Grant, chosen: &[usize]) -> Result<String> {
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut replace_value: Option<(usize, usize, &str)> = None;
    match tokens_text(text, rel, g)? {
        TokensText::Absent => return Err(cannot(rel, "no tokens: key")),
        TokensText::Block { value, items, .. } => {
            cuts.extend(chosen.iter().map(|&i| (items[i].start, items[i].end)));
            if chosen.len() == items.len() {
                // `tokens:` + nothing would be null: write `tokens: []`, keeping the comment.
                // `[]` goes right after the colon; the blanks and comment after it stay.
                replace_value = Some((value, value, " []"));
            }
        }
        TokensText::Flow { open, close, elems } => {
            if chosen.len() == elems.len() {
                replace_value = Some((open, close + 1, "[]"));
            } else {
                let first_kept = (0..elems.len()).find(|i| !chosen.contains(i)).expect("one is kept");
                for &i in chosen {
                    cuts.push(if i < first_kept { (elems[i].0, elems[i + 1].0) } else { (elems[i - 1].1, elems[i].1) });
                }
            }
        }
    }
    let mut edits: Vec<(usize, usize, &str)> = cuts.into_iter().map(|(s, e)| (s, e, "")).collect();
    edits.extend(replace_value);
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e, with) in edits {
        if s < at {
            return Err(cannot(rel, "overlapping edits"));
        }
        out.push_str(&text[at..s]);
        out.push_str(with);
        at = e;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

/// The file with `review:` set to `value` (a flow mapping), replacing the previous value in
/// place or appending the key at the end.
fn set_review(text: &str, rel: &str, value: &str) -> Result<String> {
    let nl = newline(text);
    let ls = lines(text);
    let Some(ki) = ls.iter().position(|l| top_key(&text[l.start..l.end]).is_some_and(|(k, _)| k == "review")) else {
        let mut out = text.to_string();
        if !text.is_empty() && !text.ends_with('\n') {
            out.push_str(nl);
        }
        out.push_str(&format!("review: {value}{nl}"));
        return Ok(out);
    };
    let key = ls[ki];
    let line = &text[key.start..key.end];
    let after = top_key(line).expect("found").1;
    let tail = &line[after..]; // the value and any comment
    let v = &tail[..comment_at(tail)];
    let value_start = key.start + after + (v.len() - v.trim_start().len());
    let mut out = String::with_capacity(text.len() + value.len());
    if v.trim_start().starts_with('{') {
        // `review: { … }  # note`: the mapping is replaced, the note stays.
        let (close, _) = flow(text, value_start).ok_or_else(|| cannot(rel, "unterminated review: { … }"))?;
        out.push_str(&text[..value_start]);
        out.push_str(value);
        out.push_str(&text[close + 1..]);
    } else if v.trim().is_empty() {
        // A block mapping: its lines go, the key line keeps its comment.
        let mut end = key.end;
        for l in &ls[ki + 1..] {
            let s = &text[l.start..l.end];
            if !is_content(s) {
                continue;
            }
            if indent(s) == 0 {
                break;
            }
            end = l.end;
        }
        out.push_str(&text[..key.start + after]);
        out.push(' ');
        out.push_str(value);
        if !tail.trim().is_empty() {
            out.push_str(tail);
        }
        out.push_str(&text[end..]);
    } else {
        // A scalar (`~`): replaced.
        out.push_str(&text[..value_start]);
        out.push_str(value);
        out.push_str(&text[value_start + v.trim().len()..]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
