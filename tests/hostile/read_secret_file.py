"""Reads a file of the caller's (path given in the response) and prints it."""

import json


def evaluate(response):
    path = json.loads(response)["secret_path"]
    with open(path) as fh:
        data = fh.read()
    print(data)
    return "SECRET" in data
