"""Projects: roots found in real directories and real git repositories, the cached look-up on a real event
loop and real threads, and the name registry against real files and real concurrent processes."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memproxy.repos import (
    MARKERS,
    UNKNOWN,
    ProjectRegistry,
    RegistryError,
    Roots,
    as_written,
    assign_name,
    plain_name,
    project_root,
    registry,
    roots,
)
from memproxy.rules import scope_name
from racing import race

# roots


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def root_of(path: Path | str, home: Path) -> str | None:
    return project_root(str(path), home=str(home))


def git(*args: str, cwd: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", "-c", "protocol.file.allow=always", "-c", "init.defaultBranch=main", *args], cwd=cwd,
                   env=env, check=True, capture_output=True, timeout=60)


def repo(path: Path) -> Path:
    """A real git repository with one commit."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", cwd=path)
    (path / "README").write_text("x\n")
    git("add", "README", cwd=path)
    git("commit", "-qm", "one", cwd=path)
    return path


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_a_repository_and_its_subdirectories_resolve_to_its_root(home: Path) -> None:
    api = repo(home / "work" / "api")
    (api / "src" / "deep").mkdir(parents=True)
    assert root_of(api, home) == str(api)
    assert root_of(api / "src" / "deep", home) == str(api)
    assert root_of(f"{api}/src/", home) == str(api)
    assert root_of(f"{api}/src/../src/./deep", home) == str(api)


@needs_git
@pytest.mark.parametrize("place", ["beside", "inside"])
def test_a_worktree_is_its_repositorys_project(home: Path, place: str) -> None:
    """A linked worktree (beside the repository, or inside it, as `claude --worktree` makes them in
    `.claude/worktrees/`) is the repository's project: work done in it is remembered for the repository."""
    main = repo(home / "main")
    wt = home / "wt" if place == "beside" else main / ".claude" / "worktrees" / "feature"
    git("worktree", "add", "-q", str(wt), "-b", "feature", cwd=main)
    assert (wt / ".git").is_file()
    (wt / "src").mkdir()
    assert root_of(wt / "src", home) == root_of(wt, home) == root_of(main, home) == str(main)


@needs_git
def test_a_bare_repositorys_worktrees_are_its_project(home: Path) -> None:
    origin = repo(home / "origin")
    git("clone", "-q", "--bare", str(origin), str(home / "shop.git"), cwd=home)
    for branch in ("one", "two"):
        git("worktree", "add", "-q", str(home / branch), "-b", branch, cwd=home / "shop.git")
    assert root_of(home / "one", home) == root_of(home / "two", home) == str(home / "shop.git")


@needs_git
def test_a_worktree_of_a_submodule_is_the_submodules_project(home: Path) -> None:
    """A submodule's git dir (`.git/modules/lib`) names its tree in `core.worktree`."""
    lib = repo(home / "lib")
    app = repo(home / "app")
    git("submodule", "add", "-q", str(lib), "vendor/lib", cwd=app)
    git("worktree", "add", "-q", str(home / "lib-wt"), "-b", "fix", cwd=app / "vendor" / "lib")
    assert root_of(home / "lib-wt", home) == root_of(app / "vendor" / "lib", home) == str(app / "vendor" / "lib")


@needs_git
def test_a_worktree_of_a_repository_with_a_separate_git_dir_is_its_own_root(home: Path) -> None:
    """Only the tree's own `.git` file names where a `--separate-git-dir` repository's tree is: its worktree is a
    root of its own, never the git dir."""
    (home / "gitdirs").mkdir()
    git("init", "-q", "--separate-git-dir", str(home / "gitdirs" / "sep.git"), str(home / "sep"), cwd=home)
    (home / "sep" / "README").write_text("x\n")
    git("add", "README", cwd=home / "sep")
    git("commit", "-qm", "one", cwd=home / "sep")
    git("worktree", "add", "-q", str(home / "sep-wt"), "-b", "feature", cwd=home / "sep")
    assert root_of(home / "sep-wt", home) == str(home / "sep-wt")


