"""The SDK path's cost: the direct path against the gateway's forward and its litellm translation.

Three mitmdumps with the addon, in reverse mode to the bench upstream, an empty store and these rules:
(direct) every request passes through; (forward) every request goes through the gateway in its own protocol;
(translate) every request goes through the gateway with a rule's mapping onto the same provider's model, so
litellm translates it. For each: non-streaming chat requests with wrk at c=1 and c=8 (requests/s and the
proxy's CPU per request, ratios against (direct) in the same repetition, setups rotated), and a streaming
request's time to first byte (median of 20). Run: `make bench-sdk` (BENCH_DURATION, BENCH_REPS as `make bench`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from harness import DURATION, OUT, REPS, Load, Proxy, processes, start_upstream
from run import chat_body, prepare, stream_once

SETUPS = {
    "direct": "",
    "forward": "  route: sdk\n",
    "translate": "  route: sdk\n  sdk: {model: openai/gpt-4o-mini, api_base: 'http://127.0.0.1:%d/v1'}\n",
}
CONCURRENCY = (1, 8)
TTFB_RUNS = 20


def rules(name: str, upstream: int) -> Path:
    path = OUT / f"rules-sdk-{name}.yaml"
    extra = SETUPS[name] % upstream if "%d" in SETUPS[name] else SETUPS[name]
    path.write_text(f"version: 1\ndefault_user_id: bench-sdk\ndefaults:\n  recall: true\n  store: false\n{extra}rules: []\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=OUT / "sdkpath.json")
    args = parser.parse_args()
    prepare()
    body, stream_body = OUT / "body-cache.json", chat_body("stream the bench reply", stream=True)
    runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in CONCURRENCY} for name in SETUPS}
    ttfb: dict[str, list[float]] = {name: [] for name in SETUPS}
    with processes() as started:
        upstream = start_upstream(started)
        loads = {}
        for name in SETUPS:
            options = {"memory_backend": "local", "memory_db": str(OUT / f"sdk-{name}.db"),
                       "memory_outbox": str(OUT / f"outbox-sdk-{name}.db"), "memory_rules": str(rules(name, upstream))}
            proxy = Proxy(f"sdk-{name}", "addons/memory.py", options)
            started.append(proxy)
            proxy.start(upstream)
            loads[name] = Load(proxy, "/v1/chat/completions", body, key="sk-bench")
            loads[name].run(1, 1)  # warm: the gateway, and litellm for (translate)
        for rep in range(REPS):
            order = list(SETUPS)[rep % len(SETUPS):] + list(SETUPS)[: rep % len(SETUPS)]
            for c in CONCURRENCY:
                for name in order:
                    runs[name][c].append(loads[name].run(c, DURATION))
        for name in SETUPS:
            for _ in range(TTFB_RUNS):
                ttfb[name].append(stream_once(loads[name].server.port, stream_body)["ttfb"])
    result = {"reps": REPS, "duration": DURATION, "setups": {}}
    for name in SETUPS:
        row = {"ttfb_ms": round(statistics.median(ttfb[name]) * 1000, 2)}
        for c in CONCURRENCY:
            ratio = [r["rps"] / d["rps"] for r, d in zip(runs[name][c], runs["direct"][c])]
            cpu = [r["cpu_ms_per_req"] / d["cpu_ms_per_req"] for r, d in zip(runs[name][c], runs["direct"][c])]
            row[f"c{c}"] = {"rps": round(statistics.median(r["rps"] for r in runs[name][c]), 1),
                            "rps_ratio": round(statistics.median(ratio), 3), "cpu_ratio": round(statistics.median(cpu), 3)}
        result["setups"][name] = row
    args.json.write_text(json.dumps(result, indent=2))
    print(f"SDK path against the direct path (median of {REPS} rotated repetitions, {DURATION} s each):")
    for name, row in result["setups"].items():
        cells = "  ".join(f"c={c}: {row[f'c{c}']['rps']} req/s ×{row[f'c{c}']['rps_ratio']} (CPU ×{row[f'c{c}']['cpu_ratio']})"
                          for c in CONCURRENCY)
        print(f"  {name:9s} {cells}  TTFB {row['ttfb_ms']} ms")


if __name__ == "__main__":
    main()
