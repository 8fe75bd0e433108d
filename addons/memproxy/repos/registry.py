"""The project registry: each project root's name, and what the proxy has seen of the project.

One human-readable JSON file (`projects.json` in the user's data dir), private (0600, see private.py):
`{"version": 1, "projects": {root: {"name", "tools", "first_use", "last_use"}}}`, so that `memproxy projects`
can list every project seen.

Names are readable, stable and never shared:
- a root's name is its directory's name in scope characters (letters, digits, `_.+-`; any other run becomes
  '-'), e.g. `api`, `my-repo`; the first root to take a name keeps it;
- a later root whose name is taken gets it with '@' and HASH_LEN hex digits of its SHA-256 (more if those are
  taken too), e.g. `api@3f2a1b`. Plain names never hold '@', so a plain name never equals such a one;
- a name in the file never changes. The caller makes it a scope, e.g. `project:<name>`, which the rules'
  `scope_name` keeps as it is.

A name is given under a file lock held across the whole read-modify-write, and the file is replaced
atomically, so processes that name projects at once agree; reads need no lock. This is blocking file I/O:
`name` runs it in a thread. Uses (`note_use`, from the request path) are kept in memory and merged into the
file at most every `interval` seconds, in a thread, and at `aclose`.

A corrupt file is moved aside (`projects.json.corrupt-<time>`, and the log says where) and a new one is
started with the names this process knows. Until that copy is put back, new roots get '@' names only: a
plain name might have been another root's in the lost file, and two roots with one name share memories.
A file from a newer memproxy is left as it is: RegistryError.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from .. import config, private
from ..logs import Once, brief
from .roots import basename

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK_TIMEOUT = 30.0  # seconds; a change takes milliseconds, so waiting longer means something is stuck
INTERVAL = 5.0  # seconds between two writes of uses, at most
RESOLUTION = 60.0  # seconds: a use this soon after the last one recorded, by a tool recorded, is not written
NAME_MAX = 64  # characters of a name before its hash
HASH_MARK = "@"
HASH_LEN = 6  # hex digits: 24 bits, so roots sharing a directory name practically never need more
MAX_PROJECTS = 10_000  # projects in the file: working directories come from requests
MAX_TOOLS = 64  # tools recorded per project
_NAME_INVALID = re.compile(r"[^\w.+-]+")


class RegistryError(Exception):
    """The registry cannot name a project; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    """A project the proxy has seen: its root, its name, the tools used in it, when (Unix time)."""

    root: str
    name: str
    tools: frozenset[str] = frozenset()
    first_use: float | None = None
    last_use: float | None = None

    def used(self, use: _Use) -> ProjectRecord:
        """This record with `use` added."""
        room = max(0, MAX_TOOLS - len(self.tools))
        tools = self.tools | frozenset(sorted(use.tools - self.tools)[:room])
        return replace(self, tools=tools, first_use=_earliest(self.first_use, use.first),
                       last_use=_latest(self.last_use, use.last))


@dataclass(slots=True)
class _Use:
    """Uses of one project not yet written."""

    tools: set[str] = field(default_factory=set)
    first: float | None = None
    last: float | None = None

    def add(self, other: _Use) -> None:
        self.tools |= other.tools
        self.first, self.last = _earliest(self.first, other.first), _latest(self.last, other.last)


@dataclass(slots=True)
class _File:
    """The file's content, as read under the lock and written back."""

    projects: dict[str, ProjectRecord]
    recovered_from: list[str] = field(default_factory=list)  # copies of corrupt files: plain names may be taken
    changed: bool = False
    lost: bool = False  # there was no file, or a corrupt one: what this process knows is put back


def plain_name(root: str) -> str:
    """A root's name before any hash: its last part in scope characters, or `root` for a file system's root."""
    name = _NAME_INVALID.sub("-", unicodedata.normalize("NFC", basename(root))).strip("-")[:NAME_MAX]
    return name or "root"


def assign_name(root: str, taken: Collection[str], *, plain: bool = True) -> str:
    """A name for `root` that is not in `taken`: its plain name if free (and `plain`), else with a hash."""
    name = plain_name(root)
    if plain and name not in taken:
        return name
    digest = hashlib.sha256(root.encode("utf-8", "surrogatepass")).hexdigest()
    for length in range(HASH_LEN, len(digest) + 1, 2):
        if (hashed := f"{name}{HASH_MARK}{digest[:length]}") not in taken:
            return hashed
    raise RegistryError(f"no free name for {root}")  # SHA-256 collided


