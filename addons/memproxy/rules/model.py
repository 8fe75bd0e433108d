"""What rules decide about and with: the request as rules see it, the actions of a rule, the route."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mitmproxy.http import Headers

from memproxy.config import ConfigError
from memproxy.logs import Once
from memproxy.regexes import Pattern, RegexTimeout

logger = logging.getLogger(__name__)

ROUTES: tuple[str, ...] = ("passthrough", "sdk", "supermemory_router")
SDK_KEYS: tuple[str, ...] = ("model", "api_base", "api_key")
MODEL_BUDGET = 0.01  # seconds each models allow/deny regex may take on a model name


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
    also_recall: tuple[str, ...] = ()  # scope templates recalled beside the route's scope (the user scope)
    _allow: tuple[Pattern, ...] = field(init=False, repr=False, compare=False)
    _deny: tuple[Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allow", tuple(Pattern(p) for p in self.models_allow))
        object.__setattr__(self, "_deny", tuple(Pattern(p) for p in self.models_deny))

    @classmethod
    def make(cls, fields: Mapping[str, Any]) -> Actions:
        """Actions from fields as a rules file sets them: `auxiliary` turns recall and store off."""
        if fields.get("auxiliary"):
            fields = {**fields, "recall": False, "store": False}
        return cls(**fields)

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
    project: str | None = None  # the registered project of the listen port (its path)
    flow: Any = None
    projects: Any = None  # the `project` filter's ProjectNames (templates), if projects can be named
    # The texts of the body's nodes at each JSON path a rule has read (matching.Rule.captures), read once.
    texts: dict[tuple, list[str]] = field(default_factory=dict, compare=False, repr=False)

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
    """The routing decision for one request: its scope, the rule that gave it, and what to do."""

    scope: str
    rule: str | None
    is_default: bool
    matched_pattern: dict | None
    custom_header_present: bool
    actions: Actions
    captures: Mapping[str, str]
    project: str | None = None  # the root of the project the scope names
    tool: str | None = None  # the rule's tool
    layers: tuple[str, ...] = ()  # scopes recalled beside `scope` (also_recall), in order
    unresolved: str | None = None  # a working directory whose project must be looked up before matching again

    def info(self) -> dict:
        """Flat JSON for /memory-routing/info: the seed's keys, and the project, tool and layers when there are."""
        a = self.actions
        info = {
            "user_id": self.scope,  # the seed's name for the scope
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
        if self.project is not None:
            info["project"] = self.project
        if self.tool is not None:
            info["tool"] = self.tool
        if self.layers:
            info["also_recall"] = list(self.layers)
        return info
