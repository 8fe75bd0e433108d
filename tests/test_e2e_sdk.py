"""The SDK path end to end: a real mitmdump, the official SDKs, litellm really calling the fake upstream."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import REDIRECT, routing_status
from e2e_helpers import chat, seed, wait_memories, wait_until

pytestmark = pytest.mark.e2e

SDK_RULES = "rules:\n  - name: all\n    user_id: '{project}'\n    route: sdk\n"


def rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def start(mitmdump, upstream, tmp_path: Path, mode: str = "regular", env=None, **options: str):
    opts = {
        "memory_db": str(tmp_path / "memories.db"),
        "memory_outbox": str(tmp_path / "outbox.db"),
        "memory_cookies": str(tmp_path / "cookies.json"),
        **options,
    }
    # In regular mode the fake upstream stands in for the real API hosts: redirect before the addon, so the
    # SDK path's upstream origin is the fake's (offline, litellm cannot reach api.openai.com), which is then
    # the memory host.
    scripts = {"addon": None, "extra_scripts": [REDIRECT, "addons/memory.py"]} if mode == "regular" else {}
    if mode == "regular":
        opts.setdefault("memory_hosts", "*")
    return mitmdump(mode=mode, upstream=upstream, options=opts, env=env, **scripts)


def cookies_seen(upstream, path: str) -> list[str | None]:
    return [r.headers.get("cookie") for r in upstream.requests if path in r.path]


@pytest.mark.parametrize("stream", [False, True])
def test_sdk_route_serves_openai_clients_and_keeps_memory(mitmdump, upstream, openai_client, tmp_path, stream):
    rules = rules_file(tmp_path, "rules:\n  - name: all\n    user_id: team\n    route: sdk\n")
    seed(tmp_path / "memories.db", "team", "User: our CI runs on Buildkite\nAssistant: ok")
    proc = start(mitmdump, upstream, tmp_path, memory_rules=str(rules))
    client = openai_client(proc, via="proxy")
    assert chat(client, "Which CI do we use?", stream=stream) == upstream.reply
    sent = upstream.last("/chat/completions")
    assert "Buildkite" in json.dumps(sent.json["messages"]), proc.log_text()
    assert sent.json.get("stream", False) is stream
    assert not any(k.startswith("x-memproxy") for k in sent.headers)
    stored = wait_memories(tmp_path / "memories.db", "team", 2)
    assert any("Which CI do we use?" in m and upstream.reply in m for m in stored)


def test_anthropic_client_on_the_sdk_route(mitmdump, upstream, anthropic_client, tmp_path):
    rules = rules_file(tmp_path, "rules:\n  - name: all\n    user_id: team\n    route: sdk\n")
    proc = start(mitmdump, upstream, tmp_path, memory_rules=str(rules))
    client = anthropic_client(proc, via="proxy")
    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].text == upstream.reply
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "stream please"}]
    ) as stream:
        assert "".join(stream.text_stream) == upstream.reply
    assert len([r for r in upstream.requests if r.path == "/v1/messages"]) == 2, proc.log_text()


def test_cookie_challenge_moves_the_scope_to_the_sdk_path(mitmdump, upstream, openai_client, tmp_path):
    upstream.require_cookie = "cf_clearance"
    proc = start(mitmdump, upstream, tmp_path)
    client = openai_client(proc, via="proxy")
    assert chat(client, "first, challenged") == upstream.reply, proc.log_text()
    assert chat(client, "second, streamed through the SDK path", stream=True) == upstream.reply
    seen = cookies_seen(upstream, "/chat/completions")
    token = f"cf_clearance={upstream.cookie_token}"
    assert seen[0] is None and all(token in (c or "") for c in seen[1:]), seen
    assert len(seen) == 3  # the challenged request, its replay, and the second request directly
    assert "now goes through the SDK path" in proc.log_text()

    # Another scope never receives that cookie: its first request is challenged on its own.
    chat(client, "from another scope", extra_headers={"x-memory-user-id": "someone-else"})
    assert cookies_seen(upstream, "/chat/completions")[3] is None

    # The jar is a 0600 file and survives a restart: no new challenge for the first scope.
    jar = tmp_path / "cookies.json"
    assert stat.S_IMODE(jar.stat().st_mode) == 0o600
    assert upstream.cookie_token in jar.read_text()
    proc.restart()
    upstream.clear()
    assert chat(client, "after the restart") == upstream.reply
    assert [token in (c or "") for c in cookies_seen(upstream, "/chat/completions")] == [True]


def test_a_challenged_request_is_sent_again_and_its_reply_streams(mitmdump, upstream, tmp_path):
    """A client known to follow a 307 with its body (here by its user agent, as Claude Code's) is asked to send
    the challenged request again; that request goes through the gateway with the cookie and streams: in lockstep
    the upstream sends chunk k+1 only after the client got chunk k."""
    upstream.require_cookie, upstream.lockstep, upstream.chunks = "cf_clearance", True, 4
    proc = start(mitmdump, upstream, tmp_path)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"user-agent": "claude-cli/2.1.328 (external, cli)", "x-api-key": "sk-ant-x"}
    deltas = []
    with httpx.Client(proxy=proc.proxy_url, verify=proc.ssl_context(), trust_env=False, timeout=60, follow_redirects=True) as client:
        with client.stream("POST", "https://api.anthropic.com/v1/messages?beta=true", json=body, headers=headers) as r:
            assert r.status_code == 200 and [h.status_code for h in r.history] == [307]
            for line in r.iter_lines():
                if line.startswith("data: ") and (delta := json.loads(line[6:]).get("delta", {}).get("text")):
                    deltas.append(delta)
                    upstream.release()
    assert "".join(deltas) == upstream.reply and len(deltas) == 4, proc.log_text()
    challenged, sent_again = [r for r in upstream.requests if r.path == "/v1/messages"]
    assert challenged.headers.get("cookie") is None and sent_again.query == {"beta": "true"}
    assert sent_again.headers["cookie"] == f"cf_clearance={upstream.cookie_token}"
    assert challenged.body == sent_again.body
    assert "now goes through the SDK path (sent again)" in proc.log_text()


def test_anthropic_cookie_challenge(mitmdump, upstream, anthropic_client, tmp_path):
    upstream.require_cookie = "cf_clearance"
    proc = start(mitmdump, upstream, tmp_path)
    client = anthropic_client(proc, via="proxy")
    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].text == upstream.reply, proc.log_text()
    assert f"cf_clearance={upstream.cookie_token}" in (cookies_seen(upstream, "/v1/messages")[-1] or "")


@pytest.mark.parametrize("stream", [False, True])
def test_provider_mapping_openai_client_anthropic_upstream(mitmdump, upstream, openai_client, tmp_path, stream):
    rules = rules_file(
        tmp_path,
        "rules:\n  - name: mapped\n    user_id: team\n    route: sdk\n"
        f"    sdk: {{model: anthropic/claude-sonnet-4-6, api_base: '{upstream.url}', api_key: '${{MAPPED_KEY}}'}}\n",
    )
    proc = start(mitmdump, upstream, tmp_path, env={"MAPPED_KEY": "sk-ant-mapped-key"}, memory_rules=str(rules))
    assert chat(openai_client(proc, via="proxy"), "Hello Claude", stream=stream) == upstream.reply
    sent = upstream.last("/v1/messages")
    assert sent.json["model"] == "claude-sonnet-4-6" and sent.json.get("stream", False) is stream
    assert sent.headers.get("x-api-key") == "sk-ant-mapped-key"
    assert not [r for r in upstream.requests if "/chat/completions" in r.path]
    assert "sk-ant-mapped-key" not in proc.log_text()


OPENAI_ERRORS = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    429: openai.RateLimitError,
    500: openai.InternalServerError,
    503: openai.InternalServerError,
}


@pytest.fixture
def sdk_proxy(mitmdump, upstream, tmp_path):
    rules = rules_file(tmp_path, "rules:\n  - name: all\n    user_id: team\n    route: sdk\n")
    return start(mitmdump, upstream, tmp_path, "reverse", memory_rules=str(rules))


@pytest.mark.parametrize("status", sorted(OPENAI_ERRORS))
def test_errors_come_back_in_the_openai_format(sdk_proxy, upstream, openai_client, status):
    upstream.fail_status = status
    upstream.fail_headers = {"retry-after": "7"} if status == 429 else {}
    with pytest.raises(OPENAI_ERRORS[status]) as e:
        chat(openai_client(sdk_proxy, via="reverse"), "fail please")
    assert e.value.status_code == status
    body = e.value.response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    assert "Traceback" not in body["error"]["message"] and "detail" not in body
    if status == 429:
        assert e.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("status", [401, 429, 500])
def test_errors_come_back_in_the_anthropic_format(sdk_proxy, upstream, status):
    upstream.fail_status = status
    upstream.fail_headers = {"retry-after": "3"} if status == 429 else {}
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(f"{sdk_proxy.base_url}/v1/messages", json=body, headers={"x-api-key": "sk-ant-x"}, timeout=60)
    assert r.status_code == status
    data = r.json()
    assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
    if status == 429:
        assert r.headers["retry-after"] == "3"


def test_mid_stream_failure_ends_with_an_error_event(sdk_proxy, upstream):
    upstream.reset_mid_stream = True
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", f"{sdk_proxy.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        text = r.read().decode()
    assert r.status_code == 200
    last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
    assert "error" in json.loads(last[6:]), text


def test_parity_of_passthrough_and_sdk_paths(mitmdump, upstream, openai_client, tmp_path):
    """Same request, both paths: same routing, same injected memory, same response shape, same captured turn."""
    results = {}
    for route in ("passthrough", "sdk"):
        work = tmp_path / route
        work.mkdir()
        seed(work / "memories.db", "team", "User: the API gateway is Kong\nAssistant: ok")
        rules = rules_file(work, f"rules:\n  - name: all\n    user_id: team\n    route: {route}\n")
        proc = start(mitmdump, upstream, work, memory_rules=str(rules))
        upstream.clear()
        reply = openai_client(proc, via="proxy").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Which API gateway do we run?"}]
        )
        sent = upstream.last("/chat/completions").json
        stored = wait_memories(work / "memories.db", "team", 2)
        results[route] = (
            [m for m in sent["messages"] if "Kong" in json.dumps(m)],
            reply.choices[0].message.content,
            sorted(stored),
        )
        proc.stop()
    assert results["passthrough"] == results["sdk"]
    assert results["sdk"][0], "memory was injected"


def test_litellm_is_not_imported_at_startup(mitmdump, upstream, tmp_path):
    proc = start(mitmdump, upstream, tmp_path, "reverse")
    time.sleep(1.5)  # past start-up and the background preparation of the SDK path
    status = routing_status(proc)
    assert status["sdk_path"] == {"gateway_port": None, "litellm_loaded": False}


@pytest.mark.parametrize("mapped", [False, True], ids=["forward", "mapped"])
def test_gateway_is_warmed_for_sdk_rules_and_refuses_requests_without_its_secret(mitmdump, upstream, tmp_path, mapped):
    """A rule that routes to the SDK path warms the gateway; litellm is imported only for a rule that maps."""
    mapping = "    sdk: {model: anthropic/claude-sonnet-4-6}\n" if mapped else ""
    rules = rules_file(tmp_path, "rules:\n  - name: all\n    user_id: team\n    route: sdk\n" + mapping)
    proc = start(mitmdump, upstream, tmp_path, "reverse", memory_rules=str(rules))
    deadline = time.monotonic() + 60
    while not (sdk := routing_status(proc)["sdk_path"])["gateway_port"] or sdk["litellm_loaded"] is not mapped:
        assert time.monotonic() < deadline, proc.log_text()
        time.sleep(0.2)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(f"http://127.0.0.1:{sdk['gateway_port']}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 403 and set(r.json()) == {"error"}
    assert not upstream.requests


def test_sdk_path_streams_chunk_by_chunk(sdk_proxy, upstream):
    """Lockstep through mitmdump, the gateway and litellm: the upstream sends chunk k+1 only after the
    client got chunk k, so any buffering on the way deadlocks and the stream ends short."""
    upstream.lockstep, upstream.chunks = True, 4
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "count"}]}
    deltas = []
    with httpx.stream("POST", f"{sdk_proxy.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if delta := choices[0].get("delta", {}).get("content"):
                    deltas.append(delta)
                    upstream.release()
    assert "".join(deltas) == upstream.reply and len(deltas) == 4


@pytest.mark.parametrize("stream", [False, True])
def test_responses_client_on_the_sdk_route(sdk_proxy, upstream, openai_client, stream):
    client = openai_client(sdk_proxy, via="reverse")
    if stream:
        with client.responses.create(model="gpt-4o", input="hello", stream=True) as events:
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    else:
        text = client.responses.create(model="gpt-4o", input="hello").output_text
    assert text == upstream.reply
    assert "hello" in json.dumps(upstream.last("/responses").json["input"])


def test_a_client_leaving_mid_stream_cuts_the_upstream(sdk_proxy, upstream):
    """Through mitmdump and the gateway: once the client has gone, the upstream's connection is closed before its
    next chunk, as it is on the direct path (a provider stops generating then)."""
    upstream.lockstep, upstream.lockstep_timeout = True, 30.0
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "count"}]}
    with httpx.stream("POST", f"{sdk_proxy.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and "content" in line:
                break  # and leave
    assert wait_until(upstream.stream_closed), sdk_proxy.log_text()
    assert len(upstream.sent_times) == 1
