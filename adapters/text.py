"""Message text for platforms with length limits: measuring, splitting and shortening.

Platforms count a message's length in their own unit (Telegram: UTF-16 code units; Discord and
Slack: characters), so every function takes a `measure`. It must be additive over
concatenation, as `len`, `utf16_len` and UTF-8 byte length are.

`split_message` never breaks a fenced code block: a block that has to go over several messages
is closed at the end of one and reopened, with the same fence and language, at the start of
the next; the added fences count toward the limit.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

Measure = Callable[[str], int]

_TEXT: Final = 0
_OPEN: Final = 1
_CODE: Final = 2
_CLOSE: Final = 3

_OPEN_RE: Final = re.compile(r" {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)")
_CLOSE_RE: Final = re.compile(r" {0,3}(?P<fence>`{3,}|~{3,})[ \t]*")
# Room a code block needs for at least one character of any measure we use (UTF-8: 4 bytes).
_MIN_CODE_ROOM: Final = 4
_ZWJ: Final = "\u200d"


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts it (astral characters count 2)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def split_message(text: str, limit: int, *, measure: Measure = len) -> list[str]:
    """Split `text` into chunks of at most `limit` (by `measure`), keeping code blocks intact.

    Chunks end, in order of preference, at a blank line, at a newline outside a code block, at
    a newline inside one, at a space, and only then anywhere (never inside a grapheme made of
    a base and combining marks, emoji modifiers or joiners). A blank line or newline is only
    preferred over a space when it is in the back half of the chunk, so chunks stay full.
    Whitespace at split points is dropped; empty or whitespace-only text gives [].
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    units, blocks = _units(text, limit, measure)
    chunks: list[str] = []
    n = len(units)
    i = 0
    while True:
        i = _skip_to_content(units, i)
        if i >= n:
            return chunks
        k = _chunk_end(units, blocks, i, limit)
        chunks.append(_render(units, blocks, i, k))
        i = k


