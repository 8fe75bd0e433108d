"""Secret scrubbing: a corpus of fake keys of every common kind, look-alikes that must stay, the turn and the
outbox that scrub before anything is written, and the stores' rewrite for `memproxy memories scrub`."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from memproxy import capture, scrub
from memproxy.capture import MAX_USER_CHARS, Turn
from memproxy.memory.base import Memory
from memproxy.memory.local import LocalStore
from memproxy.memory.supermemory import SupermemoryStore
from memproxy.outbox import Outbox, scrub_outbox, table
from memproxy.protocols.base import Entry
from memproxy.protocols.common import MAX_CALL_CHARS, find_prompt
from memproxy.scrub import marker
from secret_corpus import Maker, anthropic_key, aws_key_id, aws_secret, fakes, github_token, look_alikes, openssh_key
from test_outbox import FAST, ScriptedStore

FAKES = fakes()
LOOK_ALIKES = look_alikes()


# -- the corpus ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fake", FAKES, ids=lambda f: f"{f.kind}:{f.value[:12]}")
def test_every_fake_secret_is_replaced_by_its_kind(fake):
    result = scrub.scrub(fake.line)
    assert fake.value not in result.text
    assert marker(fake.kind) in result.text, result.text
    assert result.found[fake.kind] == 1 and set(result.found) <= {fake.kind, "AWS access key"}, result.found
    before, _, after = fake.context.format("\0").partition("\0")  # the words around the secret stay
    assert result.text.startswith(scrub.scrub(before).text) and result.text.endswith(scrub.scrub(after).text)


@pytest.mark.parametrize("fake", FAKES, ids=lambda f: f"{f.kind}:{f.value[:12]}")
def test_no_piece_of_a_fake_secret_is_left(fake):
    """Not even a run of its characters: a partial match would leave the rest of the key behind."""
    text = scrub.scrub(f"first {fake.line}\nthen again: {fake.value}.").text
    pieces = [piece for piece in fake.value.replace("\\n", "\n").split() if len(piece) >= 12]
    assert not [piece for piece in pieces if piece in text and "BEGIN" not in piece and "END" not in piece], text


@pytest.mark.parametrize("text", LOOK_ALIKES, ids=lambda t: t[:30])
def test_look_alikes_are_left_alone(text):
    result = scrub.scrub(text)
    assert result.text == text and not result.found, result.found


def test_look_alikes_stay_in_a_text_with_secrets():
    """A text of many look-alikes and one secret: only the secret goes."""
    secret = FAKES[0]
    text = "\n".join([*LOOK_ALIKES, secret.line, *LOOK_ALIKES])
    result = scrub.scrub(text)
    assert result.found == Counter({secret.kind: 1})
    assert result.text == text.replace(secret.value, marker(secret.kind))


def test_all_fakes_in_one_text():
    text = "\n\n".join(f.line for f in FAKES)
    result = scrub.scrub(text)
    assert not [f.kind for f in FAKES if f.value in result.text]
    assert sum(result.found.values()) >= len(FAKES)


def test_scrubbing_twice_changes_nothing_more():
    once = scrub.scrub("\n".join(f.line for f in FAKES)).text
    assert scrub.scrub(once).text == once and not scrub.scrub(once).found


def test_the_name_of_an_assignment_stays():
    m = Maker()
    secret = aws_secret(m)
    result = scrub.scrub(f"aws_secret_access_key = {secret}\nregion = eu-west-1")
    assert result.text == "aws_secret_access_key = [secret: AWS secret access key]\nregion = eu-west-1"


def test_a_secret_is_replaced_wherever_the_text_repeats_it():
    m = Maker()
    password = m.chars(16)
    result = scrub.scrub(f"DATABASE_URL=postgres://app:{password}@db/app\nthe password is {password}; rotate it")
    assert result.text == ("DATABASE_URL=postgres://app:[secret: password in URL]@db/app\n"
                           "the password is [secret: password in URL]; rotate it")


def test_a_secret_that_could_be_a_word_is_not_hunted_elsewhere():
    text = "see postgres://app:password@db/app and reset the password"
    assert scrub.scrub(text).text == "see postgres://app:[secret: password in URL]@db/app and reset the password"


def test_a_secret_found_in_one_text_is_replaced_in_the_others_scrubbed_with_it():
    m = Maker()
    password = m.chars(16)
    url, said, word = scrub.scrub_together([f"postgres://app:{password}@db/app", f"the password is {password}",
                                            "see postgres://app:password@db/app"])
    assert said.text == "the password is [secret: password in URL]" and said.found == Counter({"password in URL": 1})
    assert url.text == "postgres://app:[secret: password in URL]@db/app"
    assert scrub.scrub_together(["see postgres://app:password@db/app", "reset the password"])[1].text == (
        "reset the password")  # one that could be a word is not hunted in the others either


def test_a_private_key_goes_as_one_block():
    key = openssh_key(Maker())
    result = scrub.scrub(f"before\n{key}\nafter")
    assert result.text == "before\n[secret: private key]\nafter" and result.found == Counter({"private key": 1})


def test_a_match_inside_a_longer_token_is_left_alone():
    token = github_token(Maker())
    assert scrub.scrub(f"x{token}y").found == Counter()
    assert scrub.scrub(f"({token})").found == Counter({"GitHub token": 1})


def test_empty_and_plain_text():
    assert scrub.scrub("") == scrub.Scrubbed("")
    assert scrub.scrub("nothing to see").text == "nothing to see"


def test_the_library_keyword_detector_is_left_out_for_a_reason():
    """detect-secrets' KeywordDetector takes ordinary code for a secret: scrub does not run it."""
    from detect_secrets.plugins.keyword import KeywordDetector

    code = 'token_type = "bearer"'
    assert list(KeywordDetector().analyze_string(code))
    assert scrub.scrub(code).text == code


