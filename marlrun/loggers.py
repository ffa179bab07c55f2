"""The experiment trackers a run can log to: ``loggers=[tensorboard, wandb, mlflow]`` (TensorBoard's is in metrics.py).

Every logger gets every scalar of metrics.jsonl (always written) at the same env step. :func:`make_loggers` builds them
before the run builds anything and checks that each can start (its library is installed, its tracking store answers),
so a logger that cannot start is one line, never a crash mid-run. A tracker that fails later (a server that goes away)
is reported once and left out from then on; metrics.jsonl still holds everything.

wandb
    online when a W&B login is found (WANDB_API_KEY, a settings file or ~/.netrc), else offline; WANDB_MODE decides
    when set. Its files go into ``<run>/wandb/``. The run's config (resolved) and command-line overrides are the W&B
    config; a multirun job's group is its sweep folder's name. Project: WANDB_PROJECT, else ``marlrun``.
mlflow
    the tracking store is MLFLOW_TRACKING_URI, else a local SQLite store ``outputs/mlruns/mlflow.db`` in the working
    directory, with artifacts in ``outputs/mlruns/artifacts`` (MLflow's file store cannot hold a scalar and one
    under it, ``eval/episode_return`` and ``eval/episode_return/<agent>``, and is refused). Experiment:
    MLFLOW_EXPERIMENT_NAME, else ``marlrun``. Params: the command-line overrides; the resolved config is the run's
    ``config.yaml`` artifact; tags: ``marlrun.run_dir`` and, for a multirun job, ``marlrun.group`` (the sweep).

The tracked runs' ids are kept in ``<run>/trackers.json``, so a resumed run (``resume=RUN_DIR``) continues the same
W&B run and the same MLflow run (W&B offline writes one ``offline-run-*`` folder per process, under the same run id).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import string
import time
from contextlib import contextmanager
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from marlrun.console import console
from marlrun.errors import UserError
from marlrun.metrics import Logger, TensorBoardLogger, write_json

TRACKERS_FILE = "trackers.json"
DEFAULT_MLFLOW_STORE = Path("outputs") / "mlruns"  # mlflow.db and artifacts/ in the working directory
PROJECT = "marlrun"  # W&B project and MLflow experiment when the environment names none


def make_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """The loggers ``cfg.loggers`` names, each checked to be able to start; a UserError naming the first that cannot."""
    run_dir = Path(run_dir)
    built = {"tensorboard": lambda: TensorBoardLogger(run_dir), "wandb": lambda: WandbLogger(cfg, run_dir),
             "mlflow": lambda: MlflowLogger(cfg, run_dir)}
    return [built[name]() for name in cfg.loggers]


# ---------------------------------------------------------------------------- what every tracker is told
def run_identity(run_dir: Path) -> tuple[str, str | None, list[str]]:
    """``(name, group, overrides)`` of a run folder: a multirun job's group is its sweep folder's name; the overrides are
    the command line's (``.hydra/overrides.yaml``, which a resumed run keeps)."""
    def load(name: str):
        try:
            return yaml.safe_load((run_dir / ".hydra" / name).read_text())
        except (OSError, yaml.YAMLError):
            return None

    overrides = [str(o) for o in (load("overrides.yaml") or [])]
    hydra = (load("hydra.yaml") or {}).get("hydra") or {}
    group = run_dir.parent.name if str(hydra.get("mode", "")).endswith("MULTIRUN") else None
    return (f"{group}/{run_dir.name}" if group else run_dir.name), group, overrides


def override_params(overrides: list[str]) -> dict[str, str]:
    """``key=value`` overrides as params (``+key`` and ``++key`` as ``key``; deletions ``~key`` are left out)."""
    params = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and not key.startswith("~"):
            params[key.lstrip("+")] = value
    return params


