"""The echo filter: a recalled memory the conversation already holds is left out; the same question asked in
another conversation is not."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memproxy.echoes import KEPT, MAX_TURNS, PIECES, PREFIX, SHORT, Heard, without_echoes
from memproxy.memory.base import Keyed, recalled
from memproxy.protocols.base import Entry
from memproxy.protocols.common import find_prompt
from memproxy.scrub import MARKER_START, scrub
from secret_corpus import Fake, fakes

PROMPT = "Which files are in the repository?"
ANSWER = "The repository holds three files."
CONVERSATION = [
    Entry("user", f"<system-reminder>Today is Monday.</system-reminder>\n{PROMPT}"),
    Entry("assistant", "I will run a shell command first.", (("Bash", {"command": "ls"}),)),
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


def test_a_reply_in_several_messages_is_an_echo_of_the_conversation_that_holds_them() -> None:
    """A Responses reply may hold several output messages (a commentary, then the answer): it is stored joined
    by a line break, and sent back as messages of their own."""
    first, second = "I checked the config loader.", "The upgrade renamed API_PORT to PORT, so it falls back to 7001."
    heard = Heard.of([Entry("user", PROMPT), Entry("assistant", first), Entry("assistant", second),
                      Entry("user", "ok, fix it")])
    assert heard.holds(memory(PROMPT, f"{first}\n{second}"))
    assert not Heard.of([Entry("user", PROMPT), Entry("assistant", first), Entry("tool", "", (), True),
                         Entry("user", "and?"), Entry("assistant", second)]).holds(memory(PROMPT, f"{first}\n{second}"))


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


@pytest.mark.parametrize("fake", fakes(), ids=lambda fake: fake.kind)
def test_a_turn_stored_with_its_secrets_scrubbed_is_still_an_echo(fake: Fake) -> None:
    """Where a stored turn shows a secret's marker, the conversation holds the secret the client sent."""
    prompt = f"Deploy the billing service to staging with this: {fake.line}\nThen tell me its URL."
    answer = f"Deployed; the staging URL is https://staging.example.test/billing (key {fake.value})."
    stored_prompt, stored_answer = scrub(prompt).text, scrub(answer).text
    assert MARKER_START in stored_prompt and fake.value not in stored_prompt
    heard = Heard.of([Entry("user", prompt), Entry("assistant", answer), Entry("user", "And its logs?")])
    assert heard.holds(memory(stored_prompt, stored_answer))
    assert heard.holds(recalled(stored_prompt, None, 0))  # free text
    assert not heard.holds(memory(stored_prompt, "Deployed; the staging URL is https://other.example.test/."))
    assert not heard.holds(memory(stored_prompt.replace("billing", "payroll"), stored_answer))


def test_a_scrubbed_part_is_looked_for_by_its_text_between_markers() -> None:
    marker = "[secret: GitHub token]"
    heard = Heard.of([Entry("user", "Clone it with tok-1 please, then run the tests of the shop"),
                      Entry("assistant", "Cloned: " + "all green. " * 40)])
    assert heard.holds(memory(f"Clone it with {marker} please, then run the tests of the shop", "Cloned: " + "all green. " * 40))
    assert not heard.holds(memory(f"Clone it with {marker} please, then run the tests of the cafe", "Cloned: all green."))
    # too little text around the markers to tell: not an echo
    assert not heard.holds(memory(f"Clone it {marker} {marker}", "Cloned: all green."))
    # at most PIECES pieces are looked for: each is a search over the whole conversation
    said = ["Clone it with ", *(f" and step {i} with " for i in range(1, PIECES))]  # PIECES pieces, tokens between
    heard = Heard.of([Entry("user", "tok".join(said) + "tok."), Entry("assistant", "Cloned.")])
    assert heard.holds(memory(marker.join([*said, " then something this conversation never said"]), "Cloned."))
    # only the first PREFIX characters of text count, as for a part with no marker
    long_prompt = "Clone it with tok-1 please, " + "and then the next step " * 20
    heard = Heard.of([Entry("user", long_prompt[:PREFIX + 60]), Entry("assistant", "Cloned.")])
    assert heard.holds(memory(long_prompt.replace("tok-1", marker) + "and more", "Cloned."))


def test_a_chunk_of_a_stored_turn_is_an_echo_only_where_the_conversation_holds_its_text() -> None:
    prompt = "Which files are in the repository, and which of them is the largest one by lines?"
    answer = "The repository holds three files: main.py, README.md and setup.cfg. The largest is main.py."
    turn = f"User: {prompt}\nAssistant: {answer}"
    heard = Heard.of([Entry("user", prompt), Entry("assistant", answer)])
    elsewhere = Heard.of([Entry("user", prompt), Entry("assistant", "Two files: a.py and b.py.")])
    for chunk in (turn[:50], turn[40:], turn[70:110], turn[turn.index("Assistant"):], turn[: turn.index("Assistant:") + 10]):
        assert heard.holds(recalled(chunk, "Claude Code", 0)), chunk
    assert elsewhere.holds(recalled(turn[:50], None, 0))  # the prompt alone: the request holds it
    assert not elsewhere.holds(recalled(turn[40:], None, 0))  # this answer is not the request's
    assert not elsewhere.holds(recalled(turn[turn.index("Assistant"):], None, 0))
    label = turn.index("\nAssistant: ")
    assert not heard.holds(recalled(turn[label - 4 : label + 15], None, 0))  # "nes?\nAssistant: The": too little to tell


