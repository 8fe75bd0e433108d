"""The outbox, against real SQLite files and a scripted memory store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SUPERMEMORY_KEY
from e2e_helpers import outbox_rows
from fakes.supermemory import FakeSupermemory
from memproxy.capture import Turn
from memproxy.memory.base import Memory, MemoryStore, StoreError
from memproxy.memory.local import LocalStore
from memproxy.memory.supermemory import SupermemoryStore
from memproxy.outbox import Outbox, held, list_dead_letters, table
from memproxy.recall import Recall

FAST = {"base_delay": 0.01, "max_delay": 0.2}


class ScriptedStore(MemoryStore):
    """Records every add(); raises the scripted errors first, then `fail` (if set) or `reject[custom_id]`."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []  # (monotonic time, custom_id)
        self.received: list[tuple[str, str, str | None, dict[str, Any] | None]] = []
        self.stored: Counter[str] = Counter()
        self.script: list[Exception] = []
        self.fail: Exception | None = None
        self.reject: dict[str, Exception] = {}

    async def add(
        self, scope: str, content: str, custom_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> str:
        assert custom_id is not None
        self.calls.append((time.monotonic(), custom_id))
        self.received.append((scope, content, custom_id, metadata))
        error = self.script.pop(0) if self.script else self.fail or self.reject.get(custom_id)
        if error is not None:
            raise error
        self.stored[custom_id] += 1
        return custom_id

    async def search(self, scope: str, query: str, limit: int = 5, threshold: float = 0.0) -> list[Memory]:
        return []

    async def list(self, scope: str, limit: int = 100, offset: int = 0) -> list[Memory]:
        return []

    async def forget(self, scope: str, memory_id: str) -> bool:
        return False

    def called(self, custom_id: str) -> int:
        return sum(1 for _, cid in self.calls if cid == custom_id)


def turns(n: int, scope: str = "claude-code:repo") -> list[Turn]:
    return [Turn(scope, f"secret question {i}", f"secret answer {i}", {"model": "m", "i": i}) for i in range(n)]


@pytest.fixture
def store() -> ScriptedStore:
    return ScriptedStore()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
async def outbox(path: Path, store: ScriptedStore) -> AsyncIterator[Outbox]:
    box = Outbox(path, store, **FAST)
    await box.start()
    yield box
    await box.close(timeout=0)


async def test_success_stores_each_turn_once(outbox: Outbox, store: ScriptedStore) -> None:
    batch = turns(5)
    for turn in batch:
        outbox.submit(turn)
    assert await outbox.flush(5)
    assert store.stored == Counter(t.custom_id for t in batch)
    assert len(store.calls) == 5
    assert outbox.stats == {"submitted": 5, "stored": 5, "retried": 0, "dead": 0, "disk_errors": 0, "pending": 0}
    assert await outbox.count_pending() == 0


async def test_sends_the_turn_to_the_current_store(outbox: Outbox, store: ScriptedStore) -> None:
    replacement = ScriptedStore()
    outbox.store = replacement  # the backend may change at runtime
    turn = turns(1)[0]
    outbox.submit(turn)
    assert await outbox.flush(5)
    assert replacement.received == [(turn.scope, turn.content, turn.custom_id, turn.metadata)]
    assert store.calls == []


async def test_transient_failures_lose_and_duplicate_nothing(outbox: Outbox, store: ScriptedStore) -> None:
    store.fail = StoreError("unavailable", status=503)
    batch = turns(50)
    for turn in batch:
        outbox.submit(turn)
    assert not await outbox.flush(0.3)
    assert outbox.pending == 50
    assert await outbox.count_pending() == 50
    store.fail = None
    assert await outbox.flush(10)
    assert store.stored == Counter(t.custom_id for t in batch)  # 50 distinct ids, once each
    assert set(store.stored.values()) == {1}
    assert outbox.stats["stored"] == 50 and outbox.stats["retried"] > 0 and outbox.stats["dead"] == 0
    assert await outbox.count_pending() == 0


async def test_every_transient_kind_is_retried(outbox: Outbox, store: ScriptedStore) -> None:
    store.script = [
        StoreError("rate limited", status=429),
        StoreError("bad gateway", status=502),
        StoreError("request timeout", status=408),
        StoreError("timed out"),  # no status: a timeout or a refused connection
        ConnectionRefusedError(),
    ]
    turn = turns(1)[0]
    outbox.submit(turn)
    assert await outbox.flush(10)
    assert store.stored == {turn.custom_id: 1}
    assert store.called(turn.custom_id) == 6
    assert outbox.stats["retried"] == 5
    assert list_dead_letters(outbox.path) == []


async def test_retry_after_is_honoured(path: Path, store: ScriptedStore) -> None:
    store.script = [StoreError("slow down", status=429, retry_after=0.5)]
    # one call at a time: every later call follows the 429; Retry-After is honoured up to max_delay
    outbox = Outbox(path, store, concurrency=1, base_delay=0.01, max_delay=1.0)
    await outbox.start()
    batch = turns(3)
    for turn in batch:
        outbox.submit(turn)
    assert await outbox.flush(10)
    await outbox.close()
    first_failure = store.calls[0][0]
    assert all(t - first_failure >= 0.5 for t, _ in store.calls[1:])
    assert store.stored == Counter(t.custom_id for t in batch)


async def test_retry_after_is_capped_by_max_delay(outbox: Outbox, store: ScriptedStore) -> None:
    store.script = [StoreError("slow down", status=429, retry_after=1e9)]  # a hostile or broken server
    batch = turns(2)
    for turn in batch:
        outbox.submit(turn)
    assert await outbox.flush(10)  # max_delay is 0.2 s
    assert store.stored == Counter(t.custom_id for t in batch)


async def test_pauses_all_rows_while_the_backend_fails(
    outbox: Outbox, store: ScriptedStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memproxy.outbox")
    store.fail = StoreError("down", status=500)
    for turn in turns(40):
        outbox.submit(turn)
    await asyncio.sleep(0.6)
    assert 1 <= len(store.calls) <= 20  # a few probes, not one call per row
    assert outbox.stats["retried"] == len(store.calls)
    store.fail = None
    assert await outbox.flush(10)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "capture paused" in m]) == 1
    assert len([m for m in messages if "capture resumed" in m]) == 1
    assert not any("secret" in m or "model" in m for m in messages)  # never content, never metadata


