//! The reconciler's benchmarks, in one process run (plus one child process for memory):
//!
//! 1. **Commit → decision latency.** A temporary git repository (git2) holds a small policy
//!    repository: one streamable-http server pointing at an in-process mock MCP upstream, one grant
//!    with a known bearer token, and a policy whose `deny_if` rule (name and message) changes with
//!    every commit. The daemon runs in-process (`serve::start`, poll 600 s so that only the ref
//!    watcher triggers) with `proxy::serve` on 127.0.0.1:0. Then, `RECONCILE_COMMITS` times: write
//!    the policy file and commit it on the checked-out branch with git2 (what `git commit -a`
//!    does), and from the moment the commit call returns, send a denied `tools/call` every
//!    `RECONCILE_POLL_MS` until its text names the new commit (`commit <12 hex>`). Reported: p50,
//!    p99 and max of that time; as baselines from the same run, the median time of the git commit
//!    itself and of reading + compiling that repository directly (`repo::read` at HEAD +
//!    `repo::compile`); and as a split, the reconciler's own duration for each commit (from the
//!    daemon's reconcile-duration metric), so that watch/trigger overhead is what remains. The
//!    watcher fires on the ref update inside the commit call, so "commit started → decision"
//!    (commit included) is reported too. With 50 samples the nearest-rank p99 is the maximum.
//! 2. **Scale.** A generated repository at the scale of the public MCP ecosystem: 4,628 servers
//!    (streamable-http, sse and stdio), 31,002 declared tools with categories, 10,000 grants (each
//!    with token hashes and 1–3 access entries, some via roles, some with policies), 200 roles and
//!    300 policies in both rule styles (some JSON), committed to a temporary git repository (as
//!    git objects written with git2, no working tree: the reconciler only reads commits). The
//!    snapshot build the reconciler does per commit — read the files at the commit with git2
//!    (`PolicyRepo::files_at`), `repo::compile`, `secrets::bind` — is timed (median of
//!    `RECONCILE_BUILDS`), split into read / compile / bind, with the access matrix
//!    (`access::matrix`, computed per commit for the change record's access diff) on top. A child
//!    process (a clean heap) builds the same snapshot and reports VmRSS / VmHWM from
//!    /proc/self/status before, while holding the snapshot, and across a second, reconcile-like
//!    build (previous snapshot and matrix held, new snapshot and matrix built), plus exact live
//!    heap bytes from a counting allocator. Finally the daemon itself is started on the generated
//!    repository, and `RECONCILE_DAEMON_COMMITS` one-grant commits are timed from commit to the
//!    new snapshot being active. A split of compile's time (growing subsets of the repository,
//!    and each YAML parser alone over every file) shows where it goes.
//!
//! Wall times on a shared machine include waiting for a CPU: each build also reports its thread's
//! on-CPU time and run-queue wait (`/proc/thread-self/schedstat`), and the load average at start.
//!
//! Environment (all optional):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RECONCILE_COMMITS` | 50 | commits in the latency part |
//! | `RECONCILE_POLL_MS` | 1 | pause between two probing calls after a commit |
//! | `RECONCILE_GAP_MS` | 50 | pause after a commit is decided before the next commit |
//! | `RECONCILE_SCALE` | 1 | multiplies every count of the generated repository (0.1: a tenth) |
//! | `RECONCILE_BUILDS` | 3 | timed snapshot builds at scale (median reported) |
//! | `RECONCILE_DAEMON_COMMITS` | 3 | commits through the daemon at scale (0: skip) |
//! | `RECONCILE_PARTS` | latency,scale | which parts to run |
//! | `RECONCILE_SPLIT` | 1 | 0: skip the split of compile's time (subsets, parsers alone) |
//! | `RECONCILE_KEEP` | 0 | 1: keep the generated repository and print its path (for profiling) |
//! | `RECONCILE_ENFORCE` | 0 | 1: exit 3 when a target is missed |
//!
//! Output: a table, then one line `RESULT {json}` (milliseconds, MiB). Run with
//! `scripts/bench-reconcile` (or `cargo bench --bench reconcile`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse::policy::access;
use gatehouse::gitops::git::PolicyRepo;
use gatehouse::gateway::proxy::{self, Config};
use gatehouse::repo::{self, Entry, Files};
use gatehouse::gateway::secrets::{self, SecretSource};
use gatehouse::commands::serve::{self, Daemon};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// The bearer token of the latency part's grant (only its hash is committed).
const TOKEN: &str = "reconcile-bench-token-0123456789";
const PROTOCOL: &str = "2025-11-25";

/// Targets of the issue.
const TARGET_P99_MS: f64 = 500.0;
const TARGET_BUILD_MS: f64 = 2000.0;
const TARGET_RSS_MIB: f64 = 500.0;

/// The public MCP ecosystem, as counted by the issue.
const SERVERS: usize = 4_628;
const TOOLS: usize = 31_002;
const GRANTS: usize = 10_000;
const POLICIES: usize = 300;
const ROLES: usize = 200;
/// Distinct secrets the generated servers' credentials name.
const SECRETS: usize = 50;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

// --- a counting allocator (live and peak heap bytes; on only in the memory child) ---

struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

