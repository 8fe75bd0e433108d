"""Turn capture: what a finished exchange stores, and the durable outbox that sends it to the store.

A turn is scrubbed of secrets and written to a SQLite outbox (both by one worker thread) before anything
else, then sent by one background task. Transient backend failures pause the sender with jittered
exponential backoff, honouring Retry-After, and keep every row; permanent rejections become dead letters.
While the outbox cannot be written (disk full), scrubbed turns wait in memory, up to a bound, and their
write is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from . import private
from .logs import brief
from .memory.base import MemoryStore, StoreError
from .protocols import strip_memory_blocks
from .scrub import load as load_detectors
from .scrub import scrub
from .worker import Worker

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_USER_CHARS = 4000
MAX_REPLY_CHARS = 8000
# Characters kept past a clip limit until the turn is scrubbed, so that a secret the limit cuts is found whole.
SCRUB_MARGIN = 256
BUSY_TIMEOUT = 5.0  # seconds to wait for another process's write lock
MAX_UNEXPECTED_ATTEMPTS = 10  # an unexpected exception (a bug?) is retried this often, then dead-lettered
MAX_ERROR_CHARS = 200
MAX_UNSAVED = 1000  # turns held in memory while the outbox cannot be written; beyond, new turns are dropped
SAVE_RETRY = 2.0  # seconds between retries of writing the turns held in memory to the outbox

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(
    id INTEGER PRIMARY KEY,
    custom_id TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    content TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(next_attempt_at);
CREATE TABLE IF NOT EXISTS dead_letters(
    custom_id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    content TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    status INTEGER,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at REAL NOT NULL
);
"""
# A turn already rejected for good is not queued again.
INSERT = """
INSERT OR IGNORE INTO outbox(custom_id, scope, content, metadata, created_at)
SELECT :custom_id, :scope, :content, :metadata, :created_at
WHERE NOT EXISTS (SELECT 1 FROM dead_letters WHERE custom_id = :custom_id)
"""
TAKE = """
SELECT id, custom_id, scope, content, metadata, created_at, attempts, next_attempt_at
FROM outbox WHERE next_attempt_at <= ? ORDER BY id LIMIT ?
"""
BURY = """
INSERT OR REPLACE INTO dead_letters(custom_id, scope, content, metadata, created_at, status, error, attempts, failed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
DEAD_LETTERS = """
SELECT custom_id, scope, content, metadata, created_at, status, error, attempts, failed_at
FROM dead_letters ORDER BY failed_at, custom_id
"""


def _clip(text: str, limit: int) -> str:
    text = text.encode("utf-8", "replace").decode().strip()  # a lone surrogate (JSON's \ud800) cannot be stored
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Turn:
    """One user message and the assistant's reply, in one scope."""

    scope: str
    user: str
    reply: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, scope: str, user: str, reply: str, metadata: dict[str, Any]) -> Turn | None:
        """A turn to submit, or None if there is nothing worth remembering. `scrubbed()` makes it ready to store."""
        user = _clip(strip_memory_blocks(user), MAX_USER_CHARS + SCRUB_MARGIN)
        reply = _clip(strip_memory_blocks(reply), MAX_REPLY_CHARS + SCRUB_MARGIN)
        if not user or not reply:
            return None
        return cls(scope, user, reply, metadata)

    def scrubbed(self) -> tuple[Turn, Counter[str]]:
        """This turn as it is stored, every secret replaced by `[secret: <kind>]` and then clipped, and how many
        of each kind were replaced. CPU work: call it off the event loop. The same turn always gives the same
        result, and so the same custom id."""
        user, reply = scrub(self.user), scrub(self.reply)
        turn = dataclasses.replace(self, user=_clip(user.text, MAX_USER_CHARS), reply=_clip(reply.text, MAX_REPLY_CHARS))
        return (self if turn == self else turn), user.found + reply.found

    @property
    def content(self) -> str:
        return f"User: {self.user}\nAssistant: {self.reply}"

    @property
    def custom_id(self) -> str:
        """Stable per (scope, turn): a retried or replayed turn is stored once."""
        digest = hashlib.sha256("\0".join((self.scope, self.user, self.reply)).encode())
        return "turn-" + digest.hexdigest()[:32]


