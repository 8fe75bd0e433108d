"""Cookie sessions: per-(scope, host) jars and clients, challenge marks with a TTL, persistence."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from fakes import FakeUpstream
from memproxy.cookies import CookieSessions

HOST = "api.anthropic.com"
CHALLENGE = ["cf_clearance=tok-123; Path=/; Secure; HttpOnly", "__cf_bm=bm-456; Path=/; Max-Age=1800"]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_jars_are_per_scope_and_host(tmp_path: Path) -> None:
    sessions = CookieSessions(tmp_path / "c.json")
    sessions.note_challenge("alice:repo", HOST, CHALLENGE)
    assert dict(sessions.jar("alice:repo", HOST)) == {"cf_clearance": "tok-123", "__cf_bm": "bm-456"}
    assert sessions.jar("alice:repo", HOST) is sessions.jar("alice:repo", HOST.upper())
    assert dict(sessions.jar("bob:repo", HOST)) == {}
    assert dict(sessions.jar("alice:repo", "api.openai.com")) == {}


def test_challenge_marks_expire_after_the_ttl(tmp_path: Path) -> None:
    clock = Clock()
    sessions = CookieSessions(tmp_path / "c.json", ttl=60, clock=clock)
    assert not sessions.requires_sdk("alice", HOST)
    sessions.note_challenge("alice", HOST, [])
    assert sessions.requires_sdk("alice", HOST) and sessions.requires_sdk("alice", "API.anthropic.com")
    assert not sessions.requires_sdk("bob", HOST) and not sessions.requires_sdk("alice", "api.openai.com")
    clock.now += 59
    assert sessions.requires_sdk("alice", HOST)
    sessions.note_challenge("alice", HOST, [])  # a new challenge starts the TTL again
    clock.now += 59
    assert sessions.requires_sdk("alice", HOST)
    clock.now += 2
    assert not sessions.requires_sdk("alice", HOST)


async def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "cookies.json"
    clock = Clock()
    sessions = CookieSessions(path, ttl=60, clock=clock)
    sessions.note_challenge("alice", HOST, CHALLENGE)
    sessions.note_challenge("bob", "api.openai.com", ["sid=b0b; Path=/v1"])
    clock.now += 30
    sessions.note_challenge("carol", HOST, [])  # a mark without cookies
    await sessions.save()
    await sessions.aclose()
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["cookies.json"]  # no temp file left

    restored = CookieSessions(path, ttl=60, clock=clock)
    await restored.load()
    assert dict(restored.jar("alice", HOST)) == {"cf_clearance": "tok-123", "__cf_bm": "bm-456"}
    [cookie] = list(restored.jar("bob", "api.openai.com").jar)
    assert (cookie.name, cookie.value, cookie.path, cookie.domain) == ("sid", "b0b", "/v1", "api.openai.com")
    assert {c.name: c.secure for c in restored.jar("alice", HOST).jar} == {"cf_clearance": True, "__cf_bm": False}
    assert restored.requires_sdk("alice", HOST) and restored.requires_sdk("carol", HOST)

    clock.now += 45  # alice's mark (and no cookie) has expired, carol's has not
    later = CookieSessions(path, ttl=60, clock=clock)
    await later.load()
    assert not later.requires_sdk("alice", HOST) and later.requires_sdk("carol", HOST)
    assert dict(later.jar("alice", HOST)) == {"cf_clearance": "tok-123", "__cf_bm": "bm-456"}


async def test_expired_cookies_are_neither_saved_nor_restored(tmp_path: Path) -> None:
    path = tmp_path / "cookies.json"
    sessions = CookieSessions(path)
    sessions.note_challenge("alice", HOST, ["gone=1; Path=/; Expires=Thu, 01 Jan 2015 00:00:00 GMT", "kept=2; Path=/"])
    await sessions.save()
    assert "gone" not in path.read_text()
    restored = CookieSessions(path)
    await restored.load()
    assert dict(restored.jar("alice", HOST)) == {"kept": "2"}


async def test_missing_file_is_an_empty_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sessions = CookieSessions(tmp_path / "absent.json")
    await sessions.load()
    assert dict(sessions.jar("alice", HOST)) == {} and not sessions.requires_sdk("alice", HOST)
    assert not caplog.records


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"version": 99, "sessions": []}),
        json.dumps({"version": 1, "sessions": [{"scope": "a", "host": HOST, "cookies": [{"bad": 1}], "sdk_until": 0}]}),
    ],
    ids=["syntax", "shape", "version", "cookie"],
)
async def test_corrupt_file_is_kept_as_bak_and_we_start_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    path = tmp_path / "cookies.json"
    path.write_text(content)
    path.chmod(0o600)  # as memproxy writes it: a looser file would add a warning of its own
    sessions = CookieSessions(path)
    with caplog.at_level(logging.WARNING):
        await sessions.load()
    # Only this module's records: another test's leftovers (a task collected now) may log meanwhile.
    assert [r.levelno for r in caplog.records if r.name == "memproxy.cookies"] == [logging.WARNING]
    assert (tmp_path / "cookies.json.bak").read_text() == content
    assert not path.exists() and dict(sessions.jar("a", HOST)) == {}
    sessions.note_challenge("a", HOST, ["x=1"])
    await sessions.save()  # and the next save writes a good file
    restored = CookieSessions(path)
    await restored.load()
    assert dict(restored.jar("a", HOST)) == {"x": "1"}


async def test_unwritable_location_logs_and_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    sessions = CookieSessions(tmp_path / "file" / "cookies.json")  # a parent that is a file
    sessions.note_challenge("alice", HOST, ["secret-cookie=s3cr3t-value"])
    with caplog.at_level(logging.WARNING):
        await sessions.save()
    assert "Could not save" in caplog.text and "s3cr3t-value" not in caplog.text


async def test_client_sends_and_stores_its_jar_and_saves_changes(tmp_path: Path, upstream: FakeUpstream) -> None:
    path = tmp_path / "cookies.json"
    sessions = CookieSessions(path, timeout=7)
    with sessions.lease("alice", "127.0.0.1") as client:
        with sessions.lease("alice", "127.0.0.1") as again:
            assert again is client  # pooled
        with sessions.lease("bob", "127.0.0.1") as bob:
            assert bob is not client
        assert client.timeout.read == 7

        upstream.require_cookie = "cf_clearance"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        first = await client.post(f"{upstream.url}/v1/chat/completions", json=body)
        assert first.status_code == 403 and first.headers["cf-mitigated"] == "challenge"
        assert sessions.jar("alice", "127.0.0.1")["cf_clearance"] == upstream.cookie_token
        second = await client.post(f"{upstream.url}/v1/chat/completions", json=body)
        assert second.status_code == 200
        assert upstream.requests[-1].headers["cookie"] == f"cf_clearance={upstream.cookie_token}"
    with sessions.lease("bob", "127.0.0.1") as bob:
        assert (await bob.post(f"{upstream.url}/v1/chat/completions", json=body)).status_code == 403
    assert "cookie" not in upstream.requests[-1].headers

    await sessions.aclose()  # waits for the saves the Set-Cookie responses scheduled
    assert client.is_closed
    saved = json.loads(path.read_text())
    assert {(s["scope"], s["host"]) for s in saved["sessions"]} == {("alice", "127.0.0.1"), ("bob", "127.0.0.1")}
    assert upstream.cookie_token in path.read_text()
    with sessions.lease("alice", "127.0.0.1") as later:
        assert not later.is_closed  # a later use opens a new one
    await sessions.aclose()


class Ticker:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_clients_are_bounded_least_recently_used_first(tmp_path: Path) -> None:
    sessions = CookieSessions(tmp_path / "c.json", max_clients=3)
    seen = []
    for n in range(10):
        with sessions.lease(f"scope-{n}", HOST) as client:
            seen.append(client)
        assert sessions.open_clients() <= 3
    await asyncio.sleep(0)  # the evicted clients close in the background
    await asyncio.gather(*sessions._tasks)
    assert [c.is_closed for c in seen] == [True] * 7 + [False] * 3
    with sessions.lease("scope-7", HOST) as client:  # a use moves it to the back of the line
        assert client is seen[7]
    with sessions.lease("scope-new", HOST):
        pass
    await asyncio.gather(*sessions._tasks)
    assert not seen[7].is_closed and seen[8].is_closed
    await sessions.aclose()
    assert all(c.is_closed for c in seen)


async def test_a_client_in_use_is_closed_only_when_its_user_is_done(tmp_path: Path) -> None:
    sessions = CookieSessions(tmp_path / "c.json", max_clients=1)
    with sessions.lease("busy", HOST) as busy:
        with sessions.lease("other", HOST) as other:
            assert sessions.open_clients() == 1
            await asyncio.gather(*sessions._tasks)
            assert not busy.is_closed
            with sessions.lease("busy", HOST) as fresh:  # the pool has a new one for the pair meanwhile
                assert fresh is not busy
        await asyncio.gather(*sessions._tasks)
        assert not busy.is_closed and other.is_closed
    await asyncio.gather(*sessions._tasks)
    assert busy.is_closed and not fresh.is_closed
    await sessions.aclose()


async def test_evicted_pairs_keep_their_jar_only_with_cookies_or_a_mark(tmp_path: Path) -> None:
    clock = Clock()
    sessions = CookieSessions(tmp_path / "c.json", max_clients=1, ttl=60, clock=clock)
    sessions.note_challenge("with-cookies", HOST, CHALLENGE)
    sessions.note_challenge("marked", HOST, [])
    for scope in ("with-cookies", "marked", "empty", "last"):
        with sessions.lease(scope, HOST):
            pass
    assert set(sessions._jars) == {("with-cookies", HOST), ("marked", HOST), ("last", HOST)}
    assert dict(sessions.jar("with-cookies", HOST)) == {"cf_clearance": "tok-123", "__cf_bm": "bm-456"}
    clock.now += 61  # the mark has expired: the next eviction of the pair forgets it
    for scope in ("marked", "last"):
        with sessions.lease(scope, HOST):
            pass
    assert set(sessions._jars) == {("with-cookies", HOST), ("last", HOST)} and not sessions._marks.keys() - {
        ("with-cookies", HOST)
    }
    await sessions.aclose()


async def test_idle_clients_are_closed(tmp_path: Path) -> None:
    ticker = Ticker()
    sessions = CookieSessions(tmp_path / "c.json", idle=30, monotonic=ticker)
    with sessions.lease("old", HOST) as old:
        pass
    ticker.now += 20
    with sessions.lease("recent", HOST) as recent:
        ticker.now += 15
        with sessions.lease("busy", HOST) as busy:
            ticker.now += 40
            sessions.close_idle()  # "busy" is in use, however long ago it started
            await asyncio.gather(*sessions._tasks)
            assert old.is_closed and not busy.is_closed and not recent.is_closed
        sessions.close_idle()
        assert sessions.open_clients() == 2
    ticker.now += 30
    sessions.close_idle()
    await asyncio.gather(*sessions._tasks)
    assert busy.is_closed and recent.is_closed and sessions.open_clients() == 0
    await sessions.aclose()


async def test_the_idle_timer_closes_clients_without_further_requests(tmp_path: Path) -> None:
    sessions = CookieSessions(tmp_path / "c.json", idle=0.05)
    with sessions.lease("alice", HOST) as client:
        pass
    for _ in range(200):  # a wait, bounded, not a timing assertion
        if client.is_closed:
            break
        await asyncio.sleep(0.05)
    assert client.is_closed and sessions.open_clients() == 0
    await sessions.aclose()


async def test_clients_do_not_follow_redirects_and_run_the_response_hooks(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    seen: list[int] = []

    async def hook(response: httpx.Response) -> None:
        seen.append(response.status_code)

    sessions = CookieSessions(tmp_path / "c.json")
    sessions.add_response_hook(hook)
    sessions.add_response_hook(hook)  # once is enough
    with FakeUpstream() as internal:
        upstream.fail_status, upstream.fail_headers = 307, {"Location": f"{internal.url}/v1/chat/completions"}
        with sessions.lease("alice", "127.0.0.1") as client:
            response = await client.post(f"{upstream.url}/v1/chat/completions", json={"model": "m", "messages": []})
        assert response.status_code == 307 and internal.requests == []
    assert seen == [307]
    await sessions.aclose()
