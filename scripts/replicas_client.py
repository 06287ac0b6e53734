#!/usr/bin/env python3
"""Load client of the replicas test (scripts/replicas-test.sh): exactly --calls tools/call
requests, --concurrency at a time, each worker in an MCP session of its own (protocol
2025-11-25) through the load balancer at --url. Python's standard library only.

Every call carries an extra argument `probe_<n>`: the gateway records argument key paths (never
values), so the decision record of that very call can be found in the call log.

One line per answered call goes to --log (tab-separated `probe  verdict  rule`):
  ok           a tool result (allowed; the upstream answered)
  denied       a policy denial ("denied by policy: ... (rule R, ...)"); rule is R
A call without an answer (connection refused or reset, 502 from the load balancer while a
replica is down) is retried with a new probe; a 404 (the replica that held the session is gone,
the MCP spec's "session not found") opens a new session first. Both are counted and printed in
the summary (JSON on stdout) with the verdict counts."""

import argparse
import http.client
import json
import threading
import time
import urllib.parse
from collections import Counter

PROTOCOL = "2025-11-25"


class Gone(Exception):
    """The session is unknown to the replica that answered (HTTP 404)."""


class Unanswered(Exception):
    """No answer to this request: the call may or may not have been decided."""


def parse_reply(resp, body, want_id):
    ctype = resp.getheader("Content-Type", "")
    if ctype.startswith("text/event-stream"):
        for block in body.decode().split("\n\n"):
            data = "".join(l[5:].lstrip() for l in block.splitlines() if l.startswith("data:"))
            if data:
                msg = json.loads(data)
                if msg.get("id") == want_id:
                    return msg
        raise Unanswered("event stream ended without the response")
    return json.loads(body)


class Client:
    def __init__(self, args):
        self.args = args
        u = urllib.parse.urlsplit(args.url)
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path or "/mcp"
        self.lock = threading.Lock()
        self.stats = Counter()
        self.next_probe = 0
        self.log = open(args.log, "a", buffering=1)

    def probe(self):
        with self.lock:
            self.next_probe += 1
            return self.next_probe

    def count(self, what):
        with self.lock:
            self.stats[what] += 1

    def post(self, conn, session, msg):
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Authorization": "Bearer " + self.args.token,
            "MCP-Protocol-Version": PROTOCOL,
        }
        if session:
            headers["Mcp-Session-Id"] = session
        try:
            conn.request("POST", self.path, json.dumps(msg), headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Unanswered(str(e))
        if resp.status == 404 and session:
            raise Gone()
        if resp.status >= 500:
            raise Unanswered(f"HTTP {resp.status}")
        if resp.status not in (200, 202):
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
        return resp, body

    def open_session(self, conn):
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "replicas-client", "version": "1"}}}
        resp, _ = self.post(conn, None, init)
        session = resp.getheader("Mcp-Session-Id")
        if not session:
            raise RuntimeError("initialize answered without Mcp-Session-Id")
        self.post(conn, session, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        return session

    def call(self, conn, session, n):
        msg = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {
            "name": self.args.tool,
            "arguments": {"path": self.args.path, f"probe_{n}": 1}}}
        resp, body = self.post(conn, session, msg)
        reply = parse_reply(resp, body, n)
        if "error" in reply:
            return "error", str(reply["error"].get("code"))
        result = reply["result"]
        text = "".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")
        if result.get("isError") and text.startswith("denied by policy"):
            rule = text.rsplit("(rule ", 1)[-1].split(",", 1)[0] if "(rule " in text else ""
            return "denied", rule
        return ("tool_error" if result.get("isError") else "ok"), ""

    def worker(self, calls):
        deadline = time.monotonic() + self.args.give_up
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.args.timeout)
        session = None
        done = 0
        while done < calls and time.monotonic() < deadline:
            try:
                if session is None:
                    session = self.open_session(conn)
                n = self.probe()
                verdict, rule = self.call(conn, session, n)
                self.log.write(f"probe_{n}\t{verdict}\t{rule}\n")
                self.count(verdict)
                if verdict == "denied":
                    self.count("denied:" + rule)
                done += 1
            except Gone:
                self.count("session_gone")
                session = None
            except Unanswered:
                self.count("unanswered")
                conn.close()
                time.sleep(0.05)
            except Exception as e:  # an answer that breaks the protocol: report it, stop this worker
                self.count("protocol_error")
                print(f"worker: {e}", flush=True)
                return
        if done < calls:
            self.count("gave_up")

    def run(self):
        a = self.args
        shares = [a.calls // a.concurrency + (1 if i < a.calls % a.concurrency else 0) for i in range(a.concurrency)]
        threads = [threading.Thread(target=self.worker, args=(s,)) for s in shares if s]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = dict(self.stats)
        out["seconds"] = round(time.monotonic() - start, 3)
        print(json.dumps(out, sort_keys=True), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--tool", default="files__read_file")
    p.add_argument("--path", default="/srv/projects/app/README.md")
    p.add_argument("--timeout", type=float, default=20)
    p.add_argument("--give-up", type=float, default=120, help="seconds before a worker stops trying")
    Client(p.parse_args()).run()


if __name__ == "__main__":
    main()
