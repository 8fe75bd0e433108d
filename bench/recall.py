"""`make bench-recall`: does the right memory show up? Recall measured on LoCoMo (Maharana et al., ACL 2024).

`bench/recall.py [--data PATH] [--json OUT]` stores each conversation in its own scope of a fresh local store,
through the store's own API, as memproxy would: speaker A's utterance and speaker B's reply form a turn
(`User: … Assistant: …`), dated with its session's date; an utterance with no partner is a turn alone. Then it
searches every question in its scope and reports, per category and over all questions:
- R@k: the share of a question's evidence dialogs found in its top k memories (k = 1, 3, 5, 10, 20);
- R@kd: the same, the ranking cut at k dialogs (a pair holds two), the unit of the paper's Table 3;
- injected: the share found in what recall would inject under the default rules (max_results, max_chars);
- the search's latency, p50 and p99.

The data is read from where it lies (../shared/recall by default) and never copied into the project.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "addons"))

from memproxy.memory.base import Memory  # noqa: E402
from memproxy.memory.local import LocalStore  # noqa: E402
from memproxy.protocols import frame_context  # noqa: E402
from memproxy.rules import Actions  # noqa: E402

DATA = ROOT.parent / "shared" / "recall" / "locomo-dev.json"
KS = (1, 3, 5, 10, 20)
DIALOG_KS = (5, 10, 25, 50)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
GROUPS = ("all", "cat1-4", *CATEGORIES.values())
EVIDENCE = re.compile(r"D:?(\d+):0*(\d+)")  # "D3:7", and the upstream's malformed "D:11:26", "D30:05"


def dialog_ids(evidence: list[str]) -> set[str]:
    """The question's evidence dialogs, normalised (`D8:6; D9:17` holds two)."""
    return {f"D{s}:{d}" for item in evidence for s, d in EVIDENCE.findall(item)}


def session_date(text: str) -> float:
    """A LoCoMo session's date ("1:56 pm on 8 May, 2023") as Unix time, read in the local time zone as memproxy
    dates a turn; 0 if it cannot be read."""
    try:
        return datetime.datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").timestamp()
    except ValueError:
        return 0.0


def turns(sample: dict[str, Any], scope: str) -> list[Memory]:
    """A conversation's turns, as memories of `scope` whose metadata names their dialogs and their session (the
    conversation memproxy would record)."""
    conv = sample["conversation"]
    a, b = conv["speaker_a"], conv["speaker_b"]
    out: list[Memory] = []
    sessions = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in conv.items() if re.fullmatch(r"session_\d+", k))
    for n, dialogs in sessions:
        at = session_date(conv.get(f"session_{n}_date_time", ""))
        i = 0
        while i < len(dialogs):
            first = dialogs[i]
            second = dialogs[i + 1] if i + 1 < len(dialogs) else None
            if first["speaker"] == a and second is not None and second["speaker"] == b:
                content, ids, i = f"User: {first['text']}\nAssistant: {second['text']}", [first["dia_id"], second["dia_id"]], i + 2
            else:
                content, ids, i = f"User: {first['text']}", [first["dia_id"]], i + 1
            out.append(Memory(f"turn-{'-'.join(ids)}", scope, content, 0.0, {"dialogs": ids, "conversation": f"session-{n}"}, at))
    return out


def injected(found: list[Memory], actions: Actions) -> list[Memory]:
    """The memories of `found` that recall would inject: the best max_results that fit max_chars."""
    block = frame_context([m.content for m in found[: actions.max_results]], "bench", actions.max_chars)
    return [m for m in found[: actions.max_results] if m.content.split("\n", 1)[0] in block]


async def measure(data: list[dict[str, Any]]) -> dict[str, Any]:
    actions = Actions()
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    took: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "memories.db")
        try:
            for sample in data:
                await store.add_many(turns(sample, f"locomo:{sample['sample_id']}"))
            await store.open()  # merges the index, as a proxy's start-up does
            for sample in data:
                scope = f"locomo:{sample['sample_id']}"
                for qa in sample["qa"]:
                    evidence = dialog_ids(qa.get("evidence", []))
                    if not evidence or qa.get("category") not in CATEGORIES:
                        continue
                    started = time.perf_counter()
                    found = await store.search(scope, str(qa["question"]), max(KS))
                    took.append(time.perf_counter() - started)
                    row = recall_row(found, evidence, actions)
                    cat = qa["category"]
                    for group in ("all", *(("cat1-4",) if cat != 5 else ()), CATEGORIES[cat]):
                        for key, value in row.items():
                            scores[group][key].append(value)
        finally:
            await store.close()
    took.sort()
    return {
        "questions": len(scores["all"]["R@1"]),
        "groups": {g: {"n": len(scores[g]["R@1"]), **{k: round(100 * statistics.fmean(v), 1) for k, v in scores[g].items()}}
                   for g in GROUPS if scores[g]},
        "search_ms": {"p50": round(statistics.median(took) * 1000, 3), "p99": round(took[int(len(took) * 0.99)] * 1000, 3)},
    }


def recall_row(found: list[Memory], evidence: set[str], actions: Actions) -> dict[str, float]:
    """One question's recall at each cut."""
    def share(memories: list[Memory]) -> float:
        return len(evidence & {d for m in memories for d in m.metadata["dialogs"]}) / len(evidence)

    row = {f"R@{k}": share(found[:k]) for k in KS}
    dialogs = [d for m in found for d in m.metadata["dialogs"]]
    for k in DIALOG_KS:
        row[f"R@{k}d"] = len(evidence & set(dialogs[:k])) / len(evidence)
    row["injected"] = share(injected(found, actions))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"LoCoMo JSON (default: {DATA})")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no benchmark data at {args.data}: pass --data PATH (LoCoMo's JSON)")
    results = asyncio.run(measure(json.loads(args.data.read_text(encoding="utf-8"))))
    keys = [f"R@{k}" for k in KS] + [f"R@{k}d" for k in DIALOG_KS] + ["injected"]
    print(f"{results['questions']} questions; search p50 {results['search_ms']['p50']} ms, p99 {results['search_ms']['p99']} ms")
    print("| group | n | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for group, row in results["groups"].items():
        print(f"| {group} | {row['n']} | " + " | ".join(f"{row[k]:.1f}" for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
