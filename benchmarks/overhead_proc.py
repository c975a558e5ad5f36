"""What /proc says about a supervisor: its CPU time, memory and children.

Used by ``benchmarks.overhead_bench``. Every figure is read the same way for
Monoceros, circus and supervisord, from the kernel rather than from the
supervisor's own reports.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name, or None.

    The name is in parentheses and may itself contain spaces and ``)``, so
    the split starts after the last ``)``: index 0 is then the state (field
    3 of proc(5)).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """User and system CPU of `pid` (all its threads, live or gone).

    `with_children` adds the CPU of the children it has reaped (cutime and
    cstime): right for a helper whose children are helpers too (the
    guardian's ``sed``), wrong for a supervisor, whose reaped children are
    workers. A process that is gone counts 0.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def children_of(pid: int) -> set[int]:
    """The live children of `pid`, from one pass over /proc."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
            found.add(int(entry.name))
    return found


@dataclass(frozen=True)
class Memory:
    rss: int  # bytes
    pss: int | None  # bytes; None where smaps_rollup cannot be read

    def __add__(self, other: Memory) -> Memory:
        pss = None if self.pss is None or other.pss is None else self.pss + other.pss
        return Memory(self.rss + other.rss, pss)


def memory(pid: int) -> Memory:
    """Resident and proportional set size of one process (0 if it is gone).

    PSS shares each page between the processes mapping it, so a forked
    helper is not charged again for the pages it shares with its parent.
    """
    rss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        return Memory(0, 0)
    pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return Memory(rss, pss)


def total_memory(pids: Iterable[int]) -> Memory:
    total = Memory(0, 0)
    for pid in pids:
        total = total + memory(pid)
    return total


def tagged(marker: bytes) -> list[int]:
    """Processes whose environment holds `marker` (``NAME=value``).

    The benchmark gives its supervisors a variable naming its run; every
    worker inherits it. This finds what is left of a run, and nothing else.
    """
    needle = marker + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if needle in environ or environ.endswith(marker):
            found.append(int(entry.name))
    return found


def kill_tagged(marker: bytes) -> int:
    """SIGKILL every process of the run; return how many were signalled."""
    count = 0
    for pid in tagged(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            count += 1
        except ProcessLookupError:
            pass
    return count