fn count(delta: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        let now = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
        if delta > 0 {
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Live heap bytes counted so far (allocations minus frees while counting was on).
fn heap_live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn heap_reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

fn heap_peak() -> i64 {
    PEAK.load(Ordering::Relaxed)
}

// --- settings ---

struct Settings {
    commits: usize,
    poll: Duration,
    gap: Duration,
    scale: f64,
    builds: usize,
    daemon_commits: usize,
    latency: bool,
    scaled: bool,
    keep: bool,
    enforce: bool,
    split: bool,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}

fn settings() -> Settings {
    let parts = std::env::var("RECONCILE_PARTS").unwrap_or_else(|_| "latency,scale".into());
    Settings {
        commits: env("RECONCILE_COMMITS", 50usize).max(1),
        poll: Duration::from_millis(env("RECONCILE_POLL_MS", 1u64)),
        gap: Duration::from_millis(env("RECONCILE_GAP_MS", 50u64)),
        scale: env("RECONCILE_SCALE", 1.0f64),
        builds: env("RECONCILE_BUILDS", 3usize).max(1),
        daemon_commits: env("RECONCILE_DAEMON_COMMITS", 3usize),
        latency: parts.split(',').any(|p| p.trim() == "latency"),
        scaled: parts.split(',').any(|p| p.trim() == "scale"),
        keep: env("RECONCILE_KEEP", 0u8) == 1,
        enforce: env("RECONCILE_ENFORCE", 0u8) == 1,
        split: env("RECONCILE_SPLIT", 1u8) == 1,
    }
}

fn main() {
    // The memory child: build the snapshot in a fresh process and report.
    if let Ok(repo) = std::env::var("RECONCILE_CHILD_REPO") {
        let secrets = PathBuf::from(std::env::var("RECONCILE_CHILD_SECRETS").expect("RECONCILE_CHILD_SECRETS"));
        let report = memory_child(Path::new(&repo), &secrets);
        println!("MEMORY {report}");
        return;
    }
    let s = settings();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "reconcile bench: {cores} cores; latency: {} commits (probe every {} ms, {} ms between commits); scale x{}: {} builds, {} daemon commits",
        s.commits,
        s.poll.as_millis(),
        s.gap.as_millis(),
        s.scale,
        s.builds,
        s.daemon_commits
    );
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let mut result = Map::new();
    result.insert("cores".into(), json!(cores));
    // The machine may be shared: wall times then include waiting for a CPU (see the CPU rows).
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = load.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
    println!("load average (1 min) at start: {load1:.2} on {cores} cores");
    result.insert("load_average_at_start".into(), json!(load1));
    let mut verdicts: Vec<(String, bool, String)> = Vec::new();

    // Scale first: its memory child and timings see a machine not yet busy with the daemon.
    let scale = s.scaled.then(|| scale_part(&s, &rt));
    let latency = s.latency.then(|| latency_part(&s, &rt));

    println!();
    if let Some(l) = &latency {
        l.print();
        result.insert("latency".into(), l.json());
        verdicts.push((
            "commit-to-decision p99 < 500 ms".into(),
            l.p99 < TARGET_P99_MS,
            format!("p99 {:.1} ms over {} commits", l.p99, l.samples.len()),
        ));
    }
    if let Some(sc) = &scale {
        sc.print();
        result.insert("scale".into(), sc.json());
        verdicts.push((
            "snapshot build < 2 s".into(),
            sc.build_ms() < TARGET_BUILD_MS,
            format!("read + compile + bind median {:.0} ms wall, {:.0} ms on CPU", sc.build_ms(), median(&sc.cpu)),
        ));
        if let Some(m) = &sc.memory {
            verdicts.push((
                "resident memory < 500 MiB".into(),
                m.rss_peak_mib() < TARGET_RSS_MIB,
                format!(
                    "VmHWM {:.0} MiB building one snapshot, {:.0} MiB across a reconcile step",
                    m.hwm_first_mib, m.hwm_step_mib
                ),
            ));
        }
    }
    println!();
    for (name, ok, detail) in &verdicts {
        println!("target {name}: {} ({detail})", if *ok { "met" } else { "MISSED" });
    }
    result.insert(
        "targets".into(),
        verdicts.iter().map(|(n, ok, d)| json!({ "name": n, "met": ok, "detail": d })).collect::<Vec<_>>().into(),
    );
    println!("bench time: {:.0} s", started.elapsed().as_secs_f64());
    result.insert("bench_seconds".into(), json!(r1(started.elapsed().as_secs_f64())));
    println!("RESULT {}", Value::Object(result));
    rt.shutdown_timeout(Duration::from_secs(1));
    if s.enforce && verdicts.iter().any(|v| !v.1) {
        std::process::exit(3);
    }
}

// --- statistics ---

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// Nearest-rank percentile (with 50 samples, p99 is the largest).
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ======================================================================================
// Part 1: commit → decision latency
// ======================================================================================

struct Latency {
    /// Commit returned → a call names the new commit.
    samples: Vec<f64>,
    /// The reconcile that applied each commit (the daemon's reconcile-duration metric).
    reconcile: Vec<f64>,
    /// The git commit itself (write the file, stage it, write the tree, commit).
    commit: Vec<f64>,
    /// repo::read at HEAD + repo::compile of the same repository, in this thread.
    read_compile: Vec<f64>,
    /// Round trip of the call that first named the new commit.
    call: Vec<f64>,
    /// Probing calls sent per commit.
    probes: Vec<f64>,
    p50: f64,
    p99: f64,
}

impl Latency {
    fn overhead(&self) -> Vec<f64> {
        self.samples.iter().zip(&self.reconcile).map(|(a, b)| a - b).collect()
    }

    /// From the start of the commit (file write) instead of its return: the watcher fires on the
    /// ref update inside the commit call, so part of the reconcile overlaps the commit's tail.
    fn since_commit_start(&self) -> Vec<f64> {
        self.samples.iter().zip(&self.commit).map(|(a, b)| a + b).collect()
    }

    fn print(&self) {
        println!(
            "commit → first call decided by it ({} commits, local repository, ref watcher only)",
            self.samples.len()
        );
        println!("  {:<44} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms");
        let row = |name: &str, v: &[f64]| {
            println!("  {:<44} {:>9.2} {:>9.2} {:>9.2}", name, median(v), percentile(v, 99.0), max(v));
        };
        row("commit returned → decision (measured)", &self.samples);
        row("  of which: reconcile (resolve → swap)", &self.reconcile);
        row("  of which: the rest (watch, trigger, call)", &self.overhead());
        row("commit started → decision (commit included)", &self.since_commit_start());
        row("deciding call round trip", &self.call);
        println!("  {:<44} {:>9.2}", "baseline: git commit itself (median)", median(&self.commit));
        println!("  {:<44} {:>9.2}", "baseline: repo::read + compile (median)", median(&self.read_compile));
        println!("  {:<44} {:>9.1}", "probing calls per commit (median)", median(&self.probes));
        println!();
    }

    fn json(&self) -> Value {
        let stats = |v: &[f64]| json!({ "p50": r3(median(v)), "p99": r3(percentile(v, 99.0)), "max": r3(max(v)) });
        json!({
            "commits": self.samples.len(),
            "commit_to_decision_ms": stats(&self.samples),
            "reconcile_ms": stats(&self.reconcile),
            "rest_ms": stats(&self.overhead()),
            "commit_start_to_decision_ms": stats(&self.since_commit_start()),
            "call_ms": stats(&self.call),
            "git_commit_median_ms": r3(median(&self.commit)),
            "read_compile_median_ms": r3(median(&self.read_compile)),
            "samples_ms": self.samples.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
        })
    }
}

/// A working tree with a git repository, committed to like a developer does.
struct WorkRepo {
    dir: tempfile::TempDir,
    repo: git2::Repository,
}

impl WorkRepo {
    fn new() -> WorkRepo {
        let dir = tempfile::tempdir().expect("a temp dir");
        let repo = git2::Repository::init(dir.path()).expect("git init");
        WorkRepo { dir, repo }
    }

    /// Writes the files, stages them, commits on the checked-out branch; returns the commit id.
    fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        let mut index = self.repo.index().unwrap();
        for (p, text) in files {
            let abs = self.dir.path().join(p);
            std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
            std::fs::write(abs, text).unwrap();
            index.add_path(Path::new(p)).unwrap();
        }
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("Bench Developer", "dev@example.com").unwrap();
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        self.repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).unwrap().to_string()
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn small_server(upstream: &str) -> String {
    format!(
        "name: mock\ntransport: streamable-http\nurl: {upstream}\ntimeout: 2s\nsupplier: {{ operated_by: internal }}\ntools: {{ add: {{ category: read }} }}\n"
    )
}

fn small_grant() -> String {
    format!(
        "identity: bench-agent\nkind: agent\nowner: dev@example.com\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: \"*\", policy: policies/p.yaml }} ]\n",
        token_hash(TOKEN)
    )
}

/// Denies a big `add` with a rule name and message that change with every version.
fn small_policy(version: usize) -> String {
    format!(
        "tools:\n  add:\n    deny_if: [ {{ name: v{version}, message: \"release v{version}\", conditions: [ {{ path: args.a, op: gt, value: 100 }} ] }} ]\n"
    )
}

/// The daemon on a repository, its proxy on a loopback port.
struct Live {
    url: String,
    daemon: Daemon,
    stop: Option<oneshot::Sender<()>>,
    _data: tempfile::TempDir,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn live(repo: &Path, secrets: SecretSource) -> Live {
    let data = tempfile::tempdir().unwrap();
    let settings = serve::Settings {
        repo: repo.display().to_string(),
        branch: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        database: None,
        replica: None,
        secrets,
        // Long: every change must be noticed by the ref watcher.
        poll: Duration::from_secs(600),
        accept_rewrite: false,
        trust_initial_signers: false,
        webhook_secret: None,
        proxy: Config::default(),
        quota_store: None,
    };
    let daemon = serve::start(settings).await.expect("the daemon starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let state = daemon.state.clone();
    tokio::spawn(async move {
        proxy::serve(listener, state, async {
            let _ = stopped.await;
        })
        .await
    });
    Live { url, daemon, stop: Some(stop), _data: data }
}

impl Live {
    fn active_commit(&self) -> Option<String> {
        self.daemon.state.active.load_full().and_then(|a| a.snapshot.commit.clone())
    }

    /// (sum of reconcile durations in ms, reconciles counted) from the daemon's metrics.
    fn reconcile_metric(&self) -> (f64, u64) {
        let text = self.daemon.state.metrics.render(None, 0, &self.daemon.state.admission);
        let mut sum = 0.0;
        let mut count = 0;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("gatehouse_reconcile_duration_seconds_sum ") {
                sum = v.trim().parse::<f64>().unwrap_or(0.0) * 1e3;
            } else if let Some(v) = line.strip_prefix("gatehouse_reconcile_duration_seconds_count ") {
                count = v.trim().parse().unwrap_or(0);
            }
        }
        (sum, count)
    }

    async fn wait_active(&self, commit: &str, limit: Duration) -> Duration {
        let t = Instant::now();
        while self.active_commit().as_deref() != Some(commit) {
            assert!(t.elapsed() < limit, "commit {commit} not active within {limit:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        t.elapsed()
    }
}

struct Reply {
    status: StatusCode,
    session: Option<String>,
    body: String,
}

async fn post(client: &HttpClient, url: &str, token: &str, session: Option<&str>, body: &Value) -> Reply {
    let mut req = Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {token}"));
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client.request(req).await.expect("the gateway answers");
    let status = resp.status();
    let session = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Reply { status, session, body }
}

async fn initialize(client: &HttpClient, url: &str) -> String {
    let r = post(
        client,
        url,
        TOKEN,
        None,
        &json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": { "name": "reconcile-bench", "version": "1" } } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "initialize: {}", r.body);
    r.session.expect("a session id")
}

/// The text of a denied `add` (names the rule and the commit that decided).
async fn denial(client: &HttpClient, url: &str, session: &mut String, id: u64) -> String {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": "mock__add", "arguments": { "a": 500, "b": 1 } } });
    loop {
        let r = post(client, url, TOKEN, Some(session), &body).await;
        if r.status == StatusCode::NOT_FOUND {
            *session = initialize(client, url).await; // the session ended: open another
            continue;
        }
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body));
        return v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("not a tool result: {v}"))
            .to_string();
    }
}

fn latency_part(s: &Settings, rt: &Runtime) -> Latency {
    println!("latency: starting the mock upstream and the daemon");
    let upstream = rt.block_on(start_upstream());
    let upstream_url = format!("http://{upstream}/mcp");
    let repo = WorkRepo::new();
    let (server, grant) = (small_server(&upstream_url), small_grant());
    let first = repo.commit(
        "first policy",
        &[("servers/mock.yaml", &server), ("grants/agent.yaml", &grant), ("policies/p.yaml", &small_policy(0))],
    );
    let g = rt.block_on(live(repo.dir.path(), SecretSource::default()));
    rt.block_on(g.wait_active(&first, Duration::from_secs(10)));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{}/mcp", g.url);
    let mut session = rt.block_on(initialize(&client, &url));
    let text = rt.block_on(denial(&client, &url, &mut session, 1));
    assert!(text.contains(&format!("commit {}", &first[..12])), "{text}");
    // Warm-up: one commit, not measured.
    let warm = repo.commit("warm-up", &[("policies/p.yaml", &small_policy(1))]);
    rt.block_on(g.wait_active(&warm, Duration::from_secs(10)));
    std::thread::sleep(s.gap);

    let mut out = Latency {
        samples: Vec::new(),
        reconcile: Vec::new(),
        commit: Vec::new(),
        read_compile: Vec::new(),
        call: Vec::new(),
        probes: Vec::new(),
        p50: 0.0,
        p99: 0.0,
    };
    let mut id = 10;
    for n in 0..s.commits {
        let version = n + 2;
        let (sum_before, count_before) = g.reconcile_metric();
        let policy = small_policy(version);
        let t_commit = Instant::now();
        let commit = repo.commit(&format!("Tighten add (v{version})"), &[("policies/p.yaml", &policy)]);
        let t0 = Instant::now();
        let commit_ms = ms(t0 - t_commit);
        let want = format!("commit {}", &commit[..12]);
        let (took, call_ms, probes) = rt.block_on(async {
            let mut probes = 0;
            loop {
                id += 1;
                probes += 1;
                let t_call = Instant::now();
                let text = denial(&client, &url, &mut session, id).await;
                if text.contains(&want) {
                    assert!(text.contains(&format!("deny_if/v{version}")), "{text}");
                    return (t0.elapsed(), ms(t_call.elapsed()), probes);
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "commit {commit} not deciding calls after 10 s: {text}"
                );
                tokio::time::sleep(s.poll).await;
            }
        });
        // The reconcile that applied it is counted just after the swap.
        let waited = Instant::now();
        let (sum_after, count_after) = loop {
            let m = g.reconcile_metric();
            if m.1 > count_before || waited.elapsed() > Duration::from_secs(2) {
                break m;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        if count_after != count_before + 1 {
            println!("  note: commit {n}: {} reconciles counted", count_after - count_before);
        }
        // Baseline: the same work without the daemon (read at HEAD, compile).
        let t_rc = Instant::now();
        let files = repo::read(repo.dir.path(), Some("HEAD")).expect("read HEAD");
        let compiled = repo::compile(&files).expect("a valid repository");
        let rc_ms = ms(t_rc.elapsed());
        assert_eq!(compiled.snapshot.commit.as_deref(), Some(commit.as_str()));

        out.samples.push(ms(took));
        out.reconcile.push(sum_after - sum_before);
        out.commit.push(commit_ms);
        out.read_compile.push(rc_ms);
        out.call.push(call_ms);
        out.probes.push(probes as f64);
        std::thread::sleep(s.gap);
    }
    out.p50 = median(&out.samples);
    out.p99 = percentile(&out.samples, 99.0);
    println!("latency: p50 {:.1} ms, p99 {:.1} ms over {} commits", out.p50, out.p99, out.samples.len());
    drop(g);
    out
}

// --- the mock upstream: initialize, tools/list (add), tools/call ---

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(upstream_handle);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

async fn upstream_handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = msg.get("id").cloned() else {
        return Ok(Response::builder().status(202).body(Full::new(Bytes::new())).unwrap());
    };
    let result = match msg["method"].as_str().unwrap_or("") {
        "initialize" => json!({ "protocolVersion": msg["params"]["protocolVersion"], "capabilities": { "tools": {} },
                                "serverInfo": { "name": "mock", "version": "1" } }),
        "tools/list" => {
            json!({ "tools": [ { "name": "add", "description": "a+b", "inputSchema": { "type": "object" } } ] })
        }
        "tools/call" => {
            let a = &msg["params"]["arguments"];
            json!({ "content": [ { "type": "text", "text": (a["a"].as_i64().unwrap_or(0) + a["b"].as_i64().unwrap_or(0)).to_string() } ] })
        }
        _ => json!({}),
    };
    let v = json!({ "jsonrpc": "2.0", "id": id, "result": result });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("mcp-session-id", "upstream-session-1")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap())
}

// ======================================================================================
// Part 2: scale
// ======================================================================================

/// splitmix64: a small deterministic generator (the repository is the same in every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Skewed towards 0: a few popular servers get most of the grants.
    fn popular(&mut self, n: usize) -> usize {
        let u = self.unit();
        ((u * u * u) * n as f64) as usize % n.max(1)
    }
}

const VERBS: [&str; 20] = [
    "list", "get", "search", "read", "query", "fetch", "export", "create", "update", "write", "send", "import", "sync",
    "approve", "delete", "purge", "run", "execute", "charge", "refund",
];
const NOUNS: [&str; 20] = [
    "issue", "file", "page", "record", "user", "message", "repo", "table", "ticket", "invoice", "event", "document",
    "task", "build", "report", "customer", "order", "channel", "dataset", "branch",
];

fn category(verb: &str) -> &'static str {
    match verb {
        "list" | "get" | "search" | "read" | "query" | "fetch" | "export" => "read",
        "create" | "update" | "write" | "send" | "import" | "sync" | "approve" => "write",
        "delete" | "purge" => "destructive",
        "run" | "execute" => "execute",
        _ => "financial",
    }
}

