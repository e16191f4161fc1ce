"""The built-in tasks: determinism, the Task contract, losses, and each task's own data handling.

Fast and offline: MNIST is replaced by tiny IDX files written here, MNIST-1D is generated locally.
"""

from __future__ import annotations

import gzip
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from koopsweep import plugins
from koopsweep.errors import KoopsweepError, ParameterError, UsageError
from koopsweep.tasks._common import derive_seed, index_stream
from koopsweep.tasks._digits import DigitsMLP, load_digits_arrays
from koopsweep.tasks._hnn import HNNOscillator, hamiltonian, reference_trajectory
from koopsweep.tasks._mnist import (
    IMAGES_MAGIC,
    MNIST_FILES,
    MNISTMLP,
    IDXFormatError,
    download_mnist,
    read_idx,
    resolve_mnist_dir,
    write_idx,
)
from koopsweep.tasks._mnist1d import MNIST1DMLP, make_mnist1d
from koopsweep.tasks._teacher_student import TeacherStudent

CPU = torch.device("cpu")

# --------------------------------------------------------------------------------------------------
# Tiny MNIST


def write_tiny_mnist(folder: Path, n_train: int = 50, n_test: int = 20, gz: bool = False, seed: int = 0) -> Path:
    """Four valid IDX files of random 28x28 images (labels 0-9) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        # Noise plus a bright 5x5 block whose position encodes the label, so the task is learnable.
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for image, label in zip(images, labels, strict=True):
            row, col = divmod(int(label), 5)
            image[3 + 12 * row : 8 + 12 * row, 2 + 5 * col : 7 + 5 * col] = 255
        return images, labels

    train_images, train_labels = split(n_train)
    test_images, test_labels = split(n_test)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    for role, array in arrays.items():
        write_idx(folder / f"{MNIST_FILES[role]}{suffix}", array)
    return folder


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


# --------------------------------------------------------------------------------------------------
# Every task, both forms (full batch and minibatches)

CASES = {
    "digits-full": (DigitsMLP, {}),
    "digits-mini": (DigitsMLP, {"batch_size": 64}),
    "hnn-grid": (HNNOscillator, {"n_points": 64, "n_eval": 128}),
    "hnn-sampled": (HNNOscillator, {"batch_size": 32, "n_eval": 128}),
    "mnist1d-mini": (MNIST1DMLP, {}),
    "mnist1d-full": (MNIST1DMLP, {"batch_size": 0}),
    "mnist-mini": (MNISTMLP, {"batch_size": 16}),
    "mnist-full": (MNISTMLP, {"batch_size": 0, "hidden": [8]}),
    "teacher-full": (TeacherStudent, {"n_train": 256, "n_eval": 128}),
    "teacher-mini": (TeacherStudent, {"n_train": 256, "n_eval": 128, "batch_size": 32, "noise": 0.1}),
}
ENTRY_POINTS = {
    "digits-mlp": DigitsMLP,
    "hnn-oscillator": HNNOscillator,
    "mnist1d-mlp": MNIST1DMLP,
    "mnist-mlp": MNISTMLP,
    "teacher-student": TeacherStudent,
}


@pytest.fixture(params=sorted(CASES))
def task(request: pytest.FixtureRequest, mnist_dir: Path):
    cls, params = CASES[request.param]
    if cls is MNISTMLP:
        params = {**params, "data_dir": str(mnist_dir)}
    return cls(**params)


def first(stream, n: int = 3) -> list:
    return [next(stream) for _ in range(n)]


def as_tensors(batch) -> tuple[torch.Tensor, ...]:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def same_batches(a: list, b: list) -> bool:
    return all(
        all(torch.equal(x, y) for x, y in zip(as_tensors(p), as_tensors(q), strict=True))
        for p, q in zip(a, b, strict=True)
    )


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_registered_and_valid(name: str) -> None:
    cls = ENTRY_POINTS[name]
    plugins.validate("tasks", cls)
    assert plugins.load_task(name) is cls
    # the four original baselines are tuned on every task; any other rate is for an installed optimizer
    assert {"adam", "adadelta", "sgd", "adagrad"} <= set(cls.baseline_lrs) <= set(plugins.available("optimizers"))
    assert "batch_size" in cls.defaults


@pytest.mark.parametrize("cls", list(ENTRY_POINTS.values()))
def test_constructor_is_lazy_and_validates(cls) -> None:
    task = cls()
    assert task._cpu is None and not task._device_cache  # nothing loaded or generated yet
    with pytest.raises(ParameterError, match="batch_size"):
        cls(batch_size=-1)
    with pytest.raises(ParameterError, match="unknown"):
        cls(no_such_parameter=1)


def test_build_model_is_seeded_and_leaves_global_rng_alone(task) -> None:
    state = torch.get_rng_state()
    a, b, c = snapshot(task.build_model(0)), snapshot(task.build_model(0)), snapshot(task.build_model(1))
    assert torch.equal(state, torch.get_rng_state())
    assert a.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


def test_batches_are_seeded(task) -> None:
    state = torch.get_rng_state()
    a, b, c = first(task.batches(0, CPU)), first(task.batches(0, CPU)), first(task.batches(1, CPU))
    assert torch.equal(state, torch.get_rng_state())
    assert same_batches(a, b)
    if task.params["batch_size"]:
        assert not same_batches(a, c)
        assert not same_batches(a[:1], a[1:2])  # the stream moves on
    else:
        # Full batch: the very same tensors every step, for every seed (no copies, no randomness).
        assert all(x is y for x, y in zip(as_tensors(a[0]), as_tensors(a[2]), strict=True))
        assert same_batches(a, c)


def test_loss_is_finite_scalar_with_grads_everywhere(task) -> None:
    model = task.build_model(0)
    batch = next(task.batches(0, CPU))
    loss = task.loss(model, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # Repeated calls on the same batch agree and can be backpropagated again (the closure path).
    again = task.loss(model, batch)
    assert torch.allclose(again, loss)
    again.backward()


def test_eval_loss_is_pure(task) -> None:
    model = task.build_model(0)
    before = snapshot(model)
    value = task.eval_loss(model, CPU)
    assert isinstance(value, float) and math.isfinite(value)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert task.eval_loss(model, CPU) == value
    assert task.eval_loss(task.build_model(0), CPU) == value  # the same evaluation set every time
    # Existing gradients are left exactly as they were.
    task.loss(model, next(task.batches(0, CPU))).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    task.eval_loss(model, CPU)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


def test_a_few_adam_steps_reduce_the_loss(task) -> None:
    model = task.build_model(0)
    batches = task.batches(0, CPU)
    opt = torch.optim.Adam(model.parameters(), lr=task.baseline_lrs["adam"])
    start = task.eval_loss(model, CPU)
    for _ in range(15):
        opt.zero_grad()
        task.loss(model, next(batches)).backward()
        opt.step()
    assert task.eval_loss(model, CPU) < start


def test_pickles_without_its_caches(task) -> None:
    model = task.build_model(0)
    value = task.eval_loss(model, CPU)
    clone = pickle.loads(pickle.dumps(task))
    assert clone._cpu is None and not clone._device_cache
    assert clone.params == task.params
    assert clone.eval_loss(model, CPU) == value


# --------------------------------------------------------------------------------------------------
# Shared helpers


def test_derived_seeds_are_distinct_and_stable() -> None:
    assert derive_seed(0, "init") == derive_seed(0, "init")
    assert len({derive_seed(s, p) for s in range(3) for p in ("init", "batches")}) == 6
    assert 0 <= derive_seed(-5, "init") < 2**63


def test_index_stream_covers_each_example_once_per_epoch() -> None:
    stream = index_stream(10, 3, seed=0, device=CPU)
    epoch = torch.cat([next(stream) for _ in range(3)])  # drop-last: 3 batches of 3 per epoch
    assert len(set(epoch.tolist())) == 9


# --------------------------------------------------------------------------------------------------
# digits-mlp


def test_digits_split_is_fixed_and_standardised() -> None:
    data = DigitsMLP()._data()
    assert data["x"].shape == (1438, 64) and data["x_eval"].shape == (359, 64)
    assert torch.allclose(data["x"].mean(0), torch.zeros(64), atol=1e-5)
    assert torch.equal(data["y_eval"], DigitsMLP(batch_size=7)._data()["y_eval"])
    model = DigitsMLP().build_model(0)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [32, 10]


def test_eval_split_train_evaluates_on_the_training_set() -> None:
    task = DigitsMLP(eval_split="train")
    model = task.build_model(0)
    assert task.eval_loss(model, CPU) == pytest.approx(task.loss(model, next(task.batches(0, CPU))).item())


def test_digits_fast_path_matches_scikit_learn() -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits_arrays()
    reference = load_digits()
    assert np.array_equal(x, reference.data) and np.array_equal(y, reference.target)


# --------------------------------------------------------------------------------------------------
# hnn-oscillator


class Analytic(nn.Module):
    """x(t) = t², p(t) = t, with one dummy parameter so optimisers have something to hold."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t**2, t], dim=1) + 0 * self.unused


