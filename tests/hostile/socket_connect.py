"""Connects to a listener the test opened on 127.0.0.1 and sends data."""

import json
import socket


def evaluate(response):
    port = json.loads(response)["port"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=0.5)
    sock.sendall(b"exfiltrated")
    sock.close()
    return True
