"""Private files and directories: what memproxy writes, only its user can read.

Files are 0600 and the directories memproxy creates 0700, whatever the process umask (which is left
alone: mitmproxy writes files of its own). memproxy's own directories (platformdirs' user data,
config, state and log dirs named `memproxy`) are tightened to 0700 if they are looser; a directory
the user chose that exists already is left as it is, but memproxy's files in it are still 0600.
SQLite creates a database's -wal, -shm and -journal files with the database file's mode, so a
database is created 0600 before SQLite opens it. Loose files found on open, companions included,
are tightened, and the log says so.

A path that holds private data (the local store, the outbox, the cookie jars, the port registry and
its lock) is refused, as OpenSSH's StrictModes refuses a key file an attacker could have planted or
could read (`safe_path`: the file and every directory above it, up to the user's home, owned by the
user or root and writable by neither group nor others). The rule here, symlinks followed, so that a
symlink is judged by where it leads, and the directories of the path as given as well, so that a symlink
lying where another user could point it elsewhere is refused:

- the file, if it exists, is a regular file owned by the user;
- its directory is owned by the user or root, and no other user can write to it, sticky bit or
  not: they could plant the -wal, -shm, lock or temp files beside it;
- every directory above, up to /, is owned by the user or root, and no other user can write to it
  unless it is sticky (as /tmp is: then nobody renames or replaces what they do not own in it).
  OpenSSH refuses sticky ones too; memproxy accepts them so that a store in a private directory
  under /tmp works.

"Another user can write" means write permission for others, or for a group other than the user's
private group (a group named after the user, the user's primary group, listing no one else: the
layout Debian and Fedora give every user, with umask 002, which Debian patches OpenSSH to accept
too). Root gets no such exception. A refused path raises `UnsafePath`, a PermissionError whose
message says which rule failed; callers treat it as an unusable file: a refused local store leaves
requests without memory, a refused outbox keeps turns in memory, refused cookie jars are not saved.

Without POSIX owners (Windows) no path is refused, and a mode sets only the read-only flag.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

import platformdirs

from . import config

logger = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite's files beside a database, named after it
POSIX = os.name == "posix"


class UnsafePath(PermissionError):
    """A path memproxy refuses to keep private data at; the message says why."""


def own_dirs() -> set[str]:
    """memproxy's own default directories (real paths), which it keeps at 0700."""
    dirs = (config.data_dir(), config.config_dir(), platformdirs.user_state_path(config.APP), config.log_dir())
    return {os.path.realpath(d) for d in dirs}


def check_path(path: str | os.PathLike[str]) -> Path:
    """The real path of `path` (symlinks followed) if it is safe for private data by the module's rule.

    Directories that do not exist yet pass (memproxy creates them 0700). Raises UnsafePath.
    """
    real = Path(os.path.realpath(path))
    if not POSIX:
        return real
    uid = os.geteuid()

    def refuse(reason: str) -> UnsafePath:
        where = str(path) if os.path.abspath(path) == str(real) else f"{path} (which leads to {real})"
        return UnsafePath(f"refusing {where} for private data: {reason}")

    try:
        st = os.stat(real)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(st.st_mode):
            raise refuse("it is not a regular file")
        if st.st_uid != uid:
            raise refuse(f"it belongs to another user (uid {st.st_uid})")
    # the directories of the path as given too: whoever may write where a symlink lies may point it elsewhere
    given = Path(os.path.abspath(path)).parents
    for above, directory in [*enumerate(real.parents), *((a, d) for a, d in enumerate(given) if d not in real.parents)]:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            continue
        if st.st_uid not in (uid, 0):
            raise refuse(f"directory {directory} belongs to another user (uid {st.st_uid})")
        if _others_can_write(st) and not (above and st.st_mode & stat.S_ISVTX):
            raise refuse(f"other users can write to directory {directory} (mode {stat.S_IMODE(st.st_mode):04o})")
    return real


def private_dir(path: str | os.PathLike[str]) -> bool:
    """Create directory `path` and its missing parents, each 0700; tighten memproxy's own dirs to 0700.

    True if it created any directory.
    """
    path = Path(os.path.abspath(path))
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    made = False
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: check_path judges it
        os.chmod(directory, DIR_MODE)  # mkdir's mode went through the umask
        made = True
    _tighten_own(path)
    return made


