"""A compiled rule: its conditions, evaluated against a request within a deadline, and its scope template.

Cheap conditions (method, port, host, path, headers) come before the body's. Every regex searches until
the deadline it is given (see memproxy.regexes): what it searches is the client's.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from memproxy.regexes import Pattern
from memproxy.wire import CREDENTIAL_HEADERS, MARK

from . import templates
from .model import Actions, RequestView
from .scopes import PROJECT_PREFIX, scope_name

DEFAULT_BUDGET = 0.3  # seconds a rule's conditions may take when the caller gives no deadline


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    name: str  # as written
    key: str  # lower-cased, for lookup
    pattern: Pattern | None  # None: the header must be absent
    negate: bool  # "!regex": must not match (absent is fine)


# A JSON path segment: "*", (key, index-or-None), or a filter (key, "=", value): the node, if it is an object whose
# `key` holds the string `value`.
Segment = str | tuple[str, int | None] | tuple[str, str, str]


def json_path(text: str) -> tuple[Segment, ...]:
    """The segments of a dot path such as `messages.-1.content`, or `messages.*.role=system.content` (the messages
    whose role is system); no segment empty."""
    return tuple(_segment(s) for s in text.split("."))


def path_text(segs: tuple[Segment, ...]) -> str:
    """A dot path as written (`json_path`'s inverse)."""
    return ".".join(s if s == "*" else s[0] if len(s) == 2 else f"{s[0]}={s[2]}" for s in segs)


def _segment(text: str) -> Segment:
    if text == "*":
        return text
    if "=" in text:
        key, _, value = text.partition("=")
        return (key, "=", value)
    return (text, int(text) if re.fullmatch(r"-?\d+", text) else None)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule, compiled: every condition set must hold. Conditions left empty hold for any request."""

    name: str
    actions: Actions
    template: tuple[templates.Part, ...] | None = None  # None: the default scope
    tool: str = ""  # the tool its requests come from, as memories show it
    silo: str = ""  # per-tool project memory: what replaces `project:` at the start of its scope (`codex:`)
    allow_override: bool = True
    methods: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()
    host: re.Pattern[str] | None = None  # globs, translated by fnmatch: no user regex
    path: Pattern | None = None
    headers: tuple[HeaderCondition, ...] = ()
    model: Pattern | None = None
    project: Pattern | None = None
    filter: Callable[[Any], bool] | None = None
    body: tuple[Pattern, ...] = ()
    json: tuple[tuple[tuple[Segment, ...], Pattern], ...] = ()

    def captures(self, req: RequestView, deadline: float | None = None) -> dict[str, str] | None:
        """The named groups captured if every condition holds, else None. Regexes search until `deadline`
        (`time.monotonic()` seconds; default DEFAULT_BUDGET from now), then raise RegexTimeout."""
        if deadline is None:
            deadline = time.monotonic() + DEFAULT_BUDGET
        caps: dict[str, str] = {}
        if self.methods and (req.method or "").upper() not in self.methods:
            return None
        if self.ports and req.port not in self.ports:
            return None
        if self.host and not self.host.match(req.host or ""):
            return None
        if self.path and not _search(self.path, req.path, caps, deadline):
            return None
        for h in self.headers:
            value = req.headers.get(h.key)
            if h.pattern is None:
                ok = value is None
            elif h.negate:
                ok = not isinstance(value, str) or not h.pattern.search(value, deadline)
            else:
                ok = _search(h.pattern, value, caps, deadline)
            if not ok:
                return None
        if self.model and not _search(self.model, req.model, caps, deadline):
            return None
        if self.project and not _search(self.project, req.project, caps, deadline):
            return None
        if self.filter and (req.flow is None or not self.filter(req.flow)):
            return None
        for pattern in self.body:
            if not _search(pattern, req.raw_body, caps, deadline):
                return None
        for segs, pattern in self.json:
            if (texts := req.texts.get(segs)) is None:  # several rules read the same path (`system`)
                texts = req.texts[segs] = [_text(node) for node in _walk(req.body, segs)]
            if not any(_search(pattern, text, caps, deadline) for text in texts):
                return None
        return caps

    def scope(self, req: RequestView, caps: Mapping[str, str], default: str, roots: list[str] | None = None) -> str | None:
        """The scope this rule gives the request, or None if a template variable is missing or empty. The
        roots of the projects it names are appended to `roots`. Raises templates.ProjectUnknown."""
        if self.template is None:
            return default
        rendered = templates.render(self.template, req, caps, roots)
        if rendered is None:
            return None
        if self.silo and rendered.startswith(PROJECT_PREFIX):
            rendered = self.silo + rendered[len(PROJECT_PREFIX):]
        return scope_name(rendered)

    def matched_pattern(self, req: RequestView, scope: str) -> dict | None:
        """The first header condition that had to match, as /memory-routing/info reports it in `matched_pattern`
        (the seed's shape: header, value, pattern, user_id)."""
        for h in self.headers:
            if h.pattern is not None and not h.negate:
                value = MARK if h.key in CREDENTIAL_HEADERS else req.headers.get(h.key)
                return {"header": h.name, "value": value, "pattern": h.pattern.pattern, "user_id": scope}
        return None


def _search(pattern: Pattern, text: Any, caps: dict[str, str], deadline: float) -> bool:
    if not isinstance(text, str):
        return False
    m = pattern.search(text, deadline)
    if m is None:
        return False
    for k, v in m.groupdict().items():
        if v is not None:
            caps.setdefault(k, v)
    return True


def _walk(node: Any, segs: tuple[Segment, ...]) -> Iterator[Any]:
    """The nodes a JSON path selects, lazily: a key or an index is followed in place, a "*" branches, a filter
    keeps the node or ends the path."""
    for at, seg in enumerate(segs):
        if seg == "*":
            children: Any = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
            for child in children:
                yield from _walk(child, segs[at + 1 :])
            return
        if len(seg) == 3:
            if not (isinstance(node, dict) and node.get(seg[0]) == seg[2]):
                return
            continue
        if isinstance(node, dict):
            if seg[0] not in node:
                return
            node = node[seg[0]]
        elif isinstance(node, list) and seg[1] is not None and -len(node) <= seg[1] < len(node):
            node = node[seg[1]]
        else:
            return
    yield node


def _text(node: Any) -> str:
    """All string leaves under `node` joined by newlines; other scalars as compact JSON."""
    out: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, str):
            out.append(n)
        elif isinstance(n, dict):
            stack.extend(reversed(list(n.values())))
        elif isinstance(n, list):
            stack.extend(reversed(n))
        else:
            out.append(json.dumps(n))
    return "\n".join(out)
