"""Regexes with a time limit: the deadline, the fast path and the structural checks."""

from __future__ import annotations

import time

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st
from memproxy.regexes import FAST_TEXT, Pattern, RegexTimeout, linear, needs, nested_repetition

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


@pytest.mark.parametrize(("pattern", "expected"), [
    (r"(?i)generate a\b[^.\n]{0,40}\btitle\b|title generator", ("generate a", "title generator")),
    (r"^\s*(?:CRITICAL: Respond\.|You are the component\b)", ("CRITICAL: Respond.", "You are the component")),
    (r"\bcc_is_subagent=true\b(?s:.*?)<env>\s*dir: (?P<cwd>[^\n]+)", ("cc_is_subagent=true",)),
    ("(?i)ÄBCD|xyz", ("bcd", "xyz")),  # a case-insensitive letter outside ASCII is not looked for
    ("ab?c", None), ("x(?:foo|bar)*yz", None), ("a|bcd", None), ("^(?!main$)", None), ("(?i:title)", None),
    ("(?:abc){e<=1}", None),  # fuzzy matching (the regex package's): "abc" may be missing
])
def test_the_literals_a_pattern_needs(pattern: str, expected: tuple[str, ...] | None) -> None:
    assert needs(pattern) == expected


@pytest.mark.parametrize(("pattern", "text"), [
    ("(?i)KIS here", "a kis HERE"), ("(?i)kis", "\u212aIS"), ("(?i)title", "T\u0130TLE"), ("(?i)sss", "\u017fss"),
    ("(?i)this", "TH\u0131S"), ("cc_is_subagent=true", "x cc_is_subagent=true"), ("abc|xyz", "..xyz"),
])
def test_a_text_holding_what_a_pattern_needs_in_any_case_is_searched(pattern: str, text: str) -> None:
    """Lower-cased where the pattern ignores case; searched in full where the text holds a character that matches
    an ASCII letter case-insensitively (the regex package matches İ, ſ and the Kelvin sign; `re` ı as well)."""
    plain = Pattern(pattern)
    plain._needs = None
    expected = plain.search(text, time.monotonic() + 10)
    found = Pattern(pattern).search(text, time.monotonic() + 10)
    assert (found and found.span()) == (expected and expected.span())
    assert expected or pattern == "(?i)this"  # ı matches only on `re`'s fast path


# Pieces of patterns: literals (ASCII, and the characters that match ASCII letters case-insensitively), groups,
# alternations, classes, repetitions, assertions, scoped flags.
PIECES = st.sampled_from(["ab", "title", "KIS", "xyz", "İ", "ſ", "K", "ı", "é", ".", r"\b", r"\s*", "[a-z]", "?", "*",
                          "+", "{0,3}", "|", "(?:", "(?P<g>", "(?i:", "(?=", ")", "^", "$", r"\.", "a{2}"])


# Texts of words that do and do not hold those literals, in other cases and with those characters.
WORDS = st.sampled_from(["ab", "AB", "title", "TİTLE", "Title", "KIS", "kis", "kıs", "Kis", "ſ", "xyz", "XYZ", "é",
                         " ", ".", "\n", "a", "b"])


@given(st.booleans(), st.lists(PIECES, max_size=8), st.lists(WORDS, max_size=8).map("".join))
def test_looking_for_the_needed_literals_first_changes_no_match(fold: bool, pieces: list[str], text: str) -> None:
    pattern = ("(?i)" if fold else "") + "".join(pieces)
    try:
        plain = Pattern(pattern)
    except regex.error:
        return
    found = Pattern(pattern).search(text, time.monotonic() + 10)
    plain._needs = None  # the same pattern searched without looking for its literals first
    unfiltered = plain.search(text, time.monotonic() + 10)
    assert (found and found.span()) == (unfiltered and unfiltered.span())
