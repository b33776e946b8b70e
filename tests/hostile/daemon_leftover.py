"""Double-forks a daemon that outlives the call in a new session, then returns True."""

import os
import time


def evaluate(response):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(3600)
        os._exit(0)
    return True
