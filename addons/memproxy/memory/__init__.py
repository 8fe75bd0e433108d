"""Memory stores: where a scope's memories are kept and searched."""

from __future__ import annotations

from .base import Memory, MemoryStore, StoreError
from .local import LocalStore

__all__ = ["Memory", "MemoryStore", "StoreError", "open_store"]

BACKENDS = ("local",)


def open_store(backend: str = "local", path: str | None = None) -> MemoryStore:
    """The store for `backend`; `path` is the local store's file (None: the user's data dir)."""
    if backend == "local":
        return LocalStore(path)
    raise ValueError(f"unknown memory backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
