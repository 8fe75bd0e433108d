"""`memproxy memories migrate`: memories kept in the per-tool scopes of earlier versions, moved into project scopes.

Earlier versions named a coding tool's scope after the tool and the last part of its working directory
(`claude-code:{cwd|basename}`, `codex:…`, `gemini-cli:…`, and `jetbrains:{project|basename}` for a project
port), and gave Qwen Code and opencode one scope each for every project. Now a project's memories live in
`project:<name>` (see memproxy.repos), shared by the tools. For each project in the project registry, the plan
renders its per-tool scopes as those templates did, `scope_name("<tool>:<basename of its root>")`, and moves
their memories into its scope.

What cannot be moved automatically is reported, with the commands that move it by hand:
- a per-tool scope that two registered roots with one directory name shared: it holds both projects' memories;
- `qwen-code` and `opencode`: every project's memories, mixed;
- with the local store, which can list its scopes, a per-tool scope whose directory the registry does not hold
  yet (no tool has been used in it through the proxy since).
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from .common import console

if TYPE_CHECKING:
    from ..memory import Backend, MemoryStore
    from ..repos import ProjectRecord

LEGACY_TOOLS = ("claude-code", "codex", "gemini-cli", "jetbrains")  # scopes `<tool>:<basename>`
SHARED_SCOPES = {"qwen-code": "Qwen Code", "opencode": "opencode"}  # scope -> the tool, as the registry names it


@dataclass(frozen=True, slots=True)
class Move:
    """All memories of `source` go to `target`."""

    source: str
    target: str
    count: int


@dataclass(frozen=True, slots=True)
class Mixed:
    """A scope holding several projects' memories: `projects` are those it may hold memories of."""

    scope: str
    count: int
    projects: tuple[ProjectRecord, ...]
    tool: str | None = None  # set for a one-per-tool scope (qwen-code, opencode); None: a shared directory name


@dataclass(frozen=True, slots=True)
class Unseen:
    """A per-tool scope of a directory with no project in the registry yet."""

    scope: str
    count: int
    directory: str


@dataclass(frozen=True, slots=True)
class Plan:
    moves: tuple[Move, ...]
    mixed: tuple[Mixed, ...]
    unseen: tuple[Unseen, ...]

    @property
    def total(self) -> int:
        """The memories the moves carry."""
        return sum(m.count for m in self.moves)


def legacy_scopes(records: Sequence[ProjectRecord]) -> dict[str, tuple[ProjectRecord, ...]]:
    """Each per-tool scope that earlier versions gave the registered projects, and the projects it was given to
    (more than one when their roots share a directory name)."""
    from ..rules import FILTERS, scope_name

    basename = FILTERS["basename"]  # the templates' filter, exactly
    found: dict[str, tuple[ProjectRecord, ...]] = {}
    for record in records:
        if not (directory := basename(record.root.strip())):  # a file system's root: the template gave no scope
            continue
        for tool in LEGACY_TOOLS:
            scope = scope_name(f"{tool}:{directory}")
            found[scope] = (*found.get(scope, ()), record)
    return found


async def count(store: MemoryStore, scope: str) -> int:
    """How many memories `scope` holds (on Supermemory: listed, a page at a time)."""
    from ..memory.local import LocalStore

    if isinstance(store, LocalStore):
        return await store.count(scope)
    n = 0
    async for _ in store.every([scope]):
        n += 1
    return n


