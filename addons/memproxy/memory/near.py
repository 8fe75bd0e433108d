"""Near-duplicates: two memories that say the same thing (the same answer stored twice, a turn retried with a
word changed), which every store merges into one rather than keep twice."""

from __future__ import annotations

from collections import Counter

from .base import turn_parts
from .index import tokens

# Two memories are near-duplicates when at most one word in NEAR_DUPLICATE_WORDS of the longer differs (one at
# least, in texts of NEAR_DUPLICATE_MIN words or more; NEAR_DUPLICATE_MAX at most, which bounds what comparing costs),
# the words taken in order, and their numbers are the same, in the same order; two turns, when their prompts are
# and their answers are. A turn retried with a word changed merges; turns that differ in a number, in a name named
# twice, or in a short prompt, do not.
NEAR_DUPLICATE_WORDS = 40
NEAR_DUPLICATE_MIN = 5
NEAR_DUPLICATE_MAX = 16


def near_duplicates(a: str, b: str) -> bool:
    """Whether two memories are near-duplicates (see NEAR_DUPLICATE_WORDS): every word counts, numbers included."""
    if (x := turn_parts(a)) and (y := turn_parts(b)):
        return _near(x[0], y[0]) and _near(x[1], y[1])
    return _near(a, b)


def _near(a: str, b: str) -> bool:
    x, y = tokens(a), tokens(b)
    if x == y:
        return bool(x)
    longer = max(len(x), len(y))
    needed = longer - min(max(1, longer // NEAR_DUPLICATE_WORDS), NEAR_DUPLICATE_MAX)  # words in common, at least
    if longer < NEAR_DUPLICATE_MIN or min(len(x), len(y)) < needed or _numbers(x) != _numbers(y):
        return False
    if (Counter(x) & Counter(y)).total() < needed:  # the words in common in any order: a cheap upper bound
        return False
    return _within(x, y, len(x) + len(y) - 2 * needed)


def _numbers(words: list[str]) -> list[str]:
    return [w for w in words if not w.isalpha()]  # a token is letters and digits


def _within(x: list[str], y: list[str], limit: int) -> bool:
    """Whether `x` becomes `y` by deleting and inserting at most `limit` words: Myers' greedy diff, stopped past
    `limit` edits, so it follows at most (limit + 1) * (limit + 2) / 2 runs of agreeing words."""
    n, m = len(x), len(y)
    reach = {1: 0}  # diagonal k (x index - y index) -> the furthest x index reached on it
    for edits in range(limit + 1):
        for k in range(-edits, edits + 1, 2):
            if k == -edits or (k != edits and reach[k - 1] < reach[k + 1]):
                i = reach[k + 1]  # a word of y inserted
            else:
                i = reach[k - 1] + 1  # a word of x deleted
            i += _agreeing(x, y, i, i - k)
            if i >= n and i - k >= m:
                return True
            reach[k] = i
    return False


def _agreeing(x: list[str], y: list[str], i: int, j: int) -> int:
    """How many words `x` from `i` and `y` from `j` have in common before they first differ: compared in slices of
    doubling length (each compared in C), then halving."""
    most = min(len(x) - i, len(y) - j)
    done, step = 0, 1
    while step and done < most:
        step = min(step, most - done)
        if x[i + done : i + done + step] == y[j + done : j + done + step]:
            done += step
            step *= 2
        else:
            step //= 2
    return done
