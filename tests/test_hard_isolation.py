"""Isolation: a memory stored in one scope is never recalled, listed or forgotten through another scope.

A property test with random and adversarial scopes and turns, on both backends: the local store on a
temporary file, and the Supermemory store against the fake Supermemory (which keeps one container per
containerTag, exactly matched). Every memory shares one word, so that any scope's search would find every
memory of every scope if the store ignored scopes; the test proves it would fail then (a scope-blind
store). If the fake ignored containerTag, the Supermemory property would fail the same way.
Recall goes through one `Recall` per example, so that its cache, shared by all scopes, is covered too.

Project scopes get the same property: roots that share a directory name, differ by a subdirectory or look
alike, named by a real project registry, each find only their own memories, and the user scope recalled
beside a project's lands in its own part of the memory block, holding only the user scope's memories.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.supermemory import FakeSupermemory
from hypothesis import given, settings
from hypothesis import strategies as st
from memproxy.memory.base import Memory, MemoryStore
from memproxy.memory.local import LocalStore
from memproxy.memory.supermemory import SupermemoryStore, container_tag
from memproxy.protocols import frame_context
from memproxy.recall import Recall
from memproxy.repos import ProjectRegistry
from memproxy.rules import USER_SCOPE, project_scope

KEY = "sm_test_isolation_key"
CANARY = "isolationcanary"  # in every memory and every query
TIMEOUT = 10.0  # recall's budget: generous, a timeout would read as "nothing found" and fail the test

FTS = ['"', "*", ":", "AND", "OR", "NOT", "NEAR(", "NEAR(a b, 2)", "^", "(", ")", "-", "+", "'", "%", "_", "\\",
       '"unterminated', "a*", "content:", "scopetok:", "{x}", "\x00"]  # fmt: skip
SCOPES = [
    "a", "ab", "a:b", "a:b:c", "a b", "a/b", "a-b", "a_b", "a.b", "a::b", "a:b ",  # prefixes; alike once rewritten
    "Proj", "proj", "PROJ",  # case only
    "café", "cafe\u0301", "Straße", "strasse", "ﬁle", "file", "ａ", "日本語", "🙂",  # NFC/NFD, casefold, NFKC
    'q"uote', "star*", "col:on", "AND", "NEAR(", "x OR y", "scopetok:s61", "", " ",  # FTS5 syntax
    "x" * 100, "x" * 101, "y" * 150 + "1", "y" * 150 + "2",  # Supermemory's 100-character limit
    "claude-code:repo", "claude-code-repo", "codex:shop", "default",
]  # fmt: skip
# Names of the local index's tables and its column, as words.
TOKENS = ["memories_fts_1", "memories_fts_2", "scope_indexes", "terms", "terms:" + CANARY]

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)  # lone surrogates cannot be stored
scopes = st.sampled_from(SCOPES) | text
noise = st.lists(st.sampled_from(FTS + TOKENS) | text, max_size=3).map(" ".join)
turns = st.lists(st.tuples(scopes, noise), min_size=1, max_size=10)
SETTINGS = settings(max_examples=60, deadline=None)


class OneScope(MemoryStore):
    """A store that ignores scopes: everything goes to one. The property must catch it."""

    name = "one-scope"

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner

    async def search(self, scope: str, query: str, limit: int = 5, threshold: float = 0.0) -> list[Memory]:
        return await self.inner.search("everyone", query, limit, threshold)

    async def add(self, scope: str, content: str, custom_id: str | None = None, metadata: Any = None) -> str:
        return await self.inner.add("everyone", content, custom_id, metadata)

    async def list(self, scope: str, limit: int = 100, offset: int = 0) -> list[Memory]:
        return await self.inner.list("everyone", limit, offset)

    async def forget(self, scope: str, memory_id: str) -> bool:
        return await self.inner.forget("everyone", memory_id)


async def check_isolation(store: MemoryStore, turns: list[tuple[str, str]], probes: list[str]) -> None:
    """Store `turns` (scope, noise); then each scope (and each probe scope) finds, lists and can forget
    exactly its own memories. Turns of one scope get custom ids turn-0, turn-1, ...: the same in every scope."""
    own: dict[str, list[str]] = {}
    ids: dict[str, str] = {}
    for n, (scope, extra) in enumerate(turns):
        content = f"{CANARY} mark{n}x {extra} mark{n}y mark{n}z"  # unique, and never a near-duplicate: its marks
        mine = own.setdefault(scope, [])
        ids[content] = await store.add(scope, content, custom_id=f"turn-{len(mine)}", metadata={"n": n})
        mine.append(content)
    recall = Recall(store)
    query = f"{CANARY} {turns[-1][1]}"
    for scope in [*own, *probes]:
        expected = sorted(own.get(scope, []))
        assert sorted(unlabelled(await recall.search(scope, query, 100, 0.0, TIMEOUT))) == expected, scope
        assert sorted(m.content for m in await store.search(scope, query, 100)) == expected, scope
        assert sorted(m.content for m in await store.list(scope)) == expected, scope
    for scope, contents in own.items():  # another scope cannot forget this scope's memory
        for other in own.keys() - {scope}:
            assert not await store.forget(other, ids[contents[0]]), (other, scope)
        assert len(await store.list(scope)) == len(contents)


def unlabelled(recalled: tuple[str, ...]) -> list[str]:
    """Recalled memories without the label recall puts before each: `(tool, day) `."""
    return [LABEL.sub("", text, count=1) for text in recalled]


LABEL = re.compile(r"^\([^)]*\) (?=" + CANARY + ")")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSupermemory]:
    with FakeSupermemory(KEY) as server:
        yield server


Backend = Callable[[Path], MemoryStore]


def supermemory(fake: FakeSupermemory) -> Backend:
    def make(tmp: Path) -> MemoryStore:
        fake.documents.clear()
        return SupermemoryStore(KEY, fake.url)

    return make


@pytest.fixture(scope="module", params=["local", "supermemory"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Makes a fresh, empty store (one per hypothesis example)."""
    if request.param == "local":
        return lambda tmp: LocalStore(tmp / "memories.db")
    return supermemory(request.getfixturevalue("fake"))


