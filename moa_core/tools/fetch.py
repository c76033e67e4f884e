"""The `fetch_url` tool: fetch one web page as readable text, refusing the private network.

Every hop (the first URL and each redirect) is checked before any connection is made: http or
https only, and every address the host resolves to must be public, unless the config allows
private addresses or names the host. The check is made twice, and the second is the one that
counts: the tool has its own client (`make_fetch_client`) whose connector resolves names only
through `VettingResolver`, which vets every answer it hands to the connector, with no DNS cache.
So the socket is only ever opened to an address that was just checked; a name that answers a
public address to the early check and 127.0.0.1 to the connection (DNS rebinding) is refused.
The body is streamed and cut at `fetch_max_bytes`; only the configured content types are read;
HTML is turned into text.
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import re
import socket
from collections.abc import Callable
from html.parser import HTMLParser

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from moa_core.settings import ToolLimits
from moa_core.tools.base import Tool, ToolError
from moa_core.values import ToolSpec

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HTML_TYPES = ("text/html", "application/xhtml+xml")
REQUEST_HEADERS = {
    "User-Agent": "moa-gateway fetch_url tool",
    "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9,*/*;q=0.5",
    # Ask for an uncompressed body so the byte cap measures what was actually sent.
    "Accept-Encoding": "identity",
}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SPEC = ToolSpec(
    name="fetch_url",
    description=(
        "Fetch a public web page or text document over http(s) and return its text "
        "(HTML is converted to plain text; long pages are cut)."
    ),
    parameters={
        "type": "object",
        "properties": {"url": {"type": "string", "description": "An absolute http:// or https:// URL."}},
        "required": ["url"],
    },
)


def address_refusal(ip: IPAddress) -> str | None:
    """Why `ip` must not be fetched from ("loopback", "private", ...), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4-mapped and NAT64 addresses are that IPv4 address in disguise: judge it alone.
        if ip.ipv4_mapped is not None:
            return address_refusal(ip.ipv4_mapped)
        if ip in _NAT64:
            return address_refusal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        # 6to4 and Teredo tunnel to an IPv4 address: judge both.
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and (reason := address_refusal(embedded)):
            return reason
    for attribute in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{attribute}"):
            return attribute.replace("_", "-")
    if not ip.is_global:  # e.g. 100.64.0.0/10, shared address space
        return "non-global"
    return None


