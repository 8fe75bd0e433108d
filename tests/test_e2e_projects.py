"""Per-project ports end to end: one listener per registered project, each project its own scope."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from conftest import free_port, routing_status
from e2e_helpers import memories, seed, wait_memories, wait_until
from memproxy.ports import PortRegistry

pytestmark = pytest.mark.e2e

JETBRAINS = {"user-agent": "OpenAIClientImpl/Java unknown", "authorization": "Bearer sk-jb"}


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def ask(port: int, text: str) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=JETBRAINS, timeout=30)
    assert r.status_code == 200


def test_each_project_port_is_its_own_scope(mitmdump, upstream, tmp_path: Path):
    db, low = tmp_path / "memories.db", free_port()
    registry = PortRegistry(tmp_path / "ports.json", (low, low + 40))
    alpha = registry.get_or_allocate_port(tmp_path / "work" / "alpha")
    beta = registry.get_or_allocate_port(tmp_path / "work" / "beta")
    seed(db, "project:alpha", "User: alpha is a Django project\nAssistant: ok")
    proc = mitmdump(
        mode="reverse",
        upstream=upstream,
        options={
            "memory_db": str(db),
            "memory_projects": str(tmp_path / "ports.json"),
            "memory_project_mode": f"reverse:{upstream.url}",
        },
    )
    assert wait_until(lambda: listening(alpha) and listening(beta)), proc.log_text()

    ask(alpha, "Which web framework does this project use?")
    ask(beta, "Which web framework does this project use?")
    to_alpha, to_beta = (json.dumps(r.json) for r in upstream.requests)
    assert "Django" in to_alpha and "Django" not in to_beta
    assert len(wait_memories(db, "project:beta")) == 1
    assert len(wait_memories(db, "project:alpha", 2)) == 2
    assert "Django" not in json.dumps(memories(db, "project:beta"))
    info = httpx.get(f"http://127.0.0.1:{alpha}/memory-routing/info", headers={**JETBRAINS, "host": "memproxy"}).json()
    assert (info["user_id"], info["project"], info["tool"]) == ("project:alpha", str(tmp_path / "work" / "alpha"), "JetBrains")
    # Another client given the port's base URL (a VS Code extension) shares the project's memory.
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Which web framework does this project use?"}]}
    r = httpx.post(f"http://127.0.0.1:{alpha}/v1/chat/completions", json=body, headers={"user-agent": "Continue/1.2"},
                   timeout=30)
    assert r.status_code == 200 and "Django" in json.dumps(upstream.requests[-1].json)

    # Registering a project while running opens its listener; removing it closes it. No restart.
    gamma = registry.get_or_allocate_port(tmp_path / "work" / "gamma")
    assert wait_until(lambda: listening(gamma)), proc.log_text()
    ask(gamma, "First question in gamma")
    assert wait_memories(db, "project:gamma")
    registry.remove(tmp_path / "work" / "gamma")
    assert wait_until(lambda: not listening(gamma)), proc.log_text()
    assert listening(alpha) and listening(proc.port)


def test_status_endpoint(mitmdump, upstream, tmp_path: Path):
    low = free_port()
    registry = PortRegistry(tmp_path / "ports.json", (low, low + 40))
    port = registry.get_or_allocate_port(tmp_path / "work" / "delta")
    options = {
        "memory_db": str(tmp_path / "m.db"),
        "memory_projects": str(tmp_path / "ports.json"),
        "memory_project_mode": f"reverse:{upstream.url}",
    }
    proc = mitmdump(mode="reverse", upstream=upstream, options=options)
    assert wait_until(lambda: listening(port))
    ask(port, "hello")
    status = routing_status(proc)
    assert status["backend"]["name"] == "local" and status["backend"]["recall"] == "closed"
    assert status["projects"] == [{"name": "delta", "path": str((tmp_path / "work" / "delta").resolve()), "port": port}]
    assert f"reverse:{upstream.url}@{port}" in status["listen"]["modes"]
    assert status["clients"] == {"jetbrains-project": 1}
    assert status["outbox"]["dead_letters"] == 0 and status["outbox"]["submitted"] == 1
