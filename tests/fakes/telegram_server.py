"""A fake Telegram Bot API server on 127.0.0.1, for tests that point the real SDK at it.

It speaks the wire format python-telegram-bot uses: `POST /bot<token>/<method>` with a
form-urlencoded (or JSON, or multipart) body whose non-string values are JSON-encoded, answered
with `{"ok": true, "result": ...}` or Telegram's error shape. It keeps what each chat shows
(messages with their current visible text), checks HTML like Telegram does (unknown or
unbalanced tags are "can't parse entities", over 4096 UTF-16 units is "message is too long",
an identical edit is "message is not modified"), long-polls getUpdates, records every call, and
can fail, stall or hold the next calls of a method (429 with retry_after, 400 can't parse
entities, a request left unanswered as if the bot crashed while sending it), optionally only
the calls whose parameters match a predicate.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "7000001:TEST-token-not-a-secret"
BOT_ID = 7000001
BOT_USERNAME = "MoaTestBot"
MAX_TEXT = 4096

# Parameters PTB sends as plain strings; everything else arrives JSON-encoded.
_STRING_PARAMS = frozenset(
    {"text", "caption", "parse_mode", "url", "secret_token", "ip_address", "description", "short_description"}
)
_ALLOWED_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "code",
        "pre",
        "a",
        "blockquote",
        "tg-spoiler",
        "span",
    }
)
_TAG = re.compile(
    r"<(?P<close>/?)(?P<name>[A-Za-z][\w-]*)(?P<attrs>(?:\s+[\w-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'))?)*)\s*>"
)
_ENTITY = re.compile(r"&(?:#(?P<dec>\d+)|#x(?P<hex>[0-9a-fA-F]+)|(?P<name>lt|gt|amp|quot));")
_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


class EntityError(ValueError):
    pass


def parse_html(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The visible text of Telegram-HTML `text` and its (tag, attrs) list; EntityError if refused."""
    visible: list[str] = []
    tags: list[tuple[str, str]] = []
    stack: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "<":
            match = _TAG.match(text, pos)
            if match is None:
                raise EntityError(f"Unexpected start tag at byte offset {pos}")
            name = match.group("name").lower()
            if name not in _ALLOWED_TAGS:
                raise EntityError(f'Unsupported start tag "{name}" at byte offset {pos}')
            if match.group("close"):
                if not stack or stack[-1] != name:
                    raise EntityError(f'Can\'t find end tag corresponding to start tag "{name}"')
                stack.pop()
            else:
                if stack and stack[-1] in ("code", "pre") and not (stack[-1] == "pre" and name == "code"):
                    raise EntityError(f'Tag "{name}" can\'t be nested inside "{stack[-1]}"')
                stack.append(name)
                tags.append((name, match.group("attrs").strip()))
            pos = match.end()
        elif char == "&":
            match = _ENTITY.match(text, pos)
            if match is None:
                raise EntityError(f"Unsupported HTML entity at byte offset {pos}")
            visible.append(html.unescape(match.group(0)))
            pos = match.end()
        elif char == ">":
            raise EntityError(f"Unexpected end of name token at byte offset {pos}")
        else:
            visible.append(char)
            pos += 1
    if stack:
        raise EntityError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(visible), tags


class ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    status: int = 200


@dataclass
class ChatMessage:
    """One message as the chat shows it."""

    message_id: int
    kind: str  # "text", "photo", "document"
    text: str  # visible text (caption for files)
    raw: str  # as sent (HTML when parse_mode is HTML)
    parse_mode: str | None
    thread_id: int | None
    reply_to: int | None
    filename: str | None = None
    data: bytes = b""
    edits: int = 0


@dataclass
class Hold:
    """A call held by `FakeTelegram.hold_next`: recorded, but neither applied nor answered."""

    method: str
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    call: Call | None = None

    def release(self) -> None:
        self.released.set()


Params = Callable[[dict[str, Any]], bool]


@dataclass
class _Fault:
    status: int
    description: str
    parameters: dict[str, int] | None = None
    stall_s: float = 0.0  # apply the call, then answer this late (a client timeout)
    when: Params | None = None  # only calls whose parameters match
    hold: Hold | None = None  # neither apply nor answer the call until released


