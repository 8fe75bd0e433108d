"""Threads and asked prompts: what the request path keeps of conversations whose requests carry them in part,
kept across restarts.

A `Thread` follows a conversation sent incrementally (one WebSocket, or requests chained by the replies or the
conversation the provider keeps): the prompt it answers now and what it went through. An `Asked` is the latest
prompt of a client's session whose requests carry the whole conversation, for the requests that go on from the
client's summary of it.

`ThreadFile` keeps the chained threads, the asked prompts and each client session's project route in one JSON
file (0600, replaced atomically in a worker thread, at most once a SAVE_DELAY, and when memproxy stops). So after
a restart a tool loop, a conversation the provider keeps, or a compacted session still ends in its prompt's
memory, in its project, and is still not given its own turns back. What the file holds is what memories hold,
scrubbed the same way (`capture.stored_together`: each prompt with its trace and turns, as one): each prompt and
its key, its trace (the tools called, the files they name), the turns a thread stored (the latest KEPT_TURNS: their
keys, and the start of their texts, which is what the echo check reads), and the keys of all the turns its conversation holds (the latest echoes.MAX_TURNS), by
which the echo check knows a stored turn's memory (memory.base.Keyed) whose text the file no longer keeps. A
route is kept as its scope, project and rule's name, and comes back as that rule gives it then, if it still
stores. A WebSocket's thread ends with its connection, and is not kept. A thread's digest of the user texts it
carried cannot be written: a restored thread keys its later prompts from its current key instead
(`Thread.restored`), the same way after any number of restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import private
from .capture import MAX_USER_CHARS, SCRUB_MARGIN, stored_together
from .echoes import PREFIX, Heard
from .logs import brief
from .protocols.base import Entry, Prompt
from .protocols.common import MAX_CALL_CHARS, carry, unique_calls
from .rules import Route, Rules

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SAVE_DELAY = 1.0  # seconds a change waits for the others of its moment before the file is written
REPLIES = 16  # replies a thread knows as its own, the latest: a prompt going on from an older one forks it
KEPT_TURNS = 16  # turns a thread keeps for the file (the latest); its echo check holds more while memproxy runs
TURN_CHARS = 2 * PREFIX  # characters of each text of those turns the file keeps: the echo check reads PREFIX
Name = tuple[str, str]  # (scope, a reply's, a conversation's or a client session's id)


@dataclass(slots=True)
class Thread:
    """What a conversation sent incrementally went through (one WebSocket, or requests chained by the replies
    they continue): the prompt it answers now, as its key names it, and its trace so far (a later
    message of a tool loop carries only tool outputs), and the prompts and answers of its conversation (later
    messages carry only what is new)."""

    raw: str = ""  # the current prompt's key as its message gave it
    key: str = ""  # its key in the whole conversation, as if one request carried it all (`carry`)
    user: str = ""
    calls: tuple[str, ...] = ()
    heard: Heard = field(default_factory=Heard)
    conversation: str = ""  # named by the connection's first prompt
    digest: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16))  # of the user texts carried
    stored: dict[str, tuple[str, str]] = field(default_factory=dict)  # the latest turns it stored, by key
    reply: str = ""  # the latest reply that said something (text or tool calls): where its conversation stands
    after: str = ""  # `reply` when the current prompt was first asked
    replies: list[str] = field(default_factory=list)  # the latest REPLIES ids of `reply`, in order

    @classmethod
    def restored(cls, raw: str, key: str, user: str, calls: Iterable[str], conversation: str,
                 turns: Iterable[tuple[str, str, str]], held: Iterable[str] = (), reply: str = "",
                 after: str = "") -> Thread:
        """A thread as `ThreadFile` wrote it: its digest starts from its key, and it holds the turns it stored and
        those `held` names."""
        thread = cls(raw, key, user, unique_calls(calls), conversation=conversation,
                     digest=hashlib.blake2b(key.encode() + b"\0", digest_size=16), reply=reply, after=after)
        thread.heard.hold(held)
        for turn_key, prompt, reply in turns:
            thread.turn(prompt, reply, turn_key)
        return thread

    def answers(self, prompt: Prompt, entries: Sequence[Entry],
                previous: str | None = None) -> tuple[str, str, tuple[str, ...]]:
        """The user text, key and calls of the prompt a message (`entries`, going on from `previous`:
        `Adapter.continues`) answers: its own (a retry of the current one keeps its key), or, for a message of only
        tool outputs or one going on from the client's summary of the conversation (`Prompt.compacted`), the
        current one's. A prompt's key is the one a request carrying the whole conversation gives it, so that its
        memory is the same either way."""
        if prompt.text and prompt.key == self.raw and self._again(previous):
            return self.user, self.key, unique_calls(self.calls + prompt.calls)  # a retry: carried already
        key, answered = carry(self.digest, entries)
        self.heard.hold(answered)
        if prompt.text:
            self.conversation = self.conversation or prompt.conversation
            self.key, self.raw, self.user, self.calls, self.after = key, prompt.key, prompt.text, (), self.reply
        elif prompt.wordless:  # a new prompt, which its later steps go on from: none of them is the last one's
            self.key = self.raw = ""
            return "", "", prompt.calls
        elif not ((prompt.follows or prompt.compacted) and self.key):
            return "", "", prompt.calls
        return self.user, self.key, unique_calls(self.calls + prompt.calls)

    def _again(self, previous: str | None) -> bool:
        """Whether a message with the current prompt's words asks it again (`raw` digests only the message's own
        texts, so "continue" after "continue" has the same): no reply said anything since it was asked, or the
        message goes on from the same reply as it did (a retry of a request whose reply came)."""
        return self.reply == self.after or bool(previous) and previous == self.after

    def replied(self, reply_id: str) -> None:
        """A reply said something: the conversation is past it, so a message with the current prompt's words is a
        new prompt, unless it names the reply the prompt went on from. A reply without an id is a new place all
        the same."""
        self.reply = reply_id or secrets.token_hex(8)
        self.replies.append(self.reply)
        del self.replies[:-REPLIES]

    def forks(self, prompt: Prompt, previous: str | None) -> bool:
        """Whether a new prompt going on from the reply `previous` leaves this thread for a branch of its own: it
        goes on from where the current prompt did in other words (a prompt edited or regenerated, also while the
        current one is being answered), or from an earlier reply of this thread than the latest. A conversation's
        name is no reply: its prompts never fork."""
        if not (prompt.text and previous and self.key):
            return False
        if previous == self.after:
            return prompt.key != self.raw
        return previous != self.reply and previous in self.replies

    def fork(self, previous: str) -> Thread:
        """A branch going on from the reply `previous`: its keys digest that name first (the same words going on
        from another reply are another prompt); the conversation this thread holds, for the echo check."""
        branch = Thread()
        branch.digest.update(b"\1" + previous.encode("utf-8", "surrogatepass") + b"\0")
        branch.conversation = self.conversation
        branch.heard.extend(self.heard)
        branch.heard.hold(self.heard.held())
        return branch

    def turn(self, user: str, reply: str, key: str) -> None:
        """A turn it stored: its conversation holds it (`heard`), and the file keeps the start of the latest
        KEPT_TURNS (with the margin that scrubbing them as their memory is scrubbed needs)."""
        self.heard.turn(user, reply, key)
        self.stored.pop(key, None)
        self.stored[key] = (user[:TURN_CHARS + SCRUB_MARGIN], reply[:TURN_CHARS + SCRUB_MARGIN])
        for _ in range(len(self.stored) - KEPT_TURNS):
            del self.stored[next(iter(self.stored))]


@dataclass(slots=True)
class Asked:
    """The latest prompt a client's session (`Adapter.client_session`, in one scope) asked, in requests that carry
    their whole conversation: once the client has compacted the conversation into a summary with no prompt after
    it (`Prompt.compacted`), its requests go on answering this prompt, in this memory."""

    user: str
    key: str
    conversation: str
    calls: tuple[str, ...] = ()  # the prompt's trace (tools called since it), as its memory names it
    turn: tuple[str, str] = ("", "")  # the prompt and the reply its memory holds, as stored (capture.Turn)


# A client session's latest project route, as the file keeps it: scope, rule, project, tool, layers.
SavedRoute = tuple[str, str, str, str | None, tuple[str, ...]]
# What the file will hold, taken on the event loop: each thread (its names, the latest last; raw, key, user, calls,
# conversation; its turns as (key, prompt, reply); the keys of the turns it holds; reply, after), each asked prompt (its name; user, key, conversation, calls,
# turn), and each session's route (the session, then SavedRoute). The texts are scrubbed in the writer's thread.
Snapshot = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]


@dataclass(slots=True)
class Kept:
    """What the file held, oldest first: each chain's name with its thread (a thread may have several names), each
    asked prompt, and each client session's latest project route."""

    chains: list[tuple[Name, Thread]] = field(default_factory=list)
    asked: list[tuple[Name, Asked]] = field(default_factory=list)
    routes: list[tuple[str, SavedRoute]] = field(default_factory=list)

    def routes_in(self, rules: Rules) -> list[tuple[str, Route]]:
        """The routes whose rule `rules` still has, with its tool, storing: as that rule gives them now."""
        named = {rule.name: rule for rule in rules.rules}
        routes = []
        for session, (scope, name, project, tool, layers) in self.routes:
            rule = named.get(name)
            if rule is None or (rule.tool or None) != tool or not rule.actions.store or rule.actions.auxiliary:
                continue
            routes.append((session, Route(scope, name, False, None, False, rule.actions, MappingProxyType({}),
                                          project=project, tool=tool, layers=layers)))
        return routes


