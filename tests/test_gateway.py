"""The SDK path's loopback gateway: litellm really calls the fake upstream over HTTP.

The gateway runs in-process on the test's event loop; the fake upstream runs on its own
thread. Clients are raw httpx and the official openai / anthropic SDKs (async).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from fakes import FakeUpstream
from fakes.upstream import DEFAULT_REPLY
from memproxy import gateway as gateway_module
from memproxy.cookies import CookieSessions
from memproxy.gateway import SECRET_HEADER, TICKET_HEADER, Gateway
from memproxy.protocols import ADAPTERS
from memproxy.protocols.sse import SSEParser
from memproxy.wire import MARK

ADAPTER = {adapter.name: adapter for adapter in ADAPTERS}
SCOPE = "claude-code:myrepo"
HOST = "127.0.0.1"
OPENAI_KEY = "sk-test-openai-secret-0123456789"
ANTHROPIC_KEY = "fake-anthropic-key-7f3a9c"  # distinctive, and not key-shaped
PATH = {"openai_chat": "/v1/chat/completions", "anthropic": "/v1/messages", "openai_responses": "/v1/responses"}
PROTOCOLS = tuple(PATH)
CONTEXT_MESSAGES = {
    "openai": "This model's maximum context length is 128000 tokens. However, your messages resulted in 200000 tokens.",
    "anthropic": "prompt is too long: 210000 tokens > 200000 maximum",
}


def request_body(protocol: str, *, stream: bool = False) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Say hello"}]
    if protocol == "openai_chat":
        return {"model": "gpt-4o-mini", "messages": messages, "stream": stream}
    if protocol == "anthropic":
        return {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": messages, "stream": stream}
    return {"model": "gpt-4o-mini", "input": "Say hello", "stream": stream}


def auth(protocol: str) -> dict[str, str]:
    return {"x-api-key": ANTHROPIC_KEY} if protocol == "anthropic" else {"authorization": f"Bearer {OPENAI_KEY}"}


def sse_events(response: httpx.Response) -> list[tuple[str | None, str]]:
    assert response.headers["content-type"].startswith("text/event-stream")
    parser = SSEParser()
    return parser.feed(response.content) + parser.feed(b"")


def reply_text(protocol: str, response: httpx.Response) -> str:
    """The reply as memproxy's own adapter reads it: the client got its protocol's shape."""
    adapter = ADAPTER[protocol]
    if not response.headers["content-type"].startswith("text/event-stream"):
        return adapter.reply_from_json(response.json())
    accumulator = adapter.accumulator()
    for event, data in sse_events(response):
        accumulator.feed(event, data)
    assert accumulator.done
    return accumulator.text()


def llm_requests(upstream: FakeUpstream) -> list[Any]:
    return [r for r in upstream.requests if r.path in ("/v1/chat/completions", "/v1/messages", "/v1/responses")]


@pytest.fixture
async def sessions(tmp_path: Any) -> AsyncIterator[CookieSessions]:
    sessions = CookieSessions(tmp_path / "cookies.json")
    yield sessions
    await sessions.aclose()


@pytest.fixture
async def gateway(sessions: CookieSessions) -> AsyncIterator[Gateway]:
    gateway = Gateway(sessions)
    await gateway.start()
    yield gateway
    await gateway.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        yield client


async def call(
    client: httpx.AsyncClient,
    gateway: Gateway,
    upstream: FakeUpstream,
    protocol: str,
    body: dict[str, Any] | bytes,
    *,
    scope: str = SCOPE,
    sdk: dict[str, str] | None = None,
) -> httpx.Response:
    headers = gateway.request_headers(protocol=protocol, upstream=upstream.url, scope=scope, sdk=sdk) | auth(protocol)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(f"{gateway.url}{PATH[protocol]}", content=content, headers=headers)


def mapped(protocol: str, upstream: FakeUpstream) -> dict[str, str]:
    """A rule's provider mapping onto the same provider: litellm translates the call."""
    if protocol == "anthropic":
        return {"model": "anthropic/claude-sonnet-4-6", "api_base": upstream.url}
    return {"model": "openai/gpt-4o-mini", "api_base": f"{upstream.url}/v1"}


def assert_error_shape(protocol: str, body: Any, error_type: str) -> dict[str, Any]:
    """The exact error format of the protocol; returns the inner error object."""
    if protocol == "anthropic":
        assert set(body) == {"type", "error"} and body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
    else:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# the gateway's own contract


