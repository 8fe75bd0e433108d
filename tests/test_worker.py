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


async def test_results_that_wait_for_a_busy_loop_come_in_one_wake_up():
    worker, loop = Worker("test-worker"), asyncio.get_running_loop()
    wakes = []
    real = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):
        wakes.append(callback)
        return real(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting
    try:
        await worker.run(int)  # the thread is up
        wakes.clear()
        futures = [worker.submit(lambda i=i: i) for i in range(10)]
        last = worker.submit(threading.Event().wait, 0.2)  # all ten are done before the loop looks again
        time.sleep(0.1)  # the loop is busy meanwhile
        assert await asyncio.gather(*futures) == list(range(10))
        await last
        assert len(wakes) <= 2  # one for the ten, maybe one more for the last; not eleven
    finally:
        del loop.call_soon_threadsafe
        worker.stop()


def test_each_loop_gets_its_own_results():
    worker, seen = Worker("test-worker"), {}

    def client(name: str) -> None:
        async def go() -> None:
            seen[name] = await asyncio.gather(*(worker.run(lambda i=i: (name, i)) for i in range(50)))

        asyncio.run(go())

    threads = [threading.Thread(target=client, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {n: [(n, i) for i in range(50)] for n in ("a", "b")}
    worker.stop()
