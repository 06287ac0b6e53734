//! `gatehouse example-upstream <flavor>`: a small MCP server over stdio, so that the example
//! policy repository can be served with nothing else installed.
//!
//! It owns the three simulated upstreams (`files` over a sandbox directory, `sql` over an
//! in-memory SQLite sample, `payments` in memory) and the stdio transport: newline-delimited
//! JSON-RPC 2.0, one message per line, replies on stdout, logs on stderr only. It knows nothing of
//! policies, grants or the gateway: the gateway spawns it like any other upstream. No async
//! runtime: one request is read, answered and flushed before the next.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use serde_json::{Map, Value, json};

/// Protocol versions answered as asked; any other request gets [`LATEST_PROTOCOL_VERSION`].
const PROTOCOL_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const LATEST_PROTOCOL_VERSION: &str = "2025-11-25";

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

/// The path prefix the client sees for the `files` sandbox; the example policies check it.
const VIRTUAL_ROOT: &str = "/srv/projects";
/// Reads and writes above this size are refused, so one call cannot flood the model's context.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// `query` stops returning rows after this many and says so.
const MAX_ROWS: usize = 1000;
/// A runaway query (a recursive CTE without end) is interrupted after this long.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which simulated upstream to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// A sandbox directory: list_directory, read_file, write_file, delete_file.
    Files,
    /// An in-memory sample database: list_tables, query.
    Sql,
    /// Simulated payments: list_charges, create_charge, refund_charge, delete_customer, transfer_funds.
    Payments,
}

/// A tool failure the model can read: it becomes a result with `isError: true`.
type ToolResult = Result<String, String>;

/// A JSON-RPC error: code and message.
type RpcError = (i64, String);

/// What a tool does to its world: the `readOnlyHint` and `destructiveHint` annotations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    Read,
    /// Adds without overwriting or removing anything.
    Additive,
    Destructive,
}

/// One argument of a tool: name, JSON type, description. Integers are positive.
type Arg = (&'static str, &'static str, &'static str);

/// One session's state: the tools of its flavor (as `tools/list` shows them) and the backend
/// that runs them.
struct Server {
    flavor: Flavor,
    tools: Vec<Value>,
    backend: Backend,
}

enum Backend {
    Files(Files),
    Sql(Sql),
    Payments(Payments),
}

/// The `files` sandbox: `/srv/projects/<rel>` is `root/<rel>`.
struct Files {
    /// Canonical (symlink-free), so that a resolved path is inside iff it starts with it.
    root: PathBuf,
    /// We made `root` ourselves and remove it on drop; a `--root` given to us is left alone.
    temporary: bool,
}

/// Whether a path must already exist, or may be created (with its missing parents).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Existing,
    Create,
}

/// The `sql` sample database, in memory: nothing a query does outlives the process.
struct Sql {
    conn: rusqlite::Connection,
    timeout: Duration,
}

/// The `payments` simulation. Amounts are integer cents; the balance counts every currency at
/// par because it is a simulation, not an accounting system.
struct Payments {
    /// By id: `{id, name, email}`. Customers are only ever deleted.
    customers: BTreeMap<String, Value>,
    /// Oldest first; charge ids are `ch_<index + 1>`.
    charges: Vec<Charge>,
    transfers: u32,
    balance: i64,
}

#[derive(serde::Serialize)]
struct Charge {
    id: String,
    amount: i64,
    currency: String,
    customer: Option<String>,
    /// `succeeded` or `refunded`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refund_reason: Option<String>,
}

/// Serves the flavor on stdin/stdout until stdin closes.
pub fn run(flavor: Flavor, root: Option<PathBuf>) -> Result<()> {
    eprintln!("gatehouse-example-{}: serving MCP on stdio", flavor.name());
    serve(flavor, root, io::stdin().lock(), io::stdout().lock())
}

