"""The Telegram adapter: python-telegram-bot's Application driven without its blocking helpers.

Inbound: long polling (default) or a webhook guarded by a secret token; every update goes through
`normalize_update` to the gateway's handler. Outbound: the contract's values rendered by
`render` and sent with flood control per chat.

Delivery rules (SPEC 4.6) live in `flood.py`: 429 pauses the chat (intermediate stream edits are
skipped, everything else waits), sends that may have been delivered are not repeated, edits are
repeated (a repeat that finds it done gets "not modified", a no-op), refused markup goes out as
plain text. A send whose outcome is unknown is missing from the returned `Sent`; if a later edit of a
stream needs that part, it posts it then: at worst one extra partial message, never a lost
final answer.

After a crash between Telegram applying a ledger send and the gateway recording it, the Bot API
offers no way to check (no idempotency key, no chat history for bots): the send is made once
more, its text starting with RECOVERED_MARK, so a repeat is at most one and reads as one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from telegram import (
    BotCommand,
    InputFile,
    LinkPreviewOptions,
    ReplyParameters,
    Update,
)
from telegram.error import (
    BadRequest,
    InvalidToken,
    NetworkError,
    TelegramError,
)
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from adapters.contract import (
    Answer,
    Attachment,
    AttachmentError,
    ChatRef,
    FileOut,
    InboundHandler,
    InboundMessage,
    Notice,
    Outbound,
    PlatformLimits,
    Progress,
    ReferenceSummary,
    Sent,
)
from adapters.startup import PlatformUnavailable, reason, refused, unreachable
from adapters.telegram.flood import ChatDelivery, Outcome
from adapters.telegram.normalize import merge_album, normalize_update
from adapters.telegram.render import (
    MAX_CAPTION,
    MAX_CHARS,
    Part,
    render_answer,
    render_notice,
    render_progress,
    render_summary,
)
from adapters.telegram.settings import TelegramSettings
from adapters.text import shorten, utf16_len

log = logging.getLogger(__name__)

_DRAFT_PREFIX = "draft:"
RECOVERED_MARK = "♻️ recovered after a restart (this may repeat a message sent just before it)"
_SHOWN_CAPACITY = 2048
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
_PHOTO_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp"})
_SUBCOMMANDS = "presets · default · cost · budget · digest · new · help"
# Loggers that may write the token: Bot API URLs contain it, PTB's InvalidToken message quotes it.
_URL_LOGGERS = (
    "httpx",
    "telegram.Bot",
    "telegram.ext.ExtBot",
    "telegram.ext",
    "telegram.ext.Updater",
    "telegram.ext.Application",
)


class TelegramAdapter:
    """The `Adapter` for Telegram (see adapters.contract)."""

    platform = "telegram"

    def __init__(self, settings: TelegramSettings, *, presets: Sequence[str] = ()) -> None:
        self._settings = settings
        self._intake = True  # False: start without polling or a webhook (see `without_intake`)
        self._presets = tuple(presets)
        self.limits = PlatformLimits(max_message_chars=MAX_CHARS, edit_interval_s=settings.edit_interval_s)
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._on_inbound: InboundHandler | None = None
        self._bot_id = 0
        self._bot_username = ""
        self._delivery = ChatDelivery()
        self._shown: OrderedDict[tuple[str, int], Part] = OrderedDict()
        self._draft_ids = itertools.count(1)
        self._drafts_ok = True
        self._redact = _RedactSecrets([settings.token, settings.webhook_secret or ""])
        # Albums being gathered: (chat, media_group_id) -> its items so far and the flush timer.
        self._albums: dict[tuple[str, str], tuple[list[InboundMessage], asyncio.Task[None]]] = {}

    @property
    def bot_username(self) -> str:
        return self._bot_username

    @property
    def bot_id(self) -> int:
        return self._bot_id

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, on_inbound: InboundHandler) -> None:
        if self._app is not None:
            raise RuntimeError("the Telegram adapter is already started")
        settings = self._settings
        for name in _URL_LOGGERS:
            logging.getLogger(name).addFilter(self._redact)
        timeout = settings.request_timeout_s
        builder = (
            ApplicationBuilder()
            .token(settings.token)
            .base_url(settings.base_url)
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .write_timeout(timeout)
            .get_updates_connect_timeout(timeout)
            .get_updates_read_timeout(timeout)
        )
        # Always set: PTB's default is api.telegram.org's, which a self-hosted server is not.
        builder = builder.base_file_url(settings.file_url)
        app = builder.build()
        app.add_handler(TypeHandler(Update, self._handle_update))
        self._on_inbound = on_inbound
        try:
            await app.initialize()  # getMe
            self._bot_id = app.bot.id
            self._bot_username = app.bot.username
            await self._register_commands(app)
            await app.start()
            assert app.updater is not None
            if not self._intake:
                pass  # send only: another replica receives the updates
            elif settings.mode == "webhook":
                await app.updater.start_webhook(
                    listen=settings.webhook_listen,
                    port=settings.webhook_port,
                    url_path=settings.webhook_path,
                    webhook_url=settings.webhook_url,
                    secret_token=settings.webhook_secret,
                    allowed_updates=[Update.MESSAGE],
                )
            else:
                await app.updater.start_polling(
                    timeout=int(settings.poll_timeout_s), allowed_updates=[Update.MESSAGE]
                )
        except InvalidToken:
            await self._close(app)
            # PTB's message quotes the token; never let it reach a log.
            raise refused("telegram", settings.base_url, "bot token",
                          "the variable [telegram] token_env names (a token from @BotFather)") from None
        except (NetworkError, OSError) as error:  # TimedOut is a NetworkError
            await self._close(app)
            if isinstance(error, OSError) and settings.mode == "webhook":
                raise PlatformUnavailable(
                    f"telegram: cannot listen for webhooks on {settings.webhook_listen}:{settings.webhook_port} "
                    f"({reason(error)}); check [telegram] webhook_listen and webhook_port"
                ) from None
            raise unreachable("telegram", settings.base_url, error,
                              "[telegram] base_url and this machine's network") from None
        except BaseException:
            await self._close(app)
            raise
        self._app = app
        log.info("telegram: running as @%s (%s)", self._bot_username, settings.mode if self._intake else "send only")

    @property
    def intake_mode(self) -> str:
        """"polling" or "webhook", as configured."""
        return self._settings.mode

    def without_intake(self) -> None:
        """Before `start`: send only, receive nothing (another gateway replica polls; Telegram
        hands each update to one getUpdates caller)."""
        self._intake = False

    async def stop(self) -> None:
        for _, timer in self._albums.values():
            timer.cancel()
        self._albums.clear()
        app, self._app = self._app, None
        if app is not None:
            await self._close(app)

    async def _close(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Stop what runs and shut down, step by step: a failed step does not skip the rest."""
        steps: list[Callable[[], Awaitable[object]]] = []
        if app.updater is not None and app.updater.running:
            steps.append(app.updater.stop)  # re-raises what ended the polling, if anything did
        if app.running:
            steps.append(app.stop)
        steps.append(app.shutdown)
        for step in steps:
            try:
                await step()
            except Exception as error:
                log.warning(
                    "telegram: while stopping: %s", self._redact.redact(f"{type(error).__name__}: {error}")
                )
        for name in _URL_LOGGERS:
            logging.getLogger(name).removeFilter(self._redact)

    async def _register_commands(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        description = f"Ask the mixture: /moa <question> · {_SUBCOMMANDS}"
        if self._presets:
            with_presets = f"{description} · presets: {', '.join(self._presets)}"
            description = with_presets if len(with_presets) <= 256 else description
        try:
            await app.bot.set_my_commands([BotCommand("moa", description[:256])])
        except TelegramError as error:  # a missing menu is no reason not to run
            log.warning("telegram: could not register the command menu: %s", error)

    async def _handle_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        try:
            message = normalize_update(update, bot_id=self._bot_id, bot_username=self._bot_username)
        except Exception:
            log.exception("telegram: could not read update %s", update.update_id)
            return
        if message is None or self._on_inbound is None:
            return
        album = update.message.media_group_id if update.message is not None else None
        if album:
            self._gather(album, message)
            return
        await self._forward(message)

    async def _forward(self, message: InboundMessage) -> None:
        if self._on_inbound is None:
            return
        try:
            await self._on_inbound(message)
        except Exception:
            log.exception("telegram: the inbound handler failed on message %s", message.event_id)

    def _gather(self, album: str, message: InboundMessage) -> None:
        key = (message.chat_id, album)
        parts, timer = self._albums.pop(key, ([], None))
        if timer is not None:
            timer.cancel()  # another item came: wait again from now
        parts.append(message)
        self._albums[key] = (parts, asyncio.create_task(self._flush_album(key)))

    async def _flush_album(self, key: tuple[str, str]) -> None:
        await asyncio.sleep(self._settings.album_wait_s)
        parts, _ = self._albums.pop(key)
        await self._forward(merge_album(parts))

    # -- files -----------------------------------------------------------------------------

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """getFile, then the download from the bot's own file URL (never another place)."""
        if self._app is None:
            raise AttachmentError(f"{attachment.name}: the Telegram adapter is not running")
        bot = self._app.bot
        try:
            file = await bot.get_file(attachment.ref)
            own = bot.base_file_url + "/"
            if not file.file_path or not file.file_path.startswith(own):
                # A path outside our file service (or a local path, which PTB would read from
                # disk): not ours to fetch.
                raise AttachmentError(f"{attachment.name}: Telegram named a file outside its file service")
            if file.file_size is not None and file.file_size > max_bytes:
                raise AttachmentError(f"{attachment.name}: {file.file_size:,} bytes, over the {max_bytes:,} byte limit")
            data = bytes(await file.download_as_bytearray())
        except TelegramError as error:
            raise AttachmentError(f"{attachment.name}: Telegram refused the download "
                                  f"({self._redact.redact(str(error))})") from None
        if len(data) > max_bytes:
            raise AttachmentError(f"{attachment.name}: {len(data):,} bytes, over the {max_bytes:,} byte limit")
        return data

    # -- outbound --------------------------------------------------------------------------

    async def send(self, chat: ChatRef, item: Outbound) -> Sent:
        if isinstance(item, FileOut):
            return await self._send_file(chat, item)
        if isinstance(item, Answer) and not item.final:
            if self._settings.stream == "off":
                return Sent(chat, ())
            if self._use_draft(chat):
                draft_id = next(self._draft_ids)
                if await self._draft(chat, draft_id, item):
                    return Sent(chat, (f"{_DRAFT_PREFIX}{draft_id}",))
        ids: list[str] = []
        for index, part in enumerate(self._render(item)):
            message_id = await self._send_part(chat, part, reply=index == 0)
            if message_id is not None:
                ids.append(str(message_id))
        return Sent(chat, tuple(ids))

    async def send_once(self, chat: ChatRef, item: Outbound, *, key: str, retry: bool) -> Sent:
        """A ledger send. The Bot API can neither make a send idempotent nor list a chat's
        messages, so a send that may already have been applied before a crash (`retry`) is sent
        once more, marked as recovered: at most one repeat, and the chat can tell it is one."""
        if retry and isinstance(item, Answer | Notice):
            item = replace(item, text=f"{RECOVERED_MARK}\n\n{item.text}")
        return await self.send(chat, item)

    async def edit(self, sent: Sent, item: Outbound) -> Sent:
        chat = sent.chat
        if isinstance(item, FileOut):  # a message cannot become a file: post it
            return await self.send(chat, item)
        streaming = isinstance(item, Answer) and not item.final
        ids = list(sent.message_ids)
        if ids and ids[0].startswith(_DRAFT_PREFIX):
            if isinstance(item, Answer) and streaming and self._use_draft(chat):
                if await self._draft(chat, int(ids[0].removeprefix(_DRAFT_PREFIX)), item):
                    return sent
            ids = []  # a draft vanishes by itself; what stays is a real message
        if streaming and self._settings.stream == "off":
            return Sent(chat, tuple(ids))
        droppable = streaming or isinstance(item, Progress)
        if droppable and self._delivery.pause_left(chat.chat_id) > 0:
            return Sent(chat, tuple(ids))
        parts = self._render(item)
        new_ids: list[str] = []
        for index, part in enumerate(parts):
            if index < len(ids):
                result = await self._edit_part(chat, int(ids[index]), part, droppable=droppable)
                if result is Outcome.SKIPPED:
                    return Sent(chat, tuple(new_ids + ids[index:]))
                if result is not None:
                    new_ids.append(str(result))
                continue
            if droppable and self._delivery.pause_left(chat.chat_id) > 0:
                return Sent(chat, tuple(new_ids))
            message_id = await self._send_part(chat, part, reply=index == 0)
            if message_id is not None:
                new_ids.append(str(message_id))
        for stale in ids[len(parts) :]:
            await self._delete(chat, int(stale))
        return Sent(chat, tuple(new_ids))

    def _render(self, item: Outbound) -> list[Part]:
        if isinstance(item, Answer):
            return render_answer(item)
        if isinstance(item, ReferenceSummary):
            return render_summary(item)
        if isinstance(item, Progress):
            return render_progress(item)
        if isinstance(item, Notice):
            return render_notice(item)
        raise TypeError(f"the Telegram adapter cannot render {type(item).__name__}")

    def _use_draft(self, chat: ChatRef) -> bool:
        # Drafts exist in private chats only; private chat ids are the (positive) user ids.
        return self._settings.stream == "draft" and self._drafts_ok and chat.chat_id.lstrip().isdigit()

    # -- single Bot API calls --------------------------------------------------------------

    async def _send_part(self, chat: ChatRef, part: Part, *, reply: bool) -> int | None:
        bot = self._bot()
        thread_id = _thread(chat)
        reply_parameters = (
            ReplyParameters(message_id=int(chat.reply_to_id), allow_sending_without_reply=True)
            if reply and chat.reply_to_id
            else None
        )

        def make(text: str, parse_mode: str | None) -> Callable[[int | str], Awaitable[int]]:
            async def op(chat_id: int | str) -> int:
                message = await bot.send_message(
                    chat_id=chat_id,
                    text=text,
                    parse_mode=parse_mode,
                    message_thread_id=thread_id,
                    reply_parameters=reply_parameters,
                    link_preview_options=_NO_PREVIEW,
                )
                return message.message_id

            return op

        result = await self._delivery.with_markup_fallback(
            chat.chat_id, part, make, droppable=False, idempotent=False, what="sendMessage"
        )
        if isinstance(result, Outcome):
            return None
        self._remember(chat.chat_id, result, part)
        return result

    async def _edit_part(
        self, chat: ChatRef, message_id: int, part: Part, *, droppable: bool
    ) -> int | Outcome | None:
        if self._shown.get((chat.chat_id, message_id)) == part:
            return message_id
        bot = self._bot()

        def make(text: str, parse_mode: str | None) -> Callable[[int | str], Awaitable[int]]:
            async def op(chat_id: int | str) -> int:
                await bot.edit_message_text(
                    text=text,
                    chat_id=chat_id,
                    message_id=message_id,
                    parse_mode=parse_mode,
                    link_preview_options=_NO_PREVIEW,
                )
                return message_id

            return op

        try:
            result = await self._delivery.with_markup_fallback(
                chat.chat_id, part, make, droppable=droppable, idempotent=True, what="editMessageText"
            )
        except BadRequest as error:
            reason = str(error).lower()
            if "not modified" in reason:
                self._remember(chat.chat_id, message_id, part)
                return message_id
            if "message to edit not found" in reason or "message can't be edited" in reason:
                log.warning("telegram: message %s is gone (%s); posting anew", message_id, error)
                return await self._send_part(chat, part, reply=False)
            raise
        if result is Outcome.SKIPPED:
            return result
        self._remember(chat.chat_id, message_id, part)
        return message_id

    async def _draft(self, chat: ChatRef, draft_id: int, answer: Answer) -> bool:
        """Show `answer`'s last part as a draft; False when drafts turn out to be unavailable."""
        bot = self._bot()
        part = render_answer(answer)[-1]
        thread_id = _thread(chat)

        def make(text: str, parse_mode: str | None) -> Callable[[int | str], Awaitable[bool]]:
            async def op(chat_id: int | str) -> bool:
                await bot.send_message_draft(
                    chat_id=int(chat_id),
                    draft_id=draft_id,
                    text=text,
                    parse_mode=parse_mode,
                    message_thread_id=thread_id,
                )
                return True

            return op

        try:
            await self._delivery.with_markup_fallback(
                chat.chat_id, part, make, droppable=True, idempotent=True, what="sendMessageDraft"
            )
        except TelegramError as error:
            log.warning("telegram: drafts unavailable (%s); streaming by edits instead", error)
            self._drafts_ok = False
            return False
        return True

    async def _send_file(self, chat: ChatRef, item: FileOut) -> Sent:
        bot = self._bot()
        caption = shorten(item.caption, MAX_CAPTION, measure=utf16_len) if item.caption.strip() else None
        thread_id = _thread(chat)
        reply_parameters = (
            ReplyParameters(message_id=int(chat.reply_to_id), allow_sending_without_reply=True)
            if chat.reply_to_id
            else None
        )

        async def photo(chat_id: int | str) -> int:
            message = await bot.send_photo(
                chat_id=chat_id,
                photo=InputFile(item.data, filename=item.filename),
                caption=caption,
                message_thread_id=thread_id,
                reply_parameters=reply_parameters,
            )
            return message.message_id

        async def document(chat_id: int | str) -> int:
            message = await bot.send_document(
                chat_id=chat_id,
                document=InputFile(item.data, filename=item.filename),
                caption=caption,
                message_thread_id=thread_id,
                reply_parameters=reply_parameters,
            )
            return message.message_id

        result: int | Outcome
        if item.mime.lower() in _PHOTO_TYPES:
            try:
                result = await self._delivery.call(
                    chat.chat_id, photo, droppable=False, idempotent=False, what="sendPhoto"
                )
            except BadRequest as error:  # e.g. dimensions Telegram will not take as a photo
                log.warning("telegram: photo refused (%s); sending it as a document", error)
                result = await self._delivery.call(
                    chat.chat_id, document, droppable=False, idempotent=False, what="sendDocument"
                )
        else:
            result = await self._delivery.call(
                chat.chat_id, document, droppable=False, idempotent=False, what="sendDocument"
            )
        return Sent(chat, () if isinstance(result, Outcome) else (str(result),))

    async def _delete(self, chat: ChatRef, message_id: int) -> None:
        bot = self._bot()
        try:
            await bot.delete_message(chat_id=self._delivery.resolve(chat.chat_id), message_id=message_id)
        except TelegramError as error:
            log.info("telegram: could not delete message %s: %s", message_id, error)

    def _remember(self, chat_key: str, message_id: int, part: Part) -> None:
        self._shown[(chat_key, message_id)] = part
        self._shown.move_to_end((chat_key, message_id))
        while len(self._shown) > _SHOWN_CAPACITY:
            self._shown.popitem(last=False)

    def _bot(self) -> Any:
        if self._app is None:
            raise RuntimeError("the Telegram adapter is not started")
        return self._app.bot


def _thread(chat: ChatRef) -> int | None:
    return int(chat.thread_id) if chat.thread_id else None


class _RedactSecrets(logging.Filter):
    """Replaces the token (and webhook secret) in log records, tracebacks included."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self._secrets):
            record.msg, record.args = self.redact(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True
