"""Typed configs: the run-level schema, Hydra's ConfigStore, and the checks of a composed or saved config.

Every default is stated once, in a dataclass schema: the run's (``RunConfig`` below), the hardware's (marlrun/hardware.py)
and each algorithm's and environment's, beside its class (marlrun/algos/<name>.py, marlrun/envs/<name>.py, listed in
marlrun/registry.py). The YAML files under ``conf/`` name their schema first in their defaults list and set only what
differs from it (a preset), so a misspelled key or a value of the wrong type fails at composition with a message that
names the key. Range checks live in each schema's ``__post_init__`` and run when :func:`validate` turns the composed
config into dataclass objects, before anything is built or written. Each key's documentation is the comment on its
line in the schema; :func:`schema_keys` reads it back for ``marlrun train --help`` and the README's tables.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import re
import io
import math
import tokenize
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, NamedTuple, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf, open_dict

from marlrun.errors import UserError, require
from marlrun.hardware import HardwareConfig
from marlrun.registry import ALGORITHMS, ENVIRONMENTS, KINDS, entry


# --------------------------------------------------------------------------- the run
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit seed
LOGGERS = ("tensorboard", "wandb", "mlflow")  # marlrun/metrics.py (tensorboard) and marlrun/loggers.py
SUMMARY_METRICS = ("final_eval_return", "best_eval_return", "final_train_return", "steps_per_sec")  # numbers of summary.json
AGGREGATES = ("last", "mean", "max", "min")


@dataclass
class ObjectiveConfig:
    """The one number a hyperparameter search (``hydra/sweeper=optuna``) optimises, read from the finished run's folder
    (marlrun/search.py). A run that did not finish, or has no such number, or one that is not finite, is a failed trial."""

    metric: str = "final_eval_return"  # a number of summary.json (final_eval_return, best_eval_return, final_train_return, steps_per_sec) or a scalar of metrics.jsonl (eval/episode_return, train/loss, ...)
    aggregate: str = "last"  # a metrics.jsonl scalar over the records that hold it: last | mean | max | min (a summary.json number is taken as it is)

    def __post_init__(self) -> None:
        require(self.metric in SUMMARY_METRICS or "/" in self.metric, "objective.metric",
                 f"'{self.metric}' is neither a number of summary.json ({', '.join(SUMMARY_METRICS)}) nor a scalar of metrics.jsonl "
                 "(those have a group: eval/episode_return, train/loss, ...)")
        require(self.aggregate in AGGREGATES, "objective.aggregate", f"unknown aggregation '{self.aggregate}'; pick one of {', '.join(AGGREGATES)}")


def parse_duration(text) -> float | None:
    """Seconds in ``3600``, ``90m``, ``2h30m``, ``1d``, ``45s`` (None when it is none of these, or not above 0)."""
    text = str(text).strip().lower()
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
    if not text or not match:
        return None
    d, h, m, s = (float(x) if x else 0.0 for x in match.groups())
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    return seconds if seconds > 0 else None


@dataclass
class RunConfig:
    """Run-level keys: the run's length, what it logs, evaluates and keeps (conf/config.yaml composes the rest)."""

    algo: Any = MISSING  # the algorithm: algo=NAME (conf/algo/)
    env: Any = MISSING  # the environment: env=NAME (conf/env/)
    hardware: HardwareConfig = MISSING  # hardware=auto | cpu | cuda (conf/hardware/)
    seed: int = 0  # seeds python, numpy, torch and every environment copy
    total_steps: int = 200_000  # environment steps to train for, summed over parallel copies
    log_interval: int = II("interval:${total_steps},20,5000")  # env steps between metric records (TensorBoard and metrics.jsonl); default: total_steps / 20, at most 5,000
    eval_interval: int = II("interval:${total_steps},5,50000")  # env steps between greedy evaluations, besides one at step 0 and one at the end; default: total_steps / 5, at most 50,000; 0 = only at the end
    eval_episodes: int = 10  # greedy episodes per evaluation, played side by side; 0 = no evaluation
    checkpoint_interval: int = 50_000  # env steps between checkpoints; one is also written at the end and on Ctrl-C/SIGTERM
    keep_checkpoints: int = 1  # newest checkpoints kept in <run>/checkpoints/ (each is written in full before the older one goes)
    save_replay: bool = True  # checkpoints include the replay buffers, so a resumed run continues exactly
    resume: Optional[str] = None  # set by `marlrun train resume=RUN_DIR`; do not set by hand
    time_limit: Optional[str] = None  # stop training this long after the `marlrun train` command started (a local sweep: its whole time; no job starts after it), with a checkpoint and status "stopped by time_limit" (resume continues it): seconds, or 90m, 2h30m, 1d (null: no limit)
    progress: bool = True  # rich progress bar
    print_config: bool = True  # print at start what runs where and why (device, precision, threads) and the composed config
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])  # where the scalars go besides metrics.jsonl (always written): tensorboard | wandb (offline into <run>/wandb unless logged in) | mlflow (outputs/mlruns/mlflow.db unless MLFLOW_TRACKING_URI is set)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # what a hyperparameter search (hydra/sweeper=optuna) optimises

    def __post_init__(self) -> None:
        require(0 <= self.seed <= MAX_SEED, "seed", f"must be an integer in [0, 2**63 - 1], got {self.seed}")
        require(self.total_steps >= 1, "total_steps", f"must be >= 1, got {self.total_steps}")
        require(self.time_limit is None or parse_duration(self.time_limit) is not None, "time_limit",
                f"'{self.time_limit}' is not a duration; give seconds (3600) or hours, minutes, seconds (2h30m, 90m, 45s)")
        # (an interval not given is an interpolation, ${interval:...}, until the config is resolved)
        require(not isinstance(self.log_interval, int) or self.log_interval >= 1, "log_interval", "must be >= 1")
        require(not isinstance(self.eval_interval, int) or self.eval_interval >= 0, "eval_interval", "must be >= 0 (0 = only at the end)")
        require(self.eval_episodes >= 0, "eval_episodes", "must be >= 0")
        require(self.checkpoint_interval >= 1, "checkpoint_interval", "must be >= 1")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        for name in self.loggers:
            require(name in LOGGERS, "loggers", f"unknown logger '{name}'; pick from {', '.join(LOGGERS)} (metrics.jsonl is always written)")
        require(len(set(self.loggers)) == len(self.loggers), "loggers", f"each logger once, got {list(self.loggers)}")


