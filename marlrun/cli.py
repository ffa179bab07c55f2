"""`marlrun` command line: `marlrun train [hydra overrides]`.

``train`` is a Hydra application (overrides, ``--cfg job``, ``--help``, ``-m``,
``hydra.run.dir=...`` all work). Mistakes are printed as one line on stderr
with a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from marlrun import bench, evaluation, report
from marlrun.checkpoint import checkpoint_paths
from marlrun.config import GROUPS, did_you_mean, known_keys, load_run_config, register_configs
from marlrun.console import console
from marlrun.errors import UserError, warn
from marlrun.metrics import cut_short_last_line, read_metrics
from marlrun.runfolder import (CONTINUABLE, LOCK_FILE, STOP_FILE, check_sweep_folder, hydra_quoted, in_use, lock, override_key, refusal,
                               release, sweep_overrides, unquoted)
from marlrun.runner import SAME_SIGNAL_WITHIN_S, STARTED_AT, train
from marlrun.sweep import PART_WAY, job_outcomes, rerun_unfinished, run_job, status_main, summarize_sweep, sweep_dirs

USAGE = """usage: marlrun <command> [options]

commands:
  train    train an algorithm on an environment (Hydra overrides, e.g. `marlrun train algo.sharing=none seed=1`)
           `marlrun train --help` lists the config groups; `marlrun train --cfg job` prints the composed config;
           `marlrun train resume=RUN_DIR [total_steps=N]` continues a run from its last checkpoint;
           `marlrun train -m resume=SWEEP_DIR [time_limit=...]` continues a sweep in its folder
  report   compare runs: `marlrun report DIR [DIR ...]` groups runs by the config keys that differ, aggregates seeds
           (mean and 95% bootstrap interval of final return, area under the curve, steps to a threshold), writes CSV
           and learning-curve plots (`marlrun report --help`)
  eval     play a run's greedy policy from its checkpoint: `marlrun eval RUN_DIR [episodes=N] [seed=N] [render=true]`
           prints the training-time evaluation metrics; render=true writes a GIF/MP4 and adds it to TensorBoard
  sweep    `marlrun sweep status SWEEP_DIR`: every job of a sweep, its state (finished, part-way at step N, not started,
           failed), steps, run time and the time left from the measured speed
  bench    raw environment, acting and training throughput and peak memory per algorithm and environment case,
           side by side; a table and JSON (`marlrun bench --help`; `marlrun bench --case mfq-ising-256`)
