"""Bad input through a real mitmdump with recall and capture on: a fuzz corpus to every LLM path, both modes.

Every request is sent as raw bytes (over TLS through the proxy, or plain to a reverse listener), so
that broken framing can be sent at all. What "passes" means:

- A well-framed request reaches the upstream byte-identical to what was sent, and the client gets
  exactly the answer the upstream gives to those bytes sent directly (so never an error of ours).
  The corpus's controls are the exception: well-formed requests that must be injected, proving
  that recall works on this very setup and that the byte comparison can fail.
- A framing error (wrong Content-Length, broken chunking) is handled by mitmproxy before any addon
  hook runs: the client and the upstream must see exactly what they see through mitmdump running
  only a no-op script.
- After each request mitmdump is alive, its log holds no traceback, and every captured turn was
  stored: none stuck retrying, none dead-lettered, no outbox write failed.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import socket
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import conftest
import httpx
import pytest
from conftest import MitmdumpProc, _tunnel, codex_ws, memproxy_client
from e2e_helpers import seed, wait_memories, wait_until
from fakes import FakeUpstream, codex_request
from mitmproxy.net import encoding
from test_protocols_props import strings

pytestmark = pytest.mark.e2e

NOOP = "tests/fakes/noop_addon.py"
SCOPE = "default"  # the shipped rules' scope for a client they do not know
CODEX_SCOPE = "project:zebra"  # the shipped rules' scope for Codex CLI in /work/zebra (a path not on this machine)
MEMORY = "User: the zebra cluster listens on port 7443\nAssistant: noted"
QUERY = "Which port does the zebra cluster listen on?"
MAX_BODY = 4 * 2**20  # the addon's memory_max_body in these tests
WAIT = 30.0  # seconds to wait for an answer; a request that gets one is closed at once (Connection: close)
STALL = 0.5  # seconds to wait where neither a no-op mitmdump nor ours answers (the body never completes)
STATUS_PATH = "/memory-routing/status"

Via = Literal["proxy", "reverse"]
Expect = Literal["untouched", "injected", "framing"]


# -- the four LLM paths -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # hashed by identity
class Api:
    """One LLM path: where it lives, and how its body holds a list of turns."""

    name: str
    host: str
    path: str
    key: str  # the top-level list of turns
    turn: Callable[[Any], Any]  # a user turn with this content
    extra: dict[str, Any] = field(default_factory=dict)  # the other top-level fields

    def body(self, turns: Any, **fields: Any) -> dict[str, Any]:
        return {**self.extra, self.key: turns, **fields}

    def valid(self, text: str = QUERY, **fields: Any) -> dict[str, Any]:
        return self.body([self.turn(text)], **fields)


APIS = [
    Api("openai_chat", "api.openai.com", "/v1/chat/completions", "messages",
        lambda c: {"role": "user", "content": c}, {"model": "gpt-4o-mini"}),
    Api("openai_responses", "api.openai.com", "/v1/responses", "input",
        lambda c: {"type": "message", "role": "user", "content": c}, {"model": "gpt-4o-mini"}),
    Api("anthropic", "api.anthropic.com", "/v1/messages", "messages",
        lambda c: {"role": "user", "content": c}, {"model": "claude-sonnet-4-6", "max_tokens": 64}),
    Api("gemini", "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent", "contents",
        lambda c: {"role": "user", "parts": [{"text": c}]}),
]  # fmt: skip


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


# -- the corpus -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad request: its body for an API, header changes (None drops a default) and the expectation."""

    id: str
    body: Callable[[Api], bytes]
    headers: tuple[tuple[str, str | None], ...] = ()
    expect: Expect = "untouched"
    wait: float = WAIT
    valid_for: tuple[str, ...] = ()  # APIs for which this is a well-formed request after all: injected
    chunk: bool = False  # send the body in one chunk (with transfer-encoding: chunked among the headers)
    bug: str = ""  # a known bug that makes this case fail: it is marked xfail (strict) with this reason

    def expectation(self, api: Api) -> Expect:
        return "injected" if api.name in self.valid_for else self.expect

    def request(self, api: Api) -> tuple[bytes, bytes]:
        """The raw HTTP/1.1 request, and its body as sent (unchunked)."""
        body = _body(self, api)
        defaults = {
            "host": api.host,
            "content-type": "application/json",
            "content-length": str(len(body)),
            "connection": "close",
        }
        changed = {name for name, _ in self.headers}
        lines = [(k, v) for k, v in defaults.items() if k not in changed]
        lines += [(k, v) for k, v in self.headers if v is not None]
        head = f"POST {api.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines)
        return head.encode() + b"\r\n" + (chunked(body) if self.chunk else body), body


