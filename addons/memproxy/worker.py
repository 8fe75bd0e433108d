"""One thread that runs blocking calls in order for the event loop: a lean `run_in_executor`."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")
Call = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class Inbox:
    """Results on their way to one event loop: one wake-up of the loop delivers all that are ready."""

    def __init__(self) -> None:
        self.results: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self.posted = False  # a delivery is scheduled on the loop and has not started

    def deliver(self) -> None:
        """On the loop: settle every result that is ready (the worker may add more meanwhile)."""
        self.posted = False  # before draining: a result added after this schedules its own delivery
        while self.results:
            _settle(*self.results.popleft())


class Worker:
    """Runs `fn(*args)` in its own thread, one call at a time, in the order they came.

    Cheaper per call than a one-thread ThreadPoolExecutor (no concurrent Future, lock or condition
    per call), and a loop that is busy when results come gets them in one wake-up, not one each: it
    matters on the request path, where the local store searches for every request.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: SimpleQueue[Call | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._inboxes: dict[asyncio.AbstractEventLoop, Inbox] = {}  # changed by the worker thread only

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
            self._post(loop, future, result, error)

    def _post(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """In the worker thread: hand a result to its loop, waking the loop unless a delivery is pending."""
        inbox = self._inboxes.get(loop)
        if inbox is None:
            for closed in [old for old in self._inboxes if old.is_closed()]:
                del self._inboxes[closed]
            inbox = self._inboxes[loop] = Inbox()
        inbox.results.append((future, result, error))
        if not inbox.posted:  # read after the append: see Inbox.deliver
            inbox.posted = True
            try:
                loop.call_soon_threadsafe(inbox.deliver)
            except RuntimeError:  # the caller's loop is closed: nobody waits for this any more
                del self._inboxes[loop]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (time budget, cancellation)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
