#!/usr/bin/env bash
# Interop: drive real MCP peers that nobody on the gateway team wrote through `gatehouse serve`.
#
#   bash scripts/interop.sh                      # what CI runs (from .ci/run)
#   PEERS_DIR=/work/peers bash scripts/interop.sh   # reuse an installed peers dir
#
# Upstreams (through the gateway):  server-everything over Streamable HTTP and over legacy
#   HTTP+SSE (started with shared/peers/start-servers.sh), server-filesystem over stdio (on a
#   copy of the fsroot fixture), mcp-server-time over stdio.
# Clients: the official Python SDK (shared/peers/mcp_client.py), MCP Inspector CLI 1.x (Node 20)
#   and 2.x (Node 22, when installed), curl for the wire-level checks, and the official
#   conformance suite (@modelcontextprotocol/conformance, Node 22), whose server scenarios must
#   pass through /mcp/everything wherever they pass against server-everything directly.
# A temporary policy repository (git init + one commit) registers the four upstreams with
#   supplier facts and tool categories, argument rules (deny_if contains, require path_within,
#   require in, a rules-style rule), hidden tools and three grants with different tokens.
#
# Prints a PASS/FAIL line per check and, last, "N passed, M failed"; exits 1 on any failure.
#
# Environment:
#   SHARED_DIR      the shared kit (default: <repo>/../shared); peers scripts in $SHARED_DIR/peers
#   PEERS_DIR       installed peers (default: <repo>/target/interop-peers); installed with
#                   $SHARED_DIR/peers/setup.sh when $PEERS_DIR/env.sh is missing or incomplete
#   GATEHOUSE_BIN   gateway binary to test (default: cargo build, target/debug when it is already
#                   built there, else cargo build --release)
#   CLIENT_TIMEOUT  seconds allowed per client run (default 60); a hang is a failure
#   JOBS            client checks run at once (default 4; verdicts are printed in order)
#   KEEP_WORK=1     keep the temporary directory (repository, logs) even when everything passed
#
# Only loopback addresses are used; ports are picked free at start. Every process started here
# (peers, gateway) is stopped on exit; the gateway's stdio children are checked to be reaped.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=$(git -C "$ROOT" rev-parse --show-toplevel 2>/dev/null || echo "$ROOT")
SHARED_DIR=${SHARED_DIR:-$ROOT/../shared}
PEERS_KIT=$SHARED_DIR/peers
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-60}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-interop.XXXXXX")
WORK=$(cd "$WORK" && pwd -P)        # server-filesystem compares real paths
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/home"
CLIENT_LOG=$LOGS/clients.log   # check jobs write to $RES/<seq>.log, appended here in order
GW_LOG=$LOGS/gateway.log
T0=$(date +%s)

PASS=0; FAIL=0
GW_PID=""; GW_CHILDREN=""; RUN=""
JOBS=${JOBS:-4}                   # client checks run this many at a time (1: one by one)
RES=$WORK/results; mkdir -p "$RES"
SEQ=0; PRINTED=0; PIDS=()

# --- reporting -------------------------------------------------------------------------------
# Checks run as background jobs (at most $JOBS at once) that write their verdict to
# $RES/<seq>.*; `drain` waits for them and prints the verdicts in the order the checks were
# written. Anything that depends on earlier checks (or prints directly) drains first.

report() {  # report NAME WHY [OUTPUT]   (WHY empty: pass)
  if [ -z "$2" ]; then
    PASS=$((PASS + 1)); echo "PASS  $1"
  else
    FAIL=$((FAIL + 1)); echo "FAIL  $1: $2"
    if [ -n "${3:-}" ]; then printf '%s\n' "$3" | tail -n 25 | sed 's/^/        | /'; fi
  fi
}

record() {  # record NAME WHY [OUTPUT]: from a check job, or directly (after draining)
  if [ -n "${IN_JOB:-}" ]; then
    printf '%s' "$1" >"$RES/$IN_JOB.name"; printf '%s' "$2" >"$RES/$IN_JOB.why"; printf '%s' "${3:-}" >"$RES/$IN_JOB.out"
  else
    drain; report "$@"
  fi
}
result() { record "$@"; }

running() { local n=0 p; for p in ${PIDS[@]+"${PIDS[@]}"}; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done; echo $n; }

spawn() {  # spawn FUNCTION ARGS...: run a check as job number SEQ
  SEQ=$((SEQ + 1))
  while [ "$(running)" -ge "$JOBS" ]; do sleep 0.05; done
  ( IN_JOB=$SEQ; CLIENT_LOG=$RES/$SEQ.log; "$@" ) &
  PIDS+=($!)
}

drain() {  # wait for every check job, then print their verdicts in order
  local p i
  for p in ${PIDS[@]+"${PIDS[@]}"}; do wait "$p" 2>/dev/null; done
  PIDS=()
  while [ "$PRINTED" -lt "$SEQ" ]; do
    PRINTED=$((PRINTED + 1)); i=$PRINTED
    [ -f "$RES/$i.log" ] && cat "$RES/$i.log" >>"$LOGS/clients.log"
    if [ -f "$RES/$i.why" ]; then
      report "$(cat "$RES/$i.name")" "$(cat "$RES/$i.why")" "$(cat "$RES/$i.out")"
    else
      report "check #$i" "the check job died without a verdict"
    fi
  done
}

GW_DEAD=""
# The gateway's stdio children, as "pid:starttime" (so that cleanup never signals a reused pid),
# noted at each section: a gateway that dies abruptly may leave them behind.
starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }
note_children() {
  local c
  [ -n "$GW_PID" ] || return 0
  for c in $(ps -o pid= --ppid "$GW_PID" 2>/dev/null); do
    [[ " $GW_CHILDREN " == *" $c:"* ]] || GW_CHILDREN+=" $c:$(starttime "$c")"
  done
}
section() {  # drains, notices a gateway that died since the last section, prints a heading
  drain
  note_children
  if [ -n "$GW_PID" ] && [ -z "$GW_DEAD" ] && ! kill -0 "$GW_PID" 2>/dev/null; then
    GW_DEAD=1; wait "$GW_PID" 2>/dev/null
    report "the gateway is still running" "it exited (status $?) before: $*" "$(tail -n 20 "$GW_LOG")"
  fi
  echo "== $*"
}

# check NAME [--rc 0|N|fail] [--has S]... [--lacks S]... -- CMD...
# Runs CMD (stdin closed, at most CLIENT_TIMEOUT s), then checks its exit status and its
# combined stdout+stderr.
check() { spawn _check "$@"; }
_check() {
  local name=$1; shift
  local want=0 has=() lacks=() out rc why="" p t0=$SECONDS
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case $1 in
      --rc) want=$2; shift 2 ;;
      --has) has+=("$2"); shift 2 ;;
      --lacks) lacks+=("$2"); shift 2 ;;
      *) echo "check: unknown option $1" >&2; return 2 ;;
    esac
  done
  shift
  out=$(timeout -k 5 "$CLIENT_TIMEOUT" "$@" </dev/null 2>&1); rc=$?
  { echo "=== $name ($((SECONDS - t0))s)"; printf '$'; printf ' %q' "$@"; echo; printf '%s\n' "$out"; echo "(exit $rc)"; } >>"$CLIENT_LOG"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then why="no answer within ${CLIENT_TIMEOUT}s (killed)"
  elif [ "$want" = fail ] && [ $rc -eq 0 ]; then why="expected a non-zero exit, got 0"
  elif [ "$want" != fail ] && [ $rc -ne "$want" ]; then why="exit $rc, expected $want"
  fi
  for p in ${has[@]+"${has[@]}"}; do [[ $out == *"$p"* ]] || why+="${why:+; }missing: $p"; done
  for p in ${lacks[@]+"${lacks[@]}"}; do [[ $out != *"$p"* ]] || why+="${why:+; }unexpected: $p"; done
  record "$name" "$why" "$out"
}

# http_check NAME STATUS [--header-has S] [--body-has S] -- CURL_ARGS...
http_check() { spawn _http_check "$@"; }
_http_check() {
  local name=$1 want=$2; shift 2
  local hh=() bh=() code why="" p f=$WORK/http.${IN_JOB:-0}
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case $1 in
      --header-has) hh+=("$2"); shift 2 ;;
      --body-has) bh+=("$2"); shift 2 ;;
      *) echo "http_check: unknown option $1" >&2; return 2 ;;
    esac
  done
  shift
  code=$(curl -sS --max-time 20 -o "$f.body" -D "$f.head" -w '%{http_code}' "$@" 2>"$f.err") || true
  local head body err; head=$(tr -d '\r' <"$f.head" 2>/dev/null); body=$(cat "$f.body" 2>/dev/null); err=$(cat "$f.err")
  { echo "=== $name"; printf '$ curl'; printf ' %q' "$@"; echo; echo "$head"; echo "$body"; echo "$err"; } >>"$CLIENT_LOG"
  [ "$code" = "$want" ] || why="HTTP $code, expected $want"
  for p in ${hh[@]+"${hh[@]}"}; do [[ ${head,,} == *"${p,,}"* ]] || why+="${why:+; }header missing: $p"; done
  for p in ${bh[@]+"${bh[@]}"}; do [[ $body == *"$p"* ]] || why+="${why:+; }body missing: $p"; done
  record "$name" "$why" "$(printf '%s\n%s\n%s' "$head" "$body" "$err")"
}

