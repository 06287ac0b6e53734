//! `index.html`: one self-contained page (no script, no external asset) an auditor opens from the
//! bundle folder: the period, the commit range, the audit seq range, then one section per control
//! with each file's population, sha256 and a preview of its first rows.

use std::fmt::Write as _;

use serde_json::Value;

use super::write::cell_text;
use super::{Control, Format, Period, Written};

/// Longest cell text shown in a preview.
const MAX_CELL: usize = 160;

pub(crate) struct Summary<'a> {
    pub period: &'a Period,
    pub commits: &'a Value,
    pub audit: &'a Value,
    /// `{git: {repo, rev}, database: path | null, not_written: [{table, why}]}`.
    pub sources: &'a Value,
    pub generated_at: &'a str,
    pub format: Format,
}

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".to_string(),
        other => {
            let mut s = String::new();
            cell_text(other, &mut s);
            s
        }
    }
}

fn short(s: &str) -> String {
    if s.chars().count() <= MAX_CELL {
        return s.to_string();
    }
    let mut t: String = s.chars().take(MAX_CELL).collect();
    t.push('…');
    t
}

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#1b1f24}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #d0d7de;padding-bottom:.2em}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:12px}th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f6f8fa}.facts th{width:14em}.scroll{overflow-x:auto}.pop{font-weight:600}.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}.muted{color:#57606a}";

