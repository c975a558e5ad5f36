"""Worker output under abuse: random bytes, giant lines and floods.

Property tests drive the real `PipeReader` over a real pipe with random
byte streams cut into random chunks (MAX_LINE made small so that cutting
is exercised), then the real `LineForwarder` and `OutputQueue`: every byte
of every line must come out, in order, split only at newlines or at the
MAX_LINE limit, whatever the chunking. An end-to-end test runs workers that
write megabytes of random bytes, giant lines and floods of lines on both
stdout and stderr under a real `monoceros`: the workers must finish
writing (a reader that stalled would leave them blocked on a full pipe),
their bytes must be found in Monoceros's output, and Monoceros must still
serve `/health`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import sys
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monoceros import output
from monoceros.logs import STDERR, STDOUT, JsonFormatter, OutputQueue, QueueLogHandler
from monoceros.output import LineForwarder, PipeReader
from tests.conftest import wait_for_sync
from tests.harness import Monoceros

PROPERTY = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Bytes that matter to the reader and the forwarder: newlines, CR, JSON's
# braces and quotes, invalid UTF-8, a multi-byte character. No backslash:
# then the escaping of invalid UTF-8 (`\xff`) can be undone exactly.
ALPHABET = [b"\n", b"\r", b"{", b"}", b'"', b":", b"a", b"b", b" ", b"\xff",
            b"\xc3", b"\xa9", b"\xe2\x82\xac", b"\x00"]  # fmt: skip
JSON_LINES = st.dictionaries(
    st.sampled_from(["k", "msg", "n", "worker_id"]),
    st.one_of(st.integers(), st.text(alphabet="ab é€{}", max_size=5)),
    max_size=3,
).map(lambda obj: json.dumps(obj, ensure_ascii=False).encode() + b"\n")


@st.composite
def streams(draw) -> bytes:
    """Junk made of the bytes above, with whole JSON objects mixed in."""
    parts = draw(
        st.lists(
            st.one_of(
                st.lists(st.sampled_from(ALPHABET), max_size=40).map(b"".join),
                JSON_LINES,
            ),
            max_size=12,
        )
    )
    return b"".join(parts)


@st.composite
def chunked(draw) -> tuple[bytes, list[bytes]]:
    data = draw(streams())
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def expected_pieces(data: bytes, limit: int) -> list[tuple[bytes, bool]]:
    """Lines split at newlines, then into pieces of `limit` bytes, every
    piece but a line's last flagged truncated; an unterminated last line
    counts as a line."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    pieces = []
    for line in lines:
        starts = range(0, len(line), limit) if line else [0]
        for start in starts:
            pieces.append((line[start : start + limit], start + limit < len(line)))
    return pieces


def read_through_pipe(chunks: list[bytes], on_line) -> None:
    """Feed `chunks` through a real pipe, one read per chunk, to a reader."""

    async def run() -> None:
        r, w = os.pipe()
        reader = PipeReader(r, on_line)
        try:
            for chunk in chunks:
                os.write(w, chunk)  # small: never blocks on the pipe
                reader.drain()
        finally:
            os.close(w)
        reader.drain()  # end of file: the reader closes and flushes
        assert reader.closed.done()

    asyncio.run(run())


@PROPERTY
@given(case=chunked(), limit=st.integers(1, 9))
def test_reader_splits_only_at_newlines_and_the_limit(case, limit):
    data, chunks = case
    pieces: list[tuple[bytes, bool]] = []
    with mock.patch.object(output, "MAX_LINE", limit):
        read_through_pipe(chunks, lambda line, cut: pieces.append((line, cut)))
    assert pieces == expected_pieces(data, limit)


# ----------------------------------------------- reader, forwarder, queue


