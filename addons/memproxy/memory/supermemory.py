"""The Supermemory store: the hosted (or self-hosted) Supermemory REST API over one pooled httpx client.

API facts this module relies on (Supermemory's API docs and the official supermemory-python SDK):
- Base URL https://api.supermemory.ai, or a self-hosted server's URL; every call sends
  `Authorization: Bearer <key>`. The SDK reads SUPERMEMORY_API_KEY and SUPERMEMORY_BASE_URL.
- POST /v4/search {q, containerTag, limit, threshold, searchMode, include} -> {results, timing, total}.
  searchMode is "memories" (the API's default), "hybrid" (the docs' recommendation: memories and
  document chunks) or "documents". A memory result is {id, memory, similarity, metadata, updatedAt,
  documents?}, a chunk result {id, chunk, similarity, metadata, updatedAt}; similarity is in [0, 1]. A
  memory is written by Supermemory from documents; `documents` lists them ({id, createdAt, updatedAt},
  and their metadata with `include: {documents: true}`).
- POST /v4/profile {containerTag, q?} -> {profile: {static: [str], dynamic: [str]}, searchResults?}.
- POST /v3/documents {content, containerTag, customId, metadata} -> {id, status}. Sending a customId
  again updates that document instead of adding one. containerTag and customId: at most 100
  characters, ASCII letters, digits, '-', '_' and '.'. Metadata is flat: string, number or boolean
  values. The docs do not tie a customId to a container tag, so ours folds the tag in.
- POST /v3/documents/list {containerTags, limit, page, sort ("createdAt" or "updatedAt"), order, includeContent}
  -> {memories: [{id, customId, content, metadata, containerTags, createdAt, updatedAt}], pagination};
  containerTags match exactly; without them, every document of the account is listed.
  GET /v3/documents/{id} -> the document, with its containerTags. DELETE /v3/documents/{id} -> empty body.
- PATCH /v3/documents/{id} {content, customId?, metadata?} -> {id, status}: what the body names is replaced and
  the document processed again (its id and containerTag stay).
- Errors answer {error, details?} with the HTTP status; 429 can carry Retry-After. 401, 402 (no credits left)
  and 403 refuse the key or the account, whatever the request; a path the server does not have answers 404.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ..config import SUPERMEMORY_URL
from ..scrub import load as load_detectors
from ..scrub import scrub
from ..wire import MARK
from .base import ACCOUNT_STATUSES, PROMPT_KEY, Memory, MemoryStore, StoreError
from .near import near_duplicates

T = TypeVar("T")

DEFAULT_BASE_URL = SUPERMEMORY_URL
SEARCH_MODES = ("memories", "hybrid", "documents")
ID_MAX = 100  # characters in a containerTag or customId
ID_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
HASH_LEN = 16  # hex digits of SHA-256 that keep a rewritten id unique
REWRITTEN = re.compile(rf"(?:^|-)[0-9a-f]{{{HASH_LEN}}}$")  # how every rewritten tag ends
DETAIL_MAX = 200  # characters of the server's error message kept in ours
MAX_ANSWER = 4 * 2**20  # bytes of an answer read: a larger one fails the call, unparsed (parsing blocks the loop)
ENDPOINT_MISSING = (404, 405)  # on a POST (to a path the API has): the base URL is wrong
logger = logging.getLogger(__name__)
MISSING = object()  # a 404 where the caller allows one
NEAR_RECENT = 20  # documents a new memory is compared with for a near-duplicate: the scope's last updated


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LEN]


def _rewrite(text: str, original: str) -> str:
    """`text` as a valid id: each run of invalid characters becomes '-', then the hash of `original`."""
    base = ID_INVALID.sub("-", text).strip("-")[: ID_MAX - HASH_LEN - 1]
    return f"{base}-{_digest(original)}" if base else _digest(original)


def validate_container_tag(tag: str) -> None:
    """Raise ValueError, saying why, if Supermemory would refuse `tag` as a containerTag."""
    if not tag:
        raise ValueError("the container tag is empty")
    if len(tag) > ID_MAX:
        raise ValueError(f"the container tag {tag[:20]!r}... has {len(tag)} characters; Supermemory allows {ID_MAX}")
    if bad := ID_INVALID.search(tag):
        raise ValueError(
            f"the container tag {tag!r} contains {bad[0]!r};"
            " Supermemory allows only ASCII letters, digits, '-', '_' and '.'"
        )


def container_tag(scope: str) -> str:
    """The containerTag of `scope`: the scope itself if Supermemory accepts it, else a rewrite ending in its hash.

    `claude-code:my repo/x` becomes `claude-code-my-repo-x-<hash>`; distinct scopes get distinct tags, so a
    valid scope that looks like a rewrite (ends in 16 hex digits) is rewritten too.
    """
    try:
        validate_container_tag(scope)
    except ValueError:
        return _rewrite(scope, scope)
    return _rewrite(scope, scope) if REWRITTEN.search(scope) else scope


def document_custom_id(tag: str, custom_id: str) -> str:
    """The customId sent for `custom_id` in the container `tag`: valid, and unique per (tag, custom_id)."""
    return _rewrite(custom_id, f"{tag}\n{custom_id}")


def flat_metadata(metadata: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """`metadata` as Supermemory takes it: scalars kept, None dropped, anything else as JSON text."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, str | int) or (isinstance(value, float) and math.isfinite(value)):
            flat[str(key)] = value  # bool is an int
        else:
            flat[str(key)] = json.dumps(value, ensure_ascii=False, default=str)
    return flat