def test_hnn_loss_matches_a_hand_computation() -> None:
    # ẋ − p = 2t − t = t and ṗ + x + x³ = 1 + t² + t⁶.
    task = HNNOscillator(n_points=11, t_max=1.0, n_eval=21)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    expected = (t**2 + (1 + t**2 + t**6) ** 2).mean()
    model = Analytic()
    assert task.loss(model, next(task.batches(0, CPU))).item() == pytest.approx(float(expected), rel=1e-5)
    te = torch.linspace(0, 1, 21, dtype=torch.float64)
    assert task.eval_loss(model, CPU) == pytest.approx(float((te**2 + (1 + te**2 + te**6) ** 2).mean()), rel=1e-5)


class HermiteTrajectory(nn.Module):
    """Cubic Hermite interpolation of the exact solution, with the true vector field as node slopes."""

    def __init__(self, t_max: float, x0: float, p0: float, nodes: int = 2001) -> None:
        super().__init__()
        t = np.linspace(0, t_max, nodes)
        z = reference_trajectory(t, x0, p0, substeps=10)
        dz = np.stack([z[:, 1], -z[:, 0] - z[:, 0] ** 3], axis=1)
        self.register_buffer("t", torch.tensor(t))
        self.register_buffer("z", torch.tensor(z))
        self.register_buffer("dz", torch.tensor(dz))
        self.unused = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        i = torch.searchsorted(self.t, t.detach().squeeze(1), right=True).clamp(1, len(self.t) - 1) - 1
        h = self.t[1] - self.t[0]
        s = ((t.squeeze(1) - self.t[i]) / h).unsqueeze(1)
        h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
        z = h00 * self.z[i] + h10 * h * self.dz[i] + h01 * self.z[i + 1] + h11 * h * self.dz[i + 1]
        return z + 0 * self.unused


