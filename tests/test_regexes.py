"""Regexes with a time limit: the deadline, the fast path and the structural checks."""

from __future__ import annotations

import time

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st
from memproxy.regexes import FAST_TEXT, Pattern, RegexTimeout, linear, nested_repetition

SLOW = r"^(\w|\w)+$"


@pytest.mark.timeout(30)
def test_search_raises_when_the_deadline_passes() -> None:
    with pytest.raises(RegexTimeout) as e:
        Pattern(SLOW).search("a" * 40 + "!", time.monotonic() + 0.05)
    assert e.value.pattern == SLOW


def test_search_with_no_time_left_raises_at_once() -> None:
    with pytest.raises(RegexTimeout):
        Pattern("x+").search("x", time.monotonic() - 1)


def test_linear_patterns_on_short_texts_need_no_time() -> None:
    pattern = Pattern("^claude-cli/")
    assert pattern.search("claude-cli/2.1", time.monotonic() - 1)  # no deadline check at all
    with pytest.raises(RegexTimeout):  # a long text goes through the timed engine
        pattern.search("claude-cli/" + "x" * FAST_TEXT, time.monotonic() - 1)


def test_groups_and_syntax() -> None:
    pattern = Pattern(r"dir: (?P<cwd>[^\n]+)")
    assert pattern.groupindex == {"cwd": 1}
    assert pattern.search("x\ndir: /w/shop\ny", time.monotonic() + 1)["cwd"] == "/w/shop"
    assert Pattern(r"^\p{Cyrillic}+$").search("проект", time.monotonic() + 1)  # the regex package's syntax
    with pytest.raises(regex.error):
        Pattern("([")


@pytest.mark.parametrize(("pattern", "expected"), [
    ("^claude-cli/", True),
    ("^(?!main$)", True),
    ("^codex[_-]", True),
    (r"(?i)\bfoo\b", True),
    ("(?>ab)c", True),
    ("a?", False),
    ("a|b c", False),
    ("[^<]+", False),
    ("x{0,40}", False),
    (r"(a)\1", False),
    (r"\p{L}", False),  # `re` cannot parse it: not known to be linear
])
def test_linear(pattern: str, expected: bool) -> None:
    assert linear(pattern) is expected


@pytest.mark.parametrize(("pattern", "expected"), [
    (r"^(\w+\s?)+$", True),
    ("(a|ab)*c", True),
    ("(?:a*)*", True),
    (r"(\w+\.)*example\.com", True),
    ("(?:x{1,3})+", True),
    (r"(\d{1,3}\.){3}", False),  # bounded outside
    ("x+y+z*", False),  # sequential, not nested
    ("(?:foo|bar)", False),
    ("^claude-cli/", False),
])
def test_nested_repetition(pattern: str, expected: bool) -> None:
    assert nested_repetition(pattern) is expected


@given(st.sampled_from(["^claude-cli/", "^(?!main$)", "a.c", r"\bx\b", "^false$", "(?i)AB"]),
       st.text(alphabet="abcx-/ AB\nclaude-imnfs", max_size=40))
def test_fast_path_and_timed_engine_agree(pattern: str, text: str) -> None:
    fast = Pattern(pattern).search(text, time.monotonic() + 10)
    timed = regex.compile(pattern).search(text)
    assert (fast and fast.span()) == (timed and timed.span())
