"""Run `monoceros` with every signal it sends audited.

    python tests/signal_audit.py REPORT -c monoceros.yaml

Python raises an audit event for each `os.kill` and `os.killpg` (which is
also how `subprocess` signals). Before each real signal (not the existence
probe, signal 0) this hook looks at the target in /proc: a process, or for a
group any member, even a zombie not yet reaped. A target with nothing left
means the pid was already reaped, so the signal went to a name that the
kernel may have given to someone else. Every signal is appended to REPORT
as `kill|killpg TARGET SIGNAL ok|REAPED`.

Reaping happens only on Monoceros's event loop thread, the thread that
sends the signals, so nothing can be reaped between this check and the
signal itself.
"""

from __future__ import annotations

import os
import runpy
import sys


def _group_has_members(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            return True
    return False


def _install(report: str) -> None:
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    busy = False

    def hook(event: str, args: tuple) -> None:
        nonlocal busy
        if busy or event not in ("os.kill", "os.killpg"):
            return
        target, sig = args
        if sig == 0:
            return
        busy = True
        try:
            if event == "os.kill":
                alive = os.path.exists(f"/proc/{target}")
            else:
                alive = _group_has_members(target)
            verdict = "ok" if alive else "REAPED"
            name = event.removeprefix("os.")
            os.write(fd, f"{name} {target} {int(sig)} {verdict}\n".encode())
        finally:
            busy = False

    sys.addaudithook(hook)


def main() -> None:
    report = sys.argv[1]
    del sys.path[0]  # this directory: its modules must not shadow any other
    _install(report)
    sys.argv = ["monoceros", *sys.argv[2:]]
    runpy.run_module("monoceros", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
