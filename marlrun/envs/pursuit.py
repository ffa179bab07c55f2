"""PettingZoo SISL pursuit_v5: 8 pursuers chase 30 random evaders on a 16x16 grid; its config, and the factory of its
two backends (the library itself, or marlrun's batched torch re-implementation in ``pursuit_native``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from pettingzoo.sisl import pursuit_v5

from marlrun.envs.base import EnvSpec
from marlrun.envs.pursuit_native import PursuitNativeVecEnv, draw_pursuit, native_spec, pettingzoo_state, pursuit_legend, pursuit_spec
from marlrun.envs.vector import PettingZooVecEnv
from marlrun.errors import require

BACKENDS = ("native", "pettingzoo")


@dataclass
class PursuitConfig:
    """PettingZoo SISL pursuit_v5, every constructor argument exposed. Defaults: the library's, except shared_reward
    (the library's default is true; the SUPER paper's setting, used here, is false).

    What fits: a reset places each agent apart from the others of its kind (its cell and its 4 neighbours), and the
    library draws again until it finds room, forever if there is none. So both backends refuse more pursuers or
    evaders than the worst start window always has room for (16x16: 39; 10x10: 17; 8x8: 10), a window under one cell
    per side, an obs_range above 2 * side + 1, and (surround: false) an n_catch above n_pursuers."""

    name: str = "pursuit"
    backend: str = "native"  # native: marlrun's batched torch pursuit on the training device (same dynamics, tested in lockstep) | pettingzoo: the library's, in hardware.env_workers processes
    x_size: int = 16  # grid width
    y_size: int = 16  # grid height
    n_pursuers: int = 8  # learning agents
    n_evaders: int = 30  # evaders move at random
    obs_range: int = 7  # side of each pursuer's square view (odd)
    n_catch: int = 2  # pursuers needed around an evader to catch it
    freeze_evaders: bool = False  # evaders stand still
    surround: bool = True  # true: evaders are caught when surrounded; false: when n_catch pursuers share its cell
    shared_reward: bool = False  # every pursuer receives the team's mean reward (the library's default: true)
    tag_reward: float = 0.01  # per evader tagged (a pursuer moves onto it)
    catch_reward: float = 5.0  # per pursuer taking part in a catch
    urgency_reward: float = -0.1  # added every step
    constraint_window: float = 1.0  # fraction of the map where agents may start
    max_cycles: int = 500  # steps before truncation

    def __post_init__(self) -> None:
        require(self.backend in BACKENDS, "env.backend", f"unknown backend '{self.backend}'; pick one of {', '.join(BACKENDS)}")
        require(self.x_size >= 2 and self.y_size >= 2, "env.x_size/env.y_size", "the grid must be at least 2x2")
        require(self.n_pursuers >= 1, "env.n_pursuers", "must be >= 1")
        require(self.n_evaders >= 1, "env.n_evaders", "must be >= 1")
        require(self.obs_range >= 1 and self.obs_range % 2 == 1, "env.obs_range", "must be a positive odd number")
        require(self.n_catch >= 1, "env.n_catch", "must be >= 1")
        require(0.0 < self.constraint_window <= 1.0, "env.constraint_window", "must be in (0, 1]")
        require(self.max_cycles >= 1, "env.max_cycles", "must be >= 1")
        view = 2 * max(self.x_size, self.y_size) + 1
        require(self.obs_range <= view, "env.obs_range", f"at most {view} on a {self.x_size}x{self.y_size} map (a view of {view} sees all of it from any cell), got {self.obs_range}")
        require(self.surround or self.n_catch <= self.n_pursuers, "env.n_catch",
                f"{self.n_catch} pursuers must share an evader's cell to catch it, but there are only {self.n_pursuers} (env.n_pursuers); no catch would ever happen")
        smallest = 1 / min(self.x_size, self.y_size)
        require(int(self.x_size * self.constraint_window) >= 1 and int(self.y_size * self.constraint_window) >= 1, "env.constraint_window",
                f"the start window must hold at least one cell per side: at least {smallest:.3g} on a {self.x_size}x{self.y_size} map, got {self.constraint_window}")
        room = start_window_room(self.x_size, self.y_size, self.constraint_window)
        fits = most_agents_apart(room)
        for key, n in (("env.n_pursuers", self.n_pursuers), ("env.n_evaders", self.n_evaders)):
            require(n <= fits, key, f"{n} do not fit on a {self.x_size}x{self.y_size} map: a reset places each agent apart from the others of its kind "
                                    f"(its cell and 4 neighbours), and the start window has {room} open cells, room for {fits}; "
                                    "use fewer, a bigger map (env.x_size, env.y_size) or a larger env.constraint_window")

    def ineffective(self) -> list[str]:
        """Keys set away from their defaults that have no effect with the others, in words (warnings)."""
        unused = []
        if self.surround and self.n_catch != PursuitConfig.n_catch:
            unused.append(f"env.n_catch={self.n_catch} has no effect with env.surround=true (an evader is caught when surrounded); "
                          "set env.surround=false to catch with n_catch pursuers on its cell")
        return unused

    def footprint(self, num_envs: int) -> tuple[int, str]:
        """At least how many bytes ``num_envs`` copies hold (each copy's grid layers and its pursuers' two views; the
        map's index tables once), and the keys that size them."""
        cells = (self.x_size + 2) * (self.y_size + 2)
        views = self.n_pursuers * self.obs_range ** 2 * 3 * 4 * 2
        return (cells * 16 + views) * num_envs + cells * 40, f"env.x_size x env.y_size = {self.x_size:,} x {self.y_size:,} cells"

    def library_kwargs(self) -> dict:
        """The keyword arguments of ``pursuit_v5.parallel_env`` (every one, so none falls back to the library's default)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "backend")}


class PursuitFactory:
    """Picklable pursuit_v5.parallel_env(**kwargs)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self):
        return pursuit_v5.parallel_env(**self.kwargs)


