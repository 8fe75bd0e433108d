"""Recall's read-path resilience: cache, single-flight, time budget, circuit breaker, log-once."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from conftest import SUPERMEMORY_KEY
from fakes.supermemory import FakeSupermemory
from memproxy.memory.base import Memory, MemoryStore, StoreError
from memproxy.memory.local import LocalStore
from memproxy.memory.supermemory import SupermemoryStore
from memproxy.protocols.common import ELISION
from memproxy.recall import MAX_QUERY_CHARS, CircuitBreaker, Recall, clip_query, within


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryStore):
    name = "counting"

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay, self.error, self.calls = delay, error, 0
        self.queries: list[str] = []

    async def search(self, scope, query, limit=5, threshold=0.0):
        self.calls += 1
        self.queries.append(query)
        await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        return [Memory("1", scope, f"about {query}", 0.9)]

    async def add(self, scope, content, custom_id=None, metadata=None):
        return "1"

    async def list(self, scope, limit=100, offset=0):
        return []

    async def forget(self, scope, memory_id):
        return False


async def test_cache_hit_skips_the_store_until_ttl_or_invalidation():
    clock, store = Clock(), CountingStore()
    recall = Recall(store, ttl=30, clock=clock)
    first = await recall.search("s", "q", 5, 0.0, 1.0)
    assert await recall.search("s", "q", 5, 0.0, 1.0) == first
    assert store.calls == 1
    await recall.search("other", "q", 5, 0.0, 1.0)  # another scope is another key
    assert store.calls == 2
    recall.invalidate("s")
    await recall.search("s", "q", 5, 0.0, 1.0)
    assert store.calls == 3
    clock.now += 31
    await recall.search("s", "q", 5, 0.0, 1.0)
    assert store.calls == 4


async def test_answers_are_contents_best_first_and_the_cache_holds_nothing_the_collector_walks():
    class Two(CountingStore):
        async def search(self, scope, query, limit=5, threshold=0.0):
            return [Memory("1", scope, "best", 0.9, {"client": "x"}), Memory("2", scope, "next", 0.5)]

    recall = Recall(Two())
    assert await recall.search("s", "q", 5, 0.0, 1.0) == ("best", "next")
    gc.collect()
    (_, cached), = recall._cache.values()
    assert cached == ("best", "next") and not gc.is_tracked(cached)


async def test_concurrent_identical_lookups_are_one_call():
    store = CountingStore(delay=0.05)
    recall = Recall(store)
    results = await asyncio.gather(*(recall.search("s", "q", 5, 0.0, 1.0) for _ in range(20)))
    assert store.calls == 1
    assert all(r == results[0] and r for r in results)


async def test_timeout_fails_open_and_the_late_answer_is_cached():
    store = CountingStore(delay=0.2)
    recall = Recall(store)
    assert await recall.search("s", "q", 5, 0.0, 0.01) == ()
    await asyncio.sleep(0.3)
    assert await recall.search("s", "q", 5, 0.0, 0.01)  # served from the cache, no new call
    assert store.calls == 1


async def test_breaker_opens_after_failures_and_probes_later():
    clock = Clock()
    store = CountingStore(error=StoreError("down", status=500))
    recall = Recall(store, breaker=CircuitBreaker(failures=3, reset_after=30, clock=clock), clock=clock)
    for i in range(10):
        assert await recall.search("s", f"q{i}", 5, 0.0, 1.0) == ()
    assert store.calls == 3 and recall.breaker.state == "open"
    clock.now += 31
    store.error = None
    assert await recall.search("s", "probe", 5, 0.0, 1.0)
    assert store.calls == 4 and recall.breaker.state == "closed"


async def test_failed_probe_reopens():
    clock = Clock()
    store = CountingStore(error=StoreError("down", status=503))
    breaker = CircuitBreaker(failures=1, reset_after=10, clock=clock)
    recall = Recall(store, breaker=breaker, clock=clock)
    await recall.search("s", "a", 5, 0.0, 1.0)
    clock.now += 11
    await recall.search("s", "b", 5, 0.0, 1.0)  # the probe fails
    await recall.search("s", "c", 5, 0.0, 1.0)  # skipped
    assert store.calls == 2 and breaker.state == "open"


async def test_slow_answers_trip_the_breaker():
    store = CountingStore(delay=0.05)
    recall = Recall(store, breaker=CircuitBreaker(failures=2, reset_after=60))
    for i in range(2):
        await recall.search("s", f"q{i}", 5, 0.0, 0.01)
    await asyncio.sleep(0.1)
    assert recall.breaker.state == "open"
    assert await recall.search("s", "q9", 5, 0.0, 1.0) == ()
    assert store.calls == 2


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_auth_and_credit_failures_are_logged_once(status, caplog):
    store = CountingStore(error=StoreError("rejected", status=status))
    recall = Recall(store, breaker=CircuitBreaker(failures=100))
    with caplog.at_level(logging.DEBUG, logger="memproxy.recall"):
        for i in range(5):
            await recall.search("s", f"q{i}", 5, 0.0, 1.0)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING and f"({status})" in r.getMessage()]
    assert len(loud) == 1


async def test_latency_reports_what_searches_waited():
    recall = Recall(CountingStore(delay=0.2))
    assert recall.latency() == {"searches": 0}
    await recall.search("s", "q", 5, 0.0, 1.0)  # waits for the store
    for _ in range(2):
        await recall.search("s", "q", 5, 0.0, 1.0)  # cache hits: counted too, as the hook waited for them
    took = recall.latency()
    assert took["searches"] == 3
    assert took["p99_ms"] >= 199 and took["p50_ms"] < took["p99_ms"]  # the slowest waited for the store


class FutureStore(CountingStore):
    """A store that answers `start_search` with a future it settles by hand, like the local store's worker."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[asyncio.Future, str, str]] = []

    def start_search(self, scope, query, limit=5, threshold=0.0):
        self.calls += 1
        future = asyncio.get_running_loop().create_future()
        self.pending.append((future, scope, query))
        return future

    def answer(self) -> None:
        for future, scope, query in self.pending:
            future.set_result((f"about {query}",))


