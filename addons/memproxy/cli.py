"""The `memproxy` command line: run the proxy, point clients at it, and see and edit what it remembers.

Modules that import mitmproxy are imported inside the commands that need them, so that
`eval "$(memproxy env)"` in a shell's start-up file stays quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from . import config

if TYPE_CHECKING:
    from mitmproxy import http

    from .memory import Backend, Memory, MemoryStore
    from .ports import PortRegistry
    from .rules import Actions, RequestView, Rules

T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_CONFDIR = "~/.mitmproxy"  # mitmproxy's own default (option confdir)
ADDON_SCRIPT = Path(__file__).resolve().parents[1] / "memory.py"
CA_CERT = "mitmproxy-ca-cert.pem"
BUNDLE = "memproxy-bundle.pem"
NO_PROXY = "localhost,127.0.0.1,::1"
SHELLS = ("bash", "zsh", "fish", "powershell")
IMPORT_BATCH = 500  # memories a transaction when importing into the local store
READY_TIMEOUT = 30.0  # seconds for a proxy started by `wrap` to be ready
READY_LINE = config.READY_LINE.encode()  # the addon's last start-up line: its options are valid
EXPORT_PAGE = 500

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


# -- shared options ------------------------------------------------------------------------


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
rules_option = click.option(
    "--rules", "rules_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="The rules file (option memory_rules). Default: rules/memory.yaml shipped with memproxy.",
)
scope_option = click.option("--scope", required=True, help="The memory scope (user id), e.g. claude-code:myrepo.")


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
        return f(backend=_backend(backend, db, rules_path), **kwargs)

    return wrapper


# -- helpers -------------------------------------------------------------------------------


def _client_host(host: str) -> str:
    """The address a client dials for a proxy listening on `host` (all interfaces: loopback)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def proxy_url(host: str, port: int) -> str:
    host = _client_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ensure_ca(confdir: Path) -> tuple[Path, Path]:
    """The mitmproxy CA certificate and a bundle of the public roots plus it, created if missing.

    Variables such as SSL_CERT_FILE replace a client's roots, hence the bundle; it is rebuilt
    when the CA is newer than it.
    """
    ca = confdir / CA_CERT
    if not ca.exists():
        from mitmproxy import certs

        try:
            certs.CertStore.from_store(confdir, "mitmproxy", 2048)
        except OSError as e:
            raise click.ClickException(f"cannot create the mitmproxy CA in {confdir}: {e}") from None
    bundle = confdir / BUNDLE
    if not bundle.exists() or bundle.stat().st_mtime < ca.stat().st_mtime:
        roots = Path(ssl.get_default_verify_paths().openssl_cafile)
        if not roots.is_file():
            import certifi

            roots = Path(certifi.where())
        try:
            fd, tmp = tempfile.mkstemp(dir=confdir, prefix=f".{BUNDLE}.")
            with os.fdopen(fd, "wb") as f:
                f.write(roots.read_bytes().rstrip(b"\n") + b"\n" + ca.read_bytes())
            # Public certificates only: readable by whoever can read the CA certificate, never writable by others.
            os.chmod(tmp, stat.S_IMODE(ca.stat().st_mode) & 0o644)
            os.replace(tmp, bundle)
        except OSError as e:
            raise click.ClickException(f"cannot write the CA bundle {bundle}: {e}") from None
    return ca, bundle


def client_env(host: str, port: int, confdir: Path) -> dict[str, str]:
    """The environment that points clients at the proxy and makes them trust its CA."""
    ca, bundle = ensure_ca(confdir)
    url = proxy_url(host, port)
    env = {"HTTPS_PROXY": url, "HTTP_PROXY": url, "NO_PROXY": NO_PROXY}
    env |= {k.lower(): v for k, v in env.items()}
    return env | {
        "NODE_EXTRA_CA_CERTS": str(ca),  # Node adds it to its roots
        "SSL_CERT_FILE": str(bundle),  # these replace the roots: the bundle
        "REQUESTS_CA_BUNDLE": str(bundle),
        "CODEX_CA_CERTIFICATE": str(bundle),
    }


