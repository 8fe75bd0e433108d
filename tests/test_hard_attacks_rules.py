"""Hard test: attacks through routing and the rules file, against a real mitmdump.

- Lookalike projects: Claude Code in two directories whose names a lossy sanitiser merged (non-Latin
  names, café/cafè, "my repo"/"my-repo") gets two scopes, and a memory stored from one is not recalled
  in the other.
- Rules-file denial of service: a YAML alias bomb at start-up and on reload; a user regex that
  backtracks exponentially on what a client sends; the rules file replaced by a symlink to a FIFO or
  to /dev/zero while the proxy runs.

Every case here stalls or leaks with a sanitiser that maps names many-to-one, with PyYAML's unbounded
alias expansion, with `re` on client text, or with a blocking, unbounded read of the rules file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import MITMDUMP, ROOT, free_port, make_http_client
from e2e_helpers import MEMORY_TAG, claude_body, claude_headers, wait_until

pytestmark = pytest.mark.e2e

# A 6-level "billion laughs" (9**6 strings from about 400 bytes), in a section the rules ignore.
ALIAS_BOMB = "litellm_settings:\n" + "".join(
    f"  {name}: &{name} [{', '.join([f'*{prev}' if prev else '"lol"'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e"], "abcdef", strict=True)
)
ALIAS_REFUSED = "invalid YAML: aliases expand the document by more than"
KEPT = "rules not reloaded, keeping the last good rules"


def start(mitmdump, upstream, tmp_path: Path, rules: Path | None = None, **options: str):
    """A regular-mode mitmdump (API hosts redirected to `upstream`) with its own store and outbox."""
    opts = {"memory_db": str(tmp_path / "memories.db"), "memory_outbox": str(tmp_path / "outbox.db"), **options}
    if rules is not None:
        opts["memory_rules"] = str(rules)
    return mitmdump(mode="regular", upstream=upstream, options=opts)


def routed_user_id(proc) -> str:
    """The scope the running rules give a request with no headers of note (the proxy's info endpoint)."""
    with httpx.Client(proxy=proc.proxy_url, trust_env=False, timeout=30) as client:
        return client.get("http://memproxy/memory-routing/info").json()["user_id"]


def stored(db: Path) -> list[tuple[str, str]]:
    """(scope, content) of every memory in the local store."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT scope, content FROM memories ORDER BY id").fetchall()


def replace(path: Path, *, target: Path | None = None, text: str | None = None) -> None:
    """Replace `path` at once (rename over it): by a symlink to `target`, or by a regular file holding `text`."""
    new = path.with_name(path.name + ".new")
    if target is not None:
        new.symlink_to(target)
    else:
        new.write_text(text or "")
    new.replace(path)


def log_count(proc, text: str) -> int:
    return proc.log_text().count(text)


# -- lookalike projects -------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("one", "other"), [
    ("/home/u/проект", "/home/u/задача"),
    ("/home/u/café", "/home/u/cafè"),
    ("/home/u/my repo", "/home/u/my-repo"),
], ids=["cyrillic", "accents", "space"])
def test_lookalike_projects_do_not_share_memories(mitmdump, upstream, tmp_path, one, other):
    proc = start(mitmdump, upstream, tmp_path)
    db = tmp_path / "memories.db"

    def ask(cwd: str, text: str) -> dict:
        with make_http_client(proc, host="api.anthropic.com") as client:
            r = client.post("/v1/messages?beta=true", json=claude_body(cwd, text), headers=claude_headers())
        assert r.status_code == 200, r.text
        return upstream.last("/v1/messages").json

    upstream.reply = "Noted: the zebrafish service deploys to Hetzner."
    ask(one, "Remember that the zebrafish service deploys to Hetzner.")
    assert wait_until(lambda: len(stored(db)) == 1), proc.log_text()

    upstream.reply = "I do not know yet."
    sent = ask(other, "Where does the zebrafish service deploy?")
    assert "Hetzner" not in json.dumps(sent), "the other project recalled this project's memory"
    assert MEMORY_TAG not in json.dumps(sent)
    assert wait_until(lambda: len(stored(db)) == 2), proc.log_text()
    (scope_one, _), (scope_other, _) = stored(db)
    assert scope_one != scope_other

    sent = ask(one, "Where does the zebrafish service deploy?")  # the memory is there, in its own project
    assert MEMORY_TAG in json.dumps(sent) and "Hetzner" in json.dumps(sent), proc.log_text()


# -- rules-file denial of service ---------------------------------------------------------------


@pytest.mark.timeout(90)
def test_alias_bomb_stops_startup_with_the_file_named(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{name: everyone, user_id: bombed}]\n" + ALIAS_BOMB)
    assert rules.stat().st_size < 600
    argv = [str(MITMDUMP), "-s", "addons/memory.py", "--listen-host", "127.0.0.1", "-p", str(free_port()),
            "--set", f"confdir={tmp_path}", "--set", f"memory_rules={rules}", "--set", f"memory_db={tmp_path / 'm.db'}"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"{rules}:1: {ALIAS_REFUSED}" in output
    assert "Traceback" not in output


@pytest.mark.timeout(90)
def test_reload_to_an_alias_bomb_keeps_the_last_good_rules(mitmdump, upstream, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{name: everyone, user_id: first}]\n")
    proc = start(mitmdump, upstream, tmp_path, rules)
    assert routed_user_id(proc) == "first"

    replace(rules, text="rules: [{name: everyone, user_id: bombed}]\n" + ALIAS_BOMB)
    assert wait_until(lambda: ALIAS_REFUSED in proc.log_text(), 30), proc.log_text()
    assert f"{KEPT}: {rules}:1: {ALIAS_REFUSED}" in proc.log_text()
    assert routed_user_id(proc) == "first"


# '^(\w+\s?)+$' stalled all traffic for 9 s on a 27-character message with `re` (2**n ways to fail);
# the regex engine does not backtrack there. '^(\w|\w)+$' backtracks in both: it runs out of time.
CATASTROPHIC_RULES = r"""
rules:
  - name: words
    match: {json: {messages.-1.content: '^(\w+\s?)+$'}}
    user_id: words
  - name: slow
    match: {json: {messages.-1.content: '^(\w|\w)+$'}}
    user_id: slow
  - name: everyone
    user_id: everyone
"""


@pytest.mark.timeout(90)
def test_catastrophic_regex_neither_stalls_nor_matches(mitmdump, upstream, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(CATASTROPHIC_RULES)
    proc = start(mitmdump, upstream, tmp_path, rules)
    with make_http_client(proc) as client:
        for letter in "ab":
            message = letter * 60 + "!"  # with `re`: 2**60 ways to fail the first rule
            r = client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": [
                {"role": "user", "content": message}]})
            assert r.status_code == 200, r.text
    db = tmp_path / "memories.db"
    assert wait_until(lambda: len(stored(db)) == 2), proc.log_text()
    assert {scope for scope, _ in stored(db)} == {"everyone"}
    # The time limit is logged, once for the rule whatever the number of requests.
    assert log_count(proc, "rule 'slow' did not match: a regex ran out of the time budget for routing") == 1
    assert "rule 'words'" not in proc.log_text()


@pytest.mark.timeout(90)
def test_rules_file_replaced_by_fifo_or_dev_zero_then_edited(mitmdump, upstream, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{name: everyone, user_id: first}]\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = start(mitmdump, upstream, tmp_path, rules)
    assert routed_user_id(proc) == "first"
    refused = f"{KEPT}: {rules}: cannot read rules file: not a regular file"
    try:
        replace(rules, target=fifo)  # opening it for reading would wait for a writer, for ever
        assert wait_until(lambda: log_count(proc, refused) == 1, 30), proc.log_text()
        assert routed_user_id(proc) == "first"

        replace(rules, target=Path("/dev/zero"))  # reading it would never end
        assert wait_until(lambda: log_count(proc, refused) == 2, 30), proc.log_text()
        assert routed_user_id(proc) == "first"

        time.sleep(0.01)  # a new modification time, whatever the file system's resolution
        replace(rules, text="rules: [{name: everyone, user_id: second}]\n")
        assert wait_until(lambda: routed_user_id(proc) == "second", 30), proc.log_text()
    finally:
        try:  # a reader stuck on the FIFO (as with a blocking open) gets its end of file
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
