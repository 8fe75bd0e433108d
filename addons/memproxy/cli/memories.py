"""`memproxy memories`: see and edit what is remembered, on the configured backend."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import inspect
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from .. import config
from .common import console, err_console, load_rules, project_names_option, rules_option, when

if TYPE_CHECKING:
    from ..memory import Backend, Memory, MemoryStore

T = TypeVar("T")

IMPORT_BATCH = 500  # memories a transaction when importing into the local store
EXPORT_PAGE = 500

scope_option = click.option("--scope", required=True, help="The memory scope, e.g. claude-code:myrepo.")


def store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--backend, --db and --rules, resolved to the chosen backend (passed as `backend`)."""

    @click.option("--backend", type=click.Choice(("auto", "local", "supermemory")), default=None,
                  help="The memory backend. Default: the rules file's memory.backend, else auto"
                  " (supermemory when SUPERMEMORY_API_KEY is set, else local).")
    @click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="The local store's file (option memory_db). Default: memories.db in the user's data dir.")
    @rules_option
    @functools.wraps(f)
    def wrapper(backend: str | None, db: Path | None, rules_path: Path | None, **kwargs: Any) -> Any:
        if "rules_path" in inspect.signature(f).parameters:  # the command reads the rules too
            kwargs["rules_path"] = rules_path
        return f(backend=_backend(backend, db, rules_path), **kwargs)

    return wrapper


def _backend(backend: str | None, db: Path | None, rules_path: Path | None) -> Backend:
    """Choose the backend as the addon does: the option, else the rules file's memory section, else auto."""
    from ..memory import configured_backend

    memory = load_rules(rules_path).memory
    try:
        return configured_backend(backend or "", str(db.expanduser()) if db else None, memory)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def with_store(backend: Backend, work: Callable[[MemoryStore], Awaitable[T]], *, read_only: bool = False) -> T:
    """Open the backend's store, run `work` on it, close it; a store failure is a clear error.

    `read_only` opens the store for reads only (the local store's file is then neither created, nor migrated, nor
    merged): for dry runs, which must leave the store as it was. A store that cannot be opened fails on its first
    read."""
    from ..memory import StoreError, open_store

    async def go() -> T:
        store = open_store(backend, read_only=read_only)
        try:
            if not read_only:
                await store.open()
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreError as e:
        raise click.ClickException(str(e)) from None


@click.group()
def memories() -> None:
    """See and edit what is remembered, on the configured backend."""


@memories.command("list")
@store_options
@scope_option
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
def memories_list(backend: Backend, scope: str, limit: int, offset: int) -> None:
    """List a scope's memories, newest first."""
    found = with_store(backend, lambda store: store.list(scope, limit, offset))
    _print_memories(found, f"{len(found)} memories in {scope}, newest first")


