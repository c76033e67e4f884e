"""Fixtures for every test folder: the storage backends (see tests/backends.py)."""

from tests.backends import backend, pg_database

__all__ = ["backend", "pg_database"]