@needs_git
def test_the_codex_apps_worktrees_are_their_repositorys_project(home: Path) -> None:
    """The Codex app makes its worktrees in its own state dir (`~/.codex/worktrees/<id>/<project>`): they are
    the repository's project; the rest of that dir stays no project."""
    shop = repo(home / "work" / "shop")
    wt = home / ".codex" / "worktrees" / "a1b2" / "shop"
    git("worktree", "add", "-q", str(wt), "-b", "codex", cwd=shop)
    (wt / "src").mkdir()
    assert root_of(wt, home) == root_of(wt / "src", home) == str(shop)
    (home / ".codex" / "worktrees" / "c3d4" / "notes").mkdir(parents=True)
    assert root_of(home / ".codex" / "worktrees" / "c3d4" / "notes", home) == str(home / ".codex" / "worktrees" / "c3d4" / "notes")
    assert root_of(home / ".codex" / "worktrees", home) is None
    assert root_of(home / ".codex" / "sessions" / "2026", home) is None


@needs_git
def test_a_worktree_file_copied_elsewhere_joins_nothing(home: Path, tmp_path: Path) -> None:
    """A `.git` file naming a worktree's git dir, in a directory that is not that worktree (copied, or written by
    anyone), is a marker of its own: the worktree's git dir links back to the worktree alone. A git dir outside
    a repository's `worktrees`, however it links back, joins nothing either."""
    main = repo(home / "main")
    wt = home / "wt"
    git("worktree", "add", "-q", str(wt), "-b", "feature", cwd=main)
    forged = tmp_path / "download"
    forged.mkdir()
    shutil.copy(wt / ".git", forged / ".git")
    assert root_of(forged, home) == str(forged)

    fake = tmp_path / "fake" / "worktrees" / "x"  # an attacker's git dir claiming the repository as its own
    fake.mkdir(parents=True)
    (fake / "gitdir").write_text(f"{forged / '.git'}\n")
    (fake / "commondir").write_text(f"{main / '.git'}\n")
    (forged / ".git").write_text(f"gitdir: {fake}\n")
    assert root_of(forged, home) == str(forged)
    assert root_of(wt, home) == str(main)

    # a git dir of its own whose config names another repository's tree as its `core.worktree`: that tree's
    # `.git` does not name it back
    secret = repo(home / "work" / "secret")
    planted = tmp_path / "evil.git"
    (planted / "worktrees" / "w").mkdir(parents=True)
    (planted / "config").write_text(f"[core]\n\tbare = false\n\tworktree = {secret}\n")
    (planted / "worktrees" / "w" / "gitdir").write_text(f"{forged / '.git'}\n")
    (planted / "worktrees" / "w" / "commondir").write_text("../..\n")
    (forged / ".git").write_text(f"gitdir: {planted / 'worktrees' / 'w'}\n")
    assert root_of(forged, home) == str(forged) and root_of(secret, home) == str(secret)


@needs_git
def test_a_worktree_whose_repository_is_gone_is_its_own_root(home: Path) -> None:
    main = repo(home / "main")
    git("worktree", "add", "-q", str(home / "wt"), "-b", "feature", cwd=main)
    shutil.rmtree(main)
    assert root_of(home / "wt", home) == str(home / "wt")


@needs_git
@pytest.mark.parametrize("owned", ["main", ".git", ".git/worktrees/wt"])
def test_a_worktree_of_a_repository_another_user_owns_is_its_own_root(
    home: Path, monkeypatch: pytest.MonkeyPatch, owned: str
) -> None:
    """The repository's tree, its git dir or the worktree's git dir another user's: each alone joins nothing."""
    main = repo(home / "main")
    git("worktree", "add", "-q", str(home / "wt"), "-b", "feature", cwd=main)
    assert root_of(home / "wt", home) == str(main)
    another = str(main if owned == "main" else main / owned)
    owned_by_another = roots.private.owned_by_another
    monkeypatch.setattr(roots.private, "owned_by_another", lambda p: str(p) == another or owned_by_another(p))
    assert root_of(home / "wt", home) == str(home / "wt")


