"""The Docker Compose stack: docker-compose.yml, its configs under deploy/, the image.

No Docker engine runs here or in CI, so the stack is checked as Compose and each
service would read it: the compose file against the Compose Specification, every file
it mounts present and parseable, Prometheus' config through promtool with the rules
laid out as in the container, the monitor's environment through the monitor's own
settings, and the wiring between services (ports, URLs, labels, secrets) across files.
Each check collects its problems in a list, and the tests at the end show that the
checks do reject what they are meant to reject.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from monitor.runtime.config import SETTINGS, ConfigError, load_settings
from monitor.sources.webhooks import WEBHOOK_EVENTS_USED
from tests.tools import system_tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

# Every file the stack loads. The rules and dashboards are produced by other parts of
# the project (prometheus/rules/, the dashboard generator): the stack needs them all
# the same, so a missing one fails here.
REQUIRED_FILES = (
    "Dockerfile",
    ".dockerignore",
    ".env.example",
    "deploy/README.md",
    "deploy/livekit/livekit.yaml",
    "deploy/sip/sip.yaml",
    "deploy/prometheus/prometheus.yml",
    "deploy/alertmanager/alertmanager.yml",
    "deploy/loki/loki.yaml",
    "deploy/alloy/config.alloy",
    "deploy/grafana/provisioning/datasources/datasources.yaml",
    "deploy/grafana/provisioning/dashboards/dashboards.yaml",
    "prometheus/rules/recording.yml",
    "prometheus/rules/alerts.yml",
    "dashboards/calls.json",
    "dashboards/monitor-health.json",
)

# Host paths outside the repository that a service may mount, and why.
HOST_PATHS = {"/var/run/docker.sock": "alloy reads the monitor's container logs"}

# Services whose ports are meant for the outside world (SIP trunks must reach them);
# every other published port is bound to the loopback address.
PUBLIC_SERVICES = frozenset({"livekit-sip"})
LOOPBACK = "127.0.0.1"

# The only labels Loki streams of the monitor may carry: a few values each. Per-call
# fields (call_id, phone numbers, rooms, trunks) stay inside the JSON line.
LOKI_LABELS = frozenset({"service", "level"})

# The versions the project is tested with.
LIVEKIT_SERVER_IMAGE = "livekit/livekit-server:v1.13.5"

MONITOR = "call-monitor"
MONITOR_ENVS = frozenset(setting.env for setting in SETTINGS)
MONITOR_PREFIXES = ("CALL_MONITOR_", "LIVEKIT_")


# --- reading the compose file -------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-x}, ${VAR-x}, ${VAR:?x}."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        value = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and unset:
            raise KeyError(f"{name} is required: {arg}")
        if op is not None and op.endswith("-") and unset:
            return arg
        return value or ""

    return _VARIABLE.sub(substitute, text)


def interpolate_all(node: Any, env: Mapping[str, str]) -> Any:
    """Substitute variables in every string value of a parsed compose file."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_all(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_all(value, env) for key, value in node.items()}
    return node


def variables_used(text: str) -> set[str]:
    """The variables a text refers to without giving a default."""
    used = set()
    for match in _VARIABLE.finditer(text):
        name = match["braced"] or match["bare"]
        if name and not (match["op"] or "").endswith("-"):
            used.add(name)
    return used


def read_env_file(path: Path) -> dict[str, str]:
    """A .env file: KEY=VALUE lines, comments and blank lines ignored."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip().strip("'\"")
    return env


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either of its two forms."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    return {key: "" if value is None else str(value) for key, value in env.items()}


@dataclass(frozen=True)
class Mount:
    service: str
    kind: str  # "bind" or "volume"
    source: str  # a host path, or a volume's name ("" for an anonymous one)
    target: str
    read_only: bool


def mounts(name: str, service: Mapping[str, Any]) -> list[Mount]:
    """A service's `volumes`, short or long syntax."""
    found = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) == 1:
                found.append(Mount(name, "volume", "", parts[0], False))
                continue
            source, target = parts[0], parts[1]
            options = parts[2].split(",") if len(parts) > 2 else []
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            found.append(Mount(name, kind, source, target, "ro" in options))
        else:
            found.append(
                Mount(
                    name,
                    entry.get("type", "volume"),
                    entry.get("source", ""),
                    entry["target"],
                    bool(entry.get("read_only", False)),
                )
            )
    return found


