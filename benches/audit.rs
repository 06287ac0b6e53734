//! Audit log benchmark: what the write-ahead, hash-chained call log costs, in one process run.
//!
//! Three parts:
//!
//! - **write**: sustained append rate. A `Store` in a temporary directory (WAL,
//!   `synchronous=FULL`, group commit), `AuditLog::append` from `AUDIT_INFLIGHT` concurrent tasks
//!   for `AUDIT_WRITE_SECONDS`; records/s, append latency, and the commits (one WAL fsync each)
//!   it took, read from the wal-index header's transaction counter (`iChange` in the `-shm`
//!   file), with the device's flush count from `/proc/diskstats` beside it (device-wide, so it
//!   includes checkpoints and anything else writing to that disk). Then the baseline in the same
//!   run: the same number of records appended one at a time, awaiting each (no grouping: one
//!   commit per record), capped at `AUDIT_BASELINE_MAX` seconds, to show the group-commit gain.
//! - **latency**: the audit path's added latency. One loopback mock upstream (hyper, JSON
//!   answers) and the gateway run in-process twice: once with `State::with_store` (audit on:
//!   the decision record is durable before the upstream call, the outcome record follows in the
//!   background) and once with `State::new` (no call log: the benchmark-only configuration).
//!   For 1 and 32 clients (each one keep-alive connection, calls in sequence) it warms both up and
//!   alternates on/off slices; p50/p99 per call and the ratio on/off.
//! - **verify**: `audit verify` over `AUDIT_VERIFY_RECORDS` records (1,000,000), generated with
//!   `audit::log::append_in` in big transactions on a raw connection (`synchronous=OFF`: only the
//!   generation, not what is measured); then `audit::verify::verify` in-process and the
//!   `gatehouse audit verify --data-dir` command, timed (the page cache is warm: the records
//!   were just written).
//!
//! - **disk**: bytes on disk per call (decision and outcome records). `AUDIT_DISK_CALLS` calls
//!   of realistic records (a session every `AUDIT_DISK_SESSION_CALLS` calls) appended with
//!   `append_in` into a fresh database, checkpointed; the growth of the file per call. Then the
//!   same calls in the schema-4 layout (the `calls` table with the canonical JSON, hex hashes
//!   and the duplicated columns, inserted as the schema-4 writer did; `calls_v4` since
//!   migration 5), each verified and timed, and the current layout
//!   with a new session every call (the worst case of interning), in the same run.
//!
//! Environment (all optional):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AUDIT_PARTS` | write,latency,verify,disk | which parts to run |
//! | `AUDIT_WRITE_SECONDS` | 3 | measured seconds of concurrent appends |
//! | `AUDIT_INFLIGHT` | 128 | concurrent appending tasks |
//! | `AUDIT_BASELINE_MAX` | 10 | cap (seconds) of the one-at-a-time baseline |
//! | `AUDIT_LAT_SECONDS` | 4 | measured seconds per configuration and client count |
//! | `AUDIT_LAT_WARMUP` | 1 | warm-up seconds per configuration and client count |
//! | `AUDIT_LAT_ROUNDS` | 4 | alternating on/off slices |
//! | `AUDIT_LAT_CLIENTS` | 1,32 | client counts |
//! | `AUDIT_VERIFY_RECORDS` | 1000000 | records generated for verify |
//! | `AUDIT_DISK_CALLS` | 20000 | calls appended for disk |
//! | `AUDIT_DISK_SESSION_CALLS` | 20 | calls per session for disk |
//! | `AUDIT_THREADS` | cores | worker threads of each runtime |
//! | `AUDIT_DIR` | the system temp dir | where the temporary databases go (must be a real disk for fsync numbers to mean anything) |
//! | `AUDIT_ENFORCE` | 0 | 1: exit 3 when a target is missed |
//!
//! Output: a table per part, then one line `RESULT {json}`. Run with `scripts/bench-audit` (or
//! `cargo bench --bench audit`). Takes about a minute and a half with the defaults.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse::record::audit::CallRecord;
use gatehouse::record::audit::log::{AuditLog, append_in};
use gatehouse::record::audit::verify::{Verdict, verify};
use gatehouse::gateway::proxy::{self, Active, Config, State};
use gatehouse::repo::{Files, compile};
use gatehouse::gateway::secrets::{SecretSource, bind};
use gatehouse::record::store::Store;
use gatehouse::units::now_rfc3339_ms;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

const TARGET_WRITES_PER_S: f64 = 20_000.0;
const TARGET_VERIFY_S_PER_MILLION: f64 = 5.0;

const TOKEN: &str = "audit-bench-token-0123456789abcdef";
const ARGS: &str = r#"{"path":"/srv/projects/app/README.md"}"#;
const PROTOCOL: &str = "2025-11-25";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Settings {
    parts: Vec<String>,
    write_seconds: f64,
    inflight: usize,
    baseline_max: f64,
    lat_seconds: f64,
    lat_warmup: f64,
    lat_rounds: u32,
    lat_clients: Vec<usize>,
    verify_records: u64,
    disk_calls: u64,
    disk_session_calls: u64,
    threads: usize,
    dir: PathBuf,
    enforce: bool,
}

