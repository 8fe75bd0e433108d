"""Cookie sessions for the SDK path: one jar and one pooled HTTP client per (scope, upstream host).

LiteLLM's own HTTP clients neither store nor send cookies, so the gateway hands litellm
these clients instead. Jars are never shared across scopes. A (scope, host) that met a
cookie challenge is marked as needing the SDK path for ``ttl`` seconds. Jars and marks
are persisted to one JSON file (mode 0600, written atomically in a worker thread).

A jar also serves the requests of its host that stay on the direct path (a client's
settings calls, WebSocket upgrades): ``cookie_header`` gives their Cookie header and
``note_cookies`` keeps what their replies set. ``has_cookies`` is the cheap test that
comes first, so that a host whose jars never held a cookie costs one set lookup.

Clients are bounded, since any request can name a new scope: at most ``max_clients``, the
least recently used going first, and each closed after ``idle`` seconds unused. A client
in use when it goes is closed when its last user is done. A pair whose client went keeps
its jar only while the jar holds cookies (those are persisted) or the pair is marked.
Clients never follow redirects: a redirect's target would get the request's body and key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from http.cookiejar import Cookie
from pathlib import Path
from typing import Any

import httpx

from . import private

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_CLIENTS = 64
IDLE_SECONDS = 60.0
Key = tuple[str, str]  # (scope, host)
ResponseHook = Callable[[httpx.Response], Awaitable[None]]


@dataclass(eq=False, slots=True)
class _Pooled:
    client: httpx.AsyncClient
    users: int = 0  # leases not yet returned
    last_used: float = 0.0  # monotonic


class CookieSessions:
    """One cookie jar and one pooled HTTP client per (scope, upstream host), persisted.

    ``host`` is the upstream's host name without port (cookies ignore ports too).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl: float = 3600.0,
        timeout: float = 600.0,
        max_clients: int = MAX_CLIENTS,
        idle: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.ttl = ttl
        self.timeout = timeout
        self.max_clients = max_clients
        self.idle = idle
        self._clock = clock  # wall clock: marks outlive restarts
        self._monotonic = monotonic  # idle time of clients
        self._jars: dict[Key, httpx.Cookies] = {}
        self._clients: OrderedDict[Key, _Pooled] = OrderedDict()  # least recently used first
        self._marks: dict[Key, float] = {}  # (scope, host) -> needs the SDK path until then
        self._hosts: set[str] = set()  # hosts whose jars have held a cookie (never shrinks: a cheap first test)
        self._response_hooks: list[ResponseHook] = []
        self._ssl: ssl.SSLContext | None = None  # one for all clients: each of its own costs memory and CPU
        self._idle_timer: asyncio.TimerHandle | None = None
        self._save_lock = asyncio.Lock()
        self._save_queued = False
        self._tasks: set[asyncio.Task[None]] = set()

    def jar(self, scope: str, host: str) -> httpx.Cookies:
        """The jar of (scope, host), shared with that pair's client."""
        key = (scope, host.lower())
        jar = self._jars.get(key)
        if jar is None:
            jar = self._jars[key] = httpx.Cookies()
        return jar

    def add_response_hook(self, hook: ResponseHook) -> None:
        """Run ``hook`` on every response of the pooled clients (once, however often it is added)."""
        if hook not in self._response_hooks:
            self._response_hooks.append(hook)

    @contextlib.contextmanager
    def lease(self, scope: str, host: str) -> Iterator[httpx.AsyncClient]:
        """The pooled client of (scope, host), for the ``with`` block: it sends and stores that
        pair's cookies, and is not closed while the block runs.

        A response that sets cookies schedules a save. Proxy variables are ignored, so the
        gateway's own calls never loop back through the proxy.
        """
        key = (scope, host.lower())
        pooled = self._pooled(key)
        pooled.users += 1
        try:
            yield pooled.client
        finally:
            pooled.users -= 1
            pooled.last_used = self._monotonic()
            if pooled.users == 0 and self._clients.get(key) is not pooled:  # it went while in use
                self._retire(key, pooled)
            self._arm_idle_timer()

    def open_clients(self) -> int:
        """How many pooled clients there are."""
        return len(self._clients)

    def close_idle(self) -> None:
        """Close the clients nobody has used for ``idle`` seconds (the idle timer calls this)."""
        self._idle_timer = None
        now = self._monotonic()
        for key, pooled in list(self._clients.items()):
            if pooled.users == 0 and now - pooled.last_used >= self.idle:
                del self._clients[key]
                self._retire(key, pooled)
        self._arm_idle_timer()

    def note_challenge(self, scope: str, host: str, set_cookie: list[str]) -> None:
        """Store the cookies of a challenge response (raw ``Set-Cookie`` values) in the jar
        of (scope, host) and mark that pair as needing the SDK path for ``ttl`` seconds."""
        key = (scope, host.lower())
        self._extract(key, set_cookie)
        self._marks[key] = self._clock() + self.ttl
        self._schedule_save()

    def note_cookies(self, scope: str, host: str, set_cookie: list[str]) -> None:
        """Store cookies (raw ``Set-Cookie`` values) that a reply on the direct path set, in the
        jar of (scope, host), without marking the pair: only an LLM request's own challenge
        moves a scope onto the SDK path."""
        if set_cookie:
            self._extract((scope, host.lower()), set_cookie)
            self._schedule_save()

    def has_cookies(self, host: str) -> bool:
        """Whether some jar of ``host`` has held a cookie: False means no jar can add one."""
        return host.lower() in self._hosts

    def holds(self, scope: str, host: str) -> bool:
        """Whether the jar of (scope, host) holds a cookie now."""
        jar = self._jars.get((scope, host.lower()))
        return jar is not None and any(True for _ in jar.jar)

    def cookie_header(self, scope: str, host: str, url: str, sent: str = "") -> str | None:
        """The Cookie header of a request of (scope, host) to ``url`` that carries the jar's
        cookies: the client's own ``sent`` header first, then the jar's cookies whose names it
        does not send already. None when the jar adds nothing (an empty jar is not made)."""
        jar = self._jars.get((scope, host.lower()))
        if jar is None:
            return None
        request = httpx.Request("GET", url)
        jar.set_cookie_header(request)  # the jar's own rules: domain, path, Secure, expiry
        if not (ours := request.headers.get("cookie")):
            return None
        names = {part.split("=", 1)[0].strip() for part in sent.split(";")}
        added = [part for part in ours.split("; ") if part.split("=", 1)[0] not in names]
        if not added:
            return None
        return "; ".join([sent.strip().rstrip(";"), *added] if sent.strip() else added)

    def requires_sdk(self, scope: str, host: str) -> bool:
        """True while (scope, host) is marked by a recent challenge."""
        until = self._marks.get((scope, host.lower()))
        return until is not None and until > self._clock()

    async def load(self) -> None:
        """Restore jars and marks from the file. A missing file means empty; an unreadable
        one is kept as ``<name>.bak`` and we start empty."""
        try:
            entries = await asyncio.to_thread(_read, self.path)
        except FileNotFoundError:
            return
        except private.UnsafePath as exc:
            logger.warning("Cookie sessions not restored: %s", exc)
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            backup = await asyncio.to_thread(private.set_aside, self.path)
            logger.warning(
                "Cookie sessions file %s is unreadable (%s); starting empty, kept it as %s",
                self.path,
                type(exc).__name__,
                backup,
            )
            return
        now = self._clock()
        for scope, host, cookies, until in entries:
            jar = self.jar(scope, host).jar
            for cookie in cookies:
                jar.set_cookie(cookie)
            jar.clear_expired_cookies()
            if any(True for _ in jar):
                self._hosts.add(host.lower())
            if until is not None and until > now:
                self._marks[(scope, host.lower())] = until

    async def prepare_tls(self) -> None:
        """Make the clients' TLS context now, off the event loop (it reads the CA bundle)."""
        if self._ssl is None:
            self._ssl = await asyncio.to_thread(httpx.create_ssl_context, trust_env=False)

    async def save(self) -> None:
        """Write jars and marks atomically (temp file + rename, mode 0600) in a worker thread."""
        async with self._save_lock:
            self._save_queued = False  # changes from here on need another save
            text = json.dumps(self._snapshot())
            try:
                await asyncio.to_thread(_write_private, self.path, text)
            except private.UnsafePath as exc:
                logger.warning("Cookie sessions not saved: %s", exc)
            except OSError as exc:
                logger.warning("Could not save cookie sessions to %s: %s", self.path, type(exc).__name__)

    async def aclose(self) -> None:
        """Finish pending saves and closes, and close every pooled client."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        clients, self._clients = list(self._clients.values()), OrderedDict()
        await asyncio.gather(*(p.client.aclose() for p in clients), return_exceptions=True)

    # internals

    def _pooled(self, key: Key) -> _Pooled:
        """The pair's pool entry, made the most recently used; a new one may push the oldest out."""
        pooled = self._clients.get(key)
        if pooled is not None and not pooled.client.is_closed:
            self._clients.move_to_end(key)
        else:
            pooled = self._clients[key] = _Pooled(self._new_client(key))
            self._clients.move_to_end(key)
            while len(self._clients) > self.max_clients:
                old_key, old = self._clients.popitem(last=False)
                if old.users == 0:
                    self._retire(old_key, old)
        pooled.last_used = self._monotonic()
        return pooled

    def _new_client(self, key: Key) -> httpx.AsyncClient:
        if self._ssl is None:  # prepare_tls() was not awaited
            self._ssl = httpx.create_ssl_context(trust_env=False)
        return httpx.AsyncClient(
            cookies=self.jar(*key).jar,  # the CookieJar itself, so the client shares it
            verify=self._ssl,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            follow_redirects=False,
            trust_env=False,
            event_hooks={"response": [self._on_response]},
        )

    def _retire(self, key: Key, pooled: _Pooled) -> None:
        """Close a client that has left the pool; forget its pair's jar unless it is worth keeping."""
        self._spawn(pooled.client.aclose())
        if key in self._clients:  # a newer client of the pair shares the jar
            return
        until = self._marks.get(key)
        if until is not None and until <= self._clock():
            del self._marks[key]
            until = None
        jar = self._jars.get(key)
        if jar is not None and until is None:
            jar.jar.clear_expired_cookies()
            if not any(True for _ in jar.jar):
                del self._jars[key]

    def _extract(self, key: Key, set_cookie: list[str]) -> None:
        """Store raw ``Set-Cookie`` values in the pair's jar, as if its host's root had sent them (a cookie
        without a Path serves the whole host)."""
        if set_cookie:
            request = httpx.Request("GET", f"https://{key[1]}/")
            response = httpx.Response(200, headers=[("set-cookie", v) for v in set_cookie], request=request)
            self.jar(*key).extract_cookies(response)
            self._hosts.add(key[1])

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None or not self._clients:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._idle_timer = loop.call_later(self.idle, self.close_idle)

    async def _on_response(self, response: httpx.Response) -> None:
        if response.headers.get_list("set-cookie"):  # the client has just stored them
            self._hosts.add(response.request.url.host.lower())
            self._schedule_save()
        for hook in self._response_hooks:
            await hook(response)

    def _schedule_save(self) -> None:
        """Save soon, in the background; one queued save covers any number of changes."""
        if self._save_queued:
            return
        if self._spawn(self.save()):
            self._save_queued = True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Run ``coro`` in the background (aclose waits for it); False without a running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return False
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _snapshot(self) -> dict[str, Any]:
        now = self._clock()
        sessions = []
        for key in sorted(self._jars.keys() | self._marks.keys()):
            jar = self._jars.get(key)
            cookies = [_cookie_dict(c) for c in jar.jar if not c.is_expired()] if jar is not None else []
            until = self._marks.get(key)
            until = until if until is not None and until > now else None
            if cookies or until is not None:
                sessions.append({"scope": key[0], "host": key[1], "cookies": cookies, "sdk_until": until})
        return {"version": FORMAT_VERSION, "sessions": sessions}


def _cookie_dict(cookie: Cookie) -> dict[str, Any]:
    data = dict(vars(cookie))
    data["rest"] = data.pop("_rest")
    return data


def _read(path: Path) -> list[tuple[str, str, list[Cookie], float | None]]:
    """Parse the sessions file (tightened to 0600 if looser); raises on any shape it does not expect, and
    UnsafePath on a file memproxy must not trust (see private.py)."""
    path = private.private_path(path, make_dirs=False)
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("version") != FORMAT_VERSION:
        raise ValueError("unknown version")
    entries = []
    for entry in data["sessions"]:
        scope, host, until = entry["scope"], entry["host"], entry["sdk_until"]
        if not (isinstance(scope, str) and isinstance(host, str) and isinstance(until, (int, float, type(None)))):
            raise TypeError("bad session entry")
        entries.append((scope, host, [Cookie(**c) for c in entry["cookies"]], until))
    return entries


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; the file (and its temp file) are mode 0600, new directories 0700.

    A symlink is written through (its target replaced); a path memproxy must not trust raises UnsafePath.
    """
    private.replace_private(private.private_path(path), text.encode("utf-8"))
