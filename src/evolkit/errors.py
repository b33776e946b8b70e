"""Errors a user should see as one clear line, never as a traceback."""

from __future__ import annotations


class EvolkitError(Exception):
    """An error whose message is complete on its own; the CLI prints it and exits non-zero."""


class BadRecordError(EvolkitError):
    """A malformed input row: names the file, the line (1-based) and the field."""

    def __init__(self, path: str, line: int, field: str, reason: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(f"{path}:{line}: field '{field}': {reason}")


class ConfigMismatchError(EvolkitError):
    """A run folder holds a run with another configuration."""


class BackendError(EvolkitError):
    """A model backend could not serve a call (server unreachable, model missing, ...)."""


class SettingError(EvolkitError, ValueError):
    """A setting's value is malformed (e.g. `--top abc`); still a ValueError for callers."""
