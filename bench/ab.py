"""`make bench-ab ARGS="REV[:SETUP] [REV[:SETUP] ...]"`: setup (d) of two or more revisions of the addon, side by
side, or two setups of one revision.

A machine's speed drifts within minutes, and drift hits two setups alike only if they run back to back: so
the revisions take turns for BENCH_AB_RUNS runs of BENCH_AB_SECONDS each (30 × 2 s), and the report is the
median of the per-turn ratios to the first revision, with their quartiles, rather than a ratio of medians
as in `make bench` (bench/README.md, "Reading the figures", says how far each repeats). CPU per request is
split by thread (the loop thread and all others, from /proc/<pid>/task), since a change can move work from
one to the other without saving any.

A revision is anything `git archive` takes (HEAD~1, a branch, a commit) or "worktree" for the files as they
are now. Setup c instead of d: BENCH_AB_SETUP=c; or each revision with its own setup of `make bench`'s section 1
(a, a2, b, c, d): `HEAD:a HEAD:d` measures (d)'s ratio to (a), paired by turn, on a machine too noisy for `make
bench`'s medians to settle it. Each revision searches its own copy of the setup's store,
indexed by its own code before the runs (`own_store`): a store's schema may differ between revisions, and an
older revision refuses a newer schema.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

from harness import OUT, ROOT, Load, processes, start_upstream
from run import overhead_loads, prepare

RUNS = int(os.environ.get("BENCH_AB_RUNS", "30"))
SECONDS = int(os.environ.get("BENCH_AB_SECONDS", "2"))
SETUP = os.environ.get("BENCH_AB_SETUP", "d")
CONCURRENCY = 16
SETUPS = {"a": None, "a2": None, "b": "cache", "c": "cache", "d": "fts"}  # each setup's store, if it searches one
TICK = os.sysconf("SC_CLK_TCK")


def checkout(rev: str) -> Path:
    """The revision's `addons/` under bench/out/ab/<rev>/ (the work tree's own for "worktree")."""
    if rev == "worktree":
        return ROOT
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    tree = OUT / "ab" / commit[:12]
    if not (tree / "addons" / "memory.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "addons"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


# Opens a store with the revision's own code (on PYTHONPATH), which rebuilds its index, and closes it.
REINDEX = """
import asyncio, sys
from memproxy.memory.local import LocalStore

async def main():
    store = LocalStore(sys.argv[1])
    await store.open()
    await store.close()

asyncio.run(main())
"""


def own_store(tree: Path, store: Path, tag: str) -> Path:
    """A copy of `store` for the revision in `tree`, its index rebuilt by that revision's store on open (user_version
    0 makes any revision rebuild it), done now so that no run waits for it."""
    copy = OUT / f"{tag}{store.name}"
    if not copy.exists() or copy.stat().st_mtime < store.stat().st_mtime:
        shutil.copy(store, copy)
        with sqlite3.connect(copy) as con:
            con.execute("PRAGMA user_version = 0")
        con.close()
        env = {**os.environ, "PYTHONPATH": str(tree / "addons")}
        subprocess.run([sys.executable, "-c", REINDEX, str(copy)], env=env, check=True)
    return copy


def cpu_by_thread(pid: int) -> tuple[float, float]:
    """Seconds of CPU so far: (the loop thread, every other thread)."""
    loop = others = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended
            continue
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / TICK
        if tid == str(pid):
            loop += seconds
        else:
            others += seconds
    return loop, others


def turn(load: Load) -> tuple[float, float, float]:
    """One run: (req/s, loop thread ms of CPU a request, other threads' ms a request)."""
    assert load.server.process is not None
    pid = load.server.process.pid
    loop0, others0 = cpu_by_thread(pid)
    result = load.run(CONCURRENCY, SECONDS)
    loop1, others1 = cpu_by_thread(pid)
    n = max(1, result["requests"])
    if result["errors"] or result["non2xx"]:
        raise RuntimeError(f"{load.server.name}: {result['errors']} socket errors, {result['non2xx']} non-2xx answers")
    return result["rps"], (loop1 - loop0) * 1000 / n, (others1 - others0) * 1000 / n


def main() -> None:
    revs = sys.argv[1:]
    if len(revs) < 2:
        sys.exit(__doc__)
    files = prepare()
    loads = {}
    for i, arg in enumerate(revs):
        rev, _, setup = arg.partition(":")
        setup = setup or SETUP
        if setup not in SETUPS:
            sys.exit(f"{arg}: no setup {setup!r} (one of {', '.join(SETUPS)})")
        tree = checkout(rev)
        own = dict(files)
        if store := SETUPS[setup]:
            own[store] = own_store(tree, files.get(store, OUT / "cache.db"), f"ab{i}-")
        loads[arg] = overhead_loads(own, str(tree / "addons" / "memory.py"), tag=f"ab{i}-")[setup]
    turns: dict[str, list[tuple[float, float, float]]] = {rev: [] for rev in revs}
    with processes() as started:
        upstream = start_upstream(started)
        for load in loads.values():
            started.append(load.server)
            load.server.start(upstream)
            load.run(CONCURRENCY, 2)  # warm-up
        for r in range(RUNS):
            for rev in revs[r % len(revs):] + revs[: r % len(revs)]:
                turns[rev].append(turn(loads[rev]))
            print(f"turn {r + 1}/{RUNS}: " + "  ".join(f"{rev} {t[-1][0]:.0f}/s" for rev, t in turns.items()), flush=True)
    base = turns[revs[0]]
    print(f"\nsetup ({SETUP}) unless named, c={CONCURRENCY}, {RUNS} turns of {SECONDS} s; medians, ratios paired by turn, "
          f"to {revs[0]}:")
    print("| revision | req/s | CPU ms/req (loop + others) | CPU × | q1–q3 | req/s × | q1–q3 |")
    print("|---|---|---|---|---|---|---|")
    for rev, runs in turns.items():
        cpu = spread([(t[1] + t[2]) / (b[1] + b[2]) for t, b in zip(runs, base)])
        rps = spread([t[0] / b[0] for t, b in zip(runs, base)])
        loop, others = statistics.median(t[1] for t in runs), statistics.median(t[2] for t in runs)
        print(f"| {rev} | {statistics.median(t[0] for t in runs):.0f} | {loop + others:.3f} ({loop:.3f} + {others:.3f}) "
              f"| {cpu[1]:.3f} | {cpu[0]:.3f}–{cpu[2]:.3f} | {rps[1]:.3f} | {rps[0]:.3f}–{rps[2]:.3f} |")


def spread(ratios: list[float]) -> tuple[float, float, float]:
    """The first quartile, the median and the third quartile of `ratios`."""
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return q1, median, q3


if __name__ == "__main__":
    main()
