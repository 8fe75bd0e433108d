"""Capture: the turn made from a finished exchange, one user prompt and the assistant's reply in one scope.

A turn is clipped as it is made, with a margin so that a secret the limit cuts is found whole (SCRUB_MARGIN, and
so is each step of its trace); `scrubbed()` makes it ready to store: every secret found in any of its parts
replaced in all of them, then clipped to the limit. Every string of its metadata is made storable as it is made.
Its custom id names the prompt in its conversation (the protocol adapter's `Prompt.key`), not the reply: every
step of a tool loop, every retry and every replay of one prompt has the same id, and so one memory, which the
latest step updates. The outbox (memproxy.outbox) takes it to the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .protocols import strip_memory_blocks
from .protocols.common import MAX_CALL_CHARS, SCRUB_MARGIN
from .scrub import Scrubbed, scrub_together

MAX_USER_CHARS = 4000
MAX_REPLY_CHARS = 8000


def _valid(text: str) -> str:
    """`text` with each lone surrogate (JSON's \\ud800, a header's non-UTF-8 byte) replaced: it cannot be stored."""
    return text.encode("utf-8", "replace").decode()


def _valid_values(value: Any) -> Any:
    """A turn's metadata, or one of its values, with every string in it `_valid`."""
    if isinstance(value, str):
        return _valid(value)
    if isinstance(value, dict):
        return {_valid_values(k): _valid_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map(_valid_values, value))
    return value


def _clip(text: str, limit: int) -> str:
    text = _valid(text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_stored(text: str, limit: int) -> str:
    """`text` as a turn's memory holds it (`Turn.make`, then `Turn.scrubbed`), clipped to `limit`. CPU work: call
    it off the event loop."""
    return stored_together([(text, limit)])[0]


def stored_together(parts: Sequence[tuple[str, int]]) -> list[str]:
    """Each (text, limit) of `parts` as `as_stored` gives it, the texts scrubbed together as the parts of one turn
    (`scrub_together`). CPU work: call it off the event loop."""
    texts = [_clip(strip_memory_blocks(text), limit + SCRUB_MARGIN) for text, limit in parts]
    return [_clip(done.text, limit) for done, (_, limit) in zip(scrub_together(texts), parts)]


def scrubbed_trace(metadata: dict[str, Any]) -> tuple[dict[str, Any], Counter[str]]:
    """`metadata` with the steps of its trace (`calls`) scrubbed (`scrubbed_with_trace`), and how many secrets of
    each kind were replaced. CPU work: keep it off the event loop."""
    _, metadata, found = scrubbed_with_trace((), metadata)
    return metadata, found


def scrubbed_with_trace(texts: Sequence[str], metadata: dict[str, Any]) -> tuple[list[Scrubbed], dict[str, Any],
                                                                                 Counter[str]]:
    """`texts` and `metadata` with the steps of its trace (`calls`), for the files they name are the client's text
    too, scrubbed together (`scrub_together`), and how many secrets of each kind were replaced in all. A step
    keeps the margin scrubbing needs until here (`unique_calls`), and is clipped to MAX_CALL_CHARS now."""
    calls = metadata.get("calls")
    steps = [calls] if isinstance(calls, str) else [s for s in calls if isinstance(s, str)] if isinstance(calls, list) else []
    done = scrub_together([*texts, *steps])
    found = sum((part.found for part in done), Counter[str]())
    if isinstance(calls, str):  # as Supermemory keeps it: JSON text
        metadata = {**metadata, "calls": done[len(texts)].text}
    elif isinstance(calls, list):  # each once, as `unique_calls` keeps them, once clipped
        metadata = {**metadata, "calls": list(dict.fromkeys(_clip(step.text, MAX_CALL_CHARS) for step in done[len(texts):]))}
    return done[: len(texts)], metadata, found


@dataclass(frozen=True, slots=True)
class Turn:
    """One user prompt and the assistant's reply, in one scope; `key` names the prompt in its conversation, and
    `session` the client's session that asked it ("" where the client names none)."""

    scope: str
    user: str
    reply: str
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    session: str = ""

    @classmethod
    def make(cls, scope: str, user: str, reply: str, metadata: dict[str, Any], key: str = "", session: str = ""
             ) -> Turn | None:
        """A turn to submit, or None if there is nothing worth remembering. `scrubbed()` makes it ready to store."""
        user = _clip(strip_memory_blocks(user), MAX_USER_CHARS + SCRUB_MARGIN)
        reply = _clip(strip_memory_blocks(reply), MAX_REPLY_CHARS + SCRUB_MARGIN)
        if not user or not reply:
            return None
        return cls(scope, user, reply, _valid_values(metadata), key, session)

    def scrubbed(self) -> tuple[Turn, Counter[str]]:
        """This turn as it is stored, every secret replaced by `[secret: <kind>]` and then clipped, and how many
        of each kind were replaced. Its parts are scrubbed as one (`scrubbed_with_trace`): a secret found in one
        is replaced where another repeats it. CPU work: call it off the event loop. The same turn always gives the
        same result, and so the same custom id."""
        (user, reply), metadata, found = scrubbed_with_trace((self.user, self.reply), self.metadata)
        turn = dataclasses.replace(self, user=_clip(user.text, MAX_USER_CHARS), reply=_clip(reply.text, MAX_REPLY_CHARS),
                                   metadata=metadata)
        return (self if turn == self else turn), found

    @property
    def content(self) -> str:
        return f"User: {self.user}\nAssistant: {self.reply}"

    @property
    def custom_id(self) -> str:
        """Stable per (scope, prompt, session): the steps, retries and replays of one prompt are one memory, and the
        same prompt asked in another session of the client another. A turn without a key (made by hand) is named
        by its text."""
        if not self.key:
            parts: tuple[str, ...] = (self.scope, self.user, self.reply)
        else:
            parts = (self.scope, self.key, self.session) if self.session else (self.scope, self.key)
        digest = hashlib.sha256("\0".join(parts).encode())
        return "turn-" + digest.hexdigest()[:32]