def read_trackers(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / TRACKERS_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_tracker(run_dir: Path, name: str, record: dict) -> None:
    data = read_trackers(run_dir)
    data[name] = record
    write_json(run_dir / TRACKERS_FILE, data)


def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class Tracker(Logger):
    """A tracker outside the run folder's own files: a failure after the start is one warning, then it is left out."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.run_dir = run_dir
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.run_name, self.group, self.overrides = run_identity(run_dir)
        self.broken = False

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self.broken:
            return
        try:
            self.log(step, scalars)
        except Exception as exc:  # training goes on; metrics.jsonl and the other loggers hold the values
            self.broken = True
            warn(f"{self.name} stopped logging at env step {step:,} ({first_line(exc)}); metrics.jsonl holds every value")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError


def warn(message: str) -> None:
    console.print(f"[yellow]{message}")


# ---------------------------------------------------------------------------- Weights & Biases
def wandb_logged_in(wandb) -> bool:
    """Whether W&B credentials are configured (WANDB_API_KEY, a settings file, ~/.netrc): no prompt, no network."""
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # a wandb without login(prompt=...)
        return getattr(getattr(wandb, "api", None), "api_key", None) is not None
    except Exception:
        return False


def new_run_id() -> str:
    """A W&B run id: 8 lowercase letters and digits, as wandb makes them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandbLogger(Tracker):
    name = "wandb"

    def __init__(self, cfg: DictConfig, run_dir: Path):
        try:
            import wandb  # optional, and slow to import: only a run that logs to W&B imports it
        except ImportError:
            raise UserError("loggers: wandb is not installed; pip install -e \".[wandb]\", or drop wandb from loggers") from None
        super().__init__(cfg, run_dir)
        self.wandb = wandb
        self.mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in(wandb) else "offline")
        self.run = None

    def start(self, resume_step: int | None) -> None:
        saved = read_trackers(self.run_dir).get("wandb") or {}
        run_id = saved.get("id") if resume_step is not None and saved.get("id") else new_run_id()
        try:
            self.run = self.wandb.init(
                dir=str(self.run_dir), project=os.environ.get("WANDB_PROJECT") or PROJECT, group=self.group, name=self.run_name,
                id=run_id, resume="allow" if resume_step is not None else None, mode=self.mode, config={**self.config, "overrides": self.overrides},
            )
        except Exception as exc:
            raise UserError(f"loggers: wandb could not start in {self.mode} mode ({first_line(exc)}); "
                            "WANDB_MODE=offline logs without a server, or drop wandb from loggers") from None
        save_tracker(self.run_dir, "wandb", {"id": run_id, "mode": self.mode, "dir": str(self.run_dir / "wandb")})
        if self.mode == "offline" and "WANDB_MODE" not in os.environ:
            warn(f"wandb: no W&B login found, logging offline into {self.run_dir / 'wandb'} (upload it later with `wandb sync`)")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            try:
                self.run.finish(exit_code=1 if failed else 0)
            except Exception as exc:
                warn(f"wandb could not finish the run ({first_line(exc)})")
            self.run = None


# ---------------------------------------------------------------------------- MLflow
def is_file_store(uri: str) -> bool:
    """A URI of MLflow's file store: ``file:`` or a plain path (not ``sqlite:``, ``http(s)://``, ``databricks``...)."""
    return uri.startswith("file:") or ("://" not in uri and not uri.startswith(("databricks", "sqlite:", "postgresql:", "mysql:", "mssql:")))


