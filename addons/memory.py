"""mitmproxy entry script: `mitmdump -s addons/memory.py`.

Order matters: the boundary removes what no client may send (and checks a reverse listener's Host)
before any other addon reads the request; the guard judges where the client sends a request before
MemoryAddon may point it elsewhere; redaction runs after MemoryAddon is done with the request's
credentials.
"""

from memproxy.addon import MemoryAddon
from memproxy.boundary import Boundary
from memproxy.guard import Guard
from memproxy.redact import Redact

memory = MemoryAddon()
addons = [Boundary(), Guard(memory), memory, Redact(memory)]
