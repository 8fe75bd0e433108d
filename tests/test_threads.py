"""The threads file (memproxy.threads): chained threads and asked prompts as a restart finds them, scrubbed; a file
it cannot read loses nothing of its own and restores nothing. The end-to-end restarts are in test_e2e_turns."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from memproxy import private
from memproxy.memory.base import Keyed
from memproxy.protocols.base import Entry
from memproxy.protocols.common import MAX_CALL_CHARS, find_prompt
from memproxy.rules import Route, Rules
from memproxy.scrub import scrub
from memproxy.threads import KEPT_TURNS, Asked, Kept, Thread, ThreadFile, snapshot
from secret_corpus import fakes

TOKEN = next(fake for fake in fakes() if fake.kind == "GitHub token").value
PROMPT = f"Which files are in the repository? My token is {TOKEN}."


def saved(path: Path, chains: list, asked: list, routes: list = ()) -> Kept:
    """Write `chains`, `asked` and `routes` as a stopping memproxy does, and read them as a starting one does."""

    async def go() -> Kept:
        await ThreadFile(path).close(lambda: snapshot(chains, asked, routes))  # nothing changed: nothing written
        assert not path.exists()
        file = ThreadFile(path)
        file.save_soon(lambda: snapshot(chains, asked, routes))
        await file.close(lambda: snapshot(chains, asked, routes))
        return await ThreadFile(path).load()

    return asyncio.run(go())


def a_thread(prompt: str = PROMPT) -> Thread:
    entries = [Entry("user", prompt)]
    thread = Thread()
    thread.answers(find_prompt(entries), entries)
    thread.calls = ("list_files", f"Read /tmp/{TOKEN}/notes.md")
    for n in range(KEPT_TURNS + 2):
        thread.turn(f"{prompt} ({n})", f"An answer ({n}).", f"key{n}")
    return thread


def test_threads_and_asked_prompts_come_back_as_stored(tmp_path: Path) -> None:
    thread, other = a_thread(), Thread()  # a thread without a prompt is not written
    asked = Asked(PROMPT, "k1", "conv", ("Bash", f"Edit {TOKEN}.md"), (PROMPT, "I will run a shell command first."))
    path = tmp_path / "memproxy" / "threads.json"
    back = saved(path, [(("team", "resp_1"), thread), (("team", "conv_1"), thread), (("team", "resp_2"), other)],
                 [(("project:shop", "session-1"), asked)])
    chains, kept = back.chains, back.asked

    text = path.read_text()
    assert TOKEN not in text and path.stat().st_mode & 0o777 == 0o600
    assert [name for name, _ in chains] == [("team", "resp_1"), ("team", "conv_1")]
    restored = chains[0][1]
    assert chains[1][1] is restored  # one thread under both names
    assert (restored.raw, restored.key, restored.user, restored.calls, restored.conversation) == (
        thread.raw, thread.key, scrub(PROMPT).text, ("list_files", f"Read /tmp/{scrub(TOKEN).text}/notes.md"),
        thread.conversation)  # the trace's files scrubbed as memories are
    assert list(restored.stored) == [f"key{n}" for n in range(2, KEPT_TURNS + 2)]  # the latest KEPT_TURNS
    memory = f"User: {scrub(PROMPT).text} (5)\nAssistant: An answer (5)."
    assert restored.heard.holds(memory) and restored.heard.holds_turns(["key5"])  # the echo check reads them
    first = f"User: {scrub(PROMPT).text} (0)\nAssistant: An answer (0)."  # older: its key is kept, not its text
    assert not restored.heard.holds(first) and restored.heard.holds(Keyed(first, ("key0",)))
    assert restored.heard.held() == thread.heard.held()
    [(name, back)] = kept
    assert name == ("project:shop", "session-1")
    assert back == Asked(scrub(PROMPT).text, "k1", "conv", ("Bash", f"Edit {scrub(TOKEN).text}.md"),
                         (scrub(PROMPT).text, "I will run a shell command first."))


def test_the_file_scrubs_a_prompt_with_its_trace_and_turns_as_one(tmp_path: Path) -> None:
    password = "Tr0ub4dor99x"  # found by its context (a URL) in the prompt alone
    user = f"Connect to postgres://admin:{password}@db.internal/app"
    reply, step = f"Connected as admin (password {password}).", f"Bash psql -W {password}"
    thread = Thread(raw="r1", key="k1", user=user, calls=(step,))
    thread.turn(user, reply, "k1")
    asked = Asked(user, "k2", "conv", (step,), (user, reply))
    path = tmp_path / "threads.json"
    back = saved(path, [(("team", "resp_1"), thread)], [(("project:shop", "session-1"), asked)])
    assert password not in path.read_text()
    assert back.asked[0][1].turn[1] == "Connected as admin (password [secret: password in URL])."
    assert back.chains[0][1].calls == ("Bash psql -W [secret: password in URL]",)


def test_the_file_scrubs_a_step_before_it_is_clipped(tmp_path: Path) -> None:
    cut = "/clone?token="
    file = "/srv/" + "d" * (MAX_CALL_CHARS - len("Read /srv/" + cut) - 17) + cut + TOKEN  # it straddles the limit
    entries = [Entry("user", "Clone it"), Entry("assistant", "", (("Read", {"file_path": file}),)), Entry("user", "", (), True)]
    prompt = find_prompt(entries)
    path = tmp_path / "threads.json"
    back = saved(path, [], [(("project:shop", "session-1"), Asked(prompt.text, prompt.key, "conv", prompt.calls))])
    assert TOKEN[:8] not in path.read_text()
    [step] = back.asked[0][1].calls
    assert step.startswith("Read /srv/d") and len(step) <= MAX_CALL_CHARS


RULES = """
version: 1
default_user_id: me
rules:
  - name: qwen-code
    tool: Qwen Code
    match: {headers: {user-agent: '^QwenCode/'}}
    user_id: qwen-code
  - name: qwen-titles
    tool: Qwen Code
    match: {headers: {user-agent: '^QwenCode/'}}
    user_id: qwen-code
    auxiliary: true