"""

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str) -> int:
    message = " ".join(message.split())
    print(f"marlrun: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _hydra_message(exc: BaseException, args: list[str] = ()) -> str:
    """One line from a Hydra/OmegaConf composition error and its cause (``args``: the command line's overrides, to
    tell a key the user gave from one a preset's sweep gave)."""
    def first(e: BaseException) -> str:
        text = str(e).strip()
        if isinstance(e, OmegaConfBaseException):
            text = text.split("\n    full_key:")[0]
        return " ".join(line.strip() for line in text.splitlines() if line.strip())

    cause = exc.__cause__
    preset = re.match(r"In '(experiment/[^']+)': ConfigKeyError raised while composing config:.*?full_key: (\S+) object_type=(\w+)", " ".join(str(exc).split()))
    if preset:  # a preset that sets keys of another algorithm or environment than the one chosen
        where, key, schema = preset.groups()
        group = key.split('.')[0]
        return (f"{where.replace('/', '=')} sets {key}, which {schema} (the {group} in use) does not have: the preset is made for "
                f"another {group}; drop the {group}= override (or the other preset: two presets for different {group}s do not "
                "combine), or give the keys yourself instead of the preset")
    unknown = re.match(r"Could not override '([^']+)'", str(exc))
    if unknown and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        key = unknown.group(1)
        given = {a.partition("=")[0].lstrip("+~") for a in args}
        if key not in given and any(a.startswith("experiment=") for a in args):  # a value the preset's sweep (hydra.sweeper.params) sets
            return (f"the sweep preset's hydra.sweeper.params sweeps {key}, which the config in use does not have{did_you_mean(key)}; "
                    "drop the override that changed the algo or env, or replace the preset's sweep: hydra.sweeper.params=null and your own "
                    "comma-separated values")
        return f"unknown config key '{key}'{did_you_mean(key)} ({first(cause)}); `marlrun train --cfg job` lists every key"
    text = first(exc)
    if isinstance(exc, OverrideParseException) and "=" not in exc.override:
        return (f"'{exc.override}' is not an override: write key=value (algo.lr=1e-3) or group=option (algo=qmix); "
                "`marlrun train --help` lists the groups and keys")
    if isinstance(exc, OverrideParseException) and "=" in exc.override:
        key, value = exc.override.split("=", 1)
        if re.search(r"[\s'\"\\]|[^\x00-\x7f]", value) and not (value[:1] in "'\"" and value[-1:] == value[:1]):
            return (f"{exc.override}: Hydra cannot read this value unquoted (spaces, quotes or non-ASCII characters); "
                    f"quote it for Hydra inside the shell's quotes: \"{key}={hydra_quoted(value)}\"")
        return f"{exc.override}: Hydra cannot parse this override ({text.split(' See https')[0]}); see `marlrun train --help`"
    if "Could not find" in text:  # unknown group option: keep the options, drop Hydra's search path
        text = text.split(" Config search path:")[0].replace(" Available options in", "; available options in")
    elif cause is not None and str(cause).strip() and first(cause) not in text:
        text = f"{text}: {first(cause)}"
    return text


def _resume_args(args: list[str]) -> list[str] | str:
    """Turn `resume=RUN_DIR` into Hydra arguments that compose the run's saved config in its own folder, and lock it."""
    resume = [a for a in args if a.startswith("resume=")]
    if not resume:
        return args
    value = unquoted(resume[-1].split("=", 1)[1])
    if "-m" in args or "--multirun" in args:
        return _sweep_resume_args(args, value)
    if not value:
        return "resume= needs a run folder: marlrun train resume=RUN_DIR"
    if (Path(value).expanduser() / "multirun.yaml").is_file():
        return f"resume: {value} is a sweep's folder; continue the sweep with marlrun train -m resume={value}"
    run_dir = Path(value).expanduser().resolve()
    saved = run_dir / ".hydra" / "config.yaml"
    if not run_dir.exists():
        return f"resume: {run_dir} does not exist; pass the run folder a run printed at its end (marlrun train resume=RUN_DIR)"
    if not saved.is_file():
        return f"resume: {run_dir} is not a marlrun run folder (no .hydra/config.yaml); pass the folder a run printed at its end"
    if not checkpoint_paths(run_dir):
        return f"resume: {run_dir} has no checkpoint in {run_dir / 'checkpoints'}; start a new run instead"
    try:
        load_run_config(run_dir)  # a saved config that is not a marlrun config never reaches Hydra
        read_metrics(run_dir)
        if cut_short_last_line(run_dir):
            warn(f"{run_dir / 'metrics.jsonl'} ends with a record cut short (the run was killed while writing it); "
                 "it is left out, and the resume writes that step's record again")
    except UserError as exc:
        return f"resume: {exc}"
    rest = [a for a in args if not a.startswith("resume=")]
    for arg in rest:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in GROUPS:
            return (f"resume: {arg} would change the run's {key}; a resumed run keeps its algo, env and hardware "
                    f"(start a new run with {arg} instead)")
        if key.startswith("hydra.run.dir") or key in ("hydra.output_subdir", "resume"):
            return f"resume: {arg} cannot be changed; a resumed run stays in its folder {run_dir}"
    try:
        if not lock(run_dir):
            return str(in_use(run_dir))
    except OSError as exc:
        return f"resume: cannot write {run_dir} ({exc.strerror}); a resumed run writes into its folder"
    return [
        "--config-path", str(saved.parent), "--config-name", "config",
        f"hydra.run.dir={hydra_quoted(run_dir)}", "hydra.output_subdir=null",  # keep the original .hydra/ untouched
        "hydra/job_logging=none",  # as conf/config.yaml: no cli.log (the saved config's defaults do not say so)
        f"resume={hydra_quoted(run_dir)}", *rest,
    ]


def _sweep_resume_args(args: list[str], value: str) -> list[str] | str:
    """`-m resume=SWEEP_DIR`: the sweep's own command line again (its multirun.yaml's overrides), into its folder,
    with what may change (CONTINUABLE keys, the launcher's settings) replaced by what this command gives."""
    if not value:
        return "resume= needs a sweep folder: marlrun train -m resume=SWEEP_DIR"
    folder = Path(value).expanduser().resolve()
    saved = folder / "multirun.yaml"
    if not folder.is_dir():
        return f"resume: {folder} does not exist; pass the folder a sweep printed at its end (marlrun train -m resume=SWEEP_DIR)"
    if not saved.is_file():
        run = " (a run's folder: continue it without -m)" if (folder / ".hydra" / "config.yaml").is_file() else ""
        return f"resume: {folder} is not a sweep folder (no multirun.yaml){run}; pass the folder a sweep printed at its end"
    try:
        recorded = OmegaConf.load(saved).hydra.overrides
        task, hydra_part = [str(o) for o in recorded.task], [str(o) for o in recorded.hydra]
    except Exception as exc:
        return f"resume: {saved} cannot be read ({type(exc).__name__}); it is not a Hydra sweep's multirun.yaml"
    rest = [a for a in args if not a.startswith("resume=") and a not in ("-m", "--multirun")]
    flags = [a for a in rest if a.startswith("-")]
    new_task, new_hydra = sweep_overrides(rest)
    for arg in new_task:
        if override_key(arg) not in CONTINUABLE:
            return (f"resume: {arg} would change the sweep; a continued sweep may change only {', '.join(CONTINUABLE)} and the "
                    "launcher (hydra/launcher=..., hydra.launcher.*); start a new sweep to change it")
    for arg in new_hydra:
        if override_key(arg).startswith(("hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.mode", "hydra.output_subdir")):
            return f"resume: {arg} cannot be changed; a continued sweep keeps its folder {folder} and its sweeper"

    def merged(before: list[str], after: list[str]) -> list[str]:  # an override given now replaces the recorded one
        keys = {override_key(a) for a in after}
        return [o for o in before if override_key(o) not in keys] + after

    kept_hydra = [o for o in hydra_part if not override_key(o).startswith(("hydra.mode", "hydra.sweep.dir", "hydra.output_subdir"))]
    return ["-m", *flags, *merged(task, new_task), *merged(kept_hydra, new_hydra), f"hydra.sweep.dir={hydra_quoted(folder)}"]


def _remove_if_never_started(run_dir: Path, resume) -> None:
    """A new run folder that holds only what Hydra wrote before the run was refused is removed."""
    if resume or not run_dir.is_dir():
        return
    release(run_dir)
    if all(p.name in (".hydra", LOCK_FILE) or (p.suffix == ".log" and p.stat().st_size == 0) for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


def train_main(args: list[str]) -> int:
    try:
        return _train(args)
    finally:
        release()  # the run folders this process locked


def _name_override(args: list[str]) -> str | None:
    """``algo.name`` and ``env.name`` say what is built; they come with the group option (algo=qmix), never alone."""
    for arg in args:
        key = arg.partition("=")[0].lstrip("+~")
        if key in ("algo.name", "env.name"):
            group = key.split(".")[0]
            return f"{arg}: {key} names what is built and comes with {group}=NAME; choose the {group} with {group}={arg.partition('=')[2] or 'NAME'}"
    return None


def _not_a_boolean(args: list[str]) -> str | None:
    """A yes/no key given anything but true or false (OmegaConf would take 2 or "yes" as true)."""
    flags = set(known_keys("bool"))
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") in flags and value.strip().lower() not in ("true", "false") and "," not in value and "${" not in value:
            return f"{arg}: {key.lstrip('+~')} is true or false"
    return None


def _train(args: list[str]) -> int:
    args = _resume_args(args)
    if isinstance(args, str):
        return fail(args)

    register_configs()
    outcome: dict = {}
    if renamed := _name_override(args):
        return fail(renamed)
    if not_bool := _not_a_boolean(args):
        return fail(not_bool)
    if bad_sweeper := _sweeper_settings(args):
        return fail(bad_sweeper)

    multirun = "-m" in args or "--multirun" in args
    if multirun and any(a in ("--cfg", "-c", "--info", "-i") or a.startswith("--cfg=") for a in args):
        return fail("--cfg and --info show one job's config; drop -m/--multirun to see it (the sweep's values are overrides)")
    if multirun and not any(a in ("--help", "-h", "--hydra-help") for a in args):
        try:
            continuing = check_sweep_folder(args)
        except UserError as exc:
            return fail(str(exc))
        except OSError as exc:
            return fail(f"cannot write {exc.filename}: {exc.strerror}; choose another sweep folder with hydra.sweep.dir=PATH")
        if continuing:  # the jobs' folders keep their .hydra/ files (a job new to the folder writes its own)
            args = [*args, "hydra.output_subdir=null"]
            console.print("continuing the sweep in its folder: finished jobs are left as they are, stopped ones resume "
                          "from their checkpoints, the others start", soft_wrap=True)
    os.environ.setdefault(STARTED_AT, str(time.time()))  # time_limit counts from here (a sweep's workers inherit it)
    job_state: dict = {}  # outlives the jobs a launcher runs in this process

    @hydra.main(config_path="pkg://marlrun.conf", config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> float | None:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        if refused := refusal():  # the folder belongs to another run or process; Hydra wrote into a scratch one
            shutil.rmtree(run_dir, ignore_errors=True)
            outcome["error"] = str(refused)
            return
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return run_job(cfg, run_dir, hydra_cfg, job_state)  # the objective, for a sweeper that searches (Optuna)
        if sweep := hydra_cfg.sweeper.get("params"):  # a sweep preset given without -m: one job of it runs
            warn(f"the config names a sweep ({', '.join(f'{k}={v}' for k, v in sweep.items())}) but runs one job without -m; "
                 "add -m to run the sweep")
        try:
            summary = train(cfg, run_dir)
        except UserError as exc:  # reported after Hydra returns, as one line
            outcome["error"] = str(exc)
            _remove_if_never_started(run_dir, cfg.resume)
            return
        outcome["stopped"] = summary["status"].startswith("stopped")

    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us so we can print them on one line
    sys.argv = ["marlrun train", *args]
    if multirun:
        _stop_sweep_on_signals()
    try:
        app()
        if multirun:
            _stop_workers()
            return _sweep_exit()
    except UserError as exc:
        return fail(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        if multirun:
            _remove_sweeps_that_ran_nothing()
        return fail(_hydra_message(exc, args))
    except PermissionError as exc:
        return fail(f"cannot write {exc.filename}: permission denied; choose another output folder with hydra.run.dir=PATH")
    except OSError as exc:
        if exc.filename:
            return fail(f"cannot write {exc.filename}: {exc.strerror}; choose another output folder with hydra.run.dir=PATH")
        if exc.errno == errno.ENOSPC:
            return fail("no space left on device; free some, then continue with marlrun train resume=RUN_DIR")
        raise
    except KeyboardInterrupt:
        print("marlrun: interrupted", file=sys.stderr)
        if multirun:
            _stop_workers()
            _sweep_exit()
        return EXIT_INTERRUPTED
    except Exception as exc:  # a launcher that lost a worker process (killed, out of memory): rerun the unfinished jobs
        if not multirun:
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "No trials are completed yet" in reason:  # Optuna's best_trial after a search whose every trial failed
            return _sweep_exit()
        console.print(f"[red]the sweep's launcher stopped[/] ({type(exc).__name__}: {reason}); rerunning the jobs it did not finish")
        for sweep_dir in sweep_dirs:
            rerun_unfinished(sweep_dir, console)
        return _sweep_exit()
    if "error" in outcome:
        return fail(outcome["error"])
    return EXIT_INTERRUPTED if outcome.get("stopped") else 0


def _worker_pids() -> list[int]:
    """The joblib launcher's worker processes (loky's), if it started any in this process."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    return list(getattr(executor, "_processes", None) or {}) if executor is not None else []


def _stop_workers() -> None:
    """End the joblib launcher's idle workers now (loky keeps them for the next sweep): a sweep leaves no process."""
    if "joblib" not in sys.modules:
        return
    from joblib.externals.loky import reusable_executor

    if reusable_executor._executor is not None:
        reusable_executor._executor.shutdown(wait=True, kill_workers=True)


def _stop_sweep_on_signals() -> None:
    """SIGTERM or SIGINT to a sweep's process: every running job stops after its step with a checkpoint, and no job
    starts after it (the sweep's folders get a stop file the jobs look for); the signal is passed on to the joblib
    launcher's workers, which a `kill PID` or a scheduler's signal does not reach (a Ctrl-C that reaches them too counts
    once). A second signal stops the sweep at once."""
    received: list[float] = []

    def handle(signum, frame):
        def forward():
            for pid in _worker_pids() if "joblib" in sys.modules else []:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

        now = time.monotonic()
        if received:
            if now - received[0] < SAME_SIGNAL_WITHIN_S:
                return
            forward()
            raise KeyboardInterrupt
        received.append(now)
        print(f"marlrun: {signal.Signals(signum).name}: stopping the sweep: running jobs stop after their step with a "
              "checkpoint, no job starts; send it again to stop at once", file=sys.stderr)
        for sweep_dir in sweep_dirs:
            if sweep_dir.is_dir():
                (sweep_dir / STOP_FILE).touch()
        forward()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)


def _remove_sweeps_that_ran_nothing() -> None:
    """A multirun refused before any job leaves nothing behind: its folder (the sweep's multirun.yaml and lock only),
    and the folders above it, inside the working directory, that are then empty (outputs/multirun/<date>)."""
    here = Path.cwd().resolve()
    for sweep_dir in sweep_dirs:
        if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml", ".marlrun.lock"}:
            shutil.rmtree(sweep_dir, ignore_errors=True)
            parent = sweep_dir.parent
            while parent != here and here in parent.parents:
                try:
                    parent.rmdir()  # only if empty
                except OSError:
                    break
                parent = parent.parent


def _sweep_exit() -> int:
    """Print the outcome of every job of the multirun(s) this process ran; 1 when any did not finish, or none ran."""
    for d in sweep_dirs:
        (d / STOP_FILE).unlink(missing_ok=True)
    failed = sum(summarize_sweep(d, console) for d in sweep_dirs if d.is_dir())
    jobs = [j for d in sweep_dirs if d.is_dir() for j in job_outcomes(d)]
    if not jobs:
        fail("the sweep ran no job; check its sweeper settings (hydra.sweeper.*) and the values it sweeps")
        return 1
    unfinished = [j for j in jobs if j["status"] != "finished"]
    stopped = [j for j in unfinished if j["state"] == PART_WAY or j["status"].startswith("skipped")]
    if failed and stopped and len(stopped) == len(unfinished) == failed:  # stopped by a signal or time_limit, none failed
        return EXIT_INTERRUPTED
    return 1 if failed else 0


def _sweeper_settings(args: list[str]) -> str | None:
    """Optuna's settings that would stop its sweep before any job (checked before anything runs)."""
    for arg in args:
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key == "hydra.sweeper.direction" and value.strip().lower() not in ("minimize", "maximize"):
            return f"{arg}: the search's direction is minimize or maximize (of objective.metric)"
        if key == "hydra.sweeper.n_trials" and not (value.strip().isdigit() and int(value) >= 1):
            return f"{arg}: a search needs at least one trial (hydra.sweeper.n_trials >= 1)"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command == "bench":
        return guarded(bench.main, rest)
    if command == "report":
        return guarded(report.main, rest)
    if command == "eval":
        return guarded(evaluation.main, rest)
    if command == "sweep":
        return guarded(status_main, rest)
    return fail(f"unknown command '{command}'; commands: train, report, eval, bench, sweep (see `marlrun --help`)")


def guarded(command: Callable[[list[str]], int], args: list[str]) -> int:
    """Run a command's ``main(args)``, turning user errors into one line."""
    try:
        return command(args)
    except UserError as exc:
        return fail(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        return fail(_hydra_message(exc))
    except KeyboardInterrupt:
        print("marlrun: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
