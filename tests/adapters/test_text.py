"""split_message, shorten and utf16_len: examples, then properties over generated Markdown."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.text import shorten, split_message, utf16_len

FENCE_LINE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")


def fenced_regions(chunk: str) -> tuple[list[str], list[str], bool]:
    """(prose lines, code lines, whether every block is closed) by CommonMark fence rules."""
    prose: list[str] = []
    code: list[str] = []
    fence: str | None = None
    for line in chunk.split("\n"):
        match = FENCE_LINE.fullmatch(line)
        if fence is None:
            if match and not (match[1][0] == "`" and "`" in match[2]):
                fence = match[1]
            else:
                prose.append(line)
        elif match and not match[2].strip() and match[1][0] == fence[0] and len(match[1]) >= len(fence):
            fence = None
        else:
            code.append(line)
    return prose, code, fence is None


def without_fences_and_space(text: str) -> str:
    kept = [line for line in text.split("\n") if not FENCE_LINE.fullmatch(line)]
    return re.sub(r"\s+", "", "\n".join(kept))


# --- utf16_len ---------------------------------------------------------------------------


def test_utf16_len_counts_astral_characters_twice() -> None:
    assert utf16_len("") == 0
    assert utf16_len("abc") == 3
    assert utf16_len("é") == 1
    assert utf16_len("😀") == 2
    assert utf16_len("a😀b") == 4
    assert utf16_len("👨\u200d👩\u200d👧") == 8


def test_utf16_len_tolerates_lone_surrogates() -> None:
    assert utf16_len("a\ud800b") == 3


# --- split_message: examples -----------------------------------------------------------


def test_short_text_is_one_chunk_and_blank_text_none() -> None:
    assert split_message("hello", 10) == ["hello"]
    assert split_message("", 10) == []
    assert split_message(" \n\t\n  ", 10) == []
    assert split_message("\n\nhello  \n\n", 10) == ["hello"]


def test_prefers_a_blank_line() -> None:
    text = "one two three\nfour five six\n\nseven eight nine"
    assert split_message(text, 35) == ["one two three\nfour five six", "seven eight nine"]


def test_prefers_a_newline_over_a_space() -> None:
    text = "aaaa bbbb cccc\ndddd eeee ffff"
    assert split_message(text, 20) == ["aaaa bbbb cccc", "dddd eeee ffff"]


def test_splits_a_long_line_at_spaces() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"
    chunks = split_message(text, 20)
    assert chunks == ["alpha beta gamma", "delta epsilon zeta", "eta theta"]


def test_splits_a_word_longer_than_the_limit_hard() -> None:
    assert split_message("x" * 45, 20) == ["x" * 20, "x" * 20, "x" * 5]


def test_a_blank_line_far_back_loses_to_a_newline_near_the_end() -> None:
    text = "a\n\n" + "b" * 30 + "\n" + "c" * 30 + "\n" + "d" * 30
    chunks = split_message(text, 70)
    assert chunks[0] == "a\n\n" + "b" * 30 + "\n" + "c" * 30


def test_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})" for i in range(10))
    text = f"Intro.\n\n```python\n{code}\n```\n\nOutro."
    chunks = split_message(text, 50)
    assert len(chunks) > 2
    for chunk in chunks:
        assert len(chunk) <= 50
        assert fenced_regions(chunk)[2], chunk
    code_chunks = [c for c in chunks if "print(" in c]
    assert chunks[0].startswith("Intro.\n\n```python\n")
    for chunk in code_chunks:
        assert chunk.startswith(("```python\n", "Intro.\n\n```python\n"))
        assert chunk.endswith(("\n```", "\n```\n\nOutro."))
    printed = [line for c in code_chunks for line in c.split("\n") if line.startswith("print(")]
    assert printed == code.split("\n")
    assert chunks[-1].endswith("Outro.")


def test_tilde_and_long_fences_are_reopened_as_they_were() -> None:
    text = "~~~~ js\n" + "\n".join(f"let v{i} = {i};" for i in range(8)) + "\n~~~~"
    chunks = split_message(text, 45)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.startswith("~~~~js\n") or chunk.startswith("~~~~ js\n")
        assert chunk.endswith("\n~~~~")


def test_backtick_fence_inside_tilde_block_is_code() -> None:
    text = "~~~\n```\nnot a fence\n```\n~~~"
    assert split_message(text, 100) == [text]


def test_unclosed_block_is_closed() -> None:
    chunks = split_message("text\n```py\nx = 1\ny = 2", 1000)
    assert chunks == ["text\n```py\nx = 1\ny = 2\n```"]


def test_split_before_a_block_rather_than_inside_it() -> None:
    text = "para " * 8 + "\n\n```\n" + "CODE LINE\n" * 5 + "```"
    chunks = split_message(text, 70)
    assert chunks[0] == ("para " * 8).rstrip()
    assert chunks[1].startswith("```\nCODE LINE")


def test_code_line_longer_than_the_limit() -> None:
    line = "X" * 100
    chunks = split_message(f"```sh\n{line}\n```", 30)
    assert all(len(c) <= 30 for c in chunks)
    assert all(c.startswith("```sh\n") and c.endswith("\n```") for c in chunks)
    assert "".join(c[len("```sh\n") : -len("\n```")] for c in chunks) == line


def test_never_sends_an_empty_code_block() -> None:
    text = "a" * 15 + "\n```\n" + "Y" * 40 + "\n```"
    for chunk in split_message(text, 20):
        assert chunk not in ("```\n```",)
        assert fenced_regions(chunk)[2]
        assert chunk.strip("`\n")


def test_astral_characters_count_two_under_utf16() -> None:
    text = "😀" * 25
    chunks = split_message(text, 9, measure=utf16_len)
    assert all(utf16_len(c) <= 9 for c in chunks)
    assert "".join(chunks) == text
    assert [len(c) for c in chunks][:2] == [4, 4]


def test_combining_marks_and_joiners_stay_with_their_base() -> None:
    cluster = "e\u0301"
    text = cluster * 30
    for chunk in split_message(text, 7):
        assert len(chunk) <= 7
        assert not unicodedata.combining(chunk[0])
    family = "👨\u200d👩\u200d👧"
    for chunk in split_message(family * 6, 20, measure=utf16_len):
        assert utf16_len(chunk) <= 20
        assert chunk.startswith("👨") and chunk.endswith("👧")
    flags = "🇩🇪🇫🇷" * 10
    for chunk in split_message(flags, 9):
        assert len(chunk) % 2 == 0
        assert chunk[:2] in ("🇩🇪", "🇫🇷")


def test_crlf_is_a_newline() -> None:
    assert split_message("aaaa bbbb\r\ncccc dddd", 12) == ["aaaa bbbb", "cccc dddd"]


def test_pathological_inputs_are_handled() -> None:
    one_line = "y" * 50_000
    chunks = split_message(one_line, 20)
    assert len(chunks) == 2_500
    big_block = "```\n" + "Z" * 50_000 + "\n```"
    chunks = split_message(big_block, 20, measure=utf16_len)
    assert all(utf16_len(c) <= 20 and c.startswith("```\n") and c.endswith("\n```") for c in chunks)
    many_lines = "\n".join(["word " * 15] * 5_000)
    assert all(len(c) <= 4096 for c in split_message(many_lines, 4096))
    blanks = "\n" * 100_000 + "end"
    assert split_message(blanks, 20) == ["end"]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        split_message("x", 0)


def test_oversized_fence_for_a_tiny_limit_is_left_as_text() -> None:
    chunks = split_message("```averyverylonglanguage\nX\n```", 20)
    assert all(len(c) <= 20 for c in chunks)


# --- split_message: properties ---------------------------------------------------------

PROSE_CLUSTERS = ["a", "b", "k", "q", "z", "é", "e\u0301", "😀", "👍🏽", "🇩🇪", "👨\u200d👩\u200d👧"]
CODE_CLUSTERS = ["A", "B", "Q", "Z", "0", "7", "=", "(", ")", "_", "𝔸", "🙂", "  "]


def words(clusters: list[str], max_len: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(clusters), min_size=1, max_size=max_len).map("".join)


prose_line = st.lists(words(PROSE_CLUSTERS, 12) | words(["q"], 70), min_size=1, max_size=25).map(" ".join)
code_line = st.tuples(
    st.sampled_from(["", "  ", "    "]),
    st.lists(words(CODE_CLUSTERS, 10) | words(["Q"], 70), min_size=0, max_size=12).map(" ".join),
).map("".join)
fence_block = st.tuples(
    st.sampled_from(["```", "````", "~~~"]),
    st.sampled_from(["", "py", "js", "python", " sh"]),
    st.lists(code_line, max_size=8),
    st.booleans(),
).map(lambda t: "\n".join([t[0] + t[1], *t[2], *([t[0]] if t[3] else [])]))
segment = st.one_of(prose_line, prose_line, st.just(""), st.just("\n"), fence_block)


@st.composite
def markdown(draw: st.DrawFn) -> str:
    parts = draw(st.lists(segment, max_size=12))
    text = ""
    for part in parts:
        if text and not fenced_regions(text)[2]:
            break  # an unclosed block swallows the rest; keep it last
        text = f"{text}\n{part}" if text else part
    return text


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


measures = st.sampled_from([len, utf16_len, utf8_len])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=markdown(), limit=st.integers(20, 160), measure=measures)
def test_split_properties_on_markdown(text: str, limit: int, measure) -> None:
    chunks = split_message(text, limit, measure=measure)
    assert (chunks == []) == (not text.strip())
    for chunk in chunks:
        assert measure(chunk) <= limit
        assert chunk.strip()
        prose, code, balanced = fenced_regions(chunk)
        assert balanced, chunk
        # Code stays inside fences, prose outside: the alphabets are disjoint in case.
        assert not any(c.isupper() for line in prose for c in line), chunk
        assert not any(c.islower() for line in code for c in line), chunk
        body = chunk.split("\n", 1)[1] if FENCE_LINE.fullmatch(chunk.split("\n", 1)[0]) else chunk
        assert not unicodedata.combining(body[0]) and body[0] not in "\u200d\ufe0f"
    assert without_fences_and_space("\n".join(chunks)) == without_fences_and_space(text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=400), limit=st.integers(20, 100), measure=measures)
def test_split_properties_on_arbitrary_text(text: str, limit: int, measure) -> None:
    chunks = split_message(text, limit, measure=measure)
    assert (chunks == []) == (not text.strip())
    for chunk in chunks:
        assert measure(chunk) <= limit
        assert chunk.strip()
    if "`" not in text and "~" not in text:
        squash = re.compile(r"\s+")
        assert squash.sub("", "".join(chunks)) == squash.sub("", text)


@settings(max_examples=200, deadline=None)
@given(text=markdown(), measure=measures)
def test_text_that_fits_is_kept_whole(text: str, measure) -> None:
    if text.strip() and fenced_regions(text)[2]:
        limit = max(20, measure(text))
        assert split_message(text, limit, measure=measure) == [
            text.replace("\r\n", "\n").strip("\n").rstrip()
        ]


# --- shorten -----------------------------------------------------------------------------


def test_shorten_keeps_text_that_fits() -> None:
    assert shorten("hello", 5) == "hello"
    assert shorten("", 0) == ""


def test_shorten_cuts_at_a_nearby_word_boundary() -> None:
    text = "The quick brown fox jumps over the lazy dog"
    assert shorten(text, 20) == "The quick brown fox…"
    assert shorten(text, 24) == "The quick brown fox…"
    assert shorten("abcdefghijklmnopqrstuvwxyz", 10) == "abcdefghi…"


def test_shorten_drops_trailing_punctuation_and_takes_a_custom_marker() -> None:
    assert shorten("one, two, three, four, five", 12) == "one, two…"
    assert shorten("one two three four", 12, marker=" [...]") == "one [...]"


def test_shorten_with_a_marker_bigger_than_the_limit() -> None:
    assert shorten("abcdef", 2, marker="...") == "ab"


def test_shorten_utf16_never_splits_an_emoji() -> None:
    text = "😀" * 10
    result = shorten(text, 7, measure=utf16_len)
    assert result == "😀😀😀…"


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300), limit=st.integers(0, 120), measure=measures)
def test_shorten_properties(text: str, limit: int, measure) -> None:
    result = shorten(text, limit, measure=measure)
    assert measure(result) <= limit
    if measure(text) <= limit:
        assert result == text
    elif measure("…") <= limit:
        assert result.endswith("…")
        assert text.startswith(result[:-1])
