"""Unit level: every option of memproxy's addons is validated in `configure`, and a change while the proxy runs
either takes effect or is refused with OptionsError, never silently ignored (mitmproxy.test.taddons)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from memproxy.addons.boundary import Boundary
from memproxy.addons.guard import Guard
from memproxy.addons.hosts import Hosts
from memproxy.addons.localusers import AVAILABLE, LocalUsers
from memproxy.addons.projectnames import ProjectNames
from memproxy.addons.projects import Projects
from memproxy.addons.redact import Redact
from memproxy.addons.requestpath import RequestPath
from memproxy.addons.ruleswatcher import RulesWatcher
from memproxy.addons.sdk import Sdk
from memproxy.addons.store import Store
from memproxy.ports import PortRegistry
from memproxy.repos import ProjectRegistry
from memproxy.rules import RequestView
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

ROOT = Path(__file__).resolve().parent.parent
COVERED: set[str] = set()  # the options the tests below change


def covers(*options: str) -> Callable:
    """Marks a test as the one that checks these options."""
    COVERED.update(options)
    return lambda test: test


def entry_addons() -> list:
    """A fresh set of the addons, composed and ordered by the entry script itself."""
    spec = importlib.util.spec_from_file_location("memproxy_entry", ROOT / "addons" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.addons


class Proxy:
    """The entry script's addons in a test context, found by type."""

    def __init__(self, tctx: taddons.context, addons: list) -> None:
        self.tctx, self.addons = tctx, addons

    def __getitem__(self, kind: type):
        return next(a for a in self.addons if type(a) is kind)

    def configure(self, **options) -> None:
        self.tctx.configure(self.addons[0], **options)

    def refuses(self, **options) -> str:
        with pytest.raises(exceptions.OptionsError) as e:
            self.configure(**options)
        return str(e.value)