/// The counts of the generated repository.
#[derive(Clone, Copy)]
struct Counts {
    servers: usize,
    tools: usize,
    grants: usize,
    policies: usize,
    roles: usize,
}

impl Counts {
    fn scaled(f: f64) -> Counts {
        let n = |x: usize| ((x as f64 * f).round() as usize).max(1);
        let servers = n(SERVERS).max(3);
        Counts {
            servers,
            tools: n(TOOLS).max(servers),
            grants: n(GRANTS),
            policies: n(POLICIES).max(3),
            roles: n(ROLES),
        }
    }
}

/// A generated repository: files, and what the generator knows about it.
struct Generated {
    files: Vec<(String, String)>,
    counts: Counts,
    transports: [usize; 3],
    access_entries: usize,
    role_entries: usize,
    with_policy: usize,
    tokens: usize,
    bytes: usize,
}

/// Tool names per server such that the total is exactly `counts.tools`.
fn tool_counts(rng: &mut Rng, c: Counts) -> Vec<usize> {
    // Most servers have a handful of tools, a few have dozens.
    let weights: Vec<f64> = (0..c.servers).map(|_| 1.0 + 40.0 * rng.unit().powi(3)).collect();
    let total: f64 = weights.iter().sum();
    let cap = VERBS.len() * NOUNS.len();
    let mut counts: Vec<usize> =
        weights.iter().map(|w| ((w * c.tools as f64 / total).round() as usize).clamp(1, cap)).collect();
    let mut sum: usize = counts.iter().sum();
    while sum != c.tools {
        let i = rng.below(c.servers);
        if sum < c.tools && counts[i] < cap {
            counts[i] += 1;
            sum += 1;
        } else if sum > c.tools && counts[i] > 1 {
            counts[i] -= 1;
            sum -= 1;
        }
    }
    counts
}

