//! Load benchmark: `tools/call` through the gateway versus the same loopback upstream called
//! directly, in one process run.
//!
//! Three parts, each on a tokio runtime of its own (as if they were three processes):
//!
//! - a minimal Streamable HTTP MCP upstream on hyper (JSON answers, keep-alive, session ids),
//!   whose `echo` tool returns its arguments as text;
//! - the gateway (`gatehouse::gateway::proxy::serve`, `Config::default()`: its accept loop on
//!   the bench's gateway runtime, its connections on its own threads, one per core, named
//!   `gatehouse-proxy`, counted as the gateway's) with its audit log on
//!   at the daemon's durability (a SQLite state database in a temporary directory, WAL,
//!   `synchronous=FULL`, a write-ahead decision record before the upstream hears of a call), as
//!   `gatehouse serve` runs; `LOAD_AUDIT=0` turns it off for reference. A snapshot compiled from
//!   in-memory files: one server `bench` (streamable-http → the upstream) and one grant whose
//!   token may call `echo` under a seed-style policy with one `deny_if` regex condition, so the
//!   decision engine runs on every call;
//! - a load generator: N clients, each a hyper-util legacy client holding one keep-alive
//!   connection and calling sequentially. Direct: `tools/call echo` to the upstream in an
//!   upstream session. Gateway: `initialize` once per client, then `tools/call bench__echo` with
//!   the bearer token and the gateway's `Mcp-Session-Id`.
//!
//! For 1 and 32 clients it warms both paths up, then alternates direct and gateway slices
//! (`LOAD_ROUNDS` of each, `LOAD_SECONDS` in all per path) so that drift of the machine hits both
//! alike. Every call's latency is recorded (request sent → whole body read); throughput is calls
//! completed over the wall time of the slices. Every response is checked to be a successful tool
//! result echoing the arguments; any error makes the bench exit 1.
//!
//! **All three parts share the machine's cores.** On a 2-core machine the client, the gateway and
//! the upstream compete for the same 2 CPUs, and at 32 clients those CPUs are saturated: the
//! gateway path runs about twice the HTTP work of the direct path (client, gateway server side,
//! gateway client side, upstream versus client, upstream) on the same CPUs. The throughput ratio
//! is then (client + upstream CPU per call) / (client + gateway + upstream CPU per call): 0.5
//! means the gateway costs as much CPU per call as the client and the upstream together, not
//! what a gateway on cores of its own would sustain. The CPU table (CPU time per call of each
//! part's threads, from `/proc/self/task/*/schedstat`) shows the split directly, and is less
//! sensitive than wall-clock figures to other work on the machine.
//!
//! Environment (all optional):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LOAD_SECONDS` | 5 | measured seconds per path and client count |
//! | `LOAD_WARMUP` | 1 | warm-up seconds per path and client count |
//! | `LOAD_ROUNDS` | 5 | alternating direct/gateway slices the measured time is cut into |
//! | `LOAD_CLIENTS` | 1,32 | client counts |
//! | `LOAD_PATHS` | direct,gateway | the paths measured (one alone is for profiling) |
//! | `LOAD_ARG_BYTES` | 39 | length of the `text` argument (padded with `x`), echoed back |
//! | `LOAD_THREADS` | cores | worker threads of each of the three runtimes (the gateway's runtime only accepts) |
//! | `LOAD_LOG` | 0 | 1: install the daemon's log subscriber (`info,hyper=warn`) writing to a sink |
//! | `LOAD_ALLOCS` | 0 | 1: count heap allocations per call in each part (slows every part a little; the gateway's proxy threads are the library's, so theirs count under `other`) |
//! | `LOAD_ENFORCE` | 0 | 1: exit 3 when a target is missed |
//! | `LOAD_AUDIT` | 1 | 0: the gateway without its audit log (a reference, not how it runs) |
//! | `LOAD_DATABASE` | unset | `postgres://…`: also measure a second gateway whose state database is this PostgreSQL database (audit on), and report its calls/s and added p50 against the SQLite gateway's, measured in the same run |
//! | `LOAD_PROTOCOL` | 2025-11-25 | `2026-07-28`: gateway clients send stateless requests (no `initialize`, no session; the `_meta` envelope and the `Mcp-*` headers on every call); the direct path is unchanged |
//!
//! **The fsync floor.** Before the load, the bench measures on the same file system the cost of
//! the least a durable write-ahead record needs: a small write into a preallocated file plus
//! `fdatasync`, 200 times (median wall time, and CPU time per write). The audit targets are
//! stated against it.
//!
//! Output: the latency/throughput table, the CPU-per-call table (the store's writer thread also
//! shown alone, `(writer)`: its time is part of the gateway's; and allocations per call with
//! `LOAD_ALLOCS=1`), the targets, then one line `RESULT {json}` with the same numbers
//! (milliseconds, calls/s, CPU microseconds per call).
//! Run with `scripts/load` (or `cargo bench --bench proxy_load`).

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse::gateway::proxy::{self, Active, Config, State};
use gatehouse::repo::{Files, compile};
use gatehouse::gateway::secrets::{SecretSource, bind};
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

