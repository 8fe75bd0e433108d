"""Faults: a real mitmdump (reverse mode, Supermemory backend) while something breaks.

Each fault runs the same six calls (OpenAI and Anthropic, SDK and raw httpx, streamed and not)
directly against the fake upstream and through the proxy: the client must see the same outcome
both ways. After the fault clears, every completed turn must be stored exactly once. The counts go
to a table printed at the end of the module: "turns sent" are the calls that got a whole reply (a
stream cut by the upstream is not a turn), "duplicates" the stored documents beyond one per turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import types
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    SUPERMEMORY_KEY,
    MitmdumpProc,
    make_anthropic_client,
    make_http_client,
    make_openai_client,
    routing_status,
)
from e2e_helpers import MEMORY_TAG, chat_parts, outbox_rows, start_with_supermemory, wait_until
from fakes import FakeUpstream
from fakes.supermemory import FakeSupermemory
from memproxy.capture import Turn
from memproxy.memory.supermemory import SupermemoryStore
from memproxy.outbox import Outbox, held

pytestmark = pytest.mark.e2e

# Long turns: a row needs more than a page of the outbox, so a full database refuses every new turn.
PADDING = " and more context" * 250
REPLY = "Noted, I will remember that. " * 50

# A mitmproxy script: the outbox's database is full (SQLite's own SQLITE_FULL, "database or disk is full")
# while the flag file exists; it logs each change.
DISK_FULL = '''
import asyncio, logging, os
from pathlib import Path
from mitmproxy import ctx

FLAG = Path(os.environ["MEMPROXY_TEST_DISK_FULL"])


class DiskFull:
    def running(self):
        outbox = ctx.master.addons.get("store").outbox
        self.task = asyncio.get_running_loop().create_task(self.follow(outbox))

    async def follow(self, outbox):
        full = None
        while True:
            if FLAG.exists() != full:
                full = FLAG.exists()
                pages = 1 if full else 2**30  # SQLite raises a limit below the file's size to that size
                await outbox._run(lambda db: db.execute(f"PRAGMA max_page_count = {pages}"))
                logging.info("test outbox disk full: %s", full)
            await asyncio.sleep(0.05)


addons = [DiskFull()]
'''


# -- the calls -------------------------------------------------------------------------
# An outcome: (text, error) for an SDK call, (status, bytes, error) for a raw one; error is None or a type name.


def _message_parts(client, text: str, *, stream: bool = False) -> Iterator[str]:
    """One Anthropic SDK messages turn: the reply's text, part by part as it arrives."""
    messages = [{"role": "user", "content": text}]
    if not stream:
        yield client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=messages).content[0].text
        return
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64, messages=messages) as chunks:
        yield from chunks.text_stream


def _sdk(make: Callable[..., Any], parts_of: Callable[..., Iterator[str]], stream: bool) -> Callable[[Any, str], tuple]:
    def call(target: Any, text: str) -> tuple:
        parts: list[str] = []  # what arrived before any error
        try:
            with make(target, via="reverse") as client:
                for part in parts_of(client, text, stream=stream):
                    parts.append(part)
        except Exception as e:  # noqa: BLE001 - the outcome is compared, whatever it is
            return "".join(parts), type(e).__name__
        return "".join(parts), None

    return call


