"""An incremental parser for `text/event-stream` bodies."""

from __future__ import annotations

import codecs
import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Characters of one line, and of one event's data: past it the line, or the event, is dropped, so that what an
# upstream streams (one endless line, data lines without a blank line) is not held without bound.
MAX_LINE = 4 << 20


class SSEParser:
    """Turns the chunks of a server-sent event stream into events, following the
    WHATWG parsing rules (line endings \\n, \\r\\n or \\r; comments; multi-line data).

    Chunks may split a stream anywhere, even inside a UTF-8 character. Work is done
    per line, not per byte: a chunk without a line break is only buffered, up to MAX_LINE.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # the unfinished line, in pieces
        self._pending_chars = 0
        self._overlong = False  # the unfinished line passed MAX_LINE: dropped, up to its end
        self._started = False
        self._event: str | None = None
        self._data: list[str] = []
        self._data_chars = 0  # of the event's data; -1 once past MAX_LINE: the event is dropped

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
                self._pending_chars += len(text)
                if self._pending_chars > MAX_LINE:
                    self._pending, self._pending_chars, self._overlong = [], 0, True
            return []
        buffer = "".join(self._pending) + text
        held = ""
        if not end and buffer.endswith("\r"):  # may be the first half of "\r\n"
            buffer, held = buffer[:-1], "\r"
        lines = _LINE_BREAK.split(buffer)
        rest = lines.pop()
        self._pending = [rest + held] if rest or held else []
        self._pending_chars = len(rest) + len(held)
        if end:
            lines += [rest, ""] if rest else [""]
            self._pending, self._pending_chars = [], 0
        if self._overlong and lines:
            lines, self._overlong = lines[1:], False  # the end of the line that was dropped
        return self._lines(lines)

    def _lines(self, lines: list[str]) -> list[tuple[str | None, str]]:
        events: list[tuple[str | None, str]] = []
        for line in lines:
            if not line:
                if self._data and self._data_chars >= 0:
                    events.append((self._event, "\n".join(self._data)))
                self._event, self._data, self._data_chars = None, [], 0
            elif line[0] != ":":
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "data" and self._data_chars >= 0:
                    self._data.append(value)
                    self._data_chars += len(value) + 1
                    if self._data_chars > MAX_LINE:
                        self._data, self._data_chars = [], -1  # dropped, up to its blank line
                elif field == "event":
                    self._event = value or None
        return events
