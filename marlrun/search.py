"""Hyperparameter search: the number a finished run gives a sweeper (its objective), and the best trial of a search.

A run's objective (``objective.metric``, ``objective.aggregate`` in conf/config.yaml) is read back from its folder
alone: a number of ``summary.json`` (by default ``final_eval_return``) or a scalar of ``metrics.jsonl`` aggregated over
the records that hold it. A job of ``marlrun train -m`` returns it to the sweeper (Optuna's, with
``hydra/sweeper=optuna``); a job that failed, or has no finite objective, returns None, which the Optuna sweeper records
as a failed trial (not a score) before it goes on with the next one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from marlrun.config import SUMMARY_METRICS
from marlrun.errors import UserError
from marlrun.metrics import SUMMARY_FILE, read_metrics

RESULTS_FILE = "optimization_results.yaml"  # written by the Optuna sweeper into the sweep folder: best_params, best_value
DEFAULT_OBJECTIVE = {"metric": "final_eval_return", "aggregate": "last"}


def aggregate(values: list[float], how: str) -> float:
    if how == "last":
        return values[-1]
    if how == "mean":
        return sum(values) / len(values)
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    raise ValueError(f"unknown aggregation '{how}'")


def objective(run_dir: Path, metric: str, how: str) -> tuple[float | None, str | None]:
    """``(value, None)`` for a finished run with a finite objective, else ``(None, why)``."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None, "no summary.json: the run did not finish"
    status = summary.get("status", "no status")
    if status != "finished":
        return None, f"the run did not finish ({status})"
    if metric in SUMMARY_METRICS:
        value = summary.get(metric)
        if value is None:
            return None, f"summary.json has no {metric}" + (" (eval_episodes=0: no evaluation)" if "eval" in metric else "")
    else:
        try:
            values = [record[metric] for record in read_metrics(run_dir) if record.get(metric) is not None]
        except UserError as exc:
            return None, str(exc)
        if not values:
            return None, f"objective.metric '{metric}' was never logged in metrics.jsonl"
        value = aggregate([float(v) for v in values], how)
    value = float(value)
    if not math.isfinite(value):
        return None, f"{metric} is {value}"
    return value, None


def run_objective(run_dir: Path) -> tuple[float | None, str | None, dict]:
    """The objective of a run folder as its saved config defines it: ``(value, why not, {"metric", "aggregate"})``."""
    spec = dict(DEFAULT_OBJECTIVE)
    try:
        saved = yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text()) or {}
        spec.update({k: v for k, v in (saved.get("objective") or {}).items() if k in spec})
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    value, why = objective(run_dir, str(spec["metric"]), str(spec["aggregate"]))
    return value, why, spec


def optuna_settings(sweep_dir: Path) -> dict | None:
    """``{"direction", "n_trials", "results"}`` when the Optuna sweeper ran the sweep (from a job's Hydra config, as it
    writes no multirun.yaml, and its optimization_results.yaml), else None."""
    sweeper = None
    for job in sorted(Path(sweep_dir).glob("*/.hydra/hydra.yaml")):
        try:
            sweeper = yaml.safe_load(job.read_text())["hydra"]["sweeper"]
            break
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
    if not isinstance(sweeper, dict):
        return None
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    results = None
    try:
        results = yaml.safe_load((Path(sweep_dir) / RESULTS_FILE).read_text())
    except (OSError, yaml.YAMLError):
        pass
    direction = sweeper.get("direction", "minimize")
    return {"direction": direction if isinstance(direction, str) else None, "n_trials": sweeper.get("n_trials"), "results": results}


def best_job(jobs: list[dict], direction: str | None) -> dict | None:
    """The job with the best objective for ``direction`` (maximize | minimize); the first of equals."""
    scored = [j for j in jobs if j.get("objective") is not None]
    if not scored or direction not in ("maximize", "minimize"):
        return None
    pick = max if direction == "maximize" else min
    return pick(scored, key=lambda j: j["objective"])
