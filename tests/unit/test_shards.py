"""Static sharding by room: the owner of a room, the settings that name a replica's
shard, and what a replica does with what it does not own (webhooks, dial reports,
listings)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from aiohttp.test_utils import TestClient, TestServer

from monitor.client.dial import owner_url
from monitor.client.hook_token import DIAL, mint_hook_token
from monitor.core.shards import Shard, shard_of
from monitor.runtime.config import ConfigError, load_settings
from monitor.runtime.http import build_app
from monitor.runtime.reconcile import owned_rooms
from monitor.runtime.service import Monitor
from tests.unit.http_support import KEY, SECRET, participant_left_body, queued, sample, signed

ENV = {"LIVEKIT_URL": "ws://127.0.0.1:1", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET}


def test_a_rooms_owner_is_prometheus_hashmod_of_its_name() -> None:
    """The same vectors as Prometheus's own relabelling tests (hashmod, modulus 1000),
    so a relabelling rule and every replica agree on a room's owner."""
    assert shard_of("baz", 1000) == 976
    assert shard_of("foo\nbar", 1000) == 734


def test_rooms_spread_over_the_shards_and_each_has_one_owner() -> None:
    rooms = [f"call-{n}" for n in range(3000)]
    owners = Counter(shard_of(room, 3) for room in rooms)
    assert set(owners) == {0, 1, 2}
    assert min(owners.values()) > 900  # about a third each
    for room in rooms[:100]:
        assert [Shard(i, 3).owns(room) for i in range(3)].count(True) == 1
    assert all(Shard().owns(room) for room in rooms[:100])  # one shard owns all
    with pytest.raises(ValueError, match="not one of 0 to 2"):
        Shard(3, 3)


def test_the_shard_comes_from_the_setting_or_a_statefulset_pods_host_name() -> None:
    assert load_settings({}, ENV).owned == Shard(0, 1)
    given = load_settings({}, {**ENV, "CALL_MONITOR_SHARDS": "3", "CALL_MONITOR_SHARD": "2"})
    assert given.owned == Shard(2, 3)
    pod = load_settings({}, {**ENV, "CALL_MONITOR_SHARDS": "3", "HOSTNAME": "call-monitor-1"})
    assert pod.owned == Shard(1, 3)
    with pytest.raises(ConfigError, match="ends in no StatefulSet ordinal"):
        load_settings({}, {**ENV, "CALL_MONITOR_SHARDS": "3", "HOSTNAME": "laptop"})
    with pytest.raises(ConfigError, match="gives shard 3, not one of 0 to 2"):
        load_settings({}, {**ENV, "CALL_MONITOR_SHARDS": "3", "HOSTNAME": "call-monitor-3"})
    with pytest.raises(ConfigError, match="CALL_MONITOR_SHARD gives shard 5"):
        load_settings({}, {**ENV, "CALL_MONITOR_SHARDS": "2", "CALL_MONITOR_SHARD": "5"})


def sharded(shard: int, shards: int) -> Monitor:
    env = {**ENV, "CALL_MONITOR_SHARDS": str(shards), "CALL_MONITOR_SHARD": str(shard)}
    return Monitor(load_settings({"http_port": "0"}, env))


def rooms_of(monitor: Monitor) -> list[str]:
    return [getattr(event, "room", "") for event in queued(monitor)]


def owned_and_not(shard: Shard) -> tuple[str, str]:
    rooms = [f"call-{n}" for n in range(100)]
    return next(r for r in rooms if shard.owns(r)), next(r for r in rooms if not shard.owns(r))


async def test_a_replica_verifies_then_drops_webhooks_about_rooms_it_does_not_own() -> None:
    settings = load_settings(
        {"http_port": "0"}, {**ENV, "CALL_MONITOR_SHARDS": "2", "CALL_MONITOR_SHARD": "1"}
    )
    monitor = Monitor(settings)
    mine, theirs = owned_and_not(settings.owned)
    client = TestClient(TestServer(build_app(monitor)))
    await client.start_server()
    try:
        for room in (mine, theirs):
            hook = json.loads(participant_left_body())
            hook["event"] = "participant_joined"
            hook["room"] = {"name": room, "sid": "RM_1"}
            body = json.dumps(hook)
            answer = await client.post(
                "/webhook", data=body, headers={"Authorization": signed(body)}
            )
            assert answer.status == 200
        # Not ours, and not signed by our key: refused, not dropped as another's.
        body = json.dumps({"event": "participant_joined", "room": {"name": theirs}})
        forged = await client.post(
            "/webhook", data=body, headers={"Authorization": signed(body, "x" * 40)}
        )
        assert forged.status == 401
    finally:
        await client.close()
    assert rooms_of(monitor) == [mine]
    requests = "call_monitor_webhook_requests_total"
    assert sample(monitor, requests, {"result": "other_shard"}) == 1
    assert sample(monitor, requests, {"result": "ok"}) == 1


async def test_a_dial_report_for_another_shards_room_is_refused_with_its_owner() -> None:
    settings = load_settings(
        {"http_port": "0"}, {**ENV, "CALL_MONITOR_SHARDS": "2", "CALL_MONITOR_SHARD": "0"}
    )
    monitor = Monitor(settings)
    mine, theirs = owned_and_not(settings.owned)
    client = TestClient(TestServer(build_app(monitor)))
    await client.start_server()
    try:
        answers = {}
        for room in (mine, theirs):
            body = json.dumps(
                {"room": room, "participant_identity": "callee", "sip_status_code": 486}
            ).encode()
            token = mint_hook_token(KEY, SECRET, DIAL, body)
            answer = await client.post(
                "/dial", data=body, headers={"Authorization": f"Bearer {token}"}
            )
            answers[room] = (answer.status, await answer.json())
    finally:
        await client.close()
    assert answers[mine][0] == 202
    assert answers[theirs] == (421, {"error": "room belongs to shard 1 of 2"})
    assert rooms_of(monitor) == [mine]


def test_the_dial_hook_reaches_its_rooms_owner() -> None:
    template = "http://call-monitor-{shard}.call-monitor:9469/"
    for room in ("call-a", "call-b", "call-c"):
        assert (
            owner_url(template, room, 3)
            == f"http://call-monitor-{shard_of(room, 3)}.call-monitor:9469"
        )
    assert owner_url("http://monitor:9469", "call-a") == "http://monitor:9469"
    with pytest.raises(ValueError, match="must hold"):
        owner_url("http://monitor:9469", "call-a", 3)
    with pytest.raises(ValueError, match="1 or more"):
        owner_url("http://monitor-{shard}:9469", "call-a", 0)


def test_reconciliation_keeps_only_the_rooms_it_owns() -> None:
    """ListRooms is every replica's; a pass asks, and misses calls in, only its own."""
    from livekit import api

    shard = Shard(0, 2)
    mine, theirs = owned_and_not(shard)
    listed = [api.Room(name=mine, num_participants=1), api.Room(name=theirs, num_participants=1)]
    assert list(owned_rooms(listed, shard.owns)) == [mine]
    assert list(owned_rooms(listed, Shard().owns)) == [mine, theirs]
