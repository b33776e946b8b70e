"""Runs a shell through os.system that writes a marker file where the caller can see it."""

import json
import os


def evaluate(response):
    marker = json.loads(response)["marker_path"]
    os.system(f"echo pwned > {marker}")
    return True
