"""Built-in tools and the runner: calculator, current_time, fetch_url against a local site."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import operator
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver
from hypothesis import given
from hypothesis import strategies as st

from moa_core.settings import ToolLimits
from moa_core.tools import Tool, ToolError, ToolOutcome, builtin_tools, make_fetch_client, run_tool
from moa_core.tools.calculator import calculate
from moa_core.tools.fetch import AddressRefused, VettingResolver, address_refusal, html_to_text
from moa_core.values import ToolSpec

# Saturday 1 March 2025, 12:34:56 UTC.
FIXED_NOW = datetime(2025, 3, 1, 12, 34, 56, tzinfo=UTC)


class FixedClock:
    def __init__(self, now: datetime = FIXED_NOW) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


async def call(name: str, arguments: dict, limits: ToolLimits) -> ToolOutcome:
    async with make_fetch_client(limits) as http:
        tools = builtin_tools(limits, http, FixedClock())
        return await run_tool(tools[name], json.dumps(arguments), limits)


# --- run_tool -------------------------------------------------------------------------------


def _tool(run) -> Tool:
    return Tool(ToolSpec("probe", "a test tool", {"type": "object", "properties": {}}), run)


async def test_run_tool_reports_bad_json() -> None:
    async def run(arguments: dict) -> str:
        raise AssertionError("must not run")

    outcome = await run_tool(_tool(run), '{"expression": ', ToolLimits())
    assert not outcome.ok
    assert "not valid JSON" in outcome.output
    outcome = await run_tool(_tool(run), "[1, 2]", ToolLimits())
    assert not outcome.ok
    assert "must be a JSON object" in outcome.output


async def test_run_tool_enforces_the_timeout() -> None:
    async def run(arguments: dict) -> str:
        await asyncio.sleep(30)
        return "too late"

    outcome = await run_tool(_tool(run), "{}", ToolLimits(timeout=0.05))
    assert outcome == ToolOutcome(False, "error: probe did not finish within 0.05 s")


async def test_run_tool_cuts_long_output_and_says_so() -> None:
    async def run(arguments: dict) -> str:
        return "x" * 1000

    outcome = await run_tool(_tool(run), "{}", ToolLimits(max_output_chars=100))
    assert outcome.ok
    assert outcome.output.startswith("x" * 100 + "\n")
    assert "[output cut: 900 of 1000 characters omitted]" in outcome.output


async def test_run_tool_turns_exceptions_into_outcomes() -> None:
    async def broken(arguments: dict) -> str:
        raise KeyError("boom")

    async def refusing(arguments: dict) -> str:
        raise ToolError("no, because reasons")

    outcome = await run_tool(_tool(broken), "{}", ToolLimits())
    assert not outcome.ok and "KeyError" in outcome.output and "boom" in outcome.output
    outcome = await run_tool(_tool(refusing), "", ToolLimits())
    assert outcome == ToolOutcome(False, "error: probe: no, because reasons")


def test_builtin_tools_offer_three_json_schema_specs() -> None:
    tools = builtin_tools(ToolLimits(), make_fetch_client(ToolLimits()), FixedClock())
    assert set(tools) == {"fetch_url", "calculator", "current_time"}
    for name, tool in tools.items():
        assert tool.spec.name == name
        assert tool.spec.parameters["type"] == "object"
        json.dumps(tool.spec.parameters)  # must be plain JSON


# --- calculator -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("2 ** 10", "1024"),
        ("-3 ** 2", "-9"),
        ("+5 - -5", "10"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("10 / 4", "2.5"),
        ("2 ** -1", "0.5"),
        ("1_000 * 3", "3000"),
        ("2 ** 100", str(2**100)),
        ("sqrt(16)", "4.0"),
        ("log(8, 2)", "3.0"),
        ("log10(1000)", "3.0"),
        ("exp(0)", "1.0"),
        ("sin(0) + cos(0) + tan(0)", "1.0"),
        ("abs(-5)", "5"),
        ("round(2.567, 2)", "2.57"),
        ("round(2.5)", "2"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("pi", "3.141592653589793"),
        ("e", "2.718281828459045"),
        ("1.5e3 / 3", "500.0"),
    ],
)
def test_calculator_computes(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("x + 1", "unknown name 'x'"),
        ("__import__('os').system('true')", "only these functions may be called"),
        ("open('/etc/passwd')", "only these functions may be called"),
        ("(1).__class__", "Attribute syntax is not allowed"),
        ("math.sqrt(4)", "only these functions may be called"),
        ("(lambda: 1)()", "only these functions may be called"),
        ("[1, 2][0]", "not allowed"),
        ("1 < 2", "Compare syntax is not allowed"),
        ("1 if 1 else 2", "not allowed"),
        ("'a' * 3", "only numbers are allowed"),
        ("True + 1", "only numbers are allowed"),
        ("1j * 1j", "only numbers are allowed"),
        ("2 ^ 10", "use ** for powers"),
        ("1 << 4", "LShift is not allowed"),
        ("9 ** 9 ** 9", "too large"),
        ("2 ** 10 ** 10", "too large"),
        ("10 ** 2000", "too large"),
        ("(10 ** 900) * (10 ** 900)", "too large"),
        ("round(5, -10 ** 9)", "digits must be between"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("sqrt(-1)", "math error"),
        ("(-8) ** 0.5", "not a real number"),
        ("exp(1000)", "too large"),
        ("1e308 * 10", "not a finite number"),
        ("sqrt(x=4)", "positional arguments only"),
        ("sqrt(1, 2)", "takes 1 argument"),
        ("1 +", "not a valid expression"),
        ("1" * 1001, "longer than 1000 characters"),
        ("(" * 300 + "1" + ")" * 300, "not a valid expression"),
    ],
)
def test_calculator_refuses(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=None) as caught:
        calculate(expression)
    assert message in str(caught.value)


async def test_calculator_refuses_huge_powers_quickly_through_the_runner() -> None:
    limits = ToolLimits(timeout=2.0)
    tools = builtin_tools(limits, make_fetch_client(limits), FixedClock())
    outcome = await run_tool(tools["calculator"], json.dumps({"expression": "9**9**9**9"}), limits)
    assert not outcome.ok
    assert "too large" in outcome.output  # refused up front, not cut off by the timeout


async def test_calculator_needs_an_expression() -> None:
    tools = builtin_tools(ToolLimits(), make_fetch_client(ToolLimits()), FixedClock())
    outcome = await run_tool(tools["calculator"], "{}", ToolLimits())
    assert not outcome.ok and "missing required argument 'expression'" in outcome.output


@dataclass(frozen=True)
class Node:
    op: str
    left: Node | int
    right: Node | int = field(default=0)


_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _render(tree: Node | int) -> str:
    if isinstance(tree, int):
        return f"({tree})" if tree < 0 else str(tree)
    return f"({_render(tree.left)} {tree.op} {_render(tree.right)})"


def _value(tree: Node | int) -> int:
    if isinstance(tree, int):
        return tree
    return _OPS[tree.op](_value(tree.left), _value(tree.right))


_trees = st.recursive(
    st.integers(min_value=-1000, max_value=1000),
    lambda children: st.builds(Node, st.sampled_from(sorted(_OPS)), children, children),
    max_leaves=12,
)


@given(_trees)
def test_calculator_agrees_with_integer_arithmetic(tree: Node | int) -> None:
    assert calculate(_render(tree)) == str(_value(tree))


@given(st.text(max_size=60))
def test_calculator_only_ever_answers_or_refuses(text: str) -> None:
    try:
        calculate(text)
    except ToolError:
        pass


# --- current_time ---------------------------------------------------------------------------


async def test_current_time_defaults_to_utc() -> None:
    outcome = await call("current_time", {}, ToolLimits())
    assert outcome == ToolOutcome(True, "2025-03-01T12:34:56+00:00 (Saturday, UTC)")


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("Europe/Berlin", "2025-03-01T13:34:56+01:00 (Saturday, Europe/Berlin)"),
        ("Asia/Kolkata", "2025-03-01T18:04:56+05:30 (Saturday, Asia/Kolkata)"),
        ("Pacific/Honolulu", "2025-03-01T02:34:56-10:00 (Saturday, Pacific/Honolulu)"),
        ("Pacific/Kiritimati", "2025-03-02T02:34:56+14:00 (Sunday, Pacific/Kiritimati)"),
    ],
)
async def test_current_time_in_a_zone(zone: str, expected: str) -> None:
    outcome = await call("current_time", {"timezone": zone}, ToolLimits())
    assert outcome == ToolOutcome(True, expected)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe", "../../etc/passwd", "/etc/localtime", 5])
async def test_current_time_refuses_bad_zones(zone: object) -> None:
    outcome = await call("current_time", {"timezone": zone}, ToolLimits())
    assert not outcome.ok
    assert "time zone" in outcome.output or "timezone" in outcome.output


# --- fetch_url: addresses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 around 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 around 10.0.0.1
        ("64:ff9b::5db8:d70e", True),  # NAT64 around a public address
    ],
)
def test_address_refusal(address: str, public: bool) -> None:
    assert (address_refusal(ipaddress.ip_address(address)) is None) is public


# --- fetch_url: against a local site --------------------------------------------------------

PAGE = """<!doctype html>
<html><head><title> Test   page </title><style>.secret { color: red }</style>
<script>var secret = "do not show";</script></head>
<body><nav>Home</nav><h1>Hello</h1><p>First   &amp; <b>bold</b>
paragraph.</p><ul><li>one</li><li>two</li></ul>
<pre>  indented
    code</pre><noscript>no script text</noscript><p>Caf&eacute; end</p></body></html>"""


@dataclass
class Site:
    base: str
    port: int
    paths: list[str]


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    paths: list[str] = []
    holder: dict[str, int] = {}

    @web.middleware
    async def record(request: web.Request, handler):
        paths.append(request.path)
        return await handler(request)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def big(request: web.Request) -> web.Response:
        return web.Response(text="a" * 10_000, content_type="text/plain")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b"b" * 4096)
                await asyncio.sleep(0.001)
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n", content_type="image/png")

    async def data(request: web.Request) -> web.Response:
        return web.json_response({"answer": 42})

    async def latin1(request: web.Request) -> web.Response:
        return web.Response(
            body="café".encode("latin-1"), headers={"Content-Type": "text/plain; charset=iso-8859-1"}
        )

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="nothing here")

    def redirect(location: str):
        async def handler(request: web.Request) -> web.Response:
            raise web.HTTPFound(location.format(port=holder["port"]))

        return handler

    app = web.Application(middlewares=[record])
    app.router.add_get("/page", page)
    app.router.add_get("/big", big)
    app.router.add_get("/endless", endless)
    app.router.add_get("/image", image)
    app.router.add_get("/data", data)
    app.router.add_get("/latin1", latin1)
    app.router.add_get("/missing", missing)
    app.router.add_get("/to-page", redirect("/page"))
    app.router.add_get("/to-localhost", redirect("http://localhost:{port}/page"))
    app.router.add_get("/to-loopback-v6", redirect("http://[::1]:{port}/page"))
    app.router.add_get("/to-file", redirect("file:///etc/passwd"))
    app.router.add_get("/to-rebind", redirect("http://rebind.test:{port}/page"))
    app.router.add_get("/loop", redirect("/loop"))
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    holder["port"] = port
    try:
        yield Site(f"http://127.0.0.1:{port}", port, paths)
    finally:
        await runner.cleanup()


PRIVATE_OK = ToolLimits(fetch_allow_private=True, timeout=5.0)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/page",
        "http://localhost:{port}/page",
        "http://LOCALHOST:{port}/page",
        "http://[::1]:{port}/page",
        "http://[::ffff:127.0.0.1]:{port}/page",
        "http://2130706433:{port}/page",  # 127.0.0.1 as one number
        "http://127.1:{port}/page",  # 127.0.0.1, short form
        "http://0x7f000001:{port}/page",  # 127.0.0.1 in hex
        "http://[::ffff:7f00:1]:{port}/page",  # IPv4-mapped, hex words
        "http://0.0.0.0:{port}/page",
        "http://10.1.2.3:{port}/page",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.0.1/",
        "http://[fe80::1]/",
    ],
)
async def test_fetch_refuses_private_addresses_by_default(
    site: Site, url: str
) -> None:
    outcome = await call("fetch_url", {"url": url.format(port=site.port)}, ToolLimits(timeout=5.0))
    assert not outcome.ok
    assert "refused to fetch" in outcome.output
    assert site.paths == []  # refused before connecting


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://127.0.0.1/x", "example.com/page", "javascript:alert(1)", "http:///nohost"],
)
async def test_fetch_refuses_other_schemes(url: str) -> None:
    outcome = await call("fetch_url", {"url": url}, PRIVATE_OK)
    assert not outcome.ok
    assert "http" in outcome.output


async def test_fetch_converts_html_to_text(site: Site) -> None:
    outcome = await call("fetch_url", {"url": f"{site.base}/page"}, PRIVATE_OK)
    assert outcome.ok, outcome.output
    header, _, text = outcome.output.partition("\n\n")
    assert header.splitlines() == [
        f"URL: {site.base}/page",
        "Status: 200 OK",
        "Content-Type: text/html; charset=utf-8",
    ]
    assert text.startswith("Title: Test page\n")
    assert "# Hello" in text
    assert "First & bold paragraph." in text
    assert "- one\n- two" in text
    assert "  indented\n    code" in text
    assert "Café end" in text
    assert "secret" not in text and "no script text" not in text and "<" not in text


def test_html_to_text_keeps_blocks_apart() -> None:
    assert html_to_text("<div>a</div><div>b<br>c</div><table><tr><td>x</td><td>y</td></tr></table>") == (
        "a\nb\nc\nx | y"
    )


async def test_fetch_cuts_the_body_at_max_bytes(site: Site) -> None:
    limits = ToolLimits(fetch_allow_private=True, fetch_max_bytes=1000, timeout=5.0)
    outcome = await call("fetch_url", {"url": f"{site.base}/big"}, limits)
    assert outcome.ok
    header, _, text = outcome.output.partition("\n\n")
    assert text == "a" * 1000
    assert "cut after 1,000 bytes" in header


async def test_fetch_stops_reading_an_endless_body(site: Site) -> None:
    limits = ToolLimits(
        fetch_allow_private=True, fetch_max_bytes=50_000, max_output_chars=60_000, timeout=5.0
    )
    outcome = await call("fetch_url", {"url": f"{site.base}/endless"}, limits)
    assert outcome.ok, outcome.output
    assert outcome.output.endswith("\n\n" + "b" * 50_000)
    assert "cut after 50,000 bytes" in outcome.output


async def test_fetch_refuses_unwanted_content_types(site: Site) -> None:
    outcome = await call("fetch_url", {"url": f"{site.base}/image"}, PRIVATE_OK)
    assert not outcome.ok
    assert "content type 'image/png'" in outcome.output


async def test_fetch_reads_json_and_declared_charsets(site: Site) -> None:
    outcome = await call("fetch_url", {"url": f"{site.base}/data"}, PRIVATE_OK)
    assert outcome.ok and outcome.output.endswith('\n\n{"answer": 42}')
    outcome = await call("fetch_url", {"url": f"{site.base}/latin1"}, PRIVATE_OK)
    assert outcome.ok and outcome.output.endswith("\n\ncafé")


async def test_fetch_reports_error_statuses_with_the_body(site: Site) -> None:
    outcome = await call("fetch_url", {"url": f"{site.base}/missing"}, PRIVATE_OK)
    assert outcome.ok
    assert "Status: 404 Not Found" in outcome.output and outcome.output.endswith("nothing here")


async def test_fetch_follows_redirects_on_an_allowed_host(site: Site) -> None:
    limits = ToolLimits(fetch_allowed_hosts=("127.0.0.1",), timeout=5.0)
    outcome = await call("fetch_url", {"url": f"{site.base}/to-page"}, limits)
    assert outcome.ok, outcome.output
    assert outcome.output.startswith(f"URL: {site.base}/page\nRequested: {site.base}/to-page\n")
    assert site.paths == ["/to-page", "/page"]


@pytest.mark.parametrize("path", ["/to-localhost", "/to-loopback-v6"])
async def test_fetch_rechecks_every_redirect_hop(site: Site, path: str) -> None:
    limits = ToolLimits(fetch_allowed_hosts=("127.0.0.1",), timeout=5.0)
    outcome = await call("fetch_url", {"url": site.base + path}, limits)
    assert not outcome.ok
    assert "refused to fetch" in outcome.output and "loopback" in outcome.output
    assert site.paths == [path]  # the private target was never requested


class RebindingDns:
    """getaddrinfo for `rebind.test` as a DNS-rebinding attacker runs it: a public address to the
    first question, 127.0.0.1 to every later one. Other names resolve as usual."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.real = loop.getaddrinfo
        self.asked = 0

    async def __call__(self, host, port, *args, **kwargs):
        if host != "rebind.test":
            return await self.real(host, port, *args, **kwargs)
        self.asked += 1
        address = "93.184.215.14" if self.asked == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 80)))]


