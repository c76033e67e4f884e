"""A fake Discord on 127.0.0.1: REST (`/api/v10`) and the gateway websocket (`/gw`) in one app.

Speaks the wire format discord.py 2 expects (see PLATFORMS.md, section 1): JSON answers with a
`Content-Type` of exactly `application/json`, the login calls, command sync, channel messages
(JSON or multipart with files, with Discord's enforced nonces), interaction callbacks and
followup webhooks, and the gateway handshake (HELLO, IDENTIFY -> READY, heartbeat ACKs) in
plain text frames. Tests push dispatch events (`MESSAGE_CREATE`, `INTERACTION_CREATE`, ...),
await what the fake received (`wait_for_call`), and can make the next N calls of a route answer
429 the way Discord does (with a `Via` header and a JSON `retry_after`, so discord.py retries).

Every REST call is recorded in order in `calls`; `log` interleaves them with the test's own
notes (`note`) when the order across both matters.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1_420_070_400_000
_JSON = {"Content-Type": "application/json"}  # exactly: discord.py compares with ==


@dataclass
class Call:
    """One REST request the fake received, and the status it answered."""

    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    json: Any = None
    files: list[tuple[str, bytes]] = field(default_factory=list)
    status: int = 0

    @property
    def route(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class _Injection:
    method: str
    pattern: re.Pattern[str]
    times: int
    retry_after: float
    is_global: bool


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, headers={**_JSON, **(headers or {})})


def _error(status: int, message: str, code: int) -> web.Response:
    return _json({"message": message, "code": code}, status=status)


def _invalid_body(body: dict[str, Any]) -> web.Response | None:
    """Discord's 400 for content or embeds over its limits (code points, as Discord counts)."""
    problems = []
    if len(body.get("content") or "") > 2000:
        problems.append("content must be 2000 or fewer in length")
    embeds = body.get("embeds") or []
    if len(embeds) > 10:
        problems.append("embeds must be 10 or fewer in length")
    total = 0
    for embed in embeds:
        fields = embed.get("fields") or []
        if len(fields) > 25:
            problems.append("fields must be 25 or fewer in length")
        for f in fields:
            if not f.get("name") or not f.get("value"):
                problems.append("field name and value are required")
            if len(f.get("name") or "") > 256 or len(f.get("value") or "") > 1024:
                problems.append("field too long")
            total += len(f.get("name") or "") + len(f.get("value") or "")
        if len(embed.get("title") or "") > 256:
            problems.append("title too long")
        total += len(embed.get("title") or "") + len(embed.get("description") or "")
        total += len((embed.get("footer") or {}).get("text") or "")
        total += len((embed.get("author") or {}).get("name") or "")
    if total > 6000:
        problems.append("Embed size exceeds maximum size of 6000")
    if problems:
        return _json({"message": "Invalid Form Body", "code": 50035, "errors": problems}, status=400)
    return None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


