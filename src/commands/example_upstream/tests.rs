use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

/// Runs one session over `input` and returns every reply, checking each is one JSON line.
fn session_raw(flavor: Flavor, root: Option<PathBuf>, input: &str) -> Vec<Value> {
    let mut out = Vec::new();
    serve(flavor, root, Cursor::new(input.as_bytes()), &mut out).expect("serve");
    let out = String::from_utf8(out).expect("utf-8 output");
    assert!(out.is_empty() || out.ends_with('\n'), "every reply ends with a newline: {out:?}");
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("reply {l:?} is not JSON: {e}"))).collect()
}

fn session(flavor: Flavor, root: Option<PathBuf>, messages: &[Value]) -> Vec<Value> {
    let input: String = messages.iter().map(|m| format!("{m}\n")).collect();
    session_raw(flavor, root, &input)
}

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

fn call_msg(id: u64, tool: &str, args: Value) -> Value {
    request(id, "tools/call", json!({ "name": tool, "arguments": args }))
}

/// The `(text, isError)` of a tools/call reply; JSON text is parsed, so that key order does not
/// matter when comparing.
fn outcome(reply: &Value) -> (Value, bool) {
    let result = &reply["result"];
    assert_eq!(result["content"].as_array().map(Vec::len), Some(1), "one content block: {reply}");
    assert_eq!(result["content"][0]["type"], "text", "{reply}");
    let is_error = result["isError"].as_bool().unwrap_or_else(|| panic!("isError is a boolean: {reply}"));
    let text = result["content"][0]["text"].as_str().expect("text");
    let parsed = if text.starts_with('{') { serde_json::from_str(text).ok() } else { None };
    (parsed.unwrap_or_else(|| json!(text)), is_error)
}

/// Runs the calls in one session, in order, and returns their outcomes.
fn calls(flavor: Flavor, root: Option<PathBuf>, calls: &[(&str, Value)]) -> Vec<(Value, bool)> {
    let msgs: Vec<Value> =
        calls.iter().enumerate().map(|(i, (tool, args))| call_msg(i as u64 + 1, tool, args.clone())).collect();
    let replies = session(flavor, root, &msgs);
    assert_eq!(replies.len(), calls.len());
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["id"], json!(i + 1), "replies come in order");
    }
    replies.iter().map(outcome).collect()
}

fn ok(text: &str) -> (Value, bool) {
    (json!(text), false)
}

fn json_ok(v: Value) -> (Value, bool) {
    (v, false)
}

fn err(text: &str) -> (Value, bool) {
    (json!(text), true)
}

/// A sandbox with the sample files, owned by the test (so it can look at the disk).
fn sandbox() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("app/src")).unwrap();
    fs::write(dir.path().join("app/README.md"), "# app\n").unwrap();
    fs::write(dir.path().join("app/src/main.rs"), "fn main() {}\n").unwrap();
    dir
}

fn root_of(dir: &tempfile::TempDir) -> Option<PathBuf> {
    Some(dir.path().to_path_buf())
}

#[test]
fn initialize_answers_the_asked_version() {
    for v in PROTOCOL_VERSIONS {
        let replies = session(Flavor::Files, None, &[request(1, "initialize", json!({ "protocolVersion": v }))]);
        assert_eq!(
            replies,
            [json!({ "jsonrpc": "2.0", "id": 1, "result": {
                "protocolVersion": v,
                "capabilities": { "tools": { "listChanged": false } },
                "serverInfo": { "name": "gatehouse-example-files", "version": env!("CARGO_PKG_VERSION") },
            }})]
        );
    }
}

#[test]
fn initialize_offers_the_latest_version_otherwise() {
    let msgs = [
        request(1, "initialize", json!({ "protocolVersion": "2026-07-28", "capabilities": {} })),
        request(2, "initialize", json!({})),
    ];
    let replies = session(Flavor::Sql, None, &msgs);
    for r in &replies {
        assert_eq!(r["result"]["protocolVersion"], "2025-11-25");
        assert_eq!(r["result"]["serverInfo"]["name"], "gatehouse-example-sql");
    }
    let replies = session(Flavor::Payments, None, &[request(7, "initialize", json!({}))]);
    assert_eq!(replies[0]["result"]["serverInfo"]["name"], "gatehouse-example-payments");
}

