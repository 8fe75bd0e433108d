"""Shared fixtures: the fake upstream, a real mitmdump subprocess, and SDK clients pointed through it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anthropic
import httpx
import httpx2  # the HTTP client the openai and anthropic SDKs are built on
import openai
import pytest
from e2e_helpers import MITMDUMP, SCRUBBED_ENV, free_port, isolated_env, loopback_mitmdump_argv  # noqa: F401 - re-exported
from fakes import FakeUpstream, codex_request
from fakes.supermemory import FakeSupermemory
from memproxy.config import READY_LINE
from mitmproxy import certs
from websockets.sync.client import connect

# Notes show, and the index holds, a memory's date in the local time zone; the tests write theirs in UTC, and the
# processes they start (mitmdump, the clients) inherit it.
os.environ["TZ"] = "UTC"
time.tzset()

ROOT = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fakes"
REDIRECT = FAKES / "redirect.py"
READY_TIMEOUT = 30.0
STARTUP_GRACE = 0.2
ADDON_READY = READY_LINE  # the memory addon's last start-up line
SUPERMEMORY_KEY = "sm_test_SECRET_9f8e7d6c5b4a3f2e1d0c"  # the supermemory fixture's key: no log may show it

Via = Literal["proxy", "reverse"]


class MitmdumpProc:
    """A mitmdump subprocess on 127.0.0.1, its output captured to a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], confdir: Path, port: int, log_path: Path) -> None:
        self.argv, self.env, self.confdir, self.port, self.log_path = argv, env, confdir, port, log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    base_url = proxy_url  # reverse mode: clients talk to the proxy as if it were the API

    @property
    def ca_path(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the mitmproxy CA (regular mode over HTTPS)."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> MitmdumpProc:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0  # a restart appends
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        deadline = time.monotonic() + READY_TIMEOUT
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            try:  # mitmdump exits right after it starts listening if a script logged an error
                self.process.wait(STARTUP_GRACE)
            except subprocess.TimeoutExpired:
                if self._addon_ready(deadline):
                    return self
        code = self.process.poll()
        self.kill()
        state = f"exited with {code}" if code is not None else f"not listening after {READY_TIMEOUT:.0f} s"
        raise RuntimeError(f"mitmdump {state}: {' '.join(self.argv)}\n{self.log_text()}")

    def _addon_ready(self, deadline: float) -> bool:
        """With the memory addon: wait until its `running` hook has finished (it logs a last line)."""
        if not any(str(arg).endswith("addons/memory.py") for arg in self.argv):
            return True
        while time.monotonic() < deadline and self.process.poll() is None:
            if ADDON_READY.encode() in self.log_path.read_bytes()[self._log_start :]:
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate gracefully (addons' done hooks run); kill if that takes too long."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> MitmdumpProc:
        self.stop()
        return self.start()


@pytest.fixture(scope="session", autouse=True)
def own_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """memproxy's default files (the project registry, port registry, stores) of in-process tests go to a
    temporary directory, never to the user's own."""
    base = tmp_path_factory.mktemp("user-dirs")
    saved = {k: os.environ.get(k) for k in XDG_DIRS}
    os.environ.update({k: str(base / k.lower()) for k in XDG_DIRS})
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


XDG_DIRS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")


@pytest.fixture(scope="session")
def mitm_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A confdir holding a mitmproxy CA, generated once per session."""
    confdir = tmp_path_factory.mktemp("mitm-ca")
    certs.CertStore.from_store(confdir, "mitmproxy", 2048)
    return confdir


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def supermemory() -> Iterator[FakeSupermemory]:
    """A fake Supermemory API that takes SUPERMEMORY_KEY."""
    with FakeSupermemory(SUPERMEMORY_KEY) as fake:
        yield fake


@pytest.fixture
def mitmdump(tmp_path: Path, mitm_ca: Path) -> Iterator[Callable[..., MitmdumpProc]]:
    """Factory: ``start(mode=, addon=, upstream=, options=, extra_scripts=, env=, listen_host=) -> MitmdumpProc``; see
    `mitmdump_processes`. Every process is stopped at teardown."""
    with mitmdump_processes(tmp_path, mitm_ca) as start:
        yield start


@contextlib.contextmanager
def mitmdump_processes(tmp_path: Path, mitm_ca: Path) -> Iterator[Callable[..., MitmdumpProc]]:
    """The `mitmdump` fixture's factory, for any scope: every process it started is stopped on exit.

    ``addon`` is a script path relative to the repository (or absolute), or None.
    With ``upstream``, reverse mode targets it, and regular mode loads
    fakes/redirect.py (after the other scripts) so the real API hosts land on it.
    """
    procs: list[MitmdumpProc] = []

    def start(
        *,
        mode: Literal["regular", "reverse"] = "regular",
        addon: str | Path | None = "addons/memory.py",
        upstream: FakeUpstream | None = None,
        options: Mapping[str, str] | None = None,
        extra_scripts: Sequence[str | Path] = (),
        env: Mapping[str, str] | None = None,
        listen_host: str = "127.0.0.1",
    ) -> MitmdumpProc:
        base = tmp_path / f"mitmdump-{len(procs)}"
        confdir = base / "confdir"
        shutil.copytree(mitm_ca, confdir)
        proc_env = isolated_env(base / "home") | {"PYTHONUNBUFFERED": "1"}
        scripts = [ROOT / s for s in ([addon] if addon else []) + list(extra_scripts)]
        if upstream is not None:
            proc_env["MEMPROXY_TEST_UPSTREAM"] = str(upstream.port)
            if mode == "regular" and REDIRECT not in scripts:
                scripts.append(REDIRECT)
        proc_env |= env or {}
        port = free_port()
        if mode == "reverse":
            assert upstream is not None, "reverse mode needs upstream="
        settings = {"confdir": str(confdir), "termlog_verbosity": "info", **(options or {})}
        reverse = upstream.url if mode == "reverse" else None
        argv = loopback_mitmdump_argv(port, settings, scripts, reverse=reverse, listen_host=listen_host)
        proc = MitmdumpProc(argv, proc_env, confdir, port, base / "mitmdump.log")
        procs.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()


# Fake API key, host and path of each SDK's API.
OPENAI_API = ("sk-test-fake-key", "api.openai.com", "/v1")
ANTHROPIC_API = ("sk-ant-test-fake-key", "api.anthropic.com", "")


def api_url(proc: MitmdumpProc, via: Via, host: str, path: str = "") -> str:
    """https://HOST/PATH through the proxy, or PATH on the reverse proxy itself."""
    return f"https://{host}{path}" if via == "proxy" else f"{proc.base_url}{path}"


def _client_options(proc: MitmdumpProc, via: Via, options: Mapping[str, Any]) -> dict[str, Any]:
    """httpx(2) client settings for reaching ``proc``: through it as a proxy (trusting its CA), or directly.

    ``options`` (limits, timeout, event_hooks ...) are added last."""
    proxy = {"proxy": proc.proxy_url, "verify": proc.ssl_context()} if via == "proxy" else {}
    return {**proxy, "trust_env": False, "timeout": 30, **options}


def make_http_client(
    proc: MitmdumpProc, *, via: Via = "proxy", host: str = "api.openai.com", **options: Any
) -> httpx.Client:
    """A raw httpx client: ``base_url`` https://HOST through the proxy, or the reverse proxy itself."""
    return httpx.Client(base_url=api_url(proc, via, host), **_client_options(proc, via, options))


def make_async_http_client(
    proc: MitmdumpProc, *, via: Via = "proxy", host: str = "api.openai.com", **options: Any
) -> httpx.AsyncClient:
    """The async counterpart of ``make_http_client``."""
    return httpx.AsyncClient(base_url=api_url(proc, via, host), **_client_options(proc, via, options))


def _sdk_client(
    sdk: Callable[..., Any], http: Callable[..., Any], api: tuple[str, str, str], proc: MitmdumpProc, via: Via,
    options: Mapping[str, Any],
) -> Any:
    """An SDK client on an httpx2 client; the SDK takes its timeout from that client."""
    key, host, path = api
    http_client = http(**_client_options(proc, via, options))
    return sdk(api_key=key, base_url=api_url(proc, via, host, path), http_client=http_client, max_retries=0)


def make_openai_client(proc: MitmdumpProc, *, via: Via = "proxy", **options: Any) -> openai.OpenAI:
    """An OpenAI SDK client: to https://api.openai.com through the proxy, or to the reverse proxy.

    ``options`` go to its httpx2 client."""
    return _sdk_client(openai.OpenAI, httpx2.Client, OPENAI_API, proc, via, options)


def make_async_openai_client(proc: MitmdumpProc, *, via: Via = "proxy", **options: Any) -> openai.AsyncOpenAI:
    """The async counterpart of ``make_openai_client``."""
    return _sdk_client(openai.AsyncOpenAI, httpx2.AsyncClient, OPENAI_API, proc, via, options)


def make_anthropic_client(proc: MitmdumpProc, *, via: Via = "proxy", **options: Any) -> anthropic.Anthropic:
    """An Anthropic SDK client: to https://api.anthropic.com through the proxy, or to the reverse proxy.

    ``options`` go to its httpx2 client."""
    return _sdk_client(anthropic.Anthropic, httpx2.Client, ANTHROPIC_API, proc, via, options)


def make_async_anthropic_client(proc: MitmdumpProc, *, via: Via = "proxy", **options: Any) -> anthropic.AsyncAnthropic:
    """The async counterpart of ``make_anthropic_client``."""
    return _sdk_client(anthropic.AsyncAnthropic, httpx2.AsyncClient, ANTHROPIC_API, proc, via, options)


def memproxy_client(proc: MitmdumpProc, *, via: Via = "proxy", **options: Any) -> httpx.Client:
    """A client for memproxy's own endpoints (`http://memproxy/...`): through the proxy, or of a reverse
    listener with `memproxy` as its Host."""
    options = {"trust_env": False, "timeout": 30, **options}
    if via == "proxy":
        return httpx.Client(base_url="http://memproxy", proxy=proc.proxy_url, **options)
    headers = {"host": "memproxy", **options.pop("headers", {})}
    return httpx.Client(base_url=proc.base_url, headers=headers, **options)


def routing_status(proc: MitmdumpProc, *, via: Via = "reverse") -> dict[str, Any]:
    """The addon's /memory-routing/status, asked through the proxy or of the reverse proxy."""
    with memproxy_client(proc, via=via) as client:
        return client.get("/memory-routing/status").json()


CODEX_HEADERS = {
    "originator": "codex_exec",
    "openai-beta": "responses_websockets=2026-02-06",
}


def _tunnel(proc: MitmdumpProc, host: str, timeout: float) -> socket.socket:
    """A CONNECT tunnel through the proxy, as a socket with a timeout (so a stuck handshake fails, not hangs)."""
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=timeout)
    sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        if not (chunk := sock.recv(4096)):
            raise ConnectionError("the proxy closed the CONNECT tunnel")
        reply += chunk
    if reply.split(b" ", 2)[1:2] != [b"200"]:
        raise ConnectionError(f"CONNECT refused: {reply[:60]!r}")
    return sock


def _ws_connect(proc: MitmdumpProc, url: str, via: Via, headers: Mapping[str, str], timeout: float):
    """Open the WebSocket; a handshake that gets no answer is retried once on a new connection.
    (Seen rarely, and with a no-op addon too: a WebSocket through the proxy right after mitmdump starts.)"""
    for attempt in (1, 2):
        try:
            return connect(
                url,
                additional_headers=headers,
                user_agent_header="codex_exec/0.169.0 (Linux; x86_64)",
                sock=_tunnel(proc, "api.openai.com", timeout) if via == "proxy" else None,
                ssl=proc.ssl_context() if via == "proxy" else None,
                open_timeout=timeout / 2,
            )
        except (TimeoutError, ConnectionError):
            if attempt == 2:
                raise


def codex_ws(proc: MitmdumpProc, via: Via = "reverse", headers: Mapping[str, str] | None = None, timeout: float = 30.0):
    """A WebSocket to /v1/responses opened like Codex CLI opens it (its headers, a new session)."""
    url = f"ws://127.0.0.1:{proc.port}/v1/responses" if via == "reverse" else "wss://api.openai.com/v1/responses"
    session = str(uuid.uuid4())
    extra = {**CODEX_HEADERS, "session-id": session, "thread-id": session, **(headers or {})}
    return _ws_connect(proc, url, via, extra, timeout)


def ws_responses(
    proc: MitmdumpProc,
    *messages: dict[str, Any],
    via: Via = "reverse",
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Talk Responses over WebSocket like Codex CLI; return every server event.

    Sends each message (default: one ``codex_request()``) and reads events until
    its ``response.completed`` (or an ``error`` event) before sending the next.
    """
    events: list[dict[str, Any]] = []
    with codex_ws(proc, via, headers, timeout) as ws:
        for message in messages or (codex_request(),):
            ws.send(json.dumps(message))
            while True:
                event = json.loads(ws.recv(timeout))
                events.append(event)
                if event.get("type") in ("response.completed", "error"):
                    break
    return events


@pytest.fixture
def http_client() -> Callable[..., httpx.Client]:
    """``http_client(proc, via="proxy"|"reverse", host="api.openai.com")``"""
    return make_http_client


@pytest.fixture
def openai_client() -> Callable[..., openai.OpenAI]:
    """``openai_client(proc, via="proxy"|"reverse")``"""
    return make_openai_client


@pytest.fixture
def anthropic_client() -> Callable[..., anthropic.Anthropic]:
    """``anthropic_client(proc, via="proxy"|"reverse")``"""
    return make_anthropic_client


@pytest.fixture
def ws_responses_client() -> Callable[..., list[dict[str, Any]]]:
    """``ws_responses_client(proc, *messages, via="reverse"|"proxy", headers=None) -> events``"""
    return ws_responses


class TlsServer:
    """A plain HTTPS server on 127.0.0.1 whose certificate comes from its own CA (not mitmproxy's)."""

    def __init__(self, confdir: Path) -> None:
        import http.server
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        store = certs.CertStore.from_store(confdir, "other", 2048)
        entry = store.get_cert("localhost", [x509.DNSName("localhost")])
        key = entry.privatekey.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (confdir / "server.pem").write_bytes(entry.cert.to_pem() + key)
        self.ca_path = confdir / "other-ca-cert.pem"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = b"plain tls server"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(confdir / "server.pem")
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    server = TlsServer(tmp_path / "tls-server")
    yield server
    server.close()
