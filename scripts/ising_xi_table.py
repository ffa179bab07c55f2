"""The order parameter xi against the temperature tau, per algorithm and lattice, from scripts/mcmc_vs_mfq_ising.sh.

    python scripts/ising_xi_table.py OUT_DIR

Reads the per-seed final values that `marlrun report` wrote for each sweep under OUT_DIR (OUT_DIR/<sweep>/report/
runs.csv: mcmc, mcmc_synchronous, mfq) and each run's config, and writes OUT_DIR/xi_vs_tau.csv (one row per sweep,
lattice, temperature and metric: mean and the seeds' values), OUT_DIR/xi_vs_tau.md (the tables) and, with
matplotlib, OUT_DIR/xi_vs_tau.png. Two references come with them: Onsager's spontaneous magnetisation of the
infinite square lattice at T = 2 tau, M = (1 - sinh(2 / T)^-4)^(1/8) below tau_c = 1.135, and the Curie-Weiss
(mean-field) magnetisation for 4 neighbours in the same units, m = tanh(2 m / tau), which orders below tau = 2.
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

SWEEPS = {"mcmc": "MCMC (heat bath, checkerboard)", "mcmc_synchronous": "heat bath, all spins at once", "mfq": "MF-Q (paper's setting)"}
METRICS = ("eval/game/xi", "env/xi")


def onsager(tau: float) -> float:
    """Spontaneous magnetisation of the infinite 2D lattice (J = 1) at T = 2 tau."""
    x = math.sinh(1.0 / tau) ** -4  # sinh(2 / T), T = 2 tau
    return (1.0 - x) ** 0.125 if x < 1.0 else 0.0


def curie_weiss(tau: float) -> float:
    """The largest root of m = tanh(2 m / tau): 4 neighbours' mean field, J = 1, in tau's units (T = 2 tau)."""
    if 2.0 / tau <= 1.0:
        return 0.0
    low, high = 1e-12, 1.0  # m - tanh(2 m / tau) < 0 at low, >= 0 at high: bisect
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if mid < math.tanh(2.0 * mid / tau) else (low, mid)
    return high


def read(out: Path) -> dict:
    """(sweep, L, tau, metric) -> [values over seeds]."""
    values = defaultdict(list)
    for sweep in SWEEPS:
        runs = out / sweep / "report" / "runs.csv"
        if not runs.is_file():
            continue
        with open(runs) as f:
            for row in csv.DictReader(f):
                if row["metric"] not in METRICS or row["included"] != "true" or not row["final"]:
                    continue
                folder = Path(row["folder"])
                if not (folder / ".hydra").is_dir():  # the report ran from another directory
                    folder = out / sweep / folder.name
                cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
                values[(sweep, int(cfg.env.L), float(cfg.algo.temperature), row["metric"])].append(float(row["final"]))
    return values


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    values = read(out)
    if not values:
        print(f"no report of a sweep under {out} ({', '.join(f'{s}/report/runs.csv' for s in SWEEPS)})", file=sys.stderr)
        return 1
    with open(out / "xi_vs_tau.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sweep", "L", "tau", "metric", "seeds", "mean", "values"])
        for (sweep, L, tau, metric), v in sorted(values.items()):
            writer.writerow([sweep, L, tau, metric, len(v), round(sum(v) / len(v), 4), " ".join(f"{x:.3f}" for x in v)])

    sizes = sorted({k[1] for k in values})
    taus = sorted({k[2] for k in values})
    sweeps = [s for s in SWEEPS if any(k[0] == s for k in values)]
    lines = []
    for metric in METRICS:
        lines.append(f"\n{metric}: mean over seeds (the seeds' values)\n")
        columns = [(s, L) for L in sizes for s in sweeps if any(k[:2] == (s, L) for k in values)]
        lines.append("| tau | T = 2 tau | " + " | ".join(f"{SWEEPS[s]}, {L}x{L}" for s, L in columns) + " | Onsager (infinite) | Curie-Weiss |")
        lines.append("|---|---|" + "---|" * len(columns) + "---|---|")
        for tau in taus:
            cells = []
            for s, L in columns:
                v = values.get((s, L, tau, metric))
                cells.append(f"{sum(v) / len(v):.2f} ({' '.join(f'{x:.2f}' for x in v)})" if v else "-")
            lines.append(f"| {tau:g} | {2 * tau:g} | " + " | ".join(cells) + f" | {onsager(tau):.2f} | {curie_weiss(tau):.2f} |")
    text = "\n".join(lines).lstrip("\n") + "\n"
    (out / "xi_vs_tau.md").write_text(text)
    print(text)

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), sharey=True, squeeze=False)
    fine = [0.4 + i * 0.01 for i in range(221)]
    styles = {"mcmc": ("tab:blue", "o"), "mcmc_synchronous": ("tab:gray", "x"), "mfq": ("tab:red", "s")}
    for ax, L in zip(axes[0], sizes):
        ax.plot(fine, [onsager(t) for t in fine], "k--", lw=1, label="Onsager, infinite lattice")
        ax.plot(fine, [curie_weiss(t) for t in fine], "k:", lw=1, label="Curie-Weiss (mean field)")
        for s in sweeps:
            colour, marker = styles[s]
            pts = [(t, values[(s, L, t, "eval/game/xi")]) for t in taus if (s, L, t, "eval/game/xi") in values]
            if not pts:
                continue
            ax.plot([t for t, _ in pts], [sum(v) / len(v) for _, v in pts], color=colour, marker=marker, label=SWEEPS[s])
            for t, v in pts:
                ax.scatter([t] * len(v), v, color=colour, s=8, alpha=0.4)
        ax.axvline(1 / math.log(1 + math.sqrt(2)), color="tab:blue", lw=0.5)
        ax.set_title(f"{L}x{L} torus: eval/game/xi, seeds as dots")
        ax.set_xlabel("tau (Boltzmann temperature; T = 2 tau)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("order parameter xi = |N_up - N_down| / N")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "xi_vs_tau.png", dpi=110)
    print(f"wrote {out / 'xi_vs_tau.csv'}, {out / 'xi_vs_tau.md'}, {out / 'xi_vs_tau.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
