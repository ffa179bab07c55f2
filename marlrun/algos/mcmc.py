"""Markov-chain Monte Carlo on the Ising model: the physics reference that MF-Q's temperature curve is compared with.

The lattice energy is the one the environment's physical reward shares out among the spins (sum_i r_i = -E):

    E(s) = -J sum_<ij> s_i s_j - h sum_i s_i        (every bond once)

and the chain samples the Boltzmann distribution pi(s) ~ exp(-E(s) / T) at the physical temperature T = 2 tau, tau
being ``temperature``, the same number as MF-Q's Boltzmann temperature ``algo.temperature``. Why 2 tau: a spin's
own reward is r_i = 0.5 J s_i sum_j s_j + h s_i (each bond's energy is split between its two ends), so a Boltzmann
policy softmax(r / tau) over the immediate reward, its neighbours held still, plays up against down with odds
exp(J sum_j s_j / tau) (h = 0), while the heat bath of E at T has odds exp(2 J sum_j s_j / T): the same odds at
T = 2 tau. Onsager's critical temperature of the infinite square lattice, T_c = 2 J / ln(1 + sqrt 2) ~ 2.269 (units of
J/k), is tau_c = 1 / ln(1 + sqrt 2) ~ 1.135 here. (With h != 0 the per-spin reward weighs the field twice as much,
relative to the bonds, as E does; the sampler follows E.)

One env step is ``sweeps`` sweeps over the lattice, computed inside ``act`` from the current spins (the context's
``prev_actions``); the env then sets every spin to the returned action. Within a sweep:

- scan="checkerboard" (the default, a valid sampler): the sites are split into colour classes, no two neighbours
  in one class (a greedy colouring of the neighbour lists: the two sublattices of a checkerboard on an even torus or
  ring with 4 or 2 neighbours, 4 classes with 8 neighbours, 3 on an odd torus). Class after class, every spin of the
  class is redrawn given its neighbours' current spins, the classes before it already updated: the spins of one
  class do not interact, so updating them together is the same as one after another, and every class update keeps
  pi invariant (a systematic-scan Gibbs / Metropolis sampler);
- scan="synchronous" (not a valid sampler, kept for comparison): every spin at once from the old lattice, as
  agents that all move in the same step do. On a bipartite lattice the two sublattices then form two independent
  chains, each one sampling pi, that meet in one lattice: below T_c they order independently, and half the time
  oppositely (an antiferromagnetic checkerboard that flips every step, xi near 0).

Each spin's redraw (local field f_i = J sum_j s_j + h, beta = 1 / T = 1 / (2 tau)):

- rule="heat_bath" (Glauber): s_i = +1 with probability sigmoid(2 beta f_i) = sigmoid(f_i / tau);
- rule="metropolis": flip with probability min(1, exp(-beta dE)), dE = 2 s_i f_i.

Nothing is learned: ``observe`` keeps nothing, ``update`` returns {}; the state is the random generator. The
evaluation (``greedy=True``) runs the same chain: there is no greedy policy in physics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marlrun.algos.base import Algorithm
from marlrun.envs.base import EnvSpec, VecStep
from marlrun.errors import UserError, require

RULES = ("heat_bath", "metropolis")
SCANS = ("checkerboard", "synchronous")


@dataclass
class MCMCConfig:
    """Markov-chain Monte Carlo of the Ising model (env=ising, physical reward): the physics reference for MF-Q's
    temperature curve. Nothing is learned. It samples exp(-E / T), E the lattice energy the rewards add up to (minus),
    at T = 2 * temperature: ``temperature`` is MF-Q's Boltzmann temperature tau."""

    name: str = "mcmc"
    temperature: float = 1.0  # tau, as MF-Q's algo.temperature; the physical temperature is T = 2 tau (units of J/k): tau_c = 1.135
    rule: str = "heat_bath"  # heat_bath (Glauber) | metropolis
    scan: str = "checkerboard"  # checkerboard: one sublattice after another (valid); synchronous: all spins at once (invalid, for comparison)
    sweeps: int = 1  # sweeps over the lattice per env step

    def __post_init__(self) -> None:
        require(self.temperature > 0, "algo.temperature", f"must be > 0, got {self.temperature}")
        require(self.rule in RULES, "algo.rule", f"unknown rule '{self.rule}'; pick one of {', '.join(RULES)}")
        require(self.scan in SCANS, "algo.scan", f"unknown scan '{self.scan}'; pick one of {', '.join(SCANS)}")
        require(self.sweeps >= 1, "algo.sweeps", f"must be >= 1, got {self.sweeps}")