fn settings(cores: usize) -> Settings {
    fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
        match std::env::var(name) {
            Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
            Err(_) => default,
        }
    }
    let list = |name: &str, default: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let lat_clients: Vec<usize> = list("AUDIT_LAT_CLIENTS", "1,32")
        .iter()
        .map(|c| c.parse().unwrap_or_else(|_| panic!("AUDIT_LAT_CLIENTS: {c:?} is not a number")))
        .collect();
    assert!(
        lat_clients.iter().all(|&c| c > 0 && c <= 60),
        "AUDIT_LAT_CLIENTS: 1 to 60 clients (64 sessions per grant)"
    );
    Settings {
        parts: list("AUDIT_PARTS", "write,latency,verify,disk"),
        write_seconds: var("AUDIT_WRITE_SECONDS", 3.0),
        inflight: var("AUDIT_INFLIGHT", 128usize).max(1),
        baseline_max: var("AUDIT_BASELINE_MAX", 10.0),
        lat_seconds: var("AUDIT_LAT_SECONDS", 4.0),
        lat_warmup: var("AUDIT_LAT_WARMUP", 1.0),
        lat_rounds: var("AUDIT_LAT_ROUNDS", 4u32).max(1),
        lat_clients,
        verify_records: var("AUDIT_VERIFY_RECORDS", 1_000_000u64).max(1),
        disk_calls: var("AUDIT_DISK_CALLS", 20_000u64).max(1),
        disk_session_calls: var("AUDIT_DISK_SESSION_CALLS", 20u64).max(1),
        threads: var("AUDIT_THREADS", cores).max(1),
        dir: std::env::var_os("AUDIT_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir),
        enforce: var("AUDIT_ENFORCE", 0u8) != 0,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let s = settings(cores);
    std::fs::create_dir_all(&s.dir).expect("AUDIT_DIR");
    println!(
        "audit bench: {cores} cores; databases under {} ({}); parts: {}",
        s.dir.display(),
        filesystem_of(&s.dir),
        s.parts.join(",")
    );
    let mut result = json!({ "cores": cores, "filesystem": filesystem_of(&s.dir) });
    let mut verdicts: Vec<(String, bool, String)> = Vec::new();

    if s.parts.iter().any(|p| p == "write") {
        let w = write_part(&s);
        w.print();
        let ok = w.grouped.per_sec >= TARGET_WRITES_PER_S;
        verdicts.push((
            format!("sustained writes >= {TARGET_WRITES_PER_S:.0} records/s (synchronous=FULL)"),
            ok,
            format!("measured {:.0} records/s", w.grouped.per_sec),
        ));
        result["write"] = w.json();
    }
    if s.parts.iter().any(|p| p == "latency") {
        let rows = latency_part(&s);
        print_latency(&rows);
        result["latency"] = Value::Array(rows.iter().map(LatRow::json).collect());
    }
    if s.parts.iter().any(|p| p == "verify") {
        let v = verify_part(&s);
        v.print();
        let per_million = v.cli_s * 1e6 / v.records as f64;
        let scaled =
            if v.records == 1_000_000 { String::new() } else { format!(" (scaled from {} records)", v.records) };
        verdicts.push((
            format!("audit verify of 1,000,000 records < {TARGET_VERIFY_S_PER_MILLION} s"),
            per_million < TARGET_VERIFY_S_PER_MILLION,
            format!("measured {per_million:.2} s{scaled}"),
        ));
        result["verify"] = v.json();
    }
    if s.parts.iter().any(|p| p == "disk") {
        let d = disk_part(&s);
        verdicts.push((
            format!("disk per call (both records) <= {TARGET_DISK_BYTES_PER_CALL} bytes"),
            d.after <= TARGET_DISK_BYTES_PER_CALL as f64,
            format!("measured {:.0} bytes/call (schema 4: {:.0})", d.after, d.before),
        ));
        result["disk"] = d.json();
    }

    for (name, ok, detail) in &verdicts {
        println!("target {name}: {} ({detail})", if *ok { "met" } else { "MISSED" });
    }
    result["targets"] = Value::Array(verdicts.iter().map(|(name, ok, _)| json!({ "name": name, "met": ok })).collect());
    println!("RESULT {result}");
    if s.enforce && verdicts.iter().any(|(_, ok, _)| !ok) {
        std::process::exit(3);
    }
}

fn runtime(name: &str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

// --- measuring the disk side ---

/// The wal-index header's transaction counter (`iChange`, bytes 8..12 of the `-shm` file, native
/// byte order: see SQLite's walformat): it grows by one per committed write transaction, and
/// with `synchronous=FULL` each commit syncs the WAL once.
fn wal_commits(db: &Path) -> Option<u32> {
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let bytes = std::fs::read(PathBuf::from(shm)).ok()?;
    Some(u32::from_ne_bytes(bytes.get(8..12)?.try_into().ok()?))
}

/// Flushes completed by the block device holding `dir` (`/proc/diskstats`, field 15 after the
/// name; kernels >= 5.5). Device-wide: checkpoints and other writers count too.
fn device_flushes(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 19 && f[0].parse() == Ok(major) && f[1].parse() == Ok(minor) { f[18].parse().ok() } else { None }
    })
}

