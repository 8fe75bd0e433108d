"""Boundary: what a client's request can never do, checked in the first hook, before any addon reads it.

- Headers named `x-memproxy-*` are memproxy's own (the SDK gateway's). No client sets them: they are removed
  from every request, so nothing a client sends is taken as an instruction of ours.
- Reverse listeners (project ports included) serve only requests whose Host is a loopback address,
  `localhost`, `memproxy`, or a name in `memory_listener_hosts`. A web page that re-binds its own name to
  127.0.0.1 (DNS rebinding) reaches the listener with its own name as Host, and gets a 403.

mitmproxy rewrites a reverse-mode request's Host to the upstream's before any addon sees it, unless
`keep_host_header` is on. So this addon holds that option on and rewrites the Host itself, after the check,
as mitmproxy would have (Host, and SNI for a TLS upstream); a `keep_host_header` set by the user is honoured.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ReverseMode

from ..logs import Once
from ..wire import OWN_PREFIX, is_loopback

logger = logging.getLogger(__name__)

OWN_NAME = "memproxy"  # the name memproxy answers to: http://memproxy/memory-routing/status
CLIENT_HOST = "memproxy_client_host"  # flow metadata: the Host a reverse-mode client sent, before the rewrite
ANY = "*"
_OWN = OWN_PREFIX.encode()
_TLS_SCHEMES = ("https", "http3", "quic", "tls", "dtls")


def strip_own_headers(req: http.Request) -> None:
    """Remove every `x-memproxy-*` header from a client's request."""
    fields = req.headers.fields
    if any(name[: len(_OWN)].lower() == _OWN for name, _ in fields):
        req.headers.fields = tuple(f for f in fields if f[0][: len(_OWN)].lower() != _OWN)


@functools.lru_cache(maxsize=1024)
def _host_of(authority: str) -> str:
    try:
        host = url.parse_authority(authority, check=False)[0]
    except ValueError:
        return authority.lower()
    return host.lower().rstrip(".")


class Boundary:
    """Removes client-sent `x-memproxy-*` headers; refuses reverse-mode requests for foreign Host names."""

    def __init__(self) -> None:
        self.names: frozenset[str] = frozenset()
        self.keep_host = False  # the user's keep_host_header; the option itself is held on
        self._holding = False
        self._once = Once(logger)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_listener_hosts",
            Sequence[str],
            [],
            "Host names or addresses, besides loopback, 'localhost' and 'memproxy', that reverse listeners and"
            " project ports serve; other Host names get a 403 (DNS rebinding). '*' serves any.",
        )

    def configure(self, updated: set[str]) -> None:
        if "memory_listener_hosts" in updated:
            names = [n.strip() for n in ctx.options.memory_listener_hosts]
            if any(not n for n in names):
                raise exceptions.OptionsError("memory_listener_hosts: an empty name")
            self.names = frozenset(n if n == ANY else _host_of(n) for n in names)
        if "keep_host_header" in updated and not self._holding:
            self.keep_host = ctx.options.keep_host_header
            if not self.keep_host and ctx.master is not None and _loop_running():
                asyncio.get_running_loop().call_soon(self._hold)

    def running(self) -> None:
        self._hold()

    def _hold(self) -> None:
        """Keep mitmproxy from rewriting a reverse-mode Host before this addon has seen it."""
        if ctx.options.keep_host_header:
            return
        self._holding = True
        try:
            ctx.options.update(keep_host_header=True)
        finally:
            self._holding = False

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        strip_own_headers(req)
        mode = flow.client_conn.proxy_mode
        if not isinstance(mode, ReverseMode) or flow.response is not None:
            return
        authority = req.host_header
        host = _host_of(authority) if authority else ""
        if host:
            flow.metadata[CLIENT_HOST] = host
            if not self._serves(host):
                self._refuse(flow, host)
                return
        if not self.keep_host:
            server = flow.server_conn
            req.host_header = url.hostport("https" if server.tls else "http", *server.address[:2])
            if mode.scheme in _TLS_SCHEMES and server.sni is None:
                server.sni = mode.address[0]

    def _serves(self, host: str) -> bool:
        return (
            host in ("localhost", OWN_NAME)
            or host.endswith(".localhost")
            or is_loopback(host)
            or host in self.names
            or ANY in self.names
        )

    def _refuse(self, flow: http.HTTPFlow, host: str) -> None:
        port = flow.client_conn.sockname[1] if flow.client_conn.sockname else 0
        message = (
            f"memproxy refused a request for Host '{host}' on its reverse listener :{port}: it serves only"
            " loopback names and memory_listener_hosts (a web page re-binding its name to this machine?)."
        )
        flow.response = http.Response.make(403, message + "\n", {"content-type": "text/plain; charset=utf-8"})
        flow.comment = message
        self._once(host, "%s", message)  # once per name: a page may try many times


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
