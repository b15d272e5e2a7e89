"""A running stack: redis, livekit-server and the SIP simulator on loopback.

`Stack.start(config)` installs or builds what is missing, writes the configs of the run
into `.cache/stack/<run-id>/`, starts each part in its own process group, and waits
until each answers its health check. The stack stops everything it started when it is
used as a context manager and left (normally, by an exception, by Ctrl-C), when
`stop()` is called, and at interpreter exit as a safety net. Single parts can be
stopped, killed with any signal and restarted on the same ports, for fault tests.
"""

from __future__ import annotations

import atexit
import json
import secrets
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, Self, get_args

from stack._paths import STATE_DIR
from stack._process import ManagedProcess, tail
from stack._report import Reporter, stderr_reporter
from stack.build import LIVEKIT_BINARY, SIPSIM_BINARY, Binaries, BuildError, build
from stack.config import (
    LOOPBACK,
    StackConfig,
    StackPorts,
    dump_config,
    free_ports,
    livekit_config,
    new_credentials,
)
from stack.ledger import Ledger

__all__ = ["Part", "Stack", "StackError", "StackStartError"]

Part = Literal["redis", "livekit", "sipsim"]
"""The names of the parts a stack runs, in start order."""
PARTS: tuple[Part, ...] = get_args(Part)

_START_ATTEMPTS = 3
_live_stacks: set[Stack] = set()
_live_lock = threading.Lock()


class StackError(RuntimeError):
    """A stack operation failed."""


