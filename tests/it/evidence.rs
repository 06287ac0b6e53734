//! `gatehouse evidence` against a scripted history: a policy repository (in a subdirectory of its
//! git repository) whose commits have explicit authors, committers and times inside and outside
//! the period, merges of pull requests, a grant created, widened through a role, narrowed,
//! re-reviewed after an invalid commit, and revoked twice (file deleted, last token removed); and
//! a state database with call records, monitoring events, change records and a history rewrite.
//! Every export's columns and row counts are checked exactly; the bundle's manifest verifies and
//! stops verifying when a byte of a file flips.

use std::path::{Path, PathBuf};

use gatehouse::record::audit::CallRecord;
use gatehouse::evidence::{self, CALL_COLUMNS, Control, Format, Inputs, Table};
use gatehouse::record::store::Store;
use git2::{FileMode, Oid, Repository, Signature, Time};
use rusqlite::params;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SINCE: &str = "2026-11-01";
const UNTIL: &str = "2026-12-01";

/// Seconds since the epoch of a UTC day and hour.
fn at(date: &str, hour: i64) -> i64 {
    gatehouse::units::Date::parse(date).unwrap().days_since_epoch() * 86_400 + hour * 3600
}

fn token(name: &str) -> String {
    hex::encode(Sha256::digest(format!("evidence-token-{name}").as_bytes()))
}

/// A git repository whose policy repository is `policy/`, committed to with git2 only.
struct Script {
    dir: tempfile::TempDir,
    repo: Repository,
}

/// Who and when.
struct By<'a> {
    author: (&'a str, &'a str),
    committer: (&'a str, &'a str),
    time: i64,
    /// Minutes east of UTC that the signature is shown at.
    offset: i32,
}

fn by<'a>(name: &'a str, email: &'a str, time: i64) -> By<'a> {
    By { author: (name, email), committer: (name, email), time, offset: 0 }
}

impl Script {
    fn new() -> Script {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("policy")).unwrap();
        Script { dir, repo }
    }

    fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policy")
    }

    /// A commit with `parents` whose tree is the first parent's with `files` written (Some) or
    /// deleted (None); paths are inside `policy/` unless they start with `/`.
    fn commit(&self, parents: &[Oid], files: &[(&str, Option<&str>)], who: By, message: &str) -> Oid {
        let base = match parents.first() {
            Some(p) => self.repo.find_commit(*p).unwrap().tree().unwrap(),
            None => {
                let empty = self.repo.treebuilder(None).unwrap().write().unwrap();
                self.repo.find_tree(empty).unwrap()
            }
        };
        let mut b = git2::build::TreeUpdateBuilder::new();
        for (path, text) in files {
            let full = match path.strip_prefix('/') {
                Some(top) => top.to_string(),
                None => format!("policy/{path}"),
            };
            match text {
                Some(t) => {
                    let blob = self.repo.blob(t.as_bytes()).unwrap();
                    b.upsert(full, blob, FileMode::Blob);
                }
                None => {
                    b.remove(full);
                }
            }
        }
        let tree = self.repo.find_tree(b.create_updated(&self.repo, &base).unwrap()).unwrap();
        let a = Signature::new(who.author.0, who.author.1, &Time::new(who.time, who.offset)).unwrap();
        let c = Signature::new(who.committer.0, who.committer.1, &Time::new(who.time, who.offset)).unwrap();
        let parents: Vec<git2::Commit> = parents.iter().map(|p| self.repo.find_commit(*p).unwrap()).collect();
        let refs: Vec<&git2::Commit> = parents.iter().collect();
        self.repo.commit(None, &a, &c, message, &tree, &refs).unwrap()
    }

    /// Moves `main` (and HEAD) to `id`.
    fn main(&self, id: Oid) {
        self.repo.reference("refs/heads/main", id, true, "test").unwrap();
        self.repo.set_head("refs/heads/main").unwrap();
    }
}

const GITHUB: &str = "name: github
description: GitHub's hosted MCP server
transport: streamable-http
url: https://api.example.com/mcp/
supplier:
  operated_by: external
  vendor: GitHub, Inc.
  risk: high
  data: [source-code]
  agreement: MSA-2024-031
  reviewed: { on: 2026-10-02, by: sec@example.com }
tools:
  list_issues: { category: read }
  create_issue: { category: write }
  delete_repository: { category: destructive }
";

const PAYMENTS: &str = "name: payments
transport: stdio
command: [pay-server, --live]
supplier: { operated_by: external, vendor: Example Payments Ltd., risk: high, data: [payment-data] }
tools:
  list_charges: { category: read }
  create_charge: { category: financial }
";

const FILES: &str = "name: files
transport: stdio
command: [files-server]
supplier: { operated_by: internal, vendor: Platform team, risk: medium }
tools:
  read_file: { category: read }
  run_script: { category: execute }
";

fn grant(
    identity: &str,
    kind: &str,
    owner: &str,
    tokens: &[(&str, &str, &str)],
    access: &str,
    review: Option<(&str, &str)>,
) -> String {
    let mut s = format!("identity: {identity}\nkind: {kind}\nowner: {owner}\ntokens:\n");
    if tokens.is_empty() {
        s = format!("identity: {identity}\nkind: {kind}\nowner: {owner}\ntokens: []\n");
    }
    for (name, issued, expires) in tokens {
        let mut t = format!("  - {{ sha256: {}", token(name));
        if !issued.is_empty() {
            t.push_str(&format!(", issued: {issued}"));
        }
        if !expires.is_empty() {
            t.push_str(&format!(", expires: {expires}"));
        }
        s.push_str(&t);
        s.push_str(" }\n");
    }
    s.push_str(&format!("access:\n{access}"));
    if let Some((on, who)) = review {
        s.push_str(&format!("review: {{ on: {on}, by: {who} }}\n"));
    }
    s
}

