"""OpenAI Responses (`POST …/responses`, and `response.create` messages over a
WebSocket as Codex CLI sends them): Codex, opencode, the OpenAI SDK."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .base import INJECT_STRATEGIES, Entry, ReplyAccumulator
from .common import (
    EventAccumulator,
    JsonAdapter,
    body_session,
    content_plan,
    find,
    holds_media,
    join_text,
    select_query,
    text_parts,
    trace,
    unique_calls,
    user_with_content,
)
from .openai_chat import openai_error

_PATH = re.compile(r"/responses/?$")
_TEXT = ("input_text", "output_text", "text")
_OUTPUT_TEXT = ("output_text",)
_TERMINAL = ("response.completed", "response.failed", "response.incomplete")


def _is_message(item: dict, role: str) -> bool:
    return item.get("type", "message") == "message" and item.get("role") == role


def _is_user(item: dict) -> bool:
    return _is_message(item, "user")


def _input_text(text: str) -> dict:
    return {"type": "input_text", "text": text}


def _entry(item: dict) -> Entry | None:
    """A user or assistant message, a tool call (`function_call`, `custom_tool_call`, `local_shell_call`, …:
    named by its `name`, or else by its type) or a tool's output (`…_call_output`)."""
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant"):
            return None
        content = item.get("content")
        return Entry(role, "\n".join(text_parts(content, _TEXT)), media=holds_media(content))
    if not isinstance(kind, str):
        return None
    if kind.endswith("_call_output"):
        return Entry("tool", "", (), True)
    if kind.endswith("_call"):
        name = item.get("name")
        name = name if isinstance(name, str) else kind.removesuffix("_call")
        arguments = item.get("arguments", item.get("input"))  # a function's JSON text, a custom tool's text
        return Entry("assistant", "", ((name, arguments),))
    return None


def _response_id(response: Any) -> str:
    """A Response object's id; "" if it has none."""
    id_ = response.get("id") if isinstance(response, dict) else None
    return id_ if isinstance(id_, str) else ""


def output_text(response: Any) -> str:
    """The text of a Response object's output messages."""
    if not isinstance(response, dict):
        return ""
    output = response.get("output")
    texts = [
        "\n".join(text_parts(item.get("content"), _OUTPUT_TEXT))
        for item in (output if isinstance(output, list) else ())
        if isinstance(item, dict) and _is_message(item, "assistant")
    ]
    text = "\n".join(filter(None, texts))
    convenience = response.get("output_text")
    return text or (convenience if isinstance(convenience, str) else "")


class OpenAIResponsesAdapter(JsonAdapter):
    """No `cache_control` here: OpenAI caches prefixes automatically, so `dual`
    keeps `instructions` and earlier input items untouched."""

    name = "openai_responses"
    path_pattern = _PATH

    def matches_body(self, body: Any) -> bool:
        if not isinstance(body, dict):
            return False
        return isinstance(body.get("input"), (str, list)) or body.get("type") == "response.create"

    def query(self, body: Any, strategy: str) -> str:
        if not self.matches_body(body):
            return ""
        items = body.get("input")
        if isinstance(items, str):
            return select_query([("user", items)], strategy)
        turns = (
            (item["role"], "\n".join(text_parts(item.get("content"), _TEXT)))
            for item in (items if isinstance(items, list) else ())
            if isinstance(item, dict) and (_is_user(item) or _is_message(item, "assistant"))
        )
        return select_query(turns, strategy)

    def conversation(self, body: Any) -> list[Entry]:
        if not self.matches_body(body):
            return []
        items = body.get("input")
        if isinstance(items, str):
            return [Entry("user", items)]
        return [e for item in (items if isinstance(items, list) else ()) if isinstance(item, dict) and (e := _entry(item))]

    @staticmethod
    def _change(body: dict, context: str, strategy: str) -> Callable[[], None] | None:
        items = body.get("input")
        note = {"type": "message", "role": "developer", "content": [_input_text(context)]}
        if strategy == "dual" and isinstance(items, str):
            user = {"type": "message", "role": "user", "content": [_input_text(items)]}
            return lambda: body.__setitem__("input", [note, user])
        if strategy in ("user_prefix", "user_suffix") and isinstance(items, str):
            text = join_text(context, items) if strategy == "user_prefix" else join_text(items, context)
            return lambda: body.__setitem__("input", text)
        if strategy == "dual" and isinstance(items, list):
            i = find(items, _is_user, last=True)
            if i is not None:
                return lambda: items.insert(i, note)
        if strategy in ("user_prefix", "user_suffix") and isinstance(items, list):
            i = find(items, lambda m: _is_user(m) and user_with_content(m), last=True)
            if i is not None:
                return content_plan(items[i], (i,), context, strategy == "user_prefix", _input_text(context))[1]
        asks = isinstance(items, str) or (isinstance(items, list) and find(items, _is_user) is not None)
        if strategy not in INJECT_STRATEGIES or (_kept(body) and not asks):
            # A later step of a conversation the provider keeps (a tool's output, no new prompt): the note went in
            # with the prompt's first step and is kept there. Again in `instructions` it would be read twice, and
            # the instructions' change would leave the whole kept conversation out of the prompt cache.
            return None
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            return None
        return lambda: body.__setitem__("instructions", join_text(instructions or "", context))

    def reply_from_json(self, body: Any) -> str:
        return output_text(body)

    def calls_from_json(self, body: Any) -> tuple[str, ...]:
        output = body.get("output") if isinstance(body, dict) else None
        items = output if isinstance(output, list) else ()
        return unique_calls(step for item in items if isinstance(item, dict) and (e := _entry(item)) for step in trace(e))

    def reply_id_from_json(self, body: Any) -> str:
        return _response_id(body)

    def client_session(self, body: Any) -> str:
        return body_session(body, "prompt_cache_key")

    def continues(self, body: Any) -> str | None:
        """`previous_response_id`, or the id of the `conversation` the request adds to."""
        if not isinstance(body, dict) or body.get("store") is False:  # a reply not stored cannot be continued
            return None
        return _kept(body)

    def accumulator(self) -> ReplyAccumulator:
        return _Accumulator()

    def error_body(self, status: int, message: str, error_type: str) -> dict:
        return openai_error(status, message, error_type)


def _kept(body: dict) -> str:
    """The id of what the provider keeps of the conversation before this request (`previous_response_id`, or the
    `conversation`'s); "" for nothing."""
    previous, conversation = body.get("previous_response_id"), body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    return next((name for name in (previous, conversation) if isinstance(name, str) and name), "")


class _Accumulator(EventAccumulator):
    """response.output_text.delta events until response.completed (or failed /
    incomplete); the final Response's own output text wins when it has one."""

    def __init__(self) -> None:
        super().__init__()
        self._final = ""
        self._id = ""

    def on_event(self, event: str | None, obj: dict) -> None:
        kind = obj.get("type", event)
        if kind == "response.created" or kind in _TERMINAL:
            self._id = _response_id(obj.get("response")) or self._id
        if kind == "response.output_text.delta":
            self.add(obj.get("delta"), obj.get("output_index"), obj.get("content_index"))
        elif kind == "response.output_item.done" and isinstance(item := obj.get("item"), dict):
            if (entry := _entry(item)) is not None:  # the call whole, its arguments included
                self.call(*trace(entry))
        elif kind in _TERMINAL:
            self._done = True
            self._final = output_text(obj.get("response"))

    def text(self) -> str:
        return self._final or super().text()

    def reply_id(self) -> str:
        return self._id
