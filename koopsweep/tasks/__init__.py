"""Training tasks: the `Task` contract and koopsweep's built-in tasks.

The built-ins are loaded through entry points like any plugin (see `koopsweep.plugins`); import their
classes from their private modules only to subclass or test them, as for variants and fallback rules.
"""

from koopsweep.tasks._base import Task

__all__ = ["Task"]
