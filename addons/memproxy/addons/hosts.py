"""Hosts: which requests may have memory, and whose TLS is decrypted.

Requests to a host on `memory_hosts` (globs) may have memory, and in regular mode only those hosts' TLS is
decrypted: every other connection is tunnelled untouched. A reverse listener's requests may have memory
too: the boundary has checked their Host. A request that a web page sent (an Origin header not on
`memory_origins`) passes through untouched: no recall, no storage, no override.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import ReverseMode

ANY_ORIGIN = "*"
MAX_CACHE = 4096  # hosts remembered; past this, all are forgotten
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


def origin_key(origin: str) -> str:
    """An Origin as `memory_origins` compares it: trimmed, lower-case, no trailing slash."""
    return origin.strip().lower().rstrip("/")


class Hosts:
    """Decrypts the TLS of memory hosts only, and says which flows may have memory."""

    def __init__(self) -> None:
        self.patterns: tuple[str, ...] = DEFAULT_HOSTS
        self.origins: frozenset[str] = frozenset()
        self._cache: dict[str, bool] = {}

    def load(self, loader: Loader) -> None:
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

    def configure(self, updated: set[str]) -> None:
        if "memory_hosts" in updated:
            if any(not p.strip() for p in ctx.options.memory_hosts):
                raise exceptions.OptionsError("memory_hosts: an empty host")
            self.patterns = tuple(p.lower() for p in ctx.options.memory_hosts)
            self._cache.clear()
        if "memory_origins" in updated:
            if any(not o.strip() for o in ctx.options.memory_origins):
                raise exceptions.OptionsError("memory_origins: an empty origin")
            self.origins = frozenset(origin_key(o) for o in ctx.options.memory_origins)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Decrypt only memory hosts (regular mode); tunnel everything else untouched."""
        if isinstance(data.context.client.proxy_mode, ReverseMode):
            return
        host = data.client_hello.sni or (data.context.server.address or ("",))[0]
        if not self.decrypts(host):
            data.ignore_connection = True

    def decrypts(self, host: str) -> bool:
        """Whether `host` is a memory host (cached: the request path asks on every request)."""
        host = host.lower().rstrip(".")
        if (hit := self._cache.get(host)) is None:
            hit = any(fnmatch.fnmatchcase(host, p) for p in self.patterns)
            if len(self._cache) > MAX_CACHE:
                self._cache.clear()
            self._cache[host] = hit
        return hit

    def serves(self, flow: http.HTTPFlow) -> bool:
        """Whether a flow may have memory: it goes to a memory host (or came to a reverse listener, whose
        Host the boundary checked), and no web page sent it (an Origin not on `memory_origins`)."""
        if not isinstance(flow.client_conn.proxy_mode, ReverseMode) and not self.decrypts(flow.request.host):
            return False
        origin = flow.request.headers.get("origin")
        return origin is None or ANY_ORIGIN in self.origins or origin_key(origin) in self.origins
