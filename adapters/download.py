"""Downloading an attachment from a platform's own file service, and from nowhere else.

Discord and Slack name files by URL, and a URL in an event is data from outside: before
anything is fetched, its scheme, host, port and path must fall under one of the platform's
file-service prefixes. Redirects are not followed (one could lead anywhere; Slack answers a
request it does not authorise with a redirect to its login page), and no more than `max_bytes`
is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp

from adapters.contract import AttachmentError

_CHUNK = 64 * 1024


def on_file_service(url: str, prefixes: Sequence[str]) -> bool:
    """Whether `url` lies under one of `prefixes` (same scheme, host and port; path below)."""
    try:
        got = urlsplit(url)
        got_port = got.port
    except ValueError:
        return False
    for prefix in prefixes:
        want = urlsplit(prefix)
        if (got.scheme, (got.hostname or "").lower(), got_port) != (want.scheme, (want.hostname or "").lower(),
                                                                      want.port):
            continue
        base = want.path.rstrip("/")
        if got.path == base or got.path.startswith(base + "/"):
            if ".." not in got.path.split("/"):
                return True
    return False


async def download(session: aiohttp.ClientSession, url: str, *, name: str, service: str,
                   prefixes: Sequence[str], max_bytes: int, headers: Mapping[str, str] | None = None,
                   timeout_s: float = 60.0) -> bytes:
    """The bytes at `url`, which must be on the file service; AttachmentError naming `name`."""
    if not on_file_service(url, prefixes):
        host = urlsplit(url).hostname or url
        raise AttachmentError(f"{name}: refused, the file is not on {service}'s file service ({host})")
    try:
        async with session.get(url, headers=dict(headers or {}), allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                raise AttachmentError(f"{name}: the download from {service} failed (HTTP {response.status})")
            if response.content_length is not None and response.content_length > max_bytes:
                raise AttachmentError(f"{name}: {response.content_length:,} bytes, over the {max_bytes:,} byte limit")
            data = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise AttachmentError(f"{name}: over the {max_bytes:,} byte limit")
            return bytes(data)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise AttachmentError(f"{name}: the download from {service} failed ({type(error).__name__})") from None
