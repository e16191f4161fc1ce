#!/usr/bin/env bash
# The GPU check, in one go and a few minutes: the CUDA tests, then the paired bench and the fit-cost
# benchmark on the GPU, each writing its JSON and printing its table.
#
#   benchmarks/gpu.sh [OUT_DIR]          (run from the repository root; OUT_DIR defaults to gpu-results)
#
# Needs python3 with a CUDA build of torch. When `import koopsweep` fails it installs koopsweep into a
# private folder: its light dependencies from wheels in .whl/ when that folder exists (for machines
# without an index), else from pip's index; it never touches the python's own site-packages. MLflow is
# not needed: nothing here tracks. SEEDS (default 3) sets the bench's paired seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
seeds="${SEEDS:-3}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if ! python3 -c 'import koopsweep.plugins, optuna, mnist1d' 2>/dev/null; then
    site="$(mktemp -d)/site"
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
    else
        python3 -m pip install -q --no-compile --target "$site" 'optuna>=5,<6' mnist1d schedulefree
    fi
    # koopsweep itself (no dependencies: torch, numpy, click, rich and scikit-learn come with the
    # python), installed rather than put on the path so that its entry points register the built-ins.
    python3 -m pip install -q --no-deps --no-build-isolation --no-index --no-compile --target "$site" .
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

python3 - <<'EOF' | tee "$out/machine.txt"
import platform, torch
assert torch.cuda.is_available(), "no CUDA device: this script is the GPU check"
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"python {platform.python_version()}")
EOF

echo "== CUDA tests (every device-parametrized test runs on cpu and cuda)"
# --noconftest: these files need none of the shared fixtures, whose servers need MLflow and PostgreSQL.
python3 -m pytest --noconftest -p no:cacheprovider -q tests/test_devices.py tests/test_variants.py \
    tests/test_accelerator.py tests/test_optimizers.py 2>&1 | tee "$out/tests.txt"

echo "== paired bench on the GPU: hnn-oscillator, dmd-global, $seeds seeds"
python3 -m koopsweep bench hnn-oscillator --optimizer adam --optimizer adadelta --seeds "$seeds" \
    --device cuda --json "$out/bench-hnn.json"

echo "== fit cost against the optimizer step on the GPU"
python3 benchmarks/variant_speed.py --device cuda --node-svd-max-window 16 --json "$out/variant_speed.json"

# The networks researchers train, at their GPU sizes: each task's best baseline among the built-in
# optimizers on the CPU size (docs/results.md), paired with the default accelerator around it
# (`koopsweep bench` with no --variant or --param). Budgets are cut so that the three fit in a few
# minutes; GPU_TASK_SEEDS (default 2) sets the paired seeds.
task_seeds="${GPU_TASK_SEEDS:-2}"
for row in "charlm-transformer:muon:600" "mnist1d-cnn:muon:3000" "pinn-burgers:adamw:2000"; do
    IFS=: read -r task optimizer budget <<<"$row"
    echo "== $task at its gpu size: $optimizer with and without the default accelerator, $task_seeds seeds"
    python3 -m koopsweep bench "$task" --param task.size=gpu --optimizer "$optimizer" --budget "$budget" \
        --seeds "$task_seeds" --device cuda --json "$out/bench-$task-gpu.json"
done
python3 - "$out" <<'PY' | tee "$out/tasks-gpu.txt"
import json, pathlib, sys
rows = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("bench-*-gpu.json")):
    report = json.loads(path.read_text())
    s = report["settings"]
    for name, row in report["summary"].items():
        ms = 1e3 * min(r["seconds_per_step"] for r in report["results"] if r["optimizer"] == name)
        reached = row["reached_fraction"]
        speedup = f"{row['median_speedup']:.2f}x" if reached >= 0.5 else f"<{row['median_speedup']:.2f}x"
        rows.append((s["task"], name, s["budget"], f"{ms:.1f}", speedup, f"{reached:.0%}",
                     f"{row['median_acceptance_rate']:.0%}", s["device_name"]))
print(f"{'task':20} {'optimizer':10} {'budget':>6} {'ms/step':>8} {'speedup':>8} {'reached':>8} {'accepted':>8}  device")
for task, name, budget, ms, speedup, reached, accepted, device in rows:
    print(f"{task:20} {name:10} {budget:>6} {ms:>8} {speedup:>8} {reached:>8} {accepted:>8}  {device}")
PY
