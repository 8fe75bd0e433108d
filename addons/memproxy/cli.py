"""The `memproxy` command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import platformdirs
from rich.console import Console
from rich.table import Table

from .capture import list_dead_letters


def default_outbox() -> Path:
    return Path(platformdirs.user_data_dir("memproxy")) / "outbox.db"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """memproxy: long-term memory for AI coding tools, as a mitmproxy addon."""


@main.command("dead-letters")
@click.option("--outbox", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The outbox file (option memory_outbox). Default: outbox.db in the user's data dir.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def dead_letters(outbox: Path | None, as_json: bool) -> None:
    """List turns the memory backend rejected for good (they are never retried)."""
    rows = list_dead_letters(outbox or default_outbox())
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    console = Console()
    if not rows:
        console.print("No dead letters.")
        return
    table = Table("failed at", "scope", "status", "attempts", "error", "turn", title=f"{len(rows)} dead letters")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["failed_at"]))
        preview = row["content"].replace("\n", " ")[:60]
        table.add_row(when, row["scope"], str(row["status"] or "-"), str(row["attempts"]), row["error"], preview)
    console.print(table)
