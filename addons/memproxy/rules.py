"""YAML memory-routing rules: load and validate `rules/memory.yaml`, match a request to a Route.

Everything is compiled at load; `Rules.match` only evaluates precompiled
conditions, cheap ones (method, port, host, path, headers) before the body.

The rules file is the user's, but what its regexes search is the client's, so nothing here may stall
the proxy: only a regular file of at most MAX_RULES_BYTES is read; YAML aliases may add at most
ALIAS_BUDGET nodes; regexes search against the request's deadline (see regexes.py); flow filters, which
mitmproxy runs with no time limit, may not search bodies or nest repetitions.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import logging
import os
import re
import stat
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import regex
import yaml
from mitmproxy import flowfilter
from mitmproxy.http import Headers

from memproxy.config import BACKENDS, ConfigError, MemoryConfig
from memproxy.logs import Once
from memproxy.protocols.base import INJECT_STRATEGIES, QUERY_STRATEGIES
from memproxy.regexes import Pattern, RegexTimeout, nested_repetition
from memproxy.wire import CREDENTIAL_HEADERS, MARK

logger = logging.getLogger(__name__)

ROUTES: tuple[str, ...] = ("passthrough", "sdk", "supermemory_router")
SDK_KEYS: tuple[str, ...] = ("model", "api_base", "api_key")
BUILTIN_VARS: tuple[str, ...] = ("host", "path", "method", "port", "model", "project")
# Sections of a LiteLLM config that may share the file; ignored here.
IGNORED_SECTIONS: tuple[str, ...] = (
    "model_list", "general_settings", "litellm_settings", "router_settings", "mcp_servers",
)

MAX_RULES_BYTES = 1024 * 1024  # a rules file is a few kB; this refuses a wrong path before reading it all
ALIAS_BUDGET = 10_000  # YAML nodes that aliases may add to the document (an alias bomb adds billions)
DEFAULT_BUDGET = 0.3  # seconds `Rules.match` may take when the caller gives no budget
MIN_BUDGET = 0.01  # seconds matching may always take: a zero recall budget still routes
MODEL_BUDGET = 0.01  # seconds each models allow/deny regex may take on a model name

SCOPE_MAX = 128  # characters of a scope name
SCOPE_HASH_MARK = "~"  # never in a name kept as it is, so it marks a rewritten one
SCOPE_HASH_LEN = 16  # hex digits of SHA-256 (64 bits) ending a rewritten name
_SCOPE_CHARS = r"\w.:@/+-"  # Unicode letters and digits, '_' and these; nothing that needs quoting anywhere
_SCOPE = re.compile(f"[{_SCOPE_CHARS}]{{1,{SCOPE_MAX}}}")
_REWRITTEN_SCOPE = re.compile(
    f"[{_SCOPE_CHARS}]{{0,{SCOPE_MAX - SCOPE_HASH_LEN - 1}}}{re.escape(SCOPE_HASH_MARK)}[0-9a-f]{{{SCOPE_HASH_LEN}}}"
)
_SCOPE_INVALID = re.compile(f"[^{_SCOPE_CHARS}]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name or method
_HOST_GLOB = re.compile(r"[A-Za-z0-9.*?\[\]!_-]+")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SLUG_RUN = re.compile(r"[^\w.-]+")


def scope_name(value: str) -> str:
    """The scope named by `value` (a rendered user_id template, the default, an override): injective.

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
    """The scope a user names directly (`default_user_id`, the override header): a scope name as
    `scope_name` makes them (kept or rewritten) is taken as it is, any other text goes through it.
    Not for what templates render from a request: a directory named like a rewritten scope would take it."""
    return value if _SCOPE.fullmatch(value) or _REWRITTEN_SCOPE.fullmatch(value) else scope_name(value)


def _basename(value: str) -> str:
    return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


FILTERS: dict[str, Callable[[str], str]] = {
    "basename": _basename,
    "slug": lambda v: _SLUG_RUN.sub("-", v.lower()).strip("-"),
    "lower": str.lower,
    "upper": str.upper,
    "hash": lambda v: hashlib.sha256(v.encode("utf-8", "surrogatepass")).hexdigest()[:12],
}


