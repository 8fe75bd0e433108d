"""The `memproxy` command line, run as a subprocess with its home, config and data dirs in a temp dir."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import click
import pytest
from conftest import FAKES, REDIRECT, ROOT, SCRUBBED_ENV, free_port
from e2e_helpers import CLAUDE_UA, claude_body, seed, wait_until
from fakes import codex_request
from fakes.supermemory import FakeSupermemory
from fakes.upstream import DEFAULT_REPLY
from memproxy.cli import main
from memproxy.memory import Memory, MemoryStore
from memproxy.memory.local import LocalStore
from memproxy.memory.supermemory import SupermemoryStore, container_tag
from memproxy.outbox import table
from memproxy.repos import ProjectRegistry
from memproxy.rules import USER_SCOPE
from mitmproxy import http, io
from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketMessage
from secret_corpus import Maker, anthropic_key, aws_key_id, aws_secret, github_token, openssh_key
from wsproto.frame_protocol import Opcode

MEMPROXY = Path(sys.executable).parent / "memproxy"
JETBRAINS_UA = "OpenAIClientImpl/Java unknown"


class Cli:
    """Runs `memproxy ...` with HOME and the XDG dirs under `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if k.lower() not in SCRUBBED_ENV and not k.startswith("OPENAI_")}
        self.env |= {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local/share"),
            "XDG_STATE_HOME": str(home / ".local/state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "COLUMNS": "200",  # rich tables: no wrapping in the middle of what tests look for
            "PYTHONUNBUFFERED": "1",
        }

    def __call__(self, *args: object, stdin: str = "", env: dict[str, str] | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(MEMPROXY), *map(str, args)], input=stdin, capture_output=True, text=True,
                              env=self.env | (env or {}), timeout=timeout)

    def ok(self, *args: object, **kwargs: object) -> str:
        """stdout of a command that must succeed."""
        result = self(*args, **kwargs)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def command_paths(group: click.Group = main, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


# -- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(command_paths()), ids=lambda p: " ".join(p) or "memproxy")
def test_help_on_every_command(cli: Cli, path: tuple[str, ...]):
    out = cli.ok(*path, "--help")
    assert out.startswith(f"Usage: memproxy {' '.join(path)}".rstrip())
    assert "--help" in out


def test_every_command_is_there():
    assert set(command_paths()) >= {
        ("run",), ("env",), ("wrap",), ("certs",), ("status",), ("dead-letters",),
        ("rules", "check"), ("rules", "explain"),
        *(("memories", c) for c in ("list", "search", "add", "forget", "move", "migrate", "export", "import", "scrub")),
        *(("projects", c) for c in ("add", "list", "remove")),
    }


# -- env and certs ---------------------------------------------------------------------------

VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy",
        "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CODEX_CA_CERTIFICATE")


def assert_bundle(ca: Path, bundle: Path) -> None:
    """The bundle holds public roots followed by the mitmproxy CA."""
    assert bundle.read_bytes().endswith(ca.read_bytes())
    assert bundle.read_bytes().count(b"BEGIN CERTIFICATE") > 10


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_env_evaluates_in_posix_shells(cli: Cli, tmp_path: Path, shell: str):
    confdir = tmp_path / "it's a conf $dir"  # quoting must hold
    out = cli.ok("env", "--shell", shell, "--port", 9911, "--confdir", confdir)
    runner = shutil.which(shell) or "bash"  # zsh reads the same `export` lines
    script = 'eval "$1"; for v in ' + " ".join(VARS) + '; do printf "%s=%s\\n" "$v" "${(P)v}"; done'
    if runner.endswith("bash"):
        script = script.replace("${(P)v}", "${!v}")
    shown = subprocess.run([runner, "-c", script, "_", out], capture_output=True, text=True, check=True).stdout
    values = dict(line.split("=", 1) for line in shown.splitlines())
    ca, bundle = confdir / "mitmproxy-ca-cert.pem", confdir / "memproxy-bundle.pem"
    assert values == {
        **{v: "http://127.0.0.1:9911" for v in VARS[:4]},
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
        "NODE_EXTRA_CA_CERTS": str(ca),
        "SSL_CERT_FILE": str(bundle),
        "REQUESTS_CA_BUNDLE": str(bundle),
        "CODEX_CA_CERTIFICATE": str(bundle),
    }
    assert_bundle(ca, bundle)


@pytest.mark.parametrize(
    ("shell", "line"),
    [
        ("fish", "set -gx SSL_CERT_FILE '{dir}/o\\'conf/memproxy-bundle.pem'"),
        ("powershell", "$env:SSL_CERT_FILE = '{dir}/o''conf/memproxy-bundle.pem'"),
    ],
)
def test_env_quotes_for_fish_and_powershell(cli: Cli, tmp_path: Path, shell: str, line: str):
    out = cli.ok("env", "--shell", shell, "--confdir", tmp_path / "o'conf")
    assert line.format(dir=tmp_path) in out.splitlines()
    assert len(out.splitlines()) == len(VARS)


def test_env_default_confdir_is_mitmproxys(cli: Cli):
    out = cli.ok("env", "--shell", "bash")
    assert f"export NODE_EXTRA_CA_CERTS={cli.home}/.mitmproxy/mitmproxy-ca-cert.pem" in out
    assert "export HTTPS_PROXY=http://127.0.0.1:8080" in out
    assert (cli.home / ".mitmproxy" / "memproxy-bundle.pem").is_file()


def test_certs_creates_the_ca_once(cli: Cli, tmp_path: Path):
    confdir = tmp_path / "conf"
    out = cli.ok("certs", "--confdir", confdir)
    ca = confdir / "mitmproxy-ca-cert.pem"
    assert f"mitmproxy CA: {ca} (created now)" in out
    assert (confdir / "mitmproxy-ca.pem").is_file()
    assert_bundle(ca, confdir / "memproxy-bundle.pem")
    for expected in (f"NODE_EXTRA_CA_CERTS={ca}", f"CODEX_CA_CERTIFICATE={confdir}/memproxy-bundle.pem",
                     f"keytool -importcert -noprompt -alias mitmproxy -file {ca}", "update-ca-certificates",
                     "certutil -addstore root"):
        assert expected in out
    before = ca.read_bytes()
    assert f"mitmproxy CA: {ca} (exists)" in cli.ok("certs", "--confdir", confdir)
    assert ca.read_bytes() == before


# -- rules -----------------------------------------------------------------------------------


def test_rules_check_bundled_file(cli: Cli):
    out = cli.ok("rules", "check")
    assert re.match(r"ok: [1-9]\d* rules in .*rules/memory\.yaml", out)


def test_rules_schema_prints_the_published_schema(cli: Cli):
    printed = json.loads(cli.ok("rules", "schema"))
    assert printed == json.loads((ROOT / "rules" / "memory.schema.json").read_text())
    assert "rules" in printed["properties"]


def test_rules_check_reports_file_and_line(cli: Cli, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    match:\n      headers: {user-agent: '(unclosed'}\n    recal: true\n")
    result = cli("rules", "check", bad)
    assert result.returncode == 1
    assert f"{bad}:4: rules[0].match.headers.user-agent: invalid regex" in result.stderr
    assert f"{bad}:5: rules[0]" in result.stderr
    assert "Traceback" not in result.stderr


def test_rules_explain_claude_code(cli: Cli, tmp_path: Path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps(claude_body("/home/me/myrepo", "How do I run the tests?")))
    out = cli.ok("rules", "explain", "--ua", CLAUDE_UA, "--path", "/v1/messages", "--body", body)
    assert "scope: project:myrepo  rule: claude-code" in out
    assert "project: /home/me/myrepo" in out and "tool: Claude Code" in out and "also recalled: user" in out
    assert "✓ claude-code: header user-agent ~ ^claude-cli/ · json messages.*.role=system.content ~ Primary working directory" in out
    assert "✗ claude-code-background: header x-claude-code-request-class ~ ^(?!main$) did not hold" in out
    assert "captured: cwd=/home/me/myrepo" in out
    assert "model claude-sonnet-4-6" in out
    assert "actions: recall (last_user query, inject dual" in out


def test_rules_explain_jetbrains_project_and_override(cli: Cli, tmp_path: Path):
    out = cli.ok("rules", "explain", "--ua", JETBRAINS_UA)
    assert "scope: jetbrains  rule: jetbrains" in out
    assert "✗ jetbrains-project: its scope template has an empty variable" in out

    project, registry = tmp_path / "alpha", tmp_path / "ports.json"
    project.mkdir()
    port = int(re.search(r"port (\d+)", cli.ok("projects", "add", project, "--registry", registry))[1])
    out = cli.ok("rules", "explain", "--ua", JETBRAINS_UA, "--port", port, "--registry", registry)
    assert "scope: project:alpha  rule: jetbrains-project" in out
    assert f"project {project}" in out

    out = cli.ok("rules", "explain", "-H", f"User-Agent: {JETBRAINS_UA}", "-H", "x-memory-user-id: team-notes")
    assert "scope: team-notes  rule: jetbrains" in out
    assert "from the x-memory-user-id header (the rule gives jetbrains)" in out


def test_rules_explain_saved_flows(cli: Cli, tmp_path: Path):
    claude = tflow.tflow()
    claude.request = http.Request.make(
        "POST", "https://api.anthropic.com/v1/messages?beta=true", json.dumps(claude_body("/src/shop", "hi")),
        {"user-agent": CLAUDE_UA, "content-type": "application/json"},
    )
    other = tflow.tflow()  # GET http://address:22/path: not an LLM request
    codex = tflow.twebsocketflow(messages=False)
    codex.request.path = "/v1/responses"
    codex.request.headers["user-agent"] = "codex_exec/0.169.0 (Linux; x86_64)"
    codex.websocket.messages = [WebSocketMessage(Opcode.TEXT, True, json.dumps(codex_request(cwd="/src/api")).encode())]
    flows = tmp_path / "flows.mitm"
    with flows.open("wb") as f:
        writer = io.FlowWriter(f)
        for flow in (claude, other, codex):
            writer.add(flow)

    out = cli.ok("rules", "explain", "--flows", flows)
    assert "flow 1: POST https://api.anthropic.com/v1/messages?beta=true" in out
    assert "scope: project:shop  rule: claude-code" in out
    assert "flow 2" not in out
    assert "flow 3: GET " in out and "(WebSocket message)" in out
    assert "scope: project:api  rule: codex" in out

    junk = tmp_path / "junk.mitm"
    junk.write_bytes(b"not a flow file")
    result = cli("rules", "explain", "--flows", junk)
    assert result.returncode == 1
    assert "not a mitmproxy flow file" in result.stderr


# -- memories --------------------------------------------------------------------------------


def test_memories_roundtrip(cli: Cli, tmp_path: Path):
    db = ("--db", tmp_path / "memories.db")
    first = cli.ok("memories", "add", "--scope", "claude-code:shop", "The shop deploys with fly.io", *db)
    second = cli.ok("memories", "add", "--scope", "claude-code:shop", "Tests run with make test", *db)
    cli.ok("memories", "add", "--scope", "claude-code:other", "Other scope: fly.io is not used here", *db)
    first_id = re.search(r"added memory (\S+) to claude-code:shop", first)[1]
    assert re.search(r"added memory (\S+)", second)[1] != first_id

    listed = cli.ok("memories", "list", "--scope", "claude-code:shop", *db)
    assert "2 memories in claude-code:shop" in listed
    assert listed.index("Tests run with make test") < listed.index("The shop deploys with fly.io")  # newest first
    assert "Other scope" not in listed

    found = cli.ok("memories", "search", "--scope", "claude-code:shop", "how does it deploy to fly.io", *db)
    assert "The shop deploys with fly.io" in found and "make test" not in found

    export = tmp_path / "shop.jsonl"
    export.write_text(cli.ok("memories", "export", "--scope", "claude-code:shop", *db))  # to stdout by default
    records = [json.loads(line) for line in export.read_text().splitlines()]
    assert [r["content"] for r in records] == ["The shop deploys with fly.io", "Tests run with make test"]  # as stored
    assert all(set(r) == {"scope", "content", "metadata", "id", "created_at"} for r in records)

    aborted = cli("memories", "forget", "--scope", "claude-code:shop", first_id, *db, stdin="n\n")
    assert aborted.returncode == 1 and "Aborted" in aborted.stderr
    assert "fly.io" in cli.ok("memories", "list", "--scope", "claude-code:shop", *db)
    assert "forgot memory" in cli.ok("memories", "forget", "--scope", "claude-code:shop", first_id, "--yes", *db)
    assert "fly.io" not in cli.ok("memories", "list", "--scope", "claude-code:shop", *db)
    gone = cli("memories", "forget", "--scope", "claude-code:shop", first_id, "--yes", *db)
    assert gone.returncode == 1 and f"no memory {first_id} in scope claude-code:shop" in gone.stderr

    other = ("--db", tmp_path / "other.db")
    for _ in range(2):  # idempotent
        assert "imported 2 memories" in cli.ok("memories", "import", export, *other)
    listed = cli.ok("memories", "list", "--scope", "claude-code:shop", *other)
    assert "2 memories" in listed
    assert listed.index("Tests run with make test") < listed.index("The shop deploys with fly.io")  # order kept
    reimported = [json.loads(line) for line in cli.ok("memories", "export", "--scope", "claude-code:shop", *other).splitlines()]
    assert [r["created_at"] for r in reimported] == [r["created_at"] for r in records]  # dates kept
    cli.ok("memories", "import", export, "--scope", "copy", *other)
    assert "2 memories in copy" in cli.ok("memories", "list", "--scope", "copy", *other)


def test_memories_errors_are_one_line(cli: Cli, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"scope": "s", "content": "fine"}\n{"scope": "s"}\n')
    result = cli("memories", "import", bad, "--db", tmp_path / "m.db")
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {bad}:2: missing or invalid content"

    result = cli("memories", "list", "--scope", "s", "--backend", "supermemory")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: memory backend 'supermemory' needs an API key: set SUPERMEMORY_API_KEY"


def test_an_export_replaces_its_file_only_once_it_is_written_whole(cli: Cli, tmp_path: Path):
    db = ("--db", tmp_path / "m.db")
    cli.ok("memories", "add", "--scope", "project:api", "The api deploys with fly.io", *db)
    backup = tmp_path / "backup.jsonl"
    cli.ok("memories", "export", "--scope", "project:api", "-o", backup, *db)
    before = backup.read_text()
    assert json.loads(before)["content"] == "The api deploys with fly.io"
    typo = cli("memories", "export", "--scope", "project:apj", "-o", backup, *db)  # a mistyped scope
    assert typo.returncode == 1 and "project:apj holds no memories" in typo.stderr and "left as it was" in typo.stderr
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"not a database at all" * 100)
    failed = cli("memories", "export", "--scope", "project:api", "-o", backup, "--db", broken)
    assert failed.returncode == 1 and "Error: " in failed.stderr and "Traceback" not in failed.stderr
    assert backup.read_text() == before and [f.name for f in tmp_path.iterdir() if "partial" in f.name] == []
    assert backup.stat().st_mode & 0o777 == 0o600
    # a symbolic link stays one, its target replaced; a pipe is written through
    link = tmp_path / "latest.jsonl"
    link.symlink_to(backup)
    cli.ok("memories", "add", "--scope", "project:api", "The api's tests run with make test", *db)
    cli.ok("memories", "export", "--scope", "project:api", "-o", link, *db)
    assert link.is_symlink() and len(backup.read_text().splitlines()) == 2
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    cli.ok("memories", "export", "--scope", "project:api", "-o", fifo, *db)
    assert len(reader.communicate(timeout=30)[0].splitlines()) == 2 and fifo.exists()


def test_an_export_while_a_proxy_updates_a_turn_holds_each_memory_once(tmp_path: Path, monkeypatch):
    """A running proxy updates a tool loop's turn (its date moves to now) while an export reads its pages."""
    from click.testing import CliRunner

    db = tmp_path / "m.db"
    store = LocalStore(db)
    asyncio.run(store.add_many([Memory(f"turn-{i}", "p", f"memory {i}", 0.0, {}, 1_700_000_000 + i) for i in range(1200)]))
    asyncio.run(store.close())
    reads = []
    run = LocalStore._run

    def run_then_update(self, fn, *args):  # after the export's first read, the proxy stores the turn's next step
        future = run(self, fn, *args)
        reads.append(fn.__name__)
        if len(reads) == 2:  # the connection's first call, then the first page
            with closing(sqlite3.connect(db)) as other:
                other.execute("UPDATE memories SET content = 'memory 100, its next step', created_at = 1800000000"
                              " WHERE custom_id = 'turn-100'")
                other.commit()
        return future

    monkeypatch.setattr(LocalStore, "_run", run_then_update)
    out = tmp_path / "export.jsonl"
    result = CliRunner().invoke(main, ["memories", "export", "--scope", "p", "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 1200


def test_an_import_with_text_no_store_holds_stores_nothing_and_names_the_line(cli: Cli, tmp_path: Path):
    db = ("--db", tmp_path / "m.db")
    lines = [json.dumps({"scope": "t", "content": f"memory {i} of the import"}) for i in range(600)]
    lines[550] = '{"scope": "t", "content": "a lone surrogate \\ud800 here"}'
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text("\n".join(lines) + "\n")
    result = cli("memories", "import", surrogate, *db)
    assert result.returncode == 1 and f"{surrogate}:551: text no store can hold" in result.stderr
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"scope": "t", "content": "fine"}\n{"scope": "t", "content": "caf\xe9"}\n')
    result = cli("memories", "import", binary, *db)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"Error: {binary}:2: not UTF-8 text: nothing was imported"
    assert "0 memories in t" in cli.ok("memories", "list", "--scope", "t", *db)


def test_an_import_the_disk_stops_says_how_much_it_stored_and_is_finished_by_running_it_again(cli: Cli, tmp_path: Path):
    import resource

    db = tmp_path / "m.db"
    cli.ok("memories", "add", "--scope", "t", "the store exists", "--db", db)
    lines = tmp_path / "many.jsonl"
    lines.write_text("".join(json.dumps({"scope": "t", "content": f"memory {i}: " + "words of a long note " * 25})
                             + "\n" for i in range(3000)))
    limit = db.stat().st_size + 2_000_000  # a disk that fills in the middle of the import

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run([str(MEMPROXY), "memories", "import", str(lines), "--db", str(db)], capture_output=True,
                          text=True, env=cli.env, preexec_fn=small_disk, timeout=120)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    at_least = int(re.search(r"the memories stored before it stay \(at least (\d+) of the 3000 new ones\)", full.stderr)[1])
    assert 0 < at_least < 3000 and "import the file again to store the rest" in full.stderr
    again = re.search(r"imported 3000 memories from .*, (\d+) of them new, (\d+) already there", cli.ok(
        "memories", "import", lines, "--db", db))
    assert int(again[2]) >= at_least and int(again[1]) + int(again[2]) == 3000 and int(again[1]) > 0


def test_import_reads_iso_dates_and_refuses_what_is_no_date(cli: Cli, tmp_path: Path):
    db = ("--db", tmp_path / "m.db")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"scope": "s", "content": c, "created_at": at}) + "\n" for c, at in [
        ("the api moved to fly.io", "2025-05-12"), ("the tests run with make test", "2025-05-12T10:30:00+02:00"),
        ("the docs build with mkdocs", 1_747_000_000), ("no date: stored as now", None),
    ]))  # fmt: skip
    assert "imported 4 memories" in cli.ok("memories", "import", good, *db)
    exported = {r["content"]: r["created_at"] for r in map(json.loads, cli.ok("memories", "export", "--scope", "s", *db).splitlines())}
    assert exported["the api moved to fly.io"] == datetime.datetime(2025, 5, 12, tzinfo=datetime.UTC).timestamp()
    assert exported["the tests run with make test"] == datetime.datetime(2025, 5, 12, 8, 30, tzinfo=datetime.UTC).timestamp()
    assert exported["the docs build with mkdocs"] == 1_747_000_000
    assert exported["no date: stored as now"] > datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()
    assert "fly.io" in cli.ok("memories", "search", "--scope", "s", "what moved in May 2025?", *db)
    # A date without an offset is a local one, as notes show dates
    west = tmp_path / "west.jsonl"
    west.write_text(json.dumps({"scope": "w", "content": "the api moved to fly.io", "created_at": "2025-05-12"}) + "\n")
    cli.ok("memories", "import", west, *db, env={"TZ": "XST+8"})
    [record] = map(json.loads, cli.ok("memories", "export", "--scope", "w", *db).splitlines())
    assert record["created_at"] == datetime.datetime(2025, 5, 12, 8, tzinfo=datetime.UTC).timestamp()

    for bad in (True, -5, 0, 1e300, "yesterday", "12/05/2025", [2025], "0001-01-01"):
        lines = tmp_path / "bad.jsonl"
        lines.write_text(json.dumps({"scope": "t", "content": "first, fine"}) + "\n"
                         + json.dumps({"scope": "t", "content": "dated badly", "created_at": bad}) + "\n")
        result = cli("memories", "import", lines, *db)
        assert result.returncode == 1, bad
        assert result.stderr.strip() == (f"Error: {lines}:2: missing or invalid created_at (a Unix time, or an ISO 8601"
                                         " date)"), bad
    assert "0 memories in t" in cli.ok("memories", "list", "--scope", "t", *db)  # nothing half imported


# -- secrets in memories ---------------------------------------------------------------------


def seed_secrets(seed: int = 21) -> tuple[list[str], list[str]]:
    """Memories holding fake secrets, and the secrets."""
    m = Maker(seed)
    secrets = [anthropic_key(m), aws_key_id(m), aws_secret(m), github_token(m), openssh_key(m)]
    memories = [
        f"User: deploy with {secrets[0]} please\nAssistant: done",
        f"User: AWS {secrets[1]} {secrets[2]}\nAssistant: I pushed with {secrets[3]}",
        f"User: my key\n{secrets[4]}\nAssistant: stored",
    ]
    return memories, secrets


def files_with(directory: Path, secrets: list[str]) -> list[str]:
    """The files under `directory` whose bytes hold any of `secrets`."""
    return sorted(p.name for p in directory.rglob("*")
                  if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets))


def seed_outbox(path: Path, contents: list[str]) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(table.SCHEMA)
        table.enqueue(db, "turn-1", "claude-code:shop", contents[0], {}, 1.0)
        db.execute(table.BURY, ("turn-2", "claude-code:shop", contents[1], "{}", 1.0, 400, "rejected", 1, 2.0))


EXPECTED_KINDS = ("Anthropic API key", "AWS access key", "AWS secret access key", "GitHub token", "private key")


def test_memories_scrub_local(cli: Cli, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    db, outbox = data / "memories.db", data / "outbox.db"
    contents, secrets = seed_secrets()
    seed(db, "claude-code:shop", *contents, "User: nothing secret\nAssistant: fine")
    seed(db, "claude-code:other", contents[0])
    seed_outbox(outbox, contents)
    assert files_with(data, secrets) == ["memories.db", "outbox.db"]
    args = ("--db", db, "--outbox", outbox)

    dry = cli.ok("memories", "scrub", "--dry-run", *args)
    assert "would replace 6 secrets in 4 of 5 memories (local store) and 4 in 2 turns of the outbox" in dry, dry
    assert all(kind in dry for kind in EXPECTED_KINDS) and not [s for s in secrets if s in dry]
    assert files_with(data, secrets) == ["memories.db", "outbox.db"]  # nothing changed

    only = cli.ok("memories", "scrub", "--scope", "claude-code:other", *args)
    assert "replaced 1 secrets in 1 of 1 memories" in only, only
    done = cli.ok("memories", "scrub", *args)
    assert "replaced 5 secrets in 3 of 5 memories (local store) and 0 in 0 turns" in done, done
    assert not [s for s in secrets if s in done]
    # No file keeps them: not the store, its index, its WAL, the outbox or its dead letters.
    assert files_with(data, secrets) == []
    listed = cli.ok("memories", "list", "--scope", "claude-code:shop", *args[:2])
    assert "[secret: AWS secret access key]" in listed and "[secret: private key]" in listed
    assert "I pushed with [secret: GitHub token]" in cli.ok("memories", "search", "--scope", "claude-code:shop",
                                                            "pushed", *args[:2])
    assert "replaced 0 secrets in 0 of 5 memories" in cli.ok("memories", "scrub", *args)


def test_memories_scrub_cleans_the_files_a_trace_names(cli: Cli, tmp_path: Path, supermemory: FakeSupermemory):
    """A memory whose text holds no secret, but whose trace names a file under a path that does."""
    token = github_token(Maker(23))
    turn = "User: what is in the notes?\nAssistant: two ideas"
    trace = {"tool": "Claude Code", "calls": [f"Read /tmp/{token}/notes.md", "Bash"]}
    data = tmp_path / "data"
    data.mkdir()

    async def add(store: MemoryStore) -> None:
        try:
            await store.add("claude-code:shop", turn, custom_id="turn-1", metadata=trace)
        finally:
            await store.close()

    asyncio.run(add(LocalStore(data / "memories.db")))
    asyncio.run(add(SupermemoryStore(supermemory.api_key, supermemory.url)))
    local = cli.ok("memories", "scrub", "--db", data / "memories.db", "--outbox", data / "outbox.db")
    assert "replaced 1 secrets in 1 of 1 memories (local store)" in local and token not in local, local
    assert files_with(data, [token]) == []

    async def listed() -> list[Memory]:
        store = LocalStore(data / "memories.db")
        try:
            return await store.list("claude-code:shop")
        finally:
            await store.close()

    [memory] = asyncio.run(listed())
    assert memory.metadata["calls"] == ["Read /tmp/[secret: GitHub token]/notes.md", "Bash"]
    assert memory.content == turn and "notes.md" in cli.ok("memories", "search", "--scope", "claude-code:shop",
                                                            "notes.md", "--db", data / "memories.db")

    env = {"SUPERMEMORY_API_KEY": supermemory.api_key, "SUPERMEMORY_BASE_URL": supermemory.url}
    remote = cli.ok("memories", "scrub", "--backend", "supermemory", "--outbox", data / "outbox.db", env=env)
    assert "replaced 1 secrets in 1 of 1 memories (supermemory store)" in remote, remote
    [doc] = supermemory.documents.values()
    assert doc.content == turn and token not in json.dumps(doc.metadata) and "[secret: GitHub token]" in doc.metadata["calls"]


def test_memories_scrub_supermemory(cli: Cli, tmp_path: Path, supermemory: FakeSupermemory):
    contents, secrets = seed_secrets(22)

    async def add() -> None:
        store = SupermemoryStore(supermemory.api_key, supermemory.url)
        try:
            for i, content in enumerate(contents):
                await store.add("claude-code:shop", content, custom_id=f"turn-{i}", metadata={"n": i})
            await store.add("codex:other", contents[0])
            await store.add("claude-code:shop", "User: nothing secret\nAssistant: fine")
        finally:
            await store.close()

    asyncio.run(add())
    env = {"SUPERMEMORY_API_KEY": supermemory.api_key, "SUPERMEMORY_BASE_URL": supermemory.url}
    args = ("--backend", "supermemory", "--outbox", tmp_path / "outbox.db")
    before = {doc.id: (doc.custom_id, doc.metadata, doc.container_tag) for doc in supermemory.documents.values()}

    dry = cli.ok("memories", "scrub", "--dry-run", *args, env=env)
    assert "would replace 6 secrets in 4 of 5 memories (supermemory store)" in dry, dry
    assert supermemory.count("/v3/documents/list") and not [r for r in supermemory.requests if r.method == "PATCH"]

    shop = cli.ok("memories", "scrub", "--scope", "claude-code:shop", *args, env=env)
    assert "replaced 5 secrets in 3 of 4 memories" in shop, shop
    rest = cli.ok("memories", "scrub", *args, env=env)  # every document the key can list
    assert "replaced 1 secrets in 1 of 5 memories" in rest, rest
    assert not [s for s in secrets if s in dry + shop + rest]

    documents = supermemory.documents.values()
    assert not [s for s in secrets for doc in documents if s in doc.content]
    assert sum("[secret: " in doc.content for doc in documents) == 4
    assert {doc.id: (doc.custom_id, doc.metadata, doc.container_tag) for doc in documents} == before  # only content
    patched = [r for r in supermemory.requests if r.method == "PATCH"]
    assert len(patched) == 4 and all(set(r.json) == {"content"} for r in patched)


def test_exports_of_two_stores_import_into_one_without_loss(cli: Cli, tmp_path: Path):
    exports = []
    for name, content in (("laptop", "The shop deploys with fly.io"), ("desktop", "The shop's tests run with make test")):
        db = ("--db", tmp_path / f"{name}.db")
        cli.ok("memories", "add", "--scope", "project:shop", content, *db)  # each store's first memory: its id is 1
        exports.append(tmp_path / f"{name}.jsonl")
        exports[-1].write_text(cli.ok("memories", "export", "--scope", "project:shop", *db))
    assert {json.loads(e.read_text())["id"] for e in exports} == {"1"}
    merged = ("--db", tmp_path / "merged.db")
    assert "1 of them new" in cli.ok("memories", "import", exports[0], *merged)
    assert "1 of them new" in cli.ok("memories", "import", exports[1], *merged)
    assert "0 of them new" in cli.ok("memories", "import", exports[1], *merged)  # again: nothing new
    listed = cli.ok("memories", "list", "--scope", "project:shop", *merged)
    assert "2 memories" in listed and "fly.io" in listed and "make test" in listed


def test_an_export_restored_into_its_own_store_adds_nothing(cli: Cli, tmp_path: Path):
    db = ("--db", tmp_path / "m.db")
    for note in ("The shop deploys with fly.io", "The shop's tests run with make test"):
        cli.ok("memories", "add", "--scope", "project:shop", note, *db)  # by hand: no custom id
    export = tmp_path / "shop.jsonl"
    export.write_text(cli.ok("memories", "export", "--scope", "project:shop", *db))
    assert "0 of them new, 2 already there" in cli.ok("memories", "import", export, *db)
    assert "2 memories" in cli.ok("memories", "list", "--scope", "project:shop", *db)


def test_memories_add_and_import_replace_secrets(cli: Cli, tmp_path: Path):
    db = ("--db", tmp_path / "memories.db")
    contents, secrets = seed_secrets(23)
    added = cli("memories", "add", "--scope", "s", contents[1], *db)
    assert added.returncode == 0, added.stderr
    assert "replaced 3 secrets by [secret: <kind>] before storing" in added.stderr
    assert "AWS access key x1" in added.stderr and not [s for s in secrets if s in added.stdout + added.stderr]
    export = tmp_path / "in.jsonl"
    export.write_text("".join(json.dumps({"scope": "s", "content": c, "id": f"i{n}"}) + "\n" for n, c in enumerate(contents)))
    imported = cli("memories", "import", export, *db)
    assert imported.returncode == 0 and "replaced 5 secrets" in imported.stderr, imported.stderr
    assert "2 of them new, 1 already there" in imported.stdout  # the one added, scrubbed alike
    listed = cli.ok("memories", "list", "--scope", "s", *db)
    assert listed.count("[secret: AWS access key]") == 1 and "[secret: private key]" in listed
    assert files_with(tmp_path, secrets) == [export.name]


# -- project memory: the user scope, moving and migrating -----------------------------------

SM_ENV_KEYS = ("SUPERMEMORY_API_KEY", "SUPERMEMORY_BASE_URL")
# The scope templates of earlier versions' default rules, for memories "made by the old naming".
OLD_RULES = """\
rules:
  - name: claude-code
    match:
      headers: {user-agent: '^claude-cli/'}
      json: {messages.*.content: 'Primary working directory: (?P<cwd>[^\\n]+)'}
    scope: 'claude-code:{cwd|basename}'
"""


def sm_env(fake: FakeSupermemory) -> dict[str, str]:
    return dict(zip(SM_ENV_KEYS, (fake.api_key, fake.url), strict=True))


def dump(db: Path) -> list[tuple[object, ...]]:
    """Every memory of the local store at `db`, as its table holds it."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT id, scope, custom_id, content, metadata, created_at FROM memories ORDER BY id").fetchall()


def scopes_of(db: Path) -> dict[str, list[str]]:
    """scope -> its memories' contents, oldest first."""
    found: dict[str, list[str]] = {}
    for _, scope, _, content, _, _ in dump(db):
        found.setdefault(scope, []).append(content)
    return found


def repo(path: Path) -> Path:
    """A directory that is a repository's root."""
    (path / ".git").mkdir(parents=True)
    return path


def worktree(repository: Path, path: Path) -> Path:
    """A linked worktree of `repository` at `path`, as `git worktree add` lays it out."""
    gitdir = repository / ".git/worktrees" / path.name
    gitdir.mkdir(parents=True)
    path.mkdir(parents=True)
    (gitdir / "commondir").write_text("../..\n")
    (gitdir / "gitdir").write_text(f"{path / '.git'}\n")
    (path / ".git").write_text(f"gitdir: {gitdir}\n")
    return path


def register(registry: Path, *roots: Path, tool: str | None = None) -> list[str]:
    """The roots' project names in the project registry at `registry` (a use by `tool` recorded)."""
    reg = ProjectRegistry(registry)
    names = [reg.register(str(root)) for root in roots]
    if tool:
        for root in roots:
            reg.note_use(str(root), tool)
        reg.flush()
    return names


def test_memories_add_user_goes_to_the_user_scope(cli: Cli, tmp_path: Path):
    db = ("--db", tmp_path / "memories.db")
    assert "to user" in cli.ok("memories", "add", "--user", "Answer in British English", *db)
    assert "British English" in cli.ok("memories", "list", "--scope", USER_SCOPE, *db)
    for both_or_neither in (("--user", "--scope", "project:x"), ()):
        result = cli("memories", "add", *both_or_neither, "no scope", *db)
        assert result.returncode == 2 and "give exactly one of --scope SCOPE and --user" in result.stderr
    assert scopes_of(tmp_path / "memories.db") == {USER_SCOPE: ["Answer in British English"]}


def test_memories_move_local(cli: Cli, tmp_path: Path):
    db = tmp_path / "memories.db"
    asyncio.run(seed_memories(LocalStore(db), "claude-code:api", [
        ("turn-1", "The api deploys with fly.io", {"tool": "Claude Code"}, 1_700_000_000.0),
        ("turn-2", "The api tests run with tox", {}, 1_700_000_100.0),
        ("turn-3", "The other api uses nox", {}, 1_700_000_200.0),
    ]))
    seed(db, "project:api", "already here")
    with closing(sqlite3.connect(db)) as earlier:  # a store of an earlier schema: a dry run does not migrate it
        earlier.execute("PRAGMA user_version = 3")
        earlier.commit()
    before = db.read_bytes()
    ids = {content: id_ for id_, _, _, content, _, _ in dump(db)}
    args = ("--from", "claude-code:api", "--to", "project:api", "--db", db)

    dry = cli.ok("memories", "move", *args, "--id", ids["The api deploys with fly.io"], "--dry-run")
    assert "would move 1 memories from claude-code:api to project:api; nothing was changed (dry run)" in dry
    assert "The api deploys with fly.io" in dry and "tox" not in dry
    assert db.read_bytes() == before and not db.with_name("memories.db-wal").exists()

    missing = cli("memories", "move", *args, "--id", ids["The api tests run with tox"], "--id", "999", "--yes")
    assert missing.returncode == 1 and "no memory 999 in scope claude-code:api; nothing was moved" in missing.stderr
    aborted = cli("memories", "move", *args, stdin="n\n")
    assert aborted.returncode == 1 and "Aborted" in aborted.stderr
    same = cli("memories", "move", "--from", "a", "--to", "a", "--db", db)
    assert same.returncode == 2 and "is the scope they are in already" in same.stderr
    assert scopes_of(db)["claude-code:api"] == [
        "The api deploys with fly.io", "The api tests run with tox", "The other api uses nox"]

    old = {r[0]: r for r in dump(db)}
    out = cli.ok("memories", "move", *args, "--id", ids["The api deploys with fly.io"],
                 "--id", ids["The api tests run with tox"], "--yes")
    assert "moved 2 memories from claude-code:api to project:api" in out
    assert scopes_of(db) == {"claude-code:api": ["The other api uses nox"],
                             "project:api": ["The api deploys with fly.io", "The api tests run with tox", "already here"]}
    for row in dump(db):  # id, custom id, content, metadata and date kept
        if row[1] == "project:api" and row[0] in old:
            assert row[2:] == old[row[0]][2:]
    found = cli.ok("memories", "search", "--scope", "project:api", "how does it deploy", "--db", db)
    assert "fly.io" in found  # indexed under its new scope
    assert "0 memories in claude-code:api" in cli.ok("memories", "search", "--scope", "claude-code:api", "fly.io", "--db", db)
    assert "moved 1 memories" in cli.ok("memories", "move", *args, "-y")
    assert "no memories in claude-code:api; nothing to move" in cli.ok("memories", "move", *args, "-y")


async def seed_memories(store: MemoryStore, scope: str, memories: list[tuple[str, str, dict[str, object], float]]) -> None:
    """Store (custom id, content, metadata, date) memories in `scope`, then close the store (Supermemory: undated)."""
    try:
        for custom_id, content, metadata, at in memories:
            if isinstance(store, LocalStore):
                await store.add_many([Memory(custom_id, scope, content, 0.0, metadata, at)])
            else:
                await store.add(scope, content, custom_id=custom_id, metadata=metadata)
    finally:
        await store.close()


def test_memories_move_supermemory(cli: Cli, supermemory: FakeSupermemory):
    asyncio.run(seed_memories(SupermemoryStore(supermemory.api_key, supermemory.url), "codex:api", [
        ("turn-1", "The api deploys with fly.io", {"tool": "Codex"}, 0.0),
        ("turn-2", "The api tests run with tox", {"tool": "Codex"}, 0.0),
    ]))
    args = ("--from", "codex:api", "--to", "project:api", "--backend", "supermemory")
    writes = len(supermemory.requests)
    assert "would move 2 memories" in cli.ok("memories", "move", *args, "--dry-run", env=sm_env(supermemory))
    assert not [r for r in supermemory.requests[writes:] if r.method != "POST" or r.path != "/v3/documents/list"]
    assert "moved 2 memories from codex:api to project:api" in cli.ok("memories", "move", *args, "-y", env=sm_env(supermemory))
    docs = list(supermemory.documents.values())
    assert sorted((d.container_tag, d.content, d.metadata["tool"]) for d in docs) == [
        (container_tag("project:api"), "The api deploys with fly.io", "Codex"),
        (container_tag("project:api"), "The api tests run with tox", "Codex"),
    ]


def test_memories_migrate_local(cli: Cli, tmp_path: Path):
    """Memories made under the per-tool scopes of the old naming are moved into the project scopes; the dry run
    changes nothing; a same-name collision and the one-per-tool scopes are reported, not moved."""
    shop, my_shop = repo(tmp_path / "work/shop"), repo(tmp_path / "work/my shop")
    api, other_api = repo(tmp_path / "work/api"), repo(tmp_path / "oss/api")
    registry, db = tmp_path / "projects.json", tmp_path / "memories.db"
    *names, other_name = register(registry, shop, my_shop, api, other_api)
    assert names == ["shop", "my-shop", "api"] and re.fullmatch(r"api@[0-9a-f]{6,}", other_name)
    register(registry, worktree(shop, tmp_path / "work/shop-wt"))  # registered as a project of its own before

    # The old rules' scope for Claude Code in "my shop" (a space: the scope name is rewritten with a hash).
    old_rules, body = tmp_path / "old.yaml", tmp_path / "body.json"
    old_rules.write_text(OLD_RULES)
    body.write_text(json.dumps(claude_body(str(my_shop), "hi")))
    explained = cli.ok("rules", "explain", "--rules", old_rules, "--ua", CLAUDE_UA, "--path", "/v1/messages", "--body", body)
    my_shop_scope = re.search(r"scope: (\S+)  rule: claude-code", explained)[1]
    assert my_shop_scope.startswith("claude-code:my-shop~")

    seed(db, "claude-code:shop", "The shop deploys with fly.io", "The shop's tests run with make test")
    seed(db, "codex:shop", "Codex: the shop's payments go through Stripe")
    seed(db, "gemini-cli:shop", "Gemini: the shop's CSS is Tailwind")
    seed(db, "claude-code:shop-wt", "The shop's worktree: the checkout page moves to htmx")  # the repository's now
    seed(db, my_shop_scope, "My shop sells tea")
    seed(db, "jetbrains:api", "JetBrains: one of the two api projects uses Django")  # mixed: two roots named api
    seed(db, "qwen-code", "Qwen: some project uses Rust")
    seed(db, "opencode", "opencode: some project uses Go")
    seed(db, "codex:legacy", "a project the proxy has not seen since")
    seed(db, "project:shop", "Already in the project scope")
    seed(db, "openai-sdk", "an SDK script's memory")
    args = ("--project-names", registry, "--db", db)
    original, before = dump(db), db.read_bytes()

    dry = cli.ok("memories", "migrate", "--dry-run", *args)
    assert db.read_bytes() == before and not db.with_name("memories.db-wal").exists()  # the dry run changes nothing
    for source, target, n in (("claude-code:shop", "project:shop", 2), ("codex:shop", "project:shop", 1),
                              ("gemini-cli:shop", "project:shop", 1), (my_shop_scope, "project:my-shop", 1),
                              ("claude-code:shop-wt", "project:shop", 1)):
        assert re.search(rf"{re.escape(source)}\s+│\s+{re.escape(target)}\s+│\s+{n}\b", dry), dry
    assert "would move 6 memories from 5 scopes; nothing was changed (dry run)" in dry
    assert ("jetbrains:api holds 1 memories of 2 projects whose directories share a name; they are mixed and cannot be"
            " split automatically, so they were not moved") in dry
    assert f"  {api}  ->  project:api" in dry and f"  {other_api}  ->  project:{other_name}" in dry
    for name in ("api", other_name):
        assert f"memproxy memories move --from jetbrains:api --to project:{name} --db {db} --id ID [--id ID ...]" in dry
    assert "qwen-code holds 1 memories of every project used with Qwen Code" in dry
    assert "opencode holds 1 memories of every project used with opencode" in dry
    assert ("no project named legacy seen yet: use any tool in it once through the proxy, then run migrate again"
            " (codex:legacy holds 1 memories; if legacy was a git worktree, move them into its repository's scope with"
            " `memproxy memories move`)") in " ".join(dry.split())

    aborted = cli("memories", "migrate", *args, stdin="n\n")
    assert aborted.returncode == 1 and dump(db) == original
    done = cli.ok("memories", "migrate", "--yes", *args)
    assert "moved 6 memories from 5 scopes into their projects' scopes" in done
    assert scopes_of(db) == {
        "project:shop": ["The shop deploys with fly.io", "The shop's tests run with make test",
                         "Codex: the shop's payments go through Stripe", "Gemini: the shop's CSS is Tailwind",
                         "The shop's worktree: the checkout page moves to htmx", "Already in the project scope"],
        "project:my-shop": ["My shop sells tea"],
        "jetbrains:api": ["JetBrains: one of the two api projects uses Django"],
        "qwen-code": ["Qwen: some project uses Rust"],
        "opencode": ["opencode: some project uses Go"],
        "codex:legacy": ["a project the proxy has not seen since"],
        "openai-sdk": ["an SDK script's memory"],
    }
    moved = {r[0]: r for r in dump(db)}
    assert all(moved[r[0]][2:] == r[2:] for r in original)  # ids, custom ids, contents, metadata and dates kept
    assert "Tailwind" in cli.ok("memories", "search", "--scope", "project:shop", "which css framework", "--db", db)

    again = cli.ok("memories", "migrate", "--yes", *args)  # a second run moves nothing
    assert "nothing to migrate" in again and "jetbrains:api holds 1 memories" in again
    assert dump(db) == list(moved.values())

    # The collision, sorted by hand with the printed command.
    [(mixed_id,)] = [(r[0],) for r in dump(db) if r[1] == "jetbrains:api"]
    cli.ok("memories", "move", "--from", "jetbrains:api", "--to", "project:api", "--db", db, "--id", mixed_id, "-y")
    assert scopes_of(db)["project:api"] == ["JetBrains: one of the two api projects uses Django"]

    # Under per-tool project memory, the per-tool scopes are the live ones: nothing to migrate.
    silos = tmp_path / "silos.yaml"
    silos.write_text("project_memory: per_tool\n")
    before = dump(db)
    refused = cli("memories", "migrate", "--yes", "--rules", silos, *args)
    assert refused.returncode == 1 and "project_memory: per_tool" in refused.stderr and dump(db) == before


def test_memories_migrate_supermemory(cli: Cli, tmp_path: Path, supermemory: FakeSupermemory):
    shop, api, other_api = repo(tmp_path / "work/shop"), repo(tmp_path / "work/api"), repo(tmp_path / "oss/api")
    registry = tmp_path / "projects.json"
    register(registry, shop, api, other_api, tool="Qwen Code")

    def store() -> SupermemoryStore:
        return SupermemoryStore(supermemory.api_key, supermemory.url)

    asyncio.run(seed_memories(store(), "claude-code:shop", [("t1", "The shop deploys with fly.io", {"tool": "Claude Code"}, 0)]))
    asyncio.run(seed_memories(store(), "codex:shop", [("t2", "The shop uses Stripe", {"tool": "Codex"}, 0)]))
    asyncio.run(seed_memories(store(), "codex:api", [("t3", "One api uses Django", {}, 0)]))
    asyncio.run(seed_memories(store(), "qwen-code", [("t4", "Some project uses Rust", {}, 0)]))
    args, env = ("--backend", "supermemory", "--project-names", registry), sm_env(supermemory)

    def writes_during(*command: object) -> tuple[str, list[str]]:
        first = len(supermemory.requests)
        out = cli.ok(*command, env=env)
        return out, [f"{r.method} {r.path}" for r in supermemory.requests[first:]
                     if r.method != "GET" and r.path != "/v3/documents/list"]

    dry, writes = writes_during("memories", "migrate", "--dry-run", *args)
    assert writes == []  # the fake received no writes
    assert "would move 2 memories from 2 scopes" in dry
    assert "codex:api holds 1 memories of 2 projects" in dry and "qwen-code holds 1 memories" in dry
    assert "--backend supermemory --id ID" in dry

    done, writes = writes_during("memories", "migrate", "--yes", *args)
    assert "moved 2 memories from 2 scopes" in done
    assert sorted(w.split()[0] for w in writes) == ["DELETE", "DELETE", "POST", "POST"]
    tags = sorted((d.container_tag, d.content, d.metadata.get("tool")) for d in supermemory.documents.values())
    assert tags == sorted([
        (container_tag("project:shop"), "The shop deploys with fly.io", "Claude Code"),
        (container_tag("project:shop"), "The shop uses Stripe", "Codex"),
        (container_tag("codex:api"), "One api uses Django", None),
        ("qwen-code", "Some project uses Rust", None),
    ])
    again, writes = writes_during("memories", "migrate", "--yes", *args)
    assert writes == [] and "nothing to migrate" in again


def test_projects_lists_every_project_seen(cli: Cli, tmp_path: Path):
    shop, api = repo(tmp_path / "work/shop"), repo(tmp_path / "work/api")
    data = cli.home / ".local/share/memproxy"  # the defaults: the project registry and the store
    register(data / "projects.json", shop, tool="Claude Code")
    register(data / "projects.json", shop, tool="Codex")
    register(data / "projects.json", api)
    out = cli.ok("projects")  # the bare group lists
    assert re.search(rf"api\s+│\s+project:api\s+│\s+│\s+{api}\s+│\s+-\s+│\s+0\s+│\s+-", out), out
    assert re.search(rf"shop\s+│\s+project:shop\s+│\s+│\s+{shop}\s+│\s+Claude Code, Codex\s+│\s+0\s+│\s+\d{{4}}-", out)
    assert not (data / "memories.db").exists()  # listing creates no store

    seed(data / "memories.db", "project:shop", "one", "two")
    seed(data / "memories.db", "claude-code:shop", "not the project's scope")
    cli.ok("projects", "add", shop)
    port = int(re.search(r"port (\d+)", cli.ok("projects", "add", shop))[1])
    listed = cli.ok("projects", "list")
    assert re.search(rf"shop\s+│\s+project:shop\s+│\s+{port}\s+│\s+{shop}\s+│\s+Claude Code, Codex\s+│\s+2\s+│", listed), listed
    assert listed == cli.ok("projects")

    # a worktree's port is its repository's: on the repository's row, beside the repository's own port
    wt = worktree(shop, tmp_path / "work/shop-wt")
    wt_port = int(re.search(r"port (\d+)", cli.ok("projects", "add", wt))[1])
    listed = cli.ok("projects", "list")
    assert re.search(rf"shop\s+│\s+project:shop\s+│\s+{port}, {wt_port}\s+│\s+{shop}\s+│", listed), listed
    assert "not used yet" not in listed

    empty = Cli(tmp_path / "empty-home")
    assert "no projects seen yet" in empty.ok("projects")


def test_projects_counts_supermemory_memories(cli: Cli, tmp_path: Path, supermemory: FakeSupermemory):
    shop = repo(tmp_path / "shop")
    registry = tmp_path / "projects.json"
    register(registry, shop)
    asyncio.run(seed_memories(SupermemoryStore(supermemory.api_key, supermemory.url), "project:shop",
                              [(f"t{i}", f"memory {i}", {}, 0) for i in range(3)]))
    out = cli.ok("projects", "list", "--backend", "supermemory", "--project-names", registry, env=sm_env(supermemory))
    assert re.search(rf"shop\s+│\s+project:shop\s+│\s+│\s+{shop}\s+│\s+-\s+│\s+3\s+│", out), out
    supermemory.fault = "500"
    failed = cli("projects", "list", "--backend", "supermemory", "--project-names", registry, env=sm_env(supermemory))
    assert failed.returncode == 0 and "memories not counted" in failed.stderr and "project:shop" in failed.stdout


# -- projects and dead letters ---------------------------------------------------------------


def test_projects_add_list_remove(cli: Cli, tmp_path: Path):
    registry = ("--registry", tmp_path / "ports.json")
    alpha, beta = tmp_path / "alpha", tmp_path / "beta"
    alpha.mkdir()
    beta.mkdir()
    out = cli.ok("projects", "add", alpha, *registry)
    port = int(re.search(r"project alpha: port (\d+)", out)[1])
    assert f"base URL for the IDE: http://127.0.0.1:{port}/v1" in out
    assert f"port {port}" in cli.ok("projects", "add", alpha, *registry)  # stable
    beta_port = int(re.search(r"port (\d+)", cli.ok("projects", "add", beta, *registry))[1])
    assert beta_port != port

    listed = cli.ok("projects", "list", *registry)
    assert re.search(rf"alpha\s+│\s+-\s+│\s+{port}\s+│\s+{alpha}\s+│.*not used yet", listed)  # no tool used it yet
    assert "IDEs reach a project through its port: base URL http://127.0.0.1:PORT/v1" in listed
    assert "beta" in listed

    assert "removed" in cli.ok("projects", "remove", alpha, *registry)
    assert "alpha" not in cli.ok("projects", "list", *registry)
    again = cli("projects", "remove", alpha, *registry)
    assert again.returncode == 1 and "is not a registered project" in again.stderr
    missing = cli("projects", "add", tmp_path / "nope", *registry)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_dead_letters_empty(cli: Cli, tmp_path: Path):
    assert "No dead letters." in cli.ok("dead-letters", "--outbox", tmp_path / "outbox.db")


def test_dead_letters_of_a_file_that_is_no_outbox_is_a_clear_error_that_changes_nothing(cli: Cli, tmp_path: Path):
    store = tmp_path / "memories.db"
    cli.ok("memories", "add", "--scope", "s", "a memory", "--db", store)
    before = store.read_bytes()
    for args in (("dead-letters",), ("dead-letters", "--requeue"), ("dead-letters", "--json")):
        result = cli(*args, "--outbox", store)
        assert result.returncode == 1 and "is not a memproxy outbox" in result.stderr, result.stderr
    with closing(sqlite3.connect(store)) as db:
        assert {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {"memories"}
        assert db.execute("SELECT name FROM sqlite_master WHERE name IN ('outbox', 'dead_letters')").fetchall() == []
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    result = cli("dead-letters", "--outbox", junk)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "cannot read the dead letters" in result.stderr
    assert len(store.read_bytes()) == len(before)


def test_dead_letters_requeued(cli: Cli, tmp_path: Path):
    outbox = ("--outbox", tmp_path / "outbox.db")
    seed_outbox(tmp_path / "outbox.db", ["User: deploy\nAssistant: done", "User: tests\nAssistant: make test"])
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        db.execute(table.BURY, ("turn-3", "claude-code:shop", "User: a\nAssistant: b", "{}", 1.0, 401, "HTTP 401", 1, 2.0))
    assert "requeued 1 dead letter" in cli.ok("dead-letters", "--requeue", "--status", "401", *outbox)
    assert "turn-2" in cli.ok("dead-letters", "--json", *outbox)  # a 400 is left alone
    assert "requeued 1 dead letter" in cli.ok("dead-letters", "--requeue", *outbox)
    assert "No dead letters." in cli.ok("dead-letters", *outbox)
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        waiting = db.execute("SELECT custom_id, next_attempt_at FROM outbox ORDER BY id").fetchall()
    assert waiting == [("turn-1", 0), ("turn-3", 0), ("turn-2", 0)]  # in the order requeued, each due now
    assert cli("dead-letters", "--status", "401", *outbox).returncode == 2


# -- against a real proxy --------------------------------------------------------------------


def test_status_not_running(cli: Cli):
    result = cli("status", "--port", free_port())
    assert result.returncode == 1
    assert "memproxy is not running on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_a_memory_forgotten_from_the_command_line_is_recalled_no_more(cli: Cli, mitmdump, upstream, openai_client, tmp_path: Path):
    """The running proxy notices another process's change to its store: what recall cached of it goes."""
    db = ("--db", tmp_path / "m.db")
    cli.ok("memories", "add", "--scope", "team", "The staging password rotates on Mondays", *db)
    [memory_id] = re.findall(r"added memory (\S+) to team", cli.ok("memories", "add", "--scope", "team", "Staging is eu-west", *db))
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: team\n    user_id: team\n    store: false\n")  # no turn of its own clears it
    proc = mitmdump(upstream=upstream, options={"memory_db": str(tmp_path / "m.db"), "memory_rules": str(rules)})
    client = openai_client(proc)

    def recalled() -> str:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "What about staging?"}])
        return json.dumps(upstream.last("/chat/completions").json)

    assert "rotates on Mondays" in recalled() and "eu-west" in recalled()  # the second from recall's cache
    cli.ok("memories", "forget", "--scope", "team", memory_id, "--yes", *db)
    # Well before the cached entry's 30 s run out
    assert wait_until(lambda: "eu-west" not in recalled(), timeout=15), proc.log_text()
    assert "rotates on Mondays" in recalled()


@pytest.mark.e2e
def test_status_of_a_running_proxy(cli: Cli, mitmdump, upstream, openai_client, tmp_path: Path):
    proc = mitmdump(upstream=upstream, options={"memory_db": str(tmp_path / "m.db")})
    openai_client(proc).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    out = cli.ok("status", "--port", proc.port)
    assert f"memproxy is running on 127.0.0.1:{proc.port}" in out
    assert "listeners: regular" in out
    assert "backend: local memory store" in out and "recall circuit closed" in out
    # one request, two searches: the route's scope and the user scope beside it
    assert re.search(r"recall: [\d.]+ ms median, [\d.]+ ms p99 \(last 2 searches\)", out)
    assert "dead letters 0" in out
    assert re.search(r"openai-sdk\s+│\s+1\b", out)


@pytest.mark.e2e
def test_run_execs_mitmdump_with_the_addon(cli: Cli, mitm_ca: Path, tmp_path: Path):
    port, confdir = free_port(), tmp_path / "conf"
    shutil.copytree(mitm_ca, confdir)
    argv = [str(MEMPROXY), "run", "-p", str(port), "--confdir", str(confdir), "--set", f"memory_db={tmp_path / 'm.db'}"]
    proc = subprocess.Popen(argv, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not listening(port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "memproxy is running" in cli.ok("status", "--port", port)
    finally:
        proc.terminate()  # the same process: `run` replaced itself with mitmdump
        proc.wait(10)
    banner = proc.stderr.read()
    assert f"memproxy on http://127.0.0.1:{port} (mitmdump" in banner
    assert 'eval "$(memproxy env)"' in banner


@pytest.mark.e2e
def test_wrap_starts_the_proxy_runs_an_sdk_script_and_stops_it(cli: Cli, upstream, mitm_ca: Path, tmp_path: Path):
    port, confdir, db = free_port(), tmp_path / "conf", tmp_path / "memories.db"
    shutil.copytree(mitm_ca, confdir)
    seed(db, "openai-sdk", "User: which door?\nAssistant: The door is painted blue.")
    result = cli(
        "wrap", "--port", port, "--confdir", confdir,
        "--set", f"memory_db={db}", "--set", f"memory_outbox={tmp_path / 'outbox.db'}", "-s", REDIRECT,
        "--", sys.executable, FAKES / "sdk_client.py", "Which door was painted?", "3",
        env={"MEMPROXY_TEST_UPSTREAM": str(upstream.port)},
    )
    assert result.returncode == 3, result.stdout + result.stderr  # the client's own exit code
    assert DEFAULT_REPLY in result.stdout
    assert f"started the proxy on http://127.0.0.1:{port}" in result.stderr
    rec = upstream.last("/v1/chat/completions")
    assert rec.headers["host"] == "api.openai.com"  # sent to https://api.openai.com, decrypted by the proxy
    assert "The door is painted blue." in json.dumps(rec.json)  # and given its memory on the way
    assert not listening(port)  # wrap stopped the proxy it started


@pytest.mark.e2e
def test_wrap_uses_a_running_proxy_and_leaves_it_running(cli: Cli, mitmdump, tmp_path: Path):
    proc = mitmdump(options={"memory_db": str(tmp_path / "m.db")})
    code = "import os, sys; print(os.environ['HTTPS_PROXY'], os.environ['SSL_CERT_FILE']); sys.exit(5)"
    result = cli("wrap", "--port", proc.port, "--confdir", proc.confdir, sys.executable, "-c", code)
    assert result.returncode == 5
    assert result.stdout.split() == [f"http://127.0.0.1:{proc.port}", str(proc.confdir / "memproxy-bundle.pem")]
    assert "started the proxy" not in result.stderr
    assert listening(proc.port)


@pytest.mark.e2e
def test_wrap_reports_a_proxy_that_fails_to_start(cli: Cli, mitm_ca: Path, tmp_path: Path):
    port, confdir = free_port(), tmp_path / "conf"
    shutil.copytree(mitm_ca, confdir)
    result = cli("wrap", "--port", port, "--confdir", confdir, "--set", "memory_timeout_ms=-1", "--", "true")
    assert result.returncode == 1
    assert "Error: the proxy exited with" in result.stderr
    assert "memory_timeout_ms must be >= 0" in result.stderr  # its log
    assert not listening(port)


def test_wrap_reports_a_missing_command(cli: Cli, tmp_path: Path):
    port = free_port()
    with socket.socket() as server:  # something listens: wrap starts no proxy
        server.bind(("127.0.0.1", port))
        server.listen()
        result = cli("wrap", "--port", port, "--confdir", tmp_path / "conf", "no-such-command-xyz")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: cannot run no-such-command-xyz: No such file or directory"
