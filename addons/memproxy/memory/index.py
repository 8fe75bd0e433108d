"""The local store's search index: one contentless FTS5 table per scope, BM25 over what that scope holds.

A scope's table gives bm25() its own statistics (memory count, average length, how many memories hold each
word), so a scope's ranking depends on its memories alone and says nothing of other scopes. Every table
tokenises the same way (`porter unicode61` over `words`), so a word stems alike in every scope; a script written
without spaces is indexed as pairs of characters (`words`). A memory is
indexed as its words, the words of the files its trace names (metadata `calls`: "Edit src/app.py", the steps of
the tool loop that answered its prompt, which are never injected), its date's month and year and the tool that
wrote it (metadata `tool`), as terms no text holds ("monthnovember year2026 toolcodex": `date_words`,
`tool_term`), so that a query naming a file the loop touched, a month (`named_dates`) or a tool (`Tools`) finds
it, and the word "may", the number 2026 or the word "code" in a prompt does not. A date is read in the store's
time zone: the local one's standard offset from UTC when the index was built (table `settings`, `utc_offset`),
the same in every process and after the machine's zone changes.

The tables are named by the `scope_indexes` table (`memories_fts_<id>`). The index is contentless: removing
a memory repeats the exact text it was indexed with, so `index_text` must stay deterministic (a change needs
a SCHEMA_VERSION bump, which rebuilds the index).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import unicodedata
from collections.abc import Iterable

MAX_TERMS = 24
MAX_TOOL = 40  # characters of a tool's label kept, as a recalled note shows it
MAX_TOOLS = 64  # tool labels a query is compared with, the first recorded (an imported store may name any)
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
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
NEAR_CANDIDATES = 3  # memories of the scope compared with a new one: its best matches
NEAR_TERMS = 8  # words of a new memory that find them (a near-duplicate holds nearly all of its words)

TABLE = "memories_fts_{}"
CREATE = "CREATE VIRTUAL TABLE IF NOT EXISTS {} USING fts5(terms, content='', tokenize='porter unicode61')"
# The best memories of a scope's table, (id, bm25), best (lowest) first: bm25(), not the `rank` column, which
# costs FTS5 a nested statement per search.
RANK = "SELECT rowid AS id, bm25({table}) AS score FROM {table} WHERE {table} MATCH ? ORDER BY score LIMIT ?"
# RANK and the memories' `columns` in one statement, best first, each row ending in its bm25: `+m.scope` keeps SQLite
# from scanning the scope's index instead of reading the few ids, and guards the scope.
SEARCH = (
    "SELECT {columns}, best.score FROM (" + RANK + ") AS best CROSS JOIN memories AS m ON m.id = best.id"
    " WHERE +m.scope = ? ORDER BY best.score"
)


# Scripts written without spaces between words (Chinese, Japanese kana, Thai, Lao, Khmer, Myanmar), whose runs are
# no words: a run is indexed as its overlapping pairs of characters, as CJK search does without a dictionary
# ("数据库迁移": 数据 据库 库迁 迁移), and a query the same, so that a few characters of a run find it.
_UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
UNSPACED = re.compile(f"[{_UNSPACED}]")
TOKEN = re.compile(rf"[{_UNSPACED}]+|[^\W_{_UNSPACED}]+")  # a run of an unspaced script, or a WORD of others


def words(text: str) -> list[str]:
    """The meaningful words of `text`, in order: lower case, no stopwords or 1-char words; a run of an unspaced
    script as its pairs of characters (a character alone as itself)."""
    low = text.lower()
    if low.isascii() or not UNSPACED.search(low):
        return [w for w in WORD.findall(low) if len(w) > 1 and w not in STOPWORDS]
    found: list[str] = []
    for run in TOKEN.findall(low):
        if UNSPACED.match(run):
            run = _unmarked(run)  # FTS5's tokenizer parts words at a mark: a pair holding one would be one letter
            found.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
        elif len(run) > 1 and run not in STOPWORDS:
            found.append(run)
    return found


_WITH_MARKS = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3099\u309a]")  # scripts that combine marks


def _unmarked(run: str) -> str:
    """`run` without its combining marks (Thai vowel signs and tone marks, Unicode categories M*)."""
    if not _WITH_MARKS.search(run):
        return run
    return "".join(c for c in run if not unicodedata.category(c).startswith("M")) or run


def tokens(text: str) -> list[str]:
    """Every word of `text`, lower case, in order, as near-duplicates compare texts: a WORD, and each character of
    a run of an unspaced script."""
    low = text.lower()
    if low.isascii() or not UNSPACED.search(low):
        return WORD.findall(low)
    return [t for run in TOKEN.findall(low) for t in (run if UNSPACED.match(run) else (run,))]


def query_terms(text: str) -> list[str]:
    """The distinct meaningful words of `text`, the longest MAX_TERMS; of a text of more, the longest half of them
    from its last paragraph (a pasted log or file, then the question: the question), then the longest of the rest."""
    terms = longest(words(text))
    if len(terms) <= MAX_TERMS or (at := text.rstrip().rfind("\n\n")) < 0:
        return terms[:MAX_TERMS]
    last = longest(words(text[at:]))[: MAX_TERMS // 2]
    return list(dict.fromkeys((*last, *terms)))[:MAX_TERMS]


def longest(found: Iterable[str]) -> list[str]:
    """The distinct words of `found`, longest first (ties in their order)."""
    return sorted(dict.fromkeys(found), key=len, reverse=True)


# A time relative to now, as a query names it; and how far back it spans, in days, calendar months or calendar
# years (its first and its last).
RELATIVE = re.compile(r"\b(today|yesterday|(?:this|last|past|previous)\s+(?:week|month|year))\b", re.I)
BACK = {
    "today": ("day", 0, 0), "yesterday": ("day", 1, 1),
    "this week": ("day", 0, 6), "last week": ("day", 7, 13), "previous week": ("day", 7, 13), "past week": ("day", 0, 7),
    "this month": ("month", 0, 0), "last month": ("month", 1, 1), "previous month": ("month", 1, 1),
    "past month": ("month", 0, 1),
    "this year": ("year", 0, 0), "last year": ("year", 1, 1), "previous year": ("year", 1, 1), "past year": ("year", 0, 1),
}  # fmt: skip

# A month's name or a year that a query names as a date. "may", "march" and "august" are words too: they name a
# month written with a capital inside a sentence, or beside a day, a year or a word of time ("in May", "May 3").
_MONTH = "|".join(MONTHS)
_YEAR = r"(?:1[89]|2[01])\d\d"
_AMBIGUOUS = ("may", "march", "august")
_TIME_WORD = r"in|during|since|before|after|until|by|early|late|mid|of|last|next"
FOUR_DIGITS = re.compile(r"\d{4}")
NAMED_MONTH = re.compile(rf"\b({_MONTH})\b", re.I)
MONTH_AS_DATE = re.compile(
    rf"(?:\b(?:{_TIME_WORD})\s+|\d(?:st|nd|rd|th)?\s+(?:of\s+)?)({_MONTH})\b|\b({_MONTH})\s+(?:\d|the\s+\d)", re.I
)
NAMED_YEAR = re.compile(rf"(?:\b(?:{_TIME_WORD}|year|{_MONTH})\s+|\b(?:{_MONTH})\s+\d\d?(?:st|nd|rd|th)?,?\s+)({_YEAR})\b", re.I)


def named_dates(text: str) -> list[str]:
    """The date terms (`date_words`) of the months and years `text` names as dates: every month's name but an
    ambiguous one used as a word ("may I", "let's march on"), and a year after a month or a word of time ("in
    2023", "May 3, 2023"; not "copyright 2026")."""
    low = text.lower()
    if not any(month in low for month in MONTHS) and not FOUR_DIGITS.search(text):
        return []  # most queries: the regexes below cost tens of µs
    found = []
    for m in NAMED_MONTH.finditer(text):
        name = m.group(1)
        if name.lower() not in _AMBIGUOUS or (name[0].isupper() and not _starts_sentence(text, m.start())):
            found.append(_month_term(name))
    found += [_month_term(a or b) for a, b in MONTH_AS_DATE.findall(text)]
    found += [f"year{y}" for y in NAMED_YEAR.findall(text)]
    return list(dict.fromkeys(found))


def _starts_sentence(text: str, at: int) -> bool:
    before = text[:at].rstrip()
    return not before or before[-1] in ".!?:;\"'(\n"


def _month_term(name: str) -> str:
    return "month" + name.lower()


def relative_dates(text: str, now: float, offset: int = 0) -> list[str]:
    """The date terms (`date_words`: month and year, or the year alone for a year) of each time `text` names
    relative to `now` ("last week": the week before this one; "last month": the calendar month before this one),
    in the zone `offset` seconds east of UTC, so that the index's date terms match them."""
    found: list[str] = []
    try:
        today = time.gmtime(now + offset)
    except (OverflowError, OSError, ValueError):
        return []
    for phrase in RELATIVE.findall(text):
        phrase = " ".join(phrase.lower().split())
        unit, first, last = BACK[phrase]
        for back in (first, last):
            if unit == "day":
                found.extend(date_words(now - back * 86400, offset).split())
            elif unit == "month":
                months = today.tm_year * 12 + today.tm_mon - 1 - back
                found += [_month_term(MONTHS[months % 12]), f"year{months // 12}"]
            else:
                found.append(f"year{today.tm_year - back}")
    return list(dict.fromkeys(found))


def near_match(content: str) -> str:
    """An FTS5 query for the memories that may nearly repeat `content`: those holding all of the first half of
    its NEAR_TERMS longest words, or all of the second half (one changed word misses one half only). Memories
    holding all of a few words are few: cheaper to rank than those holding any."""
    terms = longest(words(content))[:NEAR_TERMS]
    half = (len(terms) + 1) // 2
    return " OR ".join(f"({' AND '.join(map(_quoted, group))})" for group in (terms[:half], terms[half:]) if group)


def _quoted(term: str) -> str:
    return f'"{term}"'


def match(terms: Iterable[str]) -> str:
    """An FTS5 query for any of `terms` (words: no FTS5 syntax can reach it)."""
    return " OR ".join(map(_quoted, terms))


def date_words(created_at: float, offset: int = 0) -> str:
    """The month and year of a Unix time in the zone `offset` seconds east of UTC, as terms no text holds:
    "monthnovember year2026"; "" if it is not a date."""
    try:
        day = time.gmtime(created_at + offset) if created_at > 0 else None
    except (OverflowError, OSError, ValueError):
        day = None
    return f"{_month_term(MONTHS[day.tm_mon - 1])} year{day.tm_year}" if day else ""


def index_text(content: str, created_at: float, metadata: str = "{}", offset: int = 0) -> str:
    """The text the index holds for a memory: its words, the words of its trace's files, then its month and
    year (in the zone `offset` seconds east of UTC), then its tool."""
    files = words(" ".join(traced_files(metadata)))
    return " ".join((*words(content), *files, date_words(created_at, offset), tool_term(tool_of(metadata)))).rstrip()


def standard_offset() -> int:
    """The local time zone's standard offset from UTC, in seconds east of it (daylight saving time left out, so
    that it is one number the whole year)."""
    return -time.timezone


def _metadata(metadata: str, key: str) -> object:
    """Metadata `key` of a memory's metadata (JSON text); None if it has none or the text is not an object."""
    if f'"{key}"' not in metadata:
        return None
    try:
        return json.loads(metadata).get(key)
    except (ValueError, AttributeError, RecursionError):
        return None


def traced_files(metadata: str) -> list[str]:
    """The files a memory's trace names (each step of metadata `calls` after its tool's name), each once."""
    calls = _metadata(metadata, "calls")
    steps = calls if isinstance(calls, list) else ()
    return list(dict.fromkeys(file for step in steps if isinstance(step, str) and (file := step.partition(" ")[2])))


def tool_of(metadata: str) -> str | None:
    """The tool a memory's metadata names (`tool`, as its note shows it), or None."""
    tool = _metadata(metadata, "tool")
    return tool.strip()[:MAX_TOOL] or None if isinstance(tool, str) else None


def tool_term(tool: str | None) -> str:
    """A tool's name as one term no text holds ("Claude Code": "toolclaudecode"); "" for none."""
    name = "".join(WORD.findall(tool.lower())) if tool else ""
    return f"tool{name}" if name else ""


def _label_pattern(label: str) -> str:
    """A regex of `label` as a word or words of its own, any spaces between them: not inside a longer word, but for
    an end in a script written without spaces ("数据库工具说了什么" names 工具)."""
    before = "" if UNSPACED.match(label[0]) else r"(?<!\w)"
    after = "" if UNSPACED.match(label[-1]) else r"(?!\w)"
    return before + r"\s+".join(map(re.escape, label.split())) + after


class Tools:
    """The tools a store's memories name (table `tools`, a label each), and which of them a query names: a label
    written whole, as a word or words of its own ("what did Codex say", "what did claude code change"). A label
    that is one word with a capital first letter alone, as any word may be written, names its tool only with
    that capital, so that "move the cursor" names no tool called Cursor; a label of several words, or with
    capitals inside it (JetBrains), is no ordinary word, and names its tool in any case. Labels once seen stay;
    at most MAX_TOOLS are read."""

    def __init__(self) -> None:
        self._labels: frozenset[str] | None = None  # None: not read yet
        self._pattern: re.Pattern[str] | None = None
        self._firsts: tuple[str, ...] = ()  # each label's first word, in lower case: most queries hold none
        self._recorded: set[str] = set()  # labels this connection knows the table holds

    def reset(self) -> None:
        """Read the labels again at the next query (another connection may have added one, or a rollback undone
        one)."""
        self._labels = self._pattern = None
        self._recorded.clear()

    def add(self, db: sqlite3.Connection, tool: str | None) -> None:
        """Record `tool` as a label, in the caller's transaction."""
        if tool and tool not in self._recorded:
            if db.execute("INSERT OR IGNORE INTO tools(label) VALUES (?)", (tool,)).rowcount:
                self._labels = self._pattern = None  # a new one: read them again
            if len(self._recorded) >= 4 * MAX_TOOLS:
                self._recorded.clear()
            self._recorded.add(tool)

    def named(self, db: sqlite3.Connection, text: str) -> list[str]:
        """The tool terms (`tool_term`) of the labels `text` names."""
        if self._labels is None:
            try:
                rows = db.execute("SELECT label FROM tools ORDER BY rowid LIMIT ?", (MAX_TOOLS,)).fetchall()
            except sqlite3.OperationalError:  # a read-only store of an earlier schema: none known
                rows = []
            self._labels = frozenset(label for (label,) in rows if tool_term(label))
            alternatives = "|".join(map(_label_pattern, sorted(self._labels, key=len, reverse=True)))
            self._pattern = re.compile(alternatives, re.I) if alternatives else None
            self._firsts = tuple({label.split()[0].lower() for label in self._labels})
        if self._pattern is None:
            return []
        low = text.lower()
        if not any(first in low for first in self._firsts):
            return []
        found = (m.group() for m in self._pattern.finditer(text))
        return list(dict.fromkeys(tool_term(name) for name in found if self._written(name)))

    def _written(self, name: str) -> bool:
        """Whether `name`, as the query wrote it, names a label: a capitalised word (`_capitalised`) only with its
        capital."""
        key = " ".join(name.split()).lower()
        return any(" ".join(label.split()).lower() == key and (not _capitalised(label) or name[0].isupper())
                   for label in self._labels or ())


def _capitalised(label: str) -> bool:
    """Whether `label` is one word written as any word may be at the start of a sentence: "Cursor", not
    "Claude Code" or "JetBrains"."""
    return len(label.split()) == 1 and label[0].isupper() and label[1:] == label[1:].lower()


class Indexes:
    """The scopes' tables, for one connection (the store's worker thread): which table holds a scope, made on
    the scope's first memory. A table once made is never dropped but by `rebuild`, so names are cached."""

    def __init__(self) -> None:
        self._tables: dict[str, str] = {}
        self._sql: dict[tuple[str, str], str] = {}
        self._offset: int | None = None
        self.tools = Tools()

    def offset(self, db: sqlite3.Connection) -> int:
        """The store's time zone, in seconds east of UTC, that its index reads dates in: 0 (UTC) in a store of
        an earlier schema, opened read-only."""
        if self._offset is None:
            try:
                row = db.execute("SELECT value FROM settings WHERE key = 'utc_offset'").fetchone()
            except sqlite3.OperationalError as e:  # no such table; anything else (a busy file) is the caller's
                if "no such table" not in str(e):
                    raise
                row = None
            self._offset = row[0] if row is not None and isinstance(row[0], int) and abs(row[0]) <= 86400 else 0
        return self._offset

    def table(self, db: sqlite3.Connection, scope: str, *, create: bool = False) -> str | None:
        """The name of `scope`'s table; None if it has none (it never held a memory) and `create` is False.
        Creating one must happen inside the caller's write transaction."""
        if (name := self._tables.get(scope)) is not None:
            return name
        row = db.execute("SELECT id FROM scope_indexes WHERE scope = ?", (scope,)).fetchone()
        if row is None:
            if not create:
                return None
            row = db.execute("INSERT INTO scope_indexes(scope) VALUES (?) RETURNING id", (scope,)).fetchone()
            db.execute(CREATE.format(TABLE.format(row[0])))
        name = self._tables[scope] = TABLE.format(row[0])
        return name

    def reset(self) -> None:
        """Forget the cached names and tools (after a transaction that may have made a table or recorded a tool was
        rolled back, or another connection's write)."""
        self._tables.clear()
        self._sql.clear()
        self._offset = None
        self.tools.reset()

    def rank_sql(self, table: str) -> str:
        """RANK on `table`."""
        return self._cached(table, "", RANK)

    def search_sql(self, table: str, columns: str) -> str:
        """SEARCH on `table`, reading `columns`."""
        return self._cached(table, columns, SEARCH)

    def _cached(self, table: str, columns: str, template: str) -> str:
        if (sql := self._sql.get((table, columns))) is None:
            if len(self._sql) > 4096:
                self._sql.clear()
            sql = self._sql[table, columns] = template.format(table=table, columns=columns)
        return sql

    def add(self, db: sqlite3.Connection, scope: str, memory_id: int, content: str, created_at: float,
            metadata: str) -> None:
        """Index a memory, in the caller's transaction."""
        table = self.table(db, scope, create=True)
        db.execute(f"INSERT INTO {table}(rowid, terms) VALUES (?, ?)",
                   (memory_id, index_text(content, created_at, metadata, self.offset(db))))
        self.tools.add(db, tool_of(metadata))

    def remove(self, db: sqlite3.Connection, scope: str, memory_id: int, content: str, created_at: float,
               metadata: str) -> None:
        """Unindex a memory, with the content, date and metadata it was indexed with, in the caller's transaction."""
        if (table := self.table(db, scope)) is not None:
            db.execute(f"INSERT INTO {table}({table}, rowid, terms) VALUES ('delete', ?, ?)",
                       (memory_id, index_text(content, created_at, metadata, self.offset(db))))

    @staticmethod
    def tables(db: sqlite3.Connection) -> list[str]:
        """Every scope's table."""
        return [TABLE.format(i) for (i,) in db.execute("SELECT id FROM scope_indexes ORDER BY id")]

    def rebuild(self, db: sqlite3.Connection) -> None:
        """Drop every index (this schema's and earlier ones') and index every memory again, in the caller's
        transaction, and record the tools they name. A scope keeps its table's name: a process still running an
        earlier schema (which keeps the names it read) then writes to its own scope's table, never to another's.
        The store's time zone is the local one's standard offset, once chosen kept (`offset`)."""
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'scope_indexes'").fetchone():
            for table in self.tables(db):
                db.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in (
            "DROP TRIGGER IF EXISTS memories_ai", "DROP TRIGGER IF EXISTS memories_ad", "DROP TRIGGER IF EXISTS memories_au",
            "DROP VIEW IF EXISTS memories_fts_source", "DROP TABLE IF EXISTS memories_fts",
            "CREATE TABLE IF NOT EXISTS scope_indexes(id INTEGER PRIMARY KEY, scope TEXT NOT NULL UNIQUE)",
            "DELETE FROM scope_indexes WHERE scope NOT IN (SELECT scope FROM memories)",
            "CREATE TABLE IF NOT EXISTS tools(label TEXT PRIMARY KEY)",
            "CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value)",
        ):
            db.execute(statement)
        db.execute("INSERT OR IGNORE INTO settings(key, value) VALUES ('utc_offset', ?)", (standard_offset(),))
        self.reset()
        offset = self.offset(db)
        for scope, in db.execute("SELECT DISTINCT scope FROM memories ORDER BY scope").fetchall():
            table = self.table(db, scope, create=True)
            db.execute(CREATE.format(table))  # a scope already named keeps its name: its table was dropped above
            for id_, content, created_at, metadata in db.execute(
                "SELECT id, content, created_at, metadata FROM memories WHERE scope = ?", (scope,)
            ).fetchall():
                db.execute(f"INSERT INTO {table}(rowid, terms) VALUES (?, ?)",
                           (id_, index_text(content, created_at, metadata, offset)))
                self.tools.add(db, tool_of(metadata))

