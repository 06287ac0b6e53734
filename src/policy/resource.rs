//! Resource URI patterns of access entries (`resources: ["repo://acme/app/**"]`): validation,
//! matching a concrete URI, and whether a URI template's literal prefix could produce a URI a
//! pattern matches. Pure; the rules are written down in docs/formats.md.
//!
//! A pattern is matched against the raw URI text, never a decoded form, segment by segment
//! (segments are what lies between `/`): `*` matches any run of characters within one segment,
//! `**` (a whole segment) any number of segments, zero included; every other character matches
//! itself, case included. The scheme is literal, so a pattern never matches another scheme. A URI
//! that a server could resolve to somewhere else than it reads is matched by no pattern (only
//! `"*"`, every resource, still covers it): a `.` or `..` segment, an empty segment inside the
//! path, a backslash, a control or whitespace character, or a percent-encoded `/`, `.`, `\`, NUL
//! or `%` (`%2F %2E %5C %00 %25`, any case).

use std::fmt;

/// One compiled `resources:` pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct UriPattern {
    text: String,
    /// None for `"*"` (every resource).
    segments: Option<Vec<Seg>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    /// `**`: any number of segments.
    Any,
    /// One segment; `*` matches any run of characters in it.
    Glob(String),
}

/// Why a URI is matched by no pattern (only `"*"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    DotSegment,
    EmptySegment,
    Backslash,
    Control,
    Encoded,
}

// === impl UriPattern ===

impl UriPattern {
    /// Parses and validates a pattern; the error says what is wrong, in a sentence for `check`.
    pub fn parse(text: &str) -> Result<UriPattern, String> {
        if text == "*" {
            return Ok(UriPattern { text: text.to_string(), segments: None });
        }
        if text.is_empty() {
            return Err("a resource pattern must not be empty".into());
        }
        let scheme_end = text.find(':');
        let scheme = scheme_end.map(|i| &text[..i]).unwrap_or("");
        if scheme.contains('*') {
            return Err(format!("the scheme of a resource pattern is literal ({scheme:?} holds `*`): a pattern never matches another scheme; \"*\" alone means every resource"));
        }
        if !is_scheme(scheme) {
            return Err("a resource pattern starts with its URI scheme (`file:`, `repo://`…); \"*\" alone means every resource".into());
        }
        if let Some(c) = text.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("a resource pattern holds {}: URIs with control or whitespace characters are never matched", crate::supply::describe_char(c)));
        }
        match refusal(text) {
            Some(Refused::DotSegment) => return Err("a resource pattern with a `.` or `..` segment matches nothing: URIs with dot segments are refused".into()),
            Some(Refused::EmptySegment) => return Err("a resource pattern with an empty path segment (`//` after the authority) matches nothing: such URIs are refused".into()),
            Some(Refused::Backslash) => return Err("a resource pattern with `\\` matches nothing: URIs with backslashes are refused".into()),
            Some(Refused::Encoded) => return Err("a resource pattern with a percent-encoded `/`, `.`, `\\`, NUL or `%` matches nothing: such URIs are refused".into()),
            Some(Refused::Control) | None => {}
        }
        let mut segments = Vec::new();
        for s in text.split('/') {
            if s == "**" {
                // `a/**/**/b` is `a/**/b`.
                if segments.last() != Some(&Seg::Any) {
                    segments.push(Seg::Any);
                }
            } else if s.contains("**") {
                return Err(format!("`**` must be a whole path segment (`repo://acme/**`), not part of {s:?}; `*` matches within one segment"));
            } else {
                segments.push(Seg::Glob(s.to_string()));
            }
        }
        Ok(UriPattern { text: text.to_string(), segments: Some(segments) })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `"*"`: every resource of the server.
    pub fn is_all(&self) -> bool {
        self.segments.is_none()
    }

    /// Whether the concrete `uri` is one this pattern grants.
    pub fn matches(&self, uri: &str) -> bool {
        let Some(p) = &self.segments else { return true };
        if refusal(uri).is_some() {
            return false;
        }
        let mut states = start(p);
        for u in uri.split('/') {
            states = step(p, &states, u);
            if !states.iter().any(|s| *s) {
                return false;
            }
        }
        states[p.len()]
    }

    /// Whether some URI that starts with `prefix` (the literal start of a URI template, up to
    /// its first `{`) could match: what decides whether a template is listed. Reads are still
    /// checked against the concrete URI.
    pub fn could_extend(&self, prefix: &str) -> bool {
        let Some(p) = &self.segments else { return true };
        if refusal(prefix).is_some() {
            return false;
        }
        let parts: Vec<&str> = prefix.split('/').collect();
        let (last, full) = parts.split_last().expect("split yields one part at least");
        let mut states = start(p);
        for u in full {
            states = step(p, &states, u);
        }
        p.iter().enumerate().any(|(i, seg)| {
            states[i]
                && match seg {
                    Seg::Any => true,
                    Seg::Glob(g) => glob_prefix(g, last),
                }
        })
    }
}