/// The `count` tools of a server: distinct verb_noun names.
fn server_tools(seed: usize, count: usize) -> Vec<(String, &'static str)> {
    let n = VERBS.len() * NOUNS.len();
    let start = seed * 131 % n;
    (0..count)
        .map(|j| {
            let k = (start + j * 7) % n; // 7 is coprime with 400: no repeats
            let (v, o) = (VERBS[k / NOUNS.len()], NOUNS[k % NOUNS.len()]);
            (format!("{v}_{o}"), category(v))
        })
        .collect()
}

fn server_name(i: usize) -> String {
    format!("srv-{i:05}")
}

/// Policies aimed at one server (seed or rules style by parity), then generic ones.
fn policy_path(p: usize, targeted: usize) -> String {
    if p % 10 == 9 {
        format!("policies/json/p-{p:04}.json")
    } else if p < targeted && p.is_multiple_of(3) {
        format!("policies/team-{}/p-{p:04}.yaml", p % 7)
    } else {
        format!("policies/p-{p:04}.yaml")
    }
}

fn seed_entry(rng: &mut Rng, tool: &str, cat: &str, n: usize) -> Value {
    match cat {
        "read" if rng.chance(0.3) => json!({
            "require": [ { "path": "args.path", "op": "path_within", "value": ["/srv/projects", format!("/srv/team-{n}")] } ],
            "limits": [ { "name": "reads", "rate_limit": "120/minute" } ] }),
        "read" if rng.chance(0.3) => json!({
            "deny_if": [ { "name": "dangerous sql", "message": "No DDL through this tool",
                           "conditions": [ { "path": "args.query", "op": "regex", "value": "(?i)\\b(drop|truncate|alter)\\b" } ] } ] }),
        "read" => json!({}),
        "write" => json!({
            "deny_if": [
                { "name": "too many", "message": format!("{tool}: at most 100 items"), "conditions": [ { "path": "args.count", "op": "gt", "value": 100 } ] },
                { "name": "not production", "conditions": [ { "path": "args.target", "op": "regex", "value": "^(?!staging-|dev-)" } ] } ],
            "limits": [ { "name": "writes", "rate_limit": "30/minute" } ] }),
        "destructive" => json!({
            "deny_if": [ { "name": "needs ticket", "message": "Give a change ticket", "conditions": [ { "path": "args.ticket", "op": "exists", "value": false } ] } ],
            "require": [ { "path": "args.confirm", "op": "eq", "value": true } ] }),
        "execute" => json!({
            "require": [ { "path": "args.command", "op": "in", "value": ["make", "cargo", "npm"] } ],
            "limits": [ { "name": "runs", "rate_limit": "10/minute", "per": "identity" } ] }),
        _ => json!({
            "deny_if": [ { "name": "ceiling", "message": "At most $500.00 at once", "conditions": [ { "path": "args.amount", "op": "gt", "value": 50000 } ] } ],
            "limits": [ { "name": "daily spend", "sum": "args.amount", "max": 1_000_000, "window": "day", "per": "identity" } ] }),
    }
}

fn rules_entry(rng: &mut Rng, tool: &str, cat: &str) -> Value {
    match cat {
        "read" if rng.chance(0.5) => json!({}),
        "read" => {
            json!({ "rules": [ { "name": "page size", "conditions": [ { "path": "args.limit", "op": "lte", "value": 500 } ], "on_deny": "At most 500 rows" } ] })
        }
        "write" => json!({ "rules": [
            { "name": "known project", "conditions": [ { "path": "args.project", "op": "in", "value": ["alpha", "beta", "gamma"] } ], "on_deny": "Unknown project" },
            { "name": "write rate", "rate_limit": "20/minute" } ] }),
        "destructive" => json!({ "rules": [ { "name": "block deletion", "action": "deny" } ] }),
        "execute" => json!({ "rules": [
            { "name": "no sudo", "action": "deny", "conditions": [ { "path": "args.command", "op": "contains", "value": "sudo" } ] } ] }),
        _ => json!({ "rules": [
            { "name": "max single", "conditions": [ { "path": "args.amount", "op": "lte", "value": 50000 } ], "on_deny": "Single charge cannot exceed $500.00" },
            { "name": "daily cap", "conditions": [ { "path": format!("state.{tool}.daily_spend"), "op": "lte", "value": 1_000_000 } ],
              "state": { "counter": "daily_spend", "window": "day", "increment_from": "args.amount" } } ] }),
    }
}