/// The scripted history; returns the script and the commits by name.
fn history() -> (Script, std::collections::HashMap<&'static str, Oid>) {
    let s = Script::new();
    let mut ids = std::collections::HashMap::new();
    let alice = |tools: &str| {
        grant(
            "alice@example.com",
            "human",
            "alice@example.com",
            &[("alice", "2026-09-01", "2027-03-01")],
            &format!("  - {{ server: github, tools: [{tools}] }}\n"),
            Some(("2026-09-15", "carol@example.com")),
        )
    };
    let bob = |tokens: &[(&str, &str, &str)]| {
        grant("bob-bot", "agent", "alice@example.com", tokens, "  - role: repo-reader\n", None)
    };
    let dave = |review: &str| {
        grant(
            "dave@example.com",
            "human",
            "dave@example.com",
            &[("dave", "2026-06-01", "2026-11-30")],
            "  - { server: payments, tools: [create_charge] }\n",
            Some((review, "carol@example.com")),
        )
    };
    let erin = grant(
        "erin@example.com",
        "human",
        "erin@example.com",
        &[("erin", "", "")],
        "  - { server: github, tools: [list_issues] }\n",
        None,
    );
    let gina = grant(
        "gina-bot",
        "agent",
        "frank@example.com",
        &[("gina", "2026-11-03", "2027-02-01")],
        "  - { server: files, tools: [read_file, run_script] }\n",
        None,
    );
    let role = |tools: &str| format!("description: Read issues\naccess:\n  - {{ server: github, tools: [{tools}] }}\n");

    // Before the period.
    let c0 = s.commit(
        &[],
        &[
            ("/README.md", Some("# policy\n")),
            ("servers/github.yaml", Some(GITHUB)),
            ("servers/payments.yaml", Some(PAYMENTS)),
            ("servers/files.yaml", Some(FILES)),
            ("roles/repo-reader.yaml", Some(&role("list_issues"))),
            ("grants/alice.yaml", Some(&alice("list_issues, create_issue"))),
            ("grants/bob.yaml", Some(&bob(&[("bob", "", "")]))),
            ("grants/dave.yaml", Some(&dave("2026-09-15"))),
        ],
        by("Admin", "admin@example.com", at("2026-10-01", 9)),
        "Initial policy repository",
    );
    let c1 = s.commit(
        &[c0],
        &[("grants/erin.yaml", Some(&erin))],
        by("Erin", "erin@example.com", at("2026-10-20", 9)),
        "Grant erin (#10)",
    );
    // In the period: a pull request creating gina, merged by carol.
    let f1 = s.commit(
        &[c1],
        &[("grants/gina.yaml", Some(&gina))],
        by("Frank", "frank@example.com", at("2026-11-03", 10)),
        "Add gina-bot",
    );
    let m1 = s.commit(
        &[c1, f1],
        &[("grants/gina.yaml", Some(&gina))],
        By {
            author: ("Carol", "carol@example.com"),
            committer: ("GitHub", "noreply@github.com"),
            time: at("2026-11-03", 12),
            offset: 120,
        },
        "Merge pull request #11 from org/gina\n\nAdd gina-bot",
    );
    // The role widens bob (authored by alice, committed by bob: a squash merge).
    let c2 = s.commit(
        &[m1],
        &[("roles/repo-reader.yaml", Some(&role("list_issues, create_issue")))],
        By {
            author: ("Alice", "alice@example.com"),
            committer: ("Bob", "bob@example.com"),
            time: at("2026-11-05", 9),
            offset: -300,
        },
        "Readers may open issues (#12)",
    );
    let c3 = s.commit(
        &[c2],
        &[("grants/alice.yaml", Some(&alice("list_issues")))],
        by("Carol", "carol@example.com", at("2026-11-10", 9)),
        "Narrow alice (#13)",
    );
    // An invalid commit (the gateway rejects it), then the fix that also re-reviews dave.
    let c4 = s.commit(
        &[c3],
        &[("grants/dave.yaml", Some(&(dave("2026-11-12") + "colour: blue\n")))],
        by("Dave", "dave@example.com", at("2026-11-12", 9)),
        "Review dave",
    );
    let c5 = s.commit(
        &[c4],
        &[("grants/dave.yaml", Some(&dave("2026-11-13")))],
        by("Dave", "dave@example.com", at("2026-11-13", 9)),
        "Fix dave's review",
    );
    // A pull request revoking erin.
    let f2 = s.commit(
        &[c5],
        &[("grants/erin.yaml", None)],
        by("Henry", "henry@example.com", at("2026-11-19", 9)),
        "Revoke erin",
    );
    let m2 = s.commit(
        &[c5, f2],
        &[("grants/erin.yaml", None)],
        By {
            author: ("Carol", "carol@example.com"),
            committer: ("GitHub", "noreply@github.com"),
            time: at("2026-11-20", 9),
            offset: 0,
        },
        "Merge pull request #14 from org/revoke-erin",
    );
    // Not an access change (and outside the policy repository).
    let c7 = s.commit(
        &[m2],
        &[("/README.md", Some("# policy\n\nSee docs.\n")), ("/other/notes.txt", Some("x"))],
        by("Ivan", "ivan@example.com", at("2026-11-25", 9)),
        "Docs",
    );
    // bob's last token removed: revoked.
    let c8 = s.commit(
        &[c7],
        &[("grants/bob.yaml", Some(&bob(&[])))],
        by("Alice", "alice@example.com", at("2026-11-27", 9)),
        "Revoke bob-bot's token (#15)",
    );
    // After the period.
    let c9 = s.commit(
        &[c8],
        &[("grants/alice.yaml", None)],
        by("Carol", "carol@example.com", at("2026-12-05", 9)),
        "Remove alice (#16)",
    );
    s.main(c9);
    for (k, v) in [
        ("c0", c0),
        ("c1", c1),
        ("f1", f1),
        ("m1", m1),
        ("c2", c2),
        ("c3", c3),
        ("c4", c4),
        ("c5", c5),
        ("f2", f2),
        ("m2", m2),
        ("c7", c7),
        ("c8", c8),
        ("c9", c9),
    ] {
        ids.insert(k, v);
    }
    (s, ids)
}

/// One call record (seq, hashes are assigned by the log).
#[allow(clippy::too_many_arguments)]
fn rec(
    ts: &str,
    identity: &str,
    server: &str,
    tool: &str,
    category: Option<&str>,
    verdict: &str,
    outcome: &str,
    latency: Option<u64>,
) -> CallRecord {
    CallRecord {
        seq: 0,
        ts: ts.into(),
        replica: "gw-1".into(),
        session: "s-1".into(),
        identity: identity.into(),
        grant: format!("grants/{}.yaml", identity.split('@').next().unwrap()),
        auth: "token".into(),
        kind: "tool".into(),
        server: server.into(),
        tool: tool.into(),
        category: category.map(str::to_string),
        arg_keys: vec!["a".into(), "b.c".into()],
        verdict: verdict.into(),
        rule: if verdict == "deny" { "gatehouse:tool-not-granted".into() } else { "grants/x.yaml#/access/0".into() },
        message: if verdict == "deny" { "=HYPERLINK(\"x\")".into() } else { "allowed".into() },
        policy_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        snapshot_digest: "d".repeat(64),
        outcome: outcome.into(),
        latency_ms: latency,
        prev_hash: String::new(),
        hash: None,
    }
}

/// The scripted call log: 2 records before the period, 12 in it, 3 after.
fn call_log() -> Vec<CallRecord> {
    let d = |day: &str, t: &str| format!("2026-{day}T{t}.000Z");
    vec![
        rec(
            &d("10-31", "23:59:58"),
            "alice@example.com",
            "github",
            "list_issues",
            Some("read"),
            "allow",
            "unknown",
            None,
        ),
        rec(
            &d("10-31", "23:59:59"),
            "alice@example.com",
            "github",
            "list_issues",
            Some("read"),
            "allow",
            "ok",
            Some(5),
        ),
        // In the period.
        rec(
            &d("11-02", "10:00:00"),
            "alice@example.com",
            "github",
            "list_issues",
            Some("read"),
            "allow",
            "unknown",
            None,
        ),
        rec(
            &d("11-02", "10:00:01"),
            "alice@example.com",
            "github",
            "list_issues",
            Some("read"),
            "allow",
            "ok",
            Some(12),
        ),
        rec(
            &d("11-03", "10:00:00"),
            "dave@example.com",
            "payments",
            "create_charge",
            Some("financial"),
            "allow",
            "unknown",
            None,
        ),
        rec(
            &d("11-03", "10:00:01"),
            "dave@example.com",
            "payments",
            "create_charge",
            Some("financial"),
            "allow",
            "ok",
            Some(30),
        ),
        rec(
            &d("11-04", "10:00:00"),
            "dave@example.com",
            "payments",
            "create_charge",
            Some("financial"),
            "deny",
            "denied",
            None,
        ),
        rec(
            &d("11-05", "10:00:00"),
            "bob-bot",
            "github",
            "delete_repository",
            Some("destructive"),
            "deny",
            "denied",
            None,
        ),
        rec(&d("11-06", "10:00:00"), "gina-bot", "files", "run_script", Some("execute"), "allow", "unknown", None),
        rec(
            &d("11-06", "10:00:01"),
            "gina-bot",
            "files",
            "run_script",
            Some("execute"),
            "allow",
            "upstream_error",
            Some(40),
        ),
        rec(&d("11-07", "10:00:00"), "gina-bot", "files", "read_file", Some("read"), "allow", "unknown", None),
        rec(&d("11-07", "10:00:30"), "gina-bot", "files", "read_file", Some("read"), "allow", "timeout", Some(30_000)),
        rec(&d("11-08", "10:00:00"), "mallory", "ghost", "exfiltrate", None, "deny", "denied", None),
        rec(
            "2026-11-30T23:59:59.999Z",
            "alice@example.com",
            "github",
            "create_issue",
            Some("write"),
            "allow",
            "unknown",
            None,
        ),
        // After the period (the outcome of the last call lands on the boundary).
        rec(
            "2026-12-01T00:00:00.000Z",
            "alice@example.com",
            "github",
            "create_issue",
            Some("write"),
            "allow",
            "ok",
            Some(3),
        ),
        rec(&d("12-02", "10:00:00"), "bob-bot", "github", "list_issues", Some("read"), "allow", "unknown", None),
        rec(&d("12-02", "10:00:01"), "bob-bot", "github", "list_issues", Some("read"), "allow", "ok", Some(4)),
    ]
}