class Pipeline:
    """PipeReader → LineForwarder → OutputQueue, with both of Monoceros's
    output streams written to one buffer, so that order is kept."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.queue = OutputQueue({STDOUT: self.buffer, STDERR: self.buffer})
        self.forwarder = LineForwarder(self.queue, "fz", "fz-0")
        self.handler = QueueLogHandler(self.queue)
        self.handler.setFormatter(JsonFormatter())
        self.logger = logging.getLogger("monoceros.worker")

    def __enter__(self) -> Pipeline:
        self.saved = self.logger.level, self.logger.propagate
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.level, self.logger.propagate = self.saved
        self.queue.close()

    def run(self, chunks: list[bytes], stream: int) -> list[bytes]:
        start = self.buffer.tell()
        forward = self.forwarder.stdout if stream == STDOUT else self.forwarder.stderr
        read_through_pipe(chunks, forward)
        self.queue.flush()
        return self.buffer.getvalue()[start:].splitlines()


PASSED = b'{"worker_id":"fz-0"'


def recover(out: bytes, stream: int) -> tuple[bytes, bool, bool]:
    """The bytes of the worker's line (or piece) an output line carries,
    whether it was cut, and whether it was passed through as JSON. Undoes
    the wrapping, or the splicing of `worker_id` into a JSON object."""
    if out.startswith(PASSED):
        body = out[len(PASSED) :]
        return b"{" + body.removeprefix(b","), False, True
    record = json.loads(out)
    assert record["worker_id"] == "fz-0" and record["pool"] == "fz"
    key = "worker_info_msg" if stream == STDOUT else "worker_error_msg"
    assert record["level"] == ("info" if stream == STDOUT else "error")
    escaped = record[key].encode()
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes.fromhex(m[1].decode()),
                 escaped)
    return raw, record.get("truncated", False), False


@PROPERTY
@given(case=chunked(), limit=st.integers(1, 9), stream=st.sampled_from([1, 2]))
def test_every_byte_of_every_line_comes_out_in_order(case, limit, stream):
    data, chunks = case
    with Pipeline() as pipeline, mock.patch.object(output, "MAX_LINE", limit):
        outputs = pipeline.run(chunks, stream)

    lines: list[bytes] = []
    current = b""
    for out in outputs:
        raw, cut, passed = recover(out, stream)
        assert not (passed and current), "the tail of a cut line taken for JSON"
        current += raw
        if not cut:
            lines.append(current)
            current = b""
    assert current == b""

    # A line's CR before its newline goes (CRLF endings); whitespace right
    # after the `{` of a JSON object passed through is not kept.
    expected = []
    for line, _ in expected_pieces(data, len(data) + 1):
        expected.append(line.removesuffix(b"\r"))
    assert len(lines) == len(expected)
    for got, want in zip(lines, expected, strict=True):
        if got != want:
            assert got.startswith(b"{") and got == b"{" + want[1:].lstrip(), (
                got, want)


def test_tail_of_a_cut_line_is_never_taken_for_json():
    with Pipeline() as pipeline, mock.patch.object(output, "MAX_LINE", 4):
        outputs = pipeline.run([b"abcd{ }\n{}\n"], STDOUT)
    assert [recover(out, STDOUT) for out in outputs] == [
        (b"abcd", True, False),
        (b"{ }", False, False),
        (b"{}", False, True),
    ]


def test_a_burst_is_written_not_dropped_while_output_flows(tmp_path):
    """100,000 records as fast as the loop can make them, to a file that
    never blocks: the writer thread keeps up and drops nothing. Written a
    line at a time it lost 15,000-47,000 of them to the GIL (see
    OutputQueue._run)."""
    path = tmp_path / "out.log"
    with path.open("wb") as f:
        queue = OutputQueue({STDOUT: f, STDERR: f})
        dropped: list[int] = []
        queue.on_drop = dropped.append
        handler = QueueLogHandler(queue)
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("tests.burst")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            for i in range(100_000):
                logger.warning("worker stdout", extra={"worker_info_msg": str(i)})
            queue.close(timeout=30)
        finally:
            logger.removeHandler(handler)
    lines = path.read_bytes().splitlines()
    assert sum(dropped) == 0 and len(lines) == 100_000
    assert [json.loads(line)["worker_info_msg"] for line in lines[::9999]] == [
        str(i) for i in range(0, 100_000, 9999)
    ]


# ------------------------------------------------ real workers, real pipes

WRITER = r"""
import os, random, sys, time

