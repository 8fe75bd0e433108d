"""`memproxy run` and `memproxy wrap`: run mitmdump with the addon, alone or around one client."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
from rich.markup import escape

from .. import config
from .clients import client_env
from .common import confdir_option, err_console, listen_options, listening, proxy_url

ADDON_SCRIPT = Path(__file__).resolve().parents[2] / "memory.py"
READY_TIMEOUT = 30.0  # seconds for a proxy started by `wrap` to be ready


def mitmdump_argv(host: str, port: int, confdir: Path, extra: tuple[str, ...] = (), *, web: bool = False) -> list[str]:
    """mitmdump (or mitmweb) from this environment, with the addon and memproxy's required settings."""
    name = "mitmweb" if web else "mitmdump"
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise click.ClickException(f"{name} not found next to {sys.executable}: is mitmproxy installed?")
    return [
        found, "-s", str(ADDON_SCRIPT), "--listen-host", host, "-p", str(port),
        "--set", "connection_strategy=lazy", "--set", f"confdir={confdir}", *extra,
    ]


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--web", is_flag=True, help="Run mitmweb (the flow inspector UI) instead of mitmdump.")
@listen_options
@confdir_option
@click.argument("mitmdump_args", nargs=-1, type=click.UNPROCESSED)
def run(web: bool, host: str, port: int, confdir: Path, mitmdump_args: tuple[str, ...]) -> None:
    """Run the proxy with the memory addon; extra arguments go to mitmdump (e.g. --set memory_backend=local)."""
    argv = mitmdump_argv(host, port, confdir, mitmdump_args, web=web)
    err_console.print(
        f"[bold]memproxy[/] on [cyan]{proxy_url(host, port)}[/] ({Path(argv[0]).name}, CA in {escape(str(confdir))})\n"
        'Point a shell at it: [bold]eval "$(memproxy env)"[/], or run one client: [bold]memproxy wrap claude[/]'
    )
    os.execv(argv[0], argv)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@listen_options
@confdir_option
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A mitmproxy option for the proxy that wrap starts (repeatable).")
@click.option("-s", "--script", "scripts", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An extra mitmproxy script for the proxy that wrap starts (repeatable).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def wrap(host: str, port: int, confdir: Path, settings: tuple[str, ...], scripts: tuple[str, ...],
         command: tuple[str, ...]) -> None:
    """Run COMMAND through the proxy, e.g. `memproxy wrap claude`.

    If nothing listens on --host/--port, the proxy is started first and stopped after COMMAND exits.
    Exits with COMMAND's exit code.
    """
    environ = os.environ | client_env(host, port, confdir)
    extra = tuple(a for s in settings for a in ("--set", s)) + tuple(a for s in scripts for a in ("-s", s))
    if not listening(host, port):
        proxy = _start_proxy(mitmdump_argv(host, port, confdir, extra), host, port)
    else:
        proxy = None
        if extra:
            err_console.print(f"memproxy: a proxy already listens on {host}:{port}; --set and -s are not applied")
    try:
        code = _run_client(command, environ)
    finally:
        if proxy is not None:
            _stop(proxy)
    sys.exit(code)


def _start_proxy(argv: list[str], host: str, port: int) -> subprocess.Popen[bytes]:
    """Start mitmdump in the background (in its own session, so Ctrl-C meant for the client spares it)."""
    from .. import private

    log_path = config.log_dir() / f"proxy-{port}.log"
    private.private_dir(log_path.parent)
    with private.open_private(log_path, "wb") as log:  # it shows scopes, project paths and URLs
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    ready = config.READY_LINE.encode()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        # mitmdump listens before it exits on a bad setting: ready means listening after the addon's last line.
        while proc.poll() is None and time.monotonic() < deadline:
            if ready in log_path.read_bytes() and listening(host, port):
                break
            time.sleep(0.1)
    except BaseException:  # Ctrl-C while waiting: leave nothing behind
        _stop(proc)
        raise
    if proc.poll() is None and time.monotonic() < deadline:
        err_console.print(f"memproxy: started the proxy on {proxy_url(host, port)} (log: {escape(str(log_path))})")
        return proc
    state = f"exited with {proc.returncode}" if proc.poll() is not None else f"not listening after {READY_TIMEOUT:.0f} s"
    _stop(proc)
    raise click.ClickException(f"the proxy {state}; its log ({log_path}):\n{_log_summary(log_path)}")


def _log_summary(path: Path, lines: int = 20) -> str:
    """The last log lines, without the indented frames of tracebacks."""
    text = path.read_text(errors="replace").splitlines()
    kept = [line for line in text if line.strip() and not line[0].isspace()
            and not line.startswith(("Traceback", "During handling", "handle:"))]
    return "\n".join(kept[-lines:])


def _stop(proxy: subprocess.Popen[bytes]) -> None:
    """Stop gracefully (the addon flushes its outbox); kill if that takes too long."""
    if proxy.poll() is None:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def _run_client(command: tuple[str, ...], environ: dict[str, str]) -> int:
    """Run the client to its end; its exit code (128 + N if signal N ended it)."""
    try:
        child = subprocess.Popen(command, env=environ)
    except OSError as e:
        raise click.ClickException(f"cannot run {command[0]}: {e.strerror or e}") from None
    with _signals_to(child):
        code = child.wait()
    return 128 - code if code < 0 else code


@contextlib.contextmanager
def _signals_to(child: subprocess.Popen[bytes]) -> Iterator[None]:
    """While the client runs: Ctrl-C reaches it from the terminal (ignored here); TERM and HUP are passed on."""
    forwarded = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, lambda signum, _frame: child.send_signal(signum)) for s in forwarded}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
