"""Optuna sweeps: creating studies from specs, the trial objective, running workers.

Optuna does the sampling, pruning, storage and heartbeats; this package only translates between a
`StudySpec` and Optuna (`_studies`), keeps where a study lives and what a dead worker leaves
(`_storage`), rides out a database outage (`_resilient`), runs one trial as a paired measurement
(`_objective`), runs workers (`_workers`) and re-measures the best trials (`_verify`).
"""

from koopsweep.sweep._objective import (
    Objective, TrialFailed, TrialMeasurement, suggest, suggest_config, suggest_optimizer_params, variant_names,
)  # fmt: skip
from koopsweep.sweep._resilient import DEFAULT_STORAGE_RETRY, PendingResults, ResilientStorage, is_outage
from koopsweep.sweep._storage import (
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_STORAGE, PARENT_RUN_ATTR, SAMPLER_ATTR, SPEC_ATTR, STORAGE_ENV, TRACKING_ATTR,
    RetryStaleTrial, open_storage, resolve_storage, study_tracking_uri, worker_label,
)  # fmt: skip
from koopsweep.sweep._studies import (
    build_pruner, build_sampler, create_study, delete_study, load_study, objective_names, study_exists,
    write_kept_results,
)  # fmt: skip
from koopsweep.sweep._verify import VERIFIED_ATTR, verify_study
from koopsweep.sweep._workers import (
    FINISHED_STATES, StopAtTotal, finished_trials, retried_numbers, run_worker, split_trials, study_done,
    worker_command,
)  # fmt: skip
from koopsweep.tracking import mask_uri

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL", "DEFAULT_STORAGE", "DEFAULT_STORAGE_RETRY", "PendingResults", "ResilientStorage",
    "is_outage", "write_kept_results", "FINISHED_STATES", "PARENT_RUN_ATTR", "SAMPLER_ATTR", "SPEC_ATTR",
    "STORAGE_ENV", "TRACKING_ATTR", "Objective", "RetryStaleTrial", "StopAtTotal", "TrialFailed", "TrialMeasurement",
    "build_pruner", "build_sampler", "create_study", "delete_study", "finished_trials", "load_study", "mask_uri",
    "objective_names", "open_storage", "resolve_storage", "retried_numbers", "run_worker", "split_trials",
    "study_done", "study_exists", "study_tracking_uri", "suggest", "suggest_config", "suggest_optimizer_params",
    "variant_names", "verify_study", "VERIFIED_ATTR", "worker_command", "worker_label",
]  # fmt: skip
