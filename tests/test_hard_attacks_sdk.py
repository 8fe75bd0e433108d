"""Hard test: attacks on the SDK path, through a real mitmdump with the gateway and litellm.

- A client names a provider mapping in its own `x-memproxy-sdk` header (an `api_base` of its choosing,
  `api_key: os.environ/SECRET_VAR`), on the cookie-challenge replay and on a `route: sdk` rule without
  `sdk:`: the variable's value must reach no server.
- Requests with ever new scopes on a `route: sdk` rule: the HTTP clients the gateway keeps are bounded,
  counted as the mitmdump process's open sockets to the upstream.
- An upstream answers 307 to another service on loopback: that service gets nothing (no body, no key),
  and the client gets the 307 with its Location.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import MitmdumpProc
from e2e_helpers import wait_until
from fakes import FakeUpstream

pytestmark = pytest.mark.e2e

SECRET = "memproxy-env-secret-" + uuid.uuid4().hex  # the value of SECRET_VAR in mitmdump's environment
SDK_RULES = "rules:\n  - name: all\n    user_id: team\n    route: sdk\n"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
MESSAGES = {"model": "claude-sonnet-4-6", "max_tokens": 32, "messages": [{"role": "user", "content": "hello"}]}
OPENAI_KEY = "sk-test-fake-key"
ANTHROPIC_KEY = "fake-anthropic-key-for-redirects"
CLIENTS_BOUND = 64  # the gateway's client pool keeps at most this many
SCOPES = 200  # requests, each with a scope of its own


@pytest.fixture
def attacker():
    """A server of the attacker's choosing, which records what it gets."""
    with FakeUpstream() as fake:
        yield fake


def start(mitmdump, upstream: FakeUpstream, tmp_path: Path, *, mode: str, rules: str | None = None) -> MitmdumpProc:
    options = {
        "memory_db": str(tmp_path / "memories.db"),
        "memory_outbox": str(tmp_path / "outbox.db"),
        "memory_cookies": str(tmp_path / "cookies.json"),
    }
    if rules is not None:
        path = tmp_path / "rules.yaml"
        path.write_text(rules)
        options["memory_rules"] = str(path)
    return mitmdump(mode=mode, upstream=upstream, options=options, env={"SECRET_VAR": SECRET})


def forged_mapping(attacker: FakeUpstream) -> dict[str, str]:
    mapping = {"model": "openai/gpt-4o", "api_base": f"{attacker.url}/v1", "api_key": "os.environ/SECRET_VAR"}
    return {"x-memproxy-sdk": json.dumps(mapping), "authorization": f"Bearer {OPENAI_KEY}"}


def assert_secret_reached_no_server(proc: MitmdumpProc, *servers: FakeUpstream) -> None:
    for server in servers:
        for rec in server.requests:
            assert SECRET not in json.dumps(rec.headers) + rec.body.decode(errors="replace"), proc.log_text()
    assert SECRET not in proc.log_text()


def test_a_client_mapping_is_ignored_on_the_challenge_replay(mitmdump, upstream, attacker, tmp_path):
    """Default rules, the memory host api.openai.com (redirected to the fake upstream), whose first answer
    is a cookie challenge: the replay through the gateway must not take the client's mapping."""
    upstream.require_cookie = "cf_clearance"
    proc = start(mitmdump, upstream, tmp_path, mode="regular")
    with httpx.Client(proxy=proc.proxy_url, verify=proc.ssl_context(), trust_env=False, timeout=60) as client:
        response = client.post(
            "https://api.openai.com/v1/chat/completions", json=CHAT, headers=forged_mapping(attacker)
        )
    assert attacker.requests == [], f"the attacker got {attacker.requests[0].headers}"
    assert_secret_reached_no_server(proc, upstream, attacker)
    assert response.status_code == 200, response.text
    assert "now goes through the SDK path" in proc.log_text()  # it was the replay that answered
    challenged, replayed = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert replayed.headers["authorization"] == f"Bearer {OPENAI_KEY}"


