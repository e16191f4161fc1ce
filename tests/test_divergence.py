"""Numerical safety: non-finite weights or losses are never kept, whatever the fallback rule, and a
trial whose training diverges ends FAIL with its reason while the study goes on.

The sweep test installs a small third-party distribution (a task and a variant) the way
tests/test_plugins.py does, and runs the real `koopsweep` command on it.
"""

import json
import math
import os
import subprocess
import sys

import optuna
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from koopsweep import KoopmanAccelerator, Variant
from koopsweep.cli import main
from koopsweep.fallbacks import Decision, FallbackRule
from koopsweep.testing import write_distribution

RULES = ["none", "verify", "backtrack", "best-of", "adaptive"]


# ------------------------------------------------------------------------------------ accelerator
class Far(Variant):
    """A finite prediction far away: the last snapshot plus ``offset`` (1e20 makes a squared error
    overflow float32, so the loss there is inf although every weight is finite)."""

    defaults = {"offset": 1e20}

    def fit(self, snapshots):
        self._last = [s[-1].clone() for s in snapshots]

    def predict(self, horizon):
        return [x + self.params["offset"] for x in self._last]


class Forger(FallbackRule):
    """A buggy third-party rule: it accepts weights it built itself, with ``value`` in one element."""

    needs_closure = False
    defaults = {"value": math.nan}

    def decide(self, jump):
        pred = jump.predict(jump.horizon)
        forged = [t.clone() for t in pred]
        forged[0].view(-1)[0] = self.params["value"]
        return Decision.accept(forged, jump.horizon, "forged")


def regression():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g)
    return model, (x, x.sum(dim=1, keepdim=True))


def run(steps, make_accelerator=None):
    """SGD on a linear regression, bare or wrapped; returns (model, optimizer)."""
    model, (x, y) = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    if make_accelerator is not None:
        opt = make_accelerator(opt)
    for _ in range(steps):

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return model, opt


@pytest.mark.parametrize("fallback", RULES)
def test_a_jump_to_a_non_finite_loss_is_never_kept(fallback):
    # The prediction is finite and the size guard is off, so only the loss there can stop the jump.
    bare, _ = run(13)
    model, acc = run(13, lambda opt: KoopmanAccelerator(opt, Far(), window=4, horizon=5, fallback=fallback,
                                                         backoff=0, max_overhead=None, explode_ratio=math.inf))  # fmt: skip
    assert acc.stats.jumps_tried == 3 and acc.stats.jumps_accepted == 0
    # `none` looks at no loss itself; the accelerator checks the one its inner step computes anyway.
    expected = "non-finite-loss" if fallback == "none" else "loss-increased"
    assert acc.stats.rejections == {expected: 3}
    for p, q in zip(bare.parameters(), model.parameters()):
        assert torch.equal(p, q)  # restored bit for bit: the run is the bare optimizer's
    if fallback == "none":
        assert acc.stats.evaluations == 3  # each wasted closure call is counted


