"""What the benchmarks share: servers under test (mitmdump, the peer), the fake upstream, and wrk.

A server is pinned to CPU 0 and the load generator and upstream to CPU 1 (`taskset`), so they do not compete.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from e2e_helpers import free_port, isolated_env, loopback_mitmdump_argv  # noqa: E402

BENCH = ROOT / "bench"
OUT = BENCH / "out"
CONFDIR = OUT / "confdir"
PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
TICK = os.sysconf("SC_CLK_TCK")
DURATION = int(os.environ.get("BENCH_DURATION", "5"))  # seconds of wrk per setup per repetition
REPS = int(os.environ.get("BENCH_REPS", "3"))


def words(rng: random.Random, n: int) -> list[str]:
    """`n` distinct pronounceable made-up words."""
    letters = "bcdfghjklmnprstvz"
    vowels = "aeiou"
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen["".join(rng.choice(letters) + rng.choice(vowels) for _ in range(rng.randint(3, 4)))] = None
    return list(seen)


def pinned(argv: list[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if PIN else argv


@dataclass
class Server:
    """A server under test, in front of the bench upstream; subclasses say how to run it."""

    name: str
    port: int = field(default=0, init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    ready_timeout = 30.0

    def command(self, upstream: int) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The caller's environment with no proxy settings or keys, and a home of its own under bench/out."""
        return isolated_env(OUT / "home")

    def start(self, upstream: int) -> float:
        """Start; return the seconds until the port accepts connections."""
        self.port = free_port()
        argv = self.command(upstream)
        log = (OUT / f"{self.name}.log").open("ab")
        started = time.perf_counter()
        self.process = subprocess.Popen(pinned(argv, 0), stdout=log, stderr=subprocess.STDOUT, env=self.environment(), cwd=ROOT)
        log.close()
        while time.perf_counter() - started < self.ready_timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {OUT}/{self.name}.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return time.perf_counter() - started
            except OSError:
                time.sleep(0.005)
        raise RuntimeError(f"{self.name} not listening after {self.ready_timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime

    def rss_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def get(self, path: str) -> tuple[dict[str, str], bytes]:
        """GET one of memproxy's own endpoints: the reverse listener answers them under the Host `memproxy`."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Host": "memproxy"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(resp.headers), resp.read()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json", **headers}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", body, headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return {k.lower(): v for k, v in resp.headers.items()}


@dataclass
class Proxy(Server):
    """A mitmdump in reverse mode to the bench upstream, running `script`."""

    script: str
    options: dict[str, str] = field(default_factory=dict)

    def command(self, upstream: int) -> list[str]:
        settings = {"confdir": str(CONFDIR), "termlog_verbosity": "warn", **self.options}
        return loopback_mitmdump_argv(self.port, settings, [ROOT / self.script], reverse=f"http://127.0.0.1:{upstream}")


@contextlib.contextmanager
def processes() -> Iterator[list]:
    """Everything started here is stopped on the way out, failure or not."""
    started: list = []
    try:
        yield started
    finally:
        for p in reversed(started):
            if isinstance(p, Server):
                p.stop()
            elif p.poll() is None:
                p.terminate()
                p.wait(10)


def start_upstream(started: list) -> int:
    port = free_port()
    proc = subprocess.Popen(pinned([sys.executable, str(BENCH / "upstream.py"), str(port)], 1))
    started.append(proc)
    for _ in range(200):
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return port
        time.sleep(0.025)
    raise RuntimeError("bench upstream did not start")


def wrk(port: int, path: str, body: Path, concurrency: int, duration: int, vocab: Path | None = None, key: str = "") -> dict:
    env = {**os.environ, "BENCH_PATH": path, "BENCH_BODY": str(body), "BENCH_VOCAB": str(vocab or ""), "BENCH_KEY": key}
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(BENCH / "wrk.lua")]
    out = subprocess.run(pinned([*argv, f"http://127.0.0.1:{port}"], 1), env=env, capture_output=True, text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("BENCH "))
    result = json.loads(line[len("BENCH ") :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


@dataclass
class Load:
    """One setup of a throughput benchmark: a server and the requests wrk sends it."""

    server: Server
    path: str
    body: Path
    vocab: Path | None = None
    key: str = ""  # sent as a bearer token

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"} if self.key else {}

    def run(self, concurrency: int, duration: int) -> dict:
        before = self.server.cpu_seconds()
        result = wrk(self.server.port, self.path, self.body, concurrency, duration, self.vocab, self.key)
        result["cpu_ms_per_req"] = (self.server.cpu_seconds() - before) * 1000 / max(1, result["requests"])
        return result