async def make_plan(store: MemoryStore, records: Sequence[ProjectRecord]) -> Plan:
    """What the migration would do with `store`'s memories, for the projects in `records`. Reads only."""
    from ..memory.local import LocalStore
    from ..rules import SCOPE_HASH_MARK, project_scope

    candidates = legacy_scopes(records)
    moves, mixed, unseen = [], [], []
    for scope, given in sorted(candidates.items()):
        if not (n := await count(store, scope)):
            continue
        owners = tuple(dict.fromkeys(map(functools.partial(_now, records), given)))
        if len(owners) == 1:
            moves.append(Move(scope, project_scope(owners[0].name), n))
        else:
            mixed.append(Mixed(scope, n, owners))
    for scope, tool in SHARED_SCOPES.items():
        if n := await count(store, scope):
            mixed.append(Mixed(scope, n, tuple(r for r in records if tool in r.tools) or tuple(records), tool))
    if isinstance(store, LocalStore):
        names = {r.name for r in records}
        for scope in await store.scopes():
            tool, colon, directory = scope.partition(":")
            # A registered name after the tool is a per-tool project scope (the rules' `project_memory: per_tool`).
            if colon and tool in LEGACY_TOOLS and scope not in candidates and directory not in names:
                unseen.append(Unseen(scope, await store.count(scope), directory.split(SCOPE_HASH_MARK)[0]))
    return Plan(tuple(moves), tuple(mixed), tuple(unseen))


def _now(records: Sequence[ProjectRecord], record: ProjectRecord) -> ProjectRecord:
    """The project `record`'s root belongs to now: a git worktree's repository, where the registry holds it (a
    worktree was a project of its own before); else `record`."""
    from ..repos import project_root

    root = project_root(record.root)
    return next((r for r in records if r.root == root), record) if root and root != record.root else record


async def carry_out(store: MemoryStore, plan: Plan, advance: Callable[[int], None]) -> int:
    """Make the plan's moves; how many memories were moved (duplicates of the target's included)."""
    moved = 0
    for move in plan.moves:
        memories = [m async for m in store.every([move.source])]  # all first: a move changes the listing
        for memory in memories:
            moved += await store.move(memory, move.target)
            advance(1)
    return moved


def store_args(backend: Backend) -> list[str]:
    """The options that name `backend`'s store, for a command printed for the user to run."""
    if backend.name == "supermemory":
        return ["--backend", "supermemory"]
    return ["--db", backend.path] if backend.path else []


def move_command(source: str, target: str, backend: Backend) -> str:
    """The `memproxy memories move` command that moves chosen memories of `source` to `target`."""
    args = ["memproxy", "memories", "move", "--from", source, "--to", target, *store_args(backend)]
    return shlex.join(args) + " --id ID [--id ID ...]"


def print_moves(plan: Plan, backend: Backend) -> None:
    """The plan's moves, as a table."""
    if plan.moves:
        table = Table("from", "to", "memories", title=f"per-tool scopes to move into project scopes ({backend.name} store)")
        for move in plan.moves:
            table.add_row(escape(move.source), escape(move.target), str(move.count))
        console.print(table)


def print_by_hand(plan: Plan, backend: Backend) -> None:
    """What is left to do by hand: mixed scopes, and scopes of directories with no project yet."""
    from ..rules import project_scope

    listing = shlex.join(["memproxy", "memories", "list", "--limit", "100", *store_args(backend), "--scope"])
    for mixed in plan.mixed:
        console.print()
        if mixed.tool is None:
            console.print(escape(
                f"{mixed.scope} holds {mixed.count} memories of {len(mixed.projects)} projects whose directories share"
                " a name; they are mixed and cannot be split automatically, so they were not moved. The projects:"))
        else:  # the projects where the registry saw the tool, else all of them
            console.print(escape(
                f"{mixed.scope} holds {mixed.count} memories of every project used with {mixed.tool}; they are mixed"
                " and cannot be split automatically, so they were not moved. Projects whose memories it may hold:"))
        targets = [project_scope(record.name) for record in mixed.projects]
        for record, target in zip(mixed.projects, targets, strict=True):
            console.print(escape(f"  {record.root}  ->  {target}"))
        if not targets:
            console.print("  none seen yet")
        console.print(escape(f"See them with `{listing} {shlex.quote(mixed.scope)}`, then move each project's with:"))
        for target in targets or [project_scope("NAME")]:
            console.print(escape(f"  {move_command(mixed.scope, target, backend)}"))
    for unseen in plan.unseen:
        console.print()
        console.print(escape(
            f"no project named {unseen.directory} seen yet: use any tool in it once through the proxy, then run migrate"
            f" again ({unseen.scope} holds {unseen.count} memories; if {unseen.directory} was a git worktree, move them"
            " into its repository's scope with `memproxy memories move`)"))
