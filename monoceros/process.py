"""Child processes: spawning, reaping and signalling process groups.

Monoceros reaps every child itself, from one SIGCHLD handler on the event
loop (``waitpid(-1, WNOHANG)`` until nothing is left), rather than through
asyncio's child watchers. One reaper sees every exit in the order the kernel
reports it, costs no thread per child, and also reaps the orphans that are
re-parented to Monoceros because it is a child subreaper. A pid is forgotten
the moment it is reaped, so a reaped pid is never signalled; signals go to
the worker's process group, never to a bare pid.

Each child is spawned from the event loop's thread with a parent-death
signal (SIGKILL). On Linux that signal follows the *thread* that forked the
child, not the process: spawning from a worker thread would kill the child
when that thread ends.

The argv reported for a process (and its pid) is the command's own: the
exec wrapper that sets the signal replaces itself with the command.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from monoceros.guardian import Guardian

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal
    _prctl = None


def become_subreaper(enable: bool = True) -> bool:
    """Adopt orphaned descendants so they are reaped here, not by init."""
    if _prctl is None:
        return False
    return _prctl(_PR_SET_CHILD_SUBREAPER, int(enable), 0, 0, 0) == 0


def _pdeathsig_prefix() -> list[str]:
    """An exec wrapper that sets the parent-death signal, if one exists.

    Python code must not run between fork and exec here: gRPC's threads may
    hold locks at the moment of the fork (a worker crashed with SIGSEGV in
    a `preexec_fn` this way). util-linux's `setpriv` sets the signal and
    execs the command, so the fork stays in C. Without it, the guardian
    (see `monoceros.guardian`) is the only protection.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


def describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass(eq=False)
class Process:
    """A spawned child, leader of its own process group."""

    pid: int
    argv: tuple[str, ...]
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    returncode: int | None = None
    # Set once the group is seen empty: its number may then be reused by an
    # unrelated session leader, so it is never probed or signalled again.
    # (While any member remains, the kernel keeps the number reserved.)
    group_gone: bool = False
    exited: asyncio.Future[int] = field(init=False)

    def __post_init__(self) -> None:
        self.exited = asyncio.get_running_loop().create_future()

    @property
    def pgid(self) -> int:
        return self.pid  # spawned with setsid: the leader's pid names the group

    @property
    def alive(self) -> bool:
        return self.returncode is None

    async def wait(self) -> int:
        """The return code, once reaped. Cancelling the caller leaves the
        shared `exited` future alone for everyone else waiting on it."""
        return await asyncio.shield(self.exited)

    def group_alive(self) -> bool:
        """Whether any process is left in the group (the leader or others)."""
        if self.alive:
            return True
        if self.group_gone:
            return False
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            self.group_gone = True
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, sig: int) -> bool:
        """Send `sig` to the whole group; False if nothing was left in it.

        After the leader is reaped, the kernel keeps its number reserved as
        long as any member of the group remains, so the group can still be
        signalled; once it has been seen empty it never is again.
        """
        if self.group_gone:
            return False
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            if not self.alive:
                self.group_gone = True
            return False
        except PermissionError as exc:
            log.warning(
                "cannot signal process group",
                extra={"pgid": self.pgid, "error": str(exc)},
            )
            return False
        return True

    async def wait_group_empty(self, timeout: float, poll: float = 0.02) -> bool:
        """Wait until the leader exited and its group is empty; False on timeout.

        The leader's exit is an event; the rest of the group can only be
        polled (no kernel notification exists for "group empty").
        """
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except TimeoutError:
            return False
        while self.group_alive():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll)
        return True


class ChildReaper:
    """Reaps every child of this process and resolves their `exited` futures.

    Install once per event loop. Children not spawned through `spawn` (the
    orphans adopted as a subreaper) are reaped and reported to
    `on_orphan`, never counted as a worker's exit.
    """

    def __init__(
        self,
        on_orphan: Callable[[int, int], None] | None = None,
        guardian: Guardian | None = None,
    ):
        self._children: dict[int, Process] = {}
        self._on_orphan = on_orphan
        self._guardian = guardian
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prefix = _pdeathsig_prefix()

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def uninstall(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_signal_handler(signal.SIGCHLD)
        self._loop = None

    @property
    def children(self) -> int:
        return len(self._children)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        stdout: int,
        stderr: int,
        pass_fds: Sequence[int] = (),
    ) -> Process:
        """Start `argv` in a new session and process group.

        Only fds 0-2 and `pass_fds` are inherited; stdin is /dev/null.
        """
        popen = subprocess.Popen(
            self._prefix + list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env),
            cwd=cwd,
            close_fds=True,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            restore_signals=True,
        )
        # The reaper, not Popen, waits for this pid: stop Popen from trying.
        popen.returncode = 0
        proc = Process(pid=popen.pid, argv=tuple(argv))
        self._children[proc.pid] = proc
        if self._guardian is not None:
            self._guardian.add(proc.pgid)
        # A child that exited before it was registered left a SIGCHLD that
        # may already have been handled: look again.
        self.reap()
        return proc

    def forget_group(self, proc: Process) -> None:
        """The group is empty: the guardian no longer needs to know it."""
        if self._guardian is not None:
            self._guardian.remove(proc.pgid)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except OSError as exc:  # pragma: no cover - EINTR is retried by Python
                if exc.errno == errno.EINTR:
                    continue
                raise
            if pid == 0:
                return
            self._reaped(pid, os.waitstatus_to_exitcode(status))

    def _reaped(self, pid: int, returncode: int) -> None:
        proc = self._children.pop(pid, None)
        if proc is None:
            if self._on_orphan is not None:
                self._on_orphan(pid, returncode)
            return
        proc.returncode = returncode
        if not proc.exited.done():
            proc.exited.set_result(returncode)
