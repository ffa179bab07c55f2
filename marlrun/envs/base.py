"""What every environment adapter hands the runner: tensors with leading dims [envs, agents, ...]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class EnvSpec:
    """Static facts about a multi-agent environment, used to build algorithms and check compatibility."""

    name: str
    agent_names: tuple[str, ...]
    obs_shape: tuple[int, ...]
    n_actions: int
    teams: tuple[str, ...]  # team of each agent
    discrete_actions: bool = True
    homogeneous: bool = True  # every agent has the same observation and action spaces
    obs_storage_dtype: torch.dtype = torch.float32  # how replay may store observations without loss
    capabilities: frozenset[str] = field(default_factory=frozenset)

    @property
    def n_agents(self) -> int:
        return len(self.agent_names)

    @property
    def team_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.teams))


class VecStep(NamedTuple):
    """One step of every environment copy. Shapes: [E, A, ...] unless noted."""

    obs: torch.Tensor  # observation to act on next (after automatic reset where an episode ended)
    next_obs: torch.Tensor  # true successor of the previous observation (the final one where an episode ended)
    reward: torch.Tensor  # float32
    terminated: torch.Tensor  # bool: the agent reached a terminal state (no bootstrap)
    truncated: torch.Tensor  # bool: the episode was cut by a time limit (bootstrap from next_obs)
    alive: torch.Tensor  # bool: the agent acted in this step
    episode_end: torch.Tensor  # [E] bool: this copy's episode ended and it was reset