/// "ext4 on /dev/vda" for the mount holding `dir`, from /proc/self/mountinfo.
fn filesystem_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return "unknown filesystem".into() };
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        let (Some(mount), Some(fstype), Some(source)) = (f.get(4), f.get(sep + 1), f.get(sep + 2)) else { continue };
        if dir.starts_with(mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), format!("{fstype} on {source}")));
        }
    }
    best.map_or_else(|| "unknown filesystem".into(), |(_, s)| s)
}

// --- records ---

/// A record shaped like the gateway's (same field sizes): the writer assigns seq and hashes.
fn record(n: u64) -> CallRecord {
    CallRecord {
        seq: 0,
        ts: now_rfc3339_ms(),
        replica: "bench-replica".into(),
        session: format!("{n:064x}"),
        identity: "agent@example.com".into(),
        grant: "grants/agent.yaml".into(),
        auth: "token".into(),
        kind: "tool".into(),
        server: "files".into(),
        tool: "read_file".into(),
        category: Some("read".into()),
        arg_keys: vec!["path".into()],
        verdict: "allow".into(),
        rule: "grants/agent.yaml#/access/0".into(),
        message: "allowed".into(),
        policy_commit: Some("3f786850e387550fdab836ed7e6dc881de23001b".into()),
        snapshot_digest: "9b74c9897bac770ffc029102a200c5de9b74c9897bac770ffc029102a200c5de".into(),
        outcome: "unknown".into(),
        latency_ms: None,
        prev_hash: String::new(),
        hash: None,
    }
}

fn percentile(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_ns.len() as f64 * p).ceil() as usize).clamp(1, sorted_ns.len()) - 1;
    sorted_ns[i] as f64 / 1e6
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

// --- part 1: sustained write rate ---

struct WriteRun {
    records: u64,
    wall: Duration,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    commits: Option<u32>,
    flushes: Option<u64>,
}

struct WritePart {
    inflight: usize,
    grouped: WriteRun,
    baseline: WriteRun,
    /// The baseline stopped at its time cap before reaching the grouped run's count.
    baseline_capped: bool,
}

impl WriteRun {
    fn per_commit(&self) -> Option<f64> {
        self.commits.filter(|c| *c > 0).map(|c| self.records as f64 / c as f64)
    }

    fn json(&self) -> Value {
        json!({
            "records": self.records,
            "seconds": r3(self.wall.as_secs_f64()),
            "records_per_s": r1(self.per_sec),
            "append_p50_ms": r3(self.p50_ms),
            "append_p99_ms": r3(self.p99_ms),
            "commits": self.commits,
            "commits_per_s": self.commits.map(|c| r1(c as f64 / self.wall.as_secs_f64())),
            "records_per_commit": self.per_commit().map(r1),
            "device_flushes": self.flushes,
        })
    }
}

impl WritePart {
    fn gain(&self) -> f64 {
        self.grouped.per_sec / self.baseline.per_sec
    }

    fn print(&self) {
        println!();
        println!("write: AuditLog::append on a Store (WAL, synchronous=FULL)");
        println!(
            "{:>22} | {:>9} {:>7} | {:>10} | {:>9} {:>9} | {:>8} {:>10} {:>10} | {:>8}",
            "run", "records", "s", "records/s", "p50", "p99", "commits", "commits/s", "rec/commit", "flushes"
        );
        println!("{}", "-".repeat(122));
        let name_grouped = format!("{} in flight", self.inflight);
        let name_base = if self.baseline_capped { "one at a time (capped)" } else { "one at a time" };
        for (name, r) in [(name_grouped.as_str(), &self.grouped), (name_base, &self.baseline)] {
            let opt = |v: Option<f64>, prec: usize| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.prec$}"));
            println!(
                "{:>22} | {:>9} {:>7.2} | {:>10.0} | {:>7.3}ms {:>7.3}ms | {:>8} {:>10} {:>10} | {:>8}",
                name,
                r.records,
                r.wall.as_secs_f64(),
                r.per_sec,
                r.p50_ms,
                r.p99_ms,
                r.commits.map_or_else(|| "n/a".into(), |c| c.to_string()),
                opt(r.commits.map(|c| c as f64 / r.wall.as_secs_f64()), 0),
                opt(r.per_commit(), 1),
                r.flushes.map_or_else(|| "n/a".into(), |c| c.to_string()),
            );
        }
        println!("group commit gain: {:.1}x the one-at-a-time rate", self.gain());
    }

    fn json(&self) -> Value {
        json!({
            "inflight": self.inflight,
            "grouped": self.grouped.json(),
            "one_at_a_time": self.baseline.json(),
            "one_at_a_time_capped": self.baseline_capped,
            "group_commit_gain": r3(self.gain()),
        })
    }
}

