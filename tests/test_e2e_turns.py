"""End to end: one memory per user prompt across tool loops, and no echoes, with real clients through a real
mitmdump. The fake upstream answers each prompt with a tool call first (the text said before it, then the call),
and the request carrying the tool's result with the final answer. Each prompt leaves exactly one memory, holding
the final answer and never the tool's output, with the tools it called in its metadata; a conversation is never
given its own prompts and answers back as memories, while the same question asked in another conversation is.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SUPERMEMORY_KEY, MitmdumpProc
from e2e_helpers import MEMORY_TAG, isolated_env, memories, once_it_exists, restart_once, seed, seed_store, wait_until
from e2e_helpers import installed_client as installed
from e2e_helpers import run_client as run
from fakes import FakeUpstream, ToolCall
from fakes.supermemory import FakeSupermemory
from memproxy.memory.base import Memory
from memproxy.memory.local import LocalStore
from memproxy.memory.supermemory import SupermemoryStore, container_tag
from memproxy.scrub import scrub
from memproxy.threads import KEPT_TURNS
from secret_corpus import fakes
from test_e2e_clients import answer_classifier, gemini, gemini_calls
from test_e2e_more_clients import chat_calls, git_repo, opencode, qwen

pytestmark = pytest.mark.e2e

PROMPT = "Which files are in the repository?"
FINAL = "The repository holds three files."
NEWER = "Four files now: a Dockerfile came in since it was last asked."  # the same prompt in a later session
OUTPUT = "tool-output-7f3a"  # what the tool prints: never stored


class Backend:
    """The store a mitmdump keeps memories in: the local one, or Supermemory (its fake), which both update a
    memory stored again with its custom id."""

    def __init__(self, name: str, tmp_path: Path, supermemory: FakeSupermemory | None) -> None:
        self.name, self.db, self.supermemory = name, tmp_path / "memories.db", supermemory
        self.options = {"memory_db": str(self.db), "memory_outbox": str(tmp_path / "outbox.db")}
        self.env = {}
        if supermemory is not None:
            self.env = {"SUPERMEMORY_API_KEY": supermemory.api_key, "SUPERMEMORY_BASE_URL": supermemory.url}

    def stored(self, scope: str) -> list[tuple[str, list[str]]]:
        """(content, tools called) of each memory of `scope` (with Supermemory: of every container, one here)."""
        return [(content, json.loads(calls) if isinstance(calls, str) else calls) for content, calls, _ in self.memories(scope)]

    def conversations(self, scope: str) -> set[str]:
        """The conversations the memories of `scope` name."""
        return {conversation for _, _, conversation in self.memories(scope)}

    def memories(self, scope: str) -> list[tuple[str, Any, Any]]:
        if self.supermemory is not None:
            docs = list(self.supermemory.documents.values())
            return [(d.content, d.metadata.get("calls", "[]"), d.metadata.get("conversation")) for d in docs]

        async def go() -> list[Memory]:
            store = LocalStore(self.db)
            try:
                return await store.list(scope)
            finally:
                await store.close()

        found = asyncio.run(go()) if self.db.exists() else []
        return [(m.content, m.metadata.get("calls", []), m.metadata.get("conversation")) for m in found]

    def settled(self, scope: str, content: str) -> list[tuple[str, list[str]]]:
        """The memories of `scope` once one holds `content` (capture is asynchronous), or as they are after a wait."""
        wait_until(lambda: any(c == content for c, _ in self.stored(scope)))
        return self.stored(scope)


@pytest.fixture(params=["local", "supermemory", "supermemory-own-words"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The local store; Supermemory answering with what it stored; Supermemory answering with what it wrote from
    that in its own words, which no conversation holds (the echo check asks whether it holds the turns instead)."""
    if request.param == "local":
        yield Backend("local", tmp_path, None)
        return
    with FakeSupermemory(SUPERMEMORY_KEY) as fake:
        fake.own_words = request.param == "supermemory-own-words"
        yield Backend(request.param, tmp_path, fake)


def tool_names(data: Any) -> list[str]:
    tools = data.get("tools") if isinstance(data, dict) else None
    return [str(t.get("name") or (t.get("function") or {}).get("name")) for t in tools or () if isinstance(t, dict)]


# -- Claude Code and Gemini CLI ---------------------------------------------------------------------------------


