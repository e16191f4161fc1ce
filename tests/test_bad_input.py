"""Bad input through the real command line: every case gets one error line naming the field or value,
exit status 2 (bad input) or 1 (a runtime failure), no traceback, and nothing written: no new file,
no study, no MLflow experiment or run. Passwords in storage and tracking URLs never appear in any output.

Most cases run in-process (click's CliRunner, with the real SQLite, PostgreSQL and MLflow stores); a
few run the installed `koopsweep` command to show that no traceback escapes a real process either.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from koopsweep.cli import main
from koopsweep.testing import write_distribution

SECRET = "s3cr3t-pw"
MINIMAL = 'name = "ok"\ntask = "digits-mlp"\ndevice = "cpu"\n'
TINY = MINIMAL + 'budget = 40\nn_trials = 1\nvariants = ["extrapolate-linear"]\n[search]\nwindow = 4\nhorizon = 10\n'
UNREACHABLE_PG = f"postgresql://user:{SECRET}@127.0.0.1:1/db"

# Each case: id, spec files to write, arguments, environment, exit status, what the error line names,
# and whether a study named "ok" exists beforehand.
CASES = [
    # --- spec files
    ("empty-spec", {"s.toml": ""}, ["study", "create", "s.toml"], {}, 2, ["s.toml", "empty"]),
    ("python-not-toml", {"s.py.toml": "import os\nos.system('touch pwned')\n"}, ["study", "create", "s.py.toml"], {}, 2,
     ["not valid TOML"]),
    ("truncated", {"s.toml": MINIMAL + "[search]\nwindow = {low = 4,"}, ["study", "create", "s.toml"], {}, 2,
     ["not valid TOML"]),
    ("binary", {"s.toml": b"\xff\xfe\x00name"}, ["study", "create", "s.toml"], {}, 2, ["cannot read"]),
    ("missing-spec", {}, ["study", "create", "nowhere.toml"], {}, 2, ["nowhere.toml", "no such spec file"]),
    ("unknown-field", {"s.toml": MINIMAL + "budgte = 3\n"}, ["study", "create", "s.toml"], {}, 2, ["'budgte'"]),
    ("wrong-type", {"s.toml": MINIMAL + "budget = 'many'\n"}, ["study", "create", "s.toml"], {}, 2, ["'budget'", "many"]),
    ("out-of-range", {"s.toml": MINIMAL + "n_trials = 0\n"}, ["study", "create", "s.toml"], {}, 2, ["'n_trials'"]),
    ("nan-lr", {"s.toml": MINIMAL + "lr = nan\n"}, ["study", "create", "s.toml"], {}, 2, ["'lr'", "nan"]),
    ("inf-cap", {"s.toml": MINIMAL + "cap_factor = inf\n"}, ["study", "create", "s.toml"], {}, 2, ["'cap_factor'"]),
    ("inverted-range", {"s.toml": MINIMAL + "[search]\nhorizon = {low = 100, high = 10}\n"},
     ["study", "create", "s.toml"], {}, 2, ["'search.horizon'"]),
    ("unknown-task", {"s.toml": 'name = "ok"\ntask = "no-such-task"\n'}, ["study", "create", "s.toml"], {}, 2,
     ["'task'", "no-such-task"]),
    ("unknown-variant", {"s.toml": MINIMAL + "variants = ['no-such-variant']\n"}, ["study", "create", "s.toml"], {}, 2,
     ["'variants'", "no-such-variant"]),
    ("unknown-fallback", {"s.toml": MINIMAL + "[search]\nfallback = ['verify', 'no-such-rule']\n"},
     ["study", "create", "s.toml"], {}, 2, ["'search.fallback'", "no-such-rule"]),
    ("unknown-task-param", {"s.toml": MINIMAL + "task_params = {bogus = 1}\n"}, ["study", "create", "s.toml"], {}, 2,
     ["'task_params'", "bogus"]),
    ("bad-task-param", {"s.toml": MINIMAL + "task_params = {activation = 'sigmoidal'}\n"},
     ["study", "create", "s.toml"], {}, 2, ["'task_params'", "sigmoidal"]),
    ("bad-sampler-args", {"s.toml": MINIMAL + "[sampler]\nname = 'tpe'\nargs = {bogus = 1}\n"},
     ["study", "create", "s.toml"], {}, 2, ["'sampler.args'", "bogus"]),
    ("bad-pruner-args", {"s.toml": MINIMAL + "[pruner]\nname = 'median'\nargs = {bogus = 1}\n"},
     ["study", "create", "s.toml"], {}, 2, ["'pruner.args'", "bogus"]),
    ("password-in-spec", {"s.toml": MINIMAL + f"storage = 'postgresql://u:{SECRET}@db.example/x'\n"},
     ["study", "create", "s.toml"], {}, 2, ["'storage'", "password"]),
    ("spec-storage-scheme", {"s.toml": MINIMAL + "storage = 'mongodb://db.example/x'\n"},
     ["study", "create", "s.toml"], {}, 2, ["mongodb://db.example/x"]),
    ("run-bad-spec", {"s.toml": MINIMAL + "seeds = [-1]\n"}, ["study", "run", "s.toml"], {}, 2, ["'seeds'"]),
    # --- bench --param
    ("param-no-equals", {}, ["bench", "digits-mlp", "--param", "window"], {}, 2, ["--param", "'window'"]),
    ("param-no-key", {}, ["bench", "digits-mlp", "--param", "=3"], {}, 2, ["--param", "'=3'"]),
    ("param-unknown", {}, ["bench", "digits-mlp", "--param", "bogus=3"], {}, 2, ["--param bogus"]),
    ("param-wrong-type", {}, ["bench", "digits-mlp", "--param", "window=abc", "--budget", "10", "--seeds", "1"], {}, 2,
     ["window='abc'"]),
    ("param-rule-range", {}, ["bench", "digits-mlp", "--param", "worth-it.tol=-1", "--budget", "10", "--seeds", "1"], {},
     2, ["tol=-1"]),
    ("param-other-rule", {}, ["bench", "digits-mlp", "--param", "backtrack.tol=0.1"], {}, 2, ["backtrack.tol"]),
    ("param-task", {}, ["bench", "digits-mlp", "--param", "task.bogus=1"], {}, 2, ["bogus"]),
    ("bench-unknown-task", {}, ["bench", "no-such-task"], {}, 2, ["no-such-task"]),
    ("bench-optimizer", {}, ["bench", "digits-mlp", "--optimizer", "bfgs"], {}, 2, ["bfgs"]),
    ("bench-device", {}, ["bench", "digits-mlp", "--device", "tpu"], {}, 2, ["tpu"]),
    # --- storage URLs
    ("storage-scheme", {"s.toml": MINIMAL}, ["study", "create", "s.toml", "--storage", "mongodb://h/db"], {}, 2,
     ["mongodb://h/db"]),
    ("storage-not-url", {"s.toml": MINIMAL}, ["study", "create", "s.toml", "--storage", "notaurl"], {}, 2,
     ["'notaurl'"]),
    ("storage-missing-folder", {"s.toml": MINIMAL}, ["study", "create", "s.toml", "--storage", "sqlite:///no/dir/x.db"],
     {}, 2, ["no/dir"]),
    ("journal-missing-folder", {}, ["study", "list", "--storage", "no/dir/x.log"], {}, 2, ["no/dir"]),
    ("storage-unreachable", {"s.toml": MINIMAL}, ["study", "create", "s.toml", "--storage", UNREACHABLE_PG], {}, 1,
     ["postgresql://user:***@127.0.0.1:1/db", "Connection refused"]),
    ("storage-unreachable-list", {}, ["study", "list", "--storage", UNREACHABLE_PG], {}, 1, ["user:***@127.0.0.1:1"]),
    ("storage-unparsable", {}, ["study", "list", "--storage", f"postgresql://user:{SECRET}@[bad/db"], {}, 1,
     ["user:***@"]),
    # --- tracking URLs
    ("tracking-scheme", {"s.toml": MINIMAL}, ["study", "create", "s.toml"], {"MLFLOW_TRACKING_URI": "bogus://x"}, 2,
     ["bogus://x"]),
    ("tracking-missing-folder", {"s.toml": MINIMAL}, ["study", "create", "s.toml"],
     {"MLFLOW_TRACKING_URI": "sqlite:///no/dir/m.db"}, 2, ["no/dir"]),
    ("tracking-unreachable", {"s.toml": MINIMAL}, ["study", "run", "s.toml"],
     {"MLFLOW_TRACKING_URI": f"http://user:{SECRET}@127.0.0.1:1"}, 1, ["http://user:***@127.0.0.1:1", "unreachable"]),
    # --- study names
    ("show-no-storage", {}, ["study", "show", "nope"], {}, 2, ["koopsweep.db"]),
    ("show-unknown", {}, ["study", "show", "nope"], {}, 2, ["'nope'", "ok"], True),
    ("run-unknown", {}, ["study", "run", "nope"], {}, 2, ["'nope'"], True),
    ("delete-unknown", {}, ["study", "delete", "nope", "--yes"], {}, 2, ["'nope'"], True),
    ("report-unknown", {}, ["study", "report", "nope", "--out", "rep"], {}, 2, ["'nope'"], True),
    # --- options
    ("jobs-zero", {"s.toml": MINIMAL}, ["study", "run", "s.toml", "--jobs", "0"], {}, 2, ["--jobs"]),
    ("n-trials-word", {"s.toml": MINIMAL}, ["study", "run", "s.toml", "--n-trials", "many"], {}, 2, ["--n-trials", "many"]),
    ("timeout-negative", {"s.toml": MINIMAL}, ["study", "run", "s.toml", "--timeout", "-1"], {}, 2, ["--timeout"]),
    ("devices-unknown", {"s.toml": MINIMAL}, ["study", "run", "s.toml", "--devices", "cpu,tpu"], {}, 2, ["'tpu'"]),
    ("devices-absent-gpu", {"s.toml": MINIMAL}, ["study", "run", "s.toml", "--devices", "cuda:99"], {}, 2, ["cuda:99"]),
    ("devices-empty", {"s.toml": MINIMAL}, ["study", "run", "s.toml", "--devices", ","], {}, 2, ["--devices"]),
    ("devices-on-existing", {}, ["study", "run", "ok", "--devices", "tpu"], {}, 2, ["'tpu'"], True),
]


def state(folder: Path) -> dict:
    """Everything a command could have written: the files (with sizes), the studies and their trials,
    the MLflow experiments and runs."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    studies = None
    if (folder / "koopsweep.db").exists():
        import optuna

        summaries = optuna.get_all_study_summaries(f"sqlite:///{folder / 'koopsweep.db'}", include_best_trial=False)
        studies = sorted((s.study_name, s.n_trials) for s in summaries)
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000) if experiments else []
    return {"files": files, "studies": studies, "experiments": sorted(e.name for e in experiments), "runs": len(runs)}