finish() {  # prints the summary last and exits
  drain
  local secs=$(( $(date +%s) - T0 ))
  if [ "$FAIL" -gt 0 ]; then
    if [ -s "$GW_LOG" ]; then
      echo "---- gateway log ($GW_LOG, last 80 lines)"
      tail -n 80 "$GW_LOG" | sed 's/^/    /'
    fi
    echo "---- logs kept in $LOGS (clients.log has every client's full output)"
  fi
  echo "interop took ${secs}s"
  echo "$PASS passed, $FAIL failed"
  [ "$FAIL" -eq 0 ] && exit 0 || exit 1
}

fatal() {  # a set-up step failed: nothing else can run
  result "set-up: $1" "${2:-failed}" "${3:-}"
  finish
}

cleanup() {
  set +e
  local p c
  for p in ${PIDS[@]+"${PIDS[@]}"}; do   # unfinished check jobs (interrupted run)
    for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do kill -TERM "$c" 2>/dev/null; done
    kill -TERM "$p" 2>/dev/null
  done
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    note_children
    kill -TERM "$GW_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$GW_PID" 2>/dev/null
  fi
  for c in $GW_CHILDREN; do   # only if it is still the process we saw
    [ "$(starttime "${c%%:*}")" = "${c#*:}" ] && kill -KILL "${c%%:*}" 2>/dev/null
  done
  if [ -n "$RUN" ]; then bash "$PEERS_KIT/stop-servers.sh" "$RUN" >>"$LOGS/cleanup.log" 2>&1; fi
  if [ "$FAIL" -eq 0 ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "interop: work dir $WORK"

# --- peers -----------------------------------------------------------------------------------

[ -f "$PEERS_KIT/setup.sh" ] || fatal "shared peers kit" "not found at $PEERS_KIT (set SHARED_DIR)"
PEERS_DIR=${PEERS_DIR:-$ROOT/target/interop-peers}
peers_complete() {
  [ -f "$PEERS_DIR/env.sh" ] || return 1
  ( source "$PEERS_DIR/env.sh"
    for f in "$PEERS_PY" "$PEERS_EVERYTHING_JS" "$PEERS_FILESYSTEM_JS" "$PEERS_INSPECTOR1" \
             "$PEERS_DIR/venv/bin/mcp-server-time" "$PEERS_DIR/fsroot/hello.txt" \
             "${PEERS_NODE22:-}" "${PEERS_CONFORMANCE_JS:-}"; do
      [ -e "$f" ] || exit 1
    done )
}
if ! peers_complete; then
  echo "interop: installing peers into $PEERS_DIR (log: $LOGS/setup.log)"
  mkdir -p "$PEERS_DIR"
  bash "$PEERS_KIT/setup.sh" "$PEERS_DIR" >"$LOGS/setup.log" 2>&1 \
    || fatal "install peers (setup.sh)" "exit $?" "$(tail -n 30 "$LOGS/setup.log")"
  peers_complete || fatal "install peers" "setup.sh finished but files are missing in $PEERS_DIR"
fi
PEERS_DIR=$(cd "$PEERS_DIR" && pwd -P)
# shellcheck disable=SC1091
source "$PEERS_DIR/env.sh"
CLIENT_PY=$PEERS_KIT/mcp_client.py
[ -f "$CLIENT_PY" ] || CLIENT_PY=$PEERS_CLIENT
PY=(env HOME="$WORK/home" "$PEERS_PY" "$CLIENT_PY")
INSP1=(env HOME="$WORK/home" "$PEERS_INSPECTOR1" --cli)
INSP2=()
if [ -x "${PEERS_INSPECTOR2:-}" ] && [ -x "${PEERS_NODE22:-}" ]; then
  INSP2=(env HOME="$WORK/home" MCP_CATALOG_PATH="$WORK/home/inspector-catalog.json"
         PATH="$(dirname "$PEERS_NODE22"):$PATH" "$PEERS_INSPECTOR2" --cli)
fi
NODE=$(command -v node) || fatal "node" "node is not on PATH"

# --- gateway binary --------------------------------------------------------------------------

if [ -n "${GATEHOUSE_BIN:-}" ]; then
  BIN=$GATEHOUSE_BIN
else
  if [ -x "$ROOT/target/debug/gatehouse" ]; then PROFILE=debug; FLAG=(); else PROFILE=release; FLAG=(--release); fi
  echo "interop: cargo build ${FLAG[*]:-} (log: $LOGS/build.log)"
  ( cd "$ROOT" && cargo build ${FLAG[@]+"${FLAG[@]}"} --bin gatehouse ) >"$LOGS/build.log" 2>&1 \
    || fatal "build gatehouse" "cargo build failed" "$(tail -n 30 "$LOGS/build.log")"
  BIN=$ROOT/target/$PROFILE/gatehouse
fi
[ -x "$BIN" ] || fatal "gateway binary" "$BIN is not executable"
echo "interop: gateway $BIN"

# --- ports and upstream peers ----------------------------------------------------------------

read -r GW_PORT HTTP_PORT SSE_PORT WWW_PORT < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(4):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
EOF
) || fatal "pick ports"
GW=http://127.0.0.1:$GW_PORT

# start-servers.sh keeps its pid files in DIR/logs: give it a private DIR so that peers a
# developer already runs from $PEERS_DIR are neither reused nor stopped.
RUN=$WORK/peers-run
mkdir -p "$RUN/logs" "$RUN/www"
echo "source '$PEERS_DIR/env.sh'" >"$RUN/env.sh"
EVERYTHING_HTTP_PORT=$HTTP_PORT EVERYTHING_SSE_PORT=$SSE_PORT WWW_PORT=$WWW_PORT \
  bash "$PEERS_KIT/start-servers.sh" "$RUN" >"$LOGS/start-servers.log" 2>&1 \
  || fatal "start peers (start-servers.sh)" "exit $?" "$(cat "$LOGS/start-servers.log"; tail -n 20 "$RUN"/logs/*.log)"
echo "interop: server-everything on :$HTTP_PORT (streamable http) and :$SSE_PORT (sse)"

# Fixture: a private copy of setup.sh's fsroot, and a file beside it that must stay unreadable.
FSROOT=$WORK/fsroot
cp -R "$PEERS_DIR/fsroot" "$FSROOT"
SECRET_WORD="outside-the-sandbox-$RANDOM$RANDOM"
echo "$SECRET_WORD" >"$WORK/outside.txt"

# --- the policy repository -------------------------------------------------------------------

tok() { "$PEERS_PY" -c 'import secrets; print("ghi-" + secrets.token_hex(20))'; }
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
OPS_TOKEN=$(tok); AGENT_TOKEN=$(tok); EXPIRED_TOKEN=$(tok); BAD_TOKEN=$(tok); CONFORMANCE_TOKEN=$(tok)
TODAY=$(date -u +%F); NEXT_YEAR=$(date -u -d '+365 days' +%F)
REPO=$WORK/policy-repo
mkdir -p "$REPO"/{servers,policies,grants,tests}
SUPPLIER="supplier:
  operated_by: external
  vendor: Model Context Protocol project (reference servers)
  risk: low
  data: [test-fixtures]
  reviewed: { on: $TODAY, by: interop@example.com }"

cat >"$REPO/gatehouse.yaml" <<EOF
version: "1"
EOF
cat >"$REPO/servers/everything.yaml" <<EOF
name: everything
description: server-everything over Streamable HTTP
transport: streamable-http
url: http://127.0.0.1:$HTTP_PORT/mcp
credentials:
  headers: { X-Interop-Key: "\${secret:everything-key}" }
policy: policies/everything-baseline.yaml
timeout: 20s
$SUPPLIER
tools:
  echo:    { category: read }
  get-sum: { category: read }
  get-env: { category: read }
EOF
cat >"$REPO/servers/everything-sse.yaml" <<EOF
name: everything-sse
description: server-everything over the legacy HTTP+SSE transport (2024-11-05)
transport: sse
url: http://127.0.0.1:$SSE_PORT/sse
policy: policies/everything-baseline.yaml
timeout: 20s
$SUPPLIER
tools:
  echo:    { category: read }
  get-env: { category: read }
EOF
cat >"$REPO/servers/files.yaml" <<EOF
name: files
description: server-filesystem over stdio, confined to the interop fixture
transport: stdio
command: ["$NODE", "$PEERS_FILESYSTEM_JS", "$FSROOT"]
policy: policies/files-sandbox.yaml
timeout: 20s
$SUPPLIER
tools:
  read_text_file: { category: read }
  list_directory: { category: read }
  list_allowed_directories: { category: read }
  write_file:     { category: destructive }
  edit_file:      { category: destructive }
  move_file:      { category: destructive }
EOF
cat >"$REPO/servers/time.yaml" <<EOF
name: time
description: mcp-server-time over stdio
transport: stdio
command: ["$PEERS_DIR/venv/bin/mcp-server-time", --local-timezone, UTC]
timeout: 20s
$SUPPLIER
tools:
  get_current_time: { category: read }
  convert_time:     { category: read }
EOF
cat >"$REPO/policies/everything-baseline.yaml" <<'EOF'
# Baseline for both server-everything registrations.
version: "1"
default: allow
hide: [get-env]                     # it would print the server's environment
tools:
  echo:
    deny_if:
      - name: no passwords in echo
        message: echo may not carry the word password
        conditions: [ { path: args.message, op: contains, value: password } ]
EOF
cat >"$REPO/policies/files-sandbox.yaml" <<EOF
# Baseline for the filesystem server: every path must stay inside the fixture.
version: "1"
default: deny
hide: [move_file]
tools:
  list_allowed_directories: {}
  read_text_file:
    require:
      - { path: args.path, op: path_within, value: ["$FSROOT"] }
  list_directory:
    require:
      - { path: args.path, op: path_within, value: ["$FSROOT"] }
  write_file:
    require:
      - { path: args.path, op: path_within, value: ["$FSROOT"] }
EOF
cat >"$REPO/policies/time-zones.yaml" <<'EOF'
# Approved time zones (seed style for get_current_time, rules style for convert_time).
version: "1"
default: deny
tools:
  get_current_time:
    require:
      - { path: args.timezone, op: in, value: [UTC, Europe/Paris, Asia/Tokyo] }
  convert_time:
    rules:
      - name: approved target zone
        conditions: [ { path: args.target_timezone, op: in, value: [UTC, Europe/Paris, Asia/Tokyo] } ]
        on_deny: Only UTC, Europe/Paris and Asia/Tokyo
EOF
cat >"$REPO/grants/ops.yaml" <<EOF
identity: ops@example.com
kind: human
tokens:
  - { sha256: $(sha "$OPS_TOKEN"), issued: $TODAY, expires: $NEXT_YEAR }
access:
  - { server: everything, tools: "*" }
  - { server: everything-sse, tools: "*" }
  - { server: files, tools: "*" }
  - { server: time, tools: "*", policy: policies/time-zones.yaml }
review: { on: $TODAY, by: interop@example.com }
EOF
cat >"$REPO/grants/agent.yaml" <<EOF
identity: interop-agent
kind: agent
owner: ops@example.com
tokens:
  - { sha256: $(sha "$AGENT_TOKEN"), issued: $TODAY, expires: $NEXT_YEAR }
  - { sha256: $(sha "$EXPIRED_TOKEN"), issued: 2025-01-01, expires: 2025-06-01 }
access:
  - { server: everything, tools: [echo, get-sum], resources: ["demo://resource/dynamic/text/*"], prompts: [simple-prompt] }
  - { server: files, tools: [read_text_file, list_directory, list_allowed_directories] }
  - { server: time, tools: [get_current_time], policy: policies/time-zones.yaml }
review: { on: $TODAY, by: interop@example.com }
EOF
# The official conformance suite's client, through /mcp/everything: all that server-everything has.
cat >"$REPO/grants/conformance.yaml" <<EOF
identity: conformance-suite
kind: agent
owner: ops@example.com
tokens:
  - { sha256: $(sha "$CONFORMANCE_TOKEN"), issued: $TODAY, expires: $NEXT_YEAR }
access:
  - { server: everything, tools: "*", resources: "*", prompts: "*" }
review: { on: $TODAY, by: interop@example.com }
EOF
cat >"$REPO/tests/interop.yaml" <<EOF
cases:
  - { name: echo is allowed, identity: interop-agent, server: everything, tool: echo, args: { message: hi }, expect: allow }
  - { name: echo of a password is denied, identity: ops, server: everything-sse, tool: echo, args: { message: my password }, expect: deny, rule: echo }
  - { name: get-env is hidden, identity: ops, server: everything, tool: get-env, expect: deny, rule: hide }
  - { name: traversal is denied, identity: interop-agent, server: files, tool: read_text_file, args: { path: "$FSROOT/../outside.txt" }, expect: deny, rule: read_text_file/require/0 }
  - { name: the agent may not write, identity: interop-agent, server: files, tool: write_file, args: { path: "$FSROOT/x" }, expect: deny }
  - { name: an unapproved zone is denied, identity: ops, server: time, tool: get_current_time, args: { timezone: America/New_York }, expect: deny, rule: get_current_time/require/0 }
EOF
mkdir -p "$WORK/secrets"
printf '%s' "interop-upstream-key-$RANDOM" >"$WORK/secrets/everything-key"
( cd "$REPO" && git init -q && git config user.name interop && git config user.email interop@example.invalid \
  && git config commit.gpgsign false && git add -A && git commit -q -m "interop policy repository" ) \
  || fatal "policy repository" "git init/commit failed"
COMMIT=$(git -C "$REPO" rev-parse HEAD); SHORT=${COMMIT:0:12}

section "policy repository"
check "gatehouse check accepts the interop repository" --has "ok:" -- "$BIN" check --repo "$REPO" --rev HEAD
check "gatehouse test passes the interop repository's cases" --has "6 passed, 0 failed" -- "$BIN" test --repo "$REPO" --rev HEAD

# --- gatehouse scan against the real peers ------------------------------------------------------
# Each upstream is scanned twice with --format json: the tool list must come back with a category
# and a definition hash for every tool, no findings (exit 0), the categories below, and the same
# hashes both times. Then `scan --server files --write` pins the filesystem tools in the working
# tree, and the repository must still check (the gateway reads commits: it is unaffected).

section "gatehouse scan (server-everything over Streamable HTTP, server-filesystem and mcp-server-time over stdio)"
SCANS=$LOGS/scans; mkdir -p "$SCANS"
cat >"$SCANS/verdict.py" <<'PYEOF'
import json, sys
# verdict.py FIRST.json SECOND.json EXPECT...   (EXPECT: tool=category, or min=N tools)
first, second, *expect = sys.argv[1:]
try:
    a, b = (json.load(open(p)) for p in (first, second))
except Exception as e:
    print("not JSON: %s" % e); sys.exit()
why = []
tools = {t["name"]: t for t in a["tools"]}
for t in a["tools"]:
    if t["category"] not in ("read", "write", "destructive", "execute", "financial"):
        why.append("%s: category %r" % (t["name"], t["category"]))
    if len(t["sha256"]) != 64:
        why.append("%s: sha256 %r" % (t["name"], t["sha256"]))
    if t["findings"] or t["name_problems"]:
        why.append("%s: findings %s %s" % (t["name"], t["findings"], t["name_problems"]))
for e in expect:
    k, v = e.split("=", 1)
    if k == "min":
        if len(tools) < int(v): why.append("%d tools, expected at least %s" % (len(tools), v))
    elif k not in tools: why.append("%s not listed" % k)
    elif tools[k]["category"] != v: why.append("%s is %s, expected %s" % (k, tools[k]["category"], v))
if [(t["name"], t["sha256"]) for t in a["tools"]] != [(t["name"], t["sha256"]) for t in b["tools"]]:
    why.append("the two runs differ in names or hashes")
print("; ".join(why))
PYEOF
scan_twice() {  # scan_twice LABEL EXPECTS -- SCAN_ARGS...: two json scans, then the verdict
  local label=$1 expects=$2 rc1 rc2 why; shift 3
  timeout -k 5 "$CLIENT_TIMEOUT" "$BIN" scan --format json "$@" >"$SCANS/$label.1.json" 2>"$SCANS/$label.1.err" </dev/null; rc1=$?
  timeout -k 5 "$CLIENT_TIMEOUT" "$BIN" scan --format json "$@" >"$SCANS/$label.2.json" 2>"$SCANS/$label.2.err" </dev/null; rc2=$?
  # shellcheck disable=SC2086
  why=$("$PEERS_PY" "$SCANS/verdict.py" "$SCANS/$label.1.json" "$SCANS/$label.2.json" $expects)
  [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] || why="exit $rc1 and $rc2, expected 0${why:+; $why}"
  { echo "=== scan $label: gatehouse scan$(printf ' %q' "$@")"
    "$PEERS_PY" -c 'import json,sys; print("\n".join("%-28s %-12s %s" % (t["name"], t["category"], t["sha256"]) for t in json.load(open(sys.argv[1]))["tools"]))' \
      "$SCANS/$label.1.json" 2>&1; cat "$SCANS/$label.1.err"; } >>"$CLIENT_LOG"
  result "scan $label: every tool has a category and a hash, no findings, stable across two runs" "$why" \
    "$(cat "$SCANS/$label.1.err" "$SCANS/$label.1.json" 2>/dev/null | head -n 40)"
}
scan_twice everything "min=10 echo=read get-sum=read get-tiny-image=read get-annotated-message=read" \
  -- --server everything --repo "$REPO" --secrets-dir "$WORK/secrets"
scan_twice files "min=10 read_text_file=read list_directory=read write_file=destructive edit_file=destructive move_file=destructive create_directory=write" \
  -- --server files --repo "$REPO"
scan_twice time "get_current_time=read convert_time=read" \
  -- --repo "$REPO" -- "$PEERS_DIR/venv/bin/mcp-server-time" --local-timezone UTC
check "scan lists server-everything's resources, resource templates and prompts, screened, no findings" \
  --has "RESOURCE TEMPLATE" --has "demo://resource/static/document/" --has "demo://resource/dynamic/text/{resourceId}" \
  --has "simple-prompt" --has "prompts, no findings" \
  -- "$BIN" scan --server everything --repo "$REPO" --secrets-dir "$WORK/secrets"
check "scan --server files --write pins the filesystem tools, keeps the declared categories" \
  --has "wrote servers/files.yaml" --has "no findings" -- "$BIN" scan --server files --repo "$REPO" --write
drain
files_yaml=$(cat "$REPO/servers/files.yaml")
result "servers/files.yaml after --write: hand-set categories kept, tools pinned" "$(
  [[ $files_yaml == *"write_file:     { category: destructive, sha256: "* ]] || echo "write_file entry not pinned as written"
  [[ $files_yaml == *"read_text_file: { category: read, sha256: "* ]] || echo "read_text_file entry not pinned"
  [[ $files_yaml == *"supplier:"* ]] || echo "the rest of the file is gone")" "$files_yaml"
