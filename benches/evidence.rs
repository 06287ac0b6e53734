//! `gatehouse evidence bundle` at scale, in one process run:
//!
//! 1. **Generate** a state database with `EVIDENCE_CALLS` hash-chained call records (default
//!    1,000,000) spread over a 90-day period (2026-01-01 to 2026-04-01): decisions and outcomes,
//!    about 10% denials, 2% upstream errors, categories read/write/destructive/execute/financial,
//!    quota events and one change record per commit — appended with `audit::log::append_in` in raw
//!    rusqlite transactions of 50,000 records. And a git repository (git2 only, trees built with
//!    `TreeUpdateBuilder`) whose policy repository starts before the period with 30 servers (10
//!    classified tools each), 20 policies (two regex conditions each, as in the seed's examples),
//!    10 roles and `EVIDENCE_GRANTS` grants (default 500; a third through a role, a quarter with a
//!    policy of their own), then `EVIDENCE_COMMITS` first-parent commits (default 2,000) in the
//!    period: grants created, widened, narrowed, re-reviewed, token rotations and revocations,
//!    role, policy and server edits, test and README edits; every third one is a pull request
//!    merged by a merge commit (`Merge pull request #N from …`) over a feature commit.
//! 2. **Baseline**: one scan of the period's call records in seq order (`audit::rows::each`: each
//!    row's canonical JSON rebuilt, every byte touched): the floor any export of the call log pays.
//! 3. **Bundle**: `evidence::bundle` into a fresh directory (CSV by default), median of
//!    `EVIDENCE_RUNS`; then `verify_manifest` on it. As a split, the git side alone (end state +
//!    access review + provisioning) and the call-log side alone (calls + privileged streamed).
//!
//! Environment (all optional):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `EVIDENCE_CALLS` | 1000000 | call records in the period |
//! | `EVIDENCE_COMMITS` | 2000 | first-parent commits in the period |
//! | `EVIDENCE_GRANTS` | 500 | grants before the period |
//! | `EVIDENCE_RUNS` | 1 | timed bundles (median reported) |
//! | `EVIDENCE_FORMAT` | csv | csv or json |
//! | `EVIDENCE_KEEP` | 0 | 1: keep the generated data and bundle, and print where |
//! | `EVIDENCE_REUSE` | — | a directory to generate into once and reuse on later runs (same counts) |
//! | `EVIDENCE_PROFILE` | — | `calls`, `git`, `compile` or `bundle`: repeat that part `EVIDENCE_RUNS` times, print times, exit |
//! | `EVIDENCE_ENFORCE` | 0 | 1: exit 3 when the target is missed |
//!
//! Output: a table (wall time and this process's CPU time per step: on a shared machine the wall
//! time of two busy threads depends on who else runs), then one line `RESULT {json}`
//! (milliseconds). The bundle reads git and the database on two threads, so on two idle cores its
//! wall time is about half its CPU time.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use gatehouse::record::audit::CallRecord;
use gatehouse::evidence::{self, Control, Format, Inputs};
use gatehouse::units::Date;
use git2::{FileMode, Oid, Repository, Signature, Time};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The allocator of the `gatehouse` binary (`src/main.rs`), whose `evidence bundle` this measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The issue's target for the whole bundle.
const TARGET: Duration = Duration::from_secs(10);
const SINCE: &str = "2026-01-01";
const UNTIL: &str = "2026-04-01";
const SERVERS: usize = 30;
const TOOLS: usize = 10;
const POLICIES: usize = 20;
const ROLES: usize = 10;
const CATEGORIES: [&str; TOOLS] =
    ["read", "read", "read", "write", "write", "destructive", "execute", "financial", "read", "write"];

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator (xorshift64*).
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

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn epoch(date: &str) -> i64 {
    Date::parse(date).unwrap().days_since_epoch() * 86_400
}

