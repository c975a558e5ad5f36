"""The guardian kills known process groups when Monoceros's end closes."""

from __future__ import annotations

import os
import subprocess

from monoceros.guardian import Guardian
from tests.conftest import wait_for_sync
from tests.harness import pid_alive


def group_leader() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_groups_are_killed_when_monoceros_dies():
    kept, removed = group_leader(), group_leader()
    guardian = Guardian()
    assert guardian.start()
    guardian.add(kept.pid)
    guardian.add(removed.pid)
    guardian.remove(removed.pid)
    # What the kernel does when Monoceros dies: its end of the pipe closes
    # with no "exit" line.
    os.close(guardian._fd)
    guardian._fd = -1
    assert kept.wait(timeout=5) == -9
    assert guardian._proc.wait(timeout=5) == 0
    assert pid_alive(removed.pid)
    removed.kill()
    removed.wait()


def test_clean_close_kills_nothing():
    leader = group_leader()
    guardian = Guardian()
    guardian.start()
    guardian.add(leader.pid)
    guardian.close()
    wait_for_sync(lambda: guardian._proc.poll() is not None)
    assert pid_alive(leader.pid)
    leader.kill()
    leader.wait()
