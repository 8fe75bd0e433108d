"""`memproxy.rules.explain`: the rules tried for a request, in order, and the conditions that decided."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from memproxy.rules import Actions, RequestView, Rules, describe_actions, explain
from test_rules import Projects

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "rules" / "memory.yaml"
JETBRAINS_UA = "OpenAIClientImpl/Java unknown"


@pytest.fixture(scope="module")
def rules() -> Rules:
    return Rules.load(DEFAULT_RULES)


def claude(cwd: str) -> RequestView:
    body = {"model": "claude-sonnet-4-5",
            "messages": [{"role": "system", "content": f"<env>\nPrimary working directory: {cwd}\n</env>"}]}
    return RequestView(method="POST", path="/v1/messages", headers={"user-agent": "claude-cli/2.1 (external, cli)"},
                       body=body, raw_body=None, model="claude-sonnet-4-5")


def test_the_matching_rule_and_those_before_it(rules: Rules):
    e = explain(rules, dataclasses.replace(claude("/home/me/shop"), projects=Projects()))
    assert (e.route.scope, e.route.rule, e.rule_scope, e.overridden) == ("project:shop", "claude-code",
                                                                           "project:shop", False)
    assert (e.route.project, e.route.tool, e.route.layers) == ("/home/me/shop", "Claude Code", ("user",))
    assert [t.rule for t in e.tried] == [r.name for r in rules.rules][: len(e.tried)]
    assert [t.matched for t in e.tried] == [False] * (len(e.tried) - 1) + [True]
    first, last = e.tried[0], e.tried[-1]
    assert first.rule == "claude-code-background"
    assert first.why == "header x-claude-code-request-class ~ ^(?!main$) did not hold"
    assert [c.held for c in first.conditions] == [True, False]
    assert last.why == r"header user-agent ~ ^claude-cli/ · json messages.*.role=system.content ~ Primary working directory: (?P<cwd>[^\n]+)"
    assert all(c.held for c in last.conditions)


def test_an_empty_template_variable_and_the_override_header(rules: Rules):
    e = explain(rules, RequestView(method="POST", path="/v1/chat/completions",
                                   headers={"user-agent": JETBRAINS_UA, "x-memory-user-id": "team-notes"}))
    skipped = next(t for t in e.tried if t.rule == "jetbrains-project")
    assert skipped.why == "its scope template has an empty variable" and all(c.held for c in skipped.conditions)
    assert (e.route.scope, e.route.rule, e.rule_scope, e.overridden) == ("team-notes", "jetbrains", "jetbrains", True)
    assert e.override_header == "x-memory-user-id"


def test_no_rule_matches(rules: Rules):
    e = explain(rules, RequestView(method="POST", path="/v1/chat/completions", headers={"user-agent": "curl/8"}))
    assert e.route.is_default and e.rule_scope == "default" and not e.overridden
    assert [t.rule for t in e.tried] == [r.name for r in rules.rules]
    assert not any(t.matched for t in e.tried)


def test_a_rule_without_conditions_and_every_condition_label():
    rules = Rules.from_text("""
rules:
  - name: all
    match:
      method: [post, GET]
      port: [8080, 80]
      host: '*.example.com'
      path: '^/v1'
      headers: {x-a: null, x-b: '!bot', x-c: '^c'}
      body: 'needle'
      json: {messages.-1.content: hi}
      model: '^gpt'
      project: shop
      filter: '~m POST'
  - {name: open}
""")
    e = explain(rules, RequestView())
    assert [c.label for c in e.tried[0].conditions] == [
        "method GET|POST", "port 80|8080", r"host ~ (?s:.*\.example\.com)\Z", "path ~ ^/v1", "header x-a absent",
        "header x-b !~ bot", "header x-c ~ ^c", "model ~ ^gpt", "project ~ shop", "filter ~m POST", "body ~ needle",
        "json messages.-1.content ~ hi",
    ]
    assert e.tried[1].why == "it has no conditions" and e.route.rule == "open"


def test_describe_actions():
    assert describe_actions(Actions()) == (
        "recall (last_user query, inject dual, up to 5 memories / 4000 chars, threshold 0.0), store, route passthrough")
    assert describe_actions(Actions.make({"auxiliary": True})) == "auxiliary: neither recalled nor stored"
    assert describe_actions(Actions(recall=False, profile=True, models_deny=("mini",), route="sdk")) == (
        "no recall, store, profile, models allow [] deny ['mini'], route sdk")
