//! Compiles one policy document (either rule style, or both mixed) into a [`Policy`].
//!
//! Every problem is reported with its position; the document is returned only when it has none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::load::Doc;
use super::locate::escape;
use super::raw;
use crate::diag::Diagnostics;
use crate::policy::cond::{OPERATORS, clean_path};
use crate::policy::{ArgPath, Check, CheckKind, Condition, Increment, Matcher, Op, Policy, Quota, Scope, ToolRules};
use crate::units::{Rate, Window};

/// A counter defined by a rules-style `state`: (scope, counter) → (window, where).
type Counters = HashMap<(String, String), (Window, String)>;

struct Ctx<'a> {
    doc: &'a Doc<'a>,
    diags: &'a mut Diagnostics,
    counters: Counters,
    errors: usize,
}

/// Compiles `doc`; None when it has errors (all of them recorded in `diags`).
pub fn compile_policy(doc: &Doc, diags: &mut Diagnostics) -> Option<Policy> {
    let before = diags.errors().count();
    let raw: raw::Policy = doc.typed("", &doc.value, diags)?;
    let file = doc.file.clone();
    let mut cx = Ctx { doc, diags, counters: Counters::new(), errors: 0 };

    match &raw.version {
        None => {}
        Some(Value::String(s)) if s == "1" => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(v) => cx.value_err("/version", format!("unsupported policy version {v}: expected \"1\"")),
    }
    let default_allow = match raw.default.as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(other) => {
            cx.value_err("/default", format!("invalid default {other:?}: expected deny or allow"));
            false
        }
    };
    let mut hidden = HashMap::new();
    for (i, tool) in raw.hide.iter().enumerate() {
        hidden.entry(tool.clone()).or_insert_with(|| Arc::from(format!("{file}#/hide/{i}")));
    }

    // Pass 1: typed entries, and the counters that rules-style `state` defines.
    let mut entries = Vec::new();
    for (tool, value) in &raw.tools {
        let ptr = format!("/tools/{}", escape(tool));
        if tool.is_empty() {
            cx.err(&ptr, "empty tool name");
        }
        if let Some(entry) = doc.typed::<raw::ToolEntry>(&ptr, value, cx.diags) {
            for (i, rule) in entry.rules.iter().enumerate() {
                if let Some(state) = &rule.state {
                    let at = format!("{ptr}/rules/{i}/state");
                    // An invalid window is reported once; the counter still counts as defined
                    // so that conditions reading it are not reported a second time.
                    let window = Window::parse(&state.window).unwrap_or_else(|e| {
                        cx.value_err(&format!("{at}/window"), e);
                        Window::Day
                    });
                    let key = (tool.clone(), state.counter.clone());
                    if let Some((_, first)) = cx.counters.get(&key) {
                        let msg = format!(
                            "counter {:?} of tool {tool:?} is already defined at {first}: give this one another name",
                            state.counter
                        );
                        cx.err(&format!("{at}/counter"), msg);
                    } else {
                        let first = format!("line {}", doc.loc().at(&at).line);
                        cx.counters.insert(key, (window, first));
                    }
                }
            }
            entries.push((tool.clone(), ptr, entry));
        } else {
            cx.errors += 1;
        }
    }

    // Pass 2: compile.
    let mut tools = HashMap::new();
    let mut wildcard = None;
    for (tool, ptr, entry) in entries {
        let rules = cx.entry(&tool, &ptr, entry);
        if tool == "*" {
            wildcard = Some(rules);
        } else {
            tools.insert(tool, rules);
        }
    }
    let mut all_tools_quotas = Vec::new();
    if let Some(all) = &raw.all_tools {
        let mut names = HashSet::new();
        for (i, limit) in all.limits.iter().enumerate() {
            let at = format!("/all_tools/limits/{i}");
            cx.unique_name(&mut names, limit.name.as_deref(), &at);
            if let Some(q) = cx.limit(&at, "/all_tools/limits", i, limit) {
                all_tools_quotas.push(Arc::new(q));
            }
        }
    }

    if cx.errors > 0 || cx.diags.errors().count() > before {
        return None;
    }
    Some(Policy {
        default_rule: Arc::from(format!("{file}#/default")),
        file,
        default_allow,
        hidden,
        tools,
        wildcard,
        all_tools_quotas,
    })
}

/// `<file>#<list>/<name or index>`, e.g. `policies/p.yaml#/tools/query/deny_if/0`.
fn rule_id(file: &str, list: &str, i: usize, name: Option<&str>) -> Arc<str> {
    match name {
        Some(n) => Arc::from(format!("{file}#{list}/{}", escape(n))),
        None => Arc::from(format!("{file}#{list}/{i}")),
    }
}

