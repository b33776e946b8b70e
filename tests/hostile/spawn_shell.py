"""Runs a shell through subprocess that writes a marker file where the caller can see it."""

import json
import subprocess


def evaluate(response):
    marker = json.loads(response)["marker_path"]
    subprocess.run(["/bin/sh", "-c", f"echo pwned > {marker}"], check=False)
    return True