async def test_a_store_future_is_waited_for_without_a_task_and_outlives_a_cancelled_waiter():
    store = FutureStore()
    recall = Recall(store)
    before = len(asyncio.all_tasks())
    waiters = [asyncio.ensure_future(recall.search("s", "q", 5, 0.0, 5.0)) for _ in range(3)]
    await asyncio.sleep(0)
    assert store.calls == 1 and len(asyncio.all_tasks()) == before + 3  # the waiters only: no task per fetch
    waiters[0].cancel()
    await asyncio.sleep(0)
    store.answer()
    assert waiters[0].cancelled() and not store.pending[0][0].cancelled()
    assert await asyncio.gather(*waiters[1:]) == [("about q",), ("about q",)]
    assert await recall.search("s", "q", 5, 0.0, 5.0) and store.calls == 1  # the answer was cached


async def test_within_times_out_without_touching_the_future():
    future = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await within(future, 0.01)
    assert not future.done() and not future._callbacks  # its callback was taken back
    future.set_result("late")
    assert await within(future, 0.01) == "late"


async def test_a_store_that_fails_before_it_starts_fails_open_and_counts_as_a_failure():
    store = FutureStore()

    def closed(*args):
        raise StoreError("the local store is closed")

    store.start_search = closed
    recall = Recall(store, breaker=CircuitBreaker(failures=1))
    assert await recall.search("s", "q", 5, 0.0, 1.0) == ()
    await asyncio.sleep(0)  # the fetch's done callback runs on the loop's next turn
    assert recall.breaker.state == "open"


# -- what a client's input can and cannot do -------------------------------------------------------


def test_clip_query_keeps_both_ends_of_a_long_query_in_whole_words():
    assert clip_query("a short question") == "a short question"
    query = "Why does this fail? " + "alpha beta gamma " * 1000 + "KeyError: user"
    clipped = clip_query(query)
    head, tail = clipped.split(ELISION)
    assert head.startswith("Why does this fail?") and tail.endswith("KeyError: user")
    assert len(head) + len(tail) <= MAX_QUERY_CHARS
    assert set(clipped.replace(ELISION, " ").split()) <= set(query.split())  # no word cut in two


