"""`benchmarks/no_regret.py`: every candidate default runs through the real paired bench, is kept on
disk, is not measured twice, and is summarized per task with its worst case."""

import json


def test_candidates_are_measured_once_and_summarized_with_their_worst_case(tmp_path, load_benchmark, monkeypatch):
    bench = load_benchmark("no_regret")
    monkeypatch.setitem(bench.FORMS, "digits-mlp", ("digits-mlp", {"task.hidden": 8}))  # a smaller net
    bench.measure(tmp_path, 1, ["digits-mlp"], ["verify", "worth-it"])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["digits-mlp__verify.json", "digits-mlp__worth-it.json"]
    report = json.loads((tmp_path / "digits-mlp__worth-it.json").read_text())
    assert report["settings"]["koopman"]["fallback"] == "worth-it" and report["settings"]["seeds"] == 1
    stamp = (tmp_path / "digits-mlp__verify.json").stat().st_mtime_ns
    bench.measure(tmp_path, 1, ["digits-mlp"], ["verify"])  # already measured: not run again
    assert (tmp_path / "digits-mlp__verify.json").stat().st_mtime_ns == stamp

    table = bench.summarize(tmp_path).splitlines()
    assert table[0] == "| task | verify | worth-it |"
    [row] = [line for line in table if line.startswith("| digits-mlp |")]
    figures = {name: json.loads((tmp_path / f"digits-mlp__{name}.json").read_text())["summary"]["adam"]
               for name in ("verify", "worth-it")}  # fmt: skip
    for name, summary in figures.items():
        assert f"{summary['median_speedup']:.2f}x" in row
    assert table[-1].startswith("| **worst** |")
