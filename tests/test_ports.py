"""The per-project port registry, against real files, real sockets and real concurrent processes."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import socket
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from memproxy.ports import PortRangeExhausted, PortRegistry, Project, port_in_use
from racing import race

WORKERS = 4
PROJECTS_PER_WORKER = 10


def free_range(size: int) -> tuple[int, int]:
    """A run of `size` ports that are free right now, below Linux's ephemeral range so they stay free."""
    for _ in range(100):
        lo = random.randrange(20000, 32000 - size)
        if not any(port_in_use(p) for p in range(lo, lo + size)):
            return lo, lo + size - 1
    raise RuntimeError(f"no run of {size} free ports")


def listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_range(10)


@pytest.fixture
def registry(tmp_path: Path, ports: tuple[int, int]) -> PortRegistry:
    return PortRegistry(tmp_path / "config" / "ports.json", ports)


@pytest.fixture
def listening(ports: tuple[int, int]) -> Iterator[socket.socket]:
    """The range's first port, held by another listener."""
    with listen(ports[0]) as sock:
        yield sock


def test_ports_are_stable_across_calls_and_instances(registry: PortRegistry, ports: tuple[int, int]) -> None:
    lo, _ = ports
    a, b = registry.get_or_allocate_port("/srv/a"), registry.get_or_allocate_port("/srv/b")
    assert (a, b) == (lo, lo + 1)
    assert registry.get_or_allocate_port("/srv/a") == a
    again = PortRegistry(registry.path, ports)
    assert again.get_or_allocate_port("/srv/b") == b
    assert again.get_port("/srv/a") == a
    assert again.get_port("/srv/c") is None


def test_file_is_human_readable_json(registry: PortRegistry, ports: tuple[int, int]) -> None:
    port = registry.get_or_allocate_port("/srv/myrepo")
    text = registry.path.read_text()
    assert "\n  " in text  # indented
    data = json.loads(text)
    assert data["version"] == 1
    assert data["range"] == list(ports)
    entry = data["projects"]["/srv/myrepo"]
    assert entry["port"] == port and entry["name"] == "myrepo" and isinstance(entry["added_at"], float)


