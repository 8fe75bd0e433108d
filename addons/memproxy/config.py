"""Configuration: the memory backend's settings, `${ENV}` references, default paths, and ConfigError.

A leaf of the package: it imports nothing of memproxy's, so every layer can use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

APP = "memproxy"
BACKENDS: tuple[str, ...] = ("auto", "local", "supermemory")
SUPERMEMORY_URL = "https://api.supermemory.ai"  # the Supermemory backend's base URL unless one is set
DEFAULT_RULES = Path(__file__).resolve().parents[2] / "rules" / "memory.yaml"  # shipped with memproxy
# The addon's last start-up line: its options are valid and it serves requests. `memproxy wrap` waits for it.
READY_LINE = "memproxy: point clients here"

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$|^os\.environ/([A-Za-z_][A-Za-z0-9_]*)$")


class ConfigError(ValueError):
    """A setting memproxy cannot use: the message says which and what to fix."""


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """The rules file's `memory:` section: which backend, and its settings. Secrets stay as written
    (e.g. "${SUPERMEMORY_API_KEY}"): the caller resolves them with `resolve_env`."""

    backend: str = "auto"  # auto | local | supermemory
    local_path: str | None = None
    supermemory: Mapping[str, str] = field(default_factory=dict)  # api_key, base_url, search_mode, container_tag


def resolve_env(value: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """`${NAME}` or `os.environ/NAME` -> the variable's value (None if unset); other strings as they are."""
    if value is None:
        return None
    if m := _ENV_REF.match(value.strip()):
        return environ.get(m.group(1) or m.group(2)) or None
    return value


def data_dir() -> Path:
    """memproxy's data directory (the store, the outbox, the cookie jars, the project registry)."""
    return platformdirs.user_data_path(APP)


def config_dir() -> Path:
    """memproxy's configuration directory (the port registry)."""
    return platformdirs.user_config_path(APP)


def log_dir() -> Path:
    """memproxy's log directory (proxies started by `memproxy wrap`)."""
    return platformdirs.user_log_path(APP)


def store_path() -> Path:
    return data_dir() / "memories.db"


def outbox_path() -> Path:
    return data_dir() / "outbox.db"


def cookies_path() -> Path:
    return data_dir() / "cookies.json"


def threads_path() -> Path:
    return data_dir() / "threads.json"


def projects_path() -> Path:
    return data_dir() / "projects.json"


def registry_path() -> Path:
    return config_dir() / "ports.json"
