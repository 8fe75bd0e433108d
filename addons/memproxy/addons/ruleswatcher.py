"""Rules watcher: the rules file (option `memory_rules`), loaded at start, reloaded when it changes.

A bad file at start-up stops memproxy, naming the file, line and key; a bad edit while running keeps the
last good rules and says why. Other addons that depend on the rules (the store: the file's `memory:`
section chooses it) subscribe to `reloaded`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from mitmproxy import ctx
from mitmproxy.addonmanager import Loader

from .. import config
from ..logs import brief
from ..rules import Rules, RulesError, RulesFile
from .common import refuse, spawn

logger = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between two looks at the file


class RulesWatcher:
    """Holds the rules file and reloads it when it changes."""

    def __init__(self) -> None:
        self.file: RulesFile | None = None
        self.reloaded: list[Callable[[], None]] = []  # called after the file changed and loaded
        self._running = False
        self._task: asyncio.Task | None = None

    @property
    def rules(self) -> Rules | None:
        """The rules in force, or None if no rules file could be loaded."""
        return self.file.rules if self.file else None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_rules", str, "", f"Memory-routing rules file (YAML). Empty: {config.DEFAULT_RULES.name} shipped with memproxy."
        )

    def configure(self, updated: set[str]) -> None:
        if "memory_rules" in updated:
            path = Path(ctx.options.memory_rules).expanduser() if ctx.options.memory_rules else config.DEFAULT_RULES
            try:
                self.file = RulesFile(path)
            except RulesError as e:
                refuse(f"memory rules not loaded:\n{e}", self._running)  # the last good rules stay

    def running(self) -> None:
        self._running = True
        if self.file is None:
            return
        self._task = spawn(self._watch(), "rules watcher")
        logger.info("memproxy: rules from %s", self.file.path)

    def done(self) -> None:
        if self._task:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            await self.reload()

    async def reload(self) -> None:
        """Reload the rules file if it changed; a bad edit keeps the last good rules."""
        if self.file is None:
            return
        try:
            reloaded, error = await asyncio.to_thread(self.file.check)
        except Exception as e:  # noqa: BLE001
            reloaded, error = False, brief(e)
        if reloaded:
            logger.info("memproxy: rules reloaded from %s", self.file.path)
            for callback in self.reloaded:
                callback()
        elif error:
            logger.warning("memproxy: rules not reloaded, keeping the last good rules: %s", error)
