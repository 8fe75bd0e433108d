"""Load: 200 concurrent streams through a real mitmdump with recall and capture on.

Official async SDKs and raw httpx clients, OpenAI and Anthropic formats mixed, over HTTPS through the
proxy (trusting the mitmproxy CA) and in reverse mode. The fake upstream holds every stream open until
all 200 have arrived, gives each request its own reply, and records the SSE bytes it wrote: each
client must receive exactly those bytes, and each turn must be stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx
import httpx2  # the HTTP client the openai and anthropic SDKs are built on
import openai
import pytest
from conftest import MitmdumpProc, Via, make_http_client
from e2e_helpers import memories, seed, wait_until
from fakes import FakeUpstream, Recorded

pytestmark = pytest.mark.e2e

N = 200
KINDS = ("openai-sdk", "anthropic-sdk", "chat-raw", "messages-raw")
SEEDED = "User: the parser module is written in Rust\nAssistant: noted"
MEMORY_TAG = "<recalled-memories"
LAST_EVENT = {"chat": b"data: [DONE]\n\n", "messages": b'event: message_stop\ndata: {"type": "message_stop"}\n\n'}


def question(load_id: str) -> str:
    return f"Question {load_id} about the parser module?"


def reply(rec: Recorded) -> str:
    return f"Reply to {rec.headers['x-load-id']}: the parser module is written in Rust."


class _Copy(httpx2.AsyncByteStream):
    """A response body stream that keeps a copy of every raw chunk it yields."""

    def __init__(self, stream: httpx2.AsyncByteStream, copy: bytearray) -> None:
        self.stream, self.copy = stream, copy

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            self.copy += chunk
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


class Tap(httpx2.AsyncHTTPTransport):
    """The SDKs' transport, keeping the raw bytes of each response by the request's x-load-id header."""

    def __init__(self, received: dict[str, bytearray], **kwargs) -> None:
        super().__init__(**kwargs)
        self.received = received

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        response.stream = _Copy(response.stream, self.received.setdefault(request.headers["x-load-id"], bytearray()))
        return response


class Load:
    """N streaming requests, spread over the four client kinds, through one mitmdump."""

    def __init__(self, proc: MitmdumpProc, via: Via) -> None:
        self.proc, self.via = proc, via
        self.received: dict[str, bytearray] = {}  # x-load-id -> raw bytes the client got
        self.texts: dict[str, str] = {}  # x-load-id -> reply text an SDK assembled
        transport = {"proxy": proc.proxy_url, "verify": proc.ssl_context()} if via == "proxy" else {}
        tap = Tap(self.received, limits=httpx2.Limits(max_connections=N), **transport)
        self.sdk_http = httpx2.AsyncClient(transport=tap, trust_env=False, timeout=120)
        self.raw = httpx.AsyncClient(limits=httpx.Limits(max_connections=N), **transport, trust_env=False, timeout=120)
        self.openai = openai.AsyncOpenAI(
            api_key="sk-test-fake-key", base_url=self.url("api.openai.com", "/v1"), http_client=self.sdk_http, max_retries=0
        )
        self.anthropic = anthropic.AsyncAnthropic(
            api_key="sk-ant-test-fake-key", base_url=self.url("api.anthropic.com"), http_client=self.sdk_http, max_retries=0
        )

    def url(self, host: str, path: str = "") -> str:
        return f"https://{host}{path}" if self.via == "proxy" else f"{self.proc.base_url}{path}"

    async def one(self, kind: str, load_id: str) -> None:
        headers = {"x-load-id": load_id, "x-memory-user-id": f"load-{kind}"}
        messages = [{"role": "user", "content": question(load_id)}]
        if kind == "openai-sdk":
            stream = await self.openai.chat.completions.create(
                model="gpt-4o", messages=messages, stream=True, extra_headers=headers
            )
            self.texts[load_id] = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        elif kind == "anthropic-sdk":
            async with self.anthropic.messages.stream(
                model="claude-sonnet-4-6", max_tokens=64, messages=messages, extra_headers=headers
            ) as stream:
                self.texts[load_id] = "".join([text async for text in stream.text_stream])
        else:
            chat = kind == "chat-raw"
            url = self.url(*(("api.openai.com", "/v1/chat/completions") if chat else ("api.anthropic.com", "/v1/messages")))
            body = {"model": "gpt-4o" if chat else "claude-sonnet-4-6", "stream": True, "messages": messages}
            if not chat:
                body["max_tokens"] = 64
                headers["anthropic-version"] = "2023-06-01"
            copy = self.received.setdefault(load_id, bytearray())
            async with self.raw.stream("POST", url, json=body, headers=headers) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_raw():
                    copy += chunk

    async def run(self) -> list[tuple[str, str]]:
        jobs = [(KINDS[i % len(KINDS)], f"load-{i:03d}") for i in range(N)]
        try:
            await asyncio.gather(*(self.one(kind, load_id) for kind, load_id in jobs))
        finally:
            await self.sdk_http.aclose()
            await self.raw.aclose()
        return jobs

    def status(self) -> dict:
        with make_http_client(self.proc, via=self.via) as client:
            return client.get("/memory-routing/status").json()


@pytest.mark.parametrize("via", ["proxy", "reverse"])
def test_200_concurrent_streams_exact_bytes_and_each_turn_stored_once(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, via: str
) -> None:
    db = tmp_path / "memories.db"
    for kind in KINDS:
        seed(db, f"load-{kind}", SEEDED)
    proc = mitmdump(
        mode="regular" if via == "proxy" else "reverse",
        upstream=upstream,
        # A generous recall budget: every request is injected, however loaded the two cores are.
        options={"memory_db": str(db), "memory_outbox": str(tmp_path / "outbox.db"), "memory_timeout_ms": "30000"},
    )
    upstream.reply_for, upstream.lockstep, upstream.lockstep_timeout = reply, True, 60
    load = Load(proc, via)

    async def drive() -> list[tuple[str, str]]:
        async def release_when_all_arrived() -> None:  # every stream is open at once before any goes on
            await asyncio.to_thread(upstream.wait_for, N, 60)
            upstream.release(N * upstream.chunks)

        jobs, _ = await asyncio.gather(load.run(), release_when_all_arrived())
        return jobs

    jobs = asyncio.run(drive())
    sent = {rec.headers["x-load-id"]: rec for rec in upstream.requests}
    assert len(sent) == len(upstream.requests) == N
    for kind, load_id in jobs:
        rec = sent[load_id]
        assert load.received[load_id] == rec.sent, (kind, load_id)
        assert rec.sent.endswith(LAST_EVENT["chat" if rec.path.endswith("/completions") else "messages"]), load_id
        if kind.endswith("-sdk"):
            assert load.texts[load_id] == reply(rec)
    assert all(MEMORY_TAG in json.dumps(rec.json) for rec in upstream.requests), "recall skipped a request"

    assert wait_until(lambda: (s := load.status()["outbox"])["submitted"] == N and s["pending"] == 0, 60), proc.log_text()
    assert load.status()["outbox"] == {
        "submitted": N, "stored": N, "retried": 0, "dead": 0, "disk_errors": 0, "pending": 0, "dead_letters": 0
    }
    for kind in KINDS:
        stored = [m for m in memories(db, f"load-{kind}") if m != SEEDED]
        ids = sorted(load_id for k, load_id in jobs if k == kind)
        assert len(stored) == len(ids)
        for load_id in ids:  # each turn once, with its own reply
            (turn,) = [m for m in stored if question(load_id) in m]
            assert f"Reply to {load_id}:" in turn and MEMORY_TAG not in turn
    assert "Traceback" not in proc.log_text()
