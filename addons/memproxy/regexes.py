"""Regexes from the rules file, searched against a deadline: a rule can never hold the event loop for long.

Rules search what clients send (headers, bodies) with the user's regexes. Python's `re` backtracks without
limit and holds the GIL while it does: '^(\\w|\\w)+$' takes exponential time on a 40-character message, and
every other request waits. The `regex` package takes a timeout (`search(text, timeout=seconds)`, raising
`TimeoutError`); `Pattern.search` gives it what is left of the request's deadline.

A timeout adds a fixed cost to every `regex` call, more than a whole `re` search of a header takes
(bench/README.md, "What the security checks cost"). Patterns with neither repetition nor
alternation cost at most (text x pattern) steps, so on short texts they run on `re` with no timeout: that is
what rules test headers with.

Regexes that run with no deadline at all (mitmproxy's flow filters) are checked by `nested_repetition`:
repetition inside unbounded repetition is the shape of most patterns that backtrack exponentially.
"""

from __future__ import annotations

import re
import time
from re import _constants as sre  # the parser's opcodes: stable in CPython since 3.11 (3.12+ required)
from re import _parser
from typing import Any

import regex

FAST_TEXT = 4096  # characters: longer texts go through the timed engine, whatever the pattern
FAST_PATTERN = 256  # characters of a pattern that may skip the timed engine

# Opcodes whose search cost is at most (text x pattern); SUBPATTERN and the assertions only if their parts are.
_LINEAR = {sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.AT, sre.IN}
_NESTED = {sre.SUBPATTERN, sre.ASSERT, sre.ASSERT_NOT, sre.ATOMIC_GROUP}
_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}


class RegexTimeout(Exception):
    """A search ran out of time (or started with none left)."""

    def __init__(self, pattern: str) -> None:
        super().__init__(f"regex ran out of time: {pattern[:80]!r}")
        self.pattern = pattern


class Pattern:
    """A compiled regex whose `search` never runs past a deadline (`time.monotonic()` seconds).

    The syntax is the `regex` package's (version 0: the `re` syntax, and more); `regex.error` on a bad pattern.
    """

    __slots__ = ("_fast", "_timed", "groupindex", "pattern")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._timed = regex.compile(pattern, flags | regex.VERSION0)
        self.pattern = pattern
        self.groupindex: dict[str, int] = dict(self._timed.groupindex)
        self._fast = re.compile(pattern, flags) if len(pattern) <= FAST_PATTERN and linear(pattern, flags) else None

    def search(self, text: str, deadline: float) -> Any:
        """The first match in `text`, or None; raises RegexTimeout when `deadline` has passed or passes."""
        if self._fast is not None and len(text) <= FAST_TEXT:
            return self._fast.search(text)
        left = deadline - time.monotonic()
        if left <= 0:
            raise RegexTimeout(self.pattern)
        try:
            return self._timed.search(text, timeout=left)
        except TimeoutError:
            raise RegexTimeout(self.pattern) from None

    def __repr__(self) -> str:
        return f"Pattern({self.pattern!r})"


def _parse(pattern: str, flags: int = 0) -> Any:
    """The parse tree of `re`, or None if `re` cannot parse `pattern` (`regex` syntax only)."""
    try:
        return _parser.parse(pattern, flags)
    except (re.error, OverflowError, RecursionError):
        return None


def linear(pattern: str, flags: int = 0) -> bool:
    """Whether `pattern` has no repetition (`*`, `+`, `?`, `{m,n}`), alternation or back-reference:
    each start position then costs at most one step per part of the pattern."""

    def walk(items: Any) -> bool:
        for op, av in items:
            if op in _LINEAR:
                continue
            if op not in _NESTED:
                return False
            if not walk(av if op is sre.ATOMIC_GROUP else av[-1]):
                return False
        return True

    tree = _parse(pattern, flags)
    return tree is not None and walk(tree)


def nested_repetition(pattern: str, flags: int = 0) -> bool:
    """Whether an unbounded repetition (`*`, `+`, `{m,}`) in `pattern` holds another repetition or an
    alternation. Such patterns can backtrack exponentially (e.g. '^(\\w+\\s?)+$'); most others cannot."""
    tree = _parse(pattern, flags)
    if tree is None:
        return False

    def risky(items: Any) -> bool:  # holds a repetition or an alternation
        for op, av in items:
            if op in _REPEATS or op is sre.BRANCH:
                return True
            if op in _NESTED and risky(av if op is sre.ATOMIC_GROUP else av[-1]):
                return True
        return False

    def walk(items: Any) -> bool:
        for op, av in items:
            if op in _REPEATS:
                low, high, body = av
                if high == sre.MAXREPEAT and risky(body):
                    return True
                if walk(body):
                    return True
            elif op is sre.BRANCH:
                if any(walk(branch) for branch in av[1]):
                    return True
            elif op in _NESTED and walk(av if op is sre.ATOMIC_GROUP else av[-1]):
                return True
            elif op is sre.GROUPREF_EXISTS and any(b is not None and walk(b) for b in av[1:]):
                return True
        return False

    return walk(tree)
