"""Proxy mode end to end: a real Envoy fed over xDS, real workers, real load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_for_sync
from tests.harness import Monoceros, pid_alive, proxy_pool, url, venv_env, wait_gone
from tests.load import Load

pytestmark = pytest.mark.envoy


@pytest.fixture
def proxy(tmp_path):
    started: list[Monoceros] = []

    def start(*pools: dict) -> Monoceros:
        config = {
            "xds": {"socket": str(tmp_path / "xds.sock")},
            "supervisor": {"workers": list(pools)},
        }
        m = Monoceros(tmp_path, config)
        started.append(m)
        m.wait_ready(sum(p["replicas"] for p in pools), timeout=30)
        return m

    yield start
    for m in started:
        m.close()


def get(address: str, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(address, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, resp.headers["X-Worker-Id"]


def envoy_pid(m: Monoceros) -> int | None:
    children = Path(f"/proc/{m.proc.pid}/task/{m.proc.pid}/children").read_text()
    for pid in children.split():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"envoy") for part in cmd[:1]):
            return int(pid)
    return None


def cluster_hosts(pool: dict) -> dict[int, str]:
    admin = pool["server"]["admin_port"]
    with urllib.request.urlopen(
        f"http://127.0.0.1:{admin}/clusters?format=json", timeout=5
    ) as resp:
        data = json.load(resp)
    hosts = {}
    for cluster in data.get("cluster_statuses", []):
        if cluster["name"] != pool["name"]:
            continue
        for host in cluster.get("host_statuses", []):
            port = host["address"]["socket_address"]["port_value"]
            hosts[port] = host["health_status"].get("eds_health_status", "HEALTHY")
    return hosts


def test_requests_reach_every_worker_round_robin(proxy):
    pool = proxy_pool()
    m = proxy(pool)
    seen = {}
    for _ in range(80):
        status, worker = get(url(pool))
        assert status == 200
        seen[worker] = seen.get(worker, 0) + 1
    assert len(seen) == 4, seen
    assert min(seen.values()) >= 10, seen
    assert m.metric("monoceros_supervisor_proxy_mode") == 1


def test_ring_hash_keeps_a_session_on_one_worker(proxy):
    pool = proxy_pool(server={"load_balancer_algorithm": "RING_HASH"})
    proxy(pool)
    for key in ("alice", "bob", "carol"):
        workers = {get(url(pool), {"x-session-key": key})[1] for _ in range(10)}
        assert len(workers) == 1, (key, workers)


@pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive", "close"])
def test_rolling_restart_under_load_fails_nothing(proxy, keepalive):
    pool = proxy_pool(server={"load_balancer_algorithm": "LEAST_REQUEST"})
    m = proxy(pool)
    envoy = envoy_pid(m)
    before = {w["pid"] for w in m.ready_workers()}
    with Load(url(pool), concurrency=8, keepalive=keepalive, max_seconds=60) as load:
        wait_for_sync(lambda: load.snapshot()[0] > 200)
        m.signal(signal.SIGHUP)
        wait_for_sync(
            lambda: len(ws := m.ready_workers()) == 4
            and not before & {w["pid"] for w in ws},
            timeout=40,
        )
        done = load.snapshot()[0]
        wait_for_sync(lambda: load.snapshot()[0] > done + 200)
    tally = load.tally
    assert tally.failed == 0, (tally.statuses, tally.errors)
    assert tally.ok > 400
    assert envoy_pid(m) == envoy
    assert len(tally.workers) >= 5  # old and new workers both served


def test_sigkilled_worker_under_load(proxy):
    pool = proxy_pool()
    m = proxy(pool)
    victim = m.ready_workers()[1]
    with Load(url(pool), concurrency=8, max_seconds=60) as load:
        wait_for_sync(lambda: load.snapshot()[0] > 200)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for_sync(lambda: victim["pid"] not in {w["pid"] for w in m.workers()})
        wait_for_sync(
            lambda: len(ws := m.ready_workers()) == 4
            and victim["port"] in {w["port"] for w in ws},
            timeout=20,
        )
        wait_for_sync(lambda: cluster_hosts(pool).get(victim["port"]) == "HEALTHY")
        done = load.snapshot()[0]
        wait_for_sync(lambda: load.snapshot()[0] > done + 200)
    tally = load.tally
    assert tally.failed == 0, (tally.statuses, tally.errors)


def test_envoy_sigkilled_is_restarted_with_full_config(proxy):
    pool = proxy_pool(replicas=2)
    m = proxy(pool)
    old = envoy_pid(m)
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    wait_for_sync(lambda: (pid := envoy_pid(m)) and pid != old)

    def serving():
        try:
            return get(url(pool))[0] == 200
        except OSError:
            return False

    wait_for_sync(serving, timeout=10)
    assert time.monotonic() - t0 < 10  # no 15 s initial fetch timeout
    wait_for_sync(lambda: len(cluster_hosts(pool)) == 2)
    assert m.metric("monoceros_workerpool_restarts_total",
                    pool="web", worker_type="proxy") == 1


def test_shutdown_under_load_leaves_nothing(proxy):
    pool = proxy_pool()
    m = proxy(pool)
    pids = [w["pid"] for w in m.ready_workers()] + [envoy_pid(m)]
    with Load(url(pool), concurrency=8, max_seconds=60) as load:
        wait_for_sync(lambda: load.snapshot()[0] > 200)
        m.signal(signal.SIGTERM)
        assert m.wait(timeout=30) == 0
    wait_gone(pids, timeout=2)
    # Requests after the drain began may be refused; none is cut mid-answer.
    assert "ClientPayloadError" not in load.tally.errors, load.tally.errors


def test_xds_status_shows_every_type_acked(proxy, tmp_path):
    pool = proxy_pool(replicas=2)
    proxy(pool)
    result = subprocess.run(
        [sys.executable, "-m", "monoceros", "xds", "status",
         "--server", f"unix:{tmp_path / 'xds.sock'}"],
        capture_output=True, text=True, timeout=30, env=venv_env(),
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    types = {row[2]: row for row in rows}
    assert set(types) == {"CDS", "EDS", "LDS", "RDS"}, result.stdout
    for row in rows:
        assert row[3] == row[4], result.stdout  # version sent == version ACKed


def test_listener_port_taken_is_a_startup_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        pool = proxy_pool(replicas=1)
        pool["server"]["listener_port"] = s.getsockname()[1]
        m = Monoceros(tmp_path, {"xds": {"socket": str(tmp_path / "x.sock")},
                                 "supervisor": {"workers": [pool]}})
        try:
            assert m.wait(timeout=40) == 4
        finally:
            m.close()
    assert b"rejected the listener" in m.stderr()
    assert not pid_alive(m.proc.pid)


def test_scale_under_load_joins_and_drains_through_envoy(proxy):
    pool = proxy_pool(replicas=2)
    m = proxy(pool)
    with Load(url(pool), concurrency=6, max_seconds=60) as load:
        wait_for_sync(lambda: load.snapshot()[0] > 100)
        status, _ = m.post("/pools/web/scale?replicas=4")
        assert status == 200
        wait_for_sync(lambda: sorted(cluster_hosts(pool).values())
                      == ["HEALTHY"] * 4)
        wait_for_sync(lambda: len(load.tally.workers) >= 4)  # each one served
        status, _ = m.post("/pools/web/scale?replicas=1")
        assert status == 200
        wait_for_sync(lambda: len(cluster_hosts(pool)) == 1)
        done = load.snapshot()[0]
        wait_for_sync(lambda: load.snapshot()[0] > done + 100)
    assert load.tally.failed == 0, (load.tally.statuses, load.tally.errors)
    assert len(load.tally.workers) == 4


def test_grpc_pool_is_balanced_per_request_and_restarts_cleanly(proxy):
    import threading

    import grpc

    examples = Path(__file__).resolve().parent.parent / "examples"
    pool = proxy_pool(name="rpc", replicas=3, server={"protocol": "grpc"})
    pool["exec"] = sys.executable
    pool["args"] = [str(examples / "grpc_worker.py"), "--grace", "2"]
    m = proxy(pool)
    target = f"127.0.0.1:{pool['server']['listener_port']}"
    answers: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def call_loop():
        with grpc.insecure_channel(target) as channel:  # one HTTP/2 connection
            who = channel.unary_unary("/monoceros.example.Echo/Who")
            while not stop.is_set():
                try:
                    worker = who(b"", timeout=5).decode()
                    answers[worker] = answers.get(worker, 0) + 1
                except grpc.RpcError as exc:
                    failures.append(str(exc.code()))

    caller = threading.Thread(target=call_loop)
    caller.start()
    try:
        wait_for_sync(lambda: len(answers) == 3, timeout=15)
        before = {w["pid"] for w in m.ready_workers()}
        m.signal(signal.SIGHUP)
        wait_for_sync(lambda: len(ws := m.ready_workers()) == 3
                      and not before & {w["pid"] for w in ws}, timeout=60)
    finally:
        stop.set()
        caller.join(30)
    assert failures == []
    assert sum(answers.values()) > 100


def test_worker_never_ready_is_restarted_and_counted(tmp_path):
    pool = proxy_pool(replicas=1, args=["--fail-health"],
                      server={"ready_timeout": "300ms",
                              "health_check_interval": "100ms"})
    pool["max_restarts"] = 2
    pool["restart_backoff"] = {"initial": "10ms", "max": "20ms"}
    m = Monoceros(tmp_path, {"xds": {"socket": str(tmp_path / "x.sock")},
                             "supervisor": {"workers": [pool]}})
    try:
        assert m.wait(timeout=60) == 3  # the budget ran out: the pool failed
    finally:
        m.close()
    records = m.log_records()
    assert sum(r.get("msg") == "worker did not become ready in time: restarting it"
               for r in records) == 3


def test_envoy_admin_port_taken_by_another_envoy(proxy, tmp_path):
    pool = proxy_pool(replicas=1)
    first = proxy(pool)
    other = proxy_pool(replicas=1)
    other["server"]["admin_port"] = pool["server"]["admin_port"]
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = Monoceros(second_dir, {"xds": {"socket": str(second_dir / "x.sock")},
                                    "supervisor": {"workers": [other]}})
    try:
        assert second.wait(timeout=60) == 4
    finally:
        second.close()
    assert b"served by another Envoy" in second.stderr()
    # The first instance's Envoy was neither drained nor stopped.
    assert get(url(pool))[0] == 200
    assert first.proc.poll() is None
