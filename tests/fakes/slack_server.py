"""A fake Slack on 127.0.0.1: the Web API under /api/, file upload URLs, and a Socket Mode
websocket, speaking Slack's wire format so the real slack-sdk / slack-bolt can be pointed at it.

- Web API methods (auth.test, apps.connections.open, chat.postMessage, chat.update,
  chat.delete, conversations.replies/history, users.info, files.getUploadURLExternal,
  files.completeUploadExternal) are recorded in `calls` and keep per-channel message state.
- `rate_limit(method, times, retry_after)` answers the next calls of a method with
  429 + Retry-After; `delay(method, seconds)` records the call, then answers late (a client
  timeout after the message was posted).
- Socket Mode, as Slack runs it for an app with several connections (up to 10, one per gateway
  replica): each `apps.connections.open` hands out its own URL, ws://127.0.0.1:PORT/socket?ticket=cN
  (the connection is named `cN`); each socket gets `hello`, then envelopes pushed with
  `push_event` / `push_command` — spread over the open connections in turn, or sent on the
  connection named (`connection=`), so the same event can be delivered on two connections, as a
  redelivery does. Acks are recorded with their time and the connection they came on.
- `sign(secret, body)` builds the headers of a signed HTTP-mode request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
TEAM_ID = "T0001"
APP_ID = "A0001"


def sign(secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack sends with an HTTP-mode request: v0 HMAC-SHA256 over `v0:{ts}:{body}`."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def event_body(event: dict[str, Any], *, event_id: str) -> dict[str, Any]:
    """The Events API callback wrapping one event (the `payload` of an events_api envelope)."""
    return {
        "token": "verification-token",
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": {"event_ts": event.get("ts", "1700000000.000100"), **event},
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
        "is_ext_shared_channel": False,
    }


def command_body(text: str, *, user_id: str, channel_id: str, trigger_id: str, base: str) -> dict[str, str]:
    """A `/moa` slash command payload (Slack sends these form-encoded over HTTP)."""
    return {
        "token": "verification-token",
        "team_id": TEAM_ID,
        "team_domain": "example",
        "channel_id": channel_id,
        "channel_name": "directmessage" if channel_id.startswith("D") else "general",
        "user_id": user_id,
        "user_name": user_id.lower(),
        "command": "/moa",
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": f"{base}response/{trigger_id}",
        "trigger_id": trigger_id,
    }


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() when received
    status: int = 200


@dataclass
class Ack:
    envelope_id: str
    payload: dict[str, Any] | None
    at: float
    connection: str = ""  # the ticket of the socket it came on


@dataclass
class FakeSlack:
    bot_user_id: str = BOT_USER_ID
    bot_id: str = BOT_ID
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # user id -> display name
    port: int = 0
    # Shared files: path under /files-pri/ -> bytes; downloads recorded as (path, Authorization).
    files: dict[str, bytes] = field(default_factory=dict)
    downloads: list[tuple[str, str]] = field(default_factory=list)
    bot_token: str | None = None  # when set, file downloads need exactly this token

    def __post_init__(self) -> None:
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._limits: dict[str, list[float]] = {}  # method -> [remaining, retry_after]
        self._delays: dict[str, list[float]] = {}  # method -> [remaining, seconds]
        self._changed = asyncio.Event()
        # Open Socket Mode connections by ticket, in the order they connected.
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._tickets = itertools.count(1)
        self._turn = itertools.count()  # spreads envelopes over the connections
        self._runner: web.AppRunner | None = None

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def files_url(self) -> str:
        """Where this fake serves shared files, as files.slack.com does."""
        return f"http://127.0.0.1:{self.port}"

    def add_file(self, data: bytes, name: str, mimetype: str, **extra: Any) -> dict[str, Any]:
        """A file object as Slack puts it in a message event, its bytes at its url_private."""
        file_id = f"F{next(self._ids):06d}"
        path = f"/files-pri/{TEAM_ID}-{file_id}/{name}"
        self.files[path] = data
        return {"id": file_id, "name": name, "title": name, "mimetype": mimetype, "filetype": name.rsplit(".", 1)[-1],
                "size": len(data), "mode": "hosted", "url_private": f"{self.files_url}{path}",
                "url_private_download": f"{self.files_url}/files-pri/{TEAM_ID}-{file_id}/download/{name}", **extra}

    async def _file(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.downloads.append((request.path, auth))
        good = auth == f"Bearer {self.bot_token}" if self.bot_token else auth.startswith("Bearer xox")
        if not good:  # what Slack does without the bot's token: off to the sign-in page
            raise web.HTTPFound(f"{self.files_url}/signin")
        path = request.path.replace("/download/", "/", 1)
        data = self.files.get(path)
        if data is None:
            return web.Response(status=404, text="file not found")
        return web.Response(body=data, content_type="application/octet-stream")

    async def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/files-pri/{tail:.*}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        for ws in list(self._sockets.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- test controls -------------------------------------------------------------------

    def rate_limit(self, method: str, times: int = 1, retry_after: float = 1) -> None:
        self._limits[method] = [times, retry_after]

    def delay(self, method: str, seconds: float, times: int = 1) -> None:
        self._delays[method] = [times, seconds]

    def calls_to(self, method: str, *, ok_only: bool = True) -> list[Call]:
        return [c for c in self.calls if c.method == method and (c.status == 200 or not ok_only)]

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The parent and its replies, oldest first."""
        return [
            m
            for m in self.messages.get(channel, [])
            if m["ts"] == thread_ts or m.get("thread_ts") == thread_ts
        ]

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        return next(m for m in self.messages.get(channel, []) if m["ts"] == ts)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked on every call or ack); return it."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("fake Slack: condition not met in time")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.2))
            except TimeoutError:
                pass

    async def push(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        retry_attempt: int = 0,
        retry_reason: str = "",
        envelope_id: str | None = None,
        connection: str | None = None,
    ) -> str:
        """Send one Socket Mode envelope on `connection` (a ticket; by default the open
        connections take turns); returns its envelope_id."""
        ws = await self._socket_for(connection)
        envelope_id = envelope_id or f"env-{next(self._ids)}"
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
        }
        if kind == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        await ws.send_str(json.dumps(envelope))
        return envelope_id

    @property
    def connections(self) -> list[str]:
        """Tickets of the open Socket Mode connections, oldest first."""
        return list(self._sockets)

    async def wait_connections(self, count: int, timeout: float = 5.0) -> list[str]:
        """Wait until at least `count` Socket Mode connections are open; their tickets."""
        return await self.wait_for(lambda: self.connections if len(self._sockets) >= count else None, timeout)

    async def _socket_for(self, connection: str | None) -> web.WebSocketResponse:
        if connection is not None:
            await self.wait_for(lambda: connection in self._sockets)
            return self._sockets[connection]
        await self.wait_connections(1)
        tickets = self.connections
        return self._sockets[tickets[next(self._turn) % len(tickets)]]

    async def push_event(
        self, event: dict[str, Any], *, event_id: str, retry_attempt: int = 0, retry_reason: str = "",
        connection: str | None = None,
    ) -> str:
        return await self.push(
            "events_api",
            event_body(event, event_id=event_id),
            retry_attempt=retry_attempt,
            retry_reason=retry_reason or ("timeout" if retry_attempt else ""),
            connection=connection,
        )

    async def push_command(
        self, text: str, *, user_id: str = "U1", channel_id: str = "C1", trigger_id: str = "trig-1",
        connection: str | None = None,
    ) -> str:
        body = command_body(
            text, user_id=user_id, channel_id=channel_id, trigger_id=trigger_id, base=self.base_url
        )
        return await self.push("slash_commands", body, connection=connection)

    def ack_for(self, envelope_id: str) -> Ack | None:
        return next((a for a in self.acks if a.envelope_id == envelope_id), None)

    # --- Web API -------------------------------------------------------------------------

    def _next_ts(self) -> str:
        n = next(self._ts)
        return f"{1700000000 + n}.{n:06d}"

    def _touch(self) -> None:
        self._changed.set()

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            raw = await request.text()
            if request.content_type == "application/json":
                params.update(json.loads(raw or "{}"))
            else:
                params.update(dict(parse_qsl(raw, keep_blank_values=True)))
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        self._touch()
        limit = self._limits.get(method)
        if limit and limit[0] > 0:
            limit[0] -= 1
            call.status = 429
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(int(limit[1]) if limit[1] == int(limit[1]) else limit[1])},
            )
        auth = request.headers.get("Authorization", "")
        wanted = "Bearer xapp-" if method == "apps.connections.open" else "Bearer xox"
        if not auth.startswith(wanted):
            return web.json_response({"ok": False, "error": "not_authed" if not auth else "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        body = handler(params)
        delay = self._delays.get(method)
        if delay and delay[0] > 0:
            delay[0] -= 1
            await asyncio.sleep(delay[1])
        return web.json_response(body)

    def _m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://example.slack.com/",
            "team": "Example",
            "user": "moa",
            "team_id": TEAM_ID,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket=c{next(self._tickets)}"}

    def _blocks(self, p: dict[str, Any]) -> Any:
        blocks = p.get("blocks")
        return json.loads(blocks) if isinstance(blocks, str) else blocks

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = p.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        text = p.get("text") or ""
        blocks = self._blocks(p)
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if len(text) > 40000:
            return {"ok": False, "error": "msg_too_long"}
        if blocks is not None and (
            len(blocks) > 50 or any(len(b.get("text", {}).get("text", "")) > 3000 for b in blocks)
        ):
            return {"ok": False, "error": "invalid_blocks"}
        msg = {
            "type": "message",
            "ts": self._next_ts(),
            "text": text,
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
        }
        if blocks is not None:
            msg["blocks"] = blocks
        if p.get("metadata"):
            metadata = p["metadata"]
            msg["metadata"] = json.loads(metadata) if isinstance(metadata, str) else metadata
        if p.get("thread_ts"):
            msg["thread_ts"] = p["thread_ts"]
            msg["parent_user_id"] = self._author(channel, p["thread_ts"])
        self.messages.setdefault(channel, []).append(msg)
        return {"ok": True, "channel": channel, "ts": msg["ts"], "message": msg}

    def _author(self, channel: str, ts: str) -> str | None:
        for m in self.messages.get(channel, []):
            if m["ts"] == ts:
                return m.get("user")
        return None

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = p.get("channel"), p.get("ts")
        for m in self.messages.get(channel or "", []):
            if m["ts"] == ts:
                if m.get("user") != self.bot_user_id:
                    return {"ok": False, "error": "cant_update_message"}
                m["text"] = p.get("text") or ""
                blocks = self._blocks(p)
                if blocks is not None:
                    m["blocks"] = blocks
                m["edits"] = m.get("edits", 0) + 1
                return {"ok": True, "channel": channel, "ts": ts, "text": m["text"]}
        return {"ok": False, "error": "message_not_found"}

    def _m_chat_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = p.get("channel") or "", p.get("ts")
        before = len(self.messages.get(channel, []))
        self.messages[channel] = [m for m in self.messages.get(channel, []) if m["ts"] != ts]
        if len(self.messages[channel]) == before:
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": channel, "ts": ts}

    @staticmethod
    def _listed(messages: list[dict[str, Any]], p: dict[str, Any]) -> list[dict[str, Any]]:
        """As Slack lists them: message metadata only with include_all_metadata."""
        if str(p.get("include_all_metadata", "")).lower() in ("1", "true"):
            return messages
        return [{k: v for k, v in m.items() if k != "metadata"} for m in messages]

    def _page(self, messages: list[dict[str, Any]], p: dict[str, Any], default_limit: int) -> dict[str, Any]:
        """One page of a cursor-paginated list, as Slack returns it: at most `limit` messages,
        `has_more`, and `response_metadata.next_cursor` ("" on the last page) to pass as `cursor`."""
        limit = min(int(p.get("limit") or default_limit), 1000)
        cursor = str(p.get("cursor") or "")
        offset = int(base64.b64decode(cursor).decode().removeprefix("next_ts:")) if cursor else 0
        page = messages[offset:offset + limit]
        more = offset + limit < len(messages)
        next_cursor = base64.b64encode(f"next_ts:{offset + limit}".encode()).decode() if more else ""
        return {"ok": True, "messages": self._listed(page, p), "has_more": more,
                "response_metadata": {"next_cursor": next_cursor}}

    def _m_conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._page(self.thread(p.get("channel") or "", p.get("ts") or ""), p, 1000)

    def _m_conversations_history(self, p: dict[str, Any]) -> dict[str, Any]:
        top = [m for m in self.messages.get(p.get("channel") or "", []) if not m.get("thread_ts")]
        return self._page(list(reversed(top)), p, 100)

    def _m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        user = p.get("user") or ""
        if user not in self.users:
            return {"ok": False, "error": "user_not_found"}
        name = self.users[user]
        return {"ok": True, "user": {"id": user, "name": name.lower(), "profile": {"display_name": name}}}

    def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._ids):06d}"
        return {
            "ok": True,
            "upload_url": f"http://127.0.0.1:{self.port}/upload/{file_id}",
            "file_id": file_id,
        }

    def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        files = p.get("files")
        files = json.loads(files) if isinstance(files, str) else files or []
        channel = p.get("channel_id")
        out = []
        for f in files:
            if f["id"] not in self.uploads:
                return {"ok": False, "error": "file_not_found"}
            out.append({"id": f["id"], "title": f.get("title"), "size": len(self.uploads[f["id"]])})
        if channel:
            msg = {
                "type": "message",
                "ts": self._next_ts(),
                "text": p.get("initial_comment") or "",
                "user": self.bot_user_id,
                "bot_id": self.bot_id,
                "files": out,
            }
            if p.get("thread_ts"):
                msg["thread_ts"] = p["thread_ts"]
            self.messages.setdefault(channel, []).append(msg)
        return {"ok": True, "files": out}

    async def _upload(self, request: web.Request) -> web.Response:
        self.uploads[request.match_info["file_id"]] = await request.read()
        self.calls.append(Call("upload", {"file_id": request.match_info["file_id"]}, time.monotonic()))
        self._touch()
        return web.Response(text=f"OK - {len(self.uploads[request.match_info['file_id']])}")

    # --- Socket Mode ---------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ticket = request.query.get("ticket") or f"c{next(self._tickets)}"
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets[ticket] = ws
        self._touch()
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self._sockets),
                    "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                    "connection_info": {"app_id": APP_ID},
                }
            )
        )
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "envelope_id" in data:
                    self.acks.append(Ack(data["envelope_id"], data.get("payload"), time.monotonic(), ticket))
                    self._touch()
        finally:
            if self._sockets.get(ticket) is ws:
                del self._sockets[ticket]
                self._touch()
        return ws
