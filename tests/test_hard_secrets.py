"""Hard test: secrets. Distinctive fake credentials go through a real mitmdump; none of them persists.

The run: the openai and anthropic SDKs (Authorization, x-api-key), raw httpx with cookies and an
api-key header, Gemini with `?key=` and x-goog-api-key, a plain-HTTP request with proxy credentials,
Codex over WebSocket, the Supermemory Memory Router (the Supermemory key on the flow), and an upstream
cookie challenge that moves a scope onto the SDK path (the gateway's secret on the flow, the clearance
cookie in the jar). mitmdump runs with `-w` (save_stream_file), debug logging and flow_detail=4, which
prints every request's headers: Dumper prints a flow when it is finished, after redaction.

Out of scope: `proxy_debug` (raw protocol events), and headers upstream responses carry (`Set-Cookie`
is the client's: it is sent to the client after the same hooks, so it is neither changed nor redacted).
"""

from __future__ import annotations

import base64
import json
import stat
import uuid
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import REDIRECT, memproxy_client
from e2e_helpers import wait_memories, wait_until
from fakes import codex_request
from fakes.supermemory import FakeSupermemory
from memproxy.cli import main
from memproxy.gateway import SECRET_HEADER
from memproxy.wire import CREDENTIAL_HEADERS, MARK
from mitmproxy import http, io

pytestmark = pytest.mark.e2e

_RUN = uuid.uuid4().hex[:10]
PROXY_PASSWORD = f"SECRET-proxy-password-{_RUN}"
SECRETS = {
    "openai key": f"sk-proj-SECRET-openai-{_RUN}",
    "anthropic key": f"sk-ant-SECRET.anthropic.{_RUN}",  # "." keeps it from looking like a real key
    "azure key": f"SECRET-azure-{_RUN}",
    "cookie": f"SECRET-session-cookie-{_RUN}",
    "gemini key": f"AIzaSECRET-gemini-query-{_RUN}",
    "goog key": f"AIzaSECRET-gemini-header-{_RUN}",
    "proxy credentials": base64.b64encode(f"memproxy:{PROXY_PASSWORD}".encode()).decode(),  # as sent: Basic auth
    "codex key": f"sk-SECRET-codex-{_RUN}",
    "supermemory key": f"sm_SECRET_supermemory_{_RUN}",
}
RULES = """\
rules:
  - name: router
    match: {headers: {x-test-route: router}}
    user_id: routed
    route: supermemory_router
  - name: everyone
    user_id: secrets-test
"""
CHALLENGED = "challenged"  # the scope that meets the upstream's cookie challenge


@pytest.fixture
def supermemory():
    with FakeSupermemory(SECRETS["supermemory key"]) as fake:
        yield fake


def start(mitmdump, upstream, supermemory, tmp_path: Path, backend: str, redact: bool):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    options = {
        "memory_rules": str(rules),
        "memory_backend": backend,
        "memory_db": str(tmp_path / "memories.db"),
        "memory_outbox": str(tmp_path / "outbox.db"),
        "memory_cookies": str(tmp_path / "cookies.json"),
        "memory_retry_max": "1",
        "memory_redact": str(redact).lower(),
        "save_stream_file": str(tmp_path / "flows.mitm"),
        "termlog_verbosity": "debug",
        "flow_detail": "4",
        "memory_hosts": "*",  # the flows reach the addon redirected to the fake upstream on 127.0.0.1
    }
    env = {"SUPERMEMORY_API_KEY": SECRETS["supermemory key"], "SUPERMEMORY_BASE_URL": supermemory.url,
           "MEMPROXY_TEST_REDIRECT_HOSTS": "plain.example"}
    # The fake upstream stands in for the API hosts before the addon sees them: the SDK path's origin is the fake.
    return mitmdump(upstream=upstream, options=options, env=env, addon=None, extra_scripts=[REDIRECT, "addons/memory.py"])


def chat(client, text: str, **kw):
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}], **kw
    )


