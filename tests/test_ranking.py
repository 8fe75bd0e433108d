"""The local store's ranking helpers: date words (memory.index), neighbours read from a real SQLite file, and propagation."""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from memproxy.memory import Memory, index, local, ranking
from memproxy.memory.local import LocalStore

DAY = 86_400.0
C = {"conversation": "c"}


def test_date_words_name_the_month_and_year() -> None:
    at = datetime.datetime(2023, 5, 8, 13, 56, tzinfo=datetime.UTC).timestamp()
    assert index.date_words(at) == "monthmay year2023"
    assert index.date_words(datetime.datetime(2026, 11, 30, 23, 59, tzinfo=datetime.UTC).timestamp()) == "monthnovember year2026"


@pytest.mark.parametrize(("query", "dates"), [
    ("what did we decide in May?", ["monthmay"]),
    ("Who did Maria have dinner with on May 3, 2023?", ["monthmay", "year2023"]),
    ("What setback did Melanie face in October 2023?", ["monthoctober", "year2023"]),
    ("When did Melanie go camping in june", ["monthjune"]),
    ("the 8th of march", ["monthmarch"]),
    ("May 2023 was busy", ["monthmay", "year2023"]),
    ("How many times has she gone to the beach in 2023?", ["year2023"]),
    ("may the deploy fail on friday?", []),
    ("May I ask why the build fails?", []),
    ("It may fail. May it not.", []),
    ("let's march through the failing tests", []),
    ("the loop marches over every item", []),
    ("update the copyright header to 2026", []),
    ("listen on port 2026 in docker", []),
    ("this may break in production", []),
])  # fmt: skip
def test_a_query_names_a_month_or_a_year_as_a_date_only_where_it_is_one(query: str, dates: list[str]) -> None:
    assert index.named_dates(query) == dates


@pytest.mark.parametrize(("today", "phrase", "dates"), [
    ((2026, 3, 31), "last month", ["monthfebruary", "year2026"]),
    ((2026, 3, 1), "last month", ["monthfebruary", "year2026"]),
    ((2026, 1, 15), "last month", ["monthdecember", "year2025"]),
    ((2026, 1, 15), "past month", ["monthjanuary", "year2026", "monthdecember", "year2025"]),
    ((2028, 12, 31), "last year", ["year2027"]),
    ((2026, 1, 1), "past year", ["year2026", "year2025"]),
    ((2026, 12, 4), "last week", ["monthnovember", "year2026"]),
    ((2026, 3, 1), "yesterday", ["monthfebruary", "year2026"]),
])  # fmt: skip
def test_a_time_relative_to_now_names_calendar_months_and_years(today: tuple[int, int, int], phrase: str,
                                                               dates: list[str]) -> None:
    now = datetime.datetime(*today, 12, tzinfo=datetime.UTC).timestamp()
    assert index.relative_dates(f"what did we decide {phrase}?", now) == dates


@pytest.mark.parametrize("at", [0.0, float("inf"), float("nan"), 1e300, -1e300])
def test_no_date_or_an_impossible_one_adds_nothing(at: float) -> None:
    assert index.date_words(at) == ""


def _one_conversation(adjacent: dict[int, tuple[int, ...]], conversation: str = "c") -> ranking.Context:
    return ranking.Context(dict.fromkeys(adjacent, conversation), adjacent)


def test_a_neighbour_that_bm25_missed_is_brought_in_behind_its_source() -> None:
    # 1 names the subject, 2 (not a candidate) answers it, 3 is an unrelated weaker match.
    found = ranking.Context({1: "c", 3: "d"}, {1: (2,), 3: ()})
    assert ranking.propagate({1: 4.0, 3: 1.5}, found, 0.5, 0.0) == [(1, 4.0), (2, 2.0), (3, 1.5)]
    # Lifted by its conversation's best match, the answer gains on the unrelated match; each conversation's best
    # keeps its score.
    assert ranking.propagate({1: 4.0, 3: 1.5}, found, 0.5, 0.5) == [(1, 4.0), (2, pytest.approx(8 / 3)), (3, 1.5)]


def test_neighbouring_candidates_lift_each_other_above_a_lone_match() -> None:
    ranked = ranking.propagate({7: 2.5, 1: 2.0, 2: 2.0}, _one_conversation({7: (), 1: (2,), 2: (1,)}), 0.5, 0.0)
    assert ranked == [(1, 3.0), (2, 3.0), (7, 2.5)]