impl fmt::Debug for UriPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for UriPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The literal start of a URI template (RFC 6570): everything before its first `{`.
pub fn template_prefix(template: &str) -> &str {
    template.split('{').next().unwrap_or("")
}

/// `[A-Za-z][A-Za-z0-9+.-]*` (RFC 3986).
fn is_scheme(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic()) && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-'))
}

/// Why no pattern but `"*"` matches `uri`, if so.
pub fn refusal(uri: &str) -> Option<Refused> {
    if uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Some(Refused::Control);
    }
    if uri.contains('\\') {
        return Some(Refused::Backslash);
    }
    let bytes = uri.as_bytes();
    for (i, _) in uri.match_indices('%') {
        let code = bytes.get(i + 1..i + 3).map(|h| [h[0].to_ascii_uppercase(), h[1].to_ascii_uppercase()]);
        if matches!(code.as_ref().map(|c| &c[..]), Some(b"2F" | b"2E" | b"5C" | b"00" | b"25")) {
            return Some(Refused::Encoded);
        }
    }
    // Dot and empty segments count in the path only: the query and fragment are not resolved.
    let path = uri.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').collect();
    // `scheme://authority/…`: the empty segment of `//` and the authority are not path segments.
    let first_path = if segments.len() > 2 && segments[1].is_empty() { 3 } else { 1 };
    let n = segments.len();
    for (i, s) in segments.iter().enumerate().skip(1) {
        // `..;jsessionid=x` is `..` to servers that strip matrix parameters.
        let bare = s.split(';').next().unwrap_or("");
        if bare == "." || bare == ".." {
            return Some(Refused::DotSegment);
        }
        if i >= first_path && s.is_empty() && i + 1 < n {
            return Some(Refused::EmptySegment);
        }
    }
    None
}

/// The pattern positions reachable before any segment is read.
fn start(p: &[Seg]) -> Vec<bool> {
    let mut s = vec![false; p.len() + 1];
    s[0] = true;
    close(p, &mut s);
    s
}

/// `**` may match no segment: a reachable `**` makes the position after it reachable.
fn close(p: &[Seg], s: &mut [bool]) {
    for i in 0..p.len() {
        if s[i] && p[i] == Seg::Any {
            s[i + 1] = true;
        }
    }
}

/// Reads one URI segment.
fn step(p: &[Seg], states: &[bool], u: &str) -> Vec<bool> {
    let mut next = vec![false; p.len() + 1];
    for (i, seg) in p.iter().enumerate() {
        if !states[i] {
            continue;
        }
        match seg {
            Seg::Any => next[i] = true,
            Seg::Glob(g) if glob(g, u) => next[i + 1] = true,
            Seg::Glob(_) => {}
        }
    }
    close(p, &mut next);
    next
}

