"""The memory request path: detect, route, recall, inject, (reroute), capture; then the reply.

`request` reads top to bottom:
1. only a flow to a memory host or a reverse listener, not sent by a web page (`Hosts.serves`); the
   override header is taken off (a client on this machine may name a scope with it);
2. detect: the protocol adapter, from the method and path, and a JSON body that can be written back as sent;
   anything else (a client's settings call, a WebSocket upgrade) only gets the cookies of its jar, if its host
   ever asked for cookies (`SdkPath.attach`);
3. route: the rules' decision on what they see of the flow (`request_view`);
4. recall the route's memories within the time budget, and inject them in the adapter's format;
5. reroute: through Supermemory's Memory Router, or through the SDK path when the route or an earlier
   cookie challenge asks for it; a request that stays on the direct path gets the cookies of its jar;
6. capture: a pending turn, remembered once its reply is complete: `responseheaders` tees an SSE stream,
   `response` reads a whole reply (and replays a cookie challenge through the SDK path, or keeps the cookies
   of a reply on the direct path: `SdkPath.learn`), and `websocket_message` follows OpenAI Responses over
   WebSocket.

One memory per prompt: a turn is named by the prompt it answers (`Adapter.prompt`), so each step of a tool loop
updates the prompt's one memory, and the last step leaves the final answer there. A WebSocket sends its input
incrementally: a message of only tool outputs continues the connection's prompt (`Thread`). So does a request
that names an earlier reply, or a conversation, that the provider keeps (`Adapter.continues`): it goes on with
that name's thread, in the same scope. Those threads, and each client session's latest prompt (`Asked`), are
kept across restarts (memproxy.threads). Recall leaves out the memories the conversation already holds
(memproxy.echoes).

Every hook fails open: an exception leaves the flow as the client sent it. Each decision shows in mitmweb as
the flow's marker, comment and `metadata["memproxy"]`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from .. import config, jsonbody, protocols
from ..capture import Turn
from ..echoes import Heard, without_echoes
from ..logs import Once, brief
from ..memory.base import PROMPT_KEY
from ..protocols.base import Adapter, Entry, Prompt, ReplyAccumulator
from ..protocols.common import MAX_SESSION_CHARS, find_prompt, holds_summary, summarised, unique_calls
from ..protocols.sse import SSEParser
from ..rules import OVERRIDE_KEY, RequestView, Route, Rules, flow_headers, request_view
from ..threads import Asked, Snapshot, Thread, ThreadFile, saved_route, snapshot
from ..wire import is_loopback
from .hosts import Hosts
from .projectnames import ProjectNames
from .projects import Projects
from .ruleswatcher import RulesWatcher
from .sdk import Sdk
from .store import Store

logger = logging.getLogger(__name__)

MARKER = ":brain:"
SERVED = "memproxy_served"  # flow metadata: this flow may have memory (a WebSocket's messages follow it)
SDK = "sdk"  # Outcome.route of a flow that takes the SDK path
ROUTER = "supermemory_router"  # Outcome.route of a flow sent through Supermemory's Memory Router
RESTORE_LIMIT = 10.0  # seconds start-up waits for the cookie jars at most
MAX_LOOKUPS = 3  # project look-ups one request may wait for (each a new working directory)
ECHO_MARGIN = 3  # memories recall asks for beyond max_results, to make up for echoes left out
MAX_CHAINS = 64  # replies and conversations a later request may continue, whose threads are kept (the latest)
MAX_CHAIN_CHARS = 4_000_000  # characters of text those threads hold at most (`Heard.chars`)
NAMES_A_THREAD = 4  # names of one thread kept: its conversation's and its latest replies (a retry names the one before)
MAX_SESSIONS = 256  # client sessions whose latest project route and prompt are kept (`Asked`), the latest
SESSION_HEADER = "x-session-id"  # opencode's name for its session, where the body gives none (`client_session`)


@dataclass(slots=True)
class Outcome:
    """What the request path did with one request or WebSocket message, as mitmweb shows it."""

    scope: str
    rule: str | None
    is_default: bool
    adapter: str
    model: str | None
    auxiliary: bool
    injected: int = 0  # memories injected
    skipped: str | None = None  # why the request was left untouched
    ms: float | None = None  # time the decision took
    route: str | None = None  # SDK or ROUTER once the flow leaves the direct path
    project: str | None = None  # the root of the scope's project
    layers: tuple[str, ...] = ()  # scopes recalled beside the scope

    def shown(self) -> dict[str, Any]:
        """`flow.metadata["memproxy"]`: plain values, which mitmweb and flow files hold (the scope as user_id)."""
        shown: dict[str, Any] = {
            "user_id": self.scope,
            "rule": self.rule,
            "is_default": self.is_default,
            "adapter": self.adapter,
            "model": self.model,
            "auxiliary": self.auxiliary,
            "injected": self.injected,
        }
        if self.skipped is not None:
            shown["skipped"] = self.skipped
        if self.ms is not None:
            shown["ms"] = self.ms
        if self.route is not None:
            shown["route"] = self.route
        if self.project is not None:
            shown["project"] = self.project
        if self.layers:
            shown["also_recall"] = list(self.layers)
        return shown

    def comment(self) -> str:
        """The flow's comment in mitmweb."""
        head = f"memproxy: {self.scope} · rule {self.rule or 'default'}"
        if self.project is not None:
            head += f" · project {self.project}"
        if self.skipped:
            return f"{head} · {self.skipped}, untouched"
        noun = "memory" if self.injected == 1 else "memories"
        return f"{head} · {self.injected} {noun} injected · {self.ms if self.ms is not None else 0} ms"


