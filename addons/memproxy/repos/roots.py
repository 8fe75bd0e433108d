"""What a project is: the repository that holds a client's working directory.

`project_root(path)` answers for a working directory as a client wrote it:
- a path in a client's own state dir (`~/.claude/`, `~/.gemini/`, `~/.codex/`, `~/.qwen/`, opencode's XDG
  dirs) is not a project: None. Clients name these dirs in their prompts beside the working directory. The
  worktrees a client makes there for the user's repositories (the Codex app's `~/.codex/worktrees/`) are;
- an absolute path that exists here: symlinks resolved, so that every path reaching one repository names it
  one way (as the port registry does), then the nearest directory, the path itself included, that holds a
  VCS marker (`.git` a file or a directory, so submodules count). The search stops below the user's home and
  `/`: a dotfiles repository in the home would otherwise be every directory's project. No marker: the
  directory itself. A git worktree (`git worktree add`, as agents make them for parallel work) is its
  repository's, the main working tree's (`_main_tree`);
- any other path (a remote or containerised client's, a relative one, a Windows path on POSIX) is not
  looked up: it is the project as written, lexically normalised (`as_written`).

It stats the file system, perhaps a network one that hangs: `lookup.Roots` runs it in a thread.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import stat

from .. import private

# A repository's root holds one of these: git (a .git file in worktrees and submodules), Mercurial,
# Sapling, Jujutsu, Subversion (1.7 on: at the root only), Bazaar/Breezy, Darcs, Pijul, Fossil (a checkout
# database file, named `_FOSSIL_` on Windows).
MARKERS: tuple[str, ...] = (".git", ".hg", ".sl", ".jj", ".svn", ".bzr", "_darcs", ".pijul", ".fslckout", "_FOSSIL_")
# Clients' own dirs under a home, where their prompts point at transcripts and temp files.
STATE_DIRS: tuple[str, ...] = (
    ".claude",  # Claude Code: projects/<encoded path>/, todos, settings
    ".gemini",  # Gemini CLI: tmp/<dirname>/, settings
    ".codex",  # Codex: sessions, config
    ".qwen",  # Qwen Code
    ".local/share/opencode",  # opencode: XDG data, state, config and cache dirs
    ".local/state/opencode",
    ".config/opencode",
    ".cache/opencode",
)
# Where clients keep worktrees of the user's repositories inside their state dirs: projects, not state.
WORKTREE_DIRS: tuple[str, ...] = (".codex/worktrees",)
# Homes as other machines and containers name them; the proxy user's own home is added.
_HOMES = (r"~", r"/root", r"/home/[^/]+", r"/var/home/[^/]+", r"/Users/[^/]+", r"[A-Za-z]:/Users/[^/]+")
_WINDOWS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")  # C:\..., C:/..., \\server\share
PATH_MAX = 4096  # characters; no working directory is longer (Linux's PATH_MAX)
GIT_FILE_MAX = PATH_MAX + 16  # bytes of a `.git` file or a worktree's `gitdir`/`commondir` file read
GIT_CONFIG_MAX = 1 << 20  # bytes of a repository's `config` read


def project_root(path: str, home: str | None = None) -> str | None:
    """The project root of working directory `path`; None if it is not a project (see the module)."""
    written = as_written(path, home)
    if written is None:
        return None
    real = _local(written)
    if real is None:
        return written
    real_home = os.path.realpath(_home(home))
    if in_state_dir(real, real_home):  # reached through a symlink
        return None
    return _nearest_root(real, real_home)


def as_written(path: str, home: str | None = None) -> str | None:
    """`path` as the client wrote it, normalised without looking at the file system: no trailing separator,
    `.` and `..` resolved; a Windows path only loses its trailing separators. None if it cannot be a
    project: empty, longer than PATH_MAX, or in a client's state dir."""
    if not path or len(path) > PATH_MAX:
        return None
    if _WINDOWS.match(path):
        written = path.rstrip("\\/")
        written = written if len(written) > 2 else path[:3]  # a drive's root keeps its separator: C:\
    else:
        written = posixpath.normpath(path)
    return None if in_state_dir(written, home) else written


def in_state_dir(path: str, home: str | None = None) -> bool:
    """Whether `path` is in a client's own state dir under a home (`home`, or as machines name theirs), by
    its text alone."""
    state, worktrees = _state_dirs(_home(home))
    path = path.replace("\\", "/")
    return state.match(path) is not None and worktrees.match(path) is None


def basename(root: str) -> str:
    """The last part of a root as written (either separator), '' for a file system's or drive's root."""
    part = root.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return "" if re.fullmatch(r"[A-Za-z]:", part) else part


def _home(home: str | None) -> str:
    return home if home is not None else os.path.expanduser("~")