// === impl Ctx ===

impl Ctx<'_> {
    fn err(&mut self, ptr: &str, msg: impl Into<String>) {
        self.doc.error(self.diags, ptr, msg);
        self.errors += 1;
    }

    fn value_err(&mut self, ptr: &str, msg: impl Into<String>) {
        self.doc.value_error(self.diags, ptr, msg);
        self.errors += 1;
    }

    fn unique_name(&mut self, seen: &mut HashSet<String>, name: Option<&str>, at: &str) {
        if let Some(n) = name
            && !seen.insert(n.to_string()) {
                self.value_err(&format!("{at}/name"), format!("duplicate rule name {n:?}: rule names identify rules in the audit log and must be unique per tool"));
            }
    }

    fn entry(&mut self, tool: &str, ptr: &str, e: raw::ToolEntry) -> ToolRules {
        let file = self.doc.file.clone();
        let mut checks = Vec::new();
        let mut quotas = Vec::new();
        let mut names = HashSet::new();

        for (i, clause) in e.deny_if.iter().enumerate() {
            let at = format!("{ptr}/deny_if/{i}");
            self.unique_name(&mut names, clause.name.as_deref(), &at);
            let id = rule_id(&file, &format!("{ptr}/deny_if"), i, clause.name.as_deref());
            if clause.conditions.is_empty() {
                self.err(&format!("{at}/conditions"), "a deny_if clause needs at least one condition (to refuse the tool outright, leave it out of tools or hide it)");
            }
            let conds = self.conditions(&at, &clause.conditions);
            let message = clause.message.clone().or_else(|| clause.name.clone().map(|n| format!("denied by rule {n:?}")));
            let paths: Vec<&str> = clause.conditions.iter().map(|c| c.path.as_str()).collect();
            checks.push(Check {
                message: Arc::from(message.unwrap_or_else(|| format!("{} matched a deny_if rule", paths.join(" and ")))),
                id,
                kind: CheckKind::DenyIf(conds),
            });
        }
        for (i, c) in e.require.iter().enumerate() {
            let conds: Vec<Condition> = self.condition(&format!("{ptr}/require/{i}"), c).into_iter().collect();
            let shown = c.value.as_ref().map(|v| format!(" {v}")).unwrap_or_default();
            checks.push(Check {
                id: rule_id(&file, &format!("{ptr}/require"), i, None),
                message: Arc::from(format!("requirement not met: {} {}{shown}", c.path, c.op)),
                kind: CheckKind::Require(conds),
            });
        }
        for (i, limit) in e.limits.iter().enumerate() {
            let at = format!("{ptr}/limits/{i}");
            self.unique_name(&mut names, limit.name.as_deref(), &at);
            if let Some(q) = self.limit(&at, &format!("{ptr}/limits"), i, limit) {
                quotas.push(Arc::new(q));
            }
        }
        for (i, rule) in e.rules.iter().enumerate() {
            let at = format!("{ptr}/rules/{i}");
            self.unique_name(&mut names, rule.name.as_deref(), &at);
            self.rule(tool, ptr, &at, i, rule, &mut checks, &mut quotas);
        }
        ToolRules { id: Arc::from(format!("{file}#{ptr}")), checks, quotas }
    }

    #[allow(clippy::too_many_arguments)]
    fn rule(&mut self, tool: &str, ptr: &str, at: &str, i: usize, r: &raw::Rule, checks: &mut Vec<Check>, quotas: &mut Vec<Arc<Quota>>) {
        let file = self.doc.file.clone();
        let id = rule_id(&file, &format!("{ptr}/rules"), i, r.name.as_deref());
        let name = r.name.clone().unwrap_or_else(|| id.to_string());
        let message: Arc<str> = Arc::from(r.on_deny.clone().unwrap_or_else(|| format!("denied by rule {name:?}")));
        let per = self.per(at, r.per.as_deref());
        let conditions = r.conditions.as_deref().unwrap_or(&[]);

        // Intercept's two actions: `evaluate` (the default: the rule's conditions must hold) and `deny`.
        if let Some(action) = r.action.as_deref().filter(|a| *a != "evaluate") {
            if action != "deny" {
                self.value_err(&format!("{at}/action"), format!("invalid action {action:?}: expected evaluate (the default: the conditions must hold) or deny"));
                return;
            }
            if r.rate_limit.is_some() || r.state.is_some() {
                self.err(at, "action: deny cannot be combined with rate_limit or state");
            }
            let conds = self.conditions(at, conditions);
            let kind = if conds.is_empty() { CheckKind::DenyAlways } else { CheckKind::DenyIf(conds) };
            checks.push(Check { id, message, kind });
            return;
        }
        if let Some(rate) = &r.rate_limit {
            if r.state.is_some() || !conditions.is_empty() {
                self.err(at, "a rate_limit rule takes no conditions or state: write them as separate rules");
            }
            match Rate::parse(rate) {
                Ok(rate) => {
                    let path = Some(state_path(tool, &format!("_rate_{}", rate.window.as_str())));
                    let on_deny = r.on_deny.as_deref().map(Arc::from);
                    quotas.push(Arc::new(Quota { path, on_deny, ..Quota::rate(id, name, rate, per) }))
                }
                Err(e) => self.value_err(&format!("{at}/rate_limit"), e),
            }
            return;
        }
        if r.state.is_none() && conditions.is_empty() {
            self.err(at, "this rule does nothing: give it conditions, action: deny, rate_limit or state");
            return;
        }
        // Conditions on arguments are requirements; conditions on `state.` become counter caps.
        let mut arg_conds = Vec::new();
        let mut capped = false;
        for (j, c) in conditions.iter().enumerate() {
            let cat = format!("{at}/conditions/{j}");
            if let Some(rest) = c.path.strip_prefix("state.") {
                if let Some(q) = self.state_cap(tool, &cat, rest, c, r, &id, &name, per) {
                    capped = true;
                    quotas.push(Arc::new(Quota { on_deny: r.on_deny.as_deref().map(Arc::from), ..q }));
                }
            } else if let Some(cond) = self.condition(&cat, c) {
                arg_conds.push(cond);
            }
        }
        if let Some(state) = &r.state
            && !capped {
                // A counter that only counts (read by other rules' conditions).
                if let Some(q) = self.state_quota(tool, at, state, &id, &name, per, f64::INFINITY, true) {
                    quotas.push(Arc::new(q));
                }
            }
        if !arg_conds.is_empty() {
            checks.push(Check { id, message, kind: CheckKind::Require(arg_conds) });
        }
    }

    /// A `state.<scope>.<counter> lte|lt N` condition.
    #[allow(clippy::too_many_arguments)]
    fn state_cap(&mut self, tool: &str, at: &str, rest: &str, c: &raw::Condition, r: &raw::Rule, id: &Arc<str>, name: &str, per: Scope) -> Option<Quota> {
        let Some((scope, counter)) = rest.split_once('.') else {
            self.value_err(&format!("{at}/path"), format!("invalid counter path {:?}: expected state.<tool>.<counter>", c.path));
            return None;
        };
        // Intercept names the counters of the `"*"` tool `state._global.<counter>`.
        let scope = if scope == GLOBAL_SCOPE { "*" } else { scope };
        let Some(&(window, _)) = self.counters.get(&(scope.to_string(), counter.to_string())) else {
            self.value_err(
                &format!("{at}/path"),
                format!("counter {:?} is referenced but never defined: add state: {{ counter: {counter}, window: day }} to a rule of tool {scope:?}", c.path),
            );
            return None;
        };
        let inclusive = match c.op.as_str() {
            "lte" => true,
            "lt" => false,
            other => {
                self.value_err(&format!("{at}/op"), format!("operator {other:?} on a counter: counters support lt and lte (a cap)"));
                return None;
            }
        };
        let Some(max) = c.value.as_ref().and_then(Value::as_f64) else {
            self.value_err(&format!("{at}/value"), format!("operator {} needs a number", c.op));
            return None;
        };
        let defines_here = r.state.as_ref().is_some_and(|s| s.counter == counter) && scope == tool;
        if defines_here {
            let state = r.state.as_ref().expect("checked");
            return self.state_quota(tool, at, state, id, name, per, max, inclusive);
        }
        Some(Quota {
            id: id.clone(),
            name: name.to_string(),
            counter: counter_key(&self.doc.file, scope, counter),
            window,
            increment: Increment::Nothing,
            max,
            inclusive,
            per,
            path: Some(state_path(scope, counter)),
            on_deny: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn state_quota(&mut self, tool: &str, at: &str, s: &raw::State, id: &Arc<str>, name: &str, per: Scope, max: f64, inclusive: bool) -> Option<Quota> {
        let window = Window::parse(&s.window).ok()?; // reported in pass 1
        let increment = match (&s.increment_from, &s.increment) {
            (Some(_), Some(_)) => {
                self.err(at, "state takes increment_from or increment, not both");
                return None;
            }
            (Some(p), None) => Increment::Arg(self.arg_path(&format!("{at}/state/increment_from"), p)?),
            (None, Some(v)) => match v.as_f64() {
                Some(n) if n > 0.0 => Increment::Const(n),
                _ => {
                    self.value_err(&format!("{at}/state/increment"), "increment must be a positive number");
                    return None;
                }
            },
            (None, None) => Increment::One,
        };
        Some(Quota {
            id: id.clone(),
            name: name.to_string(),
            counter: counter_key(&self.doc.file, tool, &s.counter),
            window,
            increment,
            max,
            inclusive,
            per,
            path: Some(state_path(tool, &s.counter)),
            on_deny: None,
        })
    }

    fn per(&mut self, at: &str, per: Option<&str>) -> Scope {
        match per {
            None | Some("identity") => Scope::Identity,
            Some("server") => Scope::Server,
            Some("global") => Scope::Global,
            Some(other) => {
                self.value_err(&format!("{at}/per"), format!("invalid per {other:?}: expected identity, server or global"));
                Scope::Identity
            }
        }
    }

    /// A seed-style limit (also used for grant quotas).
    fn limit(&mut self, at: &str, list_ptr: &str, i: usize, l: &raw::Limit) -> Option<Quota> {
        compile_limit(self.doc, self.diags, at, list_ptr, i, l).or_else(|| {
            self.errors += 1;
            None
        })
    }

    fn arg_path(&mut self, at: &str, path: &str) -> Option<ArgPath> {
        match path.strip_prefix("args.").and_then(ArgPath::parse) {
            Some(p) => Some(p),
            None => {
                self.value_err(at, format!("invalid argument path {path:?}: expected args.<name>[.<name>…]"));
                None
            }
        }
    }

    fn conditions(&mut self, at: &str, conds: &[raw::Condition]) -> Vec<Condition> {
        conds.iter().enumerate().filter_map(|(j, c)| self.condition(&format!("{at}/conditions/{j}"), c)).collect()
    }

    /// One condition on an argument.
    fn condition(&mut self, at: &str, c: &raw::Condition) -> Option<Condition> {
        let at_path = format!("{at}/path");
        let path = if c.path.starts_with("state.") {
            self.value_err(&at_path, format!("{:?} reads a counter: counters can only be checked in a rules-style rule (rules: [{{ conditions: […], state: … }}])", c.path));
            None
        } else {
            self.arg_path(&at_path, &c.path)
        };
        let op = self.op(at, c);
        Some(Condition { path: path?, op: op? })
    }

    fn op(&mut self, at: &str, c: &raw::Condition) -> Option<Op> {
        let vat = format!("{at}/value");
        let v = c.value.as_ref();
        let need = |cx: &mut Self, what: &str| {
            cx.value_err(&vat, format!("operator {} needs {what}", c.op));
            None
        };
        let op = match c.op.as_str() {
            "eq" | "neq" | "contains" => match v {
                Some(v) if !v.is_null() => match c.op.as_str() {
                    "eq" => Op::Eq(v.clone()),
                    "neq" => Op::Neq(v.clone()),
                    _ => Op::Contains(v.clone()),
                },
                _ => return need(self, "a value"),
            },
            "in" | "not_in" => match v {
                Some(Value::Array(items)) if !items.is_empty() => {
                    if c.op == "in" { Op::In(items.clone()) } else { Op::NotIn(items.clone()) }
                }
                _ => return need(self, "a non-empty list of values"),
            },
            "lt" | "lte" | "gt" | "gte" => match v.and_then(Value::as_f64) {
                Some(n) => match c.op.as_str() {
                    "lt" => Op::Lt(n),
                    "lte" => Op::Lte(n),
                    "gt" => Op::Gt(n),
                    _ => Op::Gte(n),
                },
                None => return need(self, "a number"),
            },
            "regex" | "not_regex" => match v {
                Some(Value::String(p)) => match Matcher::new(p) {
                    Ok(m) => {
                        let leaf = c.path.rsplit('.').next().unwrap_or_default().to_ascii_lowercase();
                        if leaf.contains("path") || matches!(leaf.as_str(), "file" | "filename" | "dir" | "directory") {
                            self.doc.warning(
                                self.diags,
                                &format!("{at}/op"),
                                format!("a regex on {} is bypassed by paths such as /allowed/../../etc/passwd: use op: path_within with a list of directories", c.path),
                            );
                        }
                        if c.op == "regex" { Op::Regex(m) } else { Op::NotRegex(m) }
                    }
                    Err(e) => {
                        self.value_err(&vat, format!("invalid regex {p:?}: {e}"));
                        return None;
                    }
                },
                _ => return need(self, "a regex string"),
            },
            "exists" => match v {
                None => Op::Exists(true),
                Some(Value::Bool(b)) => Op::Exists(*b),
                Some(_) => return need(self, "true, false or no value"),
            },
            "path_within" => {
                let items: Vec<&Value> = match v {
                    Some(Value::Array(items)) if !items.is_empty() => items.iter().collect(),
                    Some(s @ Value::String(_)) => vec![s],
                    _ => return need(self, "a list of absolute directories"),
                };
                let mut prefixes = Vec::new();
                for (k, item) in items.iter().enumerate() {
                    let clean = item.as_str().and_then(clean_path);
                    match clean {
                        Some(p) => prefixes.push(p),
                        None => {
                            let iat = if matches!(v, Some(Value::Array(_))) { format!("{vat}/{k}") } else { vat.clone() };
                            self.value_err(&iat, format!("path_within needs absolute, normalised directories (no ., .., ~, %, \\): got {item}"));
                            return None;
                        }
                    }
                }
                Op::PathWithin(prefixes)
            }
            other => {
                self.value_err(&format!("{at}/op"), format!("unknown operator {other:?}: expected one of {OPERATORS}"));
                return None;
            }
        };
        Some(op)
    }
}

/// The scope name Intercept gives the counters of the `"*"` tool.
const GLOBAL_SCOPE: &str = "_global";

/// `state.<tool>.<counter>`, as Intercept names a counter (`_global` for the `"*"` tool).
fn state_path(tool: &str, counter: &str) -> String {
    let scope = if tool == "*" { GLOBAL_SCOPE } else { tool };
    format!("state.{scope}.{counter}")
}

fn counter_key(file: &str, scope: &str, counter: &str) -> String {
    format!("{file}#state/{scope}/{counter}")
}

/// Compiles a seed-style limit `{name, rate_limit}` / `{name, sum, max, window}` at `at`.
/// Shared with grant quotas.
pub fn compile_limit(doc: &Doc, diags: &mut Diagnostics, at: &str, list_ptr: &str, i: usize, l: &raw::Limit) -> Option<Quota> {
    let before = diags.errors().count();
    let id = rule_id(&doc.file, list_ptr, i, l.name.as_deref());
    let name = l.name.clone().unwrap_or_else(|| id.to_string());
    let per = match l.per.as_deref() {
        None | Some("identity") => Scope::Identity,
        Some("server") => Scope::Server,
        Some("global") => Scope::Global,
        Some(other) => {
            doc.value_error(diags, &format!("{at}/per"), format!("invalid per {other:?}: expected identity, server or global"));
            Scope::Identity
        }
    };
    let quota = match (&l.rate_limit, &l.sum) {
        (Some(_), Some(_)) => {
            doc.error(diags, at, "a limit takes rate_limit or sum, not both: write two limits");
            None
        }
        (None, None) => {
            doc.error(diags, at, "a limit needs rate_limit (e.g. 30/minute) or sum with max and window");
            None
        }
        (Some(rate), None) => {
            if l.max.is_some() || l.window.is_some() {
                doc.error(diags, at, "max and window go with sum; a rate_limit already says N/window");
            }
            match Rate::parse(rate) {
                Ok(rate) => Some(Quota::rate(id, name, rate, per)),
                Err(e) => {
                    doc.value_error(diags, &format!("{at}/rate_limit"), e);
                    None
                }
            }
        }
        (None, Some(sum)) => {
            let path = match sum.strip_prefix("args.").and_then(ArgPath::parse) {
                Some(p) => Some(p),
                None => {
                    doc.value_error(diags, &format!("{at}/sum"), format!("invalid argument path {sum:?}: expected args.<name>"));
                    None
                }
            };
            let max = match l.max.as_ref().and_then(Value::as_f64) {
                Some(m) if m > 0.0 => Some(m),
                _ => {
                    doc.error(diags, &format!("{at}/max"), "sum needs max: a positive number");
                    None
                }
            };
            let window = match l.window.as_deref().map(Window::parse) {
                Some(Ok(w)) => Some(w),
                Some(Err(e)) => {
                    doc.value_error(diags, &format!("{at}/window"), e);
                    None
                }
                None => {
                    doc.error(diags, at, "sum needs window: minute, hour or day");
                    None
                }
            };
            match (path, max, window) {
                (Some(path), Some(max), Some(window)) => Some(Quota {
                    counter: id.to_string(),
                    id,
                    name,
                    window,
                    increment: Increment::Arg(path),
                    max,
                    inclusive: true,
                    per,
                    path: None,
                    on_deny: None,
                }),
                _ => None,
            }
        }
    };
    if diags.errors().count() > before { None } else { quota }
}