def host_path(source: str) -> Path:
    return Path(source) if source.startswith("/") else (ROOT / source).resolve()


def bind_mount(compose: Mapping[str, Any], service: str, target: str) -> Path:
    """The host path mounted at `target` in `service`."""
    for mount in mounts(service, compose["services"][service]):
        if mount.kind == "bind" and mount.target == target:
            return host_path(mount.source)
    raise AssertionError(f"{service} mounts nothing at {target}")


@dataclass(frozen=True)
class Port:
    host_ip: str | None  # None: every interface
    published: str  # a port or a range; "" when Docker picks one
    target: str
    protocol: str


def ports(service: Mapping[str, Any]) -> list[Port]:
    """A service's published `ports`, short or long syntax."""
    found = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            found.append(
                Port(
                    entry.get("host_ip"),
                    str(entry.get("published", "")),
                    str(entry["target"]),
                    entry.get("protocol", "tcp"),
                )
            )
            continue
        spec, _, protocol = str(entry).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            found.append(Port(parts[0].strip("[]"), parts[1], parts[2], protocol or "tcp"))
        elif len(parts) == 2:
            found.append(Port(None, parts[0], parts[1], protocol or "tcp"))
        else:
            found.append(Port(None, "", parts[0], protocol or "tcp"))
    return found


def port_range(text: str) -> tuple[int, int]:
    low, _, high = str(text).partition("-")
    return int(low), int(high or low)


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


# --- the checks: each returns the problems it finds ---------------------------------


def image_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every service has a pinned image (a tag other than latest, or a digest)."""
    problems = []
    for name, service in compose["services"].items():
        image = service.get("image")
        if image is None:
            if "build" not in service:
                problems.append(f"{name}: neither image nor build")
            continue
        reference, _, digest = image.partition("@")
        last = reference.rsplit("/", 1)[-1]
        tag = last.partition(":")[2]
        if digest:
            continue
        if not tag:
            problems.append(f"{name}: image {image} has no tag")
        elif tag == "latest":
            problems.append(f"{name}: image {image} is not pinned (latest)")
    return problems


def port_problems(compose: Mapping[str, Any]) -> list[str]:
    """Only the telephony ports are published beyond the loopback address."""
    problems = []
    for name, service in compose["services"].items():
        for port in ports(service):
            if not port.published:
                problems.append(f"{name}: port {port.target} published on a random host port")
            if name not in PUBLIC_SERVICES and port.host_ip != LOOPBACK:
                shown = port.host_ip or "every interface"
                problems.append(f"{name}: port {port.published} published on {shown}")
    return problems


def monitor_env_problems(env: Mapping[str, str]) -> list[str]:
    """The monitor's variables are settings it knows, with values it accepts."""
    problems = [
        f"{key} is not a setting of the monitor (monitor/runtime/config.py)"
        for key in env
        if key.startswith(MONITOR_PREFIXES) and key not in MONITOR_ENVS
    ]
    try:
        load_settings({}, dict(env))
    except ConfigError as error:
        problems.append(str(error))
    return problems


