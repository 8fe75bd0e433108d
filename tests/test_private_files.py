"""Private files: the modes memproxy gives what it writes, and the paths it refuses (memproxy.private)."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import platformdirs
import pytest
from click.testing import CliRunner
from memproxy import private
from memproxy.capture import Turn
from memproxy.cli import main
from memproxy.cli.clients import ensure_ca
from memproxy.cookies import CookieSessions
from memproxy.memory import local
from memproxy.memory.base import StoreError
from memproxy.memory.local import LocalStore
from memproxy.outbox import Outbox
from memproxy.ports import PortRegistry

OTHER_UID = 54321  # a user that is not us
as_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
posix = pytest.mark.skipif(os.name != "posix", reason="POSIX owners and modes")
pytestmark = posix


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A world-writable sticky directory, as /tmp is."""
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o1777)
    return path


def turn(text: str = "where do the docs live?") -> Turn:
    return Turn("files-test", text, "in docs/, built by mkdocs", {"client": "test"})


# -- modes -----------------------------------------------------------------------------------


async def test_the_store_and_outbox_files_are_0600_and_new_dirs_0700(tmp_path: Path, umask: int) -> None:
    store = LocalStore(tmp_path / "data" / "store" / "memories.db")
    outbox = Outbox(tmp_path / "data" / "queue" / "outbox.db", store, base_delay=0.01)
    try:
        await store.open()
        await outbox.start()
        outbox.submit(turn())
        assert await outbox.flush(10)
        assert await store.count("files-test") == 1
        for db in (store.path, outbox.path):
            assert [mode(db.with_name(db.name + s)) for s in ("", "-wal", "-shm")] == [0o600] * 3
        for made in ("data", "data/store", "data/queue"):
            assert mode(tmp_path / made) == 0o700
    finally:
        await outbox.close()
        await store.close()


async def test_cookie_jars_and_the_port_registry_are_0600_and_new_dirs_0700(tmp_path: Path, umask: int) -> None:
    sessions = CookieSessions(tmp_path / "data" / "memproxy" / "cookies.json")
    sessions.note_challenge("files-test", "api.example.com", ["cf_clearance=abc; Path=/"])
    await sessions.save()
    await sessions.aclose()
    registry = PortRegistry(tmp_path / "config" / "memproxy" / "ports.json", (41000, 41999))
    registry.get_or_allocate_port(tmp_path)
    for path in (sessions.path, registry.path, Path(f"{registry.path}.lock")):
        assert mode(path) == 0o600, path
    for made in ("data", "data/memproxy", "config", "config/memproxy"):
        assert mode(tmp_path / made) == 0o700
    assert sorted(p.name for p in registry.path.parent.iterdir()) == ["ports.json", "ports.json.lock"]  # no temp file


async def test_loose_files_are_tightened_on_open_and_the_log_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "memories.db"
    old = os.umask(0o022)
    try:  # as an earlier memproxy left them: 0644, and another connection holds the -wal and -shm open
        other = sqlite3.connect(path)
        other.execute("PRAGMA journal_mode = WAL")
        other.executescript(local.SCHEMA)  # an earlier schema's tables
    finally:
        os.umask(old)
    files = [path, tmp_path / "memories.db-wal", tmp_path / "memories.db-shm"]
    assert [mode(f) for f in files] == [0o644] * 3
    try:
        for _ in range(2):
            store = LocalStore(path)
            with caplog.at_level(logging.WARNING, logger="memproxy.private"):
                await store.open()
            await store.close()
            assert [mode(f) for f in files] == [0o600] * 3
    finally:
        other.close()
    [warning] = [r.getMessage() for r in caplog.records if r.name == "memproxy.private"]
    assert str(path) in warning and "memories.db-wal" in warning and "memories.db-shm" in warning


@pytest.mark.skipif(sys.platform != "linux", reason="platformdirs follows XDG_* only on Linux")
async def test_own_dirs_are_tightened_a_chosen_dir_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    own = platformdirs.user_data_path("memproxy")
    own.mkdir(parents=True)
    own.chmod(0o755)
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    chosen.chmod(0o755)
    for store in (LocalStore(), LocalStore(chosen / "memories.db")):
        await store.open()
        await store.close()
        assert mode(store.path) == 0o600
    assert mode(own) == 0o700
    assert mode(chosen) == 0o755


