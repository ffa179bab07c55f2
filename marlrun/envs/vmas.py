"""VMAS scenarios (``env=vmas env.scenario=navigation``): copies stepped by VMAS itself, as tensors on the training
device (CPU or CUDA), with no worker processes; observations, rewards and actions never leave the device.

VMAS (Bettini et al. 2022) simulates ``num_envs`` copies of a scenario in one batch of torch operations. Each agent's
observation is a vector (zero-padded at the end to the largest agent's, as PettingZoo's are); actions are what the
scenario offers for ``continuous_actions``: Box (forces, in each agent's ``u_range``; mapped from [-1, 1] where the
bounds differ between components or agents) or Discrete. A copy's episode ends when the scenario says it is done
(``terminated``: no bootstrap) or after ``max_steps`` (``truncated``); ended copies are reset in place (all at once
when they all end together). VMAS draws from a random state of its own, apart from torch's global generator; it is
one state for every VMAS environment of a process, so each adapter here keeps its own copy of it and swaps it in
around each call (training's copies and evaluation's draw apart). ``reset()`` re-seeds it, so that every evaluation
sees the same starts. Teams come from agent names as for PettingZoo (``agent_0`` -> ``agent``), or ``env.teams``.
"""

from __future__ import annotations

import difflib
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from marlrun.envs.base import EnvSpec, VecEnv, VecStep, agent_teams, box_bounds, discrete_size
from marlrun.errors import UserError, require
from marlrun.render import WHITE, disc


@dataclass
class VmasConfig:
    """A VMAS scenario, its copies stepped by VMAS on the training device."""

    name: str = "vmas"
    scenario: str = "navigation"  # any scenario VMAS ships (navigation, balance, transport, sampling, ..., and its MPE ports: simple_spread, ...)
    kwargs: dict[str, Any] = field(default_factory=dict)  # the scenario's own keyword arguments (e.g. {n_agents: 3})
    max_steps: int = 100  # steps before truncation (the scenario may end an episode sooner: terminated)
    continuous_actions: bool = True  # true: Box forces; false: the scenario's Discrete actions
    teams: list[str] | None = None  # each agent's team, in VMAS's agent order (null: its name up to the last _<number>)

    def __post_init__(self) -> None:
        require(self.max_steps >= 1, "env.max_steps", f"must be >= 1, got {self.max_steps}")
        require(self.teams is None or len(self.teams) >= 1, "env.teams", "needs one team per agent (or null)")

    def footprint(self, num_envs: int) -> tuple[int, str]:
        """At least how many bytes ``num_envs`` copies hold (every agent's observation, twice), and the keys that size them."""
        layout = describe(self)
        return len(layout.agents) * layout.obs_size * 4 * 2 * num_envs, f"env.scenario={self.scenario} ({len(layout.agents):,} agents)"


def scenario_names() -> list[str]:
    import vmas

    return [*vmas.scenarios, *vmas.mpe_scenarios]


def make_vmas_env(cfg: VmasConfig, num_envs: int, device, seed: int):
    """VMAS's own environment for ``cfg``; a UserError in one line for an unknown scenario or arguments it does not take."""
    import vmas

    names = scenario_names()
    if cfg.scenario not in names:
        close = difflib.get_close_matches(cfg.scenario, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"env.scenario: VMAS has no scenario '{cfg.scenario}'{hint}; pick one of {', '.join(names)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            env = vmas.make_env(scenario=cfg.scenario, num_envs=num_envs, device=device, continuous_actions=cfg.continuous_actions,
                                max_steps=cfg.max_steps, seed=seed, terminated_truncated=True, **cfg.kwargs)
        except (TypeError, ValueError, AssertionError, KeyError) as exc:
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(f"env.kwargs: VMAS scenario {cfg.scenario} refused them ({text})") from None
    unused = [str(w.message).split(" passed but")[0].removeprefix("Scenario kwargs: ") for w in caught if "passed but not used" in str(w.message)]
    if unused:
        raise UserError(f"env.kwargs: VMAS scenario {cfg.scenario} does not take {unused[0]}; give only the arguments its make_world reads")
    return env


