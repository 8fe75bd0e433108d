"""Benchmark 3: the local store at scale: search latency, add throughput and file size at 10k, 100k and 1M memories.

Memories are turn-shaped ("User: ...\\nAssistant: ..."), 15 to 110 words drawn from a Zipf vocabulary whose
most frequent words are English function words and common coding words, spread evenly over 100 scopes, in
conversations of 20 turns.
Queries are 6 to 10 words from the same distribution, each in a random scope. Searches and adds go through
LocalStore, as recall and the outbox call it. Each database is built once and kept under bench/out, keyed by a
hash of local.py (which holds SCHEMA_VERSION) and of the corpus code, so a store change rebuilds it.
Run alone: `.venv/bin/python bench/store.py` prints the report's section 3 (BENCH_STORE_SIZES=10000,100000
for a quick look).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import os
import random
import shutil
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

from harness import OUT, REPS, words
from memproxy.memory import index, local
from memproxy.memory.local import LocalStore

SIZES = tuple(int(n) for n in os.environ.get("BENCH_STORE_SIZES", "10000,100000,1000000").split(","))
SCOPES = 100
SEARCHES = 1000  # per size per repetition
WARM = 200  # searches per size before the first repetition
ADDS = 500  # per size per repetition
SESSION = 200  # per size per repetition: turns added to one scope, each followed by a search there
TARGET_MS, TARGET_SIZE = 1.0, 100_000  # search p50 at 100k
CONVERSATION = 20  # turns of one conversation in a scope
COMMON = """the of and to a in is it you that for was on are with as be this have from or by not but at an
they we can all if will there one so do file code test function error use run change build value""".split()


class Corpus:
    """Deterministic text: Zipf-distributed words, the COMMON ones ranked first."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.words = COMMON + words(random.Random(3), 30_000)
        self.cum = list(itertools.accumulate(1 / (rank + 2.7) for rank in range(len(self.words))))

    def text(self, low: int, high: int) -> str:
        return " ".join(self.rng.choices(self.words, cum_weights=self.cum, k=self.rng.randint(low, high)))

    def memory(self) -> str:
        return f"User: {self.text(5, 30)}\nAssistant: {self.text(10, 80)}"

    def scope(self) -> str:
        return f"bench-{self.rng.randrange(SCOPES):02d}"


def turns(size: int) -> Iterator[tuple[str, str]]:
    """`size` memories as (scope, content), round-robin over the scopes."""
    corpus = Corpus(seed=size)
    return ((f"bench-{i % SCOPES:02d}", corpus.memory()) for i in range(size))


def database(name: str, rows: Callable[[], Iterable[tuple[str, str]]], *inputs: object) -> tuple[Path, float]:
    """bench/out/NAME-KEY.db holding `rows()`, built if missing: (path, seconds spent building, 0 if cached).

    KEY hashes local.py (and so SCHEMA_VERSION) and index.py (what the index holds), the builder and `inputs`, what makes the rows (the source
    of functions and classes, the repr of values): a change to any of them builds a new file, replacing the old.
    """
    parts = [str(local.SCHEMA_VERSION), inspect.getsource(build), inspect.getsource(_turns)]
    parts += [inspect.getsource(x) if callable(x) else repr(x) for x in inputs]
    code = b"".join(Path(module.__file__).read_bytes() for module in (local, index))
    key = hashlib.sha256("\0".join(parts).encode() + code).hexdigest()[:16]
    path = OUT / f"{name}-{key}.db"
    if path.exists():
        return path, 0.0
    for stale in OUT.glob(f"{name}-*"):
        stale.unlink()
    started = time.perf_counter()
    partial = path.with_suffix(".partial")
    build(partial, rows())
    partial.rename(path)
    return path, time.perf_counter() - started


