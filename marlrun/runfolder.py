"""One process owns a run folder.

``marlrun train`` claims its folder before Hydra writes anything into it (a Hydra callback, configured in
conf/config.yaml under ``hydra.callbacks``): it takes an exclusive lock on ``<run>/.marlrun.lock`` (``flock``, so
the kernel drops it when the process dies, however it dies) and holds it until the run ends. A fresh run is refused
a folder that already holds a run, and a resume one that another process is using. The default folder name has
one-second resolution; two runs that start in the same second get ``..._2``, ``..._3`` instead of sharing one.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from marlrun.errors import UserError

LOCK_FILE = ".marlrun.lock"
RUN_FILES = (".hydra", "metrics.jsonl", "summary.json", "checkpoints")  # any of these: the folder holds a run

STOP_FILE = ".marlrun.stop"  # in a sweep's folder while it stops on a signal: its workers start no more jobs
# keys a sweep run again into its folder may give anew (they change how it runs, not what it measures)
CONTINUABLE = ("time_limit", "progress", "print_config", "hardware.torch_threads", "hardware.env_workers")

_held: dict[Path, int] = {}  # folder -> file descriptor holding its lock, for this process


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def lock(folder: Path) -> bool:
    """Take the folder's lock for this process; False when another process holds it."""
    folder = folder.resolve()
    if folder in _held:
        return True
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held[folder] = fd
    return True


def locked_by_another(folder: Path) -> bool:
    """Whether another process holds the folder's lock (a run going on there); takes nothing."""
    folder = folder.resolve()
    if folder in _held or not (folder / LOCK_FILE).exists():
        return False
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def release(folder: Path | None = None) -> None:
    """Drop this process's lock on ``folder`` (all of them when None)."""
    for held in [folder.resolve()] if folder is not None else list(_held):
        fd = _held.pop(held, None)
        if fd is not None:
            os.close(fd)


def hydra_quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value: a path with spaces or other characters Hydra's lexer refuses."""
    return "'" + str(value).replace("'", "\\'") + "'"


def quoted(path: Path | str) -> str:
    """A path as a shell word: the resume hints printed for a folder with spaces work when pasted."""
    return shlex.quote(str(path))


def unquoted(value: str) -> str:
    """A folder given on the command line without the Hydra quotes around it, if it has them."""
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def enclosing_run(folder: Path) -> Path | None:
    """The run folder that ``folder`` lies inside, if any (its checkpoints/, eval/ or any other subfolder)."""
    for parent in folder.parents:  # a run's saved config and something it wrote (a project's own checkpoints/ is no run)
        if (parent / ".hydra" / "config.yaml").is_file() and any((parent / name).exists() for name in RUN_FILES[1:]):
            return parent
    return None


def in_use(folder: Path) -> UserError:
    return UserError(f"{folder} is in use by another marlrun process; wait for it to end, or choose another folder with hydra.run.dir=PATH")


def claim(config: DictConfig) -> Path:
    """The folder this run will write into, locked for this process (see the module's docstring)."""
    raw = str(config.hydra.run.dir)
    if not raw.strip():
        raise UserError("hydra.run.dir is empty; give the run a folder (hydra.run.dir=outputs/my_run) or leave it out for a dated one")
    folder = Path(raw).expanduser().absolute()
    if config.get("resume"):
        folder.mkdir(parents=True, exist_ok=True)
        if not lock(folder):
            raise in_use(folder)
        return folder
    chosen = any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in config.hydra.overrides.hydra)
    if inside := enclosing_run(folder):
        raise UserError(f"{folder} is inside the run folder {inside}; a run writes into a folder of its own: choose another with hydra.run.dir=PATH")
    for attempt in range(1, 1000):
        candidate = folder if attempt == 1 else folder.with_name(f"{folder.name}_{attempt}")
        if holds_run(candidate):  # checked before taking the lock, so a refused run writes nothing there
            if chosen:
                raise UserError(f"{candidate} already holds a run; continue it with `marlrun train resume={quoted(candidate)}`, "
                                "or choose another folder with hydra.run.dir=PATH")
            continue
        candidate.mkdir(parents=True, exist_ok=True)
        if not lock(candidate):
            if chosen:
                raise in_use(candidate)
            continue
        if holds_run(candidate):  # another run took it between the check and the lock, and finished
            release(candidate)
            continue
        if candidate != folder:
            with read_write(config), open_dict(config):
                config.hydra.run.dir = str(candidate)
        return candidate
    raise UserError(f"no free run folder next to {folder}; choose one with hydra.run.dir=PATH")


_refusal: list[UserError] = []  # why on_run_start refused the run folder (Hydra turns a callback's exception into a warning)


