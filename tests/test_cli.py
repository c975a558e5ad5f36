"""The `monoceros` command end to end: real processes, real admin server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for_sync
from tests.harness import (
    Monoceros,
    group_members,
    pid_alive,
    plain_pool,
    venv_env,
    wait_gone,
)

ROOT = Path(__file__).resolve().parent.parent


def monoceros(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monoceros", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=venv_env(),
        **kw,
    )


pool = plain_pool


@pytest.fixture
def run(tmp_path):
    started: list[Monoceros] = []

    def start(*pools: dict, **kw) -> Monoceros:
        m = Monoceros(tmp_path, {"supervisor": {"workers": list(pools)}}, **kw)
        started.append(m)
        return m

    yield start
    for m in started:
        m.close()


def test_version():
    result = monoceros("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("monoceros ")


def test_missing_config_flag_is_a_usage_error():
    result = monoceros()
    assert result.returncode == 2
    assert "-c/--config" in result.stderr


@pytest.mark.parametrize(
    "example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml"))
)
def test_examples_validate(example):
    result = monoceros("-k", "-c", str(ROOT / "examples" / example))
    if "'ping' was not found" in result.stderr:
        pytest.skip("ping is not installed")
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def test_metrics_show_every_worker_running(run):
    m = run(pool(replicas=3, args=["--log-interval", "0", "--log-count", "1"]))
    m.wait_ready(3)
    wait_for_sync(lambda: m.metric("monoceros_workerpool_worker_state",
                                   pool="pb", state="running") == 3)
    assert m.metric("monoceros_supervisor_sigterm_received") == 0
    assert m.metric("monoceros_supervisor_proxy_mode") == 0
    status, body = m.get("/health")
    assert status == 200 and json.loads(body)["healthy"]
    for w in m.workers():
        assert m.metric("monoceros_workerpool_process_cpu_seconds_total",
                        pool="pb", worker=w["id"]) is not None
    m.signal(signal.SIGTERM)
    assert m.wait() == 0


def test_crash_loop_exits_with_pool_failed_status(run):
    m = run(pool(replicas=1, args=["--exit-after", "0.05", "--exit-code", "1"],
                 max_restarts=2, restart_backoff={"initial": "10ms", "max": "50ms"}))
    assert m.wait(timeout=30) == 3
    records = m.log_records()
    assert any(r.get("msg", "").startswith("pool failed") for r in records)


def test_sigterm_stops_every_worker_gracefully(run):
    m = run(pool(replicas=3, args=["--spawn-child"]))
    workers = m.wait_ready(3)
    pids = [w["pid"] for w in workers]
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    wait_gone(pids, timeout=1)


def test_sigkilled_monoceros_leaves_no_worker_behind(run, tmp_path):
    m = run(pool(replicas=3, args=["--spawn-child"]))
    workers = m.wait_ready(3)
    pids = [w["pid"] for w in workers]
    children = wait_for_sync(
        lambda: [c for pid in pids for c in group_members(pid) if c != pid]
    )
    m.signal(signal.SIGKILL)
    m.wait()
    elapsed = wait_gone(pids + children, timeout=1.0)
    assert elapsed < 1.0


def test_killed_worker_is_replaced_and_counted(run):
    m = run(pool(replicas=2))
    workers = m.wait_ready(2)
    victim = workers[0]
    import os

    os.kill(victim["pid"], signal.SIGKILL)
    wait_for_sync(lambda: m.metric("monoceros_workerpool_restarts_total",
                                   pool="pb", worker_type="worker") == 1)
    after = m.wait_ready(2)
    assert victim["pid"] not in {w["pid"] for w in after}
    assert victim["id"] in {w["id"] for w in after}
    assert not pid_alive(victim["pid"])


def test_giant_lines_and_invalid_utf8_pass_through(run):
    # 512 KiB of random bytes, hex-encoded: a 1 MiB line.
    big = pool("big", replicas=1, args=["--log-size", str(512 * 1024),
                                         "--log-interval", "0", "--log-count", "2"])
    bad = pool("bad", replicas=1, args=["--log-invalid-utf8", "--log-interval", "0",
                                         "--log-count", "3"])
    m = run(big, bad)
    m.wait_ready(2)

    def seen():
        records = m.log_records()
        long = [r for r in records if len(r.get("worker_info_msg", "")) == 1 << 20]
        escaped = [r for r in records
                   if r.get("pool") == "bad" and "\\x" in r.get("worker_info_msg", "")]
        return len(long) >= 2 and escaped

    wait_for_sync(seen, timeout=15)
    assert m.metric("monoceros_workerpool_restarts_total",
                    pool="big", worker_type="worker") == 0


def test_sighup_rolls_every_worker(run):
    m = run(pool(replicas=3))
    before = {w["pid"] for w in m.wait_ready(3)}
    m.signal(signal.SIGHUP)
    wait_for_sync(lambda: len(ws := m.ready_workers()) == 3
                  and not before & {w["pid"] for w in ws}, timeout=20)
    assert m.metric("monoceros_workerpool_restart_reasons_total",
                    pool="pb", worker_type="worker", reason="manual") == 3


def test_admin_restart_endpoint(run):
    m = run(pool(replicas=2))
    before = {w["pid"] for w in m.wait_ready(2)}
    status, body = m.post("/pools/pb/restart")
    assert status == 200 and json.loads(body)["replaced"] == 2
    assert not before & {w["pid"] for w in m.ready_workers()}
    status, _ = m.post("/pools/nope/restart")
    assert status == 404
    status, _ = m.get("/pools/pb/restart")
    assert status == 405


def test_admin_port_in_use_is_a_startup_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"admin: {{port: {port}}}\n"
            "supervisor: {workers: [{name: a, exec: /bin/sh, args: [-c, 'sleep 9']}]}\n"
        )
        result = monoceros("-c", str(cfg))
    assert result.returncode == 4
    assert "cannot listen" in result.stderr


def _cases():
    from tests.config_cases import INVALID_CASES

    return [(i, *case) for i, case in enumerate(INVALID_CASES)]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[1])
def test_invalid_configs_give_one_line_and_exit_2(case, tmp_path):
    number, case_id, text, field_path = case
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    # Running and validating share the loader: try both on a sample only.
    for flags in (["-k"], []) if number % 8 == 0 else (["-k"],):
        result = monoceros(*flags, "-c", str(path), cwd=tmp_path)
        assert result.returncode == 2, (case_id, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert field_path in lines[0]


def test_second_sigterm_kills_what_is_left_at_once(run):
    import time

    m = run(pool(replicas=2, args=["--ignore-signals"], signal_timeout="30s"))
    pids = [w["pid"] for w in m.wait_ready(2)]
    m.signal(signal.SIGTERM)
    wait_for_sync(lambda: m.metric("monoceros_supervisor_sigterm_received") == 1)
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5  # not the 30 s signal_timeout
    wait_gone(pids, timeout=1)


def test_stray_signals_are_logged_not_fatal(run):
    m = run(pool(replicas=1))
    before = [w["pid"] for w in m.wait_ready(1)]
    strays = [signal.SIGUSR1, signal.SIGPWR, signal.SIGIO, signal.SIGRTMIN + 1,
              signal.SIGTRAP, signal.SIGALRM]
    for sig in strays:
        m.signal(sig)
    wait_for_sync(lambda: sum(r.get("msg") == "signal ignored"
                              for r in m.log_records()) == len(strays))
    assert m.proc.poll() is None
    assert [w["pid"] for w in m.ready_workers()] == before


def test_graceful_stop_ends_setsid_grandchildren_too(run):
    # Each worker leaves a child in its own session and exits: the children
    # are re-parented to Monoceros, out of reach of any group signal.
    m = run(pool(replicas=2, args=["--spawn-child-setsid", "--child-lifetime", "600"],
                 max_restarts=50))
    wait_for_sync(lambda: (m.metric("monoceros_workerpool_restarts_total",
                                    pool="pb", worker_type="worker") or 0) >= 2)

    def adopted():
        path = f"/proc/{m.proc.pid}/task/{m.proc.pid}/children"
        return [
            pid for pid in map(int, Path(path).read_text().split())
            if b"lifetime = float" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]

    grandchildren = wait_for_sync(lambda: len(a := adopted()) >= 2 and a)
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    wait_gone(grandchildren, timeout=1)


def test_admin_errors_are_json(run):
    m = run(pool(replicas=1))
    m.wait_ready(1)
    for status, body in (m.get("/nope"), m.get("/reload")):
        assert status in (404, 405)
        assert "error" in json.loads(body)
