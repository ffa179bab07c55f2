"""Multiruns that survive their failures.

Every job of ``marlrun train -m`` records its outcome in its own folder (``summary.json``: the runner's summary when it
finishes, ``{"status": "failed: <why>"}`` and ``error.log`` when it does not), so one failing job never stops the
others, whichever Hydra launcher runs them (in this process, joblib workers, SLURM nodes, Ray). When the sweep ends,
the command line reads those files back and prints which jobs finished, which failed and where their folders are.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from marlrun.checkpoint import checkpoint_paths
from marlrun.console import console
from marlrun.errors import UserError
from marlrun.hardware import available_cores
from marlrun.metrics import SUMMARY_FILE, write_json
from marlrun.runfolder import hydra_quoted, lock, release
from marlrun.runner import train
from marlrun.search import RESULTS_FILE, best_job, optuna_settings, run_objective

ERROR_LOG = "error.log"
SWEEP_SUMMARY_FILE = "sweep_summary.json"

sweep_dirs: list[Path] = []  # folders of the multiruns started in this process (set by SweepRecorder)


class SweepRecorder(Callback):
    """Remembers where a multirun puts its jobs (configured in conf/config.yaml under hydra.callbacks)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dirs.append(Path(str(config.hydra.sweep.dir)).resolve())
        sweeper = config.hydra.sweeper
        metric = str(config.get("objective", {}).get("metric", ""))
        if "optuna" in str(sweeper.get("_target_", "")).lower() and str(sweeper.get("direction")).endswith("minimize") and "return" in metric:
            console.print(f"[yellow]hydra.sweeper.direction is minimize: Optuna will look for the lowest {metric}; "
                          "hydra.sweeper.direction=maximize looks for the highest")


def parallel_jobs(hydra_cfg) -> int:
    """How many jobs the launcher runs side by side on this machine (joblib's n_jobs; 1 for the others)."""
    launcher = hydra_cfg.launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = int(launcher.get("n_jobs") or -1)
    cores = available_cores()
    return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)


def record_failure(run_dir: Path, message: str, exc: BaseException | None = None, status: str = "failed") -> None:
    """Write a job's failure into its folder; what the run already wrote (logs, checkpoints) stays."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": f"{status}: {message}", "run_dir": str(run_dir.resolve())}
    if exc is not None:
        (run_dir / ERROR_LOG).write_text("".join(traceback.format_exception(exc)))
        record["error_log"] = str((run_dir / ERROR_LOG).resolve())
    write_json(run_dir / SUMMARY_FILE, record)


NEVER_STARTED = "never started: the sweep stopped before it"
NO_SUMMARY = "no summary: killed, crashed or still running"


def grid(sweep_dir: Path) -> list[list[str]] | None:
    """Every job's overrides in job order, as Hydra's basic sweeper expands the sweep's command line (from the
    sweep's multirun.yaml); None for another sweeper, or job folders not named by job number."""
    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        return None
    try:
        cfg = OmegaConf.load(saved)
        if "BasicSweeper" not in str(cfg.hydra.sweeper.get("_target_", "")) or str(cfg.hydra.sweep._get_node("subdir")._value()) != "${hydra.job.num}":
            return None
        overrides = OverridesParser.create().parse_overrides([str(o) for o in cfg.hydra.overrides.task])
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:  # a multirun.yaml of another Hydra version: list the folders there are
        return None


