"""Machine-readable figures: each bench collects its medians here and, with `--json`, prints them
as one JSON object on its last line (milliseconds and ratios, with the Python version and this
machine's speed at the time: `calibrate`)."""

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

    def calibrate(self) -> None:
        """Add (and print) how fast this machine is now: `bench.calibration`'s two timings."""
        from bench.calibration import machine_speed

        speed = machine_speed()
        for name, value in speed.items():
            self[name] = value
        print(f"machine speed now (bench/calibration.py): pure Python {speed['calibration_python_ms']:.1f} ms, "
              f"SQLite {speed['calibration_sqlite_ms']:.1f} ms (SQLite {speed['sqlite_version']}; lower is faster)")

    def as_json(self) -> str:
        return json.dumps(self._values, sort_keys=False)


def wants_json(argv: list[str] | None = None) -> bool:
    return "--json" in (sys.argv[1:] if argv is None else argv)
