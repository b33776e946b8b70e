"""Resource limits for one sandboxed call, and the result every call ends in."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Verdict = Literal["pass", "fail", "error", "timeout", "memory", "forbidden"]
VERDICTS: tuple[Verdict, ...] = ("pass", "fail", "error", "timeout", "memory", "forbidden")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits applied to every call (each call is its own process, so they are per call).

    Defaults suit small verifier functions: a verifier that needs more than two seconds or
    256 MB is almost certainly broken or hostile, and a limit that trips gives a verdict rather
    than stalling the run.
    """

    wall_seconds: float = 2.0
    """Wall-clock time from fork to result; past it the call is killed -> ``timeout``."""
    cpu_seconds: int = 2
    """CPU time (RLIMIT_CPU); past it the kernel stops the call -> ``timeout``."""
    memory_mb: int = 256
    """Address space (RLIMIT_AS) of the call; an allocation past it -> ``memory``."""
    file_size_mb: int = 1
    """Largest file the call may write (RLIMIT_FSIZE)."""
    max_processes: int = 4
    """Processes and threads the call may have at once, itself included (RLIMIT_NPROC)."""
    output_chars: int = 4096
    """Characters of the call's stdout+stderr kept in ``CallResult.output``; the rest is dropped."""
    tmp_mb: int = 64
    """Size of the private /tmp (the call's working directory) in the namespace modes."""

    def __post_init__(self) -> None:
        if self.wall_seconds <= 0:
            raise ValueError("wall_seconds must be positive")
        for name in ("cpu_seconds", "memory_mb", "file_size_mb", "max_processes", "tmp_mb"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.memory_mb < 64:
            raise ValueError("memory_mb below 64 leaves no room for the interpreter itself")
        if self.output_chars < 0:
            raise ValueError("output_chars must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CallResult:
    """How one call ended. Every call ends in exactly one of the verdicts in ``VERDICTS``.

    ``pass``/``fail``: the function returned True/False. ``error``: it raised, did not compile,
    had no such function, returned a non-bool (truthiness is not accepted: a verifier that
    returns ``"yes"`` is a broken verifier), or died. ``timeout``: wall-clock or CPU limit.
    ``memory``: memory limit. ``forbidden``: the Python-level guard refused an action (network,
    processes, files outside the call's directory, ctypes, signals), even if the function then
    caught the error.
    """

    verdict: Verdict
    value: bool | None = None
    detail: str = ""
    seconds: float = 0.0
    output: str = ""

    @property
    def ok(self) -> bool:
        """True when the function ran to completion and returned a bool."""
        return self.verdict in ("pass", "fail")
