"""Unit level: the request path's hooks on synthetic flows (mitmproxy.test), for edge cases e2e cannot reach."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from memproxy.addons.hosts import Hosts
from memproxy.addons.projectnames import ProjectNames
from memproxy.addons.projects import Projects
from memproxy.addons.requestpath import RequestPath
from memproxy.addons.ruleswatcher import RulesWatcher
from memproxy.addons.sdk import Sdk
from memproxy.addons.store import Store
from memproxy.memory.base import PROMPT_KEY, Memory, MemoryStore
from memproxy.recall import Recall
from mitmproxy.test import taddons, tflow

ROOT = Path(__file__).resolve().parent.parent


class FakeStore(MemoryStore):
    """A store whose behaviour the test sets: results, a delay, or an exception."""

    name = "fake"

    def __init__(self, results: list[str] = (), delay: float = 0.0, error: Exception | None = None,
                 user: list[str] = ()) -> None:
        self.results, self.delay, self.error, self.user = list(results), delay, error, list(user)
        self.added: list[tuple[str, str, str | None]] = []

    async def search(self, scope, query, limit=5, threshold=0.0):
        await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        return [Memory(str(i), scope, text, 1.0) for i, text in enumerate(self.user if scope == "user" else self.results)]

    async def add(self, scope, content, custom_id=None, metadata=None):
        self.added.append((scope, content, custom_id))
        return str(len(self.added))

    async def list(self, scope, limit=100, offset=0):
        return []

    async def forget(self, scope, memory_id):
        return False


def chat_flow(text: str = "What did we decide about caching?", **headers: str) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.request.method, flow.request.host, flow.request.port = "POST", "api.openai.com", 443
    flow.request.path = "/v1/chat/completions"
    flow.request.headers["content-type"] = "application/json"
    for name, value in headers.items():
        flow.request.headers[name.replace("_", "-")] = value
    flow.request.content = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).encode()
    return flow


def memory_addons() -> list:
    """The request path and the addons it depends on, as addons/memory.py composes them."""
    hosts, projects, names, rules = Hosts(), Projects(), ProjectNames(), RulesWatcher()
    sdk, store = Sdk(rules), Store(rules)
    return [hosts, projects, names, rules, sdk, store, RequestPath(hosts, projects, names, rules, store, sdk)]


@pytest.fixture
def addon(tmp_path):
    *others, a = memory_addons()
    with taddons.context(*others, a) as tctx:
        tctx.configure(a, memory_db=str(tmp_path / "m.db"), memory_timeout_ms=100, memory_rules=str(ROOT / "rules/memory.yaml"))
        yield a


class Submitted(list):
    """Stands in for the outbox: keeps submitted turns for the test to read."""

    def submit(self, turn) -> None:
        self.append(turn)


def use(addon: RequestPath, store: MemoryStore) -> None:
    """Put `store` behind the request path, and a list in place of the outbox."""
    addon.store.store = store
    addon.store.recall = Recall(store)
    addon.store.outbox = Submitted()


async def test_recall_within_budget_injects_and_annotates(addon):
    use(addon, FakeStore(["User: use Redis for caching\nAssistant: ok"]))
    flow = chat_flow(user_agent="OpenAI/Python 3.57.0")
    await addon.request(flow)
    sent = json.loads(flow.request.content)
    assert "use Redis for caching" in sent["messages"][0]["content"]
    assert flow.request.headers["content-length"] == str(len(flow.request.raw_content))
    assert flow.marked == ":brain:"
    assert "openai-sdk" in flow.comment and "1 memory injected" in flow.comment
    assert flow.metadata["memproxy"] | {"ms": 0} == flow.metadata["memproxy"] | {
        "user_id": "openai-sdk", "rule": "openai-sdk", "injected": 1, "adapter": "openai_chat", "ms": 0
    }


async def test_the_user_scope_is_recalled_beside_and_labelled_apart(addon):
    use(addon, FakeStore(["User: use Redis for caching\nAssistant: ok"], user=["Answer in British English"]))
    flow = chat_flow(user_agent="OpenAI/Python 3.57.0")
    await addon.request(flow)
    block = json.loads(flow.request.content)["messages"][0]["content"]
    mine, theirs = block.split("From scope user (your preferences in every project):\n")
    assert "use Redis for caching" in mine and "British English" in theirs
    assert "2 memories injected" in flow.comment
    assert flow.metadata["memproxy"]["also_recall"] == ["user"]


@pytest.mark.parametrize("store", [FakeStore(["x"], delay=3600), FakeStore(error=RuntimeError("backend down"))])
async def test_slow_or_failing_store_fails_open(addon, store, caplog):
    """The store answers in an hour (or fails): the hook returns at all only because of its time budget."""
    use(addon, store)
    flow = chat_flow()
    before = flow.request.copy()
    await addon.request(flow)
    assert flow.request.content == before.content
    assert flow.metadata["memproxy"]["injected"] == 0
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()  # the hour-long search


async def test_exception_in_hook_leaves_flow_untouched_and_logs_one_line(addon, caplog, monkeypatch):
    use(addon, FakeStore(["a memory"]))
    flow = chat_flow(authorization="Bearer sk-secret-should-not-leak", x_memory_user_id="bob")

    def boom(*args):
        raise ValueError("adapter exploded")

    monkeypatch.setattr("memproxy.protocols.openai_chat.OpenAIChatAdapter.inject", boom)
    before = flow.request.content
    with caplog.at_level(logging.WARNING):
        await addon.request(flow)
    assert flow.request.content == before
    lines = [r.getMessage() for r in caplog.records if "memproxy" in r.getMessage()]
    assert len(lines) == 1 and "ValueError: adapter exploded" in lines[0]
    assert "sk-secret" not in caplog.text and "Traceback" not in caplog.text


async def test_same_turn_twice_is_one_memory_id(addon):
    """Turns carry a stable custom id, so a retried request does not duplicate its memory."""
    use(addon, FakeStore())
    ids = []
    for _ in range(2):
        flow = chat_flow("Remember: the staging DB is read-only")
        await addon.request(flow)
        flow.response = tflow.tresp()
        flow.response.headers["content-type"] = "application/json"
        flow.response.content = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Got it."}}]}).encode()
        await addon.response(flow)
        ids.append(addon.store.outbox.pop().custom_id)
    assert ids[0] and ids[0] == ids[1]


async def test_auxiliary_request_is_annotated_and_untouched(addon):
    use(addon, FakeStore(["never injected"]))
    flow = chat_flow(user_agent="codex_exec/0.169.0")
    body = json.loads(flow.request.content) | {"generate": False}
    flow.request.path = "/v1/responses"
    flow.request.content = json.dumps({"model": "gpt-5", "input": [], **{k: body[k] for k in ("generate",)}}).encode()
    before = flow.request.content
    await addon.request(flow)
    assert flow.request.content == before
    assert "auxiliary" in flow.comment
    assert flow.id not in addon.pending


def test_bad_options_are_refused(addon):
    from mitmproxy import exceptions

    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(addon, memory_timeout_ms=-1)
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(addon, memory_max_body=0)


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
async def test_injection_keeps_the_content_encoding(addon, encoding):
    from mitmproxy.net import encoding as codec

    use(addon, FakeStore(["User: the cache is Redis\nAssistant: ok"]))
    flow = chat_flow(user_agent="OpenAI/Python 3.57.0", content_encoding=encoding)  # mitmproxy encodes it
    assert codec.decode(flow.request.raw_content, encoding) != flow.request.raw_content
    await addon.request(flow)
    assert flow.request.headers["content-encoding"] == encoding
    assert flow.request.headers["content-length"] == str(len(flow.request.raw_content))
    sent = json.loads(codec.decode(flow.request.raw_content, encoding))
    assert "the cache is Redis" in json.dumps(sent)


@pytest.mark.parametrize(
    "raw, written",
    [
        (b'{"n": 1, "t": "caf\xc3\xa9", "f": 0.1}', b'{"n":1,"t":"caf\xc3\xa9","f":0.1}'),
        (b'{"seed": 123456789012345678901234567890}', b'{"seed":123456789012345678901234567890}'),  # past 64 bits
        (b'{"seed": 123456789012345678901234567890, "x": NaN}', None),
        (b'{"x": NaN}', None),  # neither NaN, a BOM, UTF-16 nor a lone surrogate could be written back as sent
        (b'\xef\xbb\xbf{"bom": true}', None),
        ('{"utf16": true}'.encode("utf-16"), None),
        (b'{"s": "\\ud800"}', None),
        (b'[' * 100_000, None),
    ],
)
def test_bodies_are_parsed_only_if_they_can_be_written_back_as_sent(raw: bytes, written: bytes | None) -> None:
    from memproxy.jsonbody import parse

    parsed = parse(raw)
    if written is None:
        assert parsed is None  # the request passes through untouched
    else:
        body, dumps = parsed
        assert dumps(body) == written


def test_the_threads_of_continued_replies_are_the_latest_max_chains() -> None:
    from memproxy.addons.requestpath import MAX_CHAINS, Thread

    path = RequestPath(*[None] * 6)  # _chain touches none of its collaborators
    conversation = Thread()
    path._chain(("team", "conv_1"), conversation)
    for n in range(MAX_CHAINS):
        path._chain(("team", f"resp_{n}"), Thread())
        path._chain(("team", "conv_1"), conversation)  # each reply of the conversation keeps its name again
    assert len(path.chains) == MAX_CHAINS and path.chains[("team", "conv_1")] is conversation
    assert list(path.chains)[:-1] == [("team", f"resp_{n}") for n in range(1, MAX_CHAINS)]  # resp_0 went


def test_the_threads_of_continued_replies_hold_at_most_max_chain_chars() -> None:
    from memproxy.addons.requestpath import MAX_CHAIN_CHARS, Thread
    from memproxy.echoes import KEPT

    path = RequestPath(*[None] * 6)
    per_thread = 0
    for n in range(MAX_CHAIN_CHARS // (100 * KEPT) + 2):
        thread = Thread()
        for _ in range(50):
            thread.heard.turn("u" * KEPT, "a" * KEPT)
        per_thread = thread.heard.chars
        path._chain(("team", f"resp_{n}"), thread)
        path._chain(("team", f"conv_{n}"), thread)  # one thread under two names counts once
    assert per_thread == 100 * KEPT
    kept = len({id(t) for t in path.chains.values()})
    assert kept == MAX_CHAIN_CHARS // per_thread and ("team", "resp_0") not in path.chains


# -- a conversation the client compacted goes on answering its prompt ------------------------------------------------

SUMMARY = ("This session is being continued from a previous conversation that ran out of context. The summary below"
           " covers the earlier portion of the conversation.\n\nSummary:\nThe user asked how caching works here.")
PROMPT = "How does caching work in this service?"


def test_a_threads_message_going_on_from_a_summary_answers_the_threads_prompt() -> None:
    """On a WebSocket (Codex), a message going on from the client's summary of the conversation answers the prompt
    the connection asked last; on a new connection, no prompt."""
    from memproxy.addons.requestpath import Thread
    from memproxy.protocols.base import Entry
    from memproxy.protocols.common import find_prompt

    asked = [Entry("user", PROMPT)]
    compacted = [Entry("user", PROMPT), Entry("user", "Another language model started to solve this problem and"
                                                       " produced a summary of its thinking process. It found two.")]
    thread = Thread()
    user, key, _ = thread.answers(find_prompt(asked), asked)
    assert (user, key) == (PROMPT, find_prompt(asked).key)
    assert find_prompt(compacted).compacted
    assert thread.answers(find_prompt(compacted), compacted) == (PROMPT, key, ())
    assert Thread().answers(find_prompt(compacted), compacted) == ("", "", ())


def loop_flow(adapter: str, messages: list[dict], session: str | None) -> tflow.HTTPFlow:
    """A step of a tool loop as the client sends it whole, in the Anthropic or the Chat format, with the client's
    name for its session where it gives one (Claude Code's `metadata.user_id`, Qwen Code's `prompt_cache_key`,
    opencode's `x-session-id` header)."""
    flow = chat_flow(user_agent="OpenAI/Python 3.57.0")
    body: dict = {"model": "m", "messages": messages}
    if adapter == "anthropic":
        flow.request.host, flow.request.path = "api.anthropic.com", "/v1/messages"
        body |= {"max_tokens": 64} | ({"metadata": {"user_id": session}} if session is not None else {})
    elif adapter == "opencode" and session is not None:  # in a header: opencode's body names no session
        flow.request.headers["x-session-id"] = session
    elif session is not None:
        body["prompt_cache_key"] = session
    flow.request.content = json.dumps(body).encode()
    return flow


def tool_step(adapter: str, n: int) -> list[dict]:
    """The assistant's call of a tool and the tool's result, in `adapter`'s format."""
    if adapter == "anthropic":
        return [{"role": "assistant", "content": [{"type": "tool_use", "id": f"t{n}", "name": "Bash", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{n}", "content": "ok"}]}]
    call = {"id": f"t{n}", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}
    return [{"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"t{n}", "content": "ok"}]


async def answer(addon: RequestPath, flow: tflow.HTTPFlow, adapter: str, text: str):
    """Answer `flow` with `text` and give back the turn it submits (None for none)."""
    flow.response = tflow.tresp()
    flow.response.headers["content-type"] = "application/json"
    body = {"content": [{"type": "text", "text": text}]} if adapter == "anthropic" else {
        "choices": [{"message": {"role": "assistant", "content": text}}]}
    flow.response.content = json.dumps(body).encode()
    before = len(addon.store.outbox)
    await addon.response(flow)
    return addon.store.outbox[-1] if len(addon.store.outbox) > before else None


@pytest.mark.parametrize("adapter", ["anthropic", "openai_chat", "opencode"])
async def test_a_conversation_compacted_in_a_tool_loop_goes_on_answering_its_prompt(addon, adapter):
    """Claude Code and Qwen Code compact a long tool loop into a summary and go on from it: the prompt is no longer
    in the request, but the session (the client's name for it) is the same. The final answer updates the
    prompt's memory; the step stored before the summary is not recalled into the steps after it."""
    step = "I will look at the cache module first."
    use(addon, FakeStore([f"User: {PROMPT}\nAssistant: {step}", "User: Where is Redis configured?\nAssistant: In app.toml."]))
    first = loop_flow(adapter, [{"role": "user", "content": PROMPT}], "session-1")
    await addon.request(first)
    stepped = await answer(addon, first, adapter, step)
    assert stepped.content == f"User: {PROMPT}\nAssistant: {step}"

    going_on = [{"role": "user", "content": SUMMARY}, *tool_step(adapter, 1)]
    after = loop_flow(adapter, going_on, "session-1")
    await addon.request(after)
    sent = after.request.content.decode()
    assert "In app.toml." in sent and step not in sent  # recalled with the prompt, its own step left out
    final = await answer(addon, after, adapter, "Caching goes through Redis.")
    assert final is not None and final.custom_id == stepped.custom_id  # one memory per prompt
    assert final.content == f"User: {PROMPT}\nAssistant: Caching goes through Redis."
    assert final.metadata["calls"] == ["Bash"] and final.metadata["conversation"] == stepped.metadata["conversation"]


@pytest.mark.parametrize("session", [None, "session-2"])
async def test_a_summary_from_no_known_session_answers_no_prompt(addon, session):
    """Without the client's name for its session, or with another session's, nothing tells which prompt a
    summary goes on with: the request is stored as before, not at all, and nothing is recalled for it."""
    use(addon, FakeStore([f"User: {PROMPT}\nAssistant: Through Redis."]))
    first = loop_flow("anthropic", [{"role": "user", "content": PROMPT}], "session-1")
    await addon.request(first)
    await answer(addon, first, "anthropic", "I will look first.")
    after = loop_flow("anthropic", [{"role": "user", "content": SUMMARY}, *tool_step("anthropic", 1)], session)
    await addon.request(after)
    assert "Through Redis." not in after.request.content.decode()
    assert await answer(addon, after, "anthropic", "Caching goes through Redis.") is None


async def test_a_new_prompt_after_a_summary_is_its_own_memory(addon):
    """A prompt the user asks after the client compacted is a prompt of its own, not the earlier one's."""
    use(addon, FakeStore())
    first = loop_flow("anthropic", [{"role": "user", "content": PROMPT}], "session-1")
    await addon.request(first)
    before = await answer(addon, first, "anthropic", "Through Redis.")
    asked = "And where is Redis configured?"
    later = loop_flow("anthropic", [{"role": "user", "content": SUMMARY}, {"role": "user", "content": asked}], "session-1")
    await addon.request(later)
    turn = await answer(addon, later, "anthropic", "In app.toml.")
    assert turn.content == f"User: {asked}\nAssistant: In app.toml." and turn.custom_id != before.custom_id


@pytest.mark.parametrize("adapter", ["anthropic", "openai_chat", "opencode"])
async def test_the_same_prompt_in_another_session_is_another_memory(addon, adapter):
    """Two sessions of a client that start with the same prompt are two memories: the second session's answer
    does not replace the first's. A retry or a later step in the same session updates its one memory; where the
    client names no session, the prompt's text alone names it, as before. The prompt's key is the same in both
    sessions: the echo check reads it from the conversation, which names no session."""
    use(addon, FakeStore())

    async def asked(session: str | None, reply: str):
        flow = loop_flow(adapter, [{"role": "user", "content": PROMPT}], session)
        await addon.request(flow)
        return await answer(addon, flow, adapter, reply)

    monday = await asked("session-1", "Through Redis, with a 60 s expiry.")
    retried = await asked("session-1", "Through Redis, with a 60 s expiry, per key.")
    tuesday = await asked("session-2", "Through the new in-process cache since the Redis removal.")
    assert retried.custom_id == monday.custom_id and tuesday.custom_id != monday.custom_id
    assert tuesday.metadata[PROMPT_KEY] == monday.metadata[PROMPT_KEY]
    nameless = [await asked(None, reply) for reply in ("Through Redis.", "Through memcached.")]
    assert nameless[0].custom_id == nameless[1].custom_id not in (monday.custom_id, tuesday.custom_id)


def test_the_latest_prompt_is_kept_per_scope_and_session_for_the_latest_max_sessions() -> None:
    from memproxy.addons.requestpath import MAX_SESSIONS
    from memproxy.protocols.base import Entry, Prompt

    path = RequestPath(*[None] * 6)  # _asked touches none of its collaborators
    compacted = Prompt("", "", compacted=True)
    asked = path._asked("team", "s", Prompt("How?", "k1", conversation="c"), [])
    assert path._asked("team", "s", compacted, []) is asked and asked.key == "k1"
    assert path._asked("other", "s", compacted, []) is None  # never across scopes
    assert path._asked("team", "t", compacted, []) is None and path._asked("team", "", compacted, []) is None
    assert path._asked("team", "s", Prompt("", "", follows=True), []) is None  # a step with no summary: no prompt
    assert path._asked("team", "s", Prompt("How?", "k1"), []) is asked  # a later step of the same prompt
    assert path._asked("team", "s", Prompt("How?", "k9"), []).key == "k9"  # asked again later in the conversation
    assert path._asked("team", "s", Prompt("Why?", "k2"), []).key == "k2" == path._asked("team", "s", compacted, []).key
    # The same prompt after a summary that kept it (Gemini CLI's): its key changed, its memory did not. A client
    # that names no session is known by the prompt's text.
    snapshot = [Entry("user", "<state_snapshot>The user asked why.</state_snapshot>"), Entry("user", "Why?")]
    assert path._asked("team", "s", Prompt("Why?", "k3", follows=True), snapshot).key == "k2"
    first = path._asked("team", "", Prompt("Where?", "k4"), [])
    assert path._asked("team", "", Prompt("Where?", "k5", follows=True), snapshot) is first and first.key == "k4"
    # Without tool results after it, the summary cut through no loop of it: a new prompt with the same words.
    assert path._asked("team", "", Prompt("Where?", "k7"), snapshot).key == "k7"
    assert path._asked("team", "", Prompt("Where?", "k6"), []).key == "k6"  # no summary: another conversation's
    for n in range(MAX_SESSIONS):
        path._asked("team", f"s{n}", Prompt("How?", f"k{n}"), [])
    assert len(path.asked) == MAX_SESSIONS and ("team", "s") not in path.asked


def test_a_session_keeps_its_project_route_for_a_summary_of_no_directory() -> None:
    """A request of no project (a summary that names no directory) takes the latest project route of its session,
    only where its own rule, of the same tool, would store: never an auxiliary call's, a subagent's, another
    tool's, one the override header scopes, and never the route of a rule that stores nothing."""
    import dataclasses

    from memproxy.addons.requestpath import MAX_SESSIONS
    from memproxy.rules.model import Actions, Route

    path = RequestPath(*[None] * 6)  # _session_route touches none of its collaborators

    def route(scope: str, project: str | None, tool: str | None = "Qwen Code", **actions) -> Route:
        return Route(scope, "r", False, None, False, Actions(**actions), {}, project, tool)

    shop = route("project:shop", "/src/shop")
    assert path._session_route("s", route("project:shop", "/src/shop", store=False)) is None
    assert path._session_route("s", route("qwen-code", None)) is None  # nothing kept yet
    assert path._session_route("s", shop) is None and path.routes["s"] is shop
    assert path._session_route("s", route("qwen-code", None)) is shop
    for other in (route("qwen-code", None, auxiliary=True), route("qwen-code", None, store=False),
                  route("opencode", None, tool="opencode"), dataclasses.replace(route("team", None), custom_header_present=True)):
        assert path._session_route("s", other) is None
    assert path._session_route("t", route("qwen-code", None)) is None  # another session
    # Rules that name no tool (an SDK's, a project port's) are no one client: a session id they share is no session.
    assert path._session_route("alice", route("project:a", "/src/a", tool=None)) is None
    assert path._session_route("alice", route("openai-sdk", None, tool=None)) is None
    for n in range(MAX_SESSIONS):
        path._session_route(f"s{n}", shop)
    assert len(path.routes) == MAX_SESSIONS and "s" not in path.routes


# -- a thread's prompt with the words of the one before it is a new prompt; a retry keeps its memory --------------

CWD = "<environment_context><cwd>/tmp/shop</cwd></environment_context>"


def said(*items: dict) -> list[dict]:
    """Responses input items: each of `items` a role and a text."""
    kind = {"user": "input_text", "assistant": "output_text"}
    return [{"type": "message", "role": r, "content": [{"type": kind[r], "text": t}]} for item in items for r, t in item.items()]


def whole_key(*prompts: str) -> str:
    """The key a request carrying the whole conversation gives its last prompt (`find_prompt`)."""
    from memproxy.protocols.base import Entry
    from memproxy.protocols.common import find_prompt

    return find_prompt([Entry("user", text) for text in (CWD, *prompts)]).key


async def test_codex_asking_continue_twice_on_its_websocket_is_two_memories_and_a_retry_one(addon):
    """Codex over its WebSocket (`store: false`, so no reply it names can be continued elsewhere) sends each prompt
    alone. "continue" after "continue" follows a newer reply: a prompt of its own, keyed as a whole conversation
    would key it. The same message again after a reply that failed, saying nothing, is a retry of it."""
    from mitmproxy import websocket
    from wsproto.frame_protocol import Opcode

    use(addon, FakeStore())
    flow = tflow.twebsocketflow(messages=False)
    flow.request.host, flow.request.port, flow.request.path = "api.openai.com", 443, "/v1/responses"
    flow.request.headers["user-agent"] = "codex_exec/0.169.0"
    flow.metadata["memproxy_served"] = True

    async def send(message: dict, from_client: bool = True) -> None:
        flow.websocket.messages.append(websocket.WebSocketMessage(Opcode.TEXT, from_client, json.dumps(message).encode()))
        await addon.websocket_message(flow)

    async def ask(n: int, items: list[dict], reply: str, ending: str = "response.completed"):
        before = len(addon.store.outbox)
        link = {"previous_response_id": f"resp_{n - 1}"} if n else {}
        await send({"type": "response.create", "model": "gpt-5", "store": False, "input": items, **link})
        if reply:
            await send({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": reply}, False)
        await send({"type": ending, "response": {"id": f"resp_{n}", "output": []}}, False)
        return addon.store.outbox[-1] if len(addon.store.outbox) > before else None

    fixed = await ask(0, said({"user": CWD}, {"user": "fix the bug in cache.py"}), "Fixed.")
    tests = await ask(1, said({"user": "continue"}), "Added tests.")
    assert await ask(2, said({"user": "continue"}), "", "response.failed") is None  # said nothing
    docs = await ask(2, said({"user": "continue"}), "Updated docs.")  # the same message again: a retry
    assert [t.content.split("\n")[1] for t in (fixed, tests, docs)] == ["Assistant: Fixed.", "Assistant: Added tests.",
                                                                      "Assistant: Updated docs."]
    assert len({fixed.custom_id, tests.custom_id, docs.custom_id}) == 3  # none overwrites another
    assert (tests.key, docs.key) == (whole_key("fix the bug in cache.py", "continue"),
                                     whole_key("fix the bug in cache.py", "continue", "continue"))


def reply_flow(link: dict, items: list[dict]) -> tflow.HTTPFlow:
    flow = chat_flow(user_agent="OpenAI/Python 3.57.0")
    flow.request.path = "/v1/responses"
    flow.request.content = json.dumps({"model": "gpt-5", "input": items, **link}).encode()
    return flow


async def answered(addon: RequestPath, flow: tflow.HTTPFlow, reply_id: str, text: str):
    """Answer a Responses request with `text` (a reply named `reply_id`) and give back the turn it submits."""
    flow.response = tflow.tresp()
    flow.response.headers["content-type"] = "application/json"
    flow.response.content = json.dumps({"id": reply_id, "output": said({"assistant": text})}).encode()
    before = len(addon.store.outbox)
    await addon.response(flow)
    return addon.store.outbox[-1] if len(addon.store.outbox) > before else None


async def test_continue_twice_on_a_previous_response_id_chain_is_two_memories_and_a_retry_one(addon):
    """Requests chained by `previous_response_id`: "continue" after "continue" names a newer reply, and is a prompt
    of its own. A request that names the same reply again is a retry, even once its first try was answered: it
    keeps the prompt's memory."""
    use(addon, FakeStore())
    turns = []
    for n, (text, previous) in enumerate([("fix the bug in cache.py", None), ("continue", "resp_0"),
                                          ("continue", "resp_1"), ("continue", "resp_1")]):
        flow = reply_flow({"previous_response_id": previous} if previous else {},
                          said({"user": CWD}, {"user": text}) if previous is None else said({"user": text}))
        await addon.request(flow)
        turns.append(await answered(addon, flow, f"resp_{n}", f"Step {n}."))
    fixed, tests, docs, retried = turns
    assert len({fixed.custom_id, tests.custom_id, docs.custom_id}) == 3  # none overwrites another
    assert retried.custom_id == docs.custom_id and retried.content == "User: continue\nAssistant: Step 3."
    assert docs.key == whole_key("fix the bug in cache.py", "continue", "continue")


@pytest.mark.parametrize("store", [False, True, None], ids=["store-false", "store-true", "store-unset"])
async def test_a_responses_conversation_compacted_in_a_tool_loop_goes_on_answering_its_prompt(addon, store):
    """Codex over HTTP sends its whole conversation with `store: false` (OpenAI) or `store: true` (Azure, whose
    replies a later request may name), and compacts a long tool loop into a summary. Either way the final answer
    updates the prompt's memory, and so does a later request naming that reply."""
    use(addon, FakeStore())
    link = {} if store is None else {"store": store}
    call = [{"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"}]

    def flow_of(items: list[dict], **more: str) -> tflow.HTTPFlow:
        flow = reply_flow({**link, **more}, items)
        flow.request.content = json.dumps({**json.loads(flow.request.content), "prompt_cache_key": "session-1"}).encode()
        return flow

    first = flow_of(said({"user": CWD}, {"user": PROMPT}))
    await addon.request(first)
    stepped = await answered(addon, first, "resp_1", "I will look at the cache module first.")
    after = flow_of(said({"user": SUMMARY}) + call)
    await addon.request(after)
    final = await answered(addon, after, "resp_2", "Caching goes through Redis.")
    assert final is not None and final.custom_id == stepped.custom_id  # one memory per prompt
    assert final.content == f"User: {PROMPT}\nAssistant: Caching goes through Redis."
    if store is not False:  # the provider keeps the reply: a request naming it goes on with the prompt
        later = flow_of(call, previous_response_id="resp_2")
        await addon.request(later)
        again = await answered(addon, later, "resp_3", "Caching goes through Redis, kept an hour.")
        assert again is not None and again.custom_id == stepped.custom_id
        assert again.content == f"User: {PROMPT}\nAssistant: Caching goes through Redis, kept an hour."


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "one-after-the-other"])
async def test_branches_of_one_reply_are_a_memory_each(addon, interleaved):
    """Two prompts going on from the same `previous_response_id` (a prompt edited or regenerated, or two branches
    run at once), each a tool loop: each branch's answer goes into its own prompt's memory, never the other's;
    and a later prompt going on from the first reply again is a branch of its own too."""
    use(addon, FakeStore())
    hello = reply_flow({}, said({"user": CWD}, {"user": "Hello, this is the orchard project."}))
    await addon.request(hello)
    await answered(addon, hello, "resp_0", "Hi.")

    def asked(previous: str, text: str) -> tflow.HTTPFlow:
        return reply_flow({"previous_response_id": previous}, said({"user": text}))

    def step(previous: str) -> tflow.HTTPFlow:
        return reply_flow({"previous_response_id": previous}, [{"type": "function_call_output", "call_id": "c", "output": "ok"}])

    alpha, beta = asked("resp_0", "Which files are in src/alpha?"), asked("resp_0", "Which files are in src/beta?")
    if interleaved:
        await addon.request(alpha)
        await addon.request(beta)
        a1, b1 = await answered(addon, alpha, "resp_a1", "Listing alpha."), await answered(addon, beta, "resp_b1", "Listing beta.")
    else:
        await addon.request(alpha)
        a1 = await answered(addon, alpha, "resp_a1", "Listing alpha.")
        await addon.request(beta)
        b1 = await answered(addon, beta, "resp_b1", "Listing beta.")
    alpha2, beta2 = step("resp_a1"), step("resp_b1")
    await addon.request(alpha2)
    await addon.request(beta2)
    a2, b2 = await answered(addon, alpha2, "resp_a2", "Alpha holds a.py."), await answered(addon, beta2, "resp_b2", "Beta holds b.py.")
    assert (a2.custom_id, a2.content) == (a1.custom_id, "User: Which files are in src/alpha?\nAssistant: Alpha holds a.py.")
    assert (b2.custom_id, b2.content) == (b1.custom_id, "User: Which files are in src/beta?\nAssistant: Beta holds b.py.")
    assert a1.custom_id != b1.custom_id
    gamma = asked("resp_0", "Which files are in src/gamma?")
    await addon.request(gamma)
    g1 = await answered(addon, gamma, "resp_g1", "Gamma is empty.")
    assert g1.custom_id not in (a1.custom_id, b1.custom_id)


async def test_a_long_loop_on_a_chain_leaves_the_other_chains_kept(addon):
    """Requests chained by `previous_response_id`: a tool loop of 100 steps names 100 replies, yet a conversation
    asked before it still goes on with its prompt (its key, and its own turn not recalled into it)."""
    use(addon, FakeStore([f"User: {PROMPT}\nAssistant: Through Redis."]))
    first = reply_flow({}, said({"user": CWD}, {"user": PROMPT}))
    await addon.request(first)
    await answered(addon, first, "resp_x", "Through Redis.")
    loop = reply_flow({}, said({"user": CWD}, {"user": "List the files."}))
    await addon.request(loop)
    await answered(addon, loop, "resp_y0", "Listing.")
    for n in range(1, 101):
        step = reply_flow({"previous_response_id": f"resp_y{n - 1}"},
                          [{"type": "function_call_output", "call_id": f"c{n}", "output": "ok"}])
        await addon.request(step)
        await answered(addon, step, f"resp_y{n}", f"Step {n}.")
    later = reply_flow({"previous_response_id": "resp_x"}, said({"user": "And where is it configured?"}))
    await addon.request(later)
    assert "Through Redis." not in later.request.content.decode()  # the conversation's own turn
    turn = await answered(addon, later, "resp_x2", "In app.toml.")
    assert turn.key == whole_key(PROMPT, "And where is it configured?")
    assert len(addon.chains) <= 8  # each thread its latest names


# -- Gemini CLI, which names no session: a prompt keeps an earlier key only where a summary cut through its loop --

STATE = "<state_snapshot>\n<overall_goal>Speed up the cache.</overall_goal>\n</state_snapshot>"
GEMINI_CONTEXT = "<session_context>This is the Gemini CLI. Workspace Directories: /tmp/shop</session_context>"


def gemini_flow(contents: list[dict]) -> tflow.HTTPFlow:
    flow = chat_flow(user_agent="GeminiCLI-tui/0.61.0/gemini-2.5-pro (linux; x64)")
    flow.request.host = "generativelanguage.googleapis.com"
    flow.request.path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    flow.request.content = json.dumps({"contents": contents}).encode()
    return flow


def content(role: str, text: str) -> dict:
    return {"role": role, "parts": [{"text": text}]}


async def gemini_answer(addon: RequestPath, flow: tflow.HTTPFlow, text: str):
    flow.response = tflow.tresp()
    flow.response.headers["content-type"] = "application/json"
    flow.response.content = json.dumps(
        {"candidates": [{"content": content("model", text), "finishReason": "STOP"}]}).encode()
    before = len(addon.store.outbox)
    await addon.response(flow)
    return addon.store.outbox[-1] if len(addon.store.outbox) > before else None


async def test_gemini_cli_asking_after_its_summary_what_another_conversation_asked_is_a_memory_of_its_own(addon):
    """Gemini CLI names no session, so its prompts are known by their text. A prompt after a summary with no tool
    results after it is a new one, even with the words of another conversation's prompt: it neither takes that
    memory's id nor leaves it out of what is recalled as its own. Only a loop the summary cut through goes on in
    its prompt's memory."""
    earlier = "User: continue\nAssistant: First conversation: I finished migrating the cache to Redis."
    use(addon, FakeStore([earlier]))
    first = gemini_flow([content("user", GEMINI_CONTEXT), content("user", "continue")])
    await addon.request(first)
    one = await gemini_answer(addon, first, "First conversation: I finished migrating the cache to Redis.")

    summarised = [content("user", GEMINI_CONTEXT), content("user", STATE), content("model", "Got it."),
                  content("user", "continue")]
    second = gemini_flow(summarised)
    await addon.request(second)
    assert "migrating the cache to Redis" in second.request.content.decode()  # not this conversation's own turn
    two = await gemini_answer(addon, second, "Second conversation: I added the benchmark for the LRU.")
    assert two.custom_id != one.custom_id

    call = {"functionCall": {"name": "run_shell_command", "args": {"command": "ls"}}}
    result = {"functionResponse": {"name": "run_shell_command", "response": {"output": "a.py"}}}
    step = [{"role": "model", "parts": [call]}, {"role": "user", "parts": [result]}]
    looped = gemini_flow([*summarised, *step])
    await addon.request(looped)  # a step of its loop
    assert (await gemini_answer(addon, looped, "Second conversation: the benchmark runs in CI.")).custom_id == two.custom_id

    asked = "run the benchmark"
    before = gemini_flow([content("user", GEMINI_CONTEXT), content("user", "Speed up the cache."), content("model", "Done."),
                          content("user", asked)])
    await addon.request(before)
    three = await gemini_answer(addon, before, "I will run it first.")
    cut = gemini_flow([content("user", GEMINI_CONTEXT), content("user", STATE), content("model", "Got it."),
                       content("user", asked), *step])
    await addon.request(cut)  # the summary took the place of what came before the prompt, in its loop
    final = await gemini_answer(addon, cut, "The benchmark runs in 2 s.")
    assert final.custom_id == three.custom_id and final.metadata["calls"] == ["run_shell_command"]
