"""The gateway: the loopback server that the SDK path sends requests to, serving them with the
cookie-holding client of (scope, upstream host).

mitmproxy cannot stream a response an addon makes up, so the addon points the flow at this
gateway instead: ``http://127.0.0.1:PORT`` + the original path and query, the client's
body (memories already injected) and headers, plus two headers (``Gateway.request_headers``
builds them): the gateway's secret and a single-use ticket. The ticket names what the addon
decided for this request (protocol, upstream origin, scope and the rule's provider mapping),
which the gateway holds; so nothing a request carries can pick a provider, an ``api_base`` or
an environment variable.

Two ways to serve a request:

- **Forward** (the client speaks the provider's own protocol, which it does unless its rule
  maps it to another model): the body bytes, path, query and headers go to the upstream as
  the client sent them, and the upstream's status, headers and body come back chunk by chunk.
  Unknown fields, ids, model names and events pass untouched. litellm is not involved: its own
  Messages, Responses and Gemini interfaces drop fields they do not know, rewrite ``thinking``,
  ``output_config`` and response ids, and need its proxy's dependencies to stream.
  Only the framing, ``Accept-Encoding`` and cookies differ (see ``_NOT_FORWARDED`` and
  ``_NOT_RELAYED``).
- **Translate** (a rule's ``sdk: {model: ...}``): litellm calls the mapped provider and the
  gateway answers in the client's protocol: JSON, or SSE written event by event as litellm
  yields it. litellm takes seconds to import: ``warm_litellm()`` imports it once, in a worker
  thread, on the first such request.

A cookie challenge (403/429/503 with Set-Cookie, or ``cf-mitigated``) is answered by sending
the request once more with the cookies it set, before anything reaches the client, so that
the reply streams. Our own errors, and the upstream's on a translated call, come back in the
client's protocol; mid-stream, as its error event. Redirects are never followed: an
upstream's 3xx goes back to the client as it came (status, ``Location``, body).
"""

from __future__ import annotations

import ast
import asyncio
import contextvars
import functools
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any, TypeVar

import httpx
from aiohttp import web

from .config import resolve_env
from .cookies import CookieSessions
from .protocols import ADAPTERS, Adapter, detect_path
from .wire import CHALLENGE_STATUSES, CREDENTIAL_HEADERS, HOP_HEADERS, MARK, OWN_PREFIX, is_own_header

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

SECRET_HEADER = "x-memproxy-secret"
TICKET_HEADER = "x-memproxy-ticket"  # names one request's Ticket, held by the gateway
TICKET_TTL = 600.0  # seconds a ticket waits for its request (a flow held in mitmweb's intercept, say)
MAX_TICKETS = 4096  # tickets waiting at once; the oldest go first

# Set before litellm is imported: no network fetches of its own (cost map, beta headers...).
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
MAX_BODY = 256 * 2**20
MAX_MESSAGE_CHARS = 2000
MAX_REDIRECT_BODY = 64 * 1024  # of an upstream's 3xx body, passed back to the client
_REDIRECT_HEADERS = frozenset({"location", "content-type", "retry-after"})  # of a 3xx, passed back

_ADAPTERS = {adapter.name: adapter for adapter in ADAPTERS}
_FALLBACK_ADAPTER = _ADAPTERS["openai_chat"]  # error format when the protocol is unknown
_TRANSLATED = frozenset({"anthropic", "openai_chat", "openai_responses"})  # what litellm takes in
_REQUIRED = {"anthropic": ("model", "messages", "max_tokens"), "openai_chat": ("model", "messages")}
_FRAMING = HOP_HEADERS | {"te", "trailer", "upgrade", "proxy-connection", "proxy-authorization", "accept-encoding"}
_NOT_FORWARDED = _FRAMING | {"cookie"}  # of a forwarded request: the session's client frames it and adds the jar
_NOT_TRANSLATED = CREDENTIAL_HEADERS | _FRAMING | {"content-type", "accept"}  # litellm sets these itself
_NOT_RELAYED = HOP_HEADERS | {"set-cookie", "trailer"}  # of an upstream's reply: its cookies stay in the jar
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_LITELLM_PREFIX = re.compile(r"^(?:litellm\.\w+:\s*|(?:\w+ )?\w*Error:\s*|\w+(?:Exception|Error)(?: \w+)? - )+")
_BYTES_REPR = re.compile(r"^b(['\"]).*\1$", re.S)
_HTML = re.compile(r"<(?:!doctype|html)\b", re.I)

