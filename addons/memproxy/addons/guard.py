"""SSRF guard: a request through the proxy to the proxy itself is refused.

"The proxy itself": every listener of this mitmproxy (all `mode` entries, per-project ones
included), mitmweb's UI (`web_port`), and the SDK path's loopback gateway, which only the
addon's own redirect may reach. mitmproxy refuses to connect to its own listeners when the
destination is spelled `localhost` or `127.0.0.1`, but knows nothing of other spellings, of
names, of mitmweb or of the gateway.

Judged twice, both times only for a destination port that is one of ours (the hot path is one
set lookup on the port):
- the request, as the client sent it (before any other addon may change it; addons/memory.py
  orders the guard early): a loopback spelling or one of our listen addresses gets a 403 of ours;
- the connection, in `server_connect`: a name is resolved once, the addresses are judged, and
  mitmproxy connects to the address judged. A name that resolves elsewhere on a second look-up
  (DNS rebinding) cannot slip past.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.utils import human

from ..logs import Once
from ..wire import IPAddress, ip_address, reaches_loopback

if TYPE_CHECKING:
    from ..gateway import Gateway
    from .sdk import Sdk

logger = logging.getLogger(__name__)

ALL_INTERFACES = ""  # a listen host: every address of the machine
GATEWAY_HOST = "127.0.0.1"  # where the addon's redirect points a flow for the SDK gateway
_EVERY = ("", "0.0.0.0", "::")
_OPTIONS = frozenset({"mode", "listen_host", "listen_port", "web_host", "web_port"})
_LOCALHOST = ipaddress.IPv4Address("127.0.0.1")
_MAX_CACHE = 1024


def _literal(host: str) -> list[IPAddress] | None:
    """The addresses a host spelled as a literal (or `localhost`) stands for; None for a name to resolve."""
    if host == "localhost" or host.endswith(".localhost"):
        return [_LOCALHOST]
    ip = ip_address(host)
    return [ip] if ip is not None else None


class Guard:
    """Refuses requests through the proxy to its own listeners, mitmweb and the SDK gateway."""

    def __init__(self, sdk: Sdk | None = None) -> None:
        self.sdk = sdk  # for the SDK gateway's port, once it runs
        self.enabled = True
        self.own: dict[int, tuple[str, frozenset[str]]] = {}  # port -> (what, listen hosts)
        self._local: dict[IPAddress, bool] = {}
        self._once = Once(logger)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_guard",
            bool,
            True,
            "Refuse requests through the proxy to the proxy itself: its listeners, mitmweb, the SDK gateway.",
        )

    def configure(self, updated: set[str]) -> None:
        if "memory_guard" in updated:
            self.enabled = ctx.options.memory_guard
        if updated & _OPTIONS:
            self.own = self._own()

    def running(self) -> None:
        self.own = self._own()  # with listen_port 0: the ports now bound

    def _own(self) -> dict[int, tuple[str, frozenset[str]]]:
        """Our listeners (as configured and as bound) and mitmweb's UI: port -> (what, listen hosts)."""
        opts = ctx.options
        listeners: list[tuple[str, int | None]] = []
        for spec in opts.mode:
            try:
                mode = ProxyMode.parse(spec)
            except ValueError:  # Proxyserver reports it
                continue
            listeners.append((mode.listen_host(opts.listen_host), mode.listen_port(opts.listen_port)))
        if proxyserver := ctx.master.addons.get("proxyserver"):
            listeners += [(str(host), port) for host, port, *_ in proxyserver.listen_addrs()]
        own: dict[int, tuple[str, set[str]]] = {}
        for host, port in listeners:
            if port:
                own.setdefault(port, ("this proxy's own listener", set()))[1].add(_listen_host(host))
        if "web_port" in opts:
            own[opts.web_port] = ("mitmweb's web interface", {_listen_host(opts.web_host)})
        return {port: (what, frozenset(hosts)) for port, (what, hosts) in own.items()}

    # -- the request: sync, so that the common case costs a set lookup; literals only, no look-up

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._check(flow)

    def _check(self, flow: http.HTTPFlow) -> None:
        if not self.enabled or flow.response is not None:  # answered already, e.g. by proxy authentication
            return
        req = flow.request
        port = req.port
        gateway = self._gateway()
        if port not in self.own and (gateway is None or port != gateway.port):
            return
        host = req.host.lower().rstrip(".")
        if (ips := _literal(host)) is not None and (what := self._ours(port, ips, gateway)):
            message = self._message(host, port, what)
            flow.response = http.Response.make(403, message + "\n", {"content-type": "text/plain; charset=utf-8"})
            flow.comment = message
            self._warn(host, port, message, flow.client_conn.peername)

    # -- the connection: the address mitmproxy will connect to is the one judged

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> Awaitable[None] | None:
        if not self.enabled or data.server.address is None or data.server.error:
            return None
        host, port = data.server.address[:2]
        gateway = self._gateway()
        if port not in self.own and (gateway is None or port != gateway.port):
            return None
        if gateway is not None and port == gateway.port and host == GATEWAY_HOST:
            return None  # the addon's redirect: a client asking for this was refused at its request
        return self._judge_connection(data, host.lower().rstrip("."), port, gateway)

    async def _judge_connection(
        self, data: server_hooks.ServerConnectionHookData, host: str, port: int, gateway: Gateway | None
    ) -> None:
        ips = _literal(host)
        if ips is None:
            ips = await self._resolve(host, port)
            if not ips:
                return  # mitmproxy will not reach it either
            if data.server.tls and data.server.sni is None:
                data.server.sni = host  # TLS still names the host, not the address it is pinned to
            data.server.address = (str(ips[0]), port)  # no second look-up: connect where we looked
        if what := self._ours(port, ips, gateway):
            message = self._message(host, port, what)
            data.server.error = message
            self._warn(host, port, message, data.client.peername)

    def _ours(self, port: int, ips: list[IPAddress], gateway: Gateway | None) -> str | None:
        """What of ours a connection to `ips` on `port` would reach, or None."""
        if port in self.own:
            what, hosts = self.own[port]
            if any(self._is_own(ip, hosts) for ip in ips):
                return what
        if gateway is not None and port == gateway.port and any(reaches_loopback(ip) for ip in ips):
            return "memproxy's SDK gateway"
        return None

    def _gateway(self) -> Gateway | None:
        gateway = self.sdk.gateway if self.sdk is not None else None
        return gateway if gateway is not None and gateway.port else None

    @staticmethod
    async def _resolve(host: str, port: int) -> list[IPAddress]:
        """The addresses of a name, resolved off the event loop."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []
        return [ip for *_, sockaddr in infos if (ip := ip_address(str(sockaddr[0]))) is not None]

    def _is_own(self, ip: IPAddress, hosts: frozenset[str]) -> bool:
        if reaches_loopback(ip) or str(ip) in hosts:
            return True
        return ALL_INTERFACES in hosts and self._is_local(ip)

    def _is_local(self, ip: IPAddress) -> bool:
        """Whether `ip` is an address of this machine: only those can be bound."""
        if (hit := self._local.get(ip)) is None:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                try:
                    sock.bind((str(ip), 0))
                    hit = True
                except OSError:
                    hit = False
            if len(self._local) > _MAX_CACHE:
                self._local.clear()
            self._local[ip] = hit
        return hit

    @staticmethod
    def _message(host: str, port: int, what: str) -> str:
        return f"memproxy refused a request through the proxy to {human.format_address((host, port))}: that is {what}."

    def _warn(self, host: str, port: int, message: str, client: tuple | None) -> None:
        """Log a refusal once per destination."""
        self._once((host, port), "%s (client %s)", message, human.format_address(client))


def _listen_host(host: str) -> str:
    host = host.lower().strip("[]")
    if host in _EVERY:
        return ALL_INTERFACES
    return str(ip) if (ip := ip_address(host)) is not None else host
