"""processbin: a configurable test worker that behaves like a small real server.

Tests, benchmarks and examples run it in place of a real service. It can log
at a chosen rate and shape, exit or crash on cue, ignore or honour signals,
leak memory, spawn a child, and serve HTTP/1.1 with a health path and a
graceful drain.

It stands alone on purpose: standard library only, nothing imported from the
rest of Monoceros, so a test of the supervisor never depends on the code under
test, and it starts as fast as a bare interpreter with asyncio allows. It
writes its lines itself rather than through `logging`: their exact bytes are
what the supervisor's tests look at.

The drain on SIGTERM/SIGINT follows what a careful server does:

1. stop accepting at once: connections already queued in the kernel are
   accepted first (closing a listener resets its queue, which with
   SO_REUSEPORT would drop requests another worker could have served),
   then the listening socket is closed;
2. requests in flight finish and are answered with ``Connection: close``;
3. an idle keep-alive connection keeps a short grace to send one more request
   (a client or proxy may already have picked it), answered with
   ``Connection: close``, rather than being cut under it;
4. the process exits once no connection remains, or at the drain deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time

PROG = "monoceros-processbin"

# A request head (request line plus headers) larger than this is refused.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
# How long an idle keep-alive connection is kept open outside a drain.
IDLE_TIMEOUT = 60.0
# How long a client may take to send a request head, or each chunk of a body.
REQUEST_TIMEOUT = 10.0
# After answering with Connection: close, how long to wait for the client to
# close its side, so unread bytes in our receive buffer do not turn the close
# into a reset that destroys the response in flight.
LINGER_TIMEOUT = 1.0
MAX_WORK_MS = 60_000.0
# CPU is burned in slices, yielding to the event loop in between, so that
# signals, health checks and other requests are not starved by one request.
BURN_SLICE = 0.005
LEAK_TICK = 0.1
ACCEPT_BATCH = 64
ACCEPT_RETRY = 0.1
FLOOD_BATCH = 256
MIB = 1024 * 1024

# Bytes that are not valid UTF-8: a byte that never starts a sequence, and a
# lead byte followed by a byte that cannot continue it.
INVALID_UTF8 = b"\xff\xfe\xc3\x28"

# A sleep-like child; it exits on SIGTERM like any process with the default
# disposition, and never touches its inherited stdout or stderr.
CHILD_SOURCE = (
    "import signal, sys, time\n"
    "lifetime = float(sys.argv[1])\n"
    "if lifetime > 0:\n"
    "    time.sleep(lifetime)\n"
    "else:\n"
    "    while True:\n"
    "        signal.pause()\n"
)

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
METHODS = (b"GET", b"HEAD", b"POST")
DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


@dataclasses.dataclass(frozen=True)
class Options:
    exit_after: float
    exit_code: int
    ignore_signals: bool
    signal_timeout: float
    drain_timeout: float
    keepalive_grace: float
    log_fixed: str | None
    log_size: int
    log_interval: float
    log_count: int
    log_error: bool
    log_structured: bool
    log_invalid_utf8: bool
    close_stdout: bool
    port: int | None
    host: str
    reuse_port: bool
    health_path: str
    ready_after: float
    work_ms: float
    fail_health: bool
    leak_mb_per_s: float
    spawn_child: bool
    spawn_child_setsid: bool
    child_lifetime: float


class StartupError(Exception):
    """The worker could not start (for example, its port is taken)."""


class BadRequest(Exception):
    """A request this server refuses; the connection is closed after it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- options


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds >= 0, got {text!r}"
        )
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _exit_code(text: str) -> int:
    value = _count(text)
    if value > 255:
        raise argparse.ArgumentTypeError(f"expected 0 to 255, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected 0 to 65535, got {text!r}")
    return value


def _millis(text: str) -> float:
    value = _seconds(text)
    if value > MAX_WORK_MS:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_WORK_MS:.0f} ms, got {text!r}"
        )
    return value


