"""One thread that runs blocking calls in order for the event loop: a lean `run_in_executor`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")
Call = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class Worker:
    """Runs `fn(*args)` in its own thread, one call at a time, in the order they came.

    Cheaper per call than a one-thread ThreadPoolExecutor (no concurrent Future, lock or condition
    per call): it matters on the request path, where the local store searches for every request.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: SimpleQueue[Call | None] = SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue `fn(*args)`; the future, on the running loop, gets its result or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            # A daemon: a call cut short at exit is a rolled-back SQLite transaction; close() drains the queue.
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put((loop, future, fn, args))
        return future

    def stop(self) -> None:
        """Let the thread end once the calls queued before this one have run."""
        self._queue.put(None)

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, future, fn, args = item
            try:
                result, error = fn(*args), None
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                result, error = None, e
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the caller's loop is closed: nobody waits for this any more
                pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (time budget, cancellation)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