/// A state database with the call log, events, change records and rewrites.
fn state(ids: &std::collections::HashMap<&'static str, Oid>) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let records = call_log();
    // (commit, status, recorded_at, pull request, access diff, errors, applied_at)
    type Change<'a> = (String, &'a str, &'a str, Option<i64>, Value, Vec<&'a str>, Option<&'a str>);
    let commits: Vec<Change> = vec![
        (
            ids["c1"].to_string(),
            "applied",
            "2026-10-20T09:00:02.000Z",
            Some(10),
            json!({ "gained": [], "lost": [] }),
            vec![],
            Some("2026-10-20T09:00:02.000Z"),
        ),
        (
            ids["m1"].to_string(),
            "applied",
            "2026-11-03T12:00:02.000Z",
            Some(11),
            json!({ "gained": [ { "identity": "gina-bot", "server": "files", "tool": "read_file" } ], "lost": [] }),
            vec![],
            Some("2026-11-03T12:00:02.000Z"),
        ),
        (ids["c3"].to_string(), "superseded", "2026-11-12T09:00:02.000Z", Some(13), Value::Null, vec![], None),
        (
            ids["c4"].to_string(),
            "rejected",
            "2026-11-12T09:00:02.000Z",
            None,
            Value::Null,
            vec!["grants/dave.yaml:12:1: error: unknown field `colour`"],
            None,
        ),
        (
            ids["c9"].to_string(),
            "applied",
            "2026-12-05T09:00:02.000Z",
            Some(16),
            json!({ "gained": [], "lost": [] }),
            vec![],
            Some("2026-12-05T09:00:02.000Z"),
        ),
    ];
    store
        .write_blocking(move |c| {
            for r in records {
                gatehouse::record::audit::log::append_in(c, r)?;
            }
            for (ts, who) in [("2026-10-15T10:00:00.000Z", "dave@example.com"), ("2026-11-04T10:00:00.000Z", "dave@example.com"), ("2026-11-15T10:00:00.000Z", "gina-bot"), ("2026-12-03T10:00:00.000Z", "bob-bot")] {
                let detail = json!({ "rule": "policies/p.yaml#/tools/x/limits/cap", "quota": "cap", "limit": "1/minute", "identity": who, "server": "payments", "tool": "create_charge" });
                c.sqlite().unwrap().execute("INSERT INTO events (ts, kind, detail) VALUES (?1, 'quota_exceeded', ?2)", params![ts, detail.to_string()])?;
            }
            // A rug pull on github, and one on a server that is not registered at the end.
            for (ts, server) in [("2026-11-20T10:00:00.000Z", "github"), ("2026-11-22T10:00:00.000Z", "ghost"), ("2026-12-02T10:00:00.000Z", "github")] {
                let detail = json!({ "server": server, "tool": "create_issue", "reason": "definition-changed", "pinned_sha256": "a", "offered_sha256": "b" });
                c.sqlite().unwrap().execute("INSERT INTO events (ts, kind, detail) VALUES (?1, 'tool_quarantined', ?2)", params![ts, detail.to_string()])?;
            }
            for (commit, status, recorded, pr, diff, errors, applied) in commits {
                c.sqlite().unwrap().execute(
                    "INSERT INTO changes (commit_id, parents, author, author_time, committer, commit_time, message, pull_request,
                                          signed, files, access_diff, status, errors, applied_at, recorded_at)
                     VALUES (?1, '[]', 'A <a@example.com>', ?2, 'A <a@example.com>', ?2, 'message\nbody', ?3, '{\"present\":false,\"verified\":false}',
                             '[\"grants/x.yaml\"]', ?4, ?5, ?6, ?7, ?2)",
                    params![commit, recorded, pr, diff.to_string(), status, serde_json::to_string(&errors).unwrap(), applied],
                )?;
            }
            c.sqlite().unwrap().execute(
                "INSERT INTO rewrites (old_tip, new_tip, vanished, detected_at, accepted_at, accepted_by, reason)
                 VALUES ('aaaa', 'bbbb', '[\"cccc\"]', '2026-11-21T10:00:00.000Z', '2026-11-21T11:00:00.000Z', 'ops', 'squashed a secret')",
                [],
            )?;
            c.sqlite().unwrap().execute("INSERT INTO rewrites (old_tip, new_tip, vanished, detected_at) VALUES ('bbbb', 'dddd', '[]', '2026-12-02T10:00:00.000Z')", [])?;
            Ok::<(), gatehouse::record::store::sql::Error>(())
        })
        .unwrap();
    data
}

fn inputs(s: &Script, data: &Path) -> Inputs {
    Inputs::new(s.policy_dir(), data, SINCE, UNTIL)
}

fn col(t: &Table, name: &str) -> usize {
    t.columns.iter().position(|c| *c == name).unwrap_or_else(|| panic!("{} has no column {name}", t.name))
}

fn cell<'a>(t: &'a Table, row: usize, name: &str) -> &'a Value {
    &t.rows[row][col(t, name)]
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

/// A small RFC 4180 reader: records of fields (quotes, doubled quotes, CRLF).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => panic!("unquoted character {c:?} in a CSV cell"),
        }
    }
    assert!(record.is_empty() && field.is_empty(), "the file ends with a complete record");
    records
}

#[test]
fn access_review_is_the_valid_state_at_the_end_of_the_period() {
    let (s, ids) = history();
    let data = state(&ids);
    let t = evidence::access_review(&inputs(&s, data.path())).unwrap();
    assert_eq!(
        t.columns,
        [
            "identity",
            "grant",
            "kind",
            "owner",
            "tools",
            "categories",
            "privileged_tools",
            "tokens",
            "token_issued",
            "token_expires",
            "token_status",
            "review_on",
            "review_by",
            "review_age_days",
            "as_of_commit"
        ]
    );
    assert_eq!(t.population, 4, "alice, bob-bot, dave, gina-bot (erin revoked, alice's removal is after the period)");
    let who: Vec<&str> = t.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(who, ["alice@example.com", "bob-bot", "dave@example.com", "gina-bot"]);
    assert_eq!(strs(cell(&t, 0, "tools")), ["github/list_issues (read)"]);
    assert_eq!(
        strs(cell(&t, 1, "tools")),
        ["github/create_issue (write)", "github/list_issues (read)"],
        "widened through the role"
    );
    assert_eq!(cell(&t, 1, "token_status"), "none");
    assert_eq!(cell(&t, 1, "owner"), "alice@example.com");
    assert_eq!(cell(&t, 1, "kind"), "agent");
    assert_eq!(strs(cell(&t, 2, "privileged_tools")), ["payments/create_charge"]);
    assert_eq!(strs(cell(&t, 2, "categories")), ["financial"]);
    assert_eq!(cell(&t, 2, "token_status"), "expired", "expires 2026-11-30, the period's last day");
    assert_eq!(strs(cell(&t, 2, "token_issued")), ["2026-06-01"]);
    assert_eq!(strs(cell(&t, 2, "token_expires")), ["2026-11-30"]);
    assert_eq!(cell(&t, 2, "review_on"), "2026-11-13");
    assert_eq!(cell(&t, 2, "review_by"), "carol@example.com");
    assert_eq!(cell(&t, 2, "review_age_days"), 17);
    assert_eq!(strs(cell(&t, 3, "categories")), ["execute", "read"]);
    assert_eq!(strs(cell(&t, 3, "tokens")), [format!("sha256:{}", &token("gina")[..12])]);
    assert!(t.rows.iter().all(|r| r[col(&t, "as_of_commit")] == ids["c8"].to_string()));

    // Just after the invalid commit: the state of the last valid one, and the skip is stated.
    let mut i = inputs(&s, data.path());
    i.until = "2026-11-12T12:00:00Z".into();
    let t = evidence::access_review(&i).unwrap();
    assert_eq!(t.population, 5, "erin still there");
    assert_eq!(t.source["commit"], ids["c3"].to_string());
    assert_eq!(t.source["skipped_invalid"], json!([ids["c4"].to_string()]));
    assert_eq!(cell(&t, 2, "review_on"), "2026-09-15");

    // A commit exactly at --until is after the period.
    i.until = "2026-11-10T09:00:00Z".into();
    assert_eq!(evidence::access_review(&i).unwrap().source["commit"], ids["c2"].to_string());

    // A period that ends in the future: statuses as of today, not as of its last day (a token
    // that expires on 2027-02-01 is not expired in a review run before then), and it says so.
    i.until = "2100-01-01".into();
    let t = evidence::access_review(&i).unwrap();
    let today = gatehouse::units::Date::today();
    assert_eq!(t.source["status_as_of"], today.to_string());
    assert_eq!(t.source["status_as_of_is"], "today (the period ends in the future)");
    let gina = t.rows.iter().position(|r| r[0] == "gina-bot").unwrap();
    let want = if today < gatehouse::units::Date::parse("2027-02-01").unwrap() { "active" } else { "expired" };
    assert_eq!(cell(&t, gina, "token_status"), want);
    i.until = UNTIL.into();
    assert_eq!(evidence::access_review(&i).unwrap().source["status_as_of_is"], "the last day of the period");
}

