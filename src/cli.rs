//! The command line of DESIGN.md §5. Each subcommand is a thin call into the library; the
//! returned number is the process exit code.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::policy::{Call, Verdict, evaluate};
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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway: serve MCP on --listen with the repository's policies.
    Serve {
        /// The policy repository (a git repository or a directory inside one).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Serve this branch (or revision); default: HEAD.
        #[arg(long)]
        branch: Option<String>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the state database lives.
        #[arg(long, default_value = "./gatehouse-data")]
        data_dir: PathBuf,
        /// Directory of secret files (`DIR/NAME` for `${secret:NAME}`); the environment
        /// (`GATEHOUSE_SECRET_NAME`) is read too.
        #[arg(long)]
        secrets_dir: Option<PathBuf>,
        /// Largest request body accepted, in bytes.
        #[arg(long, default_value_t = 4 << 20)]
        max_body: usize,
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
    },
    /// Serve a simulated upstream MCP server on stdio (what the example repository's servers run).
    ExampleUpstream {
        flavor: crate::example_upstream::Flavor,
        /// The files flavor's sandbox, seen by clients as /srv/projects (default: a fresh temporary
        /// directory with sample files, removed on exit).
        #[arg(long)]
        root: Option<PathBuf>,
    },
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

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve { repo, branch, listen, data_dir, secrets_dir, max_body } => {
            let proxy = crate::proxy::Config { max_body, ..Default::default() };
            let secrets = crate::secrets::SecretSource { dir: secrets_dir };
            crate::serve::run(crate::serve::Settings { repo, branch, listen, data_dir, secrets, proxy }).map(|()| 0)
        }
        Command::Check(r) => check(&r),
        Command::Test(r) => test(&r),
        Command::Eval { repo, identity, server, tool, args } => eval(&repo, &identity, &server, &tool, &args),
        Command::ExampleUpstream { flavor, root } => crate::example_upstream::run(flavor, root).map(|()| 0),
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
    let outcomes = crate::testing::run(&c);
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed()).collect();
    for o in &failed {
        println!("{}", o.failure_line());
    }
    println!("{} passed, {} failed", outcomes.len() - failed.len(), failed.len());
    Ok(if failed.is_empty() { 0 } else { 1 })
}

fn eval(r: &RepoArgs, identity: &str, server: &str, tool: &str, args: &str) -> Result<i32> {
    let args: Value = serde_json::from_str(args).context("--args is not valid JSON")?;
    if !args.is_object() {
        bail!("--args must be a JSON object, e.g. '{{\"path\": \"/srv/projects/a\"}}'");
    }
    let Some(c) = load(r, &mut std::io::stderr())? else { return Ok(EXIT_INVALID) };
    let s = &c.snapshot;
    let d = evaluate(s, &Call { identity, server, tool, args: &args });
    // Quotas are counted by the daemon's quota store; offline they are listed, never spent.
    let quotas: Vec<Value> = d
        .quotas
        .iter()
        .map(|q| json!({ "rule": &*q.id, "name": q.name, "limit": q.describe(), "status": "not evaluated" }))
        .collect();
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
