#!/usr/bin/env bash
# The whole multi-replica topology on one machine (loopback only): three `gatehouse serve`
# replicas on one PostgreSQL database and one Redis, nginx in front with session affinity
# (deploy/nginx.conf's routing by --session-route, with loopback ports).
#
#   scripts/replicas-test.sh            # debug build
#   KEEP=1 scripts/replicas-test.sh     # keep the temporary directory (kept anyway on failure)
#
# Needs PostgreSQL at 127.0.0.1:5432 (trust auth; a fresh database per run, dropped after),
# Redis at 127.0.0.1:6379 (a fresh key prefix per run) and nginx on PATH. Without one of them
# the script says so and exits 0, unless GATEHOUSE_REQUIRE_SERVICES is set (.ci/run): then 1.
#
# Checks:
#   1. cap: 200 concurrent calls, spread over the replicas, against a cap of 100 a day counted
#      in Redis: exactly 100 are forwarded (answered ok, and 100 allow records in the log), 100
#      are refused by the quota, and no session lost its replica (no 404).
#   2. kill -9: a second grant without a cap runs 3000 calls; once 500 are answered replica 2
#      is killed with SIGKILL, then restarted; afterwards every answered call has its decision record (found by
#      its probe argument) with the verdict the client saw, in some replica's chain.
#   3. `gatehouse audit verify --database` verifies every replica's chain; `gatehouse evidence
#      bundle --database` lists calls of all three replicas.
#   4. a new commit: every replica reports it in /status within 1 s of the first one.
# PASS/FAIL per check, then "N passed, M failed"; exit 1 on any failure.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac

need() {
  echo "replicas test: $1" >&2
  if [ -n "${GATEHOUSE_REQUIRE_SERVICES:-}" ]; then exit 1; fi
  echo "replicas test skipped (set GATEHOUSE_REQUIRE_SERVICES to make this a failure)"
  exit 0
}
PGHOST_=${GATEHOUSE_TEST_PG:-127.0.0.1}
command -v nginx >/dev/null || need "nginx is not installed"
command -v psql >/dev/null || need "psql is not installed"
psql -h "$PGHOST_" -U postgres -d postgres -qAtc 'select 1' >/dev/null 2>&1 || need "PostgreSQL is not reachable at $PGHOST_:5432"
python3 - <<'EOF' || need "Redis is not reachable at 127.0.0.1:6379"
import socket
s = socket.create_connection(("127.0.0.1", 6379), timeout=2)
s.sendall(b"PING\r\n")
assert s.recv(16).startswith(b"+PONG")
EOF

echo "== building gatehouse (debug)"
cargo build --bin gatehouse
GATEHOUSE=$target/debug/gatehouse

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-replicas.XXXXXX")
run_id=$(basename "$tmp" | tr -dc 'a-zA-Z0-9' | tr 'A-Z' 'a-z')
db=gh_replicas_$run_id
DB_URL="postgres://postgres@$PGHOST_:5432/$db"
QUOTA_URL="redis://127.0.0.1:6379"
export GATEHOUSE_QUOTA_KEY_PREFIX="gh-replicas-$run_id"
declare -A pid port admin
nginx_pid=
passed=0
failed=0