def test_a_memory_is_lifted_by_the_best_match_of_its_conversation() -> None:
    """3 is no neighbour of 1, but of its conversation: it passes 2, a better match of a conversation of its own."""
    found = ranking.Context({1: "a", 2: "b", 3: "a"}, {1: (), 2: (), 3: ()})
    assert ranking.propagate({1: 3.0, 2: 2.0, 3: 1.8}, found, 0.5, 0.0) == [(1, 3.0), (2, 2.0), (3, 1.8)]
    assert ranking.propagate({1: 3.0, 2: 2.0, 3: 1.8}, found, 0.5, 0.5) == [(1, 3.0), (3, pytest.approx(2.2)), (2, 2.0)]


def test_a_memory_of_no_conversation_keeps_its_score() -> None:
    """A note added by hand is its own conversation: a turn of the same score that is its conversation's best is
    not ranked above it."""
    found = ranking.Context({5: "a"}, {5: ()})
    assert ranking.propagate({4: 3.0, 5: 1.0, 6: 2.0}, found, 0.5, 0.5) == [(4, 3.0), (6, 2.0), (5, 1.0)]
    assert ranking.propagate({4: 1.0, 5: 1.0}, found, 0.5, 0.5) == [(4, 1.0), (5, 1.0)]
    assert ranking.propagate({4: 3.0, 6: 2.0}, ranking.Context({}, {}), 0.5, 0.5) == [(4, 3.0), (6, 2.0)]


def test_weights_zero_keep_bm25s_order_and_ties_keep_the_candidates_order() -> None:
    scores = {5: 2.0, 9: 2.0, 4: 1.0}
    ranked = ranking.propagate(scores, _one_conversation({5: (6,), 9: (8,), 4: ()}), 0.0, 0.0)
    assert ranked == [(5, 2.0), (9, 2.0), (4, 1.0), (6, 0.0), (8, 0.0)]


def test_context_drops_missing_neighbours() -> None:
    found = ranking.context([(1, "c", None, 2), (2, "c", 1, None), (3, "d", None, None)])
    assert found == ranking.Context({1: "c", 2: "c", 3: "d"}, {1: (2,), 2: (1,), 3: ()})


def _store(path: Path, memories: list[Memory]) -> None:
    async def fill() -> None:
        store = LocalStore(path)
        try:
            await store.add_many(memories)
        finally:
            await store.close()

    asyncio.run(fill())


def _context(path: Path, scope: str, ids: list[int], near: int = 10, gap: float = ranking.NEIGHBOUR_GAP) -> ranking.Context:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(ranking.NEIGHBOURS_SQL, {"scope": scope, "ids": json.dumps(ids), "near": near, "gap": gap})
        return ranking.context(rows.fetchall())


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
    assert _context(path, "a", [1, 3, 4, 5, 6, 7]).adjacent == {1: (3,), 3: (1, 4), 4: (3,), 5: (6,), 6: (5, 7), 7: (6,)}
    assert _context(path, "b", [2]) == ranking.Context({2: "c"}, {2: ()})
    assert _context(path, "b", [1, 3]) == ranking.Context({}, {})  # another scope's ids are not this scope's candidates
    assert _context(path, "a", [4], gap=DAY).adjacent == {4: (3, 5)}
    # No conversation, or one of its own: no neighbours; no conversation: not named.
    assert _context(path, "a", [8, 9, 10]) == ranking.Context({9: "other"}, {9: ()})
    # Only the first `near` candidates' neighbours are looked up; every candidate's conversation is read.
    assert _context(path, "a", [4, 9, 6, 1], near=2) == ranking.Context(
        {4: "c", 9: "other", 6: "c", 1: "c"}, {4: (3,), 9: (), 6: (), 1: ()}
    )


METADATA = ['{}', '{"conversation": "c"}', '{"conversation": "d"}', '{"conversation": 1}', '{"conversation": 1.0}',
            '{"conversation": null}', "not json", '{"conversation": "c", "x": NaN}']
TIMES = st.sampled_from([0.0, 1800.0, 3600.0, 3600.5, 7200.0, 1e9])


