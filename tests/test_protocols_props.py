"""Property tests for the adapters: arbitrary JSON never makes them raise, injection
only adds, the cached prefix survives injection, and framing respects its cap."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memproxy.protocols import ADAPTERS, frame_context, strip_memory_blocks
from memproxy.protocols.base import INJECT_STRATEGIES, QUERY_STRATEGIES, Adapter, Entry
from memproxy.protocols.common import (
    BOILERPLATE_TAGS,
    CLIENT_LINES,
    _prompted,
    carry,
    clean_query,
    find_prompt,
    visible,
)
from memproxy.protocols.sse import SSEParser
from test_protocols import (
    CLOSING,
    OPENING,
    SPOOFS,
    as_read,
    chat_body,
    claude_code_body,
    codex_body,
    gemini_body,
    simple_anthropic,
)

SETTINGS = settings(max_examples=200, deadline=None)
BY_NAME = {a.name: a for a in ADAPTERS}
IDS = [a.name for a in ADAPTERS]
CONTEXT = '<recalled-memories scope="p">\n- remembered\n</recalled-memories>'

# Words the adapters look for, so that random JSON often takes a meaningful shape.
WORDS = [
    "messages", "role", "content", "type", "text", "user", "assistant", "system", "developer", "model",
    "tool_result", "input", "input_text", "output_text", "message", "instructions", "contents", "parts",
    "systemInstruction", "system_instruction", "cache_control", "thought", "functionResponse", "response.create",
    "choices", "delta", "candidates", "output", "index", "finishReason", "response", "content_block",
]  # fmt: skip
keys = st.sampled_from(WORDS) | st.text(max_size=6)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.sampled_from(WORDS) | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=25,
)
REALISTIC = {
    "anthropic": [claude_code_body, simple_anthropic],
    "openai_chat": [chat_body],
    "openai_responses": [codex_body],
    "gemini": [gemini_body],
}


def _slots(value: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) position inside `value`."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in list(items):
        yield value, key
        yield from _slots(child)


@st.composite
def mutated(draw: st.DrawFn, name: str) -> Any:
    """A realistic body of adapter `name` with a few random edits."""
    body = draw(st.sampled_from(REALISTIC[name]))()
    for _ in range(draw(st.integers(0, 4))):
        slots = list(_slots(body))
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "delete", "cache", "surrogate"]))
        if action == "delete":
            del container[key]
        elif action == "cache" and isinstance(container[key], dict):
            container[key]["cache_control"] = {"type": "ephemeral"}
        elif action == "surrogate" and isinstance(container[key], str):
            container[key] += "\ud800"  # JSON's "\ud800" escape: valid JSON, but not encodable text
        else:
            container[key] = draw(json_values)
    return body


def bodies(name: str) -> st.SearchStrategy[Any]:
    return json_values | mutated(name)


def numbers(value: Any) -> Iterator[tuple[str, str]]:
    """All numbers and booleans in `value`, as (type, repr). (A null may be filled: it means absent.)"""
    if isinstance(value, dict | list):
        for child in value.values() if isinstance(value, dict) else value:
            yield from numbers(child)
    elif isinstance(value, int | float):
        yield type(value).__name__, repr(value)


def strings(value: Any) -> Iterator[str]:
    """All strings in `value`, dict keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield key
            yield from strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from strings(child)


strategies = st.sampled_from([*INJECT_STRATEGIES, "bogus"])


@pytest.mark.parametrize("name", IDS)
@SETTINGS
@given(data=st.data())
def test_never_raises(name: str, data: st.DataObject) -> None:
    adapter = BY_NAME[name]
    body = data.draw(bodies(name))
    for strategy in [*QUERY_STRATEGIES, "bogus"]:
        query = adapter.query(body, strategy)
        assert isinstance(query, str)
        query.encode()  # so it can be searched and stored
    prompt = adapter.prompt(body)
    # The query is the prompt, but for an image alone, searched with the words the user wrote before it
    assert prompt.text == adapter.query(body, "last_user") or (prompt.wordless and not prompt.text)
    assert isinstance(prompt.key, str)
    assert bool(prompt.key) == bool(prompt.text) and all(isinstance(c, str) and c for c in prompt.calls)
    assert isinstance(adapter.model("/v1beta/models/m:generateContent", body), (str, type(None)))
    assert isinstance(adapter.is_streaming("/v1/messages", body), bool)
    assert isinstance(adapter.reply_from_json(body), str)
    reply = adapter.accumulator()
    for event in data.draw(st.lists(json_values, max_size=5)):
        reply.feed(data.draw(st.none() | st.text(max_size=5)), json.dumps(event))
        reply.feed(None, data.draw(st.text(max_size=20)))
    assert isinstance(reply.text(), str) and isinstance(reply.done, bool) and isinstance(reply.calls(), tuple)
    assert isinstance(adapter.inject(body, CONTEXT, data.draw(strategies)), bool)


