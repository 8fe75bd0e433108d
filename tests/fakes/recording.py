"""What the fake servers share: an aiohttp app on 127.0.0.1 served from its own thread, and a record
of every request it received, for the (synchronous) test thread to read and wait for."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from aiohttp import web

T = TypeVar("T")


@dataclass
class Recorded:
    """One request as a fake server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lowercased keys
    body: bytes
    json: Any  # parsed body, or None
    ws_messages: list[Any] = field(default_factory=list)  # parsed client messages (WebSocket)
    ws_raw: list[str | bytes] = field(default_factory=list)  # client messages as received: text and binary
    sent: bytearray = field(default_factory=bytearray)  # the answer's body written back (SSE or JSON), byte for byte


class RecordingServer:
    """A fake server's lifecycle (`start`/`stop`, or `with`) and its record of requests.

    A subclass builds its app in `_serve` (setting `_runner` and `port`), records each request with
    `_record`, and says in `_matches` which recorded requests `last(path)` means.
    """

    thread_name = "fake-server"

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.port = 0
        self._seen = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # lifecycle

    def start(self) -> Self:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        self._run(self._serve())
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            self._run(self._runner.cleanup())
        self._run(self._stopping())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, f"{self.thread_name} not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _stopping(self) -> None:
        """On the server's loop, after the app is cleaned up: whatever else must end."""

    # test-side helpers

    def _matches(self, rec: Recorded, path: str) -> bool:
        return rec.path == path

    def last(self, path: str | None = None) -> Recorded:
        """The latest request (to ``path``, as `_matches` reads it)."""
        with self._seen:
            for rec in reversed(self.requests):
                if path is None or self._matches(rec, path):
                    return rec
            seen = [r.path for r in self.requests]
        raise LookupError(f"no request to {path or 'any path'}; seen: {seen}")

    def clear(self) -> None:
        with self._seen:
            self.requests.clear()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Recorded]:
        """Wait until at least ``n`` requests were recorded; return them."""
        with self._seen:
            if not self._seen.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests, got {len(self.requests)}")
            return list(self.requests)

    # server side

    def _record(self, request: web.Request, body: bytes, data: Any) -> Recorded:
        """Record a request (headers with lowercased names, repeats joined by ", ") and wake waiters."""
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        rec = Recorded(request.method, request.path, dict(request.query), headers, body, data)
        with self._seen:
            self.requests.append(rec)
            self._seen.notify_all()
        return rec
