"""Recycling limits: a worker's lifespan and its process tree's memory."""

from __future__ import annotations

import os
import random

from monoceros.config import LimitsConfig


def draw_lifespan(limits: LimitsConfig) -> float:
    """A worker's lifespan: `lifespan` shortened by up to `jitter_ratio`.

    Drawn once per worker, so that workers started together (the whole pool,
    at start-up) do not all recycle at the same moment.
    """
    return limits.lifespan * (1 - limits.jitter_ratio * random.random())


def tree_rss(pids: list[int]) -> dict[int, int]:
    """Resident bytes of each pid's process tree, from one pass over /proc.

    Reading every process's parent once is far cheaper than asking for each
    worker's children separately (which scans /proc once per worker).
    """
    page = os.sysconf("SC_PAGE_SIZE")
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after it.
        fields = stat[stat.rfind(b")") + 2 :].split()
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        rss[pid] = int(fields[21]) * page
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    totals = {}
    for root in pids:
        total, stack = 0, [root]
        while stack:
            pid = stack.pop()
            total += rss.get(pid, 0)
            stack.extend(children.get(pid, ()))
        totals[root] = total
    return totals