@dataclass(slots=True)
class _Row:
    """A turn waiting to be sent; `id` is None for a turn the outbox could not write (memory only)."""

    id: int | None
    custom_id: str
    scope: str
    content: str
    metadata: dict[str, Any]
    created_at: float
    attempts: int = 0
    due_at: float = 0.0


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


def _retry_after(error: BaseException) -> float:
    return (error.retry_after or 0.0) if isinstance(error, StoreError) else 0.0


def _retryable(error: Exception, attempts: int) -> bool:
    """Transient backend trouble is retried forever; an unexpected exception up to a limit."""
    if isinstance(error, StoreError):
        return not error.permanent
    return isinstance(error, OSError) or attempts < MAX_UNEXPECTED_ATTEMPTS  # OSError: timeouts, refused connections


def _connect(path: Path) -> sqlite3.Connection:
    """The outbox, opened as a private file (0600, -wal and -shm too); a refused path raises UnsafePath."""
    path = private.private_path(path, create=True, companions=private.SQLITE_COMPANIONS)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # in WAL mode: every commit survives a process kill
        db.executescript(SCHEMA)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _queue(
    db: sqlite3.Connection, custom_id: str, scope: str, content: str, metadata: dict[str, Any], created_at: float
) -> bool:
    """Add a turn to the outbox; False if it is there already or was rejected for good."""
    row = dict(
        custom_id=custom_id,
        scope=scope,
        content=content,
        metadata=json.dumps(metadata, ensure_ascii=False, default=str),
        created_at=created_at,
    )
    return db.execute(INSERT, row).rowcount > 0


def _dead_letters(db: sqlite3.Connection) -> list[dict[str, Any]]:
    keys = ("custom_id", "scope", "content", "metadata", "created_at", "status", "error", "attempts", "failed_at")
    letters = [dict(zip(keys, row)) for row in db.execute(DEAD_LETTERS)]
    for letter in letters:
        letter["metadata"] = json.loads(letter["metadata"])
    return letters