fn generate(c: Counts) -> Generated {
    let mut rng = Rng(0x6761_7465_686f_7573);
    let counts = tool_counts(&mut rng, c);
    let tools: Vec<Vec<(String, &'static str)>> = counts.iter().enumerate().map(|(i, &n)| server_tools(i, n)).collect();
    let targeted = c.policies * 2 / 3; // policy p < targeted is written for server p
    let generic = c.policies - targeted;
    let mut files: Vec<(String, String)> = Vec::new();
    files.push(("gatehouse.yaml".into(), "version: \"1\"\naudit:\n  retention_days: 400\n".into()));
    files.push(("README.md".into(), "# Generated policy repository (reconcile bench)\n".into()));

    // Policies.
    for p in 0..c.policies {
        let mut doc = Map::new();
        doc.insert("version".into(), json!("1"));
        if p < targeted {
            let server_tools = &tools[p % c.servers];
            doc.insert("description".into(), json!(format!("What grants may do on {}", server_name(p % c.servers))));
            doc.insert("default".into(), json!("deny"));
            let mut entries = Map::new();
            let listed = server_tools.len().min(3 + rng.below(6));
            for (tool, cat) in server_tools.iter().take(listed) {
                let e = if p % 2 == 0 { seed_entry(&mut rng, tool, cat, p) } else { rules_entry(&mut rng, tool, cat) };
                entries.insert(tool.clone(), e);
            }
            if p % 4 == 1 {
                entries.insert(
                    "*".into(),
                    json!({ "rules": [ { "name": "global rate limit", "rate_limit": "60/minute" } ] }),
                );
            }
            if let Some((t, _)) = server_tools.iter().find(|(_, cat)| *cat == "destructive")
                && !entries.contains_key(t)
            {
                doc.insert("hide".into(), json!([t]));
            }
            doc.insert("tools".into(), Value::Object(entries));
        } else {
            // Generic: allow by default, hide the dangerous verbs, rate-limit everything.
            doc.insert("description".into(), json!(format!("Generic guard rails #{}", p - targeted)));
            doc.insert("default".into(), json!("allow"));
            let hidden: Vec<String> = NOUNS.iter().take(2 + p % 5).map(|n| format!("purge_{n}")).collect();
            doc.insert("hide".into(), json!(hidden));
            let mut entries = Map::new();
            if p % 2 == 0 {
                entries.insert("*".into(), json!({ "limits": [ { "name": "everything", "rate_limit": "600/hour" } ] }));
            } else {
                entries.insert(
                    "*".into(),
                    json!({ "rules": [ { "name": "global rate limit", "rate_limit": "60/minute" } ] }),
                );
                entries.insert(
                    "delete_record".into(),
                    json!({ "rules": [ { "name": "block deletion", "action": "deny", "conditions": [ { "path": "args.all", "op": "eq", "value": true } ] } ] }),
                );
            }
            doc.insert("tools".into(), Value::Object(entries));
            doc.insert("all_tools".into(), json!({ "limits": [ { "name": "hourly", "rate_limit": "1000/hour" } ] }));
        }
        let path = policy_path(p, targeted);
        let text = if path.ends_with(".json") {
            serde_json::to_string_pretty(&Value::Object(doc)).unwrap() + "\n"
        } else {
            yaml(&Value::Object(doc))
        };
        files.push((path, text));
    }

    // Servers.
    let mut transports = [0usize; 3];
    for i in 0..c.servers {
        let name = server_name(i);
        let mut doc = Map::new();
        doc.insert("name".into(), json!(name));
        doc.insert("description".into(), json!(format!("Generated MCP server {i} ({} tools)", tools[i].len())));
        let secret = format!("key-{}", i % SECRETS);
        match i % 10 {
            0..=4 => {
                transports[0] += 1;
                doc.insert("transport".into(), json!("streamable-http"));
                doc.insert("url".into(), json!(format!("https://mcp-{i:05}.example.com/mcp")));
                if i % 3 != 0 {
                    doc.insert(
                        "credentials".into(),
                        json!({ "headers": { "Authorization": format!("Bearer ${{secret:{secret}}}") } }),
                    );
                }
            }
            5 | 6 => {
                transports[1] += 1;
                doc.insert("transport".into(), json!("sse"));
                doc.insert("url".into(), json!(format!("https://sse-{i:05}.example.org/sse")));
                if i % 3 != 0 {
                    doc.insert(
                        "credentials".into(),
                        json!({ "headers": { "X-Api-Key": format!("${{secret:{secret}}}") } }),
                    );
                }
            }
            _ => {
                transports[2] += 1;
                doc.insert("transport".into(), json!("stdio"));
                doc.insert("command".into(), json!(["node", format!("/opt/mcp/{name}/dist/index.js"), "--stdio"]));
                if i % 3 != 0 {
                    doc.insert(
                        "credentials".into(),
                        json!({ "env": { "API_TOKEN": format!("${{secret:{secret}}}") } }),
                    );
                }
            }
        }
        if i < targeted && i % 3 == 0 && generic > 0 {
            doc.insert("policy".into(), json!(policy_path(targeted + i % generic, targeted)));
        }
        let timeout = ["10s", "30s", "2m"][i % 3];
        doc.insert("timeout".into(), json!(timeout));
        let external = i % 4 != 0;
        let risk = ["low", "medium", "high"][i % 3];
        let data: &[&str] = [&["source-code"][..], &["customer-data", "pii"][..], &["metrics"][..]][i % 3];
        doc.insert(
            "supplier".into(),
            json!({
                "operated_by": if external { "external" } else { "internal" },
                "vendor": format!("Vendor {}", i % 997),
                "risk": risk,
                "data": data,
                "agreement": format!("MSA-{}", 1000 + i % 500),
                "reviewed": { "on": format!("2026-{:02}-{:02}", 1 + i % 12, 1 + i % 28), "by": "sec@example.com" },
            }),
        );
        let mut ts = Map::new();
        for (j, (t, cat)) in tools[i].iter().enumerate() {
            let mut e = Map::new();
            e.insert("category".into(), json!(cat));
            if j % 5 == 0 {
                e.insert("sha256".into(), json!(hex::encode(Sha256::digest(format!("{name}/{t}").as_bytes()))));
            }
            ts.insert(t.clone(), Value::Object(e));
        }
        doc.insert("tools".into(), Value::Object(ts));
        files.push((format!("servers/{name}.yaml"), yaml(&Value::Object(doc))));
    }

    // Access entries (roles and grants).
    let mut with_policy = 0;
    let access = |rng: &mut Rng, with_policy: &mut usize| -> Value {
        let s = rng.popular(c.servers);
        let st = &tools[s];
        let mut e = Map::new();
        e.insert("server".into(), json!(server_name(s)));
        if rng.chance(0.2) {
            e.insert("tools".into(), json!("*"));
        } else {
            let k = 1 + rng.below(4.min(st.len()));
            let from = rng.below(st.len());
            let names: Vec<&str> = (0..k).map(|j| st[(from + j) % st.len()].0.as_str()).collect();
            e.insert("tools".into(), json!(names));
        }
        if s < targeted && rng.chance(0.5) {
            e.insert("policy".into(), json!(policy_path(s, targeted)));
            *with_policy += 1;
        } else if generic > 0 && rng.chance(0.15) {
            e.insert("policy".into(), json!(policy_path(targeted + rng.below(generic), targeted)));
            *with_policy += 1;
        }
        Value::Object(e)
    };
    for r in 0..c.roles {
        let entries: Vec<Value> = (0..1 + rng.below(3)).map(|_| access(&mut rng, &mut with_policy)).collect();
        let doc = json!({ "description": format!("Generated role {r}"), "access": entries });
        files.push((format!("roles/r-{r:03}.yaml"), yaml(&doc)));
    }
    let (mut access_entries, mut role_entries, mut tokens) = (0, 0, 0);
    for g in 0..c.grants {
        let agent = g % 5 < 2;
        let mut doc = Map::new();
        if agent {
            doc.insert("identity".into(), json!(format!("agent-{g:05}")));
            doc.insert("kind".into(), json!("agent"));
            doc.insert("owner".into(), json!(format!("owner-{}@example.com", g % 977)));
        } else {
            doc.insert("identity".into(), json!(format!("user-{g:05}@example.com")));
            doc.insert("kind".into(), json!("human"));
        }
        let n_tokens = 1 + usize::from(g % 4 == 0);
        let toks: Vec<Value> = (0..n_tokens)
            .map(|k| {
                let h = token_hash(&format!("gatehouse-bench-token-{g}-{k}"));
                if k == 0 {
                    json!({ "sha256": h, "issued": "2026-01-05", "expires": "2027-01-05" })
                } else {
                    json!({ "sha256": h })
                }
            })
            .collect();
        tokens += n_tokens;
        doc.insert("tokens".into(), Value::Array(toks));
        let mut entries = Vec::new();
        for _ in 0..1 + rng.below(3) {
            if c.roles > 0 && rng.chance(0.25) {
                entries.push(json!({ "role": format!("r-{:03}", rng.popular(c.roles)) }));
                role_entries += 1;
            } else {
                entries.push(access(&mut rng, &mut with_policy));
            }
            access_entries += 1;
        }
        doc.insert("access".into(), Value::Array(entries));
        if g % 5 == 0 {
            doc.insert("quotas".into(), json!([ { "name": "per-person ceiling", "rate_limit": "120/minute" } ]));
        }
        if g % 3 == 0 {
            doc.insert("review".into(), json!({ "on": "2026-11-20", "by": "carol@example.com" }));
        }
        files.push((format!("grants/g-{g:05}.yaml"), yaml(&Value::Object(doc))));
    }
    let bytes = files.iter().map(|(p, t)| p.len() + t.len()).sum();
    Generated { files, counts: c, transports, access_entries, role_entries, with_policy, tokens, bytes }
}

// --- a small block-YAML writer for the generated documents ---

fn yaml(v: &Value) -> String {
    let mut out = String::new();
    if let Value::Object(m) = v {
        block_map(m, 0, false, &mut out);
    } else {
        out.push_str(&flow(v));
        out.push('\n');
    }
    out
}

/// Short enough to write on one line: scalars, lists of scalars, small mappings of scalars.
fn inline(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().all(|x| !x.is_array() && !x.is_object()),
        Value::Object(m) => m.is_empty() || (m.len() <= 4 && m.values().all(|x| !x.is_object() && inline(x))),
        _ => true,
    }
}

fn block_map(m: &Map<String, Value>, indent: usize, first_inline: bool, out: &mut String) {
    for (i, (k, v)) in m.iter().enumerate() {
        if !(i == 0 && first_inline) {
            out.push_str(&" ".repeat(indent));
        }
        let _ = write!(out, "{}:", scalar(k));
        if inline(v) {
            let _ = writeln!(out, " {}", flow(v));
        } else {
            out.push('\n');
            block(v, indent + 2, out);
        }
    }
}

fn block(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) => block_map(m, indent, false, out),
        Value::Array(a) => {
            for item in a {
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                match item {
                    Value::Object(m) if !inline(item) => block_map(m, indent + 2, true, out),
                    _ => {
                        out.push_str(&flow(item));
                        out.push('\n');
                    }
                }
            }
        }
        _ => {
            out.push_str(&" ".repeat(indent));
            out.push_str(&flow(v));
            out.push('\n');
        }
    }
}