class StackStartError(StackError):
    """A part did not become healthy; the message quotes the end of its log."""

    def __init__(self, part: str, log_path: Path, reason: str) -> None:
        self.part = part
        self.log_path = log_path
        super().__init__(
            f"{part} did not start: {reason}; see its log {log_path}\n"
            f"--- last lines of {log_path.name} ---\n{tail(log_path)}"
        )


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _http_ok(url: str, expect_body: bytes | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            body: bytes = resp.read()
            return resp.status == 200 and (expect_body is None or body.strip() == expect_body)
    except (OSError, urllib.error.URLError):
        return False


def _new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class Stack:
    """A running redis + livekit-server (+ SIP simulator), on free loopback ports."""

    def __init__(
        self,
        config: StackConfig,
        binaries: Binaries,
    ) -> None:
        """Prepare a stack (configs written, nothing started); prefer `Stack.start`."""
        self.config = config
        self.binaries = binaries
        self.run_id = _new_run_id()
        self.logs_dir = (config.run_dir or STATE_DIR / self.run_id).resolve()
        self.ports: StackPorts = free_ports()
        generated_key, generated_secret = new_credentials()
        self.api_key = config.api_key or generated_key
        self.api_secret = config.api_secret or generated_secret
        if len(self.api_secret) < 32:
            raise StackError("livekit-server needs an API secret of 32 characters or more")
        self.timings: dict[str, float] = {}
        self._stopped = False
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.ledger_path = self.logs_dir / "ledger.jsonl"
        self.livekit_config_path = self.logs_dir / "livekit.yaml"
        self.redis_config_path = self.logs_dir / "redis.conf"
        self._procs: dict[Part, ManagedProcess] = {}
        self._write_configs()

    # --- addresses -------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """livekit-server's signalling URL, ws://127.0.0.1:PORT."""
        return f"ws://{LOOPBACK}:{self.ports.livekit_http}"

    @property
    def http_url(self) -> str:
        """livekit-server's HTTP URL (Twirp API, health), http://127.0.0.1:PORT."""
        return f"http://{LOOPBACK}:{self.ports.livekit_http}"

    @property
    def redis_addr(self) -> str:
        """host:port of this stack's redis."""
        return f"{LOOPBACK}:{self.ports.redis}"

    @property
    def sim_control_url(self) -> str:
        """The SIP simulator's control HTTP URL (even when the simulator is not run)."""
        return f"http://{LOOPBACK}:{self.ports.sim_control}"

    @property
    def livekit_prometheus_url(self) -> str:
        """livekit-server's own Prometheus metrics endpoint."""
        return f"http://{LOOPBACK}:{self.ports.livekit_prometheus}/metrics"

    def env(self) -> dict[str, str]:
        """LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET for this stack."""
        return {
            "LIVEKIT_URL": self.ws_url,
            "LIVEKIT_API_KEY": self.api_key,
            "LIVEKIT_API_SECRET": self.api_secret,
        }

    def log_path(self, part: Part) -> Path:
        """The log file of one part."""
        return (
            self.logs_dir
            / {
                "redis": "redis.log",
                "livekit": "livekit-server.log",
                "sipsim": "sipsim.log",
            }[part]
        )

    def ledger(self) -> Ledger:
        """A reader of the simulator's ledger of ended calls."""
        return Ledger(self.ledger_path)

    # --- life cycle ------------------------------------------------------------------

    @classmethod
    def start(
        cls, config: StackConfig | None = None, *, report: Reporter = stderr_reporter
    ) -> Stack:
        """Build what is missing, start every part and wait until each is healthy.

        On any failure everything started so far is stopped again before the error
        (a `StackStartError` naming the part and its log) is raised.
        """
        config = config or StackConfig()
        t0 = time.monotonic()
        binaries = (
            build(sip_simulator=config.sip_simulator, report=report)
            if config.install
            else _installed_binaries(config.sip_simulator)
        )
        built = time.monotonic()
        for attempt in range(1, _START_ATTEMPTS + 1):
            stack = cls(config, binaries)
            stack.timings["build"] = built - t0
            try:
                stack._start_all()
                break
            except StackStartError as err:
                stack.stop()
                # Another process may take a chosen port before our server binds it.
                if attempt == _START_ATTEMPTS or "address already in use" not in str(err).lower():
                    raise
                report(f"{err.part} found a port taken; starting again on other ports")
            except BaseException:
                stack.stop()
                raise
        stack.timings["total"] = time.monotonic() - t0
        report(
            f"stack {stack.run_id} up in {stack.timings['total']:.1f} s "
            f"(build/check {stack.timings['build']:.1f} s); logs: {stack.logs_dir}"
        )
        return stack

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every part (SIGTERM, SIGKILL after the stop timeout), last started first."""
        for part in reversed(PARTS):
            proc = self._procs.get(part)
            if proc is not None:
                proc.stop(self.config.stop_timeout)
        self._stopped = True
        with _live_lock:
            _live_stacks.discard(self)

    @property
    def stopped(self) -> bool:
        """True once `stop()` has run."""
        return self._stopped

    def _start_all(self) -> None:
        _install_sigterm_handler()
        with _live_lock:
            _live_stacks.add(self)
        self.start_part("redis")
        # livekit-server and the simulator only need redis: start both, then wait.
        later: list[Part] = ["livekit", "sipsim"] if self.config.sip_simulator else ["livekit"]
        started = {part: self._spawn(part) for part in later}
        for part in later:
            self._wait_healthy(part, started[part])

    # --- single parts ----------------------------------------------------------------

    def start_part(self, part: Part) -> None:
        """Start one part (on its same ports) and wait until it is healthy."""
        self._wait_healthy(part, self._spawn(part))

    def stop_part(self, part: Part) -> int | None:
        """Stop one part (SIGTERM, then SIGKILL); return its exit status."""
        return self._proc(part).stop(self.config.stop_timeout)

    def restart(self, part: Part) -> None:
        """Stop one part and start it again on the same ports and config."""
        self.stop_part(part)
        self.start_part(part)

    def kill(self, part: Part, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to a part's process group (it is not restarted)."""
        self._proc(part).signal(sig)

    def running(self, part: Part) -> bool:
        """True while the part's main process is alive."""
        proc = self._procs.get(part)
        return proc is not None and proc.running()

    def wait_exited(self, part: Part, timeout: float = 10.0) -> int | None:
        """Wait for a part to exit (after `kill`); return its status, None on timeout."""
        deadline = time.monotonic() + timeout
        proc = self._proc(part)
        while proc.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        return proc.returncode()

    def pids(self) -> dict[Part, int]:
        """Pid (= process group id) of each part started so far."""
        return {part: p.pid for part, p in self._procs.items() if p.pid is not None}

    def healthy(self, part: Part) -> bool:
        """Run the part's health check once."""
        return self._health_check(part)()

    def _proc(self, part: Part) -> ManagedProcess:
        if part not in self._procs:
            raise StackError(f"{part} is not part of this stack (started: {list(self._procs)})")
        return self._procs[part]

    def _spawn(self, part: Part) -> float:
        if self._stopped:
            raise StackError("this stack has been stopped")
        if part == "sipsim" and not self.config.sip_simulator:
            raise StackError("this stack runs without the SIP simulator (sip_simulator=False)")
        proc = self._procs.get(part)
        if proc is None:
            proc = self._procs[part] = ManagedProcess(
                part,
                self._argv(part),
                self.log_path(part),
                cwd=self.logs_dir,
                # livekit-server ignores a SIGTERM in its first 100 ms of serving, and
                # on the first one waits (in 5 s steps) for participants to leave; a
                # second one stops it at once (service/server.go Start and Stop).
                second_term_after=0.5 if part == "livekit" else None,
            )
        proc.start()
        return time.monotonic()

    def _wait_healthy(self, part: Part, started: float) -> None:
        proc = self._proc(part)
        check = self._health_check(part)
        deadline = started + self.config.start_timeout
        while not check():
            if not proc.running():
                raise StackStartError(
                    part, proc.log_path, f"it exited with status {proc.returncode()}"
                )
            if time.monotonic() > deadline:
                proc.stop(self.config.stop_timeout)
                raise StackStartError(
                    part,
                    proc.log_path,
                    f"not healthy after {self.config.start_timeout:.0f} s",
                )
            time.sleep(0.05)
        self.timings[part] = time.monotonic() - started

    def _health_check(self, part: Part) -> Callable[[], bool]:
        if part == "redis":
            return lambda: _redis_ping(self.ports.redis)
        if part == "livekit":
            return lambda: _http_ok(self.http_url + "/", b"OK")
        return lambda: _http_ok(self.sim_control_url + "/healthz")

    # --- configs ---------------------------------------------------------------------

    def _write_configs(self) -> None:
        self.redis_config_path.write_text(
            "\n".join(
                [
                    f"port {self.ports.redis}",
                    f"bind {LOOPBACK}",
                    "protected-mode yes",
                    'save ""',
                    "appendonly no",
                    "daemonize no",
                    'logfile ""',
                    f"dir {self.logs_dir}",
                    "",
                ]
            )
        )
        dump_config(
            livekit_config(self.config, self.ports, self.api_key, self.api_secret),
            self.livekit_config_path,
        )
        (self.logs_dir / "stack.json").write_text(json.dumps(self.describe(), indent=2) + "\n")

    def _argv(self, part: Part) -> list[str]:
        if part == "redis":
            return [
                str(self.binaries.redis_server),
                str(self.redis_config_path),
                *self.config.redis_args,
            ]
        if part == "livekit":
            return [str(self.binaries.livekit_server), "--config", str(self.livekit_config_path)]
        if self.binaries.sipsim is None:
            raise StackError("sipsim was not built for this stack")
        return [
            str(self.binaries.sipsim),
            "--redis",
            self.redis_addr,
            "--control",
            f"{LOOPBACK}:{self.ports.sim_control}",
            "--ledger",
            str(self.ledger_path),
            "--ws-url",
            self.ws_url,
            "--api-key",
            self.api_key,
            "--api-secret",
            self.api_secret,
            "--log-level",
            self.config.sim_log_level,
            # Let it end its calls before stop() would SIGKILL it.
            "--shutdown-timeout",
            f"{max(self.config.stop_timeout - 1.0, 0.5):g}s",
            *self.config.sim_args,
        ]

    def describe(self) -> dict[str, Any]:
        """What a client needs to know about this run (also written to stack.json)."""
        return {
            "run_id": self.run_id,
            "ws_url": self.ws_url,
            "http_url": self.http_url,
            "api_key": self.api_key,
            "api_secret": self.api_secret,
            "redis_addr": self.redis_addr,
            "sim_control_url": self.sim_control_url if self.config.sip_simulator else None,
            "livekit_prometheus_url": self.livekit_prometheus_url,
            "ledger_path": str(self.ledger_path),
            "logs_dir": str(self.logs_dir),
            "ports": {
                "livekit_http": self.ports.livekit_http,
                "livekit_rtc_tcp": self.ports.livekit_rtc_tcp,
                "livekit_rtc_udp": self.ports.livekit_rtc_udp,
                "livekit_prometheus": self.ports.livekit_prometheus,
                "redis": self.ports.redis,
                "sim_control": self.ports.sim_control,
            },
        }

    # --- SIP simulator control -------------------------------------------------------

    def sim_request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Call the simulator's control API and return its decoded JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.sim_control_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=10.0) as resp:
                raw: bytes = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace").strip()
            raise StackError(f"sipsim {method} {path} answered {err.code}: {detail}") from err
        return json.loads(raw) if raw.strip() else None

    def sim_inbound(self, **call: Any) -> dict[str, Any]:
        """Start an inbound call (POST /inbound); returns call_id, room, participant_identity."""
        answer: dict[str, Any] = self.sim_request("POST", "/inbound", call)
        return answer

    def sim_calls(self) -> Any:
        """The simulator's current calls (GET /calls)."""
        return self.sim_request("GET", "/calls")

    def sim_hangup(self, call_id: str) -> Any:
        """Hang up a call from the far end (POST /hangup)."""
        return self.sim_request("POST", "/hangup", {"call_id": call_id})


def _installed_binaries(sip_simulator: bool) -> Binaries:
    """The binaries as they are now, without installing anything (install=False)."""
    redis = shutil.which("redis-server")
    missing = [] if redis else ["redis-server"]
    if not LIVEKIT_BINARY.exists():
        missing.append(str(LIVEKIT_BINARY))
    if sip_simulator and not SIPSIM_BINARY.exists():
        missing.append(str(SIPSIM_BINARY))
    if missing or redis is None:
        raise BuildError(f"missing {', '.join(missing)}: run `uv run python -m stack build`")
    return Binaries(
        redis_server=Path(redis),
        livekit_server=LIVEKIT_BINARY,
        sipsim=SIPSIM_BINARY if sip_simulator else None,
    )


def _stop_live_stacks() -> None:
    with _live_lock:
        stacks = list(_live_stacks)
    for stack in stacks:
        stack.stop()


atexit.register(_stop_live_stacks)


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _install_sigterm_handler() -> None:
    """Turn SIGTERM into SystemExit (so `with` blocks and atexit stop the stack).

    Only when nobody else handles SIGTERM and we are on the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)
