"""One worker: a process of a pool, from spawn to reap.

```
 PENDING → STARTING → READY → DRAINING → STOPPING → EXITED
              │                              ▲
              └──────── (exit / kill) ───────┘
```

A Worker holds the process, its output readers and its lifecycle state; the
Pool decides what happens to it. Stopping is the escalation policy below:
SIGTERM to the whole process group, wait up to `signal_timeout` for the
group to be empty, then SIGKILL the group.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import time
from dataclasses import dataclass, field

from monoceros.output import LineForwarder, PipeReader
from monoceros.process import ChildReaper, Process

log = logging.getLogger(__name__)

# How long to keep reading a dead worker's pipes for its last lines: a
# grandchild that escaped the group may hold them open indefinitely.
OUTPUT_LINGER = 0.5


class WorkerState(enum.StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    EXITED = "exited"


LIVE_STATES = frozenset({WorkerState.STARTING, WorkerState.READY})


@dataclass(frozen=True)
class StopResult:
    returncode: int | None
    killed: bool  # SIGKILL was needed


@dataclass(eq=False)
class Worker:
    pool: str
    index: int
    port: int | None = None
    state: WorkerState = WorkerState.PENDING
    process: Process | None = None
    ready_at: float | None = None  # monotonic
    stop_requested: bool = False
    retire_reason: str | None = None
    name: str | None = None  # overrides "<pool>-<index>" (the pool's Envoy)
    _readers: list[PipeReader] = field(default_factory=list)

    @property
    def worker_id(self) -> str:
        return self.name or f"{self.pool}-{self.index}"

    @property
    def env_id(self) -> str:
        """The MULTIPROCESS_WORKER_ID value, as the original set it."""
        return f"{self.pool}_{self.worker_id}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def log_fields(self) -> dict:
        return {"pool": self.pool, "worker_id": self.worker_id, "pid": self.pid}

    def uptime(self) -> float:
        if self.process is None:
            return 0.0
        return time.monotonic() - self.process.started_mono

    def spawn(
        self,
        reaper: ChildReaper,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        forwarder: LineForwarder,
    ) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.process = reaper.spawn(
                argv, env=env, cwd=cwd, stdout=out_w, stderr=err_w
            )
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self._readers = [
            PipeReader(out_r, forwarder.stdout),
            PipeReader(err_r, forwarder.stderr),
        ]
        self.state = WorkerState.STARTING

    async def close_output(self) -> None:
        """After exit: read the pipes' last lines, then close them."""
        if not self._readers:
            return
        waits = [r.closed for r in self._readers]
        _, pending = await asyncio.wait(waits, timeout=OUTPUT_LINGER)
        for reader in self._readers:
            reader.drain()
            reader.close()
        self._readers = []

    async def stop(self, timeout: float, sig: int = signal.SIGTERM) -> StopResult:
        """Signal the group, escalate to SIGKILL after `timeout`, wait for exit.

        Safe to call on a worker that already exited: a reaped leader's
        group is only signalled while members of it remain.
        """
        proc = self.process
        if proc is None:
            return StopResult(None, False)
        self.stop_requested = True
        if self.state not in (WorkerState.EXITED,):
            self.state = WorkerState.STOPPING
        if not proc.group_alive():
            return StopResult(proc.returncode, False)
        proc.signal_group(sig)
        if await proc.wait_group_empty(timeout):
            return StopResult(proc.returncode, False)
        log.warning(
            "worker did not stop in time: sending SIGKILL to its process group",
            extra={**self.log_fields, "signal_timeout": timeout},
        )
        proc.signal_group(signal.SIGKILL)
        # SIGKILL cannot be ignored; a process in uninterruptible sleep (D
        # state) is the only thing that can hold this up.
        await proc.wait_group_empty(timeout=max(timeout, 5.0))
        return StopResult(proc.returncode, True)
