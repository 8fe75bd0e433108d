"""Per-project ports, for IDEs that cannot tell projects apart (PyCharm sends one user agent for all).

Each registered project path gets a stable port from a configured range, kept in one human-readable
JSON file under the user's config dir, private (0600, see private.py). Changes hold a file lock across
the whole read-modify-write and replace the file atomically, so several processes can register projects
at once; reads need no lock. All of it is blocking file I/O: call it from a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from . import config, private

logger = logging.getLogger(__name__)

DEFAULT_RANGE = (18100, 18199)
FORMAT_VERSION = 1
LOCK_TIMEOUT = 30.0  # seconds; a registry change takes milliseconds, so waiting longer means something is stuck


class PortRangeExhausted(Exception):
    """Every port in the range is registered or in use."""


@dataclass(frozen=True)
class Project:
    """A registered project and its port."""

    path: str
    name: str
    port: int
    added_at: float


def normalise(project_path: str | os.PathLike[str]) -> str:
    """The registry's key for a project: absolute, symlinks resolved, no trailing slash."""
    return str(Path(project_path).resolve())


def port_in_use(port: int) -> bool:
    """Whether something on this machine already holds `port` on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class PortRegistry:
    """The project -> port registry in one JSON file."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        port_range: tuple[int, int] = DEFAULT_RANGE,
    ) -> None:
        lo, hi = port_range
        if not 0 < lo <= hi <= 65535:
            raise ValueError(f"invalid port range {lo}-{hi}")
        self.path = Path(path) if path is not None else config.registry_path()
        self.port_range = (lo, hi)
        self._lock = FileLock(f"{self.path}.lock", timeout=LOCK_TIMEOUT, mode=private.FILE_MODE)

    def get_or_allocate_port(self, project_path: str | os.PathLike[str]) -> int:
        """The project's port, registering it on the lowest free port in the range if it is new.

        A registered project always gets its own port back, even while that port is in use
        (most likely by our own listener).
        """
        key = normalise(project_path)
        if project := self._load().get(key):
            return project.port
        with self._locked() as projects:
            if project := projects.get(key):  # another process registered it meanwhile
                return project.port
            port = self._free_port(projects, key)
            projects[key] = Project(key, Path(key).name or key, port, time.time())
            self._write(projects)
            return port

    def get_port(self, project_path: str | os.PathLike[str]) -> int | None:
        """The project's port, or None if it is not registered."""
        project = self._load().get(normalise(project_path))
        return project.port if project else None

    def remove(self, project_path: str | os.PathLike[str]) -> bool:
        """Unregister a project, freeing its port; False if it was not registered."""
        with self._locked() as projects:
            if projects.pop(normalise(project_path), None) is None:
                return False
            self._write(projects)
            return True

    def projects(self) -> list[Project]:
        """All registered projects, by port."""
        return sorted(self._load().values(), key=lambda p: p.port)

    def project_for_port(self, port: int) -> Project | None:
        """The project registered on `port`, if any."""
        return next((p for p in self._load().values() if p.port == port), None)

    def version(self) -> tuple[int, int, int] | None:
        """A cheap token that changes whenever the file is rewritten; None if there is no file.

        The inode is part of it: every write replaces the file, so consecutive writes differ even
        when they fall within one tick of the filesystem's clock and leave mtime and size equal.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _free_port(self, projects: dict[str, Project], key: str) -> int:
        taken = {p.port for p in projects.values()}
        lo, hi = self.port_range
        for port in range(lo, hi + 1):
            if port not in taken and not port_in_use(port):
                return port
        raise PortRangeExhausted(
            f"no free port in {lo}-{hi} for {key} (registry: {self.path}); remove a project or widen the range"
        )

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Project]]:
        """The projects, read under the lock, which is held until the block ends (for a write)."""
        private.private_path(self.path)  # its directories 0700; a path memproxy must not trust raises UnsafePath
        private.private_path(self._lock.lock_file, create=True)
        with self._lock:
            projects = self._parse()
            if projects is None:
                projects = self._rebuild()
            yield projects

    def _load(self) -> dict[str, Project]:
        """The projects, read without the lock (writes are atomic); a corrupt file is rebuilt."""
        if (projects := self._parse()) is not None:
            return projects
        with self._locked() as projects:
            return projects

    def _parse(self) -> dict[str, Project] | None:
        """The projects in the file ({} if there is none), or None if it is corrupt."""
        try:
            path = private.private_path(self.path, make_dirs=False)  # UnsafePath goes to the caller
            data = json.loads(path.read_bytes())
            if data.get("version") != FORMAT_VERSION or not isinstance(data.get("projects"), dict):
                return None
            return {path: _project(path, entry) for path, entry in data["projects"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, AttributeError, KeyError):
            return None

    def _rebuild(self) -> dict[str, Project]:
        """Move a corrupt file aside and start an empty registry (the caller holds the lock)."""
        backup = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(self.path, backup)
        logger.warning("port registry %s was corrupt: moved it to %s and started an empty one", self.path, backup)
        self._write({})
        return {}

    def _write(self, projects: dict[str, Project]) -> None:
        """Replace the file atomically (the caller holds the lock)."""
        data = {
            "version": FORMAT_VERSION,
            "range": list(self.port_range),
            "projects": {
                p.path: {k: v for k, v in asdict(p).items() if k != "path"}
                for p in sorted(projects.values(), key=lambda p: p.port)
            },
        }
        path = private.check_path(self.path)  # a symlink is written through
        private.replace_private(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def _project(path: str, entry: Any) -> Project:
    """One entry of the file; raises TypeError on a wrong shape."""
    port, name, added_at = entry["port"], entry["name"], entry["added_at"]
    if (
        type(port) is not int
        or not 0 < port <= 65535
        or not isinstance(name, str)
        or type(added_at) not in (int, float)
    ):
        raise TypeError(f"bad registry entry for {path}: {entry!r}")
    return Project(path, name, port, float(added_at))


class ProjectListeners:
    """One mitmproxy listener per registered project, kept in step with the registry (option `mode`).

    `mode` is the listener kind: a reverse-proxy spec such as "reverse:https://api.openai.com"
    (for IDEs with a base-URL setting) or "regular". The registry is polled, so projects added
    or removed by the CLI get or lose their listener without a restart.
    """

    def __init__(self, registry: PortRegistry, mode: str) -> None:
        self.registry = registry
        self.mode = mode
        self._version: object = object()  # equal to no real version: the first sync always reads
        self._by_port: dict[int, Project] = {}
        self._ours: list[str] = []

    def use(self, registry: PortRegistry, mode: str) -> None:
        """Follow another registry, or open another kind of listener: the next `sync` replaces the listeners."""
        self.registry, self.mode = registry, mode
        self._version = object()

    def project_for_port(self, port: int) -> Project | None:
        """The project whose listener has this port (hot path: a dict lookup)."""
        return self._by_port.get(port)

    def projects(self) -> list[Project]:
        """The projects that have a listener now."""
        return list(self._by_port.values())

    async def sync(self) -> None:
        """Re-read the registry if it changed, and add or remove listeners to match."""
        from mitmproxy import ctx

        version = await asyncio.to_thread(self.registry.version)
        if version == self._version:
            return
        projects = await asyncio.to_thread(self.registry.projects)
        self._version, self._by_port = version, {p.port: p for p in projects}
        ours = [f"{self.mode}@{p.port}" for p in projects]
        current = list(ctx.options.mode)
        desired = [m for m in current if m not in self._ours] + ours
        self._ours = ours
        if desired != current:
            ctx.options.update(mode=desired)
            logger.info("memproxy: project listeners: %s", ", ".join(f"{p.name}@{p.port}" for p in projects) or "none")
