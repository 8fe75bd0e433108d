"""A loaded rules file: the first matching rule routes a request; the file is reloaded when it changes."""

from __future__ import annotations

import functools
import logging
import os
import time
from types import MappingProxyType
from typing import Any

from memproxy.config import MemoryConfig
from memproxy.logs import Once
from memproxy.regexes import RegexTimeout

from . import loading, templates
from .matching import DEFAULT_BUDGET, Rule
from .model import Actions, RequestView, Route, RulesError
from .scopes import named_scope, scope_name
from .source import read_rules_file
from .templates import ProjectUnknown

logger = logging.getLogger(__name__)
_warn_once = Once(logger)

MIN_BUDGET = 0.01  # seconds matching may always take: a zero recall budget still routes


class Rules:
    """Validated, compiled memory-routing rules."""

    def __init__(
        self,
        source: str,
        default_scope: str,
        override_header: str,
        defaults: Actions,
        rules: tuple[Rule, ...],
        legacy: dict[str, Any],
        memory: MemoryConfig | None = None,
        *,
        allow_override: bool = True,
        project_memory: str = "shared",
    ) -> None:
        self.source = source
        self.project_memory = project_memory  # shared: one memory per project; per_tool: one per project and tool
        self.default_scope = default_scope  # the default scope
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
    def rules(self) -> tuple[Rule, ...]:
        """The compiled rules, in the order they are tried (the legacy `header_patterns` last)."""
        return self._rules

    @property
    def routes(self) -> frozenset[str]:
        """Every route some request can take under these rules."""
        return frozenset(rule.actions.route for rule in self._rules) | {self.defaults.route}

    @property
    def translates(self) -> bool:
        """Whether some rule maps its requests to another provider's model (litellm translates them)."""
        return any((actions.sdk or {}).get("model") for actions in (*(r.actions for r in self._rules), self.defaults))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Rules:
        """Load a rules file: a regular file (symlinks followed) of at most MAX_RULES_BYTES; raises RulesError."""
        return cls.from_text(read_rules_file(path), str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> Rules:
        """Parse rules from YAML text; raises RulesError."""
        s = loading.load(text, source)
        return cls(source, s.default_scope, s.override_header, s.defaults, s.rules, s.legacy, s.memory,
                   allow_override=s.allow_override, project_memory=s.project_memory)

    def match(self, req: RequestView, budget: float | None = None) -> Route:
        """The route for a request: first matching rule, else the default. Never raises.

        Regexes search for at most `budget` seconds in all (DEFAULT_BUDGET if None, at least MIN_BUDGET):
        a rule whose regex runs out of time does not match, and that is logged once per rule. A rule whose
        scope names a project that `req.projects` does not know yet does not match either: the route's
        `unresolved` names its working directory, to be looked up before matching again.
        """
        budget = DEFAULT_BUDGET if budget is None else budget
        try:
            return self._match(req, time.monotonic() + max(budget, MIN_BUDGET))
        except Exception as e:  # routing must never break a request
            logger.warning("memproxy: rule matching failed, using the default scope: %s", type(e).__name__)
            return Route(self.default_scope, None, True, None, False, self.defaults, {})

    def _match(self, req: RequestView, deadline: float) -> Route:
        unresolved: str | None = None
        roots: list[str] = []
        for rule in self._rules:
            try:
                caps = rule.captures(req, deadline)
                if caps is not None and (given := rule.scope(req, caps, self.default_scope, roots)) is not None:
                    break
            except RegexTimeout as e:
                _warn_once(
                    f"{self.source}\0{rule.name}",
                    "memproxy: rule %r did not match: a regex ran out of the time budget for routing: %r",
                    rule.name, e.pattern[:80],
                )
            except ProjectUnknown as e:
                unresolved = unresolved or e.path
            roots.clear()
        else:
            rule, given, caps = None, self.default_scope, {}
        scope = given
        override = req.headers.get(self.override_header)
        if isinstance(override, str) and self.allow_override and (rule is None or rule.allow_override):
            if value := override.strip():
                scope = named_scope(value)
        return Route(
            scope=scope,
            rule=rule.name if rule else None,
            is_default=rule is None,
            matched_pattern=rule.matched_pattern(req, given) if rule else None,
            custom_header_present=override is not None,
            actions=rule.actions if rule else self.defaults,
            captures=MappingProxyType(caps),
            project=roots[0] if roots else None,
            tool=rule.tool or None if rule else None,
            layers=self._layers(rule.actions if rule else self.defaults, req, caps, scope),
            unresolved=unresolved,
        )

    @staticmethod
    def _layers(actions: Actions, req: RequestView, caps: dict[str, str], scope: str) -> tuple[str, ...]:
        """The scopes `also_recall` names for this request, without `scope` and repeats; a template whose variable
        is missing (or whose project is not known) names none."""
        layers: list[str] = []
        for text in actions.also_recall:
            try:
                rendered = templates.render(_parsed(text), req, caps)
            except ProjectUnknown:
                rendered = None
            if rendered is not None and (layer := scope_name(rendered)) != scope and layer not in layers:
                layers.append(layer)
        return tuple(layers)


@functools.lru_cache(maxsize=256)
def _parsed(template: str) -> tuple[templates.Part, ...]:
    return templates.parse(template)


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