def retry_after(value: str | None) -> float | None:
    """The seconds a Retry-After header asks for (delta-seconds or an HTTP date); None if absent or invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _timestamp(value: Any) -> float:
    """Unix seconds of an ISO 8601 time such as `2024-01-15T10:30:00.000Z`; 0 if it is not one."""
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return min(1.0, max(0.0, float(value)))


def _metadata(item: dict[str, Any]) -> dict[str, Any]:
    metadata = item.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _search_hit(scope: str, result: Any) -> Memory | None:
    """A memory result (`memory`) or chunk result (`chunk`) of /v4/search; None if it is malformed."""
    if not isinstance(result, dict):
        return None
    text = result.get("memory", result.get("chunk"))
    score = _score(result.get("similarity"))
    if not isinstance(text, str) or score is None or not isinstance(result.get("id"), str):
        return None
    metadata = _metadata(result)
    documents = result.get("documents")
    if "tool" not in metadata and isinstance(documents, list) and documents:  # in Supermemory's words: its turns'
        tools = [_metadata(doc).get("tool") if isinstance(doc, dict) else None for doc in documents]
        if all(isinstance(tool, str) for tool in tools) and len(set(tools)) == 1:
            metadata = {**metadata, "tool": tools[0]}
    return Memory(result["id"], scope, text, score, metadata, _timestamp(result.get("updatedAt")), _sources(result))


def _sources(result: dict[str, Any]) -> tuple[str, ...]:
    """The prompt keys of the turns a result holds or was written from: of each of its documents, or its own
    where it names no document (a chunk, or a memory as stored); () unless every one names its prompt."""
    documents = result.get("documents")
    named = documents if isinstance(documents, list) and documents else [result]
    keys = [_metadata(item).get(PROMPT_KEY) if isinstance(item, dict) else None for item in named]
    return tuple(dict.fromkeys(keys)) if all(isinstance(key, str) and key for key in keys) else ()


def _document(scope: str, doc: Any) -> Memory | None:
    """A listed document; None if it is malformed."""
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("content"), str):
        return None
    return Memory(doc["id"], scope, doc["content"], 0.0, _metadata(doc), _timestamp(doc.get("createdAt")))


def _holds(doc: dict[str, Any], tag: str) -> bool:
    """Whether the listed or fetched document `doc` is in the container `tag`."""
    tags = doc.get("containerTags")
    return isinstance(tags, list) and tag in tags


def _nearly_repeated(content: str, docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first of `docs` (listed documents) whose content `content` nearly repeats; None if there is none."""
    return next((d for d in docs if near_duplicates(content, d["content"])), None)


def _expect(data: Any, key: str, kind: type[T], what: str) -> T:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, kind):
        raise StoreError(f"{what}: unexpected answer (no {key!r} {kind.__name__})")
    return value


def _detail(content: bytes | None) -> str:
    """The server's own error message in an error answer's body (None: too large to read); "" if it sent none."""
    try:
        data = json.loads(content) if content else None
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else ""


