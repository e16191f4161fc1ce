"""koopsweep variants backed by PyDMD, registered in the ``koopsweep.variants`` entry-point group.

koopsweep loads them by name (``pydmd-optimized``, ``pydmd-fb``, ``pydmd-hodmd``); import
`koopsweep_pydmd.variants` directly only to subclass or test them. This module imports nothing heavy.
"""

__version__ = "0.1.0"
