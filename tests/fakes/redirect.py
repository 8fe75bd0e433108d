"""A mitmproxy script for tests: send flows for the real LLM API hosts to the local fake upstream.

Load it after the addon under test. The fake upstream's port comes from
``MEMPROXY_TEST_UPSTREAM``; ``MEMPROXY_TEST_REDIRECT_HOSTS`` (comma-separated)
adds hosts. Path, headers (the original Host included) and body are kept.
"""

from __future__ import annotations

import os

from mitmproxy import http

API_HOSTS = {"api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"}


def request(flow: http.HTTPFlow) -> None:
    port = os.environ.get("MEMPROXY_TEST_UPSTREAM")
    extra = {h.strip() for h in os.environ.get("MEMPROXY_TEST_REDIRECT_HOSTS", "").split(",") if h.strip()}
    if not port or flow.request.host not in API_HOSTS | extra:
        return
    host_header = flow.request.host_header
    flow.request.scheme, flow.request.host, flow.request.port = "http", "127.0.0.1", int(port)
    flow.request.host_header = host_header
