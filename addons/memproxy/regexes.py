"""Regexes from the rules file, searched against a deadline: a rule can never hold the event loop for long.

Rules search what clients send (headers, bodies) with the user's regexes. Python's `re` backtracks without
limit and holds the GIL while it does: '^(\\w|\\w)+$' takes exponential time on a 40-character message, and
every other request waits. The `regex` package takes a timeout (`search(text, timeout=seconds)`, raising
`TimeoutError`); `Pattern.search` gives it what is left of the request's deadline.

A timeout adds a fixed cost to every `regex` call, more than a whole `re` search of a header takes
(bench/README.md, "What the security checks cost"). Patterns with neither repetition nor
alternation cost at most (text x pattern) steps, so on short texts they run on `re` with no timeout: that is
what rules test headers with.

A pattern that can only match where a literal of its own stands (`needs`: "cc_is_subagent=true", or one of
"CRITICAL: Respond" and "You are the component") is first looked for with a substring search, which costs a
small part of a regex's scan over a long system prompt; a case-insensitive one in the text lower-cased, unless
the text holds one of the four characters that match an ASCII letter case-insensitively (FOLDS_TO_ASCII).

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
MIN_NEED = 3  # characters of the shortest literal a pattern needs, for the substring test to be worth it
# The characters outside ASCII that match an ASCII letter case-insensitively (`re`'s four; `regex` matches three
# of them): İ, ı, ſ and the Kelvin sign. Without them, lower-casing a text keeps its length and maps nothing else
# to ASCII.
FOLDS_TO_ASCII = ("\u0130", "\u0131", "\u017f", "\u212a")
_FUZZY = re.compile(r"\{\s*[eisd]")  # `regex`'s fuzzy matching ("(?:abc){e<=1}"), which `re` parses as literals

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

    __slots__ = ("_fast", "_fold", "_needs", "_timed", "groupindex", "pattern")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._timed = regex.compile(pattern, flags | regex.VERSION0)
        self.pattern = pattern
        self.groupindex: dict[str, int] = dict(self._timed.groupindex)
        self._fast = re.compile(pattern, flags) if len(pattern) <= FAST_PATTERN and linear(pattern, flags) else None
        self._fold = bool(self._timed.flags & regex.IGNORECASE)
        self._needs = needs(pattern, flags)

    def search(self, text: str, deadline: float) -> Any:
        """The first match in `text`, or None; raises RegexTimeout when `deadline` has passed or passes."""
        if self._needs is not None and not self._may_match(text):
            return None
        if self._fast is not None and len(text) <= FAST_TEXT:
            return self._fast.search(text)
        left = deadline - time.monotonic()
        if left <= 0:
            raise RegexTimeout(self.pattern)
        try:
            return self._timed.search(text, timeout=left)
        except TimeoutError:
            raise RegexTimeout(self.pattern) from None

    def _may_match(self, text: str) -> bool:
        """Whether `text` holds one of the literals the pattern needs (False only where it cannot match)."""
        if self._fold:
            if not text.isascii() and any(c in text for c in FOLDS_TO_ASCII):
                return True
            text = text.lower()
        return any(need in text for need in self._needs)

    def __repr__(self) -> str:
        return f"Pattern({self.pattern!r})"


def needs(pattern: str, flags: int = 0) -> tuple[str, ...] | None:
    """Literals one of which every match of `pattern` holds, lower-cased for a case-insensitive pattern (then
    ASCII only); None where none is known, or the shortest is under MIN_NEED characters. Read from `re`'s parse
    tree: a run of literals in the pattern's own sequence, or one literal from each branch of an alternation
    that sequence must pass through; a group with flags of its own is not looked into."""
    tree = _parse(pattern, flags)
    if tree is None or _FUZZY.search(pattern):
        return None
    fold = bool(tree.state.flags & re.IGNORECASE)

    def best(items: Any) -> tuple[str, ...] | None:
        found: list[tuple[str, ...]] = []
        run: list[str] = []
        for op, av in [*items, (None, None)]:
            char = chr(av) if op is sre.LITERAL else ""
            if char and (char.isascii() or not fold):
                run.append(char.lower() if fold else char)
                continue
            if run:
                found.append(("".join(run),))
                run = []
            if op is sre.SUBPATTERN and not av[1] and not av[2]:
                if (inner := best(av[3])) is not None:
                    found.append(inner)
            elif op is sre.BRANCH:
                branches = [best(branch) for branch in av[1]]
                if all(b is not None for b in branches):
                    found.append(tuple(dict.fromkeys(n for b in branches for n in b)))
        return max(found, key=lambda lits: min(map(len, lits)), default=None)

    got = best(tree)
    return got if got is not None and min(map(len, got)) >= MIN_NEED else None


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
