"""The sandbox zygote: a long-lived, stdlib-only process that forks one child per call.

This file is never imported by evolkit. The host reads it as text and runs it with
``python -I -S -B -c <this file> <config json>`` inside the chosen isolation (bubblewrap,
util-linux ``unshare`` or plain rlimits), so nothing from the caller's environment, site-packages
or evolkit itself is loaded next to untrusted code.

Why a zygote: starting an interpreter costs tens of milliseconds, forking a warm one costs about
one. Each call runs in a fresh forked child, so anything a hostile function changes (builtins,
module globals, signal handlers, open files) dies with that child. The zygote itself never runs
untrusted code; it only sets the child up, watches it and cleans up after it.

Protocol on the zygote's original stdin/stdout: 4-byte big-endian length + UTF-8 JSON, one
request in, one reply out, strictly in turn. The first message the zygote writes is ``ready``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import types
from typing import Any

# Modules verifier functions commonly import: loaded once here so each forked call gets them
# for free. Only stdlib, and nothing that opens sockets or spawns processes at import time.
PRELOAD = (
    "re",
    "json",
    "string",
    "math",
    "collections",
    "itertools",
    "functools",
    "operator",
    "unicodedata",
    "textwrap",
    "difflib",
    "datetime",
    "statistics",
    "fractions",
    "decimal",
    "html",
    "html.parser",
    "typing",
    "dataclasses",
    "enum",
    "random",
    "hashlib",
    "base64",
    "csv",
    "io",
    "copy",
    "bisect",
    "heapq",
    "traceback",
    "tempfile",
)

ENCODE_STRING = json.encoder.encode_basestring_ascii  # the C function: patching json can't reach it
RESULT_CAP = 256 * 1024  # bytes of the child's result message we read; more is hostile noise
DETAIL_CAP = 1000  # characters of an exception message kept in `detail`

# Linux mount(2) flags (not exposed by the stdlib).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PIVOT_ROOT_NR = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

# Audit events refused outright by the guard (second layer; the OS layer is the real boundary).
BLOCKED_EVENTS = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "subprocess.Popen",
        "pty.spawn",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "os.symlink",
        "os.link",
        "resource.setrlimit",
        "resource.prlimit",
        "cpython.PyInterpreterState_New",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "fcntl.ioctl",
        "webbrowser.open",
        "urllib.Request",
        "http.client.connect",
        "ftplib.connect",
        "smtplib.connect",
        "poplib.connect",
        "imaplib.open",
        "nntplib.connect",
        "telnetlib.Telnet.open",
    }
)
BLOCKED_PREFIXES = ("socket.", "ctypes.", "syslog.", "_winapi.", "winreg.")
BLOCKED_MODULES = frozenset(
    {
        "ctypes",
        "_ctypes",
        "_posixsubprocess",
        "_xxsubinterpreters",
        "_testcapi",
        "_testinternalcapi",
    }
)
# Events whose first argument is a path the call may only change inside its own directory.
WRITE_PATH_EVENTS = frozenset(
    {
        "os.mkdir",
        "os.rmdir",
        "os.remove",
        "os.rename",
        "os.truncate",
        "os.chmod",
        "os.chown",
        "os.utime",
        "os.setxattr",
        "os.removexattr",
        "os.chflags",
        "os.lchflags",
        "shutil.rmtree",
        "shutil.chown",
        "shutil.copyfile",
        "shutil.copymode",
        "shutil.copystat",
        "shutil.move",
        "shutil.make_archive",
        "shutil.unpack_archive",
        "sqlite3.connect",
        "dbm.open",
        "tempfile.mkstemp",
        "tempfile.mkdtemp",
    }
)
# Events whose first argument is a path the call may only look at inside its directory or the
# read-only interpreter roots.
READ_PATH_EVENTS = frozenset(
    {"os.listdir", "os.scandir", "os.chdir", "glob.glob", "os.getxattr", "os.listxattr"}
)


class SandboxViolation(PermissionError):
    """Raised by the guard; a PermissionError so ordinary code sees a normal OS refusal."""


# --------------------------------------------------------------------------- framing


def read_exact(fd: int, n: int) -> bytes | None:
    """Read exactly n bytes, or None on EOF (the host closed the pipe: time to exit)."""
    chunks: list[bytes] = []
    while n > 0:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_msg(fd: int) -> dict[str, Any] | None:
    head = read_exact(fd, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    body = read_exact(fd, size)
    if body is None:
        return None
    msg: dict[str, Any] = json.loads(body.decode("utf-8"))
    return msg


def write_msg(fd: int, msg: dict[str, Any]) -> None:
    body = json.dumps(msg).encode("utf-8")
    data = struct.pack(">I", len(body)) + body
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --------------------------------------------------------------------------- libc helpers


class Libc:
    """The few syscalls the stdlib lacks (mount, pivot_root, prctl, capset), via ctypes.

    Loaded in the zygote before any untrusted code exists; children drop the module from
    sys.modules and the guard refuses ctypes events afterwards.
    """

    def __init__(self) -> None:
        import ctypes
        import platform

        self.ctypes = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.pivot_nr = PIVOT_ROOT_NR.get(platform.machine())
        # Resolve and type the functions now: the first lookup and call of a ctypes function
        # costs milliseconds, which each forked call would otherwise pay again.
        c_ulong = ctypes.c_ulong
        self._prctl = self.lib.prctl
        self._prctl.argtypes = [ctypes.c_int, c_ulong, c_ulong, c_ulong, c_ulong]
        self._prctl.restype = ctypes.c_int
        self._capset = self.lib.capset
        self._capset.restype = ctypes.c_int
        self._prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            err = self.ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(
        self, src: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        enc = lambda s: s.encode() if s is not None else None  # noqa: E731
        rc = self.lib.mount(
            enc(src), enc(target), enc(fstype), self.ctypes.c_ulong(flags), enc(data)
        )
        self._check(rc, f"mount {src} -> {target}")

    def umount2(self, target: str, flags: int) -> None:
        self._check(self.lib.umount2(target.encode(), flags), f"umount {target}")

    def pivot_root(self, new_root: str, put_old: str) -> bool:
        if self.pivot_nr is None:
            return False
        rc = self.lib.syscall(self.pivot_nr, new_root.encode(), put_old.encode())
        self._check(rc, "pivot_root")
        return True

    def prctl(self, option: int, arg: int) -> None:
        self._check(self._prctl(option, arg, 0, 0, 0), f"prctl({option})")

    def drop_all_caps(self) -> None:
        """Clear effective, permitted and inheritable capabilities (capset, version 3).

        Header: {version, pid=0 (self)}; data: two {effective, permitted, inheritable} sets.
        """
        ctypes = self.ctypes
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        self._check(self._capset(header, data), "capset")


def load_libc() -> Libc | None:
    try:
        return Libc()
    except Exception:
        return None


# --------------------------------------------------------------------------- unshare mode root


def build_root(cfg: dict[str, Any], libc: Libc) -> None:
    """Replace the visible filesystem with read-only binds of what the interpreter needs.

    Runs in the fresh mount namespace that ``unshare --mount`` gave us: a tmpfs becomes the new
    root, the interpreter's directories are bind-mounted read-only, /tmp is a small tmpfs, and
    the old root is detached, so the caller's files are simply not there.
    """
    root = cfg["root_dir"]
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    libc.mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for src, dst in cfg["binds"]:
        target = root + dst
        is_dir = os.path.isdir(src)
        if is_dir:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w"):
                pass
        libc.mount(src, target, None, MS_BIND | MS_REC, None)
        if dst.startswith("/dev/"):
            continue  # device nodes stay writable (/dev/null must accept writes)
        locked = 0
        st = os.statvfs(target)
        for st_flag, ms_flag in (
            (os.ST_NODEV, MS_NODEV),
            (os.ST_NOEXEC, MS_NOEXEC),
            (os.ST_NOATIME, MS_NOATIME),
            (os.ST_NODIRATIME, MS_NODIRATIME),
            (os.ST_RELATIME, MS_RELATIME),
        ):
            if st.f_flag & st_flag:
                locked |= ms_flag
        libc.mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | locked, None)
    for link_target, path in cfg["symlinks"]:
        os.symlink(link_target, root + path)
    os.makedirs(root + "/tmp", exist_ok=True)
    libc.mount(
        "tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmp_mb']}m,mode=1777"
    )
    libc.mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.chdir(root)
    if libc.pivot_root(".", "."):
        libc.umount2(".", MNT_DETACH)
    else:  # unknown architecture: chroot; children hold no capabilities, so they cannot escape
        os.chroot(".")
    os.chdir("/tmp")


# --------------------------------------------------------------------------- the guard


def install_guard(calldir: str, read_roots: list[str], violations: list[str]) -> None:
    """Refuse, at the Python level, what a verifier never needs: a second layer only.

    Audit hooks cannot be removed from Python code, but hostile code can still find ways
    around them; the namespaces and rlimits set up before this are the boundary that holds.
    A refused action marks the call ``forbidden`` even if the function catches the error.
    """
    write_root = calldir.rstrip("/") + "/"
    roots = [write_root] + [r.rstrip("/") + "/" for r in read_roots]
    abspath = os.path.abspath

    def resolve(path: Any) -> str | None:
        if isinstance(path, int):
            return None  # an already open descriptor: it was opened under the guard
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            path = os.fspath(path)
        return abspath(path) + "/"

    def deny(what: str) -> None:
        msg = f"sandbox refused {what}"
        if not violations:
            # Tell the zygote at once: a call that then loops or dies still ends "forbidden".
            with contextlib.suppress(OSError):
                os.write(3, json.dumps({"violation": msg[:DETAIL_CAP]}).encode() + b"\n")
        if len(violations) < 5:
            violations.append(msg)
        raise SandboxViolation(msg)

    def check(path: Any, write: bool, event: str) -> None:
        p = resolve(path)
        if p is None:
            return
        allowed = (write_root,) if write else roots
        if not any(p.startswith(r) for r in allowed):
            deny(f"{event} on {p[:-1]!r}")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            write = bool(
                (mode and any(c in mode for c in "wax+"))
                or (
                    isinstance(flags, int)
                    and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
                )
            )
            check(path, write, "open")
        elif event == "import":
            name = args[0]
            if isinstance(name, str) and name.split(".")[0] in BLOCKED_MODULES:
                deny(f"import of {name}")
        elif event in BLOCKED_EVENTS or event.startswith(BLOCKED_PREFIXES):
            deny(event)
        elif event in WRITE_PATH_EVENTS:
            if event == "sqlite3.connect" and args and args[0] == ":memory:":
                return
            if event in ("os.chmod", "os.chown", "os.utime") and isinstance(args[0], int):
                return
            for path in args[:2] if event in ("os.rename", "shutil.move") else args[:1]:
                if path is not None:
                    check(path, True, event)
        elif event in READ_PATH_EVENTS and args and args[0] is not None:
            check(args[0], False, event)

    sys.addaudithook(hook)


# --------------------------------------------------------------------------- one call


def run_user_code(msg: dict[str, Any], violations: list[str]) -> dict[str, Any]:
    """Compile, exec and call the verifier. Runs in the child, after all limits are in place."""
    _type, _str, _callable = type, str, callable

    def describe(exc: BaseException) -> str:
        try:
            message = exc.msg if isinstance(exc, SyntaxError) else _str(exc)
            text = f"{_type(exc).__name__}: {message}"
        except BaseException:
            text = f"{_type(exc).__name__}: <unprintable>"
        line = None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<verifier>":
                line = tb.tb_lineno
            tb = tb.tb_next
        if isinstance(exc, SyntaxError) and exc.lineno:
            line = exc.lineno
        if line is not None:
            text += f" (line {line})"
        return text[:DETAIL_CAP]

    func = msg.get("func") or "evaluate"
    saved_builtins = dict(builtins.__dict__)
    failure: BaseException | None = None
    value: Any = None
    try:
        code = compile(msg["source"], "<verifier>", "exec")
        namespace: dict[str, Any] = {"__name__": "__verifier__", "__builtins__": builtins}
        exec(code, namespace)
        fn = namespace.get(func)
        if fn is None:
            return {"verdict": "error", "detail": f"no function named {func!r} is defined"}
        if not _callable(fn):
            return {"verdict": "error", "detail": f"{func!r} is not callable"}
        value = fn(msg["arg"])
    except MemoryError:
        return {"verdict": "memory", "detail": "MemoryError: memory limit reached"}
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: all end the call as errors
        failure = exc
    finally:
        # The function may have rewired builtins (len, isinstance, ...); what runs after it in
        # this child - describing its result - must not be fooled by that.
        builtins.__dict__.clear()
        builtins.__dict__.update(saved_builtins)
    if violations:
        return {"verdict": "forbidden", "detail": violations[0]}
    if failure is not None:
        return {"verdict": "error", "detail": describe(failure)}
    if _type(value) is not bool:
        try:
            shown = _str(repr(value))[:200]
        except BaseException:
            shown = "<unprintable>"
        return {
            "verdict": "error",
            "detail": f"{func} returned {_type(value).__name__} {shown}, expected a bool",
        }
    return {"verdict": "pass" if value else "fail", "value": value, "detail": ""}


def child_main(
    cfg: dict[str, Any],
    msg: dict[str, Any],
    calldir: str,
    res_w: int,
    out_w: int,
    libc: Libc | None,
    path_fds: list[tuple[str, int]],
) -> None:
    """Everything the forked child does. Never returns: it ends in os._exit."""
    code = 70
    try:
        os.setsid()  # own session and process group: no terminal, killable as a group
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(res_w, 3)
        # Close everything else (protocol pipes, the host's leftovers) except the stdlib
        # directory descriptors of rlimits mode, which sit at high numbers (see open_path_fds).
        keep = sorted(fd for _, fd in path_fds)
        low = 4
        for fd in keep:
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, max(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        os.chdir(calldir)
        os.umask(0o077)

        limits = cfg["limits"]
        cpu = int(limits["cpu_seconds"])
        mem = int(limits["memory_mb"]) * 1024 * 1024
        fsize = int(limits["file_size_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        nproc = int(limits["max_processes"])
        if cfg.get("nproc_offset"):
            nproc += own_process_count()
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

        uid = cfg.get("call_uid")
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)  # from root to a spare uid: all capabilities go with it
            if path_fds and libc is not None:
                # setuid made /proc/self root-owned; we need /proc/self/fd for the stdlib.
                libc.prctl(PR_SET_DUMPABLE, 1)
        if libc is not None:
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries cannot give anything back
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # zygote gone: so is this call
            if os.geteuid() == 0:
                libc.drop_all_caps()  # root inside a user namespace: keep the uid, lose the powers
        elif os.geteuid() == 0 and uid is None:
            raise RuntimeError("cannot drop privileges without libc")

        os.environ.clear()
        os.environ.update({"HOME": calldir, "TMPDIR": calldir, "LC_ALL": "C.UTF-8"})
        tempfile.tempdir = calldir
        sys.argv[:] = ["verifier"]
        for name in list(sys.modules):
            if name.split(".")[0] in ("ctypes", "_ctypes", "platform"):
                del sys.modules[name]
        sys.modules["__main__"] = types.ModuleType("__main__")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.reconfigure(encoding="utf-8", errors="backslashreplace")  # type: ignore[union-attr]
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

        read_roots = list(cfg["read_roots"])
        if path_fds:
            # The interpreter's tree may sit where the call uid cannot go (~/.pyenv under a
            # 0700 /root): import through directory descriptors the zygote opened as root.
            ordered = sorted(path_fds, key=lambda item: -len(item[0]))

            def via_fd(path: str) -> str:
                for root, fd in ordered:
                    if path == root or path.startswith(root + "/"):
                        return f"/proc/self/fd/{fd}" + path[len(root) :]
                return path

            sys.path[:] = [via_fd(p) for p in sys.path]
            for module in list(sys.modules.values()):
                search = getattr(module, "__path__", None)
                if isinstance(search, list):  # packages already imported (importlib, email...)
                    search[:] = [via_fd(p) if isinstance(p, str) else p for p in search]
            sys.path_importer_cache.clear()
            read_roots += [f"/proc/self/fd/{fd}" for _, fd in path_fds]
        violations: list[str] = []
        if cfg.get("guards", True):
            install_guard(calldir, read_roots, violations)
        result = run_user_code(msg, violations)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        write_all(3, encode_result(result) + b"\n")
        code = 0
    except MemoryError:
        try:
            write_all(3, b'{"verdict": "memory", "detail": "MemoryError: memory limit reached"}')
            code = 0
        except BaseException:
            pass
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            write_all(2, f"sandbox child setup failed: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(code)


def encode_result(result: dict[str, Any]) -> bytes:
    """JSON for a flat dict of str/bool/None, without the json module's Python code.

    The call may have patched json (or anything else importable); this uses only the C string
    encoder captured when the zygote started.
    """
    parts = []
    for key, value in result.items():
        if value is True:
            text = "true"
        elif value is False:
            text = "false"
        elif value is None:
            text = "null"
        else:
            text = ENCODE_STRING(str(value))
        parts.append(ENCODE_STRING(key) + ": " + text)
    return ("{" + ", ".join(parts) + "}").encode("ascii")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def own_process_count() -> int:
    """Processes of our uid, for RLIMIT_NPROC when calls share the caller's uid (no namespace)."""
    uid = os.getuid()
    count = 0
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == uid:
                        count += 1
                except OSError:
                    pass
    except OSError:
        return 256
    return count