fn write_part(s: &Settings) -> WritePart {
    let dir =
        tempfile::Builder::new().prefix("gatehouse-audit-write").tempdir_in(&s.dir).expect("a temporary directory");
    let store = Store::open(dir.path()).expect("the store opens");
    let db = store.path().to_path_buf();
    let log = AuditLog::new(store);
    let rt = runtime("write", s.threads);
    let inflight = s.inflight;
    let (grouped, baseline) = rt.block_on(async {
        // Warm-up: table and index pages exist, the WAL has grown.
        grouped_appends(&log, inflight, Duration::from_millis(500), &db, dir.path()).await;
        let grouped = grouped_appends(&log, inflight, Duration::from_secs_f64(s.write_seconds), &db, dir.path()).await;
        let baseline =
            one_at_a_time(&log, grouped.records, Duration::from_secs_f64(s.baseline_max), &db, dir.path()).await;
        (grouped, baseline)
    });
    let baseline_capped = baseline.records < grouped.records;
    WritePart { inflight, grouped, baseline, baseline_capped }
}

async fn grouped_appends(log: &AuditLog, inflight: usize, dur: Duration, db: &Path, dir: &Path) -> WriteRun {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (c0, f0) = (wal_commits(db), device_flushes(dir));
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 14);
                while Instant::now() < deadline {
                    let r = record(NEXT.fetch_add(1, Ordering::Relaxed));
                    let t0 = Instant::now();
                    log.append(r).await.expect("an append");
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("an appending task"));
    }
    let wall = start.elapsed();
    finish(lat, wall, c0, wal_commits(db), f0, device_flushes(dir))
}

async fn one_at_a_time(log: &AuditLog, n: u64, cap: Duration, db: &Path, dir: &Path) -> WriteRun {
    let (c0, f0) = (wal_commits(db), device_flushes(dir));
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        if start.elapsed() >= cap {
            break;
        }
        let t0 = Instant::now();
        log.append(record(i)).await.expect("an append");
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    let wall = start.elapsed();
    finish(lat, wall, c0, wal_commits(db), f0, device_flushes(dir))
}

fn finish(
    mut lat: Vec<u64>,
    wall: Duration,
    c0: Option<u32>,
    c1: Option<u32>,
    f0: Option<u64>,
    f1: Option<u64>,
) -> WriteRun {
    lat.sort_unstable();
    let records = lat.len() as u64;
    WriteRun {
        records,
        wall,
        per_sec: records as f64 / wall.as_secs_f64(),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        commits: c0.zip(c1).map(|(a, b)| b.wrapping_sub(a)),
        flushes: f0.zip(f1).map(|(a, b)| b.saturating_sub(a)),
    }
}

// --- part 2: the audit path's added latency ---

struct LatStats {
    p50_ms: f64,
    p99_ms: f64,
    calls: usize,
    per_sec: f64,
}

struct LatRow {
    clients: usize,
    off: LatStats,
    on: LatStats,
    /// Commits of the audit-on gateway's store during its measured slices.
    commits: Option<u64>,
}

impl LatRow {
    fn ratio_p50(&self) -> f64 {
        self.on.p50_ms / self.off.p50_ms
    }
    fn ratio_p99(&self) -> f64 {
        self.on.p99_ms / self.off.p99_ms
    }
    fn json(&self) -> Value {
        let stats = |s: &LatStats| json!({ "p50_ms": r3(s.p50_ms), "p99_ms": r3(s.p99_ms), "calls": s.calls, "calls_per_s": r1(s.per_sec) });
        json!({
            "clients": self.clients,
            "audit_off": stats(&self.off),
            "audit_on": stats(&self.on),
            "ratio_p50": r3(self.ratio_p50()),
            "ratio_p99": r3(self.ratio_p99()),
            "added_p50_ms": r3(self.on.p50_ms - self.off.p50_ms),
            "added_p99_ms": r3(self.on.p99_ms - self.off.p99_ms),
            "throughput_ratio": r3(self.on.per_sec / self.off.per_sec),
            "commits": self.commits,
            "records_per_commit": self.commits.filter(|c| *c > 0).map(|c| r1(2.0 * self.on.calls as f64 / c as f64)),
        })
    }
}

