"""`python -m stack up|build`: run the local stack until Ctrl-C, or only build it."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence

from stack._stack import Stack, StackError
from stack.build import BuildError, build, ensure_helm
from stack.config import StackConfig

__all__ = ["main"]

_DEFAULTS = StackConfig()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stack",
        description="Run redis, livekit-server and the SIP simulator on loopback.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack and keep it running until Ctrl-C")
    up.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="send livekit-server webhooks to URL (repeatable)",
    )
    up.add_argument("--empty-timeout", type=int, default=_DEFAULTS.empty_timeout)
    up.add_argument("--departure-timeout", type=int, default=_DEFAULTS.departure_timeout)
    up.add_argument("--no-sim", action="store_true", help="run without the SIP simulator (sipsim)")
    up.add_argument("--log-level", default="info", help="livekit-server and sipsim log level")
    sub.add_parser(
        "build",
        help="install redis-server, build livekit-server and sipsim, and helm for the tests",
    )
    return parser


def _print_up(stack: Stack) -> None:
    print("# the stack is up; use it with:")
    for key, value in stack.env().items():
        print(f"export {key}={shlex.quote(value)}")
    print(f"# http:        {stack.http_url}")
    print(f"# redis:       {stack.redis_addr}")
    print(f"# prometheus:  {stack.livekit_prometheus_url}")
    if stack.config.sip_simulator:
        print(f"# sipsim:      {stack.sim_control_url}")
        print(f"# ledger:      {stack.ledger_path}")
    print(f"# logs:        {stack.logs_dir}")
    print("# Ctrl-C stops everything.", flush=True)


def _wait_for_a_stop_signal() -> None:
    """Return once SIGINT or SIGTERM comes (one before this raises, as usual).

    The signals are blocked, then taken with sigwait: one sent at any moment is kept
    pending until taken. Waiting on an Event for the KeyboardInterrupt instead, the CLI
    once ignored a Ctrl-C sent just after it printed its addresses (a CI run).
    """
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    signal.sigwait(stops)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m stack`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            build(sip_simulator=True)
            ensure_helm()
            return 0
        config = StackConfig(
            webhook_urls=tuple(args.webhook),
            empty_timeout=args.empty_timeout,
            departure_timeout=args.departure_timeout,
            sip_simulator=not args.no_sim,
            livekit_log_level=args.log_level,
            sim_log_level=args.log_level,
        )
        with Stack.start(config) as stack:
            _print_up(stack)
            _wait_for_a_stop_signal()
            print("# stopping", file=sys.stderr, flush=True)
        return 0
    except KeyboardInterrupt:
        return 130
    except (BuildError, StackError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