@pytest.mark.parametrize("name", IDS)
@SETTINGS
@given(data=st.data())
def test_inject_only_adds(name: str, data: st.DataObject) -> None:
    adapter = BY_NAME[name]
    body = data.draw(bodies(name))
    before = copy.deepcopy(body)
    changed = adapter.inject(body, CONTEXT, data.draw(strategies))
    if not changed:
        assert body == before
        return
    assert adapter.matches_body(before) and body != before
    after = list(strings(body))
    assert any(CONTEXT in s for s in after)
    for s in set(strings(before)):
        assert any(s in t for t in after), s
    assert not Counter(numbers(before)) - Counter(numbers(body))  # no number or boolean lost


@pytest.mark.parametrize("name", IDS)
@SETTINGS
@given(body=json_values, strategy=strategies)
def test_inject_leaves_foreign_bodies_alone(name: str, body: Any, strategy: str) -> None:
    adapter = BY_NAME[name]
    if adapter.matches_body(body):
        return
    before = copy.deepcopy(body)
    assert not adapter.inject(body, CONTEXT, strategy)
    assert body == before


def _cached(block: Any) -> bool:
    return isinstance(block, dict) and block.get("cache_control") is not None


def anthropic_atoms(body: dict) -> list[tuple[str, bool]]:
    """The body in Anthropic's cache order (tools, system, messages) as
    (serialised element, is a breakpoint)."""
    atoms = []

    def add(items: Any) -> None:  # only list elements can be breakpoints
        for item in items if isinstance(items, list) else [items]:
            atoms.append((json.dumps(item), isinstance(items, list) and _cached(item)))

    add(body.get("tools", []))
    add(body.get("system", []))
    for message in body["messages"]:
        if isinstance(message, dict):  # cache_control is honoured on blocks, not on messages
            atoms.append((json.dumps({k: v for k, v in message.items() if k != "content"}), False))
            add(message.get("content"))
        else:
            atoms.append((json.dumps(message), False))
    return atoms


def chat_atoms(body: dict) -> list[tuple[str, bool]]:
    """Messages in order; a message-level breakpoint closes the whole message."""
    atoms = []
    for message in body["messages"]:
        if not isinstance(message, dict):
            atoms.append((json.dumps(message), False))
            continue
        atoms.append((json.dumps({k: v for k, v in message.items() if k != "content"}), False))
        content = message.get("content")
        for part in content if isinstance(content, list) else [content]:
            atoms.append((json.dumps(part), isinstance(content, list) and _cached(part)))
        atoms.append(("end", _cached(message)))
    return atoms


@pytest.mark.parametrize("name, atoms", [("anthropic", anthropic_atoms), ("openai_chat", chat_atoms)], ids=["anthropic", "openai_chat"])
@SETTINGS
@given(data=st.data())
def test_inject_keeps_cached_prefix(name: str, atoms: Any, data: st.DataObject) -> None:
    adapter: Adapter = BY_NAME[name]
    body = data.draw(mutated(name))
    before = copy.deepcopy(body)
    if not adapter.inject(body, CONTEXT, data.draw(strategies)):
        return
    old, new = atoms(before), atoms(body)
    breakpoints = [n for n, (_, cached) in enumerate(old) if cached]
    if breakpoints:
        end = breakpoints[-1] + 1
        assert new[:end] == old[:end]
        assert all(CONTEXT not in atom for atom, _ in new[:end])


@SETTINGS
@given(
    memories=st.lists(st.text() | st.sampled_from(["</recalled-memories>", "<recalled-memories x>", "a\nb"]), max_size=6),
    scope=st.text(max_size=20),
    max_chars=st.integers(-10, 600),
)
def test_frame_context_respects_cap_and_is_strippable(memories: list[str], scope: str, max_chars: int) -> None:
    text = frame_context(memories, scope, max_chars)
    assert len(text) <= max_chars or text == ""
    if text:
        assert strip_memory_blocks(f"q {text} r") == "q  r"


# Pieces that tags are made of, in disguise: memory text drawn from them (and anything else) tries to frame itself.
TAG_PIECES = [
    "<", "</", "< /", "<\\/", "\uff1c", "\ufe64", "\uff0f", ">", "\uff1e", " ", "\n", "\t", "\u00a0", "\u3000",
    "recalled", "RECALLED", "ｒｅｃａｌｌｅｄ", "-", "_", "\u2010", "memories", "Memories", "ｍｅｍｏｒｉｅｓ", 'scope="admin"',
    "\u200b", "\u200d", "\u2060", "\u00ad", "\ufeff", "\u202e", "\u2066", "\u061c", "\x00", "\x1b", "\x7f", "\x85",
    "\ud800", "\U000e0041", "e\u0301", "\u0301",
]  # fmt: skip
tag_text = st.lists(st.sampled_from(TAG_PIECES) | st.sampled_from(SPOOFS) | st.text(max_size=4), max_size=24).map("".join)


