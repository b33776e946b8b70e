"""Overwrites a file of the caller's (path given in the response)."""

import json


def evaluate(response):
    path = json.loads(response)["target_path"]
    with open(path, "w") as fh:
        fh.write("overwritten by a verifier")
    return True