@dataclass(slots=True)
class Pending:
    """A turn in flight: what is needed to capture it once the reply is complete."""

    scope: str
    user: str
    adapter: Adapter
    metadata: dict[str, Any]
    key: str = ""  # the prompt's key (protocols.base.Prompt)
    calls: tuple[str, ...] = ()  # the prompt's trace: tools called since it, with the files they name
    thread: Thread | None = None  # the WebSocket's, or the requests' that continue its replies
    continues: str | None = None  # what the request goes on with (`Adapter.continues`); None: nothing can go on
    parser: SSEParser | None = None
    reply: ReplyAccumulator | None = None
    asked: Asked | None = None  # its client session's latest prompt
    session: str = ""  # the client's name for its session (`Adapter.client_session`), "" for none


@dataclass(slots=True, frozen=True)
class LlmRequest:
    """An LLM request as the request path reads it: its adapter, headers, parsed body (written back by
    `dumps`) and the body's bytes."""

    adapter: Adapter
    headers: dict[str, str]
    body: Any
    content: bytes
    dumps: Callable[[Any], bytes]


@dataclass(slots=True)
class Decision:
    """What the request path decided for one LLM request or WebSocket message."""

    route: Route
    outcome: Outcome
    content: bytes | None = None  # the new body, if memories were injected
    pending: Pending | None = None


def fail_open(hook):
    """Run a hook so that no exception of ours reaches mitmproxy or changes the flow."""

    @functools.wraps(hook)
    async def wrapper(self: RequestPath, *args):
        try:
            return await hook(self, *args)
        except Exception as e:  # noqa: BLE001 - fail open is the contract
            logger.warning("memproxy: %s failed, flow passed through unchanged: %s", hook.__name__, brief(e))

    return wrapper