fn flow(v: &Value) -> String {
    match v {
        Value::String(s) => scalar(s),
        Value::Array(a) => format!("[{}]", a.iter().map(flow).collect::<Vec<_>>().join(", ")),
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Object(m) => format!(
            "{{ {} }}",
            m.iter().map(|(k, v)| format!("{}: {}", scalar(k), flow(v))).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// A string as a plain YAML scalar when that reads back as the same string, else double-quoted.
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || " _-./@".contains(c))
        && !s.ends_with(' ')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain { s.to_string() } else { serde_json::to_string(s).unwrap() }
}

// --- committing the generated repository ---

/// Commits `files` as the whole tree of a new commit on HEAD (no working tree is written).
fn commit_tree(repo: &git2::Repository, files: &[(String, String)], message: &str) -> git2::Oid {
    let mut b = git2::build::TreeUpdateBuilder::new();
    for (p, text) in files {
        let id = repo.blob(text.as_bytes()).unwrap();
        b.upsert(p.as_str(), id, git2::FileMode::Blob);
    }
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let base = match &parent {
        Some(c) => c.tree().unwrap(),
        None => repo.find_tree(repo.treebuilder(None).unwrap().write().unwrap()).unwrap(),
    };
    let tree = repo.find_tree(b.create_updated(repo, &base).unwrap()).unwrap();
    let sig = git2::Signature::now("Bench Generator", "gen@example.com").unwrap();
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).unwrap()
}

// --- one snapshot build, as the reconciler does it ---

struct Build {
    read: f64,
    compile: f64,
    bind: f64,
    /// CPU time of this thread over the build, and time it waited for a CPU (run queue).
    cpu: f64,
    wait: f64,
    files: usize,
    warnings: usize,
    snapshot: gatehouse::policy::snapshot::Snapshot,
    secrets: secrets::BoundSecrets,
}

/// (on-CPU ms, run-queue wait ms) of the calling thread so far (`/proc/thread-self/schedstat`).
fn thread_cpu() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().unwrap_or(f64::NAN) / 1e6);
    (it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN))
}

fn build(path: &Path, source: &SecretSource) -> Build {
    let (cpu0, wait0) = thread_cpu();
    let t = Instant::now();
    let pr = PolicyRepo::discover(path).expect("a git repository");
    let id = pr.resolve("HEAD").expect("HEAD");
    let entries = pr.files_at(id).expect("files at HEAD");
    let read = ms(t.elapsed());
    let files = Files { commit: Some(id.to_string()), entries };
    let n = files.entries.len();
    let t = Instant::now();
    let compiled = repo::compile(&files).unwrap_or_else(|d| panic!("the generated repository is invalid:\n{d}"));
    let compile = ms(t.elapsed());
    let t = Instant::now();
    let bound = secrets::bind(&compiled.snapshot, source).unwrap_or_else(|e| panic!("{e:?}"));
    let bind = ms(t.elapsed());
    drop(files);
    let (cpu1, wait1) = thread_cpu();
    Build {
        read,
        compile,
        bind,
        cpu: cpu1 - cpu0,
        wait: wait1 - wait0,
        files: n,
        warnings: compiled.warnings.len(),
        snapshot: compiled.snapshot,
        secrets: bound,
    }
}

// --- where compile's time goes ---

struct SplitRow {
    name: String,
    files: usize,
    wall: f64,
    cpu: f64,
    /// Heap held by the results (parsers alone), measured in a separate pass.
    heap_mib: Option<f64>,
}