def test_a_client_mapping_is_ignored_on_a_sdk_rule_without_a_mapping(mitmdump, upstream, attacker, tmp_path):
    proc = start(mitmdump, upstream, tmp_path, mode="reverse", rules=SDK_RULES)
    headers = forged_mapping(attacker) | {
        "x-memproxy-upstream": attacker.url,
        "x-memproxy-protocol": "openai_chat",
        "x-memproxy-scope": "someone-else",
    }
    headers["accept-encoding"] = "identity"  # the gateway's client frames a request itself: not forwarded
    response = httpx.post(f"{proc.base_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=60)
    assert attacker.requests == [], f"the attacker got {attacker.requests[0].headers}"
    assert_secret_reached_no_server(proc, upstream, attacker)
    assert response.status_code == 200, response.text
    [sent] = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert sent.headers["accept-encoding"] != "identity"  # the SDK path served it
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"


def sockets_to(pid: int, port: int) -> int:
    """How many of process `pid`'s open sockets are TCP connections to 127.0.0.1:`port` (any state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                remote_port, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[9]
                count += remote_port == port and inode in inodes
    return count


def test_sdk_clients_are_bounded(mitmdump, upstream, tmp_path):
    proc = start(mitmdump, upstream, tmp_path, mode="reverse", rules=SDK_RULES)
    assert proc.process is not None
    with httpx.Client(base_url=proc.base_url, trust_env=False, timeout=60) as client:
        for n in range(SCOPES):
            headers = {"x-memory-user-id": f"scope-{uuid.uuid4().hex}", "authorization": f"Bearer {OPENAI_KEY}"}
            response = client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 200, (n, response.text)
    assert len([r for r in upstream.requests if r.path == "/v1/chat/completions"]) == SCOPES
    counts: list[int] = []  # evicted clients close in the background: wait (bounded) for them
    wait_until(lambda: counts.append(sockets_to(proc.process.pid, upstream.port)) or counts[-1] <= CLIENTS_BOUND)
    assert counts[-1] <= CLIENTS_BOUND, f"{counts[-1]} sockets to the upstream after {SCOPES} scopes"


def send_redirected(proc: MitmdumpProc, upstream, internal, *, via: str, protocol: str, stream: bool) -> None:
    """Send one request whose upstream answers 307 to `internal`: nothing reaches `internal`, and the
    client gets the 307 with its Location and the upstream's body."""
    path = "/v1/messages" if protocol == "anthropic" else "/v1/chat/completions"
    location = f"{internal.url}{path}"
    upstream.fail_status, upstream.fail_headers = 307, {"Location": location}
    body = (MESSAGES if protocol == "anthropic" else CHAT) | {"stream": stream}
    headers = {"x-api-key": ANTHROPIC_KEY} if protocol == "anthropic" else {"authorization": f"Bearer {OPENAI_KEY}"}
    if via == "reverse":
        response = httpx.post(f"{proc.base_url}{path}", json=body, headers=headers, timeout=60)
    else:
        host = "api.anthropic.com" if protocol == "anthropic" else "api.openai.com"
        with httpx.Client(proxy=proc.proxy_url, verify=proc.ssl_context(), trust_env=False, timeout=60) as client:
            response = client.post(f"https://{host}{path}", json=body, headers=headers)
    case = f"{protocol}, stream={stream}"
    assert internal.requests == [], f"{case}: the redirect was followed: {internal.requests[0].headers}"
    assert response.status_code == 307, (case, response.text)
    assert response.headers["location"] == location
    assert upstream.fail_message in response.text  # the upstream's own body


def test_redirects_are_not_followed_on_a_sdk_rule(mitmdump, upstream, attacker, tmp_path):
    proc = start(mitmdump, upstream, tmp_path, mode="reverse", rules=SDK_RULES)
    for protocol in ("openai_chat", "anthropic"):
        for stream in (False, True):
            send_redirected(proc, upstream, attacker, via="reverse", protocol=protocol, stream=stream)


@pytest.mark.parametrize("protocol", ["openai_chat", "anthropic"])
def test_redirects_are_not_followed_on_the_challenge_replay(mitmdump, upstream, attacker, tmp_path, protocol):
    """The upstream asks for a cookie first; the replay through the gateway then meets the 307."""
    upstream.require_cookie = "cf_clearance"
    proc = start(mitmdump, upstream, tmp_path, mode="regular")
    send_redirected(proc, upstream, attacker, via="proxy", protocol=protocol, stream=False)
    assert "now goes through the SDK path" in proc.log_text()
