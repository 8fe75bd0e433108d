"""A reply whose final event has passed is remembered, even when the client closes the connection right after
it (Codex does, on `response.completed`), on the direct path and on the SDK path."""

from __future__ import annotations

import httpx
import pytest
from e2e_helpers import wait_memories
from memproxy.protocols.sse import SSEParser
from test_e2e_sdk import rules_file, start

pytestmark = pytest.mark.e2e

STREAMS = {  # protocol: (path, body, the final event's test)
    "openai_chat": (
        "/v1/chat/completions",
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Which port is it?"}]},
        lambda event, data: data.strip() == "[DONE]",
    ),
    "anthropic": (
        "/v1/messages",
        {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
         "messages": [{"role": "user", "content": "Which port is it?"}]},
        lambda event, data: event == "message_stop",
    ),
    "openai_responses": (
        "/v1/responses",
        {"model": "gpt-4o", "stream": True, "input": "Which port is it?"},
        lambda event, data: event == "response.completed",
    ),
    "gemini": (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "Which port is it?"}]}]},
        lambda event, data: '"finishReason"' in data,
    ),
}  # fmt: skip


@pytest.mark.parametrize("route", ["passthrough", "sdk"])
@pytest.mark.parametrize("protocol", list(STREAMS))
def test_a_reply_is_remembered_once_its_final_event_passed(mitmdump, upstream, tmp_path, protocol, route):
    upstream.linger = 30.0  # the upstream keeps the stream open: only the client's close ends the flow
    rules = rules_file(tmp_path, f"rules:\n  - name: all\n    user_id: team\n    route: {route}\n")
    proc = start(mitmdump, upstream, tmp_path, "reverse", memory_rules=str(rules))
    path, body, final = STREAMS[protocol]
    parser, seen = SSEParser(), False
    with httpx.stream("POST", proc.base_url + path, json=body, timeout=60) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            if any(final(event, data) for event, data in parser.feed(chunk)):
                seen = True
                break  # and close the connection, as Codex does
    assert seen
    stored = wait_memories(tmp_path / "memories.db", "team")
    assert any("Which port is it?" in m and upstream.reply in m for m in stored), proc.log_text()
