"""CPU time and memory of processes and of the machine, from /proc (Linux only).

A process's CPU is `utime + stime` (/proc/PID/stat, in clock ticks); a process tree's
is the sum over the live processes plus what the root has already collected from
children that exited (`cutime + cstime`), so a child that exits between two samples
does not make the tree's CPU go backwards. Resident memory is /proc/PID/statm's
second field times the page size. The kernel here has no /proc/PID/task/*/children,
so descendants are found from every process's parent pid.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLOCK_TICKS",
    "PAGE_SIZE",
    "ProcStat",
    "TreeUsage",
    "all_processes",
    "combined",
    "descendants",
    "loadavg",
    "machine_cpu_ticks",
    "machine_info",
    "read_process",
    "tree_usage",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """One process at one moment."""

    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime: children already waited for
    rss_bytes: int


def read_process(pid: int) -> ProcStat | None:
    """A process's CPU and resident memory; None if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        statm = (_PROC / str(pid) / "statm").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        ppid = int(fields[1])
        utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
        resident = int(statm.split()[1])
    except (IndexError, ValueError):
        return None
    return ProcStat(pid, ppid, utime + stime, cutime + cstime, resident * PAGE_SIZE)


def all_processes() -> dict[int, ProcStat]:
    """Every process readable now, by pid."""
    found: dict[int, ProcStat] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = read_process(int(entry.name))
            if stat is not None:
                found[stat.pid] = stat
    return found


def descendants(root: int, processes: Mapping[int, ProcStat]) -> list[int]:
    """The pids of `root`'s children, grandchildren and so on (not `root` itself)."""
    children: dict[int, list[int]] = {}
    for stat in processes.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class TreeUsage:
    """A process and its descendants at one moment: CPU seconds so far, bytes resident."""

    alive: bool
    cpu_seconds: float  # root + reaped children + live descendants
    rss_bytes: int  # root + live descendants
    main_cpu_seconds: float  # the root alone
    main_rss_bytes: int
    processes: int


def tree_usage(root: int | None, processes: Mapping[int, ProcStat]) -> TreeUsage:
    """CPU and memory of `root` and its descendants in a snapshot of `all_processes()`."""
    main = processes.get(root) if root is not None else None
    if root is None or main is None:
        return TreeUsage(False, 0.0, 0, 0.0, 0, 0)
    pids = descendants(root, processes)
    ticks = main.cpu_ticks + main.child_ticks
    rss = main.rss_bytes
    for pid in pids:
        stat = processes[pid]
        ticks += stat.cpu_ticks + stat.child_ticks
        rss += stat.rss_bytes
    return TreeUsage(
        True,
        ticks / CLOCK_TICKS,
        rss,
        main.cpu_ticks / CLOCK_TICKS,
        main.rss_bytes,
        1 + len(pids),
    )


def combined(trees: Sequence[TreeUsage]) -> TreeUsage:
    """Several monitor replicas' trees as one: sums, alive only while every one is (a
    sum with a replica missing would look like a drop in CPU time)."""
    return TreeUsage(
        bool(trees) and all(t.alive for t in trees),
        sum(t.cpu_seconds for t in trees),
        sum(t.rss_bytes for t in trees),
        sum(t.main_cpu_seconds for t in trees),
        sum(t.main_rss_bytes for t in trees),
        sum(t.processes for t in trees),
    )


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    first = (_PROC / "stat").read_text().splitlines()[0].split()
    values = [int(v) for v in first[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = (_PROC / "loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def _cpu_model() -> str:
    try:
        for line in (_PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    for line in (_PROC / "meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _first_line(argv: Iterable[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine_info() -> dict[str, object]:
    """Cores, memory, CPU model, kernel and OS of this machine."""
    os_release = "unknown"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_release = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "os": os_release,
        "python": platform.python_version(),
        "go": _first_line(["go", "version"]),
    }
