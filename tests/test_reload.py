"""Live reload: SIGHUP or `monoceros reload` applies a changed file in place."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest
import yaml

from tests.conftest import free_port, wait_for_sync
from tests.harness import Monoceros, processbin_exec, proxy_pool, url, venv_env
from tests.load import Load
from tests.test_proxy import cluster_hosts, envoy_pid


def pb_pool(name="pb", replicas=2, args=(), **kw) -> dict:
    return {"name": name, "replicas": replicas, "exec": processbin_exec(),
            "args": ["--log-interval", "0", "--log-count", "1", *args],
            "signal_timeout": "2s", **kw}


class Reloadable:
    def __init__(self, tmp_path, config: dict):
        self.config = config
        self.m = Monoceros(tmp_path, config)

    def write(self) -> None:
        self.m.config_path.write_text(yaml.safe_dump(self.config))

    def reload(self, *, admin_port: int | None = None) -> subprocess.CompletedProcess:
        self.write()
        return subprocess.run(
            [sys.executable, "-m", "monoceros", "reload",
             "--admin", f"127.0.0.1:{admin_port or self.m.admin_port}"],
            capture_output=True, text=True, timeout=180, env=venv_env(),
        )

    def pids(self, pool: str | None = None) -> dict[str, int]:
        return {w["id"]: w["pid"] for w in self.m.ready_workers(pool)}


@pytest.fixture
def reloadable(tmp_path):
    made: list[Reloadable] = []

    def make(*pools: dict, **top) -> Reloadable:
        r = Reloadable(tmp_path, {"supervisor": {"workers": list(pools)}, **top})
        made.append(r)
        r.m.wait_ready(sum(p["replicas"] for p in pools), timeout=30)
        return r

    yield make
    for r in made:
        r.m.close()


def test_scale_through_the_file(reloadable):
    r = reloadable(pb_pool(replicas=2))
    first = r.pids()
    r.config["supervisor"]["workers"][0]["replicas"] = 4
    result = r.reload()
    assert result.returncode == 0, result.stderr
    assert "pb: scaled 2 -> 4" in result.stdout
    wait_for_sync(lambda: len(r.pids()) == 4)
    r.config["supervisor"]["workers"][0]["replicas"] = 1
    assert r.reload().returncode == 0
    wait_for_sync(lambda: len(r.m.workers()) == 1)
    assert r.pids() == {"pb-0": first["pb-0"]}


def test_invalid_file_is_refused_and_nothing_changes(reloadable):
    r = reloadable(pb_pool(replicas=2))
    before = r.pids()
    r.config["supervisor"]["workers"][0]["replica"] = 3
    result = r.reload()
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "did you mean 'replicas'" in result.stderr
    r.m.config_path.write_text("supervisor: [unclosed\n")
    r.m.signal(signal.SIGHUP)
    wait_for_sync(lambda: r.m.metric("monoceros_config_reload_total",
                                     result="rejected") == 2)
    assert r.pids() == before
    assert r.m.get("/health")[0] == 200


def test_changed_args_replace_every_worker_one_at_a_time(reloadable):
    r = reloadable(pb_pool(replicas=3))
    before = set(r.pids().values())
    r.config["supervisor"]["workers"][0]["args"].append("--log-structured")
    result = r.reload()
    assert result.returncode == 0, result.stderr
    assert "command changed: rolling restart" in result.stdout
    after = r.pids()
    assert len(after) == 3 and not before & set(after.values())
    assert r.m.metric("monoceros_workerpool_restart_reasons_total", pool="pb",
                      worker_type="worker", reason="manual") == 3


def test_settings_apply_without_restarting(reloadable):
    r = reloadable(pb_pool(replicas=2))
    r.config["supervisor"]["workers"][0]["limits"] = {"lifespan": "1s"}
    r.config["supervisor"]["workers"][0]["signal_timeout"] = "3s"
    result = r.reload()
    assert result.returncode == 0, result.stderr
    assert "settings applied to running workers" in result.stdout
    assert "rolling restart" not in result.stdout
    # No rolling restart; instead the new lifespan recycles the workers that
    # were already running.
    assert not r.m.metric("monoceros_workerpool_restart_reasons_total", pool="pb",
                          worker_type="worker", reason="manual")
    wait_for_sync(lambda: (r.m.metric("monoceros_workerpool_limits_events_total",
                                      pool="pb", limit_event="lifespan") or 0) >= 2)


def test_pool_removed_then_added_back(reloadable):
    r = reloadable(pb_pool("a", replicas=1), pb_pool("b", replicas=1))
    gone = r.pids("b")["b-0"]
    r.config["supervisor"]["workers"].pop()
    result = r.reload()
    assert "b: removed: drained and stopped" in result.stdout
    wait_for_sync(lambda: not r.m.workers() or all(
        w["pool"] == "a" for w in r.m.workers()))
    assert r.m.metric("monoceros_workerpool_worker_state", pool="b",
                      state="running") is None
    r.config["supervisor"]["workers"].append(pb_pool("b", replicas=1))
    result = r.reload()
    assert "b: added: started" in result.stdout
    wait_for_sync(lambda: r.pids("b") and r.pids("b")["b-0"] != gone)


def test_admin_moves_to_its_new_port(reloadable):
    r = reloadable(pb_pool(replicas=1))
    new_port = free_port()
    r.config["admin"] = {"port": new_port}
    result = r.reload()
    assert result.returncode == 0, result.stderr
    body = urllib.request.urlopen(f"http://127.0.0.1:{new_port}/health").read()
    assert json.loads(body)["healthy"]
    r.m.admin_port = new_port


@pytest.mark.envoy
def test_proxy_settings_reach_envoy_without_a_restart(reloadable, tmp_path):
    pool = proxy_pool(replicas=3)
    r = reloadable(pool, xds={"socket": str(tmp_path / "xds.sock")})
    envoy = envoy_pid(r.m)
    workers = r.pids()
    with Load(url(pool), concurrency=6, max_seconds=60) as load:
        wait_for_sync(lambda: load.snapshot()[0] > 100)
        pool["server"]["load_balancer_algorithm"] = "RANDOM"
        pool["server"]["health_check_path"] = "/"
        result = r.reload()
        assert result.returncode == 0, result.stderr
        assert "proxy settings pushed over xDS" in result.stdout

        def cluster():
            admin = pool["server"]["admin_port"]
            dump = json.load(urllib.request.urlopen(
                f"http://127.0.0.1:{admin}/config_dump?resource=dynamic_active_clusters"))
            return dump["configs"][0]["cluster"]

        wait_for_sync(lambda: cluster().get("lb_policy") == "RANDOM", timeout=5)
        assert cluster()["health_checks"][0]["http_health_check"]["path"] == "/"
        wait_for_sync(lambda: sorted(cluster_hosts(pool).values())
                      == ["HEALTHY"] * 3, timeout=5)
        done = load.snapshot()[0]
        wait_for_sync(lambda: load.snapshot()[0] > done + 100)
    assert load.tally.failed == 0, (load.tally.statuses, load.tally.errors)
    assert envoy_pid(r.m) == envoy
    assert r.pids() == workers


@pytest.mark.envoy
def test_proxy_scale_and_args_under_load(reloadable, tmp_path):
    pool = proxy_pool(replicas=4)
    r = reloadable(pool, xds={"socket": str(tmp_path / "xds.sock")})
    envoy = envoy_pid(r.m)
    with Load(url(pool), concurrency=6, max_seconds=90) as load:
        wait_for_sync(lambda: load.snapshot()[0] > 100)
        pool["replicas"] = 6
        assert r.reload().returncode == 0
        wait_for_sync(lambda: sorted(cluster_hosts(pool).values())
                      == ["HEALTHY"] * 6, timeout=10)
        pool["replicas"] = 2
        assert r.reload().returncode == 0
        wait_for_sync(lambda: len(cluster_hosts(pool)) == 2, timeout=10)
        assert sorted(r.pids()) == ["web-0", "web-1"]
        before = set(r.pids().values())
        pool["args"].append("--log-structured")
        assert r.reload().returncode == 0
        assert not before & set(r.pids().values())
        done = load.snapshot()[0]
        wait_for_sync(lambda: load.snapshot()[0] > done + 100)
    assert load.tally.failed == 0, (load.tally.statuses, load.tally.errors)
    assert envoy_pid(r.m) == envoy


@pytest.mark.envoy
def test_proxy_pool_removed_then_added_back(reloadable, tmp_path):
    pool = proxy_pool(replicas=2)
    r = reloadable(pool, xds={"socket": str(tmp_path / "xds.sock")})
    r.config["supervisor"]["workers"] = [pb_pool("plain", replicas=1)]
    assert r.reload().returncode == 0
    wait_for_sync(lambda: envoy_pid(r.m) is None)
    r.config["supervisor"]["workers"].append(pool)
    assert r.reload().returncode == 0
    wait_for_sync(lambda: len(r.pids("web")) == 2, timeout=20)
    status, _ = (lambda: (urllib.request.urlopen(url(pool), timeout=5).status, 0))()
    assert status == 200
    assert len(cluster_hosts(pool)) == 2


@pytest.mark.envoy
def test_listener_port_moves_without_an_envoy_restart(reloadable, tmp_path):
    pool = proxy_pool(replicas=1)
    r = reloadable(pool, xds={"socket": str(tmp_path / "xds.sock")})
    envoy = envoy_pid(r.m)
    old_url = url(pool)
    pool["server"]["listener_port"] = free_port()
    assert r.reload().returncode == 0

    def serves(address: str) -> bool:
        try:
            return urllib.request.urlopen(address, timeout=2).status == 200
        except OSError:
            return False

    wait_for_sync(lambda: serves(url(pool)), timeout=10)
    wait_for_sync(lambda: not serves(old_url), timeout=15)
    assert envoy_pid(r.m) == envoy


@pytest.mark.envoy
def test_reload_rejected_by_envoy_is_reported(reloadable, tmp_path):
    import socket

    pool = proxy_pool(replicas=1)
    r = reloadable(pool, xds={"socket": str(tmp_path / "xds.sock")})
    old_url = url(pool)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pool["server"]["listener_port"] = taken.getsockname()[1]
        result = r.reload()
    assert result.returncode == 0, result.stderr
    assert "Envoy rejected it and keeps the previous one" in result.stdout
    assert urllib.request.urlopen(old_url, timeout=5).status == 200


def test_shutdown_during_a_pool_removal_still_stops_it(reloadable):
    # Ignores SIGTERM, and so does its child (a plain sleep in its group).
    stubborn = {"name": "gone", "replicas": 1, "exec": "/bin/sh",
                "args": ["-c", "trap '' TERM; sleep 1000 & wait"],
                "signal_timeout": "2s"}
    r = reloadable(pb_pool("kept", replicas=1), stubborn)
    from tests.harness import group_members, wait_gone

    leader = r.pids("gone")["gone-0"]
    members = wait_for_sync(lambda: len(g := group_members(leader)) == 2 and g)
    r.config["supervisor"]["workers"].pop()
    r.write()
    r.m.signal(signal.SIGHUP)  # the removal now waits out signal_timeout
    wait_for_sync(lambda: any(rec.get("msg") == "pool removed from the configuration"
                              for rec in r.m.log_records()))
    r.m.signal(signal.SIGTERM)
    assert r.m.wait(timeout=30) == 0
    wait_gone(members, timeout=2)