# --------------------------------------------------------------------------- zygote side


class Zygote:
    """Serves calls one at a time: fork, watch, collect, clean up."""

    def __init__(self, cfg: dict[str, Any], libc: Libc | None) -> None:
        self.cfg = cfg
        self.libc = libc
        self.limits = cfg["limits"]
        self.base = cfg["work_dir"]
        self.counter = 0
        self.path_fds = open_path_fds() if cfg.get("path_fds") else []

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.counter += 1
        calldir = os.path.join(self.base, f"call-{self.counter}")
        os.mkdir(calldir, 0o700)
        uid = self.cfg.get("call_uid")
        if uid is not None:
            os.chown(calldir, uid, uid)
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(res_r)
            os.close(out_r)
            child_main(self.cfg, msg, calldir, res_w, out_w, self.libc, self.path_fds)
        os.close(res_w)
        os.close(out_w)
        try:
            return self._watch(pid, started, res_r, out_r)
        finally:
            os.close(res_r)
            os.close(out_r)
            self._reap_leftovers(pid)
            shutil.rmtree(calldir, ignore_errors=True)

    def _watch(self, pid: int, started: float, res_r: int, out_r: int) -> dict[str, Any]:
        wall = float(self.limits["wall_seconds"])
        out_cap = int(self.limits["output_chars"]) * 4
        deadline = started + wall
        result = bytearray()
        output = bytearray()
        out_total = 0
        open_fds = {res_r, out_r}
        pidfd: int | None
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        status: int | None = None
        rusage: Any = None
        timed_out = False
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                watch = list(open_fds) + ([pidfd] if pidfd is not None else [])
                wait = deadline - now if pidfd is not None else min(deadline - now, 0.005)
                ready, _, _ = select.select(watch, [], [], wait)
                for fd in ready:
                    if fd == pidfd:
                        continue
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        open_fds.discard(fd)
                    elif fd == res_r:
                        if len(result) < RESULT_CAP:
                            result += chunk
                    else:
                        out_total += len(chunk)
                        if len(output) < out_cap:
                            output += chunk[: out_cap - len(output)]
                if (pidfd is None or pidfd in ready) and os.waitid(
                    os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT
                ):
                    # Exited but not yet reaped: its PID (and so its process group id) cannot
                    # be reused yet, so killing the group cannot hit a stranger.
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                    _, status, rusage = os.wait4(pid, 0)
                    break
        finally:
            if status is None:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                _, status, rusage = os.wait4(pid, 0)
            if pidfd is not None:
                os.close(pidfd)
        seconds = time.monotonic() - started
        # The child is gone; drain what it (or a straggler) left in the pipes without blocking.
        for fd in (res_r, out_r):
            os.set_blocking(fd, False)
            for _ in range(64):
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                if fd == res_r:
                    if len(result) < RESULT_CAP:
                        result += chunk
                else:
                    out_total += len(chunk)
                    if len(output) < out_cap:
                        output += chunk[: out_cap - len(output)]

        text = output.decode("utf-8", errors="replace")[: int(self.limits["output_chars"])]
        if out_total > len(output):
            text += f"\n[output truncated: {out_total} bytes written]"
        reply = self._verdict(status, rusage, timed_out, bytes(result))
        if "sandbox child setup failed" in text:
            reply = {"verdict": "error", "detail": text.strip().splitlines()[-1][:DETAIL_CAP]}
        reply["seconds"] = round(seconds, 6)
        reply["output"] = text
        return reply

    def _verdict(self, status: int, rusage: Any, timed_out: bool, result: bytes) -> dict[str, Any]:
        """One verdict from what we saw. The result pipe carries JSON lines: violation notices
        from the guard, then the call's own result. A refused action outranks everything: a
        function that tried to escape is reported as such even if it then hung or crashed."""
        records: list[Any] = []
        for line in result.split(b"\n"):
            if line.strip():
                try:
                    records.append(json.loads(line.decode("utf-8")))
                except ValueError:
                    records.append(None)
        for record in records:
            if isinstance(record, dict) and "violation" in record:
                return {"verdict": "forbidden", "detail": str(record["violation"])[:DETAIL_CAP]}
        cpu_limit = float(self.limits["cpu_seconds"])
        if timed_out:
            return {
                "verdict": "timeout",
                "detail": f"wall-clock limit of {self.limits['wall_seconds']}s reached",
            }
        cpu_used = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= cpu_limit):
                return {
                    "verdict": "timeout",
                    "detail": f"CPU limit of {self.limits['cpu_seconds']}s reached",
                }
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return {"verdict": "error", "detail": f"the call was killed by {name}"}
        code = os.WEXITSTATUS(status)
        if code == 0 and records:
            parsed = records[-1] if len(records) == 1 else None
            if isinstance(parsed, dict) and parsed.get("verdict") in (
                "pass",
                "fail",
                "error",
                "memory",
                "forbidden",
            ):
                value = parsed.get("value")
                verdict = parsed["verdict"]
                return {
                    "verdict": verdict,
                    "value": value if verdict in ("pass", "fail") and type(value) is bool else None,
                    "detail": str(parsed.get("detail", ""))[:DETAIL_CAP],
                }
            return {"verdict": "error", "detail": "the call wrote a malformed result"}
        return {"verdict": "error", "detail": f"the call exited with code {code} before returning"}

    def _reap_leftovers(self, pid: int) -> None:
        """Kill and reap every process the call left behind (grandchildren, fork bombs).

        The zygote is a child subreaper, so every orphan of a call is re-parented to it: once
        waitpid says there are no children left, nothing of the call survives - an exact
        check, not a guess.
        """
        if reap_children():
            return  # the common case: no descendant outlived the call, nothing to kill
        give_up = time.monotonic() + 10.0
        while True:
            if self.cfg.get("in_pidns"):
                # Alone in our PID namespace with the call: kill(-1) reaches everything but
                # us and the namespace's init.
                kill_all()
            elif self.cfg.get("call_uid") is not None:
                # No PID namespace but a spare uid: a reaper with that uid kills all of them.
                reaper = os.fork()
                if reaper == 0:
                    try:
                        uid = self.cfg["call_uid"]
                        os.setgroups([])
                        os.setgid(uid)
                        os.setuid(uid)
                        kill_all()
                    finally:
                        os._exit(0)
                os.waitpid(reaper, 0)
            else:
                kill_children()
            if reap_children() or time.monotonic() > give_up:
                return
            time.sleep(0.001)


