"""Logging helpers shared by every layer: an exception in one line, and a condition said once."""

from __future__ import annotations

import logging
from collections.abc import Hashable

MAX_KEYS = 1024  # conditions remembered; past this, all are forgotten and may be said once more


def brief(e: BaseException, *, message: bool = True) -> str:
    """An exception as one short line, never a traceback (bodies may hold user data); an error that carries
    a backend's HTTP status (a store's) as that status. Without `message`, only its type: for errors met
    while handling a turn's text, whose message might quote it."""
    if isinstance(status := getattr(e, "status", None), int):
        return f"status {status}"
    text = str(e).splitlines()[0][:160] if str(e) and message else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Once:
    """Logs a condition at its level the first time its key comes up, at debug level after that: a failing
    backend or a client trying again is one line in the log, not one per request."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._said: set[Hashable] = set()

    def __call__(self, key: Hashable, message: str, *args: object, level: int = logging.WARNING) -> None:
        if key in self._said:
            self.logger.debug(message, *args)
            return
        if len(self._said) >= MAX_KEYS:
            self._said.clear()
        self._said.add(key)
        self.logger.log(level, message, *args)
