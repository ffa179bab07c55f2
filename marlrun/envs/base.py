"""What every environment adapter hands the runner: tensors with leading dims [envs, agents, ...]."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from marlrun.errors import UserError


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
    state_shape: tuple[int, ...] = ()  # the global state's shape, where the environment has one (capability "state")

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


def team_of(agent: str) -> str:
    """An agent's team from its name: up to its last ``_<number>`` (``adversary_0`` -> ``adversary``), else the name."""
    match = re.fullmatch(r"(.+?)_?\d+", agent)
    return match.group(1) if match else agent


def agent_teams(agents: tuple[str, ...], teams: list[str] | None) -> tuple[str, ...]:
    """Each agent's team: ``teams`` as configured (``env.teams``, one per agent), else from the agents' names."""
    if teams is None:
        return tuple(team_of(a) for a in agents)
    if len(teams) != len(agents):
        raise UserError(f"env.teams: gives {len(teams)} teams for {len(agents)} agents ({', '.join(agents)}); give one per agent, in that order")
    return tuple(str(t) for t in teams)


def discrete_size(spaces: list, where: str, instead: str) -> int:
    """The one number of actions of these agents' Discrete action spaces; a UserError where they differ."""
    sizes = {int(s.n) for s in spaces}
    if len(sizes) > 1:
        raise UserError(f"{where}: the agents have different numbers of actions ({', '.join(map(str, sorted(sizes)))}); "
                        f"marlrun needs one Discrete(n) for all ({instead})")
    return sizes.pop()


def box_bounds(spaces: list) -> tuple[tuple[float, float], np.ndarray | None, np.ndarray | None]:
    """What a policy acts in for these agents' Box action spaces: their bounds where one (low, high) holds for every
    component of every agent (then None, None), else (-1, 1) and the [agents, K] bounds to map it onto."""
    lows = np.stack([s.low for s in spaces]).astype(np.float32)
    highs = np.stack([s.high for s in spaces]).astype(np.float32)
    if (lows == lows.flat[0]).all() and (highs == highs.flat[0]).all():
        return (float(lows.flat[0]), float(highs.flat[0])), None, None
    return (-1.0, 1.0), lows, highs


class VecStep(NamedTuple):
    """One step of every environment copy. Shapes: [E, A, ...] unless noted."""

    obs: torch.Tensor  # observation to act on next (after automatic reset where an episode ended)
    next_obs: torch.Tensor  # true successor of the previous observation (the final one where an episode ended)
    reward: torch.Tensor  # float32
    terminated: torch.Tensor  # bool: the agent reached a terminal state (no bootstrap)
    truncated: torch.Tensor  # bool: the episode was cut by a time limit (bootstrap from next_obs)
    alive: torch.Tensor  # bool: the agent acted in this step
    episode_end: torch.Tensor  # [E] bool: this copy's episode ended and it was reset
    episode_info: dict[str, torch.Tensor] = {}  # name -> [E]: game scores of the episodes that ended (read where episode_end)
    next_state: torch.Tensor | None = None  # [E, *state_shape]: the true successor global state (capability "state")