def mount_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every file a service mounts, builds from or reads variables from exists."""
    problems = []
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for mount in mounts(name, service):
            if mount.kind == "volume":
                if mount.source and mount.source not in declared:
                    problems.append(f"{name}: volume {mount.source} is not declared")
                continue
            path = host_path(mount.source)
            if mount.source.startswith("/"):
                if mount.source not in HOST_PATHS:
                    problems.append(f"{name}: mounts {mount.source}, outside the repository")
                continue
            if not path.is_relative_to(ROOT):
                problems.append(f"{name}: mounts {mount.source}, outside the repository")
            elif not path.exists():
                problems.append(f"{name}: mounts {mount.source}, which does not exist")
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            if not context.is_dir():
                problems.append(f"{name}: build context {context} does not exist")
            elif not (context / (dockerfile or "Dockerfile")).is_file():
                problems.append(f"{name}: {dockerfile} does not exist in {context}")
        env_files = service.get("env_file") or []
        for entry in [env_files] if isinstance(env_files, str) else env_files:
            path_text = entry if isinstance(entry, str) else entry["path"]
            required = True if isinstance(entry, str) else entry.get("required", True)
            if required and not (ROOT / path_text).is_file():
                problems.append(f"{name}: env_file {path_text} does not exist")
    return problems


def healthcheck_problems(compose: Mapping[str, Any]) -> list[str]:
    """`condition: service_healthy` only on services that have a healthcheck."""
    problems = []
    for name, service in compose["services"].items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            continue
        for other, rule in depends.items():
            if other not in compose["services"]:
                problems.append(f"{name}: depends on unknown service {other}")
                continue
            if rule.get("condition") != "service_healthy":
                continue
            target = compose["services"][other]
            if "healthcheck" in target:
                continue
            build = target.get("build")
            if build is not None:
                context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
                dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
                text = (context / (dockerfile or "Dockerfile")).read_text()
                if any(word == "HEALTHCHECK" for word, _ in dockerfile_instructions(text)):
                    continue
            problems.append(f"{name}: waits for {other} to be healthy, which has no healthcheck")
    return problems


def _alloy_maps(text: str) -> Iterator[tuple[str, str]]:
    """(where, body) of every label map in an Alloy config: `labels = {...}` arguments
    and the `values = {...}` of label stages."""
    for match in re.finditer(r"\blabels\s*=\s*\{([^}]*)\}", text):
        yield "labels", match[1]
    for match in re.finditer(r"stage\.(labels|static_labels)\s*\{(.*?)\n\s*\}", text, re.S):
        values = re.search(r"values\s*=\s*\{([^}]*)\}", match[2])
        if values:
            yield f"stage.{match[1]}", values[1]


def alloy_label_problems(text: str) -> list[str]:
    """The log shipper sets service="call-monitor" and no high-cardinality label."""
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    problems = []
    service_values = []
    for where, body in _alloy_maps(code):
        for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*\"([^\"]*)\"", body):
            if key not in LOKI_LABELS:
                problems.append(f"{where}: label {key} is not one of {sorted(LOKI_LABELS)}")
            if key == "service":
                service_values.append(value)
    if service_values != [MONITOR]:
        problems.append(
            f'service label: expected exactly service="{MONITOR}", saw {service_values}'
        )
    return problems


GRAFANA_BUILTIN_UIDS = frozenset({"grafana", "-- Grafana --", "-- Mixed --", "-- Dashboard --"})


def datasource_uids(node: Any) -> Iterator[str]:
    """The data source uids a dashboard's panels and queries name."""
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and isinstance(source.get("uid"), str):
            yield source["uid"]
        for value in node.values():
            yield from datasource_uids(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_uids(item)


def dashboard_problems(name: str, dashboard: Any, provisioned: Iterable[str]) -> list[str]:
    """A dashboard is an object with a title, and names only provisioned data sources."""
    if not isinstance(dashboard, dict) or not dashboard.get("title"):
        return [f"{name}: not a dashboard (an object with a title)"]
    known = set(provisioned) | GRAFANA_BUILTIN_UIDS
    return [
        f"{name}: data source uid {uid!r} is not provisioned"
        for uid in sorted(set(datasource_uids(dashboard)))
        if uid not in known and not uid.startswith("$")
    ]


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def raw_compose(compose_text: str) -> dict[str, Any]:
    """The compose file as written, variables not substituted."""
    loaded = yaml.safe_load(compose_text)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    """The compose file as Compose runs it with .env copied from .env.example."""
    resolved = interpolate_all(raw_compose, env_example)
    assert isinstance(resolved, dict)
    return resolved


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path}: not a YAML mapping"
    return loaded


@pytest.fixture(scope="module")
def livekit_config(compose: dict[str, Any]) -> dict[str, Any]:
    return load_yaml(bind_mount(compose, "livekit-server", "/etc/livekit/livekit.yaml"))


