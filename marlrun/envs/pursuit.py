"""PettingZoo SISL pursuit_v5: 8 pursuers chase 30 random evaders on a 16x16 grid."""

from __future__ import annotations

import torch
from pettingzoo.sisl import pursuit_v5

from marlrun.envs.base import EnvSpec
from marlrun.envs.vector import PettingZooVecEnv


class PursuitFactory:
    """Picklable pursuit_v5.parallel_env(**kwargs)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self):
        return pursuit_v5.parallel_env(**self.kwargs)


def start_window_room(x_size: int, y_size: int, constraint_window: float) -> int:
    """Open cells (not the central building of the library's ``rectangle_map``) in the worst start window a reset can
    draw: ``floor(side * constraint_window)`` cells per side, anywhere on the map."""
    import numpy as np
    from pettingzoo.sisl.pursuit.utils.two_d_maps import rectangle_map

    wx, wy = int(x_size * constraint_window), int(y_size * constraint_window)
    if wx < 1 or wy < 1:
        return 0
    open_cells = np.pad((rectangle_map(x_size, y_size) != -1).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = open_cells[wx:, wy:] - open_cells[:-wx, wy:] - open_cells[wx:, :-wy] + open_cells[:-wx, :-wy]
    return int(sums.min())


def most_agents_apart(room: int) -> int:
    """Agents of one kind a reset can always place in ``room`` open cells: each one placed takes its cell and its 4
    neighbours from those left, and the library draws again until it finds a free cell (forever, if none is left)."""
    return (room - 1) // 5 + 1 if room > 0 else 0


def pursuit_spec(n_pursuers: int, obs_range: int, name: str = "pursuit") -> EnvSpec:
    return EnvSpec(
        name=name,
        agent_names=tuple(f"pursuer_{i}" for i in range(n_pursuers)),
        obs_shape=(obs_range, obs_range, 3),  # channels: obstacles, pursuer count, evader count
        n_actions=5,
        teams=("pursuer",) * n_pursuers,
        obs_storage_dtype=torch.uint8,  # 0/1 walls and small agent counts
    )


def make_pursuit(num_envs: int, num_workers: int, seed: int, device="cpu", name: str = "pursuit", backend: str = "pettingzoo", **kwargs):
    """pursuit_v5 copies: PettingZoo's own (``backend="pettingzoo"``, stepped by SuperSuit in ``num_workers``
    processes) or marlrun's batched torch re-implementation on ``device`` (``backend="native"``)."""
    if backend == "native":
        from marlrun.envs.pursuit_native import make_pursuit_native

        return make_pursuit_native(num_envs, num_workers, seed, device, name, **kwargs)
    spec = pursuit_spec(kwargs["n_pursuers"], kwargs["obs_range"], name)
    return PettingZooVecEnv(PursuitFactory(**kwargs), spec, num_envs, num_workers, seed, device)
