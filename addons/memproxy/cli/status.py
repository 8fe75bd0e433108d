"""`memproxy status`: what a running proxy reports on its status endpoint."""

from __future__ import annotations

import time

import click
from rich.markup import escape
from rich.table import Table

from .common import console, listen_options, proxy_url, when


@click.command()
@listen_options
def status(host: str, port: int) -> None:
    """Whether the proxy runs, its listeners, backend, outbox and dead letters, and requests per client."""
    import httpx

    from ..wire import STATUS_PATH

    where = f"{host}:{port}"
    try:
        resp = httpx.get(f"http://memproxy{STATUS_PATH}", proxy=proxy_url(host, port), trust_env=False,
                         timeout=10)
        data = resp.json() if resp.status_code == 200 else None
    except httpx.TransportError:
        raise click.ClickException(f"memproxy is not running on {where} (start it with `memproxy run`)") from None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise click.ClickException(f"something listens on {where}, but it is not memproxy (HTTP {resp.status_code})")
    listen, backend, outbox = data.get("listen") or {}, data.get("backend") or {}, data.get("outbox")
    started = data.get("started_at") or time.time()
    up = time.time() - started
    console.print(f"[bold green]memproxy is running[/] on {where} since {when(started)} "
                  f"(up {int(up // 3600)}h{int(up % 3600 // 60):02d}m)")
    console.print(f"listeners: {escape(', '.join(listen.get('modes') or ['regular']))}")
    console.print(f"rules: {escape(str(data.get('rules')))}")
    console.print(f"backend: {escape(str(backend.get('description')))}; recall circuit {backend.get('recall')}")
    if (recall := data.get("recall") or {}).get("searches"):
        console.print(f"recall: {recall['p50_ms']} ms median, {recall['p99_ms']} ms p99 (last {recall['searches']} searches)")
    if outbox:
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in outbox.items())
        console.print(f"outbox: {counts}")
    if projects := data.get("projects"):
        table = Table("project", "port", "base URL", "path", title="per-project listeners")
        for p in projects:
            table.add_row(escape(p["name"]), str(p["port"]), f"{proxy_url(host, p['port'])}/v1", escape(p["path"]))
        console.print(table)
    clients = data.get("clients") or {}
    table = Table("rule", "requests", title="LLM requests since start, by rule")
    for rule, n in sorted(clients.items(), key=lambda kv: -kv[1]):
        table.add_row(escape(rule), str(n))
    console.print(table if clients else "no LLM requests since start")