fn print_latency(rows: &[LatRow]) {
    println!();
    println!(
        "latency: tools/call through the gateway, audit on (State::with_store) vs off (State::new), same upstream"
    );
    println!(
        "{:>7} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>8} {:>8} {:>6} | {:>10}",
        "clients",
        "off p50",
        "p99",
        "on p50",
        "p99",
        "ratio p50",
        "p99",
        "added p50",
        "p99",
        "off /s",
        "on /s",
        "ratio",
        "rec/commit"
    );
    println!("{}", "-".repeat(140));
    for r in rows {
        let per_commit = r
            .commits
            .filter(|c| *c > 0)
            .map_or_else(|| "n/a".into(), |c| format!("{:.1}", 2.0 * r.on.calls as f64 / c as f64));
        println!(
            "{:>7} | {:>7.3}ms {:>7.3}ms | {:>7.3}ms {:>7.3}ms | {:>8.2}x {:>8.2}x | {:>7.3}ms {:>7.3}ms | {:>8.0} {:>8.0} {:>5.2}x | {:>10}",
            r.clients,
            r.off.p50_ms,
            r.off.p99_ms,
            r.on.p50_ms,
            r.on.p99_ms,
            r.ratio_p50(),
            r.ratio_p99(),
            r.on.p50_ms - r.off.p50_ms,
            r.on.p99_ms - r.off.p99_ms,
            r.off.per_sec,
            r.on.per_sec,
            r.on.per_sec / r.off.per_sec,
            per_commit,
        );
    }
    println!(
        "(each allowed call writes 2 records: the durable decision before the upstream call, the outcome after, in the background)"
    );
}

fn latency_part(s: &Settings) -> Vec<LatRow> {
    let (up_rt, gw_rt, cl_rt) =
        (runtime("upstream", s.threads), runtime("gateway", s.threads), runtime("client", s.threads));
    let upstream_addr = up_rt.block_on(common::start_upstream("read_file"));
    let upstream_url = format!("http://{upstream_addr}/mcp");
    let data =
        tempfile::Builder::new().prefix("gatehouse-audit-latency").tempdir_in(&s.dir).expect("a temporary directory");
    let store = Store::open(data.path()).expect("the store opens");
    let db = store.path().to_path_buf();
    let (on_addr, on_stop, on_served) = start_gateway(&gw_rt, &upstream_url, Some(store));
    let (off_addr, off_stop, off_served) = start_gateway(&gw_rt, &upstream_url, None);
    let target = |addr: SocketAddr| Arc::new(Target { uri: format!("http://{addr}/mcp").parse().unwrap() });
    let (on, off) = (target(on_addr), target(off_addr));
    let expected: Value = serde_json::from_str(ARGS).unwrap();
    let errors = Arc::new(AtomicU64::new(0));
    let rows: Vec<LatRow> =
        s.lat_clients.iter().map(|&n| cl_rt.block_on(measure(n, s, &on, &off, &expected, &errors, &db))).collect();
    let _ = on_stop.send(());
    let _ = off_stop.send(());
    let _ = gw_rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), futures_util::future::join(on_served, off_served)).await
    });
    cl_rt.shutdown_timeout(Duration::from_secs(1));
    gw_rt.shutdown_timeout(Duration::from_secs(1));
    up_rt.shutdown_timeout(Duration::from_secs(1));
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!("audit bench: {errors} calls failed");
        std::process::exit(1);
    }
    // Every measured call left its records: the log verifies.
    let c = gatehouse::record::store::open_read_only(data.path()).expect("a reader");
    match verify(&c).expect("verify runs") {
        Verdict::Intact { count, .. } => {
            println!("latency: the audit-on gateway's log holds {count} records and verifies")
        }
        broken => panic!("the audit-on gateway's log does not verify: {broken:?}"),
    }
    rows
}


/// A gateway over `upstream_url` (one server `files`, one grant allowed `read_file` under a
/// policy with one regex `deny_if`); the call log in `store`, or none.
fn start_gateway(
    rt: &Runtime,
    upstream_url: &str,
    store: Option<Store>,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let server = format!(
        "name: files\ntransport: streamable-http\nurl: {upstream_url}\ntimeout: 10s\nsupplier: {{ operated_by: internal }}\n\
         tools: {{ read_file: {{ category: read }} }}\n"
    );
    let policy = "version: \"1\"\ndefault: deny\ntools:\n  read_file:\n    deny_if:\n      - name: outside the projects\n        \
                  conditions: [ { path: args.path, op: regex, value: \"^(?!/srv/projects/)\" } ]\n";
    let token_hash = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    let grant = format!(
        "identity: agent@example.com\nkind: agent\nowner: ops@example.com\ntokens: [ {{ sha256: {token_hash} }} ]\n\
         access: [ {{ server: files, tools: [read_file], policy: policies/files.yaml }} ]\n"
    );
    let files = [
        ("servers/files.yaml", server.as_str()),
        ("policies/files.yaml", policy),
        ("grants/agent.yaml", grant.as_str()),
    ];
    let compiled = compile(&Files::from_memory(files)).unwrap_or_else(|d| panic!("the bench repository: {d}"));
    let snapshot = Arc::new(compiled.snapshot);
    let secrets = Arc::new(bind(&snapshot, &SecretSource::default()).unwrap_or_else(|e| panic!("{e:?}")));
    let (stop, stopped) = oneshot::channel::<()>();
    rt.block_on(async move {
        let state = Arc::new(match store {
            Some(store) => State::with_store(Config::default(), store),
            None => State::new(Config::default()),
        });
        state.activate(Active { snapshot, secrets });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            proxy::serve(listener, state, async {
                let _ = stopped.await;
            })
            .await
            .expect("the gateway serves");
        });
        (addr, stop, served)
    })
}

