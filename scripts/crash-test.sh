#!/usr/bin/env bash
# Crash test of the write-ahead call log: load through a real `gatehouse serve`, SIGKILL at a
# random moment, restart, and check that nothing the client was told is missing from the log.
#
#   scripts/crash-test.sh [ROUNDS]            # 20 rounds (default), debug build
#   scripts/crash-test.sh --quick             # 3 rounds (CI)
#   scripts/crash-test.sh --release 20        # release build (what scripts/bench-audit runs)
#   KEEP=1 scripts/crash-test.sh ...          # keep the temporary directory (kept anyway on failure)
#
# Setup: a temporary git repository holding a policy repository whose one server is the crate's
# own stdio example upstream (`gatehouse example-upstream files`), a policy that allows
# read_file under /srv/projects/ and denies anything else, and a grant with a known token.
# One data directory is kept across all rounds, so the log grows and every round also checks
# the rounds before it.
#
# Each round:
#   1. start `gatehouse serve` on a free loopback port; wait for /readyz;
#   2. start examples/crash_client (8 sessions x 2 loops, one in four calls to a denied path),
#      wait for its first response, then sleep a random 0.2-2 s;
#   3. kill -9 the gateway (its stdio upstream child sees EOF and exits), then stop the client;
#   4. restart the gateway, wait for /readyz, send a short burst of calls (appends after the
#      crash must extend the chain), stop it with SIGTERM;
#   5. check the state database (python3 sqlite3) and `gatehouse audit verify`:
#      a. per session, decision records (outcome unknown|denied, no latency) >= responses the
#         client logged (ok, tool_error, denied; JSON-RPC errors and audit_unavailable excluded);
#      b. exact: every logged response has the decision record of that very call (the client
#         sends an extra argument `probe_<id>` and records keep argument key paths), with the
#         verdict the client saw (allow for ok/tool_error, deny for denied);
#      c. every outcome record has its decision record, written before it (lower seq);
#      d. seq has no gap from the chain anchor (or 1) to the last record;
#      e. `gatehouse audit verify --data-dir` exits 0.
# PASS/FAIL per round, then "N passed, M failed"; exit 1 on any failure.
set -euo pipefail

ROUNDS=20
PROFILE=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ROUNDS=3 ;;
    --release) PROFILE=release ;;
    --debug) PROFILE=debug ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *[!0-9]* | '') echo "usage: $0 [--quick] [--release|--debug] [ROUNDS]" >&2; exit 2 ;;
    *) ROUNDS=$1 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
cargo_flags=()
[ "$PROFILE" = release ] && cargo_flags+=(--release)
echo "== building gatehouse and examples/crash_client ($PROFILE)"
cargo build "${cargo_flags[@]}" --bin gatehouse --example crash_client
GATEHOUSE=$target/$PROFILE/gatehouse
CLIENT=$target/$PROFILE/examples/crash_client

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-crash.XXXXXX")
data=$tmp/data
gw_pid=
client_pid=
children=()
failed=0
passed=0