@settings(max_examples=500, deadline=None)
@given(
    rows=st.lists(st.tuples(st.sampled_from("aab"), st.sampled_from(METADATA[:3] * 3 + METADATA), TIMES), max_size=16),
    picks=st.lists(st.integers(1, 18), unique=True, max_size=12),
    near=st.integers(0, 12),
)
def test_a_kept_order_gives_the_context_the_sql_reads(rows: list[tuple[str, str, float]], picks: list[int], near: int) -> None:
    """The scope's Order, read once, and NEIGHBOURS_SQL give any candidates the same conversations and neighbours:
    ties in time, the gap's edges, memories of no conversation or unreadable metadata, other scopes' ids."""
    with closing(sqlite3.connect(":memory:")) as db:
        db.executescript(local.SCHEMA)
        db.executemany("INSERT INTO memories(scope, content, metadata, created_at) VALUES (?, 'x', ?, ?)", rows)
        order = ranking.Order(db.execute(ranking.ORDER_SQL, ("a", 100)))
        params = {"scope": "a", "ids": json.dumps(picks), "near": near, "gap": ranking.NEIGHBOUR_GAP}
        assert order.context(picks, near) == ranking.context(db.execute(ranking.NEIGHBOURS_SQL, params))
        assert order.size == sum(scope == "a" for scope, _, _ in rows)


def test_a_kept_order_follows_writes_of_this_store_and_of_another(tmp_path: Path) -> None:
    """A reply stored after the scope's Order was read, by this store or by another process, is found next to
    its question at once."""
    t = 1_700_000_000.0
    question = "User: which database should the billing service use?\nAssistant: what are its write patterns?"
    reply = "User: mostly appends, a few updates\nAssistant: then PostgreSQL with a partitioned table suits it"
    query = "which database did the billing service choose"

    async def go(writer_is_another: bool) -> list[str]:
        path = tmp_path / f"{writer_is_another}.db"
        store, other = LocalStore(path), LocalStore(path)
        try:
            await store.add_many([Memory("1", "s", question, metadata=C, created_at=t),
                                  Memory("9", "s", "User: lunch?\nAssistant: at noon", metadata=C, created_at=t + DAY)])
            assert [m.content for m in await store.search("s", query, 5)] == [question]  # its Order read and kept
            writer = other if writer_is_another else store
            await writer.add_many([Memory("2", "s", reply, metadata=C, created_at=t + 60)])
            return [m.content for m in await store.search("s", query, 5)]
        finally:
            await store.close()
            await other.close()

    assert asyncio.run(go(False))[:2] == [question, reply]
    assert asyncio.run(go(True))[:2] == [question, reply]


def _fresh(store: LocalStore, scope: str) -> ranking.Order:
    with closing(sqlite3.connect(store.path)) as db:
        return ranking.Order(db.execute(ranking.ORDER_SQL, (scope, 1000)))


def _same(order: ranking.Order, fresh: ranking.Order) -> None:
    assert (order.conversation, order.previous, order.next, order.size, order.last) == (
        fresh.conversation, fresh.previous, fresh.next, fresh.size, fresh.last)


