"""What several command groups share: the consoles, where the proxy listens, the common options, the rules file."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from .. import config

if TYPE_CHECKING:
    from ..rules import Rules

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_CONFDIR = "~/.mitmproxy"  # mitmproxy's own default (option confdir)

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def listen_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--host and --port: where the proxy listens."""
    f = click.option("--port", "-p", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
                     help="The proxy's port.")(f)
    return click.option("--host", default=DEFAULT_HOST, show_default=True, help="The proxy's address.")(f)


confdir_option = click.option(
    "--confdir", default=DEFAULT_CONFDIR, show_default=True, callback=lambda _ctx, _param, v: Path(v).expanduser(),
    help="mitmproxy's config dir, where its CA lives (option confdir).",
)
registry_option = click.option(
    "--registry", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The port registry (option memory_projects). Default: ports.json in the user's config dir.",
)
project_names_option = click.option(
    "--project-names", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The project registry (option memory_project_names). Default: projects.json in the user's data dir.",
)
rules_option = click.option(
    "--rules", "rules_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="The rules file (option memory_rules). Default: rules/memory.yaml shipped with memproxy.",
)


def client_host(host: str) -> str:
    """The address a client dials for a proxy listening on `host` (all interfaces: loopback)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def proxy_url(host: str, port: int) -> str:
    host = client_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((client_host(host), port), timeout=1.0).close()
    except OSError:
        return False
    return True


def load_rules(path: Path | None) -> Rules:
    """The rules file at `path` (default: the bundled one); invalid rules are a clear error."""
    from ..rules import Rules, RulesError

    try:
        return Rules.load(path or config.DEFAULT_RULES)
    except RulesError as e:
        raise click.ClickException(f"invalid rules:\n{e}") from None


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
