"""The interface every wire-format adapter implements.

An adapter is stateless and works on already-parsed JSON. It never does I/O,
so it is safe to call from mitmproxy's event loop. Every method must tolerate
arbitrary JSON (wrong shapes included) without raising: on a shape it does not
understand it returns "" / leaves the body unchanged / returns False.

A request answers one user prompt: the last user message with text of its own. In a tool loop the
client sends the prompt once and then, request after request, the assistant's tool calls and their
results after it; `prompt` tells which prompt a request answers, and `Prompt.key` names it in its
conversation, the same for every step of the loop.
"""

from __future__ import annotations

import abc
from typing import Any, Literal, NamedTuple

QueryStrategy = Literal["last_user", "first_user", "all_user", "last_assistant"]
InjectStrategy = Literal["system", "user_prefix", "user_suffix", "dual"]
QUERY_STRATEGIES: tuple[str, ...] = ("last_user", "first_user", "all_user", "last_assistant")
INJECT_STRATEGIES: tuple[str, ...] = ("system", "user_prefix", "user_suffix", "dual")

# The injected block is wrapped in these tags so it can be recognised (and
# stripped from anything we capture) even if a client echoes it back.
MEMORY_OPEN = "<recalled-memories"
MEMORY_CLOSE = "</recalled-memories>"


class Entry(NamedTuple):
    """One message (or input item) of a conversation, as prompt detection and the echo filter read it."""

    role: str  # "user", "assistant", or "tool" for tool results in a message of their own
    text: str  # its text parts, joined by newlines, as the client sent them
    calls: tuple[tuple[Any, Any], ...] = ()  # each tool call's name and arguments, as sent (`common.trace` reads them)
    results: bool = False  # it holds tool results
    media: bool = False  # it holds an image, a document, a file or audio (MEDIA)


class Prompt(NamedTuple):
    """The user prompt a request answers."""

    text: str  # as `query(body, "last_user")` gives it; "" if the request holds none
    key: str  # digest of the conversation's user messages up to and including the prompt; "" without one
    calls: tuple[str, ...] = ()  # the prompt's trace: tools called after it, with the files they name (`common.trace`)
    follows: bool = False  # tool results come after the prompt (or, without one, anywhere): a tool loop's step
    conversation: str = ""  # digest of the conversation's first user message: the same for each of its prompts
    compacted: bool = False  # no prompt: the conversation goes on from a summary the client wrote of it (`continues`)
    wordless: bool = False  # no prompt: the last user message holds media and no text (an image alone) and asks anew


class ReplyAccumulator(abc.ABC):
    """Assembles the assistant's reply text from streamed events."""

    @abc.abstractmethod
    def feed(self, event: str | None, data: str) -> None:
        """Feed one SSE event (`event:` name or None, joined `data:` lines) or one
        WebSocket text message (event=None, data=the message). Never raises."""

    @abc.abstractmethod
    def text(self) -> str:
        """The reply text assembled so far (text parts only; tool calls skipped)."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """True once the terminal event of a turn was seen (e.g. message_stop,
        response.completed, [DONE], or Gemini's finishReason)."""

    def calls(self) -> tuple[str, ...]:
        """The tools the reply calls, as its stream names them (none by default), with the files they name where
        the stream gives a call whole (`common.trace`): a step that ends in a call the client never answers (the
        user stopped it, the client crashed) still names it in its memory."""
        return ()

    def reply_id(self) -> str:
        """The provider's id of the reply, where a later request may name it to continue (`Adapter.continues`)."""
        return ""


class Adapter(abc.ABC):
    """One wire format: detection, query extraction, injection, reply assembly, errors."""

    name: str  # "anthropic" | "openai_chat" | "openai_responses" | "gemini"

    @abc.abstractmethod
    def matches_path(self, method: str, path: str) -> bool:
        """Cheap check on method and path only (query string included in `path`).
        Must be False for auxiliary endpoints we never touch (count_tokens,
        models, embeddings...)."""

    @abc.abstractmethod
    def matches_body(self, body: Any) -> bool:
        """Shape check on the parsed JSON body (e.g. has a `messages` list)."""

    @abc.abstractmethod
    def model(self, path: str, body: Any) -> str | None:
        """The model the request asks for (Gemini: from the path)."""

    @abc.abstractmethod
    def is_streaming(self, path: str, body: Any) -> bool:
        """Whether the client asked for a streamed (SSE) response."""

    @abc.abstractmethod
    def query(self, body: Any, strategy: str) -> str:
        """The search query text for a query strategy. Text parts of block content
        count; tool results, tool calls and images are skipped; text inside
        <recalled-memories>…</recalled-memories> is removed; of a long message only
        the start and the end are read (common.SCAN_HEAD, common.SCAN_TAIL)."""

    @abc.abstractmethod
    def conversation(self, body: Any) -> list[Entry]:
        """The conversation's messages in order, system and developer messages left out."""

    @abc.abstractmethod
    def prompt(self, body: Any) -> Prompt:
        """The prompt the request answers: tool results are never one, and neither is a message whose text
        is only client boilerplate or injected memories."""

    @abc.abstractmethod
    def inject(self, body: Any, context: str, strategy: str) -> bool:
        """Insert `context` (already framed) into `body` in place, per injection
        strategy. Content at or before the last `cache_control` breakpoint stays
        byte-identical. Returns True if the body was changed."""

    @abc.abstractmethod
    def reply_from_json(self, body: Any) -> str:
        """The assistant's reply text from a non-streamed response body."""

    def calls_from_json(self, body: Any) -> tuple[str, ...]:
        """The tools a non-streamed response body calls, with the files they name (`common.trace`; none by default)."""
        return ()

    def reply_id_from_json(self, body: Any) -> str:
        """`ReplyAccumulator.reply_id` of a non-streamed response body."""
        return ""

    def client_session(self, body: Any) -> str:
        """The client's name for its session, where the body gives one, the same in each of its requests (Claude
        Code's `metadata.user_id`, Qwen Code's `prompt_cache_key`); "" for none. A name, never an instruction: it
        only tells which prompt a compacted conversation goes on answering (`Prompt.compacted`), and one session's
        memory of a prompt from another's (`capture.Turn.custom_id`)."""
        return ""

    def continues(self, body: Any) -> str | None:
        """Where the provider keeps the conversation and a request sends only what is new (OpenAI Responses'
        `previous_response_id` or `conversation`): the id of the earlier reply, or of the conversation, this
        request goes on with; "" if it starts a conversation. None where the provider keeps none (the default),
        or will not keep this one."""
        return None

    @abc.abstractmethod
    def accumulator(self) -> ReplyAccumulator:
        """A fresh accumulator for a streamed response of this format."""

    @abc.abstractmethod
    def error_body(self, status: int, message: str, error_type: str) -> dict:
        """An error body in this protocol's own error format."""
