"""The `call-monitor` command.

Exit status: 0 done, 1 done but some input was unreadable (reported), 2 a setting or
argument is missing or malformed (one line on stderr naming it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from monitor.client.hook_token import CALLS, MAX_LIFETIME_SECONDS, mint_hook_token
from monitor.core.journal_format import Header
from monitor.core.machine import MachineSettings
from monitor.core.privacy import NumberMasker
from monitor.runtime.config import SETTINGS, ConfigError, Settings, describe, load_settings
from monitor.runtime.replay import print_replay, replay
from monitor.sinks.journal import JournalWriter

__all__ = ["main"]

PROG = "call-monitor"


def _lifetime(value: str) -> int:
    seconds = int(value) if value.isdigit() else 0
    if not 1 <= seconds <= MAX_LIFETIME_SECONDS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_LIFETIME_SECONDS} seconds")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Call-state monitor for LiveKit telephony."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay_cmd = commands.add_parser(
        "replay", help="replay an event journal and print each call's transitions and outcome"
    )
    replay_cmd.add_argument("files", nargs="+", type=Path, metavar="FILE")
    replay_cmd.add_argument("--json", action="store_true", help="one JSON record per ended call")
    replay_cmd.add_argument(
        "--show-numbers", action="store_true", help="print phone numbers unmasked"
    )

    token_cmd = commands.add_parser(
        "calls-token",
        help="print a read-only token for GET /calls (LIVEKIT_API_KEY and LIVEKIT_API_SECRET)",
    )
    token_cmd.add_argument(
        "--lifetime",
        type=_lifetime,
        default=120,
        metavar="SECONDS",
        help=f"how long it is valid, at most {MAX_LIFETIME_SECONDS} s (default 120)",
    )

    run_cmd = commands.add_parser(
        "run", help="watch livekit-server's SIP calls; serve metrics, health, webhooks"
    )
    config_cmd = commands.add_parser(
        "config", help="check the settings and print them (secrets hidden)"
    )
    for command in (run_cmd, config_cmd):
        for setting in SETTINGS:
            command.add_argument(
                setting.flag,
                dest=setting.name,
                default=None,
                help=f"{setting.help} [{setting.env}]",
            )
    return parser


def _flags(args: argparse.Namespace) -> dict[str, str | None]:
    return {setting.name: getattr(args, setting.name, None) for setting in SETTINGS}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "replay":
            return _replay(args)
        if args.command == "calls-token":
            return _calls_token(args)
        settings = load_settings(_flags(args))
    except ConfigError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    if args.command == "run":
        return _run(settings)
    for name, value in describe(settings).items():
        print(f"{name}={value}")
    return 0


def _run(settings: Settings) -> int:
    # Imported here: `replay` and `config` need neither livekit.rtc nor the service.
    from monitor.sinks.logs import CallLog, configure_logging

    configure_logging(settings)
    header = run_header(settings)
    try:
        partial_lines = open_journal(settings, header)
    except ConfigError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    from monitor.runtime.service import Monitor, run_until_signalled

    masker = NumberMasker(settings.mask_numbers, settings.mask_keep_digits)
    monitor = Monitor(settings, sinks=[CallLog(masker=masker)], journal_header=header)
    monitor.metrics.journal_partial_lines(partial_lines)
    try:
        asyncio.run(run_until_signalled(monitor))
    except ConfigError as error:  # found only when starting: a port in use
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    return 0


def run_header(settings: Settings) -> Header:
    """This run's journal header, one for the whole run: the start-up check writes it,
    and the monitor's own writer finds it and adds no second one."""
    return Header(
        MachineSettings(settle_seconds=settings.settle_seconds), settings.instance, time.time()
    )


def open_journal(settings: Settings, header: Header | None = None) -> int:
    """Open the journal as a run does (a cut last line set aside, this run's header
    written), so that a path that cannot be written stops the start, not the first event.

    Returns how many partial lines were set aside; raises ConfigError naming the path.
    """
    path = settings.journal_path
    if path is None:
        return 0
    header = header or run_header(settings)
    writer = JournalWriter(path, header, settings.journal_max_bytes, settings.journal_backups)
    try:
        return writer.open()
    except OSError as error:
        raise ConfigError(f"cannot write the journal {path}: {_why(error, path)}") from None
    finally:
        writer.close()


def _why(error: OSError, path: Path) -> str:
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                return f"{folder} is a file, not a folder"
            break
    if error.strerror is None:  # raised by the writer with a message of its own
        return str(error).removeprefix(f"{path} ")
    return error.strerror


def _calls_token(args: argparse.Namespace) -> int:
    settings = load_settings(required=False)
    if not settings.livekit_api_key or not settings.livekit_api_secret:
        raise ConfigError("calls-token: LIVEKIT_API_KEY and LIVEKIT_API_SECRET must be set")
    key, secret = settings.livekit_api_key, settings.livekit_api_secret
    print(mint_hook_token(key, secret, CALLS, lifetime_seconds=args.lifetime))
    return 0


def _replay(args: argparse.Namespace) -> int:
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        raise ConfigError(f"replay: no such file: {', '.join(missing)}")
    masker = NumberMasker(enabled=not args.show_numbers)
    result = replay(args.files)
    print_replay(result, sys.stdout, masker, as_json=args.json)
    for bad in result.bad_lines:  # the reason may quote the line, numbers and all
        print(f"{PROG}: skipped {bad.path}:{bad.number}: {masker.text(bad.error)}", file=sys.stderr)
    return 1 if result.bad_lines else 0


if __name__ == "__main__":
    sys.exit(main())
