"""Turns held in memory while the outbox file cannot be written (disk full, a file gone read-only).

They are scrubbed already. The sender sends them from here, and the outbox retries writing them to the file
every SAVE_RETRY seconds. Beyond MAX_UNSAVED, new turns are dropped until the file takes writes again, and
the log says how many were.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from ..capture import Turn
from ..logs import brief
from .table import Row

logger = logging.getLogger(__name__)

MAX_UNSAVED = 1000  # turns held in memory while the outbox cannot be written; beyond, new turns are dropped
SAVE_RETRY = 2.0  # seconds between retries of writing the turns held in memory to the outbox


class Held:
    """The turns an outbox holds in memory, by custom id, and whether (and since when) its file fails."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, Row] = {}  # custom_id -> turn the outbox could not write
        # custom_id -> created_at of a turn stored from here whose older rows on file could not be deleted yet
        self.superseded: dict[str, float] = {}
        self.save_at = 0.0  # when to retry writing them to the outbox (time.time())
        self.failing = False  # the outbox could not be written, and has not been since
        self.dropped = 0  # turns dropped since the outbox became unwritable

    def __len__(self) -> int:
        return len(self.rows)

    def failed(self, error: Exception) -> None:
        """A turn could not be written: retry the write later, and say so once until the outbox is writable."""
        self.retry_later()
        if not self.failing:
            self.failing = True
            reason = f"{type(error).__name__}: {error}" if isinstance(error, (sqlite3.Error, OSError)) else ""
            logger.warning(
                "memproxy: cannot write the capture outbox %s (%s); keeping up to %d turns in memory,"
                " sending them from there and retrying the write every %gs",
                self.path,
                reason or brief(error, message=False),
                MAX_UNSAVED,
                SAVE_RETRY,
            )

    def retry_later(self) -> None:
        self.save_at = time.time() + SAVE_RETRY

    def written(self) -> None:
        """A turn was written: write the turns held in memory now, or, with none held, say the outbox is back."""
        if self.rows:
            self.save_at = 0.0
        elif self.failing:
            self.saved(0)

    def hold(self, turn: Turn) -> bool:
        """Keep `turn` until it is sent or written, in place of a held turn with its custom id (an earlier step of
        its prompt); True if one more turn is held (False: it replaced one, or it was dropped: too many are)."""
        row = Row(None, turn.custom_id, turn.scope, turn.content, turn.metadata, time.time())
        if turn.custom_id in self.rows:
            self.rows[turn.custom_id] = row
            return False
        if len(self.rows) >= MAX_UNSAVED:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "memproxy: %d turns held in memory and the capture outbox %s is still not writable;"
                    " new turns are dropped until it is",
                    MAX_UNSAVED,
                    self.path,
                )
            return False
        self.rows[turn.custom_id] = row
        return True

    def saved(self, moved: int) -> None:
        """The outbox took the `moved` turns held in memory: it is writable again."""
        if self.failing:
            self.failing = False
            logger.info(
                "memproxy: capture outbox %s writable again; %d turns moved there from memory, %d were dropped",
                self.path,
                moved,
                self.dropped,
            )
        self.dropped = 0

    def due(self, now: float, limit: int) -> list[Row]:
        """Up to `limit` held turns due at `now`, oldest first."""
        return [row for row in self.rows.values() if row.due_at <= now][:limit]

    def due_times(self) -> list[float]:
        return [row.due_at for row in self.rows.values()]

    def newer(self, row: Row) -> float | None:
        """When the turn held or stored from here that supersedes `row` (on file, of its custom id, no newer) was
        created; None if there is none."""
        held = self.rows.get(row.custom_id)
        newer = held.created_at if held is not None else self.superseded.get(row.custom_id)
        return newer if newer is not None and newer >= row.created_at else None

    def pop(self, row: Row) -> bool:
        """Forget `row`; False if it is no longer held (a later turn replaced it)."""
        if self.rows.get(row.custom_id) is not row:
            return False
        del self.rows[row.custom_id]
        return True
