"""Sends SIGKILL to its parent (the worker that runs it)."""

import os
import signal


def evaluate(response):
    os.kill(os.getppid(), signal.SIGKILL)
    return True