def render_env(env: dict[str, str], shell: str) -> str:
    """`env` as statements that `shell` can evaluate."""

    def fish(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def powershell(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"

    line = {
        "bash": lambda k, v: f"export {k}={shlex.quote(v)}",
        "zsh": lambda k, v: f"export {k}={shlex.quote(v)}",
        "fish": lambda k, v: f"set -gx {k} {fish(v)}",
        "powershell": lambda k, v: f"$env:{k} = {powershell(v)}",
    }[shell]
    return "\n".join(line(k, v) for k, v in env.items())


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((_client_host(host), port), timeout=1.0).close()
    except OSError:
        return False
    return True


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


def _backend(backend: str | None, db: Path | None, rules_path: Path | None) -> Backend:
    """Choose the backend as the addon does: the option, else the rules file's memory section, else auto."""
    from .memory import configured_backend

    memory = _load_rules(rules_path).memory
    try:
        return configured_backend(backend or "", str(db.expanduser()) if db else None, memory)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def _load_rules(path: Path | None) -> Rules:
    from .rules import Rules, RulesError

    try:
        return Rules.load(path or config.DEFAULT_RULES)
    except RulesError as e:
        raise click.ClickException(f"invalid rules:\n{e}") from None


def _with_store(backend: Backend, work: Callable[[MemoryStore], Awaitable[T]]) -> T:
    """Open the backend's store, run `work` on it, close it; a store failure is a clear error."""
    from .memory import StoreError, open_store

    async def go() -> T:
        store = open_store(backend)
        try:
            await store.open()
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreError as e:
        raise click.ClickException(str(e)) from None


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# -- the commands --------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """memproxy: long-term memory for AI coding tools, as a mitmproxy addon.

    Start it with `memproxy run`, point a shell at it with `eval "$(memproxy env)"`,
    or run one client through it with `memproxy wrap claude`.
    """


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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


@main.command()
@click.option("--shell", type=click.Choice(SHELLS), default=None,
              help="The shell to print for. Default: from $SHELL, else bash.")
@listen_options
@confdir_option
def env(shell: str | None, host: str, port: int, confdir: Path) -> None:
    """Print the environment that points clients at the proxy and trusts its CA (creating the CA if missing).

    \b
    bash/zsh:    eval "$(memproxy env)"
    fish:        memproxy env --shell fish | source
    PowerShell:  memproxy env --shell powershell | Invoke-Expression
    """
    if shell is None:
        shell = Path(os.environ.get("SHELL", "")).name
        shell = shell if shell in SHELLS else "bash"
    click.echo(render_env(client_env(host, port, confdir), shell))


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
    from . import private

    log_path = config.log_dir() / f"proxy-{port}.log"
    private.private_dir(log_path.parent)
    with private.open_private(log_path, "wb") as log:  # it shows scopes, project paths and URLs
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        # mitmdump listens before it exits on a bad setting: ready means listening after the addon's last line.
        while proc.poll() is None and time.monotonic() < deadline:
            if READY_LINE in log_path.read_bytes() and listening(host, port):
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


# Trust instructions per client; {ca}, {cer} and {bundle} are filled in. certs/README.md says the same.
TRUST: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Node tools (Claude Code, Gemini CLI, Qwen Code, opencode): Node adds it to its roots",
     ("export NODE_EXTRA_CA_CERTS={ca}",)),
    ("Codex CLI", ("export CODEX_CA_CERTIFICATE={bundle}",)),
    ("Python (openai/anthropic SDKs, httpx, requests): these replace the roots, hence the bundle",
     ("export SSL_CERT_FILE={bundle}", "export REQUESTS_CA_BUNDLE={bundle}")),
    ("Java / JetBrains IDEs: prefer a per-project port (`memproxy projects add`, no CA needed); or in the IDE"
     " Settings → Tools → Server Certificates → + {ca}; or into a JDK's store",
     ('keytool -importcert -noprompt -alias mitmproxy -file {ca} -keystore "$JAVA_HOME/lib/security/cacerts"'
      " -storepass changeit",)),
    ("Debian/Ubuntu trust store",
     ("sudo cp {ca} /usr/local/share/ca-certificates/mitmproxy.crt && sudo update-ca-certificates",)),
    ("Fedora trust store", ("sudo trust anchor {ca}",)),
    ("macOS trust store", ("sudo security add-trusted-cert -d -p ssl -p basic -k /Library/Keychains/System.keychain {ca}",)),
    ("Windows trust store", ("certutil -addstore root {cer}",)),
)


@main.command()
@confdir_option
def certs(confdir: Path) -> None:
    """Create the mitmproxy CA if missing, print its path, and how each client trusts it."""
    existed = (confdir / CA_CERT).exists()
    ca, bundle = ensure_ca(confdir)
    paths = {"ca": shlex.quote(str(ca)), "cer": str(ca.with_suffix(".cer")), "bundle": shlex.quote(str(bundle))}
    console.print(f"mitmproxy CA: [bold]{escape(str(ca))}[/] ({'exists' if existed else 'created now'})")
    console.print(f"bundle (public roots + CA): [bold]{escape(str(bundle))}[/]")
    console.print("Keep mitmproxy-ca.pem (the CA's private key) to yourself. Reverse mode needs no CA at all.")
    for who, lines in TRUST:
        console.print(f"\n[bold]{escape(who.format(**paths))}[/]")
        for line in lines:
            console.print(f"  {escape(line.format(**paths))}")
    console.print('\nAll client variables at once: [bold]eval "$(memproxy env)"[/]. See certs/README.md.')


@main.command()
@listen_options
def status(host: str, port: int) -> None:
    """Whether the proxy runs, its listeners, backend, outbox and dead letters, and requests per client."""
    import httpx

    from .addons.endpoints import STATUS_PATH

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
    console.print(f"[bold green]memproxy is running[/] on {where} since {_when(started)} "
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


# -- rules -----------------------------------------------------------------------------------


@main.group()
def rules() -> None:
    """Validate the routing rules, and see which rule a request matches and why."""


@rules.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
def rules_check(file: Path | None) -> None:
    """Validate FILE (default: the bundled rules/memory.yaml); errors name file, line and key."""
    from .rules import Rules, RulesError

    try:
        loaded = Rules.load(file or config.DEFAULT_RULES)
    except RulesError as e:
        for line in e.errors:
            click.echo(line, err=True)
        raise click.exceptions.Exit(1) from None
    console.print(f"ok: {len(_compiled(loaded))} rules in {escape(str(file or config.DEFAULT_RULES))}")


@rules.command("explain")
@rules_option
@click.option("-H", "--header", "headers", multiple=True, metavar="'NAME: VALUE'", help="A request header (repeatable).")
@click.option("--ua", help="The user agent (same as -H 'user-agent: UA').")
@click.option("--method", default="POST", show_default=True)
@click.option("--host", "req_host", default="localhost", show_default=True, help="The request's host.")
@click.option("--path", default="/", show_default=True, help="The request's path, e.g. /v1/messages.")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="The listen port the request arrived on; a registered project's port names its project.")
@click.option("--body", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="A JSON request body.")
@click.option("--flows", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Explain every LLM request in a saved mitmproxy flow file instead.")
@registry_option
def rules_explain(rules_path: Path | None, headers: tuple[str, ...], ua: str | None, method: str, req_host: str,
                  path: str, port: int, body: Path | None, flows: Path | None, registry: Path | None) -> None:
    """Show which rule a request matches, its user id and actions, and why (the conditions that held)."""
    from .ports import PortRegistry

    loaded = _load_rules(rules_path)
    projects = PortRegistry(registry)
    if flows:
        found = 0
        for label, flow, content in _saved_requests(flows):
            found += 1
            console.rule(escape(label))
            _explain(loaded, _view(flow, content, loaded, projects))
        if not found:
            console.print("no LLM requests in the flow file")
        return
    pairs = [("user-agent", ua)] if ua else []
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected 'Name: value', got {h!r}", param_hint="-H")
        pairs.append((name.strip(), value.strip()))
    content = body.read_bytes() if body else b""
    _explain(loaded, _view(_made_flow(method, req_host, path, port, pairs, content), content, loaded, projects))


def _made_flow(method: str, host: str, path: str, port: int, headers: list[tuple[str, str]],
               content: bytes) -> http.HTTPFlow:
    """A flow as the proxy would see it, so that `filter:` conditions can be explained too."""
    from mitmproxy import connection, http

    client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", port))
    flow = http.HTTPFlow(client, connection.Server(address=(host, 443)))
    flow.request = http.Request.make(method.upper(), f"https://{host}{path}", content,
                                     [(k.encode(), v.encode()) for k, v in headers])
    return flow


def _saved_requests(path: Path) -> Iterator[tuple[str, http.HTTPFlow, bytes]]:
    """The LLM requests of a flow file: (label, flow, JSON body), WebSocket `response.create` messages too."""
    from mitmproxy import exceptions, http, io

    from . import protocols

    try:
        with path.open("rb") as f:
            for n, flow in enumerate(io.FlowReader(f).stream(), 1):
                if not isinstance(flow, http.HTTPFlow):
                    continue
                req = flow.request
                label = f"flow {n}: {req.method} {req.pretty_url}"
                if flow.websocket is not None:
                    for m in flow.websocket.messages:
                        if m.from_client and m.is_text and b'"response.create"' in m.content:
                            yield f"{label} (WebSocket message)", flow, m.content
                elif protocols.detect_path(req.method, req.path) and req.raw_content:
                    yield label, flow, req.get_content(strict=False) or b""
    except exceptions.FlowReadException as e:
        raise click.ClickException(f"{path}: not a mitmproxy flow file: {e}") from None


def _view(flow: http.HTTPFlow, content: bytes, rules: Rules, projects: PortRegistry) -> RequestView:
    """What the rules see of a request, as the addon builds it."""
    from . import protocols
    from .addons.requestpath import OVERRIDE_KEY
    from .rules import RequestView

    req = flow.request
    method = "POST" if flow.websocket is not None else req.method
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    adapter = protocols.detect_path(method, req.path)
    model = adapter.model(req.path, body) if adapter else None
    if model is None and isinstance(body, dict) and isinstance(body.get("model"), str):
        model = body["model"]
    headers = req.headers.copy()
    if (override := flow.metadata.get(OVERRIDE_KEY)) is not None:  # the addon strips it before the flow is saved
        headers[rules.override_header] = override
    port = flow.client_conn.sockname[1] if flow.client_conn.sockname else 0
    project = projects.project_for_port(port) if port else None
    return RequestView(
        method=method, host=req.pretty_host, path=req.path, port=port, headers=headers, body=body,
        raw_body=content.decode("utf-8", "replace") if content else None, model=model,
        project=project.path if project else None, flow=flow,
    )


# The condition fields of a compiled rule; `_conditions` tests each alone, to say which held.
CONDITIONS = ("methods", "ports", "host", "path", "headers", "model", "project", "filter", "body", "json")
MULTI = ("headers", "body", "json")  # tuples of conditions, each tested alone


def _compiled(rules: Rules) -> tuple[Any, ...]:
    """The compiled rules in order (rules.py has no public accessor for them)."""
    return rules._rules


def _conditions(rule: Any) -> Iterator[tuple[str, Any]]:
    """(label, a copy of `rule` with only that condition) for each condition of `rule`."""
    fields = {f.name: f.default for f in dataclasses.fields(rule) if f.name in CONDITIONS}
    blank = dataclasses.replace(rule, **fields)
    for name in CONDITIONS:
        value = getattr(rule, name)
        for part in (value if name in MULTI else (value,) if value else ()):
            yield _label(name, part), dataclasses.replace(blank, **{name: (part,) if name in MULTI else part})


def _label(name: str, part: Any) -> str:
    """One condition as the rules file reads it."""
    match name:
        case "methods" | "ports":
            return f"{name[:-1]} {'|'.join(sorted(map(str, part)))}"
        case "filter":
            return f"filter {getattr(part, 'pattern', part)}"
        case "headers" if part.pattern is None:
            return f"header {part.name} absent"
        case "headers":
            return f"header {part.name} {'!~' if part.negate else '~'} {part.pattern.pattern}"
        case "json":
            segs, pattern = part
            return f"json {'.'.join(s if s == '*' else s[0] for s in segs)} ~ {pattern.pattern}"
        case "body":
            return f"body ~ {part.pattern}"
        case _:
            return f"{name} ~ {part.pattern}"


def _holds(rule: Any, view: RequestView) -> bool:
    """Whether a rule's conditions hold for `view`; a regex out of time does not hold, as in `Rules.match`."""
    from .regexes import RegexTimeout

    try:
        return rule.captures(view) is not None
    except RegexTimeout:
        return False


def _explain(rules: Rules, view: RequestView) -> None:
    """Print the route of one request, the rules tried before it and the conditions that decided."""
    route = rules.match(view)
    agent = view.headers.get("user-agent") or "-"
    console.print(escape(f"request: {view.method} {view.host}{view.path} · port {view.port or '-'} · "
                         f"model {view.model or '-'} · project {view.project or '-'} · user-agent {agent}"))
    rule_user_id = rules.default_user_id
    for rule in _compiled(rules):
        checks = [(label, _holds(one, view)) for label, one in _conditions(rule)]
        if rule.name == route.rule:
            held = " · ".join(label for label, _ in checks) or "it has no conditions"
            console.print(f"  [green]✓[/] {escape(rule.name)}: {escape(held)}")
            rule_user_id = rule.user_id(view, route.captures, rules.default_user_id)
            break
        failed = next((label for label, ok in checks if not ok), None)
        why = f"{failed} did not hold" if failed else "its user_id template has an empty variable"
        console.print(f"  [red]✗[/] {escape(rule.name)}: {escape(why)}")
    console.print(f"user id: [bold]{escape(route.user_id)}[/]  "
                  + (f"rule: [bold]{escape(route.rule)}[/]" if route.rule else "no rule matched: the default user id"))
    if route.user_id != rule_user_id:
        console.print(f"  from the {escape(rules.override_header)} header (the rule gives {escape(str(rule_user_id))})")
    if route.captures:
        console.print(escape("captured: " + ", ".join(f"{k}={v}" for k, v in route.captures.items())))
    if p := route.matched_pattern:
        console.print(escape(f"matched pattern: header {p['header']} ~ {p['pattern']}"))
    console.print(f"actions: {escape(_actions(route.actions))}")


def _actions(a: Actions) -> str:
    if a.auxiliary:
        return "auxiliary: neither recalled nor stored"
    out = [
        f"recall ({a.query} query, inject {a.inject}, up to {a.max_results} memories / {a.max_chars} chars,"
        f" threshold {a.threshold})" if a.recall else "no recall",
        "store" if a.store else "no store",
    ]
    if a.profile:
        out.append("profile")
    if a.models_allow or a.models_deny:
        out.append(f"models allow {list(a.models_allow)} deny {list(a.models_deny)}")
    return ", ".join([*out, f"route {a.route}"])


# -- memories --------------------------------------------------------------------------------


@main.group()
def memories() -> None:
    """See and edit what is remembered, on the configured backend."""


@memories.command("list")
@store_options
@scope_option
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
def memories_list(backend: Backend, scope: str, limit: int, offset: int) -> None:
    """List a scope's memories, newest first."""
    found = _with_store(backend, lambda store: store.list(scope, limit, offset))
    _print_memories(found, f"{len(found)} memories in {scope}, newest first")


@memories.command("search")
@store_options
@scope_option
@click.argument("query")
@click.option("--limit", type=click.IntRange(1), default=5, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Minimum relevance.")
def memories_search(backend: Backend, scope: str, query: str, limit: int, threshold: float) -> None:
    """Search a scope's memories as recall does, best first."""
    found = _with_store(backend, lambda store: store.search(scope, query, limit, threshold))
    _print_memories(found, f"{len(found)} memories in {scope} for {query!r}", scores=True)


def _print_memories(found: list[Memory], title: str, *, scores: bool = False) -> None:
    table = Table("id", *(["score"] if scores else []), "created", "client", "content", title=escape(title))
    for m in found:
        preview = m.content if len(m.content) <= 300 else m.content[:299] + "…"
        score = [f"{m.score:.2f}"] if scores else []
        table.add_row(escape(m.id), *score, _when(m.created_at), escape(str(m.metadata.get("client", ""))), escape(preview))
    console.print(table)


@memories.command("add")
@store_options
@scope_option
@click.argument("content")
def memories_add(backend: Backend, scope: str, content: str) -> None:
    """Remember CONTENT in a scope (secrets in it are replaced by [secret: <kind>], as in captured turns)."""
    from .scrub import scrub

    if not content.strip():
        raise click.BadParameter("the memory is empty", param_hint="CONTENT")
    scrubbed = scrub(content)
    memory_id = _with_store(backend, lambda store: store.add(scope, scrubbed.text, metadata={"client": "memproxy-cli"}))
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
    if not _with_store(backend, lambda store: store.forget(scope, memory_id)):
        raise click.ClickException(f"no memory {memory_id} in scope {scope}")
    console.print(f"forgot memory {memory_id} of {escape(scope)}")


@memories.command("export")
@store_options
@scope_option
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="The JSONL file to write (0600). Default: standard output.")
def memories_export(backend: Backend, scope: str, path: str) -> None:
    """Write a scope's memories as JSONL: one {scope, content, metadata, id, created_at} per line."""

    async def work(store: MemoryStore) -> int:
        done = 0
        with _progress(f"exporting {scope}", None) as advance:
            while page := await store.list(scope, EXPORT_PAGE, done):
                for m in page:
                    record = {"scope": m.scope, "content": m.content, "metadata": m.metadata, "id": m.id,
                              "created_at": m.created_at}
                    output.write(json.dumps(record, ensure_ascii=False) + "\n")
                done += len(page)
                advance(len(page))
                if len(page) < EXPORT_PAGE:
                    break
        return done

    with _output(path) as output:
        n = _with_store(backend, work)
    err_console.print(f"exported {n} memories of {escape(scope)}")


@contextlib.contextmanager
def _output(path: str) -> Iterator[Any]:
    """Standard output for "-", else the file at `path`, private (0600); opened before the store is."""
    if path == "-":
        yield click.get_text_stream("stdout")
        return
    from .private import open_private

    try:
        f = open_private(path, "w", encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None
    with f:
        yield f


@memories.command("import")
@store_options
@click.option("--scope", default=None, help="Import every memory into this scope instead of the one on its line.")
@click.argument("file", type=click.File("r", encoding="utf-8"))
def memories_import(backend: Backend, scope: str | None, file: Any) -> None:
    """Read memories from a JSONL export; importing the same file again adds nothing new.

    Secrets in them are replaced by [secret: <kind>], as in captured turns."""
    from .scrub import scrub

    records = [_record(file.name, n, line, scope) for n, line in enumerate(file, 1) if line.strip()]
    records.sort(key=lambda r: r["created_at"])  # oldest first, so that the store keeps their order
    found: Counter[str] = Counter()
    for record in records:
        scrubbed = scrub(record["content"])
        record["content"] = scrubbed.text
        found += scrubbed.found

    async def work(store: MemoryStore) -> None:
        from .memory import Memory
        from .memory.local import LocalStore

        with _progress(f"importing {file.name}", len(records)) as advance:
            if isinstance(store, LocalStore):  # keeps each memory's date; a transaction a batch
                batch = [Memory(r["id"] or "", r["scope"], r["content"], 0.0, r["metadata"], r["created_at"]) for r in records]
                for i in range(0, len(batch), IMPORT_BATCH):
                    chunk = batch[i : i + IMPORT_BATCH]
                    await store.add_many(chunk)
                    advance(len(chunk))
                return
            for r in records:
                await store.add(r["scope"], r["content"], custom_id=r["id"], metadata=r["metadata"])
                advance(1)

    _with_store(backend, work)
    _report_replaced(found)
    console.print(f"imported {len(records)} memories from {escape(file.name)} (ones imported before are kept once)")


@memories.command("scrub")
@store_options
@click.option("--scope", "scopes", multiple=True,
              help="Only this scope (repeatable). Default: every scope of the local store; on Supermemory, every"
              " document the API key can list.")
@click.option("--outbox", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The outbox file (option memory_outbox), scrubbed whole. Default: outbox.db in the user's data dir.")
@click.option("--dry-run", is_flag=True, help="Count the secrets that would be replaced; change nothing.")
def memories_scrub(backend: Backend, scopes: tuple[str, ...], outbox: Path | None, dry_run: bool) -> None:
    """Replace secrets (API keys, tokens, private keys) by [secret: <kind>] in stored memories, in the turns
    waiting in the outbox and in its dead letters.

    Prints how many of each kind, never a secret. The local store's file and the outbox are rebuilt, so that
    no old page keeps them. Best run with the proxy stopped.
    """
    from .capture import scrub_outbox
    from .memory.local import LocalStore
    from .scrub import scrub

    async def work(store: MemoryStore) -> tuple[Counter[str], int, int, bool]:
        found: Counter[str] = Counter()
        seen = changed = 0
        with _progress("scrubbing memories", None) as advance:
            async for memory in store.every(list(scopes) or None):
                seen += 1
                advance(1)
                scrubbed = scrub(memory.content)
                if not scrubbed.found:
                    continue
                changed += 1
                found += scrubbed.found
                if not dry_run:
                    await store.rewrite(memory, scrubbed.text)
        emptied = True
        if changed and not dry_run and isinstance(store, LocalStore):
            emptied = await store.compact()
        return found, seen, changed, emptied

    in_store, seen, changed, emptied = _with_store(backend, work)
    outbox = outbox or default_outbox()
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
    if not emptied:
        err_console.print("memproxy: another process (a running proxy?) kept the store's WAL file from being emptied:"
                          " it may still hold replaced text until that process checkpoints it; stop it and run again")


def _report_replaced(found: Counter[str]) -> None:
    """Say on stderr which secrets were replaced before storing (kinds and counts only)."""
    if found:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(found.items()))
        err_console.print(escape(f"replaced {found.total()} secrets by [secret: <kind>] before storing: {kinds}"))


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
        "id": None if data.get("id") is None else str(data["id"]),
        "created_at": data.get("created_at") if isinstance(data.get("created_at"), int | float) else 0,
    }
    valid = {
        "scope": isinstance(record["scope"], str) and bool(record["scope"]),
        "content": isinstance(record["content"], str) and bool(record["content"].strip()),
        "metadata": isinstance(record["metadata"], dict),
    }
    if bad := [key for key, ok in valid.items() if not ok]:
        raise click.ClickException(f"{source}:{line_no}: missing or invalid {', '.join(bad)}")
    return record


@contextlib.contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (shown on a terminal only); yields `advance(n)`."""
    with Progress(console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


# -- projects --------------------------------------------------------------------------------


@main.group()
def projects() -> None:
    """Per-project ports, for IDEs that send one user agent from every project (JetBrains)."""


@projects.command("add")
@registry_option
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def projects_add(registry: Path | None, path: Path) -> None:
    """Give the project at PATH its own port (the same one every time)."""
    from .ports import PortRangeExhausted, PortRegistry
    from .private import UnsafePath

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
    from .ports import PortRegistry
    from .private import UnsafePath

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
    from .ports import PortRegistry
    from .private import UnsafePath

    try:
        removed = PortRegistry(registry).remove(path)
    except UnsafePath as e:
        raise click.ClickException(str(e)) from None
    if not removed:
        raise click.ClickException(f"{path} is not a registered project")
    console.print(f"removed {escape(str(path))}")


# -- dead letters ----------------------------------------------------------------------------


def default_outbox() -> Path:
    return config.outbox_path()


@main.command("dead-letters")
@click.option("--outbox", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The outbox file (option memory_outbox). Default: outbox.db in the user's data dir.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def dead_letters(outbox: Path | None, as_json: bool) -> None:
    """List turns the memory backend rejected for good (they are never retried)."""
    from .capture import list_dead_letters

    rows = list_dead_letters(outbox or default_outbox())
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
        table.add_row(_when(row["failed_at"]), escape(row["scope"]), str(row["status"] or "-"), str(row["attempts"]),
                      escape(row["error"]), escape(preview))
    console.print(table)
