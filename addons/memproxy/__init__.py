"""memproxy: long-term memory for AI coding tools, as a mitmproxy addon."""
