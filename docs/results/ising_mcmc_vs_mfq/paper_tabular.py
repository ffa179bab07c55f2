"""A cross-check outside marlrun: the MF-Q paper's Ising learner as its released code describes it, re-written here in
numpy (vectorised over the spins) from that description, to see whether the paper's setting itself puts MF-Q's
transition near MCMC's.

The setting (mlii/mfrl main_MFQ_Ising.py): an L x L torus, 4 neighbours, h = 0; one Q table per spin, 5 states (the
number of up neighbours in the lattice the spin acts on) x 2 actions, zero at the start; every step every spin plays
a Boltzmann action softmax(Q[n] / tau) (the code's exploration temperature starts at 0.3 and never goes below tau, so
it is tau throughout for tau >= 0.3), all spins at once; its reward is 0.5 * s_i * (sum of the neighbours' new spins);
Q[n, a] <- Q[n, a] + 0.1 (r - Q[n, a]) (no bootstrap); at most 10,000 steps, stopping once the order parameter has
stayed within 0.001 of its running maximum for 500 steps.

    python docs/results/ising_mcmc_vs_mfq/paper_tabular.py > docs/results/ising_mcmc_vs_mfq/paper_tabular.md

Prints, per lattice and temperature, over 3 seeds: the order parameter when the run stopped (the paper's final
state), its running maximum (what the code prints as MaxO), the mean over the last 500 steps, the step it stopped
at, and the learned Q(up) - Q(down) per number of up neighbours (mean over spins and seeds, each seed mirrored,
dQ(n) -> -dQ(4 - n), where its mean is negative, so that an ordered lattice counts as up).
"""

import numpy as np

TEMPS = (0.6, 0.8, 1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0, 2.4)


def run(tau, L, seed, steps=10_000, lr=0.1, patience=500):
    rng = np.random.default_rng(seed)
    N = L * L
    x, y = np.divmod(np.arange(N), L)
    neighbours = np.stack([((x - 1) % L) * L + y, ((x + 1) % L) * L + y, x * L + (y - 1) % L, x * L + (y + 1) % L], 1)
    up = rng.integers(0, 2, N)
    Q = np.zeros((N, 5, 2))
    sites = np.arange(N)
    best, settled, history = 0.0, 0, []
    for t in range(steps):
        n = up[neighbours].sum(1)  # the state: up neighbours before the move
        q = Q[sites, n]
        p_up = 1.0 / (1.0 + np.exp(-np.clip((q[:, 1] - q[:, 0]) / tau, -50, 50)))
        a = (rng.random(N) < p_up).astype(int)  # every spin at once
        s = 2 * a - 1
        r = 0.5 * s * s[neighbours].sum(1)  # on the new lattice
        Q[sites, n, a] += lr * (r - Q[sites, n, a])
        up = a
        xi = abs(s.mean())
        history.append(xi)
        best = max(best, xi)
        settled = settled + 1 if abs(best - xi) < 0.001 else 0
        if settled == patience:
            break
    dq = (Q[:, :, 1] - Q[:, :, 0]).mean(0)
    if dq.mean() < 0:  # orient as if the majority were up: the up-down mirror maps dQ(n) to -dQ(4 - n)
        dq = -dq[::-1]
    return xi, best, float(np.mean(history[-patience:])), t + 1, dq


def main():
    print("| L | tau | xi at the stop (seeds) | MaxO (seeds) | mean xi, last 500 steps | steps | dQ(n=0..4) |")
    print("|---|---|---|---|---|---|---|")
    for L in (10, 32):
        for tau in TEMPS:
            runs = [run(tau, L, seed) for seed in range(3)]
            final = " ".join(f"{r[0]:.2f}" for r in runs)
            best = " ".join(f"{r[1]:.2f}" for r in runs)
            last = np.mean([r[2] for r in runs])
            length = " ".join(str(r[3]) for r in runs)
            dq = " ".join(f"{v:+.1f}" for v in np.mean([r[4] for r in runs], 0))
            print(f"| {L} | {tau} | {final} | {best} | {last:.2f} | {length} | {dq} |", flush=True)


if __name__ == "__main__":
    main()
