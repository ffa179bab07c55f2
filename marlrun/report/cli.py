"""The command line of `marlrun report`: arguments, the --compare names, the output folder, and ``main``, which runs
the stages in order."""

from __future__ import annotations

import argparse
import difflib
import math
import os
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.text import Text

from marlrun.errors import UserError
from marlrun.report.output import (comparisons_table, plot_curves, plot_file, plot_profile, problem_rows, problems_table,
                                   results_table, write_improvement_csv, write_profile_csv, write_report_csv, write_runs_csv)
from marlrun.report.reliable import resolve_group
from marlrun.report.runs import BOOKKEEPING_KEYS, Group, format_value, group_runs, load_runs
from marlrun.report.stats import add_reliable_statistics, analyse, choose_metrics, profiles

# ---------------------------------------------------------------------------- command line
def _int_at_least(lowest: int):
    """An argparse type: a whole number >= ``lowest``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {value}")
        return value
    return parse


_non_negative_int, _positive_int = _int_at_least(0), _int_at_least(1)


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
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the bootstrap's random numbers (default: %(default)s)")
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
    p.add_argument("--label", action="append", default=[], metavar="GROUP=NAME",
                   help="show a group under NAME in tables and plots (GROUP as for --compare, e.g. "
                        "'algo.sharing=none=independent DDQN'; the last '=' splits); repeatable")
    p.add_argument("--rliable-reps", type=_positive_int, default=2_000, metavar="N",
                   help="stratified bootstrap resamples for the IQM, P(A > B) and profile intervals (rliable; "
                        "default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def find_group(name: str, labels: Sequence[str], groups: Sequence[Group]) -> str:
    """The label of the group ``name`` names (``resolve_group``) by its label or the keys that differ between the
    groups; failing that, by any key of its runs' config (a part such as ``parameter_sharing=false`` that no longer
    tells groups apart when fewer groups are there)."""
    differing = [[f"{key}={format_value(value)}" for key, value in g.values.items()] for g in groups]
    try:
        return resolve_group(name, labels, differing)
    except UserError as first:
        if "no group is named" not in str(first):  # several groups: more keys would not make it fewer
            raise
        full = [[f"{key}={format_value(value)}" for key, value in ((g.runs[0].config if g.runs else None) or {}).items()] for g in groups]
        try:
            return resolve_group(name, labels, full)
        except UserError:
            raise first from None


def resolve_pairs(pairs: Sequence[Sequence[str]], groups: Sequence[Group], given: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``--compare A B`` pairs as group labels; a name is a label (or a --label NAME), or parts of the label the run
    configs give it (``given``, before --label). UserError for a name that names no group or several."""
    labels = [g.label for g in groups]

    def resolve(name: str) -> str:
        if given and name not in labels:
            try:
                return labels[list(given).index(find_group(name, list(given), groups))]
            except UserError:
                pass
        return find_group(name, labels, groups)

    resolved = [(resolve(a), resolve(b)) for a, b in pairs]
    for a, b in resolved:
        if a == b:
            raise UserError(f"--compare: both names give the group {a!r}; compare two different groups")
    return resolved


def relabel(groups: Sequence[Group], labels: Sequence[str]) -> list[str]:
    """``--label GROUP=NAME``: the group GROUP names (as for --compare) is shown as NAME. Returns the labels before."""
    current = [g.label for g in groups]
    for item in labels:
        name, eq, new = item.rpartition("=")
        if not eq or not name.strip() or not new.strip():
            raise UserError(f"--label {item!r}: write GROUP=NAME (for example 'algo.sharing=none=independent DDQN')")
        try:
            target = find_group(name.strip(), current, groups)
        except UserError as exc:
            raise UserError(str(exc).replace("--compare:", "--label:", 1)) from None
        groups[current.index(target)].label = new.strip()
    shown = [g.label for g in groups]
    if len(set(shown)) != len(shown):
        raise UserError(f"--label: two groups would both be shown as {next(x for x in shown if shown.count(x) > 1)!r}")
    return current


def output_dir(args: argparse.Namespace) -> Path:
    out = args.out if args.out is not None else (Path(args.dirs[0]) / "report" if len(args.dirs) == 1 else Path("report"))
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out} ({exc.strerror}); choose another with --out DIR") from None
    return out


def check_ignored_keys(runs, ignore: Sequence[str]) -> None:
    """An ``--ignore KEY`` that names no key (nor group of keys) of any run's config is a typo: say so, with the closest."""
    keys = {key for run in runs if run.config is not None for key in run.config}
    keys |= {o.split("=", 1)[0].lstrip("+~") for run in runs for o in run.overrides}  # e.g. experiment
    groups = {".".join(key.split(".")[:i]) for key in keys for i in range(1, key.count(".") + 1)}
    for name in ignore:
        if name not in keys and name not in groups:
            close = difflib.get_close_matches(name, sorted(keys | groups), n=1, cutoff=0.75)
            raise UserError(f"--ignore {name}: no run's config has this key" + (f" (did you mean {close[0]}?)" if close else ""))


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    """`marlrun report`: returns 0; raises UserError for a mistake the user can fix."""
    args = parser().parse_args(argv)
    if console is None:  # piped into a file or a CI log, rich would fold the tables at 80 columns: use a wide page
        console = Console()
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(width=200)
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise UserError(f"--threshold {args.threshold}: must be a finite number (no run could reach it)")
    runs = load_runs(args.dirs)
    check_ignored_keys(runs, args.ignore)
    groups = group_runs(runs, args.ignore)
    metrics = choose_metrics(runs, args.metric)
    compare = resolve_pairs(args.compare, groups, relabel(groups, args.label))
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
