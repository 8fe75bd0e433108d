"""The embedded store: one SQLite file with an FTS5 (BM25) index, owned by one worker thread."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .. import config, private
from ..worker import Worker
from .base import Memory, MemoryStore, StoreError, recalled

T = TypeVar("T")

SCHEMA_VERSION = 2
BUSY_TIMEOUT = 5.0  # seconds to wait for another process's write lock
MAX_TERMS = 24
# bm25() counts every memory holding each query term, so a common term costs the most and ranks the
# least: a search in a scope larger than this keeps its rarest terms up to this many counted memories.
DF_BUDGET = 10_000
DF_TTL = 600.0  # seconds a cached scope size or term frequency is trusted
# Every write transaction adds an index segment, and a search reads every segment: the store merges
# them into one on open and after adding a tenth of its size (at least OPTIMISE_EVERY memories).
MAX_SEGMENTS = 4
OPTIMISE_EVERY = 1000
# A scope found empty is answered on the event loop, with no trip to the worker thread, for this many seconds
# (the user scope beside every request is empty for most users); a memory this store adds to it ends that at
# once, one another process adds is seen after it.
EMPTY_TTL = 2.0
MAX_EMPTY = 4096  # scopes remembered as empty

# The index is contentless and scoped: each memory is indexed as its words, each glued to a prefix
# derived from the scope (see `index_text`), so every scope has its own posting lists and a search
# costs what its scope holds, not what the store holds. The store writes both tables in one
# transaction; `index_text` must stay deterministic (a change needs a SCHEMA_VERSION bump, which
# reindexes), since deleting from a contentless index repeats the text that was indexed.
SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS memories(
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    custom_id TEXT,
    content TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{{}}',
    created_at REAL NOT NULL,
    UNIQUE(scope, custom_id)
);
CREATE INDEX IF NOT EXISTS memories_scope_created ON memories(scope, created_at);
DROP TRIGGER IF EXISTS memories_ai;
DROP TRIGGER IF EXISTS memories_ad;
DROP TRIGGER IF EXISTS memories_au;
DROP VIEW IF EXISTS memories_fts_source;
DROP TABLE IF EXISTS memories_fts;
CREATE VIRTUAL TABLE memories_fts USING fts5(terms, content='', tokenize='porter unicode61');
INSERT INTO memories_fts(rowid, terms) SELECT id, memproxy_index_text(scope, content) FROM memories;
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

COLUMNS = "m.id, m.scope, m.content, m.metadata, m.created_at"
# Rank in the FTS index alone (bm25() in the subquery, not the `rank` column, which costs FTS5 a nested
# statement per search), then read the few best memories by id. `+m.scope` keeps SQLite from scanning
# the scope's index instead; the scope test guards against prefix collisions (a collision can only
# cost results, never leak another scope's).
SEARCH = """
SELECT {columns}, best.score FROM (
    SELECT rowid AS id, bm25(memories_fts) AS score FROM memories_fts WHERE memories_fts MATCH ? ORDER BY score LIMIT ?
) AS best CROSS JOIN memories AS m ON m.id = best.id
WHERE +m.scope = ? ORDER BY best.score
"""
SEARCH_MEMORIES = SEARCH.format(columns=COLUMNS)
# Recall's: nothing it does not inject (a memory's content, tool and date).
SEARCH_CONTENTS = SEARCH.format(
    columns="m.content, CASE WHEN json_valid(m.metadata) THEN json_extract(m.metadata, '$.tool') END, m.created_at"
)
DF = "SELECT count(*) FROM (SELECT 1 FROM memories_fts WHERE memories_fts MATCH ? LIMIT ?)"
LIST = f"SELECT {COLUMNS} FROM memories AS m WHERE m.scope = ? ORDER BY m.created_at DESC, m.id DESC LIMIT ? OFFSET ?"
INSERT = (
    "INSERT INTO memories(scope, custom_id, content, metadata, created_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT(scope, custom_id) DO NOTHING RETURNING id"
)
INDEX = "INSERT INTO memories_fts(rowid, terms) VALUES (?, ?)"
UNINDEX = "INSERT INTO memories_fts(memories_fts, rowid, terms) VALUES ('delete', ?, ?)"

WORD = re.compile(r"[^\W_]+")
STOPWORDS = frozenset(
    """
    about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing done down during each few for from further get got
    had has have having he her here hers herself him himself his how if in into is it its itself just
    let like me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own please same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up use used using very via was we were what when
    where which while who whom why will with would yes yet you your yours yourself yourselves
    """.split()
)


def words(text: str) -> list[str]:
    """The meaningful words of `text`, in order: lower case, no stopwords or 1-char words."""
    return [w for w in WORD.findall(text.lower()) if len(w) > 1 and w not in STOPWORDS]


def query_terms(text: str) -> list[str]:
    """The distinct meaningful words of `text`, the longest MAX_TERMS."""
    return sorted(dict.fromkeys(words(text)), key=len, reverse=True)[:MAX_TERMS]


@functools.lru_cache(maxsize=4096)
def scope_prefix(scope: str) -> str:
    """What every indexed word of `scope` starts with: 's' and 10 hex digits of the scope's hash."""
    return "s" + hashlib.blake2b(scope.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()


def index_text(scope: str, content: str) -> str:
    """The text the index holds for a memory: its words, each glued to the scope's prefix."""
    prefix = scope_prefix(scope)
    return " ".join(prefix + w for w in words(content))


def _memory(row: tuple[Any, ...], score: float = 0.0) -> Memory:
    id_, scope, content, metadata, created_at = row
    try:
        meta = orjson.loads(metadata)
    except orjson.JSONDecodeError:  # NaN or Infinity, which json.dumps writes and orjson refuses
        meta = json.loads(metadata)
    return Memory(str(id_), scope, content, score, meta, created_at)


class LocalStore(MemoryStore):
    """Memories in a local SQLite file; all database work runs in one dedicated thread."""

    name = "local"
    late_is_failure = False  # a late answer means a busy worker thread, not a failing store (see recall.Recall)

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else config.store_path()
        self._worker = Worker("memproxy-store")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        # Worker thread only: scope -> memories it holds, and scoped term -> memories holding it (both
        # capped at DF_BUDGET + 1), forgotten every DF_TTL seconds.
        self._sizes: dict[str, int] = {}
        self._df: dict[str, int] = {}
        self._df_expiry = 0.0
        self._unmerged = 0  # memories added since the index was last merged; worker thread only
        self._empty: dict[str, float] = {}  # scope -> monotonic time until which it is taken to be empty

    async def open(self) -> None:
        """Open the database now, so that an unusable path is reported at start-up, and merge its index."""
        await self._run(self._optimise)

    async def search(self, scope: str, query: str, limit: int = 5, threshold: float = 0.0) -> list[Memory]:
        return await self._run(self._search, scope, query, limit, threshold)

    def start_search(self, scope: str, query: str, limit: int = 5, threshold: float = 0.0) -> asyncio.Future[tuple[str, ...]]:
        if (until := self._empty.get(scope)) is not None and until > time.monotonic() and not self._closed:
            found: asyncio.Future[tuple[str, ...]] = asyncio.get_running_loop().create_future()
            found.set_result(())
            return found
        return self._run(self._contents, scope, query, limit, threshold)

    async def add(
        self, scope: str, content: str, custom_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> str:
        try:
            metadata_json = json.dumps(metadata or {}, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise StoreError(f"metadata is not JSON-serialisable: {type(e).__name__}") from e
        return await self._run(self._add, scope, content, custom_id, metadata_json, time.time())

    async def add_many(self, memories: Iterable[Memory]) -> int:
        """Store many memories in one transaction (imports, benchmarks): each keeps its metadata and
        created_at (0 means now), and its id is its custom id (empty means none). Returns how many were new."""
        return await self._run(self._add_many, list(memories), time.time())

    async def list(self, scope: str, limit: int = 100, offset: int = 0) -> list[Memory]:
        return await self._run(lambda db: [_memory(r) for r in db.execute(LIST, (scope, limit, offset))])

    async def forget(self, scope: str, memory_id: str) -> bool:
        return await self._run(self._forget, scope, memory_id)

    async def rewrite(self, memory: Memory, content: str) -> bool:
        return await self._run(self._rewrite, memory.scope, memory.id, content)

    async def every(self, scopes: Sequence[str] | None = None, page: int = 500) -> AsyncIterator[Memory]:
        """Every memory of `scopes` (of the whole store if None), oldest first."""
        after = 0
        while rows := await self._run(self._page, None if scopes is None else list(scopes), after, page):
            for row in rows:
                yield _memory(row)
            after = rows[-1][0]

    async def compact(self) -> bool:
        """Leave no trace of rewritten or forgotten text in the file: merge the index, rebuild the file and empty
        its WAL. False if another connection (a running proxy) kept the WAL from being emptied."""
        return await self._run(self._compact)

    async def count(self, scope: str | None = None) -> int:
        """How many memories `scope` holds, or the whole store if `scope` is None."""
        where, args = ("", ()) if scope is None else (" WHERE scope = ?", (scope,))
        return await self._run(lambda db: db.execute("SELECT count(*) FROM memories" + where, args).fetchone()[0])

    async def scopes(self) -> list[str]:
        """Every scope that holds a memory, sorted."""
        return await self._run(lambda db: [r[0] for r in db.execute("SELECT DISTINCT scope FROM memories ORDER BY 1")])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._worker.run(self._disconnect)
        finally:
            self._worker.stop()

    def _run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(db, *args)`, run in the worker thread: a future on the running loop."""
        if self._closed:
            raise StoreError("the local store is closed")
        return self._worker.submit(self._call, fn, *args)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """In the worker thread: run `fn(db, *args)`, connecting first if needed."""
        if self._db is None:
            self._db = self._connect()
        try:
            return fn(self._db, *args)
        except (sqlite3.Error, UnicodeError) as e:  # UnicodeError: lone surrogates in the text
            raise StoreError(f"local store at {self.path}: {type(e).__name__}: {e}") from e

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        try:
            # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the database's mode.
            path = private.private_path(self.path, create=True, companions=private.SQLITE_COMPANIONS)
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
            db.create_function("memproxy_index_text", 2, index_text, deterministic=True)  # for SCHEMA's reindex
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            if db is not None:
                db.close()
            raise StoreError(f"cannot open the memory store at {self.path}: {e}") from e
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreError(f"the memory store at {self.path} has schema {version}, newer than {SCHEMA_VERSION}")
        return db

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _search(self, db: sqlite3.Connection, scope: str, query: str, limit: int, threshold: float) -> list[Memory]:
        return [_memory(tuple(row), score) for *row, score in self._ranked(db, SEARCH_MEMORIES, scope, query, limit, threshold)]

    def _contents(self, db: sqlite3.Connection, scope: str, query: str, limit: int, threshold: float) -> tuple[str, ...]:
        found = tuple(recalled(content, tool, at) for content, tool, at, _ in self._ranked(db, SEARCH_CONTENTS, scope, query, limit, threshold))
        if not found and db.execute("SELECT 1 FROM memories WHERE scope = ? LIMIT 1", (scope,)).fetchone() is None:
            if len(self._empty) >= MAX_EMPTY:
                self._empty.clear()
            self._empty[scope] = time.monotonic() + EMPTY_TTL
        return found

    def _ranked(self, db: sqlite3.Connection, sql: str, scope: str, query: str, limit: int, threshold: float) -> list[tuple[Any, ...]]:
        """The rows of `sql` (a SEARCH) for `query` in `scope`, best first, each ending in its score in [0, 1)."""
        prefix = scope_prefix(scope)
        terms = [prefix + t for t in query_terms(query)] if limit > 0 else []
        terms = self._affordable(db, scope, terms)
        if not terms:
            return []
        found = []
        for *row, rank in db.execute(sql, (" OR ".join(f'"{t}"' for t in terms), limit, scope)):
            score = -rank / (1 - rank)  # x / (1 + x) for x = -bm25: monotonic, in [0, 1)
            if score < threshold:
                break
            found.append((*row, score))
        return found

    def _affordable(self, db: sqlite3.Connection, scope: str, terms: list[str]) -> list[str]:
        """The rarest of `terms` whose document frequencies fit DF_BUDGET; at least one.

        Only a scope holding more than DF_BUDGET memories can exceed it, so only those are counted.
        """
        if time.monotonic() > self._df_expiry:
            self._sizes.clear()
            self._df.clear()
            self._df_expiry = time.monotonic() + DF_TTL
        if len(terms) < 2:
            return terms
        if scope not in self._sizes:
            self._sizes[scope] = db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM memories WHERE scope = ? LIMIT ?)", (scope, DF_BUDGET + 1)
            ).fetchone()[0]
        if self._sizes[scope] <= DF_BUDGET:
            return terms
        for term in terms:
            if term not in self._df:
                self._df[term] = db.execute(DF, (f'"{term}"', DF_BUDGET + 1)).fetchone()[0]
        kept: list[str] = []
        total = 0
        for term in sorted(terms, key=self._df.__getitem__):
            total += self._df[term]
            if kept and total > DF_BUDGET:
                break
            kept.append(term)
        return kept

    @staticmethod
    def _insert(db: sqlite3.Connection, scope: str, content: str, custom_id: str | None, metadata: str, at: float) -> int | None:
        """Insert a memory and index it, in the caller's transaction; None if (scope, custom_id) exists."""
        row = db.execute(INSERT, (scope, custom_id, content, metadata, at)).fetchone()
        if row is not None:
            db.execute(INDEX, (row[0], index_text(scope, content)))
        return None if row is None else row[0]

    def _add(self, db: sqlite3.Connection, scope: str, content: str, custom_id: str | None, metadata: str, now: float) -> str:
        self._empty.pop(scope, None)
        with db:
            db.execute("BEGIN IMMEDIATE")
            id_ = self._insert(db, scope, content, custom_id, metadata, now)
            if id_ is None:
                id_ = db.execute("SELECT id FROM memories WHERE scope = ? AND custom_id = ?", (scope, custom_id)).fetchone()[0]
        self._added(db, 1)
        return str(id_)

    def _add_many(self, db: sqlite3.Connection, memories: list[Memory], now: float) -> int:
        for m in memories:
            self._empty.pop(m.scope, None)
        with db:
            db.execute("BEGIN IMMEDIATE")
            added = sum(
                self._insert(db, m.scope, m.content, m.id or None, json.dumps(m.metadata, ensure_ascii=False), m.created_at or now)
                is not None
                for m in memories
            )
        self._added(db, added)
        return added

    def _added(self, db: sqlite3.Connection, n: int) -> None:
        self._unmerged += n
        if self._unmerged >= OPTIMISE_EVERY and self._unmerged * 10 >= db.execute("SELECT max(id) FROM memories").fetchone()[0]:
            self._optimise(db)

    def _optimise(self, db: sqlite3.Connection) -> None:
        """Merge the index's segments into one if there are more than MAX_SEGMENTS."""
        self._unmerged = 0
        if db.execute("SELECT count(DISTINCT segid) FROM memories_fts_idx").fetchone()[0] > MAX_SEGMENTS:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")

    @staticmethod
    def _forget(db: sqlite3.Connection, scope: str, memory_id: str) -> bool:
        # SQLite gives the text id the column's integer affinity; an id that is not an integer matches nothing.
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "DELETE FROM memories WHERE id = ? AND scope = ? RETURNING id, content", (memory_id, scope)
            ).fetchone()
            if row is not None:
                db.execute(UNINDEX, (row[0], index_text(scope, row[1])))
        return row is not None

    @staticmethod
    def _rewrite(db: sqlite3.Connection, scope: str, memory_id: str, content: str) -> bool:
        """Replace a memory's content and its index entry (deleted with the text it was indexed with)."""
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id, content FROM memories WHERE id = ? AND scope = ?", (memory_id, scope)).fetchone()
            if row is not None:
                db.execute(UNINDEX, (row[0], index_text(scope, row[1])))
                db.execute("UPDATE memories SET content = ? WHERE id = ?", (content, row[0]))
                db.execute(INDEX, (row[0], index_text(scope, content)))
        return row is not None

    @staticmethod
    def _page(db: sqlite3.Connection, scopes: list[str] | None, after: int, limit: int) -> list[tuple[Any, ...]]:
        where = "" if scopes is None else f" AND m.scope IN ({', '.join('?' * len(scopes))})"
        sql = f"SELECT {COLUMNS} FROM memories AS m WHERE m.id > ?{where} ORDER BY m.id LIMIT ?"
        return db.execute(sql, (after, *(scopes or ()), limit)).fetchall()

    def _compact(self, db: sqlite3.Connection) -> bool:
        # A contentless index keeps deleted terms in its segments until they are merged; VACUUM then drops
        # the free pages that held old text, and the checkpoint empties the WAL, which held it too.
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")
        self._unmerged = 0
        db.execute("VACUUM")
        return db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0

    async def move(self, memory: Memory, scope: str) -> bool:
        return await self._run(self._move, memory.scope, memory.id, scope)

    def _move(self, db: sqlite3.Connection, scope: str, memory_id: str, target: str) -> bool:
        """Give a memory another scope and index it under that scope's prefix (unindexed with the text it was
        indexed with); if `target` holds its custom id already, it is a duplicate: deleted."""
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT id, custom_id, content FROM memories WHERE id = ? AND scope = ?", (memory_id, scope)
            ).fetchone()
            if row is None or target == scope:
                return row is not None
            id_, custom_id, content = row
            self._empty.pop(target, None)
            db.execute(UNINDEX, (id_, index_text(scope, content)))
            duplicate = custom_id is not None and db.execute(
                "SELECT 1 FROM memories WHERE scope = ? AND custom_id = ?", (target, custom_id)
            ).fetchone()
            if duplicate:
                db.execute("DELETE FROM memories WHERE id = ?", (id_,))
            else:
                db.execute("UPDATE memories SET scope = ? WHERE id = ?", (target, id_))
                db.execute(INDEX, (id_, index_text(target, content)))
        self._sizes.pop(scope, None)
        self._sizes.pop(target, None)
        return True
