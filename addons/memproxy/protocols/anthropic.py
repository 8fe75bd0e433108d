"""Anthropic Messages API (`POST /v1/messages`): Claude Code, the Anthropic SDK, opencode."""

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
    block_entry,
    body_session,
    breakpoints,
    find,
    join_text,
    leading,
    text_parts,
    trace,
    unique_calls,
    user_with_content,
)

_PATH = re.compile(r"/v1/messages/?$")
_TEXT = ("text",)
_CALLS = ("tool_use", "server_tool_use", "mcp_tool_use")
_RESULTS = ("tool_result",)


def _text_block(text: str) -> dict:
    return {"type": "text", "text": text}


def _blocks(text: str) -> list[dict]:
    """`text` as a content list (the API rejects empty text blocks)."""
    return [_text_block(text)] if text else []


class AnthropicAdapter(MessagesAdapter):
    """Cache order is tools -> system -> messages; positions are keyed (0, tool),
    (1, system block) and (2, message, content block)."""

    name = "anthropic"
    path_pattern = _PATH

    def conversation(self, body: Any) -> list[Entry]:
        if not self.matches_body(body):
            return []
        return [
            block_entry(m["role"], m.get("content"), _TEXT, _CALLS, _RESULTS)
            for m in body["messages"]
            if isinstance(m, dict) and m.get("role") in ("user", "assistant")
        ]

    def client_session(self, body: Any) -> str:
        return body_session(body, "metadata", "user_id")

    def inject(self, body: Any, context: str, strategy: str) -> bool:
        if not context or not self.matches_body(body):
            return False
        plan = self._plan(body, context, strategy)
        return plan is not None and apply_plan(plan, self._breakpoints(body), lambda bp: self._after(body, context))

    @classmethod
    def _after(cls, body: dict, context: str) -> Plan | None:
        """Where a note goes when the plan's place is cached: at the end of the last user message. Never among
        its tool results (text must follow them all), never into an assistant's message (the model would read it
        as its own words); None if that message is before the last breakpoint (an assistant's prefill holds it)."""
        i = find(body["messages"], user_with_content, last=True)
        return None if i is None else cls._user_plan(body["messages"][i], i, context, prefix=False)

    def _plan(self, body: dict, context: str, strategy: str) -> Plan | None:
        messages = body["messages"]
        if strategy in ("user_prefix", "user_suffix"):
            i = find(messages, user_with_content, last=True)
            if i is not None:
                return self._user_plan(messages[i], i, context, strategy == "user_prefix")
            strategy = "system"
        if strategy not in ("system", "dual"):
            return None
        system = body.get("system")
        if isinstance(system, list):
            return (1, len(system)), lambda: system.append(_text_block(context))
        if system is not None and not isinstance(system, str):
            return None
        if strategy == "system":
            new: str | list = join_text(system or "", context)
        else:
            new = [*_blocks(system or ""), _text_block(context)]
        return (1, INF), lambda: body.__setitem__("system", new)

    @staticmethod
    def _user_plan(message: dict, i: int, context: str, prefix: bool) -> Plan:
        content = message["content"]
        if isinstance(content, str):
            new = [_text_block(context), *_blocks(content)] if prefix else [*_blocks(content), _text_block(context)]
            return (2, i, 0), lambda: message.__setitem__("content", new)
        # Tool results must open a user message: a prefix goes right after them.
        at = leading(content, lambda b: b.get("type") == "tool_result") if prefix else len(content)
        return (2, i, at), lambda: content.insert(at, _text_block(context))

    @staticmethod
    def _breakpoints(body: dict) -> Iterator[Breakpoint]:
        yield from breakpoints(body.get("tools"), (0,))
        yield from breakpoints(body.get("system"), (1,))
        for i, message in enumerate(body["messages"]):
            if isinstance(message, dict):
                yield from breakpoints(message.get("content"), (2, i))

    def reply_from_json(self, body: Any) -> str:
        content = body.get("content") if isinstance(body, dict) else None
        return "\n".join(text_parts(content, _TEXT)) if isinstance(content, list) else ""

    def calls_from_json(self, body: Any) -> tuple[str, ...]:
        content = body.get("content") if isinstance(body, dict) else None
        return unique_calls(trace(block_entry("assistant", content, _TEXT, _CALLS, _RESULTS)))

    def accumulator(self) -> ReplyAccumulator:
        return _Accumulator()

    def error_body(self, status: int, message: str, error_type: str) -> dict:
        return {"type": "error", "error": {"type": error_type, "message": message}}


class _Accumulator(EventAccumulator):
    """content_block_start / content_block_delta (text_delta) ... message_stop."""

    def on_event(self, event: str | None, obj: dict) -> None:
        kind = obj.get("type")
        if kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text":
                self.add(block.get("text"), obj.get("index"))
            elif isinstance(block, dict) and block.get("type") in _CALLS:
                self.call(block.get("name"))
        elif kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                self.add(delta.get("text"), obj.get("index"))
        elif kind == "message_stop":
            self._done = True
