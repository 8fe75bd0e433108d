"""An incremental parser for `text/event-stream` bodies."""

from __future__ import annotations

import codecs
import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Turns the chunks of a server-sent event stream into events, following the
    WHATWG parsing rules (line endings \\n, \\r\\n or \\r; comments; multi-line data).

    Chunks may split a stream anywhere, even inside a UTF-8 character. Work is done
    per line, not per byte: a chunk without a line break is only buffered.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # the unfinished line, in pieces
        self._started = False
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        """The events completed by `chunk`, as (event name or None, data lines joined
        by "\\n"). An empty chunk marks the end of the stream (as mitmproxy's stream
        callback receives it): a last event lacking its blank line is returned too."""
        end = not chunk
        text = self._decoder.decode(chunk, final=end)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if not end and "\n" not in text and "\r" not in text:
            if text:
                self._pending.append(text)
            return []
        buffer = "".join(self._pending) + text
        held = ""
        if not end and buffer.endswith("\r"):  # may be the first half of "\r\n"
            buffer, held = buffer[:-1], "\r"
        lines = _LINE_BREAK.split(buffer)
        rest = lines.pop()
        self._pending = [rest + held] if rest or held else []
        if end:
            lines += [rest, ""] if rest else [""]
            self._pending = []
        return self._lines(lines)

    def _lines(self, lines: list[str]) -> list[tuple[str | None, str]]:
        events: list[tuple[str | None, str]] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append((self._event, "\n".join(self._data)))
                self._event, self._data = None, []
            elif line[0] != ":":
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "data":
                    self._data.append(value)
                elif field == "event":
                    self._event = value or None
        return events