class RulesError(ConfigError):
    """Invalid rules. Each line of str(e) reads "FILE:LINE: KEY.PATH: message"."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Actions:
    """What to do with a routed request. Auxiliary requests are neither recalled nor stored."""

    recall: bool = True
    store: bool = True
    auxiliary: bool = False
    profile: bool = False  # also recall the scope's profile (Supermemory's static and dynamic facts)
    query: str = "last_user"
    inject: str = "dual"
    max_results: int = 5
    max_chars: int = 4000
    threshold: float = 0.0
    models_allow: tuple[str, ...] = ()
    models_deny: tuple[str, ...] = ()
    route: str = "passthrough"
    sdk: Mapping[str, str] | None = None
    _allow: tuple[Pattern, ...] = field(init=False, repr=False, compare=False)
    _deny: tuple[Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allow", tuple(Pattern(p) for p in self.models_allow))
        object.__setattr__(self, "_deny", tuple(Pattern(p) for p in self.models_deny))

    def allows_model(self, model: str | None) -> bool:
        """Whether recall/store apply to `model` (an unknown model fails a non-empty allow list).
        A regex that runs out of MODEL_BUDGET does not match."""
        model = model or ""
        if self._allow and not any(_model_matches(p, model) for p in self._allow):
            return False
        return not any(_model_matches(p, model) for p in self._deny)


def _model_matches(pattern: Pattern, model: str) -> bool:
    try:
        return pattern.search(model, time.monotonic() + MODEL_BUDGET) is not None
    except RegexTimeout:
        _warn_once(f"models\0{pattern.pattern}", "memproxy: a models regex ran out of time (%d ms) on a model name and"
                   " does not match: %r", MODEL_BUDGET * 1000, pattern.pattern[:80])
        return False


_warn_once = Once(logger)


@dataclass(frozen=True, slots=True)
class RequestView:
    """What rules look at. Plain-dict headers are lower-cased for case-insensitive lookup."""

    method: str = "GET"
    host: str = ""
    path: str = "/"
    port: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    raw_body: str | None = None
    model: str | None = None
    project: str | None = None
    flow: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", plain_headers(self.headers))


class HeaderDict(dict[str, str]):
    """Request headers as a plain dict with lower-case names (what `plain_headers` returns)."""


def plain_headers(headers: Mapping[str, str] | None) -> HeaderDict:
    """Headers as a plain dict with lower-case names (repeats joined with ", ", as mitmproxy joins them):
    a rule set looks headers up a few dozen times per request, and mitmproxy's Headers lookups are slow."""
    if isinstance(headers, HeaderDict):
        return headers
    if isinstance(headers, Headers):
        plain = HeaderDict()
        for raw_name, raw_value in headers.fields:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("utf-8", "surrogateescape")
            plain[name] = f"{plain[name]}, {value}" if name in plain else value
        return plain
    return HeaderDict((str(k).lower(), v) for k, v in (headers or {}).items())


@dataclass(frozen=True, slots=True)
class Route:
    """The routing decision for one request."""

    user_id: str
    rule: str | None
    is_default: bool
    matched_pattern: dict | None
    custom_header_present: bool
    actions: Actions
    captures: Mapping[str, str]

    def info(self) -> dict:
        """Flat JSON for /memory-routing/info."""
        a = self.actions
        return {
            "user_id": self.user_id,
            "matched_pattern": self.matched_pattern,
            "rule": self.rule,
            "is_default": self.is_default,
            "custom_header_present": self.custom_header_present,
            "recall": a.recall,
            "store": a.store,
            "auxiliary": a.auxiliary,
            "query": a.query,
            "inject": a.inject,
            "route": a.route,
        }


# --- compiled rules -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Header:
    name: str  # as written
    key: str  # lower-cased, for lookup
    pattern: Pattern | None  # None: the header must be absent
    negate: bool  # "!regex": must not match (absent is fine)


# A template part: literal text, or (variable, filters).
_Part = str | tuple[str, tuple[Callable[[str], str], ...]]
# A JSON path segment: "*" or (key, index-or-None).
_Seg = str | tuple[str, int | None]


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    actions: Actions
    template: tuple[_Part, ...] | None = None  # None: the default user id
    allow_override: bool = True
    methods: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()
    host: re.Pattern[str] | None = None  # globs, translated by fnmatch: no user regex
    path: Pattern | None = None
    headers: tuple[_Header, ...] = ()
    model: Pattern | None = None
    project: Pattern | None = None
    filter: Callable[[Any], bool] | None = None
    body: tuple[Pattern, ...] = ()
    json: tuple[tuple[tuple[_Seg, ...], Pattern], ...] = ()

    def captures(self, req: RequestView, deadline: float | None = None) -> dict[str, str] | None:
        """The named groups captured if every condition holds, else None. Regexes search until `deadline`
        (`time.monotonic()` seconds; default DEFAULT_BUDGET from now), then raise RegexTimeout."""
        if deadline is None:
            deadline = time.monotonic() + DEFAULT_BUDGET
        caps: dict[str, str] = {}
        if self.methods and (req.method or "").upper() not in self.methods:
            return None
        if self.ports and req.port not in self.ports:
            return None
        if self.host and not self.host.match(req.host or ""):
            return None
        if self.path and not _search(self.path, req.path, caps, deadline):
            return None
        for h in self.headers:
            value = req.headers.get(h.key)
            if h.pattern is None:
                ok = value is None
            elif h.negate:
                ok = not isinstance(value, str) or not h.pattern.search(value, deadline)
            else:
                ok = _search(h.pattern, value, caps, deadline)
            if not ok:
                return None
        if self.model and not _search(self.model, req.model, caps, deadline):
            return None
        if self.project and not _search(self.project, req.project, caps, deadline):
            return None
        if self.filter and (req.flow is None or not self.filter(req.flow)):
            return None
        for pattern in self.body:
            if not _search(pattern, req.raw_body, caps, deadline):
                return None
        for segs, pattern in self.json:
            if not any(_search(pattern, _text(node), caps, deadline) for node in _walk(req.body, segs)):
                return None
        return caps

    def user_id(self, req: RequestView, caps: Mapping[str, str], default: str) -> str | None:
        """The rendered user id, or None if a template variable is missing or empty."""
        if self.template is None:
            return default
        out = []
        for part in self.template:
            if isinstance(part, str):
                out.append(part)
                continue
            name, filters = part
            value = (caps.get(name) or _builtin(req, name)).strip()
            for f in filters:
                value = f(value) if value else value
            if not value:
                return None
            out.append(value)
        return scope_name("".join(out))

    def matched_pattern(self, req: RequestView, user_id: str) -> dict | None:
        """The first header condition that had to match, as the legacy info endpoint showed it."""
        for h in self.headers:
            if h.pattern is not None and not h.negate:
                value = MARK if h.key in CREDENTIAL_HEADERS else req.headers.get(h.key)
                return {"header": h.name, "value": value, "pattern": h.pattern.pattern, "user_id": user_id}
        return None


