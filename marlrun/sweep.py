"""Multiruns that survive their failures and their interruptions.

Every job of ``marlrun train -m`` records its outcome in its own folder (``summary.json``: the runner's summary when it
finishes, ``{"status": "failed: <why>"}`` and ``error.log`` when it does not), so one failing job never stops the
others, whichever Hydra launcher runs them (in this process, joblib workers, SLURM nodes, Ray). When the sweep ends,
the command line reads those files back and prints which jobs finished, which failed and where their folders are.

A job whose folder already holds a run (the same sweep run again into its folder, or a cluster job that submitit
requeued after a time-out or a preemption) continues it: a finished job is left as it is, one with a checkpoint resumes
from it, any other starts from the beginning. ``time_limit`` stops a local sweep's jobs (in this process or joblib's
workers) at the same moment, counted from the command's start, and starts no job after it.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from decimal import Decimal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from marlrun.checkpoint import checkpoint_paths, checkpoint_step
from marlrun.config import parse_duration
from marlrun.console import console
from marlrun.errors import UserError
from marlrun.hardware import available_cores
from marlrun.metrics import SUMMARY_FILE, read_metrics, write_json
from marlrun.runfolder import CONTINUABLE, LOCK_FILE, STOP_FILE, hydra_quoted, lock, locked_by_another, override_key, quoted, release
from marlrun.runner import command_started_at, save_resolved_config, train
from marlrun.search import RESULTS_FILE, best_job, optuna_settings, run_objective

ERROR_LOG = "error.log"
SWEEP_SUMMARY_FILE = "sweep_summary.json"
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher")  # every job on this machine, under the command's clock

# a job's state, from its folder
FINISHED, PART_WAY, RUNNING, FAILED, NOT_STARTED = "finished", "part-way", "running", "failed", "not started"

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
    """Every job's overrides in job order, as Hydra's basic sweeper expands the sweep's preset (hydra.sweeper.params)
    and command line (from the sweep's multirun.yaml); None for another sweeper, or job folders not named by job
    number."""
    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        return None
    try:
        cfg = OmegaConf.load(saved)
        if "BasicSweeper" not in str(cfg.hydra.sweeper.get("_target_", "")) or str(cfg.hydra.sweep._get_node("subdir")._value()) != "${hydra.job.num}":
            return None
        preset = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.get("params") or {}).items()]  # a sweep preset's grid
        overrides = OverridesParser.create().parse_overrides([*preset, *(str(o) for o in cfg.hydra.overrides.task)])
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:  # a multirun.yaml of another Hydra version: list the folders there are
        return None


def job_outcomes(sweep_dir: Path) -> list[dict]:
    """Each job's number, overrides, state (``job_state``), status, env steps, final evaluation return and objective
    (marlrun/search.py), in job order: every job of the grid, with the ones that never got a folder (a launcher that
    stopped before them) as not started."""
    jobs = []
    expected = grid(sweep_dir) or []
    for number, overrides in enumerate(expected):
        if not (sweep_dir / str(number) / ".hydra").is_dir():
            jobs.append({"job": str(number), "overrides": overrides, "state": NOT_STARTED, "status": NEVER_STARTED, "env_steps": None,
                         "total_steps": None, "final_eval_return": None, "wall_time_s": None, "steps_per_sec": None,
                         "objective": None, "objective_missing": NEVER_STARTED, "run_dir": str((sweep_dir / str(number)).resolve())})
    for folder in sweep_dir.iterdir():
        if not (folder / ".hydra").is_dir():
            continue
        overrides_file = folder / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        summary = read_summary(folder)
        state, steps, status = job_state(folder)
        value, missing, spec = run_objective(folder)
        jobs.append({
            "job": folder.name,
            "overrides": list(overrides or []),
            "state": state,
            "status": status,
            "env_steps": steps,
            "total_steps": total_steps(folder),
            "final_eval_return": summary.get("final_eval_return"),
            "wall_time_s": summary.get("wall_time_s"),
            "steps_per_sec": summary.get("steps_per_sec") or measured_speed(folder),
            "objective": value,
            "objective_missing": missing,
            "objective_metric": spec["metric"],
            "objective_aggregate": spec["aggregate"],
            "run_dir": str(folder.resolve()),
        })
    jobs.sort(key=lambda j: (not j["job"].isdigit(), int(j["job"]) if j["job"].isdigit() else 0, j["job"]))
    shared = set.intersection(*(set(j["overrides"]) for j in jobs)) if len(jobs) > 1 else set()
    for j in jobs:  # what sets this job apart: the overrides not every job has (a continued sweep's own keys aside)
        j["swept"] = " ".join(o for o in j["overrides"] if o not in shared and override_key(o) not in CONTINUABLE)
    return jobs


def total_steps(folder: Path) -> int | None:
    try:
        return int(OmegaConf.load(folder / ".hydra" / "config.yaml").total_steps)
    except Exception:  # no config yet, or one without a plain total_steps
        return None


def measured_speed(folder: Path) -> float | None:
    """Env steps per second over the run's last logs (a run going on, or killed: no summary says it)."""
    speeds = [r["perf/steps_per_sec"] for r in read_metrics(folder)[-5:] if "perf/steps_per_sec" in r] if (folder / "metrics.jsonl").exists() else []
    return sum(speeds) / len(speeds) if speeds else None


def state_text(job: dict, short: bool = False) -> str:
    """``part-way at step 1,200 (stopped by time_limit)``, ``finished``, ``failed: ...``: a job's state in words
    (``short``: without the steps, and why a job did not start)."""
    if short and job["state"] in (PART_WAY, NOT_STARTED, RUNNING):
        return job["state"] + (f" ({job['status']})" if job["state"] == PART_WAY and job["status"].startswith("stopped") else "")
    if job["state"] == PART_WAY:
        return f"part-way at step {job['env_steps']:,} ({job['status']})"
    if job["state"] == RUNNING:
        return f"running, at step {job['env_steps']:,}" if job["env_steps"] is not None else "running"
    if job["state"] == NOT_STARTED and job["status"] not in (NEVER_STARTED, NO_SUMMARY):
        return f"not started ({job['status']})"
    return NOT_STARTED if job["state"] == NOT_STARTED else job["status"]


def read_summary(folder: Path) -> dict:
    try:
        return json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def rounded(overrides: str) -> str:
    """Overrides as a table shows them: a number with more than 4 significant digits (a searched learning rate such as
    0.00012345678901234567) rounded to 4; the full values stay in the jobs' .hydra/overrides.yaml."""
    def short(match):
        text = match.group(0)
        digits = len(Decimal(text).normalize().as_tuple().digits)
        return f"{float(text):.4g}" if digits > 4 and any(c in text for c in ".eE") else text  # (integers stay whole)

    def one(override: str) -> str:
        key, eq, value = override.partition("=")
        return key + eq + NUMBER.sub(short, value) if eq else override

    return " ".join(one(o) for o in overrides.split())


NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def job_state(folder: Path) -> tuple[str, int | None, str]:
    """A job's state from its folder, its env steps so far and why (the summary's status): finished (or diverged:
    an outcome too), part-way (a checkpoint, not finished: stopped, killed or requeued), running (another process
    holds its lock), failed (no checkpoint to continue from), or not started (no run in it yet)."""
    if not (folder / ".hydra").is_dir():
        return NOT_STARTED, None, NEVER_STARTED
    summary = read_summary(folder)
    status = summary.get("status", NO_SUMMARY)
    if locked_by_another(folder):
        steps = [r["step"] for r in read_metrics(folder)] if (folder / "metrics.jsonl").exists() else []
        return RUNNING, steps[-1] if steps else None, "running"
    if status == "finished":
        return FINISHED, summary.get("env_steps"), status
    if status.startswith("diverged"):
        return FAILED, summary.get("env_steps"), status
    if paths := checkpoint_paths(folder):  # what a resume continues from
        return PART_WAY, checkpoint_step(paths[-1]), status
    if status.startswith("failed"):
        return FAILED, None, status
    return NOT_STARTED, None, status


def left_as_is(state: str, steps: int | None) -> bool:
    """A job whose folder holds an outcome a continued sweep keeps: finished, or diverged (failed with its steps)."""
    return state == FINISHED or (state == FAILED and steps is not None)


def local_launcher(hydra_cfg) -> bool:
    return any(name in str(OmegaConf.select(hydra_cfg, "launcher._target_", default="")) for name in LOCAL_LAUNCHERS)


def past_time_limit(cfg, hydra_cfg) -> bool:
    """A local sweep's time_limit has passed (it counts from the command's start; a cluster job's from its own)."""
    limit = parse_duration(cfg.get("time_limit")) if cfg.get("time_limit") else None
    return limit is not None and local_launcher(hydra_cfg) and time.time() >= command_started_at() + limit


def start_afresh(run_dir: Path, hydra_cfg) -> None:
    """Clear what an earlier attempt left in a job's folder without a checkpoint (a failure, a skip, a run killed
    before its first checkpoint) and write the job's .hydra/ files where Hydra did not (a continued sweep)."""
    for path in run_dir.iterdir():
        if path.name in (".hydra", LOCK_FILE):
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    saved = run_dir / ".hydra"
    if not saved.is_dir():
        saved.mkdir()
        OmegaConf.save(OmegaConf.create(list(OmegaConf.select(hydra_cfg, "overrides.task", default=[]))), saved / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), saved / "hydra.yaml")