"""


def test_a_sessions_project_route_comes_back_as_its_rule_gives_it_then(tmp_path: Path) -> None:
    rules = Rules.from_text(RULES)
    actions = rules.rules[0].actions
    shop = Route("project:shop", "qwen-code", False, None, False, actions, {}, "/src/shop", "Qwen Code", ("me",))
    gone = Route("project:shop", "gone", False, None, False, actions, {}, "/src/shop", "Qwen Code")
    other_tool = Route("project:shop", "qwen-code", False, None, False, actions, {}, "/src/shop", "Codex")
    auxiliary = Route("project:shop", "qwen-titles", False, None, False, actions, {}, "/src/shop", "Qwen Code")
    no_project = Route("qwen-code", "qwen-code", False, None, False, actions, {}, None, "Qwen Code")
    routes = [("s1", shop), ("s2", gone), ("s3", other_tool), ("s4", auxiliary), ("s5", no_project)]
    kept = saved(tmp_path / "threads.json", [], [], routes)
    assert [session for session, _ in kept.routes] == ["s1", "s2", "s3", "s4"]  # a route with no project is none
    [(session, route)] = kept.routes_in(rules)  # its rule gone, another tool, or now auxiliary: not restored
    assert session == "s1" and route.actions is actions
    assert (route.scope, route.rule, route.project, route.tool, route.layers) == ("project:shop", "qwen-code", "/src/shop",
                                                                                  "Qwen Code", ("me",))


def test_a_restored_thread_keys_its_next_prompt_the_same_after_every_restart(tmp_path: Path) -> None:
    """Its digest cannot be written: it starts from the thread's key, the same way each time."""
    after = [Entry("user", "And which is the largest?")]
    keys = set()
    for n in range(2):
        [(_, thread)] = saved(tmp_path / f"{n}.json", [(("team", "resp_1"), a_thread())], []).chains
        user, key, _ = thread.answers(find_prompt(after), after)
        assert user == "And which is the largest?" and key != thread.raw
        keys.add(key)
    assert len(keys) == 1
    retried = a_thread()
    assert Thread.restored(retried.raw, retried.key, "x", (), "", ()).answers(
        find_prompt([Entry("user", PROMPT)]), [Entry("user", PROMPT)])[1] == retried.key  # a retry keeps its key


