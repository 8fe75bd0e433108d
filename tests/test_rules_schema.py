"""The rules file's schema: the published JSON Schema is current and is what editors check a file with (a bad
file fails there on the key the loader names); `scope:` is the documented spelling of `user_id:`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from memproxy.rules import SCHEMA_FILE, RequestView, Rules, RulesError, json_schema

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES = ROOT / "rules" / "memory.yaml"


def editor() -> jsonschema.protocols.Validator:
    """What an editor checks a rules file with: the published schema, with the validator of the draft it declares."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)
    assert validator is jsonschema.Draft7Validator  # what YAML language servers read
    validator.check_schema(schema)
    return validator(schema)


def flagged(doc: Any) -> set[str]:
    """The key paths (formatted as the loader formats them) the editor flags in `doc`: where each error and
    each error under it (the branches of anyOf) sits, and the keys that additionalProperties refuses."""
    out = set()
    stack = list(editor().iter_errors(doc))
    while stack:
        e = stack.pop()
        path = tuple(e.absolute_path)
        if e.validator == "additionalProperties":
            allowed = set(e.schema.get("properties", {}))
            patterns = [jsonschema.Draft7Validator({"pattern": p}) for p in e.schema.get("patternProperties", {})]
            path += (next(k for k in e.instance if k not in allowed and not any(p.is_valid(k) for p in patterns)),)
        out.add(key_path(path))
        stack.extend(e.context)
    return out


def key_path(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def loader_path(text: str) -> str:
    """The key path the loader's first error names."""
    with pytest.raises(RulesError) as e:
        Rules.from_text(text, "r.yaml")
    return e.value.errors[0].split(": ")[1]


def test_the_published_schema_is_current():
    assert json.loads(SCHEMA_FILE.read_text(encoding="utf-8")) == json_schema(), \
        "rules/memory.schema.json is stale: write json_schema() to it"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def test_the_default_rules_point_editors_at_the_schema_and_pass_it():
    first, second = DEFAULT_RULES.read_text(encoding="utf-8").splitlines()[:2]
    assert first == "# yaml-language-server: $schema=memory.schema.json"  # VS Code's YAML extension
    assert second == "# $schema: memory.schema.json"  # JetBrains IDEs
    assert (DEFAULT_RULES.parent / first.split("$schema=")[1]) == SCHEMA_FILE and SCHEMA_FILE.exists()
    assert list(editor().iter_errors(yaml.safe_load(DEFAULT_RULES.read_text(encoding="utf-8")))) == []


# A bad rules file and the key both the loader and an editor name. Conditions a JSON Schema cannot state
# (a regex that does not compile, a template's variables, a filter expression, unique rule names) are
# the loader's alone.
EDITOR_CASES = [
    "rulez: []\n",
    "version: 2\n",
    "default_scope: 3\n",
    "override_header: 'X Y'\n",
    "allow_override: 'no'\n",
    "rules: {a: 1}\n",
    "rules:\n  - name: r\n    usr_id: x\n",
    "rules:\n  - name: r\n    match:\n      hots: x\n",
    "rules:\n  - name: r\n    recall: 'yes'\n",
    "rules:\n  - name: r\n    scope: ''\n",
    "rules:\n  - name: r\n    match:\n      headers: {'bad name': x}\n",
    "rules:\n  - name: r\n    match:\n      headers: {}\n",
    "rules:\n  - name: r\n    match:\n      host: [ok.com, 'bad host']\n",
    "rules:\n  - name: r\n    match:\n      json:\n        a..b: x\n",
    "rules:\n  - name: r\n    match:\n      method: [GET, 'P O']\n",
    "rules:\n  - name: r\n    match:\n      port: [80, 70000]\n",
    "rules:\n  - name: r\n    match:\n      port: -1\n",
    "rules:\n  - name: r\n    query: latest\n",
    "rules:\n  - name: r\n    route: proxy\n",
    "rules:\n  - name: r\n    sdk: {model: x, region: y}\n",
    "rules:\n  - name: r\n    sdk:\n      model: 3\n",
    "defaults:\n  inject: systen\n",
    "defaults:\n  max_results: -3\n",
    "defaults:\n  max_chars: lots\n",
    "defaults:\n  threshold: 1.5\n",
    "defaults:\n  models: {allow: []}\n",
    "memory:\n  backend: sqlite\n",
    "memory:\n  supermemory: {token: x}\n",
    "user_id_mappings:\n  header_patterns:\n    - header: user-agent\n      user_id: x\n",
    "context_retrieval:\n  enabled: true\n  injection_strategy: top\n",
    "context_retrieval:\n  cache: 1\n",
]


@pytest.mark.parametrize("text", EDITOR_CASES, ids=[c.replace("\n", " ")[:40] for c in EDITOR_CASES])
def test_an_editor_flags_the_key_the_loader_names(text):
    named = loader_path(text)
    assert named in flagged(yaml.safe_load(text)), (named, flagged(yaml.safe_load(text)))


def test_the_loader_checks_more_than_the_schema_can_say():
    text = "rules:\n  - name: r\n    match: {path: '(['}\n    scope: '{cwd}'\n  - name: r\n"
    assert flagged(yaml.safe_load(text)) == set()
    with pytest.raises(RulesError) as e:
        Rules.from_text(text, "r.yaml")
    assert [line.split(": ")[1] for line in e.value.errors] == ["rules[0].match.path", "rules[1].name"]


# -- scope: the documented spelling of user_id ------------------------------------------------------


SPELLINGS = """
    {default}: everyone
    rules:
      - name: project
        match: {{path: '^/p/(?P<name>[^/]+)'}}
        {key}: 'p:{{name|lower}}'
      - {{name: fixed, match: {{method: PUT}}, {key}: fixed}}
"""


def test_scope_and_user_id_mean_the_same():
    new = Rules.from_text(textwrap.dedent(SPELLINGS.format(default="default_scope", key="scope")))
    old = Rules.from_text(textwrap.dedent(SPELLINGS.format(default="default_user_id", key="user_id")))
    for view in (RequestView(path="/p/Shop"), RequestView(method="PUT"), RequestView(path="/other")):
        assert new.match(view) == old.match(view)
    assert [new.match(RequestView(path=p)).scope for p in ("/p/Shop", "/x")] == ["p:shop", "everyone"]


@pytest.mark.parametrize(("text", "line", "key"), [
    ("rules:\n  - name: r\n    scope: a\n    user_id: b\n", 4, "rules[0].user_id"),
    ("default_scope: a\ndefault_user_id: b\n", 2, "default_user_id"),
])
def test_both_spellings_at_once_is_an_error_naming_the_key(text, line, key):
    with pytest.raises(RulesError) as e:
        Rules.from_text(text, "r.yaml")
    assert e.value.errors == [f"r.yaml:{line}: {key}: '{key.split('.')[-1]}' is the earlier spelling of "
                              f"'{key.split('.')[-1].replace('user_id', 'scope')}': give one of them"]


def test_unknown_keys_are_hinted_with_the_file_spelling():
    with pytest.raises(RulesError, match=r"rules\[0\]\.match\.jsno: unknown key \(did you mean 'json'\?\)"):
        Rules.from_text("rules: [{name: r, match: {jsno: {a: b}}}]")
    with pytest.raises(RulesError, match=r"rules\[0\]\.scop: unknown key \(did you mean 'scope'\?\)"):
        Rules.from_text("rules: [{name: r, scop: x}]")
