"""Incremental Server-Sent Events parsing over a streamed httpx response.

Follows the WHATWG event-stream rules that matter to model providers: `event:` and `data:`
fields, multi-line data joined by newlines, `:` comments, CR/LF/CRLF line ends, an event
dispatched at a blank line. Text is split on those line ends only (not str.splitlines, which
would also split JSON that carries a raw U+2028).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import httpx

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One dispatched event; `event` is None when the stream named none (OpenAI)."""

    event: str | None
    data: str


class _Parser:
    """Line-level state of the event stream: the fields of the event being received."""

    def __init__(self) -> None:
        self.event: str | None = None
        self.data: list[str] = []

    def line(self, line: str) -> ServerEvent | None:
        if not line:
            done = ServerEvent(self.event, "\n".join(self.data)) if self.data else None
            self.event, self.data = None, []
            return done
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        return None  # comments (empty name), id, retry and unknown fields are ignored


async def parse_sse(chunks: AsyncIterable[str]) -> AsyncIterator[ServerEvent]:
    """Yield events from text chunks split anywhere (even inside a CRLF pair).

    At end of input an event whose lines were all complete is still dispatched (some servers
    omit the final blank line); a half-received line is dropped.
    """
    parser = _Parser()
    pending = ""
    async for chunk in chunks:
        text = pending + chunk
        lines = _LINE_END.split(text)
        pending = lines.pop()
        if text.endswith("\r") and lines:
            # "\r" may be the first half of a CRLF: keep that line until the next chunk.
            pending = lines.pop() + "\r"
        for line in lines:
            if (event := parser.line(line)) is not None:
                yield event
    if pending.endswith("\r"):
        if (event := parser.line(pending[:-1])) is not None:
            yield event
    elif pending:
        return  # the stream stopped mid-line
    if (event := parser.line("")) is not None:
        yield event


async def iter_sse(response: httpx.Response) -> AsyncIterator[ServerEvent]:
    """Events of a response opened with `client.stream(...)`."""
    async for event in parse_sse(response.aiter_text()):
        yield event
