"""The contract between the runner and an algorithm, and the compatibility check.

The runner owns the loop; an algorithm owns its learning:

- ``Algorithm(cfg, spec, num_envs, device, seed, precision)``: ``cfg`` is the algorithm's typed config, the dataclass
  schema defined beside its class (``Config``), which states every key's default and meaning once;
- ``act(obs, env_steps, greedy, context)``: actions [E, A] for observations [E, A, ...]; ``context`` is the
  environment's ``context()``: what some algorithms need beyond observations (neighbours and previous actions
  for mean fields), {} for most environments.
- ``observe(obs, actions, step, context)``: the transitions of one vectorised env step, with the ``context`` the
  actions were chosen in (so an algorithm that learns from the global state gets the state of ``obs``).
- ``update(env_steps)``: whatever gradient steps are due; returns scalars to log, named ``train/...``.
- ``schedule(env_steps)``: the values of its schedules (epsilon...), logged at every log step, named ``train/...``.
- ``state_keys``: the attributes that make up its state; ``state_dict()`` / ``load_state_dict()`` save and restore
  them (tensors and plain data only), and ``replay_keys`` name those a checkpoint may leave out (``save_replay``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import deque
from typing import Any, ClassVar

import torch

from marlrun.envs.base import EnvSpec, VecStep
from marlrun.hardware import autocast

REQUIREMENT_HELP = {
    "discrete_actions": ("discrete actions", lambda spec: spec.discrete_actions),
    "homogeneous": ("agents with identical observation and action spaces", lambda spec: spec.homogeneous),
    "fixed_agents": ("agents that stay for the whole episode", lambda spec: not spec.agents_can_die),
    "neighbours": ("a neighbourhood structure (a lattice or positions)", lambda spec: "neighbours" in spec.capabilities),
    "state": ("a global state", lambda spec: "state" in spec.capabilities),
    "one_team": ("all agents on one team", lambda spec: len(spec.team_names) == 1),
    "ising_energy": ("an Ising lattice energy to sample (env=ising with env.reward=physical)", lambda spec: "ising_energy" in spec.capabilities),
}


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """``start`` moving linearly to ``end`` over ``duration`` env steps, then ``end``."""
    frac = min(1.0, step / duration)
    return start + frac * (end - start)


class Algorithm:
    requires: ClassVar[frozenset[str]] = frozenset()
    suggestion: ClassVar[str] = ""  # what to pick instead when an environment does not fit
    # hardware.precision=auto may run its networks in bf16 where the CPU's bf16 is the faster; False for networks so
    # small that casting costs more than bf16 saves (auto then runs fp32; an explicit bf16 still runs bf16)
    auto_bf16: ClassVar[bool] = True
    state_keys: ClassVar[tuple[str, ...]] = ()  # the attributes that make up the learner's state, as checkpoints hold it
    replay_keys: ClassVar[tuple[str, ...]] = ("replay",)  # of those, what a checkpoint leaves out with save_replay=false
    gradient_steps: int = 0  # gradient steps taken so far (per agent), for the updates/s figure
    # the keys that size each attribute, named when a run would not fit in memory (build.check_memory)
    memory_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: Any, spec: EnvSpec, num_envs: int, device: torch.device, seed: int, precision: str = "fp32"):
        self.cfg, self.spec, self.num_envs, self.device, self.precision = cfg, spec, num_envs, device, precision
        self.generator = torch.Generator(device="cpu" if device.type == "meta" else device).manual_seed(seed)  # meta: a size estimate (build.learner_bytes)
        self.pending_files: dict[str, Any] = {}  # records for the run folder (name -> JSON data), handed over by take_files()

    @classmethod
    def check_run(cls, cfg: Any, total_steps: int, num_envs: int) -> None:
        """A UserError when this algorithm, so configured, could not do what the run asks of it in ``total_steps``
        env steps of ``num_envs`` copies (no update would ever happen, a schedule that ends before the run does...).
        Called before anything is built; the schema checks what it can on its own."""

    @classmethod
    def planned_bytes(cls, cfg: Any, spec: EnvSpec, num_envs: int) -> dict[str, int]:
        """Bytes it will collect as it runs beyond what it holds when built (an on-policy rollout), per attribute."""
        return {}

    @classmethod
    def ineffective(cls, cfg: Any, spec: EnvSpec) -> list[str]:
        """Keys set away from their defaults that have no effect on ``spec``'s environment, in words (warnings)."""
        return []

    def autocast(self):
        """The networks' matmuls and convolutions in the run's precision; their outputs are fp32."""
        return autocast(self.device, self.precision)

    @property
    def uses_state(self) -> bool:
        """Whether it learns from the environment's global state (the runner then has the environment provide it)."""
        return "state" in self.requires

    def act(self, obs: torch.Tensor, env_steps: int, greedy: bool = False, context: dict | None = None) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, obs: torch.Tensor, actions: torch.Tensor, step: VecStep, context: dict | None = None) -> dict:
        raise NotImplementedError

    def update(self, env_steps: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def take_files(self) -> dict[str, Any]:
        """Records to keep in the run folder as JSON files (name -> data) written since the last call (the runner
        writes them after each update)."""
        files, self.pending_files = self.pending_files, {}
        return files

    def schedule(self, env_steps: int) -> dict[str, float]:
        """Scalars of the algorithm's schedules at ``env_steps`` (exploration, temperature...), logged each log step."""
        return {}

    # ------------------------------------------------------------------ state, from ``state_keys``
    def state_dict(self, include_replay: bool = True) -> dict:
        return {key: save_state(getattr(self, key), include_replay) for key in self.state_keys
                if include_replay or key not in self.replay_keys}

    def load_state_dict(self, state: dict, generators: bool = True) -> None:
        """Restore ``state``; ``generators=False`` keeps this learner's own random generators (an evaluation reseeds
        them anyway, and a generator's state from another device type does not fit: CUDA's is 16 bytes, the CPU's 5056)."""
        for key in self.state_keys:
            current = getattr(self, key)
            if key not in state and (key in self.replay_keys or current is None):
                continue  # saved without replay (the buffers refill), or a part this config does not have
            if not generators and isinstance(current, torch.Generator):
                continue
            setattr(self, key, load_state(current, state[key]))
        self.loaded()

    def loaded(self) -> None:
        """Called after ``load_state_dict``: recompute what follows from the restored state."""


def set_by_user(cfg: Any, key: str) -> bool:
    """Whether ``cfg``'s ``key`` differs from its schema's default (so a warning about it is worth a line)."""
    field = next(f for f in dataclasses.fields(cfg) if f.name == key)
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    return getattr(cfg, key) != default


def save_state(value, include_replay: bool = True):
    """One attribute as checkpoint data: a generator's state, a module's, optimizer's or buffer's ``state_dict()``
    (``include_replay`` passed on to containers of replays that take it), plain data as it is."""
    if isinstance(value, torch.Generator):
        return value.get_state()
    if hasattr(value, "state_dict"):
        if "include_replay" in inspect.signature(value.state_dict).parameters:
            return value.state_dict(include_replay=include_replay)
        return value.state_dict()
    if isinstance(value, deque):
        return list(value)
    return value


def load_state(current, saved):
    """``saved`` restored into ``current`` (in place where it has state), or the value that replaces it."""
    if isinstance(current, torch.Generator):
        current.set_state(saved.cpu())  # generator states are CPU byte tensors, wherever the checkpoint was loaded to
        return current
    if hasattr(current, "load_state_dict"):
        current.load_state_dict(saved)
        return current
    if isinstance(current, deque):
        return deque(saved)
    return saved


def unmet_needs(algo_cls: type[Algorithm], spec: EnvSpec) -> list[str]:
    """What ``algo_cls`` needs and ``spec`` lacks, in words (empty when it fits)."""
    unmet = []
    for need in sorted(algo_cls.requires):
        text, holds = REQUIREMENT_HELP.get(need, (need, lambda s, n=need: n in s.capabilities))
        if not holds(spec):
            unmet.append(text)
    return unmet
