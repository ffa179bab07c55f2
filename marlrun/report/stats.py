"""Statistics of one metric over runs and groups: final value, AUC and steps to a threshold per run; per group their
means with percentile bootstrap intervals over seeds, and rliable's IQM, P(A > B) and performance profiles
(stages 4-5 of `marlrun report`)."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from marlrun.errors import UserError
from marlrun.report import reliable
from marlrun.report.runs import Group, Run

DEFAULT_METRICS = ("eval/episode_return", "train/episode_return")
LEVEL = 0.95


# ---------------------------------------------------------------------------- data
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
def fmt(value: float | None) -> str:
    """A number for the table: 4 significant digits, thousands separated; '-' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def auc(steps: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` over ``steps`` divided by the step span: the curve's mean value over training,
    in the metric's units. A point at step 0 (the untrained policy's evaluation) is left out when later points exist,
    so that runs with and without it compare. A single point gives its value; no points give nan."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if steps.size > 1 and steps[0] == 0:
        steps, values = steps[1:], values[1:]
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
