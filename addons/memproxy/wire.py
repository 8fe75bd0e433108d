"""Facts of the wire shared by every layer: credential headers, memproxy's own header prefix, cookie
challenges, the protocols the gateway serves, and loopback addresses.

A leaf of the package: it imports nothing of memproxy's.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Request headers that carry a credential: redacted in finished flows, never echoed, never forwarded as they are.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie", "x-supermemory-api-key"}
)
MARK = "<redacted>"  # what stands in for a credential or secret that memproxy removed from what it shows
HOP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}
)  # a message's framing, not its content: not copied when a request or reply is passed on
OWN_PREFIX = "x-memproxy-"  # memproxy's own headers (the gateway's); no client sets them
CHALLENGE_STATUSES = frozenset({403, 429, 503})  # with Set-Cookie (or cf-mitigated): a cookie challenge
GATEWAY_PROTOCOLS = ("anthropic", "openai_chat", "openai_responses", "gemini")  # the adapters the gateway serves
INFO_PATH = "/memory-routing/info"  # on http://memproxy/: the route of the caller's headers
STATUS_PATH = "/memory-routing/status"  # on http://memproxy/: what `memproxy status` shows


def is_own_header(name: str) -> bool:
    """Whether a header name is one of memproxy's own (OWN_PREFIX), in any case."""
    return name.lower().startswith(OWN_PREFIX)


def ip_address(text: str) -> IPAddress | None:
    """An IP literal in any form a resolver accepts (`::ffff:127.0.0.1`, `127.1`, `0x7f000001`), or None."""
    try:
        ip: IPAddress = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except (OSError, ValueError, UnicodeError):
            return None
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def reaches_loopback(ip: IPAddress) -> bool:
    """Loopback, or unspecified (a connection to 0.0.0.0 or :: reaches loopback)."""
    return ip.is_loopback or ip.is_unspecified


@functools.lru_cache(maxsize=1024)
def is_loopback(address: str) -> bool:
    """Whether an address literal (a client's peer address, a Host) is this machine's loopback."""
    ip = ip_address(address.strip("[]"))
    return ip is not None and reaches_loopback(ip)
