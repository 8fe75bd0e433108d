"""End to end with two more real clients from npm (tests/clients): Qwen Code (`qwen -p`) and opencode
(`opencode run`), both speaking Chat Completions to an OpenAI-compatible endpoint, driven through a real mitmdump
with addons/memory.py, the fake upstream standing in for the provider. Each runs fully offline: the only host it
reaches is the API's. Each remembers a turn in its project's scope (`project:<name>`), recalls it there, also from a
subdirectory, and keeps it out of another project; its auxiliary calls are neither recalled into nor stored.

What they send (Qwen Code 0.24.4, opencode 1.18.33), as the wire tests below check:
- Qwen Code: the working directory in the first user message, in the text part
  "<system-reminder>\\nThis is the Qwen Code. …\\nI'm currently working in the directory: <cwd>\\n…"; after the
  turn, a managed-memory extraction call whose system message starts "You are now acting as the managed memory
  extraction subagent" and whose last user message starts "Managed memory has TWO directories.".
- opencode: the working directory in the system message's `<env>` block ("  Working directory: <cwd>"); before
  the turn, a title call whose system message starts "You are a title generator." and has no `<env>`.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MitmdumpProc
from e2e_helpers import (
    MEMORY_TAG,
    installed_client,
    isolated_env,
    memories,
    restart_once,
    run_client,
    seed,
    wait_memories,
    wait_until,
)
from fakes import FakeUpstream, ToolCall

pytestmark = pytest.mark.e2e

QWEN_KEY = "sk-e2e-real-qwen-0123456789"
OPENCODE_KEY = "sk-e2e-real-opencode-0123456789"
OPENAI_V1 = "https://api.openai.com/v1"  # the fake upstream answers for it (tests/fakes/redirect.py)

QWEN_CWD = "I'm currently working in the directory: "
QWEN_EXTRACTION = "You are now acting as the managed memory extraction subagent"
QWEN_EXTRACTION_TASK = "Managed memory has TWO directories."
OPENCODE_CWD = "  Working directory: "
OPENCODE_TITLE = "You are a title generator."
OPENCODE_VERSION = "1.18.33"  # tests/clients/package.json

# Qwen Code's usage statistics go to their own host; the YOLO notice is noise on stderr.
QWEN_QUIET = {"QWEN_USAGE_STATISTICS_ENABLED": "false", "QWEN_CODE_SUPPRESS_YOLO_WARNING": "1"}
# opencode's network switches: no model catalogue, update check, sharing, LSP or default-plugin downloads, and no
# reading of Claude Code's files.
OPENCODE_OFFLINE = {
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
}


def qwen(proc: MitmdumpProc, project: Path, prompt: str, home: Path, *flags: str, wrap: bool = False) -> str:
    """`qwen [flags] -p prompt -y`, its OpenAI-compatible provider set by the three variables it needs together
    (OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL). By hand it honours HTTPS_PROXY with NODE_EXTRA_CA_CERTS."""
    home.mkdir(parents=True, exist_ok=True)  # it resolves $HOME's real path at start-up and stops without one
    env = isolated_env(home) | QWEN_QUIET
    env |= {"OPENAI_API_KEY": QWEN_KEY, "OPENAI_BASE_URL": OPENAI_V1, "OPENAI_MODEL": "qwen3-coder-plus"}
    if not wrap:
        env |= {"HTTPS_PROXY": proc.proxy_url, "NODE_EXTRA_CA_CERTS": str(proc.ca_path)}
    return run_client(proc, project, [str(installed_client("qwen")), *flags, "-p", prompt, "-y"], env, wrap=wrap).strip()


def opencode_config(home: Path, base_url: str, context: int | None = None) -> None:
    """opencode's global config in `home`: one provider on `base_url` through the Chat Completions SDK opencode
    bundles (`@ai-sdk/openai-compatible`, so nothing is installed for it), its model the default.

    At start opencode also installs `@opencode-ai/plugin` into its config directory unless that directory's
    package.json and package-lock.json already list it beside a node_modules: they are written here, so it reaches
    no registry."""
    config = home / ".config/opencode"  # $XDG_CONFIG_HOME/opencode, as isolated_env sets it
    (config / "node_modules").mkdir(parents=True, exist_ok=True)
    plugin = {"@opencode-ai/plugin": OPENCODE_VERSION}
    (config / "package.json").write_text(json.dumps({"dependencies": plugin}))
    (config / "package-lock.json").write_text(json.dumps({"lockfileVersion": 3, "packages": {"": {"dependencies": plugin}}}))
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "OpenAI-compatible",
        "options": {"baseURL": base_url, "apiKey": "{env:OPENAI_API_KEY}"},
        "models": {"gpt-4o-mini": {"name": "gpt-4o-mini",
                                   **({"limit": {"context": context, "output": 1000}} if context else {})}},
    }
    settings = {"autoupdate": False, "share": "disabled", "provider": {"upstream": provider}, "model": "upstream/gpt-4o-mini"}
    (config / "opencode.json").write_text(json.dumps(settings))


def opencode(
    proc: MitmdumpProc, project: Path, prompt: str, home: Path, *flags: str, wrap: bool = False, base_url: str = OPENAI_V1,
    context: int | None = None,
) -> str:
    """`opencode run [flags] prompt` with `opencode_config` (`context`: the model's context window, in tokens); by hand
    it honours HTTPS_PROXY with NODE_EXTRA_CA_CERTS. opencode takes its directory from $PWD, which run_client sets. It
    quotes a message holding spaces ("…") in the request."""
    opencode_config(home, base_url, context)
    env = isolated_env(home) | OPENCODE_OFFLINE | {"OPENAI_API_KEY": OPENCODE_KEY}
    if not wrap:
        env |= {"HTTPS_PROXY": proc.proxy_url, "NODE_EXTRA_CA_CERTS": str(proc.ca_path)}
    return run_client(proc, project, [str(installed_client("opencode")), "run", *flags, prompt], env, wrap=wrap).strip()


def chat_calls(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """The bodies of the Chat Completions calls the upstream received, in order."""
    return [r.json for r in upstream.requests if r.method == "POST" and r.path == "/v1/chat/completions"]


def text_of(message: dict[str, Any]) -> str:
    """A Chat Completions message's text: its string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def system_text(body: dict[str, Any]) -> str:
    return "\n".join(text_of(m) for m in body["messages"] if m.get("role") == "system")


def qwen_turns(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return [b for b in chat_calls(upstream) if not system_text(b).startswith(QWEN_EXTRACTION)]


def qwen_extractions(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return [b for b in chat_calls(upstream) if system_text(b).startswith(QWEN_EXTRACTION)]


def opencode_turns(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return [b for b in chat_calls(upstream) if not system_text(b).startswith(OPENCODE_TITLE)]


def opencode_titles(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return [b for b in chat_calls(upstream) if system_text(b).startswith(OPENCODE_TITLE)]


def git_repo(path: Path) -> Path:
    """`path` made a git repository with one commit (as a real project would have)."""
    path.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(path), "-c", "user.name=memproxy", "-c", "user.email=memproxy@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    return path


# --- What each client sends --------------------------------------------------------------------------------------


def test_qwen_code_on_the_wire(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(tmp_path / "memories.db")})
    alpha = tmp_path / "alpha"
    upstream.reply = "Noted: alpha deploys with Nomad."
    assert qwen(proc, alpha, "We deploy the alpha service with Nomad.", tmp_path / "home") == upstream.reply
    assert wait_until(lambda: qwen_extractions(upstream)), [r.path for r in upstream.requests]
    assert {r.path for r in upstream.requests} == {"/v1/chat/completions"}  # no other call reached the API host
    assert all(r.headers["user-agent"].startswith("QwenCode/0.24.4 (") for r in upstream.requests)

    # The turn: the working directory in a text part of the first user message, before the prompt.
    turn = qwen_turns(upstream)[0]
    assert turn["stream"] is True and [m["role"] for m in turn["messages"]] == ["system", "user"]
    parts = [p["text"] for p in turn["messages"][1]["content"]]
    startup = next(p for p in parts if QWEN_CWD in p)
    assert startup.startswith("<system-reminder>\nThis is the Qwen Code. We are setting up the context for our chat.")
    assert f"\n{QWEN_CWD}{alpha}\n" in startup
    assert parts[-1] == "We deploy the alpha service with Nomad."

    # The managed-memory extraction after the turn replays it (working directory included), then gives its task.
    extraction = qwen_extractions(upstream)[0]
    assert f"{QWEN_CWD}{alpha}\n" in text_of(extraction["messages"][1])
    assert text_of(extraction["messages"][-1]).startswith(QWEN_EXTRACTION_TASK)


def test_opencode_on_the_wire(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(tmp_path / "memories.db")})
    alpha = git_repo(tmp_path / "alpha")
    upstream.reply = "Noted: alpha deploys with Nomad."
    assert opencode(proc, alpha / "src", "We deploy the alpha service with Nomad.", tmp_path / "home") == upstream.reply
    assert {r.path for r in upstream.requests} == {"/v1/chat/completions"}
    assert all(r.headers["user-agent"].startswith(f"opencode/{OPENCODE_VERSION} ai-sdk/") for r in upstream.requests)
    assert all(r.headers.get("x-session-id", "").startswith("ses_") for r in upstream.requests)

    # The turn: one system message with the <env> block, the prompt (quoted: it holds spaces) as the user message.
    (turn,) = opencode_turns(upstream)
    system = system_text(turn)
    assert system.startswith("You are opencode")
    assert f"\n<env>\n{OPENCODE_CWD}{alpha / 'src'}\n  Workspace root folder: {alpha}\n" in system
    assert text_of(turn["messages"][-1]) == '"We deploy the alpha service with Nomad."'

    # The title call: the title agent's prompt only (no <env>, no working directory), then the conversation.
    (title,) = opencode_titles(upstream)
    assert "<env>" not in system_text(title) and str(alpha) not in json.dumps(title)
    assert [text_of(m) for m in title["messages"][1:]] == [
        "Generate a title for this conversation:\n",
        '"We deploy the alpha service with Nomad."',
    ]
    assert "tools" not in title


def test_qwen_code_and_opencode_through_a_reverse_listener(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Without the CA: the base URL at a reverse listener (OPENAI_BASE_URL for Qwen Code, baseURL for opencode)."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="reverse", upstream=upstream, options={"memory_db": str(db)})
    home = tmp_path / "home"
    env = isolated_env(home) | QWEN_QUIET
    env |= {"OPENAI_API_KEY": QWEN_KEY, "OPENAI_BASE_URL": f"{proc.base_url}/v1", "OPENAI_MODEL": "qwen3-coder-plus"}
    home.mkdir()
    upstream.reply = "Noted: gamma uses SQLite."
    out = run_client(proc, tmp_path / "gamma", [str(installed_client("qwen")), "-p", "Gamma uses SQLite."], env, wrap=False)
    assert out.strip() == upstream.reply
    assert opencode(proc, tmp_path / "delta", "Delta uses Postgres.", home, base_url=f"{proc.base_url}/v1") == upstream.reply
    assert {r.headers["user-agent"].split("/")[0] for r in upstream.requests} == {"QwenCode", "opencode"}
    assert wait_until(lambda: len(qwen_extractions(upstream)) == 1)
    assert wait_memories(db, "project:gamma") == [f"User: Gamma uses SQLite.\nAssistant: {upstream.reply}"]
    assert wait_memories(db, "project:delta") == [f'User: "Delta uses Postgres."\nAssistant: {upstream.reply}']
    assert len(every_memory(db)) == 2
    assert QWEN_KEY not in proc.log_text() and OPENCODE_KEY not in proc.log_text()


# --- One memory per project ----------------------------------------------------------------------------------------


def every_memory(db: Path) -> list[tuple[str, str, str | None]]:
    """(scope, content, tool) of every memory in the local store at `db`, whatever its scope."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT scope, content, metadata FROM memories ORDER BY id").fetchall()
    return [(scope, content, json.loads(metadata).get("tool")) for scope, content, metadata in rows]


def test_qwen_code_remembers_per_project(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, alpha, beta = tmp_path / "home", git_repo(tmp_path / "alpha"), tmp_path / "beta"

    upstream.reply = "Noted: alpha deploys with Nomad."
    assert qwen(proc, alpha, "We deploy the alpha service with Nomad.", home) == upstream.reply
    assert wait_until(lambda: len(qwen_extractions(upstream)) == 1)
    assert MEMORY_TAG not in json.dumps(qwen_turns(upstream)[-1])
    stored = wait_memories(db, "project:alpha")
    assert len(stored) == 1, proc.log_text()
    assert "alpha service with Nomad" in stored[0] and upstream.reply in stored[0]

    upstream.reply = "I don't know yet."
    assert qwen(proc, beta, "How does the beta service deploy?", home, wrap=True) == upstream.reply
    assert wait_until(lambda: len(qwen_extractions(upstream)) == 2)
    assert MEMORY_TAG not in json.dumps(qwen_turns(upstream)[-1])  # alpha's memory stays in alpha
    assert len(wait_memories(db, "project:beta")) == 1

    upstream.reply = "With Nomad."
    assert qwen(proc, alpha / "src", "How does the alpha service deploy?", home) == upstream.reply
    assert wait_until(lambda: len(qwen_extractions(upstream)) == 3)
    sent = json.dumps(qwen_turns(upstream)[-1])
    assert f"{QWEN_CWD}{alpha / 'src'}" in sent  # started in a subdirectory: still the alpha project
    assert MEMORY_TAG in sent and "alpha service with Nomad" in sent
    assert ", Qwen Code) " in sent  # the recalled note says which tool wrote it
    assert "beta service" not in sent

    # The extraction calls are auxiliary: nothing recalled into them, nothing of theirs stored, in any scope.
    assert all(MEMORY_TAG not in json.dumps(call) for call in qwen_extractions(upstream))
    assert len(wait_memories(db, "project:alpha", 2)) == 2
    kept = every_memory(db)
    assert sorted(scope for scope, _, _ in kept) == ["project:alpha", "project:alpha", "project:beta"], kept
    assert {tool for _, _, tool in kept} == {"Qwen Code"}
    assert not any(QWEN_EXTRACTION_TASK in content for _, content, _ in kept)
    assert "beta service" not in json.dumps(memories(db, "project:alpha"))
    assert QWEN_KEY not in json.dumps(kept) + proc.log_text()


def test_opencode_remembers_per_project(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, alpha, beta = tmp_path / "home", git_repo(tmp_path / "alpha"), tmp_path / "beta"

    upstream.reply = "Noted: alpha deploys with Nomad."
    assert opencode(proc, alpha, "We deploy the alpha service with Nomad.", home, wrap=True) == upstream.reply
    assert MEMORY_TAG not in json.dumps(opencode_turns(upstream)[-1])
    stored = wait_memories(db, "project:alpha")
    assert len(stored) == 1, proc.log_text()
    assert "alpha service with Nomad" in stored[0] and upstream.reply in stored[0]

    upstream.reply = "I don't know yet."
    assert opencode(proc, beta, "How does the beta service deploy?", home) == upstream.reply
    assert MEMORY_TAG not in json.dumps(opencode_turns(upstream)[-1])  # alpha's memory stays in alpha
    assert len(wait_memories(db, "project:beta")) == 1

    upstream.reply = "With Nomad."
    assert opencode(proc, alpha / "src", "How does the alpha service deploy?", home) == upstream.reply
    sent = json.dumps(opencode_turns(upstream)[-1])
    assert f"{OPENCODE_CWD}{alpha / 'src'}" in sent  # started in a subdirectory: still the alpha project
    assert MEMORY_TAG in sent and "alpha service with Nomad" in sent
    assert ", opencode) " in sent  # the recalled note says which tool wrote it
    assert "beta service" not in sent

    # The title calls are auxiliary: nothing recalled into them, nothing of theirs stored, in any scope.
    titles = opencode_titles(upstream)
    assert len(titles) == 3 and all(MEMORY_TAG not in json.dumps(call) for call in titles)
    assert len(wait_memories(db, "project:alpha", 2)) == 2
    kept = every_memory(db)
    assert sorted(scope for scope, _, _ in kept) == ["project:alpha", "project:alpha", "project:beta"], kept
    assert {tool for _, _, tool in kept} == {"opencode"}
    assert not any("Generate a title" in content for _, content, _ in kept)
    assert "beta service" not in json.dumps(memories(db, "project:alpha"))
    assert OPENCODE_KEY not in json.dumps(kept) + proc.log_text()


def test_opencode_compacting_its_conversation_stores_neither_the_summary_nor_what_goes_on_from_it(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """opencode compacts a conversation that outgrows its model's context: its summarization agent gets the
    conversation, then the conversation goes on from the summary with messages opencode writes itself ("What did
    we do so far?", the summary, "Continue if you have next steps…"). None of that is a prompt of the user's."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, project = tmp_path / "home", git_repo(tmp_path / "shop")
    seed(db, "opencode", "User: Which files are in the repository?\nAssistant: An answer of another project.")
    reported: list[int] = []

    def tokens(data: Any) -> int:
        """The first answer of the main agent says its context is nearly full."""
        big = 7000 not in reported and isinstance(data, dict) and bool(data.get("tools"))
        reported.append(7000 if big else 100)
        return reported[-1]

    upstream.prompt_tokens = tokens
    upstream.reply = "The repository holds three files."
    assert opencode(proc, project, "Which files are in the repository?", home, context=8000).endswith(upstream.reply)
    calls = chat_calls(upstream)
    summarizing = [c for c in calls if text_of(c["messages"][0]).startswith("You are a context summarization agent")]
    assert summarizing and all(MEMORY_TAG not in json.dumps(c) for c in summarizing), proc.log_text()
    went_on = [c for c in calls if "Continue if you have next steps" in text_of(c["messages"][-1])]
    assert went_on, [text_of(c["messages"][-1])[:80] for c in calls]
    assert wait_until(lambda: wait_memories(db, "project:shop") != [])
    time.sleep(1.5)  # a later capture has landed by now, if any came
    kept = every_memory(db)
    assert sorted((scope, content) for scope, content, _ in kept) == [
        ("opencode", "User: Which files are in the repository?\nAssistant: An answer of another project."),
        ("project:shop", 'User: "Which files are in the repository?"\nAssistant: The repository holds three files.'),
    ], kept


CONTINUE = "Continue if you have next steps"


def test_opencode_compacting_in_the_middle_of_a_tool_loop_keeps_the_prompts_one_memory(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """opencode compacts between two steps of a tool loop, then goes on with "What did we do so far?", the summary
    and "Continue if you have next steps…": the prompt is no longer in the request, but its session
    (`x-session-id`) is the same. The answer it goes on to is the prompt's final answer, in its one memory."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, project = tmp_path / "home", git_repo(tmp_path / "shop")
    final, summary = "The repository holds three files.", "The agent listed the files of the repository."
    reported: list[int] = []

    def summarizing(data: Any) -> bool:
        return text_of(data["messages"][0]).startswith("You are a context summarization agent")

    def tokens(data: Any) -> int:
        """The first step of the main agent says its context is nearly full."""
        big = 7000 not in reported and isinstance(data, dict) and bool(data.get("tools"))
        reported.append(7000 if big else 100)
        return reported[-1]

    call = ToolCall("bash", {"command": "printf a.py", "description": "List the files"}, "I will list the files first.")
    upstream.tool_call = lambda data: call if data.get("tools") and not summarizing(data) and CONTINUE not in json.dumps(data) else None
    upstream.prompt_tokens = tokens
    upstream.reply_for = lambda rec: summary if summarizing(rec.json) else final
    assert opencode(proc, project, "Which files are in the repository?", home, context=8000).endswith(final)
    went_on = [c for c in chat_calls(upstream) if CONTINUE in text_of(c["messages"][-1])]
    assert went_on and "Which files are in the repository?" not in json.dumps(went_on[0]), proc.log_text()
    assert wait_until(lambda: any(final in content for _, content, _ in every_memory(db)))
    time.sleep(1.5)  # a later capture has landed by now, if any came
    assert [(scope, content) for scope, content, _ in every_memory(db)] == [
        ("project:shop", f'User: "Which files are in the repository?"\nAssistant: {final}')], proc.log_text()


QWEN_COMPACTING = "You are the component that summarizes a conversation when its context window is about to overflow"
RESUME = "Resume the prior task using the summary above."


@pytest.mark.parametrize("restarted", [False, True], ids=["", "restarted"])
def test_qwen_code_compacting_in_a_tool_loop_stores_neither_the_summary_nor_its_instruction(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, restarted: bool
) -> None:
    """Qwen Code compacts a conversation past its threshold (`context.autoCompactThreshold`, here 1 %) before the
    next step of a tool loop: it asks for the summary in the conversation itself, its instruction the last message
    (or apart, with that instruction as system prompt), then goes on from a user message of its own holding the
    summary ("… Resume the prior task using the summary above."). Neither request is recalled into nor stored. The
    summary names no working directory, but the session (`prompt_cache_key`) is the same: the steps after it stay
    in the project, recalled into from it and not from Qwen Code's scope of no project, and answer the prompt,
    whose one memory ends with the loop's final answer. So too when memproxy restarts while the tool runs, before
    the summary: its threads file keeps the session's prompt and project."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, project = tmp_path / "home", git_repo(tmp_path / "shop")
    (home / ".qwen").mkdir(parents=True)
    (home / ".qwen/settings.json").write_text(json.dumps({"context": {"autoCompactThreshold": 0.01}}))
    # A memory sharing words with the instruction: recall would give it to the request for the summary.
    known = "User: Summarize the conversation before the context window overflows.\nAssistant: Keep the summary dense."
    seed(db, "project:shop", known)
    listed = "User: Which files does the repository list?\nAssistant: The manifest lists them."
    seed(db, "project:shop", listed)
    seed(db, "qwen-code", "User: Which files are in the other repository?\nAssistant: Only other.py.")

    def compacting(data: Any) -> bool:
        return QWEN_COMPACTING in json.dumps(data.get("messages", []))

    started = tmp_path / "tool-started"  # the tool writes it, then waits while memproxy restarts
    command = f"printf x > {started}; sleep 8; printf a.py" if restarted else "printf a.py"

    def call(data: Any) -> ToolCall | None:
        offered = [t.get("function", {}).get("name") for t in data.get("tools") or []]
        return None if compacting(data) or "run_shell_command" not in offered else ToolCall(
            "run_shell_command", {"command": command, "description": "List the files"})

    restarting = restart_once(proc, started, restarted)
    upstream.tool_call = call
    upstream.prompt_tokens = lambda data: 200_000  # each answer says the context is far past the threshold
    snapshot = "<state_snapshot>\n<primary_request_and_intent>List the files.</primary_request_and_intent>\n</state_snapshot>"
    upstream.reply_for = lambda rec: f"<analysis>…</analysis>\n{snapshot}" if compacting(rec.json) else "Three files."
    qwen(proc, project, "Which files are in the repository?", home)
    restarting.join()
    assert started.exists() == restarted
    calls = qwen_turns(upstream)
    asked = [c for c in calls if compacting(c)]
    assert asked and all(MEMORY_TAG not in json.dumps(c) for c in asked), proc.log_text()
    went_on = [c for c in calls if RESUME in json.dumps(c["messages"]) and not compacting(c)]
    assert went_on and all(QWEN_CWD not in json.dumps(c) for c in went_on)  # from the summary, no directory named
    assert all("The manifest lists them." in json.dumps(c) and "other.py" not in json.dumps(c) for c in went_on), proc.log_text()
    assert wait_until(lambda: len(every_memory(db)) > 3)
    time.sleep(1.5)  # a later capture has landed by now, if any came
    kept = [(scope, content) for scope, content, _ in every_memory(db) if scope == "project:shop"]
    assert kept == [("project:shop", known), ("project:shop", listed),
                    ("project:shop", "User: Which files are in the repository?\nAssistant: Three files.")], kept
    assert len(every_memory(db)) == 4


@pytest.mark.parametrize("tool", ["qwen", "opencode"])
def test_a_resumed_session_is_never_given_its_own_turn(mitmdump, upstream: FakeUpstream, tmp_path: Path, tool: str) -> None:
    """`--continue` sends the session's history again: its turn is an echo there, and a memory in a new session."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, project = tmp_path / "home", git_repo(tmp_path / "shop")
    client, turns = {"qwen": (qwen, qwen_turns), "opencode": (opencode, opencode_turns)}[tool]
    prompt, answer = "How does the shop service deploy?", "The shop service deploys with Nomad."

    upstream.reply = answer
    assert client(proc, project, prompt, home) == answer
    [stored] = wait_memories(db, "project:shop")
    assert prompt in stored and stored.endswith(f"Assistant: {answer}"), proc.log_text()  # opencode quotes the prompt

    upstream.clear()
    upstream.reply = "On three nodes."
    assert client(proc, project, "How many nodes does the shop service deploy to?", home, "--continue") == upstream.reply
    resumed = turns(upstream)
    assert prompt in json.dumps(resumed[0]) and answer in json.dumps(resumed[0]), proc.log_text()  # the history came back
    assert all(MEMORY_TAG not in json.dumps(body) for body in resumed), proc.log_text()

    upstream.clear()  # a new session asking the same is given the turn
    client(proc, project, prompt, home)
    sent = json.dumps(turns(upstream)[0])
    assert MEMORY_TAG in sent and answer in sent