struct Target {
    uri: Uri,
}

/// One client: one keep-alive connection, calls in sequence, in one gateway session.
struct Caller {
    http: HttpClient,
    target: Arc<Target>,
    session: HeaderValue,
}

#[derive(Default)]
struct Sample {
    latencies: Vec<u64>,
    wall: Duration,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        self.wall += other.wall;
    }

    fn stats(&mut self) -> LatStats {
        self.latencies.sort_unstable();
        LatStats {
            p50_ms: percentile(&self.latencies, 0.5),
            p99_ms: percentile(&self.latencies, 0.99),
            calls: self.latencies.len(),
            per_sec: self.latencies.len() as f64 / self.wall.as_secs_f64(),
        }
    }
}

async fn measure(
    n: usize,
    s: &Settings,
    on: &Arc<Target>,
    off: &Arc<Target>,
    expected: &Value,
    errors: &Arc<AtomicU64>,
    db: &Path,
) -> LatRow {
    let on_callers = open_callers(n, on).await;
    let off_callers = open_callers(n, off).await;
    let expected = Arc::new(expected.clone());
    let warm = Duration::from_secs_f64(s.lat_warmup);
    run(&off_callers, warm, &expected, errors).await;
    run(&on_callers, warm, &expected, errors).await;
    let slice = Duration::from_secs_f64(s.lat_seconds / s.lat_rounds as f64);
    let (mut a, mut b) = (Sample::default(), Sample::default());
    let mut commits = Some(0u64);
    for _ in 0..s.lat_rounds {
        a.merge(run(&off_callers, slice, &expected, errors).await);
        let c0 = wal_commits(db);
        b.merge(run(&on_callers, slice, &expected, errors).await);
        // Let the background outcome records of this slice land before counting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        commits = commits.zip(c0.zip(wal_commits(db))).map(|(sum, (x, y))| sum + u64::from(y.wrapping_sub(x)));
    }
    LatRow { clients: n, off: a.stats(), on: b.stats(), commits }
}

async fn open_callers(n: usize, target: &Arc<Target>) -> Vec<Arc<Caller>> {
    let mut callers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1).build(connector);
        let init = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": { "name": "audit-bench", "version": "1" } } });
        let resp = http.request(request(target, None, init.to_string())).await.expect("initialize");
        assert_eq!(resp.status(), StatusCode::OK, "initialize at {}", target.uri);
        let session = resp.headers().get("mcp-session-id").expect("an Mcp-Session-Id").clone();
        let _ = resp.into_body().collect().await;
        let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string();
        let resp = http.request(request(target, Some(&session), note)).await.expect("notifications/initialized");
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let _ = resp.into_body().collect().await;
        callers.push(Arc::new(Caller { http, target: target.clone(), session }));
    }
    callers
}

fn request(target: &Target, session: Option<&HeaderValue>, body: String) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = target.uri.clone();
    let h = req.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
    h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap());
    if let Some(s) = session {
        h.insert("mcp-session-id", s.clone());
        h.insert("mcp-protocol-version", HeaderValue::from_static(PROTOCOL));
    }
    req
}

async fn run(callers: &[Arc<Caller>], dur: Duration, expected: &Arc<Value>, errors: &Arc<AtomicU64>) -> Sample {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = callers
        .iter()
        .map(|c| {
            let (c, expected, errors) = (c.clone(), expected.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    match call(&c, id, &expected).await {
                        Ok(ns) => lat.push(ns),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("{}: {e}", c.target.uri);
                            }
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("a client task"));
    }
    Sample { latencies, wall: start.elapsed() }
}

/// One `tools/call`; its latency in nanoseconds if it was a successful echo.
async fn call(c: &Caller, id: u64, expected: &Value) -> Result<u64, String> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"files__read_file","arguments":{ARGS}}}}}"#
    );
    let req = request(&c.target, Some(&c.session), body);
    let t0 = Instant::now();
    let resp = c.http.request(req).await.map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| format!("body failed: {e}"))?.to_bytes();
    let ns = t0.elapsed().as_nanos() as u64;
    if status != StatusCode::OK {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON ({e})"))?;
    let ok = v["id"] == id
        && v.get("error").is_none()
        && v["result"]["isError"] != true
        && v["result"]["content"][0]["text"].as_str().and_then(|t| serde_json::from_str::<Value>(t).ok()).as_ref()
            == Some(expected);
    if ok { Ok(ns) } else { Err(format!("not a successful call: {v}")) }
}

