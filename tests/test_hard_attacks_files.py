"""Hard test: files. Through a real mitmdump, what memproxy writes only its user can read, and a store
path that another user could have planted is refused while requests still pass through.

Other local users are the attacker: they can read what is readable by others (memories.db and
outbox.db hold every memory and turn, their -wal and -shm files too; cookies.json holds clearance
cookies), and they can create files and symlinks in world-writable directories such as /tmp.
mitmdump runs under umask 022, the common default that made those files 0644.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REDIRECT
from e2e_helpers import chat, wait_until

pytestmark = pytest.mark.e2e

SCOPE = "files-test"
RULES = f"rules:\n  - name: everyone\n    user_id: {SCOPE}\n"


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """mitmdump inherits the test process's umask."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def stored(db: Path) -> int:
    """Memories of SCOPE in the store at `db`, read without opening it as memproxy would (no tightening)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM memories WHERE scope = ?", (SCOPE,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def start(mitmdump, upstream, tmp_path: Path, **options: str):
    """Regular mode, the fake upstream standing in for api.openai.com and asking for a clearance cookie."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    upstream.require_cookie = "cf_clearance"
    return mitmdump(
        upstream=upstream,
        addon=None,
        extra_scripts=[REDIRECT, "addons/memory.py"],
        # the redirected flows reach the addon on their way to the fake upstream on 127.0.0.1: a memory host here
        options={"memory_rules": str(rules), "memory_retry_max": "1", "memory_hosts": "*", **options},
    )


def test_every_file_memproxy_writes_is_0600_and_its_dirs_0700(mitmdump, upstream, openai_client, tmp_path):
    proc = start(mitmdump, upstream, tmp_path)  # default paths: the user data dir of an empty home
    home = Path(proc.env["HOME"])
    data = Path(proc.env["XDG_DATA_HOME"]) / "memproxy"
    assert chat(openai_client(proc, via="proxy"), "Where do the docs live?") == upstream.reply, proc.log_text()
    assert wait_until(lambda: stored(data / "memories.db") == 1), proc.log_text()
    assert wait_until((data / "cookies.json").exists), proc.log_text()
    assert wait_until((data / "threads.json").exists), proc.log_text()  # the prompt asked, within SAVE_DELAY

    files = [data / f"{db}{suffix}" for db in ("memories.db", "outbox.db") for suffix in ("", "-wal", "-shm")]
    files += [data / "cookies.json", data / "threads.json"]
    assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
    made = [home, home / ".local", home / ".local/share", data]  # none existed: memproxy made them all
    assert {str(d): oct(mode(d)) for d in made} == {str(d): "0o700" for d in made}
    assert sorted(p.name for p in data.iterdir()) == sorted(f.name for f in files)  # nothing else, no temp file


def test_store_paths_symlinked_into_a_world_writable_dir_are_refused(mitmdump, upstream, openai_client, tmp_path):
    shared = tmp_path / "shared"  # as /tmp: world-writable and sticky
    shared.mkdir()
    shared.chmod(0o1777)
    options = {}
    paths = {"memory_db": "memories.db", "memory_outbox": "outbox.db", "memory_cookies": "cookies.json"}
    for option, name in paths.items():
        link = tmp_path / name  # another user planted shared/<name>, or will
        link.symlink_to(shared / name)
        options[option] = str(link)
    proc = start(mitmdump, upstream, tmp_path, **options)

    assert chat(openai_client(proc, via="proxy"), "Where do the docs live?") == upstream.reply, proc.log_text()
    assert upstream.last("/chat/completions").json["messages"][-1]["content"] == "Where do the docs live?"
    jar = tmp_path / "cookies.json"
    assert wait_until(lambda: "Cookie sessions not saved" in proc.log_text() or not jar.is_symlink()), proc.log_text()
    assert sorted(p.name for p in shared.iterdir()) == []  # nothing written where other users can read or swap it
    assert jar.is_symlink()  # nor the planted link replaced
    log = proc.log_text()
    refusal = f"refusing {tmp_path / 'memories.db'} (which leads to {shared / 'memories.db'}) for private data"
    assert "memory store unavailable, requests pass through without memory" in log and refusal in log, log
    assert f"capture outbox {tmp_path / 'outbox.db'} unusable" in log, log
    assert "Cookie sessions not saved: refusing" in log, log
