"""Hard test: the SSRF guard. Through a real mitmdump (and a real mitmweb), requests to the proxy itself get 403.

"Itself": the main listener, a per-project listener (a reverse listener pointed at itself), the SDK
gateway without its secret, and mitmweb's web interface. Each is tried as an absolute-form HTTP
request, through CONNECT (HTTPS), and as a WebSocket upgrade; requests to a fake upstream on another
loopback port, and our own redirect of a flow to the gateway, still go through.
"""

from __future__ import annotations

import http.client
import shutil
import socket
from pathlib import Path

import httpx
import pytest
from conftest import REDIRECT, MitmdumpProc, free_port, isolated_env
from e2e_helpers import wait_until
from memproxy.cli.common import listening
from memproxy.cli.proxy import mitmdump_argv
from memproxy.ports import PortRegistry
from memproxy.wire import MARK

pytestmark = pytest.mark.e2e

RULES = "rules:\n  - name: everyone\n    user_id: guard-test\n"
SDK_RULE = "  - name: sdk\n    match: {headers: {x-test-route: sdk}}\n    user_id: team\n    route: sdk\n"
SDK_RULES = RULES.replace("rules:\n", "rules:\n" + SDK_RULE)  # the gateway (and litellm) start with mitmdump
OURS = "text/plain"  # the guard answers in plain text; the gateway's own refusal is JSON
WEB_PASSWORD = "mitmweb-test-password"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def raw_refused(port: int, head: str) -> bool:
    """Send a request head to 127.0.0.1:`port`: is the answer the guard's 403?"""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status == 403 and answer.read().startswith(b"memproxy refused")


def connect(port: int) -> str:
    return f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"


def websocket_upgrade(target: str, host: str) -> str:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def refused(response: httpx.Response) -> bool:
    return response.status_code == 403 and response.headers["content-type"].startswith(OURS) and (
        "memproxy refused" in response.text
    )


def start(mitmdump, upstream, tmp_path: Path, rules: str = RULES) -> tuple[MitmdumpProc, int]:
    """mitmdump with the addon and one registered project, whose reverse listener points at itself."""
    low = free_port()
    project = PortRegistry(tmp_path / "ports.json", (low, low + 40)).get_or_allocate_port(tmp_path / "work" / "selfie")
    (tmp_path / "rules.yaml").write_text(rules)
    proc = mitmdump(
        upstream=upstream,
        addon=None,
        extra_scripts=[REDIRECT, "addons/memory.py"],  # the SDK path's origin is the fake upstream
        options={
            "memory_rules": str(tmp_path / "rules.yaml"),
            "memory_db": str(tmp_path / "memories.db"),
            "memory_outbox": str(tmp_path / "outbox.db"),
            "memory_cookies": str(tmp_path / "cookies.json"),
            "memory_projects": str(tmp_path / "ports.json"),
            "memory_project_mode": f"reverse:http://127.0.0.1:{project}",
            "memory_hosts": "*",  # the redirected flows go to the fake upstream on 127.0.0.1
        },
    )
    assert wait_until(lambda: listening("127.0.0.1", project)), proc.log_text()
    return proc, project