def test_hnn_residual_of_the_exact_solution_is_zero() -> None:
    task = HNNOscillator(t_max=2.0, n_points=97, n_eval=301)  # times fall between interpolation nodes
    exact = HermiteTrajectory(2.0, task.params["x0"], task.params["p0"])
    assert task.loss(exact, next(task.batches(0, CPU))).item() < 1e-8
    assert task.eval_loss(exact, CPU) < 1e-8
    assert task.trajectory_error(exact, CPU) < 1e-6

    class Harmonic(nn.Module):  # the linear oscillator's solution: wrong by the x³ term
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return torch.cat([1.3 * torch.cos(t) + torch.sin(t), -1.3 * torch.sin(t) + torch.cos(t)], dim=1)

    assert task.eval_loss(Harmonic(), CPU) > 0.1


def test_hnn_reference_conserves_energy_and_model_meets_initial_condition() -> None:
    t = np.linspace(0, 4 * math.pi, 200)
    z = reference_trajectory(t, 1.3, 1.0)
    energy = hamiltonian(z[:, 0], z[:, 1])
    assert np.abs(energy - hamiltonian(1.3, 1.0)).max() < 1e-7
    task = HNNOscillator(x0=0.5, p0=-0.2)
    out = task.build_model(3)(torch.zeros(1, 1))
    assert torch.allclose(out, torch.tensor([[0.5, -0.2]]))


def test_hnn_sampled_times_lie_in_the_interval() -> None:
    task = HNNOscillator(batch_size=50, t_max=3.0)
    times = torch.cat(first(task.batches(0, CPU), 300))  # crosses a chunk boundary
    assert times.shape == (300 * 50, 1)
    assert 0 <= float(times.min()) and float(times.max()) <= 3.0
    assert len(torch.unique(times)) > 0.99 * len(times)


# --------------------------------------------------------------------------------------------------
# mnist1d-mlp


def test_mnist1d_is_generated_locally_without_touching_global_random_state() -> None:
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    small = make_mnist1d.__wrapped__(500)  # uncached: really generates
    assert (random.random(), np.random.random()) == expected
    assert small["x"].shape == (400, 40) and small["x_test"].shape == (100, 40)
    data = MNIST1DMLP()._data()
    assert data["x"].shape == (4000, 40) and data["x_eval"].shape == (1000, 40)
    assert data["y"].dtype == torch.int64 and int(data["y"].max()) == 9


# --------------------------------------------------------------------------------------------------
# mnist-mlp


