"""Prints 100 MB: the output must be capped and the call must still give its verdict."""

import sys


def evaluate(response):
    chunk = "x" * (1024 * 1024)
    for _ in range(100):
        sys.stdout.write(chunk)
    return True
