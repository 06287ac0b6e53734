#!/usr/bin/env python3
"""A real MCP client signing in through gatehouse's identity provider (scripts/sso-e2e.sh).

The OAuth work is all the official Python SDK's (`mcp` on PyPI, tested with 2.3.0):
`mcp.client.auth.OAuthClientProvider` on the Streamable HTTP transport reads gatehouse's 401,
fetches the RFC 9728 protected resource metadata it points at, then the authorization server's
metadata, registers a client (RFC 7591; or uses --client-id, registered beforehand), runs the authorization code flow with PKCE and the
resource indicator (RFC 8707), exchanges the code and retries with the access token.

This script only plays the person at the browser: its redirect handler follows the
authorization URL with a plain HTTP client (cookies kept, redirects followed by hand), fills in
the identity provider's sign-in form (login, password) and presses "Allow" on its consent form,
and stops at the redirect to the client's callback URL, whose code, state and iss the callback
handler gives back to the SDK.

  python client.py --url http://127.0.0.1:8080/mcp --login alice --password pw \
      --call everything__echo --args '{"message":"hi"}' [--call NAME --args JSON]...

Prints one JSON object on standard output:
  {"signed_in": true, "claims": {...the first access token's payload, unverified...},
   "final_claims": {...the last one's (after a step-up on 403 insufficient_scope)...},
   "tools": [names], "calls": [{"tool": ..., "ok": bool, "error": str|null, "text": str}],
   "steps": [what the browser did], "error": str|null}
Exit status: 0 when connected (whatever the calls gave), 1 when the sign-in or the connection
failed (the "error" says why).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlparse


class _Forms(HTMLParser):
    """The forms of a page: action, method and their inputs' default values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get").lower(), "fields": {}})
        elif tag in ("input", "button") and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")


class Browser:
    """What a person's browser does between the authorization URL and the callback."""

    def __init__(self, login: str, password: str, redirect_uri: str, log: list[str]) -> None:
        self.login, self.password, self.redirect_uri, self.log = login, password, redirect_uri, log
        self.result: dict[str, str] | None = None
        self.error: str | None = None

    async def authorize(self, url: str) -> None:
        import httpx2

        async with httpx2.AsyncClient(follow_redirects=False, timeout=20) as http:
            method, data = "GET", None
            for _ in range(20):
                if url.startswith(self.redirect_uri):
                    q = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
                    self.log.append("callback: " + ", ".join(sorted(q)))
                    if "error" in q:
                        self.error = f"authorization error: {q['error']}: {q.get('error_description', '')}"
                    self.result = q
                    return
                resp = await http.request(method, url, data=data)
                self.log.append(f"{method} {urlparse(url).path} -> {resp.status_code}")
                if resp.status_code in (301, 302, 303, 307, 308):
                    url, method, data = urljoin(url, resp.headers["location"]), "GET", None
                    continue
                if resp.status_code != 200:
                    self.error = f"{method} {url}: HTTP {resp.status_code}: {resp.text[:300]}"
                    return
                forms = _Forms()
                forms.feed(resp.text)
                if not forms.forms:
                    self.error = f"{url}: a page without a form: {resp.text[:300]}"
                    return
                form = forms.forms[0]
                fields = dict(form["fields"])
                if "login" in fields or "password" in fields:  # the sign-in page
                    fields.update(login=self.login, password=self.password)
                    self.log.append(f"sign in as {self.login}")
                else:  # the consent page: "Allow"
                    self.log.append("consent: allow")
                url, method, data = urljoin(url, form["action"] or url), form["method"].upper(), fields
            self.error = "too many redirects"


def _claims(token: str | None) -> dict[str, Any] | None:
    """The access token's payload, decoded without verification (for the test's report only)."""
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _header(token: str | None) -> dict[str, Any] | None:
    if not token or token.count(".") != 2:
        return None
    h = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))


def _leaves(e: BaseException) -> list[BaseException]:
    subs = getattr(e, "exceptions", None)
    if not subs:
        return [e]
    return [leaf for sub in subs for leaf in _leaves(sub)]


