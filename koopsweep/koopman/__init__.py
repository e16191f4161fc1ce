"""The numerical core of koopsweep: exact DMD from a Gram matrix, time-delay DMD and node operators.

Pure math on tensors (CPU or CUDA, float64 for the small dense work): no optimizer, tracking or plugin
code lives here. The variants in `koopsweep.variants` wrap these functions.
"""

from koopsweep.koopman._dmd import (
    EIG_POLICIES,
    MODE_FILTERS,
    GramDMD,
    displacement_rows,
    fixed_point_growth,
    geometric_sum,
    gram_dmd,
    hankel_gram,
    converging_modes,
    limit_eigenvalues,
    power_growth,
    sum_growth,
)
from koopsweep.koopman._gram import CENTERS, basis_rows, state_coefficients, window_gram
from koopsweep.koopman._node import (
    SOLVERS,
    NodeModes,
    NodeOperators,
    fit_node_operators,
    node_advance,
    node_advance_modes,
    node_modes,
)
from koopsweep.koopman._rank import RankSpec, check_rank, hard_threshold_omega, noise_floor, truncation_rank

__all__ = [
    "CENTERS",
    "EIG_POLICIES",
    "MODE_FILTERS",
    "SOLVERS",
    "GramDMD",
    "NodeModes",
    "NodeOperators",
    "RankSpec",
    "basis_rows",
    "check_rank",
    "displacement_rows",
    "fit_node_operators",
    "fixed_point_growth",
    "geometric_sum",
    "gram_dmd",
    "hankel_gram",
    "hard_threshold_omega",
    "converging_modes",
    "limit_eigenvalues",
    "node_advance",
    "node_advance_modes",
    "node_modes",
    "noise_floor",
    "power_growth",
    "state_coefficients",
    "sum_growth",
    "truncation_rank",
    "window_gram",
]
