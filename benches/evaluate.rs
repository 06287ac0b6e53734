//! `evaluate` on the example repository: the median per decision for an allowed and a denied
//! call of each policy style, and the same call with 10, 1,000 and 10,000 grants in the snapshot.
//!
//! Baseline, measured in the same run: one identity lookup in a `HashMap<String, usize>` plus one
//! argument read from the call's JSON (the least any engine must do). `scripts/bench-report`
//! prints each median as a ratio to it.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gatehouse::policy::{Call, evaluate};
use gatehouse::repo::{self, Entry, Files};
use gatehouse::policy::snapshot::Snapshot;
use serde_json::{Value, json};

fn example_files() -> Files {
    repo::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy-repo"), None).unwrap()
}

fn compile(files: &Files) -> Snapshot {
    repo::compile(files).unwrap_or_else(|d| panic!("{d}")).snapshot
}

/// The example repository plus `grants` generated grants spread over `grants / 10` servers.
fn scaled(grants: usize) -> Snapshot {
    let mut files = example_files();
    let servers = (grants / 10).max(1);
    for s in 0..servers {
        let text = format!("name: gen-{s}\ntransport: stdio\ncommand: [x]\nsupplier: {{ operated_by: internal }}\n");
        files.entries.insert(format!("servers/gen-{s}.yaml"), Entry::Blob(text.into_bytes()));
    }
    for g in 0..grants {
        let text = format!(
            "identity: user-{g}@example.com\nkind: human\naccess:\n  - {{ server: gen-{}, tools: \"*\" }}\n  - {{ role: repo-reader }}\n",
            g % servers
        );
        files.entries.insert(format!("grants/user-{g}.yaml"), Entry::Blob(text.into_bytes()));
    }
    compile(&files)
}

fn calls() -> Vec<(&'static str, &'static str, &'static str, &'static str, Value)> {
    vec![
        ("seed-files/allow", "repo-reader-bot", "files", "read_file", json!({ "path": "/srv/projects/app/README.md" })),
        ("seed-files/deny", "repo-reader-bot", "files", "read_file", json!({ "path": "/etc/passwd" })),
        ("seed-sql/allow", "bob@example.com", "sql", "query", json!({ "sql": "SELECT name FROM customers WHERE id = 7" })),
        ("seed-sql/deny", "bob@example.com", "sql", "query", json!({ "sql": "SELECT 1; DELETE FROM t" })),
        ("rules/allow", "alice@example.com", "payments", "create_charge", json!({ "amount": 2500, "currency": "usd" })),
        ("rules/deny", "alice@example.com", "payments", "create_charge", json!({ "amount": 90000, "currency": "usd" })),
    ]
}

fn bench(c: &mut Criterion) {
    let snap = compile(&example_files());
    let mut g = c.benchmark_group("evaluate");
    let ids: HashMap<String, usize> = (0..10).map(|i| (format!("user-{i}@example.com"), i)).collect();
    let args = json!({ "path": "/srv/projects/app/README.md" });
    g.bench_function("baseline/lookup", |b| {
        b.iter(|| {
            let i = ids.get(black_box("user-7@example.com"));
            let p = black_box(&args).get("path").and_then(Value::as_str);
            black_box((i, p))
        })
    });
    for (name, identity, server, tool, args) in calls() {
        g.bench_function(name, |b| {
            b.iter(|| {
                let call = Call { identity: black_box(identity), server, tool, args: &args };
                let d = evaluate(black_box(&snap), &call);
                black_box(d)
            })
        });
    }
    for n in [10usize, 1_000, 10_000] {
        let snap = scaled(n);
        let args = json!({ "path": "/srv/projects/app/README.md" });
        let identity = format!("user-{}@example.com", n / 2);
        g.bench_with_input(BenchmarkId::new("grants", n), &n, |b, _| {
            b.iter(|| {
                let call = Call { identity: black_box(&identity), server: "files", tool: "read_file", args: &args };
                black_box(evaluate(black_box(&snap), &call))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
