"""``charlm-transformer``: the standard-library corpus, determinism, learning, size presets, validation.

Fast and offline: the corpus is this interpreter's own standard library (read once per process, about
0.2 s), and every model trained here is tiny (d_model 16-32, one layer, context 16-32).
"""

from __future__ import annotations

import itertools
import math
import pickle
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from koopsweep import plugins
from koopsweep.errors import ParameterError
from koopsweep.tasks._charlm import (
    SIZES,
    CharLMTransformer,
    is_corpus_file,
    is_eval_file,
    list_corpus_files,
    load_corpus,
)
from koopsweep.testing import check_task

CPU = torch.device("cpu")

#: A tiny configuration: trains a step in a few milliseconds.
TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16, "batch_size": 4, "eval_windows": 8}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # These models are tiny: a second thread only adds spinning, which on a busy 2-core machine
    # makes a 40-step run take seconds instead of a third of one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**overrides: object) -> CharLMTransformer:
    return CharLMTransformer(**{**TINY, **overrides})


# --------------------------------------------------------------------------------------------------
# The contract


def test_conforms_to_the_task_contract() -> None:
    check_task(CharLMTransformer, **TINY)


def test_is_found_as_a_plugin() -> None:
    assert plugins.load_task("charlm-transformer") is CharLMTransformer


def test_class_attributes() -> None:
    assert CharLMTransformer.default_optimizer == "adamw"
    assert CharLMTransformer.schedule == "cosine"
    assert 0 < CharLMTransformer.warmup < CharLMTransformer.default_budget // 10
    assert CharLMTransformer.baseline_lrs["adamw"] > 0
    assert CharLMTransformer.search_space() == {}


# --------------------------------------------------------------------------------------------------
# The corpus


def test_corpus_leaves_out_installed_packages_tests_and_generated_files() -> None:
    corpus = load_corpus()
    files = corpus.train_files + corpus.eval_files
    assert len(files) > 100
    for path in files:
        folders = path.split("/")[:-1]
        assert path.endswith(".py")
        assert not {"site-packages", "dist-packages", "test", "tests", "idle_test"} & set(folders), path
        assert not path.rsplit("/", 1)[-1].startswith("_sysconfigdata"), path
        assert not (folders and folders[0].startswith("config-")), path
    assert "os.py" in files  # a module every CPython has, at the top of the standard library
    assert Path(corpus.root) == Path(sysconfig.get_paths()["stdlib"])


def test_splits_are_disjoint_sorted_whole_files_chosen_by_path() -> None:
    corpus = load_corpus()
    assert list(corpus.train_files) == sorted(corpus.train_files)
    assert list(corpus.eval_files) == sorted(corpus.eval_files)
    assert not set(corpus.train_files) & set(corpus.eval_files)
    assert all(is_eval_file(f) for f in corpus.eval_files)
    assert not any(is_eval_file(f) for f in corpus.train_files)
    assert 0.03 < len(corpus.eval_files) / (len(corpus.eval_files) + len(corpus.train_files)) < 0.2
    # Whole files: each split is its files' bytes, each followed by one NUL byte.
    root = Path(corpus.root)
    for files, stream in ((corpus.train_files, corpus.train_bytes), (corpus.eval_files, corpus.eval_bytes)):
        assert len(stream) == sum((root / f).stat().st_size + 1 for f in files)
    first = corpus.eval_files[0]
    assert corpus.eval_bytes.startswith((root / first).read_bytes() + b"\0")


def test_file_rule_on_a_made_up_tree(tmp_path: Path) -> None:
    keep = ["a.py", "pkg/__init__.py", "pkg/sub/mod.py", "testing.py", "unittest/case.py", "pkg/test_helpers.py"]
    drop = [
        "site-packages/x.py", "dist-packages/y.py", "test/test_os.py", "pkg/tests/t.py", "idlelib/idle_test/t.py",
        "_sysconfigdata__linux_x86_64-linux-gnu.py", "config-3.11-x86_64-linux-gnu/python-config.py",
        "notes.txt", "pkg/mod.pyc", "lib2to3/tests/data/bom.py",
    ]  # fmt: skip
    for rel in keep + drop:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    assert list_corpus_files(tmp_path) == sorted(keep)
    assert all(is_corpus_file(f) for f in keep)
    assert not any(is_corpus_file(f) for f in drop)


def test_a_missing_file_moves_no_other_file_between_splits(tmp_path: Path) -> None:
    names = [f"m{i:03d}.py" for i in range(60)]
    victim = names[17]
    for folder, present in (("full", names), ("less", [n for n in names if n != victim])):
        (tmp_path / folder).mkdir()
        for name in present:
            (tmp_path / folder / name).write_text(f"x = {name!r}\n")
    full, less = load_corpus(str(tmp_path / "full")), load_corpus(str(tmp_path / "less"))
    assert full.train_files and full.eval_files
    assert set(less.train_files) == set(full.train_files) - {victim}
    assert set(less.eval_files) == set(full.eval_files) - {victim}
    assert less.sha256 != full.sha256


def test_data_facts_record_the_python_version_sizes_and_a_stable_hash() -> None:
    import platform

    facts = CharLMTransformer().data_facts()
    assert facts["python_version"] == platform.python_version()
    assert all(isinstance(v, str) for v in facts.values())
    corpus = load_corpus()
    assert int(facts["train_files"]) == len(corpus.train_files)
    assert int(facts["eval_bytes"]) == len(corpus.eval_bytes)
    assert len(facts["corpus_sha256"]) == 64
    load_corpus.cache_clear()  # a second, independent read of the files gives the same hash
    assert CharLMTransformer(size="gpu").data_facts() == facts


