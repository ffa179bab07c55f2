"""Return distributions as mixtures of Gaussians: the pieces of two distributional critics.

GMAC (Nam, Kim, Park, "GMAC: A Distributional Perspective on Actor-Critic Framework", ICML 2021), for PPO's V:

    V(s) = sum_k w_k N(mu_k, sigma_k^2)          w: softmax, mu: raw, sigma: softplus of the head's 3K outputs
    target Z_t, by sample replacement (a distributional TD(lambda)), backward over the rollout from M components
    drawn from V(s_T):   Y <- a fresh component of V(s'_t) with probability 1 - lambda (always where the episode ended)
                         Z_t = (r_t + gamma (1 - d_t) mu_Y,  gamma (1 - d_t) sigma_Y)        per sample, then Y <- Z_t
    loss: the energy distance between V(s_t) and the equal-weight mixture of the M Gaussians Z_t,
          D(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|, in closed form for Gaussians (``expected_abs_difference``)

The sample-based Gaussian-mixture critic (Shahriari et al., "Revisiting Gaussian Mixture Critics in Off-Policy
Reinforcement Learning: a Sample-Based Approach", 2022; Acme's MoG-MPO), for MADDPG's Q:

    Q(s, a) = sum_k w_k N(mu_k, sigma_k^2)       sigma = init_scale softplus(x) / softplus(0) + 1e-4 (Acme's head)
    targets: z_j ~ Q'(s', mu'(s')), y_j = r + gamma (1 - d) z_j, j = 1..M;  loss: -mean_j log Q(s, a)(y_j)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.nn import functional as F

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
MIN_SCALE = 1e-4  # the smallest standard deviation a head outputs (keeps log-densities and E|Z| finite)
SOFTPLUS_0 = math.log(2.0)


class Mixture(NamedTuple):
    """A mixture of Gaussians per sample: ``weight``, ``mu`` and ``sigma`` are [..., K], the weights summing to 1."""

    weight: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor

    def mean(self) -> torch.Tensor:
        return (self.weight * self.mu).sum(-1)

    def std(self) -> torch.Tensor:
        second = (self.weight * (self.sigma**2 + self.mu**2)).sum(-1)
        return (second - self.mean() ** 2).clamp(min=0.0).sqrt()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log density of values ``x`` [..., M] (M values per mixture) -> [..., M]."""
        z = (x.unsqueeze(-1) - self.mu.unsqueeze(-2)) / self.sigma.unsqueeze(-2)  # [..., M, K]
        log_normal = -0.5 * z**2 - self.sigma.log().unsqueeze(-2) - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(self.weight.clamp(min=1e-30).log().unsqueeze(-2) + log_normal, dim=-1)

    def components(self, m: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``m`` components drawn by weight, with replacement: (mu, sigma), each [..., m]."""
        flat = self.weight.reshape(-1, self.weight.shape[-1]).float()
        index = torch.multinomial(flat, m, replacement=True, generator=generator).view(*self.weight.shape[:-1], m)
        return self.mu.gather(-1, index), self.sigma.gather(-1, index)

    def sample(self, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``m`` values drawn from each mixture, [..., m]."""
        mu, sigma = self.components(m, generator)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device)
        return mu + sigma * noise

    def affine(self, scale: torch.Tensor | float, shift: torch.Tensor | float) -> Mixture:
        """The mixture of ``scale * X + shift`` (scale > 0): locations and scales move together."""
        return Mixture(self.weight, self.mu * scale + shift, self.sigma * scale)


def equal_weights(mu: torch.Tensor, sigma: torch.Tensor) -> Mixture:
    """The equal-weight mixture of the Gaussians (mu, sigma) [..., M]."""
    return Mixture(torch.full_like(mu, 1.0 / mu.shape[-1]), mu, sigma)


def gmac_head(raw: torch.Tensor) -> Mixture:
    """GMAC's value head: [..., 3K] -> weights by softmax, means as they are, standard deviations by softplus."""
    logits, mu, scale = raw.chunk(3, dim=-1)
    return Mixture(logits.softmax(-1), mu, F.softplus(scale) + MIN_SCALE)


def acme_head(raw: torch.Tensor, init_scale: float) -> Mixture:
    """Acme's Gaussian-mixture head: as ``gmac_head`` but scales init_scale softplus(x) / softplus(0), so that a freshly
    initialised head (x near 0) starts at ``init_scale``."""
    logits, mu, scale = raw.chunk(3, dim=-1)
    return Mixture(logits.softmax(-1), mu, init_scale * F.softplus(scale) / SOFTPLUS_0 + MIN_SCALE)


