"""processbin as a real process: real sockets, real signals, real memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

DEADLINE = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Worker:
    """One processbin child, with its stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = 0

    async def line(self) -> bytes:
        assert self.proc.stdout is not None
        async with asyncio.timeout(DEADLINE):
            return await self.proc.stdout.readline()

    async def event(self, msg: str) -> dict[str, object]:
        """Read JSON lines (needs --log-structured) until an event named msg."""
        while True:
            line = await self.line()
            if not line:
                raise AssertionError(f"stdout ended before the {msg!r} event")
            record = json.loads(line)
            if record.get("msg") == msg:
                return record

    async def rest(self) -> list[bytes]:
        """Every remaining line of stdout, up to end of file."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(DEADLINE):
            return (await self.proc.stdout.read()).splitlines()

    async def exit_status(self) -> int:
        async with asyncio.timeout(DEADLINE):
            return await self.proc.wait()

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)


Start = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start processbins in their own process groups; kill the groups after."""
    workers: list[Worker] = []

    async def _start(*args: str, env: dict[str, str] | None = None) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "monoceros.processbin",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        worker = Worker(proc)
        workers.append(worker)
        return worker

    yield _start

    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        await worker.exit_status()


async def serve(start: Start, *args: str, **kwargs: dict[str, str]) -> Worker:
    """A processbin serving HTTP on a free port, once it says it listens."""
    worker = await start("--port", "0", "-j", "-k", "0", "-f", "x", *args, **kwargs)
    listening = await worker.event("listening")
    worker.port = int(listening["port"])  # type: ignore[arg-type]
    return worker


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """A raw HTTP/1.1 client on one connection, so keep-alive is explicit."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(
        self,
        method: str = "GET",
        path: str = "/",
        body: bytes = b"",
        version: str = "HTTP/1.1",
        headers: str = "",
    ) -> None:
        head = f"{method} {path} {version}\r\nHost: test\r\n{headers}"
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)

    async def response(self, head_only: bool = False) -> Response:
        async with asyncio.timeout(DEADLINE):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode().split("\r\n")[:-2]
            headers = dict(line.lower().split(": ", 1) for line in lines)
            length = 0 if head_only else int(headers["content-length"])
            body = await self.reader.readexactly(length)
        return Response(int(status_line.split()[1]), headers, body)

    async def get(self, path: str = "/", **kwargs: str) -> Response:
        self.send("GET", path, **kwargs)
        return await self.response()

    async def at_eof(self) -> bool:
        async with asyncio.timeout(DEADLINE):
            return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.close()


async def get(port: int, path: str = "/") -> Response:
    client = await Client.connect(port)
    try:
        return await client.get(path)
    finally:
        client.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll check until it holds, or fail after the deadline."""
    async with asyncio.timeout(DEADLINE):
        while not await check():
            await asyncio.sleep(0.02)
    assert await check(), what