async def test_permanent_error_is_a_dead_letter_never_retried(
    path: Path, outbox: Outbox, store: ScriptedStore, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = turns(2)
    store.reject[bad.custom_id] = StoreError("invalid container tag", status=400)
    outbox.submit(bad)
    outbox.submit(good)
    assert await outbox.flush(5)
    assert store.stored == {good.custom_id: 1}
    assert outbox.stats["dead"] == 1 and outbox.stats["stored"] == 1 and outbox.pending == 0

    letters = list_dead_letters(path)
    assert [(d["custom_id"], d["status"], d["attempts"]) for d in letters] == [(bad.custom_id, 400, 1)]
    assert letters[0]["scope"] == bad.scope and letters[0]["content"] == bad.content
    assert letters[0]["metadata"] == bad.metadata and "invalid container tag" in letters[0]["error"]
    assert await outbox.dead_letters() == letters
    assert any("rejected a turn (status 400)" in r.getMessage() for r in caplog.records)

    outbox.submit(bad)  # the same turn again is not queued again
    assert await outbox.flush(5)
    await asyncio.sleep(0.1)
    assert store.called(bad.custom_id) == 1
    assert outbox_rows(path) == 0


async def test_recall_forgets_what_it_cached_of_a_scope_once_a_turn_of_it_is_stored(path: Path, tmp_path: Path) -> None:
    """A search between a turn's capture and its storing caches the scope without it: storing it ends that."""
    store = LocalStore(tmp_path / "memories.db")
    recall = Recall(store)
    (turn,) = turns(1)
    box = Outbox(path, store, **FAST, on_stored=recall.invalidate)
    await box.start()
    try:
        assert await recall.search(turn.scope, "secret question", 5, 0.0, 5.0) == ()
        box.submit(turn)
        assert await box.flush(5)
        (found,) = await recall.search(turn.scope, "secret question", 5, 0.0, 5.0)
        assert "secret answer 0" in found
    finally:
        await box.close()
        await store.close()


async def test_a_requeued_dead_letter_is_sent(path: Path, store: ScriptedStore) -> None:
    (bad,) = turns(1)
    store.reject[bad.custom_id] = StoreError("payload rejected", status=422)
    for requeued in (0, 1):
        box = Outbox(path, store, **FAST)
        await box.start()
        try:
            if not requeued:
                box.submit(bad)
            assert await box.flush(5)
        finally:
            await box.close()
        if not requeued:
            assert [d["custom_id"] for d in list_dead_letters(path)] == [bad.custom_id] and store.stored == {}
            del store.reject[bad.custom_id]  # the cause is fixed
            assert table.requeue(path) == 1 and list_dead_letters(path) == []
    assert store.stored == {bad.custom_id: 1}
    assert outbox_rows(path) == 0 and table.requeue(path) == 0


async def test_a_requeued_dead_letter_gives_way_to_a_newer_turn(path: Path) -> None:
    with contextlib.closing(table.connect(path)) as db:
        table.enqueue(db, "turn-1", "s", "User: q\nAssistant: the newer answer", {}, 5.0)
        db.execute(table.BURY, ("turn-1", "s", "User: q\nAssistant: older", "{}", 1.0, 400, "rejected", 1, 2.0))
    assert table.requeue(path) == 1
    with contextlib.closing(table.connect(path)) as db:
        assert db.execute("SELECT content FROM outbox").fetchall() == [("User: q\nAssistant: the newer answer",)]


@pytest.mark.parametrize("status", [401, 402, 403, 404])
async def test_a_refused_account_pauses_and_keeps_every_row(
    outbox: Outbox, store: ScriptedStore, path: Path, status: int
) -> None:
    """A rejected key, exhausted credits or a wrong URL say nothing of the turns: they wait for the fix."""
    # 401-403 refuse every request by their status; a 404 only where the store says so (a POST: a wrong URL)
    store.fail = StoreError("refused", status=status, **({"refuses_all": True} if status == 404 else {}))
    batch = turns(5)
    for turn in batch:
        outbox.submit(turn)
    assert not await outbox.flush(0.5)
    assert outbox.stats["dead"] == 0 and list_dead_letters(path) == []
    assert outbox.pending == 5 and await outbox.count_pending() == 5
    assert 1 <= len(store.calls) <= 20  # probes, not one call per row
    store.fail = None
    assert await outbox.flush(10)
    assert store.stored == Counter(t.custom_id for t in batch)


async def test_supermemory_out_of_credits_then_topped_up(path: Path, supermemory: FakeSupermemory) -> None:
    store = SupermemoryStore(SUPERMEMORY_KEY, supermemory.url)
    outbox = Outbox(path, store, **FAST)
    await outbox.start()
    try:
        supermemory.status_override = 402
        batch = turns(3)
        for turn in batch:
            outbox.submit(turn)
        assert not await outbox.flush(0.5)
        assert outbox.stats["dead"] == 0 and outbox.pending == 3
        supermemory.status_override = None
        assert await outbox.flush(10)
        assert sorted(d.content for d in supermemory.documents.values()) == sorted(t.content for t in batch)
        assert list_dead_letters(path) == []
    finally:
        await outbox.close(timeout=0)
        await store.close()


async def test_unexpected_exceptions_are_retried_then_dead_lettered(outbox: Outbox, store: ScriptedStore) -> None:
    store.fail = KeyError("a bug")
    turn = turns(1)[0]
    outbox.submit(turn)
    assert await outbox.flush(15)
    assert store.called(turn.custom_id) == 10
    [letter] = await outbox.dead_letters()
    assert letter["status"] is None and letter["attempts"] == 10 and letter["error"].startswith("KeyError")


async def test_conflict_counts_as_stored(outbox: Outbox, store: ScriptedStore, path: Path) -> None:
    store.script = [StoreError("already exists", status=409)]
    outbox.submit(turns(1)[0])
    assert await outbox.flush(5)
    assert len(store.calls) == 1
    assert outbox.stats["stored"] == 1 and outbox.stats["dead"] == 0 and outbox.stats["retried"] == 0
    assert list_dead_letters(path) == [] and outbox_rows(path) == 0


async def test_resubmitted_turn_is_one_row(outbox: Outbox, store: ScriptedStore, path: Path) -> None:
    store.fail = StoreError("down", status=503)
    turn = turns(1)[0]
    outbox.submit(turn)
    outbox.submit(Turn(turn.scope, turn.user, turn.reply, turn.metadata))
    assert not await outbox.flush(0.2)
    assert outbox.stats["submitted"] == 2
    assert outbox.pending == 1 and await outbox.count_pending() == 1 and outbox_rows(path) == 1
    store.fail = None
    assert await outbox.flush(5)
    assert store.stored == {turn.custom_id: 1}


async def test_pending_rows_are_sent_after_a_restart(path: Path) -> None:
    down = ScriptedStore()
    down.fail = StoreError("down", status=503)
    first = Outbox(path, down, **FAST)
    await first.start()
    batch = turns(5)
    for turn in batch:
        first.submit(turn)
    await first.close(timeout=0.2)
    assert outbox_rows(path) == 5

    healthy = ScriptedStore()
    second = Outbox(path, healthy, **FAST)
    await second.start()
    assert second.pending == 5
    assert await second.flush(5)
    await second.close()
    assert healthy.stored == Counter(t.custom_id for t in batch)
    assert outbox_rows(path) == 0


KILLED = """
import asyncio, os, sys
from memproxy.capture import Turn
from memproxy.memory.base import StoreError
from memproxy.outbox import Outbox

class Down:
    async def add(self, *args):
        raise StoreError("down", status=503)

async def main():
    outbox = Outbox(sys.argv[1], Down(), base_delay=60.0)
    await outbox.start()
    for i in range(3):
        outbox.submit(Turn("scope", f"question {i}", f"answer {i}"))
    while outbox.pending < 3:
        await asyncio.sleep(0.01)
    os._exit(9)

asyncio.run(main())
"""


async def test_rows_survive_a_killed_process(path: Path, store: ScriptedStore) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED, str(path)], capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()
    outbox = Outbox(path, store, **FAST)
    await outbox.start()
    assert await outbox.flush(5)
    await outbox.close()
    assert store.stored == Counter(Turn("scope", f"question {i}", f"answer {i}").custom_id for i in range(3))