class PursuitPettingZooVecEnv(PettingZooVecEnv):
    """The library's pursuit_v5 copies (backend pettingzoo); drawn as the native backend draws its games."""

    @property
    def legend(self) -> tuple:
        return pursuit_legend(getattr(self.unwrapped_copy(0), "env", self.unwrapped_copy(0)).obs_range)

    def frame(self, index: int = 0) -> np.ndarray:
        raw = self.unwrapped_copy(index)
        game = getattr(raw, "env", raw)  # raw_env -> Pursuit
        state = pettingzoo_state(raw)
        building = np.asarray(game.map_matrix) == -1  # [X, Y], -1 = obstacle
        return draw_pursuit(building, state["pursuer_pos"], state["evader_pos"][state["evader_active"]], game.obs_range)


def start_window_room(x_size: int, y_size: int, constraint_window: float) -> int:
    """Open cells (not the central building of the library's ``rectangle_map``) in the worst start window a reset can
    draw: ``floor(side * constraint_window)`` cells per side, anywhere on the map. The building is the cells whose row
    and column are both inside its band, so the worst window covers as much of each band as its side allows; counted
    per side, without the map (a 100,000-cell side costs nothing)."""
    wx, wy = int(x_size * constraint_window), int(y_size * constraint_window)
    if wx < 1 or wy < 1:
        return 0
    bx, by = building_band(x_size, 0.3), building_band(y_size, 0.2)
    return wx * wy - min(wx, bx) * min(wy, by)


def building_band(size: int, buffer: float) -> int:
    """Rows (or columns) of ``rectangle_map``'s building along a side of ``size`` cells: i / size strictly between
    ``buffer`` and ``1 - buffer``, as the library computes it."""
    i = np.arange(size, dtype=np.float64) / size
    return int(((i > buffer) & (i < 1.0 - buffer)).sum())


def most_agents_apart(room: int) -> int:
    """Agents of one kind a reset can always place in ``room`` open cells: each one placed takes its cell and its 4
    neighbours from those left, and the library draws again until it finds a free cell (forever, if none is left)."""
    return (room - 1) // 5 + 1 if room > 0 else 0


def make_pursuit(cfg: PursuitConfig, num_envs: int, num_workers: int, seed: int, device="cpu"):
    """pursuit_v5 copies: PettingZoo's own (``backend="pettingzoo"``, stepped by SuperSuit in ``num_workers``
    processes) or marlrun's batched torch re-implementation on ``device`` (``backend="native"``)."""
    if cfg.backend == "native":
        return PursuitNativeVecEnv(cfg, num_envs, seed, device)
    return PursuitPettingZooVecEnv(PursuitFactory(**cfg.library_kwargs()), pursuit_env_spec(cfg), num_envs, num_workers, seed, device)


def pursuit_env_spec(cfg: PursuitConfig) -> EnvSpec:
    """The spec of the copies ``make_pursuit`` builds: the native backend adds the global state."""
    return native_spec(cfg) if cfg.backend == "native" else pursuit_spec(cfg)