/// Serves one session: reads newline-delimited JSON-RPC from `input`, writes one line per reply
/// to `output`, and returns when `input` ends or `output` is closed.
pub fn serve<R: BufRead, W: Write>(flavor: Flavor, root: Option<PathBuf>, mut input: R, mut output: W) -> Result<()> {
    let mut server = Server::new(flavor, root)?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).context("cannot read the input")? == 0 {
            return Ok(());
        }
        let Some(reply) = server.handle_line(&line) else { continue };
        let mut bytes = serde_json::to_vec(&reply)?;
        bytes.push(b'\n');
        match output.write_all(&bytes).and_then(|()| output.flush()) {
            Ok(()) => {}
            // The client went away: that ends a stdio session as well as a closed stdin does.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("cannot write the output"),
        }
    }
}

fn error_response(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message.into() } })
}

fn tool(name: &str, effect: Effect, description: &str, args: &[Arg], required: &[&str]) -> Value {
    let properties: Map<String, Value> = args
        .iter()
        .map(|&(arg, ty, text)| {
            let mut schema = json!({ "type": ty, "description": text });
            if ty == "integer" {
                schema["minimum"] = json!(1);
            }
            (arg.to_string(), schema)
        })
        .collect();
    json!({
        "name": name,
        "description": description,
        "inputSchema": { "type": "object", "properties": properties, "required": required, "additionalProperties": false },
        "annotations": { "readOnlyHint": effect == Effect::Read, "destructiveHint": effect == Effect::Destructive },
    })
}

fn str_arg<'a>(args: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    opt_str_arg(args, key)?.ok_or_else(|| format!("missing argument {key}"))
}

fn opt_str_arg<'a>(args: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("argument {key} must be a string")),
    }
}

/// A positive integer: JSON `12.5` or `"1250"` is refused, not rounded or parsed.
fn positive_int_arg(args: &Map<String, Value>, key: &str) -> Result<i64, String> {
    let v = args.get(key).ok_or_else(|| format!("missing argument {key}"))?;
    match v.as_i64() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!("argument {key} must be a positive integer, got {v}")),
    }
}

// === impl Flavor ===

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Files => "files",
            Flavor::Sql => "sql",
            Flavor::Payments => "payments",
        }
    }

    fn tools(self) -> Vec<Value> {
        use Effect::*;
        const FILE: Arg = ("path", "string", "Absolute path of the file, under /srv/projects");
        const CUSTOMER: Arg = ("customer", "string", "Customer id, e.g. cus_001");
        let p = &["path"];
        match self {
            Flavor::Files => vec![
                tool(
                    "list_directory",
                    Read,
                    "List a directory under /srv/projects as JSON: each entry's name, type (file, directory or symlink) and, for files, size in bytes.",
                    &[("path", "string", "Absolute path of the directory, under /srv/projects")],
                    p,
                ),
                tool("read_file", Read, "Read a UTF-8 text file under /srv/projects (at most 1 MiB).", &[FILE], p),
                tool(
                    "write_file",
                    Destructive,
                    "Create or overwrite a text file under /srv/projects, creating missing parent directories.",
                    &[FILE, ("content", "string", "The whole new content of the file")],
                    &["path", "content"],
                ),
                tool(
                    "delete_file",
                    Destructive,
                    "Delete a file under /srv/projects. Directories are refused.",
                    &[FILE],
                    p,
                ),
            ],
            Flavor::Sql => vec![
                tool("list_tables", Read, "List the sample database's tables as JSON, with their columns.", &[], &[]),
                tool(
                    "query",
                    Destructive,
                    "Run one SQL statement (SQLite dialect) on the in-memory sample database. Rows come back as JSON {columns, rows, truncated}; other statements return the number of rows changed.",
                    &[("sql", "string", "One SQL statement, e.g. SELECT * FROM customers")],
                    &["sql"],
                ),
            ],
            Flavor::Payments => vec![
                tool(
                    "list_charges",
                    Read,
                    "List charges as JSON, newest first, optionally only one customer's.",
                    &[CUSTOMER, ("limit", "integer", "At most this many (default and maximum 100)")],
                    &[],
                ),
                tool(
                    "create_charge",
                    Additive,
                    "Charge an amount, optionally to a customer. Returns the charge as JSON.",
                    &[
                        ("amount", "integer", "Amount in cents (the currency's smallest unit)"),
                        ("currency", "string", "Three-letter ISO 4217 code, e.g. usd"),
                        CUSTOMER,
                    ],
                    &["amount", "currency"],
                ),
                tool(
                    "refund_charge",
                    Destructive,
                    "Refund a charge in full. Returns the refunded charge as JSON.",
                    &[("charge", "string", "Charge id, e.g. ch_0001"), ("reason", "string", "Why it is refunded")],
                    &["charge"],
                ),
                tool(
                    "delete_customer",
                    Destructive,
                    "Delete a customer record. Their charges are kept.",
                    &[("id", "string", "Customer id, e.g. cus_001")],
                    &["id"],
                ),
                tool(
                    "transfer_funds",
                    Destructive,
                    "Pay out part of the balance to a destination account. Returns the transfer as JSON.",
                    &[("amount", "integer", "Amount in cents"), ("destination", "string", "Account id, e.g. acct_123")],
                    &["amount", "destination"],
                ),
            ],
        }
    }
}

