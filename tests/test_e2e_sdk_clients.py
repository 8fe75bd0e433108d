"""The SDK path with real clients: what a client sends reaches the provider as it was sent, and what the
provider answers reaches the client as it was answered, whether the request goes straight through (the direct
path) or through the gateway after a Cloudflare-style challenge (the SDK path).

Each scenario runs twice on fresh files: once on the direct path, once behind the fake upstream that challenges
any LLM call without its cookie (the first request is challenged, and the client, asked by a 307, sends it again
through the gateway; the later ones go to the gateway from the start). The store holds one seeded memory, so recall is exercised on both runs;
what it injects is compared as a placeholder (its framing may name the memory's age). Values a client makes up
per run (session and device ids) are numbered in order of appearance before the comparison.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import MitmdumpProc, make_http_client
from e2e_helpers import MEMORY_TAG, isolated_env, seed, wait_memories
from e2e_helpers import installed_client as installed
from e2e_helpers import run_client as run
from fakes import FakeUpstream, Recorded, ToolCall
from mitmproxy import http, io
from test_e2e_clients import answer_classifier, gemini
from test_e2e_more_clients import git_repo, opencode, qwen
from test_e2e_sdk import start
from test_e2e_turns import claude, tool_names

pytestmark = pytest.mark.e2e

SCOPE = "project:shop"
SEEDED = "User: the shop deploys with Nomad\nAssistant: Noted: Nomad."
COOKIE = "cf_clearance"
_MEMORY_BLOCK = re.compile(r"<recalled-memories.*?</recalled-memories>", re.S)
_CHECKSUM = re.compile(r"\bcch=[0-9a-f]+;")  # Claude Code's billing block: a checksum, of the session id too
_CLOCK = re.compile(r'(_unix_ms\\*":)\d+')  # Codex's turn metadata: when the turn started
_RUN_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[0-9a-f]{32,64}\b")


def scrub(text: str) -> str:
    """`text` with the injected memory block, Claude Code's per-request checksum and Codex's turn start time as
    placeholders."""
    text = _CHECKSUM.sub("cch=<checksum>;", _MEMORY_BLOCK.sub("<recalled-memories/>", text))
    return _CLOCK.sub(r"\1<time>", text)


def number(text: str, ids: dict[str, str]) -> str:
    """`text` with each per-run id numbered (in `ids`, shared by one run's requests) by its first appearance."""
    return _RUN_IDS.sub(lambda m: ids.setdefault(m[0], f"<id{len(ids)}>"), text)


@dataclass
class Run:
    """One path's run: what the fake received and sent for each LLM call (challenged ones apart), the flows
    mitmdump saved, and what the client printed."""

    challenged: list[Recorded] = field(default_factory=list)
    calls: list[Recorded] = field(default_factory=list)
    flows: list[http.HTTPFlow] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    log: str = ""
    sent_back: list[http.HTTPFlow] = field(default_factory=list)  # challenged, answered with a 307 to send again

    def recalled(self) -> list[bool]:
        """Whether each LLM call's body carries a memory block."""
        return [MEMORY_TAG in r.body.decode() for r in self.calls]

    def bodies(self) -> list[str]:
        """The LLM calls' bodies as they arrived, scrubbed and their ids numbered."""
        ids: dict[str, str] = {}
        return [number(scrub(r.body.decode()), ids) for r in self.calls]

    def memory_paths(self) -> list[list[str]]:
        """Where each LLM call's body carries a memory block: the JSON paths of the strings holding one."""
        return [[path for path, text in strings(r.json) if MEMORY_TAG in text] for r in self.calls]

    def documents(self) -> list[Any]:
        """The LLM calls' bodies parsed, for a client whose objects' key order changes from run to run (Codex's
        `client_metadata`, a hash map): the ids are numbered in the order of the keys sorted."""
        ids: dict[str, str] = {}
        canonical = (json.dumps(json.loads(scrub(r.body.decode())), sort_keys=True) for r in self.calls)
        return [json.loads(number(text, ids)) for text in canonical]


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Each string in a JSON value, with its path (`contents.0.parts.1.text`)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            yield from strings(item, f"{path}.{key}" if path else str(key))


def llm_call(path: str) -> bool:
    return (
        path.startswith(("/v1/messages", "/v1/responses", "/v1/chat/", "/v1beta/models/"))
        and "count_tokens" not in path
    )


def run_path(
    mitmdump: Callable[..., MitmdumpProc],
    upstream: FakeUpstream,
    tmp_path: Path,
    challenge: bool,
    drive: Callable[[MitmdumpProc, Path, Path, Path], Iterator[str]],
) -> Run:
    """`drive` the client (proc, project, home, the run's own folder) through a fresh mitmdump (its store seeded
    in that folder), the fake challenging if `challenge`. The client's home and project are the same paths on
    each run, emptied first, so that its bodies can be compared."""
    work = tmp_path / ("sdk" if challenge else "direct")
    work.mkdir()
    home, project = tmp_path / "home", tmp_path / "shop"
    for path in (home, project):
        shutil.rmtree(path, ignore_errors=True)
    seed(work / "memories.db", SCOPE, SEEDED)
    upstream.clear()
    upstream.require_cookie = COOKIE if challenge else None
    # The budget of recall is wide: on a loaded machine a first search past the default 300 ms would leave the
    # memory block out of one run only, and the bodies compared would differ by it.
    proc = start(
        mitmdump,
        upstream,
        work,
        save_stream_file=str(work / "flows"),
        store_streamed_bodies="true",
        memory_timeout_ms="30000",
    )
    result = Run()
    result.outputs = list(drive(proc, project, home, work))
    result.log = proc.log_text()
    proc.stop()
    token = f"{COOKIE}={upstream.cookie_token}"
    for rec in upstream.requests:
        if rec.method == "POST" and llm_call(rec.path):
            unchallenged = not challenge or token in rec.headers.get("cookie", "")
            (result.calls if unchallenged else result.challenged).append(rec)
    with (work / "flows").open("rb") as f:
        flows = [
            flow
            for flow in io.FlowReader(f).stream()
            if isinstance(flow, http.HTTPFlow) and flow.request.method == "POST" and llm_call(flow.request.path)
        ]
    result.sent_back = [f for f in flows if f.response is not None and f.response.status_code == 307]
    result.flows = [f for f in flows if f not in result.sent_back]
    return result


def assert_client_got_what_the_fake_sent(run_: Run) -> None:
    """Each LLM answer, as mitmdump passed it to the client, is the fake's own bytes (ids, model, events). A
    challenged request was answered with a 307 to the same URL, which the client followed: its request sent
    again went through the gateway like the later ones."""
    assert len(run_.sent_back) == len(run_.challenged), run_.log
    assert all(f.response.headers["location"] == f.request.path for f in run_.sent_back)
    assert len(run_.flows) == len(run_.calls), run_.log
    for flow, rec in zip(run_.flows, run_.calls, strict=True):
        assert flow.response is not None and rec.sent, (flow.request.path, run_.log)
        assert flow.response.raw_content == bytes(rec.sent), flow.request.path


def stainless(rec: Recorded) -> dict[str, str]:
    return {k: v for k, v in rec.headers.items() if k.startswith("x-stainless-")}


# -- Claude Code -------------------------------------------------------------------------------------------------

PROMPT = "How does the shop deploy?"
TOOL_PROMPT = "Which files are in the shop repository?"
OUTPUT = "tool-output-5c1e"
FINAL = "The shop deploys with Nomad."


def drive_claude(proc: MitmdumpProc, project: Path, home: Path, work: Path) -> Iterator[str]:
    yield claude(proc, project, home, "-p", PROMPT)
    yield claude(proc, project, home, "-p", TOOL_PROMPT, "--allowedTools", "Bash")


def test_claude_code_sends_and_receives_the_same_on_the_sdk_path(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    call = ToolCall("Bash", {"command": f"printf {OUTPUT}", "description": "List the files"})
    upstream.tool_call = lambda data: call if TOOL_PROMPT in json.dumps(data) and "Bash" in tool_names(data) else None
    upstream.reply = FINAL
    direct = run_path(mitmdump, upstream, tmp_path, False, drive_claude)
    sdk = run_path(mitmdump, upstream, tmp_path, True, drive_claude)

    assert direct.outputs == sdk.outputs == [FINAL, FINAL]
    assert len(sdk.challenged) == 1, sdk.log  # the first call only: the later ones carry the jar's cookie
    assert sdk.challenged[0].body == sdk.calls[0].body  # sent again as it was sent
    main = [i for i, r in enumerate(direct.calls) if "Bash" in tool_names(r.json)]
    assert len(main) == 3, [r.path for r in direct.calls]  # the prompt; the tool loop's call and its result
    assert [r.path for r in sdk.calls] == [r.path for r in direct.calls]
    assert all(r.query == {"beta": "true"} for r in sdk.calls)
    assert [stainless(r) for r in sdk.calls] == [stainless(r) for r in direct.calls]
    assert all(stainless(r) for r in sdk.calls)
    assert MEMORY_TAG in sdk.calls[main[0]].body.decode()  # recall ran on the SDK path too
    assert sdk.recalled() == direct.recalled(), (direct.log, sdk.log)  # the same calls got memories
    assert sdk.bodies() == direct.bodies()

    # What a translation loses, named (the equality above holds them already). This version of Claude Code
    # sends no `defer_loading` (it lists deferred tools in a message): whatever tools it sends are kept.
    for i in main:
        body, sent = sdk.calls[i].json, direct.calls[i].json
        assert body["tools"] == sent["tools"] and all("$schema" in t["input_schema"] for t in body["tools"])
        assert not any(t.get("type") == "custom" for t in body["tools"])
        assert body["context_management"] == sent["context_management"]
        assert body["output_config"] == sent["output_config"]
        assert [type(m["content"]) for m in body["messages"]] == [type(m["content"]) for m in sent["messages"]]
    result = sdk.calls[main[2]].json["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["content"] == OUTPUT and result["is_error"] is False
    for run_ in (direct, sdk):
        assert_client_got_what_the_fake_sent(run_)
    first = sdk.flows[0].response
    assert first is not None and b'"id": "msg_' in first.raw_content and b"claude-" in first.raw_content


# -- Codex over HTTP -----------------------------------------------------------------------------------------------

CODEX_CONFIG = """model_provider = "openai-http"

[model_providers.openai-http]
name = "OpenAI over HTTP"
base_url = "https://api.openai.com/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
supports_websockets = false
"""
CODEX_PROMPTS = [f"Which port does shop service {n} listen on?" for n in range(4)]


def codex_http(proc: MitmdumpProc, project: Path, home: Path, prompt: str) -> str:
    """`codex exec prompt` with a provider that speaks Responses over HTTP (SSE), not its WebSocket."""
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / ".codex/config.toml").write_text(CODEX_CONFIG)
    env = isolated_env(home) | {"OPENAI_API_KEY": "sk-e2e-sdk-clients-codex-0123456789"}
    return run(proc, project, [str(installed("codex")), "exec", "--skip-git-repo-check", prompt], env, wrap=True)


def drive_codex(upstream: FakeUpstream) -> Callable[[MitmdumpProc, Path, Path, Path], Iterator[str]]:
    """Four runs, each a fresh prompt with its own answer; each turn is stored before the next run starts."""

    def drive(proc: MitmdumpProc, project: Path, home: Path, work: Path) -> Iterator[str]:
        for n, prompt in enumerate(CODEX_PROMPTS):
            upstream.reply = f"Shop service {n} listens on port 70{n}1."
            yield codex_http(proc, project, home, prompt)
            turn = f"User: {prompt}\nAssistant: {upstream.reply}"
            stored = wait_memories(work / "memories.db", SCOPE, n + 2)
            assert turn in stored, (n, stored, proc.log_text())

    return drive


def test_codex_over_http_sends_the_same_and_stores_every_turn_on_the_sdk_path(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.chunk_delay = 0.15  # Codex closes the stream at response.completed: the end comes a moment later
    direct = run_path(mitmdump, upstream, tmp_path, False, drive_codex(upstream))
    sdk = run_path(mitmdump, upstream, tmp_path, True, drive_codex(upstream))

    assert len(sdk.challenged) == 1, sdk.log
    assert sdk.challenged[0].body == sdk.calls[0].body
    assert [r.path for r in sdk.calls] == [r.path for r in direct.calls] and len(sdk.calls) == 4
    assert all(r.json["stream"] is True and "client_metadata" in r.json for r in sdk.calls)
    assert MEMORY_TAG in sdk.calls[0].body.decode()
    assert sdk.recalled() == direct.recalled(), (direct.log, sdk.log)  # the same calls got memories
    assert sdk.documents() == direct.documents()
    assert [out.strip().splitlines()[-1:] for out in sdk.outputs] == [
        out.strip().splitlines()[-1:] for out in direct.outputs
    ]
    for run_ in (direct, sdk):
        assert_client_got_what_the_fake_sent(run_)


# -- Gemini CLI ----------------------------------------------------------------------------------------------------

GEMINI_PROMPT = "Which scheduler deploys the shop?"


def drive_gemini(proc: MitmdumpProc, project: Path, home: Path, work: Path) -> Iterator[str]:
    yield gemini(proc, project, GEMINI_PROMPT, home)


def test_gemini_cli_is_served_on_the_sdk_path_streaming(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    answer_classifier(upstream)
    upstream.reply = FINAL
    direct = run_path(mitmdump, upstream, tmp_path, False, drive_gemini)
    sdk = run_path(mitmdump, upstream, tmp_path, True, drive_gemini)

    assert direct.outputs == sdk.outputs == [FINAL]  # gemini exits 0 (run_client checks) and prints the fake's reply
    # Each scope has its own jar: the classifier's call (an auxiliary call, in the default scope) and the turn's
    # (in the project's) are each challenged once, and replayed as they were sent.
    assert [r.path for r in sdk.challenged] == [r.path for r in direct.calls], sdk.log
    assert [r.body for r in sdk.challenged] == [r.body for r in sdk.calls]
    assert [(r.path, r.query) for r in sdk.calls] == [(r.path, r.query) for r in direct.calls]
    streamed = [r for r in sdk.calls if r.path.endswith(":streamGenerateContent")]
    assert streamed and all(r.query == {"alt": "sse"} for r in streamed)
    assert MEMORY_TAG in streamed[0].body.decode()
    assert sdk.recalled() == direct.recalled(), (direct.log, sdk.log)  # the same calls got memories
    # The parity of the two paths is the byte equality of each challenged call (the direct path's bytes) and the
    # same call sent again through the gateway, above. Across the two runs only what memproxy writes is compared:
    # Gemini CLI's own text has been seen to change between two runs on a fresh machine.
    assert sdk.memory_paths() == direct.memory_paths()
    for run_ in (direct, sdk):
        assert_client_got_what_the_fake_sent(run_)


# -- parity: the same requests on the direct path and on the SDK path ------------------------------------------------

OPENAI_HEADERS = {
    "authorization": "Bearer sk-parity-openai",
    "user-agent": "OpenAI/Python 3.57.0",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "3.57.0",
    "x-stainless-retry-count": "0",
    "x-stainless-runtime": "CPython",
}
ANTHROPIC_HEADERS = {
    "x-api-key": "sk-ant-parity",
    "anthropic-version": "2023-06-01",
    "user-agent": "Anthropic/Python 2.13.0",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "2.13.0",
}
GEMINI_HEADERS = {"x-goog-api-key": "AIza-parity-gemini", "x-goog-api-client": "google-genai-sdk/1.0.0 gl-python/3.12"}
QUESTION = "Which scheduler deploys the shop?"
MESSAGES = [{"role": "user", "content": QUESTION}]
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": QUESTION}]}], "generationConfig": {"temperature": 0}}
# (name, host, path with query, headers, body): the requests the openai and anthropic SDKs (each streamed and
# not) and Gemini's REST API send.
_FORMATS = [
    ("chat", "api.openai.com", "/v1/chat/completions", OPENAI_HEADERS, {"model": "gpt-4o", "messages": MESSAGES}),
    ("responses", "api.openai.com", "/v1/responses", OPENAI_HEADERS, {"model": "gpt-4o", "input": QUESTION}),
    ("messages", "api.anthropic.com", "/v1/messages", ANTHROPIC_HEADERS,
     {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": MESSAGES}),
]  # fmt: skip
PARITY_CASES = [
    *[case for name, host, path, headers, body in _FORMATS
      for case in ((name, host, path, headers, body), (f"{name}-stream", host, path, headers, body | {"stream": True}))],
    ("gemini", "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent",
     GEMINI_HEADERS, GEMINI_BODY),
    ("gemini-stream", "generativelanguage.googleapis.com",
     "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", GEMINI_HEADERS, GEMINI_BODY),
]  # fmt: skip
# Headers that may differ between the two paths, and why. Anything else that differs fails the test.
REQUEST_HEADERS_APART = {
    # The fake stands in for the API hosts: tests/fakes/redirect.py points a flow at it before the addon sees it,
    # keeping the client's Host, so the SDK path's upstream origin, whose host the gateway sends, is the fake's
    # address (checked below). With a real host both paths send that host.
    "host",
    "accept-encoding",  # not forwarded by the gateway: its own client asks for what it can decode
    "cookie",  # the gateway merges the jar's cookies into the client's
}
RESPONSE_HEADERS_APART = {
    "set-cookie",  # the upstream's cookies stay in the jar
    "content-length",
    "transfer-encoding",  # framing: the gateway relays chunk by chunk
    "content-encoding",  # the gateway's client decodes what it asked for
    "date",  # the time of the answer, on either path
}


@dataclass
class Exchange:
    """One request's trace: what the fake received, and the raw answer the client got."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int
    reply_headers: dict[str, str]
    reply: bytes


def exchanges(proc: MitmdumpProc, upstream: FakeUpstream) -> dict[str, Exchange]:
    """Each parity case sent through `proc` as a proxy, with raw httpx (the bytes as they come)."""
    found = {}
    for name, host, path, headers, body in PARITY_CASES:
        upstream.clear()
        content = json.dumps(body).encode()
        with make_http_client(proc, host=host) as client:
            send = {**headers, "content-type": "application/json", "x-memory-user-id": "team"}
            with client.stream("POST", path, content=content, headers=send) as answer:
                reply = b"".join(answer.iter_raw())
        [rec] = [r for r in upstream.requests if llm_call(r.path)]
        found[name] = Exchange(
            rec.path,
            rec.query,
            rec.headers,
            rec.body,
            answer.status_code,
            {k.lower(): v for k, v in answer.headers.items()},
            reply,
        )
    return found


def test_the_direct_and_the_sdk_path_are_byte_for_byte_the_same(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Seed group 1, binary vs SDK: for each client and format, the body at the upstream and the answer at the
    client are the same bytes on both paths, and the headers the same apart from the documented ones."""
    results = {}
    for route in ("passthrough", "sdk"):
        work = tmp_path / route
        work.mkdir()
        seed(work / "memories.db", "team", SEEDED)
        # Nothing stored during the run: a turn stored in time for the next case would be recalled into it on one
        # path and not on the other (the outbox is asynchronous), and the bodies would differ by that alone.
        rules = f"rules:\n  - name: all\n    user_id: team\n    route: {route}\n    store: false\n"
        (work / "rules.yaml").write_text(rules)
        proc = start(mitmdump, upstream, work, memory_rules=str(work / "rules.yaml"))
        results[route] = exchanges(proc, upstream)
        proc.stop()
    for name, *_ in PARITY_CASES:
        direct, sdk = results["passthrough"][name], results["sdk"][name]
        assert MEMORY_TAG in sdk.body.decode(), name
        assert (sdk.path, sdk.query, sdk.body) == (direct.path, direct.query, direct.body), name
        assert (sdk.status, sdk.reply) == (direct.status, direct.reply), name
        assert apart(sdk.headers, REQUEST_HEADERS_APART) == apart(direct.headers, REQUEST_HEADERS_APART), name
        assert sdk.headers["host"] == f"127.0.0.1:{upstream.port}", name
        assert apart(sdk.reply_headers, RESPONSE_HEADERS_APART) == apart(
            direct.reply_headers, RESPONSE_HEADERS_APART
        ), name


def apart(headers: dict[str, str], names: set[str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in names}


# -- Qwen Code and opencode ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["qwen", "opencode"])
def test_more_clients_send_a_challenged_request_again(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, tool: str
) -> None:
    """Qwen Code and opencode (Chat Completions, SSE) follow the 307 with their body: each challenged request is
    sent again through the gateway with the cookie, and the client prints the fake's answer."""
    upstream.require_cookie, upstream.reply = COOKIE, "Answered through the gateway."
    proc = start(mitmdump, upstream, tmp_path)
    project = git_repo(tmp_path / "alpha")
    drive = qwen if tool == "qwen" else opencode
    assert drive(proc, project, "Which port does the shop listen on?", tmp_path / "home") == upstream.reply
    token = f"{COOKIE}={upstream.cookie_token}"
    cookies = [token in r.headers.get("cookie", "") for r in upstream.requests if llm_call(r.path)]
    challenged = cookies.count(False)  # each challenge (a title call's may come between), then sent again
    assert challenged and cookies.count(True) == challenged and cookies[-1], cookies
    assert proc.log_text().count("(sent again)") == challenged
