"""mitmproxy entry script: `mitmdump -s addons/memory.py`."""

from memproxy.addon import MemoryAddon

addons = [MemoryAddon()]