#[test]
fn notifications_get_no_reply_and_ping_gets_an_empty_result() {
    let msgs = [
        request(1, "initialize", json!({ "protocolVersion": "2025-06-18" })),
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": 1 } }),
        json!({ "jsonrpc": "2.0", "method": "tools/list" }),
        json!({ "jsonrpc": "2.0", "id": "p", "result": {} }),
        json!({ "jsonrpc": "2.0", "id": "p", "method": "ping" }),
    ];
    let replies = session(Flavor::Files, None, &msgs);
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0]["id"], 1);
    assert_eq!(replies[1], json!({ "jsonrpc": "2.0", "id": "p", "result": {} }));
}

#[test]
fn tools_list_describes_every_tool() {
    let cases: [(Flavor, &[&str]); 3] = [
        (Flavor::Files, &["list_directory", "read_file", "write_file", "delete_file"]),
        (Flavor::Sql, &["list_tables", "query"]),
        (Flavor::Payments, &["list_charges", "create_charge", "refund_charge", "delete_customer", "transfer_funds"]),
    ];
    for (flavor, names) in cases {
        let msgs = [request(1, "tools/list", json!({})), request(2, "tools/list", json!({ "cursor": "anything" }))];
        let replies = session(flavor, None, &msgs);
        assert_eq!(replies[0]["result"], replies[1]["result"], "a cursor gets every tool again");
        let result = replies[0]["result"].as_object().unwrap();
        assert!(!result.contains_key("nextCursor"));
        let tools = result["tools"].as_array().unwrap();
        let got: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(got, names);
        for t in tools {
            assert!(!t["description"].as_str().unwrap().is_empty(), "{t}");
            let schema = &t["inputSchema"];
            assert_eq!(schema["type"], "object", "{t}");
            let props = schema["properties"].as_object().unwrap();
            for r in schema["required"].as_array().unwrap() {
                assert!(props.contains_key(r.as_str().unwrap()), "required {r} is a property: {t}");
            }
            assert!(t["annotations"]["readOnlyHint"].is_boolean(), "{t}");
            assert!(t["annotations"]["destructiveHint"].is_boolean(), "{t}");
        }
    }
    let replies = session(Flavor::Files, None, &[request(1, "tools/list", json!({}))]);
    let annotations: Vec<&Value> =
        replies[0]["result"]["tools"].as_array().unwrap().iter().map(|t| &t["annotations"]).collect();
    assert_eq!(annotations[0], &json!({ "readOnlyHint": true, "destructiveHint": false }));
    assert_eq!(annotations[3], &json!({ "readOnlyHint": false, "destructiveHint": true }));
}

#[test]
fn unknown_tool_is_a_protocol_error() {
    for flavor in [Flavor::Files, Flavor::Sql, Flavor::Payments] {
        let replies = session(flavor, None, &[call_msg(1, "nope", json!({}))]);
        assert_eq!(
            replies,
            [json!({ "jsonrpc": "2.0", "id": 1, "error": { "code": -32602, "message": "Unknown tool: nope" } })]
        );
    }
    // Another flavor's tool is unknown here too.
    let replies = session(Flavor::Sql, None, &[call_msg(1, "read_file", json!({ "path": "/srv/projects" }))]);
    assert_eq!(replies[0]["error"]["message"], "Unknown tool: read_file");
}

#[test]
fn malformed_lines_and_bad_requests() {
    let input = "{not json\n\
                 \n\
                 [1, 2]\n\
                 {\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"ping\"}\n\
                 {\"jsonrpc\":\"2.0\",\"id\":3}\n\
                 {\"jsonrpc\":\"1.0\",\"id\":4,\"method\":\"ping\"}\n\
                 {\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"resources/list\"}\n\
                 {\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"tools/call\",\"params\":[]}\n\
                 {\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"query\",\"arguments\":\"x\"}}\n\
                 {\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"ping\"}\r\n\
                 {\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"}";
    let replies = session_raw(Flavor::Sql, None, input);
    let codes: Vec<(Value, i64)> =
        replies.iter().map(|r| (r["id"].clone(), r["error"]["code"].as_i64().unwrap_or(0))).collect();
    assert_eq!(
        codes,
        [
            (Value::Null, PARSE_ERROR),
            (Value::Null, INVALID_REQUEST),
            (Value::Null, INVALID_REQUEST),
            (json!(3), INVALID_REQUEST),
            (json!(4), INVALID_REQUEST),
            (json!(5), METHOD_NOT_FOUND),
            (json!(6), INVALID_PARAMS),
            (json!(7), INVALID_PARAMS),
            (json!(8), 0),
            (json!(9), 0),
        ]
    );
    assert!(replies[0]["error"]["message"].as_str().unwrap().starts_with("Parse error"));
    assert_eq!(replies[0]["jsonrpc"], "2.0");
    assert_eq!(replies[5]["error"]["message"], "Method not found: resources/list");
}