@functools.lru_cache(maxsize=8)
def _state_dirs(home: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Paths in a state dir, and paths in a worktree dir (WORKTREE_DIRS)."""
    homes = "|".join([*_HOMES, re.escape(home.replace("\\", "/").rstrip("/"))])
    dirs = "|".join(re.escape(d) for d in STATE_DIRS)
    worktrees = "|".join(re.escape(d) for d in WORKTREE_DIRS)
    return re.compile(f"(?:{homes})/(?:{dirs})(?:/|$)"), re.compile(f"(?:{homes})/(?:{worktrees})/(?!\\.\\.?(?:/|$))[^/]")


def _local(written: str) -> str | None:
    """The real path of `written` if it is an absolute path that exists on this machine, else None."""
    if not os.path.isabs(written):  # relative, or a Windows path on POSIX
        return None
    try:
        real = os.path.realpath(written)
        return real if os.path.exists(real) else None
    except (OSError, ValueError):  # a loop of symlinks, a NUL character
        return None


def _nearest_root(real: str, home: str) -> str:
    """The nearest directory from `real` up that holds a marker, below `home` and `/`; else `real`. A marker that
    another user may have planted (`_planted`) is none: it would join the user's directories below it into one
    project, as git's safe.directory guards against."""
    directory = real
    while directory != home:
        parent = os.path.dirname(directory)
        if parent == directory:  # `/` or a drive's root
            break
        if any(os.path.lexists(found := os.path.join(directory, marker)) and not _planted(directory, found)
               for marker in MARKERS):
            main = _main_tree(directory)
            return main if main is not None and main != home and os.path.dirname(main) != main else directory
        directory = parent
    return real


def _main_tree(worktree: str) -> str | None:
    """The main working tree of the git repository whose linked worktree `worktree` is (`core.worktree` where the
    repository names one, as a submodule's does; a bare repository itself); None for anything else (a
    repository's own tree, a submodule, another VCS, a repository whose tree is not found).

    A worktree's `.git` is a file naming its git dir (`gitdir: <repo>/.git/worktrees/<id>`), which names the
    repository's (`commondir`) and links back to that `.git` file (`gitdir`). The git dir must be in the
    repository's `worktrees` and its link back must hold; it, the repository's git dir and its tree must be the
    user's or root's: a `.git` file anyone can write, copied into another directory, would otherwise join that
    directory to the repository's memory."""
    marker = os.path.join(worktree, ".git")
    try:
        if not os.path.isfile(marker) or os.path.islink(marker) or (gitdir := _git_dir(worktree)) is None:
            return None
        if os.path.basename(os.path.dirname(gitdir)) != "worktrees" or private.owned_by_another(gitdir):
            return None  # a submodule's, say; or one another user made
        back = _read_small(os.path.join(gitdir, "gitdir")).strip()
        if not back or os.path.realpath(os.path.join(gitdir, back)) != os.path.realpath(marker):
            return None
        common = os.path.realpath(os.path.join(gitdir, _read_small(os.path.join(gitdir, "commondir")).strip()))
    except (OSError, ValueError):  # no such file, not a regular one, unreadable, a NUL in a path
        return None
    if os.path.dirname(gitdir) != os.path.join(common, "worktrees") or not os.path.isdir(common):
        return None
    main = _tree_of(common)
    if main is None or private.owned_by_another(common) or private.owned_by_another(main):
        return None
    return main


def _tree_of(common: str) -> str | None:
    """The working tree of the git directory `common`: the directory holding it where it is a `.git`; else its
    `core.worktree`, or itself if it is bare (`core.bare`); else None (a `--separate-git-dir` repository, whose
    tree only its own `.git` file names)."""
    if os.path.basename(common) == ".git":
        return os.path.dirname(common)
    try:
        core = _core(_read_small(os.path.join(common, "config"), GIT_CONFIG_MAX))
        if worktree := core.get("worktree"):  # the tree's own `.git` must name this git dir, as a submodule's does
            tree = os.path.realpath(os.path.join(common, worktree))
            return tree if _git_dir(tree) == common else None
    except (OSError, ValueError):
        return None
    return common if core.get("bare", "").lower() in ("true", "yes", "on", "1") else None


def _git_dir(tree: str) -> str | None:
    """The git dir of the working tree `tree`: its `.git` directory, or the one its `.git` file names; real
    paths."""
    marker = os.path.join(tree, ".git")
    if os.path.isdir(marker) and not os.path.islink(marker):
        return os.path.realpath(marker)
    key, _, value = _read_small(marker).partition(":")
    return os.path.realpath(os.path.join(tree, value.strip())) if key == "gitdir" and value.strip() else None


def _core(config: str) -> dict[str, str]:
    """The `[core]` section of a git config file's text: each key (lower case) and its value, unquoted."""
    found: dict[str, str] = {}
    section = ""
    for line in config.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line[1:].partition("]")[0].strip().lower()
        elif section == "core" and line and line[0] not in "#;":
            key, has_value, value = line.partition("=")
            value = re.split(r"\s[#;]", value, maxsplit=1)[0].strip() if has_value else "true"
            found[key.strip().lower()] = value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
    return found


def _read_small(path: str, limit: int = GIT_FILE_MAX) -> str:
    """The text of the small git file `path`, at most `limit` bytes of it (a character cut there, or any that is
    not UTF-8, replaced). OSError for anything but a regular file (a FIFO would block the read)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        return f.read(limit).decode("utf-8", "replace")


def _planted(directory: str, marker: str) -> bool:
    """Whether another user may have put `marker` in `directory`: either belongs to neither the user nor root (the
    ownership git's safe.directory asks for)."""
    return private.owned_by_another(directory) or private.owned_by_another(marker)
