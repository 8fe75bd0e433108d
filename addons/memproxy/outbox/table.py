"""The outbox file: a SQLite table of the turns waiting for the store and one of its dead letters, and every
statement on them.

One row waits per custom id: a turn replaces the row of an earlier step of its prompt by a new row (a new id, so
it is sent after any row the sender has in flight, and that row's outcome settles nothing of the new one).

The functions that take a connection run in the outbox's worker thread. `list_dead_letters` and
`scrub_outbox` open the file themselves, for the CLI; listing is read-only and safe while a proxy runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import private
from ..capture import scrubbed_with_trace
from ..logs import brief
from ..scrub import Scrubbed, scrub_together

logger = logging.getLogger(__name__)

BUSY_TIMEOUT = 5.0  # seconds to wait for another process's write lock
MAX_ERROR_CHARS = 200

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
# A turn already rejected for good (the same custom id and content) is not queued again.
REJECTED = "SELECT 1 FROM dead_letters WHERE custom_id = :custom_id AND content = :content"
# A waiting row of the same custom id gives way, unless it is newer (held in memory, a turn may reach the file late).
REPLACE = "DELETE FROM outbox WHERE custom_id = :custom_id AND created_at <= :created_at"
# The new row's id is the largest before the replaced row went: SQLite would give it the replaced row's id again.
TOP = "SELECT coalesce(max(id), 0) FROM outbox"
INSERT = """
INSERT OR IGNORE INTO outbox(id, custom_id, scope, content, metadata, created_at)
VALUES (:top + 1, :custom_id, :scope, :content, :metadata, :created_at)
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


@dataclass(slots=True)
class Row:
    """A turn waiting to be sent; `id` is None for a turn the outbox could not write (memory only)."""

    id: int | None
    custom_id: str
    scope: str
    content: str
    metadata: dict[str, Any]
    created_at: float
    attempts: int = 0
    due_at: float = 0.0


