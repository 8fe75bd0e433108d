"""Test doubles for end-to-end tests: a fake LLM upstream, client messages and small mitmproxy scripts."""

from __future__ import annotations

from typing import Any

from .upstream import FakeUpstream, Recorded, ToolCall

__all__ = ["FakeUpstream", "Recorded", "ToolCall", "codex_request"]


def codex_request(text: str = "Say hello", *, cwd: str = "/tmp/project", generate: bool = True) -> dict[str, Any]:
    """A Codex-like ``response.create`` message (``generate=False``: the prewarm, with empty input)."""
    context = f"<environment_context><cwd>{cwd}</cwd></environment_context>"
    items = [context, text] if generate else []
    message: dict[str, Any] = {
        "type": "response.create",
        "model": "gpt-5.1-codex",
        "instructions": "You are Codex, a coding agent.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": t}]} for t in items
        ],
        "tools": [],
        "stream": True,
        "store": False,
    }
    if not generate:
        message["generate"] = False
    return message
