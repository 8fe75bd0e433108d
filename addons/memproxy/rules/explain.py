"""Why a request got its route: the rules tried before the one that matched, and the conditions that decided.

`explain(rules, view)` routes the request as `Rules.match` does, then tests each condition of the rules it
tried alone, to say which held. `memproxy rules explain` prints it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from memproxy.regexes import RegexTimeout

from .matching import Rule, path_text
from .model import Actions, RequestView, Route
from .ruleset import Rules
from .templates import ProjectUnknown

# The condition fields of a compiled rule, in the order they are tested.
CONDITIONS = ("methods", "ports", "host", "path", "headers", "model", "project", "filter", "body", "json")
_MULTI = ("headers", "body", "json")  # tuples of conditions, each tested alone


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition of a rule as the rules file reads it (e.g. `header user-agent ~ ^claude-cli/`), and
    whether it held for the request."""

    label: str
    held: bool


@dataclass(frozen=True, slots=True)
class Tried:
    """A rule tried for the request: its conditions, and whether it is the one that routed it."""

    rule: str
    matched: bool
    conditions: tuple[Condition, ...]

    @property
    def why(self) -> str:
        """For the rule that matched, the conditions that held; for another, the first that did not, or
        (all held) that its scope template had an empty variable."""
        if self.matched:
            return " · ".join(c.label for c in self.conditions) or "it has no conditions"
        failed = next((c for c in self.conditions if not c.held), None)
        return f"{failed.label} did not hold" if failed else "its scope template has an empty variable"


@dataclass(frozen=True, slots=True)
class Explanation:
    """A request's route, the rules tried in order (up to the one that matched), and the scope the rule
    (or the default) gives before the override header."""

    route: Route
    tried: tuple[Tried, ...]
    rule_scope: str | None
    override_header: str

    @property
    def overridden(self) -> bool:
        """Whether the override header named the scope instead of the rule."""
        return self.route.scope != self.rule_scope


def explain(rules: Rules, view: RequestView) -> Explanation:
    """Route `view` with `rules` and say why."""
    route = rules.match(view)
    rule_scope: str | None = rules.default_scope
    tried = []
    for rule in rules.rules:
        matched = rule.name == route.rule
        tried.append(Tried(rule.name, matched, tuple(Condition(label, _holds(one, view))
                                                     for label, one in conditions(rule))))
        if matched:
            try:
                rule_scope = rule.scope(view, route.captures, rules.default_scope)
            except ProjectUnknown:  # the caller's projects named it for the route, and cannot now
                rule_scope = None
            break
    return Explanation(route, tuple(tried), rule_scope, rules.override_header)


def conditions(rule: Rule) -> Iterator[tuple[str, Rule]]:
    """(label, a copy of `rule` with only that condition) for each condition of `rule`."""
    fields = {f.name: f.default for f in dataclasses.fields(rule) if f.name in CONDITIONS}
    blank = dataclasses.replace(rule, **fields)
    for name in CONDITIONS:
        value = getattr(rule, name)
        for part in (value if name in _MULTI else (value,) if value else ()):
            yield label(name, part), dataclasses.replace(blank, **{name: (part,) if name in _MULTI else part})


def label(name: str, part: Any) -> str:
    """One condition as the rules file reads it."""
    match name:
        case "methods" | "ports":
            return f"{name[:-1]} {'|'.join(sorted(map(str, part)))}"
        case "filter":
            return f"filter {getattr(part, 'pattern', part)}"
        case "headers" if part.pattern is None:
            return f"header {part.name} absent"
        case "headers":
            return f"header {part.name} {'!~' if part.negate else '~'} {part.pattern.pattern}"
        case "json":
            segs, pattern = part
            return f"json {path_text(segs)} ~ {pattern.pattern}"
        case "body":
            return f"body ~ {part.pattern}"
        case _:
            return f"{name} ~ {part.pattern}"


def _holds(rule: Rule, view: RequestView) -> bool:
    """Whether a rule's conditions hold for `view`; a regex out of time does not hold, as in `Rules.match`."""
    try:
        return rule.captures(view) is not None
    except RegexTimeout:
        return False


def describe_actions(a: Actions) -> str:
    """A route's actions in one line."""
    if a.auxiliary:
        return "auxiliary: neither recalled nor stored"
    out = [
        f"recall ({a.query} query, inject {a.inject}, up to {a.max_results} memories / {a.max_chars} chars,"
        f" threshold {a.threshold})" if a.recall else "no recall",
        "store" if a.store else "no store",
    ]
    if a.profile:
        out.append("profile")
    if a.models_allow or a.models_deny:
        out.append(f"models allow {list(a.models_allow)} deny {list(a.models_deny)}")
    return ", ".join([*out, f"route {a.route}"])
