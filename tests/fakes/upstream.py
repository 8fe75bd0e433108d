"""A fake LLM upstream that speaks the provider APIs well enough for the official SDKs.

Serves OpenAI Chat Completions and Responses (JSON, SSE, and Responses over
WebSocket as Codex CLI uses it), Anthropic Messages and Gemini generateContent,
records every request, and offers knobs for pacing and faults. It runs an
aiohttp server on its own event loop in a background thread, so tests stay
synchronous.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from .recording import Recorded, RecordingServer

DEFAULT_REPLY = "Hello from the fake upstream."
CREATED = 1_700_000_000
MODELS = {
    "object": "list",
    "data": [
        {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"}
        for m in ("gpt-4o-mini", "claude-sonnet-4-6", "gemini-2.5-flash")
    ],
}


@dataclass
class Event:
    """One server event: an SSE event, a WebSocket message or an element of a JSON array."""

    data: Any
    name: str | None = None  # the SSE `event:` line, if the protocol uses one
    chunk: bool = False  # carries one piece of the reply text


Build = Callable[[str, list[str]], tuple[list[Event], Any]]


@dataclass(frozen=True)
class ToolCall:
    """A tool the fake asks the client to call, with the text it says first."""

    name: str
    arguments: dict[str, Any]
    text: str = "I will run a shell command first."
    id: str = "call_fake1"
    namespace: str = ""  # the Responses namespace the tool is offered in (Codex's `collaboration`), if any


def answers_tool(data: Any) -> bool:
    """Whether a request (or a Responses WebSocket message) ends with a tool's result, in any of the four formats."""
    if not isinstance(data, dict):
        return False
    messages, items, contents = data.get("messages"), data.get("input"), data.get("contents")
    if isinstance(messages, list) and messages and isinstance(last := messages[-1], dict):
        content = last.get("content")
        blocks = content if isinstance(content, list) else []
        return last.get("role") == "tool" or any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)
    if isinstance(items, list) and items and isinstance(last := items[-1], dict):
        return str(last.get("type", "")).endswith("_call_output")
    if isinstance(contents, list) and contents and isinstance(last := contents[-1], dict):
        return any(isinstance(p, dict) and "functionResponse" in p for p in last.get("parts", []))
    return False