fn ts(ms: i64) -> String {
    let base = gatehouse::units::rfc3339(ms.div_euclid(1000), 0);
    format!("{}.{:03}Z", base.trim_end_matches('Z'), ms.rem_euclid(1000))
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

// === The policy repository ===

fn server_yaml(s: usize, extra_tools: usize) -> String {
    let mut y = format!(
        "name: s{s}\ndescription: Server {s}\ntransport: {}\nsupplier:\n  operated_by: {}\n  vendor: Vendor {s}\n  risk: {}\n  data: [records]\n  agreement: MSA-{s:04}\n  reviewed: {{ on: 2025-11-01, by: sec@example.com }}\ntools:\n",
        if s.is_multiple_of(3) {
            "stdio\ncommand: [server, --id, x]"
        } else {
            "streamable-http\nurl: https://mcp.example.com/x/"
        },
        if s.is_multiple_of(2) { "external" } else { "internal" },
        ["low", "medium", "high"][s % 3]
    );
    for t in 0..TOOLS + extra_tools {
        y.push_str(&format!("  t{t}: {{ category: {} }}\n", CATEGORIES[t % TOOLS]));
    }
    y
}

/// A policy listing `listed` tools, two of them with a condition like the seed's (a
/// case-insensitive regex on a query, a look-around regex on a path).
fn policy_yaml(p: usize, listed: usize) -> String {
    let mut y = "version: \"1\"\ndefault: deny\ntools:\n".to_string();
    for t in 0..listed.min(TOOLS) {
        match t {
            0 => y.push_str(&format!(
                "  t0:\n    deny_if: [ {{ name: ddl-{p}, conditions: [ {{ path: args.q, op: regex, value: \"(?i)(DROP|TRUNCATE|DELETE|ALTER)\\\\s\" }} ] }} ]\n"
            )),
            1 => y.push_str("  t1:\n    deny_if: [ { conditions: [ { path: args.path, op: regex, value: \"^(?!/srv/projects/)\" } ] } ]\n"),
            _ => y.push_str(&format!("  t{t}: {{}}\n")),
        }
    }
    y
}

fn role_yaml(r: usize, tools: usize) -> String {
    let list: Vec<String> = (0..tools).map(|t| format!("t{t}")).collect();
    format!("description: role {r}\naccess:\n  - {{ server: s{}, tools: [{}] }}\n", r % SERVERS, list.join(", "))
}

/// One grant as the generator tracks it.
struct G {
    server: usize,
    tools: BTreeSet<usize>,
    role: Option<usize>,
    policy: Option<usize>,
    tokens: Vec<u64>,
    review_day: i64,
}

fn grant_yaml(i: usize, g: &G) -> String {
    let mut y = format!(
        "identity: user{i}@example.com\nkind: {}\nowner: owner{}@example.com\ntokens:\n",
        if i.is_multiple_of(4) { "agent" } else { "human" },
        i % 50
    );
    if g.tokens.is_empty() {
        y = format!("identity: user{i}@example.com\nkind: human\nowner: user{i}@example.com\ntokens: []\n");
    }
    for t in &g.tokens {
        y.push_str(&format!(
            "  - {{ sha256: {}, issued: 2025-10-01, expires: 2027-01-01 }}\n",
            sha(&format!("tok-{t}"))
        ));
    }
    let tools: Vec<String> = g.tools.iter().map(|t| format!("t{t}")).collect();
    y.push_str(&format!("access:\n  - server: s{}\n    tools: [{}]\n", g.server, tools.join(", ")));
    if let Some(p) = g.policy {
        y.push_str(&format!("    policy: policies/p{p}.yaml\n"));
    }
    if let Some(r) = g.role {
        y.push_str(&format!("  - role: r{r}\n"));
    }
    let review = Date::from_days_since_epoch(g.review_day);
    y.push_str(&format!("review: {{ on: {review}, by: reviewer@example.com }}\n"));
    y
}

struct Gen<'a> {
    repo: &'a Repository,
    tip: Oid,
}

