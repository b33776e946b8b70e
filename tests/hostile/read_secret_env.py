"""Looks for the caller's environment variables (a secret the test sets) and prints them all."""

import json
import os


def evaluate(response):
    name = json.loads(response)["env_name"]
    print(dict(os.environ))
    return name in os.environ
