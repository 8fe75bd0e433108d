"""The embedded SQLite store, against real database files."""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import itertools
import json
import random
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memproxy.memory import Memory, StoreError, index, local
from memproxy.memory.base import PROMPT_KEY, Keyed, recalled, unlabelled
from memproxy.memory.local import DF_BUDGET, LocalStore

T = TypeVar("T")

# Unrelated memories, so that BM25's inverse document frequency is meaningful in small stores.
FILLER = [
    "The coffee machine on floor three is broken again",
    "Quarterly planning happens every March in Lisbon",
    "Alice prefers tabs; Bob prefers spaces",
    "The staging cluster runs on three small nodes",
    "Weekly sync moved to Thursday afternoons",
    "Dark mode is the default theme in the dashboard",
]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def hours_apart() -> Callable[[], float]:
    """A clock that moves two hours on each reading: memories added one by one are not neighbours in time
    (memory.ranking), so each search finds what its words match."""
    return functools.partial(next, itertools.count(1_700_000_000.0, 7200.0))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    s = LocalStore(tmp_path / "memories.db", clock=hours_apart())
    yield s
    run(s.close())


def seeded(path: Path, *memories: tuple[str, str]) -> None:
    """A store at `path` holding `memories` ((scope, content) pairs), closed."""
    store = LocalStore(path)
    try:
        for scope, content in memories:
            run(store.add(scope, content))
    finally:
        run(store.close())


Row = tuple[str, str | None, str, str, float]  # scope, custom_id, content, metadata, created_at


def older_store(path: Path, version: int, rows: list[Row], terms: Callable[[str, float, str], str],
                drop: tuple[str, ...] = ()) -> tuple[list[int], list[tuple[Any, ...]]]:
    """A store at `path` as schema `version` (3 on: a table per scope) left it: `rows` indexed as `terms(content,
    created_at, metadata)`, without the tables `drop`. The rows' ids, and every row as it was."""
    seeded(path, *dict.fromkeys((row[0], "a memory that makes the tables") for row in rows))
    with closing(sqlite3.connect(path)) as db:
        ids = []
        for scope, custom_id, content, metadata, at in rows:
            ids.append(db.execute("INSERT INTO memories(scope, custom_id, content, metadata, created_at) VALUES"
                                  " (?, ?, ?, ?, ?) RETURNING id", (scope, custom_id, content, metadata, at)).fetchone()[0])
            [(table,)] = db.execute("SELECT 'memories_fts_' || id FROM scope_indexes WHERE scope = ?", (scope,)).fetchall()
            db.execute(f"INSERT INTO {table}(rowid, terms) VALUES (?, ?)", (ids[-1], terms(content, at, metadata)))
        for table in drop:
            db.execute(f"DROP TABLE {table}")
        db.execute(f"PRAGMA user_version = {version}")
        db.commit()
        return ids, db.execute("SELECT * FROM memories ORDER BY id").fetchall()


def add_all(store: LocalStore, scope: str, contents: list[str]) -> list[str]:
    async def go() -> list[str]:
        return [await store.add(scope, c) for c in contents]

    return run(go())


def test_add_then_search_finds_it(store: LocalStore) -> None:
    add_all(store, "proj", FILLER)
    mid = run(store.add("proj", "Deploys use rsync over SSH to the bastion host", metadata={"turn": 3}))
    [hit] = run(store.search("proj", "how do we deploy with rsync?", limit=5))
    assert hit.id == mid
    assert hit.scope == "proj"
    assert hit.content == "Deploys use rsync over SSH to the bastion host"
    assert hit.metadata == {"turn": 3}
    assert hit.created_at > 0
    assert 0 < hit.score < 1


async def recall(store: LocalStore, scope: str, query: str) -> tuple[str, ...]:
    return await store.start_search(scope, query)


def test_recall_labels_each_memory_with_its_tool_and_day(store: LocalStore) -> None:
    day = 1764460800.0  # 2025-11-30 00:00 UTC
    run(store.add_many([
        Memory("", "p", "Deploys use rsync", 0.0, {"tool": "Codex"}, day + 3600),
        Memory("", "p", "Deploys are on Fridays", 0.0, {"client": "memproxy-cli"}, day),
    ]))
    found = run(recall(store, "p", "deploys"))
    assert sorted(found) == ["(2025-11-30) Deploys are on Fridays", "(2025-11-30, Codex) Deploys use rsync"]
    assert recalled("x", "  Claude Code  ", day) == "(2025-11-30, Claude Code) x"
    assert recalled("x", 3, 0) == recalled("x", None, float("nan")) == recalled("x", None, float("inf")) == "x"
    for text in ("(2025-11-30, Claude Code) x", "(2025-11-30) x", "(Codex) x"):
        assert unlabelled(text) == "x"
    assert unlabelled("(a note) in brackets") == "in brackets" and unlabelled("User: (x) y") == "User: (x) y"


def test_recall_names_a_stored_turns_prompt_for_the_echo_check(store: LocalStore) -> None:
    """A turn's memory names its prompt's key (PROMPT_KEY): a conversation that holds the turn, though no longer
    its text, knows it as its own (memory.base.Keyed)."""
    run(store.add_many([
        Memory("", "p", "User: How do we deploy?\nAssistant: With rsync.", 0.0, {PROMPT_KEY: "k1", "tool": "Codex"}),
        Memory("", "p", "Deploys are on Fridays", 0.0, {PROMPT_KEY: 7}),
        Memory("", "p", "Deploys go through the bastion", 0.0, {}),
    ]))
    found = {unlabelled(text): text for text in run(recall(store, "p", "deploy"))}
    turn = found["User: How do we deploy?\nAssistant: With rsync."]
    assert isinstance(turn, Keyed) and turn.keys == ("k1",) and turn.startswith("(")
    assert not any(isinstance(found[text], Keyed) for text in ("Deploys are on Fridays", "Deploys go through the bastion"))


def test_recall_survives_metadata_sqlite_cannot_read(store: LocalStore) -> None:
    run(store.add("p", "Deploys use rsync", metadata={"tool": "Codex", "ratio": float("nan")}))  # NaN: not JSON
    assert [m.content for m in run(store.search("p", "deploys"))] == ["Deploys use rsync"]
    assert len(run(recall(store, "p", "deploys"))) == 1


