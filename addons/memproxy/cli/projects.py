"""`memproxy projects`: every project the proxy has seen, and per-project ports for the proxy to listen on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Column, Table

from .common import DEFAULT_HOST, console, err_console, project_names_option, proxy_url, registry_option, when
from .memories import store_options, with_store

if TYPE_CHECKING:
    from ..memory import Backend, MemoryStore
    from ..ports import Project

# On Supermemory a scope's memories are counted by listing them: one request a project, up to this many.
SUPERMEMORY_COUNT_CAP = 100
COUNTS_AT_ONCE = 8  # Supermemory requests in flight


@click.group(invoke_without_command=True)
@click.pass_context
def projects(ctx: click.Context) -> None:
    """Every project the proxy has seen (`memproxy projects` alone lists them), and per-project ports for IDEs
    that send one user agent from every project (JetBrains)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(projects_list)


@projects.command("add")
@registry_option
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def projects_add(registry: Path | None, path: Path) -> None:
    """Give the project at PATH its own port (the same one every time)."""
    from ..ports import PortRangeExhausted, PortRegistry
    from ..private import UnsafePath

    try:
        port = PortRegistry(registry).get_or_allocate_port(path)
    except (PortRangeExhausted, UnsafePath) as e:
        raise click.ClickException(str(e)) from None
    console.print(f"project [bold]{escape(path.resolve().name)}[/]: port {port}")
    console.print(f"base URL for the IDE: [bold]{proxy_url(DEFAULT_HOST, port)}/v1[/]")
    console.print("PyCharm/JetBrains: Settings → Tools → AI Assistant → Models → OpenAI-compatible provider."
                  " A running memproxy opens the port within a second.")


@projects.command("list")
@store_options
@project_names_option
@registry_option
def projects_list(backend: Backend, project_names: Path | None, registry: Path | None) -> None:
    """List every project the proxy has seen: its name, scope, root, the tools used in it, its memories, its last
    use; and the port of those registered with `memproxy projects add`.

    The local store counts a project's memories exactly; on Supermemory they are counted by listing, up to 100
    (shown as 100+). A registered port whose project no tool has used yet is listed too.
    """
    from ..ports import PortRegistry
    from ..private import UnsafePath
    from ..repos import ProjectRegistry, RegistryError, project_root
    from ..rules import project_scope

    names, ports = ProjectRegistry(project_names), PortRegistry(registry)
    try:
        seen, registered = names.projects(), ports.projects()
    except (RegistryError, UnsafePath, OSError) as e:
        raise click.ClickException(str(e)) from None
    ports_of: dict[str, list[Project]] = {}
    for p in registered:  # a port's project is the one holding its path, as for a working directory (or worktree)
        for key in dict.fromkeys((project_root(p.path) or p.path, p.path)):
            ports_of.setdefault(key, []).append(p)
    scopes = [project_scope(r.name) for r in seen]
    counts = _counts(backend, scopes)

    table = Table(  # names and paths wrap, never cut
        Column("project", overflow="fold"), Column("scope", overflow="fold"), "port", Column("root", overflow="fold"),
        "tools", "memories", "last use", title=escape(f"projects seen ({names.path})"),
    )
    shown: set[Project] = set()
    for record, scope in zip(seen, scopes, strict=True):
        its = ports_of.get(record.root, [])
        shown.update(its)
        last = when(record.last_use) if record.last_use is not None else "-"
        table.add_row(escape(record.name), escape(scope), ", ".join(str(p.port) for p in its), escape(record.root),
                      escape(", ".join(sorted(record.tools)) or "-"), counts.get(scope, "-"), last)
    for port in registered:
        if port not in shown:
            table.add_row(escape(port.name), "-", str(port.port), escape(port.path), "-", "-", "not used yet")
    if not table.row_count:
        console.print(f"no projects seen yet ({escape(str(names.path))}) and no ports registered ({escape(str(ports.path))})")
        return
    console.print(table)
    if registered:
        console.print(f"IDEs reach a project through its port: base URL http://{DEFAULT_HOST}:PORT/v1"
                      f" (ports registered in {escape(str(ports.path))})")


def _counts(backend: Backend, scopes: list[str]) -> dict[str, str]:
    """Each scope's memories as the table shows them; none if the store fails (said on stderr)."""
    from .. import config
    from ..memory.local import LocalStore

    if not scopes:
        return {}
    if backend.name == "local" and not Path(backend.path or config.store_path()).expanduser().exists():
        return dict.fromkeys(scopes, "0")  # no store yet: not created by a listing

    async def count(store: MemoryStore) -> dict[str, str]:
        if isinstance(store, LocalStore):
            return {scope: str(await store.count(scope)) for scope in scopes}
        limit = asyncio.Semaphore(COUNTS_AT_ONCE)

        async def listed(scope: str) -> str:
            async with limit:
                n = len(await store.list(scope, SUPERMEMORY_COUNT_CAP))
            return f"{n}+" if n >= SUPERMEMORY_COUNT_CAP else str(n)

        return dict(zip(scopes, await asyncio.gather(*map(listed, scopes)), strict=True))

    try:
        return with_store(backend, count, read_only=True)
    except click.ClickException as e:  # a store error: the listing still shows the projects
        err_console.print(f"memproxy: memories not counted: {escape(e.message)}")
        return {}


@projects.command("remove")
@registry_option
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
def projects_remove(registry: Path | None, path: Path) -> None:
    """Unregister the project at PATH, freeing its port."""
    from ..ports import PortRegistry
    from ..private import UnsafePath

    try:
        removed = PortRegistry(registry).remove(path)
    except UnsafePath as e:
        raise click.ClickException(str(e)) from None
    if not removed:
        raise click.ClickException(f"{path} is not a registered project")
    console.print(f"removed {escape(str(path))}")