def reap_children() -> bool:
    """Collect exited children; True when none is left at all."""
    while True:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if got == 0:
            return False


def kill_children() -> None:
    """SIGKILL our direct children (orphans land here: we are a subreaper). Needs /proc."""
    me = str(os.getpid())
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == me:
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)


def open_path_fds() -> list[tuple[str, int]]:
    """Descriptors (numbered from 200 up) for each directory on sys.path, opened as root."""
    import fcntl

    result: list[tuple[str, int]] = []
    for path in sys.path:
        if not os.path.isdir(path):
            continue
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 200)
        os.close(fd)
        result.append((path, high))
    return result


def kill_all() -> None:
    """kill(-1, SIGKILL): every process we may signal, except ourselves and PID 1.

    The kernel sends it under the task-list lock and makes a fork in flight fail when its
    parent has a fatal signal pending, so a fork bomb cannot outrun it; it is repeated only as
    a belt-and-braces measure. (Its return value says nothing: it is 0 even when every target
    refused, so we cannot loop "until none is left".)
    """
    for _ in range(3):
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)


WARM_UP_SOURCE = """
import re, json
def evaluate(response):
    words = re.findall(r"\\w+", response)
    return len(words) < 5 and json.loads(json.dumps(words)) == words
"""


def warm_up() -> None:
    """Do once in the zygote what every call would otherwise pay for after each fork.

    The first compile() in a process initialises the parser and AST types (a few ms); done
    here, every child inherits it. gc.freeze() then keeps the collector from walking (and so
    copy-on-write-faulting) every inherited object in each child.
    """
    import gc

    namespace: dict[str, Any] = {"__name__": "__warmup__"}
    exec(compile(WARM_UP_SOURCE, "<verifier>", "exec"), namespace)
    namespace["evaluate"]("a few words here")
    try:
        raise ValueError("warm")
    except ValueError as exc:
        _ = f"{type(exc).__name__}: {exc}"
    json.loads(json.dumps({"verdict": "pass", "value": True, "detail": ""}))
    gc.collect()
    gc.freeze()