def _raw(path: str, model: str) -> Callable[[Any, str], tuple]:
    """A raw streamed POST: the status, every byte received, and the error that ended it."""

    def call(target: Any, text: str) -> tuple:
        body = {"model": model, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": text}]}
        status, received = None, bytearray()
        try:
            with make_http_client(target, via="reverse") as client:
                with client.stream("POST", path, json=body) as r:
                    status = r.status_code
                    for chunk in r.iter_raw():
                        received += chunk
        except httpx.HTTPError as e:
            return status, bytes(received), type(e).__name__
        return status, bytes(received), None

    return call


CALLS: dict[str, Callable[[Any, str], tuple]] = {
    "openai": _sdk(make_openai_client, chat_parts, False),
    "openai stream": _sdk(make_openai_client, chat_parts, True),
    "anthropic": _sdk(make_anthropic_client, _message_parts, False),
    "anthropic stream": _sdk(make_anthropic_client, _message_parts, True),
    "raw chat stream": _raw("/v1/chat/completions", "gpt-4o"),
    "raw messages stream": _raw("/v1/messages", "claude-sonnet-4-6"),
}


# -- the faults ------------------------------------------------------------------------


@dataclass
class Harness:
    upstream: FakeUpstream
    supermemory: FakeSupermemory
    proc: MitmdumpProc
    outbox: Path
    flag: Path  # exists: the outbox's disk is full


def outbox_stats(proc: MitmdumpProc) -> dict[str, int]:
    return routing_status(proc)["outbox"]


def _reset_on(h: Harness) -> None:
    h.upstream.reset_mid_stream = True


def _reset_off(h: Harness, turns: int) -> None:
    h.upstream.reset_mid_stream = False


def _backend(fault: str, seconds: float = 0.0) -> Callable[[Harness], None]:
    def on(h: Harness) -> None:
        h.supermemory.slow_seconds = seconds
        h.supermemory.fault = fault

    return on


def _backend_back(h: Harness, turns: int) -> None:
    h.supermemory.fault = None


def _disk_full(h: Harness) -> None:
    h.flag.touch()
    h.supermemory.fault = "refused"  # and the backend down: the turns can only wait, in memory
    assert wait_until(lambda: "test outbox disk full: True" in h.proc.log_text()), h.proc.log_text()


def _disk_freed(h: Harness, turns: int) -> None:
    assert wait_until(lambda: outbox_stats(h.proc)["disk_errors"] == turns), h.proc.log_text()
    assert outbox_rows(h.outbox) == 0 and outbox_stats(h.proc)["pending"] == turns
    h.flag.unlink()
    # The held turns are written to the outbox once it can take them, while the backend is still down.
    assert wait_until(lambda: outbox_rows(h.outbox) == turns), h.proc.log_text()
    h.supermemory.fault = None
    log = h.proc.log_text()
    assert "cannot write the capture outbox" in log and "(OperationalError: database or disk is full)" in log
    assert f"writable again; {turns} turns moved there from memory, 0 were dropped" in log


def _kill(h: Harness, turns: int) -> None:
    assert wait_until(lambda: outbox_rows(h.outbox) == turns), h.proc.log_text()
    h.proc.kill()  # SIGKILL: no done hook, nothing flushed
    h.supermemory.fault = None
    h.proc.start()


ALL = list(CALLS)
WHOLE = ["openai", "anthropic"]  # the calls whose replies are not streamed
# fault -> (put it in place before the calls, clear it after them given the number of turns, calls that complete)
FAULTS: dict[str, tuple[Callable[[Harness], None], Callable[[Harness, int], None], list[str]]] = {
    "upstream reset mid-stream": (_reset_on, _reset_off, WHOLE),
    "backend down (refused)": (_backend("refused"), _backend_back, ALL),
    "backend slow (1 s > 300 ms budget)": (_backend("slow", 1.0), _backend_back, ALL),
    "outbox disk full (+ backend down)": (_disk_full, _disk_freed, ALL),
    "mitmdump SIGKILLed, turns pending": (_backend("refused"), _kill, ALL),
}
COLUMNS = ("fault", "requests", "client outcome same as direct", "turns sent", "turns stored", "duplicates")


@pytest.fixture(scope="module")
def table(request: pytest.FixtureRequest) -> Iterator[list[tuple]]:
    """Rows of the fault table, printed to the terminal once the module's tests are done."""
    rows: list[tuple] = []
    yield rows
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n\nFault table (test_hard_faults.py)\n" + "\n".join(lines))


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_keeps_upstream_behaviour_and_every_turn_once(
    mitmdump, upstream: FakeUpstream, supermemory: FakeSupermemory, tmp_path: Path, table: list[tuple], fault: str
) -> None:
    outbox, flag = tmp_path / "outbox.db", tmp_path / "disk-full"
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL)
    proc = start_with_supermemory(
        mitmdump, upstream, supermemory, outbox, env={"MEMPROXY_TEST_DISK_FULL": str(flag)}, extra_scripts=(script,)
    )
    harness = Harness(upstream, supermemory, proc, outbox, flag)
    upstream.reply = REPLY
    put, clear, whole = FAULTS[fault]
    put(harness)
    backend_down = supermemory.fault is not None  # down or slow while the calls run

    # A number apart, so that no turn nearly repeats another (near.near_duplicates): each is stored on its own.
    texts = {name: f"[{fault}] {name} #{i}: remember this{PADDING}" for i, name in enumerate(CALLS)}
    direct = types.SimpleNamespace(base_url=upstream.url)  # reverse-mode clients need nothing but a base URL
    expected = {name: call(direct, texts[name]) for name, call in CALLS.items()}
    got = {name: call(proc, texts[name]) for name, call in CALLS.items()}
    turns = [name for name, outcome in expected.items() if outcome[-1] is None]  # whole replies
    assert turns == whole, expected
    if backend_down:  # recall failed open: no request went on with memories
        assert not any(MEMORY_TAG in json.dumps(r.json) for r in upstream.requests)
    clear(harness, len(turns))

    def stored() -> dict[str, int]:
        docs = [doc.content for doc in supermemory.documents.values()]
        return {name: sum(texts[name][:200] in doc for doc in docs) for name in CALLS}

    assert wait_until(lambda: sum(stored().values()) >= len(turns) and outbox_stats(proc)["pending"] == 0, 30), (
        proc.log_text()
    )
    counts = stored()
    table.append(
        (fault, len(CALLS), "yes" if got == expected else "NO", len(turns), sum(counts[n] > 0 for n in turns),
         len(supermemory.documents) - sum(counts[n] > 0 for n in turns))
    )
    assert got == expected
    assert counts == {name: int(name in turns) for name in CALLS}, counts  # each completed turn once, nothing else
    assert len(supermemory.documents) == len(turns)
    assert outbox_rows(outbox) == 0
    log = proc.log_text()
    assert "Traceback" not in log and SUPERMEMORY_KEY not in log


