"""Gateway benchmark: storage throughput and the time the gateway adds to a turn.

Run:  python bench/bench_gateway.py [--json] [--rounds N]
      (--json: the figures as one JSON object, last line; --rounds: measured rounds of 200
      sessions after a warm-up round, default 3, each figure the median over the rounds)
1. Stored turns per second (each figure the median of 3 passes): the store calls the gateway
   makes for a plain question, in its order (gateway/service.py, booking.py, delivery.py),
   through the single writer thread, on a real SQLite file: `take_question` (seen, session,
   preset, turn, history in one writer job), 5 model calls booked through a `CallBook` as each
   ends (rows of calls that end together share a write), `complete_turn` (answer, messages,
   ledger row stored as 'sending'), `mark_delivery` (sent). Sessions of 10 turns (each of 50
   chats starts a new one every 10 of its turns), so a history read returns 1-19 messages. Until
   session 7 this measured another sequence (active_session + start_turn + record_calls +
   complete_turn + mark_delivery 'sent'), which the gateway no longer makes; it is still
   measured 50 at a time (`..._old_shape` figures), for comparison with earlier figures, which
   are not comparable with the new ones. Each also prints the writer thread's own CPU per turn
   (`writer_cpu_us_per_turn_*`) and so the most turns per second its one thread could store
   (`writer_bound_turns_per_s_*`); then the writer's CPU for a turn in a session of 400+
   messages (`writer_cpu_us_per_turn_long_session`).
2. 200 sessions active at once: each sends `/moa ...` through the real Gateway (RecordingAdapter
   platform, lean fake provider in another process, 4 references). The gateway's added time of a
   turn = time from inbound to the final answer delivered minus the engine's own run_turn time
   (run_turn less the time it awaited the gateway's event handlers: booking, progress line,
   summary), also split into before run_turn starts, after it ends, and in those handlers. Every turn shares the one event
   loop: the engine's CPU for the other 199 turns lands in both parts as well.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.contract import Answer, ChatRef  # noqa: E402
from bench.bench_turns import start_fake  # noqa: E402
from bench.report import Figures, wants_json  # noqa: E402
from gateway.booking import CallBook  # noqa: E402
from gateway.config import AccessRules, PlatformSection, parse_config  # noqa: E402
from gateway.heap import settle_heap  # noqa: E402
from gateway.service import Gateway  # noqa: E402
from gateway.storage import Store  # noqa: E402
from moa_core.clock import SystemClock  # noqa: E402
from moa_core.engine import MoaEngine  # noqa: E402
from moa_core.providers.client import ProviderClient  # noqa: E402
from moa_core.providers.http import make_http_client  # noqa: E402
from moa_core.values import CallRecord, Cost, Message, Usage  # noqa: E402
from tests.fakes.recording_adapter import RecordingAdapter  # noqa: E402

CALLS = [CallRecord("reference" if i < 4 else "aggregator", 1, i % 4, "p", f"m{i}", "ok", 300,
                    Usage(100, 0, 0, 50), Cost(0.001, "price_table")) for i in range(5)]


class TimedAdapter(RecordingAdapter):
    """Notes when each chat's final answer is delivered."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.answered: dict[str, float] = {}

    def _note(self, chat: ChatRef, item) -> None:
        if isinstance(item, Answer) and item.final:
            self.answered[chat.chat_id] = time.perf_counter()

    async def send(self, chat, item):
        sent = await super().send(chat, item)
        self._note(chat, item)
        return sent

    async def edit(self, sent, item):
        result = await super().edit(sent, item)
        self._note(sent.chat, item)
        return result


