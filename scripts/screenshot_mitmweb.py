"""Make docs/mitmweb.png: mitmweb with the addon, a few LLM flows through it, a headless Chromium screenshot.

Run: .venv/bin/python scripts/screenshot_mitmweb.py   (needs Debian's chromium)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from e2e_helpers import claude_body, claude_headers, seed  # noqa: E402
from fakes import FakeUpstream  # noqa: E402

PORT, WEB = 18480, 18481


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    db = tmp / "memories.db"
    seed(db, "claude-code:shop", "User: the shop uses Stripe for payments\nAssistant: noted")
    with FakeUpstream() as upstream:
        argv = [
            str(Path(sys.executable).parent / "mitmweb"), "-s", str(ROOT / "addons/memory.py"),
            "--mode", f"reverse:{upstream.url}", "--listen-host", "127.0.0.1", "-p", str(PORT),
            "--web-port", str(WEB), "--set", "web_open_browser=false", "--set", f"memory_db={db}",
            "--set", f"confdir={tmp}", "--set", f"memory_outbox={tmp / 'outbox.db'}",
        ]
        env = {**os.environ, "HOME": str(tmp)}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            token = None
            deadline = time.monotonic() + 30
            while token is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if m := re.search(r"token=([0-9a-f]+)", line):
                    token = m.group(1)
            base = f"http://127.0.0.1:{PORT}"
            with httpx.Client(base_url=base, timeout=30) as client:
                client.post("/v1/messages?beta=true", json=claude_body("/home/dev/shop", "How do we take payments?"),
                            headers=claude_headers())
                client.post("/v1/messages", json=claude_body("/home/dev/blog", "Add a dark mode toggle"),
                            headers=claude_headers(**{"x-claude-code-request-class": "background"}))
                client.post("/v1/chat/completions", headers={"user-agent": "OpenAIClientImpl/Java"},
                            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Explain this stack trace"}]})
                client.post("/v1/messages/count_tokens", json=claude_body("/home/dev/shop", "x"), headers=claude_headers())
            time.sleep(1)
            flows = httpx.get(f"http://127.0.0.1:{WEB}/flows", params={"token": token}, timeout=30).json()
            first = flows[0]["id"]
            out = ROOT / "docs" / "mitmweb.png"
            subprocess.run(
                ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", f"--user-data-dir={tmp / 'chrome'}", "--hide-scrollbars",
                 "--window-size=1500,620", "--virtual-time-budget=8000", f"--screenshot={out}",
                 f"http://127.0.0.1:{WEB}/?token={token}#/flows/{first}/comment"],
                check=True, capture_output=True, timeout=120,
            )
            print(out)
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