@pytest.fixture(scope="module")
def sip_config(compose: dict[str, Any]) -> dict[str, Any]:
    # The path the image's entrypoint reads: livekit-sip --config=/sip/config.yaml.
    return load_yaml(bind_mount(compose, "livekit-sip", "/sip/config.yaml"))


@pytest.fixture(scope="module")
def prometheus_config(compose: dict[str, Any]) -> dict[str, Any]:
    return load_yaml(bind_mount(compose, "prometheus", "/etc/prometheus/prometheus.yml"))


def scrape_targets(prometheus_config: Mapping[str, Any]) -> dict[str, list[str]]:
    return {
        job["job_name"]: [
            target for static in job.get("static_configs", []) for target in static["targets"]
        ]
        for job in prometheus_config["scrape_configs"]
    }


# --- (a) the Compose Specification ------------------------------------------------------


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with its vendored Compose schema, any network use made to fail."""
    offline = {
        **os.environ,
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=offline,
        check=False,
    )


def test_the_compose_file_follows_the_compose_specification() -> None:
    done = check_jsonschema(COMPOSE_FILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_still_follows_it_once_variables_are_substituted(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    resolved = tmp_path / "docker-compose.yml"
    resolved.write_text(yaml.safe_dump(compose))
    done = check_jsonschema(resolved)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  x:\n    image: 3\n    mem_limits: 1g\n")
    assert check_jsonschema(broken).returncode != 0


# --- (b) the files the stack loads --------------------------------------------------------


def test_every_file_the_stack_loads_is_in_the_repository() -> None:
    missing = [name for name in REQUIRED_FILES if not (ROOT / name).is_file()]
    assert missing == [], f"the stack loads these, missing: {missing}"


def test_every_mount_build_and_env_file_exists(compose: dict[str, Any]) -> None:
    assert mount_problems(compose) == []


def test_the_rules_and_dashboards_are_mounted_where_their_configs_look(
    compose: dict[str, Any],
) -> None:
    rules = bind_mount(compose, "prometheus", "/etc/prometheus/rules")
    assert rules == ROOT / "prometheus" / "rules"
    assert sorted(rules.glob("*.yml")), "no rules in prometheus/rules/*.yml"
    provider = load_yaml(
        bind_mount(compose, "grafana", "/etc/grafana/provisioning")
        / "dashboards"
        / "dashboards.yaml"
    )
    (dashboards,) = [p["options"]["path"] for p in provider["providers"]]
    folder = bind_mount(compose, "grafana", dashboards)
    assert folder == ROOT / "dashboards"
    assert sorted(folder.glob("*.json")), "no dashboards/*.json to load"
    home = environment(compose["services"]["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (folder / PurePosixPath(home).relative_to(dashboards)).is_file()


def test_the_mount_check_rejects_missing_and_foreign_paths() -> None:
    compose = {
        "services": {
            "a": {"image": "x:1", "volumes": ["./deploy/nope.yml:/etc/nope.yml:ro"]},
            "b": {"image": "x:1", "volumes": ["/etc/passwd:/etc/passwd:ro", "undeclared:/data"]},
            "c": {"build": {"context": ".", "dockerfile": "Nope.Dockerfile"}},
            "d": {"image": "x:1", "env_file": [".env.nope"]},
        }
    }
    assert len(mount_problems(compose)) == 5


# --- (c) every mounted config parses, and the services agree ---------------------------


def mounted_files(compose: Mapping[str, Any]) -> Iterator[Path]:
    for name, service in compose["services"].items():
        for mount in mounts(name, service):
            if mount.kind != "bind" or mount.source.startswith("/"):
                continue
            path = host_path(mount.source)
            yield from (
                sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            )


def test_every_mounted_yaml_and_json_file_parses(compose: dict[str, Any]) -> None:
    parsed = []
    for path in mounted_files(compose):
        if path.suffix in (".yml", ".yaml"):
            assert isinstance(yaml.safe_load(path.read_text()), dict), path
        elif path.suffix == ".json":
            assert isinstance(json.loads(path.read_text()), dict), path
        else:
            continue
        parsed.append(path.relative_to(ROOT).as_posix())
    assert "deploy/livekit/livekit.yaml" in parsed
    assert "dashboards/calls.json" in parsed
    assert "prometheus/rules/alerts.yml" in parsed


def test_the_dashboards_use_the_provisioned_data_sources(compose: dict[str, Any]) -> None:
    provisioning = bind_mount(compose, "grafana", "/etc/grafana/provisioning")
    sources = load_yaml(provisioning / "datasources" / "datasources.yaml")["datasources"]
    by_uid = {source["uid"]: source for source in sources}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["loki"]["type"] == "loki"
    for source in sources:
        host, _ = hostport(urlsplit(source["url"]).netloc)
        assert host in compose["services"], source["url"]
    assert hostport(urlsplit(by_uid["prometheus"]["url"]).netloc) == ("prometheus", 9090)
    assert hostport(urlsplit(by_uid["loki"]["url"]).netloc) == ("loki", 3100)
    problems = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        problems += dashboard_problems(path.name, json.loads(path.read_text()), by_uid)
    assert problems == []


def test_the_dashboard_check_rejects_an_unknown_data_source() -> None:
    dashboard = {"title": "t", "panels": [{"datasource": {"type": "x", "uid": "mystery"}}]}
    assert dashboard_problems("d.json", dashboard, ["prometheus"]) != []
    assert dashboard_problems("d.json", [], ["prometheus"]) != []


def test_livekit_server_sends_signed_webhooks_to_the_monitor(
    compose: dict[str, Any], livekit_config: dict[str, Any], env_example: dict[str, str]
) -> None:
    monitor_env = environment(compose["services"][MONITOR])
    assert monitor_env["CALL_MONITOR_WEBHOOKS"] == "true"
    port = monitor_env.get("CALL_MONITOR_HTTP_PORT", "9469")
    assert f"http://{MONITOR}:{port}/webhook" in livekit_config["webhook"]["urls"]
    # The monitor is the only consumer here: it gets the kinds it reads, all of them.
    included = livekit_config["webhook"]["filter_params"]["include_events"]
    assert sorted(included) == sorted(WEBHOOK_EVENTS_USED)
    server_env = environment(compose["services"]["livekit-server"])
    # The key that signs the webhooks, and the key pair, both from .env.
    assert server_env["LIVEKIT_WEBHOOK_API_KEY"] == env_example["LIVEKIT_API_KEY"]
    # livekit-server reads LIVEKIT_KEYS as YAML, "key: secret".
    keys = yaml.safe_load(server_env["LIVEKIT_KEYS"])
    assert keys == {env_example["LIVEKIT_API_KEY"]: env_example["LIVEKIT_API_SECRET"]}
    assert len(env_example["LIVEKIT_API_SECRET"]) >= 32  # livekit-server's minimum
    host, _ = hostport(livekit_config["redis"]["address"])
    assert host == "redis"
    assert ports(compose["services"]["livekit-server"])[0].target == str(livekit_config["port"])


def test_livekit_sip_reaches_livekit_server_and_publishes_its_ports(
    compose: dict[str, Any], livekit_config: dict[str, Any], sip_config: dict[str, Any]
) -> None:
    url = urlsplit(sip_config["ws_url"])
    assert url.hostname == "livekit-server"
    assert url.port == livekit_config["port"]
    assert hostport(sip_config["redis"]["address"])[0] == "redis"
    sip_env = environment(compose["services"]["livekit-sip"])
    assert {"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"} <= set(sip_env)
    published = {(p.target, p.protocol): p for p in ports(compose["services"]["livekit-sip"])}
    sip_port = str(sip_config["sip_port"])
    assert (sip_port, "udp") in published
    assert (sip_port, "tcp") in published
    rtp = port_range(sip_config["rtp_port"])
    rtp_published = published[(str(sip_config["rtp_port"]), "udp")]
    assert port_range(rtp_published.published) == rtp
    healthcheck = " ".join(compose["services"]["livekit-sip"]["healthcheck"]["test"])
    assert f"/dev/tcp/127.0.0.1/{sip_config['health_port']}" in healthcheck


def test_no_secret_is_written_in_a_file(
    raw_compose: dict[str, Any], livekit_config: dict[str, Any], sip_config: dict[str, Any]
) -> None:
    assert "keys" not in livekit_config
    assert "key_file" not in livekit_config
    assert "api_key" not in livekit_config.get("webhook", {})
    assert "api_key" not in sip_config
    assert "api_secret" not in sip_config
    secret_names = re.compile(r"SECRET|PASSWORD|KEYS|TOKEN")
    for name, service in raw_compose["services"].items():
        for key, value in environment(service).items():
            if secret_names.search(key):
                assert "${" in value, f"{name}: {key} is written in the compose file"


def test_every_variable_the_compose_file_needs_is_in_env_example(
    compose_text: str, env_example: dict[str, str]
) -> None:
    missing = variables_used(compose_text) - set(env_example)
    assert missing == set()
    # Without .env, Compose stops and says what to do rather than starting keyless.
    with pytest.raises(KeyError, match=r"copy \.env\.example to \.env"):
        interpolate_all(yaml.safe_load(compose_text), {})


def test_prometheus_scrapes_the_monitor_and_livekit(
    compose: dict[str, Any],
    prometheus_config: dict[str, Any],
    livekit_config: dict[str, Any],
    sip_config: dict[str, Any],
) -> None:
    targets = scrape_targets(prometheus_config)
    port = environment(compose["services"][MONITOR]).get("CALL_MONITOR_HTTP_PORT", "9469")
    assert targets["call-monitor"] == [f"{MONITOR}:{port}"]
    assert targets["livekit-server"] == [f"livekit-server:{livekit_config['prometheus']['port']}"]
    assert targets["livekit-sip"] == [f"livekit-sip:{sip_config['prometheus_port']}"]
    for job, addresses in targets.items():
        for address in addresses:
            host, _ = hostport(address)
            assert host == "localhost" or host in compose["services"], f"{job}: {address}"
    (alertmanagers,) = prometheus_config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert prometheus_config["rule_files"] == ["rules/*.yml"]


def test_the_log_shipper_labels_the_monitor_stream_and_nothing_per_call(
    compose: dict[str, Any],
) -> None:
    text = bind_mount(compose, "alloy", "/etc/alloy/config.alloy").read_text()
    assert alloy_label_problems(text) == []
    # Only the monitor's container, picked by the label Compose gives its service.
    assert f'"com.docker.compose.service={MONITOR}"' in text
    assert '"http://loki:3100/loki/api/v1/push"' in text
    assert any(
        m.source == "/var/run/docker.sock" and m.read_only
        for m in mounts("alloy", compose["services"]["alloy"])
    )


def test_loki_keeps_its_data_on_a_volume_and_listens_where_it_is_pushed_to(
    compose: dict[str, Any],
) -> None:
    config = load_yaml(bind_mount(compose, "loki", "/etc/loki/loki.yaml"))
    volumes = [m.target for m in mounts("loki", compose["services"]["loki"]) if m.kind == "volume"]
    storage = config["common"]["storage"]["filesystem"]
    for directory in [config["common"]["path_prefix"], *storage.values()]:
        assert any(PurePosixPath(directory).is_relative_to(volume) for volume in volumes)
    port = config["server"]["http_listen_port"]
    shipper = bind_mount(compose, "alloy", "/etc/alloy/config.alloy").read_text()
    assert f'"http://loki:{port}/loki/api/v1/push"' in shipper
    assert config["limits_config"]["retention_period"]
    assert config["compactor"]["retention_enabled"] is True


def test_the_label_check_rejects_a_per_call_label() -> None:
    good = 'x { labels = {service = "call-monitor"} }\nstage.labels {\n  values = {level = ""}\n}\n'
    assert alloy_label_problems(good) == []
    per_call = good.replace('values = {level = ""}', 'values = {level = "", call_id = ""}')
    assert alloy_label_problems(per_call) != []
    assert alloy_label_problems(good.replace("call-monitor", "monitor")) != []


# --- (d) promtool ------------------------------------------------------------------------


def test_promtool_accepts_the_config_with_the_rules_laid_out_as_in_the_container(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    promtool = system_tool("promtool", "prometheus")
    # Copy every file Prometheus gets to its path in the container, under tmp_path:
    # rule_files are resolved relative to the config file, as they are there.
    for mount in mounts("prometheus", compose["services"]["prometheus"]):
        if mount.kind != "bind":
            continue
        source = host_path(mount.source)
        destination = tmp_path / mount.target.lstrip("/")
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, destination)
    config = tmp_path / "etc/prometheus/prometheus.yml"
    done = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    rules = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
    assert f"SUCCESS: {len(rules)} rule files found" in output, output
    for rule in rules:
        assert f"rules/{rule.name}" in output, output


# --- alertmanager ----------------------------------------------------------------------


def rule_severities() -> set[str]:
    """The severity labels the project's alerting rules set."""
    severities = set()
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        for group in load_yaml(path).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    severities.add(rule.get("labels", {}).get("severity", ""))
    return severities


