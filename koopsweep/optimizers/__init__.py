"""Optimizers: the `OptimizerPlugin` contract and koopsweep's built-in optimizers.

The built-ins are loaded through entry points like any plugin (see `koopsweep.plugins`); import their
classes from here only to subclass or test them.
"""

from koopsweep.optimizers._base import OptimizerPlugin

__all__ = ["OptimizerPlugin"]
