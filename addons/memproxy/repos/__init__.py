"""Projects: the repository that holds a client's working directory, and the project's name.

- `roots`: what a project is: `project_root(path)`, the nearest ancestor holding a VCS marker, or the path
  as written when it is not on this machine, or None in a client's own state dir;
- `lookup`: `Roots`, the same for the event loop: cached, in threads, within a time budget;
- `registry`: `ProjectRegistry`, each root's readable, stable, never shared name, and the tools and times
  it was used, in one JSON file.

Callers build the scope from the name (`project:<name>`).
"""

from .lookup import UNKNOWN, Roots, Unknown
from .registry import ProjectRecord, ProjectRegistry, RegistryError, assign_name, plain_name
from .roots import MARKERS, STATE_DIRS, as_written, in_state_dir, project_root

__all__ = [
    "MARKERS", "STATE_DIRS", "UNKNOWN", "ProjectRecord", "ProjectRegistry", "RegistryError", "Roots", "Unknown",
    "as_written", "assign_name", "in_state_dir", "plain_name", "project_root",
]
