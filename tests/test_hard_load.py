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

import httpx
import httpx2  # the HTTP client the openai and anthropic SDKs are built on
import pytest
from conftest import (
    MitmdumpProc,
    Via,
    api_url,
    make_async_anthropic_client,
    make_async_http_client,
    make_async_openai_client,
    routing_status,
)
from e2e_helpers import MEMORY_TAG, memories, seed, wait_until
from fakes import FakeUpstream, Recorded

pytestmark = pytest.mark.e2e

N = 200
KINDS = ("openai-sdk", "anthropic-sdk", "chat-raw", "messages-raw")
SEEDED = "User: the parser module is written in Rust\nAssistant: noted"
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


class Load:
    """N streaming requests, spread over the four client kinds, through one mitmdump."""

    def __init__(self, proc: MitmdumpProc, via: Via) -> None:
        self.proc, self.via = proc, via
        self.received: dict[str, bytearray] = {}  # x-load-id -> raw bytes the client got
        self.texts: dict[str, str] = {}  # x-load-id -> reply text an SDK assembled
        sdk = {"limits": httpx2.Limits(max_connections=N), "timeout": 120, "event_hooks": {"response": [self.tap]}}
        self.openai = make_async_openai_client(proc, via=via, **sdk)
        self.anthropic = make_async_anthropic_client(proc, via=via, **sdk)
        self.raw = make_async_http_client(proc, via=via, limits=httpx.Limits(max_connections=N), timeout=120)

    async def tap(self, response: httpx2.Response) -> None:
        """The SDKs' response hook: keep a copy of the raw bytes by the request's x-load-id header."""
        copy = self.received.setdefault(response.request.headers["x-load-id"], bytearray())
        response.stream = _Copy(response.stream, copy)

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
            host, path = ("api.openai.com", "/v1/chat/completions") if chat else ("api.anthropic.com", "/v1/messages")
            url = api_url(self.proc, self.via, host, path)
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
            await self.openai.close()
            await self.anthropic.close()
            await self.raw.aclose()
        return jobs


@pytest.mark.parametrize("via", ["proxy", "reverse"])
def test_200_concurrent_streams_exact_bytes_and_each_turn_stored_once(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, via: Via
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

    def outbox() -> dict[str, int]:
        return routing_status(proc, via=via)["outbox"]

    assert wait_until(lambda: (s := outbox())["submitted"] == N and s["pending"] == 0, 60), proc.log_text()
    assert outbox() == {
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