def test_mnist_missing_files_name_the_folder_and_the_files(tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    write_tiny_mnist(partial)
    (partial / MNIST_FILES["test_labels"]).unlink()
    (partial / MNIST_FILES["train_images"]).unlink()
    task = MNISTMLP(data_dir=str(partial))  # constructing is fine: nothing is read yet
    with pytest.raises(UsageError) as info:
        task.eval_loss(task.build_model(0), CPU)
    message = str(info.value)
    assert str(partial.resolve()) in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-labels-idx1-ubyte" not in message
    assert "koopsweep data download mnist" in message


def test_mnist_corrupt_files_give_clear_errors(tmp_path: Path) -> None:
    bad = write_tiny_mnist(tmp_path / "bad")
    labels = bad / MNIST_FILES["train_labels"]
    raw = bytearray(labels.read_bytes())
    raw[3] = 0x03  # labels with the images' magic number
    labels.write_bytes(bytes(raw))
    with pytest.raises(IDXFormatError, match="magic number 0x00000803, expected 0x00000801"):
        MNISTMLP(data_dir=str(bad)).prepare()
    assert issubclass(IDXFormatError, UsageError)

    truncated = tmp_path / "truncated.idx"
    write_idx(truncated, np.zeros((3, 28, 28), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(IDXFormatError, match="header says shape"):
        read_idx(truncated, IMAGES_MAGIC)

    not_gzip = tmp_path / "x.gz"
    not_gzip.write_bytes(b"\0\0\x08\x01\0\0\0\0")
    with pytest.raises(IDXFormatError, match="not a gzip file"):
        read_idx(not_gzip)
    broken_gzip = tmp_path / "y.gz"
    broken_gzip.write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x05hello")[:-6])
    with pytest.raises(IDXFormatError, match="corrupt gzip"):
        read_idx(broken_gzip)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(IDXFormatError, match="not an IDX magic number"):
        read_idx(garbage)

    wrong_size = write_tiny_mnist(tmp_path / "wrong_size")
    write_idx(wrong_size / MNIST_FILES["test_images"], np.zeros((20, 14, 14), np.uint8))
    with pytest.raises(IDXFormatError, match="expected 28x28"):
        MNISTMLP(data_dir=str(wrong_size)).prepare()
    count = write_tiny_mnist(tmp_path / "count")
    write_idx(count / MNIST_FILES["test_labels"], np.zeros(19, np.uint8))
    with pytest.raises(IDXFormatError, match="20 images but 19 labels"):
        MNISTMLP(data_dir=str(count)).prepare()


def test_mnist_gzipped_files_read_the_same(tmp_path: Path) -> None:
    plain = MNISTMLP(data_dir=str(write_tiny_mnist(tmp_path / "plain")))._data()
    zipped = MNISTMLP(data_dir=str(write_tiny_mnist(tmp_path / "gz", gz=True)))._data()
    assert all(torch.equal(plain[k], zipped[k]) for k in plain)
    assert plain["x"].shape == (50, 784) and plain["y_eval"].shape == (20,)
    assert MNISTMLP(data_dir=str(tmp_path / "plain"), n_train=30)._data()["x"].shape == (30, 784)


def test_mnist_folder_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KOOPSWEEP_DATA", raising=False)
    assert resolve_mnist_dir("") == Path("data") / "mnist"
    assert resolve_mnist_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("KOOPSWEEP_DATA", str(tmp_path))
    assert resolve_mnist_dir("") == tmp_path / "mnist"
    write_tiny_mnist(tmp_path / "mnist")
    assert MNISTMLP().data_dir == tmp_path / "mnist"
    assert MNISTMLP()._data()["x"].shape == (50, 784)


def test_download_mnist_from_a_local_mirror(tmp_path: Path) -> None:
    mirror = write_tiny_mnist(tmp_path / "mirror", gz=True)
    dest = tmp_path / "dest"
    logged: list[str] = []
    urls = ["file:///nonexistent/mirror/", mirror.as_uri() + "/"]  # the first mirror fails, the second works
    paths = download_mnist(dest, urls, checksums=None, log=logged.append)
    assert sorted(p.name for p in paths) == sorted(f"{n}.gz" for n in MNIST_FILES.values())
    assert not list(dest.glob("*.part"))
    assert MNISTMLP(data_dir=str(dest))._data()["x"].shape == (50, 784)
    # Present files are kept; a checksum mismatch is refused and leaves nothing behind.
    assert download_mnist(dest, ["file:///nonexistent/"], checksums=None) == paths
    with pytest.raises(KoopsweepError, match="MD5"):
        download_mnist(tmp_path / "checked", [mirror.as_uri()])
    assert not list((tmp_path / "checked").iterdir())


# --------------------------------------------------------------------------------------------------
# teacher-student


def test_teacher_and_data_do_not_depend_on_the_run_seed() -> None:
    a, b = TeacherStudent(n_train=64, n_eval=32), TeacherStudent(n_train=64, n_eval=32, hidden=7)
    assert all(torch.equal(a._data()[k], b._data()[k]) for k in ("x", "y", "x_eval", "y_eval"))
    other = TeacherStudent(n_train=64, n_eval=32, teacher_seed=1)._data()
    assert not torch.equal(a._data()["y"], other["y"])
    assert float(a._data()["y"].std()) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize(("hidden", "depth"), [(20, 2), (1000, 2)])
def test_teacher_student_sizes_span_the_scaling_range(hidden: int, depth: int) -> None:
    task = TeacherStudent(input_dim=32, hidden=hidden, depth=depth)
    n = task.n_parameters()
    assert n == sum(p.numel() for p in task.build_model(0).parameters())
    assert 10**3 <= n <= 1.1 * 10**6