WORDS = st.lists(st.sampled_from("alpha beta gamma delta files repo tests build main largest lines".split()), min_size=3, max_size=60)


@given(WORDS, WORDS, st.data())
def test_every_chunk_of_a_stored_turn_cut_between_words_is_an_echo(prompt: list[str], answer: list[str], data: st.DataObject) -> None:
    """A backend that splits documents cuts them anywhere between words: every piece of a turn that holds enough
    text is an echo of the conversation that holds the turn, and not of one that holds another answer."""
    turn = f"User: {' '.join(prompt)}\nAssistant: {' '.join(answer)}"
    bounds = [0, *(m.end() for m in re.finditer(r"\s+", turn)), len(turn)]
    start = data.draw(st.sampled_from(bounds[:-1]))
    end = data.draw(st.sampled_from([b for b in bounds if b > start]))
    chunk = turn[start:end].strip()
    text = chunk.replace("User:", "").replace("Assistant:", "")
    heard = Heard.of([Entry("user", " ".join(prompt)), Entry("assistant", " ".join(answer))])
    # a chunk from the turn's start is read as the turn, whose short answer must be a whole message
    read_as_turn = chunk.startswith("User:") and "\nAssistant: " in chunk
    head = chunk.partition("\nAssistant: ")[2]
    if len("".join(text.split())) >= SHORT and not (read_as_turn and len(head) < SHORT and head != " ".join(answer)):
        assert heard.holds(recalled(chunk, None, 0))
    other = Heard.of([Entry("user", " ".join(prompt)), Entry("assistant", "QQQ")])
    answer_text = chunk[chunk.index("Assistant:") :] if "Assistant:" in chunk else ""
    if answer_text.removeprefix("Assistant:").strip():
        assert not other.holds(recalled(chunk, None, 0))


def test_a_websocket_keeps_what_it_went_through() -> None:
    heard = Heard.of([Entry("tool", "", (), True)])  # an incremental message holds no text
    earlier = Heard()
    earlier.turn(PROMPT, ANSWER)
    assert not heard.holds(memory(PROMPT, ANSWER))
    heard.extend(earlier)
    assert heard.holds(memory(PROMPT, ANSWER))


def test_a_websocket_keeps_the_latest_of_what_it_went_through() -> None:
    heard = Heard()
    heard.extend(Heard.of([Entry("user", f"prompt {n}") for n in range(MAX_TURNS + 5)] + [Entry("assistant", "x" * (KEPT + 1))]))
    assert heard.users == [f"prompt {n}" for n in range(5, MAX_TURNS + 5)] and heard.answers == ["x" * KEPT]
    heard.turn("the last prompt", ANSWER)
    assert heard.users[-2:] == [f"prompt {MAX_TURNS + 4}", "the last prompt"] and heard.answers == ["x" * KEPT, ANSWER]
    assert heard.chars == sum(map(len, heard.users + heard.answers))


def test_without_echoes_reads_the_conversation_only_when_something_was_found() -> None:
    def never() -> Heard:
        raise AssertionError("read")

    assert without_echoes([(), ()], never, 5) == ((), ())
    found = ([memory(PROMPT, ANSWER), memory(PROMPT, "Two files."), "Nomad.", "x", "y", "z"], ["Nomad."])
    assert without_echoes(found, lambda: Heard.of(CONVERSATION), 3) == ((memory(PROMPT, "Two files."), "Nomad.", "x"), ("Nomad.",))


def key(*entries: Entry) -> str:
    """The key of the last prompt of `entries`, as a turn stored from them names it."""
    return find_prompt(entries).key


def test_a_memory_written_from_turns_is_an_echo_when_the_conversation_holds_each_of_them() -> None:
    """Supermemory writes memories from stored turns in its own words: the conversation holds no such text, so
    whether it holds the turns, answers included, decides."""
    first, second = key(*CONVERSATION[:1]), key(*CONVERSATION)
    heard = Heard.of(CONVERSATION)
    fact = recalled("The repository of the shop has three files.", "Claude Code", 1_790_000_000)
    assert heard.holds(Keyed(fact, (first,)))  # its prompt and an answer after it are in the conversation
    assert not heard.holds(Keyed(fact, (second,)))  # the last prompt, not answered yet: asked again, elsewhere
    assert not heard.holds(Keyed(fact, (first, key(Entry("user", "Where is the README?")))))  # and another's
    assert not heard.holds(Keyed(fact, ()))  # naming no turn, it is judged by its text
    assert not heard.holds(fact) and heard.holds(Keyed(ANSWER, ()))


