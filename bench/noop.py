"""Baseline (a): mitmdump with an addon that does nothing on the request path."""

from __future__ import annotations

from mitmproxy import http


class NoOp:
    def request(self, flow: http.HTTPFlow) -> None:
        pass


addons = [NoOp()]
