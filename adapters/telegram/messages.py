"""The messages of outbound values in Telegram chats: what is sent, edited, drafted, deleted.

Owns how a value is shown: rendered into parts (`render.py`), sent as messages (the first a
reply), streamed by edits or as a draft (`sendMessageDraft`, private chats only, given up for
good once Telegram refuses it), shrunk or grown to the parts the new value needs, files sent as
photos or documents; and which part each message shows, so identical edits are skipped. Each
single Bot API call goes through `flood.py` (flood control, timeouts, markup fallback). A send
whose outcome is unknown is missing from the returned `Sent`; if a later edit of a stream needs
that part, it posts it then: at worst one extra partial message, never a lost final answer.

It holds no connection of its own: it is handed a function that returns the started bot.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from telegram import InputFile, LinkPreviewOptions, ReplyParameters
from telegram.error import BadRequest, TelegramError

from adapters.bounded import Bounded
from adapters.contract import (
    Answer,
    ChatRef,
    FileOut,
    Notice,
    Outbound,
    Progress,
    ReferenceSummary,
    Sent,
)
from adapters.telegram.flood import ChatDelivery, Outcome
from adapters.telegram.render import (
    MAX_CAPTION,
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
_SHOWN_CAPACITY = 2048
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
_PHOTO_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp"})


class Messages:
    """Sends, edits and deletes the messages of outbound values through a started bot."""

    def __init__(self, settings: TelegramSettings, *, bot: Callable[[], Any]) -> None:
        self._settings = settings
        self._bot = bot  # raises while the adapter is not started
        self._delivery = ChatDelivery()
        self._shown = Bounded(_SHOWN_CAPACITY)  # (chat, message id) -> the part it shows
        self._draft_ids = itertools.count(1)
        self._drafts_ok = True

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

        def sending(as_photo: bool) -> Callable[[int | str], Awaitable[int]]:
            async def send(chat_id: int | str) -> int:
                file = InputFile(item.data, filename=item.filename)
                where = {"chat_id": chat_id, "caption": caption, "message_thread_id": thread_id,
                         "reply_parameters": reply_parameters}
                message = await (bot.send_photo(photo=file, **where) if as_photo
                                 else bot.send_document(document=file, **where))
                return message.message_id
            return send

        photo, document = sending(True), sending(False)

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
        self._shown.remember((chat_key, message_id), part)


def _thread(chat: ChatRef) -> int | None:
    return int(chat.thread_id) if chat.thread_id else None