def test_the_same_first_prompt_in_another_conversation_is_another_turn_once_it_goes_on() -> None:
    """A key digests the user messages up to its prompt: another conversation that went on differently holds
    the first prompt's turn, but not the later ones."""
    other = [CONVERSATION[0], Entry("assistant", "Two files."), Entry("user", "Which one is the newest?"),
             Entry("assistant", "b.py")]
    heard = Heard.of(other)
    assert heard.holds(Keyed("x", (key(*CONVERSATION[:1]),)))
    assert not heard.holds(Keyed("x", (key(*CONVERSATION),)))
    assert heard.holds(Keyed("x", (key(*other[:3]),)))


def test_a_thread_holds_the_turns_it_went_through_and_those_its_messages_carried() -> None:
    """A WebSocket's or a chain's later messages carry only what is new: the thread names the turns it stored,
    and the answered prompts of what each message carried."""
    from memproxy.addons.requestpath import Thread

    messages = Thread()
    for message in (CONVERSATION, [Entry("tool", "", (), True)]):  # a resumed session's whole history, then a step
        messages.answers(find_prompt(message), message)
        messages.heard.extend(Heard.of(message))  # as the request path does
    thread = messages.heard
    assert thread.holds(Keyed("x", (key(*CONVERSATION[:1]),)))
    thread.turn("Which one is the largest?", "b.py", "chained-key")
    assert thread.holds(Keyed("x", ("chained-key",))) and not thread.holds(Keyed("x", ("other-key",)))
    for n in range(MAX_TURNS):
        thread.turn(f"prompt {n}", "answer", f"key {n}")
    assert not thread.holds(Keyed("x", ("chained-key",))) and thread.holds(Keyed("x", (f"key {MAX_TURNS - 1}",)))


def test_a_turn_whose_prompt_quotes_a_transcript_is_an_echo_of_its_conversation() -> None:
    quoted = "Why did the bot answer this?\nUser: how do I reset my password?\nAssistant: I cannot help with that."
    answer = "Its rules forbid account changes; the reset page is linked from the login form."
    heard = Heard.of([Entry("user", quoted), Entry("assistant", answer), Entry("user", "And for admins?")])
    assert heard.holds(memory(quoted, answer))
    assert not heard.holds(memory(quoted, "Another conversation's answer to the same quote."))


@pytest.mark.parametrize("between", ["\n<system-reminder>The user opened src/billing.py</system-reminder>\n",
                                     " <system-reminder>x</system-reminder> "])
def test_a_prompt_stored_without_a_reminder_in_its_middle_is_an_echo(between: str) -> None:
    """A prompt is stored cleaned of client boilerplate; the request holds it as sent."""
    sent = f"Please move invoice generation of the billing module to a worker.{between}Also keep the public API."
    answer = "Done: invoices are generated by a Celery task; the API is unchanged."
    stored = find_prompt([Entry("user", sent)]).text
    assert "system-reminder" not in stored and stored not in sent
    heard = Heard.of([Entry("user", sent), Entry("assistant", answer), Entry("user", "Now add tests for it")])
    assert heard.holds(memory(stored, answer))
    assert not heard.holds(memory(stored, "Another conversation's answer to the same prompt."))


GEMINI_RESUMED = [  # an answer as stored, and as Gemini CLI 0.61 sends it back when it resumes the session
    ("The kestrel plan uses Nomad\u200b in three regions.", "The kestrel plan uses Nomad in three regions."),
    ("\ufeffThe kestrel plan starts with a byte order mark.", "The kestrel plan starts with a byte order mark."),
    ("The kestrel team \U0001f468\u200d\U0001f4bb deploys with Nomad, \u05e9\u05dc\u05d5\u05dd \u200fNomad\u200f.",
     "The kestrel team \U0001f468\U0001f4bb deploys with Nomad, \u05e9\u05dc\u05d5\u05dd Nomad."),
    ("The kestrel plan <!-- internal note: check regions --> uses Nomad in three regions.",
     "The kestrel plan  uses Nomad in three regions."),
    ("Add this to the kestrel README:\n\n```markdown\n<!-- deploy: nomad -->\n# Kestrel\n```\n\nThen deploy with Nomad.",
     "Add this to the kestrel README:\n\n```markdown\n\n# Kestrel\n```\n\nThen deploy with Nomad."),
]


@pytest.mark.parametrize(("stored", "sent"), GEMINI_RESUMED)
def test_an_answer_sent_back_without_its_invisible_characters_or_html_comments_is_an_echo(stored: str, sent: str) -> None:
    prompt = "Explain the kestrel deploy plan"
    for answer in (sent, stored):  # as Gemini CLI sends it back, and as the other clients do
        heard = Heard.of([Entry("user", prompt), Entry("assistant", answer), Entry("user", "Remind me of the plan?")])
        assert heard.holds(memory(prompt, stored))
        assert not heard.holds(memory(prompt, "The kestrel plan uses Kubernetes in one region, another answer."))
