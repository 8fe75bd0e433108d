"""Recall: search a scope's memories within a time budget, behind a TTL cache and a circuit breaker."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .logs import Once
from .memory.base import MemoryStore, StoreError
from .protocols.common import ELISION

logger = logging.getLogger(__name__)

Key = tuple[str, bytes, int, float]  # (scope, digest of the query, limit, threshold)
Texts = tuple[str, ...]  # what recall gives the request path: the contents of the memories found, best first
T = TypeVar("T")
PROFILE = b"profile"  # the query part of a profile lookup's key (a digest is 16 bytes)
MAX_QUERY_CHARS = 2000

# Backend answers that will not get better by retrying: say so once, clearly.
LOUD_STATUSES = {
    401: "the memory backend rejected the API key (401): check SUPERMEMORY_API_KEY",
    402: "the memory backend is out of credits (402): recall and storage are paused until it is topped up",
    403: "the memory backend refused access (403): check the API key's permissions",
}


def refusal(status: int | None) -> str:
    """What a refusal of every request (StoreError.refuses_all) asks the user to fix."""
    return LOUD_STATUSES.get(status, f"the memory backend has no such endpoint ({status}): check SUPERMEMORY_BASE_URL")


def clip_query(query: str, limit: int = MAX_QUERY_CHARS) -> str:
    """`query` as a store searches it: whole if short, else its first and last `limit // 2` characters.

    A search uses a few dozen words (the local store the 24 longest distinct ones, Supermemory an embedding
    of `q`), so a longer query only costs: the store's time, the request's size, a service's limits. A long
    message is mostly pasted material, a log, a file or a diff, and what it asks is usually said before or
    after the paste (a question above it, a traceback's last lines or a request below it), so both ends
    are kept. A word cut in two at either end is left out.
    """
    if len(query) <= limit:
        return query
    half = limit // 2
    head, tail = query[:half], query[-half:]
    if not query[half].isspace() and len(words := head.rsplit(None, 1)) == 2:
        head = words[0]
    if not query[-half - 1].isspace() and len(words := tail.split(None, 1)) == 2:
        tail = words[1]
    return head + ELISION + tail


def query_key(query: str) -> bytes:
    """The cache's name for `query`: a digest, so that an entry's size does not depend on the query's."""
    return hashlib.blake2b(query.encode("utf-8", "surrogatepass"), digest_size=16).digest()


async def within(future: asyncio.Future[T], timeout: float) -> T:
    """`future`'s result, waited for at most `timeout` seconds (else TimeoutError).

    Neither a timeout nor a cancelled caller touches `future`, so other callers and its done callbacks
    still get it: `asyncio.wait_for(asyncio.shield(future), timeout)` for one future, without a task.
    """
    if not future.done():
        waiter = future.get_loop().create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        future.add_done_callback(wake)
        timer = future.get_loop().call_later(timeout, wake)
        try:
            await waiter
        finally:
            timer.cancel()
            future.remove_done_callback(wake)
        if not future.done():
            raise TimeoutError
    return future.result()


class CircuitBreaker:
    """Closed while the backend works; open (skip calls) after `failures` failures in a row;
    after `reset_after` seconds one probe call is let through (half-open)."""

    def __init__(self, failures: int = 5, reset_after: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.reset_after = reset_after
        self.clock = clock
        self.failed = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.probing else "open"

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if not self.probing and self.clock() >= self.opened_at + self.reset_after:
            self.probing = True  # exactly one probe until it reports back
            return True
        return False

    def success(self) -> None:
        if self.opened_at is not None:
            logger.info("memproxy: memory backend is answering again; recall resumed")
        self.failed, self.opened_at, self.probing = 0, None, False

    def release(self) -> None:
        """An outcome that says nothing of the backend's health (a cancelled call, a refused request): a probe
        ends without a verdict, so that the next call probes again."""
        self.probing = False

    def failure(self) -> None:
        self.failed += 1
        if self.probing or (self.opened_at is None and self.failed >= self.failures):
            if self.opened_at is None:
                logger.warning(
                    "memproxy: memory backend failing; skipping recall for %.0f s before probing again", self.reset_after
                )
            self.opened_at, self.probing = self.clock(), False


class Recall:
    """Searches `store` for the request path: cached, single-flight, budgeted, failing open.

    It answers with the memories' contents only, a tuple of strings: what injection uses. A plain string is
    nothing the collector walks; a memory that names the prompts of its turns (a stored turn) is a string that
    carries their keys as well (memory.base.Keyed), for the echo check, and is walked: at most `max_entries`
    answers of a few memories each. The cache is keyed by a digest of the query, which is clipped first
    (clip_query): an entry's size does not depend on what a client sent.

    The breaker opens on the backend's failures, not on a client's input:
    - an error counts, unless the backend refused this one request (a 4xx other than 408, 409 and 429, such
      as a query it will not take), which says nothing of its health either way; a refusal of every request
      (StoreError.refuses_all: the key, the account or the URL is wrong) counts;
    - an answer after the time budget counts only for a store whose `late_is_failure` is set. Supermemory's
      is: a slow service stays slow for a while, and until it recovers every request would wait out its
      budget for nothing. The local store's is not: its searches take turns on one thread, so a late
      answer means the thread was busy (a burst of requests, a batch of writes, an index merge), and the
      next search is on time again; opening the breaker would take every scope's memories away for
      `reset_after` seconds for what one burst did. Clipped queries keep any one search short.
    """

    def __init__(
        self,
        store: MemoryStore,
        *,
        ttl: float = 30.0,
        max_entries: int = 2048,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self.clock = clock
        self._cache: OrderedDict[Key, tuple[float, Texts]] = OrderedDict()
        self._inflight: dict[Key, asyncio.Future[Texts]] = {}
        self._said = Once(logger)
        self._took: deque[float] = deque(maxlen=1024)  # seconds, of the latest searches (cache hits too)

    async def search(self, scope: str, query: str, limit: int, threshold: float, timeout: float) -> Texts:
        """The contents of the memories for the query (clipped), or () on timeout, failure or an open breaker.
        Never raises."""
        query = clip_query(query)
        if not query.strip():
            return ()
        started = time.perf_counter()
        try:
            return await self._lookup(
                (scope, query_key(query), limit, threshold),
                lambda: self.store.start_search(scope, query, limit, threshold),
                timeout,
            )
        finally:
            self._took.append(time.perf_counter() - started)

    def latency(self) -> dict[str, float | int]:
        """How long the latest searches took, as the request hook waited for them (ms; for status)."""
        took = sorted(self._took)
        if not took:
            return {"searches": 0}
        return {
            "searches": len(took),
            "p50_ms": round(statistics.median(took) * 1000, 3),
            "p99_ms": round(took[min(len(took) - 1, int(len(took) * 0.99))] * 1000, 3),
        }

    async def profile(self, scope: str, timeout: float) -> Texts:
        """The scope's profile facts (backends that keep one); () on any failure."""

        async def fetch() -> Texts:
            return tuple(await self.store.profile(scope))

        return await self._lookup((scope, PROFILE, 0, 0.0), fetch, timeout)

    async def _lookup(self, key: Key, fetch: Callable[[], Awaitable[Texts]], timeout: float) -> Texts:
        """Cached, single-flight, budgeted, behind the breaker."""
        if (hit := self._cache.get(key)) is not None:
            if hit[0] > self.clock():
                return hit[1]
            del self._cache[key]
        future = self._inflight.get(key)
        if future is None:
            if not self.breaker.allow():
                return ()
            future = self._start(key, fetch, timeout)
        try:
            return await within(future, timeout)
        except TimeoutError:
            self._once("timeout", f"recall took longer than {timeout * 1000:.0f} ms; went on without memories")
        except asyncio.CancelledError:
            if not future.cancelled() or ((task := asyncio.current_task()) is not None and task.cancelling()):
                raise  # the caller was cancelled, not the fetch
            self._once("cancelled", "recall was cancelled (the store is closing); went on without memories")
        except Exception as e:  # noqa: BLE001 - fail open; _finished already logged
            self._once(f"error:{type(e).__name__}", f"recall failed, went on without memories: {type(e).__name__}: {e}")
        return ()

    def _start(self, key: Key, fetch: Callable[[], Awaitable[Texts]], budget: float) -> asyncio.Future[Texts]:
        """Start a fetch that the breaker and the cache hear the end of, however long its waiters wait.

        A store's future is used as it is; only a coroutine gets a task."""
        try:
            future = asyncio.ensure_future(fetch())
        except Exception as e:  # noqa: BLE001 - a store that fails before it starts (closed)
            future = asyncio.get_running_loop().create_future()
            future.set_exception(e)
        self._inflight[key] = future
        future.add_done_callback(functools.partial(self._finished, key, self.clock(), budget))
        return future

    def _finished(self, key: Key, started: float, budget: float, future: asyncio.Future[Texts]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if future.cancelled():
            self.breaker.release()
            return
        if (e := future.exception()) is not None:  # retrieved here, so nobody waiting is no warning
            if isinstance(e, StoreError) and e.permanent and not e.refuses_all:
                self.breaker.release()  # this request was refused; the backend answered
            else:
                self.breaker.failure()
            if isinstance(e, StoreError) and e.refuses_all:
                self._once(f"status:{e.status}", refusal(e.status), logging.ERROR)
            return
        if self.store.late_is_failure and self.clock() - started > budget:
            self.breaker.failure()  # it answered, but too late to be of use (see the class's docstring)
        else:
            self.breaker.success()
        self._cache[key] = (self.clock() + self.ttl, future.result())
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def invalidate(self, scope: str | None = None) -> None:
        """Forget cached results of `scope` (a turn was just stored there), or of every scope."""
        if scope is None:
            self._cache.clear()
            return
        for key in [k for k in self._cache if k[0] == scope]:
            del self._cache[key]

    def _once(self, key: str, message: str, level: int = logging.WARNING) -> None:
        self._said(key, "memproxy: %s", message, level=level)
