"""Profiling the monitor under load with py-spy, and reading its collapsed stacks.

`py-spy record --format raw` writes one line per distinct stack: frames from the root
to the leaf separated by ";", then a space and the number of samples. With
`--subprocesses` the first frames name the process (the monitor, then, for a child,
the observer process). `summarize_collapsed` gives the
busiest functions by own time (the leaf) and by total time (anywhere on the stack),
per process.

The bench records the monitor's main process alone: with `--subprocesses` py-spy
followed a dozen observer processes, took most of a core itself and got 29 samples of
the main process in 25 s under load (bench/notes.md). The observers' cost is measured
on its own by `bench.join_cost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

__all__ = ["default_command", "record", "summarize_collapsed"]


def default_command() -> list[str]:
    """py-spy from PATH, else the one uvx fetches from PyPI (its binary itself, so that
    SIGINT reaches it)."""
    found = shutil.which("py-spy")
    if found:
        return [found]
    # uvx from PATH, else the one `make` installed next to its private uv.
    private = Path(__file__).resolve().parent.parent / ".cache/tools/uv/bin/uvx"
    uvx = shutil.which("uvx") or (str(private) if private.exists() else "uvx")
    try:
        done = subprocess.run(
            [uvx, "--from", "py-spy", "which", "py-spy"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return [uvx, "py-spy"]
    lines = done.stdout.strip().splitlines()
    return [lines[-1]] if done.returncode == 0 and lines else [uvx, "py-spy"]


async def record(
    command: Sequence[str],
    pid: int,
    seconds: float,
    output: Path,
    rate: int = 250,
) -> tuple[int, str]:
    """Record `pid` alone for `seconds` of wall time; return py-spy's status and the end
    of its output.

    py-spy's own `--duration` counts samples, so on a saturated machine it runs longer
    than asked (a 20 s profile took almost 5 minutes here); it is stopped with SIGINT
    instead, on which it writes what it has.
    """
    try:
        process = await _start(command, pid, rate, output)
    except OSError as error:  # no py-spy: the cell goes on without a profile
        return 127, f"{command[0]}: {error}"
    try:
        async with asyncio.timeout(seconds):
            out, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(15.0):
                out, _ = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")[-2000:]


def _short(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)`: lines vary between samples."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})" if where else name


def summarize_collapsed(text: str, top: int = 40) -> dict[str, object]:
    """Samples per process, and the top functions by own and by total samples."""
    per_process: Counter[str] = Counter()
    own: dict[str, Counter[str]] = {}
    total: dict[str, Counter[str]] = {}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        process = "main"
        while frames and frames[0].startswith("process "):  # parent, then child processes
            process = "observer" if "observer_worker" in frames[0] else "monitor"
            frames = frames[1:]
        frames = [_short(f) for f in frames if f]
        if not frames:
            continue
        per_process[process] += count
        own.setdefault(process, Counter())[frames[-1]] += count
        tally = total.setdefault(process, Counter())
        for frame in set(frames):
            tally[frame] += count
    result: dict[str, object] = {"samples": dict(per_process)}
    for process, samples in per_process.items():
        result[process] = {
            "own": [
                {"function": f, "share": round(n / samples, 3)}
                for f, n in own[process].most_common(top)
            ],
            "total": [
                {"function": f, "share": round(n / samples, 3)}
                for f, n in total[process].most_common(top)
            ],
        }
    return result


async def _start(
    command: Sequence[str], pid: int, rate: int, output: Path
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(output),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