async def test_start_is_idempotent_and_close_forgets_the_secret(sessions: CookieSessions) -> None:
    gateway = Gateway(sessions)
    await gateway.start()
    port, secret = gateway.port, gateway.secret
    await gateway.start()
    assert (gateway.port, gateway.secret) == (port, secret) and port and len(secret) >= 32
    assert gateway.url == f"http://127.0.0.1:{port}"
    await gateway.close()
    assert (gateway.port, gateway.secret) == (0, "")
    await gateway.start()
    assert gateway.secret != secret
    await gateway.close()


@pytest.mark.parametrize("protocol", ["anthropic", "openai_chat", "openai_responses"])
@pytest.mark.parametrize("secret", [None, "wrong"])
async def test_secret_is_required(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, protocol: str, secret: str | None
) -> None:
    headers = gateway.request_headers(protocol=protocol, upstream=upstream.url, scope=SCOPE) | auth(protocol)
    if secret is None:
        del headers[SECRET_HEADER]
    else:
        headers[SECRET_HEADER] = secret
    response = await client.post(f"{gateway.url}{PATH[protocol]}", json=request_body(protocol), headers=headers)
    assert response.status_code == 403
    assert_error_shape(protocol, response.json(), "permission_error")
    assert upstream.requests == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_invalid_json_is_a_protocol_shaped_400(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, protocol: str
) -> None:
    for body in (b"{not json", b"[1, 2]"):  # on a translated call: a forward sends the body on unread
        response = await call(client, gateway, upstream, protocol, body, sdk=mapped(protocol, upstream))
        assert response.status_code == 400
        assert_error_shape(protocol, response.json(), "invalid_request_error")
    assert upstream.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_gemini_is_forwarded(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, stream: bool
) -> None:
    headers = gateway.request_headers(protocol="gemini", upstream=upstream.url, scope=SCOPE) | {"x-goog-api-key": "g-k"}
    path = "/v1beta/models/gemini-2.5-flash:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "futureField": {"kept": True}}
    response = await client.post(f"{gateway.url}{path}", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert reply_text("gemini", response) == DEFAULT_REPLY
    [sent] = upstream.requests
    assert (sent.path, sent.query) == (path.split("?")[0], {"alt": "sse"} if stream else {})
    assert sent.json == body and sent.headers["x-goog-api-key"] == "g-k"


# forwarding: the client's protocol is the provider's


CLAUDE_CODE_LIKE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "stream": True,
    "messages": [
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True}],
            "output_config": {"effort": "low"},
        },
    ],
    "tools": [
        {"name": "Bash", "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}},
        {"name": "DeferredToolPlaceholder", "defer_loading": True, "input_schema": {"type": "object"}},
    ],
    "context_management": {"edits": []},
    "output_config": {"effort": "high"},
    "thinking": {"type": "adaptive"},
    "metadata": {"user_id": "u", "x_meta": 1},
    "future_top_level": [1, 2, 3],
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_forwarded_request_and_its_answer_are_byte_exact(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, stream: bool
) -> None:
    """Body bytes, query, the client's headers (x-stainless-* and its own cookie too) go out as they came; the
    upstream's status, ids, model, events and headers come back as they were sent."""
    raw = json.dumps(CLAUDE_CODE_LIKE | {"stream": stream}, separators=(",", ":")).encode()
    client_headers = {
        "x-stainless-lang": "js",
        "anthropic-beta": "b2,b1",
        "user-agent": "claude-cli/9",
        "cookie": "own=1",
    }
    headers = gateway.request_headers(protocol="anthropic", upstream=upstream.url, scope=SCOPE)
    headers |= auth("anthropic") | client_headers | {"content-type": "application/json"}
    response = await client.post(f"{gateway.url}/v1/messages?beta=true", content=raw, headers=headers)
    assert response.status_code == 200
    [sent] = upstream.requests
    assert (sent.path, sent.query, sent.body) == ("/v1/messages", {"beta": "true"}, raw)
    assert {k: sent.headers.get(k) for k in client_headers} == client_headers
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and not [h for h in sent.headers if h.startswith("x-memproxy")]
    if stream:
        assert response.content == bytes(sent.sent)  # every event, as the upstream wrote it
    else:
        answer = response.json()
        assert answer["id"].encode() in sent.sent and answer["model"] == "claude-sonnet-4-6"
    assert response.headers["content-type"] == ("text/event-stream" if stream else "application/json; charset=utf-8")


async def test_a_forwarded_challenge_is_retried_before_the_client_sees_anything(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """The retry with the cookie streams: the first event reaches the client while the upstream holds the rest."""
    upstream.require_cookie, upstream.lockstep = "cf_clearance", True
    headers = gateway.request_headers(protocol="anthropic", upstream=upstream.url, scope=SCOPE) | auth("anthropic")
    body = request_body("anthropic", stream=True)
    async with client.stream("POST", f"{gateway.url}/v1/messages", json=body, headers=headers) as response:
        assert response.status_code == 200
        parser, seen, chunks = SSEParser(), [], response.aiter_bytes()
        async for chunk in chunks:
            seen += [json.loads(data) for _, data in parser.feed(chunk)]
            if any(e.get("type") == "content_block_delta" for e in seen):
                break
        assert len(upstream.sent_times) == 1
        upstream.release(upstream.chunks)
        async for chunk in chunks:
            seen += [json.loads(data) for _, data in parser.feed(chunk)]
    assert seen[-1]["type"] == "message_stop"
    assert [r.headers.get("cookie") for r in upstream.requests] == [None, f"cf_clearance={upstream.cookie_token}"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_forwarded_errors_are_the_upstreams_own(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, protocol: str
) -> None:
    for status in (400, 429, 500, 529):
        upstream.clear()
        upstream.fail_status, upstream.fail_headers = status, {"Retry-After": "7", "request-id": "req_fake"}
        response = await call(client, gateway, upstream, protocol, request_body(protocol, stream=True))
        assert response.status_code == status
        assert response.headers["retry-after"] == "7" and response.headers["request-id"] == "req_fake"
        assert response.json()["error"]["message"] == upstream.fail_message
        assert len(llm_requests(upstream)) == 1  # no hidden retries


# through litellm to the fake upstream


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_each_protocol_round_trips_in_its_own_shape(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, protocol: str, stream: bool
) -> None:
    response = await call(client, gateway, upstream, protocol, request_body(protocol, stream=stream))
    assert response.status_code == 200, response.text
    assert reply_text(protocol, response) == DEFAULT_REPLY
    if stream and protocol == "openai_chat":
        assert sse_events(response)[-1] == (None, "[DONE]")
    elif stream:  # named events, named after their type
        assert all(name == json.loads(data)["type"] for name, data in sse_events(response))
    if protocol == "openai_responses":  # the upstream's own response id, not litellm's routing id
        bodies = (
            [e["response"] for _, d in sse_events(response) if "response" in (e := json.loads(d))] if stream else []
        )
        assert {b["id"] for b in bodies or [response.json()]} == {"resp_fake"}
    [sent] = llm_requests(upstream)
    assert sent.path == PATH[protocol]
    assert sent.json["model"] == request_body(protocol)["model"]
    assert sent.json.get("stream", False) is stream
    key = sent.headers.get("x-api-key") if protocol == "anthropic" else sent.headers.get("authorization")
    assert key in (ANTHROPIC_KEY, f"Bearer {OPENAI_KEY}")  # the client's own key
    assert not [h for h in sent.headers if h.startswith("x-memproxy")]


async def test_streaming_keeps_time_to_first_token(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """The first text reaches the client while the upstream still holds back the rest."""
    upstream.lockstep = True
    headers = gateway.request_headers(protocol="anthropic", upstream=upstream.url, scope=SCOPE) | auth("anthropic")
    body = request_body("anthropic", stream=True)
    async with client.stream("POST", f"{gateway.url}/v1/messages", json=body, headers=headers) as response:
        parser, seen, chunks = SSEParser(), [], response.aiter_bytes()
        async for chunk in chunks:
            seen += [json.loads(data) for _, data in parser.feed(chunk)]
            if any(e.get("type") == "content_block_delta" for e in seen):
                break
        assert len(upstream.sent_times) == 1  # only the first chunk was sent so far
        upstream.release(upstream.chunks)
        async for chunk in chunks:
            seen += [json.loads(data) for _, data in parser.feed(chunk)]
    assert seen[-1]["type"] == "message_stop"


def openai_sdk(gateway: Gateway, upstream: FakeUpstream, protocol: str, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=OPENAI_KEY,
        base_url=f"{gateway.url}/v1",
        http_client=httpx2.AsyncClient(trust_env=False, timeout=30),
        default_headers=gateway.request_headers(protocol=protocol, upstream=upstream.url, scope=SCOPE, **kwargs),
        max_retries=0,
    )


def anthropic_sdk(gateway: Gateway, upstream: FakeUpstream) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=ANTHROPIC_KEY,
        base_url=gateway.url,
        http_client=httpx2.AsyncClient(trust_env=False, timeout=30),
        default_headers=gateway.request_headers(protocol="anthropic", upstream=upstream.url, scope=SCOPE),
        max_retries=0,
    )


async def chat_text(sdk: openai.AsyncOpenAI, *, stream: bool, model: str = "gpt-4o-mini") -> str:
    messages: Any = [{"role": "user", "content": "Say hello"}]
    if not stream:
        completion = await sdk.chat.completions.create(model=model, messages=messages)
        return completion.choices[0].message.content or ""
    chunks = await sdk.chat.completions.create(model=model, messages=messages, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_openai_sdk_chat(gateway: Gateway, upstream: FakeUpstream, stream: bool) -> None:
    async with openai_sdk(gateway, upstream, "openai_chat") as sdk:
        assert await chat_text(sdk, stream=stream) == DEFAULT_REPLY


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_openai_sdk_responses(gateway: Gateway, upstream: FakeUpstream, stream: bool) -> None:
    async with openai_sdk(gateway, upstream, "openai_responses") as sdk:
        if not stream:
            response = await sdk.responses.create(model="gpt-4o-mini", input="Say hello")
            assert response.output_text == DEFAULT_REPLY
            return
        events = [e async for e in await sdk.responses.create(model="gpt-4o-mini", input="Say hello", stream=True)]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == DEFAULT_REPLY
    assert events[-1].type == "response.completed"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_anthropic_sdk_messages(gateway: Gateway, upstream: FakeUpstream, stream: bool) -> None:
    messages: Any = [{"role": "user", "content": "Say hello"}]
    async with anthropic_sdk(gateway, upstream) as sdk:
        if stream:
            async with sdk.messages.stream(model="claude-sonnet-4-6", max_tokens=64, messages=messages) as events:
                text = await events.get_final_text()
        else:
            message = await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=messages)
            text = message.content[0].text  # type: ignore[union-attr]
    assert text == DEFAULT_REPLY


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_provider_mapping_serves_an_openai_client_from_an_anthropic_upstream(
    gateway: Gateway, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    monkeypatch.setenv("MEMPROXY_TEST_MAPPED_KEY", "sk-ant-mapped-key-from-env")
    mapping = {
        "model": "anthropic/claude-sonnet-4-6",
        "api_base": upstream.url,
        "api_key": "${MEMPROXY_TEST_MAPPED_KEY}",
    }
    async with openai_sdk(gateway, upstream, "openai_chat", sdk=mapping) as sdk:
        assert await chat_text(sdk, stream=stream) == DEFAULT_REPLY
    [sent] = llm_requests(upstream)
    assert sent.path == "/v1/messages"  # litellm spoke Anthropic to the upstream
    assert sent.json["model"] == "claude-sonnet-4-6" and sent.json.get("stream", False) is stream
    assert sent.headers["x-api-key"] == "sk-ant-mapped-key-from-env"
    assert OPENAI_KEY not in json.dumps(sent.headers)


# cookie sessions


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_cookie_challenge_is_answered_with_the_sessions_cookie(
    gateway: Gateway,
    sessions: CookieSessions,
    upstream: FakeUpstream,
    client: httpx.AsyncClient,
    protocol: str,
    stream: bool,
) -> None:
    upstream.require_cookie = "cf_clearance"
    cookie = f"cf_clearance={upstream.cookie_token}"

    response = await call(client, gateway, upstream, protocol, request_body(protocol, stream=stream))
    assert response.status_code == 200, response.text
    assert reply_text(protocol, response) == DEFAULT_REPLY
    challenged, retried = llm_requests(upstream)
    assert "cookie" not in challenged.headers and retried.headers["cookie"] == cookie
    assert sessions.jar(SCOPE, HOST)["cf_clearance"] == upstream.cookie_token
    assert sessions.requires_sdk(SCOPE, HOST)

    upstream.clear()  # the session goes on sending it
    response = await call(client, gateway, upstream, protocol, request_body(protocol, stream=stream))
    assert response.status_code == 200
    [sent] = llm_requests(upstream)
    assert sent.headers["cookie"] == cookie

    upstream.clear()  # another scope has a jar of its own
    response = await call(client, gateway, upstream, protocol, request_body(protocol), scope="other:scope")
    assert response.status_code == 200
    assert "cookie" not in llm_requests(upstream)[0].headers


async def test_cookie_challenge_on_a_mapped_provider(
    gateway: Gateway, sessions: CookieSessions, upstream: FakeUpstream
) -> None:
    """The mapped (Anthropic) provider gets the session's cookies too."""
    upstream.require_cookie = "cf_clearance"
    mapping = {"model": "anthropic/claude-sonnet-4-6", "api_base": upstream.url, "api_key": "sk-ant-literal"}
    async with openai_sdk(gateway, upstream, "openai_chat", sdk=mapping) as sdk:
        assert await chat_text(sdk, stream=True) == DEFAULT_REPLY
    assert [r.headers.get("cookie") for r in llm_requests(upstream)] == [None, f"cf_clearance={upstream.cookie_token}"]


async def test_cookie_jar_survives_a_restart(tmp_path: Any, upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.require_cookie = "cf_clearance"
    path = tmp_path / "state" / "cookies.json"
    sessions = CookieSessions(path)
    gateway = Gateway(sessions)
    await gateway.start()
    assert (await call(client, gateway, upstream, "anthropic", request_body("anthropic"))).status_code == 200
    await gateway.close()
    await sessions.aclose()  # finishes the save the cookie scheduled
    assert path.stat().st_mode & 0o777 == 0o600
    assert upstream.cookie_token in path.read_text()

    upstream.clear()
    restored = CookieSessions(path)
    await restored.load()
    assert restored.requires_sdk(SCOPE, HOST)
    gateway = Gateway(restored)
    await gateway.start()
    try:
        response = await call(client, gateway, upstream, "openai_chat", request_body("openai_chat", stream=True))
    finally:
        await gateway.close()
        await restored.aclose()
    assert response.status_code == 200
    [sent] = llm_requests(upstream)  # no challenge this time
    assert sent.headers["cookie"] == f"cf_clearance={upstream.cookie_token}"


# errors


ERROR_CASES = [
    # (upstream status, upstream message, status to the client, error type)
    (400, "fake upstream failure", 400, "invalid_request_error"),
    (401, "fake upstream failure", 401, "authentication_error"),
    (403, "fake upstream failure", 403, "permission_error"),
    (404, "fake upstream failure", 404, "not_found_error"),
    (408, "fake upstream failure", 408, "timeout_error"),
    (429, "fake upstream failure", 429, "rate_limit_error"),
    (500, "fake upstream failure", 500, "api_error"),
    (502, "fake upstream failure", 502, "api_error"),
    (503, "fake upstream failure", 503, "api_error"),
    (400, CONTEXT_MESSAGES["openai"], 400, "invalid_request_error"),
    (400, CONTEXT_MESSAGES["anthropic"], 400, "invalid_request_error"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("upstream_status", "message", "status", "error_type"),
    ERROR_CASES,
    ids=[f"{c[0]}" for c in ERROR_CASES[:-2]] + ["context-openai", "context-anthropic"],
)
async def test_upstream_errors_of_a_translated_call_reach_the_client_in_its_protocol(
    gateway: Gateway,
    upstream: FakeUpstream,
    client: httpx.AsyncClient,
    protocol: str,
    stream: bool,
    upstream_status: int,
    message: str,
    status: int,
    error_type: str,
) -> None:
    upstream.fail_status, upstream.fail_message = upstream_status, message
    if upstream_status in (429, 503):
        upstream.fail_headers = {"Retry-After": "7"}
    body = request_body(protocol, stream=stream)
    response = await call(client, gateway, upstream, protocol, body, sdk=mapped(protocol, upstream))
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    error = assert_error_shape(protocol, response.json(), error_type)
    assert error["message"] == message
    if protocol != "anthropic":
        context = message in CONTEXT_MESSAGES.values()
        assert error["code"] == ("context_length_exceeded" if context else str(status))
    assert response.headers.get("retry-after") == ("7" if upstream_status in (429, 503) else None)
    assert len(llm_requests(upstream)) == 1  # no hidden retries


SDK_ERRORS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
}


@pytest.mark.parametrize("status", list(SDK_ERRORS))
async def test_official_sdks_raise_their_own_exceptions(gateway: Gateway, upstream: FakeUpstream, status: int) -> None:
    upstream.fail_status = status
    upstream.fail_headers = {"Retry-After": "3"} if status == 429 else {}
    messages: Any = [{"role": "user", "content": "Say hello"}]
    async with openai_sdk(gateway, upstream, "openai_chat") as sdk:
        with pytest.raises(getattr(openai, SDK_ERRORS[status])) as raised:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert raised.value.status_code == status and raised.value.body["message"] == "fake upstream failure"  # type: ignore[index]
    async with anthropic_sdk(gateway, upstream) as ant:
        with pytest.raises(getattr(anthropic, SDK_ERRORS[status])) as raised_ant:
            await ant.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=messages)
    assert raised_ant.value.status_code == status
    if status == 429:
        assert raised.value.response.headers["retry-after"] == raised_ant.value.response.headers["retry-after"] == "3"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_upstream_failure_mid_stream_ends_with_the_protocols_error_event(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, protocol: str
) -> None:
    upstream.reset_mid_stream = True
    response = await call(client, gateway, upstream, protocol, request_body(protocol, stream=True))
    assert response.status_code == 200
    events = sse_events(response)
    name, data = events[-1]
    last = json.loads(data)
    if protocol == "openai_chat":
        assert name is None and set(last) == {"error"} and last["error"]["message"]
        assert (None, "[DONE]") not in events
    elif protocol == "anthropic":
        assert name == "error" and last["type"] == "error" and last["error"]["message"]
    else:
        assert name == "error" and last["type"] == "error" and last["message"]
    texts = [json.loads(d) for _, d in events[:-1]]
    assert any("Hello" in json.dumps(t) for t in texts)  # the first chunks made it through


async def test_secrets_stay_out_of_bodies_and_logs(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.require_cookie = "cf_clearance"
    assert (await call(client, gateway, upstream, "openai_chat", request_body("openai_chat"))).status_code == 200
    upstream.fail_status = 401
    upstream.fail_message = f"Incorrect API key provided: {OPENAI_KEY} (cookie {upstream.cookie_token})"
    for protocol, stream in (("openai_chat", False), ("anthropic", True)):
        body = request_body(protocol, stream=stream)
        response = await call(client, gateway, upstream, protocol, body, sdk=mapped(protocol, upstream))
        assert response.status_code == 401
        assert OPENAI_KEY not in response.text and ANTHROPIC_KEY not in response.text
        assert upstream.cookie_token not in response.text and MARK in response.text
    await call(client, gateway, upstream, "anthropic", request_body("anthropic"))  # forwarded
    upstream.fail_status, upstream.reset_mid_stream = None, True
    await call(client, gateway, upstream, "anthropic", request_body("anthropic", stream=True))
    ours = [r for r in caplog.records if r.levelno >= logging.INFO or r.name.startswith(("memproxy", "LiteLLM"))]
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") + str(r.exc_text or "") for r in ours)
    assert "SDK gateway" in logged
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, upstream.cookie_token, gateway.secret, "Traceback"):
        assert secret not in logged


async def test_client_leaving_mid_stream_cuts_the_upstream_and_the_gateway_goes_on(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    upstream.lockstep, upstream.lockstep_timeout = True, 2.0
    headers = gateway.request_headers(protocol="openai_chat", upstream=upstream.url, scope=SCOPE) | auth("openai_chat")
    body = request_body("openai_chat", stream=True)
    async with client.stream("POST", f"{gateway.url}{PATH['openai_chat']}", json=body, headers=headers) as response:
        async for chunk in response.aiter_bytes():
            if b"Hello" in chunk:
                break  # leave with the stream half read
    # The upstream's answer is cut as soon as the client is gone: a provider stops generating (and billing) then.
    for _ in range(100):
        if upstream.stream_closed():
            break
        await asyncio.sleep(0.05)
    assert upstream.stream_closed() and len(upstream.sent_times) == 1
    upstream.release(upstream.chunks)
    upstream.lockstep = False
    again = await call(client, gateway, upstream, "openai_chat", request_body("openai_chat", stream=True))
    assert reply_text("openai_chat", again) == DEFAULT_REPLY
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("ticket", ["missing", "unknown", "used", "no scope"])
async def test_requests_without_a_valid_ticket_are_a_400(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, ticket: str
) -> None:
    scope = "" if ticket == "no scope" else SCOPE
    headers = gateway.request_headers(protocol="anthropic", upstream=upstream.url, scope=scope) | auth("anthropic")
    if ticket == "missing":
        del headers[TICKET_HEADER]
    elif ticket == "unknown":
        headers[TICKET_HEADER] = "not-a-ticket"
    elif ticket == "used":
        first = await client.post(f"{gateway.url}/v1/messages", json=request_body("anthropic"), headers=headers)
        assert first.status_code == 200
        upstream.clear()
    response = await client.post(f"{gateway.url}/v1/messages", json=request_body("anthropic"), headers=headers)
    assert response.status_code == 400
    assert_error_shape("anthropic", response.json(), "invalid_request_error")
    assert upstream.requests == []


async def test_tickets_are_bounded_and_expire(gateway: Gateway, upstream: FakeUpstream) -> None:
    first = gateway.request_headers(protocol="openai_chat", upstream=upstream.url, scope=SCOPE)[TICKET_HEADER]
    for _ in range(gateway_module.MAX_TICKETS):
        gateway.request_headers(protocol="openai_chat", upstream=upstream.url, scope=SCOPE)
    assert len(gateway._tickets) == gateway_module.MAX_TICKETS and first not in gateway._tickets


async def test_client_sent_gateway_headers_decide_nothing(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider mapping, an upstream or a scope in a request's own headers is ignored: only the
    ticket says where the gateway sends a request, and nothing a request carries is resolved from
    the environment."""
    secret = "memproxy-env-secret-" + "7" * 12
    monkeypatch.setenv("MEMPROXY_TEST_SECRET_VAR", secret)
    with FakeUpstream() as attacker:
        forged = {
            "x-memproxy-sdk": json.dumps(
                {
                    "model": "openai/gpt-4o",
                    "api_base": f"{attacker.url}/v1",
                    "api_key": "os.environ/MEMPROXY_TEST_SECRET_VAR",
                }
            ),
            "x-memproxy-upstream": attacker.url,
            "x-memproxy-scope": "someone-else",
            "x-memproxy-protocol": "anthropic",
        }
        headers = forged | gateway.request_headers(protocol="openai_chat", upstream=upstream.url, scope=SCOPE)
        response = await client.post(
            f"{gateway.url}/v1/chat/completions",
            json=request_body("openai_chat"),
            headers=headers | auth("openai_chat"),
        )
        assert response.status_code == 200, response.text
        assert attacker.requests == []
    [sent] = llm_requests(upstream)
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert secret not in json.dumps(sent.headers) and not [h for h in sent.headers if h.startswith("x-memproxy")]


# redirects


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_redirects_are_not_followed_and_reach_the_client_as_they_came(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient, protocol: str, stream: bool
) -> None:
    with FakeUpstream() as internal:
        location = f"{internal.url}{PATH[protocol]}"
        upstream.fail_status, upstream.fail_headers = 307, {"Location": location}
        response = await call(client, gateway, upstream, protocol, request_body(protocol, stream=stream))
        assert response.status_code == 307, response.text
        assert response.headers["location"] == location
        assert response.headers["content-type"].startswith("application/json")
        assert upstream.fail_message in json.dumps(response.json())  # the upstream's own body
        assert internal.requests == []
    assert len(llm_requests(upstream)) == 1


async def test_a_redirect_after_a_cookie_challenge_is_not_followed(
    gateway: Gateway, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    with FakeUpstream() as internal:
        upstream.require_cookie = "cf_clearance"
        upstream.fail_status, upstream.fail_headers = 308, {"Location": f"{internal.url}/v1/messages"}
        response = await call(client, gateway, upstream, "anthropic", request_body("anthropic", stream=True))
        assert response.status_code == 308 and response.headers["location"].startswith(internal.url)
        assert internal.requests == []
    assert len(llm_requests(upstream)) == 2  # the challenged request and its retry with the cookie