check "gatehouse check accepts the repository after scan --write" --has "ok:" -- "$BIN" check --repo "$REPO"
check "scan after --write: every pin matches" --has '"pin": "matches"' --lacks '"pin": "unpinned"' --lacks '"pin": "changed"' \
  -- "$BIN" scan --server files --repo "$REPO" --format json

# --- the gateway -----------------------------------------------------------------------------

RUST_LOG=${RUST_LOG:-info,hyper=warn,gatehouse=debug} "$BIN" serve --repo "$REPO" --listen "127.0.0.1:$GW_PORT" \
  --data-dir "$WORK/data" --secrets-dir "$WORK/secrets" >"$GW_LOG" 2>&1 &
GW_PID=$!
ready=""
for _ in $(seq 1 150); do
  kill -0 "$GW_PID" 2>/dev/null || break
  if curl -fsS --max-time 2 "$GW/readyz" >"$WORK/readyz" 2>/dev/null; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || fatal "gateway ready" "/readyz never answered 200 (process $(kill -0 "$GW_PID" 2>/dev/null && echo alive || echo exited))"
echo "interop: gateway ready on $GW ($(cat "$WORK/readyz"))"
# The operations endpoints are on the admin listener: a free loopback port by default, written
# to the data dir.
ADMIN=http://$(cat "$WORK/data/admin.addr" 2>/dev/null || echo "127.0.0.1:1")