#[test]
fn provisioning_lists_every_grant_change_of_the_period() {
    let (s, ids) = history();
    let data = state(&ids);
    let t = evidence::provisioning(&inputs(&s, data.path())).unwrap();
    assert_eq!(
        t.columns,
        [
            "identity",
            "grant",
            "change",
            "commit",
            "date",
            "author",
            "committer",
            "pull_request",
            "merged_authors",
            "subject",
            "gained",
            "lost",
            "tokens_added",
            "tokens_removed",
            "tokens_changed",
            "review"
        ]
    );
    let view: Vec<(String, String, String, Value)> = t
        .rows
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[2].as_str().unwrap().to_string(),
                r[3].as_str().unwrap().to_string(),
                r[7].clone(),
            )
        })
        .collect();
    let row = |who: &str, change: &str, commit: &str, pr: Value| {
        (who.to_string(), change.to_string(), ids[commit].to_string(), pr)
    };
    assert_eq!(
        view,
        [
            row("alice@example.com", "narrowed", "c3", json!(13)),
            row("bob-bot", "widened", "c2", json!(12)),
            row("bob-bot", "revoked", "c8", json!(15)),
            row("dave@example.com", "re-reviewed", "c5", Value::Null),
            row("erin@example.com", "revoked", "m2", json!(14)),
            row("gina-bot", "created", "m1", json!(11)),
        ]
    );
    assert_eq!(t.population, 6);
    // alice narrowed by carol; bob widened through the role, authored by alice, committed by bob.
    assert_eq!(strs(cell(&t, 0, "lost")), ["github/create_issue"]);
    assert_eq!(cell(&t, 0, "author"), "Carol <carol@example.com>");
    assert_eq!(strs(cell(&t, 1, "gained")), ["github/create_issue"]);
    assert_eq!(cell(&t, 1, "author"), "Alice <alice@example.com>");
    assert_eq!(cell(&t, 1, "committer"), "Bob <bob@example.com>");
    assert_eq!(cell(&t, 1, "date"), "2026-11-05T09:00:00Z", "UTC whatever the signature's offset");
    assert_eq!(strs(cell(&t, 2, "tokens_removed")), [format!("sha256:{} (issued -, expires -)", &token("bob")[..12])]);
    assert_eq!(cell(&t, 3, "review"), "2026-11-13 by carol@example.com");
    assert_eq!(cell(&t, 3, "subject"), "Fix dave's review");
    // Pull requests: the merge commit, its merger, and who wrote the merged commits.
    assert_eq!(strs(cell(&t, 4, "merged_authors")), ["Henry <henry@example.com>"]);
    assert_eq!(strs(cell(&t, 5, "merged_authors")), ["Frank <frank@example.com>"]);
    assert_eq!(cell(&t, 5, "committer"), "GitHub <noreply@github.com>");
    assert_eq!(strs(cell(&t, 5, "gained")), ["files/read_file", "files/run_script"]);
    assert_eq!(
        strs(cell(&t, 5, "tokens_added")),
        [format!("sha256:{} (issued 2026-11-03, expires 2027-02-01)", &token("gina")[..12])]
    );
    assert_eq!(t.source["commits"], 8, "m1 c2 c3 c4 c5 m2 c7 c8 on the first-parent chain; not f1, f2 or c9");

    // A period that starts with no history at all: everything is created.
    let mut i = inputs(&s, data.path());
    i.since = "2026-01-01".into();
    i.until = "2026-10-21".into();
    let t = evidence::provisioning(&i).unwrap();
    let created: Vec<&str> = t.rows.iter().map(|r| r[2].as_str().unwrap()).collect();
    assert_eq!(created, ["created"; 4], "alice, bob, dave, erin");
}

#[test]
fn call_log_exports_count_exactly() {
    let (s, ids) = history();
    let data = state(&ids);
    let i = inputs(&s, data.path());

    let calls = evidence::calls(&i).unwrap();
    assert_eq!(calls.columns, CALL_COLUMNS);
    assert_eq!(calls.population, 12);
    assert_eq!(calls.rows.len(), 12);
    let seqs: Vec<u64> = calls.rows.iter().map(|r| r[0].as_u64().unwrap()).collect();
    assert_eq!(seqs, (3..=14).collect::<Vec<_>>());
    assert_eq!(
        calls.source,
        json!({ "first_seq": 3, "last_seq": 14, "count": 12, "replicas": [{ "replica": "gw-1", "count": 12, "first_seq": 3, "last_seq": 14 }] })
    );
    assert_eq!(calls.rows[0][col(&calls, "arg_keys")], json!(["a", "b.c"]));
    assert_eq!(calls.rows[0][col(&calls, "hash")].as_str().unwrap().len(), 64);

    let privileged = evidence::privileged(&i).unwrap();
    assert_eq!(privileged.columns, CALL_COLUMNS);
    assert_eq!(privileged.population, 6, "2 financial + 1 financial denial + 1 destructive + 2 execute");
    let cats: Vec<&str> = privileged.rows.iter().map(|r| r[col(&privileged, "category")].as_str().unwrap()).collect();
    assert_eq!(cats, ["financial", "financial", "financial", "destructive", "execute", "execute"]);

    let events = evidence::events(&i).unwrap();
    assert_eq!(events.columns, ["id", "ts", "kind", "identity", "server", "tool", "rule", "detail"]);
    assert_eq!(events.population, 4, "two quota events and two quarantines in the period");
    assert_eq!(cell(&events, 0, "identity"), "dave@example.com");
    assert_eq!(cell(&events, 1, "kind"), "quota_exceeded");
    assert_eq!(cell(&events, 2, "kind"), "tool_quarantined");
    assert_eq!(cell(&events, 2, "server"), "github");

    let changes = evidence::changes(&i).unwrap();
    assert_eq!(
        changes.columns,
        [
            "commit",
            "source",
            "author",
            "author_time",
            "committer",
            "commit_time",
            "pull_request",
            "message",
            "parents",
            "files",
            "signed",
            "signer",
            "valid",
            "gained",
            "lost",
            "errors",
            "status",
            "applied_at",
            "recorded_at"
        ]
    );
    // Every first-parent commit of the period from git, with the daemon's record where it has one.
    let commits: Vec<&str> = changes.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    let want: Vec<String> = ["m1", "c2", "c3", "c4", "c5", "m2", "c7", "c8"].iter().map(|k| ids[*k].to_string()).collect();
    assert_eq!(commits, want);
    let statuses: Vec<Value> = changes.rows.iter().map(|r| r[col(&changes, "status")].clone()).collect();
    assert_eq!(statuses, [json!("applied"), Value::Null, json!("superseded"), json!("rejected"), Value::Null, Value::Null, Value::Null, Value::Null]);
    let sources: Vec<&str> = changes.rows.iter().map(|r| r[1].as_str().unwrap()).collect();
    assert_eq!(sources, ["git+daemon", "git", "git+daemon", "git+daemon", "git", "git", "git", "git"]);
    assert_eq!(strs(cell(&changes, 0, "gained")), ["gina-bot: files/read_file", "gina-bot: files/run_script"], "from git: everything the merge granted");
    assert_eq!(strs(cell(&changes, 1, "gained")), ["bob-bot: github/create_issue"], "the role widened bob");
    assert_eq!(cell(&changes, 3, "valid"), false);
    assert_eq!(cell(&changes, 3, "gained"), &Value::Null, "an invalid commit changes nothing");
    let errors = strs(cell(&changes, 3, "errors"));
    assert!(errors[0].starts_with("grants/dave.yaml:9:1: error: unknown field `colour`"), "git's own compile error first: {errors:?}");
    assert_eq!(errors[1], "grants/dave.yaml:12:1: error: unknown field `colour`", "then what the daemon recorded");
    assert_eq!(cell(&changes, 4, "valid"), true);
    assert_eq!(strs(cell(&changes, 5, "lost")), ["erin@example.com: github/list_issues"]);
    assert_eq!(cell(&changes, 0, "signed"), "unsigned");
    assert_eq!(cell(&changes, 0, "pull_request"), 11);
    assert_eq!(cell(&changes, 0, "recorded_at"), "2026-11-03T12:00:02.000Z");
    assert!(changes.source["statement"].as_str().unwrap().starts_with("8 first-parent commits of HEAD committed in the period, from git; 3 change records"), "{}", changes.source);

    let rewrites = evidence::rewrites(&i).unwrap();
    assert_eq!(
        rewrites.columns,
        ["id", "detected_at", "old_tip", "new_tip", "vanished", "accepted_at", "accepted_by", "reason"]
    );
    assert_eq!(rewrites.population, 1);
    assert_eq!(cell(&rewrites, 0, "reason"), "squashed a secret");

    let suppliers = evidence::suppliers(&i).unwrap();
    assert_eq!(
        suppliers.columns,
        [
            "server",
            "registered",
            "description",
            "transport",
            "endpoint",
            "operated_by",
            "vendor",
            "risk",
            "data",
            "agreement",
            "reviewed_on",
            "reviewed_by",
            "tools",
            "privileged_tools",
            "pin",
            "pinned_tools",
            "calls",
            "allowed",
            "denials",
            "errors",
            "definition_changes",
            "as_of_commit"
        ]
    );
    let traffic: Vec<(String, String, u64, u64, u64, u64)> = suppliers
        .rows
        .iter()
        .map(|r| {
            let n = |k: &str| r[col(&suppliers, k)].as_u64().unwrap();
            (
                r[0].as_str().unwrap().into(),
                r[1].as_str().unwrap().into(),
                n("calls"),
                n("allowed"),
                n("denials"),
                n("errors"),
            )
        })
        .collect();
    let t = |s: &str, reg: &str, c, a, d, e| (s.to_string(), reg.to_string(), c, a, d, e);
    assert_eq!(
        traffic,
        [
            t("files", "yes", 2, 2, 0, 2),
            t("github", "yes", 3, 2, 1, 0),
            t("payments", "yes", 2, 1, 1, 0),
            t("ghost", "no", 1, 0, 1, 0)
        ]
    );
    assert_eq!(suppliers.population, 4);
    assert_eq!(cell(&suppliers, 1, "vendor"), "GitHub, Inc.");
    assert_eq!(cell(&suppliers, 1, "agreement"), "MSA-2024-031");
    assert_eq!(cell(&suppliers, 1, "reviewed_on"), "2026-10-02");
    assert_eq!(strs(cell(&suppliers, 1, "privileged_tools")), ["delete_repository"]);
    assert_eq!(cell(&suppliers, 1, "pin"), "optional");
    let changes_of: Vec<(String, u64)> =
        suppliers.rows.iter().map(|r| (r[0].as_str().unwrap().to_string(), r[col(&suppliers, "definition_changes")].as_u64().unwrap())).collect();
    assert_eq!(changes_of, [("files".into(), 0), ("github".into(), 1), ("payments".into(), 0), ("ghost".into(), 1)], "only events inside the period count");
    assert_eq!(cell(&suppliers, 2, "endpoint"), "pay-server --live");
    // Every call of the period is accounted for by exactly one supplier row.
    let decisions = calls
        .rows
        .iter()
        .filter(|r| r[col(&calls, "verdict")] == "deny" || r[col(&calls, "latency_ms")].is_null())
        .count();
    assert_eq!(traffic.iter().map(|x| x.2).sum::<u64>(), decisions as u64);
}