class SupermemoryStore(MemoryStore):
    """Memories in Supermemory: one containerTag per scope, one document per memory."""

    name = "supermemory"

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 5.0,
        search_mode: str = "hybrid",
        container_tag: str = "{scope}",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if search_mode not in SEARCH_MODES:
            raise ValueError(f"unknown Supermemory search mode {search_mode!r}; valid modes: {', '.join(SEARCH_MODES)}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.search_mode = search_mode
        # "{scope}", or e.g. "memproxy_{scope}"; a tag without {scope} is a prefix ("memproxy": "memproxy_{scope}"):
        # one container for every scope would give each project every other's memories
        self.tag_template = container_tag if "{scope}" in container_tag else f"{container_tag}_{{scope}}"
        if "{scope}" not in container_tag:
            logger.warning("memproxy: container_tag %r has no {scope}: each scope is the container %r; documents"
                           " stored in %r alone are not searched", container_tag, self.tag_template, container_tag)
        self._api_key = api_key.strip()
        self._client = client  # a client passed in belongs to the caller
        self._owns_client = client is None
        self._closed = False

    def tag(self, scope: str) -> str:
        """The containerTag of `scope` under this store's template."""
        return container_tag(self.tag_template.replace("{scope}", scope))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **kwargs: Any) -> SupermemoryStore:
        """A store configured like the official SDK: SUPERMEMORY_API_KEY and SUPERMEMORY_BASE_URL."""
        base_url = environ.get("SUPERMEMORY_BASE_URL") or DEFAULT_BASE_URL
        return cls(environ.get("SUPERMEMORY_API_KEY", ""), base_url, **kwargs)

    async def open(self) -> None:
        """Check the configuration only: start-up never waits on the network. Load the secret detectors, in a
        thread, which scrub a search's query before it leaves: a search sent meanwhile waits for them."""
        self._check()
        try:
            await asyncio.to_thread(load_detectors)
        except Exception as e:  # noqa: BLE001 - an import error of a detector: no query may leave unscrubbed
            raise StoreError(f"cannot load the secret detectors that scrub a search: {type(e).__name__}") from e

    async def search(self, scope: str, query: str, limit: int = 5, threshold: float = 0.0) -> list[Memory]:
        if limit <= 0 or not query.strip():
            return []
        body = {
            "q": (await asyncio.to_thread(scrub, query)).text,  # it leaves the machine, as stored turns do: scrubbed
            "containerTag": self.tag(scope),
            "limit": limit,
            "threshold": threshold,
            "searchMode": self.search_mode,
            "include": {"documents": True},  # whose metadata names the turns a memory was written from
        }
        results = await self._call("POST", "/v4/search", body, expect=("results", list))
        hits = [m for r in results if (m := _search_hit(scope, r)) is not None and m.score >= threshold]
        hits.sort(key=lambda m: m.score, reverse=True)
        return hits[:limit]

    async def profile(self, scope: str) -> list[str]:
        """The static, then the dynamic facts Supermemory keeps about `scope`."""
        body = {"containerTag": self.tag(scope)}
        profile = await self._call("POST", "/v4/profile", body, expect=("profile", dict))
        facts = [profile.get("static"), profile.get("dynamic")]
        return [f for part in facts if isinstance(part, list) for f in part if isinstance(f, str) and f.strip()]

    async def add(
        self, scope: str, content: str, custom_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> str:
        tag = self.tag(scope)
        body: dict[str, Any] = {"content": content, "containerTag": tag}
        if custom_id is not None:
            body["customId"] = document_custom_id(tag, custom_id)
        if metadata:
            body["metadata"] = flat_metadata(metadata)
        if (merged := await self._merge(body)) is not None:
            return merged
        return await self._call("POST", "/v3/documents", body, expect=("id", str))

    async def _merge(self, body: dict[str, Any]) -> str | None:
        """Store the document `body` (as POSTed) into the one of its tag that it nearly repeats
        (near.near_duplicates), among the tag's NEAR_RECENT last updated: that document's id. The document that
        `body`'s customId names (an earlier step of its tool loop, or a retry) is deleted first, so that the twin
        can take its customId; with no twin, that document is replaced (PATCH: a POST of its customId adds only
        what is new to it, so an earlier step's text would stay), or left as it is if it holds `body` already.
        None if neither is listed, or if a call fails (stored as a document of its own, if maybe twice, rather
        than not at all)."""
        listing = {"containerTags": [body["containerTag"]], "limit": NEAR_RECENT, "page": 1, "sort": "updatedAt",
                   "order": "desc", "includeContent": True}  # fmt: skip
        try:
            docs = await self._call("POST", "/v3/documents/list", listing, expect=("memories", list))
            # Only the tag's own: a server that ignores the filter (or an answer that adds one) must not get a
            # turn merged into another scope's document.
            docs = [d for d in docs if _document("", d) is not None and _holds(d, body["containerTag"])]
            own = next((d for d in docs if "customId" in body and d.get("customId") == body["customId"]), None)
            if own is not None and own["content"] == body["content"]:
                return own["id"] if _metadata(own) == body.get("metadata", {}) else await self._replace(own, body)
            others = [d for d in docs if d is not own]
            twin = await asyncio.to_thread(_nearly_repeated, body["content"], others)  # ms of CPU: off the loop
            if twin is None:
                return None if own is None else await self._replace(own, body)
            if own is not None:
                await self._call("DELETE", f"/v3/documents/{quote(own['id'], safe='')}", missing_ok=True)
            elif (twin["content"], _metadata(twin)) == (body["content"], body.get("metadata", {})):
                return twin["id"]  # the same memory again changes nothing
            return await self._replace(twin, body)
        except StoreError:
            return None

    async def _replace(self, doc: dict[str, Any], body: dict[str, Any]) -> str | None:
        """Listed document `doc` given `body`'s content, customId and metadata (PATCH): its id; None if it is gone."""
        update = {k: v for k, v in body.items() if k != "containerTag"}
        path = f"/v3/documents/{quote(doc['id'], safe='')}"
        return doc["id"] if await self._call("PATCH", path, update, missing_ok=True) is not MISSING else None

    async def list(self, scope: str, limit: int = 100, offset: int = 0) -> list[Memory]:
        if limit <= 0:
            return []
        offset = max(0, offset)
        # The API pages by number: an offset between pages is served by one larger first page.
        page, size, skip = (offset // limit + 1, limit, 0) if offset % limit == 0 else (1, offset + limit, offset)
        body = {
            "containerTags": [self.tag(scope)],
            "limit": size,
            "page": page,
            "sort": "createdAt",
            "order": "desc",
            "includeContent": True,
        }
        docs = await self._call("POST", "/v3/documents/list", body, expect=("memories", list))
        return [m for d in docs[skip:] if (m := _document(scope, d)) is not None][:limit]

    async def every(self, scopes: Sequence[str] | None = None, page: int = 100) -> AsyncIterator[Memory]:
        """Every memory of `scopes`; if None, every document of the account, each with its first containerTag
        as its scope (a tag cannot be mapped back to a scope)."""
        if scopes is not None:
            async for memory in super().every(scopes, page):
                yield memory
            return
        number = 1
        while True:
            body = {"limit": page, "page": number, "sort": "createdAt", "order": "desc", "includeContent": True}
            docs = await self._call("POST", "/v3/documents/list", body, expect=("memories", list))
            for doc in docs:
                tags = doc.get("containerTags") if isinstance(doc, dict) else None
                tag = tags[0] if isinstance(tags, list) and tags and isinstance(tags[0], str) else ""
                if (memory := _document(tag, doc)) is not None:
                    yield memory
            if len(docs) < page:
                return
            number += 1

    async def rewrite(self, memory: Memory, content: str, metadata: dict[str, Any] | None = None) -> bool:
        path = f"/v3/documents/{quote(memory.id, safe='')}"
        body: dict[str, Any] = {"content": content}
        if metadata is not None:
            body["metadata"] = flat_metadata(metadata)
        return await self._call("PATCH", path, body, missing_ok=True) is not MISSING

    async def forget(self, scope: str, memory_id: str) -> bool:
        path, doc = await self._document(scope, memory_id)
        if doc is None:  # gone, or not this scope's to delete
            return False
        return await self._call("DELETE", path, missing_ok=True) is not MISSING

    async def _document(self, scope: str, memory_id: str) -> tuple[str, dict[str, Any] | None]:
        """The path of document `memory_id`, and the document if it exists in `scope`'s container."""
        path = f"/v3/documents/{quote(memory_id, safe='')}"
        if not memory_id:
            return path, None
        doc = await self._call("GET", path, missing_ok=True)
        if doc is MISSING:
            return path, None
        if not isinstance(doc, dict):
            raise StoreError(f"supermemory GET {path}: unexpected answer (not a document)")
        return path, doc if _holds(doc, self.tag(scope)) else None

    async def close(self) -> None:
        self._closed = True
        if self._client is not None and self._owns_client:
            await self._client.aclose()
        self._client = None

    def _check(self) -> None:
        if self._closed:
            raise StoreError("the supermemory store is closed")
        if not self._api_key:
            raise StoreError("SUPERMEMORY_API_KEY is not set")
        if not self.base_url.startswith(("https://", "http://")):
            raise StoreError(f"SUPERMEMORY_BASE_URL must start with https:// or http://, not {self.base_url[:40]!r}")

    def _redact(self, text: str) -> str:
        """`text` without the API key."""
        return text.replace(self._api_key, MARK) if self._api_key else text

    def _error(self, message: str, **kwargs: Any) -> StoreError:
        """A StoreError whose message cannot carry the API key, whatever text went into it."""
        return StoreError(self._redact(message), **kwargs)

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        expect: tuple[str, type] | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """One API call's JSON answer (None if empty), or its `expect`ed field; MISSING on a 404 if `missing_ok`."""
        self._check()
        if self._client is None:
            # trust_env=False: HTTPS_PROXY often points at this very proxy; never loop through it.
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), trust_env=False)
        what = f"supermemory {method} {path}"
        # Messages are our own words: never an httpx exception's text or a request's repr.
        try:
            async with asyncio.timeout(self.timeout):  # httpx's timeout bounds each step (a read); this, the call
                response, content = await self._exchange(method, path, body)
        except (TimeoutError, httpx.TimeoutException):
            raise self._error(f"{what}: no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as e:
            raise self._error(f"{what}: {type(e).__name__}") from None
        except ValueError as e:  # not JSON-encodable, e.g. a lone surrogate in the content
            raise self._error(f"{what}: cannot encode the request ({type(e).__name__})") from None
        status = response.status_code
        if status == 404 and missing_ok:
            return MISSING
        if not response.is_success:
            detail = self._redact(_detail(content))[:DETAIL_MAX]  # redacted whole: a cut could split the key
            raise self._error(
                f"{what}: HTTP {status}" + (f": {detail}" if detail else ""),
                status=status,
                retry_after=retry_after(response.headers.get("retry-after")),
                refuses_all=status in ACCOUNT_STATUSES or (method == "POST" and status in ENDPOINT_MISSING),
            )
        if content is None:
            raise self._error(f"{what}: the answer is larger than {MAX_ANSWER // 2**20} MiB")
        try:
            data = json.loads(content) if content else None
        except ValueError:
            raise self._error(f"{what}: the answer is not JSON") from None
        return data if expect is None else _expect(data, *expect, what)

    async def _exchange(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[httpx.Response, bytes | None]:
        """The response to one request, and its body: None if it is larger than MAX_ANSWER (read no further)."""
        assert self._client is not None
        headers = {"Authorization": f"Bearer {self._api_key}"}
        async with self._client.stream(method, self.base_url + path, json=body, headers=headers) as response:
            content = bytearray()
            async for chunk in response.aiter_bytes():  # decoded: a compressed answer counts at its full size
                content += chunk
                if len(content) > MAX_ANSWER:
                    return response, None
        return response, bytes(content)

    async def move(self, memory: Memory, scope: str) -> bool:
        """Add `memory` to `scope`'s container, then delete it from its own: the API cannot change a document's
        containerTag. Its content and metadata are kept; its date becomes the move's (the API sets createdAt).

        GET /v3/documents/{id} says whether the document is still in `memory.scope`'s container, and its customId.
        The copy's customId is that one (or the document's id) mapped to the new container as `add` maps one:
        a move interrupted between the add and the delete, run again, updates the same copy.
        """
        path, doc = await self._document(memory.scope, memory.id)
        if doc is None:  # gone, or not this scope's to move
            return False
        source, target = self.tag(memory.scope), self.tag(scope)
        if target == source:
            return True
        custom_id = doc.get("customId")
        body: dict[str, Any] = {
            "content": memory.content,
            "containerTag": target,
            "customId": document_custom_id(target, custom_id if isinstance(custom_id, str) and custom_id else memory.id),
        }
        if memory.metadata:
            body["metadata"] = flat_metadata(memory.metadata)
        await self._call("POST", "/v3/documents", body, expect=("id", str))
        await self._call("DELETE", path, missing_ok=True)
        return True