def connect(path: Path) -> sqlite3.Connection:
    """The outbox, opened as a private file (0600, -wal and -shm too); a refused path raises UnsafePath."""
    path = private.private_path(path, create=True, companions=private.SQLITE_COMPANIONS)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        _refuse_foreign(db, path)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # in WAL mode: every commit survives a process kill
        db.executescript(SCHEMA)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _refuse_foreign(db: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    """Raise sqlite3.DatabaseError, before anything is written, if `path` is another application's database (the
    memory store, say): one that names an application, or holds tables but no outbox."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if db.execute("PRAGMA application_id").fetchone()[0] or (tables and "outbox" not in tables):
        raise sqlite3.DatabaseError(f"{path} is not a memproxy outbox (another application's database, or the memory"
                                    " store?): nothing was changed")


def enqueue(
    db: sqlite3.Connection, custom_id: str, scope: str, content: str, metadata: dict[str, Any], created_at: float
) -> bool:
    """Add a turn to the outbox, in place of a waiting row with its custom id; True if the outbox holds one row
    more (False: it replaced one, a newer one waits, it was rejected for good, or it cannot be stored)."""
    row = _row(custom_id, scope, content, metadata, created_at)
    if row is None:
        return False
    if db.in_transaction:
        return _insert(db, row)
    with db:
        db.execute("BEGIN IMMEDIATE")
        return _insert(db, row)


def _row(custom_id: str, scope: str, content: str, metadata: dict[str, Any], created_at: float) -> dict[str, Any] | None:
    """A turn's values for the statements, or None (logged) if SQLite cannot take them: a text that does not encode
    to UTF-8 (a lone surrogate). Checked before any statement, so that such a turn fails alone and changes nothing,
    never the write of the others, nor the outbox's close."""
    try:
        row: dict[str, Any] = dict(
            custom_id=custom_id,
            scope=scope,
            content=content,
            metadata=json.dumps(metadata, ensure_ascii=False, default=str),
            created_at=created_at,
        )
        for value in row.values():
            if isinstance(value, str):
                value.encode()
    except (ValueError, TypeError) as e:  # UnicodeEncodeError included; its message would quote the text
        logger.warning("memproxy: a turn cannot be written to the capture outbox (%s); it is dropped",
                       brief(e, message=False))
        return None
    return row


def _insert(db: sqlite3.Connection, row: dict[str, Any]) -> bool:
    if db.execute(REJECTED, row).fetchone() is not None:
        return False
    row["top"] = db.execute(TOP).fetchone()[0]
    replaced = db.execute(REPLACE, row).rowcount
    return db.execute(INSERT, row).rowcount > replaced


def enqueue_all(db: sqlite3.Connection, rows: list[Row]) -> list[bool]:
    """Write turns held in memory to the outbox, all or none (but for one that cannot be stored, dropped alone); for
    each, whether the outbox holds one row more."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        return [enqueue(db, r.custom_id, r.scope, r.content, r.metadata, r.created_at) for r in rows]


def reopen(db: sqlite3.Connection) -> int:
    """Make rows left from an earlier run due now (a restart is a fresh start); count them."""
    db.execute("UPDATE outbox SET next_attempt_at = 0 WHERE next_attempt_at > 0")
    return count(db)


def count(db: sqlite3.Connection) -> int:
    return db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def take(db: sqlite3.Connection, now: float, limit: int) -> tuple[list[Row], float | None]:
    """Up to `limit` rows due at `now`, oldest first; with none, when the next one is due (None: no row waits)."""
    rows = [
        Row(id_, custom_id, scope, content, json.loads(metadata), created_at, attempts, due_at)
        for id_, custom_id, scope, content, metadata, created_at, attempts, due_at in db.execute(TAKE, (now, limit))
    ]
    return rows, None if rows else db.execute("SELECT min(next_attempt_at) FROM outbox").fetchone()[0]


def delete(db: sqlite3.Connection, id_: int) -> bool:
    """Delete a sent row; False if a later turn had replaced it already."""
    return db.execute("DELETE FROM outbox WHERE id = ?", (id_,)).rowcount > 0


def drop_older(db: sqlite3.Connection, custom_id: str, created_at: float) -> int:
    """Delete the waiting rows of `custom_id` created by `created_at`: a newer turn of it, held in memory, is sent
    or stored in their place. How many went."""
    return db.execute(REPLACE, {"custom_id": custom_id, "created_at": created_at}).rowcount


def reschedule(db: sqlite3.Connection, id_: int, attempts: int, due_at: float) -> None:
    db.execute("UPDATE outbox SET attempts = ?, next_attempt_at = ? WHERE id = ?", (attempts, due_at, id_))


def bury(db: sqlite3.Connection, row: Row, status: int | None, error: str, failed_at: float) -> bool:
    """Move `row` to the dead letters, with the store's status and the error (clipped): it is never sent again.
    False if a later turn had replaced it (that one is sent instead). A row held in memory (no id) is buried."""
    metadata = json.dumps(row.metadata, ensure_ascii=False, default=str)
    letter = (row.custom_id, row.scope, row.content, metadata, row.created_at)
    letter += (status, error[:MAX_ERROR_CHARS], row.attempts + 1, failed_at)
    with db:
        db.execute("BEGIN IMMEDIATE")
        if row.id is not None and not db.execute("DELETE FROM outbox WHERE id = ?", (row.id,)).rowcount:
            return False
        db.execute(BURY, letter)
        return True


def dead_letters(db: sqlite3.Connection) -> list[dict[str, Any]]:
    keys = ("custom_id", "scope", "content", "metadata", "created_at", "status", "error", "attempts", "failed_at")
    letters = [dict(zip(keys, row)) for row in db.execute(DEAD_LETTERS)]
    for letter in letters:
        letter["metadata"] = json.loads(letter["metadata"])
    return letters


def requeue(path: str | os.PathLike[str], status: int | None = None) -> int:
    """Move the dead letters (those the store rejected with `status`, or all) back into the outbox at `path`, due
    now: a proxy sends them with the next turn it captures, or when it starts. A letter whose custom id has a newer
    turn waiting gives way to it. How many letters left the dead letters."""
    path = Path(path)
    if not path.exists():
        return 0
    where, args = ("", ()) if status is None else (" WHERE status = ?", (status,))
    with contextlib.closing(connect(path)) as db, db:
        db.execute("BEGIN IMMEDIATE")
        letters = db.execute(f"DELETE FROM dead_letters{where} RETURNING custom_id, scope, content, metadata, created_at",
                             args).fetchall()
        for custom_id, scope, content, metadata, created_at in letters:
            row = dict(custom_id=custom_id, scope=scope, content=content, metadata=metadata, created_at=created_at)
            _insert(db, row)
    return len(letters)


def list_dead_letters(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The turns the store rejected for good, oldest first; read-only, safe while a proxy runs."""
    path = Path(path)
    if not path.exists():
        return []
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)) as db:
        _refuse_foreign(db, path)
        try:
            return dead_letters(db)
        except sqlite3.OperationalError:  # no outbox was ever created in this file
            return []


def _scrubbed(values: list[str], metadata: str) -> tuple[list[Scrubbed], str, Counter[str]]:
    """A row's texts and the trace in its metadata (JSON text) scrubbed together (`capture.scrubbed_with_trace`),
    and how many secrets of each kind were replaced in all."""
    try:
        parsed = json.loads(metadata)
    except (TypeError, ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        scrubbed = scrub_together(values)
        return scrubbed, metadata, sum((result.found for result in scrubbed), Counter[str]())
    scrubbed, cleaned, found = scrubbed_with_trace(values, parsed)
    return scrubbed, (metadata if cleaned == parsed else json.dumps(cleaned, ensure_ascii=False)), found


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
    with contextlib.closing(connect(path)) as db:
        with db:
            db.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
            for table, (key, texts) in columns.items():
                rows = db.execute(f"SELECT {key}, metadata, {', '.join(texts)} FROM {table}").fetchall()
                for key_value, metadata, *values in rows:
                    scrubbed, metadata, in_row = _scrubbed(values, metadata)
                    if not in_row:
                        continue
                    turns += 1
                    found += in_row
                    if not dry_run:
                        assignments = ", ".join(f"{column} = ?" for column in (*texts, "metadata"))
                        update = f"UPDATE {table} SET {assignments} WHERE {key} = ?"
                        db.execute(update, (*(result.text for result in scrubbed), metadata, key_value))
        if turns and not dry_run:
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return found, turns
