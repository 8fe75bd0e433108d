"""No echoes: a recalled memory whose content the request already holds is not injected.

A conversation's own earlier prompts and answers come back in each of its requests, and were stored as memories
(a minute ago, or by an earlier session the client resumed): recalled, they would only repeat the conversation
to itself. A turn's memory (`User: … Assistant: …`, capture.Turn.content) is an echo when the request's user texts hold
its user part and its assistant texts hold its assistant part; the same question asked in another conversation,
whose answer the request does not hold, is still recalled. A backend that splits what it stores (Supermemory)
may answer with a chunk of a turn instead: it is an echo when the request's user texts hold the part of a prompt it
holds, and its assistant texts the part of an answer. A memory of free text is an echo when the request's user or
assistant texts hold it. A memory that names the prompts of its turns (memory.base.Keyed: a stored turn, a chunk
of one, or what a backend wrote from stored turns in its own words) is also an echo when the conversation holds
each of those turns: it holds a turn's prompt, as the prompt's key names it (the user messages up to and
including it), and an assistant message after it.

A memory's part is looked for as stored, by its first PREFIX characters (stored text is clipped, but otherwise
the text the client sent), with one C-speed substring search over the request's texts joined: the conversation
may be megabytes, and this runs on the event loop. A part shorter than SHORT characters must be a whole message
instead, so that "ok" is not found inside any text. Where a part is not found so, its pieces are looked for
instead, each in the conversation as it was sent: the text between the places where the stored text and the
client's copy may differ (`GAPS`). Stored text is scrubbed: where a secret's marker stands, the client sent the
secret. A prompt is stored cleaned of client boilerplate: where a block was cut out of its middle (a reminder),
a blank line or two spaces are left. A client may drop invisible format characters and HTML comments from an
answer it sends back (Gemini CLI, when it resumes a session). The request's texts are read only when something
was found.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from .memory.base import ASSISTANT, USER, Keyed, turn_parts, turn_splits, unlabelled
from .protocols.base import Entry
from .protocols.common import answered_keys
from .scrub import MARKED, MARKER_START

PREFIX = 200  # characters of a memory's part looked for
SHORT = 24  # a part shorter than this must be a whole message (stripped)
PIECES = 8  # pieces of a scrubbed part looked for (each is a search over the whole conversation)
MAX_TURNS = 200  # texts of each side a thread keeps of what it went through (Heard.extend, Heard.turn), the latest
KEPT = 8192  # characters of each text a thread keeps: a stored turn's parts are shorter (capture's clips)
SEPARATOR = "\0"  # between the texts joined: no stored part holds it
ANSWER = ASSISTANT.lstrip("\n")  # the label that starts a chunk of a turn cut just before it
ANSWER_CUT = ASSISTANT.rstrip()  # the label that ends a chunk of a turn cut at the space after it


# Where a stored part and the client's copy of it may differ: a secret's marker; a blank line or two spaces, where
# cleaning cut a block out; an HTML comment, an invisible format character (soft hyphen, zero-width, bidi marks and
# embeddings, word joiners, BOM) that a client dropped.
ASCII_GAPS = (MARKER_START, "\n", "  ", "<!--")  # one of these is in ASCII text that holds a gap
GAPS = re.compile(
    MARKED.pattern + r"|\n\s*\n|  +|<!--.*?-->|[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]+", re.S
)


def _found(part: str, joined: str, whole: frozenset[str] | None = None) -> bool:
    """Whether `part` is in `joined`. A short part must be one of the messages `whole`; with None (a chunk's part,
    which may start or end anywhere in a message), it may be anywhere in `joined`."""
    part = part.strip()
    if len(part) < SHORT:
        return part in joined if whole is None else bool(part) and part in whole
    head = part[:PREFIX]
    if MARKER_START not in part and head in joined:
        return True
    if head.isascii() and not any(gap in part[: PREFIX * 2] for gap in ASCII_GAPS):
        return False  # no piece but the whole
    pieces = _sent(part)
    split = "".join(pieces) != head  # else the search above was this one
    return split and sum(map(len, pieces)) >= SHORT and all(piece in joined for piece in pieces)


def _chunk_sides(content: str) -> tuple[str, str] | None:
    """A chunk of a turn (`turn_parts`' text cut anywhere at both ends): the part of the prompt it holds and the
    part of the answer ("" for none); None for text that holds no label of a turn."""
    if content.startswith(USER):
        return content[len(USER) :].removesuffix(ANSWER_CUT), ""
    if content.startswith(ANSWER):
        return "", content[len(ANSWER) :]
    before, label, after = content.partition(ASSISTANT)
    if label:
        return before, after
    if content.endswith(ANSWER_CUT):
        return content[: -len(ANSWER_CUT)], ""
    return None


def _sent(part: str) -> list[str]:
    """The text of `part` between its GAPS: its first PIECES pieces, within its first PREFIX characters of text."""
    pieces: list[str] = []
    room = PREFIX
    for piece in GAPS.split(part[: PREFIX * 2]):
        if room <= 0 or len(pieces) == PIECES:
            break
        if piece := piece[:room]:
            pieces.append(piece)
            room -= len(piece)
    return pieces


class Heard:
    """The texts a conversation holds: its user prompts and its assistant answers. Clients may merge messages
    when they resume a conversation, so a memory's part is looked for inside them."""

    __slots__ = ("users", "answers", "chars", "_joined", "_keys", "_entries")

    def __init__(self) -> None:
        self.users: list[str] = []
        self.answers: list[str] = []
        self.chars = 0  # of the texts a thread keeps (`extend`, `turn`)
        self._joined: tuple[str, frozenset[str], str, frozenset[str]] | None = None
        self._keys: dict[str, None] = {}  # of the turns it holds (`holds_turns`); a thread's, the latest MAX_TURNS
        self._entries: Sequence[Entry] = ()  # whose answered prompts' keys are not read yet

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> Heard:
        heard = cls()
        heard._entries = entries
        run: list[str] = []  # assistant messages in a row: one reply in several (Responses' output messages)
        for entry in entries:
            if entry.role == "assistant" and entry.text:
                heard.answers.append(entry.text)
                run.append(entry.text)
                continue
            if len(run) > 1:
                heard.answers.append("\n".join(run))  # as the reply was stored (`reply_from_json`)
            run = []
            if entry.text and entry.role == "user":  # as sent: a cleaned prompt is a part of it
                heard.users.append(entry.text)
        if len(run) > 1:
            heard.answers.append("\n".join(run))
        return heard

    def extend(self, other: Heard) -> None:
        """What `other` holds as well, as a thread keeps it: the latest MAX_TURNS texts of each side, their first
        KEPT characters. The turns its messages hold are named by `hold`, as a thread carries them."""
        self._keep(self.users, (text[:KEPT] for text in other.users))
        self._keep(self.answers, (text[:KEPT] for text in other.answers))

    def turn(self, user: str, answer: str, key: str = "") -> None:
        """A prompt and its answer this conversation went through (one the request may no longer carry), and the
        prompt's key."""
        self._keep(self.users, (user,))
        self._keep(self.answers, (answer,))
        self.hold((key,) if key else ())

    def hold(self, keys: Iterable[str]) -> None:
        """The keys of turns it holds as well, the latest MAX_TURNS."""
        self._keys.update(dict.fromkeys(keys))
        for _ in range(len(self._keys) - MAX_TURNS):
            del self._keys[next(iter(self._keys))]

    def held(self) -> tuple[str, ...]:
        """The keys of the turns it holds, the latest MAX_TURNS, oldest first."""
        return tuple(self._read_keys())

    def holds_turns(self, keys: Sequence[str]) -> bool:
        """Whether it holds the turns of the prompts `keys` names, answers included."""
        return bool(keys) and all(key in self._read_keys() for key in keys)

    def _read_keys(self) -> dict[str, None]:
        """The keys of the turns it holds, read from its messages the first time they are asked for."""
        if self._entries:
            self.hold(answered_keys(self._entries))
            self._entries = ()
        return self._keys

    def _keep(self, side: list[str], texts: Iterable[str]) -> None:
        for text in texts:
            side.append(text)
            self.chars += len(text)
        if (over := len(side) - MAX_TURNS) > 0:
            self.chars -= sum(map(len, side[:over]))
            del side[:over]
        self._joined = None

    def holds(self, memory: str) -> bool:
        """Whether the recalled `memory` (labelled as recall gives it) is already in this conversation."""
        content = unlabelled(memory)
        parts = turn_parts(content)
        # A memory in a backend's own words is known by its keys only. A stored text (a turn, a chunk of one) is
        # known by its text, and by its keys where they are read already (a thread's, which may no longer hold
        # the text): a request's keys cost a digest of its whole conversation, on the event loop.
        stored_text = parts is not None or _chunk_sides(content) is not None
        if isinstance(memory, Keyed) and (not stored_text or not self._entries) and self.holds_turns(memory.keys):
            return True
        if self._joined is None:
            self._joined = (SEPARATOR.join(self.users), frozenset(t.strip() for t in self.users),
                            SEPARATOR.join(self.answers), frozenset(t.strip() for t in self.answers))
        users, whole_users, answers, whole_answers = self._joined
        if parts:  # a prompt that quotes a transcript holds "Assistant: " too: each place it may end is tried
            return any(_found(user, users, whole_users) and _found(answer, answers, whole_answers)
                       for user, answer in turn_splits(content))
        if sides := _chunk_sides(content):
            user, answer = sides
            return len(user.strip()) + len(answer.strip()) >= SHORT and _found(user, users) and _found(answer, answers)
        return _found(content, users, whole_users) or _found(content, answers, whole_answers)


def without_echoes(found: Sequence[Sequence[str]], heard: Callable[[], Heard], limit: int) -> tuple[tuple[str, ...], ...]:
    """`found` (memories per scope, best first) without those the conversation holds, at most `limit` per scope.
    `heard` reads the conversation, called only if something was found."""
    if not any(found):
        return tuple(tuple(memories[:limit]) for memories in found)
    conversation = heard()
    return tuple(tuple([m for m in memories if not conversation.holds(m)][:limit]) for memories in found)
