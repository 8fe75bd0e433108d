"""Turn capture: what a finished exchange stores, and the writer that stores it off the request path."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from .memory.base import MemoryStore
from .protocols import strip_memory_blocks

logger = logging.getLogger(__name__)

MAX_USER_CHARS = 4000
MAX_REPLY_CHARS = 8000


def _clip(text: str, limit: int) -> str:
    text = text.strip()
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
        """A turn ready to store, or None if there is nothing worth remembering."""
        user = _clip(strip_memory_blocks(user), MAX_USER_CHARS)
        reply = _clip(strip_memory_blocks(reply), MAX_REPLY_CHARS)
        if not user or not reply:
            return None
        return cls(scope, user, reply, metadata)

    @property
    def content(self) -> str:
        return f"User: {self.user}\nAssistant: {self.reply}"

    @property
    def custom_id(self) -> str:
        """Stable per (scope, turn): a retried or replayed turn is stored once."""
        digest = hashlib.sha256("\0".join((self.scope, self.user, self.reply)).encode())
        return "turn-" + digest.hexdigest()[:32]


class Capture:
    """A bounded in-memory queue of turns and one background task writing them to the store."""

    def __init__(self, store: MemoryStore, maxsize: int = 1000, retries: int = 3) -> None:
        self.store = store
        self.retries = retries
        self.queue: asyncio.Queue[Turn] = asyncio.Queue(maxsize=maxsize)
        self.stored = 0
        self.failed = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="memproxy capture")

    def submit(self, turn: Turn) -> None:
        """Queue a turn; never blocks. When full, the oldest queued turn is dropped."""
        if self.queue.full():
            self.queue.get_nowait()
            self.queue.task_done()
            self.failed += 1
            logger.warning("memproxy: capture queue full; dropped the oldest turn")
        self.queue.put_nowait(turn)

    async def _run(self) -> None:
        while True:
            turn = await self.queue.get()
            try:
                await self._store(turn)
            finally:
                self.queue.task_done()

    async def _store(self, turn: Turn) -> None:
        for attempt in range(self.retries):
            try:
                await self.store.add(turn.scope, turn.content, turn.custom_id, turn.metadata)
                self.stored += 1
                return
            except Exception as e:  # noqa: BLE001 - any backend failure is retried, then counted
                if attempt + 1 == self.retries:
                    self.failed += 1
                    logger.warning("memproxy: could not store a turn for scope %s: %s", turn.scope, type(e).__name__)
                    return
                await asyncio.sleep(0.2 * 2**attempt)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for queued turns to be written, then stop."""
        try:
            await asyncio.wait_for(self.queue.join(), timeout)
        except TimeoutError:
            logger.warning("memproxy: %d turns not stored at shutdown", self.queue.qsize())
        if self._task:
            self._task.cancel()
            self._task = None
