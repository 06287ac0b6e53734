//! Fuzzing the parsers a client or a commit reaches, as structured property tests.
//!
//! cargo-fuzz needs a nightly toolchain (`-Zsanitizer`), which the project's machines and CI do
//! not have, so the same idea runs on stable through proptest: inputs are grown from a corpus of
//! seeds kept in the repository (`tests/data/fuzz/jsonrpc/`, and the example policy
//! repository) by byte-level mutations (flip, insert, delete, truncate, splice a token from a
//! dictionary) and by generating structured messages. CI runs a bounded number of cases;
//! `PROPTEST_CASES=100000 cargo test --test it fuzz::` runs longer. A failure is shrunk by
//! proptest and its input belongs in the corpus as a regression seed.
//!
//! The properties: nothing panics; every HTTP answer is one the gateway means to give (a
//! status it documents, JSON where JSON is promised); the gateway keeps serving; no call record
//! exceeds the bound of `record::audit::bound`; every diagnostic of a mutated repository names
//! a file of the input and a line inside it.

use std::path::Path;
use std::sync::OnceLock;

use gatehouse::gateway::proxy::Config;
use gatehouse::gateway::proxy::jsonrpc::{classify, parse_body_limited};
use gatehouse::gateway::secrets::SecretSource;
use gatehouse::repo::{Entry, Files, compile};
use http::StatusCode;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::gateway::{Gateway, MockUpstream, initialize, send, token_hash};
use crate::support::crate_dir;

const TOKEN: &str = "fuzz-token-0123456789";

/// Tokens spliced into inputs: the JSON and YAML syntax and the words the parsers branch on.
const DICTIONARY: &[&str] = &[
    "{", "}", "[", "]", ":", ",", "\"", "\\", "\\u0000", "\\ud800", "null", "true", "1e999", "-0", "\"jsonrpc\":\"2.0\"",
    "\"id\":", "\"method\":", "\"params\":", "\"result\":", "\"error\":", "tools/call", "tools/list", "initialize",
    "__", "\n", "\t", "- ", ": ", "---", "&a", "*a", "!!binary", "<<: ", "'", "#", "\u{feff}", "\u{0}", "~", "..",
    "${secret:x}", "regex", "path_within", "deny_if", "rules", "tools:", "access:", "server:", "identity:",
];

fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir).unwrap().flatten().map(|e| std::fs::read(e.path()).unwrap()).collect();
    out.sort();
    out
}

fn jsonrpc_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| seeds(&crate_dir().join("tests/data/fuzz/jsonrpc")))
}

/// One byte-level mutation.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, token: usize },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    Duplicate { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), 0..DICTIONARY.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Flip { at, bit } if !bytes.is_empty() => bytes[at % n] ^= 1 << bit,
            Mutation::Insert { at, token } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, DICTIONARY[token].bytes());
            }
            Mutation::Delete { at, len } if !bytes.is_empty() => {
                let at = at % n;
                bytes.drain(at..(at + len).min(bytes.len()));
            }
            Mutation::Truncate { at } => bytes.truncate(at % (bytes.len() + 1)),
            Mutation::Duplicate { at, len } if !bytes.is_empty() => {
                let at = at % n;
                let part: Vec<u8> = bytes[at..(at + len).min(bytes.len())].to_vec();
                bytes.splice(at..at, part);
            }
            _ => {}
        }
    }
    bytes
}

