"""The call-monitor command: replay output and exit statuses."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import main, open_journal
from monitor.runtime.config import load_settings
from tests import trace_journal

ENV = {
    "LIVEKIT_URL": "wss://lk.example.com",
    "LIVEKIT_API_KEY": "APIkey",
    "LIVEKIT_API_SECRET": "s3cr3t-value-that-must-not-show-up",
}


def test_replay_of_the_sample_prints_every_outcome_the_traces_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["replay", str(trace_journal.SAMPLE)]) == 0
    out = capsys.readouterr().out
    expected = [outcome for outcome in trace_journal.EXPECTED_OUTCOMES.values() if outcome]
    for outcome in set(expected):
        assert f"  {outcome:<14} {expected.count(outcome)}\n" in out
    assert "still open:" in out
    assert "+15551112222" not in out


def test_replay_json_unmasked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--json", "--show-numbers", str(trace_journal.SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 28
    assert "+15551112222" in out


def test_replay_of_a_missing_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "/nonexistent.jsonl"]) == 2
    assert capsys.readouterr().err == "call-monitor: replay: no such file: /nonexistent.jsonl\n"


def test_replay_with_unreadable_lines_exits_1_and_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_text(trace_journal.SAMPLE.read_text() + "oops\n")
    assert main(["replay", str(journal)]) == 1
    assert f"skipped {journal}:" in capsys.readouterr().err


def test_replay_masks_numbers_in_the_reasons_of_unreadable_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_text('{"v": 1, "type": "+1 (555) 123-4567"}\n')
    assert main(["replay", str(journal)]) == 1
    err = capsys.readouterr().err
    assert err == f"call-monitor: skipped {journal}:1: unknown event type '+1 (***) ***-4567'\n"
    assert main(["replay", "--show-numbers", str(journal)]) == 1
    assert "'+1 (555) 123-4567'" in capsys.readouterr().err


def test_config_prints_settings_without_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["config", "--http-port", "9100"]) == 0
    out = capsys.readouterr().out
    assert "http_port=9100\n" in out
    assert "livekit_api_secret=(set)\n" in out
    assert ENV["LIVEKIT_API_SECRET"] not in out


def test_installed_command_exits_2_with_one_line_for_a_bad_setting() -> None:
    env = {"PATH": "/usr/bin:/bin", **ENV, "CALL_MONITOR_HTTP_PORT": "port"}
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "call-monitor: CALL_MONITOR_HTTP_PORT must be an integer from 0 to 65535, got 'port'\n"
    )
    assert ENV["LIVEKIT_API_SECRET"] not in done.stdout + done.stderr


def run_monitor(settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`call-monitor run` with these settings; expected to stop on its own."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", "run"],
        env={"PATH": "/usr/bin:/bin", **ENV, **settings},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_port_in_use_is_a_one_line_error_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_monitor({"CALL_MONITOR_HTTP_PORT": str(port)})
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"call-monitor: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("journal", "why"),
    [
        ("{tmp}", "{tmp}: Is a directory"),
        (
            "{tmp}/file/journal.jsonl",
            "{tmp}/file/journal.jsonl: {tmp}/file is a file, not a folder",
        ),
        ("/dev/full", "/dev/full: is not a regular file (it could not be rotated)"),
    ],
)
def test_a_journal_path_that_cannot_be_written_is_a_one_line_error_at_start(
    tmp_path: Path, journal: str, why: str
) -> None:
    (tmp_path / "file").write_text("")
    done = run_monitor(
        {"CALL_MONITOR_HTTP_PORT": "0", "CALL_MONITOR_JOURNAL": journal.format(tmp=tmp_path)}
    )
    assert done.returncode == 2
    assert done.stderr == f"call-monitor: cannot write the journal {why.format(tmp=tmp_path)}\n"


def test_the_start_up_check_sets_a_cut_line_aside_and_writes_the_header(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_text('{"v":1,"type":"tick","at":1}\n{"v":1,"ty')
    settings = load_settings({"journal_path": str(journal), "instance": "m1"}, ENV)
    assert open_journal(settings) == 1
    assert open_journal(settings) == 0
    lines = journal.read_text().splitlines()
    assert [line[:25] for line in lines] == [
        '{"v":1,"type":"tick","at"',
        '{"v":1,"type":"header","s',
    ]


def test_config_reads_the_secret_from_its_file_and_never_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(ENV["LIVEKIT_API_SECRET"] + "\n")
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LIVEKIT_API_SECRET")
    assert main(["config", "--livekit-api-secret-file", str(secret_file)]) == 0
    out = capsys.readouterr().out
    assert "livekit_api_secret=(set)\n" in out
    assert f"livekit_api_secret_file={secret_file}\n" in out
    assert ENV["LIVEKIT_API_SECRET"] not in out


@pytest.mark.parametrize(
    ("env", "error"),
    [
        (
            {"LIVEKIT_URL": "https://monitor:hunter2@lk.example.com"},
            "LIVEKIT_URL must not hold a user or password (the API key and secret are used),"
            " got 'https://***@lk.example.com'",
        ),
        (
            {"LIVEKIT_API_SECRET": "hunter2-is-a-short-secret"},
            "LIVEKIT_API_SECRET must be at least 32 characters, as livekit-server requires",
        ),
        (
            {"LIVEKIT_API_SECRET_FILE": "/nonexistent/secret"},
            "LIVEKIT_API_SECRET and LIVEKIT_API_SECRET_FILE are both set: give one of them",
        ),
    ],
)
def test_run_stops_at_a_credential_it_cannot_use_without_showing_it(
    env: dict[str, str], error: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "run"],
        env={"PATH": "/usr/bin:/bin", **ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"call-monitor: {error}\n")
    assert "hunter2" not in done.stderr
