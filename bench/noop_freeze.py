"""Baseline (a′): the no-op addon plus what the request path does to the collector once running, gc.freeze().

Freezing the objects of start-up makes every later full collection walk only what requests allocate; it
makes mitmdump itself cheaper, so against (a) alone our ratios would include that gain. (a′) shows its size.
"""

from __future__ import annotations

import gc

from mitmproxy import http


class NoOpFrozen:
    def request(self, flow: http.HTTPFlow) -> None:
        pass

    def running(self) -> None:
        gc.freeze()


addons = [NoOpFrozen()]