def _url_path(text: str) -> str:
    if not text.startswith("/") or any(c.isspace() or c in "?#" for c in text):
        raise argparse.ArgumentTypeError(
            f"expected a path starting with '/', without spaces, '?' or '#', "
            f"got {text!r}"
        )
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A test worker that behaves like a small, well-behaved "
        "server, with switches for misbehaviour.",
        epilog="Durations are in seconds and may be fractional. "
        "See docs/processbin.md.",
    )
    # The one-letter aliases are those of the Go original's processbin, so
    # command lines written for it keep working.
    life = parser.add_argument_group("lifetime and signals").add_argument
    life("-t", "--exit-after", type=_seconds, default=0.0, help="0: never")
    life("--exit-code", type=_exit_code, default=0)
    life("-i", "--ignore-signals", action="store_true")
    life("-o", "--signal-timeout", type=_seconds, default=0.0)
    life("--drain-timeout", type=_seconds, default=10.0)
    life("--keepalive-grace", type=_seconds, default=1.0, help="in a drain")

    logs = parser.add_argument_group("logging").add_argument
    logs("-f", "--log-fixed", default=None, help="default: random hex")
    logs("-l", "--log-size", type=_count, default=150, help="random bytes")
    logs("-k", "--log-interval", type=_seconds, default=1.0, help="0: at once")
    logs("--log-count", type=_count, default=0, help="0: unlimited")
    logs("-e", "--log-error", action="store_true", help="also to stderr")
    logs("-j", "--log-structured", action="store_true", help="JSON lines")
    logs("--log-invalid-utf8", action="store_true")
    logs("--close-stdout", action="store_true", help="after the first line")

    http = parser.add_argument_group("HTTP server").add_argument
    http("-p", "--port", type=_port, default=None, help="0: any free port")
    http("--host", default="127.0.0.1")
    http("--reuse-port", action="store_true", help="set SO_REUSEPORT")
    http("--health-path", type=_url_path, default="/health")
    http("--ready-after", type=_seconds, default=0.0, help="503 until then")
    http("--work-ms", type=_millis, default=0.0, help="CPU per request to /")
    http("--fail-health", action="store_true")

    misc = parser.add_argument_group("resources").add_argument
    misc("--leak-mb-per-s", type=_seconds, default=0.0, help="MiB per second")
    misc("--spawn-child", action="store_true", help="in the same group")
    misc("--spawn-child-setsid", action="store_true", help="then exit")
    misc("--child-lifetime", type=_seconds, default=0.0, help="0: until killed")
    return parser


def parse_options(argv: list[str] | None) -> Options:
    """Parse a command line; exits with status 2 and one message if invalid."""
    namespace = _parser().parse_args(argv)
    return Options(**vars(namespace))


# ---------------------------------------------------------------- output


class Output:
    """Blocking writes of whole lines to stdout (and stderr for log lines).

    Writes block when the reader of a pipe falls behind, as they do in most
    real servers, so a supervisor that stops reading will see this worker
    stall: that is the behaviour it has to be tested against. A stream whose
    reader went away (EPIPE) is dropped and the worker keeps running.
    """

    def __init__(self, structured: bool, log_to_stderr: bool) -> None:
        self.structured = structured
        self._log_fds = [1, 2] if log_to_stderr else [1]
        self._dead: set[int] = set()

    def log(self, data: bytes) -> None:
        for fd in self._log_fds:
            self._write(fd, data)

    def event(self, text: str, **fields: object) -> None:
        """One line about the worker itself, always on stdout."""
        if self.structured:
            line = json.dumps({"msg": text, **fields}, separators=(",", ":"))
        else:
            details = " ".join(f"{key}={value}" for key, value in fields.items())
            line = f"{text} {details}" if details else text
        self._write(1, line.encode() + b"\n")

    def close(self) -> None:
        # /dev/null is put on fds 1 and 2 rather than leaving them closed: the
        # pipes are released all the same, so the reader sees end of file,
        # but a socket opened later can never land on fd 1 or 2 and receive
        # stray output.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        self._dead.update((1, 2))

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view and fd not in self._dead:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                # The stream was handed over in non-blocking mode.
                select.select([], [fd], [])
            except OSError:
                self._dead.add(fd)


