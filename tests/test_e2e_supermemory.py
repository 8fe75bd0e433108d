"""End to end with the Supermemory backend: a real mitmdump, the official SDKs, a fake Supermemory with faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MITMDUMP, ROOT, SUPERMEMORY_KEY, free_port
from e2e_helpers import MEMORY_TAG, chat, outbox_rows, seed_store, start_with_supermemory, wait_until
from memproxy.memory.supermemory import SupermemoryStore

pytestmark = pytest.mark.e2e


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


def test_auto_backend_remembers_and_recalls_through_supermemory(mitmdump, upstream, openai_client, supermemory, outbox):
    proc = start_with_supermemory(mitmdump, upstream, supermemory, outbox)
    client = openai_client(proc, via="reverse")
    upstream.reply = "Noted: releases are cut every second Tuesday."
    chat(client, "Our release train leaves every second Tuesday.")
    assert wait_until(lambda: len(supermemory.documents) == 1), proc.log_text()
    doc = next(iter(supermemory.documents.values()))
    assert doc.container_tag == "openai-sdk" and doc.custom_id
    assert "second Tuesday" in doc.content and doc.metadata["model"] == "gpt-4o"

    seed_store(SupermemoryStore(SUPERMEMORY_KEY, supermemory.url), "user", "When talking of the release train, answer in British English.")
    chat(client, "When does the release train leave?")
    with supermemory._seen:
        searches = [r.json for r in supermemory.requests if r.path == "/v4/search"][-2:]
    # the route's scope and the user scope, each its own containerTag, searched side by side
    assert sorted(s["containerTag"] for s in searches) == ["openai-sdk", "user"]
    assert {s["q"] for s in searches} == {"When does the release train leave?"}
    sent = upstream.last("/chat/completions").json["messages"][0]["content"]
    ours, users = sent.split("From scope user (your preferences in every project):")
    assert "second Tuesday" in ours and "British English" in users and "second Tuesday" not in users
    log = proc.log_text()
    assert "supermemory memory store" in log and "auto: SUPERMEMORY_API_KEY is set" in log
    assert SUPERMEMORY_KEY not in log


def test_a_turn_asked_again_with_a_word_changed_stays_one_document(mitmdump, upstream, openai_client, supermemory, outbox):
    proc = start_with_supermemory(mitmdump, upstream, supermemory, outbox)
    client = openai_client(proc, via="reverse")
    question = "How do we roll back a bad deploy of the billing api?"
    upstream.reply = "Run make rollback with the previous release tag, then watch the error rate for ten minutes."
    chat(client, question)
    assert wait_until(lambda: len(supermemory.documents) == 1 and outbox_rows(outbox) == 0), proc.log_text()
    [first] = supermemory.documents
    # Asked again with a word changed (another turn, so another custom id), answered with a word changed.
    upstream.reply = upstream.reply.replace("ten minutes", "fifteen minutes")
    chat(client, question.replace("bad", "broken"), stream=True)
    assert wait_until(lambda: "fifteen minutes" in supermemory.documents[first].content), proc.log_text()
    assert wait_until(lambda: outbox_rows(outbox) == 0)
    assert list(supermemory.documents) == [first]
    assert supermemory.count(f"/v3/documents/{first}") == 1  # updated in place (PATCH)
    assert "broken deploy" in supermemory.documents[first].content


# A slow or refusing backend, and a SIGKILLed proxy with turns pending: test_hard_faults.py's fault table.
@pytest.mark.parametrize("fault", ["429", "500", "bad_json", "kill"])
def test_faults_fail_open_and_every_turn_arrives_exactly_once(mitmdump, upstream, openai_client, supermemory, outbox, fault):
    proc = start_with_supermemory(mitmdump, upstream, supermemory, outbox)
    client = openai_client(proc, via="reverse")
    supermemory.fault = fault
    questions = [f"Question {i} about the {word} module?" for i, word in enumerate(["parser", "lexer", "linker"])]
    for i, question in enumerate(questions):
        assert chat(client, question, stream=i % 2 == 1) == upstream.reply
    assert all(MEMORY_TAG not in json.dumps(r.json) for r in upstream.requests)
    supermemory.fault = None
    assert wait_until(lambda: len(supermemory.documents) >= 3), proc.log_text()
    time.sleep(1.5)  # any duplicate would be sent by now
    contents = sorted(doc.content for doc in supermemory.documents.values())
    assert len(contents) == 3 and all(q in c for q, c in zip(sorted(questions), contents))
    assert wait_until(lambda: outbox_rows(outbox) == 0)
    assert SUPERMEMORY_KEY not in proc.log_text()


def test_cache_and_circuit_breaker_by_request_counts(mitmdump, upstream, openai_client, supermemory, outbox, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: team\n    user_id: team\n    store: false\n")
    proc = start_with_supermemory(mitmdump, upstream, supermemory, outbox, memory_rules=str(rules))
    client = openai_client(proc, via="reverse")
    for _ in range(3):
        chat(client, "What is our branching model?")
    assert supermemory.count("/v4/search") == 1  # the cache answered the repeats

    supermemory.fault = "500"
    for i in range(12):
        assert chat(client, f"Distinct question number {i}?") == upstream.reply
    assert supermemory.count("/v4/search") == 1 + 5  # the breaker opened after 5 failures
    assert "skipping recall" in proc.log_text()


def test_out_of_credits_is_logged_once(mitmdump, upstream, openai_client, supermemory, outbox):
    proc = start_with_supermemory(mitmdump, upstream, supermemory, outbox)
    client = openai_client(proc, via="reverse")
    supermemory.fault_paths, supermemory.status_override = {"/v4/search"}, 402
    for i in range(4):
        assert chat(client, f"Anything about topic {i}?") == upstream.reply
    assert proc.log_text().count("out of credits (402)") == 1


def test_permanent_rejection_is_a_dead_letter_never_retried(mitmdump, upstream, openai_client, supermemory, outbox):
    proc = start_with_supermemory(mitmdump, upstream, supermemory, outbox)
    client = openai_client(proc, via="reverse")
    supermemory.fault_paths, supermemory.status_override = {"/v3/documents"}, 400
    chat(client, "This turn will be rejected by the backend")
    assert wait_until(lambda: supermemory.count("/v3/documents") == 1)
    time.sleep(1.5)
    assert supermemory.count("/v3/documents") == 1
    cli = Path(sys.executable).parent / "memproxy"
    listed = subprocess.run([cli, "dead-letters", "--outbox", str(outbox), "--json"], capture_output=True, text=True, timeout=60)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == 400 and "rejected by the backend" in rows[0]["content"]
    assert SUPERMEMORY_KEY not in proc.log_text() + listed.stdout


def test_memory_router_mode(mitmdump, upstream, openai_client, supermemory, outbox, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: routed\n    user_id: team-x\n    route: supermemory_router\n")
    proc = start_with_supermemory(mitmdump, upstream, supermemory, outbox, memory_rules=str(rules))
    client = openai_client(proc, via="reverse")
    assert chat(client, "Hello router") == "Answered via the Memory Router."
    rec = supermemory.requests[-1]
    assert rec.path == f"/v3/http://127.0.0.1:{upstream.port}/v1/chat/completions"
    assert rec.headers["x-supermemory-api-key"] == SUPERMEMORY_KEY and rec.headers["x-sm-user-id"] == "team-x"
    assert rec.json["messages"] == [{"role": "user", "content": "Hello router"}]  # no injection of our own
    assert not upstream.requests
    assert SUPERMEMORY_KEY not in proc.log_text()


def test_supermemory_backend_without_key_stops_startup(tmp_path):
    argv = [str(MITMDUMP), "-s", "addons/memory.py", "--listen-host", "127.0.0.1", "-p", str(free_port()),
            "--set", f"confdir={tmp_path}", "--set", "memory_backend=supermemory"]
    env = {k: v for k, v in os.environ.items() if k != "SUPERMEMORY_API_KEY"}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    assert "needs an API key: set SUPERMEMORY_API_KEY" in done.stdout + done.stderr


def test_profile_mode_injects_profile_facts(mitmdump, upstream, openai_client, supermemory, outbox, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: me\n    user_id: dev-42\n    profile: true\n")
    supermemory.profiles["dev-42"] = {"static": ["Prefers Go over Rust"], "dynamic": ["Migrating auth to OIDC"]}
    proc = start_with_supermemory(mitmdump, upstream, supermemory, outbox, memory_rules=str(rules))
    chat(openai_client(proc, via="reverse"), "What should I work on next?")
    sent = json.dumps(upstream.last("/chat/completions").json["messages"])
    assert "Prefers Go over Rust" in sent and "Migrating auth to OIDC" in sent, proc.log_text()
    assert supermemory.last("/v4/profile").json == {"containerTag": "dev-42"}
