//! Conditions on call arguments, evaluated in three-valued logic.
//!
//! A condition is `True`, `False` or `Unknown`. `Unknown` means the engine could not decide: the
//! argument is missing, has a different JSON type than the rule's value, a path was refused by
//! `path_within`, or a look-around regex hit its backtracking bound. Conditions combine with
//! Kleene AND (`False` wins over `Unknown`, which wins over `True`), and every rule kind turns
//! `Unknown` into a denial:
//! - `deny_if` (and `action: deny` with conditions) denies unless the conjunction is `False`;
//! - `require` (and rules-style `conditions`) denies unless the conjunction is `True`.
//!
//! So a missing argument or a type mismatch can never allow a call by accident.
//!
//! Per operator, with `a` the argument and `v` the rule's value:
//! - `exists` (value `true` by default, or `false`): `a` is present and not null; never Unknown.
//! - `eq`/`neq`: same JSON type → compare (numbers numerically); different type or missing → Unknown.
//! - `in`/`not_in`: `a` equal to some element of the same type → in; none of the same type → Unknown.
//! - `lt lte gt gte`: both numbers, else Unknown.
//! - `regex`/`not_regex`: `a` a string, else Unknown; backtracking bound hit → Unknown.
//! - `contains`: `a` a string and `v` a string → substring; `a` an array → some element equals `v`
//!   (same type); else Unknown.
//! - `path_within`: `a` a string that is an absolute, clean path (see [`clean_path`]) inside one of
//!   the prefixes (component-wise: `/srv/projects-evil` is not inside `/srv/projects`); a path that
//!   is not clean → Unknown.

use std::fmt;

use serde_json::Value;

/// Three-valued truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    True,
    False,
    Unknown,
}

/// A dotted path into the call arguments (`args.a.b` → `["a", "b"]`). A segment that is a
/// number also indexes arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgPath {
    segs: Vec<(String, Option<usize>)>,
}

/// A compiled regex: the linear-time `regex` crate when it can, a bounded backtracking engine for
/// look-around and back-references.
#[derive(Debug)]
pub enum Matcher {
    Linear(regex::Regex),
    Backtracking(fancy_regex::Regex),
}

/// A comparison operator with its (already type-checked) value.
#[derive(Debug)]
pub enum Op {
    Eq(Value),
    Neq(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Lt(f64),
    Lte(f64),
    Gt(f64),
    Gte(f64),
    Regex(Matcher),
    NotRegex(Matcher),
    Contains(Value),
    Exists(bool),
    /// Normalised absolute directory prefixes without trailing slash (`/` for the root).
    PathWithin(Vec<String>),
}

#[derive(Debug)]
pub struct Condition {
    pub path: ArgPath,
    pub op: Op,
}

/// The backtracking bound of look-around regexes. Hitting it yields `Unknown` (deny).
pub const BACKTRACK_LIMIT: usize = 100_000;

/// Every operator name, for error messages.
pub const OPERATORS: &str = "eq, neq, in, not_in, lt, lte, gt, gte, regex, not_regex, contains, exists, path_within";

// === impl Tri ===

impl Tri {
    fn from_bool(b: bool) -> Tri {
        if b { Tri::True } else { Tri::False }
    }


    /// Kleene conjunction of all conditions (`True` for an empty list).
    pub fn all(conds: &[Condition], args: &Value) -> Tri {
        let mut acc = Tri::True;
        for c in conds {
            match c.eval(args) {
                Tri::False => return Tri::False,
                Tri::Unknown => acc = Tri::Unknown,
                Tri::True => {}
            }
        }
        acc
    }
}

impl std::ops::Not for Tri {
    type Output = Tri;

    fn not(self) -> Tri {
        match self {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
        }
    }
}

// === impl ArgPath ===

impl ArgPath {
    /// Parses the part after `args.`; `None` if a segment is empty.
    pub fn parse(dotted: &str) -> Option<ArgPath> {
        let mut segs = Vec::new();
        for s in dotted.split('.') {
            if s.is_empty() {
                return None;
            }
            segs.push((s.to_string(), s.parse().ok()));
        }
        Some(ArgPath { segs })
    }