cleanup() {
  local pid
  for pid in "$client_pid" "$gw_pid" "${children[@]}"; do
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  for pid in "$client_pid" "$gw_pid"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  if [ "$failed" -gt 0 ] || [ "${KEEP:-0}" = 1 ]; then
    echo "kept: $tmp"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the policy repository ---
TOKEN=crash-test-token-0123456789abcdef
token_sha=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
repo=$tmp/repo
mkdir -p "$repo/servers" "$repo/policies" "$repo/grants"
cat >"$repo/gatehouse.yaml" <<'EOF'
version: "1"
EOF
cp scripts/testdata/files-server.yaml "$repo/servers/files.yaml"
cp scripts/testdata/files-policy.yaml "$repo/policies/files.yaml"
cat >"$repo/grants/crash.yaml" <<EOF
identity: crash@example.com
kind: agent
owner: ops@example.com
tokens: [ { sha256: $token_sha } ]
access: [ { server: files, tools: [read_file], policy: policies/files.yaml } ]
EOF
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=crash -c user.email=crash@example.com commit -qm "crash test policy"
"$GATEHOUSE" check --repo "$repo" >/dev/null

# --- helpers ---
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_gateway LOGFILE: sets gw_pid and port; waits for /readyz (30 s).
start_gateway() {
  port=$(free_port)
  RUST_LOG=${GATEHOUSE_LOG:-info,hyper=warn} "$GATEHOUSE" serve --repo "$repo" --listen "127.0.0.1:$port" \
    --data-dir "$data" --poll 3600s >>"$1" 2>&1 &
  gw_pid=$!
  local i
  for i in $(seq 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$gw_pid" 2>/dev/null; then
      echo "gateway exited before it was ready (log: $1)" >&2
      gw_pid=
      return 1
    fi
    sleep 0.1
  done
  echo "gateway not ready within 30 s (log: $1)" >&2
  return 1
}

# The stdio upstream children of the gateway (their own process group, so kill -9 of the
# gateway does not reach them; they exit on EOF).
note_children() {
  local c
  for c in $(pgrep -P "$gw_pid" 2>/dev/null || true); do
    children+=("$c")
  done
}

reap_children() {
  local c i
  for c in "${children[@]}"; do
    for i in $(seq 50); do
      kill -0 "$c" 2>/dev/null || break
      sleep 0.05
    done
    if kill -0 "$c" 2>/dev/null; then
      echo "stdio upstream $c outlived its gateway by 2.5 s: killing it" >&2
      kill -9 "$c" 2>/dev/null || true
    fi
  done
  children=()
}

stop_gateway_cleanly() {
  kill -TERM "$gw_pid"
  local i
  for i in $(seq 300); do
    kill -0 "$gw_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$gw_pid" 2>/dev/null; then
    echo "gateway ignored SIGTERM for 30 s" >&2
    kill -9 "$gw_pid" 2>/dev/null || true
  fi
  wait "$gw_pid" 2>/dev/null || true
  gw_pid=
}

check_round() { # check_round ROUND_DIR -> prints findings; exit status 0 when all hold
  python3 - "$data/gatehouse.db" "$1"/client*.log <<'PY'
import collections, hashlib, json, sqlite3, sys

db, logs = sys.argv[1], sys.argv[2:]
c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
problems = []

# What the client was told.
responses = []
for path in logs:
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                problems.append(f"{path}:{n}: incomplete line {line!r}")
                continue
            session, rid, verdict, probe = line.rstrip("\n").split("\t")
            # Records carry the session's reference (16 hex of sha256 of its id), never the id.
            session = hashlib.sha256(session.encode()).hexdigest()[:16]
            responses.append((session, int(rid), verdict, probe))
counted = [r for r in responses if r[2] in ("ok", "tool_error", "denied")]
by_verdict = collections.Counter(r[2] for r in responses)

# What the log holds.
records = []
# Rows of schema 5 hold the fields (the view gives their text), older rows their JSON.
for seq, outcome, verdict, text, session, latency, arg_keys in c.execute(
        "SELECT seq, outcome, verdict, record, session, latency_ms, arg_keys FROM calls ORDER BY seq"):
    r = json.loads(text) if text is not None else {"session": session, "latency_ms": latency, "arg_keys": json.loads(arg_keys)}
    records.append((seq, outcome, verdict, r["session"], r["latency_ms"], set(r["arg_keys"])))
decisions = [r for r in records if r[1] in ("unknown", "denied") and r[4] is None]
outcomes = [r for r in records if r[4] is not None]

# a. counts per session
per_session = collections.Counter(d[3] for d in decisions)
wanted = collections.Counter(r[0] for r in counted)
for s, n in sorted(wanted.items()):
    if per_session[s] < n:
        problems.append(f"session {s[:12]}: {n} responses received but {per_session[s]} decision records")

# b. exact: the decision record of each call, by its probe key
decision_by_probe = {}
for seq, outcome, verdict, session, _, keys in decisions:
    for k in keys:
        if k.startswith("probe_"):
            decision_by_probe[(session, k)] = (seq, verdict)
missing = 0
for s, rid, v, probe in counted:
    d = decision_by_probe.get((s, probe))
    want = "deny" if v == "denied" else "allow"
    if d is None:
        missing += 1
        if missing <= 10:
            problems.append(f"response {v} to call id {rid} (session {s[:12]}) has no decision record")
    elif d[1] != want:
        problems.append(f"call id {rid} (session {s[:12]}): client saw {v}, decision record says {d[1]} (seq {d[0]})")
if missing > 10:
    problems.append(f"... {missing} responses without a decision record in all")

# c. every outcome has its decision, written before it
orphans = 0
for seq, outcome, verdict, session, _, keys in outcomes:
    probe = next((k for k in keys if k.startswith("probe_")), None)
    d = decision_by_probe.get((session, probe))
    if d is None or d[0] >= seq:
        orphans += 1
        if orphans <= 10:
            problems.append(f"outcome record seq {seq} ({outcome}) has no earlier decision record")

# d. seq: no gap from the anchor (or 1) to the last record
anchor = c.execute("SELECT value FROM kv WHERE key LIKE 'chain_anchor:%'").fetchone()  # one replica: one chain
first = int(anchor[0].split(":")[0]) + 1 if anchor else 1
lo, hi, n = c.execute("SELECT min(seq), max(seq), count(*) FROM calls").fetchone()
if n == 0:
    problems.append("no call records at all")
elif lo != first or hi - lo + 1 != n:
    problems.append(f"seq gap: {n} records with seq {lo}..{hi}, expected to start at {first}")

print(f"client: {len(responses)} responses ({', '.join(f'{k} {v}' for k, v in sorted(by_verdict.items()))}); "
      f"log: {n} records (seq {lo}..{hi}), {len(decisions)} decisions, {len(outcomes)} outcomes, "
      f"{len(decisions) - len(outcomes)} decisions without an outcome")
for p in problems:
    print("  PROBLEM:", p)
sys.exit(1 if problems else 0)
PY
}

# --- the rounds ---
echo "== $ROUNDS rounds; data dir $data"
for round in $(seq "$ROUNDS"); do
  dir=$tmp/round-$round
  mkdir -p "$dir"
  ok=1
  why=()
  if ! start_gateway "$dir/gateway.log"; then
    ok=0
    why+=("gateway did not start")
  else
    note_children
    "$CLIENT" --url "http://127.0.0.1:$port/mcp" --token "$TOKEN" --log "$dir/client.log" \
      --sessions 8 --per-session 2 --give-up 5s 2>"$dir/client.err" &
    client_pid=$!
    # Load is running once the first response is logged (at most 10 s).
    for i in $(seq 200); do
      [ -s "$dir/client.log" ] && break
      sleep 0.05
    done
    note_children
    delay_ms=$((200 + RANDOM % 1801))
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    kill -9 "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
    gw_pid=
    killed_at=$(wc -l <"$dir/client.log")
    kill -TERM "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
    client_pid=
    reap_children
    # Restart on the same data dir: it must come up, and calls after the crash extend the chain.
    if ! start_gateway "$dir/gateway-restart.log"; then
      ok=0
      why+=("the gateway did not restart after SIGKILL")
    else
      note_children
      if ! "$CLIENT" --url "http://127.0.0.1:$port/mcp" --token "$TOKEN" --log "$dir/client-after.log" \
        --sessions 2 --per-session 1 --count 20 --give-up 5s 2>"$dir/client-after.err"; then
        ok=0
        why+=("the client failed after the restart")
      fi
      after=$(wc -l <"$dir/client-after.log" 2>/dev/null || echo 0)
      if [ "$after" -lt 20 ]; then
        ok=0
        why+=("only $after of 20 calls answered after the restart")
      fi
      stop_gateway_cleanly
      reap_children
    fi
  fi
  summary=$(check_round "$dir") || {
    ok=0
    why+=("log check failed")
  }
  verify=$("$GATEHOUSE" audit verify --data-dir "$data" 2>&1) || {
    ok=0
    why+=("audit verify: $verify")
  }
  if [ "$ok" = 1 ]; then
    passed=$((passed + 1))
    echo "round $round: PASS (killed after ${delay_ms:-?} ms at ${killed_at:-?} responses) $summary; $verify"
  else
    failed=$((failed + 1))
    echo "round $round: FAIL (killed after ${delay_ms:-?} ms at ${killed_at:-?} responses): ${why[*]}"
    echo "$summary" | sed 's/^/  /'
    echo "  logs: $dir"
  fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
