"""What `marlrun report` prints and writes: console tables, report.csv, runs.csv, improvement.csv, profile.csv and
the PNG plots of mean learning curves and performance profiles (stage 6)."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.table import Table
from rich.text import Text

from marlrun.report.runs import Group, Run, format_value
from marlrun.report.stats import Estimate, MetricReport, fmt, mean_curve, series

# ---------------------------------------------------------------------------- output
def _with_ci(e: Estimate | None, number=fmt) -> str:
    """``mean`` over ``[low, high]`` on a second line (tables stay narrow)."""
    return "-" if e is None else f"{number(e.mean)}\n[{number(e.low)}, {number(e.high)}]"


def results_table(report: MetricReport) -> Table:
    """The console table of one metric: a row per group in order of appearance, the best final mean in bold."""
    n_runs = sum(len(g.included) for g in report.groups)
    few = few_runs(report)
    named = f" ({'; '.join(few)})" if len(few) <= 3 else ""
    which = "every group has" if len(few) == len(report.groups) else f"{len(few)} group(s) have"
    caption = report.threshold_note + (f"\nwarning: {which} fewer than {FEW_RUNS} runs{named}: their intervals rest on too few "
                                       "seeds to trust" if few else "")
    table = Table(title=Text(f"{report.metric}{setting(report)}: {len(report.groups)} group(s), {n_runs} run(s) in the statistics"),
                  caption=Text(caption.strip()), caption_justify="left")
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


FEW_RUNS = 5  # groups with fewer included runs get a warning: their intervals rest on too few seeds to trust


def setting(report: MetricReport) -> str:
    """`` on pursuit, 800,000 env steps`` where every included run shares the environment and the budget."""
    runs = [run for g in report.groups for run in g.included]
    envs = {str(run.config.get("env.name")) for run in runs if run.config}
    budgets = {run.config.get("total_steps") for run in runs if run.config}
    where = f" on {next(iter(envs))}" if len(envs) == 1 else ""
    budget = next(iter(budgets)) if len(budgets) == 1 else None
    return where + (f", {budget:,} env steps" if isinstance(budget, int) else "")


def few_runs(report: MetricReport) -> list[str]:
    return [g.group.label for g in report.groups if 0 < len(g.included) < FEW_RUNS]


def few_runs_note(report: MetricReport) -> str:
    few = few_runs(report)
    return f"\n{len(few)} group(s) with fewer than {FEW_RUNS} runs: their bands are rough" if few else ""


def plot_file(metric: str) -> str:
    return "curves_" + re.sub(r"[^A-Za-z0-9._-]", "_", metric) + ".png"


def plot_curves(path: Path, report: MetricReport, n_boot: int, seed: int) -> None:
    """Each group's mean curve over its included runs against env steps, with a shaded 95% bootstrap band."""
    import matplotlib  # slow to import: only when plotting (--no-plots skips it)

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
        ax.set_title(f"{report.metric}{setting(report)}: mean over seeds, shaded 95% bootstrap band{few_runs_note(report)}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_profile(path: Path, metric: str, taus: np.ndarray, curves: dict) -> None:
    """Performance profiles: the fraction of each group's runs whose final value exceeds tau, with 95% bands."""
    import matplotlib  # slow to import: only when plotting (--no-plots skips it)

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