_import_lock = threading.Lock()
_litellm: ModuleType | None = None


def _import_litellm() -> ModuleType:
    global _litellm
    with _import_lock:
        if _litellm is None:
            os.environ.update(LITELLM_ENV)
            import litellm
            import litellm.llms.anthropic.messages.adapters.handler  # noqa: F401 - the Messages bridge
            import litellm.llms.custom_httpx.http_handler  # noqa: F401 - AsyncHTTPHandler

            litellm.suppress_debug_info = True
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                _own_logging(logging.getLogger(name))
            _litellm = litellm
    return _litellm


def _own_logging(log: logging.Logger) -> None:
    """Route a litellm logger through the host's logging (mitmproxy's event log), warnings
    and up, without tracebacks: litellm adds a stderr handler of its own."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.setLevel(logging.WARNING)
    log.addFilter(_drop_traceback)
    log.propagate = True


def _drop_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    message = record.getMessage()
    if "Traceback (most recent call last)" in message:
        record.msg, record.args = message.split("Traceback (most recent call last)")[0].rstrip(), ()
    return True


async def warm_litellm() -> ModuleType:
    """Import litellm once, in a worker thread; safe to call concurrently."""
    return _litellm or await asyncio.to_thread(_import_litellm)


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the addon decided for one request it points at the gateway."""

    protocol: str  # anthropic | openai_chat | openai_responses | gemini
    upstream: str  # the original origin: scheme://host[:port]
    scope: str
    sdk: Mapping[str, str] | None  # the rule's provider mapping {"model", "api_base", "api_key"}, from the rules file
    expires: float  # time.monotonic()


class _Redirected(Exception):
    """An upstream answered 3xx. The SDK path never follows one: the target would get the body and the key."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"The upstream answered HTTP {status} (a redirect, not followed)")
        self.status, self.headers, self.body = status, headers, body


# The 3xx responses seen while serving the current gateway request (each aiohttp handler runs in a task
# of its own; litellm's tasks and threads copy the context, so they append to the same list).
_redirects: contextvars.ContextVar[list[_Redirected]] = contextvars.ContextVar("memproxy_redirects")


async def stop_at_redirect(response: httpx.Response) -> None:
    """An httpx response hook: end the request at a 3xx, keeping what the client should get of it.

    litellm wraps whatever its HTTP call raises in exceptions of its own, differently per
    provider, so the response is kept in ``_redirects`` for the gateway to find."""
    if not 300 <= response.status_code < 400:
        return
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= MAX_REDIRECT_BODY:
            break
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() in _REDIRECT_HEADERS]
    redirect = _Redirected(response.status_code, headers, bytes(body[:MAX_REDIRECT_BODY]))
    if (seen := _redirects.get(None)) is not None:
        seen.append(redirect)
    raise redirect


@dataclass(frozen=True, slots=True)
class _Failure:
    """An error as the client will see it."""

    status: int
    message: str
    error_type: str
    code: str | None = None  # OpenAI's `code`, when it is more than the status
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class _Served:
    """One gateway request, parsed: the client's protocol, the scope, and the cookie session's host."""

    adapter: Adapter
    scope: str
    host: str


@dataclass(frozen=True, slots=True)
class _Forward(_Served):
    """A request in the provider's own protocol, sent on as it came."""

    method: str
    url: str  # the upstream origin + the client's path and query
    body: bytes
    headers: list[tuple[str, str]]  # the client's, without framing and memproxy's own
    cookie: str | None  # the client's own Cookie header, sent beside the jar's


