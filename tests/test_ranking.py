"""The local store's ranking helpers: date words (memory.index), neighbours read from a real SQLite file, and propagation."""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from memproxy.memory import Memory, index, ranking
from memproxy.memory.local import LocalStore

DAY = 86_400.0
C = {"conversation": "c"}


def test_date_words_name_the_month_and_year() -> None:
    at = datetime.datetime(2023, 5, 8, 13, 56, tzinfo=datetime.UTC).timestamp()
    assert index.date_words(at) == "may 2023"
    assert index.date_words(datetime.datetime(2026, 11, 30, 23, 59, tzinfo=datetime.UTC).timestamp()) == "november 2026"


@pytest.mark.parametrize("at", [0.0, float("inf"), float("nan"), 1e300, -1e300])
def test_no_date_or_an_impossible_one_adds_nothing(at: float) -> None:
    assert index.date_words(at) == ""


def test_a_neighbour_that_bm25_missed_is_brought_in_behind_its_source() -> None:
    # 1 names the subject, 2 (not a candidate) answers it, 3 is an unrelated weaker match.
    ranked = ranking.propagate({1: 4.0, 3: 1.5}, {1: (2,), 3: ()}, 0.5)
    assert ranked == [(1, 4.0), (2, 2.0), (3, 1.5)]


def test_neighbouring_candidates_lift_each_other_above_a_lone_match() -> None:
    ranked = ranking.propagate({7: 2.5, 1: 2.0, 2: 2.0}, {7: (), 1: (2,), 2: (1,)}, 0.5)
    assert ranked == [(1, 3.0), (2, 3.0), (7, 2.5)]


def test_weight_zero_keeps_bm25s_order_and_ties_keep_the_candidates_order() -> None:
    scores = {5: 2.0, 9: 2.0, 4: 1.0}
    assert ranking.propagate(scores, {5: (6,), 9: (8,), 4: ()}, 0.0) == [(5, 2.0), (9, 2.0), (4, 1.0), (6, 0.0), (8, 0.0)]


def test_neighbours_drops_missing_ones() -> None:
    assert ranking.neighbours([(1, None, 2), (2, 1, None), (3, None, None)]) == {1: (2,), 2: (1,), 3: ()}


def _store(path: Path, memories: list[Memory]) -> None:
    async def fill() -> None:
        store = LocalStore(path)
        try:
            await store.add_many(memories)
        finally:
            await store.close()

    asyncio.run(fill())


def _neighbours(path: Path, scope: str, ids: list[int], gap: float = ranking.NEIGHBOUR_GAP) -> dict[int, tuple[int, ...]]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(ranking.NEIGHBOURS_SQL, {"scope": scope, "ids": json.dumps(ids), "gap": gap}).fetchall()
    return ranking.neighbours(rows)


def test_neighbours_are_the_scopes_adjacent_memories_in_time_within_the_gap(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    t = 1_700_000_000.0
    # Ids 1..7 in insertion order; scope "b" interleaves with "a"; 5 is a day later (another conversation);
    # 6 and 7 share a time, so the id breaks the tie.
    _store(
        path,
        [
            Memory("1", "a", "first", metadata=C, created_at=t),
            Memory("2", "b", "other scope", metadata=C, created_at=t + 30),
            Memory("3", "a", "second", metadata=C, created_at=t + 60),
            Memory("4", "a", "third", metadata=C, created_at=t + 120),
            Memory("5", "a", "next day", metadata=C, created_at=t + DAY),
            Memory("6", "a", "same time one", metadata=C, created_at=t + DAY + 10),
            Memory("7", "a", "same time two", metadata=C, created_at=t + DAY + 10),
            Memory("8", "a", "a note added by hand", created_at=t + 90),
            Memory("9", "a", "another conversation", metadata={"conversation": "other"}, created_at=t + 100),
            Memory("10", "a", "metadata SQLite cannot read", metadata={"conversation": "c", "x": float("nan")}, created_at=t + 110),
        ],
    )
    assert _neighbours(path, "a", [1, 3, 4, 5, 6, 7]) == {1: (3,), 3: (1, 4), 4: (3,), 5: (6,), 6: (5, 7), 7: (6,)}
    assert _neighbours(path, "b", [2]) == {2: ()}
    assert _neighbours(path, "b", [1, 3]) == {}  # another scope's ids are not this scope's candidates
    assert _neighbours(path, "a", [4], gap=DAY) == {4: (3, 5)}
    assert _neighbours(path, "a", [8, 9, 10]) == {9: ()}  # no conversation, or one of its own: no neighbours


def test_propagation_finds_the_reply_to_a_question_whose_words_it_does_not_hold(tmp_path: Path) -> None:
    """End to end on a real store: BM25 alone misses the reply; its neighbour brings it in."""
    path = tmp_path / "m.db"
    t = 1_700_000_000.0
    turns = [
        "User: which database should the billing service use?\nAssistant: what are its write patterns?",
        "User: mostly appends, a few updates\nAssistant: then PostgreSQL with a partitioned table suits it",
        "User: lunch plans?\nAssistant: the usual place",
        "User: the billing report is late\nAssistant: I will look into the cron job",
        "User: rename the variable\nAssistant: done",
    ]
    _store(path, [Memory(str(i), "s", text, metadata=C, created_at=t + 60 * i) for i, text in enumerate(turns, 1)])

    query = "which database did the billing service choose"
    assert not set(index.query_terms(query)) & set(index.words(turns[1]))  # BM25 alone cannot find the reply

    async def search() -> list[int]:
        store = LocalStore(path)
        try:
            return [int(m.id) for m in await store.search("s", query, 5)]
        finally:
            await store.close()

    assert asyncio.run(search())[:2] == [1, 2]  # its neighbour brings it in, right behind


def test_a_scope_of_notes_ranks_by_bm25_until_a_conversation_arrives(tmp_path: Path) -> None:
    """Notes added by hand have no neighbours; the store knows it, and learns at once when a turn arrives."""
    t = 1_700_000_000.0

    async def go() -> tuple[list[str], list[str]]:
        store = LocalStore(tmp_path / "m.db", clock=lambda: t)
        try:
            await store.add("s", "User: which database for billing?\nAssistant: what are its write patterns?")
            await store.add("s", "User: mostly appends\nAssistant: then PostgreSQL with a partitioned table")
            notes = [m.content for m in await store.search("s", "billing database", 5)]
            for text in ("User: which queue for billing?\nAssistant: how many messages a day?",
                         "User: about ten thousand\nAssistant: then RabbitMQ is plenty"):
                await store.add("t", text, metadata=C)
                await store.add("s", text, metadata=C)
            turns = [m.content for m in await store.search("s", "billing queue", 5)]
            return notes, turns
        finally:
            await store.close()

    notes, turns = asyncio.run(go())
    assert notes == ["User: which database for billing?\nAssistant: what are its write patterns?"]
    assert turns[:2] == ["User: which queue for billing?\nAssistant: how many messages a day?",
                         "User: about ten thousand\nAssistant: then RabbitMQ is plenty"]