async def question_turn(store: Store, book: CallBook, n: int) -> None:
    """One plain question's store calls, as the gateway makes them (see the module docstring)."""
    chat = f"c{n % 50}-{n // 500}"  # 50 chats, each starting a new session every 10 of its turns
    taken = await store.take_question(platform="bench", event_id=f"e{n}", chat_id=chat, thread_id=None,
                                      user_id="u", user_name="u", message_id=f"m{n}", prompt="question",
                                      queued=False, preset_of=lambda stored: stored or "p")
    assert taken is not None
    for call in CALLS:  # each call ends on its own (the engine hands each over as it ends)
        book.book(taken.turn_id, call)
        await asyncio.sleep(0)
    # What run_booked_turn awaits: on a store that writes in order (SQLite) the bookings handed
    # over, on one that may commit out of order (PostgreSQL) the bookings written.
    await (book.handed_over(taken.turn_id) if book.writes_in_order else book.settle(taken.turn_id))
    delivery = await store.complete_turn(
        taken.turn_id, status="done", answer="answer", cost_usd=0.005, messages=[Message("assistant", "answer")],
        delivery=(ChatRef("bench", chat), "answer", {"text": "answer", "footer": None, "message_ids": []}),
        sending=True)
    assert delivery is not None
    await store.mark_delivery(delivery, "sent", ["1"])


async def stored_turn(store: Store, n: int) -> None:
    """The sequence this bench measured until session 7: not the gateway's any more, kept for
    comparison with earlier figures."""
    session = await store.active_session("bench", f"c{n % 50}", None)
    turn = await store.start_turn(session_id=session, platform="bench", chat_id=f"c{n % 50}", thread_id=None,
                                  user_id="u", user_name="u", event_id=f"e{n}", message_id=f"m{n}",
                                  preset="p", prompt="question")
    await store.record_calls(turn, CALLS)
    delivery = await store.complete_turn(turn, status="done", answer="answer", cost_usd=0.005,
                                         messages=[Message("assistant", "answer")],
                                         delivery=(ChatRef("bench", f"c{n % 50}"), "answer", {"text": "answer"}))
    await store.mark_delivery(delivery, "sent", ["1"])


async def bench_storage(directory: Path, figures: Figures, passes: int = 3) -> None:
    store = await Store.open(directory / "bench.db", SystemClock())
    book = CallBook(store)
    first = 0  # event ids (and so turns) never repeat across the runs
    for concurrency, total, shape in ((1, 1000, ""), (50, 3000, ""), (50, 3000, "_old_shape")):
        # Each figure is the median of `passes` passes of `total` turns: one pass moved by up to
        # 20% from run to run on this machine.
        measured: list[tuple[float, float, float]] = []
        for _ in range(passes):
            measured.append(await _storage_pass(store, book, first, concurrency, total, shape))
            first += total
        turns_per_s, cpu_us, writer_us = (statistics.median(m[n] for m in measured) for n in range(3))
        figures[f"stored_turns_per_s_{concurrency}{shape}"] = turns_per_s
        figures[f"stored_turn_cpu_us_{concurrency}{shape}"] = cpu_us
        figures[f"writer_cpu_us_per_turn_{concurrency}{shape}"] = writer_us
        figures[f"writer_bound_turns_per_s_{concurrency}{shape}"] = 1e6 / writer_us
        print(f"stored turns (5 call rows each), {concurrency:>2} at a time: {turns_per_s:8.0f} turns/s, "
              f"{cpu_us:4.0f} us CPU per turn, of which the writer thread {writer_us:4.0f} us "
              f"(at most {1e6 / writer_us:5.0f} turns/s on its one thread)"
              + ("  (the sequence measured until session 7)" if shape else ""))
    await bench_long_session(store, figures)
    await store.close()


async def _storage_pass(store: Store, book: CallBook, first: int, concurrency: int, total: int,
                        shape: str) -> tuple[float, float, float]:
    """One pass: turns/s, process CPU per turn (us), the writer thread's CPU per turn (us)."""
    started, cpu, writer_cpu = time.perf_counter(), time.process_time(), store.writer_cpu_s
    for batch in range(first, first + total, concurrency):
        if shape:
            await asyncio.gather(*(stored_turn(store, batch + i) for i in range(concurrency)))
        else:
            await asyncio.gather(*(question_turn(store, book, batch + i) for i in range(concurrency)))
    await book.settle()
    elapsed = time.perf_counter() - started
    # CPU of the whole process (loop, writer, reader and any checkpoint thread) per turn: steadier
    # than turns/s on a machine shared with other work. The writer thread's own CPU per turn (its
    # statements and write functions, not the event loop's part): the most turns per second its
    # one thread could store, were nothing else in the process.
    return (total / elapsed, (time.process_time() - cpu) / total * 1e6,
            (store.writer_cpu_s - writer_cpu) / total * 1e6)