@dataclass(frozen=True, slots=True)
class _Call(_Served):
    """A request that litellm translates for a rule's provider mapping."""

    model: str
    api_base: str | None
    api_key: str | None
    body: dict[str, Any]
    headers: dict[str, str]  # client headers forwarded upstream
    stream: bool


class _Challenged(Exception):
    """A forwarded request's first reply was a cookie challenge; its body is not read."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"Cookie challenge (HTTP {response.status_code})")
        self.response = response


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.failure = _Failure(status, message, _error_type(status))


class Gateway:
    """A loopback HTTP server, started on the caller's event loop, that serves requests through litellm."""

    def __init__(self, sessions: CookieSessions) -> None:
        self.sessions = sessions
        self.port = 0
        self.secret = ""
        self._tickets: OrderedDict[str, Ticket] = OrderedDict()
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()
        sessions.add_response_hook(stop_at_redirect)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a random 127.0.0.1 port with a new secret (litellm is imported by the first translation)."""
        async with self._lock:
            if self._runner is not None:
                return
            app = web.Application(client_max_size=MAX_BODY)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # A client that leaves cancels its handler, which closes the upstream's answer: a provider stops
            # generating when its connection goes, as on the direct path.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
            await runner.setup()
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.secret = secrets.token_urlsafe(32)
            await web.SockSite(runner, sock).start()
            self.port = sock.getsockname()[1]
            self._runner = runner

    async def close(self) -> None:
        async with self._lock:
            if self._runner is not None:
                await self._runner.cleanup()
            self._runner, self.port, self.secret = None, 0, ""
            self._tickets.clear()

    def request_headers(
        self, *, protocol: str, upstream: str, scope: str, sdk: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The headers the addon adds to one request it points at the gateway: the secret and a new
        ticket for ``protocol``, ``upstream`` (scheme://host[:port]), ``scope`` and the rule's ``sdk``
        mapping. A ticket serves one request, within TICKET_TTL seconds."""
        now = time.monotonic()
        while self._tickets and (
            len(self._tickets) >= MAX_TICKETS or next(iter(self._tickets.values())).expires <= now
        ):
            self._tickets.popitem(last=False)
        name = secrets.token_urlsafe(24)
        mapping = MappingProxyType(dict(sdk)) if sdk else None
        self._tickets[name] = Ticket(protocol, upstream, scope, mapping, now + TICKET_TTL)
        return {SECRET_HEADER: self.secret, TICKET_HEADER: name}

    # request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ticket = self._tickets.get(request.headers.get(TICKET_HEADER, ""))
        # The error format: the ticket's protocol, else the path's (a request without a valid ticket)
        adapter = _ADAPTERS.get(ticket.protocol) if ticket else detect_path(request.method, request.path)
        adapter = adapter or _FALLBACK_ADAPTER
        token = _redirects.set([])
        try:
            return await self._serve(request, adapter)
        except Exception as exc:  # a bug of ours: still an answer in the client's protocol
            return _error_response(adapter, _failure(exc, _Redactor()))
        finally:
            _redirects.reset(token)

    async def _serve(self, request: web.Request, adapter: Adapter) -> web.StreamResponse:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not self.secret or not secrets.compare_digest(given, self.secret.encode()):
            return _error_response(
                adapter, _Failure(403, "Forbidden: missing or wrong gateway secret", "permission_error")
            )
        ticket = self._tickets.pop(request.headers.get(TICKET_HEADER, ""), None)
        try:
            if ticket is None or ticket.expires <= time.monotonic():
                raise _BadRequest(400, f"Missing, used or expired {TICKET_HEADER}")
            call = _parse(adapter, request, await _read_body(request), ticket)
        except _BadRequest as exc:
            return _error_response(adapter, exc.failure)
        key = call.api_key if isinstance(call, _Call) else _client_key(request.headers)
        redact = _Redactor(key, self.sessions.jar(call.scope, call.host))
        what = call.model if isinstance(call, _Call) else request.path
        with self.sessions.lease(call.scope, call.host) as http:
            try:
                if isinstance(call, _Forward):
                    upstream = await self._challenged_twice(
                        call.host, call.scope, lambda first: _send(call, http, first)
                    )
                    return await _relay(request, adapter, upstream, redact)
                result = await self._challenged_twice(call.host, call.scope, lambda _: self._attempt(call, http))
            except Exception as exc:
                if redirects := _redirects.get([]):
                    status = redirects[-1].status
                    logger.info("SDK gateway: %s %s -> %d, a redirect not followed", adapter.name, what, status)
                    return _redirect_response(redirects[-1])
                failure = _failure(exc, redact)
                logger.info("SDK gateway: %s %s -> %d %s", adapter.name, what, failure.status, failure.message)
                return _error_response(adapter, failure)
            if isinstance(result, bytes):
                return web.Response(body=result, content_type="application/json")
            return await _stream(request, adapter, *result, redact)

    async def _challenged_twice(self, host: str, scope: str, attempt: Callable[[bool], Awaitable[_T]]) -> _T:
        """Run ``attempt(True)``; after a cookie challenge (the session's client has stored its cookies), once
        more as ``attempt(False)``, whose answer stands whatever it is."""
        try:
            return await attempt(True)
        except _Challenged as exc:
            await exc.response.aclose()
        except Exception as exc:
            if not _is_challenge(exc):
                raise
        logger.info("SDK gateway: cookie challenge from %s, retrying with the session's cookies", host)
        self.sessions.note_challenge(scope, host, [])
        return await attempt(False)

    async def _attempt(self, call: _Call, http: httpx.AsyncClient) -> bytes | tuple[AsyncIterator[bytes], bytes]:
        """The JSON response body, or (frames, first frame) of a stream that has begun."""
        result = await _invoke(await warm_litellm(), call, http)
        if not call.stream:
            body = _plain(result)
            return json.dumps(_upstream_ids(body) if call.adapter.name == "openai_responses" else body).encode()
        frames = _frames(call.adapter.name, result)
        return frames, await anext(frames, b"")  # errors before the first event get a real status


