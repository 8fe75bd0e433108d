"""The SDK path as the addon sees it: when a flow takes it, pointing the flow at the gateway, cookie challenges,
and the cookie jars serving the requests that stay on the direct path.

What goes to the gateway never carries a client's own ``x-memproxy-*`` header: those are the
gateway's, and only the addon sets them (see ``Gateway.request_headers``).

The jar of (scope, host) serves the whole host: after a challenge, a client's requests that never go to the
gateway (its settings calls, its WebSocket upgrades, an LLM request whose rule keeps it on the direct path)
carry the jar's cookies too, and a challenge to one of them leaves its cookies in the jar for the client's own
retry. Such a request names no scope (the rules route LLM bodies), so it uses the jar of the scope that its
client (the user agent's product token) last had on that host, or the default scope.

The heavy parts (cookies.py pulls in httpx, gateway.py aiohttp and litellm) are imported lazily, in threads,
so that mitmdump starts without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from .rules import Route
from .wire import CHALLENGE_STATUSES, GATEWAY_PROTOCOLS, HOP_HEADERS, is_own_header

if TYPE_CHECKING:
    from .cookies import CookieSessions
    from .gateway import Gateway

logger = logging.getLogger(__name__)
RESEND_WINDOW = 30.0  # seconds after a 307 in which the same (scope, host) gets a replay instead
MAX_CLIENTS = 256  # pairs kept by each map below ((client, host), (scope, host)); past this, the least recent goes


def asks_for_cookies(resp: http.Response | None) -> bool:
    """Whether a reply asks for cookies, in any protocol: 403/429/503 with Set-Cookie, or Cloudflare's
    cf-mitigated."""
    return (
        resp is not None
        and resp.status_code in CHALLENGE_STATUSES
        and ("set-cookie" in resp.headers or "cf-mitigated" in resp.headers)
    )


def client_of(req: http.Request) -> str:
    """The client that sent a request, as its user agent's product token (`claude-cli`, `codex_exec`)."""
    return req.headers.get("user-agent", "").split("/", 1)[0].strip()[:64]


def _origin(req: http.Request) -> str:
    return req.url[: len(req.url) - len(req.path)]