class VecEnv:
    """What the runner calls on a batched environment; adapters subclass it and override what they have.

    ``reset() -> obs``; ``step_async(actions)`` then ``step_wait() -> VecStep`` (or ``step``); attributes ``spec``,
    ``num_envs``, ``n_agents``, ``device``; ``frame(index)``: a picture of one copy.
    """

    spec: EnvSpec
    num_envs: int
    n_agents: int
    device: torch.device
    worker_processes: int = 0  # processes stepping the copies (0: this one), so torch knows the cores left to it
    provide_state: bool = False  # set by the runner for an algorithm that learns from the global state: context()["state"], VecStep.next_state

    def reset(self) -> torch.Tensor:
        raise NotImplementedError

    def step_async(self, actions: torch.Tensor) -> None:
        raise NotImplementedError

    def step_wait(self) -> "VecStep":
        raise NotImplementedError

    def step(self, actions: torch.Tensor) -> "VecStep":
        self.step_async(actions)
        return self.step_wait()

    def episode_metrics(self, final_obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Game metrics computed from final observations [E, A, ...]: name -> [E]. None by default."""
        return {}

    def context(self) -> dict:
        """What an algorithm needs beyond observations about the current state (neighbours; ``state``, the global
        state [E, *state_shape], where the spec has the "state" capability). The runner hands the context an
        algorithm acted in back to it with that step's transitions. None by default."""
        return {}

    def state_metrics(self) -> dict[str, float]:
        """Scalars of the current state of the copies, logged at every log step. None by default."""
        return {}

    legend: tuple = ()  # (name, RGB) pairs: what the colours of frame() show (written under evaluation animations)

    def frame(self, index: int = 0) -> np.ndarray:
        """A picture (uint8 [H, W, 3]) of copy ``index`` as it is now; every frame of one environment has the same
        size. An environment that can be drawn overrides this (its painter lives in its module, with the shared
        colours and pixel helpers of ``marlrun.render``)."""
        self.check_copy(index)
        raise UserError(f"cannot draw {type(self).__name__} (env {self.spec.name!r}): this environment cannot be drawn (it has no frame())")

    def check_copy(self, index: int) -> None:
        """IndexError unless ``index`` names one of the copies."""
        if not 0 <= index < self.num_envs:
            raise IndexError(f"copy {index} of an environment with {self.num_envs} copies")

    def close(self) -> None:
        pass


class TensorVecEnv(VecEnv):
    """A VecEnv whose copies are tensors stepped in the training process: ``step_async`` only keeps the actions
    [E, A] (long), and ``step_wait`` takes them with ``take_actions()``."""

    _actions: torch.Tensor | None = None

    def step_async(self, actions: torch.Tensor) -> None:
        self._actions = actions.reshape(self.num_envs, self.n_agents).to(self.device).long()

    def take_actions(self) -> torch.Tensor:
        if self._actions is None:
            raise RuntimeError("step_wait without step_async")
        actions, self._actions = self._actions, None
        return actions


class Neighbours:
    """Who is whose neighbour in the current state, for mean-field algorithms.

    ``mean(actions, n_actions)`` turns actions [E, A] (long; -1 = no action: dead, or no previous step) into each
    agent's neighbourhood mean one-hot action [E, A, n_actions], counting only neighbours with an action
    (a row with none is all zeros).
    """

    def mean(self, actions: torch.Tensor, n_actions: int) -> torch.Tensor:
        raise NotImplementedError


def one_hot_or_zero(actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """One-hot float rows of ``actions`` [...] -> [..., n_actions]; an action of -1 gives a row of zeros."""
    return (actions.unsqueeze(-1) == torch.arange(n_actions, device=actions.device)).to(torch.float32)


class IndexNeighbours(Neighbours):
    """A fixed neighbourhood: ``index`` [A, k] lists the k neighbours of every agent (a lattice)."""

    def __init__(self, index: torch.Tensor):
        self.index = index
        self.flat = index.reshape(1, -1)  # [1, A * k]
        self.ones = torch.ones(index.shape[1], device=index.device)

    def mean(self, actions: torch.Tensor, n_actions: int) -> torch.Tensor:
        E, A, k = actions.shape[0], self.index.shape[0], self.index.shape[1]
        where = self.flat.expand(E, -1)
        # per action (and for "has an action"): gather the neighbours' flags [E, A * k] and add up each agent's k
        # (flat gathers and a matrix-vector sum are several times faster than gathering [E, A, k, n] one-hot rows)
        flags = [actions == a for a in range(n_actions)] + [actions >= 0]
        counts = torch.stack([torch.gather(f.to(torch.float32), 1, where).view(E, A, k) @ self.ones for f in flags], dim=-1)
        return counts[..., :n_actions] / counts[..., n_actions:].clamp(min=1.0)


class MaskNeighbours(Neighbours):
    """A neighbourhood that changes every step: ``mask`` [E, A, A] bool, mask[e, i, j] = j is a neighbour of i."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def mean(self, actions: torch.Tensor, n_actions: int) -> torch.Tensor:
        total = torch.bmm(self.mask.to(torch.float32), one_hot_or_zero(actions, n_actions))
        return total / total.sum(-1, keepdim=True).clamp(min=1.0)
