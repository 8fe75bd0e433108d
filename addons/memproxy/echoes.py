"""No echoes: a recalled memory whose content the request already holds is not injected.

A conversation's own earlier prompts and answers come back in each of its requests, and were stored as memories
(a minute ago, or by an earlier session the client resumed): recalled, they would only repeat the conversation
to itself. A turn's memory (`User: … Assistant: …`, capture.Turn.content) is an echo when its user part is one of
the request's user texts and its assistant part one of its assistant texts; the same question asked in another
conversation, whose answer the request does not hold, is still recalled. A memory of free text is an echo when
the request holds all of it.

Texts are compared whitespace-normalised, by their first PREFIX characters: stored text is clipped and scrubbed,
so it may end or differ further on. The request's texts are read only when something was found, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .memory.base import unlabelled
from .protocols.base import Entry
from .protocols.common import clean_query

PREFIX = 200  # characters of a text compared, once whitespace-normalised
USER, ASSISTANT = "User: ", "\nAssistant: "  # capture.Turn.content


def normalised(text: str) -> str:
    """The start of `text` as it is compared: whitespace runs as one space, at most PREFIX characters."""
    return " ".join(text[: PREFIX * 4].split())[:PREFIX]


class Heard:
    """The texts a conversation holds: its user prompts and its assistant answers, normalised."""

    __slots__ = ("users", "answers", "_whole", "_texts")

    def __init__(self, users: Iterable[str] = (), answers: Iterable[str] = ()) -> None:
        self.users = {normalised(t) for t in users}
        self.answers = {normalised(t) for t in answers}
        self._texts: list[str] = []  # every text as sent, for free-text memories
        self._whole: str | None = None

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> Heard:
        heard = cls()
        heard.add(entries)
        return heard

    def add(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if not entry.text:
                continue
            if entry.role == "user":
                self.users.add(normalised(clean_query(entry.text)))
            elif entry.role == "assistant":
                self.answers.add(normalised(entry.text))
            self._texts.append(entry.text)
        self._whole = None

    def extend(self, other: Heard) -> None:
        self.users |= other.users
        self.answers |= other.answers
        self._texts += other._texts
        self._whole = None

    def turn(self, user: str, answer: str) -> None:
        """A prompt and its answer this conversation went through (one the request may no longer carry)."""
        self.users.add(normalised(user))
        self.answers.add(normalised(answer))
        self._texts += (user, answer)
        self._whole = None

    def holds(self, memory: str) -> bool:
        """Whether the recalled `memory` (labelled as recall gives it) is already in this conversation."""
        content = unlabelled(memory)
        if content.startswith(USER) and (at := content.find(ASSISTANT)) >= 0:
            user, answer = content[len(USER) : at], content[at + len(ASSISTANT) :]
            return normalised(user) in self.users and normalised(answer) in self.answers
        text = " ".join(content.split())
        if not text:
            return False
        if self._whole is None:
            self._whole = "\n".join(" ".join(t.split()) for t in self._texts)
        return text in self._whole


def without_echoes(found: Sequence[Sequence[str]], heard: Callable[[], Heard], limit: int) -> tuple[tuple[str, ...], ...]:
    """`found` (memories per scope, best first) without those the conversation holds, at most `limit` per scope.
    `heard` reads the conversation, called only if something was found."""
    if not any(found):
        return tuple(tuple(memories[:limit]) for memories in found)
    conversation = heard()
    return tuple(tuple([m for m in memories if not conversation.holds(m)][:limit]) for memories in found)