// === impl Server ===

impl Server {
    fn new(flavor: Flavor, root: Option<PathBuf>) -> Result<Self> {
        let backend = match flavor {
            Flavor::Files => Backend::Files(Files::new(root)?),
            _ if root.is_some() => bail!("--root applies only to the files flavor"),
            Flavor::Sql => Backend::Sql(Sql::new(QUERY_TIMEOUT)?),
            Flavor::Payments => Backend::Payments(Payments::new()),
        };
        Ok(Server { flavor, tools: flavor.tools(), backend })
    }

    /// Answers one input line; None for notifications, responses and blank lines.
    fn handle_line(&mut self, line: &[u8]) -> Option<Value> {
        if line.trim_ascii().is_empty() {
            return None;
        }
        let invalid = |id: Option<&Value>, why: &str| {
            Some(error_response(id.cloned().unwrap_or(Value::Null), INVALID_REQUEST, format!("Invalid Request: {why}")))
        };
        let msg = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(msg)) => msg,
            Ok(_) => return invalid(None, "expected a JSON object"),
            Err(e) => return Some(error_response(Value::Null, PARSE_ERROR, format!("Parse error: {e}"))),
        };
        let id = msg.get("id");
        if id.is_some_and(|id| !id.is_string() && !id.is_number()) {
            return invalid(None, "id must be a string or a number");
        }
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            // A response to a request of ours: we send none, so there is nothing to match it with.
            if msg.contains_key("result") || msg.contains_key("error") {
                return None;
            }
            return invalid(id, "missing method");
        };
        // Notifications (notifications/initialized, notifications/cancelled, ...) never get a
        // reply, and requests are answered in order, so there is nothing left to cancel.
        let id = id?;
        if msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return invalid(Some(id), "jsonrpc must be \"2.0\"");
        }
        let id = id.clone();
        let empty = Map::new();
        let params = match msg.get("params") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return Some(error_response(id, INVALID_PARAMS, "Invalid params: params must be an object")),
        };
        Some(match self.dispatch(method, params) {
            Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
            Err((code, message)) => error_response(id, code, message),
        })
    }

    fn dispatch(&mut self, method: &str, params: &Map<String, Value>) -> Result<Value, RpcError> {
        match method {
            "initialize" => Ok(self.initialize(params)),
            "ping" => Ok(json!({})),
            // Every tool fits in one page: a cursor (which we never hand out) gets them all again.
            "tools/list" => Ok(json!({ "tools": self.tools })),
            "tools/call" => self.call(params),
            _ => Err((METHOD_NOT_FOUND, format!("Method not found: {method}"))),
        }
    }

    fn initialize(&self, params: &Map<String, Value>) -> Value {
        let asked = params.get("protocolVersion").and_then(Value::as_str);
        let version = asked.filter(|v| PROTOCOL_VERSIONS.contains(v)).unwrap_or(LATEST_PROTOCOL_VERSION);
        json!({
            "protocolVersion": version,
            "capabilities": { "tools": { "listChanged": false } },
            "serverInfo": { "name": format!("gatehouse-example-{}", self.flavor.name()), "version": env!("CARGO_PKG_VERSION") },
        })
    }

    fn call(&mut self, params: &Map<String, Value>) -> Result<Value, RpcError> {
        let Some(name) = params.get("name").and_then(Value::as_str) else {
            return Err((INVALID_PARAMS, "Invalid params: name must be a string".into()));
        };
        if !self.tools.iter().any(|t| t["name"] == name) {
            return Err((INVALID_PARAMS, format!("Unknown tool: {name}")));
        }
        let empty = Map::new();
        let args = match params.get("arguments") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(a)) => a,
            Some(_) => return Err((INVALID_PARAMS, "Invalid params: arguments must be an object".into())),
        };
        let outcome = match &mut self.backend {
            Backend::Files(f) => f.call(name, args),
            Backend::Sql(s) => s.call(name, args),
            Backend::Payments(p) => p.call(name, args),
        };
        let (text, is_error) = match outcome {
            Ok(text) => (text, false),
            Err(text) => (text, true),
        };
        Ok(json!({ "content": [{ "type": "text", "text": text }], "isError": is_error }))
    }
}

