"""SUPER experience-selection heuristics (Gerstgrasser et al., NeurIPS 2023).

After each rollout fragment every agent scores its new transitions by |TD error| and shares the "surprising"
ones with the other agents. ``beta`` in (0, 1] is the target fraction shared (the bandwidth), ``k`` the number of
recent |TD| values the window heuristics remember.

* ``none``: share nothing (independent learners).
* ``all``: share every transition.
* ``quantile``: share ``td`` if it exceeds the ``(1 - beta)`` quantile of the agent's last ``k`` |TD| values
  (the current batch included). On a stationary stream this shares a fraction ``beta``, whatever the distribution.
* ``gaussian``: share ``td > mean + c * std`` of the same window, ``c = Phi^-1(1 - beta)`` (Phi = standard normal
  CDF). Exact for normally distributed |TD| values, approximate otherwise.
* ``stochastic``: share each transition of the current batch independently with probability
  ``p_i = min(1, beta * N_a * td_i / sum_j td_j)``, i.e. proportional to its |TD| and ``beta`` in expectation
  (less when the clamp at 1 bites).

Every heuristic works on ``td_abs [A, N]`` with a validity mask ``valid [A, N]`` (e.g. alive agents) and returns
a share mask ``[A, N]`` that is never True where ``valid`` is False, vectorised over agents.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor


def shared_fraction(mask: Tensor, valid: Tensor) -> Tensor:
    """Fraction of each agent's valid transitions that were shared, ``[A]`` float32 (0 where none is valid)."""
    n_valid = valid.sum(dim=1)
    n_shared = (mask & valid).sum(dim=1)
    return torch.where(n_valid > 0, n_shared / n_valid.clamp_min(1), torch.zeros_like(n_valid)).to(torch.float32)


