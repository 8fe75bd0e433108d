"""A trivial mitmproxy script for validating the test harness: streams SSE responses, nothing else."""

from __future__ import annotations

from mitmproxy import http


def responseheaders(flow: http.HTTPFlow) -> None:
    assert flow.response is not None
    if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
        flow.response.stream = True
