"""Runtime control through the admin API and the CLI: status, restart, scale."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import wait_for_sync
from tests.harness import Monoceros, processbin_exec, venv_env


def cli(m: Monoceros, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monoceros", *args,
         "--admin", f"127.0.0.1:{m.admin_port}"],
        capture_output=True, text=True, timeout=120, env=venv_env(),
    )


@pytest.fixture
def mono(tmp_path):
    pool = {"name": "pb", "replicas": 2, "exec": processbin_exec(),
            "args": ["--log-interval", "0", "--log-count", "1"],
            "signal_timeout": "2s"}
    m = Monoceros(tmp_path, {"supervisor": {"workers": [pool]}})
    m.wait_ready(2)
    yield m
    m.close()


def ids(m: Monoceros) -> list[str]:
    return sorted(w["id"] for w in m.ready_workers())


def test_scale_up_and_down(mono):
    result = cli(mono, "scale", "pb", "4")
    assert result.returncode == 0, result.stderr
    assert "started: pb-2, pb-3" in result.stdout
    wait_for_sync(lambda: ids(mono) == ["pb-0", "pb-1", "pb-2", "pb-3"])
    before = {w["id"]: w["pid"] for w in mono.ready_workers()}

    result = cli(mono, "scale", "pb", "1")
    assert result.returncode == 0, result.stderr
    assert "stopped: pb-1, pb-2, pb-3" in result.stdout
    wait_for_sync(lambda: len(mono.workers()) == 1)
    assert mono.workers()[0]["pid"] == before["pb-0"]  # nothing else restarted
    status, body = mono.get("/health")
    assert status == 200 and json.loads(body)["pools"]["pb"]["replicas"] == 1


def test_bad_requests_are_refused_with_a_reason(mono):
    result = cli(mono, "scale", "pb", "0")
    assert result.returncode == 2
    assert "replicas must be an integer >= 1" in result.stderr
    result = cli(mono, "scale", "nope", "2")
    assert result.returncode == 2 and "no pool named 'nope'" in result.stderr
    status, body = mono.post("/pools/pb/scale")
    assert status == 400 and b"replicas is required" in body
    assert len(mono.ready_workers()) == 2


def test_status_and_restart(mono):
    result = cli(mono, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["pb", "yes", "2/2"]
    assert sum(1 for line in lines if line.startswith("pb-")) == 2
    before = {w["pid"] for w in mono.ready_workers()}
    result = cli(mono, "restart", "pb")
    assert result.returncode == 0, result.stderr
    assert "pb: 2 workers replaced" in result.stdout
    assert not before & {w["pid"] for w in mono.ready_workers()}


def test_unreachable_admin_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "monoceros", "status", "--admin", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, env=venv_env(),
    )
    assert result.returncode == 4
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot reach the admin API" in result.stderr