def _search(pattern: Pattern, text: Any, caps: dict[str, str], deadline: float) -> bool:
    if not isinstance(text, str):
        return False
    m = pattern.search(text, deadline)
    if m is None:
        return False
    for k, v in m.groupdict().items():
        if v is not None:
            caps.setdefault(k, v)
    return True


def _builtin(req: RequestView, name: str) -> str:
    value = getattr(req, name, None) if name in BUILTIN_VARS else None
    return str(value) if value else ""


def _walk(node: Any, segs: tuple[_Seg, ...]) -> Iterator[Any]:
    """The nodes a JSON path selects, lazily."""
    if not segs:
        yield node
        return
    seg, rest = segs[0], segs[1:]
    if seg == "*":
        children: Any = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    elif isinstance(node, dict):
        children = (node[seg[0]],) if seg[0] in node else ()
    elif isinstance(node, list) and seg[1] is not None and -len(node) <= seg[1] < len(node):
        children = (node[seg[1]],)
    else:
        children = ()
    for child in children:
        yield from _walk(child, rest)


def _text(node: Any) -> str:
    """All string leaves under `node` joined by newlines; other scalars as compact JSON."""
    out: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, str):
            out.append(n)
        elif isinstance(n, dict):
            stack.extend(reversed(list(n.values())))
        elif isinstance(n, list):
            stack.extend(reversed(n))
        else:
            out.append(json.dumps(n))
    return "\n".join(out)


# --- loading and validation -----------------------------------------------------------------

_ACTION_KEYS = (
    "recall", "store", "auxiliary", "profile", "query", "inject", "max_results", "max_chars", "threshold",
    "models", "route", "sdk",
)
_RULE_KEYS = ("name", "match", "user_id", "allow_override", *_ACTION_KEYS)
_MATCH_KEYS = ("filter", "host", "path", "method", "port", "headers", "body", "json", "model", "project")
_TOP_KEYS = (
    "version", "default_user_id", "override_header", "allow_override", "defaults", "rules",
    "user_id_mappings", "context_retrieval", "memory", *IGNORED_SECTIONS,
)
_MEMORY_KEYS = ("backend", "local", "supermemory")
_SUPERMEMORY_KEYS = ("api_key", "base_url", "search_mode", "container_tag")
_LEGACY_MAPPING_KEYS = ("custom_header", "header_patterns", "default_user_id")
_LEGACY_PATTERN_KEYS = ("header", "pattern", "user_id")
# context_retrieval key -> Actions field (enabled_for_models, api_key, container_tag: by hand)
_LEGACY_ACTIONS = {
    "enabled": "recall",
    "query_strategy": "query",
    "injection_strategy": "inject",
    "max_context_length": "max_chars",
    "max_results": "max_results",
}
_LEGACY_RETRIEVAL_KEYS = (*_LEGACY_ACTIONS, "enabled_for_models", "api_key", "container_tag")

_Path = tuple[str | int, ...]


def _format_path(path: _Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _type_name(v: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a whole number", float: "a decimal number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)


def _alias_problem(root: yaml.Node) -> tuple[int, str | None]:
    """(line, why) if aliases make the node graph under `root` too big to expand, or cyclic; else (1, None).

    Each node's expanded size is counted once (memoised), so this costs the graph's size, not its expansion
    (sizes grow exponentially with alias levels: Python's integers hold them, a few digits a level).
    """
    sizes: dict[int, int] = {}  # id(node) -> nodes in its expansion; -1 while being counted
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        children = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) \
            else node.value if isinstance(node, yaml.SequenceNode) else ()
        if expanded:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            continue
        if id(node) in sizes:
            if sizes[id(node)] < 0:  # reached again before its expansion finished: it holds itself
                return node.start_mark.line + 1, "an alias refers to a node that holds it (recursive alias)"
            continue
        sizes[id(node)] = -1
        stack.append((node, True))
        stack.extend((c, False) for c in children if sizes.get(id(c), 0) <= 0)
    added = sizes[id(root)] - len(sizes)
    if added > ALIAS_BUDGET:
        return 1, f"aliases expand the document by more than {ALIAS_BUDGET} nodes (refused: an alias bomb?)"
    return 1, None


