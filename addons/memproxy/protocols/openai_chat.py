"""OpenAI Chat Completions (`POST …/chat/completions`): JetBrains BYOK, Cursor,
Qwen Code, the OpenAI SDK and most "OpenAI-compatible" tools."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .base import Entry, ReplyAccumulator
from .common import (
    INF,
    Breakpoint,
    EventAccumulator,
    MessagesAdapter,
    Plan,
    apply_plan,
    body_session,
    breakpoints,
    content_plan,
    dig,
    find,
    holds_media,
    insert_after,
    join_text,
    leading,
    text_parts,
    trace,
    unique_calls,
    user_with_content,
)

_PATH = re.compile(r"/chat/completions/?$")
_TEXT = ("text",)
_RESULTS = ("tool", "function")  # a tool's result; "function" is the older API's
_MODEL_SIDE = ("assistant", *_RESULTS)


def _text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def _is_user(message: dict) -> bool:
    return message.get("role") == "user"


def _is_result(message: dict) -> bool:
    return message.get("role") in _RESULTS


def _entry(message: dict) -> Entry | None:
    """A user or assistant message, or a tool result (role "tool", or "function" of the older API)."""
    role = message.get("role")
    if role in _RESULTS:
        return Entry("tool", "", (), True)
    if role not in ("user", "assistant"):
        return None
    text = "\n".join(text_parts(message.get("content"), _TEXT))
    if role == "user":
        return Entry(role, text, media=holds_media(message.get("content")))
    calls = message.get("tool_calls")
    functions = [dig(call, "function") for call in calls] if isinstance(calls, list) else []
    functions.append(message.get("function_call"))
    return Entry(role, text, tuple((f.get("name"), f.get("arguments")) for f in functions if isinstance(f, dict)))


class OpenAIChatAdapter(MessagesAdapter):
    """Positions are keyed (message, part); (message, inf) is a whole message,
    (message, -1) a new message inserted before it. Some OpenAI-compatible
    providers honour `cache_control` on messages or parts, so it is respected."""

    name = "openai_chat"
    path_pattern = _PATH

    def conversation(self, body: Any) -> list[Entry]:
        if not self.matches_body(body):
            return []
        return [e for m in body["messages"] if isinstance(m, dict) and (e := _entry(m)) is not None]

    def client_session(self, body: Any) -> str:
        return body_session(body, "prompt_cache_key")

    def inject(self, body: Any, context: str, strategy: str) -> bool:
        if not context or not self.matches_body(body):
            return False
        messages = body["messages"]
        plan = self._plan(messages, context, strategy)

        def after(bp: Breakpoint) -> Plan:
            i = bp.key[0]
            if messages[i].get("role") in _MODEL_SIDE:
                # Never into the model's words or a tool's output, never between a call and its results.
                j = i + 1 + leading(messages[i + 1 :], _is_result)
                return (j, -1), lambda: messages.insert(j, {"role": "system", "content": context})
            return insert_after(bp, {"role": "system", "content": context} if bp.container is messages else _text_part(context))

        return plan is not None and apply_plan(plan, self._breakpoints(messages), after)

    @staticmethod
    def _plan(messages: list, context: str, strategy: str) -> Plan | None:
        note = {"role": "system", "content": context}
        if strategy == "dual":
            i = find(messages, _is_user, last=True)
            if i is not None:
                return (i, -1), lambda: messages.insert(i, note)
            strategy = "system"
        elif strategy in ("user_prefix", "user_suffix"):
            i = find(messages, user_with_content, last=True)
            if i is not None:
                return content_plan(messages[i], (i,), context, strategy == "user_prefix", _text_part(context))
            strategy = "system"
        if strategy != "system":
            return None
        i = find(messages, lambda m: m.get("role") in ("system", "developer"))
        if i is None:
            return (0, -1), lambda: messages.insert(0, note)
        message = messages[i]
        content = message.get("content")
        if isinstance(content, str):
            return (i, INF), lambda: message.__setitem__("content", join_text(content, context))
        if isinstance(content, list):
            return (i, len(content)), lambda: content.append(_text_part(context))
        return None

    @staticmethod
    def _breakpoints(messages: list) -> Iterator[Breakpoint]:
        for i, message in enumerate(messages):
            if isinstance(message, dict):
                yield from breakpoints(message.get("content"), (i,))
                if message.get("cache_control") is not None:
                    yield Breakpoint((i, INF), messages, i)

    def reply_from_json(self, body: Any) -> str:
        return "".join(text_parts(dig(body, "choices", 0, "message", "content"), _TEXT))

    def calls_from_json(self, body: Any) -> tuple[str, ...]:
        message = dig(body, "choices", 0, "message")
        return unique_calls(trace(entry)) if isinstance(message, dict) and (entry := _entry(message)) is not None else ()

    def accumulator(self) -> ReplyAccumulator:
        return _Accumulator()

    def error_body(self, status: int, message: str, error_type: str) -> dict:
        return openai_error(status, message, error_type)


def openai_error(status: int, message: str, error_type: str) -> dict:
    """OpenAI's error shape (`code` as LiteLLM's proxy fills it: the status as a string)."""
    return {"error": {"message": message, "type": error_type, "param": None, "code": str(status)}}


class _Accumulator(EventAccumulator):
    """chat.completion.chunk deltas of choice 0, until a finish_reason or [DONE]."""

    def feed(self, event: str | None, data: str) -> None:
        if isinstance(data, str) and data.strip() == "[DONE]":
            self._done = True
        else:
            super().feed(event, data)

    def on_event(self, event: str | None, obj: dict) -> None:
        choices = obj.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self.add("".join(text_parts(dig(choice, "delta", "content"), _TEXT)))
                calls = dig(choice, "delta", "tool_calls")
                if isinstance(calls, list):  # a call's name comes in its first chunk
                    self.call(*(dig(call, "function", "name") for call in calls))
                if choice.get("finish_reason"):
                    self._done = True