def claude(proc: MitmdumpProc, project: Path, home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    env = isolated_env(home) | {
        "ANTHROPIC_API_KEY": "sk-ant-fake-e2e-turns",
        "HTTPS_PROXY": proc.proxy_url,
        "NODE_EXTRA_CA_CERTS": str(proc.ca_path),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    } | (env or {})
    return run(proc, project, [str(installed("claude")), *args], env, wrap=False).strip()


def main_calls(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """Claude Code's conversation requests (those offering its tools), in order."""
    return [r.json for r in upstream.requests if r.path == "/v1/messages" and "Bash" in tool_names(r.json)]


def declared(data: Any) -> list[str]:
    """The names of the functions a Gemini request declares."""
    tools = data.get("tools") if isinstance(data, dict) else None
    return [str(f.get("name")) for t in tools or () if isinstance(t, dict) for f in t.get("functionDeclarations") or ()]


@dataclass(frozen=True)
class Cli:
    """A CLI in a tool loop: how it runs a prompt (it prints the text of each step), its conversation requests,
    the tool it is asked to call and the offer of that tool, the flags that resume its last session, and whether
    its requests name their session."""

    ask: Callable[[MitmdumpProc, Path, Path, str, tuple[str, ...]], str]
    calls: Callable[[FakeUpstream], list[dict[str, Any]]]
    tool: str
    offers: Callable[[Any], list[str]]
    resume: tuple[str, ...]
    names_its_session: bool


CLIS = {
    # Claude Code runs Bash only where --allowedTools lets it.
    "claude": Cli(lambda proc, project, home, prompt, flags: claude(proc, project, home, *flags, "-p", prompt,
                                                                    "--allowedTools", "Bash"),
                  main_calls, "Bash", tool_names, ("-c",), True),
    # Gemini CLI (--yolo: its shell tool without asking) answers a functionCall with a functionResponse.
    "gemini": Cli(lambda proc, project, home, prompt, flags: gemini(proc, project, prompt, home, "--yolo", *flags),
                  lambda upstream: gemini_calls(upstream, "streamGenerateContent"), "run_shell_command", declared,
                  ("--resume", "latest"), False),
}


@pytest.mark.parametrize("name", list(CLIS))
def test_a_cli_tool_loop_is_one_memory_and_never_its_own_echo(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, backend: Backend, name: str
) -> None:
    cli = CLIS[name]
    proc = mitmdump(mode="regular", upstream=upstream, options=backend.options, env=backend.env)
    home, project = tmp_path / "home", tmp_path / "shop"
    # The tool takes a moment, so the step before it is stored before the loop's next request is recalled for.
    call = ToolCall(cli.tool, {"command": f"sleep 1; printf {OUTPUT}", "description": "List the files"})
    upstream.tool_call = lambda data: call if cli.tool in cli.offers(data) else None
    upstream.reply = FINAL
    answer_classifier(upstream)  # Gemini CLI's; no other client asks for JSON

    assert cli.ask(proc, project, home, PROMPT, ()).endswith(FINAL)
    loop = cli.calls(upstream)
    assert len(loop) == 2 and OUTPUT in json.dumps(loop[1]), proc.log_text()  # the tool ran; its result went back
    memories = backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert memories == [(f"User: {PROMPT}\nAssistant: {FINAL}", [cli.tool])], proc.log_text()
    assert all(MEMORY_TAG not in json.dumps(body) for body in loop)  # its own first step was not recalled into it

    # The session resumed: the conversation holds the prompt and its answer, so their memory is an echo.
    upstream.clear()
    follow_up = "Which of the files in the repository is the largest?"
    upstream.reply = "The largest is the README."
    assert cli.ask(proc, project, home, follow_up, cli.resume).endswith(upstream.reply)
    resumed = cli.calls(upstream)
    assert PROMPT in json.dumps(resumed[0]) and FINAL in json.dumps(resumed[0])  # the history came back
    assert all(MEMORY_TAG not in json.dumps(body) for body in resumed), proc.log_text()
    memories = backend.settled("project:shop", f"User: {follow_up}\nAssistant: {upstream.reply}")
    assert len(memories) == 2 and not any(OUTPUT in content for content, _ in memories)
    [conversation] = backend.conversations("project:shop")  # both turns name their one conversation
    assert isinstance(conversation, str) and len(conversation) == 16

    # Another session asking the same question is given the first one's answer, and its own answer is a memory
    # beside it. Gemini CLI names no session: its prompt's text alone names the memory, which the answer replaces.
    upstream.clear()
    upstream.reply = NEWER
    assert cli.ask(proc, project, home, PROMPT, ()).endswith(NEWER)
    fresh = cli.calls(upstream)
    assert MEMORY_TAG in json.dumps(fresh[0]) and FINAL in json.dumps(fresh[0])
    memories = backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {NEWER}")
    assert (f"User: {PROMPT}\nAssistant: {FINAL}", [cli.tool]) in memories or not cli.names_its_session, proc.log_text()
    assert len(memories) == 2 + cli.names_its_session and not any(OUTPUT in content for content, _ in memories)


def test_claude_code_tool_loop_ending_in_an_answer_given_before_joins_that_memory(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, backend: Backend
) -> None:
    """Real Claude Code is asked a question it was asked before with one word changed, in a new session: the first
    time it answered at once, now after a tool loop whose first step says something else. The loop's final answer
    nearly repeats the first memory, so it joins that memory instead of being stored beside it."""
    proc = mitmdump(mode="regular", upstream=upstream, options=backend.options, env=backend.env)
    home, project = tmp_path / "home", tmp_path / "shop"
    asked = "Which files does the repository hold at its top level?"
    answer = "The repository holds three files at its top level: README.md, Makefile and setup.cfg."
    upstream.reply = answer
    assert claude(proc, project, home, "-p", asked).endswith(answer)
    backend.settled("project:shop", f"User: {asked}\nAssistant: {answer}")

    again = asked.replace("hold", "keep")
    call = ToolCall("Bash", {"command": f"sleep 1; printf {OUTPUT}", "description": "List the files"})
    upstream.tool_call = lambda data: call if "Bash" in tool_names(data) else None
    assert claude(proc, project, home, "-p", again, "--allowedTools", "Bash").endswith(answer)
    assert len(main_calls(upstream)) == 3, proc.log_text()  # the first session's call, then the loop's two steps
    wait_until(lambda: backend.stored("project:shop") == [(f"User: {again}\nAssistant: {answer}", ["Bash"])])
    assert backend.stored("project:shop") == [(f"User: {again}\nAssistant: {answer}", ["Bash"])], proc.log_text()


def test_claude_code_bare_keeps_the_memory_of_its_project(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    """`claude --bare` writes no environment section, only a block naming its directory and the date: its turn
    is still its project's memory, and the next session in that project is given it."""
    backend, proc, home, project = on_the_local_store(mitmdump, upstream, tmp_path)
    upstream.reply = FINAL
    assert claude(proc, project, home, "--bare", "-p", PROMPT).endswith(FINAL)
    assert backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {FINAL}") == [
        (f"User: {PROMPT}\nAssistant: {FINAL}", [])], proc.log_text()
    upstream.clear()
    claude(proc, project, home, "--bare", "-p", "Which files does the repository hold?")
    sent = [json.dumps(r.json) for r in upstream.requests if r.path == "/v1/messages"]
    assert any(MEMORY_TAG in body and FINAL in body for body in sent), proc.log_text()


def on_the_local_store(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> tuple[Backend, MitmdumpProc, Path, Path]:
    """A mitmdump keeping memories in the local store; the home and the project directory a client runs in."""
    backend = Backend("local", tmp_path, None)
    proc = mitmdump(mode="regular", upstream=upstream, options=backend.options)
    return backend, proc, tmp_path / "home", tmp_path / "shop"


@dataclass(frozen=True)
class Subagents:
    """How a CLI's main agent hands a task to a subagent: the tool it calls with what arguments, the flags that
    let it, what tells the subagent's requests apart, and the scope a CLI's request of unknown project gets."""

    cli: Cli
    call: ToolCall
    flags: tuple[str, ...]
    is_subagent: Callable[[Any], bool]
    catch_all: str
    files: tuple[tuple[str, str], ...] = ()  # (path, text) written into the project first: an agent of its own


def chat_cli(run: Callable[..., str]) -> Cli:
    """Qwen Code or opencode (`test_e2e_more_clients`) as a Cli: their turns are Chat Completions calls."""
    return Cli(lambda proc, project, home, prompt, flags: run(proc, project, prompt, home, *flags),
               lambda upstream: [b for b in chat_calls(upstream) if b.get("tools")], "", tool_names, (), True)


def first_message(data: Any) -> str:
    messages = data.get("messages") if isinstance(data, dict) else None
    return json.dumps(messages[0]) if isinstance(messages, list) and messages else ""


TASK = "List the files of the repository."
SUBAGENTS = {
    "claude": Subagents(
        CLIS["claude"], ToolCall("Agent", {"description": "List the files", "prompt": TASK, "subagent_type": "general-purpose"}),
        ("--allowedTools", "Agent"), lambda data: "cc_is_subagent=true" in json.dumps(data.get("system")), "claude-code"),
    "gemini": Subagents(
        CLIS["gemini"], ToolCall("invoke_agent", {"agent_name": "codebase_investigator", "prompt": TASK}),
        ("--yolo",), lambda data: "complete_task" in declared(data), "gemini-cli"),
    # Qwen Code runs the agent in the background, and tells the main agent of its end in a user message.
    "qwen": Subagents(
        chat_cli(qwen), ToolCall("agent", {"description": "List the files", "prompt": TASK, "subagent_type": "general-purpose"}),
        (), lambda data: "working for a parent agent" in first_message(data), "qwen-code"),
    # An agent of the project's own (.qwen/agents): Qwen Code adds its rules for an agent on its own to its prompt.
    "qwen-custom": Subagents(
        chat_cli(qwen), ToolCall("agent", {"description": "List the files", "prompt": TASK, "subagent_type": "file-lister"}),
        (), lambda data: first_message(data).startswith('{"role": "system", "content": "You list files.'), "qwen-code",
        ((".qwen/agents/file-lister.md", "---\nname: file-lister\ndescription: Lists the files of a repository.\n---\n\n"
          "You list files. Report their names only.\n"),)),
    # opencode's subagent is offered every tool but `task`.
    "opencode": Subagents(
        chat_cli(opencode), ToolCall("task", {"description": "List the files", "prompt": TASK, "subagent_type": "general"}),
        (), lambda data: "task" not in tool_names(data), "opencode"),
}


@pytest.mark.parametrize("name", list(SUBAGENTS))
def test_a_subagent_recalls_its_project_and_stores_nothing(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, name: str
) -> None:
    """A subagent (Claude Code's Agent tool, Gemini CLI's invoke_agent, Qwen Code's agent, opencode's task) gets
    a task the main agent wrote: no user prompt of its own."""
    agents, cli = SUBAGENTS[name], SUBAGENTS[name].cli
    backend, proc, home, project = on_the_local_store(mitmdump, upstream, tmp_path)
    known = "User: How are the files of the repository listed?\nAssistant: With git ls-files."
    seed(backend.db, "project:shop", known)
    for path, text in agents.files:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(text)
    called: list[Any] = []

    def call(data: Any) -> ToolCall | None:
        """The agent tool, once: in the main agent's first request."""
        if called or not isinstance(data, dict) or agents.call.name not in cli.offers(data) or agents.is_subagent(data):
            return None
        called.append(data)
        return agents.call

    upstream.tool_call = call
    upstream.reply = FINAL
    answer_classifier(upstream)

    assert cli.ask(proc, project, home, PROMPT, agents.flags).endswith(FINAL)
    subagent = [body for body in cli.calls(upstream) if agents.is_subagent(body)]
    assert subagent and TASK in json.dumps(subagent[0]), proc.log_text()
    assert MEMORY_TAG in json.dumps(subagent[0]) and "git ls-files" in json.dumps(subagent[0])  # the project's
    wait_until(lambda: any(content.endswith(f"Assistant: {FINAL}") for content, _ in backend.stored("project:shop")))
    contents = [content.replace('"', "") for content, _ in backend.stored("project:shop")]  # opencode quotes a prompt
    assert sorted(contents) == sorted([known, f"User: {PROMPT}\nAssistant: {FINAL}"]), proc.log_text()
    assert backend.stored(agents.catch_all) == [], proc.log_text()  # no scope of its own either


def test_claude_code_resumed_is_never_given_its_own_turn_whose_secret_was_scrubbed(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The stored turn shows a marker where the prompt held a token; the resumed conversation holds the token."""
    backend, proc, home, project = on_the_local_store(mitmdump, upstream, tmp_path)
    token = next(fake for fake in fakes() if fake.kind == "GitHub token")
    prompt = f"Which files are in the repository? Clone it with {token.line} first."
    upstream.reply = FINAL

    assert claude(proc, project, home, "-p", prompt) == FINAL
    stored = f"User: {scrub(prompt).text}\nAssistant: {FINAL}"
    assert token.value not in stored
    assert backend.settled("project:shop", stored) == [(stored, [])], proc.log_text()

    upstream.clear()
    upstream.reply = "The largest is the README."
    assert claude(proc, project, home, "-c", "-p", "Which of the files in the repository is the largest?") == upstream.reply
    resumed = main_calls(upstream)
    assert resumed and token.value in json.dumps(resumed[0])  # the history came back, as the client sent it
    assert all(MEMORY_TAG not in json.dumps(body) for body in resumed), proc.log_text()

    # Another conversation asking the same question is given the turn, its token scrubbed.
    upstream.clear()
    claude(proc, project, home, "-p", "Which files are in the repository?")
    fresh = json.dumps(main_calls(upstream)[0])
    assert MEMORY_TAG in fresh and "[secret: GitHub token]" in fresh and token.value not in fresh


# Claude Code compacts a conversation whose reported input nears its threshold: these set the window to its least
# (100,000 tokens) and the threshold to 1 % of what is left of it (800 tokens), so the fake's report reaches it.
COMPACT_SOON = {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": "100000", "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE": "1"}
SUMMARY = "The user asked which files the repository holds: three."


INTERRUPTED = "[Request interrupted by user for tool use]"  # what Claude Code writes when the user stops a tool
ESCAPES = re.compile(r"\x1b(?:\[[0-9;?>=]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-B]|[=>])")


class Terminal:
    """A client on a pseudo-terminal of its own: what it shows (read in the background), and keys typed to it."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.shown = bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the client has gone
                return
            if not data:
                return
            self.shown += data

    def text(self) -> str:
        """What it showed, without escape sequences or white space (a TUI moves the cursor for some spaces)."""
        return re.sub(r"\s+", "", ESCAPES.sub("", bytes(self.shown).decode("utf-8", "replace")))

    def wait_for(self, shown: str, timeout: float = 60.0) -> None:
        words = re.sub(r"\s+", "", shown)
        assert wait_until(lambda: words in self.text(), timeout), self.text()[-3000:]

    def type(self, text: str) -> None:
        """Type `text`, then Enter a moment later (typed at once, a TUI may take both for a paste)."""
        os.write(self.master, text.encode())
        time.sleep(0.5)
        os.write(self.master, b"\r")

    def press(self, key: bytes) -> None:
        os.write(self.master, key)

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)


def test_claude_code_interrupted_in_a_tool_loop_then_asked_again_keeps_a_memory_per_prompt(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Real Claude Code on a terminal: the user stops the tool its first prompt made it run (Esc) and asks
    something else. Its next request ends with the tool's result, the line it writes for the interruption and the
    new prompt, in one user message. The new prompt is a memory of its own with its answer, the interruption line in
    none; the first prompt keeps its step, which names the tool; and the first prompt's memory, which the
    conversation holds, is not recalled into it."""
    backend, proc, home, project = on_the_local_store(mitmdump, upstream, tmp_path)
    for folder in (project, home):
        folder.mkdir(parents=True, exist_ok=True)
    key = "sk-ant-fake-e2e-turns"
    (home / ".claude.json").write_text(json.dumps({  # onboarding done, the key approved, the folder trusted
        "hasCompletedOnboarding": True, "theme": "dark", "numStartups": 5,
        "customApiKeyResponses": {"approved": [key[-20:]], "rejected": []},
        "projects": {str(project): {"hasTrustDialogAccepted": True, "allowedTools": ["Bash"]}},
    }))
    call = ToolCall("Bash", {"command": "sleep 60; echo done", "description": "Wait"})
    upstream.tool_call = lambda data: call if "Bash" in tool_names(data) and INTERRUPTED not in json.dumps(data) else None
    upstream.reply = FINAL
    env = isolated_env(home) | {"ANTHROPIC_API_KEY": key, "HTTPS_PROXY": proc.proxy_url, "TERM": "xterm-256color",
                                "NODE_EXTRA_CA_CERTS": str(proc.ca_path), "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    again = "And which of them is the largest?"
    terminal = Terminal([str(installed("claude")), "--allowedTools", "Bash"], project, env)
    try:
        terminal.wait_for("? for shortcuts")
        terminal.type(PROMPT)
        terminal.wait_for("Running")  # the tool runs
        terminal.press(b"\x1b")
        terminal.wait_for("Interrupted")
        terminal.type(again)
        memories = backend.settled("project:shop", f"User: {again}\nAssistant: {FINAL}")
    finally:
        terminal.close()
    first, after = main_calls(upstream)
    last = after["messages"][-1]["content"]
    assert [block["type"] for block in last] == ["tool_result", "text", "text"], proc.log_text()
    assert last[1]["text"].strip() == INTERRUPTED and last[2]["text"] == again
    assert MEMORY_TAG not in json.dumps(after), proc.log_text()  # its only memory is the conversation's own
    # The first prompt's memory is its step, which names the tool the user stopped.
    assert sorted(memories) == sorted([(f"User: {again}\nAssistant: {FINAL}", []),
                                       (f"User: {PROMPT}\nAssistant: {call.text}", ["Bash"])]), proc.log_text()


RESUMED = "Continue from where you left off."  # what Claude Code writes after a turn its last run did not finish
NO_RESPONSE = "No response requested."  # the answer it writes itself to that line when it is not sent on


def test_claude_code_resumed_after_a_turn_cut_off_at_its_tools_result_keeps_a_memory_per_prompt(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The provider fails the step that carries the tool's result: Claude Code ends, its session ending with that
    result. Resumed (`-c`) with a new prompt, it sends the result again followed by its own line and an answer it
    writes itself, then the new prompt. The new prompt is a memory of its own with its final answer; neither line
    is in any memory; the first prompt keeps its step, which names the tool; nothing the conversation holds is
    recalled into it, while another conversation is given both prompts' memories."""
    backend, proc, home, project = on_the_local_store(mitmdump, upstream, tmp_path)
    started = tmp_path / "tool-started"  # the tool writes it, then runs on while the provider starts failing
    call = ToolCall("Bash", {"command": f"printf x > {started}; sleep 2; printf {OUTPUT}", "description": "List the files"})
    upstream.tool_call = lambda data: call if "Bash" in tool_names(data) else None
    upstream.reply = FINAL

    def fail() -> None:
        upstream.fail_status = 400  # not retried: Claude Code writes the error and ends

    failing = once_it_exists(started, fail)
    with pytest.raises(AssertionError, match="API Error: 400"):
        claude(proc, project, home, "-p", PROMPT, "--allowedTools", "Bash")
    failing.join()
    step = f"User: {PROMPT}\nAssistant: {call.text}"
    backend.settled("project:shop", step)

    upstream.clear()
    upstream.fail_status = None
    again, answer = "Which of the files in the repository is the largest?", "The largest is the README."
    upstream.reply = answer
    assert claude(proc, project, home, "-c", "-p", again, "--allowedTools", "Bash") == answer
    calls = main_calls(upstream)
    resumed = [block for m in calls[0]["messages"] if isinstance(m["content"], list) for block in m["content"]]
    assert any(block.get("text") == RESUMED for block in resumed), proc.log_text()  # the wire as this test knows it
    assert any(block.get("text") == NO_RESPONSE for block in resumed)
    assert len(calls) == 2 and all(MEMORY_TAG not in json.dumps(c) for c in calls), proc.log_text()
    memories = backend.settled("project:shop", f"User: {again}\nAssistant: {answer}")
    assert sorted(memories) == sorted([(step, ["Bash"]), (f"User: {again}\nAssistant: {answer}", ["Bash"])]), proc.log_text()

    upstream.clear()
    upstream.tool_call = None
    claude(proc, project, home, "-p", "Which files are in the repository, and which is the largest?")
    fresh = json.dumps(main_calls(upstream)[0])
    assert MEMORY_TAG in fresh and call.text in fresh and answer in fresh, proc.log_text()
    assert RESUMED not in fresh and NO_RESPONSE not in fresh


def test_claude_code_compacting_its_conversation_stores_neither_the_summary_nor_its_instruction(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Claude Code compacts by asking the model, in the conversation itself, for a summary (its instruction is
    the last user message's last block), then goes on from a user message it writes holding the summary ("This
    session is being continued from a previous conversation…"). The request for the summary is neither recalled
    into nor stored, and the user's prompts are stored as they were asked."""
    backend, proc, home, project = on_the_local_store(mitmdump, upstream, tmp_path)
    # A memory sharing words with the instruction: recall would give it to the request for the summary.
    known = "User: Summarize the code patterns of the conversation.\nAssistant: Errors are fixed with full code snippets."
    seed(backend.db, "project:shop", known)
    follow_up, answer = "Which of the files in the repository is the largest?", "The largest is the README."

    def summarizing(data: Any) -> bool:
        return "CRITICAL: Respond with TEXT ONLY" in json.dumps(data.get("messages", [])[-1:])

    upstream.prompt_tokens = lambda data: 5000  # each answer says the context is far past the threshold
    upstream.reply_for = lambda rec: f"<analysis>…</analysis>\n<summary>{SUMMARY}</summary>" if summarizing(rec.json) else (
        answer if follow_up in json.dumps(rec.json) else FINAL)
    call = ToolCall("Bash", {"command": f"printf {OUTPUT}", "description": "List the files"})
    upstream.tool_call = lambda data: call if "Bash" in tool_names(data) else None  # a conversation of two rounds
    assert claude(proc, project, home, "-p", PROMPT, "--allowedTools", "Bash") == FINAL
    backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {FINAL}")

    upstream.clear()
    upstream.tool_call = None
    assert claude(proc, project, home, "-c", "-p", follow_up, env=COMPACT_SOON) == answer
    calls = main_calls(upstream)
    forks = [c for c in calls if summarizing(c)]
    assert forks and all(MEMORY_TAG not in json.dumps(c) for c in forks), proc.log_text()  # auxiliary
    went_on = [c for c in calls if "This session is being continued from a previous conversation" in json.dumps(c)]
    assert went_on and SUMMARY in json.dumps(went_on[-1]) and follow_up in json.dumps(went_on[-1])
    memories = backend.settled("project:shop", f"User: {follow_up}\nAssistant: {answer}")
    assert sorted(content for content, _ in memories) == sorted([
        known,
        f"User: {PROMPT}\nAssistant: {FINAL}",
        f"User: {follow_up}\nAssistant: {answer}",
    ]), proc.log_text()


@pytest.mark.parametrize("restarted", [False, True], ids=["", "restarted"])
def test_claude_code_compacting_in_the_middle_of_a_tool_loop_keeps_the_prompts_one_memory(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, backend: Backend, restarted: bool
) -> None:
    """Past its threshold between two steps of a tool loop, Claude Code compacts, then goes on from its summary
    without the user's prompt. Its session (`metadata.user_id`) is the same: the steps after the summary answer
    that prompt, whose one memory ends with the final answer. They are recalled into with the prompt, the
    prompt's own step stored before the summary left out. So too when memproxy restarts while the tool runs just
    before the summary: its threads file keeps the session's prompt."""
    proc = mitmdump(mode="regular", upstream=upstream, options=backend.options, env=backend.env)
    home, project = tmp_path / "home", tmp_path / "shop"
    known = "User: Where are the repository's files listed?\nAssistant: In the manifest, MANIFEST.in."
    if backend.supermemory is not None:
        seed_store(SupermemoryStore(SUPERMEMORY_KEY, backend.supermemory.url), "project:shop", known)
    else:
        seed(backend.db, "project:shop", known)

    def summarizing(data: Any) -> bool:
        return "CRITICAL: Respond with TEXT ONLY" in json.dumps(data.get("messages", [])[-1:])

    def results(data: Any) -> int:
        return json.dumps(data.get("messages")).count('"tool_result"')

    steps: list[int] = []

    def tokens(data: Any) -> int:
        """The second step's answer says the context is past the threshold: Claude Code compacts before the third."""
        if summarizing(data) or "Bash" not in tool_names(data):
            return 10
        steps.append(1)
        return 5000 if len(steps) == 2 else 10

    call = ToolCall("Bash", {"command": f"sleep 1; printf {OUTPUT}", "description": "List the files"})
    started = tmp_path / "second-tool-started"  # the second step's tool (just before the summary) writes it, then waits
    second = ToolCall("Bash", {"command": f"printf x > {started}; sleep {8 if restarted else 1}; printf {OUTPUT}",
                               "description": "List the files"})

    def tool_call(data: Any) -> ToolCall | None:
        if "Bash" not in tool_names(data) or summarizing(data) or results(data) >= 2:
            return None
        return second if results(data) == 1 else call

    restarting = restart_once(proc, started, restarted)
    upstream.tool_call = tool_call
    upstream.calls_after_results = True
    upstream.prompt_tokens = tokens
    upstream.reply_for = lambda rec: f"<analysis>…</analysis>\n<summary>{SUMMARY}</summary>" if summarizing(rec.json) else FINAL
    assert claude(proc, project, home, "-p", PROMPT, "--allowedTools", "Bash", env=COMPACT_SOON).endswith(FINAL)
    restarting.join()
    assert started.exists()
    calls = main_calls(upstream)
    [at] = [i for i, c in enumerate(calls) if summarizing(c)]
    after = calls[at + 1 :]
    assert after and all(PROMPT not in json.dumps(c["messages"][:1]) for c in after), proc.log_text()  # no prompt
    assert "This session is being continued from a previous conversation" in json.dumps(after[0])
    assert all(known.split("Assistant: ")[1] in json.dumps(c) and PROMPT not in json.dumps(c) for c in after), proc.log_text()
    memories = backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert sorted(content for content, _ in memories) == sorted([known, f"User: {PROMPT}\nAssistant: {FINAL}"]), proc.log_text()


def test_gemini_cli_resumed_is_never_given_its_own_turn_that_it_sends_back_without_comments(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Gemini CLI records an answer without its zero-width characters and HTML comments, and a resumed session
    sends it back so: the turn, stored as answered, is still its own."""
    db = tmp_path / "memories.db"
    proc = mitmdump(mode="regular", upstream=upstream, options={"memory_db": str(db)})
    home, project = tmp_path / "home", git_repo(tmp_path / "kestrel")
    answer_classifier(upstream)
    upstream.reply = "Add this to the kestrel README:\n\n```markdown\n<!-- deploy: nomad -->\n# Kestrel\n```\n\nThen deploy\u200b."
    gemini(proc, project, "Explain the kestrel deploy plan", home)
    assert wait_until(lambda: len(memories(db, "project:kestrel")) == 1), proc.log_text()
    upstream.reply = "Second answer about kestrel."

    def second(*flags: str) -> str:
        before = len(gemini_calls(upstream, "streamGenerateContent"))
        gemini(proc, project, "Remind me: what was the kestrel deploy plan again?", home, *flags)
        return json.dumps(gemini_calls(upstream, "streamGenerateContent")[before:], ensure_ascii=False)

    resumed = second("--resume", "latest")
    assert "Then deploy." in resumed and "deploy: nomad" not in resumed  # the client's copy of its answer
    assert MEMORY_TAG not in resumed, proc.log_text()
    assert MEMORY_TAG in second(), proc.log_text()  # another session is given the turn


def test_gemini_cli_compressing_in_the_middle_of_a_later_prompts_tool_loop_keeps_its_one_memory(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, backend: Backend
) -> None:
    """Gemini CLI compresses the history before a step of a tool loop once the last answer said the context is past
    its threshold: the turns before the current prompt become its `<state_snapshot>`, and the prompt is kept after
    it. The prompt's key (the user texts up to it) changes, yet the steps after the summary still answer it: its
    one memory ends with the final answer. Gemini CLI names no session: the prompt is known by its text, and only
    after a summary. The two calls that write the summary are neither recalled into nor stored."""
    proc = mitmdump(mode="regular", upstream=upstream, options=backend.options, env=backend.env)
    home, project, cli = tmp_path / "home", tmp_path / "shop", CLIS["gemini"]
    answer_classifier(upstream)
    earlier = "Describe every module of the repository in detail."
    described = " ".join(f"Module {n} of the repository has its own tests and documentation." for n in range(60))
    upstream.reply = described  # long: the summary takes its place, and the prompt after it is kept
    assert cli.ask(proc, project, home, earlier, ()).endswith("documentation.")
    backend.settled("project:shop", f"User: {earlier}\nAssistant: {described}")

    upstream.clear()
    call = ToolCall(cli.tool, {"command": f"printf {OUTPUT}", "description": "List the files"})
    upstream.tool_call = lambda data: call if cli.tool in cli.offers(data) else None
    upstream.prompt_tokens = lambda data: 900_000  # past the threshold of Gemini's 1M-token context

    def summarizing(data: Any) -> bool:
        return "state_snapshot" in json.dumps(data.get("systemInstruction", ""))

    classify = upstream.reply_for
    upstream.reply_for = lambda rec: (f"<state_snapshot>{SUMMARY}</state_snapshot>" if summarizing(rec.json)
                                      else classify(rec) if classify else FINAL)
    upstream.reply = FINAL
    assert cli.ask(proc, project, home, PROMPT, cli.resume).endswith(FINAL)
    summaries = [r.json for r in upstream.requests if summarizing(r.json)]
    assert len(summaries) == 2 and all(MEMORY_TAG not in json.dumps(s) for s in summaries), proc.log_text()
    loop = cli.calls(upstream)
    parts = [json.dumps(p) for c in loop[-1]["contents"] for p in c.get("parts", [])]
    sent, recalled = [p for p in parts if MEMORY_TAG not in p], [p for p in parts if MEMORY_TAG in p]
    assert len(loop) == 2 and any(SUMMARY in p for p in sent) and any(PROMPT in p for p in sent), proc.log_text()
    assert not any(earlier in p for p in sent)  # the summary took its place ...
    assert all(PROMPT not in p for p in recalled)  # ... and what is recalled into the step is not its own step

    memories = backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert sorted(memories) == sorted([(f"User: {earlier}\nAssistant: {described}", []),
                                       (f"User: {PROMPT}\nAssistant: {FINAL}", [cli.tool])]), proc.log_text()


def test_claude_code_reading_a_file_in_its_loop_is_found_by_that_file_and_never_shows_it(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The memory's trace names the file Claude Code's Read was given: a later question naming the file finds the
    memory, whose text holds neither the file's name nor what it holds."""
    backend, proc, home, project = on_the_local_store(mitmdump, upstream, tmp_path)
    notes = project / "orchard" / "harvest.md"
    notes.parent.mkdir(parents=True)
    notes.write_text(f"{OUTPUT}\n")
    call = ToolCall("Read", {"file_path": str(notes)}, "I will read the notes first.")
    upstream.tool_call = lambda data: call if "Read" in tool_names(data) else None
    upstream.reply = FINAL
    assert claude(proc, project, home, "-p", PROMPT, "--allowedTools", "Read").endswith(FINAL)
    loop = main_calls(upstream)
    assert len(loop) == 2 and OUTPUT in json.dumps(loop[1]), proc.log_text()  # Claude Code read it
    memories = backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert memories == [(f"User: {PROMPT}\nAssistant: {FINAL}", [f"Read {notes}"])], proc.log_text()

    upstream.clear()
    upstream.tool_call = lambda data: None
    claude(proc, project, home, "-p", "What is in harvest.md?")  # no word of the turn's text
    [block] = re.findall(f"{MEMORY_TAG}.*?</recalled-memories>", json.dumps(main_calls(upstream)[0]))
    assert FINAL in block and not re.search("harvest|orchard|Read|" + OUTPUT, block), proc.log_text()


# -- Codex over its WebSocket --------------------------------------------------------------------------------------


def codex(proc: MitmdumpProc, project: Path, home: Path, *args: str) -> str:
    env = isolated_env(home) | {"OPENAI_API_KEY": "sk-e2e-turns-codex-0123456789"}
    argv = [str(installed("codex")), "exec", "--skip-git-repo-check", *args]
    return run(proc, project, argv, env, wrap=True)


def codex_turns(upstream: FakeUpstream) -> list[dict[str, Any]]:
    sent = [m for r in upstream.requests if r.path == "/v1/responses" for m in r.ws_messages]
    return [m for m in sent if m.get("type") == "response.create" and m.get("generate") is not False]


def test_codex_tool_loop_over_its_websocket_is_one_memory(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, backend: Backend
) -> None:
    """Codex sends the loop's later `response.create` with only the function call's output (and
    `previous_response_id`): it continues the prompt, and its answer is the prompt's memory."""
    proc = mitmdump(mode="regular", upstream=upstream, options=backend.options, env=backend.env)
    home, project = tmp_path / "home", tmp_path / "shop"
    upstream.tool_call = lambda data: ToolCall("shell", {"command": ["bash", "-lc", f"printf {OUTPUT}"]})
    upstream.reply = FINAL

    assert FINAL in codex(proc, project, home, PROMPT)
    loop = codex_turns(upstream)
    assert len(loop) == 2 and PROMPT not in json.dumps(loop[1]["input"]), proc.log_text()
    assert [item["type"] for item in loop[1]["input"]] == ["function_call_output"]
    memories = backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert memories == [(f"User: {PROMPT}\nAssistant: {FINAL}", ["shell"])], proc.log_text()
    output = loop[1]["input"][0]["output"]  # Codex's answer to a call of a tool it does not have
    assert all(MEMORY_TAG not in json.dumps(body) for body in loop)

    # The session resumed: its first request holds the prompt and its answer, so their memory is an echo.
    upstream.clear()
    upstream.reply = "The largest is the README."
    assert upstream.reply in codex(proc, project, home, "resume", "--last", "Which of the files in the repository is the largest?")
    resumed = codex_turns(upstream)
    assert PROMPT in json.dumps(resumed[0]) and FINAL in json.dumps(resumed[0]), proc.log_text()
    assert all(MEMORY_TAG not in json.dumps(body) for body in resumed), proc.log_text()

    upstream.clear()  # another session asks the same: the first one's answer is recalled into it, and stays
    upstream.reply = NEWER
    assert NEWER in codex(proc, project, home, PROMPT)
    again = codex_turns(upstream)
    assert MEMORY_TAG in json.dumps(again[0]) and FINAL in json.dumps(again[0])
    memories = backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {NEWER}")
    assert (f"User: {PROMPT}\nAssistant: {FINAL}", ["shell"]) in memories and len(memories) == 3, proc.log_text()
    assert all(output not in content and OUTPUT not in content for content, _ in memories)


def test_codex_compacting_on_the_providers_side_is_not_recalled_into_and_keeps_one_memory(
    mitmdump, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Codex past `model_auto_compact_token_limit` in a tool loop asks the provider to compact (a `compaction_trigger`
    item after the function's output), then goes on with the compacted history and the prompt, on a new response.
    The request to compact gets no memory, and the prompt keeps one memory, its final answer."""
    backend, proc, home, project = on_the_local_store(mitmdump, upstream, tmp_path)
    known = "User: Which files are in the repository of the shop?\nAssistant: Two files, a.py and b.py."
    seed(backend.db, "project:shop", known)
    (home / ".codex").mkdir(parents=True)
    (home / ".codex/config.toml").write_text("model_auto_compact_token_limit = 1000\n")
    upstream.tool_call = lambda data: ToolCall("shell", {"command": ["bash", "-lc", f"printf {OUTPUT}"]})
    reported: list[int] = []
    upstream.prompt_tokens = lambda data: reported.append(1) or (50_000 if len(reported) == 2 else 100)  # the step's
    upstream.reply = FINAL

    assert FINAL in codex(proc, project, home, PROMPT)
    messages = [m for r in upstream.requests for m in r.ws_messages if isinstance(m, dict) and m.get("input")]
    asked = [m for m in messages if m["input"][-1].get("type") == "compaction_trigger"]
    assert asked and all(MEMORY_TAG not in json.dumps(m) for m in asked), proc.log_text()
    assert any(item.get("type") == "compaction" for m in messages for item in m["input"])  # it went on compacted
    memories = backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert sorted(content for content, _ in memories) == sorted([known, f"User: {PROMPT}\nAssistant: {FINAL}"])


CHECKPOINT = "You are performing a CONTEXT CHECKPOINT COMPACTION."  # Codex's instruction to compact, its own side
HANDOFF = "Another language model started to solve this problem"  # how Codex's compacted history goes on
CUSTOM_PROVIDER = """model_provider = "custom"
model_auto_compact_token_limit = 1000

[model_providers.custom]
name = "A provider of the user's"
base_url = "https://api.openai.com/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
supports_websockets = {websockets}
"""


@pytest.mark.parametrize("websockets", [True, False], ids=["websocket", "http"])
def test_codex_compacting_on_its_own_side_in_a_tool_loop_keeps_the_prompts_one_memory(
    mitmdump, upstream: FakeUpstream, tmp_path: Path, websockets: bool
) -> None:
    """Codex 0.169.0 on a provider of the user's config compacts in the middle of a tool loop itself: it sends the
    history with its instruction to compact as the last user message, then goes on from the prompt and the summary
    it got, answered at once here. The request to compact is neither recalled into nor stored, and the prompt's one
    memory ends with the final answer: on its WebSocket (the thread goes on) and over HTTP (the session goes on)."""
    backend, proc, home, project = on_the_local_store(mitmdump, upstream, tmp_path)
    known = "User: Which files are in the repository of the shop?\nAssistant: Two files, a.py and b.py."
    seed(backend.db, "project:shop", known)
    (home / ".codex").mkdir(parents=True)
    (home / ".codex/config.toml").write_text(CUSTOM_PROVIDER.format(websockets=str(websockets).lower()))
    call = ToolCall("shell", {"command": ["bash", "-lc", f"printf {OUTPUT}"]})
    upstream.tool_call = lambda data: None if HANDOFF in json.dumps(data) or CHECKPOINT in json.dumps(data) else call
    # Past the limit at the first step, whose function call Codex runs before it compacts.
    upstream.prompt_tokens = lambda data: 50_000 if PROMPT in json.dumps(data.get("input")[-1:]) else 100
    upstream.reply_for = lambda rec: SUMMARY if CHECKPOINT in json.dumps(rec.ws_messages[-1:] or rec.json) else FINAL

    assert FINAL in codex(proc, project, home, PROMPT)
    sent = [m for r in upstream.requests for m in (r.ws_messages or [r.json]) if isinstance(m, dict) and m.get("input")]
    compacting = [m for m in sent if CHECKPOINT in json.dumps(m["input"][-1])]
    assert compacting and all(MEMORY_TAG not in json.dumps(m) for m in compacting), proc.log_text()
    [after] = [m for m in sent if HANDOFF in json.dumps(m["input"][-1])]  # the prompt, then the summary
    assert SUMMARY in json.dumps(after) and "I will run a shell command first." not in json.dumps(after)
    memories = backend.settled("project:shop", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert sorted(memories) == sorted([(known, []), (f"User: {PROMPT}\nAssistant: {FINAL}", ["shell"])]), proc.log_text()


REPORT = "The sub-agent found a.py, b.py and c.py."


def test_a_codex_sub_agent_recalls_its_project_and_stores_nothing(mitmdump, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Codex's spawn_agent runs a sub-agent on a WebSocket of its own that says `x-openai-subagent: collab_spawn`.
    It inherits the parent's conversation, the user's prompt included, and its task comes from the main agent:
    it is given the project's memories, and nothing it says is ever stored as the answer to that prompt."""
    known = "User: How are the files of the repository listed?\nAssistant: With git ls-files."
    with FakeSupermemory(SUPERMEMORY_KEY) as fake:  # it keeps every write, so a report stored for a while shows
        backend = Backend("supermemory", tmp_path, fake)
        proc = mitmdump(mode="regular", upstream=upstream, options=backend.options, env=backend.env)
        home, project = tmp_path / "home", tmp_path / "shop"
        seed_store(SupermemoryStore(SUPERMEMORY_KEY, fake.url), "project:shop", known)
        spawn = ToolCall("spawn_agent", {"task_name": "list_files", "message": TASK}, namespace="collaboration")
        wait = ToolCall("wait_agent", {"timeout_ms": 20000}, "Waiting for it.", "call_fake2", "collaboration")
        called: list[str] = []

        def call(data: Any) -> ToolCall | None:
            """The main agent spawns the sub-agent (in its first request that offers that), then waits for it."""
            if not called and _offers_spawn(data):
                called.append("spawn")
                return spawn
            if called == ["spawn"] and spawn.id in json.dumps(data.get("input")):
                called.append("wait")
                return wait
            return None

        upstream.tool_call, upstream.calls_after_results = call, True
        upstream.reply_for = lambda rec: REPORT if rec.headers.get("x-openai-subagent") else FINAL

        assert FINAL in codex(proc, project, home, PROMPT)
        sub = [m for r in upstream.requests if r.headers.get("x-openai-subagent") == "collab_spawn" for m in r.ws_messages
               if m.get("type") == "response.create" and m.get("generate") is not False]
        assert sub and MEMORY_TAG in json.dumps(sub[0]) and "git ls-files" in json.dumps(sub[0]), proc.log_text()
        wait_until(lambda: any(FINAL in content for content, _ in backend.stored("project:shop")))
        writes = [r.json for r in fake.requests if r.path.startswith("/v3/documents") and isinstance(r.json, dict)]
        assert writes and not any(REPORT in json.dumps(w) for w in writes), proc.log_text()
        # documents added to the project's container only; a later step PATCHes one of them (no containerTag)
        assert {w["containerTag"] for w in writes if "content" in w and "containerTag" in w} == {container_tag("project:shop")}
        assert sorted(c for c, _ in backend.stored("project:shop")) == sorted([known, f"User: {PROMPT}\nAssistant: {FINAL}"])


def _offers_spawn(data: Any) -> bool:
    """Whether a Codex request offers spawn_agent (in its `collaboration` namespace, in an additional_tools item)."""
    return "spawn_agent" in json.dumps([i for i in data.get("input") or () if isinstance(i, dict) and i.get("type") == "additional_tools"])


# -- Chat Completions with the openai SDK ----------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "list_files", "parameters": {"type": "object", "properties": {}}}}]
RESPONSES_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]
SCOPE = {"x-memory-user-id": "team"}
LISTED = ToolCall("list_files", {"path": "src/orchard"})
TRACE = ["list_files src/orchard"]  # the loop's trace: the tool it called, with the file it named


def sdk_loop(mitmdump, upstream: FakeUpstream, openai_client, backend: Backend) -> tuple[MitmdumpProc, Any]:
    """A mitmdump with a reverse listener and an openai SDK client on it; the fake asks for `list_files` of
    src/orchard (LISTED) until a request carries a tool's output, then answers FINAL."""
    proc = mitmdump(mode="reverse", upstream=upstream, options=backend.options, env=backend.env)
    upstream.tool_call = lambda data: LISTED
    upstream.reply = FINAL
    return proc, openai_client(proc, via="reverse")


def given_to_another_conversation(ask: Callable[[], Any], upstream: FakeUpstream, path: str, backend: Backend) -> None:
    """Another conversation asking PROMPT (`ask`) is given the loop's answer; no memory holds the tool's output."""
    ask()
    sent = json.dumps(upstream.last(path).json)
    assert MEMORY_TAG in sent and FINAL in sent
    assert all(OUTPUT not in content for content, _ in backend.stored("team"))


def test_chat_tool_calls_loop_with_the_openai_sdk_is_one_memory(
    mitmdump, upstream: FakeUpstream, openai_client, tmp_path: Path, backend: Backend
) -> None:
    proc, client = sdk_loop(mitmdump, upstream, openai_client, backend)

    def ask(messages: list[dict[str, Any]]) -> Any:
        return client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS, extra_headers=SCOPE)

    messages: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]
    step = ask(messages).choices[0].message
    assert step.tool_calls and step.tool_calls[0].function.name == "list_files"
    # The step before the call is stored (for now) before the loop goes on: it is no memory for the loop itself.
    assert backend.settled("team", f"User: {PROMPT}\nAssistant: {step.content}")
    messages += [step.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": step.tool_calls[0].id, "content": OUTPUT}]
    assert ask(messages).choices[0].message.content == FINAL
    assert MEMORY_TAG not in json.dumps(upstream.last("/chat/completions").json)
    memories = backend.settled("team", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert memories == [(f"User: {PROMPT}\nAssistant: {FINAL}", TRACE)], proc.log_text()

    # The conversation goes on: its own prompt and answer are no memory for it.
    messages += [{"role": "assistant", "content": FINAL}, {"role": "user", "content": "Which of the files in the repository is the largest?"}]
    ask(messages)
    assert MEMORY_TAG not in json.dumps(upstream.last("/chat/completions").json)
    given_to_another_conversation(lambda: ask([{"role": "user", "content": PROMPT}]), upstream, "/chat/completions", backend)
    if backend.supermemory is None:  # the local store indexes the files a loop named; it never injects them
        ask([{"role": "user", "content": "What did we find in the orchard directory?"}])  # no word of the turns
        [block] = re.findall(f"{MEMORY_TAG}.*?</recalled-memories>", json.dumps(upstream.last("/chat/completions").json))
        assert PROMPT in block and not re.search("list_files|orchard|src", block), proc.log_text()


def test_an_image_alone_after_a_prompt_leaves_that_prompts_memory_as_it_was(
    mitmdump, upstream: FakeUpstream, openai_client, tmp_path: Path, backend: Backend
) -> None:
    """A message of an image alone is a prompt without words: its answer is stored nowhere, and never in place of
    the answer of the prompt before it."""
    proc = mitmdump(mode="reverse", upstream=upstream, options=backend.options, env=backend.env)
    client = openai_client(proc, via="reverse")

    def ask(messages: list[dict[str, Any]], reply: str) -> None:
        upstream.reply = reply
        client.chat.completions.create(model="gpt-4o", messages=messages, extra_headers=SCOPE)
        messages.append({"role": "assistant", "content": reply})

    messages: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]
    ask(messages, FINAL)
    backend.settled("team", f"User: {PROMPT}\nAssistant: {FINAL}")
    messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]})
    ask(messages, "The chart shows three bars.")
    messages.append({"role": "user", "content": "Which bar is the tallest?"})
    ask(messages, "The second.")
    memories = backend.settled("team", "User: Which bar is the tallest?\nAssistant: The second.")
    assert sorted(content for content, _ in memories) == sorted([
        f"User: {PROMPT}\nAssistant: {FINAL}", "User: Which bar is the tallest?\nAssistant: The second."]), proc.log_text()


# -- Responses over HTTP with the openai SDK -------------------------------------------------------------------------


def test_responses_function_call_loop_with_the_openai_sdk_is_one_memory(
    mitmdump, upstream: FakeUpstream, openai_client, tmp_path: Path, backend: Backend
) -> None:
    """The loop's second request carries the whole input again: the prompt, the call and its output."""
    proc, client = sdk_loop(mitmdump, upstream, openai_client, backend)

    def ask(items: list[Any]) -> Any:
        with client.responses.stream(model="gpt-4o", input=items, tools=RESPONSES_TOOLS, extra_headers=SCOPE) as stream:
            return stream.get_final_response()

    items: list[Any] = [{"role": "user", "content": PROMPT}]
    step = ask(items)
    [call] = [item for item in step.output if item.type == "function_call"]
    items += [item.model_dump(exclude_none=True) for item in step.output]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": OUTPUT})
    assert ask(items).output_text == FINAL
    assert MEMORY_TAG not in json.dumps(upstream.last("/responses").json)
    memories = backend.settled("team", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert memories == [(f"User: {PROMPT}\nAssistant: {FINAL}", TRACE)], proc.log_text()

    given_to_another_conversation(lambda: ask([{"role": "user", "content": PROMPT}]), upstream, "/responses", backend)


@pytest.mark.parametrize("kept", ["previous_response_id", "conversation"])
def test_a_responses_loop_whose_conversation_the_provider_keeps_is_one_memory(
    mitmdump, upstream: FakeUpstream, openai_client, tmp_path: Path, backend: Backend, kept: str
) -> None:
    """With `previous_response_id`, or a `conversation`, the provider keeps the conversation: each request carries
    only what is new, a tool loop's later request only the call's output."""
    proc, client = sdk_loop(mitmdump, upstream, openai_client, backend)

    def after(reply: Any) -> dict[str, str]:
        """What names the conversation in a request that comes after `reply` (None: the conversation's first)."""
        if kept == "conversation":
            return {"conversation": "conv_e2e"}
        return {"previous_response_id": reply.id} if reply is not None else {}

    def ask(items: list[Any], link: dict[str, str], scope: dict[str, str] = SCOPE) -> Any:
        return client.responses.create(model="gpt-4o", input=items, tools=RESPONSES_TOOLS, extra_headers=scope, **link)

    step = ask([{"role": "user", "content": PROMPT}], after(None))
    [call] = [item for item in step.output if item.type == "function_call"]
    final = ask([{"type": "function_call_output", "call_id": call.call_id, "output": OUTPUT}], after(step))
    assert final.output_text == FINAL
    memories = backend.settled("team", f"User: {PROMPT}\nAssistant: {FINAL}")
    assert memories == [(f"User: {PROMPT}\nAssistant: {FINAL}", TRACE)], proc.log_text()

    # The conversation goes on: its own prompt and answer are no memory for it, though the request holds neither.
    ask([{"role": "user", "content": "Which of the files in the repository is the largest?"}], after(final))
    assert MEMORY_TAG not in json.dumps(upstream.last("/responses").json), proc.log_text()
    given_to_another_conversation(lambda: ask([{"role": "user", "content": PROMPT}], {}), upstream, "/responses", backend)

    # A request of another scope naming this conversation does not go on with its prompt there.
    other = {"x-memory-user-id": "other"}
    ask([{"type": "function_call_output", "call_id": call.call_id, "output": OUTPUT}], after(step), other)
    ask([{"role": "user", "content": "Which scope is this?"}], {}, other)  # stored after anything before it
    backend.settled("other", f"User: Which scope is this?\nAssistant: {LISTED.text}")
    listed = 1 if backend.supermemory is not None else 0  # the fake Supermemory lists every container's
    assert sum(PROMPT in content for content, _ in backend.stored("other")) == listed, proc.log_text()


@pytest.mark.parametrize("kept", ["previous_response_id", "conversation"])
def test_a_loop_step_the_provider_keeps_is_given_no_note_again(
    mitmdump, upstream: FakeUpstream, openai_client, tmp_path: Path, backend: Backend, kept: str
) -> None:
    """The note goes in with a prompt's first request, which the provider keeps: the loop's later request (the
    tool's output) gets none again, and its instructions stay as the client sent them (its prompt cache)."""
    proc, client = sdk_loop(mitmdump, upstream, openai_client, backend)

    def loop(conversation: str, prompt: str) -> list[dict[str, Any]]:
        """The tool loop of `prompt` in `conversation`: what each of its two requests sent upstream."""
        def ask(items: list[Any], link: dict[str, str]) -> Any:
            return client.responses.create(model="gpt-4o", instructions="Be brief.", input=items, tools=RESPONSES_TOOLS,
                                           extra_headers=SCOPE, **link)
        step = ask([{"role": "user", "content": prompt}], {"conversation": conversation} if kept == "conversation" else {})
        [call] = [item for item in step.output if item.type == "function_call"]
        link = {"conversation": conversation} if kept == "conversation" else {"previous_response_id": step.id}
        assert ask([{"type": "function_call_output", "call_id": call.call_id, "output": OUTPUT}], link).output_text == FINAL
        return [r.json for r in upstream.requests if r.path.endswith("/responses")][-2:]

    loop("conv_first", PROMPT)
    backend.settled("team", f"User: {PROMPT}\nAssistant: {FINAL}")
    first, later = loop("conv_second", "Which files are in the repository now?")  # the first one's memory is recalled
    assert MEMORY_TAG in json.dumps(first["input"]) and first["instructions"] == "Be brief.", proc.log_text()
    assert MEMORY_TAG not in json.dumps(later) and later["instructions"] == "Be brief.", proc.log_text()


def threads_file(proc: MitmdumpProc) -> Path:
    """Where a mitmdump keeps its chained threads and asked prompts (memproxy.threads)."""
    return Path(proc.env["XDG_DATA_HOME"]) / "memproxy" / "threads.json"


def stopped(proc: MitmdumpProc, how: str, written: Callable[[str], bool]) -> None:
    """Stop memproxy and start it again: "restart" as a user does (its done hooks run); "crash" kills it once the
    file holds what `written` looks for (written within a second of the change)."""
    if how == "crash":
        assert wait_until(lambda: threads_file(proc).exists() and written(threads_file(proc).read_text())), proc.log_text()
        proc.kill()
        proc.start()
    else:
        proc.restart()


def test_a_conversation_the_provider_keeps_is_not_given_its_older_turns_after_memproxy_restarts(
    mitmdump, upstream: FakeUpstream, openai_client, backend: Backend
) -> None:
    """The threads file keeps the texts of a thread's latest KEPT_TURNS turns and the keys of all the turns its
    conversation holds: after a restart, a turn older than those is still no memory for its own conversation,
    which no request carries any more, and still one for another conversation. Supermemory answers here with
    chunks of the stored turns (as with `search_mode: documents`), or with what it wrote from them."""
    if backend.supermemory is not None and not backend.supermemory.own_words:
        backend.supermemory.chunk_results = True
    proc = mitmdump(mode="reverse", upstream=upstream, options=backend.options, env=backend.env)
    client = openai_client(proc, via="reverse")
    question, answer = "Which port does the orchard service listen on?", "The orchard service listens on port 7341."
    replies = iter([answer, *(f"Noted: the weather note {n} is filed." for n in range(1, KEPT_TURNS + 2)), FINAL, FINAL])
    upstream.reply_for = lambda _: next(replies)

    def ask(text: str, previous: Any = None) -> Any:
        link = {"previous_response_id": previous.id} if previous is not None else {}
        return client.responses.create(model="gpt-4o", input=[{"role": "user", "content": text}], extra_headers=SCOPE, **link)

    reply = ask(question)
    for n in range(1, KEPT_TURNS + 2):
        reply = ask(f"Write down weather note {n} for the logbook.", reply)
    backend.settled("team", f"User: {question}\nAssistant: {answer}")
    proc.restart()
    kept = json.loads(threads_file(proc).read_text())["threads"]
    assert all(question not in json.dumps(thread["turns"]) for thread in kept), kept  # only its key is kept

    ask("Which port does the orchard service use?", reply)
    assert "7341" not in json.dumps(upstream.last("/responses").json), proc.log_text()
    ask("Which port does the orchard service use?")  # another conversation
    assert "7341" in json.dumps(upstream.last("/responses").json), proc.log_text()


@pytest.mark.parametrize(("kept", "how"), [("previous_response_id", "restart"), ("conversation", "crash")])
def test_a_loop_the_provider_keeps_goes_on_in_its_prompts_memory_after_memproxy_restarts(
    mitmdump, upstream: FakeUpstream, openai_client, tmp_path: Path, backend: Backend, kept: str, how: str
) -> None:
    """memproxy stops while the tool runs, and starts again. The loop's later request carries only the call's
    output and what names the conversation: the thread kept in memproxy's threads file still knows its prompt,
    whose one memory ends with the final answer, and the conversation's next prompt is not given its own turn."""
    proc, client = sdk_loop(mitmdump, upstream, openai_client, backend)
    secret = next(fake for fake in fakes() if fake.kind == "GitHub token").value  # in the prompt: the file holds it as its memory does, scrubbed
    prompt = f"{PROMPT} My token is {secret}."

    def after(reply: Any) -> dict[str, str]:
        if kept == "conversation":
            return {"conversation": "conv_e2e_restart"}
        return {"previous_response_id": reply.id} if reply is not None else {}

    def ask(items: list[Any], link: dict[str, str]) -> Any:
        return client.responses.create(model="gpt-4o", input=items, tools=RESPONSES_TOOLS, extra_headers=SCOPE, **link)

    step = ask([{"role": "user", "content": prompt}], after(None))
    [call] = [item for item in step.output if item.type == "function_call"]
    stored = scrub(prompt).text
    backend.settled("team", f"User: {stored}\nAssistant: {LISTED.text}")
    stopped(proc, how, lambda text: "conv_e2e_restart" in text or step.id in text)
    text = threads_file(proc).read_text()
    assert stored in text and secret not in text and threads_file(proc).stat().st_mode & 0o777 == 0o600

    final = ask([{"type": "function_call_output", "call_id": call.call_id, "output": OUTPUT}], after(step))
    assert final.output_text == FINAL
    memories = backend.settled("team", f"User: {stored}\nAssistant: {FINAL}")
    assert memories == [(f"User: {stored}\nAssistant: {FINAL}", TRACE)], proc.log_text()

    # The conversation goes on, after another restart: its own turn is no memory for it, though no request holds it.
    proc.restart()
    ask([{"role": "user", "content": "Which of the files in the repository is the largest?"}], after(final))
    assert MEMORY_TAG not in json.dumps(upstream.last("/responses").json), proc.log_text()
    given_to_another_conversation(lambda: ask([{"role": "user", "content": PROMPT}], {}), upstream, "/responses", backend)