@functools.cache
def _body(case: Case, api: Api) -> bytes:
    """Bodies are built once per API (the compressed and huge ones take a moment)."""
    return case.body(api)


def encoded(name: str, make: Callable[[Api], bytes], label: str | None = None) -> Case:
    """A body compressed with `name`, labelled Content-Encoding `label` (default: `name`)."""
    case_id = f"{name}-labelled-{label}" if label else f"{name}-{make.__name__.strip('_').replace('_', '-')}"
    return Case(case_id, lambda api: encoding.encode(make(api), name), (("content-encoding", label or name),))


def _valid(api: Api) -> bytes:
    return dumps(api.valid())


def _garbage(api: Api) -> bytes:
    return b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4  # a gzip magic, then noise


def _not_json(api: Api) -> bytes:
    return b"zebra cluster port? " * 50



CORPUS: list[Case] = [
    # Controls: well-formed requests are injected (plain, compressed, several MB), so the checks can fail.
    Case("control-valid", _valid, expect="injected"),
    Case("control-gzip", lambda api: gzip.compress(_valid(api)), (("content-encoding", "gzip"),), "injected"),
    Case("control-chunked", _valid, (("content-length", None), ("transfer-encoding", "chunked")), "injected", chunk=True),
    Case("control-huge-3MB", lambda api: dumps(api.valid(x_pad="z " * 1_500_000)), expect="injected"),
    # Malformed JSON.
    Case("truncated", lambda api: _valid(api)[: len(_valid(api)) // 2]),
    Case("trailing-garbage", lambda api: _valid(api) + b" }{"),
    Case("python-repr", lambda api: repr(api.valid()).encode()),
    Case("empty", lambda api: b""),
    Case("whitespace-only", lambda api: b" \r\n\t "),
    Case("bare-nan", lambda api: b"NaN"),
    Case("nan-field", lambda api: dumps(api.valid(temperature=float("nan")))),  # Python-only JSON
    Case("overflowing-number", lambda api: _valid(api)[:-1] + b',"temperature":1e999}'),
    Case("not-json", _not_json),
    Case("json-without-content-type", _valid, (("content-type", None),)),
    Case("json-as-text-plain", _valid, (("content-type", "text/plain"),)),
    # JSON of the wrong shape.
    Case("top-level-array", lambda api: dumps([api.valid()])),
    Case("top-level-string", lambda api: dumps(QUERY)),
    Case("top-level-null", lambda api: b"null"),
    Case("top-level-number", lambda api: b"42"),
    Case("turns-as-dict", lambda api: dumps(api.body(api.turn(QUERY)))),
    Case("turns-as-string", lambda api: dumps(api.body(QUERY)), valid_for=("openai_responses",)),
    Case("turns-null", lambda api: dumps(api.body(None))),
    Case("turns-of-scalars", lambda api: dumps(api.body([None, 1, QUERY, [], True, 2.5]))),
    Case("content-number", lambda api: dumps(api.body([api.turn(7443)]))),
    Case("content-null", lambda api: dumps(api.body([api.turn(None)]))),
    Case("content-list-of-numbers", lambda api: dumps(api.body([api.turn([1, 2, 3])]))),
    Case("role-number", lambda api: dumps(api.body([{**api.turn(QUERY), "role": 7}]))),
    Case("deep-nesting-content", lambda api: dumps(api.body([api.turn(nested(900, QUERY))]))),
    Case("deep-nesting-100k", lambda api: b'{"%s":' % api.key.encode() + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    # Huge bodies: malformed under memory_max_body, and well-formed (it would be injected) above it.
    Case("huge-malformed-3MB", lambda api: dumps(api.valid(x_pad="z " * 1_500_000))[:-2]),
    Case("huge-over-max-body", lambda api: dumps(api.valid(x_pad="z " * (MAX_BODY // 2 + 1000)))),
    # Invalid UTF-8, and text encodings other than UTF-8.
    Case("invalid-utf8", lambda api: _valid(api).replace(b"zebra", b"zeb\xff\xfera")),
    Case("utf8-encoded-surrogate", lambda api: _valid(api).replace(b"zebra", b"zebra \xed\xa0\x80")),
    Case("escaped-lone-surrogate", lambda api: _valid(api).replace(b"zebra", b"zebra \\ud800")),
    Case("escaped-lone-surrogate-no-memory", lambda api: dumps(api.valid("quokka \ud800 quasar"))),
    Case("utf8-bom", lambda api: b"\xef\xbb\xbf" + _valid(api)),
    Case("utf16", lambda api: json.dumps(api.valid()).encode("utf-16"), (("content-type", "application/json; charset=utf-16"),)),
    Case("latin1", lambda api: json.dumps(api.valid("Où est le zebra cluster port?"), ensure_ascii=False).encode("latin-1")),
    # Compressed bodies: garbage, valid compression of non-JSON, mismatched labels, a bomb over memory_max_body.
    *[Case(f"{name}-garbage", _garbage, (("content-encoding", name),)) for name in ("gzip", "deflate", "br", "zstd")],
    *[encoded(name, _not_json) for name in ("gzip", "deflate", "br", "zstd")],
    encoded("br", _valid, "gzip"),
    encoded("gzip", _valid, "br"),
    encoded("zstd", _valid, "deflate"),
    encoded("gzip", _valid, "zstd"),
    Case("gzip-truncated", lambda api: gzip.compress(_valid(api))[:-30], (("content-encoding", "gzip"),)),
    Case("gzip-twice-labelled-once", lambda api: gzip.compress(gzip.compress(_valid(api))), (("content-encoding", "gzip"),)),
    Case("encoding-list", lambda api: gzip.compress(_valid(api)), (("content-encoding", "gzip, br"),)),
    Case("encoding-unknown", _valid, (("content-encoding", "snappy"),)),
    Case("deflate-bomb-over-max-body", lambda api: zlib.compress(_valid(api)[:-1] + b" " * (6 * MAX_BODY) + b"}", 9),
         (("content-encoding", "deflate"),)),
    # Framing errors: mitmproxy's own business; ours must behave exactly like a no-op mitmdump.
    Case("content-length-short", _valid, (("content-length", "40"),), "framing"),
    Case("content-length-long", _valid, (("content-length", "100000"),), "framing", STALL),
    Case("content-length-twice", _valid, (("content-length", "5"), ("content-length", "7")), "framing"),
    Case("content-length-not-a-number", _valid, (("content-length", "abc"),), "framing"),
    Case("content-length-negative", _valid, (("content-length", "-5"),), "framing"),
    Case("chunked-bad-size", lambda api: b"zz\r\n" + _valid(api) + b"\r\n0\r\n\r\n",
         (("content-length", None), ("transfer-encoding", "chunked")), "framing"),
    Case("chunked-unfinished", lambda api: chunked(_valid(api))[:-5],
         (("content-length", None), ("transfer-encoding", "chunked")), "framing", STALL),
    Case("chunked-and-content-length", lambda api: chunked(_valid(api)), (("transfer-encoding", "chunked"),), "framing"),
]  # fmt: skip


# -- raw exchanges ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a client saw: every byte received (the upstream's Date header removed), and how it ended."""

    received: bytes
    end: str  # "closed", "timeout" or "reset"


DATE = re.compile(rb"(?im)^date: [^\r\n]*\r\n")


def exchange(sock: socket.socket, request: bytes, wait: float) -> Outcome:
    sock.settimeout(wait)
    received, end = bytearray(), "closed"
    with sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(1 << 16):
                received += chunk
        except TimeoutError:
            end = "timeout"
        except OSError:  # reset, broken pipe or an abrupt TLS end
            end = "reset"
    return Outcome(DATE.sub(b"", bytes(received)), end)


def direct(upstream: FakeUpstream, request: bytes) -> Outcome:
    return exchange(socket.create_connection(("127.0.0.1", upstream.port), timeout=WAIT), request, WAIT)


def decoded(body: bytes, headers: dict[str, str]) -> bytes:
    ce = headers.get("content-encoding")
    return encoding.decode(body, ce) if ce else body


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(decompress=False) as upstream:
        yield upstream


class Proxy:
    """A mitmdump under test, reached like a client would; with the addon, its status endpoint too."""

    def __init__(self, proc: MitmdumpProc, via: Via) -> None:
        self.proc, self.via = proc, via
        self.tls = proc.ssl_context()
        self.status = memproxy_client(proc, via=via, timeout=WAIT)

    def send(self, api: Api, request: bytes, wait: float) -> Outcome:
        """`request` over a CONNECT tunnel and TLS (regular mode), or plain to the reverse listener."""
        if self.via == "reverse":  # a client of the reverse listener names the listener as its Host
            listener = f"host: 127.0.0.1:{self.proc.port}\r\n".encode()
            request = request.replace(f"host: {api.host}\r\n".encode(), listener, 1)
            return exchange(socket.create_connection(("127.0.0.1", self.proc.port), timeout=wait), request, wait)
        return exchange(self.tls.wrap_socket(_tunnel(self.proc, api.host, wait), server_hostname=api.host), request, wait)

    def outbox(self) -> dict[str, int]:
        """The addon's capture counters."""
        return self.status.get(STATUS_PATH).json()["outbox"]


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory, mitm_ca: Path, fake: FakeUpstream):
    """``proxies(kind, via)``: one mitmdump per kind ("addon" or "noop") and mode for the whole module."""
    base = tmp_path_factory.mktemp("fuzz")
    db = base / "memories.db"
    seed(db, SCOPE, MEMORY)
    seed(db, CODEX_SCOPE, MEMORY)
    with conftest.mitmdump_processes(base, mitm_ca) as start:  # the conftest fixture's factory, at module scope
        started: dict[tuple[str, Via], Proxy] = {}
        options = {"memory_db": str(db), "memory_max_body": str(MAX_BODY), "memory_timeout_ms": "10000"}

        def get(kind: str, via: Via) -> Proxy:
            if (kind, via) not in started:
                mode = "regular" if via == "proxy" else "reverse"
                if kind == "addon":
                    started[kind, via] = Proxy(start(mode=mode, upstream=fake, options=options), via)
                else:
                    started[kind, via] = Proxy(start(mode=mode, upstream=fake, addon=NOOP), via)
            return started[kind, via]

        yield get
        for proxy in started.values():
            proxy.status.close()


def assert_healthy(proc: MitmdumpProc, log_from: int = 0) -> None:
    """mitmdump runs, and its log (from offset `log_from`) holds no traceback."""
    assert proc.process is not None and proc.process.poll() is None, proc.log_text()
    log = proc.log_text()[log_from:]
    assert "Traceback" not in log and "Addon error" not in log, log


def assert_settled(proxy: Proxy, log_from: int, before: dict[str, int]) -> None:
    """mitmdump is healthy, and every turn captured since `before` (the outbox counters) is stored: none
    waits for a retry, none was rejected, no write failed."""
    assert_healthy(proxy.proc, log_from)
    assert wait_until(lambda: proxy.outbox()["pending"] <= before["pending"]), proxy.outbox()
    after = proxy.outbox()
    assert [after[k] - before[k] for k in ("retried", "dead", "disk_errors")] == [0, 0, 0], proxy.proc.log_text()[log_from:]


# -- the test ----------------------------------------------------------------------------------


def params() -> Iterator[Any]:
    """Every case through every API, in both modes. `make test` runs the controls on every API and each
    other case on one API (in turn); the rest is marked slow."""
    for n, case in enumerate(CORPUS):
        for api in APIS:
            marks = [pytest.mark.xfail(reason=case.bug, strict=True)] if case.bug else []
            if case.expect != "injected" and api is not APIS[n % len(APIS)]:
                marks.append(pytest.mark.slow)
            for via in ("proxy", "reverse"):
                yield pytest.param(case, api, via, marks=marks, id=f"{case.id}-{api.name}-{via}")


@pytest.mark.parametrize("case, api, via", list(params()))
def test_bad_input(case: Case, api: Api, via: Via, proxies, fake: FakeUpstream) -> None:
    proxy = proxies("addon", via)
    request, body = case.request(api)
    log_from, before = len(proxy.proc.log_text()), proxy.outbox()
    fake.clear()
    got = proxy.send(api, request, case.wait)
    seen = list(fake.requests)

    expect = case.expectation(api)
    if expect == "framing":
        noop = proxies("noop", via)
        fake.clear()
        assert (got, [r.body for r in seen]) == (noop.send(api, request, case.wait), [r.body for r in fake.requests])
        assert_healthy(noop.proc)
    else:
        assert [(r.method, r.path) for r in seen] == [("POST", api.path)], got
        arrived = seen[0]
        if expect == "untouched":
            assert arrived.body == body
        else:  # injected: the memory was added, and nothing the client sent was lost
            text = decoded(arrived.body, arrived.headers)
            assert b"zebra cluster listens on port 7443" in text
            assert_kept(json.loads(decoded(body, arrived.headers)), json.loads(text))
        assert got.end == "closed" and got == direct(fake, with_body(request, arrived.body)), got
        assert b"\r\nServer: Python/" in got.received  # the upstream answered, not mitmproxy

    assert_settled(proxy, log_from, before)


def assert_kept(sent: Any, arrived: Any) -> None:
    """Every string the client sent is in what arrived (an injection may have extended it)."""
    kept = list(strings(arrived))
    assert all(any(s in t for t in kept) for s in set(strings(sent)))


def with_body(request: bytes, body: bytes) -> bytes:
    """`request` with the body the upstream received (the same, unless memories were injected or it was chunked)."""
    head, _, original = request.partition(b"\r\n\r\n")
    if original == body:
        return request
    head = re.sub(rb"(?im)^(content-length|transfer-encoding): [^\r\n]*\r\n", b"", head + b"\r\n")
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def test_reply_with_a_lone_surrogate_is_captured(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Bad input from the other side: the upstream's reply, valid JSON, holds text that cannot be encoded."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="reverse", upstream=upstream, options={"memory_db": str(db)})
    upstream.reply = "odd \ud800 reply"
    body = APIS[0].valid("quokka question")
    answer = httpx.post(f"{proc.base_url}{APIS[0].path}", json=body, trust_env=False, timeout=WAIT)
    assert answer.json()["choices"][0]["message"]["content"] == upstream.reply
    assert len(wait_memories(db, SCOPE, timeout=5)) == 1
    assert_healthy(proc)


def test_a_user_agent_with_a_byte_that_is_not_utf8_is_captured(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Bad input in a header: its byte is a lone surrogate in the turn's metadata (the client), which must stop
    neither that turn's capture nor the next one's."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="reverse", upstream=upstream, options={"memory_db": str(db)})
    for question, agent in (("quokka question", b"Caf\xe9Bot/1.0"), ("quasar question", b"PlainBot/1.0")):
        answer = httpx.post(f"{proc.base_url}{APIS[0].path}", json=APIS[0].valid(question), headers={"user-agent": agent},
                            trust_env=False, timeout=WAIT)
        assert answer.status_code == 200
    assert len(wait_memories(db, SCOPE, n=2, timeout=10)) == 2
    assert_healthy(proc)


# -- Responses over WebSocket (Codex CLI) --------------------------------------------------------


def codex_create(**fields: Any) -> dict[str, Any]:
    """A Codex `response.create` asking QUERY in CODEX_SCOPE's project: it is injected."""
    return {**codex_request(QUERY, cwd="/work/zebra"), **fields}


def _create_text(**fields: Any) -> str:
    return json.dumps(codex_create(**fields))


# Bad client messages: each must reach the upstream exactly as sent. A text message the fake parses to a
# `response.create` object is answered by it; the others are not.
WS_CORPUS: dict[str, Callable[[], str | bytes]] = {
    "not-json": lambda: "zebra cluster port? " * 50,
    "truncated": lambda: _create_text()[:-20],
    "array": lambda: json.dumps([codex_create()]),
    "null": lambda: "null",
    "input-string": lambda: _create_text(input=QUERY),
    "input-number": lambda: _create_text(input=7443),
    "input-dict": lambda: _create_text(input=codex_create()["input"][1]),
    "deep-nesting-100k": lambda: '{"type": "response.create", "input": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "over-max-body": lambda: _create_text(x_pad="z " * (MAX_BODY // 2 + 1000)),
    "nan": lambda: _create_text(temperature=float("nan")),
    "escaped-lone-surrogate": lambda: _create_text().replace("zebra cluster", "zebra \\ud800 cluster"),
    "binary": lambda: _create_text().encode(),
}


def answered(message: str | bytes) -> bool:
    """Whether the fake upstream answers this client message with a response."""
    if isinstance(message, bytes):
        return False
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("type") == "response.create"


def string_input(message: str | bytes) -> bool:
    """Whether a client message is a `response.create` whose input is one string."""
    return answered(message) and isinstance(json.loads(message).get("input"), str)


def ws_params() -> Iterator[Any]:
    for case, make in WS_CORPUS.items():
        for where in ("first", "between"):
            for via in ("proxy", "reverse"):
                yield pytest.param(make, where, via, id=f"websocket-{case}-{where}-{via}")


@pytest.mark.parametrize("make, where, via", list(ws_params()))
def test_bad_websocket_message(
    make: Callable[[], str | bytes], where: str, via: Via, proxies, fake: FakeUpstream
) -> None:
    """A bad message first on a Codex WebSocket, or between two valid `response.create`s: it arrives as sent,
    and the connection goes on (the valid ones are answered, and injected)."""
    proxy = proxies("addon", via)
    bad, valid = make(), _create_text()
    sent = [bad, valid] if where == "first" else [valid, bad, valid]
    log_from, before = len(proxy.proc.log_text()), proxy.outbox()
    fake.clear()
    events: list[dict[str, Any]] = []
    with codex_ws(proxy.proc, via, timeout=WAIT) as ws:
        for message in sent:
            ws.send(message)
        while sum(e["type"] == "response.completed" for e in events) < sum(map(answered, sent)):
            events.append(json.loads(ws.recv(WAIT)))
    assert not [e for e in events if e["type"] == "error"], events

    [rec] = fake.requests
    assert (rec.method, rec.path) == ("GET", "/v1/responses")
    assert len(rec.ws_raw) == len(sent), [m[:80] for m in rec.ws_raw]
    for message, arrived in zip(sent, rec.ws_raw, strict=True):
        if message is bad and where == "between" and string_input(bad):
            # Valid in the Responses API: a later turn of the session that named /work/zebra gets its memory.
            assert "zebra cluster listens on port 7443" in arrived
            assert_kept(json.loads(bad), json.loads(arrived))
        elif message is bad:
            assert arrived == bad
        else:  # valid: the memory was added, nothing the client sent was lost
            assert "zebra cluster listens on port 7443" in arrived
            assert_kept(json.loads(message), json.loads(arrived))
    assert_settled(proxy, log_from, before)
