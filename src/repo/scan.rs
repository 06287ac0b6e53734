//! Finds token-shaped strings (GitHub, Stripe, AWS, Slack, OpenAI/Anthropic keys, private keys)
//! anywhere in the repository. Secrets never belong in a policy repository: the daemon reads
//! them from `--secrets-dir` or the environment by `${secret:NAME}`.

use std::sync::OnceLock;

use regex::Regex;

use crate::diag::{Diagnostics, Pos};

const PATTERN: &str = concat!(
    r"\bgh_[0-9A-Za-z]{49}\b|",
    r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,})\b",
    r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b",
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
    r"|\bsk-(?:ant-)?[A-Za-z0-9_-]{20,}",
    r"|\bAIza[0-9A-Za-z_-]{35}\b",
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----",
);

/// What a match looks like, for the message (the value itself is never printed).
fn kind(m: &str) -> &'static str {
    match m.as_bytes() {
        [b'g', b'h', b'_', ..] => "a gatehouse token",
        [b'g', b'h', ..] | [b'g', b'i', ..] => "a GitHub token",
        [b's', b'k', b'_', ..] | [b'r', b'k', b'_', ..] => "a Stripe key",
        [b'A', b'K', ..] | [b'A', b'S', ..] => "an AWS access key id",
        [b'x', b'o', ..] => "a Slack token",
        [b'A', b'I', ..] => "a Google API key",
        [b'-', ..] => "a private key",
        _ => "an API key",
    }
}

/// Reports every token-shaped string in `text` as an error at its position.
pub fn scan(file: &str, text: &str, diags: &mut Diagnostics) {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(PATTERN).expect("valid pattern"));
    for m in re.find_iter(text) {
        let pos = position(text, m.start());
        let shown: String = m.as_str().chars().take(4).collect();
        diags.error(
            file,
            pos,
            format!(
                "this looks like {} ({shown}…): never commit secrets; put the value in --secrets-dir and write ${{secret:NAME}}",
                kind(m.as_str())
            ),
        );
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn position(text: &str, offset: usize) -> Pos {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Pos { line, col: before[line_start..].chars().count() + 1 }
}
