"""Why an adapter could not start, said in one line: the platform, the host it called, what to check.

`moa-gateway run` prints a PlatformUnavailable as its error and exits 1 instead of a chained
traceback. Messages name hosts, never URLs with paths: Telegram's URLs hold the bot token.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit


class PlatformUnavailable(RuntimeError):
    """The platform could not be reached, or refused the credentials, while the adapter started."""


def host_of(url: str) -> str:
    """`host[:port]` of a URL, without user info or path."""
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


def reason(error: BaseException) -> str:
    """A short cause: the operating system's words for the first socket error in the chain
    ("Connection refused"), a timeout as such, else the exception's own one-line text."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError):
            return "timed out"
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno)  # asyncio's own strerror is "Connect call failed (...)"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        current = current.__cause__ or current.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def unreachable(platform: str, url: str, error: BaseException, check: str) -> PlatformUnavailable:
    return PlatformUnavailable(f"{platform}: cannot reach {host_of(url)} ({reason(error)}); check {check}")


def refused(platform: str, url: str, what: str, check: str) -> PlatformUnavailable:
    return PlatformUnavailable(f"{platform}: {host_of(url)} refused the {what}; check {check}")
