"""Choosing the memory backend: auto | local | supermemory, from options, the rules file and the environment."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest
from memproxy.config import resolve_env
from memproxy.memory import choose_backend, open_store
from memproxy.memory.local import LocalStore
from memproxy.memory.supermemory import DEFAULT_BASE_URL, SupermemoryStore
from memproxy.rules import Rules


def test_auto_without_key_is_local():
    backend = choose_backend("auto", environ={})
    assert (backend.name, backend.reason) == ("local", "auto: no SUPERMEMORY_API_KEY")
    store = open_store(backend)
    assert isinstance(store, LocalStore)
    assert store.path == Path(platformdirs.user_data_dir("memproxy")) / "memories.db"


def test_auto_with_key_is_supermemory_from_env():
    env = {"SUPERMEMORY_API_KEY": "sm_k", "SUPERMEMORY_BASE_URL": "http://sm.local:9"}
    backend = choose_backend("auto", environ=env)
    assert (backend.name, backend.api_key, backend.base_url) == ("supermemory", "sm_k", "http://sm.local:9")
    assert "sm_k" not in backend.describe() and "http://sm.local:9" in backend.describe()
    assert isinstance(open_store(backend), SupermemoryStore)


def test_rules_file_settings_win_over_the_environment():
    rules = Rules.from_text(
        "memory:\n  backend: supermemory\n  supermemory:\n    api_key: ${MY_SM_KEY}\n    container_tag: team_{scope}\n"
    )
    env = {"MY_SM_KEY": "from-rules", "SUPERMEMORY_API_KEY": "from-env"}
    settings = {k: resolve_env(v, env) for k, v in rules.memory.supermemory.items()}
    backend = choose_backend(rules.memory.backend, supermemory=settings, environ=env)
    assert (backend.api_key, backend.base_url, backend.container_tag) == ("from-rules", DEFAULT_BASE_URL, "team_{scope}")
    assert open_store(backend).tag("claude-code:x") != open_store(backend).tag("claude-code-x")


def test_local_path_and_explicit_local():
    backend = choose_backend("local", path="/tmp/m.db", environ={"SUPERMEMORY_API_KEY": "k"})
    assert (backend.name, backend.path) == ("local", "/tmp/m.db")


@pytest.mark.parametrize("backend,message", [("supermemory", "needs an API key"), ("nope", "valid backends")])
def test_bad_backend_settings_are_explained(backend, message):
    with pytest.raises(ValueError, match=message):
        choose_backend(backend, environ={})


def test_invalid_container_tag_template_names_file_line_and_key():
    with pytest.raises(Exception) as e:
        Rules.from_text("memory:\n  supermemory:\n    container_tag: 'bad tag/{scope}'\n", "r.yaml")
    assert "r.yaml:3: memory.supermemory.container_tag: invalid container tag" in str(e.value)


@pytest.mark.parametrize("value,expected", [("${X}", "1"), ("os.environ/X", "1"), ("${UNSET}", None), ("plain", "plain")])
def test_resolve_env(value, expected):
    assert resolve_env(value, {"X": "1"}) == expected
