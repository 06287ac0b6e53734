//! The deployment files in deploy/ are valid YAML and match the binary: every gatehouse command
//! line in them parses with the real command-line parser, every GATEHOUSE_* variable they set is
//! one `serve` reads, the probes hit the MCP listener, and the admin port stays out of the
//! Service and of nginx.

use std::collections::BTreeSet;
use std::path::Path;

use clap::{CommandFactory, Parser};
use gatehouse::cli::{Cli, Command};
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let mut v: Value = serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}"));
            v.apply_merge().unwrap_or_else(|e| panic!("{path}: merge keys: {e}"));
            v
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("expected a list of strings, got {v:?}"))
        .iter()
        .map(|s| match s {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("not a string: {other:?}"),
        })
        .collect()
}

/// The environment variables `gatehouse serve` reads.
fn serve_env() -> BTreeSet<String> {
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").expect("serve subcommand");
    serve.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
}

/// Parses `args` as `gatehouse <args>` and returns the serve flags; panics with clap's message.
fn parse_serve(what: &str, args: &[String]) -> gatehouse::cli::ServeArgs {
    let argv = std::iter::once("gatehouse".to_string()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(Cli { command: Command::Serve(s) }) => s,
        Ok(other) => panic!("{what}: not a serve command: {other:?}"),
        Err(e) => panic!("{what}: the binary refuses this command line:\n{e}"),
    }
}

fn check_env(what: &str, names: impl IntoIterator<Item = String>) -> usize {
    let known = serve_env();
    let mut n = 0;
    for name in names.into_iter().filter(|n| n.starts_with("GATEHOUSE_")) {
        assert!(known.contains(&name), "{what}: sets {name}, which gatehouse serve does not read (it reads {known:?})");
        n += 1;
    }
    n
}

#[test]
fn compose_file_runs_three_replicas_on_postgres_and_redis_behind_nginx() {
    let docs = yaml_docs("deploy/compose.yaml");
    assert_eq!(docs.len(), 1);
    let services = docs[0]["services"].as_mapping().expect("services");
    let mut replicas = BTreeSet::new();
    let mut routes = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if !name.starts_with("gatehouse") {
            continue;
        }
        let serve = parse_serve(name, &strings(&svc["command"]));
        assert_eq!(serve.listen.port(), 8080, "{name}: nginx proxies to :8080");
        assert!(serve.admin_listen.ip().is_loopback(), "{name}: the admin listener must not be on the compose network");
        assert_eq!(serve.max_connections_per_address, 0, "{name}: behind nginx every client has nginx's address");
        assert!(serve.repo.starts_with("${GATEHOUSE_REPO_URL"), "{name}: the repository is cloned by URL");
        assert!(replicas.insert(serve.replica.clone().expect("--replica")), "{name}: replica names must differ");
        routes.push((name.to_string(), serve.session_route.clone().expect("--session-route: nginx routes sessions by it")));
        let env = svc["environment"].as_mapping().expect("environment");
        let set = check_env(name, env.keys().map(|k| k.as_str().unwrap().to_string()));
        assert_eq!(set, 2, "{name}: the database and the quota store come from the environment");
        assert!(env[&Value::from("GATEHOUSE_DATABASE_URL")].as_str().unwrap().starts_with("postgres://"));
        assert!(env[&Value::from("GATEHOUSE_QUOTA_STORE")].as_str().unwrap().starts_with("redis://"));
        // The health check is `gatehouse status --url <admin listener>`.
        let check = strings(&svc["healthcheck"]["test"]);
        assert_eq!(&check[..3], ["CMD", "gatehouse", "status"]);
        let argv = std::iter::once("gatehouse".to_string()).chain(check[2..].iter().cloned());
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{name}: health check: {e}"));
        assert!(check[4].ends_with(&format!(":{}", serve.admin_listen.port())), "{name}: the health check asks the admin listener");
        for dep in ["postgres", "redis"] {
            assert!(svc["depends_on"].get(dep).is_some(), "{name}: starts after {dep}");
        }
    }
    assert_eq!(replicas.len(), 3, "three replicas");
    assert!(services.contains_key("postgres") && services.contains_key("redis"));

    // nginx: every replica in the shared pool, and a session whose id ends with a replica's
    // route goes to a pool where that replica is the one primary server.
    let conf = std::fs::read_to_string(root().join("deploy/nginx.conf")).unwrap();
    assert!(conf.contains("map $http_mcp_session_id $gatehouse_pool"), "nginx.conf: routing by Mcp-Session-Id");
    assert!(conf.contains("proxy_pass http://$gatehouse_pool;"));
    for (svc, route) in &routes {
        let line = conf.lines().find(|l| l.trim_start().starts_with(&format!("~\\.{route}$"))).unwrap_or_else(|| panic!("nginx.conf: no route for {route}"));
        let pool = line.split_whitespace().nth(1).unwrap().trim_end_matches(';');
        let block = conf.split(&format!("upstream {pool} {{")).nth(1).unwrap_or_else(|| panic!("nginx.conf: no upstream {pool}"));
        let block = &block[..block.find('}').unwrap()];
        let primaries: Vec<&str> = block.lines().map(str::trim).filter(|l| l.starts_with("server ") && !l.contains(" backup")).collect();
        assert_eq!(primaries.len(), 1, "{pool}: one primary");
        assert!(primaries[0].starts_with(&format!("server {svc}:8080")), "{route} routes to {svc}, not {}", primaries[0]);
        let shared = conf.split("upstream gatehouse {").nth(1).unwrap();
        assert!(shared[..shared.find('}').unwrap()].contains(&format!("server {svc}:8080")), "the shared pool lacks {svc}");
    }
    assert!(!conf.contains(":9090"), "nginx.conf: the admin port is never proxied");
    let nginx = &services[&Value::from("nginx")];
    assert_eq!(strings(&nginx["ports"]), ["8080:8080"], "only nginx publishes a port");
    for (name, svc) in services {
        if name.as_str() != Some("nginx") {
            assert!(svc.get("ports").is_none(), "{name:?} publishes a port");
        }
    }
}