_BODY_FILTERS = ("b", "bq", "bs")


def _filter_problem(node: Any) -> str | None:
    """Why a compiled flow filter is refused, or None. mitmproxy runs its regexes with `re` and no time
    limit: refuse those that search bodies (megabytes, and every WebSocket message so far) and those
    with nested repetition; the conditions of `match` do the same work within the request's deadline."""
    code, expr = getattr(node, "code", None), getattr(node, "expr", None)
    if code in _BODY_FILTERS:
        return f"~{code} searches bodies with no time limit; use the rule's 'body' or 'json' conditions"
    if isinstance(expr, str) and nested_repetition(expr):
        return (f"~{code} {expr!r}: a repetition inside a repetition can take exponential time, and filters"
                " have no time limit; use the rule's host, path or headers conditions")
    for child in (*getattr(node, "lst", ()), *filter(None, [getattr(node, "itm", None)])):
        if (problem := _filter_problem(child)) is not None:
            return problem
    return None


class _Loader:
    """Turns YAML text into rules, collecting errors that name file, line and key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[tuple[int, str]] = []
        self.lines: dict[_Path, tuple[int, int]] = {}  # path -> (line of key, line of value)

    def error(self, path: _Path, message: str, *, at_key: bool = False, line: int | None = None) -> None:
        """Record an error; returns None so checkers can `return self.error(...)`."""
        line = line or self._line(path, at_key)
        where = f"{_format_path(path)}: " if path else ""
        self.errors.append((line, f"{self.source}:{line}: {where}{message}"))

    def _line(self, path: _Path, at_key: bool) -> int:
        while path not in self.lines and path:
            path, at_key = path[:-1], False
        key_line, value_line = self.lines.get(path, (1, 1))
        return key_line if at_key else value_line

    def fail(self) -> RulesError:
        return RulesError([msg for _, msg in sorted(self.errors, key=lambda e: e[0])])

    # -- YAML to plain data, remembering lines --

    def parse(self, text: str) -> Any:
        """Plain data from YAML text, remembering every key's and value's line."""
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()  # aliases are shared nodes here: composing costs the text's size
            if node is None:
                return None
            line, problem = _alias_problem(node)
            if not problem:
                return self._data(loader, node, (), 1)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, problem = (mark.line + 1 if mark else 1), " ".join(filter(None, (e.context, e.problem)))
        except yaml.YAMLError as e:
            line, problem = 1, str(e)
        except RecursionError:
            line, problem = 1, "nested too deeply"
        finally:
            loader.dispose()
        raise RulesError([f"{self.source}:{line}: invalid YAML: {problem}"])

    def _data(self, loader: yaml.SafeLoader, node: yaml.Node, path: _Path, key_line: int) -> Any:
        self.lines[path] = (key_line, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)
            out: dict[str, Any] = {}
            for k, v in node.value:
                line = k.start_mark.line + 1
                if not isinstance(k, yaml.ScalarNode):
                    self.error(path, "keys must be plain strings", line=line)
                    continue
                key = k.value
                if key in out:
                    first = self.lines[path + (key,)][0]
                    self.error(path + (key,), f"duplicate key (first at line {first})", line=line)
                    continue
                out[key] = self._data(loader, v, path + (key,), line)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._data(loader, v, path + (i,), v.start_mark.line + 1) for i, v in enumerate(node.value)]
        try:
            return loader.construct_object(node)
        except ValueError as e:  # e.g. a date out of range, an integer of more than 4300 digits
            return self.error(path, f"invalid value: {e}")

    # -- typed checkers: return the checked value, or None after recording an error --

    def mapping(self, path: _Path, v: Any, keys: tuple[str, ...], *, empty_ok: bool = True) -> dict | None:
        if v is None and empty_ok:
            return {}
        if not isinstance(v, dict):
            return self.error(path, f"expected a mapping, got {_type_name(v)}")
        for k in v:
            if k not in keys:
                hint = difflib.get_close_matches(k, keys, n=1)
                self.error(path + (k,), "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else ""),
                           at_key=True)
        return v

    def table(self, path: _Path, v: Any) -> dict | None:
        """A non-empty mapping with free-form keys."""
        if not isinstance(v, dict):
            return self.error(path, f"expected a mapping, got {_type_name(v)}")
        if not v:
            return self.error(path, "must not be empty")
        return v

    def string(self, path: _Path, v: Any, *, nonempty: bool = True) -> str | None:
        if not isinstance(v, str):
            return self.error(path, f"expected a string, got {_type_name(v)}")
        if nonempty and not v.strip():
            return self.error(path, "must not be empty")
        return v

    def items(self, path: _Path, v: Any) -> list[tuple[_Path, Any]]:
        """A value or a non-empty list of values, each with its own path."""
        items = [(path + (i,), x) for i, x in enumerate(v)] if isinstance(v, list) else [(path, v)]
        if not items:
            self.error(path, "must not be an empty list")
        return items

    def strings(self, path: _Path, v: Any) -> list[tuple[_Path, str]]:
        """A string or a list of strings, each with its own path."""
        return [(p, x) for p, x in self.items(path, v) if self.string(p, x) is not None]

    def boolean(self, path: _Path, v: Any) -> bool | None:
        if not isinstance(v, bool):
            return self.error(path, f"expected true or false, got {_type_name(v)}")
        return v

    def integer(self, path: _Path, v: Any, maximum: int | None = None) -> int | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return self.error(path, f"expected a whole number, got {_type_name(v)}")
        if v < 0:
            return self.error(path, f"must not be negative, got {v}")
        if maximum is not None and v > maximum:
            return self.error(path, f"must be at most {maximum}, got {v}")
        return v

    def fraction(self, path: _Path, v: Any) -> float | None:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return self.error(path, f"expected a number, got {_type_name(v)}")
        if not 0 <= v <= 1:
            return self.error(path, f"must be between 0 and 1, got {v}")
        return float(v)

    def choice(self, path: _Path, v: Any, choices: tuple[str, ...], what: str) -> str | None:
        if self.string(path, v) is None:
            return None
        if v not in choices:
            hint = difflib.get_close_matches(v, choices, n=1)
            extra = f"did you mean '{hint[0]}'? " if hint else ""
            return self.error(path, f"unknown {what} '{v}' ({extra}expected one of: {', '.join(choices)})")
        return v

    def regex(self, path: _Path, v: Any) -> Pattern | None:
        if self.string(path, v, nonempty=False) is None:
            return None
        try:
            return Pattern(v)
        except (regex.error, re.error, OverflowError, RecursionError) as e:
            return self.error(path, f"invalid regex '{v}': {getattr(e, 'msg', None) or e}")

    def token(self, path: _Path, v: Any, what: str) -> str | None:
        if self.string(path, v) is None:
            return None
        if not _TOKEN.fullmatch(v):
            return self.error(path, f"invalid {what} '{v}'")
        return v

    # -- sections --

    def actions(self, path: _Path, m: dict, names: Mapping[str, str]) -> dict[str, Any]:
        """Actions fields set in mapping `m`; `names` maps its keys to Actions fields."""
        kw: dict[str, Any] = {}
        for key, name in names.items():
            if key not in m:
                continue
            p, v = path + (key,), m[key]
            if name in ("recall", "store", "auxiliary", "profile"):
                value = self.boolean(p, v)
            elif name == "query":
                value = self.choice(p, v, QUERY_STRATEGIES, "query strategy")
            elif name == "inject":
                value = self.choice(p, v, INJECT_STRATEGIES, "injection strategy")
            elif name == "route":
                value = self.choice(p, v, ROUTES, "route")
            elif name in ("max_results", "max_chars"):
                value = self.integer(p, v)
            elif name == "threshold":
                value = self.fraction(p, v)
            elif name == "models":
                models = self.mapping(p, v, ("allow", "deny")) or {}
                for sub in ("allow", "deny"):
                    if sub in models:
                        items = self.strings(p + (sub,), models[sub])
                        kw[f"models_{sub}"] = tuple(x for q, x in items if self.regex(q, x) is not None)
                continue
            else:  # sdk
                sdk = self.mapping(p, v, SDK_KEYS, empty_ok=False)
                value = None
                if sdk is not None:
                    value = MappingProxyType({k: x for k, x in sdk.items() if self.string(p + (k,), x) is not None})
            if value is not None:
                kw[name] = value
        return kw

    def match(self, path: _Path, m: dict) -> tuple[dict[str, Any], set[str]]:
        """_Rule keyword arguments for a `match:` mapping, and the named groups it captures."""
        kw: dict[str, Any] = {}
        groups: set[str] = set()

        def capture(p: _Path, v: Any) -> Pattern | None:
            pattern = self.regex(p, v)
            if pattern is not None:
                groups.update(pattern.groupindex)
            return pattern

        if "filter" in m and self.string(path + ("filter",), m["filter"]) is not None:
            try:
                compiled = flowfilter.parse(m["filter"])
            except ValueError as e:
                cause = f": {e.__cause__}" if e.__cause__ else ""
                self.error(path + ("filter",), f"invalid filter expression '{m['filter']}'{cause}")
            else:
                if (problem := _filter_problem(compiled)) is None:
                    kw["filter"] = compiled
                else:
                    self.error(path + ("filter",), f"filter '{m['filter']}': {problem}")
        if "host" in m:
            globs = []
            for p, g in self.strings(path + ("host",), m["host"]):
                if _HOST_GLOB.fullmatch(g):
                    globs.append(fnmatch.translate(g.lower()))
                else:
                    self.error(p, f"invalid host glob '{g}'")
            if globs:
                kw["host"] = re.compile("|".join(globs), re.IGNORECASE)
        for key in ("path", "model", "project"):
            if key in m and (pattern := capture(path + (key,), m[key])) is not None:
                kw[key] = pattern
        if "method" in m:
            items = self.strings(path + ("method",), m["method"])
            kw["methods"] = frozenset(x.upper() for p, x in items if self.token(p, x, "method"))
        if "port" in m:
            items = self.items(path + ("port",), m["port"])
            kw["ports"] = frozenset(x for p, x in items if self.integer(p, x, 65535) is not None)
        if "headers" in m and (headers := self.table(path + ("headers",), m["headers"])):
            conds = []
            for name, v in headers.items():
                p = path + ("headers", name)
                if not _TOKEN.fullmatch(name):
                    self.error(p, f"invalid header name '{name}'", at_key=True)
                elif v is None:
                    conds.append(_Header(name, name.lower(), None, False))
                elif isinstance(v, str) and v.startswith("!"):
                    if (pattern := self.regex(p, v[1:])) is not None:
                        conds.append(_Header(name, name.lower(), pattern, True))
                elif (pattern := capture(p, v)) is not None:
                    conds.append(_Header(name, name.lower(), pattern, False))
            kw["headers"] = tuple(conds)
        if "body" in m:
            kw["body"] = tuple(x for p, v in self.strings(path + ("body",), m["body"]) if (x := capture(p, v)))
        if "json" in m and (paths := self.table(path + ("json",), m["json"])):
            conds = []
            for key, v in paths.items():
                p = path + ("json", key)
                parts = key.split(".")
                if "" in parts:
                    self.error(p, f"invalid JSON path '{key}': empty segment", at_key=True)
                elif (pattern := capture(p, v)) is not None:
                    segs = tuple(s if s == "*" else (s, int(s) if re.fullmatch(r"-?\d+", s) else None) for s in parts)
                    conds.append((segs, pattern))
            kw["json"] = tuple(conds)
        return kw, groups

    def template(self, path: _Path, v: Any, groups: set[str]) -> tuple[_Part, ...] | None:
        """A user_id template: literal text with {var|filter|...} placeholders."""
        if self.string(path, v) is None:
            return None
        if _PLACEHOLDER.sub("", v).count("{") or _PLACEHOLDER.sub("", v).count("}"):
            return self.error(path, f"unbalanced braces in template '{v}'")
        parts: list[_Part] = []
        valid = True
        for i, text in enumerate(_PLACEHOLDER.split(v)):
            if i % 2 == 0:  # literal text between placeholders
                if text:
                    parts.append(text)
                continue
            name, *filters = (s.strip() for s in text.split("|"))
            if name not in groups and name not in BUILTIN_VARS:
                valid = False
                known = ", ".join([*sorted(groups), *BUILTIN_VARS])
                self.error(path, f"unknown template variable '{name}' (known here: {known})")
            for f in filters:
                if f not in FILTERS:
                    valid = False
                    self.error(path, f"unknown template filter '{f}' (expected one of: {', '.join(FILTERS)})")
            parts.append((name, tuple(FILTERS.get(f, str) for f in filters)))
        return tuple(parts) if valid else None

    def rule(self, path: _Path, v: Any, base: dict[str, Any]) -> _Rule | None:
        m = self.mapping(path, v, _RULE_KEYS, empty_ok=False)
        if m is None:
            return None
        name = self.string(path + ("name",), m["name"]) if "name" in m else _format_path(path)
        conditions = self.mapping(path + ("match",), m.get("match"), _MATCH_KEYS) or {}
        kw, groups = self.match(path + ("match",), conditions)
        if "user_id" in m:
            kw["template"] = self.template(path + ("user_id",), m["user_id"], groups)
        if "allow_override" in m:
            kw["allow_override"] = self.boolean(path + ("allow_override",), m["allow_override"])
        actions = self.actions(path, m, {k: k for k in _ACTION_KEYS})
        return _Rule(name=name or "", actions=_make_actions({**base, **actions}), **kw)

    def memory(self, path: _Path, v: Any) -> MemoryConfig:
        """The `memory:` section."""
        m = self.mapping(path, v, _MEMORY_KEYS) or {}
        backend = self.choice(path + ("backend",), m["backend"], BACKENDS, "backend") if "backend" in m else None
        local = self.mapping(path + ("local",), m.get("local"), ("path",)) or {}
        local_path = self.string(path + ("local", "path"), local["path"]) if "path" in local else None
        sm = self.mapping(path + ("supermemory",), m.get("supermemory"), _SUPERMEMORY_KEYS) or {}
        settings = {k: x for k, x in sm.items() if self.string(path + ("supermemory", k), x) is not None}
        if (tag := settings.get("container_tag")) is not None:
            if tag.count("{scope}") > 1 or _PLACEHOLDER.sub("", tag.replace("{scope}", "")) != tag.replace("{scope}", ""):
                self.error(path + ("supermemory", "container_tag"), "the only placeholder allowed is {scope}, once")
            elif not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", tag.replace("{scope}", "")):
                self.error(
                    path + ("supermemory", "container_tag"),
                    f"invalid container tag {tag!r}: Supermemory allows ASCII letters, digits, '_', '.' and '-'"
                    " (at most 100 characters); other characters of the scope are rewritten, with a hash",
                )
        return MemoryConfig(backend or "auto", local_path, MappingProxyType(settings))

    def legacy_rules(self, path: _Path, v: Any, defaults: Actions) -> list[_Rule]:
        """`header_patterns: [{header, pattern, user_id}]` of the earlier implementation."""
        if not isinstance(v, list):
            self.error(path, f"expected a list, got {_type_name(v)}")
            return []
        rules = []
        for i, item in enumerate(v):
            p = path + (i,)
            m = self.mapping(p, item, _LEGACY_PATTERN_KEYS, empty_ok=False)
            if m is None:
                continue
            missing = [key for key in _LEGACY_PATTERN_KEYS if key not in m]
            for key in missing:
                self.error(p, f"missing key '{key}'")
            if missing:
                continue
            header = self.token(p + ("header",), m["header"], "header name")
            pattern = self.regex(p + ("pattern",), m["pattern"])
            user_id = self.string(p + ("user_id",), m["user_id"])
            if header and pattern and user_id:
                rules.append(_Rule(
                    name=f"header_patterns[{i}]", actions=defaults, template=(user_id,),
                    headers=(_Header(header, header.lower(), pattern, False),),
                ))
        return rules

    def legacy_retrieval(self, path: _Path, v: Any, legacy: dict[str, Any]) -> dict[str, Any]:
        """`context_retrieval:` of the earlier implementation, as Actions fields."""
        m = self.mapping(path, v, _LEGACY_RETRIEVAL_KEYS)
        if m is None:
            return {}
        kw = self.actions(path, m, _LEGACY_ACTIONS)
        if "enabled_for_models" in m:
            items = self.strings(path + ("enabled_for_models",), m["enabled_for_models"])
            kw["models_allow"] = tuple(f"^{re.escape(x)}$" for _, x in items)
        for key in ("api_key", "container_tag"):
            if key in m and self.string(path + (key,), m[key]) is not None:
                legacy[key] = m[key]
        return kw

    def load(self, text: str) -> Rules:
        doc = self.mapping((), self.parse(text), _TOP_KEYS)
        if doc is None:
            raise self.fail()
        if "version" in doc and (doc["version"] != 1 or isinstance(doc["version"], bool)):
            self.error(("version",), f"unsupported version {doc['version']!r} (expected 1)")
        mappings = self.mapping(("user_id_mappings",), doc.get("user_id_mappings"), _LEGACY_MAPPING_KEYS) or {}
        legacy: dict[str, Any] = {}
        base = self.legacy_retrieval(("context_retrieval",), doc["context_retrieval"], legacy) \
            if "context_retrieval" in doc else {}
        defaults = self.mapping(("defaults",), doc.get("defaults"), _ACTION_KEYS) or {}
        base.update(self.actions(("defaults",), defaults, {k: k for k in _ACTION_KEYS}))

        # New-format keys win over the legacy ones.
        default_user_id = "default"
        for section, path in ((mappings, ("user_id_mappings", "default_user_id")), (doc, ("default_user_id",))):
            if path[-1] in section and (value := self.string(path, section[path[-1]])) is not None:
                default_user_id = value.strip()
        override_header = "x-memory-user-id"
        for section, path in ((mappings, ("user_id_mappings", "custom_header")), (doc, ("override_header",))):
            if path[-1] in section and (value := self.token(path, section[path[-1]], "header name")):
                override_header = value.lower()
        allow_override = True
        if "allow_override" in doc and (value := self.boolean(("allow_override",), doc["allow_override"])) is not None:
            allow_override = value

        rules: list[_Rule] = []
        items = doc.get("rules")
        if items is not None and not isinstance(items, list):
            self.error(("rules",), f"expected a list, got {_type_name(items)}")
        seen: dict[str, int] = {}
        for i, item in enumerate(items if isinstance(items, list) else []):
            if (rule := self.rule(("rules", i), item, base)) is None:
                continue
            if rule.name in seen:
                self.error(("rules", i, "name"), f"duplicate rule name '{rule.name}' (also rules[{seen[rule.name]}])")
            seen.setdefault(rule.name, i)
            rules.append(rule)
        memory = self.memory(("memory",), doc["memory"]) if "memory" in doc else MemoryConfig()
        actions = _make_actions(base)
        if "header_patterns" in mappings:
            rules += self.legacy_rules(("user_id_mappings", "header_patterns"), mappings["header_patterns"], actions)
        if self.errors:
            raise self.fail()
        return Rules(
            self.source, named_scope(default_user_id), override_header, actions, tuple(rules), legacy, memory,
            allow_override=allow_override,
        )


def _make_actions(kw: dict[str, Any]) -> Actions:
    if kw.get("auxiliary"):
        kw = {**kw, "recall": False, "store": False}
    return Actions(**kw)


class Rules:
    """Validated, compiled memory-routing rules."""

    def __init__(
        self,
        source: str,
        default_user_id: str,
        override_header: str,
        defaults: Actions,
        rules: tuple[_Rule, ...],
        legacy: dict[str, Any],
        memory: MemoryConfig | None = None,
        *,
        allow_override: bool = True,
    ) -> None:
        self.source = source
        self.default_user_id = default_user_id
        self.override_header = override_header
        self.allow_override = allow_override  # False: the override header names no scope, whatever the rule
        self.defaults = defaults
        self.legacy = legacy  # api_key (usually an os.environ/ reference), container_tag
        self.memory = memory or MemoryConfig(supermemory=MappingProxyType(
            {"api_key": legacy["api_key"]} if "api_key" in legacy else {}
        ))
        self._rules = rules
        # Whether any rule has `body:` regexes; if not, callers need not decode bodies to text.
        self.reads_raw_body = any(rule.body for rule in rules)

    @property
    def routes(self) -> frozenset[str]:
        """Every route some request can take under these rules."""
        return frozenset(rule.actions.route for rule in self._rules) | {self.defaults.route}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Rules:
        """Load a rules file: a regular file (symlinks followed) of at most MAX_RULES_BYTES; raises RulesError."""
        return cls.from_text(read_rules_file(path), str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> Rules:
        """Parse rules from YAML text; raises RulesError."""
        return _Loader(source).load(text)

    def match(self, req: RequestView, budget: float | None = None) -> Route:
        """The route for a request: first matching rule, else the default. Never raises.

        Regexes search for at most `budget` seconds in all (DEFAULT_BUDGET if None, at least MIN_BUDGET):
        a rule whose regex runs out of time does not match, and that is logged once per rule.
        """
        budget = DEFAULT_BUDGET if budget is None else budget
        try:
            return self._match(req, time.monotonic() + max(budget, MIN_BUDGET))
        except Exception as e:  # routing must never break a request
            logger.warning("memproxy: rule matching failed, using the default user id: %s", type(e).__name__)
            return Route(self.default_user_id, None, True, None, False, self.defaults, {})

    def _match(self, req: RequestView, deadline: float) -> Route:
        for rule in self._rules:
            try:
                caps = rule.captures(req, deadline)
            except RegexTimeout as e:
                _warn_once(
                    f"{self.source}\0{rule.name}",
                    "memproxy: rule %r did not match: a regex ran out of the time budget for routing: %r",
                    rule.name, e.pattern[:80],
                )
                continue
            if caps is not None and (user_id := rule.user_id(req, caps, self.default_user_id)) is not None:
                break
        else:
            rule, user_id, caps = None, self.default_user_id, {}
        route_user_id = user_id
        override = req.headers.get(self.override_header)
        if isinstance(override, str) and self.allow_override and (rule is None or rule.allow_override):
            if value := override.strip():
                route_user_id = named_scope(value)
        return Route(
            user_id=route_user_id,
            rule=rule.name if rule else None,
            is_default=rule is None,
            matched_pattern=rule.matched_pattern(req, user_id) if rule else None,
            custom_header_present=override is not None,
            actions=rule.actions if rule else self.defaults,
            captures=MappingProxyType(caps),
        )


def read_rules_file(path: str | os.PathLike[str]) -> str:
    """The text of a rules file; RulesError unless it is a regular file (a symlink to one is fine) of at
    most MAX_RULES_BYTES of UTF-8. Opened non-blocking: a FIFO put in its place must not hang the reader."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise RulesError([f"{path}: cannot read rules file: {e.strerror or e}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RulesError([f"{path}: cannot read rules file: not a regular file"])
        if st.st_size > MAX_RULES_BYTES:
            raise RulesError([f"{path}: cannot read rules file: {st.st_size} bytes, more than {MAX_RULES_BYTES}"])
        chunks, size = [], 0
        while size <= MAX_RULES_BYTES and (chunk := os.read(fd, MAX_RULES_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise RulesError([f"{path}: cannot read rules file: {e.strerror or e}"]) from None
    finally:
        os.close(fd)
    if size > MAX_RULES_BYTES:  # it grew while being read
        raise RulesError([f"{path}: cannot read rules file: more than {MAX_RULES_BYTES} bytes"])
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RulesError([f"{path}: cannot read rules file: not UTF-8 text ({e.reason} at byte {e.start})"]) from None


class RulesFile:
    """A rules file, reloaded by `check()` when it changes; a bad edit keeps the last good rules."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self._stamp = self._stat()
        self.rules = Rules.load(path)  # raises RulesError: there are no last good rules yet

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size  # a file replaced by another counts as changed

    def check(self) -> tuple[bool, str | None]:
        """Reload if the file changed: (True, None) on a reload, (False, why) on a bad edit,
        (False, None) if unchanged. Blocking: run it in a worker thread."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False, None
        self._stamp = stamp
        try:
            self.rules = Rules.load(self.path)
        except RulesError as e:
            return False, str(e)
        return True, None