def run(backend: Backend, check: Callable[[MemoryStore], Any]) -> None:
    async def go(tmp: Path) -> None:
        store = backend(tmp)
        try:
            await check(store)
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(go(Path(tmp)))


@SETTINGS
@given(turns=turns, probes=st.lists(scopes, max_size=3))
def test_memories_never_cross_scopes(backend: Backend, turns: list[tuple[str, str]], probes: list[str]) -> None:
    run(backend, lambda store: check_isolation(store, turns, probes))


def test_adversarial_scopes_side_by_side(backend: Backend) -> None:
    """A memory in every adversarial scope at once, with FTS5 syntax in every content and the query."""
    run(backend, lambda store: check_isolation(store, [(s, " ".join(FTS)) for s in SCOPES], []))


def test_a_scope_blind_store_fails_the_check(backend: Backend) -> None:
    with pytest.raises(AssertionError):
        run(backend, lambda store: check_isolation(OneScope(store), [("a", ""), ("ab", "")], []))


def test_a_scope_spelled_like_a_rewritten_tag_gets_its_own_container(fake: FakeSupermemory) -> None:
    twin = container_tag("claude-code:repo")  # a valid containerTag, so also a scope that maps to itself
    run(supermemory(fake), lambda store: check_isolation(store, [("claude-code:repo", ""), (twin, "")], []))


# -- project scopes and the user layer ----------------------------------------------------------

ROOTS = [
    "/home/u/work/api", "/home/u/oss/api", "/home/u/api", "/srv/api", "C:/Users/me/api",  # one directory name
    "/home/u/work/api/src", "/home/u/work",  # a subdirectory of a project, its parent
    "/home/u/café", "/home/u/cafe\u0301", "/home/u/my repo", "/home/u/my-repo", "/home/u/my_repo",  # alike
    "/home/u/user", "/home/u/project:x", "/home/u/a@1a2b3c", "/",  # names like another scope or a hashed name
]  # fmt: skip
USER = None  # a turn of the user scope
owners = st.sampled_from([*ROOTS, USER])


async def check_projects(store: MemoryStore, registry: ProjectRegistry, turns: list[tuple[str | None, str]]) -> None:
    """Every root's project scope holds exactly its turns, and a block framed for it with the user layer holds
    its turns before the layer's title and the user scope's after it, nothing else."""
    def scope_of(root: str | None) -> str:
        return USER_SCOPE if root is USER else project_scope(registry.register(root))

    scopes = {root: scope_of(root) for root in [*ROOTS, USER]}
    assert len(set(scopes.values())) == len(scopes)  # no two roots, nor a root and the user, share a scope
    await check_isolation(store, [(scopes[root], noise) for root, noise in turns], list(scopes.values()))
    recall, query = Recall(store), CANARY
    mine = {scope: await recall.search(scope, query, 100, 0.0, TIMEOUT) for scope in scopes.values()}
    title = "From scope user (your preferences in every project):\n"
    for root, scope in scopes.items():
        if root is USER:
            continue
        block = frame_context(mine[scope], scope, 10**6, also=[(USER_SCOPE, mine[USER_SCOPE])])
        project_part, _, user_part = block.partition(title)
        assert marks(project_part) == marks("\n".join(mine[scope])), root
        assert marks(user_part) == marks("\n".join(mine[USER_SCOPE])), root


def marks(text: str) -> list[str]:
    return sorted(re.findall(r"\bmark\d+x\b", text))


@SETTINGS
@given(turns=st.lists(st.tuples(owners, noise), min_size=1, max_size=10))
def test_project_scopes_and_the_user_layer_never_cross(backend: Backend, turns: list[tuple[str | None, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        registry = ProjectRegistry(Path(tmp) / "projects.json")
        run(backend, lambda store: check_projects(store, registry, turns))


# -- a scope's ranking is its own ---------------------------------------------------------------

WORDS = ["deploy", "deploys", "deployed", "rsync", "bastion", "friday", "things", "thing", "careful", "career",
         "redis", "port", "cache", CANARY]  # fmt: skip
sentences = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)


async def check_own_ranking(store: MemoryStore, mine: list[str], others: list[tuple[str, str]], query: str) -> None:
    """A scope's results and their order for `query` are the same before and after other scopes fill up."""
    for n, text in enumerate(mine):
        await store.add("project:mine", f"{text} mark{n}x", custom_id=f"turn-{n}")
    before = [(m.content, round(m.score, 9)) for m in await store.search("project:mine", query, 100)]
    for n, (scope, text) in enumerate(others):
        await store.add(scope, text, custom_id=f"turn-{n}")
    after = [(m.content, round(m.score, 9)) for m in await store.search("project:mine", query, 100)]
    assert after == before


@SETTINGS
@given(
    mine=st.lists(sentences, min_size=1, max_size=8),
    others=st.lists(st.tuples(st.sampled_from(["project:other", "user", "project:mine2", "a"]), sentences), max_size=30),
    query=sentences,
)
def test_other_scopes_never_change_a_scopes_ranking(
    backend: Backend, mine: list[str], others: list[tuple[str, str]], query: str
) -> None:
    run(backend, lambda store: check_own_ranking(store, mine, others, query))