def build_log_line(opts: Options) -> bytes:
    """The line logged over and over, newline included."""
    text = opts.log_fixed
    if text is None:
        text = os.urandom(opts.log_size).hex()
    half = len(text) // 2
    invalid = INVALID_UTF8 if opts.log_invalid_utf8 else b""

    if opts.log_structured:
        head, tail = _json_chars(text[:half]), _json_chars(text[half:])
        return b'{"key":"' + head + invalid + tail + b'"}\n'

    return text[:half].encode() + invalid + text[half:].encode() + b"\n"


def _json_chars(text: str) -> bytes:
    return json.dumps(text).encode()[1:-1]


async def log_lines(opts: Options, out: Output) -> None:
    """Write the log line on schedule; closes the output after the first."""
    line = build_log_line(opts)
    if opts.log_interval == 0:
        await _log_burst(opts, out, line)
        return

    loop = asyncio.get_running_loop()
    start = loop.time()
    written = 0
    while opts.log_count == 0 or written < opts.log_count:
        _log_once(opts, out, line, written)
        written += 1
        # Ticks are counted from the start so that the rate does not drift
        # with the time the writes themselves take.
        await asyncio.sleep(max(0.0, start + written * opts.log_interval - loop.time()))


async def _log_burst(opts: Options, out: Output, line: bytes) -> None:
    total = max(1, opts.log_count)
    _log_once(opts, out, line, 0)
    written = 1
    while written < total:
        batch = min(FLOOD_BATCH, total - written)
        out.log(line * batch)
        written += batch
        await asyncio.sleep(0)


def _log_once(opts: Options, out: Output, line: bytes, index: int) -> None:
    out.log(line)
    if index == 0 and opts.close_stdout:
        out.close()


# ---------------------------------------------------------------- resources


async def leak_memory(mib_per_s: float) -> None:
    """Allocate and touch memory at a steady rate, and never free it."""
    hoard: list[bytes] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    leaked = 0
    while True:
        await asyncio.sleep(LEAK_TICK)
        due = int(mib_per_s * MIB * (loop.time() - start)) - leaked
        if due > 0:
            # Repeating a byte writes every page, so the memory is resident
            # rather than merely reserved.
            hoard.append(b"\x01" * due)
            leaked += due


def spawn_child(opts: Options, out: Output) -> subprocess.Popen[bytes]:
    """Start the sleep-like child.

    In the same process group it inherits stdout and stderr, as a helper
    started by a shell script does, so the worker's pipes stay open while it
    lives. With setsid it detaches like a daemon: new session, all three
    streams on /dev/null, so it holds nothing of the worker's but its pid.
    """
    detached = subprocess.DEVNULL if opts.spawn_child_setsid else None
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", CHILD_SOURCE, str(opts.child_lifetime)],
        stdin=subprocess.DEVNULL,
        stdout=detached,
        stderr=detached,
        start_new_session=opts.spawn_child_setsid,
    )
    out.event("spawned child", child_pid=child.pid, setsid=opts.spawn_child_setsid)
    return child


async def burn_cpu(ms: float) -> None:
    """Spend this much CPU time, counted on this thread's own clock."""
    remaining = ms / 1000.0
    while remaining > 0:
        step = min(remaining, BURN_SLICE)
        started = time.thread_time()
        while time.thread_time() - started < step:
            pass
        remaining -= step
        await asyncio.sleep(0)


# ---------------------------------------------------------------- HTTP


@dataclasses.dataclass
class Request:
    method: bytes
    path: bytes
    query: bytes
    keep_alive: bool
    http10: bool
    content_length: int
    expect_continue: bool


@dataclasses.dataclass(eq=False)
class Connection:
    task: asyncio.Task[None] | None = None
    # Set while waiting for the next request, so that a drain can shorten
    # the wait to the keep-alive grace.
    idle_timer: asyncio.Timeout | None = None