WRITES = st.lists(
    st.tuples(
        st.sampled_from("aab"),  # scope
        st.integers(0, 4),  # custom id: an id written before is replaced
        st.sampled_from([C, C, {"conversation": "d"}, {}, {"conversation": 1}, {"conversation": 1.0},
                         {"conversation": None}, {"conversation": "c", "x": float("nan")}]),
        st.sampled_from([0.0, 60.0, 3600.0, 3600.5, 7200.0, -60.0]),  # the clock's step (a clock can go back)
        st.booleans(),  # a search follows
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(writes=WRITES)
@example(writes=[("a", 1, C, 60.0, False), ("a", 1, {"conversation": "d"}, 60.0, False)])  # a turn changes conversation
@example(writes=[("a", 1, C, 60.0, False), ("a", 1, C, -120.0, False)])  # the clock went back past the turn before
def test_a_kept_order_follows_the_stores_own_writes_as_if_read_again(writes: list[tuple[str, int, dict, float, bool]]) -> None:
    """Turns this store adds or replaces are added to the scope's kept Order, or the Order is dropped and read
    again: either way it holds what reading the scope again gives (ties in time, the gap's edges, a clock going
    back, a turn changing conversation, memories of none)."""
    now = [1_700_000_000.0]

    async def go(path: Path) -> None:
        store = LocalStore(path, clock=lambda: now[0])
        try:
            await store.add("a", "User: turn zero\nAssistant: first", "first", C)
            assert await store.search("a", "turn", 5)  # its Order read and kept
            for i, (scope, key, metadata, step, search) in enumerate(writes):
                now[0] += step
                await store.add(scope, f"User: turn w{i}x question{i}\nAssistant: reply{i}z", f"k{key}", metadata)
                if search:
                    await store.search("a", "turn", 5)
            if (order := store._orders.get("a")) is not None:
                _same(order, _fresh(store, "a"))
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(go(Path(tmp) / "m.db"))


SUBJECTS = [("billing", "postgres"), ("search", "elastic"), ("payments", "cockroach"), ("uploads", "minio"),
            ("metrics", "prometheus")]


def test_a_session_going_on_extends_its_kept_order_without_reading_it_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a session goes on, each turn stored (then updated by the tool loop's later steps) joins the kept
    Order, which is never read again; each reply is found next to its question at once."""
    reads = []
    monkeypatch.setattr(local, "Order", lambda rows: reads.append(1) or ranking.Order(rows))
    now = [1_700_000_000.0]

    async def go() -> None:
        store = LocalStore(tmp_path / "m.db", clock=lambda: now[0])
        try:
            await store.add("s", "User: lunch?\nAssistant: at noon", "t0", C)
            assert await store.search("s", "lunch", 5)  # its Order read and kept
            for i, (subject, engine) in enumerate(SUBJECTS):
                now[0] += 2 * ranking.NEIGHBOUR_GAP  # a session of its own
                question = f"User: which database for the {subject} service {i}?\nAssistant: what are its write patterns?"
                await store.add("s", question, f"q{i}", C)
                now[0] += 30
                await store.add("s", f"User: {engine} answers {i}\nAssistant: looking it up", f"r{i}", C)
                now[0] += 30
                reply = f"User: {engine} answers {i}\nAssistant: then {engine}, as the {engine} docs say"
                await store.add("s", reply, f"r{i}", C)  # the tool loop's last step replaces its turn
                found = [m.content for m in await store.search("s", f"{subject} database", 5)]
                assert found[:2] == [question, reply]
            _same(store._orders["s"], _fresh(store, "s"))
        finally:
            await store.close()

    asyncio.run(go())
    assert len(reads) == 1


@pytest.mark.parametrize("bound", ["ORDERED_SCOPE", "ORDERED"])
def test_a_kept_order_grown_past_its_bound_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: str) -> None:
    """Turns added to a kept Order count against its bounds as turns read do: past them, it is dropped, and the
    scope is then read with NEIGHBOURS_SQL."""
    monkeypatch.setattr(local, bound, 3)
    now = [1_700_000_000.0]

    async def go() -> list[tuple[int | None, int]]:
        store = LocalStore(tmp_path / "m.db", clock=lambda: now[0])
        seen = []
        try:
            for i in range(4):
                now[0] += 60
                await store.add("s", f"User: billing question {i}\nAssistant: answer {i}", f"t{i}", C)
                if i == 1:
                    assert await store.search("s", "billing", 5)  # its Order read and kept
                if i >= 1:
                    seen.append(((order := store._orders.get("s")) and order.size, store._ordered))
            assert len(await store.search("s", "billing", 5)) == 4
            seen.append((store._orders["s"], store._ordered))
            return seen
        finally:
            await store.close()

    assert asyncio.run(go()) == [(2, 2), (3, 3), (None, 0), (None, 0)]


def test_a_write_rolled_back_leaves_no_turn_in_the_kept_order(tmp_path: Path) -> None:
    """A batch that fails half-way is rolled back: a turn it had added to the kept Order is not left there."""

    async def go() -> None:
        store = LocalStore(tmp_path / "m.db", clock=lambda: 1_700_000_000.0)
        try:
            await store.add("a", "User: which database for billing?\nAssistant: PostgreSQL", "q", C)
            assert await store.search("a", "billing", 5)
            batch = [Memory("1", "a", "User: and the cache?\nAssistant: Redis", metadata=C, created_at=1_700_000_060.0),
                     Memory("2", "a", "User: lone \ud800 surrogate\nAssistant: no", metadata=C, created_at=1_700_000_090.0)]
            with pytest.raises(local.StoreError):
                await store.add_many(batch)
            assert await store.count("a") == 1
            await store.search("a", "billing", 5)
            _same(store._orders["a"], _fresh(store, "a"))
        finally:
            await store.close()

    asyncio.run(go())


def test_a_scope_too_large_to_keep_is_read_with_sql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "ORDERED_SCOPE", 2)
    path = tmp_path / "m.db"
    t = 1_700_000_000.0
    turns = ["User: which database for billing?\nAssistant: what are its write patterns?",
             "User: mostly appends\nAssistant: then PostgreSQL with a partitioned table", "User: lunch?\nAssistant: noon"]
    _store(path, [Memory(str(i), "s", text, metadata=C, created_at=t + 60 * i) for i, text in enumerate(turns, 1)])

    async def search() -> tuple[list[int], bool]:
        store = LocalStore(path)
        try:
            return [int(m.id) for m in await store.search("s", "billing database", 5)], store._orders["s"] is None
        finally:
            await store.close()

    assert asyncio.run(search()) == ([1, 2], True)


def test_kept_orders_are_bounded_and_never_read_again_for_each_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the kept orders hold ORDERED memories, other scopes are read with NEIGHBOURS_SQL, ranked alike: an
    order is not read again at each search (which, with more memories than ORDERED, would be at every search)."""
    monkeypatch.setattr(local, "ORDERED", 5)
    t = 1_700_000_000.0
    texts = ["User: which database for billing?\nAssistant: what are its write patterns?",
             "User: mostly appends\nAssistant: then PostgreSQL with a partitioned table"]
    _store(tmp_path / "m.db", [Memory(f"{scope}{i}", scope, text, metadata=C, created_at=t + 60 * i)
                               for scope in ("p", "q", "r") for i, text in enumerate(texts)])
    reads = []
    monkeypatch.setattr(local, "Order", lambda rows: reads.append(1) or ranking.Order(rows))

    async def go() -> list[tuple[list[str], int]]:
        store = LocalStore(tmp_path / "m.db")
        seen = []
        try:
            for scope in ("p", "q", "r", "p", "r", "q"):
                found = [m.content for m in await store.search(scope, "billing database", 5)]
                seen.append((found, store._ordered))
            assert [s for s, order in store._orders.items() if order is not None] == ["p", "q"]
            await store.add_many([Memory("p9", "p", "User: and the cache?\nAssistant: Redis", metadata=C, created_at=t)])
            # p's dropped: a turn dated before its conversation's latest is one a kept order cannot follow
            assert [s for s, order in store._orders.items() if order is not None] == ["q"]
            await store.search("r", "billing database", 5)  # r stays unkept until every order is dropped
            await store.search("p", "billing database", 5)  # p's read again
            assert [s for s, order in store._orders.items() if order is not None] == ["q", "p"]
            return seen
        finally:
            await store.close()

    assert asyncio.run(go()) == [(texts, 2), (texts, 4), (texts, 4), (texts, 4), (texts, 4), (texts, 4)]
    assert len(reads) == 4  # p, q, r (not kept), and p again after that write


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


def test_a_turn_of_the_conversation_about_the_subject_passes_an_equal_match_from_another(tmp_path: Path) -> None:
    """End to end on a real store: two turns match the query's one word "index" alike; the one whose conversation
    also holds the query's best match (not its neighbour) comes first."""
    path = tmp_path / "m.db"
    t = 1_700_000_000.0
    billing = [
        "User: which database should the billing service use?\nAssistant: PostgreSQL, partitioned by month",
        "User: lunch plans?\nAssistant: the usual place",
        "User: and coffee after?\nAssistant: at three",
        "User: add an index on the customer column\nAssistant: added, invoices load fast now",
    ]
    memories = [Memory(str(i), "s", text, metadata=C, created_at=t + 60 * i) for i, text in enumerate(billing, 1)]
    memories.append(Memory("5", "s", "User: add an index on the name column\nAssistant: added, the search is fast",
                           metadata={"conversation": "ops"}, created_at=t + DAY))
    _store(path, memories)

    async def search() -> list[int]:
        store = LocalStore(path)
        try:
            return [int(m.id) for m in await store.search("s", "billing database index", 5)]
        finally:
            await store.close()

    ranked = asyncio.run(search())
    assert ranked[0] == 1
    assert ranked.index(4) < ranked.index(5)


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