#[test]
fn files_state_their_population_in_csv_and_json() {
    let (s, ids) = history();
    let data = state(&ids);
    let i = inputs(&s, data.path());
    let out = tempfile::tempdir().unwrap();

    let written = evidence::export(&i, Control::Calls, Format::Csv, out.path()).unwrap();
    let names: Vec<String> =
        written.iter().map(|w| w.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["calls.csv", "events.csv"]);
    assert_eq!((written[0].population, written[1].population), (12, 4));
    let text = std::fs::read_to_string(out.path().join("calls.csv")).unwrap();
    assert!(text.contains("\r\n") && text.starts_with("\"seq\",\"ts\","), "RFC 4180 with a quoted header");
    let csv = parse_csv(&text);
    assert_eq!(csv[0], CALL_COLUMNS);
    assert_eq!(csv.len(), 1 + 12);
    assert!(csv.iter().skip(1).all(|r| r.len() == CALL_COLUMNS.len()));
    let message = CALL_COLUMNS.iter().position(|c| *c == "message").unwrap();
    assert_eq!(csv[6][message], "'=HYPERLINK(\"x\")", "a formula is neutralised, quotes doubled");
    let arg_keys = CALL_COLUMNS.iter().position(|c| *c == "arg_keys").unwrap();
    assert_eq!(csv[1][arg_keys], "a; b.c", "lists joined");
    let sidecar: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("calls.csv.manifest.json")).unwrap()).unwrap();
    assert_eq!(sidecar["population"], 12);
    assert_eq!(sidecar["sha256"], hex::encode(Sha256::digest(text.as_bytes())));
    assert_eq!(sidecar["period"], json!({ "since": "2026-11-01T00:00:00.000Z", "until": "2026-12-01T00:00:00.000Z" }));

    for control in
        [Control::AccessReview, Control::Provisioning, Control::Privileged, Control::Changes, Control::Suppliers]
    {
        let dir = tempfile::tempdir().unwrap();
        let written = evidence::export(&i, control, Format::Json, dir.path()).unwrap();
        let tables = evidence::tables(&i, control).unwrap();
        assert_eq!(written.len(), tables.len());
        for (w, t) in written.iter().zip(&tables) {
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(&w.path).unwrap()).unwrap();
            assert_eq!(doc["control"], control.name());
            assert_eq!(doc["table"], t.name);
            assert_eq!(doc["population"], t.population, "{}", t.name);
            assert_eq!(doc["rows"].as_array().unwrap().len() as u64, t.population);
            assert_eq!(doc["columns"], json!(t.columns));
            assert_eq!(doc["period"]["since"], "2026-11-01T00:00:00.000Z");
            for (row, expected) in doc["rows"].as_array().unwrap().iter().zip(&t.rows) {
                let keys: Vec<&String> = row.as_object().unwrap().keys().collect();
                assert_eq!(keys.len(), t.columns.len());
                for (k, v) in t.columns.iter().zip(expected) {
                    assert_eq!(&row[*k], v);
                }
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let w = evidence::export(&i, Control::Calls, Format::Json, dir.path()).unwrap();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&w[0].path).unwrap()).unwrap();
    assert_eq!((doc["population"].as_u64(), doc["rows"].as_array().unwrap().len()), (Some(12), 12));
    assert_eq!(doc["source"]["first_seq"], 3);
}

#[test]
fn bundle_has_every_export_an_index_and_a_manifest_that_verifies() {
    let (s, ids) = history();
    let data = state(&ids);
    let i = inputs(&s, data.path());
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("bundle");
    let b = evidence::bundle(&i, Format::Csv, &dir).unwrap();
    let populations: Vec<(&str, u64)> = b.files.iter().map(|w| (w.table, w.population)).collect();
    assert_eq!(
        populations,
        [
            ("access-review", 4),
            ("provisioning", 6),
            ("privileged", 6),
            ("calls", 12),
            ("events", 4),
            ("changes", 8),
            ("rewrites", 1),
            ("suppliers", 4)
        ]
    );
    // Each CSV holds exactly its population.
    for w in &b.files {
        let rows = parse_csv(&std::fs::read_to_string(&w.path).unwrap());
        assert_eq!(rows.len() as u64, 1 + w.population, "{}", w.table);
        assert_eq!(rows[0], w.columns, "{}", w.table);
    }
    let m = &b.manifest;
    assert_eq!(m["period"], json!({ "since": "2026-11-01T00:00:00.000Z", "until": "2026-12-01T00:00:00.000Z" }));
    assert_eq!(m["commits"]["base"], ids["c1"].to_string());
    assert_eq!(m["commits"]["end"], ids["c8"].to_string());
    assert_eq!(m["commits"]["first"], ids["m1"].to_string());
    assert_eq!(m["commits"]["count"], 8);
    assert_eq!(m["commits"]["git_log"], format!("git log --first-parent {}..{} -- policy", ids["c1"], ids["c8"]));
    assert_eq!(m["audit"]["first_seq"], 3);
    assert_eq!(m["audit"]["last_seq"], 14);
    assert_eq!(m["audit"]["count"], 12);
    assert_eq!(m["audit"]["chain"]["intact"], true);
    assert_eq!(m["audit"]["chain"]["checked"], 12);
    assert_eq!(m["audit"]["chain"]["linked_to_previous"], true);
    let listed: Vec<&str> = m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        listed,
        [
            "access-review.csv",
            "provisioning.csv",
            "privileged.csv",
            "calls.csv",
            "events.csv",
            "changes.csv",
            "rewrites.csv",
            "suppliers.csv",
            "index.html"
        ]
    );
    assert_eq!(evidence::verify_manifest(&dir).unwrap(), 9);

    // index.html: self-contained, one section per control with its population and a preview.
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for tag in ["html", "head", "body", "table", "section", "tr", "style"] {
        assert_eq!(
            html.matches(&format!("<{tag}")).count(),
            html.matches(&format!("</{tag}>")).count(),
            "<{tag}> balanced"
        );
    }
    assert_eq!(html.matches("<section").count(), 6);
    for control in Control::ALL {
        assert!(html.contains(&format!("<section id=\"{}\">", control.name())));
    }
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("src="), "no external assets");
    assert!(html.contains("Population: <span class=\"pop\">12</span>"));
    assert!(html.contains(&ids["c8"].to_string()));
    assert!(html.contains("seq 3 to 14"));
    assert!(html.contains("=HYPERLINK(&quot;x&quot;)"), "cells escaped");

    // A flipped byte in any file, or an extra file, fails verification.
    let calls = dir.join("calls.csv");
    let mut bytes = std::fs::read(&calls).unwrap();
    let k = bytes.len() / 2;
    bytes[k] ^= 0x01;
    std::fs::write(&calls, &bytes).unwrap();
    let err = evidence::verify_manifest(&dir).unwrap_err().to_string();
    assert!(err.contains("calls.csv: sha256"), "{err}");
    bytes[k] ^= 0x01;
    std::fs::write(&calls, &bytes).unwrap();
    evidence::verify_manifest(&dir).unwrap();
    std::fs::write(dir.join("extra.csv"), "x").unwrap();
    assert!(evidence::verify_manifest(&dir).unwrap_err().to_string().contains("extra.csv: not listed"));

    // A second bundle into a folder holding anything else is refused; an earlier bundle is replaced.
    assert!(evidence::bundle(&i, Format::Csv, &dir).is_err());
    std::fs::remove_file(dir.join("extra.csv")).unwrap();
    let again = evidence::bundle(&i, Format::Json, &dir).unwrap();
    assert_eq!(again.files.len(), 8);
    assert_eq!(evidence::verify_manifest(&dir).unwrap(), 9);
    assert!(!dir.join("calls.csv").exists());
}

