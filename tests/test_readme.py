"""The README a newcomer follows: the zero-config one-liner comes first, and the quick start
installs before it uses what it installed."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def code_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```(?:sh)?\n(.*?)```", text, flags=re.S)]


def test_the_first_thing_shown_is_the_zero_config_one_liner():
    first = code_blocks(README)[0]
    assert re.fullmatch(r"OPENROUTER_API_KEY=\S+ moa-gateway chat", first), first
    assert README.index(first) < README.index("## ")


def test_the_quick_start_installs_before_it_runs_anything():
    quick = README[README.index("## Quick start"):README.index("## Command line")]
    blocks = code_blocks(quick)
    assert blocks[0] == "python3 -m venv .venv && . .venv/bin/activate && pip install -e ."
    uses = [i for i, block in enumerate(blocks) if re.search(r"(^|\s)moa-gateway ", block)]
    assert uses and min(uses) > 0
    # Nothing in the quick start relies on a file no step has created.
    assert ".venv/bin/moa-gateway" not in quick
    assert "moa-gateway init" in quick and quick.index("moa-gateway init") < quick.index("moa-gateway check-config")