def test_a_restored_thread_tells_a_retry_from_a_new_prompt_with_the_same_words(tmp_path: Path) -> None:
    """The file keeps the reply a thread's prompt was asked after and the latest reply since: after a restart,
    "continue" after a newer reply is a new prompt, and a retry naming the reply the prompt went on from keeps its
    key. A file that keeps neither still loads, and takes the same words as a retry, as before."""
    fixed, going_on = [Entry("user", "fix the bug in cache.py")], [Entry("user", "continue")]
    thread = Thread()
    thread.answers(find_prompt(fixed), fixed, "")
    thread.replied("resp_1")
    asked = thread.answers(find_prompt(going_on), going_on, "resp_1")[1]
    thread.replied("resp_2")
    chains = [(("team", "resp_2"), thread)]

    [(_, restored)] = saved(tmp_path / "retry.json", chains, []).chains
    assert (restored.reply, restored.after) == ("resp_2", "resp_1")
    assert restored.answers(find_prompt(going_on), going_on, "resp_1")[1] == asked  # a retry keeps its key
    [(_, restored)] = saved(tmp_path / "new.json", chains, []).chains
    assert restored.answers(find_prompt(going_on), going_on, "resp_2")[1] not in ("", asked)  # a new prompt

    path = tmp_path / "new.json"
    data = json.loads(path.read_text())
    for t in data["threads"]:
        del t["reply"], t["after"]
    path.write_text(json.dumps(data))
    [(_, old)] = asyncio.run(ThreadFile(path).load()).chains
    assert old.answers(find_prompt(going_on), going_on, "resp_2")[1] == asked


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 2}', b'{"version": 1, "threads": [{"names": 3}]}',
                                     b'{"version": 1, "threads": [], "asked": [{"name": ["a"], "user": "u"}]}',
                                     b"null", b"[]", b'"x"', b"1", b"[" * 100_000 + b"]" * 100_000,
                                     b'{"version": 1, "threads": {"a": 1}, "asked": [], "routes": []}'])
def test_a_file_it_cannot_read_is_kept_aside_and_nothing_is_restored(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "threads.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    assert asyncio.run(ThreadFile(path).load()) == Kept()
    assert not path.exists() and (tmp_path / "threads.json.bak").read_bytes() == content
    assert "threads.json is unreadable" in caplog.text


@pytest.mark.skipif(not private.POSIX, reason="POSIX owners and modes")
def test_a_file_other_users_could_have_planted_is_not_restored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone could have put the file here
    path = shared / "threads.json"
    path.write_text(json.dumps({"version": 1, "threads": [], "asked": [], "routes": []}))
    assert asyncio.run(ThreadFile(path).load()) == Kept()
    assert path.exists() and "threads not restored" in caplog.text


def test_after_an_image_alone_a_threads_later_steps_answer_no_earlier_prompt() -> None:
    """Over a WebSocket each message carries what is new: an image alone is a prompt with no words, and the tool
    outputs after it are its steps, not the prompt before it (whose memory they would overwrite)."""
    thread = Thread()
    first = [Entry("user", PROMPT)]
    assert thread.answers(find_prompt(first), first)[0] == PROMPT
    image = [Entry("user", "", media=True)]  # an image alone
    assert thread.answers(find_prompt(image), image) == ("", "", ())
    step = [Entry("tool", "", (), True)]
    assert thread.answers(find_prompt(step), step) == ("", "", ())
    later = [Entry("user", "And the largest?")]
    assert thread.answers(find_prompt(later), later)[0] == "And the largest?"