@memories.command("search")
@store_options
@scope_option
@click.argument("query")
@click.option("--limit", type=click.IntRange(1), default=5, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Minimum relevance.")
def memories_search(backend: Backend, scope: str, query: str, limit: int, threshold: float) -> None:
    """Search a scope's memories as recall does, best first."""
    found = with_store(backend, lambda store: store.search(scope, query, limit, threshold))
    _print_memories(found, f"{len(found)} memories in {scope} for {query!r}", scores=True)


def _print_memories(found: list[Memory], title: str, *, scores: bool = False) -> None:
    table = Table("id", *(["score"] if scores else []), "created", "client", "content", title=escape(title))
    for m in found:
        preview = m.content if len(m.content) <= 300 else m.content[:299] + "…"
        score = [f"{m.score:.2f}"] if scores else []
        table.add_row(escape(m.id), *score, when(m.created_at), escape(str(m.metadata.get("client", ""))), escape(preview))
    console.print(table)


@memories.command("add")
@store_options
@click.option("--scope", default=None, help="The memory scope, e.g. project:shop.")
@click.option("--user", "user", is_flag=True,
              help="Into the user scope instead: what applies in every project, recalled beside each project's memories.")
@click.argument("content")
def memories_add(backend: Backend, scope: str | None, user: bool, content: str) -> None:
    """Remember CONTENT in a scope, or with --user in the user scope (secrets in it are replaced by
    [secret: <kind>], as in captured turns)."""
    from ..scrub import scrub

    if (scope is None) == (not user):
        raise click.UsageError("give exactly one of --scope SCOPE and --user")
    if user:
        from ..rules import USER_SCOPE

        scope = USER_SCOPE
    assert scope is not None
    if not content.strip():
        raise click.BadParameter("the memory is empty", param_hint="CONTENT")
    scrubbed = scrub(content)
    memory_id = with_store(backend, lambda store: store.add(scope, scrubbed.text, metadata={"client": "memproxy-cli"}))
    _report_replaced(scrubbed.found)
    console.print(f"added memory {memory_id} to {escape(scope)}")


@memories.command("forget")
@store_options
@scope_option
@click.argument("memory_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting.")
def memories_forget(backend: Backend, scope: str, memory_id: str, yes: bool) -> None:
    """Delete the memory MEMORY_ID of a scope (asks first unless --yes)."""
    if not yes:
        click.confirm(f"Forget memory {memory_id} of {scope}?", abort=True)
    if not with_store(backend, lambda store: store.forget(scope, memory_id)):
        raise click.ClickException(f"no memory {memory_id} in scope {scope}")
    console.print(f"forgot memory {memory_id} of {escape(scope)}")


@memories.command("move")
@store_options
@click.option("--from", "source", required=True, help="The scope to move memories out of.")
@click.option("--to", "target", required=True, help="The scope to move them into, e.g. project:shop.")
@click.option("--id", "ids", multiple=True, help="Only this memory of --from (repeatable). Default: all of them.")
@click.option("--dry-run", is_flag=True, help="Show what would move; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before moving.")
def memories_move(backend: Backend, source: str, target: str, ids: tuple[str, ...], dry_run: bool, yes: bool) -> None:
    """Move memories from one scope to another, keeping their content and metadata (and, in the local store,
    their dates).

    For what `memproxy memories migrate` cannot sort: a scope holding several projects' memories. A memory that
    --to already holds (the same custom id) is deleted from --from instead.
    """
    if source == target:
        raise click.BadParameter("is the scope they are in already", param_hint="--to")

    async def chosen(store: MemoryStore) -> list[Memory]:
        found = [m async for m in store.every([source])]
        if not ids:
            return found
        by_id = {m.id: m for m in found}
        if missing := [i for i in dict.fromkeys(ids) if i not in by_id]:
            raise click.ClickException(f"no memory {', '.join(missing)} in scope {source}; nothing was moved")
        return [by_id[i] for i in dict.fromkeys(ids)]

    memories = with_store(backend, chosen, read_only=True)
    if not memories:
        console.print(f"no memories in {escape(source)}; nothing to move")
        return
    _print_memories(memories, f"{len(memories)} memories of {source} to move to {target}")
    if dry_run:
        console.print(f"would move {len(memories)} memories from {escape(source)} to {escape(target)};"
                      " nothing was changed (dry run)")
        return
    if not yes:
        click.confirm(f"Move {len(memories)} memories from {source} to {target}?", abort=True)

    async def move(store: MemoryStore) -> int:
        moved = 0
        with _progress(f"moving to {target}", len(memories)) as advance:
            for memory in memories:
                moved += await store.move(memory, target)
                advance(1)
        return moved

    moved = with_store(backend, move)
    console.print(f"moved {moved} memories from {escape(source)} to {escape(target)}")
    if moved < len(memories):
        err_console.print(f"{len(memories) - moved} memories were no longer in {escape(source)}")


@memories.command("migrate")
@store_options
@project_names_option
@click.option("--dry-run", is_flag=True, help="Print the plan (scope -> scope, counts); change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before moving.")
def memories_migrate(backend: Backend, project_names: Path | None, dry_run: bool, yes: bool,
                     rules_path: Path | None) -> None:
    """Move the memories that earlier versions kept per tool (claude-code:api, codex:api, gemini-cli:api,
    jetbrains:api) into their project's scope (project:api), for every project in the project registry.

    Prints the plan first. A per-tool scope that two projects with one directory name shared, and the
    one-per-tool scopes qwen-code and opencode, hold several projects' memories mixed: they are not moved, and
    the output says how to move them by hand (`memproxy memories move`). With the local store, per-tool scopes
    of directories no tool has used through the proxy since are reported; on Supermemory, which cannot list its
    scopes, only the scopes of the projects in the registry are looked at. Running it again does nothing new.

    Refused under rules that set `project_memory: per_tool`: their scopes are these per-tool scopes.
    """
    if load_rules(rules_path).project_memory == "per_tool":
        raise click.ClickException("the rules set project_memory: per_tool, so the per-tool scopes are in use:"
                                   " there is nothing to migrate")
    from ..private import UnsafePath
    from ..repos import ProjectRegistry, RegistryError
    from . import migrate

    try:
        records = ProjectRegistry(project_names).projects()
    except (RegistryError, UnsafePath, OSError) as e:
        raise click.ClickException(f"cannot read the project registry: {e}") from None

    if not records:
        err_console.print(f"memproxy: the project registry {escape(str(project_names or config.projects_path()))} holds"
                          " no projects yet: use your tools in them through the proxy once, then run migrate")
    plan = with_store(backend, lambda store: migrate.make_plan(store, records), read_only=True)
    migrate.print_moves(plan, backend)
    if not plan.moves:
        console.print("nothing to migrate: no per-tool scope of a registered project holds memories")
    elif dry_run:
        console.print(f"would move {plan.total} memories from {len(plan.moves)} scopes; nothing was changed (dry run)")
    else:
        if not yes:
            click.confirm(f"Move these {plan.total} memories?", abort=True)

        async def work(store: MemoryStore) -> int:
            with _progress("migrating", plan.total) as advance:
                return await migrate.carry_out(store, plan, advance)

        done = with_store(backend, work)
        console.print(f"moved {done} memories from {len(plan.moves)} scopes into their projects' scopes")
    migrate.print_by_hand(plan, backend)


@memories.command("export")
@store_options
@scope_option
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="The JSONL file to write (0600). Default: standard output.")
def memories_export(backend: Backend, scope: str, path: str) -> None:
    """Write a scope's memories as JSONL, in the order stored: one {scope, content, metadata, id, created_at} per
    line. A file is replaced only once the whole export is written, and not by an export of no memories (a
    mistyped scope)."""

    async def work(store: MemoryStore) -> int:
        done = 0
        with _progress(f"exporting {scope}", None) as advance:
            # in the store's order (by id), not newest first: a turn a running proxy updates meanwhile moves
            # to the newest place, and paging by offset would skip one memory and repeat another
            async for m in store.every([scope], EXPORT_PAGE):
                record = {"scope": m.scope, "content": m.content, "metadata": m.metadata, "id": m.id,
                          "created_at": m.created_at}
                output.write(json.dumps(record, ensure_ascii=False) + "\n")
                done += 1
                advance(1)
        return done

    with _output(path) as output:
        n = with_store(backend, work)
        if not n and path != "-":
            raise click.ClickException(f"{scope} holds no memories; {path} was left as it was")
    err_console.print(f"exported {n} memories of {escape(scope)}")