#[test]
fn a_tampered_call_log_is_exported_whole_and_flagged() {
    let (s, ids) = history();
    let data = state(&ids);
    let c = rusqlite::Connection::open(data.path().join("gatehouse.db")).unwrap();
    c.execute(
        "UPDATE call_rows SET verdict = (SELECT id FROM vals WHERE v = 'allow') WHERE seq = 7",
        [],
    )
    .unwrap();
    drop(c);
    let out = tempfile::tempdir().unwrap();
    let b = evidence::bundle(&inputs(&s, data.path()), Format::Csv, &out.path().join("b")).unwrap();
    assert_eq!(b.manifest["audit"]["chain"]["intact"], false);
    assert_eq!(b.manifest["audit"]["chain"]["broken_at"], 7);
    assert_eq!(b.files.iter().find(|w| w.table == "calls").unwrap().population, 12, "still every record");
    let html = std::fs::read_to_string(out.path().join("b/index.html")).unwrap();
    assert!(html.contains("broken at seq 7"));
    // The command line's exit code says so (the evidence is still written).
    let mut printed = Vec::new();
    let code =
        evidence::command(&inputs(&s, data.path()), Control::Bundle, Format::Csv, &out.path().join("b"), &mut printed)
            .unwrap();
    assert_eq!(code, 1);
    assert!(String::from_utf8(printed).unwrap().starts_with("warning: the call log's hash chain is broken at seq 7"));
}

