"""sqlite-utils imported without its optional numpy support, before any module of the store
imports it.

sqlite-utils imports numpy when it is installed, only to map numpy scalar types to column types
when it creates tables from Python values; the store never hands it numpy values. numpy is
installed here for matplotlib (the cost chart, which imports it on first use), and importing it
at start-up cost every `moa-gateway run`, `ask` and `costs` about 65 ms and 11 MB of resident
memory, and an OpenBLAS thread (measured 2026-12-08 on Python 3.11.7).

A None entry in `sys.modules` makes `import numpy` raise ImportError (the import system's own way
of refusing a module). It is there only while sqlite-utils runs its module code, and only when
numpy is not loaded yet: numpy, once loaded by anything else, is left alone, and so is every
import of numpy after this one (the chart's included)."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def import_sqlite_utils() -> ModuleType:
    """`sqlite_utils`, imported now (without numpy) unless it or numpy is imported already."""
    if "sqlite_utils" in sys.modules or "numpy" in sys.modules:
        return importlib.import_module("sqlite_utils")
    sys.modules["numpy"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module("sqlite_utils")
    finally:
        if "numpy" in sys.modules and sys.modules["numpy"] is None:
            del sys.modules["numpy"]


import_sqlite_utils()

__all__ = ["import_sqlite_utils"]
