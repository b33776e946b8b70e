"""The one rich console every part of evolkit writes progress and messages to (stderr)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