def _host_key(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _idna(host: str) -> str:
    try:
        return httpx.URL(f"http://{host}/").raw_host.decode("ascii").rstrip(".").lower()
    except (httpx.InvalidURL, UnicodeError):
        return host


def _may_skip_check(host: str, limits: ToolLimits) -> bool:
    """True when the config lets this host through unchecked (private allowed, or host named)."""
    if limits.fetch_allow_private:
        return True
    key = _host_key(host)
    allowed = {_host_key(h) for h in limits.fetch_allowed_hosts}
    return key in allowed or key in {_idna(h) for h in allowed}


def _refusal(host: str, addresses: list[IPAddress]) -> str | None:
    if not addresses:
        return f"host {host!r} has no addresses"
    for ip in addresses:
        if reason := address_refusal(ip):
            return (
                f"refused to fetch {host!r}: it resolves to {ip}, a {reason} address; "
                "only public internet addresses may be fetched"
            )
    return None


def _ip(text: str) -> IPAddress:
    # IPv6 results may carry a scope ("fe80::1%eth0"); the address is what matters.
    return ipaddress.ip_address(str(text).split("%", 1)[0])


class AddressRefused(OSError):
    """Raised by VettingResolver to the connector; `fetch_text` shows its text to the model."""


class VettingResolver(AbstractResolver):
    """The fetch client's only resolver: every answer is vetted before the connector sees it.

    aiohttp connects to exactly the addresses a resolver returns (IP literals skip it; those
    are checked by `check_target` and cannot change), so vetting here closes DNS rebinding.
    """

    def __init__(self, limits: ToolLimits, inner: AbstractResolver) -> None:
        self._limits = limits
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not _may_skip_check(host, self._limits):
            if reason := _refusal(host, [_ip(r["host"]) for r in results]):
                raise AddressRefused(reason)
        return results

    async def close(self) -> None:
        await self._inner.close()


class FetchClient(httpx.AsyncClient):
    """The httpx client `fetch_url` requires: made by `make_fetch_client`, never shared with
    model providers (they may live on 127.0.0.1 and must stay reachable)."""


def make_fetch_client(
    limits: ToolLimits, *, resolver: Callable[[], AbstractResolver] | None = None
) -> FetchClient:
    """A client whose every connection goes to vetted addresses; `resolver` makes the inner
    resolver (default: aiohttp's threaded getaddrinfo). Close it with `await client.aclose()`."""

    def session() -> aiohttp.ClientSession:  # called on first use, inside the running loop
        inner = resolver() if resolver is not None else aiohttp.ThreadedResolver()
        # No DNS cache: each connection, so each redirect hop, resolves and vets afresh.
        connector = aiohttp.TCPConnector(resolver=VettingResolver(limits, inner), use_dns_cache=False)
        return aiohttp.ClientSession(connector=connector)

    return FetchClient(transport=AiohttpTransport(client=session))


async def _addresses(url: httpx.URL) -> list[IPAddress]:
    host = _host_key(url.host)
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    port = url.port or (443 if url.scheme == "https" else 80)
    ascii_host = url.raw_host.decode("ascii")  # IDNA-encoded, as a resolver wants it
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(ascii_host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ToolError(f"could not resolve host {url.host!r}: {e}") from None
    return [_ip(info[4][0]) for info in infos]


async def check_target(url: httpx.URL, limits: ToolLimits) -> None:
    """Raise ToolError unless `url` may be fetched under `limits` (the early check; the
    connection itself is vetted again by VettingResolver)."""
    if url.scheme not in ("http", "https"):
        raise ToolError(f"only absolute http:// or https:// URLs can be fetched, got {str(url)!r}")
    if not url.host:
        raise ToolError(f"URL {str(url)!r} has no host")
    if _may_skip_check(url.host, limits):
        return
    if reason := _refusal(url.host, await _addresses(url)):
        raise ToolError(reason)


def _refused(error: BaseException) -> AddressRefused | None:
    """The resolver's refusal somewhere in the chain aiohttp and httpx wrapped it in."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, AddressRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class _TextExtractor(HTMLParser):
    """Readable text from HTML: block elements become line breaks; scripts and styles vanish."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas"})
    BLOCKS = frozenset(
        {
            "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl", "dt",
            "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li", "main",
            "nav", "ol", "p", "pre", "section", "summary", "table", "tr", "ul", "title",
        }
    )  # fmt: skip
    HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._pre = 0
        self._in_title = False

    def _at_line_start(self) -> bool:
        return not self.parts or self.parts[-1].endswith("\n")

    def _newline(self) -> None:
        if not self._at_line_start():
            self.parts.append("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.HEADINGS:
            self._newline()
            self.parts.append("\n" + "#" * self.HEADINGS[tag] + " ")
        elif tag in self.BLOCKS:
            self._newline()
            if tag == "pre":
                self._pre += 1
            elif tag == "li":
                self.parts.append("- ")
        elif tag in ("td", "th") and not self._at_line_start():
            self.parts.append(" | ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:  # <br/>, <hr/>
            self._newline()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self.HEADINGS or tag in self.BLOCKS:
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
            self._newline()
            if tag in self.HEADINGS or tag == "p":
                self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title.append(data)
            return
        if self._pre:
            self.parts.append(data)
            return
        text = re.sub(r"\s+", " ", data)
        if self._at_line_start():
            text = text.lstrip()
        if text:
            self.parts.append(text)

    def text(self) -> str:
        lines = [line.rstrip() for line in "".join(self.parts).split("\n")]
        body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        title = re.sub(r"\s+", " ", "".join(self.title)).strip()
        return f"Title: {title}\n\n{body}" if title else body


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _decode(body: bytes, declared: str | None, is_html: bool) -> str:
    charset = declared
    if charset is None and is_html and (match := _META_CHARSET.search(body[:2048])):
        charset = match.group(1).decode("ascii")
    try:
        codec = codecs.lookup(charset or "utf-8").name
    except LookupError:
        codec = "utf-8"
    # errors="replace" also covers a multi-byte character split by the byte cap.
    return body.decode(codec, errors="replace")


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """The body up to `max_bytes`, and whether more was left unread."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        room = max_bytes - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


async def fetch_text(url_text: str, limits: ToolLimits, http: httpx.AsyncClient) -> str:
    """Fetch `url_text` under `limits`; a short header, a blank line, then the text."""
    try:
        url = httpx.URL(url_text.strip())
    except httpx.InvalidURL as e:
        raise ToolError(f"not a valid URL: {e}") from None
    for hop in range(MAX_REDIRECTS + 1):
        await check_target(url, limits)
        try:
            async with http.stream(
                "GET", url, headers=REQUEST_HEADERS, timeout=limits.timeout, follow_redirects=False
            ) as response:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    if hop == MAX_REDIRECTS:
                        raise ToolError(
                            f"too many redirects (more than {MAX_REDIRECTS}), last to {location!r}"
                        )
                    try:
                        url = url.join(location)
                    except httpx.InvalidURL as e:
                        raise ToolError(f"redirected to an invalid URL {location!r}: {e}") from None
                    continue
                return await _render(url_text, url, response, limits)
        except httpx.HTTPError as e:
            if refused := _refused(e):
                raise ToolError(str(refused)) from None
            raise ToolError(
                f"could not fetch {str(url)!r}: {type(e).__name__}: {str(e) or 'no detail'}"
            ) from None
    raise AssertionError("unreachable: the loop returns or raises")


async def _render(asked: str, url: httpx.URL, response: httpx.Response, limits: ToolLimits) -> str:
    content_type = response.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not any(media_type.startswith(prefix.lower()) for prefix in limits.fetch_content_types):
        raise ToolError(
            f"{str(url)!r} returned content type {media_type or 'none'!r} (status {response.status_code}); "
            f"only these are read: {', '.join(limits.fetch_content_types)}"
        )
    body, cut = await _read_capped(response, limits.fetch_max_bytes)
    is_html = media_type in HTML_TYPES
    text = _decode(body, response.charset_encoding, is_html)
    if is_html:
        text = html_to_text(text)
    header = [f"URL: {url}"]
    if str(url) != asked.strip():
        header.append(f"Requested: {asked.strip()}")
    header.append(f"Status: {response.status_code} {response.reason_phrase}".rstrip())
    header.append(f"Content-Type: {content_type}")
    if cut:
        header.append(
            f"Note: the body was cut after {limits.fetch_max_bytes:,} bytes; the rest was not read."
        )
    return "\n".join(header) + "\n\n" + text


def fetch_url_tool(limits: ToolLimits, http: FetchClient) -> Tool:
    if not isinstance(http, FetchClient):
        # Any other client would connect wherever DNS points at connection time.
        raise TypeError("fetch_url needs the client from make_fetch_client(limits)")

    async def run(arguments: dict) -> str:
        url = arguments.get("url")
        if not isinstance(url, str) or not url.strip():
            raise ToolError("missing required argument 'url' (a string)")
        return await fetch_text(url, limits, http)

    return Tool(SPEC, run)