async def test_disk_full_warns_and_still_sends_from_memory(
    outbox: Outbox, store: ScriptedStore, path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(db: sqlite3.Connection, turn: Turn, now: float) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Outbox, "_insert", staticmethod(disk_full))
    batch = turns(3)
    for turn in batch:
        outbox.submit(turn)
    assert await outbox.flush(5)
    assert store.stored == Counter(t.custom_id for t in batch)
    assert outbox.stats["disk_errors"] == 3 and outbox.stats["stored"] == 3
    assert outbox_rows(path) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "database or disk is full" in warnings[0]
    assert "secret" not in warnings[0]


async def test_submit_returns_before_the_write(outbox: Outbox, store: ScriptedStore, path: Path) -> None:
    # Another process holds the write lock: the worker's insert waits for it, submit() must not.
    with sqlite3.connect(path, isolation_level=None) as other:
        other.execute("BEGIN IMMEDIATE")
        turn = turns(1)[0]
        outbox.submit(turn)
        assert outbox.pending == 0
        assert not await outbox.flush(0.2)
        assert store.calls == []
        other.execute("ROLLBACK")
    assert await outbox.flush(5)
    assert store.stored == {turn.custom_id: 1}
    assert outbox.stats["disk_errors"] == 0


def test_list_dead_letters_of_a_missing_file(tmp_path: Path) -> None:
    assert list_dead_letters(tmp_path / "none.db") == []


