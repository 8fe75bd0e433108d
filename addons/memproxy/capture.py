"""Capture: the turn made from a finished exchange, one user prompt and the assistant's reply in one scope.

A turn is clipped as it is made, with a margin so that a secret the limit cuts is found whole; `scrubbed()`
makes it ready to store: every secret replaced, then clipped to the limit. Its custom id names the prompt in
its conversation (the protocol adapter's `Prompt.key`), not the reply: every step of a tool loop, every retry
and every replay of one prompt has the same id, and so one memory, which the latest step updates. The outbox
(memproxy.outbox) takes it to the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .protocols import strip_memory_blocks
from .scrub import scrub

MAX_USER_CHARS = 4000
MAX_REPLY_CHARS = 8000
# Characters kept past a clip limit until the turn is scrubbed, so that a secret the limit cuts is found whole.
SCRUB_MARGIN = 256


def _clip(text: str, limit: int) -> str:
    text = text.encode("utf-8", "replace").decode().strip()  # a lone surrogate (JSON's \ud800) cannot be stored
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_stored(text: str, limit: int) -> str:
    """`text` as a turn's memory holds it (`Turn.make`, then `Turn.scrubbed`), clipped to `limit`. CPU work: call
    it off the event loop."""
    return _clip(scrub(_clip(strip_memory_blocks(text), limit + SCRUB_MARGIN)).text, limit)


def scrubbed_trace(metadata: dict[str, Any]) -> tuple[dict[str, Any], Counter[str]]:
    """`metadata` with the steps of its trace (`calls`) scrubbed, for the files they name are the client's text
    too, and how many secrets of each kind were replaced. CPU work: keep it off the event loop."""
    calls = metadata.get("calls")
    if isinstance(calls, str):  # as Supermemory keeps it: JSON text
        scrubbed = scrub(calls)
        return {**metadata, "calls": scrubbed.text}, scrubbed.found
    if not isinstance(calls, list):
        return metadata, Counter()
    steps = [scrub(step) for step in calls if isinstance(step, str)]
    found = sum((step.found for step in steps), Counter())
    return {**metadata, "calls": [step.text for step in steps]}, found


@dataclass(frozen=True, slots=True)
class Turn:
    """One user prompt and the assistant's reply, in one scope; `key` names the prompt in its conversation."""

    scope: str
    user: str
    reply: str
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str = ""

    @classmethod
    def make(cls, scope: str, user: str, reply: str, metadata: dict[str, Any], key: str = "") -> Turn | None:
        """A turn to submit, or None if there is nothing worth remembering. `scrubbed()` makes it ready to store."""
        user = _clip(strip_memory_blocks(user), MAX_USER_CHARS + SCRUB_MARGIN)
        reply = _clip(strip_memory_blocks(reply), MAX_REPLY_CHARS + SCRUB_MARGIN)
        if not user or not reply:
            return None
        return cls(scope, user, reply, metadata, key)

    def scrubbed(self) -> tuple[Turn, Counter[str]]:
        """This turn as it is stored, every secret replaced by `[secret: <kind>]` and then clipped, and how many
        of each kind were replaced. CPU work: call it off the event loop. The same turn always gives the same
        result, and so the same custom id."""
        user, reply = scrub(self.user), scrub(self.reply)
        metadata, in_trace = scrubbed_trace(self.metadata)
        turn = dataclasses.replace(self, user=_clip(user.text, MAX_USER_CHARS), reply=_clip(reply.text, MAX_REPLY_CHARS),
                                   metadata=metadata)
        return (self if turn == self else turn), user.found + reply.found + in_trace

    @property
    def content(self) -> str:
        return f"User: {self.user}\nAssistant: {self.reply}"

    @property
    def custom_id(self) -> str:
        """Stable per (scope, prompt): the steps, retries and replays of one prompt are one memory. A turn
        without a key (made by hand) is named by its text."""
        parts = (self.scope, self.key) if self.key else (self.scope, self.user, self.reply)
        digest = hashlib.sha256("\0".join(parts).encode())
        return "turn-" + digest.hexdigest()[:32]