def test_export_and_the_proxy_log_are_0600(tmp_path: Path, umask: int) -> None:
    out = tmp_path / "export.jsonl"
    out.write_text("older, world-readable\n")
    out.chmod(0o644)
    store = ["--backend", "local", "--db", str(tmp_path / "memories.db"), "--scope", "s"]
    runner = CliRunner()
    assert runner.invoke(main, ["memories", "add", *store, "a memory to export"]).exit_code == 0
    result = runner.invoke(main, ["memories", "export", *store, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert mode(out) == 0o600 and "a memory to export" in out.read_text() and "older" not in out.read_text()
    with private.open_private(tmp_path / "proxy.log", "wb") as log:
        log.write(b"log line\n")
    assert mode(tmp_path / "proxy.log") == 0o600
    with private.open_private(os.devnull) as devnull:  # a device is written as it is
        devnull.write("x")


def test_the_ca_bundle_is_public_like_the_ca_certificate(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ca, bundle = ensure_ca(tmp_path / "confdir")
    finally:
        os.umask(old)
    assert mode(ca) == 0o644 and mode(bundle) == 0o644
    ca.chmod(0o600)
    os.utime(ca, (bundle.stat().st_mtime + 10,) * 2)  # newer than the bundle: rebuilt
    ensure_ca(tmp_path / "confdir")
    assert mode(bundle) == 0o600


# -- refused paths ---------------------------------------------------------------------------


async def test_a_symlink_into_a_world_writable_dir_is_refused_everywhere(
    tmp_path: Path, shared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    links = {}
    for name in ("memories.db", "outbox.db", "cookies.json", "ports.json"):
        links[name] = tmp_path / name
        links[name].symlink_to(shared / name)
    with pytest.raises(private.UnsafePath, match="other users can write to directory .*shared"):
        private.check_path(links["memories.db"])

    store = LocalStore(links["memories.db"])
    with pytest.raises(StoreError, match="refusing"):
        await store.open()
    await store.close()

    outbox = Outbox(links["outbox.db"], LocalStore(tmp_path / "safe.db"), base_delay=0.01)
    with caplog.at_level(logging.WARNING):
        await outbox.start()
        outbox.submit(turn())
        assert await outbox.flush(10)  # kept in memory, then stored from there
    await outbox.close()
    await outbox.store.close()
    assert any("outbox" in r.getMessage() and "refusing" in r.getMessage() for r in caplog.records)

    sessions = CookieSessions(links["cookies.json"])
    sessions.note_challenge("files-test", "api.example.com", ["cf_clearance=abc; Path=/"])
    with caplog.at_level(logging.WARNING):
        await sessions.load()
        await sessions.save()
    assert any(r.getMessage().startswith("Cookie sessions not saved: refusing") for r in caplog.records)

    with pytest.raises(private.UnsafePath):
        PortRegistry(links["ports.json"]).get_or_allocate_port(tmp_path)
    assert list(shared.iterdir()) == []  # nothing written there


def test_a_file_in_a_world_writable_dir_is_refused_even_if_it_is_ours(shared: Path) -> None:
    (shared / "memories.db").touch()
    with pytest.raises(private.UnsafePath, match="other users can write"):
        private.private_path(shared / "memories.db", create=True)


async def test_a_symlink_into_a_private_dir_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "memories.db").symlink_to(real / "memories.db")
    (tmp_path / "cookies.json").symlink_to(real / "cookies.json")
    store = LocalStore(tmp_path / "memories.db")
    await store.add("s", "kept where the link leads")
    await store.close()
    sessions = CookieSessions(tmp_path / "cookies.json")
    sessions.note_challenge("s", "api.example.com", [])
    await sessions.save()
    assert mode(real / "memories.db") == 0o600 and mode(real / "cookies.json") == 0o600
    assert (tmp_path / "cookies.json").is_symlink()  # written through, not replaced


async def test_a_symlink_lying_in_a_dir_others_can_write_is_refused_though_it_leads_somewhere_private(
    tmp_path: Path, shared: Path
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    loose = tmp_path / "loose"  # without the sticky bit: another user could point the link elsewhere
    loose.mkdir()
    loose.chmod(0o777)
    for where in (loose, shared):
        (where / "memories.db").symlink_to(real / "memories.db")
        with pytest.raises(private.UnsafePath, match=f"other users can write to directory {where}"):
            private.check_path(where / "memories.db")
        store = LocalStore(where / "memories.db")
        with pytest.raises(StoreError, match="refusing"):
            await store.open()
        await store.close()
    assert list(real.iterdir()) == []


def test_sticky_dirs_above_pass_but_not_as_the_files_own_dir(tmp_path: Path, shared: Path) -> None:
    mine = shared / "mine"
    mine.mkdir(mode=0o700)
    assert private.private_path(mine / "memories.db", create=True) == mine / "memories.db"
    loose = tmp_path / "loose"  # world-writable without the sticky bit: others can rename what is in it
    loose.mkdir()
    loose.chmod(0o777)
    (loose / "mine").mkdir(mode=0o700)
    with pytest.raises(private.UnsafePath, match=f"directory {loose} "):
        private.check_path(loose / "mine" / "memories.db")
    group = tmp_path / "group"
    group.mkdir()
    group.chmod(0o770)
    with pytest.raises(private.UnsafePath, match="mode 0770"):
        private.check_path(group / "memories.db")


def test_what_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(private.UnsafePath, match="not a regular file"):
        private.check_path(tmp_path / "fifo")


@as_root
async def test_files_and_dirs_of_another_user_are_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "memories.db"
    theirs.touch(mode=0o600)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(private.UnsafePath, match=f"belongs to another user \\(uid {OTHER_UID}\\)"):
        private.check_path(theirs)
    store = LocalStore(theirs)
    with pytest.raises(StoreError, match="belongs to another user"):
        await store.open()
    await store.close()
    with pytest.raises(private.UnsafePath):
        private.open_private(theirs)

    above = tmp_path / "their-dir"
    (above / "mine").mkdir(parents=True)
    os.chown(above, OTHER_UID, OTHER_UID)
    with pytest.raises(private.UnsafePath, match=f"directory {above} belongs to another user"):
        private.check_path(above / "mine" / "memories.db")

    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    (planted / "memories.db-wal").touch()
    os.chown(planted / "memories.db-wal", OTHER_UID, OTHER_UID)
    with pytest.raises(private.UnsafePath, match="memories.db-wal"):
        private.private_path(planted / "memories.db", create=True, companions=private.SQLITE_COMPANIONS)


@pytest.fixture
def user_ann(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """We are the non-root user ann, whose primary group is gid 0 (the group of tmp_path's dirs)."""
    ann = SimpleNamespace(uid=1000, group=SimpleNamespace(gr_name="ann", gr_mem=[]))
    monkeypatch.setattr(os, "geteuid", lambda: ann.uid)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name="ann", pw_gid=0))
    monkeypatch.setattr(grp, "getgrgid", lambda gid: ann.group)
    private._private_group.cache_clear()
    yield ann
    private._private_group.cache_clear()


@as_root
def test_group_write_is_harmless_only_for_the_users_private_group(tmp_path: Path, user_ann: SimpleNamespace) -> None:
    upg = tmp_path / "upg"
    upg.mkdir()
    upg.chmod(0o775)
    assert os.stat(upg).st_gid == 0
    assert private.check_path(upg / "memories.db") == upg / "memories.db"
    for group in (SimpleNamespace(gr_name="ann", gr_mem=["bob"]), SimpleNamespace(gr_name="staff", gr_mem=[])):
        user_ann.group = group
        private._private_group.cache_clear()
        with pytest.raises(private.UnsafePath, match="mode 0775"):
            private.check_path(upg / "memories.db")
    user_ann.uid = 0  # root's paths get no exception
    user_ann.group = SimpleNamespace(gr_name="ann", gr_mem=[])
    private._private_group.cache_clear()
    with pytest.raises(private.UnsafePath, match="mode 0775"):
        private.check_path(upg / "memories.db")


def test_replace_private_swaps_in_a_0600_file_or_leaves_the_old_one(tmp_path: Path, umask: int, monkeypatch) -> None:
    target = tmp_path / "registry.json"
    target.write_text("old\n")
    target.chmod(0o644)
    private.replace_private(target, b"new\n")
    assert target.read_text() == "new\n" and mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]

    def fail(src, dst):  # the rename fails (a full or read-only file system)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        private.replace_private(target, b"newer\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["registry.json"]
