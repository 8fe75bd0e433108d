"""The embedded store: one SQLite file with an FTS5 (BM25) index, owned by one worker thread."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from .base import Memory, MemoryStore, StoreError

T = TypeVar("T")

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 5.0  # seconds to wait for another process's write lock
MAX_TERMS = 24
# bm25() counts every memory holding each query term, so a common term costs the most and ranks the
# least: a search keeps its rarest terms up to this many counted memories (~50 ns each).
DF_BUDGET = 10_000
DF_TTL = 600.0  # seconds a term's cached document frequency is trusted

# External content: the index reads `memories` through a view that adds each row's scope token,
# so 'rebuild' and 'integrity-check' work and the triggers need no application function.
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
CREATE VIEW IF NOT EXISTS memories_fts_source AS
    SELECT id, content, 's' || hex(scope) AS scopetok FROM memories;
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(
    content, scopetok, content='memories_fts_source', content_rowid='id', tokenize='porter unicode61'
);
INSERT INTO memories_fts(memories_fts, rank) VALUES('rank', 'bm25(1.0, 0.0)');
CREATE TRIGGER IF NOT EXISTS memories_ai AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts(rowid, content, scopetok) VALUES (new.id, new.content, 's' || hex(new.scope));
END;
CREATE TRIGGER IF NOT EXISTS memories_ad AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts(memories_fts, rowid, content, scopetok)
        VALUES ('delete', old.id, old.content, 's' || hex(old.scope));
END;
CREATE TRIGGER IF NOT EXISTS memories_au AFTER UPDATE OF content, scope ON memories BEGIN
    INSERT INTO memories_fts(memories_fts, rowid, content, scopetok)
        VALUES ('delete', old.id, old.content, 's' || hex(old.scope));
    INSERT INTO memories_fts(rowid, content, scopetok) VALUES (new.id, new.content, 's' || hex(new.scope));
END;
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

COLUMNS = "m.id, m.scope, m.content, m.metadata, m.created_at"
# CROSS JOIN keeps the FTS index as the outer loop: rows come from the scope's doclist only.
SEARCH = f"""
SELECT {COLUMNS}, memories_fts.rank FROM memories_fts CROSS JOIN memories AS m ON m.id = memories_fts.rowid
WHERE memories_fts MATCH ? AND m.scope = ? ORDER BY memories_fts.rank LIMIT ?
"""
DF = "SELECT count(*) FROM (SELECT 1 FROM memories_fts WHERE memories_fts MATCH ? LIMIT ?)"
LIST = f"SELECT {COLUMNS} FROM memories AS m WHERE m.scope = ? ORDER BY m.created_at DESC, m.id DESC LIMIT ? OFFSET ?"

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


def query_terms(text: str) -> list[str]:
    """The distinct, meaningful words of `text`: no stopwords or 1-char words, the longest MAX_TERMS."""
    words = dict.fromkeys(w for w in WORD.findall(text.lower()) if len(w) > 1 and w not in STOPWORDS)
    return sorted(words, key=len, reverse=True)[:MAX_TERMS]


def scope_token(scope: str) -> str:
    """The indexed token of `scope`, as the schema's `'s' || hex(scope)` writes it."""
    return "s" + scope.encode().hex()


def _memory(row: tuple[Any, ...], score: float = 0.0) -> Memory:
    id_, scope, content, metadata, created_at = row
    return Memory(str(id_), scope, content, score, json.loads(metadata), created_at)


class LocalStore(MemoryStore):
    """Memories in a local SQLite file; all database work runs in one dedicated thread."""

    name = "local"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else Path(platformdirs.user_data_dir("memproxy")) / "memories.db"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memproxy-store")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._df: dict[str, int] = {}  # term -> memories holding it, capped at DF_BUDGET + 1; worker thread only
        self._df_expiry = 0.0

    async def open(self) -> None:
        """Open the database now, so that an unusable path is reported at start-up."""
        await self._run(lambda db: None)

    async def search(self, scope: str, query: str, limit: int = 5, threshold: float = 0.0) -> list[Memory]:
        return await self._run(self._search, scope, query, limit, threshold)

    async def add(
        self, scope: str, content: str, custom_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> str:
        try:
            metadata_json = json.dumps(metadata or {}, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise StoreError(f"metadata is not JSON-serialisable: {type(e).__name__}") from e
        return await self._run(self._add, scope, content, custom_id, metadata_json, time.time())

    async def list(self, scope: str, limit: int = 100, offset: int = 0) -> list[Memory]:
        return await self._run(lambda db: [_memory(r) for r in db.execute(LIST, (scope, limit, offset))])

    async def forget(self, scope: str, memory_id: str) -> bool:
        # SQLite gives the text id the column's integer affinity; an id that is not an integer matches nothing.
        return await self._run(
            lambda db: db.execute("DELETE FROM memories WHERE id = ? AND scope = ?", (memory_id, scope)).rowcount > 0
        )

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
            await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        finally:
            self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError("the local store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, *args)

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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
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
        terms = self._affordable(db, query_terms(query)) if limit > 0 else []
        if not terms:
            return []
        match = f'scopetok:"{scope_token(scope)}" AND content:({" OR ".join(f'"{t}"' for t in terms)})'
        found = []
        for *row, rank in db.execute(SEARCH, (match, scope, limit)):
            score = -rank / (1 - rank)  # x / (1 + x) for x = -bm25: monotonic, in [0, 1)
            if score < threshold:
                break
            found.append(_memory(tuple(row), score))
        return found

    def _affordable(self, db: sqlite3.Connection, terms: list[str]) -> list[str]:
        """The rarest of `terms` whose document frequencies fit DF_BUDGET; at least one."""
        if time.monotonic() > self._df_expiry:
            self._df.clear()
            self._df_expiry = time.monotonic() + DF_TTL
        for term in terms:
            if term not in self._df:
                self._df[term] = db.execute(DF, (f'content:"{term}"', DF_BUDGET + 1)).fetchone()[0]
        kept: list[str] = []
        total = 0
        for term in sorted(terms, key=self._df.__getitem__):
            total += self._df[term]
            if kept and total > DF_BUDGET:
                break
            kept.append(term)
        return kept

    @staticmethod
    def _add(db: sqlite3.Connection, scope: str, content: str, custom_id: str | None, metadata: str, now: float) -> str:
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "INSERT INTO memories(scope, custom_id, content, metadata, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(scope, custom_id) DO NOTHING RETURNING id",
                (scope, custom_id, content, metadata, now),
            ).fetchone()
            if row is None:
                row = db.execute(
                    "SELECT id FROM memories WHERE scope = ? AND custom_id = ?", (scope, custom_id)
                ).fetchone()
        return str(row[0])
