"""Loads libc through ctypes and calls system() and kill() on its parent directly."""

import ctypes
import json
import os


def evaluate(response):
    marker = json.loads(response)["marker_path"]
    libc = ctypes.CDLL(None)
    libc.system(f"echo pwned > {marker}".encode())
    libc.kill(os.getppid(), 9)
    return True
