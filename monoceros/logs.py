"""Monoceros's own log output: JSON lines, or a console format with ``-d``.

Everything Monoceros writes (its own records and its workers' passed-through
lines) goes through one bounded queue to one writer thread. The event loop
never blocks on a slow or stalled reader of Monoceros's output.

Policy when the output is blocked: the queue holds up to ``MAX_PENDING``
lines; past that, new lines are dropped (never the supervisor's progress),
counted in ``monoceros_log_lines_dropped_total``, and a single record saying
how many were dropped is written once the output drains again.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import IO

MAX_PENDING = 20_000
# Most lines the writer takes off the queue to write at once.
_BATCH = 5_000

# Attributes every LogRecord has; anything else was passed with `extra=`.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

STDOUT = 1
STDERR = 2


class OutputQueue:
    """A bounded queue of lines drained by one daemon writer thread."""

    def __init__(
        self,
        streams: dict[int, IO[bytes]] | None = None,
        max_pending: int = MAX_PENDING,
    ):
        self._streams = streams or {
            STDOUT: sys.stdout.buffer,
            STDERR: sys.stderr.buffer,
        }
        self._queue: queue.Queue[tuple[int, bytes] | threading.Event | None]
        self._queue = queue.Queue(max_pending)
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self.on_drop: Callable[[int], None] | None = None
        self._thread = threading.Thread(
            target=self._run, name="monoceros-log-writer", daemon=True
        )
        self._thread.start()

    def put(self, stream: int, line: bytes) -> None:
        try:
            self._queue.put_nowait((stream, line))
        except queue.Full:
            with self._dropped_lock:
                self._dropped += 1
            if self.on_drop is not None:
                self.on_drop(1)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until every queued line has been written."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return
        done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        # Whatever is waiting is taken at once, and each run of lines for
        # one stream written in one call. Written line by line, every
        # system call let go of the GIL, and the event loop producing the
        # lines kept it for a switch interval (5 ms) each time: half of a
        # burst of 100,000 worker lines was dropped though the output (a
        # file) was never blocked.
        while True:
            items = [self._queue.get()]
            while len(items) < _BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stream, lines = STDOUT, []
            for item in items:
                if isinstance(item, tuple) and item[0] == stream:
                    lines.append(item[1])
                    continue
                if lines:
                    self._write(stream, lines)
                    lines = []
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    self._flush_streams()
                    item.set()
                    continue
                stream, lines = item[0], [item[1]]
            if lines:
                self._write(stream, lines)
            self._report_drops()

    def _write(self, stream: int, lines: list[bytes]) -> None:
        out = self._streams[stream]
        try:
            out.write(b"".join(lines))
            if self._queue.empty():
                out.flush()
        except (OSError, ValueError):
            # A closed or broken output must not kill the writer: drop.
            with self._dropped_lock:
                self._dropped += len(lines)
            if self.on_drop is not None:
                self.on_drop(len(lines))  # a prometheus counter: thread-safe

    def _report_drops(self) -> None:
        if not self._dropped or not self._queue.empty():
            return
        with self._dropped_lock:
            count, self._dropped = self._dropped, 0
        record = {
            "ts": _now(),
            "level": "warning",
            "logger": __name__,
            "msg": "log lines dropped: output was blocked or too slow",
            "dropped": count,
        }
        self._write(STDERR, [_dumps(record)])

    def _flush_streams(self) -> None:
        for stream in self._streams.values():
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, default=str, ensure_ascii=False).encode() + b"\n"


def record_fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(record_fields(record))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """Human-readable: time, level, message, then key=value fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")
        fields = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        line = f"{ts[:-3]} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line = f"{line}  {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class QueueLogHandler(logging.Handler):
    """Formats on the caller's thread and hands the line to the queue."""

    def __init__(self, output: OutputQueue):
        super().__init__()
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode("utf-8", "replace") + b"\n"
        except Exception:  # a bad `extra` value must not kill the caller
            self.handleError(record)
            return
        self.output.put(STDERR, line)


def setup_logging(debug: bool, output: OutputQueue | None = None) -> OutputQueue:
    """Route all logging to the output queue; return the queue."""
    output = output or OutputQueue()
    handler = QueueLogHandler(output)
    handler.setFormatter(ConsoleFormatter() if debug else JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # A record that cannot be formatted is dropped, not printed with a
    # traceback to stderr (which may be the very output that is blocked).
    logging.raiseExceptions = False
    # Third-party libraries are quiet unless something is wrong.
    for name in ("aiohttp.access", "grpc", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return output
