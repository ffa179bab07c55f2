"""The contract between the runner and an algorithm, and the compatibility check.

The runner owns the loop; an algorithm owns its learning:

- ``act(obs, env_steps, greedy, context)``: actions [E, A] for observations [E, A, ...]; ``context`` is the
  environment's ``context()``: what some algorithms need beyond observations (neighbours and previous actions
  for mean fields), {} for most environments.
- ``observe(obs, actions, step, context)``: the transitions of one vectorised env step, with the ``context`` the
  actions were chosen in (so an algorithm that learns from the global state gets the state of ``obs``).
- ``update(env_steps)``: whatever gradient steps are due; returns scalars to log.
- ``schedule(env_steps)``: the values of its schedules (epsilon...), logged at every log step.
- ``state_dict()`` / ``load_state_dict()``: tensors and plain data only.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from marlrun.envs.base import EnvSpec, VecStep
from marlrun.errors import UserError

REQUIREMENT_HELP = {
    "discrete_actions": ("discrete actions", lambda spec: spec.discrete_actions),
    "homogeneous": ("agents with identical observation and action spaces", lambda spec: spec.homogeneous),
    "fixed_agents": ("agents that stay for the whole episode", lambda spec: not spec.agents_can_die),
    "neighbours": ("a neighbourhood structure (a lattice or positions)", lambda spec: "neighbours" in spec.capabilities),
    "state": ("a global state", lambda spec: "state" in spec.capabilities),
    "one_team": ("all agents on one team", lambda spec: len(spec.team_names) == 1),
    "ising_energy": ("an Ising lattice energy to sample (env=ising with env.reward=physical)", lambda spec: "ising_energy" in spec.capabilities),
}


class Algorithm:
    name: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()
    suggestion: ClassVar[str] = ""  # what to pick instead when an environment does not fit
    # hardware.precision=auto may run its networks in bf16 where the CPU's bf16 is the faster; False for networks so
    # small that casting costs more than bf16 saves (auto then runs fp32; an explicit bf16 still runs bf16)
    auto_bf16: ClassVar[bool] = True
    gradient_steps: int = 0  # gradient steps taken so far (per agent), for the updates/s figure

    @property
    def uses_state(self) -> bool:
        """Whether it learns from the environment's global state (the runner then has the environment provide it)."""
        return "state" in self.requires

    def act(self, obs: torch.Tensor, env_steps: int, greedy: bool = False, context: dict | None = None) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, obs: torch.Tensor, actions: torch.Tensor, step: VecStep, context: dict | None = None) -> None:
        raise NotImplementedError

    def update(self, env_steps: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def schedule(self, env_steps: int) -> dict[str, float]:
        """Scalars of the algorithm's schedules at ``env_steps`` (exploration, temperature...), logged each log step."""
        return {}

    def state_dict(self, include_replay: bool = True) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


def check_compatible(algo_cls: type[Algorithm], spec: EnvSpec) -> None:
    """Raise a UserError naming what the algorithm needs and the environment lacks."""
    for need in sorted(algo_cls.requires):
        text, holds = REQUIREMENT_HELP.get(need, (need, lambda s, n=need: n in s.capabilities))
        if not holds(spec):
            hint = f" {algo_cls.suggestion}" if algo_cls.suggestion else ""
            raise UserError(f"algo={algo_cls.name} needs {text}, which env={spec.name} does not have.{hint}")
