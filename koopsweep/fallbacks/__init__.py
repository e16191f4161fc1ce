"""Fallback rules: accept, verify, backtrack, pick the best point of a proposed jump, adapt the horizon,
or keep only jumps worth their horizon.

The built-in rules are loaded through entry points like any plugin (see `koopsweep.plugins`); import
their classes from here only to subclass or test them.
"""

from koopsweep.fallbacks._adaptive import Adaptive
from koopsweep.fallbacks._base import Decision, FallbackRule, JumpProposal
from koopsweep.fallbacks._rules import AlwaysAccept, Backtrack, BestOf, Verify, passes
from koopsweep.fallbacks._worth import WorthIt

__all__ = ["Adaptive", "AlwaysAccept", "Backtrack", "BestOf", "Decision", "FallbackRule", "JumpProposal", "Verify", "WorthIt", "passes"]