async def bench_long_session(store: Store, figures: Figures, messages: int = 400) -> None:
    """The writer's CPU for a question and its answer in a session of `messages` messages (one
    at a time): the history is read in the question's writer job, which every write waits behind."""
    counter = itertools.count()

    async def turn(prompt: str) -> None:
        n = next(counter)
        taken = await store.take_question(platform="bench", event_id=f"long{n}", chat_id="long", thread_id=None,
                                          user_id="u", user_name="u", message_id=f"long{n}", prompt=prompt,
                                          queued=False, preset_of=lambda stored: "p")
        assert taken is not None
        await store.complete_turn(taken.turn_id, status="done", answer="a" * 600, cost_usd=0.0,
                                  messages=[Message("assistant", "a" * 600)], delivery=None)

    for _ in range(messages // 2):
        await turn("q" * 300)
    writer_cpu = store.writer_cpu_s
    for _ in range(200):
        await turn("question")
    writer_us = (store.writer_cpu_s - writer_cpu) / 200 * 1e6
    figures["writer_cpu_us_per_turn_long_session"] = writer_us
    print(f"a turn in a session of {messages}+ messages, one at a time: {writer_us:4.0f} us of the writer thread's CPU "
          "(question with its history, answer)")


async def bench_sessions(directory: Path, url: str, figures: Figures, sessions: int = 200,
                         rounds: int = 3) -> None:
    raw = {
        "gateway": {"database": str(directory / "gw.db"), "default_preset": "p", "progress": True},
        "providers": {"lean": {"api": "openai", "base_url": url + "/v1", "max_retries": 0,
                               "price_in_per_mtok": 1, "price_out_per_mtok": 2}},
        "presets": {"p": {"references": [f"lean:ref{i}-300" for i in range(4)], "aggregator": "lean:agg-200"}},
    }
    config = parse_config(raw, directory / "bench.toml")
    config = dataclasses.replace(config, platforms={"fakechat": PlatformSection("fakechat", AccessRules(allow_all=True))},
                                 gateway=dataclasses.replace(config.gateway, max_concurrent_turns=sessions))
    clock = SystemClock()
    http = make_http_client()
    store = await Store.open(config.gateway.database, clock)
    engine = MoaEngine(config.engine, ProviderClient(http, env={}, clock=clock), tools={}, clock=clock)
    engine_time: dict[str, float] = {}
    engine_span: dict[str, tuple[float, float]] = {}  # when each session's run_turn began and ended
    run_turn = engine.run_turn

    in_handlers: dict[str, float] = {}  # time the engine waited for the gateway's event handlers

    async def timed_run_turn(*args, session: str, on_event=None, **kwargs):
        waited = [0.0]

        async def timed_on_event(event) -> None:  # type: ignore[no-untyped-def]
            entered = time.perf_counter()
            try:
                await on_event(event)
            finally:
                waited[0] += time.perf_counter() - entered

        started = time.perf_counter()
        try:
            return await run_turn(*args, session=session, on_event=timed_on_event if on_event else None, **kwargs)
        finally:
            ended = time.perf_counter()
            # The gateway's handlers (booking, progress, the summary) are the gateway's time,
            # though the engine awaits them: not counted as the engine's own.
            engine_time[session] = ended - started - waited[0]
            engine_span[session] = (started, ended)
            in_handlers[session] = waited[0]

    engine.run_turn = timed_run_turn  # type: ignore[method-assign]
    adapter = TimedAdapter(edit_interval_s=0.25)
    gateway = Gateway(config, store, engine, {adapter.platform: adapter}, clock)
    await gateway.start()
    per_round: dict[str, list[float]] = {}
    for round_ in range(1 + rounds):  # round 0 warms connections
        engine_time.clear()
        messages = [adapter.message(f"/moa question {round_}-{i}", chat=f"chat{i}") for i in range(sessions)]
        adapter.answered.clear()
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(adapter.push(m) for m in messages))
        await gateway.idle()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if round_ == 0:
            continue
        # Every message was pushed at `started` (pushing only enqueues); a turn's wall time runs
        # to its final answer being delivered.
        keys = [f"fakechat:chat{i}:" for i in range(sessions)]
        answered = [adapter.answered[f"chat{i}"] for i in range(sessions)]
        added = sorted(a - started - engine_time[k] for a, k in zip(answered, keys, strict=True))
        # Where the added time is: before the engine starts (intake: seen, session, turn stored,
        # history) and after it ends (the turn completed with its ledger row, the answer sent).
        spans = [engine_span[k] for k in keys]
        figures_of_round = {
            "added_p50": statistics.median(added), "added_p95": added[int(len(added) * 0.95) - 1],
            "before_p50": statistics.median(s[0] - started for s in spans),
            "after_p50": statistics.median(a - s[1] for a, s in zip(answered, spans, strict=True)),
            "wall_p50": statistics.median(a - started for a in answered),
            "engine_p50": statistics.median(engine_time.values()), "all_answered": wall,
            "in_handlers_p50": statistics.median(in_handlers[k] for k in keys),
            "cpu_per_round": cpu,  # the whole process: the loop, the writer and reader threads
        }
        for name, value in figures_of_round.items():
            per_round.setdefault(name, []).append(value * 1000)
    med = {name: statistics.median(values) for name, values in per_round.items()}
    figures[f"added_p50_ms_{sessions}"] = med["added_p50"]
    figures[f"added_p95_ms_{sessions}"] = med["added_p95"]
    figures[f"added_before_p50_ms_{sessions}"] = med["before_p50"]
    figures[f"added_after_p50_ms_{sessions}"] = med["after_p50"]
    figures[f"added_in_handlers_p50_ms_{sessions}"] = med["in_handlers_p50"]
    figures[f"wall_p50_ms_{sessions}"] = med["wall_p50"]
    figures["engine_p50_ms"] = med["engine_p50"]
    figures[f"cpu_ms_per_round_{sessions}"] = med["cpu_per_round"]
    figures["critical_path_ms"] = 500.0  # the slowest reference (300 ms) + the aggregator (200 ms)
    figures["rounds"] = rounds
    print(f"{sessions} sessions at once ({rounds} rounds, medians): all answered in {med['all_answered'] / 1000:.2f} s; "
          f"gateway-added time per turn p50 {med['added_p50']:.0f} ms, p95 {med['added_p95']:.0f} ms (engine p50 "
          f"{med['engine_p50']:.0f} ms, turn wall p50 {med['wall_p50']:.0f} ms); p50 before the engine starts "
          f"{med['before_p50']:.0f} ms, after it ends {med['after_p50']:.0f} ms, in its event handlers "
          f"{med['in_handlers_p50']:.0f} ms; process CPU per round {med['cpu_per_round']:.0f} ms")
    await gateway.shutdown(grace_s=1)
    await store.close()
    await http.aclose()


async def main(as_json: bool, rounds: int = 3) -> None:
    figures = Figures("bench_gateway")
    figures.calibrate()
    settle_heap()  # as `moa-gateway run` does after start-up
    with tempfile.TemporaryDirectory() as tmp:
        await bench_storage(Path(tmp), figures)
        process, url = start_fake()
        try:
            await bench_sessions(Path(tmp), url, figures, rounds=rounds)
        finally:
            process.stdin.close()
            process.wait(timeout=10)
    # The headline: turns stored per second with 50 at a time (the gateway's concurrent case).
    figures["stored_turns_per_s"] = figures["stored_turns_per_s_50"]
    if as_json:
        print(figures.as_json())


def rounds_wanted(argv: list[str]) -> int:
    return int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 3


if __name__ == "__main__":
    asyncio.run(main(wants_json(), rounds_wanted(sys.argv[1:])))