class RequestPath:
    """Gives LLM requests a memory: route, recall, inject, reroute, remember."""

    def __init__(
        self, hosts: Hosts, projects: Projects, names: ProjectNames, rules: RulesWatcher, store: Store, sdk: Sdk
    ) -> None:
        self.hosts, self.projects, self.names, self.rules, self.store, self.sdk = hosts, projects, names, rules, store, sdk
        self.pending: dict[str, Pending] = {}  # turns waiting for their reply, by flow id
        self.outcomes: dict[str, Outcome] = {}  # requests waiting for their reply: it may be a cookie challenge
        self.sessions: dict[str, Route] = {}  # a WebSocket's route that named a project, by flow id
        self.threads: dict[str, Thread] = {}  # a WebSocket's prompt and conversation, by flow id
        self.chains: OrderedDict[tuple[str, str], Thread] = OrderedDict()  # by (scope, a reply's or conversation's id)
        self.asked: OrderedDict[tuple[str, str], Asked] = OrderedDict()  # by (scope, a client's session)
        self.routes: OrderedDict[str, Route] = OrderedDict()  # a client session's latest project route, by session
        self.file: ThreadFile | None = None  # where chains and asked are kept across restarts, once running
        self.clients: Counter[str] = Counter()  # requests per matched rule since start
        self._once = Once(logger)
        # Read on every request, so kept here: mitmproxy's option lookups are slow for a hot path.
        self.enabled, self.max_body, self.timeout = True, 16 * 1024 * 1024, 0.3

    def load(self, loader: Loader) -> None:
        loader.add_option("memory_enabled", bool, True, "Give LLM flows a memory. Off: pass everything through.")
        loader.add_option(
            "memory_timeout_ms", int, 300, "Time budget of recall per request, in ms; past it the request goes on without memories."
        )
        loader.add_option(
            "memory_max_body", int, 16 * 1024 * 1024, "Request bodies larger than this many bytes pass through untouched."
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "memory_timeout_ms" in updated:
            if opts.memory_timeout_ms < 0:
                raise exceptions.OptionsError("memory_timeout_ms must be >= 0")
            self.timeout = opts.memory_timeout_ms / 1000
        if "memory_max_body" in updated:
            if opts.memory_max_body <= 0:
                raise exceptions.OptionsError("memory_max_body must be > 0")
            self.max_body = opts.memory_max_body
        if "memory_enabled" in updated:
            self.enabled = opts.memory_enabled

    async def running(self) -> None:
        """The last start-up line, once the addons before this one are up: rules, store, outbox, the threads
        and asked prompts kept before a restart (memproxy.threads), and the SDK path's cookie jars, so that a
        (scope, host) a challenge put on the SDK path stays there across a restart (importing the jars' HTTP
        client takes longer than a request's recall budget)."""
        if self.rules.rules is None or self.store.store is None:
            return
        self.file = ThreadFile(config.threads_path())
        kept = await self.file.load()
        for records, restored in ((self.chains, kept.chains), (self.asked, kept.asked),
                                  (self.routes, kept.routes_in(self.rules.rules))):
            came = list(records.items())  # requests answered meanwhile are newer than anything restored
            records.clear()
            records.update(restored)
            for name, value in came:
                records[name] = value
                records.move_to_end(name)
        if self.sdk.path is not None:
            await self.sdk.path.restored(RESTORE_LIMIT)
        opts = ctx.options
        logger.info(
            config.READY_LINE + ": HTTPS_PROXY=http://%s:%d and trust %s/mitmproxy-ca-cert.pem"
            " (NODE_EXTRA_CA_CERTS for Node tools), or use a reverse listener as base URL; see README.md",
            opts.listen_host or "127.0.0.1",
            opts.listen_port or 8080,
            opts.confdir,
        )
        # What start-up made (modules, mitmproxy's and our objects) lives as long as the process: kept out of
        # the collector's reach, a full collection walks only what requests allocate.
        gc.freeze()

    async def done(self) -> None:
        if self.file is not None:
            await self.file.close(self._snapshot)

    def _snapshot(self) -> Snapshot:
        return snapshot(self.chains.items(), self.asked.items(), self.routes.items())

    def _changed(self) -> None:
        """The chains or the asked prompts changed: write them soon."""
        if self.file is not None:
            self.file.save_soon(self._snapshot)

    # -- the request --------------------------------------------------------

    @fail_open
    async def request(self, flow: http.HTTPFlow) -> None:
        rules = self.rules.rules
        if not self.enabled or flow.response is not None or rules is None or not self.hosts.serves(flow):
            return
        flow.metadata[SERVED] = True  # a WebSocket's messages are judged by their handshake
        self._take_override(flow, rules)
        if (llm := self._llm_request(flow, rules)) is None:
            if (sdk := self.sdk.path) is not None:  # a settings call, a WebSocket upgrade: its client's jar
                sdk.attach(flow, None, rules.default_scope)
            return
        req, adapter = flow.request, llm.adapter
        decision = await self._decide(flow, adapter, llm.headers, llm.body, llm.content, llm.dumps)
        if decision.route.actions.route == "supermemory_router":
            self._to_router(flow, decision.route)
            decision.outcome.route = ROUTER
        elif (sdk := self.sdk.path) is not None:
            if sdk.sessions is None:
                await sdk.restored(self.timeout)
            sdk.used(flow, decision.route.scope)
            if sdk.wants(decision.route, req.host, adapter.name):
                await sdk.redirect(flow, adapter.name, decision.route)  # the gateway's client adds the jar
                decision.outcome.route = SDK
            else:
                sdk.attach(flow, decision.route.scope, rules.default_scope)
        if decision.content is not None:
            req.set_content(decision.content)
        if decision.pending:
            self.pending[flow.id] = decision.pending
        self.outcomes[flow.id] = decision.outcome
        self._annotate(flow, decision.outcome)

    def _llm_request(self, flow: http.HTTPFlow, rules: Rules) -> LlmRequest | None:
        """The flow's LLM request: an adapter's method and path, and a JSON body of its shape that can be written
        back as sent. None for anything else, which passes untouched."""
        req = flow.request
        adapter = protocols.detect_path(req.method, req.path)
        raw = req.raw_content
        if adapter is None or not raw or len(raw) > self.max_body:
            return None
        headers = flow_headers(flow, rules.override_header)
        if not jsonbody.is_json(headers.get("content-type", "")):
            return None
        try:
            content = req.get_content()
        except ValueError:  # an encoding we cannot undo: passed through untouched
            return None
        if len(content) > self.max_body:  # a small compressed body can decode to a huge one
            return None
        if (parsed := jsonbody.parse(content)) is None or not adapter.matches_body(parsed[0]):
            return None
        return LlmRequest(adapter, headers, parsed[0], content, parsed[1])

    def _take_override(self, flow: http.HTTPFlow, rules: Rules) -> None:
        """Strip the override header before upstream; keep its value for routing if the client is on this
        machine (another machine, when listening on all interfaces, cannot pick a scope)."""
        if values := flow.request.headers.get_all(rules.override_header):  # one pass when it is absent
            flow.request.headers.set_all(rules.override_header, [])
            peer = flow.client_conn.peername
            if peer and is_loopback(peer[0]):
                flow.metadata[OVERRIDE_KEY] = ", ".join(values)

    async def _decide(
        self, flow: http.HTTPFlow, adapter: Adapter, headers: dict[str, str], body: Any, raw: bytes,
        dumps: Callable[[Any], bytes], method: str | None = None,
    ) -> Decision:
        """Route one request body, recall and inject memories (serialised by `dumps`), and prepare its capture."""
        t0 = time.perf_counter()
        model = adapter.model(flow.request.path, body)
        rules = self.rules.rules
        text = raw.decode("utf-8", "replace") if rules.reads_raw_body else None
        view = request_view(flow, headers, self.projects.project_path, method, body=body, raw_body=text, model=model,
                            projects=self.names)
        route = await self.match(rules, view, t0)
        session = adapter.client_session(body) or headers.get(SESSION_HEADER, "")[:MAX_SESSION_CHARS]
        entries = None
        if flow.websocket is not None:
            route = self._in_session(flow.id, route)
        elif session and (known := self._session_route(session, route)) is not None:
            entries = adapter.conversation(body)
            if summarised(entries):
                route = known
        self.clients[route.rule or "default"] += 1
        actions = route.actions
        outcome = Outcome(route.scope, route.rule, route.is_default, adapter.name, model, actions.auxiliary,
                          project=route.project, layers=route.layers)
        decision = Decision(route, outcome)
        if actions.auxiliary or not actions.allows_model(model):
            outcome.skipped = "auxiliary" if actions.auxiliary else "model not allowed"
            return decision
        if actions.route == "supermemory_router":
            outcome.skipped = "sent through the Supermemory router"
            return decision
        if entries is None:  # read once: the prompt, and what the echo check compares with
            entries = adapter.conversation(body)
        prompt = find_prompt(entries)
        user, key, calls, conversation = prompt.text, prompt.key, prompt.calls, prompt.conversation
        previous = adapter.continues(body)
        if (thread := self._thread(flow, previous, route.scope)) is not None:
            if flow.websocket is None and thread.forks(prompt, previous):
                thread = thread.fork(previous)
            user, key, calls = thread.answers(prompt, entries, previous)
            conversation = thread.conversation
            thread.heard.extend(Heard.of(entries))  # a later message carries only what is new
        # A request carrying its whole conversation (with or without a new thread, for the requests that may name
        # its reply) goes on from the client's summary as any other.
        whole = flow.websocket is None and not previous
        asked = self._asked(route.scope, session, prompt, entries) if whole and actions.store else None
        carried = asked if asked is not None and (not prompt.text or asked.key != prompt.key) else None
        if carried is not None:
            user, key, conversation = carried.user, carried.key, carried.conversation
            calls = unique_calls(carried.calls + calls)
            if thread is not None:  # the requests naming this reply go on with the carried prompt
                thread.user, thread.key, thread.raw, thread.calls = user, key, key, calls
                thread.conversation = conversation
        client = headers.get("user-agent", "").split("/", 1)[0].strip()[:64] or adapter.name
        if route.project is not None:
            self.names.used(route.project, route.tool or client)
        if actions.recall:
            query = user if actions.query == "last_user" else adapter.query(body, actions.query)
            found = await self._search(route, query, functools.partial(_heard, entries, thread, carried))
            text = protocols.frame_context(found[0], route.scope, actions.max_chars, also=tuple(zip(route.layers, found[1:])))
            if text and adapter.inject(body, text, actions.inject):
                decision.content = dumps(body)
                outcome.injected = sum(map(len, found))
        if actions.store and user:
            metadata = {"client": client, "rule": route.rule or "default", "model": model or ""}
            if route.tool:
                metadata["tool"] = route.tool
            if route.project is not None:
                metadata["project"] = route.project
            if conversation:
                metadata["conversation"] = conversation  # its turns are neighbours in ranking (memory.ranking)
            if key:
                metadata[PROMPT_KEY] = key  # what the echo check knows its memory by (memory.base.Keyed)
            decision.pending = Pending(route.scope, user, adapter, metadata, key, calls, thread, previous, asked=asked,
                                       session=session)
        outcome.ms = round((time.perf_counter() - t0) * 1000, 1)
        return decision

    def _thread(self, flow: http.HTTPFlow, previous: str | None, scope: str) -> Thread | None:
        """The thread a request goes on with: its WebSocket's; the one of the earlier reply it names (`previous`,
        from `Adapter.continues`), in the same scope, or a new one if none is known (a conversation's first
        request names it too); a new one for a request whose reply may be continued; None for a request that
        carries its whole conversation."""
        if flow.websocket is not None:
            return self.threads.setdefault(flow.id, Thread())
        if previous is None:
            return None
        return (self.chains.get((scope, previous)) if previous else None) or Thread()

    def _session_route(self, session: str, route: Route) -> Route | None:
        """Keep a route that names a project and stores as the latest of the client's session `session` (the
        latest MAX_SESSIONS sessions). For a route that names none, the one the session had, if the same tool's
        rule would store it too (a rule of no tool is no one client, whose session ids another could share): a client that compacted its conversation may leave the working directory out
        of the summary it goes on from (Qwen Code does), and the request that does stays in its project
        (`summarised`). None where nothing is to change."""
        a = route.actions
        if a.auxiliary or not a.store or route.custom_header_present:
            return None
        if route.project is not None:
            known = self.routes.get(session)
            self.routes[session] = route
            self.routes.move_to_end(session)
            while len(self.routes) > MAX_SESSIONS:
                self.routes.popitem(last=False)
            if known is None or saved_route(known) != saved_route(route):
                self._changed()
            return None
        known = self.routes.get(session)
        return known if known is not None and route.tool and known.tool == route.tool else None

    def _asked(self, scope: str, session: str, prompt: Prompt, entries: Sequence[Entry]) -> Asked | None:
        """The latest prompt of the client's session `session` in `scope` (without one, of the prompt's text): the
        request's own, kept as the latest (the latest MAX_SESSIONS); for a request going on from the client's
        summary of its conversation, the one it asked before, also where the summary kept that prompt after it
        (Gemini CLI's: the prompt's key, which digests the user texts before it, changed). A summary keeps it only
        in the middle of its tool loop (tool results follow it): a prompt with no results after it is a new one,
        even with the words of an earlier one, or of another conversation's. None for a request answering no
        prompt of it."""
        if not session and not prompt.text:
            return None
        name = (scope, session or "\0" + hashlib.blake2b(prompt.text.encode("utf-8", "replace"), digest_size=16).hexdigest())
        asked = self.asked.get(name)
        if not prompt.text:
            return asked if prompt.compacted else None
        if (asked is not None and asked.key != prompt.key and asked.user == prompt.text and prompt.follows
                and holds_summary(entries)):
            pass  # the same prompt, going on after the summary took the place of what came before it
        elif asked is None or asked.key != prompt.key:
            asked = self.asked[name] = Asked(prompt.text, prompt.key, prompt.conversation)
            while len(self.asked) > MAX_SESSIONS:
                self.asked.popitem(last=False)
            self._changed()
        self.asked.move_to_end(name)
        return asked

    async def match(self, rules: Rules, view: RequestView, t0: float) -> Route:
        """The rules' route for `view`, once the projects its working directories name are known (looked up
        within the time budget)."""
        route = rules.match(view, self.timeout)
        for _ in range(MAX_LOOKUPS):
            if route.unresolved is None:
                break
            await self.names.resolve(route.unresolved, self.timeout - (time.perf_counter() - t0))
            route = rules.match(view, self.timeout - (time.perf_counter() - t0))
        return route

    def _in_session(self, flow_id: str, route: Route) -> Route:
        """A WebSocket carries one session of one client in one directory, and sends its input incrementally: a
        later turn names no working directory. Such a turn keeps the project route an earlier turn of the same
        tool named, unless it is auxiliary or the override header names its scope."""
        if route.project is not None:
            self.sessions[flow_id] = route
            return route
        known = self.sessions.get(flow_id)
        if known is None or route.actions.auxiliary or route.custom_header_present or route.tool != known.tool:
            return route
        return known

    async def _search(self, route: Route, query: str, heard: Callable[[], Heard]) -> tuple[tuple[str, ...], ...]:
        """The contents of the memories for `query` of the route's scope (its profile first, if asked) and of each
        of its layers, searched in parallel within the time budget; any failure means none. Memories the
        conversation (`heard`, read only if something was found) already holds are left out."""
        a, timeout, recall = route.actions, self.timeout, self.store.recall
        limit = a.max_results + ECHO_MARGIN
        searches = [recall.search(scope, query, limit, a.threshold, timeout) for scope in (route.scope, *route.layers)]
        if a.profile:
            searches.insert(0, recall.profile(route.scope, timeout))
        found = [await searches[0]] if len(searches) == 1 else await asyncio.gather(*searches)
        profile = found.pop(0) if a.profile else ()
        found = without_echoes(found, heard, a.max_results)
        return (profile + found[0], *found[1:]) if profile else found

    def _to_router(self, flow: http.HTTPFlow, route: Route) -> None:
        """Send the request through Supermemory's Memory Router: `<base>/v3/<original URL>`."""
        if (router := self.store.router) is None:
            self._once("router", "memproxy: route supermemory_router needs a Supermemory API key; passed through instead")
            return
        flow.request.url = f"{router.base_url.rstrip('/')}/v3/{flow.request.url}"
        flow.request.headers["x-supermemory-api-key"] = router.api_key
        # The router's name for the scope. Scope names keep Unicode letters: mitmproxy sends them as UTF-8 bytes,
        # which HTTP allows in a field value (RFC 9110 obs-text) and which a stricter server may refuse.
        flow.request.headers["x-sm-user-id"] = route.scope

    @staticmethod
    def _annotate(flow: http.HTTPFlow, outcome: Outcome) -> None:
        """Show the outcome in mitmweb: marker, comment and metadata."""
        flow.metadata["memproxy"] = outcome.shown()
        flow.marked = MARKER
        flow.comment = outcome.comment()

    # -- the reply ----------------------------------------------------------

    def _challenged(self, flow: http.HTTPFlow, outcome: Outcome | None) -> bool:
        """Whether a reply is a cookie challenge that the SDK path answers (the flow stayed on the direct path)."""
        sdk = self.sdk.path
        return outcome is not None and sdk is not None and outcome.route is None and sdk.is_challenge(flow, outcome.adapter)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream SSE chunk by chunk; for a pending turn, tee a copy into its reply accumulator."""
        resp = flow.response
        if not self.enabled or resp is None or self._challenged(flow, self.outcomes.get(flow.id)):
            return
        if "text/event-stream" not in resp.headers.get("content-type", ""):
            return
        pending = self.pending.get(flow.id)
        if pending is None or resp.status_code >= 300:
            self.pending.pop(flow.id, None)
            resp.stream = True
            return
        pending.parser, pending.reply = SSEParser(), pending.adapter.accumulator()
        resp.stream = functools.partial(self._tee, flow.id, pending)

    def _tee(self, flow_id: str, pending: Pending, chunk: bytes) -> bytes:
        """The stream callable: forwards `chunk` unchanged, feeding a copy to capture. The turn is remembered at
        the protocol's final event: a client may close the connection as soon as it has it, which ends the flow
        in an error."""
        try:
            for event, data in pending.parser.feed(chunk):  # b"" ends the stream: flushes a last event
                pending.reply.feed(event, data)
            if (not chunk or pending.reply.done) and self.pending.pop(flow_id, None) is not None:
                self._remember(pending, pending.reply.text(), pending.reply.calls(), pending.reply.reply_id())
        except Exception as e:  # noqa: BLE001 - capture must never disturb the stream
            self.pending.pop(flow_id, None)
            self._once("tee", "memproxy: capture of a streamed reply failed: %s", brief(e))
        return chunk

    @fail_open
    async def response(self, flow: http.HTTPFlow) -> None:
        outcome, pending = self.outcomes.pop(flow.id, None), self.pending.pop(flow.id, None)
        if self._challenged(flow, outcome):
            await self.sdk.path.answer_challenge(flow, outcome.adapter, outcome.scope)
            outcome.route = SDK
            flow.metadata["memproxy"] = outcome.shown()
        elif SERVED in flow.metadata and (outcome is None or outcome.route is None) and self.sdk.path is not None:
            # the direct path: a challenge's cookies wait for the client's own retry, other replies keep them current
            rules = self.rules.rules
            default = rules.default_scope if rules is not None else ""
            self.sdk.path.learn(flow, outcome.scope if outcome is not None else None, default)
        resp = flow.response
        if pending is None or resp is None or resp.stream or resp.status_code >= 300:
            return
        content = resp.get_content()
        if "text/event-stream" in resp.headers.get("content-type", ""):  # an SSE reply that was not streamed
            reply = pending.adapter.accumulator()
            for event, data in SSEParser().feed(content) + SSEParser().feed(b""):
                reply.feed(event, data)
            self._remember(pending, reply.text(), reply.calls(), reply.reply_id())
            return
        body = json.loads(content)
        parts = body if isinstance(body, list) else [body]  # Gemini may answer a JSON array of chunks
        adapter = pending.adapter
        calls = unique_calls(call for p in parts for call in adapter.calls_from_json(p))
        reply_id = next((id_ for p in parts if (id_ := adapter.reply_id_from_json(p))), "")
        self._remember(pending, "".join(adapter.reply_from_json(p) for p in parts), calls, reply_id)

    def error(self, flow: http.HTTPFlow) -> None:
        self.outcomes.pop(flow.id, None)
        self.pending.pop(flow.id, None)
        self.sessions.pop(flow.id, None)
        self.threads.pop(flow.id, None)

    def _remember(self, pending: Pending, reply: str, calls: tuple[str, ...] = (), reply_id: str = "") -> None:
        """Store the prompt with this step's reply (a later step of its tool loop replaces it), and its trace (the
        tools called since the prompt, with the files they name: never their output) in its metadata. A reply
        that a later request may continue leads to the pending turn's thread, even one that only calls tools."""
        said = bool(reply or calls)  # a failed reply says nothing: its prompt may be asked again, as a retry
        calls = unique_calls(pending.calls + calls)
        if (thread := pending.thread) is not None:
            thread.calls = calls
            if said:
                thread.replied(reply_id)
            if pending.continues is not None:  # a later request may name the reply, or the conversation
                for name in filter(None, (reply_id, pending.continues)):
                    self._chain((pending.scope, name), thread)
        metadata = {**pending.metadata, "calls": list(calls)} if calls else pending.metadata
        turn = Turn.make(pending.scope, pending.user, reply, metadata, pending.key, pending.session)
        if (asked := pending.asked) is not None and asked.key == pending.key:
            asked.calls = calls
            if turn:
                asked.turn = (turn.user, turn.reply)
            self._changed()
        if turn and self.store.outbox is not None:
            if thread is not None:
                thread.turn(turn.user, turn.reply, turn.key)
            self.store.recall.invalidate(turn.scope)
            self.store.outbox.submit(turn)
        if thread is not None and pending.continues is not None:
            self._changed()

    def _chain(self, key: tuple[str, str], thread: Thread) -> None:
        """Keep `thread` for the requests that continue the reply or conversation `key` names, the latest
        MAX_CHAINS names (a conversation's name is kept again at each of its replies; a thread keeps its latest
        NAMES_A_THREAD, so that one long loop leaves the others theirs), whose threads hold at most MAX_CHAIN_CHARS
        characters."""
        self.chains[key] = thread
        self.chains.move_to_end(key)
        for name in [name for name, kept in self.chains.items() if kept is thread][:-NAMES_A_THREAD]:
            del self.chains[name]
        while len(self.chains) > MAX_CHAINS or (len(self.chains) > 1 and self._chained_chars() > MAX_CHAIN_CHARS):
            self.chains.popitem(last=False)

    def _chained_chars(self) -> int:
        """The characters the kept threads hold, each thread once."""
        return sum(t.heard.chars for t in {id(t): t for t in self.chains.values()}.values())

    # -- WebSocket (OpenAI Responses, as Codex CLI speaks it) ----------------

    @fail_open
    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        if not self.enabled or flow.websocket is None or self.rules.rules is None or SERVED not in flow.metadata:
            return
        message = flow.websocket.messages[-1]
        if not message.is_text:
            return
        if not message.from_client:
            pending = self.pending.get(flow.id)
            if pending and pending.reply:
                pending.reply.feed(None, message.text)
                if pending.reply.done:
                    del self.pending[flow.id]
                    self._remember(pending, pending.reply.text(), pending.reply.calls(), pending.reply.reply_id())
            return
        adapter = protocols.detect_path("POST", flow.request.path)
        if adapter is None or len(message.content) > self.max_body:
            return
        if (parsed := jsonbody.parse(message.content)) is None:
            return
        body, dumps = parsed
        if not isinstance(body, dict) or body.get("type") != "response.create" or not adapter.matches_body(body):
            return
        headers = flow_headers(flow, self.rules.rules.override_header)
        decision = await self._decide(flow, adapter, headers, body, message.content, dumps, method="POST")
        if decision.content is not None:
            message.content = decision.content
        self.pending.pop(flow.id, None)
        if decision.pending:
            decision.pending.reply = adapter.accumulator()
            self.pending[flow.id] = decision.pending
        self._annotate(flow, decision.outcome)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.pending.pop(flow.id, None)
        self.sessions.pop(flow.id, None)
        self.threads.pop(flow.id, None)


def _heard(entries: list[Entry], thread: Thread | None, carried: Asked | None = None) -> Heard:
    """What the conversation holds: the request's messages, or all that its WebSocket went through; going on from
    the client's summary (`carried`), also the prompt it answers with the reply stored for it, since the request
    holds neither any more: a step of its own is no memory to recall into it."""
    if thread is not None:
        return thread.heard
    heard = Heard.of(entries)
    if carried is not None and carried.turn[0]:
        heard.turn(*carried.turn, carried.key)
    return heard
