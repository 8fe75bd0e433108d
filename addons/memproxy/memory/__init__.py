"""Memory stores: where a scope's memories are kept and searched."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..rules import MemoryConfig, resolve_env
from .base import Memory, MemoryStore, StoreError
from .local import LocalStore
from .supermemory import DEFAULT_BASE_URL, SupermemoryStore

__all__ = ["Backend", "Memory", "MemoryStore", "StoreError", "choose_backend", "configured_backend", "open_store"]

BACKENDS = ("auto", "local", "supermemory")


@dataclass(frozen=True, slots=True)
class Backend:
    """The chosen backend and its settings (secrets resolved; never log `api_key`)."""

    name: str  # "local" | "supermemory"
    reason: str  # why this one, for the start-up log
    path: str | None = None
    api_key: str | None = None
    base_url: str = DEFAULT_BASE_URL
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
    SUPERMEMORY_API_KEY / SUPERMEMORY_BASE_URL. Raises ValueError with what to fix."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown memory backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    sm = {k: v for k, v in (supermemory or {}).items() if v}
    key = sm.get("api_key") or environ.get("SUPERMEMORY_API_KEY") or None
    if backend == "local" or (backend == "auto" and not key):
        reason = "chosen" if backend == "local" else "auto: no SUPERMEMORY_API_KEY"
        return Backend("local", reason, path=path)
    if not key:
        raise ValueError("memory backend 'supermemory' needs an API key: set SUPERMEMORY_API_KEY")
    return Backend(
        "supermemory",
        "chosen" if backend == "supermemory" else "auto: SUPERMEMORY_API_KEY is set",
        api_key=key,
        base_url=sm.get("base_url") or environ.get("SUPERMEMORY_BASE_URL") or DEFAULT_BASE_URL,
        search_mode=sm.get("search_mode") or "hybrid",
        container_tag=sm.get("container_tag") or "{scope}",
    )


def configured_backend(
    backend: str, path: str | None, config: MemoryConfig, environ: Mapping[str, str] = os.environ
) -> Backend:
    """The backend as an option names it (`backend`, `path`: empty = not set), else as the rules file's
    `memory:` section does (its ${ENV} references resolved), else auto. Raises ValueError."""
    supermemory = {k: resolve_env(v, environ) for k, v in config.supermemory.items()}
    return choose_backend(
        backend or config.backend, path=path or config.local_path or None, supermemory=supermemory, environ=environ
    )


def open_store(backend: Backend) -> MemoryStore:
    """The store for a chosen backend (no I/O yet: call `await store.open()`)."""
    if backend.name == "local":
        return LocalStore(backend.path)
    return SupermemoryStore(
        backend.api_key or "", backend.base_url, search_mode=backend.search_mode, container_tag=backend.container_tag
    )
