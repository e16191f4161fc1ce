"""Smoke test of benchmarks/scaling.py: its per-size cost function at the smallest student size."""

from __future__ import annotations


import torch


def test_measure_size_smallest_student(load_benchmark):
    scaling = load_benchmark("scaling")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        result = scaling.measure_size(32, windows=[8], repeats=2, step_repeats=3, warmup_steps=3)
    finally:
        torch.set_num_threads(threads)
    n = 8 * 32 + 32 + 32 * 32 + 32 + 32 + 1  # teacher-student's default input 8, depth 2, one output
    assert result["n_params"] == n
    assert [r["variant"] for r in result["rows"]] == scaling.VARIANTS
    for row in result["rows"]:
        assert row["window"] == 8
        assert row["fit_ms"] > 0 and row["step_ms"] > 0
        assert row["fit_over_step"] == row["fit_ms"] / row["step_ms"]
    (mem,) = result["memory"]
    # The accelerator's preallocated snapshot buffers are exactly one float32 window of the student.
    assert mem["snapshot_bytes"] == mem["accelerator_buffer_bytes"] == 8 * n * 4
    # dmd-global keeps its 7 rows of increments (float32) as scratch, at least one per parameter.
    assert mem["dmd_global_scratch_bytes"] >= 7 * n * 4