#[test]
fn invalid_utf8_is_a_parse_error() {
    let mut out = Vec::new();
    let input: &[u8] = b"{\"id\":1,\"method\":\"\xff\"}\n";
    serve(Flavor::Payments, None, input, &mut out).unwrap();
    let reply: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(reply["error"]["code"], PARSE_ERROR);
}

#[test]
fn a_closed_output_ends_the_session_cleanly() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let input = format!("{}\n", request(1, "ping", json!({})));
    serve(Flavor::Sql, None, Cursor::new(input), Closed).expect("a broken pipe is a clean end");
}

#[test]
fn root_applies_only_to_files() {
    let e = serve(Flavor::Sql, Some(PathBuf::from("/tmp")), Cursor::new(""), Vec::new()).unwrap_err();
    assert_eq!(e.to_string(), "--root applies only to the files flavor");
    let e =
        serve(Flavor::Files, Some(PathBuf::from("/nonexistent/gatehouse")), Cursor::new(""), Vec::new()).unwrap_err();
    assert!(e.to_string().starts_with("cannot open --root"), "{e}");
}

#[test]
fn files_default_root_has_samples_and_is_removed_afterwards() {
    let files = Files::new(None).unwrap();
    let root = files.root.clone();
    assert!(root.join("app/src/main.rs").is_file());
    drop(files);
    assert!(!root.exists(), "the temporary sandbox is removed");

    let got = calls(
        Flavor::Files,
        None,
        &[
            ("list_directory", json!({ "path": "/srv/projects" })),
            ("read_file", json!({ "path": "/srv/projects/app/README.md" })),
        ],
    );
    assert_eq!(
        got[0],
        json_ok(json!({ "path": "/srv/projects", "entries": [{ "name": "app", "type": "directory" }] }))
    );
    assert_eq!(got[1], ok("# app\n\nA sample project served by the gatehouse example upstream.\n"));
}

#[test]
fn files_list_read_write_delete() {
    let dir = sandbox();
    let got = calls(
        Flavor::Files,
        root_of(&dir),
        &[
            ("list_directory", json!({ "path": "/srv/projects/app/" })),
            ("read_file", json!({ "path": "/srv/projects/./app//src/main.rs" })),
            ("write_file", json!({ "path": "/srv/projects/app/docs/new/NOTES.md", "content": "hello" })),
            ("read_file", json!({ "path": "/srv/projects/app/docs/new/NOTES.md" })),
            ("write_file", json!({ "path": "/srv/projects/app/README.md", "content": "replaced" })),
            ("delete_file", json!({ "path": "/srv/projects/app/docs/new/NOTES.md" })),
            ("read_file", json!({ "path": "/srv/projects/app/docs/new/NOTES.md" })),
            ("delete_file", json!({ "path": "/srv/projects/app/src" })),
            ("read_file", json!({ "path": "/srv/projects/app" })),
            ("write_file", json!({ "path": "/srv/projects", "content": "x" })),
            ("write_file", json!({ "path": "/srv/projects/app/src", "content": "x" })),
            ("read_file", json!({})),
            ("write_file", json!({ "path": "/srv/projects/app/x" })),
        ],
    );
    let expected = [
        json_ok(json!({ "path": "/srv/projects/app", "entries": [
            { "name": "README.md", "type": "file", "size": 6 },
            { "name": "src", "type": "directory" },
        ]})),
        ok("fn main() {}\n"),
        ok("wrote 5 bytes to /srv/projects/app/docs/new/NOTES.md"),
        ok("hello"),
        ok("wrote 8 bytes to /srv/projects/app/README.md"),
        ok("deleted /srv/projects/app/docs/new/NOTES.md"),
        err("/srv/projects/app/docs/new/NOTES.md does not exist"),
        err("/srv/projects/app/src is a directory; only files can be deleted"),
        err("/srv/projects/app is a directory"),
        err("/srv/projects is a directory"),
        err("/srv/projects/app/src is a directory"),
        err("missing argument path"),
        err("missing argument content"),
    ];
    assert_eq!(got, expected);
    assert_eq!(fs::read_to_string(dir.path().join("app/README.md")).unwrap(), "replaced");
    assert!(dir.path().join("app/docs/new").is_dir());
    assert!(!dir.path().join("app/docs/new/NOTES.md").exists());
}

