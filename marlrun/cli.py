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
import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from marlrun import bench, evaluation, report
from marlrun.checkpoint import checkpoint_paths
from marlrun.config import GROUPS, did_you_mean, known_keys, load_run_config, register_configs
from marlrun.console import console
from marlrun.errors import UserError, warn
from marlrun.metrics import cut_short_last_line, read_metrics
from marlrun.runfolder import LOCK_FILE, check_sweep_folder, hydra_quoted, in_use, lock, refusal, release, unquoted
from marlrun.runner import train
from marlrun.sweep import job_outcomes, rerun_unfinished, run_job, summarize_sweep, sweep_dirs

USAGE = """usage: marlrun <command> [options]

commands:
  train    train an algorithm on an environment (Hydra overrides, e.g. `marlrun train algo.sharing=none seed=1`)
           `marlrun train --help` lists the config groups; `marlrun train --cfg job` prints the composed config;
           `marlrun train resume=RUN_DIR [total_steps=N]` continues a run from its last checkpoint
  report   compare runs: `marlrun report DIR [DIR ...]` groups runs by the config keys that differ, aggregates seeds
           (mean and 95% bootstrap interval of final return, area under the curve, steps to a threshold), writes CSV
           and learning-curve plots (`marlrun report --help`)
  eval     play a run's greedy policy from its checkpoint: `marlrun eval RUN_DIR [episodes=N] [seed=N] [render=true]`
           prints the training-time evaluation metrics; render=true writes a GIF/MP4 and adds it to TensorBoard
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
    if "-m" in args or "--multirun" in args:
        return "resume= continues one run; drop -m/--multirun (a sweep's jobs are resumed one by one)"
    value = unquoted(resume[-1].split("=", 1)[1])
    if not value:
        return "resume= needs a run folder: marlrun train resume=RUN_DIR"
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
            check_sweep_folder(args)
        except UserError as exc:
            return fail(str(exc))
        except OSError as exc:
            return fail(f"cannot write {exc.filename}: {exc.strerror}; choose another sweep folder with hydra.sweep.dir=PATH")
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
    try:
        app()
        if multirun:
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
    failed = sum(summarize_sweep(d, console) for d in sweep_dirs if d.is_dir())
    if not any(job_outcomes(d) for d in sweep_dirs if d.is_dir()):
        fail("the sweep ran no job; check its sweeper settings (hydra.sweeper.*) and the values it sweeps")
        return 1
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
    return fail(f"unknown command '{command}'; commands: train, report, eval, bench (see `marlrun --help`)")


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
