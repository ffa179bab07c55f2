"""Multiruns: jobs in parallel through Hydra's joblib launcher, failures recorded per job, a summary at the end."""

import csv
import itertools
import json

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import SMALL_PURSUIT, run_cli, run_dirs
from marlrun.config import validate

TINY = [*SMALL_PURSUIT, "total_steps=200", "log_interval=100", "eval_episodes=2", "eval_interval=100",
        "algo.buffer_size=500", "algo.learning_starts=100", "hardware.torch_threads=1"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


def test_joblib_grid_makes_a_folder_per_job_and_a_report_with_a_group_per_heuristic(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("train", "-m", *TINY, *JOBLIB, "algo.sharing=none,all", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    dirs = run_dirs(sweep)
    assert [d.name for d in dirs] == ["0", "1", "2", "3"]
    jobs = json.loads((sweep / "sweep_summary.json").read_text())
    assert [j["status"] for j in jobs] == ["finished"] * 4
    assert [j["swept"] for j in jobs] == ["algo.sharing=none seed=0", "algo.sharing=none seed=1",
                                         "algo.sharing=all seed=0", "algo.sharing=all seed=1"]
    assert "4 of 4 jobs finished" in result.stderr
    seeds = [yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["seed"] for d in dirs]
    assert seeds == [0, 1, 0, 1]  # every job seeded itself from its own config

    report = run_cli("report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    with open(sweep / "report" / "report.csv") as f:
        groups = list(csv.DictReader(f))
    assert [g["group"] for g in groups] == ["independent DDQN", "share all"]  # seeds aggregated, by the methods' names
    assert [int(g["runs"]) for g in groups] == [2, 2]
    assert all(float(g["final_ci_low"]) <= float(g["final_mean"]) <= float(g["final_ci_high"]) for g in groups)
    assert (sweep / "report" / "curves_eval_episode_return.png").stat().st_size > 0


def test_a_failing_job_leaves_the_others_complete_and_the_summary_names_it(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("train", "-m", *TINY, *JOBLIB, "algo.bandwidth=0.1,0.2,0.3,5.0", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "3 of 4 jobs finished" in result.stderr
    assert "job 3 (algo.bandwidth=5.0): failed: algo.bandwidth" in " ".join(result.stderr.split())
    for job in ("0", "1", "2"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["env_steps"] == 200
        assert list((sweep / job / "checkpoints").glob("step_*.pt"))
    failed = json.loads((sweep / "3" / "summary.json").read_text())
    assert failed["status"].startswith("failed: algo.bandwidth") and "(0, 1]" in failed["status"]


def test_a_crashing_job_records_its_traceback_and_the_next_job_runs(tmp_path, monkeypatch, compose_cfg):
    import marlrun.sweep
    from marlrun.sweep import job_outcomes, run_job

    hydra_cfg = OmegaConf.create({"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}})
    calls = []

    def crash(cfg, run_dir, parallel_jobs=1, started_at=None):
        calls.append(run_dir.name)
        if run_dir.name == "0":
            raise RuntimeError("simulated crash inside the training loop")
        return {"status": "finished"}

    monkeypatch.setattr(marlrun.sweep, "train", crash)  # the runner's train, as the sweep calls it
    state: dict = {}
    for job in ("0", "1"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        run_job(compose_cfg([]), tmp_path / job, hydra_cfg, state)
    assert calls == ["0", "1"]
    summary = json.loads((tmp_path / "0" / "summary.json").read_text())
    assert summary["status"] == "failed: RuntimeError: simulated crash inside the training loop"
    assert "simulated crash" in (tmp_path / "0" / "error.log").read_text() and "Traceback" in (tmp_path / "0" / "error.log").read_text()
    assert [j["status"] for j in job_outcomes(tmp_path)] == ["failed: RuntimeError: simulated crash inside the training loop",
                                                             "no summary: killed, crashed or still running"]


def test_an_interrupted_job_skips_the_rest_of_the_sweep_in_its_process(tmp_path, monkeypatch, compose_cfg):
    import marlrun.sweep
    from marlrun.sweep import run_job

    monkeypatch.setattr(marlrun.sweep, "train", lambda cfg, run_dir, **kw: {"status": "stopped by SIGINT"})
    hydra_cfg = OmegaConf.create({"launcher": {"_target_": "basic"}})
    state: dict = {}
    run_job(compose_cfg([]), tmp_path / "0", hydra_cfg, state)
    run_job(compose_cfg([]), tmp_path / "1", hydra_cfg, state)
    assert json.loads((tmp_path / "1" / "summary.json").read_text())["status"].startswith("skipped:")


def test_joblib_jobs_share_the_cores(compose_cfg, monkeypatch):
    from marlrun.hardware import torch_threads
    from marlrun.sweep import parallel_jobs

    joblib = OmegaConf.create({"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}})
    assert parallel_jobs(joblib) == 2
    assert parallel_jobs(OmegaConf.create({"launcher": {"_target_": "x.BasicLauncher"}})) == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    hardware = OmegaConf.create({"torch_threads": 0, "env_workers": 0})
    assert torch_threads(hardware, 64) == 1 and torch_threads(hardware, 1) >= torch_threads(hardware, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # what Ray sets in its workers (and joblib in loky's)
    assert torch_threads(hardware, 1) == 3
    assert torch_threads(OmegaConf.create({"torch_threads": 2, "env_workers": 0}), 8) == 2  # explicit wins


def test_cfg_with_multirun_is_one_line(tmp_path):
    result = run_cli("train", "-m", "--cfg", "job", "seed=0,1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("marlrun: error: --cfg") and len(result.stderr.strip().splitlines()) == 1


SWEEP_PRESETS = ["super_heuristics", "super_heuristics_small", "mfq_ising_sweep", "super_sweep"]


@pytest.mark.parametrize("experiment", SWEEP_PRESETS)
def test_sweep_presets_compose_at_every_point_of_their_grid(compose_cfg, experiment):
    params = compose_cfg([f"experiment={experiment}"], return_hydra_config=True).hydra.sweeper.params
    assert params, f"{experiment} sweeps nothing"
    grid = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    points = list(itertools.product(*grid))
    assert len(points) >= 6
    for point in points:
        cfg = compose_cfg([f"experiment={experiment}", *point])
        validate(cfg)
        for override in point:
            key, value = override.split("=")
            if not key.startswith("+"):  # (a config group's option, such as +super_pursuit=vdn, sets keys of its own)
                assert str(OmegaConf.select(cfg, key)) == value


def test_search_values_are_rounded_in_tables_and_integers_stay_whole():
    from marlrun.sweep import rounded

    assert rounded("algo.lr=0.00012345678901234567 seed=3 algo.window=12345678 algo.tau=0.001 env.L=8,16 +super_pursuit=vdn") == \
        "algo.lr=0.0001235 seed=3 algo.window=12345678 algo.tau=0.001 env.L=8,16 +super_pursuit=vdn"


def test_the_grid_of_a_sweep_preset_is_its_params_with_the_command_line_on_top(tmp_path):
    from marlrun.sweep import grid, job_outcomes

    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": {"seed": "0,1,2", "+super_pursuit": "none,vdn"}},
        "sweep": {"dir": str(tmp_path), "subdir": "${hydra.job.num}"},
        "overrides": {"task": ["experiment=super_sweep", "seed=0,1"], "hydra": []}}}))
    jobs = grid(tmp_path)
    assert len(jobs) == 4 and {frozenset(j) for j in jobs} == {frozenset({f"seed={s}", f"+super_pursuit={a}", "experiment=super_sweep"})
                                                                for s in (0, 1) for a in ("none", "vdn")}
    assert [j["state"] for j in job_outcomes(tmp_path)] == ["not started"] * 4  # every job of the grid, none run yet