#[test]
fn files_refuses_paths_outside_the_sandbox() {
    let dir = sandbox();
    let cases = [
        ("/srv/projects/../../etc/passwd", "refused: /srv/projects/../../etc/passwd contains '..'"),
        ("/srv/projects/app/../../../etc/passwd", "refused: /srv/projects/app/../../../etc/passwd contains '..'"),
        ("/srv/projects/app/..", "refused: /srv/projects/app/.. contains '..'"),
        ("/etc/passwd", "refused: /etc/passwd is not under /srv/projects"),
        ("/srv/projects-evil", "refused: /srv/projects-evil is not under /srv/projects"),
        ("/srv", "refused: /srv is not under /srv/projects"),
        ("srv/projects/app/README.md", "refused: srv/projects/app/README.md is not under /srv/projects"),
        ("", "refused:  is not under /srv/projects"),
    ];
    for tool in ["list_directory", "read_file", "write_file", "delete_file"] {
        let list: Vec<(&str, Value)> =
            cases.iter().map(|(p, _)| (tool, json!({ "path": p, "content": "pwned" }))).collect();
        let got = calls(Flavor::Files, root_of(&dir), &list);
        let expected: Vec<(Value, bool)> = cases.iter().map(|(_, e)| err(e)).collect();
        assert_eq!(got, expected, "{tool}");
    }
}

#[cfg(unix)]
#[test]
fn files_refuses_symlinks_out_of_the_sandbox() {
    use std::os::unix::fs::symlink;
    let dir = sandbox();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    symlink(outside.path(), dir.path().join("escape")).unwrap();
    symlink(outside.path().join("secret.txt"), dir.path().join("app/secret-link")).unwrap();
    symlink("README.md", dir.path().join("app/readme-link")).unwrap();
    symlink("/nonexistent/gatehouse", dir.path().join("dangling")).unwrap();
    let through = "refused: /srv/projects/escape/secret.txt leaves /srv/projects through a symbolic link";
    let got = calls(
        Flavor::Files,
        root_of(&dir),
        &[
            ("read_file", json!({ "path": "/srv/projects/escape/secret.txt" })),
            ("list_directory", json!({ "path": "/srv/projects/escape" })),
            ("read_file", json!({ "path": "/srv/projects/app/secret-link" })),
            ("write_file", json!({ "path": "/srv/projects/escape/secret.txt", "content": "pwned" })),
            ("write_file", json!({ "path": "/srv/projects/escape/new/file.txt", "content": "pwned" })),
            ("delete_file", json!({ "path": "/srv/projects/escape/secret.txt" })),
            ("read_file", json!({ "path": "/srv/projects/dangling" })),
            ("read_file", json!({ "path": "/srv/projects/app/readme-link" })),
        ],
    );
    assert_eq!(
        got,
        [
            err(through),
            err("refused: /srv/projects/escape leaves /srv/projects through a symbolic link"),
            err("refused: /srv/projects/app/secret-link leaves /srv/projects through a symbolic link"),
            err(through),
            err("refused: /srv/projects/escape/new/file.txt leaves /srv/projects through a symbolic link"),
            err(through),
            err("refused: /srv/projects/dangling goes through a broken symbolic link"),
            ok("# app\n"),
        ]
    );
    assert_eq!(fs::read_to_string(outside.path().join("secret.txt")).unwrap(), "secret");
    assert!(!outside.path().join("new").exists());

    // A link is listed as a link, without following it.
    let got = calls(Flavor::Files, root_of(&dir), &[("list_directory", json!({ "path": "/srv/projects" }))]);
    assert_eq!(got[0].0["entries"][2], json!({ "name": "escape", "type": "symlink" }));
}

