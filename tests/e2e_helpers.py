"""Small helpers for end-to-end tests: seed and read the local store file a mitmdump process uses."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeUpstream
from fakes.supermemory import FakeSupermemory
from memproxy.memory.base import MemoryStore
from memproxy.memory.local import LocalStore

MITMDUMP = Path(sys.executable).parent / "mitmdump"
MEMPROXY = Path(sys.executable).with_name("memproxy")
CLIENT_BIN = Path(__file__).resolve().parent / "clients/node_modules/.bin"  # real clients: `make test` runs npm ci
# Variables that would leak the developer's setup into a proxy under test or bench.
SCRUBBED_ENV = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "supermemory_api_key"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_env(home: Path) -> dict[str, str]:
    """This environment without proxy settings or a Supermemory key, with a home (and data dirs) of its own."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in SCRUBBED_ENV}
    return env | {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def loopback_mitmdump_argv(
    port: int,
    settings: Mapping[str, str],
    scripts: Sequence[str | Path] = (),
    reverse: str | None = None,
    listen_host: str = "127.0.0.1",
) -> list[str]:
    """mitmdump on 127.0.0.1:`port` (or `listen_host`; "" is every interface; reverse to `reverse` if given) with
    the settings memproxy needs, then `settings`."""
    argv = [str(MITMDUMP), "--listen-host", listen_host, "-p", str(port)]
    if reverse is not None:
        argv += ["--mode", f"reverse:{reverse}"]
    for key, value in {"connection_strategy": "lazy", "flow_detail": "0", **settings}.items():
        argv += ["--set", f"{key}={value}"]
    for script in scripts:
        argv += ["-s", str(script)]
    return argv


CLAUDE_UA = "claude-cli/2.1.328 (external, cli)"
MEMORY_TAG = "<recalled-memories"  # what recall adds to a request


def seed_store(store: MemoryStore, scope: str, *contents: str) -> None:
    """Store memories in `scope` of `store`, then close it."""

    async def go() -> None:
        try:
            for text in contents:
                await store.add(scope, text)
        finally:
            await store.close()

    asyncio.run(go())


def seed(db: Path, scope: str, *contents: str) -> None:
    """Store memories in `scope` of the local store at `db` (before or while mitmdump runs)."""
    seed_store(LocalStore(db), scope, *contents)


def memories(db: Path, scope: str) -> list[str]:
    async def go() -> list[str]:
        store = LocalStore(db)
        try:
            return [m.content for m in await store.list(scope)]
        finally:
            await store.close()

    return asyncio.run(go())


def wait_memories(db: Path, scope: str, n: int = 1, timeout: float = 15.0) -> list[str]:
    """Poll until `scope` holds at least `n` memories (capture is asynchronous by design)."""
    deadline = time.monotonic() + timeout
    while True:
        found = memories(db, scope) if db.exists() else []
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def wait_until(condition, timeout: float = 20.0) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False). A wait, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def once_it_exists(path: Path, action: Callable[[], None]) -> threading.Thread:
    """A thread that runs `action` once `path` exists: a client's tool writes it, then waits while the test
    changes something around the client (memproxy restarting, the provider starting to fail). Join it once the
    client is done."""

    def run() -> None:
        if wait_until(path.exists, timeout=120):
            action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def restart_once(proc: Any, started: Path, restarted: bool) -> threading.Thread:
    """A thread that restarts `proc` (a MitmdumpProc) once `started` exists, if `restarted` (if not, one that
    waits for nothing)."""
    if not restarted:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        return thread
    return once_it_exists(started, proc.restart)


def outbox_rows(outbox: Path) -> int:
    """Turns waiting in the outbox database at `outbox` (0 before it exists)."""
    if not outbox.exists():
        return 0
    with sqlite3.connect(outbox) as db:
        return db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def start_with_supermemory(
    mitmdump: Callable[..., Any],
    upstream: FakeUpstream,
    supermemory: FakeSupermemory,
    outbox: Path,
    *,
    env: dict[str, str] | None = None,
    extra_scripts: tuple[str | Path, ...] = (),
    **options: str,
) -> Any:
    """A reverse-mode mitmdump in front of `upstream` storing to the fake `supermemory`, its outbox at `outbox`."""
    env = {"SUPERMEMORY_API_KEY": supermemory.api_key, "SUPERMEMORY_BASE_URL": supermemory.url, **(env or {})}
    opts = {"memory_outbox": str(outbox), "memory_retry_max": "1", **options}
    return mitmdump(mode="reverse", upstream=upstream, env=env, options=opts, extra_scripts=extra_scripts)


def chat_parts(client: Any, text: str, *, stream: bool = False, **kw: Any) -> Iterator[str]:
    """One OpenAI SDK chat turn (gpt-4o): the reply's text, part by part as it arrives.

    ``kw`` (extra_headers ...) go to ``chat.completions.create``."""
    messages = [{"role": "user", "content": text}]
    if not stream:
        yield client.chat.completions.create(model="gpt-4o", messages=messages, **kw).choices[0].message.content
        return
    with client.chat.completions.create(model="gpt-4o", messages=messages, stream=True, **kw) as chunks:
        for chunk in chunks:
            if chunk.choices:
                yield chunk.choices[0].delta.content or ""


def chat(client: Any, text: str, *, stream: bool = False, **kw: Any) -> str:
    """One OpenAI SDK chat turn (gpt-4o): the reply's text."""
    return "".join(chat_parts(client, text, stream=stream, **kw))


def claude_body(cwd: str, text: str, *, stream: bool = True) -> dict[str, Any]:
    """A request body shaped like Claude Code's (CLIENTS.md): billing block, cached system, cwd message."""
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 256,
        "stream": stream,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "system", "content": f"Primary working directory: {cwd}\nIs a git repository: true"},
            {"role": "user", "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]},
        ],
    }


def claude_headers(**extra: str) -> dict[str, str]:
    return {"user-agent": CLAUDE_UA, "x-app": "cli", "anthropic-version": "2023-06-01", "x-api-key": "sk-ant-e2e", **extra}


def installed_client(name: str) -> Path:
    """The real client `name` from tests/clients; skipped if it is not installed, a failure under CI."""
    path = CLIENT_BIN / name
    if not path.exists():
        message = f"{name} is not installed at {path} (`make test` runs npm ci in tests/clients)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has npm: a missing client is a broken set-up, not a reason to skip
        pytest.skip(message)
    return path


def run_client(proc: Any, project: Path, argv: list[str], env: dict[str, str], *, wrap: bool) -> str:
    """`argv` in `project` (created if missing; `PWD` says so too, as a shell started there would) with `env`,
    through mitmdump `proc` as `env` says, or by `memproxy wrap`. Its stdout; a failure shows the proxy's log."""
    if wrap:
        argv = [str(MEMPROXY), "wrap", "--port", str(proc.port), "--confdir", str(proc.confdir), *argv]
    project.mkdir(parents=True, exist_ok=True)
    env = env | {"PWD": str(project)}
    done = subprocess.run(argv, cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{proc.log_text()}"
    return done.stdout
