"""Benchmark 5: the LiteLLM proxy server with a pre-call hook injecting the memory text of setup (c).

It runs from its own venv, bench/out/peer-venv (`make bench` installs bench/peer-requirements.txt there),
with one uvicorn worker, pinned to the CPU mitmdump gets, and is measured in the overhead benchmark's
rotation, so its figures share a run with the no-op baseline (a) and our setup (c).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from harness import BENCH, OUT, PIN, Server

VENV = OUT / "peer-venv"
KEY = "sk-bench-master"  # the proxy's master key: a fixed fake, clients send it as a bearer token
MEMORY = OUT / "peer-memory.txt"  # what the hook injects; run.py writes the text (c) injects


@dataclass
class Peer(Server):
    """`litellm --config` with one model, gpt-4o-mini, served by the bench upstream, and bench/peer_hook.py."""

    ready_timeout = 180.0  # imports take seconds, more on a busy machine

    def command(self, upstream: int) -> list[str]:
        if not (VENV / "bin/litellm").exists():
            raise RuntimeError(f"no LiteLLM proxy in {VENV}: `make bench` installs it")
        config = {  # JSON is YAML
            "model_list": [
                {
                    "model_name": "gpt-4o-mini",
                    "litellm_params": {
                        "model": "openai/gpt-4o-mini",
                        "api_base": f"http://127.0.0.1:{upstream}/v1",
                        "api_key": "sk-bench-upstream",
                    },
                }
            ],
            "litellm_settings": {"callbacks": "peer_hook.proxy_handler_instance"},
            "general_settings": {"master_key": KEY},
        }
        path = OUT / "peer-config.yaml"
        path.write_text(json.dumps(config, indent=1))
        return [str(VENV / "bin/litellm"), "--config", str(path), "--host", "127.0.0.1", "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        return super().environment() | {
            "PYTHONPATH": str(BENCH),  # peer_hook
            "BENCH_PEER_MEMORY": str(MEMORY),
            "LITELLM_LOG": "WARNING",  # no access log, as mitmdump runs with termlog_verbosity=warn
            "LITELLM_TELEMETRY_DISABLED": "true",
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
        }


def section(results: dict) -> list[str]:
    """The report's section 5, from the overhead runs of (a), (c) and the peer."""
    runs = results["overhead"]["runs"]
    checks = results["overhead"]["checks"]["request_bytes_at_upstream"]
    lines = [
        "## 5. Against a peer",
        "",
        "The LiteLLM proxy server (litellm 1.110.2, one uvicorn worker, its default; master key; no access log) with an "
        "`async_pre_call_hook` that appends the memory text (c) injects to the system message: a constant, no search. "
        "Same upstream, body and wrk as section 1, measured in its rotation"
        + (", pinned to CPU 0 like mitmdump" if PIN else "")
        + f"; median of {len(runs['a']['1'])}. Request bytes at the upstream: peer {checks['peer']}, ours (c) {checks['c']}.",
        "",
        "| c | setup | req/s | × (a) | p50 ms | p99 ms | CPU ms/req | ours (c) ÷ peer, req/s | target | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, rows in runs["a"].items():
        base = statistics.median(r["rps"] for r in rows)
        ours = statistics.median(r["rps"] for r in runs["c"][c])
        for key, name in (("a", "(a) mitmdump no-op"), ("c", "(c) ours, cached recall"), ("peer", "LiteLLM proxy + hook")):
            rps, p50, p99, cpu = (statistics.median(r[k] for r in runs[key][c]) for k in ("rps", "p50", "p99", "cpu_ms_per_req"))
            target = result = times = ""
            if key == "peer":
                times = f"{ours / rps:.1f}"
                if c == "16":
                    target, result = "≥ 6", "PASS" if ours / rps >= 6 else "FAIL"
            lines.append(
                f"| {c} | {name} | {rps:.0f} | {rps / base:.2f} | {p50 / 1000:.2f} | {p99 / 1000:.2f} | {cpu:.3f} | {times} "
                f"| {target} | {result} |"
            )
    cpu = {k: statistics.median(r["cpu_ms_per_req"] for r in runs[k]["16"]) for k in ("c", "peer")}
    lines.append(f"\nAt c=16 the peer spends {cpu['peer'] / cpu['c']:.1f} × the CPU per request of ours (c).")
    return [*lines, ""]
