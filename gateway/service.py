"""The gateway service: from an inbound message to a delivered answer.

It de-duplicates events, applies triggers and access rules, parses commands, keeps one turn at a
time per session (later messages queue in order: gateway.lanes), runs MoA turns through the
engine while their chat shows progress, summary and streamed answer (gateway.turn_display),
books every call as it ends (gateway.booking), and hands each completed turn to the delivery
ledger (gateway.delivery), which brings its answer to the chat exactly once, even across a
crash. Subcommands other than questions are answered by gateway.chat_commands.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import timedelta

from adapters.contract import Adapter, ChatRef, InboundMessage
from gateway.access import is_admin, is_allowed, is_trigger
from gateway.attachments import AttachmentIntake, Prepared
from gateway.booking import CallBook, Reservations, run_booked_turn
from gateway.chat_commands import answer_command, unknown_preset
from gateway.commands import (
    LONE_SURROGATE,
    PRESET_NAME,
    Ask,
    Command,
    Help,
    parse_moa,
)
from gateway.config import AccessRules, Config
from gateway.delivery import Ledger
from gateway.history import trim_history
from gateway.lanes import Lane, QueuedCommand, Waiting, chat_ref, session_key
from gateway.storage import Delivery, Storage, TurnRow
from gateway.turn_display import TurnDisplay
from moa_core.clock import Clock
from moa_core.engine import MoaEngine

log = logging.getLogger(__name__)

# Handlers for the cost commands, provided by gateway.costs wiring (see app.py); each returns
# the text to show. They receive the gateway, the message and the parsed command.
CommandHook = Callable[["Gateway", InboundMessage, Command], Awaitable[str]]
# The budget check before a turn: None admits it (and holds its estimate in
# `gateway.reservations` until it ends), else the refusal text.
BudgetHook = Callable[..., Awaitable[str | None]]


class Gateway:
    def __init__(
        self,
        config: Config,
        store: Storage,
        engine: MoaEngine,
        adapters: Mapping[str, Adapter],
        clock: Clock,
        *,
        cost_commands: CommandHook | None = None,
        budget_check: BudgetHook | None = None,
        attachments: AttachmentIntake | None = None,
    ):
        self.config = config
        self.store = store
        self.engine = engine
        self.adapters = dict(adapters)
        self.clock = clock
        self._cost_commands = cost_commands
        self._budget_check = budget_check
        self.attachments = attachments or AttachmentIntake(config.attachments)
        self._lanes: dict[str, Lane] = {}
        self._turn_slots = asyncio.Semaphore(config.gateway.max_concurrent_turns)
        self._accepting = True
        self._running: set[asyncio.Task] = set()
        self._backlog_noticed: set[tuple[str, str]] = set()
        self._retry_task: asyncio.Task | None = None
        self.ledger = Ledger(store, self.adapters)
        # Every model call's row is written as the call ends, not when its turn ends.
        self.reservations = Reservations()
        self.book = CallBook(store, on_booked=self.reservations.booked)

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from a previous run: turns a crash cut are marked, and questions that were
        still queued are lined up again, before any new message can start a turn; once the
        adapters can send, the ledger delivers what it still owes and the lined-up questions run."""
        requeued = await self._recover_unfinished_turns()
        for adapter in self.adapters.values():
            await adapter.start(self.handle_inbound)
        await self.deliver_pending()
        self._start_lanes(requeued)
        self._retry_task = asyncio.create_task(self.ledger.retry_forever(self._recover_and_start))

    async def recover(self) -> None:
        """Report turns cut by a crash, run the questions still queued, deliver what is owed."""
        requeued = await self._recover_unfinished_turns()
        await self.deliver_pending()
        self._start_lanes(requeued)

    async def _recover_unfinished_turns(self) -> list[str]:
        """A turn that was running when the process died is reported as interrupted (the
        calls it made are booked). A question still queued never started and has cost nothing:
        it is queued again, in its order, unless it is older than `backlog_max_age_s` (or its
        preset or platform is gone), when it is reported too. Returns the lanes to start.

        The turns are those whose owner is gone: at start, those of the run before; with replicas
        on PostgreSQL, also those of a replica that died (its leases expired), at any time."""
        max_age = timedelta(seconds=self.config.gateway.backlog_max_age_s)
        now = self.clock.now()
        lanes: list[str] = []
        for turn in await self.store.claim_cut_turns():
            runnable = (turn.status == "queued" and now - turn.started_at <= max_age
                        and turn.preset in self.config.engine.presets and turn.platform in self.adapters)
            if runnable:
                message = _recovered_message(turn)
                key = session_key(message)
                lane = self._lanes.setdefault(key, Lane())
                lane.waiting.append(Waiting(message, Ask(prompt=turn.prompt, preset=turn.preset), turn.id,
                                             turn.preset, turn.session_id, queued=True))
                if key not in lanes:
                    lanes.append(key)
                continue
            chat = ChatRef(turn.platform, turn.chat_id, turn.thread_id or None, turn.message_id or None)
            await self.ledger.record_interrupted(turn.id, chat, turn.prompt, "restart", deliver=False)
        return lanes

    def _start_lanes(self, keys: list[str]) -> None:
        for key in keys:
            lane = self._lanes.get(key)
            if lane is not None and lane.waiting and (lane.worker is None or lane.worker.done()):
                lane.worker = asyncio.create_task(self._drain(key, lane))

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop intake, let running turns finish within the grace period, checkpoint the rest.

        Adapters are stopped last: finishing turns (and the notices of checkpointed ones) still
        need them to send."""
        self._accepting = False
        grace = self.config.gateway.shutdown_grace_s if grace_s is None else grace_s
        if self._retry_task:
            self._retry_task.cancel()
        workers = [lane.worker for lane in self._lanes.values() if lane.worker]
        if workers:
            done, pending = await asyncio.wait(workers, timeout=grace)
            for task in pending:
                task.cancel()  # _run_turn marks the turn interrupted and tells the chat
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.book.settle()
        for adapter in self.adapters.values():
            try:
                await adapter.stop()
            except Exception:
                log.warning("stopping %s failed", adapter.platform, exc_info=True)

    async def idle(self) -> None:
        """Wait until no turn is queued or running (tests, the terminal chat)."""
        while True:
            workers = [lane.worker for lane in self._lanes.values() if lane.worker and not lane.worker.done()]
            if not workers:
                return
            await asyncio.wait(workers)

    # ----- intake ----------------------------------------------------------------------------

    def access(self, platform: str) -> AccessRules:
        section = self.config.platforms.get(platform)
        return section.access if section else AccessRules()

    async def handle_inbound(self, message: InboundMessage) -> None:
        """Entry point for adapters. Never raises: a bad message must not kill the process."""
        try:
            await self._handle(message)
        except Exception:
            log.exception("could not handle a %s message in chat %s", message.platform, message.chat_id)
            try:
                await self.notify(chat_ref(message), "Sorry, something went wrong handling that message.", "error")
            except Exception:
                log.warning("could not report the failure", exc_info=True)

    async def _handle(self, message: InboundMessage) -> None:
        if not self._accepting:
            return
        command = parse_moa(message.text)
        if not is_trigger(message, command is not None):
            return
        if LONE_SURROGATE.search(message.user_name or ""):  # a name cannot be sent again: repair it
            message = replace(message, user_name=LONE_SURROGATE.sub("\ufffd", message.user_name))
        rules = self.access(message.platform)
        ask = self._plain_question(message, command, rules)
        if ask is not None:  # checked for duplicates with the turn's own write: one trip to the store
            await self._enqueue(message, ask, unseen=True)
            return
        if not await self.store.mark_seen(message.platform, message.event_id):
            log.info("duplicate %s event %s ignored", message.platform, message.event_id)
            return
        if not is_allowed(rules, message):
            if await self.store.refusal_notice_due(
                message.platform, message.chat_id, self.config.gateway.refusal_notice_interval_s
            ):
                await self.notify(chat_ref(message), "This chat is not allowed to use this bot. "
                                  "Ask its operator to add it to allowed_chats.", "warning")
            return
        age = self.clock.now() - message.sent_at
        if age > timedelta(seconds=self.config.gateway.backlog_max_age_s):
            key = (message.platform, message.chat_id)
            if key not in self._backlog_noticed:
                self._backlog_noticed.add(key)
                minutes = int(age.total_seconds() // 60)
                await self.notify(chat_ref(message), f"I was offline; a message from {minutes} min ago was "
                                  "not answered. Send it again if you still need an answer.", "warning")
            return
        bare = _BARE_MOA.fullmatch(message.text.strip())
        if message.attachments and isinstance(command, Help) and bare:
            # "/moa" (or "/moa +preset") as the caption of a file: the file is the question.
            command = Ask(prompt="", preset=bare.group("preset"))
        accepted = getattr(self.adapters.get(message.platform), "accepted", None)
        if accepted is not None:  # only now may the adapter post for it (Slack's root message)
            message = await accepted(message)
        if command is None:
            text = message.text.strip()
            if not text and not message.attachments:
                if message.is_dm:  # a DM always expects an answer; a group's empty mention does not
                    await self.notify(chat_ref(message), _EMPTY_TEXT)
                return
            command = Ask(prompt=text)
        await self._dispatch(message, command, rules)

    def _plain_question(self, message: InboundMessage, command: Command | None, rules: AccessRules) -> Ask | None:
        """The question, when the message goes straight to a turn if it is new (checked without
        the store): a valid question without files, allowed, not too old, from an adapter that
        does not post for it first (`accepted` may move it to another thread)."""
        if command is None:
            command = Ask(prompt=message.text.strip())
        if not (
            isinstance(command, Ask) and command.prompt and not message.attachments
            and is_allowed(rules, message)
            and self.clock.now() - message.sent_at <= timedelta(seconds=self.config.gateway.backlog_max_age_s)
            and getattr(self.adapters.get(message.platform), "accepted", None) is None
        ):
            return None
        return command if self._refusal(command) is None else None

    def _refusal(self, ask: Ask) -> str | None:
        """Why this question cannot be asked, or None."""
        presets = self.config.engine.presets
        if ask.preset is not None and ask.preset not in presets:
            return unknown_preset(ask.preset, presets)
        if len(ask.prompt) > 100_000:
            return "That prompt is too long (over 100,000 characters)."
        if LONE_SURROGATE.search(ask.prompt):
            return ("That message contains a broken character (a lone UTF-16 surrogate, often half of a "
                    "cut emoji), so it cannot be stored or sent to the models. Please send it again without it.")
        return None

    async def _dispatch(self, message: InboundMessage, command: Command, rules: AccessRules, *,
                        in_lane: bool = False) -> None:
        if not isinstance(command, Ask) and not in_lane:
            lane = self._lanes.get(session_key(message))
            if lane is not None and (lane.waiting or (lane.worker is not None and not lane.worker.done())):
                # Behind a turn of this session: answered in order. With nothing running the
                # command is answered at once, as before.
                lane.waiting.append(QueuedCommand(message, command, rules))
                return
        if isinstance(command, Ask):
            refusal = self._refusal(command)
            if refusal is not None:
                await self.notify(chat_ref(message), refusal, "error")
                return
            await self._enqueue(message, command)
        else:
            await answer_command(self, message, command, is_admin(rules, message), self._cost_commands)

    async def channel_default(self, platform: str, chat_id: str) -> str:
        """`/moa default P` (stored) > [channels."platform:chat"] > gateway.default_preset."""
        return self._default_preset(platform, chat_id, await self.store.channel_preset(platform, chat_id))

    def _default_preset(self, platform: str, chat_id: str, stored: str | None) -> str:
        if stored and stored in self.config.engine.presets:
            return stored
        configured = self.config.channels.get(f"{platform}:{chat_id}")
        if configured and configured.preset:
            return configured.preset
        return self.config.gateway.default_preset

    async def _enqueue(self, message: InboundMessage, ask: Ask, *, unseen: bool = False) -> None:
        """Store the question's turn, then queue it in its session's lane. `unseen`: a plain
        question whose event is not marked seen yet (`take_question` does it with the turn)."""
        # Stored before it waits: a crash or shutdown while it queues cannot lose the question.
        key = session_key(message)
        lane = self._lanes.setdefault(key, Lane())
        # Decided before the write and counted in `storing`, so a second message arriving during
        # the write queues behind this one (its prompt must not enter this turn's history).
        queued = not lane.idle() or self._turn_slots.locked()
        lane.storing += 1
        try:
            if unseen:
                async with lane.intake:
                    waiting = await self._take(message, ask, queued)
            else:
                waiting = await self._store_question(message, ask, queued, lane)
            if waiting is not None:
                lane.waiting.append(waiting)
        finally:
            lane.storing -= 1
        if waiting is None:
            if lane.idle() and self._lanes.get(key) is lane:
                del self._lanes[key]
            return
        if lane.worker is None or lane.worker.done():
            lane.worker = asyncio.create_task(self._drain(key, lane))

    async def _take(self, message: InboundMessage, ask: Ask, queued: bool) -> Waiting | None:
        taken = await self.store.take_question(
            platform=message.platform, event_id=message.event_id, chat_id=message.chat_id,
            thread_id=message.thread_id, user_id=message.user_id, user_name=message.user_name,
            message_id=message.message_id, prompt=ask.prompt, queued=queued,
            preset_of=lambda stored: ask.preset or self._default_preset(message.platform, message.chat_id, stored))
        if taken is None:
            log.info("duplicate %s event %s ignored", message.platform, message.event_id)
            return None
        return Waiting(message, ask, taken.turn_id, taken.preset, taken.session_id, taken.queued,
                        history=taken.history)

    async def _store_question(self, message: InboundMessage, ask: Ask, queued: bool, lane: Lane) -> Waiting | None:
        """A question already marked seen (files to fetch, or a Slack thread): its session and
        preset looked up, its files resolved, its turn stored."""
        session_id, preset_name = await asyncio.gather(  # together: one trip to the store, not two
            self.store.active_session(message.platform, message.chat_id, message.thread_id),
            self._preset_of(message, ask))
        # Several replicas: a turn of this session running on another one queues this one.
        queued = queued or await self.store.busy_elsewhere(session_id)
        async with lane.intake:
            prepared = await self._prepare(message, ask)
            if prepared.empty and prepared.calls:
                await self._book_unasked(message, preset_name, session_id, prepared)
            if prepared.empty:
                return None
            ask = replace(ask, prompt=prepared.prompt)
            # A turn that can run at once gets its history in the same trip to the store.
            turn_id, history = await self.store.start_turn_with_history(
                session_id=session_id, platform=message.platform, chat_id=message.chat_id,
                thread_id=message.thread_id, user_id=message.user_id, user_name=message.user_name,
                event_id=message.event_id, message_id=message.message_id, preset=preset_name,
                prompt=ask.prompt, queued=queued, images=prepared.images,
            )
            await self.store.record_calls(turn_id, prepared.calls)
            return Waiting(message, ask, turn_id, preset_name, session_id, queued,
                            prepared.images, prepared.heard, history)

    async def _preset_of(self, message: InboundMessage, ask: Ask) -> str:
        return ask.preset or await self.channel_default(message.platform, message.chat_id)

    async def _prepare(self, message: InboundMessage, ask: Ask) -> Prepared:
        """The question with its attachments resolved (what was not used is told at once);
        empty when nothing is left to ask."""
        if not message.attachments:
            return Prepared(ask.prompt)
        if self._budget_check is not None and any(a.kind == "audio" for a in message.attachments):
            # Transcribing costs money: a chat or user over budget is refused before it.
            refusal = await self._budget_check(self, message)
            if refusal:
                await self.notify(chat_ref(message), refusal, "warning")
                return Prepared("")
        prepared = await self.attachments.prepare(self.adapters.get(message.platform), message.attachments,
                                                  ask.prompt)
        if prepared.notes:
            lines = "\n".join(f"• {note}" for note in prepared.notes)
            await self.notify(chat_ref(message), f"Not used:\n{lines}", "warning")
        return prepared

    async def _book_unasked(self, message: InboundMessage, preset: str, session_id: int, prepared: Prepared) -> None:
        """Audio was transcribed (or tried) but left nothing to ask: no turn runs, yet its spend is
        booked on a failed turn (stored as queued first, so no empty message joins the history)."""
        turn_id = await self.store.start_turn(
            session_id=session_id, platform=message.platform, chat_id=message.chat_id, thread_id=message.thread_id,
            user_id=message.user_id, user_name=message.user_name, event_id=message.event_id,
            message_id=message.message_id, preset=preset, prompt="", queued=True,
        )
        await self.store.record_calls(turn_id, prepared.calls)
        await self.store.mark_turn(turn_id, "failed", "nothing to ask: " + "; ".join(prepared.notes))

    async def _drain(self, key: str, lane: Lane) -> None:
        try:
            while lane.waiting:
                if isinstance(lane.waiting[0], QueuedCommand):
                    await self._run_queued_command(lane.waiting.popleft())  # type: ignore[arg-type]
                    continue
                async with self._turn_slots:
                    waiting = lane.waiting.popleft()
                    assert isinstance(waiting, Waiting)
                    try:
                        await self._run_turn(waiting)
                    except asyncio.CancelledError:
                        raise
                    except Exception as error:  # the rest of the queue must still run
                        log.exception("turn %s could not run", waiting.turn_id)
                        await self._fail_turn(waiting.turn_id, chat_ref(waiting.message), error)
        except asyncio.CancelledError:
            # Shutdown: questions still waiting never started; tell their chat, as for a cut turn.
            while lane.waiting:
                waiting = lane.waiting.popleft()
                if isinstance(waiting, Waiting):
                    await self._interrupt_at_shutdown(waiting.turn_id, chat_ref(waiting.message), waiting.ask.prompt)
            raise
        finally:
            if not lane.waiting and not lane.storing and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _run_queued_command(self, queued: QueuedCommand) -> None:
        try:
            await self._dispatch(queued.message, queued.command, queued.rules, in_lane=True)
        except Exception:  # as in handle_inbound: the rest of the lane must still run
            log.exception("a queued command in chat %s failed", queued.message.chat_id)
            await self.notify(chat_ref(queued.message), "Sorry, something went wrong handling that message.", "error")

    # ----- a turn ----------------------------------------------------------------------------

    async def _run_turn(self, waiting: Waiting) -> None:
        try:
            await self._admit_and_run(waiting)
        finally:
            self.reservations.release(waiting.turn_id)  # its calls are all booked by now

    async def _admit_and_run(self, waiting: Waiting) -> None:
        message, ask, turn_id = waiting.message, waiting.ask, waiting.turn_id
        preset_name, session_id = waiting.preset, waiting.session_id
        chat = chat_ref(message)
        adapter = self.adapters[message.platform]
        if self._budget_check is not None:
            refusal = await self._budget_check(self, message, turn_id=turn_id, preset=preset_name, prompt=ask.prompt)
            if refusal:
                await self.store.mark_turn(turn_id, "refused", "over budget")
                await self.notify(chat, refusal, "warning")
                return
        try:  # several replicas: a turn of this session on another one runs first
            await self.store.wait_turns_ahead(session_id, turn_id)
        except asyncio.CancelledError:
            await self._interrupt_at_shutdown(turn_id, chat, ask.prompt)
            raise
        if waiting.queued:
            await self.store.begin_turn(turn_id)
        preset = self.config.engine.presets[preset_name]
        channel = self.config.channels.get(f"{message.platform}:{message.chat_id}")
        stream = self.config.gateway.stream
        display = TurnDisplay(
            adapter, chat, preset_name=preset_name, aggregator_label=preset.aggregator.label,
            summary_mode=(channel.summary if channel and channel.summary else None) or preset.summary,
            show_progress=bool(self.config.gateway.progress and preset.enabled and preset.references),
            stream_tool_use=stream, stream_text=stream and preset.stream, heard=waiting.heard,
            settled_so_far=lambda: self.book.settled_so_far(turn_id))
        try:
            history = waiting.history if waiting.history is not None else await self.store.history(session_id)
            if waiting.images or self.attachments.settings.keep_images_in_history:
                history = self.attachments.with_images(history, waiting.images)
            conversation = trim_history(history, self.config.gateway.context_chars)
            result = await run_booked_turn(self.engine, self.book, turn_id, preset_name, conversation,
                                           session=session_key(message), on_event=display.on_event)
        except asyncio.CancelledError:
            await display.cut(shutdown=True)
            await self._interrupt_at_shutdown(turn_id, chat, ask.prompt)
            raise
        except Exception as error:
            log.exception("turn %s failed", turn_id)
            await display.cut(shutdown=False)
            await self._fail_turn(turn_id, chat, error)
            return
        sent = await display.finish(incomplete=bool(result.error))
        await self.ledger.record_result(turn_id, chat, result, sent, footer=self.config.gateway.footer)

    # ----- delivery --------------------------------------------------------------------------

    async def notify(self, chat: ChatRef, text: str, level: str = "info") -> None:
        await self.ledger.notify(chat, text, level)

    async def deliver_pending(self) -> None:
        await self.ledger.deliver_pending()

    async def deliver(self, delivery: Delivery) -> bool:
        return await self.ledger.deliver(delivery)

    async def _fail_turn(self, turn_id: int, chat: ChatRef, error: Exception) -> None:
        await self.ledger.record_failure(turn_id, chat, error)

    async def _interrupt_at_shutdown(self, turn_id: int, chat: ChatRef, prompt: str) -> None:
        await self.ledger.record_interrupted(turn_id, chat, prompt, "shutdown")

    async def _recover_and_start(self) -> None:
        self._start_lanes(await self._recover_unfinished_turns())


_BARE_MOA = re.compile(rf"/moa(@\w+)?(\s+\+(?P<preset>{PRESET_NAME}))?", re.IGNORECASE)
_EMPTY_TEXT = "Your message is empty. Send me a question, or /moa help to see what I can do."


def _recovered_message(turn: TurnRow) -> InboundMessage:
    """The inbound message of a stored question, as far as a turn needs it to run again."""
    return InboundMessage(
        platform=turn.platform, chat_id=turn.chat_id, thread_id=turn.thread_id, user_id=turn.user_id,
        user_name=turn.user_name, message_id=turn.message_id, reply_to_id=None, text=turn.prompt,
        sent_at=turn.started_at, is_dm=False, mentions_bot=False, replies_to_bot=False, event_id=turn.event_id,
    )