def test_a_fifo_in_place_of_a_worktrees_git_file_is_not_read(home: Path) -> None:
    """A git dir whose `gitdir` is a FIFO: reading it would block the look-up's thread."""
    gitdir = home / "main" / ".git" / "worktrees" / "wt"
    gitdir.mkdir(parents=True)
    os.mkfifo(gitdir / "gitdir")
    (home / "wt").mkdir()
    (home / "wt" / ".git").write_text(f"gitdir: {gitdir}\n")
    assert root_of(home / "wt", home) == str(home / "wt")


@needs_git
def test_a_submodule_is_its_own_root(home: Path) -> None:
    lib = repo(home / "lib")
    app = repo(home / "app")
    git("submodule", "add", "-q", str(lib), "vendor/lib", cwd=app)
    assert (app / "vendor" / "lib" / ".git").is_file()
    assert root_of(app / "vendor" / "lib", home) == str(app / "vendor" / "lib")
    assert root_of(app / "vendor", home) == str(app)


def test_the_inner_of_nested_repositories_wins(home: Path) -> None:
    (home / "outer" / ".git").mkdir(parents=True)
    (home / "outer" / "inner" / ".hg").mkdir(parents=True)
    (home / "outer" / "inner" / "src").mkdir()
    (home / "outer" / "other").mkdir()
    assert root_of(home / "outer" / "inner" / "src", home) == str(home / "outer" / "inner")
    assert root_of(home / "outer" / "other", home) == str(home / "outer")


@pytest.mark.parametrize("marker", MARKERS)
@pytest.mark.parametrize("kind", ["dir", "file"])
def test_every_marker_makes_a_root_as_a_file_or_a_directory(home: Path, marker: str, kind: str) -> None:
    (home / "p" / "sub").mkdir(parents=True)
    if kind == "dir":
        (home / "p" / marker).mkdir()
    else:
        (home / "p" / marker).write_text("gitdir: elsewhere\n")
    assert root_of(home / "p" / "sub", home) == str(home / "p")


def test_a_directory_in_no_repository_is_its_own_project(home: Path) -> None:
    (home / "notes" / "2026").mkdir(parents=True)
    assert root_of(home / "notes" / "2026", home) == str(home / "notes" / "2026")


def test_a_marker_another_user_planted_joins_no_directories_into_one_project(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"  # outside the home, as /tmp is
    (shared / "scratch1").mkdir(parents=True)
    (shared / "scratch2").mkdir()
    (shared / ".git").mkdir()
    assert root_of(shared / "scratch1", home) == root_of(shared / "scratch2", home) == str(shared)  # the user's own
    if os.geteuid() == 0:
        os.chown(shared / ".git", 4242, 4242)  # another user's
    else:
        uid = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: uid + 1)  # the files become another user's
    assert root_of(shared / "scratch1", home) == str(shared / "scratch1")
    assert root_of(shared / "scratch2", home) == str(shared / "scratch2")


def test_neither_the_home_nor_the_file_system_root_is_a_project_found_from_below(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / ".git").mkdir()  # a dotfiles repository
    (home / "notes").mkdir()
    assert root_of(home / "notes", home) == str(home / "notes")
    assert root_of(home, home) == str(home)  # unless it is the working directory
    lexists = os.path.lexists
    monkeypatch.setattr(roots.os.path, "lexists", lambda p: p == "/.git" or lexists(p))  # as if / held a repository
    outside = home.parent / "outside"
    outside.mkdir()
    assert root_of(outside, home) == str(outside)
    assert root_of("/", home) == "/"


def test_symlinks_are_resolved_so_one_repository_has_one_root(home: Path, tmp_path: Path) -> None:
    real = tmp_path / "disk" / "api"
    (real / ".git").mkdir(parents=True)
    (real / "src").mkdir()
    (home / "api").symlink_to(real)
    (home / "src-link").symlink_to(real / "src")
    assert root_of(home / "api", home) == str(real)
    assert root_of(home / "api" / "src", home) == str(real)
    assert root_of(home / "src-link", home) == str(real)
    (home / "plain").symlink_to(tmp_path / "disk")
    assert root_of(home / "plain", home) == str(tmp_path / "disk")


