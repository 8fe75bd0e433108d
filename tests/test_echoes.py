"""The echo filter: a recalled memory the conversation already holds is left out; the same question asked in
another conversation is not."""

from __future__ import annotations

from memproxy.echoes import Heard, without_echoes
from memproxy.memory.base import recalled
from memproxy.protocols.base import Entry

PROMPT = "Which files are in the repository?"
ANSWER = "The repository holds three files."
CONVERSATION = [
    Entry("user", f"<system-reminder>Today is Monday.</system-reminder>\n{PROMPT}"),
    Entry("assistant", "I will run a shell command first.", ("Bash",)),
    Entry("tool", "", (), True),
    Entry("assistant", f"{ANSWER}\n\nAnything else?"),
    Entry("user", "Which one is   the largest?"),
]


def memory(user: str, answer: str) -> str:
    return recalled(f"User: {user}\nAssistant: {answer}", "Claude Code", 1_790_000_000)


def test_the_conversations_own_turns_are_echoes() -> None:
    heard = Heard.of(CONVERSATION)
    assert heard.holds(memory(PROMPT, "I will run a shell command first."))  # its own step, stored a moment ago
    assert heard.holds(memory(PROMPT, f"{ANSWER}\n\nAnything else?"))
    assert heard.holds(memory("Which one is   the largest?", ANSWER))  # a later prompt of its own


def test_a_short_part_must_be_a_whole_message() -> None:
    heard = Heard.of([Entry("user", "Deploy it"), Entry("assistant", "ok"), Entry("user", "ok, and the docs?"),
                      Entry("assistant", "Looking at the docs: they are ok")])
    assert heard.holds(memory("Deploy it", "ok"))
    assert not heard.holds(memory("ok", "ok"))  # "ok" is no user message of its own, only a part of one
    assert not heard.holds(memory("Deploy", "ok"))


def test_the_same_question_elsewhere_is_no_echo() -> None:
    heard = Heard.of(CONVERSATION)
    assert not heard.holds(memory(PROMPT, "Two files: a.py and b.py."))  # another conversation's answer
    assert not heard.holds(memory("Where is the README?", ANSWER))
    assert not heard.holds(memory("Which", ANSWER.split()[0] + "s"))


def test_free_text_is_an_echo_only_whole() -> None:
    heard = Heard.of(CONVERSATION)
    assert heard.holds(recalled(ANSWER, None, 0))
    assert not heard.holds("We deploy with Nomad.")
    assert not heard.holds("   ")


def test_a_long_stored_text_is_compared_by_its_start() -> None:
    """Stored text is clipped (and scrubbed further on): its start decides."""
    long_answer = "word " * 500 + "the secret sk-123"
    heard = Heard.of([Entry("user", PROMPT), Entry("assistant", long_answer)])
    assert heard.holds(memory(PROMPT, long_answer[:1000] + "…"))


def test_a_websocket_keeps_what_it_went_through() -> None:
    heard = Heard.of([Entry("tool", "", (), True)])  # an incremental message holds no text
    earlier = Heard()
    earlier.turn(PROMPT, ANSWER)
    assert not heard.holds(memory(PROMPT, ANSWER))
    heard.extend(earlier)
    assert heard.holds(memory(PROMPT, ANSWER))


def test_without_echoes_reads_the_conversation_only_when_something_was_found() -> None:
    def never() -> Heard:
        raise AssertionError("read")

    assert without_echoes([(), ()], never, 5) == ((), ())
    found = ([memory(PROMPT, ANSWER), memory(PROMPT, "Two files."), "Nomad.", "x", "y", "z"], ["Nomad."])
    assert without_echoes(found, lambda: Heard.of(CONVERSATION), 3) == ((memory(PROMPT, "Two files."), "Nomad.", "x"), ("Nomad.",))
