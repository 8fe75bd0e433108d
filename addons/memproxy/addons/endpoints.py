"""Endpoints: memproxy answers http://memproxy/memory-routing/info and /memory-routing/status itself.

`info` shows how the rules route the caller's headers (flat JSON, in the seed's shape); `status` is what
`memproxy status` prints. They are answered only to clients on this machine and never to a web page (a
request with an Origin header), through the proxy or as a reverse listener's Host, and never sent on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy.mode_specs import ReverseMode

from ..logs import brief
from ..rules import plain_headers, request_view
from ..wire import INFO_PATH, STATUS_PATH, is_loopback
from .boundary import CLIENT_HOST, OWN_NAME
from .projects import Projects
from .requestpath import RequestPath
from .ruleswatcher import RulesWatcher
from .sdk import Sdk
from .store import Store

logger = logging.getLogger(__name__)



def json_response(data: Any, status: int = 200) -> http.Response:
    return http.Response.make(status, json.dumps(data).encode(), {"content-type": "application/json"})


def for_memproxy(flow: http.HTTPFlow) -> bool:
    """A request for memproxy itself: http://memproxy/... (through the proxy, or as a reverse listener's Host)."""
    if isinstance(flow.client_conn.proxy_mode, ReverseMode):
        return flow.metadata.get(CLIENT_HOST) == OWN_NAME
    return flow.request.host.lower() == OWN_NAME


class Endpoints:
    """Answers memproxy's own endpoints before the request path sees them."""

    def __init__(self, memory: RequestPath, rules: RulesWatcher, store: Store, projects: Projects, sdk: Sdk) -> None:
        self.memory, self.rules, self.store, self.projects, self.sdk = memory, rules, store, projects, sdk
        self.started_at = time.time()

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # A plain function: the flows that are not for memproxy, nearly all, cost no coroutine.
        if not self.memory.enabled or flow.response is not None or self.rules.rules is None or not for_memproxy(flow):
            return None
        return self._answer(flow)

    async def _answer(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        peer = flow.client_conn.peername
        if not (peer and is_loopback(peer[0])) or "origin" in req.headers:
            flow.response = json_response(
                {"error": "memproxy answers only clients on this machine, and never a web page"}, 403
            )
            return
        path = req.path.split("?", 1)[0]
        try:
            if path == INFO_PATH:
                flow.response = json_response(await self.info(flow))
            elif path == STATUS_PATH:
                flow.response = json_response(await self.status())
            else:
                flow.response = json_response({"error": f"memproxy has no {path}"}, 404)
        except Exception as e:  # noqa: BLE001 - answered either way: never sent on to a real host
            logger.warning("memproxy: %s failed: %s", path, brief(e))
            flow.response = json_response({"error": f"memproxy: {brief(e)}"}, 500)

    async def info(self, flow: http.HTTPFlow) -> dict[str, Any]:
        """The routing decision for the caller's headers (and the project of the port it came to)."""
        view = request_view(flow, plain_headers(flow.request.headers), self.projects.project_path,
                            projects=self.memory.names)
        route = await self.memory.match(self.rules.rules, view, time.perf_counter())
        return route.info()

    async def status(self) -> dict[str, Any]:
        """What `memproxy status` shows: backend, outbox, listeners, and requests per client since start."""
        outbox, recall, backend = self.store.outbox, self.store.recall, self.store.backend
        letters: int | str = 0
        if outbox is not None:
            try:
                letters = len(await outbox.dead_letters())
            except Exception as e:  # noqa: BLE001 - a broken outbox is something status must show
                letters = f"unreadable ({brief(e)})"
        return {
            "started_at": self.started_at,
            "rules": str(self.rules.file.path) if self.rules.file else None,
            "backend": {
                "name": backend.name if backend else None,
                "description": backend.describe() if backend else None,
                "recall": recall.breaker.state if recall else None,
            },
            "outbox": {**outbox.stats, "dead_letters": letters} if outbox else None,
            "listen": {"host": ctx.options.listen_host, "port": ctx.options.listen_port, "modes": list(ctx.options.mode)},
            "projects": [{"name": p.name, "path": p.path, "port": p.port} for p in self.projects.projects()],
            "clients": dict(self.memory.clients),
            "recall": recall.latency() if recall else None,
            "sdk_path": self.sdk.status(),
        }