@pytest.mark.parametrize(
    ("written", "project"),
    [
        ("/workspace/app", "/workspace/app"),
        ("/workspace/app/", "/workspace/app"),
        ("/workspace//app/./src/..", "/workspace/app"),
        ("/workspace/app/../../../x", "/x"),
        ("C:\\Users\\amy\\api\\", "C:\\Users\\amy\\api"),
        ("C:\\Users\\amy\\..\\api", "C:\\Users\\amy\\..\\api"),
        ("C:\\", "C:\\"),
        ("D:/src/api/", "D:/src/api"),
        ("\\\\server\\share\\api", "\\\\server\\share\\api"),
    ],
)
def test_a_path_that_is_not_here_is_the_project_as_written(home: Path, written: str, project: str) -> None:
    assert root_of(written, home) == project


def test_a_relative_path_is_not_looked_up_in_the_proxys_directory(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "api" / ".git").mkdir(parents=True)
    (home / "api" / "src").mkdir()
    monkeypatch.chdir(home / "api")
    assert root_of("src", home) == "src"
    assert root_of("./src/", home) == "src"


@pytest.mark.parametrize(
    "path",
    [
        "{home}/.claude/projects/-home-u-api",
        "{home}/.gemini/tmp/api",
        "{home}/.gemini",
        "{home}/.codex",
        "{home}/.codex/sessions/2026",
        "{home}/.codex/worktrees",
        "C:\\Users\\amy\\.codex\\worktrees\\..\\sessions\\2026",
        "{home}/.qwen/tmp/x/",
        "{home}/.local/share/opencode/project/x",
        "{home}/.config/opencode",
        "/home/bob/.claude/projects/-home-bob-api",
        "/Users/amy/.gemini/tmp/abc",
        "/root/.codex",
        "C:\\Users\\amy\\.qwen\\tmp",
        "~/.claude/projects/x",
    ],
)
def test_a_clients_state_dir_is_not_a_project(home: Path, path: str) -> None:
    path = path.format(home=home)
    if path.startswith(str(home)):
        Path(path).mkdir(parents=True)
    assert root_of(path, home) is None
    assert as_written(path, str(home)) is None


def test_a_client_dir_inside_a_repository_is_the_repository(home: Path) -> None:
    (home / "api" / ".git").mkdir(parents=True)
    (home / "api" / ".claude" / "commands").mkdir(parents=True)
    (home / "api" / ".gemini").mkdir()
    assert root_of(home / "api" / ".claude" / "commands", home) == str(home / "api")
    assert root_of(home / "api" / ".gemini", home) == str(home / "api")
    assert root_of("/srv/x/.codex", home) == "/srv/x/.codex"


def test_a_symlink_into_a_state_dir_is_not_a_project(home: Path, tmp_path: Path) -> None:
    (home / ".claude" / "projects" / "x").mkdir(parents=True)
    (tmp_path / "link").symlink_to(home / ".claude" / "projects" / "x")
    assert root_of(tmp_path / "link", home) is None


@pytest.mark.parametrize("path", ["", "/" + "a" * roots.PATH_MAX])
def test_no_path_or_an_impossible_one_is_not_a_project(home: Path, path: str) -> None:
    assert root_of(path, home) is None


def test_a_path_with_a_nul_is_taken_as_written(home: Path) -> None:
    assert root_of(f"{home}/a\x00b", home) == f"{home}/a\x00b"


# the look-up for the event loop


class Finder:
    """project_root, counted, that can be held up."""

    def __init__(self, home: Path, delay: float = 0.0) -> None:
        self.home, self.delay = str(home), delay
        self.calls: list[str] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, path: str) -> str | None:
        self.calls.append(path)
        time.sleep(self.delay)
        self.release.wait(30)
        return project_root(path, home=self.home)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_root_is_looked_up_once_and_cached(home: Path) -> None:
    (home / "api" / ".git").mkdir(parents=True)
    find = Finder(home)
    cache = Roots(home=str(home), find=find)
    path = str(home / "api")
    assert cache.cached(path) is UNKNOWN
    assert await cache.resolve(path) == path
    assert await cache.resolve(path) == path
    assert cache.cached(path) == path
    assert find.calls == [path]


