"""A fake Supermemory API: documents, search and profile in the real request and answer shapes.

It checks the bearer key, validates containerTag and customId like the real API, scores search
results by word overlap, and offers switchable faults. Like the fake upstream, it runs an aiohttp
server on its own event loop in a background thread, so tests stay synchronous.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from .recording import RecordingServer

DEFAULT_KEY = "sm_test_fake_key"
FAULTS = (None, "slow", "trickle", "429", "500", "bad_json", "refused", "kill")
VALID_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # containerTag and customId
WORD = re.compile(r"\w+")
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
DOCUMENT_PATH = re.compile(r"/v3/documents/([^/]+)")


@dataclass
class Document:
    id: str
    container_tag: str
    content: str
    custom_id: str | None
    metadata: dict[str, Any]
    created_at: str
    updated_at: str

    def json(self, content: bool = True) -> dict[str, Any]:
        doc = {
            "id": self.id,
            "customId": self.custom_id,
            "containerTags": [self.container_tag],
            "metadata": self.metadata,
            "status": "done",
            "type": "text",
            "title": None,
            "summary": None,
            "connectionId": None,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }
        return doc | {"content": self.content} if content else doc


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


ROUTER_PATH = re.compile(r"/v3/https?://")
ROUTER_REPLY = {
    "id": "chatcmpl-router",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Answered via the Memory Router."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class FakeSupermemory(RecordingServer):
    """A fake Supermemory on 127.0.0.1 that requires ``Authorization: Bearer <api_key>``.

    Knobs (set any time from the test thread): ``fault`` is one of None; "slow" (answer after
    ``slow_seconds``); "trickle" (a 200 whose body comes one byte every ``trickle_seconds``, for up to
    ``slow_seconds``, and never ends); "429" (with ``Retry-After: <retry_after>``, seconds or an HTTP date); "500";
    "bad_json" (200 with a broken JSON body); "kill" (close the connection without answering);
    "refused" (stop listening and drop open connections, until ``fault`` changes: then listen again
    on the same port). ``fault_paths`` limits faults and ``status_override`` (answer every request
    with that status, e.g. 401, 402 or 403, and ``error_message``, if set) to those paths; None means every
    path. ``padding`` adds that many bytes of spaces to every successful JSON answer. ``list_ignores_tags``
    makes /v3/documents/list answer with every document, as a server ignoring ``containerTags`` would.
    ``chunk_results``
    makes search answer with chunk results instead of memory results. ``own_words`` makes its memory
    results what Supermemory writes from a document: a fact in its own words, naming the document (and,
    with ``include: {documents: true}``, the document's metadata) instead of carrying it. ``profiles`` maps a
    containerTag to its {"static": [...], "dynamic": [...]} profile. ``documents`` holds what was
    stored, by id.
    """

    thread_name = "fake-supermemory"

    def __init__(self, api_key: str = DEFAULT_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.slow_seconds = 2.0
        self.trickle_seconds = 0.05
        self.error_message: str | None = None
        self.padding = 0
        self.list_ignores_tags = False
        self.retry_after: float | str = 1
        self.fault_paths: set[str] | None = None
        self.status_override: int | None = None
        self.chunk_results = False
        self.own_words = False
        self.profiles: dict[str, dict[str, list[str]]] = {}
        self.documents: dict[str, Document] = {}
        self._fault: str | None = None
        self._clock = 0  # seconds after EPOCH of the last stored change
        self._site: web.SockSite | None = None

    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, value: str | None) -> None:
        if value not in FAULTS:
            raise ValueError(f"unknown fault {value!r}; valid: {FAULTS}")
        was, self._fault = self._fault, value
        if value == "refused" and was != "refused":
            self._run(self._unlisten())
        elif value != "refused" and was == "refused":
            self._run(self._listen())

    # lifecycle

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()

    async def _stopping(self) -> None:
        """Cancel what still runs, e.g. a "slow" answer still sleeping; listen no more."""
        self._site = None
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        assert self._runner is not None
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def _unlisten(self) -> None:
        """Close the listening socket and every open connection, so that new requests are refused."""
        assert self._runner is not None and self._runner.server is not None and self._site is not None
        await self._site.stop()
        self._site = None
        for handler in self._runner.server.connections:
            handler.force_close()

    # test-side helpers

    def count(self, path: str) -> int:
        """How many requests to ``path`` arrived."""
        with self._seen:
            return sum(rec.path == path for rec in self.requests)

    # server side

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        headers = self._record(request, body, data).headers

        if self.fault_paths is None or request.path in self.fault_paths:
            if failed := await self._fail(request):
                return failed
        if ROUTER_PATH.match(request.path):  # the Memory Router: auth by header, answers like the provider
            if headers.get("x-supermemory-api-key") != self.api_key:
                return _error(401, "Unauthorized")
            return web.json_response(ROUTER_REPLY)
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Unauthorized")
        if request.method == "POST" and request.path != "/v3/documents" and not isinstance(data, dict):
            return _error(400, "Invalid JSON body")
        response = self._route(request.method, request.path, data)
        if self.padding and response.status == 200 and isinstance(response.body, bytes):
            response.body = response.body + b" " * self.padding  # still the same JSON
        return response

    def _route(self, method: str, path: str, data: Any) -> web.Response:
        match method, path:
            case "POST", "/v3/documents":
                return self._add(data)
            case "POST", "/v3/documents/list":
                return self._list(data)
            case "POST", "/v4/search":
                return self._search(data)
            case "POST", "/v4/profile":
                return self._profile(data)
            case "GET" | "DELETE", _ if m := DOCUMENT_PATH.fullmatch(path):
                return self._document(method, m[1])
            case "PATCH", _ if m := DOCUMENT_PATH.fullmatch(path):
                return self._update(m[1], data)
        return _error(404, f"no route {method} {path}")

    async def _fail(self, request: web.Request) -> web.Response | None:
        """The answer a fault or ``status_override`` gives, or None to serve the request."""
        fault = self._fault
        if fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        elif fault == "trickle":
            return await self._trickle(request)
        elif fault in ("kill", "refused"):  # "refused": a request that raced the listener closing
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never sent: the connection is gone
        elif fault == "429":
            return web.json_response(
                {"error": "Too many requests"}, status=429, headers={"Retry-After": str(self.retry_after)}
            )
        elif fault == "500":
            return _error(500, "Internal server error")
        elif fault == "bad_json":
            return web.Response(body=b'{"results": [{"id": ', content_type="application/json")
        if self.status_override is not None:
            return _error(self.status_override, self.error_message or f"fake status {self.status_override}")
        return None

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        """A 200 promising a large body, sent a byte at a time: each read is quick, the answer never complete."""
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000000"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        until = loop.time() + self.slow_seconds
        try:
            while loop.time() < until:
                await response.write(b" ")
                await asyncio.sleep(self.trickle_seconds)
        except (ConnectionError, RuntimeError):  # the client hung up
            pass
        assert request.transport is not None
        request.transport.close()  # never a complete answer
        return response

    def _tick(self) -> str:
        self._clock += 1
        return (EPOCH + timedelta(seconds=self._clock)).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _add(self, data: Any) -> web.Response:
        if not isinstance(data, dict) or not isinstance(data.get("content"), str) or not data["content"]:
            return _error(400, "content is required")
        tag, custom_id, metadata = data.get("containerTag"), data.get("customId"), data.get("metadata", {})
        if not isinstance(tag, str) or not VALID_ID.fullmatch(tag):
            return _error(400, "containerTag: max 100 characters, alphanumeric with hyphens, underscores and dots")
        if custom_id is not None and not (isinstance(custom_id, str) and VALID_ID.fullmatch(custom_id)):
            return _error(400, "customId: max 100 characters, alphanumeric with hyphens, underscores and dots")
        if not isinstance(metadata, dict) or not all(
            isinstance(v, str | bool | int) or (isinstance(v, float) and math.isfinite(v)) for v in metadata.values()
        ):
            return _error(400, "metadata values must be strings, numbers or booleans")
        now = self._tick()
        for doc in self.documents.values():
            if custom_id is not None and (doc.container_tag, doc.custom_id) == (tag, custom_id):
                doc.content, doc.metadata, doc.updated_at = data["content"], metadata, now
                return web.json_response({"id": doc.id, "status": "queued"})
        doc = Document(f"doc{self._clock:06d}", tag, data["content"], custom_id, metadata, now, now)
        self.documents[doc.id] = doc
        return web.json_response({"id": doc.id, "status": "queued"})

    def _hits(self, tag: Any, query: str, limit: int, threshold: float, documents: bool = False) -> list[dict[str, Any]]:
        """Search results for ``query`` in the container ``tag``: the share of query words a document holds.
        ``documents``: a memory result in Supermemory's own words gives its document's metadata."""
        words = _words(query)
        scored = []
        for doc in self.documents.values():
            overlap = len(words & _words(doc.content)) / len(words) if words else 0.0
            if doc.container_tag == tag and overlap > 0 and overlap >= threshold:
                scored.append((overlap, doc))
        scored.sort(key=lambda pair: pair[0], reverse=True)
        if self.own_words and not self.chunk_results:
            return [self._fact(score, doc, documents) for score, doc in scored[:limit]]
        kind = "chunk" if self.chunk_results else "memory"
        return [
            {
                "id": f"{kind}_{doc.id}",
                kind: doc.content,
                "similarity": round(score, 4),
                "metadata": doc.metadata,
                "updatedAt": doc.updated_at,
                **({} if self.chunk_results else {"version": 1}),
            }
            for score, doc in scored[:limit]
        ]

    @staticmethod
    def _fact(score: float, doc: Document, documents: bool) -> dict[str, Any]:
        """The memory Supermemory writes from ``doc``: what it says, in other words than the document's."""
        fact = doc.content.replace("User: ", "In an earlier session the user asked: ").replace("\nAssistant: ", " They were told: ")
        source = {"id": doc.id, "createdAt": doc.created_at, "updatedAt": doc.updated_at}
        return {
            "id": f"memory_{doc.id}",
            "memory": fact,
            "similarity": round(score, 4),
            "metadata": {},
            "updatedAt": doc.updated_at,
            "version": 1,
            "documents": [source | {"metadata": doc.metadata} if documents else source],
        }

    def _search(self, data: dict[str, Any]) -> web.Response:
        if not isinstance(data.get("q"), str) or not data["q"]:
            return _error(400, "q is required")
        include = data.get("include") if isinstance(data.get("include"), dict) else {}
        hits = self._hits(data.get("containerTag"), data["q"], int(data.get("limit", 10)), data.get("threshold", 0.0),
                          include.get("documents") is True)
        return web.json_response({"results": hits, "timing": 1, "total": len(hits)})

    def _profile(self, data: dict[str, Any]) -> web.Response:
        tag = data.get("containerTag")
        if not isinstance(tag, str) or not tag:
            return _error(400, "containerTag is required")
        profile = {"static": [], "dynamic": []} | self.profiles.get(tag, {})
        answer: dict[str, Any] = {"profile": profile}
        if isinstance(data.get("q"), str):
            hits = self._hits(tag, data["q"], 10, data.get("threshold", 0.0))
            answer["searchResults"] = {"results": hits, "timing": 1, "total": len(hits)}
        return web.json_response(answer)

    def _list(self, data: dict[str, Any]) -> web.Response:
        tags = data.get("containerTags")
        limit, page = int(data.get("limit", 10)), int(data.get("page", 1))
        key = "createdAt" if data.get("sort", "createdAt") == "createdAt" else "updatedAt"
        docs = [d.json(data.get("includeContent") is True) for d in self.documents.values()]
        docs = [d for d in docs if tags is None or self.list_ignores_tags or d["containerTags"] == tags]  # exact match
        docs.sort(key=lambda d: d[key], reverse=data.get("order", "desc") == "desc")
        pagination = {
            "currentPage": page,
            "limit": limit,
            "totalItems": len(docs),
            "totalPages": math.ceil(len(docs) / limit) if limit else 0,
        }
        return web.json_response({"memories": docs[(page - 1) * limit : page * limit], "pagination": pagination})

    def _update(self, doc_id: str, data: Any) -> web.Response:
        """PATCH /v3/documents/{id}: what the body names is replaced (content, customId, metadata); the rest stays."""
        doc = self.documents.get(doc_id)
        if doc is None:
            return _error(404, "Document not found")
        if not isinstance(data, dict):
            return _error(400, "Invalid JSON body")
        content, metadata = data.get("content", doc.content), data.get("metadata", doc.metadata)
        custom_id = data.get("customId", doc.custom_id)
        if not isinstance(content, str) or not content or not isinstance(metadata, dict):
            return _error(400, "content must be a non-empty string and metadata an object")
        if custom_id is not None and not (isinstance(custom_id, str) and VALID_ID.fullmatch(custom_id)):
            return _error(400, "customId: max 100 characters, alphanumeric with hyphens, underscores and dots")
        doc.content, doc.metadata, doc.custom_id, doc.updated_at = content, metadata, custom_id, self._tick()
        return web.json_response({"id": doc.id, "status": "queued"})

    def _document(self, method: str, doc_id: str) -> web.Response:
        doc = self.documents.get(doc_id)
        if doc is None:
            return _error(404, "Document not found")
        if method == "GET":
            return web.json_response(doc.json())
        del self.documents[doc_id]
        return web.Response(status=204)