class ThreadFile:
    """The chained threads and the asked prompts, in one file: restored at start, written soon after they change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()  # writes under way, kept referenced until done
        self._writer = _Writer()

    async def load(self) -> Kept:
        """What the file holds. A missing file holds nothing; an unreadable one is kept as `<name>.bak`, and nothing
        is restored."""
        try:
            return await asyncio.to_thread(_read, self.path)
        except FileNotFoundError:
            return Kept()
        except private.UnsafePath as e:
            logger.warning("memproxy: threads not restored: %s", e)
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:  # RecursionError: nested too deep
            backup = await asyncio.to_thread(private.set_aside, self.path)
            logger.warning("memproxy: threads file %s is unreadable (%s); kept it as %s", self.path, brief(e), backup)
        return Kept()

    def save_soon(self, snapshot: Callable[[], Snapshot]) -> None:
        """Write what `snapshot` gives in SAVE_DELAY seconds, once for all the changes until then."""
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(SAVE_DELAY, self._start, snapshot)

    async def close(self, snapshot: Callable[[], Snapshot]) -> None:
        """Write what has changed since the last write now, and wait for it."""
        if self._timer is not None:
            self._timer.cancel()
            self._start(snapshot)
        if self._tasks:
            await asyncio.gather(*self._tasks)

    def _start(self, snapshot: Callable[[], Snapshot]) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._save(snapshot()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _save(self, taken: Snapshot) -> None:
        async with self._lock:
            try:
                await asyncio.to_thread(self._writer.write, self.path, taken)
            except (OSError, ValueError) as e:  # UnsafePath included
                logger.warning("memproxy: threads not saved to %s: %s", self.path, brief(e))


def snapshot(chains: Iterable[tuple[Name, Thread]], asked: Iterable[tuple[Name, Asked]],
             routes: Iterable[tuple[str, Route]] = ()) -> Snapshot:
    """What the file will hold (`Snapshot`): references to the texts, copied on the event loop."""
    threads: dict[int, tuple[Any, ...]] = {}
    for name, t in chains:
        if t.key:
            entry = threads.get(id(t)) or (
                [], t.raw, t.key, t.user, t.calls, t.conversation, [(k, u, r) for k, (u, r) in t.stored.items()],
                t.heard.held(), t.reply, t.after)
            entry[0].append(name)
            threads[id(t)] = entry
    return (list(threads.values()), [(name, a.user, a.key, a.conversation, a.calls, a.turn) for name, a in asked],
            [(session, *saved_route(r)) for session, r in routes if r.rule and r.project])


def saved_route(route: Route) -> SavedRoute:
    """What the file keeps of a session's route."""
    return route.scope, route.rule or "", route.project or "", route.tool, route.layers


