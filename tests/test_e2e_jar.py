"""The jar serves the whole host: after a cookie challenge, a client's requests that stay on the direct path
(Claude Code's settings calls, Codex's WebSocket upgrades) carry its scope's cookies, and a challenge to one of
them leaves its cookies for the client's own retry. A real mitmdump, the fake upstream's Cloudflare-style
challenge, litellm replaying the challenged LLM request."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from conftest import REDIRECT, MitmdumpProc, codex_ws, ws_responses
from e2e_helpers import CLAUDE_UA, claude_body, claude_headers, wait_memories, wait_until
from memproxy.wire import MARK
from mitmproxy import http, io
from test_e2e_clients import claude, codex
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.e2e

CODEX_UA = "codex_exec/0.169.0 (Linux; x86_64)"  # as conftest's codex_ws sends it
SETTINGS = "/api/claude_code/settings"


def start(mitmdump, upstream, tmp_path: Path, **options: str) -> MitmdumpProc:
    """Regular mode, the API hosts redirected to the fake before the addon sees them (as in test_e2e_sdk)."""
    opts = {
        "memory_db": str(tmp_path / "memories.db"),
        "memory_outbox": str(tmp_path / "outbox.db"),
        "memory_cookies": str(tmp_path / "cookies.json"),
        "memory_hosts": "*",
        **options,
    }
    return mitmdump(upstream=upstream, options=opts, addon=None, extra_scripts=[REDIRECT, "addons/memory.py"])


def cookies_at(upstream, path: str, host: str = "api.") -> list[str | None]:
    """The Cookie header of each request to `path` whose Host starts with `host`, in order."""
    return [r.headers.get("cookie") for r in upstream.requests if r.path == path and r.headers["host"].startswith(host)]


def anthropic_host(proc: MitmdumpProc, user_agent: str) -> httpx.Client:
    """A client of api.anthropic.com through `proc` that, as Claude Code, sends a request again on a 307."""
    return httpx.Client(base_url="https://api.anthropic.com", proxy=proc.proxy_url, verify=proc.ssl_context(),
                        trust_env=False, timeout=60, headers={"user-agent": user_agent}, follow_redirects=True)


def test_settings_calls_carry_the_jar_of_their_clients_scope(mitmdump, upstream, tmp_path):
    upstream.require_cookie = "cf_clearance"
    token = f"cf_clearance={upstream.cookie_token}"
    proc = start(mitmdump, upstream, tmp_path, save_stream_file=str(tmp_path / "flows.mitm"))
    project = tmp_path / "proj"
    project.mkdir()
    with anthropic_host(proc, CLAUDE_UA) as claude:
        # Claude Code's LLM request is challenged and replayed through the SDK path (scope project:proj).
        r = claude.post("/v1/messages", json=claude_body(str(project), "hi", stream=False), headers=claude_headers())
        assert r.status_code == 200, proc.log_text()
        assert claude.get(SETTINGS).json() == {}
        assert claude.get("/api/claude_code/policy_limits", headers={"cookie": "theme=dark"}).status_code == 200
        assert claude.get(SETTINGS, headers={"cookie": "cf_clearance=stale"}).status_code == 403
    assert token in (cookies_at(upstream, SETTINGS)[0] or ""), proc.log_text()
    assert cookies_at(upstream, "/api/claude_code/policy_limits") == [f"theme=dark; {token}"]  # the client's first
    assert cookies_at(upstream, SETTINGS)[1] == "cf_clearance=stale"  # a name the client sends is not repeated

    # Another client, in another scope, is not given that scope's cookie: its settings call is challenged.
    upstream.require_cookie = None
    with anthropic_host(proc, "other-tool/1.0") as other:
        body = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        assert other.post("/v1/messages", json=body, headers={"x-memory-user-id": "someone-else"}).status_code == 200
        upstream.require_cookie = "cf_clearance"
        assert other.get(SETTINGS).status_code == 403
    assert cookies_at(upstream, SETTINGS)[-1] is None

    proc.stop()
    assert upstream.cookie_token not in proc.log_text()
    with (tmp_path / "flows.mitm").open("rb") as f:
        flows = [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]
    sent = [flow for flow in flows if flow.request.path.startswith("/api/")]
    assert len(sent) == 4 and all(flow.request.headers["cookie"] == MARK for flow in sent[:3])  # hidden once sent
    assert all(upstream.cookie_token not in f"{flow.comment}{flow.metadata}" for flow in flows)


def test_a_host_that_never_challenged_gets_no_cookie(mitmdump, upstream, tmp_path):
    upstream.require_cookie = "cf_clearance"
    proc = start(mitmdump, upstream, tmp_path)
    with anthropic_host(proc, CLAUDE_UA) as claude:
        assert claude.post("/v1/messages", json=claude_body("/tmp/proj", "hi"), headers=claude_headers()).status_code == 200
        assert claude.get(SETTINGS).status_code == 200
    assert f"cf_clearance={upstream.cookie_token}" in (cookies_at(upstream, SETTINGS)[-1] or "")

    # The same client and scope on another host (the fake again, named `localhost`): nothing is added.
    upstream.require_cookie = None
    other = f"http://localhost:{upstream.port}"
    with httpx.Client(proxy=proc.proxy_url, trust_env=False, timeout=60, headers=claude_headers(),
                      follow_redirects=True) as claude:
        assert claude.post(f"{other}/v1/messages", json=claude_body("/tmp/proj", "hi", stream=False)).status_code == 200
        assert claude.get(f"{other}{SETTINGS}").status_code == 200
    seen = [r.headers.get("cookie") for r in upstream.requests if r.headers["host"].startswith("localhost")]
    assert seen == [None, None]


def test_websocket_upgrade_carries_the_cookie_of_a_challenged_llm_request(mitmdump, upstream, tmp_path):
    upstream.require_cookie = "cf_clearance"
    proc = start(mitmdump, upstream, tmp_path)
    with httpx.Client(base_url="https://api.openai.com", proxy=proc.proxy_url, verify=proc.ssl_context(),
                      trust_env=False, timeout=60, headers={"user-agent": CODEX_UA}, follow_redirects=True) as codex:
        r = codex.post("/v1/responses", json={"model": "gpt-5.1-codex", "input": "hi"},
                       headers={"authorization": "Bearer sk-e2e"})
        assert r.status_code == 200, proc.log_text()
    events = ws_responses(proc, via="proxy")
    assert events[-1]["type"] == "response.completed", events
    upgrade = [r for r in upstream.requests if r.method == "GET" and r.path == "/v1/responses"]
    assert f"cf_clearance={upstream.cookie_token}" in (upgrade[-1].headers.get("cookie") or "")
    assert upstream.cookie_token not in proc.log_text()


def test_a_challenged_websocket_upgrade_leaves_its_cookie_for_the_retry(mitmdump, upstream, tmp_path):
    upstream.require_cookie = "cf_clearance"
    proc = start(mitmdump, upstream, tmp_path)
    with pytest.raises(InvalidStatus) as refused:
        codex_ws(proc, via="proxy")
    assert refused.value.response.status_code == 403
    events = ws_responses(proc, via="proxy")  # Codex's own retry
    assert events[-1]["type"] == "response.completed", proc.log_text()
    upgrades = [r.headers.get("cookie") for r in upstream.requests if r.path == "/v1/responses"]
    assert upgrades == [None, f"cf_clearance={upstream.cookie_token}"]

    jar = tmp_path / "cookies.json"  # kept like the SDK path's cookies: a private file, across restarts
    assert wait_until(lambda: jar.exists() and upstream.cookie_token in jar.read_text(), 10)
    assert stat.S_IMODE(jar.stat().st_mode) == 0o600
    assert upstream.cookie_token not in proc.log_text()
    proc.restart()
    assert ws_responses(proc, via="proxy")[-1]["type"] == "response.completed", proc.log_text()


def test_real_claude_code_settings_calls_carry_the_cookie(mitmdump, upstream, tmp_path):
    """Real Claude Code behind a challenging host: once its first LLM request met the challenge, its settings
    calls carry the cookie (the second run's too: the client is known by its user agent)."""
    upstream.require_cookie = "cf_clearance"
    proc = start(mitmdump, upstream, tmp_path)
    project = tmp_path / "proj"
    for prompt in ("first run", "second run"):
        assert upstream.reply in claude(proc, project, prompt, tmp_path / "home"), proc.log_text()
    first_llm = next(n for n, r in enumerate(upstream.requests) if r.path == "/v1/messages")
    later = [r.headers.get("cookie") for r in upstream.requests[first_llm:] if r.path.startswith("/api/claude_code/")]
    assert later and all(c == f"cf_clearance={upstream.cookie_token}" for c in later), proc.log_text()
    assert upstream.cookie_token not in proc.log_text()


def test_real_codex_over_its_websocket_behind_a_challenging_host(mitmdump, upstream, tmp_path):
    """Real Codex: its WebSocket upgrade meets the challenge, the cookie goes into its jar, Codex's own retry of the
    upgrade carries it, and the turn is answered and remembered."""
    upstream.require_cookie = "cf_clearance"
    proc = start(mitmdump, upstream, tmp_path)
    out = codex(proc, tmp_path / "proj", "Which port does the gateway use?", tmp_path / "home", wrap=True)
    assert upstream.reply in out, proc.log_text()
    upgrades = [r.headers.get("cookie") for r in upstream.requests if r.path == "/v1/responses" and r.method == "GET"]
    assert upgrades[0] is None and upgrades[-1] == f"cf_clearance={upstream.cookie_token}", upgrades
    stored = wait_memories(tmp_path / "memories.db", "project:proj")
    assert any("Which port does the gateway use?" in m for m in stored), proc.log_text()
    assert upstream.cookie_token not in proc.log_text()