/// The bearer token of the bench grant (only its hash is in the repository).
const TOKEN: &str = "bench-token-0123456789abcdef";
/// The `text` argument of every call: a string the policy's regex examines and does not match.
const TEXT: &str = "SELECT name FROM customers WHERE id = 7";
const PROTOCOL: &str = "2025-11-25";

/// Targets with the audit log off (issue 3).
const TARGET_ADDED_P50_MS_AT_1: f64 = 0.2;
const TARGET_RATIO_AT_32: f64 = 0.5;
/// Targets with the audit log on (issue 15), over the fsync floor measured in the same run.
const TARGET_ADDED_P50_OVER_FSYNC_MS: f64 = 0.05;
const TARGET_CPU_OVER_FSYNC_US_AT_1: f64 = 40.0;
const TARGET_CPU_US_AT_32: f64 = 40.0;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Settings {
    seconds: f64,
    warmup: f64,
    rounds: u32,
    clients: Vec<usize>,
    threads: usize,
    log: bool,
    enforce: bool,
    allocs: bool,
    direct: bool,
    gateway: bool,
    arg_bytes: usize,
    audit: bool,
    /// A PostgreSQL URL: a second gateway on it, compared with the SQLite one.
    database: Option<String>,
}

/// The least a durable record costs on this file system: one small append plus fdatasync.
#[derive(Clone, Copy, Default)]
struct Floor {
    p50_ms: f64,
    cpu_us: f64,
}

/// The arguments every call sends, and what the echo must give back.
struct Payload {
    /// The `arguments` object, serialized.
    args: String,
    expected: Value,
}

// --- allocation counting (LOAD_ALLOCS=1) ---

/// The system allocator, counting allocations per part of the bench when `COUNTING` is on.
struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);

/// Parts, by the runtime whose thread allocates: 0 other, then client, gateway, upstream.
const PARTS: [&str; 4] = ["other", "client", "gateway", "upstream"];
const CLIENT: usize = 1;
const GATEWAY: usize = 2;
const UPSTREAM: usize = 3;
/// The store's writer thread (CPU only; its time is also in [`GATEWAY`]).
const WRITER: usize = 4;

#[repr(align(128))]
struct Counter {
    allocs: AtomicU64,
    bytes: AtomicU64,
}

static COUNTERS: [Counter; 4] = [const { Counter { allocs: AtomicU64::new(0), bytes: AtomicU64::new(0) } }; 4];

thread_local! {
    static PART: Cell<usize> = const { Cell::new(0) };
}