def test_no_plugin_ever_calls_its_service(monkeypatch: pytest.MonkeyPatch):
    """detect-secrets' plugins can verify a key with its service: scrub must never send a secret anywhere."""
    import requests

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a secret would have left the machine")

    monkeypatch.setattr(requests.Session, "request", no_network)
    result = scrub.scrub("\n".join(f.line for f in FAKES))
    assert sum(result.found.values()) >= len(FAKES)


def test_importing_scrub_does_not_import_detect_secrets():
    code = "import memproxy.capture, memproxy.outbox, memproxy.scrub, sys; print('detect_secrets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- turns ----------------------------------------------------------------------------------------


def secret_turn(scope: str = "claude-code:repo") -> tuple[Turn, list[str]]:
    m = Maker(7)
    secrets = [anthropic_key(m), aws_key_id(m), aws_secret(m), github_token(m), openssh_key(m)]
    user = f"Deploy with {secrets[0]}; AWS {secrets[1]} {secrets[2]}\n{secrets[4]}"
    return Turn(scope, user, f"Stored. I used the token {secrets[3]}.", {"client": "test"}), secrets


def test_a_scrubbed_turn_holds_markers_and_a_stable_id():
    turn, secrets = secret_turn()
    scrubbed, found = turn.scrubbed()
    assert not [s for s in secrets if s in scrubbed.content]
    assert found == Counter({"Anthropic API key": 1, "AWS access key": 1, "AWS secret access key": 1,
                             "GitHub token": 1, "private key": 1})
    again, _ = Turn(turn.scope, turn.user, turn.reply, dict(turn.metadata)).scrubbed()
    assert again.custom_id == scrubbed.custom_id != turn.custom_id


def test_a_turn_without_secrets_is_unchanged():
    turn = Turn("s", "How do I run the tests?", "make test", {})
    assert turn.scrubbed() == (turn, Counter())
    traced = Turn("s", "How do I run the tests?", "make test", {"calls": ["Read Makefile", "Bash"]})
    assert traced.scrubbed() == (traced, Counter())


def test_a_secret_in_the_files_a_turns_trace_names_is_scrubbed_too():
    key = github_token(Maker(3))
    turn = Turn("s", "Clone it", "Cloned.", {"tool": "Codex", "calls": ["Bash", f"Read /tmp/{key}/README.md", 7]})
    scrubbed, found = turn.scrubbed()
    assert scrubbed.metadata == {"tool": "Codex", "calls": ["Bash", "Read /tmp/[secret: GitHub token]/README.md"]}
    assert found == Counter({"GitHub token": 1}) and turn.metadata["calls"][1].endswith(f"{key}/README.md")