def build(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    """Rows straight into the store's `memories` table in one transaction, then the store runs its schema
    again (user_version 0), which indexes every row with the store's own code. Checked through LocalStore.

    Each scope's rows are turns of conversations, as memproxy stores them: CONVERSATION consecutive turns
    each, a minute apart, so that searches rank with context propagation (memory.ranking)."""
    asyncio.run(_with_store(path, lambda store: store.open()))  # the store creates its schema
    with contextlib.closing(sqlite3.connect(path)) as con:
        with con:
            insert = "INSERT INTO memories(scope, content, metadata, created_at) VALUES (?, ?, ?, ?)"
            con.executemany(insert, _turns(rows))
        con.execute("PRAGMA user_version = 0")
        size, (scope, last) = (
            con.execute("SELECT count(*) FROM memories").fetchone()[0],
            con.execute("SELECT scope, content FROM memories ORDER BY id DESC LIMIT 1").fetchone(),
        )

    async def check(store: LocalStore) -> None:
        count, found = await store.count(), await store.search(scope, last, 5, 0.0)
        if count != size or not found:
            raise RuntimeError(f"bulk build of {path}: {count} memories, {len(found)} found for a stored text")

    asyncio.run(_with_store(path, check))


def _turns(rows: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str, str, float]]:
    """(scope, content) rows as (scope, content, metadata, created_at): the scope's n-th row is turn
    n % CONVERSATION of its conversation n // CONVERSATION, n minutes after the first, with its prompt's key."""
    seen: Counter[str] = Counter()
    for scope, content in rows:
        n = seen[scope]
        seen[scope] += 1
        key = hashlib.blake2b(f"{scope}\0{n}".encode(), digest_size=16).hexdigest()
        yield scope, content, f'{{"conversation": "c{n // CONVERSATION}", "prompt_key": "{key}"}}', 1.7e9 + 60 * n


async def _with_store(path: Path, fn: Callable[[LocalStore], Awaitable[None]]) -> None:
    store = LocalStore(path)
    try:
        await fn(store)
    finally:
        await store.close()


async def measure(paths: dict[int, Path], copies: dict[int, Path], reps: int) -> dict[int, dict]:
    """Per size and repetition (sizes rotated): search times and hits for the same queries in the kept
    database, and adds/s into its copy (so that the kept one stays as built)."""
    queries = Corpus(seed=7)
    batches = [[(queries.scope(), queries.text(6, 10)) for _ in range(SEARCHES)] for _ in range(reps)]
    warm = [(queries.scope(), queries.text(6, 10)) for _ in range(WARM)]
    stores = {size: LocalStore(path) for size, path in paths.items()}
    writers = {size: LocalStore(path) for size, path in copies.items()}
    runs: dict[int, dict] = {
        size: {"p50_ms": [], "p99_ms": [], "hits": [], "adds_per_s": [], "session_p50_ms": []} for size in paths
    }
    try:
        for store in stores.values():  # page cache and the store's cached counts
            for scope, query in warm:
                await store.search(scope, query, 5, 0.0)
        order = list(stores)
        for rep, batch in enumerate(batches):
            for size in order[rep % len(order) :] + order[: rep % len(order)]:
                store, run = stores[size], runs[size]
                times, hits = [], 0
                for scope, query in batch:
                    started = time.perf_counter()
                    hits += bool(await store.search(scope, query, 5, 0.0))
                    times.append(time.perf_counter() - started)
                cuts = statistics.quantiles(times, n=100)
                run["p50_ms"].append(cuts[49] * 1000)
                run["p99_ms"].append(cuts[98] * 1000)
                run["hits"].append(hits / len(batch))
                run["adds_per_s"].append(await adds(writers[size], rep))
                run["session_p50_ms"].append(await session(writers[size], rep))
    finally:
        for store in [*stores.values(), *writers.values()]:
            await store.close()
    return runs


