"""Install or build the programs the stack runs (redis-server, livekit-server, sipsim),
and helm for the chart's tests.

Each `ensure_*` function returns the path of a working binary, doing only what is
missing: redis-server comes from Debian (apt-get), livekit-server and helm from
`go install` at a pinned tag into the git-ignored `bin/`, and the SIP simulator from
`go build` of `sipsim/` whenever one of its sources is newer than the binary. Builds
take a file lock, so two test sessions never build the same thing at once, and a
`go install` that some other process already runs is waited for, not repeated.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from stack._paths import BIN_DIR, SIPSIM_DIR, STATE_DIR
from stack._report import Reporter, stderr_reporter

__all__ = [
    "HELM_BINARY",
    "LIVEKIT_MODULE",
    "LIVEKIT_VERSION",
    "Binaries",
    "BuildError",
    "build",
    "ensure_helm",
    "ensure_livekit_server",
    "ensure_redis",
    "ensure_sipsim",
    "livekit_server_version",
    "sipsim_is_stale",
]

LIVEKIT_VERSION = "1.13.5"
"""The newest livekit-server tag that `go install` accepts (later tags carry `replace`)."""
LIVEKIT_MODULE = "github.com/livekit/livekit-server/cmd/server"
LIVEKIT_BINARY = BIN_DIR / "server"
HELM_VERSION = "4.3.2"
"""Helm for the chart's tests (`helm template`, `helm lint`); no cluster needed."""
HELM_MODULE = "helm.sh/helm/v4/cmd/helm"
HELM_BINARY = BIN_DIR / "helm"
SIPSIM_BINARY = BIN_DIR / "sipsim"
_PROGRESS_EVERY = 10.0


class BuildError(RuntimeError):
    """A binary could not be installed or built; the message names the log to read."""


@dataclass(frozen=True, slots=True)
class Binaries:
    """Paths of the programs a stack runs."""

    redis_server: Path
    livekit_server: Path
    sipsim: Path | None


def build(*, sip_simulator: bool = True, report: Reporter = stderr_reporter) -> Binaries:
    """Install or build everything the stack needs, and return where it is."""
    redis = ensure_redis(report)
    livekit = ensure_livekit_server(report)
    sim = ensure_sipsim(report) if sip_simulator else None
    return Binaries(redis_server=redis, livekit_server=livekit, sipsim=sim)


# --- redis -------------------------------------------------------------------------