section "operations endpoints and authentication (curl)"
http_check "/readyz names the policy commit" 200 --body-has "$SHORT" -- "$GW/readyz"
http_check "/healthz needs no token" 200 -- "$GW/healthz"
http_check "/status (admin listener) lists the four upstreams" 200 --body-has '"everything-sse"' --body-has '"stdio"' --body-has '"sse"' -- "$ADMIN/status"
http_check "/status is not served on the MCP listener" 404 -- "$GW/status"
http_check "/metrics (admin listener) counts refused connections" 200 --body-has "gatehouse_connections_refused_total" -- "$ADMIN/metrics"
INIT='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}'
H=(-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream')
http_check "curl: no token on /mcp gives 401 + WWW-Authenticate: Bearer" 401 --header-has "www-authenticate: Bearer" \
  -- -X POST "${H[@]}" --data-binary "$INIT" "$GW/mcp"
http_check "curl: unknown token on /mcp gives 401 invalid_token" 401 --header-has 'error="invalid_token"' \
  -- -X POST "${H[@]}" -H "Authorization: Bearer $BAD_TOKEN" --data-binary "$INIT" "$GW/mcp"
http_check "curl: expired token gives 401" 401 --body-has "expired" \
  -- -X POST "${H[@]}" -H "Authorization: Bearer $EXPIRED_TOKEN" --data-binary "$INIT" "$GW/mcp"
for s in everything everything-sse files time; do
  http_check "curl: unknown token on /mcp/$s gives 401" 401 --header-has "www-authenticate: Bearer" \
    -- -X POST "${H[@]}" -H "Authorization: Bearer $BAD_TOKEN" --data-binary "$INIT" "$GW/mcp/$s"
done
http_check "curl: the narrow grant cannot open /mcp/everything-sse (404)" 404 \
  -- -X POST "${H[@]}" -H "Authorization: Bearer $AGENT_TOKEN" --data-binary "$INIT" "$GW/mcp/everything-sse"

# Raw wire: one session, the exact denial and unknown-tool shapes of DESIGN.md §3.
wire() {  # wire TOKEN SESSION BODY [PATH] -> prints body
  curl -sS --max-time 30 -X POST "${H[@]}" -H "Authorization: Bearer $1" -H "MCP-Protocol-Version: 2025-11-25" \
    ${2:+-H "Mcp-Session-Id: $2"} --data-binary "$3" "$GW${4:-/mcp}"
}
SID=$(curl -sS --max-time 30 -D - -o /dev/null -X POST "${H[@]}" -H "Authorization: Bearer $OPS_TOKEN" \
  --data-binary "$INIT" "$GW/mcp" | tr -d '\r' | awk 'tolower($1)=="mcp-session-id:"{print $2}')
result "curl: initialize returns an Mcp-Session-Id" "$([ -n "$SID" ] || echo "no session id header")"
wire "$OPS_TOKEN" "$SID" '{"jsonrpc":"2.0","method":"notifications/initialized"}' >/dev/null
jcheck() {  # jcheck NAME JSON PYTHON_EXPR(j)
  local why
  drain
  why=$(printf '%s' "$2" | "$PEERS_PY" -c "import json,sys
try:
    j = json.loads(sys.stdin.read())
except Exception as e:
    print('not JSON: %s' % e); sys.exit()
ok = $3
print('' if ok else 'unexpected response')")
  { echo "=== $1"; echo "$2"; } >>"$CLIENT_LOG"
  result "$1" "$why" "$2"
}
R=$(wire "$OPS_TOKEN" "$SID" '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"everything__echo","arguments":{"message":"the password is swordfish"}}}')
jcheck "curl: a denial is result.isError with 'denied by policy: … (rule …, commit $SHORT)'" "$R" \
  "j.get('id') == 7 and j['result']['isError'] is True and j['result']['content'][0]['text'].startswith('denied by policy: echo may not carry the word password (rule ') and 'commit $SHORT)' in j['result']['content'][0]['text']"
R=$(wire "$OPS_TOKEN" "$SID" '{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"everything__no-such-tool","arguments":{}}}')
jcheck "curl: an unknown tool is JSON-RPC error -32602 'Unknown tool: everything__no-such-tool'" "$R" \
  "j['error']['code'] == -32602 and j['error']['message'] == 'Unknown tool: everything__no-such-tool'"
R=$(wire "$OPS_TOKEN" "$SID" '{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"everything__get-sum","arguments":{"a":20,"b":22}}}')
jcheck "curl: an allowed call returns the upstream's result" "$R" "'sum of 20 and 22 is 42' in json.dumps(j['result'])"
http_check "curl: a session is refused with another grant's token (404)" 404 \
  -- -X POST "${H[@]}" -H "Authorization: Bearer $AGENT_TOKEN" -H "Mcp-Session-Id: $SID" -H "MCP-Protocol-Version: 2025-11-25" \
  --data-binary '{"jsonrpc":"2.0","id":10,"method":"tools/list"}' "$GW/mcp"
drain   # the DELETE must come after the check above
http_check "curl: DELETE ends the session" 204 -- -X DELETE -H "Authorization: Bearer $OPS_TOKEN" -H "Mcp-Session-Id: $SID" "$GW/mcp"
drain
http_check "curl: the deleted session is gone (404)" 404 \
  -- -X POST "${H[@]}" -H "Authorization: Bearer $OPS_TOKEN" -H "Mcp-Session-Id: $SID" -H "MCP-Protocol-Version: 2025-11-25" \
  --data-binary '{"jsonrpc":"2.0","id":11,"method":"ping"}' "$GW/mcp"

# --- upstream by upstream, Python SDK client ---------------------------------------------------

OPS=(--url "$GW/mcp" --token "$OPS_TOKEN")
AGENT=(--url "$GW/mcp" --token "$AGENT_TOKEN")
DENIED="denied by policy"

section "Streamable HTTP upstream (server-everything), Python SDK"
check "py-sdk tools/list: everything__* listed, hidden get-env absent" \
  --has "  - everything__echo  " --has "  - everything__get-sum  " --has "  - everything__get-tiny-image  " --lacks "everything__get-env" \
  -- "${PY[@]}" "${OPS[@]}"
check "py-sdk allowed call returns the upstream's result" --has '"Echo: hello through gatehouse"' --has "isError=False" \
  -- "${PY[@]}" "${OPS[@]}" --call everything__echo --args '{"message":"hello through gatehouse"}'
check "py-sdk deny_if (echo contains 'password') is an isError denial with the rule id" \
  --has "isError=True" --has "$DENIED" --has "policies/everything-baseline.yaml#/tools/echo/deny_if/" --lacks "Echo:" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call everything__echo --args '{"message":"my password is swordfish"}'
check "py-sdk hidden tool call is Unknown tool" --has "code=-32602" --has "Unknown tool: everything__get-env" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call everything__get-env
check "py-sdk nonexistent tool is Unknown tool" --has "code=-32602" --has "Unknown tool: everything__no-such-tool" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call everything__no-such-tool
check "py-sdk with a bad token fails to connect (401)" --rc fail --has "unauthorized: unknown token" --lacks "# tools (" \
  -- "${PY[@]}" --url "$GW/mcp" --token "$BAD_TOKEN"
check "py-sdk narrow grant: only granted tools listed" \
  --has "  - everything__echo  " --has "  - everything__get-sum  " --has "  - files__read_text_file  " --has "  - time__get_current_time  " \
  --lacks "everything__get-tiny-image" --lacks "everything__get-env" --lacks "everything-sse__" --lacks "files__write_file" --lacks "time__convert_time" \
  -- "${PY[@]}" "${AGENT[@]}"
check "py-sdk narrow grant: an ungranted tool is Unknown tool" --has "Unknown tool: everything__get-tiny-image" \
  -- "${PY[@]}" "${AGENT[@]}" --expect-error --call everything__get-tiny-image
check "py-sdk narrow grant: allowed call" --has "sum of 2 and 3 is 5" \
  -- "${PY[@]}" "${AGENT[@]}" --call everything__get-sum --args '{"a":2,"b":3}'
check "py-sdk --mode auto: server/discover offers 2026-07-28, spoken natively (no session)" \
  --has "protocolVersion=2026-07-28" --has "sum of 4 and 4 is 8" \
  -- "${PY[@]}" "${OPS[@]}" --mode auto --call everything__get-sum --args '{"a":4,"b":4}'
check "py-sdk --mode 2026-07-28: tools/list filtered as for a session" \
  --has "protocolVersion=2026-07-28" --has "  - everything__echo  " --has "  - everything__get-sum  " --lacks "everything__get-env" \
  -- "${PY[@]}" "${OPS[@]}" --mode 2026-07-28
check "py-sdk --mode 2026-07-28 narrow grant: only granted tools, allowed call" \
  --has "protocolVersion=2026-07-28" --has "sum of 5 and 6 is 11" --lacks "everything__get-tiny-image" --lacks "files__write_file" \
  -- "${PY[@]}" "${AGENT[@]}" --mode 2026-07-28 --call everything__get-sum --args '{"a":5,"b":6}'
check "py-sdk --mode 2026-07-28 deny_if is an isError denial with the rule id" \
  --has "protocolVersion=2026-07-28" --has "isError=True" --has "$DENIED" --has "policies/everything-baseline.yaml#/tools/echo/deny_if/" --lacks "Echo:" \
  -- "${PY[@]}" "${OPS[@]}" --mode 2026-07-28 --expect-error --call everything__echo --args '{"message":"my password is swordfish"}'
check "py-sdk --mode 2026-07-28 ungranted tool is Unknown tool" --has "protocolVersion=2026-07-28" --has "Unknown tool: everything__get-tiny-image" \
  -- "${PY[@]}" "${AGENT[@]}" --mode 2026-07-28 --expect-error --call everything__get-tiny-image
check "py-sdk --mode 2026-07-28 on /mcp/time (a stdio upstream that speaks 2026-07-28 too)" \
  --has "protocolVersion=2026-07-28" --has '"timezone": "UTC"' --lacks "time__" \
  -- "${PY[@]}" --url "$GW/mcp/time" --token "$AGENT_TOKEN" --mode 2026-07-28 --call get_current_time --args '{"timezone":"UTC"}'

section "legacy SSE upstream (server-everything), Python SDK"
check "py-sdk tools/list: everything-sse__* listed, hidden get-env absent" \
  --has "  - everything-sse__echo  " --has "  - everything-sse__get-sum  " --lacks "everything-sse__get-env" \
  -- "${PY[@]}" "${OPS[@]}"
check "py-sdk allowed call over SSE returns the upstream's result" --has '"Echo: hello over sse"' --has "isError=False" \
  -- "${PY[@]}" "${OPS[@]}" --call everything-sse__echo --args '{"message":"hello over sse"}'
check "py-sdk deny_if over SSE is an isError denial with the rule id" \
  --has "isError=True" --has "$DENIED" --has "policies/everything-baseline.yaml#/tools/echo/deny_if/" --lacks "Echo:" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call everything-sse__echo --args '{"message":"password"}'
check "py-sdk SSE: hidden tool call is Unknown tool" --has "Unknown tool: everything-sse__get-env" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call everything-sse__get-env
check "py-sdk SSE: nonexistent tool is Unknown tool" --has "Unknown tool: everything-sse__nope" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call everything-sse__nope
check "py-sdk narrow grant: SSE server not reachable (Unknown tool)" --has "Unknown tool: everything-sse__echo" \
  -- "${PY[@]}" "${AGENT[@]}" --expect-error --call everything-sse__echo --args '{"message":"x"}'

section "stdio upstream (server-filesystem), Python SDK"
check "py-sdk tools/list: files__* listed, hidden move_file and unlisted tools absent" \
  --has "  - files__read_text_file  " --has "  - files__write_file  " --has "  - files__list_directory  " \
  --lacks "files__move_file" --lacks "files__read_media_file" --lacks "files__edit_file" \
  -- "${PY[@]}" "${OPS[@]}"
check "py-sdk read inside the fixture returns the file" --has "hello from fsroot" --has "isError=False" \
  -- "${PY[@]}" "${AGENT[@]}" --call files__read_text_file --args "{\"path\":\"$FSROOT/hello.txt\"}"
check "py-sdk path_within denies /etc/passwd with the rule id" \
  --has "$DENIED" --has "policies/files-sandbox.yaml#/tools/read_text_file/require/0" --lacks "root:" \
  -- "${PY[@]}" "${AGENT[@]}" --expect-error --call files__read_text_file --args '{"path":"/etc/passwd"}'
for p in "$FSROOT/../outside.txt" "$FSROOT/sub/../../outside.txt" "$FSROOT/%2e%2e/outside.txt" "$FSROOT/./../outside.txt"; do
  check "py-sdk path traversal denied by the gateway: ${p#"$WORK"/}" \
    --has "$DENIED" --has "read_text_file/require/0" --lacks "$SECRET_WORD" \
    -- "${PY[@]}" "${AGENT[@]}" --expect-error --call files__read_text_file --args "{\"path\":\"$p\"}"
done
check "py-sdk write_file (destructive) allowed to the wide grant inside the fixture" --has "isError=False" \
  -- "${PY[@]}" "${OPS[@]}" --call files__write_file --args "{\"path\":\"$FSROOT/written.txt\",\"content\":\"written via gatehouse\"}"
drain   # read back only once the write has finished
check "py-sdk the written file reads back" --has "written via gatehouse" \
  -- "${PY[@]}" "${AGENT[@]}" --call files__read_text_file --args "{\"path\":\"$FSROOT/written.txt\"}"
check "py-sdk write_file outside the fixture denied" --has "$DENIED" --has "write_file/require/0" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call files__write_file --args "{\"path\":\"$WORK/evil.txt\",\"content\":\"x\"}"
result "the denied write left no file" "$([ ! -e "$WORK/evil.txt" ] || echo "$WORK/evil.txt exists")"
check "py-sdk narrow grant: write_file is Unknown tool" --has "Unknown tool: files__write_file" \
  -- "${PY[@]}" "${AGENT[@]}" --expect-error --call files__write_file --args "{\"path\":\"$FSROOT/a.txt\",\"content\":\"x\"}"
check "py-sdk hidden move_file is Unknown tool" --has "Unknown tool: files__move_file" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call files__move_file --args "{\"source\":\"$FSROOT/hello.txt\",\"destination\":\"$FSROOT/moved.txt\"}"
check "py-sdk nonexistent files tool is Unknown tool" --has "Unknown tool: files__nope" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call files__nope

section "stdio upstream (mcp-server-time), Python SDK"
check "py-sdk tools/list: time__* listed" --has "  - time__get_current_time  " --has "  - time__convert_time  " \
  -- "${PY[@]}" "${OPS[@]}"
check "py-sdk allowed call returns the upstream's result" --has '"timezone": "UTC"' --has "isError=False" \
  -- "${PY[@]}" "${AGENT[@]}" --call time__get_current_time --args '{"timezone":"UTC"}'
check "py-sdk 'in' requirement denies America/New_York with the rule id" \
  --has "$DENIED" --has "policies/time-zones.yaml#/tools/get_current_time/require/0" --lacks '"timezone": "America' \
  -- "${PY[@]}" "${AGENT[@]}" --expect-error --call time__get_current_time --args '{"timezone":"America/New_York"}'
check "py-sdk rules-style rule denies convert_time to an unapproved zone" \
  --has "$DENIED" --has "Only UTC, Europe/Paris and Asia/Tokyo" --has "approved target zone" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call time__convert_time --args '{"source_timezone":"UTC","time":"12:00","target_timezone":"America/New_York"}'
check "py-sdk rules-style rule allows convert_time to an approved zone" --has "Asia/Tokyo" --has "isError=False" \
  -- "${PY[@]}" "${OPS[@]}" --call time__convert_time --args '{"source_timezone":"UTC","time":"12:00","target_timezone":"Asia/Tokyo"}'
check "py-sdk nonexistent time tool is Unknown tool" --has "Unknown tool: time__nope" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call time__nope
drain   # the connections above are open now
jcheck "/status: the gateway speaks 2026-07-28 to mcp-server-time (it offers it), 2025-11-25 to server-everything" \
  "$(curl -sS --max-time 10 "$ADMIN/status")" \
  "{x['name']: x['protocols'] for x in j['servers']}.get('time') == ['2026-07-28'] and {x['name']: x['protocols'] for x in j['servers']}.get('everything') == ['2025-11-25']"

section "/mcp/<server> endpoints, Python SDK"
check "py-sdk /mcp/files lists unprefixed names" --has "  - read_text_file  " --lacks "files__" --lacks "move_file" \
  -- "${PY[@]}" --url "$GW/mcp/files" --token "$AGENT_TOKEN" --call read_text_file --args "{\"path\":\"$FSROOT/hello.txt\"}"
check "py-sdk /mcp/files traversal denied" --has "$DENIED" --lacks "$SECRET_WORD" \
  -- "${PY[@]}" --url "$GW/mcp/files" --token "$AGENT_TOKEN" --expect-error --call read_text_file --args "{\"path\":\"$FSROOT/../outside.txt\"}"
check "py-sdk /mcp/everything call" --has '"Echo: single server"' --lacks "everything__" --lacks "  - get-env  " \
  -- "${PY[@]}" --url "$GW/mcp/everything" --token "$OPS_TOKEN" --call echo --args '{"message":"single server"}'
check "py-sdk /mcp/everything-sse denial" --has "$DENIED" \
  -- "${PY[@]}" --url "$GW/mcp/everything-sse" --token "$OPS_TOKEN" --expect-error --call echo --args '{"message":"password"}'
check "py-sdk /mcp/time call" --has '"timezone": "Europe/Paris"' --lacks "time__" \
  -- "${PY[@]}" --url "$GW/mcp/time" --token "$AGENT_TOKEN" --call get_current_time --args '{"timezone":"Europe/Paris"}'
check "py-sdk /mcp/time with a bad token fails (401)" --rc fail --has "unauthorized: unknown token" \
  -- "${PY[@]}" --url "$GW/mcp/time" --token "$BAD_TOKEN"

# --- the official conformance suite ----------------------------------------------------------
# @modelcontextprotocol/conformance runs its server scenarios against server-everything directly,
# then through /mcp/everything with a grant to all of it (tools, resources "*", prompts "*").
# Every scenario that passes directly must pass through the gateway (those that fail directly
# need the suite's own test server: shared/peers/conformance-baseline-everything.yml).
# Two scenarios "pass" directly only because server-everything answers a call to a tool it does
# not have (the suite's test_simple_text, test_error_handling) with an isError result, which the
# suite accepts; the gateway answers JSON-RPC -32602 "Unknown tool: <name>" (DESIGN.md §3, the
# spec's own example). For those the gateway's failure must be exactly that.
# The suite has no option for a header, so a preload adds the bearer token to its client's
# fetch() calls to the gateway's URL (and to nothing else).
section "official MCP conformance suite: server scenarios directly vs through /mcp/everything"
CONF=$WORK/conformance; mkdir -p "$CONF"
cat >"$CONF/bearer.cjs" <<'JSEOF'
// Preloaded into the conformance suite (node --require): the gateway's bearer token on every
// fetch() to GATEHOUSE_CONFORMANCE_URL. The suite itself cannot send a header.
const token = process.env.GATEHOUSE_CONFORMANCE_TOKEN, base = process.env.GATEHOUSE_CONFORMANCE_URL;
if (token && base && typeof globalThis.fetch === "function") {
  const inner = globalThis.fetch;
  globalThis.fetch = (input, init = {}) => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    if (url.startsWith(base)) {
      const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
      if (!headers.has("authorization")) headers.set("authorization", "Bearer " + token);
      init = { ...init, headers };
    }
    return inner(input, init);
  };
}
JSEOF
conformance() {  # conformance LABEL URL [TOKEN]: results in $CONF/LABEL, the log in $LOGS
  ( cd "$PEERS_DIR/npm" && env HOME="$WORK/home" GATEHOUSE_CONFORMANCE_URL="$2" GATEHOUSE_CONFORMANCE_TOKEN="${3:-}" \
      NODE_OPTIONS="--require $CONF/bearer.cjs" timeout -k 5 600 "$PEERS_NODE22" "$PEERS_CONFORMANCE_JS" server --url "$2" -o "$CONF/$1" ) \
    >"$LOGS/conformance-$1.log" 2>&1
  echo "=== conformance $1 ($2): exit $?" >>"$CLIENT_LOG"; sed -n '/=== SUMMARY ===/,$p' "$LOGS/conformance-$1.log" >>"$CLIENT_LOG"
}
conformance direct "http://127.0.0.1:$HTTP_PORT/mcp"
conformance gateway "$GW/mcp/everything" "$CONFORMANCE_TOKEN"
cat >"$CONF/compare.py" <<'PYEOF'
import glob, json, os, re, sys
# compare.py DIRECT GATEWAY: one line per scenario run directly, "<name>\t<direct>\t<gateway>"
# (pass | fail | missing): a scenario passes with at least one check passed and none failed.
def results(d):
    out = {}
    for f in glob.glob(os.path.join(d, "*", "checks.json")):
        m = re.match(r"server-(.+)-\d{4}-\d\d-\d\dT", os.path.basename(os.path.dirname(f)))
        if not m:
            continue
        try:
            checks = json.load(open(f))
        except Exception:
            out[m.group(1)] = "fail"; continue
        ok = sum(c.get("status") == "SUCCESS" for c in checks); bad = sum(c.get("status") == "FAILURE" for c in checks)
        out[m.group(1)] = "pass" if ok > 0 and bad == 0 else "fail"
    return out
a, b = results(sys.argv[1]), results(sys.argv[2])
for name in sorted(a):
    print("%s\t%s\t%s" % (name, a[name], b.get(name, "missing")))
PYEOF
"$PEERS_PY" "$CONF/compare.py" "$CONF/direct" "$CONF/gateway" >"$CONF/compare.tsv" 2>>"$LOGS/conformance-direct.log"
ndirect=$(awk -F'\t' '$2=="pass"' "$CONF/compare.tsv" | wc -l)
result "conformance: the suite ran against server-everything directly ($ndirect scenarios pass)" \
  "$([ "$ndirect" -ge 10 ] || echo "only $ndirect scenarios pass directly (expected at least 10)")" "$(tail -n 40 "$LOGS/conformance-direct.log")"
declare -A CONF_UNKNOWN_TOOL=([tools-call-simple-text]=test_simple_text [tools-call-error]=test_error_handling)
while IFS=$'\t' read -r name direct gateway; do
  unknown=${CONF_UNKNOWN_TOOL[$name]:-}
  if [ "$direct" = pass ] && [ -n "$unknown" ] && [ "$gateway" != pass ]; then
    out=$(cat "$CONF"/gateway/server-"$name"-*/checks.json 2>/dev/null | head -c 3000)
    result "conformance $name: server-everything lacks $unknown; the gateway answers Unknown tool (-32602)" \
      "$([[ $out == *"-32602: Unknown tool: $unknown"* ]] || echo "passes directly, $gateway through the gateway, not for Unknown tool")" "$out"
  elif [ "$direct" = pass ]; then
    why=""; [ "$gateway" = pass ] || why="passes directly, $gateway through the gateway"
    result "conformance $name: passes directly and through the gateway" "$why" \
      "$(cat "$CONF"/gateway/server-"$name"-*/checks.json 2>/dev/null | head -c 3000)"
  elif [ "$gateway" = pass ]; then
    echo "      (conformance $name fails directly, passes through the gateway)"
  fi
done <"$CONF/compare.tsv"

section "server-to-client requests (sampling, elicitation, roots) through the gateway, Python SDK"
# A client built on the SDK's own callbacks: it answers sampling, elicitation and roots, and
# prints what it was asked. server-everything registers its trigger tools only for a client
# (here: the gateway's upstream connection) that declares those capabilities.
ASKER=$WORK/asker.py
cat >"$ASKER" <<'PYEOF'
import asyncio, json, sys
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
url, token, tool, args, answer = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5] == "answer"
asked = []
async def sampling(ctx, params):
    asked.append("sampling")
    return types.CreateMessageResult.model_validate({"role": "assistant", "content": {"type": "text", "text": "a relayed model answer"}, "model": "interop-model", "stopReason": "endTurn"})
