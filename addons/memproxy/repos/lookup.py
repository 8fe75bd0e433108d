"""Project roots of working directories for the event loop: cached, looked up in threads, within a budget.

The request path asks for the root of every request's working directory; the file system is looked at
once per directory and `ttl` (so that a `git init` made later is noticed), and the answer is kept in a
bounded LRU cache, as are a state dir's None and a fallback's path as written.

A look-up runs in a daemon thread of its own, not in an executor: on a network file system that hangs it
may never end, and such a thread must neither hold up the threads the rest of memproxy shares nor keep the
process from exiting. Callers that ask for one directory meanwhile share its look-up. Past `budget` a caller
gets the path as written, which is cached until the answer comes; at most `max_threads` look-ups run at
once (hung ones count), and past that a caller gets the path as written at once.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ..logs import Once, brief
from .roots import as_written, project_root

logger = logging.getLogger(__name__)

CACHE_SIZE = 4096  # working directories
TTL = 60.0  # seconds an answer is kept
BUDGET = 0.1  # seconds a caller waits for a look-up; a local one takes well under a millisecond
MAX_THREADS = 8  # look-ups running at once


class Unknown(enum.Enum):
    """`Roots.cached`'s answer for a directory it holds no fresh answer for."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


class Roots:
    """The project root (`roots.project_root`) of working directories, for code on the event loop."""

    def __init__(
        self,
        *,
        size: int = CACHE_SIZE,
        ttl: float = TTL,
        budget: float = BUDGET,
        max_threads: int = MAX_THREADS,
        home: str | None = None,
        find: Callable[[str], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size, self.ttl, self.budget, self.max_threads = size, ttl, budget, max_threads
        self.home = home if home is not None else os.path.expanduser("~")  # now: it may read the user database
        self._find = find or functools.partial(project_root, home=self.home)
        self._clock = clock
        self._cache: OrderedDict[str, tuple[str | None, float]] = OrderedDict()  # path -> (root, expiry)
        self._running: dict[str, asyncio.Future[str | None]] = {}  # path -> its look-up's answer
        self._once = Once(logger)

    def cached(self, path: str) -> str | None | Unknown:
        """The root of `path` if a fresh answer is cached (None: not a project), else UNKNOWN. Never blocks."""
        entry = self._cache.get(path)
        if entry is None or entry[1] <= self._clock():
            return UNKNOWN
        self._cache.move_to_end(path)
        return entry[0]

    async def resolve(self, path: str) -> str | None:
        """The root of `path` (None: not a project): cached, else looked up in a thread within the budget,
        else the path as written."""
        if (root := self.cached(path)) is not UNKNOWN:
            return root
        written = as_written(path, self.home)
        if written is None:  # by its text alone: nothing to look up
            self._store(path, None)
            return None
        future = self._running.get(path) or self._start(path, written)
        if future is None:
            self._once("threads", "memproxy: %d project look-ups hang; using working directories as written",
                       self.max_threads)
            return written
        try:
            async with asyncio.timeout(self.budget):
                return await asyncio.shield(future)
        except TimeoutError:
            self._once(("slow", path), "memproxy: looking up the project of %s takes over %g s; using the path as"
                       " written until it answers", path, self.budget)
            self._store(path, written)
            return written

    def _start(self, path: str, written: str) -> asyncio.Future[str | None] | None:
        """Look `path` up in a new thread; None if `max_threads` are running."""
        if len(self._running) >= self.max_threads:
            return None
        loop = asyncio.get_running_loop()
        future = self._running[path] = loop.create_future()

        def look_up() -> None:
            try:
                root, error = self._find(path), None
            except Exception as e:  # noqa: BLE001 - logged on the loop
                root, error = written, e
            try:
                loop.call_soon_threadsafe(self._done, path, future, root, error)
            except RuntimeError:  # the loop is closed: nobody waits
                pass

        threading.Thread(target=look_up, name="memproxy-roots", daemon=True).start()
        return future

    def _done(self, path: str, future: asyncio.Future[str | None], root: str | None, error: Exception | None) -> None:
        """On the loop: cache a look-up's answer and hand it to its callers."""
        if self._running.get(path) is future:
            del self._running[path]
        if error is not None:
            self._once(("error", type(error)), "memproxy: project look-up failed (%s); using the path as written",
                       brief(error))
        self._store(path, root)
        if not future.done():
            future.set_result(root)

    def _store(self, path: str, root: str | None) -> None:
        self._cache[path] = (root, self._clock() + self.ttl)
        self._cache.move_to_end(path)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
