"""`memproxy dead-letters`: the turns the memory backend rejected for good."""

from __future__ import annotations

import json
import sqlite3
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
@click.option("--requeue", is_flag=True,
              help="Queue them again instead (once the cause is fixed): a running proxy sends them with the next turn"
              " it captures, else the next one started.")
@click.option("--status", type=int, default=None, help="With --requeue: only those the backend rejected with this HTTP status.")
def dead_letters(outbox: Path | None, as_json: bool, requeue: bool, status: int | None) -> None:
    """List turns the memory backend rejected for good (they are never retried unless requeued)."""
    from ..outbox import list_dead_letters
    from ..outbox import requeue as requeue_letters

    if status is not None and not requeue:
        raise click.UsageError("--status goes with --requeue")
    if requeue:
        path = outbox or config.outbox_path()
        try:
            n = requeue_letters(path, status)
        except (sqlite3.Error, OSError) as e:  # UnsafePath is an OSError
            raise click.ClickException(f"cannot requeue the dead letters of {path}: {e}") from None
        console.print(f"requeued {n} dead letter{'' if n == 1 else 's'}")
        return
    path = outbox or config.outbox_path()
    try:
        rows = list_dead_letters(path)
    except sqlite3.Error as e:  # not a database, another application's, locked
        raise click.ClickException(f"cannot read the dead letters of {path}: {e}") from None
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
