"""The memory store interface: every backend (local, supermemory) implements it."""

from __future__ import annotations

import abc
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    scope: str
    content: str
    score: float = 0.0  # relevance in [0, 1]; 0 for list()
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0  # unix seconds
    # The keys (`Prompt.key`) of the turns Supermemory wrote this memory from, or of the turn it holds as stored
    # (Keyed); () for a memory whose turns it did not name. The local store names a turn's in its metadata.
    sources: tuple[str, ...] = ()


ACCOUNT_STATUSES = frozenset({401, 402, 403})  # the key or the account is refused, whatever the request


class StoreError(Exception):
    """A backend failed; callers fail open (reads) or retry (writes).

    `status` is the backend's HTTP status if it answered; `retry_after` the
    seconds it asked us to wait. A permanent error (a 4xx other than 408, 409
    and 429) will fail the same way if retried. One that `refuses_all` says
    nothing of the request: the key, the account (ACCOUNT_STATUSES) or the
    URL is wrong, every request fails alike until someone fixes it, and a
    write waits for that rather than being given up.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        refuses_all: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.refuses_all = status in ACCOUNT_STATUSES if refuses_all is None else refuses_all

    @property
    def permanent(self) -> bool:
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 409, 429)


class MemoryStore(abc.ABC):
    """A scoped memory store. All methods are coroutines and never block the loop.

    A scope's memories are only ever returned for that exact scope.
    """

    name: str
    # Whether recall's circuit breaker counts an answer that came after the time budget as a failure
    # (recall.Recall says why a remote service's does and the local store's does not).
    late_is_failure: bool = True

    @abc.abstractmethod
    async def search(self, scope: str, query: str, limit: int = 5, threshold: float = 0.0) -> list[Memory]:
        """The most relevant memories of `scope` for `query`, best first, score >= threshold."""

    def start_search(self, scope: str, query: str, limit: int = 5, threshold: float = 0.0) -> Awaitable[tuple[str, ...]]:
        """The contents of `search`'s memories, best first, as an awaitable started now: what recall needs.
        A backend that can answer with a future skips the coroutine and the task around it, and the Memory
        objects (the local store: once per request)."""
        return _contents(self.search(scope, query, limit, threshold))

    async def changed_elsewhere(self) -> bool:
        """Whether another process (the `memproxy memories` commands) changed the store since the last call. This
        default knows of none: a remote service's own changes are not watched."""
        return False

    @abc.abstractmethod
    async def add(
        self, scope: str, content: str, custom_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> str:
        """Store a memory and return its id. A custom id `scope` already holds names that memory: it takes the new
        content and metadata (the same ones again change nothing), so a turn updated step by step, retried or
        replayed stays one memory. So does a memory that nearly repeats one of the scope's (near.near_duplicates):
        it replaces that one."""

    @abc.abstractmethod
    async def list(self, scope: str, limit: int = 100, offset: int = 0) -> list[Memory]:
        """Memories of `scope`, newest first."""

    @abc.abstractmethod
    async def forget(self, scope: str, memory_id: str) -> bool:
        """Delete one memory of `scope`; True if it existed."""

    async def rewrite(self, memory: Memory, content: str, metadata: dict[str, Any] | None = None) -> bool:
        """Replace the content of `memory`, as `list` or `every` gave it, and its metadata if given; its id, scope
        and date stay. True if it still existed (the local store: and still held what `memory` holds, so that a
        turn updated since is not overwritten with older text)."""
        raise NotImplementedError(f"the {self.name} store cannot rewrite a memory")

    async def every(self, scopes: Sequence[str] | None = None, page: int = 100) -> AsyncIterator[Memory]:
        """Every memory of `scopes` (all the store holds if None), fetched `page` at a time: for maintenance
        such as scrubbing. This default lists the given scopes."""
        if scopes is None:
            raise NotImplementedError(f"the {self.name} store cannot list all its scopes")
        for scope in scopes:
            offset = 0
            while batch := await self.list(scope, page, offset):
                for memory in batch:
                    yield memory
                if len(batch) < page:
                    break
                offset += len(batch)

    async def profile(self, scope: str) -> list[str]:
        """Facts the backend keeps about `scope` as a whole (none by default)."""
        return []

    async def open(self) -> None:
        """Connect and check the backend now; raises StoreError with a clear message."""

    async def close(self) -> None:
        """Release resources."""

    async def move(self, memory: Memory, scope: str) -> bool:
        """Move `memory`, as `list` or `every` gave it, to `scope`, keeping its content and metadata (and its date
        where the backend can set one). If `scope` already holds it (the same custom id), it is only deleted
        from its own. Moving it to its own scope changes nothing. True if it still existed."""
        raise NotImplementedError(f"the {self.name} store cannot move a memory")


async def _contents(memories: Awaitable[list[Memory]]) -> tuple[str, ...]:
    found = ((recalled(m.content, m.metadata.get("tool"), m.created_at), m.sources) for m in await memories)
    return tuple(Keyed(text, sources) if sources else text for text, sources in found)


class Keyed(str):
    """A recalled memory with the keys of the prompts of the turns it holds (`keys`): a stored turn's own, or
    those of the turns a backend wrote it from in its own words (Supermemory's memories). The echo check asks
    whether the conversation holds those turns: a text in no conversation (its own words), or one the
    conversation no longer carries (a restored thread's older turns), is still known as its own."""

    keys: tuple[str, ...]

    def __new__(cls, text: str, keys: tuple[str, ...]) -> Keyed:
        keyed = super().__new__(cls, text)
        keyed.keys = keys
        return keyed


def recalled(content: str, tool: Any, created_at: float) -> str:
    """A memory as recall gives it: `(2026-11-30, Codex) <content>`, its day (in the local time zone, as the
    client's own prompt gives today's date) and the tool that stored it (if recorded), so that a model knows how
    old a note is and where it came from."""
    day = _day(created_at) if created_at and math.isfinite(created_at) and created_at > 0 else ""
    label = ", ".join(x for x in (day, (tool.strip()[:40] if isinstance(tool, str) else "")) if x)
    return f"({label}) {content}" if label else content


USER, ASSISTANT = "User: ", "\nAssistant: "  # how capture.Turn.content writes a turn
PROMPT_KEY = "prompt_key"  # the metadata that names a stored turn's prompt (`Prompt.key`)


MAX_SPLITS = 8  # places `turn_splits` tries: a prompt or answer may quote a transcript, "Assistant: " and all


def turn_parts(content: str) -> tuple[str, str] | None:
    """A turn memory's prompt and answer; None for a memory of other text."""
    return next(turn_splits(content), None)


def turn_splits(content: str) -> Iterator[tuple[str, str]]:
    """The ways a turn memory's text splits into a prompt and an answer, at each of its first MAX_SPLITS
    "\nAssistant: " (the first is `turn_parts`'); none for a memory of other text."""
    if not content.startswith(USER):
        return
    at = content.find(ASSISTANT)
    for _ in range(MAX_SPLITS):
        if at < 0:
            return
        yield content[len(USER) : at], content[at + len(ASSISTANT) :]
        at = content.find(ASSISTANT, at + 1)


def unlabelled(recalled_text: str) -> str:
    """A recalled memory's content, without the label `recalled` put before it."""
    found = LABEL.match(recalled_text)
    return recalled_text[found.end() :] if found else recalled_text


# `recalled`'s label: a day, a tool, or both.
LABEL = re.compile(r"\((?:\d{4}-\d\d-\d\d(?:, [^\n]{1,40}?)?|[^\n]{1,40}?)\) ")


def _day(created_at: float) -> str:
    try:
        return time.strftime("%Y-%m-%d", time.localtime(created_at))
    except (OverflowError, OSError, ValueError):
        return ""
