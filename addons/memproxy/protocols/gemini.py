"""Gemini (`POST …/models/{model}:generateContent` and `:streamGenerateContent`):
Gemini CLI, google-genai."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .base import INJECT_STRATEGIES, Entry, ReplyAccumulator
from .common import EventAccumulator, JsonAdapter, dig, find, leading, select_query, text_parts, trace, unique_calls

_PATH = re.compile(r"/models/([^/:]+):(generateContent|streamGenerateContent)/?$")
_TEXT = (None,)  # Gemini parts have no "type"; text parts carry "text"
# Canonical Google API status names for HTTP statuses.
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _is_user(content: dict) -> bool:
    return content.get("role") in (None, "user")


def _parts_text(parts: Any) -> str:
    return "".join(text_parts(parts, _TEXT))


def _steps(parts: Any) -> tuple[tuple[Any, Any], ...]:
    """The name and arguments of each function `parts` call (functionCall parts)."""
    calls = [p.get("functionCall") for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
    return tuple((call.get("name"), call.get("args")) for call in calls if isinstance(call, dict))


def _calls(parts: Any) -> tuple[str, ...]:
    """The functions `parts` call, with the files they name (`trace`)."""
    return unique_calls(trace(Entry("assistant", "", _steps(parts))))


def _entry(content: dict) -> Entry | None:
    """A user content (its functionResponse parts are tool results) or a model content (its functionCall parts
    name tools)."""
    role, parts = content.get("role"), content.get("parts")
    if role not in (None, "user", "model") or not isinstance(parts, list):
        return None
    parts = [p for p in parts if isinstance(p, dict)]
    if role == "model":  # its text parts joined as a reply's are (streamed chunks), so that a stored one is known
        return Entry("assistant", _parts_text(parts), _steps(parts))
    media = any("inlineData" in p or "fileData" in p for p in parts)
    return Entry("user", "\n".join(text_parts(parts, _TEXT)), (), any("functionResponse" in p for p in parts), media)


class GeminiAdapter(JsonAdapter):
    """No `cache_control` here (Gemini caches through cachedContent), so `dual`
    keeps systemInstruction and earlier contents untouched: the memory goes in its
    own part at the start of the last user content (like `user_prefix`)."""

    name = "gemini"
    path_pattern = _PATH

    def matches_body(self, body: Any) -> bool:
        return isinstance(body, dict) and isinstance(body.get("contents"), list)

    def model(self, path: str, body: Any) -> str | None:
        match = _PATH.search(path.partition("?")[0])
        return match.group(1) if match else None

    def is_streaming(self, path: str, body: Any) -> bool:
        match = _PATH.search(path.partition("?")[0])
        return match is not None and match.group(2) == "streamGenerateContent"

    def query(self, body: Any, strategy: str) -> str:
        """Read from `conversation`, so that a content the prompt does not read (its `parts` not a list) is not
        searched for either."""
        return select_query(((e.role, e.text) for e in self.conversation(body)), strategy)

    def conversation(self, body: Any) -> list[Entry]:
        if not self.matches_body(body):
            return []
        return [e for c in body["contents"] if isinstance(c, dict) and (e := _entry(c)) is not None]

    @staticmethod
    def _change(body: dict, context: str, strategy: str) -> Callable[[], None] | None:
        if strategy not in INJECT_STRATEGIES:
            return None
        part = {"text": context}
        contents = body["contents"]
        i = find(contents, lambda c: _is_user(c) and isinstance(c.get("parts"), list), last=True)
        if strategy != "system" and i is not None:
            parts = contents[i]["parts"]
            # Function responses open a user turn: a prefix goes right after them.
            at = len(parts) if strategy == "user_suffix" else leading(parts, lambda p: "functionResponse" in p)
            return lambda: parts.insert(at, part)
        snake = "system_instruction" in body and "systemInstruction" not in body
        key = "system_instruction" if snake else "systemInstruction"
        system = body.get(key)
        if system is None:
            return lambda: body.__setitem__(key, {"parts": [part]})
        if not isinstance(system, dict) or not isinstance(system.get("parts", []), list):
            return None
        return lambda: system.setdefault("parts", []).append(part)

    def reply_from_json(self, body: Any) -> str:
        return _parts_text(dig(body, "candidates", 0, "content", "parts"))

    def calls_from_json(self, body: Any) -> tuple[str, ...]:
        return _calls(dig(body, "candidates", 0, "content", "parts"))

    def accumulator(self) -> ReplyAccumulator:
        return _Accumulator()

    def error_body(self, status: int, message: str, error_type: str) -> dict:
        """Google's error shape; `status` is the canonical name for the HTTP status."""
        fallback = "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"
        return {"error": {"code": status, "message": message, "status": _STATUS.get(status, fallback)}}


class _Accumulator(EventAccumulator):
    """Each event is a GenerateContentResponse; the turn ends with a finishReason."""

    def on_event(self, event: str | None, obj: dict) -> None:
        candidates = obj.get("candidates")
        for candidate in candidates if isinstance(candidates, list) else ():
            if isinstance(candidate, dict) and candidate.get("index", 0) == 0:
                parts = dig(candidate, "content", "parts")
                self.add(_parts_text(parts))
                self.call(*_calls(parts))
                if candidate.get("finishReason"):
                    self._done = True