impl Gen<'_> {
    /// A commit on top of `parent` with `files` written (Some) or removed (None).
    fn commit(&self, parents: &[Oid], files: &[(String, Option<String>)], who: &str, time: i64, message: &str) -> Oid {
        let base = self.repo.find_commit(parents[0]).unwrap().tree().unwrap();
        let mut b = git2::build::TreeUpdateBuilder::new();
        for (p, text) in files {
            match text {
                Some(t) => {
                    let blob = self.repo.blob(t.as_bytes()).unwrap();
                    b.upsert(p.as_str(), blob, FileMode::Blob);
                }
                None => {
                    b.remove(p.as_str());
                }
            }
        }
        let tree = self.repo.find_tree(b.create_updated(self.repo, &base).unwrap()).unwrap();
        let sig = Signature::new(who, &format!("{}@example.com", who.to_lowercase()), &Time::new(time, 0)).unwrap();
        let parents: Vec<git2::Commit> = parents.iter().map(|p| self.repo.find_commit(*p).unwrap()).collect();
        let refs: Vec<&git2::Commit> = parents.iter().collect();
        self.repo.commit(None, &sig, &sig, message, &tree, &refs).unwrap()
    }
}

/// Builds the repository; returns (number of commits written, grant files alive at the end).
fn generate_repo(dir: &Path, grants: usize, commits: usize) -> (usize, usize) {
    let repo = Repository::init(dir).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut files: Vec<(String, Option<String>)> = Vec::new();
    let mut server_extra = [0usize; SERVERS];
    let mut policy_listed = [6usize; POLICIES];
    let mut role_tools = [2usize; ROLES];
    for s in 0..SERVERS {
        files.push((format!("servers/s{s}.yaml"), Some(server_yaml(s, 0))));
    }
    for (p, &listed) in policy_listed.iter().enumerate() {
        files.push((format!("policies/p{p}.yaml"), Some(policy_yaml(p, listed))));
    }
    for (r, &tools) in role_tools.iter().enumerate() {
        files.push((format!("roles/r{r}.yaml"), Some(role_yaml(r, tools))));
    }
    let mut token_seq = 0u64;
    let mut gs: Vec<Option<G>> = Vec::new();
    let new_grant = |rng: &mut Rng, token_seq: &mut u64, day: i64| -> G {
        *token_seq += 1;
        let mut tools = BTreeSet::new();
        for _ in 0..3 {
            tools.insert(rng.below(TOOLS));
        }
        G {
            server: rng.below(SERVERS),
            tools,
            role: (rng.below(3) == 0).then(|| rng.below(ROLES)),
            policy: (rng.below(4) == 0).then(|| rng.below(POLICIES)),
            tokens: vec![*token_seq],
            review_day: day,
        }
    };
    let start_day = epoch("2025-12-15") / 86_400;
    for i in 0..grants {
        let g = new_grant(&mut rng, &mut token_seq, start_day);
        files.push((format!("grants/g{i}.yaml"), Some(grant_yaml(i, &g))));
        gs.push(Some(g));
    }
    files.push((
        "tests/cases.yaml".into(),
        Some("cases:\n  - { name: c0, identity: user1@example.com, server: s0, tool: t0, expect: deny }\n".into()),
    ));
    files.push(("README.md".into(), Some("# policy\n".into())));
    // The root commit, on an empty tree.
    let empty = repo.find_tree(repo.treebuilder(None).unwrap().write().unwrap()).unwrap();
    let mut b = git2::build::TreeUpdateBuilder::new();
    for (p, t) in &files {
        let blob = repo.blob(t.as_ref().unwrap().as_bytes()).unwrap();
        b.upsert(p.as_str(), blob, FileMode::Blob);
    }
    let tree = repo.find_tree(b.create_updated(&repo, &empty).unwrap()).unwrap();
    let sig = Signature::new("Admin", "admin@example.com", &Time::new(epoch("2025-12-15"), 0)).unwrap();
    let root = repo.commit(None, &sig, &sig, "Initial policy repository", &tree, &[]).unwrap();
    let mut git = Gen { repo: &repo, tip: root };
    let (t0, t1) = (epoch(SINCE), epoch(UNTIL));
    let step = (t1 - t0 - 3600) / commits as i64;
    let mut written = 1;
    let people = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"];
    for n in 0..commits {
        let time = t0 + 1800 + n as i64 * step;
        let day = time / 86_400;
        let r = rng.unit();
        let alive: Vec<usize> = (0..gs.len()).filter(|&i| gs[i].is_some()).collect();
        let pick = |rng: &mut Rng| alive[rng.below(alive.len())];
        let (change, what): (Vec<(String, Option<String>)>, String) = if r < 0.25 || alive.len() < 10 {
            let i = gs.len();
            let g = new_grant(&mut rng, &mut token_seq, day);
            let f = vec![(format!("grants/g{i}.yaml"), Some(grant_yaml(i, &g)))];
            gs.push(Some(g));
            (f, format!("Grant user{i}"))
        } else if r < 0.70 {
            let i = pick(&mut rng);
            let g = gs[i].as_mut().unwrap();
            let what = if r < 0.45 {
                g.tools.insert(rng.below(TOOLS));
                "Widen"
            } else if r < 0.60 {
                if g.tools.len() > 1 {
                    let t = *g.tools.iter().next().unwrap();
                    g.tools.remove(&t);
                }
                "Narrow"
            } else {
                g.review_day = day;
                "Review"
            };
            (vec![(format!("grants/g{i}.yaml"), Some(grant_yaml(i, g)))], format!("{what} user{i}"))
        } else if r < 0.75 {
            let i = pick(&mut rng);
            let g = gs[i].as_mut().unwrap();
            token_seq += 1;
            g.tokens = vec![token_seq];
            (vec![(format!("grants/g{i}.yaml"), Some(grant_yaml(i, g)))], format!("Rotate user{i}'s token"))
        } else if r < 0.82 {
            let i = pick(&mut rng);
            gs[i] = None;
            (vec![(format!("grants/g{i}.yaml"), None)], format!("Revoke user{i}"))
        } else if r < 0.88 {
            let k = rng.below(ROLES);
            role_tools[k] = 1 + (role_tools[k] + 1) % 4;
            (vec![(format!("roles/r{k}.yaml"), Some(role_yaml(k, role_tools[k])))], format!("Role r{k}"))
        } else if r < 0.92 {
            let k = rng.below(POLICIES);
            policy_listed[k] = 3 + (policy_listed[k] + 1) % 7;
            (vec![(format!("policies/p{k}.yaml"), Some(policy_yaml(k, policy_listed[k])))], format!("Policy p{k}"))
        } else if r < 0.95 {
            let k = rng.below(SERVERS);
            server_extra[k] += 1;
            (vec![(format!("servers/s{k}.yaml"), Some(server_yaml(k, server_extra[k])))], format!("Server s{k}"))
        } else {
            (vec![("README.md".to_string(), Some(format!("# policy\n\nrevision {n}\n")))], "Docs".to_string())
        };
        let who = people[n % people.len()];
        if n.is_multiple_of(3) {
            let feature = git.commit(&[git.tip], &change, who, time - 1800, &what);
            let merger = people[(n + 1) % people.len()];
            git.tip = git.commit(
                &[git.tip, feature],
                &change,
                merger,
                time,
                &format!("Merge pull request #{} from org/change-{n}\n\n{what}", n + 1),
            );
            written += 2;
        } else {
            git.tip = git.commit(&[git.tip], &change, who, time, &format!("{what} (#{})", n + 1));
            written += 1;
        }
    }
    repo.reference("refs/heads/main", git.tip, true, "bench").unwrap();
    repo.set_head("refs/heads/main").unwrap();
    (written, gs.iter().filter(|g| g.is_some()).count())
}

