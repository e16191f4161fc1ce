"""Koopman variants: the `Variant` contract and koopsweep's built-in implementations.

The built-ins are loaded through entry points like any plugin (see `koopsweep.plugins`); import their
classes from here only to subclass or test them.
"""

from koopsweep.variants._base import Variant

__all__ = ["Variant"]