def ensure_redis(report: Reporter = stderr_reporter) -> Path:
    """Return redis-server's path, installing the Debian package when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    report("redis-server not found: installing the Debian package redis-server")
    prefix: list[str] = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = STATE_DIR / "build-redis.log"
    install = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    if _run_logged(install, log=log, env=env, report=report, label="apt-get") != 0:
        report("apt-get install failed; refreshing the package lists and trying again")
        _run_logged([*prefix, "apt-get", "update"], log=log, env=env, report=report, label="apt")
        if _run_logged(install, log=log, env=env, report=report, label="apt-get") != 0:
            raise BuildError(f"could not install redis-server with apt-get; see {log}")
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if not found:
        raise BuildError(f"redis-server is still not on PATH after apt-get; see {log}")
    report(f"redis-server installed at {found}")
    return Path(found)


# --- livekit-server ----------------------------------------------------------------


def livekit_server_version(binary: Path = LIVEKIT_BINARY) -> str | None:
    """The version `binary --version` prints, or None if it does not run."""
    if not binary.exists():
        return None
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return match.group(1) if match else None


def ensure_livekit_server(report: Reporter = stderr_reporter) -> Path:
    """Return bin/server at the pinned version, building it with `go install` if needed.

    A cold build takes 2.5 to 5.5 minutes on 2 cores (docs/stack.md); a progress line
    is reported every 10 s. Another process's `go install` of it is waited for.
    """
    return _go_install(
        "livekit-server",
        LIVEKIT_MODULE,
        LIVEKIT_VERSION,
        LIVEKIT_BINARY,
        livekit_server_version,
        "2.5 to 5.5 min on 2 cores",
        report,
    )


def ensure_helm(report: Reporter = stderr_reporter) -> Path:
    """Return bin/helm at the pinned version, building it with `go install` if needed.

    Only the chart's tests use it (`helm template`, no cluster). About 1.5 minutes cold.
    """
    return _go_install(
        "helm",
        HELM_MODULE,
        HELM_VERSION,
        HELM_BINARY,
        lambda: _module_version(HELM_BINARY),
        "about 1.5 min on 2 cores",
        report,
    )


def _module_version(binary: Path) -> str | None:
    """The main module's version a Go binary was built from (`go version -m`), or None.

    Helm built by `go install` prints only its minor version; its build info is exact.
    """
    if not binary.exists():
        return None
    try:
        out = subprocess.run(
            [_go_binary(), "version", "-m", str(binary)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired, BuildError):
        return None
    match = re.search(r"^\s*mod\s+\S+\s+v(\d+\.\d+\.\d+)", out.stdout, re.MULTILINE)
    return match.group(1) if match else None


def _go_install(
    name: str,
    module: str,
    version: str,
    binary: Path,
    installed_version: Callable[[], str | None],
    takes: str,
    report: Reporter,
) -> Path:
    """`go install module@vversion` into bin/, unless `binary` is that version already."""
    if installed_version() == version:
        return binary
    with _build_lock(name, report):
        _wait_for_foreign_go_install(name, module, report)
        if installed_version() == version:
            report(f"{name} {version} is ready at {binary}")
            return binary
        go = _go_binary()
        log = STATE_DIR / f"build-{name}.log"
        report(f"building {name} {version} with go install ({takes}); log: {log}")
        BIN_DIR.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOBIN": str(BIN_DIR)}
        argv = [go, "install", "-v", f"{module}@v{version}"]
        rc = _run_logged(argv, log=log, env=env, report=report, label=f"{name} build")
        built = installed_version()
        if rc != 0 or built != version:
            raise BuildError(
                f"go install of {name} v{version} failed "
                f"(exit {rc}, {binary.relative_to(BIN_DIR.parent)} version {built}); see {log}"
            )
        report(f"{name} {built} built at {binary}")
        return binary


def _foreign_go_installs(module: str) -> list[int]:
    """Pids of other processes running `go install` of `module`."""
    root = module.split("/cmd/")[0]
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if (
            len(words) >= 3
            and Path(words[0]).name == "go"
            and "install" in words
            and any(w.startswith(root + "/") for w in words)
        ):
            pids.append(int(entry.name))
    return pids


def _wait_for_foreign_go_install(name: str, module: str, report: Reporter) -> None:
    """Wait for a `go install` of the same module that another process runs (a test
    session started beside this one): one build, not two at once on 2 cores."""
    pids = _foreign_go_installs(module)
    if not pids:
        return
    started = time.monotonic()
    report(f"another go install of {name} is running (pid {pids[0]}); waiting for it")
    last = started
    while _foreign_go_installs(module):
        time.sleep(1.0)
        if time.monotonic() - last >= _PROGRESS_EVERY:
            last = time.monotonic()
            report(f"still waiting for the running {name} build, {last - started:.0f} s")
    report(f"the other {name} build ended after {time.monotonic() - started:.0f} s")


# --- sipsim ------------------------------------------------------------------------


def _sipsim_sources() -> list[Path]:
    if not SIPSIM_DIR.is_dir():
        return []
    sources = [p for p in SIPSIM_DIR.rglob("*.go") if p.is_file()]
    sources += [p for p in (SIPSIM_DIR / "go.mod", SIPSIM_DIR / "go.sum") if p.is_file()]
    return sources


def sipsim_is_stale(binary: Path = SIPSIM_BINARY) -> bool:
    """True when bin/sipsim is missing or older than any sipsim/*.go, go.mod or go.sum."""
    if not binary.exists():
        return True
    built = binary.stat().st_mtime
    return any(src.stat().st_mtime > built for src in _sipsim_sources())


def ensure_sipsim(report: Reporter = stderr_reporter) -> Path:
    """Return bin/sipsim, (re)building it from sipsim/ when a source is newer."""
    if not (SIPSIM_DIR / "go.mod").is_file():
        raise BuildError(
            f"the SIP simulator's sources are not there yet ({SIPSIM_DIR}/go.mod is missing); "
            "start the stack with StackConfig(sip_simulator=False) meanwhile"
        )
    if not sipsim_is_stale():
        return SIPSIM_BINARY
    with _build_lock("sipsim", report):
        if not sipsim_is_stale():
            return SIPSIM_BINARY
        log = STATE_DIR / "build-sipsim.log"
        report(f"building the SIP simulator (cd sipsim && go build); log: {log}")
        BIN_DIR.mkdir(parents=True, exist_ok=True)
        tmp = BIN_DIR / f".sipsim.{os.getpid()}.tmp"
        argv = [_go_binary(), "build", "-o", str(tmp), "."]
        rc = _run_logged(argv, log=log, cwd=SIPSIM_DIR, report=report, label="sipsim build")
        if rc != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)
            raise BuildError(f"go build of sipsim failed (exit {rc}); see {log}")
        os.replace(tmp, SIPSIM_BINARY)
        report(f"sipsim built at {SIPSIM_BINARY}")
        return SIPSIM_BINARY


# --- helpers -----------------------------------------------------------------------


def _go_binary() -> str:
    found = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if not found:
        raise BuildError("the Go toolchain (go) is not on PATH; install Go 1.25 or newer")
    return found


@contextlib.contextmanager
def _build_lock(name: str, report: Reporter) -> Iterator[None]:
    """Hold an exclusive file lock for building `name`, reporting while waiting."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (STATE_DIR / f"build-{name}.lock").open("w") as fh:
        last_report: float | None = None
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if last_report is None or time.monotonic() - last_report >= _PROGRESS_EVERY:
                    last_report = time.monotonic()
                    report(f"waiting for another process building {name}")
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_logged(
    argv: Sequence[str],
    *,
    log: Path,
    report: Reporter,
    label: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Run argv, appending its output to `log` and reporting progress; return its exit code.

    Short outputs (apt) are reported line by line; long ones (`go install -v` names
    every package it compiles) are summarised every few seconds.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = last = time.monotonic()
    lines = 0
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            lines += 1
            now = time.monotonic()
            if now - last >= _PROGRESS_EVERY or (label.startswith("apt") and line.strip()):
                last = now
                report(f"{label}: {now - started:4.0f} s, {lines} lines, {line.strip()[:100]}")
        rc = proc.wait()
        out.write(f"# exit {rc} after {time.monotonic() - started:.1f} s\n")
    report(f"{label}: finished with exit {rc} after {time.monotonic() - started:.0f} s")
    return rc