def test_a_secret_cut_by_the_clip_limit_is_still_found():
    key = anthropic_key(Maker())
    user = "x " * ((MAX_USER_CHARS - 20) // 2) + key + " tail"
    turn = Turn.make("s", user, "ok", {})
    assert turn is not None and key in turn.user  # kept whole until scrubbed
    scrubbed, found = turn.scrubbed()
    assert found == Counter({"Anthropic API key": 1})
    assert len(scrubbed.user) <= MAX_USER_CHARS and key[:16] not in scrubbed.user


def test_a_secret_found_in_one_part_of_a_turn_is_replaced_in_all():
    password = "Tr0ub4dor99x"  # found by its context (a URL) in the prompt alone
    turn = Turn.make("s", f"Connect to postgres://admin:{password}@db.internal/app and list the tables.",
                     f"Connected as admin (password {password}). Tables: users.", {"calls": [f"Bash psql -W {password}"]})
    assert turn is not None
    scrubbed, found = turn.scrubbed()
    assert scrubbed.reply == "Connected as admin (password [secret: password in URL]). Tables: users."
    assert scrubbed.metadata == {"calls": ["Bash psql -W [secret: password in URL]"]}
    assert password not in scrubbed.content and found == Counter({"password in URL": 3})


def test_a_secret_cut_by_a_steps_clip_limit_is_still_found():
    token = github_token(Maker(5))
    cut = "/clone?token="
    path = "/srv/" + "d" * (MAX_CALL_CHARS - len("Read /srv/" + cut) - 17) + cut + token  # it straddles the limit
    entries = [Entry("user", "Clone it"), Entry("assistant", "", (("Read", {"file_path": path}),)), Entry("user", "", (), True)]
    prompt = find_prompt(entries)
    turn = Turn.make("s", prompt.text, "Cloned.", {"calls": list(prompt.calls)}, prompt.key)
    assert turn is not None
    scrubbed, found = turn.scrubbed()
    [step] = scrubbed.metadata["calls"]
    assert token[:8] not in step and len(step) <= MAX_CALL_CHARS
    assert found == Counter({"GitHub token": 1})


def test_every_string_of_a_turns_metadata_can_be_stored():
    metadata = {"client": "Caf\udce9Bot/1.0", "model": "m\ud800", "project": "shop", "tool": "T\udfff",
                "calls": ["Read /tmp/\ud800x", "Bash"], "layers": ("a\ud800",), "i": 7}  # a header's bad byte, JSON's \ud800
    turn = Turn.make("s", "Which port?", "7443.", metadata)
    assert turn is not None
    assert turn.metadata == {"client": "Caf?Bot/1.0", "model": "m?", "project": "shop", "tool": "T?",
                             "calls": ["Read /tmp/?x", "Bash"], "layers": ("a?",), "i": 7}
    json.dumps(turn.scrubbed()[0].metadata, ensure_ascii=False).encode()  # as the outbox writes it


# -- the outbox -----------------------------------------------------------------------------------


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[tuple[Outbox, ScriptedStore]]:
    store = ScriptedStore()
    box = Outbox(tmp_path / "outbox.db", store, **FAST)
    await box.start()
    yield box, store
    await box.close()


def files_holding(directory: Path, secrets: list[str]) -> dict[str, list[int]]:
    """For each file under `directory`, which of `secrets` (by index) its bytes hold."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if hits := [i for i, s in enumerate(secrets) if s.encode() in data]:
                found[path.name] = hits
    return found


async def test_the_outbox_writes_and_sends_only_scrubbed_turns(outbox, tmp_path: Path):
    box, store = outbox
    turn, secrets = secret_turn()
    box.submit(turn)
    assert await box.flush(10)
    [(scope, content, custom_id, _)] = store.received
    assert custom_id == turn.scrubbed()[0].custom_id and "[secret: private key]" in content
    assert not [s for s in secrets if s in content]
    assert files_holding(tmp_path, secrets) == {}


async def test_an_unwritable_outbox_holds_only_scrubbed_turns(outbox, monkeypatch: pytest.MonkeyPatch):
    box, store = outbox

    def disk_full(db: sqlite3.Connection, turn: Turn, now: float) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Outbox, "_insert", staticmethod(disk_full))
    store.fail = OSError("backend down")  # the turn stays in memory, retried
    turn, secrets = secret_turn()
    box.submit(turn)
    while box.stats["disk_errors"] < 1:
        await asyncio.sleep(0.01)
    held = list(box._held.rows.values())
    assert len(held) == 1 and held[0].custom_id == turn.scrubbed()[0].custom_id
    assert not [s for s in secrets if s in held[0].content]
    store.fail = None
    assert await box.flush(10)
    assert not [s for s in secrets for _, content, _, _ in store.received if s in content]


async def test_a_turn_that_cannot_be_scrubbed_is_not_kept(outbox, monkeypatch, caplog, tmp_path: Path):
    box, store = outbox

    def broken(texts: list[str]) -> Any:
        raise RuntimeError("detector failed")

    monkeypatch.setattr(capture, "scrub_together", broken)
    turn, secrets = secret_turn()
    with caplog.at_level(logging.WARNING, logger="memproxy.outbox"):
        box.submit(turn)
        assert await box.flush(10)
    assert store.received == [] and box.pending == 0
    assert "a turn was not stored: looking for secrets in it failed (RuntimeError)" in caplog.text
    assert files_holding(tmp_path, secrets) == {}


def test_scrub_outbox_cleans_pending_turns_and_dead_letters(tmp_path: Path):
    path = tmp_path / "outbox.db"
    turn, secrets = secret_turn()
    with sqlite3.connect(path) as db:
        db.executescript(table.SCHEMA)
        table.enqueue(db, "turn-1", turn.scope, turn.content, {}, 1.0)
        table.enqueue(db, "turn-2", turn.scope, "User: hi\nAssistant: hello", {}, 2.0)
        table.enqueue(db, "turn-4", turn.scope, "User: read it\nAssistant: done", {"calls": [f"Read /{secrets[3]}"]}, 3.0)
        db.execute(table.BURY, ("turn-3", turn.scope, turn.content, "{}", 1.0, 400, f"rejected {secrets[3]}", 1, 2.0))
    assert files_holding(tmp_path, secrets)

    found, turns = scrub_outbox(path, dry_run=True)
    assert turns == 3 and found["GitHub token"] == 4 and found["private key"] == 2
    assert files_holding(tmp_path, secrets)  # a dry run changes nothing

    assert scrub_outbox(path) == (found, turns)
    assert files_holding(tmp_path, secrets) == {}
    assert scrub_outbox(path) == (Counter(), 0)
    letters = table.list_dead_letters(path)
    assert "[secret: GitHub token]" in letters[0]["error"] and "[secret: private key]" in letters[0]["content"]


def test_scrub_outbox_of_a_missing_file(tmp_path: Path):
    assert scrub_outbox(tmp_path / "none.db") == (Counter(), 0)
    assert not (tmp_path / "none.db").exists()


# -- the local store: rewrite and compact -----------------------------------------------------------


async def test_local_rewrite_replaces_the_text_and_its_index(tmp_path: Path):
    store = LocalStore(tmp_path / "memories.db")
    turn, secrets = secret_turn()
    try:
        await store.add("s", turn.content + " zebracorn")
        await store.add("t", "other scope " + secrets[3])
        [memory] = [m async for m in store.every(["s"])]
        assert len([m async for m in store.every()]) == 2
        assert await store.rewrite(memory, scrub.scrub(memory.content).text)
        [hit] = await store.search("s", "zebracorn")
        assert hit.id == memory.id and "[secret: AWS access key]" in hit.content
        assert hit.metadata == memory.metadata and hit.created_at == memory.created_at
        assert await store.search("s", secrets[3].split("_")[1]) == []  # the token's word left the index
        assert await store.compact()
    finally:
        await store.close()
    # Only the other scope's memory still holds its token; no old page or WAL frame holds the rest.
    assert files_holding(tmp_path, secrets) == {"memories.db": [3]}


async def test_supermemory_every_and_rewrite(supermemory):
    store = SupermemoryStore(supermemory.api_key, supermemory.url)
    turn, secrets = secret_turn()
    try:
        ids = [await store.add(scope, content, custom_id=f"t{n}", metadata={"n": n})
               for n, (scope, content) in enumerate([("a", turn.content), ("b", "plain"), ("a", "more")])]
        assert {m.id for m in [m async for m in store.every(["a"], page=1)]} == {ids[0], ids[2]}
        everything = [m async for m in store.every(page=2)]
        assert {m.id for m in everything} == set(ids) and {m.scope for m in everything} == {"a", "b"}
        [memory] = [m for m in everything if m.id == ids[0]]
        assert await store.rewrite(memory, scrub.scrub(memory.content).text)
        assert not await store.rewrite(Memory("doc-none", "a", ""), "x")
    finally:
        await store.close()
    doc = supermemory.documents[ids[0]]
    assert not [s for s in secrets if s in doc.content] and doc.metadata == {"n": 0} and doc.custom_id