fn count(size: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        let part = PART.try_with(Cell::get).unwrap_or(0);
        COUNTERS[part].allocs.fetch_add(1, Ordering::Relaxed);
        COUNTERS[part].bytes.fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// (allocations, bytes) of each part so far.
fn counted() -> [(u64, u64); 4] {
    std::array::from_fn(|i| (COUNTERS[i].allocs.load(Ordering::Relaxed), COUNTERS[i].bytes.load(Ordering::Relaxed)))
}

/// The allocator of the `gatehouse` binary (`src/main.rs`), which this bench measures.
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// SAFETY: every call is forwarded unchanged to the binary's allocator; counting does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { ALLOCATOR.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { ALLOCATOR.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { ALLOCATOR.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { ALLOCATOR.dealloc(ptr, layout) }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let s = settings(cores);
    if s.log {
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,hyper=warn"))
            .init();
    }
    PART.set(CLIENT); // the main thread drives the client runtime's block_on
    let runtime = |name: &str, part: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(s.threads)
            .thread_name(name)
            .on_thread_start(move || PART.set(part))
            .enable_all()
            .build()
            .expect("a tokio runtime")
    };
    COUNTING.store(s.allocs, Ordering::Relaxed);
    let (up_rt, gw_rt, cl_rt) = (runtime("upstream", UPSTREAM), runtime("gateway", GATEWAY), runtime("client", CLIENT));

    let data = tempfile::tempdir().expect("a temporary data directory");
    let floor = fsync_floor(data.path());
    println!("fsync floor on this file system: p50 {:.3} ms, CPU {:.1} us per append + fdatasync", floor.p50_ms, floor.cpu_us);
    let upstream_addr = up_rt.block_on(common::start_upstream("echo"));
    let upstream_url = format!("http://{upstream_addr}/mcp");
    let (gateway_addr, stop, served) =
        start_gateway(&gw_rt, &upstream_url, s.audit.then(|| gatehouse::record::store::Location::Dir(data.path().to_path_buf())));
    let gateway_url = format!("http://{gateway_addr}/mcp");
    // The same gateway on PostgreSQL, beside it (LOAD_DATABASE).
    let on_pg = s.database.as_ref().filter(|_| s.audit).map(|url| {
        let (addr, stop, served) = start_gateway(&gw_rt, &upstream_url, Some(gatehouse::record::store::Location::Postgres(url.clone())));
        (addr, stop, served, gatehouse::record::store::sql::redact(url))
    });

    println!(
        "proxy_load: {cores} cores shared by client, gateway and upstream (3 runtimes x {} worker threads); \
         {}s measured + {}s warm-up per path and client count, {} alternating slices; {}-byte text argument; \
         gateway logging {}",
        s.threads,
        s.seconds,
        s.warmup,
        s.rounds,
        s.arg_bytes.max(TEXT.len()),
        if s.log { "on (info, to a sink)" } else { "off" },
    );
    if stateless() {
        println!("gateway clients: protocol 2026-07-28, stateless (no session; the envelope and Mcp-* headers on every call)");
    }
    if cores <= 2 {
        println!(
            "note: only {cores} cores, shared by the three parts: the gateway path runs twice the HTTP work \
             on the same CPUs, so once they are saturated (32 clients) the throughput ratio is \
             (client + upstream) / (client + gateway + upstream) CPU per call (see the CPU table)"
        );
    }

    let direct = Arc::new(Target { uri: upstream_url.parse().unwrap(), bearer: None, tool: "echo" });
    let gateway = Arc::new(Target {
        uri: gateway_url.parse().unwrap(),
        bearer: Some(HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap()),
        tool: "bench__echo",
    });
    let mut text = TEXT.to_string();
    while text.len() < s.arg_bytes {
        text.push('x');
    }
    let args = json!({ "text": text });
    let payload = Arc::new(Payload { args: args.to_string(), expected: args });
    let errors = Arc::new(Errors::default());

    let gateway_pg = on_pg.as_ref().map(|(addr, ..)| {
        Arc::new(Target {
            uri: format!("http://{addr}/mcp").parse().unwrap(),
            bearer: Some(HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap()),
            tool: "bench__echo",
        })
    });
    let mut rows = Vec::new();
    let mut rows_pg = Vec::new();
    for &n in &s.clients {
        let row = cl_rt.block_on(measure(n, &s, &direct, &gateway, &payload, &errors));
        rows.push(row);
        if let Some(g) = &gateway_pg {
            rows_pg.push(cl_rt.block_on(measure(n, &s, &direct, g, &payload, &errors)));
        }
    }

    print_table(&rows);
    let pg_compare: Vec<Value> = rows
        .iter()
        .zip(&rows_pg)
        .map(|(lite, pg)| {
            json!({
                "clients": lite.clients,
                "calls_per_s_ratio": r3(pg.gateway.per_sec / lite.gateway.per_sec),
                "added_p50_ms": { "sqlite": r3(lite.added_p50()), "postgres": r3(pg.added_p50()) },
                "added_p50_ratio": r3(pg.added_p50() / lite.added_p50()),
                "postgres": pg.json(),
            })
        })
        .collect();
    if let Some((.., url)) = &on_pg {
        println!("The same gateway with its state database on PostgreSQL ({url}), measured in the same run:");
        print_table(&rows_pg);
        for (lite, pg) in rows.iter().zip(&rows_pg) {
            println!(
                "postgres vs sqlite at {} clients: gateway calls/s {:.0} vs {:.0} (ratio {:.2}); added p50 {:.3} ms vs {:.3} ms (ratio {:.2})",
                lite.clients,
                pg.gateway.per_sec,
                lite.gateway.per_sec,
                pg.gateway.per_sec / lite.gateway.per_sec,
                pg.added_p50(),
                lite.added_p50(),
                pg.added_p50() / lite.added_p50()
            );
        }
        println!();
    }
    print_cpu(&rows);
    if s.allocs {
        print_allocs(&rows);
    }
    let total_errors = errors.count.load(Ordering::Relaxed);
    let disk = s.audit.then(|| disk_per_call(data.path()));
    if let Some((bytes, calls)) = disk {
        println!("disk: {bytes} bytes in the data directory for {calls} calls = {:.0} bytes per call (both records)", bytes as f64 / calls.max(1) as f64);
    }
    let verdicts = targets(&rows, s.audit.then_some(floor));
    for (name, ok, detail) in &verdicts {
        println!("target {name}: {} ({detail})", if *ok { "met" } else { "MISSED" });
    }
    let result = json!({
        "cores": cores,
        "threads_per_runtime": s.threads,
        "seconds": s.seconds,
        "warmup": s.warmup,
        "rounds": s.rounds,
        "gateway_logging": s.log,
        "audit": s.audit,
        "fsync_floor": { "p50_ms": r3(floor.p50_ms), "cpu_us": r1(floor.cpu_us) },
        "disk_bytes_per_call": disk.map(|(b, c)| r1(b as f64 / c.max(1) as f64)),
        "arg_bytes": s.arg_bytes.max(TEXT.len()),
        "errors": total_errors,
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "targets": verdicts.iter().map(|(name, ok, _)| json!({ "name": name, "met": ok })).collect::<Vec<_>>(),
        "postgres_vs_sqlite": on_pg.as_ref().map(|_| pg_compare),
    });
    println!("RESULT {result}");

    // Stop the gateway (it DELETEs its upstream session), then the rest.
    if let Some((_, stop, served, _)) = on_pg {
        let _ = stop.send(());
        let _ = gw_rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), served).await });
    }
    let _ = stop.send(());
    let _ = gw_rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), served).await });
    cl_rt.shutdown_timeout(Duration::from_secs(1));
    gw_rt.shutdown_timeout(Duration::from_secs(1));
    up_rt.shutdown_timeout(Duration::from_secs(1));

    if total_errors > 0 {
        eprintln!("proxy_load: {total_errors} calls failed; first errors:");
        for e in errors.first.lock().unwrap().iter() {
            eprintln!("  {e}");
        }
        std::process::exit(1);
    }
    if s.enforce && verdicts.iter().any(|(_, ok, _)| !ok) {
        std::process::exit(3);
    }
}

