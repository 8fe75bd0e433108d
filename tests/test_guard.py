"""Unit level: the SSRF guard's judgement of destinations, on synthetic flows (mitmproxy.test)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from memproxy.addons.guard import Guard
from memproxy.addons.ruleswatcher import RulesWatcher
from memproxy.addons.sdk import Sdk
from memproxy.cookies import CookieSessions
from memproxy.gateway import SECRET_HEADER, Gateway
from memproxy.sdkpath import SdkPath
from mitmproxy.connection import Server
from mitmproxy.net.local_ip import get_local_ip
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow
from mitmproxy.tools.web.webaddons import WebAddon

MAIN, PROJECT, WEB, GATEWAY = 8080, 18100, 8081, 40123
LOOPBACK_FORMS = ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "127.9.9.9", "localhost", "LocalHost.",
                  "api.localhost", "::1", "::ffff:127.0.0.1", "0.0.0.0", "0", "::"]  # fmt: skip


def flow_to(host: str, port: int, **headers: str) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.request.host, flow.request.port = host, port
    flow.request.headers.update(headers)
    return flow


async def judge_connection(guard: Guard, host: str, port: int) -> tuple[str | None, tuple]:
    """What the guard made of a connection about to be opened: (error, address to connect to)."""
    data = server_hooks.ServerConnectionHookData(client=tflow.tclient_conn(), server=Server(address=(host, port)))
    if (pending := guard.server_connect(data)) is not None:
        await pending
    return data.server.error, data.server.address


async def judge(guard: Guard, flow: tflow.HTTPFlow, hook: str = "requestheaders") -> int | None:
    """The status the guard answered with, or None if it let the request go."""
    pending = getattr(guard, hook)(flow)
    if pending is not None:
        await pending
    return flow.response.status_code if flow.response else None


@pytest.fixture
def guard():
    g = Guard()
    with taddons.context(g) as tctx:
        tctx.configure(g, listen_host="127.0.0.1", listen_port=MAIN,
                       mode=["regular", f"reverse:https://api.openai.com@{PROJECT}"])
        yield g


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
@pytest.mark.parametrize("port", [MAIN, PROJECT])
async def test_every_form_of_loopback_on_a_listener_port_is_refused(guard, host, port):
    flow = flow_to(host, port)
    assert await judge(guard, flow) == 403
    assert flow.response.headers["content-type"].startswith("text/plain")
    assert b"this proxy's own listener" in flow.response.content
    assert "refused" in flow.comment


async def test_connect_to_a_listener_is_refused(guard):
    flow = flow_to("127.0.0.1", MAIN)
    flow.request.method = "CONNECT"
    assert await judge(guard, flow, "http_connect") == 403


@pytest.mark.parametrize("host, port", [("127.0.0.1", 9999), ("api.openai.com", 443), ("192.0.2.77", MAIN)])
async def test_other_destinations_pass(guard, host, port):
    assert await judge(guard, flow_to(host, port)) is None


async def test_an_answered_flow_is_left_alone(guard):
    flow = flow_to("127.0.0.1", MAIN)
    flow.response = tflow.tresp(status_code=407)
    assert guard.requestheaders(flow) is None and flow.response.status_code == 407


async def test_a_specific_listen_host_is_own_and_a_name_is_resolved():
    g = Guard()
    with taddons.context(g) as tctx:
        tctx.configure(g, listen_host="192.0.2.77", listen_port=MAIN)
        assert await judge(g, flow_to("192.0.2.77", MAIN)) == 403
        assert await judge(g, flow_to("192.0.2.78", MAIN)) is None
        name = socket.gethostname()
        try:
            resolved = {info[4][0] for info in socket.getaddrinfo(name, MAIN)}
        except OSError:
            pytest.skip(f"{name} does not resolve here")
        assert await judge(g, flow_to(name, MAIN)) is None  # a name is judged where it is connected to
        if any(a.startswith("127.") or a == "::1" for a in resolved):
            error, _ = await judge_connection(g, name, MAIN)
            assert error and "own listener" in error, resolved


async def test_a_name_is_resolved_once_and_connected_where_it_was_judged(guard, monkeypatch):
    """DNS rebinding: a name that answers elsewhere on each look-up. The guard looks it up once, and
    mitmproxy connects to the address judged, not to a second answer."""
    answers = iter(["198.51.100.9", "127.0.0.1"])

    def flipping(host, port, *args, **kwargs):
        ip = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", flipping)
    error, address = await judge_connection(guard, "rebind.test", MAIN)
    assert error is None and address == ("198.51.100.9", MAIN)
    error, address = await judge_connection(guard, "rebind.test", MAIN)
    assert error and "own listener" in error
    assert await judge_connection(guard, "api.openai.com", 443) == (None, ("api.openai.com", 443))  # not our port


async def test_all_interfaces_include_the_machines_own_addresses():
    local = get_local_ip("192.0.2.1")  # no packet is sent: the address of the route's interface
    if local is None or local.startswith("127."):
        pytest.skip("no non-loopback interface address here")
    g = Guard()
    with taddons.context(g) as tctx:
        tctx.configure(g, listen_host="", listen_port=MAIN)
        assert await judge(g, flow_to(local, MAIN)) == 403
        assert await judge(g, flow_to("198.51.100.9", MAIN)) is None  # a remote host on the same port number


async def test_mitmweb_port_is_refused():
    g = Guard()
    with taddons.context(WebAddon(), g) as tctx:
        tctx.configure(g, listen_host="127.0.0.1", listen_port=MAIN, web_port=WEB)
        flow = flow_to("localhost", WEB)
        assert await judge(g, flow) == 403
        assert b"mitmweb" in flow.response.content


async def test_only_our_redirect_reaches_the_gateway(tmp_path: Path):
    sdk = Sdk(RulesWatcher())
    sdk.path = SdkPath(tmp_path / "cookies.json", 60, 60)
    g = Guard(sdk)
    with taddons.context(g) as tctx:
        tctx.configure(g, listen_host="127.0.0.1", listen_port=MAIN)
        assert await judge(g, flow_to("127.0.0.1", GATEWAY)) is None  # no gateway running: not ours
        sdk.path.gateway = gateway = Gateway(CookieSessions(tmp_path / "cookies.json"))
        gateway.port, gateway.secret = GATEWAY, "per-start-secret"
        flow = flow_to("127.0.0.1", GATEWAY)
        assert await judge(g, flow) == 403 and b"SDK gateway" in flow.response.content
        assert await judge(g, flow_to("127.0.0.1", GATEWAY, **{SECRET_HEADER: "per-start-secret"})) == 403
        assert await judge_connection(g, "127.0.0.1", GATEWAY) == (None, ("127.0.0.1", GATEWAY))  # the redirect
        error, _ = await judge_connection(g, "localhost", GATEWAY)
        assert error and "SDK gateway" in error
        assert await judge(g, flow_to("192.0.2.77", GATEWAY)) is None  # the gateway listens on loopback only
        tctx.configure(g, memory_guard=False)
        assert await judge(g, flow_to("127.0.0.1", GATEWAY)) is None


async def test_mode_changes_are_followed_and_the_guard_can_be_turned_off(guard, caplog):
    with taddons.context(guard) as tctx:
        tctx.configure(guard, listen_host="127.0.0.1", listen_port=MAIN, mode=["regular", "regular@18111"])
        assert await judge(guard, flow_to("127.0.0.1", 18111)) == 403
        assert await judge(guard, flow_to("127.0.0.1", PROJECT)) is None  # that listener is gone
        tctx.configure(guard, memory_guard=False)
        assert guard.requestheaders(flow_to("127.0.0.1", MAIN)) is None


async def test_each_destination_is_logged_once(guard, caplog):
    for _ in range(3):
        await judge(guard, flow_to("127.0.0.1", MAIN))
    await judge(guard, flow_to("127.0.0.1", PROJECT))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and f"127.0.0.1:{MAIN}" in warnings[0] and f"127.0.0.1:{PROJECT}" in warnings[1]