def test_an_empty_scope_is_answered_without_the_worker_until_a_memory_arrives(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(local, "EMPTY_TTL", 0.5)
    db = tmp_path / "memories.db"

    async def go() -> None:
        store, other = LocalStore(db), LocalStore(db)  # `other`: another process's connection
        try:
            assert await store.start_search("user", "deploys") == ()
            assert "user" in store._empty
            calls = store._worker.submit
            monkeypatch.setattr(store._worker, "submit", lambda *a: pytest.fail("the worker was asked"))
            assert await store.start_search("user", "deploys") == ()  # answered on the loop
            monkeypatch.setattr(store._worker, "submit", calls)
            await store.add("user", "Deploys are on Fridays")  # its own add: found at once
            assert len(await store.start_search("user", "deploys")) == 1
            assert await store.start_search("team", "deploys") == ()
            await other.add("team", "Deploys are on Fridays")  # another connection's: found once the time is up
            await asyncio.sleep(0.6)
            assert len(await store.start_search("team", "deploys")) == 1
        finally:
            await store.close()
            await other.close()

    run(go())


def test_porter_stemming_matches_word_forms(store: LocalStore) -> None:
    add_all(store, "proj", [*FILLER, "The tests were running slowly on CI"])
    [hit] = run(store.search("proj", "testing"))
    assert hit.content == "The tests were running slowly on CI"


def test_scopes_never_cross(store: LocalStore) -> None:
    a = run(store.add("team:a", "The database password rotates monthly"))
    b = run(store.add("team:b", "The database password rotates monthly"))
    assert a != b
    assert [m.id for m in run(store.search("team:a", "database password"))] == [a]
    assert [m.id for m in run(store.search("team:b", "database password"))] == [b]
    assert run(store.search("team:c", "database password")) == []
    assert run(store.search("team", "database password")) == []  # a prefix of a scope is another scope

    assert run(store.forget("team:b", a)) is False
    assert [m.id for m in run(store.list("team:a"))] == [a]
    assert [m.id for m in run(store.list("team:b"))] == [b]


def test_a_custom_id_is_one_memory_per_scope_updated_by_each_add(store: LocalStore, tmp_path: Path) -> None:
    first = run(store.add("s", "original text", custom_id="turn-1", metadata={"step": 1}))
    [before] = run(store.list("s"))
    assert run(store.add("s", "original text", custom_id="turn-1", metadata={"step": 1})) == first
    assert run(store.list("s")) == [before]  # the same memory again changes nothing, not even its date
    again = run(store.add("s", "the final answer", custom_id="turn-1", metadata={"step": 2}))
    elsewhere = run(store.add("t", "original text", custom_id="turn-1"))
    assert again == first and elsewhere != first
    [after] = run(store.list("s"))
    assert (after.id, after.content, after.metadata) == (first, "the final answer", {"step": 2})
    assert after.created_at >= before.created_at
    assert [m.id for m in run(store.search("s", "final answer"))] == [first]
    assert run(store.search("s", "original")) == []  # unindexed with the text it replaced
    assert [m.content for m in run(store.list("t"))] == ["original text"]
    integrity(tmp_path / "memories.db")


def test_results_are_ordered_and_thresholded(store: LocalStore) -> None:
    add_all(store, "s", FILLER)
    add_all(
        store,
        "s",
        [
            "kubernetes helm chart values for the ingress",
            "kubernetes helm",
            "kubernetes",
            "helm",
        ],
    )
    query = "kubernetes helm chart ingress"
    hits = run(store.search("s", query, limit=10))
    assert [h.content for h in hits][0] == "kubernetes helm chart values for the ingress"
    assert len(hits) == 4
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s < 1 for s in scores)

    cut = (scores[1] + scores[2]) / 2
    assert [h.score for h in run(store.search("s", query, limit=10, threshold=cut))] == scores[:2]
    assert run(store.search("s", query, threshold=1.0)) == []
    assert len(run(store.search("s", query, limit=2))) == 2
    assert run(store.search("s", "kubernetes", limit=0)) == []

    async def contents(**kwargs: Any) -> tuple[str, ...]:  # recall's path: the same memories, contents only
        return await store.start_search("s", query, **kwargs)

    for kwargs in ({"limit": 10}, {"limit": 10, "threshold": cut}, {"threshold": 1.0}, {"limit": 2}, {"limit": 0}):
        found = run(store.search("s", query, **kwargs))
        assert run(contents(**kwargs)) == tuple(recalled(h.content, None, h.created_at) for h in found), kwargs
    assert run(contents(limit=10))[0].endswith(") kubernetes helm chart values for the ingress")


def test_a_scope_of_one_or_two_memories_is_recalled_under_a_threshold(store: LocalStore) -> None:
    """bm25() weighs no word in a scope of one or two memories (every score is near 0): the threshold waits."""
    add_all(store, "s", FILLER)  # another scope's memories change nothing
    run(store.add("new", "the shop deploys with nomad"))
    assert [m.content for m in run(store.search("new", "how does the shop deploy?", threshold=0.5))] == [
        "the shop deploys with nomad"
    ]
    run(store.add("new", "the shop's api is written in rust"))
    assert len(run(store.search("new", "shop deploy", threshold=0.5))) == 2

    async def contents() -> tuple[str, ...]:  # recall's path too
        return await store.start_search("new", "nomad", threshold=0.5)

    assert len(run(contents())) == 1
    assert run(store.search("new", "kubernetes", threshold=0.5)) == []  # a memory must still match
    run(store.add("new", "lunch is at noon"))
    scores = [m.score for m in run(store.search("new", "nomad"))]
    assert len(scores) == 1 and 0.1 < scores[0] < 0.99  # weighed now
    assert run(store.search("new", "nomad", threshold=0.99)) == []


def test_a_word_unknown_at_first_search_is_found_once_stored(store: LocalStore) -> None:
    add_all(store, "s", FILLER)
    assert run(store.search("s", "zeppelin")) == []
    mid = run(store.add("s", "The zeppelin project starts in May"))
    assert [m.id for m in run(store.search("s", "zeppelin"))] == [mid]


def test_stopwords_and_short_words_alone_find_nothing(store: LocalStore) -> None:
    add_all(store, "s", ["what is it and how is it done", "a b c"])
    assert run(store.search("s", "what is it? how is it done? a b c")) == []
    assert run(store.search("s", "")) == []


HOSTILE_QUERIES = [
    '"',
    '"unbalanced quote',
    "foo*",
    "*",
    "NEAR(foo bar, 2)",
    "foo AND bar OR NOT baz",
    "AND OR NOT",
    "(((",
    ")",
    "content:secret scopetok:s00",
    "{content scopetok}: x",
    "^start",
    "col:(a OR b)",
    "tab\there\nnewline\x00nul",
    "naïve café Ünïcödé façade",
    "日本語のテキスト検索",
    "emoji 🚀🔥 only 🤖",
    "🚀🔥🤖",
    "\ud800 lone surrogate",
    "word " * 5000,
    "".join(random.Random(0).choice("abcdefghij \"*():^-+") for _ in range(20000)),
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES, ids=range(len(HOSTILE_QUERIES)))
def test_queries_with_fts_syntax_never_raise(store: LocalStore, query: str) -> None:
    mid = run(store.add("s", "stored verbatim: " + query.encode(errors="replace").decode()))
    hits = run(store.search("s", query, limit=3))
    assert all(h.scope == "s" for h in hits)
    if any(len(w) > 3 and w.isalpha() and w.isascii() for w in query.split()):
        assert mid in [h.id for h in hits]


def test_arbitrary_text_queries_never_raise(store: LocalStore) -> None:
    add_all(store, "s", FILLER)

    @settings(max_examples=150, deadline=None)
    @given(st.text())
    def check(query: str) -> None:
        assert all(isinstance(m, Memory) for m in run(store.search("s", query)))

    check()


def test_list_forget_count_scopes(store: LocalStore) -> None:
    ids = add_all(store, "s", [f"note {i}" for i in range(5)])
    add_all(store, "other", ["unrelated"])
    assert [m.id for m in run(store.list("s"))] == ids[::-1]  # newest first
    assert [m.id for m in run(store.list("s", limit=2, offset=1))] == [ids[3], ids[2]]
    assert all(m.score == 0 for m in run(store.list("s")))
    assert run(store.count()) == 6
    assert run(store.count("s")) == 5
    assert run(store.count("nobody")) == 0
    assert run(store.scopes()) == ["other", "s"]

    assert run(store.forget("s", ids[0])) is True
    assert run(store.forget("s", ids[0])) is False
    assert run(store.forget("s", "not-an-id")) is False
    assert run(store.search("s", "note")) and ids[0] not in [m.id for m in run(store.search("s", "note", 10))]
    assert run(store.count("s")) == 4
    run(store.forget("other", run(store.list("other"))[0].id))
    assert run(store.scopes()) == ["s"]


