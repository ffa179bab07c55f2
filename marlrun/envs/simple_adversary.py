"""mpe2's simple_adversary_v3 ("physical deception", Lowe et al. 2017).

One adversary and N good agents; N landmarks, one of them the target. Good
agents know the target, the adversary does not. Agents are
``adversary_0, agent_0, ..., agent_{N-1}`` in teams ``adversary`` and ``good``.

Observations differ in size (the adversary sees 2N + 2N numbers, a good agent 2
more: the target's relative position first). They are zero-padded at the end to
one tensor [envs, agents, 2 + 4N]; ``EnvSpec.agent_obs_sizes`` says how many
leading entries of each agent's row are real, so algorithms slice them back out.

The game score (the paper's): an episode's final positions decide it. Good
agents succeed when the closest of them is within ``success_radius`` of the
target, the adversary when it is. Both distances are read from the good agents'
final observations: ``goal - p_i`` is the first pair of a good agent's row, and
``adversary - p_i`` its first "other agent" pair, so ``goal - adversary`` is
their difference. The observations are exact (MPE adds no noise).

Rewards: mpe2 gives the adversary minus its Euclidean distance to the target; openai's particle worlds, which the
MADDPG paper used, minus the squared distance (``adversary_reward="squared_distance"`` restores that; the good
agents' reward is the same in both). The two set different games: near the target the squared distance barely
rewards closing in, so an adversary that is unsure which landmark is the target loses little by waiting between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mpe2 import simple_adversary_v3
from pettingzoo.utils.conversions import aec_to_parallel

from marlrun.envs.base import EnvSpec
from marlrun.envs.vector import PadObservations, PettingZooVecEnv
from marlrun.errors import require
from marlrun.render import BLUE, GREEN, GREY, RED, WHITE, disc


ADVERSARY_REWARDS = ("distance", "squared_distance")
MPE_VIEW, MPE_SIZE = 1.5, 400  # frames: the square [-1.5, 1.5]^2 of the world in 400 x 400 pixels


@dataclass
class SimpleAdversaryConfig:
    """mpe2 simple_adversary_v3 (physical deception): 1 adversary against N good agents, N landmarks."""

    name: str = "simple_adversary"
    N: int = 2  # good agents, and landmarks
    max_cycles: int = 25  # steps before truncation
    continuous_actions: bool = False  # false: Discrete(5); true: Box(0, 1, (5,)), the strength of each move
    success_radius: float = 0.16  # game score: a side succeeds when it ends this close to the target (2 landmark radii)
    adversary_reward: str = "distance"  # distance (mpe2's) | squared_distance (openai's, the MADDPG paper's)

    def __post_init__(self) -> None:
        require(self.N >= 1, "env.N", f"must be >= 1, got {self.N}")
        require(self.adversary_reward in ADVERSARY_REWARDS, "env.adversary_reward",
                f"unknown reward '{self.adversary_reward}'; pick distance or squared_distance")
        require(self.max_cycles >= 1, "env.max_cycles", "must be >= 1")
        require(self.success_radius > 0, "env.success_radius", "must be > 0")

    def footprint(self, num_envs: int) -> tuple[int, str]:
        """At least how many bytes ``num_envs`` copies hold (every agent's observation of all others, twice), and the
        keys that size them."""
        return (self.N + 1) * (2 + 4 * self.N) * 4 * 2 * num_envs, f"env.N={self.N:,} ({self.N + 1:,} agents)"


def squared_distance_reward(agent, world) -> float:
    """openai's adversary reward: minus the squared distance to the target landmark."""
    return -float(np.sum(np.square(agent.state.p_pos - agent.goal_a.state.p_pos)))


class SimpleAdversaryFactory:
    """Picklable constructor of simple_adversary_v3 as a parallel env, observations padded to one size.

    Built from the library's ``raw_env`` without its argument-checking wrappers (marlrun's actions are always in
    bounds), which are most of the cost of a step of a world this small: about 5,300 steps/s against 2,900.
    """

    def __init__(self, adversary_reward: str, **kwargs):
        self.adversary_reward, self.kwargs = adversary_reward, kwargs

    def __call__(self):
        env = simple_adversary_v3.raw_env(**self.kwargs)
        if self.adversary_reward == "squared_distance":  # the scenario's reward() calls self.adversary_reward
            env.scenario.adversary_reward = squared_distance_reward
        return PadObservations(aec_to_parallel(env))


def simple_adversary_spec(cfg: SimpleAdversaryConfig) -> EnvSpec:
    N, continuous_actions, name = cfg.N, cfg.continuous_actions, cfg.name
    good_size, adversary_size = 2 + 4 * N, 4 * N
    return EnvSpec(
        name=name,
        agent_names=("adversary_0", *(f"agent_{i}" for i in range(N))),
        obs_shape=(good_size,),
        n_actions=5,  # no-op, left, right, down, up (continuous: the strength of each)
        teams=("adversary", *("good",) * N),
        discrete_actions=not continuous_actions,
        homogeneous=False,
        agent_obs_sizes=(adversary_size, *(good_size,) * N),
        action_bounds=(0.0, 1.0),
    )


def mpe_pixel(pos) -> tuple[float, float]:
    """(row, column) in an MPE frame of the world position (x, y)."""
    scale = MPE_SIZE / (2 * MPE_VIEW)
    return (MPE_VIEW - pos[1]) * scale, (pos[0] + MPE_VIEW) * scale


def draw_mpe(world) -> np.ndarray:
    """A frame of an MPE world: discs on the square [-MPE_VIEW, MPE_VIEW]^2 (y up), agents under landmarks (smaller,
    so both stay visible): adversaries red, others blue; landmarks grey, the target green."""
    img = np.full((MPE_SIZE, MPE_SIZE, 3), WHITE, dtype=np.uint8)
    scale = MPE_SIZE / (2 * MPE_VIEW)
    goal = getattr(world.agents[-1], "goal_a", None) if world.agents else None
    for agent in world.agents:
        colour = RED if getattr(agent, "adversary", False) else BLUE
        disc(img, *mpe_pixel(agent.state.p_pos), agent.size * scale, colour)
    for landmark in world.landmarks:
        disc(img, *mpe_pixel(landmark.state.p_pos), landmark.size * scale, GREEN if landmark is goal else GREY)
    return img


class SimpleAdversaryVecEnv(PettingZooVecEnv):
    legend = (("adversary", RED), ("good agent", BLUE), ("goal", GREEN), ("other landmark", GREY))

    def __init__(self, *args, success_radius: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.success_radius = success_radius

    def episode_metrics(self, final_obs: torch.Tensor) -> dict[str, torch.Tensor]:
        good = final_obs[:, 1:]  # [n, N, 2 + 4N]
        n_landmarks = good.shape[1]
        to_goal = good[..., 0:2]  # goal - p_i
        adversary = good[..., 2 + 2 * n_landmarks : 4 + 2 * n_landmarks]  # adversary - p_i
        good_distance = torch.linalg.vector_norm(to_goal, dim=-1).min(1).values
        adversary_distance = torch.linalg.vector_norm(to_goal[:, 0] - adversary[:, 0], dim=-1)
        return {
            "game/good_success": (good_distance < self.success_radius).float(),
            "game/adversary_success": (adversary_distance < self.success_radius).float(),
            "game/good_final_distance": good_distance,
            "game/adversary_final_distance": adversary_distance,
        }

    def frame(self, index: int = 0) -> np.ndarray:
        return draw_mpe(self.unwrapped_copy(index).world)


def make_simple_adversary(cfg: SimpleAdversaryConfig, num_envs: int, num_workers: int, seed: int, device="cpu") -> SimpleAdversaryVecEnv:
    spec = simple_adversary_spec(cfg)
    factory = SimpleAdversaryFactory(cfg.adversary_reward, N=cfg.N, max_cycles=cfg.max_cycles, continuous_actions=cfg.continuous_actions)
    return SimpleAdversaryVecEnv(factory, spec, num_envs, num_workers, seed, device, success_radius=cfg.success_radius)