# ---------------------------------------------------------------------------- what the spaces say
@dataclass(frozen=True)
class Layout:
    agents: tuple[str, ...]
    obs_size: int  # the tensor's (largest agent's)
    obs_sizes: tuple[int, ...]
    discrete: bool
    n_actions: int
    action_bounds: tuple[float, float]  # what the policy acts in
    action_low: np.ndarray | None  # [agents, K]: Box actions mapped from [-1, 1] onto each agent's own bounds, else None
    action_high: np.ndarray | None
    homogeneous: bool


def describe_env(env, scenario: str) -> Layout:
    agents = tuple(a.name for a in env.agents)
    obs_spaces, act_spaces = list(env.observation_space.spaces), list(env.action_space.spaces)
    for agent, space in zip(agents, obs_spaces):
        if type(space).__name__ != "Box" or len(space.shape) != 1:
            raise UserError(f"env.scenario={scenario}: agent {agent}'s observation is a {type(space).__name__}{getattr(space, 'shape', '')}, "
                            "not a vector; marlrun takes VMAS scenarios with vector observations (dict_spaces and dict observations are not supported)")
    kinds = {type(s).__name__ for s in act_spaces}
    if not kinds <= {"Box", "Discrete"} or len(kinds) > 1:
        raise UserError(f"env.scenario={scenario}: its action spaces are {', '.join(sorted(kinds))}; marlrun takes one kind, Discrete or Box, for all agents")
    obs_sizes = tuple(int(s.shape[0]) for s in obs_spaces)
    discrete = kinds == {"Discrete"}
    low = high = None
    if discrete:
        n_actions, bounds = discrete_size(act_spaces, f"env.scenario={scenario}", "try env.continuous_actions=true"), (0.0, 1.0)
    else:
        shapes = {s.shape for s in act_spaces}
        if len(shapes) > 1:
            raise UserError(f"env.scenario={scenario}: the agents' action vectors differ in size ({', '.join(map(str, sorted(shapes)))}); marlrun needs one size")
        n_actions = int(act_spaces[0].shape[0])
        bounds, low, high = box_bounds(act_spaces)
    homogeneous = len(set(obs_sizes)) == 1 and all(s == act_spaces[0] for s in act_spaces)
    return Layout(agents, max(obs_sizes), obs_sizes, discrete, n_actions, bounds, low, high, homogeneous)


_LAYOUTS: dict[str, Layout] = {}


def describe(cfg: VmasConfig) -> Layout:
    """The layout of ``cfg``'s scenario (one copy built on the CPU; remembered per scenario and arguments)."""
    key = json.dumps([cfg.scenario, cfg.kwargs, cfg.continuous_actions], sort_keys=True, default=str)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = describe_env(make_vmas_env(cfg, 1, "cpu", 0), cfg.scenario)
    return _LAYOUTS[key]


def vmas_spec(cfg: VmasConfig) -> EnvSpec:
    layout = describe(cfg)
    teams = agent_teams(layout.agents, cfg.teams)
    return EnvSpec(
        name=cfg.scenario,
        agent_names=layout.agents,
        obs_shape=(layout.obs_size,),
        n_actions=layout.n_actions,
        teams=teams,
        discrete_actions=layout.discrete,
        homogeneous=layout.homogeneous,
        agent_obs_sizes=layout.obs_sizes if len(set(layout.obs_sizes)) > 1 else (),
        action_bounds=layout.action_bounds,
    )


