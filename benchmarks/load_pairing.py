"""Sequential against interleaved pairing, on a quiet machine and under bursts of CPU load (issue 26).

    python benchmarks/load_pairing.py --out DIR [--task mnist1d-mlp] [--seeds 5] [--repeats 2]
                                      [--bursts 2] [--burst-s 2] [--procs 4] [--param KEY=VALUE ...]
    python benchmarks/load_pairing.py --out DIR --summarize    # the table again, from DIR's JSON

Each repeat runs the same paired bench (`koopsweep.bench.run_bench`, the default configuration unless
``--param`` says otherwise) four times: sequential and interleaved pairing, each once on the quiet
machine and once while ``--bursts`` bursts of ``--procs`` busy processes (a Python loop each, nothing
else) come and go. The bursts are spread over the quiet run's length: burst ``i`` of ``n`` starts at
``(2i + 1) / (2n + 1)`` of it and lasts ``--burst-s`` seconds, so they land at the same moments of
both pairings' runs. On a task where the configuration keeps no jump the true speedup is about 1x in
every mode, so whatever the bursts add is the clock's error.

Per run: the median wall-clock speedup over the seeds, its quartiles, the step and CPU-time figures,
whether `koopsweep.measure.load_moved` flagged it, and "moved": the loaded median against the quiet
median of the same repeat and pairing (|loaded / quiet - 1|). The issue's bar: at most 15% interleaved.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from koopsweep.bench import BenchSettings, run_bench
from koopsweep.measure import quartiles

PAIRINGS = ("sequential", "interleaved")
BUSY = "while True: pass"


class Bursts:
    """``count`` bursts of ``procs`` busy processes, burst ``i`` starting at ``(2i+1)/(2*count+1)`` of
    ``span_s`` after `start` and lasting ``burst_s``."""

    def __init__(self, count: int, procs: int, burst_s: float, span_s: float) -> None:
        self.starts = [(2 * i + 1) / (2 * count + 1) * span_s for i in range(count)]
        self.procs, self.burst_s = procs, burst_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.fired: list[float] = []

    def _run(self) -> None:
        origin = time.perf_counter()
        for start in self.starts:
            if self._stop.wait(max(0.0, origin + start - time.perf_counter())):
                return
            busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(self.procs)]
            self.fired.append(round(time.perf_counter() - origin, 2))
            self._stop.wait(self.burst_s)
            for process in busy:
                process.kill()
                process.wait()

    def __enter__(self) -> Bursts:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(settings: BenchSettings, bursts: Bursts | None) -> dict[str, Any]:
    started = time.perf_counter()
    if bursts is None:
        report = run_bench(settings)
    else:
        with bursts:
            report = run_bench(settings)
    row = next(iter(report["summary"].values()))
    speedups = [r["speedup_bound"] for r in report["results"]]
    return {
        "pairing": settings.pairing,
        "loaded": bursts is not None,
        "bursts_at_s": bursts.fired if bursts else [],
        "wall_s": time.perf_counter() - started,
        "median": row["median_speedup"],
        "quartiles": quartiles(speedups),
        "per_seed": speedups,
        "steps": row["median_step_speedup"],
        "cpu": row["median_cpu_speedup"],
        "accepted": row["median_acceptance_rate"],
        "load_moved": row["load_moved"],
    }


def summarize(data: dict[str, Any]) -> str:
    lines = [f"{data['task']}, {data['seeds']} seeds, {data['bursts']} bursts of {data['procs']} busy processes "
             f"x {data['burst_s']} s ({data['device']})", "",
             f"{'repeat':>6} {'pairing':<11} {'load':<6} {'median':>7} {'quartiles':>13} {'steps':>6} "
             f"{'cpu':>6} {'flag':>4} {'moved':>6}"]  # fmt: skip
    for index, repeat in enumerate(data["repeats"]):
        for pairing in PAIRINGS:
            quiet = repeat[pairing]["quiet"]
            for run in (quiet, repeat[pairing]["loaded"]):
                low, high = run["quartiles"]
                moved = "" if not run["loaded"] else f"{abs(run['median'] / quiet['median'] - 1):.0%}"
                lines.append(
                    f"{index:>6} {pairing:<11} {'bursts' if run['loaded'] else 'quiet':<6} {run['median']:>6.2f}x "
                    f"{f'{low:.2f}-{high:.2f}x':>13} {run['steps']:>5.2f}x {run['cpu'] or 0:>5.2f}x "
                    f"{'!' if run['load_moved'] else '':>4} {moved:>6}"
                )  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--task", default="mnist1d-mlp")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--burst-s", type=float, default=2.0)
    parser.add_argument("--procs", type=int, default=4, help="busy processes per burst (default: 2 per core here)")
    parser.add_argument("--budget", type=int)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    path = args.out / f"load-pairing-{args.task}.json"
    if args.summarize:
        print(summarize(json.loads(path.read_text())))
        return
    params = {}
    for text in args.param:
        key, _, value = text.partition("=")
        params[key] = json.loads(value) if value[:1] in "0123456789-[{tn" else value
    data: dict[str, Any] = {"task": args.task, "seeds": args.seeds, "bursts": args.bursts, "procs": args.procs,
                            "burst_s": args.burst_s, "params": params, "device": "cpu", "repeats": []}  # fmt: skip
    for _ in range(args.repeats):
        repeat: dict[str, Any] = {}
        for pairing in PAIRINGS:
            settings = BenchSettings(task=args.task, params=params, seeds=args.seeds, device="cpu", budget=args.budget,
                                     pairing=pairing)  # fmt: skip
            quiet = measure(settings, None)
            loaded = measure(settings, Bursts(args.bursts, args.procs, args.burst_s, quiet["wall_s"]))
            repeat[pairing] = {"quiet": quiet, "loaded": loaded}
            print(f"{pairing}: quiet {quiet['median']:.2f}x, bursts {loaded['median']:.2f}x", flush=True)
        data["repeats"].append(repeat)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    print(summarize(data))


if __name__ == "__main__":
    main()
