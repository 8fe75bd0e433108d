"""JSON bodies as the request path reads them: only what can be written back exactly as it came.

A leaf of the package: it imports nothing of memproxy's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

# orjson reads integers past 64 bits as floats; a body with 20 digits in a row takes json instead.
DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
LONG_NUMBER = b"0" * 20


def _json_dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(content: bytes) -> tuple[Any, Callable[[Any], bytes]] | None:
    """A JSON body, and the serialiser that writes it back faithfully: orjson (the fast one), or json for
    integers past 64 bits (orjson would read them as floats). None for what neither can write back as it
    came (NaN, a BOM, UTF-16, lone surrogates, invalid JSON): such a body passes through untouched."""
    try:
        if LONG_NUMBER not in content.translate(DIGITS):
            return orjson.loads(content), orjson.dumps
        return json.loads(content.decode(), parse_constant=_no_constants), _json_dumps
    except (ValueError, RecursionError):  # orjson.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def is_json(content_type: str) -> bool:
    """Whether a Content-Type is JSON (application/json, or any +json media type)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")
