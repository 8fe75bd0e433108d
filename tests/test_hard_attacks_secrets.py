"""Hard test: secrets typed into a prompt. A prompt holding an Anthropic key, an AWS access key id with its
secret access key, a GitHub token and an OpenSSH private key goes through a real mitmdump; none of their
bytes reaches the store, the outbox or their WAL files, and the next related request is injected with
`[secret: <kind>]` where they were. `memproxy memories scrub` cleans what an older version stored.

The fakes are built at run time (tests/secret_corpus.py): the committed source holds no key.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest
from e2e_helpers import MEMORY_TAG, claude_body, claude_headers, seed, wait_until
from secret_corpus import Maker, anthropic_key, aws_key_id, aws_secret, github_token, openssh_key
from test_cli import Cli

pytestmark = pytest.mark.e2e

MARKERS = ("[secret: Anthropic API key]", "[secret: AWS access key]", "[secret: AWS secret access key]",
           "[secret: GitHub token]", "[secret: private key]")


def the_four(seed_: int) -> tuple[str, list[str]]:
    """A prompt holding the four secrets of the issue, and every string that must not persist: each secret,
    and each line of the private key's body."""
    m = Maker(seed_)
    anthropic, key_id, secret, token, key = anthropic_key(m), aws_key_id(m), aws_secret(m), github_token(m), openssh_key(m)
    prompt = (
        "Set up the deploy bucket for the falcon service. Use the Anthropic key "
        f"{anthropic} for the summariser, the AWS access key {key_id} with secret {secret}, "
        f"push with the GitHub token {token}, and this deploy key:\n{key}\n"
    )
    body_lines = [line for line in key.splitlines() if "-----" not in line]
    return prompt, [anthropic, key_id, secret, token, key, *body_lines]


def leaked(data: bytes | str, secrets: list[str]) -> list[str]:
    blob = data if isinstance(data, bytes) else data.encode()
    return [s[:12] + "..." for s in secrets if s.encode() in blob]


def files_leaking(directory: Path, secrets: list[str]) -> dict[str, list[str]]:
    return {p.name: hits for p in sorted(directory.rglob("*")) if p.is_file() and (hits := leaked(p.read_bytes(), secrets))}


def stored(db: Path) -> list[str]:
    """Every memory's content in the local store at `db`, whatever its scope."""
    if not db.exists():
        return []
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT content FROM memories")]


def start(mitmdump, upstream, data: Path, mode: str):
    options = {"memory_db": str(data / "memories.db"), "memory_outbox": str(data / "outbox.db")}
    return mitmdump(mode=mode, upstream=upstream, options=options)


def ask_openai(proc, openai_client, text: str) -> None:
    client = openai_client(proc, via="proxy")
    assert client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}]).choices


def ask_claude_code(proc, _openai_client, text: str) -> None:
    with httpx.Client(base_url=proc.base_url, timeout=30) as client:
        with client.stream("POST", "/v1/messages?beta=true", json=claude_body("/work/falcon", text),
                           headers=claude_headers()) as r:
            assert r.status_code == 200 and r.read()


CLIENTS = {"openai-sdk": ("regular", ask_openai, "/chat/completions"),
           "claude-code": ("reverse", ask_claude_code, "/v1/messages")}


@pytest.mark.parametrize("client", CLIENTS)
def test_secrets_in_a_prompt_never_persist_and_come_back_as_markers(mitmdump, upstream, openai_client, tmp_path, client):
    mode, ask, path = CLIENTS[client]
    data = tmp_path / "data"
    proc = start(mitmdump, upstream, data, mode)
    prompt, secrets = the_four(31)
    upstream.reply = f"Done: the falcon deploy bucket is set up, pushed with {secrets[3]}."  # the reply repeats one

    ask(proc, openai_client, prompt)
    assert wait_until(lambda: any("falcon" in content for content in stored(data / "memories.db"))), proc.log_text()
    # While the proxy runs: the store, the outbox and their -wal and -shm files.
    assert files_leaking(data, secrets) == {}
    [memory] = [content for content in stored(data / "memories.db") if "falcon" in content]
    assert all(marker in memory for marker in MARKERS), memory

    ask(proc, openai_client, "Which AWS credentials does the falcon deploy bucket use?")
    sent = json.dumps(upstream.last(path).json)
    assert MEMORY_TAG in sent, proc.log_text()
    assert "[secret: AWS access key]" in sent and "[secret: AWS secret access key]" in sent
    assert leaked(sent, secrets) == []

    proc.stop()
    assert files_leaking(data, secrets) == {}
    assert leaked(proc.log_text(), secrets) == []
    assert "replaced secrets in a turn" in proc.log_text()


def test_memories_scrub_cleans_what_was_stored_before(mitmdump, upstream, openai_client, tmp_path):
    """Memories stored verbatim (as before secrets were scrubbed) are cleaned by `memproxy memories scrub`, and the
    proxy injects the markers from then on."""
    data = tmp_path / "data"
    data.mkdir()
    prompt, secrets = the_four(32)
    seed(data / "memories.db", "openai-sdk", f"User: {prompt}\nAssistant: noted")
    assert files_leaking(data, secrets)

    done = Cli(tmp_path / "home")("memories", "scrub", "--db", data / "memories.db", "--outbox", data / "outbox.db")
    assert done.returncode == 0 and "replaced 5 secrets in 1 of 1 memories" in done.stdout, done.stdout + done.stderr
    assert files_leaking(data, secrets) == {} and leaked(done.stdout + done.stderr, secrets) == []

    proc = start(mitmdump, upstream, data, "regular")
    ask_openai(proc, openai_client, "Which AWS credentials does the falcon deploy bucket use?")
    sent = json.dumps(upstream.last("/chat/completions").json)
    assert MEMORY_TAG in sent and all(marker in sent for marker in MARKERS), proc.log_text()
    assert leaked(sent, secrets) == []
