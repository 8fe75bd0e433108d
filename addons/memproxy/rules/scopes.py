"""Scope names: what a rule, the default or the override header names becomes the memory scope, injectively."""

from __future__ import annotations

import hashlib
import re
import unicodedata

SCOPE_MAX = 128  # characters of a scope name
SCOPE_HASH_MARK = "~"  # never in a name kept as it is, so it marks a rewritten one
SCOPE_HASH_LEN = 16  # hex digits of SHA-256 (64 bits) ending a rewritten name
_SCOPE_CHARS = r"\w.:@/+-"  # Unicode letters and digits, '_' and these; nothing that needs quoting anywhere
_SCOPE = re.compile(f"[{_SCOPE_CHARS}]{{1,{SCOPE_MAX}}}")
_REWRITTEN_SCOPE = re.compile(
    f"[{_SCOPE_CHARS}]{{0,{SCOPE_MAX - SCOPE_HASH_LEN - 1}}}{re.escape(SCOPE_HASH_MARK)}[0-9a-f]{{{SCOPE_HASH_LEN}}}"
)
_SCOPE_INVALID = re.compile(f"[^{_SCOPE_CHARS}]")

PROJECT_PREFIX = "project:"  # a project's scope: this and the project's name (memproxy.repos.ProjectRegistry)
USER_SCOPE = "user"  # preferences that apply in every project, recalled beside a project's scope


def project_scope(name: str) -> str:
    """The scope of the project named `name` (a ProjectRegistry name: already a valid scope part)."""
    return scope_name(PROJECT_PREFIX + name)


def scope_name(value: str) -> str:
    """The scope named by `value` (a rendered scope template, the default, an override): injective.

    A name of at most SCOPE_MAX letters, digits and `_.:@/+-` is kept as it is. Any other is rewritten:
    its NFC form with each other character as '-', cut to fit, then '~' and a hash of the original,
    e.g. `claude-code:my repo` -> `claude-code:my-repo~ba42c786...`. Kept names never hold '~', rewritten
    ones always do and end in the original's hash, so two originals share a scope only if their 64-bit
    hashes collide (finding a second name for a given one takes about 2**64 hashes).
    """
    if _SCOPE.fullmatch(value):
        return value
    base = _SCOPE_INVALID.sub("-", unicodedata.normalize("NFC", value))[: SCOPE_MAX - SCOPE_HASH_LEN - 1]
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:SCOPE_HASH_LEN]
    return f"{base}{SCOPE_HASH_MARK}{digest}"


def named_scope(value: str) -> str:
    """The scope a user names directly (the default scope, the override header): a scope name as
    `scope_name` makes them (kept or rewritten) is taken as it is, any other text goes through it.
    Not for what templates render from a request: a directory named like a rewritten scope would take it."""
    return value if _SCOPE.fullmatch(value) or _REWRITTEN_SCOPE.fullmatch(value) else scope_name(value)
