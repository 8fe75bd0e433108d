"""Near-duplicates: two memories that say the same thing (the same answer stored twice, a turn retried with a
word changed), which every store merges into one rather than keep twice."""

from __future__ import annotations

import difflib

from .base import turn_parts
from .index import WORD

# Two memories are near-duplicates when at most one word in NEAR_DUPLICATE_WORDS of the longer differs (one at
# least, in texts of NEAR_DUPLICATE_MIN words or more), the words taken in order, and no number differs; two turns,
# when their prompts are and their answers are. A turn retried with a word changed merges; turns that differ in a
# number, in a name named twice, or in a short prompt, do not.
NEAR_DUPLICATE_WORDS = 40
NEAR_DUPLICATE_MIN = 5


def near_duplicates(a: str, b: str) -> bool:
    """Whether two memories are near-duplicates (see NEAR_DUPLICATE_WORDS): every word counts, numbers included."""
    if (x := turn_parts(a)) and (y := turn_parts(b)):
        return _near(x[0], y[0]) and _near(x[1], y[1])
    return _near(a, b)


def _near(a: str, b: str) -> bool:
    x, y = WORD.findall(a.lower()), WORD.findall(b.lower())
    if x == y:
        return bool(x)
    longer = max(len(x), len(y))
    needed = longer - max(1, longer // NEAR_DUPLICATE_WORDS)  # words in common, at least
    if longer < NEAR_DUPLICATE_MIN or min(len(x), len(y)) < needed:
        return False
    matcher = difflib.SequenceMatcher(None, x, y, autojunk=False)
    if matcher.quick_ratio() * (len(x) + len(y)) / 2 < needed:  # a cheap upper bound of the words in common
        return False
    common, changed = 0, []
    for tag, i, j, k, m in matcher.get_opcodes():
        if tag == "equal":
            common += j - i
        else:
            changed += x[i:j] + y[k:m]
    return common >= needed and not any(c.isdigit() for word in changed for c in word)