def _chat_call(model: str, call: ToolCall) -> tuple[list[Event], Any]:
    """Chat Completions: the text, then one tool call (finish_reason tool_calls)."""
    base = {"id": "chatcmpl-fake", "created": CREATED, "model": model, "object": "chat.completion.chunk"}
    arguments = json.dumps(call.arguments)
    function = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}

    def chunk(delta: dict, finish: str | None = None) -> Event:
        return Event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    start = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
    events = [
        chunk({"role": "assistant", "content": call.text}),
        chunk({"tool_calls": [start]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
        chunk({}, "tool_calls"),
        Event("[DONE]"),
    ]
    message = {"role": "assistant", "content": call.text, "tool_calls": [function]}
    body = {**base, "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    return events, body


def _anthropic_call(model: str, call: ToolCall) -> tuple[list[Event], Any]:
    """Anthropic Messages: a text block, then a tool_use block (stop_reason tool_use)."""
    usage = {"input_tokens": 10, "output_tokens": 5}
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": usage}
    use = {"type": "tool_use", "id": "toolu_fake1", "name": call.name, "input": call.arguments}
    body = {**message, "content": [{"type": "text", "text": call.text}, use], "stop_reason": "tool_use"}
    steps: list[tuple[str, dict]] = [
        ("message_start", {"message": message}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": call.text}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": {**use, "input": {}}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": json.dumps(call.arguments)}}),
        ("content_block_stop", {"index": 1}),
        ("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": usage}),
        ("message_stop", {}),
    ]
    return [Event({"type": name, **data}, name) for name, data in steps], body


def _anthropic_answer(events: list[Event], body: Any, messages: Any, input_tokens: int | None) -> None:
    """Give an Anthropic answer ids of its own, as the API does (a resumed Claude Code session joins the blocks
    of one message id into one message, and drops a tool_use whose id it has seen), and the input tokens to
    report, if any. The ids digest the conversation answered: each step of a session differs, and the same
    request is answered the same way on every path."""
    seed = hashlib.blake2b(json.dumps(messages, sort_keys=True).encode(), digest_size=12).hexdigest()
    message, use = {"id": f"msg_{seed}"}, {"id": f"toolu_{seed}"}
    usage = {} if input_tokens is None else {"input_tokens": input_tokens}
    for event in events:
        if event.name == "message_start":
            event.data["message"] = {**event.data["message"], **message}
            event.data["message"]["usage"] = {**event.data["message"]["usage"], **usage}
        elif event.name == "message_delta":
            event.data["usage"] = {**event.data["usage"], **usage}
        elif event.name == "content_block_start" and event.data["content_block"]["type"] == "tool_use":
            event.data["content_block"] = {**event.data["content_block"], **use}
    body.update(message)
    body["usage"] = {**body["usage"], **usage}
    body["content"] = [{**block, **use} if block["type"] == "tool_use" else block for block in body["content"]]


def _compacts(data: Any) -> bool:
    """Whether a Responses request asks for a remote compaction (its input ends with Codex's `compaction_trigger`)."""
    items = data.get("input") if isinstance(data, dict) else None
    return isinstance(items, list) and bool(items) and isinstance(items[-1], dict) and items[-1].get("type") == "compaction_trigger"


def _responses_compaction(model: str) -> tuple[list[Event], Any]:
    """OpenAI Responses' remote compaction: one opaque `compaction` output item, as Codex expects."""
    events, body = _responses(model, [], generate=False)
    item = {"id": "cmp_fake", "type": "compaction", "encrypted_content": "fake-compacted-context"}
    body = {**body, "output": [item]}
    steps = [events[0].data, {"type": "response.output_item.added", "output_index": 0, "item": item},
             {"type": "response.output_item.done", "output_index": 0, "item": item},
             {**events[-1].data, "response": body}]
    return [Event({**data, "sequence_number": n}, data["type"]) for n, data in enumerate(steps)], body


def _responses_input(events: list[Event], input_tokens: int | None) -> None:
    """Make a Responses answer's response.completed report `input_tokens`, if any."""
    for event in events if input_tokens is not None else ():
        if isinstance(event.data, dict) and event.data.get("type") == "response.completed":
            response = event.data["response"]
            usage = {**response["usage"], "input_tokens": input_tokens}
            event.data["response"] = {**response, "usage": {**usage, "total_tokens": input_tokens + usage["output_tokens"]}}


def _responses_call(model: str, call: ToolCall) -> tuple[list[Event], Any]:
    """OpenAI Responses: a message item with the text, then a function_call item."""
    message = {"id": "msg_fake", "type": "message", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": call.text, "annotations": []}]}
    function = {"id": "fc_fake", "type": "function_call", "status": "completed", "call_id": call.id, "name": call.name,
                "arguments": json.dumps(call.arguments), **({"namespace": call.namespace} if call.namespace else {})}
    response = {"id": "resp_fake_call", "object": "response", "created_at": CREATED, "status": "in_progress", "model": model,
                "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None,
                "incomplete_details": None}
    body = {**response, "status": "completed", "output": [message, function],
            "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}}
    ids = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    steps: list[tuple[str, dict]] = [
        ("response.created", {"response": response}),
        ("response.output_item.added", {"output_index": 0, "item": {**message, "status": "in_progress", "content": []}}),
        ("response.content_part.added", {**ids, "part": {**message["content"][0], "text": ""}}),
        ("response.output_text.delta", {**ids, "delta": call.text, "logprobs": []}),
        ("response.output_text.done", {**ids, "text": call.text, "logprobs": []}),
        ("response.content_part.done", {**ids, "part": message["content"][0]}),
        ("response.output_item.done", {"output_index": 0, "item": message}),
        ("response.output_item.added", {"output_index": 1, "item": {**function, "status": "in_progress", "arguments": ""}}),
        ("response.function_call_arguments.delta", {"item_id": "fc_fake", "output_index": 1, "delta": function["arguments"]}),
        ("response.function_call_arguments.done", {"item_id": "fc_fake", "output_index": 1, "arguments": function["arguments"]}),
        ("response.output_item.done", {"output_index": 1, "item": function}),
        ("response.completed", {"response": body}),
    ]
    events = [Event({"type": name, "sequence_number": n, **data}, name) for n, (name, data) in enumerate(steps)]
    return events, body


def _gemini_call(model: str, call: ToolCall) -> tuple[list[Event], Any]:
    """Gemini: a text part and a functionCall part."""
    parts = [{"text": call.text}, {"functionCall": {"name": call.name, "args": call.arguments}}]
    candidate = {"content": {"role": "model", "parts": parts}, "index": 0, "finishReason": "STOP"}
    body = {"candidates": [candidate], "usageMetadata": {"promptTokenCount": 10}, "modelVersion": model}
    return [Event(body)], body


def _chat(model: str, parts: list[str]) -> tuple[list[Event], Any]:
    """OpenAI Chat Completions: chunk events and the chat.completion body."""
    base = {"id": "chatcmpl-fake", "created": CREATED, "model": model}

    def chunk(delta: dict, finish: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}

    events = [Event(chunk({"role": "assistant", "content": ""}))]
    events += [Event(chunk({"content": p}), chunk=True) for p in parts]
    events += [Event(chunk({}, "stop")), Event("[DONE]")]
    message = {"role": "assistant", "content": "".join(parts)}
    usage = {"prompt_tokens": 10, "completion_tokens": len(parts), "total_tokens": 10 + len(parts)}
    body = {
        **base,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": usage,
    }
    return events, body


def _anthropic(model: str, parts: list[str]) -> tuple[list[Event], Any]:
    """Anthropic Messages: the streaming event sequence and the message body."""
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
    body = {
        **message,
        "content": [{"type": "text", "text": "".join(parts)}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": len(parts)},
    }
    steps: list[tuple[str, dict]] = [
        ("message_start", {"message": message}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {}),
    ]
    steps += [("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in parts]
    steps += [
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": body["usage"]}),
        ("message_stop", {}),
    ]
    events = [Event({"type": name, **data}, name, name == "content_block_delta") for name, data in steps]
    return events, body


def _responses(model: str, parts: list[str], generate: bool = True) -> tuple[list[Event], Any]:
    """OpenAI Responses: the streaming event sequence and the response body.

    With ``generate=False`` (Codex's prewarm) only response.created and an empty
    response.completed.
    """
    text = "".join(parts)
    ids = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    item = {"id": "msg_fake", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {**part, "text": text}
    done_item = {**item, "status": "completed", "content": [done_part]}
    response = {
        "id": "resp_fake",
        "object": "response",
        "created_at": CREATED,
        "status": "in_progress",
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
    }
    body = {
        **response,
        "status": "completed",
        "output": [done_item] if generate else [],
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(parts),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 10 + len(parts),
        },
    }
    steps: list[tuple[str, dict]] = [("response.created", {"response": response})]
    if generate:
        steps += [
            ("response.in_progress", {"response": response}),
            ("response.output_item.added", {"output_index": 0, "item": item}),
            ("response.content_part.added", {**ids, "part": part}),
        ]
        steps += [("response.output_text.delta", {**ids, "delta": p, "logprobs": []}) for p in parts]
        steps += [
            ("response.output_text.done", {**ids, "text": text, "logprobs": []}),
            ("response.content_part.done", {**ids, "part": done_part}),
            ("response.output_item.done", {"output_index": 0, "item": done_item}),
        ]
    steps.append(("response.completed", {"response": body}))
    events = [
        Event({"type": name, "sequence_number": n, **data}, name, name == "response.output_text.delta")
        for n, (name, data) in enumerate(steps)
    ]
    return events, body


def _gemini(model: str, parts: list[str]) -> tuple[list[Event], Any]:
    """Gemini: GenerateContentResponse chunks (the last with finishReason STOP) and the whole reply."""

    def response(text: str, last: bool) -> dict:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        usage = {"promptTokenCount": 10, "candidatesTokenCount": len(parts), "totalTokenCount": 10 + len(parts)}
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model}

    events = [Event(response(p, n == len(parts) - 1), chunk=True) for n, p in enumerate(parts)]
    return events, response("".join(parts), True)


def _openai_error(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _anthropic_error(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": "api_error", "message": message}}


def _gemini_error(status: int, message: str) -> dict:
    return {"error": {"code": status, "message": message, "status": "INTERNAL"}}


@dataclass(frozen=True)
class _Api:
    """How one provider API builds replies, renders errors and frames SSE."""

    build: Build
    error: Callable[[int, str], dict]
    call: Callable[[str, ToolCall], tuple[list[Event], Any]]
    sse_sep: str = "\n\n"

    def sse(self, event: Event) -> bytes:
        data = event.data if isinstance(event.data, str) else json.dumps(event.data)
        head = f"event: {event.name}\n" if event.name else ""
        return f"{head}data: {data}{self.sse_sep}".encode()


CHAT = _Api(_chat, _openai_error, _chat_call)
ANTHROPIC = _Api(_anthropic, _anthropic_error, _anthropic_call)
RESPONSES = _Api(_responses, _openai_error, _responses_call)
GEMINI = _Api(_gemini, _gemini_error, _gemini_call, "\r\n\r\n")  # Google frames SSE events with CRLF
_GEMINI_PATH = re.compile(r"/v1(?:beta|alpha)?/models/([^/:]+):(generateContent|streamGenerateContent)")


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
        return None


def split(text: str, n: int) -> list[str]:
    """Split ``text`` into at most ``n`` non-empty pieces of near-equal size (one piece if empty)."""
    size = max(1, math.ceil(len(text) / max(1, n)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [text]


class FakeUpstream(RecordingServer):
    """A fake LLM provider on 127.0.0.1, with recording, pacing and fault knobs.

    Knobs (set any time): ``reply``, ``chunks``, ``chunk_delay`` (seconds between
    streamed chunks), ``lockstep`` (each chunk after the first waits for one
    ``release()``, up to ``lockstep_timeout`` seconds, after which the stream
    ends), ``fail_status`` (answer LLM calls with that status and a
    provider-shaped error, ``fail_message`` as its message and ``fail_headers``
    as extra response headers), ``reset_mid_stream`` (close the connection after two
    chunks), ``require_cookie`` (a cookie name: an LLM call without that cookie
    set to ``cookie_token`` gets a Cloudflare-style challenge, 403 with
    ``Set-Cookie`` and ``cf-mitigated: challenge``; a GET of any other path is
    challenged too, and otherwise answered ``{}``). ``sent_times`` holds the
    monotonic send time of every chunk. ``reply_for`` (a function of the
    ``Recorded`` request, or None) gives each request its own reply text. ``linger`` (seconds) holds a
    stream open after its last event before ending it.
    ``decompress=False`` records request bodies exactly as they arrived,
    Content-Encoding not undone. ``tool_call`` (a function of the request's
    parsed body giving a ``ToolCall`` or None) makes a tool loop: a request
    that does not end with a tool's result is answered with that call, and
    the one that does with the reply; with ``calls_after_results``, every request
    is asked (a loop of several calls), and None means the reply.
    ``prompt_tokens`` (a function of the request's parsed body) makes an Anthropic,
    Responses or Gemini answer report that many input tokens, and a streamed Chat
    Completions reply end with a usage chunk reporting that many prompt tokens.
    """

    thread_name = "fake-upstream"

    def __init__(self, *, decompress: bool = True) -> None:
        super().__init__()
        self.decompress = decompress
        self.reply = DEFAULT_REPLY
        self.reply_for: Callable[[Recorded], str] | None = None
        self.tool_call: Callable[[Any], ToolCall | None] | None = None
        self.calls_after_results = False
        self.prompt_tokens: Callable[[Any], int] | None = None
        self.chunks = 5
        self.chunk_delay = 0.0
        self.lockstep = False
        self.lockstep_timeout = 10.0
        self.fail_status: int | None = None
        self.fail_message = "fake upstream failure"
        self.fail_headers: dict[str, str] = {}
        self.reset_mid_stream = False
        self.require_cookie: str | None = None
        self.cookie_token = secrets.token_urlsafe(16)
        self.sent_times: list[float] = []
        self.linger = 0.0
        self.streams: list[web.Request] = []  # the SSE answers begun, in order
        self._gate = asyncio.Semaphore(0)

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, auto_decompress=self.decompress)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    # test-side helpers

    def release(self, n: int = 1) -> None:
        """Let ``n`` more chunks go out in lockstep mode (thread-safe)."""
        assert self._loop is not None, "upstream not started"
        for _ in range(n):
            self._loop.call_soon_threadsafe(self._gate.release)

    def stream_closed(self, n: int = -1) -> bool:
        """Whether the connection of the `n`th SSE answer begun is closed (by the other side, say)."""
        transport = self.streams[n].transport
        return transport is None or transport.is_closing()

    def _matches(self, rec: Recorded, path: str) -> bool:
        return path in rec.path  # a part of the path: the providers' paths carry models and versions

    def clear(self) -> None:
        with self._seen:
            super().clear()
            self.sent_times.clear()

    # server side

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rec = self._record(request, body, _loads(body) if body else None)

        path, data = request.path, rec.json if isinstance(rec.json, dict) else {}
        model = str(data.get("model", "fake-model"))
        if path == "/v1/models" and request.method == "GET":
            return web.json_response(MODELS)
        if path == "/v1/messages/count_tokens" and request.method == "POST":
            return web.json_response({"input_tokens": 10})
        if m := _GEMINI_PATH.fullmatch(path):
            api, model, stream = GEMINI, m[1], m[2] == "streamGenerateContent"
        elif path in ("/v1/chat/completions", "/chat/completions"):
            api, stream = CHAT, data.get("stream") is True
        elif path == "/v1/messages":
            api, stream = ANTHROPIC, data.get("stream") is True
        elif path in ("/v1/responses", "/responses"):
            api, stream = RESPONSES, data.get("stream") is True
        elif request.method == "GET":  # a client's other calls to the host (Claude Code's settings): `{}`
            return self._challenge() if self._challenges(request) else web.json_response({})
        else:
            return web.json_response({"error": {"message": f"no route {request.method} {path}"}}, status=404)
        websocket = api is RESPONSES and request.method == "GET" and web.WebSocketResponse().can_prepare(request).ok
        if request.method != "POST" and not websocket:
            return web.json_response({"error": {"message": f"method {request.method} not allowed"}}, status=405)
        if self._challenges(request):
            return self._challenge()
        if self.fail_status:
            body = api.error(self.fail_status, self.fail_message)
            return web.json_response(body, status=self.fail_status, headers=self.fail_headers)
        if websocket:
            return await self._websocket(request, rec)

        text = self.reply_for(rec) if self.reply_for else self.reply
        if api is RESPONSES and _compacts(data):
            events, reply = _responses_compaction(model)
        elif (call := self._call(data)) is not None:
            events, reply = api.call(model, call)
        else:
            events, reply = api.build(model, split(text, self.chunks))
        tokens = self.prompt_tokens(data) if self.prompt_tokens else None
        if api is ANTHROPIC:
            _anthropic_answer(events, reply, data.get("messages"), tokens)
        elif api is RESPONSES:
            _responses_input(events, tokens)
        elif api is GEMINI and tokens is not None:
            for body in (reply, *(e.data for e in events)):
                body["usageMetadata"] = {**body.get("usageMetadata", {}), "promptTokenCount": tokens}
        if api is CHAT and stream and tokens is not None:  # the usage chunk, as include_usage asks
            usage = {"prompt_tokens": tokens, "completion_tokens": 1, "total_tokens": tokens + 1}
            events.insert(-1, Event({"id": "chatcmpl-fake", "created": CREATED, "model": model,
                                     "object": "chat.completion.chunk", "choices": [], "usage": usage}))
        if not stream:
            return self._json(rec, reply)
        if api is GEMINI and request.query.get("alt") != "sse":  # streamGenerateContent without SSE: a JSON array
            return self._json(rec, [e.data for e in events])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        self.streams.append(request)

        async def write(event: Event) -> None:
            data = api.sse(event)
            rec.sent += data
            if event is events[-1] and not self.linger:  # the body's end goes with its last event, as a server's
                await resp.write_eof(data)  # would: a client may close on that event before a later end arrives
            else:
                await resp.write(data)

        try:
            if await self._play(events, write, request):
                await asyncio.sleep(self.linger)
                await resp.write_eof()
        except ConnectionResetError:  # the client left mid-stream: the end of this answer, not a server error
            pass
        return resp

    def _challenges(self, request: web.Request) -> bool:
        """Whether a request lacks the cookie that ``require_cookie`` asks for."""
        return bool(self.require_cookie) and request.cookies.get(self.require_cookie) != self.cookie_token

    @staticmethod
    def _json(rec: Recorded, reply: Any) -> web.Response:
        """A JSON answer, its bytes recorded in ``rec.sent``."""
        text = json.dumps(reply)
        rec.sent += text.encode()
        return web.json_response(text=text)

    def _challenge(self) -> web.Response:
        """A Cloudflare-style challenge: an HTML page that sets the clearance cookie."""
        assert self.require_cookie is not None
        headers = {
            "Set-Cookie": f"{self.require_cookie}={self.cookie_token}; Path=/; HttpOnly",
            "cf-mitigated": "challenge",
        }
        html = "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body></body></html>"
        return web.Response(status=403, text=html, content_type="text/html", headers=headers)

    async def _websocket(self, request: web.Request, rec: Recorded) -> web.WebSocketResponse:
        """Responses over WebSocket: answer each ``response.create`` message with its event sequence."""
        ws = web.WebSocketResponse(max_msg_size=64 * 2**20)  # as client_max_size (aiohttp's default: 4 MiB)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                rec.ws_raw.append(msg.data)
            if msg.type != WSMsgType.TEXT:
                continue
            data = _loads(msg.data)
            rec.ws_messages.append(data)
            if not (isinstance(data, dict) and data.get("type") == "response.create"):
                continue
            model = str(data.get("model", "fake-model"))
            generate = data.get("generate") is not False
            if _compacts(data):
                events, _ = _responses_compaction(model)
            elif generate and (call := self._call(data)) is not None:
                events, _ = _responses_call(model, call)
            else:
                text = self.reply_for(rec) if self.reply_for else self.reply
                events, _ = _responses(model, split(text, self.chunks), generate=generate)
            _responses_input(events, self.prompt_tokens(data) if self.prompt_tokens else None)
            if not await self._play(events, lambda e: ws.send_json(e.data), request):
                break
        return ws

    def _call(self, data: Any) -> ToolCall | None:
        """The tool call to answer `data` with: none once the request carries a tool's result."""
        if self.tool_call is None or (answers_tool(data) and not self.calls_after_results):
            return None
        return self.tool_call(data)

    async def _play(self, events: list[Event], write: Callable[[Event], Awaitable[None]], request: web.Request) -> bool:
        """Send ``events``, pacing the text chunks; False if the connection was reset."""
        sent = 0
        for event in events:
            if event.chunk and sent:
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if self.lockstep:
                    try:
                        await asyncio.wait_for(self._gate.acquire(), self.lockstep_timeout)
                    except TimeoutError:
                        return True  # end the stream early: the test sees missing chunks
            if event.chunk:  # noted before it is written: a client may read it before this coroutine resumes
                self.sent_times.append(time.monotonic())
            await write(event)
            if event.chunk:
                sent += 1
                if self.reset_mid_stream and sent == 2:
                    assert request.transport is not None
                    request.transport.close()
                    return False
        return True
