"""Loading: YAML text to compiled rules. The schema validates the data; its errors are reported as
`FILE:LINE: key.path: message`, at the line the YAML parser saw the key or value on."""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from memproxy.config import MemoryConfig

from . import legacy, templates
from .fields import type_name
from .matching import HeaderCondition, Rule, json_path
from .model import SDK_KEYS, Actions
from .schema import Rule as RuleEntry
from .schema import RulesDocument, Settings, duplicate_names, known_keys
from .scopes import named_scope
from .source import KeyPath, Source


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a rules file sets, validated and compiled."""

    default_scope: str
    override_header: str
    defaults: Actions
    rules: tuple[Rule, ...]
    legacy: dict[str, Any]
    memory: MemoryConfig
    allow_override: bool
    project_memory: str = "shared"


def load(text: str, source: str) -> Loaded:
    """Validate and compile rules from YAML text (`source` names it in errors); raises RulesError."""
    found = Source(source)
    data = found.parse(text)
    for path, message in duplicate_names(data):
        found.error(path, message)
    try:
        doc = RulesDocument.model_validate({} if data is None else data)
    except ValidationError as e:
        report(e, data, found)
        raise found.fail() from None
    if found.errors:  # the YAML's own (a duplicate key), or a rule name given twice
        raise found.fail()
    return compile_document(doc)


# -- errors ----------------------------------------------------------------------------------

_TYPES = {
    "bool_type": "true or false",
    "int_type": "a whole number",
    "float_type": "a number",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def report(error: ValidationError, data: Any, found: Source) -> None:
    """Record each of pydantic's errors in `found`, worded as the loader words them."""
    for e in error.errors(include_url=False):
        path, at_key = _located(e["loc"], data)
        at_key = at_key or e["type"] == "extra_forbidden"
        for below, message in _messages(e, path):
            found.error(path + below, message, at_key=at_key and not below)


def _located(loc: tuple[str | int, ...], data: Any) -> tuple[KeyPath, bool]:
    """The key path in the file of an error's location, and whether the error is about the key itself.
    Steps the file does not have are left out: a value taken as a list of one, a missing key."""
    path: KeyPath = ()
    at_key = False
    node = data
    for step in loc:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        else:
            at_key = at_key or step == "[key]"
            continue
        path += (step,)
    return path, at_key


def _messages(e: Any, path: KeyPath) -> list[tuple[KeyPath, str]]:
    kind, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
    if kind == "rules":  # ours (fields.invalid), worded already
        return list(ctx["errors"])
    if kind == "missing":
        return [((), f"missing key '{e['loc'][-1]}'")]
    if kind == "extra_forbidden":
        hint = difflib.get_close_matches(str(path[-1]), known_keys(path[:-1]), n=1)
        return [((), "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else ""))]
    if kind in _TYPES:
        return [((), f"expected {_TYPES[kind]}, got {type_name(value)}")]
    if kind == "too_short":
        return [((), "must not be an empty list" if isinstance(value, list) else "must not be empty")]
    if kind == "greater_than_equal":
        return [((), f"must not be negative, got {value}")]
    if kind == "less_than_equal":
        return [((), f"must be at most {ctx['le']}, got {value}")]
    return [((), e["msg"])]


# -- compiling -------------------------------------------------------------------------------


def compile_document(doc: RulesDocument) -> Loaded:
    """Rules from a validated document. The new format's keys win over the legacy ones."""
    base = {**legacy.retrieval_actions(doc.context_retrieval), **actions_fields(doc.defaults)}
    defaults = Actions.make(base)
    per_tool = doc.project_memory == "per_tool"
    rules = [compile_rule(f"rules[{i}]", entry, base, per_tool=per_tool) for i, entry in enumerate(doc.rules)]
    rules += legacy.header_rules(doc.user_id_mappings, defaults)
    default_scope = _last_set("default", (doc.user_id_mappings, "default_user_id"), (doc, "default_user_id"),
                              (doc, "default_scope"))
    override_header = _last_set("x-memory-user-id", (doc.user_id_mappings, "custom_header"), (doc, "override_header"))
    sm = doc.memory.supermemory
    memory = MemoryConfig(
        doc.memory.backend, doc.memory.local.path or None,
        MappingProxyType({k: getattr(sm, k) for k in type(sm).model_fields if k in sm.model_fields_set}),
    )
    return Loaded(named_scope(default_scope.strip()), override_header.lower(), defaults, tuple(rules),
                  legacy.retrieval_settings(doc.context_retrieval), memory, doc.allow_override, doc.project_memory)


def actions_fields(settings: Settings) -> dict[str, Any]:
    """The Actions fields that `settings` sets (left out: inherited)."""
    fields: dict[str, Any] = {}
    for name in settings.model_fields_set.intersection(Settings.model_fields):
        value = getattr(settings, name)
        if name == "models":
            fields.update({f"models_{k}": tuple(p.pattern for p in getattr(value, k)) for k in value.model_fields_set})
        elif name == "sdk":
            fields["sdk"] = MappingProxyType({k: getattr(value, k) for k in SDK_KEYS if k in value.model_fields_set})
        elif name == "also_recall":
            fields[name] = tuple(value)
        else:
            fields[name] = value
    return fields


def _last_set(default: str, *keys: tuple[Any, str]) -> str:
    """The value of the last of `keys` (section, key) that the file sets, else `default`."""
    for section, key in keys:
        if key in section.model_fields_set:
            default = getattr(section, key)
    return default


def compile_rule(default_name: str, entry: RuleEntry, base: dict[str, Any], *, per_tool: bool = False) -> Rule:
    """A rule entry, compiled; `base`: the Actions fields it inherits; `per_tool`: project memory per tool."""
    m = entry.match
    template = entry.scope or entry.user_id
    tool = entry.tool.strip()
    return Rule(
        name=entry.name or default_name,
        actions=Actions.make({**base, **actions_fields(entry)}),
        template=templates.parse(template) if template else None,
        tool=tool,
        silo=f"{templates.FILTERS['slug'](tool)}:" if per_tool and tool else "",
        allow_override=entry.allow_override,
        methods=frozenset(x.upper() for x in m.method),
        ports=frozenset(m.port),
        host=re.compile("|".join(fnmatch.translate(g.lower()) for g in m.host), re.IGNORECASE) if m.host else None,
        path=m.path,
        headers=tuple(HeaderCondition(name, name.lower(), t.pattern if t else None, bool(t and t.negate))
                      for name, t in m.headers.items()),
        model=m.model,
        project=m.project,
        filter=m.filter,
        body=tuple(m.body),
        json=tuple((json_path(key), pattern) for key, pattern in m.json_.items()),
    )
