"""Benchmark 5's peer hook: a LiteLLM proxy callback that injects the bench's memory text, as setup (c) does.

Loaded by the LiteLLM proxy in its own venv (bench/out/peer-venv), never by memproxy. The text is the
framed context our addon injects in setup (c), written by bench/run.py to $BENCH_PEER_MEMORY; like (c),
it goes at the end of the first system message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

MEMORY = Path(os.environ["BENCH_PEER_MEMORY"]).read_text()


class InjectMemory(CustomLogger):
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> dict:
        messages = data.get("messages")
        if isinstance(messages, list):
            system = next((m for m in messages if m.get("role") == "system" and isinstance(m.get("content"), str)), None)
            if system is None:
                messages.insert(0, {"role": "system", "content": MEMORY})
            else:
                system["content"] += "\n\n" + MEMORY
        return data


proxy_handler_instance = InjectMemory()
