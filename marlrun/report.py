"""`marlrun report DIR [DIR ...]`: compare finished runs, grouped by what differs between them, over seeds.

    marlrun report outputs/multirun/2026-11-21/10-19-27_super_ddqn_pursuit [--metric eval/episode_return]

1. find: every run folder (one with ``.hydra/config.yaml``) under the DIRs, at any depth, in job-number order;
2. load: each run's composed config, its ``metrics.jsonl`` and its ``summary.json``; what is missing, unreadable,
   unfinished or failed is noted as a problem of that run (reported, never silently dropped);
3. group: the config keys whose values differ between runs (seed and bookkeeping keys aside) define the groups,
   so the runs of a group differ only by seed;
4. statistics per run on a metric's (step, value) series: final value, AUC (area under the curve over the step
   span: the mean value over training) and the first step at which the value reaches a threshold; per group the
   mean of each and a 95% percentile bootstrap confidence interval over seeds;
5. the statistics the evaluation literature asks for (Agarwal et al., 2021), computed by ``rliable``
   (``marlrun/reliable.py``): each group's interquartile mean of the final values and of the AUCs with stratified
   bootstrap intervals; P(A > B) for the pairs named with ``--compare A B``; and the first metric's performance
   profile (the fraction of each group's runs whose final value exceeds tau);
6. output: a table on the console, ``report.csv`` (one row per group and metric), ``runs.csv`` (one row per run and
   metric), one ``curves_<metric>.png`` per metric with each group's mean curve and 95% bootstrap band,
   ``improvement.csv`` (the compared pairs), ``profile.csv`` and ``profile_<metric>.png``.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.text import Text

from marlrun.errors import UserError
from marlrun.metrics import METRICS_FILE, SUMMARY_FILE

CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
DEFAULT_METRICS = ("eval/episode_return", "train/episode_return")
BOOKKEEPING_KEYS = ("seed", "resume", "progress", "print_config", "hydra", "loggers", "objective")  # never define groups (nor keys under them)
SKIP_FOLDERS = ("checkpoints",)
LEVEL = 0.95
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


@dataclass
class RunStats:
    final: float
    auc: float
    steps_to_threshold: int | None
    first: float


@dataclass
class Estimate:
    """A mean over runs and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float


@dataclass
class GroupStats:
    group: Group
    included: list[Run]
    final: Estimate | None
    auc: Estimate | None
    steps: Estimate | None  # over the runs that reached the threshold
    reached: int
    iqm_final: Any = None  # reliable.Interval: interquartile mean of the final values (rliable)
    iqm_auc: Any = None


@dataclass
class Comparison:
    """P(a run of group ``a`` beats a run of group ``b``) on one metric's final values and AUCs (rliable)."""

    a: str
    b: str
    final: Any  # reliable.Interval | None
    auc: Any


@dataclass
class MetricReport:
    """Everything computed for one metric."""

    metric: str
    threshold: float | None
    threshold_note: str
    runs: dict[Path, RunStats]  # runs that logged the metric
    excluded: dict[Path, str]  # run -> why it is not in the statistics
    groups: list[GroupStats]
    comparisons: list[Comparison] = field(default_factory=list)


