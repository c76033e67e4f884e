"""A lean OpenAI-wire load server for benchmarks, run in its own process.

Model names carry their latency: `ref3-300` answers after 300 ms. Answers are precomputed real
Chat Completions bodies (SSE when the request streams, JSON otherwise), written by a bare asyncio
protocol so the load generator costs far less CPU than the system under test. It runs on uvloop
when that is installed (the load generator shares the machine's cores with the process under
test; the wire format is the same either way). Prints its base URL, then the event loop it runs
on ("event loop: ..."), then serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

try:
    import uvloop
except ImportError:  # the [fast] extra is not installed
    uvloop = None

LOOP_NAME = "asyncio" if uvloop is None else "uvloop"
MODEL = re.compile(rb'"model":\s*"([^"]+)"')
LENGTH = re.compile(rb"content-length:\s*(\d+)")
STREAM = re.compile(rb'"stream":\s*true')
WORDS = "advice " * 120


def sse_body(model: str) -> bytes:
    chunks = [WORDS[i:i + 40] for i in range(0, len(WORDS), 40)]
    lines = [{"id": "c", "object": "chat.completion.chunk", "model": model,
              "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}]}
             for piece in chunks]
    lines.append({"id": "c", "object": "chat.completion.chunk", "model": model,
                  "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    lines.append({"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [],
                  "usage": {"prompt_tokens": 200, "completion_tokens": 120, "total_tokens": 320}})
    return "".join(f"data: {json.dumps(line)}\n\n" for line in lines).encode() + b"data: [DONE]\n\n"


def json_body(model: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": WORDS},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 200, "completion_tokens": 120, "total_tokens": 320}}).encode()


class Server(asyncio.Protocol):
    cache: dict[tuple[str, bool], bytes] = {}

    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            length = int(LENGTH.search(head).group(1))
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4: head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length:]
            model = MODEL.search(body).group(1).decode()
            stream = bool(STREAM.search(body))
            tail = model.rsplit("-", 1)[-1]
            delay = int(tail) / 1000 if tail.isdigit() else 0.0
            asyncio.get_running_loop().call_later(delay, self.answer, model, stream)

    def answer(self, model: str, stream: bool) -> None:
        key = (model, stream)
        if key not in self.cache:
            payload = sse_body(model) if stream else json_body(model)
            kind = b"text/event-stream" if stream else b"application/json"
            self.cache[key] = (b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ncontent-length: "
                               + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        if not self.transport.is_closing():
            self.transport.write(self.cache[key])


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    print(f"event loop: {LOOP_NAME}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=None if uvloop is None else uvloop.new_event_loop) as runner:
        runner.run(main())