@pytest.fixture
async def proxy(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("SUPERMEMORY_API_KEY", raising=False)
    addons = entry_addons()
    with taddons.context(*addons) as tctx:
        p = Proxy(tctx, addons)
        p.configure(
            memory_rules=str(ROOT / "rules" / "memory.yaml"),
            memory_db=str(tmp_path / "memories.db"),
            memory_outbox=str(tmp_path / "outbox.db"),
            memory_cookies=str(tmp_path / "cookies.json"),
            memory_projects=str(tmp_path / "ports.json"),
            memory_project_names=str(tmp_path / "projects.json"),
        )
        yield p
        for kind in (RulesWatcher, Projects, ProjectNames, Sdk, Store):
            if (done := p[kind].done()) is not None:
                await done


async def start(proxy: Proxy, *kinds: type) -> None:
    """Run these addons' `running` hooks, as mitmproxy does once the proxy listens."""
    for kind in kinds:
        if (started := proxy[kind].running()) is not None:
            await started


def chat_flow(**headers: str) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.request.method, flow.request.host, flow.request.port = "POST", "api.openai.com", 443
    flow.request.path = "/v1/chat/completions"
    flow.request.headers["content-type"] = "application/json"
    flow.request.headers.update(headers)
    flow.request.content = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    return flow


def test_every_option_is_covered():
    addons = entry_addons()
    with taddons.context(*addons) as tctx:
        ours = {name for name in tctx.options.keys() if name.startswith("memory_")}
    assert ours == COVERED


# -- the request path -----------------------------------------------------------


@covers("memory_enabled")
async def test_memory_can_be_turned_off_and_on(proxy):
    memory = proxy[RequestPath]
    proxy.configure(memory_enabled=False)
    flow = chat_flow()
    await memory.request(flow)
    assert "memproxy" not in flow.metadata
    proxy.configure(memory_enabled=True)
    await memory.request(flow := chat_flow())
    assert flow.metadata["memproxy"]["adapter"] == "openai_chat"


@covers("memory_timeout_ms")
def test_recall_budget(proxy):
    proxy.configure(memory_timeout_ms=50)
    assert proxy[RequestPath].timeout == 0.05
    assert "memory_timeout_ms" in proxy.refuses(memory_timeout_ms=-1)
    assert proxy[RequestPath].timeout == 0.05


@covers("memory_max_body")
async def test_largest_body(proxy):
    proxy.configure(memory_max_body=10)
    await proxy[RequestPath].request(flow := chat_flow())
    assert "memproxy" not in flow.metadata  # too large: untouched
    assert "memory_max_body" in proxy.refuses(memory_max_body=0)
    assert proxy[RequestPath].max_body == 10


# -- hosts ------------------------------------------------------------------------


@covers("memory_hosts")
def test_memory_hosts(proxy):
    hosts = proxy[Hosts]
    assert hosts.serves(chat_flow())
    proxy.configure(memory_hosts=["*.example.com"])
    assert not hosts.serves(chat_flow()) and hosts.decrypts("API.Example.com.")
    assert "memory_hosts" in proxy.refuses(memory_hosts=["api.openai.com", " "])
    assert hosts.patterns == ("*.example.com",)


@covers("memory_origins")
def test_memory_origins(proxy):
    hosts, page = proxy[Hosts], chat_flow(origin="https://app.example/")
    assert not hosts.serves(page)
    proxy.configure(memory_origins=["https://APP.example"])
    assert hosts.serves(page)
    assert "memory_origins" in proxy.refuses(memory_origins=[""])
    assert hosts.serves(page)


# -- project listeners ----------------------------------------------------------------


@covers("memory_projects", "memory_project_mode")
async def test_project_listeners_follow_the_registry_and_the_mode(proxy, tmp_path):
    projects = proxy[Projects]
    registry = PortRegistry(tmp_path / "other-ports.json", port_range=(18950, 18959))
    port = await asyncio.to_thread(registry.get_or_allocate_port, tmp_path)
    await projects.listeners.sync()
    assert projects.project_for_port(port) is None
    proxy.configure(memory_projects=str(registry.path))
    await projects.listeners.sync()
    assert projects.project_for_port(port).path == str(tmp_path.resolve())
    assert f"reverse:https://api.openai.com@{port}" in proxy.tctx.options.mode
    proxy.configure(memory_project_mode="regular")
    await projects.listeners.sync()
    assert f"regular@{port}" in proxy.tctx.options.mode
    assert not any(m.startswith("reverse:") for m in proxy.tctx.options.mode)
    for bad in ("bogus", "upstream:http://127.0.0.1:9", "reverse:http://127.0.0.1:9@18960", "reverse:"):
        assert "memory_project_mode" in proxy.refuses(memory_project_mode=bad)
    assert "is a directory" in proxy.refuses(memory_projects=str(tmp_path))
    proxy.configure(memory_projects=str(tmp_path / "ports.json"))
    await projects.listeners.sync()
    assert projects.project_for_port(port) is None and f"regular@{port}" not in proxy.tctx.options.mode


@covers("memory_project_names")
async def test_projects_are_named_in_the_registry_the_option_names(proxy, tmp_path):
    names, memory = proxy[ProjectNames], proxy[RequestPath]
    await start(proxy, RulesWatcher, Store)
    repo = tmp_path / "shop"
    (repo / ".git").mkdir(parents=True)
    (repo / "src").mkdir()

    async def scope_in(cwd: Path) -> str:
        flow = chat_flow(**{"user-agent": "claude-cli/2.1.328 (external, cli)"})
        flow.request.path = "/v1/messages"
        flow.request.content = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [
            {"role": "system", "content": f"Primary working directory: {cwd}\n"},
            {"role": "user", "content": "hi"}]}).encode()
        await memory.request(flow)
        return flow.metadata["memproxy"]["user_id"]

    assert await scope_in(repo / "src") == "project:shop"
    await names.done()  # the use is written
    [record] = ProjectRegistry(tmp_path / "projects.json").projects()
    assert (record.root, record.name, record.tools) == (str(repo), "shop", frozenset({"Claude Code"}))

    other = tmp_path / "other.json"
    ProjectRegistry(other).register("/elsewhere/shop")  # that file's "shop" is another root
    proxy.configure(memory_project_names=str(other))
    assert await scope_in(repo) == "project:shop@" + hashlib.sha256(str(repo).encode()).hexdigest()[:6]
    assert "is a directory" in proxy.refuses(memory_project_names=str(tmp_path))


# -- rules ------------------------------------------------------------------------