fn settings(cores: usize) -> Settings {
    fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
        match std::env::var(name) {
            Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
            Err(_) => default,
        }
    }
    let paths: Vec<String> = std::env::var("LOAD_PATHS")
        .unwrap_or_else(|_| "direct,gateway".into())
        .split(',')
        .map(|p| p.trim().to_string())
        .collect();
    assert!(
        paths.iter().all(|p| p == "direct" || p == "gateway") && !paths.is_empty(),
        "LOAD_PATHS: direct, gateway or both"
    );
    let clients = std::env::var("LOAD_CLIENTS").unwrap_or_else(|_| "1,32".into());
    let clients: Vec<usize> = clients
        .split(',')
        .map(|c| c.trim().parse().unwrap_or_else(|_| panic!("LOAD_CLIENTS={clients:?} is not a list of numbers")))
        .collect();
    assert!(clients.iter().all(|&c| c > 0 && c <= 60), "LOAD_CLIENTS: 1 to 60 clients (64 sessions per grant)");
    Settings {
        seconds: var("LOAD_SECONDS", 5.0),
        warmup: var("LOAD_WARMUP", 1.0),
        rounds: var("LOAD_ROUNDS", 5u32).max(1),
        clients,
        threads: var("LOAD_THREADS", cores).max(1),
        log: var("LOAD_LOG", 0u8) != 0,
        enforce: var("LOAD_ENFORCE", 0u8) != 0,
        allocs: var("LOAD_ALLOCS", 0u8) != 0,
        direct: paths.iter().any(|p| p == "direct"),
        gateway: paths.iter().any(|p| p == "gateway"),
        arg_bytes: var("LOAD_ARG_BYTES", TEXT.len()),
        audit: var("LOAD_AUDIT", 1u8) != 0,
        database: std::env::var("LOAD_DATABASE").ok().filter(|d| !d.trim().is_empty()),
    }
}

// --- the upstream ---


// --- the gateway ---