async def elicitation(ctx, params):
    asked.append("elicitation")
    return types.ElicitResult.model_validate({"action": "accept", "content": {"name": "Ada Relayed"}})
async def roots(ctx):
    asked.append("roots")
    return types.ListRootsResult.model_validate({"roots": [{"uri": "file:///interop/relayed-root", "name": "relayed"}]})
async def main():
    http = create_mcp_http_client(headers={"Authorization": "Bearer " + token})
    callbacks = dict(sampling_callback=sampling, elicitation_callback=elicitation, list_roots_callback=roots) if answer else {}
    async with Client(streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=30, **callbacks) as c:
        r = await c.call_tool(tool, args)
        print("asked:", ",".join(asked) or "nothing")
        print("isError=%s" % bool(r.is_error))
        print(json.dumps(r.model_dump(by_alias=True, mode="json", exclude_none=True)))
asyncio.run(main())
PYEOF
ASK=(env HOME="$WORK/home" "$PEERS_PY" "$ASKER" "$GW/mcp" "$OPS_TOKEN")
# One at a time (drain before each): the checks share the ops grant's upstream connection, and a
# request an upstream sends on its shared stream (server-everything's roots/list) is relayed only
# while exactly one call is in progress on that connection (docs/gateway.md).
check "py-sdk sampling/createMessage reaches the calling client, its answer goes back upstream" \
  --has "asked: sampling" --has "a relayed model answer" --has "isError=False" \
  -- "${ASK[@]}" everything__trigger-sampling-request '{"prompt":"hello","maxTokens":10}' answer