# -- disk full: the outbox itself --------------------------------------------------------


@pytest.fixture
async def full_outbox(tmp_path: Path, supermemory: FakeSupermemory) -> AsyncIterator[Outbox]:
    """An outbox whose database is full, sending to a Supermemory that refuses connections."""
    store = SupermemoryStore(SUPERMEMORY_KEY, supermemory.url)
    outbox = Outbox(tmp_path / "outbox.db", store, base_delay=0.01, max_delay=0.1)
    await outbox.start()
    await full(outbox, True)
    supermemory.fault = "refused"
    yield outbox
    await outbox.close(timeout=0)
    await store.close()


async def full(outbox: Outbox, on: bool) -> None:
    """SQLite's own "database or disk is full": no page can be added to the outbox while on."""
    pages = 1 if on else 2**30
    await outbox._run(lambda db: db.execute(f"PRAGMA max_page_count = {pages}"))


def long_turn(i: int) -> Turn:
    return Turn("faults", f"question {i}{PADDING}", REPLY)


async def test_disk_full_holds_a_bounded_number_of_turns_then_writes_them(
    full_outbox: Outbox, supermemory: FakeSupermemory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "memproxy.outbox")
    monkeypatch.setattr(held, "MAX_UNSAVED", 2)
    monkeypatch.setattr(held, "SAVE_RETRY", 0.05)
    for i in range(3):
        full_outbox.submit(long_turn(i))
    while full_outbox.stats["disk_errors"] < 3:
        await asyncio.sleep(0.01)
    assert full_outbox.pending == 2 and outbox_rows(full_outbox.path) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("keeping up to 2 turns in memory" in w for w in warnings)
    assert any("2 turns held in memory" in w and "new turns are dropped" in w for w in warnings)

    await full(full_outbox, False)
    while "writable again" not in caplog.text:  # the sender retries the write while the backend is down
        await asyncio.sleep(0.01)
    assert "writable again; 2 turns moved there from memory, 1 were dropped" in caplog.text
    assert outbox_rows(full_outbox.path) == 2
    supermemory.fault = None
    assert await full_outbox.flush(10)
    stored = sorted(doc.content.split(PADDING[:9])[0] for doc in supermemory.documents.values())
    assert stored == ["User: question 0", "User: question 1"]  # the third was dropped, as logged
    stats = full_outbox.stats
    assert (stats["submitted"], stats["disk_errors"], stats["stored"], stats["pending"]) == (3, 3, 2, 0)


async def test_turns_held_in_memory_are_written_at_close(full_outbox: Outbox, supermemory: FakeSupermemory) -> None:
    full_outbox.submit(long_turn(0))
    while full_outbox.stats["disk_errors"] < 1:
        await asyncio.sleep(0.01)
    await full(full_outbox, False)
    await full_outbox.close(timeout=0)
    assert outbox_rows(full_outbox.path) == 1  # left for the next start, like any unsent row