/// A body: a corpus seed mutated, or a generated message (or batch) of the shapes clients send.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (0..jsonrpc_seeds().len(), prop::collection::vec(mutation(), 0..6))
        .prop_map(|(i, ms)| mutate(jsonrpc_seeds()[i].clone(), &ms));
    let generated = prop::collection::vec(message(), 1..4).prop_map(|mut msgs| {
        let v = if msgs.len() == 1 { msgs.pop().unwrap() } else { Value::Array(msgs) };
        v.to_string().into_bytes()
    });
    prop_oneof![mutated, generated, prop::collection::vec(any::<u8>(), 0..256)]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z_./]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}|\\PC{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Value> {
    let method = prop::sample::select(vec![
        "tools/call",
        "tools/list",
        "ping",
        "initialize",
        "server/discover",
        "resources/list",
        "notifications/cancelled",
        "notifications/initialized",
        "x/unknown",
    ]);
    let id = prop_oneof![Just(None), any::<i64>().prop_map(|i| Some(json!(i))), "[a-z0-9]{0,8}".prop_map(|s| Some(json!(s))), Just(Some(json!(1.5)))];
    let name = prop_oneof![
        prop::sample::select(vec!["mock__add", "mock__echo_headers", "mock__nope", "add", "nope__add", "__", ""]).prop_map(str::to_string),
        "[a-z_]{0,10}(__)?[a-z_\\PC]{0,10}",
    ];
    (method, id, name, json_value(), any::<bool>()).prop_map(|(method, id, name, args, with_result)| {
        let mut m = json!({ "jsonrpc": "2.0", "method": method });
        if let Some(id) = id {
            m["id"] = id;
        }
        m["params"] = match method {
            "tools/call" => json!({ "name": name, "arguments": args }),
            "notifications/cancelled" => json!({ "requestId": args }),
            _ => args,
        };
        if with_result {
            m["result"] = json!({});
        }
        m
    })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// The JSON-RPC parser and classifier take any bytes without panicking, and a batch limit
    /// is a limit.
    #[test]
    fn jsonrpc_parsing_takes_any_bytes(bytes in body()) {
        if let Ok(v) = parse_body_limited(&bytes, 64) {
            match v {
                Value::Array(items) => {
                    prop_assert!(items.len() <= 64);
                    for item in items {
                        let _ = classify(item);
                    }
                }
                single => {
                    let _ = classify(single);
                }
            }
        }
    }
}

/// The live gateway (in-process, with a mock upstream and the audit log on), shared by the
/// cases of one run.
struct Live {
    runtime: tokio::runtime::Runtime,
    gw: Gateway,
    _up: MockUpstream,
    url: String,
    session: String,
    old_session: String,
}

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (gw, up, url, session, old_session) = runtime.block_on(async {
            let up = MockUpstream::start().await;
            let server = format!("name: mock\ntransport: streamable-http\nurl: {}\ntimeout: 2s\nsupplier: {{ operated_by: internal }}\n", up.url);
            let policy = "tools:\n  add:\n    deny_if: [ { conditions: [ { path: args.a, op: gt, value: 1000 } ] } ]\n  echo_headers: {}\n";
            let grant = format!("identity: fuzz\nkind: agent\nowner: o@x\ntokens: [ {{ sha256: {} }} ]\naccess: [ {{ server: mock, tools: \"*\", policy: policies/p.yaml }} ]\n", token_hash(TOKEN));
            let gw = Gateway::start(
                &[("servers/mock.yaml", &server), ("policies/p.yaml", policy), ("grants/fuzz.yaml", &grant)],
                SecretSource::default(),
                Config::default(),
            )
            .await;
            let url = format!("{}/mcp", gw.url);
            let session = initialize(&url, TOKEN, "2025-11-25").await;
            let old_session = initialize(&url, TOKEN, "2025-03-26").await;
            (gw, up, url, session, old_session)
        });
        Live { runtime, gw, _up: up, url, session, old_session }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, cases: ProptestConfig::default().cases / 4, ..ProptestConfig::default() })]

    /// Any body on an authenticated session gets an answer the gateway means to give, and the
    /// gateway goes on serving.
    #[test]
    fn the_request_path_answers_any_body(bytes in body(), old in any::<bool>()) {
        let l = live();
        let session = if old { &l.old_session } else { &l.session };
        let body = String::from_utf8_lossy(&bytes).into_owned();
        let r = l.runtime.block_on(send("POST", &l.url, Some(TOKEN), Some(session), &body, &[]));
        prop_assert!(
            [StatusCode::OK, StatusCode::ACCEPTED, StatusCode::BAD_REQUEST].contains(&r.status),
            "status {} for {body:?}: {}", r.status, r.body
        );
        if r.status != StatusCode::ACCEPTED {
            let v: Result<Value, _> = serde_json::from_str(&r.body);
            prop_assert!(v.is_ok(), "not JSON for {body:?}: {}", r.body);
        }
    }
}