def vmas_seed(seed: int) -> int:
    """VMAS's seed in a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, 0x5A5]).generate_state(1)[0])


# ---------------------------------------------------------------------------- the copies
class VmasVecEnv(VecEnv):
    """``num_envs`` copies of a VMAS scenario on ``device``."""

    def __init__(self, cfg: VmasConfig, num_envs: int, seed: int, device: torch.device | str = "cpu"):
        self.cfg, self.spec = cfg, vmas_spec(cfg)
        self.layout = describe(cfg)
        self.num_envs, self.n_agents, self.device = num_envs, self.spec.n_agents, torch.device(device)
        self.seed = vmas_seed(seed)
        from vmas.simulator.environment.environment import Environment

        self._shared = Environment.vmas_random_state  # [torch, numpy, python] states, read by every VMAS call
        self._own = list(self._shared)
        with self.own_random_state():
            self.env = make_vmas_env(cfg, num_envs, self.device, self.seed)
        self._actions: torch.Tensor | None = None
        if self.layout.action_low is not None:
            self.low = torch.as_tensor(self.layout.action_low, device=self.device)  # [A, K]
            self.high = torch.as_tensor(self.layout.action_high, device=self.device)

    @contextmanager
    def own_random_state(self):
        """VMAS's random state set to this adapter's own for the calls inside."""
        saved = list(self._shared)
        self._shared[:] = self._own
        try:
            yield
        finally:
            self._own = list(self._shared)
            self._shared[:] = saved

    def _obs(self, observations: list[torch.Tensor]) -> torch.Tensor:
        """[E, A, F] from VMAS's per-agent [E, F_i] (zero-padded to F)."""
        F = self.layout.obs_size
        return torch.stack([o if o.shape[-1] == F else torch.nn.functional.pad(o, (0, F - o.shape[-1])) for o in observations], dim=1).float()

    def reset(self) -> torch.Tensor:
        with self.own_random_state():
            return self._obs(self.env.reset(seed=self.seed))

    def step_async(self, actions: torch.Tensor) -> None:
        self._actions = actions.to(self.device)

    def _vmas_actions(self, actions: torch.Tensor) -> list[torch.Tensor]:
        if self.layout.discrete:
            return list(actions.reshape(self.num_envs, self.n_agents).long().unbind(1))
        actions = actions.reshape(self.num_envs, self.n_agents, -1).float()
        if self.layout.action_low is not None:
            actions = self.low + (actions + 1.0) * 0.5 * (self.high - self.low)
        return list(actions.unbind(1))

    def step_wait(self) -> VecStep:
        if self._actions is None:
            raise RuntimeError("step_wait without step_async")
        actions, self._actions = self._actions, None
        with self.own_random_state():
            return self._step(self._vmas_actions(actions))

    def _step(self, actions: list[torch.Tensor]) -> VecStep:
        obs, rewards, terminated, truncated, _ = self.env.step(actions)
        next_obs = self._obs(obs)
        terminated, truncated = terminated.bool(), truncated.bool() & ~terminated.bool()
        done = terminated | truncated
        obs_after = next_obs
        if done.any():
            if done.all():
                obs_after = self._obs(self.env.reset())
            else:
                for e in done.nonzero().squeeze(1).tolist():
                    self.env.reset_at(e, return_observations=False)
                fresh = self._obs(self.env.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False, get_dones=False)[0])
                obs_after = torch.where(done[:, None, None], fresh, next_obs)
        flags = lambda f: f[:, None].expand(-1, self.n_agents).clone()  # noqa: E731
        return VecStep(
            obs=obs_after,
            next_obs=next_obs,
            reward=torch.stack(rewards, dim=1).float(),
            terminated=flags(terminated),
            truncated=flags(truncated),
            alive=torch.ones(self.num_envs, self.n_agents, dtype=torch.bool, device=self.device),
            episode_end=done,
        )

    def frame(self, index: int = 0) -> np.ndarray:
        """Copy ``index``: every entity a disc of its own colour (boxes and lines by their enclosing circle), on the
        square the scenario's world bounds (or its viewer zoom) give."""
        self.check_copy(index)
        world = self.env.world
        half = 1.1 * max(float(getattr(world, "x_semidim", None) or 0), float(getattr(world, "y_semidim", None) or 0),
                         float(getattr(self.env.scenario, "viewer_zoom", 1.0)))
        size = 400
        scale = size / (2 * half)
        img = np.full((size, size, 3), WHITE, dtype=np.uint8)
        for entity in [*world.landmarks, *world.agents]:
            shape = entity.shape
            radius = getattr(shape, "radius", None) or max(getattr(shape, "length", 0.05), getattr(shape, "width", 0.0)) / 2
            x, y = entity.state.pos[index].tolist()
            colour = entity.color.value if hasattr(entity.color, "value") else entity.color
            rgb = tuple(int(255 * c) for c in list(colour)[:3])
            disc(img, (half - y) * scale, (x + half) * scale, max(radius * scale, 1.0), rgb)
        return img


def make_vmas(cfg: VmasConfig, num_envs: int, num_workers: int, seed: int, device="cpu") -> VmasVecEnv:
    """The copies, stepped by VMAS on ``device`` in this process (``num_workers`` does not apply)."""
    return VmasVecEnv(cfg, num_envs, seed, device)