/// Median wall time and CPU per durable write of 300 bytes, 200 times, in `dir`: each an
/// overwrite inside a preallocated file plus fdatasync (what a commit to SQLite's reused WAL
/// costs at least; an append that grows the file also journals its new size, which costs more).
fn fsync_floor(dir: &std::path::Path) -> Floor {
    use std::os::unix::fs::FileExt;
    const N: u64 = 200;
    let path = dir.join("fsync-floor");
    let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).expect("the floor file");
    f.write_all_at(&vec![0u8; (N * 4096) as usize], 0).expect("preallocate");
    f.sync_all().expect("fsync");
    let record = [b'x'; 300];
    let mut walls = Vec::with_capacity(N as usize);
    let cpu = || -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    let cpu_before = cpu();
    for i in 0..N {
        let t = Instant::now();
        f.write_all_at(&record, i * 4096).expect("write");
        f.sync_data().expect("fdatasync");
        walls.push(t.elapsed().as_nanos() as u64);
    }
    let cpu_ns = cpu().saturating_sub(cpu_before);
    drop(f);
    let _ = std::fs::remove_file(&path);
    walls.sort_unstable();
    Floor { p50_ms: walls[walls.len() / 2] as f64 / 1e6, cpu_us: cpu_ns as f64 / 1e3 / N as f64 }
}

/// Bytes of the data directory (database and WAL, checkpointed) and the calls it records.
fn disk_per_call(dir: &std::path::Path) -> (u64, u64) {
    if let Ok(c) = rusqlite::Connection::open(dir.join(gatehouse::record::store::FILE)) {
        let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    let bytes = std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0);
    let calls = gatehouse::record::store::open_read_only(dir)
        .ok()
        .and_then(|c| c.query_row("SELECT count(*) FROM calls WHERE outcome != 'unknown'", [], |r| r.get::<_, i64>(0)).ok())
        .unwrap_or(0) as u64;
    (bytes, calls)
}

fn start_gateway(
    rt: &Runtime,
    upstream_url: &str,
    audit: Option<gatehouse::record::store::Location>,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let server = format!(
        "name: bench\ntransport: streamable-http\nurl: {upstream_url}\ntimeout: 10s\nsupplier: {{ operated_by: internal }}\n"
    );
    // Seed style: one deny_if clause with a regex the arguments do not match.
    let policy = "version: \"1\"\ndefault: deny\ntools:\n  echo:\n    deny_if:\n      - name: no destructive sql\n        \
                  message: Destructive statements are not allowed\n        \
                  conditions: [ { path: args.text, op: regex, value: \"(?i)\\\\b(drop|delete|truncate)\\\\b\" } ]\n";
    let token_hash = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    let grant = format!(
        "identity: bench@example.com\nkind: agent\nowner: ops@example.com\ntokens: [ {{ sha256: {token_hash} }} ]\n\
         access: [ {{ server: bench, tools: [echo], policy: policies/bench.yaml }} ]\n"
    );
    let files = [
        ("servers/bench.yaml", server.as_str()),
        ("policies/bench.yaml", policy),
        ("grants/bench.yaml", grant.as_str()),
    ];
    let compiled = compile(&Files::from_memory(files)).unwrap_or_else(|d| panic!("the bench repository: {d}"));
    let snapshot = Arc::new(compiled.snapshot);
    let secrets = Arc::new(bind(&snapshot, &SecretSource::default()).unwrap_or_else(|e| panic!("{e:?}")));
    let (stop, stopped) = oneshot::channel::<()>();
    // Opening the store and loading quotas block (and the sync PostgreSQL client refuses an
    // async worker): a blocking thread, as `gatehouse serve` does.
    let state = rt
        .block_on(rt.spawn_blocking(move || match &audit {
            Some(at) => State::with_store(Config::default(), gatehouse::record::store::Store::open_at(at).expect("the state database")),
            None => State::new(Config::default()),
        }))
        .expect("the gateway state");
    rt.block_on(async move {
        let state = Arc::new(state);
        state.activate(Active { snapshot, secrets });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            proxy::serve(listener, state, shutdown).await.expect("the gateway serves");
        });
        (addr, stop, served)
    })
}

// --- the load generator ---

/// Where a client sends its calls.
struct Target {
    uri: Uri,
    bearer: Option<HeaderValue>,
    tool: &'static str,
}

/// One client: one hyper client (one keep-alive connection, calls in sequence) in one session
/// (none: a 2026-07-28 client of the gateway, `LOAD_PROTOCOL`).
struct Caller {
    http: HttpClient,
    target: Arc<Target>,
    session: Option<HeaderValue>,
}

