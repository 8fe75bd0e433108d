"""`make bench-callgrind`: what each overhead setup costs a request in instructions and cache misses.

CPU time of one setup moves between runs by more than a small change to the request path saves, so `make
bench` cannot see such a change. Under callgrind a real mitmdump runs the same requests and the count repeats,
whatever else the machine does (bench/README.md, "Reading the figures"): the instrument for deciding whether a
change to the request path saves work. It sees neither the kernel (syscalls, the copies of `read`: use
`strace -c`) nor the TLB, so a change whose win is made of misses needs a paired A/B of real processes as well
(`make bench-ab`); bench/README.md has a case where fewer simulated misses did not make the process cheaper.

Each setup of section 1 that takes part, (a), (c) and (d) by default, is started uninstrumented (start-up takes
~1 min under valgrind), warmed up, then counted over exactly BENCH_CG_REQUESTS requests at c=16 from a client
on CPU 1. The simulated caches are the core's: 32 KB L1i and L1d, and the 1 MB L2 as the last level.
Writes bench/out/callgrind.json and prints a table with ratios to (a). Setups: `bench/callgrind.py c d`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import OUT, PIN, Load, Proxy, processes, start_upstream
from run import SCOPES, overhead_loads, prepare

REQUESTS = int(os.environ.get("BENCH_CG_REQUESTS", "500"))
WARM_UP = 300
CONCURRENCY = 16
CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,16,64"]
TIMEOUT_MS = "60000"  # recall's budget: valgrind runs ~50x slower, and a timed-out recall would skip the search


@dataclass
class Callgrind(Proxy):
    """A mitmdump under callgrind, counting nothing until told to."""

    ready_timeout = 600.0  # start-up takes ~1 min under valgrind

    @property
    def out(self) -> Path:
        return OUT / f"callgrind-{self.name}.out"

    def command(self, upstream: int) -> list[str]:
        for old in OUT.glob(self.out.name + "*"):
            old.unlink()
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes", *CACHES, f"--callgrind-out-file={self.out}"]
        return [*valgrind, *super().command(upstream)]

    def control(self, *args: str) -> None:
        assert self.process is not None
        subprocess.run(["callgrind_control", *args, str(self.process.pid)], check=True, capture_output=True)


async def send(port: int, body: bytes, fresh: bool, n: int, rng: random.Random, vocab: list[str]) -> None:
    """Exactly `n` POSTs over CONCURRENCY keep-alive connections, each answered 200."""
    left = n

    def request() -> bytes:
        data, extra = body, b""
        if fresh:  # as bench/wrk.lua: three random words and a random scope
            data = body.replace(b"@QUERY@", " ".join(rng.choice(vocab) for _ in range(3)).encode())
            extra = b"x-memory-user-id: bench-%02d\r\n" % rng.randrange(SCOPES)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        return head + extra + b"content-length: %d\r\n\r\n" % len(data) + data

    async def connection() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left > 0:
            left -= 1
            writer.write(request())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"answer {head[:40]!r}")
            length = next(int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length")
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(connection() for _ in range(CONCURRENCY)))


def totals(out: Path) -> dict[str, int]:
    """The event totals of the dump callgrind wrote when told to (the largest of its parts)."""
    best: dict[str, int] = {}
    for part in out.parent.glob(out.name + "*"):
        events, values = [], []
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("totals:", "summary:")):
                found = [int(v) for v in line.split()[1:]]
                values = found if not values or (found and found[0] > values[0]) else values
        if values and values[0] > best.get("Ir", -1):
            best = dict(zip(events, values))
    return best


def measure(load: Load, upstream: int) -> dict[str, float]:
    server = load.server
    assert isinstance(server, Callgrind)
    log = OUT / f"{server.name}.log"
    logged = log.stat().st_size if log.exists() else 0  # the log is appended to, run after run
    server.start(upstream)
    try:
        vocab = (OUT / "vocab.txt").read_text().split()
        data, rng, fresh = load.body.read_bytes(), random.Random(7), load.vocab is not None
        asyncio.run(send(server.port, data, fresh, WARM_UP, rng, vocab))
        server.control("--instr=on")
        asyncio.run(send(server.port, data, fresh, REQUESTS, rng, vocab))
        server.control("--instr=off")
        server.control("--dump")
    finally:
        server.stop()
    with log.open(errors="replace") as f:
        f.seek(logged)
        skipped = sum("went on without memories" in line or "skipping recall" in line for line in f)
    t = totals(server.out)
    per = {
        "Ir": t["Ir"] / REQUESTS,
        "L1_misses": (t["I1mr"] + t["D1mr"] + t["D1mw"]) / REQUESTS,
        "LL_misses": (t["ILmr"] + t["DLmr"] + t["DLmw"]) / REQUESTS,
        "recalls_skipped": skipped,
    }
    print(f"{server.name}: {per['Ir'] / 1e6:.3f} M instructions, {per['L1_misses']:.0f} L1 and {per['LL_misses']:.0f} LL misses a request", flush=True)
    return per


def main() -> None:
    if PIN is False:
        print("note: taskset or a second CPU is missing; the client shares mitmdump's CPU", file=sys.stderr)
    files = prepare()
    chosen = sys.argv[1:] or ["a", "c", "d"]
    loads = overhead_loads(files, proxy=Callgrind, tag="cg-", memory_timeout_ms=TIMEOUT_MS)
    results: dict[str, dict[str, float]] = {}
    with processes() as started:
        upstream = start_upstream(started)
        for name in chosen:
            started.append(loads[name].server)
            results[name] = measure(loads[name], upstream)
    (OUT / "callgrind.json").write_text(json.dumps({"requests": REQUESTS, "results": results}, indent=1))
    base = results.get("a")
    print(f"\nper request, {REQUESTS} requests at c={CONCURRENCY} after {WARM_UP} warm-up (ratios to (a)):")
    print("| setup | M instructions | × (a) | L1 misses | × (a) | LL misses | × (a) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = (lambda k: f"{r[k] / base[k]:.3f}") if base else (lambda k: "–")
        print(f"| {name} | {r['Ir'] / 1e6:.3f} | {ratio('Ir')} | {r['L1_misses']:.0f} | {ratio('L1_misses')} | {r['LL_misses']:.0f} | {ratio('LL_misses')} |")
        if r["recalls_skipped"]:
            print(f"  ({name}: recall went without memories {r['recalls_skipped']} times; its figures undercount the search)")


if __name__ == "__main__":
    main()
