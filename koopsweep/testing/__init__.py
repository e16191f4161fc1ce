"""Conformance suites for variants, tasks and optimizers, for koopsweep's built-ins and for plugin authors.

Run them from your plugin's tests, either as one call per class::

    from koopsweep.testing import check_task, check_variant

    def test_conformance():
        check_variant(MyVariant)
        check_task(MyTask, n_train=256)
        check_optimizer(MyOptimizer)

or as one pytest test per check, by subclassing `VariantConformance`, `TaskConformance` or
`OptimizerConformance`. Every
check raises ``AssertionError`` with a message naming the class, its parameters and what is wrong.
`write_distribution` fakes an installed plugin distribution, to test loading without pip.
"""

from koopsweep.testing._suites import OptimizerConformance, TaskConformance, VariantConformance
from koopsweep.testing.distributions import write_distribution
from koopsweep.testing.optimizer_conformance import (
    check_optimizer,
    check_optimizer_accelerated,
    check_optimizer_build,
    check_optimizer_contract,
    check_optimizer_determinism,
    check_optimizer_evaluation,
    check_optimizer_schedule,
    check_optimizer_search_space,
    check_optimizer_state_dict,
)
from koopsweep.testing.task_conformance import (
    check_task,
    check_task_check_loss,
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
    "OptimizerConformance",
    "TaskConformance",
    "VariantConformance",
    "check_optimizer",
    "check_optimizer_accelerated",
    "check_optimizer_build",
    "check_optimizer_contract",
    "check_optimizer_determinism",
    "check_optimizer_evaluation",
    "check_optimizer_schedule",
    "check_optimizer_search_space",
    "check_optimizer_state_dict",
    "check_task",
    "check_task_check_loss",
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