#[test]
fn the_command_prints_each_file_with_its_population() {
    let (s, ids) = history();
    let data = state(&ids);
    let out = tempfile::tempdir().unwrap();
    let mut printed = Vec::new();
    let code =
        evidence::command(&inputs(&s, data.path()), Control::Calls, Format::Json, out.path(), &mut printed).unwrap();
    assert_eq!(code, 0);
    let text = String::from_utf8(printed).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "period 2026-11-01T00:00:00.000Z to 2026-12-01T00:00:00.000Z (exclusive)");
    assert_eq!(lines[1], format!("{}\t12 rows\tcalls (A.8.15, A.8.16)", out.path().join("calls.json").display()));
    assert_eq!(lines[2], format!("{}\t4 rows\tcalls (A.8.15, A.8.16)", out.path().join("events.json").display()));
    assert!(out.path().join("events.json.manifest.json").exists());
    // Bad periods are refused before anything is read.
    let mut i = inputs(&s, data.path());
    i.until = "2026-10-01".into();
    assert!(evidence::command(&i, Control::Calls, Format::Csv, out.path(), &mut Vec::new()).is_err());
}

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random history with every kind of change, including commits the gateway rejects (a broken
/// grant, a missing role, a duplicate identity or token, a server still in use deleted, a bad
/// test case, a token-shaped string in a README) and their fixes; returns the repository and the
/// commit times.
fn random_history(seed: u64, commits: usize) -> Script {
    let s = Script::new();
    let mut rng = Rng(seed);
    let server = |n: usize, tools: usize, baseline: Option<usize>| {
        let mut y = format!("name: s{n}\ntransport: stdio\ncommand: [srv]\nsupplier: {{ operated_by: internal }}\n");
        if let Some(p) = baseline {
            y.push_str(&format!("policy: policies/p{p}.yaml\n"));
        }
        y.push_str("tools:\n");
        for t in 0..tools {
            y.push_str(&format!(
                "  t{t}: {{ category: {} }}\n",
                ["read", "write", "destructive", "execute", "financial"][t % 5]
            ));
        }
        y
    };
    let policy = |listed: usize, hide: bool, allow: bool| {
        let mut y = format!("default: {}\n", if allow { "allow" } else { "deny" });
        if hide {
            y.push_str("hide: [t1]\n");
        }
        y.push_str("tools:\n");
        for t in 0..listed {
            y.push_str(&format!(
                "  t{t}: {{ deny_if: [ {{ conditions: [ {{ path: args.q, op: regex, value: \"(?i)drop\" }} ] }} ] }}\n"
            ));
        }
        if listed == 0 {
            y.push_str("  t0: {}\n");
        }
        y
    };
    let role = |srv: usize, tools: &[usize]| {
        let list: Vec<String> = tools.iter().map(|t| format!("t{t}")).collect();
        format!("access:\n  - {{ server: s{srv}, tools: [{}] }}\n", list.join(", "))
    };
    let grant = |id: &str,
                 tok: u64,
                 srv: usize,
                 tools: &[usize],
                 role: Option<usize>,
                 pol: Option<usize>,
                 review: u32| {
        let list: Vec<String> = tools.iter().map(|t| format!("t{t}")).collect();
        let mut y = format!(
            "identity: {id}\nkind: human\nowner: {id}\ntokens: [ {{ sha256: {}, expires: 2027-0{}-01 }} ]\naccess:\n  - server: s{srv}\n    tools: [{}]\n",
            token(&tok.to_string()),
            1 + tok % 9,
            list.join(", ")
        );
        if let Some(p) = pol {
            y.push_str(&format!("    policy: policies/p{p}.yaml\n"));
        }
        if let Some(r) = role {
            y.push_str(&format!("  - role: r{r}\n"));
        }
        y.push_str(&format!("review: {{ on: 2026-0{}-1{}, by: rev@example.com }}\n", 1 + review % 9, review % 10));
        y
    };
    let mut files: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for n in 0..6 {
        files.insert(format!("servers/s{n}.yaml"), server(n, 4, None));
    }
    for n in 0..4 {
        files.insert(format!("policies/p{n}.yaml"), policy(3, false, false));
    }
    for n in 0..3 {
        files.insert(format!("roles/r{n}.yaml"), role(n, &[0, 1]));
    }
    files.insert(
        "tests/t.yaml".into(),
        "cases:\n  - { name: a, identity: u0, server: s0, tool: t0, expect: deny }\n".into(),
    );
    let next_grant = std::cell::Cell::new(0usize);
    let new_grant = |rng: &mut Rng, files: &mut std::collections::BTreeMap<String, String>| {
        let n = next_grant.get();
        next_grant.set(n + 1);
        let tools: Vec<usize> = (0..1 + rng.below(3)).map(|_| rng.below(4)).collect();
        let role = (rng.below(3) == 0).then(|| rng.below(3));
        let pol = (rng.below(3) == 0).then(|| rng.below(4));
        files.insert(
            format!("grants/u{n}.yaml"),
            grant(&format!("u{n}"), n as u64 * 1000, rng.below(6), &tools, role, pol, rng.below(90) as u32),
        );
    };
    for _ in 0..12 {
        new_grant(&mut rng, &mut files);
    }
    let to_commit = |files: &std::collections::BTreeMap<String, String>,
                     old: &std::collections::BTreeMap<String, String>| {
        let mut change: Vec<(String, Option<String>)> = Vec::new();
        for (p, t) in files {
            if old.get(p) != Some(t) {
                change.push((p.clone(), Some(t.clone())));
            }
        }
        for p in old.keys().filter(|p| !files.contains_key(*p)) {
            change.push((p.clone(), None));
        }
        change
    };
    let commit = |s: &Script, parent: Option<Oid>, change: &[(String, Option<String>)], time: i64, msg: &str| {
        let refs: Vec<(&str, Option<&str>)> = change.iter().map(|(p, t)| (p.as_str(), t.as_deref())).collect();
        let parents: Vec<Oid> = parent.into_iter().collect();
        s.commit(&parents, &refs, by("Gen", "gen@example.com", time), msg)
    };
    let t0 = at("2026-10-01", 0);
    let empty = std::collections::BTreeMap::new();
    let mut tip = commit(&s, None, &to_commit(&files, &empty), t0, "initial");
    let mut broken: Option<std::collections::BTreeMap<String, String>> = None;
    for n in 0..commits {
        let before = files.clone();
        let grants: Vec<String> = files.keys().filter(|p| p.starts_with("grants/")).cloned().collect();
        let pick = |rng: &mut Rng| grants[rng.below(grants.len())].clone();
        let op = if broken.is_some() && rng.below(3) == 0 { 99 } else { rng.below(14) };
        match op {
            0 | 1 => new_grant(&mut rng, &mut files),
            2..=4 if !grants.is_empty() => {
                // Edit a grant: tools, role, policy, token or review.
                let g = pick(&mut rng);
                let n: usize = g.trim_start_matches("grants/u").trim_end_matches(".yaml").parse().unwrap();
                let tools: Vec<usize> = (0..1 + rng.below(4)).map(|_| rng.below(5)).collect();
                let role = (rng.below(3) == 0).then(|| rng.below(3));
                let pol = (rng.below(3) == 0).then(|| rng.below(4));
                // Tokens are n·1000 + a version: a rotation never collides with another grant.
                let tok = n as u64 * 1000 + rng.below(3) as u64;
                files.insert(g, grant(&format!("u{n}"), tok, rng.below(6), &tools, role, pol, rng.below(90) as u32));
            }
            5 if grants.len() > 3 => {
                files.remove(&pick(&mut rng));
            }
            6 => {
                let r = rng.below(3);
                let tools: Vec<usize> = (0..1 + rng.below(3)).map(|_| rng.below(5)).collect();
                files.insert(format!("roles/r{r}.yaml"), role(rng.below(6), &tools));
            }
            7 => {
                let p = rng.below(4);
                files.insert(format!("policies/p{p}.yaml"), policy(rng.below(5), rng.below(3) == 0, rng.below(4) == 0));
            }
            8 => {
                let srv = rng.below(6);
                files.insert(
                    format!("servers/s{srv}.yaml"),
                    server(srv, 2 + rng.below(4), (rng.below(3) == 0).then(|| rng.below(4))),
                );
            }
            9 => {
                files.insert("README.md".into(), format!("revision {n}\n"));
            }
            10 => {
                files.insert(
                    "tests/t.yaml".into(),
                    format!("cases:\n  - {{ name: a{n}, identity: u1, server: s1, tool: t0, expect: deny }}\n"),
                );
            }
            11..=13 if broken.is_none() && !grants.is_empty() => {
                broken = Some(files.clone());
                let g = pick(&mut rng);
                match rng.below(7) {
                    0 => {
                        files.insert(g, "identity: [unclosed\n".into());
                    }
                    1 => {
                        let t = files[&g].replace("access:\n", "access:\n  - role: nope\n");
                        files.insert(g, t);
                    }
                    2 => {
                        // A second file with the same identity.
                        let t = files[&g].clone();
                        let id = t.lines().next().unwrap().trim_start_matches("identity: ").to_string();
                        files.insert("grants/dup.yaml".into(), grant(&id, 999_999, 0, &[0], None, None, 1));
                    }
                    3 => {
                        // A token hash already used by another grant.
                        let t = files[&g].clone();
                        files.insert(
                            "grants/dup.yaml".into(),
                            t.replace("identity: u", "identity: copy-of-u").replace("owner: u", "owner: copy-of-u"),
                        );
                    }
                    4 => {
                        files.remove("servers/s0.yaml");
                        files.remove("servers/s1.yaml");
                    }
                    5 => {
                        files.insert(
                            "tests/t.yaml".into(),
                            "cases:\n  - { name: a, identity: u0, server: s0, tool: t0, expect: maybe }\n".into(),
                        );
                    }
                    _ => {
                        files.insert("README.md".into(), format!("key: ghp_{}\n", "a".repeat(36)));
                    }
                }
            }
            99 => {
                // Fix: back to the files before the break, keeping what changed since elsewhere.
                let good = broken.take().unwrap();
                for p in ["grants/dup.yaml", "README.md", "tests/t.yaml", "servers/s0.yaml", "servers/s1.yaml"] {
                    match good.get(p) {
                        Some(t) => files.insert(p.to_string(), t.clone()),
                        None => files.remove(p),
                    };
                }
                for g in files.keys().filter(|p| p.starts_with("grants/")).cloned().collect::<Vec<_>>() {
                    let t = &files[&g];
                    if t.contains("[unclosed") || t.contains("role: nope") {
                        match good.get(&g) {
                            Some(ok) => files.insert(g.clone(), ok.clone()),
                            None => files.remove(&g),
                        };
                    }
                }
            }
            _ => {
                files.insert("README.md".into(), format!("noop {n}\n"));
            }
        }
        let change = to_commit(&files, &before);
        if change.is_empty() {
            continue;
        }
        tip = commit(&s, Some(tip), &change, t0 + (n as i64 + 1) * 3600, &format!("change {n} (#{n})"));
    }
    s.main(tip);
    s
}

fn random_inputs(s: &Script, since: &str, until: &str) -> Inputs {
    let mut i = Inputs::new(s.policy_dir(), "/nonexistent", since, until);
    i.rev = "main".into();
    i
}

#[test]
fn incremental_provisioning_and_changes_equal_compiling_every_commit_whole() {
    // The shortcuts (compile only what a commit affects) against the references (compile every
    // commit whole), over random histories (each built once for both exports) and several
    // periods: provisioning's rows, and the access diff of each commit.
    let mut rejected = 0;
    for seed in [7u64, 42] {
        let s = random_history(seed, 100);
        for (since, until) in [("2026-09-01", "2026-12-01"), ("2026-10-02T05:00:00Z", "2026-10-05T19:00:00Z")] {
            let i = random_inputs(&s, since, until);
            let fast = evidence::provisioning(&i).unwrap();
            let slow = evidence::provisioning_reference(&i).unwrap();
            assert_eq!(fast.rows, slow.rows, "seed {seed}, period {since}..{until}");
            assert!(fast.population > 0, "seed {seed}, period {since}..{until}: the history has provisioning events");
            let fast = evidence::changes(&i).unwrap();
            let slow = evidence::changes_reference(&i).unwrap();
            assert_eq!(fast.rows, slow.rows, "seed {seed}, period {since}..{until}");
            assert!(fast.population > 0, "seed {seed}, period {since}..{until}: the history has commits");
        }
        // The history does exercise invalid commits.
        let repo = gatehouse::gitops::git::PolicyRepo::discover(&s.policy_dir()).unwrap();
        let tip = repo.resolve("main").unwrap();
        for id in repo.range(None, tip).unwrap() {
            let files = gatehouse::repo::Files { commit: None, entries: repo.files_at(id).unwrap() };
            rejected += gatehouse::repo::compile(&files).is_err() as usize;
        }
    }
    assert!(rejected > 10, "only {rejected} invalid commits");
}

#[test]
fn streamed_rows_match_the_tables_cell_for_cell() {
    // More rows than the preview keeps, with escapes and formulas in every kind of cell.
    let (s, ids) = history();
    let data = state(&ids);
    let store = Store::open(data.path()).unwrap();
    store
        .write_blocking(|c| {
            for n in 0..60u64 {
                let cat = ["read", "destructive", "execute", "financial", "write"][n as usize % 5];
                let mut r = rec(
                    &format!("2026-11-20T10:{:02}:00.000Z", n % 60),
                    "o\"dd@example.com",
                    "github",
                    "=cmd",
                    Some(cat),
                    "allow",
                    "ok",
                    Some(n),
                );
                r.arg_keys = vec!["+a".into(), "q\"uote".into(), "ünï".into()];
                r.message = format!("line one\nline \"two\" {n}");
                r.policy_commit = if n % 2 == 0 { None } else { Some("-x".into()) };
                gatehouse::record::audit::log::append_in(c, r)?;
            }
            Ok::<(), gatehouse::record::store::sql::Error>(())
        })
        .unwrap();
    drop(store);
    let i = inputs(&s, data.path());
    let calls = evidence::calls(&i).unwrap();
    let privileged = evidence::privileged(&i).unwrap();
    assert_eq!((calls.population, privileged.population), (72, 6 + 36));
    let text = |v: &Value| -> String {
        let t = match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Array(items) => items.iter().map(|i| i.as_str().unwrap().to_string()).collect::<Vec<_>>().join("; "),
            other => other.to_string(),
        };
        if t.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{t}") } else { t }
    };
    let out = tempfile::tempdir().unwrap();
    let b = evidence::bundle(&i, Format::Csv, &out.path().join("csv")).unwrap();
    for (table, expected) in [("calls", &calls), ("privileged", &privileged)] {
        let w = b.files.iter().find(|w| w.table == table).unwrap();
        let rows = parse_csv(&std::fs::read_to_string(&w.path).unwrap());
        assert_eq!(rows.len() - 1, expected.rows.len());
        for (got, want) in rows[1..].iter().zip(&expected.rows) {
            let want: Vec<String> = want.iter().map(text).collect();
            assert_eq!(got, &want);
        }
    }
    let b = evidence::bundle(&i, Format::Json, &out.path().join("json")).unwrap();
    for (table, expected) in [("calls", &calls), ("privileged", &privileged)] {
        let w = b.files.iter().find(|w| w.table == table).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&w.path).unwrap()).unwrap();
        assert_eq!(doc["population"], expected.population);
        let rows = doc["rows"].as_array().unwrap();
        assert_eq!(rows.len(), expected.rows.len());
        for (got, want) in rows.iter().zip(&expected.rows) {
            for (k, v) in expected.columns.iter().zip(want) {
                assert_eq!(&got[*k], v, "{table} column {k}");
            }
        }
    }
    evidence::verify_manifest(&out.path().join("json")).unwrap();
}