// === impl Files ===

impl Files {
    fn new(root: Option<PathBuf>) -> Result<Self> {
        let (root, temporary) = match root {
            Some(root) => (root, false),
            None => (Self::sample_root()?, true),
        };
        let canonical = fs::canonicalize(&root).with_context(|| format!("cannot open --root {}", root.display()))?;
        if !canonical.is_dir() {
            bail!("--root {} is not a directory", root.display());
        }
        if temporary {
            eprintln!("gatehouse-example-files: {VIRTUAL_ROOT} is the sample directory {}", canonical.display());
        }
        Ok(Files { root: canonical, temporary })
    }

    /// A fresh directory under the system temp dir with a small sample project in it.
    fn sample_root() -> Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        const SAMPLES: &[(&str, &str)] = &[
            ("app/README.md", "# app\n\nA sample project served by the gatehouse example upstream.\n"),
            ("app/Cargo.toml", "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2024\"\n"),
            ("app/src/main.rs", "fn main() {\n    println!(\"hello from the sandbox\");\n}\n"),
        ];
        for _ in 0..16 {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("gatehouse-example-files-{}-{n}-{nanos}", std::process::id()));
            // create_dir, not create_dir_all: it fails on anything already there, a planted symlink too.
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
            }
            for (rel, content) in SAMPLES {
                let path = dir.join(rel);
                fs::create_dir_all(path.parent().expect("sample paths have a parent"))?;
                fs::write(&path, content).with_context(|| format!("cannot write {}", path.display()))?;
            }
            return Ok(dir);
        }
        bail!("cannot create a fresh directory under {}", std::env::temp_dir().display())
    }

    fn call(&mut self, tool: &str, args: &Map<String, Value>) -> ToolResult {
        let path = str_arg(args, "path")?;
        match tool {
            "list_directory" => self.list_directory(path),
            "read_file" => self.read_file(path),
            "write_file" => self.write_file(path, str_arg(args, "content")?),
            "delete_file" => self.delete_file(path),
            _ => Err(format!("unknown tool {tool}")),
        }
    }

    /// Maps a client path onto the sandbox, or says why not. Returns the real path (canonical
    /// when it exists) and the normalised client path for messages. The real root never appears
    /// in a message.
    ///
    /// Every existing component is canonicalised and checked to be under the root before the
    /// next is looked at, so a symlink out of the sandbox is refused, and `Create` only ever makes
    /// directories inside it. A concurrent local attacker swapping components between the check
    /// and the use is out of scope for an example.
    fn resolve(&self, path: &str, access: Access) -> Result<(PathBuf, String), String> {
        let outside = || format!("refused: {path} is not under {VIRTUAL_ROOT}");
        if !path.starts_with('/') || path.contains('\0') {
            return Err(outside());
        }
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        if parts.contains(&"..") {
            return Err(format!("refused: {path} contains '..'"));
        }
        let ["srv", "projects", rel @ ..] = parts.as_slice() else { return Err(outside()) };
        let shown = [VIRTUAL_ROOT].into_iter().chain(rel.iter().copied()).collect::<Vec<_>>().join("/");
        let mut real = self.root.clone();
        for (i, part) in rel.iter().enumerate() {
            let next = real.join(part);
            match fs::symlink_metadata(&next) {
                Ok(_) => {
                    let canonical = fs::canonicalize(&next)
                        .map_err(|_| format!("refused: {shown} goes through a broken symbolic link"))?;
                    if !canonical.starts_with(&self.root) {
                        return Err(format!("refused: {shown} leaves {VIRTUAL_ROOT} through a symbolic link"));
                    }
                    real = canonical;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if access == Access::Existing {
                        return Err(format!("{shown} does not exist"));
                    }
                    if i + 1 < rel.len() {
                        fs::create_dir(&next).map_err(|e| format!("cannot create a directory for {shown}: {e}"))?;
                    }
                    real = next;
                }
                Err(e) => return Err(format!("cannot open {shown}: {e}")),
            }
        }
        Ok((real, shown))
    }

    fn list_directory(&self, path: &str) -> ToolResult {
        let (real, shown) = self.resolve(path, Access::Existing)?;
        let read = fs::read_dir(&real).map_err(|e| format!("cannot list {shown}: {e}"))?;
        let mut entries = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| format!("cannot list {shown}: {e}"))?;
            // DirEntry::metadata does not follow links: a link is listed as a link, not as what
            // it points to (which may be outside the sandbox).
            let meta = entry.metadata().map_err(|e| format!("cannot list {shown}: {e}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            entries.push(if meta.is_symlink() {
                json!({ "name": name, "type": "symlink" })
            } else if meta.is_dir() {
                json!({ "name": name, "type": "directory" })
            } else {
                json!({ "name": name, "type": "file", "size": meta.len() })
            });
        }
        entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Ok(json!({ "path": shown, "entries": entries }).to_string())
    }

    fn read_file(&self, path: &str) -> ToolResult {
        let (real, shown) = self.resolve(path, Access::Existing)?;
        if real.is_dir() {
            return Err(format!("{shown} is a directory"));
        }
        let file = fs::File::open(&real).map_err(|e| format!("cannot read {shown}: {e}"))?;
        // Read one byte past the cap rather than trust the size: the file may grow meanwhile.
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {shown}: {e}"))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("{shown} is larger than the {MAX_FILE_BYTES}-byte read limit"));
        }
        String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text"))
    }

    fn write_file(&self, path: &str, content: &str) -> ToolResult {
        if content.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("content is larger than the {MAX_FILE_BYTES}-byte write limit"));
        }
        let (real, shown) = self.resolve(path, Access::Create)?;
        if real.is_dir() {
            return Err(format!("{shown} is a directory"));
        }
        fs::write(&real, content).map_err(|e| format!("cannot write {shown}: {e}"))?;
        Ok(format!("wrote {} bytes to {shown}", content.len()))
    }

    fn delete_file(&self, path: &str) -> ToolResult {
        let (real, shown) = self.resolve(path, Access::Existing)?;
        if real.is_dir() {
            return Err(format!("{shown} is a directory; only files can be deleted"));
        }
        fs::remove_file(&real).map_err(|e| format!("cannot delete {shown}: {e}"))?;
        Ok(format!("deleted {shown}"))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if self.temporary {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

// === impl Sql ===

impl Sql {
    fn new(timeout: Duration) -> Result<Self> {
        let conn = rusqlite::Connection::open_in_memory().context("cannot open the sample database")?;
        // ATTACH could create or write files on the host; the sample stays in memory. Defensive
        // mode refuses writes that corrupt the schema (writable_schema and the like).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE, false)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE, false)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, country TEXT NOT NULL);
             CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                                  amount_cents INTEGER NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL);
             INSERT INTO customers VALUES (1, 'Ada Lovelace', 'ada@example.com', 'GB'),
                                          (2, 'Grace Hopper', 'grace@example.com', 'US'),
                                          (3, 'Alan Turing', 'alan@example.com', 'GB');
             INSERT INTO orders VALUES (1, 1, 2500, 'paid', '2026-01-05'), (2, 1, 12000, 'paid', '2026-01-19'),
                                       (3, 2, 4999, 'refunded', '2026-02-02'), (4, 3, 31000, 'pending', '2026-02-14');",
        )
        .context("cannot load the sample database")?;
        Ok(Sql { conn, timeout })
    }

    fn call(&mut self, tool: &str, args: &Map<String, Value>) -> ToolResult {
        match tool {
            "list_tables" => self.list_tables().map_err(|e| e.to_string()),
            "query" => self.query(str_arg(args, "sql")?),
            _ => Err(format!("unknown tool {tool}")),
        }
    }

    /// `{"tables": [{name, columns: [{name, type}]}]}`, built by SQLite's own JSON functions.
    fn list_tables(&self) -> rusqlite::Result<String> {
        // json(): a subquery's result loses its JSON subtype and would be embedded as a string.
        const SQL: &str = "SELECT json_object('tables', json_group_array(json(t))) FROM (
            SELECT json_object('name', m.name, 'columns', json((SELECT json_group_array(json_object('name', c.name, 'type', c.type))
                                                               FROM pragma_table_info(m.name) c))) AS t
            FROM sqlite_schema m WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY m.name)";
        self.conn.query_row(SQL, [], |r| r.get(0))
    }

    /// Runs one statement under a watchdog that interrupts it after `timeout`.
    fn query(&self, sql: &str) -> ToolResult {
        // ATTACH reads host files and VACUUM INTO writes them; both can only start a statement.
        let first = first_keyword(sql).to_ascii_uppercase();
        if first == "ATTACH" || first == "VACUUM" {
            return Err(format!("{first} is disabled: the sample database lives in memory only"));
        }
        let handle = self.conn.get_interrupt_handle();
        let (done, wait) = mpsc::channel::<()>();
        let timeout = self.timeout;
        let watchdog = std::thread::spawn(move || {
            // Interrupting after the statement finished is a no-op, so the race is harmless.
            if wait.recv_timeout(timeout) == Err(RecvTimeoutError::Timeout) {
                handle.interrupt();
            }
        });
        let outcome = self.run_statement(sql);
        drop(done);
        let _ = watchdog.join();
        outcome.map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted => {
                format!("query interrupted after {}ms", timeout.as_millis())
            }
            rusqlite::Error::MultipleStatement => "only one statement per query".to_string(),
            e => e.to_string(),
        })
    }

    fn run_statement(&self, sql: &str) -> rusqlite::Result<String> {
        let mut stmt = self.conn.prepare(sql)?;
        let columns: Vec<String> = stmt.column_names().map(String::from).collect();
        if columns.is_empty() {
            let changes = stmt.execute([])?;
            return Ok(json!({ "changes": changes }).to_string());
        }
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        let mut truncated = false;
        while let Some(row) = rows.next()? {
            if out.len() == MAX_ROWS {
                truncated = true;
                break;
            }
            let cells = (0..columns.len()).map(|i| row.get_ref(i).map(cell)).collect::<rusqlite::Result<Vec<_>>>()?;
            out.push(cells);
        }
        Ok(json!({ "columns": columns, "rows": out, "truncated": truncated }).to_string())
    }
}

