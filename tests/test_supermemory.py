"""The Supermemory store against the fake Supermemory API, over real HTTP."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import SUPERMEMORY_KEY as KEY  # the supermemory fixture's key
from fakes.supermemory import FakeSupermemory
from hypothesis import assume, given
from hypothesis import strategies as st
from memproxy.memory import Memory, StoreError
from memproxy.memory.base import PROMPT_KEY, Keyed
from memproxy.memory.supermemory import (
    DEFAULT_BASE_URL,
    SupermemoryStore,
    _search_hit,
    container_tag,
    document_custom_id,
    flat_metadata,
    retry_after,
    validate_container_tag,
)

SCOPE = "claude-code:my repo/x"


@pytest.fixture
async def store(supermemory: FakeSupermemory) -> AsyncIterator[SupermemoryStore]:
    s = SupermemoryStore(KEY, supermemory.url)
    yield s
    await s.close()


def assert_no_key(error: StoreError) -> None:
    assert KEY not in str(error) and KEY not in repr(error) and KEY not in str(error.args)


# containerTag and customId mapping


@pytest.mark.parametrize("tag", ["user_123", "claude-code.myrepo", "A-b_c.9", "x" * 100])
def test_valid_tags_map_to_themselves(tag: str) -> None:
    validate_container_tag(tag)
    assert container_tag(tag) == tag


def test_invalid_scope_maps_to_a_readable_valid_tag() -> None:
    tag = container_tag(SCOPE)
    validate_container_tag(tag)
    assert tag.startswith("claude-code-my-repo-x-")
    assert container_tag(SCOPE) == tag  # deterministic


def test_scopes_that_sanitize_alike_get_distinct_tags() -> None:
    scopes = ["a:b", "a b", "a/b", "a-b", "a::b", "a:b ", "é", "ü", "", "a" * 101, "a" * 102]
    tags = [container_tag(s) for s in scopes]
    assert len(set(tags)) == len(scopes)
    assert all(len(t) <= 100 for t in tags)


@given(st.text(), st.text())
def test_container_tags_are_valid_and_never_collide(a: str, b: str) -> None:
    assume(a != b)
    validate_container_tag(container_tag(a))
    assert container_tag(a) != container_tag(b)


@pytest.mark.parametrize(
    ("tag", "reason"),
    [("", "empty"), ("a:b", "':'"), ("x" * 101, "101 characters"), ("naïve", "'ï'")],
)
def test_validate_container_tag_explains(tag: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_container_tag(tag)


def test_a_container_tag_without_scope_is_a_prefix_never_one_container_for_all(caplog) -> None:
    store = SupermemoryStore(KEY, container_tag="memproxy")
    assert "container_tag 'memproxy' has no {scope}" in caplog.text and "'memproxy_{scope}'" in caplog.text
    tags = {store.tag(scope) for scope in ("project:api", "project:web", "user")}
    assert len(tags) == 3 and all(tag.startswith("memproxy_") for tag in tags)
    assert SupermemoryStore(KEY, container_tag="team_{scope}").tag("user") == "team_user"


def test_custom_ids_are_valid_and_per_tag() -> None:
    ids = {document_custom_id(tag, cid) for tag in ("a", "b") for cid in ("turn:1", "turn 1", "x" * 300)}
    assert len(ids) == 6
    for cid in ids:
        validate_container_tag(cid)  # the same rule applies to customId


def test_flat_metadata() -> None:
    meta = {"s": "x", "i": 3, "f": 0.5, "b": True, "none": None, "nested": {"k": [1]}, "nan": float("nan")}
    assert flat_metadata(meta) == {"s": "x", "i": 3, "f": 0.5, "b": True, "nested": '{"k": [1]}', "nan": "NaN"}


def test_retry_after_parsing() -> None:
    assert retry_after("120") == 120.0
    assert retry_after("1.5") == 1.5
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("nan") is None
    assert retry_after("-3") == 0.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after(future) <= 31  # type: ignore[operator]
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# configuration


async def test_open_without_key_fails_clearly(supermemory: FakeSupermemory) -> None:
    store = SupermemoryStore("", supermemory.url)
    with pytest.raises(StoreError, match="SUPERMEMORY_API_KEY is not set"):
        await store.open()
    with pytest.raises(StoreError, match="SUPERMEMORY_API_KEY is not set"):
        await store.search("s", "anything")
    assert supermemory.requests == []


async def test_open_is_offline_and_checks_the_url(supermemory: FakeSupermemory) -> None:
    await SupermemoryStore(KEY, supermemory.url).open()
    assert supermemory.requests == []
    with pytest.raises(StoreError, match="SUPERMEMORY_BASE_URL"):
        await SupermemoryStore(KEY, "api.supermemory.ai").open()


def test_unknown_search_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="hybrid"):
        SupermemoryStore(KEY, search_mode="fuzzy")


async def test_from_env(supermemory: FakeSupermemory) -> None:
    store = SupermemoryStore.from_env({"SUPERMEMORY_API_KEY": KEY, "SUPERMEMORY_BASE_URL": supermemory.url + "/"})
    try:
        assert store.base_url == supermemory.url
        await store.add("s", "configured from the environment")
        assert supermemory.last("/v3/documents").headers["authorization"] == f"Bearer {KEY}"
    finally:
        await store.close()
    for env in ({"SUPERMEMORY_API_KEY": KEY}, {"SUPERMEMORY_API_KEY": KEY, "SUPERMEMORY_BASE_URL": ""}):
        assert SupermemoryStore.from_env(env).base_url == DEFAULT_BASE_URL
    with pytest.raises(StoreError, match="SUPERMEMORY_API_KEY is not set"):
        await SupermemoryStore.from_env({}).open()


async def test_closed_store_refuses(store: SupermemoryStore) -> None:
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.add("s", "too late")


async def test_a_client_passed_in_is_used_and_left_open(supermemory: FakeSupermemory) -> None:
    async with httpx.AsyncClient(headers={"x-test": "mine"}) as client:
        store = SupermemoryStore(KEY, supermemory.url, client=client)
        await store.add("s", "via the caller's client")
        await store.close()
        assert not client.is_closed
    assert supermemory.last().headers["x-test"] == "mine"


# add, search, profile, list, forget


async def test_add_then_search_roundtrip(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    await store.add(SCOPE, "The coffee machine on floor three is broken")
    doc_id = await store.add(SCOPE, "Deploys use rsync over SSH to the bastion host", metadata={"turn": 3})
    assert doc_id in supermemory.documents
    [hit] = await store.search(SCOPE, "how do we deploy with rsync over ssh?", limit=5, threshold=0.3)
    assert hit.scope == SCOPE
    assert hit.content == "Deploys use rsync over SSH to the bastion host"
    assert 0.3 <= hit.score <= 1
    assert hit.metadata == {"turn": 3}
    assert hit.created_at > 0
    sent = supermemory.last("/v4/search")
    assert sent.json == {
        "q": "how do we deploy with rsync over ssh?",
        "containerTag": container_tag(SCOPE),
        "limit": 5,
        "threshold": 0.3,
        "searchMode": "hybrid",
        "include": {"documents": True},
    }
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    added = supermemory.last("/v3/documents").json
    assert added["containerTag"] == container_tag(SCOPE)
    assert added["metadata"] == {"turn": 3}


async def test_chunk_results_are_parsed(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    await store.add("s", "Chunks come from document search", metadata={"source": "doc"})
    supermemory.chunk_results = True
    [hit] = await store.search("s", "document chunks")
    assert hit.content == "Chunks come from document search"
    assert hit.id.startswith("chunk_")
    assert hit.metadata == {"source": "doc"}
    assert 0 < hit.score <= 1


async def test_a_memory_written_from_turns_names_their_prompts(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    """Supermemory writes memories from documents in its own words; its documents' metadata names each one's
    prompt (PROMPT_KEY), and so the echo check can tell whether a conversation holds them (memory.base.Keyed)."""
    await store.add("s", "User: How do we deploy?\nAssistant: With rsync.", "turn-1", {PROMPT_KEY: "k1", "tool": "Codex"})
    await store.add("s", "User: Where do we deploy?\nAssistant: To the bastion.", "turn-2", {"tool": "Codex"})
    supermemory.own_words = True
    hits = {h.id: h for h in await store.search("s", "deploy rsync bastion")}
    named, unnamed = hits["memory_doc000001"], hits["memory_doc000002"]
    assert "the user asked" in named.content and named.sources == ("k1",) and unnamed.sources == ()
    [text] = await store.start_search("s", "rsync")
    assert isinstance(text, Keyed) and text.keys == ("k1",) and text.endswith("They were told: With rsync.")
    assert text.startswith("(") and ", Codex) " in text  # the tool its turns name, as the note shows it
    supermemory.own_words = False  # a memory as it was stored, naming its prompt in its own metadata
    assert [h.sources for h in await store.search("s", "rsync")] == [("k1",)]
    supermemory.chunk_results = True  # a chunk of a stored turn names its prompt too
    assert [h.sources for h in await store.search("s", "rsync")] == [("k1",)]
    assert [h.sources for h in await store.search("s", "bastion")] == [()]  # a turn that names none


@pytest.mark.parametrize(("documents", "tool"), [
    ([{"id": "d1", "metadata": {"tool": "Codex"}}, {"id": "d2", "metadata": {"tool": "Codex"}}], "Codex"),
    ([{"id": "d1", "metadata": {"tool": "Codex"}}, {"id": "d2", "metadata": {"tool": "Qwen Code"}}], None),
    ([{"id": "d1", "metadata": {"tool": "Codex"}}, {"id": "d2"}], None),  # one of them names none
    ([{"id": "d1", "metadata": {"tool": 7}}], None),
    ([{"id": "d1", "metadata": {"tool": ["a"]}}, {"id": "d2", "metadata": {"tool": ["a"]}}], None),  # unhashable
    ([], None),
    (None, None),
])
def test_a_memory_in_supermemorys_words_shows_the_tool_of_its_turns(documents: object, tool: str | None) -> None:
    result = {"id": "m1", "memory": "A fact.", "similarity": 0.5, "metadata": {}, "documents": documents}
    hit = _search_hit("s", result)
    assert hit is not None and hit.metadata.get("tool") == tool
    own = _search_hit("s", {**result, "metadata": {"tool": "Gemini CLI"}})
    assert own is not None and own.metadata["tool"] == "Gemini CLI"  # its own metadata first


async def test_a_secret_in_a_query_never_reaches_supermemory(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    token = "ghp_" + "Zq7RkW2mT9xVb4Hc8LpN3sYd6FgJ1aQe5UoK"
    await store.search("s", f"why does GITHUB_TOKEN={token} get a 401 from the API?")
    sent = supermemory.last("/v4/search").json["q"]
    assert token not in sent and "[secret: " in sent and sent.startswith("why does GITHUB_TOKEN=")


@pytest.mark.parametrize(("documents", "sources"), [
    ([{"id": "d1", "metadata": {PROMPT_KEY: "k1"}}, {"id": "d2", "metadata": {PROMPT_KEY: "k2"}},
      {"id": "d3", "metadata": {PROMPT_KEY: "k1"}}], ("k1", "k2")),
    ([{"id": "d1", "metadata": {PROMPT_KEY: "k1"}}, {"id": "d2"}], ()),  # a document of no turn of ours
    ([{"id": "d1", "metadata": {PROMPT_KEY: 7}}], ()),
    ([{"id": "d1", "metadata": {PROMPT_KEY: ""}}], ()),
    (["d1"], ()),
    ("d1", ("own",)),  # malformed: the memory's own metadata
    ([], ("own",)),
    (None, ("own",)),
])
def test_a_memory_names_its_turns_only_if_every_document_does(documents: object, sources: tuple[str, ...]) -> None:
    result = {"id": "m1", "memory": "A fact.", "similarity": 0.5, "metadata": {PROMPT_KEY: "own"}, "documents": documents}
    hit = _search_hit("s", result)
    assert hit is not None and hit.sources == sources


async def test_search_is_best_first_and_honours_limit_and_threshold(store: SupermemoryStore) -> None:
    for text in ["alpha", "alpha beta", "alpha beta gamma", "unrelated words"]:
        await store.add("s", text)
    hits = await store.search("s", "alpha beta gamma", limit=2)
    assert [h.content for h in hits] == ["alpha beta gamma", "alpha beta"]
    assert hits[0].score > hits[1].score
    assert [h.content for h in await store.search("s", "alpha beta gamma", threshold=0.9)] == ["alpha beta gamma"]
    assert await store.search("s", "alpha", limit=0) == []
    assert await store.search("s", "   ") == []


async def test_search_never_returns_another_scopes_memories(store: SupermemoryStore) -> None:
    await store.add("team:a", "The release train leaves on Fridays")
    await store.add("team:b", "The release train leaves on Mondays")
    await store.add("team-a", "The release train never leaves")  # sanitizes like team:a
    hits = await store.search("team:a", "when does the release train leave")
    assert [h.content for h in hits] == ["The release train leaves on Fridays"]
    assert all(h.scope == "team:a" for h in hits)
    assert await store.search("team:c", "release train") == []


async def test_custom_id_dedupes_per_scope(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    first = await store.add("s", "draft answer", custom_id="turn:1")
    again = await store.add("s", "final answer", custom_id="turn:1")
    other = await store.add("t", "other scope, same custom id", custom_id="turn:1")
    assert first == again != other
    assert len(supermemory.documents) == 2
    assert supermemory.documents[first].content == "final answer"
    posted = [r.json["customId"] for r in supermemory.requests if r.path == "/v3/documents"]
    assert len(posted) == 2 and posted[0] != posted[1]
    # the later step replaces the document (PATCH): a POST of its customId would add only what is new to it
    [patched] = [r for r in supermemory.requests if r.method == "PATCH"]
    assert patched.path == f"/v3/documents/{first}" and patched.json == {"content": "final answer", "customId": posted[0]}
    assert [m.content for m in await store.list("s")] == ["final answer"]
    assert await store.add("s", "final answer", custom_id="turn:1") == first  # a retry: nothing sent but the listing
    assert len([r for r in supermemory.requests if r.method in ("PATCH", "POST") and "list" not in r.path]) == 3


async def test_near_duplicates_are_merged_into_the_newest(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    answer = ("User: how do we roll back a bad deploy of the api?\nAssistant: run make rollback with the previous"
              " release tag, then watch the error rate on the dashboard for ten minutes before you close the incident")
    first = await store.add("p", answer, custom_id="turn-a", metadata={"tool": "Codex"})
    assert await store.add("p", answer, metadata={"tool": "Codex"}) == first  # the same answer stored twice
    assert supermemory.count(f"/v3/documents/{first}") == 0  # ... changes nothing
    retried = answer.replace("ten minutes", "fifteen minutes")  # a turn retried with one word changed
    assert await store.add("p", retried, custom_id="turn-b", metadata={"tool": "Claude Code"}) == first
    [kept] = await store.list("p")
    assert (kept.content, kept.metadata) == (retried, {"tool": "Claude Code"})
    assert supermemory.documents[first].custom_id == document_custom_id(store.tag("p"), "turn-b")  # the turn that may update it again
    assert await store.add("p", retried + " and page the owner", custom_id="turn-b") == first  # its custom id now
    assert len(supermemory.documents) == 1

    assert await store.add("p", "the api listens on port 7001") != await store.add("p", "the api listens on port 7002")
    same_answer = "Assistant: the tests pass, all forty two of them, on every supported platform"
    assert await store.add("p", f"User: are we green?\n{same_answer}") != await store.add("p", f"User: status?\n{same_answer}")
    assert await store.add("q", answer) != first  # another scope's document is never merged
    assert len(supermemory.documents) == 6


async def test_a_tool_loop_ending_in_a_near_duplicate_is_merged_into_it(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    """A loop's first step repeats nothing; its final answer, POSTed with the same customId, nearly repeats an
    older document: the step's document is deleted and the older one takes the answer and the customId."""
    answer = ("run make rollback with the previous release tag, then watch the error rate on the dashboard for ten"
              " minutes before you close the incident")
    older = await store.add("p", f"User: how do we roll back a bad deploy of the api?\nAssistant: {answer}", "turn-a")
    prompt = "User: how do we roll back a bad deploy of the api service?"
    step = await store.add("p", f"{prompt}\nAssistant: I will read the runbook first.", "turn-b")
    assert step != older and len(supermemory.documents) == 2
    assert await store.add("p", f"{prompt}\nAssistant: {answer}", "turn-b", {"calls": "Read runbook.md"}) == older
    assert list(supermemory.documents) == [older]
    kept = supermemory.documents[older]
    assert (kept.content, kept.metadata) == (f"{prompt}\nAssistant: {answer}", {"calls": "Read runbook.md"})
    assert kept.custom_id == document_custom_id(store.tag("p"), "turn-b")
    assert await store.add("p", f"{prompt}\nAssistant: {answer} and page the owner", "turn-b") == older
    assert len(supermemory.documents) == 1

    mine = await store.add("p", "User: what port does the api use?\nAssistant: I will grep the config.", "turn-c")
    assert await store.add("p", "User: what port does the api use?\nAssistant: 7001, set in config.yaml", "turn-c") == mine
    assert len(supermemory.documents) == 2


