"""Memory stores: where a scope's memories are kept and searched.

The backends' modules are imported when a store is opened: the local store needs neither httpx nor
Supermemory's client, and Supermemory's does not need SQLite's worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import BACKENDS, SUPERMEMORY_URL, ConfigError, MemoryConfig, resolve_env
from .base import Memory, MemoryStore, StoreError

__all__ = ["Backend", "Memory", "MemoryStore", "StoreError", "choose_backend", "configured_backend", "open_store"]

@dataclass(frozen=True, slots=True)
class Backend:
    """The chosen backend and its settings (secrets resolved; never log `api_key`)."""

    name: str  # "local" | "supermemory"
    reason: str  # why this one, for the start-up log
    path: str | None = None
    api_key: str | None = None
    base_url: str = SUPERMEMORY_URL
    search_mode: str = "hybrid"
    container_tag: str = "{scope}"

    def describe(self) -> str:
        where = (self.path or "the default data dir") if self.name == "local" else self.base_url
        return f"{self.name} memory store ({where}; {self.reason})"


def choose_backend(
    backend: str,
    *,
    path: str | None = None,
    supermemory: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Backend:
    """Resolve `auto | local | supermemory` like the official SDK reads its settings:
    rules-file values (already resolved from ${ENV} references) first, then
    SUPERMEMORY_API_KEY / SUPERMEMORY_BASE_URL. Raises ConfigError with what to fix."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown memory backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    sm = {k: v for k, v in (supermemory or {}).items() if v}
    key = sm.get("api_key") or environ.get("SUPERMEMORY_API_KEY") or None
    if backend == "local" or (backend == "auto" and not key):
        reason = "chosen" if backend == "local" else "auto: no SUPERMEMORY_API_KEY"
        return Backend("local", reason, path=path)
    if not key:
        raise ConfigError("memory backend 'supermemory' needs an API key: set SUPERMEMORY_API_KEY")
    return Backend(
        "supermemory",
        "chosen" if backend == "supermemory" else "auto: SUPERMEMORY_API_KEY is set",
        api_key=key,
        base_url=sm.get("base_url") or environ.get("SUPERMEMORY_BASE_URL") or SUPERMEMORY_URL,
        search_mode=sm.get("search_mode") or "hybrid",
        container_tag=sm.get("container_tag") or "{scope}",
    )


def configured_backend(
    backend: str, path: str | None, config: MemoryConfig, environ: Mapping[str, str] = os.environ
) -> Backend:
    """The backend as an option names it (`backend`, `path`: empty = not set), else as the rules file's
    `memory:` section does (its ${ENV} references resolved), else auto. Raises ConfigError."""
    supermemory = {k: resolve_env(v, environ) for k, v in config.supermemory.items()}
    return choose_backend(
        backend or config.backend, path=path or config.local_path or None, supermemory=supermemory, environ=environ
    )


def open_store(backend: Backend, *, read_only: bool = False) -> MemoryStore:
    """The store for a chosen backend (no I/O yet: call `await store.open()`); `read_only`: the local store is
    read, never created, migrated or written (a dry run)."""
    if backend.name == "local":
        from .local import LocalStore

        return LocalStore(backend.path, read_only=read_only)
    from .supermemory import SupermemoryStore

    return SupermemoryStore(
        backend.api_key or "", backend.base_url, search_mode=backend.search_mode, container_tag=backend.container_tag
    )