fn cell(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        // As an SQL blob literal, so the model can paste it back into a query.
        ValueRef::Blob(b) => json!(format!("X'{}'", hex::encode_upper(b))),
    }
}

/// The first word of a statement, after whitespace, comments and empty statements.
fn first_keyword(sql: &str) -> &str {
    let mut s = sql;
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let end = s.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(s.len());
    &s[..end]
}

// === impl Charge ===

impl Charge {
    fn new(number: usize, amount: i64, currency: &str, customer: Option<&str>) -> Self {
        let (id, currency, customer) = (format!("ch_{number:04}"), currency.to_string(), customer.map(String::from));
        Charge { id, amount, currency, customer, status: "succeeded", refund_reason: None }
    }
}

// === impl Payments ===

impl Payments {
    fn new() -> Self {
        let customers =
            [("cus_001", "Ada Lovelace", "ada@example.com"), ("cus_002", "Grace Hopper", "grace@example.com")]
                .map(|(id, name, email)| (id.to_string(), json!({ "id": id, "name": name, "email": email })));
        let charges = vec![Charge::new(1, 2500, "usd", Some("cus_001")), Charge::new(2, 12000, "eur", Some("cus_002"))];
        Payments { customers: customers.into(), charges, transfers: 0, balance: 1_000_000 }
    }

