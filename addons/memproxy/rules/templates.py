"""Scope templates: literal text with `{variable|filter|...}` placeholders, e.g. `project:{cwd|project}`.

Variables are the named groups of the rule's regexes and BUILTIN_VARS, taken from the request. The filter
`project` names the project that holds a path: the request's `projects` (a ProjectNames) knows it, or raises
ProjectUnknown for the caller to look it up off the event loop and match again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

BUILTIN_VARS: tuple[str, ...] = ("host", "path", "method", "port", "model", "project")

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SLUG_RUN = re.compile(r"[^\w.-]+")


def _basename(value: str) -> str:
    return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


FILTERS: dict[str, Callable[[str], str]] = {
    "basename": _basename,
    "slug": lambda v: _SLUG_RUN.sub("-", v.lower()).strip("-"),
    "lower": str.lower,
    "upper": str.upper,
    "hash": lambda v: hashlib.sha256(v.encode("utf-8", "surrogatepass")).hexdigest()[:12],
}

PROJECT_FILTER = "project"


class ProjectUnknown(Exception):
    """A template needs the project of `path`, which is not known yet."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class ProjectNames(Protocol):
    """What the `project` filter asks: the project holding a working directory."""

    def cached(self, path: str) -> tuple[str, str] | None:
        """(root, name) of the project holding `path`, None if `path` is no project (a client's own state
        dir); raises ProjectUnknown if not known yet. Never blocks."""


def _no_project(value: str) -> str:  # the `project` filter's place in FILTERS: `render` applies it
    raise AssertionError("the project filter is applied by render()")


FILTERS[PROJECT_FILTER] = _no_project

# A template part: literal text, or (variable, filters).
Part = str | tuple[str, tuple[Callable[[str], str], ...]]


def problems(text: str, groups: Collection[str] | None = None) -> list[str]:
    """What is wrong with template `text`, in order; its variables are checked against `groups` (and
    BUILTIN_VARS) unless `groups` is None."""
    if PLACEHOLDER.sub("", text).count("{") or PLACEHOLDER.sub("", text).count("}"):
        return [f"unbalanced braces in template '{text}'"]
    found = []
    for name, filters in _placeholders(text):
        if groups is not None and name not in groups and name not in BUILTIN_VARS:
            known = ", ".join([*sorted(groups), *BUILTIN_VARS])
            found.append(f"unknown template variable '{name}' (known here: {known})")
        found += [f"unknown template filter '{f}' (expected one of: {', '.join(FILTERS)})" for f in filters
                  if f not in FILTERS]
    return found


def _placeholders(text: str) -> list[tuple[str, list[str]]]:
    out = []
    for inner in PLACEHOLDER.findall(text):
        name, *filters = (s.strip() for s in inner.split("|"))
        out.append((name, filters))
    return out


def parse(text: str) -> tuple[Part, ...]:
    """The parts of a template that has no `problems`."""
    parts: list[Part] = []
    for i, piece in enumerate(PLACEHOLDER.split(text)):
        if i % 2 == 0:  # literal text between placeholders
            if piece:
                parts.append(piece)
            continue
        name, *filters = (s.strip() for s in piece.split("|"))
        parts.append((name, tuple(FILTERS.get(f, str) for f in filters)))
    return tuple(parts)


def render(parts: tuple[Part, ...], req: Any, caps: Mapping[str, str], roots: list[str] | None = None) -> str | None:
    """The template's text for a request (`req`: a RequestView), or None if a variable is missing or empty (or
    the `project` filter's path is no project). The roots of the projects named are appended to `roots`.
    Raises ProjectUnknown."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        name, filters = part
        value = (caps.get(name) or _builtin(req, name)).strip()
        for f in filters:
            if not value:
                break
            if f is _no_project:
                project = req.projects.cached(value) if req.projects is not None else None
                if project is None:
                    return None
                value = project[1]
                if roots is not None:
                    roots.append(project[0])
            else:
                value = f(value)
        if not value:
            return None
        out.append(value)
    return "".join(out)


def _builtin(req: Any, name: str) -> str:
    value = getattr(req, name, None) if name in BUILTIN_VARS else None
    return str(value) if value else ""
