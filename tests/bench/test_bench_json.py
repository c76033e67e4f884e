"""Benchmarks print their figures as one JSON object on the last line with `--json`.

Only the cost benchmark is run here (on a few thousand rows: seconds); the engine and gateway
benchmarks take minutes, so for them the shared `Figures` value is tested directly."""

from __future__ import annotations

import json
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path

from bench.report import Figures, wants_json

ROOT = Path(__file__).resolve().parents[2]


def test_bench_costs_json_last_line_has_the_named_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_costs.py"), "--rows", "2000", "--runs", "1", "--json",
         "--db", str(tmp_path / "b.db")],
        capture_output=True, text=True, timeout=300, check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("rows", "digest_week_ms", "digest_all_rows_ms", "cost_month_ms", "chart_ms",
                "calibration_python_ms", "calibration_sqlite_ms"):
        assert isinstance(figures[key], int | float), key
    assert figures["calibration_python_ms"] > 0 and figures["calibration_sqlite_ms"] > 0
    assert figures["rows"] == 2000
    assert figures["python"] == platform.python_version()


def test_figures_round_floats_and_keep_order() -> None:
    figures = Figures("bench_x")
    figures["b_ms"] = 1.23456
    figures["a"] = 3
    assert json.loads(figures.as_json()) == {"bench": "bench_x", "python": platform.python_version(),
                                             "b_ms": 1.235, "a": 3}
    assert list(json.loads(figures.as_json())) == ["bench", "python", "b_ms", "a"]


def test_calibration_times_its_two_workloads() -> None:
    from bench.calibration import machine_speed

    speed = machine_speed(runs=1)
    assert speed["calibration_python_ms"] > 0 and speed["calibration_sqlite_ms"] > 0
    assert speed["sqlite_version"] == sqlite3.sqlite_version


def test_wants_json() -> None:
    assert wants_json(["--quick", "--json"]) and not wants_json(["--quick"])
