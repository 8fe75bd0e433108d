"""Projects: one listener per registered project port (options `memory_projects`, `memory_project_mode`).

The port registry (`memproxy projects add`) is followed once a second: a project added or removed gets or
loses its listener without a restart. The request path asks which project a listen port belongs to.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import ProxyMode, RegularMode, ReverseMode

from ..logs import Once, brief
from ..ports import PortRegistry, Project, ProjectListeners
from .common import spawn

logger = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between two looks at the registry


def listener_mode(spec: str) -> str:
    """A project listener's mode: 'regular' or a reverse-proxy spec, without a listen address (the project's
    port is appended). Raises ValueError with what is wrong."""
    mode = ProxyMode.parse(spec)
    if not isinstance(mode, RegularMode | ReverseMode):
        raise ValueError(f"{spec!r} is neither 'regular' nor a reverse-proxy spec")
    if mode.custom_listen_host is not None or mode.custom_listen_port is not None:
        raise ValueError(f"{spec!r} names a listen address; each project listens on its own port")
    return spec


class Projects:
    """Keeps a listener open on each registered project's port."""

    def __init__(self) -> None:
        self.listeners: ProjectListeners | None = None
        self._task: asyncio.Task | None = None
        self._once = Once(logger)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_projects", str, "", "Per-project port registry (JSON). Empty: ports.json in the user's config dir."
        )
        loader.add_option(
            "memory_project_mode",
            str,
            "reverse:https://api.openai.com",
            "Listener opened on each registered project's port: a reverse-proxy spec, or 'regular'.",
        )

    def configure(self, updated: set[str]) -> None:
        if not updated & {"memory_projects", "memory_project_mode"}:
            return
        opts = ctx.options
        try:
            mode = listener_mode(opts.memory_project_mode)
        except ValueError as e:
            raise exceptions.OptionsError(f"memory_project_mode: {e}") from e
        path = opts.memory_projects or None
        if path is not None and Path(path).is_dir():
            raise exceptions.OptionsError(f"memory_projects: {path} is a directory")
        registry = PortRegistry(path)
        if self.listeners is None:
            self.listeners = ProjectListeners(registry, mode)
        else:  # while running: the next look replaces the listeners
            self.listeners.use(registry, mode)

    def running(self) -> None:
        self._task = spawn(self._follow(), "project listeners")

    def done(self) -> None:
        if self._task:
            self._task.cancel()

    def project_for_port(self, port: int) -> Project | None:
        """The registered project listening on `port`, if any."""
        return self.listeners.project_for_port(port) if self.listeners else None

    def project_path(self, port: int) -> str | None:
        """The path of the registered project listening on `port`, if any."""
        project = self.project_for_port(port)
        return project.path if project else None

    def projects(self) -> list[Project]:
        """The projects that have a listener now."""
        return self.listeners.projects() if self.listeners else []

    async def _follow(self) -> None:
        while True:
            try:
                await self.listeners.sync()
            except Exception as e:  # noqa: BLE001 - a bad registry must not stop the listeners' upkeep
                self._once("listeners", "memproxy: project listeners not updated: %s", brief(e))
            await asyncio.sleep(INTERVAL)
