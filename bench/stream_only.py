"""Streaming baseline: stream `text/event-stream` replies and do nothing else (a no-op addon buffers SSE)."""

from __future__ import annotations

from mitmproxy import http


class StreamOnly:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and "text/event-stream" in flow.response.headers.get("content-type", ""):
            flow.response.stream = True


addons = [StreamOnly()]