#[test]
fn after_the_fuzzed_requests_the_gateway_serves_and_every_record_is_bounded() {
    // Runs after (or beside) the property above; it only needs the shared gateway.
    let l = live();
    let r = l.runtime.block_on(send("GET", &format!("{}/healthz", l.gw.url), None, None, "", &[]));
    assert_eq!(r.status, StatusCode::OK);
    let c = l.gw.store.reader().unwrap();
    let largest = gatehouse::record::audit::verify::canonical_records(&c).unwrap().iter().map(|(t, _)| t.len() as i64).max();
    assert!(largest.unwrap_or(0) < gatehouse::record::audit::bound::MAX_RECORD_BYTES as i64, "{largest:?}");
}

fn example_files() -> &'static [(String, Vec<u8>)] {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| read_tree(&crate_dir().join("examples/policy-repo")))
}

/// Lines as YAML counts them: `\r\n`, `\r` and `\n` each end one (a lone `\r` is a line
/// break to YAML, so positions after one are on a new line).
fn yaml_lines(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    text.split(['\n', '\r']).count()
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, cases: ProptestConfig::default().cases / 2, ..ProptestConfig::default() })]

    /// The repository loader takes any mutation of any file of the example repository without
    /// panicking, and places every diagnostic in a file it was given, inside that file.
    #[test]
    fn the_repository_loader_takes_any_commit(file in 0..example_files().len(), ms in prop::collection::vec(mutation(), 1..8)) {
        let files: Vec<(String, Vec<u8>)> = example_files()
            .iter()
            .enumerate()
            .map(|(i, (path, bytes))| (path.clone(), if i == file { mutate(bytes.clone(), &ms) } else { bytes.clone() }))
            .collect();
        if let Err(why) = loads_and_places(&files) {
            prop_assert!(false, "{}", why);
        }
    }
}

/// Compiles `files`; Err names a diagnostic placed outside the commit. Panics propagate.
fn loads_and_places(files: &[(String, Vec<u8>)]) -> Result<(), String> {
    let mut commit = Files { commit: None, entries: Default::default() };
    let mut lines = std::collections::HashMap::new();
    for (path, bytes) in files {
        lines.insert(path.clone(), yaml_lines(bytes));
        commit.entries.insert(path.clone(), Entry::Blob(bytes.clone()));
    }
    if let Err(diags) = compile(&commit) {
        for d in diags.errors() {
            match lines.get(&d.file) {
                None if !d.file.is_empty() => return Err(format!("a diagnostic names a file not in the commit: {d}")),
                Some(n) if d.pos.line > *n + 1 => return Err(format!("{d}: the file has {n} lines")),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The regression corpus of the repository loader: each folder of `tests/data/fuzz/repo/` holds
/// files that replace the example repository's files of the same path.
#[test]
fn the_repository_loader_corpus_still_loads_and_places() {
    let root = crate_dir().join("tests/data/fuzz/repo");
    for case in std::fs::read_dir(&root).unwrap().flatten() {
        let mut files: Vec<(String, Vec<u8>)> = example_files().to_vec();
        for (path, bytes) in read_tree(&case.path()) {
            match files.iter_mut().find(|(p, _)| *p == path) {
                Some(f) => f.1 = bytes,
                None => files.push((path, bytes)),
            }
        }
        if let Err(why) = loads_and_places(&files) {
            panic!("{}: {why}", case.path().display());
        }
    }
}

fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