async def test_a_huge_query_is_searched_clipped_and_cached_under_a_digest():
    store = CountingStore()
    recall = Recall(store)
    query = "first " + "word " * 400_000 + "last"
    assert await recall.search("s", query, 5, 0.0, 1.0)
    assert await recall.search("s", query, 5, 0.0, 1.0)
    assert store.calls == 1
    (searched,) = store.queries
    assert searched == clip_query(query) and searched.startswith("first ") and searched.endswith(" last")
    ((scope, digest, limit, threshold),) = recall._cache
    assert (scope, len(digest), limit, threshold) == ("s", 16, 5, 0.0)


async def test_supermemory_is_asked_with_the_clipped_query(supermemory: FakeSupermemory):
    store = SupermemoryStore(SUPERMEMORY_KEY, supermemory.url)
    try:
        await Recall(store).search("s", "first " + "word " * 400_000 + "last", 5, 0.0, 10.0)
    finally:
        await store.close()
    q = supermemory.last("/v4/search").json["q"]
    assert len(q) <= MAX_QUERY_CHARS + len(ELISION) and q.startswith("first ") and q.endswith(" last")


async def test_late_answers_of_the_local_store_leave_the_breaker_closed():
    assert LocalStore.late_is_failure is False and SupermemoryStore.late_is_failure is True

    class Busy(CountingStore):
        late_is_failure = False

    store = Busy(delay=0.05)
    recall = Recall(store, breaker=CircuitBreaker(failures=2, reset_after=60))
    for i in range(5):
        assert await recall.search("s", f"q{i}", 5, 0.0, 0.01) == ()
    await asyncio.sleep(0.1)
    assert recall.breaker.state == "closed"
    assert await recall.search("s", "fresh", 5, 0.0, 1.0) and store.calls == 6


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_a_refused_request_does_not_trip_the_breaker(status):
    store = CountingStore(error=StoreError("refused", status=status))
    recall = Recall(store, breaker=CircuitBreaker(failures=2))
    for i in range(5):
        assert await recall.search("s", f"q{i}", 5, 0.0, 1.0) == ()
    assert store.calls == 5 and recall.breaker.state == "closed"


@pytest.mark.parametrize("status", [404, 405])
async def test_a_missing_endpoint_trips_the_breaker_and_says_so_once(status, caplog):
    """A search POSTed to a path the server does not have: the base URL is wrong, for every request."""
    store = CountingStore(error=StoreError("refused", status=status, refuses_all=True))
    recall = Recall(store, breaker=CircuitBreaker(failures=2, reset_after=60))
    with caplog.at_level(logging.DEBUG, logger="memproxy.recall"):
        for i in range(5):
            assert await recall.search("s", f"q{i}", 5, 0.0, 1.0) == ()
    assert store.calls == 2 and recall.breaker.state == "open"
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR and "SUPERMEMORY_BASE_URL" in r.getMessage()]
    assert len(loud) == 1


async def test_a_cancelled_probe_lets_the_next_call_probe():
    clock = Clock()
    store = FutureStore()
    breaker = CircuitBreaker(failures=1, reset_after=10, clock=clock)
    breaker.failure()
    clock.now += 11
    recall = Recall(store, breaker=breaker, clock=clock)
    waiter = asyncio.ensure_future(recall.search("s", "probe", 5, 0.0, 5.0))
    await asyncio.sleep(0)
    assert breaker.state == "half-open"
    store.pending[0][0].cancel()  # the store gave up on it (closing)
    assert await waiter == ()
    assert breaker.state == "open"
    search = asyncio.ensure_future(recall.search("s", "again", 5, 0.0, 5.0))
    await asyncio.sleep(0)
    assert store.calls == 2  # probed again, not stuck half-open
    store.pending[1][0].set_result(("about again",))
    assert await search == ("about again",) and breaker.state == "closed"
