"""Workers' stdout and stderr: read continuously, forwarded line by line.

A line that is a JSON object is written through unchanged but for a
``worker_id`` field added in front (unless it has one already), so log
pipelines see the worker's own record. Any other line is wrapped in a
Monoceros record (``worker_info_msg`` for stdout, ``worker_error_msg`` for
stderr). The reader never blocks a worker: it reads whatever the pipe holds
as soon as it is readable, and hands lines to the bounded output queue.

Lines longer than ``MAX_LINE`` bytes are cut into pieces of that size; every
piece but the last is marked ``"truncated": true``. Invalid UTF-8 is escaped,
never fatal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable

from monoceros.logs import STDERR, STDOUT, OutputQueue

log = logging.getLogger("monoceros.worker")

MAX_LINE = 2 * 1024 * 1024
READ_SIZE = 64 * 1024


class PipeReader:
    """Reads a non-blocking pipe on the event loop and splits it into lines."""

    def __init__(self, fd: int, on_line: Callable[[bytes, bool], None]):
        self._fd = fd
        self._on_line = on_line
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        buf = self._buffer
        start = len(buf)
        buf += data
        begin = 0
        while (end := buf.find(b"\n", start)) >= 0:
            self._emit(buf, begin, end)
            begin = start = end + 1
        # An unterminated line already too long is passed on in pieces now,
        # so a worker that never writes a newline cannot grow this buffer.
        # A piece goes only once more follows it: a line of exactly MAX_LINE
        # bytes is one piece, however its bytes were read.
        while len(buf) - begin > MAX_LINE:
            self._on_line(bytes(buf[begin : begin + MAX_LINE]), True)
            begin += MAX_LINE
        if begin:
            del buf[:begin]

    def _emit(self, buf: bytearray, begin: int, end: int) -> None:
        while end - begin > MAX_LINE:
            self._on_line(bytes(buf[begin : begin + MAX_LINE]), True)
            begin += MAX_LINE
        self._on_line(bytes(buf[begin:end]), False)

    def drain(self) -> None:
        """Read whatever is buffered in the pipe now, without waiting."""
        while self._fd >= 0:
            try:
                data = os.read(self._fd, READ_SIZE)
            except (BlockingIOError, OSError):
                return
            if not data:
                self.close()
                return
            self._feed(data)

    def close(self) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self._buffer:
            self._on_line(bytes(self._buffer), False)
            self._buffer.clear()
        if not self.closed.done():
            self.closed.set_result(None)


class LineForwarder:
    """Turns one worker's output lines into Monoceros's output."""

    def __init__(
        self,
        output: OutputQueue,
        pool: str,
        worker_id: str,
        on_bad_json: Callable[[], None] | None = None,
    ):
        self._output = output
        self._pool = pool
        self._worker_id = worker_id
        self._on_bad_json = on_bad_json
        self._id_field = b'"worker_id":' + json.dumps(worker_id).encode()
        self._cut = {STDOUT: False, STDERR: False}  # last piece was cut short

    def stdout(self, line: bytes, truncated: bool) -> None:
        self._forward(line, truncated, STDOUT)

    def stderr(self, line: bytes, truncated: bool) -> None:
        self._forward(line, truncated, STDERR)

    def _forward(self, line: bytes, truncated: bool, stream: int) -> None:
        # A CR ending a line is half of a CRLF; one ending a cut piece is
        # just a byte of the line.
        if not truncated and line.endswith(b"\r"):
            line = line[:-1]
        # The last piece of a cut line is not a line: even if it happens to
        # be a JSON object, it is not the worker's record.
        whole = not truncated and not self._cut[stream]
        self._cut[stream] = truncated
        if whole and line.startswith(b"{") and self._pass_json(line, stream):
            return
        text = line.decode("utf-8", "backslashreplace")
        extra = {"pool": self._pool, "worker_id": self._worker_id}
        if truncated:
            extra["truncated"] = True
        if stream == STDOUT:
            extra["worker_info_msg"] = text
            log.info("worker stdout", extra=extra)
        else:
            extra["worker_error_msg"] = text
            log.error("worker stderr", extra=extra)

    def _pass_json(self, line: bytes, stream: int) -> bool:
        try:
            obj = json.loads(line)
        except ValueError:  # includes invalid UTF-8
            obj = None
        if not isinstance(obj, dict):
            if self._on_bad_json is not None:
                self._on_bad_json()
            return False
        if "worker_id" in obj:
            self._output.put(stream, line + b"\n")
            return True
        # Splice the field in as text: the worker's own formatting (number
        # precision, key order, spacing) passes through untouched.
        body = line[1:].lstrip()
        sep = b"" if body.startswith(b"}") else b","
        self._output.put(stream, b"{" + self._id_field + sep + body + b"\n")
        return True
