"""Conformance suites for variants and tasks, for koopsweep's built-ins and for plugin authors.

Run them from your plugin's tests, either as one call per class::

    from koopsweep.testing import check_task, check_variant

    def test_conformance():
        check_variant(MyVariant)
        check_task(MyTask, n_train=256)

or as one pytest test per check, by subclassing `VariantConformance` / `TaskConformance`. Every
check raises ``AssertionError`` with a message naming the class, its parameters and what is wrong.
`write_distribution` fakes an installed plugin distribution, to test loading without pip.
"""

from koopsweep.testing._suites import TaskConformance, VariantConformance
from koopsweep.testing.distributions import write_distribution
from koopsweep.testing.task_conformance import (
    check_task,
    check_task_contract,
    check_task_determinism,
    check_task_eval,
    check_task_loss,
)
from koopsweep.testing.variant_conformance import (
    check_variant,
    check_variant_contract,
    check_variant_determinism,
    check_variant_exact,
    check_variant_horizons,
    check_variant_outputs,
    check_variant_search_space,
    linear_system,
    training_like_snapshots,
)

__all__ = [
    "TaskConformance",
    "VariantConformance",
    "check_task",
    "check_task_contract",
    "check_task_determinism",
    "check_task_eval",
    "check_task_loss",
    "check_variant",
    "check_variant_contract",
    "check_variant_determinism",
    "check_variant_exact",
    "check_variant_horizons",
    "check_variant_outputs",
    "check_variant_search_space",
    "linear_system",
    "training_like_snapshots",
    "write_distribution",
]