/// `LOAD_PROTOCOL=2026-07-28`: the gateway's clients are stateless.
fn stateless() -> bool {
    static S: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *S.get_or_init(|| std::env::var("LOAD_PROTOCOL").is_ok_and(|v| v == "2026-07-28"))
}

#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

/// One path's measurement at one client count.
#[derive(Default)]
struct Sample {
    /// Nanoseconds per call.
    latencies: Vec<u64>,
    wall: Duration,
    /// (allocations, bytes) per part during the sample (with LOAD_ALLOCS=1).
    allocs: [(u64, u64); 4],
    /// CPU nanoseconds per part during the sample.
    /// CPU per part; index [`WRITER`] is the store's writer thread, also counted in [`GATEWAY`].
    cpu: [u64; 5],
}

struct Stats {
    p50_ms: f64,
    p99_ms: f64,
    calls: usize,
    per_sec: f64,
    /// (allocations, bytes) per call, per part.
    allocs: [(f64, f64); 4],
    /// CPU microseconds per call, per part.
    cpu_us: [f64; 5],
}

struct Row {
    clients: usize,
    direct: Stats,
    gateway: Stats,
}

impl Errors {
    fn add(&self, e: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap();
        if first.len() < 5 {
            first.push(e);
        }
    }
}

impl Sample {
    fn stats(&mut self) -> Stats {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let pct = |p: f64| {
            if n == 0 {
                return f64::NAN;
            }
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            self.latencies[i] as f64 / 1e6
        };
        let per_call = |(a, b): (u64, u64)| (a as f64 / n.max(1) as f64, b as f64 / n.max(1) as f64);
        Stats {
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            calls: n,
            per_sec: n as f64 / self.wall.as_secs_f64(),
            allocs: self.allocs.map(per_call),
            cpu_us: self.cpu.map(|ns| ns as f64 / 1e3 / n.max(1) as f64),
        }
    }
}

impl Row {
    fn added_p50(&self) -> f64 {
        self.gateway.p50_ms - self.direct.p50_ms
    }
    fn added_p99(&self) -> f64 {
        self.gateway.p99_ms - self.direct.p99_ms
    }
    fn ratio(&self) -> f64 {
        self.gateway.per_sec / self.direct.per_sec
    }
    fn json(&self) -> Value {
        let stats = |s: &Stats| {
            let cpu: serde_json::Map<String, Value> =
                (0..4).map(|i| (PARTS[i].to_string(), json!(r1(s.cpu_us[i])))).chain([("gateway_writer".to_string(), json!(r1(s.cpu_us[WRITER])))]).collect();
            let mut v = json!({ "p50_ms": r3(s.p50_ms), "p99_ms": r3(s.p99_ms), "calls": s.calls,
                                "calls_per_s": r1(s.per_sec), "cpu_us_per_call": cpu });
            if COUNTING.load(Ordering::Relaxed) {
                let parts: serde_json::Map<String, Value> = (1..4)
                    .map(|i| (PARTS[i].to_string(), json!({ "allocs": r1(s.allocs[i].0), "bytes": r1(s.allocs[i].1) })))
                    .collect();
                v["allocs_per_call"] = Value::Object(parts);
            }
            v
        };
        json!({
            "clients": self.clients,
            "direct": stats(&self.direct),
            "gateway": stats(&self.gateway),
            "added_p50_ms": r3(self.added_p50()),
            "added_p99_ms": r3(self.added_p99()),
            "throughput_ratio": r3(self.ratio()),
        })
    }
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

async fn measure(
    n: usize,
    s: &Settings,
    direct: &Arc<Target>,
    gateway: &Arc<Target>,
    payload: &Arc<Payload>,
    errors: &Arc<Errors>,
) -> Row {
    let direct_callers = if s.direct { open_callers(n, direct).await } else { Vec::new() };
    let gateway_callers = if s.gateway { open_callers(n, gateway).await } else { Vec::new() };
    let warm = Duration::from_secs_f64(s.warmup);
    run(&direct_callers, warm, payload, errors).await;
    run(&gateway_callers, warm, payload, errors).await;
    let slice = Duration::from_secs_f64(s.seconds / s.rounds as f64);
    let (mut d, mut g) = (Sample::default(), Sample::default());
    for _ in 0..s.rounds {
        d.merge(run(&direct_callers, slice, payload, errors).await);
        g.merge(run(&gateway_callers, slice, payload, errors).await);
    }
    Row { clients: n, direct: d.stats(), gateway: g.stats() }
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        self.wall += other.wall;
        for (mine, theirs) in self.allocs.iter_mut().zip(other.allocs) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
        for (mine, theirs) in self.cpu.iter_mut().zip(other.cpu) {
            *mine += theirs;
        }
    }
}