async def _read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPException as exc:  # e.g. 413 for a body over MAX_BODY
        raise _BadRequest(exc.status, exc.reason) from None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise _BadRequest(400, "Invalid JSON in request body") from None
    if not isinstance(body, dict):
        raise _BadRequest(400, "Request body must be a JSON object")
    return body


def _parse(adapter: Adapter, request: web.Request, raw: bytes, ticket: Ticket) -> _Forward | _Call:
    """What to send where: the client's request on to its upstream origin, or litellm's call for the rule's
    provider mapping (model, api_base, key; its ``${ENV}`` references are read from the ticket only)."""
    origin, scope = ticket.upstream.rstrip("/"), ticket.scope
    if not _host(origin) or not scope:
        raise _BadRequest(400, "The gateway needs an upstream origin and a scope")
    mapping = dict(ticket.sdk or {})
    if not mapping.get("model"):  # sent on unread: only the addon holds tickets, and it sends JSON it has parsed
        cookie = "; ".join(v for k, v in request.headers.items() if k.lower() == "cookie") or None
        headers = [(k, v) for k, v in request.headers.items() if not is_own_header(k) and k.lower() not in _NOT_FORWARDED]
        url = origin + request.path_qs
        return _Forward(adapter, scope, _host(origin), request.method, url, raw, headers, cookie)

    protocol, body = ticket.protocol, _json_object(raw)
    if protocol not in _TRANSLATED:
        raise _BadRequest(400, f"Protocol {protocol or '(none)'} cannot be mapped to another provider")
    if missing := [field for field in _REQUIRED.get(protocol, ("model",)) if field not in body]:
        raise _BadRequest(400, f"{', '.join(missing)}: field required")
    model, api_base = mapping["model"], resolve_env(mapping.get("api_base"))
    host = _host(api_base) or _host(origin)
    api_key = resolve_env(mapping.get("api_key")) or _client_key(request.headers)
    headers = {  # the client SDK's x-stainless-* are not litellm's
        k.lower(): v
        for k, v in request.headers.items()
        if k.lower() not in _NOT_TRANSLATED and not k.lower().startswith((OWN_PREFIX, "x-stainless-"))
    }
    stream = adapter.is_streaming(request.path_qs, body)
    return _Call(adapter, scope, host, model, api_base, api_key, body, headers, stream)