/// `*`-only glob over one segment: the literal pieces in order, the first at the start, the last
/// at the end (leftmost placement of the middle ones is enough for `*`).
fn glob(g: &str, s: &str) -> bool {
    let pieces: Vec<&str> = g.split('*').collect();
    if pieces.len() == 1 {
        return g == s;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if s.len() < first.len() + last.len() || !s.starts_with(first) || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Whether some continuation of `q` matches the glob `g`.
fn glob_prefix(g: &str, q: &str) -> bool {
    match g.split_once('*') {
        None => g.starts_with(q),
        // The first `*` can absorb whatever follows the literal start.
        Some((first, _)) => first.starts_with(q) || q.starts_with(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> UriPattern {
        UriPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn star_matches_within_one_segment() {
        let pat = p("demo://resource/static/document/*");
        assert!(pat.matches("demo://resource/static/document/1"));
        assert!(pat.matches("demo://resource/static/document/architecture.md"));
        assert!(pat.matches("demo://resource/static/document/"), "an empty last segment is a segment");
        assert!(!pat.matches("demo://resource/static/document/a/b"));
        assert!(!pat.matches("demo://resource/static/document"));
        assert!(!pat.matches("demo://resource/static/other/1"));
        let mid = p("file:///srv/*/README.md");
        assert!(mid.matches("file:///srv/app/README.md"));
        assert!(!mid.matches("file:///srv/app/sub/README.md"));
        let part = p("repo://acme/app/doc-*.md");
        assert!(part.matches("repo://acme/app/doc-1.md"));
        assert!(part.matches("repo://acme/app/doc-.md"));
        assert!(!part.matches("repo://acme/app/doc-1.txt"));
        assert!(!part.matches("repo://acme/app/x/doc-1.md"));
        let multi = p("x://h/a*b*c");
        assert!(multi.matches("x://h/abc") && multi.matches("x://h/a-b-b-c") && !multi.matches("x://h/acb"));
    }

    #[test]
    fn double_star_matches_across_segments() {
        let pat = p("repo://acme/app/**");
        assert!(pat.matches("repo://acme/app/src/main.rs"));
        assert!(pat.matches("repo://acme/app/x"));
        assert!(pat.matches("repo://acme/app"), "** matches zero segments");
        assert!(!pat.matches("repo://acme/application/x"));
        assert!(!pat.matches("repo://acme/other/app/x"));
        let mid = p("repo://acme/**/README.md");
        assert!(mid.matches("repo://acme/README.md"));
        assert!(mid.matches("repo://acme/a/b/c/README.md"));
        assert!(!mid.matches("repo://acme/a/b/c/README.txt"));
        let host = p("demo://**");
        assert!(host.matches("demo://anything/at/all") && !host.matches("other://anything"));
    }

    #[test]
    fn a_pattern_never_matches_another_scheme() {
        let pat = p("demo://resource/**");
        assert!(!pat.matches("demox://resource/a"));
        assert!(!pat.matches("evil:demo://resource/a"));
        assert!(!pat.matches("DEMO://resource/a"), "literal, case included: fail closed");
        assert!(!p("urn:isbn:*").matches("urn:issn:1"));
        assert!(p("urn:isbn:*").matches("urn:isbn:0451450523"));
        assert!(UriPattern::parse("*://resource/a").is_err());
        assert!(UriPattern::parse("de*mo://resource/a").is_err());
        assert!(UriPattern::parse("**").is_err());
        assert!(UriPattern::parse("resource/a").is_err());
        assert!(UriPattern::parse("//resource/a").is_err());
        assert!(UriPattern::parse("1x://a").is_err());
    }

    #[test]
    fn uris_that_resolve_elsewhere_are_refused() {
        let pat = p("file:///srv/public/**");
        for uri in [
            "file:///srv/public/../secret",
            "file:///srv/public/./x",
            "file:///srv/public/..",
            "file:///srv/public/..;x=1/secret",
            "file:///srv/public/%2e%2e/secret",
            "file:///srv/public/%2E%2E/secret",
            "file:///srv/public/..%2fsecret",
            "file:///srv/public/a%2Fb",
            "file:///srv/public/%5c..%5csecret",
            "file:///srv/public/a%00",
            "file:///srv/public/%252e%252e/secret",
            "file:///srv/public/a\\..\\secret",
            "file:///srv/public//etc/passwd",
            "file:///srv/public/a\nb",
            "file:///srv/public/a b",
        ] {
            assert!(!pat.matches(uri), "{uri:?} must not match");
            assert!(p("*").matches(uri), "\"*\" is every resource");
        }
        // Other percent-encodings are matched as written, never decoded.
        assert!(pat.matches("file:///srv/public/a%20b"));
        assert!(!p("file:///srv/public/a%2*").matches("file:///srv/public/a b"));
        // Dots in the query are not path segments; a trailing slash is not an empty segment.
        assert!(pat.matches("file:///srv/public/x?v=../.."));
        assert!(pat.matches("file:///srv/public/dir/"));
        assert!(pat.matches("file:///srv/public/...hidden"));
        // An empty authority is not an empty path segment.
        assert!(p("file:///**").matches("file:///etc/hosts"));
    }

    #[test]
    fn invalid_patterns_say_why() {
        let e = |s: &str| UriPattern::parse(s).unwrap_err();
        assert!(e("").contains("empty"));
        assert!(e("repo://acme/a**").contains("whole path segment"));
        assert!(e("repo://acme/***").contains("whole path segment"));
        assert!(e("repo://acme/../x").contains("dot segment"));
        assert!(e("repo://acme/%2e%2e/x").contains("percent-encoded"));
        assert!(e("repo://acme//x").contains("empty path segment"));
        assert!(e("repo://acme/a b").contains("whitespace"));
        assert!(e("*x").contains("scheme"));
        assert_eq!(p("repo://a/**/**/b").segments, p("repo://a/**/b").segments);
    }

    #[test]
    fn a_template_is_shown_when_its_literal_prefix_could_match() {
        let pat = p("demo://resource/static/document/*");
        let could = |t: &str| pat.could_extend(template_prefix(t));
        assert!(could("demo://resource/static/document/{name}"));
        assert!(could("demo://resource/static/doc{name}"), "the prefix may end inside a segment");
        assert!(could("demo://resource/{kind}/document/{name}"));
        assert!(could("demo://{path}"));
        assert!(could("{uri}"), "an empty prefix could produce anything");
        assert!(!could("demo://resource/dynamic/{id}"));
        assert!(!could("other://resource/static/document/{name}"));
        assert!(!could("demo://resource/static/document/a/{name}"), "one segment past the pattern");
        let glob = p("repo://acme/doc-*.md");
        assert!(glob.could_extend("repo://acme/doc-"));
        assert!(glob.could_extend("repo://acme/do"));
        assert!(glob.could_extend("repo://acme/doc-2024-"));
        assert!(!glob.could_extend("repo://acme/dx"));
        assert!(p("repo://acme/**").could_extend("repo://acme/a/b/c/"));
        assert!(!p("repo://acme/**").could_extend("repo://acme/../{x}"));
        assert!(p("*").could_extend("anything:{x}"));
    }

    #[test]
    fn matching_stays_linear_on_hostile_input() {
        let pat = p("x://h/**/*a*a*a*a*b/**/*c");
        let uri = format!("x://h/{}", vec!["a".repeat(200); 2000].join("/"));
        let t = std::time::Instant::now();
        assert!(!pat.matches(&uri));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
