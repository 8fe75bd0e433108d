"""The store's and outbox's worker thread: order, results, errors, callers that give up, stop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from memproxy.worker import Worker


async def test_calls_run_in_order_on_one_thread_and_return_results():
    worker, seen = Worker("test-worker"), []

    def call(i: int) -> tuple[int, str]:
        seen.append(i)
        return i * 2, threading.current_thread().name

    results = await asyncio.gather(*(worker.run(call, i) for i in range(20)))
    assert [r for r, _ in results] == [i * 2 for i in range(20)] and seen == list(range(20))
    assert {name for _, name in results} == {"test-worker"}
    worker.stop()


async def test_an_exception_reaches_the_caller_and_the_worker_goes_on():
    worker = Worker("test-worker")

    def fail() -> None:
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        await worker.run(fail)
    assert await worker.run(lambda: "still here") == "still here"
    worker.stop()


async def test_a_caller_that_gives_up_leaves_the_call_running_and_the_worker_usable():
    worker, done = Worker("test-worker"), threading.Event()

    def slow() -> str:
        time.sleep(0.3)
        done.set()
        return "late"

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(worker.run(slow), 0.01)
    assert await worker.run(lambda: "next") == "next"  # queued behind the slow call, which finished
    assert done.is_set()
    worker.stop()


def test_stop_ends_the_thread_after_queued_calls_and_a_closed_loop_is_no_error():
    worker, ran = Worker("test-worker"), []

    async def queue() -> None:
        worker.submit(lambda: time.sleep(0.2) or ran.append(1))  # nobody awaits it; its loop closes first

    asyncio.run(queue())
    worker.stop()
    worker._thread.join(5)
    assert not worker._thread.is_alive() and ran == [1]