def run_workload(proc, upstream, openai_client, anthropic_client, http_client, ws_responses_client) -> dict[str, str]:
    """Every kind of credential through the proxy; returns what the info and status endpoints answered."""
    openai = openai_client(proc, via="proxy").with_options(api_key=SECRETS["openai key"])
    assert chat(openai, "Remember that the staging database is called heron.").parse().choices[0].message.content
    with openai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Stream: the cache is Redis."}], stream=True
    ) as chunks:
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == upstream.reply
    assert chat(openai, "Through the router", extra_headers={"x-test-route": "router"}).parse().choices

    anthropic = anthropic_client(proc, via="proxy").with_options(api_key=SECRETS["anthropic key"])
    with anthropic.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "Our CI is Buildkite."}]
    ) as stream:
        assert "".join(stream.text_stream) == upstream.reply

    with http_client(proc, via="proxy") as client:
        client.cookies.set("session", SECRETS["cookie"], domain="api.openai.com")
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Cookies and an Azure-style key."}]}
        assert client.post("/v1/chat/completions", json=body, headers={"api-key": SECRETS["azure key"]}).status_code == 200
    with http_client(proc, via="proxy", host="generativelanguage.googleapis.com") as client:
        body = {"contents": [{"role": "user", "parts": [{"text": "Gemini: deploys go out on Fridays."}]}]}
        path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        r = client.post(path, params={"alt": "sse", "key": SECRETS["gemini key"]}, json=body,
                        headers={"x-goog-api-key": SECRETS["goog key"]})
        assert r.status_code == 200
    proxy = f"http://memproxy:{PROXY_PASSWORD}@127.0.0.1:{proc.port}"
    with httpx.Client(proxy=proxy, trust_env=False, timeout=30) as client:  # plain HTTP: absolute-form requests
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Plain HTTP with proxy credentials."}]}
        assert client.post("http://plain.example/v1/chat/completions", json=body).status_code == 200
        headers = {"authorization": f"Bearer {SECRETS['openai key']}", "x-api-key": SECRETS["anthropic key"],
                   "cookie": f"session={SECRETS['cookie']}", "user-agent": "OpenAIClientImpl/Java unknown"}
        answers = {
            "info": client.get("http://memproxy/memory-routing/info", headers=headers).text,
            "status": client.get("http://memproxy/memory-routing/status", headers=headers).text,
        }
    events = ws_responses_client(proc, codex_request("Codex: lint with ruff."), via="proxy",
                                 headers={"authorization": f"Bearer {SECRETS['codex key']}"})
    assert events[-1]["type"] == "response.completed"

    # A cookie challenge: replayed through the SDK path, and the scope's next request takes that path directly.
    upstream.require_cookie = "cf_clearance"
    override = {"x-memory-user-id": CHALLENGED}
    first = chat(openai, "Challenged: remember the release is on Tuesday.", extra_headers=override)
    assert first.parse().choices[0].message.content == upstream.reply, proc.log_text()
    assert "set-cookie" not in first.headers  # the SDK path does not hand the upstream's cookies to the client
    assert chat(openai, "Challenged again, straight to the SDK path.", extra_headers=override).parse().choices
    upstream.require_cookie = None
    return answers


def leaks(data: bytes | str, secrets: dict[str, str]) -> list[str]:
    """The names of the secrets that occur in `data`."""
    blob = data if isinstance(data, bytes) else data.encode()
    return [name for name, value in secrets.items() if value.encode() in blob]


def saved_flows(path: Path) -> list[http.HTTPFlow]:
    with path.open("rb") as f:
        return [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "supermemory"])
