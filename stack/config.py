"""What a stack run is configured with, and the livekit-server config file it writes.

`StackConfig` is what callers choose (webhooks, room timeouts, whether the SIP
simulator runs); `StackPorts` and the credentials are chosen fresh for every run, so
two stacks live side by side on one machine. The livekit-server config is written as
JSON, which is valid YAML and so a valid livekit-server config file.
"""

from __future__ import annotations

import json
import random
import secrets
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LOOPBACK",
    "StackConfig",
    "StackPorts",
    "free_port",
    "free_ports",
    "livekit_config",
    "new_credentials",
]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Choices for one stack run; everything else (ports, keys) is picked per run.

    `empty_timeout` and `departure_timeout` are livekit-server's room timeouts in
    seconds, short by default so test rooms close soon. `webhook_events`, when given,
    are the only webhook kinds livekit-server sends (`webhook.filter_params`).
    `extra_livekit_config` is merged over the generated livekit-server config (nested
    dicts are merged).
    """

    webhook_urls: Sequence[str] = ()
    webhook_events: Sequence[str] = ()
    empty_timeout: int = 5
    departure_timeout: int = 3
    sip_simulator: bool = True
    livekit_log_level: str = "info"
    sim_log_level: str = "info"
    start_timeout: float = 30.0
    stop_timeout: float = 5.0
    install: bool = True
    api_key: str | None = None
    api_secret: str | None = None
    run_dir: Path | None = None
    extra_livekit_config: Mapping[str, Any] = field(default_factory=dict)
    redis_args: Sequence[str] = ()
    sim_args: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class StackPorts:
    """The loopback ports one run uses."""

    livekit_http: int
    livekit_rtc_tcp: int
    livekit_rtc_udp: int
    livekit_prometheus: int
    redis: int
    sim_control: int


_handed_out: set[tuple[str, int]] = set()
_handed_out_lock = threading.Lock()
_random = random.SystemRandom()


def _ephemeral_start() -> int:
    """Where the kernel's ephemeral ports (outgoing connections, bind to 0) begin."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports are drawn below the ephemeral range: a port bind(0) hands out is one that the
# next outgoing connection (WebRTC, redis, HTTP) may take before the server binds it.
_PORT_LOW = 10000
_PORT_HIGH = max(_PORT_LOW + 1000, _ephemeral_start() - 1)


def _is_free(port: int, kind: int) -> bool:
    """True if `port` can be bound on every interface (so on loopback too) for `kind`."""
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free port (TCP by default) not handed out before in this process.

    Ports are drawn at random below the kernel's ephemeral range and checked on all
    interfaces (livekit-server binds its ICE-TCP port on all of them). Use it for a
    service that must be known before the stack starts, such as the receiver of the
    stack's webhooks: the stack will not pick the same port.
    """
    proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    with _handed_out_lock:
        for _ in range(1000):
            port = _random.randint(_PORT_LOW, _PORT_HIGH)
            if (proto, port) not in _handed_out and _is_free(port, kind):
                _handed_out.add((proto, port))
                return port
    raise OSError(f"no free {proto} port found between {_PORT_LOW} and {_PORT_HIGH}")


def free_ports() -> StackPorts:
    """Pick distinct free loopback ports, never the same one twice in this process."""
    kinds = [socket.SOCK_STREAM] * 2 + [socket.SOCK_DGRAM] + [socket.SOCK_STREAM] * 3
    http, tcp, udp, prom, redis, sim = (free_port(kind) for kind in kinds)
    return StackPorts(
        livekit_http=http,
        livekit_rtc_tcp=tcp,
        livekit_rtc_udp=udp,
        livekit_prometheus=prom,
        redis=redis,
        sim_control=sim,
    )


def new_credentials() -> tuple[str, str]:
    """A fresh API key and a 43-character secret (livekit-server wants 32 or more)."""
    return f"APIstack{secrets.token_hex(4)}", secrets.token_urlsafe(32)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def livekit_config(
    config: StackConfig, ports: StackPorts, api_key: str, api_secret: str
) -> dict[str, Any]:
    """The livekit-server config for one run, as a dict (dump it as JSON or YAML)."""
    doc: dict[str, Any] = {
        "port": ports.livekit_http,
        "bind_addresses": [LOOPBACK],
        "rtc": {
            "tcp_port": ports.livekit_rtc_tcp,
            "udp_port": ports.livekit_rtc_udp,
            "use_external_ip": False,
            "node_ip": LOOPBACK,
            # Media on loopback only: the UDP mux listens on lo's 127.0.0.1 alone.
            # (livekit-server 1.13.5 binds the ICE-TCP port on all interfaces.)
            "enable_loopback_candidate": True,
            "interfaces": {"includes": ["lo"]},
            "ips": {"includes": [f"{LOOPBACK}/32"]},
        },
        "redis": {"address": f"{LOOPBACK}:{ports.redis}"},
        "keys": {api_key: api_secret},
        "room": {
            "empty_timeout": config.empty_timeout,
            "departure_timeout": config.departure_timeout,
        },
        "prometheus": {"port": ports.livekit_prometheus},
        "logging": {"level": config.livekit_log_level, "json": False},
    }
    if config.webhook_urls:
        doc["webhook"] = {"api_key": api_key, "urls": list(config.webhook_urls)}
        if config.webhook_events:
            doc["webhook"]["filter_params"] = {"include_events": list(config.webhook_events)}
    return _merge(doc, config.extra_livekit_config)


def dump_config(doc: Mapping[str, Any], path: Path) -> None:
    """Write a config dict as indented JSON (which livekit-server reads as YAML)."""
    path.write_text(json.dumps(doc, indent=2) + "\n")
