"""Forks without end; children fork too. RLIMIT_NPROC and the post-call reap must contain it."""

import contextlib
import os


def evaluate(response):
    while True:
        with contextlib.suppress(Exception):
            os.fork()
