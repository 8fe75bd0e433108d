"""A mitmproxy script for tests: a name whose address flips on every look-up, as a rebinding attacker's does.

`MEMPROXY_TEST_FLIP` is "name=first,second": look-ups of `name` answer `first`, then `second`, then `first`...
Everything else resolves as usual. mitmproxy and the addons resolve through `socket.getaddrinfo` (asyncio runs
it in a thread), so patching it here covers every look-up in the process.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading

_resolve = socket.getaddrinfo
_name, _, _answers = os.environ.get("MEMPROXY_TEST_FLIP", "=").partition("=")
_next = itertools.cycle(_answers.split(",")).__next__
_lock = threading.Lock()


def _flipping(host, port, *args, **kwargs):
    if _name and host == _name:
        with _lock:
            host = _next()
    return _resolve(host, port, *args, **kwargs)


socket.getaddrinfo = _flipping