@contextlib.contextmanager
def _output(path: str) -> Iterator[Any]:
    """Standard output for "-"; for a regular file (or none yet), a private (0600) file beside it (through a
    symbolic link: beside its target), which replaces it only if the block ends without an error; anything else (a
    pipe, /dev/stdout, a terminal) written as it is. Made before the store is opened."""
    if path == "-":
        yield click.get_text_stream("stdout")
        return
    if Path(path).exists() and not Path(path).is_file():  # a pipe, a device: nothing to replace
        with _opened(path, path) as f:
            yield f
        return
    target = Path(os.path.realpath(path))
    temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
    f = _opened(temporary, path)
    try:
        with f:
            yield f
        os.replace(temporary, target)
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        temporary.unlink(missing_ok=True)


def _opened(path: str | Path, named: str) -> Any:
    """`path` opened by `private.open_private` for text; a ClickException naming `named` if it cannot be."""
    from ..private import open_private

    try:
        return open_private(path, "w", encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot write {named}: {e.strerror or e}") from None


@memories.command("import")
@store_options
@click.option("--scope", default=None, help="Import every memory into this scope instead of the one on its line.")
@click.argument("file", type=click.File("rb"))
def memories_import(backend: Backend, scope: str | None, file: Any) -> None:
    """Read memories from a JSONL export; importing the same file again adds nothing new.

    Each memory is known by its scope and content (the ids an export holds are each store's own, which other
    stores' reuse), so exports of several stores merge without loss, and one restored into the store it came
    from adds nothing the store holds. Secrets in them are replaced by [secret: <kind>], as in captured turns."""
    from ..scrub import scrub

    records = [_record(file.name, n, line, scope) for n, line in _lines(file) if line.strip()]
    records.sort(key=lambda r: r["created_at"])  # oldest first, so that the store keeps their order
    found: Counter[str] = Counter()
    for record in records:
        scrubbed = scrub(record["content"])
        record["content"] = scrubbed.text
        record["id"] = _imported_id(record["scope"], scrubbed.text)
        found += scrubbed.found

    async def work(store: MemoryStore) -> tuple[int, int | None]:
        from ..memory import Memory, StoreError
        from ..memory.local import LocalStore

        held = {(m.scope, m.content) async for m in store.every(sorted({r["scope"] for r in records}))}
        fresh = [r for r in records if (r["scope"], r["content"]) not in held]  # a restore into the store it left
        added = done = 0
        try:
            with _progress(f"importing {file.name}", len(fresh)) as advance:
                if isinstance(store, LocalStore):  # keeps each memory's date; a transaction a batch
                    batch = [Memory(r["id"], r["scope"], r["content"], 0.0, r["metadata"], r["created_at"]) for r in fresh]
                    for i in range(0, len(batch), IMPORT_BATCH):
                        chunk = batch[i : i + IMPORT_BATCH]
                        added += await store.add_many(chunk)
                        done += len(chunk)
                        advance(len(chunk))
                    return len(records) - len(fresh), added
                for r in fresh:
                    await store.add(r["scope"], r["content"], custom_id=r["id"], metadata=r["metadata"])
                    done += 1
                    advance(1)
        except StoreError as e:  # a full disk, a lock, the backend: what was stored stays, once
            raise click.ClickException(f"{e}; the memories stored before it stay (at least {done} of the"
                                       f" {len(fresh)} new ones): import the file again to store the rest") from None
        return len(records) - len(fresh), None  # a remote store does not say whether a memory was new

    there, added = with_store(backend, work)
    _report_replaced(found)
    new = "" if added is None else f", {added} of them new"
    new += f", {there} already there" if there else ""
    console.print(f"imported {len(records)} memories from {escape(file.name)}{new} (ones imported before are kept once)")


def _imported_id(scope: str, content: str) -> str:
    """An imported memory's custom id: its scope and content, digested."""
    return "import-" + hashlib.sha256(f"{scope}\n{content}".encode("utf-8", "replace")).hexdigest()[:32]


@memories.command("scrub")
@store_options
@click.option("--scope", "scopes", multiple=True,
              help="Only this scope (repeatable). Default: every scope of the local store; on Supermemory, every"
              " document the API key can list.")
@click.option("--outbox", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The outbox file (option memory_outbox), scrubbed whole. Default: outbox.db in the user's data dir.")
@click.option("--dry-run", is_flag=True, help="Count the secrets that would be replaced; change nothing.")
def memories_scrub(backend: Backend, scopes: tuple[str, ...], outbox: Path | None, dry_run: bool) -> None:
    """Replace secrets (API keys, tokens, private keys) by [secret: <kind>] in stored memories (their text and
    the files their trace names), in the turns waiting in the outbox and in its dead letters.

    Prints how many of each kind, never a secret. The local store's file and the outbox are rebuilt, so that
    no old page keeps them. Best run with the proxy stopped.
    """
    from ..capture import scrubbed_trace
    from ..memory.local import LocalStore
    from ..outbox import scrub_outbox
    from ..scrub import scrub

    async def work(store: MemoryStore) -> tuple[Counter[str], int, int, int, bool]:
        found: Counter[str] = Counter()
        seen = changed = left = 0
        with _progress("scrubbing memories", None) as advance:
            async for memory in store.every(list(scopes) or None):
                seen += 1
                advance(1)
                scrubbed = scrub(memory.content)
                metadata, in_trace = scrubbed_trace(memory.metadata)
                if not scrubbed.found and not in_trace:
                    continue
                changed += 1
                found += scrubbed.found + in_trace
                if not dry_run and not await store.rewrite(memory, scrubbed.text, metadata if in_trace else None):
                    left += 1  # forgotten, or updated by the proxy since it was read
        emptied = True
        if changed and not dry_run and isinstance(store, LocalStore):
            emptied = await store.compact()
        return found, seen, changed, left, emptied

    in_store, seen, changed, left, emptied = with_store(backend, work)
    outbox = outbox or config.outbox_path()
    try:
        in_outbox, turns = scrub_outbox(outbox, dry_run=dry_run)
    except (sqlite3.Error, OSError) as e:
        raise click.ClickException(f"cannot scrub the outbox {outbox}: {e}") from None
    table = Table("secret", "memories", "outbox", title="secrets that would be replaced" if dry_run else "secrets replaced")
    for kind in sorted(in_store.keys() | in_outbox.keys()):
        table.add_row(escape(kind), str(in_store[kind]), str(in_outbox[kind]))
    if table.row_count:
        console.print(table)
    verb = "would replace" if dry_run else "replaced"
    console.print(f"{verb} {in_store.total()} secrets in {changed} of {seen} memories ({backend.name} store)"
                  f" and {in_outbox.total()} in {turns} turns of the outbox {escape(str(outbox))}")
    if left:
        err_console.print(f"memproxy: {left} memories changed or were forgotten while this ran, and were left as they"
                          " are now: run it again")
    if not emptied:
        err_console.print("memproxy: another process (a running proxy?) kept the store's WAL file from being emptied:"
                          " it may still hold replaced text until that process checkpoints it; stop it and run again")


def _report_replaced(found: Counter[str]) -> None:
    """Say on stderr which secrets were replaced before storing (kinds and counts only)."""
    if found:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(found.items()))
        err_console.print(escape(f"replaced {found.total()} secrets by [secret: <kind>] before storing: {kinds}"))


def _lines(file: Any) -> Iterator[tuple[int, str]]:
    """The lines of a file opened as bytes, decoded, numbered from 1; a ClickException naming a line that is not
    UTF-8 (decoded line by line: a text file's reader decodes ahead, and would name another)."""
    for n, line in enumerate(file, 1):
        try:
            yield n, line.decode("utf-8")
        except UnicodeDecodeError:
            raise click.ClickException(f"{file.name}:{n}: not UTF-8 text: nothing was imported") from None


def _record(source: str, line_no: int, line: str, scope: str | None) -> dict[str, Any]:
    """One JSONL line of an export, checked; `scope` overrides the line's."""
    try:
        data = json.loads(line)
    except ValueError as e:
        raise click.ClickException(f"{source}:{line_no}: not JSON: {e}") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{source}:{line_no}: expected a JSON object")
    record = {
        "scope": scope or data.get("scope"),
        "content": data.get("content"),
        "metadata": data.get("metadata") or {},
        "created_at": _created_at(data.get("created_at")),
    }
    valid = {
        "scope": isinstance(record["scope"], str) and bool(record["scope"]),
        "content": isinstance(record["content"], str) and bool(record["content"].strip()),
        "metadata": isinstance(record["metadata"], dict),
        "created_at (a Unix time, or an ISO 8601 date)": record["created_at"] is not None,
    }
    if bad := [key for key, ok in valid.items() if not ok]:
        raise click.ClickException(f"{source}:{line_no}: missing or invalid {', '.join(bad)}")
    try:  # a lone surrogate ("\\ud800") is valid JSON, and no store can hold it
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError) as e:
        raise click.ClickException(f"{source}:{line_no}: text no store can hold ({e}): nothing was imported") from None
    return record


def _created_at(value: Any) -> float | None:
    """A record's date as a Unix time: 0 (stored as now) if it has none; None if it is not one."""
    from ..memory.local import LAST_DATE

    if value is None:
        return 0
    if isinstance(value, str):
        try:
            at = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
        try:
            value = at.timestamp()  # without an offset: local time, as notes show dates
        except (OverflowError, OSError, ValueError):  # a year at the ends of the range, in some zone
            return None
    valid = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < LAST_DATE
    return float(value) if valid else None


@contextlib.contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (shown on a terminal only); yields `advance(n)`."""
    with Progress(console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
