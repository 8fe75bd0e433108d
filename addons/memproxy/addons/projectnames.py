"""ProjectNames: the project a client's working directory belongs to, named for the rules (option
`memory_project_names`).

The rules' `project` filter asks `cached` on the event loop; a directory it does not know yet is looked
up by `resolve` (memproxy.repos: its root in a thread, cached; its name from the project registry, in a
thread), after which the request is matched again. Each directory costs one look-up per cache lifetime,
not one per request. A registry that cannot be read or written in time still gives a name: the root's
name with its hash, which no other root can have.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from ..logs import Once, brief
from ..repos import UNKNOWN, ProjectRegistry, RegistryError, Roots, assign_name
from ..rules.templates import ProjectUnknown
from .common import spawn

logger = logging.getLogger(__name__)

MAX_FALLBACKS = 4096  # roots named without the registry


class ProjectNames:
    """Names the projects that hold working directories: `project:<name>` scopes."""

    def __init__(self) -> None:
        self.roots = Roots()
        self.registry: ProjectRegistry | None = None
        self._fallback: OrderedDict[str, str] = OrderedDict()  # root -> name, while the registry cannot tell
        self._naming: dict[str, asyncio.Task[str]] = {}  # root -> its registration in the registry
        self._once = Once(logger)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_project_names", str, "",
            "Project registry (JSON): the name of every project seen, the tools used in it and when."
            " Empty: projects.json in the user's data dir.",
        )

    def configure(self, updated: set[str]) -> None:
        if "memory_project_names" not in updated:
            return
        path = ctx.options.memory_project_names or None
        if path is not None and Path(path).is_dir():
            raise exceptions.OptionsError(f"memory_project_names: {path} is a directory")
        if self.registry is not None:  # while running: the uses noted so far go to the old file
            spawn(self.registry.aclose(), "project registry")
        self.registry = ProjectRegistry(path)
        self._fallback.clear()

    async def done(self) -> None:
        if self.registry is not None:
            await self.registry.aclose()

    # -- for the rules ------------------------------------------------------

    def cached(self, path: str) -> tuple[str, str] | None:
        """(root, name) of the project holding `path`; None if it is no project. Raises ProjectUnknown."""
        root = self.roots.cached(path)
        if root is UNKNOWN:
            raise ProjectUnknown(path)
        if root is None:
            return None
        name = (self.registry.cached_name(root) if self.registry else None) or self._fallback.get(root)
        if name is None:
            raise ProjectUnknown(path)
        return root, name

    async def resolve(self, path: str, budget: float) -> None:
        """Look up the project of `path` within `budget` seconds, so that `cached` knows it."""
        root = await self.roots.resolve(path)
        if root is None or self.registry is None or self.registry.cached_name(root):
            return
        task = self._naming.get(root)
        if task is None:
            task = self._naming[root] = asyncio.ensure_future(self.registry.name(root))
            task.add_done_callback(lambda t, root=root: self._named(root, t))
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                await asyncio.shield(task)
        except TimeoutError:
            self._once("slow", "memproxy: the project registry did not answer within %g s; naming %s by its hash"
                       " meanwhile", budget, root)
            self._remember(root, assign_name(root, (), plain=False))
        except (RegistryError, OSError):
            pass  # _named said it and named the root

    def used(self, root: str, tool: str) -> None:
        """Record that `tool` was used in the project at `root` (written in the background)."""
        if self.registry is not None:
            self.registry.note_use(root, tool)

    def _named(self, root: str, task: asyncio.Task[str]) -> None:
        self._naming.pop(root, None)
        if task.cancelled():
            return
        if (e := task.exception()) is not None:
            self._once(("error", type(e)), "memproxy: the project registry cannot name %s (%s); using its name with"
                       " its hash", root, brief(e))
            self._remember(root, assign_name(root, (), plain=False))
        else:
            self._fallback.pop(root, None)

    def _remember(self, root: str, name: str) -> None:
        self._fallback[root] = name
        self._fallback.move_to_end(root)
        while len(self._fallback) > MAX_FALLBACKS:
            self._fallback.popitem(last=False)
