"""What the addons share: background tasks that are kept and whose failure is logged, and refusing a setting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from mitmproxy import exceptions

from ..logs import brief

logger = logging.getLogger(__name__)

_tasks: set[asyncio.Task] = set()  # the event loop keeps only weak references to tasks


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
    """A background task on the running loop, kept referenced until it ends; its failure is logged, not lost."""
    task = asyncio.get_running_loop().create_task(coro, name=f"memproxy {name}")
    _tasks.add(task)

    def finished(t: asyncio.Task) -> None:
        _tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            logger.warning("memproxy: %s failed: %s", name, brief(t.exception()))

    task.add_done_callback(finished)
    return task


def refuse(message: str, running: bool) -> None:
    """A setting that cannot be used. While running, the OptionsError makes mitmproxy revert the option;
    at start-up the message is logged as an error, on which mitmdump exits (errorcheck), without a traceback."""
    if running:
        raise exceptions.OptionsError(message)
    logger.error("memproxy: %s", message)
