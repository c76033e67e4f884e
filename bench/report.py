"""Machine-readable figures: each bench collects its medians here and, with `--json`, prints them
as one JSON object on its last line (milliseconds and ratios, with the Python version)."""

from __future__ import annotations

import json
import platform
import sys


class Figures:
    """Named figures of one bench run, in the order they were measured."""

    def __init__(self, bench: str) -> None:
        self._values: dict[str, object] = {"bench": bench, "python": platform.python_version()}

    def __setitem__(self, name: str, value: object) -> None:
        self._values[name] = round(value, 3) if isinstance(value, float) else value

    def __getitem__(self, name: str) -> object:
        return self._values[name]

    def as_json(self) -> str:
        return json.dumps(self._values, sort_keys=False)


def wants_json(argv: list[str] | None = None) -> bool:
    return "--json" in (sys.argv[1:] if argv is None else argv)