@pytest.fixture
async def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> RebindingDns:
    loop = asyncio.get_running_loop()
    dns = RebindingDns(loop)
    monkeypatch.setattr(loop, "getaddrinfo", dns)
    return dns


async def test_fetch_refuses_a_name_that_rebinds_to_loopback(site: Site, rebinding_dns: RebindingDns) -> None:
    outcome = await call("fetch_url", {"url": f"http://rebind.test:{site.port}/page"}, ToolLimits(timeout=5.0))
    assert not outcome.ok, outcome.output
    assert "refused to fetch 'rebind.test'" in outcome.output and "127.0.0.1, a loopback" in outcome.output
    assert rebinding_dns.asked >= 2  # the early check saw the public address, the connection did not
    assert site.paths == []  # nothing reached the loopback server


async def test_fetch_refuses_a_redirect_to_a_name_that_rebinds(site: Site, rebinding_dns: RebindingDns) -> None:
    limits = ToolLimits(fetch_allowed_hosts=("127.0.0.1",), timeout=5.0)
    outcome = await call("fetch_url", {"url": f"{site.base}/to-rebind"}, limits)
    assert not outcome.ok, outcome.output
    assert "refused to fetch 'rebind.test'" in outcome.output and "loopback" in outcome.output
    assert site.paths == ["/to-rebind"]  # the redirect was read, its loopback target never


