"""The Helm chart (charts/call-monitor), rendered by a real `helm template` for 1 and 3
shards and checked against what the monitor itself reads.

No cluster is needed: what Kubernetes would do with the manifests is checked where the
chart and the monitor meet. The pods' environment is fed to the monitor's own settings
loader under each pod's host name, so each replica must come out as its own shard;
the notes' webhook URLs must be the pods' DNS names; the PrometheusRule and the
dashboards' ConfigMaps must be the repository's rule files and dashboards as they are.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.client.dial import owner_url
from monitor.core.shards import shard_of
from monitor.runtime.config import ConfigError, load_settings
from stack.build import ensure_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "call-monitor"
NAMESPACE = "telephony"
RELEASE = "calls"
API_KEY = "chart-test-key"
API_SECRET = "chart-test-secret-that-must-not-leak"
BASE_VALUES: dict[str, Any] = {
    "livekit": {"url": "wss://livekit.telephony.svc:7880", "apiKey": API_KEY},
}

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm()


def _values(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = json.loads(json.dumps(BASE_VALUES))
    values["livekit"]["apiSecret"] = API_SECRET
    for key, value in overrides.items():
        values[key] = value
    return values


def _helm(helm: Path, tmp_path: Path, command: list[str], values: Mapping[str, Any]) -> str:
    """Run helm on the chart with `values`; return stdout, or fail with its stderr."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(dict(values)))
    release = [] if command[0] == "lint" else [RELEASE]
    argv = [str(helm), *command, *release, str(CHART), "-n", NAMESPACE, "-f", str(values_file)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise HelmFailed(done.stderr)
    return done.stdout


class HelmFailed(Exception):
    """helm refused the chart or its values; the message is its stderr."""


def render(helm: Path, tmp_path: Path, values: Mapping[str, Any]) -> list[Manifest]:
    out = _helm(helm, tmp_path, ["template"], values)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def notes(helm: Path, tmp_path: Path, values: Mapping[str, Any]) -> str:
    """The chart's NOTES.txt as `helm install` prints it (client-side dry run)."""
    out = _helm(helm, tmp_path, ["install", "--dry-run=client"], values)
    return out.split("NOTES:\n", 1)[1]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} rendered"
    return found[0]


def container(statefulset: Manifest) -> Manifest:
    (only,) = statefulset["spec"]["template"]["spec"]["containers"]
    result: Manifest = only
    return result


