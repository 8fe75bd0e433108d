"""A plain OpenAI SDK script with default settings, as a user would write it.

It names no proxy and no certificate: `memproxy wrap` must supply both through the
environment (HTTPS_PROXY and SSL_CERT_FILE, which the SDK's httpx2 client reads).
Prints the reply; exits with the status given as the second argument (default 0).
"""

from __future__ import annotations

import sys

import openai

client = openai.OpenAI(api_key="sk-test-fake-key", max_retries=0, timeout=30)
reply = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": sys.argv[1] if len(sys.argv) > 1 else "Say hello"}]
)
print(reply.choices[0].message.content)
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
