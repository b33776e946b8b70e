"""The sandbox pool: long-lived isolated zygote workers, one forked child per call.

The host never runs untrusted code. It starts ``workers`` zygotes (``worker.py`` run as a
standalone stdlib-only script inside the chosen isolation), hands them calls over pipes, and
turns whatever happens - an answer, a dead worker, a silent worker - into a ``CallResult``.
A worker that dies is restarted; the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from evolkit.errors import EvolkitError
from evolkit.sandbox.isolation import (
    AUTO_ORDER,
    MODES,
    IsolationPlan,
    describe,
    interpreter_paths,
    is_root,
    new_call_uid,
    plan_for,
)
from evolkit.sandbox.limits import VERDICTS, CallResult, SandboxLimits

log = logging.getLogger("evolkit.sandbox")

WORKER_SOURCE = (Path(__file__).with_name("worker.py")).read_text(encoding="utf-8")
STARTUP_SECONDS = 30.0
"""How long a worker may take to say it is ready (bwrap + interpreter start: ~0.1 s here)."""
GRACE_SECONDS = 5.0
"""Extra time the host grants a worker past the call's wall limit before declaring it hung."""

Job = tuple[str, str] | tuple[str, str, str]


class SandboxError(EvolkitError):
    """The sandbox cannot be started in the requested mode (or at all)."""


class _WorkerDied(Exception):
    """The worker's pipes closed or it stopped answering."""


class _Worker:
    """One zygote process and the host-side state needed to talk to it."""

    def __init__(
        self, plan: IsolationPlan, limits: SandboxLimits, guards: bool, preload: bool = True
    ) -> None:
        self.plan = plan
        self.call_uid = new_call_uid() if is_root() else None
        self.host_dir = tempfile.mkdtemp(prefix=f"evolkit-sandbox-{plan.mode}-")
        if self.call_uid is not None:
            os.chmod(self.host_dir, 0o711)  # the call uid must traverse to its own call dir
        work_dir = self.host_dir if plan.mode == "rlimits" else "/tmp"
        cfg: dict[str, Any] = {
            "limits": limits.to_dict(),
            "guards": guards,
            "call_uid": self.call_uid,
            "in_pidns": plan.in_pidns,
            "work_dir": work_dir,
            "read_roots": plan.read_roots + ([self.host_dir] if plan.mode == "rlimits" else []),
            "nproc_offset": plan.mode == "rlimits" and self.call_uid is None,
            "path_fds": plan.mode == "rlimits" and self.call_uid is not None,
            "build_root": plan.build_root,
            "root_dir": self.host_dir,
            "binds": plan.binds,
            "symlinks": plan.symlinks,
            "tmp_mb": limits.tmp_mb,
            "preload": preload,
        }
        exe = interpreter_paths().executable
        argv = [*plan.argv_prefix, exe, "-I", "-S", "-B", "-c", WORKER_SOURCE, json.dumps(cfg)]
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        self.buffer = bytearray()
        self.job: int | None = None
        self.deadline = 0.0
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env={},
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.in_fd = self.proc.stdin.fileno()
        self.out_fd = self.proc.stdout.fileno()
        try:
            ready = self.wait_message(time.monotonic() + STARTUP_SECONDS)
        except _WorkerDied as exc:
            self.kill()
            raise SandboxError(f"{plan.mode} worker did not start: {exc}") from None
        if not ready.get("ready"):
            self.kill()
            raise SandboxError(f"{plan.mode} worker refused to start: {ready.get('error')}")
        self.pid = self.proc.pid

    # -- messages

    def send(self, msg: dict[str, Any]) -> None:
        body = json.dumps(msg).encode("utf-8")
        data = memoryview(struct.pack(">I", len(body)) + body)
        try:
            while data:
                data = data[os.write(self.in_fd, data) :]
        except OSError as exc:
            raise _WorkerDied(f"cannot write to worker: {exc}") from None

    def take_message(self) -> dict[str, Any] | None:
        """A complete message from the buffer, if one has arrived."""
        if len(self.buffer) < 4:
            return None
        (size,) = struct.unpack(">I", self.buffer[:4])
        if len(self.buffer) < 4 + size:
            return None
        body = bytes(self.buffer[4 : 4 + size])
        del self.buffer[: 4 + size]
        msg: dict[str, Any] = json.loads(body.decode("utf-8"))
        return msg

    def pump(self) -> dict[str, Any] | None:
        """Read what the worker has written (the fd is readable); raise if it is gone."""
        chunk = os.read(self.out_fd, 1 << 20)
        if not chunk:
            raise _WorkerDied(self.stderr_tail() or "worker exited")
        self.buffer += chunk
        return self.take_message()

    def wait_message(self, deadline: float) -> dict[str, Any]:
        while True:
            msg = self.take_message()
            if msg is not None:
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise _WorkerDied("no answer in time")
            ready, _, _ = select.select([self.out_fd], [], [], left)
            if ready:
                msg = self.pump()
                if msg is not None:
                    return msg

    def stderr_tail(self, limit: int = 400) -> str:
        try:
            self.stderr.seek(0, os.SEEK_END)
            size = self.stderr.tell()
            self.stderr.seek(max(0, size - limit))
            return self.stderr.read().decode("utf-8", errors="replace").strip()
        except (OSError, ValueError):
            return ""

    # -- lifetime

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the worker and everything under it; leave no process and no directory."""
        for target in (lambda: os.killpg(self.proc.pid, 9), self.proc.kill):
            with contextlib.suppress(OSError):
                target()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._finish()

    def close(self) -> None:
        """Ask the worker to exit (EOF on its stdin), kill it if it does not."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.kill()
        else:
            self._finish()

    def _finish(self) -> None:
        if self.call_uid is not None and not self.plan.in_pidns:
            kill_uid(self.call_uid)  # no PID namespace died with the worker: reap by uid
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self.stderr.close()
        shutil.rmtree(self.host_dir, ignore_errors=True)