#[test]
fn the_binary_writes_a_bundle_that_verifies_and_refuses_bad_input() {
    let (s, ids) = history();
    let data = state(&ids);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("bundle");
    let i = inputs(&s, data.path());
    let (repo, data_dir, dir_s) = (i.repo.display().to_string(), data.path().display().to_string(), dir.display().to_string());
    let args = ["evidence", "bundle", "--since", SINCE, "--until", UNTIL, "--repo", &repo, "--data-dir", &data_dir, "--out", &dir_s];
    let r = crate::support::gatehouse(&args);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&format!("{}\topen in a browser", dir.join("index.html").display())), "{}", r.stdout);
    assert!(r.stdout.contains("suppliers.csv\t4 rows\tsuppliers (A.5.19"), "{}", r.stdout);
    assert_eq!(evidence::verify_manifest(&dir).unwrap(), 9, "eight exports and index.html, each listed and verified");
    // Running it again replaces the earlier bundle; a directory holding anything else is refused.
    assert_eq!(crate::support::gatehouse(&args).code, 0);
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let r = crate::support::gatehouse(&args);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("notes.txt"), "{}", r.stderr);
    // A period that ends before it starts, a missing database: exit 2 with the reason.
    let r = crate::support::gatehouse(&["evidence", "calls", "--since", UNTIL, "--until", SINCE, "--repo", &repo, "--data-dir", &data_dir]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("error:"), "{}", r.stderr);
    let r = crate::support::gatehouse(&["evidence", "calls", "--since", SINCE, "--until", UNTIL, "--repo", &repo, "--data-dir", "/nonexistent/gh-data"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/nonexistent/gh-data"), "{}", r.stderr);
}

/// An auditor or a CI job with the repository but not the daemon's data dir: `changes`,
/// `suppliers` and `bundle` come from git alone, say so, and the bundle verifies.
#[test]
fn evidence_from_git_alone_without_a_state_database() {
    let (s, ids) = history();
    let none = tempfile::tempdir().unwrap();
    let no_data = none.path().join("never-ran");
    let out = tempfile::tempdir().unwrap();
    let i = inputs(&s, &no_data);
    let (repo, data_dir) = (i.repo.display().to_string(), no_data.display().to_string());
    let run = |control: &str, dir: &Path| {
        let dir = dir.display().to_string();
        let args = ["evidence", control, "--since", SINCE, "--until", UNTIL, "--repo", &repo, "--data-dir", &data_dir, "--out", &dir, "--format", "json"];
        crate::support::gatehouse(&args)
    };

    // changes: every first-parent commit of the period, with its pull request, from git.
    let r = run("changes", &out.path().join("changes"));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("note: no state database at") && r.stdout.contains("from git alone"), "{}", r.stdout);
    let file: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("changes/changes.json")).unwrap()).unwrap();
    let rows = file["rows"].as_array().unwrap();
    let commits: Vec<&str> = rows.iter().map(|r| r["commit"].as_str().unwrap()).collect();
    let want: Vec<String> = ["m1", "c2", "c3", "c4", "c5", "m2", "c7", "c8"].iter().map(|k| ids[*k].to_string()).collect();
    assert_eq!(commits, want, "every first-parent commit of the period, oldest first");
    let prs: Vec<Value> = rows.iter().map(|r| r["pull_request"].clone()).collect();
    assert_eq!(prs, [json!(11), json!(12), json!(13), Value::Null, Value::Null, json!(14), Value::Null, json!(15)]);
    assert!(rows.iter().all(|r| r["source"] == "git" && r["status"].is_null() && r["recorded_at"].is_null()));
    let valid: Vec<bool> = rows.iter().map(|r| r["valid"].as_bool().unwrap()).collect();
    assert_eq!(valid, [true, true, true, false, true, true, true, true]);
    assert_eq!(rows[5]["lost"], json!(["erin@example.com: github/list_issues"]), "the merged pull request revoked erin");
    assert_eq!(file["population"], 8);
    let statement = file["source"]["statement"].as_str().unwrap();
    assert!(statement.contains("8 first-parent commits") && statement.contains("no daemon records were read"), "{statement}");
    assert!(!out.path().join("changes/rewrites.json").exists(), "rewrites exist only in the daemon's records");

    // suppliers: the register from git, traffic marked as not available.
    let r = run("suppliers", &out.path().join("suppliers"));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let file: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("suppliers/suppliers.json")).unwrap()).unwrap();
    assert_eq!(file["population"], 3, "the three registered servers");
    assert!(file["rows"].as_array().unwrap().iter().all(|r| r["calls"].is_null() && r["denials"].is_null()));
    assert!(file["source"]["traffic"].as_str().unwrap().starts_with("not available: no state database"), "{}", file["source"]);

    // bundle: every export git gives, the sources named, and a manifest that verifies.
    let dir = out.path().join("bundle");
    let r = run("bundle", &dir);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(evidence::verify_manifest(&dir).unwrap(), 5, "access-review, provisioning, changes, suppliers and index.html");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("MANIFEST.json")).unwrap()).unwrap();
    assert!(m["sources"]["database"].is_null());
    let not_written: Vec<&str> = m["sources"]["not_written"].as_array().unwrap().iter().map(|t| t["table"].as_str().unwrap()).collect();
    assert_eq!(not_written, ["privileged", "calls", "events", "rewrites"]);
    assert_eq!(m["audit"]["read"], false);
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.contains("Sources read") && html.contains("not read"), "index.html says which sources were read");
    assert!(html.contains("calls: not in this bundle"), "and which tables are missing");

    // `--out -`: a one-table export on standard output, its manifest on standard error.
    let r = run("access-review", Path::new("-"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let file: Value = serde_json::from_str(&r.stdout).expect("the export alone is standard output");
    assert_eq!((file["table"].as_str(), file["population"].as_u64()), (Some("access-review"), Some(4)));
    assert!(r.stderr.contains("\"sha256\"") && r.stderr.contains("period 2026-11-01"), "{}", r.stderr);
    use sha2::Digest;
    let sidecar: Value = serde_json::from_str(&r.stderr[..=r.stderr.find("\n}").unwrap() + 1]).unwrap();
    assert_eq!(sidecar["sha256"], hex::encode(sha2::Sha256::digest(r.stdout.as_bytes())));
    let r = run("calls", Path::new("-"));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--out - writes one export to standard output; calls writes calls and events"), "{}", r.stderr);

    // Exports that only the daemon's records can give still refuse, naming the path.
    let r = run("calls", &out.path().join("calls"));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no state database at") && r.stderr.contains("never-ran"), "{}", r.stderr);
}

/// With sign-in through an identity provider, the access review shows the grants reached by
/// signing in (`sso`) and one row per IdP group that roles name, with what it gives and the roles.
#[test]
fn the_access_review_lists_sso_grants_and_idp_groups() {
    let r = crate::support::TestRepo::new();
    r.commit("sso", &[
        ("gatehouse.yaml", "auth:\n  issuers:\n    - { issuer: https://idp.example.com, audience: https://gh.example.com/mcp, identity_claim: email, groups_claim: groups }\n"),
        ("servers/s.yaml", "name: s\ntransport: stdio\ncommand: [x]\nsupplier: { operated_by: internal }\ntools: { a: { category: read }, b: { category: destructive } }\n"),
        ("roles/oncall.yaml", "groups: [eng-oncall]\naccess: [ { server: s, tools: [b] } ]\n"),
        ("grants/alice.yaml", "identity: alice@example.com\nkind: human\naccess: [ { server: s, tools: [a] } ]\n"),
    ]);
    let data = tempfile::tempdir().unwrap();
    let i = Inputs::new(r.path(), data.path(), "2000-01-01", "2100-01-01");
    let t = evidence::access_review(&i).unwrap();
    let who: Vec<&str> = t.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(who, ["alice@example.com", "group:eng-oncall"]);
    assert_eq!(cell(&t, 0, "token_status"), "sso", "no tokens: reached by signing in");
    assert_eq!(cell(&t, 1, "grant"), "roles/oncall.yaml");
    assert_eq!(cell(&t, 1, "kind"), "idp-group");
    assert_eq!(strs(cell(&t, 1, "tools")), ["s/b (destructive)"]);
    assert_eq!(strs(cell(&t, 1, "privileged_tools")), ["s/b"]);
}
