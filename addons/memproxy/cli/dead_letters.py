"""`memproxy dead-letters`: the turns the memory backend rejected for good."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import config
from .common import console, when


@click.command("dead-letters")
@click.option("--outbox", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The outbox file (option memory_outbox). Default: outbox.db in the user's data dir.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def dead_letters(outbox: Path | None, as_json: bool) -> None:
    """List turns the memory backend rejected for good (they are never retried)."""
    from ..outbox import list_dead_letters

    rows = list_dead_letters(outbox or config.outbox_path())
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    if not rows:
        console.print("No dead letters.")
        return
    table = Table("failed at", "scope", "status", "attempts", "error", "turn", title=f"{len(rows)} dead letters")
    for row in rows:
        preview = row["content"].replace("\n", " ")[:60]
        table.add_row(when(row["failed_at"]), escape(row["scope"]), str(row["status"] or "-"), str(row["attempts"]),
                      escape(row["error"]), escape(preview))
    console.print(table)