fn copy_entry(e: &Entry) -> Entry {
    match e {
        Entry::Blob(b) => Entry::Blob(b.clone()),
        Entry::Symlink => Entry::Symlink,
        Entry::TooLarge(n) => Entry::TooLarge(*n),
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (c0, _) = thread_cpu();
    let t = Instant::now();
    let v = f();
    let wall = ms(t.elapsed());
    let (c1, _) = thread_cpu();
    (v, wall, c1 - c0)
}

struct NoEvents;

impl yaml_rust2::parser::MarkedEventReceiver for NoEvents {
    fn on_event(&mut self, _ev: yaml_rust2::parser::Event, _mark: yaml_rust2::scanner::Marker) {}
}

/// Compiles growing subsets of the repository (each subset is valid on its own), so the cost per
/// kind of file shows as a difference; then runs each YAML parser alone over every file.
fn split(path: &Path) -> Vec<SplitRow> {
    let pr = PolicyRepo::discover(path).expect("a git repository");
    let id = pr.resolve("HEAD").expect("HEAD");
    let all = pr.files_at(id).expect("files at HEAD");
    let mut rows = Vec::new();
    let stages: [(&str, &[&str]); 4] = [
        ("compile: settings + policies", &["gatehouse.yaml", "policies/"]),
        ("compile: + servers", &["gatehouse.yaml", "policies/", "servers/"]),
        ("compile: + roles", &["gatehouse.yaml", "policies/", "servers/", "roles/"]),
        (
            "compile: + grants (the whole repository)",
            &["gatehouse.yaml", "policies/", "servers/", "roles/", "grants/", "README.md"],
        ),
    ];
    for (name, prefixes) in stages {
        let entries = all
            .iter()
            .filter(|(p, _)| prefixes.iter().any(|x| p.starts_with(x)))
            .map(|(p, e)| (p.clone(), copy_entry(e)))
            .collect();
        let files = Files { commit: Some(id.to_string()), entries };
        let (compiled, wall, cpu) = timed(|| repo::compile(&files));
        assert!(compiled.is_ok(), "{name}: the subset does not compile");
        rows.push(SplitRow { name: name.into(), files: files.entries.len(), wall, cpu, heap_mib: None });
    }
    let texts: Vec<(&str, &str)> = all
        .iter()
        .filter_map(|(p, e)| match e {
            Entry::Blob(b) if p.ends_with(".yaml") || p.ends_with(".json") => {
                Some((p.as_str(), std::str::from_utf8(b).ok()?))
            }
            _ => None,
        })
        .collect();
    let (n, wall, cpu) = timed(|| {
        texts
            .iter()
            .map(|(p, t)| {
                if p.ends_with(".json") {
                    serde_json::from_str::<Value>(t).is_ok()
                } else {
                    serde_yaml::from_str::<Value>(t).is_ok()
                }
            })
            .filter(|ok| *ok)
            .count()
    });
    // The heap all those values hold at once (compile keeps every parsed document to the end).
    COUNTING.store(true, Ordering::Relaxed);
    let base = heap_live();
    let values: Vec<Value> = texts
        .iter()
        .map(|(p, t)| {
            if p.ends_with(".json") {
                serde_json::from_str(t).unwrap_or_default()
            } else {
                serde_yaml::from_str(t).unwrap_or_default()
            }
        })
        .collect();
    let held = mib(heap_live() - base);
    drop(values);
    COUNTING.store(false, Ordering::Relaxed);
    rows.push(SplitRow {
        name: "parse only: serde_yaml (JSON: serde_json) → Value".into(),
        files: n,
        wall,
        cpu,
        heap_mib: Some(held),
    });
    let (n, wall, cpu) = timed(|| {
        texts
            .iter()
            .map(|(_, t)| yaml_rust2::parser::Parser::new_from_str(t).load(&mut NoEvents, false).is_ok())
            .filter(|ok| *ok)
            .count()
    });
    rows.push(SplitRow {
        name: "parse only: yaml-rust2 events (what Locator walks)".into(),
        files: n,
        wall,
        cpu,
        heap_mib: None,
    });
    rows
}

// --- memory, in a child process ---

/// (VmRSS, VmHWM) in MiB.
fn vm() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets VmHWM to the current VmRSS (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn memory_child(repo: &Path, secrets_dir: &Path) -> Value {
    let source = SecretSource { dir: Some(secrets_dir.to_path_buf()) };
    let (rss0, _) = vm();
    let hwm_reset = reset_hwm();
    COUNTING.store(true, Ordering::Relaxed);
    heap_reset_peak();
    let h0 = heap_live();
    // The first build (start-up, or the first commit).
    let t = Instant::now();
    let a = build(repo, &source);
    let first_ms = ms(t.elapsed());
    let (rss1, hwm1) = vm();
    let (h1, hp1) = (heap_live() - h0, heap_peak() - h0);
    // The access matrix of the active snapshot, which the reconciler holds while building the next.
    let t = Instant::now();
    let ma = access::matrix(&a.snapshot);
    let matrix_ms = ms(t.elapsed());
    let (rss2, _) = vm();
    let h2 = heap_live() - h0;
    // A reconcile step: the active snapshot and its matrix held, the next snapshot and its matrix
    // built (same content; a new commit would differ by a file).
    reset_hwm();
    heap_reset_peak();
    let b = build(repo, &source);
    let mb = access::matrix(&b.snapshot);
    let diff = access::diff(&ma, &mb);
    let (rss3, hwm3) = vm();
    let (h3, hp3) = (heap_live() - h0, heap_peak() - h0);
    COUNTING.store(false, Ordering::Relaxed);
    let cells = ma.len();
    let star = ma.iter().filter(|c| c.tool == "*").count();
    let identities = ma.iter().map(|c| c.identity.as_str()).collect::<BTreeSet<_>>().len();
    drop((b, mb, diff));
    json!({
        "hwm_reset": hwm_reset,
        "rss_start_mib": r1(rss0),
        "first_build_ms": r1(first_ms),
        "rss_holding_snapshot_mib": r1(rss1),
        "hwm_first_build_mib": r1(hwm1),
        "heap_snapshot_mib": r1(mib(h1)),
        "heap_peak_first_build_mib": r1(mib(hp1)),
        "matrix_ms": r1(matrix_ms),
        "rss_holding_snapshot_and_matrix_mib": r1(rss2),
        "heap_matrix_mib": r1(mib(h2 - h1)),
        "matrix_cells": cells,
        "matrix_star_cells": star,
        "matrix_identities": identities,
        "rss_after_step_mib": r1(rss3),
        "hwm_step_mib": r1(hwm3),
        "heap_two_snapshots_two_matrices_mib": r1(mib(h3)),
        "heap_peak_step_mib": r1(mib(hp3)),
        "snapshot_servers": a.snapshot.servers.len(),
        "snapshot_grants": a.snapshot.grants.len(),
        "snapshot_policies": a.snapshot.policies.len(),
        "snapshot_roles": a.snapshot.roles.len(),
        "bound_servers": a.secrets.len(),
    })
}

struct Memory {
    raw: Value,
    hwm_first_mib: f64,
    hwm_step_mib: f64,
}

impl Memory {
    fn rss_peak_mib(&self) -> f64 {
        self.hwm_first_mib.max(self.hwm_step_mib)
    }
}

fn run_memory_child(repo: &Path, secrets_dir: &Path) -> Option<Memory> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .env("RECONCILE_CHILD_REPO", repo)
        .env("RECONCILE_CHILD_SECRETS", secrets_dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("MEMORY ")) else {
        println!("  memory child failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        return None;
    };
    let raw: Value = serde_json::from_str(line).ok()?;
    let f = |k: &str| raw[k].as_f64().unwrap_or(f64::NAN);
    Some(Memory { hwm_first_mib: f("hwm_first_build_mib"), hwm_step_mib: f("hwm_step_mib"), raw })
}

// --- the scale part ---

struct Scale {
    gen_counts: Counts,
    transports: [usize; 3],
    access_entries: usize,
    role_entries: usize,
    with_policy: usize,
    tokens: usize,
    files: usize,
    mib: f64,
    generate_ms: f64,
    git_commit_ms: f64,
    read: Vec<f64>,
    compile: Vec<f64>,
    bind: Vec<f64>,
    total: Vec<f64>,
    cpu: Vec<f64>,
    wait: Vec<f64>,
    matrix: Vec<f64>,
    cells: usize,
    split: Vec<SplitRow>,
    memory: Option<Memory>,
    /// Daemon on the generated repository: start-up until the first snapshot is active.
    daemon_start_ms: Option<f64>,
    /// One-grant commits: commit returned → new snapshot active; and the reconcile's own time.
    daemon_commit: Vec<f64>,
    daemon_reconcile: Vec<f64>,
}

impl Scale {
    fn build_ms(&self) -> f64 {
        median(&self.total)
    }

    fn print(&self) {
        let c = self.gen_counts;
        println!(
            "snapshot at scale: {} servers ({} streamable-http, {} sse, {} stdio), {} tools, {} grants ({} tokens, {} access entries, {} via roles, {} with a policy), {} roles, {} policies; {} files, {:.1} MiB",
            c.servers,
            self.transports[0],
            self.transports[1],
            self.transports[2],
            c.tools,
            c.grants,
            self.tokens,
            self.access_entries,
            self.role_entries,
            self.with_policy,
            c.roles,
            c.policies,
            self.files,
            self.mib
        );
        println!(
            "  generated in {:.0} ms, committed (git2, loose objects) in {:.0} ms",
            self.generate_ms, self.git_commit_ms
        );
        println!(
            "  {:<52} {:>9} {:>9} {:>9}",
            format!("(median of {} builds)", self.total.len()),
            "median ms",
            "min ms",
            "max ms"
        );
        let row = |name: &str, v: &[f64]| {
            let min = v.iter().copied().fold(f64::NAN, f64::min);
            println!("  {:<52} {:>9.1} {:>9.1} {:>9.1}", name, median(v), min, max(v));
        };
        row("read files at the commit (git2 files_at)", &self.read);
        row("repo::compile", &self.compile);
        row("secrets::bind", &self.bind);
        row("snapshot build = read + compile + bind", &self.total);
        row("  its CPU time (this thread, schedstat)", &self.cpu);
        row("  its wait for a CPU (other load on the machine)", &self.wait);
        row(&format!("access::matrix ({} cells)", self.cells), &self.matrix);
        let step: Vec<f64> = self.total.iter().zip(&self.matrix).map(|(t, m)| t + 2.0 * m).collect();
        row("reconcile step estimate = build + 2 matrices", &step);
        if !self.split.is_empty() {
            println!(
                "  where compile's time goes (one run each; compile of growing subsets, and the two YAML parsers alone):"
            );
            println!(
                "    {:<50} {:>7} {:>9} {:>9} {:>11} {:>9}",
                "", "files", "wall ms", "cpu ms", "cpu us/file", "held MiB"
            );
            for r in &self.split {
                let held = r.heap_mib.map_or(String::new(), |h| format!("{h:.1}"));
                println!(
                    "    {:<50} {:>7} {:>9.0} {:>9.0} {:>11.0} {:>9}",
                    r.name,
                    r.files,
                    r.wall,
                    r.cpu,
                    r.cpu * 1e3 / r.files.max(1) as f64,
                    held
                );
            }
        }
        if let Some(m) = &self.memory {
            let f = |k: &str| m.raw[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "  memory (fresh child process; VmRSS/VmHWM from /proc/self/status, heap from a counting allocator):"
            );
            println!("    {:<58} {:>8.1} MiB", "VmRSS at start", f("rss_start_mib"));
            println!(
                "    {:<58} {:>8.1} MiB",
                "VmRSS holding the snapshot (+ bound secrets)",
                f("rss_holding_snapshot_mib")
            );
            println!("    {:<58} {:>8.1} MiB", "VmHWM during the first build", f("hwm_first_build_mib"));
            println!(
                "    {:<58} {:>8.1} MiB",
                "VmRSS holding the snapshot and its access matrix",
                f("rss_holding_snapshot_and_matrix_mib")
            );
            println!(
                "    {:<58} {:>8.1} MiB",
                "VmHWM across a reconcile step (old + new snapshot, 2 matrices)",
                f("hwm_step_mib")
            );
            println!("    {:<58} {:>8.1} MiB", "heap held by one snapshot + secrets", f("heap_snapshot_mib"));
            println!("    {:<58} {:>8.1} MiB", "heap peak during the first build", f("heap_peak_first_build_mib"));
            println!("    {:<58} {:>8.1} MiB", "heap held by one access matrix", f("heap_matrix_mib"));
            println!("    {:<58} {:>8.1} MiB", "heap peak across a reconcile step", f("heap_peak_step_mib"));
            println!("    {:<58} {:>8.0} ms", "first build in the fresh process", f("first_build_ms"));
        }
        if let Some(start) = self.daemon_start_ms {
            println!("  daemon on the generated repository (serve::start, ref watcher):");
            println!("    {:<58} {:>8.0} ms", "start → first snapshot active", start);
            if !self.daemon_commit.is_empty() {
                println!(
                    "    {:<58} {:>8.0} ms (max {:.0})",
                    format!("one-grant commit → new snapshot active (median of {})", self.daemon_commit.len()),
                    median(&self.daemon_commit),
                    max(&self.daemon_commit)
                );
                println!("    {:<58} {:>8.0} ms", "  of which: the reconcile (metric)", median(&self.daemon_reconcile));
            }
        }
        println!();
    }

    fn json(&self) -> Value {
        let c = self.gen_counts;
        let st = |v: &[f64]| json!({ "median": r1(median(v)), "max": r1(max(v)), "runs": v.iter().map(|x| r1(*x)).collect::<Vec<_>>() });
        json!({
            "servers": c.servers, "tools": c.tools, "grants": c.grants, "roles": c.roles, "policies": c.policies,
            "transports": { "streamable_http": self.transports[0], "sse": self.transports[1], "stdio": self.transports[2] },
            "tokens": self.tokens, "access_entries": self.access_entries, "role_entries": self.role_entries, "entries_with_policy": self.with_policy,
            "files": self.files, "repository_mib": r1(self.mib),
            "generate_ms": r1(self.generate_ms), "git_commit_ms": r1(self.git_commit_ms),
            "read_ms": st(&self.read), "compile_ms": st(&self.compile), "bind_ms": st(&self.bind), "build_ms": st(&self.total),
            "build_cpu_ms": st(&self.cpu), "build_cpu_wait_ms": st(&self.wait),
            "compile_split": self.split.iter().map(|r| json!({ "name": r.name, "files": r.files, "wall_ms": r1(r.wall), "cpu_ms": r1(r.cpu), "held_mib": r.heap_mib.map(r1) })).collect::<Vec<_>>(),
            "matrix_ms": st(&self.matrix), "matrix_cells": self.cells,
            "memory": self.memory.as_ref().map(|m| m.raw.clone()),
            "daemon_start_ms": self.daemon_start_ms.map(r1),
            "daemon_commit_to_active_ms": st(&self.daemon_commit),
            "daemon_reconcile_ms": st(&self.daemon_reconcile),
        })
    }
}

fn scale_part(s: &Settings, rt: &Runtime) -> Scale {
    let c = Counts::scaled(s.scale);
    println!(
        "scale: generating {} servers, {} tools, {} grants, {} roles, {} policies",
        c.servers, c.tools, c.grants, c.roles, c.policies
    );
    let t = Instant::now();
    let generated = generate(c);
    let generate_ms = ms(t.elapsed());
    let dir = tempfile::tempdir().unwrap();
    let secrets_dir = tempfile::tempdir().unwrap();
    for k in 0..SECRETS {
        std::fs::write(secrets_dir.path().join(format!("key-{k}")), format!("bench-secret-value-{k}\n")).unwrap();
    }
    let source = SecretSource { dir: Some(secrets_dir.path().to_path_buf()) };
    let repo = git2::Repository::init(dir.path()).unwrap();
    let t = Instant::now();
    let head = commit_tree(&repo, &generated.files, "Generated repository at the scale of the public MCP ecosystem");
    let git_commit_ms = ms(t.elapsed());
    println!(
        "scale: {} files ({:.1} MiB) generated in {:.0} ms, committed in {:.0} ms",
        generated.files.len(),
        generated.bytes as f64 / 1048576.0,
        generate_ms,
        git_commit_ms
    );
    let mut out = Scale {
        gen_counts: generated.counts,
        transports: generated.transports,
        access_entries: generated.access_entries,
        role_entries: generated.role_entries,
        with_policy: generated.with_policy,
        tokens: generated.tokens,
        files: generated.files.len(),
        mib: generated.bytes as f64 / (1024.0 * 1024.0),
        generate_ms,
        git_commit_ms,
        read: Vec::new(),
        compile: Vec::new(),
        bind: Vec::new(),
        total: Vec::new(),
        cpu: Vec::new(),
        wait: Vec::new(),
        matrix: Vec::new(),
        cells: 0,
        split: Vec::new(),
        memory: None,
        daemon_start_ms: None,
        daemon_commit: Vec::new(),
        daemon_reconcile: Vec::new(),
    };
    let grant_files: Vec<(String, String)> =
        generated.files.iter().filter(|(p, _)| p.starts_with("grants/")).take(s.daemon_commits).cloned().collect();
    drop(generated);

    // Memory first, in a fresh process.
    out.memory = run_memory_child(dir.path(), secrets_dir.path());
    if let Some(m) = &out.memory {
        println!(
            "scale: memory child: VmHWM {:.0} MiB (first build), {:.0} MiB (reconcile step)",
            m.hwm_first_mib, m.hwm_step_mib
        );
    }

    for run in 0..s.builds {
        let b = build(dir.path(), &source);
        assert_eq!(b.snapshot.commit.as_deref(), Some(head.to_string().as_str()));
        assert_eq!(b.snapshot.servers.len(), c.servers);
        assert_eq!(b.snapshot.grants.len(), c.grants);
        assert_eq!(b.snapshot.servers.values().map(|s| s.tools.len()).sum::<usize>(), c.tools);
        let t = Instant::now();
        let m = access::matrix(&b.snapshot);
        let matrix_ms = ms(t.elapsed());
        out.cells = m.len();
        println!(
            "scale: build {}: {} files ({} warnings), read {:.0} ms + compile {:.0} ms + bind {:.1} ms = {:.0} ms (on CPU {:.0} ms, waiting for a CPU {:.0} ms); matrix {:.0} ms",
            run + 1,
            b.files,
            b.warnings,
            b.read,
            b.compile,
            b.bind,
            b.read + b.compile + b.bind,
            b.cpu,
            b.wait,
            matrix_ms
        );
        out.read.push(b.read);
        out.compile.push(b.compile);
        out.bind.push(b.bind);
        out.total.push(b.read + b.compile + b.bind);
        out.cpu.push(b.cpu);
        out.wait.push(b.wait);
        out.matrix.push(matrix_ms);
        drop((m, b));
    }

    if s.split {
        out.split = split(dir.path());
    }

    // The daemon on the generated repository.
    if s.daemon_commits > 0 {
        let t = Instant::now();
        let g = rt.block_on(live(dir.path(), source.clone()));
        let head_hex = head.to_string();
        rt.block_on(g.wait_active(&head_hex, Duration::from_secs(120)));
        out.daemon_start_ms = Some(ms(t.elapsed()));
        println!("scale: daemon started and applied the generated commit in {:.0} ms", out.daemon_start_ms.unwrap());
        for (n, (path, text)) in grant_files.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(200));
            let (sum_before, count_before) = g.reconcile_metric();
            // Rotate this grant's review date: a one-file change, as a pull request would be.
            let changed = format!("{text}description: reviewed again ({n})\n");
            let commit = commit_tree(&repo, &[(path.clone(), changed)], &format!("Review {path} (#{})", 100 + n));
            let t0 = Instant::now();
            rt.block_on(g.wait_active(&commit.to_string(), Duration::from_secs(120)));
            let took = ms(t0.elapsed());
            let waited = Instant::now();
            let (sum_after, _) = loop {
                let m = g.reconcile_metric();
                if m.1 > count_before || waited.elapsed() > Duration::from_secs(5) {
                    break m;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            println!(
                "scale: daemon commit {}: active after {:.0} ms (reconcile {:.0} ms)",
                n + 1,
                took,
                sum_after - sum_before
            );
            out.daemon_commit.push(took);
            out.daemon_reconcile.push(sum_after - sum_before);
        }
        drop(g);
    }
    if s.keep {
        let kept = dir.keep();
        let kept_secrets = secrets_dir.keep();
        println!("scale: kept the generated repository at {} (secrets: {})", kept.display(), kept_secrets.display());
    }
    out
}
