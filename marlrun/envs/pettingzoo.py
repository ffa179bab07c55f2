"""Any PettingZoo parallel environment, named by import path (``env=pettingzoo env.id=mpe2.simple_spread_v3``).

The adapter builds one copy to read its spaces and derives the spec from them:

- observations: Box of any shape. Three dimensions are an image (height, width, channels), which every agent must
  share; anything else is flattened to a vector, zero-padded at the end to the largest agent's (``agent_obs_sizes``
  says how much of each agent's row is real). Integer images travel and are stored as uint8.
- actions: Discrete (every agent the same number) or Box (every agent the same shape). Box actions whose bounds are
  the same for every component and agent keep them; otherwise the policy acts in [-1, 1] and the adapter maps each
  component linearly onto its own bounds.
- teams: each agent's name up to its last ``_<number>`` (``adversary_0`` -> ``adversary``), or ``env.teams``.
- homogeneous: every agent has the same observation and action space.
- a global state: where the environment's ``state()`` answers (and ``env.state`` is true).
- agents that leave: ``env.agents_can_leave`` (the library does not say ahead of time): an agent gone from the
  episode acts no more (``alive`` false, zero observations) until the copy resets.

Copies are stepped by SuperSuit's vector environments, in ``hardware.env_workers`` processes, as every PettingZoo
backend here is. Frames come from the environment's own ``render()`` where ``env.kwargs`` build it with ``render_mode: rgb_array``.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
from pettingzoo.utils.env import AECEnv, ParallelEnv

from marlrun.envs.base import EnvSpec, agent_teams, box_bounds, discrete_size
from marlrun.envs.vector import ParallelWrapper, PettingZooVecEnv
from marlrun.errors import UserError, require

SPACE_HELP = ("marlrun takes Box observations and Discrete or Box actions; give env.id a function that returns the "
              "environment wrapped into those (SuperSuit's flatten/pad wrappers, or your own)")


@dataclass
class PettingZooConfig:
    """Any PettingZoo parallel environment, built by import path; its spec is read from its spaces."""

    name: str = "pettingzoo"
    id: str = "mpe2.simple_spread_v3"  # a module with parallel_env() (PettingZoo's layout), or a function returning a ParallelEnv: pkg.module.function or pkg.module:function
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of that constructor (e.g. {N: 3, max_cycles: 25})
    teams: list[str] | None = None  # each agent's team, in the environment's possible_agents order (null: its name up to the last _<number>)
    agents_can_leave: bool = False  # agents may leave an episode before it ends (they then act no more until the copy resets)
    state: bool = True  # hand algorithms the environment's state() where it has one (false: no global state; copies in worker processes otherwise compute it every step, read or not)

    def __post_init__(self) -> None:
        require(isinstance(self.id, str) and bool(self.id.strip()), "env.id", "names the environment: an import path such as mpe2.simple_spread_v3")
        require(self.teams is None or len(self.teams) >= 1, "env.teams", "needs one team per agent (or null)")

    def footprint(self, num_envs: int) -> tuple[int, str]:
        """At least how many bytes ``num_envs`` copies hold (every agent's observation, twice), and the keys that size them."""
        layout = describe(self)
        per_obs = math.prod(layout.obs_shape) * (1 if layout.obs_dtype == np.uint8 else 4)
        return len(layout.agents) * per_obs * 2 * num_envs, f"env.id={self.id} ({len(layout.agents):,} agents)"


# ---------------------------------------------------------------------------- building one copy
def constructor(env_id: str) -> Callable[..., Any]:
    """What ``env_id`` names: ``pkg.module`` with ``parallel_env`` (PettingZoo's layout), ``pkg.module.function`` or
    ``pkg.module:function``; a UserError in one line otherwise."""
    path, _, attr = env_id.strip().partition(":")
    module, error = _import(path)
    if module is None and not attr and "." in path:  # pkg.module.function
        parent, attr = path.rsplit(".", 1)
        module, _ = _import(parent)
    if module is None:
        raise UserError(f"env.id={env_id}: {error}; give the import path of a PettingZoo environment (e.g. mpe2.simple_spread_v3, "
                        "pettingzoo.sisl.multiwalker_v9) or of a function returning one (mypackage.envs:make_env)")
    target = getattr(module, attr or "parallel_env", None)
    if target is None:
        what = f"has no {attr}" if attr else "has no parallel_env() (PettingZoo's parallel constructor)"
        raise UserError(f"env.id={env_id}: module {module.__name__} {what}; name a PettingZoo environment module or a function in it")
    if not callable(target):
        raise UserError(f"env.id={env_id}: {attr} in {module.__name__} is a {type(target).__name__}, not a function or class that builds an environment")
    return target


def _import(path: str):
    """(module, None), or (None, why not in words). A missing dependency of an existing module is said as such."""
    try:
        return importlib.import_module(path), None
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (path == missing or path.startswith(missing + ".")):
            return None, f"there is no module {missing!r}" + ("" if missing == path else f" (looking for {path})")
        return None, f"importing {path} failed: no module {missing!r} (install it: pip install {missing.split('.')[0]})"
    except Exception as exc:  # the module itself raised while importing
        return None, f"importing {path} raised {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "(no message)"


def build(env_id: str, kwargs: dict) -> ParallelEnv:
    """One copy of the environment, checked to be a ParallelEnv."""
    make = constructor(env_id)
    try:
        env = make(**kwargs)
    except TypeError as exc:
        raise UserError(f"env.kwargs: building {env_id} with {kwargs} failed (TypeError: {_first_line(exc)}); give only keyword arguments "
                        "its constructor has, of the types it expects") from None
    except (ValueError, AssertionError, KeyError) as exc:
        raise UserError(f"env.kwargs: {env_id} refused them ({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(env, AECEnv):
        raise UserError(f"env.id={env_id} made an AEC (turn-based) environment, {type(env).__name__}; marlrun steps parallel environments, "
                        "where all agents act at once: use the module's parallel_env, or a function returning "
                        "pettingzoo.utils.conversions.aec_to_parallel(env) if its agents do act simultaneously")
    if not isinstance(env, ParallelEnv):
        raise UserError(f"env.id={env_id} made a {type(env).__name__}, not a PettingZoo ParallelEnv")
    if not hasattr(env, "render_mode"):  # optional for an environment, read by SuperSuit's vector environments
        env.render_mode = None
    return env


# ---------------------------------------------------------------------------- what the spaces say
@dataclass(frozen=True)
class Layout:
    """What the spaces of one copy say, and how the adapter lays them out as tensors."""

    agents: tuple[str, ...]
    obs_shape: tuple[int, ...]  # of the tensor: (H, W, C) images, else (largest flat size,)
    obs_sizes: tuple[int, ...]  # each agent's flat observation size
    obs_dtype: type  # np.uint8 (integer images) or np.float32
    image: bool
    discrete: bool
    n_actions: int  # Discrete: its n; Box: the action vector's size
    action_bounds: tuple[float, float]  # what the policy acts in
    action_low: np.ndarray | None  # [agents, K]: Box actions mapped from [-1, 1] onto each agent's own bounds, else None
    action_high: np.ndarray | None
    homogeneous: bool
    state_shape: tuple[int, ...] | None  # None: no state()


def _space_name(space) -> str:
    return type(space).__name__


def describe_env(env: ParallelEnv, env_id: str, use_state: bool) -> Layout:
    """The layout of ``env`` (one copy, which this resets once to ask for its state); a UserError naming the agent and
    the space marlrun cannot take."""
    agents = tuple(env.possible_agents)
    require(len(agents) >= 1, "env.id", f"{env_id} has no agents (possible_agents is empty)")
    obs_spaces = [env.observation_space(a) for a in agents]
    act_spaces = [env.action_space(a) for a in agents]
    for agent, space in zip(agents, obs_spaces):
        if not isinstance(space, gymnasium.spaces.Box):
            raise UserError(f"env.id={env_id}: agent {agent}'s observation space is {_space_name(space)}, which marlrun cannot take; {SPACE_HELP}")
    for agent, space in zip(agents, act_spaces):
        if not isinstance(space, (gymnasium.spaces.Box, gymnasium.spaces.Discrete)):
            hint = " (MultiDiscrete: one Discrete over every combination is one way)" if isinstance(space, gymnasium.spaces.MultiDiscrete) else ""
            raise UserError(f"env.id={env_id}: agent {agent}'s action space is {_space_name(space)}, which marlrun cannot take{hint}; {SPACE_HELP}")
    kinds = {type(s) for s in act_spaces}
    if len(kinds) > 1:
        raise UserError(f"env.id={env_id}: some agents act with Discrete and others with Box actions; marlrun needs one kind for all")

    image = len(obs_spaces[0].shape) == 3
    if image:
        shapes = {s.shape for s in obs_spaces}
        if len(shapes) > 1:
            raise UserError(f"env.id={env_id}: the agents' image observations differ in shape ({', '.join(map(str, sorted(shapes)))}); "
                            "marlrun needs one image shape (resize them with a wrapper)")
        obs_shape = obs_spaces[0].shape
    elif any(len(s.shape) == 3 for s in obs_spaces):
        raise UserError(f"env.id={env_id}: some agents see images and others vectors; marlrun needs one kind for all")
    else:
        obs_shape = (max(int(np.prod(s.shape)) for s in obs_spaces),)
    obs_sizes = tuple(int(np.prod(s.shape)) for s in obs_spaces)
    integer_image = image and all(np.issubdtype(s.dtype, np.integer) and s.low.min() >= 0 and s.high.max() <= 255 for s in obs_spaces)

    discrete = isinstance(act_spaces[0], gymnasium.spaces.Discrete)
    low = high = None
    if discrete:
        n_actions, bounds = discrete_size(act_spaces, f"env.id={env_id}", "pad the action spaces with a wrapper"), (0.0, 1.0)
        if any(int(s.start) != 0 for s in act_spaces):
            raise UserError(f"env.id={env_id}: a Discrete action space starts at {act_spaces[0].start}, not 0; marlrun's actions are 0..n-1")
    else:
        shapes = {s.shape for s in act_spaces}
        if len(shapes) > 1 or len(next(iter(shapes))) != 1:
            raise UserError(f"env.id={env_id}: Box actions must be vectors of one size for every agent, got shapes {', '.join(map(str, sorted(shapes)))}")
        n_actions = act_spaces[0].shape[0]
        if not all(np.isfinite(s.low).all() and np.isfinite(s.high).all() for s in act_spaces):
            raise UserError(f"env.id={env_id}: its Box actions are unbounded; marlrun's policies act within bounds (bound them with a wrapper)")
        bounds, low, high = box_bounds(act_spaces)

    state_shape = None
    if use_state:
        env.reset(seed=0)
        try:
            state_shape = tuple(np.shape(env.state()))
        except (NotImplementedError, AttributeError):
            state_shape = None
    homogeneous = all(s == obs_spaces[0] for s in obs_spaces) and all(s == act_spaces[0] for s in act_spaces)
    return Layout(agents, tuple(obs_shape), obs_sizes, np.uint8 if integer_image else np.float32, image, discrete, n_actions, bounds,
                  low, high, homogeneous, state_shape)


_LAYOUTS: dict[str, Layout] = {}


def describe(cfg: PettingZooConfig) -> Layout:
    """The layout of ``cfg``'s environment (one copy built and closed; remembered per id, kwargs and state)."""
    key = json.dumps([cfg.id, cfg.kwargs, cfg.state], sort_keys=True, default=str)
    if key not in _LAYOUTS:
        env = build(cfg.id, cfg.kwargs)
        try:
            _LAYOUTS[key] = describe_env(env, cfg.id, cfg.state)
        finally:
            env.close()
    return _LAYOUTS[key]


def pettingzoo_spec(cfg: PettingZooConfig) -> EnvSpec:
    layout = describe(cfg)
    teams = agent_teams(layout.agents, cfg.teams)
    padded = not layout.image and len(set(layout.obs_sizes)) > 1
    return EnvSpec(
        name=cfg.id.rsplit(".", 1)[-1].split(":")[-1],
        agent_names=layout.agents,
        obs_shape=layout.obs_shape,
        n_actions=layout.n_actions,
        teams=teams,
        discrete_actions=layout.discrete,
        homogeneous=layout.homogeneous,
        obs_storage_dtype=torch.uint8 if layout.obs_dtype == np.uint8 else torch.float32,
        capabilities=frozenset({"state"}) if layout.state_shape is not None else frozenset(),
        agent_obs_sizes=layout.obs_sizes if padded else (),
        action_bounds=layout.action_bounds,
        agents_can_die=cfg.agents_can_leave,
        state_shape=layout.state_shape or (),
    )


# ---------------------------------------------------------------------------- the copies
class Adapted(ParallelWrapper):
    """One copy laid out as the spec says: observations flattened and padded (or images as they are) in one dtype,
    Box actions mapped onto their bounds where the layout says so, and the global state in the first agent's infos
    (``marlrun_state`` after every step, ``marlrun_reset_state`` after a reset)."""

    def __init__(self, env: ParallelEnv, layout: Layout):
        super().__init__(env)
        self.layout = layout
        self._obs_space = gymnasium.spaces.Box(-np.inf if layout.obs_dtype == np.float32 else 0,
                                               np.inf if layout.obs_dtype == np.float32 else 255, layout.obs_shape, layout.obs_dtype)
        if layout.discrete:
            self._act_space = gymnasium.spaces.Discrete(layout.n_actions)
        else:
            self._act_space = gymnasium.spaces.Box(*layout.action_bounds, (layout.n_actions,), np.float32)
        self.index = {a: i for i, a in enumerate(layout.agents)}
        self.first = layout.agents[0]
        # computed every step where the layout has a state, unless the training process says no one reads it (it can
        # for copies stepped in it; worker processes' copies always send it)
        self.state = layout.state_shape is not None

    def _obs(self, observations: dict) -> dict:
        """Every agent's observation in the layout; an agent gone from the episode sees zeros."""
        shape, dtype = self.layout.obs_shape, self.layout.obs_dtype
        out = {}
        for agent in self.layout.agents:
            obs = observations.get(agent)
            if obs is None:
                out[agent] = np.zeros(shape, dtype)
            elif self.layout.image:
                out[agent] = np.asarray(obs, dtype)
            else:
                flat = np.asarray(obs, np.float32).ravel()
                out[agent] = flat if flat.size == shape[0] else np.concatenate([flat, np.zeros(shape[0] - flat.size, np.float32)])
        return out

    def _actions(self, actions: dict) -> dict:
        if self.layout.action_low is None:
            return actions
        lo, hi = self.layout.action_low, self.layout.action_high
        return {a: lo[self.index[a]] + (np.asarray(u, np.float32) + 1.0) * 0.5 * (hi[self.index[a]] - lo[self.index[a]]) for a, u in actions.items()}

    def _infos(self, infos: dict, key: str) -> dict:
        """A dict for every agent (SuperSuit writes into each at an episode's end), the state in the first's."""
        infos = {a: dict(infos.get(a, {})) for a in self.layout.agents}
        if self.state:
            try:
                state = np.asarray(self.env.state(), np.float32)
            except Exception:  # some libraries cannot say it once the episode is over (multiwalker tears its world down)
                state = np.zeros(self.layout.state_shape, np.float32)
            infos[self.first][key] = state
        return infos

    def reset(self, seed=None, options=None):
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._obs(obs), self._infos(infos, "marlrun_reset_state")

    def step(self, actions):
        obs, rewards, terminations, truncations, infos = self.env.step(self._actions(actions))
        return self._obs(obs), rewards, terminations, truncations, self._infos(infos, "marlrun_state")

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space


class PettingZooFactory:
    """Picklable: builds one adapted copy (in the worker process that steps it)."""

    def __init__(self, env_id: str, kwargs: dict, layout: Layout):
        self.env_id, self.kwargs, self.layout = env_id, dict(kwargs), layout

    def __call__(self) -> ParallelEnv:
        return Adapted(build(self.env_id, self.kwargs), self.layout)


class AnyPettingZooVecEnv(PettingZooVecEnv):
    """The copies; drawn by the environment's own ``render()``, where it was built with ``render_mode: rgb_array`` in
    ``env.kwargs`` (never added by marlrun: some libraries observe differently when they render, e.g. cooperative pong).
    Copies stepped in this process compute the global state only while an algorithm reads it (``provide_state``)."""

    @property
    def provide_state(self) -> bool:
        return getattr(self, "_provide_state", False)

    @provide_state.setter
    def provide_state(self, value: bool) -> None:
        self._provide_state = value
        if not self.worker_processes and "state" in self.spec.capabilities:
            for copy in self._vec.vec_envs:  # SuperSuit's MarkovVectorEnv -> marlrun's seeded copy -> Adapted
                copy.par_env.env.state = value

    def frame(self, index: int = 0) -> np.ndarray:
        env = self.unwrapped_copy(index)
        if getattr(env, "render_mode", None) != "rgb_array":
            raise UserError(f"cannot draw {self.spec.name}: it draws itself only when built with render_mode=rgb_array; "
                            "add it to its arguments: env.kwargs.render_mode=rgb_array")
        try:
            picture = env.render()
        except Exception as exc:  # the library's renderer (a missing display, pygame...)
            raise UserError(f"cannot draw {self.spec.name}: its render() raised {type(exc).__name__}: {_first_line(exc)}") from None
        if not isinstance(picture, np.ndarray) or picture.ndim != 3 or picture.shape[-1] != 3:
            raise UserError(f"cannot draw {self.spec.name}: its render() gives no rgb_array picture (got {type(picture).__name__})")
        return np.ascontiguousarray(picture, dtype=np.uint8)


def make_pettingzoo(cfg: PettingZooConfig, num_envs: int, num_workers: int, seed: int, device="cpu") -> AnyPettingZooVecEnv:
    spec = pettingzoo_spec(cfg)
    layout = describe(cfg)
    factory = PettingZooFactory(cfg.id, cfg.kwargs, layout)
    return AnyPettingZooVecEnv(factory, spec, num_envs, num_workers, seed, device)
