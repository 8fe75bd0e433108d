"""SDK: the SDK path's options and lifetime (`memory_cookies`, `memory_sdk_ttl`, `memory_sdk_timeout`).

At start the cookie jars are restored, the loopback gateway is warmed only if a rule routes to it, and litellm
only if a rule maps a client to another provider's model; otherwise the gateway starts with the first request
that takes the SDK path, and litellm with the first translation. The request path
decides which requests take it; the guard and redaction need the gateway's port and secret.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from .. import config
from ..sdkpath import SdkPath
from .common import spawn
from .ruleswatcher import RulesWatcher

if TYPE_CHECKING:
    from ..gateway import Gateway

# The clients that send a request again on a 307 to the same URL, body included, as tests/test_e2e_sdk_clients.py
# checks: Claude Code, Gemini CLI, Codex (HTTP), Qwen Code and opencode.
RESEND = r"^(?:claude-cli/|GeminiCLI[-/]|codex_(?:exec|cli_rs|vscode)/|codex-tui/|QwenCode/|opencode/)"


class Sdk:
    """Restores the cookie jars at start, warms the gateway if a rule routes to it, closes both at exit."""

    def __init__(self, rules: RulesWatcher) -> None:
        self.rules = rules
        self.path: SdkPath | None = None  # from `running` on
        self.resend: re.Pattern[str] | None = re.compile(RESEND)

    @property
    def gateway(self) -> Gateway | None:
        """The gateway, once it has been started."""
        return self.path.gateway if self.path is not None else None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_cookies", str, "", "Cookie jars of the SDK path (0600). Empty: cookies.json in the user's data dir."
        )
        loader.add_option(
            "memory_sdk_ttl",
            int,
            3600,
            "After an upstream's cookie challenge, seconds that (scope, host) keeps going through the SDK path.",
        )
        loader.add_option(
            "memory_sdk_timeout", int, 600, "Seconds a request on the SDK path may take, streaming included."
        )
        loader.add_option(
            "memory_sdk_resend",
            str,
            RESEND,
            "User agents (a regex) asked, by a 307 to the same URL, to send a cookie-challenged request again, so"
            " that its reply streams through the SDK path; other clients get a replay's reply in one piece. Empty:"
            " always the replay.",
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "memory_sdk_ttl" in updated and opts.memory_sdk_ttl < 0:
            raise exceptions.OptionsError("memory_sdk_ttl must be >= 0")
        if "memory_sdk_timeout" in updated and opts.memory_sdk_timeout <= 0:
            raise exceptions.OptionsError("memory_sdk_timeout must be > 0")
        if "memory_sdk_resend" in updated:
            try:
                self.resend = re.compile(opts.memory_sdk_resend) if opts.memory_sdk_resend else None
            except re.error as e:
                raise exceptions.OptionsError(f"memory_sdk_resend is not a regular expression: {e}") from None
            if self.path is not None:
                self.path.resend = self.resend
        if "memory_cookies" in updated:
            cookies = self._cookies()
            if self.path is not None and cookies != self.path.cookies_path:
                raise exceptions.OptionsError(
                    f"memory_cookies cannot change while memproxy runs (the gateway holds the jars of"
                    f" {self.path.cookies_path}): restart memproxy to use another file"
                )
        if self.path is not None and updated & {"memory_sdk_ttl", "memory_sdk_timeout"}:
            self.path.limit(opts.memory_sdk_ttl, opts.memory_sdk_timeout)

    @staticmethod
    def _cookies() -> Path:
        value = ctx.options.memory_cookies
        if value and Path(value).is_dir():
            raise exceptions.OptionsError(f"memory_cookies: {value} is a directory")
        return Path(value or config.cookies_path())

    def running(self) -> None:
        rules = self.rules.rules
        if rules is None:
            return
        # Synchronous, so that the SDK path exists before the store's start-up awaits: the proxy already listens.
        self.path = SdkPath(self._cookies(), ctx.options.memory_sdk_ttl, ctx.options.memory_sdk_timeout, self.resend)
        # Warm the gateway only if a rule routes to it, and litellm only if a rule maps a client to another
        # provider's model; else just restore the cookie jars.
        spawn(self.path.ready(translate=rules.translates) if "sdk" in rules.routes else self.path.load(), "SDK path")

    async def done(self) -> None:
        if self.path:
            await self.path.close()

    def status(self) -> dict[str, Any]:
        """What `memproxy status` shows of the SDK path."""
        gateway = self.gateway
        return {"gateway_port": (gateway.port or None) if gateway else None, "litellm_loaded": "litellm" in sys.modules}
