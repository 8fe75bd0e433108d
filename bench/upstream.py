"""A minimal, fast fake LLM upstream for the benchmarks: plain asyncio HTTP/1.1 with keep-alive.

Any POST gets a fixed chat.completion JSON, except a body holding `"stream": true`,
which gets `SSE_EVENTS` chat.completion.chunk events `--gap` seconds apart
(chunked transfer encoding, one event per chunk, the first one at once).
Run: python bench/upstream.py PORT [--gap 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json

SSE_EVENTS = 20
REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1500, "completion_tokens": 7, "total_tokens": 1507},
    }
).encode()
# x-bench-request-bytes: the size of the request body received, so the bench can check what the proxy sent.
JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\nx-bench-request-bytes: " % len(REPLY)
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"


def sse_events() -> list[bytes]:
    """The streamed reply, one SSE event per element (deterministic, so bodies can be compared)."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-mini"}
    events = []
    for i in range(SSE_EVENTS - 2):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f"word{i} "}
        events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


EVENTS = sse_events()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gap: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if b'"stream": true' in body or b'"stream":true' in body:
                writer.write(SSE_HEAD)
                for i, event in enumerate(EVENTS):
                    if i:
                        await asyncio.sleep(gap)
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"%s%d\r\n\r\n%s" % (JSON_HEAD, length, REPLY))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port: int, gap: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, gap), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--gap", type=float, default=0.05)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.gap))
