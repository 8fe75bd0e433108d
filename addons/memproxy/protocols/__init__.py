"""Wire-format adapters: one per LLM API the proxy understands."""

from __future__ import annotations

from .anthropic import AnthropicAdapter
from .base import Adapter
from .common import frame_context, strip_memory_blocks
from .gemini import GeminiAdapter
from .openai_chat import OpenAIChatAdapter
from .openai_responses import OpenAIResponsesAdapter

ADAPTERS: tuple[Adapter, ...] = (AnthropicAdapter(), OpenAIChatAdapter(), OpenAIResponsesAdapter(), GeminiAdapter())


def detect_path(method: str, path: str) -> Adapter | None:
    """The adapter for an LLM request by method and path alone (any host prefix)."""
    return next((adapter for adapter in ADAPTERS if adapter.matches_path(method, path)), None)


__all__ = ["ADAPTERS", "Adapter", "detect_path", "frame_context", "strip_memory_blocks"]