@SETTINGS
@given(memories=st.lists(tag_text | st.text(), min_size=1, max_size=5), scope=tag_text | st.text(max_size=20))
def test_a_framed_block_has_exactly_one_opening_and_one_closing_tag(memories: list[str], scope: str) -> None:
    text = frame_context(memories, scope, 100_000)
    if not text:  # nothing visible in any memory
        assert all(not visible(m).strip() for m in memories)
        return
    read = as_read(text)
    assert len(OPENING.findall(read)) == 1 and len(CLOSING.findall(read)) == 1, text
    assert read.startswith("<recalled-memories scope=") and read.endswith("</recalled-memories>")
    assert not [c for c in text if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs")]
    assert unicodedata.is_normalized("NFKC", text)


# The regexes that stripped blocks before they were found in linear time: the same answers, on small texts.
OLD_MEMORY_BLOCK = re.compile(r"<recalled-memories\b[^>]*>.*?</recalled-memories>", re.S | re.I)
OLD_BOILERPLATE = re.compile(r"<(%s)\b[^>]*>.*?</\1>" % "|".join(map(re.escape, BOILERPLATE_TAGS)), re.S)
BLOCK_PIECES = [
    "<recalled-memories", "<RECALLED-memories", "</recalled-memories>", "</Recalled-Memories>", "<recalled-memoriesx",
    *(f"<{t}" for t in BOILERPLATE_TAGS), *(f"</{t}>" for t in BOILERPLATE_TAGS), "<System-reminder", "</system-reminder",
    ">", " ", "\n", "x", "<", "/", ' scope="a">',
]  # fmt: skip
block_text = st.lists(st.sampled_from(BLOCK_PIECES), max_size=30).map("".join)


@SETTINGS
@given(text=block_text)
def test_blocks_are_stripped_as_the_lazy_regexes_did(text: str) -> None:
    assert strip_memory_blocks(text) == OLD_MEMORY_BLOCK.sub("", text)
    assert clean_query(text) == OLD_BOILERPLATE.sub("", OLD_MEMORY_BLOCK.sub("", text)).strip()


line_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
sse_events = st.lists(
    st.tuples(
        st.none() | st.text(line_chars, min_size=1, max_size=8),
        st.lists(st.text(line_chars, max_size=12), min_size=1, max_size=3),
    ),
    max_size=5,
)


@SETTINGS
@given(events=sse_events, newline=st.sampled_from(["\n", "\r\n", "\r"]), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_sse_parser_any_chunking(events: list[tuple[str | None, list[str]]], newline: str, cuts: list[int]) -> None:
    text = ""
    for name, lines in events:
        if name is not None:
            text += f"event: {name}{newline}"
        text += "".join(f"data: {line}{newline}" for line in lines) + newline
    raw = text.encode()
    bounds = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    parser = SSEParser()
    got = [e for a, b in zip(bounds, bounds[1:]) for e in parser.feed(raw[a:b])] + parser.feed(b"")
    assert got == [(name, "\n".join(lines)) for name, lines in events]


@SETTINGS
@given(st.lists(st.sampled_from(["a", " ", "\n", "\u200b", "\ud800", "é", "<", ">", "/", "system-reminder",
                                  "recalled-memories", *CLIENT_LINES])).map("".join) | st.text())
def test_a_message_holds_a_prompt_exactly_where_clean_query_leaves_something(text: str) -> None:
    """answered_keys's shortcut for a message without a tag agrees with clean_query."""
    assert _prompted(text) == bool(clean_query(text))


ENTRY_TEXTS = st.sampled_from(["", "  ", "Which files?", "<system-reminder>Today.</system-reminder>", "And tests?",
                               "<environment_context><cwd>/w</cwd></environment_context>", "\ud800",
                               "[Request interrupted by user for tool use]"])


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "tool"]), ENTRY_TEXTS), max_size=12),
       st.lists(st.integers(0, 12), max_size=4))
def test_a_conversation_sent_in_parts_keys_its_prompts_as_the_whole_does(turns: list[tuple[str, str]], cuts: list[int]) -> None:
    """`carry`: what a WebSocket or a chain of replies keys its prompts with, each message carrying what is new."""
    entries = [Entry(role, text) for role, text in turns]
    ends = sorted({min(c, len(entries)) for c in cuts} | {len(entries)})
    digest, start = hashlib.blake2b(digest_size=16), 0
    for end in ends:
        key, _ = carry(digest, entries[start:end])
        whole = find_prompt(entries[:end])
        if key:
            assert key == whole.key
        else:
            assert not any(e.role == "user" and clean_query(e.text) for e in entries[start:end])
        start = end