def main() -> None:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # a stray print in the zygote must never corrupt the protocol
    os.close(null)
    libc = load_libc()
    try:
        if cfg.get("build_root"):
            if libc is None:
                raise RuntimeError("ctypes/libc unavailable: cannot build the sandbox root")
            build_root(cfg, libc)
        os.makedirs(cfg["work_dir"], exist_ok=True)
        if libc is not None:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of calls come to us to be reaped
        if cfg.get("preload", True):
            for name in PRELOAD:
                with contextlib.suppress(Exception):
                    __import__(name)
            warm_up()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        uid = cfg.get("call_uid")
        if uid is not None and os.getuid() != 0:
            raise RuntimeError("a call uid was requested but the zygote is not root")
        if os.getuid() == 0 and uid is None and libc is None:
            raise RuntimeError("running as root with no way to drop privileges")
    except BaseException as exc:
        write_msg(proto_out, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    write_msg(
        proto_out,
        {"ready": True, "pid": os.getpid(), "uid": os.getuid(), "python": sys.version.split()[0]},
    )
    zygote = Zygote(cfg, libc)
    while True:
        msg = read_msg(proto_in)
        if msg is None:
            return
        try:
            reply = zygote.call(msg)
        except Exception as exc:  # a zygote bug must not kill the pool: report and carry on
            reply = {
                "verdict": "error",
                "detail": f"sandbox zygote error: {type(exc).__name__}: {exc}",
            }
        reply["id"] = msg.get("id")
        write_msg(proto_out, reply)


if __name__ == "__main__":
    main()
