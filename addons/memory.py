"""mitmproxy entry script: `mitmdump -s addons/memory.py`.

Order matters: connections from other local users are closed first; the boundary removes what no
client may send (and checks a reverse listener's Host) before any other addon reads the request; the
guard judges where the client sends a request before MemoryAddon may point it elsewhere; redaction runs
after MemoryAddon is done with the request's credentials.
"""

from memproxy.addon import MemoryAddon
from memproxy.boundary import Boundary
from memproxy.guard import Guard
from memproxy.localusers import LocalUsers
from memproxy.redact import Redact

memory = MemoryAddon()
addons = [LocalUsers(), Boundary(), Guard(memory), memory, Redact(memory)]
