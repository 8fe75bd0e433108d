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
from memproxy.memory.base import Memory, MemoryStore
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