def integrity(path: Path) -> None:
    """Raises if any scope's index and the memories disagree."""
    with closing(sqlite3.connect(path)) as db:
        tables = [f"memories_fts_{i}" for (i,) in db.execute("SELECT id FROM scope_indexes")]
        assert tables
        for table in tables:
            db.execute(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)")


def test_index_stays_in_sync_with_the_table(store: LocalStore, tmp_path: Path) -> None:
    ids = add_all(store, "s", FILLER)
    for mid in ids[::2]:
        run(store.forget("s", mid))
    run(store.add("s", "one more after the deletes"))
    integrity(tmp_path / "memories.db")


def test_memories_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "memories.db"
    first = LocalStore(path)
    mid = run(first.add("s", "remember the alamo", custom_id="c", metadata={"k": "v"}))
    run(first.close())
    run(first.close())  # closing twice is fine
    with pytest.raises(StoreError):
        run(first.count())

    second = LocalStore(path)
    try:
        [m] = run(second.list("s"))
        assert (m.id, m.content, m.metadata) == (mid, "remember the alamo", {"k": "v"})
        assert [h.id for h in run(second.search("s", "alamo"))] == [mid]
        assert run(second.add("s", "forget the maine", custom_id="c")) == mid
        assert [h.id for h in run(second.search("s", "maine"))] == [mid] and run(second.count()) == 1
    finally:
        run(second.close())


def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    writer, reader = LocalStore(tmp_path / "m.db"), LocalStore(tmp_path / "m.db")
    try:
        run(reader.open())
        mid = run(writer.add("s", "written by the proxy process"))
        assert [m.id for m in run(reader.search("s", "proxy process"))] == [mid]
        assert run(reader.forget("s", mid)) is True
        assert run(writer.list("s")) == []
    finally:
        run(writer.close())
        run(reader.close())


def test_constructor_does_no_io_and_open_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "memories.db"
    store = LocalStore(path)
    assert not path.parent.exists()
    try:
        run(store.open())
        assert path.exists()
    finally:
        run(store.close())


def test_unusable_path_is_reported_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "memories.db"
    store = LocalStore(path)
    try:
        with pytest.raises(StoreError, match=str(path)):
            run(store.open())
        with pytest.raises(StoreError):  # and later calls fail the same way, without other exceptions
            run(store.add("s", "x"))
    finally:
        run(store.close())


def test_bad_input_becomes_store_error(store: LocalStore) -> None:
    with pytest.raises(StoreError):
        run(store.add("s", "x", metadata={"obj": object()}))
    with pytest.raises(StoreError):
        run(store.search("\ud800", "query"))
    assert run(store.count()) == 0


def test_concurrent_adds_all_land(store: LocalStore) -> None:
    async def go() -> list[str]:
        return await asyncio.gather(*(store.add(f"s{i % 3}", f"memory {i}", custom_id=str(i)) for i in range(50)))

    ids = run(go())
    assert len(set(ids)) == 50
    assert run(store.count()) == 50
    assert sum(run(store.count(f"s{i}")) for i in range(3)) == 50


def test_search_at_scale_stays_in_scope(store: LocalStore) -> None:
    """20k memories over 100 scopes, with every word shared across scopes except each memory's tag.

    "shared" is in every memory: too common to afford in a search with rarer words, but searchable alone.
    """
    rng = random.Random(7)
    vocab = [f"word{i}" for i in range(300)]
    scopes = [f"user:{i}" for i in range(100)]

    async def fill() -> dict[tuple[str, int], str]:
        ids = {}
        for n in range(20_000):
            scope = scopes[n % 100]
            ids[scope, n] = await store.add(scope, f"tag{n} shared " + " ".join(rng.choices(vocab, k=12)))
        return ids

    ids = run(fill())
    assert run(store.count()) == 20_000 > DF_BUDGET

    async def check() -> None:
        for n in rng.sample(range(20_000), 200):
            scope = scopes[n % 100]
            hits = await store.search(scope, f"shared tag{n} " + " ".join(rng.choices(vocab, k=2)), limit=5)
            assert ids[scope, n] in [h.id for h in hits]  # bm25 weighs words by their rarity in the scope
            assert all(h.scope == scope for h in hits)
            assert await store.search(scopes[(n + 1) % 100], f"tag{n}") == []
        for query in (" ".join(vocab[:30]), "shared"):
            common = await store.search("user:42", query, limit=50)
            assert len(common) == 50 and all(h.scope == "user:42" for h in common)

    run(check())


def test_add_many_keeps_ids_metadata_and_dates(store: LocalStore) -> None:
    rows = [
        Memory("imported-1", "s", "the redis cache listens on port 6379", metadata={"k": 1}, created_at=123.0),
        Memory("", "s", "deploys go through the bastion host"),
        Memory("", "other", "redis in another scope"),
    ]
    assert run(store.add_many(rows)) == 3
    assert run(store.add_many([Memory("imported-1", "s", "a duplicate of an imported memory")])) == 0
    [hit] = run(store.search("s", "which port does redis use"))
    assert (hit.content, hit.metadata, hit.created_at) == (rows[0].content, {"k": 1}, 123.0)
    assert [m.created_at > 123.0 for m in run(store.list("s"))] == [True, False]  # newest first; undated is "now"
    assert run(store.add("s", "again", custom_id="imported-1")) == hit.id
    assert run(store.list("s"))[0].content == "again"
    assert [m.scope for m in run(store.search("other", "redis"))] == ["other"]


V1_SCHEMA = """
CREATE TABLE memories(id INTEGER PRIMARY KEY, scope TEXT NOT NULL, custom_id TEXT, content TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, UNIQUE(scope, custom_id));
CREATE VIEW memories_fts_source AS SELECT id, content, 's' || hex(scope) AS scopetok FROM memories;
CREATE VIRTUAL TABLE memories_fts USING fts5(content, scopetok, content='memories_fts_source', content_rowid='id');
CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts(rowid, content, scopetok) VALUES (new.id, new.content, 's' || hex(new.scope));
END;
INSERT INTO memories(scope, content, created_at) VALUES ('s', 'the build uses bazel with remote caching', 1.0);
INSERT INTO memories(scope, content, created_at) VALUES ('t', 'bazel is banned here', 2.0);
PRAGMA user_version = 1;
"""


def test_a_version_1_store_is_reindexed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(V1_SCHEMA)
    store = LocalStore(path)
    try:
        [hit] = run(store.search("s", "how do we cache bazel builds"))
        assert hit.content == "the build uses bazel with remote caching"
        assert run(store.forget("s", hit.id)) is True
        assert run(store.search("s", "bazel")) == [] and len(run(store.search("t", "bazel"))) == 1
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == local.SCHEMA_VERSION
    integrity(path)


def segments(path: Path, scope: str = "s") -> int:
    with closing(sqlite3.connect(path)) as db:
        [table] = db.execute("SELECT id FROM scope_indexes WHERE scope = ?", (scope,)).fetchone()
        return db.execute(f"SELECT count(DISTINCT segid) FROM memories_fts_{table}_idx").fetchone()[0]