def job_outcomes(sweep_dir: Path) -> list[dict]:
    """Each job's number, overrides, status, final evaluation return and objective (marlrun/search.py), in job order:
    every job of the grid, with the ones that never got a folder (a launcher that stopped before them) as never
    started."""
    jobs = []
    expected = grid(sweep_dir) or []
    for number, overrides in enumerate(expected):
        if not (sweep_dir / str(number) / ".hydra").is_dir():
            jobs.append({"job": str(number), "overrides": overrides, "status": NEVER_STARTED, "final_eval_return": None,
                         "wall_time_s": None, "objective": None, "objective_missing": NEVER_STARTED,
                         "run_dir": str((sweep_dir / str(number)).resolve())})
    for folder in sweep_dir.iterdir():
        if not (folder / ".hydra").is_dir():
            continue
        overrides_file = folder / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        summary_file = folder / SUMMARY_FILE
        try:
            summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        except json.JSONDecodeError:
            summary = {}
        value, missing, spec = run_objective(folder)
        jobs.append({
            "job": folder.name,
            "overrides": list(overrides or []),
            "status": summary.get("status", NO_SUMMARY),
            "final_eval_return": summary.get("final_eval_return"),
            "wall_time_s": summary.get("wall_time_s"),
            "objective": value,
            "objective_missing": missing,
            "objective_metric": spec["metric"],
            "objective_aggregate": spec["aggregate"],
            "run_dir": str(folder.resolve()),
        })
    jobs.sort(key=lambda j: (not j["job"].isdigit(), int(j["job"]) if j["job"].isdigit() else 0, j["job"]))
    shared = set.intersection(*(set(j["overrides"]) for j in jobs)) if len(jobs) > 1 else set()
    for j in jobs:  # what sets this job apart: the overrides not every job has
        j["swept"] = " ".join(o for o in j["overrides"] if o not in shared)
    return jobs


def run_job(cfg, run_dir: Path, hydra_cfg, state: dict) -> float | None:
    """One job of a multirun: train, and record any failure in the job's folder instead of raising, so the launcher
    goes on with the other jobs. ``state`` lives as long as the process (jobs a launcher runs in it one by one).

    Returns the run's objective (marlrun/search.py), the number a hyperparameter sweeper optimises; None when the job
    failed or has no finite objective, which the Optuna sweeper records as a failed trial and goes on."""
    if state.get("interrupted"):  # Ctrl-C or SIGTERM stopped an earlier job of this process: start no more
        record_failure(run_dir, "the sweep was interrupted before this job started", status="skipped")
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    if not lock(run_dir):
        record_failure(run_dir, "another marlrun process is using this job's folder")
        return None
    try:
        summary = train(cfg, run_dir, parallel_jobs=parallel_jobs(hydra_cfg))
        if summary["status"].startswith("stopped"):
            state["interrupted"] = True
            return None
        value, missing, spec = run_objective(run_dir)
        if missing and searching(hydra_cfg):
            console.print(f"[yellow]job {run_dir.name}: no objective ({spec['metric']}, {spec['aggregate']}): {missing}")
        return value
    except UserError as exc:
        record_failure(run_dir, str(exc))
    except Exception as exc:  # a bug or a crash in this job: the traceback goes to its error.log
        record_failure(run_dir, f"{type(exc).__name__}: {exc}", exc)
    finally:  # what this job held goes before the launcher starts the next one in this process
        release(run_dir)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return None


def searching(hydra_cfg) -> bool:
    """Whether the sweeper uses the jobs' objectives (any but Hydra's basic grid sweeper)."""
    target = str(OmegaConf.select(hydra_cfg, "sweeper._target_", default="") or "")
    return bool(target) and "BasicSweeper" not in target