class HttpServer:
    def __init__(self, opts: Options, worker_id: str, started: float) -> None:
        self._opts = opts
        self._started = started
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._connections: set[Connection] = set()
        self._all_closed = asyncio.Event()
        self._draining = False
        self._grace_deadline = 0.0
        self._headers = (
            f"X-Worker-Id: {_header_safe(worker_id)}\r\n"
            f"X-Worker-Pid: {os.getpid()}\r\n"
            "Server: monoceros-processbin\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
        ).encode()
        self._hello = f"hello from processbin {worker_id}\n".encode()

    @property
    def connections(self) -> int:
        return len(self._connections)

    def listen(self) -> tuple[str, int]:
        """Bind and listen; returns the address actually bound."""
        opts = self._opts
        try:
            self._sock = _listening_socket(opts.host, opts.port or 0, opts.reuse_port)
        except OSError as err:
            raise StartupError(
                f"cannot listen on {opts.host} port {opts.port}: {err.strerror}"
            ) from err

        self._loop.add_reader(self._sock.fileno(), self._accept)
        host, port = self._sock.getsockname()[:2]
        return host, port

    def begin_drain(self, timeout: float) -> None:
        """Stop accepting now and give idle connections their last grace."""
        self._draining = True
        now = self._loop.time()
        grace = min(self._opts.keepalive_grace, timeout)
        self._grace_deadline = now + grace

        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._accept(batch=sys.maxsize)
            self._sock.close()
            self._sock = None

        for conn in self._connections:
            if conn.idle_timer is not None:
                conn.idle_timer.reschedule(self._grace_deadline)
        if not self._connections:
            self._all_closed.set()

    async def wait_drained(self, timeout: float) -> int:
        """Wait for connections to finish; returns how many had to be cut."""
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout)
        except TimeoutError:
            pass

        cut = [conn.task for conn in self._connections if conn.task]
        for task in cut:
            task.cancel()
        await asyncio.gather(*cut, return_exceptions=True)
        return len(cut)

    # -- accepting

    def _accept(self, batch: int = ACCEPT_BATCH) -> None:
        assert self._sock is not None
        for _ in range(batch):
            try:
                client, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError:
                # Out of descriptors or buffers: the socket stays readable, so
                # pause accepting briefly instead of spinning on it.
                self._pause_accepting()
                return
            self._adopt(client)

    def _pause_accepting(self) -> None:
        assert self._sock is not None
        fd = self._sock.fileno()
        self._loop.remove_reader(fd)

        def resume() -> None:
            if self._sock is not None and self._sock.fileno() == fd:
                self._loop.add_reader(fd, self._accept)

        self._loop.call_later(ACCEPT_RETRY, resume)

    def _adopt(self, client: socket.socket) -> None:
        # Registered before its task runs, so that a drain starting in
        # between still waits for it.
        client.setblocking(False)
        conn = Connection()
        self._connections.add(conn)
        conn.task = self._loop.create_task(self._serve(conn, client))

    # -- one connection

    async def _serve(self, conn: Connection, client: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(
                sock=client, limit=MAX_HEAD_BYTES
            )
            await self._converse(conn, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            if writer is not None:
                writer.close()
            else:
                client.close()
            self._connections.discard(conn)
            if self._draining and not self._connections:
                self._all_closed.set()

    async def _converse(
        self,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        while True:
            try:
                first = await self._next_request_line(conn, reader)
                if not first:
                    return
                request = await self._read_request(first, reader, writer)
            except BadRequest as err:
                body = f"{err}\n".encode()
                writer.write(self._response(err.status, body, False, False))
                await _linger(reader, writer)
                return

            status, body = await self._route(request)
            keep_alive = request.keep_alive and not self._draining
            writer.write(
                self._response(
                    status, body, keep_alive, request.http10, request.method == b"HEAD"
                )
            )
            await writer.drain()
            if not keep_alive:
                await _linger(reader, writer)
                return

    async def _next_request_line(
        self, conn: Connection, reader: asyncio.StreamReader
    ) -> bytes:
        """The next request line, or b"" if the client left or waited too long."""
        if self._draining:
            deadline = self._grace_deadline
        else:
            deadline = self._loop.time() + IDLE_TIMEOUT

        try:
            async with asyncio.timeout_at(deadline) as timer:
                conn.idle_timer = timer
                line = await reader.readline()
                # Empty lines before a request are allowed (RFC 9112 2.2).
                while line in (b"\r\n", b"\n"):
                    line = await reader.readline()
        except TimeoutError:
            return b""
        except ValueError:
            raise BadRequest(414, "request line too long") from None
        finally:
            conn.idle_timer = None
        return line if line.endswith(b"\n") else b""

    async def _read_request(
        self,
        first: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> Request:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await _read_head(first, reader)
        except TimeoutError:
            raise BadRequest(408, "request head not received in time") from None

        if request.content_length and request.expect_continue:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await _discard_body(reader, request.content_length)
        return request

    async def _route(self, request: Request) -> tuple[int, bytes]:
        if request.method not in METHODS:
            return 405, b"method not allowed\n"

        if request.path == self._opts.health_path.encode():
            return self._health()

        if request.path != b"/":
            return 404, b"not found\n"

        work_ms = _query_work_ms(request.query, self._opts.work_ms)
        if work_ms is None:
            return 400, b"work_ms must be a number from 0 to 60000\n"
        if work_ms:
            await burn_cpu(work_ms)
        return 200, self._hello

    def _health(self) -> tuple[int, bytes]:
        if self._opts.fail_health:
            return 503, b"failing\n"
        if self._draining:
            return 503, b"draining\n"
        if time.monotonic() - self._started < self._opts.ready_after:
            return 503, b"not ready\n"
        return 200, b"ok\n"

    def _response(
        self,
        status: int,
        body: bytes,
        keep_alive: bool,
        http10: bool,
        head_only: bool = False,
    ) -> bytes:
        if not keep_alive:
            connection = b"Connection: close\r\n"
        elif http10:
            connection = b"Connection: keep-alive\r\n"
        else:
            connection = b""
        allow = b"Allow: GET, HEAD, POST\r\n" if status == 405 else b""

        head = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\n"
            f"Date: {_http_date()}\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode()
        return (
            head
            + self._headers
            + allow
            + connection
            + b"\r\n"
            + (b"" if head_only else body)
        )


def _listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _read_head(first: bytes, reader: asyncio.StreamReader) -> Request:
    parts = first.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3 or not parts[0].isalpha():
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are served")
        raise BadRequest(400, "malformed request line")

    headers = await _read_headers(reader, len(first))
    if b"transfer-encoding" in headers:
        raise BadRequest(501, "Transfer-Encoding is not supported; send Content-Length")
    if version == b"HTTP/1.1" and b"host" not in headers:
        raise BadRequest(400, "missing Host header")

    length = headers.get(b"content-length", b"0")
    if not length.isdigit():
        raise BadRequest(400, "invalid Content-Length")

    tokens = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
    http10 = version == b"HTTP/1.0"
    path, _, query = _origin_form(target).partition(b"?")
    return Request(
        method=method,
        path=path,
        query=query,
        keep_alive=b"keep-alive" in tokens if http10 else b"close" not in tokens,
        http10=http10,
        content_length=int(length),
        expect_continue=headers.get(b"expect", b"").lower() == b"100-continue",
    )


async def _read_headers(reader: asyncio.StreamReader, size: int) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for _ in range(MAX_HEADERS + 1):
        try:
            line = await reader.readline()
        except ValueError:
            raise BadRequest(431, "header line too long") from None
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)

        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        line = line.rstrip(b"\r\n")
        if not line:
            return headers

        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise BadRequest(400, "malformed header line")
        name, value = name.lower(), value.strip(b" \t")
        if name == b"content-length" and headers.get(name, value) != value:
            raise BadRequest(400, "conflicting Content-Length headers")
        headers[name] = headers[name] + b"," + value if name in headers else value
    raise BadRequest(431, "too many header lines")


def _origin_form(target: bytes) -> bytes:
    # Absolute form (RFC 9112 3.2.2) is reduced to its path.
    for scheme in (b"http://", b"https://"):
        if target.lower().startswith(scheme):
            slash = target.find(b"/", len(scheme))
            return target[slash:] if slash >= 0 else b"/"
    if not target.startswith(b"/"):
        raise BadRequest(400, "request target must be a path")
    return target


async def _discard_body(reader: asyncio.StreamReader, length: int) -> None:
    while length > 0:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            chunk = await reader.read(min(length, 64 * 1024))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", length)
        length -= len(chunk)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and wait briefly for the client to close its side."""
    try:
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_TIMEOUT):
            while await reader.read(64 * 1024):
                pass
    except (ConnectionError, TimeoutError, ValueError):
        pass


def _query_work_ms(query: bytes, default: float) -> float | None:
    """The work_ms query parameter, the default, or None if it is invalid."""
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key != b"work_ms":
            continue
        try:
            ms = float(value)
        except ValueError:
            return None
        return ms if 0 <= ms <= MAX_WORK_MS else None
    return default


def _http_date() -> str:
    t = time.gmtime()
    return (
        f"{DAYS[t.tm_wday]}, {t.tm_mday:02d} {MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def _header_safe(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)


# ---------------------------------------------------------------- main


class Worker:
    """The whole process: its server, its timers and its exit status."""

    def __init__(self, opts: Options, out: Output, started: float) -> None:
        self._opts = opts
        self._out = out
        self._started = started
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = self._loop.create_future()
        self._server: HttpServer | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = False

    async def run(self) -> int:
        opts = self._opts
        # Handlers go in first: a supervisor may signal as soon as it sees
        # the listening line.
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._on_signal, signum)

        if opts.spawn_child_setsid:
            spawn_child(opts, self._out)
            return opts.exit_code

        if opts.spawn_child:
            self._loop.add_signal_handler(signal.SIGCHLD, self._reap_child)
            self._child = spawn_child(opts, self._out)

        if opts.port is not None:
            worker_id = os.environ.get("MULTIPROCESS_WORKER_ID") or str(os.getpid())
            self._server = HttpServer(opts, worker_id, self._started)
            host, port = self._server.listen()
            self._out.event("listening", host=host, port=port)

        if opts.exit_after > 0:
            self._loop.call_later(opts.exit_after, self._finish, opts.exit_code)

        background = [self._loop.create_task(log_lines(opts, self._out))]
        if opts.leak_mb_per_s > 0:
            background.append(self._loop.create_task(leak_memory(opts.leak_mb_per_s)))
        try:
            return await self._done
        finally:
            for task in background:
                task.cancel()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._opts.ignore_signals:
            self._out.event("ignoring signal", signal=name)
            return

        # A second signal does not cut the drain short: a Ctrl-C in a terminal
        # reaches the whole process group, and the supervisor's own SIGTERM
        # then follows it.
        if self._stopping:
            self._out.event("already stopping", signal=name)
            return

        self._stopping = True
        if self._server is not None:
            self._server.begin_drain(self._opts.drain_timeout)
        self._loop.create_task(self._shut_down(signum))

    async def _shut_down(self, signum: int) -> None:
        opts = self._opts
        name = signal.Signals(signum).name
        if self._server is not None:
            self._out.event(
                "draining", signal=name, connections=self._server.connections
            )
            cut = await self._server.wait_drained(opts.drain_timeout)
            self._out.event("drained", connections_cut=cut)
        else:
            self._out.event("stopping", signal=name)

        if opts.signal_timeout > 0:
            await asyncio.sleep(opts.signal_timeout)
        self._finish(128 + signum)

    def _finish(self, status: int) -> None:
        if not self._done.done():
            self._out.event("exiting", status=status)
            self._done.set_result(status)

    def _reap_child(self) -> None:
        if self._child is not None and self._child.poll() is not None:
            self._out.event(
                "child exited", child_pid=self._child.pid, status=self._child.returncode
            )
            self._child = None


async def _run(opts: Options, started: float) -> int:
    out = Output(opts.log_structured, opts.log_error)
    return await Worker(opts, out, started).run()


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    opts = parse_options(argv)
    try:
        return asyncio.run(_run(opts, started))
    except StartupError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Only reachable before the signal handlers are installed.
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
