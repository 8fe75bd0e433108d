"""The outbox's sender: one task that sends due rows to the store and settles each by what came back.

Rows go oldest first, `concurrency` at a time. A stored row (409 included: stored already) is deleted. A
transient failure reschedules the row and pauses the whole sender, with full-jitter exponential backoff never
shorter than the backend's Retry-After nor longer than `max_delay`; while paused, one row at a time probes the
backend. So does a refusal of every request (a rejected key, exhausted credits, a wrong URL: StoreError's
`refuses_all`), which says nothing of the row. A rejection of the row itself makes it a dead letter, and so
does an unexpected exception (a bug?) past a few attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path
from typing import Protocol

from ..logs import brief
from ..memory.base import MemoryStore, StoreError
from .table import Row

logger = logging.getLogger(__name__)

MAX_UNEXPECTED_ATTEMPTS = 10  # an unexpected exception (a bug?) is retried this often, then dead-lettered


class Rows(Protocol):
    """What the sender needs of its outbox (memproxy.outbox.queue.Outbox): the store, and the rows waiting,
    on file or held in memory."""

    store: MemoryStore
    path: Path

    @property
    def pending(self) -> int: ...

    async def due(self, limit: int) -> tuple[list[Row], float | None]: ...

    async def stored(self, row: Row) -> None: ...

    async def retry(self, row: Row, due_at: float) -> None: ...

    async def bury(self, row: Row, status: int | None, error: str) -> None: ...


def _retry_after(error: BaseException) -> float:
    return (error.retry_after or 0.0) if isinstance(error, StoreError) else 0.0


def _retryable(error: Exception, attempts: int) -> bool:
    """Transient backend trouble, and a backend refusing every request, are retried forever; an unexpected
    exception up to a limit."""
    if isinstance(error, StoreError):
        return not error.permanent or error.refuses_all
    return isinstance(error, OSError) or attempts < MAX_UNEXPECTED_ATTEMPTS  # OSError: timeouts, refused connections


class Sender:
    """Sends the rows of one outbox to its store until stopped; `wake()` says a row was queued."""

    def __init__(self, rows: Rows, *, base_delay: float, max_delay: float, concurrency: int) -> None:
        self.rows = rows
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.concurrency = concurrency
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # set when a turn was queued
        self._failures = 0  # consecutive transient failures: the backoff exponent
        self._paused_until = 0.0  # loop time
        self._paused = False
        self._rejecting = False

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="memproxy outbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if (pause := self._paused_until - loop.time()) > 0:
                await asyncio.sleep(pause)  # deaf to submit(): the backend is given its time
            self._wake.clear()
            try:
                rows, next_due = await self.rows.due(1 if self._paused else self.concurrency)
                if rows:
                    await self._send(rows)
                    continue
            except Exception as e:  # noqa: BLE001 - the sender outlives any fault; the rows stay queued
                self._failed(e, 0.0)
                continue
            timeout = None if next_due is None else max(0.0, next_due - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _send(self, rows: list[Row]) -> None:
        """Send `rows` concurrently and settle each; any transient failure pauses the sender."""
        store = self.rows.store
        errors = await asyncio.gather(*(self._add(store, row) for row in rows))
        transient: list[Exception] = []
        for row, error in zip(rows, errors):
            if error is None or (isinstance(error, StoreError) and error.status == 409):  # 409: already stored
                await self.rows.stored(row)
                self._rejecting = False
            elif _retryable(error, row.attempts + 1):
                await self.rows.retry(row, time.time() + self._backoff(row.attempts, _retry_after(error)))
                transient.append(error)
            else:
                await self._bury(row, error)
        if transient:
            self._failed(transient[-1], max(map(_retry_after, transient)))
            return
        self._failures = 0
        if self._paused:
            self._paused = False
            logger.info("memproxy: capture resumed, %d pending", self.rows.pending)

    @staticmethod
    async def _add(store: MemoryStore, row: Row) -> Exception | None:
        try:
            await store.add(row.scope, row.content, row.custom_id, row.metadata)
        except Exception as e:  # noqa: BLE001 - classified by the caller
            return e
        return None

    async def _bury(self, row: Row, error: Exception) -> None:
        """Make `row` a dead letter: it will never be sent again; say so once until a row is stored."""
        status = error.status if isinstance(error, StoreError) else None
        await self.rows.bury(row, status, f"{type(error).__name__}: {error}")
        if not self._rejecting:
            self._rejecting = True
            logger.warning(
                "memproxy: the memory store rejected a turn (%s); kept in the dead letters of %s, not retried",
                brief(error, message=False),
                self.rows.path,
            )

    def _failed(self, error: Exception, retry_after: float) -> None:
        """Pause the whole sender: the backend (or the outbox) is likely failing for every row."""
        delay = self._backoff(self._failures, retry_after)
        self._failures += 1
        self._paused_until = asyncio.get_running_loop().time() + delay
        if not self._paused:
            self._paused = True
            logger.warning(
                "memproxy: capture paused, %d pending, retrying in %.1fs (%s)",
                self.rows.pending,
                delay,
                brief(error, message=False),
            )

    def _backoff(self, attempts: int, retry_after: float) -> float:
        """Full-jitter exponential backoff, never shorter than the backend's Retry-After nor longer than
        `max_delay`: a server asking for years (hostile or broken) would stop storage until a restart."""
        jittered = min(self.max_delay, self.base_delay * 2 ** min(attempts, 64)) * random.random()
        return min(self.max_delay, max(retry_after, jittered))