async def test_concurrent_callers_share_one_look_up(home: Path) -> None:
    find = Finder(home, delay=0.05)
    cache = Roots(home=str(home), find=find, budget=5)
    results = await asyncio.gather(*(cache.resolve(str(home / "x")) for _ in range(10)))
    assert set(results) == {str(home / "x")}
    assert len(find.calls) == 1


async def test_a_git_init_is_noticed_once_the_ttl_is_over(home: Path) -> None:
    (home / "api" / "src").mkdir(parents=True)
    clock = Clock()
    cache = Roots(home=str(home), ttl=60, clock=clock)
    src = str(home / "api" / "src")
    assert await cache.resolve(src) == src
    (home / "api" / ".git").mkdir()
    clock.now += 59
    assert cache.cached(src) == src
    assert await cache.resolve(src) == src
    clock.now += 2
    assert cache.cached(src) is UNKNOWN
    assert await cache.resolve(src) == str(home / "api")


async def test_the_cache_is_bounded_and_keeps_the_recently_used(home: Path) -> None:
    find = Finder(home)
    cache = Roots(home=str(home), size=3, find=find)
    a, b, c, d = (f"/remote/{n}" for n in "abcd")
    for path in (a, b, c):
        await cache.resolve(path)
    assert cache.cached(a) == a  # now the most recently used
    await cache.resolve(d)
    assert cache.cached(b) is UNKNOWN
    assert [cache.cached(p) for p in (a, c, d)] == [a, c, d]
    assert len(cache._cache) == 3


async def test_a_look_up_does_not_block_the_event_loop(home: Path) -> None:
    cache = Roots(home=str(home), find=Finder(home, delay=0.3), budget=5)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    assert await cache.resolve("/remote/x") == "/remote/x"
    elapsed = time.monotonic() - started
    ticker.cancel()
    assert elapsed >= 0.3
    assert ticks >= 10  # about 30 while the thread slept


async def test_a_hung_look_up_falls_back_to_the_path_as_written_and_its_answer_lands_later(home: Path) -> None:
    (home / "api" / ".git").mkdir(parents=True)
    (home / "api" / "src").mkdir()
    find = Finder(home)
    find.release.clear()  # a network file system that hangs
    cache = Roots(home=str(home), find=find, budget=0.05)
    src = str(home / "api" / "src") + "/"
    started = time.monotonic()
    assert await cache.resolve(src) == str(home / "api" / "src")
    assert time.monotonic() - started < 1
    assert cache.cached(src) == str(home / "api" / "src")  # callers meanwhile do not wait again
    assert await cache.resolve(src) == str(home / "api" / "src")
    assert find.calls == [src]
    find.release.set()
    for _ in range(200):
        if cache.cached(src) == str(home / "api"):
            break
        await asyncio.sleep(0.01)
    assert cache.cached(src) == str(home / "api")


async def test_hung_look_ups_hold_at_most_max_threads(home: Path) -> None:
    find = Finder(home)
    find.release.clear()
    cache = Roots(home=str(home), find=find, budget=0.02, max_threads=2)
    assert await cache.resolve("/nfs/a") == "/nfs/a"
    assert await cache.resolve("/nfs/b") == "/nfs/b"
    assert await cache.resolve("/nfs/c/") == "/nfs/c"  # no thread left: at once
    assert find.calls == ["/nfs/a", "/nfs/b"]
    assert cache.cached("/nfs/c/") is UNKNOWN  # asked again once a thread is free
    find.release.set()


async def test_a_state_dir_needs_no_look_up(home: Path) -> None:
    find = Finder(home)
    cache = Roots(home=str(home), find=find)
    assert await cache.resolve(f"{home}/.gemini/tmp/abc/") is None
    assert cache.cached(f"{home}/.gemini/tmp/abc/") is None
    assert find.calls == []


async def test_a_failing_look_up_falls_back_to_the_path_as_written(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: str) -> str | None:
        raise RuntimeError("bug")

    cache = Roots(home=str(home), find=broken)
    with caplog.at_level(logging.WARNING, logger="memproxy.repos.lookup"):
        assert await cache.resolve("/srv/x/") == "/srv/x"
    assert "project look-up failed (RuntimeError: bug)" in caplog.text