def _case_id(case):
    return case[0]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input(case, workdir):
    name, files, args, env, status, names = case[:6]
    with_study = len(case) > 6 and case[6]
    if args[:2] == ["study", "report"] and "report" not in main.commands["study"].commands:
        pytest.fail("'koopsweep study report' is missing")
    if with_study:
        (workdir / "ok.toml").write_text(TINY)
        assert CliRunner().invoke(main, ["study", "create", "ok.toml"]).exit_code == 0
    for path, text in files.items():
        (workdir / path).write_bytes(text if isinstance(text, bytes) else text.encode())
    before = state(workdir)

    result = CliRunner().invoke(main, args, env=env)

    output = result.output
    assert result.exit_code == status, output
    # The error was reported, not raised: no exception escaped the command line.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    for fragment in names:
        assert fragment in errors[0], errors[0]
    assert SECRET not in output
    assert state(workdir) == before  # nothing written, anywhere
    assert not (workdir / "pwned").exists()  # a spec is data: never executed


def _console_script() -> str:
    return str(Path(sys.executable).with_name("koopsweep"))


def _real(workdir, *args, env=None):
    return subprocess.run(
        [_console_script(), *args], cwd=workdir, capture_output=True, text=True, timeout=180,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


BROKEN_TASK = f"""
from koopsweep.tasks._digits import DigitsMLP


class Broken(DigitsMLP):
    def validate_params(self):  # a plugin bug: not a koopsweep error
        raise RuntimeError("cannot reach postgresql://u:{SECRET}@db.example/x\\nsecond line")
"""


def test_real_processes_print_one_line_and_no_traceback_unless_debug(workdir):
    (workdir / "s.toml").write_text("print('hello')\n")
    (workdir / "broken.toml").write_text('name = "b"\ntask = "broken-task"\n')
    site = workdir / "site"
    write_distribution(site, "koopsweep-broken", "1.0", entry_points={"koopsweep.tasks": {"broken-task": "broken:Broken"}},
                       files={"broken.py": BROKEN_TASK})  # fmt: skip
    plugin = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    before = state(workdir)
    for args, env, status, expected in (
        (["study", "create", "s.toml"], {}, 2, "Error: s.toml: not valid TOML"),
        (["study", "list", "--storage", UNREACHABLE_PG], {}, 1, "Error: cannot open storage postgresql://user:***@"),
        (["study", "show", "nope"], {}, 2, "Error: no storage at sqlite:///koopsweep.db"),
        # A bug in a plugin (any exception but koopsweep's own) is one line too, with a hint.
        (["study", "create", "broken.toml"], plugin, 1,
         "Error: unexpected RuntimeError: cannot reach postgresql://u:***@db.example/x second line (run with --debug"),
    ):  # fmt: skip
        done = _real(workdir, *args, env=env)
        assert done.returncode == status, done.stderr
        assert "Traceback" not in done.stderr and SECRET not in done.stderr + done.stdout
        assert [line for line in done.stderr.splitlines() if line.strip()] == [done.stderr.strip()]  # one line
        assert done.stderr.startswith(expected), done.stderr
    for args, env, error in (
        (["study", "list", "--storage", UNREACHABLE_PG], {}, "OperationalError"),
        (["study", "create", "broken.toml"], plugin, "RuntimeError: cannot reach"),
    ):
        debug = _real(workdir, "--debug", *args, env=env)
        assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr and error in debug.stderr
        assert SECRET not in debug.stderr  # masked in tracebacks too
    new_files = set(state(workdir)["files"]) - set(before["files"])
    assert state(workdir) | {"files": {}} == before | {"files": {}} and all(f.startswith("site") for f in new_files)


def test_no_password_in_any_output_through_a_whole_study(workdir, postgres_url, mlflow_server, capfd):
    """A password-bearing storage URL (PostgreSQL trusts local connections, so any password works) and
    a password-bearing tracking URL, through create, run with two worker processes, list, show and
    delete, and through the error of an unreachable tracking server. The workers' output reaches the
    file descriptors, which capfd reads."""
    from urllib.parse import urlsplit, urlunsplit

    from koopsweep import sweep

    parts = urlsplit(postgres_url)
    storage = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{SECRET}@{parts.hostname}:{parts.port}"))
    tracking = mlflow_server.url.replace("http://", f"http://user:{SECRET}@")
    (workdir / "ok.toml").write_text(TINY.replace("n_trials = 1", "n_trials = 2"))
    env = {"MLFLOW_TRACKING_URI": tracking, "COLUMNS": "200"}
    outputs = []
    for args in (
        ["study", "create", "ok.toml", "--storage", storage],
        ["study", "run", "ok", "--storage", storage, "--jobs", "2"],
        ["study", "list", "--storage", storage],
        ["study", "show", "ok", "--storage", storage],
        ["study", "show", "ok", "--storage", storage, "--json"],
        ["study", "delete", "ok", "--storage", storage, "--yes"],
    ):
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, result.output[-3000:]
        outputs.append(result.output)
    assert ":***@127.0.0.1" in outputs[2]  # the list's title names the storage, masked
    down = CliRunner().invoke(main, ["study", "run", "ok.toml", "--storage", storage],
                              env={"MLFLOW_TRACKING_URI": f"http://user:{SECRET}@127.0.0.1:1"})  # fmt: skip
    assert down.exit_code == 1 and "unreachable" in down.output
    workers = capfd.readouterr()
    for text in [*outputs, down.output, workers.out, workers.err]:
        assert SECRET not in text
    # Nor is the password on a worker's command line, which every local user can read.
    command = sweep.worker_command("ok", storage, n_trials=1, until_total=1, device="cpu", index=1, timeout=None,
                                   heartbeat_interval=None)  # fmt: skip
    assert SECRET not in " ".join(command)


# ---------------------------------------------------------------------------------------- security
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}


