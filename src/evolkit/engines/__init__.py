"""Engines run stages over a dataset: batching, checkpoints, progress. Stages stay unaware."""

from evolkit.engines.local import LocalEngine

__all__ = ["LocalEngine"]