    fn call(&mut self, tool: &str, args: &Map<String, Value>) -> ToolResult {
        match tool {
            "list_charges" => self.list_charges(args),
            "create_charge" => self.create_charge(args),
            "refund_charge" => self.refund_charge(args),
            "delete_customer" => self.delete_customer(args),
            "transfer_funds" => self.transfer_funds(args),
            _ => Err(format!("unknown tool {tool}")),
        }
    }

    fn list_charges(&self, args: &Map<String, Value>) -> ToolResult {
        let customer = opt_str_arg(args, "customer")?;
        let limit = match args.get("limit") {
            None | Some(Value::Null) => 100,
            Some(_) => positive_int_arg(args, "limit")?.min(100) as usize,
        };
        let charges: Vec<&Charge> = self
            .charges
            .iter()
            .rev()
            .filter(|c| customer.is_none() || c.customer.as_deref() == customer)
            .take(limit)
            .collect();
        Ok(json!({ "charges": charges }).to_string())
    }

    fn create_charge(&mut self, args: &Map<String, Value>) -> ToolResult {
        let amount = positive_int_arg(args, "amount")?;
        let currency = str_arg(args, "currency")?;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("currency must be a three-letter ISO 4217 code such as usd, got {currency:?}"));
        }
        let customer = opt_str_arg(args, "customer")?;
        if let Some(c) = customer
            && !self.customers.contains_key(c)
        {
            return Err(format!("no such customer: {c}"));
        }
        self.balance = self.balance.checked_add(amount).ok_or("amount is too large")?;
        let charge = Charge::new(self.charges.len() + 1, amount, &currency.to_ascii_lowercase(), customer);
        let text = serde_json::to_string(&charge).map_err(|e| e.to_string())?;
        self.charges.push(charge);
        Ok(text)
    }

    fn refund_charge(&mut self, args: &Map<String, Value>) -> ToolResult {
        let id = str_arg(args, "charge")?;
        let reason = opt_str_arg(args, "reason")?;
        let charge = self.charges.iter_mut().find(|c| c.id == id).ok_or_else(|| format!("no such charge: {id}"))?;
        if charge.status == "refunded" {
            return Err(format!("charge {id} is already refunded"));
        }
        charge.status = "refunded";
        charge.refund_reason = reason.map(String::from);
        self.balance -= charge.amount;
        serde_json::to_string(&*charge).map_err(|e| e.to_string())
    }

    fn delete_customer(&mut self, args: &Map<String, Value>) -> ToolResult {
        let id = str_arg(args, "id")?;
        let customer = self.customers.remove(id).ok_or_else(|| format!("no such customer: {id}"))?;
        Ok(json!({ "deleted": customer }).to_string())
    }

    fn transfer_funds(&mut self, args: &Map<String, Value>) -> ToolResult {
        let amount = positive_int_arg(args, "amount")?;
        let destination = str_arg(args, "destination")?;
        if destination.trim().is_empty() {
            return Err("destination must not be empty".into());
        }
        if amount > self.balance {
            return Err(format!("insufficient balance: {} cents available", self.balance));
        }
        self.balance -= amount;
        self.transfers += 1;
        Ok(json!({
            "id": format!("tr_{:04}", self.transfers),
            "amount": amount,
            "destination": destination,
            "status": "paid",
            "balance_remaining": self.balance,
        })
        .to_string())
    }
}

#[cfg(test)]
mod tests;