async def _send(call: _Forward, http: httpx.AsyncClient, first: bool) -> httpx.Response:
    """Send a forwarded request through the session's client; the upstream's reply, its body not read yet.
    A first answer that is a cookie challenge raises _Challenged."""
    request = http.build_request(call.method, call.url, content=call.body, headers=call.headers)
    if call.cookie:  # the client's cookies first, then the jar's (httpx left the header to the jar)
        jar = request.headers.get("cookie")
        request.headers["cookie"] = f"{call.cookie}; {jar}" if jar else call.cookie
    response = await http.send(request, stream=True)
    if first and _challenge_reply(response):
        raise _Challenged(response)
    return response


async def _relay(
    request: web.Request, adapter: Adapter, upstream: httpx.Response, redact: _Redactor
) -> web.StreamResponse:
    """The upstream's reply to the client as it comes: status, headers and body chunk by chunk. A failure of the
    upstream mid-stream ends an event stream with the protocol's error event."""
    headers = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _NOT_RELAYED]
    response = web.StreamResponse(status=upstream.status_code, reason=upstream.reason_phrase or None)
    for name, value in headers:
        response.headers.add(name, value)
    chunks = 0
    try:
        await response.prepare(request)
        try:
            async for chunk in upstream.aiter_bytes():
                await response.write(chunk)
                chunks += 1
        except ConnectionResetError:
            raise
        except (httpx.HTTPError, OSError) as exc:
            failure = _failure(exc, redact)
            logger.info("SDK gateway: %s stream failed after %d chunks: %s", adapter.name, chunks, failure.message)
            if "text/event-stream" in upstream.headers.get("content-type", ""):
                await response.write(_error_event(adapter, failure, chunks))
        await response.write_eof()
    except ConnectionResetError:  # the client went away
        pass
    finally:
        await upstream.aclose()
    return response


def _host(url: str | None) -> str:
    """The host name of ``url`` ("" if there is none)."""
    try:
        return httpx.URL(url or "").host
    except httpx.InvalidURL:
        return ""


def _client_key(headers: Mapping[str, str]) -> str | None:
    """The API key the client sent: Authorization: Bearer, x-api-key or x-goog-api-key."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or None


async def _invoke(litellm: ModuleType, call: _Call, http: httpx.AsyncClient) -> Any:
    """Call litellm for the client's protocol through the cookie-holding client ``http``.

    litellm's OpenAI chat path sends through an ``openai.AsyncOpenAI`` client; its
    httpx-native paths (Anthropic, Responses, most providers) through an
    ``AsyncHTTPHandler``. Each gets ``http`` underneath. Anthropic Messages go through
    litellm's Messages-to-completion bridge: its native Messages stream needs the
    litellm proxy's dependencies.
    """
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    # No redirects on the client litellm makes itself either (it retries a refused connection on one).
    handler = AsyncHTTPHandler(follow_redirects=False, event_hooks={"response": [stop_at_redirect]})
    handler.client = http
    client: Any = handler
    provider = litellm.get_llm_provider(call.model)[1]
    if call.adapter.name != "openai_responses" and _uses_openai_sdk(litellm, provider):
        import openai

        # The SDK refuses to be built without a key; the upstream answers this placeholder with a 401.
        api_key = call.api_key or "memproxy-no-api-key"
        client = openai.AsyncOpenAI(api_key=api_key, base_url=call.api_base, http_client=http, max_retries=0)
    body = {k: v for k, v in call.body.items() if k == "metadata" or k not in _litellm_params(litellm)}
    kwargs = body | {
        "model": call.model,
        "api_base": call.api_base,
        "api_key": call.api_key,
        "client": client,
        "extra_headers": call.headers,
        "drop_params": True,
        "max_retries": 0,
        "timeout": http.timeout.read,  # the session's; litellm would send its own default per request
    }
    if call.adapter.name == "openai_chat":
        return await litellm.acompletion(**kwargs)
    if call.adapter.name == "openai_responses":
        return await litellm.aresponses(**kwargs)
    from litellm.llms.anthropic.messages.adapters.handler import LiteLLMMessagesToCompletionTransformationHandler

    return await LiteLLMMessagesToCompletionTransformationHandler.async_anthropic_messages_handler(**kwargs)


def _uses_openai_sdk(litellm: ModuleType, provider: str) -> bool:
    """Whether litellm's chat path for ``provider`` sends through the openai SDK."""
    return provider in ("openai", "custom_openai") or provider in litellm.openai_compatible_providers


