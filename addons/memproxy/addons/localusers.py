"""Local users: the proxy serves the user who started it, not every account on the machine.

Any local account can connect to a loopback port, and a connection to memproxy gets the memories of the
scope it routes to (a Claude Code-shaped request naming another user's working directory is enough). On
Linux the kernel says which user owns each TCP socket: a loopback client whose socket belongs to another
user (root excepted) has its connection closed before anything is read. The owner is asked of the kernel's
socket table by the connection's four addresses (netlink `sock_diag`: one exact look-up, where
/proc/net/tcp would be a scan of every socket). Elsewhere, and for clients that are not on
loopback (the override header and `/memory-routing/*` are refused to those), nothing is checked here.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct

from mitmproxy import connection, ctx
from mitmproxy.addonmanager import Loader

from ..logs import Once
from ..wire import is_loopback

logger = logging.getLogger(__name__)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_MSG_UID = 16 + 4 + 48 + 12  # nlmsghdr, inet_diag_msg's family/state/timer/retrans, sockid, expires/rqueue/wqueue
AVAILABLE = hasattr(socket, "AF_NETLINK")


def socket_owner(peer: tuple, local: tuple) -> int | None:
    """The uid owning the client socket of a TCP connection from `peer` to `local`; None if there is none.

    A client's IPv4 socket seen through a dual-stack listener has IPv4-mapped addresses: it is looked up as
    IPv4 first. Raises OSError if the kernel cannot be asked."""
    src, dst = ipaddress.ip_address(peer[0].split("%", 1)[0]), ipaddress.ip_address(local[0].split("%", 1)[0])
    forms = []
    if isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address):
        if src.ipv4_mapped is not None and dst.ipv4_mapped is not None:
            forms.append((socket.AF_INET, src.ipv4_mapped, dst.ipv4_mapped))
        forms.append((socket.AF_INET6, src, dst))
    else:
        forms.append((socket.AF_INET, src, dst))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as diag:
        for family, a, b in forms:
            sockid = struct.pack("!HH16s16s", peer[1], local[1], a.packed.ljust(16, b"\0"), b.packed.ljust(16, b"\0"))
            sockid += struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)  # any interface; no cookie: match the addresses
            request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
            diag.send(struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + request)
            answer = diag.recv(4096)
            if struct.unpack_from("=IH", answer)[1] != NLMSG_ERROR and len(answer) >= _MSG_UID + 4:
                return struct.unpack_from("=I", answer, _MSG_UID)[0]
    return None


class LocalUsers:
    """Closes loopback connections from other local users (Linux)."""

    def __init__(self) -> None:
        self.enabled = AVAILABLE
        self.me = os.geteuid() if hasattr(os, "geteuid") else -1
        self._once = Once(logger)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_other_users",
            bool,
            False,
            "Serve loopback connections from other local users too. Off: only the user who started the proxy"
            " (and root) may connect (Linux).",
        )

    def configure(self, updated: set[str]) -> None:
        if "memory_other_users" in updated:
            self.enabled = AVAILABLE and not ctx.options.memory_other_users

    def client_connected(self, client: connection.Client) -> None:
        # Synchronous on purpose: mitmproxy does not expect a client to be gone after an awaited
        # client_connected hook, and the look-up is one netlink round trip.
        peer, local = client.peername, client.sockname
        if not self.enabled or not peer or not local or not is_loopback(peer[0]):
            return
        try:
            uid = socket_owner(peer, local)
        except OSError as e:
            self._once("netlink", "memproxy: cannot ask the kernel who owns a connection (%s);"
                            " other local users are not told apart", e)
            return
        if uid is None or uid in (self.me, 0):
            return  # not found: the client is gone already
        client.error = f"memproxy serves only the user who started it (uid {self.me}), not uid {uid}"
        self._once(uid, "memproxy: refused a connection from another local user (uid %d)", uid)