def test_the_index_is_merged_on_open_and_after_many_adds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each add writes an index segment and a search reads them all: the store keeps their number down."""
    import memproxy.memory.local as local

    path = tmp_path / "m.db"
    writer = LocalStore(path)
    add_all(writer, "s", [f"note {i} about topic{i % 7}" for i in range(40)])
    run(writer.close())
    assert segments(path) > local.MAX_SEGMENTS

    reopened = LocalStore(path)
    try:
        run(reopened.open())
        assert segments(path) == 1
        monkeypatch.setattr(local, "OPTIMISE_EVERY", 30)
        add_all(reopened, "s", [f"later note {i}" for i in range(30)])
        assert segments(path) == 1  # 30 adds >= a tenth of 70 memories: merged again
        assert len(run(reopened.search("s", "topic3 note", limit=10))) == 10
    finally:
        run(reopened.close())
    integrity(path)


def test_a_scope_past_the_budget_searches_its_rarest_words(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """bm25 counts every memory holding a query word: in a big scope, a word too common to afford is dropped."""
    import memproxy.memory.local as local

    monkeypatch.setattr(local, "DF_BUDGET", 50)
    add_all(store, "big", [f"shared filler number {i}" for i in range(120)] + ["shared needle"])
    add_all(store, "small", [f"shared filler number {i}" for i in range(20)] + ["shared needle"])
    [hit] = run(store.search("big", "shared needle", limit=10))  # "shared" (121 memories) is past the budget
    assert hit.content == "shared needle"
    assert len(run(store.search("small", "shared needle", limit=10))) == 10  # a small scope affords every word
    assert len(run(store.search("big", "shared", limit=10))) == 10  # one word is always kept


def test_move_keeps_the_memory_and_reindexes_it(store: LocalStore, tmp_path: Path) -> None:
    add_all(store, "codex:api", FILLER)
    add_all(store, "project:api", ["The staging cluster is in Frankfurt"])
    mid = run(store.add("codex:api", "Deploys use rsync to the bastion host", custom_id="turn-1", metadata={"tool": "Codex"}))
    [before] = [m for m in run(store.list("codex:api")) if m.id == mid]
    assert run(store.move(before, "project:api")) is True
    [hit] = run(store.search("project:api", "how do we deploy with rsync?"))
    assert (hit.id, hit.scope, hit.content, hit.metadata, hit.created_at) == (
        mid, "project:api", before.content, {"tool": "Codex"}, before.created_at)
    assert run(store.search("codex:api", "deploy with rsync")) == []
    assert run(store.count("codex:api")) == len(FILLER) and run(store.count("project:api")) == 2
    assert run(store.add("project:api", "again", custom_id="turn-1")) == mid  # its custom id went with it
    assert run(store.move(before, "project:api")) is False  # no longer in codex:api
    integrity(tmp_path / "memories.db")


def test_move_onto_the_same_custom_id_deletes_the_duplicate(store: LocalStore, tmp_path: Path) -> None:
    kept = run(store.add("project:api", "the answer as stored there", custom_id="turn-7"))
    dup = run(store.add("codex:api", "the answer as stored here", custom_id="turn-7"))
    [memory] = run(store.list("codex:api"))
    assert run(store.move(memory, "project:api")) is True
    assert [m.id for m in run(store.list("project:api"))] == [kept]
    assert run(store.count("codex:api")) == 0 and run(store.search("codex:api", "answer stored")) == []
    assert dup != kept and [m.id for m in run(store.search("project:api", "answer stored"))] == [kept]
    integrity(tmp_path / "memories.db")


def test_move_to_its_own_scope_changes_nothing(store: LocalStore) -> None:
    mid = run(store.add("s", "remember the alamo", custom_id="c"))
    [memory] = run(store.list("s"))
    assert run(store.move(memory, "s")) is True
    assert [(m.id, m.content) for m in run(store.search("s", "alamo"))] == [(mid, "remember the alamo")]
    assert run(store.move(Memory("999", "s", "gone"), "t")) is False


# -- dates, stemming, near-duplicates, the schema 2 migration -------------------------------------------

def test_a_memory_shows_its_date_and_a_query_naming_its_month_finds_it(tmp_path: Path) -> None:
    now = 1_796_083_200.0  # 2026-12-01 00:00 UTC
    clock = [now - 30 * 86400]  # 30 days ago: 2026-11-01
    store = LocalStore(tmp_path / "m.db", clock=lambda: clock[0])
    try:
        run(store.add("p", "User: which queue do we use?\nAssistant: RabbitMQ, behind the gateway", metadata={"tool": "Codex"}))
        clock[0] = now
        run(store.add("p", "User: which queue for the mailer?\nAssistant: the mailer has none, it sends directly"))
        found = run(recall(store, "p", "which queue did we pick in November?"))
        assert found[0] == "(2026-11-01, Codex) User: which queue do we use?\nAssistant: RabbitMQ, behind the gateway"
        assert found[1].startswith("(2026-12-01) User: which queue for the mailer?")
        assert [m.content for m in run(store.search("p", "november"))] == [found[0].split(") ", 1)[1]]
        assert len(run(store.search("p", "december 2026"))) == 2 and run(store.search("p", "october")) == []
    finally:
        run(store.close())


@pytest.fixture
def eight_hours_behind_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone 8 hours behind UTC (as Pacific time in winter), then UTC again."""
    monkeypatch.setenv("TZ", "XST+8")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("eight_hours_behind_utc")
def test_a_memorys_date_is_its_local_day(tmp_path: Path) -> None:
    """A turn stored on 30 November at 18:00 local time, 02:00 on 1 December in UTC: its note shows the day the
    user lived (and the client's prompt names as today), and "November" finds it, "December" does not. So does
    "yesterday", asked the next evening."""
    evening = 1_796_090_400.0  # 2026-12-01 02:00 UTC, 2026-11-30 18:00 at UTC-8
    clock = [evening]
    store = LocalStore(tmp_path / "m.db", clock=lambda: clock[0])
    try:
        turn = "User: which queue do we use?\nAssistant: RabbitMQ, behind the gateway"
        run(store.add("p", turn, metadata={"tool": "Codex"}))
        assert list(run(recall(store, "p", "which queue do we use?"))) == [f"(2026-11-30, Codex) {turn}"]
        assert [m.content for m in run(store.search("p", "what did we decide in November?"))] == [turn]
        assert run(store.search("p", "what did we decide in December?")) == []
        clock[0] = evening + 86400  # the next evening, 1 December locally
        assert [m.content for m in run(store.search("p", "what did we decide yesterday?"))] == [turn]
    finally:
        run(store.close())