def kill_uid(uid: int) -> None:
    """Kill every process running as ``uid`` (a call uid: only our calls ever use it).

    Used when an rlimits-mode worker dies: its calls' orphans were reparented to init, and
    kill(-1) from a process with that uid reaches all of them and nothing else. A shell is
    used because /bin/sh is executable by any uid, unlike an interpreter under /root.
    """
    try:
        subprocess.run(
            ["/bin/sh", "-c", "kill -9 -1; kill -9 -1; kill -9 -1"],
            user=uid,
            group=uid,
            extra_groups=[],
            env={},
            cwd="/",
            timeout=30,
            check=False,
            capture_output=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not reap processes of sandbox uid %s: %s", uid, exc)


_PROBES: dict[str, str | None] = {}
_PROBE_LOCK = threading.Lock()


def probe_mode(mode: str, limits: SandboxLimits | None = None) -> str | None:
    """None if ``mode`` works on this machine, else why not. Cached per process."""
    with _PROBE_LOCK:
        if mode in _PROBES:
            return _PROBES[mode]
        plan = plan_for(mode, (limits or SandboxLimits()).tmp_mb)
        reason: str | None
        if plan is None:
            reason = f"{mode} is not installed"
        else:
            try:
                worker = _Worker(plan, limits or SandboxLimits(), guards=True, preload=False)
            except SandboxError as exc:
                reason = str(exc)
            else:
                worker.close()
                reason = None
        _PROBES[mode] = reason
        return reason


def available_modes() -> list[str]:
    """The isolation modes that start on this machine, strongest first."""
    return [mode for mode in MODES if probe_mode(mode) is None]


class Sandbox:
    """A pool of isolated workers running untrusted ``evaluate(response) -> bool`` functions.

    ``isolation`` is "auto" (strongest that works: bwrap, then unshare, then rlimits),
    or one mode by name, which fails with SandboxError if it cannot start. When only
    rlimits are available a warning is logged (visible on stderr unless logging is configured).
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        workers: int = 2,
        isolation: str = "auto",
        guards: bool = True,
        preload: bool = True,
    ) -> None:
        """``guards=False`` drops the Python audit guard (tests use it to show the OS layer
        holds alone); ``preload=False`` skips importing common stdlib modules and warming up
        the worker, which only pays off when a sandbox serves a single call."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.limits = limits or SandboxLimits()
        self.guards = guards
        self.preload = preload
        self._lock = threading.RLock()
        self._closed = False
        self._workers: list[_Worker] = []
        first, self.plan = self._start_first(isolation)
        self._workers.append(first)
        try:
            for _ in range(workers - 1):
                self._workers.append(_Worker(self.plan, self.limits, guards, preload))
        except BaseException:
            self.close()
            raise
        self.mode = self.plan.mode
        self.isolation = describe(self.plan, first.call_uid is not None, guards)
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)
        if self.mode == "rlimits":
            log.warning(
                "evolkit sandbox: NO OS isolation available (%s); untrusted verifier code runs "
                "with rlimits and a Python guard only, which hostile code can bypass. "
                "Install bubblewrap or allow user namespaces.",
                "; ".join(self._fallback_reasons) or "rlimits requested",
            )

    def _start_first(self, isolation: str) -> tuple[_Worker, IsolationPlan]:
        self._fallback_reasons: list[str] = []
        order = AUTO_ORDER if isolation == "auto" else (isolation,)
        if isolation != "auto" and isolation not in MODES:
            raise ValueError(f"unknown isolation {isolation!r}; choose auto, {', '.join(MODES)}")
        for mode in order:
            plan = plan_for(mode, self.limits.tmp_mb)
            if plan is None:
                self._fallback_reasons.append(f"{mode} not installed")
                continue
            try:
                return _Worker(plan, self.limits, self.guards, self.preload), plan
            except SandboxError as exc:
                self._fallback_reasons.append(str(exc))
        raise SandboxError(
            f"no sandbox could start (isolation={isolation}): " + "; ".join(self._fallback_reasons)
        )

    # -- public API

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def worker_pids(self) -> list[int]:
        """Host PIDs of the worker processes (for monitoring and tests)."""
        return [w.proc.pid for w in self._workers]

    @property
    def call_uids(self) -> list[int]:
        """The spare uids calls run as (empty when the host is not root)."""
        return [w.call_uid for w in self._workers if w.call_uid is not None]

    def run(self, source: str, arg: str, func: str = "evaluate") -> CallResult:
        """Run ``func(arg)`` from module text ``source`` in a fresh sandboxed process."""
        return self.run_many([(source, arg, func)])[0]

    def run_many(self, jobs: Iterable[Job]) -> list[CallResult]:
        """Run many calls across the workers concurrently; results keep the order of ``jobs``.

        Single-threaded dispatch (select over the workers' pipes): restarts always happen in
        the calling thread, and no helper thread can die and take a worker with it.
        """
        items: list[tuple[str, str, str]] = []
        for job in jobs:
            if len(job) == 2:
                items.append((job[0], job[1], "evaluate"))
            else:
                items.append((job[0], job[1], job[2]))  # type: ignore[misc]
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            return self._dispatch(items)

    def close(self) -> None:
        """Stop every worker and remove their directories. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for worker in self._workers:
                worker.close()
            if hasattr(self, "_finalizer"):
                self._finalizer.detach()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- dispatch

    def _dispatch(self, items: Sequence[tuple[str, str, str]]) -> list[CallResult]:
        results: list[CallResult | None] = [None] * len(items)
        pending: deque[int] = deque(range(len(items)))
        budget = self.limits.wall_seconds + GRACE_SECONDS
        while pending or any(w.job is not None for w in self._workers):
            for slot, worker in enumerate(self._workers):
                if worker.job is not None or not pending:
                    continue
                index = pending.popleft()
                source, arg, func = items[index]
                msg = {"id": index, "source": source, "arg": arg, "func": func}
                try:
                    worker.send(msg)
                except _WorkerDied:
                    worker = self._restart(slot)
                    worker.send(msg)  # a fresh worker that cannot take a message is fatal
                worker.job = index
                worker.deadline = time.monotonic() + budget
            busy = [w for w in self._workers if w.job is not None]
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            readable, _, _ = select.select([w.out_fd for w in busy], [], [], timeout)
            now = time.monotonic()
            for slot, worker in enumerate(self._workers):
                job = worker.job
                if job is None:
                    continue
                if worker.out_fd in readable:
                    try:
                        reply = worker.pump()
                    except _WorkerDied as exc:
                        results[job] = CallResult(
                            "error",
                            detail=f"the sandbox worker died during the call and was restarted"
                            f" ({str(exc)[:200]})",
                        )
                        self._restart(slot)
                        continue
                    if reply is not None:
                        results[job] = _to_result(reply)
                        worker.job = None
                elif now >= worker.deadline:
                    results[job] = CallResult(
                        "timeout",
                        detail="the sandbox worker stopped answering; it was restarted",
                        seconds=budget,
                    )
                    self._restart(slot)
        return [r if r is not None else CallResult("error", detail="lost call") for r in results]

    def _restart(self, slot: int) -> _Worker:
        old = self._workers[slot]
        old.kill()
        log.info("restarting sandbox worker %d (pid %d)", slot, old.proc.pid)
        fresh = _Worker(self.plan, self.limits, self.guards, self.preload)
        self._workers[slot] = fresh
        return fresh


def _to_result(reply: dict[str, Any]) -> CallResult:
    verdict = reply.get("verdict")
    if verdict not in VERDICTS:
        return CallResult("error", detail=f"unknown verdict from worker: {verdict!r}")
    value = reply.get("value")
    return CallResult(
        verdict,
        value=value if isinstance(value, bool) else None,
        detail=str(reply.get("detail") or ""),
        seconds=float(reply.get("seconds") or 0.0),
        output=str(reply.get("output") or ""),
    )


def _kill_all(workers: list[_Worker]) -> None:
    """Finalizer for a Sandbox dropped without close(): no worker outlives its owner."""
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.kill()