def test_a_kept_finite_jump_costs_the_none_rule_no_extra_closure_call():
    calls = []

    class Near(Far):
        defaults = {"offset": 1e-3}

    model, (x, y) = regression()
    acc = KoopmanAccelerator(torch.optim.SGD(model.parameters(), lr=0.05), Near(), window=4, horizon=5, backoff=0, max_overhead=None,
                             fallback="none", explode_ratio=math.inf)  # fmt: skip
    for _ in range(13):

        def closure():
            calls.append(1)
            acc.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        acc.step(closure)
    assert acc.stats.jumps_accepted == 3 and acc.stats.evaluations == 0
    assert len(calls) == 13  # one per step, jumps included


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_rule_cannot_keep_non_finite_weights_it_built(value):
    bare, _ = run(13)
    model, acc = run(13, lambda opt: KoopmanAccelerator(opt, Far(offset=0.0), window=4, horizon=5, backoff=0, max_overhead=None,
                                                         fallback=Forger(value=value)))  # fmt: skip
    assert acc.stats.jumps_accepted == 0 and acc.stats.rejections == {"non-finite": 3}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for p, q in zip(bare.parameters(), model.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------------------ sweep
QUARTIC = '''
"""A linear model under a quartic loss: plain SGD is stable near the solution, but its gradient grows
with the cube of the residual, so far from the solution a fixed step explodes."""

import torch

from koopsweep import Task


class Quartic(Task):
    defaults = {"features": 4}
    default_budget = 60
    baseline_lrs = {"sgd": 0.01}

    def _data(self):
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(64, self.params["features"], generator=gen)
        return x, x @ torch.ones(self.params["features"], 1)

    def build_model(self, seed):
        gen = torch.Generator().manual_seed(seed)
        model = torch.nn.Linear(self.params["features"], 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(0.1 * torch.randn(model.weight.shape, generator=gen))
        return model

    def batches(self, seed, device):
        batch = tuple(t.to(device) for t in self._data())
        while True:
            yield batch

    def loss(self, model, batch):
        x, y = batch
        return ((model(x) - y) ** 4).mean()

    def eval_loss(self, model, device):
        with torch.no_grad():
            return self.loss(model, tuple(t.to(device) for t in self._data())).item()
'''

OVERSHOOT = '''
"""Jumps `reach` times farther than the straight line through its window: finite, within the
accelerator's size guard, and far enough to make the quartic task's SGD explode afterwards."""

from koopsweep import Variant


class Overshoot(Variant):
    defaults = {"reach": 50.0}

    def fit(self, snapshots):
        self._last = [s[-1].clone() for s in snapshots]
        self._slope = [(s[-1] - s[0]) / (s.shape[0] - 1) for s in snapshots]

    def predict(self, horizon):
        return [x + self.params["reach"] * horizon * v for x, v in zip(self._last, self._slope)]
'''

SPEC = """
name = "blowup"
task = "quartic"
optimizer = "sgd"
baselines = ["sgd"]
budget = 60
seeds = [0]
n_trials = 2
variants = ["overshoot"]
device = "cpu"

[search]
window = 4
horizon = 20
fallback = ["none", "verify"]  # `none` keeps the overshoot and training diverges; `verify` refuses it

[sampler]
name = "random"
seed = 10  # draws `none` for trial 0, then `verify`

[pruner]
name = "none"
"""


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(workdir):
    site = workdir / "site"
    write_distribution(
        site, "koopsweep-blowup", "1.0",
        entry_points={"koopsweep.tasks": {"quartic": "blowup_task:Quartic"},
                      "koopsweep.variants": {"overshoot": "blowup_variant:Overshoot"}},
        files={"blowup_task.py": QUARTIC, "blowup_variant.py": OVERSHOOT},
    )  # fmt: skip
    (workdir / "blowup.toml").write_text(SPEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env.pop("KOOPSWEEP_DISABLE_PLUGIN_AUTOLOAD", None)
    done = subprocess.run(
        [sys.executable, "-m", "koopsweep", "study", "run", "blowup.toml"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr

    diverged, fine = optuna.load_study(study_name="blowup", storage="sqlite:///koopsweep.db").get_trials()
    # Trial 0 kept the overshoot and diverged; the study went on to trial 1, which refused it.
    assert (diverged.params["fallback"], diverged.state) == ("none", optuna.trial.TrialState.FAIL)
    assert (fine.params["fallback"], fine.state) == ("verify", optuna.trial.TrialState.COMPLETE)
    reason = diverged.user_attrs["fail_reason"]
    assert "accelerated run diverged on seed 0" in reason and "\n" not in reason
    assert "Trial 0 failed" in done.stderr  # Optuna's warning, one line, no traceback
    assert math.isfinite(fine.value) and fine.value > 0

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_run(diverged.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert client.get_run(fine.user_attrs["mlflow_run_id"]).info.status == "FINISHED"

    shown = CliRunner().invoke(main, ["study", "show", "blowup", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["trials_by_state"] == {"COMPLETE": 1, "FAIL": 1}
