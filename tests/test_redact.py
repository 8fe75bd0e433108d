"""Unit level: redaction of a finished flow's credentials, on synthetic flows (mitmproxy.test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from memproxy.addons.redact import Redact
from memproxy.addons.ruleswatcher import RulesWatcher
from memproxy.addons.sdk import Sdk
from memproxy.addons.store import Router, Store
from memproxy.cookies import CookieSessions
from memproxy.gateway import SECRET_HEADER, Gateway
from memproxy.sdkpath import SdkPath
from memproxy.wire import MARK
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

CREDENTIALS = {
    "Authorization": "Bearer sk-secret-1",
    "proxy-authorization": "Basic dXNlcjpzZWNyZXQ=",
    "X-Api-Key": "sk-ant-secret-2",
    "api-key": "azure-secret-3",
    "x-goog-api-key": "AIza-secret-4",
    "cookie": "session=secret-5; theme=dark",
    "x-supermemory-api-key": "sm-secret-6",
}


def finished_flow(path: str = "/v1beta/models/gemini-2.5-flash:generateContent?alt=sse&key=AIza-secret-7") -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.path = path
    flow.request.headers.update(CREDENTIALS)
    flow.request.headers["user-agent"] = "GeminiCLI/0.9"
    flow.response.headers["set-cookie"] = "cf_clearance=upstream; Path=/"
    return flow


@pytest.fixture
def redact():
    r = Redact()
    with taddons.context(r) as tctx:
        tctx.configure(r)
        yield r


def test_credentials_and_the_key_parameter_are_replaced_once_the_response_is_in(redact):
    flow = finished_flow()
    response = flow.response.copy()
    redact.response(flow)
    assert {k: flow.request.headers[k] for k in CREDENTIALS} == dict.fromkeys(CREDENTIALS, MARK)
    assert flow.request.headers["user-agent"] == "GeminiCLI/0.9"
    assert flow.request.path == "/v1beta/models/gemini-2.5-flash:generateContent?alt=sse&key=%3Credacted%3E"
    assert flow.request.query["key"] == MARK
    assert flow.response.get_state() == response.get_state()  # the client's response is the upstream's


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/x?monkey=1&keys=2", "/x?key=a&other=b"])
def test_only_a_parameter_named_key_changes(redact, path):
    flow = tflow.tflow(req=tutils.treq(path=path.encode()))
    redact.error(flow)
    expected = path.replace("key=a", "key=%3Credacted%3E")
    assert flow.request.path == expected


def test_a_websocket_handshake_is_shown_redacted_and_keeps_its_credentials_until_it_ends(redact):
    flow = tflow.twebsocketflow()
    flow.request.headers["authorization"] = "Bearer sk-secret-ws"
    redact.response(flow)  # the 101: Dumper and mitmweb show the flow now
    assert flow.request.headers["authorization"] == MARK
    redact.websocket_start(flow)  # the rules still route its messages by the request's headers
    assert flow.request.headers["authorization"] == "Bearer sk-secret-ws"
    redact.websocket_end(flow)
    assert flow.request.headers["authorization"] == MARK and not redact._held


def test_off_leaves_flows_as_they_were():
    r = Redact()
    with taddons.context(r) as tctx:
        tctx.configure(r, memory_redact=False)
        flow = finished_flow()
        before = flow.request.get_state()
        r.response(flow)
        assert flow.request.get_state() == before


def test_headers_carrying_memproxys_own_secrets_are_replaced_whatever_their_name(tmp_path: Path):
    rules = RulesWatcher()
    store, sdk = Store(rules), Sdk(rules)
    store.router = Router("https://api.supermemory.ai", "sm_supermemory_key_123")
    sdk.path = SdkPath(tmp_path / "cookies.json", 60, 60)
    sdk.path.gateway = Gateway(CookieSessions(tmp_path / "cookies.json"))
    sdk.path.gateway.secret = "gateway-secret-456"
    r = Redact(store, sdk)
    with taddons.context(r) as tctx:
        tctx.configure(r)
        flow = tflow.tflow(resp=True)
        flow.request.headers[SECRET_HEADER] = "gateway-secret-456"
        flow.request.headers["x-custom"] = "token sm_supermemory_key_123"
        flow.request.headers["x-short"] = "abc"
        r.response(flow)
        assert flow.request.headers[SECRET_HEADER] == MARK and flow.request.headers["x-custom"] == MARK
        assert flow.request.headers["x-short"] == "abc"



def test_flows_unfinished_at_shutdown_are_redacted_before_save_writes_them(redact):
    streaming, finished = tflow.tflow(), tflow.tflow(resp=True)
    for flow in (streaming, finished):
        flow.request.headers["authorization"] = "Bearer sk-secret-open"
        redact.request(flow)
    redact.response(finished)
    redact.done()
    assert streaming.request.headers["authorization"] == finished.request.headers["authorization"] == MARK
    assert not redact._live