def list_dead_letters(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The turns the store rejected for good, oldest first; read-only, safe while a proxy runs."""
    path = Path(path)
    if not path.exists():
        return []
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)) as db:
        try:
            return _dead_letters(db)
        except sqlite3.OperationalError:  # no outbox was ever created in this file
            return []


def scrub_outbox(path: str | os.PathLike[str], *, dry_run: bool = False) -> tuple[Counter[str], int]:
    """Replace the secrets in the turns waiting in the outbox at `path` and in its dead letters, then rebuild
    the file and empty its WAL, so that no old page keeps them. Returns how many secrets of each kind were
    (with `dry_run`: would be) replaced, and in how many turns. Best with no proxy running: a turn that one is
    sending at that moment keeps the text it read."""
    found: Counter[str] = Counter()
    turns = 0
    path = Path(path)
    if not path.exists():
        return found, turns
    columns = {"outbox": ("id", ("content",)), "dead_letters": ("custom_id", ("content", "error"))}
    with contextlib.closing(_connect(path)) as db:
        with db:
            db.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
            for table, (key, texts) in columns.items():
                for key_value, *values in db.execute(f"SELECT {key}, {', '.join(texts)} FROM {table}").fetchall():
                    scrubbed = [scrub(value) for value in values]
                    if not any(result.found for result in scrubbed):
                        continue
                    turns += 1
                    for result in scrubbed:
                        found += result.found
                    if not dry_run:
                        assignments = ", ".join(f"{column} = ?" for column in texts)
                        update = f"UPDATE {table} SET {assignments} WHERE {key} = ?"
                        db.execute(update, (*(result.text for result in scrubbed), key_value))
        if turns and not dry_run:
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return found, turns


class Outbox:
    """Turns on their way to the store: a SQLite outbox owned by one worker thread, and one sender task.

    Rows are sent oldest first, deleted once stored (409 included), moved to `dead_letters` on a
    permanent error, and rescheduled on a transient one while the whole sender pauses. Rows left at
    close stay on disk and go out after the next start().
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        store: MemoryStore,
        *,
        base_delay: float = 0.5,
        max_delay: float = 300.0,
        concurrency: int = 2,
    ) -> None:
        self.path = Path(path)
        self.store = store
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.concurrency = concurrency
        self._worker = Worker("memproxy-outbox")
        self._db: sqlite3.Connection | None = None  # worker thread only
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self._wake = asyncio.Event()  # set when a turn was queued
        self._idle = asyncio.Event()  # set when nothing is pending or being written
        self._idle.set()
        self._unsaved: dict[str, _Row] = {}  # custom_id -> turn the outbox could not write
        self._pending = 0
        self._writing = 0
        self._counts = dict.fromkeys(("submitted", "stored", "retried", "dead", "disk_errors"), 0)
        self._failures = 0  # consecutive transient failures: the sender's backoff exponent
        self._paused_until = 0.0  # loop time
        self._paused = False
        self._rejecting = False
        self._disk_failing = False
        self._save_at = 0.0  # when to retry writing the turns held in memory (time.time())
        self._dropped = 0  # turns dropped since the outbox became unwritable

    # -- public API -------------------------------------------------------

    async def start(self) -> None:
        """Open the outbox and start sending, rows left from earlier runs first (due at once)."""
        if self._sender is not None:
            return
        try:
            self._pending = await self._run(self._open)
        except (sqlite3.Error, OSError) as e:
            logger.warning("memproxy: capture outbox %s unusable (%s); turns are kept in memory only", self.path, e)
        self._update_idle()
        self._worker.submit(_load_detectors)  # now, in the worker, rather than with the first turn
        self._sender = asyncio.get_running_loop().create_task(self._send_loop(), name="memproxy capture")

    def submit(self, turn: Turn) -> None:
        """Queue `turn` for the store. Call on the event loop; never blocks: scrubbing and the write run in the
        worker, so that nothing unscrubbed is ever written or held."""
        if self._closed:
            logger.warning("memproxy: capture is closed; a turn was not stored")
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
        if self._sender is not None and not await self.flush(timeout):
            logger.warning(
                "memproxy: %d turns not stored yet; they stay in %s for the next start", self._pending, self.path
            )
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._unsaved and not await self._save():
            logger.warning(
                "memproxy: %d turns held in memory are lost: the capture outbox %s is not writable",
                len(self._unsaved),
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

    async def count_pending(self) -> int:
        """Turns not yet stored nor dead-lettered, counted in the outbox itself."""
        return await self._run(lambda db: db.execute("SELECT count(*) FROM outbox").fetchone()[0]) + len(self._unsaved)

    async def dead_letters(self) -> list[dict[str, Any]]:
        """The turns the store rejected for good, oldest first."""
        return await self._run(_dead_letters)

    # -- writing (worker thread) -------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._worker.run(self._call, fn, *args)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """In the worker thread: run `fn(db, *args)`, connecting first if needed."""
        if self._db is None:
            self._db = _connect(self.path)
        return fn(self._db, *args)

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @staticmethod
    def _open(db: sqlite3.Connection) -> int:
        """Make rows left from an earlier run due now (a restart is a fresh start); count them."""
        db.execute("UPDATE outbox SET next_attempt_at = 0 WHERE next_attempt_at > 0")
        return db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    @staticmethod
    def _insert(db: sqlite3.Connection, turn: Turn, now: float) -> bool:
        return _queue(db, turn.custom_id, turn.scope, turn.content, turn.metadata, now)

    @staticmethod
    def _insert_rows(db: sqlite3.Connection, rows: list[_Row]) -> list[bool]:
        """Write turns held in memory to the outbox, all or none; for each, whether it is new there."""
        with db:
            db.execute("BEGIN IMMEDIATE")
            return [_queue(db, r.custom_id, r.scope, r.content, r.metadata, r.created_at) for r in rows]

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
        """On the loop, once the worker scrubbed and wrote a turn: count it, or keep it in memory if the write failed."""
        self._writing -= 1
        turn, new, error = written.result()
        if turn is None:
            logger.warning("memproxy: a turn was not stored: looking for secrets in it failed (%s)", brief(error, message=False))
        elif error is None:
            self._pending += new
            if self._unsaved:
                self._save_at = 0.0  # the outbox is writable again: move the turns held in memory there now
            elif self._disk_failing:
                self._writable_again(0)
        else:
            self._counts["disk_errors"] += 1
            self._save_at = time.time() + SAVE_RETRY
            if not self._disk_failing:
                self._disk_failing = True
                reason = f"{type(error).__name__}: {error}" if isinstance(error, (sqlite3.Error, OSError)) else ""
                logger.warning(
                    "memproxy: cannot write the capture outbox %s (%s); keeping up to %d turns in memory,"
                    " sending them from there and retrying the write every %gs",
                    self.path,
                    reason or brief(error, message=False),
                    MAX_UNSAVED,
                    SAVE_RETRY,
                )
            self._hold(turn)
        self._wake.set()
        self._update_idle()

    def _hold(self, turn: Turn) -> None:
        """Keep `turn` in memory until it is sent or written; drop it if too many are held already."""
        if turn.custom_id in self._unsaved:
            return
        if len(self._unsaved) >= MAX_UNSAVED:
            self._dropped += 1
            if self._dropped == 1:
                logger.warning(
                    "memproxy: %d turns held in memory and the capture outbox %s is still not writable;"
                    " new turns are dropped until it is",
                    MAX_UNSAVED,
                    self.path,
                )
            return
        self._unsaved[turn.custom_id] = _Row(None, turn.custom_id, turn.scope, turn.content, turn.metadata, time.time())
        self._pending += 1

    async def _save(self) -> bool:
        """Write the turns held in memory to the outbox; True if it worked (and the outbox is writable again)."""
        rows = list(self._unsaved.values())
        try:
            new = await self._run(self._insert_rows, rows)
        except (sqlite3.Error, OSError):
            self._save_at = time.time() + SAVE_RETRY
            return False
        for row, added in zip(rows, new):
            del self._unsaved[row.custom_id]
            if not added:  # already queued there, or rejected for good
                self._pending -= 1
        self._writable_again(len(rows))
        self._update_idle()
        return True

    def _writable_again(self, moved: int) -> None:
        if self._disk_failing:
            self._disk_failing = False
            logger.info(
                "memproxy: capture outbox %s writable again; %d turns moved there from memory, %d were dropped",
                self.path,
                moved,
                self._dropped,
            )
        self._dropped = 0

    def _update_idle(self) -> None:
        if self._pending <= 0 and self._writing == 0:
            self._idle.set()
        else:
            self._idle.clear()

    # -- sending (event loop) ----------------------------------------------

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if (pause := self._paused_until - loop.time()) > 0:
                await asyncio.sleep(pause)  # deaf to submit(): the backend is given its time
            self._wake.clear()
            try:
                rows, next_due = await self._due()
                if rows:
                    await self._send(rows)
                    continue
            except Exception as e:  # noqa: BLE001 - the sender outlives any fault; the rows stay queued
                self._failed(e, 0.0)
                continue
            timeout = None if next_due is None else max(0.0, next_due - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _due(self) -> tuple[list[_Row], float | None]:
        """Up to `concurrency` due rows (one while paused), memory-only ones first; else when the next is due."""
        now = time.time()
        if self._unsaved and now >= self._save_at:
            await self._save()
        limit = 1 if self._paused else self.concurrency
        rows = [row for row in self._unsaved.values() if row.due_at <= now][:limit]
        try:
            taken, next_due = await self._run(self._take, now, limit - len(rows))
        except (sqlite3.Error, OSError):
            if not self._unsaved:
                raise
            taken, next_due = [], None
        dues = [row.due_at for row in self._unsaved.values()]
        if next_due is not None:
            dues.append(next_due)
        return rows + taken, min(dues, default=None)

    @staticmethod
    def _take(db: sqlite3.Connection, now: float, limit: int) -> tuple[list[_Row], float | None]:
        rows = [
            _Row(id_, custom_id, scope, content, json.loads(metadata), created_at, attempts, due_at)
            for id_, custom_id, scope, content, metadata, created_at, attempts, due_at in db.execute(TAKE, (now, limit))
        ]
        return rows, None if rows else db.execute("SELECT min(next_attempt_at) FROM outbox").fetchone()[0]

    async def _send(self, rows: list[_Row]) -> None:
        """Send `rows` concurrently and settle each; any transient failure pauses the sender."""
        store = self.store
        errors = await asyncio.gather(*(self._add(store, row) for row in rows))
        transient: list[Exception] = []
        for row, error in zip(rows, errors):
            if error is None or (isinstance(error, StoreError) and error.status == 409):  # 409: already stored
                await self._stored(row)
            elif _retryable(error, row.attempts + 1):
                await self._reschedule(row, error)
                transient.append(error)
            else:
                await self._bury(row, error)
        if transient:
            self._failed(transient[-1], max(map(_retry_after, transient)))
            return
        self._failures = 0
        if self._paused:
            self._paused = False
            logger.info("memproxy: capture resumed, %d pending", self._pending)

    @staticmethod
    async def _add(store: MemoryStore, row: _Row) -> Exception | None:
        try:
            await store.add(row.scope, row.content, row.custom_id, row.metadata)
        except Exception as e:  # noqa: BLE001 - classified by the caller
            return e
        return None

    async def _stored(self, row: _Row) -> None:
        if row.id is None:
            self._unsaved.pop(row.custom_id, None)
        else:
            await self._run(lambda db: db.execute("DELETE FROM outbox WHERE id = ?", (row.id,)))
        self._rejecting = False
        self._settled("stored")

    async def _reschedule(self, row: _Row, error: Exception) -> None:
        due_at = time.time() + self._backoff(row.attempts, _retry_after(error))
        if row.id is not None:
            update = "UPDATE outbox SET attempts = ?, next_attempt_at = ? WHERE id = ?"
            await self._run(lambda db: db.execute(update, (row.attempts + 1, due_at, row.id)))
        row.attempts += 1
        row.due_at = due_at
        self._counts["retried"] += 1

    async def _bury(self, row: _Row, error: Exception) -> None:
        """Move `row` to the dead letters: it will never be sent again."""
        status = error.status if isinstance(error, StoreError) else None
        message = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
        metadata = json.dumps(row.metadata, ensure_ascii=False, default=str)
        letter = (row.custom_id, row.scope, row.content, metadata, row.created_at)
        letter += (status, message, row.attempts + 1, time.time())

        def bury(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(BURY, letter)
                db.execute("DELETE FROM outbox WHERE id = ?", (row.id,))

        try:
            await self._run(bury)
        except (sqlite3.Error, OSError):
            if row.id is not None:
                raise  # the row stays queued; the sender pauses and tries again
            # a memory-only turn (the outbox is unwritable, as logged) is dropped: it was rejected anyway
        self._unsaved.pop(row.custom_id, None)
        if not self._rejecting:
            self._rejecting = True
            logger.warning(
                "memproxy: the memory store rejected a turn (%s); kept in the dead letters of %s, not retried",
                brief(error, message=False),
                self.path,
            )
        self._settled("dead")

    def _settled(self, outcome: str) -> None:
        self._counts[outcome] += 1
        self._pending -= 1
        self._update_idle()

    def _failed(self, error: Exception, retry_after: float) -> None:
        """Pause the whole sender: the backend (or the outbox) is likely failing for every row."""
        delay = self._backoff(self._failures, retry_after)
        self._failures += 1
        self._paused_until = asyncio.get_running_loop().time() + delay
        if not self._paused:
            self._paused = True
            logger.warning(
                "memproxy: capture paused, %d pending, retrying in %.1fs (%s)", self._pending, delay, brief(error, message=False)
            )

    def _backoff(self, attempts: int, retry_after: float) -> float:
        """Full-jitter exponential backoff, never shorter than the backend's Retry-After."""
        return max(retry_after, min(self.max_delay, self.base_delay * 2 ** min(attempts, 64)) * random.random())