# names


@pytest.mark.parametrize(
    ("root", "name"),
    [
        ("/srv/api", "api"),
        ("/srv/my repo", "my-repo"),
        ("/srv/a  b:c@d", "a-b-c-d"),
        ("/srv/проект", "проект"),
        ("/srv/cafe\u0301", "caf\u00e9"),
        ("/srv/v1.2_x+y", "v1.2_x+y"),
        ("/", "root"),
        ("C:\\Users\\amy\\api", "api"),
        ("C:\\", "root"),
        ("/srv/" + "x" * 100, "x" * registry.NAME_MAX),
    ],
)
def test_plain_names_are_the_directory_in_scope_characters(root: str, name: str) -> None:
    assert plain_name(root) == name
    assert scope_name(f"project:{name}") == f"project:{name}"


roots_strategy = st.one_of(
    st.text(min_size=1, max_size=40),
    st.builds(lambda parent, base: f"/{parent}/{base}", st.text(max_size=8),
              st.sampled_from(["api", "web", "my repo", "my-repo", "ü", "", "api@3f2a1b", "x" * 80])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(roots_strategy, unique=True, max_size=40))
def test_names_are_injective_and_stay_scopes_as_they_are(roots_list: list[str]) -> None:
    taken: dict[str, str] = {}
    for root in roots_list:
        name = assign_name(root, taken)
        assert name not in taken
        taken[name] = root
        assert scope_name(f"project:{name}") == f"project:{name}"
        assert (registry.HASH_MARK in name) == (name != plain_name(root))
    assert all(registry.HASH_MARK not in plain_name(r) for r in roots_list)


@pytest.fixture
def reg(tmp_path: Path) -> ProjectRegistry:
    return ProjectRegistry(tmp_path / "data" / "projects.json")


def test_the_first_root_keeps_the_plain_name_and_a_later_one_gets_a_hashed_one(reg: ProjectRegistry) -> None:
    assert reg.register("/home/u/work/api") == "api"
    other = reg.register("/home/u/oss/api")
    assert other.startswith("api@") and len(other) == len("api@") + registry.HASH_LEN
    third = reg.register("/home/u/old/api")
    assert len({"api", other, third}) == 3
    again = ProjectRegistry(reg.path)  # after a restart
    assert [again.register(r) for r in ("/home/u/oss/api", "/home/u/work/api", "/home/u/old/api")] == [
        other, "api", third]
    fresh = ProjectRegistry(reg.path)
    assert fresh.register("/home/u/work/api") == "api"
    assert {p.root: p.name for p in fresh.projects()} == {
        "/home/u/work/api": "api", "/home/u/oss/api": other, "/home/u/old/api": third}


def test_the_hashed_name_skips_one_that_is_taken(reg: ProjectRegistry) -> None:
    reg.register("/a/api")
    hashed = assign_name("/b/api", {"api"})
    data = json.loads(reg.path.read_text())
    data["projects"]["/c/elsewhere"] = {"name": hashed, "tools": [], "first_use": None, "last_use": None}
    reg.path.write_text(json.dumps(data))
    assert ProjectRegistry(reg.path).register("/b/api") == assign_name("/b/api", {"api", hashed})
    assert len(assign_name("/b/api", {"api", hashed})) == len(hashed) + 2


def test_the_file_is_private_readable_json(reg: ProjectRegistry) -> None:
    reg.register("/srv/api")
    assert reg.path.stat().st_mode & 0o777 == 0o600
    assert reg.path.parent.stat().st_mode & 0o777 == 0o700
    assert Path(f"{reg.path}.lock").stat().st_mode & 0o777 == 0o600
    data = json.loads(reg.path.read_text())
    assert data == {"version": 1, "projects": {"/srv/api": {"name": "api", "tools": [], "first_use": None,
                                                            "last_use": None}}}
    assert "\n  " in reg.path.read_text()
    assert {p.name for p in reg.path.parent.iterdir()} == {"projects.json", "projects.json.lock"}


def test_names_are_written_as_people_read_them_and_any_root_round_trips(reg: ProjectRegistry) -> None:
    assert reg.register("/srv/проект") == "проект"
    assert '"name": "проект"' in reg.path.read_text(encoding="utf-8")
    odd = os.fsdecode(b"/srv/caf\xe9")  # not UTF-8: a lone surrogate
    name = reg.register(odd)
    assert name == "caf"
    assert {p.root: p.name for p in ProjectRegistry(reg.path).projects()} == {"/srv/проект": "проект", odd: "caf"}


def test_the_package_loads_no_heavy_dependency() -> None:
    code = "import sys, memproxy.repos; print(' '.join(m for m in ('yaml', 'httpx', 'pydantic', 'mitmproxy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == []


@pytest.mark.skipif(os.name != "posix", reason="XDG data dir")
def test_the_default_file_is_in_the_user_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    reg = ProjectRegistry()
    reg.register("/srv/a")
    assert reg.path == tmp_path / "xdg" / "memproxy" / "projects.json"
    assert reg.path.is_file()


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[]",
        '{"version": 0, "projects": {}}',
        '{"version": 1, "projects": []}',
        '{"version": 1, "projects": {"/srv/b": {"name": 3, "tools": [], "first_use": null, "last_use": null}}}',
        '{"version": 1, "projects": {"/srv/b": {"name": "b", "tools": "x", "first_use": null, "last_use": null}}}',
        '{"version": 1, "projects": {"/srv/b": {"name": "b", "tools": []}}}',
        '{"version": 1, "recovered_from": "x", "projects": {}}',
        # two roots sharing a name would share memories
        '{"version": 1, "projects": {"/x/b": {"name": "b", "tools": [], "first_use": null, "last_use": null},'
        ' "/y/b": {"name": "b", "tools": [], "first_use": null, "last_use": null}}}',
    ],
)
def test_a_corrupt_file_is_kept_aside_and_no_name_is_given_twice(
    reg: ProjectRegistry, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert reg.register("/srv/known") == "known"
    reg.path.write_text(content)  # while the proxy runs
    with caplog.at_level(logging.WARNING, logger="memproxy.repos.registry"):
        name = reg.register("/srv/api")
    assert name == assign_name("/srv/api", set(), plain=False)  # `api` may have been another root's
    (backup,) = reg.path.parent.glob("projects.json.corrupt-*")
    assert backup.read_text() == content
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert str(backup) in caplog.text and "corrupt" in caplog.text
    data = json.loads(reg.path.read_text())
    assert data["recovered_from"] == [str(backup)]
    assert {root: e["name"] for root, e in data["projects"].items()} == {"/srv/known": "known", "/srv/api": name}
    assert ProjectRegistry(reg.path).register("/srv/web") == assign_name("/srv/web", set(), plain=False)


def test_a_second_corruption_keeps_both_copies(reg: ProjectRegistry) -> None:
    for _ in range(2):
        reg.path.parent.mkdir(parents=True, exist_ok=True)
        reg.path.write_text("{")
        reg.path.chmod(0o600)
        ProjectRegistry(reg.path).projects()
    assert len(list(reg.path.parent.glob("projects.json.corrupt-*"))) == 2


def test_a_file_from_a_newer_memproxy_is_left_alone(reg: ProjectRegistry) -> None:
    reg.path.parent.mkdir(parents=True)
    reg.path.write_text('{"version": 2, "projects": {}}')
    reg.path.chmod(0o600)
    with pytest.raises(RegistryError, match="newer memproxy"):
        reg.register("/srv/a")
    assert reg.path.read_text() == '{"version": 2, "projects": {}}'


def test_a_deleted_file_gets_the_names_in_use_back(reg: ProjectRegistry) -> None:
    assert reg.register("/work/api") == "api"
    reg.path.unlink()
    assert reg.register("/oss/api") != "api"
    assert {p.root: p.name for p in ProjectRegistry(reg.path).projects()}["/work/api"] == "api"


def test_the_number_of_projects_is_bounded(reg: ProjectRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "MAX_PROJECTS", 2)
    reg.register("/a")
    reg.register("/b")
    with pytest.raises(RegistryError, match="holds 2 projects"):
        reg.register("/c")


# uses


async def test_uses_are_batched_and_written_off_the_loop(reg: ProjectRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    reg = ProjectRegistry(reg.path, interval=0.05, clock=clock)
    name = await reg.name("/srv/api")
    assert reg.cached_name("/srv/api") == name == "api"
    writes: list[str] = []
    write = reg._write
    monkeypatch.setattr(reg, "_write", lambda file: (writes.append(threading.current_thread().name), write(file)))
    for tool in ("claude-code", "codex", "claude-code", "gemini-cli"):
        reg.note_use("/srv/api", tool)
        clock.now += 1
    reg.note_use("/srv/web", "codex")  # not named yet: named when written
    assert writes == []  # nothing on the spot
    await asyncio.sleep(0.3)
    assert len(writes) == 1 and writes[0] != threading.current_thread().name
    projects = {p.root: p for p in ProjectRegistry(reg.path).projects()}
    assert projects["/srv/api"].tools == {"claude-code", "codex", "gemini-cli"}
    assert (projects["/srv/api"].first_use, projects["/srv/api"].last_use) == (1000.0, 1003.0)
    assert projects["/srv/web"].name == "web" and projects["/srv/web"].tools == {"codex"}
    reg.note_use("/srv/api", "codex")  # a tool recorded, within a minute of the last use: nothing to write
    await asyncio.sleep(0.2)
    assert len(writes) == 1
    clock.now += registry.RESOLUTION
    reg.note_use("/srv/api", "codex")
    await reg.aclose()  # writes at once
    assert len(writes) == 2
    assert ProjectRegistry(reg.path).projects()[0].last_use == 1004.0 + registry.RESOLUTION


async def test_uses_that_could_not_be_written_are_kept(reg: ProjectRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    reg.register("/srv/api")
    write = reg._write
    failures = iter([OSError("disk full")])

    def flaky(file: object) -> None:
        if (e := next(failures, None)) is not None:
            raise e
        write(file)

    monkeypatch.setattr(reg, "_write", flaky)
    reg.note_use("/srv/api", "codex")
    with pytest.raises(OSError):
        reg.flush()
    assert [p.tools for p in reg.projects()] == [{"codex"}]  # shown, though not written
    reg.flush()
    assert [p.tools for p in ProjectRegistry(reg.path).projects()] == [{"codex"}]


# concurrency


def name_all(path: str, roots_list: list[str], start: multiprocessing.synchronize.Barrier, out) -> None:
    """A worker process: name `roots_list` once every worker is ready, report what it got."""
    try:
        reg = ProjectRegistry(path)
        start.wait(timeout=60)
        out.put({root: reg.register(root) for root in roots_list})
    except BaseException:
        out.put(traceback.format_exc())


def test_concurrent_processes_agree_on_distinct_names(tmp_path: Path) -> None:
    path = tmp_path / "projects.json"
    shared = [f"/w{w}/api" for w in range(8)] + [f"/w{w}/web" for w in range(4)] + ["/x/my repo", "/y/my-repo"]
    plans = [shared, shared[::-1], shared[3:] + shared[:3], [f"/own/p{i}" for i in range(10)]]
    results = race(name_all, plans, str(path))
    seen: dict[str, str] = {}
    for result in results:
        for root, name in result.items():
            assert seen.setdefault(root, name) == name, f"{root} got {name} and {seen[root]}"
    assert len(set(seen.values())) == len(seen) == len(shared) + 10
    assert sum(name == "api" for name in seen.values()) == 1
    assert {p.root: p.name for p in ProjectRegistry(path).projects()} == seen


@settings(max_examples=20, deadline=None)
@given(st.lists(roots_strategy, unique=True, max_size=12))
def test_registered_names_are_distinct_and_survive_a_reload(tmp_path_factory: pytest.TempPathFactory,
                                                            roots_list: list[str]) -> None:
    path = tmp_path_factory.mktemp("reg") / "projects.json"
    names = {root: ProjectRegistry(path).register(root) for root in roots_list}
    assert len(set(names.values())) == len(names)
    again = ProjectRegistry(path)
    assert {root: again.register(root) for root in reversed(roots_list)} == names
