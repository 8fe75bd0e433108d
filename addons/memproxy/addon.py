"""MemoryAddon: the mitmproxy hooks. It routes, recalls, injects, remembers and streams.

Protocol details live in `protocols`, rule logic in `rules`, storage in `memory`
and `capture`; this class only orchestrates them. Every hook fails open: an
exception leaves the flow as the client sent it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import gc
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ReverseMode

from . import config, protocols
from .boundary import CLIENT_HOST, OWN_NAME
from .capture import Outbox, Turn
from .logs import Once, brief
from .memory import Backend, MemoryStore, StoreError, configured_backend, open_store
from .ports import PortRegistry, ProjectListeners
from .protocols.base import Adapter, ReplyAccumulator
from .protocols.sse import SSEParser
from .recall import Recall
from .rules import FILTERS, RequestView, Route, RulesError, RulesFile, plain_headers
from .sdkpath import SdkPath
from .wire import is_loopback

logger = logging.getLogger(__name__)

INFO_PATH = "/memory-routing/info"
STATUS_PATH = "/memory-routing/status"
MARKER = ":brain:"
OVERRIDE_KEY = "memproxy_override"
SERVED = "memproxy_served"  # flow metadata: this flow may have memory
ANY_ORIGIN = "*"
DEFAULT_HOSTS = (
    "api.anthropic.com",
    "api.openai.com",
    "chatgpt.com",
    "generativelanguage.googleapis.com",
    "*.openai.azure.com",
    "openrouter.ai",
    "api.deepseek.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.together.xyz",
    "api.x.ai",
    "api.fireworks.ai",
    "api.cerebras.ai",
    "api.moonshot.ai",
    "dashscope.aliyuncs.com",
    "dashscope-intl.aliyuncs.com",
)


@dataclass(slots=True)
class Pending:
    """A turn in flight: what is needed to capture it once the reply is complete."""

    scope: str
    user: str
    adapter: Adapter
    metadata: dict[str, Any]
    parser: SSEParser | None = None
    reply: ReplyAccumulator | None = None


@dataclass(slots=True)
class Decision:
    """What the request path decided for one LLM request or WebSocket message."""

    route: Route
    content: bytes | None = None  # the new body, if memories were injected
    pending: Pending | None = None
    info: dict[str, Any] = field(default_factory=dict)


def fail_open(hook):
    """Run a hook so that no exception of ours reaches mitmproxy or changes the flow."""

    @functools.wraps(hook)
    async def wrapper(self: MemoryAddon, *args):
        try:
            return await hook(self, *args)
        except Exception as e:  # noqa: BLE001 - fail open is the contract
            logger.warning("memproxy: %s failed, flow passed through unchanged: %s", hook.__name__, brief(e))

    return wrapper


def _json_response(data: Any, status: int = 200) -> http.Response:
    return http.Response.make(status, json.dumps(data).encode(), {"content-type": "application/json"})


# orjson reads integers past 64 bits as floats; a body with 20 digits in a row takes json instead.
DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
LONG_NUMBER = b"0" * 20


def _json_dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(content: bytes) -> tuple[Any, Callable[[Any], bytes]] | None:
    """A JSON body, and the serialiser that writes it back faithfully: orjson (5-8x faster), or json for
    integers past 64 bits (orjson would read them as floats). None for what neither can write back as it
    came (NaN, a BOM, UTF-16, lone surrogates, invalid JSON): such a body passes through untouched."""
    try:
        if LONG_NUMBER not in content.translate(DIGITS):
            return orjson.loads(content), orjson.dumps
        return json.loads(content.decode(), parse_constant=_no_constants), _json_dumps
    except (ValueError, RecursionError):  # orjson.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


@functools.lru_cache(maxsize=256)
def _host_of(authority: str) -> str:
    return url.parse_authority(authority, check=False)[0]


def _pretty_host(req: http.Request, headers: dict[str, str]) -> str:
    """`req.pretty_host` from the plain headers, with the authority's parse cached (it is slow)."""
    authority = (req.authority if req.is_http2 or req.is_http3 else "") or headers.get("host")
    return _host_of(authority) if authority else req.host


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class MemoryAddon:
    """Gives LLM clients a long-term memory: route, recall, inject, remember."""

    def __init__(self) -> None:
        self.rules_file: RulesFile | None = None
        self.store: MemoryStore | None = None
        self.capture: Outbox | None = None
        self.recall: Recall | None = None
        self.backend: Backend | None = None
        self.router: tuple[str, str] | None = None  # Supermemory (base URL, key) for route supermemory_router
        self.pending: dict[str, Pending] = {}
        self._watcher: asyncio.Task | None = None
        self.listeners: ProjectListeners | None = None
        self.sdk: SdkPath | None = None
        self._tasks: set[asyncio.Task] = set()
        self._host_cache: dict[str, bool] = {}
        self.origins: frozenset[str] = frozenset()
        self._once = Once(logger)
        self._running = False
        self.enabled, self.max_body, self.timeout = True, 16 * 1024 * 1024, 0.3  # set from options in configure
        self._started_at = time.time()
        self.clients: Counter[str] = Counter()  # requests per matched rule since start

    # -- lifecycle --------------------------------------------------------

    def load(self, loader: Loader) -> None:
        for noisy in ("httpcore", "httpx"):  # their debug logs print headers: keys and cookies
            logging.getLogger(noisy).setLevel(logging.INFO)
        loader.add_option("memory_enabled", bool, True, "Give LLM flows a memory. Off: pass everything through.")
        loader.add_option(
            "memory_rules", str, "", f"Memory-routing rules file (YAML). Empty: {config.DEFAULT_RULES.name} shipped with memproxy."
        )
        loader.add_option(
            "memory_backend",
            str,
            "",
            "Memory backend: auto (supermemory when SUPERMEMORY_API_KEY is set, else local), local or supermemory."
            " Empty: the rules file's memory.backend (default auto).",
            choices=["", "auto", "local", "supermemory"],
        )
        loader.add_option("memory_db", str, "", "Local store file. Empty: memories.db in the user's data dir.")
        loader.add_option(
            "memory_outbox", str, "", "Durable queue of turns not yet stored. Empty: outbox.db in the user's data dir."
        )
        loader.add_option(
            "memory_retry_max", int, 300, "Longest wait, in seconds, between retries of a failing memory backend."
        )
        loader.add_option(
            "memory_timeout_ms", int, 300, "Time budget of recall per request, in ms; past it the request goes on without memories."
        )
        loader.add_option(
            "memory_hosts",
            Sequence[str],
            list(DEFAULT_HOSTS),
            "Hosts (globs) whose requests get a memory, and whose TLS is decrypted; all other TLS is tunnelled"
            " untouched, and other hosts' requests pass through without memory. '*' is every host.",
        )
        loader.add_option(
            "memory_origins",
            Sequence[str],
            [],
            "Web page origins (scheme://host[:port]) whose requests may have memory. A request with any other"
            " Origin header passes through untouched: no recall, no storage, no override. '*' allows all.",
        )
        loader.add_option(
            "memory_projects", str, "", "Per-project port registry (JSON). Empty: ports.json in the user's config dir."
        )
        loader.add_option(
            "memory_project_mode",
            str,
            "reverse:https://api.openai.com",
            "Listener opened on each registered project's port: a reverse-proxy spec, or 'regular'.",
        )
        loader.add_option(
            "memory_cookies", str, "", "Cookie jars of the SDK path (0600). Empty: cookies.json in the user's data dir."
        )
        loader.add_option(
            "memory_sdk_ttl",
            int,
            3600,
            "After an upstream's cookie challenge, seconds that (scope, host) keeps going through the SDK path.",
        )
        loader.add_option(
            "memory_sdk_timeout", int, 600, "Seconds a request on the SDK path may take, streaming included."
        )
        loader.add_option(
            "memory_max_body", int, 16 * 1024 * 1024, "Request bodies larger than this many bytes pass through untouched."
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "memory_timeout_ms" in updated and opts.memory_timeout_ms < 0:
            raise exceptions.OptionsError("memory_timeout_ms must be >= 0")
        if "memory_max_body" in updated and opts.memory_max_body <= 0:
            raise exceptions.OptionsError("memory_max_body must be > 0")
        if "memory_retry_max" in updated and opts.memory_retry_max <= 0:
            raise exceptions.OptionsError("memory_retry_max must be > 0")
        if "memory_hosts" in updated:
            self._host_cache.clear()
        if "memory_origins" in updated:
            if any(not o.strip() for o in opts.memory_origins):
                raise exceptions.OptionsError("memory_origins: an empty origin")
            self.origins = frozenset(o.strip().lower().rstrip("/") for o in opts.memory_origins)
        # Read on every request: mitmproxy's option lookups are slow for a hot path.
        self.enabled, self.max_body = opts.memory_enabled, opts.memory_max_body
        self.timeout = opts.memory_timeout_ms / 1000
        if "memory_rules" in updated:
            path = Path(opts.memory_rules).expanduser() if opts.memory_rules else config.DEFAULT_RULES
            try:
                self.rules_file = RulesFile(path)
            except RulesError as e:
                self._refuse(f"memory rules not loaded:\n{e}")  # the last good rules stay
                return
        if updated & {"memory_backend", "memory_db", "memory_rules"} and self.rules_file:
            try:
                self._configure_store()
            except ValueError as e:
                self._refuse(str(e))

    def _refuse(self, message: str) -> None:
        """A bad setting: while running, mitmproxy reverts the option; at start-up, mitmdump exits."""
        if self._running:
            raise exceptions.OptionsError(message)
        logger.error("memproxy: %s", message)

    def _configure_store(self) -> None:
        """Choose the backend from options, the rules file and the environment; swap stores if it changed."""
        opts, config = ctx.options, self.rules_file.rules.memory
        backend = configured_backend(opts.memory_backend, opts.memory_db, config)
        try:  # the Memory Router needs Supermemory's key and URL, even when memories are kept locally
            supermemory = configured_backend("supermemory", None, config)
            self.router = (supermemory.base_url, supermemory.api_key or "")
        except ValueError:
            self.router = None
        if backend == self.backend:
            return
        old, self.backend, self.store = self.store, backend, open_store(backend)
        self.recall = Recall(self.store)
        if self.capture:
            self.capture.store = self.store
        if self._running:
            asyncio.get_running_loop().create_task(self._open_store(old))

    async def _open_store(self, old: MemoryStore | None = None) -> None:
        if old:
            await old.close()
        try:
            await self.store.open()
            logger.info("memproxy: %s", self.backend.describe())
        except StoreError as e:
            logger.warning("memproxy: memory store unavailable, requests pass through without memory: %s", e)

    async def running(self) -> None:
        self._running = True
        if self.store is None or self.rules_file is None:
            return
        opts = ctx.options
        # Everything a request needs exists before the first await: the proxy is already listening.
        outbox = opts.memory_outbox or config.outbox_path()
        self.capture = Outbox(outbox, self.store, max_delay=opts.memory_retry_max)
        self.listeners = ProjectListeners(PortRegistry(opts.memory_projects or None), opts.memory_project_mode)
        cookies = opts.memory_cookies or config.cookies_path()
        self.sdk = SdkPath(Path(cookies), opts.memory_sdk_ttl, opts.memory_sdk_timeout)
        # The cookie jars are restored before the ready line, so that a (scope, host) a challenge put on the SDK
        # path stays there across a restart; the gateway (and litellm) warms up only if a rule routes to it.
        restoring = self._spawn(self.sdk.load(), "cookie jars")
        if "sdk" in self.rules_file.rules.routes:
            self._spawn(self.sdk.ready(), "SDK path")
        await self.capture.start()
        await self._open_store()
        await asyncio.wait([restoring])
        self._watcher = self._spawn(self._watch(), "watcher")
        logger.info("memproxy: rules from %s", self.rules_file.path)
        logger.info(
            config.READY_LINE + ": HTTPS_PROXY=http://%s:%d and trust %s/mitmproxy-ca-cert.pem"
            " (NODE_EXTRA_CA_CERTS for Node tools), or use a reverse listener as base URL; see README.md",
            opts.listen_host or "127.0.0.1",
            opts.listen_port or 8080,
            opts.confdir,
        )
        # What start-up made (modules, mitmproxy's and our objects) lives as long as the process: kept out of
        # the collector's reach, a full collection walks only what requests allocate (bench: -30 us a request).
        gc.freeze()

    async def done(self) -> None:
        if self._watcher:
            self._watcher.cancel()
        if self.sdk:
            await self.sdk.close()
        if self.capture:
            await self.capture.close(timeout=2.0)
        if self.store:
            await self.store.close()

    async def _watch(self) -> None:
        """Once a second: follow the port registry, and reload the rules file if it changed."""
        while True:
            try:
                await self.listeners.sync()
            except Exception as e:  # noqa: BLE001 - a bad registry must not stop the watcher
                self._once("listeners", "memproxy: project listeners not updated: %s", brief(e))
            await asyncio.sleep(1.0)
            await self._reload_rules()

    async def _reload_rules(self) -> None:
        """Reload the rules file when it changes; a bad edit keeps the last good rules."""
        if self.rules_file is None:
            return
        try:
            reloaded, error = await asyncio.to_thread(self.rules_file.check)
        except Exception as e:  # noqa: BLE001
            reloaded, error = False, brief(e)
        if reloaded:
            logger.info("memproxy: rules reloaded from %s", self.rules_file.path)
            try:
                self._configure_store()
            except ValueError as e:
                logger.warning("memproxy: memory backend unchanged: %s", e)
        elif error:
            logger.warning("memproxy: rules not reloaded, keeping the last good rules: %s", error)

    # -- host scope ---------------------------------------------------------

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Decrypt only known LLM hosts (regular mode); tunnel everything else untouched."""
        if isinstance(data.context.client.proxy_mode, ReverseMode):
            return
        host = data.client_hello.sni or (data.context.server.address or ("",))[0]
        if not self._decrypts(host):
            data.ignore_connection = True

    def _decrypts(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if (hit := self._host_cache.get(host)) is None:
            hit = any(fnmatch.fnmatchcase(host, p.lower()) for p in ctx.options.memory_hosts)
            if len(self._host_cache) > 4096:
                self._host_cache.clear()
            self._host_cache[host] = hit
        return hit

    # -- request path -------------------------------------------------------

    @fail_open
    async def request(self, flow: http.HTTPFlow) -> None:
        if not self.enabled or flow.response is not None or self.rules_file is None:
            return
        req = flow.request
        if self._for_us(flow):
            await self._answer(flow)
            return
        if not self._serves(flow):
            return
        flow.metadata[SERVED] = True  # a WebSocket's messages are judged by their handshake
        self._take_override(flow)
        adapter = protocols.detect_path(req.method, req.path)
        raw = req.raw_content
        if adapter is None or not raw or len(raw) > self.max_body:
            return
        headers = self._headers(flow)
        if not _is_json(headers.get("content-type", "")):
            return
        try:
            content = req.get_content()
        except ValueError:  # an encoding we cannot undo: passed through untouched
            return
        if len(content) > self.max_body:  # a small compressed body can decode to a huge one
            return
        if (parsed := _parse(content)) is None or not adapter.matches_body(parsed[0]):
            return
        body, dumps = parsed
        decision = await self._decide(flow, adapter, headers, body, content, dumps)
        if decision.route.actions.route == "supermemory_router":
            self._to_router(flow, decision.route)
        elif self.sdk:
            if self.sdk.sessions is None:
                await self.sdk.restored(self.timeout)
            if self.sdk.wants(decision.route, req.host, adapter.name):
                await self.sdk.redirect(flow, adapter.name, decision.route)
                decision.info["route"] = "sdk"
        if decision.content is not None:
            req.set_content(decision.content)
        if decision.pending:
            self.pending[flow.id] = decision.pending
        self._annotate(flow, decision)

    def _serves(self, flow: http.HTTPFlow) -> bool:
        """Whether a flow may have memory: it goes to a memory host (or came to a reverse listener, whose
        Host the boundary checked), and no web page sent it (an Origin not on `memory_origins`)."""
        if not isinstance(flow.client_conn.proxy_mode, ReverseMode) and not self._decrypts(flow.request.host):
            return False
        origin = flow.request.headers.get("origin")
        return origin is None or self._origin_allowed(origin)

    def _origin_allowed(self, origin: str) -> bool:
        origins = self.origins
        return ANY_ORIGIN in origins or origin.strip().lower().rstrip("/") in origins

    def _for_us(self, flow: http.HTTPFlow) -> bool:
        """A request for memproxy itself: http://memproxy/... (through the proxy, or as a reverse listener's Host)."""
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            return flow.metadata.get(CLIENT_HOST) == OWN_NAME
        return flow.request.host.lower() == OWN_NAME

    async def _answer(self, flow: http.HTTPFlow) -> None:
        """Answer /memory-routing/info and /status, only to clients on this machine and never to a web page."""
        req = flow.request
        peer = flow.client_conn.peername
        if not (peer and is_loopback(peer[0])) or "origin" in req.headers:
            flow.response = _json_response(
                {"error": "memproxy answers only clients on this machine, and never a web page"}, 403
            )
            return
        path = req.path.split("?", 1)[0]
        try:
            if path == INFO_PATH:
                self._answer_info(flow)
            elif path == STATUS_PATH:
                flow.response = _json_response(await self.status())
            else:
                flow.response = _json_response({"error": f"memproxy has no {path}"}, 404)
        except Exception as e:  # noqa: BLE001 - answered either way: never sent on to a real host
            logger.warning("memproxy: %s failed: %s", path, brief(e))
            flow.response = _json_response({"error": f"memproxy: {brief(e)}"}, 500)

    def _to_router(self, flow: http.HTTPFlow, route: Route) -> None:
        """Send the request through Supermemory's Memory Router: `<base>/v3/<original URL>`."""
        if self.router is None:
            self._once("router", "memproxy: route supermemory_router needs a Supermemory API key; passed through instead")
            return
        base_url, api_key = self.router
        flow.request.url = f"{base_url.rstrip('/')}/v3/{flow.request.url}"
        flow.request.headers["x-supermemory-api-key"] = api_key
        flow.request.headers["x-sm-user-id"] = route.user_id

    def _spawn(self, coro, name: str) -> asyncio.Task:
        """A background task that is kept referenced and whose failure is logged, not lost."""
        task = asyncio.get_running_loop().create_task(coro, name=f"memproxy {name}")
        self._tasks.add(task)

        def finished(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.warning("memproxy: %s failed: %s", name, brief(t.exception()))

        task.add_done_callback(finished)
        return task

    def _view(self, flow: http.HTTPFlow, headers: dict[str, str], method: str | None = None, **body: Any) -> RequestView:
        """What the rules see of a flow: request line (`method` for a WebSocket message), headers, listen
        port and its project, and body."""
        req = flow.request
        port = flow.client_conn.sockname[1] if flow.client_conn.sockname else 0
        project = self.listeners.project_for_port(port) if self.listeners else None
        return RequestView(
            method=method or req.method,
            host=_pretty_host(req, headers),
            path=req.path,
            port=port,
            headers=headers,
            project=project.path if project else None,
            flow=flow,
            **body,
        )

    def _take_override(self, flow: http.HTTPFlow) -> None:
        """Strip the user-id override header before upstream; keep its value for routing if the client is on
        this machine (another machine, when listening on all interfaces, cannot pick a scope)."""
        name = self.rules_file.rules.override_header
        if values := flow.request.headers.get_all(name):  # one pass over the headers when it is absent
            flow.request.headers.set_all(name, [])
            peer = flow.client_conn.peername
            if peer and is_loopback(peer[0]):
                flow.metadata[OVERRIDE_KEY] = ", ".join(values)

    def _headers(self, flow: http.HTTPFlow) -> dict[str, str]:
        """The request headers as the client sent them (with a stripped override header), as a plain dict."""
        headers = plain_headers(flow.request.headers)
        if (value := flow.metadata.get(OVERRIDE_KEY)) is not None:
            headers[self.rules_file.rules.override_header.lower()] = value
        return headers

    async def _decide(
        self, flow: http.HTTPFlow, adapter: Adapter, headers: dict[str, str], body: Any, raw: bytes,
        dumps: Callable[[Any], bytes], method: str | None = None,
    ) -> Decision:
        """Route one request body, recall and inject memories (serialised by `dumps`), and prepare its capture."""
        t0 = time.perf_counter()
        req = flow.request
        model = adapter.model(req.path, body)
        rules = self.rules_file.rules
        text = raw.decode("utf-8", "replace") if rules.reads_raw_body else None
        route = rules.match(self._view(flow, headers, method, body=body, raw_body=text, model=model), self.timeout)
        self.clients[route.rule or "default"] += 1
        actions = route.actions
        decision = Decision(route)
        info = decision.info = {
            "user_id": route.user_id,
            "rule": route.rule,
            "is_default": route.is_default,
            "adapter": adapter.name,
            "model": model,
            "auxiliary": actions.auxiliary,
            "injected": 0,
        }
        if actions.auxiliary or not actions.allows_model(model):
            info["skipped"] = "auxiliary" if actions.auxiliary else "model not allowed"
            return decision
        if actions.route == "supermemory_router":
            info["skipped"] = "sent through the Supermemory router"
            return decision
        user = adapter.query(body, "last_user")
        if actions.recall:
            query = user if actions.query == "last_user" else adapter.query(body, actions.query)
            memories = await self._search(route, query)
            text = protocols.frame_context(memories, route.user_id, actions.max_chars)
            if text and adapter.inject(body, text, actions.inject):
                decision.content = dumps(body)
                info["injected"] = len(memories)
        if actions.store and user:
            agent = headers.get("user-agent", "")
            metadata = {
                "client": agent.split("/", 1)[0].strip()[:64] or adapter.name,
                "rule": route.rule or "default",
                "model": model or "",
                "project": FILTERS["basename"](route.captures.get("cwd", "")),
            }
            decision.pending = Pending(route.user_id, user, adapter, metadata)
        info["ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return decision

    async def _search(self, route: Route, query: str) -> tuple[str, ...]:
        """The contents of the route's memories for `query`, within the time budget; any failure means none."""
        a, timeout = route.actions, self.timeout
        search = self.recall.search(route.user_id, query, a.max_results, a.threshold, timeout)
        if not a.profile:
            return await search
        facts, found = await asyncio.gather(self.recall.profile(route.user_id, timeout), search)
        return facts + found

    def _annotate(self, flow: http.HTTPFlow, decision: Decision) -> None:
        """Show the decision in mitmweb: marker, comment and metadata."""
        info = decision.info
        flow.metadata["memproxy"] = info
        flow.marked = MARKER
        if info.get("skipped"):
            flow.comment = f"memproxy: {info['user_id']} · rule {info['rule'] or 'default'} · {info['skipped']}, untouched"
        else:
            flow.comment = (
                f"memproxy: {info['user_id']} · rule {info['rule'] or 'default'}"
                f" · {info['injected']} {'memory' if info['injected'] == 1 else 'memories'} injected"
                f" · {info.get('ms', 0)} ms"
            )

    def _answer_info(self, flow: http.HTTPFlow) -> None:
        """Answer /memory-routing/info with the routing decision for the caller's headers."""
        flow.response = _json_response(
            self.rules_file.rules.match(self._view(flow, self._headers(flow)), self.timeout).info()
        )

    async def status(self) -> dict[str, Any]:
        """What `memproxy status` shows: backend, outbox, listeners, and requests per client since start."""
        outbox = self.capture
        if outbox is not None:
            try:
                letters: int | str = len(await outbox.dead_letters())
            except Exception as e:  # noqa: BLE001 - a broken outbox is something status must show
                letters = f"unreadable ({brief(e)})"
        return {
            "started_at": self._started_at,
            "rules": str(self.rules_file.path) if self.rules_file else None,
            "backend": {
                "name": self.backend.name if self.backend else None,
                "description": self.backend.describe() if self.backend else None,
                "recall": self.recall.breaker.state if self.recall else None,
            },
            "outbox": {**outbox.stats, "dead_letters": letters} if outbox else None,
            "listen": {"host": ctx.options.listen_host, "port": ctx.options.listen_port, "modes": list(ctx.options.mode)},
            "projects": [
                {"name": p.name, "path": p.path, "port": p.port} for p in self.listeners.projects()
            ] if self.listeners else [],
            "clients": dict(self.clients),
            "recall": self.recall.latency() if self.recall else None,
            "sdk_path": {
                "gateway_port": (self.sdk.gateway.port or None) if self.sdk and self.sdk.gateway else None,
                "litellm_loaded": "litellm" in sys.modules,
            },
        }

    # -- response path ------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream SSE chunk by chunk; for a pending turn, tee a copy into its reply accumulator."""
        resp = flow.response
        if not self.enabled or resp is None or (self.sdk and self.sdk.is_challenge(flow)):
            return
        if "text/event-stream" not in resp.headers.get("content-type", ""):
            return
        pending = self.pending.get(flow.id)
        if pending is None or resp.status_code >= 300:
            self.pending.pop(flow.id, None)
            resp.stream = True
            return
        pending.parser, pending.reply = SSEParser(), pending.adapter.accumulator()
        resp.stream = functools.partial(self._tee, flow.id, pending)

    def _tee(self, flow_id: str, pending: Pending, chunk: bytes) -> bytes:
        """The stream callable: forwards `chunk` unchanged, feeding a copy to capture."""
        try:
            for event, data in pending.parser.feed(chunk):  # b"" ends the stream: flushes a last event
                pending.reply.feed(event, data)
            if not chunk and self.pending.pop(flow_id, None) is not None:
                self._remember(pending, pending.reply.text())
        except Exception as e:  # noqa: BLE001 - capture must never disturb the stream
            self.pending.pop(flow_id, None)
            self._once("tee", "memproxy: capture of a streamed reply failed: %s", brief(e))
        return chunk

    @fail_open
    async def response(self, flow: http.HTTPFlow) -> None:
        if self.sdk and self.sdk.is_challenge(flow):
            await self.sdk.replay(flow)
        pending = self.pending.pop(flow.id, None)
        resp = flow.response
        if pending is None or resp is None or resp.stream or resp.status_code >= 300:
            return
        content = resp.get_content()
        if "text/event-stream" in resp.headers.get("content-type", ""):  # an SSE reply that was not streamed
            reply = pending.adapter.accumulator()
            for event, data in SSEParser().feed(content) + SSEParser().feed(b""):
                reply.feed(event, data)
            self._remember(pending, reply.text())
            return
        body = json.loads(content)
        parts = body if isinstance(body, list) else [body]  # Gemini may answer a JSON array of chunks
        self._remember(pending, "".join(pending.adapter.reply_from_json(p) for p in parts))

    def error(self, flow: http.HTTPFlow) -> None:
        self.pending.pop(flow.id, None)

    def _remember(self, pending: Pending, reply: str) -> None:
        turn = Turn.make(pending.scope, pending.user, reply, pending.metadata)
        if turn and self.capture is not None:
            self.recall.invalidate(turn.scope)
            self.capture.submit(turn)

    # -- WebSocket (OpenAI Responses, as Codex CLI speaks it) ----------------

    @fail_open
    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        if not self.enabled or flow.websocket is None or self.rules_file is None or SERVED not in flow.metadata:
            return
        message = flow.websocket.messages[-1]
        if not message.is_text:
            return
        if not message.from_client:
            pending = self.pending.get(flow.id)
            if pending and pending.reply:
                pending.reply.feed(None, message.text)
                if pending.reply.done:
                    del self.pending[flow.id]
                    self._remember(pending, pending.reply.text())
            return
        adapter = protocols.detect_path("POST", flow.request.path)
        if adapter is None or len(message.content) > self.max_body:
            return
        if (parsed := _parse(message.content)) is None:
            return
        body, dumps = parsed
        if not isinstance(body, dict) or body.get("type") != "response.create" or not adapter.matches_body(body):
            return
        decision = await self._decide(flow, adapter, self._headers(flow), body, message.content, dumps, method="POST")
        if decision.content is not None:
            message.content = decision.content
        self.pending.pop(flow.id, None)
        if decision.pending:
            decision.pending.reply = adapter.accumulator()
            self.pending[flow.id] = decision.pending
        self._annotate(flow, decision)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.pending.pop(flow.id, None)