// === The state database ===

fn generate_db(dir: &Path, calls: usize, grants: usize) {
    drop(gatehouse::record::store::Store::open(dir).unwrap()); // creates and migrates
    let mut c = rusqlite::Connection::open(dir.join(gatehouse::record::store::FILE)).unwrap();
    c.pragma_update(None, "synchronous", "OFF").unwrap();
    let mut rng = Rng(0x51_7cc1_b727_220a);
    let (t0, t1) = (epoch(SINCE) * 1000, epoch(UNTIL) * 1000);
    let step = (t1 - t0) as f64 / calls as f64;
    let mut n = 0usize;
    let mut pending_outcome: Option<CallRecord> = None;
    // This thread alone writes this database: appends may keep heads and interned ids.
    let _sole = gatehouse::record::store::SoleWriter::enter();
    while n < calls {
        let tx = c.transaction().unwrap();
        let end = (n + 50_000).min(calls);
        while n < end {
            let ms = t0 + (n as f64 * step) as i64;
            let r = match pending_outcome.take() {
                Some(mut o) => {
                    o.ts = ts(ms);
                    o
                }
                None => {
                    let g = rng.below(grants.max(1));
                    let (s, t) = (rng.below(SERVERS), rng.below(TOOLS));
                    let deny = rng.below(10) == 0;
                    let base = CallRecord {
                        seq: 0,
                        ts: ts(ms),
                        replica: "gw-1".into(),
                        session: format!("sess-{:08x}", rng.next() as u32),
                        identity: format!("user{g}@example.com"),
                        grant: format!("grants/g{g}.yaml"),
                        auth: "token".into(),
                        kind: "tool".into(),
                        server: format!("s{s}"),
                        tool: format!("t{t}"),
                        category: Some(CATEGORIES[t].to_string()),
                        arg_keys: vec!["path".into(), "q".into()],
                        verdict: if deny { "deny" } else { "allow" }.into(),
                        rule: if deny {
                            format!("policies/p{}.yaml#/tools/t{t}/deny_if/r", s % POLICIES)
                        } else {
                            format!("grants/g{g}.yaml#/access/0")
                        },
                        message: if deny {
                            "denied by rule".into()
                        } else {
                            format!("allowed by grants/g{g}.yaml#/access/0")
                        },
                        policy_commit: Some("4f2a9c0e5b7d1e3f8a6c2b9d0e1f3a5c7b9d2e4f".into()),
                        snapshot_digest: "9b1c".repeat(16),
                        outcome: if deny { "denied" } else { "unknown" }.into(),
                        latency_ms: None,
                        prev_hash: String::new(),
                        hash: None,
                    };
                    if !deny {
                        let mut o = base.clone();
                        o.outcome = if rng.below(50) == 0 { "upstream_error" } else { "ok" }.into();
                        o.latency_ms = Some(5 + rng.below(400) as u64);
                        pending_outcome = Some(o);
                    }
                    base
                }
            };
            gatehouse::record::audit::log::append_in(&gatehouse::record::store::Conn::Lite(&tx), r).unwrap();
            if n.is_multiple_of(997) {
                let detail = json!({ "rule": "policies/p0.yaml#/tools/t0/limits/cap", "quota": "cap", "limit": "60/minute", "identity": "user1@example.com", "server": "s0", "tool": "t0" });
                tx.execute(
                    "INSERT INTO events (ts, kind, detail) VALUES (?1, 'quota_exceeded', ?2)",
                    rusqlite::params![ts(ms), detail.to_string()],
                )
                .unwrap();
            }
            n += 1;
        }
        tx.commit().unwrap();
    }
}

