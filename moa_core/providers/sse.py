"""Incremental Server-Sent Events parsing of the raw bytes of a streamed response.

Follows the WHATWG event-stream rules that matter to model providers: `event:` and `data:`
fields, multi-line data joined by newlines, `:` comments, CR/LF/CRLF line ends, an event
dispatched at a blank line, a leading byte-order mark ignored. Bytes are split on those line
ends only (not str.splitlines, which would also split JSON that carries a raw U+2028) and a
line is decoded only once it is complete, so a UTF-8 character cut between chunks survives.

`SseDecoder` is a plain object fed from the caller's own loop: at hundreds of concurrent
streams, a stack of async generators per call costs measurable CPU (each abandoned one is
closed by a task of its own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One dispatched event; `event` is None when the stream named none (OpenAI)."""

    event: str | None
    data: str


class SseDecoder:
    """Feed it chunks split anywhere (even inside a CRLF pair); it returns whole events."""

    def __init__(self) -> None:
        self._pending = b""
        self._started = False
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        buffer = self._pending + chunk if self._pending else chunk
        if not self._started and buffer:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._pending = buffer  # maybe the start of a byte-order mark: wait for more
                return []
            self._started = True
            buffer = buffer.removeprefix(_BOM)
        if b"\r" not in buffer:  # the common case: LF line ends only
            lines = buffer.split(b"\n")
            self._pending = lines.pop()
        else:
            lines = _LINE_END.split(buffer)
            self._pending = lines.pop()
            if buffer.endswith(b"\r") and lines:
                # "\r" may be the first half of a CRLF: keep that line until the next chunk.
                self._pending = lines.pop() + b"\r"
        events: list[ServerEvent] = []
        data = self._data
        for line in lines:
            # Most lines of a model stream are `data: ...` or the blank line after it: handled
            # here, without a call per line.
            if line[:6] == b"data: ":
                data.append(line[6:].decode("utf-8", "replace"))
            elif not line and data:
                events.append(ServerEvent(self._event, "\n".join(data)))
                self._event, self._data = None, []
                data = self._data
            else:
                self._line(line, events)
                data = self._data
        return events

    def close(self) -> list[ServerEvent]:
        """End of input: an event whose lines were all complete is still dispatched (some
        servers omit the final blank line); a half-received line is dropped."""
        events: list[ServerEvent] = []
        pending, self._pending = self._pending, b""
        if pending.endswith(b"\r"):
            self._line(pending[:-1], events)
        elif pending:
            return events  # the stream stopped mid-line
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[ServerEvent]) -> None:
        if not line:
            if self._data:
                events.append(ServerEvent(self._event, "\n".join(self._data)))
            self._event, self._data = None, []
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # comments (empty name), id, retry and unknown fields are ignored

