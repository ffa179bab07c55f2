"""Keep a sweep's finished runs in the repository: their logs without the checkpoints.

    python scripts/keep_results.py SWEEP_DIR RESULTS_DIR

Copies each finished job's metrics.jsonl, summary.json and .hydra/ to RESULTS_DIR/<job>_<its swept overrides>/
(a job copied before is copied again only if it changed), writes RESULTS_DIR/sweep_summary.json (every job of the
sweep's grid with its state, steps and run time, as `marlrun sweep status SWEEP_DIR --json` gives it) and prints how
many jobs are kept. Run it after each sitting of a long sweep, then `marlrun report RESULTS_DIR`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from marlrun.sweep import FINISHED, job_outcomes, time_left

KEPT = ("metrics.jsonl", "summary.json", ".hydra", "seps_clusters.json")  # the last: selective sharing's clustering, where a run has one


def folder_name(job: dict) -> str:
    swept = "_".join(o.lstrip("+~") for o in job["swept"].split())
    return re.sub(r"[^A-Za-z0-9_.=,-]", "-", f"{job['job']}_{swept}" if swept else job["job"])


def keep(sweep_dir: Path, results: Path) -> int:
    jobs = job_outcomes(sweep_dir)
    results.mkdir(parents=True, exist_ok=True)
    kept = 0
    for job in jobs:
        if job["state"] != FINISHED:
            continue
        source, target = Path(job["run_dir"]), results / folder_name(job)
        for name in KEPT:
            if (source / name).is_dir():
                shutil.copytree(source / name, target / name, dirs_exist_ok=True)
            elif (source / name).exists():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, target / name)
        kept += 1
    for job, left in zip(jobs, time_left(jobs)):
        job["time_left_s"] = left
    (results / "sweep_summary.json").write_text(json.dumps(jobs, indent=2) + "\n")
    wall = sum(j["wall_time_s"] or 0 for j in jobs) / 3600
    print(f"{kept} of {len(jobs)} jobs finished and kept in {results} ({wall:.1f} h of runs so far)")
    return kept


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    sweep_dir, results = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    if not (sweep_dir / "multirun.yaml").is_file():
        print(f"error: {sweep_dir} is not a sweep folder (no multirun.yaml)", file=sys.stderr)
        return 2
    keep(sweep_dir, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