@functools.cache
def _litellm_params(litellm: ModuleType) -> frozenset[str]:
    """litellm's own call parameters: a client's body never sets them."""
    from litellm.types.utils import all_litellm_params

    return frozenset(all_litellm_params)


def _plain(obj: Any) -> Any:
    """A litellm response object as plain JSON data."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=True, warnings=False)
    return obj


def _upstream_ids(data: dict[str, Any]) -> dict[str, Any]:
    """A Responses body or event with the upstream's response ids: litellm encodes its
    routing into them, which the upstream would not know on the passthrough path."""
    from litellm.responses.utils import ResponsesAPIRequestUtils

    for obj in (data, data.get("response")):
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            obj["id"] = ResponsesAPIRequestUtils.decode_responses_api_response_id(obj["id"])["response_id"]
    return data


async def _frames(protocol: str, stream: Any) -> AsyncIterator[bytes]:
    """litellm's stream as SSE frames of the client's protocol."""
    try:
        async for item in stream:
            if protocol == "anthropic":  # the bridge yields finished SSE frames
                yield item if isinstance(item, bytes) else str(item).encode()
            elif protocol == "openai_chat":
                yield f"data: {json.dumps(_plain(item))}\n\n".encode()
            else:
                event = _upstream_ids(_plain(item))
                yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
        if protocol == "openai_chat":
            yield b"data: [DONE]\n\n"
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:  # already failed or closed; nothing left to release
                pass


async def _stream(
    request: web.Request, adapter: Adapter, frames: AsyncIterator[bytes], first: bytes, redact: _Redactor
) -> web.StreamResponse:
    """Write the stream to the client frame by frame; a failure ends it with the protocol's error event."""
    response = web.StreamResponse(headers=_SSE_HEADERS)
    written = 0
    try:
        await response.prepare(request)
        if first:
            await response.write(first)
            written += 1
        try:
            async for frame in frames:
                await response.write(frame)
                written += 1
        except ConnectionResetError:
            raise
        except Exception as exc:
            failure = _failure(exc, redact)
            logger.info("SDK gateway: %s stream failed after %d events: %s", adapter.name, written, failure.message)
            await response.write(_error_event(adapter, failure, written))
        await response.write_eof()
    except ConnectionResetError:  # the client went away
        await frames.aclose()
    return response


# errors