def test_path_forms_of_one_project_share_its_port(
    registry: PortRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "work" / "repo"
    real.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.chdir(tmp_path / "work")
    port = registry.get_or_allocate_port(real)
    for form in (str(real), f"{real}/", "repo", "repo/", "./repo/../repo", link, f"{link}/"):
        assert registry.get_or_allocate_port(form) == port, form
    (project,) = registry.projects()
    assert project.path == str(real.resolve())
    assert project.name == "repo"


def test_remove_frees_the_port_for_reuse(registry: PortRegistry, ports: tuple[int, int]) -> None:
    lo, _ = ports
    registry.get_or_allocate_port("/srv/a")
    registry.get_or_allocate_port("/srv/b")
    assert registry.remove("/srv/a/") is True
    assert registry.remove("/srv/a") is False
    assert registry.get_port("/srv/a") is None
    assert registry.get_or_allocate_port("/srv/c") == lo
    assert [p.path for p in PortRegistry(registry.path, ports).projects()] == ["/srv/c", "/srv/b"]


def test_remove_without_a_file(registry: PortRegistry) -> None:
    assert registry.remove("/srv/a") is False


def test_ports_in_use_are_skipped(registry: PortRegistry, ports: tuple[int, int], listening: socket.socket) -> None:
    lo, _ = ports
    assert registry.get_or_allocate_port("/srv/a") == lo + 1


def test_a_bound_socket_that_does_not_listen_counts_as_in_use(registry: PortRegistry, ports: tuple[int, int]) -> None:
    lo, _ = ports
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", lo))
        assert registry.get_or_allocate_port("/srv/a") == lo + 1


def test_a_registered_project_keeps_its_port_while_it_is_in_use(registry: PortRegistry, ports: tuple[int, int]) -> None:
    lo, _ = ports
    assert registry.get_or_allocate_port("/srv/a") == lo
    with listen(lo):  # e.g. our own listener for it
        assert PortRegistry(registry.path, ports).get_or_allocate_port("/srv/a") == lo


def test_exhausted_range_names_the_range_and_the_registry(registry: PortRegistry) -> None:
    lo, _ = free_range(2)
    small = PortRegistry(registry.path, (lo, lo + 1))
    small.get_or_allocate_port("/srv/a")
    with listen(lo + 1):
        with pytest.raises(PortRangeExhausted) as err:
            small.get_or_allocate_port("/srv/b")
    assert str(err.value) == (
        f"no free port in {lo}-{lo + 1} for /srv/b (registry: {registry.path}); remove a project or widen the range"
    )
    assert small.get_port("/srv/b") is None
    assert small.get_or_allocate_port("/srv/b") == lo + 1  # free again


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "\xff\xfe",
        "[]",
        '{"version": 2, "projects": {}}',
        '{"version": 1, "projects": []}',
        '{"version": 1, "projects": {"/srv/a": 18100}}',
        '{"version": 1, "projects": {"/srv/a": {"port": "18100", "name": "a", "added_at": 1.0}}}',
        '{"version": 1, "projects": {"/srv/a": {"port": 70000, "name": "a", "added_at": 1.0}}}',
        '{"version": 1, "projects": {"/srv/a": {"port": 18100, "added_at": 1.0}}}',
    ],
)
def test_a_corrupt_file_is_backed_up_and_rebuilt(
    registry: PortRegistry, ports: tuple[int, int], content: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry.path.parent.mkdir(parents=True)
    registry.path.write_bytes(content.encode("latin-1"))
    registry.path.chmod(0o600)  # as memproxy writes it: a looser file would add a warning of its own
    with caplog.at_level(logging.WARNING, logger="memproxy.ports"):
        assert registry.projects() == []
        assert registry.get_or_allocate_port("/srv/a") == ports[0]
        assert registry.get_port("/srv/a") == ports[0]
    (backup,) = registry.path.parent.glob("ports.json.corrupt-*")
    assert backup.read_bytes() == content.encode("latin-1")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert str(backup) in caplog.records[0].getMessage()
    assert list(json.loads(registry.path.read_text())["projects"]) == ["/srv/a"]


def test_project_for_port(registry: PortRegistry) -> None:
    port = registry.get_or_allocate_port("/srv/myrepo")
    project = registry.project_for_port(port)
    assert isinstance(project, Project)
    assert (project.path, project.name, project.port) == ("/srv/myrepo", "myrepo", port)
    assert registry.project_for_port(port + 1) is None


def test_version_changes_with_every_write_and_only_then(registry: PortRegistry) -> None:
    assert registry.version() is None
    registry.get_or_allocate_port("/srv/a")
    seen = [registry.version()]
    registry.get_or_allocate_port("/srv/a")  # already registered: no write
    registry.get_port("/srv/a")
    registry.projects()
    assert registry.version() == seen[-1]
    registry.get_or_allocate_port("/srv/b")
    seen.append(registry.version())
    registry.remove("/srv/b")
    seen.append(registry.version())
    assert None not in seen and len(set(seen)) == len(seen)


def test_version_changes_on_a_rewrite_with_the_same_size_and_mtime(registry: PortRegistry) -> None:
    registry.get_or_allocate_port("/srv/a")
    before, stat = registry.version(), registry.path.stat()
    registry._write({p.path: p for p in registry.projects()})  # the same bytes again ...
    os.utime(registry.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... within one tick of a coarse clock
    assert registry.path.stat().st_size == stat.st_size
    assert registry.version() != before


def test_no_stray_files_are_left(registry: PortRegistry) -> None:
    registry.get_or_allocate_port("/srv/a")
    registry.remove("/srv/a")
    assert {p.name for p in registry.path.parent.iterdir()} - {"ports.json.lock"} == {"ports.json"}


@pytest.mark.skipif(sys.platform != "linux", reason="XDG config dir")
def test_default_file_is_in_the_user_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    registry = PortRegistry()
    registry.get_or_allocate_port("/srv/a")
    assert registry.path == tmp_path / "xdg" / "memproxy" / "ports.json"
    assert registry.path.is_file()


def allocate(
    path: str, port_range: tuple[int, int], projects: list[str], start: multiprocessing.synchronize.Barrier, out
) -> None:
    """A worker process: register `projects` once every worker is ready, report what it got."""
    try:
        registry = PortRegistry(path, port_range)
        start.wait(timeout=60)
        out.put({p: registry.get_or_allocate_port(p) for p in projects})
    except BaseException:
        out.put(traceback.format_exc())


def test_concurrent_processes_get_distinct_stable_ports(tmp_path: Path) -> None:
    port_range = free_range(60)
    registry = PortRegistry(tmp_path / "ports.json", port_range)
    own = [[f"/srv/w{w}/p{i}" for i in range(PROJECTS_PER_WORKER)] for w in range(WORKERS)]
    shared = own[0] + own[1]  # workers 0 and 1 race on the same 20 projects, in opposite orders
    plans = [shared, shared[::-1], own[2], own[3]]
    results = race(allocate, plans, str(registry.path), port_range)

    seen: dict[str, int] = {}
    for result in results:
        for project, port in result.items():
            assert seen.setdefault(project, port) == port, f"{project} got {port} and {seen[project]}"
    expected = {p for plan in own for p in plan}
    assert set(seen) == expected
    assert len(set(seen.values())) == WORKERS * PROJECTS_PER_WORKER
    assert all(port_range[0] <= port <= port_range[1] for port in seen.values())
    registered = {p.path: p.port for p in PortRegistry(registry.path, port_range).projects()}
    assert registered == seen