@covers("memory_rules")
async def test_rules_change_or_are_refused_keeping_the_last_good_ones(proxy, tmp_path):
    watcher = proxy[RulesWatcher]
    await start(proxy, RulesWatcher)
    good = tmp_path / "good.yaml"
    good.write_text("default_user_id: someone\n")
    proxy.configure(memory_rules=str(good))
    assert watcher.rules.match(RequestView()).scope == "someone"
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: r\n    user_id: [unclosed\n")
    assert "bad.yaml" in proxy.refuses(memory_rules=str(bad))
    assert watcher.file.path == good and watcher.rules.match(RequestView()).scope == "someone"


# -- the store and the outbox ---------------------------------------------------------


@covers("memory_backend", "memory_db")
async def test_the_store_follows_backend_and_file(proxy, tmp_path):
    store = proxy[Store]
    await start(proxy, Store)
    first = store.store
    assert store.backend.name == "local" and store.backend.reason.startswith("auto")
    proxy.configure(memory_backend="local")
    assert store.backend.reason == "chosen" and store.store is not first
    proxy.configure(memory_db=str(tmp_path / "other.db"))
    assert store.backend.path == str(tmp_path / "other.db") and store.recall.store is store.store
    assert store.outbox.store is store.store
    assert "SUPERMEMORY_API_KEY" in proxy.refuses(memory_backend="supermemory")
    assert store.backend.name == "local"
    assert "is a directory" in proxy.refuses(memory_db=str(tmp_path))
    for _ in range(100):  # the replaced stores close, the new one opens, in the background
        if (tmp_path / "other.db").exists():
            break
        await asyncio.sleep(0.05)
    assert (tmp_path / "other.db").exists()


@covers("memory_outbox", "memory_retry_max")
async def test_the_outbox_stays_and_its_retries_follow(proxy, tmp_path):
    store = proxy[Store]
    assert "is a directory" in proxy.refuses(memory_outbox=str(tmp_path))
    await start(proxy, Store)
    assert store.outbox.path == tmp_path / "outbox.db"
    assert "restart memproxy" in proxy.refuses(memory_outbox=str(tmp_path / "other-outbox.db"))
    assert store.outbox.path == tmp_path / "outbox.db"
    proxy.configure(memory_retry_max=7)
    assert store.outbox.max_delay == 7
    assert "memory_retry_max" in proxy.refuses(memory_retry_max=0)
    assert store.outbox.max_delay == 7


# -- the SDK path ---------------------------------------------------------------------


@covers("memory_cookies", "memory_sdk_ttl", "memory_sdk_timeout")
async def test_sdk_path_limits_follow_and_its_jars_stay(proxy, tmp_path):
    sdk = proxy[Sdk]
    assert "is a directory" in proxy.refuses(memory_cookies=str(tmp_path))
    await start(proxy, Sdk)
    await sdk.path.load()
    assert sdk.path.cookies_path == tmp_path / "cookies.json"
    assert "restart memproxy" in proxy.refuses(memory_cookies=str(tmp_path / "other-cookies.json"))
    proxy.configure(memory_sdk_ttl=5, memory_sdk_timeout=7)
    assert sdk.path.ttl == sdk.path.sessions.ttl == 5 and sdk.path.timeout == 7
    assert "memory_sdk_ttl" in proxy.refuses(memory_sdk_ttl=-1)
    assert "memory_sdk_timeout" in proxy.refuses(memory_sdk_timeout=0)
    assert sdk.path.ttl == 5 and sdk.path.timeout == 7


@covers("memory_sdk_resend")
async def test_sdk_resend_follows_and_a_bad_regex_is_refused(proxy, tmp_path):
    sdk = proxy[Sdk]
    await start(proxy, Sdk)
    assert sdk.path.resend.search("claude-cli/2.1.328 (external, cli)")
    assert not sdk.path.resend.search("OpenAI/Python 2.8.0")
    proxy.configure(memory_sdk_resend="^my-tool/")
    assert sdk.path.resend.search("my-tool/1") and not sdk.path.resend.search("claude-cli/2")
    assert "not a regular expression" in proxy.refuses(memory_sdk_resend="(")
    assert sdk.path.resend.pattern == "^my-tool/"
    proxy.configure(memory_sdk_resend="")
    assert sdk.path.resend is None


# -- the boundary, the guard, redaction and local users ------------------------------------


@covers("memory_listener_hosts")
def test_listener_hosts(proxy):
    proxy.configure(memory_listener_hosts=["Dev.Example."])
    assert proxy[Boundary].names == {"dev.example"}
    assert "memory_listener_hosts" in proxy.refuses(memory_listener_hosts=[""])
    assert proxy[Boundary].names == {"dev.example"}


@covers("memory_guard", "memory_redact", "memory_other_users")
def test_switches(proxy):
    proxy.configure(memory_guard=False, memory_redact=False, memory_other_users=True)
    assert not proxy[Guard].enabled and not proxy[Redact].enabled and not proxy[LocalUsers].enabled
    proxy.configure(memory_guard=True, memory_redact=True, memory_other_users=False)
    assert proxy[Guard].enabled and proxy[Redact].enabled and proxy[LocalUsers].enabled == AVAILABLE
