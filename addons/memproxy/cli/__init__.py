"""The `memproxy` command line: run the proxy, point clients at it, and see and edit what it remembers.

One module per command group; `common` holds what several of them use. The command modules import
only click and rich at the top: whatever imports mitmproxy, litellm or the stores is imported inside
the commands that need it, so that `eval "$(memproxy env)"` in a shell's start-up file stays quick.
"""

from __future__ import annotations

import click

from . import clients, dead_letters, memories, projects, proxy, rules, status

COMMANDS = (proxy.run, clients.env, proxy.wrap, clients.certs, status.status, rules.rules, memories.memories,
            projects.projects, dead_letters.dead_letters)


@click.group(commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """memproxy: long-term memory for AI coding tools, as a mitmproxy addon.

    Start it with `memproxy run`, point a shell at it with `eval "$(memproxy env)"`,
    or run one client through it with `memproxy wrap claude`.
    """

