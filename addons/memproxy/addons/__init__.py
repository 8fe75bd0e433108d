"""memproxy's mitmproxy addons, each one group of options and the hooks that use them, as mitmproxy's own
addons are. The entry script addons/memory.py lists them in order and hands each what it shares."""
