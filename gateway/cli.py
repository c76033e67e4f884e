"""The `moa-gateway` command line: run, chat, ask, check-config, costs, presets, tools.

Every command takes `--config FILE` (default moa-gateway.toml). Errors are one line naming what
to fix, with a non-zero exit code; secrets are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from adapters.figures import format_total, json_usd
from adapters.startup import PlatformUnavailable
from adapters.terminal import FOOTER_PREFIX, strip_controls
from gateway import loop as event_loop
from gateway.commands import LONE_SURROGATE
from gateway.config import Config, ConfigError, load_config
from gateway.heap import settle_heap
from gateway.presentation import answer_footer, reference_summary
from gateway.runtime import build_engine, missing_keys, missing_transcription_key
from gateway.secrets import log_to_stderr
from gateway.storage.sqlite import DatabaseBusy

if TYPE_CHECKING:
    from gateway.storage import Storage
from gateway.tool_listing import listings_json, mcp_problems, preset_tools, print_tools
from moa_core.engine import ConfigurationError, MoaEngine
from moa_core.events import (
    Event,
    ReferenceFinished,
    ReferencesDone,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnResult,
)
from moa_core.values import Message, count_unpriced, sum_dollars

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


CONFIG_FILE = "moa-gateway.toml"
# Commands that fall back to the built-in default when there is no config file at all.
_BUILTIN_OK = {"ask", "chat", "costs", "presets"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moa-gateway", description="Mixture-of-Agents chat bot gateway")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None,
                        help=f"config file (default: {CONFIG_FILE}; ask, chat, costs and presets use a "
                             "built-in default from OPENROUTER_API_KEY etc. when there is none)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run every configured platform adapter")
    sub.add_parser("chat", parents=[common], help="an interactive terminal session through the gateway")
    ask = sub.add_parser("ask", parents=[common], help="one MoA turn in the terminal")
    ask.add_argument("--preset", help="preset to use (default: gateway.default_preset)")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ask.add_argument("--no-store", action="store_true",
                     help="do not record the turn and its costs in the database")
    ask.add_argument("prompt", nargs="*",
                     help="the question; '-' or none (with stdin not a terminal) reads it from stdin")
    sub.add_parser("check-config", parents=[common], help="validate the config file and environment",
                   description="Validate the config file and the environment variables it names. "
                   "The last line is the verdict. Exit 0: config OK (possibly 'config OK, but: ...' "
                   "with notes that do not stop it running); 1: the file is valid but variables it "
                   "names are not set; 2: the file is missing or invalid.")
    costs = sub.add_parser("costs", parents=[common], help="spend table from the database")
    costs.add_argument("--since", help="start date (YYYY-MM-DD, in the configured time zone); default: 30 days ago")
    costs.add_argument("--by", choices=["chat", "user", "preset", "model"], default="model")
    sub.add_parser("presets", parents=[common], help="list the configured presets")
    migrate = sub.add_parser("migrate-db", help="copy a SQLite database into an empty PostgreSQL database")
    migrate.add_argument("--from", dest="source", required=True, help="the SQLite file (e.g. moa-gateway.db)")
    migrate.add_argument("--to", dest="target", required=True, help="postgresql://user@host:port/dbname")
    migrate.add_argument("--password-env", help="environment variable with the password (default: PGPASSWORD)")
    tools = sub.add_parser("tools", parents=[common],
                           help="list each preset's tools (starts its MCP servers to ask them)")
    tools.add_argument("--preset", help="only this preset")
    tools.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    init = sub.add_parser("init", help=f"write the example config to {CONFIG_FILE} (or --config FILE)")
    init.add_argument("--config", default=CONFIG_FILE, help=f"where to write it (default: {CONFIG_FILE})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "migrate-db":  # needs no config file: both ends are on the command line
        return _cmd_migrate_db(args, os.environ)
    if args.command == "init":
        return _cmd_init(args)
    try:
        config = _load(args, os.environ)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    command = args.command.replace("-", "_")
    handler = globals()[f"_cmd_{command}"]
    try:
        return handler(args, config, os.environ)
    except (PlatformUnavailable, DatabaseBusy) as error:  # one line says what to check
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _load(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """--config FILE, else moa-gateway.toml here, else (for some commands) the built-in default."""
    if args.config is not None:
        return load_config(args.config)
    if Path(CONFIG_FILE).exists() or args.command not in _BUILTIN_OK:
        return load_config(CONFIG_FILE)
    from gateway.builtin import builtin_config

    builtin = builtin_config(env)
    print(builtin.describe(), file=sys.stderr)
    return builtin.config


def _cmd_init(args: argparse.Namespace) -> int:
    from importlib.resources import files

    target = Path(args.config)
    if target.exists():
        print(f"error: {target} exists; not overwriting it (edit it, or pass --config OTHER.toml)", file=sys.stderr)
        return EXIT_USAGE
    example = files("gateway").joinpath("example.toml").read_text(encoding="utf-8")
    try:
        target.write_text(example, encoding="utf-8")
    except OSError as error:
        print(f"error: cannot write {target}: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {target}: edit its providers, presets and platform sections, export the variables it "
          f"names, then: moa-gateway check-config{'' if target.name == CONFIG_FILE and target.parent == Path() else f' --config {target}'}")
    return EXIT_OK


def _cmd_presets(args: argparse.Namespace, config: Config, env: Mapping[str, str], out: TextIO = sys.stdout) -> int:
    print(f"default preset: {config.gateway.default_preset}", file=out)
    for name, preset in config.engine.presets.items():
        state = " [disabled: aggregator alone]" if not preset.enabled else ""
        print(f"{name}{state}", file=out)
        for slot in preset.references:
            print(f"  reference  {slot.label}", file=out)
        print(f"  aggregator {preset.aggregator.label}", file=out)
        tools = ", ".join(preset.tools) or "none"
        print(f"  fanout {preset.fanout.mode}{':' + str(preset.fanout.every) if preset.fanout.mode == 'every_n' else ''}"
              f" · tools {tools} · summary {preset.summary}", file=out)
    return EXIT_OK


def _cmd_tools(args: argparse.Namespace, config: Config, env: Mapping[str, str], out: TextIO = sys.stdout) -> int:
    if args.preset is not None and args.preset not in config.engine.presets:
        print(f"error: unknown preset '{args.preset}' (configured: {', '.join(sorted(config.engine.presets))})",
              file=sys.stderr)
        return EXIT_USAGE
    listings = asyncio.run(preset_tools(config, env, args.preset))
    if args.json:
        print(json.dumps(listings_json(listings), ensure_ascii=False), file=out)
    else:
        print_tools(listings, out)
    down = sorted({r.source for rows in listings.values() for r in rows if not r.up})
    if down and not args.json:
        print(f"warning: not running: {', '.join(down)}", file=sys.stderr)
    return EXIT_FAILED if down else EXIT_OK


def _cmd_check_config(args: argparse.Namespace, config: Config, env: Mapping[str, str],
                      out: TextIO = sys.stdout) -> int:
    """Exit 0 with `config OK` (or `config OK, but: ...`), 1 when variables the file names are not
    set or a program it names is missing (run would refuse to start), 2 for a missing or invalid
    file (printed by `main`)."""
    missing = []
    for preset in config.engine.presets.values():
        missing.extend(missing_keys(config, preset, env))
    missing.extend(missing_transcription_key(config, env))
    enabled = {name: s for name, s in config.platforms.items() if s.options.get("enabled") is not False}
    for name, section in enabled.items():
        for key, value in section.options.items():
            if key.endswith("_env") and not env.get(value, "").strip():
                missing.append(f"environment variable {value} is not set ({name}.{key})")
    missing.extend(mcp_problems(config, env))
    print(f"{config.path}: {len(config.engine.providers)} provider(s), {len(config.engine.presets)} preset(s), "
          f"platforms: {', '.join(enabled) or 'none'}", file=out)
    database_problem = _check_database(config, env)
    if database_problem and " is not set " in database_problem:
        missing.append(database_problem)
    missing = list(dict.fromkeys(missing))
    variable = "environment variable "
    for problem in missing:
        print(f"{'missing' if problem.startswith(variable) else 'problem'}: {problem}", file=sys.stderr)
    if missing:
        names = list(dict.fromkeys(p.split()[2] for p in missing if p.startswith(variable)))
        parts = [f"{len(names)} environment variable(s) named in the config are not set: {', '.join(names)}"] \
            if names else []
        parts.extend(p for p in missing if not p.startswith(variable))
        print("error: " + "; ".join(parts), file=sys.stderr)
        return EXIT_FAILED
    if database_problem:
        print(f"error: the database does not answer: {database_problem}", file=sys.stderr)
        return EXIT_FAILED
    notes = []
    if not enabled:
        notes.append("no platform is configured, so `run` will not start; ask and chat work")
    print(f"config OK, but: {'; '.join(notes)}" if notes else "config OK", file=out)
    return EXIT_OK


def _cmd_migrate_db(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from pathlib import Path

    from gateway.storage import is_postgres_url
    from gateway.storage.copy import CopyRefused, copy_sqlite_to_postgres
    from gateway.storage.postgres_connect import StorageUnavailable, describe_url
    from moa_core.clock import SystemClock

    if not is_postgres_url(args.target):
        print(f"error: --to must be a postgresql:// URL, got {args.target!r}", file=sys.stderr)
        return EXIT_USAGE
    if not Path(args.source).is_file():
        print(f"error: --from {args.source}: no such SQLite database", file=sys.stderr)
        return EXIT_USAGE
    password = env.get(args.password_env) if args.password_env else None
    try:
        where = describe_url(args.target)
        copied = asyncio.run(copy_sqlite_to_postgres(
            Path(args.source), args.target, SystemClock(), password=password, progress=print))
    except (CopyRefused, StorageUnavailable) as error:
        print(f"error: {error}; nothing was copied", file=sys.stderr)
        return EXIT_FAILED
    total = sum(t.rows for t in copied)
    print(f"copied {total} rows in {len(copied)} tables from {args.source} to {where}; row counts match")
    return EXIT_OK


def _check_database(config: Config, env: Mapping[str, str]) -> str | None:
    """Print which backend the config selects and whether it answers; a problem, or None."""
    from pathlib import Path

    from gateway.storage import is_postgres_url

    database = config.gateway.database
    if not is_postgres_url(database):
        path = Path(database)
        state = "exists" if path.is_file() else "will be created"
        print(f"database: SQLite {database} ({state})")
        return None
    from gateway.storage.postgres_connect import StorageUnavailable, check_connection, describe_url

    password_env = config.gateway.database_password_env
    if password_env and not env.get(password_env):
        return f"environment variable {password_env} is not set (gateway.database_password_env)"
    try:
        where = describe_url(database)
        version = asyncio.run(check_connection(database, password=env.get(password_env) if password_env else None))
    except StorageUnavailable as error:
        print(f"database: PostgreSQL, {error}")
        return str(error)
    print(f"database: PostgreSQL {where} (connects, server {version})")
    return None


def _cmd_run(args: argparse.Namespace, config: Config, env: Mapping[str, str]) -> int:
    from gateway.app import NOTHING_CONFIGURED, build_adapters, serve

    log_to_stderr(config, env, logging.INFO)  # every configured key and token masked, whatever logs it
    try:
        adapters = build_adapters(config, env)
    except ConfigError as error:  # NothingToRun, or a value an adapter's settings refused
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not adapters:
        print("error: " + NOTHING_CONFIGURED.format(path=config.path), file=sys.stderr)
        return EXIT_USAGE
    problems = [p for preset in config.engine.presets.values() for p in missing_keys(config, preset, env)]
    problems.extend(missing_transcription_key(config, env))
    for problem in dict.fromkeys(problems):
        print(f"warning: {problem}", file=sys.stderr)
    settle_heap()
    from gateway.storage.postgres_connect import StorageUnavailable

    try:
        event_loop.run(serve(config, adapters, env=env))
    except StorageUnavailable as error:  # the configured PostgreSQL does not answer
        print(f"error: {error} ([gateway] database in {config.path})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_chat(args: argparse.Namespace, config: Config, env: Mapping[str, str]) -> int:
    log_to_stderr(config, env, logging.WARNING)  # the terminal is the conversation: only problems
    settle_heap()
    return event_loop.run(chat(config, env))


async def chat(config: Config, env: Mapping[str, str]) -> int:
    """An interactive session through the same gateway and adapter contract as the platforms."""
    from pathlib import Path

    from adapters.terminal import TerminalAdapter
    from gateway.app import build_app

    problems = missing_keys(config, config.engine.presets[config.gateway.default_preset], env)
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return EXIT_USAGE
    # stdin=None: the adapter reads stdin itself (a terminal, a pipe or a file all work).
    terminal = TerminalAdapter(stdin=None, files_dir=Path(config.gateway.files_dir))
    app = await build_app(config, {"terminal": terminal}, env=env)
    print("moa-gateway chat: type a question, or /moa help. Ctrl-D to quit.", file=sys.stderr)
    try:
        await app.gateway.start()
        await terminal.wait_closed()
        await app.gateway.idle()
        await app.gateway.shutdown()
    finally:
        await app.close()
    return EXIT_OK


def _cmd_costs(args: argparse.Namespace, config: Config, env: Mapping[str, str]) -> int:
    from gateway.costs.delivery import print_costs

    return asyncio.run(print_costs(config, since=args.since, by=args.by))


def _cmd_ask(args: argparse.Namespace, config: Config, env: Mapping[str, str]) -> int:
    words = list(args.prompt)
    if words == ["-"] or (not words and not sys.stdin.isatty()):
        # Bytes, decoded here: a byte that is not UTF-8 then meets ask's own clear error.
        prompt = sys.stdin.buffer.read().decode("utf-8", "surrogateescape").strip()
    elif not words:
        print('error: no question: moa-gateway ask "your question" (or pipe it: ... | moa-gateway ask -)',
              file=sys.stderr)
        return EXIT_USAGE
    else:
        prompt = " ".join(words)
    log_to_stderr(config, env, logging.WARNING)  # stdout carries the answer (or the JSON)
    return event_loop.run(ask(config, prompt, preset=args.preset, as_json=args.json, env=env,
                           store=not args.no_store))


class _AskPrinter:
    """Prints a turn as it runs: progress on stderr, the batched summary, the streamed answer."""

    def __init__(self, preset: str, summary_mode: str, out: TextIO, err: TextIO):
        self.preset, self.summary_mode, self.out, self.err = preset, summary_mode, out, err
        self.step: int | None = None
        self.streamed = False

    async def __call__(self, event: Event) -> None:
        from adapters.terminal import render_summary

        if isinstance(event, ReferenceFinished):
            r = event.result
            print(f"  · reference {r.index + 1}/{r.count} {r.label}: {r.status} ({r.latency_ms} ms)", file=self.err)
        elif isinstance(event, ReferencesDone) and self.summary_mode != "off":
            summary = reference_summary(self.preset, self.summary_mode, event.results)
            print(strip_controls(render_summary(summary)), file=self.out, flush=True)
        elif isinstance(event, ToolCallStarted):
            print(strip_controls(f"  → {event.call.name}({event.call.arguments})"), file=self.err)
        elif isinstance(event, ToolCallFinished):
            print(f"  ← {event.call.name}: {'ok' if event.ok else 'error'}", file=self.err)
        elif isinstance(event, TextDelta):
            if self.step is not None and event.step != self.step and self.streamed:
                print(file=self.out)
            self.step = event.step
            self.streamed = True
            self.out.write(strip_controls(event.text))  # model text: no terminal controls
            self.out.flush()


def result_json(result: TurnResult) -> dict:
    return {
        "preset": result.preset,
        "references": [
            {
                "label": r.label,
                "status": r.status,
                "text": r.text,
                "latency_ms": r.latency_ms,
                "usage": r.usage.as_dict(),
                "usage_source": r.usage.source,
                "cost_usd": json_usd(r.cost.usd),
                "cost_source": r.cost.source,
                "step": r.step,
                "late": r.late,
                "note": r.error,
            }
            for r in result.references
        ],
        "aggregator": {
            "label": result.aggregator_label,
            "steps": result.steps,
            "usage": result.aggregator_usage.as_dict(),
            "usage_source": result.aggregator_usage.source,
            "cost_usd": json_usd(result.aggregator_cost.usd),
            "cost_source": result.aggregator_cost.source,
        },
        "answer": result.answer,
        "total_cost_usd": json_usd(result.total_cost_usd),  # the priced calls' sum
        "unpriced_calls": result.unpriced_calls,
        "elapsed_ms": result.elapsed_ms,
        "error": result.error,
    }


async def ask(config: Config, prompt: str, *, preset: str | None, as_json: bool, env: Mapping[str, str],
              out: TextIO = sys.stdout, err: TextIO = sys.stderr, store: bool = True) -> int:
    name = preset or config.gateway.default_preset
    if name not in config.engine.presets:
        print(f"error: unknown preset '{name}' (configured: {', '.join(sorted(config.engine.presets))}); "
              "see `moa-gateway presets`", file=err)
        return EXIT_USAGE
    if not prompt.strip():
        print("error: the prompt is empty", file=err)
        return EXIT_USAGE
    if LONE_SURROGATE.search(prompt):  # a byte that is not UTF-8 on the command line
        print("error: the prompt is not valid UTF-8 text (it holds an undecodable byte or a lone "
              "surrogate); fix the terminal's encoding or the text and try again", file=err)
        return EXIT_USAGE
    problems = missing_keys(config, config.engine.presets[name], env)
    if problems:
        print(f"error: {problems[0]}", file=err)
        return EXIT_USAGE
    db = await _open_ask_store(config, err) if store else None
    runtime = build_engine(config, env=env)
    try:
        await runtime.start()
        preset_value = config.engine.presets[name]
        printer = None if as_json else _AskPrinter(name, preset_value.summary, out, err)
        try:
            result = await _run_ask(runtime.engine, db, name, prompt, printer)
        except ConfigurationError as error:
            print(f"error: {error}", file=err)
            return EXIT_USAGE
    finally:
        await runtime.aclose()
        if db is not None:
            await db.close()
    if as_json:
        print(json.dumps(result_json(result), ensure_ascii=False), file=out)
        return EXIT_FAILED if result.error else EXIT_OK
    if result.error:
        print(strip_controls(f"\nerror: the aggregator {result.aggregator_label} failed: {result.error}"), file=err)
        return EXIT_FAILED
    if not (printer and printer.streamed):
        print(strip_controls(result.answer), file=out)
    print(f"\n{FOOTER_PREFIX}{answer_footer(result)}", file=out)
    spend = {role: [c.cost for c in result.calls if c.role == role and c.status != "skipped"]
             for role in ("reference", "aggregator")}
    refs, agg = (format_total(sum_dollars(costs), count_unpriced(costs)) for costs in spend.values())
    print(f"  references {refs} · aggregator {agg}", file=out)
    return EXIT_OK


async def _open_ask_store(config: Config, err: TextIO) -> Storage | None:
    """The database `ask` records its turn in; None (with one warning) when it cannot be opened:
    the answer matters more than its record."""
    from gateway.storage import open_store
    from moa_core.clock import SystemClock

    try:
        return await open_store(config.gateway.database, SystemClock(),
                                password_env=config.gateway.database_password_env, env=os.environ)
    except Exception as error:
        print(f"warning: this turn will not be recorded in {config.gateway.database}: {error}", file=err)
        return None


async def _run_ask(engine: MoaEngine, db: Storage | None, preset: str, prompt: str,
                   printer: _AskPrinter | None) -> TurnResult:
    """Run the turn; with a database, store it as the terminal chat does (platform "terminal",
    chat "local", thread "ask": a session of its own, never in `moa-gateway chat`'s history),
    every call booked as it ends, so `/moa cost`, `moa-gateway costs`, budgets and the digest
    count it even when it is cut (Ctrl-C, a kill)."""
    if db is None:
        return await engine.run_turn(preset, [Message("user", prompt)], session="cli-ask", on_event=printer)
    import uuid

    from gateway.booking import run_stored_turn

    event = f"ask-{uuid.uuid4().hex[:12]}"
    return await run_stored_turn(
        engine, db, platform="terminal", chat_id="local", thread_id="ask", user_id="local", user_name="you",
        event_id=event, preset=preset, prompt=prompt, session="cli-ask", on_event=printer,
    )


if __name__ == "__main__":
    raise SystemExit(main())
