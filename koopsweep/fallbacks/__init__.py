"""Fallback rules: accept, verify, backtrack or pick the best point of a proposed jump.

The built-in rules are loaded through entry points like any plugin (see `koopsweep.plugins`); import
their classes from here only to subclass or test them.
"""

from koopsweep.fallbacks._base import Decision, FallbackRule, JumpProposal
from koopsweep.fallbacks._rules import AlwaysAccept, Backtrack, BestOf, Verify, passes

__all__ = ["AlwaysAccept", "Backtrack", "BestOf", "Decision", "FallbackRule", "JumpProposal", "Verify", "passes"]
