"""Blind-particle spread (BPS), the typed task of the SePS paper (Christianos et al., ICML 2021), batched in torch.

Agents come in colours (``groups``: how many of each) and there is one landmark per colour. Every agent is
rewarded for being near the landmark of its own colour, but it sees no colours: its observation is its velocity,
its position and every landmark's position relative to it, in a fixed landmark order. Agents of one colour want the
same thing, agents of different colours different things, and only the reward tells them apart: the setting where
one network for all is a bottleneck and one per agent wastes samples.

The rules are those of the paper's environment (an MPE scenario in the authors' PettingZoo fork, ``large_spread``),
on MPE's physics:

- agent i is of colour ``group[i]``, agents listed colour by colour (``agent_0..`` are colour 0, and so on);
- starts: agents uniform in [-1, 1]^2 at rest, landmarks uniform in [-3, 3]^2; agents do not collide;
- actions: Discrete(5), no-op, left, right, down, up, a force of 5 (MPE's default sensitivity);
- physics (MPE's ``integrate_state``, dt 0.1, damping 0.25, mass 1): p += v dt, then v = 0.75 v + u dt;
- reward after the move: ``reward_scale`` x minus the distance to the own colour's landmark (the fork's env weighs
  the agent's own reward by local_ratio = 0.5 and its global term is 0, so 0.5 is its scale);
- the episode is cut after ``max_cycles`` steps (the paper: 50). Nothing terminates.

Game scores (every episode's end): the agents' mean final distance to their landmark, and the fraction of them on
it (their disc, radius 0.15, over the landmark's, 0.05).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from marlrun.envs.base import EnvSpec, TensorVecEnv, VecStep
from marlrun.errors import require
from marlrun.render import WHITE, disc

DT, DAMPING, SENSITIVITY = 0.1, 0.25, 5.0
AGENT_SIZE, LANDMARK_SIZE = 0.15, 0.05
MOVES = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # MPE's discrete actions
PALETTE = ((220, 40, 40), (40, 80, 220), (40, 160, 60), (230, 150, 20), (150, 60, 190), (30, 170, 180), (120, 80, 40), (90, 90, 90))
VIEW, SIZE = 3.5, 400  # frames: the square [-3.5, 3.5]^2 in 400 x 400 pixels


@dataclass
class BlindSpreadConfig:
    """Blind-particle spread (the SePS paper's BPS): agents of several colours, each rewarded near its colour's
    landmark, none seeing colours. The defaults are the paper's BPS-1."""

    name: str = "blind_spread"
    groups: list[int] = field(default_factory=lambda: [5, 5, 5])  # agents of each colour (the paper's others: [10, 10, 10], [6, 6, 6, 6, 6], [3, 3, 3, 12, 9])
    max_cycles: int = 50  # steps before truncation (the paper's time limit)
    reward_scale: float = 0.5  # reward = -reward_scale x the distance to the own landmark (the paper's env: 0.5)

    def __post_init__(self) -> None:
        require(len(self.groups) >= 1 and min(self.groups) >= 1, "env.groups", f"needs at least one colour of at least one agent, got {list(self.groups)}")
        require(self.max_cycles >= 1, "env.max_cycles", f"must be >= 1, got {self.max_cycles}")
        require(self.reward_scale > 0, "env.reward_scale", f"must be > 0, got {self.reward_scale}")

    def footprint(self, num_envs: int) -> tuple[int, str]:
        """At least how many bytes ``num_envs`` copies hold (every agent's observation, twice), and the keys that size them."""
        n = sum(self.groups)
        return n * (4 + 2 * len(self.groups)) * 4 * 2 * num_envs, f"env.groups={list(self.groups)} ({n:,} agents)"


def blind_spread_spec(cfg: BlindSpreadConfig) -> EnvSpec:
    n = sum(cfg.groups)
    return EnvSpec(
        name=cfg.name,
        agent_names=tuple(f"agent_{i}" for i in range(n)),
        obs_shape=(4 + 2 * len(cfg.groups),),
        n_actions=5,
        teams=("agent",) * n,
    )


def agent_types(cfg: BlindSpreadConfig) -> torch.Tensor:
    """[n] the colour of each agent: the environment's true types (what SePS should find)."""
    return torch.repeat_interleave(torch.arange(len(cfg.groups)), torch.tensor(list(cfg.groups)))


class BlindSpreadVecEnv(TensorVecEnv):
    """``num_envs`` copies stepped as tensors on ``device``; one generator seeded from ``seed`` draws every start,
    re-seeded at each ``reset()`` (so every evaluation sees the same starts)."""

    def __init__(self, cfg: BlindSpreadConfig, num_envs: int, seed: int, device: torch.device | str = "cpu"):
        self.cfg, self.spec = cfg, blind_spread_spec(cfg)
        self.num_envs, self.n_agents, self.device = num_envs, self.spec.n_agents, torch.device(device)
        self.type = agent_types(cfg).to(self.device)
        self.n_landmarks = len(cfg.groups)
        self.seed = int(np.random.SeedSequence([seed, 0xB125]).generate_state(1)[0])
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.moves = MOVES.to(self.device) * SENSITIVITY
        E, A, L = num_envs, self.n_agents, self.n_landmarks
        self.pos = torch.zeros(E, A, 2, device=self.device)
        self.vel = torch.zeros(E, A, 2, device=self.device)
        self.landmarks = torch.zeros(E, L, 2, device=self.device)
        self.steps = torch.zeros(E, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ state
    def _start(self, ids: torch.Tensor) -> None:
        """New episodes in copies ``ids``."""
        n = len(ids)
        uniform = lambda *shape: torch.rand(*shape, generator=self.generator, device=self.device) * 2 - 1  # noqa: E731
        self.pos[ids] = uniform(n, self.n_agents, 2)
        self.vel[ids] = 0.0
        self.landmarks[ids] = 3.0 * uniform(n, self.n_landmarks, 2)
        self.steps[ids] = 0

    def set_state(self, pos: torch.Tensor, vel: torch.Tensor, landmarks: torch.Tensor) -> None:
        """Put every copy in the given state ([E, A, 2], [E, A, 2], [E, L, 2]) at the start of an episode."""
        self.pos.copy_(pos), self.vel.copy_(vel), self.landmarks.copy_(landmarks)
        self.steps.zero_()

    def observe(self) -> torch.Tensor:
        """[E, A, 4 + 2L]: velocity, position, then each landmark minus the position."""
        relative = self.landmarks[:, None, :, :] - self.pos[:, :, None, :]  # [E, A, L, 2]
        return torch.cat([self.vel, self.pos, relative.flatten(2)], dim=-1)

    def distances(self) -> torch.Tensor:
        """[E, A]: each agent's distance to the landmark of its colour."""
        own = self.landmarks[:, self.type]  # [E, A, 2]
        return torch.linalg.vector_norm(self.pos - own, dim=-1)

    # ------------------------------------------------------------------ the VecEnv
    def reset(self) -> torch.Tensor:
        self.generator.manual_seed(self.seed)
        self._start(torch.arange(self.num_envs, device=self.device))
        return self.observe()

    def step_wait(self) -> VecStep:
        actions = self.take_actions()
        self.pos = self.pos + self.vel * DT
        self.vel = self.vel * (1.0 - DAMPING) + self.moves[actions] * DT
        self.steps += 1
        distance = self.distances()
        reward = -self.cfg.reward_scale * distance
        next_obs = self.observe()
        done = self.steps >= self.cfg.max_cycles
        truncated = done[:, None].expand(-1, self.n_agents)
        info = {}
        obs = next_obs
        ended = done.nonzero().squeeze(1)
        if ended.numel():
            info = {"game/final_distance": distance.mean(1), "game/on_landmark": (distance < AGENT_SIZE + LANDMARK_SIZE).float().mean(1)}
            self._start(ended)
            obs = next_obs.index_copy(0, ended, self.observe()[ended])
        return VecStep(
            obs=obs, next_obs=next_obs, reward=reward,
            terminated=torch.zeros_like(truncated), truncated=truncated.clone(),
            alive=torch.ones_like(truncated), episode_end=done, episode_info=info,
        )

    @property
    def legend(self) -> tuple:
        return tuple((f"colour {c}: agents and landmark", PALETTE[c % len(PALETTE)]) for c in range(self.n_landmarks))

    def frame(self, index: int = 0) -> np.ndarray:
        """Copy ``index``: agents as discs of their colour, landmarks as smaller discs with a white ring."""
        self.check_copy(index)
        img = np.full((SIZE, SIZE, 3), WHITE, dtype=np.uint8)
        scale = SIZE / (2 * VIEW)
        pixel = lambda p: ((VIEW - float(p[1])) * scale, (float(p[0]) + VIEW) * scale)  # noqa: E731
        for p, t in zip(self.pos[index].cpu(), self.type.cpu().tolist()):
            disc(img, *pixel(p), AGENT_SIZE * scale, PALETTE[t % len(PALETTE)])
        for c, p in enumerate(self.landmarks[index].cpu()):
            disc(img, *pixel(p), 2 * LANDMARK_SIZE * scale, (0, 0, 0))
            disc(img, *pixel(p), LANDMARK_SIZE * scale, PALETTE[c % len(PALETTE)])
        return img


def make_blind_spread(cfg: BlindSpreadConfig, num_envs: int, num_workers: int, seed: int, device="cpu") -> BlindSpreadVecEnv:
    """The copies, stepped as tensors in this process (``num_workers`` does not apply)."""
    return BlindSpreadVecEnv(cfg, num_envs, seed, device)