#[test]
fn kubernetes_manifests_match_the_binary() {
    let mut docs = yaml_docs("deploy/kubernetes/gatehouse.yaml");
    docs.extend(yaml_docs("deploy/kubernetes/ingress.yaml"));
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    let deployment = kind("Deployment");
    let service = kind("Service");
    let pdb = kind("PodDisruptionBudget");
    let ingress = kind("Ingress");

    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3));
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&service["spec"]["selector"], labels, "the Service selects the pods");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels, "the budget covers the pods");
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() >= 2);

    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    let serve = parse_serve("Deployment", &strings(&c["args"]));
    assert_eq!(serve.replica.as_deref(), Some("$(POD_NAME)"), "each pod is its own replica");
    let env: Vec<String> = c["env"].as_sequence().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect();
    assert!(env.contains(&"POD_NAME".to_string()));
    assert_eq!(check_env("Deployment", env), 2);

    let port = |name: &str| -> u64 {
        c["ports"].as_sequence().unwrap().iter().find(|p| p["name"] == name).unwrap()["containerPort"].as_u64().unwrap()
    };
    assert_eq!(port("mcp"), u64::from(serve.listen.port()));
    assert_eq!(port("admin"), u64::from(serve.admin_listen.port()));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path));
        assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some("mcp"), "{probe} asks the MCP listener");
    }
    // --secrets-dir is the mounted Secret.
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let secrets = mounts.iter().find(|m| m["mountPath"].as_str() == serve.secrets_dir.as_deref().and_then(|p| p.to_str())).expect("--secrets-dir is mounted");
    let volume = deployment["spec"]["template"]["spec"]["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == secrets["name"]).unwrap();
    assert!(volume.get("secret").is_some(), "--secrets-dir comes from a Secret");

    // The Service exposes the MCP port only; the admin port is never in it.
    let ports = service["spec"]["ports"].as_sequence().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["targetPort"].as_str(), Some("mcp"));
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"], service["metadata"]["name"]);
    assert_eq!(backend["port"]["name"].as_str(), Some("mcp"));
    // Hashing Mcp-Session-Id does not find a session's pod (the pod picks the id): never offered.
    assert!(ingress["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/upstream-hash-by").is_none());
}

#[test]
fn serve_takes_a_number_of_proxy_threads_from_1_to_1024() {
    let args = |n: &str| ["serve", "--repo", "examples/policy-repo", "--workers", n].map(String::from);
    assert_eq!(parse_serve("--workers 3", &args("3")).workers, Some(3));
    assert_eq!(parse_serve("no --workers", &["serve", "--repo", "x"].map(String::from)).workers, None);
    for bad in ["0", "1025", "2.5", "two"] {
        let argv = std::iter::once("gatehouse".to_string()).chain(args(bad));
        let e = Cli::try_parse_from(argv).expect_err(bad).to_string();
        assert!(e.contains("--workers"), "{bad}: the error names the flag: {e}");
    }
}