@dataclass
class FakeTelegram:
    token: str = TOKEN
    bot_id: int = BOT_ID
    username: str = BOT_USERNAME
    calls: list[Call] = field(default_factory=list)
    chats: dict[int, list[ChatMessage]] = field(default_factory=lambda: defaultdict(list))
    drafts: dict[tuple[int, int], str] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)
    webhook: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1000)
        self._message_ids = itertools.count(500)
        self._faults: dict[str, deque[_Fault]] = defaultdict(deque)
        self._holds: list[Hold] = []
        self._changed = asyncio.Condition()
        self._new_update = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Files the bot may download: file_id -> (file_path, bytes); file_path may be odd on purpose.
        self.files: dict[str, tuple[str, bytes]] = {}
        self.downloads: list[str] = []  # file paths downloaded, in order
        self._file_ids = itertools.count(1)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._closing = True
        self._new_update.set()
        for hold in self._holds:
            hold.release()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # -- test controls -------------------------------------------------------------------

    def add_file(self, data: bytes, *, name: str = "file", file_path: str | None = None) -> str:
        """A file the bot can fetch with getFile; returns its file_id."""
        file_id = f"file-{next(self._file_ids)}"
        self.files[file_id] = (file_path or f"documents/{file_id}-{name}", data)
        return file_id

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates; gives it an update_id unless it has one."""
        update = dict(update)
        update.setdefault("update_id", next(self._update_ids))
        self._updates.append(update)
        self._new_update.set()
        return int(update["update_id"])

    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        description: str | None = None,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
        times: int = 1,
        when: Params | None = None,
    ) -> None:
        """The next `times` calls of `method` (matching `when`) fail with Telegram's error shape."""
        if description is None:
            description = (
                f"Too Many Requests: retry after {retry_after}"
                if status == 429
                else 'Bad Request: can\'t parse entities: Unsupported start tag "x" at byte offset 0'
            )
        parameters: dict[str, int] = {}
        if retry_after is not None:
            parameters["retry_after"] = retry_after
        if migrate_to_chat_id is not None:
            parameters["migrate_to_chat_id"] = migrate_to_chat_id
        for _ in range(times):
            self._faults[method].append(_Fault(status, description, parameters or None, when=when))

    def stall_next(self, method: str, seconds: float, *, times: int = 1, when: Params | None = None) -> None:
        """The next calls of `method` (matching `when`) take effect but are answered `seconds` late."""
        for _ in range(times):
            self._faults[method].append(_Fault(200, "", stall_s=seconds, when=when))

    def hold_next(self, method: str, *, when: Params | None = None) -> Hold:
        """The next call of `method` (matching `when`) is recorded, then neither applied nor
        answered until `Hold.release()` (or `stop()`), when it is refused with a 502: a request
        cut off by a crash of the bot before Telegram acted on it."""
        hold = Hold(method)
        self._holds.append(hold)
        self._faults[method].append(_Fault(200, "", when=when, hold=hold))
        return hold

    def chat(self, chat_id: int) -> list[ChatMessage]:
        return list(self.chats.get(chat_id, []))

    def calls_of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    # -- the Bot API -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params, files = await _read_params(request)
        call = Call(method, params, files)
        self.calls.append(call)
        if request.match_info["token"] != self.token:
            return await self._answer(call, ApiError(401, "Unauthorized"))
        fault = self._take_fault(method, params)
        if fault is not None and fault.hold is not None:
            fault.hold.call = call
            fault.hold.arrived.set()
            await self._notify()
            await fault.hold.released.wait()
            return await self._answer(call, ApiError(502, "Bad Gateway"))
        if fault is not None and fault.stall_s == 0:
            return await self._answer(
                call,
                ApiError(
                    fault.status,
                    fault.description,
                    fault.parameters,
                ),
            )
        handler = getattr(self, "_api_" + method, None)
        if handler is None:
            return await self._answer(call, ApiError(404, "Not Found"))
        try:
            result = await handler(params, files)
        except ApiError as error:
            return await self._answer(call, error)
        if fault is not None:
            await self._notify()
            await asyncio.sleep(fault.stall_s)
        return await self._answer(call, result)

    def _take_fault(self, method: str, params: dict[str, Any]) -> _Fault | None:
        queue = self._faults[method]
        for fault in queue:
            if fault.when is None or fault.when(params):
                queue.remove(fault)
                return fault
        return None

    async def _answer(self, call: Call, result: Any) -> web.Response:
        if isinstance(result, ApiError):
            call.status = result.status
            body: dict[str, Any] = {
                "ok": False,
                "error_code": result.status,
                "description": result.description,
            }
            if result.parameters:
                body["parameters"] = result.parameters
        else:
            body = {"ok": True, "result": result}
        await self._notify()
        return web.json_response(body, status=call.status)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        path = request.match_info["path"]
        for file_path, data in self.files.values():
            if file_path == path:
                self.downloads.append(path)
                return web.Response(body=data, content_type="application/octet-stream")
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    async def _api_getFile(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        found = self.files.get(str(params.get("file_id")))
        if found is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        file_path, data = found
        return {"file_id": params["file_id"], "file_unique_id": "u-" + str(params["file_id"]),
                "file_size": len(data), "file_path": file_path}

    def _me(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "MoA",
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _api_getMe(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return self._me()

    async def _api_setMyCommands(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        self.commands = list(params.get("commands") or [])
        return True

    async def _api_deleteWebhook(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        self.webhook = {}
        return True

    async def _api_setWebhook(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        self.webhook = dict(params)
        return True

    async def _api_getUpdates(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        if offset:
            self._updates = [update for update in self._updates if update["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        while not self._updates and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), left)
            except TimeoutError:
                break
        return list(self._updates)

    async def _api_sendMessage(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat_id = int(params["chat_id"])
        visible = _visible(params)
        reply_to = self._reply_to(chat_id, params)
        thread_id = params.get("message_thread_id")
        message = ChatMessage(
            message_id=next(self._message_ids),
            kind="text",
            text=visible,
            raw=params["text"],
            parse_mode=params.get("parse_mode"),
            thread_id=thread_id,
            reply_to=reply_to,
        )
        self.chats[chat_id].append(message)
        return self._message_json(chat_id, message)

    async def _api_editMessageText(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat_id = int(params["chat_id"])
        message = self._find(chat_id, int(params["message_id"]))
        if message is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        visible = _visible(params)
        if visible == message.text and _entities_of(params) == _entities_of_message(message):
            raise ApiError(400, _NOT_MODIFIED)
        message.text, message.raw, message.parse_mode = visible, params["text"], params.get("parse_mode")
        message.edits += 1
        return self._message_json(chat_id, message)

    async def _api_sendMessageDraft(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat_id = int(params["chat_id"])
        if chat_id <= 0:
            raise ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        if not int(params.get("draft_id") or 0):
            raise ApiError(400, "Bad Request: draft_id must be non-zero")
        self.drafts[(chat_id, int(params["draft_id"]))] = _visible(params)
        return True

    async def _api_deleteMessage(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat_id = int(params["chat_id"])
        message = self._find(chat_id, int(params["message_id"]))
        if message is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        self.chats[chat_id].remove(message)
        return True

    async def _api_sendPhoto(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return self._send_file(params, files, "photo")

    async def _api_sendDocument(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return self._send_file(params, files, "document")

    def _send_file(self, params: dict[str, Any], files: dict[str, bytes], kind: str) -> Any:
        chat_id = int(params["chat_id"])
        if kind not in files:
            raise ApiError(400, f"Bad Request: there is no {kind} in the request")
        caption = params.get("caption") or ""
        if utf16_len(caption) > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        message = ChatMessage(
            message_id=next(self._message_ids),
            kind=kind,
            text=caption,
            raw=caption,
            parse_mode=params.get("parse_mode"),
            thread_id=params.get("message_thread_id"),
            reply_to=self._reply_to(chat_id, params),
            filename=params.get("_filename_" + kind),
            data=files[kind],
        )
        self.chats[chat_id].append(message)
        result = self._message_json(chat_id, message)
        result.pop("text", None)
        if caption:
            result["caption"] = caption
        if kind == "photo":
            result["photo"] = [
                {
                    "file_id": f"photo-{message.message_id}",
                    "file_unique_id": f"u{message.message_id}",
                    "width": 640,
                    "height": 480,
                }
            ]
        else:
            result["document"] = {
                "file_id": f"doc-{message.message_id}",
                "file_unique_id": f"d{message.message_id}",
            }
        return result

    def _find(self, chat_id: int, message_id: int) -> ChatMessage | None:
        return next((m for m in self.chats.get(chat_id, []) if m.message_id == message_id), None)

    def _reply_to(self, chat_id: int, params: dict[str, Any]) -> int | None:
        reply = params.get("reply_parameters")
        if not reply:
            return None
        message_id = int(reply["message_id"])
        return message_id

    def _message_json(self, chat_id: int, message: ChatMessage) -> dict[str, Any]:
        result: dict[str, Any] = {
            "message_id": message.message_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
            "from": self._me(),
            "text": message.text,
        }
        if message.thread_id is not None:
            result["message_thread_id"] = message.thread_id
            result["is_topic_message"] = True
        return result


def _visible(params: dict[str, Any]) -> str:
    text = params.get("text")
    if not isinstance(text, str):
        raise ApiError(400, "Bad Request: message text is empty")
    visible = text
    if params.get("parse_mode") == "HTML":
        try:
            visible, _ = parse_html(text)
        except EntityError as error:
            raise ApiError(400, f"Bad Request: can't parse entities: {error}") from None
    if not visible.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if utf16_len(visible) > MAX_TEXT:
        raise ApiError(400, "Bad Request: message is too long")
    return visible


def _entities_of(params: dict[str, Any]) -> list[tuple[str, str]]:
    if params.get("parse_mode") != "HTML":
        return []
    return parse_html(params["text"])[1]


def _entities_of_message(message: ChatMessage) -> list[tuple[str, str]]:
    if message.parse_mode != "HTML":
        return []
    return parse_html(message.raw)[1]


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    if request.content_type == "application/json":
        body = await request.json() if request.can_read_body else {}
        return dict(body or {}), files
    form = await request.post()
    for key, value in form.items():
        if isinstance(value, web.FileField):
            files[key] = value.file.read()
            params["_filename_" + key] = value.filename
        elif key in _STRING_PARAMS:
            params[key] = value
        else:
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
    return params, files


# -- recorded-shape updates ----------------------------------------------------------------


def user(
    user_id: int = 42, *, first_name: str = "Ada", username: str | None = "ada", is_bot: bool = False
) -> dict[str, Any]:
    result: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
    if username:
        result["username"] = username
    return result


def private_chat(user_id: int = 42) -> dict[str, Any]:
    return {"id": user_id, "type": "private", "first_name": "Ada", "username": "ada"}


def group_chat(
    chat_id: int = -1001234567890, *, forum: bool = False, kind: str = "supergroup"
) -> dict[str, Any]:
    result: dict[str, Any] = {"id": chat_id, "type": kind, "title": "Team"}
    if forum:
        result["is_forum"] = True
    return result


def entities_for(text: str) -> list[dict[str, Any]]:
    """The entities Telegram attaches: a leading bot command, @mentions."""
    entities = []
    for match in re.finditer(
        r"(?<![\w@])(/[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)?)|(?<![\w@])(@[A-Za-z0-9_]{5,32})", text
    ):
        if match.group(1) and match.start() != 0:
            continue
        kind = "bot_command" if match.group(1) else "mention"
        offset = utf16_len(text[: match.start()])
        entities.append({"type": kind, "offset": offset, "length": utf16_len(match.group(0))})
    return entities


def message_update(
    text: str | None,
    *,
    chat: dict[str, Any] | None = None,
    sender: dict[str, Any] | None = None,
    message_id: int = 10,
    date: int = 1_767_225_600,  # 2026-01-01T00:00:00Z
    thread_id: int | None = None,
    reply_to: dict[str, Any] | None = None,
    caption: str | None = None,
    edited: bool = False,
    update_id: int | None = None,
    photo: list[dict[str, Any]] | None = None,
    document: dict[str, Any] | None = None,
    voice: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An update as Telegram sends it, with the entities Telegram would add. `photo`,
    `document` and `voice` are the message's file fields as Telegram writes them (a caption
    then comes with them instead of the placeholder photo)."""
    message: dict[str, Any] = {
        "message_id": message_id,
        "date": date,
        "chat": chat or private_chat(),
        "from": sender or user(),
    }
    if text is not None:
        message["text"] = text
        if entities := entities_for(text):
            message["entities"] = entities
    for key, value in (("photo", photo), ("document", document), ("voice", voice)):
        if value is not None:
            message[key] = value
    if caption is not None:
        message["caption"] = caption
        if photo is None and document is None and voice is None:
            message["photo"] = [{"file_id": "p1", "file_unique_id": "u1", "width": 90, "height": 90}]
        if entities := entities_for(caption):
            message["caption_entities"] = entities
    if thread_id is not None:
        message["message_thread_id"] = thread_id
        message["is_topic_message"] = True
    if reply_to is not None:
        message["reply_to_message"] = reply_to
    if edited:
        message["edit_date"] = date + 5
    update: dict[str, Any] = {"edited_message" if edited else "message": message}
    if update_id is not None:
        update["update_id"] = update_id
    return update
