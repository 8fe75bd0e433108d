"""Unit level: the boundary on synthetic flows (mitmproxy.test): client headers of ours, a reverse listener's Host."""

from __future__ import annotations

import pytest
from memproxy.addons.boundary import CLIENT_HOST, Boundary, strip_own_headers
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow


def reverse_flow(host: str, spec: str = "reverse:https://api.openai.com") -> tflow.HTTPFlow:
    flow = tflow.tflow()
    mode = ProxyMode.parse(spec)
    flow.client_conn.proxy_mode = mode
    flow.server_conn.address = mode.address
    flow.server_conn.tls = mode.scheme == "https"
    flow.server_conn.sni = None
    flow.request.headers["host"] = host
    return flow


@pytest.fixture
def boundary():
    b = Boundary()
    with taddons.context(Proxyserver(), b) as tctx:  # Proxyserver declares keep_host_header
        tctx.configure(b, memory_listener_hosts=["LAN.example."])
        yield b, tctx


def test_every_header_of_ours_is_removed_whatever_its_case():
    flow = tflow.tflow()
    flow.request.headers.update({"X-MemProxy-Sdk": "{}", "x-memproxy-secret": "s", "x-memproxyish": "kept", "a": "b"})
    strip_own_headers(flow.request)
    assert dict(flow.request.headers) == {**{k: v for k, v in tflow.tflow().request.headers.items()},
                                          "x-memproxyish": "kept", "a": "b"}


@pytest.mark.parametrize("host, name", [
    ("127.0.0.1:8082", "127.0.0.1"), ("localhost:8082", "localhost"), ("[::1]:8082", "::1"), ("memproxy", "memproxy"),
    ("LAN.example:8082", "lan.example"), ("api.localhost", "api.localhost"),
])  # fmt: skip
def test_a_reverse_listener_serves_loopback_and_named_hosts_and_rewrites_the_host(boundary, host, name):
    b, _ = boundary
    flow = reverse_flow(host)
    b.requestheaders(flow)
    assert flow.response is None
    assert flow.request.headers["host"] == "api.openai.com" and flow.server_conn.sni == "api.openai.com"
    assert flow.metadata[CLIENT_HOST] == name


@pytest.mark.parametrize("host", ["rebind.example:8082", "127.0.0.1.nip.io", "memproxy.example", "192.0.2.9"])
def test_a_reverse_listener_refuses_other_host_names(boundary, host):
    b, _ = boundary
    flow = reverse_flow(host)
    b.requestheaders(flow)
    assert flow.response.status_code == 403 and b"memory_listener_hosts" in flow.response.content


def test_a_keep_host_header_of_the_users_own_is_honoured(boundary):
    b, tctx = boundary
    tctx.configure(b, keep_host_header=True)
    flow = reverse_flow("127.0.0.1:8082")
    b.requestheaders(flow)
    assert flow.response is None and flow.request.headers["host"] == "127.0.0.1:8082"


def test_regular_mode_has_no_host_check(boundary):
    b, _ = boundary
    flow = tflow.tflow()
    flow.request.headers["host"] = "rebind.example"
    b.requestheaders(flow)
    assert flow.response is None and flow.request.headers["host"] == "rebind.example"


def test_any_host_when_configured(boundary):
    b, tctx = boundary
    tctx.configure(b, memory_listener_hosts=["*"])
    flow = reverse_flow("rebind.example")
    b.requestheaders(flow)
    assert flow.response is None