cleanup() {
  local r
  for r in "${!pid[@]}"; do kill -9 "${pid[$r]}" 2>/dev/null || true; done
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -h "$PGHOST_" -U postgres -d postgres -qc "drop database if exists $db" >/dev/null 2>&1 || true
  if [ "$failed" -gt 0 ] || [ "${KEEP:-0}" = 1 ]; then echo "kept: $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

psql -h "$PGHOST_" -U postgres -d postgres -qc "create database $db" >/dev/null

# --- the policy repository: one stdio server, two grants (one capped at 100 calls a day) ---
CAPPED=replicas-capped-token-0123456789abcdef
FREE=replicas-free-token-0123456789abcdef
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
repo=$tmp/repo
mkdir -p "$repo/servers" "$repo/policies" "$repo/grants"
echo 'version: "1"' >"$repo/gatehouse.yaml"
cp scripts/testdata/files-server.yaml "$repo/servers/files.yaml"
cp scripts/testdata/files-policy.yaml "$repo/policies/files.yaml"
cat >"$repo/grants/capped.yaml" <<EOF
identity: capped@example.com
kind: agent
owner: ops@example.com
tokens: [ { sha256: $(sha $CAPPED) } ]
access: [ { server: files, tools: [read_file], policy: policies/files.yaml } ]
quotas:
  - { name: hundred a day, rate_limit: 100/day }
EOF
cat >"$repo/grants/free.yaml" <<EOF
identity: free@example.com
kind: agent
owner: ops@example.com
tokens: [ { sha256: $(sha $FREE) } ]
access: [ { server: files, tools: [read_file], policy: policies/files.yaml } ]
EOF
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=ops -c user.email=ops@example.com commit -qm "replicas test policy"
"$GATEHOUSE" check --repo "$repo" >/dev/null

# start_replica NAME: starts (or restarts, on the same ports) replica NAME; waits for /readyz.
start_replica() {
  local r=$1
  [ -n "${port[$r]:-}" ] || port[$r]=$(free_port)
  [ -n "${admin[$r]:-}" ] || admin[$r]=$(free_port)
  PATH="$target/debug:$PATH" RUST_LOG=${GATEHOUSE_LOG:-info,hyper=warn} "$GATEHOUSE" serve --repo "$repo" \
    --listen "127.0.0.1:${port[$r]}" --admin-listen "127.0.0.1:${admin[$r]}" --data-dir "$tmp/$r" \
    --database "$DB_URL" --quota-store "$QUOTA_URL" --replica "$r" --session-route "$r" --poll 3600s \
    --max-connections-per-address 0 >>"$tmp/$r.log" 2>&1 &
  pid[$r]=$!
  local i
  for i in $(seq 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:${port[$r]}/readyz" 2>/dev/null && return 0
    kill -0 "${pid[$r]}" 2>/dev/null || { echo "replica $r exited:"; tail -20 "$tmp/$r.log"; return 1; }
    sleep 0.1
  done
  echo "replica $r not ready after 30 s"; tail -20 "$tmp/$r.log"; return 1
}

for r in r1 r2 r3; do start_replica $r; done

lb=$(free_port)
cat >"$tmp/nginx.conf" <<EOF
worker_processes 2;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx-body;
    proxy_temp_path $tmp/nginx-proxy;
    # A session's requests go to the replica whose --session-route ends its id (to the
    # others only while it is down: they answer 404, and the client opens a new session);
    # requests without a session spread over all three.
    map \$http_mcp_session_id \$gatehouse_pool {
        ~\\.r1\$  gatehouse_r1;
        ~\\.r2\$  gatehouse_r2;
        ~\\.r3\$  gatehouse_r3;
        default gatehouse;
    }
    upstream gatehouse {
        server 127.0.0.1:${port[r1]} max_fails=1 fail_timeout=2s;
        server 127.0.0.1:${port[r2]} max_fails=1 fail_timeout=2s;
        server 127.0.0.1:${port[r3]} max_fails=1 fail_timeout=2s;
        keepalive 32;
    }
    upstream gatehouse_r1 { server 127.0.0.1:${port[r1]} max_fails=1 fail_timeout=2s; server 127.0.0.1:${port[r2]} backup; server 127.0.0.1:${port[r3]} backup; keepalive 16; }
    upstream gatehouse_r2 { server 127.0.0.1:${port[r2]} max_fails=1 fail_timeout=2s; server 127.0.0.1:${port[r3]} backup; server 127.0.0.1:${port[r1]} backup; keepalive 16; }
    upstream gatehouse_r3 { server 127.0.0.1:${port[r3]} max_fails=1 fail_timeout=2s; server 127.0.0.1:${port[r1]} backup; server 127.0.0.1:${port[r2]} backup; keepalive 16; }
    server {
        listen 127.0.0.1:$lb;
        location / {
            proxy_pass http://\$gatehouse_pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 60s;
            proxy_next_upstream error;
        }
    }
}
EOF
nginx -c "$tmp/nginx.conf" -p "$tmp" &
nginx_pid=$!
for i in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$lb/healthz" 2>/dev/null && break; sleep 0.1; done
URL=http://127.0.0.1:$lb/mcp
echo "== 3 replicas behind nginx at $URL, database $db, quota prefix $GATEHOUSE_QUOTA_KEY_PREFIX"

export_log() { "$GATEHOUSE" audit export --database "$DB_URL" --since 2000-01-01 --until 2100-01-01 --format jsonl --out -; }

# --- 1. the cap holds across replicas ---
summary=$(python3 scripts/replicas_client.py --url "$URL" --token "$CAPPED" --log "$tmp/cap.tsv" --calls 200 --concurrency 200 --give-up 60)
echo "   client: $summary"
export_log >"$tmp/log1.jsonl"
python3 - "$summary" "$tmp/log1.jsonl" <<'EOF' && pass "cap: 200 concurrent calls over 3 replicas against a cap of 100 forward exactly 100" || fail "cap"
import json, sys
s = json.loads(sys.argv[1])
recs = [json.loads(l) for l in open(sys.argv[2])]
capped = [r for r in recs if r.get("identity") == "capped@example.com" and r.get("verdict") == "allow" and r.get("outcome") in ("unknown", None)]
allowed_decisions = len({(r["replica"], r["seq"]) for r in capped})
replicas = {r["replica"] for r in recs if r.get("identity") == "capped@example.com"}
print(f"   ok={s.get('ok')} denied={s.get('denied')} allow decision records={allowed_decisions} replicas={sorted(replicas)} session_gone={s.get('session_gone', 0)}")
assert s.get("ok") == 100 and s.get("denied") == 100, s
assert s.get("session_gone", 0) == 0 and s.get("unanswered", 0) == 0 and s.get("protocol_error", 0) == 0, s
assert len(replicas) == 3, replicas
EOF

# --- 2. kill -9 one replica mid-load ---
python3 scripts/replicas_client.py --url "$URL" --token "$FREE" --log "$tmp/kill.tsv" --calls 3000 --concurrency 16 --give-up 90 >"$tmp/kill.json" &
client=$!
# Mid-load: once 500 calls are answered (of 3000).
for _ in $(seq 600); do [ "$(cat "$tmp/kill.tsv" 2>/dev/null | wc -l)" -ge 500 ] && break; sleep 0.05; done
kill -9 "${pid[r2]}"
wait "${pid[r2]}" 2>/dev/null || true
echo "   killed r2 (kill -9)"
sleep 1.5
start_replica r2
echo "   restarted r2"
wait $client
echo "   client: $(cat "$tmp/kill.json")"
export_log >"$tmp/log2.jsonl"
python3 - "$tmp/kill.tsv" "$tmp/log2.jsonl" "$tmp/kill.json" <<'EOF' && pass "kill -9: every answered call has its decision record" || fail "kill -9"
import json, sys
answered = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
recs = [json.loads(l) for l in open(sys.argv[2])]
s = json.load(open(sys.argv[3]))
decisions = {}
for r in recs:
    if r.get("identity") != "free@example.com" or r.get("outcome") not in ("unknown", "denied", None):
        continue
    for k in r.get("arg_keys", []):
        if k.startswith("probe_"):
            decisions[k] = r
missing = [p for p, v, _ in answered if p not in decisions]
wrong = [p for p, v, _ in answered if p in decisions and decisions[p]["verdict"] != ("deny" if v == "denied" else "allow")]
by_replica = {}
for p, _, _ in answered:
    if p in decisions:
        by_replica[decisions[p]["replica"]] = by_replica.get(decisions[p]["replica"], 0) + 1
print(f"   answered={len(answered)} missing={len(missing)} wrong verdict={len(wrong)} per replica={by_replica} unanswered={s.get('unanswered', 0)} session_gone={s.get('session_gone', 0)}")
assert len(answered) == 3000 and not missing and not wrong, (missing[:5], wrong[:5])
# The kill happened mid-load: sessions held by r2 had to be opened again elsewhere.
assert s.get("session_gone", 0) + s.get("unanswered", 0) > 0, s
EOF

# --- 3. every chain verifies; the evidence bundle reads all replicas ---
if "$GATEHOUSE" audit verify --database "$DB_URL" >"$tmp/verify.txt" 2>&1; then
  sed 's/^/   /' "$tmp/verify.txt" | head -8
  pass "audit verify: every replica's chain"
else
  cat "$tmp/verify.txt"; fail "audit verify"
fi
if "$GATEHOUSE" evidence bundle --repo "$repo" --database "$DB_URL" --since 2000-01-01 --until 2100-01-01 --out "$tmp/bundle" >"$tmp/bundle.txt" 2>&1 \
  && python3 - "$tmp/bundle" <<'EOF'; then pass "evidence bundle from PostgreSQL lists the calls of all three replicas"; else cat "$tmp/bundle.txt"; fail "evidence bundle"; fi
import csv, glob, json, os, sys
d = sys.argv[1]
path = next(p for p in glob.glob(os.path.join(d, "**", "calls*.csv"), recursive=True))
rows = list(csv.DictReader(open(path)))
replicas = {r["replica"] for r in rows}
print(f"   {os.path.relpath(path, d)}: {len(rows)} rows from replicas {sorted(replicas)}")
assert {"r1", "r2", "r3"} <= replicas, replicas
EOF

# --- 4. a new commit reaches every replica within 1 s of the first ---
echo "# replicas test: a reviewed change" >>"$repo/policies/files.yaml"
git -C "$repo" -c user.name=ops -c user.email=ops@example.com commit -qam "a new commit"
new=$(git -C "$repo" rev-parse HEAD)
if python3 - "$new" "${admin[r1]}" "${admin[r2]}" "${admin[r3]}" <<'EOF'; then pass "a new commit: all three replicas applied it within 1 s of the first"; else fail "convergence"; fi
import json, sys, time, urllib.request
new, ports = sys.argv[1], sys.argv[2:]
seen = {}
start = time.monotonic()
while len(seen) < len(ports) and time.monotonic() - start < 30:
    for p in ports:
        if p in seen:
            continue
        s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/status", timeout=2))
        if (s.get("active") or {}).get("commit") == new:
            seen[p] = time.monotonic()
    time.sleep(0.02)
spread = max(seen.values()) - min(seen.values()) if len(seen) == len(ports) else None
print(f"   applied by {len(seen)}/{len(ports)}; spread {spread if spread is None else round(spread, 3)} s")
assert spread is not None and spread <= 1.0
EOF

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
