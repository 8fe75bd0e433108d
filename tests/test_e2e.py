"""End to end: a real mitmdump with addons/memory.py, official SDK clients, a recording fake upstream."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import CODEX_HEADERS, MITMDUMP, ROOT, free_port, memproxy_client
from e2e_helpers import MEMORY_TAG, claude_body, claude_headers, memories, seed, wait_memories, wait_until
from fakes import codex_request

pytestmark = pytest.mark.e2e


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "memories.db"


def start(mitmdump, upstream, db: Path, mode: str = "regular", **options: str):
    return mitmdump(mode=mode, upstream=upstream, options={"memory_db": str(db), **options})


# -- remember, then recall ----------------------------------------------------


@pytest.mark.parametrize("via", ["proxy", "reverse"])
def test_openai_chat_turn_is_remembered_and_recalled(mitmdump, upstream, openai_client, db, via):
    mode = "regular" if via == "proxy" else "reverse"
    proc = start(mitmdump, upstream, db, mode)
    client = openai_client(proc, via=via)
    upstream.reply = "Noted: you deploy with Kubernetes on Hetzner."
    first = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "We deploy the billing service with Kubernetes on Hetzner."}]
    )
    assert first.choices[0].message.content == upstream.reply
    assert MEMORY_TAG not in json.dumps(upstream.last("/chat/completions").json)

    stored = wait_memories(db, "openai-sdk")
    assert len(stored) == 1, proc.log_text()
    assert "Kubernetes on Hetzner" in stored[0] and upstream.reply in stored[0]

    client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Where does the billing service run?"}]
    )
    sent = upstream.last("/chat/completions").json
    injected = [m for m in sent["messages"] if MEMORY_TAG in json.dumps(m)]
    assert injected, proc.log_text()
    assert "Kubernetes on Hetzner" in json.dumps(injected)
    assert sent["messages"][-1] == {"role": "user", "content": "Where does the billing service run?"}
    # The injected block itself is never stored again.
    time.sleep(0.5)
    assert all(MEMORY_TAG not in m for m in memories(db, "openai-sdk"))


@pytest.mark.parametrize("via", ["proxy", "reverse"])
def test_anthropic_stream_is_captured_and_recalled(mitmdump, upstream, anthropic_client, db, via):
    mode = "regular" if via == "proxy" else "reverse"
    proc = start(mitmdump, upstream, db, mode)
    client = anthropic_client(proc, via=via)
    upstream.reply = "Understood, tabs are banned in this repository."
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "Never use tabs for indentation."}]
    ) as stream:
        assert "".join(stream.text_stream) == upstream.reply
    stored = wait_memories(db, "anthropic-sdk")
    assert stored and "tabs are banned" in stored[0], proc.log_text()

    client.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "Which indentation should I use?"}]
    )
    sent = upstream.last("/v1/messages").json
    assert MEMORY_TAG in json.dumps(sent["system"]), proc.log_text()
    assert "tabs are banned" in json.dumps(sent["system"])
    assert sent["messages"] == [{"role": "user", "content": "Which indentation should I use?"}]


def test_projects_do_not_share_memories(mitmdump, upstream, db):
    """Claude Code in two working directories: two scopes, no memory crosses between them."""
    proc = start(mitmdump, upstream, db, "reverse")
    seed(db, "project:alpha", "User: the alpha project uses Postgres\nAssistant: ok")
    with httpx.Client(base_url=proc.base_url, timeout=30) as client:
        for cwd in ("/work/alpha", "/work/beta"):
            r = client.post("/v1/messages?beta=true", json=claude_body(cwd, "Which database does this project use?"), headers=claude_headers())
            assert r.status_code == 200
    alpha, beta = [rec.json for rec in upstream.requests if rec.path == "/v1/messages"]
    assert "the alpha project uses Postgres" in json.dumps(alpha)
    assert MEMORY_TAG not in json.dumps(beta)
    # The cached prefix (system blocks) is untouched; memory sits after the last cache breakpoint.
    assert alpha["system"] == claude_body("/work/alpha", "")["system"]
    assert alpha["messages"][-1]["content"][0] == {
        "type": "text", "text": "Which database does this project use?", "cache_control": {"type": "ephemeral"}
    }
    assert MEMORY_TAG in alpha["messages"][-1]["content"][1]["text"]
    assert len(wait_memories(db, "project:beta")) == 1
    assert len(wait_memories(db, "project:alpha", 2)) == 2
    assert "Postgres" not in json.dumps(memories(db, "project:beta"))


@pytest.mark.parametrize("via", ["proxy", "reverse"])
def test_codex_websocket_recall_and_capture(mitmdump, upstream, ws_responses_client, db, via):
    proc = start(mitmdump, upstream, db, "regular" if via == "proxy" else "reverse")
    upstream.reply = "Deploys go to fly.io from the main branch."
    events = ws_responses_client(
        proc, codex_request(generate=False), codex_request("How do we deploy to fly.io?", cwd="/home/dev/shop"), via=via
    )
    assert events[-1]["type"] == "response.completed"
    stored = wait_memories(db, "project:shop")
    assert len(stored) == 1 and "fly.io from the main branch" in stored[0], proc.log_text()

    ws_responses_client(proc, codex_request("Where do deploys go?", cwd="/home/dev/shop"), via=via)
    prewarm, first, second = [m for rec in upstream.requests for m in rec.ws_messages]
    assert MEMORY_TAG not in json.dumps(prewarm) and MEMORY_TAG not in json.dumps(first)
    assert "fly.io from the main branch" in json.dumps(second["input"]), proc.log_text()
    assert second["instructions"] == codex_request()["instructions"]
    time.sleep(0.5)
    assert len(memories(db, "project:shop")) == 2  # the prewarm was not stored


def test_a_codex_session_keeps_its_project_on_its_websocket(mitmdump, upstream, ws_responses_client, db):
    """Over its WebSocket Codex sends input incrementally: a later turn (after `previous_response_id`) has no
    <environment_context> of its own. It stays in the project the session's first turn named; another session
    that names none does not inherit it."""
    proc = start(mitmdump, upstream, db)
    seed(db, "project:shop", "User: the shop deploys to fly.io\nAssistant: noted")
    later = codex_request("Where does the shop deploy to?")
    later["input"], later["previous_response_id"] = later["input"][1:], "resp_1"
    upstream.reply = "To fly.io."
    ws_responses_client(proc, codex_request("Hello shop", cwd="/home/dev/shop"), later, via="proxy")
    first, second = [m for rec in upstream.requests for m in rec.ws_messages]
    assert "deploys to fly.io" in json.dumps(second["input"]), proc.log_text()
    assert len(wait_memories(db, "project:shop", 3)) == 3
    ws_responses_client(proc, later, via="proxy")  # a new connection: no project
    *_, third = [m for rec in upstream.requests for m in rec.ws_messages]
    assert "deploys to fly.io" not in json.dumps(third["input"])
    assert len(wait_memories(db, "codex")) == 1 and len(memories(db, "project:shop")) == 3


def test_a_codex_session_that_falls_back_to_http_keeps_one_memory_per_prompt(mitmdump, upstream, ws_responses_client, http_client, db):
    """Codex falls back to HTTP when its WebSocket fails, and then sends the whole conversation in each request.
    A prompt its WebSocket sent after another (only what was new) is keyed as the whole conversation keys it, so a
    step or a retry of that prompt over HTTP updates its one memory."""
    proc = start(mitmdump, upstream, db)
    first = codex_request("Hello shop", cwd="/home/dev/shop")
    later = codex_request("Where does the shop deploy to?")
    later["input"], later["previous_response_id"] = later["input"][1:], "resp_1"
    upstream.reply = "To fly.io."
    ws_responses_client(proc, first, later, via="proxy")
    assert sorted(wait_memories(db, "project:shop", 2)) == [
        "User: Hello shop\nAssistant: To fly.io.", "User: Where does the shop deploy to?\nAssistant: To fly.io."]

    answer = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "To fly.io."}]}
    body = {k: v for k, v in first.items() if k != "type"} | {"input": [*first["input"], answer, *later["input"]]}
    upstream.reply = "To fly.io, from the main branch."
    with http_client(proc) as client:
        headers = {**CODEX_HEADERS, "user-agent": "codex_exec/0.169.0 (Linux; x86_64)"}
        assert client.post("/v1/responses", json=body, headers=headers).status_code == 200
    assert wait_until(lambda: "from the main branch" in json.dumps(memories(db, "project:shop"))), proc.log_text()
    assert sorted(memories(db, "project:shop")) == [
        "User: Hello shop\nAssistant: To fly.io.", "User: Where does the shop deploy to?\nAssistant: To fly.io, from the main branch."]


def test_gemini_stream_recall_and_capture(mitmdump, upstream, http_client, db):
    proc = start(mitmdump, upstream, db)
    seed(db, "project:site", "User: the site is built with Hugo\nAssistant: noted")
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": (  # as Gemini CLI 0.61 writes it
                "<session_context>\nThis is the Gemini CLI. We are setting up the context for our chat.\n"
                "My operating system is: linux\nThe project's temporary directory is: /home/u/.gemini/tmp/abc\n"
                "- **Workspace Directories:**\n  - /src/site\n- **Directory Structure:**\n\n</session_context>")}]},
            {"role": "user", "parts": [{"text": "How is the site built?"}]},
        ]
    }
    headers = {"user-agent": "GeminiCLI-tui/0.61.0/gemini-2.5-pro (linux; x64)", "x-goog-api-key": "AIza-e2e"}
    with http_client(proc, host="generativelanguage.googleapis.com") as client:
        with client.stream("POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", json=body, headers=headers) as r:
            assert r.status_code == 200
            text = r.read().decode()
    assert upstream.reply.split()[0] in text
    sent = upstream.last(":streamGenerateContent").json
    assert "built with Hugo" in json.dumps(sent["contents"][-1]), proc.log_text()
    assert sent["contents"][0] == body["contents"][0]
    assert len(wait_memories(db, "project:site", 2)) == 2


# -- streaming fidelity ------------------------------------------------------


def _stream_body() -> dict:
    return {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Count to five."}]}


def test_sse_is_forwarded_chunk_by_chunk(mitmdump, upstream, http_client, db):
    """Lockstep: the upstream sends chunk k+1 only after the client has received chunk k.
    A buffering proxy deadlocks here, and the stream ends short."""
    proc = start(mitmdump, upstream, db, "reverse")
    upstream.lockstep, upstream.chunks = True, 5
    deltas = []
    with http_client(proc, via="reverse") as client:
        with client.stream("POST", "/v1/chat/completions", json=_stream_body()) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    if delta:
                        deltas.append(delta)
                        upstream.release()
    assert "".join(deltas) == upstream.reply
    assert len(deltas) == 5


def test_sse_spacing_is_preserved(mitmdump, upstream, http_client, db):
    """Chunks sent 50 ms apart each reach the client before the next one is sent."""
    proc = start(mitmdump, upstream, db, "reverse")
    upstream.chunk_delay, upstream.chunks = 0.05, 6
    received = []
    with http_client(proc, via="reverse") as client:
        with client.stream("POST", "/v1/chat/completions", json=_stream_body()) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    received.append(time.monotonic())
    sent = upstream.sent_times
    assert len(received) == len(sent) == 6
    assert all(received[k] < sent[k + 1] for k in range(5)), (received, sent)


# -- inspection ----------------------------------------------------------------


@pytest.mark.parametrize("via", ["proxy", "reverse"])
def test_info_endpoint_shape(mitmdump, upstream, db, via):
    proc = start(mitmdump, upstream, db, "regular" if via == "proxy" else "reverse")
    with memproxy_client(proc, via=via) as client:
        jetbrains = client.get("/memory-routing/info", headers={"user-agent": "OpenAIClientImpl/Java unknown"}).json()
        custom = client.get("/memory-routing/info", headers={"x-memory-user-id": "alice:notes"}).json()
        plain = client.get("/memory-routing/info", headers={"user-agent": "curl/8"}).json()
    assert jetbrains["user_id"] == "jetbrains" and jetbrains["rule"] == "jetbrains"
    assert jetbrains["matched_pattern"] == {
        "header": "user-agent", "value": "OpenAIClientImpl/Java unknown", "pattern": "OpenAIClientImpl/Java", "user_id": "jetbrains"
    }
    assert jetbrains["is_default"] is False and jetbrains["custom_header_present"] is False
    assert custom["user_id"] == "alice:notes" and custom["custom_header_present"] is True
    assert plain == plain | {"user_id": "default", "matched_pattern": None, "rule": None, "is_default": True}
    assert not upstream.requests  # answered by the addon itself


def test_override_header_is_stripped_and_scopes(mitmdump, upstream, openai_client, db):
    proc = start(mitmdump, upstream, db, "reverse")
    seed(db, "alice", "User: alice prefers pnpm over npm\nAssistant: ok")
    client = openai_client(proc, via="reverse")
    client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "npm or pnpm?"}], extra_headers={"x-memory-user-id": "alice"}
    )
    rec = upstream.last("/chat/completions")
    assert "x-memory-user-id" not in rec.headers
    assert "prefers pnpm" in json.dumps(rec.json)


# -- auxiliary calls, untouched paths ---------------------------------------------


def test_auxiliary_calls_are_neither_injected_nor_stored(mitmdump, upstream, db):
    proc = start(mitmdump, upstream, db, "reverse")
    seed(db, "project:proj", "User: proj uses uv\nAssistant: ok")
    with httpx.Client(base_url=proc.base_url, timeout=30) as client:
        body = claude_body("/x/proj", "Which package manager?", stream=False)
        r = client.post("/v1/messages", json=body, headers=claude_headers(**{"x-claude-code-request-class": "background"}))
        assert r.status_code == 200
        count = client.post("/v1/messages/count_tokens", json=body, headers=claude_headers())
        assert count.json() == {"input_tokens": 10}
    assert upstream.last("/v1/messages").json == body
    assert upstream.last("count_tokens").json == body
    time.sleep(0.5)
    assert memories(db, "project:proj") == ["User: proj uses uv\nAssistant: ok"]


def test_compressed_request_body_is_reencoded(mitmdump, upstream, db):
    proc = start(mitmdump, upstream, db, "reverse")
    seed(db, "openai-sdk", "User: the API base path is /api/v2\nAssistant: ok")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "What is the API base path?"}], "x_unknown": {"kept": [1, 2.5, None]}}
    raw = gzip.compress(json.dumps(body).encode())
    headers = {"content-type": "application/json", "content-encoding": "gzip", "user-agent": "OpenAI/Python 3.57.0"}
    r = httpx.post(f"{proc.base_url}/v1/chat/completions", content=raw, headers=headers, timeout=30)
    assert r.status_code == 200
    rec = upstream.last("/chat/completions")
    assert rec.headers["content-encoding"] == "gzip"  # the fake server decoded it: valid gzip, right length
    sent = json.loads(rec.body)
    assert "/api/v2" in json.dumps(sent["messages"])
    assert sent["x_unknown"] == body["x_unknown"]


# -- never break the tool -----------------------------------------------------------


@pytest.mark.parametrize(
    "content,content_type",
    [
        (b'{"model": "gpt-4o", "messages": [', "application/json"),  # malformed JSON
        (b'{"model": "gpt-4o", "messages": "not a list"}', "application/json"),  # wrong shape
        (b'{"messages": [{"role": "user", "content": "hi \xff\xfe"}]}', "application/json"),  # invalid UTF-8
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}', "text/plain"),  # wrong type
        (b"\x1f\x8b\x08garbage", "application/json"),  # claims nothing, is binary
    ],
)
def test_bad_bodies_pass_through_untouched(mitmdump, upstream, db, content, content_type):
    proc = start(mitmdump, upstream, db, "reverse")
    seed(db, "default", "User: hi\nAssistant: hello")
    r = httpx.post(f"{proc.base_url}/v1/chat/completions", content=content, headers={"content-type": content_type}, timeout=30)
    assert r.status_code == 200
    assert upstream.last("/chat/completions").body == content


def test_body_over_size_limit_passes_untouched(mitmdump, upstream, db):
    proc = start(mitmdump, upstream, db, "reverse", memory_max_body="1000")
    seed(db, "openai-sdk", "User: padding matters\nAssistant: ok")
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "padding " * 200}]}).encode()
    headers = {"content-type": "application/json", "user-agent": "OpenAI/Python 3.57.0"}
    httpx.post(f"{proc.base_url}/v1/chat/completions", content=body, headers=headers, timeout=30)
    assert upstream.last("/chat/completions").body == body


def test_store_failure_fails_open(mitmdump, upstream, openai_client, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's directory should be")
    proc = start(mitmdump, upstream, blocker / "memories.db", "reverse")
    client = openai_client(proc, via="reverse")
    messages = [{"role": "user", "content": "Still works?"}]
    reply = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert reply.choices[0].message.content == upstream.reply
    with client.chat.completions.create(model="gpt-4o", messages=messages, stream=True) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == upstream.reply
    assert upstream.last("/chat/completions").json["messages"] == messages
    log = proc.log_text()
    assert "memory store unavailable" in log and "Traceback" not in log


# -- rules at start-up and on edit ---------------------------------------------------


def test_bad_rules_stop_startup_with_file_and_line(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: x\n    match:\n      headers:\n        user-agent: '(['\n")
    argv = [str(MITMDUMP), "-s", "addons/memory.py", "--listen-host", "127.0.0.1", "-p", str(free_port()),
            "--set", f"confdir={tmp_path}", "--set", f"memory_rules={rules}", "--set", f"memory_db={tmp_path / 'm.db'}"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{rules}:5: rules[0].match.headers.user-agent: invalid regex" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_rules_edit_reloads_and_bad_edit_keeps_last_good(mitmdump, upstream, http_client, db, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: one\n    user_id: first\n")
    proc = start(mitmdump, upstream, db, "reverse", memory_rules=str(rules))

    def user_id() -> str:
        with memproxy_client(proc, via="reverse") as client:
            return client.get("/memory-routing/info").json()["user_id"]

    def eventually(expected: str) -> str:
        deadline = time.monotonic() + 10
        while (got := user_id()) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        return got

    assert user_id() == "first"
    rules.write_text("rules:\n  - name: two\n    user_id: second\n")
    assert eventually("second") == "second"
    rules.write_text("rules:\n  - name: three\n    user_id: [not, a, string]\n")
    deadline = time.monotonic() + 10
    while "keeping the last good rules" not in proc.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "keeping the last good rules" in proc.log_text()
    assert f"{rules}:3" in proc.log_text()
    assert user_id() == "second"


# -- host scope ----------------------------------------------------------------------


def test_non_llm_tls_is_tunnelled_with_its_own_certificate(mitmdump, upstream, db, tls_server):
    """A host outside memory_hosts keeps its real certificate: only its own CA verifies it."""
    proc = start(mitmdump, upstream, db)
    url = f"https://localhost:{tls_server.port}/"
    with httpx.Client(proxy=proc.proxy_url, verify=tls_server.ssl_context(), trust_env=False, timeout=30) as client:
        assert client.get(url).text == "plain tls server"
    with pytest.raises(httpx.ConnectError):  # not signed by the mitmproxy CA: it was not intercepted
        with httpx.Client(proxy=proc.proxy_url, verify=proc.ssl_context(), trust_env=False, timeout=30) as client:
            client.get(url)