GROUPS = ("algo", "env", "hardware", "experiment")


def fitted_interval(total_steps, parts, at_most) -> int:
    """``${interval:${total_steps},5,50000}``: an interval that gives a run of ``total_steps`` at least ``parts`` of them
    (a short run still logs and evaluates a few times), and no more than ``at_most`` steps apart."""
    return max(1, min(int(at_most), int(total_steps) // int(parts)))


def config_groups() -> str:
    """``group: option, option...`` for every config group under conf/, for ``marlrun train --help`` (Hydra's own
    list would show the schema/ groups too, which are not options)."""
    root = files("marlrun.conf")
    lines = []
    for group in GROUPS:
        options = sorted(p.name.removesuffix(".yaml") for p in root.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_configs() -> None:
    OmegaConf.register_new_resolver("marlrun_groups", config_groups, replace=True)
    OmegaConf.register_new_resolver("interval", fitted_interval, replace=True)
    OmegaConf.register_new_resolver("marlrun_keys", key_help, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="marlrun_schema", node=RunConfig)
    # Under schema/ so that they do not show up as options of the algo/env/hardware groups.
    cs.store(group="schema/hardware", name="hardware", node=HardwareConfig)
    for group, entries in (("algo", ALGORITHMS), ("env", ENVIRONMENTS)):
        for name, e in entries.items():
            cs.store(group=f"schema/{group}", name=name, node=open_mappings(e.config))


def open_mappings(schema: type) -> DictConfig:
    """The schema as a config whose free-form mappings (fields typed ``dict``, such as a library's keyword arguments)
    take new keys from the command line (``env.kwargs={N: 3}``), which Hydra's struct mode otherwise refuses."""
    node = OmegaConf.structured(schema)
    for f in dataclasses.fields(schema):
        if f.type is dict or str(f.type).startswith("dict["):  # annotations are strings here (from __future__)
            OmegaConf.set_struct(node._get_node(f.name), False)
    return node


def _one_line(exc: BaseException, cfg: DictConfig | None = None) -> str:
    """An OmegaConf error as ``key: message`` on one line (its message names the key on a ``full_key:`` line; for an
    interpolation that does not resolve, the key is found by resolving ``cfg``'s values one by one)."""
    text = str(exc)
    key = getattr(exc, "full_key", None) or (_unresolvable_key(cfg) if cfg is not None else None)
    message = " ".join(text.split("\n    full_key:")[0].split())
    if "interpolation" in message.lower():
        message += "; give the key a plain value, or an interpolation of another key (${algo.lr}) or of ${oc.env:NAME}"
    return f"{key}: {message}" if key else message


def _unresolvable_key(cfg: DictConfig, path: str = "") -> str | None:
    for key in cfg.keys():
        full = f"{path}{key}"
        try:
            value = cfg[key]
        except Exception:
            return full
        if isinstance(value, DictConfig) and (found := _unresolvable_key(value, f"{full}.")):
            return found
    return None


def _legacy_target(group: str, name) -> str | None:
    """The ``_target_`` a run folder saved before the registry built its algorithm or environment (the class or
    factory that built it then, the one the registry names now)."""
    e = KINDS.get(group, {}).get(name)
    if e is None:
        return None
    built = e.cls if group == "algo" else e.make
    return f"{built.__module__}.{built.__name__}"


def _drop_legacy_targets(cfg: DictConfig) -> DictConfig:
    """``cfg`` without the ``_target_`` keys of older run folders (resume and eval of a run saved before the registry)."""
    stale = [g for g in ("algo", "env") if isinstance(cfg.get(g), DictConfig) and "_target_" in cfg[g]
             and cfg[g]["_target_"] == _legacy_target(g, cfg[g].get("name"))]
    if not stale:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for group in stale:
            cfg[group].pop("_target_")
    return cfg


def _schema_for(cfg: DictConfig, group: str) -> type:
    """The schema of the ``algo`` or ``env`` node, chosen by its ``name`` from marlrun's registry."""
    node = cfg.get(group) if isinstance(cfg, DictConfig) else None
    if not isinstance(node, DictConfig):
        raise UserError(f"{group}: missing or not a mapping; a run config names its {group} with {group}=NAME")
    return entry(group, node.get("name")).config


def typed(cfg: DictConfig) -> DictConfig:
    """``cfg`` merged onto its schemas: a config composed without them (a saved run config, read back for ``resume=``
    or ``eval``) is type-checked and refuses unknown keys exactly as a fresh run's is."""
    if not isinstance(cfg, DictConfig):
        raise UserError("the config is not a mapping of keys to values")
    cfg = _drop_legacy_targets(cfg)
    try:
        base = OmegaConf.structured(RunConfig)
        base.algo = OmegaConf.structured(_schema_for(cfg, "algo"))
        base.env = OmegaConf.structured(_schema_for(cfg, "env"))
        base.hardware = OmegaConf.structured(HardwareConfig)
        return OmegaConf.merge(base, cfg)
    except UserError:
        raise
    except Exception as exc:  # unknown key, wrong type, bad interpolation
        raise UserError(_one_line(exc, cfg)) from None


def _reject_unknown_keys(node: DictConfig, path: str = "") -> None:
    """Keys added with Hydra's `+key=value` that no schema knows would be ignored silently: refuse them."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        full = f"{path}{key}"
        if known is not None and key not in known:
            raise UserError(f"unknown config key '{full}'{did_you_mean(full)}; `marlrun train --cfg job` lists every key")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing():
            _reject_unknown_keys(child, f"{full}.")


def _reject_non_finite(obj, path: str = "") -> None:
    """inf and nan pass every range check written as a comparison the wrong way round; no key takes them."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _reject_non_finite(value, f"{path}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{path}{f.name}: must be a finite number, got {value}")


def validate(cfg: DictConfig) -> DictConfig:
    """The config typed by its schemas (see :func:`typed`), with every interpolation resolved and every schema's range
    checks run (their ``__post_init__``); raises UserError naming the first bad key."""
    cfg = typed(cfg)
    _reject_unknown_keys(cfg)
    try:
        OmegaConf.resolve(cfg)  # the values that run are the values saved and checked
        objects = OmegaConf.to_object(cfg)
    except UserError:
        raise
    except Exception as exc:  # OmegaConf wraps errors raised while building the dataclasses
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(_one_line(exc, cfg)) from None
    _reject_non_finite(objects)
    return cfg


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's saved config, checked by the schemas as a fresh run's is (so it names only marlrun's own classes)."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise UserError(f"{run_dir} is not a marlrun run folder (no .hydra/config.yaml); pass the folder a run printed at its end")
    try:
        cfg = OmegaConf.load(saved)
    except Exception as exc:  # not YAML, not text
        raise UserError(f"{saved} cannot be read ({type(exc).__name__}); it is not the config a marlrun run saved") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{saved} is not a mapping of config keys (it holds a YAML {type(cfg).__name__}); it is not the config a marlrun run saved")
    old_fp32 = isinstance(cfg.get("hardware"), DictConfig) and "precision" not in cfg.hardware  # runs from before the key were fp32
    try:
        cfg = validate(cfg)
    except UserError as exc:
        raise UserError(f"{saved}: {exc}") from None
    if old_fp32:
        cfg.hardware.precision = "fp32"
    return cfg


# --------------------------------------------------------------------------- documentation
class KeyDoc(NamedTuple):
    key: str
    type: str
    default: Any
    doc: str


def _field_comments(cls: type) -> dict[str, str]:
    """The comment on each field's line in ``cls``'s source: ``key: type = default  # comment``."""
    source = inspect.getsource(cls)
    comments = {tok.start[0]: tok.string.lstrip("#").strip() for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    indent = len(source) - len(source.lstrip())
    found = {}
    for number, line in enumerate(source.splitlines(), start=1):
        body = line[indent:]
        if line[: indent + 4].strip() or not body.startswith("    ") or body.startswith("     "):
            continue  # only the class body's own lines
        name, colon, _ = body.strip().partition(":")
        if colon and name.isidentifier() and number in comments:
            found[name] = comments[number]
    return found


def schema_keys(schema: type) -> list[KeyDoc]:
    """Every key of a dataclass schema with its type, default and documentation (the comment on its line, in the
    schema or the schema it extends). ``name`` (the registry's name of the algorithm or environment) is left out."""
    docs: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if dataclasses.is_dataclass(cls):
            docs.update(_field_comments(cls))
    keys = []
    for f in dataclasses.fields(schema):
        if f.name == "name":
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind.startswith("Optional["):
            kind = kind[len("Optional["):-1] + " | null"
        keys.append(KeyDoc(f.name, kind, default, docs.get(f.name, "")))
    return keys


def key_help(algo: str, env: str) -> str:
    """Every key of the run, the hardware, algorithm ``algo`` and environment ``env`` with its type, default and
    meaning, for ``marlrun train --help``."""
    sections = [("", RunConfig, "the run (marlrun/config.py)"), ("hardware.", HardwareConfig, "hardware (marlrun/hardware.py)")]
    for group, name in (("algo", algo), ("env", env)):
        if name in KINDS[group]:
            schema = KINDS[group][name].config
            sections.append((f"{group}.", schema, f"{group}={name} ({schema.__module__.replace('.', '/')}.py, {schema.__name__})"))
    lines = []

    def add(prefix: str, schema: type) -> None:
        for k in schema_keys(schema):
            if k.key in ("algo", "env", "hardware"):
                continue
            if dataclasses.is_dataclass(k.default):  # a nested group of keys (objective)
                add(f"{prefix}{k.key}.", type(k.default))
                continue
            default = "null" if k.default is None else str(k.default).lower() if isinstance(k.default, bool) else k.default
            lines.append(f"  {prefix}{k.key} ({k.type}, default {default}): {k.doc}")

    for prefix, schema, title in sections:
        lines.append(f"{title}:")
        add(prefix, schema)
    return "\n".join(lines).replace("$", "$$")  # Hydra fills its help template with string.Template: $ is its marker


def known_keys(of_type: str | None = None) -> list[str]:
    """Every full key a config can have (the run's, the hardware's and every registered algorithm's and environment's),
    or only those whose schema type is ``of_type`` ("bool")."""
    keys = []

    def add(prefix: str, schema: type) -> None:
        for f in dataclasses.fields(schema):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                add(f"{prefix}{f.name}.", type(default))
            elif f.name not in ("algo", "env", "hardware") and of_type in (None, f.type if isinstance(f.type, str) else f.type.__name__):
                keys.append(f"{prefix}{f.name}")

    add("", RunConfig)
    add("hardware.", HardwareConfig)
    for group in ("algo", "env"):
        for e in KINDS[group].values():
            add(f"{group}.", e.config)
    return sorted(set(keys))


def did_you_mean(key: str) -> str:
    """`` (did you mean algo.sharing?)`` for a mistyped key close to a real one; `` (a key of algo=super_ddqn)`` for
    a key of another algorithm or environment than the one in use; else nothing."""
    group, _, field = key.partition(".")
    owners = [name for name, e in KINDS.get(group, {}).items() if field in {f.name for f in dataclasses.fields(e.config)}]
    if owners:
        return f" (a key of {', '.join(f'{group}={name}' for name in owners)}, not of the {group} in use)"
    close = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""
