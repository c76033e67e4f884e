"""A question's history on SQLite: read in its writer job from what the store remembers of the
chat plus the messages stored since, the same history as a whole read, bounded in memory."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from gateway.storage import Store
from gateway.storage.sqlite_history import HistoryCache, KnownHistory, read_history
from moa_core.values import ImagePart, Message, ToolCall
from tests.fakes.clock import FakeClock

_events = itertools.count(1)


async def ask(store: Store, prompt: str, *, chat: str = "c1", limit: int = 500) -> tuple[int, list[Message]]:
    n = next(_events)
    taken = await store.take_question(platform="telegram", event_id=f"e{n}", chat_id=chat, thread_id=None,
                                      user_id="u1", user_name="Ann", message_id=f"m{n}", prompt=prompt,
                                      preset_of=lambda stored: "default", limit=limit)
    assert taken is not None and taken.history is not None
    return taken.session_id, taken.history


async def answer(store: Store, session_id: int, *messages: Message) -> None:
    turns = await store.query("SELECT MAX(id) FROM turns WHERE session_id = ?", [session_id])
    await store.complete_turn(turns[0][0], status="done", answer=messages[-1].content, cost_usd=0.0,
                              messages=list(messages), delivery=None)


async def whole(store: Store, session_id: int, limit: int = 500) -> list[Message]:
    """The session's history read whole, as nothing remembered."""
    return (await store.read(lambda db: read_history(db, session_id, limit)))[0]


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "gw.db", FakeClock())
    yield store
    await store.close()


async def test_each_question_gets_the_history_a_whole_read_gives(store: Store) -> None:
    tool_turn = (Message("assistant", "", (ToolCall("t1", "search", '{"q": "x"}'),)),
                 Message("tool", "found x", tool_call_id="t1", name="search"), Message("assistant", "x it is"))
    for i in range(12):
        session, history = await ask(store, f"question {i}", limit=7)
        assert history == await whole(store, session, limit=7)
        assert history[-1] == Message("user", f"question {i}")
        await answer(store, session, *(tool_turn if i % 3 == 0 else (Message("assistant", f"answer {i}"),)))
    session, history = await ask(store, "last", limit=500)  # another limit: read whole
    assert history == await whole(store, session) and len(history) == 12 * 2 + 4 * 2 + 1


async def test_a_question_reads_only_the_messages_stored_since_the_last_one(store: Store, tmp_path: Path) -> None:
    session, _ = await ask(store, "first")
    await answer(store, session, Message("assistant", "one"))
    # Stored messages are never changed; were one changed behind the store's back, only a whole
    # read would see it: proof that the question reads what is new, not everything.
    with sqlite3.connect(tmp_path / "gw.db") as db:
        db.execute("UPDATE messages SET content = 'edited' WHERE content = 'first'")
    _, history = await ask(store, "second")
    assert [m.content for m in history] == ["first", "one", "second"]
    assert [m.content for m in await whole(store, session)] == ["edited", "one", "second"]


async def test_a_queued_turn_reads_only_what_is_new_once_it_begins(store: Store, tmp_path: Path) -> None:
    session, _ = await ask(store, "first")
    waiting = await store.start_turn(session_id=session, platform="telegram", chat_id="c1", thread_id=None,
                                     user_id="u1", user_name="Ann", event_id="e-q", message_id="m-q",
                                     preset="default", prompt="behind", queued=True)
    running = (await store.query("SELECT id FROM turns WHERE prompt = 'first'"))[0][0]
    await store.complete_turn(running, status="done", answer="one", cost_usd=0.0,  # the running turn ends ...
                              messages=[Message("assistant", "one")], delivery=None)
    with sqlite3.connect(tmp_path / "gw.db") as db:
        db.execute("UPDATE messages SET content = 'edited' WHERE content = 'first'")
    await store.begin_turn(waiting)  # ... and the queued one begins
    history = await store.history(session)
    assert [m.content for m in history] == ["first", "one", "behind"]  # only "one" and "behind" read
    assert [m.content for m in await whole(store, session)] == ["edited", "one", "behind"]
    _, after = await ask(store, "next")  # what the queued turn read is remembered too
    assert [m.content for m in after] == ["first", "one", "behind", "next"]
    assert await store.history(session + 1000) == []  # a session nothing remembers: read whole


