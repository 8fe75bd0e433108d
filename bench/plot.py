"""Draw bench/latency.png from bench/out/results.json: latency by percentile, per setup and the peer, at c=1 and c=16.

Run with an interpreter that has matplotlib (the bench target makes one under bench/out/venv).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCH = Path(__file__).resolve().parent
NAMES = {
    "a": "(a) no-op",
    "b": "(b) ours, untouched path",
    "c": "(c) ours, cached recall",
    "d": "(d) ours, FTS 100k",
    "peer": "peer: LiteLLM proxy + hook",
}


def main() -> None:
    runs = json.loads((BENCH / "out" / "results.json").read_text())["overhead"]["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, c in zip(axes, ("1", "16")):
        for key, name in NAMES.items():
            curves = [r["curve"] for r in runs[key][c]]
            points = [p for p, _ in curves[0]]
            ms = [statistics.median(curve[i][1] for curve in curves) / 1000 for i in range(len(points))]
            ax.plot([1 / (1 - p / 100) for p in points], ms, marker=".", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")  # the peer is an order of magnitude slower
        ticks = [50, 90, 99, 99.9]
        ax.set_xticks([1 / (1 - p / 100) for p in ticks], [f"p{p:g}" for p in ticks])
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency, ms")
        ax.set_title(f"concurrency {c} (median of repetitions)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(BENCH / "latency.png", dpi=110)
    print(f"wrote {BENCH / 'latency.png'}")


if __name__ == "__main__":
    main()