def colour_classes(index: torch.Tensor) -> list[torch.Tensor]:
    """Sites [N] split into classes with no two neighbours in one class, from neighbour lists ``index`` [N, k]: greedy
    colouring in site order (each site takes the smallest colour none of its neighbours has), so an even periodic
    lattice numbered row by row gets its checkerboard. Neighbour lists are symmetric (j lists i when i lists j)."""
    rows = index.tolist()
    colour = [-1] * len(rows)
    for site, neighbours in enumerate(rows):
        taken = {colour[j] for j in neighbours}
        c = 0
        while c in taken:
            c += 1
        colour[site] = c
    colours = torch.tensor(colour, device=index.device)
    if bool((colours[:, None] == colours[index]).any()):
        raise ValueError("the neighbour lists are not symmetric: no colouring found")
    return [torch.nonzero(colours == c).squeeze(1) for c in range(int(colours.max()) + 1)]


class MCMC(Algorithm):
    requires = frozenset({"ising_energy"})
    suggestion = "It is the Ising model's physics reference, not a learner: pick a learning algorithm for this env (algo=mfq on env=ising)."

    state_keys = ("generator",)

    def __init__(self, cfg: MCMCConfig, spec: EnvSpec, num_envs: int, device: torch.device, seed: int, precision: str = "fp32"):
        super().__init__(cfg, spec, num_envs, device, seed, precision)
        self.beta = 1.0 / (2.0 * cfg.temperature)  # the physical inverse temperature, T = 2 tau
        self._lattice: tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    # ------------------------------------------------------------------ the sweep
    def classes(self, index: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(sites [n], their neighbours [n, k]) of every class updated at once, in update order (cached per lattice)."""
        if self._lattice is None or not (self._lattice[0] is index or torch.equal(self._lattice[0], index)):
            sites = [torch.arange(index.shape[0], device=index.device)] if self.cfg.scan == "synchronous" else colour_classes(index)
            self._lattice = (index, [(c, index[c]) for c in sites])
        return self._lattice[1]

    def redraw(self, own: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        """New spins [E, n] of spins ``own`` [E, n] in local fields ``field`` = J sum_j s_j + h [E, n]."""
        u = torch.rand(own.shape, generator=self.generator, device=own.device)
        if self.cfg.rule == "heat_bath":
            up = u < torch.sigmoid(2.0 * self.beta * field)
            return up.to(own.dtype).mul_(2.0).sub_(1.0)
        delta_e = 2.0 * own * field  # energy change of flipping
        flip = u < torch.exp(-self.beta * delta_e)  # always when dE <= 0
        return torch.where(flip, -own, own)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_steps: int, greedy: bool = False, context: dict | None = None) -> torch.Tensor:
        if not context or "coupling" not in context:
            raise UserError("algo=mcmc needs the lattice's coupling and field in the env's context (env=ising with env.reward=physical)")
        J, h = float(context["coupling"]), float(context["field"])
        spins = context["prev_actions"].to(torch.float32).mul(2.0).sub_(1.0)  # [E, N], the current lattice
        classes = self.classes(context["neighbours"].index)
        for _ in range(self.cfg.sweeps):
            for sites, neighbours in classes:  # synchronous: one class, every site, read from the old lattice
                field = spins[:, neighbours].sum(-1).mul_(J).add_(h)
                spins[:, sites] = self.redraw(spins[:, sites], field)
        return (spins > 0).long()

    # ------------------------------------------------------------------ the contract: nothing to learn
    def observe(self, obs: torch.Tensor, actions: torch.Tensor, step: VecStep, context: dict | None = None) -> dict[str, torch.Tensor]:
        return {}

    def update(self, env_steps: int) -> dict[str, torch.Tensor]:
        return {}

    def schedule(self, env_steps: int) -> dict[str, float]:
        return {"train/temperature": self.cfg.temperature}
