"""The tracking server goes away mid-study and comes back (issue 17, item 2): with a real `mlflow server`
stopped and started again on the same port and store."""

from koopsweep import tracking
from koopsweep.tracking import Tracker, start_ui_server


def test_a_run_whose_end_was_lost_is_ended_once_the_server_is_back(fresh_mlflow_server):
    server = fresh_mlflow_server
    tracker = Tracker(server.url, "restart")
    parent = tracker.start_study_run("restart", "{}", {})
    trial_run = tracker.start_child(parent, "trial-0", "trial", {tracking.TRIAL_TAG: "0"})
    other_run = tracker.start_child(parent, "trial-2", "trial", {tracking.TRIAL_TAG: "2"})
    server.stop()
    assert tracker.guarded("end the trial's run", tracker.finish, trial_run, "FINISHED") is None
    # Within the offline window calls are skipped without asking the server: an end is still kept.
    assert tracker.guarded("end the trial's run", tracker.finish, other_run, "KILLED") is None
    assert tracker.failures == 2
    tracker.offline_retry_s = 0.0  # try the server again at the next call
    server.process = start_ui_server(
        f"sqlite:///{server.folder / 'srv.db'}", port=server.port, default_artifact_root=str(server.folder / "artifacts"),
        timeout=120,
    )  # fmt: skip
    # The next call that reaches the server logs again and ends the run left open.
    later = tracker.guarded("start the trial's run", tracker.start_child, parent, "trial-1", "trial", {tracking.TRIAL_TAG: "1"})
    assert later is not None
    assert tracker.client.get_run(trial_run).info.status == "FINISHED"
    assert tracker.client.get_run(other_run).info.status == "KILLED"
    assert tracker.client.get_run(later).info.status == "RUNNING"
    assert tracker.failures == 2


def test_study_show_counts_the_trials_that_ran_while_tracking_failed():
    from koopsweep.reporting import summary_lines

    summary = {
        "study": "s", "task": "digits-mlp", "optimizer": "adam", "baselines": ["adam"], "untuned_lrs": [],
        "objective": "speedup", "directions": ["maximize"], "trials_by_state": {"COMPLETE": 3},
        "best_trials": [], "best_per_variant": {}, "tracking_missed": 2,
    }  # fmt: skip
    text = " ".join(summary_lines(summary))
    assert "2 trial(s) ran while MLflow tracking failed" in text
    summary["tracking_missed"] = 0
    assert "tracking failed" not in " ".join(summary_lines(summary))


def test_study_show_puts_the_step_figure_beside_the_wall_clock_one_and_flags_load_that_moved():
    from koopsweep.reporting import summary_lines

    row = {"number": 4, "variant": "extrapolate-linear", "params": {"variant": "extrapolate-linear"},
           "speedup_vs_adam": 6.01, "reached_vs_adam": "1/1", "step_speedup": 0.97, "load_moved": True,
           "acceptance_rate": 0.0, "fit_over_step": 0.02}  # fmt: skip
    summary = {
        "study": "s", "task": "digits-mlp", "optimizer": "adam", "baselines": ["adam"], "untuned_lrs": [],
        "objective": "speedup", "directions": ["maximize"], "trials_by_state": {"COMPLETE": 1},
        "best_trials": [row], "best_per_variant": {}, "tracking_missed": 0,
    }  # fmt: skip
    lines = summary_lines(summary)
    header = next(line for line in lines if line.startswith("trial"))
    assert header.split() == ["trial", "variant", "vs", "adam", "steps", "accepted", "fit/step"]
    assert next(line for line in lines if line.lstrip().startswith("4 ")).split()[2:4] == ["6.01x!", "0.97x"]
    assert "! load moved while it ran" in "\n".join(lines) and all(len(line) <= 80 for line in lines)
    row["load_moved"] = False
    assert "load moved" not in "\n".join(summary_lines(summary))