class SdkPath:
    """Cookie jars (loaded after start-up) and the loopback LiteLLM gateway (started on first use)."""

    def __init__(self, cookies: Path, ttl: int, timeout: int, resend: re.Pattern[str] | None = None) -> None:
        self.cookies_path, self.ttl, self.timeout = cookies, ttl, timeout
        self.resend = resend  # user agents asked to send a challenged request again (see `answer_challenge`)
        self._resent: OrderedDict[tuple[str, str], float] = OrderedDict()  # (scope, host) -> when last sent back
        self.sessions: CookieSessions | None = None
        self.gateway: Gateway | None = None
        self._module: Any = None  # memproxy.gateway, once imported
        self._lock = asyncio.Lock()
        self._restored = asyncio.Event()
        self._scopes: OrderedDict[tuple[str, str], str] = OrderedDict()  # (client, host) -> its last LLM scope

    def limit(self, ttl: int, timeout: int) -> None:
        """New limits: later cookie challenges keep their (scope, host) on the SDK path for `ttl` seconds, and
        later replays through the gateway may take `timeout` seconds."""
        self.ttl, self.timeout = ttl, timeout
        if self.sessions is not None:
            self.sessions.ttl = ttl

    async def load(self) -> None:
        """Restore the cookie jars and the (scope, host) pairs that must take the SDK path (once)."""
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        if self.sessions is None:
            cookies = await asyncio.to_thread(importlib.import_module, "memproxy.cookies")
            sessions = cookies.CookieSessions(self.cookies_path, ttl=self.ttl)
            await sessions.load()
            self.sessions = sessions
            self._restored.set()
            await sessions.prepare_tls()

    async def restored(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, until the jars are restored: at start-up the proxy listens before
        they are, and a (scope, host) that a challenge put on the SDK path must stay there across a restart."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._restored.wait(), timeout)

    async def ready(self, translate: bool = False) -> Gateway:
        """The gateway, started (imported in a thread) on first use; with `translate`, litellm imported too."""
        async with self._lock:
            await self._load()
            if self.gateway is None:
                self._module = await asyncio.to_thread(importlib.import_module, "memproxy.gateway")
                self.gateway = self._module.Gateway(self.sessions)
        await self.gateway.start()
        if translate:
            await self._module.warm_litellm()
        return self.gateway

    async def close(self) -> None:
        if self.gateway:
            await self.gateway.close()
        if self.sessions:
            await self.sessions.aclose()

    def wants(self, route: Route, host: str, protocol: str) -> bool:
        """Whether this request takes the SDK path: its rule says so, or its host asked for cookies."""
        if protocol not in GATEWAY_PROTOCOLS:
            return False
        return route.actions.route == "sdk" or (self.sessions is not None and self.sessions.requires_sdk(route.scope, host))

    async def redirect(self, flow: http.HTTPFlow, protocol: str, route: Route) -> None:
        """Point the flow at the gateway, which serves it through litellm, streaming as it goes."""
        gateway = await self.ready()
        req = flow.request
        for name in {k.lower() for k in req.headers if is_own_header(k)}:
            del req.headers[name]
        sdk = route.actions.sdk  # the rules file's own mapping, never one a request carries
        headers = gateway.request_headers(protocol=protocol, upstream=_origin(req), scope=route.scope, sdk=sdk)
        req.headers.update(headers)
        req.scheme, req.host, req.port = "http", "127.0.0.1", gateway.port

    def is_challenge(self, flow: http.HTTPFlow, protocol: str) -> bool:
        """Whether the reply to a request in `protocol` is an LLM upstream asking for cookies (403/429/503 with
        Set-Cookie, or Cloudflare's cf-mitigated)."""
        return protocol in GATEWAY_PROTOCOLS and asks_for_cookies(flow.response)

    # -- the jars on the direct path --------------------------------------

    def used(self, flow: http.HTTPFlow, scope: str) -> None:
        """Note the scope of an LLM request: its client's other requests to that host use that scope's jar."""
        key = (client_of(flow.request), flow.request.host.lower())
        self._scopes[key] = scope
        self._scopes.move_to_end(key)
        if len(self._scopes) > MAX_CLIENTS:
            self._scopes.popitem(last=False)

    def scope_of(self, flow: http.HTTPFlow, default: str) -> str:
        """The scope whose jar a request that names none uses: its client's last on that host, or `default`."""
        return self._scopes.get((client_of(flow.request), flow.request.host.lower()), default)

    def attach(self, flow: http.HTTPFlow, scope: str | None, default: str) -> None:
        """Give a request on the direct path the cookies of its jar (that of `scope`, or else of its client's
        scope), after the client's own. A host whose jars never held a cookie costs one set lookup."""
        sessions, req = self.sessions, flow.request
        if sessions is None or not sessions.has_cookies(req.host):
            return
        if scope is None:
            scope = self.scope_of(flow, default)
        sent = "; ".join(req.headers.get_all("cookie"))
        if (header := sessions.cookie_header(scope, req.host, req.url, sent)) is not None:
            req.headers["cookie"] = header  # one header; Redact hides its value once the request has gone

    def learn(self, flow: http.HTTPFlow, scope: str | None, default: str) -> None:
        """Keep the cookies that a reply on the direct path sets: all those of a challenge (the client's own
        retry then carries them), and those of any other reply while the jar holds cookies of that host (so
        that they stay current, as a browser's would; a host that never challenged is left alone). Nothing is
        replayed, and the scope is not moved onto the SDK path."""
        resp, sessions, req = flow.response, self.sessions, flow.request
        if sessions is None or resp is None or "set-cookie" not in resp.headers:
            return
        challenged = asks_for_cookies(resp)
        if not (challenged or sessions.has_cookies(req.host)):
            return
        if scope is None:
            scope = self.scope_of(flow, default)
        if challenged or sessions.holds(scope, req.host):
            sessions.note_cookies(scope, req.host, resp.headers.get_all("set-cookie"))
        if challenged:
            logger.info("memproxy: %s asked for cookies; kept for the next requests of %s", req.host, scope)

    async def answer_challenge(self, flow: http.HTTPFlow, protocol: str, scope: str) -> None:
        """Keep the challenge's cookies and put (scope, host) on the SDK path; then answer the client so that it
        sends the request again (a 307 to the same URL) if its user agent is known to, and else with the
        gateway's reply to a replay. mitmproxy streams a reply only from the flow's own upstream, so only the
        request sent again streams; a replay's reply arrives in one piece."""
        req = flow.request
        gateway = await self.ready()  # the jars are loaded by then, even right after a start
        self.sessions.note_challenge(scope, req.host, flow.response.headers.get_all("set-cookie"))
        if self._resends(req, scope):
            flow.response = http.Response.make(307, b"", {"location": req.path, "cache-control": "no-store"})
            logger.info("memproxy: %s asked for cookies; %s now goes through the SDK path (sent again)", req.host, scope)
            return
        await self._replay(flow, protocol, scope, gateway)
        logger.info("memproxy: %s asked for cookies; %s now goes through the SDK path", req.host, scope)

    def _resends(self, req: http.Request, scope: str) -> bool:
        """Whether the client is asked to send a challenged request again: its user agent follows a 307 with
        the body (`resend`), and its (scope, host) was not sent back within RESEND_WINDOW seconds (a request
        sent again that meets a challenge once more gets the replay: no loop)."""
        if self.resend is None or not self.resend.search(req.headers.get("user-agent", "")):
            return False
        key, now = (scope, req.host.lower()), time.monotonic()
        if now - self._resent.get(key, -RESEND_WINDOW) < RESEND_WINDOW:
            return False
        self._resent[key] = now
        self._resent.move_to_end(key)
        if len(self._resent) > MAX_CLIENTS:
            self._resent.popitem(last=False)
        return True

    async def _replay(self, flow: http.HTTPFlow, protocol: str, scope: str, gateway: Gateway) -> None:
        """Send the challenged request through the gateway and answer with its reply, read whole."""
        import httpx

        req = flow.request
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_HEADERS and not is_own_header(k)}
        headers |= gateway.request_headers(protocol=protocol, upstream=_origin(req), scope=scope)
        async with httpx.AsyncClient(trust_env=False, timeout=self.timeout) as client:
            r = await client.post(gateway.url + req.path, content=req.get_content(strict=False), headers=headers)
        kept = [(k.encode(), v.encode()) for k, v in r.headers.multi_items() if k.lower() not in HOP_HEADERS]
        flow.response = http.Response.make(r.status_code, r.content, kept)