class _Redactor:
    """Removes a request's secrets (its API key, its session's cookie values) from text."""

    def __init__(self, api_key: str | None = None, jar: httpx.Cookies | None = None) -> None:
        self._api_key, self._jar = api_key, jar

    def __call__(self, text: str) -> str:
        cookies = [c.value for c in self._jar.jar] if self._jar is not None else []
        for secret in (self._api_key, *cookies):
            if secret and len(secret) >= 4:
                text = text.replace(secret, MARK)
        return text


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _failure(exc: Exception, redact: _Redactor) -> _Failure:
    """How a litellm (or our own) exception reaches the client."""
    litellm = _litellm
    status = getattr(exc, "status_code", None)
    if isinstance(exc, httpx.TimeoutException):
        return _Failure(504, f"The upstream did not answer in time ({type(exc).__name__})", "timeout_error")
    if isinstance(exc, httpx.TransportError | OSError):
        return _Failure(502, f"Connection to the upstream failed ({type(exc).__name__})", "api_error")
    if litellm is None or not isinstance(status, int) or not 400 <= status <= 599:
        logger.warning("SDK gateway: internal error (%s)", type(exc).__name__)
        return _Failure(500, f"memproxy SDK gateway error ({type(exc).__name__})", "api_error")
    message = redact(_upstream_message(str(getattr(exc, "message", "") or exc), status))
    if isinstance(exc, litellm.ContextWindowExceededError):
        return _Failure(400, message, "invalid_request_error", code="context_length_exceeded")
    if isinstance(exc, litellm.Timeout):
        status = status if status in (408, 504) else 408
    elif isinstance(exc, litellm.APIConnectionError):
        status = 502
    headers = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None), "headers", {})
    retry_after = _header(headers, "retry-after")
    return _Failure(status, message, _error_type(status), retry_after=retry_after)


def _upstream_message(text: str, status: int) -> str:
    """The upstream's own message from litellm's wording; never an HTML page."""
    text = _LITELLM_PREFIX.sub("", text.strip()).strip()
    if _BYTES_REPR.match(text):  # litellm quotes some bodies as a bytes literal
        try:
            text = ast.literal_eval(text).decode("utf-8", "replace")
        except (ValueError, SyntaxError):
            pass
    if _HTML.search(text):
        return f"The upstream answered HTTP {status} with an HTML page (a bot challenge or an error page)"
    start = text.find("{")
    if start >= 0:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
        except ValueError:
            obj = None
        error = obj.get("error") if isinstance(obj, dict) else None
        inner = error.get("message") if isinstance(error, dict) else None
        if isinstance(inner, str) and inner:
            text = inner
    return text[:MAX_MESSAGE_CHARS] or f"The upstream answered HTTP {status}"


def _header(headers: Any, name: str) -> str | None:
    items: Iterable[tuple[Any, Any]] = headers.items() if hasattr(headers, "items") else ()
    return next((str(v) for k, v in items if str(k).lower() == name), None)


def _is_challenge(exc: Exception) -> bool:
    """Whether litellm raised for a cookie challenge."""
    return _challenge(getattr(exc, "status_code", None), getattr(exc, "litellm_response_headers", None) or {})


def _challenge_reply(response: httpx.Response) -> bool:
    return _challenge(response.status_code, response.headers)


def _challenge(status: Any, headers: Any) -> bool:
    """A cookie challenge: 403/429/503 with Set-Cookie, or Cloudflare's cf-mitigated header."""
    if _header(headers, "cf-mitigated"):
        return True
    return status in CHALLENGE_STATUSES and bool(_header(headers, "set-cookie"))


def _error_body(adapter: Adapter, failure: _Failure) -> dict[str, Any]:
    body = adapter.error_body(failure.status, failure.message, failure.error_type)
    if failure.code and adapter.name.startswith("openai"):
        body["error"]["code"] = failure.code
    return body


def _redirect_response(redirect: _Redirected) -> web.Response:
    """An upstream's 3xx as it came: status, Location (and type, Retry-After) and body."""
    return web.Response(status=redirect.status, body=redirect.body or None, headers=redirect.headers)


def _error_response(adapter: Adapter, failure: _Failure) -> web.Response:
    headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
    return web.json_response(_error_body(adapter, failure), status=failure.status, headers=headers)


def _error_event(adapter: Adapter, failure: _Failure, sequence: int) -> bytes:
    """The protocol's in-stream error event."""
    body = _error_body(adapter, failure)
    if adapter.name == "openai_chat":
        return b"data: " + json.dumps(body).encode() + b"\n\n"
    if adapter.name == "openai_responses":
        code = failure.code or failure.error_type
        body = {"type": "error", "code": code, "message": failure.message, "param": None, "sequence_number": sequence}
    return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"