def _unsafe_uses(path: Path) -> list[str]:
    """Imports of unpickling modules, eval/exec, yaml.load and torch.load without weights_only=True."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            if isinstance(func, ast.Name) and name in ("eval", "exec"):
                found.append(f"{name}()")
            elif (owner, name) in (("yaml", "load"), ("yaml", "unsafe_load")):
                found.append(f"{owner}.{name}()")
            elif (owner, name) == ("torch", "load"):
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                if not safe:
                    found.append("torch.load() without weights_only=True")
    return [f"{path}:{use}" for use in found]


def test_nothing_is_unpickled_or_evaluated(tmp_path):
    # Specs are parsed with tomllib, studies' attributes and stored specs are JSON: no code path of
    # koopsweep (or of its bundled plugin) may turn stored bytes into code.
    repo = Path(__file__).resolve().parents[1]
    sources = [*(repo / "koopsweep").rglob("*.py"), *(repo / "plugins").rglob("*.py")]
    assert len(sources) > 20
    assert [use for path in sources for use in _unsafe_uses(path)] == []
    probe = tmp_path / "probe.py"  # the scan itself finds what it looks for
    probe.write_text("import pickle\nx = torch.load(f)\ny = torch.load(f, weights_only=True)\nexec(x)\n")
    assert _unsafe_uses(probe) == [
        f"{probe}:import pickle", f"{probe}:torch.load() without weights_only=True", f"{probe}:exec()"
    ]


def test_the_servers_koopsweep_starts_listen_on_loopback_only(mlflow_server):
    from koopsweep.cli import ui

    assert {p.name: p.default for p in ui.params}["host"] == "127.0.0.1"
    # /proc/net/tcp lists listening sockets (state 0A) as hex "address:port"; 0100007F is 127.0.0.1.
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for row in list(handle)[1:]:
                local, state = row.split()[1], row.split()[3]
                if state == "0A":
                    address, port = local.rsplit(":", 1)
                    listening.add((address, int(port, 16)))
    on_port = {address for address, port in listening if port == mlflow_server.port}
    assert on_port == {"0100007F"}