/// The page.
pub(crate) fn index(s: &Summary, files: &[Written]) -> String {
    let mut h = String::new();
    let p = s.period;
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>gatehouse evidence {} – {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&p.since),
        esc(&p.until)
    );
    let _ = write!(h, "<h1>gatehouse evidence</h1>\n<p class=\"muted\">{}</p>\n", esc(Control::Bundle.iso()));
    h.push_str("<table class=\"facts\">\n");
    let row = |h: &mut String, k: &str, v: &str| {
        let _ = writeln!(h, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
    };
    row(
        &mut h,
        "Period",
        &format!("<code>{}</code> (inclusive) to <code>{}</code> (exclusive), UTC", esc(&p.since), esc(&p.until)),
    );
    let c = s.commits;
    let hex = |v: &Value| v.as_str().map_or("—".to_string(), |x| format!("<code>{}</code>", esc(x)));
    row(
        &mut h,
        "Commit range",
        &format!(
            "{} commits of <code>{}</code> (first parent) in the period; state before it {}, at its end {}",
            c["count"],
            esc(c["rev"].as_str().unwrap_or("")),
            hex(&c["base"]),
            hex(&c["end"])
        ),
    );
    if let Some(cmd) = c["git_log"].as_str().filter(|x| !x.is_empty()) {
        row(&mut h, "Reproduce", &format!("<code>{}</code>", esc(cmd)));
    }
    row(&mut h, "Valid state at the end", &hex(&c["state_at_until"]));
    if let Some(skipped) = c["skipped_invalid"].as_array().filter(|v| !v.is_empty()) {
        row(
            &mut h,
            "Invalid commits skipped",
            &format!("{} (the gateway kept the previous valid state)", skipped.len()),
        );
    }
    let src = s.sources;
    row(
        &mut h,
        "Sources read",
        &format!(
            "git: <code>{}</code> of <code>{}</code>; state database: {}",
            esc(src["git"]["rev"].as_str().unwrap_or("")),
            esc(src["git"]["repo"].as_str().unwrap_or("")),
            match src["database"].as_str() {
                Some(db) => format!("<code>{}</code>", esc(db)),
                None => "<span class=\"bad\">not read</span> (none was given): no daemon records are in this bundle".to_string(),
            }
        ),
    );
    if let Some(missing) = src["not_written"].as_array().filter(|m| !m.is_empty()) {
        let tables: Vec<String> = missing.iter().map(|m| format!("<code>{}</code>", esc(m["table"].as_str().unwrap_or("")))).collect();
        let why = missing[0]["why"].as_str().unwrap_or("");
        row(&mut h, "Not in this bundle", &format!("{} ({})", tables.join(", "), esc(why)));
    }
    let a = s.audit;
    row(
        &mut h,
        "Audit seq range",
        &match (a["first_seq"].as_u64(), a["last_seq"].as_u64()) {
            _ if a["read"] == false => "not read: no state database".to_string(),
            (Some(f), Some(l)) => format!("seq {f} to {l}: {} records in the period", a["count"]),
            _ => "no call records in the period".to_string(),
        },
    );
    let chain = &a["chain"];
    let chain_text = if chain["intact"] == true {
        format!("<span class=\"ok\">intact</span>: {} records recomputed", chain["checked"])
    } else if chain.is_object() {
        format!(
            "<span class=\"bad\">broken at seq {}</span>: {}",
            chain["broken_at"],
            esc(chain["why"].as_str().unwrap_or(""))
        )
    } else {
        "—".to_string()
    };
    row(&mut h, "Hash chain", &chain_text);
    row(&mut h, "Generated", &format!("{} by gatehouse {}", esc(s.generated_at), env!("CARGO_PKG_VERSION")));
    row(
        &mut h,
        "Integrity",
        "<code>MANIFEST.json</code> holds the sha256 and size of every file of this folder; recompute them (e.g. <code>sha256sum *</code>) to check it.",
    );
    h.push_str("</table>\n");

    h.push_str("<h2>Contents</h2>\n<table>\n<tr><th>Control</th><th>ISO 27001:2022</th><th>File</th><th>Population</th></tr>\n");
    for w in files {
        let name = file_name(w);
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td><a href=\"{}\">{}</a></td><td class=\"pop\">{}</td></tr>",
            esc(w.control.name()),
            esc(w.control.title()),
            esc(w.control.iso()),
            esc(&name),
            esc(&name),
            w.population
        );
    }
    h.push_str("</table>\n");

    for control in Control::ALL {
        let _ = write!(
            h,
            "<section id=\"{}\">\n<h2>{} <span class=\"muted\">({})</span></h2>\n<p>{}</p>\n",
            esc(control.name()),
            esc(control.title()),
            esc(control.iso()),
            esc(control.description())
        );
        for t in control.tables() {
            if !files.iter().any(|w| w.table == *t) {
                let _ = writeln!(h, "<p class=\"bad\">{}: not in this bundle (no state database was read).</p>", esc(t));
            }
        }
        for w in files.iter().filter(|w| w.control == control) {
            let name = file_name(w);
            let _ = write!(
                h,
                "<h3><a href=\"{}\">{}</a></h3>\n<p>Population: <span class=\"pop\">{}</span> rows · {} bytes · sha256 <code>{}</code></p>\n",
                esc(&name),
                esc(&name),
                w.population,
                w.bytes,
                esc(&w.sha256)
            );
            if w.preview.is_empty() {
                h.push_str("<p class=\"muted\">No rows in the period.</p>\n");
                continue;
            }
            h.push_str("<div class=\"scroll\"><table>\n<tr>");
            for c in &w.columns {
                let _ = write!(h, "<th>{}</th>", esc(c));
            }
            h.push_str("</tr>\n");
            for r in &w.preview {
                h.push_str("<tr>");
                for v in r {
                    let _ = write!(h, "<td>{}</td>", esc(&short(&text(v))));
                }
                h.push_str("</tr>\n");
            }
            h.push_str("</table></div>\n");
            if (w.preview.len() as u64) < w.population {
                let _ = writeln!(
                    h,
                    "<p class=\"muted\">The first {} of {} rows; the file has them all.</p>",
                    w.preview.len(),
                    w.population
                );
            }
        }
        h.push_str("</section>\n");
    }
    let _ = write!(
        h,
        "<p class=\"muted\">Files are {}.</p>\n</body>\n</html>\n",
        match s.format {
            Format::Csv => "CSV (RFC 4180, every cell quoted, lists joined with “; ”)",
            Format::Json => "JSON (control, period, population, columns, rows)",
        }
    );
    h
}

fn file_name(w: &Written) -> String {
    w.path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string()
}
