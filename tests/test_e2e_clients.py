"""End to end with real clients from npm (tests/clients; `make test` installs them with npm ci): Claude Code
(`claude -p`), Codex CLI (`codex exec`) and Gemini CLI (`gemini -p`), driven through a real mitmdump with
addons/memory.py, the fake upstream standing in for their providers' hosts. Each is set up as its README
quickstart says, once by hand and once with `memproxy wrap`; each remembers a turn in one project, recalls it
there, and keeps it out of another project. The three share one memory per project (a repository, whichever
of its directories a session starts in), each note labelled with the tool that wrote it, and never share it
with another repository of the same name; the user scope is recalled in every project.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import MitmdumpProc
from e2e_helpers import MEMORY_TAG, isolated_env, memories, seed, wait_memories
from e2e_helpers import installed_client as installed
from e2e_helpers import run_client as run
from fakes import FakeUpstream, Recorded

pytestmark = pytest.mark.e2e

ANTHROPIC_KEY = "sk-ant-fake-e2e-claude"  # distinctive, and short of a real key's shape
OPENAI_KEY = "sk-e2e-real-codex-0123456789"
GEMINI_KEY = "AIza-e2e-real-gemini-0123456789"


def claude(proc: MitmdumpProc, project: Path, prompt: str, home: Path, *, wrap: bool = False) -> str:
    """`claude -p prompt`; by hand with the README's variables."""
    env = isolated_env(home) | {"ANTHROPIC_API_KEY": ANTHROPIC_KEY}
    if not wrap:
        env |= {
            "HTTPS_PROXY": proc.proxy_url,
            "NODE_EXTRA_CA_CERTS": str(proc.ca_path),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
    return run(proc, project, [str(installed("claude")), "-p", prompt], env, wrap=wrap).strip()


def codex(proc: MitmdumpProc, project: Path, prompt: str, home: Path, *, wrap: bool = False) -> str:
    """`codex exec prompt`; by hand with the README's variables (the bundle `memproxy wrap` or `certs` writes)."""
    env = isolated_env(home) | {"OPENAI_API_KEY": OPENAI_KEY}
    if not wrap:
        env |= {"HTTPS_PROXY": proc.proxy_url, "CODEX_CA_CERTIFICATE": str(proc.confdir / "memproxy-bundle.pem")}
    return run(proc, project, [str(installed("codex")), "exec", "--skip-git-repo-check", prompt], env, wrap=wrap)


def gemini(proc: MitmdumpProc, project: Path, prompt: str, home: Path, *flags: str, wrap: bool = False) -> str:
    """`gemini [flags] -p prompt` (`--skip-trust`: headless in a folder it was never told to trust); by hand as the
    README says."""
    env = isolated_env(home) | {"GEMINI_API_KEY": GEMINI_KEY}
    if not wrap:
        env |= {"HTTPS_PROXY": proc.proxy_url, "NODE_EXTRA_CA_CERTS": str(proc.ca_path)}
    return run(proc, project, [str(installed("gemini")), "--skip-trust", *flags, "-p", prompt], env, wrap=wrap).strip()


def answer_classifier(upstream: FakeUpstream) -> None:
    """Gemini CLI's model-routing classifier asks for JSON (`responseMimeType`): the fake answers it so."""
    verdict = json.dumps({"complexity_reasoning": "a short question", "complexity_score": 10})

    def reply(rec: Recorded) -> str:
        config = rec.json.get("generationConfig", {}) if isinstance(rec.json, dict) else {}
        return verdict if config.get("responseMimeType") == "application/json" else upstream.reply

    upstream.reply_for = reply


def messages_calls(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """The bodies of the Messages calls the upstream received, in order."""
    return [r.json for r in upstream.requests if r.method == "POST" and r.path == "/v1/messages"]


def codex_turns(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """Codex's `response.create` messages over its WebSockets, in order, without the prewarms."""
    sent = [m for r in upstream.requests if r.path == "/v1/responses" for m in r.ws_messages]
    return [m for m in sent if m.get("type") == "response.create" and m.get("generate") is not False]


def test_claude_code_remembers_per_project(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, alpha, beta = tmp_path / "home", tmp_path / "alpha", tmp_path / "beta"

    upstream.reply = "Noted: alpha deploys with Nomad."
    assert claude(proc, alpha, "We deploy the alpha service with Nomad.", home) == upstream.reply
    assert MEMORY_TAG not in json.dumps(messages_calls(upstream)[-1])
    stored = wait_memories(db, "project:alpha")
    assert len(stored) == 1, proc.log_text()
    assert "alpha service with Nomad" in stored[0] and upstream.reply in stored[0]

    upstream.reply = "With Nomad."
    assert claude(proc, alpha, "How does the alpha service deploy?", home, wrap=True) == upstream.reply
    sent = messages_calls(upstream)[-1]
    assert MEMORY_TAG in json.dumps(sent) and "alpha service with Nomad" in json.dumps(sent)
    question = {"type": "text", "text": "How does the alpha service deploy?", "cache_control": {"type": "ephemeral"}}
    assert question in sent["messages"][0]["content"]  # the client's own blocks are kept as they were

    # With its non-essential traffic on (wrap leaves it on), Claude Code also asks Haiku for a session title:
    # an auxiliary call, neither recalled into nor stored.
    titles = [t for t in messages_calls(upstream) if "<session>" in json.dumps(t["messages"])]
    assert titles and all(MEMORY_TAG not in json.dumps(t) for t in titles)

    upstream.reply = "I don't know yet."
    claude(proc, beta, "How does the beta service deploy?", home)
    assert MEMORY_TAG not in json.dumps(messages_calls(upstream)[-1])
    assert len(wait_memories(db, "project:beta")) == 1
    assert len(wait_memories(db, "project:alpha", 2)) == 2
    assert memories(db, "claude-code") == []  # no turn fell back to the client-wide scope
    assert ANTHROPIC_KEY not in json.dumps(memories(db, "project:alpha")) + proc.log_text()


def test_claude_code_in_reverse_mode(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    """The README's way without the CA: ANTHROPIC_BASE_URL at a reverse listener."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="reverse", upstream=upstream, options={"memory_db": str(db)})
    env = isolated_env(tmp_path / "home") | {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ANTHROPIC_BASE_URL": proc.base_url}
    upstream.reply = "Noted: gamma uses SQLite."
    out = run(proc, tmp_path / "gamma", [str(installed("claude")), "-p", "The gamma service uses SQLite."], env, wrap=False)
    assert out.strip() == upstream.reply
    assert wait_memories(db, "project:gamma") == [f"User: The gamma service uses SQLite.\nAssistant: {upstream.reply}"]
    assert memories(db, "claude-code") == []


def test_codex_remembers_per_project(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, alpha, beta = tmp_path / "home", tmp_path / "alpha", tmp_path / "beta"

    upstream.reply = "Noted: alpha deploys with Nomad."
    assert upstream.reply in codex(proc, alpha, "We deploy the alpha service with Nomad.", home, wrap=True)
    assert MEMORY_TAG not in json.dumps(codex_turns(upstream)[-1])
    stored = wait_memories(db, "project:alpha")
    assert len(stored) == 1, proc.log_text()
    assert "alpha service with Nomad" in stored[0] and upstream.reply in stored[0]

    upstream.reply = "With Nomad."
    assert upstream.reply in codex(proc, alpha, "How does the alpha service deploy?", home)
    sent = json.dumps(codex_turns(upstream)[-1])
    assert MEMORY_TAG in sent and "alpha service with Nomad" in sent

    upstream.reply = "I don't know yet."
    codex(proc, beta, "How does the beta service deploy?", home)
    assert MEMORY_TAG not in json.dumps(codex_turns(upstream)[-1])
    assert len(wait_memories(db, "project:beta")) == 1
    assert len(wait_memories(db, "project:alpha", 2)) == 2
    assert memories(db, "codex") == []
    assert OPENAI_KEY not in json.dumps(memories(db, "project:alpha")) + proc.log_text()


def gemini_calls(upstream: FakeUpstream, action: str) -> list[dict[str, Any]]:
    """The bodies of Gemini CLI's `generateContent` (classifier) or `streamGenerateContent` (turn) calls."""
    return [r.json for r in upstream.requests if r.method == "POST" and r.path.endswith(f":{action}")]


def test_gemini_cli_remembers_per_project(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, alpha, beta = tmp_path / "home", tmp_path / "alpha", tmp_path / "beta"
    answer_classifier(upstream)

    upstream.reply = "Noted: alpha deploys with Nomad."
    assert gemini(proc, alpha, "We deploy the alpha service with Nomad.", home, wrap=True) == upstream.reply
    assert MEMORY_TAG not in json.dumps(gemini_calls(upstream, "streamGenerateContent")[-1])
    stored = wait_memories(db, "project:alpha")
    assert len(stored) == 1, proc.log_text()
    assert "alpha service with Nomad" in stored[0] and upstream.reply in stored[0]

    upstream.reply = "With Nomad."
    assert gemini(proc, alpha, "How does the alpha service deploy?", home) == upstream.reply
    sent = json.dumps(gemini_calls(upstream, "streamGenerateContent")[-1])
    assert MEMORY_TAG in sent and "alpha service with Nomad" in sent
    classifier = gemini_calls(upstream, "generateContent")
    assert classifier and all(MEMORY_TAG not in json.dumps(c) for c in classifier)  # auxiliary: left alone

    upstream.reply = "I don't know yet."
    gemini(proc, beta, "How does the beta service deploy?", home)
    assert MEMORY_TAG not in json.dumps(gemini_calls(upstream, "streamGenerateContent")[-1])
    assert len(wait_memories(db, "project:beta")) == 1
    assert len(wait_memories(db, "project:alpha", 2)) == 2
    assert memories(db, "gemini-cli") == []
    assert GEMINI_KEY not in json.dumps(memories(db, "project:alpha")) + proc.log_text()


# -- one memory per project, shared by the tools --------------------------------------------------------


def repository(path: Path) -> Path:
    """A git repository at `path`, with a subdirectory `src`."""
    (path / "src").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True, capture_output=True)
    return path


def turn_sent(upstream: FakeUpstream, tool: str) -> str:
    """The last conversation turn `tool` sent upstream, as JSON text."""
    if tool == "claude":
        return json.dumps(messages_calls(upstream)[-1])
    if tool == "codex":
        return json.dumps(codex_turns(upstream)[-1])
    return json.dumps(gemini_calls(upstream, "streamGenerateContent")[-1])


def ask(tool: str, proc: MitmdumpProc, project: Path, prompt: str, home: Path, upstream: FakeUpstream) -> str:
    """One turn of `tool` in `project`; what it sent upstream. Codex goes through `memproxy wrap`, which writes the
    CA bundle it trusts."""
    {"claude": claude, "codex": functools.partial(codex, wrap=True), "gemini": gemini}[tool](proc, project, prompt, home)
    return turn_sent(upstream, tool)


def test_every_tool_in_a_repository_shares_its_memory(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, shop = tmp_path / "home", repository(tmp_path / "shop")
    answer_classifier(upstream)

    upstream.reply = "Noted: the shop deploys with Nomad."
    ask("claude", proc, shop, "The shop deploys with Nomad.", home, upstream)
    wait_memories(db, "project:shop")
    upstream.reply = "Noted: the shop's database is Postgres."
    sent = ask("codex", proc, shop / "src", "The shop's database is Postgres. How does it deploy?", home, upstream)
    assert MEMORY_TAG in sent and ", Claude Code) " in sent and "shop deploys with Nomad" in sent
    wait_memories(db, "project:shop", 2)

    upstream.reply = "With Nomad, on Postgres."
    sent = ask("gemini", proc, shop / "src", "What runs the shop's deploys and its database?", home, upstream)
    assert ", Claude Code) " in sent and "shop deploys with Nomad" in sent
    assert ", Codex) " in sent and "database is Postgres" in sent
    assert len(wait_memories(db, "project:shop", 3)) == 3
    for scope in ("claude-code", "codex", "gemini-cli", "claude-code:shop", "codex:shop", "gemini-cli:shop",
                  "project:src", "user"):
        assert memories(db, scope) == [], scope  # nothing fell back to a tool's scope, a subdirectory or the user


def test_a_worktree_shares_its_repositorys_memory(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Work done in a linked worktree of a repository (`git worktree add`, as agents run in parallel) is
    remembered for the repository: Claude Code in the repository, then Codex and Gemini CLI in two worktrees,
    beside it and inside it, share one memory."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, shop = tmp_path / "home", repository(tmp_path / "shop")
    (shop / "README").write_text("shop\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", "-C", str(shop)]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}  # no config of the machine's
    subprocess.run([*git, "add", "README"], check=True, capture_output=True, env=env)
    subprocess.run([*git, "commit", "-qm", "one"], check=True, capture_output=True, env=env)
    beside, inside = tmp_path / "shop-feature", shop / ".claude" / "worktrees" / "fix"
    for path, branch in ((beside, "feature"), (inside, "fix")):
        subprocess.run([*git, "worktree", "add", "-q", "-b", branch, str(path)], check=True, capture_output=True, env=env)
    answer_classifier(upstream)

    upstream.reply = "Noted: the shop deploys with Nomad."
    ask("claude", proc, shop, "The shop deploys with Nomad.", home, upstream)
    wait_memories(db, "project:shop")
    upstream.reply = "Noted: the shop's database is Postgres."
    sent = ask("codex", proc, beside, "The shop's database is Postgres. How does it deploy?", home, upstream)
    assert "shop deploys with Nomad" in sent, proc.log_text()
    wait_memories(db, "project:shop", 2)
    upstream.reply = "With Nomad, on Postgres."
    sent = ask("gemini", proc, inside, "What runs the shop's deploys and its database?", home, upstream)
    assert "shop deploys with Nomad" in sent and "database is Postgres" in sent, proc.log_text()
    assert len(wait_memories(db, "project:shop", 3)) == 3
    assert all_scopes(db) == ["project:shop"]


@pytest.mark.parametrize("tool", ["claude", "codex", "gemini"])
def test_repositories_with_one_name_never_share(mitmdump, upstream: FakeUpstream, tmp_path: Path, tool: str) -> None:
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home = tmp_path / "home"
    work, oss = repository(tmp_path / "work" / "api"), repository(tmp_path / "oss" / "api")
    answer_classifier(upstream)

    upstream.reply = "Noted."
    ask(tool, proc, work, "The work api listens on port 7001.", home, upstream)
    ask(tool, proc, oss / "src", "The oss api listens on port 9009.", home, upstream)
    work_sent = ask(tool, proc, work / "src", "Which port does the api listen on?", home, upstream)
    oss_sent = ask(tool, proc, oss, "Which port does the api listen on?", home, upstream)
    assert "port 7001" in work_sent and "port 9009" not in work_sent
    assert "port 9009" in oss_sent and "port 7001" not in oss_sent
    [oss_scope] = [s for s in all_scopes(db) if s.startswith("project:api@")]
    for scope, other_port in (("project:api", "9009"), (oss_scope, "7001")):
        stored = wait_memories(db, scope, 2)
        assert not any(other_port in m for m in stored), (scope, stored)


def all_scopes(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute("SELECT DISTINCT scope FROM memories")]


def test_the_user_scope_is_recalled_in_every_project_and_filled_by_no_turn(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    db = tmp_path / "memories.db"
    seed(db, "user", "Answer in British English: colour, behaviour.")
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home = tmp_path / "home"
    upstream.reply = "Noted: alpha is written in Go."
    sent = ask("claude", proc, repository(tmp_path / "alpha"), "Alpha is written in Go; what colour is its logo?", home,
               upstream)
    assert "From scope user (your preferences in every project):" in sent and "British English" in sent
    wait_memories(db, "project:alpha")
    sent = ask("claude", proc, repository(tmp_path / "beta"), "Which colour scheme does beta use?", home, upstream)
    assert "British English" in sent and "written in Go" not in sent
    assert memories(db, "user") == ["Answer in British English: colour, behaviour."]