def refusal() -> UserError | None:
    """The reason the run's folder was refused, once (the task function reports it instead of training)."""
    return _refusal.pop() if _refusal else None


class RunFolderGuard(Callback):
    """Claims the run folder before Hydra writes its .hydra/ files there; lets it go when the run ends.

    Hydra only warns when a callback raises, and then writes the run's files anyway. So a refused run is sent to a
    scratch folder that Hydra may write into, and the task function reports the refusal (``refusal()``)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            claim(config)
        except (UserError, OSError) as exc:
            _refusal[:] = [exc if isinstance(exc, UserError) else UserError(f"cannot write {exc.filename}: {exc.strerror}; "
                                                                            "choose another output folder with hydra.run.dir=PATH")]
            with read_write(config), open_dict(config):
                config.hydra.run.dir = tempfile.mkdtemp(prefix="marlrun-refused-")
                config.hydra.output_subdir = None

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        release()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """A default sweep folder that another sweep holds gets ``_2``, ``_3``...: its job folders would be shared."""
        if any(o.split("=", 1)[0].lstrip("+~") == "hydra.sweep.dir" for o in config.hydra.overrides.hydra):
            return  # chosen by the user: `marlrun train` checked it before Hydra started
        folder = Path(str(config.hydra.sweep.dir)).expanduser().absolute()
        for attempt in range(1, 1000):
            candidate = folder if attempt == 1 else folder.with_name(f"{folder.name}_{attempt}")
            if candidate.exists() and any(candidate.iterdir()) and candidate not in _held:
                continue
            candidate.mkdir(parents=True, exist_ok=True)
            if lock(candidate):
                break
        if candidate != folder:  # the jobs' configs are composed again from the Hydra overrides: change both
            with read_write(config), open_dict(config):
                config.hydra.sweep.dir = str(candidate)
                config.hydra.overrides.hydra = [*config.hydra.overrides.hydra, f"hydra.sweep.dir={hydra_quoted(candidate)}"]

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        release()


def override_key(override: str) -> str:
    return str(override).split("=", 1)[0].strip().lstrip("+~")


def experiment_overrides(overrides) -> list[str]:
    """What a sweep's command line says about the experiment: its task overrides but the CONTINUABLE ones, sorted."""
    return sorted(str(o).strip() for o in overrides if override_key(o) not in CONTINUABLE)


def sweep_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """A multirun command line's task overrides and Hydra overrides (as Hydra tells them apart), flags left out."""
    given = [a for a in args if not a.startswith("-")]
    hydra_part = [a for a in given if a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    return [a for a in given if a not in hydra_part], hydra_part


def check_sweep_folder(args: list[str]) -> bool:
    """A sweep folder given on the command line either is new, or holds this same sweep (the same task overrides in
    its multirun.yaml, keys that change only how it runs aside): then the command continues it, and True is returned.
    A folder with another sweep's jobs is refused with the difference."""
    given = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].lstrip("+~") == "hydra.sweep.dir"]
    if not given or "${" in given[-1]:
        return False
    value = unquoted(given[-1])
    folder = Path(value).expanduser().absolute()
    if not value:
        raise UserError("hydra.sweep.dir is empty; give the sweep a folder (hydra.sweep.dir=outputs/my_sweep) or leave it out for a dated one")
    continuing = False
    if folder.is_dir() and any(holds_run(job) for job in folder.iterdir() if job.is_dir()):
        saved = folder / "multirun.yaml"
        if not saved.is_file():
            raise UserError(f"{folder} already holds jobs of a sweep marlrun cannot continue (no multirun.yaml: a search, or "
                            "not a marlrun sweep); choose another folder with hydra.sweep.dir=PATH")
        try:
            before = experiment_overrides(OmegaConf.load(saved).hydra.overrides.task)
        except Exception as exc:
            raise UserError(f"{saved} cannot be read ({type(exc).__name__}); choose another folder with hydra.sweep.dir=PATH") from None
        now = experiment_overrides(sweep_overrides(args)[0])
        if now != before:
            only_before, only_now = [o for o in before if o not in now], [o for o in now if o not in before]
            raise UserError(f"{folder} holds another sweep: it ran {' '.join(only_before) or '(nothing more)'} where this command "
                            f"gives {' '.join(only_now) or '(nothing)'}; continue it with `marlrun train -m resume={quoted(folder)}`, or "
                            f"choose another folder with hydra.sweep.dir=PATH (only {', '.join(CONTINUABLE)} may change)")
        continuing = True
    folder.mkdir(parents=True, exist_ok=True)
    if not lock(folder):
        raise in_use(folder)
    (folder / STOP_FILE).unlink(missing_ok=True)  # a stop asked of an earlier command on this sweep
    return continuing