@pytest.mark.usefixtures("eight_hours_behind_utc")
def test_a_schema_6_store_is_migrated_on_open_into_the_local_zone(tmp_path: Path) -> None:
    """Schema 6 indexed dates in UTC; the store migrated west of Greenwich reads them in its zone, and every
    memory stays as it was."""
    path = tmp_path / "v6.db"
    evening = 1_796_090_400.0  # 2026-12-01 02:00 UTC, 2026-11-30 18:00 at UTC-8
    turn = "User: which queue do we use?\nAssistant: RabbitMQ, behind the gateway"
    _, before = older_store(path, 6, [("p", "turn-1", turn, "{}", evening)], index.index_text, drop=("settings",))
    store = LocalStore(path)
    try:
        assert [m.content for m in run(store.search("p", "what did we decide in November?"))] == [turn]
        assert turn not in [m.content for m in run(store.search("p", "what did we decide in December?"))]
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT * FROM memories ORDER BY id").fetchall() == before
        assert db.execute("PRAGMA user_version").fetchone()[0] == local.SCHEMA_VERSION
        assert db.execute("SELECT value FROM settings WHERE key = 'utc_offset'").fetchone() == (-8 * 3600,)
    integrity(path)


def test_the_index_reads_dates_in_the_stores_zone_whatever_the_process_zone(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A memory is removed from the index with the terms it was indexed with: a store made in UTC keeps reading
    dates in UTC when a process of another zone (a CLI with its own TZ, the machine moved) replaces the memory,
    so no term of its first text is left behind, not its month either."""
    evening = 1_796_090_400.0  # 2026-12-01 02:00 UTC, 2026-11-30 18:00 at UTC-8
    store = LocalStore(tmp_path / "m.db", clock=lambda: evening)
    try:
        run(store.add("p", "User: which queue do we use?\nAssistant: RabbitMQ, behind the gateway", custom_id="t"))
    finally:
        run(store.close())
    monkeypatch.setenv("TZ", "XST+8")
    time.tzset()
    try:
        store = LocalStore(tmp_path / "m.db", clock=lambda: evening)
        try:
            turn = "User: which broker do we use?\nAssistant: Kafka, since the move"
            run(store.add("p", turn, custom_id="t"))
            assert run(store.search("p", "RabbitMQ gateway")) == []
            assert [m.content for m in run(store.search("p", "what did we decide in December?"))] == [turn]
            assert run(store.search("p", "what did we decide in November?")) == []
        finally:
            run(store.close())
    finally:
        monkeypatch.undo()
        time.tzset()
    integrity(tmp_path / "m.db")


def test_a_query_naming_a_time_relative_to_now_finds_that_times_memories(tmp_path: Path) -> None:
    now = 1_796_342_400.0  # 2026-12-04 00:00 UTC
    clock = [now - 8 * 86400]  # 2026-11-26
    store = LocalStore(tmp_path / "m.db", clock=lambda: clock[0])
    try:
        run(store.add("p", "We decided to keep the monorepo and split the CI pipelines"))
        clock[0] = now
        run(store.add("p", "We decided the logo stays blue, and tomorrow we decide the fonts"))
        [first, second] = run(store.search("p", "what did we decide last week?"))
        assert first.content.startswith("We decided to keep the monorepo") and second.content.startswith("We decided the logo")
        assert run(store.search("p", "what did we decide today?"))[0].content.startswith("We decided the logo")
        assert run(store.search("p", "what did we decide last year?")) == run(store.search("p", "what did we decide?"))
    finally:
        run(store.close())


def test_every_scope_stems_alike(store: LocalStore) -> None:
    scopes = [f"project:{name}" for name in ("api", "web", "shop", "infra", "docs", "mobile", "billing", "auth")]
    scopes += [f"user:{i}" for i in range(24)]
    for scope in scopes:
        add_all(store, scope, ["We really care about the release", "The car is parked outside", "Nate reads things"])
    for scope in scopes:
        assert [m.content for m in run(store.search(scope, "car"))] == ["The car is parked outside"], scope
        assert [m.content for m in run(store.search(scope, "thing"))] == ["Nate reads things"], scope
        assert [m.content for m in run(store.search(scope, "nation"))] == [], scope


def test_near_duplicates_are_merged_into_the_newest(store: LocalStore, tmp_path: Path) -> None:
    answer = ("User: how do we roll back a bad deploy of the api?\nAssistant: run make rollback with the previous"
              " release tag, then watch the error rate on the dashboard for ten minutes before you close the incident")
    first = run(store.add("p", answer, custom_id="turn-a"))
    assert run(store.add("p", answer)) == first  # the same answer stored twice
    retried = answer.replace("ten minutes", "fifteen minutes")  # a turn retried with one word changed
    assert run(store.add("p", retried, custom_id="turn-b")) == first
    [kept] = run(store.list("p"))
    assert kept.content == retried
    assert run(store.add("p", retried + " and page the owner", custom_id="turn-b")) == first  # its custom id now
    assert run(store.count("p")) == 1

    assert run(store.add("p", "the api listens on port 7001")) != run(store.add("p", "the api listens on port 7002"))
    question = "User: Question load-196 about the parser module?\nAssistant: Reply to load-196: it is written in Rust."
    assert run(store.add("p", question)) != run(store.add("p", question.replace("196", "197")))  # a number differs
    assert run(store.add("p", "the api is written in go now")) == run(store.add("p", "the api is written in rust now"))
    same_answer = "Assistant: the tests pass, all forty two of them, on every supported platform"
    assert run(store.add("p", f"User: are we green?\n{same_answer}")) != run(store.add("p", f"User: status?\n{same_answer}"))
    assert run(store.add("q", answer)) != first  # another scope's memory is never merged
    assert run(store.count("p")) == 8 and run(store.count("q")) == 1
    integrity(tmp_path / "memories.db")


def test_a_tool_loop_ending_in_a_near_duplicate_is_merged_into_it(store: LocalStore, tmp_path: Path) -> None:
    """A loop's first step (its preamble) repeats nothing; its final answer, which updates it by its custom id,
    nearly repeats an older memory: the two become one, which the loop's later steps go on updating."""
    answer = ("run make rollback with the previous release tag, then watch the error rate on the dashboard for ten"
              " minutes before you close the incident")
    older = run(store.add("p", f"User: how do we roll back a bad deploy of the api?\nAssistant: {answer}", "turn-a"))
    prompt = "User: how do we roll back a bad deploy of the api service?"
    step = run(store.add("p", f"{prompt}\nAssistant: I will open the checklist first.", "turn-b"))
    assert step != older and run(store.count("p")) == 2
    assert run(store.add("p", f"{prompt}\nAssistant: {answer}", "turn-b", {"calls": ["Read runbook.md"]})) == older
    [kept] = run(store.list("p"))
    assert (kept.id, kept.content, kept.metadata) == (older, f"{prompt}\nAssistant: {answer}", {"calls": ["Read runbook.md"]})
    assert run(store.search("p", "checklist")) == []  # the preamble left the index too
    assert run(store.add("p", f"{prompt}\nAssistant: {answer} and page the owner", "turn-b")) == older
    assert run(store.count("p")) == 1

    # A step that repeats nothing stays the loop's own memory, and so does one of another scope.
    mine = run(store.add("p", "User: what port does the api use?\nAssistant: I will grep the config.", "turn-c"))
    assert run(store.add("p", "User: what port does the api use?\nAssistant: 7001, set in config.yaml", "turn-c")) == mine
    run(store.add("q", f"{prompt}\nAssistant: I will open the checklist first.", "turn-b"))
    assert run(store.add("q", f"{prompt}\nAssistant: {answer}", "turn-b")) != older
    assert (run(store.count("p")), run(store.count("q"))) == (2, 1)
    integrity(tmp_path / "memories.db")


# Schema 2, as it was: one table for every scope, each word glued to a prefix derived from the scope.
V2_SCHEMA = """
CREATE TABLE memories(id INTEGER PRIMARY KEY, scope TEXT NOT NULL, custom_id TEXT, content TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, UNIQUE(scope, custom_id));
CREATE INDEX memories_scope_created ON memories(scope, created_at);
CREATE VIRTUAL TABLE memories_fts USING fts5(terms, content='', tokenize='porter unicode61');
PRAGMA user_version = 2;
"""


def v2_index_text(scope: str, content: str) -> str:
    prefix = "s" + hashlib.blake2b(scope.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()
    return " ".join(prefix + w for w in index.words(content))


def test_a_schema_2_store_is_migrated_on_open_and_answers_the_same_memories(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    rows = [
        ("project:api", "turn-1", "User: where do logs go?\nAssistant: to Loki, kept 14 days", '{"tool": "Codex"}', 1.7e9),
        ("project:api", None, "Deploys use rsync over SSH to the bastion host", "{}", 1.7e9 + 60),
        ("user", None, "I prefer short answers", '{"client": "memproxy-cli"}', 1.7e9 + 120),
        ("project:web", "turn-1", "User: which css framework?\nAssistant: none, plain CSS modules", "{}", 1.7e9 + 180),
    ]
    with closing(sqlite3.connect(path)) as db:
        db.executescript(V2_SCHEMA)
        for row in rows:
            id_ = db.execute("INSERT INTO memories(scope, custom_id, content, metadata, created_at) VALUES (?, ?, ?, ?, ?)"
                             " RETURNING id", row).fetchone()[0]
            db.execute("INSERT INTO memories_fts(rowid, terms) VALUES (?, ?)", (id_, v2_index_text(row[0], row[2])))
        db.commit()
        before = db.execute("SELECT * FROM memories ORDER BY id").fetchall()
    store = LocalStore(path)
    try:
        for scope, _, content, _, _ in rows:
            assert run(store.search(scope, content))[0].content == content
        assert run(store.add("project:api", "User: where do logs go?\nAssistant: to Loki, kept 30 days", custom_id="turn-1"))
        assert run(store.count()) == 4
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        after = db.execute("SELECT * FROM memories ORDER BY id").fetchall()
        assert db.execute("PRAGMA user_version").fetchone()[0] == local.SCHEMA_VERSION
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_fts'").fetchone() is None
    assert after[1:] == before[1:] and after[0][:3] == before[0][:3]  # nothing lost; turn-1 updated in place
    integrity(path)


def test_a_turn_is_found_by_the_files_its_loop_touched_which_are_never_recalled(store: LocalStore, tmp_path: Path) -> None:
    add_all(store, "p", FILLER)
    turn = "User: the login keeps failing after a restart\nAssistant: Fixed: the cookie now outlives the restart."
    trace = {"calls": ["Read src/orchard/session.py", "Bash", "Edit src/orchard/session.py", "Grep tests/auth"]}
    id_ = run(store.add("p", turn, "turn-1", trace))
    [found] = run(store.search("p", "what did we change in session.py?"))
    assert (found.id, found.content) == (id_, turn)  # found by the file, and recalled as the turn alone
    assert run(recall(store, "p", "orchard session")) == (recalled(turn, None, found.created_at),)
    assert run(store.search("p", "bash grep edit read")) == []  # tool names are not indexed, files are
    # the loop's next step names other files: the memory is indexed with those alone
    assert run(store.add("p", turn, "turn-1", {"calls": ["Edit docs/cookies.md"]})) == id_
    assert run(store.search("p", "orchard session")) == []
    assert [m.id for m in run(store.search("p", "cookies.md"))] == [id_]
    assert run(store.move(found, "q"))
    assert run(store.search("p", "cookies.md")) == [] and [m.id for m in run(store.search("q", "cookies.md"))] == [id_]
    assert run(store.forget("q", id_)) and run(store.search("q", "cookies.md")) == []
    integrity(tmp_path / "memories.db")


def test_a_schema_3_store_is_migrated_on_open_and_its_turns_are_found_by_their_files(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    turn = "User: why does the deploy hang?\nAssistant: the health check waited on a port nobody opened."
    metadata = '{"tool": "Claude Code", "calls": ["Edit deploy/healthcheck.yaml"]}'
    [id_], before = older_store(path, 3, [("p", "turn-1", turn, metadata, 1.7e9)],
                                lambda content, at, _: index.index_text(content, at))  # schema 3 indexed no trace
    store = LocalStore(path)
    try:
        assert [m.id for m in run(store.search("p", "healthcheck.yaml"))] == [str(id_)]
        assert run(store.search("p", "deploy hang"))[0].content == turn
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT * FROM memories ORDER BY id").fetchall() == before
        assert db.execute("PRAGMA user_version").fetchone()[0] == local.SCHEMA_VERSION
    integrity(path)


def v4_index_text(content: str, created_at: float, metadata: str) -> str:
    """Schema 4's index text: a memory's date as the plain words of its month and year ("may 2026")."""
    day = time.gmtime(created_at)
    files = index.words(" ".join(index.traced_files(metadata)))
    return " ".join((*index.words(content), *files, f"{index.MONTHS[day.tm_mon - 1]} {day.tm_year}"))


def test_a_schema_4_store_is_migrated_on_open_and_its_dates_match_no_words(tmp_path: Path) -> None:
    """Schema 4 indexed a memory's month and year as plain words, which "may" or "2026" in any prompt matched."""
    path = tmp_path / "v4.db"
    may = datetime.datetime(2025, 5, 12, tzinfo=datetime.UTC).timestamp()
    rows = [("p", "turn-1", "User: which certificates expire?\nAssistant: the TLS ones, rotate them yearly", "{}", may),
            ("p", "turn-2", "User: why is the cache stale?\nAssistant: it may be stale after a deploy", '{"tool": "Codex"}',
             may + 200 * 86400),
            ("q", None, "the billing service deploys on fridays", "{}", may)]
    _, before = older_store(path, 4, rows, v4_index_text)
    store = LocalStore(path)
    try:
        # The month as a date, and the word "may" in a text
        assert {m.content for m in run(store.search("p", "what did we decide in May?"))} == {rows[0][2], rows[1][2]}
        assert [m.content for m in run(store.search("p", "may the deploy fail on friday?"))] == [rows[1][2]]
        assert run(store.search("p", "update the copyright header to 2025")) == []
        assert {m.content for m in run(store.search("p", "what did we decide in 2025?"))} == {rows[0][2], rows[1][2]}
        assert [m.content for m in run(store.search("q", "billing deploys"))] == [rows[2][2]]
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT * FROM memories ORDER BY id").fetchall() == before
        assert db.execute("PRAGMA user_version").fetchone()[0] == local.SCHEMA_VERSION
    integrity(path)


TOOL_TURNS = [
    ("User: why does the login test flake?\nAssistant: the retry loop slept too little", {"tool": "Codex"}),
    ("User: fix the cursor blink in the editor pane\nAssistant: the caret now blinks at 500 ms", {"tool": "Claude Code"}),
    ("User: rename the session variable\nAssistant: renamed it to auth_session", {"tool": "Cursor"}),
    ("User: which port does the code server use?\nAssistant: 8443", {}),
]


def test_a_query_naming_a_tool_finds_what_that_tool_stored(store: LocalStore, tmp_path: Path) -> None:
    ids = [run(store.add("p", content, metadata=metadata)) for content, metadata in TOOL_TURNS]
    run(store.add("q", "User: what did Gemini CLI find?\nAssistant: nothing", metadata={"tool": "Gemini CLI"}))
    assert [m.id for m in run(store.search("p", "what did Codex say?"))] == [ids[0]]
    assert {m.id for m in run(store.search("p", "what did CLAUDE\n  Code change?"))} == {ids[1], ids[3]}  # and "code"
    assert [m.id for m in run(store.search("p", "what did Cursor do?"))][0] == ids[2]
    # a one-word name with a capital names its tool only with that capital; a name of several words, in any case
    assert [m.id for m in run(store.search("p", "move the cursor up"))] == [ids[1]]
    assert {m.id for m in run(store.search("p", "what did claude code change?"))} == {ids[1], ids[3]}
    assert [m.id for m in run(store.search("p", "what did claude say?"))] == []
    # its words alone are words, matched as such
    assert [m.id for m in run(store.search("p", "code"))] == [ids[3]]
    assert run(store.search("p", "what did Gemini CLI find?")) == []  # another scope's tool matches nothing here
    # the label is a term of its own: the word "codex" is a word
    codex = run(store.add("p", "the codex of build rules lives in docs/"))
    assert [m.id for m in run(store.search("p", "where is the codex of rules?"))] == [codex]
    assert {m.id for m in run(store.search("p", "what did Codex answer?"))} == {ids[0], codex}
    integrity(tmp_path / "memories.db")


def test_text_of_scripts_written_without_spaces_is_found_by_a_few_of_its_characters(store: LocalStore) -> None:
    ids = add_all(store, "p", ["我们的支付服务使用Stripe，数据库迁移用Alembic。", "デプロイはmake deployで行います。",
                               "ระบบชำระเงินใช้ PayPal", "the billing service deploys on fridays"])
    for query, found in [("数据库迁移怎么做?", ids[0]), ("支付服务", ids[0]), ("Stripe", ids[0]), ("Alembic", ids[0]),
                         ("デプロイの手順", ids[1]), ("ชำระเงิน", ids[2]), ("PayPal", ids[2])]:
        assert [m.id for m in run(store.search("p", query))][0] == found, query
    assert run(store.search("p", "猫")) == [] and run(store.search("p", "迁徙")) == []
    # Thai: FTS5 parts words at a vowel sign or tone mark, so pairs are made of the letters alone
    thai = add_all(store, "th", ["ฉันกินข้าวแล้ว", "ดินในสวนแห้งมาก", "อย่าลืมปิดไฟ", "เขาลืมกุญแจไว้ในรถ"])
    assert [m.id for m in run(store.search("th", "ดิน"))] == [thai[1]]  # not กิน
    assert {m.id for m in run(store.search("th", "ลืม"))} == {thai[2], thai[3]}
    # a tool's label in a script written without spaces is named inside a sentence of it
    label = run(store.add("zh", "部署用的是蓝绿发布", metadata={"tool": "通义灵码"}))
    run(store.add("zh", "测试用的是单元测试"))
    assert [m.id for m in run(store.search("zh", "通义灵码说了什么"))] == [label]
    # a character changed in a long Chinese memory is a near-duplicate of it, merged
    text = "部署流程：先在预发布环境运行全部测试，然后在周五下午之前发布到生产环境，最后检查监控面板和错误日志。"
    first = run(store.add("q", text))
    assert run(store.add("q", text.replace("周五", "周四"))) == first and run(store.count("q")) == 1


def test_a_long_prompt_ending_in_a_question_searches_the_questions_words(store: LocalStore) -> None:
    """A pasted log's longest words (hashes, keys) would fill every term a search takes."""
    redis = run(store.add("p", "User: which port does redis use?\nAssistant: redis listens on 6380 in staging"))
    add_all(store, "p", [f"User: note {i} about the frontend deployment\nAssistant: it takes {i} minutes" for i in range(8)])
    log = "\n".join(f"2026-01-0{i % 9 + 1}T10:00:00Z INFO deployment.controller reconciling replicaset"
                    f" frontend-{i:04x}9c8d6b{i:02d} namespace=production-environment observedGeneration={i}" for i in range(40))
    prompt = f"{log}\n\nWhy can't the worker reach redis? Which port does it use?"
    assert [m.id for m in run(store.search("p", prompt))][0] == redis
    assert index.query_terms("one paragraph: " + " ".join(f"word{i:03d}" for i in range(40)))[0] == "paragraph"


def test_a_tool_is_unindexed_with_its_memory(store: LocalStore, tmp_path: Path) -> None:
    id_ = run(store.add("p", "User: what broke the build?\nAssistant: a stale lockfile", "turn-1", {"tool": "Codex"}))
    run(store.add("p", "User: what broke the build?\nAssistant: a stale lockfile", "turn-1", {"tool": "Qwen Code"}))
    assert run(store.search("p", "what did Codex say?")) == []
    assert [m.id for m in run(store.search("p", "what did Qwen Code say?"))] == [id_]
    [found] = run(store.search("p", "lockfile"))
    assert run(store.move(found, "q")) and [m.id for m in run(store.search("q", "Qwen Code"))] == [id_]
    assert run(store.forget("q", id_)) and run(store.search("q", "Qwen Code")) == []
    integrity(tmp_path / "memories.db")


def test_a_schema_5_store_is_migrated_on_open_and_its_tools_are_found_by_name(tmp_path: Path) -> None:
    """Schema 5 indexed no tool."""
    path = tmp_path / "v5.db"
    rows: list[Row] = [("p", None, content, json.dumps(metadata), 1.7e9) for content, metadata in TOOL_TURNS]
    _, before = older_store(path, 5, rows, lambda content, at, _: " ".join((*index.words(content), index.date_words(at))),
                            drop=("tools", "settings"))
    store = LocalStore(path)
    try:
        assert [m.content for m in run(store.search("p", "what did Codex say?"))] == [TOOL_TURNS[0][0]]
        assert [m.content for m in run(store.search("p", "login test"))] == [TOOL_TURNS[0][0]]
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT * FROM memories ORDER BY id").fetchall() == before
        assert db.execute("PRAGMA user_version").fetchone()[0] == local.SCHEMA_VERSION
    integrity(path)


def test_a_migration_keeps_each_scopes_table_so_a_process_of_the_earlier_schema_writes_to_its_own(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    seeded(path, ("zeta", "the zeta service deploys on fridays"), ("alpha", "the alpha service deploys on mondays"))
    with closing(sqlite3.connect(path)) as db:
        before = db.execute("SELECT scope, id FROM scope_indexes ORDER BY id").fetchall()
        db.execute("PRAGMA user_version = 3")
        db.commit()
    store = LocalStore(path)
    try:
        run(store.open())  # migrates
        assert [m.content for m in run(store.search("zeta", "service deploys"))] == ["the zeta service deploys on fridays"]
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT scope, id FROM scope_indexes ORDER BY id").fetchall() == before
    integrity(path)


def test_a_write_that_waited_while_another_memproxy_migrated_is_refused(tmp_path: Path, monkeypatch) -> None:
    """The schema is checked before each call; another process may migrate the file between that check and the
    write's lock."""
    path = tmp_path / "m.db"
    store = LocalStore(path)
    try:
        run(store.add("p", "the first memory of the project"))
        follow = LocalStore._follow

        def migrated_meanwhile(self: LocalStore, db: sqlite3.Connection) -> None:
            follow(self, db)
            if not db.in_transaction:  # the check before the call: then the other process commits its migration
                with closing(sqlite3.connect(path)) as other:
                    other.execute(f"PRAGMA user_version = {local.SCHEMA_VERSION + 1}")
                    other.commit()

        monkeypatch.setattr(LocalStore, "_follow", migrated_meanwhile)
        with pytest.raises(StoreError, match="restart"):
            run(store.add("p", "written by the earlier schema after the migration"))
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        assert [c for (c,) in db.execute("SELECT content FROM memories")] == ["the first memory of the project"]


def test_a_store_another_memproxy_moved_to_a_newer_schema_is_refused_not_written(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = LocalStore(path)
    try:
        run(store.add("p", "the first memory of the project"))
        with closing(sqlite3.connect(path)) as db:  # a newer memproxy migrated the file while this one ran
            db.execute(f"PRAGMA user_version = {local.SCHEMA_VERSION + 1}")
            db.commit()
        with pytest.raises(StoreError, match="restart"):
            run(store.add("p", "written after the upgrade"))
        with pytest.raises(StoreError, match="restart"):
            run(store.search("p", "memory project"))
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT content FROM memories").fetchall() == [("the first memory of the project",)]


def test_a_scope_another_process_gives_conversations_is_ranked_with_them_at_once(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    proxy, other = LocalStore(path), LocalStore(path)
    try:
        run(proxy.add("p", "a note on the orchard irrigation schedule"))
        assert len(run(proxy.search("p", "orchard map"))) == 1  # a scope of no conversation, so far
        for prompt, answer in (("where is the orchard map?", "in docs/maps, the first page"),
                               ("and what does its legend say?", "each symbol is a kind of tree")):
            run(other.add("p", f"User: {prompt}\nAssistant: {answer}", metadata={"conversation": "c1"}))
        fresh = LocalStore(path)
        try:
            expected = [m.content for m in run(fresh.search("p", "orchard map"))]
        finally:
            run(fresh.close())
        assert any("legend" in c for c in expected)  # the turn after the match, by propagation
        assert [m.content for m in run(proxy.search("p", "orchard map"))] == expected
    finally:
        run(proxy.close())
        run(other.close())


def test_rewrite_leaves_a_memory_updated_since_it_was_read(store: LocalStore) -> None:
    run(store.add("p", "User: deploy?\nAssistant: use the token ghp_old", custom_id="turn-1"))
    [read] = run(store.list("p"))
    run(store.add("p", "User: deploy?\nAssistant: run make deploy", custom_id="turn-1"))  # the proxy, meanwhile
    assert run(store.rewrite(read, "User: deploy?\nAssistant: use the token [secret]")) is False
    assert [m.content for m in run(store.list("p"))] == ["User: deploy?\nAssistant: run make deploy"]
    [current] = run(store.list("p"))
    assert run(store.rewrite(current, "User: deploy?\nAssistant: run make release")) is True
    assert [m.content for m in run(store.search("p", "release"))] == ["User: deploy?\nAssistant: run make release"]


def test_a_rewrite_that_moves_a_turn_to_another_conversation_moves_its_neighbours(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = LocalStore(path)
    try:
        for text in ("User: where is the orchard map?\nAssistant: in docs/maps", "User: and its legend?\nAssistant: trees"):
            run(store.add("p", text, metadata={"conversation": "a"}))
        found = run(store.search("p", "orchard map"))  # the scope's Order is read, and kept
        assert [m.content for m in found][1:] == ["User: and its legend?\nAssistant: trees"]
        second = next(m for m in run(store.list("p")) if "legend" in m.content)
        assert run(store.rewrite(second, second.content, {"conversation": "b"}))
        assert [m.content for m in run(store.search("p", "orchard map"))] == ["User: where is the orchard map?\nAssistant: in docs/maps"]
    finally:
        run(store.close())


def test_add_many_takes_a_date_past_any_calendar_as_now_and_indexes_the_date_it_keeps(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "m.db", clock=lambda: 1_764_547_200.0)  # 2025-12-01
    try:
        memories = [Memory("a", "p", "alpha bravo charlie", created_at=10**30),
                    Memory("b", "p", "delta echo foxtrot", created_at=2**53 + 1),
                    Memory("c", "p", "golf hotel india", created_at=float("nan"))]
        assert run(store.add_many(memories)) == 3
        assert {m.created_at for m in run(store.list("p"))} == {1_764_547_200.0}
        assert run(store.forget("p", next(m.id for m in run(store.list("p")) if "delta" in m.content)))
        assert {m.content for m in run(store.search("p", "december 2025"))} == {"golf hotel india", "alpha bravo charlie"}
    finally:
        run(store.close())
    integrity(tmp_path / "m.db")


@pytest.mark.parametrize("setup", ["CREATE TABLE notes(body TEXT)", "PRAGMA application_id = 42", "PRAGMA user_version = 99"])
def test_a_file_that_is_not_a_memory_store_is_refused_and_left_as_it_was(tmp_path: Path, setup: str) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(setup)
        db.commit()
        before = (db.execute("PRAGMA journal_mode").fetchone(), db.execute("SELECT * FROM sqlite_master").fetchall())
    store = LocalStore(path)
    try:
        with pytest.raises(StoreError, match="not a memproxy memory store|newer than"):
            run(store.open())
    finally:
        run(store.close())
    with closing(sqlite3.connect(path)) as db:
        assert (db.execute("PRAGMA journal_mode").fetchone(), db.execute("SELECT * FROM sqlite_master").fetchall()) == before
    store = LocalStore(tmp_path / "m.db")
    try:
        run(store.add("p", "a store of its own"))
    finally:
        run(store.close())
    with closing(sqlite3.connect(tmp_path / "m.db")) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == local.APPLICATION_ID


def test_metadata_keeps_integers_past_64_bits(store: LocalStore) -> None:
    run(store.add("p", "a memory with a long number in its metadata", metadata={"n": 10**30, "m": -(2**70), "k": 7}))
    [found] = run(store.list("p"))
    assert found.metadata == {"n": 10**30, "m": -(2**70), "k": 7}


def test_a_read_only_store_neither_makes_migrates_nor_writes_its_file(tmp_path: Path) -> None:
    missing = LocalStore(tmp_path / "none" / "m.db", read_only=True)
    try:
        assert run(missing.list("p")) == [] and run(missing.count()) == 0
    finally:
        run(missing.close())
    assert not (tmp_path / "none").exists()
    path = tmp_path / "m.db"
    seeded(path, ("p", "a memory of an earlier schema"))
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 3")
        db.commit()
    before = path.read_bytes()
    store = LocalStore(path, read_only=True)
    try:
        assert [m.content for m in run(store.list("p"))] == ["a memory of an earlier schema"]
        with pytest.raises(StoreError):
            run(store.add("p", "never written"))
    finally:
        run(store.close())
    assert path.read_bytes() == before


def test_a_store_tells_another_connections_changes_from_its_own(store: LocalStore, tmp_path: Path) -> None:
    run(store.add("p", "Deploys use rsync"))
    assert not run(store.changed_elsewhere())  # its own write
    other = LocalStore(tmp_path / "memories.db")
    try:
        run(other.add("p", "Staging is eu-west"))
    finally:
        run(other.close())
    assert run(store.changed_elsewhere()) and not run(store.changed_elsewhere())  # said once
