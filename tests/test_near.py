"""Near-duplicates (memory.near): what merges, and what comparing costs on hostile text."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memproxy.memory import near
from memproxy.memory.near import NEAR_DUPLICATE_MAX, near_duplicates

# Two words: the vocabulary that made an edit-script comparison cost seconds on a turn at capture's caps.
POOR = random.Random(7).choices(["ok", "no"], k=16_000)


def changed(words: list[str], every: int, word: str = "zz") -> str:
    return " ".join(word if i % every == every // 2 else w for i, w in enumerate(words))


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the runs of agreeing words a comparison follows."""
    followed: list[int] = []
    agreeing = near._agreeing

    def counted(*args: object) -> int:
        followed.append(1)
        return agreeing(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(near, "_agreeing", counted)
    return followed


def test_a_long_text_merges_up_to_the_most_words_changed() -> None:
    text = " ".join(POOR)
    assert near_duplicates(text, changed(POOR, len(POOR) // NEAR_DUPLICATE_MAX))  # 16 words changed
    assert not near_duplicates(text, changed(POOR, len(POOR) // NEAR_DUPLICATE_MAX - 50))  # 17
    assert near_duplicates(text, " ".join(POOR[1:] + ["ok"]))  # a word moved from the start to the end
    shuffled = random.Random(1).sample(POOR, len(POOR))
    assert not near_duplicates(text, " ".join(shuffled))  # the same words in another order


def test_comparing_hostile_turns_follows_a_bounded_number_of_runs(runs: list[int]) -> None:
    bound = (2 * NEAR_DUPLICATE_MAX + 1) * (2 * NEAR_DUPLICATE_MAX + 2) // 2
    prompt, answer = POOR[:1_330], POOR[1_330:4_000]  # capture keeps 4,000 and 8,000 characters
    for other in (random.Random(2).sample(answer, len(answer)), answer[::-1], ["ok", "no"] * 1_335):
        runs.clear()
        assert not near_duplicates(f"User: {' '.join(prompt)}\nAssistant: {' '.join(answer)}",
                                   f"User: {' '.join(prompt)}\nAssistant: {' '.join(other)}")
        assert len(runs) <= bound


def test_numbers_must_be_the_same_and_in_the_same_order() -> None:
    text = "deploy the api on port 7001 after the migration 42 finishes tonight"
    assert near_duplicates(text, text.replace("tonight", "today"))
    assert not near_duplicates(text, text.replace("7001", "7002"))
    assert not near_duplicates(text, text.replace("7001", "42").replace("migration 42", "migration 7001"))


@given(st.lists(st.sampled_from(["ok", "no", "zz", "7"]), min_size=5, max_size=60),
       st.lists(st.sampled_from(["ok", "no", "zz", "7"]), min_size=5, max_size=60))
def test_within_agrees_with_the_longest_common_subsequence(x: list[str], y: list[str]) -> None:
    common = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            common[i + 1][j + 1] = common[i][j] + 1 if a == b else max(common[i][j + 1], common[i + 1][j])
    distance = len(x) + len(y) - 2 * common[-1][-1]
    assert near._within(x, y, distance)
    assert not near._within(x, y, distance - 1)
