"""Every secret the config names, kept out of the logs of `moa-gateway run`, `chat` and `ask`.

The config holds only the *names* of environment variables (`api_key_env`, `token_env`,
`signing_secret_env`, `database_password_env`, ...); their values are the secrets. A library's
error text can still carry one (a request URL with a bot token in its path, a header echoed in
an exception), so `mask_secrets_in_logs` puts one filter on the root handlers that masks each
whole value wherever it appears in a record, traceback included. Values shorter than
`MIN_SECRET_CHARS` are left alone: masking a one-letter "key" would garble every message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from gateway.config import Config
from moa_core.providers.client import MIN_SECRET_CHARS

MASK = "***"


def secret_env_names(config: Config) -> list[str]:
    """The names of every environment variable the config reads a secret from."""
    names = [p.api_key_env for p in config.engine.providers.values() if p.api_key_env]
    for section in config.platforms.values():
        names += [v for k, v in section.options.items() if k.endswith("_env") and isinstance(v, str)]
    if config.gateway.database_password_env:
        names.append(config.gateway.database_password_env)
    for server in config.mcp.values():  # MCP servers' keys and header values
        names += [*server.env_from, *(variable for _, variable in server.headers_env)]
    return list(dict.fromkeys(names))


def configured_secrets(config: Config, env: Mapping[str, str]) -> tuple[str, ...]:
    """The values of those variables that are set and long enough to mask, longest first (so a
    secret that contains another is masked whole)."""
    values = {env.get(name, "").strip() for name in secret_env_names(config)}
    return tuple(sorted((v for v in values if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True))


class SecretMask(logging.Filter):
    """Masks every given secret in a record's message and traceback text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


def mask_secrets_in_logs(config: Config, env: Mapping[str, str], root: logging.Logger | None = None) -> SecretMask:
    """Install a SecretMask on every handler of the root logger (filters on handlers see the
    records of every logger, filters on a logger only its own)."""
    mask = SecretMask(configured_secrets(config, env))
    for handler in (root or logging.getLogger()).handlers:
        handler.addFilter(mask)
    return mask


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_stderr(config: Config, env: Mapping[str, str], level: int) -> SecretMask:
    """The CLI's one logging set-up: records at `level` and above on stderr, every configured
    secret masked. Without it, `chat` and `ask` fell back to Python's last-resort handler,
    which prints warnings unfiltered."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    return mask_secrets_in_logs(config, env)
