//! The command line of DESIGN.md §5. Each subcommand is a thin call into the library; the
//! returned number is the process exit code.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::policy::{Call, Verdict};
use crate::repo::{self, Compiled};

/// Exit code: the repository is invalid, or the command could not run.
pub const EXIT_INVALID: i32 = 2;

#[derive(Parser, Debug)]
#[command(name = "gatehouse", version, about = "An MCP gateway whose configuration lives in git")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where to read the policy repository from.
#[derive(clap::Args, Debug)]
pub struct RepoArgs {
    /// The policy repository (a directory; may be a subdirectory of a git repository).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Read this git revision (branch, tag, commit) instead of the working tree.
    #[arg(long)]
    pub rev: Option<String>,
}

/// `gatehouse serve`'s flags.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The policy repository: a local path (watched), or a URL cloned into the data dir and
    /// fetched every --poll.
    #[arg(long, default_value = ".")]
    pub repo: String,
    /// The branch to follow; default: HEAD (local) or the remote's default branch.
    #[arg(long)]
    pub branch: Option<String>,
    /// Where MCP clients connect: /mcp, /mcp/<server>, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Where /status, /metrics and POST /-/reconcile are served. Default: a free loopback port,
    /// written to <data-dir>/admin.addr (so that daemons on one host never collide).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: std::net::SocketAddr,
    /// Where the state database (and a remote repository's clone) live.
    #[arg(long, default_value = "./gatehouse-data")]
    pub data_dir: PathBuf,
    /// A PostgreSQL state database shared by several replicas (postgres://user@host/db; no
    /// TLS), instead of the SQLite file in --data-dir (which still holds admin.addr and a
    /// remote repository's clone).
    #[arg(long, env = "GATEHOUSE_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// This process's name in call records, change applications and the replicas view; each
    /// replica keeps its own hash chain. Default: the host name. Must be unique per process
    /// sharing a database.
    #[arg(long)]
    pub replica: Option<String>,
    /// Directory of secret files (`DIR/NAME` for `${secret:NAME}`); the environment
    /// (`GATEHOUSE_SECRET_NAME`) is read too.
    #[arg(long)]
    pub secrets_dir: Option<PathBuf>,
    /// How often to look for a new commit without a trigger (60s, 5m, …).
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg)]
    pub poll: std::time::Duration,
    /// Apply a history rewrite (a tip that does not descend from the applied commit)
    /// instead of refusing it; it is still recorded.
    #[arg(long)]
    pub accept_rewrite: bool,
    /// With `changes.require_signed` in gatehouse.yaml: trust the signers that the first commit
    /// lists itself, once, while no commit has been applied (recorded as an event and in the
    /// change record). Later trust lists always come from the last applied commit.
    #[arg(long)]
    pub trust_initial_signers: bool,
    /// Require `POST /-/reconcile` to carry a valid X-Hub-Signature-256 made with this secret.
    #[arg(long, env = "GATEHOUSE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body: usize,
    /// Connections held at once on the MCP listener, in all; more are closed at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections one client address (IPv6: one /64) may hold; 0: no limit (behind a load
    /// balancer, whose one address carries every client).
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_address: usize,
    /// Time a client has to send a request's head once the connection is ready for one; also
    /// how long an idle keep-alive connection is kept.
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub header_timeout: std::time::Duration,
    /// Messages in one JSON-RPC batch (protocol 2025-03-26 only).
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Largest response body the gateway builds, in bytes (one reply, or a batch's replies).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_response: usize,
    /// Threads serving MCP connections, each an event loop of its own. Default: the CPUs this
    /// process may use (its cgroup's quota included).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Count rate limits and spend caps in Redis, shared by every replica
    /// (`redis://[user:password@]host[:port][/db]`). Default: in the local state database (one
    /// replica). When Redis does not answer, calls with quotas are refused.
    #[arg(long, env = "GATEHOUSE_QUOTA_STORE", hide_env_values = true)]
    pub quota_store: Option<String>,
    /// Separates the counters of deployments (or tests) that share one Redis: keys are
    /// `gatehouse:{PREFIX}:quota:…`.
    #[arg(long, env = "GATEHOUSE_QUOTA_KEY_PREFIX", default_value = "default")]
    pub quota_key_prefix: String,
    /// Appended to every session id this process issues (`<random>.<ROUTE>`), so that a load
    /// balancer in front of several replicas can send each request of a session to the replica
    /// that holds it (docs/replicas.md). Letters, digits, `-` and `_`; default: none.
    #[arg(long, env = "GATEHOUSE_SESSION_ROUTE", value_parser = parse_session_route)]
    pub session_route: Option<String>,
}