fn change_records(dir: &Path, repo: &Path) {
    let pr = gatehouse::gitops::git::PolicyRepo::discover(repo).unwrap();
    let tip = pr.resolve("HEAD").unwrap();
    let mut c = rusqlite::Connection::open(dir.join(gatehouse::record::store::FILE)).unwrap();
    let tx = c.transaction().unwrap();
    let mut walk = pr.repo.revwalk().unwrap();
    walk.push(tip).unwrap();
    walk.simplify_first_parent().unwrap();
    for id in walk {
        let info = pr.info(id.unwrap()).unwrap();
        tx.execute(
            "INSERT INTO changes (commit_id, parents, author, author_time, committer, commit_time, message, pull_request, signed, files,
                                  access_diff, status, errors, applied_at, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '{\"present\":false,\"verified\":false}', ?9, 'null', 'applied', '[]', ?10, ?10)",
            rusqlite::params![
                info.commit,
                serde_json::to_string(&info.parents).unwrap(),
                info.author,
                info.author_time,
                info.committer,
                info.commit_time,
                info.message,
                info.pull_request.map(|n| n as i64),
                serde_json::to_string(&info.files).unwrap(),
                format!("{}.000Z", info.commit_time.trim_end_matches('Z')),
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// One scan of the period's call records: the floor of any call-log export.
fn baseline_scan(data: &Path) -> (Duration, u64, u64) {
    let t = Instant::now();
    let c = gatehouse::record::store::open_read_only(data).unwrap();
    let since = format!("{SINCE}T00:00:00.000Z");
    let until = format!("{UNTIL}T00:00:00.000Z");
    let ms = |t: &str| gatehouse::units::parse_rfc3339_ms(t).unwrap();
    let (first, last): (i64, i64) = c
        .query_row("SELECT min(seq), max(seq) FROM call_rows WHERE ts >= ?1 AND ts < ?2", [ms(&since), ms(&until)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    // The record's canonical text is rebuilt from its row (schema 5), as every reader does.
    let (mut n, mut bytes) = (0u64, 0u64);
    let range = gatehouse::record::audit::rows::Range::Seqs { replica: "gw-1", from: first as u64, to: last as u64, limit: None };
    gatehouse::record::audit::rows::each(&gatehouse::record::store::Conn::Lite(&c), range, |r| {
        if r.ts >= since.as_str() && r.ts < until.as_str() {
            n += 1;
            bytes += (r.text.as_ref().map_or(0, |t| t.len()) + r.hash.len()) as u64;
        }
        Ok(())
    })
    .unwrap();
    (t.elapsed(), n, bytes)
}

/// CPU time (user + system) of this process so far, from /proc (Linux; zero elsewhere): on a
/// shared machine wall time alone says little.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the command name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let calls = env("EVIDENCE_CALLS", 1_000_000usize);
    let commits = env("EVIDENCE_COMMITS", 2_000usize);
    let grants = env("EVIDENCE_GRANTS", 500usize);
    let runs = env("EVIDENCE_RUNS", 1usize).max(1);
    let keep = env("EVIDENCE_KEEP", 0u8) == 1;
    let enforce = env("EVIDENCE_ENFORCE", 0u8) == 1;
    let format = match std::env::var("EVIDENCE_FORMAT").as_deref() {
        Ok("json") => Format::Json,
        _ => Format::Csv,
    };

    let work = tempfile::tempdir().unwrap();
    // EVIDENCE_REUSE=DIR keeps the generated repository and database in DIR across runs (for
    // profiling); it must have been made with the same counts.
    let gen_dir =
        std::env::var("EVIDENCE_REUSE").map(std::path::PathBuf::from).unwrap_or_else(|_| work.path().to_path_buf());
    let (repo_dir, data_dir) = (gen_dir.join("repo"), gen_dir.join("data"));
    let objects = if repo_dir.join(".git").exists() && data_dir.exists() {
        eprintln!("reusing {}", gen_dir.display());
        0
    } else {
        std::fs::create_dir_all(&repo_dir).unwrap();
        let t = Instant::now();
        let (objects, alive) = generate_repo(&repo_dir, grants, commits);
        let gen_repo = t.elapsed();
        let t = Instant::now();
        generate_db(&data_dir, calls, grants + commits / 4);
        change_records(&data_dir, &repo_dir);
        let gen_db = t.elapsed();
        eprintln!(
            "generated: {objects} commits ({alive} grants at the end) in {:.1} s; {calls} call records in {:.1} s",
            gen_repo.as_secs_f64(),
            gen_db.as_secs_f64()
        );
        objects
    };

    let inputs = Inputs::new(&repo_dir, &data_dir, SINCE, UNTIL);
    let tip = gatehouse::repo::read(&repo_dir, Some("HEAD")).unwrap();
    if let Err(d) = gatehouse::repo::compile(&tip) {
        panic!("the generated repository does not compile:\n{d}");
    }
    // Profiling aid: EVIDENCE_PROFILE=calls|git|bundle repeats one part EVIDENCE_RUNS times, then exits.
    if let Ok(part) = std::env::var("EVIDENCE_PROFILE") {
        eprintln!("PROFILE-START");
        for i in 0..runs {
            let t = Instant::now();
            match part.as_str() {
                "calls" => {
                    drop(evidence::export(&inputs, Control::Calls, format, &work.path().join(format!("p{i}"))).unwrap())
                }
                "git" => drop(evidence::provisioning(&inputs).unwrap()),
                "compile" => {
                    let files = gatehouse::repo::read(&repo_dir, Some("HEAD")).unwrap();
                    let n = files.entries.len();
                    let t = Instant::now();
                    drop(gatehouse::repo::compile(&files).unwrap());
                    eprintln!("compile of {n} files: {:.1} ms", ms(t.elapsed()));
                }
                _ => drop(evidence::bundle(&inputs, format, &work.path().join(format!("p{i}"))).unwrap()),
            }
            eprintln!("{part} {:.1} ms", ms(t.elapsed()));
        }
        return;
    }
    // Each step: (wall, CPU of this process). Warm the page cache the same way for all of them.
    let timed = |f: &mut dyn FnMut()| -> (Duration, Duration) {
        let (t, c) = (Instant::now(), cpu());
        f();
        (t.elapsed(), cpu().saturating_sub(c))
    };
    let _ = baseline_scan(&data_dir);
    let (mut scanned, mut bytes) = (0, 0);
    let baseline = timed(&mut || {
        let (_, n, b) = baseline_scan(&data_dir);
        (scanned, bytes) = (n, b);
    });
    assert_eq!(scanned as usize, calls, "every generated record is in the period");

    let (mut review_rows, mut prov_rows) = (0, 0);
    let history = timed(&mut || {
        review_rows = evidence::access_review(&inputs).unwrap().population;
        prov_rows = evidence::provisioning(&inputs).unwrap().population;
    });

    let calls_dir = work.path().join("calls-only");
    let calls_only = timed(&mut || drop(evidence::export(&inputs, Control::Calls, format, &calls_dir).unwrap()));
    let _ = std::fs::remove_dir_all(&calls_dir);

    let mut times = Vec::new();
    let mut last = None;
    for i in 0..runs {
        let out = work.path().join(format!("bundle-{i}"));
        times.push(timed(&mut || last = Some(evidence::bundle(&inputs, format, &out).unwrap())));
        if i + 1 < runs {
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    times.sort();
    let bundle_time = times[times.len() / 2];
    let b = last.unwrap();
    let mut verified = 0;
    let verify = timed(&mut || verified = evidence::verify_manifest(&b.dir).unwrap());

    println!(
        "evidence bundle: {calls} call records over 90 days, {commits} first-parent commits ({objects} in all), {grants} grants before the period"
    );
    println!();
    println!("{:<44} {:>10} {:>10} {:>11}", "step", "wall ms", "CPU ms", "x baseline");
    let line = |name: &str, (w, c): (Duration, Duration)| {
        println!("{:<44} {:>10.1} {:>10.1} {:>11.2}", name, ms(w), ms(c), ms(w) / ms(baseline.0))
    };
    line("baseline: scan the period's call records", baseline);
    line("git: access review + provisioning", history);
    line(&format!("call log: calls + events ({})", format.ext()), calls_only);
    line(&format!("bundle ({}, median of {runs})", format.ext()), bundle_time);
    line("verify_manifest", verify);
    println!();
    println!("{:<20} {:>12} {:>14}", "file", "population", "bytes");
    for w in &b.files {
        println!("{:<20} {:>12} {:>14}", w.path.file_name().unwrap().to_string_lossy(), w.population, w.bytes);
    }
    println!(
        "(access review {review_rows} identities, provisioning {prov_rows} rows, {verified} files verified, {:.0} MB of records scanned)",
        bytes as f64 / 1e6
    );
    let pass = bundle_time.0 <= TARGET;
    println!();
    println!("target: bundle under {} s: {}", TARGET.as_secs(), if pass { "met" } else { "MISSED" });
    let result = json!({
        "calls": calls,
        "commits": commits,
        "commit_objects": objects,
        "grants": grants,
        "format": format.ext(),
        "baseline_scan_ms": ms(baseline.0),
        "history_ms": ms(history.0),
        "history_cpu_ms": ms(history.1),
        "calls_export_ms": ms(calls_only.0),
        "calls_export_cpu_ms": ms(calls_only.1),
        "bundle_ms": ms(bundle_time.0),
        "bundle_cpu_ms": ms(bundle_time.1),
        "bundle_x_baseline": ms(bundle_time.0) / ms(baseline.0),
        "verify_ms": ms(verify.0),
        "bundle_bytes": b.files.iter().map(|w| w.bytes).sum::<u64>(),
        "provisioning_rows": prov_rows,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "target_ms": ms(TARGET),
        "target_met": pass,
    });
    println!("RESULT {result}");
    if keep {
        let kept = work.keep();
        eprintln!("kept: {}", kept.display());
    }
    if enforce && !pass {
        std::process::exit(3);
    }
}
