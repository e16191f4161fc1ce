"""Training tasks: the `Task` contract and koopsweep's built-in tasks (loaded through entry points)."""

from koopsweep.tasks._base import Task

__all__ = ["Task"]