@contextmanager
def quick_http():
    """One short try while checking the tracking store, instead of MLflow's retries with back-off (minutes)."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def sqlite_lock(uri: str):
    """Jobs that start side by side create (migrate) a new SQLite store one at a time."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class MlflowLogger(Tracker):
    name = "mlflow"

    def __init__(self, cfg: DictConfig, run_dir: Path):
        try:
            from mlflow.tracking import MlflowClient  # optional, and slow to import: only a run that logs to MLflow
        except ImportError:
            raise UserError("loggers: mlflow is not installed; pip install -e \".[mlflow]\" (mlflow-skinny), or drop mlflow from loggers") from None
        super().__init__(cfg, run_dir)
        local = not os.environ.get("MLFLOW_TRACKING_URI")
        store = DEFAULT_MLFLOW_STORE.absolute()
        self.uri = f"sqlite:///{store / 'mlflow.db'}" if local else os.environ["MLFLOW_TRACKING_URI"]
        if is_file_store(self.uri):
            raise UserError(f"loggers: MLflow's file store ({self.uri}) cannot hold both a scalar and one under it (eval/episode_return "
                            "and eval/episode_return/<agent>); set MLFLOW_TRACKING_URI to a database (sqlite:///PATH/mlflow.db) or a "
                            f"tracking server, or unset it for marlrun's local store {DEFAULT_MLFLOW_STORE / 'mlflow.db'}")
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        try:
            with quick_http(), sqlite_lock(self.uri):
                self.client = MlflowClient(tracking_uri=self.uri)
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    try:
                        self.experiment_id = self.client.create_experiment(
                            experiment, artifact_location=(store / "artifacts").as_uri() if local else None)
                    except Exception:  # another job created it meanwhile
                        found = self.client.get_experiment_by_name(experiment)
                        if found is None:
                            raise
                if found is not None:
                    if found.lifecycle_stage == "deleted":
                        raise UserError(f"loggers: the MLflow experiment '{experiment}' at {self.uri} is deleted; restore it, "
                                        "or name another with MLFLOW_EXPERIMENT_NAME")
                    self.experiment_id = found.experiment_id
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"loggers: mlflow cannot use the tracking store {self.uri} ({first_line(exc)}); fix MLFLOW_TRACKING_URI "
                            f"(unset, runs go to a local store in {DEFAULT_MLFLOW_STORE}), or drop mlflow from loggers") from None
        self.run_id = None

    def start(self, resume_step: int | None) -> None:
        from mlflow.entities import Param  # mlflow is optional: imported only by a run that logs to it

        saved = read_trackers(self.run_dir).get("mlflow") or {}
        try:
            if resume_step is not None and saved.get("run_id") and saved.get("tracking_uri") == self.uri and self._exists(saved["run_id"]):
                self.run_id = saved["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                tags = {"marlrun.run_dir": str(self.run_dir.resolve()), **({"marlrun.group": self.group} if self.group else {})}
                self.run_id = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags).info.run_id
                params = [Param(key, value[:6000]) for key, value in override_params(self.overrides).items()]
                for i in range(0, len(params), 100):  # MLflow takes at most 100 params a request
                    self.client.log_batch(self.run_id, params=params[i:i + 100])
        except Exception as exc:
            raise UserError(f"loggers: mlflow could not start a run in {self.uri} ({first_line(exc)}); drop mlflow from loggers "
                            "to train without it") from None
        try:
            self.client.log_text(self.run_id, self.config_yaml, "config.yaml")
        except Exception as exc:  # an artifact store this machine cannot write: the run is tracked without the file
            warn(f"mlflow: the run's config.yaml could not be stored as an artifact ({first_line(exc)})")
        save_tracker(self.run_dir, "mlflow", {"run_id": self.run_id, "tracking_uri": self.uri, "experiment_id": self.experiment_id})

    def _exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id) is not None
        except Exception:
            return False

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric  # mlflow is optional (see MlflowLogger.__init__)

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in scalars.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a request
            for attempt in range(3):
                try:
                    self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
                    break
                except Exception as exc:  # a SQLite store that another job is writing: try again shortly
                    if attempt == 2 or "locked" not in str(exc):
                        raise
                    time.sleep(1.0)

    def close(self, failed: bool = False) -> None:
        if self.run_id is not None:
            try:
                self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
            except Exception as exc:
                warn(f"mlflow could not end the run ({first_line(exc)})")
            self.run_id = None
