"""Processes racing on one file: each runs `target(*args, plan, start, out)`, all released at once."""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from typing import Any

import pytest


def race(target: Callable[..., None], plans: list[Any], *args: Any) -> list[Any]:
    """Run one spawned process per plan; the results they put on `out`, one each (a str is a worker's error)."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(len(plans)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, plan, start, out)) for plan in plans]
    for proc in procs:
        proc.start()
    try:
        results = [out.get(timeout=90) for _ in procs]
    except queue.Empty:
        pytest.fail("a worker did not report")
    finally:
        for proc in procs:
            proc.join(timeout=30)
    errors = [r for r in results if isinstance(r, str)]
    assert not errors, errors[0]
    return results
