"""Where a sweep run over several sittings stands: every planned run, finished or not, from the committed logs.

    python scripts/sweep_status.py RESULTS "GROUPS" "SEEDS"

RESULTS holds one folder per run, RESULTS/<group>/seed_<s> (scripts/super_pursuit.sh copies each finished run's
metrics.jsonl, summary.json and .hydra/ there). Writes RESULTS/sweep_summary.json (one entry per planned run: group,
seed, status, final and best evaluation return, wall time, env steps per second, the precision and torch threads it
ran with) and prints the same as a table, with the number of runs finished and their total wall time: the sweep's
wall time, summed over its sittings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from marlrun.metrics import SUMMARY_FILE, write_json
from marlrun.sweep import SWEEP_SUMMARY_FILE

NOT_RUN = "not run yet"


def number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_entry(results: Path, group: str, seed: str) -> dict:
    folder = results / group / f"seed_{seed}"
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        summary = {}
    return {
        "group": group,
        "seed": int(seed),
        "status": summary.get("status", NOT_RUN),
        "final_eval_return": summary.get("final_eval_return"),
        "best_eval_return": summary.get("best_eval_return"),
        "wall_time_s": summary.get("wall_time_s"),
        "steps_per_sec": summary.get("steps_per_sec"),
        "precision": summary.get("precision"),
        "torch_threads": summary.get("torch_threads"),
        "folder": str(folder),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print('usage: python scripts/sweep_status.py RESULTS "GROUPS" "SEEDS"', file=sys.stderr)
        return 2
    results, groups, seeds = Path(argv[0]), argv[1].split(), argv[2].split()
    if not results.is_dir():
        print(f"error: {results} is not a folder of runs", file=sys.stderr)
        return 2
    runs = [run_entry(results, group, seed) for seed in seeds for group in groups]
    finished = [r for r in runs if r["status"] == "finished"]
    hours = sum(r["wall_time_s"] or 0.0 for r in finished) / 3600
    title = f"sweep: {len(finished)} of {len(runs)} runs finished, {hours:.1f} h of wall time over the sittings"
    table = Table(title=title)
    for column in ("group", "seed", "status", "final eval return", "best", "wall h", "env steps/s", "precision", "threads"):
        table.add_column(column, no_wrap=True, justify="left" if column in ("group", "status", "precision") else "right")
    for r in runs:
        wall = None if r["wall_time_s"] is None else r["wall_time_s"] / 3600
        table.add_row(r["group"], str(r["seed"]), r["status"], number(r["final_eval_return"], 1),
                      number(r["best_eval_return"], 1), number(wall, 2), number(r["steps_per_sec"], 0),
                      r["precision"] or "-", "-" if r["torch_threads"] is None else str(r["torch_threads"]))
    Console(width=max(Console().width, 120)).print(table)
    write_json(results / SWEEP_SUMMARY_FILE,
               {"runs_planned": len(runs), "runs_finished": len(finished), "wall_time_h": round(hours, 2), "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