def test_no_secret_persists_anywhere(mitmdump, upstream, supermemory, openai_client, anthropic_client, http_client,
                                     ws_responses_client, tmp_path, backend):
    proc = start(mitmdump, upstream, supermemory, tmp_path, backend, redact=True)
    answers = run_workload(proc, upstream, openai_client, anthropic_client, http_client, ws_responses_client)
    # Every conversational turn is stored: 2 OpenAI, Anthropic, httpx, Gemini, plain HTTP, Codex, 2 challenged.
    if backend == "local":
        assert len(wait_memories(tmp_path / "memories.db", "secrets-test", 7)) == 7, proc.log_text()
        assert len(wait_memories(tmp_path / "memories.db", CHALLENGED, 2)) == 2, proc.log_text()
    else:
        assert wait_until(lambda: len(supermemory.documents) == 9), proc.log_text()
    proc.stop()
    secrets = SECRETS | {"clearance cookie": upstream.cookie_token}

    assert not leaks(proc.log_text(), secrets), "mitmdump's log"
    assert json.loads(answers["info"])["rule"] == "everyone" and json.loads(answers["status"])["backend"]["name"]
    assert not leaks(answers["info"], secrets) and not leaks(answers["status"], secrets)
    jar = tmp_path / "cookies.json"
    assert upstream.cookie_token in jar.read_text() and stat.S_IMODE(jar.stat().st_mode) == 0o600
    for path in sorted(tmp_path.rglob("*")):  # the flow file, the stores and their WAL files, the outbox, the log
        if path.is_file() and path != jar:
            assert not leaks(path.read_bytes(), secrets), path
    received = [(r.path, r.query, r.body) for r in supermemory.requests]  # its headers carry the key, by design
    documents = [d.json() for d in supermemory.documents.values()]
    assert not leaks(json.dumps([received, documents], default=repr), secrets)

    flows = saved_flows(tmp_path / "flows.mitm")
    assert len(flows) == 12  # the 12 requests of the workload
    for flow in flows:
        for name, value in flow.request.headers.items():
            assert name.lower() not in CREDENTIAL_HEADERS or value == MARK, (flow.request.pretty_url, name)
        assert not leaks(json.dumps([flow.comment, flow.metadata], default=repr), secrets)
    by_url = {flow.request.url.split("?")[0]: flow for flow in flows}
    assert by_url[f"{supermemory.url}/v3/{upstream.url}/v1/chat/completions"].request.headers[
        "x-supermemory-api-key"] == MARK
    assert [f for f in flows if f.request.headers.get(SECRET_HEADER) == MARK], "a flow pointed at the SDK gateway"
    gemini = next(f for f in flows if ":streamGenerateContent" in f.request.path)
    assert gemini.request.query["key"] == MARK and gemini.request.query["alt"] == "sse"

    # The redacted file still explains: every LLM flow gets its rule.
    out = CliRunner().invoke(main, ["rules", "explain", "--rules", str(tmp_path / "rules.yaml"),
                                    "--flows", str(tmp_path / "flows.mitm")], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert out.output.count("rule: everyone") == 9 and out.output.count("rule: router") == 1, out.output
    assert not leaks(out.output, secrets)


@pytest.mark.slow
def test_without_redaction_the_same_run_leaves_the_secrets_in_the_flow_file(
    mitmdump, upstream, supermemory, openai_client, anthropic_client, http_client, ws_responses_client, tmp_path
):
    """The control: the checks above can fail. With memory_redact off, the flow file and the flow log hold them."""
    proc = start(mitmdump, upstream, supermemory, tmp_path, "local", redact=False)
    run_workload(proc, upstream, openai_client, anthropic_client, http_client, ws_responses_client)
    proc.stop()
    saved = (tmp_path / "flows.mitm").read_bytes()
    assert sorted(leaks(saved, SECRETS)) == sorted(SECRETS)
    assert sorted(leaks(proc.log_text(), SECRETS)) == sorted(SECRETS)
    gateway = [f.request.headers[SECRET_HEADER] for f in saved_flows(tmp_path / "flows.mitm")
               if SECRET_HEADER in f.request.headers]
    assert gateway and all(len(secret) > 20 and secret != MARK for secret in gateway)


def test_a_flow_still_streaming_at_shutdown_is_saved_redacted(mitmdump, upstream, tmp_path):
    """mitmproxy's Save writes unfinished flows when it stops; redaction reaches them first."""
    upstream.lockstep = True  # the upstream sends one chunk, then waits
    proc = mitmdump(mode="reverse", upstream=upstream, options={
        "memory_db": str(tmp_path / "memories.db"), "save_stream_file": str(tmp_path / "flows.mitm")})
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Stream, then stop."}]}
    headers = {"authorization": f"Bearer {SECRETS['openai key']}"}
    with httpx.stream("POST", f"{proc.base_url}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert next(r.iter_raw())  # the stream has begun
        proc.stop()
    [flow] = saved_flows(tmp_path / "flows.mitm")
    assert flow.request.headers["authorization"] == MARK
    assert not leaks((tmp_path / "flows.mitm").read_bytes(), SECRETS)


def test_info_endpoint_does_not_echo_a_credential_a_rule_matched(mitmdump, upstream, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: keyed\n    match: {headers: {authorization: '^Bearer sk-'}}\n    user_id: keyed\n")
    proc = mitmdump(mode="reverse", upstream=upstream,
                    options={"memory_rules": str(rules), "memory_db": str(tmp_path / "memories.db")})
    headers = {"authorization": f"Bearer {SECRETS['openai key']}"}
    with memproxy_client(proc, via="reverse", headers=headers) as client:
        r = client.get("/memory-routing/info")
    assert r.json()["rule"] == "keyed" and r.json()["matched_pattern"]["header"] == "authorization"
    assert not leaks(r.text, SECRETS), r.text