    /// The value at this path, if any.
    pub fn resolve<'a>(&self, args: &'a Value) -> Option<&'a Value> {
        let mut cur = args;
        for (key, idx) in &self.segs {
            cur = match cur {
                Value::Object(m) => m.get(key)?,
                Value::Array(a) => a.get((*idx)?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// The last segment (`args.file.path` → `path`).
    pub fn leaf(&self) -> &str {
        self.segs.last().map(|s| s.0.as_str()).unwrap_or("")
    }
}

impl fmt::Display for ArgPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("args")?;
        for (k, _) in &self.segs {
            write!(f, ".{k}")?;
        }
        Ok(())
    }
}

// === impl Matcher ===

impl Matcher {
    /// Compiles with the linear engine, falling back to the bounded backtracking engine only for
    /// features the linear one lacks (look-around, back-references).
    pub fn new(pattern: &str) -> Result<Matcher, String> {
        let linear = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .dfa_size_limit(1 << 20)
            .build();
        match linear {
            Ok(r) => Ok(Matcher::Linear(r)),
            Err(linear_err) => fancy_regex::RegexBuilder::new(pattern)
                .backtrack_limit(BACKTRACK_LIMIT)
                .delegate_size_limit(1 << 20)
                .delegate_dfa_size_limit(1 << 20)
                .build()
                .map(Matcher::Backtracking)
                .map_err(|_| one_line(&linear_err.to_string())),
        }
    }

    pub fn is_match(&self, s: &str) -> Tri {
        match self {
            Matcher::Linear(r) => Tri::from_bool(r.is_match(s)),
            Matcher::Backtracking(r) => match r.is_match(s) {
                Ok(b) => Tri::from_bool(b),
                Err(_) => Tri::Unknown,
            },
        }
    }
}

/// regex errors are multi-line drawings; keep the last line, which names the problem.
fn one_line(msg: &str) -> String {
    msg.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(msg).trim().trim_start_matches("error: ").to_string()
}

// === impl Condition ===

impl Condition {
    pub fn eval(&self, args: &Value) -> Tri {
        let found = self.path.resolve(args);
        if let Op::Exists(want) = self.op {
            let present = found.is_some_and(|v| !v.is_null());
            return Tri::from_bool(present == want);
        }
        let Some(a) = found else { return Tri::Unknown };
        match &self.op {
            Op::Eq(v) => json_eq(a, v),
            Op::Neq(v) => !json_eq(a, v),
            Op::In(list) => json_in(a, list),
            Op::NotIn(list) => !json_in(a, list),
            Op::Lt(v) => num(a, |x| x < *v),
            Op::Lte(v) => num(a, |x| x <= *v),
            Op::Gt(v) => num(a, |x| x > *v),
            Op::Gte(v) => num(a, |x| x >= *v),
            Op::Regex(m) => a.as_str().map_or(Tri::Unknown, |s| m.is_match(s)),
            Op::NotRegex(m) => a.as_str().map_or(Tri::Unknown, |s| !m.is_match(s)),
            Op::Contains(v) => contains(a, v),
            Op::PathWithin(prefixes) => match a.as_str().and_then(clean_path) {
                None => Tri::Unknown,
                Some(p) => Tri::from_bool(prefixes.iter().any(|pre| within(&p, pre))),
            },
            Op::Exists(_) => unreachable!("handled above"),
        }
    }
}

impl Condition {
    /// Why this condition evaluates to `Unknown` on `args`, for a denial's message (None when it
    /// does not). Names the argument and the reason, never the argument's value. Only called on
    /// the deny path.
    pub fn why_unknown(&self, args: &Value) -> Option<String> {
        if self.eval(args) != Tri::Unknown {
            return None;
        }
        let path = &self.path;
        let Some(a) = path.resolve(args) else { return Some(format!("{path} is missing")) };
        let kind = type_name(a);
        Some(match &self.op {
            Op::PathWithin(_) => match a.as_str() {
                None => format!("{path} must be a string path, not {kind}"),
                Some(p) => format!("{path} was refused: it {}", path_refusal(p).unwrap_or("cannot be normalised")),
            },
            Op::Regex(_) | Op::NotRegex(_) => match a.as_str() {
                None => format!("{path} must be a string for a regex, not {kind}"),
                Some(_) => format!("the regex on {path} gave up (it needs more backtracking than allowed)"),
            },
            Op::Lt(_) | Op::Lte(_) | Op::Gt(_) | Op::Gte(_) => format!("{path} must be a number, not {kind}"),
            Op::Eq(v) | Op::Neq(v) => format!("{path} is {kind}, compared with {}", type_name(v)),
            Op::In(_) | Op::NotIn(_) => format!("{path} is {kind}, and no listed value is"),
            Op::Contains(_) => format!("{path} is {kind}: contains needs a string or a list"),
            Op::Exists(_) => return None,
        })
    }
}

/// A JSON type with its article, for messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Why [`clean_path`] refuses `p` (completing "it …"), or None when it does not.
pub fn path_refusal(p: &str) -> Option<&'static str> {
    if !p.starts_with('/') {
        return Some("is not an absolute path");
    }
    if let Some(c) = p.chars().find(|c| matches!(c, '~' | '%' | '\\') || c.is_control()) {
        return Some(match c {
            '~' => "contains '~' (home directories are never expanded)",
            '%' => "contains '%' (percent-encodings are never decoded, so they are refused)",
            '\\' => "contains a backslash",
            '\0' => "contains a NUL character",
            _ => "contains a control character",
        });
    }
    match p.split('/').find(|c| *c == "." || *c == "..") {
        Some("..") => Some("contains a '..' component (it could climb out of the allowed directories)"),
        Some(_) => Some("contains a '.' component"),
        None => None,
    }
}