async def test_fetch_connects_to_a_named_host_that_is_allowed(site: Site) -> None:
    limits = ToolLimits(fetch_allowed_hosts=("LocalHost",), timeout=5.0)
    outcome = await call("fetch_url", {"url": f"http://localhost:{site.port}/page"}, limits)
    assert outcome.ok, outcome.output
    assert site.paths == ["/page"]


async def test_vetting_resolver_refuses_any_private_answer() -> None:
    class Inner(AbstractResolver):
        async def resolve(self, host, port=0, family=socket.AF_INET):
            return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}
                    for a in ("93.184.215.14", "10.0.0.7")]

        async def close(self) -> None:
            pass

    with pytest.raises(AddressRefused, match="10.0.0.7, a private address"):
        await VettingResolver(ToolLimits(), Inner()).resolve("mixed.test", 80)
    answers = await VettingResolver(ToolLimits(fetch_allow_private=True), Inner()).resolve("mixed.test", 80)
    assert [a["host"] for a in answers] == ["93.184.215.14", "10.0.0.7"]


def test_fetch_url_needs_its_own_vetting_client() -> None:
    with pytest.raises(TypeError, match="make_fetch_client"):
        builtin_tools(ToolLimits(), httpx.AsyncClient(), FixedClock())


async def test_fetch_refuses_a_redirect_to_another_scheme(site: Site) -> None:
    outcome = await call("fetch_url", {"url": f"{site.base}/to-file"}, PRIVATE_OK)
    assert not outcome.ok and "only absolute http:// or https:// URLs" in outcome.output
    assert site.paths == ["/to-file"]


async def test_fetch_gives_up_after_five_redirects(site: Site) -> None:
    outcome = await call("fetch_url", {"url": f"{site.base}/loop"}, PRIVATE_OK)
    assert not outcome.ok and "too many redirects" in outcome.output
    assert site.paths == ["/loop"] * 6


async def test_fetch_reports_connection_failures() -> None:
    # A port nothing listens on: bind one, note it, close it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    outcome = await call("fetch_url", {"url": f"http://127.0.0.1:{port}/"}, PRIVATE_OK)
    assert not outcome.ok and "could not fetch" in outcome.output


async def test_fetch_needs_a_url() -> None:
    outcome = await call("fetch_url", {}, PRIVATE_OK)
    assert not outcome.ok and "missing required argument 'url'" in outcome.output