// --- part 3: verify over a million records ---

struct VerifyPart {
    records: u64,
    db_bytes: u64,
    generate_s: f64,
    library_s: f64,
    cli_s: f64,
    cli_output: String,
}

impl VerifyPart {
    fn print(&self) {
        println!();
        println!(
            "verify: {} records ({:.0} MB on disk) generated in {:.1} s with append_in",
            self.records,
            self.db_bytes as f64 / 1e6,
            self.generate_s
        );
        println!("{:>34} | {:>8} | {:>10}", "run", "s", "records/s");
        println!("{}", "-".repeat(58));
        for (name, t) in
            [("audit::verify::verify (in-process)", self.library_s), ("gatehouse audit verify (command)", self.cli_s)]
        {
            println!("{:>34} | {:>8.3} | {:>10.0}", name, t, self.records as f64 / t);
        }
        println!("command said: {}", self.cli_output.trim());
    }

    fn json(&self) -> Value {
        json!({
            "records": self.records,
            "db_bytes": self.db_bytes,
            "generate_s": r3(self.generate_s),
            "library_s": r3(self.library_s),
            "library_records_per_s": r1(self.records as f64 / self.library_s),
            "command_s": r3(self.cli_s),
            "command_records_per_s": r1(self.records as f64 / self.cli_s),
        })
    }
}

fn verify_part(s: &Settings) -> VerifyPart {
    let n = s.verify_records;
    let dir =
        tempfile::Builder::new().prefix("gatehouse-audit-verify").tempdir_in(&s.dir).expect("a temporary directory");
    let path = {
        // Create and migrate through the store; its writer stops when the handle is dropped.
        let store = Store::open(dir.path()).expect("the store opens");
        store.path().to_path_buf()
    };
    let t0 = Instant::now();
    {
        let c = rusqlite::Connection::open(&path).expect("a raw connection");
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        // Generation only: nothing measured depends on these writes being durable.
        c.pragma_update(None, "synchronous", "OFF").unwrap();
        c.pragma_update(None, "cache_size", -262_144).unwrap(); // 256 MiB
        let chunk = 100_000u64;
        let mut done = 0u64;
        // This thread alone writes this database: appends may keep heads and interned ids.
        let _sole = gatehouse::record::store::SoleWriter::enter();
        while done < n {
            let tx = c.unchecked_transaction().unwrap();
            for i in done..(done + chunk).min(n) {
                append_in(&gatehouse::record::store::Conn::Lite(&tx), record(i)).expect("append_in");
            }
            tx.commit().unwrap();
            done = (done + chunk).min(n);
        }
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    let generate_s = t0.elapsed().as_secs_f64();
    let db_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);

    let t0 = Instant::now();
    let c = gatehouse::record::store::open_read_only(dir.path()).expect("a reader");
    let verdict = verify(&c).expect("verify runs");
    let library_s = t0.elapsed().as_secs_f64();
    drop(c);
    assert_eq!(verdict, Verdict::Intact { count: n, first: 1, last: n }, "the generated chain verifies");

    let t0 = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running gatehouse audit verify");
    let cli_s = t0.elapsed().as_secs_f64();
    let cli_output = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gatehouse audit verify failed: {cli_output}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cli_output.starts_with(&format!("ok: {n} records")), "{cli_output}");
    VerifyPart { records: n, db_bytes, generate_s, library_s, cli_s, cli_output }
}

// --- disk per call ---

/// Issue 15: both records of a call in at most this many bytes of the database.
const TARGET_DISK_BYTES_PER_CALL: u64 = 500;

struct DiskPart {
    calls: u64,
    session_calls: u64,
    /// Bytes per call: the schema-4 layout, the current one, the current one with a session per call.
    before: f64,
    after: f64,
    after_unique_sessions: f64,
}

impl DiskPart {
    fn json(&self) -> Value {
        json!({
            "calls": self.calls,
            "calls_per_session": self.session_calls,
            "schema4_bytes_per_call": r1(self.before),
            "bytes_per_call": r1(self.after),
            "bytes_per_call_session_per_call": r1(self.after_unique_sessions),
        })
    }
}

