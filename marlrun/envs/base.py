"""What every environment adapter hands the runner: tensors with leading dims [envs, agents, ...]."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class EnvSpec:
    """Static facts about a multi-agent environment, used to build algorithms and check compatibility."""

    name: str
    agent_names: tuple[str, ...]
    obs_shape: tuple[int, ...]  # of the observation tensor; agents with smaller observations are zero-padded to it
    n_actions: int  # discrete: number of actions; continuous: size of the action vector
    teams: tuple[str, ...]  # team of each agent
    discrete_actions: bool = True
    homogeneous: bool = True  # every agent has the same observation and action spaces
    obs_storage_dtype: torch.dtype = torch.float32  # how replay may store observations without loss
    capabilities: frozenset[str] = field(default_factory=frozenset)
    agent_obs_sizes: tuple[int, ...] = ()  # flat observation size of each agent (its leading entries); () = all full
    action_bounds: tuple[float, float] = (0.0, 1.0)  # continuous actions: each component's range
    agents_can_die: bool = False  # agents may leave before their episode ends (``alive`` masks them)

    @property
    def n_agents(self) -> int:
        return len(self.agent_names)

    def obs_size(self, agent: int) -> int:
        """Number of meaningful entries in ``agent``'s flattened observation (the rest is padding)."""
        return self.agent_obs_sizes[agent] if self.agent_obs_sizes else math.prod(self.obs_shape)

    def team_members(self, team: str) -> list[int]:
        return [i for i, t in enumerate(self.teams) if t == team]

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
