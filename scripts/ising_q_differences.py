"""What MF-Q learned on env=ising: Q(up) - Q(down) against the number of up neighbours, for every run under DIRs.

    python scripts/ising_q_differences.py RUNS_DIR [RUNS_DIR ...] [--csv OUT.csv]

Each run's newest checkpoint is read (so run this before deleting checkpoints). For n = 0..4 up neighbours of a
4-neighbour lattice the learned difference is averaged over the arrangements of the n up neighbours (the mean action
is (4 - n, n) / 4); with env.observation=spins, separately for the agent's own spin down and up. The immediate
reward's difference with the neighbours held still is J (2n - 4): -4, -2, 0, 2, 4. Prints one CSV row per run (and
own spin), then the mean over seeds per lattice size and temperature as a markdown table, in which a run whose mean
difference is negative (a lattice ordered down) is mirrored by the up-down symmetry, dQ(n) -> -dQ(4 - n), so that
seeds ordered either way add up.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from collections import defaultdict
from pathlib import Path

import torch

from marlrun.checkpoint import checkpoint_paths, load_checkpoint
from marlrun.config import load_run_config
from marlrun.metrics import read_metrics
from marlrun.nn import MeanFieldQNetwork


def q_differences(run: Path) -> list[dict]:
    cfg = load_run_config(run)
    if cfg.algo.name != "mfq" or cfg.env.name != "ising" or cfg.env.neighbours != 4:
        return []
    paths = checkpoint_paths(run)
    if not paths:
        return []
    team = load_checkpoint(paths[-1])["algo"]["teams"]["spin"]
    own_spin = cfg.env.get("observation", "spins") == "spins"
    a = cfg.algo
    net = MeanFieldQNetwork(obs_shape=(4 + own_spin,), n_actions=2, use_mean_action=team["controller"] == "mfq",
                            conv_channels=list(a.conv_channels), conv_kernel=a.conv_kernel, obs_hidden=a.obs_hidden,
                            mean_action_hidden=a.mean_action_hidden, hidden=list(a.hidden))
    net.load_state_dict(team["net"])
    records = read_metrics(run)
    xi = next((r["env/xi"] for r in reversed(records) if "env/xi" in r), float("nan"))
    rows = []
    for own in ((-1.0, 1.0) if own_spin else (None,)):
        row = {"run": str(run), "L": cfg.env.L, "temperature": a.temperature, "seed": cfg.seed, "own_spin": "" if own is None else int(own),
               "env_xi": round(xi, 4)}
        for n in range(5):
            arrangements = [list(c) for c in itertools.product((-1.0, 1.0), repeat=4) if c.count(1.0) == n]
            obs = torch.tensor([([own] if own is not None else []) + c for c in arrangements])
            mean_action = torch.tensor([[(4 - n) / 4, n / 4]]).expand(len(arrangements), 2)
            with torch.no_grad():
                q = net(obs, mean_action)
            row[f"dq_n{n}"] = round(float((q[:, 1] - q[:, 0]).mean()), 3)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = [row for d in args.dirs for run in sorted(p.parent for p in d.rglob("metrics.jsonl")) for row in q_differences(run)]
    if not rows:
        print("no MF-Q runs on a 4-neighbour Ising lattice with a checkpoint found", file=sys.stderr)
        return 1
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(rows[0]))
            out.writeheader()
            out.writerows(rows)
    groups = defaultdict(list)
    for row in rows:
        groups[(row["L"], row["own_spin"], row["temperature"])].append(row)
    print("\n| L | own spin | tau | seeds | " + " | ".join(f"dQ(n={n})" for n in range(5)) + " | env/xi |")
    print("|---|---|---|---|" + "---|" * 6)
    for (L, own, tau), members in sorted(groups.items()):
        oriented = [[r[f"dq_n{n}"] for n in range(5)] for r in members]
        oriented = [dq if sum(dq) >= 0 else [-v for v in reversed(dq)] for dq in oriented]
        means = [sum(dq[n] for dq in oriented) / len(oriented) for n in range(5)]
        xi = sum(r["env_xi"] for r in members) / len(members)
        print(f"| {L} | {own if own != '' else '-'} | {tau} | {len(members)} | " + " | ".join(f"{m:+.2f}" for m in means) + f" | {xi:.2f} |")
    print("| (immediate reward, neighbours held) | | | | -4.00 | -2.00 | +0.00 | +2.00 | +4.00 | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
