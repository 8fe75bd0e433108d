"""The request as rules see it, built from a flow: one builder for the request path and `memproxy rules explain`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mitmproxy import http
from mitmproxy.net.http import url

from .model import HeaderDict, RequestView, plain_headers

OVERRIDE_KEY = "memproxy_override"  # flow metadata: the override header's value, taken off the request


@functools.lru_cache(maxsize=256)
def _host_of(authority: str) -> str:
    return url.parse_authority(authority, check=False)[0]


def flow_headers(flow: http.HTTPFlow, override_header: str) -> HeaderDict:
    """The request headers as the client sent them, as a plain dict: the override header, which the request
    path takes off the request (and a saved flow no longer has), comes back from the flow's metadata."""
    headers = plain_headers(flow.request.headers)  # a new dict
    if (value := flow.metadata.get(OVERRIDE_KEY)) is not None:
        headers[override_header.lower()] = value
    return headers


def request_view(
    flow: http.HTTPFlow,
    headers: HeaderDict,
    project_of: Callable[[int], str | None],
    method: str | None = None,
    **body: Any,
) -> RequestView:
    """What the rules see of a flow: request line (`method` for a WebSocket message), headers, listen port and
    its project (`project_of(port)`), and the body (`body`, `raw_body`, `model`). The host is
    `req.pretty_host` read from `headers`, the authority's parse cached."""
    req = flow.request
    port = flow.client_conn.sockname[1] if flow.client_conn.sockname else 0
    authority = (req.authority if req.is_http2 or req.is_http3 else "") or headers.get("host")
    return RequestView(
        method=method or req.method,
        host=_host_of(authority) if authority else req.host,
        path=req.path,
        port=port,
        headers=headers,
        project=project_of(port) if port else None,
        flow=flow,
        **body,
    )
