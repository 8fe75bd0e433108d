"""SSRF guard: a request through the proxy to the proxy itself gets a 403 of ours.

"The proxy itself": every listener of this mitmproxy (all `mode` entries, per-project ones
included), mitmweb's UI (`web_port`), and the SDK path's loopback gateway unless the request
carries the gateway's secret. mitmproxy refuses to connect to its own listeners (a 502), but
knows nothing of mitmweb or the gateway.

A destination is judged as the client sent it, before any other addon may change it: the
guard runs first (addons/memory.py orders it). The hot path is one set lookup on the port;
only a request to one of our ports has its host parsed (or resolved) and compared with the
loopback range, the listen hosts and, for listeners on all interfaces, the machine's own
addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.utils import human

if TYPE_CHECKING:
    from .addon import MemoryAddon
    from .reroute import Gateway

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALL_INTERFACES = ""  # a listen host: every address of the machine
_EVERY = ("", "0.0.0.0", "::")
_OPTIONS = frozenset({"mode", "listen_host", "listen_port", "web_host", "web_port"})
_LOCALHOST = ipaddress.IPv4Address("127.0.0.1")
_MAX_CACHE = 1024


def _ip(text: str) -> IPAddress | None:
    """An IP literal in any form a resolver accepts (`::ffff:127.0.0.1`, `127.1`, `0x7f000001`), or None."""
    try:
        ip: IPAddress = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except (OSError, ValueError, UnicodeError):
            return None
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def _is_loopback(ip: IPAddress) -> bool:
    """Loopback, or unspecified (a connection to 0.0.0.0 or :: reaches loopback)."""
    return ip.is_loopback or ip.is_unspecified


class Guard:
    """Refuses requests through the proxy to its own listeners, mitmweb and the SDK gateway."""

    def __init__(self, memory: MemoryAddon | None = None) -> None:
        self.memory = memory  # for the SDK gateway's port and secret, once it runs
        self.enabled = True
        self.own: dict[int, tuple[str, frozenset[str]]] = {}  # port -> (what, listen hosts)
        self._local: dict[IPAddress, bool] = {}
        self._warned: set[tuple[str, int]] = set()

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_guard",
            bool,
            True,
            "Refuse (403) requests through the proxy to the proxy itself: its listeners, mitmweb, the SDK gateway.",
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

    # -- hooks: sync, so that the common case costs a set lookup; an awaitable only for our ports

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self._check(flow)

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self._check(flow)

    def _check(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if not self.enabled or flow.response is not None:  # answered already, e.g. by proxy authentication
            return None
        port = flow.request.port
        gateway = self._gateway()
        if port in self.own or (gateway is not None and port == gateway.port):
            return self._judge(flow, gateway)
        return None

    def _gateway(self) -> Gateway | None:
        sdk = self.memory.sdk if self.memory is not None else None
        gateway = sdk.gateway if sdk is not None else None
        return gateway if gateway is not None and gateway.port else None

    async def _judge(self, flow: http.HTTPFlow, gateway: Gateway | None) -> None:
        req = flow.request
        host, port = req.host.lower().rstrip("."), req.port
        ips = await self._addresses(host, port)
        if port in self.own:
            what, hosts = self.own[port]
            if host in hosts or any(self._is_own(ip, hosts) for ip in ips):
                self._refuse(flow, host, port, what)
                return
        if gateway is not None and port == gateway.port and any(_is_loopback(ip) for ip in ips):
            from .reroute import SECRET_HEADER  # loaded already: the gateway runs

            given = req.headers.get(SECRET_HEADER, "").encode()
            if not secrets.compare_digest(given, gateway.secret.encode()):
                self._refuse(flow, host, port, "memproxy's SDK gateway (without its secret)")

    async def _addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses a connection to `host` would go to; a name is resolved (off the event loop)."""
        if host == "localhost" or host.endswith(".localhost"):
            return [_LOCALHOST]
        if (ip := _ip(host)) is not None:
            return [ip]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []  # mitmproxy will not reach it either
        return [ip for *_, sockaddr in infos if (ip := _ip(str(sockaddr[0]))) is not None]

    def _is_own(self, ip: IPAddress, hosts: frozenset[str]) -> bool:
        if _is_loopback(ip) or str(ip) in hosts:
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

    def _refuse(self, flow: http.HTTPFlow, host: str, port: int, what: str) -> None:
        message = f"memproxy refused a request through the proxy to {human.format_address((host, port))}: that is {what}."
        flow.response = http.Response.make(403, message + "\n", {"content-type": "text/plain; charset=utf-8"})
        flow.comment = message
        if (host, port) not in self._warned:
            if len(self._warned) > _MAX_CACHE:
                self._warned.clear()
            self._warned.add((host, port))
            logger.warning("%s (client %s)", message, human.format_address(flow.client_conn.peername))


def _listen_host(host: str) -> str:
    host = host.lower().strip("[]")
    if host in _EVERY:
        return ALL_INTERFACES
    return str(ip) if (ip := _ip(host)) is not None else host
