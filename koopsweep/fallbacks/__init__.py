"""Fallback rules: accept, verify, backtrack or pick the best point of a proposed jump."""

from koopsweep.fallbacks._base import Decision, FallbackRule, JumpProposal

__all__ = ["Decision", "FallbackRule", "JumpProposal"]