# --------------------------------------------------------------------------------------------------
# Determinism and batches


def test_same_seed_same_weights_and_batches_other_seed_others() -> None:
    a, b = tiny(), tiny()
    same = zip(a.build_model(3).named_parameters(), b.build_model(3).named_parameters(), strict=True)
    assert all(n1 == n2 and torch.equal(p1, p2) for (n1, p1), (n2, p2) in same)
    other = dict(a.build_model(4).named_parameters())
    assert all(not torch.equal(p, other[n]) for n, p in a.build_model(3).named_parameters() if p.dim() > 1)
    first = list(itertools.islice(a.batches(3, CPU), 5))
    again = list(itertools.islice(b.batches(3, CPU), 5))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, again, strict=True))
    x_other, _ = next(a.batches(4, CPU))
    assert not torch.equal(first[0][0], x_other)


def test_building_and_batching_leave_the_global_random_state_alone() -> None:
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    task = CharLMTransformer(size="cpu", eval_windows=4)
    model = task.build_model(0)
    task.prepare(CPU)
    list(itertools.islice(task.batches(0, CPU), 3))
    task.eval_loss(model, CPU)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state[1], np.random.get_state()[1])
    assert py_state == random.getstate()


def test_batches_are_next_byte_windows_of_the_training_stream() -> None:
    task = tiny(batch_size=3, context=12)
    train = task.corpus().train_bytes
    # 300 steps: past the first chunk of windows drawn at once.
    batches = list(itertools.islice(task.batches(0, CPU), 300))
    for x, y in batches[:3] + batches[-3:]:
        assert x.shape == y.shape == (3, 12) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x, y, strict=True):
            assert bytes(row_x.tolist()) + bytes(row_y[-1:].tolist()) in train
    assert not torch.equal(batches[0][0], batches[256][0])


def test_evaluation_windows_come_from_held_out_files_and_ignore_the_seed() -> None:
    task = tiny(eval_windows=5, context=20)
    data = task._on(CPU)
    assert data["x_eval"].shape == (5, 20)
    held_out = task.corpus().eval_bytes
    for x, y in zip(data["x_eval"], data["y_eval"], strict=True):
        assert bytes(x.tolist()) + bytes(y[-1:].tolist()) in held_out
    assert torch.equal(data["x_eval"], tiny(eval_windows=5, context=20)._on(CPU)["x_eval"])


def test_pickling_drops_the_device_cache() -> None:
    task = tiny()
    task.prepare(CPU)
    clone = pickle.loads(pickle.dumps(task))
    assert clone._cpu is None and clone.params == task.params


# --------------------------------------------------------------------------------------------------
# Learning


def test_fresh_model_scores_about_8_bits_and_adamw_lowers_it() -> None:
    task = CharLMTransformer(d_model=32, n_layers=1, n_heads=2, context=32, batch_size=16, eval_windows=32)
    model = task.build_model(0)
    before = task.eval_loss(model, CPU)
    assert abs(before - math.log2(256)) < 0.3
    loss = task.loss(model, next(task.batches(0, CPU)))
    assert abs(float(loss.detach()) - math.log(256)) < 0.3  # the training loss is in nats
    metrics = task.eval_metrics(model, CPU)
    assert metrics["bits_per_byte"] == before and metrics["eval_tokens"] == 32 * 32
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for batch in itertools.islice(task.batches(0, CPU), 40):
        opt.zero_grad(set_to_none=True)
        task.loss(model, batch).backward()
        opt.step()
    after = task.eval_loss(model, CPU)
    assert after < before - 2.0, (before, after)


# --------------------------------------------------------------------------------------------------
# Sizes and parameters


def test_size_presets_and_overrides() -> None:
    cpu, gpu = CharLMTransformer(), CharLMTransformer(size="gpu")
    assert cpu.shape == SIZES["cpu"] and gpu.shape == SIZES["gpu"]
    big = gpu.build_model(0)
    n_big = sum(p.numel() for p in big.parameters())
    n_small = sum(p.numel() for p in cpu.build_model(0).parameters())
    assert n_big == gpu.n_parameters() > 50 * n_small
    assert n_small == cpu.n_parameters()
    assert 10_000_000 < n_big < 100_000_000
    override = CharLMTransformer(size="gpu", n_layers=1, context=8)
    assert override.shape == {**SIZES["gpu"], "n_layers": 1, "context": 8}
    x, y = next(CharLMTransformer(context=24, batch_size=5).batches(0, CPU))
    assert x.shape == (5, 24)


@pytest.mark.parametrize(
    "params",
    [
        {"size": "tpu"},
        {"size": None},
        {"d_model": 0},
        {"d_model": -8},
        {"d_model": 64.0},
        {"d_model": "64"},
        {"n_layers": 0},
        {"n_heads": True},
        {"context": 0},
        {"batch_size": -1},
        {"d_model": 64, "n_heads": 3},
        {"size": "gpu", "n_heads": 7},
        {"eval_windows": 0},
        {"eval_windows": None},
        {"vocab": 128},
    ],
)
def test_bad_parameters_raise(params: dict) -> None:
    with pytest.raises(ParameterError) as info:
        CharLMTransformer(**params)
    message = str(info.value)
    assert "\n" not in message
    assert next(iter(params)) in message or "n_heads" in message