mode, out_dir, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
written = {1: bytearray(), 2: bytearray()}


def write(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    written[fd] += data


if mode == "random":
    # Random bytes, backslash and CR taken out so the test can undo escaping.
    for _ in range(300):
        data = os.urandom(rng.randrange(1, 16384))
        write(rng.choice((1, 2)), data.replace(b"\\", b"/").replace(b"\r", b"/"))
elif mode == "giant":
    for fd in (1, 2):
        write(fd, b"g" * 5_000_000 + b"\n")
        write(fd, bytes(rng.randrange(97, 123) for _ in range(100)) * 30_000)
elif mode == "flood":
    for fd in (2, 1) * 10:
        write(fd, b"".join(b"flood %d\n" % i for i in range(5000)))
for fd in (1, 2):
    write(fd, b"\n")
    with open(os.path.join(out_dir, f"{mode}-{fd}.bin"), "wb") as f:
        f.write(written[fd])
open(os.path.join(out_dir, mode + ".done"), "w").close()
time.sleep(600)
"""


def writer_pool(mode: str, out_dir: str, seed: int) -> dict:
    return {
        "name": mode,
        "exec": sys.executable,
        "args": ["-c", WRITER, mode, out_dir, seed],
        "signal_timeout": "2s",
    }


def worker_lines(records: list[dict], pool: str, key: str) -> list[bytes]:
    """A worker's lines as Monoceros wrote them, pieces joined again."""
    lines, current = [], b""
    for r in records:
        if r.get("pool") != pool or key not in r:
            continue
        current += re.sub(rb"\\x([0-9a-f]{2})",
                          lambda m: bytes.fromhex(m[1].decode()), r[key].encode())
        if not r.get("truncated"):
            lines.append(current)
            current = b""
    return lines


@pytest.mark.slow
def test_real_workers_flooding_never_stall_the_reader(tmp_path):
    out_dir = str(tmp_path)
    modes = ("random", "giant", "flood")
    pools = [writer_pool(mode, out_dir, seed) for seed, mode in enumerate(modes)]
    m = Monoceros(tmp_path, {"supervisor": {"workers": pools}})
    try:
        # Each worker wrote everything: its pipe was read all along.
        wait_for_sync(
            lambda: all(os.path.exists(tmp_path / f"{mode}.done") for mode in modes),
            timeout=60,
        )
        status, body = m.get("/health")
        assert status == 200, body
        assert len(m.ready_workers()) == 3
        for mode in modes:
            assert not m.metric("monoceros_workerpool_restarts_total",
                                pool=mode, worker_type="worker")
        dropped = m.metric("monoceros_log_lines_dropped_total")
        m.signal(signal.SIGTERM)
        assert m.wait(timeout=30) == 0
    finally:
        m.close()

    records = m.log_records()
    assert not [r for r in records if r.get("exc")]
    # Monoceros's output (a file) never blocked: nothing may be dropped,
    # not even from a flood of 100,000 lines.
    assert dropped == 0
    for mode in ("random", "giant"):
        for fd, key in ((1, "worker_info_msg"), (2, "worker_error_msg")):
            sent = (tmp_path / f"{mode}-{fd}.bin").read_bytes().split(b"\n")[:-1]
            got = worker_lines(records, mode, key)
            assert got == sent, (mode, fd, len(got), len(sent))
    giant_cut = [r for r in records if r.get("pool") == "giant" and r.get("truncated")]
    # Per stream, a 5 MB line cut twice and a 3 MB line cut once (2 MiB pieces).
    assert len(giant_cut) == 6
    flood = [
        r for r in records
        if r.get("pool") == "flood"
        and (r.get("worker_info_msg") or r.get("worker_error_msg") or "")
        .startswith("flood")
    ]  # fmt: skip
    print(f"\noutput flood: {len(flood)} flood lines logged, {dropped:.0f} dropped")
    assert len(flood) == 100_000