def test_requests_to_our_listeners_are_refused_and_others_pass(mitmdump, upstream, tmp_path):
    proc, project = start(mitmdump, upstream, tmp_path)
    main = proc.port
    with httpx.Client(proxy=proc.proxy_url, trust_env=False, timeout=30) as client:
        # Absolute-form HTTP to each listener, under several names for loopback (httpx writes [::1] unbracketed).
        for host in ("127.0.0.1", "localhost", "127.1", "0.0.0.0"):
            for port in (main, project):
                assert refused(client.get(f"http://{host}:{port}/memory-routing/status")), (host, port)
        # A request to an upstream on another loopback port passes.
        assert client.post(f"http://127.0.0.1:{upstream.port}/v1/chat/completions", json=CHAT).json()["choices"]

    # Origin-form, sent to the proxy's port as if it were the server: the Host header names the destination.
    assert raw_refused(main, f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{main}\r\n\r\n")

    # CONNECT (what an HTTPS request through the proxy starts with) to each listener.
    for port in (main, project):
        assert raw_refused(main, connect(port)), port
    with httpx.Client(proxy=proc.proxy_url, trust_env=False, timeout=30, verify=proc.ssl_context()) as client:
        with pytest.raises(httpx.ProxyError, match="403"):
            client.get(f"https://localhost:{main}/")
        assert client.post("https://api.openai.com/v1/chat/completions", json=CHAT).status_code == 200

    # WebSocket upgrades: through the proxy to a listener, and to the reverse listener pointed at itself.
    for port in (main, project):
        head = websocket_upgrade(f"http://127.0.0.1:{port}/v1/responses", f"127.0.0.1:{port}")
        assert raw_refused(main, head), port
    assert raw_refused(project, websocket_upgrade("/v1/responses", f"127.0.0.1:{project}"))
    assert refused(httpx.get(f"http://127.0.0.1:{project}/v1/models", trust_env=False, timeout=30))

    # One warning per destination, however often it is tried.
    log = proc.log_text()
    assert log.count(f"to 127.0.0.1:{main}: that is this proxy's own listener") == 1, log
    assert log.count(f"to 127.0.0.1:{project}: that is this proxy's own listener") == 1, log


@pytest.mark.slow
def test_the_sdk_gateway_is_refused_without_its_secret(mitmdump, upstream, openai_client, tmp_path):
    """The gateway starts at start-up for an `sdk` rule (litellm is imported: slow). Our own redirect to it passes."""
    proc, _ = start(mitmdump, upstream, tmp_path, SDK_RULES)
    with httpx.Client(proxy=proc.proxy_url, trust_env=False, timeout=30) as client:

        def gateway_port() -> int | None:
            return client.get("http://memproxy/memory-routing/status").json()["sdk_path"]["gateway_port"]

        assert wait_until(gateway_port, timeout=60), proc.log_text()
        gateway = gateway_port()
        for host in ("127.0.0.1", "localhost"):
            r = client.post(f"http://{host}:{gateway}/v1/chat/completions", json=CHAT)
            assert refused(r) and "SDK gateway" in r.text, r.text
    assert raw_refused(proc.port, connect(gateway))
    head = websocket_upgrade(f"http://127.0.0.1:{gateway}/v1/responses", f"127.0.0.1:{gateway}")
    assert raw_refused(proc.port, head)

    sdk = openai_client(proc, via="proxy").chat.completions.create(extra_headers={"x-test-route": "sdk"}, **CHAT)
    assert sdk.choices[0].message.content == upstream.reply
    assert upstream.last("/chat/completions").json["messages"] == CHAT["messages"]
    assert proc.log_text().count(f"to 127.0.0.1:{gateway}: that is memproxy's SDK gateway") == 1


def test_mitmweb_refuses_requests_to_its_web_interface(upstream, mitm_ca: Path, tmp_path: Path):
    """A real mitmweb with the addon: its UI port is ours too. Its view of a finished flow is redacted."""
    confdir, home = tmp_path / "confdir", tmp_path / "home"
    shutil.copytree(mitm_ca, confdir)
    port, web = free_port(), free_port()
    settings = {
        "memory_db": tmp_path / "memories.db", "memory_outbox": tmp_path / "outbox.db",
        "memory_cookies": tmp_path / "cookies.json", "memory_projects": tmp_path / "ports.json",
        "web_port": web, "web_open_browser": "false", "web_password": WEB_PASSWORD,
    }  # fmt: skip
    argv = mitmdump_argv("127.0.0.1", port, confdir, tuple(a for k, v in settings.items() for a in ("--set", f"{k}={v}")),
                         web=True)
    env = isolated_env(home) | {"PYTHONUNBUFFERED": "1"}
    proc = MitmdumpProc(argv, env, confdir, port, tmp_path / "mitmweb.log").start()
    try:
        assert wait_until(lambda: listening("127.0.0.1", web)), proc.log_text()
        with httpx.Client(proxy=proc.proxy_url, trust_env=False, timeout=30) as client:
            for host in ("127.0.0.1", "localhost"):
                r = client.get(f"http://{host}:{web}/flows")
                assert refused(r) and "mitmweb's web interface" in r.text, r.text
            assert refused(client.get(f"http://127.0.0.1:{port}/"))
            r = client.post(f"http://127.0.0.1:{upstream.port}/v1/chat/completions", json=CHAT,
                            headers={"authorization": "Bearer sk-shown-redacted"})
            assert r.json()["choices"]
        ui = httpx.get(f"http://127.0.0.1:{web}/flows", headers={"authorization": f"Bearer {WEB_PASSWORD}"},
                       trust_env=False, timeout=30)
        [chat] = [f for f in ui.json() if f["request"]["path"] == "/v1/chat/completions"]
        assert ["authorization", MARK] in chat["request"]["headers"] and "sk-shown-redacted" not in ui.text
        assert raw_refused(port, f"GET /flows HTTP/1.1\r\nHost: localhost:{web}\r\n\r\n")
        assert raw_refused(port, connect(web))
        line = f"to 127.0.0.1:{web}: that is mitmweb's web interface"
        assert wait_until(lambda: line in proc.log_text()) and proc.log_text().count(line) == 1, proc.log_text()
    finally:
        proc.stop()
