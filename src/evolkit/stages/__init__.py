"""Stages: units that transform a batch of records. They know nothing of engines or the CLI."""

from evolkit.stages.base import Stage

__all__ = ["Stage"]