drain
check "py-sdk elicitation/create reaches the calling client, its answer goes back upstream" \
  --has "asked: elicitation" --has "Ada Relayed" --has "isError=False" \
  -- "${ASK[@]}" everything__trigger-elicitation-request '{}' answer
drain
check "py-sdk roots/list reaches the calling client, its answer goes back upstream" \
  --has "asked: roots" --has "file:///interop/relayed-root" \
  -- "${ASK[@]}" everything__get-roots-list '{}' answer
drain
check "py-sdk sampling from the legacy SSE upstream (no per-call stream: the one call in progress) reaches the calling client" \
  --has "asked: sampling" --has "a relayed model answer" --has "isError=False" \
  -- "${ASK[@]}" everything-sse__trigger-sampling-request '{"prompt":"over sse","maxTokens":10}' answer
drain
check "py-sdk a client without the sampling capability is never asked (the upstream is refused)" \
  --has "asked: nothing" --has "the client does not support sampling/createMessage" --lacks "a relayed model answer" \
  -- "${ASK[@]}" everything__trigger-sampling-request '{"prompt":"hello","maxTokens":10}' no

section "resources and prompts under a narrow grant (one resource pattern, one prompt), Python SDK"
# The agent grant reaches server-everything's dynamic text resources and its simple-prompt only.
READER=$WORK/reader.py
cat >"$READER" <<'PYEOF'
import asyncio, json, sys
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
url, token, action, *rest = sys.argv[1:]
async def main():
    http = create_mcp_http_client(headers={"Authorization": "Bearer " + token})
    async with Client(streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=30) as c:
        try:
            if action == "lists":
                for r in (await c.list_resources()).resources: print("resource", r.uri)
                for t in (await c.list_resource_templates()).resource_templates: print("template", t.uri_template)
                for p in (await c.list_prompts()).prompts: print("prompt", p.name)
                print("listed")
            elif action == "read":
                r = await c.read_resource(rest[0])
                print(json.dumps(r.model_dump(by_alias=True, mode="json", exclude_none=True)))
            elif action == "get":
                r = await c.get_prompt(rest[0], json.loads(rest[1]) if len(rest) > 1 else None)
                print(json.dumps(r.model_dump(by_alias=True, mode="json", exclude_none=True)))
        except MCPError as e:
            print("JSON-RPC error code=%s message=%r" % (e.code, e.error.message))