async def adds(store: LocalStore, rep: int) -> float:
    """Memories per second through LocalStore.add, one at a time with a fresh custom id, as the outbox sends them."""
    corpus = Corpus(seed=rep)
    batch = [(corpus.scope(), corpus.memory()) for _ in range(ADDS)]
    started = time.perf_counter()
    for i, (scope, text) in enumerate(batch):
        await store.add(scope, text, f"bench-{rep}-{i}")
    return ADDS / (time.perf_counter() - started)


async def session(store: LocalStore, rep: int) -> float:
    """Search p50 in ms while a session goes on: SESSION turns of one conversation added to one scope, each
    followed by a search there, as a prompt's recall follows the store of the turn before it."""
    corpus = Corpus(seed=100 + rep)
    scope, conversation = corpus.scope(), {"conversation": f"bench-session-{rep}"}
    await store.search(scope, corpus.text(6, 10), 5, 0.0)
    times = []
    for i in range(SESSION):
        await store.add(scope, corpus.memory(), f"bench-session-{rep}-{i}", conversation)
        query = corpus.text(6, 10)
        started = time.perf_counter()
        await store.search(scope, query, 5, 0.0)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def run() -> dict:
    paths, built = {}, {}
    for size in SIZES:
        paths[size], built[size] = database(f"store-{size}", lambda: turns(size), Corpus, turns, COMMON, SCOPES)
        print(f"store {size}: {paths[size].name}" + (f", built in {built[size]:.0f} s" if built[size] else ""), flush=True)
    copies = {size: OUT / f"scratch-{size}.db" for size in SIZES}
    try:
        for size in SIZES:
            shutil.copyfile(paths[size], copies[size])
        os.sync()  # no writeback of the copies during the searches
        runs = asyncio.run(measure(paths, copies, REPS))
    finally:
        for f in OUT.glob("scratch-*"):
            f.unlink()
    return {
        str(size): {
            **{k: statistics.median(v) for k, v in runs[size].items()},
            "file_bytes": sum(f.stat().st_size for f in paths[size].parent.glob(paths[size].name + "*")),
            "built_s": built[size],
            "repetitions": len(runs[size]["p50_ms"]),
        }
        for size in SIZES
    }


def section(results: dict) -> list[str]:
    """The report's section 3."""
    base_size = min(results, key=int)
    base = results[base_size]
    lines = [
        "## 3. Store at scale",
        "",
        f"LocalStore (SQLite FTS5) in-process. Memories: turn-shaped text of 15–110 words (Zipf vocabulary) in "
        f"{SCOPES} equal scopes, in conversations of {CONVERSATION} turns (so searches rank with context "
        f"propagation). Per size and repetition, sizes rotated: {SEARCHES} searches (6–10-word queries, random "
        f"scope, limit 5, after {WARM} warm-up searches), {ADDS} adds one at a time, and a session: {SESSION} turns "
        f"added to one scope, each followed by a search there (both into a copy); medians of {base['repetitions']}. "
        f"Ratios are to the {int(base_size):,}-memory store of the same run.",
        "",
        "| memories | file MB | bytes/memory | search p50 ms | × base | p99 ms | × base | searches with a hit "
        "| adds/s | × base | search after an add, p50 ms | target | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, r in sorted(results.items(), key=lambda kv: int(kv[0])):
        target = result = ""
        if int(size) == TARGET_SIZE:
            target, result = f"p50 ≤ {TARGET_MS:g} ms", "PASS" if r["p50_ms"] <= TARGET_MS else "FAIL"
        lines.append(
            f"| {int(size):,} | {r['file_bytes'] / 1e6:.1f} | {r['file_bytes'] / int(size):.0f} | {r['p50_ms']:.2f} "
            f"| {r['p50_ms'] / base['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p99_ms'] / base['p99_ms']:.2f} "
            f"| {r['hits'] * 100:.0f} % | {r['adds_per_s']:.0f} | {r['adds_per_s'] / base['adds_per_s']:.2f} "
            f"| {r['session_p50_ms']:.2f} | {target} | {result} |"
        )
    return [*lines, ""]


if __name__ == "__main__":
    print("\n".join(section(run())))
