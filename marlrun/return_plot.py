"""The picture of a distributional critic at evaluation: the return distribution it predicts in the episodes' first
states, against the discounted returns those episodes then gave (an episode cut by the time limit adds the critic's
own discounted mean at its last observation, as the critic's training targets bootstrap there).

``runner.evaluate`` asks the algorithm for ``return_distribution(obs, context)`` (PPO with ``critic_distribution=gmac``,
MADDPG with ``critic_distribution=mixture``) in each evaluation copy's first state; the runner draws it here, keeps the
PNG in ``<run>/return_distribution/`` and adds it to TensorBoard's images (``eval/return_distribution``); `marlrun eval`
writes it beside its result, ``<run>/eval/step_<N>_seed_<S>_returns.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from marlrun.algos.distributional import Mixture

FOLDER = "return_distribution"
SHOWN_STATES = 3  # single states drawn beside the pooled density, each with its own observed return


def title(cfg, step: int, episodes: int) -> str:
    """The picture's title for run config ``cfg`` at env step ``step``."""
    return (f"{cfg.algo.name} on {cfg.env.name}, step {step:,}: the critic's return distribution\n"
            f"in the first states of {episodes} evaluation episodes")


def draw(teams: list[tuple[str, Mixture, torch.Tensor]], title: str) -> np.ndarray:
    """An RGB image [H, W, 3], one panel per team (name, mixtures [E, n, K], observed returns [E, n]): the mean of the
    predicted densities over every (copy, agent) start state, a histogram of the observed discounted returns from
    them, and the first few states' own densities, each with its observed return as a dotted line."""
    import matplotlib  # slow to import: only for a distributional critic's evaluations

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(teams), figsize=(6 * len(teams), 4), dpi=100, squeeze=False)
    for ax, (name, mixture, observed) in zip(axes[0], teams):
        flat = Mixture(*(x.reshape(-1, x.shape[-1]).float().cpu() for x in mixture))
        returns = observed.reshape(-1).float().cpu()
        mean, std = flat.mean(), flat.std()
        low = min(returns.min().item(), (mean - 3 * std).min().item())
        high = max(returns.max().item(), (mean + 3 * std).max().item())
        pad = 0.05 * (high - low) + 1e-3
        grid = torch.linspace(low - pad, high + pad, 400)
        density = flat.log_prob(grid.expand(len(returns), -1)).exp()  # [N, G]
        ax.hist(returns.numpy(), bins=min(30, max(5, len(returns) // 2)), density=True, color="0.8", label=f"observed ({len(returns)} states)")
        ax.plot(grid.numpy(), density.mean(0).numpy(), color="k", lw=2, label="predicted, mean over those states")
        for i, colour in zip(range(min(SHOWN_STATES, len(returns))), ("tab:blue", "tab:orange", "tab:green")):
            ax.plot(grid.numpy(), density[i].numpy(), color=colour, lw=1, label=f"state {i}: predicted / observed (dotted)")
            ax.axvline(returns[i].item(), color=colour, ls=":", lw=1.5)
        ax.set_xlim(grid[0].item(), grid[-1].item())
        ax.set_xlabel("discounted return from the first state\n(+ the critic's discounted mean where the time limit cut the episode)", fontsize=9)
        ax.set_ylabel("density")
        ax.set_title(f"team {name}", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def save(image: np.ndarray, folder: Path, name: str) -> Path:
    """The image as ``folder/name`` (a PNG), written whole or not at all."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    path = folder / name
    tmp = path.with_suffix(".png.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
    return path