/// A `--session-route`: 1 to 63 of `[A-Za-z0-9_-]`, what a session id may carry and a load
/// balancer's pattern can match without escaping.
fn parse_session_route(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() || s.len() > 63 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("invalid session route {s:?}: use 1 to 63 letters, digits, '-' or '_'"));
    }
    Ok(s.to_string())
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway: follow the policy repository and serve MCP on --listen.
    Serve(ServeArgs),
    /// Accept the history rewrite the daemon refused (recorded with who and why).
    AcceptRewrite {
        #[arg(long, default_value = "./gatehouse-data")]
        data_dir: PathBuf,
        /// A PostgreSQL state database (postgres://user@host/db), read instead of --data-dir's.
        #[arg(long, env = "GATEHOUSE_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
        /// Why the rewrite is acceptable (kept in the change history).
        #[arg(long)]
        reason: String,
        /// Who accepts it.
        #[arg(long, env = "USER")]
        by: String,
    },
    /// The call log: verify the hash chain, follow it, export a period.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a daemon's /status (from its admin listener): exit 0 ready with the tip applied, 1
    /// not ready or stalled (the last commit tried was rejected: invalid, unsigned or untrusted,
    /// or a refused history rewrite; the previous commit keeps serving).
    Status {
        /// The admin listener's URL; default: the address the daemon wrote to
        /// `<data-dir>/admin.addr` when it started.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value = "./gatehouse-data")]
        data_dir: PathBuf,
    },
    /// Validate the repository: prints every problem as file:line:col; exit 0 valid, 2 invalid.
    Check(RepoArgs),
    /// Run the policy tests in tests/: exit 0 all pass, 1 a case failed, 2 invalid repository.
    Test(RepoArgs),
    /// Decide one call and print the decision as JSON: exit 0 allow, 1 deny, 2 error.
    Eval {
        #[command(flatten)]
        repo: RepoArgs,
        /// The caller: a grant's identity (or its file name without .yaml).
        #[arg(long)]
        identity: String,
        #[arg(long)]
        server: String,
        #[arg(long)]
        tool: String,
        /// The call's arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// A count already spent in the current window, as COUNTER=N (repeatable). COUNTER is
        /// Intercept's name (`state.create_charge.daily_spend`, `state._global.calls`) or a quota's
        /// rule name. Quotas the call reaches start from 0 otherwise.
        #[arg(long = "counter", value_name = "COUNTER=N", value_parser = parse_counter)]
        counters: Vec<(String, f64)>,
        /// Decide as a caller signed in through an identity provider with this group (repeatable):
        /// the roles whose `groups` name it apply, as in the gateway.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Issue, revoke or review a grant's tokens: edits grants/NAME.yaml for you to commit.
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// Who gains or loses which tool between two revisions: exit 0 no access change, 1 access
    /// changes, 2 error (an invalid head prints its errors).
    Plan {
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[arg(long)]
        base: String,
        #[arg(long)]
        head: String,
        #[arg(long, value_enum, default_value = "md")]
        format: PlanFormat,
        /// Measure the change against the call log of --data-dir: use of every lost tool, gained
        /// privileged tools, and the recorded calls the head would decide differently.
        #[arg(long)]
        usage: bool,
        /// The daemon's state database directory (read-only), for --usage.
        #[arg(long, default_value = "./gatehouse-data", requires = "usage")]
        data_dir: PathBuf,
        /// A PostgreSQL state database (postgres://user@host/db), read instead of --data-dir's
        /// for --usage.
        // Not `requires = "usage"`: the variable may be set for every command.
        #[arg(long, env = "GATEHOUSE_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
        /// The window of --usage, in days back from now.
        #[arg(long, default_value_t = 30, requires = "usage")]
        days: u64,
    },
    /// Export the evidence an auditor samples for one ISO 27001 control (or all of them as a
    /// bundle with index.html and MANIFEST.json), from git history and the state database.
    /// Exit 0; 1 when the call log's hash chain does not verify over the period (the export is
    /// complete, and says so); 2 on error.
    Evidence {
        control: crate::evidence::Control,
        /// Start of the period, inclusive: YYYY-MM-DD (UTC midnight) or RFC 3339.
        #[arg(long)]
        since: String,
        /// End of the period, exclusive.
        #[arg(long)]
        until: String,
        #[arg(long, value_enum, default_value = "csv")]
        format: crate::evidence::Format,
        /// Where the files go (created if needed). `-` writes the export of a one-table control
        /// (access-review, provisioning, privileged, suppliers) to standard output, and its
        /// manifest and the summary to standard error.
        #[arg(long, default_value = "./evidence")]
        out: PathBuf,
        /// The policy repository (its first-parent history of --rev is read).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[arg(long, default_value = "HEAD")]
        rev: String,
        /// The daemon's state database directory.
        #[arg(long, default_value = "./gatehouse-data")]
        data_dir: PathBuf,
        /// A PostgreSQL state database (postgres://user@host/db), read instead of --data-dir's.
        #[arg(long, env = "GATEHOUSE_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
    },
    /// Connect to an upstream and list its tools with a proposed category, definition hash
    /// (the pin) and screening findings: exit 0 clean, 1 findings, 2 error. --write pins them in
    /// servers/NAME.yaml.
    Scan(ScanArgs),
    /// Serve a simulated upstream MCP server on stdio (what the example repository's servers run).
    ExampleUpstream {
        flavor: crate::commands::example_upstream::Flavor,
        /// The files flavor's sandbox, seen by clients as /srv/projects (default: a fresh temporary
        /// directory with sample files, removed on exit).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

/// `gatehouse grant`: the token goes to stdout alone (so `TOKEN=$(gatehouse grant issue …)`
/// works), everything else to stderr.
fn grant(command: GrantCommand) -> Result<i32> {
    use crate::commands::grant;
    let today = crate::units::Date::today();
    match command {
        GrantCommand::Issue { name, kind, owner, expires, repo } => {
            let i = grant::issue(&repo, &name, kind, owner.as_deref(), Some(expires), today)?;
            eprintln!("warning: the token below is shown once and stored nowhere; put it in the client's secret store now");
            println!("{}", i.token);
            let until = i.expires.map_or_else(|| "never expires".to_string(), |e| format!("expires {e}"));
            let verb = if i.created { "created" } else { "added to" };
            eprintln!("{verb} {}: token sha256 {}… for {} ({until})", i.file.display(), &i.sha256[..12], i.identity);
            eprintln!("commit it: git add {} && git commit", i.file.display());
            Ok(0)
        }
        GrantCommand::Revoke { name, token_prefix, repo } => {
            let r = grant::revoke(&repo, &name, token_prefix.as_deref())?;
            if r.removed.is_empty() {
                println!("{} has no tokens: nothing revoked", r.file.display());
                return Ok(0);
            }
            for h in &r.removed {
                println!("revoked token sha256 {h}…");
            }
            println!(
                "{}: {} token(s) left; commit it: the revocation takes effect once the gateway applies the commit",
                r.file.display(),
                r.remaining
            );
            Ok(0)
        }
        GrantCommand::Review { name, by, repo } => {
            let file = grant::review(&repo, &name, &by, today)?;
            println!("{}: review: {{ on: {today}, by: {} }}; commit it", file.display(), by.trim());
            Ok(0)
        }
    }
}

/// `gatehouse scan`: the report on stdout (table or JSON), then what --write wrote. The exit code
/// is the report's (0 clean, 1 findings); a failed write is an error (2) after the report.
fn scan(args: ScanArgs) -> Result<i32> {
    use crate::commands::scan::{self, Target};
    let target = match (args.server, args.url) {
        (Some(s), _) => Target::Server(s),
        (None, Some(url)) => Target::Url { url, sse: args.transport == ScanTransport::Sse, headers: args.headers },
        (None, None) if !args.command.is_empty() => Target::Command(args.command),
        (None, None) => bail!("give --server NAME, --url URL or -- COMMAND…"),
    };
    let settings = scan::Settings {
        target,
        repo_given: args.repo.is_some(),
        repo: args.repo.unwrap_or_else(|| PathBuf::from(".")),
        rev: args.rev,
        secrets: crate::gateway::secrets::SecretSource { dir: args.secrets_dir },
        timeout: args.timeout,
    };
    let found = scan::run(&settings)?;
    let mut failure = None;
    let written = if args.write {
        match scan::write(&settings.repo, &found) {
            Ok(w) => Some(w),
            Err(e) => {
                failure = Some(e);
                None
            }
        }
    } else {
        None
    };
    let policy = match (&args.policy, &failure) {
        (Some(file), None) => match scan::write_policy(&settings.repo, file, &found.report) {
            Ok(p) => Some(p),
            Err(e) => {
                failure = Some(e);
                None
            }
        },
        _ => None,
    };
    match args.format {
        ScanFormat::Table => print!("{}", scan::table(&found.report, written.as_ref(), policy.as_ref())),
        ScanFormat::Json => println!("{}", scan::json(&found.report, written.as_ref(), policy.as_ref())?),
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(found.report.exit_code())
}

fn plan(dir: &std::path::Path, base: &str, head: &str, format: PlanFormat, usage: Option<(&crate::record::store::Location, u64)>) -> Result<i32> {
    let mut compiled = Vec::new();
    for (which, rev) in [("base", base), ("head", head)] {
        let files = repo::read(dir, Some(rev))?;
        match repo::compile(&files) {
            Ok(c) => compiled.push((files, c.snapshot)),
            Err(d) => {
                print!("{d}");
                println!("{}: the {which} revision {rev:?} is invalid", d.summary());
                return Ok(EXIT_INVALID);
            }
        }
    }
    let (head_files, head_snap) = compiled.pop().expect("two revisions");
    let (base_files, base_snap) = compiled.pop().expect("two revisions");
    let mut p = crate::commands::plan::plan(&base_files, &base_snap, &head_files, &head_snap, crate::units::Date::today());
    // Signatures, as the daemon would check them with the base applied.
    {
        use crate::gitops::{git::PolicyRepo, signature};
        let pr = PolicyRepo::discover(dir)?;
        let (b, h) = (pr.resolve(base)?, pr.resolve(head)?);
        p.signatures = signature::check_range(&pr, Some(b), h)?.iter().map(crate::commands::plan::SignatureCheck::from).collect();
    }
    if let Some((store, days)) = usage {
        let now = crate::units::unix_now();
        let at = |secs: i64| format!("{}.000Z", crate::units::rfc3339(secs, 0).trim_end_matches('Z'));
        let (since, until) = (at(now - days as i64 * 86_400), at(now + 1));
        let input = crate::commands::usage::Inputs {
            base_files: &base_files,
            base: base_snap,
            head_files: &head_files,
            head: head_snap,
            repo_dir: dir,
            store,
            since: &since,
            until: &until,
            days,
        };
        p.usage = Some(crate::commands::usage::usage(&p, input)?);
    }
    match format {
        PlanFormat::Md => print!("{}", crate::commands::plan::markdown(&p)),
        PlanFormat::Json => println!("{}", serde_json::to_string_pretty(&p)?),
    }
    Ok(if p.signatures.iter().any(|s| !s.accepted) {
        EXIT_INVALID
    } else if p.changes_access() {
        1
    } else {
        0
    })
}

fn audit(command: AuditCommand) -> Result<i32> {
    use crate::record::audit::verify::{self, Verdict};
    use crate::record::store::{Location, Reader};
    match command {
        AuditCommand::Verify { data_dir, database } => {
            let reader = Reader::open(&Location::of(&data_dir, database.as_deref()))?;
            let chains = verify::verify_all(&reader)?;
            let mut code = 0;
            for (replica, verdict) in &chains {
                match verdict {
                    Verdict::Intact { count, first, last } => {
                        println!("ok: {count} records, seq {first}..{last}, the chain verifies (replica {replica})");
                    }
                    Verdict::Broken { seq, why } => {
                        println!("broken at seq {seq} (replica {replica}): {why}");
                        code = 1;
                    }
                }
            }
            if chains.is_empty() {
                println!("ok: 0 records, no chain yet");
            }
            Ok(code)
        }
        AuditCommand::Tail { data_dir, database, lines, follow } => {
            let reader = Reader::open(&Location::of(&data_dir, database.as_deref()))?;
            let (last, mut after) = verify::last_records(&reader, lines)?;
            for line in last {
                println!("{line}");
            }
            const PAGE: usize = 1000;
            if !follow {
                return Ok(0);
            }
            loop {
                // Everything written since, page by page, then wait for more.
                let page = verify::since(&reader, &after, PAGE)?;
                let full = page.len() >= PAGE;
                for (replica, seq, line) in page {
                    println!("{line}");
                    after.insert(replica, seq);
                }
                if !full {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
            }
        }
        AuditCommand::Export { data_dir, database, since, until, format, out } => {
            let (since, until) = (verify::bound(&since)?, verify::bound(&until)?);
            let ext = match format {
                verify::Format::Jsonl => "jsonl",
                verify::Format::Csv => "csv",
            };
            let out = out.unwrap_or_else(|| PathBuf::from(format!("calls-{}-{}.{ext}", &since[..10], &until[..10])));
            let reader = Reader::open(&Location::of(&data_dir, database.as_deref()))?;
            let manifest = verify::export(&reader, &since, &until, format, &out)?;
            // With --out - the records went to standard output: the manifest goes to standard error.
            if out == std::path::Path::new("-") {
                eprintln!("{}", serde_json::to_string_pretty(&manifest)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&manifest)?);
            }
            Ok(0)
        }
    }
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::units::parse_duration(s)
}

/// `gatehouse status --url`: GET /status and print it.
fn status(url: &str) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = runtime.block_on(async {
        use http_body_util::BodyExt;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let uri: http::Uri = format!("{}/status", url.trim_end_matches('/')).parse().context("--url")?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri)).await.context("timed out")??;
        let bytes = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok(bytes)
    })?;
    let v: Value = serde_json::from_slice(&body).context("/status is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    let stalled = v["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Stalled" && c["status"] == "True"));
    Ok(if v["ready"] == true && !stalled { 0 } else { 1 })
}

/// What `gatehouse eval` prints.
#[derive(serde::Serialize)]
struct EvalOutput<'a> {
    verdict: Verdict,
    rule: &'a str,
    message: &'a str,
    /// None when read from a working tree.
    commit: Option<&'a str>,
    digest: &'a str,
    quotas: Vec<Value>,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the hash chain; exit 0 intact, 1 broken (naming the first broken seq).
    Verify {
        #[arg(long, default_value = "./gatehouse-data")]
        data_dir: PathBuf,
        /// A PostgreSQL state database (postgres://user@host/db), read instead of --data-dir's.
        #[arg(long, env = "GATEHOUSE_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
    },
    /// Print the last records and, with --follow, new ones as they are written (JSON lines).
    Tail {
        #[arg(long, default_value = "./gatehouse-data")]
        data_dir: PathBuf,
        /// A PostgreSQL state database (postgres://user@host/db), read instead of --data-dir's.
        #[arg(long, env = "GATEHOUSE_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        #[arg(long)]
        follow: bool,
    },
    /// Write the records of [--since, --until) to a file, with a manifest (count, seq range, sha256).
    Export {
        #[arg(long, default_value = "./gatehouse-data")]
        data_dir: PathBuf,
        /// A PostgreSQL state database (postgres://user@host/db), read instead of --data-dir's.
        #[arg(long, env = "GATEHOUSE_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
        /// Start (inclusive): YYYY-MM-DD or RFC 3339 UTC.
        #[arg(long)]
        since: String,
        /// End (exclusive).
        #[arg(long)]
        until: String,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: crate::record::audit::verify::Format,
        /// Output file (default: calls-<since>-<until>.<format>); `-` writes the records to
        /// standard output and the manifest to standard error.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum GrantCommand {
    /// Create a token: printed once on stdout; only its SHA-256 goes into grants/NAME.yaml.
    Issue {
        /// The grant file's name: grants/NAME.yaml (created when missing).
        name: String,
        /// human, or agent (an agent names its accountable human in --owner).
        #[arg(long, value_enum)]
        kind: crate::commands::grant::Kind,
        /// The accountable human: required for a new agent; a new human grant's identity.
        #[arg(long)]
        owner: Option<String>,
        /// Lifetime: 90d, 12w, a date (2026-12-31), or never.
        #[arg(long, default_value = "90d")]
        expires: crate::commands::grant::Expiry,
        /// The policy repository's working tree.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Remove token hashes from grants/NAME.yaml: the one --token-prefix picks, or all of them.
    Revoke {
        name: String,
        /// At least 8 hex digits of the token's sha256 (as in the file), or the whole token.
        #[arg(long)]
        token_prefix: Option<String>,
        /// The policy repository's working tree.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Record an access review: sets review: { on: TODAY, by: ID }.
    Review {
        name: String,
        #[arg(long)]
        by: String,
        /// The policy repository's working tree.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
}

/// `gatehouse scan`: exactly one of --server, --url, -- COMMAND.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["server", "url", "command"])))]
pub struct ScanArgs {
    /// A server of the policy repository (its definition and credentials).
    #[arg(long)]
    pub server: Option<String>,
    /// The policy repository: where --server is defined and --write writes; for --url and
    /// COMMAND, other servers' tool names are screened for when it is readable.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Read the server's definition at this git revision (not with --write).
    #[arg(long)]
    pub rev: Option<String>,
    /// Directory of secret files for --server's credentials (and ${secret:NAME} in --header);
    /// the environment (GATEHOUSE_SECRET_NAME) is read too.
    #[arg(long)]
    pub secrets_dir: Option<PathBuf>,
    /// An HTTP upstream that is not (yet) registered.
    #[arg(long)]
    pub url: Option<String>,
    /// The --url upstream's transport.
    #[arg(long, value_enum, default_value = "streamable-http", requires = "url")]
    pub transport: ScanTransport,
    /// A header for the --url upstream, 'Name: value' (repeatable); the value may hold
    /// ${secret:NAME}.
    #[arg(long = "header", requires = "url")]
    pub headers: Vec<String>,
    /// How long the --url or COMMAND upstream may take to answer (a registered server has its own
    /// timeout).
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub timeout: std::time::Duration,
    #[arg(long, value_enum, default_value = "table")]
    pub format: ScanFormat,
    /// Merge into servers/NAME.yaml (working tree): pin every tool without findings (sha256),
    /// add the proposed category where there is none, declare new tools.
    #[arg(long, requires = "server", conflicts_with = "rev")]
    pub write: bool,
    /// With --write: also write policies/FILE, a deny-by-default policy allowing the tools
    /// classified read (never overwrites).
    #[arg(long, value_name = "FILE", requires = "write")]
    pub policy: Option<String>,
    /// A stdio upstream that is not (yet) registered: the command and its arguments, after --.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScanTransport {
    StreamableHttp,
    Sse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScanFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Md,
    Json,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve(a) => {
            let proxy = crate::gateway::proxy::Config {
                max_body: a.max_body,
                header_timeout: a.header_timeout,
                max_connections: a.max_connections,
                max_connections_per_address: a.max_connections_per_address,
                max_batch: a.max_batch,
                max_response: a.max_response,
                workers: a.workers.map_or_else(|| crate::gateway::proxy::Config::default().workers, usize::from),
                session_route: a.session_route,
                ..Default::default()
            };
            let settings = crate::commands::serve::Settings {
                repo: a.repo,
                branch: a.branch,
                listen: a.listen,
                admin_listen: a.admin_listen,
                data_dir: a.data_dir,
                database: a.database.filter(|d| !d.trim().is_empty()),
                replica: a.replica,
                secrets: crate::gateway::secrets::SecretSource { dir: a.secrets_dir },
                poll: a.poll,
                accept_rewrite: a.accept_rewrite,
                trust_initial_signers: a.trust_initial_signers,
                webhook_secret: a.webhook_secret,
                proxy,
                quota_store: a.quota_store.map(|url| crate::record::quota::shared::Config { url, prefix: a.quota_key_prefix }),
            };
            crate::commands::serve::run(settings).map(|()| 0)
        }
        Command::AcceptRewrite { data_dir, database, reason, by } => {
            let at = crate::record::store::Location::of(&data_dir, database.as_deref());
            let (old, new) = crate::gitops::reconcile::accept_rewrite(&at, &by, &reason)?;
            println!("accepted the rewrite from {old} to {new}; the daemon applies it on its next reconcile (POST /-/reconcile to hurry it)");
            Ok(0)
        }
        Command::Status { url, data_dir } => {
            let url = match url {
                Some(u) => u,
                None => {
                    let file = data_dir.join(crate::commands::serve::ADMIN_ADDR_FILE);
                    let addr = std::fs::read_to_string(&file)
                        .with_context(|| format!("no --url, and {} cannot be read (is a daemon running with --data-dir {}?)", file.display(), data_dir.display()))?;
                    format!("http://{}", addr.trim())
                }
            };
            status(&url)
        }
        Command::Audit { command } => audit(command),
        Command::Plan { repo, base, head, format, usage, data_dir, database, days } => {
            let at = crate::record::store::Location::of(&data_dir, database.as_deref());
            plan(&repo, &base, &head, format, usage.then_some((&at, days)))
        }
        Command::Evidence { control, since, until, format, out, repo, rev, data_dir, database } => {
            let inputs = crate::evidence::Inputs { repo, rev, data_dir, database, since, until };
            crate::evidence::command(&inputs, control, format, &out, &mut std::io::stdout().lock())
        }
        Command::Grant { command } => grant(command),
        Command::Check(r) => check(&r),
        Command::Test(r) => test(&r),
        Command::Eval { repo, identity, server, tool, args, counters, groups } => eval(&repo, &identity, &server, &tool, &args, &counters, &groups),
        Command::Scan(args) => scan(args),
        Command::ExampleUpstream { flavor, root } => crate::commands::example_upstream::run(flavor, root).map(|()| 0),
    }
}

/// Reads and compiles; on invalid input prints every diagnostic to `out` and returns None.
fn load(r: &RepoArgs, out: &mut dyn std::io::Write) -> Result<Option<Compiled>> {
    let files = repo::read(&r.repo, r.rev.as_deref())?;
    match repo::compile(&files) {
        Ok(c) => Ok(Some(c)),
        Err(diags) => {
            write!(out, "{diags}")?;
            writeln!(out, "{}: the repository is invalid", diags.summary())?;
            Ok(None)
        }
    }
}

fn check(r: &RepoArgs) -> Result<i32> {
    let Some(c) = load(r, &mut std::io::stdout())? else { return Ok(EXIT_INVALID) };
    for w in &c.warnings {
        println!("{w}");
    }
    // A revision is a commit: is it an authorised change against its parent's trust list?
    if let Some(rev) = &r.rev {
        use crate::gitops::{git::PolicyRepo, signature};
        let pr = PolicyRepo::discover(&r.repo)?;
        let id = pr.resolve(rev)?;
        let parent = pr.repo.find_commit(id)?.parent_id(0).ok();
        let checks = signature::check_range(&pr, parent, id)?;
        if let Some(check) = checks.last() {
            if let Some(e) = check.rejection() {
                println!("error: {e}");
                println!("1 error: the daemon would reject this commit");
                return Ok(EXIT_INVALID);
            }
            println!("signature: {}", signature::describe(check));
            if parent.is_none() && c.trust.require_signed {
                println!("note: this is a root commit: the daemon trusts its own signers only with serve --trust-initial-signers");
            }
        }
    }
    let s = &c.snapshot;
    println!(
        "ok: {} servers, {} policies, {} roles, {} grants, {} test cases ({}, digest {})",
        s.servers.len(),
        s.policies.len(),
        s.roles.len(),
        s.grants.len(),
        c.tests.len(),
        s.commit.as_deref().map_or("working tree".to_string(), |c| format!("commit {c}")),
        &s.digest[..12]
    );
    Ok(0)
}

fn test(r: &RepoArgs) -> Result<i32> {
    let Some(c) = load(r, &mut std::io::stdout())? else { return Ok(EXIT_INVALID) };
    let outcomes = crate::commands::testing::run(&c);
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed()).collect();
    for o in &failed {
        println!("{}", o.failure_line());
    }
    println!("{} passed, {} failed", outcomes.len() - failed.len(), failed.len());
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// `COUNTER=N` of `eval --counter`.
fn parse_counter(s: &str) -> std::result::Result<(String, f64), String> {
    let (k, n) = s.rsplit_once('=').ok_or_else(|| format!("{s:?}: expected COUNTER=N, e.g. state.create_charge.daily_spend=990000"))?;
    match n.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 && !k.is_empty() => Ok((k.to_string(), n)),
        _ => Err(format!("{s:?}: expected COUNTER=N with N a non-negative number")),
    }
}

fn eval(r: &RepoArgs, identity: &str, server: &str, tool: &str, args: &str, counters: &[(String, f64)], groups: &[String]) -> Result<i32> {
    let args: Value = serde_json::from_str(args).context("--args is not valid JSON")?;
    if !args.is_object() {
        bail!("--args must be a JSON object, e.g. '{{\"path\": \"/srv/projects/a\"}}'");
    }
    let Some(c) = load(r, &mut std::io::stderr())? else { return Ok(EXIT_INVALID) };
    let s = &c.snapshot;
    // Quotas are decided against the given starting counts (0 otherwise), never a daemon's store.
    let decided = crate::commands::testing::decide_signed_in(s, &Call { identity, server, tool, args: &args }, counters, groups).map_err(|e| anyhow!("--counter: {e}"))?;
    let quotas: Vec<Value> = decided
        .quotas
        .iter()
        .map(|q| {
            let mut v = json!({ "rule": &*q.quota.id, "name": q.quota.name, "limit": q.quota.describe(), "count": q.before, "status": q.status });
            if let Some(p) = &q.quota.path {
                v["counter"] = json!(p);
            }
            v
        })
        .collect();
    let d = decided.decision;
    let out = EvalOutput {
        verdict: d.verdict,
        rule: &d.rule,
        message: &d.message,
        commit: s.commit.as_deref(),
        digest: &s.digest,
        quotas,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if d.verdict == Verdict::Allow { 0 } else { 1 })
}