def expected_abs_difference(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """E|X - Y| for independent X ~ N(mu1, sigma1^2), Y ~ N(mu2, sigma2^2) (broadcast): X - Y ~ N(delta, s^2) with
    delta = mu1 - mu2 and s^2 = sigma1^2 + sigma2^2, so E|X - Y| = s sqrt(2/pi) exp(-delta^2 / 2s^2) + delta erf(delta / s sqrt 2)."""
    delta = (mu1 - mu2).abs()
    s = (sigma1**2 + sigma2**2).clamp(min=1e-24).sqrt()
    return s * SQRT_2_OVER_PI * torch.exp(-0.5 * (delta / s) ** 2) + delta * torch.erf(delta / (s * math.sqrt(2.0)))


class _MeanAbsDifference(torch.autograd.Function):
    """sum_kl w_k v_l E|X_k - Y_l| with its gradients in closed form: with delta = mu_k - mu_l and s the pair's scale,
    dE/d mu_k = erf(delta / s sqrt 2) and dE/d sigma_k = sqrt(2/pi) exp(-delta^2 / 2s^2) sigma_k / s. Several times
    faster than autograd through ``expected_abs_difference`` (the K x M pairs are GMAC's whole cost)."""

    @staticmethod
    def forward(ctx, w1, mu1, sigma1, w2, mu2, sigma2):
        delta = mu1.unsqueeze(-1) - mu2.unsqueeze(-2)  # [..., K, M]
        s = (sigma1.unsqueeze(-1) ** 2 + sigma2.unsqueeze(-2) ** 2).clamp_(min=1e-24).sqrt_()
        u = delta / s
        density = torch.exp(u.square().mul_(-0.5)).mul_(SQRT_2_OVER_PI)  # sqrt(2/pi) exp(-delta^2 / 2s^2)
        slope = torch.erf(u.mul_(1.0 / math.sqrt(2.0)))  # erf(delta / s sqrt 2)
        pair = s * density + delta * slope  # E|X - Y| (delta erf(.) = |delta| erf(|.|))
        ctx.save_for_backward(w1, sigma1, w2, sigma2, s, density, slope, pair)
        return (w1.unsqueeze(-2) @ pair @ w2.unsqueeze(-1)).squeeze(-1).squeeze(-1)

    @staticmethod
    def backward(ctx, grad):
        w1, sigma1, w2, sigma2, s, density, slope, pair = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        grads = [None] * 6
        if any(ctx.needs_input_grad[:3]):
            gw1 = g * w1  # [..., K]
            grads[0] = g * (pair @ w2.unsqueeze(-1)).squeeze(-1)
            grads[1] = gw1 * (slope @ w2.unsqueeze(-1)).squeeze(-1)
            grads[2] = gw1 * sigma1 * ((density / s) @ w2.unsqueeze(-1)).squeeze(-1)
        if any(ctx.needs_input_grad[3:]):
            gw2 = g * w2  # [..., M]
            grads[3] = g * (w1.unsqueeze(-2) @ pair).squeeze(-2)
            grads[4] = -gw2 * (w1.unsqueeze(-2) @ slope).squeeze(-2)
            grads[5] = gw2 * sigma2 * (w1.unsqueeze(-2) @ (density / s)).squeeze(-2)
        return tuple(grads)


def mean_abs_difference(p: Mixture, q: Mixture) -> torch.Tensor:
    """E|X - Y| for X ~ p, Y ~ q independent (mixtures [..., K] and [..., L]) -> [...]: the pairwise Gaussian terms
    (``expected_abs_difference``) weighted by the product of the components' weights."""
    return _MeanAbsDifference.apply(p.weight, p.mu, p.sigma, q.weight, q.mu, q.sigma)


def energy_distance(p: Mixture, q: Mixture, target_term: bool = True) -> torch.Tensor:
    """The energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between mixtures p and q, [...].

    ``target_term=False`` leaves out E|Y - Y'|, which does not depend on p: the loss GMAC minimises over p, at a
    fraction of the cost (the M x M target pairs are the largest term)."""
    d = 2.0 * mean_abs_difference(p, q) - mean_abs_difference(p, p)
    return d - mean_abs_difference(q, q) if target_term else d


def sample_replacement_targets(reward: torch.Tensor, terminated: torch.Tensor, ended: torch.Tensor, next_value: Mixture,
                               gamma: float, lam: float, samples: int, generator: torch.Generator | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """GMAC's targets for a rollout: (mu, sigma), each [T, ..., samples], the equal-weight mixture Z_t of each step.

    ``reward``, ``terminated``, ``ended``: [T, ...]; ``next_value``: the value mixture of each step's true successor
    s'_t, [T, ..., K]. Backward from the last step, each of the ``samples`` carried Gaussians Y is replaced by a fresh
    component of V(s'_t) with probability 1 - ``lam`` (always at the last step and where the episode ended, as GAE
    stops there), then Z_t = (r_t + gamma (1 - terminated_t) mu_Y, gamma (1 - terminated_t) sigma_Y) and Y <- Z_t.
    ``lam`` = 1: the discounted sum of the rewards to the rollout's end plus a discounted draw of V there (Monte Carlo
    within an episode); ``lam`` = 0: one-step bootstrapping, r_t + gamma V(s'_t)."""
    T = reward.shape[0]
    fresh_mu, fresh_sigma = next_value.components(samples, generator)  # [T, ..., M]
    replace = torch.rand(fresh_mu.shape, generator=generator, device=fresh_mu.device) >= lam
    replace |= ended.unsqueeze(-1)
    replace[-1] = True
    discount = (gamma * (1.0 - terminated.to(fresh_mu.dtype))).unsqueeze(-1)
    mu, sigma = torch.empty_like(fresh_mu), torch.empty_like(fresh_sigma)
    carry_mu, carry_sigma = fresh_mu[-1], fresh_sigma[-1]
    for t in range(T - 1, -1, -1):
        y_mu = torch.where(replace[t], fresh_mu[t], carry_mu)
        y_sigma = torch.where(replace[t], fresh_sigma[t], carry_sigma)
        carry_mu = mu[t] = reward[t].unsqueeze(-1) + discount[t] * y_mu
        carry_sigma = sigma[t] = discount[t] * y_sigma
    return mu, sigma