/// The decision and outcome records of call `n` (the gateway's fields and sizes; a session
/// every `per_session` calls; a few tools, rules and argument shapes).
fn call_records(n: u64, per_session: u64, ts: &str) -> [CallRecord; 2] {
    let tools = [("read_file", "read", "path"), ("list_dir", "read", "path"), ("write_file", "write", "content"), ("search", "read", "query")];
    let (tool, category, arg) = tools[(n % 4) as usize];
    let mut decision = record(n / per_session);
    decision.ts = ts.to_string();
    decision.session = format!("{:032x}", (n / per_session).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    decision.tool = tool.into();
    decision.category = Some(category.into());
    decision.arg_keys = vec![arg.into(), "options.recursive".into()];
    decision.rule = format!("grants/agent.yaml#/access/{}", n % 4);
    let mut outcome = decision.clone();
    outcome.outcome = "ok".into();
    outcome.latency_ms = Some(3 + n * 7 % 250);
    [decision, outcome]
}

/// Appends `calls` calls to a fresh database in `schema4` or the current layout; bytes per call
/// (the file's growth, checkpointed).
fn disk_run(s: &Settings, calls: u64, per_session: u64, schema4: bool) -> f64 {
    let dir = tempfile::Builder::new().prefix("gatehouse-audit-disk").tempdir_in(&s.dir).expect("a temporary directory");
    // Schema 4's rows are those of `calls_v4` now (the same table, renamed by migration 5), so
    // the same database serves both, and verify reads them as it reads an old log.
    let path = {
        let store = Store::open(dir.path()).expect("the store opens");
        store.path().to_path_buf()
    };
    let c = rusqlite::Connection::open(&path).expect("a raw connection");
    c.pragma_update(None, "synchronous", "OFF").unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    let empty = std::fs::metadata(&path).unwrap().len();
    let start = Instant::now();
    let mut prev = gatehouse::record::audit::GENESIS.to_string();
    let mut seq = 0u64;
    // As the store's writer thread: the only writer of this database (heads, ids kept).
    let _sole = gatehouse::record::store::SoleWriter::enter();
    for chunk in (0..calls).collect::<Vec<_>>().chunks(1000) {
        let tx = c.unchecked_transaction().unwrap();
        for &n in chunk {
            // Milliseconds apart, as the gateway's timestamps are.
            let ms = 1_780_000_000_000u64 + n * 3;
            let base = gatehouse::units::rfc3339((ms / 1000) as i64, 0);
            let ts = format!("{}.{:03}Z", base.trim_end_matches('Z'), ms % 1000);
            for r in call_records(n, per_session, &ts) {
                if !schema4 {
                    append_in(&gatehouse::record::store::Conn::Lite(&tx), r).expect("append_in");
                    continue;
                }
                // What the schema-4 writer did.
                let mut r = r;
                seq += 1;
                r.seq = seq;
                r.prev_hash = std::mem::take(&mut prev);
                let text = r.canonical();
                let hash = gatehouse::record::audit::chain_hash(&r.prev_hash, &text);
                tx.execute(
                    "INSERT INTO calls_v4 (replica, seq, ts, record, hash, identity, server, tool, category, verdict, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    rusqlite::params![r.replica, r.seq as i64, r.ts, text, hash, r.identity, r.server, r.tool, r.category, r.verdict, r.outcome],
                )
                .unwrap();
                prev = hash;
            }
        }
        tx.commit().unwrap();
    }
    let took = start.elapsed();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    let grown = std::fs::metadata(&path).unwrap().len().saturating_sub(empty);
    let t0 = Instant::now();
    assert_eq!(verify(&c).expect("verify runs"), Verdict::Intact { count: 2 * calls, first: 1, last: 2 * calls }, "the chain verifies");
    let verify_s = t0.elapsed().as_secs_f64();
    let per_call = grown as f64 / calls as f64;
    // Where the bytes are, and how full the pages (dbstat, when SQLite has it).
    let tables = c
        .prepare("SELECT name, sum(pgsize), sum(pgsize - unused) FROM dbstat GROUP BY name HAVING sum(pgsize) > 8192 ORDER BY 2 DESC")
        .and_then(|mut st| {
            st.query_map([], |r| Ok(format!("{} {:.0} B/call ({:.0}% used)", r.get::<_, String>(0)?, r.get::<_, i64>(1)? as f64 / calls as f64, 100.0 * r.get::<_, i64>(2)? as f64 / r.get::<_, i64>(1)?.max(1) as f64)))?
                .collect::<Result<Vec<_>, _>>()
        });
    if let Ok(tables) = tables {
        println!("    {}", tables.join(", "));
    }
    println!(
        "  {:<34} {:>9.0} bytes/call  ({} calls, {} per session, {:.0} calls/s appended, verify {:.0} records/s)",
        if schema4 { "schema 4 (JSON text, hex hashes)" } else { "schema 5 (fields, interned)" },
        per_call,
        calls,
        per_session,
        calls as f64 / took.as_secs_f64(),
        2.0 * calls as f64 / verify_s
    );
    per_call
}

fn disk_part(s: &Settings) -> DiskPart {
    println!("disk: database growth per call (decision + outcome record), checkpointed");
    let before = disk_run(s, s.disk_calls, s.disk_session_calls, true);
    let after = disk_run(s, s.disk_calls, s.disk_session_calls, false);
    let after_unique_sessions = disk_run(s, s.disk_calls, 1, false);
    DiskPart { calls: s.disk_calls, session_calls: s.disk_session_calls, before, after, after_unique_sessions }
}