class ProjectRegistry:
    """Project roots -> names, and their uses, in one JSON file."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        interval: float = INTERVAL,
        resolution: float = RESOLUTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path) if path is not None else config.projects_path()
        self.interval, self.resolution = interval, resolution
        self._clock = clock
        self._lock = FileLock(f"{self.path}.lock", timeout=LOCK_TIMEOUT, mode=private.FILE_MODE)
        self._mutex = threading.Lock()  # the fields below: the loop notes uses, threads read and write the file
        self._known: dict[str, ProjectRecord] = {}  # as last read or written
        self._pending: dict[str, _Use] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._once = Once(logger)

    # on the event loop

    def cached_name(self, root: str) -> str | None:
        """The name of `root` if this process knows it. Never blocks."""
        record = self._known.get(root)
        return record.name if record else None

    async def name(self, root: str) -> str:
        """The name of `root`, given one if it is new (in a thread). Raises RegistryError, OSError."""
        return self.cached_name(root) or await asyncio.to_thread(self.register, root)

    def note_use(self, root: str, tool: str) -> None:
        """Record that `tool` was used in the project at `root`, now; written within `interval`. Cheap."""
        now = self._clock()
        with self._mutex:
            use = self._pending.get(root)
            if use is None:
                known = self._known.get(root)
                if known and tool in known.tools and known.last_use is not None and now - known.last_use < self.resolution:
                    return
                use = self._pending[root] = _Use(first=now)
            use.tools.add(tool)
            use.last = now
        self._schedule()

    async def aclose(self) -> None:
        """Write the uses not yet written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        await self._flush_logged(retry=False)

    # blocking: in a thread, or in the CLI

    def register(self, root: str) -> str:
        """The name of `root`, given one and written at once if it is new. Raises RegistryError, OSError."""
        if name := self.cached_name(root):
            return name
        parsed = self._parse()
        if parsed is not None and (record := parsed.projects.get(root)):
            self._learn(parsed)
            return record.name
        with self._locked() as file:
            if (record := file.projects.get(root)) is None:
                record = self._add(file, root)
            if file.changed:
                self._write(file)
            self._learn(file)
            return record.name

    def name_for(self, root: str) -> str:
        """The name `root` has, or would be given now, without writing anything (for `memproxy rules explain`).
        Raises RegistryError, OSError."""
        if name := self.cached_name(root):
            return name
        file = self._parse()
        if file is None:  # corrupt: the proxy would start a new file and hash new names
            return assign_name(root, (), plain=False)
        record = file.projects.get(root)
        return record.name if record else assign_name(root, {r.name for r in file.projects.values()},
                                                       plain=not file.recovered_from)

    def flush(self) -> None:
        """Merge the uses not yet written into the file (naming new projects). Raises RegistryError, OSError (the uses are kept)."""
        with self._mutex:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with self._locked() as file:
                for root, use in pending.items():
                    try:
                        record = file.projects.get(root) or self._add(file, root)
                    except RegistryError as e:  # the file is full: this use is not recorded
                        self._once("full", "memproxy: %s", e)
                        continue
                    file.projects[root] = record.used(use)
                self._write(file)
        except BaseException:
            with self._mutex:  # kept for the next try
                for root, use in pending.items():
                    self._pending.setdefault(root, _Use()).add(use)
            raise
        self._learn(file)

    def projects(self) -> list[ProjectRecord]:
        """Every project in the file, with the uses not yet written, by name."""
        file = self._parse()
        if file is None:
            with self._locked() as file:
                if file.changed:
                    self._write(file)
        with self._mutex:
            pending = dict(self._pending)
        records = dict(file.projects)
        for root, use in pending.items():
            if root in records:
                records[root] = records[root].used(use)
        return sorted(records.values(), key=lambda r: r.name)

    # internals

    def _add(self, file: _File, root: str) -> ProjectRecord:
        """Name a new project in `file` (the caller holds the lock)."""
        if len(file.projects) >= MAX_PROJECTS:
            raise RegistryError(f"{self.path} holds {MAX_PROJECTS} projects; {root} gets no name")
        taken = {r.name for r in file.projects.values()}
        record = ProjectRecord(root, assign_name(root, taken, plain=not file.recovered_from))
        file.projects[root] = record
        file.changed = True
        return record

    def _learn(self, file: _File) -> None:
        with self._mutex:
            self._known = dict(file.projects)

    def _schedule(self) -> None:
        """Flush within `interval`, in a thread; without a running loop, the caller flushes."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.interval, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush_logged())
        else:  # one is writing: the next one goes later
            self._schedule()

    async def _flush_logged(self, retry: bool = True) -> None:
        try:
            await asyncio.to_thread(self.flush)
        except (RegistryError, OSError) as e:
            self._once(("flush", type(e)), "memproxy: project uses not written to %s: %s", self.path, brief(e))
            if retry:
                self._schedule()

    @contextmanager
    def _locked(self) -> Iterator[_File]:
        """The file's content, read under the lock, which is held until the block ends (for a write).

        If the file was lost (deleted, or corrupt and moved aside), the projects this process knows are put
        back, unless another root has taken a name meanwhile: the names in use stay theirs.
        """
        private.private_path(self.path)  # its directories 0700; a path memproxy must not trust raises UnsafePath
        private.private_path(self._lock.lock_file, create=True)
        with self._lock:
            file = self._parse()
            if file is None:
                file = self._recover()
            if file.lost:
                self._put_back(file)
            yield file

    def _put_back(self, file: _File) -> None:
        with self._mutex:
            known = list(self._known.values())
        taken = {r.name for r in file.projects.values()}
        for record in known:
            if record.root in file.projects:
                continue
            if record.name in taken:
                logger.warning("memproxy: project %s lost its name %s to another root in %s; it gets a new one",
                               record.root, record.name, self.path)
                continue
            file.projects[record.root] = record
            taken.add(record.name)
            file.changed = True

    def _parse(self) -> _File | None:
        """The file's content (empty if there is none), or None if it is corrupt."""
        try:
            path = private.private_path(self.path, make_dirs=False)  # UnsafePath goes to the caller
            data = json.loads(path.read_bytes())
            if isinstance(data, dict) and isinstance(v := data.get("version"), int) and v > FORMAT_VERSION:
                raise RegistryError(f"{self.path} was written by a newer memproxy (format {v}); upgrade memproxy")
            if data.get("version") != FORMAT_VERSION or not isinstance(data.get("projects"), dict):
                return None
            projects = {root: _record(root, entry) for root, entry in data["projects"].items()}
            recovered = data.get("recovered_from", [])
            if not isinstance(recovered, list) or not all(isinstance(p, str) for p in recovered):
                return None
        except FileNotFoundError:
            return _File({}, lost=True)
        except (ValueError, TypeError, AttributeError, KeyError):
            return None
        if len({r.name for r in projects.values()}) < len(projects):  # two roots sharing a name share memories
            return None
        return _File(projects, recovered)

    def _recover(self) -> _File:
        """Move a corrupt file aside and start an empty one that remembers it (the caller holds the lock)."""
        stem = f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        backup, n = self.path.with_name(stem), 1
        while backup.exists():
            backup, n = self.path.with_name(f"{stem}-{n}"), n + 1
        os.replace(self.path, backup)
        logger.warning(
            "memproxy: project registry %s was corrupt: moved it to %s and started a new one; new projects get"
            " hashed names until it is fixed and put back", self.path, backup,
        )
        return _File({}, [str(backup)], changed=True, lost=True)

    def _write(self, file: _File) -> None:
        """Replace the file atomically (the caller holds the lock)."""
        data: dict[str, Any] = {"version": FORMAT_VERSION}
        if file.recovered_from:
            data["recovered_from"] = file.recovered_from
        data["projects"] = {
            r.root: {"name": r.name, "tools": sorted(r.tools), "first_use": r.first_use, "last_use": r.last_use}
            for r in sorted(file.projects.values(), key=lambda r: r.name)
        }
        try:
            text = json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8")  # names as people read them
        except UnicodeEncodeError:  # a root with a lone surrogate (undecodable bytes in a file name)
            text = json.dumps(data, indent=2).encode("ascii")
        path = private.check_path(self.path)  # a symlink is written through
        private.replace_private(path, text + b"\n")
        file.changed = False


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _record(root: str, entry: Any) -> ProjectRecord:
    """One entry of the file; raises TypeError on a wrong shape."""
    name, tools, first, last = entry["name"], entry["tools"], entry["first_use"], entry["last_use"]
    if (
        not isinstance(name, str)
        or not name
        or not isinstance(tools, list)
        or not all(isinstance(t, str) for t in tools)
        or not all(t is None or type(t) in (int, float) for t in (first, last))
    ):
        raise TypeError(f"bad registry entry for {root}: {entry!r}")
    return ProjectRecord(root, name, frozenset(tools), first, last)