def shorten(text: str, limit: int, *, measure: Measure = len, marker: str = "…") -> str:
    """`text` itself if it fits in `limit`, else a prefix ending with `marker` that fits.

    The cut goes back to a word boundary when one is near, and never splits a grapheme.
    """
    if measure(text) <= limit:
        return text
    room = limit - measure(marker)
    if room < 0:
        return text[: _cut_at_cluster(text, 0, _fit_prefix(text, 0, max(limit, 0), measure))].rstrip()
    end = _cut_at_cluster(text, 0, _fit_prefix(text, 0, room, measure))
    cut = end
    if end < len(text) and not text[end].isspace():
        near = min(80, max(end // 3, min(end // 2, 10)))
        for w in range(end - 1, end - near - 1, -1):
            if text[w].isspace():
                cut = w
                break
    head = text[:cut].rstrip().rstrip(",;:-–—").rstrip()
    if not head:
        head = text[:end].rstrip()
    result = head + marker
    while measure(result) > limit and head:  # only for measures that are not additive
        head = head[:-1]
        result = head + marker
    return result


@dataclass(frozen=True, slots=True)
class _Block:
    fence: str
    reopen: str  # the fence and its info string, to open the block again
    reopen_cost: int  # of reopen + "\n"
    close_cost: int  # of "\n" + fence
    room: int  # what a chunk holding only part of this block has for its content


@dataclass(frozen=True, slots=True)
class _Unit:
    """A line, or a piece of a line too long for one chunk."""

    text: str
    joiner: str  # what came before it: "\n" for a line, whitespace or "" for a piece
    cost: int  # of text
    join_cost: int  # of joiner
    kind: int
    block: int  # index into blocks, -1 for text
    blank_line: bool


def _units(text: str, limit: int, measure: Measure) -> tuple[list[_Unit], list[_Block]]:
    blocks: list[_Block] = []
    units: list[_Unit] = []
    current = -1
    newline_cost = measure("\n")
    for line in text.replace("\r\n", "\n").split("\n"):
        kind = _TEXT
        if current < 0:
            block = _opening(line, limit, measure)
            if block is not None:
                blocks.append(block)
                current = len(blocks) - 1
                kind = _OPEN
        else:
            closing = _CLOSE_RE.fullmatch(line)
            fence = blocks[current].fence
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence):
                kind = _CLOSE
            else:
                kind = _CODE
        block_index = current if kind != _TEXT else -1
        room = blocks[current].room if kind == _CODE else limit
        if kind in (_OPEN, _CLOSE) or measure(line) <= room:
            pieces = [("\n", line)]
        else:
            pieces = _pieces(line, room, measure)
        for joiner, piece in pieces:
            units.append(
                _Unit(
                    text=piece,
                    joiner=joiner,
                    cost=measure(piece),
                    join_cost=newline_cost if joiner == "\n" else measure(joiner),
                    kind=kind,
                    block=block_index,
                    blank_line=kind == _TEXT and joiner == "\n" and not line.strip(),
                )
            )
        if kind == _CLOSE:
            current = -1
    return units, blocks


def _opening(line: str, limit: int, measure: Measure) -> _Block | None:
    """The block a fence line opens, or None when it is no fence or too big for `limit`."""
    match = _OPEN_RE.fullmatch(line)
    if match is None:
        return None
    fence, info = match["fence"], match["info"].strip()
    if fence[0] == "`" and "`" in info:
        return None
    reopen = fence + info
    reopen_cost = measure(reopen + "\n")
    close_cost = measure("\n" + fence)
    room = limit - reopen_cost - close_cost
    # Too small to hold the block in pieces: leave the fence as plain text.
    if room < _MIN_CODE_ROOM or measure(line) + close_cost > limit:
        return None
    return _Block(fence, reopen, reopen_cost, close_cost, room)


def _pieces(line: str, room: int, measure: Measure) -> list[tuple[str, str]]:
    """Cut a line that does not fit `room` into pieces that do, at spaces where possible."""
    pieces: list[tuple[str, str]] = []
    joiner = "\n"
    start, n = 0, len(line)
    while start < n:
        end = _fit_prefix(line, start, room, measure)
        if end >= n:
            pieces.append((joiner, line[start:]))
            break
        if end == start:
            raise ValueError(f"limit too small for the character {line[start]!r}")
        space = -1
        for w in range(end, start + (end - start) // 2, -1):
            if line[w].isspace():
                space = w
                break
        gap_start = space
        while gap_start > start and line[gap_start - 1].isspace():
            gap_start -= 1
        if space >= 0 and gap_start > start:
            gap_end = space + 1
            while gap_end < n and line[gap_end].isspace():
                gap_end += 1
            pieces.append((joiner, line[start:gap_start]))
            joiner = line[gap_start:gap_end]
            start = gap_end
        else:
            cut = _cut_at_cluster(line, start, end)
            pieces.append((joiner, line[start:cut]))
            joiner = ""
            start = cut
    return pieces


def _fit_prefix(s: str, start: int, budget: int, measure: Measure) -> int:
    """The largest `end` with measure(s[start:end]) <= budget (measure must be monotone)."""
    n = len(s)
    size = max(1, budget)
    lo, hi = start, min(n, start + size)
    while measure(s[start:hi]) <= budget:
        lo = hi
        if hi == n:
            return n
        size *= 2
        hi = min(n, start + size)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(s[start:mid]) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def _cut_at_cluster(s: str, start: int, end: int) -> int:
    """Move a cut at `end` back to a grapheme boundary (unless the grapheme fills it all)."""
    cut = end
    while cut > start and _inside_cluster(s, cut):
        cut -= 1
    return cut if cut > start else end


def _inside_cluster(s: str, i: int) -> bool:
    """Whether cutting before s[i] would split a user-perceived character."""
    if i <= 0 or i >= len(s):
        return False
    c, before = s[i], s[i - 1]
    if c == _ZWJ or before == _ZWJ:
        return True
    if unicodedata.category(c) in ("Mn", "Mc", "Me"):
        return True
    o = ord(c)
    if 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF:  # variation selectors
        return True
    if 0x1F3FB <= o <= 0x1F3FF or 0xE0020 <= o <= 0xE007F:  # skin tones, flag tags
        return True
    if _regional(c) and _regional(before):
        run = 0
        while i - run - 1 >= 0 and _regional(s[i - run - 1]):
            run += 1
        return run % 2 == 1
    return False


def _regional(c: str) -> bool:
    return 0x1F1E6 <= ord(c) <= 0x1F1FF


def _skip_to_content(units: list[_Unit], i: int) -> int:
    """Skip what a chunk must not start with: blank lines, and the closing fence of a block
    whose earlier part already went out (that chunk closed it)."""
    while i < len(units):
        unit = units[i]
        if unit.kind == _CLOSE or (unit.kind != _OPEN and not unit.text.strip()):
            i += 1
            continue
        return i
    return i


def _rank(units: list[_Unit], k: int) -> int:
    """How good a split between units[k-1] and units[k] is: lower is better."""
    before, after = units[k - 1], units[k]
    if after.joiner != "\n":
        return 3 if after.joiner else 4
    if before.kind == _OPEN:
        return 5  # would send an empty code block
    if before.kind == _CODE:
        return 1 if after.kind == _CLOSE else 2
    if before.blank_line or after.blank_line:
        return 0
    return 1


def _close_cost(units: list[_Unit], blocks: list[_Block], k: int) -> int:
    """Cost of the fence that closes a chunk ending after units[k-1]."""
    last = units[k - 1]
    return blocks[last.block].close_cost if last.kind in (_OPEN, _CODE) else 0


def _chunk_end(units: list[_Unit], blocks: list[_Block], i: int, limit: int) -> int:
    first = units[i]
    acc = first.cost + (blocks[first.block].reopen_cost if first.kind == _CODE else 0)
    fits = [(i + 1, acc)]  # (end, cost without the closing fence)
    n = len(units)
    k = i + 1
    while k < n:
        unit = units[k]
        grown = acc + unit.join_cost + unit.cost
        if grown + _close_cost(units, blocks, k + 1) > limit:
            break
        acc = grown
        k += 1
        fits.append((k, acc))
    if k == n:
        return n
    total = acc
    candidates = [
        (_rank(units, end), end, cost)
        for end, cost in fits
        if cost + _close_cost(units, blocks, end) <= limit
    ]
    back = [c for c in candidates if 2 * c[2] >= total]
    for pool, worst in ((back, 2), (candidates, 2), (back, 4), (candidates, 5)):
        usable = [c for c in pool if c[0] <= worst]
        if usable:
            return min(usable, key=lambda c: (c[0], -c[1]))[1]
    return i + 1


def _render(units: list[_Unit], blocks: list[_Block], i: int, k: int) -> str:
    while k - 1 > i and units[k - 1].blank_line:
        k -= 1
    first = units[i]
    parts = [blocks[first.block].reopen + "\n"] if first.kind == _CODE else []
    parts.append(first.text)
    for unit in units[i + 1 : k]:
        parts.append(unit.joiner)
        parts.append(unit.text)
    body = "".join(parts).rstrip()
    last = units[k - 1]
    if last.kind in (_OPEN, _CODE):
        body += "\n" + blocks[last.block].fence
    return body
