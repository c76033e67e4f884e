"""The adapters' caches hold a fixed number of entries however long the bot runs."""

from adapters.bounded import Bounded


def test_the_least_recently_remembered_entries_go_first_past_the_capacity() -> None:
    cache = Bounded(3)
    for key in "abc":
        cache.remember(key, key.upper())
    cache.remember("a", "A2")  # remembered again: the newest now
    cache.remember("d")
    assert list(cache) == ["c", "a", "d"] and cache["a"] == "A2" and cache["d"] is None
    for n in range(100):
        cache.remember(n, n)
    assert list(cache) == [97, 98, 99]