fn num(a: &Value, f: impl Fn(f64) -> bool) -> Tri {
    a.as_f64().map_or(Tri::Unknown, |x| Tri::from_bool(f(x)))
}

/// Whether two JSON values have the same type (all numbers are one type).
fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn json_eq(a: &Value, v: &Value) -> Tri {
    if !same_type(a, v) {
        return Tri::Unknown;
    }
    Tri::from_bool(values_equal(a, v))
}

fn values_equal(a: &Value, v: &Value) -> bool {
    match (a, v) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == v,
    }
}

fn json_in(a: &Value, list: &[Value]) -> Tri {
    let mut comparable = false;
    for v in list {
        if same_type(a, v) {
            comparable = true;
            if values_equal(a, v) {
                return Tri::True;
            }
        }
    }
    if comparable { Tri::False } else { Tri::Unknown }
}

fn contains(a: &Value, v: &Value) -> Tri {
    match (a, v) {
        (Value::String(s), Value::String(needle)) => Tri::from_bool(s.contains(needle.as_str())),
        (Value::Array(items), _) => json_in(v, items),
        _ => Tri::Unknown,
    }
}

/// Normalises an absolute path component by component, or refuses it.
///
/// Refused (None): not starting with `/`; any `.` or `..` component; any `~`, `%` (percent
/// encodings such as `%2e%2e` are never decoded here, so they are refused outright), `\`, NUL or
/// other control character. Repeated slashes collapse and a trailing slash is dropped.
pub fn clean_path(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    if p.chars().any(|c| matches!(c, '~' | '%' | '\\') || c.is_control()) {
        return None;
    }
    let mut out = String::with_capacity(p.len());
    for comp in p.split('/') {
        match comp {
            "" => {}
            "." | ".." => return None,
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn within(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.len() > prefix.len() && path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'/')
}

#[cfg(test)]
mod tests;
