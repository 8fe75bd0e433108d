"""Redaction: credentials never persist in flows (option `memory_redact`, on by default).

When a flow is finished (hooks `response`, `error`, `websocket_end`; `done` for flows still open
at shutdown), its request has gone upstream: the values of its credential headers, of a `key=`
query parameter, and of any header carrying the Supermemory key or the SDK gateway's secret are
replaced by a marker. Script addons run before mitmproxy's Save and Dumper addons, so a flow file
(`-w`, `save_stream_file`), mitmdump's flow log and mitmweb's finished flows show the marker.

A WebSocket handshake is shown redacted at its 101 too, then gets its credentials back while the
connection lasts: the rules route its messages by its headers. Responses are never touched: the
client still needs them, upstream `Set-Cookie` included.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import quote

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from ..wire import CREDENTIAL_HEADERS, MARK

if TYPE_CHECKING:
    from .sdk import Sdk
    from .store import Store

MIN_SECRET = 8  # shorter values are not matched inside other headers

_NAMES = frozenset(name.encode() for name in CREDENTIAL_HEADERS)
_MARK = MARK.encode()
_KEY_PARAM = re.compile(rb"(?<=[?&])key=[^&#]*")
_KEY_MARK = b"key=" + quote(MARK).encode()


class Redact:
    """Replaces a finished flow's request credentials by a marker, before the flow is saved or logged."""

    def __init__(self, store: Store | None = None, sdk: Sdk | None = None) -> None:
        self.store, self.sdk = store, sdk  # for the Supermemory key and the SDK gateway's secret
        self.enabled = True
        self._live: dict[str, http.HTTPFlow] = {}  # flows whose request has gone upstream, not yet finished
        self._held: dict[str, tuple[tuple[tuple[bytes, bytes], ...], bytes]] = {}  # WebSocket handshakes

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_redact",
            bool,
            True,
            "Once a request has gone upstream, replace its credentials (Authorization, API keys, cookies,"
            f" ?key=, the Supermemory key) in the flow by {MARK}, so flow files and logs never hold them.",
        )

    def configure(self, updated: set[str]) -> None:
        if "memory_redact" in updated:
            self.enabled = ctx.options.memory_redact

    def request(self, flow: http.HTTPFlow) -> None:
        if self.enabled:
            self._live[flow.id] = flow

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self._finish(flow)
        elif self.enabled:  # a WebSocket's handshake: Dumper and mitmweb show the flow now
            self._held[flow.id] = (flow.request.headers.fields, flow.request.data.path)
            self.redact(flow.request)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        """Give the handshake its credentials back while the connection lasts: rules route its messages."""
        if held := self._held.pop(flow.id, None):
            flow.request.headers.fields, flow.request.data.path = held

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def done(self) -> None:
        """Flows unfinished at shutdown: Save writes them too, after this hook."""
        for flow in self._live.values():
            self.redact(flow.request)
        self._live.clear()

    def _finish(self, flow: http.HTTPFlow) -> None:
        self._live.pop(flow.id, None)
        self._held.pop(flow.id, None)
        self.redact(flow.request)

    def redact(self, req: http.Request) -> None:
        if not self.enabled:
            return
        fields = req.headers.fields
        hits = [i for i, (name, _) in enumerate(fields) if name.lower() in _NAMES]
        if secrets := self._secrets():
            blob = b"\n".join([value for _, value in fields])
            for secret in secrets:
                if secret in blob:
                    hits += [i for i, (_, value) in enumerate(fields) if secret in value]
        if hits:
            redacted = list(fields)
            for i in hits:
                redacted[i] = (redacted[i][0], _MARK)
            req.headers.fields = tuple(redacted)
        if b"key=" in (path := req.data.path):
            req.data.path = _KEY_PARAM.sub(_KEY_MARK, path)

    def _secrets(self) -> tuple[bytes, ...]:
        """memproxy's own secrets that a request may carry: the Supermemory key, the SDK gateway's secret."""
        gateway = self.sdk.gateway if self.sdk is not None else None
        values = (self.store.supermemory_key if self.store is not None else "", gateway.secret if gateway is not None else "")
        return tuple(v.encode() for v in values if len(v) >= MIN_SECRET)
