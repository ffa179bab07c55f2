"""Compare the metrics.jsonl of every run folder in BEFORE with the one of the same name in AFTER.

    python scripts/compare_metrics.py BEFORE AFTER [--legacy-keys]

Timing scalars (perf/...) are left out; everything else must be equal, value for value. --legacy-keys reads BEFORE's
scalars by the names runs logged before every training scalar moved under train/ (MF-Q's `<team>/loss`, MF-Q's and
MCMC's `temperature`). Prints one line per run; exits 1 when any run differs or is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from marlrun.metrics import read_metrics

GROUPS = ("train", "eval", "env", "perf", "sharing")


def records(run: Path, legacy: bool) -> list[dict] | None:
    if not (run / "metrics.jsonl").is_file():
        return None
    out = []
    for r in read_metrics(run):
        r = {k: v for k, v in r.items() if not k.startswith("perf/")}
        if legacy:
            r = {k if k == "step" or k.split("/")[0] in GROUPS else f"train/{k}": v for k, v in r.items()}
        out.append(r)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--legacy-keys", action="store_true")
    args = parser.parse_args()
    bad = 0
    for run in sorted(p for p in args.before.iterdir() if p.is_dir()):
        x, y = records(run, args.legacy_keys), records(args.after / run.name, False)
        if x is None or y is None:
            print(f"{run.name}: missing in {'BEFORE' if x is None else 'AFTER'}")
            bad += 1
        elif x == y:
            print(f"{run.name}: identical ({len(x)} records, {sum(len(r) for r in x)} values)")
        else:
            bad += 1
            first = next(((i, k) for i, (a, b) in enumerate(zip(x, y)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)
            print(f"{run.name}: DIFFERENT ({len(x)} against {len(y)} records; first difference at record, key {first})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
