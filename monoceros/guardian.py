"""A watchdog that kills the workers' process groups if Monoceros dies.

Each worker gets a parent-death signal, but that reaches only the worker
itself: processes it started in its group would outlive a SIGKILLed
Monoceros. The guardian is a tiny shell process in its own session that
holds the read end of a pipe. Monoceros writes ``+PGID`` when a group is
created and ``-PGID`` when it is gone. When the pipe reaches end of file
without a final ``exit`` line (Monoceros died: the kernel closed its end),
the guardian sends SIGKILL to every group it still knows, then exits.

It costs one ``sh`` process (about 1 MB) however many workers there are.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

log = logging.getLogger(__name__)

# Portable sh, forking nothing per line: one variable per live group
# (g_<pgid>), so adding and removing a group cost a few microseconds however
# many there are; "exit" ends cleanly. At end of file, the variables left
# name the groups to kill.
_SCRIPT = r"""# monoceros guardian
while IFS= read -r line; do
  case "$line" in
    exit) exit 0 ;;
    +*) eval "g_${line#+}=1" ;;
    -*) unset "g_${line#-}" ;;
  esac
done
for g in $(set | sed -n 's/^g_\([0-9][0-9]*\)=.*/\1/p'); do
  kill -s KILL -- "-$g" 2>/dev/null
done
exit 0
"""


class Guardian:
    def __init__(self) -> None:
        self._fd = -1
        self._proc: subprocess.Popen | None = None

    def start(self) -> bool:
        sh = shutil.which("sh")
        if sh is None:
            log.warning("no sh found: grandchildren may outlive a killed Monoceros")
            return False
        read_end, write_end = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sh, "-c", _SCRIPT],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        self._fd = write_end
        os.set_inheritable(write_end, False)
        return True

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def add(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def remove(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Stop the guardian without it killing anything (a clean exit)."""
        if self._fd < 0:
            return
        self._send("exit\n")
        os.close(self._fd)
        self._fd = -1
        # Reaped by Monoceros's child reaper if one is installed; else here.
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2)
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass

    def _send(self, line: str) -> None:
        if self._fd < 0:
            return
        try:
            # A few bytes into a pipe the guardian drains: does not block in
            # practice (the pipe holds 64 KiB, thousands of lines).
            os.write(self._fd, line.encode())
        except OSError as exc:
            log.warning("guardian unreachable", extra={"error": str(exc)})
            os.close(self._fd)
            self._fd = -1
