"""Errors and exit statuses.

Deep code raises; only the command-line entry point turns an error into an
exit status, so the mapping lives here in one place.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0  # stopped on request, every worker gone
    INTERNAL = 1  # a bug: an unexpected exception
    USAGE = 2  # invalid command line, configuration or request
    POOL_FAILED = 3  # a pool exhausted its restart budget
    STARTUP = 4  # could not start: port in use, Envoy missing, socket taken


class MonocerosError(Exception):
    """Base of every error Monoceros raises on purpose."""

    exit_status = ExitStatus.INTERNAL


class ConfigError(MonocerosError):
    """An invalid configuration value: names the field path and the value."""

    exit_status = ExitStatus.USAGE

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class StartupError(MonocerosError):
    exit_status = ExitStatus.STARTUP


class PoolFailed(MonocerosError):
    """A pool's worker crashed more often than its restart budget allows."""

    exit_status = ExitStatus.POOL_FAILED
