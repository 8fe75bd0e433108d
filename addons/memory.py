"""mitmproxy entry script: `mitmdump -s addons/memory.py`.

Order matters: the guard judges where the client sends a request before MemoryAddon may point it
elsewhere; redaction runs after MemoryAddon is done with the request's credentials.
"""

from memproxy.addon import MemoryAddon
from memproxy.guard import Guard
from memproxy.redact import Redact

memory = MemoryAddon()
addons = [Guard(memory), memory, Redact(memory)]
