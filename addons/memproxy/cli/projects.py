"""`memproxy projects`: per-project ports, registered for the proxy to listen on."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .common import DEFAULT_HOST, console, proxy_url, registry_option


@click.group()
def projects() -> None:
    """Per-project ports, for IDEs that send one user agent from every project (JetBrains)."""


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
@registry_option
def projects_list(registry: Path | None) -> None:
    """List the registered projects and their ports."""
    from ..ports import PortRegistry
    from ..private import UnsafePath

    reg = PortRegistry(registry)
    table = Table("project", "port", "base URL", "path", title=f"projects in {escape(str(reg.path))}")
    try:
        found = reg.projects()
    except UnsafePath as e:
        raise click.ClickException(str(e)) from None
    for p in found:
        table.add_row(escape(p.name), str(p.port), f"{proxy_url(DEFAULT_HOST, p.port)}/v1", escape(p.path))
    console.print(table if table.row_count else f"no projects in {escape(str(reg.path))}")


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
