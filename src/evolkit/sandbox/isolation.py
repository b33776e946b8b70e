"""Which OS-level isolation a sandbox worker runs under, and the command line that gives it.

Three modes, strongest first:

- ``bwrap``: bubblewrap builds a new root from read-only binds of /usr and the interpreter's
  prefix, with a private tmpfs /tmp, and unshares the PID, network, IPC and UTS namespaces
  (plus the user namespace when we are not root).
- ``unshare``: util-linux ``unshare`` gives the same namespaces; the worker itself then builds
  the read-only root with mount(2) and pivot_root(2).
- ``rlimits``: no namespaces at all. Limits, a spare uid when we are root, and the Python
  guard are all there is: network and world-readable files are NOT isolated by the OS.

When the host runs as root, no user namespace is used: inside one, uid 0 maps back to the real
root, which the kernel exempts from RLIMIT_NPROC, so a fork bomb would be unbounded. Instead each
worker's calls switch to a random spare uid (no capabilities, counted by RLIMIT_NPROC, unable to
signal the root-owned worker or to read the caller's private files).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from functools import lru_cache

MODES = ("bwrap", "unshare", "rlimits")
AUTO_ORDER = MODES

# Spare uids for calls when the host is root: high, random per worker, so two sandboxes (or two
# workers) never share one and kill(-1) from a reaper with that uid reaches only its own calls.
CALL_UID_RANGE = (1_000_000_000, 2_000_000_000)


@dataclass(frozen=True)
class InterpreterPaths:
    """The interpreter binary and the directories it needs to start (read-only)."""

    executable: str
    roots: tuple[str, ...]


@dataclass
class IsolationPlan:
    """Everything the host needs to launch one worker in a given mode."""

    mode: str
    argv_prefix: list[str]
    in_pidns: bool
    build_root: bool = False
    binds: list[tuple[str, str]] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)
    read_roots: list[str] = field(default_factory=list)
    uses_userns: bool = False


def is_root() -> bool:
    return os.geteuid() == 0


def new_call_uid() -> int:
    return random.SystemRandom().randrange(*CALL_UID_RANGE)


@lru_cache(maxsize=1)
def interpreter_paths() -> InterpreterPaths:
    """The real interpreter behind this (possibly venv) Python, and the trees it loads from.

    A venv's ``bin/python`` is a symlink to the base interpreter (here into ~/.pyenv); the worker
    runs that base interpreter with ``-I -S`` so no site-packages and no venv are involved.
    """
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    candidates = {
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sys.base_exec_prefix),
        os.path.dirname(os.path.dirname(exe)),
    }
    libdir = sysconfig.get_config_var("LIBDIR")
    if isinstance(libdir, str) and os.path.isdir(libdir):
        candidates.add(os.path.realpath(libdir))
    roots: list[str] = []
    for path in sorted(candidates, key=len):
        if path in ("/", "") or not os.path.isdir(path):
            continue
        if any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
            continue
        roots.append(path)
    return InterpreterPaths(executable=exe, roots=tuple(roots))


def _system_layout() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Read-only binds and symlinks for the system part of the new root (/usr, /lib*, ...)."""
    binds: list[tuple[str, str]] = [("/usr", "/usr")]
    symlinks: list[tuple[str, str]] = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            symlinks.append((os.readlink(top), top))
        elif os.path.isdir(top):
            binds.append((top, top))
    for etc in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(etc):
            binds.append((os.path.realpath(etc), etc))
    return binds, symlinks


def _interpreter_binds() -> list[tuple[str, str]]:
    covered = ("/usr/",)
    return [
        (root, root)
        for root in interpreter_paths().roots
        if not any((root + "/").startswith(c) for c in covered)
    ]


def guard_read_roots() -> list[str]:
    """Paths the Python guard lets a call read: the interpreter's own files and a few devices."""
    roots = list(interpreter_paths().roots)
    for extra in ("/usr/share/zoneinfo", "/dev/null", "/dev/urandom", "/dev/zero"):
        roots.append(extra)
    return roots


@lru_cache(maxsize=1)
def _bwrap_has_size() -> bool:
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in out.stdout + out.stderr


def bwrap_plan(tmp_mb: int) -> IsolationPlan | None:
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    root = is_root()
    argv = [exe, "--die-with-parent", "--new-session", "--clearenv"]
    if root:
        argv += [
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
    else:
        argv += ["--unshare-all"]
    binds, symlinks = _system_layout()
    made: set[str] = set()
    for src, dst in binds + _interpreter_binds():
        # bwrap would create missing parents (e.g. /root for ~/.pyenv) as 0700, which the
        # unprivileged call uid could not traverse: create them explicitly (0755).
        parent = os.path.dirname(dst)
        parents: list[str] = []
        while parent not in ("/", "") and parent not in made:
            parents.append(parent)
            parent = os.path.dirname(parent)
        for path in reversed(parents):
            argv += ["--dir", path]
            made.add(path)
        argv += ["--ro-bind", src, dst]
    for target, path in symlinks:
        argv += ["--symlink", target, path]
    argv += ["--dev", "/dev"]
    if _bwrap_has_size():
        argv += ["--size", str(tmp_mb * 1024 * 1024)]
    argv += ["--tmpfs", "/tmp", "--chdir", "/tmp", "--"]
    return IsolationPlan(
        mode="bwrap",
        argv_prefix=argv,
        in_pidns=True,
        read_roots=guard_read_roots(),
        uses_userns=not root,
    )


def unshare_plan() -> IsolationPlan | None:
    exe = shutil.which("unshare")
    if exe is None:
        return None
    argv = [exe, "--fork", "--pid", "--kill-child", "--net", "--mount", "--ipc", "--uts"]
    argv += ["--propagation", "private"]
    root = is_root()
    if not root:
        argv += ["--user", "--map-root-user"]
    argv += ["--"]
    binds, symlinks = _system_layout()
    binds = binds + _interpreter_binds()
    binds += [(d, d) for d in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")]
    return IsolationPlan(
        mode="unshare",
        argv_prefix=argv,
        in_pidns=True,
        build_root=True,
        binds=binds,
        symlinks=symlinks,
        read_roots=guard_read_roots(),
        uses_userns=not root,
    )


def rlimits_plan() -> IsolationPlan:
    return IsolationPlan(
        mode="rlimits", argv_prefix=[], in_pidns=False, read_roots=guard_read_roots()
    )


def plan_for(mode: str, tmp_mb: int) -> IsolationPlan | None:
    """The launch plan for a mode, or None when its tool is not installed."""
    if mode == "bwrap":
        return bwrap_plan(tmp_mb)
    if mode == "unshare":
        return unshare_plan()
    if mode == "rlimits":
        return rlimits_plan()
    raise ValueError(f"unknown isolation mode {mode!r}; choose auto, {', '.join(MODES)}")


def describe(plan: IsolationPlan, call_uid: bool, guards: bool) -> str:
    """One line naming what is in force, for users and logs."""
    if plan.mode == "rlimits":
        text = "rlimits only (no namespaces: network and readable files are NOT isolated by the OS)"
    else:
        spaces = "user+pid+net+ipc+uts+mount" if plan.uses_userns else "pid+net+ipc+uts+mount"
        tool = "bwrap" if plan.mode == "bwrap" else "unshare + pivot_root"
        text = f"{tool} ({spaces} namespaces, read-only system binds, private /tmp) + rlimits"
    if call_uid:
        text += " + unprivileged uid per worker"
    if guards:
        text += " + Python audit guard"
    return text