def summarize_sweep(sweep_dir: Path, console: Console) -> int:
    """Print the jobs' outcomes, write them to ``sweep_summary.json``; returns how many did not finish.

    For a search (the Optuna sweeper) the table also shows each trial's objective and marks the best trial, whose
    overrides are printed below it with the sweeper's own optimization_results.yaml; a job without a finite objective
    is a failed trial (the sweeper recorded it as failed, not scored) and counts as not finished."""
    jobs = job_outcomes(sweep_dir)
    search = optuna_settings(sweep_dir)
    if search is None:
        done = [j for j in jobs if j["status"] == "finished"]
        title = f"sweep: {len(done)} of {len(jobs)} jobs finished"
    else:
        done = [j for j in jobs if j["objective"] is not None]
        best = best_job(jobs, search["direction"])
        for j in jobs:
            j["trial"] = "scored" if j["objective"] is not None else "failed"
            j["best"] = j is best
        named = next((j for j in jobs if j.get("objective_metric")), {"objective_metric": "?", "objective_aggregate": "?"})
        what = named["objective_metric"] if "/" not in named["objective_metric"] else f"{named['objective_metric']} ({named['objective_aggregate']})"
        title = f"optuna search: {len(done)} of {len(jobs)} trials scored; objective {what}, {search['direction']}"
    columns = ["job", "overrides", "status", "final eval return", *(["objective"] if search else []), "wall s"]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column in ("final eval return", "objective", "wall s") else "left")
    for j in jobs:
        style = "green" if j in done else "red"
        ret = "-" if j["final_eval_return"] is None else f"{j['final_eval_return']:.3f}"
        wall = "-" if j["wall_time_s"] is None else f"{j['wall_time_s']:.0f}"
        cells = [j["job"], j["swept"], f"[{style}]{j['status']}", ret]
        if search:
            cells.append("failed trial" if j["objective"] is None else f"[bold green]{j['objective']:.4g} best" if j["best"] else f"{j['objective']:.4g}")
        table.add_row(*cells, wall)
    console.print(table)
    write_json(sweep_dir / SWEEP_SUMMARY_FILE, jobs)
    failed = len(jobs) - len(done)
    for j in jobs:
        if j in done:
            continue
        if j["status"] != "finished":
            why = j["status"]
        else:
            why = f"finished, but no objective: {j['objective_missing']}"
        trial = " (a failed trial: not scored)" if search else ""
        console.print(f"[red]job {j['job']}[/] ({j['swept']}): {why}{trial}  [dim]{j['run_dir']}")
    if search:
        if best is None:
            console.print("[red]no trial was scored[/]: the search has no best trial")
        else:
            overrides = best["swept"] or " ".join(best["overrides"])  # what sets it apart from the other trials
            console.print(f"[bold green]best trial[/]: job {best['job']} ({overrides}): objective {best['objective']:.6g}  [dim]{best['run_dir']}")
        results = search["results"]
        if isinstance(results, dict) and "best_params" in results:
            params = " ".join(f"{k}={v}" for k, v in (results.get("best_params") or {}).items())
            console.print(f"Optuna's best: {params}: {results.get('best_value')}  [dim]{sweep_dir / RESULTS_FILE}")
    console.print(f"folders: {sweep_dir}   compare them: marlrun report {sweep_dir}")
    return failed


def rerun_unfinished(sweep_dir: Path, console: Console) -> None:
    """After a launcher stopped (a worker process killed: joblib then ends every job it runs and starts no more), run
    each job that has no outcome once more, as many at a time as the launcher ran, each in its own ``marlrun train`` process:
    resumed from its checkpoint when it has one, else from the start in its folder. Its output goes to the job's
    ``rerun.log``."""
    jobs = grid(sweep_dir)
    parallel = parallel_jobs(OmegaConf.load(sweep_dir / "multirun.yaml").hydra) if jobs is not None else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, available_cores() // parallel))}  # the cores, shared as the launcher did
    if jobs is None:
        console.print(f"[yellow]{sweep_dir}: cannot tell this sweep's jobs apart (not Hydra's basic sweeper); rerun the unfinished ones by hand")
        return
    todo = []
    for number, overrides in enumerate(jobs):
        folder = sweep_dir / str(number)
        if (folder / SUMMARY_FILE).exists():
            continue
        deadline = time.monotonic() + 30
        while folder.is_dir() and not lock(folder) and time.monotonic() < deadline:  # the launcher's workers still ending
            time.sleep(0.5)
        release(folder)
        if checkpoint_paths(folder):
            todo.append((number, overrides, ["train", f"resume={folder}"], "resumed from its checkpoint"))
        else:
            shutil.rmtree(folder, ignore_errors=True)  # what Hydra and the job wrote before it died: no checkpoint to keep
            todo.append((number, overrides, ["train", *overrides, f"hydra.run.dir={hydra_quoted(folder)}"], "from the start"))

    def run(item) -> None:
        number, overrides, args, how = item
        folder = sweep_dir / str(number)
        console.print(f"rerunning job {number} ({' '.join(overrides)}), {how}")
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "rerun.log", "a") as log:
            done = subprocess.run([sys.executable, "-m", "marlrun.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        if not (folder / SUMMARY_FILE).exists():  # killed again, or refused before it could record anything
            record_failure(folder, f"its rerun ended with exit status {done.returncode} (see {folder / 'rerun.log'})")

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(run, todo))