/// `n` clients, each in a session of its own at `target`.
async fn open_callers(n: usize, target: &Arc<Target>) -> Vec<Arc<Caller>> {
    let mut callers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1).build(connector);
        if stateless() && target.bearer.is_some() {
            callers.push(Arc::new(Caller { http, target: target.clone(), session: None }));
            continue;
        }
        let init = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": { "name": "proxy_load", "version": "1" } } });
        let resp = http.request(request(target, None, init.to_string())).await.expect("initialize");
        assert_eq!(resp.status(), StatusCode::OK, "initialize at {}", target.uri);
        let session = resp.headers().get("mcp-session-id").expect("an Mcp-Session-Id").clone();
        let _ = resp.into_body().collect().await;
        let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string();
        let resp = http.request(request(target, Some(&session), note)).await.expect("notifications/initialized");
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "notifications/initialized at {}", target.uri);
        let _ = resp.into_body().collect().await;
        callers.push(Arc::new(Caller { http, target: target.clone(), session: Some(session) }));
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
    if let Some(b) = &target.bearer {
        h.insert(header::AUTHORIZATION, b.clone());
    }
    if let Some(s) = session {
        h.insert("mcp-session-id", s.clone());
        h.insert("mcp-protocol-version", HeaderValue::from_static(PROTOCOL));
    }
    req
}

/// The `_meta` envelope of a 2026-07-28 call.
const ENVELOPE: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"proxy_load","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}"#;

/// Every caller calls in a loop until `dur` has passed; the latencies of all calls that
/// succeeded, and the wall time until the last one finished.
async fn run(callers: &[Arc<Caller>], dur: Duration, payload: &Arc<Payload>, errors: &Arc<Errors>) -> Sample {
    if callers.is_empty() {
        return Sample::default();
    }
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let before = counted();
    let cpu_before = cpu_by_part();
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = callers
        .iter()
        .map(|c| {
            let (c, payload, errors) = (c.clone(), payload.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    match call(&c, id, &payload).await {
                        Ok(ns) => lat.push(ns),
                        Err(e) => errors.add(format!("{}: {e}", c.target.uri)),
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
    let wall = start.elapsed();
    let after = counted();
    let cpu_after = cpu_by_part();
    Sample {
        latencies,
        wall,
        allocs: std::array::from_fn(|i| (after[i].0 - before[i].0, after[i].1 - before[i].1)),
        cpu: std::array::from_fn(|i| cpu_after[i].saturating_sub(cpu_before[i])),
    }
}

/// CPU time (ns) used so far by the threads of each part, from `/proc/self/task/*/schedstat`
/// (threads are named after their runtime). Zeros where /proc is not available.
fn cpu_by_part() -> [u64; 5] {
    let mut out = [0u64; 5];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        let part = match comm.trim() {
            "client" => CLIENT,
            // The proxy's threads and the audit log's writer thread (also shown alone) work for
            // the gateway.
            "gateway" | "gatehouse-proxy" | "gatehouse-store" => GATEWAY,
            "upstream" => UPSTREAM,
            _ => 0,
        };
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
            .unwrap_or(0);
        out[part] += ns;
        if comm.trim() == "gatehouse-store" {
            out[WRITER] += ns;
        }
    }
    out
}

/// One `tools/call`; its latency in nanoseconds if it was a successful echo.
async fn call(c: &Caller, id: u64, payload: &Payload) -> Result<u64, String> {
    let envelope = if c.session.is_none() { format!(",{ENVELOPE}") } else { String::new() };
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{}","arguments":{}{envelope}}}}}"#,
        c.target.tool, payload.args
    );
    let mut req = request(&c.target, c.session.as_ref(), body);
    if c.session.is_none() {
        let h = req.headers_mut();
        h.insert("mcp-protocol-version", HeaderValue::from_static("2026-07-28"));
        h.insert("mcp-method", HeaderValue::from_static("tools/call"));
        h.insert("mcp-name", HeaderValue::from_static(c.target.tool));
    }
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
            == Some(&payload.expected);
    if ok { Ok(ns) } else { Err(format!("not a successful echo: {v}")) }
}

// --- output ---

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:>7} | {:>10} {:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>11} {:>11} {:>6}",
        "clients", "direct p50", "p99", "gw p50", "p99", "added p50", "p99", "direct /s", "gateway /s", "ratio"
    );
    println!("{}", "-".repeat(118));
    for r in rows {
        println!(
            "{:>7} | {:>8.3}ms {:>8.3}ms | {:>8.3}ms {:>8.3}ms | {:>8.3}ms {:>8.3}ms | {:>11.0} {:>11.0} {:>5.2}x",
            r.clients,
            r.direct.p50_ms,
            r.direct.p99_ms,
            r.gateway.p50_ms,
            r.gateway.p99_ms,
            r.added_p50(),
            r.added_p99(),
            r.direct.per_sec,
            r.gateway.per_sec,
            r.ratio()
        );
    }
    println!();
}

