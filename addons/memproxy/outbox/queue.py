"""The outbox's queue: a submitted turn is scrubbed and written to the file in the worker thread, and its row
waits there (or in memory, while the file cannot be written) until the sender settles it."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ..capture import Turn
from ..logs import brief
from ..memory.base import MemoryStore
from ..scrub import load as load_detectors
from ..worker import Worker
from . import table
from .held import Held
from .sender import Sender
from .table import Row

logger = logging.getLogger(__name__)
T = TypeVar("T")


class _Written(NamedTuple):
    """What the worker made of a submitted turn: the scrubbed turn (None if scrubbing failed), whether the
    outbox took it as new, and the write's (or scrubbing's) error."""

    turn: Turn | None
    new: bool
    error: Exception | None


def _load_detectors() -> None:
    try:
        load_detectors()
    except Exception as e:  # noqa: BLE001 - each turn tries again, and says why it fails
        logger.warning("memproxy: cannot load the secret detectors (%s); turns are not stored", brief(e, message=False))


class Outbox:
    """Turns on their way to the store: a SQLite outbox owned by one worker thread, and one sender task.

    Rows are sent oldest first, deleted once stored (409 included), moved to `dead_letters` when the store
    rejects the row itself, and rescheduled on a transient error, or one refusing every request (the key, the
    account, the URL), while the whole sender pauses. Rows left at
    close stay on disk and go out after the next start(). The counters and the pending count live
    here; the sender (memproxy.outbox.sender) only decides what each outcome does to a row.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        store: MemoryStore,
        *,
        base_delay: float = 0.5,
        max_delay: float = 300.0,
        concurrency: int = 2,
        on_stored: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.store = store
        self.on_stored = on_stored  # called with a stored turn's scope (recall forgets what it cached of it)
        self._worker = Worker("memproxy-outbox")
        self._db: sqlite3.Connection | None = None  # worker thread only
        self._sender = Sender(self, base_delay=base_delay, max_delay=max_delay, concurrency=concurrency)
        self._held = Held(self.path)
        self._closed = False
        self._idle = asyncio.Event()  # set when nothing is pending or being written
        self._idle.set()
        self._pending = 0
        self._writing = 0
        self._counts = dict.fromkeys(("submitted", "stored", "retried", "dead", "disk_errors"), 0)

    # -- public API -------------------------------------------------------

    async def start(self) -> None:
        """Open the outbox and start sending, rows left from earlier runs first (due at once)."""
        if self._sender.started:
            return
        try:
            self._pending = await self._run(table.reopen)
        except (sqlite3.Error, OSError) as e:
            logger.warning("memproxy: capture outbox %s unusable (%s); turns are kept in memory only", self.path, e)
        self._update_idle()
        self._worker.submit(_load_detectors)  # now, in the worker, rather than with the first turn
        self._sender.start()

    def submit(self, turn: Turn) -> None:
        """Queue `turn` for the store. Call on the event loop; never blocks: scrubbing and the write run in the
        worker, so that nothing unscrubbed is ever written or held."""
        if self._closed:
            logger.warning("memproxy: the outbox is closed; a turn was not stored")
            return
        self._counts["submitted"] += 1
        self._writing += 1
        self._idle.clear()
        self._worker.submit(self._write, turn, time.time()).add_done_callback(self._written)

    async def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until every turn is stored or dead-lettered; True if so."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 2.0) -> None:
        """Send what can be sent within `timeout`, then stop; unsent rows stay on disk for the next start."""
        if self._closed:
            return
        if self._sender.started and not await self.flush(timeout):
            logger.warning(
                "memproxy: %d turns not stored yet; they stay in %s for the next start", self._pending, self.path
            )
        self._closed = True
        await self._sender.stop()
        if self._held and not await self._save():
            logger.warning(
                "memproxy: %d turns held in memory are lost: the capture outbox %s is not writable",
                len(self._held),
                self.path,
            )
        try:
            await self._worker.run(self._disconnect)
        finally:
            self._worker.stop()

    @property
    def pending(self) -> int:
        """Turns not yet stored nor dead-lettered, as counted in memory (count_pending() asks the outbox)."""
        return self._pending

    @property
    def stats(self) -> dict[str, int]:
        """Counters since start: submitted, stored, retried, dead, disk_errors, and pending now."""
        return {**self._counts, "pending": self._pending}

    @property
    def max_delay(self) -> float:
        """The longest pause, in seconds, between retries of a failing store; it may change while running."""
        return self._sender.max_delay

    @max_delay.setter
    def max_delay(self, seconds: float) -> None:
        self._sender.max_delay = seconds

    async def count_pending(self) -> int:
        """Turns not yet stored nor dead-lettered, counted in the outbox itself."""
        return await self._run(table.count) + len(self._held)

    async def dead_letters(self) -> list[dict[str, Any]]:
        """The turns the store rejected for good, oldest first."""
        return await self._run(table.dead_letters)

    # -- the rows, for the sender ------------------------------------------

    async def due(self, limit: int) -> tuple[list[Row], float | None]:
        """Up to `limit` due rows, those held in memory first; with none, when the next one is due. A row on file
        that a newer turn of its custom id held in memory supersedes is never sent: sent after it, the older
        step would overwrite the newer (the store keeps the last write of a custom id)."""
        now = time.time()
        if self._held and now >= self._held.save_at:
            await self._save()
        rows = self._held.due(now, limit)
        try:
            taken, next_due = await self._run(table.take, now, limit - len(rows))
        except (sqlite3.Error, OSError):
            if not self._held:
                raise
            taken, next_due = [], None
        for row in taken:
            if (newer := self._held.newer(row)) is not None:
                await self._drop_older(row.custom_id, newer)
        taken = [row for row in taken if self._held.newer(row) is None]
        dues = self._held.due_times()
        if next_due is not None:
            dues.append(next_due)
        return rows + taken, min(dues, default=None)

    async def stored(self, row: Row) -> None:
        """The store has `row`: forget it (a row a later turn replaced meanwhile was counted out then)."""
        if row.id is None:
            waiting = self._held.pop(row)
            await self._drop_older(row.custom_id, row.created_at)  # an earlier step of it may wait on file
        else:
            waiting = await self._run(table.delete, row.id)
        self._settled("stored", waiting)
        if self.on_stored is not None:
            self.on_stored(row.scope)

    async def _drop_older(self, custom_id: str, created_at: float) -> None:
        """Delete the rows on file of `custom_id` created by `created_at` (a turn held in memory supersedes them);
        while the file refuses, remember not to send them."""
        try:
            dropped = await self._run(table.drop_older, custom_id, created_at)
        except (sqlite3.Error, OSError):
            superseded = self._held.superseded
            superseded[custom_id] = max(created_at, superseded.get(custom_id, created_at))
            return
        if self._held.superseded.get(custom_id, created_at) <= created_at:
            self._held.superseded.pop(custom_id, None)
        self._pending -= dropped
        self._update_idle()

    async def retry(self, row: Row, due_at: float) -> None:
        """`row` failed for now: send it again at `due_at` (time.time())."""
        if row.id is not None:
            await self._run(table.reschedule, row.id, row.attempts + 1, due_at)
        row.attempts += 1
        row.due_at = due_at
        self._counts["retried"] += 1

    async def bury(self, row: Row, status: int | None, error: str) -> None:
        """Move `row` to the dead letters, unless a later turn replaced it; a failed write leaves a row on file
        queued (and raises)."""
        waiting = row.id is not None or self._held.pop(row)
        try:
            waiting = waiting and await self._run(table.bury, row, status, error, time.time())
        except (sqlite3.Error, OSError):
            if row.id is not None:
                raise  # the row stays queued; the sender pauses and tries again
            # a memory-only turn (the outbox is unwritable, as logged) is dropped: it was rejected anyway
        self._settled("dead", waiting)

    # -- writing (worker thread) -------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._worker.run(self._call, fn, *args)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """In the worker thread: run `fn(db, *args)`, connecting first if needed."""
        if self._db is None:
            self._db = table.connect(self.path)
        return fn(self._db, *args)

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @staticmethod
    def _insert(db: sqlite3.Connection, turn: Turn, now: float) -> bool:
        return table.enqueue(db, turn.custom_id, turn.scope, turn.content, turn.metadata, now)

    def _write(self, turn: Turn, now: float) -> _Written:
        """In the worker thread: scrub `turn`, then write it to the outbox."""
        try:
            turn, found = turn.scrubbed()
        except Exception as e:  # noqa: BLE001 - a turn that could not be scrubbed is not kept at all
            return _Written(None, False, e)
        if found:
            kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(found.items()))
            logger.info("memproxy: replaced secrets in a turn of scope %s: %s", turn.scope, kinds)
        try:
            return _Written(turn, self._call(self._insert, turn, now), None)
        except Exception as e:  # noqa: BLE001 - classified on the loop
            return _Written(turn, False, e)

    def _written(self, written: asyncio.Future[_Written]) -> None:
        """On the loop, once the worker scrubbed and wrote a turn: count it, or hold it in memory if the write failed."""
        self._writing -= 1
        turn, new, error = written.result()
        if turn is None:
            logger.warning("memproxy: a turn was not stored: looking for secrets in it failed (%s)", brief(error, message=False))
        elif error is None:
            self._pending += new
            self._held.written()
        else:
            self._counts["disk_errors"] += 1
            self._held.failed(error)
            self._pending += self._held.hold(turn)
        self._sender.wake()
        self._update_idle()

    async def _save(self) -> bool:
        """Write the turns held in memory to the outbox; True if it worked (and the outbox is writable again)."""
        rows = list(self._held.rows.values())
        try:
            new = await self._run(table.enqueue_all, rows)
        except (sqlite3.Error, OSError):
            self._held.retry_later()
            return False
        for row, added in zip(rows, new):
            if not self._held.pop(row):  # a later turn replaced it in memory while it was written: both wait
                self._pending += added
            elif not added:  # in place of a row queued there, or rejected for good
                self._pending -= 1
        self._held.saved(len(rows))
        self._update_idle()
        return True

    def _settled(self, outcome: str, waiting: bool = True) -> None:
        """Count a row's outcome; it leaves the pending count unless a later turn replaced it (it left then)."""
        self._counts[outcome] += 1
        self._pending -= waiting
        self._update_idle()

    def _update_idle(self) -> None:
        if self._pending <= 0 and self._writing == 0:
            self._idle.set()
        else:
            self._idle.clear()
