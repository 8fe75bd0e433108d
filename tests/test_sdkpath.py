"""The SDK path's own bookkeeping, at unit level (the path itself runs end to end in test_e2e_sdk*.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from memproxy import sdkpath
from memproxy.sdkpath import MAX_CLIENTS, RESEND_WINDOW, SdkPath
from mitmproxy.test import tutils


def test_a_pair_sent_back_again_is_the_last_one_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(scope, host) pairs asked to send a challenged request again are forgotten least recently sent back
    first: one sent back again after its window is not forgotten before pairs sent back since, so its request,
    sent again, gets the replay instead of a second 307."""
    now = [0.0]
    monkeypatch.setattr(sdkpath.time, "monotonic", lambda: now[0])
    path = SdkPath(tmp_path / "cookies.json", ttl=3600, timeout=30, resend=re.compile("claude-cli"))
    req = tutils.treq(host="api.anthropic.com", headers=((b"user-agent", b"claude-cli/2.0"),))
    assert path._resends(req, "first") and path._resends(req, "second")
    now[0] = RESEND_WINDOW + 1
    assert path._resends(req, "first")  # its window over: sent back again, now more recent than "second"
    for i in range(MAX_CLIENTS - 1):  # one pair too many: the least recent, "second", is forgotten
        assert path._resends(req, f"other-{i}")
    assert not path._resends(req, "first")  # still within its window: the replay, not another 307
