"""Secrets in text: found by the detectors of `detectors.py` (detect-secrets' plugins and ours) and
replaced by `[secret: <kind>]`.

Turns are scrubbed in the outbox's worker thread before they are written; `memproxy memories scrub`
cleans what was stored before. A pattern's match is replaced whole, or only its capture groups where
these hold the secret (`aws_secret_access_key = <secret>` keeps its name). A match that runs on into
letters or digits, or into the punctuation it holds itself, is part of something longer (a hash,
base64 data) and is left alone. A secret found once is replaced wherever else the text repeats it, and
`scrub_together` does so across the texts of one whole (a turn's prompt, reply and trace).
Overlapping finds are replaced once, as the kind of the longest.

The detectors are imported on first use, as detect-secrets imports requests: `load()` in a worker
thread has that done before the first turn.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .detectors import Detector

MIN_GROUP = 8  # a capture group shorter than this is a pattern's prefix (`(ghp|gho)_...`), not the secret
ALNUM = frozenset(string.ascii_letters + string.digits)
JOINERS = frozenset("+/_-")  # punctuation that continues a token whose match holds it too


MARKER_START = "[secret: "
MARKED = re.compile(re.escape(MARKER_START) + r"[^\]\n]*\]")  # a `marker` in scrubbed text


def marker(kind: str) -> str:
    """What a secret of `kind` is replaced with."""
    return f"{MARKER_START}{kind}]"


@dataclass(frozen=True, slots=True)
class Scrubbed:
    """Scrubbed text, and how many secrets of each kind were replaced in it."""

    text: str
    found: Counter[str] = field(default_factory=Counter)


@functools.cache
def load() -> tuple[Detector, ...]:
    """The detectors, imported on the first call: make it in a worker thread (see the module's docstring)."""
    from .detectors import detectors

    return detectors()


def scrub(text: str) -> Scrubbed:
    """`text` with every secret found in it replaced by `[secret: <kind>]`. CPU work: keep it off the event loop."""
    return scrub_together([text])[0]


def scrub_together(texts: Sequence[str]) -> list[Scrubbed]:
    """Each of `texts` scrubbed as `scrub` does, and also of the secrets found in the others: a secret known by its
    context in one (a password in a URL) is replaced where another repeats it without it. CPU work: keep it off
    the event loop."""
    found = [list(_find(text, load())) if text else [] for text in texts]
    values = {text[start:end]: kind for text, spans in zip(texts, found) for start, end, kind in spans
              if _distinctive(text[start:end])}
    return [_replaced(text, _everywhere(text, spans, values)) for text, spans in zip(texts, found)]


def _replaced(text: str, spans: list[tuple[int, int, str]]) -> Scrubbed:
    """`text` with `spans` (maybe overlapping) replaced by their markers."""
    if not spans:
        return Scrubbed(text)
    parts, found, at = [], Counter[str](), 0
    for start, end, kind in _merge(sorted(spans, key=lambda s: (s[0], -s[1]))):
        parts += (text[at:start], marker(kind))
        found[kind] += 1
        at = end
    parts.append(text[at:])
    return Scrubbed("".join(parts), found)


def _find(text: str, detectors: tuple[Detector, ...]) -> Iterator[tuple[int, int, str]]:
    """(start, end, kind) of every secret the detectors find in `text`, unordered and maybe overlapping."""
    from .detectors import PLAUSIBLE

    for detector in detectors:
        plugin, checks = detector.plugin, detector.checks
        for index, pattern in enumerate(plugin.denylist):
            kind = detector.kind(index)
            plausible = PLAUSIBLE.get(kind)
            for match in pattern.finditer(text):
                groups = [g for g in range(1, pattern.groups + 1) if len(match[g] or "") >= MIN_GROUP]
                if not groups and _joined(text, *match.span()):
                    continue
                if checks and not any(True for _ in plugin.analyze_string(match[0])):
                    continue
                for start, end in [match.span(g) for g in groups] or [match.span()]:
                    if plausible is None or plausible(text, start, end):
                        yield start, end, kind


def _everywhere(text: str, spans: list[tuple[int, int, str]], values: dict[str, str]) -> list[tuple[int, int, str]]:
    """`spans`, and every other place in `text` that holds one of the secrets `values` names (by its kind): a
    secret known by its context (a password in a URL, a key next to its id) may be repeated without it. Only one
    that could not be a word (`_distinctive`): `://user:password@host` leaves the other passwords alone."""
    for value, kind in values.items():
        at = text.find(value)
        while at >= 0:
            spans.append((at, at + len(value), kind))
            at = text.find(value, at + 1)
    return spans


def _distinctive(value: str) -> bool:
    """Long, or holding both letters and digits: not a word of the text around it."""
    return len(value) >= 16 or (
        len(value) >= MIN_GROUP and any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
    )


def _joined(text: str, start: int, end: int) -> bool:
    """Whether `text[start:end]` runs on into its neighbours: letters, digits or the punctuation it holds itself."""
    joining = ALNUM | (JOINERS & set(text[start:end]))
    return (start > 0 and text[start - 1] in joining) or (end < len(text) and text[end] in joining)


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping spans (sorted by start, longest first) as one, of the kind of the longest among them."""
    merged: list[tuple[int, int, str, int]] = []  # (start, end, kind, length of the longest)
    for start, end, kind in spans:
        if merged and start < merged[-1][1]:
            first, last, merged_kind, longest = merged[-1]
            if end - start > longest:
                merged_kind, longest = kind, end - start
            merged[-1] = (first, max(last, end), merged_kind, longest)
        else:
            merged.append((start, end, kind, end - start))
    return [(start, end, kind) for start, end, kind, _ in merged]