def alertmanager_problems(config: Mapping[str, Any], severities: Iterable[str]) -> list[str]:
    """Every route goes to a defined receiver, and each severity has a route of its own."""
    receivers = {receiver["name"] for receiver in config["receivers"]}

    def walk(route: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
        yield route
        for child in route.get("routes", []):
            yield from walk(child)

    routes = list(walk(config["route"]))
    problems = [
        f"route to undefined receiver {route['receiver']}"
        for route in routes
        if route.get("receiver", config["route"]["receiver"]) not in receivers
    ]
    matchers = {matcher for route in routes[1:] for matcher in route.get("matchers", [])}
    problems += [
        f"no route for severity={severity!r}"
        for severity in sorted(severities)
        if f'severity="{severity}"' not in matchers
    ]
    return problems


def test_alertmanager_routes_every_severity_of_the_rules(compose: dict[str, Any]) -> None:
    path = bind_mount(compose, "alertmanager", "/etc/alertmanager/alertmanager.yml")
    severities = rule_severities()
    assert severities, "no alert in prometheus/rules/*.yml"
    assert "" not in severities, "an alert without a severity label"
    assert alertmanager_problems(load_yaml(path), severities) == []
    amtool = system_tool("amtool", "prometheus-alertmanager")
    done = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alertmanager_check_rejects_unrouted_severities() -> None:
    config = {
        "route": {"receiver": "a", "routes": [{"receiver": "b", "matchers": ['severity="page"']}]},
        "receivers": [{"name": "a"}],
    }
    assert len(alertmanager_problems(config, ["page", "ticket"])) == 2


# --- (e) pinned images ------------------------------------------------------------------


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    assert image_problems(compose) == []
    assert compose["services"]["livekit-server"]["image"] == LIVEKIT_SERVER_IMAGE


def dockerfile_bases() -> list[str]:
    """The FROM images of the Dockerfile, build arguments resolved, stages left out."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    args = dict(arg.partition("=")[::2] for word, arg in instructions if word == "ARG")
    bases, stages = [], set()
    for word, rest in instructions:
        if word != "FROM":
            continue
        image, *alias = rest.split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), image)
        bases.append(image)
        if len(alias) == 2 and alias[0].upper() == "AS":
            stages.add(alias[1])
    return [base for base in bases if base not in stages]


def test_the_dockerfile_bases_are_tagged() -> None:
    bases = dockerfile_bases()
    assert bases, "no base image"
    assert image_problems({"services": {base: {"image": base} for base in bases}}) == []
    assert bases[-1] == "python:3.11-slim"  # the image that runs


def test_the_pin_check_rejects_floating_images() -> None:
    compose = {
        "services": {
            "a": {"image": "redis"},
            "b": {"image": "prom/prometheus:latest"},
            "c": {"image": "localhost:5000/thing"},
            "d": {},
            "ok1": {"image": "redis:7.4.10-alpine"},
            "ok2": {"image": "grafana/grafana@sha256:" + "0" * 64},
            "ok3": {"build": "."},
        }
    }
    assert [problem.split(":")[0] for problem in image_problems(compose)] == ["a", "b", "c", "d"]


# --- (f) published ports ------------------------------------------------------------------


def test_only_the_telephony_ports_are_published_beyond_loopback(compose: dict[str, Any]) -> None:
    assert port_problems(compose) == []
    published = {
        (name, port.published)
        for name, service in compose["services"].items()
        for port in ports(service)
    }
    for wanted in [("grafana", "3000"), ("prometheus", "9090"), ("livekit-server", "7880")]:
        assert wanted in published
    assert not ports(compose["services"]["redis"])
    assert not ports(compose["services"]["loki"])


def test_the_port_check_rejects_a_ui_on_every_interface() -> None:
    compose = {
        "services": {
            "grafana": {"ports": ["3000:3000", "0.0.0.0:3001:3001", "3002"]},
            "prometheus": {"ports": [{"target": 9090, "published": 9090}]},
            "livekit-sip": {"ports": ["5060:5060/udp"]},
            "ok": {
                "ports": ["127.0.0.1:9093:9093", {"target": 1, "published": 1, "host_ip": LOOPBACK}]
            },
        }
    }
    problems = port_problems(compose)
    assert all(problem.startswith(("grafana", "prometheus")) for problem in problems)
    assert len(problems) == 5  # 3002 twice: random host port, every interface


# --- (g) the monitor's environment -----------------------------------------------------


def test_the_monitor_gets_only_settings_it_knows(compose: dict[str, Any]) -> None:
    env = environment(compose["services"][MONITOR])
    assert monitor_env_problems(env) == []
    settings = load_settings({}, env)
    url = urlsplit(settings.livekit_url)
    assert (url.hostname, url.port) == ("livekit-server", 7880)
    assert settings.http_host == "0.0.0.0"
    assert settings.log_format == "json"  # what the log shipper parses
    # The journal is on a volume, so it outlives the container.
    assert settings.journal_path is not None
    volumes = [
        m.target for m in mounts(MONITOR, compose["services"][MONITOR]) if m.kind == "volume"
    ]
    assert any(
        PurePosixPath(volume) in PurePosixPath(settings.journal_path).parents for volume in volumes
    )
    published = {p.target for p in ports(compose["services"][MONITOR])}
    assert str(settings.http_port) in published


def test_the_environment_check_rejects_unknown_and_bad_settings() -> None:
    base = {"LIVEKIT_URL": "ws://x:7880", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s" * 32}
    assert monitor_env_problems(base) == []
    assert monitor_env_problems({**base, "CALL_MONITOR_JOURNAL_PATH": "/x"}) != []
    assert monitor_env_problems({**base, "LIVEKIT_WS_URL": "ws://x"}) != []
    assert monitor_env_problems({**base, "CALL_MONITOR_LOG_FORMAT": "xml"}) != []
    assert monitor_env_problems({**base, "PYTHONUNBUFFERED": "1"}) == []


# --- health and the image -----------------------------------------------------------------


def test_services_wait_only_for_healthchecks_that_exist(compose: dict[str, Any]) -> None:
    assert healthcheck_problems(compose) == []
    broken = {"services": {"a": {"depends_on": {"b": {"condition": "service_healthy"}}}, "b": {}}}
    assert healthcheck_problems(broken) != []


def test_the_image_runs_the_monitor_as_a_non_root_user_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    last = {word: rest for word, rest in instructions}
    assert any(word == "RUN" and "uv sync --frozen --no-dev" in rest for word, rest in instructions)
    assert last["USER"].split(":")[0] not in ("root", "0")
    healthcheck = last["HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[0] == "python"
    assert "/healthz" in command[-1]
    command_line = json.loads(last["ENTRYPOINT"]) + json.loads(last["CMD"])
    # No flags: they would win over the environment a deployment sets.
    assert command_line == ["call-monitor", "run"]
    assert "CALL_MONITOR_HTTP_HOST=0.0.0.0" in last["ENV"]
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignored[0] == "*"  # an allow-list: .env, .venv and .git stay out
    assert "!.env" not in ignored