asyncio.run(main())
PYEOF
RD=(env HOME="$WORK/home" "$PEERS_PY" "$READER" "$GW/mcp" "$AGENT_TOKEN")
check "py-sdk narrow grant: lists hold only the granted pattern's template and the granted prompt" \
  --has "template demo://resource/dynamic/text/{resourceId}" --has "prompt everything__simple-prompt" --has "listed" \
  --lacks "resource demo://resource/static" --lacks "dynamic/blob" --lacks "args-prompt" --lacks "resource-prompt" \
  -- "${RD[@]}" lists
check "py-sdk narrow grant: a resource of the granted pattern reads" --has '"uri": "demo://resource/dynamic/text/7"' --has '"text"' \
  -- "${RD[@]}" read demo://resource/dynamic/text/7
check "py-sdk narrow grant: a resource outside the pattern is 'Resource not found' (-32002)" \
  --has "code=-32002" --has "Resource not found" --lacks "blob" \
  -- "${RD[@]}" read demo://resource/static/document/architecture.md
check "py-sdk narrow grant: the granted prompt is got" --has '"messages"' --lacks "JSON-RPC error" \
  -- "${RD[@]}" get everything__simple-prompt
check "py-sdk narrow grant: another prompt is 'Unknown prompt' (-32602)" \
  --has "code=-32602" --has "Unknown prompt: everything__args-prompt" \
  -- "${RD[@]}" get everything__args-prompt '{"city":"Paris"}'

section "upstream content passes through unchanged (Python SDK validates it)"
check "py-sdk image content (get-tiny-image) relayed" --has '"type": "image"' --has '"mimeType": "image/png"' \
  -- "${PY[@]}" "${OPS[@]}" --call everything__get-tiny-image
check "py-sdk structuredContent (get-structured-content) relayed" --has '"structuredContent"' --has "isError=False" \
  -- "${PY[@]}" "${OPS[@]}" --call everything__get-structured-content --args '{"location":"New York"}'
check "py-sdk resource links (get-resource-links) relayed" --has '"type": "resource_link"' \
  -- "${PY[@]}" "${OPS[@]}" --call everything__get-resource-links --args '{"count":2}'

section "upstream restarts and crashes"
stop_peer() {  # stop_peer NAME: kill one peer started by start-servers.sh
  local pid; pid=$(cat "$RUN/logs/$1.pid")
  kill "$pid"; for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}
start_peers() {  # start-servers.sh starts again whichever of its peers is not running
  EVERYTHING_HTTP_PORT=$HTTP_PORT EVERYTHING_SSE_PORT=$SSE_PORT WWW_PORT=$WWW_PORT \
    bash "$PEERS_KIT/start-servers.sh" "$RUN" >>"$LOGS/start-servers.log" 2>&1
}
stop_peer everything-sse
check "py-sdk tools/list with the SSE upstream down: its tools left out, the others listed" \
  --has "  - everything__echo  " --has "  - files__read_text_file  " --has "  - time__get_current_time  " --lacks "everything-sse__" \
  -- "${PY[@]}" "${OPS[@]}"
check "py-sdk call to the down SSE upstream is an error, not a hang" --has "JSON-RPC error" --lacks "isError=False" \
  -- "${PY[@]}" "${OPS[@]}" --expect-error --call everything-sse__echo --args '{"message":"down"}'
drain
stop_peer everything-http
start_peers
check "py-sdk call after server-everything (HTTP) restarted: upstream session re-initialised" --has '"Echo: after restart"' \
  -- "${PY[@]}" "${OPS[@]}" --call everything__echo --args '{"message":"after restart"}'
check "py-sdk call after server-everything (SSE) came back: upstream reconnected" --has '"Echo: after sse restart"' \
  -- "${PY[@]}" "${OPS[@]}" --call everything-sse__echo --args '{"message":"after sse restart"}'
drain
for c in $(ps -o pid= --ppid "$GW_PID"); do
  if ps -o args= -p "$c" | grep -q -F "$PEERS_FILESYSTEM_JS"; then kill -KILL "$c"; fi
done
sleep 0.5
check "py-sdk call after the filesystem child was killed: a new child answers" --has "hello from fsroot" \
  -- "${PY[@]}" "${AGENT[@]}" --call files__read_text_file --args "{\"path\":\"$FSROOT/hello.txt\"}"

