"""The end-to-end harness itself: official SDKs -> real mitmdump (no memory addon) -> fake upstream."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from fakes import FakeUpstream, codex_request
from fakes.upstream import split

pytestmark = pytest.mark.e2e

NOOP = "tests/fakes/noop_addon.py"
USER = [{"role": "user", "content": "Say hello"}]


def _pieces(upstream: FakeUpstream) -> list[str]:
    """The reply text as the upstream streams it."""
    return split(upstream.reply, upstream.chunks)


@pytest.fixture(params=["proxy", "reverse"])
def via(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def proc(mitmdump, upstream: FakeUpstream, via: str):
    """mitmdump with only the no-op script, in the mode the client reaches it by."""
    return mitmdump(mode="regular" if via == "proxy" else "reverse", addon=NOOP, upstream=upstream)


def test_openai_chat(proc, upstream: FakeUpstream, via: str, openai_client) -> None:
    client = openai_client(proc, via=via)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert reply.choices[0].message.content == upstream.reply

    stream = client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert deltas == _pieces(upstream)
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"] * 2


def test_anthropic_messages(proc, upstream: FakeUpstream, via: str, anthropic_client) -> None:
    client = anthropic_client(proc, via=via)
    message = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=USER)
    assert message.content[0].text == upstream.reply

    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=USER) as stream:
        assert list(stream.text_stream) == _pieces(upstream)
        assert stream.get_final_message().stop_reason == "end_turn"


def test_openai_responses_sse(proc, upstream: FakeUpstream, via: str, openai_client) -> None:
    events = list(openai_client(proc, via=via).responses.create(model="gpt-5.1", input="Say hello", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == _pieces(upstream)
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == upstream.reply


def test_responses_websocket(proc, upstream: FakeUpstream, via: str, ws_responses_client) -> None:
    prewarm, turn = codex_request(generate=False), codex_request("Say hello")
    events = ws_responses_client(proc, prewarm, turn, via=via)
    types = [e["type"] for e in events]
    assert types[:3] == ["response.created", "response.completed", "response.created"]
    assert events[1]["response"]["output"] == []
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == upstream.reply
    assert types[-1] == "response.completed"

    upgrade = upstream.last("/v1/responses")
    assert upgrade.method == "GET"
    assert upgrade.headers["originator"] == "codex_exec"
    assert upgrade.headers["user-agent"].startswith("codex_exec/")
    assert upgrade.ws_messages == [prewarm, turn]


def test_gemini_sse(proc, upstream: FakeUpstream, via: str, http_client) -> None:
    client = http_client(proc, via=via, host="generativelanguage.googleapis.com")
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    with client.stream("POST", path, params={"alt": "sse"}, json={"contents": USER}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == upstream.reply
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert upstream.last().query == {"alt": "sse"}


def test_sse_forwarded_chunk_by_chunk(proc, upstream: FakeUpstream, via: str, http_client) -> None:
    """Each chunk leaves the upstream only after the client has received the previous one.

    A proxy that buffered the stream would hold chunk 1 back, the upstream would
    give up waiting after ``lockstep_timeout`` and end the stream short.
    """
    upstream.lockstep = True
    body = {"model": "gpt-4o-mini", "messages": USER, "stream": True}
    received = []
    with http_client(proc, via=via).stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and (text := json.loads(line[6:])["choices"][0]["delta"].get("content")):
                received.append(text)
                upstream.release()
    assert received == _pieces(upstream)
    assert len(upstream.sent_times) == upstream.chunks


def test_upstream_records_request(proc, upstream: FakeUpstream, via: str, anthropic_client) -> None:
    anthropic_client(proc, via=via).messages.create(
        model="claude-sonnet-4-6", max_tokens=100, system="Be brief.", messages=USER
    )
    (recorded,) = upstream.wait_for(1)
    assert (recorded.method, recorded.path) == ("POST", "/v1/messages")
    assert recorded.json == json.loads(recorded.body)
    assert recorded.json["system"] == "Be brief." and recorded.json["messages"] == USER
    assert recorded.headers["authorization"] == "Bearer sk-ant-test-fake-key"
    assert recorded.headers["user-agent"].startswith("Anthropic/Python")
    if via == "proxy":  # redirect.py keeps the Host the client asked for
        assert recorded.headers["host"] == "api.anthropic.com"


def test_upstream_faults(proc, upstream: FakeUpstream, via: str, openai_client, anthropic_client) -> None:
    upstream.fail_status = 500
    with pytest.raises(anthropic.InternalServerError) as error:
        anthropic_client(proc, via=via).messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=USER)
    assert error.value.body == {"type": "error", "error": {"type": "api_error", "message": "fake upstream failure"}}

    upstream.fail_status = None
    upstream.reset_mid_stream = True
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in openai_client(proc, via=via).chat.completions.create(model="m", messages=USER, stream=True):
            received += [c.delta.content for c in chunk.choices if c.delta.content]
    assert received == _pieces(upstream)[:2]