class MemoryStorage:
    """Tokens and the registered client, kept for this run only (every run signs in afresh)."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client

    async def set_client_info(self, client_info: Any) -> None:
        self.client = client_info


async def run(ns: argparse.Namespace) -> dict[str, Any]:
    from mcp import Client
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
    from mcp.shared.exceptions import MCPError

    out: dict[str, Any] = {"signed_in": False, "claims": None, "token_header": None, "tools": [], "calls": [], "error": None, "steps": []}
    redirect_uri = ns.redirect_uri
    browser = Browser(ns.login, ns.password, redirect_uri, out["steps"])
    storage = MemoryStorage()
    if ns.client_id:
        # A pre-registered client: the SDK skips registration when its storage has one.
        from mcp.shared.auth import OAuthClientInformationFull

        storage.client = OAuthClientInformationFull(
            client_id=ns.client_id,
            redirect_uris=[redirect_uri],
            token_endpoint_auth_method="none",
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        )

    async def redirect_handler(url: str) -> None:
        q = parse_qs(urlparse(url).query)
        out["authorization_request"] = {k: v[0] for k, v in q.items() if k in ("scope", "resource", "code_challenge_method", "response_type")}
        await browser.authorize(url)

    async def callback_handler() -> AuthorizationCodeResult:
        if browser.error or not browser.result or "code" not in browser.result:
            raise RuntimeError(browser.error or "no authorization code")
        r = browser.result
        return AuthorizationCodeResult(code=r["code"], state=r.get("state"), iss=r.get("iss"))

    oauth = OAuthClientProvider(
        server_url=ns.url,
        client_metadata=OAuthClientMetadata(
            client_name="gatehouse sso-e2e (Python SDK)",
            redirect_uris=[redirect_uri],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    client = Client(streamable_http_client(ns.url, http_client=create_mcp_http_client(auth=oauth)), mode="legacy", read_timeout_seconds=30)
    try:
        async with client:
            token = storage.tokens.access_token if storage.tokens else None
            out["signed_in"] = token is not None
            out["claims"] = _claims(token)
            out["token_header"] = _header(token)
            out["registered_client"] = storage.client.client_id if storage.client else None
            if ns.token_out and token:
                with open(ns.token_out, "w") as f:
                    f.write(token)
            out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            if ns.pause:
                # The test changes something (a commit) while this session is open, then says go.
                open(ns.pause + ".ready", "w").close()
                for _ in range(600):
                    if os.path.exists(ns.pause):
                        break
                    await asyncio.sleep(0.1)
            for name, args in ns.calls:
                entry: dict[str, Any] = {"tool": name, "ok": False, "error": None, "text": ""}
                try:
                    res = await client.call_tool(name, args)
                except MCPError as e:
                    entry["error"] = f"JSON-RPC {e.code}: {e.error.message}"
                else:
                    entry["ok"] = not res.is_error
                    entry["text"] = " ".join(getattr(c, "text", "") for c in res.content)
                    if res.is_error:
                        entry["error"] = entry["text"]
                out["calls"].append(entry)
            # The token in use at the end (another one if the SDK stepped up on a 403).
            final = storage.tokens.access_token if storage.tokens else None
            out["final_claims"] = _claims(final)
    except BaseException as e:  # noqa: BLE001 (connection, sign-in or HTTP failures, reported)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        out["error"] = "; ".join(f"{type(x).__name__}: {x}" for x in _leaves(e))
        if browser.error:
            out["error"] += f" (browser: {browser.error})"
        token = storage.tokens.access_token if storage.tokens else None
        out["signed_in"] = token is not None
        out["claims"] = _claims(token)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="gatehouse's Streamable HTTP endpoint (…/mcp)")
    p.add_argument("--login", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--redirect-uri", default="http://127.0.0.1:33418/callback", help="the client's callback (never listened on: the browser stops there)")
    p.add_argument("--client-id", help="a client registered at the provider beforehand (default: dynamic registration)")
    p.add_argument("--pause", help="after tools/list, create PAUSE.ready and wait (60 s at most) for PAUSE to exist before the calls")
    p.add_argument("--token-out", help="write the access token to this file (for the test's own checks)")
    p.add_argument("--call", action="append", default=[], help="tool to call (repeatable)")
    p.add_argument("--args", action="append", default=[], help="JSON arguments of the --call at the same position")
    ns = p.parse_args()
    ns.calls = [(name, json.loads(ns.args[i]) if i < len(ns.args) else {}) for i, name in enumerate(ns.call)]
    out = asyncio.run(run(ns))
    print(json.dumps(out, indent=2, sort_keys=True))
    return 1 if out["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