#[test]
fn files_caps_reads_and_writes_at_one_mib() {
    let dir = sandbox();
    let limit = MAX_FILE_BYTES as usize;
    fs::write(dir.path().join("big.txt"), "x".repeat(limit + 1)).unwrap();
    fs::write(dir.path().join("exact.txt"), "y".repeat(limit)).unwrap();
    fs::write(dir.path().join("binary.bin"), [0xff, 0xfe]).unwrap();
    let got = calls(
        Flavor::Files,
        root_of(&dir),
        &[
            ("read_file", json!({ "path": "/srv/projects/big.txt" })),
            ("read_file", json!({ "path": "/srv/projects/exact.txt" })),
            ("read_file", json!({ "path": "/srv/projects/binary.bin" })),
            ("write_file", json!({ "path": "/srv/projects/huge.txt", "content": "z".repeat(limit + 1) })),
        ],
    );
    assert_eq!(got[0], err("/srv/projects/big.txt is larger than the 1048576-byte read limit"));
    assert_eq!(got[1].0.as_str().map(str::len), Some(limit));
    assert!(!got[1].1);
    assert_eq!(got[2], err("/srv/projects/binary.bin is not UTF-8 text"));
    assert_eq!(got[3], err("content is larger than the 1048576-byte write limit"));
    assert!(!Path::new(&dir.path().join("huge.txt")).exists());
}

#[test]
fn sql_list_tables_and_query() {
    let got = calls(
        Flavor::Sql,
        None,
        &[
            ("list_tables", json!({})),
            ("query", json!({ "sql": "SELECT id, name, country FROM customers WHERE country = 'GB' ORDER BY id" })),
            (
                "query",
                json!({ "sql": "SELECT c.name, sum(o.amount_cents) AS total, NULL AS n, 1.5 AS r, X'00ff' AS b FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.status = 'paid' GROUP BY c.name" }),
            ),
            (
                "query",
                json!({ "sql": "INSERT INTO customers VALUES (4, 'Edsger Dijkstra', 'edsger@example.com', 'NL')" }),
            ),
            ("query", json!({ "sql": "SELECT count(*) FROM customers;" })),
            ("query", json!({ "sql": "SELECT * FROM nope" })),
            ("query", json!({ "sql": "SELECT 1; SELECT 2" })),
            (
                "query",
                json!({ "sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c" }),
            ),
            ("query", json!({})),
        ],
    );
    let tables = json!({ "tables": [
        { "name": "customers", "columns": [
            { "name": "id", "type": "INTEGER" }, { "name": "name", "type": "TEXT" },
            { "name": "email", "type": "TEXT" }, { "name": "country", "type": "TEXT" },
        ]},
        { "name": "orders", "columns": [
            { "name": "id", "type": "INTEGER" }, { "name": "customer_id", "type": "INTEGER" },
            { "name": "amount_cents", "type": "INTEGER" }, { "name": "status", "type": "TEXT" },
            { "name": "created_at", "type": "TEXT" },
        ]},
    ]});
    assert_eq!(got[0], json_ok(tables));
    assert_eq!(
        got[1],
        json_ok(
            json!({ "columns": ["id", "name", "country"], "rows": [[1, "Ada Lovelace", "GB"], [3, "Alan Turing", "GB"]], "truncated": false })
        )
    );
    assert_eq!(
        got[2],
        json_ok(
            json!({ "columns": ["name", "total", "n", "r", "b"], "rows": [["Ada Lovelace", 14500, null, 1.5, "X'00FF'"]], "truncated": false })
        )
    );
    assert_eq!(got[3], json_ok(json!({ "changes": 1 })));
    assert_eq!(got[4], json_ok(json!({ "columns": ["count(*)"], "rows": [[4]], "truncated": false })));
    assert!(got[5].1 && got[5].0.as_str().unwrap().contains("no such table: nope"), "{:?}", got[5]);
    assert_eq!(got[6], err("only one statement per query"));
    let endless = &got[7].0;
    assert_eq!(endless["rows"].as_array().unwrap().len(), MAX_ROWS);
    assert_eq!(endless["truncated"], true);
    assert_eq!(got[8], err("missing argument sql"));
}

#[test]
fn sql_refuses_attach_and_vacuum_into() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.db");
    let got = calls(
        Flavor::Sql,
        None,
        &[
            ("query", json!({ "sql": format!("ATTACH '{}' AS x", file.display()) })),
            ("query", json!({ "sql": format!(" -- hidden\n /* more */ ;vacuum INTO '{}'", file.display()) })),
        ],
    );
    assert_eq!(got[0], err("ATTACH is disabled: the sample database lives in memory only"));
    assert_eq!(got[1], err("VACUUM is disabled: the sample database lives in memory only"));
    assert!(!file.exists());
    assert_eq!(first_keyword("/* a */ -- b\n  select 1"), "select");
    assert_eq!(first_keyword("-- only a comment"), "");
}