def private_path(
    path: str | os.PathLike[str], *, create: bool = False, make_dirs: bool = True, companions: tuple[str, ...] = ()
) -> Path:
    """Make `path` ready to hold private data; its real path.

    Tightens its directory if it is one of memproxy's own, checks it (UnsafePath), creates its missing
    directories 0700 if `make_dirs` (not for a read), creates the file 0600 if `create` (for files that
    others open by name: SQLite, a lock), and tightens it and its `companions` (suffixes, such as
    SQLITE_COMPANIONS) to 0600 if they exist and are looser.
    """
    _tighten_own(Path(os.path.realpath(path)).parent)  # a looser own dir left by an existing install: tightened before it is judged
    real = check_path(path)
    if make_dirs and private_dir(real.parent):
        real = check_path(path)  # in case someone else made one of them meanwhile
    if create:
        try:
            fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
        except FileExistsError:
            pass
        else:
            _set_mode(fd, real)
            os.close(fd)
    tighten(real, companions)
    return real


def tighten(path: str | os.PathLike[str], companions: tuple[str, ...] = ()) -> list[Path]:
    """Make `path` and its `companions` (suffixes) 0600 where they exist and are looser; the ones changed.

    Says so once in the log. A companion that is not the user's own regular file is refused (UnsafePath).
    """
    if not POSIX:
        return []
    changed = []
    for name in (os.fspath(path), *(os.fspath(path) + suffix for suffix in companions)):
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise UnsafePath(f"refusing {name} for private data: it is not a regular file of this user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(name, FILE_MODE)
            changed.append(Path(name))
    if changed:
        names = [str(changed[0]), *(p.name for p in changed[1:])]
        them = "them" if changed[1:] else "it"
        logger.warning("memproxy: other users could read %s; made %s 0600", ", ".join(names), them)
    return changed


def open_private(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> IO[Any]:
    """Open `path` for writing ("w" or "wb"), truncated; a regular file is made 0600 and must be the user's own.

    For files written once at the user's request (an export, a log): their directory is not
    checked, and a FIFO or device (such as /dev/stdout) is written as it is. Raises UnsafePath.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"open_private writes only: mode {mode!r}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        st = os.fstat(fd)
        if POSIX and stat.S_ISREG(st.st_mode):
            if st.st_uid != os.geteuid():
                raise UnsafePath(f"refusing {path}: it belongs to another user (uid {st.st_uid})")
            _set_mode(fd, path)
            os.ftruncate(fd, 0)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def replace_private(path: Path, data: bytes) -> None:
    """Replace the file `path` by `data` atomically: a 0600 temp file beside it, synced, renamed over it.

    `path` is a real path that `check_path` or `private_path` gave; a reader sees the old file or the new one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_aside(path: Path) -> Path:
    """Keep a file memproxy cannot read as `<name>.bak` (replacing an older one), so that nothing of it is lost
    and the next write starts anew; its new path. A file that cannot be moved stays where it is."""
    backup = path.with_name(path.name + ".bak")
    try:
        os.replace(path, backup)
    except OSError:
        pass
    return backup


def _tighten_own(directory: Path) -> None:
    """Make `directory` 0700 if it is one of memproxy's own and looser (and this user's to change)."""
    if not POSIX or not directory.is_dir() or os.path.realpath(directory) not in own_dirs():
        return
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    if mode & 0o077:
        try:
            os.chmod(directory, DIR_MODE)
        except OSError:
            return  # not this user's: check_path refuses it if others can write to it
        logger.warning("memproxy: %s was open to other users (mode %04o); made it 0700", directory, mode)


def _set_mode(fd: int, path: str | os.PathLike[str]) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(fd, FILE_MODE)
    else:
        os.chmod(path, FILE_MODE)


def owned_by_another(path: str | os.PathLike[str]) -> bool:
    """Whether `path` (a symlink itself, not where it leads) belongs to neither the user nor root: another user made
    it. True for a path that cannot be read."""
    if not POSIX:
        return False
    try:
        return os.lstat(path).st_uid not in (os.geteuid(), 0)
    except OSError:
        return True


def _others_can_write(st: os.stat_result) -> bool:
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _private_group(st.st_gid)


@functools.cache
def _private_group(gid: int) -> bool:
    """Whether group `gid` is the user's private group: their primary group, named after them, no other members."""
    import grp
    import pwd

    uid = os.geteuid()
    if uid == 0:
        return False
    try:
        user, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except KeyError:
        return False
    return gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}