def pod_environment(manifests: list[Manifest], pod_name: str, secret_dir: Path) -> dict[str, str]:
    """The environment the kubelet would give pod `pod_name`: values, the Secret's
    keys resolved, the secret file written where the Secret's volume puts it (here
    under `secret_dir`), and HOSTNAME, the pod's name."""
    statefulset = one(manifests, "StatefulSet")
    secret = one(manifests, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    env = {"HOSTNAME": pod_name}
    for var in container(statefulset)["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[var["name"]] = data[ref["key"]]
    # The secret volume: its items put a key at a path under the mount.
    spec = statefulset["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container(statefulset)["volumeMounts"]}
    for volume in spec["volumes"]:
        if "secret" not in volume:
            continue
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        for item in volume["secret"]["items"]:
            in_pod = f"{mounts[volume['name']]}/{item['path']}"
            local = secret_dir / in_pod.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(data[item["key"]])
            for name, value in env.items():
                if value == in_pod:
                    env[name] = str(local)
    return env


def _webhook_urls(notes_text: str) -> list[str]:
    """The `webhook:` block the notes print for livekit-server's config, parsed."""
    block = re.search(r"^webhook:\n(?:  .*\n)+", notes_text, re.MULTILINE)
    assert block, notes_text
    config = yaml.safe_load(block.group(0))
    urls: list[str] = config["webhook"]["urls"]
    return urls


@pytest.mark.parametrize("shards", [1, 3])
def test_each_pod_is_its_own_shard_by_its_name(helm: Path, tmp_path: Path, shards: int) -> None:
    manifests = render(helm, tmp_path, _values(shards=shards))
    statefulset = one(manifests, "StatefulSet")
    assert statefulset["spec"]["replicas"] == shards
    # Parallel: a replica that is not ready must not keep the others from starting.
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    name = statefulset["metadata"]["name"]
    for ordinal in range(shards):
        env = pod_environment(manifests, f"{name}-{ordinal}", tmp_path / f"pod-{ordinal}")
        settings = load_settings(environ=env)
        assert (settings.shards, settings.shard) == (shards, ordinal)
        assert settings.livekit_api_key == API_KEY
        assert settings.livekit_api_secret == API_SECRET
        assert settings.livekit_url == BASE_VALUES["livekit"]["url"]
        assert (settings.http_host, settings.http_port) == ("0.0.0.0", 9469)
        assert settings.metrics_port is None  # /metrics and /readyz on the pod's address
        assert settings.journal_path is not None
    if shards > 1:
        # A pod beyond the shard count (replicas edited by hand) refuses to start.
        env = pod_environment(manifests, f"{name}-{shards}", tmp_path / "extra")
        with pytest.raises(ConfigError, match=f"gives shard {shards}, not one of 0 to"):
            load_settings(environ=env)


@pytest.mark.parametrize("shards", [1, 3])
def test_webhook_urls_in_the_notes_are_the_pods_dns_names(
    helm: Path, tmp_path: Path, shards: int
) -> None:
    values = _values(shards=shards)
    manifests = render(helm, tmp_path, values)
    statefulset = one(manifests, "StatefulSet")
    service = one(manifests, "Service")
    name = statefulset["metadata"]["name"]
    # The pods' DNS names come from the headless Service the StatefulSet names.
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container_port,) = container(statefulset)["ports"]
    assert port["targetPort"] == container_port["name"]

    text = notes(helm, tmp_path, values)
    urls = _webhook_urls(text)
    service_name = service["metadata"]["name"]
    assert urls == [
        f"http://{name}-{i}.{service_name}.{NAMESPACE}.svc.cluster.local:{port['port']}/webhook"
        for i in range(shards)
    ]
    # The dial hook's URL, as the notes print it, reaches the owner of each room.
    template = re.search(r'monitor_url="([^"]+)"', text)
    assert template
    for room in (f"call-{n}" for n in range(30)):
        owner = shard_of(room, shards)
        assert owner_url(template.group(1), room, shards) + "/webhook" == urls[owner]


def test_each_replica_keeps_its_journal_on_a_volume_of_its_own(helm: Path, tmp_path: Path) -> None:
    manifests = render(helm, tmp_path, _values(shards=3))
    statefulset = one(manifests, "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container(statefulset)["volumeMounts"]}
    env = {v["name"]: v.get("value") for v in container(statefulset)["env"]}
    assert env["CALL_MONITOR_JOURNAL"].startswith(mounts[claim["metadata"]["name"]] + "/")
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"

    # Without persistence: an emptyDir, which outlives a container restart only.
    manifests = render(helm, tmp_path, _values(shards=3, persistence={"enabled": False}))
    statefulset = one(manifests, "StatefulSet")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["journal"]


def test_the_secret_shows_only_in_the_secret(helm: Path, tmp_path: Path) -> None:
    out = _helm(helm, tmp_path, ["template"], _values(shards=3))
    assert API_SECRET not in out
    encoded = base64.b64encode(API_SECRET.encode()).decode()
    manifests = [m for m in yaml.safe_load_all(out) if m]
    assert [m["kind"] for m in manifests if encoded in json.dumps(m)] == ["Secret"]
    statefulset = one(manifests, "StatefulSet")
    names = {v["name"] for v in container(statefulset)["env"]}
    assert "LIVEKIT_API_SECRET" not in names  # a file, not a variable


def test_an_existing_secret_is_used_and_none_is_made(helm: Path, tmp_path: Path) -> None:
    values = _values(shards=3)
    values["livekit"] = {"url": "ws://lk:7880", "existingSecret": "livekit-keys"}
    manifests = render(helm, tmp_path, values)
    assert not [m for m in manifests if m["kind"] == "Secret"]
    statefulset = one(manifests, "StatefulSet")
    refs = [
        v["valueFrom"]["secretKeyRef"]["name"]
        for v in container(statefulset)["env"]
        if "valueFrom" in v
    ]
    volumes = statefulset["spec"]["template"]["spec"]["volumes"]
    refs += [v["secret"]["secretName"] for v in volumes if "secret" in v]
    assert refs == ["livekit-keys", "livekit-keys"]


def test_the_pods_run_unprivileged_without_an_api_token(helm: Path, tmp_path: Path) -> None:
    statefulset = one(render(helm, tmp_path, _values()), "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    # The image's user (Dockerfile), so the journal volume is writable through fsGroup.
    uid = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert pod["securityContext"]["fsGroup"] == int(uid.group(1))
    assert pod["automountServiceAccountToken"] is False
    security = container(statefulset)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    probes = {
        k: container(statefulset)[k]["httpGet"]["path"]
        for k in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert probes == {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }


def _monitoring_values(shards: int) -> dict[str, Any]:
    return _values(
        shards=shards,
        serviceMonitor={"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        prometheusRule={"enabled": True},
        dashboards={"enabled": True},
    )


def _job_matchers(groups: list[dict[str, Any]]) -> Iterator[str]:
    for group in groups:
        for rule in group["rules"]:
            yield from re.findall(r'job="([^"]*)"', rule["expr"])


@pytest.mark.parametrize("shards", [1, 3])
def test_prometheus_scrapes_every_replica_as_the_alerts_expect(
    helm: Path, tmp_path: Path, shards: int
) -> None:
    manifests = render(helm, tmp_path, _monitoring_values(shards))
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    jobs = {r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"}
    rule = one(manifests, "PrometheusRule")
    matched = set(_job_matchers(rule["spec"]["groups"]))
    assert matched  # the health alerts select the monitor's job
    assert matched == jobs


def test_the_rules_are_the_repositorys_rule_files(helm: Path, tmp_path: Path) -> None:
    rule = one(render(helm, tmp_path, _monitoring_values(3)), "PrometheusRule")
    shipped = []
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        shipped += yaml.safe_load(path.read_text())["groups"]
    key = lambda group: group["name"]  # noqa: E731
    assert sorted(rule["spec"]["groups"], key=key) == sorted(shipped, key=key)


def test_the_dashboards_are_the_repositorys_for_the_sidecar(helm: Path, tmp_path: Path) -> None:
    manifests = render(helm, tmp_path, _monitoring_values(3))
    maps = [m for m in manifests if m["kind"] == "ConfigMap"]
    shipped = {p.name: json.loads(p.read_text()) for p in (ROOT / "dashboards").glob("*.json")}
    assert shipped
    rendered = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"]["grafana_folder"] == "LiveKit calls"
        assert len(config_map["metadata"]["name"]) <= 63
        ((file_name, text),) = config_map["data"].items()
        rendered[file_name] = json.loads(text)
    assert rendered == shipped


def test_monitoring_objects_are_off_by_default(helm: Path, tmp_path: Path) -> None:
    kinds = sorted(m["kind"] for m in render(helm, tmp_path, _values()))
    assert kinds == [
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]


def test_a_long_name_keeps_the_ordinal_the_shard_comes_from(helm: Path, tmp_path: Path) -> None:
    manifests = render(helm, tmp_path, _values(shards=3, fullnameOverride="m" * 80))
    statefulset = one(manifests, "StatefulSet")
    name = statefulset["metadata"]["name"]
    pod = f"{name}-2"
    assert len(pod) <= 63  # a pod's host name is a DNS label
    settings = load_settings(environ=pod_environment(manifests, pod, tmp_path / "pod"))
    assert settings.shard == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"livekit": {"apiKey": "k", "apiSecret": "s"}}, "/livekit/url"),
        ({"livekit": {"url": "livekit:7880", "apiKey": "k", "apiSecret": "s"}}, "/livekit/url"),
        ({"shards": 0}, "/shards"),
        ({"shards": "3"}, "/shards"),
        ({"shards": 1.5}, "/shards"),
        ({"livekit": {"url": "ws://lk:7880"}}, "livekit.existingSecret"),
        ({"env": {"CALL_MONITOR_SHARD": "1"}}, "CALL_MONITOR_SHARD"),
        ({"env": {"CALL_MONITOR_METRICS_PORT": "9470"}}, "CALL_MONITOR_METRICS_PORT"),
        ({"env": {"HOSTNAME": "monitor-0"}}, "HOSTNAME"),
    ],
)
def test_bad_values_are_refused_with_the_reason(
    helm: Path, tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmFailed, match=message):
        render(helm, tmp_path, _values(**overrides))


def test_extra_settings_reach_the_monitor(helm: Path, tmp_path: Path) -> None:
    # As a values file gives them: numbers arrive in templates as floats.
    extra = {
        "CALL_MONITOR_ROOM_MODE": "whole_call",
        "CALL_MONITOR_SETTLE_SECONDS": 1.5,
        "CALL_MONITOR_JOURNAL_MAX_BYTES": 67108864,
        "CALL_MONITOR_MASK_NUMBERS": False,
    }
    manifests = render(helm, tmp_path, _values(env=extra))
    name = one(manifests, "StatefulSet")["metadata"]["name"]
    settings = load_settings(environ=pod_environment(manifests, f"{name}-0", tmp_path / "p"))
    assert settings.room_mode == "whole_call"
    assert settings.settle_seconds == 1.5
    assert settings.journal_max_bytes == 67108864
    assert settings.mask_numbers is False


def test_a_drain_can_move_replicas_that_are_not_ready(helm: Path, tmp_path: Path) -> None:
    # Every replica is unready when livekit-server's API does not answer them.
    budget = one(render(helm, tmp_path, _values(shards=3)), "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_helm_lint_passes(helm: Path, tmp_path: Path) -> None:
    _helm(helm, tmp_path, ["lint", "--strict"], _monitoring_values(3))
    # The values chart-testing lints with.
    ci_values = yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text())
    _helm(helm, tmp_path, ["lint", "--strict"], ci_values)
    assert one(render(helm, tmp_path, ci_values), "StatefulSet")["spec"]["replicas"] == 1
