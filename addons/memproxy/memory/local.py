"""The embedded store: one SQLite file, searched with BM25 per scope (memory.index), owned by one worker thread."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .. import config, private
from ..worker import Worker
from .base import PROMPT_KEY, Keyed, Memory, MemoryStore, StoreError, recalled
from .index import NEAR_CANDIDATES, Indexes, match, named_dates, near_match, query_terms, relative_dates
from .near import near_duplicates
from .ranking import (
    CANDIDATES,
    CONVERSATION_OF,
    NEIGHBOUR_GAP,
    NEIGHBOURS_OF,
    NEIGHBOURS_SQL,
    ORDER_SQL,
    Context,
    Order,
    context,
    propagate,
)

T = TypeVar("T")
LONG_NUMBER = re.compile(r"\d{19}")  # digits of an integer that may not fit 64 bits

SCHEMA_VERSION = 7
APPLICATION_ID = 0x6D656D70  # "memp": the file's header names it a memproxy store (set by each migration)
LAST_DATE = 253_402_300_800.0  # 10000-01-01 UTC: a later "date" is none
BUSY_TIMEOUT = 5.0  # seconds to wait for another process's write lock
STATEMENTS = 1024  # prepared statements kept: a few for each scope searched (its index is a table of its own)
# bm25() counts every memory holding each query term, so a common term costs the most and ranks the
# least: a search in a scope larger than this keeps its rarest terms up to this many counted memories.
DF_BUDGET = 10_000
DF_TTL = 600.0  # seconds a cached scope size or term frequency is trusted
# bm25() gives a word held by half of a scope's memories or more no weight, so in a scope of one or two memories
# every score is near 0: a search there ignores the threshold until the scope holds WEIGHED_FROM memories.
WEIGHED_FROM = 3
WEIGHED = "SELECT count(*) FROM (SELECT 1 FROM memories WHERE scope = ? LIMIT ?)"
# Every write transaction adds a segment to its scope's index, and a search reads every segment: the store
# merges a scope's segments into one on open and once it has added a tenth of the scope's size (at least
# OPTIMISE_EVERY memories) to it.
MAX_SEGMENTS = 4
OPTIMISE_EVERY = 64
# A scope found empty is answered on the event loop, with no trip to the worker thread, for this many seconds
# (the user scope beside every request is empty for most users); a memory this store adds to it ends that at
# once, one another process adds is seen after it.
EMPTY_TTL = 2.0
MAX_EMPTY = 4096  # scopes remembered as empty
# Scopes' Orders (memory.ranking) kept in memory: a scope of up to ORDERED_SCOPE memories, while all kept hold
# no more than ORDERED (about 190 bytes each). Other scopes' candidates are read with NEIGHBOURS_SQL: a store
# larger than that never reads an Order again at each search.
ORDERED_SCOPE = 20_000
ORDERED = 100_000
MAX_ORDERS = 4096  # scopes known as kept or not; past this, every Order is dropped

# The memories; each scope's index is a table of its own (memory.index), written in the same transaction.
SCHEMA = """
CREATE TABLE IF NOT EXISTS memories(
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    custom_id TEXT,
    content TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    UNIQUE(scope, custom_id)
);
CREATE INDEX IF NOT EXISTS memories_scope_created ON memories(scope, created_at);
"""

COLUMNS = "m.id, m.scope, m.content, m.metadata, m.created_at"
# Recall's: what it injects (a memory's content, tool and date), and the key of a stored turn's prompt (Keyed).
CONTENTS = (
    "m.content, CASE WHEN json_valid(m.metadata) THEN json_extract(m.metadata, '$.tool') END, m.created_at,"
    f" CASE WHEN json_valid(m.metadata) THEN json_extract(m.metadata, '$.{PROMPT_KEY}') END"
)
# `columns` of the memories with the given ids, if they are the scope's: a search only ever returns the scope's own.
# `+m.scope` keeps SQLite from scanning the scope's index instead of reading the few ids.
READ = "SELECT m.id, {columns} FROM memories AS m WHERE m.id IN ({ids}) AND +m.scope = ?"
CONVERSING = "SELECT 1 FROM memories WHERE scope = ? AND instr(metadata, '\"conversation\"') > 0 LIMIT 1"
DF = "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} MATCH ? LIMIT ?)"
LIST = f"SELECT {COLUMNS} FROM memories AS m WHERE m.scope = ? ORDER BY m.created_at DESC, m.id DESC LIMIT ? OFFSET ?"
# Both return what the scope's Order needs: the memory's id (INSERT) and conversation.
INSERT = (
    "INSERT INTO memories(scope, custom_id, content, metadata, created_at) VALUES (?, ?, ?, ?, ?)"
    f" ON CONFLICT(scope, custom_id) DO NOTHING RETURNING id, {CONVERSATION_OF.format(m='memories')}"
)
REPLACE = (
    "UPDATE memories SET content = ?, metadata = ?, created_at = ?, custom_id = coalesce(?, custom_id) WHERE id = ?"
    f" RETURNING {CONVERSATION_OF.format(m='memories')}"
)


def _memory(row: tuple[Any, ...], score: float = 0.0) -> Memory:
    id_, scope, content, metadata, created_at = row
    try:  # orjson reads an integer past 64 bits as a float: json keeps it
        meta = json.loads(metadata) if LONG_NUMBER.search(metadata) else orjson.loads(metadata)
    except orjson.JSONDecodeError:  # NaN or Infinity, which json.dumps writes and orjson refuses
        meta = json.loads(metadata)
    return Memory(str(id_), scope, content, score, meta, created_at)


def _date(created_at: Any, now: float) -> float:
    """A memory's date as the store keeps it: a Unix time before the year 10000 (as a float, so that the index
    reads the date the table holds), else `now`."""
    try:
        at = float(created_at)
    except (TypeError, ValueError, OverflowError):
        return now
    return at if 0 < at < LAST_DATE else now


def _recalled(content: str, tool: Any, created_at: float, key: Any) -> str:
    """A memory as recall gives it (CONTENTS' row): with its prompt's key, if it is a stored turn."""
    text = recalled(content, tool, created_at)
    return Keyed(text, (key,)) if isinstance(key, str) and key else text


class LocalStore(MemoryStore):
    """Memories in a local SQLite file; all database work runs in one dedicated thread."""

    name = "local"
    late_is_failure = False  # a late answer means a busy worker thread, not a failing store (see recall.Recall)

    def __init__(self, path: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time,
                 read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else config.store_path()
        self.clock = clock  # a new memory's date
        self.read_only = read_only  # reads only (dry runs): the file is neither created, nor migrated, nor written
        self._worker = Worker("memproxy-store")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        # Worker thread only: the scopes' index tables; scope -> memories it holds, and (table, term) ->
        # memories holding it (both capped at DF_BUDGET + 1), forgotten every DF_TTL seconds; and the memories
        # added to each table since its segments were last merged.
        self._indexes = Indexes()
        self._sizes: dict[str, int] = {}
        self._conversing: dict[str, bool] = {}  # scope -> whether it holds turns of a conversation
        self._df: dict[tuple[str, str], int] = {}
        self._df_expiry = 0.0
        self._unmerged: Counter[str] = Counter()
        self._empty: dict[str, float] = {}  # scope -> monotonic time until which it is taken to be empty
        # Scope -> its Order, None if it is not kept (too large, or no room left). This store's writes extend it, or
        # drop it when it cannot follow them; all are dropped when another connection wrote to the file
        # (`data_version`), when a write was rolled back, or when DF_TTL ends.
        self._orders: dict[str, Order | None] = {}
        self._ordered = 0  # memories in self._orders
        self._data_version: int | None = None
        self._elsewhere = False  # another connection wrote to the file since `changed_elsewhere` last said

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
        return await self._run(self._add, scope, content, custom_id, metadata_json, self.clock())

    async def add_many(self, memories: Iterable[Memory]) -> int:
        """Store many memories in one transaction (imports, benchmarks): each keeps its metadata and
        created_at (0, or no date before the year 10000, means now), and its id is its custom id (empty means
        none). Returns how many were new."""
        return await self._run(self._add_many, list(memories), self.clock())

    async def list(self, scope: str, limit: int = 100, offset: int = 0) -> list[Memory]:
        return await self._run(lambda db: [_memory(r) for r in db.execute(LIST, (scope, limit, offset))])

    async def forget(self, scope: str, memory_id: str) -> bool:
        return await self._run(self._forget, scope, memory_id)

    async def rewrite(self, memory: Memory, content: str, metadata: dict[str, Any] | None = None) -> bool:
        metadata_json = None if metadata is None else json.dumps(metadata, ensure_ascii=False)
        return await self._run(self._rewrite, memory, content, metadata_json)

    async def every(self, scopes: Sequence[str] | None = None, page: int = 500) -> AsyncIterator[Memory]:
        """Every memory of `scopes` (of the whole store if None), oldest first."""
        after = 0
        while rows := await self._run(self._page, None if scopes is None else list(scopes), after, page):
            for row in rows:
                yield _memory(row)
            after = rows[-1][0]

    async def changed_elsewhere(self) -> bool:
        """Whether another connection wrote to the file since the last call (`PRAGMA data_version`)."""
        return await self._run(self._changed_elsewhere)

    def _changed_elsewhere(self, db: sqlite3.Connection) -> bool:
        changed, self._elsewhere = self._elsewhere, False
        return changed

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
            self._follow(self._db)
            return fn(self._db, *args)
        except BaseException as e:
            # What a rolled-back transaction told the caches is not so: a table it made, the turns it added to Orders.
            self._indexes.reset()
            self._unorder(None)
            if isinstance(e, (sqlite3.Error, UnicodeError)):  # UnicodeError: lone surrogates in the text
                raise StoreError(f"local store at {self.path}: {type(e).__name__}: {e}") from e
            raise

    def _follow(self, db: sqlite3.Connection) -> None:
        """Forget what this store knows of the file when another connection wrote to it (`data_version`): its Orders,
        scope sizes and table names. A file that connection migrated to a newer schema is refused from then on."""
        if (version := db.execute("PRAGMA data_version").fetchone()[0]) == self._data_version:
            return
        if self._data_version is not None:
            self._elsewhere = True
            self._unorder(None)
            self._conversing.clear()
            self._sizes.clear()
            self._df.clear()
            self._indexes.reset()
            if (schema := db.execute("PRAGMA user_version").fetchone()[0]) != SCHEMA_VERSION:
                raise StoreError(f"the memory store at {self.path} was changed to schema {schema} by another"
                                 f" memproxy; this one writes schema {SCHEMA_VERSION}: restart it")
        self._data_version = version

    def _begin(self, db: sqlite3.Connection) -> None:
        """Begin a write transaction, then look again at what another connection wrote before it took the lock
        (`_follow`): one that migrated the file to a newer schema meanwhile refuses the write."""
        db.execute("BEGIN IMMEDIATE")
        self._follow(db)

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        try:
            # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the database's mode.
            path = private.private_path(self.path, create=not self.read_only, make_dirs=not self.read_only,
                                        companions=private.SQLITE_COMPANIONS)
            if self.read_only and not path.exists():  # no store yet: read as an empty one, and none is made
                db = sqlite3.connect(":memory:", isolation_level=None)
                self._migrate(db)
                return db
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, cached_statements=STATEMENTS)
            if self.read_only:  # SQLite refuses every change; closing still empties the WAL, as a writer's would
                db.execute("PRAGMA query_only = ON")
            if refused := self._refused(db):  # before anything is written to it
                db.close()
                raise StoreError(refused)
            if self.read_only:
                return db
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                self._migrate(db)
        except (OSError, sqlite3.Error) as e:
            if db is not None:
                db.close()
            raise StoreError(f"cannot open the memory store at {self.path}: {e}") from e
        return db

    def _refused(self, db: sqlite3.Connection) -> str | None:
        """Why the file cannot be this store's, or None: another application's database (its application_id, or
        tables without the memories table: the outbox, say), or a newer schema."""
        application = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if application not in (0, APPLICATION_ID) or (tables and "memories" not in tables):
            return f"{self.path} is not a memproxy memory store (another application's database?): nothing was changed"
        if version > SCHEMA_VERSION:
            return f"the memory store at {self.path} has schema {version}, newer than {SCHEMA_VERSION}"
        return None

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring a store of an earlier schema (or a new file) to this one, in one transaction: the memories stay
        as they are, and every index is rebuilt."""
        with db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:  # another process may have won
                for statement in filter(str.strip, SCHEMA.split(";")):
                    db.execute(statement)
                self._indexes.rebuild(db)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _search(self, db: sqlite3.Connection, scope: str, query: str, limit: int, threshold: float) -> list[Memory]:
        return [_memory(tuple(row), score) for *row, score in self._ranked(db, COLUMNS, scope, query, limit, threshold)]

    def _contents(self, db: sqlite3.Connection, scope: str, query: str, limit: int, threshold: float) -> tuple[str, ...]:
        found = tuple(_recalled(*row) for *row, _ in self._ranked(db, CONTENTS, scope, query, limit, threshold))
        if not found and db.execute("SELECT 1 FROM memories WHERE scope = ? LIMIT 1", (scope,)).fetchone() is None:
            if len(self._empty) >= MAX_EMPTY:
                self._empty.clear()
            self._empty[scope] = time.monotonic() + EMPTY_TTL
        return found

    def _ranked(self, db: sqlite3.Connection, columns: str, scope: str, query: str, limit: int, threshold: float) -> list[tuple[Any, ...]]:
        """`columns` of the memories of `scope` for `query`, best first, each row ending in its score in [0, 1):
        BM25 in the scope's index, then context propagation (memory.ranking)."""
        table = self._indexes.table(db, scope) if limit > 0 else None
        terms = self._terms(db, query) if table is not None else []
        terms = self._affordable(db, scope, table, terms) if table is not None and terms else []
        if not terms:
            return []
        if threshold > 0 and db.execute(WEIGHED, (scope, WEIGHED_FROM)).fetchone()[0] < WEIGHED_FROM:
            threshold = 0.0  # too few memories for bm25() to weigh words by: any that matches is relevant
        if not self._converses(db, scope):  # BM25 alone, memories read in the same statement
            found = []
            for *row, rank in db.execute(self._indexes.search_sql(table, columns), (match(terms), limit, scope)):
                if (score := -rank / (1 - rank)) < threshold:  # x / (1 + x) for x = -bm25
                    break
                found.append((*row, score))
            return found
        rows = db.execute(self._indexes.rank_sql(table), (match(terms), max(limit, CANDIDATES)))
        scores = {id_: -rank for id_, rank in rows}
        if not scores:
            return []
        order = propagate(scores, self._context(db, scope, list(scores)))
        ranked = []
        for id_, x in order[:limit]:
            score = x / (1 + x)  # in [0, 1), in the order of x
            if score < threshold:
                break
            ranked.append((id_, score))
        if not ranked:
            return []
        sql = READ.format(columns=columns, ids=", ".join("?" * len(ranked)))
        rows = {id_: row for id_, *row in db.execute(sql, (*(i for i, _ in ranked), scope))}
        return [(*rows[id_], score) for id_, score in ranked if id_ in rows]

    def _context(self, db: sqlite3.Connection, scope: str, ids: list[int]) -> Context:
        """The Context of candidates `ids` of `scope`: from its Order, read once and kept; for a scope not kept
        (too large, or no room left), with NEIGHBOURS_SQL."""
        if scope in self._orders:
            order = self._orders[scope]
        else:
            if len(self._orders) >= MAX_ORDERS:
                self._unorder(None)
            room = min(ORDERED_SCOPE, ORDERED - self._ordered)
            order = Order(db.execute(ORDER_SQL, (scope, room + 1)))
            order = self._orders[scope] = order if order.size <= room else None
            self._ordered += 0 if order is None else order.size
        if order is not None:
            return order.context(ids, NEIGHBOURS_OF)
        found = {"scope": scope, "ids": json.dumps(ids), "near": NEIGHBOURS_OF, "gap": NEIGHBOUR_GAP}
        return context(db.execute(NEIGHBOURS_SQL, found))

    def _unorder(self, scope: str | None) -> None:
        """Drop the Order of `scope` (a write it cannot follow), or every Order (None). A scope not kept stays so
        until every Order is dropped."""
        if scope is None:
            self._orders.clear()
            self._ordered = 0
        elif self._orders.get(scope) is not None:
            self._ordered -= self._orders.pop(scope).size

    def _converses(self, db: sqlite3.Connection, scope: str) -> bool:
        """Whether `scope` holds turns that name their conversation, whose neighbours propagation looks up (other
        memories have none); known until DF_TTL ends, or this store adds such a turn."""
        if (known := self._conversing.get(scope)) is None:
            known = self._conversing[scope] = db.execute(CONVERSING, (scope,)).fetchone() is not None
        return known

    def _terms(self, db: sqlite3.Connection, query: str) -> list[str]:
        """The terms searched for `query`: its words, the months and years it names, the month and year of each
        time it names relative to now, and the tools it names."""
        terms = query_terms(query)
        now, offset = self.clock(), self._indexes.offset(db)
        more = [*named_dates(query), *relative_dates(query, now, offset), *self._indexes.tools.named(db, query)]
        return list(dict.fromkeys((*terms, *more))) if more else terms

    def _affordable(self, db: sqlite3.Connection, scope: str, table: str, terms: list[str]) -> list[str]:
        """The rarest of `terms` whose document frequencies fit DF_BUDGET; at least one.

        Only a scope holding more than DF_BUDGET memories can exceed it, so only those are counted.
        """
        if time.monotonic() > self._df_expiry:
            self._sizes.clear()
            self._conversing.clear()
            self._unorder(None)
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
        df = DF.format(table, table)
        for term in terms:
            if (table, term) not in self._df:
                self._df[table, term] = db.execute(df, (match([term]), DF_BUDGET + 1)).fetchone()[0]
        kept: list[str] = []
        total = 0
        for term in sorted(terms, key=lambda t: self._df[table, t]):
            total += self._df[table, term]
            if kept and total > DF_BUDGET:
                break
            kept.append(term)
        return kept

    def _insert(self, db: sqlite3.Connection, scope: str, content: str, custom_id: str | None, metadata: str, at: float) -> int | None:
        """Insert a memory and index it, in the caller's transaction; None if (scope, custom_id) exists."""
        row = db.execute(INSERT, (scope, custom_id, content, metadata, at)).fetchone()
        if row is None:
            return None
        self._indexes.add(db, scope, row[0], content, at, metadata)
        self._conversed(scope, metadata)
        order = self._orders.get(scope)
        if order is not None:
            if order.size < ORDERED_SCOPE and self._ordered < ORDERED and order.add(row[0], row[1], at):
                self._ordered += 1
            else:
                self._unorder(scope)
        return row[0]

    def _add(self, db: sqlite3.Connection, scope: str, content: str, custom_id: str | None, metadata: str, now: float) -> str:
        """Add a memory; or update the one with its custom id, or a near-duplicate of it (see `_near_duplicate`)."""
        self._empty.pop(scope, None)
        with db:
            self._begin(db)
            old = None if custom_id is None else db.execute(
                "SELECT id, content, metadata, created_at FROM memories WHERE scope = ? AND custom_id = ?", (scope, custom_id)
            ).fetchone()
            if old is None:
                old = self._near_duplicate(db, scope, content)
            elif old[1] != content and (twin := self._near_duplicate(db, scope, content, besides=old[0])) is not None:
                # A later step of a tool loop (or a retry) that nearly repeats another memory: it goes into that one.
                self._delete(db, scope, old[0])
                old = twin
            if old is None:
                id_ = self._insert(db, scope, content, custom_id, metadata, now)
            else:
                id_ = old[0]
                if (old[1], old[2]) != (content, metadata):  # the same memory again changes nothing, not even its date
                    self._replace(db, scope, old, content, custom_id, metadata, now)
        self._added(db, scope)
        return str(id_)

    def _near_duplicate(self, db: sqlite3.Connection, scope: str, content: str, besides: int | None = None
                        ) -> tuple[Any, ...] | None:
        """The memory of `scope` that `content` nearly repeats (the same answer stored again, a turn retried with
        a word changed), among its best matches, other than the memory `besides`; None if there is none."""
        table = self._indexes.table(db, scope)
        query = near_match(content) if table is not None else ""
        if not query:
            return None
        sql = self._indexes.search_sql(table, "m.id, m.content, m.metadata, m.created_at")
        for *row, _ in db.execute(sql, (query, NEAR_CANDIDATES, scope)):
            if row[0] != besides and near_duplicates(content, row[1]):
                return tuple(row)
        return None

    def _replace(self, db: sqlite3.Connection, scope: str, old: tuple[Any, ...], content: str, custom_id: str | None,
                 metadata: str, now: float) -> None:
        """Give the memory `old` (id, content, metadata, created_at) a new content, metadata and date, and the custom
        id of what replaced it (the turn that may update it again), in the caller's transaction."""
        id_, old_content, old_metadata, old_at = old
        self._indexes.remove(db, scope, id_, old_content, old_at, old_metadata)
        (conversation,) = db.execute(REPLACE, (content, metadata, now, custom_id, id_)).fetchone()
        self._indexes.add(db, scope, id_, content, now, metadata)
        self._conversed(scope, metadata)
        if (order := self._orders.get(scope)) is not None and not order.replace(id_, conversation, now):
            self._unorder(scope)

    def _conversed(self, scope: str, metadata: str) -> None:
        """Note that `scope` now holds a turn of a conversation, if this memory's metadata names one."""
        if '"conversation"' in metadata:
            self._conversing[scope] = True

    def _add_many(self, db: sqlite3.Connection, memories: list[Memory], now: float) -> int:
        for m in memories:
            self._empty.pop(m.scope, None)
        with db:
            self._begin(db)
            added = [
                m.scope for m in memories
                if self._insert(db, m.scope, m.content, m.id or None, json.dumps(m.metadata, ensure_ascii=False), _date(m.created_at, now))
                is not None
            ]
        for scope in set(added):
            self._added(db, scope, added.count(scope))
        return len(added)

    def _added(self, db: sqlite3.Connection, scope: str, n: int = 1) -> None:
        """Count what was added to `scope`'s table; merge its segments once a tenth of its size was added."""
        if (table := self._indexes.table(db, scope)) is None:
            return
        self._unmerged[table] += n
        if self._unmerged[table] >= OPTIMISE_EVERY and self._unmerged[table] * 10 >= db.execute(
            "SELECT count(*) FROM memories WHERE scope = ?", (scope,)
        ).fetchone()[0]:
            self._optimise_table(db, table)

    def _optimise(self, db: sqlite3.Connection) -> None:
        """Merge each scope's segments into one where there are more than MAX_SEGMENTS."""
        for table in self._indexes.tables(db):
            self._optimise_table(db, table)

    def _optimise_table(self, db: sqlite3.Connection, table: str) -> None:
        self._unmerged.pop(table, None)
        if db.execute(f"SELECT count(DISTINCT segid) FROM {table}_idx").fetchone()[0] > MAX_SEGMENTS:
            with db:
                self._begin(db)
                db.execute(f"INSERT INTO {table}({table}) VALUES ('optimize')")

    def _forget(self, db: sqlite3.Connection, scope: str, memory_id: str) -> bool:
        with db:
            self._begin(db)
            return self._delete(db, scope, memory_id)

    def _delete(self, db: sqlite3.Connection, scope: str, memory_id: str | int) -> bool:
        """Delete a memory of `scope` and its index entry, in the caller's transaction. SQLite gives a text id the
        column's integer affinity; an id that is not an integer matches nothing."""
        row = db.execute(
            "DELETE FROM memories WHERE id = ? AND scope = ? RETURNING id, content, created_at, metadata", (memory_id, scope)
        ).fetchone()
        if row is not None:
            self._indexes.remove(db, scope, *row)
            self._unorder(scope)
        return row is not None

    def _rewrite(self, db: sqlite3.Connection, memory: Memory, content: str, metadata: str | None) -> bool:
        """Replace a memory's content (and metadata, if not None) and its index entry (deleted with the text it was
        indexed with), if it still holds what `memory` read: a turn the proxy updated since is left as it is."""
        scope = memory.scope
        with db:
            self._begin(db)
            row = db.execute(
                f"SELECT {COLUMNS} FROM memories AS m WHERE m.id = ? AND m.scope = ?", (memory.id, scope)
            ).fetchone()
            if row is None or (found := _memory(row)).content != memory.content or found.metadata != memory.metadata:
                return False
            id_, _, old_content, old_metadata, created_at = row
            self._indexes.remove(db, scope, id_, old_content, created_at, old_metadata)
            metadata = old_metadata if metadata is None else metadata
            db.execute("UPDATE memories SET content = ?, metadata = ? WHERE id = ?", (content, metadata, id_))
            self._indexes.add(db, scope, id_, content, created_at, metadata)
        if metadata != old_metadata:  # its conversation may have changed
            self._unorder(scope)
            self._conversed(scope, metadata)
        return True

    @staticmethod
    def _page(db: sqlite3.Connection, scopes: list[str] | None, after: int, limit: int) -> list[tuple[Any, ...]]:
        where = "" if scopes is None else f" AND m.scope IN ({', '.join('?' * len(scopes))})"
        sql = f"SELECT {COLUMNS} FROM memories AS m WHERE m.id > ?{where} ORDER BY m.id LIMIT ?"
        return db.execute(sql, (after, *(scopes or ()), limit)).fetchall()

    def _compact(self, db: sqlite3.Connection) -> bool:
        # A contentless index keeps deleted terms in its segments until they are merged; VACUUM then drops
        # the free pages that held old text, and the checkpoint empties the WAL, which held it too.
        with db:
            self._begin(db)
            for table in self._indexes.tables(db):
                db.execute(f"INSERT INTO {table}({table}) VALUES ('optimize')")
        self._unmerged.clear()
        db.execute("VACUUM")
        return db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0

    async def move(self, memory: Memory, scope: str) -> bool:
        return await self._run(self._move, memory.scope, memory.id, scope)

    def _move(self, db: sqlite3.Connection, scope: str, memory_id: str, target: str) -> bool:
        """Give a memory another scope and index it in that scope's table (unindexed with the text it was indexed
        with); if `target` holds its custom id already, it is a duplicate: deleted."""
        with db:
            self._begin(db)
            row = db.execute(
                "SELECT id, custom_id, content, created_at, metadata FROM memories WHERE id = ? AND scope = ?",
                (memory_id, scope),
            ).fetchone()
            if row is None or target == scope:
                return row is not None
            id_, custom_id, content, created_at, metadata = row
            self._empty.pop(target, None)
            self._indexes.remove(db, scope, id_, content, created_at, metadata)
            self._unorder(scope)
            self._unorder(target)
            duplicate = custom_id is not None and db.execute(
                "SELECT 1 FROM memories WHERE scope = ? AND custom_id = ?", (target, custom_id)
            ).fetchone()
            if duplicate:
                db.execute("DELETE FROM memories WHERE id = ?", (id_,))
            else:
                db.execute("UPDATE memories SET scope = ? WHERE id = ?", (target, id_))
                self._conversing.pop(target, None)
                self._indexes.add(db, target, id_, content, created_at, metadata)
        self._sizes.pop(scope, None)
        self._sizes.pop(target, None)
        return True