# -- one row per prompt: a later step replaces the row an earlier one left waiting -------------------------------


def steps(*replies: str, scope: str = "claude-code:repo") -> list[Turn]:
    """The steps of one prompt's tool loop: one key, a reply each."""
    return [Turn(scope, "Which files are there?", reply, {"i": i}, key="k" * 32) for i, reply in enumerate(replies)]


async def test_a_later_step_replaces_the_waiting_row(outbox: Outbox, store: ScriptedStore, path: Path) -> None:
    store.fail = StoreError("down", status=503)
    loop = steps("I will run a shell command first.", "Running one more.", "There are three files.")
    for turn in loop:
        outbox.submit(turn)
    assert not await outbox.flush(0.3)
    assert outbox.pending == 1 and await outbox.count_pending() == 1 and outbox_rows(path) == 1
    store.fail = None
    assert await outbox.flush(5)
    assert store.stored == {loop[0].custom_id: 1}
    assert store.received[-1][1:] == (loop[-1].content, loop[-1].custom_id, {"i": 2})
    assert outbox.pending == 0 and await outbox.count_pending() == 0


class GatedStore(ScriptedStore):
    """Holds each add() until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def add(self, scope: str, content: str, custom_id: str | None = None, metadata: dict[str, Any] | None = None) -> str:
        self.entered.set()
        await self.gate.wait()
        return await super().add(scope, content, custom_id, metadata)


async def test_a_step_in_flight_is_followed_by_its_replacement(path: Path) -> None:
    store = GatedStore()
    outbox = Outbox(path, store, **FAST)
    await outbox.start()
    try:
        first, final = steps("I will run a shell command first.", "There are three files.")
        outbox.submit(first)
        await asyncio.wait_for(store.entered.wait(), 5)  # the first step is being sent
        outbox.submit(final)
        while outbox_rows(path) != 1 or await outbox.count_pending() != 1 or outbox.stats["submitted"] < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        store.gate.set()
        assert await outbox.flush(5)
        assert [content for _, content, _, _ in store.received] == [first.content, final.content]  # in order
        assert outbox.pending == 0 and await outbox.count_pending() == 0 and outbox.stats["stored"] == 2
    finally:
        await outbox.close(timeout=0)


async def test_a_rejected_step_does_not_stop_the_next(outbox: Outbox, store: ScriptedStore, path: Path) -> None:
    first, final = steps("I will run a shell command first.", "There are three files.")
    store.script = [StoreError("too large", status=413)]
    outbox.submit(first)
    assert await outbox.flush(5)
    outbox.submit(first)  # the same step again is not queued again
    outbox.submit(final)
    assert await outbox.flush(5)
    assert [content for _, content, _, _ in store.received] == [first.content, final.content]
    assert store.stored == {final.custom_id: 1} and outbox.stats["dead"] == 1


async def test_an_older_step_on_file_never_follows_a_newer_one_held_in_memory(
    outbox: Outbox, store: ScriptedStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(held, "SAVE_RETRY", 60.0)  # the held step stays in memory for the whole test
    store.fail = StoreError("down", status=503)
    first, final = steps("I will run a shell command first.", "There are three files.")
    outbox.submit(first)  # reaches the file; the backend is down
    while outbox.stats["retried"] == 0:
        await asyncio.sleep(0.01)

    def disk_full(db: sqlite3.Connection, turn: Turn, now: float) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Outbox, "_insert", staticmethod(disk_full))
    outbox.submit(final)  # held in memory
    while outbox.stats["disk_errors"] == 0:
        await asyncio.sleep(0.01)
    store.fail = None
    assert await outbox.flush(5)
    assert store.received[-1][1] == final.content  # the store's last write of the custom id: the final step
    assert store.stored == {final.custom_id: 1}
    assert outbox.pending == 0 and await outbox.count_pending() == 0 and outbox_rows(path) == 0


def test_an_older_turn_does_not_replace_a_newer_row(path: Path) -> None:
    """Turns held in memory reach the file late: a newer row with their custom id stays."""
    from memproxy.outbox import table

    with contextlib.closing(table.connect(path)) as db:
        assert table.enqueue(db, "turn-1", "s", "step 1", {}, 10.0)
        assert not table.enqueue(db, "turn-1", "s", "step 3", {}, 30.0)  # replaced: no row more
        assert not table.enqueue(db, "turn-1", "s", "step 2", {}, 20.0)  # older: ignored
        rows, _ = table.take(db, 100.0, 10)
        assert [(r.custom_id, r.content) for r in rows] == [("turn-1", "step 3")]
        assert not table.delete(db, rows[0].id - 1)  # the replaced row's id: gone


# -- a turn SQLite cannot take fails alone ---------------------------------------------------------------------


async def test_a_turn_that_cannot_be_stored_stops_no_other(
    path: Path, store: ScriptedStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(held, "SAVE_RETRY", 0.05)
    bad = Turn("claude-code:repo", "read it", "It says hello.", {"client": "Caf\udce9Bot"}, key="k1")  # not by make()
    store.reject[bad.custom_id] = StoreError("cannot encode")  # as a store that could not take it either
    box = Outbox(path, store, **FAST)
    await box.start()
    good = turns(1)[0]
    with caplog.at_level(logging.WARNING, logger="memproxy.outbox"):
        box.submit(bad)
        await asyncio.sleep(0.3)
        box.submit(good)
        assert await box.flush(5)
        await box.close(timeout=1)
    assert store.stored == Counter({good.custom_id: 1})
    assert "a turn cannot be written to the capture outbox (UnicodeEncodeError); it is dropped" in caplog.text


def test_a_held_turn_that_cannot_be_stored_is_dropped_alone(path: Path) -> None:
    db = table.connect(path)
    rows = [table.Row(None, "bad", "s", "User: q\nAssistant: a", {"client": "Caf\udce9Bot"}, 1.0),
            table.Row(None, "good", "s", "User: q\nAssistant: a", {}, 2.0)]
    assert table.enqueue_all(db, rows) == [False, True]
    assert [row.custom_id for row in table.take(db, time.time(), 10)[0]] == ["good"]
    db.close()
