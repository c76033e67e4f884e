"""Typed reading of one TOML table of the config, with errors that name the file and the
dotted key at fault (gateway.config builds the settings values with it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The config file is missing or wrong; the message names the file and the key."""


class TableReader:
    """Typed access to one table, with errors naming file and key."""

    def __init__(self, path: Path, prefix: str, table: Any):
        self.path, self.prefix = path, prefix
        if not isinstance(table, dict):
            raise self.error("", "must be a table")
        self.table = table

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if name else self.prefix

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.key(name)}: {message}")

    def known(self, *names: str) -> None:
        for name in self.table:
            if name not in names:
                raise self.error(name, f"unknown key (known keys: {', '.join(names)})")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if name not in self.table:
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"must be {self._kind_name(kinds)}, not a boolean")
        if not isinstance(value, kinds):
            raise self.error(name, f"must be {self._kind_name(kinds)}, got {value!r}")
        return value

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> Any:
        value = self.get(name, str, default)
        if required and (value is None or not str(value).strip()):
            raise self.error(name, "is required")
        return value

    def number(self, name: str, default: float | None = None, *, minimum: float | None = None,
               maximum: float | None = None, positive: bool = False) -> Any:
        value = self.get(name, float, default)
        if value is None:
            return None
        if positive and value <= 0:
            raise self.error(name, f"must be greater than 0, got {value:g}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum:g}, got {value:g}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be at most {maximum:g}, got {value:g}")
        return value

    def integer(self, name: str, default: int | None = None, *, minimum: int = 1) -> Any:
        value = self.get(name, int, default)
        if value is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        return self.get(name, bool, default)

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(name, list, None)
        if value is None:
            return default
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise self.error(name, f"must be a list of strings, got item {item!r}")
            out.append(str(item))
        return tuple(out)

    @staticmethod
    def _kind_name(kinds: tuple[type, ...]) -> str:
        names = {str: "a string", float: "a number", int: "an integer", bool: "true or false",
                 list: "a list", dict: "a table"}
        return " or ".join(names.get(k, k.__name__) for k in kinds)


__all__ = ["ConfigError", "TableReader"]