class _Writer:
    """Writes snapshots; each prompt is scrubbed once while the file holds it (`memo`: the last write's)."""

    def __init__(self) -> None:
        self.memo: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
        self._next: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}

    def write(self, path: Path, taken: Snapshot) -> None:
        threads, asked, routes = taken
        data = {
            "version": FORMAT_VERSION,
            "threads": [self._thread(*thread) for thread in threads],
            "asked": [self._asked(*entry) for entry in asked],
            "routes": [
                {"session": session, "scope": scope, "rule": rule, "project": project, "tool": tool, "layers": list(layers)}
                for session, scope, rule, project, tool, layers in routes
            ],
        }
        self.memo, self._next = self._next, {}
        private.replace_private(private.private_path(path), json.dumps(data).encode())

    def _thread(self, names: list[Name], raw: str, key: str, user: str, calls: Sequence[str], conversation: str,
                turns: list[tuple[str, str, str]], held: Iterable[str], reply: str, after: str) -> dict[str, Any]:
        user, calls, texts = self._stored(user, calls, [text for _, u, r in turns for text in (u, r)])
        return {"names": [list(n) for n in names], "raw": raw, "key": key, "user": user, "calls": calls,
                "conversation": conversation, "turns": [[k, *texts[2 * i : 2 * i + 2]] for i, (k, _, _) in enumerate(turns)],
                "held": list(held), "reply": reply, "after": after}

    def _asked(self, name: Name, user: str, key: str, conversation: str, calls: Sequence[str],
               turn: tuple[str, str]) -> dict[str, Any]:
        user, calls, texts = self._stored(user, calls, turn)
        return {"name": list(name), "user": user, "key": key, "conversation": conversation, "calls": calls,
                "turn": texts}

    def _stored(self, user: str, calls: Sequence[str], texts: Sequence[str]) -> tuple[str, list[str], list[str]]:
        """A prompt, its trace and the texts of its turns (their start: TURN_CHARS) as memories store them, scrubbed
        as one (`capture.stored_together`), as a turn is: a secret found in any of them is replaced in all."""
        name = (user, tuple(calls), tuple(texts))
        if (done := self.memo.get(name)) is None:
            done = stored_together([(user, MAX_USER_CHARS), *((c, MAX_CALL_CHARS) for c in calls),
                                    *((text, TURN_CHARS) for text in texts)])
        self._next[name] = done
        return done[0], done[1 : 1 + len(calls)], done[1 + len(calls) :]


