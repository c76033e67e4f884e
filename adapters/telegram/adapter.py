"""The Telegram adapter: python-telegram-bot's Application driven without its blocking helpers.

Inbound: long polling (default) or a webhook guarded by a secret token; every update goes through
`normalize_update` to the gateway's handler (an album's items gathered into one message first).
Outbound: the contract's values are shown by `messages.py` (rendered by `render`, sent, edited
or drafted), each Bot API call with flood control per chat. This module owns the connection,
the reading of updates, attachment downloads, and keeping the token out of logs.

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
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from telegram import BotCommand, Update
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from adapters.contract import (
    Answer,
    Attachment,
    AttachmentError,
    ChatRef,
    InboundHandler,
    InboundMessage,
    Notice,
    Outbound,
    PlatformLimits,
    Sent,
)
from adapters.startup import PlatformUnavailable, reason, refused, unreachable
from adapters.telegram.messages import Messages
from adapters.telegram.normalize import merge_album, normalize_update
from adapters.telegram.render import MAX_CHARS
from adapters.telegram.settings import TelegramSettings

log = logging.getLogger(__name__)

RECOVERED_MARK = "♻️ recovered after a restart (this may repeat a message sent just before it)"
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
        self._messages = Messages(settings, bot=self._bot)
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
        return await self._messages.send(chat, item)

    async def send_once(self, chat: ChatRef, item: Outbound, *, key: str, retry: bool) -> Sent:
        """A ledger send. The Bot API can neither make a send idempotent nor list a chat's
        messages, so a send that may already have been applied before a crash (`retry`) is sent
        once more, marked as recovered: at most one repeat, and the chat can tell it is one."""
        if retry and isinstance(item, Answer | Notice):
            item = replace(item, text=f"{RECOVERED_MARK}\n\n{item.text}")
        return await self.send(chat, item)

    async def edit(self, sent: Sent, item: Outbound) -> Sent:
        return await self._messages.edit(sent, item)

    def _bot(self) -> Any:
        if self._app is None:
            raise RuntimeError("the Telegram adapter is not started")
        return self._app.bot


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