async def test_messages_another_connection_stored_are_read(store: Store, tmp_path: Path) -> None:
    session, _ = await ask(store, "first")
    await answer(store, session, Message("assistant", "one"))
    with sqlite3.connect(tmp_path / "gw.db") as db:  # e.g. `moa-gateway ask` beside `run`, same file
        db.execute("INSERT INTO messages (session_id, role, content, created_at) VALUES (?, 'assistant', 'aside', ?)",
                    (session, "2026-01-01T00:00:00.000000+00:00"))
    _, history = await ask(store, "second")
    assert [m.content for m in history] == ["first", "one", "aside", "second"]


async def test_a_new_session_starts_a_new_history(store: Store) -> None:
    session, _ = await ask(store, "first")
    await answer(store, session, Message("assistant", "one"))
    await store.new_session("telegram", "c1", None)
    other, history = await ask(store, "fresh")
    assert other != session and [m.content for m in history] == ["fresh"]
    # ... and a chat's history is its own
    _, elsewhere = await ask(store, "hello", chat="c2")
    assert [m.content for m in elsewhere] == ["hello"]


async def test_a_started_turn_with_history_reads_only_what_is_new_too(store: Store, tmp_path: Path) -> None:
    session, _ = await ask(store, "first")
    await answer(store, session, Message("assistant", "one"))
    with sqlite3.connect(tmp_path / "gw.db") as db:
        db.execute("UPDATE messages SET content = 'edited' WHERE content = 'first'")
    image = ImagePart("a.png", "image/png", b"", 2, 2, "ab" * 32)
    _, history = await store.start_turn_with_history(
        session_id=session, platform="telegram", chat_id="c1", thread_id=None, user_id="u1", user_name="Ann",
        event_id="e-files", message_id="m-files", preset="default", prompt="look", images=[image])
    assert history is not None
    assert [m.content for m in history] == ["first", "one", "look"] and history[-1].images[0].digest == "ab" * 32


def known(session: int, size: int) -> KnownHistory:
    return KnownHistory(session, 500, session, (Message("user", "x"),), size)


def test_the_cache_is_bounded_by_chats_and_bytes() -> None:
    cache = HistoryCache(max_chats=3, max_bytes=100)
    for i in range(5):
        cache.keep(("t", str(i), ""), known(i, 10))
    assert len(cache) == 3 and cache.get(("t", "0", "")) is None and cache.get(("t", "4", "")) is not None
    assert cache.of_session(0) is None and cache.of_session(4) == (("t", "4", ""), known(4, 10))
    cache.keep(("t", "5", ""), known(5, 90))  # over the bytes: the oldest go first
    assert cache.bytes <= 100 and cache.get(("t", "5", "")) is not None and cache.get(("t", "2", "")) is None
    cache.keep(("t", "6", ""), known(6, 101))  # larger than the whole cache: not kept
    assert cache.get(("t", "6", "")) is None and cache.bytes <= 100
    cache.keep(("t", "5", ""), known(5, 20))  # replaced: counted once
    cache.forget(("t", "4", ""))
    assert cache.bytes == 20 and len(cache) == 1
    cache.keep(("t", "5", ""), known(7, 20))  # the chat's next session: the old one is not its
    assert cache.of_session(5) is None and cache.of_session(7) is not None


async def test_a_history_of_many_short_messages_counts_their_objects_too(store: Store) -> None:
    for _ in range(30):
        session, _ = await ask(store, "?")
        await answer(store, session, Message("assistant", "!"))
    entry = store._histories.get(("telegram", "c1", ""))  # type: ignore[attr-defined]
    assert entry is not None and len(entry.messages) == 59 and entry.size >= 59 * 100


async def test_a_negative_limit_is_refused(store: Store) -> None:
    session, _ = await ask(store, "first")
    with pytest.raises(ValueError, match="negative"):
        await ask(store, "second", limit=-1)
    with pytest.raises(ValueError, match="negative"):
        await store.history(session, limit=-1)