#[test]
fn sql_interrupts_a_runaway_query() {
    let mut sql = Sql::new(Duration::from_millis(100)).unwrap();
    let args =
        json!({ "sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c" });
    let got = sql.call("query", args.as_object().unwrap());
    assert_eq!(got, Err("query interrupted after 100ms".to_string()));
    // The connection is still usable afterwards.
    let got = sql.call("query", json!({ "sql": "SELECT 1" }).as_object().unwrap());
    let got: Value = serde_json::from_str(&got.unwrap()).unwrap();
    assert_eq!(got, json!({ "columns": ["1"], "rows": [[1]], "truncated": false }));
}

#[test]
fn payments_simulation() {
    let got = calls(
        Flavor::Payments,
        None,
        &[
            ("list_charges", json!({})),
            ("create_charge", json!({ "amount": 2500, "currency": "USD", "customer": "cus_001" })),
            ("create_charge", json!({ "amount": 99, "currency": "eur" })),
            ("list_charges", json!({ "customer": "cus_001", "limit": 1 })),
            ("refund_charge", json!({ "charge": "ch_0003", "reason": "duplicate" })),
            ("refund_charge", json!({ "charge": "ch_0003" })),
            ("refund_charge", json!({ "charge": "ch_9999" })),
            ("delete_customer", json!({ "id": "cus_002" })),
            ("delete_customer", json!({ "id": "cus_002" })),
            ("transfer_funds", json!({ "amount": 1000, "destination": "acct_123" })),
            ("transfer_funds", json!({ "amount": 100_000_000, "destination": "acct_123" })),
            ("create_charge", json!({ "amount": 12.5, "currency": "usd" })),
            ("create_charge", json!({ "amount": "2500", "currency": "usd" })),
            ("create_charge", json!({ "amount": -5, "currency": "usd" })),
            ("create_charge", json!({ "amount": 5, "currency": "dollars" })),
            ("create_charge", json!({ "amount": 5, "currency": "usd", "customer": "cus_002" })),
            ("transfer_funds", json!({ "amount": 5, "destination": " " })),
        ],
    );
    let c1 =
        json!({ "id": "ch_0001", "amount": 2500, "currency": "usd", "customer": "cus_001", "status": "succeeded" });
    let c2 =
        json!({ "id": "ch_0002", "amount": 12000, "currency": "eur", "customer": "cus_002", "status": "succeeded" });
    let c3 =
        json!({ "id": "ch_0003", "amount": 2500, "currency": "usd", "customer": "cus_001", "status": "succeeded" });
    let c4 = json!({ "id": "ch_0004", "amount": 99, "currency": "eur", "customer": null, "status": "succeeded" });
    let refunded = json!({ "id": "ch_0003", "amount": 2500, "currency": "usd", "customer": "cus_001", "status": "refunded", "refund_reason": "duplicate" });
    let expected = [
        json_ok(json!({ "charges": [c2, c1] })),
        json_ok(c3.clone()),
        json_ok(c4),
        json_ok(json!({ "charges": [c3] })),
        json_ok(refunded),
        err("charge ch_0003 is already refunded"),
        err("no such charge: ch_9999"),
        json_ok(json!({ "deleted": { "id": "cus_002", "name": "Grace Hopper", "email": "grace@example.com" } })),
        err("no such customer: cus_002"),
        // 1_000_000 + 2500 + 99 - 2500 (refund) - 1000
        json_ok(
            json!({ "id": "tr_0001", "amount": 1000, "destination": "acct_123", "status": "paid", "balance_remaining": 999_099 }),
        ),
        err("insufficient balance: 999099 cents available"),
        err("argument amount must be a positive integer, got 12.5"),
        err("argument amount must be a positive integer, got \"2500\""),
        err("argument amount must be a positive integer, got -5"),
        err("currency must be a three-letter ISO 4217 code such as usd, got \"dollars\""),
        err("no such customer: cus_002"),
        err("destination must not be empty"),
    ];
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "call {i}");
    }
}