async def test_a_near_duplicate_listed_from_another_container_is_never_merged(
    store: SupermemoryStore, supermemory: FakeSupermemory
) -> None:
    answer = ("User: how do we roll back a bad deploy of the api?\nAssistant: run make rollback with the previous"
              " release tag, then watch the error rate on the dashboard for ten minutes before you close the incident")
    theirs = await store.add("a", answer, custom_id="turn-a")
    supermemory.list_ignores_tags = True  # a server that ignores the filter, or an answer that adds a document
    mine = await store.add("b", answer.replace("ten", "fifteen"), custom_id="turn-b")
    assert mine != theirs
    kept = supermemory.documents[theirs]
    assert (kept.container_tag, kept.content) == (store.tag("a"), answer)
    assert supermemory.documents[mine].container_tag == store.tag("b")
    assert supermemory.count(f"/v3/documents/{theirs}") == 0  # never patched


async def test_a_near_duplicate_lookup_that_fails_still_stores(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    text = "the release train leaves every tuesday at noon from the main branch"
    first = await store.add("p", text)
    supermemory.fault, supermemory.fault_paths = "500", {"/v3/documents/list"}
    assert await store.add("p", text + " sharp") != first  # stored, if twice, rather than lost
    supermemory.fault_paths = {f"/v3/documents/{first}"}  # the update fails
    assert await store.add("p", text.replace("noon", "midday")) not in (first, None)
    assert len(supermemory.documents) == 3


async def test_profile_returns_static_then_dynamic_facts(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    supermemory.profiles[container_tag(SCOPE)] = {"static": ["Prefers tabs"], "dynamic": ["Debugging the proxy", " "]}
    assert await store.profile(SCOPE) == ["Prefers tabs", "Debugging the proxy"]
    assert supermemory.last("/v4/profile").json == {"containerTag": container_tag(SCOPE)}
    assert await store.profile("nobody") == []


async def test_list_is_newest_first_and_pages(store: SupermemoryStore) -> None:
    for n in range(5):
        await store.add("s", f"memory {n}")
    await store.add("other", "not listed")
    assert [m.content for m in await store.list("s")] == [f"memory {n}" for n in (4, 3, 2, 1, 0)]
    assert [m.content for m in await store.list("s", limit=2, offset=2)] == ["memory 2", "memory 1"]
    assert [m.content for m in await store.list("s", limit=2, offset=3)] == ["memory 1", "memory 0"]
    assert await store.list("s", limit=0) == []
    listed = await store.list("s", limit=1)
    assert listed[0].scope == "s" and listed[0].score == 0 and listed[0].created_at > 0


async def test_forget_deletes_only_this_scopes_document(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    mine = await store.add("a", "mine")
    theirs = await store.add("b", "theirs")
    assert await store.forget("a", theirs) is False
    assert theirs in supermemory.documents
    assert supermemory.count(f"/v3/documents/{theirs}") == 1  # looked at, not deleted
    assert await store.forget("a", mine) is True
    assert mine not in supermemory.documents
    assert await store.forget("a", mine) is False
    assert await store.forget("a", "no/such id") is False
    assert await store.forget("a", "") is False


# failures


async def faulted(store: SupermemoryStore) -> StoreError:
    with pytest.raises(StoreError) as info:
        await store.search("s", "anything at all")
    assert_no_key(info.value)
    return info.value


async def test_429_carries_retry_after(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    supermemory.fault, supermemory.retry_after = "429", 7
    error = await faulted(store)
    assert (error.status, error.retry_after, error.permanent) == (429, 7.0, False)
    assert "Too many requests" in str(error)
    supermemory.retry_after = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 50 <= (await faulted(store)).retry_after <= 61  # type: ignore[operator]


async def test_500_is_transient(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    supermemory.fault = "500"
    error = await faulted(store)
    assert (error.status, error.retry_after, error.permanent) == (500, None, False)


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_refusals_are_permanent(store: SupermemoryStore, supermemory: FakeSupermemory, status: int) -> None:
    supermemory.status_override = status
    error = await faulted(store)
    assert (error.status, error.permanent) == (status, True)
    assert f"HTTP {status}" in str(error)


@pytest.mark.parametrize(("status", "refuses_all"), [
    (401, True), (402, True), (403, True), (404, True), (405, True),  # the key, the account or the URL
    (400, False), (413, False), (422, False),  # this request alone
])
async def test_a_refusal_of_the_key_the_account_or_the_url_is_told_from_one_of_the_request(
    store: SupermemoryStore, supermemory: FakeSupermemory, status: int, refuses_all: bool
) -> None:
    supermemory.status_override, supermemory.fault_paths = status, {"/v3/documents"}
    with pytest.raises(StoreError) as info:
        await store.add("s", "a turn the backend does not take")
    assert (info.value.status, info.value.permanent, info.value.refuses_all) == (status, True, refuses_all)


async def refused_add(key: str, url: str) -> StoreError:
    """The error an add gets from a store of `key` at `url`."""
    store = SupermemoryStore(key, url)
    try:
        with pytest.raises(StoreError) as info:
            await store.add("s", "x")
    finally:
        await store.close()
    return info.value


async def test_a_wrong_base_url_refuses_every_request(supermemory: FakeSupermemory) -> None:
    error = await refused_add(KEY, supermemory.url + "/wrong")
    assert (error.status, error.refuses_all) == (404, True)


async def test_a_key_quoted_across_the_cut_is_redacted_whole(
    store: SupermemoryStore, supermemory: FakeSupermemory
) -> None:
    supermemory.status_override = 401
    supermemory.error_message = "Authentication failed. " + "x" * 158 + " key=" + KEY  # the cut falls in the key
    error = await faulted(store)
    assert KEY[:14] not in str(error) and "Authentication failed" in str(error)


async def test_wrong_key_is_a_permanent_401(supermemory: FakeSupermemory) -> None:
    error = await refused_add("sm_wrong_key", supermemory.url)
    assert (error.status, error.permanent) == (401, True)
    assert "sm_wrong_key" not in str(error)


async def test_bad_json(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    supermemory.fault = "bad_json"
    error = await faulted(store)
    assert error.status is None and not error.permanent
    assert "not JSON" in str(error)


async def test_slow_answer_times_out(supermemory: FakeSupermemory) -> None:
    supermemory.fault, supermemory.slow_seconds = "slow", 2
    store = SupermemoryStore(KEY, supermemory.url, timeout=0.3)
    try:
        error = await faulted(store)
    finally:
        await store.close()
    assert error.status is None and not error.permanent
    assert "no answer within 0.3 s" in str(error)


async def test_a_trickling_answer_times_out_as_a_whole(supermemory: FakeSupermemory) -> None:
    """httpx's timeout bounds each read; a byte every 0.05 s must not hold a call past the store's timeout."""
    supermemory.fault, supermemory.slow_seconds = "trickle", 60
    store = SupermemoryStore(KEY, supermemory.url, timeout=0.5)
    try:
        with pytest.raises(StoreError) as info:
            await asyncio.wait_for(store.search("s", "anything at all"), 30)  # the test's own bound, far above 0.5 s
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.add("s", "a turn"), 30)
    finally:
        await store.close()
    assert info.value.status is None and not info.value.permanent
    assert "no answer within 0.5 s" in str(info.value)


async def test_an_answer_too_large_is_not_parsed(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    await store.add("s", "a memory to find")
    supermemory.padding = 5 * 2**20
    error = await faulted(store)
    assert error.status is None and not error.permanent
    assert "larger than 4 MiB" in str(error)
    supermemory.padding = 2**20
    assert [m.content for m in await store.search("s", "a memory to find")] == ["a memory to find"]


async def test_killed_connection(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    supermemory.fault = "kill"
    error = await faulted(store)
    assert error.status is None and not error.permanent
    assert supermemory.count("/v4/search") == 1


async def test_refused_then_recovers_on_the_same_port(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    await store.add("s", "before the outage")  # leaves a pooled keep-alive connection
    port = supermemory.port
    supermemory.fault = "refused"
    error = await faulted(store)
    assert error.status is None and not error.permanent
    assert supermemory.count("/v4/search") == 0
    supermemory.fault = None
    assert supermemory.port == port
    assert [m.content for m in await store.search("s", "before the outage")] == ["before the outage"]


async def test_fault_paths_limit_the_fault(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    supermemory.fault, supermemory.fault_paths = "500", {"/v4/search"}
    await store.add("s", "writes still work")
    error = await faulted(store)
    assert error.status == 500


async def test_unexpected_shape(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    supermemory.status_override, supermemory.fault_paths = 200, {"/v4/search"}  # 200 {"error": ...}: no results
    error = await faulted(store)
    assert "unexpected answer" in str(error) and "'results'" in str(error)


async def test_unencodable_content_is_a_store_error(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    with pytest.raises(StoreError, match="cannot encode"):
        await store.add("s", "lone surrogate \ud800")
    assert supermemory.count("/v3/documents") == 0


# move


async def test_move_adds_to_the_new_container_and_deletes_the_old(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    old = await store.add(SCOPE, "Deploys use rsync to the bastion host", custom_id="turn:1", metadata={"tool": "Codex"})
    await store.add(SCOPE, "another memory stays")
    [memory] = [m for m in await store.list(SCOPE) if m.id == old]
    assert await store.move(memory, "project:api") is True
    assert old not in supermemory.documents
    [moved] = await store.list("project:api")
    assert (moved.content, moved.metadata) == (memory.content, {"tool": "Codex"})
    assert [m.content for m in await store.list(SCOPE)] == ["another memory stays"]
    [hit] = await store.search("project:api", "deploy with rsync")
    assert hit.content == memory.content
    added = supermemory.last("/v3/documents").json
    assert added["containerTag"] == container_tag("project:api")
    assert added["customId"] == document_custom_id(container_tag("project:api"), document_custom_id(container_tag(SCOPE), "turn:1"))
    assert await store.move(memory, "project:api") is False  # gone from its scope


async def test_a_move_run_again_updates_the_same_copy(store: SupermemoryStore) -> None:
    await store.add("a", "one memory")
    [memory] = await store.list("a")
    real_call, deletes = store._call, 0

    async def failing_delete(method: str, path: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal deletes
        if method == "DELETE" and deletes == 0:
            deletes += 1
            raise StoreError("interrupted")
        return await real_call(method, path, *args, **kwargs)

    store._call = failing_delete  # type: ignore[method-assign]  # the fake's faults cannot tell a GET from a DELETE
    with pytest.raises(StoreError):
        await store.move(memory, "b")
    assert len(await store.list("b")) == 1 and len(await store.list("a")) == 1
    assert await store.move(memory, "b") is True
    assert [m.content for m in await store.list("b")] == ["one memory"]
    assert await store.list("a") == []


async def test_move_leaves_another_scopes_document_and_its_own_scope_alone(store: SupermemoryStore, supermemory: FakeSupermemory) -> None:
    await store.add("a", "mine")
    await store.add("b", "theirs")
    [theirs] = await store.list("b")
    pretend = Memory(theirs.id, "a", theirs.content)  # listed under a scope it is not in
    assert await store.move(pretend, "c") is False
    assert await store.move(theirs, "b") is True
    assert [m.content for m in await store.list("b")] == ["theirs"] and await store.list("c") == []
    assert await store.move(Memory("no-such-doc", "a", "x"), "c") is False
    assert not [r for r in supermemory.requests if r.method == "DELETE"]
