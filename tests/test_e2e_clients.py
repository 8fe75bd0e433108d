"""End to end with a real client: Claude Code from npm (tests/clients, `make test` installs it), driven
with `claude -p` through a real mitmdump with addons/memory.py, the fake upstream standing in for
api.anthropic.com. Set up as the README's Claude Code quickstart says, by hand and with `memproxy wrap`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, MitmdumpProc
from e2e_helpers import MEMORY_TAG, isolated_env, memories, wait_memories
from fakes import FakeUpstream

pytestmark = pytest.mark.e2e

CLAUDE = ROOT / "tests/clients/node_modules/.bin/claude"
MEMPROXY = Path(sys.executable).with_name("memproxy")
FAKE_KEY = "sk-ant-e2e-real-claude-0123456789"


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    if not CLAUDE.exists():
        message = f"Claude Code is not installed at {CLAUDE} (`make test` runs npm ci in tests/clients)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has npm: a missing client is a broken set-up, not a reason to skip
        pytest.skip(message)


def claude(
    proc: MitmdumpProc, project: Path, prompt: str, home: Path, *, wrap: bool = False
) -> subprocess.CompletedProcess[str]:
    """`claude -p prompt` in `project`: through the proxy by hand (the README's variables) or by `memproxy wrap`."""
    env = isolated_env(home) | {"ANTHROPIC_API_KEY": FAKE_KEY}
    if wrap:
        argv = [str(MEMPROXY), "wrap", "--port", str(proc.port), "--confdir", str(proc.confdir), str(CLAUDE), "-p", prompt]
    else:
        env |= {
            "HTTPS_PROXY": proc.proxy_url,
            "NODE_EXTRA_CA_CERTS": str(proc.ca_path),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        argv = [str(CLAUDE), "-p", prompt]
    project.mkdir(exist_ok=True)
    return subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=120)


def turns(upstream: FakeUpstream) -> list[dict]:
    """The bodies of the Messages calls the upstream received, in order."""
    return [r.json for r in upstream.requests if r.method == "POST" and r.path == "/v1/messages"]


def test_claude_code_remembers_per_project(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, alpha, beta = tmp_path / "home", tmp_path / "alpha", tmp_path / "beta"

    upstream.reply = "Noted: alpha deploys with Nomad."
    first = claude(proc, alpha, "We deploy the alpha service with Nomad.", home)
    assert first.returncode == 0, first.stderr + proc.log_text()
    assert first.stdout.strip() == upstream.reply
    assert MEMORY_TAG not in json.dumps(turns(upstream)[-1])
    stored = wait_memories(db, "claude-code:alpha")
    assert len(stored) == 1, proc.log_text()
    assert "alpha service with Nomad" in stored[0] and upstream.reply in stored[0]

    upstream.reply = "With Nomad."
    second = claude(proc, alpha, "How does the alpha service deploy?", home, wrap=True)
    assert second.returncode == 0, second.stderr + proc.log_text()
    assert second.stdout.strip() == upstream.reply
    sent = turns(upstream)[-1]
    assert MEMORY_TAG in json.dumps(sent) and "alpha service with Nomad" in json.dumps(sent)
    question = {"type": "text", "text": "How does the alpha service deploy?", "cache_control": {"type": "ephemeral"}}
    assert question in sent["messages"][0]["content"]  # the client's own blocks are kept as they were

    # With its non-essential traffic on (wrap leaves it on), Claude Code also asks Haiku for a session title:
    # an auxiliary call, neither recalled into nor stored.
    titles = [t for t in turns(upstream) if "<session>" in json.dumps(t["messages"])]
    assert titles and all(MEMORY_TAG not in json.dumps(t) for t in titles)

    upstream.reply = "I don't know yet."
    third = claude(proc, beta, "How does the beta service deploy?", home)
    assert third.returncode == 0, third.stderr + proc.log_text()
    assert MEMORY_TAG not in json.dumps(turns(upstream)[-1])
    assert len(wait_memories(db, "claude-code:beta")) == 1
    assert len(wait_memories(db, "claude-code:alpha", 2)) == 2
    assert memories(db, "claude-code") == []  # no turn fell back to the client-wide scope

    assert FAKE_KEY not in json.dumps(memories(db, "claude-code:alpha")) + proc.log_text()