class FakeDiscord:
    """The fake server. `await start()`, point the SDK at `api_base` / `gateway_url`, `close()`."""

    def __init__(self, *, bot_id: str = "900000000000000001", bot_name: str = "MoA") -> None:
        self.bot_id = bot_id
        self.application_id = bot_id  # a bot's application id is its user id
        self.bot_user = {
            "id": bot_id,
            "username": bot_name,
            "global_name": None,
            "discriminator": "0",
            "avatar": None,
            "bot": True,
        }
        self.calls: list[Call] = []
        self.log: list[tuple[str, Any]] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.identify: dict[str, Any] | None = None
        self.commands: list[dict[str, Any]] = []
        self._interactions: dict[str, dict[str, Any]] = {}  # token -> interaction payload
        self._acknowledged: set[str] = set()  # interaction ids
        self._expired_tokens: set[str] = set()
        self.refused_token: str | None = None  # REST calls with "Bot <this>" answer 401 (a bad token)
        self._nonces: dict[tuple[str, str], str] = {}  # (channel, nonce) -> message id
        self._injections: list[_Injection] = []
        self._disconnects: list[tuple[str, re.Pattern[str], list[int]]] = []
        self._sequence = itertools.count(1)
        self._snowflake_counter = itertools.count()
        self._changed = asyncio.Condition()
        self._ws: web.WebSocketResponse | None = None
        self._ready = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.files: dict[str, bytes] = {}  # CDN path -> bytes
        self.downloads: list[str] = []  # CDN paths fetched, in order

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gw", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{tail:.*}", self._cdn)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def cdn_url(self) -> str:
        """Where this fake serves attachments, as cdn.discordapp.com does."""
        return f"http://127.0.0.1:{self.port}"

    def add_file(self, data: bytes, filename: str, content_type: str | None, *, channel_id: str = "1",
                 width: int | None = None, height: int | None = None, size: int | None = None) -> dict[str, Any]:
        """An attachment object as Discord sends it, its file served at its CDN URL."""
        attachment_id = self.snowflake()
        path = f"/attachments/{channel_id}/{attachment_id}/{filename}"
        self.files[path] = data
        item: dict[str, Any] = {"id": attachment_id, "filename": filename, "size": len(data) if size is None else size,
                                "url": f"{self.cdn_url}{path}?ex=1&is=2&hm=3", "proxy_url": f"{self.cdn_url}{path}"}
        if content_type is not None:
            item["content_type"] = content_type
        if width is not None:
            item.update(width=width, height=height)
        return item

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.files.get(request.path)
        if data is None:
            return web.Response(status=404, text="not found")
        self.downloads.append(request.path)
        return web.Response(body=data, content_type="application/octet-stream")

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gw"

    # -- test controls -------------------------------------------------------------------------

    def snowflake(self) -> str:
        """A fresh id whose timestamp is now (interaction tokens age from it)."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._snowflake_counter) & 0xFFF))

    def note(self, what: str, detail: Any = None) -> None:
        """Put a marker of the test into `log`, between the REST calls around it."""
        self.log.append((what, detail))

    def inject_429(
        self,
        method: str,
        path_regex: str,
        *,
        times: int = 1,
        retry_after: float = 0.05,
        is_global: bool = False,
    ) -> None:
        """The next `times` calls matching `method` and `path_regex` (fullmatch) answer 429."""
        self._injections.append(
            _Injection(method.upper(), re.compile(path_regex), times, retry_after, is_global)
        )

    def inject_disconnect(self, method: str, path_regex: str, *, times: int = 1) -> None:
        """The next `times` matching calls are carried out, then the connection is dropped
        before the answer: the client cannot tell whether its request went through."""
        self._disconnects.append((method.upper(), re.compile(path_regex), [times]))

    def expire_token(self, token: str) -> None:
        """Webhook calls with this interaction token answer 401 from now on."""
        self._expired_tokens.add(token)

    def add_channel(
        self, channel_id: str, *, guild_id: str, type: int = 0, parent_id: str | None = None
    ) -> None:
        """A channel GET /channels/{id} knows; types 10-12 are threads of `parent_id`."""
        data: dict[str, Any] = {
            "id": channel_id,
            "type": type,
            "guild_id": guild_id,
            "name": f"c{channel_id}",
        }
        if type in (10, 11, 12):
            data.update(
                parent_id=parent_id,
                owner_id="1",
                message_count=0,
                member_count=1,
                rate_limit_per_user=0,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _now_iso(),
                    "locked": False,
                },
            )
        else:
            data.update(position=0, permission_overwrites=[], parent_id=parent_id, nsfw=False)
        self.channels[channel_id] = data

    async def wait_ready(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send one gateway dispatch (op 0) to the connected client."""
        await self.wait_ready()
        assert self._ws is not None
        if event == "INTERACTION_CREATE":
            self._interactions[data["token"]] = data
        await self._ws.send_str(json.dumps({"op": 0, "t": event, "s": next(self._sequence), "d": data}))

    async def wait_for_call(
        self, predicate: Callable[[Call], bool], *, count: int = 1, timeout: float = 10
    ) -> list[Call]:
        """Wait until `count` recorded calls satisfy `predicate`; returns them."""

        def matching() -> list[Call]:
            return [c for c in self.calls if predicate(c)]

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(matching()) >= count), timeout)
        return matching()

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and pattern.fullmatch(c.path)]

    def channel_messages(self, channel_id: str) -> list[dict[str, Any]]:
        """Messages now in a channel (followups included), oldest first."""
        found = [m for m in self.messages.values() if m["channel_id"] == channel_id]
        return sorted(found, key=lambda m: int(m["id"]))

    # -- payload builders ------------------------------------------------------------------------

    def user(self, user_id: str, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": user_id,
            "username": name,
            "global_name": name.title(),
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
        }

    def message_payload(
        self,
        *,
        channel_id: str,
        author: dict[str, Any],
        content: str,
        guild_id: str | None = None,
        roles: tuple[str, ...] = (),
        mentions: tuple[dict[str, Any], ...] = (),
        reply_to: dict[str, Any] | None = None,
        attachments: tuple[dict[str, Any], ...] = (),
    ) -> dict[str, Any]:
        message_id = self.snowflake()
        data: dict[str, Any] = {
            "id": message_id,
            "channel_id": channel_id,
            "type": 19 if reply_to else 0,
            "content": content,
            "author": author,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": list(mentions),
            "mention_roles": [],
            "attachments": list(attachments),
            "embeds": [],
            "pinned": False,
            "flags": 0,
        }
        if guild_id is not None:
            data["guild_id"] = guild_id
            data["member"] = {"roles": list(roles), "joined_at": _now_iso(), "deaf": False, "mute": False}
        if reply_to is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
            }
            data["referenced_message"] = reply_to
        return data

    def interaction_payload(
        self,
        *,
        subcommand: str,
        options: dict[str, Any] | None = None,
        channel_id: str,
        user: dict[str, Any],
        guild_id: str | None = None,
        roles: tuple[str, ...] = (),
        channel_type: int = 0,
        parent_id: str | None = None,
        attachment: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An INTERACTION_CREATE for `/moa <subcommand>` with string options (and an
        `attachment` option, resolved as Discord does, when given)."""
        sub_options = [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()]
        if attachment is not None:
            sub_options.append({"name": "attachment", "type": 11, "value": attachment["id"]})
        channel: dict[str, Any] = {"id": channel_id, "type": channel_type}
        if guild_id is not None:
            channel.update(
                guild_id=guild_id, name=f"c{channel_id}", position=0, permission_overwrites=[], nsfw=False
            )
            if parent_id is not None:
                channel["parent_id"] = parent_id
            if channel_type in (10, 11, 12):
                channel.update(
                    owner_id="1",
                    message_count=0,
                    member_count=1,
                    thread_metadata={
                        "archived": False,
                        "auto_archive_duration": 1440,
                        "archive_timestamp": _now_iso(),
                        "locked": False,
                    },
                )
        data: dict[str, Any] = {
            "id": self.snowflake(),
            "application_id": self.application_id,
            "type": 2,
            "token": "ix-" + secrets.token_urlsafe(24),
            "version": 1,
            "data": {
                "id": "800000000000000001",
                "name": "moa",
                "type": 1,
                "options": [{"name": subcommand, "type": 1, "options": sub_options}],
                **({"resolved": {"attachments": {attachment["id"]: attachment}}} if attachment else {}),
            },
            "channel_id": channel_id,
            "channel": channel,
            "locale": "en-US",
            "app_permissions": "2248473465835073",
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild_id or "0"},
            "context": 0 if guild_id else 1,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if guild_id is not None:
            data["guild_id"] = guild_id
            data["guild_locale"] = "en-US"
            data["member"] = {
                "user": user,
                "roles": list(roles),
                "nick": None,
                "joined_at": _now_iso(),
                "deaf": False,
                "mute": False,
                "flags": 0,
                "permissions": "2248473465835073",
            }
        else:
            data["user"] = user
        return data

    # -- gateway -------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            op = frame.get("op")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                self.identify = frame["d"]
                ready = {
                    "v": 10,
                    "user": self.bot_user,
                    "guilds": [],
                    "session_id": secrets.token_hex(8),
                    "resume_gateway_url": self.gateway_url,
                    "application": {"id": self.application_id, "flags": 0},
                }
                if "shard" in frame["d"]:  # as Discord does: READY names the shard it identified as
                    ready["shard"] = frame["d"]["shard"]
                await ws.send_str(json.dumps({"op": 0, "t": "READY", "s": next(self._sequence), "d": ready}))
                self._ready.set()
            elif op == 6:
                await ws.send_str(json.dumps({"op": 0, "t": "RESUMED", "s": next(self._sequence), "d": {}}))
        return ws

    # -- REST ----------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        call = Call(method=request.method, path=path, query=dict(request.query))
        if request.content_type == "multipart/form-data":
            form = await request.post()
            for key, value in form.items():
                if key == "payload_json":
                    call.json = json.loads(str(value))
                elif hasattr(value, "file"):
                    call.files.append((value.filename, value.file.read()))
        elif request.can_read_body:
            raw = await request.read()
            call.json = json.loads(raw) if raw else None
        if self.refused_token and request.headers.get("Authorization") == f"Bot {self.refused_token}":
            response = _error(401, "401: Unauthorized", 0)
        else:
            response = self._injected(call) or self._answer(call)
        call.status = response.status
        self.calls.append(call)
        self.log.append(("rest", call))
        async with self._changed:
            self._changed.notify_all()
        if self._take_disconnect(call):
            call.status = -1  # done, but the answer never left
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        return response

    def _take_disconnect(self, call: Call) -> bool:
        for method, pattern, left in self._disconnects:
            if left[0] > 0 and method == call.method and pattern.fullmatch(call.path):
                left[0] -= 1
                return True
        return False

    def _injected(self, call: Call) -> web.Response | None:
        for injection in self._injections:
            if (
                injection.times > 0
                and injection.method == call.method
                and injection.pattern.fullmatch(call.path)
            ):
                injection.times -= 1
                body = {
                    "message": "You are being rate limited.",
                    "retry_after": injection.retry_after,
                    "global": injection.is_global,
                }
                headers = {
                    "Via": "1.1 google",
                    "Retry-After": str(max(1, round(injection.retry_after))),
                    "X-RateLimit-Scope": "global" if injection.is_global else "user",
                }
                return _json(body, status=429, headers=headers)
        return None

    def _answer(self, call: Call) -> web.Response:
        method, path = call.method, call.path
        if method == "GET" and path == "/users/@me":
            return _json(self.bot_user)
        if method == "GET" and path == "/oauth2/applications/@me":
            return _json(
                {
                    "id": self.application_id,
                    "name": self.bot_user["username"],
                    "description": "",
                    "icon": None,
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "owner": self.user("42", "owner"),
                    "verify_key": "0" * 64,
                    "flags": 0,
                }
            )
        if m := re.fullmatch(r"/applications/(\d+)/commands", path):
            if method == "PUT":
                self.commands = [
                    {**c, "id": str(800000000000000001 + i), "application_id": m[1], "version": "1"}
                    for i, c in enumerate(call.json or [])
                ]
                return _json(self.commands)
            return _json(self.commands)
        if method == "GET" and (m := re.fullmatch(r"/channels/(\d+)", path)):
            channel = self.channels.get(m[1])
            return _json(channel) if channel else _error(404, "Unknown Channel", 10003)
        if m := re.fullmatch(r"/channels/(\d+)/messages", path):
            if method == "POST":
                return self._create_channel_message(m[1], call)
        if m := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path):
            return self._change_message(method, m[2], call, channel_id=m[1])
        if method == "POST" and (m := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path)):
            return self._callback(m[1], m[2], call)
        if m := re.fullmatch(r"/webhooks/(\d+)/([^/]+)", path):
            if method == "POST":
                return self._followup(m[2], call)
        if m := re.fullmatch(r"/webhooks/(\d+)/([^/]+)/messages/(\d+|@original)", path):
            interaction = self._webhook_interaction(m[2])
            if isinstance(interaction, web.Response):
                return interaction
            return self._change_message(method, m[3], call, channel_id=interaction["channel_id"])
        return _error(404, f"404: Not Found ({method} {path})", 0)

    def _new_message(
        self, channel_id: str, body: dict[str, Any], files: list[tuple[str, bytes]]
    ) -> dict[str, Any]:
        message_id = self.snowflake()
        attachments = [
            {
                "id": self.snowflake(),
                "filename": name,
                "size": len(data),
                "url": f"http://127.0.0.1:{self.port}/attachments/{name}",
                "proxy_url": f"http://127.0.0.1:{self.port}/attachments/{name}",
            }
            for name, data in files
        ]
        message = {
            "id": message_id,
            "channel_id": channel_id,
            "type": 0,
            "content": body.get("content") or "",
            "author": self.bot_user,
            "embeds": body.get("embeds") or [],
            "attachments": attachments,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "pinned": False,
            "flags": 0,
        }
        if body.get("message_reference"):
            message["message_reference"] = body["message_reference"]
        if body.get("nonce") is not None:
            message["nonce"] = body["nonce"]
        self.messages[message_id] = message
        return message

    def _create_channel_message(self, channel_id: str, call: Call) -> web.Response:
        body = call.json or {}
        if not (body.get("content") or body.get("embeds") or call.files):
            return _error(400, "Cannot send an empty message", 50006)
        if (invalid := _invalid_body(body)) is not None:
            return invalid
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce") and (channel_id, str(nonce)) in self._nonces:
            return _json(self.messages[self._nonces[(channel_id, str(nonce))]])
        message = self._new_message(channel_id, body, call.files)
        if nonce is not None:
            self._nonces[(channel_id, str(nonce))] = message["id"]
        return _json(message)

    def _change_message(self, method: str, message_id: str, call: Call, *, channel_id: str) -> web.Response:
        message = self.messages.get(message_id)
        if message is None or message["channel_id"] != channel_id:
            return _error(404, "Unknown Message", 10008)
        if method == "DELETE":
            del self.messages[message_id]
            return web.Response(status=204)
        if method == "PATCH":
            body = call.json or {}
            if (invalid := _invalid_body(body)) is not None:
                return invalid
            if "content" in body:
                message["content"] = body["content"] or ""
            if "embeds" in body:
                message["embeds"] = body["embeds"] or []
            message["edited_timestamp"] = _now_iso()
            return _json(message)
        if method == "GET":
            return _json(message)
        return _error(405, "405: Method Not Allowed", 0)

    def _callback(self, interaction_id: str, token: str, call: Call) -> web.Response:
        interaction = self._interactions.get(token)
        if interaction is None or interaction["id"] != interaction_id:
            return _error(404, "Unknown interaction", 10062)
        if interaction_id in self._acknowledged:
            return _error(400, "Interaction has already been acknowledged.", 40060)
        self._acknowledged.add(interaction_id)
        kind = (call.json or {}).get("type")
        return _json(
            {
                "interaction": {
                    "id": interaction_id,
                    "type": interaction["type"],
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": False,
                },
            }
        )

    def _webhook_interaction(self, token: str) -> dict[str, Any] | web.Response:
        if token in self._expired_tokens:
            return _error(401, "Invalid Webhook Token", 50027)
        interaction = self._interactions.get(token)
        if interaction is None:
            return _error(404, "Unknown Webhook", 10015)
        if interaction["id"] not in self._acknowledged:
            return _error(404, "Unknown Webhook", 10015)  # a followup needs an initial response
        return interaction

    def _followup(self, token: str, call: Call) -> web.Response:
        interaction = self._webhook_interaction(token)
        if isinstance(interaction, web.Response):
            return interaction
        body = call.json or {}
        if not (body.get("content") or body.get("embeds") or call.files):
            return _error(400, "Cannot send an empty message", 50006)
        if (invalid := _invalid_body(body)) is not None:
            return invalid
        message = self._new_message(interaction["channel_id"], body, call.files)
        message["webhook_id"] = self.application_id
        message["application_id"] = self.application_id
        message["interaction_metadata"] = {
            "id": interaction["id"],
            "type": 2,
            "user": (interaction.get("member") or {}).get("user") or interaction.get("user"),
            "authorizing_integration_owners": {},
        }
        if call.query.get("wait") in ("1", "true", "True"):
            return _json(message)
        return web.Response(status=204)
