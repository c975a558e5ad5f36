"""Where the xDS server listens: a private Unix socket, optionally TCP + TLS.

grpcio unlinks and rebinds a Unix socket path without asking, even while
another live server holds it. A second Monoceros started with the same path
would silently take the first one's Envoys. So the path is guarded by an
exclusive ``flock`` on ``<path>.lock``, held for the server's lifetime: a
live holder makes the second start fail loudly, while a socket left behind
by a dead process (whose lock the kernel released) is replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator

from monoceros.config import XdsTlsConfig
from monoceros.errors import StartupError

# sockaddr_un.sun_path is 108 bytes on Linux, one of them the trailing NUL.
MAX_SOCKET_PATH = 107

# TLS material: server certificate, key, and an optional client CA that
# turns on client-certificate verification. The configuration's type serves.
TlsFiles = XdsTlsConfig


def runtime_dir() -> str:
    """A short, private directory for the socket (mode 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        path = os.path.join(base, "monoceros")
    else:
        path = os.path.join(tempfile.gettempdir(), f"monoceros-{os.getuid()}")

    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StartupError(f"cannot create {path}: {exc.strerror}") from exc

    info = os.lstat(path)
    # In a shared /tmp someone else may have made the directory first.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise StartupError(f"{path} is not a directory owned by this user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def default_socket_path() -> str:
    return os.path.join(runtime_dir(), "xds.sock")


def check_socket_path(path: str) -> None:
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise StartupError(
            f"xDS socket path {path} is {size} bytes; a Unix socket path holds "
            f"at most {MAX_SOCKET_PATH}: choose a shorter one"
        )


class SocketLock:
    """Exclusive ownership of a Unix socket path, for as long as it is held."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        check_socket_path(self.path)
        fd = self._lock()
        try:
            self._clear_stale()
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still locked, so no one can lock the old file after.
        for path in (self.path, self.lock_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.close(self._fd)
        self._fd = None

    def _lock(self) -> int:
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                             0o600)
            except OSError as exc:
                raise StartupError(
                    f"cannot open {self.lock_path}: {exc.strerror}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise StartupError(
                    f"xDS socket {self.path} is in use by another live "
                    f"process{holder}; stop it or choose another socket path"
                ) from None

            # The holder may have unlinked the file between our open and our
            # lock: then we locked a file no one else will see. Try again.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    return fd
            os.close(fd)

    def _clear_stale(self) -> None:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise StartupError(f"{self.path} exists and is not a socket")
        os.unlink(self.path)  # left by a process that is gone: we hold the lock


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created inside are 0600 from the start, not chmod-ed after.

    The umask is process-wide; this is only used at start-up, on the loop.
    """
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (meaning 127.0.0.1)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"xDS address {address!r} is not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def read_tls(tls: TlsFiles) -> tuple[bytes, bytes, bytes | None]:
    def read(path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise StartupError(f"cannot read TLS file {path}: {exc.strerror}") from exc

    client_ca = read(tls.client_ca) if tls.client_ca else None
    return read(tls.cert), read(tls.key), client_ca
