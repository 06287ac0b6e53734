#!/usr/bin/env bash
# Talks to a running `gatehouse serve --repo examples/policy-repo` with curl: an allowed call, a
# denied call, a hidden tool, and a bad token.   bash scripts/demo.sh [http://127.0.0.1:8080]
set -euo pipefail
URL=${1:-http://127.0.0.1:8080}/mcp
TOKEN=${TOKEN:-demo-token-alice}
hdr=(-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream')

rpc() {  # rpc SESSION JSON
  curl -sS "$URL" "${hdr[@]}" -H "Authorization: Bearer $TOKEN" -H "Mcp-Session-Id: $1" -d "$2"
  echo
}

session=$(curl -sS -D - -o /dev/null "$URL" "${hdr[@]}" -H "Authorization: Bearer $TOKEN" \
  -d '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"demo","version":"1"}}}' \
  | tr -d '\r' | awk 'tolower($1)=="mcp-session-id:" {print $2}')
echo "== session $session (as $TOKEN)"

echo "== tools/list: what this grant could be allowed to call (hidden and blocked tools are absent)"
rpc "$session" '{"jsonrpc":"2.0","id":1,"method":"tools/list"}' \
  | python3 -c 'import json,sys; print("\n".join(t["name"] for t in json.load(sys.stdin)["result"]["tools"]))'

echo "== allowed: read a file inside /srv/projects"
rpc "$session" '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"files__read_file","arguments":{"path":"/srv/projects/app/README.md"}}}'

echo "== denied by an argument rule: a charge over \$500"
rpc "$session" '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"payments__create_charge","arguments":{"amount":90000,"currency":"usd"}}}'

echo "== hidden tool: as if it did not exist"
rpc "$session" '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"payments__transfer_funds","arguments":{"amount":1,"destination":"x"}}}'

echo "== a forged token"
curl -sS -o /dev/null -w '%{http_code}\n' "$URL" "${hdr[@]}" -H 'Authorization: Bearer forged' -d '{}'