fn print_cpu(rows: &[Row]) {
    println!("CPU time per call (microseconds), by the part whose threads used it:");
    println!(
        "{:>7} {:>8} | {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8}",
        "clients", "path", "client", "gateway", "(writer)", "upstream", "other", "total"
    );
    for r in rows {
        for (path, st) in [("direct", &r.direct), ("gateway", &r.gateway)] {
            let c = st.cpu_us;
            println!(
                "{:>7} {:>8} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>8.1}",
                r.clients,
                path,
                c[CLIENT],
                c[GATEWAY],
                c[WRITER],
                c[UPSTREAM],
                c[0],
                c[..4].iter().sum::<f64>()
            );
        }
    }
    println!();
}

fn print_allocs(rows: &[Row]) {
    println!("heap allocations per call (count / bytes), by the part whose threads made them:");
    println!("{:>7} {:>8} | {:>16} | {:>16} | {:>16}", "clients", "path", "client", "gateway", "upstream");
    for r in rows {
        for (path, st) in [("direct", &r.direct), ("gateway", &r.gateway)] {
            let cell = |i: usize| format!("{:.1} / {:.0}", st.allocs[i].0, st.allocs[i].1);
            println!(
                "{:>7} {:>8} | {:>16} | {:>16} | {:>16}",
                r.clients,
                path,
                cell(CLIENT),
                cell(GATEWAY),
                cell(UPSTREAM)
            );
        }
    }
    println!();
}

/// (name, met, detail) for each target the rows cover.
fn targets(rows: &[Row], audit: Option<Floor>) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let both = |r: &&Row| r.direct.calls > 0 && r.gateway.calls > 0;
    if let Some(floor) = audit {
        if let Some(r) = rows.iter().filter(both).find(|r| r.clients == 1) {
            let limit = floor.p50_ms + TARGET_ADDED_P50_OVER_FSYNC_MS;
            out.push((
                "audit on, 1 client: added p50 <= fsync + 0.05 ms".to_string(),
                r.added_p50() <= limit,
                format!("measured {:.3} ms = fsync {:.3} ms + {:.3} ms", r.added_p50(), floor.p50_ms, r.added_p50() - floor.p50_ms),
            ));
            let cpu = r.gateway.cpu_us[GATEWAY];
            out.push((
                "audit on, 1 client: gateway CPU per call <= fsync CPU + 40 us".to_string(),
                cpu <= floor.cpu_us + TARGET_CPU_OVER_FSYNC_US_AT_1,
                format!("measured {cpu:.1} us = fsync {:.1} us + {:.1} us", floor.cpu_us, cpu - floor.cpu_us),
            ));
        }
        if let Some(r) = rows.iter().filter(both).find(|r| r.clients == 32) {
            let cpu = r.gateway.cpu_us[GATEWAY];
            out.push(("audit on, 32 clients: gateway CPU per call <= 40 us".to_string(), cpu <= TARGET_CPU_US_AT_32, format!("measured {cpu:.1} us")));
        }
        return out;
    }
    if let Some(r) = rows.iter().filter(both).find(|r| r.clients == 1) {
        let ok = r.added_p50() <= TARGET_ADDED_P50_MS_AT_1;
        out.push(("added p50 at 1 client <= 0.2 ms".to_string(), ok, format!("measured {:.3} ms", r.added_p50())));
    }
    if let Some(r) = rows.iter().filter(both).find(|r| r.clients == 32) {
        let ok = r.ratio() >= TARGET_RATIO_AT_32;
        out.push(("throughput at 32 clients >= 0.5x direct".to_string(), ok, format!("measured {:.2}x", r.ratio())));
    }
    out
}