class SharingHeuristic:
    """Base class: ``select(td_abs, valid) -> mask``; stateless heuristics have an empty state dict."""

    name = "base"

    def __init__(self, n_agents: int, beta: float, device: torch.device | str = "cpu", generator: torch.Generator | None = None):
        self.n_agents = int(n_agents)
        self.beta = float(beta)
        self.device = torch.device(device)
        self.generator = generator

    def _check(self, td_abs: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        if td_abs.dim() != 2 or td_abs.shape[0] != self.n_agents:
            raise ValueError(f"td_abs must be [A={self.n_agents}, N], got {tuple(td_abs.shape)}")
        td_abs = td_abs.detach().to(self.device)
        if valid is None:
            valid = torch.ones(td_abs.shape, dtype=torch.bool, device=self.device)
        elif valid.shape != td_abs.shape:
            raise ValueError(f"valid must match td_abs {tuple(td_abs.shape)}, got {tuple(valid.shape)}")
        return td_abs, valid.to(self.device, torch.bool)

    def select(self, td_abs: Tensor, valid: Tensor | None = None) -> Tensor:
        """``td_abs [A, N]``, ``valid [A, N]`` bool (None: all valid) -> share mask ``[A, N]`` bool."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class NoSharing(SharingHeuristic):
    """Share nothing."""

    name = "none"

    def select(self, td_abs: Tensor, valid: Tensor | None = None) -> Tensor:
        td_abs, valid = self._check(td_abs, valid)
        return torch.zeros_like(valid)


class ShareAll(SharingHeuristic):
    """Share every valid transition."""

    name = "all"

    def select(self, td_abs: Tensor, valid: Tensor | None = None) -> Tensor:
        td_abs, valid = self._check(td_abs, valid)
        return valid.clone()


class _WindowHeuristic(SharingHeuristic):
    """Keeps each agent's last ``k`` valid |TD| values in a NaN-initialised ring ``window [A, k]``.

    ``select`` first appends the batch's valid values (in order) to the window, then compares the batch against
    :meth:`threshold`, computed from the updated window. NaN slots (window not yet full) are ignored.
    """

    def __init__(self, n_agents: int, beta: float, window: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None):
        super().__init__(n_agents, beta, device, generator)
        self.k = int(window)
        self.window = torch.full((self.n_agents, self.k), math.nan, dtype=torch.float32, device=self.device)
        self.ptr = torch.zeros(self.n_agents, dtype=torch.int64, device=self.device)

    def _append(self, td_abs: Tensor, valid: Tensor) -> None:
        """Write agent ``a``'s valid values at ``(ptr_a + rank) % k``, rank = order among its valid entries.

        If an agent has more than ``k`` valid values in the batch only its last ``k`` are kept (as if appended
        one at a time), so positions written are unique.
        """
        rank = torch.cumsum(valid.long(), dim=1) - 1  # [A, N]
        n_valid = valid.sum(dim=1)  # [A]
        keep = valid & (rank >= (n_valid - self.k)[:, None])
        agent, col = keep.nonzero(as_tuple=True)
        pos = (self.ptr[agent] + rank[agent, col]) % self.k
        self.window[agent, pos] = td_abs[agent, col].to(self.window.dtype)
        self.ptr = (self.ptr + n_valid) % self.k

    def threshold(self) -> Tensor:
        """Per-agent share threshold ``[A]`` from the current window (NaN for an agent with an empty window)."""
        raise NotImplementedError

    def select(self, td_abs: Tensor, valid: Tensor | None = None) -> Tensor:
        td_abs, valid = self._check(td_abs, valid)
        self._append(td_abs, valid)
        # td > NaN is False: an agent that has never seen a valid value shares nothing
        return valid & (td_abs > self.threshold()[:, None].to(td_abs.dtype))

    def state_dict(self) -> dict:
        return {"window": self.window.clone(), "ptr": self.ptr.clone()}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["window"].shape) != tuple(self.window.shape):
            raise ValueError(f"{self.name} state has window {tuple(state['window'].shape)}, expected {tuple(self.window.shape)}")
        self.window.copy_(state["window"])
        self.ptr.copy_(state["ptr"])


class QuantileSharing(_WindowHeuristic):
    """Share ``td > q_{1-beta}(window)``: the ``(1 - beta)`` quantile with linear interpolation (numpy's default).

    For ``beta = 1`` the threshold is ``-inf`` (share everything) rather than the window's minimum, which ``>``
    would exclude.
    """

    name = "quantile"

    def threshold(self) -> Tensor:
        if self.beta >= 1.0:
            return torch.full((self.n_agents,), -math.inf, device=self.device)
        return torch.nanquantile(self.window, 1.0 - self.beta, dim=1)


class GaussianSharing(_WindowHeuristic):
    """Share ``td > mu + c * sigma``: fit a normal to the window, share its upper ``beta`` tail.

    ``mu`` and ``sigma`` are the window's mean and (population, ddof = 0) standard deviation, and
    ``c = Phi^-1(1 - beta)`` (about 1.2816 for beta = 0.1), so ``P(X > mu + c sigma) = beta`` for normal ``X``.
    |TD| values are not normal (a half-normal stream shares ~0.116 at beta = 0.1), so this only approximates beta.
    """

    name = "gaussian"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.c = -math.inf if self.beta >= 1.0 else NormalDist().inv_cdf(1.0 - self.beta)

    def threshold(self) -> Tensor:
        present = ~torch.isnan(self.window)
        count = present.sum(dim=1).clamp_min(1)
        x = torch.where(present, self.window, torch.zeros_like(self.window))
        mean = x.sum(dim=1) / count
        var = torch.where(present, (self.window - mean[:, None]) ** 2, torch.zeros_like(x)).sum(dim=1) / count
        # NB: the original SUPER code used the variance here, i.e. mean + c * var; the standard deviation is correct.
        thr = mean + self.c * var.sqrt() if math.isfinite(self.c) else torch.full_like(mean, -math.inf)
        return torch.where(present.any(dim=1), thr, torch.full_like(thr, math.nan))


class StochasticSharing(SharingHeuristic):
    """Share transition ``i`` of agent ``a`` with probability ``p_i = min(1, beta * N_a * td_i / sum_j td_j)``.

    Sums run over the agent's valid entries of the current batch, ``N_a`` counts them; the expected number shared
    is ``sum_i p_i <= beta * N_a``. If all of an agent's |TD| are 0, each is shared with probability ``beta``.
    """

    name = "stochastic"

    def probabilities(self, td_abs: Tensor, valid: Tensor | None = None) -> Tensor:
        """Per-transition share probabilities ``[A, N]`` (0 where not valid)."""
        td_abs, valid = self._check(td_abs, valid)
        td = torch.where(valid, td_abs, torch.zeros_like(td_abs))
        n_valid = valid.sum(dim=1, keepdim=True).to(td.dtype)
        total = td.sum(dim=1, keepdim=True)
        p = self.beta * n_valid * td / torch.where(total > 0, total, torch.ones_like(total))
        p = torch.where(total > 0, p, torch.full_like(p, self.beta)).clamp(max=1.0)
        return torch.where(valid, p, torch.zeros_like(p))

    def select(self, td_abs: Tensor, valid: Tensor | None = None) -> Tensor:
        p = self.probabilities(td_abs, valid)
        u = torch.rand(p.shape, generator=self.generator, device=self.device, dtype=p.dtype)
        return u < p  # p = 0 where not valid, and u >= 0, so invalid entries are never shared


HEURISTICS = {cls.name: cls for cls in (NoSharing, ShareAll, QuantileSharing, GaussianSharing, StochasticSharing)}


def make_heuristic(name: str, n_agents: int, beta: float, window: int, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> SharingHeuristic:
    """Build the heuristic called ``name`` (one of :data:`HEURISTICS`)."""
    if name not in HEURISTICS:
        raise ValueError(f"unknown sharing heuristic '{name}'; pick one of {', '.join(HEURISTICS)}")
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"sharing beta must be in (0, 1], got {beta}")
    if int(window) < 1:
        raise ValueError(f"sharing window must be >= 1, got {window}")
    cls = HEURISTICS[name]
    if issubclass(cls, _WindowHeuristic):
        return cls(n_agents, beta, window, device, generator)
    return cls(n_agents, beta, device, generator)