async def refuses_connections(port: int) -> bool:
    # A reset means the handshake was under way when the listener closed.
    try:
        client = await Client.connect(port)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    client.close()
    return False


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def process_group(pid: int) -> tuple[int, int]:
    """(process group, session) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[2]), int(fields[3])


# ------------------------------------------------------------------ HTTP


async def test_answers_with_worker_id_on_a_keep_alive_connection(start: Start):
    worker = await serve(start, env={"MULTIPROCESS_WORKER_ID": "web_3"})
    client = await Client.connect(worker.port)

    first = await client.get("/")
    second = await client.get("/")

    for response in (first, second):
        assert response.status == 200
        assert response.headers["x-worker-id"] == "web_3"
        assert response.headers["x-worker-pid"] == str(worker.pid)
        assert response.body == b"hello from processbin web_3\n"
        assert response.headers.get("connection") != "close"
    client.close()


async def test_worker_id_defaults_to_the_pid(start: Start):
    env = {"MULTIPROCESS_WORKER_ID": ""}
    worker = await serve(start, env=env)

    response = await get(worker.port)

    assert response.headers["x-worker-id"] == str(worker.pid)


async def test_post_body_is_discarded_and_head_has_no_body(start: Start):
    worker = await serve(start)
    client = await Client.connect(worker.port)

    # A body that looks like a request must not be parsed as the next one.
    client.send("POST", "/", body=b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    posted = await client.response()
    client.send("HEAD", "/")
    head = await client.response(head_only=True)
    missing = await client.get("/nope")

    assert posted.status == 200 and posted.body.startswith(b"hello")
    assert head.status == 200 and int(head.headers["content-length"]) > 0
    assert missing.status == 404
    client.close()


async def test_pipelined_requests_are_answered_in_order(start: Start):
    worker = await serve(start)
    client = await Client.connect(worker.port)

    client.send("GET", "/health")
    client.send("GET", "/missing")
    client.send("GET", "/", headers="Connection: close\r\n")
    statuses = [(await client.response()).status for _ in range(3)]

    assert statuses == [200, 404, 200]
    assert await client.at_eof()


async def test_http10_and_bad_requests_close_the_connection(start: Start):
    worker = await serve(start)

    old = await Client.connect(worker.port)
    old.send("GET", "/", version="HTTP/1.0")
    assert (await old.response()).headers["connection"] == "close"
    assert await old.at_eof()

    bad = await Client.connect(worker.port)
    bad.writer.write(b"NONSENSE\r\n\r\n")
    refused = await bad.response()
    assert refused.status == 400 and refused.headers["connection"] == "close"
    assert await bad.at_eof()

    skewed = await get(worker.port, "/?work_ms=lots")
    assert skewed.status == 400 and b"work_ms" in skewed.body


async def test_health_turns_ready_after_the_delay(start: Start):
    worker = await serve(start, "--ready-after", "1", "--health-path", "/ready")

    assert (await get(worker.port, "/ready")).status == 503

    async def ready() -> bool:
        return (await get(worker.port, "/ready")).status == 200

    await eventually(ready, "health never turned 200")


async def test_fail_health_always_answers_503(start: Start):
    worker = await serve(start, "--fail-health")

    response = await get(worker.port, "/health")

    assert response.status == 503
    assert (await get(worker.port, "/")).status == 200


async def test_two_workers_share_a_port_with_reuse_port(start: Start):
    first = await serve(start, "--reuse-port")
    second = await serve(start, "--reuse-port", "--port", str(first.port))
    assert second.port == first.port
    seen: set[str] = set()

    async def both_answered() -> bool:
        seen.add((await get(first.port)).headers["x-worker-pid"])
        return seen == {str(first.pid), str(second.pid)}

    await eventually(both_answered, "the kernel never picked both workers")


async def test_a_taken_port_is_refused_with_one_message(start: Start):
    first = await serve(start)

    taken = await start("--port", str(first.port))

    assert await taken.exit_status() == 1
    assert taken.proc.stderr is not None
    message = (await taken.proc.stderr.read()).decode()
    assert f"cannot listen on 127.0.0.1 port {first.port}" in message
    assert "Traceback" not in message


# ------------------------------------------------------------------ drain


async def test_sigterm_lets_an_idle_keep_alive_connection_send_one_more(
    start: Start,
):
    worker = await serve(start)
    client = await Client.connect(worker.port)
    assert (await client.get()).status == 200

    worker.signal(signal.SIGTERM)
    await eventually(lambda: refuses_connections(worker.port), "still accepting")
    last = await client.get()

    assert last.status == 200
    assert last.headers["connection"] == "close"
    assert await client.at_eof()
    assert await worker.exit_status() == 143


async def test_requests_in_flight_complete_during_the_drain(start: Start):
    worker = await serve(start)
    client = await Client.connect(worker.port)
    ticks = cpu_ticks(worker.pid)
    client.send("GET", "/?work_ms=300")

    # The request is in flight once the worker has burned some of its CPU.
    async def burning() -> bool:
        return cpu_ticks(worker.pid) - ticks >= 0.05 * CLK_TCK

    await eventually(burning, "the request never started")
    worker.signal(signal.SIGTERM)
    draining = await worker.event("draining")
    response = await client.response()

    assert draining["connections"] == 1
    assert response.status == 200
    assert response.headers["connection"] == "close"
    assert (await worker.event("drained"))["connections_cut"] == 0
    assert await worker.exit_status() == 143


async def test_an_idle_connection_is_closed_after_the_grace(start: Start):
    worker = await serve(start, "--keepalive-grace", "0.2")
    client = await Client.connect(worker.port)
    assert (await client.get()).status == 200

    worker.signal(signal.SIGTERM)

    assert await client.at_eof()
    assert (await worker.event("drained"))["connections_cut"] == 0
    assert await worker.exit_status() == 143


async def test_a_request_longer_than_the_drain_timeout_is_cut(start: Start):
    worker = await serve(start, "--drain-timeout", "0.3")
    client = await Client.connect(worker.port)
    ticks = cpu_ticks(worker.pid)
    client.send("GET", "/?work_ms=20000")

    async def burning() -> bool:
        return cpu_ticks(worker.pid) - ticks >= 0.05 * CLK_TCK

    await eventually(burning, "the request never started")
    worker.signal(signal.SIGTERM)

    assert await client.at_eof()
    assert (await worker.event("drained"))["connections_cut"] == 1
    assert await worker.exit_status() == 143


QUEUED = 200


async def test_connections_queued_in_the_kernel_are_served_in_a_drain(
    start: Start,
):
    worker = await serve(start)
    # Stopped, the worker cannot accept: the handshakes complete in the
    # kernel's queue, and SIGTERM is pending when it resumes. More are queued
    # than one round of accepting takes, so the signal is handled while some
    # still wait in the queue.
    worker.signal(signal.SIGSTOP)
    clients = [await Client.connect(worker.port) for _ in range(QUEUED)]
    for client in clients:
        client.send("GET", "/")
    worker.signal(signal.SIGTERM)
    worker.signal(signal.SIGCONT)

    responses = [await client.response() for client in clients]

    assert [r.status for r in responses] == [200] * QUEUED
    assert {r.headers["connection"] for r in responses} == {"close"}
    assert await worker.exit_status() == 143


async def test_sigint_without_a_server_waits_the_signal_timeout(start: Start):
    worker = await start("-j", "-k", "0", "-f", "x", "--signal-timeout", "0.3")
    await worker.line()
    loop = asyncio.get_running_loop()

    worker.signal(signal.SIGINT)
    stopping = await worker.event("stopping")
    began = loop.time()
    status = await worker.exit_status()

    assert stopping["signal"] == "SIGINT"
    assert status == 130
    assert loop.time() - began >= 0.25


async def test_ignore_signals_keeps_serving_after_sigterm(start: Start):
    worker = await serve(start, "--ignore-signals")

    worker.signal(signal.SIGTERM)
    ignored = await worker.event("ignoring signal")
    response = await get(worker.port)

    assert ignored["signal"] == "SIGTERM"
    assert response.status == 200
    assert worker.proc.returncode is None


async def test_exit_after_exits_with_the_exit_code(start: Start):
    worker = await start("-k", "0", "--exit-after", "0.2", "--exit-code", "3")

    assert await worker.exit_status() == 3


async def test_invalid_flags_get_one_message_and_status_2(start: Start):
    worker = await start("--port", "70000")

    assert await worker.exit_status() == 2
    assert worker.proc.stderr is not None
    message = (await worker.proc.stderr.read()).decode()
    assert "argument -p/--port: expected 0 to 65535, got '70000'" in message
    assert "Traceback" not in message


# ------------------------------------------------------------------ logs

HEX20 = re.compile(rb"[0-9a-f]{20}")


async def test_log_size_and_count_bound_the_lines(start: Start):
    worker = await start("--log-size", "10", "--log-count", "3", "-k", "0.01")

    lines = [await worker.line() for _ in range(3)]
    worker.signal(signal.SIGTERM)
    rest = await worker.rest()

    assert all(HEX20.fullmatch(line.rstrip(b"\n")) for line in lines)
    assert rest == [b"stopping signal=SIGTERM", b"exiting status=143"]


async def test_default_line_is_300_hex_characters(start: Start):
    worker = await start("-k", "0")

    line = (await worker.line()).rstrip(b"\n")

    assert re.fullmatch(rb"[0-9a-f]{300}", line)


async def test_a_flood_writes_exactly_log_count_lines(start: Start):
    worker = await start("-k", "0", "--log-count", "20000", "-l", "10", "-t", "1")

    lines = await worker.rest()

    logged = [line for line in lines if HEX20.fullmatch(line)]
    assert len(logged) == 20000
    assert lines[-1] == b"exiting status=0"


async def test_structured_lines_are_json_on_stdout_and_stderr(start: Start):
    text = 'a "quoted" line'
    worker = await start("-j", "-e", "-f", text, "-k", "0", "-t", "0.2")

    out = await worker.rest()
    assert worker.proc.stderr is not None
    err = (await worker.proc.stderr.read()).splitlines()

    assert json.loads(out[0]) == {"key": text}
    assert [json.loads(line) for line in err] == [{"key": text}]


@pytest.mark.parametrize("structured", [False, True])
async def test_invalid_utf8_lines(start: Start, structured: bool):
    args = ["-j"] if structured else []
    worker = await start("--log-invalid-utf8", "-k", "0", "-f", "abcd", *args)

    line = await worker.line()

    with pytest.raises(UnicodeDecodeError):
        line.decode("utf-8")
    text = line.decode("utf-8", errors="replace")
    assert text.startswith('{"key":"ab' if structured else "ab")
    assert text.rstrip().endswith('cd"}' if structured else "cd")


async def test_close_stdout_closes_both_streams_and_keeps_running(start: Start):
    worker = await start("--close-stdout", "-f", "once", "-k", "0.05", "-e")

    first = await worker.line()
    end = await worker.line()
    assert worker.proc.stderr is not None
    err = await worker.proc.stderr.read()

    assert (first, end, err) == (b"once\n", b"", b"once\n")
    assert worker.proc.returncode is None


# ------------------------------------------------------------------ resources


async def test_leak_grows_resident_memory(start: Start):
    worker = await start("-k", "0", "--leak-mb-per-s", "200")
    await worker.line()
    baseline = rss_kib(worker.pid)

    async def grown() -> bool:
        return rss_kib(worker.pid) - baseline >= 64 * 1024

    await eventually(grown, "resident memory did not grow by 64 MiB")


def running(pid: int) -> bool:
    """Alive and not a zombie (an unreaped child counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_spawn_child_stays_in_the_process_group(start: Start):
    worker = await start("-j", "-k", "0", "-f", "x", "--spawn-child")

    spawned = await worker.event("spawned child")
    child = int(spawned["child_pid"])  # type: ignore[arg-type]

    assert process_group(child) == (worker.pid, worker.pid)
    # As a supervisor does: the whole group, so the child goes too. Whether
    # the worker logs the child's exit before its own depends on which of
    # the two the scheduler runs first; that the child is gone does not.
    os.killpg(worker.pid, signal.SIGTERM)
    assert await worker.exit_status() == 143
    assert not running(child)


async def test_spawn_child_setsid_escapes_and_the_parent_exits(start: Start):
    worker = await start("-j", "-k", "0", "--spawn-child-setsid", "--exit-code", "4")
    spawned = await worker.event("spawned child")
    child = int(spawned["child_pid"])  # type: ignore[arg-type]

    try:
        assert await worker.exit_status() == 4
        assert process_group(child) == (child, child)
    finally:
        os.kill(child, signal.SIGKILL)