# --- MCP Inspector CLI -----------------------------------------------------------------------

# The two Inspector generations differ in how they report what the gateway answered:
#   1.x exits 0 on an isError result and prints the server's "Unknown tool" error;
#   2.x exits 5 ("tool_is_error") on an isError result, refuses an unlisted tool itself
#   ("tool_not_found", before any request), and on a 401 starts OAuth unless told
#   --stored-auth-only (then exits 3, "auth_required").
inspector_suite() {  # inspector_suite LABEL DENY_RC UNKNOWN_TEXT BAD_TOKEN_FLAGS -- CMD...
  local label=$1 deny_rc=$2 unknown=$3 bad_flags=$4; shift 5
  local A=(--transport http --header "Authorization: Bearer $OPS_TOKEN")
  check "$label tools/list over /mcp" --has '"everything__echo"' --has '"everything-sse__echo"' --has '"files__read_text_file"' \
    --has '"time__get_current_time"' --lacks '"everything__get-env"' --lacks '"files__move_file"' \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/list
  check "$label call via Streamable HTTP upstream" --has "sum of 4 and 5 is 9" \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/call --tool-name everything__get-sum --tool-arg a=4 b=5
  check "$label call via SSE upstream" --has "Echo: via sse" \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/call --tool-name everything-sse__echo --tool-arg "message=via sse"
  check "$label call via stdio upstream (filesystem)" --has "hello from fsroot" \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/call --tool-name files__read_text_file --tool-arg "path=$FSROOT/hello.txt"
  check "$label call via stdio upstream (time)" --has '"timezone\": \"Asia/Tokyo' \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/call --tool-name time__get_current_time --tool-arg timezone=Asia/Tokyo
  check "$label deny_if denial (HTTP upstream) shows 'denied by policy' and the rule id" --rc "$deny_rc" \
    --has "$DENIED" --has "everything-baseline.yaml#/tools/echo/deny_if/" --has '"isError": true' \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/call --tool-name everything__echo --tool-arg "message=password"
  check "$label deny_if denial (SSE upstream)" --rc "$deny_rc" --has "$DENIED" --has "echo/deny_if/" --lacks "Echo:" \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/call --tool-name everything-sse__echo --tool-arg "message=my password"
  check "$label path traversal denied (stdio filesystem)" --rc "$deny_rc" --has "$DENIED" --has "read_text_file/require/0" --lacks "$SECRET_WORD" \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/call --tool-name files__read_text_file --tool-arg "path=$FSROOT/../outside.txt"
  check "$label time zone 'in' denial (stdio time)" --rc "$deny_rc" --has "$DENIED" --has "get_current_time/require/0" \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/call --tool-name time__get_current_time --tool-arg timezone=America/New_York
  check "$label unknown tool is an error" --rc fail --has "$unknown" \
    -- "$@" "$GW/mcp" "${A[@]}" --method tools/call --tool-name everything__no-such-tool
  # shellcheck disable=SC2086
  check "$label bad token is refused (401)" --rc fail --has "unauthorized: unknown token" --lacks '"everything__echo"' \
    -- "$@" "$GW/mcp" --transport http --header "Authorization: Bearer $BAD_TOKEN" $bad_flags --method tools/list
  check "$label /mcp/time (single server) lists unprefixed names" --has '"get_current_time"' --lacks "time__" --lacks '"convert_time"' \
    -- "$@" "$GW/mcp/time" --transport http --header "Authorization: Bearer $AGENT_TOKEN" --method tools/list
  check "$label /mcp/files (single server) call" --has "hello from fsroot" \
    -- "$@" "$GW/mcp/files" --transport http --header "Authorization: Bearer $AGENT_TOKEN" \
    --method tools/call --tool-name read_text_file --tool-arg "path=$FSROOT/hello.txt"
}

section "MCP Inspector CLI $(node -e "console.log(require('$PEERS_DIR/inspector/node_modules/@modelcontextprotocol/inspector/package.json').version)" 2>/dev/null) (Node $(node --version))"
inspector_suite "inspector 1.x" 0 "Unknown tool: everything__no-such-tool" "" -- "${INSP1[@]}"
if [ ${#INSP2[@]} -gt 0 ]; then
  section "MCP Inspector CLI $("$PEERS_NODE22" -e "console.log(require('$PEERS_DIR/inspector2/node_modules/@modelcontextprotocol/inspector/package.json').version)" 2>/dev/null) (Node $("$PEERS_NODE22" --version))"
  inspector_suite "inspector 2.x" 5 "Tool 'everything__no-such-tool' not found" "--stored-auth-only" -- "${INSP2[@]}"
  check "inspector 2.x --protocol-era auto (server/discover, then 2026-07-28 without a session)" --has "sum of 6 and 7 is 13" \
    -- "${INSP2[@]}" "$GW/mcp" --transport http --header "Authorization: Bearer $OPS_TOKEN" --protocol-era auto \
    --method tools/call --tool-name everything__get-sum --tool-arg a=6 b=7
else
  echo "(inspector 2.x not installed in $PEERS_DIR: skipped)"
fi

# --- shutdown --------------------------------------------------------------------------------

section "gateway shutdown"
note_children
LIVE_CHILDREN=$(ps -o pid= --ppid "$GW_PID" 2>/dev/null | tr '\n' ' ')
nchildren=$(echo "$LIVE_CHILDREN" | wc -w)
# Both grants used both stdio servers; DESIGN.md §3: no child is shared between two grants.
result "one stdio child per grant and stdio server (4)" "$([ "$nchildren" -eq 4 ] || echo "found $nchildren children: $(ps -o pid=,args= --ppid "$GW_PID" | cut -c1-120)")"
kill -TERM "$GW_PID"
stopped=""
for _ in $(seq 1 75); do kill -0 "$GW_PID" 2>/dev/null || { stopped=1; break; }; sleep 0.2; done
wait "$GW_PID" 2>/dev/null; GW_RC=$?
result "SIGTERM stops the gateway within 15 s (exit 0)" \
  "$([ -n "$stopped" ] || echo "still running after 15 s"; [ -z "$stopped" ] || [ "$GW_RC" -eq 0 ] || echo "exit $GW_RC")"
[ -n "$stopped" ] && GW_PID=""
sleep 0.5
left=""; for c in $LIVE_CHILDREN; do kill -0 "$c" 2>/dev/null && left+=" $c($(ps -o comm= -p "$c"))"; done
result "stdio children are gone after shutdown" "$([ -z "$left" ] || echo "still running:$left")"
result "the gateway log has no panic" "$(! grep -n -i -m3 'panicked' "$GW_LOG" || true)"

# --- evidence --------------------------------------------------------------------------------

# The bundle of this run's calls and commit, opened in headless Chromium (rendered DOM checked,
# screenshot kept as an artefact in target/interop-artifacts/).
section "evidence bundle (headless Chromium)"
ART=$ROOT/target/interop-artifacts
mkdir -p "$ART"
TODAY_UTC=$(date -u +%F); TOMORROW_UTC=$(date -u -d tomorrow +%F)
BUNDLE=$WORK/bundle
check "gatehouse evidence bundle over this run's calls" --has "index.html" --has "calls.csv" --has "MANIFEST.json" \
  -- "$BIN" evidence bundle --repo "$REPO" --data-dir "$WORK/data" --since "$TODAY_UTC" --until "$TOMORROW_UTC" --out "$BUNDLE"
drain
calls_rows=$(awk -F'\t' '/calls.csv/ {print $2}' <"$RES/$SEQ.out" 2>/dev/null | head -1)
result "the calls export is not empty ($calls_rows)" "$([[ ${calls_rows%% *} =~ ^[1-9][0-9]*$ ]] || echo "calls.csv: '${calls_rows}'")"
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -n "$CHROME" ] && [ -f "$BUNDLE/index.html" ]; then
  # One profile directory per instance: the two checks run in parallel.
  CH=("$CHROME" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage)
  check "index.html renders in headless Chromium (populations, manifest, controls)" \
    --has "MANIFEST.json" --has "A.8.32" --has "A.5.18" --has "suppliers" --lacks "ERR_FILE_NOT_FOUND" \
    -- "${CH[@]}" --user-data-dir="$WORK/chrome-dom" --dump-dom "file://$BUNDLE/index.html"
  check "screenshot of index.html saved" --rc 0 \
    -- bash -c '"${@:2}" && [ "$(stat -c %s "$1")" -gt 10000 ]' _ "$ART/evidence-index.png" \
       "${CH[@]}" --user-data-dir="$WORK/chrome-shot" --window-size=1280,1800 --screenshot="$ART/evidence-index.png" "file://$BUNDLE/index.html"
  drain
  cp -r "$BUNDLE" "$ART/evidence-bundle" 2>/dev/null || true
  echo "interop: evidence artefacts in $ART (evidence-index.png, evidence-bundle/)"
else
  result "headless Chromium available for the evidence check" "chromium not found (install the Debian package chromium)"
fi

finish