# ---------------------------------------------------------------------------- small statistics
def auc(steps: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` over ``steps`` divided by the step span: the curve's mean value over training,
    in the metric's units. A single point gives its value; no points give nan."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan
    span = steps[-1] - steps[0]
    if values.size == 1 or span == 0:
        return float(values[-1])
    return float(np.trapezoid(values, steps) / span)


def steps_to_threshold(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """The first logged step at which the value is >= ``threshold``; None if it never is."""
    for step, value in zip(steps, values):
        if value >= threshold:
            return int(step)
    return None


def bootstrap_ci(values: Sequence[float], n: int, rng: np.random.Generator, level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values``: ``n`` resamples with replacement
    (drawn as ``rng.integers(0, len(values), size=(n, len(values)))``). One value: the value itself; none: nan."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    if values.size == 1:
        return float(values[0]), float(values[0])
    means = values[rng.integers(0, values.size, size=(n, values.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def estimate(values: Sequence[float], n_boot: int, seed: int) -> Estimate | None:
    """Mean and bootstrap CI; each estimate draws from its own ``default_rng(seed)``, so a group's interval does
    not depend on which other groups are in the report."""
    if len(values) == 0:
        return None
    low, high = bootstrap_ci(values, n_boot, np.random.default_rng(seed))
    return Estimate(float(np.mean(values)), low, high)


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


def read_records(path: Path) -> tuple[list[dict], int]:
    """The records of a metrics.jsonl and the number of lines that could not be read (e.g. cut by a crash)."""
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
        else:
            bad += 1
    return records, bad


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
    metrics_path = path / METRICS_FILE
    if not metrics_path.is_file():
        problems.append("no metrics.jsonl (the run never logged a step)")
    else:
        records, bad = read_records(metrics_path)
        if not records and not bad:
            problems.append("metrics.jsonl is empty (the run never logged a step)")
        elif bad:
            problems.append(f"{bad} unreadable line(s) in metrics.jsonl, ignored")

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
    if len(keys) > LABEL_KEYS_MAX:
        readable = [group for group in ordered if group.label != "(unreadable config)"]
        labels = _override_labels(readable, ignore)
        for group, label in zip(readable, labels or []):
            group.label = label
    return ordered


# ---------------------------------------------------------------------------- statistics
def series(run: Run, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The (step, value) points of ``metric`` in a run, by step (the last record wins if a step repeats)."""
    points: dict[int, float] = {}
    for record in run.records:
        value = record.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            points[int(record["step"])] = float(value)
    steps = np.array(sorted(points), dtype=np.int64)
    return steps, np.array([points[s] for s in steps], dtype=float)


def logged_metrics(runs: Sequence[Run]) -> list[str]:
    """Every numeric metric any run logged, sorted."""
    names = {key for run in runs for record in run.records for key, value in record.items()
             if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
    return sorted(names)


def choose_metrics(runs: Sequence[Run], requested: Sequence[str] | None) -> list[str]:
    """The requested metrics (checked to exist), else the first of eval/episode_return and train/episode_return that
    some run logged. Raises UserError naming the metrics that exist."""
    available = logged_metrics(runs)
    if not available:
        raise UserError(f"none of the {len(runs)} run(s) logged any metric (no readable metrics.jsonl); "
                        "point marlrun report at runs that have trained for at least one log_interval")
    shown = ", ".join(available[:40]) + (f" and {len(available) - 40} more" if len(available) > 40 else "")
    if not requested:
        for name in DEFAULT_METRICS:
            if name in available:
                return [name]
        raise UserError(f"no run logged {' or '.join(DEFAULT_METRICS)}; choose one with --metric NAME from: {shown}")
    metrics = list(dict.fromkeys(requested))
    for name in metrics:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"no run logged the metric '{name}'{hint}; the logged metrics are: {shown}")
    return metrics


def exclusion(run: Run, has_series: bool, include_partial: bool) -> str | None:
    """Why ``run`` is left out of a metric's statistics, or None if it is in."""
    if run.config is None:
        return "excluded: config unreadable"
    if run.failed:
        return "excluded: failed"
    if not has_series:
        return "excluded: no data"
    if run.partial and not include_partial:
        return "excluded: partial (--include-partial to include)"
    return None


def default_threshold(groups: Sequence[GroupStats], stats: dict[Path, RunStats]) -> tuple[float | None, str]:
    """Half-way between the mean first value over all included runs and the best group's mean final value."""
    firsts = [stats[run.path].first for g in groups for run in g.included]
    finals = [g.final.mean for g in groups if g.final is not None]
    if not firsts or not finals:
        return None, "no threshold: no run to compute it from"
    first, best = float(np.mean(firsts)), max(finals)
    threshold = (first + best) / 2
    return threshold, (f"threshold {fmt(threshold)} = half-way between the mean first value ({fmt(first)}) and the best "
                       f"group's mean final value ({fmt(best)}); set it with --threshold")


def analyse(groups: Sequence[Group], metric: str, threshold: float | None = None, include_partial: bool = False,
            n_boot: int = 10_000, seed: int = 0) -> MetricReport:
    """Per-run and per-group statistics of ``metric``; ``threshold`` None: the default threshold."""
    curves = {run.path: series(run, metric) for g in groups for run in g.runs}
    stats: dict[Path, RunStats] = {}
    excluded: dict[Path, str] = {}
    for group in groups:
        for run in group.runs:
            steps, values = curves[run.path]
            if values.size:
                stats[run.path] = RunStats(float(values[-1]), auc(steps, values), None, float(values[0]))
            reason = exclusion(run, values.size > 0, include_partial)
            if reason:
                excluded[run.path] = reason

    def summarise(group: Group) -> GroupStats:
        included = [run for run in group.runs if run.path not in excluded]
        finals = [stats[run.path].final for run in included]
        aucs = [stats[run.path].auc for run in included]
        return GroupStats(group, included, estimate(finals, n_boot, seed), estimate(aucs, n_boot, seed), None, 0)

    summaries = [summarise(group) for group in groups]
    if threshold is None:
        threshold, note = default_threshold(summaries, stats)
    else:
        note = f"threshold {fmt(threshold)} (--threshold)"
    if threshold is not None:
        for path, run_stats in stats.items():
            run_stats.steps_to_threshold = steps_to_threshold(*curves[path], threshold)
        for summary in summaries:
            reached = [stats[run.path].steps_to_threshold for run in summary.included]
            reached = [s for s in reached if s is not None]
            summary.steps, summary.reached = estimate(reached, n_boot, seed), len(reached)
    return MetricReport(metric, threshold, note, stats, excluded, summaries)


def add_reliable_statistics(report: MetricReport, compare: Sequence[tuple[str, str]], reps: int, seed: int) -> None:
    """Each group's IQM of final values and AUCs, and P(A > B) for the ``compare`` pairs (labels), with rliable."""
    from marlrun import reliable

    def scores(g: GroupStats) -> tuple[list[float], list[float]]:
        return [report.runs[r.path].final for r in g.included], [report.runs[r.path].auc for r in g.included]

    by_label = {g.group.label: g for g in report.groups}
    for g in report.groups:
        finals, aucs = scores(g)
        g.iqm_final, g.iqm_auc = reliable.iqm(finals, reps, seed), reliable.iqm(aucs, reps, seed)
    for a, b in compare:
        (fa, aa), (fb, ab) = scores(by_label[a]), scores(by_label[b])
        report.comparisons.append(Comparison(a, b, reliable.probability_of_improvement(fa, fb, reps, seed),
                                             reliable.probability_of_improvement(aa, ab, reps, seed)))


def profiles(report: MetricReport, reps: int, seed: int) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The performance profile of each group's final values (rliable): taus, and label -> (fraction, low, high)."""
    from marlrun import reliable

    finals = {g.group.label: [report.runs[r.path].final for r in g.included] for g in report.groups if g.included}
    taus = reliable.profile_taus([v for values in finals.values() for v in values])
    return taus, {label: reliable.performance_profile(values, taus, reps, seed) for label, values in finals.items()}


def mean_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int,
               level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean curve of a group's runs and a percentile bootstrap band (resampling runs) at each step.

    Runs logged at the same steps are used as they are; otherwise each is interpolated onto the union of their
    steps from the latest first step to the shortest run's last step. Returns steps, mean, low, high."""
    curves = [(s, v) for s, v in curves if s.size]
    if not curves:
        empty = np.array([])
        return empty, empty, empty, empty
    if all(np.array_equal(curves[0][0], s) for s, _ in curves):
        grid = curves[0][0].astype(float)
        matrix = np.stack([v for _, v in curves])
    else:
        start, stop = max(s[0] for s, _ in curves), min(s[-1] for s, _ in curves)
        grid = np.unique(np.concatenate([s for s, _ in curves])).astype(float)
        grid = grid[(grid >= start) & (grid <= stop)]
        matrix = np.stack([np.interp(grid, s, v) for s, v in curves])
    mean = matrix.mean(axis=0)
    n = matrix.shape[0]
    if n == 1 or grid.size == 0:
        return grid, mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(n_boot, n))
    weights = np.zeros((n_boot, n))
    np.add.at(weights, (np.arange(n_boot)[:, None], picks), 1.0 / n)  # resampled means = weights @ matrix
    tail = 100 * (1 - level) / 2
    low, high = np.empty_like(mean), np.empty_like(mean)
    for start in range(0, grid.size, 256):  # a few MB at a time
        block = weights @ matrix[:, start:start + 256]
        low[start:start + 256], high[start:start + 256] = np.percentile(block, [tail, 100 - tail], axis=0)
    return grid, mean, low, high


# ---------------------------------------------------------------------------- output
def fmt(value: float | None) -> str:
    """A number for the table: 4 significant digits, thousands separated; '-' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _with_ci(e: Estimate | None, number=fmt) -> str:
    """``mean`` over ``[low, high]`` on a second line (tables stay narrow)."""
    return "-" if e is None else f"{number(e.mean)}\n[{number(e.low)}, {number(e.high)}]"


def results_table(report: MetricReport) -> Table:
    """The console table of one metric: a row per group in order of appearance, the best final mean in bold."""
    n_runs = sum(len(g.included) for g in report.groups)
    table = Table(title=Text(f"{report.metric}: {len(report.groups)} group(s), {n_runs} run(s) in the statistics"),
                  caption=Text(report.threshold_note), caption_justify="left")
    for name, justify in [("group", "left"), ("runs", "right"), ("final mean [95% CI]", "right"),
                          ("AUC mean [95% CI]", "right"), ("steps to threshold [95% CI]", "right"), ("reached", "right"),
                          ("final IQM [95% CI]", "right"), ("AUC IQM [95% CI]", "right")]:
        table.add_column(name, justify=justify, overflow="fold")
    finals = [g.final.mean for g in report.groups if g.final is not None]
    best = max(finals) if len(finals) > 1 else None
    for g in report.groups:
        n, total = len(g.included), len(g.group.runs)
        steps = _with_ci(g.steps, lambda x: f"{x:,.0f}")
        final = Text(_with_ci(g.final), style="bold" if g.final is not None and g.final.mean == best else "")
        table.add_row(Text(g.group.label), str(n) if n == total else f"{n} of {total}", final, _with_ci(g.auc), steps,
                      f"{g.reached}/{n}" if report.threshold is not None and n else "-", _with_ci(g.iqm_final),
                      _with_ci(g.iqm_auc))
    return table


def comparisons_table(report: MetricReport) -> Table:
    """P(A > B) of each compared pair on one metric."""
    table = Table(title=Text(f"{report.metric}: probability of improvement P(A > B) [95% CI]"))
    for name in ("A", "B", "P(A > B), final", "P(A > B), AUC"):
        table.add_column(name, justify="left" if name in "AB" else "right", overflow="fold")
    for c in report.comparisons:
        table.add_row(Text(c.a), Text(c.b), _with_ci(c.final), _with_ci(c.auc))
    return table


def problem_rows(runs: Sequence[Run], labels: dict[Path, str], reports: Sequence[MetricReport]) -> list[tuple[str, str, str, str]]:
    """(folder, group, problems, in the statistics?) for every run with a problem or left out of the first metric."""
    rows = []
    first = reports[0]
    for run in runs:
        problems = list(run.problems)
        if run.records:
            problems += [f"{r.metric} never logged" for r in reports if run.path not in r.runs]
        excluded = first.excluded.get(run.path)
        if problems or excluded:
            rows.append((str(run.path), labels[run.path], "; ".join(problems), excluded or "included"))
    return rows


def problems_table(rows: Sequence[tuple[str, str, str, str]]) -> Table:
    table = Table(title=f"problems: {len(rows)} run(s)", title_style="bold yellow")
    for name in ("folder", "group", "problem", "statistics"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def write_report_csv(path: Path, groups: Sequence[Group], reports: Sequence[MetricReport]) -> None:
    """One row per group and metric: the group's key values, run counts, every statistic and its CI bounds."""
    keys = list(groups[0].values) if groups else []
    stat_columns = ["final_mean", "final_ci_low", "final_ci_high", "auc_mean", "auc_ci_low", "auc_ci_high",
                    "steps_to_threshold_mean", "steps_to_threshold_ci_low", "steps_to_threshold_ci_high"]
    iqm_columns = ["final_iqm", "final_iqm_ci_low", "final_iqm_ci_high", "auc_iqm", "auc_iqm_ci_low", "auc_iqm_ci_high"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", *keys, "metric", "runs", "runs_total", *stat_columns, "reached", "threshold", *iqm_columns])
        for report in reports:
            for g in report.groups:
                values = [format_value(g.group.values[k]) if k in g.group.values else "" for k in keys]
                stats = [x for e in (g.final, g.auc, g.steps) for x in ((e.mean, e.low, e.high) if e else (None,) * 3)]
                iqms = [x for e in (g.iqm_final, g.iqm_auc) for x in ((e.mean, e.low, e.high) if e else (None,) * 3)]
                writer.writerow([g.group.label, *values, report.metric, len(g.included), len(g.group.runs),
                                 *map(_cell, stats), g.reached if report.threshold is not None else "",
                                 _cell(report.threshold), *map(_cell, iqms)])


def write_improvement_csv(path: Path, reports: Sequence[MetricReport]) -> None:
    """One row per metric, compared pair and statistic: P(A > B) and its interval."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "a", "b", "statistic", "p_a_beats_b", "ci_low", "ci_high"])
        for report in reports:
            for c in report.comparisons:
                for name, i in (("final", c.final), ("auc", c.auc)):
                    writer.writerow([report.metric, c.a, c.b, name, *((i.mean, i.low, i.high) if i else ("", "", ""))])


def write_profile_csv(path: Path, metric: str, taus: np.ndarray, curves: dict) -> None:
    """One row per group and tau: the fraction of the group's runs whose final value exceeds tau, and its band."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "group", "tau", "fraction_above", "ci_low", "ci_high"])
        for label, (fraction, low, high) in curves.items():
            for row in zip(taus, fraction, low, high):
                writer.writerow([metric, label, *(float(x) for x in row)])


def write_runs_csv(path: Path, groups: Sequence[Group], reports: Sequence[MetricReport]) -> None:
    """One row per run and metric: folder, group, seed, status, statistics and whether the statistics use it."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["folder", "group", "seed", "status", "metric", "final", "auc", "steps_to_threshold",
                         "included", "last_step", "total_steps", "problems"])
        for report in reports:
            for group in groups:
                for run in group.runs:
                    s = report.runs.get(run.path)
                    writer.writerow([str(run.path), group.label, _cell(run.seed), run.status, report.metric,
                                     _cell(s and s.final), _cell(s and s.auc), _cell(s and s.steps_to_threshold),
                                     "false" if run.path in report.excluded else "true", _cell(run.last_step),
                                     _cell(run.total_steps), "; ".join(run.problems)])


def plot_file(metric: str) -> str:
    return "curves_" + re.sub(r"[^A-Za-z0-9._-]", "_", metric) + ".png"


def plot_curves(path: Path, report: MetricReport, n_boot: int, seed: int) -> None:
    """Each group's mean curve over its included runs against env steps, with a shaded 95% bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    try:
        colors = plt.get_cmap("tab10" if len(report.groups) <= 10 else "tab20").colors
        for i, g in enumerate(report.groups):
            steps, mean, low, high = mean_curve([series(run, report.metric) for run in g.included], n_boot, seed)
            if steps.size == 0:
                continue
            color = colors[i % len(colors)]
            ax.plot(steps, mean, color=color, label=f"{g.group.label} (n={len(g.included)})")
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        if report.threshold is not None:
            ax.axhline(report.threshold, color="gray", linestyle="--", linewidth=1, label="threshold")
        ax.set_xlabel("env steps")
        ax.set_ylabel(report.metric)
        ax.set_title(f"{report.metric}: mean over seeds, shaded 95% bootstrap band")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_profile(path: Path, metric: str, taus: np.ndarray, curves: dict) -> None:
    """Performance profiles: the fraction of each group's runs whose final value exceeds tau, with 95% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    try:
        colors = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors
        for i, (label, (fraction, low, high)) in enumerate(curves.items()):
            color = colors[i % len(colors)]
            ax.plot(taus, fraction, color=color, label=label)
            ax.fill_between(taus, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel(f"tau (final {metric})")
        ax.set_ylabel("fraction of runs with final value > tau")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"performance profile of {metric} (rliable), shaded 95% bootstrap band")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------- command line
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="marlrun report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare runs over seeds: group the runs under DIRs by the config keys that differ between\n"
                    "them (runs of a group differ only by seed), then print and save each group's final value,\n"
                    "area under the curve and steps to a threshold (means with 95% percentile bootstrap\n"
                    "confidence intervals over seeds) and plot the mean learning curves. Unfinished, crashed\n"
                    "and failed runs are listed with the reason, never silently dropped.",
        epilog="example:\n  marlrun report outputs/multirun/2026-11-21/10-19-27_super_ddqn_pursuit \\\n"
               "      --metric eval/episode_return --metric train/episode_return",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="a run folder, a multirun folder or any folder holding run folders (searched at any depth)")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help="metric from metrics.jsonl; repeat for more (each gets a plot, a table and CSV rows; the first "
                        "is the one --threshold applies to). Default: eval/episode_return if any run logged it, "
                        "else train/episode_return")
    p.add_argument("--threshold", type=float, metavar="X",
                   help="value for 'steps to threshold' of the first metric (default: half-way between the mean first "
                        "value and the best group's mean final value; other metrics always use their default)")
    p.add_argument("--bootstrap", type=_positive_int, default=10_000, metavar="N",
                   help="bootstrap resamples for the confidence intervals (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's random numbers (default: %(default)s)")
    p.add_argument("--include-partial", action="store_true",
                   help="include runs that stopped before total_steps in the statistics (failed runs never are)")
    p.add_argument("--ignore", action="append", default=[], metavar="KEY",
                   help="config key (and the keys under it) that should not define groups, e.g. hardware; repeatable. "
                        f"Always ignored: {', '.join(BOOKKEEPING_KEYS)}")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for report.csv, runs.csv and curves_*.png (default: DIR/report for one DIR, else ./report)")
    p.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="two groups (a label as the table shows it, or parts of one, comma-separated, that name a single group): "
                        "report P(a run of A beats a run of B) on every metric, with its interval; repeatable")
    p.add_argument("--rliable-reps", type=_positive_int, default=2_000, metavar="N",
                   help="stratified bootstrap resamples for the IQM, P(A > B) and profile intervals (rliable; "
                        "default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def resolve_pairs(pairs: Sequence[Sequence[str]], groups: Sequence[Group]) -> list[tuple[str, str]]:
    """``--compare A B`` pairs as group labels; UserError for a name that names no group or several."""
    from marlrun.reliable import resolve_group

    labels = [g.label for g in groups]
    resolved = [(resolve_group(a, labels), resolve_group(b, labels)) for a, b in pairs]
    for a, b in resolved:
        if a == b:
            raise UserError(f"--compare: both names give the group {a!r}; compare two different groups")
    return resolved


def output_dir(args: argparse.Namespace) -> Path:
    out = args.out if args.out is not None else (Path(args.dirs[0]) / "report" if len(args.dirs) == 1 else Path("report"))
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out} ({exc.strerror}); choose another with --out DIR") from None
    return out


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    """`marlrun report`: returns 0; raises UserError for a mistake the user can fix."""
    args = parser().parse_args(argv)
    if console is None:  # piped into a file or a CI log, rich would fold the tables at 80 columns: use a wide page
        console = Console()
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(width=200)
    runs = load_runs(args.dirs)
    groups = group_runs(runs, args.ignore)
    metrics = choose_metrics(runs, args.metric)
    compare = resolve_pairs(args.compare, groups)
    reports = [analyse(groups, metric, args.threshold if i == 0 else None, args.include_partial, args.bootstrap, args.seed)
               for i, metric in enumerate(metrics)]
    labels = {run.path: g.label for g in groups for run in g.runs}
    rows = problem_rows(runs, labels, reports)
    if not any(g.included for g in reports[0].groups):
        if rows:
            console.print(problems_table(rows))
        partial = sum(run.partial and not run.failed and run.path in reports[0].runs for run in runs)
        hint = (f"; pass --include-partial to include the {partial} unfinished one(s)" if partial and not args.include_partial
                else "; see the problems listed above")
        raise UserError(f"none of the {len(runs)} run(s) under {', '.join(args.dirs)} can be summarized for "
                        f"{reports[0].metric}{hint}")

    for report in reports:
        add_reliable_statistics(report, compare, args.rliable_reps, args.seed)
        console.print(results_table(report))
        if report.comparisons:
            console.print(comparisons_table(report))
    console.print(Text("\n".join([  # what the columns mean, once
        "final: last logged value; AUC: area under the curve / step span (mean value over training); "
        "steps to threshold: mean over the runs that reached it",
        "IQM: interquartile mean over runs; P(A > B): probability that a run of A beats a run of B (ties a half); "
        f"their [95% CI] and the profile's bands: rliable's stratified bootstrap ({args.rliable_reps:,} resamples)",
        f"[95% CI]: percentile bootstrap over seeds ({args.bootstrap:,} resamples, --seed {args.seed}); "
        + ("partial runs included (--include-partial)" if args.include_partial
           else "partial runs (fewer than total_steps) excluded; --include-partial includes them"),
    ]), style="dim"))
    if rows:
        console.print(problems_table(rows))

    out = output_dir(args)
    written = [out / "report.csv", out / "runs.csv"]
    try:
        write_report_csv(written[0], groups, reports)
        write_runs_csv(written[1], groups, reports)
        if compare:
            written.append(out / "improvement.csv")
            write_improvement_csv(written[-1], reports)
        taus, curves = profiles(reports[0], args.rliable_reps, args.seed)
        written.append(out / "profile.csv")
        write_profile_csv(written[-1], reports[0].metric, taus, curves)
        if not args.no_plots:
            for report in reports:
                written.append(out / plot_file(report.metric))
                plot_curves(written[-1], report, args.bootstrap, args.seed)
            written.append(out / ("profile_" + plot_file(reports[0].metric).removeprefix("curves_")))
            plot_profile(written[-1], reports[0].metric, taus, curves)
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or out} ({exc.strerror}); choose another folder with --out DIR") from None
    console.print(Text.assemble(("report written to ", "bold"), (str(out), "bold"), ": " + ", ".join(p.name for p in written)))
    return 0
