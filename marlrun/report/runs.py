"""Find run folders, load each one (config, metrics, summary, what is wrong with it) and group runs by the config
keys that differ between them: stages 1-3 of `marlrun report`."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from marlrun.errors import UserError
from marlrun.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics

CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
BOOKKEEPING_KEYS = ("seed", "resume", "progress", "print_config", "hydra", "loggers", "objective")  # never define groups (nor keys under them)
SKIP_FOLDERS = ("checkpoints",)
LABEL_KEYS_MAX = 4  # more differing keys than this: label groups by their Hydra overrides when those tell them apart
ABSENT = "(not set)"  # value of a key a run's config does not have


# ---------------------------------------------------------------------------- data
@dataclass
class Run:
    """One run folder as read from disk."""

    path: Path
    config: dict[str, Any] | None  # flattened to dotted keys; None when .hydra/config.yaml is unreadable
    overrides: list[str]
    records: list[dict]  # metrics.jsonl, one dict per log step
    summary: dict | None
    problems: list[str] = field(default_factory=list)  # what is wrong with it, in words
    failed: bool = False  # always excluded from the statistics
    partial: bool = False  # did not reach total_steps: excluded unless --include-partial
    last_step: int | None = None
    total_steps: int | None = None

    @property
    def seed(self) -> Any:
        return None if self.config is None else self.config.get("seed")

    @property
    def status(self) -> str:
        if self.summary is None:
            return "unfinished or crashed"
        return str(self.summary.get("status", "unknown"))


@dataclass
class Group:
    """Runs whose configs agree on every differing key: they differ only by seed."""

    label: str
    values: dict[str, Any]  # differing key -> this group's value
    runs: list[Run]


# ---------------------------------------------------------------------------- find and load
def _natural_key(path: Path) -> list:
    """Sort key in which ``job 10`` comes after ``job 9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding ``.hydra/config.yaml``) at any depth under each path, in argument order and then job
    number order; ``checkpoints/`` and hidden folders are not searched. Raises UserError for a path that does not
    exist or holds no run."""
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.exists():
            raise UserError(f"{raw} does not exist; pass a run folder, a multirun folder or a folder that holds run folders")
        if not root.is_dir():
            raise UserError(f"{raw} is a file, not a folder; pass a run folder, a multirun folder or a folder that holds run folders")
        here = []
        for folder, subfolders, _ in os.walk(root):
            folder = Path(folder)
            if (folder / CONFIG_FILE).is_file():
                here.append(folder)
            subfolders[:] = [d for d in subfolders if d not in SKIP_FOLDERS and not d.startswith(".")]
        if not here:
            raise UserError(f"no run folders (folders with .hydra/config.yaml) under {raw}; pass the folder that "
                            "`marlrun train` (or `marlrun train -m`) wrote, e.g. outputs/multirun/DATE/TIME_ALGO_ENV")
        for folder in sorted(here, key=lambda p: _natural_key(p.relative_to(root))):
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                found.append(folder)
    return found


def _resolved(node: DictConfig | ListConfig) -> Any:
    """Plain containers of ``node`` with every interpolation that can be resolved resolved; the others stay as
    their ``${...}`` text."""
    raw = OmegaConf.to_container(node, resolve=False)
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    out: Any = {} if isinstance(node, DictConfig) else [None] * len(node)
    for key in keys:
        try:
            value = node[key]
        except Exception:  # an unresolvable interpolation or a missing value ("???")
            value = raw[key]
        out[key] = _resolved(value) if isinstance(value, (DictConfig, ListConfig)) else value
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``{"algo": {"lr": 1}}`` -> ``{"algo.lr": 1}``); lists and empty dicts are values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def load_config(path: Path) -> dict[str, Any]:
    """A run's composed config, flattened to dotted keys; interpolations resolved where possible."""
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError("not a mapping")
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        tree = _resolved(cfg)
    return flatten(tree)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def load_run(path: Path) -> Run:
    """Read one run folder and note what is wrong with it."""
    problems: list[str] = []
    try:
        config = load_config(path / CONFIG_FILE)
    except Exception as exc:  # any YAML or OmegaConf error
        config = None
        problems.append(f"unreadable .hydra/config.yaml ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
    try:
        overrides = [str(o) for o in (OmegaConf.to_container(OmegaConf.load(path / OVERRIDES_FILE)) or [])]
    except Exception:
        overrides = []

    records: list[dict] = []
    if not (path / METRICS_FILE).is_file():
        problems.append("no metrics.jsonl (the run never logged a step)")
    else:
        try:
            records = read_metrics(path)
        except UserError as exc:  # this run's history is left out; the report goes on with the others
            problems.append(f"metrics.jsonl left out: {exc}")
        else:
            if not records:
                problems.append("metrics.jsonl is empty (the run never logged a step)")

    summary_path = path / SUMMARY_FILE
    summary = _read_json(summary_path) if summary_path.is_file() else None
    if summary_path.is_file() and summary is None:
        problems.append("unreadable summary.json")

    run = Run(path, config, overrides, records, summary, problems, failed=config is None)
    run.last_step = max((int(r["step"]) for r in records), default=None)
    run.total_steps = _int_or_none((summary or {}).get("total_steps")) or _int_or_none((config or {}).get("total_steps"))
    done = max(run.last_step or 0, _int_or_none((summary or {}).get("env_steps")) or 0)
    run.partial = run.total_steps is not None and done < run.total_steps
    of = f"{done:,} of {run.total_steps:,}" if run.total_steps is not None else f"{done:,} of an unknown total"
    status = run.status
    if summary is None:
        last = f"last step {of}" if run.last_step is not None else f"no step logged, total {run.total_steps or '?'}"
        problems.append(f"unfinished or crashed: no summary.json ({last})")
    elif status.startswith(("failed", "skipped")):  # a sweep job that crashed, or never started
        run.failed = True
        problems.append(status + (" (see error.log)" if (path / "error.log").is_file() else ""))
    elif status.startswith("stopped"):
        problems.append(f"{status} at step {of}")
    elif status != "finished":
        problems.append(f"status '{status}' at step {of}")
    elif run.partial:
        problems.append(f"fewer steps than total_steps ({of})")
    return run


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """``load_run`` for every run folder ``find_runs`` finds."""
    return [load_run(path) for path in find_runs(paths)]


# ---------------------------------------------------------------------------- groups
def format_value(value: Any) -> str:
    """A config value as it would be written in a Hydra override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def is_ignored(key: str, ignore: Sequence[str] = ()) -> bool:
    """Seed and bookkeeping keys (and ``ignore``d ones), with everything under them, never define groups."""
    if key.endswith("._target_"):  # what built it, in runs before the registry: the name says the same
        return True
    return any(key == prefix or key.startswith(prefix + ".") for prefix in (*BOOKKEEPING_KEYS, *ignore))


def differing_keys(runs: Sequence[Run], ignore: Sequence[str] = ()) -> list[str]:
    """Config keys (in config order) whose values are not the same in all runs with a readable config."""
    configs = [run.config for run in runs if run.config is not None]
    keys = list(dict.fromkeys(key for config in configs for key in config if not is_ignored(key, ignore)))
    return [key for key in keys if len({_canonical(config.get(key, ABSENT)) for config in configs}) > 1]


def _override_labels(groups: list[Group], ignore: Sequence[str]) -> list[str] | None:
    """Groups labelled by the Hydra overrides that differ between them (``algo=maddpg`` rather than every algo.*
    key), if those are the same within each group and tell the groups apart; else None."""
    def own(run: Run) -> tuple[str, ...]:
        return tuple(o for o in run.overrides if not is_ignored(o.split("=", 1)[0].lstrip("+~"), ignore))

    runs = [run for group in groups for run in group.runs]
    common = set.intersection(*(set(own(run)) for run in runs)) if runs else set()
    labels = []
    for group in groups:
        variants = {tuple(o for o in own(run) if o not in common) for run in group.runs}
        if len(variants) != 1:
            return None
        labels.append(", ".join(next(iter(variants))))
    return labels if all(labels) and len(set(labels)) == len(labels) else None


def parameter_sharing(config: dict[str, Any]) -> str | None:
    """A run's ``algo.parameter_sharing`` as none, all or selective (runs before selective sharing saved true/false)."""
    value = config.get("algo.parameter_sharing")
    if isinstance(value, bool):
        return "all" if value else "none"
    return {"true": "all", "false": "none"}.get(str(value).lower(), value) if value is not None else None


def method_name(config: dict[str, Any]) -> str | None:
    """What a reader calls the method a run's config trains ("SUPER quantile", "independent DDQN", "QMIX, standardised
    rewards", "MAPPO"); None for an algorithm it has no name for."""
    algo = config.get("algo.name")
    networks = parameter_sharing(config)
    if algo == "super_ddqn":
        sharing = config.get("algo.sharing")
        if sharing == "none":
            return {"all": "parameter sharing", "selective": "selective parameter sharing"}.get(networks, "independent DDQN")
        name = "share all" if sharing == "all" else f"SUPER {sharing}"
        return name + {"all": ", parameter sharing", "selective": ", selective parameter sharing"}.get(networks, "")
    if algo == "qmix":
        name = "VDN" if config.get("algo.mixer") == "vdn" else "QMIX"
        return name + (", standardised rewards" if config.get("algo.standardise_rewards") else "")
    if algo in ("ippo", "mappo"):
        name = algo.upper() + {"none": ", no parameter sharing", "selective": ", selective parameter sharing"}.get(networks, "")
        return name + (", greedy evaluation" if config.get("algo.greedy_eval") else "")
    return {"maddpg": "MADDPG", "mfq": "MF-Q", "mcmc": "MCMC"}.get(algo)


METHOD_KEYS = ("algo.name", "algo.sharing", "algo.parameter_sharing", "algo.mixer", "algo.standardise_rewards", "algo.greedy_eval")


def _method_labels(groups: list[Group]) -> list[str] | None:
    """Each group labelled by its method's name, if every run of a group has the same one, followed by the other keys
    that differ between groups of the same algorithm (``SUPER quantile, algo.lr=0.001``); None when two groups would
    share a label."""
    labels = []
    for group in groups:
        names = {method_name(run.config) for run in group.runs}
        if len(names) != 1 or None in names:
            return None
        labels.append(names.pop())
    for i, group in enumerate(groups):  # what else sets it apart from the groups of its algorithm
        same_algo = [g for g in groups if g.runs[0].config.get("algo.name") == group.runs[0].config.get("algo.name")]
        varying = [key for key in group.values if key not in METHOD_KEYS
                   and len({_canonical(g.values.get(key, ABSENT)) for g in same_algo}) > 1]
        labels[i] = ", ".join([labels[i], *(f"{key}={format_value(group.values[key])}" for key in varying)])
    return labels if len(set(labels)) == len(labels) and len(labels) > 1 else None


def group_runs(runs: Sequence[Run], ignore: Sequence[str] = ()) -> list[Group]:
    """Group runs by the config keys that differ between them (seed and bookkeeping keys aside), in order of first
    appearance. One group "all runs" if nothing differs; runs with an unreadable config form a group of their own."""
    keys = differing_keys(runs, ignore)
    groups: dict[str, Group] = {}
    for run in runs:
        if run.config is None:
            groups.setdefault("\0unreadable", Group("(unreadable config)", {}, [])).runs.append(run)
            continue
        values = {key: run.config.get(key, ABSENT) for key in keys}
        label = ", ".join(f"{key}={format_value(value)}" for key, value in values.items()) or "all runs"
        groups.setdefault(_canonical(values), Group(label, values, [])).runs.append(run)
    ordered = list(groups.values())
    readable = [group for group in ordered if group.label != "(unreadable config)"]
    labels = _method_labels(readable) if keys else None  # a reader knows "SUPER quantile", not "algo.sharing=quantile"
    if labels is None and len(keys) > LABEL_KEYS_MAX:
        labels = _override_labels(readable, ignore)
    for group, label in zip(readable, labels or []):
        group.label = label
    return ordered
