"""Loading: YAML text to validated, compiled rules, with errors that name file, line and key path."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import regex
from mitmproxy import flowfilter

from memproxy.config import BACKENDS, MemoryConfig
from memproxy.protocols.base import INJECT_STRATEGIES, QUERY_STRATEGIES
from memproxy.regexes import Pattern, nested_repetition

from . import templates
from .matching import HeaderCondition as _Header
from .matching import Rule as _Rule
from .matching import json_path
from .model import ROUTES, SDK_KEYS, Actions
from .scopes import named_scope
from .source import KeyPath as _Path
from .source import Source
from .source import format_path as _format_path

BUILTIN_VARS = templates.BUILTIN_VARS
FILTERS = templates.FILTERS
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name or method
_HOST_GLOB = re.compile(r"[A-Za-z0-9.*?\[\]!_-]+")
# Sections of a LiteLLM config that may share the file; ignored here.
IGNORED_SECTIONS: tuple[str, ...] = (
    "model_list", "general_settings", "litellm_settings", "router_settings", "mcp_servers",
)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a rules file sets, validated and compiled."""

    default_user_id: str
    override_header: str
    defaults: Actions
    rules: tuple[_Rule, ...]
    legacy: dict[str, Any]
    memory: MemoryConfig
    allow_override: bool


def load(text: str, source: str) -> Loaded:
    """Validate and compile rules from YAML text; raises RulesError."""
    return _Loader(source).load(text)


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





def _type_name(v: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a whole number", float: "a decimal number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)


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



class _Loader(Source):
    """Turns YAML text into rules, collecting errors that name file, line and key path."""

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
                    conds.append((json_path(key), pattern))
            kw["json"] = tuple(conds)
        return kw, groups

    def template(self, path: _Path, v: Any, groups: set[str]) -> tuple[templates.Part, ...] | None:
        """A user_id template: literal text with {var|filter|...} placeholders."""
        if self.string(path, v) is None:
            return None
        if _PLACEHOLDER.sub("", v).count("{") or _PLACEHOLDER.sub("", v).count("}"):
            return self.error(path, f"unbalanced braces in template '{v}'")
        parts: list[templates.Part] = []
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

    def load(self, text: str) -> Loaded:
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
        return Loaded(named_scope(default_user_id), override_header, actions, tuple(rules), legacy, memory,
                      allow_override)



def _make_actions(kw: dict[str, Any]) -> Actions:
    if kw.get("auxiliary"):
        kw = {**kw, "recall": False, "store": False}
    return Actions(**kw)

