"""Worker output: line splitting, JSON pass-through, long lines, bad UTF-8."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os

from monoceros.logs import STDERR, STDOUT, OutputQueue
from monoceros.output import MAX_LINE, LineForwarder, PipeReader


class Capture:
    def __init__(self):
        self.out = io.BytesIO()
        self.err = io.BytesIO()
        self.queue = OutputQueue({STDOUT: self.out, STDERR: self.err})

    def stdout_lines(self) -> list[bytes]:
        self.queue.flush()
        return self.out.getvalue().splitlines()


def test_json_object_gets_worker_id_in_front():
    cap = Capture()
    fwd = LineForwarder(cap.queue, "web", "web-0")
    fwd.stdout(b'{"level": "info", "n": 1.50}', False)
    fwd.stdout(b"{}", False)
    fwd.stdout(b'{"worker_id": "mine"}', False)
    lines = cap.stdout_lines()
    assert lines[0] == b'{"worker_id":"web-0","level": "info", "n": 1.50}'
    assert json.loads(lines[1]) == {"worker_id": "web-0"}
    assert json.loads(lines[2]) == {"worker_id": "mine"}


def test_text_and_broken_json_are_wrapped(caplog):
    cap = Capture()
    bad = []
    fwd = LineForwarder(cap.queue, "web", "web-1", on_bad_json=lambda: bad.append(1))
    with caplog.at_level(logging.INFO, logger="monoceros.worker"):
        fwd.stdout(b"plain text", False)
        fwd.stderr(b"{not json", False)
        fwd.stderr(b"\xff\xfe invalid", False)
    records = caplog.records
    assert records[0].worker_info_msg == "plain text"
    assert records[0].worker_id == "web-1" and records[0].pool == "web"
    assert records[1].worker_error_msg == "{not json"
    assert records[1].levelno == logging.ERROR
    assert records[2].worker_error_msg == "\\xff\\xfe invalid"
    assert bad == [1]


async def test_reader_splits_lines_and_cuts_giant_ones():
    lines: list[tuple[bytes, bool]] = []
    r, w = os.pipe()
    reader = PipeReader(r, lambda line, cut: lines.append((line, cut)))
    one_mib = b"x" * (1024 * 1024)
    giant = b"y" * (MAX_LINE + 10)
    payload = b"a\nb\n" + one_mib + b"\n" + giant + b"\ntail"

    async def write():
        view = memoryview(payload)
        os.set_blocking(w, False)
        while view:
            try:
                n = os.write(w, view[:65536])
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            view = view[n:]
        os.close(w)

    await asyncio.gather(write(), asyncio.wait_for(reader.closed, 10))
    assert lines[0] == (b"a", False) and lines[1] == (b"b", False)
    assert lines[2] == (one_mib, False)
    assert lines[3] == (b"y" * MAX_LINE, True)
    assert lines[4] == (b"y" * 10, False)
    assert lines[5] == (b"tail", False)


def test_blocked_output_drops_and_counts():
    class Stalled(io.BytesIO):
        def __init__(self):
            super().__init__()
            import threading

            self.gate = threading.Event()

        def write(self, data):
            self.gate.wait(5)
            return super().write(data)

    stalled = Stalled()
    queue = OutputQueue({STDOUT: stalled, STDERR: stalled}, max_pending=10)
    drops = []
    queue.on_drop = drops.append
    for _ in range(100):
        queue.put(STDOUT, b"line\n")
    assert sum(drops) >= 80  # the queue holds 10, the writer one more
    stalled.gate.set()
    queue.flush()
    out = stalled.getvalue()
    assert b"log lines dropped" in out
    queue.close()
