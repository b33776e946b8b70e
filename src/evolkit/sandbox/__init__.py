"""Run untrusted, model-written Python verifier functions safely and fast.

    from evolkit.sandbox import Sandbox, SandboxLimits
    with Sandbox(limits=SandboxLimits(wall_seconds=2.0), workers=2) as sb:
        print(sb.isolation)                      # what is in force on this machine
        result = sb.run(source, "some response")  # CallResult(verdict="pass", value=True, ...)

See docs/sandbox.md for what each isolation mode does and does not protect.
"""

from evolkit.sandbox.limits import VERDICTS, CallResult, SandboxLimits, Verdict
from evolkit.sandbox.pool import Sandbox, SandboxError, available_modes, probe_mode

__all__ = [
    "VERDICTS",
    "CallResult",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "Verdict",
    "available_modes",
    "probe_mode",
]
