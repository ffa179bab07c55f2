"""Hyperparameter search with Hydra's Optuna sweeper, and the experiment trackers (TensorBoard, W&B, MLflow).

Optuna, wandb and mlflow come with the test extra; each test that needs one skips when it is not installed. W&B runs
offline (no login in a scratch HOME), MLflow in a local store in the test's folder: nothing leaves the machine.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SMALL_PURSUIT, run_cli
from marlrun.config import validate
from marlrun.errors import UserError

TINY = [*SMALL_PURSUIT, "total_steps=200", "log_interval=100", "eval_episodes=2", "eval_interval=100",
        "algo.buffer_size=500", "algo.learning_starts=100", "hardware.torch_threads=1"]
OPTUNA = ["hydra/sweeper=optuna", "hydra.sweeper.n_jobs=1", "hydra.sweeper.direction=maximize"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No W&B login (a scratch HOME, no key), W&B quiet, MLflow's tracking store the default (outputs/mlruns in cwd)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "NETRC", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def flat(stderr: str) -> str:
    return " ".join(stderr.split())


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


# ---------------------------------------------------------------------------- the objective
def finished_folder(path: Path, summary: dict, lines: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_the_objective_is_a_summary_number_or_an_aggregated_scalar(tmp_path):
    from marlrun.search import objective

    run = finished_folder(tmp_path / "run", {"status": "finished", "final_eval_return": -3.5, "best_eval_return": None},
                          [{"step": 100, "train/loss": 4.0}, {"step": 200, "train/loss": 1.0, "eval/episode_return": -6.0},
                           {"step": 300, "train/loss": 2.5}, {"step": 400, "eval/episode_return": -2.0}])
    assert objective(run, "final_eval_return", "last") == (-3.5, None)
    assert objective(run, "eval/episode_return", "last")[0] == -2.0  # over the records that hold it
    assert objective(run, "eval/episode_return", "mean")[0] == -4.0
    assert objective(run, "train/loss", "mean")[0] == 2.5
    assert objective(run, "train/loss", "max")[0] == 4.0 and objective(run, "train/loss", "min")[0] == 1.0
    value, why = objective(run, "eval/game/xi", "last")
    assert value is None and "never logged" in why
    value, why = objective(run, "best_eval_return", "last")
    assert value is None and "no best_eval_return" in why

    nan = finished_folder(tmp_path / "nan", {"status": "finished", "final_eval_return": float("nan")}, [{"step": 1, "train/loss": float("nan")}])
    assert objective(nan, "final_eval_return", "last")[0] is None and objective(nan, "train/loss", "mean")[0] is None
    failed = finished_folder(tmp_path / "failed", {"status": "failed: algo.lr: must be > 0"}, [])
    value, why = objective(failed, "final_eval_return", "last")
    assert value is None and "did not finish" in why and "algo.lr" in why


@pytest.mark.parametrize("override, key", [("objective.aggregate=median", "objective.aggregate"),
                                           ("objective.metric=final_eval_retrun", "objective.metric"),
                                           ("loggers=[tensorboard,nope]", "loggers"), ("loggers=[wandb,wandb]", "loggers")])
def test_objective_and_logger_keys_are_checked(compose_cfg, override, key):
    with pytest.raises(UserError, match=key) as info:
        validate(compose_cfg([override]))
    assert "\n" not in str(info.value)


def test_the_search_preset_composes_at_the_ends_of_its_search_space(compose_cfg):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_cfg(["experiment=super_search_small"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_ and sweeper.direction == "maximize" and sweeper.n_jobs == 1
    assert dict(sweeper.params) == {"algo.bandwidth": "tag(log, interval(0.02, 0.5))", "algo.window": "tag(log, int(interval(100, 5000)))"}
    for point in (["algo.bandwidth=0.02", "algo.window=100"], ["algo.bandwidth=0.5", "algo.window=5000"]):
        run = validate(compose_cfg(["experiment=super_search_small", *point]))
        assert run.algo.sharing == "quantile" and run.total_steps == 30000 and run.env.n_pursuers == 4
        assert run.objective.metric == "final_eval_return"


# ---------------------------------------------------------------------------- Optuna
def test_an_optuna_search_reports_its_best_trial_and_overrides(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    result = run_cli("train", "-m", *TINY, *OPTUNA, "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0",
                     "algo.bandwidth=interval(0.05, 1.0)", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    text = flat(result.stderr)
    assert "optuna search: 3 of 3 trials scored; objective final_eval_return, maximize" in text

    # each trial returned its final evaluation return to Optuna: Optuna's best is the best of the jobs' summaries
    finals = {job: json.loads((sweep / job / "summary.json").read_text())["final_eval_return"] for job in ("0", "1", "2")}
    best = max(finals, key=finals.get)
    best_overrides = yaml.safe_load((sweep / best / ".hydra" / "overrides.yaml").read_text())
    bandwidth = next(o for o in best_overrides if o.startswith("algo.bandwidth="))
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(finals[best])
    assert f"algo.bandwidth={results['best_params']['algo.bandwidth']}" == bandwidth
    shown = f"algo.bandwidth={float(bandwidth.split('=')[1]):.4g}"  # tables round a searched value to 4 digits; the YAML keeps it whole
    assert f"best trial: job {best} ({shown}): objective" in text
    jobs = json.loads((sweep / "sweep_summary.json").read_text())
    assert [j["best"] for j in jobs] == [j["job"] == best for j in jobs]
    assert all(j["trial"] == "scored" and j["objective"] == finals[j["job"]] for j in jobs)


def test_a_failing_trial_is_failed_in_optuna_not_scored(tmp_path):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep, storage = tmp_path / "sweep", f"sqlite:///{tmp_path / 'study.db'}"
    result = run_cli("train", "-m", *TINY, *OPTUNA, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=3",
                     f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s", "algo.bandwidth=choice(0.1,0.5,5.0)",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 1  # a job did not finish
    assert "Traceback" not in result.stderr
    text = flat(result.stderr)
    assert "optuna search: 2 of 3 trials scored" in text

    trials = {t.params["algo.bandwidth"]: t for t in optuna.load_study(study_name="s", storage=storage).trials}
    assert trials[5.0].state == optuna.trial.TrialState.FAIL and trials[5.0].value is None  # recorded, not scored
    jobs = {j["swept"]: j for j in json.loads((sweep / "sweep_summary.json").read_text())}
    for bandwidth in (0.1, 0.5):
        assert trials[bandwidth].state == optuna.trial.TrialState.COMPLETE
        assert trials[bandwidth].value == jobs[f"algo.bandwidth={bandwidth}"]["final_eval_return"]
    failed = jobs["algo.bandwidth=5.0"]
    assert failed["trial"] == "failed" and failed["objective"] is None and failed["status"].startswith("failed: algo.bandwidth")
    assert f"job {failed['job']} (algo.bandwidth=5.0): failed: algo.bandwidth" in text and "(a failed trial: not scored)" in text
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["algo.bandwidth"] in (0.1, 0.5)


# ---------------------------------------------------------------------------- trackers
def test_a_wandb_run_offline_holds_every_scalar_at_the_same_steps(offline):
    pytest.importorskip("wandb")
    sweep = offline / "sweep_wb"
    result = run_cli("train", "-m", *TINY, "loggers=[tensorboard,wandb]", "algo.lr=0.001", f"hydra.sweep.dir={sweep}", cwd=offline)
    assert result.returncode == 0, result.stderr
    run = sweep / "0"
    assert "no W&B login found, logging offline" in flat(result.stderr)
    saved = json.loads((run / "trackers.json").read_text())["wandb"]
    assert saved["mode"] == "offline"
    [log] = (run / "wandb").glob(f"offline-run-*-{saved['id']}/run-{saved['id']}.wandb")  # inside the run folder

    # read the .wandb transaction log back with wandb's own reader (`wandb leet inspect --json`)
    shown = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    logged = [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]
    header = next(r["run"] for r in logged if r["type"] == "run")
    assert header["run_group"] == "sweep_wb" and header["run_id"] == saved["id"]  # a multirun job's group is its sweep
    config = header["config"]["update"]
    assert config["algo"]["lr"] == 0.001 and "algo.lr=0.001" in config["overrides"] and config["loggers"] == ["tensorboard", "wandb"]
    history = {r["history"]["step"]["num"]: r["history"]["item"] for r in logged if r["type"] == "history"}
    expected = records(run)
    assert sorted(history) == [r["step"] for r in expected] == [0, 100, 200]
    for record in expected:
        item = history[record["step"]]
        assert {k for k in item if not k.startswith("_")} == set(record) - {"step"}
        for key, value in record.items():
            if key != "step":
                assert same(float(item[key]), float(value)), key
    assert any(r["type"] == "exit" and r["exit"].get("exit_code", 0) == 0 for r in logged)
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard too


def test_an_mlflow_run_holds_every_scalar_and_a_resume_continues_it(offline):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = offline / "run_ml"
    first = run_cli("train", *TINY, "loggers=[mlflow]", "algo.lr=0.001", f"hydra.run.dir={run}", cwd=offline)
    assert first.returncode == 0, first.stderr
    assert not list(run.glob("events.out.tfevents.*"))  # TensorBoard only when asked for
    resumed = run_cli("train", f"resume={run}", "total_steps=400", cwd=offline)
    assert resumed.returncode == 0, resumed.stderr

    saved = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert saved["tracking_uri"] == f"sqlite:///{offline / 'outputs' / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert len(client.search_runs([saved["experiment_id"]])) == 1  # the resumed run went on in the same MLflow run
    tracked = client.get_run(saved["run_id"])
    assert tracked.info.status == "FINISHED"
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert tracked.data.params == dict(o.split("=", 1) for o in overrides)
    assert tracked.data.tags["marlrun.run_dir"] == str(run.resolve())
    expected = records(run)
    assert [r["step"] for r in expected] == [0, 100, 200, 300, 400]
    keys = {k for r in expected for k in r} - {"step"}
    assert set(tracked.data.metrics) == keys
    for key in keys:
        history = sorted((m.step, m.value) for m in client.get_metric_history(saved["run_id"], key))
        want = [(r["step"], r[key]) for r in expected if key in r]
        assert len(history) == len(want) and all(h[0] == w[0] and same(float(h[1]), float(w[1])) for h, w in zip(history, want)), key
    assert [a.path for a in client.list_artifacts(saved["run_id"])] == ["config.yaml"]


@pytest.mark.parametrize("loggers, env, needle", [
    ("[nope]", {}, "unknown logger 'nope'"),
    ("[tensorboard,mlflow]", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "mlflow cannot use the tracking store http://127.0.0.1:9"),
    ("[mlflow]", {"MLFLOW_TRACKING_URI": "file:///tmp/mlruns"}, "MLflow's file store"),
])
def test_a_logger_that_cannot_start_is_one_line_before_training(offline, monkeypatch, loggers, env, needle):
    if "mlflow" in loggers:
        pytest.importorskip("mlflow")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = offline / "run"
    result = run_cli("train", *TINY, f"loggers={loggers}", f"hydra.run.dir={run}", cwd=offline, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marlrun: error: loggers") and needle in lines[0], result.stderr
    assert not run.exists()  # refused before anything was built or trained


@pytest.mark.parametrize("library, extra", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_tracker_that_is_not_installed_says_how_to_install_it(compose_cfg, tmp_path, monkeypatch, library, extra):
    from marlrun.loggers import make_loggers

    monkeypatch.setitem(sys.modules, library, None)  # import wandb / import mlflow.tracking now fail
    monkeypatch.setitem(sys.modules, f"{library}.tracking", None)
    cfg = validate(compose_cfg([f"loggers=[tensorboard,{library}]"]))
    with pytest.raises(UserError, match=rf'loggers: {library} is not installed; pip install -e "\.\[{extra}\]"'):
        make_loggers(cfg, tmp_path)


def test_help_lists_the_config_groups_without_schema(tmp_path):
    helped = run_cli("train", "--help", cwd=tmp_path)
    assert helped.returncode == 0
    listed = helped.stdout.split("== Configuration groups ==")[1].split("== Keys ==")[0]
    groups = [line.split(":")[0] for line in listed.splitlines() if line.strip()]
    assert groups == ["algo", "env", "hardware", "experiment"] and "super_search_small" in listed
    assert "schema" not in listed and "hydra/sweeper" not in listed
    assert "schema/" not in helped.stdout
