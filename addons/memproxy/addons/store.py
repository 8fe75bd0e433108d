"""Store: the memory store, its recall, and the outbox that feeds it (options `memory_backend`, `memory_db`,
`memory_outbox`, `memory_retry_max`).

The backend is chosen from the options, the rules file's `memory:` section and the environment, again
whenever one of them changes: a new backend's store replaces the old one while running. The outbox is one
file for the life of the process (turns waiting in it would be stranded by a switch): changing
`memory_outbox` while running is refused. Supermemory's base URL and key are kept for the route
`supermemory_router` whichever backend keeps the memories.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import NamedTuple

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from .. import config
from ..memory import Backend, MemoryStore, StoreError, configured_backend, open_store
from ..outbox import Outbox
from ..recall import Recall
from .common import refuse, spawn
from .ruleswatcher import RulesWatcher

logger = logging.getLogger(__name__)

SHUTDOWN = 2.0  # seconds the outbox may take at exit to send what it holds
WATCH_EVERY = 2.0  # seconds between two looks at whether another process changed the store


class Router(NamedTuple):
    """Supermemory's Memory Router: where to send a request, and the key it needs (never log it)."""

    base_url: str
    api_key: str


def file_option(name: str) -> Path | None:
    """A file option's path (None when empty: the default); a directory is refused."""
    value = getattr(ctx.options, name)
    if not value:
        return None
    if Path(value).is_dir():
        raise exceptions.OptionsError(f"{name}: {value} is a directory")
    return Path(value)


class Store:
    """Opens the chosen memory store and the outbox, swaps stores when the backend changes, closes both at exit."""

    def __init__(self, rules: RulesWatcher) -> None:
        self.rules = rules
        self.backend: Backend | None = None
        self.store: MemoryStore | None = None
        self.recall: Recall | None = None
        self.outbox: Outbox | None = None
        self.router: Router | None = None  # for route supermemory_router
        self._running = False
        self._watch: asyncio.Task | None = None
        self._swaps = asyncio.Lock()  # one swap at a time, in the order they were decided
        rules.reloaded.append(self._rules_reloaded)

    @property
    def supermemory_key(self) -> str:
        """Supermemory's API key, or "" without one: redaction replaces it wherever a request carries it."""
        return self.router.api_key if self.router else ""

    def load(self, loader: Loader) -> None:
        for noisy in ("httpcore", "httpx"):  # their debug logs print headers: the store's and the gateway's keys
            logging.getLogger(noisy).setLevel(logging.INFO)
        loader.add_option(
            "memory_backend",
            str,
            "",
            "Memory backend: auto (supermemory when SUPERMEMORY_API_KEY is set, else local), local or supermemory."
            " Empty: the rules file's memory.backend (default auto).",
            choices=["", "auto", "local", "supermemory"],
        )
        loader.add_option("memory_db", str, "", "Local store file. Empty: memories.db in the user's data dir.")
        loader.add_option(
            "memory_outbox", str, "", "Durable queue of turns not yet stored. Empty: outbox.db in the user's data dir."
        )
        loader.add_option(
            "memory_retry_max", int, 300, "Longest wait, in seconds, between retries of a failing memory backend."
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "memory_retry_max" in updated:
            if opts.memory_retry_max <= 0:
                raise exceptions.OptionsError("memory_retry_max must be > 0")
            if self.outbox:
                self.outbox.max_delay = opts.memory_retry_max
        if "memory_outbox" in updated:
            path = file_option("memory_outbox") or config.outbox_path()
            if self.outbox is not None and path != self.outbox.path:
                raise exceptions.OptionsError(
                    f"memory_outbox cannot change while memproxy runs (turns may wait in {self.outbox.path}):"
                    " restart memproxy to use another outbox"
                )
        if "memory_db" in updated:
            file_option("memory_db")
        if updated & {"memory_backend", "memory_db", "memory_rules"} and self.rules.rules:
            try:
                self._choose()
            except ValueError as e:
                refuse(str(e), self._running)

    def _choose(self) -> None:
        """Choose the backend from options, the rules file and the environment; swap stores if it changed."""
        opts, memory = ctx.options, self.rules.rules.memory
        backend = configured_backend(opts.memory_backend, opts.memory_db, memory)
        try:  # the Memory Router needs Supermemory's key and URL, even when memories are kept locally
            supermemory = configured_backend("supermemory", None, memory)
            self.router = Router(supermemory.base_url, supermemory.api_key or "")
        except ValueError:
            self.router = None
        if backend == self.backend:
            return
        old, self.backend, self.store = self.store, backend, open_store(backend)
        self.recall = Recall(self.store)
        if self.outbox:
            self.outbox.store = self.store
        if self._running:
            spawn(self._open(self.store, backend, old), "memory store")

    def _stored(self, scope: str) -> None:
        """A turn of `scope` reached the store: what recall cached of the scope before it is out of date (a
        search between the turn's capture and its storing cached the scope without it)."""
        if self.recall is not None:
            self.recall.invalidate(scope)

    def _rules_reloaded(self) -> None:
        try:
            self._choose()
        except ValueError as e:
            logger.warning("memproxy: memory backend unchanged: %s", e)

    async def _open(self, store: MemoryStore, backend: Backend, old: MemoryStore | None = None) -> None:
        """Close the store replaced (if any) and open its successor; a store that cannot open is logged."""
        async with self._swaps:
            if old:
                await old.close()
            try:
                await store.open()
                logger.info("memproxy: %s", backend.describe())
            except StoreError as e:
                logger.warning("memproxy: memory store unavailable, requests pass through without memory: %s", e)

    async def running(self) -> None:
        self._running = True
        if self.store is None:
            return
        # The outbox exists before the first await: the proxy is already listening.
        path = file_option("memory_outbox") or config.outbox_path()
        self.outbox = Outbox(path, self.store, max_delay=ctx.options.memory_retry_max, on_stored=self._stored)
        await self.outbox.start()
        await self._open(self.store, self.backend)
        self._watch = spawn(self._watch_store(), "store watch")

    async def _watch_store(self) -> None:
        """Every WATCH_EVERY seconds, forget what recall cached if another process changed the store: a memory that
        `memproxy memories forget` deleted, or `scrub` rewrote, is not recalled again from the cache."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            store, recall = self.store, self.recall
            try:
                if store is not None and recall is not None and await store.changed_elsewhere():
                    recall.invalidate()
            except StoreError:
                pass  # a store that fails says so where it is used

    async def done(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.outbox:
            await self.outbox.close(timeout=SHUTDOWN)
        if self.store:
            await self.store.close()