def _read(path: Path) -> Kept:
    """What the file holds; raises on any shape it does not expect."""
    data = json.loads(private.private_path(path, make_dirs=False).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, not {type(data).__name__}")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"unknown version {data.get('version')!r}")
    kept = Kept()
    for t in data["threads"]:
        thread = Thread.restored(_text(t["raw"]), _text(t["key"]), _text(t["user"]), _texts(t["calls"]),
                                 _text(t["conversation"]), (_name(turn, 3) for turn in t["turns"]),
                                 _texts(t.get("held", [])),  # none in a file that does not keep them
                                 # nor where a prompt was asked: the same words then ask it again, as before
                                 reply=_text(t.get("reply", "")), after=_text(t.get("after", "")))
        kept.chains += [(_name(name, 2), thread) for name in t["names"]]
    kept.asked = [(_name(a["name"], 2), Asked(_text(a["user"]), _text(a["key"]), _text(a["conversation"]),
                                              unique_calls(_texts(a["calls"])), _name(a["turn"], 2)))
                  for a in data["asked"]]
    kept.routes = [(_text(r["session"]), (_text(r["scope"]), _text(r["rule"]), _text(r["project"]),
                                          None if r["tool"] is None else _text(r["tool"]), tuple(_texts(r["layers"]))))
                   for r in data["routes"]]
    return kept


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _texts(values: Any) -> list[str]:
    if not isinstance(values, list):
        raise TypeError(f"expected a list, not {type(values).__name__}")
    return [_text(v) for v in values]


def _name(values: Any, n: int) -> Any:
    texts = _texts(values)
    if len(texts) != n:
        raise ValueError(f"expected {n} strings, not {len(texts)}")
    return tuple(texts)