def run_job(cfg, run_dir: Path, hydra_cfg, state: dict) -> float | None:
    """One job of a multirun: train, and record any failure in the job's folder instead of raising, so the launcher
    goes on with the other jobs. ``state`` lives as long as the process (jobs a launcher runs in it one by one).

    A folder that already holds this job's run continues it (see the module's docstring). A job stopped by SIGUSR2 (a
    cluster's time-out or preemption) passes the signal on, once its checkpoint is written, to the handler it
    replaced: submitit's, which requeues the job.

    Returns the run's objective (marlrun/search.py), the number a hyperparameter sweeper optimises; None when the job
    failed or has no finite objective, which the Optuna sweeper records as a failed trial and goes on."""
    run_dir.mkdir(parents=True, exist_ok=True)
    before, steps, _ = job_state(run_dir)
    if left_as_is(before, steps):
        console.print(f"job {run_dir.name}: {read_summary(run_dir).get('status')} before; left as it is", soft_wrap=True)
        return run_objective(run_dir)[0]
    if before == RUNNING:  # another process trains in this folder: its files are its own
        console.print(f"[red]job {run_dir.name}[/]: another marlrun process is running it; left to that process", soft_wrap=True)
        return None
    sweep_stopping = (run_dir.parent / STOP_FILE).exists()  # the sweep's folder (job folders are its sub-folders)
    why_not = ("the sweep was interrupted before this job started" if state.get("interrupted") or sweep_stopping else
               f"time_limit={cfg.time_limit} had passed before this job started" if past_time_limit(cfg, hydra_cfg) else None)
    if why_not:
        if before != PART_WAY:  # a part-way job keeps its summary and checkpoint
            record_failure(run_dir, why_not, status="skipped")
        return None
    if not lock(run_dir):
        record_failure(run_dir, "another marlrun process is using this job's folder")
        return None
    started_at = None if local_launcher(hydra_cfg) else time.time()  # a cluster job's time_limit counts from its start
    try:
        if before == PART_WAY:
            save_resolved_config(cfg, run_dir)  # Hydra wrote the job's config again, unresolved, for a requeued job
            with open_dict(cfg):
                cfg.resume = str(run_dir)
            console.print(f"job {run_dir.name}: resuming from its checkpoint at env step {steps:,}", soft_wrap=True)
        else:
            start_afresh(run_dir, hydra_cfg)
        summary = train(cfg, run_dir, parallel_jobs=parallel_jobs(hydra_cfg), started_at=started_at)
        if summary["status"] == "stopped by SIGUSR2" and callable(signal.getsignal(signal.SIGUSR2)):
            release(run_dir)  # submitit pickles this call (``state`` too) and runs it again: it resumes from the checkpoint
            signal.raise_signal(signal.SIGUSR2)  # submitit's handler: requeue this job (it exits here)
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
        cells = [j["job"], rounded(j["swept"]), f"[{style}]{state_text(j)}", ret]
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
            why = state_text(j)
        else:
            why = f"finished, but no objective: {j['objective_missing']}"
        trial = " (a failed trial: not scored)" if search else ""
        console.print(f"[red]job {j['job']}[/] ({j['swept']}): {why}{trial}  [dim]{j['run_dir']}")
    if search:
        if best is None:
            console.print("[red]no trial was scored[/]: the search has no best trial")
        else:
            overrides = rounded(best["swept"] or " ".join(best["overrides"]))  # what sets it apart from the other trials
            console.print(f"[bold green]best trial[/]: job {best['job']} ({overrides}): objective {best['objective']:.6g}  [dim]{best['run_dir']}")
        results = search["results"]
        if isinstance(results, dict) and "best_params" in results:
            params = rounded(" ".join(f"{k}={v}" for k, v in (results.get("best_params") or {}).items()))
            console.print(f"Optuna's best: {params}: {results.get('best_value')}  [dim]{sweep_dir / RESULTS_FILE}")
    if search is None and any(j["state"] != RUNNING and not left_as_is(j["state"], j["env_steps"]) for j in jobs):
        console.print(f"continue the sweep (finished jobs are left as they are): marlrun train -m resume={quoted(sweep_dir)}", soft_wrap=True)
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


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def time_left(jobs: list[dict]) -> list[float | None]:
    """Each job's seconds left from its measured speed: its own, else (a job not started) the median speed and length
    of the jobs that have one; None where nothing is measured yet."""
    def median(values):
        values = sorted(v for v in values if v)
        return values[len(values) // 2] if values else None

    speed, length = median(j["steps_per_sec"] for j in jobs), median(j["total_steps"] for j in jobs)
    left = []
    for j in jobs:
        if left_as_is(j["state"], j["env_steps"]):
            left.append(0.0)
            continue
        total, rate = j["total_steps"] or length, j["steps_per_sec"] or speed
        left.append(None if total is None or not rate else (total - (j["env_steps"] or 0)) / rate)
    return left


def status_main(args: list[str]) -> int:
    """`marlrun sweep status DIR`: every job of a sweep, its state, steps, run time and the time left; reads only."""
    if not args or args[0] in ("-h", "--help") or args[0] != "status":
        print("usage: marlrun sweep status SWEEP_DIR [--json]\n  every job of the sweep (its grid, from multirun.yaml): state "
              "(finished, part-way at step N, running, not started, failed with its error), steps done, run time, speed, and "
              "the time left from the measured speed; continue the sweep with marlrun train -m resume=SWEEP_DIR")
        return 0 if args and args[0] in ("-h", "--help") else 2
    rest = [a for a in args[1:] if a != "--json"]
    if len(rest) != 1:
        raise UserError("marlrun sweep status takes one sweep folder: marlrun sweep status SWEEP_DIR [--json]")
    sweep_dir = Path(rest[0]).expanduser().resolve()
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} does not exist; pass the folder a sweep printed at its end")
    jobs = job_outcomes(sweep_dir)
    if not jobs:
        raise UserError(f"{sweep_dir} holds no sweep (no multirun.yaml and no job folders)")
    left = time_left(jobs)
    saved = sweep_dir / "multirun.yaml"
    parallel = parallel_jobs(OmegaConf.load(saved).hydra) if saved.is_file() else 1
    if "--json" in args[1:]:
        print(json.dumps([{**j, "time_left_s": t} for j, t in zip(jobs, left)], indent=2))
        return 0
    out = Console()  # the table is the command's output: stdout
    counts = {state: sum(j["state"] == state for j in jobs) for state in (FINISHED, PART_WAY, RUNNING, NOT_STARTED, FAILED)}
    table = Table(title=f"{sweep_dir}: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    for column in ("job", "overrides", "state", "steps", "run time", "steps/s", "time left"):
        table.add_column(column, overflow="fold", justify="left" if column in ("job", "overrides", "state") else "right")
    style = {FINISHED: "green", PART_WAY: "yellow", RUNNING: "cyan", NOT_STARTED: "dim", FAILED: "red"}
    for j, t in zip(jobs, left):
        steps = "-" if j["env_steps"] is None else f"{j['env_steps']:,}" + (f" / {j['total_steps']:,}" if j["total_steps"] else "")
        table.add_row(j["job"], rounded(j["swept"]), f"[{style[j['state']]}]{state_text(j, short=True)}", steps, duration(j["wall_time_s"]),
                      "-" if not j["steps_per_sec"] else f"{j['steps_per_sec']:,.0f}", "-" if t is None else duration(t) if t else "")
    out.print(table)
    known = [t for t in left if t is not None]
    if known and sum(known) > 0:
        unknown = len(left) - len(known)
        out.print(f"time left: about {duration(sum(known) / parallel)} at {parallel} job{'s' * (parallel > 1)} at a time "
                      f"(the launcher's), from each job's measured speed" + (f"; {unknown} job(s) not measured yet" if unknown else ""))
    if counts[PART_WAY] or counts[NOT_STARTED] or counts[FAILED]:
        out.print(f"continue it: marlrun train -m resume={quoted(sweep_dir)}", soft_wrap=True)
    return 0
